"""The ``reference`` backend: plain PyTorch autograd, one user and one step at a time.

Written for clarity, not speed: it is the oracle every fast backend is tested against, and it
trains any head that implements ``retrain.heads.HeadLike`` (not only the dense ``Head``).  All P
probes of a user step together: they are the rows of ``head.scores``, and each probe's loss
depends on its own row only.
"""
from __future__ import annotations

import torch

from ..contract import Adam, adam_step, permutation
from ..errors import InputError
from ..heads import check_scores
from .base import Backend, Problem, csr_tensors, limbs_of_partials


class ReferenceProblem(Problem):
    def __init__(self, backend, head, train, val, spec, init):
        super().__init__(backend, head, train, val, spec, init)
        self.head = head.to(self.device) if hasattr(head, "to") else head
        self.train_data = csr_tensors(train, self.device)
        self.val_data = csr_tensors(val, self.device) if val is not None else None

    def _train(self, epoch_start, n_epochs, fresh):
        emb, moments = self.emb, self.moments
        if fresh:
            emb.copy_(self.init.unsqueeze(1).expand_as(emb))
            for moment in moments:
                moment.zero_()
        data, batch_size, seed = self.train_data, self.spec.batch_size, self.spec.seed
        indptr, keys = data.indptr.tolist(), data.keys.tolist()
        for epoch in range(epoch_start, epoch_start + n_epochs):
            for user in range(data.n_users):
                start, n = indptr[user], indptr[user + 1] - indptr[user]
                order = start + torch.from_numpy(permutation(seed, epoch, keys[user], n)).to(self.device)
                for chunk, first in enumerate(range(0, n, batch_size)):
                    self._step(user, order[first:first + batch_size], adam_step(epoch, n, batch_size, chunk))
        finite = torch.isfinite(emb).all(dim=2).all(dim=0)
        for moment in moments:
            finite &= torch.isfinite(moment).all(dim=2).all(dim=0)
        return finite.cpu().numpy()

    def _step(self, user: int, rows: torch.Tensor, step: int) -> None:
        """One minibatch of one user for all P probes: ``L_C`` (docs/semantics.md) and its update."""
        data = self.train_data
        e = self.emb[user].clone().requires_grad_(True)  # [P, d]
        pred = check_scores(self.head.scores(e, data.items[rows].long()), len(e), len(rows))  # [P, |C|]
        if not pred.requires_grad:  # the step would follow the regulariser alone
            raise InputError("head.scores must be differentiable in emb (its output has no gradient)")
        error = data.weights[rows] * (pred - data.ratings[rows]) ** 2
        reg = self.regs + self.user_damping[user]  # [P] float32: reg_u = fl32(reg + damping / n)
        loss = error.mean(dim=1) + reg * (e * e).sum(dim=1)  # [P]: each probe's own loss
        (grad,) = torch.autograd.grad(loss.sum(), e)
        with torch.no_grad():
            lr = self.lrs[:, None]
            opt = self.spec.optimizer
            if not isinstance(opt, Adam):  # SGD
                self.emb[user] -= lr * grad
                return
            m, v = self.moments[0][user], self.moments[1][user]
            m.mul_(opt.beta1).add_((1 - opt.beta1) * grad)
            v.mul_(opt.beta2).add_((1 - opt.beta2) * grad * grad)
            m_hat = m / (1 - opt.beta1**step)
            v_hat = v / (1 - opt.beta2**step)
            self.emb[user] -= lr * m_hat / (v_hat.sqrt() + opt.eps)

    def _validate(self, emb):
        data = self.val_data
        partial = torch.zeros((self.n_users, emb.shape[1]), dtype=torch.float64, device=self.device)
        indptr = data.indptr.tolist()
        with torch.no_grad():
            for user in range(data.n_users):
                rows = slice(indptr[user], indptr[user + 1])
                if indptr[user + 1] == indptr[user]:
                    continue
                items = data.items[rows].long()
                pred = check_scores(self.head.scores(emb[user], items), emb.shape[1], len(items))  # [P, n]
                partial[user] = (data.weights[rows] * (pred - data.ratings[rows]) ** 2).double().sum(dim=1)
        return limbs_of_partials(partial)


class ReferenceBackend(Backend):
    name = "reference"

    def prepare(self, head, train, val, spec, *, init):
        return ReferenceProblem(self, head, train, val, spec, init)

