"""The command line: ``python -m retrain demo | pretrain | tune | run | fold-in | bench``.

Results go to stdout; progress bars and log lines (the ``retrain`` logger) go to stderr.  A
mistake in the input (a missing or malformed file, an unknown model name, a bad value) prints one
line ``retrain: error: ...`` on stderr and exits with status 2, like argparse does for a bad
option.

Every command that reads ratings (``--data``: a MovieLens file, or built-in synthetic data when
left out) applies the same seeded, leak-free split, so that ``pretrain``, ``tune`` and ``run``
given the same data, ``--seed`` and split options work on the same parts:

* ``--new-users`` of the users are held out as *new users* (serving-time fold-in, never seen by
  the pipeline);
* every other (*known*) user's ratings are split at random into a pretraining part, a validation
  part (``--val``) and a test part (``--test``).

The base model is pretrained on the pretraining part only, so its frozen item side never sees a
rating used for tuning, early stopping or testing (docs/pipeline.md).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

from .backends import BACKENDS, available_backends, get_backend
from .backends.base import csr_tensors, head_tensors, new_state
from .contract import initial_embeddings, user_key
from .data import Ratings, synthetic_ratings
from .heads import Model, atomic_write_bytes
from .hyperparams import HyperParams, model_family
from .progress import MeteredBackend, configure_logging, progress_enabled

log = logging.getLogger("retrain")

DEFAULT_MODEL = "matrix_factorization_32"
DEMO_USERS = 3000  # the whole demo runs in about a minute on 2 CPU cores with the cpu backend
ITEMS_PER_USER = 1 / 3  # synthetic catalogue size relative to the user count (at least 100 items)
DEFAULT_MAX_EVALS = 64  # the seed's max_iters
HYP_SUFFIX = ".hyp.json"  # written beside a retrained model: what fold-in needs to reproduce it


# --------------------------------------------------------------------------- data and protocol
@dataclass
class ProtocolSplit:
    """The leak-free parts of one data set (see the module docstring).

    ``pretrain``, ``val``, ``test`` hold the known users (same users, same indices);
    ``new_train`` / ``new_test`` the held-out users (``None`` when ``--new-users 0``).
    """

    pretrain: Ratings
    val: Ratings
    test: Ratings
    new_train: Ratings | None
    new_test: Ratings | None


def protocol_split(data: Ratings, seed: int, new_users: float = 0.2, val: float = 0.2,
                   test: float = 0.2) -> ProtocolSplit:
    """Split ``data`` for the leak-free protocol.

    ``new_users``: fraction of users held out; ``val`` / ``test``: fractions of each known user's
    ratings (the rest is the pretraining part); a new user's ratings are split ``1 - test`` for the
    fold-in and ``test`` for testing.  Deterministic in ``seed``.
    """
    if not 0.0 <= new_users < 1.0:
        raise ValueError(f"--new-users must be in [0, 1), got {new_users}")
    if not (0.0 < val and 0.0 <= test and val + test < 1.0):
        raise ValueError(f"--val must be > 0, --test >= 0 and --val + --test < 1, got {val} and {test}")
    known, new = data.split_users(new_users, seed) if new_users > 0 else (data, None)
    rest, test_part = known.split_per_user(test, seed)
    pretrain_part, val_part = rest.split_per_user(val / (1.0 - test), seed + 1)
    new_train, new_test = new.split_per_user(test, seed + 2) if new is not None else (None, None)
    return ProtocolSplit(pretrain_part, val_part, test_part, new_train, new_test)


def load_data(args) -> tuple[Ratings, str]:
    """The ratings named by ``--data`` (MovieLens file) or the synthetic set; and a description."""
    if args.data is not None:
        from .movielens import load_movielens

        data = load_movielens(args.data)
        return data, f"MovieLens file {args.data}"
    n_items = max(100, int(args.users * ITEMS_PER_USER))
    data = synthetic_ratings(n_users=args.users, n_items=n_items, seed=args.seed)
    return data, f"synthetic ratings (retrain.data.synthetic_ratings, seed {args.seed})"


def describe(data: Ratings) -> str:
    return f"{data.n_users} users, {data.n_items} items, {data.nnz} ratings"


def load_model(path) -> Model:
    """A model file written by ``pretrain`` / ``run`` (ValueError for a missing or malformed one)."""
    return Model.load(path)


def on_model_items(data: Ratings, model: Model, name: str) -> Ratings:
    """``data`` re-indexed onto the model's items (ValueError naming an item the model lacks)."""
    try:
        return data.with_items(model.head.item_ids)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None


