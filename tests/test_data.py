"""Ratings: construction from every source, canonical order, checks, splits and subsamples."""
import numpy as np
import pytest
import torch

from retrain import InputError
from retrain.data import Ratings, sample_users, synthetic_ratings


def test_canonical_order_sorted_by_item_ties_in_input_order():
    r = Ratings.from_coo([1, 0, 1, 1, 0], [3, 2, 1, 3, 0], [1, 2, 3, 4, 5])
    assert r.indptr.tolist() == [0, 2, 5]
    assert r.items.tolist() == [0, 2, 1, 3, 3]
    assert r.ratings.tolist() == [5, 2, 3, 1, 4]  # the two (1, 3) ratings keep input order


def test_sources_agree():
    users, items, vals = np.array([0, 2, 1, 2]), np.array([1, 0, 1, 2]), np.array([4.0, 3.0, 5.0, 1.0])
    a = Ratings.from_coo(users, items, vals)
    b = Ratings.from_coo(torch.tensor(users), torch.tensor(items), torch.tensor(vals))
    scipy = pytest.importorskip("scipy.sparse")
    c = Ratings.from_scipy(scipy.coo_matrix((vals, (users, items)), shape=(3, 3)))
    pd = pytest.importorskip("pandas")
    d = Ratings.from_pandas(pd.DataFrame({"user": users + 10, "item": items + 100, "rating": vals}))
    for other in (b, c, d):
        assert np.array_equal(a.indptr, other.indptr) and np.array_equal(a.items, other.items)
        assert np.array_equal(a.ratings, other.ratings)
    assert d.user_ids.tolist() == [10, 11, 12] and d.item_ids.tolist() == [100, 101, 102]


@pytest.mark.parametrize("kwargs,message", [
    (dict(users=[0, -1], items=[0, 1], ratings=[1, 2]), "user must be >= 0: row 1"),
    (dict(users=[0, 1], items=[0, 5], ratings=[1, 2], n_items=3), "item out of range: row 1"),
    (dict(users=[0, 1], items=[0, 1], ratings=[1, np.nan]), "rating must be finite: row 1"),
    (dict(users=[0, 1], items=[0, 1], ratings=[np.inf, 1]), "rating must be finite: row 0"),
    (dict(users=[0, 1], items=[0, 1], ratings=[1, 2], weights=[1, -0.5]), "weight must be >= 0: row 1"),
    (dict(users=[], items=[], ratings=[]), "empty"),
    (dict(users=[0, 1], items=[0], ratings=[1, 2]), "equal lengths"),
    (dict(users=[0.5, 1], items=[0, 1], ratings=[1, 2]), "integer"),
    # These used to be read wrong, silently: text through numpy's float() ("1_0" is 10), the real
    # part of a complex number, True as index 1, two users (items) of one id sharing a key and a row.
    (dict(users=[0, 1], items=[0, 1], ratings=np.array(["4", "1_0"])), r"ratings must be numbers: row 0 has '4'"),
    (dict(users=[0, 1], items=[0, 1], ratings=np.array([4, "3"], dtype=object)),
     r"ratings must be numbers: row 1 has '3' \(object values\)"),
    (dict(users=[0, 1], items=[0, 1], ratings=[1, 2], weights=[1, 1 + 2j]), r"weights must be numbers: row 0 has \(1"),
    (dict(users=[True, False], items=[0, 1], ratings=[1, 2]), "user indices must be integers, got bool"),
    (dict(users=[0, 1], items=[0, 1], ratings=[1, 2], n_users=2.5), r"n_users must be an integer >= 0, got 2.5"),
    (dict(users=[0, 1], items=[0, 1], ratings=[1, 2], n_items=True), r"n_items must be an integer >= 0, got True"),
    (dict(users=[0, 1], items=[0, 1], ratings=[1, 2], user_ids=[7, 7]),
     r"user id '7' is there twice \(entries 0 and 1; 1 repeats\): user ids must be distinct"),
    (dict(users=[0, 0], items=[0, 1], ratings=[1, 2], item_ids=["a", "a"]), r"item id 'a' is there twice"),
])
def test_bad_input_names_the_problem(kwargs, message):
    users, items, ratings = kwargs.pop("users"), kwargs.pop("items"), kwargs.pop("ratings")
    with pytest.raises(InputError, match=message):
        Ratings.from_coo(users, items, ratings, **kwargs)


@pytest.mark.parametrize("call,message", [
    (lambda r: r.split_per_user(1.0), r"val_fraction must be a fraction in \[0, 1\), got 1.0"),
    (lambda r: r.split_per_user(float("nan")), "val_fraction must be"),
    (lambda r: r.split_per_user(0.2, seed=-1), "seed must be an integer >= 0"),
    (lambda r: r.split_random(-0.1), "fraction must be a fraction"),
    (lambda r: r.split_users(0.0), r"fraction must be a fraction in \(0, 1\]"),
    (lambda r: r.subsample_users(0.5, seed=1.5), "seed must be an integer"),
    (lambda r: sample_users(10, 1.5, 0), "fraction must be"),
])
def test_bad_fractions_and_seeds_name_the_argument(call, message):
    with pytest.raises(InputError, match=message):
        call(synthetic_ratings(20, 10, 5))


