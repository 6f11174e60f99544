"""The C++ backend beyond the shared parity suite: entry checks, every SIMD path, thread-count
independence, lane independence and the validation sums.  (The contract in C++ is pinned in
tests/test_contract.py.)"""
import numpy as np
import pytest
import torch

from problems import describe_mismatch, random_head, random_ratings, rel_err
from retrain.backends.base import ACTIVATION_CODES, csr_tensors, head_tensors
from retrain.backends.cpu import HAS_CPU_EXTENSION, IMPORT_ERROR, CpuBackend
from retrain.contract import fixed_point_value
from retrain.hyperparams import DEFAULT_DAMPING, HyperParams
from retrain.trainer import prepare

pytestmark = pytest.mark.skipif(not HAS_CPU_EXTENSION, reason=f"retrain._C not built: {IMPORT_ERROR}")

if HAS_CPU_EXTENSION:
    from retrain import _C

# --------------------------------------------------------------------------- entry checks

def _valid_args(optimizer="adam"):
    """A small valid call of _C.train_epochs as (positional dict, keyword dict)."""
    head = head_tensors(random_head("tower2", 11, 4, 3, seed=0), "cpu", "cpu")
    data = csr_tensors(random_ratings(5, 11, seed=0), "cpu")
    emb = torch.empty(5, 3, 4).uniform_(-0.1, 0.1, generator=torch.Generator().manual_seed(0))
    args = dict(
        emb=emb.numpy(), adam_m=np.zeros((5, 3, 4), np.float32), adam_v=np.zeros((5, 3, 4), np.float32),
        lrs=np.full(3, 1e-2, np.float32), regs=np.full(3, 1e-3, np.float32),
        indptr=data.indptr.numpy().copy(), items=data.items.numpy().copy(), ratings=data.ratings.numpy(),
        weights=data.weights.numpy(), keys=data.keys.numpy(), order=np.array([2, 0, 1, 4, 3]),
        item_vectors=head.item_vectors.numpy(), item_bias=head.item_bias.numpy(), global_bias=head.global_bias,
        tower_weights=[w.numpy() for w, _, _ in head.tower], tower_biases=[c.numpy() for _, c, _ in head.tower],
        tower_activations=[ACTIVATION_CODES[a] for _, _, a in head.tower])
    return args, dict(epoch_start=0, n_epochs=1, batch_size=2, optimizer=optimizer, beta1=0.9, beta2=0.999,
                      eps=1e-8, seed=0)


def _set(name, value):
    return lambda a, k: a.__setitem__(name, value(a[name]) if callable(value) else value)


def _read_only(x):
    x = x.copy()
    x.flags.writeable = False
    return x


def _set_first_item(value):
    def change(a, k):
        a["items"][0] = value
    return change


