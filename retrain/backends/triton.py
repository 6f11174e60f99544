"""The ``triton`` backend: the fused kernels of ``retrain.kernels`` on a CUDA GPU.

With ``TRITON_INTERPRET=1`` (set before the kernels are first imported) the same kernels run on
the CPU under Triton's interpreter; the tests use that on machines without a GPU.  The kernels are
imported on first use; without triton this module still imports and says so through
``HAS_TRITON``.  The prepared problem keeps the head, the ratings, the keys, the init and the
launch order on the device, so a training or validation call uploads nothing.
"""
from __future__ import annotations

import os
import weakref

import torch

import numpy as np

from ..contract import Adam
from ..errors import InputError
from .base import ACTIVATION_CODES, Backend, Problem, allocate, csr_tensors, head_tensors, limbs_of_partials

try:
    import triton  # noqa: F401  (only to know whether it is there)
    HAS_TRITON = True
except ImportError:
    HAS_TRITON = False


def triton_device(device=None) -> torch.device | None:
    """Where the kernels can run: a CUDA device when one is available (``device`` if it names
    one), the CPU under ``TRITON_INTERPRET=1``, else ``None``."""
    wanted = torch.device(device) if device is not None else None
    if torch.cuda.is_available() and (wanted is None or wanted.type == "cuda"):
        return wanted if wanted is not None else torch.device("cuda", torch.cuda.current_device())
    if os.environ.get("TRITON_INTERPRET") == "1" and (wanted is None or wanted.type == "cpu"):
        return torch.device("cpu")
    return None


# Kernel heads by (id(head), device): a Head is frozen, so its tensors on the device stay valid for
# as long as it lives, and every fold-in or recommend call with it reuses them instead of uploading
# the item table again.  (A dict keyed by id with a finalizer: Head holds a numpy array, so it
# cannot be a WeakKeyDictionary key.)
_KERNEL_HEADS: dict = {}


def kernel_head(head, device, backend: str) -> tuple:
    """``(item_vectors, item_bias, global_bias, tower)`` as the kernels take them, on ``device``;
    cached for the lifetime of ``head``."""
    key = (id(head), str(torch.device(device)))
    cached = _KERNEL_HEADS.get(key)
    if cached is not None and cached[0]() is head:
        return cached[1]
    dense = head_tensors(head, device, backend)
    tower = [(weight, bias, ACTIVATION_CODES[act]) for weight, bias, act in dense.tower]
    tensors = (dense.item_vectors, dense.item_bias, dense.global_bias, tower)
    _KERNEL_HEADS[key] = (weakref.ref(head), tensors)
    weakref.finalize(head, _KERNEL_HEADS.pop, key, None)
    return tensors


class TritonProblem(Problem):
    def __init__(self, backend, head, train, val, spec, init):
        super().__init__(backend, head, train, val, spec, init)
        self._head = kernel_head(head, self.device, backend.name)
        self._train_data = csr_tensors(train, self.device)
        self._val_data = csr_tensors(val, self.device) if val is not None else None
        self._order = torch.from_numpy(self.order).to(self.device)
        opt = spec.optimizer
        self._adam = (opt.beta1, opt.beta2, opt.eps) if isinstance(opt, Adam) else (0.0, 0.0, 1.0)

    def _launch(self, ends, *, order, validate: bool, snapshots=None):
        """One training launch of ``ends[-1]`` epochs with checkpoints after ``ends``: ``(bad
        [K, P], partial [K, U, P] or None)`` (``kernels/train.py``'s ``train_checkpoints``)."""
        from ..kernels.train import train_checkpoints

        data, moments = self._train_data, self.moments
        m, v = moments if moments else (self.emb, self.emb)
        val = self._val_data
        return train_checkpoints(
            self.emb, m, v, self.lrs, self.regs, data.indptr, data.keys, data.items, data.ratings, data.weights,
            *self._head, order=order, epoch_start=self.epoch, checkpoint_ends=ends, batch_size=self.spec.batch_size,
            optimizer=self.spec.optimizer.name, seed=self.spec.seed, adam=self._adam,
            init=self.init if self.fresh else None, snapshots=snapshots, user_damping=self.user_damping,
            val=(val.indptr, val.items, val.ratings, val.weights) if validate else None)

    def _train(self, epoch_start, n_epochs, fresh):
        # Only the users with training ratings move, unless the launch writes the state first.
        order = self._order if fresh else self._order[:self.n_with_ratings]
        bad, _ = self._launch([n_epochs], order=order, validate=False)
        return (bad[0] == 0).cpu().numpy()

    def checkpoints(self, epochs):
        """All the checkpoints in one launch: each user trains through every epoch of the call and
        is checked, validated and (with ``keep_best``) copied at each checkpoint while its state
        is in registers: no extra pass over the state."""
        epochs = self.check_epochs("epochs", epochs)  # int(2.5) trained 2 epochs
        if self.n_probes == 0 or not epochs or min(epochs) < 1:
            return super().checkpoints(epochs)
        ends = np.cumsum(epochs).tolist()
        K = len(ends)
        snapshots = None
        if self._best is not None and K > 1:
            snapshots = allocate((K - 1, self.n_users, self.n_probes, self.d), self.device, "the checkpoints' snapshots")
        bad, partial = self._launch(ends, order=self._order, validate=self.has_val, snapshots=snapshots)
        finite, limbs = (bad == 0).cpu().numpy(), None
        if self.has_val:
            per_checkpoint = [limbs_of_partials(partial[k]) for k in range(K)]
            limbs = np.stack([np.asarray(l) for l, _ in per_checkpoint])
            finite &= np.stack([ok for _, ok in per_checkpoint])
        return self._fused_checkpoints(ends[-1], finite, limbs, snapshots)

    def _validate(self, emb):
        from ..kernels.validate import user_losses

        data = self._val_data
        partial = user_losses(emb, data.indptr, data.items, data.ratings, data.weights, *self._head)
        return limbs_of_partials(partial)


class TritonBackend(Backend):
    """Fused training, validation and scoring kernels (``kernels/``)."""

    name = "triton"

    def __init__(self, device=None):
        dev = triton_device(device)
        if not HAS_TRITON or dev is None:
            raise InputError("backend 'triton' needs triton and a CUDA GPU (or TRITON_INTERPRET=1 on the CPU)")
        super().__init__(dev)

    def prepare(self, head, train, val, spec, *, init):
        return TritonProblem(self, head, train, val, spec, init)

    def score(self, head, emb: torch.Tensor) -> torch.Tensor:
        from ..kernels.score import score

        item_vectors, item_bias, global_bias, tower = kernel_head(head, self.device, self.name)
        emb = emb.to(device=self.device, dtype=torch.float32).contiguous()
        return score(emb, item_vectors, item_bias, global_bias, tower)
