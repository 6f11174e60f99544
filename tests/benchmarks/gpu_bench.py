"""GPU benchmark: the fused Triton training kernel against plain PyTorch, with its roofline.

Synthetic data the size of MovieLens-20M (138k users, 27k items, ~20M ratings, heavy-tailed user
activity and Zipf item popularity), built directly on the GPU.  Heads: d = 1 is the biases head
(Q = 1), d = 32 and 128 matrix factorization with random item vectors.  Adam.

Measured in the same run, on the same card:

* ceilings: device-to-device copy bandwidth (bytes read + written) and the FP32 rate of a large
  matmul with TF32 disabled;
* triton: ``retrain.kernels.train.train_epochs``, one epoch per launch, after a warm-up launch
  (compilation), median of several epochs timed with CUDA events;
* baselines (``retrain.baselines``): ``eager_loop`` (one probe after another, so measured with
  P = 1), ``batched`` (all probes in one tensor, minibatches drawn across users) and
  ``user_parallel`` (the contract vectorised across users: the strongest plain PyTorch).  The first
  two would take minutes to hours per epoch: each is timed on two ``max_steps`` slices and the
  per-minibatch time is extrapolated to the ``ceil(nnz / batch)`` minibatches of an epoch.
  ``user_parallel`` is timed on a whole epoch;
* numerics: the triton backend against the reference backend (the oracle) on a small problem;
* serving: warm p50 / p99 of ``fold_in`` (one new user, 50 ratings, 10 epochs) and ``recommend``
  (one user, top 10) through the public API with the triton backend and a CPU ``Head``;
* ``--variants``: the training kernel's variants (``kernels/blocks.py``: FMA products, persistent
  grid, bias folded or not, tf32x3, 32-probe blocks) side by side at each variant shape, taking
  turns on one probe state, each checked against the default's embeddings; the fastest within
  the parity tolerance is named (``gpu_variants.json``, ``gpu_variants_table.md``).

Every kernel a run will launch is compiled first, in parallel worker processes, from the real
launch arguments (``Run.precompile``): the measurements then load them from triton's cache, and
the run costs the longest compile instead of the sum of thirty.

Roofline of one launch (one epoch), counted exactly:

* HBM bytes = 12 nnz                    item id, rating and weight of every rating, once
            + 2 (1 + moments) 4 P U d   embeddings and optimizer moments, read and written once
            + 24 U                      indptr, user key and launch order
            + 4 I (h + 1)               the item table and biases once (it stays in L2 when it fits:
                                        its re-reads per rating and per probe block are L2 hits)
* flops = P (nnz (4h + 4) + S d 16)     per rating and probe: prediction (2h + 2), error (2),
                                        gradient (2h); per step and embedding float: Adam with the
                                        L2 term (16, a square root and two divisions counted as 1)
  with S the contract's steps per epoch, ``sum_u ceil(n_u / batch)``;
* floor = max(bytes / copy bandwidth, flops / FP32 rate); "of floor" = floor / kernel time.

    python3 tests/benchmarks/gpu_bench.py [--variants] [--out DIR] [--budget SECONDS]
    python3 tests/benchmarks/gpu_bench.py --smoke          # tiny, on the CPU under TRITON_INTERPRET=1
    python3 tests/benchmarks/gpu_bench.py --compile-report [--variants]  # sm_90 registers, spills, shared

The benchmark rewrites ``gpu_bench.json`` and ``gpu_bench_table.md`` (``gpu_variants.*`` with
``--variants``) under --out after every measurement (a run killed by its time limit keeps what
it finished), prints progress as it goes and the short table last.  A global time guard skips
what no longer fits.  ``--compile-report`` needs no GPU: it compiles the kernels for sm_90 exactly
as their launchers would launch them (the JIT's own specialization of the launchers' real
arguments) and writes ``compile_report.json`` (``compile_variants.json``: every variant).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

SMOKE = "--smoke" in sys.argv
if SMOKE:
    os.environ["TRITON_INTERPRET"] = "1"  # before any Triton kernel is defined
if "--compile-report" in sys.argv:
    os.environ.pop("TRITON_INTERPRET", None)  # compile real GPU code

import numpy as np  # noqa: E402
import torch  # noqa: E402

from retrain.backends.base import CSRTensors  # noqa: E402
from retrain.contract import Adam, user_key  # noqa: E402
from retrain.heads import Head  # noqa: E402

ADAM = Adam()
ADAM_ARGS = (ADAM.beta1, ADAM.beta2, ADAM.eps)
MOMENTS = 2  # Adam's
ADAM_FLOPS = 16  # per step and embedding float: see the module docstring
T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:7.1f}s] {msg}", flush=True)


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn, device, *, reps: int, max_seconds: float) -> list[float]:
    """Seconds per call of ``fn`` (already warmed up): CUDA events on a GPU, else a host clock;
    at least min(2, reps) calls, at most ``reps``, stopping early once ``max_seconds`` are spent."""
    times, spent = [], 0.0
    while len(times) < reps and (len(times) < 2 or spent < max_seconds):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        spent += times[-1]
    return times


# ----------------------------------------------------------------------------- ceilings
def copy_bandwidth(device, n_floats: int) -> float:
    """Bytes per second of a device-to-device copy, counting bytes read plus bytes written."""
    src = torch.rand(n_floats, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    sync(device)
    t = min(time_calls(lambda: dst.copy_(src), device, reps=10, max_seconds=2.0))
    return 2 * 4 * n_floats / t


def fp32_rate(device, n: int) -> float:
    """FLOP/s of an ``n x n x n`` float32 matmul with TF32 disabled (random inputs)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    c = a @ b
    sync(device)
    t = min(time_calls(lambda: torch.matmul(a, b, out=c), device, reps=5, max_seconds=3.0))
    return 2 * n**3 / t


