"""The demo: the whole job on one data set, and the steps of it that the commands also run alone.

* ``load_ratings``: a MovieLens file, or the demo's synthetic ratings;
* ``run_tune`` / ``run_pipeline``: tune, or tune and retrain, the known users of a
  ``ProtocolSplit`` through a ``MeteredBackend`` (which counts the work and draws the bars);
* ``run_demo``: split the ratings by the leak-free protocol (``retrain.protocol``), pretrain a
  base model on the pretraining part, tune and retrain the known users' embeddings, fold in the
  new users, score every predictor on the test parts, and write the report, the model, the
  journal and the plots to one folder.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

from .artifacts import make_out_dir
from .backends import get_backend
from .data import Ratings, synthetic_ratings
from .errors import InputError, check_bool, check_float, check_int
from .files import atomic_write_bytes
from .heads import Head, Model
from .hyperparams import DEFAULT_DAMPING, HyperParams
from .movielens import load_movielens
from .pipeline import RetrainResult, retrain_user_embeddings, tuning_subsample
from .plots import plot_tuning_landscape, plot_validation_curve
from .pretrain import pretrain
from .progress import MeteredBackend
from .protocol import ProtocolSplit, protocol_split
from .report import BiasBaseline, Row, demo_summary, model_rmse, render_demo_report
from .ridge import ridge_embeddings
from .serving import fold_in
from .tuner import DEFAULT_BOUNDS, MAX_EVALS, TuneResult, tune

log = logging.getLogger(__name__)

DEFAULT_MODEL = "matrix_factorization_32"
DEFAULT_MAX_EVALS = 64  # the seed notebook's max_iters
DEMO_USERS = 3000  # the whole demo runs in about 6 seconds on 2 CPU cores with the cpu backend
ITEMS_PER_USER = 1 / 3  # synthetic catalogue size relative to the user count (at least 100 items)


def load_ratings(path=None, *, n_users: int = DEMO_USERS, seed: int = 0) -> tuple[Ratings, str]:
    """The MovieLens file at ``path``, or (``path`` None) synthetic ratings of ``n_users`` users;
    and a description of the source for reports."""
    if path is not None:
        return load_movielens(path), f"MovieLens file {path}"
    data = synthetic_ratings(n_users=n_users, n_items=max(100, int(n_users * ITEMS_PER_USER)), seed=seed)
    return data, f"synthetic ratings (retrain.data.synthetic_ratings, seed {seed})"


def describe(data: Ratings) -> str:
    return f"{data.n_users} users, {data.n_items} items, {data.nnz} ratings"


def run_pipeline(base: Model, split: ProtocolSplit, backend: MeteredBackend, *, seed: int, max_evals: int,
                 n_starts: int, max_time: float, path=None, journal=None, refit: bool = True,
                 damping: float = DEFAULT_DAMPING) -> RetrainResult:
    """``retrain_user_embeddings`` of the known users (pretraining part, early-stopped on the
    validation part, refitted on both unless ``refit`` is False) with ``HyperParams.damping``
    ``damping``, its backend calls recorded as the stage ``"pipeline"``."""
    hyp = HyperParams(model=base.head.name, seed=seed, damping=damping)
    with backend.stage("pipeline", max_epochs=hyp.max_epochs, max_evals=max_evals,
                       final_users=split.pretrain.n_users):
        return retrain_user_embeddings(base, split.pretrain, split.val, hyp, max_iters=max_evals, backend=backend,
                                       path=path, journal=journal, n_starts=n_starts, max_time=max_time,
                                       refit=refit)


def run_tune(head: Head, split: ProtocolSplit, backend: MeteredBackend, *, seed: int, max_evals: int,
             n_starts: int, max_time: float, algorithm: str = "LN_BOBYQA", journal=None,
             damping: float = DEFAULT_DAMPING) -> TuneResult:
    """``tune`` on the subsample of the known users that ``run_pipeline`` tunes on (so a pipeline
    given the same journal and ``damping`` replays these points), its backend calls recorded as
    the stage ``"tune"``.

    The result's ``hyp.num_users`` is the subsample's user count.
    """
    hyp = HyperParams(model=head.name, seed=seed, damping=damping)
    train, val, sub_hyp = tuning_subsample(split.pretrain, split.val, hyp)
    with backend.stage("tune", max_epochs=hyp.max_epochs, max_evals=max_evals):
        return tune(head, train, val, sub_hyp, max_evals=max_evals, max_time=max_time, algorithm=algorithm,
                    n_starts=n_starts, journal=journal, backend=backend, seed=seed)


def tuning_throughput(backend: MeteredBackend, result: RetrainResult) -> dict:
    """Throughput of the tuning batches of a ``run_pipeline`` (every batch but the final retrain).

    One rating·probe·epoch is one training rating visited by one probe in one epoch (a forward, a
    gradient and its share of an optimizer step).  ``wall_s`` is the tuner's own clock at its
    last evaluation (NLopt, the gate and the validation passes included).
    """
    batches = backend.batches("pipeline")[:-1]
    work, train_s = backend.totals("pipeline", batches)
    probe_epochs = sum(c.probes * c.n_epochs for c in backend.calls if c.stage == "pipeline" and c.batch in batches)
    wall_s = max((e.time for e in result.tune.history), default=0.0)
    return dict(wall_s=wall_s, work=work, train_s=train_s, probe_epochs=probe_epochs,
                rate=work / wall_s if wall_s > 0 else float("nan"),
                probe_epoch_rate=probe_epochs / wall_s if wall_s > 0 else float("nan"))


@dataclass(frozen=True)
class DemoResult:
    """What ``run_demo`` did: the artifact folder, the RMSE rows and the summary it prints."""

    out: Path
    rows: list[Row]
    text: str


def run_demo(data: Ratings, source: str, *, model: str = DEFAULT_MODEL, backend="auto", progress: bool = False,
             seed: int = 0, out=None, max_evals: int = DEFAULT_MAX_EVALS, n_starts: int = 8,
             max_time: float = 3600.0, new_users: float = 0.2, val: float = 0.2, test: float = 0.2,
             damping: float = DEFAULT_DAMPING) -> DemoResult:
    """Run the whole job on ``data`` and write its artifacts to ``out`` (default ``runs/<timestamp>``).

    ``source`` describes the data in the report; ``backend`` is a name or a backend; ``progress``
    draws bars on stderr; ``max_evals`` / ``n_starts`` / ``max_time`` (seconds) are the tuning
    budget, ``max_time`` the final retrain's too (``retrain_user_embeddings``); ``new_users`` /
    ``val`` / ``test`` the fractions of ``protocol_split``; ``damping`` the recipe's
    ``HyperParams.damping``.  InputError for a bad argument (before any work), or when the split
    holds out no new users or leaves a test part without ratings.
    """
    # Every argument before any work: a bad seed, max_evals or damping used to be found only after
    # the pretraining (minutes on a large file), with the output folder already made.
    HyperParams(model=model, seed=seed, damping=damping)  # the recipe's rules for these fields
    check_int("max_evals", max_evals, 1, MAX_EVALS)
    progress = check_bool("progress", progress)
    if n_starts is not None:
        check_int("n_starts", n_starts, 1)
    if max_time != math.inf:  # inf: no limit
        check_float("max_time", max_time, 0.0, strict=True)
    start = time.perf_counter()
    backend = MeteredBackend(get_backend(backend), progress=progress)
    split = protocol_split(data, new_users, val, test, seed=seed)
    if split.new_users is None:
        raise InputError("the demo needs new users: new_users must be > 0")
    # Every predictor is scored on the test parts: without ratings there, every RMSE of the report
    # is NaN (protocol_split allows test = 0, and a new user's part is rounded per user).
    for part, users in ((split.test, "known"), (split.new_test, "new")):
        if part.nnz == 0:
            raise InputError(f"the test part of the {users} users is empty (test={test:g} of each user's ratings, "
                             "rounded per user): the demo scores every predictor on it; use test > 0 or more data")
    out = make_out_dir(out)
    log.info("data: %s (%s); known users: %d pretraining / %d validation / %d test ratings; new users: %d",
             source, describe(data), split.pretrain.nnz, split.val.nnz, split.test.nnz, split.new_users.n_users)
    timings = {}

    t = time.perf_counter()
    log.info("pretraining %s on the pretraining part ...", model)
    base = pretrain(split.pretrain, model, seed=seed)
    timings["pretrain (ALS / Adam, all parameters)"] = time.perf_counter() - t

    t = time.perf_counter()
    model_path, journal = out / "model.safetensors", out / "journal.jsonl"
    result = run_pipeline(base, split, backend, seed=seed, max_evals=max_evals, n_starts=n_starts,
                          max_time=max_time, path=model_path, journal=journal, damping=damping)
    pipeline_s = time.perf_counter() - t
    throughput = tuning_throughput(backend, result)
    timings["tuning"] = throughput["wall_s"]
    timings["final retrain (and saving)"] = pipeline_s - throughput["wall_s"]

    head = result.model.head
    t = time.perf_counter()
    with backend.stage("fold-in", max_epochs=result.epochs):
        new_emb = fold_in(head, split.new_fold_in, result.hyp, result.epochs, backend=backend)
    timings["fold-in of the new users"] = time.perf_counter() - t
    t = time.perf_counter()
    ridge_known = ridge_new = None
    if head.is_linear:
        reg, damping = result.hyp.regularization, result.hyp.damping  # fold_in(solver="ridge")'s objective
        ridge_known = model_rmse(head, ridge_embeddings(head, result.seen, reg, damping=damping),
                                 split.test)  # the same ratings
        ridge_new = model_rmse(head, ridge_embeddings(head, split.new_fold_in, reg, damping=damping), split.new_test)
    timings["closed-form ridge fold-in"] = time.perf_counter() - t

    biases = BiasBaseline.fit(split.pretrain)
    rows = [
        Row("global mean", biases.global_mean_rmse(split.test), biases.global_mean_rmse(split.new_test)),
        Row("item biases only", biases.item_bias_rmse(split.test), biases.item_bias_rmse(split.new_test)),
        Row("base model (pretrained user table)", model_rmse(base.head, base.user_embeddings, split.test), None),
        Row(f"retrained users (tuned, {'refitted' if result.refit else 'early-stopped'})",
            model_rmse(head, result.model.user_embeddings, split.test), None),
        Row("fold-in of new users (same recipe)", None, model_rmse(head, new_emb, split.new_test)),
        Row("closed-form ridge fold-in (tuned reg)", ridge_known, ridge_new),
    ]

    t = time.perf_counter()
    plot_tuning_landscape(out / "tuning_landscape.png", result.tune.history, DEFAULT_BOUNDS,
                          best=(result.tune.a, result.tune.b))
    plot_validation_curve(out / "validation_curve.png", result.history, best_epoch=result.epochs)
    timings["plots"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - start  # from the split on: loading the data is the caller's

    tune = result.tune
    tuning = [
        ("tuned learning rate", f"{tune.lr:.4g} (a = {tune.a:.3f})"),
        ("tuned L2 regularisation", f"{tune.reg:.4g} (b = {tune.b:.3f})"),
        ("user damping (fixed: reg + damping / n for a user with n ratings)", f"{result.hyp.damping:g}"),
        ("epochs (final retrain's kept checkpoint)", result.epochs),
        ("best tuning validation loss (MSE, subsample)", tune.val_loss),
        ("final retrain validation loss (MSE)", result.val_loss),
        ("evaluations / probe batches", f"{tune.n_evals} / {tune.n_batches}"),
        ("tuning wall time", f"{throughput['wall_s']:.2f} s"),
        ("probe throughput", f"{throughput['rate'] / 1e6:.2f} M rating·probe·epochs/s "
                             f"({throughput['probe_epoch_rate']:.1f} probe·epochs/s)"
                             if throughput["work"] else "— (every point came from the journal)"),
        ("time inside the backend's training calls", f"{throughput['train_s']:.2f} s"),
    ]
    artifacts = [
        (model_path.name, "the retrained model in one file (safetensors: frozen head, refitted user table, ids "
                          "and the recipe `fold-in` needs)"),
        (journal.name, "the tuning journal: one JSON line per trained point (a rerun with it resumes)"),
        ("tuning_landscape.png", "every evaluated (a, b) coloured by validation loss, each optimizer's path"),
        ("validation_curve.png", "validation loss per epoch of the final retrain"),
        ("report.md", "this report"),
    ]
    settings = dict(source=f"{source}: {describe(data)}", model=model, backend=backend.name, seed=seed,
                    max_evals=max_evals, n_starts=n_starts, subsampling=result.hyp.subsampling_factor,
                    new_users=new_users, val=val, test=test)
    parts = dict(pretrain=split.pretrain, val=split.val, test=split.test, new_fold_in=split.new_fold_in,
                 new_test=split.new_test)
    report = render_demo_report(settings, parts, rows, tuning, timings, artifacts)
    atomic_write_bytes(out / "report.md", report.encode())
    return DemoResult(out, rows, demo_summary(settings, rows, tuning, timings["total"], out))