BAD_CALLS = {
    "emb_dtype": ("emb", _set("emb", lambda x: x.astype(np.float64))),
    "emb_not_array": ("emb", _set("emb", lambda x: x.tolist())),
    "emb_not_contiguous": ("emb", _set("emb", lambda x: np.swapaxes(x, 0, 1))),
    "emb_shape": ("emb", _set("emb", lambda x: x[:, :, :2].copy())),
    "emb_read_only": ("emb", _set("emb", _read_only)),
    "adam_m_shape": ("adam_m", _set("adam_m", lambda x: x[:-1].copy())),
    "lrs_length": ("lrs", _set("lrs", lambda x: x[:2].copy())),
    "regs_dtype": ("regs", _set("regs", lambda x: x.astype(np.float64))),
    "indptr_dtype": ("indptr", _set("indptr", lambda x: x.astype(np.int32))),
    "indptr_decreasing": ("indptr", lambda a, k: a["indptr"].__setitem__(2, a["indptr"][1] - 1)),
    "indptr_end": ("indptr", lambda a, k: a["indptr"].__setitem__(-1, a["indptr"][-1] - 1)),
    "items_dtype": ("items", _set("items", lambda x: x.astype(np.int64))),
    "items_high": ("items", _set_first_item(11)),
    "items_negative": ("items", _set_first_item(-1)),
    "ratings_length": ("ratings", _set("ratings", lambda x: x[:-1].copy())),
    "keys_length": ("keys", _set("keys", lambda x: x[:-1].copy())),
    "item_bias_shape": ("item_bias", _set("item_bias", lambda x: x[:-1].copy())),
    "tower_chain": ("tower_weights", _set("tower_weights", lambda ws: [ws[0], ws[1][:, :-1].copy()])),
    "tower_lengths": ("tower_biases", _set("tower_biases", lambda cs: cs[:1])),
    "tower_activation": ("tower_activations", _set("tower_activations", [1, 5])),
    "batch_size": ("batch_size", lambda a, k: k.__setitem__("batch_size", 0)),
    "batch_size_huge": ("batch_size", lambda a, k: k.__setitem__("batch_size", 2**63 - 16)),  # segfaulted
    "n_epochs": ("n_epochs", lambda a, k: k.__setitem__("n_epochs", -1)),
    "optimizer": ("optimizer", lambda a, k: k.__setitem__("optimizer", "rmsprop")),
    "simd": ("simd", lambda a, k: k.__setitem__("simd", "neon")),
    "order_range": ("order", _set("order", np.array([0, 5]))),
    "order_twice": ("order", _set("order", np.array([1, 2, 1]))),
    "order_dtype": ("order", _set("order", lambda x: x.astype(np.int32))),
    "init_shape": ("init", lambda a, k: k.__setitem__("init", np.zeros((5, 3), np.float32))),
    "beta1": ("beta1", lambda a, k: k.__setitem__("beta1", 1.0)),
    "eps": ("eps", lambda a, k: k.__setitem__("eps", 0.0)),
    "num_threads": ("num_threads", lambda a, k: k.__setitem__("num_threads", -2)),
}


@pytest.mark.parametrize("case", sorted(BAD_CALLS))
def test_train_entry_checks_name_the_argument(case):
    name, change = BAD_CALLS[case]
    args, kwargs = _valid_args()
    emb = args["emb"]
    before = emb.copy()
    change(args, kwargs)
    with pytest.raises(ValueError, match=name):
        _C.train_epochs(**args, **kwargs)
    assert np.array_equal(emb, before)  # checked before any work


def test_hostile_calls_raise_value_errors_naming_the_argument_or_give_their_documented_result():
    # One child process runs the cases of tests/hostile_calls.py in turn; when it dies (a
    # segfault, an abort), the case it was running is reported and a new child goes on.
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).with_name("hostile_calls.py")
    sys.path.insert(0, str(script.parent))
    from hostile_calls import cases

    todo, failed = sorted(cases()), []
    while todo:
        proc = subprocess.run([sys.executable, str(script), *todo], capture_output=True, text=True, timeout=300)
        lines = proc.stdout.splitlines()
        for line in lines:
            name, outcome, detail = line.split("\t", 2)
            if outcome != "match":
                failed.append(f"{name}: {outcome}: {detail}")
        if len(lines) < len(todo):  # the child died in the next case
            failed.append(f"{todo[len(lines)]}: the process died (exit {proc.returncode}): {proc.stderr[-300:]}")
        todo = todo[len(lines) + 1:]
    assert not failed, "\n".join(failed)


def test_sgd_needs_no_moments_and_a_fresh_call_writes_the_init():
    args, kwargs = _valid_args("sgd")
    args["adam_m"] = args["adam_v"] = np.zeros(0, np.float32)  # empty moments are fine for sgd
    init = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    finite, limbs = _C.train_epochs(**args, **{**kwargs, "n_epochs": 0}, init=init)
    assert finite.tolist() == [[1, 1, 1]] and limbs is None
    assert np.array_equal(args["emb"], np.broadcast_to(init[:, None, :], (5, 3, 4)))  # 0 epochs: the init


def test_validation_entry_checks_name_the_argument():
    args, _ = _valid_args()
    val = {k: v for k, v in args.items() if k not in ("adam_m", "adam_v", "lrs", "regs", "keys", "order")}
    limbs, finite = _C.validation_loss(**val)
    assert limbs.shape == (3, 6) and finite.tolist() == [1, 1, 1]
    with pytest.raises(ValueError, match="emb"):
        _C.validation_loss(**{**val, "emb": val["emb"][:, :, :3].copy()})
    with pytest.raises(ValueError, match="item_vectors"):
        _C.validation_loss(**{**val, "item_vectors": val["item_vectors"].astype(np.float64)})


