"""Honest speed baselines in plain PyTorch: what the fused backends are timed against.

* ``eager_loop``: the training loop a PyTorch user would write, one probe after another.
* ``batched``: all probes in one tensor, minibatches drawn across users.
* ``user_parallel``: OUR contract (per-user permutations, minibatches and Adam step counts) in
  plain PyTorch, vectorised across users: the strongest honest baseline for the fused backends.

``eager_loop`` and ``batched`` draw shuffled minibatches of ``batch_size`` ratings across all
users (``torch.randperm`` with a generator seeded by ``seed``), so they do NOT follow the
contract's schedule: they are for timing, not for parity.  The loss of a minibatch C is the
contract's, with the L2 term of each rating's user:

    L_C = (1/|C|) sum_{c in C} [ w_c (pred_c - r_c)^2 + reg ||e_{u_c}||^2 ]

``user_parallel`` follows the contract (docs/semantics.md) and agrees with the ``reference``
backend to float32 rounding.  All run on ``init.device`` and return the embeddings ``[U, P, d]``
after training.
"""
from __future__ import annotations

import torch

from .backends.base import CSRTensors, heaviest_first
from .contract import GOLDEN, MASK32, MAX_BATCH_SIZE, MAX_SEED, PERM_DOMAIN, PERM_ROUNDS, Adam, combine, damping_terms
from .errors import InputError, check_bool, check_int
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


def _check(head: Head, data: CSRTensors, init: torch.Tensor, lrs: torch.Tensor, regs: torch.Tensor,
           batch_size: int, n_epochs: int, seed: int, max_steps: int | None) -> None:
    # The counts as the backends take them: a seed above 2**32 - 1 aliased a smaller one in
    # user_parallel (which hashes it mod 2**32, as the contract) and overflowed torch's generator.
    check_int("batch_size", batch_size, 1, MAX_BATCH_SIZE)
    check_int("n_epochs", n_epochs, 0)
    check_int("seed", seed, 0, MAX_SEED)
    if max_steps is not None:
        check_int("max_steps", max_steps, 0)
    if init.ndim != 2 or init.shape != (data.n_users, head.d):  # another d crashed inside a matmul
        raise InputError(f"init must be [n_users={data.n_users}, d={head.d}], got {tuple(init.shape)}")
    if lrs.ndim != 1 or lrs.shape != regs.shape:
        raise InputError(f"lrs and regs must be [P] vectors of one length, got {tuple(lrs.shape)} and {tuple(regs.shape)}")


def eager_loop(head: Head, data: CSRTensors, init: torch.Tensor, lrs: torch.Tensor, regs: torch.Tensor, *,
               n_epochs: int, batch_size: int, seed: int = 0, max_steps: int | None = None) -> torch.Tensor:
    """The loop a PyTorch user would write, one probe after another.

    Per probe: an ``nn.Embedding(U, d)`` initialised from ``init [U, d]``, the frozen item side as
    plain tensors, ``torch.optim.Adam(lr)`` over the whole table, and per minibatch a forward,
    ``backward()`` and ``step()``; the regulariser is in the loss (module docstring), not Adam's
    weight decay.  ``max_steps`` caps the optimizer steps per probe (to time a slice of big data).
    Every probe sees the same minibatches.  Returns ``[U, P, d]``.
    """
    _check(head, data, init, lrs, regs, batch_size, n_epochs, seed, max_steps)
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
    _check(head, data, init, lrs, regs, batch_size, n_epochs, seed, max_steps)
    compile = check_bool("compile", compile)
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


