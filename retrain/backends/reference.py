"""The ``reference`` backend: plain PyTorch autograd, one user and one step at a time.

Written for clarity, not speed: it is the oracle every fast backend is tested against.  All P
probes of a user step together (each probe's loss depends on its own row only).
"""
from __future__ import annotations

import torch

from ..contract import adam_step, permutation
from .base import Backend, HeadTensors, ProbeState, tower_forward

ADAM_BETA1, ADAM_BETA2, ADAM_EPS = 0.9, 0.999, 1e-8


def predict(head: HeadTensors, emb: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """Predictions ``[P, n]`` of embeddings ``emb [P, d]`` for items ``[n]``."""
    features = tower_forward(head, emb)  # [P, h]
    dot = (features[:, None, :] * head.item_vectors[items]).sum(-1)  # [P, n]
    return dot + head.item_bias[items] + head.global_bias


class ReferenceBackend(Backend):
    name = "reference"

    def train_epochs(self, head, data, state, lrs, regs, *, epoch_start, n_epochs, batch_size, optimizer, seed):
        indptr = data.indptr.tolist()
        keys = data.keys.tolist()
        for epoch in range(epoch_start, epoch_start + n_epochs):
            for user in range(data.n_users):
                start, n = indptr[user], indptr[user + 1] - indptr[user]
                order = start + torch.from_numpy(permutation(seed, epoch, keys[user], n)).to(data.items.device)
                for chunk, first in enumerate(range(0, n, batch_size)):
                    rows = order[first:first + batch_size]
                    step = adam_step(epoch, n, batch_size, chunk)
                    self._step(head, data, state, user, rows, lrs, regs, optimizer, step)

    def _step(self, head, data, state: ProbeState, user, rows, lrs, regs, optimizer, step):
        e = state.emb[user].clone().requires_grad_(True)  # [P, d]
        items = data.items[rows].long()
        pred = predict(head, e, items)  # [P, |C|]
        error = data.weights[rows] * (pred - data.ratings[rows]) ** 2
        loss = error.mean(dim=1) + regs * (e * e).sum(dim=1)  # [P]: each probe's own loss
        (grad,) = torch.autograd.grad(loss.sum(), e)
        with torch.no_grad():
            lr = lrs[:, None]
            if optimizer == "sgd":
                state.emb[user] -= lr * grad
                return
            m, v = state.adam_m[user], state.adam_v[user]
            m.mul_(ADAM_BETA1).add_((1 - ADAM_BETA1) * grad)
            v.mul_(ADAM_BETA2).add_((1 - ADAM_BETA2) * grad * grad)
            m_hat = m / (1 - ADAM_BETA1**step)
            v_hat = v / (1 - ADAM_BETA2**step)
            state.emb[user] -= lr * m_hat / (v_hat.sqrt() + ADAM_EPS)

    def validation_loss(self, head, data, emb):
        total = torch.zeros(emb.shape[1], dtype=torch.float64, device=emb.device)
        indptr = data.indptr.tolist()
        with torch.no_grad():
            for user in range(data.n_users):
                rows = slice(indptr[user], indptr[user + 1])
                if indptr[user + 1] == indptr[user]:
                    continue
                pred = predict(head, emb[user], data.items[rows].long())
                total += (data.weights[rows] * (pred - data.ratings[rows]) ** 2).sum(dim=1).double()
        return total
