"""Train P hyper-parameter probes at once: checkpoints, early stopping, best state, divergence.

``prepare`` builds a backend's prepared problem once (head, ratings, keys, init and the probe
state on the backend's device); ``run_probes`` runs the early-stopping loop on it for a batch of
probes, and can be called again on the same problem (the tuner does, every round).
``train_probes`` is both in one call.  The loop: a validation at epoch 0 (the init) and then
every ``epochs_per_checkpoint`` epochs, per-probe patience, each probe's best embeddings kept on
request, probes whose state or loss is NaN/inf stopped, optionally probes that cannot reach a target
loss stopped early (``Pruning``), and the probes split into groups that fit a memory budget.  It
never touches the state itself: the problem does.
"""
from __future__ import annotations

import logging
import math
import numbers
import os
import time
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from .backends import get_backend
from .backends.base import Problem, check_step_sizes, probe_steps
from .contract import StepSpec, initial_embeddings, user_key
from .data import Ratings, as_ratings
from .errors import InputError, check_bool, check_float, check_int
from .heads import Head, check_head_like
from .hyperparams import HyperParams, check_hyperparams
from .ids import format_id

log = logging.getLogger(__name__)


STOP_REASONS = ("patience", "max_epochs", "diverged", "deadline", "pruned")
FINAL = ("patience", "max_epochs")  # the stop reasons whose best_val_loss is what training gives


@dataclass
class ProbeResult:
    """The outcome of one probe.

    ``history`` holds ``(epoch, val_loss)`` at every checkpoint (epoch 0 is the init; NaN at a
    checkpoint where some user's state or loss was not finite: the loss is undefined there).
    ``best_epoch`` / ``best_val_loss`` are the best finite checkpoint; ``embeddings`` (``[U, d]``,
    only when asked for) are the embeddings at ``best_epoch``.  A probe without a finite checkpoint
    (the init's loss was not finite) has ``best_val_loss`` inf, ``best_epoch`` 0 and the init.
    ``stop_reason`` says why it stopped: ``"patience"`` (no improvement for ``patience + 1``
    checkpoints), ``"max_epochs"`` (the cap; it may still have been improving), ``"diverged"`` (its
    state or loss became NaN/inf), ``"deadline"`` (``run_probes``' time budget ran out: its result
    is not final) or ``"pruned"`` (``Pruning`` showed it cannot reach the target:
    ``best_val_loss`` is its best so far, an upper bound of what training it on would have given).
    """

    lr: float
    reg: float
    history: list = field(default_factory=list)
    best_epoch: int = 0
    best_val_loss: float = math.inf
    stop_reason: str = ""
    embeddings: torch.Tensor | None = None

    @property
    def diverged(self) -> bool:
        return self.stop_reason == "diverged"

    @property
    def finished(self) -> bool:
        """False when the time budget stopped it before early stopping or the cap did."""
        return self.stop_reason != "deadline"

    @property
    def epochs_trained(self) -> int:
        return self.history[-1][0] if self.history else 0