def write_hyp(model_path, hyp: HyperParams, epochs: int, val_loss: float) -> Path:
    """Write what fold-in needs beside a retrained model; returns the file's path."""
    path = Path(str(model_path) + HYP_SUFFIX)
    text = json.dumps({"hyperparams": hyp.to_dict(), "epochs": int(epochs), "val_loss": float(val_loss)}, indent=2)
    atomic_write_bytes(path, (text + "\n").encode())
    return path


def read_hyp(path) -> tuple[HyperParams, int]:
    """``(HyperParams, epochs)`` from a file written by ``write_hyp``."""
    try:
        with open(path) as f:
            entry = json.load(f)
        return HyperParams(**entry["hyperparams"]), int(entry["epochs"])
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not a hyper-parameter file written by 'run' or 'demo' ({exc})") from None


def make_out_dir(out) -> Path:
    """``out``, or a fresh ``runs/<timestamp>`` folder."""
    if out is not None:
        path = Path(out)
        if path.exists() and not path.is_dir():
            raise ValueError(f"--out {out} exists and is not a folder")
        path.mkdir(parents=True, exist_ok=True)
        return path
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    for suffix in [""] + [f"-{i}" for i in range(2, 100)]:
        path = Path("runs") / (stamp + suffix)
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            continue
    raise ValueError(f"could not create a fresh folder runs/{stamp}-N: pass --out")


def metered(args) -> MeteredBackend:
    """The ``--backend``, metered, with progress bars when they can be seen."""
    return MeteredBackend(get_backend(args.backend), progress=progress_enabled(args.quiet))


