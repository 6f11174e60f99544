"""Ratings: construction from every source, canonical order, checks, splits and subsamples."""
import hashlib

import numpy as np
import pytest
import torch

from retrain import InputError
from problems import permuted_items, permuted_users, ratings_by_id, users_by_id
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
    (dict(users=[0, 1], items=[0, 1], ratings=[1, 2], n_users=2.5),
     r"n_users must be an integer in \[0, 2\*\*63 - 1\], got 2.5"),
    (dict(users=[0, 1], items=[0, 1], ratings=[1, 2], n_items=True),
     r"n_items must be an integer in \[0, 2\*\*63 - 1\], got True"),
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
    (lambda r: r.split_per_user(0.2, seed=-1), r"seed must be an integer in \[0, 4294967295\], got -1"),
    (lambda r: r.split_per_user(0.2, seed=2**32), "seed must be an integer in"),  # hashed as 32 bits: 2^32 would be 0
    (lambda r: r.split_random(0.2, seed=2**32), "seed must be an integer in"),
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


# ----------------------------------------------------------------------------- keyed user samples
# The oracle: docs/semantics.md's rank, in Python integers (not retrain.contract's numpy code).
def _fmix32(x):
    x ^= x >> 16
    x = (x * 0x85EBCA6B) & 0xFFFFFFFF
    x ^= x >> 13
    x = (x * 0xC2B2AE35) & 0xFFFFFFFF
    return x ^ (x >> 16)


def _combine(h, v):
    return _fmix32(h ^ ((v + 0x9E3779B9) & 0xFFFFFFFF))


def _word(id_):
    """docs/semantics.md's id word: an integer id mod 2^64, a string's 8-byte BLAKE2b digest
    (``digest_size=8``), little-endian."""
    if isinstance(id_, str):
        return int.from_bytes(hashlib.blake2b(id_.encode(), digest_size=8).digest(), "little")
    return id_ % 2**64


def _rank(user_id, seed):
    """(hash, word, id) of docs/semantics.md."""
    word = _word(user_id)
    return _combine(_combine(_combine(0x5E1EC7ED, seed), word & 0xFFFFFFFF), word >> 32), word, user_id


def _chosen_by_hand(ids, fraction, seed):
    k = max(1, round(len(ids) * fraction))
    return sorted(sorted(ids, key=lambda u: _rank(u, seed))[:k], key=ids.index)


EDGE_INT64 = [-2**63, -2**63 + 1, -2**32, -1, 0, 1, 2**32 - 1, 2**32, 2**63 - 2, 2**63 - 1]
NAMES = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy", "ß", "用户"]


@pytest.mark.parametrize("ids,dtype,fraction,seed,expected", [
    # Fixed values, each also recomputed from the formula above (an implementation that agreed with
    # itself but not with the documented rank fails either way).
    (EDGE_INT64, np.int64, 0.3, 0, [-2**32, 2**32 - 1, 2**63 - 2]),
    (EDGE_INT64, np.int64, 0.5, 7, [-2**63, -2**63 + 1, 0, 1, 2**63 - 1]),
    ([2**63, 2**64 - 1, 5, 2**63 + 1], np.uint64, 0.5, 3, [2**63, 5]),
    (NAMES, str, 0.25, 0, ["carol", "frank", "grace"]),
    (NAMES, str, 0.5, 11, ["carol", "dave", "erin", "frank", "grace", "judy"]),
    # 159907 and -248685 share the hash at seed 0: the smaller 64-bit word (159907; -248685's is
    # 2^64 - 248685) breaks the tie, given in either order
    ([-248685, 159907], np.int64, 0.5, 0, [159907]),
    ([159907, -248685], np.int64, 0.5, 0, [159907]),
])
def test_sample_users_chooses_the_least_ranked_ids(ids, dtype, fraction, seed, expected):
    assert _chosen_by_hand(ids, fraction, seed) == expected
    chosen = sample_users(np.array(ids, dtype=dtype), fraction, seed)
    assert chosen.dtype == np.int64 and [ids[i] for i in chosen] == expected
    if len(ids) == 2:
        assert _rank(ids[0], seed)[0] == _rank(ids[1], seed)[0]  # the case really is a tie


