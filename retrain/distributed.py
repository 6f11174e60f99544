"""Scale-out on ``torch.distributed``: users sharded across ranks, the same result as one process.

Users are independent under the training contract, so the work shards by user.  Each rank owns a
fixed set of users (``shard_users``: deterministic, balanced by rating count), prepares only
those (the head is replicated; the probe state lives only on the owner), and at every checkpoint
the per-probe validation sums are all-reduced.  The sums are exact integer limbs
(``retrain.contract.fixed_point_limbs``), so an int64 SUM is exact and order-free: every rank
gets bitwise the losses one process computes, and takes the same early-stopping decision.

Who drives: NLopt, the journal and the early-stopping loop run on rank 0 only.  Rank 0 runs the
ordinary functions (``retrain.trainer.train_probes``, ``retrain.tuner.tune``) with
``backend=ShardedBackend(inner)`` inside ``backend.driving()``; every call it makes on its
``ShardedProblem`` (prepare, start, checkpoints, keep_best, drop, ...) is broadcast as a small
command, and the other ranks mirror it on their own shard in ``backend.follow(prepare)`` until rank
0 says stop.  The SPMD entry points here (``train_probes``, ``tune``, ``train_embeddings``) do
that for you: call them with the same arguments on every rank.

    torchrun --nproc-per-node 2 my_script.py      # my_script: init_distributed(); distributed.tune(...)

The pipeline (``retrain.retrain_user_embeddings``) and the CLI's ``run`` shard the same way when
a process group is initialised (``torchrun --nproc-per-node N -m retrain run ...``): rank 0 drives
the tuning and the final retrain, every rank refits its own users (``train_embeddings(owner=...)``:
the retrain's assignment), and the table is gathered on rank 0 (``Shard.gather``) or written where
it lies, one file per rank and an index (``save_shards``, ``retrain.shards``).

Failure: collectives carry the process group's timeout (``init_distributed(timeout=...)``,
``DEFAULT_TIMEOUT``).  An exception on rank 0 broadcasts "abort" and the others raise too (an
InputError as InputError; the group stays usable when they were waiting for a command).  A
follower that fails leaves the group, and a rank that dies breaks its connections: the others
raise ``DistributedError`` at once, at the latest when the timeout passes; the group is then
unusable.  Ranks given other inputs than rank 0 all raise InputError.
"""
from __future__ import annotations

import heapq
import logging
import os
import zlib
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

from . import shards, trainer, tuner
from .backends import get_backend
from .backends.base import Backend, Checkpoint, Problem, probe_steps, steps_per_epoch
from .bundle import item_support
from .contract import FIXED_POINT_LIMBS, fixed_point_limbs, fixed_point_value, fmix32, user_key
from .errors import InputError, check_bool

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = timedelta(minutes=5)
"""Collective timeout ``init_distributed`` sets: how long a rank waits for the others before it
raises.  It must exceed the longest stretch in which one rank works while the others wait for it
(rank 0's checks and fingerprint before a tune, a shard that trains longer than the others)."""


class DistributedError(RuntimeError):
    """Another rank failed or left, or a collective timed out; the process group is unusable."""


_DEFERRED = frozenset({"start", "keep_best", "drop", "best_embeddings", "embeddings"})
"""Calls that make no collective on a follower: rank 0 sends them with its next call that does."""


class _RaisedOnEveryRank(InputError):
    """An InputError every rank raises at the same point, after the same collectives (the group
    stays usable)."""


# --------------------------------------------------------------------------- the process group
def init_distributed(backend: str | None = None, *, timeout: timedelta = DEFAULT_TIMEOUT) -> bool:
    """Initialise the default process group from torchrun's environment (``RANK``, ``WORLD_SIZE``,
    ``MASTER_ADDR``, ``MASTER_PORT``; ``LOCAL_RANK`` picks the GPU).

    ``backend``: ``"gloo"`` (CPU ranks: the ``cpu`` backend) or ``"nccl"`` (one GPU per rank: the
    ``triton`` backend); default NCCL when CUDA is available, else gloo.  Returns False (and does
    nothing) outside torchrun or when a group already exists; True when it initialised one.
    """
    if dist.is_initialized() or not launched_by_torchrun():
        return False
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend not in ("gloo", "nccl"):
        raise InputError(f"backend must be 'gloo' or 'nccl', got {backend!r}")
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend, timeout=timeout)
    return True


