"""Tune ``lr = 1e-3 * 10**a`` and ``reg = 1e-5 * 10**b`` with NLopt, many points per probe batch.

NLopt asks for one point at a time, but the probe trainer trains P configurations for about the
price of one.  So several NLopt optimizers (a multi-start) run in lock-step, each in its own
thread: an objective call parks its point(s) at a gate and waits; when every live optimizer is
parked, the thread that called ``tune`` trains all parked points as ONE probe batch
and hands each optimizer its value.  An optimizer that finishes leaves the gate, so it never
holds the others up.  Training runs in the calling thread (CUDA context, exceptions and Ctrl-C
stay where the user is); the optimizer threads only block on the gate's condition variable, which
releases the GIL, so nlopt's Python binding works from threads (checked with nlopt 2.11).

Rules of the gate, applied in optimizer order so that a run is deterministic:
* points equal to ``KEY_DIGITS`` decimals are evaluated once; points the journal of an earlier
  run holds are read from it, not trained; a round whose points are all known trains nothing;
* ``max_evals`` counts the distinct points this run evaluates (trained or read from the journal),
  the space-filling batch and finite-difference points included; a request that would go over
  it, and every request once ``max_time`` seconds have passed, ends its optimizer
  (``opt.force_stop()``).  The first batch always runs, and a batch that has started is finished;
* a probe that diverges scores the finite penalty ``2 * L0 + 1``, where ``L0`` is the validation
  loss of the untrained init (the same for every probe: they share the init).  A probe that does
  not diverge scores at most ``L0`` (its checkpoints include epoch 0), so the penalty is worse
  than every real value and NLopt never sees NaN or inf;
* gradient-based algorithms (``LD_*``, ``GD_*``) get central finite differences with a step of
  ``FD_STEP`` of each bound's range (one-sided at a bound); those points train in the same batch
  as the point itself.

The journal is JSONL, one line per trained point, flushed as it is written.  Each line carries a
fingerprint of the problem (data, head, hyper-parameters other than lr/reg), so that a journal
is never resumed against other data.  A run given the journal of an interrupted run with the same
arguments replays the journal's points without training and then goes on: it ends where an
uninterrupted run would have ended.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import sys
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from .errors import InputError
from .data import Ratings
from .heads import Head
from .hyperparams import HyperParams, lr_from_a, reg_from_b
from .trainer import check_training_inputs, prepare, run_probes

log = logging.getLogger(__name__)


def _nlopt():
    """The nlopt module, imported on first use so that ``import retrain`` does not need it."""
    try:
        import nlopt
    except ImportError:
        raise InputError("tuning needs the nlopt package, which is not installed (pip install nlopt)") from None
    return nlopt

KEY_DIGITS = 12  # points equal to this many decimals of (a, b) are the same evaluation
FD_STEP = 0.01  # finite-difference step, as a fraction of each bound's range
XTOL_ABS = 1e-3  # an optimizer stops when its steps in (a, b) fall below this (0.2 % of lr or reg)
INITIAL_STEP = 0.25  # first trust radius of each of K optimizers, as a fraction of the range / sqrt(K)
SPACE_FILLING_FACTOR = 2  # the space-filling first batch trains this many candidates per start
DEFAULT_BOUNDS = ((-2.0, 3.0), (-3.0, 5.0))


@dataclass(frozen=True)
class Evaluation:
    """One evaluated point.

    ``loss`` is the value NLopt saw (the penalty when ``diverged``), ``val_loss`` the probe's best
    finite validation loss, ``epochs`` its best epoch.  ``round`` is the index of the probe batch
    that trained it (0 is the first; for a point read from the journal, the number of batches
    trained before it), ``optimizer`` the optimizer that asked for it first (-1: the space-filling
    batch), ``time`` seconds since ``tune`` started, ``trained`` False when read from the journal.
    """

    a: float
    b: float
    loss: float
    val_loss: float
    epochs: int
    diverged: bool
    round: int
    optimizer: int
    time: float
    trained: bool = True

    @property
    def point(self) -> tuple[float, float]:
        return (self.a, self.b)

    @property
    def lr(self) -> float:
        return lr_from_a(self.a)

    @property
    def reg(self) -> float:
        return reg_from_b(self.b)


@dataclass
class TuneResult:
    """The best point of a tuning run and how it got there.

    ``val_loss`` is the best point's ``loss`` (a real validation loss unless every point diverged);
    ``hyp`` is the input ``HyperParams`` with the tuned ``learning_rate`` / ``regularization``;
    ``epochs`` the best point's best epoch; ``n_batches`` the number of probe batches trained.
    """

    a: float
    b: float
    lr: float
    reg: float
    val_loss: float
    epochs: int
    hyp: HyperParams
    history: list[Evaluation] = field(default_factory=list)
    n_batches: int = 0

    @property
    def n_evals(self) -> int:
        return len(self.history)


def _key(point) -> tuple[float, float]:
    return (round(float(point[0]), KEY_DIGITS), round(float(point[1]), KEY_DIGITS))


def problem_fingerprint(head: Head, train: Ratings, val: Ratings, hyp: HyperParams) -> str:
    """A short hash of everything a probe's loss depends on except (lr, reg)."""
    digest = hashlib.sha256()
    arrays = [train.indptr, train.items, train.ratings, train.weights, train.user_ids,
              val.indptr, val.items, val.ratings, val.weights, head.item_vectors.numpy(), head.item_bias.numpy()]
    arrays += [t.numpy() for layer in head.tower for t in (layer.weight, layer.bias)]
    for array in arrays:
        digest.update(np.ascontiguousarray(array).tobytes())
    settings = {k: v for k, v in hyp.to_dict().items() if k not in ("learning_rate", "regularization")}
    settings.update(global_bias=head.global_bias, init=head.init,
                    activations=[layer.activation for layer in head.tower])
    digest.update(json.dumps(settings, sort_keys=True).encode())
    return digest.hexdigest()[:16]