def test_sample_users_edge_counts():
    assert sample_users(np.array([4, 2, 9]), 1.0, 5).tolist() == [0, 1, 2]
    assert sample_users(np.array([4, 2, 9]), 0.01, 5).size == 1  # at least one user
    assert sample_users(np.zeros(0, dtype=np.int64), 0.5, 0).size == 0
    with pytest.raises(InputError, match=r"seed must be an integer in \[0, 4294967295\], got 4294967296"):
        sample_users(np.array([1, 2]), 0.5, 2**32)  # the hash takes 32 bits of seed: 2^32 would be seed 0


def test_subsample_and_holdout_do_not_depend_on_the_users_order():
    r = Ratings.from_ids(np.repeat(np.random.default_rng(0).integers(-2**63, 2**63 - 1, 120), 3),
                         np.tile([0, 1, 2], 120), np.arange(360) % 5 + 1.0)
    for seed in (0, 1, 2):
        other = permuted_users(r, np.random.default_rng(seed).permutation(r.n_users))
        assert not np.array_equal(other.user_ids, r.user_ids)
        assert users_by_id(other.subsample_users(0.3, seed)) == users_by_id(r.subsample_users(0.3, seed))
        for mine, theirs in zip(r.split_users(0.2, seed), other.split_users(0.2, seed)):
            assert users_by_id(mine) == users_by_id(theirs)


@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_one_more_user_changes_the_sample_by_at_most_one_in_and_one_out(where):
    ids = np.sort(np.random.default_rng(1).choice(10**6, 400, replace=False)).astype(np.int64)
    new = {"first": -5, "middle": int(ids[200]) + 1, "last": 10**7}[where]
    grown = np.sort(np.append(ids, new))  # as a file or frame gives them: sorted, every index after the new one shifted
    for fraction in (0.1, 0.25, 0.5, 0.9):
        for seed in range(8):
            before = set(ids[sample_users(ids, fraction, seed)].tolist())
            after = set(grown[sample_users(grown, fraction, seed)].tolist())
            k_before, k_after = max(1, round(400 * fraction)), max(1, round(401 * fraction))
            assert (len(before), len(after)) == (k_before, k_after)
            if k_after == k_before:  # at most the new user in, one boundary user out
                assert after - before <= {new} and len(before - after) == len(after - before)
            else:  # k grew by the rounding: one user in (the new one or the next of the old order), none out
                assert before < after and len(after - before) == 1


def test_sample_users_includes_each_user_at_the_fraction_over_seeds():
    # 2000 seeds: a user's rate has a standard deviation of 0.01 around 0.3; +-0.05 is 5 of them, for
    # consecutive integer ids (the hash must not keep their order) and for strings.
    for ids in (np.arange(40, dtype=np.int64), np.array([f"user{i}" for i in range(40)])):
        chosen = np.zeros(len(ids))
        pairs = 0
        for seed in range(2000):
            picked = np.zeros(len(ids), dtype=bool)
            picked[sample_users(ids, 0.3, seed)] = True
            chosen += picked
            pairs += (picked[1:] & picked[:-1]).sum()
        rate = chosen / 2000
        assert np.all(np.abs(rate - 0.3) < 0.05), rate
        # neighbours are not chosen together more (or less) often than two of 12 in 40 users by chance
        both = pairs / (2000 * 39)
        assert abs(both - 12 / 40 * 11 / 39) < 0.02, both


def test_split_users_is_disjoint():
    r = synthetic_ratings(50, 30, 8, seed=0)
    kept, held = r.split_users(0.2, seed=0)
    assert held.n_users == 10 and kept.n_users == 40
    assert not set(kept.user_ids) & set(held.user_ids)
    assert kept.nnz + held.nnz == r.nnz


# ----------------------------------------------------------------------------- keyed rating splits
# The oracle: docs/semantics.md's per-rating hash and rank, in Python integers.
def _rating_hash(user_id, item_id, seed):
    h = _combine(0x5B1175ED, seed)
    for word in (_word(user_id), _word(item_id)):
        h = _combine(_combine(h, word & 0xFFFFFFFF), word >> 32)
    return h


