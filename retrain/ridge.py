"""Closed-form fold-in for linear heads: the exact per-user minimiser of the contract's objective.

For a linear head ``pred(e, i) = A[i] . e + c[i]`` and a user's ``n`` training ratings, the
full-batch objective ``(1/n) sum w (A_i . e + c_i - r)^2 + reg ||e||^2`` is minimised by
``(A^T W A / n + reg I) e = A^T W (r - c) / n``.  Solved in float64 (numpy) for all users at once,
with ``A`` formed only for the items the ratings touch: a one-user fold-in costs a few small
matrix products, not a float64 copy of the whole item table.
"""
from __future__ import annotations

import numpy as np
import torch

from .data import Ratings
from .errors import InputError, check_float
from .heads import Head

_GRAM_CHUNK_BYTES = 64 << 20
_OUTER_PRODUCT_LIMIT = 1 << 16  # nnz * d * d up to this: per-rating outer products beat the bucketing


def ridge_embeddings(head: Head, ratings: Ratings, reg: float, *, init: torch.Tensor | None = None) -> torch.Tensor:
    """Per-user ridge solution ``[n_users, d]`` (float64).

    Users without ratings get ``init`` (their initial embedding; zeros when not given), as in
    the contract where they keep their init.  Raises InputError for a bad ``reg``, ratings on
    other items than the head's, or when ``reg == 0`` leaves a user's system singular, and
    ValueError for a non-linear head.
    """
    reg = check_float("reg", reg, 0.0)
    if ratings.n_items != head.n_items:
        raise InputError(f"ratings have {ratings.n_items} items but the head has {head.n_items}")
    used, local = np.unique(ratings.items, return_inverse=True)
    A, c = (t.cpu().numpy() for t in head.linear_form(used))  # [m, d], [m]: the rated items only
    d, U = A.shape[1], ratings.n_users
    counts = ratings.counts
    out = np.zeros((U, d)) if init is None else torch.as_tensor(init, dtype=torch.float64).numpy().copy()
    has = np.flatnonzero(counts > 0)
    if len(has):
        local = local.reshape(-1)
        small = ratings.nnz * d * d <= _OUTER_PRODUCT_LIMIT
        gram, rhs = (_small_normal_equations if small else _normal_equations)(A, c, local, ratings, has)
        n = counts[has].astype(np.float64)
        lhs = gram / n[:, None, None] + reg * np.eye(d)
        try:
            out[has] = np.linalg.solve(lhs, (rhs / n[:, None])[..., None])[..., 0]
        except np.linalg.LinAlgError:
            raise InputError("the ridge system is singular for some user: use reg > 0") from None
    return torch.from_numpy(out)


def _small_normal_equations(A: np.ndarray, c: np.ndarray, items: np.ndarray, ratings: Ratings,
                            users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``_normal_equations`` for a few ratings (a serving request): each rating's outer product,
    summed per user, in a handful of numpy calls."""
    sqrt_w = np.sqrt(ratings.weights.astype(np.float64))
    X = A[items] * sqrt_w[:, None]  # [nnz, d]
    y = (ratings.ratings - c[items]) * sqrt_w
    starts = ratings.indptr[users]  # the rated users' rows are contiguous runs in this order
    return np.add.reduceat(X[:, :, None] * X[:, None, :], starts), np.add.reduceat(X * y[:, None], starts)


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