# --------------------------------------------------------------------------- numerics

def _train(backend, head, data, lrs, regs, *, optimizer="adam", batch_size=3, epochs=3, seed=1,
           damping=DEFAULT_DAMPING):
    """``(embeddings [U, P, d], first moment or None, validation losses [P])`` after ``epochs``."""
    hyp = HyperParams(model=f"matrix_factorization_{head.d}", optimizer=optimizer, batch_size=batch_size, seed=seed,
                      damping=damping)
    problem = prepare(head, data, data, hyp, backend)
    problem.start(lrs, regs)
    checkpoint = problem.checkpoint(epochs)
    moment = problem.moments[0].clone() if problem.moments else None
    return problem.embeddings().clone(), moment, checkpoint.losses


SIMD_CASES = [("mf", 8, 8, "adam", 4, 0.0), ("tower1", 5, 6, "sgd", 7, 0.0), ("tower2", 6, 4, "adam", 1, 0.0),
              ("mf", 8, 8, "adam", 4, 3.0), ("tower1", 5, 6, "sgd", 7, 3.0)]  # damping: reg + 3 / n per user


@pytest.mark.parametrize("simd", _C.simd_paths() if HAS_CPU_EXTENSION else [])
@pytest.mark.parametrize("kind,d,h,optimizer,batch,damping", SIMD_CASES)
def test_every_simd_path_matches_reference(simd, kind, d, h, optimizer, batch, damping):
    # The registry's backend runs the best path only; this covers the others the CPU can run.
    head = random_head(kind, 17, d, h, seed=2)
    data = random_ratings(7, 17, seed=3)
    lrs, regs = [1e-2, 3e-2, 1e-1], [1e-4, 1e-2, 1e-3]
    args = dict(optimizer=optimizer, batch_size=batch, damping=damping)
    emb, _, loss = _train(CpuBackend(simd=simd), head, data, lrs, regs, **args)
    ref, _, ref_loss = _train("reference", head, data, lrs, regs, **args)
    assert rel_err(emb, ref) <= 1e-5, describe_mismatch(emb, ref, 1e-5)
    assert rel_err(loss, ref_loss) <= 1e-5


@pytest.mark.parametrize("simd", _C.simd_paths() if HAS_CPU_EXTENSION else [])
@pytest.mark.parametrize("P", [1, 3])
def test_epoch_orders_at_power_of_two_edges_match_reference(simd, P):
    # The kernels build each epoch's order from a table of the bijection over [0, 2**bits) (written
    # a vector at a time, its last block partial when 2**bits is below the vector width) and walk
    # the table.  Counts at, below and above powers of two, minibatches of 3 (so the order decides
    # which ratings share a step): every path within tolerance of the reference, whose order is
    # retrain.contract's.
    head = random_head("mf", 40, 5, seed=8)
    counts = [2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 129]
    data = random_ratings(len(counts), 40, counts=counts, seed=9)
    lrs, regs = [5e-2, 1e-1, 2e-2][:P], [1e-3, 0.0, 1e-2][:P]
    emb, _, loss = _train(CpuBackend(simd=simd), head, data, lrs, regs, batch_size=3, epochs=2)
    ref, _, ref_loss = _train("reference", head, data, lrs, regs, batch_size=3, epochs=2)
    assert rel_err(emb, ref) <= 1e-5, describe_mismatch(emb, ref, 1e-5)
    assert rel_err(loss, ref_loss) <= 1e-5


def _threads_problem():
    head = random_head("tower1", 40, 6, 5, seed=5)
    counts = np.random.default_rng(6).integers(0, 60, 300)
    data = random_ratings(300, 40, counts=counts, seed=7)
    lrs, regs = [1e-2, 5e-2, 2e-1, 1e-3, 1e-2], [1e-3, 1e-5, 1e-2, 0.0, 1e-1]
    return head, data, lrs, regs


