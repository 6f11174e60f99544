"""Tune ``lr = 1e-3 * 10**a`` and ``reg = 1e-5 * 10**b`` with NLopt, a probe batch as wide as the hardware.

The probe trainer trains ``width`` configurations for little more than the price of a few (64 on
two CPU cores, 256 on a GPU: docs/benchmarks.md), so a search should ask for many points at once.
NLopt asks for one point at a time, so ``tune`` runs:

1. a *space-filling batch*: (0, 0) and a shifted Halton design, up to ``width`` points (a quarter
   of ``max_evals`` at most), trained as ONE probe batch; its probes that can neither be among
   the best ``ZOOM_BEST`` share nor within ``START_MARGIN`` of the best stop early
   (``retrain.trainer.Pruning``: the plateaus of too-small lr or too-strong reg, which would train
   to ``max_epochs``), as do those of the zoomed batch that cannot come within ``START_MARGIN``
   of the best: neither the zoomed box nor the starts depend on their values, so the search is
   the one without pruning (``Evaluation.pruned`` marks them; their loss is their best so far);
2. a *zoomed batch*: a second Halton design of twice as many points (half of ``max_evals``, up
   to ``width``; fewer where that would leave no room for one search) over the box of the best
   15 % of the first batch, widened by one trust radius on each side.  The optimum of a tuning
   problem lies in a narrow, long valley (lr against reg) whose floor early stopping makes bumpy
   at the 0.1 % level (the best epoch jumps by a checkpoint); a design over the whole box lands a
   few points on that floor, the zoomed one several times as many;
3. NLopt *local searches* (BOBYQA by default), each from the best point evaluated so far that no
   better point and no earlier start lies within one first trust radius of (half the zoomed
   batch's spacing), as long as such a point is within ``START_MARGIN`` of the best; in
   lock-step, each in its own thread: an objective call parks its point(s) at a gate; when every
   live search is parked, the thread that called ``tune`` trains all parked points as one probe
   batch and hands each search its value.  A run whose searches have converged with no such
   start left, or with too few evaluations left for another search, ends under ``max_evals``;
4. every round is *filled* towards ``width``: a search's *opening* (the points its algorithm asks
   for before any value can steer it, e.g. BOBYQA's 2n + 1 = 5 interpolation points, found by two
   dry runs of the algorithm on different functions) trains in the round it starts, and new
   searches start, from the points the searches found too, while the budget leaves each live
   search room to move;
5. a search whose best value, once its opening is answered, is worse than the run's best point
   by more than ``PRUNE_MARGIN`` ends (its steps would buy little), and when the budget runs short
   the best searches' requests are served first.

Training runs in the calling thread (CUDA context, exceptions and Ctrl-C stay where the user is);
the optimizer threads only block on the gate's condition variable, which releases the GIL, so
nlopt's Python binding works from threads (checked with nlopt 2.11).

Rules, applied in a fixed order so that a run is deterministic:
* points equal to ``KEY_DIGITS`` decimals are evaluated once; points the journal of an earlier
  run holds are read from it, not trained; a round whose points are all known trains nothing;
* ``max_evals`` counts the distinct points this run evaluates (trained or read from the journal),
  both space-filling batches, openings and finite-difference points included; a request that would
  go over it ends its search (``opt.force_stop()``);
* ``max_time`` is checked at every checkpoint of a batch (``run_probes(deadline=...)``): probes
  the clock stops are not finished, are not counted, not cached and not journaled, and the searches
  that asked for them end; no batch starts after it;
* a probe that diverges scores the finite penalty ``2 * L0 + 1``, where ``L0`` is the validation
  loss of the untrained init (the same for every probe: they share the init).  A probe that does
  not diverge scores at most ``L0`` (its checkpoints include epoch 0), so the penalty is worse
  than every real value and NLopt never sees NaN or inf.  When ``L0`` itself is not finite (the
  head's predictions overflow on these ratings), every probe diverges at epoch 0 and scores
  ``FLOAT32_MAX``.  When every point diverged the result says so (``TuneResult.all_diverged``) and
  carries no validation loss;
* gradient-based algorithms (``LD_*``, ``GD_*``) get central finite differences with a step of
  ``FD_STEP`` of each bound's range (one-sided at a bound); those points train in the same batch
  as the point itself.

The journal is JSONL, a header line and then one line per finished point, flushed as it is
written, and locked (``fcntl.flock``) for the length of a run: a second run on the same journal is
refused.  Each line carries a fingerprint of the problem (data, head, hyper-parameters other than
lr/reg; not the backend), checked for every line on load, so that a journal is never resumed
against other data; the header says how the fingerprints were made (``FINGERPRINT_VERSION``), and
a journal of another version, one of an older retrain included, is refused.  A run given the
journal of an interrupted run with the same arguments replays the journal's points without
training and then goes on: it ends where an uninterrupted run would have ended.
"""
from __future__ import annotations

