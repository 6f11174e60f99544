"""What a checkpoint costs: ``train_probes`` with a checkpoint every epoch against one every 8 epochs.

Data: ``synthetic_ratings(25_000, 10_000, 40, seed=0)`` split per user 80/20 into train and
validation, a matrix-factorization head (d = 32, random item vectors), P = 64 probes, Adam,
batch 16, 8 epochs, patience 8 (so that every probe trains all 8 epochs in both variants and only
the checkpoints differ).  Reported: the best of ``ROUNDS`` wall times of each variant, rounds
interleaved, and the process's peak resident memory during ``train_probes`` above what it held
before, against the probe state (embeddings and both Adam moments, ``3 * U * P * d * 4`` bytes).
Peak memory is Linux's VmHWM, reset before each call through ``/proc/self/clear_refs``.

    .venv/bin/python -m pytest tests/benchmarks/test_bench_trainer.py --benchmark-enable -s

prints the table (and writes runs/bench_trainer.md).  Under ``make test`` a small case runs once.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch

from retrain.data import synthetic_ratings
from retrain.heads import Head
from retrain.hyperparams import HyperParams
from retrain.trainer import train_probes

RUNS = Path(__file__).resolve().parents[2] / "runs"
P, D, EPOCHS, ROUNDS = 64, 32, 8, 5


def _enabled(config) -> bool:
    return bool(config.getoption("benchmark_enable")) or not config.getoption("benchmark_disable")


def _status(field: str) -> int:
    """A ``/proc/self/status`` memory field in bytes (VmRSS, VmHWM)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _peak_and_seconds(run) -> tuple[int, float]:
    """Peak resident bytes above the current ones while ``run()`` runs, and its wall time."""
    before = _status("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current resident size
    start = time.perf_counter()
    run()
    seconds = time.perf_counter() - start
    return _status("VmHWM") - before, seconds


@pytest.fixture(scope="module")
def problem(request):
    n_users, n_items, mean = (25_000, 10_000, 40) if _enabled(request.config) else (600, 300, 20)
    data = synthetic_ratings(n_users, n_items, mean, seed=0)
    train, val = data.split_per_user(0.2, seed=0)
    g = torch.Generator().manual_seed(0)
    head = Head.matrix_factorization(torch.randn(n_items, D, generator=g) / D**0.5,
                                     torch.randn(n_items, generator=g) * 0.3, 3.5)
    return head, train, val


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's /proc/self/clear_refs")
def test_checkpoint_every_epoch_costs_little(problem, request):
    head, train, val = problem
    lrs, regs = np.logspace(-3, -1, P), np.logspace(-5, -2, P)
    hyp = HyperParams(model=f"matrix_factorization_{D}", batch_size=16, max_epochs=EPOCHS, patience=EPOCHS)
    rounds = ROUNDS if _enabled(request.config) else 1
    best = {1: (np.inf, 0), EPOCHS: (np.inf, 0)}
    for _ in range(rounds):
        for every in best:  # interleaved: the machine's load drifts
            results = []
            peak, seconds = _peak_and_seconds(lambda: results.extend(
                train_probes(head, train, val, lrs, regs, hyp.replace(epochs_per_checkpoint=every), backend="auto")))
            assert all(r.epochs_trained == EPOCHS for r in results)
            best[every] = (min(best[every][0], seconds), max(best[every][1], peak))
    state = 3 * train.n_users * P * D * 4
    (t1, peak1), (t8, peak8) = best[1], best[EPOCHS]
    lines = ["| checkpoints | best wall s | peak memory above start | / probe state |", "|---|---:|---:|---:|",
             f"| every epoch | {t1:.3f} | {peak1 / 1e6:.0f} MB | {peak1 / state:.2f} |",
             f"| every {EPOCHS} epochs | {t8:.3f} | {peak8 / 1e6:.0f} MB | {peak8 / state:.2f} |",
             "", f"every epoch / every {EPOCHS}: {t1 / t8:.3f}x; probe state {state / 1e6:.0f} MB "
                 f"({train.n_users} users, {train.nnz} train / {val.nnz} val ratings, P = {P}, d = {D}, "
                 f"best of {rounds} interleaved rounds, {torch.get_num_threads()} threads)"]
    text = "\n".join(lines)
    if _enabled(request.config):
        RUNS.mkdir(exist_ok=True)
        (RUNS / "bench_trainer.md").write_text(text + "\n")
        with request.config.pluginmanager.getplugin("capturemanager").global_and_fixture_disabled():
            print("\n\n" + text)
