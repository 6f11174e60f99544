"""What every backend receives: plain tensors and scalars, already checked.

Backends know nothing of ``Ratings``, ``HyperParams`` or the tuner.  The probe trainer converts
its inputs with ``head_tensors`` / ``csr_tensors`` (which validate), allocates a ``ProbeState``
and then calls ``Backend.train_epochs`` and ``Backend.validation_loss``.

Layouts: user-major, so that one user's embeddings for all probes are contiguous:
``emb``, ``adam_m``, ``adam_v`` are float32 ``[U, P, d]``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..contract import initial_embeddings, user_key

ACTIVATION_CODES = {"identity": 0, "relu": 1, "tanh": 2}


@dataclass
class HeadTensors:
    """A frozen head as tensors on one device: ``tower`` is a list of ``(W [out,in], c [out], act)``."""

    tower: list
    item_vectors: torch.Tensor  # Q [I, h] float32
    item_bias: torch.Tensor  # b [I] float32
    global_bias: float  # mu

    @property
    def d(self) -> int:
        return self.tower[0][0].shape[1] if self.tower else self.item_vectors.shape[1]

    @property
    def h(self) -> int:
        return self.item_vectors.shape[1]


@dataclass
class CSRTensors:
    """Ratings as CSR by user on one device, canonical order inside each user."""

    indptr: torch.Tensor  # int64 [U + 1]
    items: torch.Tensor  # int32 [nnz]
    ratings: torch.Tensor  # float32 [nnz]
    weights: torch.Tensor  # float32 [nnz]
    keys: torch.Tensor  # int64 [U], user keys in [0, 2**32)

    @property
    def n_users(self) -> int:
        return self.indptr.shape[0] - 1


@dataclass
class ProbeState:
    """Embeddings and optimizer moments of P probes, ``[U, P, d]`` (moments empty for SGD)."""

    emb: torch.Tensor
    adam_m: torch.Tensor
    adam_v: torch.Tensor

    def select(self, probes: torch.Tensor) -> "ProbeState":
        """The state of a subset of probes (a copy, contiguous)."""
        pick = lambda t: t.index_select(1, probes).contiguous() if t.numel() else t
        return ProbeState(pick(self.emb), pick(self.adam_m), pick(self.adam_v))


def head_tensors(head, device) -> HeadTensors:
    """Convert a ``Head`` for a backend on ``device``."""
    tower = [(layer.weight.to(device).contiguous(), layer.bias.to(device).contiguous(), layer.activation)
             for layer in head.tower]
    return HeadTensors(tower, head.item_vectors.to(device).contiguous(), head.item_bias.to(device).contiguous(),
                       float(head.global_bias))


def csr_tensors(ratings, device) -> CSRTensors:
    """Convert ``Ratings`` for a backend on ``device``; keys come from the original user ids."""
    if ratings.n_items >= 2**31:
        raise ValueError(f"at most 2**31 - 1 items are supported, got {ratings.n_items}")
    as_t = lambda a, dt: torch.from_numpy(np.ascontiguousarray(a)).to(device=device, dtype=dt)
    return CSRTensors(as_t(ratings.indptr, torch.int64), as_t(ratings.items, torch.int32),
                      as_t(ratings.ratings, torch.float32), as_t(ratings.weights, torch.float32),
                      as_t(user_key(ratings.user_ids), torch.int64))


def new_state(data: CSRTensors, n_probes: int, d: int, *, seed: int, scale: float, optimizer: str,
              init: torch.Tensor | None = None) -> ProbeState:
    """Every probe starts from the contract's initial embeddings (common random numbers)."""
    device = data.indptr.device
    if init is None:
        init = torch.from_numpy(initial_embeddings(data.keys.cpu().numpy(), d, seed, scale))
    emb = init.to(device).unsqueeze(1).expand(-1, n_probes, -1).contiguous()
    moment = (lambda: torch.zeros_like(emb)) if optimizer == "adam" else (lambda: emb.new_zeros(0))
    return ProbeState(emb, moment(), moment())


def tower_forward(head: HeadTensors, x: torch.Tensor) -> torch.Tensor:
    """Apply the frozen tower to ``x [..., d]``.

    Products are written as broadcast-multiply-and-sum rather than matmul so that each probe's
    numbers do not depend on how many probes share the call (BLAS picks shape-dependent kernels).
    """
    for weight, bias, activation in head.tower:
        x = (x[..., None, :] * weight).sum(-1) + bias
        if activation == "relu":
            x = torch.relu(x)
        elif activation == "tanh":
            x = torch.tanh(x)
    return x


class Backend:
    """A probe-training backend.  Subclasses set ``name`` and implement the two methods.

    ``available`` says whether it can run here; ``device`` is where its tensors live.
    """

    name = "base"
    available = True

    def __init__(self, device=None):
        self.device = torch.device(device) if device is not None else torch.device("cpu")

    def train_epochs(self, head: HeadTensors, data: CSRTensors, state: ProbeState, lrs: torch.Tensor,
                     regs: torch.Tensor, *, epoch_start: int, n_epochs: int, batch_size: int,
                     optimizer: str, seed: int) -> None:
        """Advance all P probes by ``n_epochs`` epochs (``epoch_start`` ...) in place.

        ``lrs`` and ``regs`` are float32 ``[P]``; the schedule is the contract's (docs/semantics.md).
        """
        raise NotImplementedError

    def validation_loss(self, head: HeadTensors, data: CSRTensors, emb: torch.Tensor) -> torch.Tensor:
        """Per-probe ``sum w (pred - r)^2`` over all ratings in ``data``: float64 ``[P]``."""
        raise NotImplementedError

    def score(self, head: HeadTensors, emb: torch.Tensor) -> torch.Tensor:
        """Scores of every item for embeddings ``emb [n, d]``: float32 ``[n, n_items]``.

        Plain PyTorch here; a backend with a fused scoring kernel overrides it.
        """
        features = tower_forward(head, emb.to(head.item_vectors))
        return features @ head.item_vectors.T + head.item_bias + head.global_bias

    def __repr__(self) -> str:
        return f"{type(self).__name__}(device={self.device})"
