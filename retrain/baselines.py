"""Honest speed baselines in plain PyTorch: what the fused backends are timed against.

* ``eager_loop``: the training loop a PyTorch user would write, one probe after another.
* ``batched``: the strongest plain-PyTorch version we could write, all probes in one tensor.

Both draw shuffled minibatches of ``batch_size`` ratings across all users (``torch.randperm``
with a generator seeded by ``seed``), so they do NOT follow the contract's schedule (per-user
permutations, per-user minibatches and Adam step counts): they are for timing, not for parity.
The loss of a minibatch C is the contract's, with the L2 term of each rating's user:

    L_C = (1/|C|) sum_{c in C} [ w_c (pred_c - r_c)^2 + reg ||e_{u_c}||^2 ]

Both run on ``init.device`` and return the embeddings ``[U, P, d]`` after training.
"""
from __future__ import annotations

import torch

from .backends.base import CSRTensors
from .contract import Adam
from .errors import InputError
from .heads import Head

_ADAM = Adam()  # the contract's constants


def _rows(data: CSRTensors, device) -> tuple:
    """Per-rating (user, item, rating, weight) on ``device``; users and items as int64."""
    counts = (data.indptr[1:] - data.indptr[:-1]).to(device)
    users = torch.repeat_interleave(torch.arange(data.n_users, device=device), counts)
    return users, data.items.to(device).long(), data.ratings.to(device), data.weights.to(device)


def _batches(n: int, batch_size: int, n_epochs: int, generator: torch.Generator, device, max_steps: int | None):
    """Yield the rating indices of each minibatch, a fresh shuffle every epoch, at most ``max_steps``."""
    steps = 0
    for _ in range(n_epochs):
        order = torch.randperm(n, generator=generator, device=device)
        for first in range(0, n, batch_size):
            if max_steps is not None and steps >= max_steps:
                return
            steps += 1
            yield order[first:first + batch_size]


def _check(data: CSRTensors, init: torch.Tensor, lrs: torch.Tensor, regs: torch.Tensor, batch_size: int) -> None:
    if init.ndim != 2 or init.shape[0] != data.n_users:
        raise InputError(f"init must be [n_users={data.n_users}, d], got {tuple(init.shape)}")
    if lrs.ndim != 1 or lrs.shape != regs.shape:
        raise InputError(f"lrs and regs must be [P] vectors of one length, got {tuple(lrs.shape)} and {tuple(regs.shape)}")
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")


def eager_loop(head: Head, data: CSRTensors, init: torch.Tensor, lrs: torch.Tensor, regs: torch.Tensor, *,
               n_epochs: int, batch_size: int, seed: int = 0, max_steps: int | None = None) -> torch.Tensor:
    """The loop a PyTorch user would write, one probe after another.

    Per probe: an ``nn.Embedding(U, d)`` initialised from ``init [U, d]``, the frozen item side as
    plain tensors, ``torch.optim.Adam(lr)`` over the whole table, and per minibatch a forward,
    ``backward()`` and ``step()``; the regulariser is in the loss (module docstring), not Adam's
    weight decay.  ``max_steps`` caps the optimizer steps per probe (to time a slice of big data).
    Every probe sees the same minibatches.  Returns ``[U, P, d]``.
    """
    _check(data, init, lrs, regs, batch_size)
    device = init.device
    head = head.to(device)
    users, items, ratings, weights = _rows(data, device)
    out = torch.empty(data.n_users, len(lrs), init.shape[1], device=device)
    for p, (lr, reg) in enumerate(zip(lrs.tolist(), regs.tolist())):
        emb = torch.nn.Embedding(data.n_users, init.shape[1], device=device)
        with torch.no_grad():
            emb.weight.copy_(init)
        opt = torch.optim.Adam(emb.parameters(), lr=lr)
        generator = torch.Generator(device=device).manual_seed(seed)
        for rows in _batches(len(users), batch_size, n_epochs, generator, device, max_steps):
            e = emb(users[rows])
            i = items[rows]
            pred = (head.user_features(e) * head.item_vectors[i]).sum(-1) + head.item_bias[i] + head.global_bias
            loss = (weights[rows] * (pred - ratings[rows]) ** 2 + reg * (e * e).sum(-1)).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        out[:, p] = emb.weight.detach()
    return out


def _lazy_adam(e, m, v, grad, lr, bias1, bias2):
    """Adam on the touched rows only (like ``torch.optim.SparseAdam``); returns new (e, m, v)."""
    m = _ADAM.beta1 * m + (1 - _ADAM.beta1) * grad
    v = _ADAM.beta2 * v + (1 - _ADAM.beta2) * grad * grad
    e = e - lr * (m / bias1) / ((v / bias2).sqrt() + _ADAM.eps)
    return e, m, v


