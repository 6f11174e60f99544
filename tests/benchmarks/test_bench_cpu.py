"""CPU throughput: the fused C++ backend against the reference and the plain-PyTorch baselines.

Unit: rating·probe·epochs per second (one probe visiting one training rating once).  Every
backend trains the same matrix-factorization head (d = h = 32, random item vectors) with Adam and
minibatches of 16 ratings (the project default) or 1024 (where the torch baselines do best).  The
eager and batched baselines draw minibatches across users (``retrain.baselines``), the fused
backends per user (the contract); ``user_parallel`` is the contract in plain PyTorch, vectorised
across users (the strongest honest baseline), timed over one full epoch.  ``cpu-r1`` is the cpu
backend restricted to its round-1 kernel layout (AVX2, one user per register; it shares the later
permutation and bias-correction code), timed side by side.
``test_fold_in`` times the serving recipe (``train_embeddings``, P = 1) on 10,000 new users.
``test_one_thread_cpu_time`` compares cpu, cpu-r1 and user_parallel on one thread in CPU time
(``time.thread_time``), the figures that stay meaningful on a shared, loaded machine.  The slow backends are
timed on a slice (a few steps, the reference on its first users); the baselines' set-up (allocating the [U, P, d] state, building modules), timed with
``max_steps=0``, is subtracted, so what they are credited with is their speed per step.

Flops counted per rating·probe: 4h = 128 (prediction dot product 2h, gradient axpy 2h; DESIGN.md §6
with no tower).  Adam's O(d) work per step and the O(1) terms per rating are not counted, so the
fraction of peak is a lower bound.  The peak is a large FP32 matmul in torch on the same threads,
measured in the same run, as is the memory bandwidth (a torch copy of 1 GiB): the summary says
what share of each P = 64 cpu epoch the state traffic alone (embeddings and Adam moments read and
written back once, 2 x 3 x P x d floats a user) would take at that bandwidth.

    .venv/bin/python -m pytest tests/benchmarks/test_bench_cpu.py --benchmark-enable

prints a summary table at the end (and writes it to runs/bench_cpu.md).  Under ``make test``
(``--benchmark-disable``) only the quick cpu cases run, once each, as a smoke test.
"""
from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from retrain.backends.base import csr_tensors
from retrain.backends.cpu import HAS_CPU_EXTENSION, CpuBackend, _C
from retrain.baselines import batched, eager_loop, user_parallel
from retrain.contract import initial_embeddings, user_key
from retrain.data import synthetic_ratings
from retrain.heads import Head
from retrain.hyperparams import HyperParams
from retrain.trainer import prepare, train_embeddings

ML_SMALL = Path(__file__).parents[3] / "shared/data/ml-latest-small/ratings.csv"
RUNS = Path(__file__).parents[2] / "runs"
D = 32
PROBES = (1, 8, 64)
# 16 is the project default; 1024 is where the plain-PyTorch baselines are at their best.
BATCHES = (16, 1024)
THREADS = 2  # the cpu backend and the peak; the torch baselines run with 1 and 2, the faster counts
FLOPS_PER_RATING_PROBE = 4 * D
DATASETS = ("ml-latest-small", "synthetic-100k", "synthetic-1M")
# The synthetic sets (Pareto user activity): ML-100k-sized (943 users x 1,682 items, 101,153
# ratings) and 25,000 users x 10,000 items (1,001,794 ratings).
SYNTHETIC = {"synthetic-100k": dict(n_users=943, n_items=1682, mean_ratings_per_user=180),
             "synthetic-1M": dict(n_users=25_000, n_items=10_000, mean_ratings_per_user=45)}
ROUNDS = 5
# Work per timed round for the slow backends (the fused one trains full epochs).
EAGER_STEPS = 48           # optimizer steps over all probes (at least 2 per probe), or more ...
BATCHED_STEPS = 40         # minibatches, or more: see _setup_and_steps
REFERENCE_RATINGS = 400    # a slice of the first users