@pytest.mark.parametrize("kwargs,name", [
    (dict(n_users=0), "n_users"), (dict(n_users=10.0), "n_users"), (dict(n_items=1), "n_items"),
    (dict(n_items=True), "n_items"), (dict(rank=0), "rank"), (dict(seed=-3), "seed"), (dict(seed="1"), "seed"),
    (dict(mean_ratings_per_user=0), "mean_ratings_per_user"), (dict(noise=float("nan")), "noise"),
])
def test_synthetic_ratings_checks_its_arguments(kwargs, name):
    with pytest.raises(InputError, match=rf"^{name} must be"):
        synthetic_ratings(**{"n_users": 20, "n_items": 10, **kwargs})


def test_split_per_user_partitions_each_user():
    r = synthetic_ratings(200, 80, 12, seed=3)
    train, val = r.split_per_user(0.25, seed=1)
    assert train.n_users == val.n_users == r.n_users and train.nnz + val.nnz == r.nnz
    assert np.array_equal(val.counts, np.round(r.counts * 0.25))
    for u in (0, 7, 199):
        rows = lambda x: sorted(zip(x.items[x.indptr[u]:x.indptr[u + 1]], x.ratings[x.indptr[u]:x.indptr[u + 1]]))
        assert sorted(rows(train) + rows(val)) == rows(r)
    again = r.split_per_user(0.25, seed=1)[1]
    assert np.array_equal(again.items, val.items)


def test_subsample_users_same_users_for_train_and_val():
    r = synthetic_ratings(100, 50, 10, seed=0)
    train, val = r.split_per_user(0.2, seed=0)
    a, b = train.subsample_users(0.3, seed=7), val.subsample_users(0.3, seed=7)
    assert a.n_users == 30 and np.array_equal(a.user_ids, b.user_ids)
    assert not np.array_equal(a.user_ids, train.subsample_users(0.3, seed=8).user_ids)


def test_split_users_is_disjoint():
    r = synthetic_ratings(50, 30, 8, seed=0)
    kept, held = r.split_users(0.2, seed=0)
    assert held.n_users == 10 and kept.n_users == 40
    assert not set(kept.user_ids) & set(held.user_ids)
    assert kept.nnz + held.nnz == r.nnz


def test_synthetic_is_realistic():
    r = synthetic_ratings(3000, 800, 30, seed=0)
    counts = r.counts
    assert counts.min() >= 2 and counts.max() > 8 * np.median(counts)  # heavy-tailed activity
    pop = np.sort(np.bincount(r.items, minlength=r.n_items))[::-1]
    assert pop[:80].sum() > 0.3 * r.nnz  # the top 10% of items get a large share
    assert set(np.unique(r.ratings)) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    assert 3.0 < r.ratings.mean() < 4.0


# ----------------------------------------------------------------------------- exact ids
BIG = 2**63 + 5  # a uint64 id that astype(int64) would wrap negative


def test_uint64_ids_above_2_63_stay_exact():
    ids = np.array([BIG, 7, BIG + 1], dtype=np.uint64)
    r = Ratings.from_ids(ids, [1, 2, 3], [4.0, 3.0, 2.0])
    assert r.user_ids.dtype == np.uint64 and r.user_ids.tolist() == [7, BIG, BIG + 1]
    # Python ints in an object column (a pandas column of big ids) are kept just as exactly
    r2 = Ratings.from_ids(np.array([BIG, 7, BIG + 1], dtype=object), [1, 2, 3], [4.0, 3.0, 2.0])
    assert r2.user_ids.tolist() == [7, BIG, BIG + 1]


def test_string_ids_are_indexed_in_sorted_order_and_kept():
    r = Ratings.from_ids(["bob", "alice", "bob"], ["x", "y", "x2"], [1.0, 2.0, 3.0])
    assert r.user_ids.tolist() == ["alice", "bob"] and r.item_ids.tolist() == ["x", "x2", "y"]
    assert r.indptr.tolist() == [0, 1, 3] and r.items.tolist() == [2, 0, 1]


@pytest.mark.parametrize("users, message", [
    ([1, 1.5, 2], r"user_ids must be integers or strings: row 1 has 1.5"),
    ([1.0, float("nan")], r"row 1 has nan"),
    (np.array([1, None, 2], dtype=object), r"row 1 has None"),
    (np.array([1, "a"], dtype=object), r"row 1 has 'a' \(str\), expected integers"),
    (np.array(["a", 3], dtype=object), r"row 1 has 3 \(int\), expected strings"),
    (np.array([True, False]), r"got bool values"),
    (np.array([-1, 2**63], dtype=object), r"row 1 has 9223372036854775808"),
    (np.array([2**64], dtype=object), r"row 0 has 18446744073709551616"),
])
def test_bad_ids_name_the_row(users, message):
    with pytest.raises(InputError, match=message):
        Ratings.from_ids(users, np.arange(len(users)), np.ones(len(users)))


