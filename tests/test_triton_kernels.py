"""The Triton kernels on their own: tiling corner cases, validation, scoring, tanh, compilation.

Runs on a CUDA GPU, or on the CPU under the interpreter (tests/conftest.py sets TRITON_INTERPRET=1
when there is no GPU); the inputs are tiny because the interpreter runs every program in Python.
The cross-backend training suite is tests/test_backend_parity.py; the in-kernel permutation is
pinned in tests/test_contract.py.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from problems import describe_mismatch, random_head, random_ratings, rel_err
from retrain.backends import get_backend
from retrain.backends.base import csr_tensors, heaviest_first
from retrain.backends.triton import kernel_head, triton_device
from retrain.contract import initial_embeddings, user_key
from retrain.hyperparams import HyperParams
from retrain.trainer import prepare

triton = pytest.importorskip("triton")
import triton.language as tl  # noqa: E402

from retrain.kernels.blocks import VARIANT_ENV, pick_blocks, variant_from_env  # noqa: E402
from retrain.kernels.tower import _tanh  # noqa: E402
from retrain.kernels.train import train_checkpoints, train_epochs  # noqa: E402
from retrain.kernels.validate import user_losses  # noqa: E402

DEVICE = triton_device()
pytestmark = pytest.mark.skipif(DEVICE is None, reason="needs a CUDA GPU or TRITON_INTERPRET=1")
TOL = 1e-5
ADAM = (0.9, 0.999, 1e-8)


@triton.jit
def _tanh_kernel(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(y_ptr + offs, _tanh(tl.load(x_ptr + offs, mask=offs < n, other=0.0)), mask=offs < n)


def _train(device, head, data, lrs, regs, *, batch_size, optimizer, blocks=None, seed=5):
    """Embeddings after 2 epochs from the init: the Triton launcher on ``DEVICE`` (optionally with
    forced blocks), or the reference backend on the CPU when ``device`` is None."""
    init = torch.from_numpy(initial_embeddings(user_key(data.user_ids), head.d, seed, head.init_scale(data.n_users)))
    if device is None:
        hyp = HyperParams(model="matrix_factorization_2", batch_size=batch_size, optimizer=optimizer, seed=seed,
                          damping=0.0)  # the launcher below without user_damping: zeros
        problem = prepare(head, data, None, hyp, "reference", init=init)
        problem.start(lrs, regs)
        problem.train(2)
        return problem.embeddings().cpu()
    data_t = csr_tensors(data, device)
    emb = init.to(device)[:, None, :].repeat(1, len(lrs), 1)
    m, v = torch.zeros_like(emb), torch.zeros_like(emb)
    lr_t = torch.tensor(lrs, dtype=torch.float32, device=device)
    reg_t = torch.tensor(regs, dtype=torch.float32, device=device)
    order = torch.from_numpy(heaviest_first(data.counts)).to(device)
    train_epochs(emb, m, v, lr_t, reg_t, data_t.indptr, data_t.keys, data_t.items, data_t.ratings, data_t.weights,
                 *kernel_head(head, device, "triton"), order=order, epoch_start=0, n_epochs=2,
                 batch_size=batch_size, optimizer=optimizer, seed=seed, adam=ADAM, blocks=blocks)
    return emb.cpu()


def _assert_matches_reference(head, data, lrs, regs, *, batch_size, optimizer="adam", blocks=None):
    emb = _train(DEVICE, head, data, lrs, regs, batch_size=batch_size, optimizer=optimizer, blocks=blocks)
    ref = _train(None, head, data, lrs, regs, batch_size=batch_size, optimizer=optimizer)
    assert rel_err(emb, ref) <= TOL, describe_mismatch(emb, ref, TOL)
    return emb, ref


def test_batch_larger_than_tile_and_probe_remainder():
    """batch_size > BLOCK_B (steps of several sub-tiles, one of 1 rating) and P = 20 in blocks of 16."""
    head = random_head("mf", 30, 3, seed=2)
    data = random_ratings(4, 30, counts=[0, 41, 7, 80], seed=3)
    rng = np.random.default_rng(0)
    lrs, regs = (10 ** rng.uniform(-3, -1, 20)).tolist(), (10 ** rng.uniform(-4, -1, 20)).tolist()
    blocks = pick_blocks("train", 20, 3, 3, 3, 40, rows=16, cols=16)
    emb, ref = _assert_matches_reference(head, data, lrs, regs, batch_size=40, blocks=blocks)
    assert torch.equal(emb[0], ref[0])  # no ratings: untouched


def test_odd_tower_dims_sgd():
    head = random_head("tower2", 17, 3, 5, seed=4)  # d=3 -> 8 (relu) -> 5, none a power of two
    data = random_ratings(5, 17, seed=6)
    _assert_matches_reference(head, data, [0.05, 0.02, 0.01], [1e-3, 0.0, 1e-2], batch_size=3, optimizer="sgd")


@pytest.mark.parametrize("n_probes", [1, 2])
def test_dot_path_with_padding(n_probes):
    """d = h = 20: the products run as tl.dot over K padded to 32, with 1 row (P = 1) or 16."""
    head = random_head("mf", 19, 20, seed=7)
    data = random_ratings(4, 19, counts=[3, 9, 0, 20], seed=8)
    _assert_matches_reference(head, data, [1e-2, 3e-2][:n_probes], [1e-4, 1e-3][:n_probes], batch_size=4)


# (head, d, h, variant): every variant of the training kernel where it differs from the default:
# K >= 16 for the FMA products, h not a power of two for the folded bias (the default there).
VARIANTS = [("mf", 20, 20, dict(products="fma")),
            ("mf", 20, 20, dict(persistent=True, fold_bias=False)),
            ("tower1", 5, 18, dict()),
            ("tower1", 5, 18, dict(products="fma", persistent=True)),
            ("mf", 4, 4, dict(fold_bias=True))]  # forced: tiles widened for the bias column


@pytest.mark.parametrize("kind,d,h,variant", VARIANTS)
def test_training_variants_match_the_reference(kind, d, h, variant, monkeypatch):
    """Each variant (kernels/blocks.py) trains like the reference backend, on odd shapes (P = 3 in
    a block of 8, batch 4 over users of 0-13 ratings, one without any), and the
    validation fused into its launch matches the head's own float64 predictions."""
    monkeypatch.delenv(VARIANT_ENV, raising=False)  # exactly the variant asked for
    head = random_head(kind, 21, d, h, seed=15)
    data = random_ratings(5, 21, counts=[0, 6, 13, 3, 9], seed=16)
    train, val = data.split_per_user(0.3, seed=2)
    lrs, regs = [1e-2, 3e-2, 5e-3], [1e-3, 0.0, 1e-2]
    blocks = pick_blocks("train", 3, d, head.h if kind == "mf" else h, h, 4, **variant)
    assert blocks.products == variant.get("products", "ieee") and blocks.fold_bias == variant.get("fold_bias", True)
    ref = _train(None, head, train, lrs, regs, batch_size=4, optimizer="adam")
    t, v = csr_tensors(train, DEVICE), csr_tensors(val, DEVICE)
    init = torch.from_numpy(initial_embeddings(user_key(train.user_ids), d, 5, head.init_scale(5))).to(DEVICE)
    emb = torch.full((5, 3, d), float("nan"), device=DEVICE)  # every visited value must be written
    m, v_ = torch.full_like(emb, float("nan")), torch.full_like(emb, float("nan"))
    order = torch.from_numpy(heaviest_first(train.counts)).to(DEVICE)
    bad, partial = train_checkpoints(
        emb, m, v_, torch.tensor(lrs, device=DEVICE), torch.tensor(regs, device=DEVICE), t.indptr, t.keys, t.items,
        t.ratings, t.weights, *kernel_head(head, DEVICE, "triton"), order=order, epoch_start=0, checkpoint_ends=[2],
        batch_size=4, optimizer="adam", seed=5, adam=ADAM, init=init, blocks=blocks,
        val=(v.indptr, v.items, v.ratings, v.weights))
    emb = emb.cpu()
    assert int(bad.sum()) == 0
    assert rel_err(emb, ref) <= TOL, describe_mismatch(emb, ref, TOL)
    for u in range(5):  # the oracle: the head's own predictions, in float64
        rows = slice(val.indptr[u], val.indptr[u + 1])
        pred = head.scores(emb[u].double(), torch.from_numpy(val.items[rows]))
        want = (torch.from_numpy(val.weights[rows]).double() * (pred - torch.from_numpy(val.ratings[rows])) ** 2).sum(1)
        assert rel_err(partial[0, u].cpu(), want) <= TOL, u