def _split_by_hand(rows, fraction, seed):
    """The rows ``(user id, item id, rating, weight)`` of the second part, sorted: each user's
    ``round(fraction * n_u)`` of least ``(hash, item word, item id, rating, weight)``."""
    chosen = []
    for user in {row[0] for row in rows}:
        mine = sorted((row for row in rows if row[0] == user),
                      key=lambda row: (_rating_hash(user, row[1], seed), _word(row[1]), row[1], row[2], row[3]))
        chosen += mine[:round(fraction * len(mine))]
    return sorted(chosen)


def keyed_ratings(seed=0, n_users=50, n_items=30) -> Ratings:
    """Users with string ids, integer item ids of both signs (other high words), neither in index
    order; some items rated twice by one user, with other ratings or weights."""
    rng = np.random.default_rng(seed)
    users = np.repeat(np.arange(n_users), rng.integers(1, 14, n_users))
    return Ratings.from_coo(users, rng.integers(0, n_items, len(users)), rng.integers(1, 6, len(users)),
                            rng.choice([0.5, 1.0, 2.0], len(users)), n_users=n_users, n_items=n_items,
                            user_ids=np.array([f"u{i}" for i in rng.permutation(n_users)]),
                            item_ids=rng.choice(2**40, n_items, replace=False) - 2**39)


# At seed 0, fraction 0.5: items 21385 and -266 tie on the hash for user 7 (the smaller word,
# 21385's, goes first); user 8 holds out round(1.5) = 2: item 4 (the least hash) and one of its
# two ratings of item 9 (the same hash: the smaller rating); user -3 holds out round(2.5) = 2
# (half to even): items 1 and 2, of the least hashes.
TINY = [(7, -266, 4.0, 1.0), (7, 21385, 3.0, 1.0), (8, 9, 4.0, 1.0), (8, 4, 1.0, 1.0), (8, 9, 2.0, 1.0),
        (-3, 1, 5.0, 1.0), (-3, 2, 4.0, 2.0), (-3, 3, 3.0, 1.0), (-3, 4, 2.0, 1.0), (-3, 5, 1.0, 1.0)]
TINY_HELD = [(-3, 1, 5.0, 1.0), (-3, 2, 4.0, 2.0), (7, 21385, 3.0, 1.0), (8, 4, 1.0, 1.0), (8, 9, 2.0, 1.0)]


def test_split_per_user_holds_out_the_documented_least_ranked_ratings():
    assert _rating_hash(7, 21385, 0) == _rating_hash(7, -266, 0)  # the case really is a tie
    assert _split_by_hand(TINY, 0.5, 0) == TINY_HELD  # the fixed values are the documented formula's
    users, items, ratings, weights = zip(*TINY)
    for order in ([*range(10)], [*range(9, -1, -1)]):  # the rows in either order
        r = Ratings.from_ids(np.array(users)[order], np.array(items)[order], np.array(ratings)[order],
                             np.array(weights)[order])
        train, val = r.split_per_user(0.5, seed=0)
        assert ratings_by_id(val) == TINY_HELD
        assert sorted(ratings_by_id(train) + ratings_by_id(val)) == sorted(TINY)
    r = keyed_ratings()
    rows = ratings_by_id(r)
    for fraction, seed in ((0.2, 0), (0.5, 3), (0.75, 2**32 - 1)):
        train, val = r.split_per_user(fraction, seed)
        assert ratings_by_id(val) == _split_by_hand(rows, fraction, seed)
        assert sorted(ratings_by_id(train) + ratings_by_id(val)) == rows


def test_split_random_takes_each_rating_of_hash_below_the_fraction():
    r = keyed_ratings(seed=4)
    rows = ratings_by_id(r)
    for fraction, seed in ((0.3, 0), (0.5, 9)):
        rest, chosen = r.split_random(fraction, seed)
        expected = [row for row in rows if _rating_hash(row[0], row[1], seed) < fraction * 2**32]
        assert ratings_by_id(chosen) == expected and 0 < len(expected) < len(rows)
        assert sorted(ratings_by_id(rest) + expected) == rows