@pytest.mark.parametrize("simd", _C.simd_paths() if HAS_CPU_EXTENSION else [])
def test_results_do_not_depend_on_thread_count(simd):
    # Bitwise, not just close: in training each user is owned by one thread for the whole call
    # and runs a fixed instruction sequence (probes in SIMD lanes, sums in a fixed order), and
    # users never interact; validation adds each user's sum exactly (integer limbs), so the
    # order in which threads add them cannot change a bit.
    head, data, lrs, regs = _threads_problem()
    one = _train(CpuBackend(num_threads=1, simd=simd), head, data, lrs, regs, batch_size=4)
    for threads in (2, 3):
        many = _train(CpuBackend(num_threads=threads, simd=simd), head, data, lrs, regs, batch_size=4)
        assert torch.equal(one[0], many[0]) and torch.equal(one[1], many[1])
        assert np.array_equal(one[2], many[2])


# Paths with the same per-lane arithmetic (multiply-add fused or not; every product sums its terms
# in the same order, whatever the register width): their results are the same bits.
SAME_BITS = [("portable", "sse4"), ("avx2", "avx512")]


@pytest.mark.parametrize("narrow,wide", SAME_BITS)
def test_paths_with_the_same_arithmetic_give_the_same_bits(narrow, wide):
    if not {narrow, wide} <= set(_C.simd_paths()):
        pytest.skip(f"this CPU cannot run both {narrow} and {wide}")
    head, data, lrs, regs = _threads_problem()
    a = _train(CpuBackend(num_threads=2, simd=narrow), head, data, lrs, regs, batch_size=4)
    b = _train(CpuBackend(num_threads=2, simd=wide), head, data, lrs, regs, batch_size=4)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and np.array_equal(a[2], b[2])


def test_probe_result_does_not_depend_on_the_other_probes():
    # Probes are SIMD lanes padded to full registers: probe 2 of 7 runs exactly as probe 0 of 1.
    head = random_head("mf", 19, 5, seed=8)
    data = random_ratings(6, 19, seed=9)
    lrs, regs = [1e-3, 2e-2, 5e-2, 1e-1, 3e-1, 1.0, 1e-2], [0.0, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 1e-5]
    alone = _train("cpu", head, data, [lrs[2]], [regs[2]])
    together = _train("cpu", head, data, lrs, regs)
    assert torch.equal(alone[0][:, 0], together[0][:, 2]) and alone[2][0] == together[2][2]


def test_validation_sums_edge_cases():
    head = random_head("tower2", 9, 3, 2, seed=12)
    data = random_ratings(5, 9, counts=[0, 3, 0, 130, 1], seed=13)
    dense = head_tensors(head, "cpu", "cpu")
    args = dict(indptr=data.indptr, items=data.items.astype(np.int32), ratings=data.ratings, weights=data.weights,
                item_vectors=dense.item_vectors.numpy(), item_bias=dense.item_bias.numpy(),
                global_bias=dense.global_bias, tower_weights=[w.numpy() for w, _, _ in dense.tower],
                tower_biases=[c.numpy() for _, c, _ in dense.tower],
                tower_activations=[ACTIVATION_CODES[a] for _, _, a in dense.tower])
    emb = torch.randn(5, 4, 3, generator=torch.Generator().manual_seed(0))
    limbs, finite = _C.validation_loss(emb.numpy(), **args)
    # The oracle: float64 sums of the head's own predictions.
    users = torch.from_numpy(data.user_of_row())
    want = torch.stack([(torch.from_numpy(data.weights).double() *
                         (head.predict(emb[users, p].double(), torch.from_numpy(data.items)) -
                          torch.from_numpy(data.ratings).double()) ** 2).sum() for p in range(4)])
    assert rel_err(fixed_point_value(limbs), want) <= 1e-6 and finite.all()
    emb[[0, 2]] = float("nan")  # users without ratings add nothing
    limbs_nan, finite = _C.validation_loss(emb.numpy(), **args)
    assert np.array_equal(limbs_nan, limbs) and finite.all()
    emb[3, 1] = float("nan")
    _, finite = _C.validation_loss(emb.numpy(), **args)
    assert finite.tolist() == [1, 0, 1, 1]


