"""The C++ backend beyond the shared parity suite: the contract in C++, entry checks, both SIMD
paths, thread-count independence and awkward users."""
import numpy as np
import pytest
import torch

from problems import describe_mismatch, random_head, random_ratings, rel_err
from retrain import contract
from retrain.backends import get_backend
from retrain.backends.base import ACTIVATION_CODES, CSRTensors, csr_tensors, head_tensors, new_state
from retrain.backends.cpu import HAS_CPU_EXTENSION, IMPORT_ERROR, CpuBackend

pytestmark = pytest.mark.skipif(not HAS_CPU_EXTENSION, reason=f"retrain._C not built: {IMPORT_ERROR}")

if HAS_CPU_EXTENSION:
    from retrain import _C

EDGE_N = [0, 1, 2, 3, 4, 5, 7, 8, 9, 31, 32, 33, 100, 255, 256, 257, 1000, 1023, 1024, 1025, 4096, 4097]
EDGE_KEYS = [0, 1, 12345, 2**31 - 1, 2**31, 2**32 - 2, 2**32 - 1]
EDGE_WORDS = [0, 1, 7, 2**31, 2**32 - 1]  # seeds and epochs


# --------------------------------------------------------------------------- the contract in C++

def test_hash_words_match_python():
    rng = np.random.default_rng(0)
    words = np.concatenate([EDGE_KEYS, rng.integers(0, 2**32, 200)]).astype(np.int64)
    for x in words:
        assert _C.fmix32(int(x)) == int(contract.fmix32(x))
    for h, v in zip(words, words[::-1]):
        assert _C.combine(int(h), int(v)) == int(contract.combine(h, v))


@pytest.mark.parametrize("n", EDGE_N)
def test_permutation_matches_python_at_edge_sizes(n):
    for key in EDGE_KEYS:
        for word in EDGE_WORDS:
            expected = contract.permutation(word, 3, key, n)
            assert np.array_equal(_C.permutation(word, 3, key, n), expected), (word, key, n)
            assert np.array_equal(_C.permutation(5, word, key, n), contract.permutation(5, word, key, n))
    assert np.array_equal(np.sort(_C.permutation(1, 2, 3, n)), np.arange(n))  # a permutation


def test_permutation_matches_python_random_and_large():
    rng = np.random.default_rng(1)
    for _ in range(300):
        seed, epoch, key = (int(x) for x in rng.integers(0, 2**32, 3))
        n = int(rng.integers(0, 3000))
        assert np.array_equal(_C.permutation(seed, epoch, key, n), contract.permutation(seed, epoch, key, n))
    for n in (2**20, 2**20 + 1, 1_500_000):
        assert np.array_equal(_C.permutation(9, 4, 2**32 - 3, n), contract.permutation(9, 4, 2**32 - 3, n))


def test_permutation_rejects_bad_n():
    with pytest.raises(ValueError, match="n must be"):
        _C.permutation(0, 0, 0, -1)


@pytest.mark.parametrize("d", [0, 1, 3, 32])
@pytest.mark.parametrize("scale", [0.0, 0.1, contract.init_scale("glorot", 32, 610)])
def test_initial_embeddings_match_python_bitwise(d, scale):
    rng = np.random.default_rng(d)
    keys = np.concatenate([EDGE_KEYS, rng.integers(0, 2**32, 50)]).astype(np.int64)
    for seed in EDGE_WORDS:
        got = _C.initial_embeddings(keys, d, seed, scale)
        expected = contract.initial_embeddings(keys, d, seed, scale)
        assert got.dtype == np.float32 and got.shape == (len(keys), d)
        assert np.array_equal(got, expected)


# --------------------------------------------------------------------------- entry checks