@dataclass(frozen=True)
class Pruning:
    """When ``run_probes`` stops a probe early: once it cannot reach the ``rank`` best losses
    known, nor come within ``margin`` (a share) of the best.

    *Known* losses are ``known`` (points evaluated before this batch) and the best validation
    losses of the probes of this batch that have finished (stopped by patience or ``max_epochs``:
    final values; a probe still training may yet diverge).  The *target* is
    ``max(k-th smallest known, (1 + margin) * smallest known)`` with ``k = rank`` (infinite while
    fewer than ``rank`` are known).  A probe's *bound* at epoch ``e`` is
    ``min(best so far, last loss - (max_epochs - e) * r)``, where ``r`` is its fastest fall per
    epoch over its last ``window`` checkpoint intervals: what it would reach if it kept falling at
    that rate until ``max_epochs``.  A probe whose bound exceeds the target is stopped
    (``"pruned"``).

    So, as long as no probe's loss later falls faster than it did over its last ``window``
    intervals (loss curves that flatten: a learning rate too small, a regularisation too strong,
    the plateau probes of a tuning run), a pruned probe's final loss exceeds the final
    ``rank``-th best and is more than ``margin`` worse than the final best: the best ``rank``
    losses of the batch and ``known`` are those of training every probe to its end, and a probe
    within ``margin`` of the best is never pruned.  A pruned probe reports its best so far, which
    is no lower than the loss it would have reached.  The window forgets the steep first fall from
    the init, which would otherwise bound every probe for good; 4 intervals held on every probe of
    two 41x41 tuning grids but one (docs/benchmarks.md, "Tuner").

    ``known_at`` holds ``(epoch, loss)`` pairs: final losses of this batch's probes that are not
    trained in this call (a resumed batch's probes that had finished before the interruption),
    each known from the checkpoint at the epoch it stopped at, as it was when it trained beside
    the others: so the probes trained now stop where they stopped in the whole batch (when it
    trained in one memory group of ``run_probes``; the tuner resumes a batch of several groups
    group by group, ``memory_group``).
    """

    known: tuple[float, ...] = ()
    rank: int = 1
    margin: float = 0.0
    window: int = 4
    known_at: tuple[tuple[int, float], ...] = ()

    def __post_init__(self):
        # rank 0 raised an IndexError at the first checkpoint; window 0 read as every interval
        # (falls[-0:]) and a negative one as all but the first few.
        check_int("Pruning.rank", self.rank, 1)
        check_int("Pruning.window", self.window, 1)
        check_float("Pruning.margin", self.margin, 0.0)
        for loss in self.known:  # a string raised numpy's ValueError at the first checkpoint, after training
            if isinstance(loss, bool) or not isinstance(loss, numbers.Real):
                raise InputError(f"Pruning.known must hold losses (numbers), got {loss!r}")
        for pair in self.known_at:
            if not (isinstance(pair, tuple) and len(pair) == 2):
                raise InputError(f"Pruning.known_at must hold (epoch, loss) pairs, got {pair!r}")
            check_int("Pruning.known_at epoch", pair[0], 0)
            check_float("Pruning.known_at loss", pair[1])

    def target(self, batch_best: np.ndarray, epoch: int) -> float:
        """The loss a probe must be able to reach to go on at the checkpoint of ``epoch``, given the
        best losses of the batch's probes finished so far."""
        later = [loss for at, loss in self.known_at if at <= epoch]
        known = np.sort(np.concatenate([np.asarray(self.known, dtype=np.float64).ravel(), batch_best,
                                        np.asarray(later, dtype=np.float64)]))
        known = known[np.isfinite(known)]
        if len(known) < self.rank:
            return math.inf
        return max(float(known[self.rank - 1]), (1.0 + self.margin) * float(known[0]))


def reachable_loss(history: list, max_epochs: int, window: int, best: float | None = None) -> float:
    """``Pruning``'s bound of a probe with ``history = [(epoch, loss), ...]``: the lowest loss it
    reaches by ``max_epochs`` if it never falls faster per epoch than over its last ``window``
    checkpoint intervals.  ``best``: the lowest loss of ``history`` when the caller knows it."""
    if len(history) < 2:
        return -math.inf  # no rate known yet
    # Plain floats over the last window + 1 checkpoints: called per probe and checkpoint.
    tail = history[-(window + 1):]
    rate = max(0.0, *((loss - next_loss) / (next_epoch - epoch)
                      for (epoch, loss), (next_epoch, next_loss) in zip(tail, tail[1:])))
    last_epoch, last_loss = tail[-1]
    if best is None:
        best = min(loss for _, loss in history)
    return min(best, float(last_loss) - (max_epochs - last_epoch) * rate)


