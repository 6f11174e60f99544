"""Fused probe training: ``n_epochs`` epochs of minibatch Adam/SGD for every (user, probe block).

One work item is one user and a block of ``BLOCK_P`` probes (``_train_item``): one program per
item, or with ``PERSISTENT`` a grid of resident programs taking items from an atomic counter
(``kernels/blocks.py`` picks the variant: that, the products' form and the folded item bias).  An
item loads the user's embeddings and Adam moments for those probes once, keeps them in registers
for all epochs of the launch, and for every step: computes the step's rating positions through
the contract's permutation (in-kernel, cycle walking), gathers those ratings and their item rows
once for the whole probe block, runs the frozen tower forward, the predictions, the weighted
squared error, the backward pass, the L2 term and the optimizer update.  Learning rates and L2
weights are per-probe runtime vectors.

A launch may hold several checkpoints (``train_checkpoints``): after the epochs of each, while the
state is still in registers, the program flags its non-finite probes, computes its validation
losses (``validate.py``'s ``_user_loss``) and, when asked, copies the embeddings out, so a
checkpoint costs no pass over the state.  Division and square root are IEEE (``div_rn``,
``sqrt_rn``), as in the reference.

The arithmetic is ``retrain/contract.py``'s (uint32 hashing, permutation, Adam step counts) and
``retrain/backends/reference.py``'s (loss, gradient, Adam with bias correction); docs/semantics.md
states both in words.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from retrain.contract import GOLDEN, PERM_DOMAIN

from .blocks import MIN_DOT_K, Blocks, pick_blocks
from .inputs import check_disjoint, check_integers, check_items, check_ratings, check_tensor
from .items import _gather_items, _predict, folded_table
from .tower import _mm, _tower_backward, _tower_forward, tower_args
from .validate import _user_loss

OPTIMIZERS = ("adam", "sgd")
_GOLDEN = tl.constexpr(GOLDEN)
_PERM_DOMAIN = tl.constexpr(PERM_DOMAIN)


# ----------------------------------------------------------------------------- the contract's hashing
# uint32 arithmetic wraps: products and sums are formed in uint64 and cut to their low word (which
# the compiler turns back into 32-bit instructions), so no overflow check ever fires.
@triton.jit
def _combine(h, v):
    """``fmix32(h ^ (v + GOLDEN))`` on uint32 (broadcasts)."""
    x = h ^ (tl.cast(v, tl.uint64) + _GOLDEN).to(tl.uint32)
    x ^= x >> 16
    x = (x.to(tl.uint64) * 0x85EBCA6B).to(tl.uint32)
    x ^= x >> 13
    x = (x.to(tl.uint64) * 0xC2B2AE35).to(tl.uint32)
    x ^= x >> 16
    return x


@triton.jit
def _epoch_rounds(seed, epoch, key):
    """The bijection's round constants ``(M_0, K_0, ..., M_3, K_3)`` of a user (uint32 ``key``) in
    ``epoch``: ``M_r = combine(base, 2r) | 1``, ``K_r = combine(base, 2r + 1)``."""
    base = _combine(_combine(_combine(tl.full((), _PERM_DOMAIN, tl.uint32), seed), epoch), key)
    j = tl.arange(0, 8)
    words = _combine(base, j)  # all eight at once, then picked out
    m0 = tl.max(tl.where(j == 0, words, 0), axis=0) | 1
    k0 = tl.max(tl.where(j == 1, words, 0), axis=0)
    m1 = tl.max(tl.where(j == 2, words, 0), axis=0) | 1
    k1 = tl.max(tl.where(j == 3, words, 0), axis=0)
    m2 = tl.max(tl.where(j == 4, words, 0), axis=0) | 1
    k2 = tl.max(tl.where(j == 5, words, 0), axis=0)
    m3 = tl.max(tl.where(j == 6, words, 0), axis=0) | 1
    k3 = tl.max(tl.where(j == 7, words, 0), axis=0)
    return m0, k0, m1, k1, m2, k2, m3, k3


@triton.jit
def _visit(pos, valid, n, mask, shift, m0, k0, m1, k1, m2, k2, m3, k3):
    """Canonical indices (int64) visited at epoch positions ``pos``: the contract's four-round
    bijection of ``[0, mask]``, re-applied while the value is outside ``[0, n)`` (cycle walking).
    Lanes with ``valid`` false give 0."""
    n32 = n.to(tl.uint32)
    x = pos.to(tl.uint32)
    todo = valid
    while tl.max(todo.to(tl.int32), axis=0) > 0:
        y = (x.to(tl.uint64) * m0 + k0).to(tl.uint32) & mask
        y ^= y >> shift
        y = (y.to(tl.uint64) * m1 + k1).to(tl.uint32) & mask
        y ^= y >> shift
        y = (y.to(tl.uint64) * m2 + k2).to(tl.uint32) & mask
        y ^= y >> shift
        y = (y.to(tl.uint64) * m3 + k3).to(tl.uint32) & mask
        y ^= y >> shift
        x = tl.where(todo, y, x)
        todo = valid & (x >= n32)
    return tl.where(valid, x, 0).to(tl.int64)


@triton.jit
def _permutation_params(n):
    """``(mask, shift)`` of a user with ``n`` ratings: ``bits = ceil(log2 n)`` (0 for n <= 1)."""
    bits = 0
    while (1 << bits) < n:
        bits += 1
    mask = ((1 << bits) - 1).to(tl.uint32)
    shift = ((bits + 1) // 2).to(tl.uint32)
    return mask, shift


@triton.jit
def _power(base, exponent):
    """``base ** exponent`` for a float64 ``base`` and an integer ``exponent >= 0`` (binary powering)."""
    result = tl.full((), 1.0, tl.float64)
    while exponent > 0:
        result = tl.where((exponent & 1) == 1, result * base, result)
        base = base * base
        exponent = exponent // 2
    return result


@triton.jit
def _gather_ratings(first, end, start, n, items_ptr, ratings_ptr, weights_ptr, mask, shift,
                    m0, k0, m1, k1, m2, k2, m3, k3, BLOCK_B: tl.constexpr):
    """The ratings at epoch positions ``[first, first + BLOCK_B)`` below ``end`` of the user whose
    ratings are ``start ... start + n - 1``: ``(valid, item int64, rating, weight)``, each [BLOCK_B]."""
    pos = first + tl.arange(0, BLOCK_B)
    valid = pos < end
    rows = start + _visit(pos, valid, n, mask, shift, m0, k0, m1, k1, m2, k2, m3, k3)
    item = tl.load(items_ptr + rows, mask=valid, other=0).to(tl.int64)
    rating = tl.load(ratings_ptr + rows, mask=valid, other=0.0)
    weight = tl.load(weights_ptr + rows, mask=valid, other=0.0)
    return valid, item, rating, weight


@triton.jit
def _features_grad(features, q, item_bias, rating, weight, valid, global_bias, scale, h, PRODUCTS: tl.constexpr,
                   FOLD_BIAS: tl.constexpr):
    """Gradient of ``scale / 2 * sum w (pred - r)^2`` over a tile of ratings w.r.t. the tower's
    output ``features`` [BLOCK_P, BLOCK_H] (one row per probe)."""
    pred = _predict(features, q, item_bias, global_bias, h, PRODUCTS, FOLD_BIAS)
    coef = tl.where(valid[None, :], (pred - rating[None, :]) * (weight * scale)[None, :], 0.0)
    grad = _mm(coef, q, PRODUCTS)
    if FOLD_BIAS:  # the bias column's "gradient" is not a feature's
        grad = tl.where(tl.arange(0, q.shape[1])[None, :] < h, grad, 0.0)
    return grad


@triton.jit
def _non_finite(x):
    """True where ``x`` is NaN or infinite."""
    return (x != x) | (tl.abs(x) == float("inf"))


# ----------------------------------------------------------------------------- kernels
@triton.jit
def _work_item(work, n_work, n_probe_blocks, order_ptr, indptr_ptr, keys_ptr):
    """``(user, first rating, rating count, key)`` of work item ``work``: the (user, probe block)
    pairs are numbered users first, in launch order.  ``work >= n_work`` reads the last item's."""
    user = tl.load(order_ptr + tl.minimum(work, n_work - 1) // n_probe_blocks)
    start = tl.load(indptr_ptr + user)
    n = tl.load(indptr_ptr + user + 1) - start
    key = tl.load(keys_ptr + user)
    return user, start, n, key


@triton.jit
def _train_item(
    user, probe_block, start, n, key,
    emb_ptr, m_ptr, v_ptr, init_ptr, bad_ptr, lr_ptr, reg_ptr, damp_ptr, items_ptr, ratings_ptr, weights_ptr,
    q_ptr, item_bias_ptr, w1_ptr, c1_ptr, w2_ptr, c2_ptr,
    ends_ptr, val_indptr_ptr, val_items_ptr, val_ratings_ptr, val_weights_ptr, partial_ptr, snap_ptr,
    stride_state_u, stride_state_p, stride_q, stride_snap,
    n_users, n_probes, d, h1, h,
    global_bias, seed, epoch_start, n_epochs, batch_size, fresh, validate, n_checkpoints, n_snapshots,
    N_LAYERS: tl.constexpr, ACT1: tl.constexpr, ACT2: tl.constexpr,
    ADAM: tl.constexpr, ADAM_BETA1: tl.constexpr, ADAM_BETA2: tl.constexpr, ADAM_EPS: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_H1: tl.constexpr, BLOCK_H: tl.constexpr,
    BLOCK_B: tl.constexpr, PRODUCTS: tl.constexpr, FOLD_BIAS: tl.constexpr,
):
    """One work item: the epochs of the launch for probe block ``probe_block`` of ``user``, whose
    ratings are ``start ... start + n - 1`` and whose contract key is ``key``."""
    offs_p = probe_block * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_d = tl.arange(0, BLOCK_D)
    mask_p = offs_p < n_probes
    mask_state = mask_p[:, None] & (offs_d[None, :] < d)  # a user without ratings: stored unchanged
    state_offs = user * stride_state_u + offs_p[:, None] * stride_state_p + offs_d[None, :]
    # ``fresh`` (every probe starts from the user's init, the moments from zero), ``validate`` and
    # the snapshots are runtime flags, not constexprs: every launch of a problem (first or later,
    # with or without checkpoints) is one compiled kernel, so a probe's state and losses do not
    # depend on how its epochs were split into launches.
    if fresh != 0:
        init_offs = user * d + offs_d[None, :] + 0 * offs_p[:, None]
        e = tl.load(init_ptr + init_offs, mask=mask_state, other=0.0)
        if ADAM:
            m = tl.zeros((BLOCK_P, BLOCK_D), dtype=tl.float32)
            v = tl.zeros((BLOCK_P, BLOCK_D), dtype=tl.float32)
    else:
        e = tl.load(emb_ptr + state_offs, mask=mask_state, other=0.0)
        if ADAM:
            m = tl.load(m_ptr + state_offs, mask=mask_state, other=0.0)
            v = tl.load(v_ptr + state_offs, mask=mask_state, other=0.0)
    lr = tl.load(lr_ptr + offs_p, mask=mask_p, other=0.0)[:, None]
    # reg_u = reg + damping / n in float32 (docs/semantics.md), the same for every probe block.
    reg2 = 2.0 * (tl.load(reg_ptr + offs_p, mask=mask_p, other=0.0) + tl.load(damp_ptr + user))[:, None]

    n_steps = (n + batch_size - 1) // batch_size
    mask_bits, shift = _permutation_params(n)
    seed32 = seed.to(tl.uint32)
    key32 = key.to(tl.uint32)
    if ADAM:
        # beta^k for the user's step count k, carried in float64 (k = epoch * n_steps + step + 1).
        power1 = _power(tl.full((), ADAM_BETA1, tl.float64), epoch_start * n_steps)
        power2 = _power(tl.full((), ADAM_BETA2, tl.float64), epoch_start * n_steps)
    checkpoint = 0
    next_end = tl.load(ends_ptr)  # epochs into the launch at which the next checkpoint falls
    for epoch in range(epoch_start, epoch_start + n_epochs):
        m0, k0, m1, k1, m2, k2, m3, k3 = _epoch_rounds(seed32, epoch, key32)
        # Software pipeline over steps: step s's item rows and step s+1's ratings are loaded one
        # step ahead, so their latency hides behind the previous step's arithmetic.  (Only a
        # step's first BLOCK_B ratings travel this way; further sub-tiles load in the step.)
        valid, item, rating, weight = _gather_ratings(0, tl.minimum(batch_size, n), start, n, items_ptr, ratings_ptr,
                                                      weights_ptr, mask_bits, shift, m0, k0, m1, k1, m2, k2, m3, k3,
                                                      BLOCK_B)
        q, item_bias = _gather_items(item, valid, q_ptr, item_bias_ptr, stride_q, h, BLOCK_H, FOLD_BIAS)
        valid1, item1, rating1, weight1 = _gather_ratings(batch_size, tl.minimum(2 * batch_size, n), start, n,
                                                          items_ptr, ratings_ptr, weights_ptr, mask_bits, shift,
                                                          m0, k0, m1, k1, m2, k2, m3, k3, BLOCK_B)
        for step in range(0, n_steps):
            first = step * batch_size
            end = tl.minimum(first + batch_size, n)
            q1, item_bias1 = _gather_items(item1, valid1, q_ptr, item_bias_ptr, stride_q, h, BLOCK_H, FOLD_BIAS)
            first2 = first + 2 * batch_size
            valid2, item2, rating2, weight2 = _gather_ratings(first2, tl.minimum(first2 + batch_size, n), start, n,
                                                              items_ptr, ratings_ptr, weights_ptr, mask_bits, shift,
                                                              m0, k0, m1, k1, m2, k2, m3, k3, BLOCK_B)

            hidden, features = _tower_forward(e, w1_ptr, c1_ptr, w2_ptr, c2_ptr, d, h1, h,
                                              N_LAYERS, ACT1, ACT2, BLOCK_D, BLOCK_H1, BLOCK_H, PRODUCTS)
            scale = tl.div_rn(2.0, (end - first).to(tl.float32))  # d/dpred of mean(w (pred - r)^2)
            grad_features = _features_grad(features, q, item_bias, rating, weight, valid, global_bias, scale, h,
                                           PRODUCTS, FOLD_BIAS)
            for sub in range(first + BLOCK_B, end, BLOCK_B):  # the other sub-tiles when batch_size > BLOCK_B
                valid_s, item_s, rating_s, weight_s = _gather_ratings(sub, end, start, n, items_ptr, ratings_ptr,
                                                                      weights_ptr, mask_bits, shift,
                                                                      m0, k0, m1, k1, m2, k2, m3, k3, BLOCK_B)
                q_s, item_bias_s = _gather_items(item_s, valid_s, q_ptr, item_bias_ptr, stride_q, h, BLOCK_H, FOLD_BIAS)
                grad_features += _features_grad(features, q_s, item_bias_s, rating_s, weight_s, valid_s,
                                                global_bias, scale, h, PRODUCTS, FOLD_BIAS)
            valid, rating, weight, q, item_bias = valid1, rating1, weight1, q1, item_bias1
            valid1, item1, rating1, weight1 = valid2, item2, rating2, weight2
            grad = _tower_backward(grad_features, hidden, features, w1_ptr, w2_ptr, d, h1, h,
                                   N_LAYERS, ACT1, ACT2, BLOCK_D, BLOCK_H1, BLOCK_H, PRODUCTS)
            grad += reg2 * e
            if ADAM:
                power1 *= ADAM_BETA1
                power2 *= ADAM_BETA2
                m = ADAM_BETA1 * m + (1.0 - ADAM_BETA1) * grad
                v = ADAM_BETA2 * v + (1.0 - ADAM_BETA2) * grad * grad
                # IEEE division and square root (div.rn / sqrt.rn), as the reference computes them.
                m_hat = tl.div_rn(m, (1.0 - power1).to(tl.float32))
                v_hat = tl.div_rn(v, (1.0 - power2).to(tl.float32))
                e -= tl.div_rn(lr * m_hat, tl.sqrt_rn(v_hat) + ADAM_EPS)
            else:
                e -= lr * grad
        if epoch - epoch_start + 1 == next_end:
            # A checkpoint, while the state is in registers: the probes' finiteness flags, their
            # validation losses over this user's validation ratings (in tiles of the training
            # step's width: a wider tile would cost every launch registers), and the embeddings
            # kept for it.
            bad = _non_finite(e)
            if ADAM:
                bad = bad | _non_finite(m) | _non_finite(v)
            bad_p = tl.max(tl.where(mask_state & bad, 1, 0), axis=1)
            tl.atomic_max(bad_ptr + checkpoint * n_probes + offs_p, bad_p, mask=mask_p)
            if validate != 0:
                _, features = _tower_forward(e, w1_ptr, c1_ptr, w2_ptr, c2_ptr, d, h1, h,
                                             N_LAYERS, ACT1, ACT2, BLOCK_D, BLOCK_H1, BLOCK_H, PRODUCTS)
                loss = _user_loss(features, tl.load(val_indptr_ptr + user), tl.load(val_indptr_ptr + user + 1),
                                  val_items_ptr, val_ratings_ptr, val_weights_ptr, q_ptr, item_bias_ptr,
                                  stride_q, h, global_bias, BLOCK_P, BLOCK_H, BLOCK_B, PRODUCTS, FOLD_BIAS)
                tl.store(partial_ptr + (checkpoint * n_users + user) * n_probes + offs_p, loss, mask=mask_p)
            if checkpoint < n_snapshots:
                tl.store(snap_ptr + checkpoint * stride_snap + state_offs, e, mask=mask_state)
            checkpoint += 1
            next_end = tl.load(ends_ptr + tl.minimum(checkpoint, n_checkpoints - 1))
    tl.store(emb_ptr + state_offs, e, mask=mask_state)
    if ADAM:
        tl.store(m_ptr + state_offs, m, mask=mask_state)
        tl.store(v_ptr + state_offs, v, mask=mask_state)


@triton.jit(do_not_specialize=["seed", "epoch_start", "n_epochs", "batch_size", "fresh", "validate",
                               "n_checkpoints", "n_snapshots"])
def _train_epochs_kernel(
    emb_ptr, m_ptr, v_ptr, init_ptr, bad_ptr, lr_ptr, reg_ptr, damp_ptr,
    order_ptr, indptr_ptr, keys_ptr, items_ptr, ratings_ptr, weights_ptr,
    q_ptr, item_bias_ptr, w1_ptr, c1_ptr, w2_ptr, c2_ptr,
    ends_ptr, val_indptr_ptr, val_items_ptr, val_ratings_ptr, val_weights_ptr, partial_ptr, snap_ptr, counter_ptr,
    stride_state_u, stride_state_p, stride_q, stride_snap,
    n_users, n_probes, n_probe_blocks, n_work, d, h1, h,
    global_bias, seed, epoch_start, n_epochs, batch_size, fresh, validate, n_checkpoints, n_snapshots,
    N_LAYERS: tl.constexpr, ACT1: tl.constexpr, ACT2: tl.constexpr,
    ADAM: tl.constexpr, ADAM_BETA1: tl.constexpr, ADAM_BETA2: tl.constexpr, ADAM_EPS: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_H1: tl.constexpr, BLOCK_H: tl.constexpr,
    BLOCK_B: tl.constexpr, PRODUCTS: tl.constexpr, PERSISTENT: tl.constexpr, FOLD_BIAS: tl.constexpr,
):
    if PERSISTENT:
        # Item after item claimed from the counter, which hands them out in launch order (heaviest
        # users first) to whichever program is free.
        work = tl.atomic_add(counter_ptr, 1).to(tl.int64)
        user, start, n, key = _work_item(work, n_work, n_probe_blocks, order_ptr, indptr_ptr, keys_ptr)
        while work < n_work:
            # The next item's chain of dependent loads (counter, order, indptr and key) is issued
            # before this item trains, so that its latency hides behind the training.
            next_work = tl.atomic_add(counter_ptr, 1).to(tl.int64)
            next_user, next_start, next_n, next_key = _work_item(next_work, n_work, n_probe_blocks, order_ptr,
                                                                 indptr_ptr, keys_ptr)
            _train_item(user, work % n_probe_blocks, start, n, key,
                        emb_ptr, m_ptr, v_ptr, init_ptr, bad_ptr, lr_ptr, reg_ptr, damp_ptr, items_ptr, ratings_ptr,
                        weights_ptr, q_ptr, item_bias_ptr, w1_ptr, c1_ptr, w2_ptr, c2_ptr,
                        ends_ptr, val_indptr_ptr, val_items_ptr, val_ratings_ptr, val_weights_ptr, partial_ptr,
                        snap_ptr, stride_state_u, stride_state_p, stride_q, stride_snap,
                        n_users, n_probes, d, h1, h, global_bias, seed, epoch_start, n_epochs, batch_size, fresh,
                        validate, n_checkpoints, n_snapshots,
                        N_LAYERS, ACT1, ACT2, ADAM, ADAM_BETA1, ADAM_BETA2, ADAM_EPS,
                        BLOCK_P, BLOCK_D, BLOCK_H1, BLOCK_H, BLOCK_B, PRODUCTS, FOLD_BIAS)
            work, user, start, n, key = next_work, next_user, next_start, next_n, next_key
    else:  # one program per item (no loop: a loop would keep its invariants live in registers)
        work = tl.program_id(0).to(tl.int64)
        user, start, n, key = _work_item(work, n_work, n_probe_blocks, order_ptr, indptr_ptr, keys_ptr)
        _train_item(user, work % n_probe_blocks, start, n, key,
                    emb_ptr, m_ptr, v_ptr, init_ptr, bad_ptr, lr_ptr, reg_ptr, damp_ptr, items_ptr, ratings_ptr, weights_ptr,
                    q_ptr, item_bias_ptr, w1_ptr, c1_ptr, w2_ptr, c2_ptr,
                    ends_ptr, val_indptr_ptr, val_items_ptr, val_ratings_ptr, val_weights_ptr, partial_ptr, snap_ptr,
                    stride_state_u, stride_state_p, stride_q, stride_snap,
                    n_users, n_probes, d, h1, h,
                    global_bias, seed, epoch_start, n_epochs, batch_size, fresh, validate, n_checkpoints, n_snapshots,
                    N_LAYERS, ACT1, ACT2, ADAM, ADAM_BETA1, ADAM_BETA2, ADAM_EPS,
                    BLOCK_P, BLOCK_D, BLOCK_H1, BLOCK_H, BLOCK_B, PRODUCTS, FOLD_BIAS)


@triton.jit(do_not_specialize=["seed", "epoch"])
def _permutation_kernel(out_ptr, indptr_ptr, keys_ptr, seed, epoch, BLOCK_B: tl.constexpr):
    """Debug entry: writes each user's visiting order (canonical indices) for one epoch."""
    user = tl.program_id(0).to(tl.int64)
    start = tl.load(indptr_ptr + user)
    n = tl.load(indptr_ptr + user + 1) - start
    mask_bits, shift = _permutation_params(n)
    m0, k0, m1, k1, m2, k2, m3, k3 = _epoch_rounds(seed.to(tl.uint32), epoch, tl.load(keys_ptr + user).to(tl.uint32))
    for first in range(0, n, BLOCK_B):
        pos = first + tl.arange(0, BLOCK_B)
        valid = pos < n
        idx = _visit(pos, valid, n, mask_bits, shift, m0, k0, m1, k1, m2, k2, m3, k3)
        tl.store(out_ptr + start + pos, idx, mask=valid)


# ----------------------------------------------------------------------------- launchers
def train_epochs(emb, adam_m, adam_v, lrs, regs, indptr, keys, items, ratings, weights,
                 item_vectors, item_bias, global_bias: float, tower, *, n_epochs: int, **kwargs) -> torch.Tensor:
    """``train_checkpoints`` with one checkpoint at the end and no validation: advance P probes by
    ``n_epochs`` epochs in place; returns int32 ``[P]``, 1 for a probe whose state became NaN/inf."""
    bad, _ = train_checkpoints(emb, adam_m, adam_v, lrs, regs, indptr, keys, items, ratings, weights,
                               item_vectors, item_bias, global_bias, tower, checkpoint_ends=[n_epochs], **kwargs)
    return bad[0]


def train_checkpoints(emb, adam_m, adam_v, lrs, regs, indptr, keys, items, ratings, weights,
                      item_vectors, item_bias, global_bias: float, tower, *, order: torch.Tensor, epoch_start: int,
                      checkpoint_ends, batch_size: int, optimizer: str, seed: int, adam: tuple[float, float, float],
                      init: torch.Tensor | None = None, val: tuple | None = None,
                      snapshots: torch.Tensor | None = None, user_damping: torch.Tensor | None = None,
                      blocks: Blocks | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Advance P probes by ``checkpoint_ends[-1]`` epochs (``epoch_start`` ...) in place, in one
    launch, with a checkpoint after ``checkpoint_ends[k]`` epochs for each k.

    Args:
        emb, adam_m, adam_v: float32 ``[U, P, d]`` (moments unused, may be empty, for SGD).
        lrs, regs: float32 ``[P]``.
        indptr, keys, items, ratings, weights: the training ratings, CSR by user
            (``kernels/inputs.py``); ``keys`` are the contract's user keys.
        item_vectors, item_bias, global_bias, tower: the frozen head; ``tower`` is a list of
            ``(W [out, in], c [out], activation code)``.
        order: int64 ``[n]``, the users to visit (each once), in launch order (heaviest first).
        checkpoint_ends: K increasing epoch counts ``>= 1`` (``[n_epochs]``: one at the end).
        optimizer, adam: ``"adam"`` or ``"sgd"``; Adam's ``(beta1, beta2, eps)`` (the step spec's).
        init: float32 ``[U, d]`` or None: start every probe from it and the moments from zero
            instead of reading ``emb`` / ``adam_m`` / ``adam_v`` (a fresh probe batch).
        val: ``(indptr, items, ratings, weights)`` of the validation ratings (CSR by user, the
            same users) or None: each checkpoint also computes the per-user validation losses.
        snapshots: float32 ``[S, U, P, d]`` (S < K) or None: the embeddings at checkpoints 0..S-1.
        user_damping: float32 ``[U]`` or None (zeros): user u's L2 is ``regs[p] + user_damping[u]``
            (``retrain.contract.damping_terms``).
        blocks: override ``pick_blocks`` (tests, benchmarks); it also picks the kernel variant
            (``kernels/blocks.py``: products, persistent grid, item bias folded into the rows of
            a cached table, ``kernels/items.py``).

    Returns ``(bad, partial)``: int32 ``[K, P]``, 1 for a probe whose state was NaN/inf at
    checkpoint k for a visited user; float32 ``[K, U, P]`` per-user ``sum w (pred - r)^2`` over the
    validation ratings (0 for users not in ``order`` or without validation ratings), or None.
    """
    device = emb.device
    ends = list(checkpoint_ends)  # a string "12" would be the epochs [1, 2]
    check_integers(batch_size=batch_size, epoch_start=epoch_start, seed=seed,
                   **{f"checkpoint_ends[{k}]": n for k, n in enumerate(ends)})
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
    if len(adam) != 3 or optimizer == "adam" and not (0.0 <= adam[0] < 1.0 and 0.0 <= adam[1] < 1.0 and
                                                      0.0 < adam[2] < math.inf):
        raise ValueError(f"adam must be (beta1, beta2, eps) with 0 <= beta1, beta2 < 1 and a finite eps > 0, got {adam}")
    if batch_size < 1 or epoch_start < 0 or not ends or min(ends) < 0 or ends != sorted(set(ends)):
        raise ValueError(f"need batch_size >= 1, epoch_start >= 0 and increasing checkpoint_ends >= 0; got "
                         f"{batch_size}, {epoch_start}, {ends}")
    check_ratings(indptr, items, ratings, weights, device, keys=keys)
    check_items(item_vectors, item_bias, device)
    n_users, h = indptr.shape[0] - 1, item_vectors.shape[1]
    check_tensor("emb", emb, torch.float32, (n_users, None, None), device)
    _, n_probes, d = emb.shape
    is_adam = optimizer == "adam"
    if is_adam:
        check_tensor("adam_m", adam_m, torch.float32, tuple(emb.shape), device)
        check_tensor("adam_v", adam_v, torch.float32, tuple(emb.shape), device)
    check_tensor("lrs", lrs, torch.float32, (n_probes,), device)
    check_tensor("regs", regs, torch.float32, (n_probes,), device)
    check_tensor("order", order, torch.int64, (None,), device)
    if user_damping is None:
        user_damping = torch.zeros(n_users, dtype=torch.float32, device=device)
    check_tensor("user_damping", user_damping, torch.float32, (n_users,), device)
    if init is not None:
        check_tensor("init", init, torch.float32, (n_users, d), device)
    if val is not None:
        if len(val) != 4:
            raise ValueError(f"val must be (indptr, items, ratings, weights), got {len(val)} entries")
        check_ratings(*val, device)
        check_tensor("val indptr", val[0], torch.int64, (n_users + 1,), device)
    if snapshots is not None:
        check_tensor("snapshots", snapshots, torch.float32, (None, n_users, n_probes, d), device)
        if snapshots.shape[0] >= len(ends):
            raise ValueError(f"snapshots: at most {len(ends) - 1} (one per checkpoint but the last), "
                             f"got {snapshots.shape[0]}")
    check_disjoint(emb=emb, adam_m=adam_m if is_adam else None, adam_v=adam_v if is_adam else None, init=init,
                   snapshots=snapshots)  # written in place (init: read while emb is written)
    w1, c1, w2, c2, h1, n_layers, act1, act2 = tower_args(tower, d, h, item_bias)
    if item_vectors.stride(1) != 1:
        raise ValueError("item_vectors rows must be contiguous")
    K = len(ends)
    bad = torch.zeros((K, n_probes), dtype=torch.int32, device=device)
    partial = torch.zeros((K, n_users, n_probes), dtype=torch.float32, device=device) if val is not None else None
    if order.shape[0] == 0 or n_probes == 0 or (ends[-1] == 0 and init is None):
        return bad, partial
    blocks = blocks or pick_blocks("train", n_probes, d, h1, h, batch_size)
    if blocks.products == "tf32x3" and blocks.rows < MIN_DOT_K:
        raise ValueError(f"products 'tf32x3' run on tensor cores: they need blocks of >= {MIN_DOT_K} probes, "
                         f"got {blocks.rows}")
    table = folded_table(item_vectors, item_bias) if blocks.fold_bias else item_vectors
    n_probe_blocks = triton.cdiv(n_probes, blocks.rows)
    n_work = order.shape[0] * n_probe_blocks
    counter = torch.zeros(1, dtype=torch.int64, device=device)  # the persistent grid's next work item
    n_programs = min(n_work, resident_programs(device, blocks.num_warps)) if blocks.persistent else n_work
    moments = (adam_m, adam_v) if is_adam else (emb, emb)
    val = val if val is not None else (indptr, items, ratings, weights)  # unread without validation
    snap = snapshots if snapshots is not None else emb
    beta1, beta2, eps = adam
    _train_epochs_kernel[(n_programs,)](
        emb, *moments, emb if init is None else init, bad, lrs, regs, user_damping,
        order, indptr, keys, items, ratings, weights,
        table, item_bias, w1, c1, w2, c2,
        torch.tensor(ends, dtype=torch.int64, device=device), *val, partial if partial is not None else emb, snap,
        counter, emb.stride(0), emb.stride(1), table.stride(0), n_users * n_probes * d,
        n_users, n_probes, n_probe_blocks, n_work, d, h1, h,
        float(global_bias), seed & 0xFFFFFFFF, epoch_start, ends[-1], batch_size, int(init is not None),
        int(partial is not None), K,
        0 if snapshots is None else snapshots.shape[0],
        N_LAYERS=n_layers, ACT1=act1, ACT2=act2,
        ADAM=is_adam, ADAM_BETA1=float(beta1), ADAM_BETA2=float(beta2), ADAM_EPS=float(eps),
        BLOCK_P=blocks.rows, BLOCK_D=blocks.d, BLOCK_H1=blocks.h1, BLOCK_H=blocks.h, BLOCK_B=blocks.cols,
        PRODUCTS=blocks.products, PERSISTENT=blocks.persistent, FOLD_BIAS=blocks.fold_bias,
        num_warps=blocks.num_warps, enable_fp_fusion=True,
    )
    return bad, partial


def resident_programs(device: torch.device, num_warps: int) -> int:
    """Programs of ``num_warps`` warps that a GPU can hold at once by its warp slots (64 per SM on
    Hopper): the persistent grid.  Registers may allow fewer; the programs that do not fit start as
    others finish, find the work taken and stop.  Under the interpreter (programs run one after
    another): one SM's worth."""
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1
    return sms * max(1, 64 // num_warps)


def permutations(indptr: torch.Tensor, keys: torch.Tensor, *, seed: int, epoch: int) -> torch.Tensor:
    """Every user's visiting order in ``epoch`` as computed in the kernels: int64 ``[nnz]`` where
    ``out[indptr[u] + i]`` is the canonical index of the rating user ``u`` visits at position ``i``
    (``retrain.contract.permutation``).  For tests."""
    device = indptr.device
    check_tensor("indptr", indptr, torch.int64, (None,), device)
    n_users = indptr.shape[0] - 1
    if n_users < 0:
        raise ValueError("indptr must have at least one entry")
    check_tensor("keys", keys, torch.int64, (n_users,), device)
    out = torch.full((int(indptr[-1]),), -1, dtype=torch.int64, device=device)
    if n_users > 0:
        blocks = pick_blocks("train", 1, 1, 1, 1, 64)
        _permutation_kernel[(n_users,)](out, indptr, keys, seed & 0xFFFFFFFF, epoch, BLOCK_B=blocks.cols)
    return out
