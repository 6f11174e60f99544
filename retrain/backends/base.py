"""The backend interface: a backend *prepares* a problem, and the prepared problem trains probes.

``Backend.prepare(head, train, val, spec, init=...)`` returns a ``Problem`` that owns, on the
backend's device, everything fixed across probe batches (the head's tensors, the CSR ratings, user
keys, the heaviest-first user order, the initial embeddings, the validation weight) and the probe
state.  The trainer's early-stopping loop only talks to it:

    problem.start(lrs, regs, keep_best=True)   # a probe batch; every probe at the init
    cp = problem.validate()                    # epoch 0: losses and finite flags of the live probes
    cps = problem.checkpoints([2, 2, 1])       # train 2 epochs, validate, 2 more, validate, 1 more, ...
    problem.keep_best(slots, index=1)          # remember those probes' embeddings at checkpoint 1
    problem.drop(keep)                         # go on with these probes only
    problem.best_embeddings()                  # [U, P, d] at each probe's best checkpoint

Several checkpoints in one call let a backend validate each user while its state is in cache
(the ``cpu`` backend does), instead of streaming the whole state in and out once per checkpoint.
Backends implement two methods on their ``Problem`` subclass, ``_train`` and ``_validate``, and may
override ``checkpoints``; the state bookkeeping here is shared.  Layouts are user-major, so one user's probes are contiguous:
embeddings and optimizer moments are float32 ``[U, P, d]`` (a backend may store them in another order behind
``[U, P, d]`` views: the ``cpu`` backend keeps them probes last, ``[U, d, P]``).  The finiteness flag of a probe comes out
of the training call's epilogue and the validation pass, never from an extra sweep over the state.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch

from ..contract import (FIXED_POINT_LIMBS, FLOAT32_MAX, MAX_STEPS, StepSpec, damping_terms, exact_sum,
                        fixed_point_limbs, fixed_point_value, user_key)
from ..errors import C_INT_MAX, InputError, check_bool, check_indices, check_int
from ..heads import Head

ACTIVATION_CODES = {"identity": 0, "relu": 1, "tanh": 2}
_COMPACT_CHUNK = 1 << 22  # floats moved at a time when dropping probes in place


@dataclass(frozen=True)
class HeadTensors:
    """A dense ``Head`` as tensors on one device: ``tower`` is a list of ``(W [out,in], c [out], act)``."""

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


@dataclass(frozen=True)
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

    @property
    def nnz(self) -> int:
        return self.items.shape[0]


@dataclass(frozen=True)
class Checkpoint:
    """One validation of the live probes: ``losses`` float64 ``[P]`` (``sum w (pred - r)^2 / sum w``,
    0 without validation ratings; NaN where ``finite`` is False) and ``finite`` bool ``[P]`` (False
    once a probe's state or loss became NaN/inf)."""

    losses: np.ndarray
    finite: np.ndarray

    def __post_init__(self):
        # The backends sum only the users whose sums are finite: that partial sum (0.0 when no
        # user's is) read as the probe's loss, lower than any real one, in every history and meter.
        object.__setattr__(self, "losses", np.where(self.finite, self.losses, np.nan))  # frozen


def head_tensors(head: Head, device, backend: str) -> HeadTensors:
    """A dense ``Head`` as ``HeadTensors`` on ``device``; InputError for another kind of head."""
    if not isinstance(head, Head):
        raise InputError(f"backend {backend!r} trains retrain.Head (a dense tower and an item dot product); "
                         f"got a {type(head).__name__}: train it with backend='reference'")
    tower = [(layer.weight.to(device), layer.bias.to(device), layer.activation) for layer in head.tower]
    return HeadTensors(tower, head.item_vectors.to(device), head.item_bias.to(device), float(head.global_bias))


def csr_tensors(ratings, device) -> CSRTensors:
    """``Ratings`` as ``CSRTensors`` on ``device``; keys come from the original user ids."""
    if ratings.n_items > C_INT_MAX:
        raise InputError(f"at most {C_INT_MAX} items are supported, got {ratings.n_items}")
    return CSRTensors(_owned(ratings.indptr, np.int64, device), _owned(ratings.items, np.int32, device),
                      _owned(ratings.ratings, np.float32, device), _owned(ratings.weights, np.float32, device),
                      _owned(user_key(ratings.user_ids), np.int64, device))


def _owned(array: np.ndarray, dtype, device) -> torch.Tensor:
    """``array`` as a contiguous ``dtype`` tensor on ``device`` in memory of its own (``np.array``
    copies): a prepared problem that held the caller's memory read the ratings as they were at each
    call (changed in place between two batches, or from another thread while the GIL was released,
    they changed the results)."""
    # Converted by numpy, then moved: torch's multi-threaded .to(dtype) of these small arrays costs
    # a fold-in's prepare 12-15 ms on a loaded 2-core machine (0.5 ms one-threaded); same values.
    return torch.from_numpy(np.array(array, dtype=dtype, order="C")).to(device)


def validation_weight(val) -> float:
    """The total weight of validation ratings ``val`` (0 for None), the exact sum the losses are
    divided by (``retrain.contract.exact_sum``: each weight truncated to a multiple of 2^-64)."""
    if val is None:
        return 0.0
    return float(exact_sum(torch.from_numpy(val.weights.astype(np.float64)))[0])


def _as_vector(values, name: str, allow_empty: bool) -> np.ndarray:
    try:
        v = np.atleast_1d(np.asarray(values, dtype=np.float64))
    except (TypeError, ValueError):  # "a", None, ragged lists
        raise InputError(f"{name} must be a non-empty 1-d sequence of numbers, got {values!r}") from None
    if v.ndim != 1 or (v.size == 0 and not allow_empty):
        raise InputError(f"{name} must be a non-empty 1-d sequence, got shape {v.shape}")
    if not np.all(np.isfinite(v)):
        raise InputError(f"{name} must be finite, got {v.tolist()}")
    return v


def check_step_sizes(lrs: np.ndarray, regs: np.ndarray) -> None:
    """InputError unless every learning rate is > 0 and every regularisation >= 0 in float32, the
    step's precision: above float32's range the step is inf (it read as a divergence), and a
    learning rate below ~1.4e-45 is 0 there (the probe never moved and its init won)."""
    if (lrs <= 0).any() or (regs < 0).any():
        raise InputError("learning rates must be > 0 and regularisations >= 0")
    if max(lrs.max(), regs.max()) > FLOAT32_MAX:
        raise InputError(f"learning rates and regularisations must be at most {FLOAT32_MAX:g} (float32's range), got "
                         f"{max(lrs.max(), regs.max()):g}")
    if (lrs.astype(np.float32) == 0).any():
        raise InputError(f"learning rates must be at least float32's smallest number (~1.4e-45; a smaller one trains "
                         f"with 0), got {lrs.min():g}")


def probe_steps(lrs, regs, *, allow_empty: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``(lrs, regs)`` as float64 vectors ``[P]``, or InputError naming the problem: not 1-d
    sequences of finite numbers (empty ones only with ``allow_empty``), of different lengths, or
    step sizes that ``check_step_sizes`` refuses."""
    lrs, regs = _as_vector(lrs, "lrs", allow_empty), _as_vector(regs, "regs", allow_empty)
    if lrs.shape != regs.shape:
        raise InputError(f"lrs and regs must have the same length, got {lrs.size} and {regs.size}")
    if lrs.size:
        check_step_sizes(lrs, regs)
    return lrs, regs


def steps_per_epoch(counts: np.ndarray, batch_size: int) -> int:
    """The Adam steps one epoch takes the heaviest of the users with ``counts`` ratings (at least 1)."""
    return max(1, -(-int(np.max(counts, initial=0)) // batch_size))


def heaviest_first(counts: np.ndarray) -> np.ndarray:
    """User indices by decreasing rating count, ties in index order (int64): the longest users
    start first, so the threads or programs of a launch finish together."""
    return np.argsort(-np.asarray(counts, dtype=np.int64), kind="stable").astype(np.int64)


class _StateBuffer:
    """A ``[U, P, d]`` float32 tensor that is a view of a reusable flat buffer.

    Starting a batch reuses the buffer when it is large enough, and dropping probes compacts the
    live ones in place, so the state never exists twice in memory.  ``storage`` is the buffer in
    memory order, its probes along ``PROBE_AXIS``; ``tensor`` is its ``[U, P, d]`` view (the same
    tensor here; a subclass may store the probes elsewhere).
    """

    PROBE_AXIS = 1

    def __init__(self, n_users: int, d: int, device):
        self.n_users, self.d, self.device = n_users, d, device
        self.flat = torch.empty(0, dtype=torch.float32, device=device)
        self._set(0)

    def resize(self, n_probes: int) -> None:
        size = self.n_users * n_probes * self.d
        if self.flat.numel() < size:
            self.flat = torch.empty(0, dtype=torch.float32, device=self.device)  # free the old one first
            self.flat = allocate((self.n_users, n_probes, self.d), self.device, "the probe state").view(-1)
        self._set(n_probes)

    def keep(self, slots: torch.Tensor) -> None:
        """Keep probes ``slots`` (increasing) in place: user blocks move to lower addresses in order,
        each read before anything is written over it."""
        old = self.storage
        self._set(len(slots))
        chunk = max(1, _COMPACT_CHUNK // max(1, old.shape[self.PROBE_AXIS] * self.d))
        for first in range(0, self.n_users, chunk):
            rows = slice(first, first + chunk)
            self.storage[rows] = old[rows].index_select(self.PROBE_AXIS, slots)  # copies before the write

    def _set(self, n_probes: int) -> None:
        self.storage = self.flat[:self.n_users * n_probes * self.d].view(self.n_users, n_probes, self.d)
        self.tensor = self.storage


class Problem:
    """A training problem prepared on a backend's device; see the module docstring.

    Subclasses implement ``_train(epoch_start, n_epochs, fresh) -> finite bool [P]`` (advance the
    live probes in ``self.emb`` / ``self.moments`` with ``self.lrs`` / ``self.regs``, user ``u``'s
    L2 being ``regs + user_damping[u]`` in float32; when ``fresh``,
    every probe starts from ``self.init`` and the moments from zero, and the state is only
    written) and ``_validate(emb) -> (limbs int64 [P, 6], finite bool [P])`` (per-probe exact sums of
    ``w (pred - r)^2`` over the validation ratings, ``retrain.contract.fixed_point_limbs``).
    """

    def __init__(self, backend: "Backend", head, train, val, spec: StepSpec, init: torch.Tensor):
        self.backend, self.head, self.spec = backend, head, spec
        self.device = backend.device
        self.n_users, self.d = train.n_users, head.d
        self.n_train = train.nnz
        if init.shape != (self.n_users, self.d):
            raise InputError(f"init must be [n_users={self.n_users}, d={self.d}], got {tuple(init.shape)}")
        # A copy: the caller's init tensor, changed later, would train the next batch from another init
        # while epoch 0 kept the validation of the first (computed once per problem).
        self.init = init.to(device=self.device, dtype=torch.float32, copy=True).contiguous()
        counts = train.counts
        self.order = heaviest_first(counts)  # every user: the ones without ratings come last
        self.n_with_ratings = int((counts > 0).sum())
        # The heaviest user's Adam steps per epoch (retrain.distributed sets every shard's to the
        # global one, so that all ranks refuse the same calls): ``check_epochs`` bounds a batch by it.
        self.steps_per_epoch = steps_per_epoch(counts, spec.batch_size)
        # float32 [U]: each user's damping / n, added to every probe's reg (docs/semantics.md).
        self.user_damping = torch.from_numpy(damping_terms(spec.damping, counts)).to(self.device)
        self.val_weight = validation_weight(val)
        self.has_val = self.val_weight > 0  # validation ratings that all weigh 0 validate nothing
        self._emb = _StateBuffer(self.n_users, self.d, self.device)
        self._moments = [_StateBuffer(self.n_users, self.d, self.device) for _ in range(spec.optimizer.n_moments)]
        self._best = None
        self._snapshots = []  # embeddings [U, P, d] at the checkpoints of the last call but its last
        self._init_losses = None  # the init's validation, the same for every probe and batch
        # Combines a call's finite flags and validation limbs with those of the problem's other
        # shards (retrain.distributed sets it); None: this process holds every user.
        self.reduce_hook = None
        self.live = np.zeros(0, dtype=np.int64)
        self.epoch = 0
        self.fresh = True

    # ----------------------------------------------------------------- views of the state
    @property
    def n_probes(self) -> int:
        """Live probes (state slots)."""
        return len(self.live)

    @property
    def emb(self) -> torch.Tensor:
        """Embeddings ``[U, P, d]`` of the live probes (meaningless while ``fresh``)."""
        return self._emb.tensor

    @property
    def moments(self) -> list[torch.Tensor]:
        """The optimizer's state, each ``[U, P, d]`` (Adam: first and second moment)."""
        return [m.tensor for m in self._moments]

    def embeddings(self) -> torch.Tensor:
        """Current embeddings ``[U, P, d]`` of the live probes, on the device."""
        if self.fresh:
            return self.init.unsqueeze(1).expand(-1, self.n_probes, -1)
        return self.emb

    def state_bytes(self, n_probes: int, keep_best: bool) -> int:
        """Device bytes of the state of ``n_probes`` probes (embeddings, moments, best copy)."""
        copies = 1 + self.spec.optimizer.n_moments + (1 if keep_best else 0)
        return self.n_users * n_probes * self.d * 4 * copies

    def snapshot_bytes(self) -> int:
        """Device bytes one more checkpoint per call costs with ``keep_best`` (a copy of the live
        probes' embeddings)."""
        return self.n_users * self.n_probes * self.d * 4

    # ----------------------------------------------------------------- a probe batch
    def start(self, lrs, regs, *, keep_best: bool = False) -> None:
        """Begin a batch of ``P = len(lrs)`` probes, all at the init (epoch 0).

        ``lrs``, ``regs``: length-P float sequences.  ``keep_best``: keep each probe's embeddings
        at its best checkpoint (``keep_best``, ``best_embeddings``).
        """
        keep_best = check_bool("keep_best", keep_best)  # "no" kept a copy of every probe
        # The reference backend broadcast regs of length 1 over every probe (the others refused it
        # at the first call), and a negative lr or reg trained: the trainer's checks, here too.
        lrs, regs = probe_steps(lrs, regs, allow_empty=True)
        lrs = torch.as_tensor(lrs.astype(np.float32), device=self.device)
        regs = torch.as_tensor(regs.astype(np.float32), device=self.device)
        P = len(lrs)
        self.live, self._best, self._snapshots = np.zeros(0, dtype=np.int64), None, []  # no batch, should it not fit
        for buffer in [self._emb, *self._moments]:
            buffer.resize(P)
        best = allocate((self.n_users, P, self.d), self.device, "the best checkpoints' copy") if keep_best else None
        self.lrs, self.regs = lrs, regs
        self.live = np.arange(P, dtype=np.int64)
        self._state_finite = np.ones(P, dtype=bool)
        self._best = best
        self._snapshots = []
        self.epoch = 0
        self.fresh = True

    def check_epochs(self, name: str, epochs, start: int | None = None) -> list[int]:
        """``epochs`` (a sequence of epoch counts, each an integer >= 0) as ints, or InputError
        naming ``name`` when one is not, or when training them from epoch ``start`` (None: the
        batch's current epoch) would take the heaviest user past ``MAX_STEPS`` Adam steps: every
        backend counts a user's steps in int64 (the cpu kernel refused more with a plain
        ValueError, the reference backend trained for ever)."""
        if isinstance(epochs, (str, bytes)) or not isinstance(epochs, Iterable):  # checkpoints(4): a TypeError
            raise InputError(f"{name} must be a sequence of epoch counts, got {epochs!r}")
        epochs = [check_int(name, n, 0, None) for n in epochs]  # the bound below names the heaviest user
        start = self.epoch if start is None else start
        left = MAX_STEPS // self.steps_per_epoch - start
        if sum(epochs) > left:
            raise InputError(f"{name}: {sum(epochs)} epochs from epoch {start} would take the heaviest user "
                             f"({self.steps_per_epoch} Adam steps per epoch) past {MAX_STEPS} steps: at most {left}")
        return epochs

    def train(self, n_epochs: int) -> None:
        """Advance the live probes by ``n_epochs`` epochs (an integer >= 0) of the contract's schedule."""
        n_epochs, = self.check_epochs("n_epochs", [n_epochs])
        if n_epochs == 0 or self.n_probes == 0:
            return
        finite, _ = self._reduce(self._train(self.epoch, n_epochs, self.fresh), None)
        self._state_finite &= np.asarray(finite, dtype=bool)
        self.epoch += n_epochs
        self.fresh = False

    def validate(self) -> Checkpoint:
        """Validation losses and finite flags of the live probes at the current epoch."""
        if self.fresh:
            losses, finite = self._init_checkpoint()
            return Checkpoint(np.full(self.n_probes, losses), np.full(self.n_probes, finite))
        losses, finite = self._mean_losses(self.emb)
        return Checkpoint(losses, finite & self._state_finite)

    def checkpoint(self, n_epochs: int) -> Checkpoint:
        """``train(n_epochs)`` then ``validate()``: ``checkpoints([n_epochs])[0]``."""
        return self.checkpoints([n_epochs])[0]

    def checkpoints(self, epochs) -> list[Checkpoint]:
        """Train ``epochs[0]`` epochs and validate, then ``epochs[1]`` more and validate, ...: one
        ``Checkpoint`` per entry (each an integer ``>= 0``; 0 validates again, ``check_epochs``).
        With ``keep_best``, the embeddings at each of these checkpoints stay available to
        ``keep_best(slots, index)`` until the next call.

        Here, one pass over the state per entry; a backend may do them all in one pass.
        """
        epochs = self.check_epochs("epochs", epochs)
        out, self._snapshots = [], []
        for j, n_epochs in enumerate(epochs):
            self.train(n_epochs)
            out.append(self.validate())
            if self._best is not None and j < len(epochs) - 1:
                self._snapshots.append(self.emb.clone())
        return out

    def _fused_checkpoints(self, n_epochs: int, finite, limbs, snapshots) -> list[Checkpoint]:
        """The bookkeeping after a backend ran ``n_epochs`` epochs and several checkpoints in one
        pass: ``finite`` bool ``[K, P]``, ``limbs`` int64 ``[K, P, 6]`` (None without validation),
        ``snapshots`` ``[K - 1, U, P, d]`` (None without ``keep_best``)."""
        finite, limbs = self._reduce(np.asarray(finite, dtype=bool), limbs)
        self._state_finite &= finite[-1]
        self.epoch += n_epochs
        self.fresh = False
        self._snapshots = list(snapshots) if snapshots is not None else []
        if not self.has_val:
            return [Checkpoint(np.zeros(self.n_probes), flags) for flags in finite]
        return [Checkpoint(fixed_point_value(sums) / self.val_weight, flags) for sums, flags in zip(limbs, finite)]

    def keep_best(self, slots, index: int | None = None) -> None:
        """Record the embeddings of the live probes in ``slots`` at checkpoint ``index`` (0-based) of
        the last ``checkpoints`` call (None: the current state, its last checkpoint) as their best.

        ``slots``: distinct slot indices in ``[0, n_probes)``, any order; negative ones are refused
        (not counted from the end: a wrapped slot would record another probe).  ``index``: None or
        an integer in ``[0, K - 1]`` for the last call's K checkpoints (after a ``drop``, 0: the
        current state), checked when the batch keeps its best (else nothing is recorded).
        InputError naming the argument and the bad value otherwise.
        """
        slots = check_indices("slots", slots, self.n_probes, "probe slot")
        ordered = np.sort(slots)
        repeated = np.flatnonzero(np.diff(ordered) == 0)
        if len(repeated):  # index_copy_ would record one of the copies, unspecified which
            raise InputError(f"slots must be distinct probe slots, got slot {ordered[repeated[0]]} twice")
        if self._best is None:
            return
        if index is not None:
            index = check_int("index", index, 0, len(self._snapshots))
        if len(slots) == 0:
            return
        probes = torch.as_tensor(self.live[slots], device=self.device)
        slots = torch.as_tensor(slots, device=self.device)
        last = index is None or index == len(self._snapshots)
        source = self.embeddings() if last else self._snapshots[index]
        self._best.index_copy_(1, probes, source.index_select(1, slots))

    def drop(self, keep) -> None:
        """Go on with the live probes in ``keep`` only: increasing slot indices in ``[0, n_probes)``
        (the state is compacted in place, in slot order); negative ones are refused.  InputError
        naming the bad value otherwise."""
        keep = check_indices("keep", keep, self.n_probes, "probe slot")
        decrease = np.flatnonzero(np.diff(keep) <= 0)
        if len(decrease):  # the compaction moves each kept probe to a lower slot, in order
            at = int(decrease[0]) + 1
            raise InputError(f"keep must be increasing probe slots, got {keep[at]} after {keep[at - 1]} (entry {at})")
        if len(keep) == self.n_probes:
            return
        slots = torch.as_tensor(keep, device=self.device)
        if not self.fresh:  # a fresh state is the init: nothing to move
            for buffer in [self._emb, *self._moments]:
                buffer.keep(slots)
        else:
            for buffer in [self._emb, *self._moments]:
                buffer.resize(len(keep))
        self.lrs, self.regs = self.lrs[slots], self.regs[slots]
        self.live = self.live[keep]
        self._state_finite = self._state_finite[keep]
        self._snapshots = []

    def best_embeddings(self) -> torch.Tensor:
        """``[U, P, d]`` (CPU) of every probe of the batch at its best checkpoint (``keep_best``)."""
        if self._best is None:
            raise RuntimeError("start(..., keep_best=True) was not called for this batch")
        return self._best.cpu()

    # ----------------------------------------------------------------- validation
    def _init_checkpoint(self) -> tuple[float, bool]:
        if self._init_losses is None:
            losses, finite = self._mean_losses(self.init.unsqueeze(1))
            self._init_losses = (float(losses[0]), bool(finite[0]))
        return self._init_losses

    def _mean_losses(self, emb: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        P = emb.shape[1]
        if not self.has_val:
            return np.zeros(P), np.ones(P, dtype=bool)
        limbs, finite = self._validate(emb)
        finite, limbs = self._reduce(finite, limbs)
        return fixed_point_value(limbs) / self.val_weight, np.asarray(finite, dtype=bool)

    def _reduce(self, finite, limbs):
        """``(finite, limbs)`` of every shard: the flags ``[..., P]`` and-ed, the limbs
        ``[..., P, 6]`` (or None) summed; the identity in one process.  Every call that trains or
        validates goes through here exactly once, so the shards of a problem stay in step."""
        return (finite, limbs) if self.reduce_hook is None else self.reduce_hook(finite, limbs)

    # ----------------------------------------------------------------- what a backend implements
    def _train(self, epoch_start: int, n_epochs: int, fresh: bool) -> np.ndarray:
        raise NotImplementedError

    def _validate(self, emb: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError


class Backend:
    """A probe-training backend: ``prepare`` builds its ``Problem``; ``score`` serves.

    ``name`` identifies it; ``device`` is where its tensors live.
    """

    name = "base"

    def __init__(self, device=None):
        self.device = torch.device(device) if device is not None else torch.device("cpu")

    def prepare(self, head, train, val, spec: StepSpec, *, init: torch.Tensor) -> Problem:
        """A ``Problem`` for ``head`` (frozen), ``train`` and ``val`` (ratings of the same users, or
        ``val=None``), the step ``spec`` and the initial embeddings ``init [U, d]``.  The inputs are
        checked by the caller (``retrain.trainer.prepare``)."""
        raise NotImplementedError

    def score(self, head: Head, emb: torch.Tensor) -> torch.Tensor:
        """Scores of every item for embeddings ``emb [n, d]``: float32 ``[n, n_items]``.

        Plain PyTorch here; a backend with a fused scoring kernel overrides it.
        """
        head = head.to(self.device)
        return head.user_features(emb.to(self.device)) @ head.item_vectors.T + head.item_bias + head.global_bias

    def __repr__(self) -> str:
        return f"{type(self).__name__}(device={self.device})"


def allocate(shape: tuple, device, what: str) -> torch.Tensor:
    """``torch.empty(shape)`` float32 on ``device``; MemoryError naming ``what``, its shape and its
    bytes when the allocator refuses (torch raises a RuntimeError from inside the batch)."""
    try:
        return torch.empty(shape, dtype=torch.float32, device=device)
    except RuntimeError as exc:  # the CPU allocator's "can't allocate memory"; torch.OutOfMemoryError on a GPU
        gib = 4 * float(np.prod(shape, dtype=np.float64)) / 2**30
        raise MemoryError(f"{what}, float32 {list(shape)} ({gib:.4g} GiB), does not fit in the memory of {device}: "
                          "train fewer probes at a time (run_probes' memory_budget) or fewer users per process "
                          "(retrain.distributed shards them)") from exc


def limbs_of_partials(partial: torch.Tensor) -> tuple[torch.Tensor, np.ndarray]:
    """Exact per-probe sums of per-user partial sums ``[U, P]`` (any float dtype, any device):
    ``(limbs int64 [P, 6], finite bool [P])``; users in chunks so the limbs stay small."""
    P = partial.shape[1]
    total = torch.zeros((P, FIXED_POINT_LIMBS), dtype=torch.int64, device=partial.device)
    finite = torch.ones(P, dtype=torch.bool, device=partial.device)
    chunk = max(1, _COMPACT_CHUNK // max(1, P * FIXED_POINT_LIMBS))
    for first in range(0, partial.shape[0], chunk):
        limbs, ok = fixed_point_limbs(partial[first:first + chunk])
        total += limbs.sum(dim=0)
        finite &= ok.all(dim=0)
    return total.cpu(), finite.cpu().numpy()
