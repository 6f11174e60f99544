"""tests/benchmarks/quality_study.py's ``first_k``: a new user's k fold-in ratings are keyed by id."""
import sys
from pathlib import Path

import numpy as np

from problems import permuted_users, random_ratings
from retrain.data import Ratings

sys.path.insert(0, str(Path(__file__).parent / "benchmarks"))  # the study imports ml100k beside it
import quality_study  # noqa: E402


def _by_user(part: Ratings) -> dict:
    """user id -> sorted (item id, rating) pairs."""
    users = part.user_ids[part.user_of_row()]
    pairs = {}
    for user, item, rating in zip(users.tolist(), part.item_ids[part.items].tolist(), part.ratings.tolist()):
        pairs.setdefault(user, []).append((item, rating))
    return {user: sorted(p) for user, p in pairs.items()}


def test_a_new_users_k_ratings_do_not_depend_on_the_row_order_or_the_other_users():
    data = random_ratings(40, 30, counts=np.arange(40) % 9 + 1, seed=4)
    fold, test = quality_study.first_k(data, 3, seed=2)
    assert (fold.counts == 3).all() and (fold.counts + test.counts == data.counts[data.counts > 3]).all()
    # The same users in another order, and one more user (its id sorts first): the row draw
    # re-chose every user's three ratings.
    other = permuted_users(data, np.random.default_rng(0).permutation(40))
    extra = Ratings.from_ids(np.concatenate([other.user_ids[other.user_of_row()], [1] * 6]),
                             np.concatenate([other.item_ids[other.items], np.arange(6)]),
                             np.concatenate([other.ratings, np.full(6, 4.0)]),
                             np.concatenate([other.weights, np.ones(6)]))
    fold_again, _ = quality_study.first_k(extra, 3, seed=2)
    again = _by_user(fold_again)
    assert again.pop(1) and again == _by_user(fold)
    nested, _ = quality_study.first_k(data, 1, seed=2)  # k = 1's rating is among k = 3's
    three = _by_user(fold)
    assert all(set(p) <= set(three[u]) for u, p in _by_user(nested).items() if u in three)
