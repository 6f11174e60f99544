"""Argument checks shared by the launchers: what the kernels assume about dtypes, shapes, layouts.

Each raises ValueError naming the argument; the kernels themselves check nothing.
"""
from __future__ import annotations

import torch


def check_tensor(name: str, t: torch.Tensor, dtype: torch.dtype, shape: tuple, device: torch.device) -> None:
    """``t`` has ``dtype``, ``shape`` (``None`` entries match any size), is on ``device`` and contiguous."""
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype != dtype:
        raise ValueError(f"{name} must be {dtype}, got {t.dtype}")
    if t.ndim != len(shape) or any(want is not None and got != want for got, want in zip(t.shape, shape)):
        wanted = ", ".join("?" if s is None else str(s) for s in shape)
        raise ValueError(f"{name} must have shape [{wanted}], got {list(t.shape)}")
    if t.device != device:
        raise ValueError(f"{name} is on {t.device}, expected {device}")
    if not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous")


def check_ratings(indptr, items, ratings, weights, device, keys=None) -> None:
    """CSR by user: ``indptr`` int64 [U + 1], items int32 / ratings / weights float32 [nnz], and
    when given the user ``keys`` int64 [U]."""
    check_tensor("indptr", indptr, torch.int64, (None,), device)
    n_users = indptr.shape[0] - 1
    if n_users < 0:
        raise ValueError("indptr must have at least one entry")
    if keys is not None:
        check_tensor("keys", keys, torch.int64, (n_users,), device)
    check_tensor("items", items, torch.int32, (None,), device)
    nnz = items.shape[0]
    check_tensor("ratings", ratings, torch.float32, (nnz,), device)
    check_tensor("weights", weights, torch.float32, (nnz,), device)


def check_items(item_vectors, item_bias, device) -> None:
    """``item_vectors`` float32 [I, h] (rows contiguous), ``item_bias`` float32 [I]."""
    check_tensor("item_vectors", item_vectors, torch.float32, (None, None), device)
    check_tensor("item_bias", item_bias, torch.float32, (item_vectors.shape[0],), device)
