"""Progress bars, logging set-up and training meters for the command line.

Bars need tqdm, imported on first use: without it there are no bars, and log lines are plain
lines on stderr.

The pipeline and the tuner take a backend *instance* as well as a name, so the command line hands
them a ``MeteredBackend``: the problems it prepares forward every call to the real backend's and,
on the way, count what was trained (for the throughput figures), keep the validation loss of every
checkpoint (for the plots) and move the progress bars.  Nothing below the command line knows about
it.  Every ``Problem.start`` is a new *batch* (a group of probes trained from the init).
"""
from __future__ import annotations

import functools
import logging
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from .backends.base import Backend

LOGGER = "retrain"


@functools.lru_cache(maxsize=None)
def _tqdm():
    """tqdm's bar class, or None when tqdm is not installed (looked up once)."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm


def progress_enabled(quiet: bool) -> bool:
    """Bars are drawn unless ``--quiet``, stderr is not a terminal (a pipe, a log file, CI) or
    tqdm is not installed."""
    return not quiet and sys.stderr.isatty() and _tqdm() is not None


class _LogHandler(logging.Handler):
    """Writes log lines to stderr, through ``tqdm.write`` when tqdm is there, so that a line does
    not break a bar being drawn."""

    def emit(self, record):
        try:
            tqdm = _tqdm()
            if tqdm is None:
                sys.stderr.write(self.format(record) + "\n")
            else:
                tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # logging's contract: a handler never raises
            self.handleError(record)


def configure_logging(quiet: bool = False, verbose: bool = False) -> None:
    """One stderr handler on the ``retrain`` logger: INFO (DEBUG with ``verbose``, WARNING when quiet)."""
    logger = logging.getLogger(LOGGER)
    for handler in [h for h in logger.handlers if isinstance(h, _LogHandler)]:
        logger.removeHandler(handler)
    handler = _LogHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False


@dataclass(frozen=True)
class TrainCall:
    """One training call: ``probes`` configurations x ``n_epochs`` epochs over ``nnz`` ratings."""

    stage: str
    batch: int
    n_users: int
    nnz: int
    probes: int
    epoch_start: int
    n_epochs: int
    seconds: float

    @property
    def rating_probe_epochs(self) -> int:
        return self.nnz * self.probes * self.n_epochs


@dataclass(frozen=True)
class CheckpointRecord:
    """One checkpoint: the per-probe mean validation loss after ``epoch`` epochs."""

    stage: str
    batch: int
    epoch: int
    losses: np.ndarray  # float64 [P], sum w (pred - r)^2 / sum w


class MeteredBackend(Backend):
    """Wraps ``inner``: its problems record ``TrainCall``s and ``CheckpointRecord``s (see the module
    doc).  ``stage(name, ...)`` labels what runs inside it and sets up its bars (with ``progress``
    and tqdm installed).
    """

    def __init__(self, inner: Backend, *, progress: bool = False):
        super().__init__(inner.device)
        self.inner = inner
        self.name = inner.name
        self.progress = progress and _tqdm() is not None
        self.calls: list[TrainCall] = []
        self.checkpoints: list[CheckpointRecord] = []
        self._stage = "other"
        self._batch = -1
        self._bars = None

    # ----------------------------------------------------------------- stages and bars
    @contextmanager
    def stage(self, name: str, *, max_epochs: int | None = None, max_evals: int | None = None,
              final_users: int | None = None):
        """Label calls with ``name``; with progress on, draw bars for it.

        ``max_epochs``: length of the per-batch epoch bar.  ``max_evals``: draw a bar of probes
        trained (the tuning budget).  ``final_users``: a batch over this many users is the final
        retrain (shown as such); other batches are tuning batches.
        """
        self._stage = name
        self._bars = _Bars(name, max_epochs, max_evals, final_users) if self.progress else None
        try:
            yield self
        finally:
            if self._bars is not None:
                self._bars.close()
            self._bars = None
            self._stage = "other"

    # ----------------------------------------------------------------- the Backend interface
    def prepare(self, head, train, val, spec, *, init):
        return _MeteredProblem(self, self.inner.prepare(head, train, val, spec, init=init))

    def score(self, head, emb):
        return self.inner.score(head, emb)

    # ----------------------------------------------------------------- what the problems report
    def _new_batch(self, n_users: int, probes: int) -> None:
        self._batch += 1
        if self._bars is not None:
            self._bars.new_batch(n_users, probes)

    def _trained(self, problem, epoch_start: int, n_epochs: int, probes: int, seconds: float) -> None:
        self.calls.append(TrainCall(self._stage, self._batch, problem.n_users, problem.n_train, probes,
                                    epoch_start, n_epochs, seconds))
        if self._bars is not None:
            self._bars.epochs(n_epochs, probes)

    def _validated(self, epoch: int, losses: np.ndarray) -> None:
        self.checkpoints.append(CheckpointRecord(self._stage, self._batch, epoch, np.asarray(losses, np.float64)))

    # ----------------------------------------------------------------- summaries
    def totals(self, stage: str, batches=None) -> tuple[int, float]:
        """``(rating·probe·epochs, seconds inside training calls)`` of a stage (optionally some batches)."""
        calls = [c for c in self.calls if c.stage == stage and (batches is None or c.batch in batches)]
        return sum(c.rating_probe_epochs for c in calls), sum(c.seconds for c in calls)

    def batches(self, stage: str) -> list[int]:
        """Batch numbers of a stage, in order."""
        seen = [c.batch for c in self.checkpoints if c.stage == stage] + [c.batch for c in self.calls if c.stage == stage]
        return sorted(set(seen))


class _MeteredProblem:
    """A backend's ``Problem`` whose training and validation calls are timed and recorded by its
    ``MeteredBackend``; everything else is the inner problem's."""

    def __init__(self, meter: MeteredBackend, inner):
        self._meter, self._inner = meter, inner

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def start(self, lrs, regs, **kwargs) -> None:
        self._inner.start(lrs, regs, **kwargs)
        self._meter._new_batch(self._inner.n_users, self._inner.n_probes)

    def _timed(self, run, n_epochs: int):
        epoch, probes = self._inner.epoch, self._inner.n_probes
        start = time.perf_counter()
        out = run()
        if self._inner.device.type == "cuda":
            torch.cuda.synchronize(self._inner.device)  # count the kernels' time, not their launch
        self._meter._trained(self._inner, epoch, n_epochs, probes, time.perf_counter() - start)
        return out

    def train(self, n_epochs: int) -> None:
        self._timed(lambda: self._inner.train(n_epochs), n_epochs)

    def validate(self):
        checkpoint = self._inner.validate()
        self._meter._validated(self._inner.epoch, checkpoint.losses)
        return checkpoint

    def checkpoint(self, n_epochs: int):
        return self.checkpoints([n_epochs])[0]

    def checkpoints(self, epochs):
        epochs = self._inner.check_epochs("epochs", epochs)  # summed below: ["2"] raised a TypeError
        epoch = self._inner.epoch
        out = self._timed(lambda: self._inner.checkpoints(epochs), sum(epochs))
        for n_epochs, checkpoint in zip(epochs, out):
            epoch += n_epochs
            self._meter._validated(epoch, checkpoint.losses)
        return out