import dataclasses
import fcntl
import functools
import hashlib
import json
import logging
import math
import numbers
import os
import sys
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from .backends import get_backend
from .backends.base import validation_weight
from .contract import FLOAT32_MAX, MAX_SEED
from .errors import C_INT_MAX, InputError, check_bool, check_float, check_int
from .data import Ratings
from .heads import Head
from .files import check_writable
from .hyperparams import HyperParams, check_hyperparams, lr_from_a, reg_from_b
from .trainer import (Pruning, check_training_inputs, check_validation, default_memory_budget, memory_group, prepare,
                      run_probes)

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
XTOL_ABS = 1e-3  # a search stops when its steps in (a, b) fall below this (0.2 % of lr or reg) ...
FTOL_REL = 1e-4  # ... or change its value by less than this share: early stopping's bumps are ten times larger
INITIAL_STEP = 0.25  # first trust radius of K explicit starts, as a fraction of the range / sqrt(K)
MAX_EVALS = C_INT_MAX  # tune's max_evals: NLopt counts evaluations in a C int (set_maxeval raised OverflowError)
FIRST_BATCH_SHARE = 0.25  # the space-filling batch spends at most this share of max_evals
ZOOM_SHARE = 0.5  # the zoomed batch over the best first-batch points spends this share of max_evals:
# one wide batch costs less than the search rounds it replaces, and on seeds 0-19 of the benchmark's two
# data sets it lost to TPE as often or less than 0.25 did (docs/benchmarks.md, "Tuner", round 7)
ZOOM_BEST = 0.15  # the zoomed batch covers the box of this share of the best first-batch points ...
# ... widened by one first trust radius on each side
START_MARGIN = 0.005  # a search starts only from a point at most this share worse than the best point:
# a start farther behind ends after its opening (PRUNE_MARGIN) unless the opening finds a point this close;
# 2 % gave the same or worse best losses on seeds 0-9 of the benchmark's two data sets, with more probe-epochs
PRUNE_MARGIN = 0.005  # after its opening, a search worse than the best point by this share ends
STEP_FACTOR = 0.5  # first trust radius of a search, in sample spacings of the batch it starts from
STEPS_RESERVED = 3  # evaluations a new search leaves, per live search, for their model steps
DRY_RUN_CALLS = 8  # the longest opening looked for
OPENING = 2 * 2 + 1  # BOBYQA's opening in two dimensions: what a new search is budgeted for
CPU_WIDTH, GPU_WIDTH = 64, 256  # default batch widths, measured (docs/benchmarks.md, "Tuner")
DEFAULT_BOUNDS = ((-2.0, 3.0), (-3.0, 5.0))  # a: lr from 1e-5 to 1; b: reg from 1e-8 to 1
# The widest bounds whose lr and reg float32 holds (retrain.backends.base.check_step_sizes): beyond, the
# batch raised mid-run (lr or reg inf) or trained a learning rate of 0 that let the init win.  Rounded
# inwards to 0.01: at the exact edge 10^a rounds past float32's largest number.
A_MAX = math.floor(100 * math.log10(FLOAT32_MAX / lr_from_a(0))) / 100
A_MIN = math.ceil(100 * math.log10(float(np.finfo(np.float32).smallest_subnormal) / lr_from_a(0))) / 100
B_MAX = math.floor(100 * math.log10(FLOAT32_MAX / reg_from_b(0))) / 100


