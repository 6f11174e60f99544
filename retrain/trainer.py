"""Train P hyper-parameter probes at once: checkpoints, early stopping, best state, divergence.

Every backend runs the same contract; this module owns what happens between launches: a
validation pass every ``epochs_per_checkpoint`` epochs (and one at epoch 0, the init), per-probe
patience, keeping each probe's best embeddings, stopping probes whose loss is NaN/inf, and
splitting the probes into groups that fit a memory budget.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field

import numpy as np
import torch

from .backends import get_backend
from .backends.base import csr_tensors, head_tensors, new_state
from .data import Ratings
from .heads import Head
from .hyperparams import HyperParams

log = logging.getLogger("retrain")


@dataclass
class ProbeResult:
    """The outcome of one probe.

    ``history`` holds ``(epoch, val_loss)`` at every checkpoint (epoch 0 is the init).
    ``best_epoch`` / ``best_val_loss`` are the best finite checkpoint; ``embeddings`` (``[U, d]``,
    only when asked for) are the embeddings at ``best_epoch``.
    """

    lr: float
    reg: float
    history: list = field(default_factory=list)
    best_epoch: int = 0
    best_val_loss: float = math.inf
    diverged: bool = False
    embeddings: torch.Tensor | None = None

    @property
    def epochs_trained(self) -> int:
        return self.history[-1][0] if self.history else 0


def _as_vector(values, name: str) -> np.ndarray:
    v = np.atleast_1d(np.asarray(values, dtype=np.float64))
    if v.ndim != 1 or v.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-d sequence, got shape {v.shape}")
    if not np.all(np.isfinite(v)):
        raise ValueError(f"{name} must be finite, got {v.tolist()}")
    return v


def check_training_inputs(head: Head, train: Ratings, val: Ratings | None) -> None:
    """Raise ValueError when the data and the head do not describe the same users and items."""
    for name, data in (("train", train), ("val", val)):
        if data is None:
            continue
        if data.n_items != head.n_items:
            raise ValueError(f"{name} has {data.n_items} items but the head has {head.n_items}")
        if data.nnz and int(data.items.max()) >= head.n_items:
            raise ValueError(f"{name} has item index {int(data.items.max())} >= n_items {head.n_items}")
    if val is not None and (val.n_users != train.n_users or not np.array_equal(val.user_ids, train.user_ids)):
        raise ValueError(f"train and val must hold the same users (got {train.n_users} and {val.n_users} users)")


def default_memory_budget(device: torch.device) -> int:
    """Bytes the probe states may use: half the free GPU memory, a quarter of the RAM on the CPU."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free // 2
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4