def test_variants_are_picked_in_one_place(monkeypatch):
    """``pick_blocks`` picks the variant: the bias is folded where it fits the padding, and
    ``$RETRAIN_TRITON_TRAIN`` forces any variant of training launches (not of the others)."""
    monkeypatch.delenv(VARIANT_ENV, raising=False)
    assert [pick_blocks("train", 8, d, d, d, 16).fold_bias for d in (1, 3, 20, 32)] == [False, True, True, False]
    assert pick_blocks("train", 8, 20, 20, 20, 16).h == 32
    assert pick_blocks("train", 8, 32, 32, 32, 16, fold_bias=True).h == 64
    default = pick_blocks("train", 64, 32, 32, 32, 16)
    assert (default.products, default.persistent) == ("ieee", False)
    # The FMA products hold [rows, cols, h] at once: their sub-tiles are cut to 32K floats.
    assert [pick_blocks("train", 64, 32, 32, 32, 1024, products=p).cols for p in ("ieee", "fma")] == [64, 16]
    monkeypatch.setenv(VARIANT_ENV, "products=fma, persistent=1,fold_bias=1")
    assert variant_from_env() == dict(products="fma", persistent=True, fold_bias=True)
    forced = pick_blocks("train", 64, 32, 32, 32, 16)
    assert (forced.products, forced.persistent, forced.fold_bias, forced.h) == ("fma", True, True, 64)
    assert pick_blocks("train", 64, 32, 32, 32, 16, persistent=False).persistent is False  # arguments win
    assert pick_blocks("validate", 64, 32, 32, 32, 0).products == "ieee"
    for bad in ("products=bf16", "persistent=yes", "grid=1", "fma"):
        monkeypatch.setenv(VARIANT_ENV, bad)
        with pytest.raises(ValueError, match=VARIANT_ENV):
            pick_blocks("train", 8, 4, 4, 4, 16)


