"""Tuner wall time on the CPU: 8 lock-step starts against one point at a time (see gpu_tune.py).

Problem: ml-latest-small when present, with the evaluation protocol of docs/pipeline.md: the item
side (matrix_factorization_32, 4 ALS sweeps) is pretrained on half of the users, and the tuner
works on the other half's ratings, 80 % to train and 20 % to validate.  Without the file, the
planted synthetic problem of gpu_tune.py.  Backend ``auto`` (the C++ backend when built), the
project's default hyper-parameters for matrix_factorization_32, ``max_evals`` 64.

    .venv/bin/python -m pytest tests/benchmarks/test_bench_tune.py --benchmark-enable -s

prints the table at the end (and writes it to runs/bench_tune.md).  Under ``make test``
(``--benchmark-disable``) a small synthetic case runs once as a test: the lock-step search and the
same search one point per call must evaluate the same points to the same losses.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from gpu_tune import VARIANTS, planted_problem, run_variant, table, warm_up
from retrain.hyperparams import HyperParams

ML_SMALL = Path(__file__).resolve().parents[3] / "shared/data/ml-latest-small/ratings.csv"
RUNS = Path(__file__).resolve().parents[2] / "runs"
MAX_EVALS = 64
BACKEND = "auto"


def _enabled(config) -> bool:
    return bool(config.getoption("benchmark_enable")) or not config.getoption("benchmark_disable")


@pytest.fixture(scope="module")
def problem(request):
    """(name, head, train, val, hyp)."""
    hyp = HyperParams(model="matrix_factorization_32", seed=0)
    if not _enabled(request.config):
        return ("synthetic-small", *planted_problem(200, 150, 15, d=8), hyp.replace(max_epochs=16))
    if ML_SMALL.is_file():
        from retrain.movielens import load_movielens
        from retrain.pretrain import pretrain

        kept, held = load_movielens(ML_SMALL).split_users(0.5, seed=0)
        model = pretrain(kept, "matrix_factorization_32", seed=0, iterations=4)
        return ("ml-latest-small", model.head, *held.split_per_user(0.2, seed=0), hyp)
    return ("synthetic-planted", *planted_problem(3000, 1500, 30), hyp)


@pytest.fixture(scope="module")
def rows(request, problem):
    collected = {}
    yield collected
    if len(collected) == len(VARIANTS) and _enabled(request.config):
        name, _, train, val, _ = problem
        text = (f"{name}: {train.n_users} users, {train.nnz} train / {val.nnz} val ratings, backend {BACKEND}, "
                f"max_evals {MAX_EVALS}\n\n" + table([collected[v] for v in VARIANTS]))
        RUNS.mkdir(exist_ok=True)
        (RUNS / "bench_tune.md").write_text(text + "\n")
        with request.config.pluginmanager.getplugin("capturemanager").global_and_fixture_disabled():
            print("\n\nTuner benchmark (also in runs/bench_tune.md):\n" + text)


@pytest.mark.parametrize("variant", VARIANTS)
def test_tune_wall_time(benchmark, problem, rows, variant, request):
    _, head, train, val, hyp = problem
    max_evals = MAX_EVALS if _enabled(request.config) else 16
    if not rows:
        warm_up(head, train, val, hyp, BACKEND)
    row = benchmark.pedantic(run_variant, args=(variant, head, train, val, hyp, BACKEND, max_evals),
                             rounds=1, iterations=1)
    rows[variant] = row
    assert row["evals"] <= max_evals and row["best_val_loss"] > 0
    if variant == "one-per-batch" and "lockstep-8" in rows:
        # Batching changes the wall time only: the same points get the same losses.
        same = [(e.point, e.loss) for e in rows["lockstep-8"]["result"].history]
        assert [(e.point, e.loss) for e in row["result"].history] == same
        assert row["train_probes_calls"] == row["evals"] > rows["lockstep-8"]["train_probes_calls"]