# ----------------------------------------------------------------------------- data and heads
def synthetic_csr(n_users: int, n_items: int, mean_per_user: float, device, seed: int = 0) -> CSRTensors:
    """Ratings CSR by user, built with torch on ``device`` (numpy's generator takes minutes at
    this size): Pareto(1.5) user activity (at least 2 ratings, at most n_items), Zipf(0.8) item
    popularity, items sorted inside each user (repeats allowed), stars 1-5, weights 1."""
    g = torch.Generator(device=device).manual_seed(seed)
    activity = (1.0 - torch.rand(n_users, generator=g, device=device, dtype=torch.float64)) ** (-1 / 1.5)
    counts = (activity / activity.mean() * mean_per_user).round().clamp(2, n_items).long()
    popularity = 1.0 / torch.arange(1, n_items + 1, device=device, dtype=torch.float64) ** 0.8
    popularity = popularity[torch.randperm(n_items, generator=g, device=device)]
    cdf = torch.cumsum(popularity, 0)
    cdf /= cdf[-1].clone()
    nnz = int(counts.sum())
    items = torch.searchsorted(cdf, torch.rand(nnz, generator=g, device=device, dtype=torch.float64))
    items = items.clamp_(max=n_items - 1)
    users = torch.repeat_interleave(torch.arange(n_users, device=device), counts)
    order = torch.sort(users * n_items + items).indices
    items = items[order].to(torch.int32)
    ratings = torch.randint(1, 6, (nnz,), generator=g, device=device).float()
    indptr = torch.zeros(n_users + 1, dtype=torch.int64, device=device)
    indptr[1:] = torch.cumsum(counts, 0)
    keys = torch.from_numpy(user_key(np.arange(n_users))).to(device)
    return CSRTensors(indptr, items.contiguous(), ratings, torch.ones_like(ratings), keys)


def make_head(d: int, n_items: int, device, seed: int = 1) -> Head:
    """d = 1: the biases head (Q = 1); else matrix factorization with random item vectors."""
    g = torch.Generator(device=device).manual_seed(seed)
    bias = torch.randn(n_items, generator=g, device=device) * 0.3
    if d == 1:
        return Head.user_item_biases(bias, 3.5)
    return Head.matrix_factorization(torch.randn(n_items, d, generator=g, device=device) / math.sqrt(d), bias, 3.5)


def initial(n_users: int, d: int, device) -> torch.Tensor:
    """Glorot-uniform init (zeros for the biases head), as the trainer would give."""
    if d == 1:
        return torch.zeros(n_users, 1, device=device)
    s = math.sqrt(6.0 / (d + n_users))
    g = torch.Generator(device=device).manual_seed(2)
    return (torch.rand(n_users, d, generator=g, device=device) * 2 - 1) * s