# --------------------------------------------------------------------------- pipeline pieces
def tuning_throughput(backend: MeteredBackend, result) -> dict:
    """Throughput of the tuning batches of a pipeline run (every batch but the final retrain).

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


def run_pipeline(args, base: Model, split: ProtocolSplit, backend: MeteredBackend, path, journal):
    from .pipeline import retrain_user_embeddings

    hyp = HyperParams(model=base.head.name, seed=args.seed)
    with backend.stage("pipeline", max_epochs=hyp.max_epochs, max_evals=args.max_evals,
                       final_users=split.pretrain.n_users):
        return retrain_user_embeddings(base, split.pretrain, split.val, hyp, max_iters=args.max_evals,
                                       backend=backend, path=path, journal=journal, n_starts=args.n_starts,
                                       max_time=args.max_time)


# --------------------------------------------------------------------------- commands
def cmd_demo(args) -> int:
    from .plots import plot_tuning_landscape, plot_validation_curve
    from .pretrain import pretrain
    from .report import BiasBaseline, Row, model_rmse, render_demo_report, rmse_table
    from .ridge import ridge_embeddings
    from .serving import fold_in
    from .tuner import DEFAULT_BOUNDS

    model_family(args.model)  # an unknown model name fails before any work
    start = time.perf_counter()
    backend = metered(args)  # an unavailable backend fails before any work
    data, source = load_data(args)
    split = protocol_split(data, args.seed, args.new_users, args.val, args.test)
    if split.new_train is None:
        raise ValueError("the demo needs new users: --new-users must be > 0")
    out = make_out_dir(args.out)
    log.info("data: %s (%s); known users: %d pretraining / %d validation / %d test ratings; new users: %d",
             source, describe(data), split.pretrain.nnz, split.val.nnz, split.test.nnz, split.new_train.n_users)
    timings = {}

    t = time.perf_counter()
    log.info("pretraining %s on the pretraining part ...", args.model)
    base = pretrain(split.pretrain, args.model, seed=args.seed)
    timings["pretrain (ALS / Adam, all parameters)"] = time.perf_counter() - t

    t = time.perf_counter()
    model_path, journal = out / "model.safetensors", out / "journal.jsonl"
    result = run_pipeline(args, base, split, backend, model_path, journal)
    hyp_path = write_hyp(model_path, result.hyp, result.epochs, result.val_loss)
    pipeline_s = time.perf_counter() - t
    throughput = tuning_throughput(backend, result)
    timings["tuning"] = throughput["wall_s"]
    timings["final retrain (and saving)"] = pipeline_s - throughput["wall_s"]

    head = result.model.head
    t = time.perf_counter()
    with backend.stage("fold-in", max_epochs=result.epochs):
        new_emb = fold_in(head, split.new_train, result.hyp, result.epochs, backend=backend)
    timings["fold-in of the new users"] = time.perf_counter() - t
    t = time.perf_counter()
    ridge_known = ridge_new = None
    if head.is_linear:
        reg = result.hyp.regularization
        ridge_known = model_rmse(head, ridge_embeddings(head, split.pretrain, reg), split.test)
        ridge_new = model_rmse(head, ridge_embeddings(head, split.new_train, reg), split.new_test)
    timings["closed-form ridge fold-in"] = time.perf_counter() - t

    biases = BiasBaseline.fit(split.pretrain)
    rows = [
        Row("global mean", biases.global_mean_rmse(split.test), biases.global_mean_rmse(split.new_test)),
        Row("item biases only", biases.item_bias_rmse(split.test), biases.item_bias_rmse(split.new_test)),
        Row("base model (pretrained user table)", model_rmse(base.head, base.user_embeddings, split.test), None),
        Row("retrained users (tuned, early-stopped)", model_rmse(head, result.model.user_embeddings, split.test),
            None),
        Row("fold-in of new users (same recipe)", None, model_rmse(head, new_emb, split.new_test)),
        Row("closed-form ridge fold-in (tuned reg)", ridge_known, ridge_new),
    ]

    t = time.perf_counter()
    plot_tuning_landscape(out / "tuning_landscape.png", result.tune.history, DEFAULT_BOUNDS,
                          best=(result.tune.a, result.tune.b))
    plot_validation_curve(out / "validation_curve.png", result.history, best_epoch=result.epochs)
    timings["plots"] = time.perf_counter() - t
    timings["total (with loading and splitting)"] = time.perf_counter() - start

    tune = result.tune
    tuning = [
        ("tuned learning rate", f"{tune.lr:.4g} (a = {tune.a:.3f})"),
        ("tuned L2 regularisation", f"{tune.reg:.4g} (b = {tune.b:.3f})"),
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
        (model_path.name, "the retrained model (safetensors: frozen head + retrained user table)"),
        (hyp_path.name, "the tuned hyper-parameters and epoch count (what `fold-in` needs)"),
        (journal.name, "the tuning journal: one JSON line per trained point (a rerun with it resumes)"),
        ("tuning_landscape.png", "every evaluated (a, b) coloured by validation loss, each optimizer's path"),
        ("validation_curve.png", "validation loss per epoch of the final retrain"),
        ("report.md", "this report"),
    ]
    settings = dict(source=f"{source}: {describe(data)}", model=args.model, backend=backend.name,
                    seed=args.seed, max_evals=args.max_evals, n_starts=args.n_starts,
                    subsampling=result.hyp.subsampling_factor, new_users=args.new_users, val=args.val,
                    test=args.test)
    parts = dict(pretrain=split.pretrain, val=split.val, test=split.test, new_train=split.new_train,
                 new_test=split.new_test)
    report = render_demo_report(settings, parts, rows, tuning, timings, artifacts)
    atomic_write_bytes(out / "report.md", report.encode())

    print(f"retrain demo: {settings['source']}; model {args.model}; backend {backend.name}\n")
    print(rmse_table(rows))
    print()
    for key, value in tuning:
        print(f"  {key}: {value:.4f}" if isinstance(value, float) else f"  {key}: {value}")
    print(f"\ntotal {timings['total (with loading and splitting)']:.1f} s; artifacts in {out}/ "
          f"(report.md, model.safetensors, journal.jsonl, tuning_landscape.png, validation_curve.png)")
    return 0


def cmd_pretrain(args) -> int:
    from .pretrain import pretrain
    from .report import model_rmse

    model_family(args.model)
    data, source = load_data(args)
    split = protocol_split(data, args.seed, args.new_users, args.val, args.test)
    ratings = data if args.all_ratings else split.pretrain
    log.info("pretraining %s on %s (%s)", args.model, "all ratings" if args.all_ratings else "the pretraining part",
             describe(ratings))
    t = time.perf_counter()
    model = pretrain(ratings, args.model, seed=args.seed, reg=args.reg, iterations=args.iterations)
    seconds = time.perf_counter() - t
    model.save(args.out)
    print(f"pretrained {args.model} on {source}: {describe(ratings)} in {seconds:.1f} s")
    print(f"  training RMSE {model_rmse(model.head, model.user_embeddings, ratings):.4f}")
    if not args.all_ratings:
        print(f"  validation RMSE {model_rmse(model.head, model.user_embeddings, split.val):.4f} (ratings it never saw)")
    print(f"wrote {args.out}")
    return 0


def _known_parts(args, model: Model) -> ProtocolSplit:
    data, source = load_data(args)
    split = protocol_split(data, args.seed, args.new_users, args.val, args.test)
    log.info("data: %s (%s); known users: %d pretraining / %d validation ratings", source, describe(data),
             split.pretrain.nnz, split.val.nnz)
    split.pretrain = on_model_items(split.pretrain, model, "--data")
    split.val = on_model_items(split.val, model, "--data")
    split.test = on_model_items(split.test, model, "--data")
    return split


def cmd_tune(args) -> int:
    from .pipeline import tuning_subsample
    from .plots import plot_tuning_landscape
    from .tuner import DEFAULT_BOUNDS, tune

    model = load_model(args.model)
    split = _known_parts(args, model)
    hyp = HyperParams(model=model.head.name, seed=args.seed)
    sub_train, sub_val, sub_hyp = tuning_subsample(split.pretrain, split.val, hyp)  # as the pipeline does
    backend = metered(args)
    with backend.stage("tune", max_epochs=hyp.max_epochs, max_evals=args.max_evals):
        result = tune(model.head, sub_train, sub_val, sub_hyp, max_evals=args.max_evals, max_time=args.max_time,
                      algorithm=args.algorithm, n_starts=args.n_starts, journal=args.journal, backend=backend,
                      seed=args.seed)
    print(f"tuned on {sub_train.n_users} of {split.pretrain.n_users} users: lr {result.lr:.4g} (a = {result.a:.3f}), "
          f"reg {result.reg:.4g} (b = {result.b:.3f}), validation loss {result.val_loss:.4f}, "
          f"best epoch {result.epochs}")
    print(f"  {result.n_evals} evaluations in {result.n_batches} probe batches; journal {args.journal}")
    if args.plot:
        plot_tuning_landscape(args.plot, result.history, DEFAULT_BOUNDS, best=(result.a, result.b))
        print(f"wrote {args.plot}")
    return 0


def cmd_run(args) -> int:
    from .report import model_rmse

    model = load_model(args.model)
    split = _known_parts(args, model)
    backend = metered(args)
    result = run_pipeline(args, model, split, backend, args.out, args.journal)
    hyp_path = write_hyp(args.out, result.hyp, result.epochs, result.val_loss)
    print(f"retrained {split.pretrain.n_users} users: lr {result.hyp.learning_rate:.4g}, "
          f"reg {result.hyp.regularization:.4g}, {result.epochs} epochs, validation loss {result.val_loss:.4f}")
    if split.test.nnz:
        print(f"  test RMSE {model_rmse(result.model.head, result.model.user_embeddings, split.test):.4f}")
    print(f"  tuning: {result.tune.n_evals} evaluations in {result.tune.n_batches} probe batches")
    print(f"wrote {args.out} and {hyp_path}")
    return 0


def cmd_fold_in(args) -> int:
    from safetensors.torch import save as st_save

    from .movielens import load_movielens
    from .serving import fold_in, recommend

    model = load_model(args.model)
    hyp_file = args.hyp or str(args.model) + HYP_SUFFIX
    if os.path.isfile(hyp_file):
        hyp, epochs = read_hyp(hyp_file)
    elif args.hyp:
        raise ValueError(f"hyper-parameter file not found: {args.hyp}")
    elif None in (args.lr, args.reg, args.epochs, args.num_users):
        raise ValueError(f"no {hyp_file}: pass --hyp FILE, or all of --lr, --reg, --epochs and --num-users")
    else:
        hyp, epochs = HyperParams(model=model.head.name, seed=args.seed), args.epochs
    changes = {k: v for k, v in (("learning_rate", args.lr), ("regularization", args.reg),
                                 ("num_users", args.num_users)) if v is not None}
    hyp, epochs = hyp.replace(**changes), args.epochs if args.epochs is not None else epochs
    ratings = on_model_items(load_movielens(args.ratings), model, args.ratings)
    backend = metered(args)
    with backend.stage("fold-in", max_epochs=epochs):
        emb = fold_in(model.head, ratings, hyp, epochs, backend=backend)
    blob = st_save({"embeddings": emb.contiguous(), "user_ids": torch.from_numpy(ratings.user_ids)},
                   metadata={"format": "retrain.embeddings", "model": model.head.name, "epochs": str(epochs)})
    atomic_write_bytes(args.out, blob)
    print(f"folded in {ratings.n_users} users ({ratings.nnz} ratings): lr {hyp.learning_rate:.4g}, "
          f"reg {hyp.regularization:.4g}, {epochs} epochs; wrote {args.out} (embeddings [{emb.shape[0]}, "
          f"{emb.shape[1]}], user_ids)")
    if args.recommendations:
        k = min(args.k, model.head.n_items)
        items, scores = recommend(model.head, emb, k, exclude_seen=ratings, backend=backend)
        lines = ["user_id,rank,item_id,score"]
        for row, user in enumerate(ratings.user_ids):
            lines += [f"{user},{rank + 1},{model.head.item_ids[item]},{score:.6g}"
                      for rank, (item, score) in enumerate(zip(items[row].tolist(), scores[row].tolist()))
                      if np.isfinite(score)]
        atomic_write_bytes(args.recommendations, ("\n".join(lines) + "\n").encode())
        print(f"wrote the top {k} unseen items per user to {args.recommendations}")
    return 0


def _seconds(fn, device: torch.device) -> float:
    """Wall time of ``fn()``, waiting for the GPU's queued work on both sides."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def _bench_backend(be, head, data: Ratings, lrs, regs, hyp: HyperParams, epochs: int) -> float:
    """Seconds of ``epochs`` epochs of ``train_epochs`` for all probes, after a warm-up epoch."""
    head_t, data_t = head_tensors(head, be.device), csr_tensors(data, be.device)
    lrs, regs = lrs.to(be.device), regs.to(be.device)

    def train(n_epochs):
        state = new_state(data_t, len(lrs), head.d, seed=hyp.seed, scale=head.init_scale(data.n_users),
                          optimizer=hyp.optimizer)
        return lambda: be.train_epochs(head_t, data_t, state, lrs, regs, epoch_start=0, n_epochs=n_epochs,
                                       batch_size=hyp.batch_size, optimizer=hyp.optimizer, seed=hyp.seed)

    _seconds(train(1), be.device)  # warm-up: kernel compilation, caches, the thread pool
    return _seconds(train(epochs), be.device)


