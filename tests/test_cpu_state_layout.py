"""The cpu backend's probes-last state ([U, d, P] in memory, the kernel's lane order): the same bits
as the [U, P, d] layout on every SIMD path, and the prepared problem's [U, P, d] views (keep_best,
drop, snapshots, fold-in) against the reference backend."""
import numpy as np
import pytest

from problems import describe_mismatch, random_head, random_ratings, rel_err
from retrain.backends.base import ACTIVATION_CODES, csr_tensors, head_tensors
from retrain.backends.cpu import HAS_CPU_EXTENSION, IMPORT_ERROR, CpuBackend
from retrain.contract import fixed_point_value
from retrain.hyperparams import HyperParams
from retrain.trainer import prepare, train_embeddings

pytestmark = pytest.mark.skipif(not HAS_CPU_EXTENSION, reason=f"retrain._C not built: {IMPORT_ERROR}")

if HAS_CPU_EXTENSION:
    from retrain import _C

BATCH = 4
# Users with 0, 1, below, at and above the batch size, and several minibatches.
COUNTS = [0, 1, BATCH - 1, BATCH, BATCH + 1, 3 * BATCH + 2, 2, 0, 7]


def _case(kind, d, seed):
    head = random_head(kind, 13, d, seed=seed)
    U = len(COUNTS)
    train = random_ratings(U, 13, counts=COUNTS, seed=seed + 1)
    val = random_ratings(U, 13, seed=seed + 2)
    return head_tensors(head, "cpu", "cpu"), csr_tensors(train, "cpu"), csr_tensors(val, "cpu"), U


def _head_args(head):
    return (head.item_vectors.numpy(), head.item_bias.numpy(), head.global_bias,
            [w.numpy() for w, _, _ in head.tower], [c.numpy() for _, c, _ in head.tower],
            [ACTIVATION_CODES[a] for _, _, a in head.tower])


def _csr(data):
    return tuple(t.numpy() for t in (data.indptr, data.items, data.ratings, data.weights))


def _run(head, train, val, state, P, *, probes_last, simd, optimizer, init=None, epoch_start=0, threads=2):
    """One call of 3 epochs, checkpoints after 1, 2 and 3 with validation and snapshots; ``state``
    (emb, m, v) in the given layout, updated in place.  Returns (finite, limbs, snapshots)."""
    U, d = train.n_users, head.d
    lrs, regs = np.logspace(-3, -1, P).astype(np.float32), np.logspace(-5, -2, P).astype(np.float32)
    snapshots = np.full((2, U, P, d), np.nan, np.float32)
    order = np.argsort(-np.diff(train.indptr.numpy()), kind="stable").astype(np.int64)
    adam = optimizer == "adam"
    finite, limbs = _C.train_epochs(
        *state, lrs, regs, *_csr(train), train.keys.numpy(), order, *_head_args(head), epoch_start=epoch_start,
        n_epochs=3, batch_size=BATCH, optimizer=optimizer, beta1=0.9 if adam else 0.0,
        beta2=0.999 if adam else 0.0, eps=1e-8 if adam else 1.0, seed=5, init=init,
        checkpoint_ends=np.array([1, 2, 3], np.int64), val=_csr(val), snapshots=snapshots, num_threads=threads,
        simd=simd, probes_last=probes_last, user_damping=np.linspace(0, 1e-2, U).astype(np.float32))
    return finite, limbs, snapshots


def _zeros(shape, misalign):
    """float32 zeros starting ``misalign`` floats past a 64-byte boundary."""
    size = int(np.prod(shape))
    buffer = np.zeros(size + 32, np.float32)
    start = (-buffer.ctypes.data % 64) // 4 + misalign
    return buffer[start:start + size].reshape(shape)