def test_validation_sums_are_the_contract_fixed_point_sums():
    # One rating per user, so each user's sum is one float32 term: the limbs must be exactly
    # retrain.contract.fixed_point_limbs of those terms, in the fast path (0 <= v < 2**63), the
    # general one (v >= 2**63) and below the resolution (v < 2**-64 truncates to 0).
    from retrain.contract import fixed_point_limbs

    weights = np.array([1.0, 3.0, 1e30, 1e-30, 0.0, 2.5e20], np.float32)
    n = len(weights)
    item_bias = np.linspace(-1.0, 1.0, n).astype(np.float32)
    ratings = np.linspace(0.5, 4.5, n).astype(np.float32)
    diff = (item_bias + np.float32(3.0)) - ratings  # pred = b + mu: the embeddings are zero
    terms = weights * (diff * diff)
    limbs, finite = _C.validation_loss(np.zeros((n, 1, 1), np.float32), np.arange(n + 1, dtype=np.int64),
                                       np.arange(n, dtype=np.int32), ratings, weights, np.ones((n, 1), np.float32),
                                       item_bias, 3.0, [], [], [])
    want, ok = fixed_point_limbs(torch.from_numpy(terms.astype(np.float64)))
    assert finite.all() and ok.all() and terms.max() > 2.0**63 and 0 < terms[3] < 2.0**-64
    assert fixed_point_value(limbs[0]) == fixed_point_value(want.sum(0))


@pytest.mark.parametrize("simd", _C.simd_paths() if HAS_CPU_EXTENSION else [])
def test_validation_sums_past_2_to_the_64_do_not_wrap(simd):
    # Eight users with one term of 5e18 each (the fast path: below 2**63) add up to 4e19, past
    # 2**64 (2**128 units of 2**-64): the 128-bit sum wrapped and gave 1.55e18 (it must carry).
    from retrain.contract import fixed_point_limbs

    n = 8
    emb = np.full((n, 1, 1), 2.236e9, np.float32)
    csr = (np.arange(n + 1, dtype=np.int64), np.zeros(n, np.int32), np.zeros(n, np.float32), np.ones(n, np.float32))
    head = (np.ones((1, 1), np.float32), np.zeros(1, np.float32), 0.0, [], [], [])
    term = float(emb[0, 0, 0] * emb[0, 0, 0])  # w (pred - r)^2 in float32, as the kernels compute it
    want = fixed_point_value(fixed_point_limbs(torch.full((n,), term, dtype=torch.float64))[0].sum(0))
    assert term < 2.0**63 and n * term > 2.0**64
    for threads in (1, 2):
        limbs, finite = _C.validation_loss(emb, *csr, *head, num_threads=threads, simd=simd)
        assert finite.all() and fixed_point_value(limbs) == want
        finite, limbs = _C.train_epochs(
            emb.copy(), emb.copy(), emb.copy(), np.ones(1, np.float32), np.zeros(1, np.float32), *csr,
            np.arange(n, dtype=np.int64), np.arange(n, dtype=np.int64), *head, epoch_start=0, n_epochs=0,
            batch_size=1, optimizer="adam", beta1=0.9, beta2=0.999, eps=1e-8, seed=0, init=emb[:, 0],
            val=csr, num_threads=threads, simd=simd)
        assert finite.all() and fixed_point_value(limbs[0]) == want


