"""Score a design of the tuner (its module constants) on the tuning benchmark's two sets, seeds 0-9,
without timing anything that the machine's load could move (docs/benchmarks.md, "Tuner", round 6).

    .venv/bin/python tests/benchmarks/tune_designs.py [NAME=VALUE ...] [--seeds 10] [--cache FILE]

``NAME=VALUE`` sets a constant of ``retrain.tuner`` for the run (``FIRST_BATCH_SHARE=0.125``,
``FTOL_REL=1e-3``, ...).  Per set and seed: ``tune``'s best loss against Optuna's batched TPE (as
in ``test_bench_tune.py``), and a model of its wall time against the seed's loop: a probe batch
costs, summed over its epochs, ``cost(probes still training)`` single-probe epochs, and the loop
(one probe per batch) its probe-epochs.  ``cost(P)`` is measured once per set on this machine
(``run_probes`` of P identical probes, 16 epochs, best of 3, divided by P = 1's time).  TPE's
losses, the loop's probe-epochs and the costs are computed once and kept in ``--cache`` (default
``runs/tune_designs.json``; delete it after changing the problem or the machine).  Needs optuna
and nlopt.  Not a test: a tool for choosing the tuner's constants.
"""
import argparse
import bisect
import collections
import json
import sys
import time
from pathlib import Path

import numpy as np

import retrain.tuner as tuner
from retrain.movielens import load_movielens
from retrain.trainer import prepare, run_probes

sys.path.insert(0, str(Path(__file__).parent))
from gpu_tune import ML_SMALL, ml100k_sized, protocol_problem, run_search  # noqa: E402

WIDTHS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)


def measure_costs(problem) -> list[float]:
    """Seconds per epoch of ``run_probes`` with P identical probes, for P in ``WIDTHS``, over P = 1's."""
    head, train, val, hyp = problem
    hyp = hyp.replace(max_epochs=16, patience=16)  # every probe trains all 16 epochs
    prepared = prepare(head, train, val, hyp, "cpu")
    best = {p: np.inf for p in WIDTHS}
    for _ in range(3):
        for p in WIDTHS:
            start = time.perf_counter()
            run_probes(prepared, [1e-3] * p, [1e-5] * p, hyp)
            best[p] = min(best[p], time.perf_counter() - start)
    return [best[p] / best[1] for p in WIDTHS]


def batch_cost(epochs_trained: list[int], costs: list[float]) -> float:
    """Single-probe epochs a batch whose probes trained ``epochs_trained`` costs: per epoch, the cost
    of the probes still training (the next measured width up; past the widest, in proportion)."""
    epochs = np.array(epochs_trained)
    total = 0.0
    for epoch in range(int(epochs.max(initial=0))):
        live = int((epochs > epoch).sum())
        i = bisect.bisect_left(WIDTHS, live)
        total += costs[i] if i < len(WIDTHS) else costs[-1] * live / WIDTHS[-1]
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("constants", nargs="*", metavar="NAME=VALUE", help="a constant of retrain.tuner")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--cache", type=Path, default=Path("runs/tune_designs.json"))
    args = parser.parse_args()
    for assignment in args.constants:
        name, value = assignment.split("=")
        setattr(tuner, name, type(getattr(tuner, name))(float(value)))
    cache = json.loads(args.cache.read_text()) if args.cache.exists() else {}
    totals = collections.Counter()
    for name in ("ml100k-sized", "ml-latest-small"):
        if name == "ml-latest-small" and not ML_SMALL.exists():
            print(f"{name}: skipped ({ML_SMALL} is absent)")
            continue
        problem = protocol_problem(load_movielens(ML_SMALL) if name == "ml-latest-small" else ml100k_sized())
        if f"{name}-costs" not in cache:
            cache[f"{name}-costs"] = measure_costs(problem)
        line = []
        for seed in range(args.seeds):
            key = f"{name}-{seed}"
            if key not in cache:
                tpe = run_search("tpe", problem, "cpu", 64, seed)
                loop = run_search("seed-loop", problem, "cpu", 64, seed)
                cache[key] = dict(tpe_loss=tpe["best_val_loss"], loop_probe_epochs=loop["probe_epochs"])
            args.cache.parent.mkdir(parents=True, exist_ok=True)
            args.cache.write_text(json.dumps(cache))
            result = run_search("tune", problem, "cpu", 64, seed)["result"]
            batches = collections.defaultdict(list)
            for e in result.history:
                if e.trained:
                    batches[e.round].append(e.epochs_trained)
            ratio = sum(batch_cost(b, cache[f"{name}-costs"]) for b in batches.values()) / \
                cache[key]["loop_probe_epochs"]
            against_tpe = 100 * (result.val_loss / cache[key]["tpe_loss"] - 1)
            totals["worse than TPE"] += against_tpe > 0
            totals[f"{name}: at most half the loop"] += ratio <= 0.5
            line.append(f"{seed}: {against_tpe:+.3f}% {ratio:.2f}x {len(batches)}b")
        print(f"{name} (seed: loss vs TPE, modelled wall vs the loop, batches): " + ", ".join(line), flush=True)
    print(", ".join(f"{k} {v}" for k, v in totals.items()))


if __name__ == "__main__":
    main()
