"""The ``triton`` backend: the fused kernels of ``retrain.kernels`` on a CUDA GPU.

With ``TRITON_INTERPRET=1`` (set before the kernels are first imported) the same kernels run on
the CPU under Triton's interpreter; the tests use that on machines without a GPU.  The kernels are
imported on first use; without triton this module still imports and says so through
``HAS_TRITON``.
"""
from __future__ import annotations

import os

import torch

from .base import ACTIVATION_CODES, Backend, CSRTensors, HeadTensors, ProbeState
from .reference import ADAM_BETA1, ADAM_BETA2, ADAM_EPS

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


def _tower(head: HeadTensors) -> list:
    return [(weight, bias, ACTIVATION_CODES[act]) for weight, bias, act in head.tower]


class TritonBackend(Backend):
    """Fused training, validation and scoring kernels (``kernels/``), one launch per call."""

    name = "triton"
    available = HAS_TRITON

    def __init__(self, device=None):
        dev = triton_device(device)
        if not HAS_TRITON or dev is None:
            raise ValueError("backend 'triton' needs triton and a CUDA GPU (or TRITON_INTERPRET=1 on the CPU)")
        super().__init__(dev)

    def train_epochs(self, head: HeadTensors, data: CSRTensors, state: ProbeState, lrs: torch.Tensor,
                     regs: torch.Tensor, *, epoch_start: int, n_epochs: int, batch_size: int,
                     optimizer: str, seed: int) -> None:
        from ..kernels.train import train_epochs

        train_epochs(state.emb, state.adam_m, state.adam_v, lrs, regs,
                     data.indptr, data.keys, data.items, data.ratings, data.weights,
                     head.item_vectors, head.item_bias, head.global_bias, _tower(head),
                     epoch_start=epoch_start, n_epochs=n_epochs, batch_size=batch_size,
                     optimizer=optimizer, seed=seed, adam=(ADAM_BETA1, ADAM_BETA2, ADAM_EPS))

    def validation_loss(self, head: HeadTensors, data: CSRTensors, emb: torch.Tensor) -> torch.Tensor:
        from ..kernels.validate import validation_loss

        return validation_loss(emb, data.indptr, data.items, data.ratings, data.weights,
                               head.item_vectors, head.item_bias, head.global_bias, _tower(head))

    def score(self, head: HeadTensors, emb: torch.Tensor) -> torch.Tensor:
        from ..kernels.score import score

        emb = emb.to(device=self.device, dtype=torch.float32).contiguous()
        return score(emb, head.item_vectors, head.item_bias, head.global_bias, _tower(head))
