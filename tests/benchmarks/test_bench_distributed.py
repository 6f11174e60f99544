"""Scaling: ``retrain.distributed.train_probes`` on 2 gloo ranks of 1 thread against one process of 1 thread.

Data: ``synthetic_ratings(25_000, 10_000, 40, seed=0)`` split per user 80/20, a matrix-factorization
head (d = 32, random item vectors), P = 64 probes, Adam, batch 16, ``EPOCHS`` epochs with a
checkpoint (an all-reduce) after every epoch and patience ``EPOCHS`` (every probe trains every
epoch).  The baseline is the ordinary single-process ``retrain.train_probes`` on the ``cpu``
backend with 1 thread: the strongest honest one (no process group, no sharding).  Each
configuration runs in fresh spawned processes; timed is the ``train_probes`` call (preparing,
sharding and gathering included, process start-up not), after a barrier, the slowest rank's.
Rounds interleave the two; the best of ``ROUNDS`` counts.  The machine's peak is torch's FP32
matmul on 1 and on 2 threads, measured in the same run; flops counted as in test_bench_cpu.py
(``4 d`` per rating·probe, validation and Adam not counted).

    flock /tmp/retrain-bench.lock .venv/bin/python -m pytest tests/benchmarks/test_bench_distributed.py --benchmark-enable -s

prints the table (and writes runs/bench_distributed.md).  ``test_pipeline_two_ranks_against_one``
times the whole ``retrain.retrain_user_embeddings`` the same way (tuning on the 25% subsample with
NLopt on rank 0, the early-stopped retrain of every user, the refit; ``PIPELINE_EVALS`` points,
``synthetic_ratings(10_000, 4_000, 40)``, a base model pretrained by ALS on the training part,
d = 32) and writes runs/bench_distributed_pipeline.md.  Each rank's CPU seconds (the round with
the least in total) show how the work splits, whatever else loads the machine.  Under ``make test`` a small case runs
once and checks that both give the same histories.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist

import retrain.distributed as distributed
from ranks import results, run_ranks
from retrain.backends.cpu import HAS_CPU_EXTENSION, CpuBackend
from retrain.data import synthetic_ratings
from retrain.heads import Head
from retrain.hyperparams import HyperParams
from retrain.pipeline import retrain_user_embeddings
from retrain.pretrain import pretrain
from retrain.trainer import train_probes
from test_bench_cpu import _matmul_peak

RUNS = Path(__file__).resolve().parents[2] / "runs"
P, D, EPOCHS, ROUNDS = 64, 32, 4, 5

pytestmark = pytest.mark.skipif(not HAS_CPU_EXTENSION or not dist.is_gloo_available(),
                                reason="needs the cpu backend and gloo")


def _problem(full: bool):
    n_users, n_items, mean = (25_000, 10_000, 40) if full else (400, 200, 20)
    train, val = synthetic_ratings(n_users, n_items, mean, seed=0).split_per_user(0.2, seed=0)
    g = torch.Generator().manual_seed(0)
    head = Head.matrix_factorization(torch.randn(n_items, D, generator=g) / D**0.5,
                                     torch.randn(n_items, generator=g) * 0.3, 3.5)
    return head, train, val


def _timed_job(rank, full: bool, sharded: bool, threads: int):
    """Wall and CPU seconds of one ``train_probes`` call (after a barrier), the probes' histories
    and the training ratings."""
    head, train, val = _problem(full)
    lrs, regs = np.logspace(-3, -1, P), np.logspace(-5, -2, P)
    hyp = HyperParams(model=f"matrix_factorization_{D}", batch_size=16, max_epochs=EPOCHS, epochs_per_checkpoint=1,
                      patience=EPOCHS)
    backend = CpuBackend(num_threads=threads)
    dist.barrier()
    start, cpu = time.perf_counter(), time.process_time()
    if sharded:
        probes = distributed.train_probes(head, train, val, lrs, regs, hyp, backend)
    else:
        probes = train_probes(head, train, val, lrs, regs, hyp, backend)
    return time.perf_counter() - start, time.process_time() - cpu, [p.history for p in probes], train.nnz


# (ranks, threads per rank): the target's baseline, the sharded run, and one process on both cores
CONFIGS = {(1, 1): "1 process, 1 thread", (2, 1): "2 gloo ranks, 1 thread each", (1, 2): "1 process, 2 threads"}


def _run(world_size: int, threads: int, full: bool) -> tuple[float, list, list, int]:
    """The slowest rank's wall seconds, each rank's CPU seconds, rank 0's histories, the ratings."""
    outcomes = results(run_ranks(world_size, _timed_job, full, world_size > 1, threads, threads=threads))
    return max(o[0] for o in outcomes), [o[1] for o in outcomes], outcomes[0][2], outcomes[0][3]