class Journal:
    """Append-only JSONL record of trained points; ``load`` returns them keyed by point.

    A last line cut short (a killed run) is dropped, and cut off the file so that the next line
    starts cleanly; a bad line anywhere else is an error.
    """

    def __init__(self, path, problem: str):
        self.path = os.fspath(path)
        self.problem = problem

    def load(self) -> dict[tuple[float, float], dict]:
        if not os.path.exists(self.path):
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            return {}
        with open(self.path, "rb") as f:
            data = f.read()
        lines = data.split(b"\n")
        complete, tail = lines[:-1], lines[-1]  # ``tail`` is what follows the last newline
        entries = {}
        for number, line in enumerate(complete, start=1):
            if line.strip():
                self._add(entries, self._parse(line, number), number)
        if tail.strip():
            try:
                entry = self._parse(tail, len(lines))
            except ValueError:
                log.warning("journal %s: dropping a cut last line (%d bytes)", self.path, len(tail))
                with open(self.path, "r+b") as f:
                    f.truncate(len(data) - len(tail))
            else:
                self._add(entries, entry, len(lines))
                with open(self.path, "ab") as f:  # a whole last line that only lacks its newline
                    f.write(b"\n")
        return entries

    def _parse(self, line: bytes, number: int) -> dict:
        try:
            entry = json.loads(line)
            for name in ("a", "b", "loss", "val_loss", "epochs"):
                float(entry[name])
            bool(entry["diverged"])
        except (ValueError, KeyError, TypeError):
            raise InputError(f"journal {self.path} line {number} is not a journal entry: {line[:80]!r}") from None
        return entry

    def _add(self, entries: dict, entry: dict, number: int) -> None:
        if entry.get("problem") != self.problem:
            raise InputError(f"journal {self.path} line {number} was written for another problem (data, head or "
                             "hyper-parameters other than lr/reg differ): use a new journal file")
        entries[_key((entry["a"], entry["b"]))] = entry

    def append(self, evaluation: Evaluation) -> None:
        entry = dict(a=evaluation.a, b=evaluation.b, lr=evaluation.lr, reg=evaluation.reg, loss=evaluation.loss,
                     val_loss=evaluation.val_loss, epochs=evaluation.epochs, diverged=evaluation.diverged,
                     round=evaluation.round, optimizer=evaluation.optimizer, time=evaluation.time,
                     problem=self.problem)
        with open(self.path, "a") as f:
            f.write(json.dumps(entry) + "\n")
            f.flush()