@dataclass(frozen=True)
class Evaluation:
    """One evaluated point.

    ``loss`` is the value NLopt saw (the penalty when ``diverged``), ``val_loss`` the probe's best
    finite validation loss, ``epochs`` its best epoch, ``epochs_trained`` the epochs it trained
    (what it cost).  ``round`` is the index of the probe batch that trained it (0 is the first; for
    a point read from the journal, the number of batches trained before it), ``optimizer`` the
    local search that asked for it first (-1: the space-filling batches), ``time`` seconds since
    ``tune`` started when its probe finished (for a point read from the journal, when it was read;
    ``history`` is in batch order, not in time order), ``trained`` False when read from the
    journal, ``pruned`` True when training stopped it early because it could not matter
    (``retrain.trainer.Pruning``: ``val_loss`` is its best so far, no lower than its full value).
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
    pruned: bool = False
    epochs_trained: int = 0

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

    ``val_loss`` is the best point's validation loss, or ``inf`` when ``all_diverged`` (every
    evaluated point diverged: there is no usable point, and ``a``/``b`` are merely the first one
    tried); ``hyp`` is the input ``HyperParams`` with the tuned ``learning_rate`` /
    ``regularization``; ``epochs`` the best point's best epoch; ``n_batches`` the number of probe
    batches trained; ``bounds`` the search box ``((a_lo, a_hi), (b_lo, b_hi))``; ``at_bound`` names
    the bounds the best point sits on (within ``FD_STEP`` of the range), e.g. ``("b_hi",)``: the
    optimum may lie outside the box, widen it.
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
    bounds: tuple = DEFAULT_BOUNDS
    at_bound: tuple[str, ...] = ()
    all_diverged: bool = False

    @property
    def n_evals(self) -> int:
        return len(self.history)


def _key(point) -> tuple[float, float]:
    return (round(float(point[0]), KEY_DIGITS), round(float(point[1]), KEY_DIGITS))


FINGERPRINT_VERSION = 2
"""How ``problem_fingerprint`` hashes, recorded in a journal's header: 2 hashes each array's dtype
and shape before its bytes; 1 (journals without a header, before) hashed the bytes alone, so
arrays of other lengths or dtypes with the same bytes back to back hashed the same."""
JOURNAL_FORMAT = "retrain.tune-journal"


def problem_fingerprint(head: Head, train: Ratings, val: Ratings, hyp: HyperParams) -> str:
    """A short hash of everything a probe's loss depends on except (lr, reg).

    Each array is hashed with its dtype and shape before its bytes, so that no two different
    lists of arrays give the same stream (``FINGERPRINT_VERSION``).  A ``HeadLike`` other than
    ``Head`` is known by what it computes: its scores of every item for a few fixed embeddings,
    and its init's half-width (its parameters are its own business).  The backend is left out on
    purpose: a journal may be resumed on another backend, whose losses agree with this one's
    to float32 rounding (docs/semantics.md, "Determinism"), not bitwise.
    """
    digest = hashlib.sha256()
    arrays = [train.indptr, train.items, train.ratings, train.weights, train.user_ids,
              val.indptr, val.items, val.ratings, val.weights]
    settings = {k: v for k, v in hyp.to_dict().items() if k not in ("learning_rate", "regularization")}
    if isinstance(head, Head):
        arrays += [head.item_vectors.numpy(), head.item_bias.numpy()]
        arrays += [t.numpy() for layer in head.tower for t in (layer.weight, layer.bias)]
        settings.update(global_bias=head.global_bias, init=head.init,
                        activations=[layer.activation for layer in head.tower])
    else:  # it had no item_vectors: an AttributeError once a journal was given
        probe = torch.from_numpy(np.random.default_rng(0).uniform(-1, 1, (4, head.d)).astype(np.float32))
        with torch.no_grad():
            arrays.append(head.scores(probe, torch.arange(head.n_items)).detach().cpu().numpy())
        settings.update(init=head.init, init_scale=float(head.init_scale(hyp.num_users or train.n_users)))
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}{list(array.shape)}".encode())  # then exactly size * itemsize bytes
        digest.update(array.tobytes())
    digest.update(json.dumps(settings, sort_keys=True).encode())
    return digest.hexdigest()[:16]


class Journal:
    """Append-only JSONL record of finished points, locked while open.

    ``open()`` takes an exclusive advisory lock (``fcntl.flock``) on the file for as long as the
    journal is open (a second writer gets an InputError) and returns the entries keyed by point;
    ``append`` writes one line and flushes it; ``close()`` releases the lock.  The first line is a
    header, ``{"format": JOURNAL_FORMAT, "fingerprint_version": FINGERPRINT_VERSION}``, written when
    the journal is created; a journal of another version (one without a header: an older retrain)
    is refused, since its fingerprints cannot be compared with this version's.  On load, every
    entry must carry this problem's fingerprint; a last line cut short (a killed run) is dropped,
    and cut off the file so that the next line starts cleanly; a bad line anywhere else is an error.
    """

    def __init__(self, path, problem: str):
        self.path = os.fspath(path)
        self.problem = problem
        self._file = None

    def __enter__(self) -> "Journal":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def open(self) -> dict[tuple[float, float], dict]:
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        self._file = open(self.path, "a+b")
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.close()
            raise InputError(f"journal {self.path} is in use by another tuning run (it holds the file's lock): "
                             "wait for it to finish, or give this run another journal") from None
        try:
            return self._load()
        except BaseException:
            self.close()
            raise

    def load(self) -> dict[tuple[float, float], dict]:
        """The entries, read under the lock (which is released again unless the journal was open)."""
        if self._file is not None:
            return self._load()
        with self:
            return self.open()

    def _load(self) -> dict[tuple[float, float], dict]:
        self._file.seek(0)
        data = self._file.read()
        lines = data.split(b"\n")
        complete, tail = lines[:-1], lines[-1]  # ``tail`` is what follows the last newline
        if not complete:  # a new journal, or one killed while its header was written
            if self._check_header(tail, cut=True):  # a whole line without its newline
                self._write(b"\n")
            else:
                self._file.truncate(0)
                self._write((json.dumps({"format": JOURNAL_FORMAT, "fingerprint_version": FINGERPRINT_VERSION})
                             + "\n").encode())
            return {}
        self._check_header(complete[0])
        entries = {}
        for number, line in enumerate(complete[1:], start=2):
            if line.strip():
                self._add(entries, self._parse(line, number), number)
        if tail.strip():
            try:
                entry = self._parse(tail, len(lines))
            except ValueError:
                log.warning("journal %s: dropping a cut last line (%d bytes)", self.path, len(tail))
                self._file.truncate(len(data) - len(tail))
            else:
                self._add(entries, entry, len(lines))
                self._write(b"\n")  # a whole last line that only lacks its newline
        return entries

    def _check_header(self, line: bytes, *, cut: bool = False) -> bool:
        """True when ``line`` is this version's header, else InputError; with ``cut`` (the file's
        only bytes, without a newline), False when it is no JSON: a header a kill cut short (or
        nothing, a new journal).  The line is parsed once."""
        try:
            header = json.loads(line)
        except ValueError:
            if cut:
                return False
            header = None
        if isinstance(header, dict) and header.get("format") == JOURNAL_FORMAT:
            if header.get("fingerprint_version") != FINGERPRINT_VERSION:
                raise InputError(f"journal {self.path} was written with fingerprint version "
                                 f"{header.get('fingerprint_version')!r}, this retrain checks version "
                                 f"{FINGERPRINT_VERSION}: delete or rename it, or resume it with the retrain that "
                                 "wrote it")
            return True
        if isinstance(header, dict) and "problem" in header:  # an entry: journals had no header before version 2
            raise InputError(f"journal {self.path} was written by an older retrain, whose fingerprints of the problem "
                             "this version cannot check: delete or rename it (its points are then trained again)")
        raise InputError(f"journal {self.path} line 1 is not a tuning journal's header: {line[:80]!r}")

    def _parse(self, line: bytes, number: int) -> dict:
        try:
            entry = json.loads(line)
            for name in ("a", "b", "loss", "val_loss", "epochs"):
                float(entry[name])
            # A NaN loss won every comparison it took part in (the tuned point was NaN); the writer
            # never writes one (a diverged point's loss is the finite penalty), nor "false" as a flag.
            if not all(math.isfinite(float(entry[name])) for name in ("a", "b", "loss")) or \
                    not isinstance(entry["diverged"], bool):
                raise ValueError
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
                     pruned=evaluation.pruned, epochs_trained=evaluation.epochs_trained, problem=self.problem)
        self._write((json.dumps(entry) + "\n").encode())

    def _write(self, data: bytes) -> None:
        self._file.write(data)  # "a+b": always at the end
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()  # releases the lock
            self._file = None


class _Evaluator:
    """The gate's bookkeeping: cache, budgets, history, journal, and training a round's new points."""

    def __init__(self, head, train, val, hyp, backend, max_evals, max_time, journaled: dict,
                 journal: Journal | None, memory_budget: int | None = None):
        self.head, self.train, self.val, self.hyp, self.backend = head, train, val, hyp, backend
        self.memory_budget = memory_budget  # None: the device's default, read at each batch
        self.warned_groups = False
        self.problem = None  # the prepared problem, shared by every batch of the run
        self.max_evals, self.max_time = max_evals, max_time
        self.journal, self.journaled = journal, journaled
        self.cache: dict[tuple[float, float], Evaluation] = {}
        self.history: list[Evaluation] = []
        self.search_best: dict[int, float] = {}  # the best value each search has been answered
        self.answered: dict[int, int] = {}  # the requests each search has been answered
        self.n_batches = 0
        self.start = time.perf_counter()
        self.deadline = time.monotonic() + max_time

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    @property
    def left(self) -> int:
        """Evaluations the budget still allows."""
        return self.max_evals - len(self.history)

    def run_round(self, requests: dict[int, list], openings: dict[int, list] | None = None,
                  pruning: Pruning | None = None) -> dict[int, list[float] | None]:
        """One round: the values of every parked request, or None for a search that must stop.

        ``openings`` holds points to train along with a search's request (its opening): trained
        as far as the budget allows, never answered.  The round's points that neither this run nor
        the journal has evaluated train as one batch.  Requests are taken best search first (the
        best value each has been answered; ties by id), so that the budget's last points go to the
        most promising searches and which request falls over the budget does not depend on thread
        timing: a resumed run replays the rounds of the interrupted one.  A search more than
        ``PRUNE_MARGIN`` worse than the run's best point once its opening is answered is ended.
        No round starts after ``max_time``.  ``pruning`` (its ``known`` losses filled in from the
        points evaluated so far) stops the batch's probes that cannot matter early.
        """
        if time.monotonic() >= self.deadline:
            return {opt_id: None for opt_id in requests}
        openings = openings or {}
        replies, fresh = {}, {}  # fresh: key -> (point, search) not yet evaluated by this run
        best = min((e.loss for e in self.history), default=math.inf)
        for opt_id in sorted(requests, key=lambda i: (self.search_best.get(i, math.inf), i)):
            points = requests[opt_id]
            if self.answered.get(opt_id, 0) >= OPENING and \
                    self.search_best[opt_id] > best + PRUNE_MARGIN * abs(best):
                replies[opt_id] = None  # a search left behind: its steps would buy little
                continue
            new = self._unknown(points, fresh, opt_id)
            if len(self.history) + len(fresh) + len(new) > self.max_evals:
                replies[opt_id] = None
                continue
            fresh.update(new)
            replies[opt_id] = points
        for opt_id in sorted(openings):
            if replies.get(opt_id) is None:
                continue
            for k, value in self._unknown(openings[opt_id], fresh, opt_id).items():
                if len(self.history) + len(fresh) < self.max_evals:
                    fresh[k] = value
        if fresh:
            self._evaluate(fresh, pruning)
        answers = {}
        for opt_id, points in replies.items():
            if points is not None and all(_key(p) in self.cache for p in points):
                answers[opt_id] = [self.cache[_key(p)].loss for p in points]
                self.search_best[opt_id] = min(self.search_best.get(opt_id, math.inf), *answers[opt_id])
                self.answered[opt_id] = self.answered.get(opt_id, 0) + 1
            else:
                answers[opt_id] = None
        return answers

    def _unknown(self, points, fresh: dict, opt_id: int) -> dict:
        new = {}
        for p in points:
            k = _key(p)
            if k not in self.cache and k not in fresh and k not in new:
                new[k] = (tuple(p), opt_id)
        return new

    def _evaluate(self, fresh: dict, pruning: Pruning | None) -> None:
        # A pruned entry's loss is an upper bound, good only for a round that prunes (whose search
        # does not depend on it): another search resuming the journal (other bounds, seed or
        # starts) would take it as the point's loss.  It trains again there.
        usable = {k for k in fresh if k in self.journaled and (pruning is not None or
                                                                not self.journaled[k].get("pruned", False))}
        done = {k: self._from_journal(k, fresh[k][1]) for k in fresh if k in usable}
        to_train = [k for k in fresh if k not in usable]
        if to_train:
            self._train(fresh, to_train, done, pruning)
        for k in fresh:  # in the batch's order, journaled or not: a resumed run replays the rounds
            if k in done:
                self._record(done[k], k)

    def _from_journal(self, key, search: int) -> Evaluation:
        e = self.journaled[key]
        return Evaluation(float(e["a"]), float(e["b"]), float(e["loss"]), float(e["val_loss"]), int(e["epochs"]),
                          bool(e["diverged"]), self.n_batches, search, self.elapsed(), trained=False,
                          pruned=bool(e.get("pruned", False)), epochs_trained=int(e.get("epochs_trained", 0)))

    def _train(self, fresh: dict, to_train: list, done: dict, pruning: Pruning | None) -> None:
        """Train the points ``to_train`` of the batch ``fresh`` into ``done`` (key -> Evaluation),
        each journaled as soon as its probe finishes.  With ``pruning``, the batch's points in
        ``done`` already (journaled by an interrupted run) count towards its target from the epoch
        they stopped at, as they did when they trained beside the others.

        The batch trains in the memory groups ``run_probes`` would make of all its points, those in
        ``done`` included, so that a resumed batch's points train beside those they trained beside
        in the whole batch, and a group's pruning knows the final losses of the groups before it."""
        t0 = time.perf_counter()
        if self.problem is None:  # prepared once per tuning run, on its first batch
            self.problem = prepare(self.head, self.train, self.val, self.hyp, self.backend)
        budget = self.memory_budget or default_memory_budget(self.problem.device)
        group = memory_group(self.problem, False, budget)
        batch, untrained = list(fresh), set(to_train)
        if pruning is not None and group < len(batch) and not self.warned_groups:
            self.warned_groups = True
            log.warning("tune: a pruned batch of %d points trains in memory groups of %d (memory budget %.3g bytes): "
                        "which points are pruned depends on the group size, so this result depends on the budget; "
                        "pass memory_budget= (the same on every machine) to reproduce it", len(batch), group, budget)

        def final(k) -> bool:  # a finished point's loss (not a pruned one's bound, not a penalty)
            return k in done and not (done[k].pruned or done[k].diverged)

        known = tuple(e.loss for e in self.history)
        for first in range(0, len(batch), group):
            members = batch[first:first + group]
            journaled = [done[k] for k in members if k not in untrained and final(k)]
            group_pruning = None if pruning is None else dataclasses.replace(
                pruning, known=known, known_at=tuple((e.epochs_trained, e.loss) for e in journaled))
            self._train_group(fresh, [k for k in members if k in untrained], done, group_pruning, budget)
            known += tuple(done[k].loss for k in members if final(k))
        self.n_batches += 1
        unfinished = sum(k not in done for k in to_train)  # stopped by max_time: their losses are not the points'
        best = min([e.loss for e in self.history] + [e.loss for e in done.values()], default=math.nan)
        log.info("tune batch %d: trained %d points in %.2f s (%d evaluations, best %.6g)", self.n_batches,
                 len(to_train), time.perf_counter() - t0, len(self.history) + len(done), best)
        if unfinished:
            log.warning("tune: max_time = %g s ran out during batch %d: %d of its %d points did not finish "
                        "(not counted)", self.max_time, self.n_batches, unfinished, len(to_train))

    def _train_group(self, fresh: dict, to_train: list, done: dict, pruning: Pruning | None, budget: int) -> None:
        """One ``run_probes`` call for the points ``to_train`` of a memory group."""
        if not to_train:
            return
        points = [fresh[k][0] for k in to_train]

        def finished(index: int, probe) -> None:
            k, point = to_train[index], points[index]
            diverged = probe.diverged or not math.isfinite(probe.best_val_loss)
            penalty = 2.0 * probe.history[0][1] + 1.0  # the init's loss: shared by every probe
            if not math.isfinite(penalty):  # the init's loss is not finite: every probe diverged at epoch 0
                penalty = FLOAT32_MAX  # finite, and small enough for BOBYQA's squares
            done[k] = Evaluation(float(point[0]), float(point[1]), float(penalty if diverged else probe.best_val_loss),
                                 float(probe.best_val_loss), int(probe.best_epoch), diverged, self.n_batches,
                                 fresh[k][1], self.elapsed(), pruned=probe.stop_reason == "pruned",
                                 epochs_trained=probe.epochs_trained)
            if self.journal:
                self.journal.append(done[k])

        run_probes(self.problem, [lr_from_a(p[0]) for p in points], [reg_from_b(p[1]) for p in points], self.hyp,
                   memory_budget=budget, deadline=None if math.isinf(self.deadline) else self.deadline,
                   pruning=pruning, on_finish=finished)

    def _record(self, evaluation: Evaluation, key) -> None:
        self.cache[key] = evaluation
        self.history.append(evaluation)