# --------------------------------------------------------------------------- user_parallel
def _mul32(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """``x * c mod 2**32`` for int64 tensors in ``[0, 2**32)``, with no int64 overflow: the product
    is split at 16 bits of ``c`` (each partial product < 2**48)."""
    return (x * (c & 0xFFFF) + (((x * (c >> 16)) & 0xFFFF) << 16)) & MASK32


def _fmix32(x: torch.Tensor) -> torch.Tensor:
    """``retrain.contract.fmix32`` on int64 tensors holding uint32 values."""
    x = x ^ (x >> 16)
    x = _mul32(x, torch.tensor(0x85EBCA6B, device=x.device))
    x = x ^ (x >> 13)
    x = _mul32(x, torch.tensor(0xC2B2AE35, device=x.device))
    return x ^ (x >> 16)


def _combine(h: torch.Tensor, v: int) -> torch.Tensor:
    """``retrain.contract.combine(h, v)`` for a tensor of hashes ``h`` and one word ``v``."""
    return _fmix32(h ^ ((v + GOLDEN) & MASK32))


def _bucket_permutations(keys: torch.Tensor, counts: torch.Tensor, bits: int, seed: int, epoch: int) -> torch.Tensor:
    """The contract's permutations of the users in one bucket, all at once.

    ``keys``, ``counts``: int64 ``[u]`` of users whose ``ceil(log2(n)) == bits``.  Returns int64
    ``[u, 2**bits]``: entry ``[j, i]`` is the rating (canonical index) visited at position ``i``
    of the epoch, for ``i < counts[j]`` (beyond: meaningless).  Every user has its own round
    constants; cycle walking re-applies the bijection where a value is still ``>= n``.
    """
    width, mask, shift = 1 << bits, (1 << bits) - 1, (bits + 1) // 2
    prefix = int(combine(combine(PERM_DOMAIN, seed & MASK32), epoch & MASK32))
    base = _fmix32(prefix ^ ((keys + GOLDEN) & MASK32))  # combine(prefix, key), per user
    rounds = [(_combine(base, 2 * r)[:, None] | 1, _combine(base, 2 * r + 1)[:, None]) for r in range(PERM_ROUNDS)]

    def bijection(x):
        for mult, add in rounds:
            x = (_mul32(x, mult) + add) & mask
            x = x ^ (x >> shift)
        return x

    position = torch.arange(width, device=keys.device)[None, :]
    x = bijection(position.expand(len(keys), width))
    n = counts[:, None]
    outside = (x >= n) & (position < n)
    while bool(outside.any()):
        x = torch.where(outside, bijection(x), x)
        outside = (x >= n) & (position < n)
    return x


def _epoch_rows(data_sorted, bucket_ranges, seed: int, epoch: int) -> list[torch.Tensor]:
    """Per bucket, int64 ``[u, 2**bits]``: the rating row (CSR index) each user visits at each
    position of ``epoch``, -1 past the user's count."""
    indptr, counts, keys = data_sorted
    tables = []
    for first, last, bits in bucket_ranges:
        n = counts[first:last]
        perm = _bucket_permutations(keys[first:last], n, bits, seed, epoch)
        position = torch.arange(perm.shape[1], device=perm.device)[None, :]
        tables.append(torch.where(position < n[:, None], indptr[first:last, None] + perm, -1))
    return tables


def _step_rows(tables, bucket_ranges, chunk: int, batch_size: int, n_active: int) -> list[tuple[int, torch.Tensor]]:
    """The ``chunk``-th minibatch of the first ``n_active`` users (sorted heaviest first) as
    ``(first user, rows [k, w])`` pieces of consecutive users, one per width ``w`` (a bucket's
    minibatch is at most its width wide, so small buckets are not padded to the batch size);
    -1 where a user's minibatch is shorter than ``w``."""
    lo = chunk * batch_size
    pieces = []  # [first, width, [tables]]
    for table, (first, _, _) in zip(tables, bucket_ranges):
        if first >= n_active or table.shape[1] <= lo:
            break  # buckets come widest first: the rest have no chunk-th minibatch
        piece = table[:n_active - first, lo:lo + batch_size]
        if pieces and pieces[-1][1] == piece.shape[1]:
            pieces[-1][2].append(piece)
        else:
            pieces.append([first, piece.shape[1], [piece]])
    return [(first, torch.cat(parts)) for first, _, parts in pieces]


def _user_parallel_grad(head: Head, e, q, offset, rating, coef, reg):
    """Gradient of each (user, probe) loss w.r.t. its embedding, ``[k, P, d]``.

    ``e [k, P, d]``; ``q [k, w, h]`` item vectors of each user's minibatch; ``offset``, ``rating``
    ``[k, w]``; ``coef [k, w]`` = w / |C| (0 on padding); ``reg [k, P]`` (each user's damped reg).
    By hand (two batched matmuls) without a tower, by autograd through one.
    """
    if not head.tower:
        pred = torch.bmm(e, q.transpose(1, 2)) + offset[:, None, :]  # [k, P, w]
        d_pred = 2.0 * coef[:, None, :] * (pred - rating[:, None, :])
        return torch.bmm(d_pred, q) + 2.0 * reg[:, :, None] * e
    leaf = e.detach().requires_grad_(True)
    pred = torch.bmm(head.user_features(leaf), q.transpose(1, 2)) + offset[:, None, :]
    loss = (coef[:, None, :] * (pred - rating[:, None, :]) ** 2).sum() + (reg[:, :, None] * leaf * leaf).sum()
    (grad,) = torch.autograd.grad(loss, leaf)
    return grad


def user_parallel(head: Head, data: CSRTensors, init: torch.Tensor, lrs: torch.Tensor, regs: torch.Tensor, *,
                  n_epochs: int, batch_size: int, seed: int = 0, damping: float = 0.0,
                  max_steps: int | None = None) -> torch.Tensor:
    """The contract's schedule in plain PyTorch, vectorised across users; returns ``[U, P, d]``.

    Users are sorted by rating count (heaviest first), so at step ``c`` of an epoch the users that
    still have a ``c``-th minibatch are a prefix of the table: they all take it at once.  Each
    epoch's per-user permutations are computed with integer tensor ops per power-of-two bucket
    of counts (``retrain.contract.permutation``, every user its own round constants), the
    minibatch ratings are padded to the bucket's width (at most ``batch_size``), predictions and gradients are batched
    matmuls, and Adam updates the prefix in place with each user's own step count.  Adam's
    constants are the contract's defaults (``retrain.contract.Adam()``); ``damping`` is the
    step spec's (each user's reg is ``reg + damping_terms(damping, counts)``).  ``max_steps`` caps the
    number of steps (each one minibatch of every active user).  Runs on ``init.device``.
    """
    _check(head, data, init, lrs, regs, batch_size, n_epochs, seed, max_steps)
    device = init.device
    head = head.to(device)
    counts_all = (data.indptr[1:] - data.indptr[:-1]).cpu().numpy()
    order = torch.from_numpy(heaviest_first(counts_all)).to(device)
    counts = torch.as_tensor(counts_all, device=device)[order]
    n_rated = int((counts > 0).sum())
    data_sorted = (data.indptr.to(device)[:-1][order], counts, data.keys.to(device)[order])
    bits_of = [int(n - 1).bit_length() for n in counts[:n_rated].tolist()]
    bucket_ranges = []  # (first, last, bits): sorted users of one power-of-two bucket
    for u, bits in enumerate(bits_of):
        if bucket_ranges and bucket_ranges[-1][2] == bits:
            bucket_ranges[-1][1] = u + 1
        else:
            bucket_ranges.append([u, u + 1, bits])
    items, ratings, weights = data.items.to(device).long(), data.ratings.to(device), data.weights.to(device)
    Q, offsets = head.item_vectors, head.item_bias + head.global_bias
    n_probes = len(lrs)
    emb = init.to(device)[order][:, None, :].repeat(1, n_probes, 1)
    adam_m, adam_v = torch.zeros_like(emb), torch.zeros_like(emb)
    lr = lrs.to(device)[None, :, None]
    reg = regs.to(device)[None, :] + torch.from_numpy(damping_terms(damping, counts_all)).to(device)[order][:, None]
    steps_per_epoch = (counts + batch_size - 1) // batch_size  # [U] sorted
    # Users with a c-th minibatch: the first active[c] (counts sorted decreasing).
    max_chunks = int(steps_per_epoch[0]) if n_rated else 0
    active = torch.searchsorted(-counts, -torch.arange(max_chunks, device=device) * batch_size, right=False)
    active = active.tolist()
    budget = n_epochs * max_chunks if max_steps is None else min(max_steps, n_epochs * max_chunks)
    for step in range(budget):
        epoch, chunk = divmod(step, max_chunks)
        if chunk == 0:
            tables = _epoch_rows(data_sorted, bucket_ranges, seed, epoch)
        k = active[chunk]
        size = torch.clamp(counts[:k] - chunk * batch_size, max=batch_size)  # |C| per user
        grads = []
        for first, rows in _step_rows(tables, bucket_ranges, chunk, batch_size, k):  # rows [k_i, w_i]
            valid = rows >= 0
            rows = rows.clamp_min(0)
            coef = torch.where(valid, weights[rows], 0.0) / size[first:first + len(rows), None]
            item = items[rows]
            e = emb[first:first + len(rows)]
            grads.append(_user_parallel_grad(head, e, Q[item], offsets[item], ratings[rows], coef,
                                             reg[first:first + len(rows)]))
        grad = grads[0] if len(grads) == 1 else torch.cat(grads)
        e = emb[:k]
        t = (epoch * steps_per_epoch[:k] + chunk + 1).double()  # each user's own Adam step
        bias1 = (1 - _ADAM.beta1 ** t).float()[:, None, None]
        bias2 = (1 - _ADAM.beta2 ** t).float()[:, None, None]
        m, v = adam_m[:k], adam_v[:k]
        m.mul_(_ADAM.beta1).add_((1 - _ADAM.beta1) * grad)
        v.mul_(_ADAM.beta2).add_((1 - _ADAM.beta2) * grad * grad)
        e.sub_(lr * (m / bias1) / ((v / bias2).sqrt() + _ADAM.eps))
    out = torch.empty_like(emb)
    out[order] = emb
    return out