def test_two_ranks_against_one(request):
    config = request.config
    full = bool(config.getoption("benchmark_enable")) or not config.getoption("benchmark_disable")
    rounds = ROUNDS if full else 1
    configs = CONFIGS if full else {(2, 1): CONFIGS[2, 1], (1, 1): CONFIGS[1, 1]}
    best = {setup: np.inf for setup in configs}
    cpu = {setup: [np.inf] for setup in configs}  # per rank, in the round with the least total
    histories = {}
    for _ in range(rounds):
        for setup in best:  # interleaved: the machine's load drifts
            seconds, cpu_seconds, histories[setup], nnz = _run(*setup, full)
            best[setup] = min(best[setup], seconds)
            cpu[setup] = min(cpu[setup], cpu_seconds, key=sum)
    assert all(h == histories[1, 1] for h in histories.values())  # the same probes, bitwise
    if not full:
        return
    load = open("/proc/loadavg").read().split()[:3]
    peaks = {1: _matmul_peak(1), 2: _matmul_peak(2)}
    work, flops = nnz * P * EPOCHS, 4 * D  # rating·probe·epochs; flops per rating·probe
    lines = ["| configuration | best wall s | rating·probe·epochs/s | vs 1 process, 1 thread | GFLOP/s "
             "| % of matmul peak (2 threads) | CPU s per rank |", "|---|---:|---:|---:|---:|---:|---|"]
    for setup, name in configs.items():
        rate = work / best[setup]
        lines.append(f"| {name} | {best[setup]:.3f} | {rate:.3g} | {best[1, 1] / best[setup]:.2f}x "
                     f"| {rate * flops / 1e9:.3g} | {100 * rate * flops / peaks[2]:.2g} | "
                     f"{', '.join(f'{c:.3f}' for c in cpu[setup])} |")
    busiest = max(cpu[2, 1])
    lines += ["", f"CPU seconds: 1 process {cpu[1, 1][0]:.3f}, the busiest of 2 ranks {busiest:.3f} "
                  f"({cpu[1, 1][0] / busiest:.2f}x less), both ranks {sum(cpu[2, 1]) / cpu[1, 1][0]:.2f}x the one process's"]
    lines += ["", f"{nnz} train ratings, P = {P}, d = {D}, {EPOCHS} epochs with a checkpoint each; best of {rounds} "
                  f"interleaved rounds; FP32 matmul peak {peaks[1] / 1e9:.1f} GFLOP/s on 1 thread, "
                  f"{peaks[2] / 1e9:.1f} on 2; load average {' '.join(load)} after the run"]
    text = "\n".join(lines)
    RUNS.mkdir(exist_ok=True)
    (RUNS / "bench_distributed.md").write_text(text + "\n")
    with config.pluginmanager.getplugin("capturemanager").global_and_fixture_disabled():
        print("\n\n" + text)


PIPELINE_EVALS = 16


def _pipeline_problem(full: bool):
    """A base model pretrained (ALS) on the training part, and the parts: validation is unseen."""
    n_users, n_items, mean = (10_000, 4_000, 40) if full else (300, 100, 10)
    train, val = synthetic_ratings(n_users, n_items, mean, seed=0).split_per_user(0.2, seed=0)
    return pretrain(train, f"matrix_factorization_{D}", seed=0), train, val


def _pipeline_job(rank, model, train, val):
    """Wall and CPU seconds of one ``retrain_user_embeddings`` (after a barrier), its tuned point,
    epochs and (rank 0) user table."""
    hyp = HyperParams(model=f"matrix_factorization_{D}")
    if dist.is_initialized():  # one process has no group: the ordinary pipeline
        dist.barrier()
    start, cpu = time.perf_counter(), time.process_time()
    result = retrain_user_embeddings(model, train, val, hyp, PIPELINE_EVALS, n_starts=4, backend="cpu")
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    table = None if result.model is None else result.model.user_embeddings
    return seconds, cpu_seconds, (result.tune.a, result.tune.b, result.epochs, result.tune.n_batches), table, train.nnz


def test_pipeline_two_ranks_against_one(request):
    config = request.config
    full = bool(config.getoption("benchmark_enable")) or not config.getoption("benchmark_disable")
    rounds = ROUNDS if full else 1
    problem = _pipeline_problem(full)  # pretrained once, here
    best, cpu, outcomes = {1: np.inf, 2: np.inf}, {1: [np.inf], 2: [np.inf]}, {}
    for _ in range(rounds):
        for world_size in best:
            ranks = results(run_ranks(world_size, _pipeline_job, *problem, group=world_size > 1))
            best[world_size] = min(best[world_size], max(r[0] for r in ranks))
            cpu[world_size] = min(cpu[world_size], [r[1] for r in ranks], key=sum)
            outcomes[world_size] = ranks[0][2:4]
    assert outcomes[2][0] == outcomes[1][0] and torch.equal(outcomes[2][1], outcomes[1][1])  # bitwise
    if not full:
        return
    load = open("/proc/loadavg").read().split()[:3]
    a, b, epochs, batches = outcomes[1][0]
    text = "\n".join([
        "| configuration | best wall s | vs 1 process | CPU s per rank |", "|---|---:|---:|---|",
        f"| 1 process, 1 thread | {best[1]:.2f} | 1.00x | {cpu[1][0]:.2f} |",
        f"| 2 gloo ranks, 1 thread each | {best[2]:.2f} | {best[1] / best[2]:.2f}x | "
        f"{', '.join(f'{c:.2f}' for c in cpu[2])} |", "",
        f"retrain_user_embeddings of an ALS-pretrained base, {ranks[0][4]} train ratings, d = {D}, {PIPELINE_EVALS} tuning points in {batches} "
        f"batches (a = {a:.3f}, b = {b:.3f}), {epochs} epochs; best of {rounds} interleaved rounds; load average "
        f"{' '.join(load)} after the run"])
    RUNS.mkdir(exist_ok=True)
    (RUNS / "bench_distributed_pipeline.md").write_text(text + "\n")
    with config.pluginmanager.getplugin("capturemanager").global_and_fixture_disabled():
        print("\n\n" + text)