def launched_by_torchrun() -> bool:
    """Whether this process is a rank that torchrun started (``RANK``, ``WORLD_SIZE`` and
    ``MASTER_ADDR`` are set)."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR"))


def _comm_device(group) -> torch.device:
    """Where the group's collectives take their tensors: the rank's GPU for NCCL, else the CPU."""
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _collective(what: str, run):
    """Run one collective; a failure (a rank left, the timeout passed) becomes DistributedError."""
    try:
        return run()
    except RuntimeError as exc:  # DistBackendError and gloo's errors are RuntimeErrors
        raise DistributedError(f"rank {dist.get_rank()}: {what} with the other ranks failed (a rank failed or "
                               f"left, or the collective timeout passed): {exc}") from exc


# --------------------------------------------------------------------------- the assignment
def shard_users(keys, counts, world_size: int) -> np.ndarray:
    """Owner rank (int64 ``[U]``) of each user: heaviest first (ties by a hash of the user key, then
    by index), each user to the least-loaded rank (ties: the lowest rank), a user's load being its
    rating count + 1.  Deterministic for the same keys, counts and world size; each rank's load is
    within the heaviest user's of the lightest rank's.

    ``keys``: ``retrain.contract.user_key`` of the user ids; ``counts``: training ratings per user.
    A Python heap: about a second per million users.
    """
    keys = np.asarray(keys, dtype=np.int64)
    counts = np.asarray(counts, dtype=np.int64)
    if world_size < 1:
        raise InputError(f"world_size must be >= 1, got {world_size}")
    order = np.lexsort((fmix32(keys.astype(np.uint32)), -counts))
    owner = np.empty(len(keys), dtype=np.int64)
    loads = [(0, rank) for rank in range(world_size)]
    for user, load in zip(order.tolist(), (counts[order] + 1).tolist()):
        total, rank = heapq.heappop(loads)
        owner[user] = rank
        heapq.heappush(loads, (total + load, rank))
    return owner


def _as_owner(owner, n_users: int, world_size: int) -> np.ndarray:
    """``owner`` as int64 ``[n_users]``, or InputError unless it gives each user a whole rank in
    ``[0, world_size)`` (a user of rank ``world_size`` was trained by none and gathered as
    uninitialised memory; 0.5 was truncated to 0)."""
    owner = np.asarray(owner)
    if owner.shape != (n_users,):
        raise InputError(f"the assignment given covers {owner.size} users, the data {n_users}")
    if owner.dtype.kind not in "iuf":
        raise InputError(f"the assignment (owner) must hold integer ranks, got {owner.dtype}")
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(owner) | (owner != np.floor(owner)) | (owner < 0) | (owner >= world_size)
    if bad.any():
        user = int(np.argmax(bad))
        raise InputError(f"the assignment (owner) must give each user an integer rank in [0, {world_size}); user "
                         f"{user} has {owner[user].item()!r}")
    return owner.astype(np.int64)


def _problem_digest(head, train, val, spec, init: torch.Tensor) -> tuple:
    """A checksum of what a prepared problem depends on, to catch ranks given other arguments than
    rank 0 (a mistake, not an adversary: CRC-32 over the arrays, a few GB/s)."""
    arrays = [train.indptr, train.items, train.ratings, train.weights, user_key(train.user_ids), init.cpu().numpy()]
    if val is not None:
        arrays += [val.indptr, val.items, val.ratings, val.weights]
    tensors = [getattr(head, "item_vectors", None), getattr(head, "item_bias", None)]
    tensors += [t for layer in getattr(head, "tower", ()) for t in (layer.weight, layer.bias)]
    arrays += [t.detach().cpu().numpy() for t in tensors if isinstance(t, torch.Tensor)]
    crc = zlib.crc32(repr(spec).encode())
    for array in arrays:
        crc = zlib.crc32(memoryview(np.ascontiguousarray(array)).cast("B"), crc)
    return crc, tuple(np.shape(a) for a in arrays)


# --------------------------------------------------------------------------- the reductions
def _pack(finite, limbs) -> torch.Tensor:
    """int64 ``[..., P, 7]``: the limbs (zeros without) and 1 where a probe is not finite."""
    bad = torch.as_tensor(~np.asarray(finite, dtype=bool), dtype=torch.int64).unsqueeze(-1)
    limbs = torch.zeros((*bad.shape[:-1], FIXED_POINT_LIMBS), dtype=torch.int64) if limbs is None \
        else torch.as_tensor(limbs, dtype=torch.int64)
    return torch.cat([limbs, bad], dim=-1)


def _unpack(packed: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """``(finite bool [..., P], limbs int64 [..., P, 6])`` of a summed ``_pack``."""
    return (packed[..., -1] == 0).numpy(), packed[..., :-1].numpy()


def _reduce_over_ranks(problem, backend: "ShardedBackend") -> None:
    """Make ``problem``'s finite flags and validation limbs those of every rank's users.

    Every training call's finite flags and every validation's limbs and flags go through the
    problem's ``reduce_hook``: one int64 SUM all-reduce (``[K, P, 7]``: limbs and a not-finite
    count) per call.
    """
    if not isinstance(problem, Problem):
        raise InputError(f"ShardedBackend needs an inner backend that prepares a retrain Problem, got a "
                         f"{type(problem).__name__}: wrap ShardedBackend in it instead (e.g. MeteredBackend(ShardedBackend(...)))")

    def reduce(finite, limbs):
        finite, summed = _unpack(backend.all_reduce_sum(_pack(finite, limbs)))
        return finite, summed if limbs is not None else None

    problem.reduce_hook = reduce


# --------------------------------------------------------------------------- the sharded backend
class ShardedBackend(Backend):
    """``inner`` (a backend or its name) on this rank's users of every problem it prepares.

    ``group``: a ``torch.distributed`` process group (default: the default group, which must be
    initialised).  ``prepare`` takes every user's data (the same on every rank) and returns a
    ``ShardedProblem`` of this rank's users whose checkpoints are those of all users.

    Two ways to drive it: every rank makes the same calls itself (SPMD: fine when no decision
    depends on the clock or on one rank's memory), or rank 0 calls inside ``driving()`` while the
    others run ``follow(prepare)``.  ``owner`` (the last prepared problem's ``shard_users``) and
    ``outputs`` (every ``embeddings`` / ``best_embeddings`` result of this rank since it was
    cleared) are what ``gather_users`` and the entry points below need.
    """

    def __init__(self, inner="auto", group=None):
        if not dist.is_initialized():
            raise InputError("ShardedBackend needs an initialised torch.distributed process group (init_process_group, "
                             "or retrain.distributed.init_distributed under torchrun)")
        self.inner = get_backend(inner)
        super().__init__(self.inner.device)
        self.name = self.inner.name
        self.group = group
        self.rank, self.world_size = dist.get_rank(group), dist.get_world_size(group)
        self.comm_device = _comm_device(group)
        self.owner = np.zeros(0, dtype=np.int64)
        self.outputs: list[torch.Tensor] = []
        self._driving = False
        self._queue: list[tuple] = []  # rank 0's deferred calls (``_command``)
        self._pinned: np.ndarray | None = None

    def __repr__(self) -> str:
        return f"ShardedBackend({self.inner!r}, rank {self.rank} of {self.world_size})"

    # ----------------------------------------------------------------- the Backend interface
    def prepare(self, head, train, val, spec, *, init):
        """This rank's users of ``train`` / ``val`` / ``init`` (every user's) on the inner backend."""
        self._command("prepare")
        init = torch.as_tensor(init)
        pinned = None if self._pinned is None else _as_owner(self._pinned, train.n_users, self.world_size)
        # Ranks given other assignments would train some users twice and others not at all.
        extra = () if pinned is None else (zlib.crc32(pinned.tobytes()),)
        self._check_same_inputs(_problem_digest(head, train, val, spec, init) + extra)
        self.owner = shard_users(user_key(train.user_ids), train.counts, self.world_size) if pinned is None else pinned
        users = np.flatnonzero(self.owner == self.rank)
        local_val = val.select_users(users) if val is not None else None
        inner = self.inner.prepare(head, train.select_users(users), local_val, spec, init=init[torch.from_numpy(users)])
        inner.steps_per_epoch = steps_per_epoch(train.counts, spec.batch_size)  # every rank's heaviest user
        return ShardedProblem(self, inner, users, local_val)

    def score(self, head, emb):
        return self.inner.score(head, emb)

    @contextmanager
    def assigned(self, owner: np.ndarray | None):
        """Problems prepared inside take ``owner`` (int64 ``[U]``, each user's rank: e.g. another
        problem's over the same users) instead of ``shard_users`` of their own rating counts
        (None: they do not)."""
        self._pinned = None if owner is None else np.asarray(owner)
        try:
            yield self
        finally:
            self._pinned = None

    # ----------------------------------------------------------------- collectives
    def all_reduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        """int64 SUM over the ranks (exact, so order-free) of ``values``; a CPU tensor."""
        t = torch.as_tensor(values).to(device=self.comm_device, dtype=torch.int64).contiguous()
        _collective("an all-reduce", lambda: dist.all_reduce(t, op=dist.ReduceOp.SUM, group=self.group))
        return t.cpu()

    def broadcast(self, obj):
        """Rank 0's ``obj`` (pickled) on every rank."""
        box = [obj]
        _collective("a broadcast", lambda: dist.broadcast_object_list(box, src=0, group=self.group,
                                                                      device=self.comm_device))
        return box[0]

    def all_gather(self, obj) -> list:
        """Every rank's ``obj`` (pickled), in rank order, on every rank."""
        out = [None] * self.world_size
        _collective("an all-gather", lambda: dist.all_gather_object(out, obj, group=self.group))
        return out

    def gather_users(self, local: torch.Tensor, owner: np.ndarray | None = None) -> torch.Tensor | None:
        """This rank's rows ``local [n_r, ...]`` (its users of the last prepared problem, or of
        ``owner``, in index order) of every rank on rank 0: ``[U, ...]`` in global user order
        there, None elsewhere."""
        owner = self.owner if owner is None else owner
        sizes = np.bincount(owner, minlength=self.world_size)
        padded = torch.zeros((int(sizes.max()), *local.shape[1:]), dtype=local.dtype)
        padded[:len(local)] = local
        padded = padded.to(self.comm_device)
        root = self.rank == 0
        parts = [torch.empty_like(padded) for _ in range(self.world_size)] if root else None
        _collective("a gather", lambda: dist.gather(padded, parts, dst=0, group=self.group))
        if not root:
            return None
        out = torch.empty((len(owner), *local.shape[1:]), dtype=local.dtype)
        for rank, part in enumerate(parts):
            out[torch.from_numpy(np.flatnonzero(owner == rank))] = part[:sizes[rank]].cpu()
        return out

    def _check_same_inputs(self, digest: tuple) -> None:
        differ = self.all_reduce_sum(torch.tensor([int(self.broadcast(digest) != digest)]))
        if int(differ[0]):
            raise _RaisedOnEveryRank(f"{int(differ[0])} rank(s) got other data, head, init or step than rank 0: "
                                     "every rank must pass the same arguments")

    # ----------------------------------------------------------------- rank 0 drives, the others follow
    def _command(self, name: str, *args, **kwargs) -> None:
        """Send one call to the followers while rank 0 is driving: at once when the call makes a
        collective (the followers must be in it too), else with the next one that does."""
        if self._driving:
            self._queue.append((name, args, kwargs))
            if name not in _DEFERRED:
                queue, self._queue = self._queue, []
                self.broadcast(queue)

    @contextmanager
    def driving(self):
        """On rank 0: broadcast every call on this backend's problems to the ranks in ``follow``;
        "stop" at the end, "abort" (then re-raise) on an exception."""
        if self.rank != 0:
            raise InputError("only rank 0 drives; the other ranks run follow()")
        self._driving, self._queue = True, []
        try:
            yield self
        except BaseException as exc:
            self._driving = False
            if not isinstance(exc, DistributedError):  # a broken group cannot carry the abort
                with suppress(DistributedError):  # a follower that failed too has left: say why rank 0 stopped
                    self.broadcast([("abort", (f"{type(exc).__name__}: {exc}", isinstance(exc, InputError)), {})])
            raise
        self._driving = False
        self.broadcast([*self._queue, ("stop", (), {})])

    def follow(self, prepare) -> None:
        """On ranks > 0: mirror rank 0's calls until it says stop.  ``prepare()`` answers its
        "prepare": it prepares this backend's problem from this rank's arguments (the same as rank
        0's).  Rank 0's exception is raised here as InputError (when it was one) or DistributedError."""
        if self.rank == 0:
            raise InputError("rank 0 drives (driving()); follow() runs on the other ranks")
        problem = None
        while True:
            for name, args, kwargs in self.broadcast(None):
                if name == "stop":
                    return
                if name == "abort":
                    message, input_error = args
                    raise (InputError if input_error else DistributedError)(f"rank 0 failed: {message}")
                with self._leaving_on_failure():
                    if name == "prepare":
                        problem = None  # free the last one first
                        problem = prepare()
                    else:
                        getattr(problem, name)(*args, **kwargs)

    @contextmanager
    def _leaving_on_failure(self):
        """A follower's call that fails: the others wait for this rank in a collective, so it leaves
        the group (they raise now instead of at the timeout); unless every rank raises the same."""
        try:
            yield
        except _RaisedOnEveryRank:
            self.broadcast(None)  # rank 0 raised it too and sends "abort": take it, so that it does not wait
            raise
        except BaseException:
            log.error("rank %d failed: leaving the process group", self.rank)
            with suppress(Exception):
                dist.destroy_process_group(self.group)
            raise


class ShardedProblem:
    """This rank's users of a problem (``inner``: the inner backend's ``Problem``), with the
    checkpoints of all users; see ``ShardedBackend``.

    ``users``: global indices (int64, increasing) of this rank's users.  ``best_embeddings()`` /
    ``embeddings()`` are theirs (each result also goes to ``backend.outputs``).  What the trainer
    reads (``spec``, ``device``, ``n_probes``, ``epoch``, ...) is the inner problem's, but
    ``state_bytes`` / ``snapshot_bytes`` are the largest shard's, so that a memory budget holds on
    every rank.  Every call that changes the state is mirrored by the followers while rank 0 drives.
    """

    def __init__(self, backend: ShardedBackend, inner, users: np.ndarray, val):
        self.backend, self.inner, self.users = backend, inner, users
        self.largest_shard = int(np.bincount(backend.owner, minlength=backend.world_size).max())
        weights = torch.from_numpy(val.weights.astype(np.float64)) if val is not None else torch.zeros(0)
        weight = backend.all_reduce_sum(fixed_point_limbs(weights)[0].sum(dim=0))
        # Every rank's validation weight, and so the same "any validation" flag (as in one process: a
        # positive weight): losses are global sums over the global weight, and no rank skips a
        # reduction the others make.
        inner.val_weight = float(fixed_point_value(weight))
        inner.has_val = inner.val_weight > 0
        _reduce_over_ranks(inner, backend)

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def state_bytes(self, n_probes: int, keep_best: bool) -> int:
        copies = 1 + self.inner.spec.optimizer.n_moments + (1 if keep_best else 0)
        return self.largest_shard * n_probes * self.inner.d * 4 * copies

    def snapshot_bytes(self) -> int:
        return self.largest_shard * self.inner.n_probes * self.inner.d * 4

    def start(self, lrs, regs, *, keep_best: bool = False) -> None:
        keep_best = check_bool("keep_best", keep_best)  # here first: a refused call is never sent
        lrs, regs = probe_steps(lrs, regs, allow_empty=True)
        self.backend._command("start", lrs, regs, keep_best=keep_best)
        self.inner.start(lrs, regs, keep_best=keep_best)

    def train(self, n_epochs: int) -> None:
        self.inner.check_epochs("n_epochs", [n_epochs])  # here first: a refused call is never sent
        self.backend._command("train", n_epochs)
        self.inner.train(n_epochs)

    def validate(self) -> Checkpoint:
        self.backend._command("validate")
        return self.inner.validate()

    def checkpoint(self, n_epochs: int) -> Checkpoint:
        return self.checkpoints([n_epochs])[0]

    def checkpoints(self, epochs) -> list[Checkpoint]:
        epochs = self.inner.check_epochs("epochs", epochs)
        self.backend._command("checkpoints", epochs)
        return self.inner.checkpoints(epochs)

    # Done (their arguments checked) on this rank first: a call the checks refuse is never sent.
    def keep_best(self, slots, index: int | None = None) -> None:
        self.inner.keep_best(slots, index)
        self.backend._command("keep_best", np.asarray(slots, dtype=np.int64), index)

    def drop(self, keep) -> None:
        self.inner.drop(keep)
        self.backend._command("drop", np.asarray(keep, dtype=np.int64))

    def best_embeddings(self) -> torch.Tensor:
        """``[len(users), P, d]`` (CPU): this rank's users at each probe's best checkpoint."""
        self.backend._command("best_embeddings")
        self.backend.outputs.append(self.inner.best_embeddings())
        return self.backend.outputs[-1]

    def embeddings(self) -> torch.Tensor:
        """``[len(users), P, d]``: this rank's users' current embeddings."""
        self.backend._command("embeddings")
        self.backend.outputs.append(self.inner.embeddings())
        return self.backend.outputs[-1]


# --------------------------------------------------------------------------- SPMD entry points
def sharded_backend(backend="auto", group=None) -> Backend | None:
    """What runs sharded: ``backend`` when it is a ``ShardedBackend`` or wraps one as ``inner``
    (e.g. ``MeteredBackend(ShardedBackend(...))``: rank 0's meter sees the calls); else a new
    ``ShardedBackend(backend, group)`` when ``group`` is given or the default group is initialised;
    else None (one process)."""
    if isinstance(backend, ShardedBackend) or isinstance(getattr(backend, "inner", None), ShardedBackend):
        return backend
    if group is not None or (dist.is_available() and dist.is_initialized()):
        return ShardedBackend(backend, group)
    return None


def _sharded(backend, group) -> tuple[Backend, ShardedBackend]:
    """``(driver, sharded)``: what rank 0 calls, and the ``ShardedBackend`` in it (the followers call
    that one: their calls are not metered)."""
    driver = sharded_backend(backend, group) or ShardedBackend(backend, group)  # the latter raises: no group
    sharded = _unwrapped(driver)
    sharded.outputs = []
    return driver, sharded


def _unwrapped(driver) -> ShardedBackend:
    return driver if isinstance(driver, ShardedBackend) else driver.inner


def _rank0_drives(sharded: ShardedBackend, lead, prepare):
    """``lead()`` on rank 0 inside ``driving()`` while the others ``follow(prepare)``; rank 0's
    result on every rank."""
    if sharded.rank == 0:
        with sharded.driving():
            result = lead()
        return sharded.broadcast(result)
    sharded.follow(prepare)
    return sharded.broadcast(None)


def train_probes(head, train, val, lrs, regs, hyp, backend="auto", *, group=None, return_embeddings: bool = False,
                 memory_budget: int | None = None, init: torch.Tensor | None = None,
                 deadline: float | None = None, gather: bool = True) -> list:
    """``retrain.train_probes`` with the users sharded over the ranks of ``group``; call it with the
    same arguments on every rank.  Rank 0 drives (its ``deadline`` and memory budget decide).

    Returns the same ``ProbeResult``s on every rank, bitwise those of one process.  With
    ``return_embeddings``, each result's ``embeddings``: ``[U, d]`` on rank 0 and None elsewhere
    (gathered), or with ``gather=False`` this rank's users' rows on every rank (``[n_r, d]``, the
    users ``Shard.of(backend).users``).  ``backend``: the inner backend (``"cpu"`` with gloo,
    ``"triton"`` with NCCL) or a ``ShardedBackend`` (wrapped or not, see ``sharded_backend``).
    """
    return_embeddings, gather = check_bool("return_embeddings", return_embeddings), check_bool("gather", gather)
    driver, sharded = _sharded(backend, group)

    def lead():
        results = trainer.train_probes(head, train, val, lrs, regs, hyp, driver, return_embeddings=return_embeddings,
                                       memory_budget=memory_budget, init=init, deadline=deadline)
        for r in results:
            r.embeddings = None  # rank 0's users only: gathered below
        return results

    results = _rank0_drives(sharded, lead, lambda: trainer.prepare(head, train, val, hyp, sharded, init=init))
    if return_embeddings:
        best = torch.cat(sharded.outputs, dim=1)  # the groups' probes, in order
        best = sharded.gather_users(best) if gather else best
        if best is not None:
            for probe, r in enumerate(results):
                r.embeddings = best[:, probe].clone()
    return results


def tune(head, train, val, hyp, *, backend="auto", group=None, **options):
    """``retrain.tune`` with the users sharded over the ranks of ``group``; call it with the same
    arguments on every rank.  NLopt and the journal (``journal=``: rank 0 writes and resumes it)
    run on rank 0; returns rank 0's ``TuneResult`` on every rank.  ``options``: ``retrain.tune``'s."""
    driver, sharded = _sharded(backend, group)
    return _rank0_drives(sharded, lambda: tuner.tune(head, train, val, hyp, backend=driver, **options),
                         lambda: trainer.prepare(head, train, val, hyp, sharded))


def train_embeddings(head, ratings, hyp, epochs: int, backend="auto", *, group=None,
                     init: torch.Tensor | None = None, owner: np.ndarray | None = None,
                     gather: bool = True) -> torch.Tensor | None:
    """``retrain.train_embeddings`` with the users sharded over the ranks of ``group`` (the same
    arguments on every rank; no decision to take, so every rank runs it itself).  Returns the
    embeddings ``[U, d]`` on rank 0 and None elsewhere, or with ``gather=False`` this rank's
    users' rows on every rank.  ``owner``: the assignment to use (``Shard.owner`` of an earlier
    call over the same users) instead of ``shard_users`` of ``ratings``' counts."""
    gather = check_bool("gather", gather)
    driver, sharded = _sharded(backend, group)
    with sharded.assigned(owner):
        local = trainer.train_embeddings(head, ratings, hyp, epochs, driver, init=init)
    return sharded.gather_users(local) if gather else local


@dataclass(frozen=True)
class Shard:
    """Which users' rows a rank holds: ``owner`` (int64 ``[U]``, every user's rank: the assignment of
    the last problem ``backend`` prepared) and ``users`` (this rank's global indices, increasing)."""

    backend: ShardedBackend
    owner: np.ndarray

    @staticmethod
    def of(backend) -> "Shard":
        """The shard of the last problem prepared by ``backend`` (a ``ShardedBackend``, wrapped or not)."""
        sharded = _unwrapped(backend)
        return Shard(sharded, sharded.owner.copy())

    @property
    def rank(self) -> int:
        return self.backend.rank

    @property
    def world_size(self) -> int:
        return self.backend.world_size

    @property
    def users(self) -> np.ndarray:
        return np.flatnonzero(self.owner == self.rank)

    def gather(self, local: torch.Tensor) -> torch.Tensor | None:
        """This rank's rows ``local [len(users), ...]`` of every rank, on rank 0 in global user
        order (``[U, ...]``); None elsewhere."""
        return self.backend.gather_users(local, self.owner)


def on_rank0(backend, run) -> None:
    """``run()`` on rank 0 alone (e.g. writing a file) while the others wait for it: its exception
    is raised on every rank (an InputError as InputError, else DistributedError naming it)."""
    _rank0_drives(_unwrapped(backend), run, prepare=None)


def save_shards(path, shard: Shard, model, recipe, seen=None) -> None:
    """Write a result kept in shards (``retrain.shards``), collectively: every rank writes the file
    of its users (``model``: theirs; ``seen``: every user's ratings, or None), then rank 0 the head
    file and the index at ``path``.  A rank that cannot write makes every rank raise OSError naming it."""
    users = shard.users
    try:
        entry = ("ok", shards.write_shard(path, shard.rank, shard.world_size, users, model.user_ids,
                                          model.user_embeddings, None if seen is None else seen.select_users(users)))
    except (OSError, InputError) as exc:
        entry = ("error", f"{type(exc).__name__}: {exc}")
    entries = shard.backend.all_gather(entry)
    failed = [f"rank {rank}: {message}" for rank, (status, message) in enumerate(entries) if status == "error"]
    if failed:
        raise OSError(f"writing the shards of {path} failed on {len(failed)} rank(s): " + "; ".join(failed))
    support = item_support(seen, model.head.n_items)
    on_rank0(shard.backend, lambda: shards.write_index(path, model.head, recipe.to_json(), support,
                                                       [e for _, e in entries]))


def leave() -> None:
    """Destroy the default process group (``init_distributed``'s), even when a failed rank broke it."""
    with suppress(Exception):
        dist.destroy_process_group()
