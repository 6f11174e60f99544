"""Scoring for recommend: ``scores[n, i] = tower(E[n]) . Q[i] + b[i] + mu`` for every item.

Tiled like a matrix product: one program per (block of users, block of items); the tower runs on
the user block in the program, the product is IEEE float32 (no TF32), so scores match float32
PyTorch to rounding.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .blocks import pick_blocks
from .inputs import check_items, check_tensor
from .tower import _mm, _tower_forward, tower_args


@triton.jit
def _score_kernel(
    out_ptr, emb_ptr, q_ptr, item_bias_ptr, w1_ptr, c1_ptr, w2_ptr, c2_ptr,
    stride_out, stride_emb, stride_q,
    n_rows, n_items, n_item_blocks, d, h1, h, global_bias,
    N_LAYERS: tl.constexpr, ACT1: tl.constexpr, ACT2: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_H1: tl.constexpr, BLOCK_H: tl.constexpr,
    BLOCK_I: tl.constexpr, PRODUCTS: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)  # one axis: grid axes 1 and 2 stop at 65535
    offs_n = (pid // n_item_blocks) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_i = (pid % n_item_blocks) * BLOCK_I + tl.arange(0, BLOCK_I)
    offs_d = tl.arange(0, BLOCK_D)
    offs_h = tl.arange(0, BLOCK_H)
    mask_n = offs_n < n_rows
    mask_i = offs_i < n_items
    e = tl.load(emb_ptr + offs_n[:, None] * stride_emb + offs_d[None, :],
                mask=mask_n[:, None] & (offs_d[None, :] < d), other=0.0)
    _, features = _tower_forward(e, w1_ptr, c1_ptr, w2_ptr, c2_ptr, d, h1, h,
                                 N_LAYERS, ACT1, ACT2, BLOCK_D, BLOCK_H1, BLOCK_H, PRODUCTS)
    q = tl.load(q_ptr + offs_i[:, None] * stride_q + offs_h[None, :],
                mask=mask_i[:, None] & (offs_h[None, :] < h), other=0.0)
    item_bias = tl.load(item_bias_ptr + offs_i, mask=mask_i, other=0.0)
    scores = _mm(features, tl.trans(q), PRODUCTS) + item_bias[None, :] + global_bias
    tl.store(out_ptr + offs_n[:, None] * stride_out + offs_i[None, :], scores,
             mask=mask_n[:, None] & mask_i[None, :])


def score(emb, item_vectors, item_bias, global_bias: float, tower) -> torch.Tensor:
    """Scores of every item for embeddings ``emb`` float32 ``[n, d]``: float32 ``[n, n_items]``.

    ``tower`` as in ``kernels/train.py``; the products as ``pick_blocks`` picks them.
    """
    device = emb.device
    check_items(item_vectors, item_bias, device)
    check_tensor("emb", emb, torch.float32, (None, None), device)
    (n_rows, d), (n_items, h) = emb.shape, item_vectors.shape
    w1, c1, w2, c2, h1, n_layers, act1, act2 = tower_args(tower, d, h, item_bias)
    out = torch.empty((n_rows, n_items), dtype=torch.float32, device=device)
    if n_rows == 0 or n_items == 0:
        return out
    blocks = pick_blocks("score", n_rows, d, h1, h, n_items)
    n_item_blocks = triton.cdiv(n_items, blocks.cols)
    _score_kernel[(triton.cdiv(n_rows, blocks.rows) * n_item_blocks,)](
        out, emb, item_vectors, item_bias, w1, c1, w2, c2,
        out.stride(0), emb.stride(0), item_vectors.stride(0),
        n_rows, n_items, n_item_blocks, d, h1, h, float(global_bias),
        N_LAYERS=n_layers, ACT1=act1, ACT2=act2,
        BLOCK_N=blocks.rows, BLOCK_D=blocks.d, BLOCK_H1=blocks.h1, BLOCK_H=blocks.h, BLOCK_I=blocks.cols,
        PRODUCTS=blocks.products, num_warps=blocks.num_warps, enable_fp_fusion=True,
    )
    return out
