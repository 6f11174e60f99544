"""Fused validation loss: per-user, per-probe ``sum w (pred - r)^2``, without the regulariser.

One program per (user, probe block): the tower runs once for the user's probe block, then the
user's ratings stream through in tiles, each item row gathered once for the whole block.  Each
program writes its float32 per-probe sums; the backend adds the users' sums exactly
(``retrain.contract.fixed_point_limbs``), so the total is the same run to run.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .blocks import Blocks, pick_blocks
from .inputs import check_items, check_ratings, check_tensor
from .items import _gather_items, _predict
from .tower import _tower_forward, tower_args


@triton.jit
def _user_loss(features, start, end, items_ptr, ratings_ptr, weights_ptr, q_ptr, item_bias_ptr, stride_q, h,
               global_bias, BLOCK_P: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_B: tl.constexpr,
               PRODUCTS: tl.constexpr, FOLD_BIAS: tl.constexpr):
    """``sum w (pred - r)^2`` [BLOCK_P] over ratings ``start ... end - 1`` for the tower outputs
    ``features`` [BLOCK_P, BLOCK_H] of one user's probes, ``BLOCK_B`` ratings at a time (each item
    row gathered once for the whole block; ``FOLD_BIAS``: the table is ``[Q | b]``, see
    ``kernels/train.py``'s ``_gather_items``).  Shared with the training kernel's checkpoints
    (there with the training step's tile: the sums differ from this kernel's by rounding only)."""
    total = tl.zeros((BLOCK_P,), dtype=tl.float32)
    for first in range(start, end, BLOCK_B):
        rows = first + tl.arange(0, BLOCK_B)
        valid = rows < end
        item = tl.load(items_ptr + rows, mask=valid, other=0).to(tl.int64)
        rating = tl.load(ratings_ptr + rows, mask=valid, other=0.0)
        weight = tl.load(weights_ptr + rows, mask=valid, other=0.0)
        q, item_bias = _gather_items(item, valid, q_ptr, item_bias_ptr, stride_q, h, BLOCK_H, FOLD_BIAS)
        error = _predict(features, q, item_bias, global_bias, h, PRODUCTS, FOLD_BIAS) - rating[None, :]
        total += tl.sum(tl.where(valid[None, :], weight[None, :] * error * error, 0.0), axis=1)
    return total


@triton.jit
def _validation_loss_kernel(
    out_ptr, emb_ptr, indptr_ptr, items_ptr, ratings_ptr, weights_ptr,
    q_ptr, item_bias_ptr, w1_ptr, c1_ptr, w2_ptr, c2_ptr,
    stride_emb_u, stride_emb_p, stride_q,
    n_probes, n_probe_blocks, d, h1, h, global_bias,
    N_LAYERS: tl.constexpr, ACT1: tl.constexpr, ACT2: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_H1: tl.constexpr, BLOCK_H: tl.constexpr,
    BLOCK_B: tl.constexpr, PRODUCTS: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    user = pid // n_probe_blocks
    offs_p = (pid % n_probe_blocks) * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_d = tl.arange(0, BLOCK_D)
    mask_p = offs_p < n_probes
    e = tl.load(emb_ptr + user * stride_emb_u + offs_p[:, None] * stride_emb_p + offs_d[None, :],
                mask=mask_p[:, None] & (offs_d[None, :] < d), other=0.0)
    _, features = _tower_forward(e, w1_ptr, c1_ptr, w2_ptr, c2_ptr, d, h1, h,
                                 N_LAYERS, ACT1, ACT2, BLOCK_D, BLOCK_H1, BLOCK_H, PRODUCTS)
    total = _user_loss(features, tl.load(indptr_ptr + user), tl.load(indptr_ptr + user + 1), items_ptr, ratings_ptr,
                       weights_ptr, q_ptr, item_bias_ptr, stride_q, h, global_bias, BLOCK_P, BLOCK_H, BLOCK_B,
                       PRODUCTS, False)
    tl.store(out_ptr + user * n_probes + offs_p, total, mask=mask_p)


def user_losses(emb, indptr, items, ratings, weights, item_vectors, item_bias, global_bias: float,
                tower, *, blocks: Blocks | None = None) -> torch.Tensor:
    """Per-user, per-probe ``sum w (pred - r)^2`` over each user's ratings: float32 ``[U, P]``.

    ``emb`` is float32 ``[U, P, d]``; the ratings are CSR by user (``kernels/inputs.py``); ``tower``
    as in ``kernels/train.py``; ``blocks`` overrides ``pick_blocks`` (its
    ``products``; the standalone kernel never folds the bias).  Users without ratings get 0.
    """
    device = emb.device
    check_ratings(indptr, items, ratings, weights, device)
    check_items(item_vectors, item_bias, device)
    n_users, h = indptr.shape[0] - 1, item_vectors.shape[1]
    check_tensor("emb", emb, torch.float32, (n_users, None, None), device)
    _, n_probes, d = emb.shape
    w1, c1, w2, c2, h1, n_layers, act1, act2 = tower_args(tower, d, h, item_bias)
    partial = torch.zeros((n_users, n_probes), dtype=torch.float32, device=device)
    if n_users and n_probes:
        blocks = blocks or pick_blocks("validate", n_probes, d, h1, h, 0)
        n_probe_blocks = triton.cdiv(n_probes, blocks.rows)
        _validation_loss_kernel[(n_users * n_probe_blocks,)](
            partial, emb, indptr, items, ratings, weights,
            item_vectors, item_bias, w1, c1, w2, c2,
            emb.stride(0), emb.stride(1), item_vectors.stride(0),
            n_probes, n_probe_blocks, d, h1, h, float(global_bias),
            N_LAYERS=n_layers, ACT1=act1, ACT2=act2,
            BLOCK_P=blocks.rows, BLOCK_D=blocks.d, BLOCK_H1=blocks.h1, BLOCK_H=blocks.h, BLOCK_B=blocks.cols,
            PRODUCTS=blocks.products, num_warps=blocks.num_warps, enable_fp_fusion=True,
        )
    return partial
