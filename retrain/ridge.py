"""Closed-form fold-in for linear heads: the exact per-user minimiser of the contract's objective.

For a linear head ``pred(e, i) = A[i] . e + c[i]`` and a user's ``n`` training ratings, the
full-batch objective ``(1/n) sum w (A_i . e + c_i - r)^2 + reg ||e||^2`` is minimised by
``(A^T W A / n + reg I) e = A^T W (r - c) / n``.  Solved in float64 for all users at once.
"""
from __future__ import annotations

import torch

from .data import Ratings
from .errors import InputError, check_float
from .heads import Head

_GRAM_CHUNK_BYTES = 64 << 20


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
    A, c = head.linear_form()  # [I, d], [I]
    d, U = A.shape[1], ratings.n_users
    n = torch.from_numpy(ratings.counts).double()
    gram, rhs = _normal_equations(A, c, ratings)
    has = n > 0
    out = torch.zeros(U, d, dtype=torch.float64) if init is None else torch.as_tensor(init, dtype=torch.float64).clone()
    if has.any():
        lhs = gram[has] / n[has, None, None] + reg * torch.eye(d, dtype=torch.float64)
        try:
            out[has] = torch.linalg.solve(lhs, rhs[has] / n[has, None])
        except RuntimeError:  # torch raises a RuntimeError subclass for singular systems
            raise InputError("the ridge system is singular for some user: use reg > 0") from None
    return out


def _normal_equations(A: torch.Tensor, c: torch.Tensor, ratings: Ratings) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-user ``A^T W A`` ``[U, d, d]`` and ``A^T W (r - c)`` ``[U, d]`` (float64).

    Users are grouped by rating count into power-of-two buckets and padded to the bucket's length
    (padding rows get weight 0), so each group is one batched matrix product: at most twice the
    exact flop count, in BLAS, with memory bounded per chunk of users.
    """
    U, d = ratings.n_users, A.shape[1]
    counts = torch.from_numpy(ratings.counts)
    starts = torch.from_numpy(ratings.indptr[:-1])
    items = torch.from_numpy(ratings.items)
    sqrt_w = torch.from_numpy(ratings.weights).double().sqrt()
    target = torch.from_numpy(ratings.ratings).double() - c[items]
    gram = torch.zeros(U, d, d, dtype=torch.float64)
    rhs = torch.zeros(U, d, dtype=torch.float64)
    length = torch.where(counts > 0, 2 ** torch.ceil(torch.log2(counts.clamp_min(1).double())).long(), 0)
    for bucket_len in torch.unique(length[length > 0]).tolist():
        group = (length == bucket_len).nonzero().squeeze(1)
        per_chunk = max(1, _GRAM_CHUNK_BYTES // (8 * bucket_len * (d + 1)))
        for users in group.split(per_chunk):
            offsets = torch.arange(bucket_len)
            valid = offsets[None, :] < counts[users, None]  # [u, L]
            rows = torch.where(valid, starts[users, None] + offsets[None, :], 0)
            scale = torch.where(valid, sqrt_w[rows], 0.0)  # padding rows weigh nothing
            X = A[items[rows]] * scale[..., None]  # [u, L, d]
            y = target[rows] * scale
            gram[users] = X.transpose(1, 2) @ X
            rhs[users] = (X.transpose(1, 2) @ y[..., None]).squeeze(-1)
    return gram, rhs
