"""Ratings as CSR by user, with the canonical per-user order, splits and a synthetic generator.

Inside a user, ratings are sorted by item index, ties kept in input order (a stable sort), so the
same ratings give the same order (and so the same per-epoch permutation) at training and at
serving time.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from .contract import MAX_SEED, sample_ratings, sample_ratings_per_user, sample_users
from .errors import InputError, check_bool, check_float, check_fraction, check_indices, check_int
from .ids import IdIndex, exact_ids, format_id

log = logging.getLogger(__name__)

# Column names ``from_pandas`` and the CSV loader look for, in order: MovieLens, then plain.
COLUMN_NAMES = {"user": ("userId", "user"), "item": ("movieId", "item"), "rating": ("rating",),
                "weight": ("weight",)}


def _as_numpy(x, name: str) -> np.ndarray:
    """numpy view of a numpy array, torch tensor, pandas Series or sequence."""
    if hasattr(x, "detach"):  # torch.Tensor
        x = x.detach().cpu().numpy()
    elif hasattr(x, "to_numpy"):  # pandas
        x = x.to_numpy()
    x = np.asarray(x)
    if x.ndim != 1:
        raise InputError(f"{name} must be one-dimensional, got shape {x.shape}")
    return x


def _check_values(values: np.ndarray, name: str) -> np.ndarray:
    """Ratings or weights as float64; InputError for text (numpy reads "1_0" as 10) or complex
    numbers (it drops the imaginary part)."""
    if not values.size or values.dtype.kind not in "USOc":
        return values.astype(np.float64)
    row = 0 if values.dtype.kind != "O" else next(
        (row for row, x in enumerate(values) if isinstance(x, (str, bytes, complex))), None)  # None, pd.NA: NaN
    if row is not None:
        value = values[row].item() if isinstance(values[row], np.generic) else values[row]
        raise InputError(f"{name}s must be numbers: row {row} has {value!r} ({values.dtype} values)")
    return values.astype(np.float64)


def value_problem(values: np.ndarray, name: str) -> tuple[int, str, str] | None:
    """``(row, rule, value)`` of the first of ``values`` (float64 ratings or weights, ``name``
    ``"rating"`` or ``"weight"``) that ``Ratings`` refuses: not finite (also beyond float32's
    range), or a negative weight; None when there is none."""
    with np.errstate(over="ignore"):  # 1e39 is finite in float64 but inf in float32
        bad = ~np.isfinite(values) | ~np.isfinite(values.astype(np.float32))
    if bad.any():
        row = int(np.argmax(bad))
        beyond = " (beyond float32's range)" if np.isfinite(values[row]) else ""
        return row, "must be finite", f"{values[row]}{beyond}"
    if name == "weight" and (values < 0).any():
        row = int(np.argmax(values < 0))
        return row, "must be >= 0", f"{values[row]}"
    return None


def _check_ids(ids: np.ndarray, n: int | None, name: str) -> tuple[np.ndarray, int]:
    if ids.dtype == np.bool_:  # True would be index 1
        raise InputError(f"{name} indices must be integers, got bool values")
    if ids.size and not np.issubdtype(ids.dtype, np.integer):
        if not np.all(np.isfinite(ids)) or np.any(ids != np.round(ids)):
            raise InputError(f"{name} must be integer indices, got non-integer values")
    if ids.dtype == np.uint64 and ids.size and ids.max() > np.iinfo(np.int64).max:
        row = int(np.argmax(ids))
        raise InputError(f"{name} index out of range: row {row} has {name} {ids[row]}")
    ids = ids.astype(np.int64)
    if ids.size and ids.min() < 0:
        row = int(np.argmin(ids))
        raise InputError(f"{name} must be >= 0: row {row} has {name} {ids[row]}")
    if n is None:
        n = int(ids.max()) + 1 if ids.size else 0
    n = check_int(f"n_{name}s", n, 0)  # n_users=2.5 was 2
    if ids.size and ids.max() >= n:
        row = int(np.argmax(ids))
        raise InputError(f"{name} out of range: row {row} has {name} {ids[row]} >= {n}")
    return ids, n


@dataclass(frozen=True, eq=False)
class Ratings:
    """Ratings ``(user, item, rating, weight)`` as CSR by user.

    Attributes:
        indptr: int64 ``[n_users + 1]``; user ``u``'s ratings are rows ``indptr[u]:indptr[u+1]``.
        items: int64 ``[nnz]`` item indices in ``[0, n_items)``, sorted inside each user.
        ratings: float32 ``[nnz]``.
        weights: float32 ``[nnz]``, ``>= 0``.
        user_ids: ``[n_users]`` original user ids, int64, uint64 or str (``retrain.ids``); they key
            each user's init and schedule (``retrain.contract.user_key``).
        item_ids: ``[n_items]`` original item ids, int64, uint64 or str.
    """

    indptr: np.ndarray
    items: np.ndarray
    ratings: np.ndarray
    weights: np.ndarray
    user_ids: np.ndarray
    item_ids: np.ndarray

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_coo(cls, users, items, ratings, weights=None, *, n_users=None, n_items=None,
                 user_ids=None, item_ids=None) -> "Ratings":
        """Build from parallel arrays of user and item *indices* (numpy, torch or sequences).

        ``n_users`` / ``n_items`` default to ``max + 1``; ``user_ids`` / ``item_ids`` (original ids)
        default to the indices.  Raises InputError naming the first bad row.
        """
        users = _as_numpy(users, "users")
        items = _as_numpy(items, "items")
        ratings = _check_values(_as_numpy(ratings, "ratings"), "rating")
        weights = np.ones(len(ratings)) if weights is None else _check_values(_as_numpy(weights, "weights"), "weight")
        lengths = {len(users), len(items), len(ratings), len(weights)}
        if len(lengths) != 1:
            raise InputError(
                f"users, items, ratings and weights must have equal lengths, got "
                f"{len(users)}, {len(items)}, {len(ratings)}, {len(weights)}"
            )
        if len(ratings) == 0:
            raise InputError("ratings is empty: need at least one rating")
        users, n_users = _check_ids(users, n_users, "user")
        items, n_items = _check_ids(items, n_items, "item")
        for name, values in (("rating", ratings), ("weight", weights)):
            problem = value_problem(values, name)
            if problem is not None:
                row, rule, value = problem
                raise InputError(f"{name} {rule}: row {row} has {name} {value}")
        given_users, given_items = user_ids is not None, item_ids is not None
        user_ids = np.arange(n_users, dtype=np.int64) if user_ids is None else exact_ids(user_ids, "user_ids")
        item_ids = np.arange(n_items, dtype=np.int64) if item_ids is None else exact_ids(item_ids, "item_ids")
        if len(user_ids) != n_users or len(item_ids) != n_items:
            raise InputError(
                f"user_ids/item_ids must have n_users={n_users}/n_items={n_items} entries, "
                f"got {len(user_ids)}/{len(item_ids)}"
            )
        for ids, what, given in ((user_ids, "user id", given_users), (item_ids, "item id", given_items)):
            if given:  # two users of one id would share a key and a row in every lookup
                IdIndex(ids).unique(what)
        return cls._from_valid(users, items, ratings, weights, n_users, user_ids, item_ids)

    @classmethod
    def from_ids(cls, user_ids, item_ids, ratings, weights=None, *, names=("user_ids", "item_ids")) -> "Ratings":
        """Build from original ids (integers of any width, or strings: ``retrain.ids``); users and
        items are indexed in sorted id order.  ``names`` name the two columns in error messages."""
        uniq_u, users = np.unique(exact_ids(user_ids, names[0]), return_inverse=True)
        uniq_i, items = np.unique(exact_ids(item_ids, names[1]), return_inverse=True)
        return cls.from_coo(users.reshape(-1), items.reshape(-1), ratings, weights, user_ids=uniq_u, item_ids=uniq_i)

    @classmethod
    def from_scipy(cls, matrix, weights=None) -> "Ratings":
        """Build from a scipy.sparse matrix ``[n_users, n_items]`` whose stored entries are ratings."""
        coo = matrix.tocoo()
        return cls.from_coo(coo.row, coo.col, coo.data, weights, n_users=coo.shape[0], n_items=coo.shape[1])

    @classmethod
    def from_pandas(cls, frame, user=None, item=None, rating=None, weight=None) -> "Ratings":
        """Build from a DataFrame of original ids (integers or strings).

        Columns not named by the arguments are found by name: ``userId`` or ``user``, ``movieId``
        or ``item``, ``rating``, and ``weight`` when present (else every weight is 1).  A log line
        says which columns were used.
        """
        columns = find_columns(list(frame.columns), dict(user=user, item=item, rating=rating, weight=weight),
                               "the frame", "name it: Ratings.from_pandas(frame, {name}='...')")
        log.info("from_pandas: users from column %r, items from %r, ratings from %r%s", columns["user"],
                 columns["item"], columns["rating"], f", weights from {columns['weight']!r}" if columns["weight"] else "")
        weights = frame[columns["weight"]] if columns["weight"] else None
        return cls.from_ids(frame[columns["user"]], frame[columns["item"]], frame[columns["rating"]], weights,
                            names=(f"column {columns['user']!r}", f"column {columns['item']!r}"))

    @classmethod
    def _from_valid(cls, users, items, ratings, weights, n_users, user_ids, item_ids) -> "Ratings":
        order = np.lexsort((items, users))  # by user, then item; lexsort is stable
        counts = np.bincount(users, minlength=n_users)
        indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        return cls(indptr, items[order].astype(np.int64), ratings[order].astype(np.float32),
                   weights[order].astype(np.float32), user_ids, item_ids)

    # ----------------------------------------------------------------- views
    @property
    def n_users(self) -> int:
        return len(self.indptr) - 1

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def nnz(self) -> int:
        return len(self.items)

    @property
    def counts(self) -> np.ndarray:
        """Ratings per user, int64 ``[n_users]``."""
        return self.indptr[1:] - self.indptr[:-1]  # np.diff costs a few microseconds more: serving calls this

    def user_of_row(self) -> np.ndarray:
        """User index of every stored rating, int64 ``[nnz]``."""
        return np.repeat(np.arange(self.n_users, dtype=np.int64), self.counts)

    def __repr__(self) -> str:
        return f"Ratings(n_users={self.n_users}, n_items={self.n_items}, nnz={self.nnz})"

    # ----------------------------------------------------------------- derived sets
    def _subset_rows(self, keep: np.ndarray) -> "Ratings":
        """The same users and items, keeping the rows where ``keep`` is true (order preserved)."""
        users = self.user_of_row()[keep]
        counts = np.bincount(users, minlength=self.n_users)
        indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        return Ratings(indptr, self.items[keep], self.ratings[keep], self.weights[keep], self.user_ids, self.item_ids)

    def split_random(self, fraction: float = 0.2, seed: int = 0) -> tuple["Ratings", "Ratings"]:
        """Split all ratings at random (not per user) into (rest, about ``fraction`` of the ratings).

        Each rating goes to the second part by a seeded hash of its user's and item's ids
        (``retrain.contract.sample_ratings``), independently of the others: the split depends on
        the ids, ``fraction`` and ``seed`` (in ``[0, 2**32 - 1]``), not on the order of the rows,
        the user or item indices, or the other users.
        """
        fraction, seed = check_fraction("fraction", fraction), check_int("seed", seed, 0, MAX_SEED)
        chosen = sample_ratings(self.user_of_row(), self.items, self.user_ids, self.item_ids, fraction, seed)
        return self._subset_rows(~chosen), self._subset_rows(chosen)

    def split_per_user(self, val_fraction: float = 0.2, seed: int = 0) -> tuple["Ratings", "Ratings"]:
        """Split each user's ratings at random into (train, val), ``round(val_fraction * n_u)``
        (half to even) to val.

        The ratings that go to val are those of least seeded hash of (user id, item id)
        (``retrain.contract.sample_ratings_per_user``; ties broken by the item id, then the rating
        and weight): a user's split depends on its own ratings, ``val_fraction`` and ``seed`` (in
        ``[0, 2**32 - 1]``) only, not on the order of the users or rows, the user or item indices,
        or the other users (a new user leaves everyone else's split as it was).  Both parts keep
        every user and item index, so they describe the same users.
        """
        val_fraction = check_fraction("val_fraction", val_fraction)
        seed = check_int("seed", seed, 0, MAX_SEED)
        to_val = sample_ratings_per_user(self.user_of_row(), self.items, self.ratings, self.weights, self.user_ids,
                                         self.item_ids, val_fraction, seed)
        return self._subset_rows(~to_val), self._subset_rows(to_val)

    def select_users(self, users) -> "Ratings":
        """Ratings of the given user indices only, re-indexed ``0..len(users)-1`` in that order.
        ``users`` are integers in ``[0, n_users)`` (``retrain.errors.check_indices``: a bool mask is
        an InputError, ``np.flatnonzero(mask)`` are its indices; a negative index too)."""
        users = check_indices("users", users, self.n_users, "user")
        starts = self.indptr[users]
        counts = self.indptr[users + 1] - starts
        indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        # Row of position i of selected user j: starts[j] + (i - indptr[j]); no loop over users.
        rows = np.arange(indptr[-1], dtype=np.int64) + np.repeat(starts - indptr[:-1], counts)
        return Ratings(indptr, self.items[rows], self.ratings[rows], self.weights[rows], self.user_ids[users], self.item_ids)

    def subsample_users(self, fraction: float, seed: int = 0) -> "Ratings":
        """A seeded random ``fraction`` of the users (at least one), in index order.

        The users are chosen by their ids (``retrain.contract.sample_users``): the choice depends
        on the ids, ``fraction`` and ``seed`` (on the other users only through their count), not
        on the order the users come in.  So a train and a val set of the same users subsample to
        the same users, and so do the same users given in another order; one more user changes the
        choice by at most one user in and one out.
        """
        return self.select_users(sample_users(self.user_ids, fraction, seed))

    def split_users(self, fraction: float, seed: int = 0) -> tuple["Ratings", "Ratings"]:
        """Hold out a seeded random ``fraction`` of the users: returns (kept users, held-out users),
        each in index order.  The held-out users are those ``subsample_users`` chooses (by id)."""
        held = sample_users(self.user_ids, fraction, seed)
        kept = np.setdiff1d(np.arange(self.n_users), held)
        return self.select_users(kept), self.select_users(held)

    def with_items(self, item_ids, *, drop_unknown: bool = False) -> "Ratings":
        """Re-index items onto another item-id space (e.g. a model's ``head.item_ids``, or its
        ``head.item_index``: an ``IdIndex`` made once, for many requests).

        An item id that space lacks raises InputError naming it, or with ``drop_unknown`` its
        ratings are dropped (``self.counts - result.counts`` per user).
        """
        drop_unknown = check_bool("drop_unknown", drop_unknown)  # "no" dropped them
        index = _id_index(item_ids)
        position, found = self.known_items(index)
        if not found.all() and not drop_unknown:
            row = int(np.argmin(found))
            user = self.user_ids[np.searchsorted(self.indptr, row, side="right") - 1]
            # The row is one of the CSR order, which no file or frame has: name the user instead.
            raise InputError(f"item id {format_id(self.item_ids[self.items[row]])} (rated by user {format_id(user)}; "
                             f"{int((~found).sum())} ratings on unknown items) is not in the model's items")
        kept = self._subset_rows(found) if not found.all() else self
        # Already checked ratings: only the item order inside each user changes (it is canonical).
        return Ratings._from_valid(kept.user_of_row(), position[found], kept.ratings, kept.weights, self.n_users,
                                   self.user_ids, index.ids)

    def known_items(self, item_ids) -> tuple[np.ndarray, np.ndarray]:
        """Per stored rating: ``(index int64 [nnz], found bool [nnz])`` of its item in ``item_ids``
        (an id column or an ``IdIndex`` of one)."""
        index, found = _id_index(item_ids).find(self.item_ids)
        return index[self.items], found[self.items]

    def union(self, other: "Ratings") -> "Ratings":
        """Every rating of ``self`` and of ``other``, which must hold the same users and items
        (e.g. a train and a validation part)."""
        if (other.n_users != self.n_users or not np.array_equal(other.user_ids, self.user_ids)
                or not np.array_equal(other.item_ids, self.item_ids)):
            raise InputError("union needs ratings of the same users and items (e.g. train and val of one split)")
        return Ratings.from_coo(np.concatenate([self.user_of_row(), other.user_of_row()]),
                                np.concatenate([self.items, other.items]),
                                np.concatenate([self.ratings, other.ratings]),
                                np.concatenate([self.weights, other.weights]), n_users=self.n_users,
                                n_items=self.n_items, user_ids=self.user_ids, item_ids=self.item_ids)


def as_ratings(value, name: str, *, frames: bool = True) -> Ratings:
    """``value`` when it is ``Ratings``, a pandas DataFrame read by ``Ratings.from_pandas`` when
    ``frames``, else an InputError naming ``name`` (and, for a frame where one is not enough,
    how to build the ``Ratings``)."""
    if isinstance(value, Ratings):
        return value
    is_frame = hasattr(value, "columns") and hasattr(value, "to_numpy")
    if is_frame and frames:
        return Ratings.from_pandas(value)
    if is_frame:
        raise InputError(f"{name} must be retrain.Ratings, got a DataFrame: build one with retrain.Ratings.from_pandas "
                         "and split it with retrain.protocol_split, so that every part indexes the same users and "
                         "the model's items")
    raise InputError(f"{name} must be retrain.Ratings{' or a pandas DataFrame' if frames else ''}, "
                     f"got {type(value).__name__}")


def well_formed(ratings: Ratings, n_items: int, *, finite_ratings: bool = True) -> bool:
    """A request's cheap check (three reductions, no copies): False when an item index lies
    outside ``[0, n_items)``, a weight is negative or not finite, or (``finite_ratings``) a rating
    is not finite (a solver whose result shows a non-finite rating anyway may skip that one).
    Ratings built by the constructors pass; a hand-built one may not, and would gather another
    item's row (a negative index) or flip a rating's sign without an error.  It may also be False
    for well-formed ratings (other dtypes, a weight of -0.0, a float32 overflow):
    ``retrain.trainer.check_ratings`` then decides, and names the row."""
    items, weights = ratings.items, ratings.weights
    if not len(items):
        return True
    if items.dtype != np.int64 or weights.dtype != np.float32:
        return False
    # As uint64 a negative index is huge, and as uint32 a float32 is below the bits of +inf only
    # when it is finite and its sign bit clear: one max each covers both ends.
    return bool(_MAX(items.view(np.uint64)) < n_items and _MAX(weights.view(np.uint32)) < _FLOAT32_INF_BITS
                and (not finite_ratings or math.isfinite(np.dot(ratings.ratings, weights))))  # NaN/inf: not finite


_MAX = np.maximum.reduce  # the ufunc itself: ndarray.max's wrapper costs a microsecond per call
_FLOAT32_INF_BITS = 0x7F800000


def _id_index(item_ids) -> IdIndex:
    return item_ids if isinstance(item_ids, IdIndex) else IdIndex(exact_ids(item_ids, "item_ids")).unique("item id")


def find_columns(available: list, chosen: dict, where: str, fix: str) -> dict:
    """The column used for each of ``user``, ``item``, ``rating``, ``weight``: ``chosen[name]``
    when given (it must exist), else the first of ``COLUMN_NAMES[name]`` present; ``weight`` may
    be None (no such column).  InputError naming the missing column and those ``where`` has, and
    saying how to name it (``fix``, with ``{name}`` for the column's role)."""
    out = {}
    for name, candidates in COLUMN_NAMES.items():
        if chosen.get(name) is not None:
            if chosen[name] not in available:
                raise InputError(f"column {chosen[name]!r} not in {where} (columns: {available})")
            out[name] = chosen[name]
            continue
        out[name] = next((c for c in candidates if c in available), None)
        if out[name] is None and name != "weight":
            raise InputError(f"{where} has no {name} column: expected one of {list(candidates)} "
                             f"(columns: {available}); {fix.format(name=name)}")
    return out


def synthetic_ratings(n_users: int = 2000, n_items: int = 1000, mean_ratings_per_user: float = 40.0,
                      rank: int = 8, noise: float = 0.5, seed: int = 0) -> Ratings:
    """Realistic synthetic ratings on a 1-5 star scale.

    User activity and item popularity follow power laws (Zipf-like); each rating is a planted
    low-rank model ``mu + b_u + b_i + p_u . q_i`` plus Gaussian noise of std ``noise``, rounded to
    whole stars and clipped to ``[1, 5]``.  Each user rates at least 2 and at most ``n_items``
    distinct items.  ``user_ids`` / ``item_ids`` are the indices.
    """
    n_users, n_items = check_int("n_users", n_users, 1), check_int("n_items", n_items, 2)
    rank, seed = check_int("rank", rank, 1), check_int("seed", seed, 0)
    mean_ratings_per_user = check_float("mean_ratings_per_user", mean_ratings_per_user, 0.0, strict=True)
    noise = check_float("noise", noise, 0.0)
    rng = np.random.default_rng(seed)
    # Activity ~ Pareto (alpha 1.5) scaled to the requested mean, at least 2 per user.
    activity = rng.pareto(1.5, n_users) + 1.0
    counts = np.clip(np.round(activity / activity.mean() * mean_ratings_per_user), 2, n_items).astype(np.int64)
    popularity = 1.0 / np.arange(1, n_items + 1) ** 0.8
    popularity = popularity[rng.permutation(n_items)]
    popularity /= popularity.sum()
    users = np.repeat(np.arange(n_users, dtype=np.int64), counts)
    items = rng.choice(n_items, size=len(users), p=popularity)
    pairs = np.unique(users * n_items + items)  # drop repeated (user, item) pairs
    users, items = pairs // n_items, pairs % n_items
    sigma = (0.5 / rank) ** 0.25  # the interaction p_u . q_i has variance 0.5
    p = rng.normal(0, sigma, (n_users, rank)).astype(np.float32)
    q = rng.normal(0, sigma, (n_items, rank)).astype(np.float32)
    bu = rng.normal(0, 0.4, n_users).astype(np.float32)
    bi = rng.normal(0, 0.4, n_items).astype(np.float32)
    signal = 3.5 + bu[users] + bi[items] + np.einsum("nk,nk->n", p[users], q[items])
    r = np.clip(np.round(signal + rng.normal(0, noise, len(users))), 1, 5)
    return Ratings.from_coo(users, items, r, n_users=n_users, n_items=n_items)
