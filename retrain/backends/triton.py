"""The ``triton`` backend: the fused kernels of ``retrain.kernels`` on a CUDA GPU.

With ``TRITON_INTERPRET=1`` (set before the kernels are first imported) the same kernels run on
the CPU under Triton's interpreter; the tests use that on machines without a GPU.  The kernels are
imported on first use; without triton this module still imports and says so through
``HAS_TRITON``.  The prepared problem keeps the head, the ratings, the keys, the init and the
launch order on the device, so a training or validation call uploads nothing.
"""
from __future__ import annotations

import os

import torch

from ..contract import Adam
from ..errors import InputError
from .base import ACTIVATION_CODES, Backend, Problem, csr_tensors, head_tensors, limbs_of_partials

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


def kernel_head(head, device, backend: str) -> tuple:
    """``(item_vectors, item_bias, global_bias, tower)`` as the kernels take them."""
    dense = head_tensors(head, device, backend)
    tower = [(weight, bias, ACTIVATION_CODES[act]) for weight, bias, act in dense.tower]
    return dense.item_vectors, dense.item_bias, dense.global_bias, tower


class TritonProblem(Problem):
    def __init__(self, backend, head, train, val, spec, init):
        super().__init__(backend, head, train, val, spec, init)
        self._head = kernel_head(head, self.device, backend.name)
        self._train_data = csr_tensors(train, self.device)
        self._val_data = csr_tensors(val, self.device) if val is not None else None
        self._order = torch.from_numpy(self.order).to(self.device)
        opt = spec.optimizer
        self._adam = (opt.beta1, opt.beta2, opt.eps) if isinstance(opt, Adam) else (0.0, 0.0, 1.0)

    def _train(self, epoch_start, n_epochs, fresh):
        from ..kernels.train import train_epochs

        data, moments = self._train_data, self.moments
        m, v = moments if moments else (self.emb, self.emb)
        order = self._order if fresh else self._order[:self.n_with_ratings]
        bad = train_epochs(self.emb, m, v, self.lrs, self.regs, data.indptr, data.keys, data.items, data.ratings,
                           data.weights, *self._head, order=order, epoch_start=epoch_start, n_epochs=n_epochs,
                           batch_size=self.spec.batch_size, optimizer=self.spec.optimizer.name, seed=self.spec.seed,
                           adam=self._adam, init=self.init if fresh else None)
        return (bad == 0).cpu().numpy()

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
