"""Argument checks shared by the launchers: what the kernels assume about dtypes, shapes, layouts.

Each raises ValueError naming the argument; the kernels themselves check nothing.
"""
from __future__ import annotations

import numbers

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
    """``item_vectors`` float32 [I, h >= 1] (rows contiguous), ``item_bias`` float32 [I]."""
    check_tensor("item_vectors", item_vectors, torch.float32, (None, None), device)
    if item_vectors.shape[1] < 1:  # pick_blocks divided by the feature block: ZeroDivisionError
        raise ValueError(f"item_vectors must be [n_items, h >= 1], got {list(item_vectors.shape)}")
    check_tensor("item_bias", item_bias, torch.float32, (item_vectors.shape[0],), device)


def check_integers(**values) -> None:
    """Each value is an integer (Python or numpy; not a bool): the launchers pass them to the
    kernels as scalars, where 2.5 would fail deep inside Triton."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise ValueError(f"{name} must be an integer, got {value!r}")


def check_disjoint(**tensors) -> None:
    """No two of the (contiguous) ``tensors`` share memory: the kernels write some of them in
    place while reading the others (None entries are skipped)."""
    spans = [(name, t.data_ptr(), t.data_ptr() + t.numel() * t.element_size())
             for name, t in tensors.items() if t is not None and t.numel() > 0]
    for i, (name_a, start_a, end_a) in enumerate(spans):
        for name_b, start_b, end_b in spans[i + 1:]:
            if start_a < end_b and start_b < end_a:
                raise ValueError(f"{name_a} and {name_b} share memory: pass separate tensors")
