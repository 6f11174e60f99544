"""Closed-form fold-in for linear heads: the exact per-user minimiser of the contract's objective.

For a linear head ``pred(e, i) = A[i] . e + c[i]`` and a user's ``n`` training ratings, the
full-batch objective ``(1/n) sum w (A_i . e + c_i - r)^2 + reg ||e||^2`` is minimised by
``(A^T W A / n + reg I) e = A^T W (r - c) / n``; with ``damping`` (below) the diagonal term is
``reg + damping / n``.  Both paths solve n times that system, ``(A^T W A + (n reg + damping) I) e =
A^T W (r - c)``: the same solution without dividing each ``[d, d]`` matrix by n.  Solved in
float64 (numpy) for all users at once, with ``A`` formed only for the items the ratings touch: a
one-user fold-in costs two small matrix products and a solve, not a float64 copy of the whole
item table.
"""
from __future__ import annotations

import functools

import numpy as np
import torch

from .contract import FLOAT32_MAX
from .data import Ratings, as_ratings, well_formed
from .errors import InputError, check_float
from .heads import Head
from .ids import shown_ids
from .trainer import check_ratings

_GRAM_CHUNK_BYTES = 64 << 20
_FEW_USERS = 8  # up to this many users, a loop of small products beats the bucketing's bookkeeping
_SINGULAR = "the ridge system is singular for some user: use reg > 0"


def ridge_embeddings(head: Head, ratings: Ratings, reg: float, *, init: torch.Tensor | None = None,
                     damping: float = 0.0) -> torch.Tensor:
    """Per-user ridge solution ``[n_users, d]`` (float64).

    ``damping`` adds a penalty that does not grow with the rating count: the objective becomes
    ``(1/n) (sum w (A_i . e + c_i - r)^2 + damping ||e||^2) + reg ||e||^2``, which shrinks rows
    with few ratings much more than rows with many (pretraining uses it for the items).

    Users without ratings get ``init`` (their initial embedding; zeros when not given), as in
    the contract where they keep their init.  Raises InputError for a bad ``reg``, ratings on
    other items than the head's, hand-built ratings with an item index out of range or a
    negative or non-finite weight (naming the row), when a too small ``reg`` (0) leaves a user's
    system singular (its rated items span fewer than ``d`` dimensions; naming the users), and for a
    non-linear head.  A non-finite rating gives its user a non-finite row.
    """
    return torch.from_numpy(ridge_solve(head, ratings, reg, init=init, damping=damping)[0])


