"""retrain.protocol_split: the leak-free parts partition the data, per rating, deterministically."""
from collections import Counter

import numpy as np
import pytest

import retrain
from problems import permuted_items, permuted_users
from retrain import InputError, Ratings, protocol_split


def tagged_ratings(n_users=120, n_items=60, seed=0) -> Ratings:
    """Synthetic ratings in which every rating carries a unique weight: its identity across the parts."""
    base = retrain.synthetic_ratings(n_users=n_users, n_items=n_items, mean_ratings_per_user=12, seed=seed)
    tags = np.random.default_rng(seed).permutation(base.nnz) + 1.0
    return Ratings.from_coo(base.user_of_row(), base.items, base.ratings, tags, n_users=base.n_users,
                            n_items=base.n_items, user_ids=base.user_ids + 1000, item_ids=base.item_ids + 5000)


def identities(part: Ratings | None) -> Counter:
    """The multiset of (original user id, original item id, rating, tag) of a part's ratings."""
    if part is None:
        return Counter()
    users, items = part.user_ids[part.user_of_row()], part.item_ids[part.items]
    return Counter(zip(users.tolist(), items.tolist(), part.ratings.tolist(), part.weights.tolist()))


def test_the_parts_partition_the_ratings_and_new_users_appear_only_in_theirs():
    data = tagged_ratings()
    split = protocol_split(data, new_users=0.25, val=0.2, test=0.3, seed=4)
    known = [split.pretrain, split.val, split.test]
    assert sum((identities(p) for p in known + [split.new_users]), Counter()) == identities(data)  # covered exactly
    assert len({tag for p in known + [split.new_users] for tag in p.weights}) == data.nnz  # each rating once
    assert identities(split.new_fold_in) + identities(split.new_test) == identities(split.new_users)

    new_ids = set(split.new_users.user_ids.tolist())
    assert len(new_ids) == round(0.25 * data.n_users) and split.new_users.nnz > 0
    for part in known:
        rated = set(part.user_ids[part.user_of_row()].tolist())
        assert not rated & new_ids
        assert np.array_equal(part.user_ids, split.pretrain.user_ids)  # same users, same indices
        assert np.array_equal(part.item_ids, data.item_ids)
    assert np.array_equal(split.new_fold_in.user_ids, split.new_test.user_ids)


def test_the_pretraining_part_never_holds_a_validation_or_test_rating():
    data = tagged_ratings(seed=1)
    split = protocol_split(data, seed=2)
    pretrain_tags = set(split.pretrain.weights.tolist())
    assert not pretrain_tags & set(split.val.weights.tolist())
    assert not pretrain_tags & set(split.test.weights.tolist())
    assert not set(split.val.weights.tolist()) & set(split.test.weights.tolist())
    # Each known user's ratings: 20 % (rounded) to test, then 20 % of the whole, i.e. a quarter of
    # the rest (rounded), to validation.
    known_counts = split.pretrain.counts + split.val.counts + split.test.counts
    assert np.array_equal(split.test.counts, np.round(known_counts * 0.2))
    assert np.array_equal(split.val.counts, np.round((known_counts - split.test.counts) * 0.25))


def test_no_new_users():
    data = tagged_ratings()
    split = protocol_split(data, new_users=0, seed=0)
    assert split.new_users is None and split.new_fold_in is None and split.new_test is None
    assert split.pretrain.n_users == data.n_users
    assert identities(split.pretrain) + identities(split.val) + identities(split.test) == identities(data)


def test_deterministic_in_the_seed():
    data = tagged_ratings()
    a, b, c = (protocol_split(data, seed=s) for s in (3, 3, 4))
    for name in ("pretrain", "val", "test", "new_users", "new_fold_in", "new_test"):
        assert identities(getattr(a, name)) == identities(getattr(b, name)), name
    assert identities(a.val) != identities(c.val)
    assert set(a.new_users.user_ids) != set(c.new_users.user_ids)