def _skip_when_disabled(request):
    config = request.config
    if config.getoption("benchmark_disable") and not config.getoption("benchmark_enable"):
        pytest.skip("heavy benchmark: runs with --benchmark-enable")


class Summary:
    """Throughputs collected over the module, printed and written as one markdown table."""

    BACKENDS = ("cpu", "cpu-r1", "reference", "eager", "batched", "batched+compile", "user_parallel")

    def __init__(self):
        self.rows = {}  # (dataset, batch, P) -> {backend: best rating·probe·epochs / s}
        self.peak = None
        self.one_thread_peak = None
        self.fold_in = {}  # kernel -> best users / s
        self.one_thread = {}  # (dataset, batch, P) -> {backend: rating·probe·epochs per CPU second, one thread}
        self.bandwidth = None  # bytes / s, read + written, THREADS threads
        self.epoch = {}  # (dataset, batch, P) -> (rating·probes of an epoch, state bytes moved by an epoch)

    def add(self, benchmark, key: tuple, backend: str, work: float, setup: float = 0.0) -> None:
        """Record ``work`` rating·probe·epochs done in the best round, less ``setup`` seconds."""
        if benchmark.stats is None:  # benchmarks disabled
            return
        seconds = benchmark.stats.stats.min - setup
        if seconds <= 0:
            warnings.warn(f"{key} {backend}: the set-up time ({setup:.3g} s) swamps the steps; not recorded")
            return
        rate = work / seconds
        speeds = self.rows.setdefault(key, {})
        speeds[backend] = max(rate, speeds.get(backend, 0.0))  # the faster torch thread count

    def table(self) -> str:
        lines = [f"Rating·probe·epochs per second, best of {ROUNDS} rounds; torch baselines: the faster of 1 and "
                 f"2 threads; cpu: {THREADS} threads. FP32 peak (torch matmul, {THREADS} threads): "
                 f"{self.peak / 1e9:.1f} GFLOP/s; {FLOPS_PER_RATING_PROBE} flops per rating·probe.", "",
                 "| data set | batch | P | " + " | ".join(self.BACKENDS) +
                 " | cpu / eager | cpu / batched | cpu / user_parallel | cpu GFLOP/s | % of peak |",
                 "|---|---:|---:|" + "---:|" * (len(self.BACKENDS) + 5)]
        for key in sorted(self.rows, key=lambda k: (DATASETS.index(k[0]), k[1], k[2])):
            speeds = self.rows[key]
            cells = [f"{speeds[b]:.3g}" if b in speeds else "" for b in self.BACKENDS]
            cpu = speeds.get("cpu")
            best_batched = max(speeds.get("batched", 0.0), speeds.get("batched+compile", 0.0))
            ratio = lambda base: (f"{cpu / base:.1f}x" if cpu / base < 10 else f"{cpu / base:,.0f}x") \
                if cpu and base else ""
            gflops = cpu * FLOPS_PER_RATING_PROBE / 1e9 if cpu else None
            lines.append(f"| {key[0]} | {key[1]} | {key[2]} | " + " | ".join(cells) +
                         f" | {ratio(speeds.get('eager'))} | {ratio(best_batched)} | "
                         f"{ratio(speeds.get('user_parallel'))} | "
                         + (f"{gflops:.3g} | {100 * gflops * 1e9 / self.peak:.2g} |" if cpu else " | |"))
        if self.one_thread:
            lines += ["", "One thread, CPU time (time.thread_time), best of rounds: rating·probe·epochs per CPU second; "
                      f"FP32 peak (torch matmul, 1 thread, CPU time): {self.one_thread_peak / 1e9:.1f} GFLOP/s.", "",
                      "| data set | batch | P | cpu | cpu-r1 | user_parallel | cpu / cpu-r1 | cpu / user_parallel | "
                      "cpu GFLOP/s | % of peak |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
            for key in sorted(self.one_thread, key=lambda k: (DATASETS.index(k[0]), k[1], k[2])):
                r = self.one_thread[key]
                cells = " | ".join(f"{r[b]:.3g}" if b in r else "" for b in ("cpu", "cpu-r1", "user_parallel"))
                ratio = lambda b: f"{r['cpu'] / r[b]:.1f}x" if b in r else ""
                lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {cells} | {ratio('cpu-r1')} | "
                             f"{ratio('user_parallel')} | {r['cpu'] * FLOPS_PER_RATING_PROBE / 1e9:.3g} | "
                             f"{100 * r['cpu'] * FLOPS_PER_RATING_PROBE / self.one_thread_peak:.2g} |")
        if self.bandwidth and self.epoch:
            lines += ["", f"Memory bandwidth (torch copy of 1 GiB, {THREADS} threads, read + written): "
                      f"{self.bandwidth / 1e9:.1f} GB/s. State traffic of one cpu epoch at that bandwidth:", "",
                      "| data set | batch | P | state GB | at bandwidth ms | cpu epoch ms | share |",
                      "|---|---:|---:|---:|---:|---:|---:|"]
            for key in sorted(self.epoch, key=lambda k: (DATASETS.index(k[0]), k[1], k[2])):
                work, state = self.epoch[key]
                cpu = self.rows.get(key, {}).get("cpu")
                if not cpu:
                    continue
                bound, took = state / self.bandwidth, work / cpu
                lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {state / 1e9:.2f} | {1e3 * bound:.1f} | "
                             f"{1e3 * took:.1f} | {100 * bound / took:.0f}% |")
        if self.fold_in:
            lines += ["", f"Fold-in of {FOLD_IN_USERS:,} new users, {FOLD_IN_EPOCHS} epochs (train_embeddings, "
                      f"{THREADS} threads): " + ", ".join(f"{k}: {v:,.0f} users/s" for k, v in self.fold_in.items())]
        return "\n".join(lines)