def ridge_solve(head: Head, ratings: Ratings, reg: float, *, init=None,
                damping: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """``ridge_embeddings`` as a float64 numpy array ``[n_users, d]``, and the indices of the users
    with ratings (the others got ``init``): serving converts once, and inits only the others."""
    ratings = as_ratings(ratings, "ratings", frames=False)
    # float32's range, as every other reg: n * reg stays finite in float64 (1e308 made the systems inf)
    reg = check_float("reg", reg, 0.0, maximum=FLOAT32_MAX)
    damping = check_float("damping", damping, 0.0, maximum=FLOAT32_MAX)
    if ratings.n_items != head.n_items:
        raise InputError(f"ratings have {ratings.n_items} items but the head has {head.n_items}")
    if not head.is_linear:
        raise InputError(f"the ridge solver needs a linear head (no tower or identity activations), not {head.name!r}")
    if not well_formed_request(ratings, head.n_items, finite_ratings=False):  # a non-finite rating: a non-finite row
        check_ratings(ratings, "ratings", head.n_items)
    counts = ratings.counts
    has = counts.nonzero()[0]
    d, U = head.d, ratings.n_users
    out = np.zeros((U, d)) if init is None else torch.as_tensor(init, dtype=torch.float64).numpy().copy()
    if out.shape != (U, d):  # else some users would get no row, or the solve a [d, d] of the wrong size
        raise InputError(f"init must be [n_users={U}, d={d}], got {list(out.shape)}")
    if len(has) <= _FEW_USERS:
        _solve_few_users(head, ratings, has, reg, damping, out)
        return out, has
    per_rating = ratings.nnz < head.n_items  # then A row by rating beats a float64 copy of the whole item table
    A, c = (t.numpy() for t in head.linear_form(ratings.items if per_rating else None))
    rows = np.arange(ratings.nnz) if per_rating else ratings.items  # each rating's row of A
    gram, rhs = _normal_equations(A, c, rows, ratings, has)
    diagonal = np.arange(d)
    added = counts[has] * reg + damping
    gram[:, diagonal, diagonal] += added[:, None]  # n times the system (module docstring)
    maybe = _may_be_singular(added, np.trace(gram, axis1=1, axis2=2), d)
    if maybe.any():
        _check_regular(gram[maybe], added[maybe], ratings.user_ids[has[maybe]])
    try:
        out[has] = np.linalg.solve(gram, rhs[..., None])[..., 0]
    except np.linalg.LinAlgError:
        raise InputError(_SINGULAR) from None
    return out, has


def well_formed_request(ratings: Ratings, n_items: int, *, finite_ratings: bool = True) -> bool:
    """``retrain.data.well_formed`` (three reductions) and ``indptr``'s ends and order (one diff):
    a request's cheap check.  False sends the caller to ``check_ratings``, which names what is
    wrong; a hand-built ``indptr`` that started at 1 or ended short silently dropped ratings."""
    indptr = ratings.indptr
    return bool(well_formed(ratings, n_items, finite_ratings=finite_ratings) and len(indptr) and indptr[0] == 0
                and indptr[-1] == ratings.nnz and (len(indptr) < 3 or np.diff(indptr).min() >= 0))


def _solve_few_users(head: Head, ratings: Ratings, users: np.ndarray, reg: float, damping: float,
                     out: np.ndarray) -> None:
    """The closed form user by user into ``out`` (a serving request): the user's rows of ``A``,
    two small products and a solve each, none of the bucketing's bookkeeping."""
    d = out.shape[1]
    for u in users:
        start, stop = ratings.indptr[u], ratings.indptr[u + 1]
        X, c = _linear_rows(head, ratings.items[start:stop])
        w, n = ratings.weights[start:stop].astype(np.float64), stop - start
        Xw = X * w[:, None]
        gram = X.T @ Xw
        added = n * reg + damping
        gram.flat[::d + 1] += added  # the diagonal, in place: n times the system
        if _may_be_singular(added, gram.trace(), d):
            _check_regular(gram[None], np.array([added]), ratings.user_ids[u:u + 1])
        out[u] = _solve_spd(gram, Xw.T @ (ratings.ratings[start:stop] - c))


def _may_be_singular(added, trace, d: int):
    """Whether a system whose ridge term ``added`` is on its diagonal may be singular at numpy's
    rank tolerance (``d * eps * largest eigenvalue``; its ``trace`` bounds that eigenvalue): the
    term bounds every eigenvalue from below, so a regularised request checks nothing but a trace.
    Works on scalars and on arrays of users alike."""
    return added <= 2 * d * np.finfo(np.float64).eps * trace


def _check_regular(gram: np.ndarray, added: np.ndarray, user_ids) -> None:
    """InputError naming the users whose system ``gram [u, d, d]`` (ridge term ``added [u]`` on
    its diagonal) has rank below ``d`` at numpy's tolerance.  A solve seldom meets an exact zero
    pivot, so fewer independent rated items than ``d`` with ``reg = 0`` returned one of infinitely
    many minimisers, picked by rounding."""
    d = gram.shape[-1]
    bad = np.flatnonzero(np.linalg.matrix_rank(gram, hermitian=True) < d)
    if len(bad):
        raise InputError(f"the ridge system is singular for user ids {shown_ids(user_ids[bad])} ({len(bad)} of them): "
                         f"their rated items span fewer than d = {d} dimensions and reg * n + damping = {added[bad[0]]:g} "
                         "does not make up for it: use reg > 0")


def _solve_spd(gram: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """``gram^-1 rhs`` for a symmetric positive (semi-)definite ``gram [d, d]``; InputError when
    it is singular.  LAPACK's Cholesky ``dposv`` through scipy when it is installed: it costs a
    third of ``np.linalg.solve``'s per-call overhead, which is most of a one-user request."""
    dposv = _dposv()
    if dposv is None:
        try:
            return np.linalg.solve(gram, rhs)
        except np.linalg.LinAlgError:
            raise InputError(_SINGULAR) from None
    _, solution, info = dposv(gram, rhs)
    if info != 0:  # > 0: not positive definite, i.e. singular here (reg == 0)
        raise InputError(_SINGULAR)
    return solution


@functools.cache
def _dposv():
    try:
        from scipy.linalg.lapack import dposv  # loaded on the first request, not with retrain
    except ImportError:  # scipy is optional: numpy's LU solve instead
        return None
    return dposv


def _linear_rows(head: Head, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``head.linear_form(items)`` as float64 numpy; without a tower, straight from float32 views
    of the item table (no torch round trip: it is most of a one-user request's overhead)."""
    if head.tower:
        return tuple(t.numpy() for t in head.linear_form(items))
    Q, c = head.item_arrays
    return Q[items].astype(np.float64), c[items]


def _normal_equations(A: np.ndarray, c: np.ndarray, items: np.ndarray, ratings: Ratings,
                      users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``A^T W A`` ``[u, d, d]`` and ``A^T W (r - c)`` ``[u, d]`` (float64) of the rated ``users``;
    ``items`` are the ratings' rows of ``A``.

    Users are grouped by rating count into power-of-two buckets and padded to the bucket's length
    (padding rows get weight 0), so each group is one batched matrix product: at most twice the
    exact flop count, in BLAS, with memory bounded per chunk of users.
    """
    d = A.shape[1]
    counts, starts = ratings.counts[users], ratings.indptr[:-1][users]
    sqrt_w = np.sqrt(ratings.weights.astype(np.float64))
    target = ratings.ratings.astype(np.float64) - c[items]
    gram = np.empty((len(users), d, d))
    rhs = np.empty((len(users), d))
    length = 2 ** np.ceil(np.log2(counts)).astype(np.int64)
    for bucket_len in np.unique(length):
        group = np.flatnonzero(length == bucket_len)
        per_chunk = max(1, _GRAM_CHUNK_BYTES // (8 * int(bucket_len) * (d + 1)))
        offsets = np.arange(bucket_len)
        for first in range(0, len(group), per_chunk):
            chunk = group[first:first + per_chunk]
            valid = offsets[None, :] < counts[chunk, None]  # [u, L]
            rows = np.where(valid, starts[chunk, None] + offsets[None, :], 0)
            scale = np.where(valid, sqrt_w[rows], 0.0)  # padding rows weigh nothing
            X = A[items[rows]] * scale[..., None]  # [u, L, d]
            Xt = X.transpose(0, 2, 1)
            gram[chunk] = Xt @ X
            rhs[chunk] = (Xt @ (target[rows] * scale)[..., None])[..., 0]
    return gram, rhs