def test_user_losses_are_per_user_and_skip_empty_users():
    head = random_head("tower1", 13, 4, 6, seed=9)
    data = random_ratings(6, 13, counts=[0, 3, 1, 0, 8, 5], seed=10)
    data_t = csr_tensors(data, DEVICE)
    emb = torch.randn(6, 3, 4, generator=torch.Generator().manual_seed(0)) * 0.3
    emb[0, 2] = float("nan")  # a user without ratings: 0, even with a NaN embedding
    got = user_losses(emb.to(DEVICE), data_t.indptr, data_t.items, data_t.ratings, data_t.weights,
                      *kernel_head(head, DEVICE, "triton")).cpu()
    assert got.shape == (6, 3) and got.dtype == torch.float32
    for u in range(6):  # the oracle: the head's own predictions, in float64
        rows = slice(data.indptr[u], data.indptr[u + 1])
        pred = head.scores(emb[u].double(), torch.from_numpy(data.items[rows]))
        want = (torch.from_numpy(data.weights[rows]).double() * (pred - torch.from_numpy(data.ratings[rows])) ** 2).sum(1)
        assert rel_err(got[u], want) <= TOL, u


@pytest.mark.parametrize("kind,d,h,n", [("biases", 1, 1, 1), ("mf", 20, 20, 7), ("tower2", 5, 3, 40)])
def test_score_matches_torch(kind, d, h, n):
    be = get_backend("triton")
    head = random_head(kind, 70, d, h, seed=11)
    emb = torch.randn(n, head.d, generator=torch.Generator().manual_seed(1))
    got = be.score(head, emb.to(be.device)).cpu()
    feats = head.user_features(emb.double())
    want = feats @ head.item_vectors.double().T + head.item_bias.double() + head.global_bias
    assert got.shape == (n, 70)
    assert rel_err(got, want) <= TOL, describe_mismatch(got, want, TOL)


def test_tanh_is_accurate():
    x = torch.cat([torch.linspace(-12, 12, 2001), torch.logspace(-30, 0, 200), -torch.logspace(-30, 0, 200),
                   torch.tensor([0.0, 0.5499999, 0.55, float("inf"), -float("inf")])])
    y = torch.empty_like(x).to(DEVICE)
    _tanh_kernel[(triton.cdiv(x.numel(), 1024),)](x.to(DEVICE), y, x.numel(), BLOCK=1024)
    want = torch.tanh(x.double())
    err = ((y.cpu().double() - want).abs() / want.abs().clamp_min(1e-38))
    assert float(err.max()) < 2e-6  # the GPU's exp and division are approximate (a few ulps)


