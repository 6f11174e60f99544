"""The leak-free evaluation protocol's split of one data set (docs/pipeline.md).

The frozen item side must never see the ratings that pick the hyper-parameters and the epoch
count, nor those the result is scored on: if it did, a user embedding could "look them up"
through the item vectors and the validation loss would be far too optimistic.  So the data is
split once, seeded, into

* *new users*: a fraction of the users held out whole, folded in at serving time;
* for every other (*known*) user, a pretraining part (the item side is fitted on it and the user
  embeddings are retrained on it), a validation part (tuning and early stopping) and a test part.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .contract import MASK32, MAX_SEED
from .data import Ratings, as_ratings
from .errors import InputError, check_fraction, check_int
from .trainer import check_ratings


@dataclass(frozen=True)
class ProtocolSplit:
    """The parts of one data set under the leak-free protocol.

    ``pretrain``, ``val`` and ``test`` hold the known users: the same users at the same indices,
    each rating in exactly one of them.  ``new_users`` holds every rating of the held-out users
    (``None`` when no users are held out); ``new_fold_in`` / ``new_test`` split those ratings into
    what is folded in at serving time and what the fold-in is scored on (the same users, at the
    same indices; ``None`` without new users).  Every part keeps the data's item indices.
    """

    pretrain: Ratings
    val: Ratings
    test: Ratings
    new_users: Ratings | None
    new_fold_in: Ratings | None
    new_test: Ratings | None

    def with_items(self, item_ids) -> "ProtocolSplit":
        """Every part re-indexed onto ``item_ids`` (a model's); InputError naming an item it lacks."""
        parts = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        return ProtocolSplit(**{name: None if part is None else part.with_items(item_ids)
                                for name, part in parts.items()})


def protocol_split(data: Ratings, new_users: float = 0.2, val: float = 0.2, test: float = 0.2, *,
                   seed: int = 0) -> ProtocolSplit:
    """Split ``data`` for the leak-free protocol; deterministic in ``seed``.

    Args:
        data: all the ratings (``Ratings``, or a pandas DataFrame as ``Ratings.from_pandas`` reads it).
        new_users: fraction of the users held out as new users, in [0, 1).
        val: fraction of each known user's ratings for validation, in (0, 1).
        test: fraction of each user's ratings for testing, in [0, 1); a new user's other ratings
            are its fold-in part.  ``val + test < 1``: the rest of a known user's ratings is its
            pretraining part.
        seed: in ``[0, 2**32 - 1]``; seeds the choice of new users (``Ratings.split_users``: by
            user id, so the same users in another order hold out the same new users) and the
            per-user splits (``Ratings.split_per_user`` with ``seed``, ``seed + 1`` and ``seed + 2``,
            mod ``2**32``: by user and item id, so each user's parts depend on its own ratings only).

    Every part is a function of the ids and values of the ratings, the fractions and ``seed``: the
    same users in another order or the items under other indices give the same parts, and one
    more user changes the new users by at most one in and one out and leaves the parts of every
    other user that stays known (or stays new) as they were.
    Fractions of a user's ratings are rounded per user (``Ratings.split_per_user``).  Raises
    InputError naming the row for malformed hand-built ratings, naming the argument for a bad
    fraction, and when the split leaves no known users, or a pretraining or validation part (or,
    with ``test > 0``, a test part) without ratings.
    """
    data = as_ratings(data, "data")
    check_ratings(data, "data", data.n_items)  # a hand-built indptr that ended short dropped ratings from every part
    new_users = check_fraction("new_users", new_users)
    val = check_fraction("val", val, zero=False)
    test = check_fraction("test", test)
    seed = check_int("seed", seed, 0, MAX_SEED)
    if val + test >= 1.0:
        raise InputError(f"val + test must be < 1 (the rest is the pretraining part), got val={val}, test={test}")
    known, new = data.split_users(new_users, seed) if new_users > 0 else (data, None)
    if known.n_users == 0:
        raise InputError(f"new_users={new_users} holds out all {data.n_users} users: no known users are left")
    rest, test_part = known.split_per_user(test, seed)
    pretrain_part, val_part = rest.split_per_user(val / (1.0 - test), (seed + 1) & MASK32)
    for name, part, fraction in (("pretraining", pretrain_part, 1.0 - val - test), ("validation", val_part, val),
                                 ("test", test_part, test)):
        if part.nnz == 0 and fraction > 0:
            raise InputError(f"the {name} part is empty: {known.n_users} known users with {known.nnz} ratings, "
                             f"{fraction:g} of each user's ratings (rounded per user) gives none; "
                             "use more data or other fractions (val, test)")
    new_fold_in, new_test = new.split_per_user(test, (seed + 2) & MASK32) if new is not None else (None, None)
    return ProtocolSplit(pretrain_part, val_part, test_part, new, new_fold_in, new_test)
