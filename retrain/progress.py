"""Progress bars, logging set-up and training meters for the command line.

Bars need tqdm, imported on first use: without it there are no bars, and log lines are plain
lines on stderr.

The pipeline and the tuner take a backend *instance* as well as a name, so the command line hands
them a ``MeteredBackend``: it forwards every call to the real backend and, on the way, counts
what was trained (for the throughput figures), keeps the validation loss of every checkpoint (for
the plots) and moves the progress bars.  Nothing below the command line knows about it.

How calls are grouped: the probe trainer validates at epoch 0, then alternates
``train_epochs`` / ``validation_loss`` until every probe stops; so a validation that does not
follow a training call starts a new *batch* (one ``train_probes`` call) at epoch 0.  A training
call from epoch 0 that does not follow that first validation (``train_embeddings``, the fold-in)
is a batch of its own.  Each ``stage`` starts a new batch too.
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
    """One ``train_epochs`` call: ``probes`` configurations x ``n_epochs`` epochs over ``nnz`` ratings."""

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
class Checkpoint:
    """One ``validation_loss`` call: the per-probe mean validation loss after ``epoch`` epochs."""

    stage: str
    batch: int
    epoch: int
    losses: np.ndarray  # float64 [P], sum w (pred - r)^2 / sum w


class MeteredBackend(Backend):
    """Forwards to ``inner`` and records ``TrainCall``s and ``Checkpoint``s (see the module doc).

    ``stage(name, ...)`` labels what runs inside it and sets up its bars (with ``progress`` and
    tqdm installed).
    """

    def __init__(self, inner: Backend, *, progress: bool = False):
        super().__init__(inner.device)
        self.inner = inner
        self.name = inner.name
        self.progress = progress and _tqdm() is not None
        self.calls: list[TrainCall] = []
        self.checkpoints: list[Checkpoint] = []
        self._stage = "other"
        self._batch = -1
        self._last = None  # "train" or "validation": the previous call
        self._epoch = 0  # epochs trained so far in the current batch
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
        self._last = None  # a stage starts a new batch
        self._bars = _Bars(name, max_epochs, max_evals, final_users) if self.progress else None
        try:
            yield self
        finally:
            if self._bars is not None:
                self._bars.close()
            self._bars = None
            self._stage = "other"

    def _new_batch(self, n_users: int, probes: int) -> None:
        self._batch += 1
        self._epoch = 0
        if self._bars is not None:
            self._bars.new_batch(n_users, probes)

    # ----------------------------------------------------------------- the Backend interface
    def train_epochs(self, head, data, state, lrs, regs, *, epoch_start, n_epochs, batch_size, optimizer, seed):
        if epoch_start == 0 and not (self._last == "validation" and self._epoch == 0):
            self._new_batch(data.n_users, int(lrs.shape[0]))
        start = time.perf_counter()
        self.inner.train_epochs(head, data, state, lrs, regs, epoch_start=epoch_start, n_epochs=n_epochs,
                                batch_size=batch_size, optimizer=optimizer, seed=seed)
        if state.emb.device.type == "cuda":
            torch.cuda.synchronize(state.emb.device)  # count the kernel's time, not its launch
        seconds = time.perf_counter() - start
        self.calls.append(TrainCall(self._stage, self._batch, data.n_users, int(data.items.shape[0]),
                                    int(lrs.shape[0]), epoch_start, n_epochs, seconds))
        self._epoch = epoch_start + n_epochs
        self._last = "train"
        if self._bars is not None:
            self._bars.epochs(n_epochs, int(lrs.shape[0]))

    def validation_loss(self, head, data, emb):
        if self._last != "train":
            self._new_batch(data.n_users, int(emb.shape[1]))
        losses = self.inner.validation_loss(head, data, emb)
        weight = float(data.weights.double().sum())
        mean = losses.detach().cpu().numpy().astype(np.float64) / weight if weight > 0 else np.zeros(len(losses))
        self.checkpoints.append(Checkpoint(self._stage, self._batch, self._epoch, mean))
        self._last = "validation"
        return losses

    def score(self, head, emb):
        return self.inner.score(head, emb)

    # ----------------------------------------------------------------- summaries
    def totals(self, stage: str, batches=None) -> tuple[int, float]:
        """``(rating·probe·epochs, seconds inside train_epochs)`` of a stage (optionally some batches)."""
        calls = [c for c in self.calls if c.stage == stage and (batches is None or c.batch in batches)]
        return sum(c.rating_probe_epochs for c in calls), sum(c.seconds for c in calls)

    def batches(self, stage: str) -> list[int]:
        """Batch numbers of a stage, in order."""
        seen = [c.batch for c in self.checkpoints if c.stage == stage] + [c.batch for c in self.calls if c.stage == stage]
        return sorted(set(seen))


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