def probe_grid(P: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    lrs = torch.logspace(-3, -1, P, device=device) if P > 1 else torch.tensor([1e-2], device=device)
    regs = torch.logspace(-5, -2, P, device=device) if P > 1 else torch.tensor([1e-4], device=device)
    return lrs.float().contiguous(), regs.float().contiguous()


# ----------------------------------------------------------------------------- roofline
def roofline(data: CSRTensors, steps: int, n_items: int, d: int, h: int, P: int, bandwidth: float,
             flop_rate: float) -> dict:
    """The floor of one one-epoch launch (module docstring): bytes, flops, times and the bound."""
    nnz, U = data.nnz, data.n_users
    hbm_bytes = 12 * nnz + 2 * (1 + MOMENTS) * 4 * P * U * d + 24 * U + 4 * n_items * (h + 1)
    flops = P * (nnz * (4 * h + 4) + steps * d * ADAM_FLOPS)
    t_bytes, t_flops = hbm_bytes / bandwidth, flops / flop_rate
    return dict(hbm_bytes=hbm_bytes, flops=flops, t_bytes=t_bytes, t_flops=t_flops, floor_s=max(t_bytes, t_flops),
                bound="memory" if t_bytes >= t_flops else "fp32")


# ----------------------------------------------------------------------------- measurements
class TritonConfig:
    """The prepared launch of ``train_epochs`` for one (d, P, batch) and kernel variant (``variant``:
    ``pick_blocks`` arguments): blocks, head, launch order.  ``share``: use
    that configuration's probe state (the variants of one shape compute the same function, so they
    can take turns advancing one state: memory for one)."""

    def __init__(self, head: Head, data: CSRTensors, d: int, P: int, batch: int, device, *,
                 variant: dict | None = None, share: TritonConfig | None = None):
        from retrain.backends.base import heaviest_first
        from retrain.backends.triton import kernel_head
        from retrain.kernels.blocks import pick_blocks

        self.data, self.batch, self.variant = data, batch, dict(variant or {})
        self.head = kernel_head(head, device, "triton")
        self.blocks = pick_blocks("train", P, d, head.h, head.h, batch, **self.variant)
        if share is not None:
            self.order, self.init, self.lrs, self.regs, self.state = (share.order, share.init, share.lrs, share.regs,
                                                                      share.state)
            return
        counts = (data.indptr[1:] - data.indptr[:-1]).cpu().numpy()
        self.order = torch.from_numpy(heaviest_first(counts)).to(device)
        self.init = initial(data.n_users, d, device)
        self.lrs, self.regs = probe_grid(P, device)
        emb = torch.empty((data.n_users, P, d), device=device)
        self.state = dict(emb=emb, m=torch.empty_like(emb), v=torch.empty_like(emb), epoch=0)

    @property
    def emb(self) -> torch.Tensor:
        return self.state["emb"]

    def launch_args(self, n_epochs: int = 1) -> tuple[tuple, dict]:
        """``train_epochs``' arguments for ``n_epochs`` more epochs (from the init at epoch 0)."""
        d, state = self.data, self.state
        return ((state["emb"], state["m"], state["v"], self.lrs, self.regs, d.indptr, d.keys, d.items, d.ratings,
                 d.weights, *self.head),
                dict(order=self.order, epoch_start=state["epoch"], n_epochs=n_epochs, batch_size=self.batch,
                     optimizer="adam", seed=0, adam=ADAM_ARGS, init=self.init if state["epoch"] == 0 else None,
                     blocks=self.blocks))

    def launch(self, n_epochs: int = 1, *, fresh: bool = False) -> torch.Tensor:
        """``n_epochs`` more epochs; the first launch, or any with ``fresh``, starts every probe from the init."""
        from retrain.kernels.train import train_epochs

        if fresh:
            self.state["epoch"] = 0
        args, kwargs = self.launch_args(n_epochs)
        bad = train_epochs(*args, **kwargs)
        self.state["epoch"] += n_epochs
        return bad

    def train_mse(self) -> torch.Tensor:
        """Per-probe training MSE of the current state (the validation kernel on the training ratings)."""
        from retrain.kernels.validate import user_losses

        d = self.data
        return user_losses(self.emb, d.indptr, d.items, d.ratings, d.weights, *self.head).double().sum(0) / d.nnz


def time_triton(config: TritonConfig, device, args) -> dict:
    """Warm-up launch (compiles; from the init), then the median of up to ``args.reps`` one-epoch launches."""
    t = time.perf_counter()
    config.launch(fresh=True)
    sync(device)
    warmup_s = time.perf_counter() - t
    mse_before = config.train_mse()
    times = time_calls(config.launch, device, reps=args.reps, max_seconds=args.per_config_s)
    bad = config.launch()
    mse_after = config.train_mse()
    return dict(epoch_s=statistics.median(times), epoch_s_min=min(times), epoch_s_max=max(times), reps=len(times),
                warmup_s=warmup_s, blocks=dataclasses.asdict(config.blocks),
                train_mse_epoch1=float(mse_before.min()), train_mse_last=float(mse_after.min()),
                finite=bool(int(bad.sum()) == 0))


def time_variants(configs: dict, device, args, deadline: float) -> dict:
    """The variants of one shape side by side (``configs``: name -> TritonConfig sharing one state,
    the default first).  Each trains two epochs from the init (compiling it), and its embeddings
    are compared with the default's; then rounds of one one-epoch launch per variant, in turn, so
    that every variant sees the same card state; the median per variant."""
    out, ref = {}, None
    for name, config in configs.items():
        if time.perf_counter() > deadline:
            out[name] = dict(skipped="time budget")
            continue
        t = time.perf_counter()
        bad = config.launch(2, fresh=True)
        sync(device)
        out[name] = dict(blocks=dataclasses.asdict(config.blocks), warmup_s=time.perf_counter() - t, times=[],
                         finite=bool(int(bad.sum()) == 0))
        if ref is None:
            ref = config.emb.clone()
        out[name]["rel_diff"] = float((config.emb - ref).abs().max() / ref.abs().max().clamp_min(1e-30))
    ready = {name: c for name, c in configs.items() if "times" in out[name]}
    for rnd in range(args.reps):
        if rnd >= 2 and time.perf_counter() > deadline:
            break
        for name, config in ready.items():
            out[name]["times"] += time_calls(config.launch, device, reps=1, max_seconds=0.0)
    for name in ready:
        times = out[name]["times"]
        out[name].update(epoch_s=statistics.median(times), epoch_s_min=min(times), epoch_s_max=max(times))
    return out


def time_baseline(fn, n_steps: tuple[int, int], device) -> dict:
    """Per-minibatch seconds of a baseline from two ``max_steps`` slices, so that its set-up
    (gathering the rows, shuffling, allocating the state) cancels out.  When the difference is
    lost in noise, the longer slice's time over its steps is used (an upper bound) and flagged."""
    elapsed = []
    for steps in n_steps:
        sync(device)
        t = time.perf_counter()
        out = fn(steps)
        sync(device)
        elapsed.append(time.perf_counter() - t)
        del out
    separated = elapsed[1] > 1.05 * elapsed[0]
    per_step = (elapsed[1] - elapsed[0]) / (n_steps[1] - n_steps[0]) if separated else elapsed[1] / n_steps[1]
    return dict(per_step_s=per_step, slices=list(n_steps), slice_s=elapsed, setup_separated=separated)


def free_bytes(device) -> int:
    return torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else 1 << 62


def user_parallel_baseline():
    """``retrain.baselines.user_parallel``, or None while it is not there (issue 11)."""
    try:
        from retrain.baselines import user_parallel
    except ImportError:
        return None
    return user_parallel


# ----------------------------------------------------------------------------- the table
def fmt_rate(x) -> str:
    return "-" if x is None else (f"{x:.3g}" if x < 1e4 else f"{x:,.0f}")


def fmt_ratio(a, b) -> str:
    return "-" if a is None or b is None else f"{a / b:,.0f}x" if a / b >= 10 else f"{a / b:.2g}x"


def table(res: dict) -> str:
    env, ceil, data = res["env"], res.get("ceilings", {}), res.get("data", {})
    lines = [f"GPU benchmark ({env['device']}; torch {env['torch']}, triton {env['triton']})"]
    if ceil:
        lines.append(f"ceilings: copy {ceil['copy_Bps'] / 1e12:.3g} TB/s, FP32 matmul {ceil['fp32_flops'] / 1e12:.3g}"
                     " TFLOP/s")
    if data:
        lines.append(f"data: {data['users']:,} users, {data['items']:,} items, {data['nnz']:,} ratings; Adam; "
                     "pe/s = probe-epochs per second; eager/batched extrapolated from max_steps slices")
    if res["configs"]:
        lines += ["", "| d | P | batch | triton ms/epoch | triton pe/s | floor ms (bound) | of floor | eager pe/s "
                  "| batched pe/s | user-parallel pe/s | vs eager | vs batched | vs user-parallel |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in res["configs"]:
        head = f"| {r['d']} | {r['P']} | {r['batch']} |"
        if "skipped" in r:
            lines.append(f"{head} skipped: {r['skipped']} | | | | | | | | | |")
            continue
        tri = r.get("triton", {})
        pe = r["P"] / tri["epoch_s"] if "epoch_s" in tri else None
        rate = lambda name: r.get(name, {}).get("probe_epochs_per_s")
        eager = res["eager"].get(f"{r['d']}/{r['batch']}", {}).get("probe_epochs_per_s")
        roof = r.get("roofline")
        ms = f"{1e3 * tri['epoch_s']:.3g}" if pe else f"{tri.get('error', 'not run')[:40]}"
        floor = f"{1e3 * roof['floor_s']:.3g} ({roof['bound']})" if roof else "-"
        frac = f"{100 * roof['floor_s'] / tri['epoch_s']:.0f}%" if roof and pe else "-"
        lines.append(f"{head} {ms} | {fmt_rate(pe)} | {floor} | {frac} | {fmt_rate(eager)} | "
                     f"{fmt_rate(rate('batched'))} | {fmt_rate(rate('user_parallel'))} | {fmt_ratio(pe, eager)} | "
                     f"{fmt_ratio(pe, rate('batched'))} | {fmt_ratio(pe, rate('user_parallel'))} |")
    numerics = res.get("numerics", {})
    if "emb_rel_err" in numerics:
        lines.append(f"numerics (IEEE div/sqrt, FMA on; {numerics['users']} users, d={numerics['d']}, "
                     f"{numerics['epochs']} epochs of Adam): embeddings {numerics['emb_rel_err']:.2g}, validation "
                     f"losses {numerics['loss_rel_err']:.2g} relative to the reference backend")
    serving = res.get("serving")
    if serving:
        for name in ("fold_in", "recommend"):
            r = serving.get(name, {})
            outcome = (f"p50 {r['p50_ms']:.3g} ms, p99 {r['p99_ms']:.3g} ms ({r['reps']} calls)" if "p99_ms" in r
                       else r.get("error", r.get("skipped", "not run"))[:80])
            lines.append(f"serving {name}, one user (d={serving['d']}, {serving['ratings']} ratings"
                         + (f", {serving['epochs']} epochs" if name == "fold_in" else "") + f"): {outcome}")
    lines += variant_table(res["variant_rows"])
    lines += [f"note: {note}" for note in res["notes"]]
    return "\n".join(lines)


def variant_table(rows: list) -> list[str]:
    """The variants side by side: one line per (shape, variant), the fastest marked."""
    if not rows:
        return []
    lines = ["", "| d | P | batch | variant | probes x warps | ms/epoch (median) | min - max | vs default "
             "| rel diff | |", "|---:|---:|---:|---|---:|---:|---:|---:|---:|---|"]
    for row in rows:
        head = f"| {row['d']} | {row['P']} | {row['batch']} |"
        variants = row.get("variants", {})
        if "skipped" in row or "error" in variants or "skipped" in variants:
            reason = row.get("skipped") or variants.get("error") or variants.get("skipped")
            lines.append(f"{head} {reason[:80]} | | | | | | |")
            continue
        default = variants.get("default", {}).get("epoch_s")
        for name, r in variants.items():
            if "epoch_s" not in r:
                lines.append(f"{head} {name} | | {r.get('skipped', r.get('error', 'not run'))[:60]} | | | | |")
                continue
            blocks = r["blocks"]
            mark = "fastest" if row.get("fastest") == name else ("over tolerance" if r["rel_diff"] > row["tolerance"]
                                                                  else "")
            lines.append(f"{head} {name} | {blocks['rows']} x {blocks['num_warps']} | {1e3 * r['epoch_s']:.3f} | "
                         f"{1e3 * r['epoch_s_min']:.3f} - {1e3 * r['epoch_s_max']:.3f} | "
                         f"{fmt_ratio(default, r['epoch_s'])} | {r['rel_diff']:.2g} | {mark} |")
    return lines


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- the run
@dataclasses.dataclass
class Plan:
    """What one run measures: sizes, configurations, baseline slices, variants."""

    device: torch.device
    users: int
    items: int
    mean_per_user: float
    configs: list  # (d, P, batch); baselines at the (d, P, batch) of ``baselines``
    baselines: list  # (d, P, batch): batched and user_parallel
    eager: list  # (d, batch): the eager loop, P = 1
    copy_floats: int
    matmul_n: int
    eager_steps: tuple
    batched_steps: tuple
    variant_shapes: list  # (d, P, batch) at which --variants times every variant side by side
    serving_reps: int  # timed fold_in / recommend calls
    numerics: tuple  # (users, items, ratings per user, d) of the comparison with the reference
    tolerance: float = 1e-5  # tests/test_triton_kernels.py's parity tolerance


SMOKE_PLAN = dict(users=40, items=30, mean_per_user=6.0, configs=[(1, 4, 16), (8, 1, 16), (8, 4, 16), (8, 4, 64)],
                  baselines=[(8, 4, 16)], eager=[(8, 16)], copy_floats=1 << 20, matmul_n=256, eager_steps=(2, 6),
                  batched_steps=(2, 6), variant_shapes=[(20, 4, 16)], serving_reps=3, numerics=(12, 30, 6, 8))
GPU_PLAN = dict(users=138_000, items=27_000, mean_per_user=145.0,
                configs=[(32, 64, 16), (32, 8, 16), (32, 64, 1024), (1, 64, 16), (128, 64, 16), (32, 1, 16),
                         (32, 256, 16), (1, 8, 16), (128, 8, 16)],
                baselines=[(32, 64, 16), (32, 64, 1024), (32, 8, 16), (1, 64, 16), (128, 64, 16)],
                eager=[(32, 16), (32, 1024), (1, 16), (128, 16)],
                copy_floats=1 << 28, matmul_n=8192, eager_steps=(20, 120), batched_steps=(10, 110),
                variant_shapes=[(32, 64, 16), (32, 64, 1024), (32, 8, 16), (1, 64, 16), (128, 64, 16)],
                serving_reps=200, numerics=(300, 500, 30, 32))


def shape_variants(d: int, P: int, batch: int) -> dict:
    """The training kernel's variants timed at one shape: name -> ``pick_blocks`` arguments, the
    default first (``kernels/blocks.py``), then each switch flipped and the likeliest pairs.
    tf32x3 needs probe blocks of 16; rows=32 only splits blocks of 64."""
    from retrain.kernels.blocks import MIN_DOT_K, folds_for_free, pick_blocks

    fold = not folds_for_free(d)
    variants = {"default": {}, "fma": dict(products="fma"), "persistent": dict(persistent=True),
                "fma+persistent": dict(products="fma", persistent=True), f"fold_bias={int(fold)}": dict(fold_bias=fold)}
    rows = pick_blocks("train", P, d, d, d, batch).rows
    if rows >= MIN_DOT_K:
        variants["tf32x3"] = dict(products="tf32x3")
    if rows > 32:
        variants["rows=32"] = dict(rows=32)
    return variants


class Run:
    """One benchmark run: the plan, the data, the results so far (saved after each) and the time guard."""

    def __init__(self, plan: Plan, args):
        self.plan, self.args, self.device = plan, args, plan.device
        self.deadline = T0 + args.budget
        self.out = Path(args.out)
        self.res = dict(configs=[], eager={}, variant_rows=[], notes=[], budget_s=args.budget)
        self.name = "gpu_variants" if args.variants else "gpu_bench"

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def save(self) -> None:
        self.res["elapsed_s"] = time.perf_counter() - T0
        write_atomic(self.out / f"{self.name}.json", json.dumps(self.res, indent=1, default=str))
        write_atomic(self.out / f"{self.name}_table.md", table(self.res) + "\n")

    def guarded(self, entry: dict, name: str, fn, *, min_left: float) -> None:
        """``entry[name] = fn()`` unless the budget is spent; an exception is recorded, not raised."""
        if self.left() < min_left:
            entry[name] = dict(skipped="time budget")
        else:
            try:
                entry[name] = fn()
            except Exception as exc:  # keep going: the table says what failed
                entry[name] = dict(error=f"{type(exc).__name__}: {str(exc)[:300]}")
                log(f"{name} FAILED: {entry[name]['error']}")
            finally:
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
        self.save()

    def setup(self) -> None:
        import triton

        device, plan, res = self.device, self.plan, self.res
        cuda = device.type == "cuda"
        res["env"] = dict(device=torch.cuda.get_device_name(device) if cuda else "cpu (interpreter)",
                          torch=torch.__version__, triton=triton.__version__, python=platform.python_version(),
                          sms=torch.cuda.get_device_properties(device).multi_processor_count if cuda else None)
        log(f"device {res['env']['device']}, torch {torch.__version__}, triton {triton.__version__}")
        self.save()
        ceil = res["ceilings"] = dict(copy_Bps=copy_bandwidth(device, plan.copy_floats),
                                      fp32_flops=fp32_rate(device, plan.matmul_n))
        log(f"ceilings: copy {ceil['copy_Bps'] / 1e9:.1f} GB/s, FP32 {ceil['fp32_flops'] / 1e12:.2f} TFLOP/s")
        t = time.perf_counter()
        self.data = synthetic_csr(plan.users, plan.items, plan.mean_per_user, device)
        sync(device)
        self.counts = self.data.indptr[1:] - self.data.indptr[:-1]
        res["data"] = dict(users=plan.users, items=plan.items, nnz=self.data.nnz, build_s=time.perf_counter() - t,
                           max_per_user=int(self.counts.max()), median_per_user=float(self.counts.double().median()))
        log(f"data: {res['data']}")
        self.heads = {}
        self.save()

    def head(self, d: int) -> Head:
        if d not in self.heads:
            self.heads[d] = make_head(d, self.plan.items, self.device)
        return self.heads[d]

    def steps(self, batch: int) -> int:
        """The contract's steps per epoch: ``sum_u ceil(n_u / batch)``."""
        return int(((self.counts + batch - 1) // batch).sum())

    def minibatch_rate(self, r: dict, P: int, batch: int) -> dict:
        """Probe-epochs/s of a baseline drawing ``ceil(nnz / batch)`` minibatches per epoch."""
        r["probe_epochs_per_s"] = P / (r["per_step_s"] * math.ceil(self.data.nnz / batch))
        return r

    def eager(self) -> None:
        """The eager loop trains one probe after another: its probe-epochs/s is measured with P = 1."""
        from retrain.baselines import eager_loop

        for d, batch in self.plan.eager:
            lr, reg = probe_grid(1, self.device)
            init = initial(self.data.n_users, d, self.device)
            run = lambda s: eager_loop(self.head(d), self.data, init, lr, reg, n_epochs=1, batch_size=batch,
                                       max_steps=s)

            def measure():
                time_baseline(run, (1, 2), self.device)  # warm-up
                r = self.minibatch_rate(time_baseline(run, self.plan.eager_steps, self.device), 1, batch)
                log(f"eager d={d} batch={batch}: {1e3 * r['per_step_s']:.3f} ms/step -> "
                    f"{r['probe_epochs_per_s']:.3g} probe-epochs/s")
                return r
            self.guarded(self.res["eager"], f"{d}/{batch}", measure, min_left=20)

    def precompile(self, shapes: list) -> None:
        """Compile, in parallel worker processes, the training and validation kernels that
        ``shapes`` (``(d, P, batch, variant)``) will launch (``launch_packs``), so that the
        measurements load them from triton's cache instead of compiling one after another.
        Nothing to do under the interpreter; a failure only costs the time: the launches compile
        what they need themselves."""
        if self.device.type != "cuda":
            return
        t = time.perf_counter()
        try:
            major, minor = torch.cuda.get_device_capability(self.device)
            packs = self.launch_packs(shapes, 10 * major + minor)
            list(compile_in_parallel(packs))
            log(f"precompiled {len(packs)} kernels in {time.perf_counter() - t:.1f} s")
        except Exception as exc:  # the launches will compile
            log(f"precompile FAILED ({type(exc).__name__}: {str(exc)[:200]}); kernels compile at first launch")

    def launch_packs(self, shapes: list, arch: int) -> list:
        """``pack_launch`` of each distinct training and validation kernel that ``shapes`` will
        launch, from the real launch arguments (the probe state is allocated, not written)."""
        from retrain.kernels import train, validate

        packs = {}  # by repr: the same kernel once
        for d, P, batch, variant in shapes:
            if (1 + MOMENTS) * 4 * P * self.data.n_users * d * 1.15 + (2 << 30) > free_bytes(self.device):
                continue
            config = TritonConfig(self.head(d), self.data, d, P, batch, self.device, variant=variant)
            args, kwargs = config.launch_args()
            launches = (recorded_launch(train, "_train_epochs_kernel", train.train_epochs, *args, **kwargs),
                        recorded_launch(validate, "_validation_loss_kernel", config.train_mse))
            for pack in (pack_launch(*launch, arch) for launch in launches):
                packs[repr(pack)] = pack
            del config, args, kwargs
        return list(packs.values())

    def configs(self) -> None:
        ceil = self.res["ceilings"]
        self.precompile([(d, P, batch, {}) for d, P, batch in self.plan.configs])
        for d, P, batch in self.plan.configs:
            row = dict(d=d, P=P, batch=batch)
            self.res["configs"].append(row)
            state_bytes = (1 + MOMENTS) * 4 * P * self.data.n_users * d
            free = free_bytes(self.device)
            if state_bytes * 1.15 + (2 << 30) > free:
                row["skipped"] = f"state {state_bytes / 1e9:.0f} GB does not fit ({free / 1e9:.0f} GB free)"
                self.save()
                continue

            def measure():
                config = TritonConfig(self.head(d), self.data, d, P, batch, self.device)
                tri = time_triton(config, self.device, self.args)
                roof = row["roofline"] = roofline(self.data, self.steps(batch), self.plan.items, d, self.head(d).h, P,
                                                  ceil["copy_Bps"], ceil["fp32_flops"])
                log(f"triton d={d} P={P} batch={batch}: {1e3 * tri['epoch_s']:.3f} ms/epoch, "
                    f"{P / tri['epoch_s']:.3g} probe-epochs/s, {100 * roof['floor_s'] / tri['epoch_s']:.0f}% of the "
                    f"floor {1e3 * roof['floor_s']:.3f} ms (warm-up {tri['warmup_s']:.1f} s; train MSE "
                    f"{tri['train_mse_epoch1']:.3f} -> {tri['train_mse_last']:.3f})")
                return tri
            self.guarded(row, "triton", measure, min_left=15)
            if (d, P, batch) in self.plan.baselines:
                self.baselines(row)

    def baselines(self, row: dict) -> None:
        from retrain.baselines import batched

        d, P, batch = row["d"], row["P"], row["batch"]
        lrs, regs = probe_grid(P, self.device)
        init = initial(self.data.n_users, d, self.device)
        run = lambda s: batched(self.head(d), self.data, init, lrs, regs, n_epochs=1, batch_size=batch, max_steps=s)

        def measure_batched():
            run(2)  # warm-up
            r = self.minibatch_rate(time_baseline(run, self.plan.batched_steps, self.device), P, batch)
            log(f"batched d={d} P={P} batch={batch}: {r['probe_epochs_per_s']:.3g} probe-epochs/s")
            return r
        self.guarded(row, "batched", measure_batched, min_left=15)
        user_parallel = user_parallel_baseline()
        if user_parallel is None:
            row["user_parallel"] = dict(skipped="not importable")
            note = "user_parallel: skipped, retrain.baselines.user_parallel is not importable in this checkout"
            if note not in self.res["notes"]:
                self.res["notes"].append(note)
            self.save()
            return

        def measure_user_parallel():
            call = lambda steps: user_parallel(self.head(d), self.data, init, lrs, regs, n_epochs=1, batch_size=batch,
                                               seed=0, max_steps=steps)
            call(2)  # warm-up
            sync(self.device)
            t = time.perf_counter()
            call(None)  # a whole epoch: its steps shrink as users run out of minibatches
            sync(self.device)
            epoch_s = time.perf_counter() - t
            log(f"user_parallel d={d} P={P} batch={batch}: {epoch_s:.3f} s/epoch")
            return dict(epoch_s=epoch_s, probe_epochs_per_s=P / epoch_s)
        self.guarded(row, "user_parallel", measure_user_parallel, min_left=20)

    def variants(self) -> None:
        """Every variant of the training kernel side by side at each of the plan's variant shapes
        (``time_variants``), the fastest within the parity tolerance named."""
        self.precompile([(d, P, batch, variant) for d, P, batch in self.plan.variant_shapes
                         for variant in shape_variants(d, P, batch).values()])
        for d, P, batch in self.plan.variant_shapes:
            row = dict(d=d, P=P, batch=batch, tolerance=self.plan.tolerance)
            self.res["variant_rows"].append(row)
            state_bytes = (2 + MOMENTS) * 4 * P * self.data.n_users * d  # the shared state and the default's copy
            if state_bytes * 1.15 + (2 << 30) > free_bytes(self.device):
                row["skipped"] = f"state {state_bytes / 1e9:.0f} GB does not fit"
                self.save()
                continue
            head = self.head(d)

            def measure():
                configs = {}
                for name, variant in shape_variants(d, P, batch).items():
                    configs[name] = TritonConfig(head, self.data, d, P, batch, self.device, variant=variant,
                                                 share=next(iter(configs.values()), None))
                out = time_variants(configs, self.device, self.args, self.deadline - 8)
                fair = {n: r for n, r in out.items() if "epoch_s" in r and r["rel_diff"] <= self.plan.tolerance}
                if fair:
                    best = min(fair, key=lambda n: fair[n]["epoch_s"])
                    row["fastest"] = best
                    log(f"variants d={d} P={P} batch={batch}: "
                        + ", ".join(f"{n} {1e3 * r['epoch_s']:.3f} ms" for n, r in out.items() if "epoch_s" in r)
                        + f"; fastest {best}")
                return out
            self.guarded(row, "variants", measure, min_left=15)
        self.res["notes"].append("variants: rel diff = max |emb - emb_default| / max |emb_default| after two epochs "
                                 "from the same init; the fastest is named among those within the parity tolerance "
                                 "of the kernel tests; rounds of one epoch per variant in turn, median")

    def numerics(self) -> None:
        """The kernels' difference from the reference backend (the oracle, on the CPU): embeddings
        and validation losses after 5 epochs of Adam, 4 probes, one launch with its checkpoint."""
        from retrain.data import Ratings
        from retrain.hyperparams import HyperParams
        from retrain.trainer import prepare

        n_users, n_items, per_user, d = self.plan.numerics
        rng = np.random.default_rng(5)
        users = np.repeat(np.arange(n_users), per_user)
        items = np.concatenate([rng.choice(n_items, per_user, replace=False) for _ in range(n_users)])
        data = Ratings.from_coo(users, items, rng.integers(1, 6, len(users)).astype(np.float32), n_users=n_users,
                                n_items=n_items)
        train, val = data.split_per_user(0.2, seed=0)
        head = make_head(d, n_items, torch.device("cpu"))
        hyp = HyperParams(model=f"matrix_factorization_{d}", batch_size=8, seed=3)

        def measure():
            out = {}
            for backend in ("reference", "triton"):
                problem = prepare(head, train, val, hyp, backend)
                problem.start([1e-3, 1e-2, 3e-2, 1e-1], [1e-4, 1e-3, 0.0, 1e-2])
                checkpoint = problem.checkpoint(5)
                out[backend] = (problem.embeddings().cpu().double(), checkpoint.losses)
            (emb_ref, loss_ref), (emb, loss) = out["reference"], out["triton"]
            r = dict(users=n_users, d=d, epochs=5,
                     emb_rel_err=float((emb - emb_ref).abs().max() / emb_ref.abs().max()),
                     loss_rel_err=float(np.max(np.abs(loss - loss_ref) / np.abs(loss_ref))))
            log(f"numerics: embeddings {r['emb_rel_err']:.2g}, validation losses {r['loss_rel_err']:.2g} relative to "
                "the reference")
            return r
        self.guarded(self.res, "numerics", measure, min_left=10)

    def serving(self) -> None:
        """Warm latencies of one user through the public API with the triton backend: ``fold_in``
        (train a new user's embedding, 10 epochs, from CPU ratings to a CPU embedding) and
        ``recommend`` (top 10 of every item); the head is a CPU ``Head``, uploaded once."""
        from retrain.data import Ratings
        from retrain.hyperparams import HyperParams
        from retrain.serving import fold_in, recommend

        plan = self.plan
        head = make_head(8 if SMOKE else 32, plan.items, torch.device("cpu"))
        rng = np.random.default_rng(0)
        items = rng.choice(plan.items, size=min(50, plan.items), replace=False)
        user = Ratings.from_coo(np.zeros(len(items), dtype=np.int64), items, rng.integers(1, 6, len(items)),
                                n_users=1, n_items=plan.items)
        hyp = HyperParams(model=f"matrix_factorization_{head.d}", num_users=plan.users, seed=0)
        emb = fold_in(head, user, hyp, 10, backend="triton")

        def latencies(fn) -> dict:
            fn()  # warm: compiles, uploads the head
            times = []
            for _ in range(plan.serving_reps):
                t = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t)
            times.sort()
            return dict(p50_ms=1e3 * times[len(times) // 2], p99_ms=1e3 * times[min(len(times) - 1,
                                                                                     int(0.99 * len(times)))],
                        reps=len(times))

        entry = self.res["serving"] = dict(d=head.d, ratings=len(items), epochs=10)
        self.guarded(entry, "fold_in", lambda: latencies(lambda: fold_in(head, user, hyp, 10, backend="triton")),
                     min_left=10)
        self.guarded(entry, "recommend", lambda: latencies(lambda: recommend(head, emb, 10, backend="triton")),
                     min_left=5)
        for name in ("fold_in", "recommend"):
            r = entry[name]
            if "p99_ms" in r:
                log(f"serving {name}: p50 {r['p50_ms']:.3f} ms, p99 {r['p99_ms']:.3f} ms")

    def finish(self) -> str:
        flagged = [f"eager {k}" for k, r in self.res["eager"].items() if r.get("setup_separated") is False]
        flagged += [f"batched d={r['d']} P={r['P']} batch={r['batch']}" for r in self.res["configs"]
                    if r.get("batched", {}).get("setup_separated") is False]
        if flagged:
            self.res["notes"].append("set-up not separable from the steps (upper bound per step used): "
                                     + ", ".join(flagged))
        self.save()
        log(f"wrote {self.out / (self.name + '.json')}")
        return table(self.res)


# ----------------------------------------------------------------------------- sm_90 compile report
class _LaunchRecorder:
    """Stands in for a ``@triton.jit`` kernel inside its launcher: records ``kernel[grid](*args,
    **kwargs)`` instead of running it, so that the real launch arguments can be compiled."""

    def __init__(self):
        self.launches = []

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.launches.append((args, kwargs))


def recorded_launch(module, kernel_name: str, launcher, *args, **kwargs) -> tuple:
    """``(kernel, args, kwargs)`` of the one launch ``launcher(*args, **kwargs)`` makes."""
    recorder = _LaunchRecorder()
    with mock.patch.object(module, kernel_name, recorder):
        launcher(*args, **kwargs)
    (launch_args, launch_kwargs), = recorder.launches
    return getattr(module, kernel_name), launch_args, launch_kwargs


def pack_launch(kernel, args, kwargs, arch: int) -> tuple:
    """What ``triton.compile`` needs to build ``kernel[grid](*args, **kwargs)`` for CUDA ``arch``,
    with the specialization the JIT gives these arguments (integer divisibility by 16, pointer
    alignment, constexprs), as plain data that another process can take (``compile_packed``)."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    backend = make_backend(GPUTarget("cuda", arch, 32))
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound_args, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound_args, specialization, options)
    return kernel.fn.__module__, kernel.fn.__name__, signature, constexprs, attrs, options.__dict__, arch


def compile_packed(packed: tuple):
    """Compile a ``pack_launch`` (no GPU needed).  Triton keeps the result in its on-disk cache
    under the key the JIT computes for that launch, so a later launch on the GPU loads it."""
    import importlib

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    module, name, signature, constexprs, attrs, options, arch = packed
    kernel = getattr(importlib.import_module(module), name)
    return triton.compile(ASTSource(kernel, signature, constexprs, attrs), target=GPUTarget("cuda", arch, 32),
                          options=options)


def _compile_figures(packed: tuple) -> dict:
    t = time.perf_counter()
    return dict(resource_usage(compile_packed(packed)), compile_s=time.perf_counter() - t)


def compile_in_parallel(packs: list, *, figures: bool = False):
    """``compile_packed`` of every pack in worker processes (one per core, at most 16; spawned, so
    no CUDA state is inherited), in order: their resource figures when ``figures``, else None each.
    Compiling the kernels of a run up front this way costs the longest compile instead of their sum.
    On two cores or fewer, in this process: starting workers (torch each) would cost more."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    fn = _compile_figures if figures else compile_packed_quietly
    workers = min(16, os.cpu_count() or 1, len(packs))
    if workers <= 2:
        yield from map(fn, packs)
        return
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield from pool.map(fn, packs)


def compile_packed_quietly(packed: tuple) -> None:
    compile_packed(packed)


def resource_usage(compiled) -> dict:
    """Registers, stack and local memory per thread (``cuobjdump`` of the cubin) and shared memory."""
    import triton

    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        text = subprocess.run([str(tool), "--dump-resource-usage", f.name], capture_output=True, text=True,
                              check=True).stdout
    figures = {key.lower(): int(value) for key, value in re.findall(r"\b(REG|STACK|LOCAL|SHARED):(\d+)", text)}
    figures["shared_dynamic"] = int(compiled.metadata.shared)
    figures["num_warps"] = int(compiled.metadata.num_warps)
    return figures


def programs_per_sm(regs: int, num_warps: int, shared: int) -> int:
    """Resident programs per Hopper SM: 64K registers (allocated per warp in units of 256),
    64 warps, 227 KB of shared memory, 32 blocks."""
    regs_per_warp = -(-regs * 32 // 256) * 256
    by_regs = 65536 // (regs_per_warp * num_warps)
    by_shared = (227 * 1024) // shared if shared else 32
    return min(by_regs, 64 // num_warps, by_shared, 32)


def compile_cases(variants: bool = False):
    """``(label, module, kernel name, launcher, args, kwargs)``: the launches of the benchmark's
    configurations (d in 1, 32, 128; P = 8 and 64, the default probe blocks; batch 16 and 1024),
    on tiny CPU tensors: the specialization depends on the sizes that reach the kernel (P, d,
    strides), not on the number of users or ratings.  ``variants``: instead, every variant of the
    training kernel at the variant shapes (and d = 20, where the bias folds for free)."""
    from retrain.backends.triton import kernel_head
    from retrain.kernels import score, train, validate
    from retrain.kernels.blocks import pick_blocks

    data = synthetic_csr(6, 40, 5.0, torch.device("cpu"))
    order = torch.arange(data.n_users)
    cases = []
    shapes = GPU_PLAN["variant_shapes"] + [(20, 64, 16)] if variants else [
        (1, 64, 16), (32, 64, 16), (128, 64, 16), (32, 8, 16), (32, 64, 1024), (1, 8, 16)]
    for d, P, batch in shapes:
        head = kernel_head(make_head(d, 40, torch.device("cpu")), torch.device("cpu"), "triton")
        emb = torch.zeros(data.n_users, P, d)
        lrs, regs = probe_grid(P, torch.device("cpu"))
        args = (emb, torch.zeros_like(emb), torch.zeros_like(emb), lrs, regs, data.indptr, data.keys, data.items,
                data.ratings, data.weights, *head)
        kwargs = dict(order=order, epoch_start=1, batch_size=batch, optimizer="adam", seed=0, adam=ADAM_ARGS)
        if variants:
            for name, variant in shape_variants(d, P, batch).items():
                blocks = pick_blocks("train", P, d, d, d, batch, **variant)
                cases.append((f"train d={d} P={P} batch={batch} {name}", train, "_train_epochs_kernel",
                              train.train_epochs, args, dict(kwargs, n_epochs=1, blocks=blocks)))
            continue
        cases.append((f"train d={d} P={P} batch={batch}", train, "_train_epochs_kernel", train.train_epochs, args,
                      dict(kwargs, n_epochs=1)))
        if (d, P, batch) == (32, 64, 16):  # the trainer's launches: checkpoints with validation
            cases.append((f"train+validate d={d} P={P} batch={batch}", train, "_train_epochs_kernel",
                          train.train_checkpoints, args, dict(kwargs, checkpoint_ends=[1, 2],
                                                              val=(data.indptr, data.items, data.ratings,
                                                                   data.weights))))
            cases.append((f"validate d={d} P={P}", validate, "_validation_loss_kernel", validate.user_losses,
                          (emb, data.indptr, data.items, data.ratings, data.weights, *head), {}))
            cases.append((f"score d={d} n=1", score, "_score_kernel", score.score, (emb[:1, 0], *head), {}))
    return cases


def compile_report(out: Path, arch: int, *, variants: bool = False) -> list[dict]:
    """Compile every case of ``compile_cases(variants)`` for ``arch``; print and write the figures
    as they come (``compile_report.json`` / ``.md``, ``compile_variants.*`` with ``variants``)."""
    import triton

    rows = []
    lines = [f"sm_{arch} compile report, triton {triton.__version__} (the launchers' real specialization; "
             "per thread: registers, stack and local bytes; shared bytes per program)", "",
             "| kernel | warps | registers | stack | local | shared | programs/SM |", "|---|---:|---:|---:|---:|---:|---:|"]
    print("\n".join(lines), flush=True)
    name = "compile_variants" if variants else "compile_report"
    cases = compile_cases(variants)
    packs = [pack_launch(*recorded_launch(module, kernel_name, launcher, *args, **kwargs), arch)
             for _, module, kernel_name, launcher, args, kwargs in cases]
    for (label, *_), figures in zip(cases, compile_in_parallel(packs, figures=True)):
        shared = max(figures.get("shared", 0), figures["shared_dynamic"])
        row = dict(kernel=label, programs_per_sm=programs_per_sm(figures["reg"], figures["num_warps"], shared),
                   **figures)
        rows.append(row)
        lines.append(f"| {label} | {row['num_warps']} | {row['reg']} | {row.get('stack', 0)} | {row.get('local', 0)} "
                     f"| {shared} | {row['programs_per_sm']} |")
        print(lines[-1], flush=True)
        write_atomic(out / f"{name}.json", json.dumps(dict(triton=triton.__version__, arch=arch, rows=rows), indent=1))
        write_atomic(out / f"{name}.md", "\n".join(lines) + "\n")
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "runs/gpu_bench"))
    ap.add_argument("--budget", type=float, default=200.0, help="seconds for the whole run (time guard)")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU under TRITON_INTERPRET=1")
    ap.add_argument("--compile-report", action="store_true", help="sm_90 resource figures of the kernels (no GPU)")
    ap.add_argument("--variants", action="store_true",
                    help="time the training kernel's variants side by side (with --compile-report: compile them)")
    ap.add_argument("--arch", type=int, default=90, help="CUDA compute capability for --compile-report")
    ap.add_argument("--reps", type=int, default=5, help="timed epochs per configuration (at most)")
    ap.add_argument("--per-config-s", type=float, default=3.0, help="timing seconds per configuration (at most)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.compile_report:
        compile_report(out, args.arch, variants=args.variants)
        return 0
    if args.smoke:
        plan = Plan(torch.device("cpu"), **SMOKE_PLAN)
    elif torch.cuda.is_available():
        plan = Plan(torch.device("cuda"), **GPU_PLAN)
    else:
        print("gpu_bench.py needs a CUDA GPU (or --smoke, or --compile-report)", file=sys.stderr)
        return 2
    run = Run(plan, args)
    run.setup()
    if args.variants:
        run.variants()
        print("\n" + run.finish(), flush=True)
        return 0 if any("fastest" in r for r in run.res["variant_rows"]) else 1
    run.numerics()
    run.eager()  # quick, and every "vs eager" ratio needs it
    run.configs()
    run.serving()
    print("\n" + run.finish(), flush=True)
    return 0 if any("epoch_s" in r.get("triton", {}) for r in run.res["configs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
