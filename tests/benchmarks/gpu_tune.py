"""Tuner wall time: 8 lock-step starts against one point at a time, same evaluations, same backend.

Three ways to spend the same ``max_evals`` evaluations on one problem:

* ``lockstep-8``: ``tune(n_starts=8)`` as shipped: a space-filling batch of 16 points, then rounds
  of 8 points, each round ONE ``train_probes`` call;
* ``one-per-batch``: the very same search (same points, same losses) with every point trained in
  its own ``train_probes`` call: the difference to ``lockstep-8`` is the batching alone;
* ``seed-loop``: the seed notebook's loop: one BOBYQA optimizer from (0, 0), one point per call
  (it may stop before ``max_evals`` when it converges).

Each variant reports wall time, evaluations, ``train_probes`` calls and the best validation loss
it reached.  Run on the GPU check (``tests/benchmarks/gpu_check.sh``) with ``backend="auto"``
(Triton on a CUDA GPU) on synthetic data: ratings planted from a matrix-factorisation head
(d = 32) plus noise, heavy-tailed user activity and Zipf item popularity.  A warm-up call of each
batch width compiles the kernels before anything is timed.

    python3 tests/benchmarks/gpu_tune.py [--smoke] [--budget SECONDS]

prints a short table and writes ``tune.json`` and ``tune_table.md`` to ``$OUT`` when set.
``tests/benchmarks/test_bench_tune.py`` runs the same comparison on the CPU.
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

import retrain.tuner as tune_module
from retrain.backends import get_backend
from retrain.data import Ratings
from retrain.heads import Head
from retrain.hyperparams import HyperParams
from retrain.trainer import run_probes, train_probes
from retrain.tuner import tune

VARIANTS = ("lockstep-8", "seed-loop", "one-per-batch")


def planted_problem(n_users: int, n_items: int, mean_ratings: float, d: int = 32, seed: int = 0):
    """(head, train, val): ratings = the head's prediction for planted users + noise (std 0.5)."""
    rng = np.random.default_rng(seed)
    q = rng.normal(0, 1 / math.sqrt(d), (n_items, d)).astype(np.float32)
    bias = rng.normal(0, 0.3, n_items).astype(np.float32)
    head = Head.matrix_factorization(torch.from_numpy(q), torch.from_numpy(bias), 3.5)
    counts = np.clip(rng.pareto(1.5, n_users) + 1, 1, None)
    counts = np.clip(np.round(counts / counts.mean() * mean_ratings), 4, n_items // 2).astype(np.int64)
    popularity = 1.0 / np.arange(1, n_items + 1) ** 0.8
    users = np.repeat(np.arange(n_users), counts)
    items = rng.choice(n_items, size=len(users), p=popularity / popularity.sum())
    pairs = np.unique(users * n_items + items)
    users, items = pairs // n_items, pairs % n_items
    truth = rng.normal(0, 0.7, (n_users, d)).astype(np.float32)
    ratings = np.einsum("nk,nk->n", truth[users], q[items]) + bias[items] + 3.5 + rng.normal(0, 0.5, len(users))
    data = Ratings.from_coo(users, items, ratings, n_users=n_users, n_items=n_items)
    return (head, *data.split_per_user(0.2, seed=seed))


class _OnePointPerCall:
    """Stands in for ``run_probes`` inside the tuner: trains the points of a batch one by one."""

    def __init__(self):
        self.calls = 0

    def __call__(self, problem, lrs, regs, hyp, **kwargs):
        results = []
        for lr, reg in zip(lrs, regs):
            self.calls += 1
            results += run_probes(problem, [lr], [reg], hyp, **kwargs)
        return results


def run_variant(name: str, head, train, val, hyp, backend, max_evals: int) -> dict:
    """Time one variant; returns its row (and the TuneResult under ``"result"``)."""
    kwargs = dict(max_evals=max_evals, backend=backend)
    if name == "seed-loop":
        kwargs.update(n_starts=1, space_filling_first_batch=False)
    one_by_one = _OnePointPerCall() if name == "one-per-batch" else None
    if one_by_one is not None:
        tune_module.run_probes = one_by_one
    try:
        synchronize(backend)
        start = time.perf_counter()
        result = tune(head, train, val, hyp, **kwargs)
        synchronize(backend)
        wall = time.perf_counter() - start
    finally:
        tune_module.run_probes = run_probes
    calls = one_by_one.calls if one_by_one is not None else result.n_batches
    return dict(variant=name, wall_s=wall, evals=result.n_evals, train_probes_calls=calls,
                best_val_loss=result.val_loss, best_a=result.a, best_b=result.b, best_epochs=result.epochs,
                result=result)


def synchronize(backend) -> None:
    if get_backend(backend).device.type == "cuda":
        torch.cuda.synchronize()


def warm_up(head, train, val, hyp, backend) -> float:
    """Compile/initialise the backend for the batch widths the variants use; returns seconds.

    Triton picks one probe block for P = 1 and one for 2..16 (kernels/blocks.py), and specialises
    integer arguments on being 1 or a multiple of 16: widths 1, 8 and 16 cover every variant."""
    start = time.perf_counter()
    short = hyp.replace(max_epochs=2 * hyp.epochs_per_checkpoint)
    for width in (1, 8, 16):
        train_probes(head, train, val, [1e-2] * width, [1e-3] * width, short, backend)
    synchronize(backend)
    return time.perf_counter() - start


def table(rows: list[dict]) -> str:
    """Markdown table, with each variant's wall time relative to ``lockstep-8``."""
    base = next((r["wall_s"] for r in rows if r["variant"] == "lockstep-8"), None)
    lines = ["| variant | evals | train_probes calls | wall s | vs lockstep-8 | best val loss | best (a, b) |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        ratio = f"{r['wall_s'] / base:.2f}x" if base else ""
        lines.append(f"| {r['variant']} | {r['evals']} | {r['train_probes_calls']} | {r['wall_s']:.2f} | {ratio} | "
                     f"{r['best_val_loss']:.5f} | ({r['best_a']:.2f}, {r['best_b']:.2f}) |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny problem, to check the script on a CPU")
    # gpu_check.sh gives this step 60 s, imports and data generation included.
    parser.add_argument("--budget", type=float, default=40.0, help="seconds; variants that no longer fit are skipped")
    parser.add_argument("--max-evals", type=int, default=64)
    args = parser.parse_args()
    t0 = time.perf_counter()
    sizes = dict(n_users=400, n_items=300, mean_ratings=20) if args.smoke else \
        dict(n_users=20_000, n_items=5_000, mean_ratings=40)
    head, train, val = planted_problem(**sizes)
    hyp = HyperParams(model="matrix_factorization_32", seed=0)
    backend = get_backend("auto")
    device = torch.cuda.get_device_name() if backend.device.type == "cuda" else platform.processor() or "cpu"
    print(f"tuner comparison on {device}, backend {backend.name}: {train.n_users} users, {train.n_items} items, "
          f"{train.nnz} train / {val.nnz} val ratings, max_evals {args.max_evals}", flush=True)
    warm = warm_up(head, train, val, hyp, backend)
    print(f"warm-up (compilation) {warm:.1f} s", flush=True)

    rows = []
    for name in VARIANTS:
        elapsed = time.perf_counter() - t0
        if rows:  # a variant makes at most max_evals calls; the first one's per-call time bounds them
            per_call = rows[0]["wall_s"] / max(rows[0]["train_probes_calls"], 1)
            if elapsed + per_call * args.max_evals * 1.5 > args.budget:
                print(f"{name}: skipped, would not fit the {args.budget:.0f} s budget", flush=True)
                continue
        row = run_variant(name, head, train, val, hyp, backend, args.max_evals)
        row.pop("result")
        rows.append(row)
        print(f"{name}: {row['wall_s']:.2f} s, {row['evals']} evals in {row['train_probes_calls']} calls, "
              f"best val loss {row['best_val_loss']:.5f}", flush=True)

    text = table(rows)
    print(text)
    out = os.environ.get("OUT")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        report = dict(device=device, backend=backend.name, python=sys.version.split()[0], torch=torch.__version__,
                      sizes=sizes, train_nnz=train.nnz, val_nnz=val.nnz, max_evals=args.max_evals,
                      warm_up_s=warm, hyp=hyp.to_dict(), rows=rows,
                      date=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        (Path(out) / "tune.json").write_text(json.dumps(report, indent=2) + "\n")
        (Path(out) / "tune_table.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