def _fast_backends() -> list[str]:
    """The available backends worth timing: not the reference, not Triton's CPU interpreter."""
    return [name for name in available_backends()
            if name != "reference" and not (name == "triton" and get_backend(name).device.type != "cuda")]


def cmd_bench(args) -> int:
    from .baselines import batched, eager_loop
    from .pretrain import pretrain
    from .report import markdown_table

    model_family(args.model)
    names = args.backends.split(",") if args.backends else _fast_backends()
    for name in names:
        if name not in BACKENDS or name == "auto":
            raise ValueError(f"--backends: unknown backend {name!r}: expected names from {BACKENDS[:-1]}")
    data = synthetic_ratings(n_users=args.users, n_items=max(100, int(args.users * ITEMS_PER_USER)), seed=args.seed)
    log.info("bench: %s; fitting a %s head (one sweep) ...", describe(data), args.model)
    head = pretrain(data, args.model, seed=args.seed, iterations=1).head
    hyp = HyperParams(model=args.model, seed=args.seed)
    P, epochs = args.probes, args.epochs
    lrs = 1e-3 * torch.logspace(0, 1, P, dtype=torch.float32)  # 1e-3 .. 1e-2
    regs = torch.full((P,), 1e-4, dtype=torch.float32)

    rows, skipped = [], []  # rows: (contender, seconds, rating·probe·epochs per second)
    for name in names:
        try:
            be = get_backend(name)
        except ValueError as exc:
            skipped.append(f"{name}: skipped ({exc})")
            continue
        seconds = _bench_backend(be, head, data, lrs, regs, hyp, epochs)
        rows.append((f"backend {name}", seconds, data.nnz * P * epochs / seconds))

    eager_rate = None
    if not args.no_baselines:
        device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
        head_t, data_t = head_tensors(head, device), csr_tensors(data, device)
        init = torch.from_numpy(initial_embeddings(user_key(data.user_ids), head.d, hyp.seed,
                                                   head.init_scale(data.n_users))).to(device)
        # The baselines are timed on their first --baseline-steps minibatches (per probe for the
        # eager loop): their rate is per rating visited, so a slice measures it.
        visited = min(args.baseline_steps * hyp.batch_size, data.nnz * epochs) * P
        for label, loop in (("eager PyTorch loop (one probe after another)", eager_loop),
                            ("batched PyTorch (all probes in one tensor)", batched)):
            def run(steps):
                return lambda: loop(head_t, data_t, init, lrs.to(device), regs.to(device), n_epochs=epochs,
                                    batch_size=hyp.batch_size, seed=args.seed, max_steps=steps)

            _seconds(run(2), device)  # warm-up
            seconds = _seconds(run(args.baseline_steps), device)
            rows.append((f"{label}, {device.type}", seconds, visited / seconds))
            eager_rate = eager_rate or visited / seconds  # the eager loop comes first

    header = ["contender", "seconds", "M rating·probe·epochs/s"] + (["× eager loop"] if eager_rate else [])
    table = [[label, f"{s:.3f}", f"{r / 1e6:.3f}"] + ([f"{r / eager_rate:.1f}"] if eager_rate else [])
             for label, s, r in rows]
    print(f"bench: {describe(data)}, {args.model}, {P} probes, {epochs} epochs, batch {hyp.batch_size}, "
          f"{torch.get_num_threads()} CPU threads")
    print(markdown_table(header, table))
    for line in skipped:
        print(line)
    return 0


