"""Closed-form fold-in for linear heads: the exact per-user minimiser of the contract's objective.

For a linear head ``pred(e, i) = A[i] . e + c[i]`` and a user's ``n`` training ratings, the
full-batch objective ``(1/n) sum w (A_i . e + c_i - r)^2 + reg ||e||^2`` is minimised by
``(A^T W A / n + reg I) e = A^T W (r - c) / n``.  Solved in float64 (numpy) for all users at once,
with ``A`` formed only for the items the ratings touch: a one-user fold-in costs two small
matrix products and a solve, not a float64 copy of the whole item table.
"""
from __future__ import annotations

import numpy as np
import torch

from .data import Ratings
from .errors import InputError, check_float
from .heads import Head

_GRAM_CHUNK_BYTES = 64 << 20
_FEW_USERS = 8  # up to this many users, a loop of small products beats the bucketing's bookkeeping


def ridge_embeddings(head: Head, ratings: Ratings, reg: float, *, init: torch.Tensor | None = None,
                     damping: float = 0.0) -> torch.Tensor:
    """Per-user ridge solution ``[n_users, d]`` (float64).

    ``damping`` adds a penalty that does not grow with the rating count: the objective becomes
    ``(1/n) (sum w (A_i . e + c_i - r)^2 + damping ||e||^2) + reg ||e||^2``, which shrinks rows
    with few ratings much more than rows with many (pretraining uses it for the items).

    Users without ratings get ``init`` (their initial embedding; zeros when not given), as in
    the contract where they keep their init.  Raises InputError for a bad ``reg``, ratings on
    other items than the head's, or when ``reg == 0`` leaves a user's system singular, and
    ValueError for a non-linear head.
    """
    reg = check_float("reg", reg, 0.0)
    damping = check_float("damping", damping, 0.0)
    if ratings.n_items != head.n_items:
        raise InputError(f"ratings have {ratings.n_items} items but the head has {head.n_items}")
    few = ratings.nnz < head.n_items  # then A row by rating beats a float64 copy of the whole item table
    A, c = (t.numpy() for t in head.linear_form(ratings.items if few else None))
    rows = np.arange(ratings.nnz) if few else ratings.items  # each rating's row of A
    d, U = A.shape[1], ratings.n_users
    counts = ratings.counts
    out = np.zeros((U, d)) if init is None else torch.as_tensor(init, dtype=torch.float64).numpy().copy()
    has = np.flatnonzero(counts > 0)
    if len(has):
        normal_equations = _few_users_normal_equations if len(has) <= _FEW_USERS else _normal_equations
        gram, rhs = normal_equations(A, c, rows, ratings, has)
        n = counts[has].astype(np.float64)
        gram /= n[:, None, None]
        diagonal = np.arange(d)
        gram[:, diagonal, diagonal] += (reg + damping / n)[:, None]
        try:
            if len(has) == 1:  # numpy's batched solve costs more for one system
                out[has[0]] = np.linalg.solve(gram[0], rhs[0] / n[0])
            else:
                out[has] = np.linalg.solve(gram, (rhs / n[:, None])[..., None])[..., 0]
        except np.linalg.LinAlgError:
            raise InputError("the ridge system is singular for some user: use reg > 0") from None
    return torch.from_numpy(out)


def _few_users_normal_equations(A: np.ndarray, c: np.ndarray, items: np.ndarray, ratings: Ratings,
                               users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``_normal_equations`` for a few users (a serving request): one small product per user,
    with none of the bucketing's bookkeeping."""
    d = A.shape[1]
    gram, rhs = np.empty((len(users), d, d)), np.empty((len(users), d))
    for j, u in enumerate(users):
        rows = slice(ratings.indptr[u], ratings.indptr[u + 1])
        X = A[items[rows]]
        w = ratings.weights[rows].astype(np.float64)
        gram[j] = X.T @ (X * w[:, None])
        rhs[j] = X.T @ (w * (ratings.ratings[rows] - c[items[rows]]))
    return gram, rhs


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