class _Evaluator:
    """The gate's bookkeeping: cache, budget, history, journal, and training a round's new points."""

    def __init__(self, head, train, val, hyp, backend, max_evals, max_time, journal: Journal | None):
        self.head, self.train, self.val, self.hyp, self.backend = head, train, val, hyp, backend
        self.problem = None  # the prepared problem, shared by every batch of the run
        self.max_evals, self.max_time = max_evals, max_time
        self.journal = journal
        self.journaled = journal.load() if journal else {}
        self.cache: dict[tuple[float, float], Evaluation] = {}
        self.history: list[Evaluation] = []
        self.n_batches = 0
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def run_round(self, requests: dict[int, list]) -> dict[int, list[float] | None]:
        """One round: the values of every parked request, or None for an optimizer that must stop.

        The round's points that neither this run nor the journal has evaluated train as one
        batch.  Requests are taken in optimizer order, so which one falls over the budget does not
        depend on thread timing, and a resumed run replays the rounds of the interrupted one.
        The first round always runs; later ones only before ``max_time``.
        """
        if self.history and self.elapsed() >= self.max_time:
            return {opt_id: None for opt_id in requests}
        replies, fresh = {}, {}  # fresh: key -> (point, optimizer) not yet evaluated by this run
        for opt_id in sorted(requests):
            points = requests[opt_id]
            new = {}
            for p in points:
                k = _key(p)
                if k not in self.cache and k not in fresh and k not in new:
                    new[k] = (p, opt_id)
            if len(self.history) + len(fresh) + len(new) > self.max_evals:
                replies[opt_id] = None
                continue
            fresh.update(new)
            replies[opt_id] = points
        if fresh:
            self._evaluate(fresh)
        return {opt_id: None if points is None else [self.cache[_key(p)].loss for p in points]
                for opt_id, points in replies.items()}

    def _evaluate(self, fresh: dict) -> None:
        from_journal = [k for k in fresh if k in self.journaled]
        to_train = [k for k in fresh if k not in self.journaled]
        for k in from_journal:
            e = self.journaled[k]
            self._record(Evaluation(float(e["a"]), float(e["b"]), float(e["loss"]), float(e["val_loss"]),
                                    int(e["epochs"]), bool(e["diverged"]), self.n_batches, fresh[k][1],
                                    self.elapsed(), trained=False), k)
        if not to_train:
            return
        points = [fresh[k][0] for k in to_train]
        t0 = time.perf_counter()
        if self.problem is None:  # prepared once per tuning run, on its first batch
            self.problem = prepare(self.head, self.train, self.val, self.hyp, self.backend)
        probes = run_probes(self.problem, [lr_from_a(p[0]) for p in points], [reg_from_b(p[1]) for p in points],
                            self.hyp)
        for k, point, probe in zip(to_train, points, probes):
            diverged = probe.diverged or not math.isfinite(probe.best_val_loss)
            penalty = 2.0 * probe.history[0][1] + 1.0  # the init's loss: shared by every probe
            loss = penalty if diverged else probe.best_val_loss
            evaluation = Evaluation(float(point[0]), float(point[1]), float(loss), float(probe.best_val_loss),
                                    int(probe.best_epoch), diverged, self.n_batches, fresh[k][1], self.elapsed())
            self._record(evaluation, k)
            if self.journal:
                self.journal.append(evaluation)
        self.n_batches += 1
        log.info("tune batch %d: trained %d points in %.2f s (%d evaluations, best %.6g)", self.n_batches, len(points),
                 time.perf_counter() - t0, len(self.history), min(e.loss for e in self.history))

    def _record(self, evaluation: Evaluation, key) -> None:
        self.cache[key] = evaluation
        self.history.append(evaluation)