class _Gate:
    """Where optimizer threads park their points until the tuning thread answers them."""

    def __init__(self):
        self.cond = threading.Condition()
        self.live: set[int] = set()
        self.requests: dict[int, list] = {}  # parked, not yet answered
        self.replies: dict[int, list[float] | None] = {}
        self.stopped = False

    def join(self, opt_id: int) -> None:
        """Register a search before its thread starts, so that rounds wait for its first request."""
        with self.cond:
            self.live.add(opt_id)

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

    def all_parked(self) -> dict[int, list]:
        """Called from the tuning thread: wait until every live search is parked and return the
        parked requests (empty once all searches have left)."""
        with self.cond:
            while len(self.requests) < len(self.live):
                self.cond.wait()
            return dict(self.requests)

    def release(self, replies: dict) -> None:
        with self.cond:
            for opt_id in replies:
                del self.requests[opt_id]
            self.replies.update(replies)
            self.cond.notify_all()

    def stop(self) -> None:
        """End every search: parked ones now, the others at their next request."""
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


def check_bounds(bounds) -> tuple[np.ndarray, np.ndarray]:
    """``(lower [2], upper [2])`` of ``bounds = ((a_lo, a_hi), (b_lo, b_hi))``; InputError unless
    finite with lo < hi."""
    try:
        array = np.asarray(bounds, dtype=np.float64)
    except (TypeError, ValueError):
        array = np.zeros(0)
    if array.shape != (2, 2) or not np.all(np.isfinite(array)):
        raise InputError(f"bounds must be finite ((a_lo, a_hi), (b_lo, b_hi)), got {bounds!r}")
    if not np.all(array[:, 0] < array[:, 1]):
        raise InputError(f"bounds must have lo < hi for a and for b, got {bounds!r}")
    (a_lo, a_hi), (_, b_hi) = array
    if a_hi > A_MAX or b_hi > B_MAX or a_lo < A_MIN:
        raise InputError(f"bounds must keep lr = 1e-3 * 10^a and reg = 1e-5 * 10^b inside float32's range, the step's "
                         f"(a in [{A_MIN:.2f}, {A_MAX:.2f}], b <= {B_MAX:.2f}), got {bounds!r}")
    return array[:, 0].copy(), array[:, 1].copy()


