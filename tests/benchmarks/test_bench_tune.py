"""Tuning benchmark on the CPU: ``tune`` against the seed's loop, a dense grid and batched TPE.

One run, the same data and split for every search (gpu_tune.py has the searches): synthetic
ratings the size of MovieLens-100k and, when present, ``shared/data/ml-latest-small``, each under
the leak-free protocol (``retrain.protocol_split``, the item side pretrained without the
validation ratings, the pipeline's tuning subsample).  64 evaluations, seeds 0-5, searches
interleaved per seed, the whole pass repeated ``ROUNDS`` times: each row's wall time is the best
of its rounds (the machine is shared), its other columns must agree across rounds (the searches
are deterministic).  A 21x21 grid trained once per data set is the reference optimum.

    flock /tmp/retrain-bench.lock .venv/bin/python -m pytest tests/benchmarks/test_bench_tune.py \
        --benchmark-enable -q -s

prints the table at the end and writes it to runs/bench_tune.md, with runs/bench_tune_<data>.png
(best validation loss against wall time of every search).  Under ``make test``
(``--benchmark-disable``) a small synthetic case runs once as a test of the searches' accounting.
TPE rows need the ``optuna`` test extra; without it they are skipped with a line saying so.
"""
from __future__ import annotations

import math
from pathlib import Path

import pytest

from gpu_tune import (ML_SMALL, have_optuna, ml100k_sized, protocol_problem, run_search, table, warm_up,
                      width_sweep, width_table)
from retrain.data import synthetic_ratings

RUNS = Path(__file__).resolve().parents[2] / "runs"
BACKEND = "auto"
SEARCHES = ("tune", "tpe", "seed-loop", "grid")
ROUNDS = 3
FULL = [(rnd, data, seed, search) for rnd in range(ROUNDS) for data in ("ml100k-sized", "ml-latest-small")
        for seed in range(6) for search in SEARCHES]
FULL += [(0, data, 0, "reference-grid") for data in ("ml100k-sized", "ml-latest-small")]
SAME = ("evals", "batches", "probe_epochs", "longest_epochs", "best_val_loss", "best_a", "best_b")  # per round


def _enabled(config) -> bool:
    return bool(config.getoption("benchmark_enable")) or not config.getoption("benchmark_disable")


@pytest.fixture(scope="module")
def problems(request):
    """data name -> (head, train, val, hyp), built and warmed up once."""
    built = {}

    def get(name):
        if name not in built:
            if name == "smoke":
                data = synthetic_ratings(200, 150, 20.0)
            elif name == "ml100k-sized":
                data = ml100k_sized()
            else:
                if not ML_SMALL.is_file():
                    pytest.skip(f"{ML_SMALL} is absent")
                from retrain.movielens import load_movielens
                data = load_movielens(ML_SMALL)
            built[name] = protocol_problem(data)
            warm_up(built[name], BACKEND)
        return built[name]

    return get


@pytest.fixture(scope="module")
def rows(request):
    collected = []
    load_at_start = _load()
    yield collected
    if collected and _enabled(request.config):
        text = [f"Load average (1, 5, 15 min) at the start {load_at_start}, at the end {_load()}; wall: the best of "
                f"{ROUNDS} interleaved rounds."]
        best = _best_of_rounds(collected)
        for data in dict.fromkeys(r["data"] for r in best):
            mine = [r for r in best if r["data"] == data]
            text.append(f"### {data}\n\n{mine[0]['describe']}\n\n{table(mine)}\n\n{_summary(mine)}")
            _plot(data, mine)
        text = "\n\n".join(text)
        RUNS.mkdir(exist_ok=True)
        (RUNS / "bench_tune.md").write_text(text + "\n")
        with request.config.pluginmanager.getplugin("capturemanager").global_and_fixture_disabled():
            print("\n\nTuning benchmark (also in runs/bench_tune.md):\n" + text)


def _load() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def _best_of_rounds(rows: list[dict]) -> list[dict]:
    """One row per (data, seed, search): the round with the least wall time, ``walls`` all of them;
    a row whose rounds disagree on anything but time says so in its search name."""
    merged = {}
    for r in rows:
        key = (r["data"], r["seed"], r["search"])
        if key not in merged:
            merged[key] = dict(r, walls=[r["wall_s"]])
            continue
        m = merged[key]
        if any(m[k] != r[k] for k in SAME) and not m["search"].endswith("(NOT deterministic)"):
            m["search"] += " (NOT deterministic)"
        m["walls"].append(r["wall_s"])
        if r["wall_s"] < m["wall_s"]:
            m.update(wall_s=r["wall_s"], trace=r["trace"])
    return list(merged.values())