def test_rating_beyond_float32_is_an_error():
    with pytest.raises(InputError, match=r"rating must be finite: row 1 has rating 1e\+39 \(beyond float32"):
        Ratings.from_ids([1, 2], [1, 2], [3.0, 1e39])


def test_from_pandas_finds_movielens_and_plain_columns(caplog):
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame({"movieId": [10, 20, 10], "userId": [7, 7, 3], "rating": [4.0, 2.0, 5.0],
                          "timestamp": [0, 0, 0]})
    with caplog.at_level("INFO", logger="retrain.data"):
        r = Ratings.from_pandas(frame)
    assert "users from column 'userId', items from 'movieId'" in caplog.text
    assert r.user_ids.tolist() == [3, 7] and r.item_ids.tolist() == [10, 20]
    plain = Ratings.from_pandas(pd.DataFrame({"user": ["b", "a"], "item": [1, 2], "rating": [1.0, 2.0],
                                              "weight": [0.5, 2.0]}))
    assert plain.user_ids.tolist() == ["a", "b"] and plain.weights.tolist() == [2.0, 0.5]
    with pytest.raises(InputError, match=r"column 'userId' must be integers or strings: row 1 has 1.5"):
        Ratings.from_pandas(frame.assign(userId=[7, 1.5, 3]))
    with pytest.raises(InputError, match=r"column 'userId' must be integers or strings: row 1 has nan"):
        Ratings.from_pandas(frame.assign(userId=pd.array([7, None, 3], dtype="Int64")))
    with pytest.raises(InputError, match=r"no user column: expected one of \['userId', 'user'\]"):
        Ratings.from_pandas(frame.rename(columns={"userId": "u"}))


def test_with_items_matches_ids_across_integer_widths():
    r = Ratings.from_ids([1, 1, 2], np.array([BIG, 5, 5], dtype=np.uint64), [1.0, 2.0, 3.0])
    model_items = np.array([5, 9], dtype=np.int64)  # an int64 space cannot hold BIG: it is dropped
    moved = r.with_items(model_items, drop_unknown=True)
    assert moved.nnz == 2 and moved.items.tolist() == [0, 0] and moved.ratings.tolist() == [2.0, 3.0]
    with pytest.raises(InputError, match=f"item id {BIG}"):
        r.with_items(model_items)


@pytest.mark.parametrize("users,message", [
    (np.array([True, False, True]), r"got bool \[3\]: for a mask, pass np.flatnonzero\(mask\)"),
    (np.array([1.7]), r"got float64 \[1\]"), (np.array([[1]]), r"got int64 \[1, 1\]")])
def test_select_users_takes_indices_only(users, message):
    # A mask used to select users 1, 0, 1 (its values as indices) and 1.7 user 1, silently.
    data = Ratings.from_coo([0, 1, 2, 2], [0, 1, 2, 0], [1.0, 2.0, 3.0, 4.0])
    with pytest.raises(InputError, match=r"users must be a 1-d array of user indices, " + message):
        data.select_users(users)
    assert data.select_users(np.flatnonzero(np.array([True, False, True]))).user_ids.tolist() == [0, 2]


@pytest.mark.parametrize("users,message", [([0, 3], r"users index 3 \(entry 1\) is not in \[0, 3\)"),
                                           ([2, -1], r"users index -1 \(entry 1\) is not in \[0, 3\)"),
                                           (np.array([2**63], dtype=np.uint64), r"users index 9223372036854775808")])
def test_select_users_names_the_first_index_out_of_range(users, message):
    # It said "user index out of range [0, 3)", without the index or where it stands.
    data = Ratings.from_coo([0, 1, 2, 2], [0, 1, 2, 0], [1.0, 2.0, 3.0, 4.0])
    with pytest.raises(InputError, match=message):
        data.select_users(users)


def test_with_items_refuses_a_target_that_repeats_an_id():
    data = Ratings.from_coo([0, 1], [0, 1], [1.0, 2.0], item_ids=[5, 6])
    with pytest.raises(InputError, match="item id '5' is there twice"):  # every rating of 5 went to the first
        data.with_items(np.array([5, 5, 6]))


def test_with_items_names_the_unknown_item_and_its_user():
    # It named a row of the CSR order ("row 3"), which no file or frame has.
    data = Ratings.from_ids(["b", "a", "b", "c"], [10, 11, 12, 10], [1.0, 2.0, 3.0, 4.0])
    with pytest.raises(InputError, match=r"item id 12 \(rated by user b; 1 ratings on unknown items\) is not in "
                                         r"the model's items"):
        data.with_items(np.array([10, 11]))