def _matmul_peak(threads: int, n: int = 3072, repeats: int = 5, clock=time.perf_counter) -> float:
    """FP32 flop/s of an n x n matmul in torch on ``threads`` threads (best of ``repeats``), timed
    by ``clock`` (time.thread_time: CPU time, for one thread)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.randn(n, n), torch.randn(n, n)
        a @ b
        best = float("inf")
        for _ in range(repeats):
            start = clock()
            a @ b
            best = min(best, clock() - start)
    finally:
        torch.set_num_threads(saved)
    return 2 * n**3 / best


def _copy_bandwidth(threads: int, n_bytes: int = 1 << 30, repeats: int = 5) -> float:
    """Bytes read + written per second by a torch copy of ``n_bytes`` on ``threads`` threads (best of
    ``repeats``)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        src = torch.ones(n_bytes // 4)
        dst = torch.empty_like(src)
        dst.copy_(src)
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            dst.copy_(src)
            best = min(best, time.perf_counter() - start)
    finally:
        torch.set_num_threads(saved)
    return 2 * n_bytes / best


@pytest.fixture(scope="module")
def summary(request):
    s = Summary()
    yield s
    if s.rows or s.one_thread:
        s.bandwidth = _copy_bandwidth(THREADS)
        s.peak = _matmul_peak(THREADS)
        s.one_thread_peak = _matmul_peak(1, clock=time.thread_time)
        text = s.table()
        RUNS.mkdir(exist_ok=True)
        (RUNS / "bench_cpu.md").write_text(text + "\n")
        with request.config.pluginmanager.getplugin("capturemanager").global_and_fixture_disabled():
            print("\n\nCPU benchmark summary (also in runs/bench_cpu.md):\n" + text)


@pytest.fixture(params=(1, 2), ids=lambda t: f"{t}thr")
def torch_threads(request):
    """Threads for the torch baselines: tiny ops often run faster on one."""
    _skip_when_disabled(request)
    saved = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(saved)


_CACHE = {}


def _load(name: str):
    if name not in _CACHE:
        if name == "ml-latest-small":
            from retrain.movielens import load_movielens
            _CACHE[name] = load_movielens(ML_SMALL)
        else:
            _CACHE[name] = synthetic_ratings(**SYNTHETIC[name], seed=0)
    return _CACHE[name]


@pytest.fixture(params=DATASETS)
def problem(request):
    """(name, head, CSR tensors, init [U, d], ratings) for an MF head with random item vectors."""
    name = request.param
    if name == "ml-latest-small" and not ML_SMALL.exists():
        pytest.skip(f"{ML_SMALL} not present")
    if name in SYNTHETIC:
        _skip_when_disabled(request)
    ratings = _load(name)
    g = torch.Generator().manual_seed(0)
    head = Head.matrix_factorization(torch.randn(ratings.n_items, D, generator=g) / D**0.5,
                                     torch.randn(ratings.n_items, generator=g) * 0.3, 3.5)
    data = csr_tensors(ratings, "cpu")
    init = torch.from_numpy(initial_embeddings(user_key(ratings.user_ids), D, 0, head.init_scale(ratings.n_users)))
    return name, head, data, init, ratings


def _epochs(backend, head, ratings, init, batch: int, P: int):
    """A function that trains one more epoch of P probes on a prepared problem (after a first one)."""
    hyp = HyperParams(model=f"matrix_factorization_{D}", batch_size=batch)
    problem = prepare(head, ratings, None, hyp, backend, init=init)
    problem.start(*_hyper(P))
    problem.train(1)  # the fresh start; timed calls continue from there
    return problem, lambda: problem.train(1)


def _hyper(P: int):
    """P learning rates and regularisations, log-spaced over the useful range."""
    return (torch.logspace(-3, -1, P, dtype=torch.float32) if P > 1 else torch.tensor([1e-2]),
            torch.logspace(-5, -2, P, dtype=torch.float32) if P > 1 else torch.tensor([1e-3]))


# The cpu backend as it ships, and its round-1 kernel (AVX2, one user per register) side by side.
CPU_KERNELS = {"cpu": dict(), "cpu-r1": dict(simd="avx2", users_in_lanes=False)}


def _cpu_backend(kernel: str) -> CpuBackend:
    options = CPU_KERNELS[kernel]
    if options.get("simd", "auto") not in ("auto", *_C.simd_paths()):
        pytest.skip(f"this CPU cannot run {options['simd']}")
    return CpuBackend(num_threads=THREADS, **options)


@pytest.mark.skipif(not HAS_CPU_EXTENSION, reason="retrain._C not built")
@pytest.mark.parametrize("kernel", CPU_KERNELS)
@pytest.mark.parametrize("P", PROBES)
@pytest.mark.parametrize("batch", BATCHES)
def test_cpu(benchmark, summary, problem, batch, P, kernel):
    name, head, _, init, ratings = problem
    prepared, one_epoch = _epochs(_cpu_backend(kernel), head, ratings, init, batch, P)
    benchmark.pedantic(one_epoch, rounds=ROUNDS, warmup_rounds=1)
    summary.add(benchmark, (name, batch, P), kernel, ratings.nnz * P)
    if P == 64:  # read and written back once per epoch: embeddings and both Adam moments
        summary.epoch[(name, batch, P)] = (ratings.nnz * P, 2 * 3 * ratings.n_users * P * D * 4)
    assert torch.isfinite(prepared.embeddings()).all()


FOLD_IN_USERS, FOLD_IN_EPOCHS = 10_000, 30


@pytest.mark.skipif(not HAS_CPU_EXTENSION, reason="retrain._C not built")
@pytest.mark.parametrize("kernel", CPU_KERNELS)
def test_fold_in(benchmark, summary, kernel, request):
    # Serving: new users (Pareto activity, mean 20 ratings, at least 2) trained for 30 epochs with
    # one configuration (P = 1) against a frozen head of 10,000 items.
    _skip_when_disabled(request)
    ratings = synthetic_ratings(n_users=FOLD_IN_USERS, n_items=10_000, mean_ratings_per_user=20, seed=1)
    g = torch.Generator().manual_seed(0)
    head = Head.matrix_factorization(torch.randn(ratings.n_items, D, generator=g) / D**0.5,
                                     torch.randn(ratings.n_items, generator=g) * 0.3, 3.5)
    hyp = HyperParams(model=f"matrix_factorization_{D}", learning_rate=1e-2, regularization=1e-3)
    backend = _cpu_backend(kernel)
    emb = benchmark.pedantic(train_embeddings, args=(head, ratings, hyp, FOLD_IN_EPOCHS, backend),
                             rounds=ROUNDS, warmup_rounds=1)
    assert emb.shape == (FOLD_IN_USERS, D) and torch.isfinite(emb).all()
    if benchmark.stats is not None:
        summary.fold_in[kernel] = FOLD_IN_USERS / benchmark.stats.stats.min
        one = CpuBackend(num_threads=1, **CPU_KERNELS[kernel])
        seconds = _thread_seconds(lambda: train_embeddings(head, ratings, hyp, FOLD_IN_EPOCHS, one))
        summary.fold_in[f"{kernel} (1 thread, CPU time)"] = FOLD_IN_USERS / seconds


@pytest.mark.parametrize("P", PROBES)
@pytest.mark.parametrize("batch", BATCHES)
def test_reference(benchmark, summary, problem, batch, P, request):
    _skip_when_disabled(request)
    name, head, _, init, ratings = problem
    n_users = max(1, int(np.searchsorted(ratings.indptr, REFERENCE_RATINGS, side="right")) - 1)
    part = ratings.select_users(np.arange(n_users))
    _, one_epoch = _epochs("reference", head, part, init[:n_users], batch, P)
    benchmark.pedantic(one_epoch, rounds=ROUNDS, warmup_rounds=1)
    summary.add(benchmark, (name, batch, P), "reference", part.nnz * P)


def _ratings_in(steps: int, nnz: int, batch: int) -> int:
    """Ratings visited by the first ``steps`` minibatches (an epoch ends with a partial one)."""
    epochs, extra = divmod(steps, -(-nnz // batch))
    return epochs * nnz + min(extra * batch, nnz)


def _seconds(run, steps: int) -> float:
    start = time.perf_counter()
    run(steps)
    return time.perf_counter() - start


def _setup_and_steps(run, steps: int) -> tuple[float, int]:
    """A baseline's set-up time (best ``run(0)``: state, modules, no step) and a step count whose
    steps take at least 4x that, so that subtracting it is not noise.  Warms up ``run`` (and
    torch.compile) first."""
    run(2)
    setup = min(_seconds(run, 0) for _ in range(ROUNDS))
    per_step = max(_seconds(run, steps) - setup, 1e-9) / steps
    return setup, int(min(max(steps, 4 * setup / per_step), 50 * steps))


@pytest.mark.parametrize("P", PROBES)
@pytest.mark.parametrize("batch", BATCHES)
def test_eager(benchmark, summary, problem, batch, P, torch_threads):
    name, head, data, init, ratings = problem
    lrs, regs = _hyper(P)
    # max_steps (per probe: the probes run one after another) ends the run, not n_epochs.
    run = lambda max_steps: eager_loop(head, data, init, lrs, regs, n_epochs=max_steps + 1, batch_size=batch,
                                       max_steps=max_steps)
    setup, steps = _setup_and_steps(run, max(2, EAGER_STEPS // P))
    benchmark.pedantic(run, args=(steps,), rounds=ROUNDS)
    summary.add(benchmark, (name, batch, P), "eager", P * _ratings_in(steps, ratings.nnz, batch), setup)


@pytest.mark.parametrize("compiled", [False, True], ids=["plain", "compile"])
@pytest.mark.parametrize("P", PROBES)
@pytest.mark.parametrize("batch", BATCHES)
def test_batched(benchmark, summary, problem, batch, P, compiled, torch_threads):
    name, head, data, init, ratings = problem
    lrs, regs = _hyper(P)
    run = lambda max_steps: batched(head, data, init, lrs, regs, n_epochs=max_steps + 1, batch_size=batch,
                                    max_steps=max_steps, compile=compiled)
    setup, steps = _setup_and_steps(run, BATCHED_STEPS)  # compiles, untimed
    benchmark.pedantic(run, args=(steps,), rounds=ROUNDS)
    summary.add(benchmark, (name, batch, P), "batched+compile" if compiled else "batched",
                P * _ratings_in(steps, ratings.nnz, batch), setup)


@pytest.mark.parametrize("P", PROBES)
@pytest.mark.parametrize("batch", BATCHES)
def test_user_parallel(benchmark, summary, problem, batch, P, torch_threads):
    # One full epoch of the contract's schedule; the set-up (sorting, the state) is subtracted.
    name, head, data, init, ratings = problem
    lrs, regs = _hyper(P)
    run = lambda max_steps: user_parallel(head, data, init, lrs, regs, n_epochs=1, batch_size=batch,
                                          damping=HyperParams().damping, max_steps=max_steps)
    run(None)
    setup = min(_seconds(run, 0) for _ in range(ROUNDS))
    benchmark.pedantic(run, args=(None,), rounds=ROUNDS)
    summary.add(benchmark, (name, batch, P), "user_parallel", P * ratings.nnz, setup)


# --------------------------------------------------------------------------- one thread, CPU time

def _thread_seconds(run, rounds: int = ROUNDS) -> float:
    """Best CPU time of this thread over ``rounds`` calls of ``run`` (after one warm-up).  On one
    thread (OpenMP and torch both run in the caller) this counts only the time the work was on a
    core, so it stays meaningful when other jobs share the machine."""
    run()
    best = float("inf")
    for _ in range(rounds):
        start = time.thread_time()
        run()
        best = min(best, time.thread_time() - start)
    return best


@pytest.mark.skipif(not HAS_CPU_EXTENSION, reason="retrain._C not built")
@pytest.mark.parametrize("P", (1, 64))
@pytest.mark.parametrize("batch", BATCHES)
def test_one_thread_cpu_time(summary, problem, batch, P, request):
    # cpu, cpu-r1 and user_parallel side by side on one thread, timed in CPU time (time.thread_time):
    # the figures for a loaded machine.  user_parallel: one epoch, its set-up (run with
    # max_steps=0) subtracted, as in test_user_parallel.
    _skip_when_disabled(request)
    name, head, data, init, ratings = problem
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rates = {}
        for kernel, options in CPU_KERNELS.items():
            if options.get("simd", "auto") not in ("auto", *_C.simd_paths()):
                continue
            _, one_epoch = _epochs(CpuBackend(num_threads=1, **options), head, ratings, init, batch, P)
            rates[kernel] = ratings.nnz * P / _thread_seconds(one_epoch)
        lrs, regs = _hyper(P)
        run = lambda max_steps: user_parallel(head, data, init, lrs, regs, n_epochs=1, batch_size=batch,
                                              damping=HyperParams().damping, max_steps=max_steps)
        setup = _thread_seconds(lambda: run(0))
        rates["user_parallel"] = ratings.nnz * P / max(_thread_seconds(lambda: run(None), rounds=3) - setup, 1e-9)
    finally:
        torch.set_num_threads(saved)
    summary.one_thread[(name, batch, P)] = rates
