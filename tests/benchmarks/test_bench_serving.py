"""Serving latency and throughput: fold-in (train and ridge solvers), batch fold-in, recommend,
against a plain numpy closed-form ridge loop measured in the same run.

Also timed: ``ServedModel.fold_in(solver='ridge')`` on the same requests given in original ids
(item ids looked up, Ratings re-indexed, the result flagged), ``ServedModel.recommend`` for one
user id of a 10,000-user table, and the numpy loop with scipy's Cholesky ``dposv`` in place of
``np.linalg.solve`` (the solver the one-user ridge path uses, so the same algorithm both sides).

Data: a matrix-factorization head (d = 32, 10,000 items, random item vectors) and
``synthetic_ratings(10_000, 10_000, 40, seed=0)`` users.  Single-user requests are users with
10-50 ratings, the recipe is Adam, batch 16, ``EPOCHS`` epochs (train solver) or the same reg
and damping (ridge).  The numpy loop is the strongest plain baseline: the item table converted to
float64 once, outside the timing, then per user ``A = Q[items]``, ``solve(A^T W A / n +
(reg + damping / n) I, A^T W (r - c) / n)``.  Reported: p50 / p99 over ``REQUESTS`` single-user calls of each variant
(interleaved request by request, so load drift hits all alike; the fold-ins and the
recommends in two such groups, so that a recommend's pass over the item table does not evict
the next fold-in's rows), the best of ``ROUNDS`` for the
batches, and the fraction of the machine's float64 matmul peak (measured in the same run) that
the batch ridge reaches (flops counted as ``sum_u n_u d^2`` for the Gram matrices plus
``d^3 / 3`` per solve).

    flock /tmp/retrain-bench.lock .venv/bin/python -m pytest tests/benchmarks/test_bench_serving.py \
        --benchmark-enable -s

prints the table (and writes runs/bench_serving.md).  Under ``make test`` a small case runs once.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch

from retrain.backends import available_backends
from retrain.bundle import Recipe, ServedModel
from retrain.data import Ratings, synthetic_ratings
from retrain.heads import Head, Model
from retrain.hyperparams import HyperParams
from retrain.serving import fold_in, recommend

RUNS = Path(__file__).resolve().parents[2] / "runs"
D, N_ITEMS, EPOCHS, REG = 32, 10_000, 40, 0.05
BACKEND = "cpu" if "cpu" in available_backends() else "reference"


def _enabled(config) -> bool:
    return bool(config.getoption("benchmark_enable")) or not config.getoption("benchmark_disable")


@pytest.fixture(scope="module")
def setup(request):
    full = _enabled(request.config)
    n_users = 10_000 if full else 300
    data = synthetic_ratings(n_users, N_ITEMS if full else 500, 40, seed=0)
    g = torch.Generator().manual_seed(0)
    head = Head.matrix_factorization(torch.randn(data.n_items, D, generator=g) / D**0.5,
                                     torch.randn(data.n_items, generator=g) * 0.3, 3.5,
                                     item_ids=data.item_ids)  # shared, as pretrain and with_items leave it
    hyp = HyperParams(model=f"matrix_factorization_{D}", learning_rate=0.05, regularization=REG, batch_size=16,
                      num_users=n_users)
    return full, data, head, hyp


def numpy_ridge_loop(Q64: np.ndarray, c64: np.ndarray, ratings, reg: float, damping: float,
                     solve=np.linalg.solve) -> np.ndarray:
    """The baseline: the closed-form ridge solution user by user in plain numpy (float64), with
    the recipe's penalty ``reg + damping / n`` on the diagonal."""
    out = np.zeros((ratings.n_users, Q64.shape[1]))
    d = Q64.shape[1]
    for u in range(ratings.n_users):
        rows = slice(ratings.indptr[u], ratings.indptr[u + 1])
        items, n = ratings.items[rows], ratings.indptr[u + 1] - ratings.indptr[u]
        if n == 0:
            continue
        A, w = Q64[items], ratings.weights[rows].astype(np.float64)
        gram = A.T @ (A * w[:, None])
        gram /= n
        gram.flat[::d + 1] += reg + damping / n
        out[u] = solve(gram, A.T @ (w * (ratings.ratings[rows] - c64[items])) / n)
    return out


def cholesky_ridge_loop(Q64: np.ndarray, c64: np.ndarray, ratings, reg: float, damping: float) -> np.ndarray:
    """The numpy loop with the solve done by LAPACK's Cholesky (scipy ``dposv``), as the one-user
    path of ``fold_in(solver='ridge')`` does: the baseline with the same solver."""
    from scipy.linalg.lapack import dposv

    return numpy_ridge_loop(Q64, c64, ratings, reg, damping, solve=lambda a, b: dposv(a, b)[1])


def _matmul_peak_flops(n: int = 1024, repeats: int = 3) -> float:
    a = np.random.default_rng(0).random((n, n))
    best = np.inf
    for _ in range(repeats):
        t = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def _percentiles(seconds: list[float]) -> tuple[float, float]:
    return float(np.percentile(seconds, 50)) * 1e3, float(np.percentile(seconds, 99)) * 1e3


def _best(run, rounds: int) -> float:
    best = np.inf
    for _ in range(rounds):
        t = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - t)
    return best