def test_launcher_rejects_bad_inputs():
    item_vectors, item_bias, _, _ = kernel_head(random_head("mf", 5, 2, seed=0), DEVICE, "triton")
    data_t = csr_tensors(random_ratings(3, 5, seed=0), DEVICE)
    emb = torch.zeros(3, 2, 2, device=DEVICE)
    lr = torch.full((2,), 0.01, device=DEVICE)
    order = torch.arange(3, device=DEVICE)
    good = dict(epoch_start=0, n_epochs=1, batch_size=2, optimizer="adam", seed=0, adam=ADAM, order=order)

    def call(emb=emb, lrs=lr, items=data_t.items, **kw):
        train_epochs(emb, torch.zeros_like(emb), torch.zeros_like(emb), lrs, lr, data_t.indptr, data_t.keys, items,
                     data_t.ratings, data_t.weights, item_vectors, item_bias, 0.0, [], **{**good, **kw})

    with pytest.raises(ValueError, match="items"):
        call(items=data_t.items.long())
    with pytest.raises(ValueError, match="lrs"):
        call(lrs=lr[:1])
    with pytest.raises(ValueError, match="emb"):
        call(emb=emb.double())
    with pytest.raises(ValueError, match="optimizer"):
        call(optimizer="adagrad")
    with pytest.raises(ValueError, match="batch_size"):
        call(batch_size=0)
    with pytest.raises(ValueError, match="order"):
        call(order=order.int())
    with pytest.raises(ValueError, match="init"):
        call(init=torch.zeros(3, 3, device=DEVICE))
    with pytest.raises(ValueError, match="rows"):
        pick_blocks("train", 2, 2, 2, 2, 2, rows=3)
    # Before the checks: a TypeError, a ZeroDivisionError, or silently wrong numbers.
    with pytest.raises(ValueError, match=r"val must be \(indptr, items, ratings, weights\), got 3"):
        call(val=(data_t.indptr, data_t.items, data_t.ratings))
    with pytest.raises(ValueError, match="batch_size must be an integer"):
        call(batch_size=2.5)
    with pytest.raises(ValueError, match=r"checkpoint_ends\[0\] must be an integer"):
        train_checkpoints(emb, torch.zeros_like(emb), torch.zeros_like(emb), lr, lr, data_t.indptr, data_t.keys,
                          data_t.items, data_t.ratings, data_t.weights, item_vectors, item_bias, 0.0, [],
                          checkpoint_ends="12", **{k: v for k, v in good.items() if k != "n_epochs"})  # epochs 1, 2
    with pytest.raises(ValueError, match="adam must be"):
        call(adam=(1.0, 0.999, 1e-8))  # beta1 = 1: every probe NaN
    with pytest.raises(ValueError, match=r"item_vectors must be \[n_items, h >= 1\]"):
        user_losses(emb[:, :, :0].contiguous(), data_t.indptr, data_t.items, data_t.ratings, data_t.weights,
                    item_vectors[:, :0].contiguous(), item_bias, 0.0, [])
    moment = torch.zeros_like(emb)
    with pytest.raises(ValueError, match="emb and adam_m share memory"):
        train_epochs(emb, emb, moment, lr, lr, data_t.indptr, data_t.keys, data_t.items, data_t.ratings,
                     data_t.weights, item_vectors, item_bias, 0.0, [], **good)
    with pytest.raises(ValueError, match="adam_m and adam_v share memory"):
        train_epochs(emb, moment, moment, lr, lr, data_t.indptr, data_t.keys, data_t.items, data_t.ratings,
                     data_t.weights, item_vectors, item_bias, 0.0, [], **good)


