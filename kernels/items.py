"""Item rows as the training and validation kernels gather them, with the item bias optionally
folded into the row.

Folded (``FOLD_BIAS``), the kernels read one table ``[Q | b]`` of ``h + 1`` floats per item
(``folded_table``) instead of ``Q`` and ``b`` apart, one gather per rating instead of two, and
form the prediction as ``[features | 1] . [q | b] + mu``: the bias enters the product's FMA chain
instead of a separate add (a rounding difference, nothing else).
"""
from __future__ import annotations

import weakref

import torch
import triton
import triton.language as tl

from .tower import _mm


@triton.jit
def _gather_items(item, valid, q_ptr, item_bias_ptr, stride_q, h, BLOCK_H: tl.constexpr, FOLD_BIAS: tl.constexpr):
    """Item rows ``Q[item]`` [BLOCK_B, BLOCK_H] and biases ``b[item]`` [BLOCK_B] (zeros where not
    valid).  With ``FOLD_BIAS`` the table is ``[Q | b]`` and the rows hold the bias in column
    ``h``; the returned bias is then a 0 that is never read."""
    offs_h = tl.arange(0, BLOCK_H)
    width = h + 1 if FOLD_BIAS else h
    q = tl.load(q_ptr + item[:, None] * stride_q + offs_h[None, :],
                mask=valid[:, None] & (offs_h[None, :] < width), other=0.0)
    if FOLD_BIAS:
        item_bias = 0.0
    else:
        item_bias = tl.load(item_bias_ptr + item, mask=valid, other=0.0)
    return q, item_bias


@triton.jit
def _predict(features, q, item_bias, global_bias, h, PRODUCTS: tl.constexpr, FOLD_BIAS: tl.constexpr):
    """Predictions [BLOCK_P, BLOCK_B] of the tower outputs ``features`` [BLOCK_P, BLOCK_H] for the
    item rows ``q`` of ``_gather_items`` (with ``FOLD_BIAS``, the bias through a column of ones)."""
    if FOLD_BIAS:
        offs_h = tl.arange(0, features.shape[1])
        pred = _mm(tl.where(offs_h[None, :] == h, 1.0, features), tl.trans(q), PRODUCTS)
    else:
        pred = _mm(features, tl.trans(q), PRODUCTS) + item_bias[None, :]
    return pred + global_bias


# Folded tables by id(item_vectors): built once per item table (a kernel head lives as long as its
# Head), rebuilt when either tensor is modified in place (torch counts that in ``_version``).
_FOLDED: dict = {}


def folded_table(item_vectors: torch.Tensor, item_bias: torch.Tensor) -> torch.Tensor:
    """The folded table ``[Q | b]``: float32 ``[I, h + 1]``, contiguous, on ``item_vectors``'
    device; cached for the lifetime of ``item_vectors``."""
    key = id(item_vectors)
    versions = (item_vectors._version, item_bias._version)
    cached = _FOLDED.get(key)
    if cached is not None and cached[0]() is item_vectors and cached[1]() is item_bias and cached[2] == versions:
        return cached[3]
    table = torch.cat([item_vectors, item_bias[:, None]], dim=1).contiguous()
    if cached is None:
        weakref.finalize(item_vectors, _FOLDED.pop, key, None)
    _FOLDED[key] = (weakref.ref(item_vectors), weakref.ref(item_bias), versions, table)
    return table
