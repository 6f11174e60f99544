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
  (one user, top 10) through the public API with the triton backend and a CPU ``Head``.

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

    python3 tests/benchmarks/gpu_bench.py [--out DIR] [--budget SECONDS]
    python3 tests/benchmarks/gpu_bench.py --smoke          # tiny, on the CPU under TRITON_INTERPRET=1
    python3 tests/benchmarks/gpu_bench.py --compile-report # sm_90 registers / spills / shared memory

The benchmark rewrites ``gpu_bench.json`` and ``gpu_bench_table.md`` under --out after every
measurement (a run killed by its time limit keeps what it finished), prints progress as it goes
and the short table last.  A global time guard skips what no longer fits.  ``--compile-report``
needs no GPU: it compiles the kernels for sm_90 exactly as their launchers would launch them (the
JIT's own specialization of the launchers' real arguments) and writes ``compile_report.json``.
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
    at least 2 calls, at most ``reps``, stopping early once ``max_seconds`` are spent."""
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
    """The prepared launch of ``train_epochs`` for one (d, P, batch): state, grid, head."""

    def __init__(self, head: Head, data: CSRTensors, d: int, P: int, batch: int, device, *, blocks=None,
                 precision: str = "ieee"):
        from retrain.backends.base import heaviest_first
        from retrain.backends.triton import kernel_head

        self.data, self.batch, self.blocks, self.precision = data, batch, blocks, precision
        self.head = kernel_head(head, device, "triton")
        counts = (data.indptr[1:] - data.indptr[:-1]).cpu().numpy()
        self.order = torch.from_numpy(heaviest_first(counts)).to(device)
        self.init = initial(data.n_users, d, device)
        self.emb = torch.empty((data.n_users, P, d), device=device)
        self.m, self.v = torch.empty_like(self.emb), torch.empty_like(self.emb)
        self.lrs, self.regs = probe_grid(P, device)
        self.epoch = 0

    def launch(self, n_epochs: int = 1) -> torch.Tensor:
        """``n_epochs`` more epochs (the first launch starts every probe from the init)."""
        from retrain.kernels.train import train_epochs

        d = self.data
        bad = train_epochs(self.emb, self.m, self.v, self.lrs, self.regs, d.indptr, d.keys, d.items, d.ratings,
                           d.weights, *self.head, order=self.order, epoch_start=self.epoch, n_epochs=n_epochs,
                           batch_size=self.batch, optimizer="adam", seed=0, adam=ADAM_ARGS,
                           init=self.init if self.epoch == 0 else None, blocks=self.blocks, precision=self.precision)
        self.epoch += n_epochs
        return bad

    def train_mse(self) -> torch.Tensor:
        """Per-probe training MSE of the current state (the validation kernel on the training ratings)."""
        from retrain.kernels.validate import user_losses

        d = self.data
        return user_losses(self.emb, d.indptr, d.items, d.ratings, d.weights, *self.head).double().sum(0) / d.nnz


def time_triton(config: TritonConfig, device, args) -> dict:
    """Warm-up launch (compiles; from the init), then the median of up to ``args.reps`` one-epoch launches."""
    from retrain.kernels.blocks import pick_blocks

    t = time.perf_counter()
    config.launch()
    sync(device)
    warmup_s = time.perf_counter() - t
    mse_before = config.train_mse()
    times = time_calls(config.launch, device, reps=args.reps, max_seconds=args.per_config_s)
    bad = config.launch()
    mse_after = config.train_mse()
    _, P, d = config.emb.shape
    blocks = config.blocks or pick_blocks("train", P, d, d, config.head[0].shape[1], config.batch)
    return dict(epoch_s=statistics.median(times), epoch_s_min=min(times), epoch_s_max=max(times), reps=len(times),
                warmup_s=warmup_s, blocks=dataclasses.asdict(blocks), precision=config.precision,
                train_mse_epoch1=float(mse_before.min()), train_mse_last=float(mse_after.min()),
                finite=bool(int(bad.sum()) == 0))


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
    for s in res["variants"]:
        outcome = f"{1e3 * s['epoch_s']:.3g} ms/epoch" if "epoch_s" in s else s.get("error", "not run")[:80]
        if "rel_diff" in s:
            outcome += f", max rel diff from ieee {s['rel_diff']:.2g} (parity tolerance {s['tolerance']:g})"
        lines.append(f"variant d={s['d']} P={s['P']} {s['label']}: {outcome}")
    lines += [f"note: {note}" for note in res["notes"]]
    return "\n".join(lines)


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
    variants: list  # (P, d, label, pick_blocks overrides, precision)
    serving_reps: int  # timed fold_in / recommend calls
    numerics: tuple  # (users, items, ratings per user, d) of the comparison with the reference
    tolerance: float = 1e-5  # tests/test_triton_kernels.py's parity tolerance


SMOKE_PLAN = dict(users=40, items=30, mean_per_user=6.0, configs=[(1, 4, 16), (8, 1, 16), (8, 4, 16), (8, 4, 64)],
                  baselines=[(8, 4, 16)], eager=[(8, 16)], copy_floats=1 << 20, matmul_n=256, eager_steps=(2, 6),
                  batched_steps=(2, 6), variants=[(4, 8, "rows=16 warps=2", dict(rows=16, num_warps=2), "ieee")],
                  serving_reps=3, numerics=(12, 30, 6, 8))
GPU_PLAN = dict(users=138_000, items=27_000, mean_per_user=145.0,
                configs=[(32, 64, 16), (32, 8, 16), (32, 64, 1024), (1, 64, 16), (128, 64, 16), (32, 1, 16),
                         (32, 256, 16), (1, 8, 16), (128, 8, 16)],
                baselines=[(32, 64, 16), (32, 64, 1024), (32, 8, 16), (1, 64, 16), (128, 64, 16)],
                eager=[(32, 16), (32, 1024), (1, 16), (128, 16)],
                copy_floats=1 << 28, matmul_n=8192, eager_steps=(20, 120), batched_steps=(10, 110),
                variants=[(64, 32, "tf32x3", {}, "tf32x3"), (64, 32, "rows=32", dict(rows=32), "ieee"),
                          (64, 128, "tf32x3", {}, "tf32x3")],
                serving_reps=200, numerics=(300, 500, 30, 32))


class Run:
    """One benchmark run: the plan, the data, the results so far (saved after each) and the time guard."""

    def __init__(self, plan: Plan, args):
        self.plan, self.args, self.device = plan, args, plan.device
        self.deadline = T0 + args.budget
        self.out = Path(args.out)
        self.res = dict(configs=[], eager={}, variants=[], notes=[], budget_s=args.budget)

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def save(self) -> None:
        self.res["elapsed_s"] = time.perf_counter() - T0
        write_atomic(self.out / "gpu_bench.json", json.dumps(self.res, indent=1, default=str))
        write_atomic(self.out / "gpu_bench_table.md", table(self.res) + "\n")

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

    def configs(self) -> None:
        ceil = self.res["ceilings"]
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
        """Other probe blocks and the tf32x3 products, with their difference from the ieee kernel."""
        from retrain.kernels.blocks import pick_blocks

        for P, d, label, override, precision in self.plan.variants:
            entry = dict(P=P, d=d, label=label, tolerance=self.plan.tolerance)
            self.res["variants"].append(entry)
            head = self.head(d)

            def measure():
                blocks = pick_blocks("train", P, d, d, head.h, 16, **override)
                config = TritonConfig(head, self.data, d, P, 16, self.device, blocks=blocks, precision=precision)
                out = time_triton(config, self.device, self.args)
                if precision != "ieee":
                    first = TritonConfig(head, self.data, d, P, 16, self.device, blocks=blocks, precision=precision)
                    exact = TritonConfig(head, self.data, d, P, 16, self.device, blocks=blocks)
                    first.launch(2), exact.launch(2)
                    diff = (first.emb - exact.emb).abs().max() / exact.emb.abs().max().clamp_min(1e-30)
                    out["rel_diff"] = float(diff)
                log(f"variant d={d} P={P} {label}: {1e3 * out['epoch_s']:.3f} ms/epoch"
                    + (f", rel diff {out['rel_diff']:.2g}" if "rel_diff" in out else ""))
                return out
            self.guarded(entry, "result", measure, min_left=12)
            entry.update(entry.pop("result"))
        self.res["notes"].append("variants: rel diff = max |emb - emb_ieee| / max |emb_ieee| after two epochs from "
                                 "the same init, against the parity tolerance of the kernel tests")

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
        log(f"wrote {self.out / 'gpu_bench.json'}")
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


def compile_for(kernel, args, kwargs, arch: int):
    """Compile ``kernel`` for CUDA ``arch`` with the specialization the JIT gives these arguments
    (integer divisibility by 16, pointer alignment, constexprs), as ``kernel[grid](*args,
    **kwargs)`` would on that GPU; no GPU needed."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound_args, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound_args, specialization, options)
    return triton.compile(ASTSource(kernel, signature, constexprs, attrs), target=target, options=options.__dict__)


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