def _summary(rows: list[dict]) -> str:
    """The targets, per seed: tune against TPE, the seed loop and the reference grid."""
    reference = min((r["best_val_loss"] for r in rows if r["search"].startswith("grid 21")), default=math.nan)
    lines = []
    for seed in sorted({r["seed"] for r in rows if r["search"] == "tune"}):
        by = {r["search"].split(" ")[0]: r for r in rows if r["seed"] == seed}
        t = by["tune"]
        parts = [f"seed {seed}: tune {100 * (t['best_val_loss'] / reference - 1):+.3f}% vs the 21x21 grid"]
        if "tpe" in by:
            tpe = by["tpe"]
            parts.append(f"{100 * (t['best_val_loss'] / tpe['best_val_loss'] - 1):+.3f}% loss, "
                         f"{t['wall_s'] / tpe['wall_s']:.2f}x wall, {t['probe_epochs'] / tpe['probe_epochs']:.2f}x "
                         f"probe-epochs and {t['longest_epochs'] / tpe['longest_epochs']:.2f}x longest probes vs TPE")
        parts.append(f"{t['wall_s'] / by['seed-loop']['wall_s']:.2f}x wall vs the seed loop")
        lines.append("* " + ", ".join(parts))
    return "\n".join(lines)


def _plot(data: str, rows: list[dict]) -> None:
    try:
        from retrain.plots import plot_search_traces
        plot_search_traces(RUNS / f"bench_tune_{data}.png", {f"{r['search']} seed {r['seed']}": r["trace"]
                                                             for r in rows if not r["search"].startswith("grid 21")},
                           title=f"Tuning searches on {data}")
    except ValueError as error:  # matplotlib missing: the table is the result
        print(f"no plot: {error}")


@pytest.mark.parametrize("rnd, data, seed, search", FULL, ids=[f"r{r}-{d}-{s}-{n}" for r, d, s, n in FULL])
def test_tuning_searches(benchmark, problems, rows, rnd, data, seed, search, request):
    if not _enabled(request.config):
        pytest.skip("the full tuning benchmark runs with --benchmark-enable")
    if search == "tpe" and not have_optuna():
        pytest.skip("TPE row skipped: optuna is not installed (pip install optuna, or the 'test' extra)")
    problem = problems(data)
    name, side = ("grid", 21) if search == "reference-grid" else (search, 13)
    row = benchmark.pedantic(run_search, args=(name, problem, BACKEND, 64, seed, side), rounds=1, iterations=1)
    _, train, val, _ = problem
    row.update(data=data, round=rnd, describe=f"{train.n_users} users (the tuning subsample), {train.nnz} train / "
                                   f"{val.nnz} validation ratings, backend {BACKEND}, 64 evaluations")
    row.pop("result", None)
    rows.append(row)


def test_width_sweep(problems, request):
    """What a batch of P probes costs on the ML-100k-sized problem: the default width's evidence."""
    if not _enabled(request.config):
        pytest.skip("the width sweep runs with --benchmark-enable")
    rows = width_sweep(problems("ml100k-sized"), BACKEND)
    text = width_table(rows)
    RUNS.mkdir(exist_ok=True)
    (RUNS / "bench_tune_width.md").write_text(text + "\n")
    with request.config.pluginmanager.getplugin("capturemanager").global_and_fixture_disabled():
        print("\n\nWidth sweep (also in runs/bench_tune_width.md):\n" + text)
    assert [r["width"] for r in rows] == [1, 8, 16, 32, 64, 128, 256]


def test_smoke_every_search_counts_its_evaluations_and_batches(problems):
    """The small case ``make test`` runs: what each search reports is what it did."""
    problem = problems("smoke")
    tune_row = run_search("tune", problem, BACKEND, 16, 0)
    result = tune_row.pop("result")
    assert tune_row["evals"] == result.n_evals == 16 and 1 < tune_row["batches"] < 16
    assert tune_row["best_val_loss"] == min(e.loss for e in result.history)
    assert tune_row["longest_epochs"] <= tune_row["probe_epochs"]
    assert all(e.epochs <= e.epochs_trained for e in result.history)  # trained at least to its best epoch
    loop = run_search("seed-loop", problem, BACKEND, 16, 0)
    assert loop["batches"] == loop["evals"] <= 16
    assert loop["probe_epochs"] == loop["longest_epochs"] > 0  # one probe per batch
    grid = run_search("grid", problem, BACKEND, 16, 0, grid_side=4)
    assert grid["batches"] == 1 and grid["evals"] == 16 and grid["probe_epochs"] > grid["longest_epochs"] > 0
    for row in (tune_row, loop, grid):
        assert [t for t, _ in row["trace"]] == sorted(t for t, _ in row["trace"]) and row["trace"][-1][1] == \
            row["best_val_loss"]
    if not have_optuna():
        pytest.skip("TPE: optuna is not installed (pip install optuna, or the 'test' extra)")
    tpe = run_search("tpe", problem, BACKEND, 16, 0)
    assert tpe["evals"] == 16 and tpe["batches"] == 2
