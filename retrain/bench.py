"""A quick throughput comparison: each backend's training calls against the plain-PyTorch loops.

The backends train P probes on synthetic data for a few epochs, after a warm-up epoch; the eager
loop (one probe after another) and the batched PyTorch loop are timed on their first steps only.
Rates are rating·probe·epochs per second (one training rating visited by one probe in one epoch).
"""
from __future__ import annotations

import logging
import time

import torch

from .backends import BACKENDS, available_backends, get_backend
from .backends.base import csr_tensors
from .baselines import batched, eager_loop
from .contract import initial_embeddings, user_key
from .data import Ratings
from .demo import describe, load_ratings
from .errors import InputError, check_bool, check_int
from .hyperparams import HyperParams, model_family
from .pretrain import pretrain
from .report import markdown_table
from .trainer import prepare

log = logging.getLogger(__name__)


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
    """Seconds of one call training ``epochs`` epochs of all probes on a prepared problem, after a
    warm-up epoch (kernel compilation, caches, the thread pool, the fresh start)."""
    problem = prepare(head, data, None, hyp, be)
    problem.start(lrs.tolist(), regs.tolist())
    _seconds(lambda: problem.train(1), be.device)
    return _seconds(lambda: problem.train(epochs), be.device)


def _fast_backends() -> list[str]:
    """The available backends worth timing: not the reference, not Triton's CPU interpreter."""
    return [name for name in available_backends()
            if name != "reference" and not (name == "triton" and get_backend(name).device.type != "cuda")]


def run_bench(*, model: str, users: int, seed: int = 0, probes: int = 8, epochs: int = 4, backends=None,
              baseline_steps: int = 200, baselines: bool = True) -> str:
    """Time the backends (names, default: the fast available ones) and the baselines; returns the table.

    ``users``: synthetic users; ``model``: its head is fitted by one ALS sweep; ``probes`` train at
    once for ``epochs`` timed epochs; the baselines are timed on ``baseline_steps`` optimizer steps
    per probe.  InputError for an unknown backend name, or a count below 1.
    """
    model_family(model)
    # Each at least 1: 0 probes or epochs timed nothing and printed a table of zeros, -1 probes
    # raised inside torch.logspace.
    for name, value in (("users", users), ("probes", probes), ("epochs", epochs), ("baseline_steps", baseline_steps)):
        check_int(name, value, 1)
    baselines = check_bool("baselines", baselines)
    names = list(backends) if backends else _fast_backends()
    for name in names:
        if name not in BACKENDS or name == "auto":
            raise InputError(f"backends: unknown backend {name!r}: expected names from {BACKENDS[:-1]}")
    data, _ = load_ratings(n_users=users, seed=seed)
    log.info("bench: %s; fitting a %s head (one sweep) ...", describe(data), model)
    head = pretrain(data, model, seed=seed, iterations=1).head
    hyp = HyperParams(model=model, seed=seed)
    P = probes
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
    if baselines:
        device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
        data_t = csr_tensors(data, device)
        init = torch.from_numpy(initial_embeddings(user_key(data.user_ids), head.d, hyp.seed,
                                                   head.init_scale(data.n_users))).to(device)
        # The baselines are timed on their first baseline_steps minibatches (per probe for the
        # eager loop): their rate is per rating visited, so a slice measures it.
        visited = min(baseline_steps * hyp.batch_size, data.nnz * epochs) * P
        for label, loop in (("eager PyTorch loop (one probe after another)", eager_loop),
                            ("batched PyTorch (all probes in one tensor)", batched)):
            def run(steps):
                return lambda: loop(head, data_t, init, lrs.to(device), regs.to(device), n_epochs=epochs,
                                    batch_size=hyp.batch_size, seed=seed, max_steps=steps)

            _seconds(run(2), device)  # warm-up
            seconds = _seconds(run(baseline_steps), device)
            rows.append((f"{label}, {device.type}", seconds, visited / seconds))
            eager_rate = eager_rate or visited / seconds  # the eager loop comes first

    header = ["contender", "seconds", "M rating·probe·epochs/s"] + (["× eager loop"] if eager_rate else [])
    table = [[label, f"{s:.3f}", f"{r / 1e6:.3f}"] + ([f"{r / eager_rate:.1f}"] if eager_rate else [])
             for label, s, r in rows]
    lines = [f"bench: {describe(data)}, {model}, {P} probes, {epochs} epochs, batch {hyp.batch_size}, "
             f"{torch.get_num_threads()} CPU threads", markdown_table(header, table), *skipped]
    return "\n".join(lines)
