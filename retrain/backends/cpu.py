"""The ``cpu`` backend: the fused C++ loop of ``retrain._C`` (``csrc/``), OpenMP over users.

For each user, all P probes train together with the user's embeddings and Adam moments held in a
local buffer for the whole call; the probes sit in SIMD lanes (AVX2 + FMA when the CPU has them,
else SSE4), so a probe's result does not depend on the other probes or on the thread count.
Tensors are passed zero-copy (``tensor.numpy()``): they must be contiguous CPU tensors.
"""
from __future__ import annotations

import torch

from .base import ACTIVATION_CODES, Backend, CSRTensors, HeadTensors

try:
    from .. import _C
    HAS_CPU_EXTENSION = True
    IMPORT_ERROR = None
except ImportError as exc:  # not built: the registry reports why
    _C = None
    HAS_CPU_EXTENSION = False
    IMPORT_ERROR = str(exc)


def _np(t: torch.Tensor, name: str):
    """Zero-copy numpy view of a CPU tensor (ValueError otherwise)."""
    if t.device.type != "cpu":
        raise ValueError(f"backend 'cpu' needs CPU tensors, {name} is on {t.device}")
    return t.detach().numpy()


def _head_args(head: HeadTensors) -> tuple:
    tower = head.tower
    return (_np(head.item_vectors, "item_vectors"), _np(head.item_bias, "item_bias"), head.global_bias,
            [_np(w, "tower weight") for w, _, _ in tower], [_np(c, "tower bias") for _, c, _ in tower],
            [ACTIVATION_CODES[act] for _, _, act in tower])


def _csr_args(data: CSRTensors) -> tuple:
    return (_np(data.indptr, "indptr"), _np(data.items, "items"), _np(data.ratings, "ratings"),
            _np(data.weights, "weights"))


class CpuBackend(Backend):
    """Fused C++ backend.

    Args:
        num_threads: OpenMP threads (default: ``torch.get_num_threads()`` at each call).
        simd: ``"auto"`` (best the CPU supports), ``"avx2"`` or ``"sse4"``; results differ between
            the two by rounding only (AVX2 fuses multiply-adds).
    """

    name = "cpu"
    available = HAS_CPU_EXTENSION

    def __init__(self, num_threads: int | None = None, simd: str = "auto"):
        super().__init__("cpu")
        if num_threads is not None and num_threads < 1:
            raise ValueError(f"num_threads must be >= 1, got {num_threads}")
        self.num_threads = num_threads
        self.simd = simd

    def _threads(self) -> int:
        return self.num_threads or torch.get_num_threads()

    def train_epochs(self, head, data, state, lrs, regs, *, epoch_start, n_epochs, batch_size, optimizer, seed):
        _C.train_epochs(_np(state.emb, "emb"), _np(state.adam_m, "adam_m"), _np(state.adam_v, "adam_v"),
                        _np(lrs, "lrs"), _np(regs, "regs"), *_csr_args(data), _np(data.keys, "keys"),
                        *_head_args(head), epoch_start=epoch_start, n_epochs=n_epochs, batch_size=batch_size,
                        optimizer=optimizer, seed=seed, num_threads=self._threads(), simd=self.simd)

    def validation_loss(self, head, data, emb):
        loss = _C.validation_loss(_np(emb, "emb"), *_csr_args(data), *_head_args(head),
                                  num_threads=self._threads(), simd=self.simd)
        return torch.from_numpy(loss)