@pytest.mark.parametrize("fraction", [0.1, 0.25, 0.5, 0.7])
def test_split_per_user_holds_out_round_fraction_n_of_each_user(fraction):
    r = Ratings.from_coo(np.repeat(np.arange(12), np.arange(1, 13)), np.concatenate([np.arange(n) for n in range(1, 13)]),
                         np.ones(78))
    train, val = r.split_per_user(fraction, seed=1)
    assert val.counts.tolist() == [round(n * fraction) for n in range(1, 13)]  # half to even: 0.5 -> 0, 2.5 -> 2
    assert (train.counts + val.counts).tolist() == list(range(1, 13))


@pytest.mark.parametrize("split", ["split_per_user", "split_random"])
def test_rating_splits_do_not_depend_on_the_users_or_items_order(split):
    # The same ratings read from another file order or under another catalogue's item indices
    # got other splits: the draw was one random number per row, in CSR order.
    r = keyed_ratings(seed=1)
    for seed in (0, 1, 2):
        mine = getattr(r, split)(0.3, seed)
        rng = np.random.default_rng(seed)
        for other in (permuted_users(r, rng.permutation(r.n_users)), permuted_items(r, rng.permutation(r.n_items))):
            assert [ratings_by_id(part) for part in getattr(other, split)(0.3, seed)] == [ratings_by_id(p) for p in mine]


def test_one_item_rated_twice_splits_alike_in_either_row_order():
    # Two ratings of one item by one user tie on the hash and the item; the rating decides, not
    # the input order (which the canonical order keeps for them).
    users = np.repeat(np.arange(40), 2)
    items, ratings = np.zeros(80, dtype=np.int64), np.tile([2.0, 4.0], 40)
    for split in ("split_per_user", "split_random"):
        parts = [[ratings_by_id(p) for p in getattr(Ratings.from_coo(users[o], items[o], ratings[o]), split)(0.5, 3)]
                 for o in (np.arange(80), np.arange(80)[::-1])]
        assert parts[0] == parts[1]
    assert set(Ratings.from_coo(users, items, ratings).split_per_user(0.5, 3)[1].ratings.tolist()) == {2.0}


@pytest.mark.parametrize("new_id", ["a", "u25x", "zz"])
def test_one_more_user_leaves_every_other_users_split(new_id):
    # A daily job's data sorted by id: a new user shifts every later user's rows and index; each
    # other user's train / val ratings must stay what they were.
    r = keyed_ratings(seed=2)
    grown = Ratings.from_ids(np.concatenate([r.user_ids[r.user_of_row()], [new_id] * 5]),
                             np.concatenate([r.item_ids[r.items], r.item_ids[:5]]),
                             np.concatenate([r.ratings, [1.0, 2.0, 3.0, 4.0, 5.0]]),
                             np.concatenate([r.weights, np.ones(5)]))
    for split in ("split_per_user", "split_random"):
        for seed in (0, 5):
            before = [ratings_by_id(part) for part in getattr(r, split)(0.3, seed)]
            after = [[row for row in ratings_by_id(part) if row[0] != new_id] for part in getattr(grown, split)(0.3, seed)]
            assert after == before


def test_rating_splits_hold_out_each_rating_at_the_fraction_over_seeds():
    # 1000 seeds: a rating's rate has a standard deviation of 0.0145 around 0.3; +-0.075 is five of
    # them (320 ratings: the largest of their deviations is about three), for consecutive item ids
    # (the hash must not keep their order) and both splits.  The seeds are fixed: not flaky.
    r = Ratings.from_coo(np.repeat(np.arange(32), 10), np.tile(np.arange(10), 32), np.ones(320))
    for split in ("split_per_user", "split_random"):
        held = np.zeros(r.nnz)
        for seed in range(1000):
            part = getattr(r, split)(0.3, seed)[1]
            held[part.user_of_row() * 10 + part.items] += 1  # r's row of (user, item)
        assert np.all(np.abs(held / 1000 - 0.3) < 0.075), (split, held.min(), held.max())


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
