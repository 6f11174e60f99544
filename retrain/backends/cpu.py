"""The ``cpu`` backend: the fused C++ loop of ``retrain._C`` (``csrc/``), OpenMP over users.

For each user, all P probes train together with the user's embeddings and Adam moments held in a
local buffer for the whole call; the probes sit in SIMD lanes (AVX-512 or AVX2 with FMA when the
CPU has them, else SSE4; a portable C++ kernel elsewhere), so a probe's result does not depend on
the other probes or on the thread count.  With few probes, several users (of any rating counts)
share a register (users in lanes), with the same bits.
The prepared problem keeps its state probes last, ``[U, d, P]`` in memory (the kernel's lane order:
a call moves each user's state with row copies, no transposes); ``emb``, ``moments`` and
``embeddings()`` are ``[U, P, d]`` views of it, as for every backend.
Tensors are passed zero-copy (``tensor.numpy()``); the prepared problem keeps the numpy views of
everything fixed, so a call converts nothing.
"""
from __future__ import annotations

import numpy as np
import torch

from ..contract import Adam
from ..errors import C_INT_MAX, check_bool, check_int
from .base import ACTIVATION_CODES, Backend, Problem, _StateBuffer, allocate, csr_tensors, head_tensors

try:
    from .. import _C
    HAS_CPU_EXTENSION = True
    IMPORT_ERROR = None
except ImportError as exc:  # not built: the registry reports why
    _C = None
    HAS_CPU_EXTENSION = False
    IMPORT_ERROR = str(exc)


def _csr_arrays(data) -> tuple:
    return tuple(t.numpy() for t in (data.indptr, data.items, data.ratings, data.weights))


class _ProbesLastBuffer(_StateBuffer):
    """A state buffer stored ``[U, d, P]`` (``storage``, the kernel's lane order) whose ``tensor``
    is the ``[U, P, d]`` view of it."""

    PROBE_AXIS = 2

    def resize(self, n_probes: int) -> None:
        grows = self.flat.numel() < self.n_users * n_probes * self.d
        super().resize(n_probes)
        if grows:  # fresh, untouched memory: huge pages spare the page walks of each user's random place
            _C.advise_huge_pages(self.flat.numpy())

    def keep(self, slots: torch.Tensor) -> None:
        # One pass in C++: torch's index_select along the last axis, copied out and back, took
        # 0.04-0.6 ms a buffer at the tuner's small problems (5-10 % of tune's wall on two cores).
        _C.keep_probes(self.storage.numpy(), slots.numpy(), num_threads=torch.get_num_threads())
        self._set(len(slots))

    def _set(self, n_probes: int) -> None:
        self.storage = self.flat[:self.n_users * self.d * n_probes].view(self.n_users, self.d, n_probes)
        self.tensor = self.storage.transpose(1, 2)