# --------------------------------------------------------------------------- the parser
def _common(parser, *, data=True, backend=True) -> None:
    group = parser.add_argument_group("common options")
    if data:
        group.add_argument("--data", metavar="PATH",
                           help="MovieLens ratings file (ml-100k u.data, ml-1m ratings.dat, ml-latest ratings.csv); "
                                "default: built-in synthetic ratings")
        group.add_argument("--users", type=_positive_int, default=DEMO_USERS, metavar="N",
                           help=f"users of the synthetic data (default {DEMO_USERS})")
        group.add_argument("--new-users", type=float, default=0.2, metavar="F",
                           help="fraction of users held out as new users (default 0.2)")
        group.add_argument("--val", type=float, default=0.2, metavar="F",
                           help="fraction of each known user's ratings for validation (default 0.2)")
        group.add_argument("--test", type=float, default=0.2, metavar="F",
                           help="fraction of each user's ratings for testing (default 0.2)")
    if backend:
        group.add_argument("--backend", default="auto", choices=BACKENDS,
                           help="probe-training backend (default auto: triton on a CUDA GPU, else cpu, else reference)")
    group.add_argument("--seed", type=int, default=0, help="seeds the data split, the init and the schedule (default 0)")
    group.add_argument("--quiet", "-q", action="store_true", help="no progress bars or log lines")
    group.add_argument("--verbose", "-v", action="store_true", help="debug log lines")