def check_ratings(data: Ratings, name: str, n_items: int) -> None:
    """InputError unless ``data`` is well-formed CSR whose item indices lie in ``[0, n_items)``.

    ``Ratings`` built through its constructors are; one built by hand may not be, and a backend
    must never read outside the head's tables.
    """
    as_ratings(data, name, frames=False)  # a DataFrame, say: it indexes no items of the head
    indptr, nnz = np.asarray(data.indptr), len(data.items)
    if indptr.ndim != 1 or len(indptr) < 1 or indptr[0] != 0 or indptr[-1] != nnz or np.any(np.diff(indptr) < 0):
        raise InputError(f"{name}: indptr must start at 0, never decrease and end at nnz = {nnz}")
    if len(data.ratings) != nnz or len(data.weights) != nnz:
        raise InputError(f"{name}: items, ratings and weights must have the same length")
    if len(data.user_ids) != len(indptr) - 1:
        raise InputError(f"{name}: {len(data.user_ids)} user ids for {len(indptr) - 1} users")
    if data.n_items != n_items:
        raise InputError(f"{name} has {data.n_items} items but the head has {n_items}")
    if nnz:
        for bad, what in ((data.items < 0, "item index < 0"), (data.items >= n_items, f"item index >= {n_items}")):
            if bad.any():
                row = int(np.argmax(bad))
                raise InputError(f"{name}: row {row} has an {what} ({int(data.items[row])})")
        for values, what in ((data.ratings, "rating"), (data.weights, "weight")):
            bad = ~np.isfinite(values)
            if bad.any():
                row = int(np.argmax(bad))
                raise InputError(f"{name}: row {row} has a non-finite {what} ({values[row]})")
        if (data.weights < 0).any():
            row = int(np.argmax(data.weights < 0))
            raise InputError(f"{name}: row {row} has a negative weight ({data.weights[row]})")


def check_training_inputs(head, train: Ratings, val: Ratings | None) -> None:
    """Raise InputError when the data and the head do not describe the same users and items."""
    check_head_like(head)
    check_ratings(train, "train", head.n_items)
    if val is not None:
        check_ratings(val, "val", head.n_items)
        if val.n_users != train.n_users:
            raise InputError(f"train and val must hold the same users (got {train.n_users} and {val.n_users} users)")
        if not np.array_equal(val.user_ids, train.user_ids):
            row = int(np.argmax(np.asarray(val.user_ids) != np.asarray(train.user_ids)))
            raise InputError(f"train and val must hold the same users in the same order: row {row} is user "
                             f"{format_id(train.user_ids[row])} in train, {format_id(val.user_ids[row])} in val")


def step_spec(hyp: HyperParams) -> StepSpec:
    """The step ``hyp`` describes: MSE, its optimizer with the default constants, batch size, seed,
    damping."""
    return StepSpec(loss="mse", optimizer=hyp.optimizer, batch_size=hyp.batch_size, seed=hyp.seed,
                    damping=hyp.damping)