def compile_cases():
    """``(label, module, kernel name, launcher, args, kwargs)``: the launches of the benchmark's
    configurations (d in 1, 32, 128; P = 8 and 64, the default probe blocks; batch 16 and 1024),
    on tiny CPU tensors: the specialization depends on the sizes that reach the kernel (P, d,
    strides), not on the number of users or ratings."""
    from retrain.backends.triton import kernel_head
    from retrain.kernels import score, train, validate

    data = synthetic_csr(6, 40, 5.0, torch.device("cpu"))
    order = torch.arange(data.n_users)
    cases = []
    for d, P, batch in [(1, 64, 16), (32, 64, 16), (128, 64, 16), (32, 8, 16), (32, 64, 1024), (1, 8, 16)]:
        head = kernel_head(make_head(d, 40, torch.device("cpu")), torch.device("cpu"), "triton")
        emb = torch.zeros(data.n_users, P, d)
        lrs, regs = probe_grid(P, torch.device("cpu"))
        args = (emb, torch.zeros_like(emb), torch.zeros_like(emb), lrs, regs, data.indptr, data.keys, data.items,
                data.ratings, data.weights, *head)
        kwargs = dict(order=order, epoch_start=1, batch_size=batch, optimizer="adam", seed=0, adam=ADAM_ARGS)
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