class _Bars:
    """A bar of probes trained against the tuning budget, and a per-batch bar of epochs."""

    def __init__(self, stage: str, max_epochs, max_evals, final_users):
        self.tqdm = _tqdm()  # not None: MeteredBackend draws bars only with tqdm
        self.stage, self.max_epochs, self.final_users = stage, max_epochs, final_users
        self.batch = 0
        self.probes = (self.tqdm(total=max_evals, desc=f"{stage}: probes", unit="probe", leave=True,
                                 file=sys.stderr, dynamic_ncols=True) if max_evals else None)
        self.epoch_bar = None

    def new_batch(self, n_users: int, probes: int) -> None:
        if self.epoch_bar is not None:
            self.epoch_bar.close()
        tuning = self.probes is not None and not (n_users == self.final_users and probes == 1)
        if not tuning:
            desc = f"{self.stage}: {'final retrain, ' if self.probes is not None else ''}{n_users} users"
        else:
            self.batch += 1
            desc = f"{self.stage}: tuning batch {self.batch} ({probes} probes, {n_users} users)"
            if self.probes is not None:
                self.probes.update(probes)
        self.epoch_bar = self.tqdm(total=self.max_epochs, desc=desc, unit="epoch", leave=not tuning,
                                   file=sys.stderr, dynamic_ncols=True)

    def epochs(self, n: int, live_probes: int) -> None:
        if self.epoch_bar is not None:
            self.epoch_bar.update(n)
            self.epoch_bar.set_postfix(live=live_probes, refresh=False)

    def close(self) -> None:
        for bar in (self.epoch_bar, self.probes):
            if bar is not None:
                bar.close()