def default_memory_budget(device: torch.device) -> int:
    """Bytes the probe states may use: half the free GPU memory, a quarter of the RAM on the CPU."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free // 2
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4


def contract_init(head, user_ids, hyp: HyperParams, n_users: int) -> torch.Tensor:
    """The contract's initial embeddings ``[len(user_ids), d]`` (float32) of these users: keyed by
    their original ids, seeded by ``hyp.seed``, the Glorot bound of ``hyp.num_users`` users (else
    ``n_users``)."""
    n = hyp.num_users or n_users
    # A HeadLike's NaN or negative half-width made every probe "diverge" at epoch 0.
    scale = check_float(f"head.init_scale({n})", head.init_scale(n), 0.0)
    return torch.from_numpy(initial_embeddings(user_key(user_ids), head.d, hyp.seed, scale))


def prepare(head, train: Ratings, val: Ratings | None, hyp: HyperParams, backend="auto", *,
            init: torch.Tensor | None = None) -> Problem:
    """Check the inputs and prepare them once on ``backend``: a ``Problem`` for ``run_probes``.

    Args:
        head: the frozen item side (a ``retrain.Head``, or any ``retrain.heads.HeadLike`` for the
            ``reference`` backend, which ``"auto"`` then picks).
        train, val: ratings of the same users; ``val`` for the checkpoints (may be empty or None).
        hyp: fixes the step (optimizer, batch size, seed) and the init (the Glorot bound uses
            ``hyp.num_users``, else ``train.n_users``); the other fields are ``run_probes``'.
        backend: name or ``Backend``.
        init: initial embeddings ``[U, d]`` instead of the contract's (finite: InputError naming
            the first row that is not).
    """
    check_training_inputs(head, train, val)
    hyp = check_hyperparams(hyp)
    if backend == "auto" and not isinstance(head, Head):
        backend = "reference"  # the fast backends train the dense Head only
    be = get_backend(backend)
    if init is None:
        init = contract_init(head, train.user_ids, hyp, train.n_users)
    else:
        init = torch.as_tensor(init, dtype=torch.float32)
        if init.shape != (train.n_users, head.d):
            raise InputError(f"init must be [n_users={train.n_users}, d={head.d}], got {tuple(init.shape)}")
        check_finite_rows("init", init)  # a NaN row trained NaN: every probe "diverged" at epoch 0
    return be.prepare(head, train, val, step_spec(hyp), init=init)


def check_finite_rows(name: str, rows: torch.Tensor, consequence: str = "") -> None:
    """InputError naming the first row of ``rows [n, d]`` that holds a NaN or an infinity, and how
    many do (``consequence`` is appended to the message)."""
    bad = ~torch.isfinite(rows).all(1)
    if bad.any():
        raise InputError(f"{name} row {int(bad.nonzero()[0])} is not finite ({int(bad.sum())} of {len(rows)} "
                         f"rows){consequence}")


def train_probes(head, train: Ratings, val: Ratings, lrs, regs, hyp: HyperParams, backend="auto", *,
                 return_embeddings: bool = False, memory_budget: int | None = None,
                 init: torch.Tensor | None = None, deadline: float | None = None) -> list[ProbeResult]:
    """Train ``P = len(lrs)`` probes (learning rate, L2) at once on the same data and schedule.

    Args:
        head: the frozen item side.
        train, val: ratings of the same users (``val`` for checkpoints: InputError unless some
            rating there weighs > 0, ``check_validation``).
        lrs, regs: length-P sequences.
        hyp: batch size, optimizer, seed, max_epochs, epochs_per_checkpoint, patience, num_users
            (the Glorot bound uses ``hyp.num_users`` or else ``train.n_users``).
        backend: name or ``Backend``.
        return_embeddings: keep each probe's best embeddings ``[U, d]`` (CPU tensors).
        memory_budget: bytes for probe states; probes are split into groups to fit.
        init: optional initial embeddings ``[U, d]``, finite (default: the contract's init).
        deadline: a ``time.monotonic()`` instant; once it has passed, the probes stop at their next
            checkpoint with ``stop_reason == "deadline"`` (checked between training calls).

    Returns one ``ProbeResult`` per probe, in order.  To train several batches on the same data,
    ``prepare`` once and call ``run_probes``.
    """
    check_bool("return_embeddings", return_embeddings)  # before the preparation's work
    problem = prepare(head, train, val, hyp, backend, init=init)
    return run_probes(problem, lrs, regs, hyp, return_embeddings=return_embeddings, memory_budget=memory_budget,
                      deadline=deadline)


def check_validation(val_weight: float) -> None:
    """InputError unless the validation ratings weigh more than 0 in all (``val_weight``: a prepared
    problem's, every rank's users together; or ``retrain.backends.base.validation_weight(val)``).
    Early stopping keeps each probe's checkpoint of least validation loss, and without validation
    every loss is 0: the untrained init (epoch 0) would come back as the best checkpoint, and the
    tuned optimum."""
    if not val_weight > 0:
        raise InputError("val has no ratings of weight > 0 (it is empty, or every weight is 0): early stopping and "
                         "tuning minimise the validation loss, so they need some (retrain.protocol_split makes them; "
                         "train_embeddings trains a fixed number of epochs without)")


def run_probes(problem: Problem, lrs, regs, hyp: HyperParams, *, return_embeddings: bool = False,
               memory_budget: int | None = None, deadline: float | None = None,
               pruning: Pruning | None = None, on_finish=None) -> list[ProbeResult]:
    """``train_probes`` on a prepared problem (``prepare`` with the same ``hyp``); with ``pruning``,
    probes that cannot reach its target stop early (``stop_reason == "pruned"``, see ``Pruning``;
    the known losses of a memory group include those of the groups before it).

    ``on_finish(index, result)`` is called once for each probe (``index`` into ``lrs``) at the
    checkpoint where it stops for good (patience, ``max_epochs``, diverged or pruned; not for the
    deadline), before the others train on: its ``ProbeResult`` is final then, but for
    ``embeddings``, attached when the call returns.  The tuner journals each point there, so an
    interrupted batch loses none of its finished probes."""
    # Each raised an AttributeError or TypeError, the last two only once training had begun.
    if not all(hasattr(problem, name) for name in ("start", "checkpoints", "validate", "drop", "spec")):
        raise InputError(f"problem must be a prepared problem (retrain.trainer.prepare), got {type(problem).__name__}")
    if pruning is not None and not isinstance(pruning, Pruning):
        raise InputError(f"pruning must be a retrain.trainer.Pruning or None, got {type(pruning).__name__}")
    if on_finish is not None and not callable(on_finish):
        raise InputError(f"on_finish must be a callable (index, result) or None, got {on_finish!r}")
    hyp = check_hyperparams(hyp)
    check_validation(problem.val_weight)
    return_embeddings = check_bool("return_embeddings", return_embeddings)
    lrs, regs = probe_steps(lrs, regs)
    if step_spec(hyp) != problem.spec:
        raise InputError(f"hyp describes the step {step_spec(hyp)} but the problem was prepared for {problem.spec}")
    problem.check_epochs("hyp.max_epochs", [hyp.max_epochs], start=0)  # else refused mid-batch
    if deadline is not None:
        check_float("deadline", deadline)
    if memory_budget is not None:
        check_float("memory_budget", memory_budget, 0.0)
    per_probe = problem.state_bytes(1, return_embeddings)
    budget = memory_budget if memory_budget is not None else default_memory_budget(problem.device)
    group = min(len(lrs), memory_group(problem, return_embeddings, budget))
    if per_probe > budget:  # one probe is the least a batch can hold: it was exceeded silently
        log.warning("memory budget %.3g bytes is below one probe's state (%d bytes): training one probe at a time "
                    "beyond it", budget, per_probe)
    if group < len(lrs):
        log.info("memory budget %.3g bytes: training %d probes in groups of %d", budget, len(lrs), group)
    results = []
    for first in range(0, len(lrs), group):
        sl = slice(first, first + group)
        finish = None if on_finish is None else (lambda index, result, first=first: on_finish(first + index, result))
        done = _train_group(problem, lrs[sl], regs[sl], hyp, return_embeddings, budget, deadline, pruning, finish)
        results += done
        if pruning is not None:
            finished = tuple(r.best_val_loss for r in done if r.stop_reason in FINAL)
            pruning = replace(pruning, known=pruning.known + finished)
    return results


def memory_group(problem: Problem, keep_best: bool, budget: float) -> int:
    """Probes per memory group of ``run_probes``: as many as ``budget`` bytes hold the state of
    (``Problem.state_bytes``), at least one."""
    return max(1, int(budget // max(problem.state_bytes(1, keep_best), 1)))


def _train_group(problem: Problem, lrs, regs, hyp: HyperParams, return_embeddings: bool, budget: int,
                 deadline: float | None, pruning: Pruning | None, on_finish) -> list[ProbeResult]:
    results = [ProbeResult(float(lr), float(reg)) for lr, reg in zip(lrs, regs)]
    problem.start(lrs, regs, keep_best=return_embeddings)
    # Plain Python lists and floats in the per-probe loop below: numpy scalars cost a few times
    # more there, at every probe and checkpoint (a tuning run's probes are many and its epochs cheap).
    active = list(range(len(lrs)))  # probe ids still training, in slot order
    since_best = [0] * len(lrs)
    finished = []  # best losses of the probes whose stop is final (FINAL): the pruning's known ones
    epoch = 0
    checkpoints, epochs = [problem.validate()], [0]  # epoch 0: the init
    while True:
        stopped = [False] * len(active)  # stopped at an earlier checkpoint of this call
        reported = [False] * len(active)  # passed to on_finish
        for index, (checkpoint, n_epochs) in enumerate(zip(checkpoints, epochs)):
            epoch += n_epochs
            improved = []
            losses, finite = checkpoint.losses.tolist(), checkpoint.finite.tolist()
            for slot, probe in enumerate(active):
                if stopped[slot]:
                    continue
                r, loss = results[probe], losses[slot]
                r.history.append((epoch, loss))
                if not (finite[slot] and math.isfinite(loss)):
                    r.stop_reason, stopped[slot] = "diverged", True
                    log.debug("probe %d (lr %.3g, reg %.3g) diverged at epoch %d", probe, r.lr, r.reg, epoch)
                    continue
                if loss < r.best_val_loss:
                    r.best_val_loss, r.best_epoch = loss, epoch
                    since_best[probe] = 0
                    improved.append(slot)
                else:
                    since_best[probe] += 1
                if since_best[probe] > hyp.patience:
                    r.stop_reason, stopped[slot] = "patience", True
                    finished.append(r.best_val_loss)
                elif epoch >= hyp.max_epochs:
                    r.stop_reason, stopped[slot] = "max_epochs", True
                    finished.append(r.best_val_loss)
            # At epoch 0 every probe is at the init: kept for all, so that a probe whose init loss is
            # not finite (diverged before any checkpoint) returns the init, its best_epoch, not unset memory.
            if return_embeddings:  # else a no-op after its index checks, at every checkpoint of a tuning run
                problem.keep_best(np.arange(len(active)) if epoch == 0 else improved, index)
            if pruning is not None and epoch < hyp.max_epochs:
                target = pruning.target(np.array(finished), epoch)
                for slot, probe in enumerate(active if math.isfinite(target) else ()):  # inf: none pruned
                    r = results[probe]
                    if not stopped[slot] and \
                            reachable_loss(r.history, hyp.max_epochs, pruning.window, r.best_val_loss) > target:
                        r.stop_reason, stopped[slot] = "pruned", True
            if on_finish is not None:
                for slot, probe in enumerate(active):
                    if stopped[slot] and not reported[slot]:
                        on_finish(probe, results[probe])
                        reported[slot] = True
        keep = [slot for slot in range(len(active)) if not stopped[slot]]
        if keep and deadline is not None and time.monotonic() >= deadline:
            for slot in keep:
                results[active[slot]].stop_reason = "deadline"
            log.info("time budget spent: %d probes stopped at epoch %d before early stopping did", len(keep), epoch)
            keep = []
        if not keep:
            break
        if len(keep) < len(active):
            problem.drop(np.array(keep, dtype=np.int64))
            active = [active[slot] for slot in keep]
        epochs = _next_checkpoints(problem, hyp, epoch, np.array([since_best[p] for p in active]), return_embeddings,
                                   budget)
        checkpoints = problem.checkpoints(epochs)
    capped = [r for r in results if r.stop_reason == "max_epochs" and r.best_epoch == r.epochs_trained]
    if capped:
        log.info("%d of %d probes were still improving when max_epochs = %d stopped them", len(capped), len(results),
                 hyp.max_epochs)
    if return_embeddings:
        best = problem.best_embeddings()
        for probe, r in enumerate(results):
            r.embeddings = best[:, probe].clone()
    return results


def _next_checkpoints(problem: Problem, hyp: HyperParams, epoch: int, since_best: np.ndarray,
                      keep_best: bool, budget: int) -> list[int]:
    """Epochs of each checkpoint of the next call: as many checkpoints as no live probe can stop
    before (patience left, then ``max_epochs``), so a backend may validate them all in one pass
    over the state and no probe trains past its stop; with ``keep_best``, as many as the budget
    holds copies of the embeddings for."""
    left = int((hyp.patience - since_best).min()) + 1  # >= 1: every live probe is within its patience
    if keep_best:
        spare = budget - problem.state_bytes(problem.n_probes, keep_best=True)
        left = min(left, 1 + max(0, spare) // max(1, problem.snapshot_bytes()))
    epochs = []
    while len(epochs) < left and epoch < hyp.max_epochs:
        n = min(hyp.epochs_per_checkpoint, hyp.max_epochs - epoch)
        epochs.append(n)
        epoch += n
    return epochs


def train_embeddings(head, ratings: Ratings, hyp: HyperParams, epochs: int, backend="auto", *,
                     init: torch.Tensor | None = None) -> torch.Tensor:
    """Train one configuration (``hyp.learning_rate``, ``hyp.regularization``) for exactly ``epochs``
    epochs, no validation: the serving-time recipe.  Returns embeddings ``[n_users, d]`` (CPU).

    The Glorot bound uses ``hyp.num_users`` (set it to the user count of the retrain being
    reproduced), else ``ratings.n_users``.  A user whose training diverges gets a non-finite row
    (no error here: the callers flag or refuse those users, ``retrain.serving``, the pipeline's refit).
    """
    hyp = check_hyperparams(hyp)
    check_step_sizes(np.array([hyp.learning_rate]), np.array([hyp.regularization]))
    problem = prepare(head, ratings, None, hyp, backend, init=init)
    epochs, = problem.check_epochs("epochs", [epochs], start=0)
    problem.start([hyp.learning_rate], [hyp.regularization])
    problem.train(epochs)
    return problem.embeddings()[:, 0].cpu().clone()