class CpuProblem(Problem):
    def __init__(self, backend, head, train, val, spec, init):
        super().__init__(backend, head, train, val, spec, init)
        self._emb = _ProbesLastBuffer(self.n_users, self.d, self.device)
        self._moments = [_ProbesLastBuffer(self.n_users, self.d, self.device) for _ in self._moments]
        dense = head_tensors(head, "cpu", backend.name)
        self._head = (dense.item_vectors.numpy(), dense.item_bias.numpy(), dense.global_bias,
                      [w.numpy() for w, _, _ in dense.tower], [c.numpy() for _, c, _ in dense.tower],
                      [ACTIVATION_CODES[act] for _, _, act in dense.tower])
        train_t = csr_tensors(train, "cpu")
        self._train_csr = _csr_arrays(train_t)
        self._keys = train_t.keys.numpy()
        self._val_csr = _csr_arrays(csr_tensors(val, "cpu")) if val is not None else None
        self._val_nnz = val.nnz if val is not None else 0
        self._order = np.ascontiguousarray(self.order)
        self._init_np = self.init.numpy()
        self._damping = self.user_damping.numpy()
        self._snapshot_flat = torch.empty(0, dtype=torch.float32)
        opt = spec.optimizer
        self._optimizer = dict(optimizer=opt.name, beta1=opt.beta1, beta2=opt.beta2, eps=opt.eps) \
            if isinstance(opt, Adam) else dict(optimizer=opt.name, beta1=0.0, beta2=0.0, eps=1.0)

    def _call(self, ends: np.ndarray, *, validate: bool, snapshots=None):
        """One ``_C.train_epochs`` call of ``ends[-1]`` epochs with checkpoints after ``ends``."""
        empty = np.zeros((0, 0, 0), dtype=np.float32)
        m, v = (self._moments[0].storage.numpy(), self._moments[1].storage.numpy()) if self._moments else (empty, empty)
        # A fresh batch, or a call that validates or snapshots, visits every user; otherwise only
        # the users with training ratings move.
        every = self.fresh or validate or snapshots is not None
        order = self._order if every else self._order[:self.n_with_ratings]
        ratings = self.n_train * int(ends[-1]) + (self._val_nnz * len(ends) if validate else 0)
        return _C.train_epochs(self._emb.storage.numpy(), m, v, self.lrs.numpy(), self.regs.numpy(), *self._train_csr,
                               self._keys, order, *self._head, epoch_start=self.epoch, n_epochs=int(ends[-1]),
                               batch_size=self.spec.batch_size, seed=self.spec.seed,
                               init=self._init_np if self.fresh else None, checkpoint_ends=ends,
                               val=self._val_csr if validate else None,
                               snapshots=None if snapshots is None else snapshots.numpy(),
                               num_threads=self.backend.threads(ratings, self.n_probes, len(order)), simd=self.backend.simd,
                               users_in_lanes=self.backend.users_in_lanes, user_damping=self._damping,
                               probes_last=True, **self._optimizer)

    def _train(self, epoch_start, n_epochs, fresh):
        finite, _ = self._call(np.array([n_epochs], dtype=np.int64), validate=False)
        return finite[0].astype(bool)

    def checkpoints(self, epochs):
        """All the checkpoints in one pass: each user trains through every epoch of the call and is
        checked and validated at each checkpoint while its state is in this thread's cache."""
        epochs = self.check_epochs("epochs", epochs)  # int(2.5) trained 2 epochs
        if self.n_probes == 0 or not epochs or min(epochs) < 1:
            return super().checkpoints(epochs)
        ends = np.cumsum(epochs).astype(np.int64)
        K, snapshots = len(epochs), None
        if self._best is not None and K > 1:
            size = (K - 1) * self.n_users * self.n_probes * self.d
            if self._snapshot_flat.numel() < size:
                self._snapshot_flat = torch.empty(0, dtype=torch.float32)  # free the old one first
                self._snapshot_flat = allocate((K - 1, self.n_users, self.n_probes, self.d), "cpu",
                                               "the checkpoints' snapshots").view(-1)
            snapshots = self._snapshot_flat[:size].view(K - 1, self.n_users, self.n_probes, self.d)
        finite, limbs = self._call(ends, validate=self.has_val, snapshots=snapshots)
        return self._fused_checkpoints(int(ends[-1]), finite, limbs, snapshots)

    def _validate(self, emb):
        # emb [U, P, d]: the state's view (probes last in memory) or another tensor.
        probes_last = not emb.is_contiguous()
        state = emb.transpose(1, 2).contiguous() if probes_last else emb
        limbs, finite = _C.validation_loss(state.numpy(), *self._val_csr, *self._head,
                                           num_threads=self.backend.threads(self._val_nnz, emb.shape[1], self.n_users),
                                           simd=self.backend.simd, probes_last=probes_last)
        return limbs, finite.astype(bool)


class CpuBackend(Backend):
    """Fused C++ backend.

    Args:
        num_threads: OpenMP threads of every call.  Default: chosen per call from its work, one
            thread per ``WORK_PER_THREAD`` rating·lane visits (a rating's visit costs what a
            register of ``MIN_LANES`` probes costs, however few probes there are; a call with a few
            thousand ratings runs on one thread: starting threads would cost more than they save),
            at most ``torch.get_num_threads()``.  Results never depend on it.
        simd: ``"auto"`` (per call, the fastest the CPU supports for its P), ``"avx512"``, ``"avx2"``, ``"sse4"`` or
            ``"portable"`` (``retrain._C.simd_paths()`` lists those this CPU runs).  AVX-512 and
            AVX2 fuse multiply-adds and give the same bits; SSE4 and portable give the same bits;
            the two pairs differ by rounding only.
        users_in_lanes: when the probes fill at most half a register (P = 1 in the final retrain
            and fold-in), several users share it, one per group of lanes (each with its own
            minibatch sizes and step counts): the same bits as one user per register (False),
            faster.
    """

    name = "cpu"
    WORK_PER_THREAD = 1 << 16  # rating·lane visits: about 0.1-0.5 ms of one core
    # With fewer probes than an AVX2 register's 8 lanes a rating costs about as much as with 8
    # (users fill the lanes, the item row is transposed into them all the same): measured on the
    # tuning benchmark's ml-latest-small problem, one thread took 20 ms at P = 1 and 33 ms at
    # P = 8, so counting P = 1 as one probe kept its calls on one thread at twice the wall time.
    MIN_LANES = 8

    def __init__(self, num_threads: int | None = None, simd: str = "auto", users_in_lanes: bool = True):
        super().__init__("cpu")
        # OpenMP takes a C int: a larger count was pybind11's TypeError at the first call
        self.num_threads = None if num_threads is None else check_int("num_threads", num_threads, 1, C_INT_MAX)
        self.simd = simd
        self.users_in_lanes = check_bool("users_in_lanes", users_in_lanes)  # bool("no") is True

    def threads(self, ratings: int, n_probes: int, n_users: int) -> int:
        """Threads for a call that visits ``ratings`` ratings of ``n_users`` users with ``n_probes`` probes each."""
        if self.num_threads is not None:
            return self.num_threads
        work = ratings * max(n_probes, self.MIN_LANES)
        wanted = max(1, min(work // self.WORK_PER_THREAD, n_users))
        return int(min(torch.get_num_threads(), wanted))

    def prepare(self, head, train, val, spec, *, init):
        return CpuProblem(self, head, train, val, spec, init)