def check_starts(starts, lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """``starts = [(a, b), ...]`` as float64 ``[n, 2]``; InputError unless non-empty and inside the
    bounds (a ragged list, a string or a scalar used to raise numpy's error)."""
    try:
        array = np.asarray(starts, dtype=np.float64)
    except (TypeError, ValueError):
        array = np.zeros(0)
    if array.ndim == 1 and array.shape == (2,):
        array = array[None]  # one point given as (a, b)
    if array.ndim != 2 or array.shape[1:] != (2,) or len(array) == 0 or \
            not np.all((array >= lower) & (array <= upper)):
        box = tuple((float(lo), float(hi)) for lo, hi in zip(lower, upper))  # not numpy 2's np.float64(...) reprs
        raise InputError(f"starts must be a non-empty list of (a, b) inside the bounds {box}, got {starts!r}")
    return array


def default_width(backend="auto") -> int:
    """Points per probe batch that cost little more than a few on ``backend``'s device:
    ``GPU_WIDTH`` on a CUDA device, ``CPU_WIDTH`` otherwise (measured: docs/benchmarks.md)."""
    device = getattr(backend, "device", None)
    if device is None:
        device = get_backend(backend).device
    return GPU_WIDTH if device.type == "cuda" else CPU_WIDTH


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


def zoom_count(n: int) -> int:
    """How many of ``n`` first-batch points span the zoomed box: the best ``ZOOM_BEST`` share, two at least."""
    return max(2, math.ceil(ZOOM_BEST * n))


def zoom_box(points: np.ndarray, losses: np.ndarray, pad: np.ndarray, lower: np.ndarray, upper: np.ndarray):
    """``(lower [2], upper [2])``: the bounding box of the best ``ZOOM_BEST`` share of ``points
    [n, 2]`` (two at least; ties: first), widened by ``pad [2]`` on each side, within the bounds."""
    best = points[np.argsort(losses, kind="stable")[:zoom_count(len(points))]]
    return np.maximum(best.min(axis=0) - pad, lower), np.minimum(best.max(axis=0) + pad, upper)


def next_start_point(points: np.ndarray, losses: np.ndarray, taken: np.ndarray, step: np.ndarray):
    """The next local search's start: the best of ``points [n, 2]`` (ties: first) that no better
    point and no earlier start (``taken [k, 2]``) lies within one ``step [2]`` of (distances per
    axis in steps), or None when every such point is more than ``START_MARGIN`` worse than the best
    point (a search from it would buy little: ``PRUNE_MARGIN``)."""
    if not len(points):
        return None
    best = float(losses.min())
    scaled = points / step
    for i in np.argsort(losses, kind="stable"):
        if losses[i] > best + START_MARGIN * abs(best):
            return None
        near = np.linalg.norm(scaled - scaled[i], axis=1) < 1.0
        if np.any(near & (losses < losses[i])) or np.any(np.linalg.norm(taken / step - scaled[i], axis=1) < 1.0):
            continue
        return points[i].copy()
    return None


class Starts:
    """The searches' starts, one per call (None: no more): ``next_start_point`` of the points
    evaluated so far (``history``, a live list of ``Evaluation``) and the starts taken, clipped
    into the box ``[inner_lower, inner_upper]`` that BOBYQA keeps starts in."""

    def __init__(self, history: list, step: np.ndarray, inner_lower: np.ndarray, inner_upper: np.ndarray):
        self.history, self.step, self.inner_lower, self.inner_upper = history, step, inner_lower, inner_upper
        self.taken: list[np.ndarray] = []

    def __call__(self) -> np.ndarray | None:
        found = next_start_point(np.array([e.point for e in self.history]).reshape(-1, 2),
                                 np.array([e.loss for e in self.history]), np.array(self.taken).reshape(-1, 2),
                                 self.step)
        if found is None:
            return None
        start = np.clip(found, self.inner_lower, self.inner_upper)
        # Both are taken: a point near the bounds (the zoomed batch reaches them) is clipped
        # farther than a step from itself, and would otherwise be chosen again and again (each
        # search from it costing nothing: its points are cached), never ending the run.
        self.taken.extend([found, start])
        return start


def _opening(code: int, start, lower, upper, step, seed: int) -> list[tuple[float, float]]:
    """The first points the algorithm asks for from ``start`` whatever the values (up to
    ``DRY_RUN_CALLS``): the common prefix of two dry runs on different functions."""
    nlopt = _nlopt()
    runs = []
    for f in (lambda x: (x[0] - 0.3) ** 2 + 2.0 * (x[1] + 0.7) ** 2, lambda x: math.sin(3.0 * x[0]) + x[1] ** 3):
        asked = []

        def objective(x, grad, f=f, asked=asked):
            asked.append(_key(x))
            grad[:] = 0.0
            return float(f(x))

        nlopt.srand(seed)
        opt = _configured(nlopt, code, lower, upper, step, DRY_RUN_CALLS)
        opt.set_min_objective(objective)
        try:
            opt.optimize(list(start))
        except (nlopt.RoundoffLimited, nlopt.runtime_error):
            pass
        runs.append(asked)
    prefix = []
    for p, q in zip(*runs):
        if p != q:
            break
        prefix.append(p)
    return prefix


def _configured(nlopt, code: int, lower, upper, step, max_evals: int):
    opt = nlopt.opt(code, 2)
    opt.set_lower_bounds(lower.tolist())
    opt.set_upper_bounds(upper.tolist())
    opt.set_maxeval(max_evals)
    opt.set_xtol_abs(XTOL_ABS)
    opt.set_ftol_rel(FTOL_REL)
    opt.set_initial_step(step.tolist())
    return opt


def tune(head: Head, train: Ratings, val: Ratings, hyp: HyperParams, *, max_evals: int = 64,
         max_time: float = 3600.0, algorithm: str = "LN_BOBYQA", n_starts: int | None = 8, width: int | None = None,
         bounds=DEFAULT_BOUNDS, starts=None, space_filling_first_batch: bool = True, journal=None, backend="auto",
         seed: int = 0, memory_budget: int | None = None) -> TuneResult:
    """Find ``(a, b)`` minimising the best validation loss of a probe with ``lr = 1e-3 * 10**a``,
    ``reg = 1e-5 * 10**b`` (early stopping as set by ``hyp``: a checkpoint every
    ``hyp.epochs_per_checkpoint`` epochs, ``hyp.patience``, ``hyp.max_epochs``).

    The default algorithm is LN_BOBYQA: the objective has no gradient, is cheap to model (two
    smooth-ish dimensions), and BOBYQA's quadratic model respects the bounds and needs only
    ``2n + 1 = 5`` points to start, all of them trained in one batch.  Any NLopt algorithm can be
    named; see the module docstring for the space-filling batch, the lock-step gate and the rules.

    Args:
        head, train, val: the frozen item side and ratings of the same users (``val`` is what the
            probes early-stop on and what is minimised: the item side must not have seen it).
        hyp: everything but lr and reg.
        max_evals: the most distinct points evaluated (both space-filling batches, openings and
            finite-difference points included); in ``[1, MAX_EVALS = 2**31 - 1]`` (NLopt's C int).
        max_time: seconds, checked at every checkpoint; points it stops are not counted
            (``math.inf``: no limit).
        algorithm: an NLopt algorithm name (``LN_*``, ``GN_*``; ``LD_*`` / ``GD_*`` get finite
            differences).  Deterministic global ones (``GN_DIRECT*``) ignore the start, so their
            searches ask for the same points: evaluated once.
        n_starts: the most local searches live at once (None: as many as ``width`` and the budget
            allow); without the space-filling batch, the number of searches.
        width: the most points a probe batch trains (None: ``default_width(backend)``, 64 on a
            CPU, 256 on a GPU).  The space-filling batch has ``min(width, max_evals // 4)``
            points, the zoomed batch ``min(width, max_evals // 2)`` (fewer, down to the first
            batch's size, where that would leave too few evaluations for one search).
        bounds: ``((a_lo, a_hi), (b_lo, b_hi))``, default ``DEFAULT_BOUNDS`` = a in [-2, 3]
            (lr 1e-5 .. 1), b in [-3, 5] (reg 1e-8 .. 1).  A best point on a bound is logged as
            a warning and named in ``TuneResult.at_bound``.
        starts: explicit starting points ``[(a, b), ...]``; when given they are used as they are
            (all searched at once, no space-filling batch).
        space_filling_first_batch: False: no space-filling batch; ``n_starts`` searches (8 when
            None) start from (0, 0) and Halton points one initial step inside the bounds.
        journal: path of a JSONL journal to append to and resume from (locked while the run lasts;
            resumable on another backend, see ``problem_fingerprint``).
        backend: backend name or instance used for every batch.
        seed: seeds the Halton design and stochastic NLopt algorithms (``hyp.seed`` seeds training);
            in ``[0, 2**32 - 1]``, as ``hyp.seed``.
        memory_budget: bytes of probe state a batch trains at once (None: ``run_probes``' default,
            a quarter of the RAM or half the free GPU memory).  A pruned batch that does not fit
            trains in memory groups, and which of its probes are pruned depends on their size
            (logged as a warning): give the same budget on every machine to get the same result.

    Returns a ``TuneResult``.  Raises InputError for bad arguments, for a journal another run
    holds, that belongs to another problem or that an older retrain wrote, and when ``max_time``
    let no point finish.
    """
    code = _algorithm(algorithm)
    lower, upper = check_bounds(bounds)
    max_evals = check_int("max_evals", max_evals, 1, MAX_EVALS)
    seed = check_int("seed", seed, 0, MAX_SEED)  # NLopt's srand takes an unsigned long, numpy no negative seed
    n_starts = None if n_starts is None else check_int("n_starts", n_starts, 1)
    width = None if width is None else check_int("width", width, 1)
    space_filling_first_batch = check_bool("space_filling_first_batch", space_filling_first_batch)
    no_limit = isinstance(max_time, numbers.Real) and not isinstance(max_time, bool) and max_time == math.inf
    max_time = math.inf if no_limit else check_float("max_time", max_time, 0.0, strict=True)  # seconds
    check_training_inputs(head, train, val)
    hyp = check_hyperparams(hyp)
    check_validation(validation_weight(val))  # before the journal is opened and anything trains
    if starts is not None:
        starts = check_starts(starts, lower, upper)
    width = width or default_width(backend)
    if memory_budget is not None:
        memory_budget = check_int("memory_budget", memory_budget, 1)

    if journal is not None:
        check_writable(journal, "journal")  # a folder raised IsADirectoryError, an int a TypeError
    jr = Journal(journal, problem_fingerprint(head, train, val, hyp)) if journal is not None else None
    try:
        evaluator = _Evaluator(head, train, val, hyp, backend, max_evals, float(max_time), jr.open() if jr else {}, jr,
                               memory_budget)
        search = _Search(evaluator, code, lower, upper, seed, width, n_starts)
        if starts is not None:
            search.run(starts, INITIAL_STEP * (upper - lower) / math.sqrt(len(starts)), all_at_once=True)
        elif space_filling_first_batch:
            search.run_from_space_filling()
        else:
            k = n_starts or 8
            step = INITIAL_STEP * (upper - lower) / math.sqrt(k)
            inner_lower, inner_upper = lower + step, upper - step
            origin = np.clip(np.zeros(2), inner_lower, inner_upper)
            search.run(np.vstack([origin, space_filling(k - 1, inner_lower, inner_upper, seed)]), step,
                       all_at_once=True)
    finally:
        if jr is not None:
            jr.close()
    return _result(evaluator, hyp, lower, upper)


def _result(evaluator: _Evaluator, hyp: HyperParams, lower: np.ndarray, upper: np.ndarray) -> TuneResult:
    """The ``TuneResult`` of a finished search: its best point, flags and warnings."""
    if not evaluator.history:
        raise InputError(f"max_time = {evaluator.max_time:g} s ran out before any point finished training: "
                         "give the tuner more time")
    bounds = tuple((float(lo), float(hi)) for lo, hi in zip(lower, upper))
    all_diverged = all(e.diverged for e in evaluator.history)
    best = min(evaluator.history, key=lambda e: e.loss)
    tolerance = FD_STEP * (upper - lower)
    at_bound = tuple(f"{name}_{side}" for i, name in enumerate("ab")
                     for side, edge in (("lo", lower[i]), ("hi", upper[i])) if abs(best.point[i] - edge) <= tolerance[i])
    if all_diverged and all(e.epochs_trained == 0 for e in evaluator.history):
        log.warning("tune: all %d points diverged at epoch 0: the untrained init's validation loss is not finite "
                    "(the head's predictions or squared errors overflow on these ratings): check the head and the "
                    "ratings' scale; no learning rate can help", len(evaluator.history))
    elif all_diverged:
        log.warning("tune: all %d points diverged; there is no usable (lr, reg): narrow the bounds towards smaller "
                    "learning rates", len(evaluator.history))
    elif at_bound:
        log.warning("tune: the best point (a = %.3f, b = %.3f) lies on the bound(s) %s of %s: the optimum may lie "
                    "outside, widen the bounds", best.a, best.b, ", ".join(at_bound), bounds)
    return TuneResult(best.a, best.b, best.lr, best.reg, math.inf if all_diverged else best.loss, best.epochs,
                      hyp.replace(learning_rate=best.lr, regularization=best.reg), evaluator.history,
                      evaluator.n_batches, bounds, at_bound, all_diverged)


class _Search:
    """Local searches in lock-step threads, started over the run as the budget and width allow."""

    def __init__(self, evaluator: _Evaluator, code: int, lower, upper, seed: int, width: int, n_starts):
        self.evaluator, self.code, self.lower, self.upper = evaluator, code, lower, upper
        self.seed, self.width, self.n_starts = seed, width, n_starts
        self.gate = _Gate()
        self.threads: list[threading.Thread] = []
        self.errors: list[BaseException] = []
        self.openings: dict[int, list] = {}  # search id -> its opening, trained with its first request

    def run_from_space_filling(self) -> None:
        """The space-filling batch, the zoomed batch, then searches from the best distinct points."""
        ev = self.evaluator
        n = max(1, min(self.width, int(ev.max_evals * FIRST_BATCH_SHARE)))
        # Each search explores its own neighbourhood, not the whole box.
        step = STEP_FACTOR * (self.upper - self.lower) / math.sqrt(n)
        inner_lower, inner_upper = self.lower + step, self.upper - step  # BOBYQA keeps starts this far in
        points = np.vstack([np.clip(np.zeros(2), inner_lower, inner_upper),
                            space_filling(n - 1, inner_lower, inner_upper, self.seed)])
        # Probes that can neither enter the zoomed box nor be within START_MARGIN of the best stop
        # early (Pruning): neither the box nor the starts depend on their values.
        pruning = Pruning(rank=zoom_count(n), margin=START_MARGIN)
        losses = ev.run_round({-1: [tuple(p) for p in points]}, pruning=pruning)[-1]
        if losses is None:  # max_time ran out during the batch
            return
        n_zoom = min(self.width, int(ev.max_evals * ZOOM_SHARE))
        # A small budget keeps one search's opening and steps (down to the first batch's size):
        # a search is what walks to an optimum on a bound, or between the design's points.
        n_zoom = max(min(n_zoom, ev.left - OPENING - STEPS_RESERVED), min(n_zoom, n))
        if n_zoom >= 1:
            # The basin a dense grid would find is narrow in some direction (a valley in (a, b)):
            # a second design over the box of the best points puts several times as many points
            # on its floor, and the searches start from the best of them with steps of that
            # design's spacing.
            zoom_lower, zoom_upper = zoom_box(points, np.array(losses), step, self.lower, self.upper)
            zoom = space_filling(n_zoom, zoom_lower, zoom_upper, self.seed + 1)
            if ev.run_round({-1: [tuple(p) for p in zoom]}, pruning=Pruning(margin=START_MARGIN))[-1] is None:
                return
            step = STEP_FACTOR * (zoom_upper - zoom_lower) / math.sqrt(n_zoom)
        self.run(Starts(ev.history, step, inner_lower, inner_upper), step)

    def run(self, starts, step: np.ndarray, all_at_once: bool = False) -> None:
        """Search from ``starts`` (an array, taken in order, or a function giving the next start or
        None): all at once, or as ``_room_for_another`` allows."""
        ev = self.evaluator
        next_start = starts if callable(starts) else functools.partial(next, iter(list(starts)), None)
        try:
            while True:
                while all_at_once or self._room_for_another(len(self.openings)):
                    start = next_start()
                    if start is None:
                        break
                    self._launch(len(self.threads), start, step)
                requests = self.gate.all_parked()
                if not requests:
                    break
                openings = {i: self.openings.pop(i) for i in requests if i in self.openings}
                self.gate.release(ev.run_round(requests, openings))
        finally:
            self.gate.stop()
            for thread in self.threads:
                thread.join()
        if self.errors:
            raise self.errors[0]

    def _room_for_another(self, pending: int) -> bool:
        """Start another search now (``pending``: searches started for this round)?  Not past
        ``n_starts`` live ones or ``max_time``; only when its opening (counted as ``OPENING``
        points) fits this round's width and the budget leaves every live search
        ``STEPS_RESERVED`` further steps."""
        live = len(self.gate.live)
        if not self.threads:
            return True
        if (self.n_starts is not None and live >= self.n_starts) or time.monotonic() >= self.evaluator.deadline:
            return False
        round_size = live + pending * (OPENING - 1)
        return round_size + OPENING <= self.width and \
            self.evaluator.left - pending * OPENING >= OPENING + STEPS_RESERVED * (live + 1)

    def _launch(self, opt_id: int, start, step) -> None:
        opening = _opening(self.code, start, self.lower, self.upper, step, self.seed + opt_id)
        self.openings[opt_id] = opening  # its first point is the search's first request: trained once
        self.gate.join(opt_id)
        thread = threading.Thread(target=self._optimize, args=(opt_id, np.asarray(start), step),
                                  name=f"tune-search-{opt_id}", daemon=True)
        self.threads.append(thread)
        thread.start()

    def _optimize(self, opt_id: int, start: np.ndarray, step) -> None:
        nlopt = _nlopt()
        try:
            nlopt.srand(self.seed + opt_id)  # per-thread generator of the stochastic algorithms
            opt = _configured(nlopt, self.code, self.lower, self.upper, step, self.evaluator.max_evals)
            opt.set_min_objective(_objective(self.gate, opt_id, opt, self.lower, self.upper))
            opt.optimize(start.tolist())
        except (nlopt.ForcedStop, nlopt.RoundoffLimited):
            pass  # stopped by the gate, or converged as far as floating point allows
        except nlopt.runtime_error:  # NLOPT_FAILURE, e.g. a gradient method's line search gave up
            log.warning("tune: search %d (%s) ended with an NLopt failure", opt_id, nlopt.algorithm_name(self.code))
        except BaseException as exc:  # re-raised in the tuning thread
            self.errors.append(exc)
        finally:
            self.gate.leave(opt_id)