def _linear_update(e, m, v, inverse, q, offset, rating, weight, lr, reg, bias1, bias2):
    """One step for a head without a tower, the gradient by hand; returns new (e, m, v).

    ``e, m, v [n, P, d]`` are the touched rows, ``inverse [B]`` maps each rating to its row,
    ``q [B, d]`` item vectors, ``offset [B]`` = b + mu, ``lr [1, P, 1]``, ``reg [P]``.
    """
    e_c = e[inverse]  # [B, P, d]
    pred = torch.einsum("bpd,bd->bp", e_c, q) + offset[:, None]
    scale = 2.0 / inverse.shape[0]
    d_pred = (scale * weight)[:, None] * (pred - rating[:, None])  # [B, P]
    per_rating = d_pred[:, :, None] * q[:, None, :] + (scale * reg)[None, :, None] * e_c
    grad = torch.zeros_like(e).index_add_(0, inverse, per_rating)
    return _lazy_adam(e, m, v, grad, lr, bias1, bias2)


def _tower_update(e, m, v, inverse, q, offset, rating, weight, lr, reg, bias1, bias2, head):
    """One step through a tower, the gradient by autograd; arguments as ``_linear_update``."""
    e_rows = e.detach().requires_grad_(True)
    e_c = e_rows[inverse]
    pred = torch.einsum("bph,bh->bp", head.user_features(e_c), q) + offset[:, None]
    loss = (weight[:, None] * (pred - rating[:, None]) ** 2 + reg * (e_c * e_c).sum(-1)).mean(0).sum()
    (grad,) = torch.autograd.grad(loss, e_rows)
    return _lazy_adam(e, m, v, grad, lr, bias1, bias2)


_COMPILED = {}


def _compiled(update):
    """``torch.compile(update)``, made once per process so that later calls reuse its graphs."""
    if update not in _COMPILED:
        _COMPILED[update] = torch.compile(update, dynamic=True)
    return _COMPILED[update]


def batched(head: Head, data: CSRTensors, init: torch.Tensor, lrs: torch.Tensor, regs: torch.Tensor, *,
            n_epochs: int, batch_size: int, seed: int = 0, max_steps: int | None = None,
            compile: bool = False) -> torch.Tensor:
    """All P probes in one ``[U, P, d]`` tensor, the strongest plain-PyTorch loop we could write.

    Per minibatch (the same for all probes): the touched users are gathered once, the gradient
    of every probe is computed at once (by hand with ``index_add_`` for a head without a tower,
    by autograd through a tower), and a lazy Adam (the rows touched, a global step count for the
    bias correction, as ``torch.optim.SparseAdam``) updates them with per-probe ``lrs``/``regs``.
    ``compile=True`` runs the gradient and update through ``torch.compile`` (dynamic shapes).
    ``max_steps`` caps the number of minibatches.  Returns ``[U, P, d]``.
    """
    _check(data, init, lrs, regs, batch_size)
    device = init.device
    head = head.to(device)
    users, items, ratings, weights = _rows(data, device)
    n_probes = len(lrs)
    emb = init[:, None, :].repeat(1, n_probes, 1)  # a copy, also for P = 1
    adam_m, adam_v = torch.zeros_like(emb), torch.zeros_like(emb)
    lr = lrs.to(device)[None, :, None]
    reg = regs.to(device)
    update, extra = (_tower_update, (head,)) if head.tower else (_linear_update, ())
    if compile:
        update = _compiled(update)
    generator = torch.Generator(device=device).manual_seed(seed)
    for step, rows in enumerate(_batches(len(users), batch_size, n_epochs, generator, device, max_steps), 1):
        touched, inverse = torch.unique(users[rows], return_inverse=True)
        i = items[rows]
        # Bias corrections as tensors, so that a compiled update is not re-specialised every step.
        bias1 = torch.tensor(1 - _ADAM.beta1**step, device=device)
        bias2 = torch.tensor(1 - _ADAM.beta2**step, device=device)
        e, m, v = update(emb[touched], adam_m[touched], adam_v[touched], inverse, head.item_vectors[i],
                         head.item_bias[i] + head.global_bias, ratings[rows], weights[rows], lr, reg, bias1, bias2,
                         *extra)
        emb[touched], adam_m[touched], adam_v[touched] = e, m, v
    return emb