def _tuning(parser) -> None:
    group = parser.add_argument_group("tuning")
    group.add_argument("--max-evals", type=_positive_int, default=DEFAULT_MAX_EVALS, metavar="N",
                       help=f"points the tuner evaluates (default {DEFAULT_MAX_EVALS})")
    group.add_argument("--n-starts", type=_positive_int, default=8, metavar="K",
                       help="NLopt optimizers run in lock-step; a round trains up to K points at once (default 8)")
    group.add_argument("--max-time", type=_positive_float, default=3600.0, metavar="S",
                       help="tuning time budget in seconds (default 3600)")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage block): ``prog: error: message (see --help)``."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m retrain",
        description="Retrain user embeddings against a frozen item side, tuning (lr, reg) with NLopt and "
                    "many concurrent probes.  Start with 'demo'.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="the whole product on synthetic data (or --data): pretrain, tune, retrain, "
                                    "fold in new users, report",
                       description="Hold out new users; split every other user's ratings into pretraining / "
                                   "validation / test parts; pretrain a base model on the pretraining part; tune and "
                                   "retrain the user embeddings; fold in the new users; print the RMSE table.  "
                                   "Writes model.safetensors, model.safetensors.hyp.json, journal.jsonl, report.md, "
                                   "tuning_landscape.png and validation_curve.png to --out.")
    _common(p)
    _tuning(p)
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"user_item_biases, matrix_factorization_K or mlp_DxH (default {DEFAULT_MODEL})")
    p.add_argument("--out", metavar="DIR", help="artifact folder (default runs/<timestamp>)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("pretrain", help="fit a base model (every parameter) and write it",
                       description="Fit a base model on the pretraining part of the data (or on --all-ratings) "
                                   "and write it as safetensors.  Prints its training and validation RMSE.")
    _common(p, backend=False)
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"model name (default {DEFAULT_MODEL})")
    p.add_argument("--out", default="model.safetensors", metavar="FILE", help="model file (default model.safetensors)")
    p.add_argument("--all-ratings", action="store_true",
                   help="pretrain on every rating (then the item side has seen what tune/run validate on)")
    p.add_argument("--reg", type=float, help="ridge penalty (ALS) or weight decay (MLP); default: pretrain's")
    p.add_argument("--iterations", type=_positive_int, help="ALS sweeps or Adam epochs; default: pretrain's")
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("tune", help="tune (lr, reg) for a model's frozen head, with a resumable journal",
                       description="Tune lr = 1e-3*10^a and reg = 1e-5*10^b on a seeded subsample of the known users "
                                   "(as the pipeline does): train on the pretraining part, early-stop and score on the "
                                   "validation part.  Every evaluation is appended to --journal; a rerun with the same "
                                   "journal resumes without retraining.")
    _common(p)
    _tuning(p)
    p.add_argument("--model", required=True, metavar="FILE", help="model file written by 'pretrain'")
    p.add_argument("--journal", default="journal.jsonl", metavar="FILE", help="JSONL journal (default journal.jsonl)")
    p.add_argument("--algorithm", default="LN_BOBYQA", help="NLopt algorithm (default LN_BOBYQA)")
    p.add_argument("--plot", metavar="PNG", help="also write the tuning landscape plot")
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("run", help="the pipeline: tune, retrain every known user, write the retrained model",
                       description="Tune on a subsample, retrain all known users with the tuned values (a checkpoint "
                                   "every epoch, keep the best), write the model and, beside it, <out>.hyp.json with "
                                   "the tuned hyper-parameters and epoch count (what 'fold-in' needs).  Prints the "
                                   "test RMSE of the known users.")
    _common(p)
    _tuning(p)
    p.add_argument("--model", required=True, metavar="FILE", help="base model file written by 'pretrain'")
    p.add_argument("--out", default="retrained.safetensors", metavar="FILE",
                   help="retrained model file (default retrained.safetensors)")
    p.add_argument("--journal", metavar="FILE", help="tuning journal to append to and resume from")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("fold-in", help="embeddings of new users, trained with the retrain's recipe",
                       description="Train each user of --ratings with the retrain's hyper-parameters and epoch count "
                                   "(read from <model>.hyp.json, or --hyp, or given by --lr/--reg/--epochs/"
                                   "--num-users).  Writes a safetensors file with 'embeddings' [n, d] and "
                                   "'user_ids' [n]; optionally the top-k unseen items per user as CSV.")
    _common(p, data=False)
    p.add_argument("--model", required=True, metavar="FILE", help="retrained model file written by 'run' or 'demo'")
    p.add_argument("--ratings", required=True, metavar="FILE",
                   help="the new users' ratings, MovieLens format (e.g. ratings.csv: userId,movieId,rating,...)")
    p.add_argument("--hyp", metavar="JSON", help="hyper-parameter file (default <model>.hyp.json)")
    p.add_argument("--epochs", type=_positive_int, help="override the epoch count")
    p.add_argument("--lr", type=_positive_float, help="override the learning rate")
    p.add_argument("--reg", type=float, help="override the L2 regularisation")
    p.add_argument("--num-users", type=_positive_int, help="override the retrain's user count (sets the Glorot bound)")
    p.add_argument("--out", default="embeddings.safetensors", metavar="FILE",
                   help="embeddings file (default embeddings.safetensors)")
    p.add_argument("--recommendations", metavar="CSV", help="also write the top --k unseen items per user")
    p.add_argument("--k", type=_positive_int, default=10, help="items per user for --recommendations (default 10)")
    p.set_defaults(func=cmd_fold_in)

    p = sub.add_parser("bench", help="quick throughput comparison of the available backends and PyTorch baselines",
                       description="Time train_epochs of each backend on synthetic data (P probes, a warm-up epoch "
                                   "first), and the plain-PyTorch eager and batched loops on a capped number of "
                                   "steps.  Prints rating·probe·epochs per second and the speed-up over the eager loop.")
    _common(p, data=False, backend=False)
    p.add_argument("--users", type=_positive_int, default=2000, metavar="N", help="synthetic users (default 2000)")
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"model name; its head is fitted by one ALS sweep (default {DEFAULT_MODEL})")
    p.add_argument("--probes", type=_positive_int, default=8, metavar="P", help="probes trained at once (default 8)")
    p.add_argument("--epochs", type=_positive_int, default=4, help="timed epochs (default 4)")
    p.add_argument("--backends", metavar="LIST", help="comma-separated backends (default: the available ones "
                                                      "except the reference and Triton's CPU interpreter)")
    p.add_argument("--baseline-steps", type=_positive_int, default=200, metavar="N",
                   help="optimizer steps per probe timed for the PyTorch baselines (default 200)")
    p.add_argument("--no-baselines", action="store_true", help="skip the PyTorch baselines")
    p.set_defaults(func=cmd_bench)
    return parser


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def main(argv=None) -> int:
    """Run the command line; returns the exit status (2 for a mistake in the input)."""
    args = build_parser().parse_args(argv)  # argparse prints usage and exits 2 on a bad option
    configure_logging(quiet=args.quiet, verbose=args.verbose)
    try:
        return args.func(args)
    except (ValueError, OSError) as exc:  # OSError: unreadable input, unwritable output
        print(f"retrain {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"retrain {args.command}: interrupted", file=sys.stderr)
        return 130