class _Gate:
    """Where optimizer threads park their points until the tuning thread answers them."""

    def __init__(self, opt_ids):
        self.cond = threading.Condition()
        self.live = set(opt_ids)
        self.requests: dict[int, list] = {}  # parked, not yet answered
        self.replies: dict[int, list[float] | None] = {}
        self.stopped = False

    def evaluate(self, opt_id: int, points: list) -> list[float] | None:
        """Called from an optimizer thread: park, wait for the answer, return the values (None:
        stop)."""
        with self.cond:
            if self.stopped:
                return None
            self.requests[opt_id] = points
            self.cond.notify_all()
            while opt_id not in self.replies:
                self.cond.wait()
            return self.replies.pop(opt_id)

    def leave(self, opt_id: int) -> None:
        with self.cond:
            self.live.discard(opt_id)
            self.cond.notify_all()

    def all_parked(self) -> dict[int, list] | None:
        """Called from the tuning thread: wait until every live optimizer is parked and return the
        parked requests (None once all optimizers have left)."""
        with self.cond:
            while len(self.requests) < len(self.live):
                self.cond.wait()
            return dict(self.requests) if self.live else None

    def release(self, replies: dict) -> None:
        with self.cond:
            for opt_id in replies:
                del self.requests[opt_id]
            self.replies.update(replies)
            self.cond.notify_all()

    def stop(self) -> None:
        """End every optimizer: parked ones now, the others at their next request."""
        with self.cond:
            self.stopped = True
            self.replies.update({opt_id: None for opt_id in self.requests})
            self.requests.clear()
            self.cond.notify_all()