def _valid_args(optimizer="adam"):
    """A small valid call of _C.train_epochs as (positional dict, keyword dict)."""
    head = head_tensors(random_head("tower2", 11, 4, 3, seed=0), "cpu")
    data = csr_tensors(random_ratings(5, 11, seed=0), "cpu")
    state = new_state(data, 3, 4, seed=0, scale=0.1, optimizer=optimizer)
    args = dict(
        emb=state.emb.numpy(), adam_m=state.adam_m.numpy(), adam_v=state.adam_v.numpy(),
        lrs=np.full(3, 1e-2, np.float32), regs=np.full(3, 1e-3, np.float32),
        indptr=data.indptr.numpy().copy(), items=data.items.numpy().copy(), ratings=data.ratings.numpy(),
        weights=data.weights.numpy(), keys=data.keys.numpy(), item_vectors=head.item_vectors.numpy(),
        item_bias=head.item_bias.numpy(), global_bias=head.global_bias,
        tower_weights=[w.numpy() for w, _, _ in head.tower], tower_biases=[c.numpy() for _, c, _ in head.tower],
        tower_activations=[ACTIVATION_CODES[a] for _, _, a in head.tower])
    return args, dict(epoch_start=0, n_epochs=1, batch_size=2, optimizer=optimizer, seed=0)


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
    "n_epochs": ("n_epochs", lambda a, k: k.__setitem__("n_epochs", -1)),
    "optimizer": ("optimizer", lambda a, k: k.__setitem__("optimizer", "rmsprop")),
    "simd": ("simd", lambda a, k: k.__setitem__("simd", "neon")),
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


def test_valid_call_passes_and_sgd_ignores_moments():
    args, kwargs = _valid_args("sgd")
    _C.train_epochs(**args, **kwargs)
    args["adam_m"] = args["adam_v"] = np.zeros(0, np.float32)  # empty moments are fine for sgd
    _C.train_epochs(**args, **kwargs)


def test_validation_entry_checks_name_the_argument():
    args, _ = _valid_args()
    val = {k: v for k, v in args.items() if k not in ("adam_m", "adam_v", "lrs", "regs", "keys")}
    assert _C.validation_loss(**val).shape == (3,)
    with pytest.raises(ValueError, match="emb"):
        _C.validation_loss(**{**val, "emb": val["emb"][:, :, :3].copy()})
    with pytest.raises(ValueError, match="item_vectors"):
        _C.validation_loss(**{**val, "item_vectors": val["item_vectors"].astype(np.float64)})


def test_backend_rejects_non_contiguous_state():
    be = get_backend("cpu")
    head = head_tensors(random_head("mf", 7, 3), "cpu")
    data = csr_tensors(random_ratings(4, 7), "cpu")
    state = new_state(data, 2, 3, seed=0, scale=0.1, optimizer="sgd")
    state.emb = state.emb.transpose(0, 1)
    with pytest.raises(ValueError, match="emb"):
        be.train_epochs(head, data, state, torch.ones(2), torch.ones(2), epoch_start=0, n_epochs=1,
                        batch_size=2, optimizer="sgd", seed=0)


# --------------------------------------------------------------------------- numerics

def _train(backend, head, data, lrs, regs, *, optimizer="adam", batch_size=3, epochs=3, seed=1):
    head_t, data_t = head_tensors(head, "cpu"), csr_tensors(data, "cpu")
    state = new_state(data_t, len(lrs), head.d, seed=seed, scale=head.init_scale(data.n_users), optimizer=optimizer)
    backend.train_epochs(head_t, data_t, state, torch.tensor(lrs, dtype=torch.float32),
                         torch.tensor(regs, dtype=torch.float32), epoch_start=0, n_epochs=epochs,
                         batch_size=batch_size, optimizer=optimizer, seed=seed)
    return state, backend.validation_loss(head_t, data_t, state.emb)


SIMD_CASES = [("mf", 8, 8, "adam", 4), ("tower1", 5, 6, "sgd", 7), ("tower2", 6, 4, "adam", 1)]


@pytest.mark.parametrize("simd", _C.simd_paths() if HAS_CPU_EXTENSION else [])
@pytest.mark.parametrize("kind,d,h,optimizer,batch", SIMD_CASES)
def test_every_simd_path_matches_reference(simd, kind, d, h, optimizer, batch):
    # The registry's backend runs the best path only; this covers the others the CPU can run.
    head = random_head(kind, 17, d, h, seed=2)
    data = random_ratings(7, 17, seed=3)
    lrs, regs = [1e-2, 3e-2, 1e-1], [1e-4, 1e-2, 1e-3]
    state, loss = _train(CpuBackend(simd=simd), head, data, lrs, regs, optimizer=optimizer, batch_size=batch)
    ref_state, ref_loss = _train(get_backend("reference"), head, data, lrs, regs, optimizer=optimizer, batch_size=batch)
    assert rel_err(state.emb, ref_state.emb) <= 1e-5, describe_mismatch(state.emb, ref_state.emb, 1e-5)
    assert rel_err(loss, ref_loss) <= 1e-5


