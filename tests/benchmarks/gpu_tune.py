"""Tuning searches side by side on one problem: ``tune``, the seed's loop, a dense grid, batched TPE.

Each search spends (about) the same evaluations on the same prepared data and split, and reports
evaluations, probe batches (``run_probes`` calls), wall time, the best validation loss and two
cost proxies that do not depend on the machine's load: probe-epochs (the epochs every probe
trained, summed) and the sum over batches of the batch's longest probe (epochs):

* ``tune``: ``retrain.tune`` as shipped (a space-filling batch as wide as the backend trains
  cheaply, a zoomed one over its best points, then lock-step BOBYQA searches from the best distinct points);
* ``seed-loop``: the seed notebook's loop: one NLopt BOBYQA from (0, 0), one point per call;
* ``grid``: a ``side x side`` grid over the bounds as ONE probe batch;
* ``tpe``: Optuna's TPE sampler with batched ask/tell (``study.ask()`` ``batch`` times, one
  ``run_probes`` per batch), when optuna is installed.

A diverged probe scores ``2 * L0 + 1`` in every search (as in ``tune``).  The problem is the
leak-free protocol of docs/pipeline.md: ``retrain.protocol_split``, the item side pretrained on
the known users' pretraining ratings only, and the tuning subsample of the pipeline
(``retrain.pipeline.tuning_subsample``) validated on ratings the item side never saw.

    python3 tests/benchmarks/gpu_tune.py [--smoke] [--budget SECONDS]

prints what a batch of P probes costs (the width sweep) and a table of the searches, and writes ``tune.json`` and ``tune_table.md`` to ``$OUT`` when set (the GPU
check runs it).  ``tests/benchmarks/test_bench_tune.py`` runs the same searches on the CPU.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from retrain.backends import get_backend
from retrain.data import synthetic_ratings
from retrain.hyperparams import HyperParams, lr_from_a, reg_from_b
from retrain.pipeline import tuning_subsample
from retrain.pretrain import pretrain
from retrain.protocol import protocol_split
from retrain.trainer import prepare, run_probes
from retrain.tuner import DEFAULT_BOUNDS, tune

MODEL = "matrix_factorization_32"
ML_SMALL = Path(__file__).resolve().parents[3] / "shared/data/ml-latest-small/ratings.csv"  # absent: skipped
SEARCHES = ("tune", "tpe", "grid", "seed-loop")  # the slowest last: the GPU check has a time budget


def protocol_problem(data, seed: int = 0, model: str = MODEL):
    """(head, train, val, hyp) of the pipeline's tuning step on ``data`` under the leak-free split."""
    split = protocol_split(data, seed=seed)
    head = pretrain(split.pretrain, model, seed=seed).head
    return (head, *tuning_subsample(split.pretrain, split.val, HyperParams(model=model, seed=seed)))


def ml100k_sized(seed: int = 0):
    """Synthetic ratings the size of MovieLens-100k: 943 users, 1,682 items, about 100k ratings."""
    return synthetic_ratings(943, 1682, 165.0, seed=seed)


def have_optuna() -> bool:
    try:
        import optuna  # noqa: F401
    except ImportError:
        return False
    return True


class _Recorder:
    """Trains batches on one prepared problem; keeps counts and the best loss against wall time."""

    def __init__(self, head, train, val, hyp, backend):
        self.start = time.perf_counter()
        self.hyp, self.backend = hyp, backend
        self.problem = prepare(head, train, val, hyp, backend)
        self.batches, self.evals, self.best, self.best_point = 0, 0, math.inf, None
        self.probe_epochs = self.longest_epochs = 0
        self.trace = []  # (seconds, best loss so far) after each batch

    def losses(self, points) -> list[float]:
        probes = run_probes(self.problem, [lr_from_a(a) for a, _ in points], [reg_from_b(b) for _, b in points],
                            self.hyp)
        synchronize(self.backend)
        self.batches += 1
        self.evals += len(points)
        self.probe_epochs += sum(r.epochs_trained for r in probes)
        self.longest_epochs += max(r.epochs_trained for r in probes)
        out = []
        for point, probe in zip(points, probes):
            loss = (2.0 * probe.history[0][1] + 1.0) if probe.diverged else probe.best_val_loss
            out.append(loss)
            if not probe.diverged and loss < self.best:
                self.best, self.best_point = loss, tuple(point)
        self.trace.append((time.perf_counter() - self.start, self.best))
        return out

    def row(self, search: str, seed: int) -> dict:
        return dict(search=search, seed=seed, evals=self.evals, batches=self.batches,
                    wall_s=time.perf_counter() - self.start, probe_epochs=self.probe_epochs,
                    longest_epochs=self.longest_epochs, best_val_loss=self.best,
                    best_a=self.best_point[0], best_b=self.best_point[1], trace=self.trace)