def train_probes(head: Head, train: Ratings, val: Ratings, lrs, regs, hyp: HyperParams, backend="auto", *,
                 return_embeddings: bool = False, memory_budget: int | None = None,
                 init: torch.Tensor | None = None) -> list[ProbeResult]:
    """Train ``P = len(lrs)`` probes (learning rate, L2) at once on the same data and schedule.

    Args:
        head: the frozen item side.
        train, val: ratings of the same users (``val`` for checkpoints; may be empty).
        lrs, regs: length-P sequences.
        hyp: batch size, optimizer, seed, max_epochs, epochs_per_checkpoint, patience, num_users
            (the Glorot bound uses ``hyp.num_users`` or else ``train.n_users``).
        backend: name or ``Backend``.
        return_embeddings: keep each probe's best embeddings ``[U, d]`` (CPU tensors).
        memory_budget: bytes for probe states; probes are split into groups to fit.
        init: optional initial embeddings ``[U, d]`` (default: the contract's init).

    Returns one ``ProbeResult`` per probe, in order.
    """
    lrs, regs = _as_vector(lrs, "lrs"), _as_vector(regs, "regs")
    if lrs.shape != regs.shape:
        raise ValueError(f"lrs and regs must have the same length, got {lrs.size} and {regs.size}")
    if (lrs <= 0).any() or (regs < 0).any():
        raise ValueError("learning rates must be > 0 and regularisations >= 0")
    check_training_inputs(head, train, val)
    be = get_backend(backend)
    device = be.device
    head_t = head_tensors(head, device)
    train_t, val_t = csr_tensors(train, device), csr_tensors(val, device)
    val_weight = float(val.weights.astype(np.float64).sum())
    scale = head.init_scale(hyp.num_users or train.n_users)
    if init is not None:
        init = torch.as_tensor(init, dtype=torch.float32)
        if init.shape != (train.n_users, head.d):
            raise ValueError(f"init must be [n_users={train.n_users}, d={head.d}], got {tuple(init.shape)}")

    per_probe = train.n_users * head.d * 4 * (3 if hyp.optimizer == "adam" else 1) * (2 if return_embeddings else 1) * 2
    budget = memory_budget if memory_budget is not None else default_memory_budget(device)
    group = max(1, min(len(lrs), int(budget // max(per_probe, 1))))
    if group < len(lrs):
        log.info("memory budget %.3g bytes: training %d probes in groups of %d", budget, len(lrs), group)
    results = []
    for first in range(0, len(lrs), group):
        sl = slice(first, first + group)
        results += _train_group(be, head_t, train_t, val_t, val_weight, lrs[sl], regs[sl], hyp, scale,
                                return_embeddings, init, head.d)
    return results


def _train_group(be, head_t, train_t, val_t, val_weight, lrs, regs, hyp, scale, return_embeddings, init, d):
    P = len(lrs)
    results = [ProbeResult(float(lr), float(reg)) for lr, reg in zip(lrs, regs)]
    state = new_state(train_t, P, d, seed=hyp.seed, scale=scale, optimizer=hyp.optimizer, init=init)
    best = state.emb.clone() if return_embeddings else None
    active = np.arange(P)  # probe ids still training, in state order
    lr_t = torch.tensor(lrs, dtype=torch.float32, device=be.device)
    reg_t = torch.tensor(regs, dtype=torch.float32, device=be.device)
    since_best = np.zeros(P, dtype=np.int64)
    epoch = 0
    while True:
        losses = be.validation_loss(head_t, val_t, state.emb).cpu().numpy() / max(val_weight, 1e-300)
        if val_weight == 0:
            losses = np.where(np.isfinite(losses), 0.0, losses)
        # One device-to-host transfer per checkpoint, not one per probe.
        emb_finite = torch.isfinite(state.emb).all(dim=2).all(dim=0).cpu().numpy()
        keep = []
        for slot, probe in enumerate(active):
            r, loss = results[probe], float(losses[slot])
            r.history.append((epoch, loss))
            finite = math.isfinite(loss) and bool(emb_finite[slot])
            if not finite:
                r.diverged = True
                log.debug("probe %d (lr %.3g, reg %.3g) diverged at epoch %d", probe, r.lr, r.reg, epoch)
                continue
            if loss < r.best_val_loss:
                r.best_val_loss, r.best_epoch = loss, epoch
                since_best[probe] = 0
                if best is not None:
                    best[:, probe] = state.emb[:, slot]
            else:
                since_best[probe] += 1
            if since_best[probe] <= hyp.patience and epoch < hyp.max_epochs:
                keep.append(slot)
        if not keep:
            break
        if len(keep) < len(active):
            pick = torch.tensor(keep, device=be.device)
            state, lr_t, reg_t = state.select(pick), lr_t[pick], reg_t[pick]
            active = active[keep]
        n_epochs = min(hyp.epochs_per_checkpoint, hyp.max_epochs - epoch)
        be.train_epochs(head_t, train_t, state, lr_t, reg_t, epoch_start=epoch, n_epochs=n_epochs,
                        batch_size=hyp.batch_size, optimizer=hyp.optimizer, seed=hyp.seed)
        epoch += n_epochs
    if best is not None:
        for probe, r in enumerate(results):
            r.embeddings = best[:, probe].cpu().clone()
    return results


def train_embeddings(head: Head, ratings: Ratings, hyp: HyperParams, epochs: int, backend="auto", *,
                     init: torch.Tensor | None = None) -> torch.Tensor:
    """Train one configuration (``hyp.learning_rate``, ``hyp.regularization``) for exactly ``epochs``
    epochs, no validation: the serving-time recipe.  Returns embeddings ``[n_users, d]`` (CPU).

    The Glorot bound uses ``hyp.num_users`` (set it to the user count of the retrain being
    reproduced), else ``ratings.n_users``.
    """
    if epochs < 0:
        raise ValueError(f"epochs must be >= 0, got {epochs}")
    check_training_inputs(head, ratings, None)
    be = get_backend(backend)
    head_t, data_t = head_tensors(head, be.device), csr_tensors(ratings, be.device)
    scale = head.init_scale(hyp.num_users or ratings.n_users)
    if init is not None:
        init = torch.as_tensor(init, dtype=torch.float32)
        if init.shape != (ratings.n_users, head.d):
            raise ValueError(f"init must be [n_users={ratings.n_users}, d={head.d}], got {tuple(init.shape)}")
    state = new_state(data_t, 1, head.d, seed=hyp.seed, scale=scale, optimizer=hyp.optimizer, init=init)
    if epochs:
        lr = torch.tensor([hyp.learning_rate], dtype=torch.float32, device=be.device)
        reg = torch.tensor([hyp.regularization], dtype=torch.float32, device=be.device)
        be.train_epochs(head_t, data_t, state, lr, reg, epoch_start=0, n_epochs=epochs,
                        batch_size=hyp.batch_size, optimizer=hyp.optimizer, seed=hyp.seed)
    return state.emb[:, 0].cpu()