def test_serving_latency_and_throughput(setup):
    full, data, head, hyp = setup
    requests, rounds = (1000, 5) if full else (20, 1)
    Q64 = head.item_vectors.double().numpy()
    c64 = head.item_bias.double().numpy() + head.global_bias
    counts = data.counts
    candidates = np.flatnonzero((counts >= 10) & (counts <= 50))
    users = np.random.default_rng(1).choice(candidates, requests)
    singles = [data.select_users([u]) for u in users]
    # The same requests in original ids, for a served model (10,000 known users): the item ids are
    # looked up and the user is new, so it is what ServedModel.fold_in does for a real request.
    served = ServedModel(Model(head, torch.zeros(data.n_users, D), data.user_ids), Recipe(hyp, EPOCHS))
    requests = {id(r): Ratings.from_ids(np.full(r.nnz, -1), head.item_ids[r.items], r.ratings) for r in singles}

    # Correctness first (the oracle is the numpy loop): the same solution, to float32 rounding.
    check = data.select_users(users[:50])
    loop = numpy_ridge_loop(Q64, c64, check, REG, hyp.damping)
    np.testing.assert_allclose(fold_in(head, check, hyp, 0, solver="ridge").double().numpy(), loop,
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(cholesky_ridge_loop(Q64, c64, check, REG, hyp.damping), loop, rtol=1e-10, atol=1e-12)

    emb_one = fold_in(head, singles[0], hyp, 0, solver="ridge")
    one_user = data.user_ids[users[:1]]
    # Two groups, each interleaved request by request: the fold-ins touch a user's rows only, a
    # recommend streams the whole item table through the caches, so mixing them would slow down
    # whichever fold-in runs after a recommend.
    groups = ({
        "fold_in(solver='train'), cpu" if BACKEND == "cpu" else "fold_in(solver='train')":
            lambda r: fold_in(head, r, hyp, EPOCHS, backend=BACKEND),
        "fold_in(solver='ridge')": lambda r: fold_in(head, r, hyp, 0, solver="ridge"),
        "ServedModel.fold_in(solver='ridge'), original ids": lambda r: served.fold_in(requests[id(r)], solver="ridge"),
        "numpy ridge loop (baseline)": lambda r: numpy_ridge_loop(Q64, c64, r, REG, hyp.damping),
        "numpy ridge loop, Cholesky (scipy dposv)": lambda r: cholesky_ridge_loop(Q64, c64, r, REG, hyp.damping),
    }, {
        "recommend top-10 (1 user)": lambda r: recommend(head, emb_one, 10, backend=BACKEND),
        "ServedModel.recommend top-10 (1 user id)": lambda r: served.recommend(one_user, 10, backend=BACKEND),
    })
    seconds = {name: [] for group in groups for name in group}
    for group in groups:
        for r in singles:
            for name, run in group.items():
                t = time.perf_counter()
                run(r)
                seconds[name].append(time.perf_counter() - t)
    latency = {name: _percentiles(s) for name, s in seconds.items()}

    batch_sizes = (1000, 10_000) if full else (100,)
    throughput, peak_fraction = {}, {}
    peak = _matmul_peak_flops()
    for size in batch_sizes:
        batch = data.select_users(np.arange(min(size, data.n_users)))
        times = {"train": np.inf, "ridge": np.inf, "numpy": np.inf}
        for _ in range(rounds):  # interleaved rounds
            times["train"] = min(times["train"], _best(lambda: fold_in(head, batch, hyp, EPOCHS, backend=BACKEND), 1))
            times["ridge"] = min(times["ridge"], _best(lambda: fold_in(head, batch, hyp, 0, solver="ridge"), 1))
            times["numpy"] = min(times["numpy"], _best(lambda: numpy_ridge_loop(Q64, c64, batch, REG, hyp.damping), 1))
        throughput[batch.n_users] = {k: batch.n_users / v for k, v in times.items()}
        flops = float((batch.counts * D * D).sum() + batch.n_users * D**3 / 3)
        peak_fraction[batch.n_users] = flops / times["ridge"] / peak
    emb_batch = fold_in(head, data.select_users(np.arange(min(1000, data.n_users))), hyp, 0, solver="ridge")
    recommend_batch_s = _best(lambda: recommend(head, emb_batch, 10, backend=BACKEND), rounds)

    lines = ["| single-user request | p50 (ms) | p99 (ms) | p50 vs numpy loop |", "|---|---|---|---|"]
    base = latency["numpy ridge loop (baseline)"][0]
    lines += [f"| {name} | {p50:.3f} | {p99:.3f} | {p50 / base:.2f}x |" for name, (p50, p99) in latency.items()]
    lines += ["", "| batch fold-in | users/s train | users/s ridge | users/s numpy loop | ridge vs numpy | "
                  "ridge, share of fp64 matmul peak |", "|---|---|---|---|---|---|"]
    lines += [f"| {n} users | {t['train']:.0f} | {t['ridge']:.0f} | {t['numpy']:.0f} | "
              f"{t['ridge'] / t['numpy']:.2f}x | {peak_fraction[n]:.1%} |" for n, t in throughput.items()]
    lines += ["", f"recommend top-10 for {emb_batch.shape[0]} users: {recommend_batch_s * 1e3:.1f} ms; "
                  f"fp64 matmul peak {peak / 1e9:.1f} GFLOP/s; {EPOCHS} epochs, backend {BACKEND}"]
    table = "\n".join(lines)
    print("\n" + table)
    if full:
        RUNS.mkdir(exist_ok=True)
        (RUNS / "bench_serving.md").write_text(table + "\n")
    assert all(np.isfinite(p50) for p50, _ in latency.values())