def test_with_items_reindexes_every_part():
    data = tagged_ratings()
    split = protocol_split(data, seed=0)
    catalogue = np.concatenate([data.item_ids[::-1], [1, 2, 3]])  # another order, and more items
    moved = split.with_items(catalogue)
    for name in ("pretrain", "val", "test", "new_users", "new_fold_in", "new_test"):
        assert identities(getattr(moved, name)) == identities(getattr(split, name)), name
        assert getattr(moved, name).n_items == len(catalogue)
    with pytest.raises(InputError, match="not in the model's items"):
        split.with_items(data.item_ids[1:])


PARTS = ("pretrain", "val", "test", "new_users", "new_fold_in", "new_test")


@pytest.mark.parametrize("seed", [0, 7, 2**32 - 1])  # the last: seed + 1 and seed + 2 wrap to 0 and 1
def test_the_same_ratings_in_another_order_give_the_same_parts(seed):
    # Another file's order of the users, or another catalogue's item indices, gave other
    # validation and test ratings to every user (the per-user draw went by row): run, tune and
    # demo tuned on other parts of the same data.
    data = tagged_ratings(seed=2)
    split = protocol_split(data, seed=seed)
    rng = np.random.default_rng(seed)
    users, items = rng.permutation(data.n_users), rng.permutation(data.n_items)
    for other in (permuted_users(data, users), permuted_items(data, items),
                  permuted_items(permuted_users(data, users), items)):
        moved = protocol_split(other, seed=seed)
        for name in PARTS:
            assert identities(getattr(moved, name)) == identities(getattr(split, name)), name


def test_one_more_user_leaves_the_other_users_parts():
    # A daily job's new user (its id sorts first: every other user's index and rows shift) may
    # swap one user in or out of the new users; everyone else keeps their parts rating for rating.
    data = tagged_ratings(seed=3)
    grown = Ratings.from_ids(np.concatenate([[1], data.user_ids[data.user_of_row()]]),
                             np.concatenate([[data.item_ids[0]], data.item_ids[data.items]]),
                             np.concatenate([[4.0], data.ratings]), np.concatenate([[0.5], data.weights]))
    for seed in (0, 1, 2):
        before, after = protocol_split(data, seed=seed), protocol_split(grown, seed=seed)
        known_in_both = set(before.pretrain.user_ids.tolist()) & set(after.pretrain.user_ids.tolist())
        new_in_both = set(before.new_users.user_ids.tolist()) & set(after.new_users.user_ids.tolist())
        assert len(known_in_both) >= before.pretrain.n_users - 1 and len(new_in_both) >= before.new_users.n_users - 1
        for names, kept in ((("pretrain", "val", "test"), known_in_both), (("new_fold_in", "new_test"), new_in_both)):
            for name in names:
                mine, theirs = (Counter({r: c for r, c in identities(getattr(s, name)).items() if r[0] in kept})
                                for s in (before, after))
                assert mine == theirs, (seed, name)


@pytest.mark.parametrize("kwargs,names", [
    (dict(new_users=1.0), "new_users"),
    (dict(new_users=-0.1), "new_users"),
    (dict(new_users=float("nan")), "new_users"),
    (dict(val=0.0), "val"),
    (dict(val=1.5), "val"),
    (dict(test=-0.2), "test"),
    (dict(test="0.2"), "test"),
    (dict(val=0.5, test=0.5), "val + test"),
    (dict(seed=-1), "seed"),
    (dict(seed=1.0), "seed"),
    (dict(seed=2**32), "seed"),  # the new users' hash takes 32 bits of seed: 2^32 would hold out seed 0's
])
def test_bad_arguments_raise_input_error_naming_them(kwargs, names):
    with pytest.raises(InputError, match=r"^" + names.replace("+", r"\+") + " must be"):
        protocol_split(tagged_ratings(), **kwargs)


def test_a_split_without_known_users_or_ratings_says_so():
    tiny = Ratings.from_coo([0, 0, 1, 1], [0, 1, 0, 1], [1, 2, 3, 4])
    with pytest.raises(InputError, match="no known users"):
        protocol_split(tiny, new_users=0.9)
    # Two ratings per user: 20 % of them rounds to none, so there is no validation rating at all.
    with pytest.raises(InputError, match="validation part is empty"):
        protocol_split(tiny, new_users=0, val=0.2, test=0)
    with pytest.raises(InputError, match="test part is empty"):
        protocol_split(tiny, new_users=0, val=0.5, test=0.2)
