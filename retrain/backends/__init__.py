"""Backend registry: ``reference`` (PyTorch oracle), ``cpu`` (C++), ``triton`` (GPU kernels), ``auto``.

Each backend module sets an availability flag instead of failing at import, like implicit's
``gpu.HAS_CUDA``; ``get_backend`` raises an InputError that says why one is missing.
"""
from __future__ import annotations

import torch

from ..errors import InputError
from .base import Backend, Checkpoint, Problem
from .reference import ReferenceBackend

BACKENDS = ("reference", "cpu", "triton", "auto")


def _cpu_backend():
    from .cpu import HAS_CPU_EXTENSION, CpuBackend, IMPORT_ERROR
    if not HAS_CPU_EXTENSION:
        raise InputError(f"backend 'cpu' is not available: the C++ extension retrain._C did not import ({IMPORT_ERROR})")
    return CpuBackend()


def _triton_backend(device):
    from .triton import HAS_TRITON, TritonBackend, triton_device
    if not HAS_TRITON:
        raise InputError("backend 'triton' is not available: triton is not installed")
    dev = triton_device(device)
    if dev is None:
        raise InputError("backend 'triton' needs a CUDA GPU (or TRITON_INTERPRET=1 to run on the CPU)")
    return TritonBackend(dev)


def available_backends() -> list[str]:
    """Names of the backends that can run on this machine."""
    names = []
    for name in ("reference", "cpu", "triton"):
        try:
            get_backend(name)
            names.append(name)
        except ValueError:
            pass
    return names


def get_backend(name="auto", device=None) -> Backend:
    """A backend by name (or pass a ``Backend`` through).

    ``auto`` picks ``triton`` on a CUDA GPU, else ``cpu`` when the C++ extension is built, else
    ``reference``.
    """
    if isinstance(name, Backend):
        return name
    if name == "reference":
        return ReferenceBackend(device)
    if name == "cpu":
        return _cpu_backend()
    if name == "triton":
        return _triton_backend(device)
    if name == "auto":
        if torch.cuda.is_available():
            try:
                return _triton_backend(device)
            except ValueError:
                pass
        try:
            return _cpu_backend()
        except ValueError:
            return ReferenceBackend(device)
    raise InputError(f"unknown backend {name!r}: expected one of {BACKENDS}")


__all__ = ["Backend", "Checkpoint", "Problem", "available_backends", "get_backend", "BACKENDS"]