def _fd_points(x: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """``(dimension i, x +- h e_i)`` for the finite-difference points that lie inside the bounds."""
    out = []
    for i in range(len(x)):
        h = FD_STEP * (upper[i] - lower[i])
        for y_i in (x[i] + h, x[i] - h):
            if lower[i] <= y_i <= upper[i]:
                y = x.copy()
                y[i] = y_i
                out.append((i, y))
    return out


def _objective(gate: _Gate, opt_id: int, opt, lower: np.ndarray, upper: np.ndarray):
    def objective(x, grad):
        x = np.array(x, dtype=np.float64)
        fd = _fd_points(x, lower, upper) if grad.size else []
        values = gate.evaluate(opt_id, [tuple(x)] + [tuple(y) for _, y in fd])
        if values is None:
            # Not ``raise nlopt.ForcedStop``: nlopt 2.11's binding sometimes turns an exception
            # raised here into a SystemError.  The value returned with force_stop is never used.
            opt.force_stop()
            return sys.float_info.max
        for i in range(grad.size):
            # Central difference from x + h and x - h; at a bound, one-sided with x itself.
            samples = [(y[i], v) for (j, y), v in zip(fd, values[1:]) if j == i]
            if len(samples) < 2:
                samples.append((x[i], values[0]))
            (x1, f1), (x2, f2) = samples
            grad[i] = (f1 - f2) / (x1 - x2)
        return float(values[0])

    return objective


def _algorithm(name: str) -> int:
    """NLopt's code for ``name``; InputError when unknown or not usable on its own."""
    nlopt = _nlopt()
    is_name = isinstance(name, str) and name.startswith(("LN_", "LD_", "GN_", "GD_", "G_", "AUGLAG"))
    code = getattr(nlopt, name, None) if is_name else None  # nlopt also has int result codes: not algorithms
    if not isinstance(code, int):
        raise InputError(f"unknown NLopt algorithm {name!r}: expected a name such as 'LN_BOBYQA', 'LN_SBPLX', "
                         "'GN_DIRECT_L' or 'LD_LBFGS'")
    trial = nlopt.opt(code, 2)  # catches algorithms this build lacks or that need a subsidiary optimizer
    trial.set_lower_bounds([-1.0, -1.0])
    trial.set_upper_bounds([1.0, 1.0])
    trial.set_min_objective(lambda x, grad: float(x[0] ** 2 + x[1] ** 2))
    trial.set_maxeval(3)
    try:
        trial.optimize([0.5, 0.5])
    except nlopt.RoundoffLimited:
        pass
    except nlopt.invalid_argument:
        raise InputError(f"NLopt algorithm {name!r} cannot run on its own here "
                         "(it needs a subsidiary optimizer, or this NLopt build lacks it)") from None
    return code


def _check_bounds(bounds) -> tuple[np.ndarray, np.ndarray]:
    array = np.asarray(bounds, dtype=np.float64)
    if array.shape != (2, 2) or not np.all(np.isfinite(array)):
        raise InputError(f"bounds must be finite ((a_lo, a_hi), (b_lo, b_hi)), got {bounds!r}")
    if not np.all(array[:, 0] < array[:, 1]):
        raise InputError(f"bounds must have lo < hi for a and for b, got {bounds!r}")
    return array[:, 0].copy(), array[:, 1].copy()


def space_filling(n: int, lower: np.ndarray, upper: np.ndarray, seed: int) -> np.ndarray:
    """``n`` points ``[n, 2]`` of a Halton sequence (bases 2 and 3) in the box, shifted by a random
    offset modulo 1 (a Cranley-Patterson rotation, deterministic in ``seed``)."""
    unit = np.empty((n, 2))
    for dim, base in enumerate((2, 3)):
        for i in range(n):
            index, fraction, value = i + 1, 1.0, 0.0
            while index:  # radical inverse: the digits of i + 1 in ``base``, mirrored after the point
                fraction /= base
                index, digit = divmod(index, base)
                value += digit * fraction
            unit[i, dim] = value
    unit = (unit + np.random.default_rng(seed).random(2)) % 1.0
    return lower + unit * (upper - lower)


def tune(head: Head, train: Ratings, val: Ratings, hyp: HyperParams, *, max_evals: int = 64,
         max_time: float = 3600.0, algorithm: str = "LN_BOBYQA", n_starts: int = 8, bounds=DEFAULT_BOUNDS,
         starts=None, space_filling_first_batch: bool = True, journal=None, backend="auto",
         seed: int = 0) -> TuneResult:
    """Find ``(a, b)`` minimising the best validation loss of a probe with ``lr = 1e-3 * 10**a``,
    ``reg = 1e-5 * 10**b`` (early stopping as set by ``hyp``: a checkpoint every
    ``hyp.epochs_per_checkpoint`` epochs, ``hyp.patience``, ``hyp.max_epochs``).

    The default algorithm is LN_BOBYQA: the objective has no gradient, is cheap to model (two
    smooth-ish dimensions), and BOBYQA's quadratic model respects the bounds and needs only
    ``2n + 1 = 5`` points to start, so each start makes progress within a few rounds.  Any NLopt
    algorithm can be named; see the module docstring for how the lock-step gate works.

    Args:
        head, train, val: the frozen item side and ratings of the same users (``val`` is what the
            probes early-stop on and what is minimised: the item side must not have seen it).
        hyp: everything but lr and reg.
        max_evals: distinct points evaluated in all (space-filling batch and finite-difference
            points included); ``>= 1``.
        max_time: seconds; no batch starts after it (but the first; the running one finishes).
        algorithm: an NLopt algorithm name (``LN_*``, ``GN_*``; ``LD_*`` / ``GD_*`` get finite
            differences).  Deterministic global ones (``GN_DIRECT*``) ignore the start, so their
            starts ask for the same points: evaluated once, one point per batch.
        n_starts: optimizers run in lock-step (each round trains up to ``n_starts`` points).
        bounds: ``((a_lo, a_hi), (b_lo, b_hi))``.
        starts: explicit starting points ``[(a, b), ...]``; when given they are used as they are
            (``n_starts`` is their count, no space-filling batch).
        space_filling_first_batch: train ``2 * n_starts`` points first ((0, 0) and a shifted
            Halton design) and start the optimizers from the best ``n_starts`` of them; otherwise
            start from (0, 0) and ``n_starts - 1`` Halton points.  Either way the default starts
            lie one initial step (``INITIAL_STEP``) inside the bounds.
        journal: path of a JSONL journal to append to and resume from.
        backend: backend name or instance used for every batch.
        seed: seeds the Halton design and stochastic NLopt algorithms (``hyp.seed`` seeds training).

    Returns a ``TuneResult``.  Raises InputError for bad arguments.
    """
    code = _algorithm(algorithm)
    lower, upper = _check_bounds(bounds)
    if not isinstance(max_evals, (int, np.integer)) or max_evals < 1:
        raise InputError(f"max_evals must be an integer >= 1, got {max_evals!r}")
    if not max_time > 0:
        raise InputError(f"max_time must be > 0 seconds, got {max_time!r}")
    check_training_inputs(head, train, val)
    if starts is not None:
        starts = np.asarray(starts, dtype=np.float64).reshape(-1, 2) if len(starts) else np.zeros((0, 2))
        if len(starts) == 0 or not np.all((starts >= lower) & (starts <= upper)):
            raise InputError(f"starts must be a non-empty list of (a, b) inside the bounds, got {starts.tolist()}")
    elif not isinstance(n_starts, (int, np.integer)) or n_starts < 1:
        raise InputError(f"n_starts must be an integer >= 1, got {n_starts!r}")

    problem = problem_fingerprint(head, train, val, hyp)
    evaluator = _Evaluator(head, train, val, hyp, backend, int(max_evals), float(max_time),
                           Journal(journal, problem) if journal is not None else None)
    # Each optimizer's first trust region is about the spacing between starts, so that the starts
    # explore their own neighbourhoods instead of each re-covering the whole box.
    step = INITIAL_STEP * (upper - lower) / math.sqrt(n_starts if starts is None else len(starts))
    if starts is None:
        # Default starts lie at least one step inside the bounds, where BOBYQA does not move them:
        # an optimizer's first point is then its start, already evaluated in the first batch.
        inner_lower, inner_upper = lower + step, upper - step
        origin = np.clip(np.zeros(2), inner_lower, inner_upper)
        n_candidates = SPACE_FILLING_FACTOR * n_starts if space_filling_first_batch else n_starts
        candidates = np.vstack([origin, space_filling(n_candidates - 1, inner_lower, inner_upper, seed)])
        if space_filling_first_batch:
            candidates = candidates[:max_evals]
            losses = evaluator.run_round({-1: [tuple(p) for p in candidates]})[-1]
            starts = candidates[np.argsort(losses, kind="stable")[:n_starts]]
        else:
            starts = candidates

    _run_lock_step(evaluator, code, starts, lower, upper, step, seed)
    best = min(evaluator.history, key=lambda e: e.loss)
    return TuneResult(best.a, best.b, best.lr, best.reg, best.loss, best.epochs,
                      hyp.replace(learning_rate=best.lr, regularization=best.reg),
                      evaluator.history, evaluator.n_batches)


def _run_lock_step(evaluator: _Evaluator, code: int, starts: np.ndarray, lower, upper, step, seed: int) -> None:
    """One NLopt optimizer per start in its own thread; this thread runs the gate's rounds."""
    nlopt = _nlopt()
    gate = _Gate(range(len(starts)))
    errors: list[BaseException] = []

    def run(opt_id: int, start: np.ndarray) -> None:
        try:
            nlopt.srand(seed + opt_id)  # per-thread generator of the stochastic algorithms
            opt = nlopt.opt(code, 2)
            opt.set_lower_bounds(lower.tolist())
            opt.set_upper_bounds(upper.tolist())
            opt.set_min_objective(_objective(gate, opt_id, opt, lower, upper))
            opt.set_maxeval(evaluator.max_evals)
            opt.set_xtol_abs(XTOL_ABS)
            opt.set_initial_step(step.tolist())
            opt.optimize(start.tolist())
        except (nlopt.ForcedStop, nlopt.RoundoffLimited):
            pass  # stopped by the gate, or converged as far as floating point allows
        except nlopt.runtime_error:  # NLOPT_FAILURE, e.g. a gradient method's line search gave up
            log.warning("tune: optimizer %d (%s) ended with an NLopt failure", opt_id, nlopt.algorithm_name(code))
        except BaseException as exc:  # re-raised in the tuning thread
            errors.append(exc)
        finally:
            gate.leave(opt_id)

    threads = [threading.Thread(target=run, args=(i, s), name=f"tune-optimizer-{i}", daemon=True)
               for i, s in enumerate(starts)]
    for thread in threads:
        thread.start()
    try:
        while (requests := gate.all_parked()) is not None:
            gate.release(evaluator.run_round(requests))
    finally:
        gate.stop()
        for thread in threads:
            thread.join()
    if errors:
        raise errors[0]