@pytest.mark.parametrize("simd", _C.simd_paths() if HAS_CPU_EXTENSION else [])
@pytest.mark.parametrize("P,misalign", [(1, 0), (3, 0), (17, 0), (32, 0), (32, 1), (65, 0)])
@pytest.mark.parametrize("kind,d,optimizer", [("mf", 5, "adam"), ("tower1", 6, "sgd")])
def test_probes_last_gives_the_same_bits(simd, P, misalign, kind, d, optimizer):
    # A fresh call (from the init) then a continued one, in both layouts: the state (transposed
    # back), the finite flags, the validation limbs and the snapshots are identical; so is a
    # validation pass.  P = 1 and 3 pack users in lanes (P = 1 trains in place on the portable
    # path), 17 and 65 are not multiples of any width, P = 32 fills whole registers: aligned, a
    # user trains in place in the probes-last state; one float off, it is copied as for 17.
    head, train, val, U = _case(kind, d, seed=P)
    init = np.random.default_rng(P).normal(scale=0.1, size=(U, d)).astype(np.float32)
    upd = [np.zeros((U, P, d), np.float32) for _ in range(3)]
    udp = [_zeros((U, d, P), misalign) for _ in range(3)]
    for call, start in ((dict(init=init), 0), (dict(), 3)):
        a = _run(head, train, val, upd, P, probes_last=False, simd=simd, optimizer=optimizer, epoch_start=start, **call)
        b = _run(head, train, val, udp, P, probes_last=True, simd=simd, optimizer=optimizer, epoch_start=start,
                 threads=1, **call)
        # Limbs of the same exact sum may carry differently across thread counts: compare values.
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[2], b[2])
        assert np.array_equal(fixed_point_value(a[1]), fixed_point_value(b[1]))
        arrays = upd if optimizer == "adam" else upd[:1]
        assert all(np.array_equal(x, y.transpose(0, 2, 1)) for x, y in zip(arrays, udp))
    assert np.isfinite(upd[0]).all() and not np.array_equal(upd[0][5], np.broadcast_to(init[5], (P, d)))  # it trained
    by_layout = [_C.validation_loss(emb, *_csr(val), *_head_args(head), simd=simd, probes_last=last)
                 for emb, last in ((upd[0], False), (udp[0], True))]
    assert np.array_equal(fixed_point_value(by_layout[0][0]), fixed_point_value(by_layout[1][0]))
    assert np.array_equal(by_layout[0][1], by_layout[1][1])


def test_probes_last_shape_is_checked():
    head, train, val, U = _case("mf", 5, seed=0)
    wrong = [np.zeros((U, 3, 5), np.float32) for _ in range(3)]  # [U, P, d], declared [U, d, P]
    with pytest.raises(ValueError, match=r"emb \(probes_last\) must have shape"):
        _run(head, train, val, wrong, 3, probes_last=True, simd="auto", optimizer="adam")


def _problem(backend, head, train, val, P):
    hyp = HyperParams(model=f"matrix_factorization_{head.d}", batch_size=BATCH, seed=2)
    problem = prepare(head, train, val, hyp, backend)
    problem.start(np.logspace(-3, -1, P).tolist(), np.logspace(-5, -2, P).tolist(), keep_best=True)
    return problem


def test_problem_views_keep_best_drop_and_snapshots_match_reference():
    # The prepared problem's [U, P, d] views of its probes-last state through the trainer's calls:
    # three checkpoints in one call (snapshots), keep_best at a snapshot and at the current state,
    # drop to an odd subset, more training: every output within 1e-5 of the reference backend.
    head = random_head("mf", 13, 5, seed=50)
    train, val = random_ratings(len(COUNTS), 13, counts=COUNTS, seed=51), random_ratings(len(COUNTS), 13, seed=52)
    outputs = []
    for backend in (CpuBackend(num_threads=2), "reference"):
        problem = _problem(backend, head, train, val, 17)
        cps = problem.checkpoints([1, 1, 1])
        problem.keep_best([0, 4, 16], index=0)
        problem.keep_best([5], index=None)
        problem.drop([1, 4, 5, 11, 16])
        later = problem.checkpoints([2])
        problem.keep_best([0, 2], index=None)
        outputs.append(([c.losses for c in cps + later], problem.embeddings().clone(),
                        [m.clone() for m in problem.moments], problem.best_embeddings()))
    (losses, emb, moments, best), (ref_losses, ref_emb, ref_moments, ref_best) = outputs
    assert emb.shape == (len(COUNTS), 5, 5) and best.shape == (len(COUNTS), 17, 5)
    for x, y in [(emb, ref_emb), (best[:, [0, 1, 4, 5, 16]], ref_best[:, [0, 1, 4, 5, 16]]),
                 *zip(moments, ref_moments)]:
        assert rel_err(x, y) <= 1e-5, describe_mismatch(x, y, 1e-5)
    for x, y in zip(losses, ref_losses):
        assert np.allclose(x, y, rtol=1e-5, atol=0)