BENCH = Path(__file__).parent / "benchmarks" / "gpu_bench.py"


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the other tests compile and run the kernels")
def test_kernels_compile_for_hopper(tmp_path):
    """The interpreter never lowers the kernels to GPU code: compile them for sm_90 (Triton ships
    ptxas; no GPU needed) with the specialization their launchers' real arguments get, in a process
    without TRITON_INTERPRET (``gpu_bench.py --compile-report``, which the GPU check prints)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, str(BENCH), "--compile-report", "--out", str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = json.loads((tmp_path / "compile_report.json").read_text())["rows"]
    kinds = {row["kernel"].split()[0] for row in rows}
    assert kinds == {"train", "train+validate", "validate", "score"}, kinds
    for row in rows:  # registers per thread within Hopper's 255, at least one program per SM
        assert 0 < row["reg"] <= 255 and row["programs_per_sm"] >= 1, row


def test_checkpoints_validate_and_snapshot_in_the_training_launch():
    """One launch through checkpoints after 1 and 3 epochs equals launches of 1 and then 2 epochs
    (state and snapshot bit for bit: one compiled kernel), each followed by the standalone
    validation kernel (losses); a user outside ``order`` keeps a zero loss."""
    from retrain.kernels.train import train_checkpoints

    head = random_head("tower1", 12, 3, 4, seed=12)
    data = random_ratings(5, 12, counts=[4, 0, 9, 3, 6], seed=13)
    train, val = data.split_per_user(0.3, seed=1)
    t, v = csr_tensors(train, DEVICE), csr_tensors(val, DEVICE)
    kh = kernel_head(head, DEVICE, "triton")
    init = torch.randn(5, 3, generator=torch.Generator().manual_seed(3)).to(DEVICE) * 0.3
    lrs = torch.tensor([1e-2, 5e-2], device=DEVICE)
    regs = torch.tensor([1e-3, 0.0], device=DEVICE)
    order = torch.tensor([2, 4, 0, 1], device=DEVICE)  # user 3 left out
    assert val.counts[3] > 0 and train.counts[3] > 0
    common = dict(order=order, batch_size=2, optimizer="adam", seed=4, adam=ADAM)

    def state():
        emb = torch.zeros(5, 2, 3, device=DEVICE)
        return emb, torch.zeros_like(emb), torch.zeros_like(emb)

    def losses(emb):
        return user_losses(emb, v.indptr, v.items, v.ratings, v.weights, *kh)

    fused = state()
    snapshots = torch.zeros(1, 5, 2, 3, device=DEVICE)
    bad, partial = train_checkpoints(*fused, lrs, regs, t.indptr, t.keys, t.items, t.ratings, t.weights, *kh,
                                     epoch_start=0, checkpoint_ends=[1, 3], init=init, snapshots=snapshots,
                                     val=(v.indptr, v.items, v.ratings, v.weights), **common)
    steps = state()
    train_epochs(*steps, lrs, regs, t.indptr, t.keys, t.items, t.ratings, t.weights, *kh, epoch_start=0, n_epochs=1,
                 init=init, **common)
    assert torch.equal(snapshots[0], steps[0])
    first = losses(steps[0])
    train_epochs(*steps, lrs, regs, t.indptr, t.keys, t.items, t.ratings, t.weights, *kh, epoch_start=1, n_epochs=2,
                 **common)
    for a, b in zip(fused, steps):
        assert torch.equal(a, b)
    assert bad.shape == (2, 2) and int(bad.sum()) == 0
    for k, want in enumerate([first, losses(steps[0])]):
        assert float(want[3].min()) > 0
        want[3] = 0.0  # not visited
        # The same per-user loop as the standalone kernel, in tiles of another width: rounding.
        assert rel_err(partial[k].cpu(), want.cpu()) <= 1e-6, k


def test_kernel_heads_stay_on_the_device_while_the_head_lives():
    import gc

    from retrain.backends import triton as triton_backend

    head = random_head("mf", 9, 4, seed=14)
    first = kernel_head(head, DEVICE, "triton")
    again = kernel_head(head, DEVICE, "triton")
    assert again is first  # no second upload
    other = random_head("mf", 9, 4, seed=14)
    assert kernel_head(other, DEVICE, "triton") is not first  # equal but another object: its own tensors
    key = (id(head), str(torch.device(DEVICE)))
    assert key in triton_backend._KERNEL_HEADS
    del head, first, again
    gc.collect()
    assert key not in triton_backend._KERNEL_HEADS


def test_folded_item_table_is_cached_until_modified():
    """The launcher's ``[Q | b]`` table is built once per item table and rebuilt after an in-place change."""
    from retrain.kernels.items import _FOLDED, folded_table

    q, b = torch.randn(6, 3), torch.randn(6)
    table = folded_table(q, b)
    assert torch.equal(table, torch.cat([q, b[:, None]], 1)) and folded_table(q, b) is table
    b.add_(1.0)
    assert torch.equal(folded_table(q, b)[:, 3], b)
    key = id(q)
    del q, table
    assert key not in _FOLDED