def run_tune(head, train, val, hyp, backend, max_evals: int, seed: int, width: int | None = None) -> dict:
    synchronize(backend)
    start = time.perf_counter()
    result = tune(head, train, val, hyp, max_evals=max_evals, backend=backend, seed=seed, width=width,
                  n_starts=None)
    synchronize(backend)
    wall = time.perf_counter() - start
    trace, best, longest = [], math.inf, {}
    for e in sorted(result.history, key=lambda e: e.time):  # a point's time: when its probe finished
        best = min(best, e.loss) if not e.diverged else best
        trace.append((e.time, best))
        longest[e.round] = max(longest.get(e.round, 0), e.epochs_trained)
    return dict(search="tune", seed=seed, evals=result.n_evals, batches=result.n_batches, wall_s=wall,
                probe_epochs=sum(e.epochs_trained for e in result.history), longest_epochs=sum(longest.values()),
                best_val_loss=result.val_loss, best_a=result.a, best_b=result.b, trace=trace, result=result)


def run_seed_loop(head, train, val, hyp, backend, max_evals: int, seed: int) -> dict:
    """One BOBYQA from (0, 0), one point per ``run_probes`` call (the seed notebook's loop)."""
    import nlopt

    rec = _Recorder(head, train, val, hyp, backend)
    (a_lo, a_hi), (b_lo, b_hi) = DEFAULT_BOUNDS
    opt = nlopt.opt(nlopt.LN_BOBYQA, 2)
    opt.set_lower_bounds([a_lo, b_lo])
    opt.set_upper_bounds([a_hi, b_hi])
    opt.set_maxeval(max_evals)
    opt.set_min_objective(lambda x, grad: rec.losses([tuple(x)])[0])
    try:
        opt.optimize([0.0, 0.0])
    except nlopt.RoundoffLimited:
        pass
    return rec.row("seed-loop", seed)


def run_grid(head, train, val, hyp, backend, side: int, seed: int) -> dict:
    """A ``side x side`` grid over the default bounds, one probe batch."""
    rec = _Recorder(head, train, val, hyp, backend)
    (a_lo, a_hi), (b_lo, b_hi) = DEFAULT_BOUNDS
    a, b = np.meshgrid(np.linspace(a_lo, a_hi, side), np.linspace(b_lo, b_hi, side), indexing="ij")
    rec.losses(list(zip(a.ravel(), b.ravel())))
    return rec.row(f"grid {side}x{side}", seed)


def run_tpe(head, train, val, hyp, backend, max_evals: int, seed: int, batch: int = 8) -> dict:
    """Optuna TPE, ``batch`` trials asked at a time and trained as one probe batch."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rec = _Recorder(head, train, val, hyp, backend)
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=seed))
    (a_lo, a_hi), (b_lo, b_hi) = DEFAULT_BOUNDS
    while rec.evals < max_evals:
        trials = [study.ask() for _ in range(min(batch, max_evals - rec.evals))]
        points = [(t.suggest_float("a", a_lo, a_hi), t.suggest_float("b", b_lo, b_hi)) for t in trials]
        for trial, loss in zip(trials, rec.losses(points)):
            study.tell(trial, loss)
    return rec.row(f"tpe (batch {batch})", seed)


def run_search(name: str, problem, backend, max_evals: int, seed: int, grid_side: int = 13) -> dict:
    head, train, val, hyp = problem
    if name == "tune":
        return run_tune(head, train, val, hyp, backend, max_evals, seed)
    if name == "seed-loop":
        return run_seed_loop(head, train, val, hyp, backend, max_evals, seed)
    if name == "grid":
        return run_grid(head, train, val, hyp, backend, grid_side, seed)
    if name == "tpe":
        return run_tpe(head, train, val, hyp, backend, max_evals, seed)
    raise ValueError(name)


def synchronize(backend) -> None:
    if get_backend(backend).device.type == "cuda":
        torch.cuda.synchronize()


def warm_up(problem, backend) -> float:
    """Compile/initialise the backend for the batch widths the searches use; returns seconds."""
    head, train, val, hyp = problem
    start = time.perf_counter()
    short = hyp.replace(max_epochs=2 * hyp.epochs_per_checkpoint)
    prepared = prepare(head, train, val, hyp, backend)
    for width in (1, 8, 16, 64):
        run_probes(prepared, [1e-2] * width, [1e-3] * width, short)
    synchronize(backend)
    return time.perf_counter() - start


def width_sweep(problem, backend, widths=(1, 8, 16, 32, 64, 128, 256), repeats: int = 3, seed: int = 0) -> list[dict]:
    """Seconds for ``run_probes`` of P random points of the default box, for each P in ``widths``
    (the same points for every repeat; widths interleaved, best of ``repeats``): what a wider
    batch costs, from which the tuner's default width is picked."""
    head, train, val, hyp = problem
    prepared = prepare(head, train, val, hyp, backend)
    rng = np.random.default_rng(seed)
    (a_lo, a_hi), (b_lo, b_hi) = DEFAULT_BOUNDS
    points = {p: (rng.uniform(a_lo, a_hi, p), rng.uniform(b_lo, b_hi, p)) for p in widths}
    best = {p: math.inf for p in widths}
    epochs = {}
    for _ in range(repeats):
        for p in widths:
            a, b = points[p]
            synchronize(backend)
            start = time.perf_counter()
            probes = run_probes(prepared, 1e-3 * 10.0 ** a, 1e-5 * 10.0 ** b, hyp)
            synchronize(backend)
            best[p] = min(best[p], time.perf_counter() - start)
            epochs[p] = sum(r.epochs_trained for r in probes)
    return [dict(width=p, seconds=best[p], ms_per_probe=1e3 * best[p] / p, probe_epochs_per_s=epochs[p] / best[p])
            for p in widths]