def test_fold_in_matches_reference():
    # P = 1 (users in lanes), the serving recipe: train_embeddings returns [U, d].
    head = random_head("mf", 13, 5, seed=60)
    data = random_ratings(len(COUNTS), 13, counts=COUNTS, seed=61)
    hyp = HyperParams(model="matrix_factorization_5", batch_size=BATCH, learning_rate=1e-2, regularization=1e-3)
    emb = train_embeddings(head, data, hyp, 4, CpuBackend(num_threads=2))
    ref = train_embeddings(head, data, hyp, 4, "reference")
    assert emb.shape == (len(COUNTS), 5) and emb.is_contiguous()
    assert rel_err(emb, ref) <= 1e-5, describe_mismatch(emb, ref, 1e-5)


def test_huge_page_advice_changes_no_value():
    # The problem's state buffers ask for huge pages when allocated; the advice moves no data.
    state = np.arange(3 << 20, dtype=np.float32)  # 12 MiB: a 2 MiB-aligned interior exists
    assert isinstance(_C.advise_huge_pages(state), bool)
    assert np.array_equal(state, np.arange(3 << 20, dtype=np.float32))
    assert _C.advise_huge_pages(np.zeros(10, np.float32)) is False  # no whole huge page inside
    with pytest.raises(ValueError, match="numpy array"):
        _C.advise_huge_pages([1.0])


@pytest.mark.parametrize("U, d, P, slots", [
    (9, 5, 17, [1, 4, 5, 11, 16]),  # the drop above: short runs
    (3, 7, 64, list(range(0, 20)) + list(range(21, 64))),  # one probe out: two long runs (memmove)
    (4, 3, 6, [5]), (2, 2, 5, [0, 1, 2, 3, 4]), (5, 4, 8, []),
    (700, 32, 9, [0, 2, 3, 4, 5, 6, 7, 8]),  # 22,400 rows: blocks of them move on several threads
    (1100, 16, 3, [2]),
])
def test_keep_probes_compacts_in_place(U, d, P, slots):
    rng = np.random.default_rng(U * P)
    state = rng.standard_normal((U, d, P)).astype(np.float32)
    want = state[:, :, slots].copy()  # numpy's gather: the oracle
    tail = state.reshape(-1)[U * d * len(slots):].copy()
    _C.keep_probes(state, np.array(slots, dtype=np.int64), num_threads=2)
    flat = state.reshape(-1)
    assert np.array_equal(flat[:U * d * len(slots)].reshape(U, d, len(slots)), want)
    if not slots:  # nothing kept: nothing written
        assert np.array_equal(flat, tail)


def test_keep_probes_checks_its_arguments():
    state = np.zeros((2, 3, 4), np.float32)
    for slots, message in [([1, 1], "increasing"), ([2, 1], "increasing"), ([0, 4], r"in \[0, 4\), got 4 at entry 1"),
                           ([-1], "got -1 at entry 0")]:
        with pytest.raises(ValueError, match=message):
            _C.keep_probes(state, np.array(slots, dtype=np.int64))
    with pytest.raises(ValueError, match="state must have dtype"):
        _C.keep_probes(state.astype(np.float64), np.array([0], dtype=np.int64))
    with pytest.raises(ValueError, match="state must be writeable"):
        state.setflags(write=False)
        _C.keep_probes(state, np.array([0], dtype=np.int64))