def test_results_do_not_depend_on_thread_count():
    # Bitwise, not just close: in training each user is owned by one thread for the whole call
    # and runs a fixed instruction sequence (probes in SIMD lanes, sums in a fixed order), and
    # users never interact; validation sums per-user losses in fixed blocks of users, then adds
    # the blocks in order.  So which thread ran what, and when, cannot change a single bit.
    head = random_head("tower1", 40, 6, 5, seed=5)
    counts = np.random.default_rng(6).integers(0, 60, 300)
    data = random_ratings(300, 40, counts=counts, seed=7)
    lrs, regs = [1e-2, 5e-2, 2e-1, 1e-3, 1e-2], [1e-3, 1e-5, 1e-2, 0.0, 1e-1]
    one, loss_one = _train(CpuBackend(num_threads=1), head, data, lrs, regs, batch_size=4)
    for threads in (2, 3):
        many, loss_many = _train(CpuBackend(num_threads=threads), head, data, lrs, regs, batch_size=4)
        assert torch.equal(one.emb, many.emb) and torch.equal(one.adam_m, many.adam_m)
        assert torch.equal(loss_one, loss_many)


def test_probe_result_does_not_depend_on_the_other_probes():
    # Probes are SIMD lanes padded to full registers: probe 2 of 7 runs exactly as probe 0 of 1.
    head = random_head("mf", 19, 5, seed=8)
    data = random_ratings(6, 19, seed=9)
    lrs, regs = [1e-3, 2e-2, 5e-2, 1e-1, 3e-1, 1.0, 1e-2], [0.0, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 1e-5]
    alone, _ = _train(get_backend("cpu"), head, data, [lrs[2]], [regs[2]])
    together, _ = _train(get_backend("cpu"), head, data, lrs, regs)
    assert torch.equal(alone.emb[:, 0], together.emb[:, 2])


def test_users_with_zero_one_and_many_ratings():
    head = random_head("mf", 13, 4, seed=10)
    data = random_ratings(4, 13, counts=[0, 1, 200, 0], seed=11)
    head_t, data_t = head_tensors(head, "cpu"), csr_tensors(data, "cpu")
    for optimizer in ("adam", "sgd"):
        state = new_state(data_t, 2, 4, seed=0, scale=0.3, optimizer=optimizer)
        init = state.emb.clone()
        get_backend("cpu").train_epochs(head_t, data_t, state, torch.tensor([1e-2, 1e-1]), torch.tensor([1e-3, 0.0]),
                                        epoch_start=0, n_epochs=2, batch_size=16, optimizer=optimizer, seed=0)
        assert torch.equal(state.emb[[0, 3]], init[[0, 3]])  # no ratings: untouched
        if optimizer == "adam":
            assert not state.adam_m[[0, 3]].any() and state.adam_m[[1, 2]].all()
        assert (state.emb[[1, 2]] != init[[1, 2]]).all()
        ref = new_state(data_t, 2, 4, seed=0, scale=0.3, optimizer=optimizer)
        get_backend("reference").train_epochs(head_t, data_t, ref, torch.tensor([1e-2, 1e-1]), torch.tensor([1e-3, 0.0]),
                                              epoch_start=0, n_epochs=2, batch_size=16, optimizer=optimizer, seed=0)
        assert rel_err(state.emb, ref.emb) <= 1e-5


def test_validation_loss_edge_cases():
    be = get_backend("cpu")
    head_t = head_tensors(random_head("tower2", 9, 3, 2, seed=12), "cpu")
    data = random_ratings(5, 9, counts=[0, 3, 0, 130, 1], seed=13)
    data_t = csr_tensors(data, "cpu")
    emb = torch.randn(5, 4, 3)
    ref = get_backend("reference").validation_loss(head_t, data_t, emb)
    assert rel_err(be.validation_loss(head_t, data_t, emb), ref) <= 1e-6
    emb[[0, 2]] = float("nan")  # users without ratings add nothing
    assert torch.isfinite(be.validation_loss(head_t, data_t, emb)).all()
    no_ratings = CSRTensors(torch.zeros(6, dtype=torch.int64), torch.zeros(0, dtype=torch.int32), torch.zeros(0),
                            torch.zeros(0), torch.arange(5))
    assert torch.equal(be.validation_loss(head_t, no_ratings, emb), torch.zeros(4, dtype=torch.float64))