def width_table(rows: list[dict]) -> str:
    lines = ["| P | seconds | ms per probe | probe-epochs / s |", "|---:|---:|---:|---:|"]
    lines += [f"| {r['width']} | {r['seconds']:.3f} | {r['ms_per_probe']:.1f} | {r['probe_epochs_per_s']:.0f} |"
              for r in rows]
    return "\n".join(lines)


def table(rows: list[dict]) -> str:
    """Markdown table: one line per search and seed."""
    lines = ["| search | seed | evaluations | probe batches | probe-epochs | longest probes (epochs) | wall s | "
             "best val loss | best (a, b) |", "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['search']} | {r['seed']} | {r['evals']} | {r['batches']} | {r['probe_epochs']} | "
                     f"{r['longest_epochs']} | {r['wall_s']:.2f} | {r['best_val_loss']:.5f} | "
                     f"({r['best_a']:.2f}, {r['best_b']:.2f}) |")
    return "\n".join(lines)


def main() -> int:
    try:
        import nlopt  # noqa: F401
    except ImportError:
        print("gpu_tune.py: skipped, the nlopt package is not installed (pip install nlopt)")
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny problem, to check the script on a CPU")
    parser.add_argument("--budget", type=float, default=40.0, help="seconds; searches that no longer fit are skipped")
    parser.add_argument("--max-evals", type=int, default=64)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    t0 = time.perf_counter()
    data = synthetic_ratings(200, 150, 20.0) if args.smoke else ml100k_sized()
    problem = protocol_problem(data)
    backend = get_backend("auto")
    device = torch.cuda.get_device_name() if backend.device.type == "cuda" else platform.processor() or "cpu"
    _, train, val, hyp = problem
    print(f"tuning searches on {device}, backend {backend.name}: {train.n_users} users, {train.nnz} train / "
          f"{val.nnz} val ratings, max_evals {args.max_evals}", flush=True)
    warm = warm_up(problem, backend)
    print(f"warm-up (compilation) {warm:.1f} s", flush=True)
    widths = width_sweep(problem, backend, (1, 8, 32, 64, 128, 256, 512), repeats=1)
    print(width_table(widths), flush=True)
    rows = []
    names = [n for n in SEARCHES if n != "tpe" or have_optuna()]
    if "tpe" not in names:
        print("tpe: skipped, optuna is not installed (pip install optuna)")
    for seed in range(args.seeds):
        for name in names:
            if time.perf_counter() - t0 > args.budget:
                print(f"{name} seed {seed}: skipped, past the {args.budget:.0f} s budget", flush=True)
                continue
            row = run_search(name, problem, backend, args.max_evals, seed)
            row.pop("result", None)
            rows.append(row)
            print(f"{row['search']} seed {seed}: {row['wall_s']:.2f} s, {row['evals']} evals in {row['batches']} "
                  f"batches, best val loss {row['best_val_loss']:.5f}", flush=True)
    text = table(rows)
    print(text)
    out = os.environ.get("OUT")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        report = dict(device=device, backend=backend.name, python=sys.version.split()[0], torch=torch.__version__,
                      train_nnz=train.nnz, val_nnz=val.nnz, max_evals=args.max_evals, warm_up_s=warm,
                      hyp=hyp.to_dict(), widths=widths, rows=rows, date=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        (Path(out) / "tune.json").write_text(json.dumps(report, indent=2) + "\n")
        (Path(out) / "tune_table.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