def test_thread_count_follows_the_work_unless_given():
    auto, torch_threads = CpuBackend(), torch.get_num_threads()
    assert auto.threads(3000, 1, 200) == 1  # a few thousand ratings: one thread
    assert auto.threads(3000, 64, 200) == min(2, torch_threads)  # ... unless they carry many probes
    assert auto.threads(10**9, 64, 10**5) == torch_threads
    assert auto.threads(10**9, 64, 1) == 1  # one user has one owner
    assert auto.threads(2 * CpuBackend.WORK_PER_THREAD // 64, 64, 100) == min(2, torch_threads)
    # Fewer probes than MIN_LANES cost what MIN_LANES cost: P = 1 and P = 8 get the same threads.
    ratings = 2 * CpuBackend.WORK_PER_THREAD // CpuBackend.MIN_LANES
    assert auto.threads(ratings, 1, 100) == auto.threads(ratings, CpuBackend.MIN_LANES, 100) == min(2, torch_threads)
    assert auto.threads(ratings - 1, 1, 100) == 1
    assert CpuBackend(num_threads=3).threads(10, 1, 1) == 3


@pytest.mark.parametrize("simd", _C.simd_paths() if HAS_CPU_EXTENSION else [])
@pytest.mark.parametrize("kind,P,optimizer,batch,damping", [("mf", 1, "adam", 3, 0.0), ("tower2", 2, "adam", 5, 0.0),
                                                            ("tower1", 3, "sgd", 2, 0.0), ("mf", 5, "adam", 64, 0.0),
                                                            ("mf", 1, "adam", 3, 4.0), ("tower1", 3, "sgd", 2, 4.0)])
def test_users_in_lanes_give_the_per_user_bits(simd, kind, P, optimizer, batch, damping):
    # Users share a register when P is at most half of it, whatever their rating counts; every lane
    # must run exactly what it runs alone: embeddings, moments, checkpoint losses and snapshots,
    # bitwise.  The counts mix users with 1 rating, counts below, at and above the batch size (a
    # register's users then take different numbers of steps, last minibatches of different sizes
    # and, with damping, different regs reg + damping / n), runs of equal counts, and users without
    # ratings.
    head = random_head(kind, 23, 6, 4, seed=20)
    rng = np.random.default_rng(21)
    counts = np.concatenate([rng.integers(1, 3 * batch + 2, 60), [1, 1, batch, batch + 1, 0, 0, 2 * batch - 1],
                             rng.choice([0, 1, 2, 7, 7, 7, 12, 40], 23)])
    train, val = random_ratings(90, 23, counts=counts, seed=22), random_ratings(90, 23, seed=23)
    lrs, regs = [3e-2, 1e-1, 1e-2, 2e-1, 5e-2][:P], [1e-3, 1e-2, 0.0, 1e-4, 1e-1][:P]
    hyp = HyperParams(model="matrix_factorization_6", optimizer=optimizer, batch_size=batch, seed=4, damping=damping)

    def run(users_in_lanes):
        problem = prepare(head, train, val, hyp, CpuBackend(num_threads=2, simd=simd, users_in_lanes=users_in_lanes))
        problem.start(lrs, regs, keep_best=True)
        first = problem.checkpoints([1, 2])  # fresh, with a snapshot after epoch 1
        problem.keep_best(list(range(P)), index=0)
        second = problem.checkpoints([2])  # from the stored state
        moments = [m.clone() for m in problem.moments]
        return problem.embeddings().clone(), moments, problem.best_embeddings(), first + second

    packed, alone = run(True), run(False)
    assert torch.equal(packed[0], alone[0]) and torch.equal(packed[2], alone[2])
    assert all(torch.equal(a, b) for a, b in zip(packed[1], alone[1]))
    for a, b in zip(packed[3], alone[3]):
        assert np.array_equal(a.losses, b.losses) and np.array_equal(a.finite, b.finite)
    if simd != _C.simd_paths()[-1]:
        return  # the reference once: the paths agree with it (test_every_simd_path_matches_reference)
    ref = _train("reference", head, train, lrs, regs, optimizer=optimizer, batch_size=batch, epochs=5, seed=4,
                 damping=damping)
    assert rel_err(packed[0], ref[0]) <= 1e-5, describe_mismatch(packed[0], ref[0], 1e-5)


@pytest.mark.parametrize("simd", _C.simd_paths() if HAS_CPU_EXTENSION else [])
def test_users_in_lanes_across_staging_windows(simd):
    # A packed register stages 32 ratings of every lane's minibatch at a time.  Minibatches of 40
    # (a window of 32, then one of 8) with counts of 1, below, at and above the batch size and up
    # to four minibatches, P = 1: bitwise the per-user result (embeddings, moments, losses).
    head = random_head("mf", 50, 6, seed=24)
    counts = np.concatenate([np.random.default_rng(25).integers(1, 160, 40), [1, 39, 40, 41, 80, 0]])
    train, val = random_ratings(46, 50, counts=counts, seed=26), random_ratings(46, 50, seed=27)
    hyp = HyperParams(model="matrix_factorization_6", batch_size=40, seed=5)

    def run(users_in_lanes):
        problem = prepare(head, train, val, hyp, CpuBackend(num_threads=2, simd=simd, users_in_lanes=users_in_lanes))
        problem.start([3e-2], [1e-3])
        losses = problem.checkpoint(3).losses
        return problem.embeddings().clone(), [m.clone() for m in problem.moments], losses

    packed, alone = run(True), run(False)
    assert torch.equal(packed[0], alone[0]) and all(torch.equal(a, b) for a, b in zip(packed[1], alone[1]))
    assert np.array_equal(packed[2], alone[2])


def test_wide_probe_blocks_are_transposed_exactly():
    # P and d above every register width, neither a multiple of it: the state moves between
    # [P][d] and the kernel's [d][lanes] in register-sized blocks plus edges.  On every path, a
    # call of 0 epochs loads and stores the state unchanged, and 2 epochs agree with the reference.
    head = random_head("mf", 17, 20, seed=30)
    data = random_ratings(7, 17, seed=31)
    P = 19
    lrs, regs = np.logspace(-3, -1, P).tolist(), np.logspace(-5, -2, P).tolist()
    ref, _, _ = _train("reference", head, data, lrs, regs, batch_size=8, epochs=2)
    _, kwargs = _valid_args()
    dense = head_tensors(head, "cpu", "cpu")
    csr = csr_tensors(data, "cpu")
    for simd in _C.simd_paths():
        emb, _, _ = _train(CpuBackend(simd=simd), head, data, lrs, regs, batch_size=8, epochs=2)
        assert rel_err(emb, ref) <= 1e-5, (simd, describe_mismatch(emb, ref, 1e-5))
        state = [np.random.default_rng(k).normal(size=(7, P, 20)).astype(np.float32) for k in range(3)]
        kept = [s.copy() for s in state]
        _C.train_epochs(*state, np.array(lrs, np.float32), np.array(regs, np.float32), csr.indptr.numpy(),
                        csr.items.numpy(), csr.ratings.numpy(), csr.weights.numpy(), csr.keys.numpy(),
                        np.arange(7), dense.item_vectors.numpy(), dense.item_bias.numpy(), dense.global_bias,
                        [], [], [], **{**kwargs, "n_epochs": 0}, simd=simd)
        assert all(np.array_equal(s, k) for s, k in zip(state, kept)), simd


@pytest.mark.parametrize("simd", _C.simd_paths() if HAS_CPU_EXTENSION else [])
def test_bias_corrections_from_the_table_or_per_step_are_the_same(simd):
    # Adam's bias corrections come from a per-call table of each distinct steps-per-epoch S's
    # counts, n_epochs * S of them, unless the table would exceed 2**20 entries: then std::pow per
    # step.  Users of 2**16, 40, 3 and 1 ratings, minibatches of 1: a 17-epoch call exceeds the
    # table (17 * 65,580 counts), 17 calls of one epoch from epochs 0-16 each fit (65,580).  Both
    # must give the same bits.  The table's counts against the reference: a small call of 3 epochs.
    head = random_head("mf", 13, 4, seed=40)
    lrs, regs = [1e-2, 3e-2], [1e-3, 0.0]

    def train(data, calls, batch):
        problem = prepare(head, data, None, HyperParams(model="matrix_factorization_4", batch_size=batch, seed=3),
                          CpuBackend(simd=simd))
        problem.start(lrs, regs)
        for n in calls:
            problem.train(n)
        return problem.embeddings().clone()

    big = random_ratings(4, 13, counts=[2**16, 40, 3, 1], seed=41)
    assert torch.equal(train(big, [17], 1), train(big, [1] * 17, 1))
    small = random_ratings(3, 13, counts=[40, 7, 1], seed=42)
    ref, _, _ = _train("reference", head, small, lrs, regs, batch_size=2, epochs=3, seed=3)
    emb = train(small, [1, 2], 2)
    assert rel_err(emb, ref) <= 1e-5, describe_mismatch(emb, ref, 1e-5)