def compile_report(out: Path, arch: int) -> list[dict]:
    """Compile every case of ``compile_cases`` for ``arch``; print and write the figures as they come."""
    import triton

    rows = []
    lines = [f"sm_{arch} compile report, triton {triton.__version__} (the launchers' real specialization; "
             "per thread: registers, stack and local bytes; shared bytes per program)", "",
             "| kernel | warps | registers | stack | local | shared | programs/SM |", "|---|---:|---:|---:|---:|---:|---:|"]
    print("\n".join(lines), flush=True)
    for label, module, name, launcher, args, kwargs in compile_cases():
        kernel, launch_args, launch_kwargs = recorded_launch(module, name, launcher, *args, **kwargs)
        t = time.perf_counter()
        figures = resource_usage(compile_for(kernel, launch_args, launch_kwargs, arch))
        shared = max(figures.get("shared", 0), figures["shared_dynamic"])
        row = dict(kernel=label, compile_s=time.perf_counter() - t,
                   programs_per_sm=programs_per_sm(figures["reg"], figures["num_warps"], shared), **figures)
        rows.append(row)
        lines.append(f"| {label} | {row['num_warps']} | {row['reg']} | {row.get('stack', 0)} | {row.get('local', 0)} "
                     f"| {shared} | {row['programs_per_sm']} |")
        print(lines[-1], flush=True)
        write_atomic(out / "compile_report.json", json.dumps(dict(triton=triton.__version__, arch=arch, rows=rows),
                                                             indent=1))
        write_atomic(out / "compile_report.md", "\n".join(lines) + "\n")
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "runs/gpu_bench"))
    ap.add_argument("--budget", type=float, default=200.0, help="seconds for the whole run (time guard)")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU under TRITON_INTERPRET=1")
    ap.add_argument("--compile-report", action="store_true", help="sm_90 resource figures of the kernels (no GPU)")
    ap.add_argument("--arch", type=int, default=90, help="CUDA compute capability for --compile-report")
    ap.add_argument("--reps", type=int, default=5, help="timed epochs per configuration (at most)")
    ap.add_argument("--per-config-s", type=float, default=3.0, help="timing seconds per configuration (at most)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.compile_report:
        compile_report(out, args.arch)
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
    run.numerics()
    run.eager()  # quick, and every "vs eager" ratio needs it
    run.configs()
    run.serving()
    run.variants()
    print("\n" + run.finish(), flush=True)
    return 0 if any("epoch_s" in r.get("triton", {}) for r in run.res["configs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
