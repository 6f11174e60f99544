"""The contract's pure functions: permutations, initial embeddings, keys, Adam step counts, the
step spec and exact sums.

The pinned values below were written down once (from contract version 1) and are not recomputed:
a change to any implementation of the contract (Python, C++, Triton) that alters a single value
fails here, and would make saved models irreproducible (bump ``CONTRACT_VERSION`` then).
"""
import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from retrain.backends import available_backends
from retrain.contract import (SGD, Adam, StepSpec, adam_step, damping_terms, exact_sum, fixed_point_limbs,
                              fixed_point_value, fmix32, init_scale, initial_embeddings, permutation, user_key)
from retrain.data import Ratings
from retrain.errors import InputError

PINNED_STRING_KEYS = [50747558, 3736593416, 3650754705]  # "alice", "bob", "Zoë"
PINNED_KEYS = [(0, 0), (1, 1), (12345, 12345), (2**32 + 7, 1364076720), (-5, 2114883778), (2**62 + 3, 1869769535)]
PINNED_PERMUTATIONS = [  # (seed, epoch, key, n) -> visiting order
    ((0, 0, 1, 10), [2, 3, 7, 9, 0, 1, 6, 5, 4, 8]),
    ((7, 3, 12345, 17), [2, 13, 11, 9, 12, 16, 14, 15, 6, 7, 10, 8, 3, 4, 1, 5, 0]),
    ((2**32 - 1, 5, 2**32 - 1, 33), [31, 29, 20, 25, 1, 21, 26, 17, 30, 5, 32, 13, 28, 7, 10, 3, 15, 0, 22, 27, 4,
                                     23, 19, 6, 24, 11, 12, 8, 16, 14, 2, 18, 9]),
]
# initial_embeddings(keys=[0, 12345, 2**32 - 1], d=3, seed=9, scale=0.25), exact float32 values.
PINNED_INIT = [float.fromhex(x) for x in (
    "-0x1.0b539p-4", "0x1.d1507p-3", "-0x1.161dap-6",
    "-0x1.651a4cp-3", "0x1.0332p-5", "-0x1.81002p-4",
    "-0x1.4a86cp-3", "0x1.38eap-3", "-0x1.66e578p-3")]


def _permutation_impls():
    impls = [pytest.param(permutation, id="python")]
    if "cpu" in available_backends():
        from retrain import _C
        impls.append(pytest.param(_C.permutation, id="cpp"))
    if "triton" in available_backends():
        def triton_permutation(seed, epoch, key, n):
            from retrain.backends.triton import triton_device
            from retrain.kernels.train import permutations

            device = triton_device()
            indptr = torch.tensor([0, n], dtype=torch.int64, device=device)
            keys = torch.tensor([key], dtype=torch.int64, device=device)
            return permutations(indptr, keys, seed=seed, epoch=epoch).cpu().numpy()
        impls.append(pytest.param(triton_permutation, id="triton"))
    return impls


def _init_impls():
    impls = [pytest.param(initial_embeddings, id="python")]  # the Triton backend uploads these
    if "cpu" in available_backends():
        from retrain import _C
        impls.append(pytest.param(lambda keys, d, seed, scale: _C.initial_embeddings(
            np.asarray(keys, np.int64), d, seed, scale), id="cpp"))
    return impls


EDGE_N = [0, 1, 2, 3, 4, 5, 7, 8, 9, 31, 32, 33, 100, 255, 256, 257, 1000, 1023, 1024, 1025, 4096, 4097]
EDGE_WORDS = [0, 1, 7, 12345, 2**31 - 1, 2**31, 2**32 - 2, 2**32 - 1]  # seeds, epochs and keys


@pytest.mark.parametrize("impl", _permutation_impls()[1:] or [pytest.param(None, marks=pytest.mark.skip("python only"))])
def test_other_implementations_agree_with_python(impl):
    """Edge sizes (around powers of two: the cycle walking) and edge words, then random inputs."""
    interpreted = "triton" in str(impl) and not torch.cuda.is_available()
    sizes = EDGE_N[:12] if interpreted else EDGE_N
    words = EDGE_WORDS[::3] if interpreted else EDGE_WORDS
    for n in sizes:
        for word in words:
            assert np.array_equal(impl(word, 3, word, n), permutation(word, 3, word, n)), (word, n)
            assert np.array_equal(impl(5, word, 2**32 - 1 - word, n), permutation(5, word, 2**32 - 1 - word, n))
    rng = np.random.default_rng(1)
    for _ in range(10 if interpreted else 300):
        seed, epoch, key = (int(x) for x in rng.integers(0, 2**32, 3))
        n = int(rng.integers(0, 300 if interpreted else 3000))
        assert np.array_equal(impl(seed, epoch, key, n), permutation(seed, epoch, key, n))


def test_user_keys_are_pinned():
    ids, keys = zip(*PINNED_KEYS)
    assert user_key(np.array(ids)).tolist() == list(keys)


@pytest.mark.parametrize("impl", _permutation_impls())
@pytest.mark.parametrize("args,expected", PINNED_PERMUTATIONS)
def test_permutations_are_pinned(impl, args, expected):
    assert np.asarray(impl(*args)).tolist() == expected


@pytest.mark.parametrize("impl", _init_impls())
def test_initial_embeddings_are_pinned(impl):
    e = impl([0, 12345, 2**32 - 1], 3, 9, 0.25)
    assert e.dtype == np.float32 and e.ravel().tolist() == PINNED_INIT


@pytest.mark.parametrize("n", [0, 1, 2, 3, 7, 8, 9, 64, 65, 1000, 4097])
def test_permutation_is_a_permutation(n):
    for seed, epoch, key in [(0, 0, 0), (1, 5, 2**32 - 1), (123, 99, 77)]:
        p = permutation(seed, epoch, key, n)
        assert p.dtype == np.int64 and np.array_equal(np.sort(p), np.arange(n))


def test_permutation_depends_on_each_input():
    base = permutation(0, 0, 5, 50)
    for changed in (permutation(1, 0, 5, 50), permutation(0, 1, 5, 50), permutation(0, 0, 6, 50)):
        assert not np.array_equal(base, changed)
    assert np.array_equal(base, permutation(0, 0, 5, 50))


def test_permutation_looks_shuffled():
    # Position of each element, averaged over many epochs, should be near the middle for all.
    n = 40
    mean_pos = np.mean([np.argsort(permutation(3, t, 11, n)) for t in range(400)], axis=0)
    assert np.abs(mean_pos - (n - 1) / 2).max() < 4.0


def test_fmix32_known_values():
    # MurmurHash3 fmix32 reference values.
    assert int(fmix32(0)) == 0
    assert int(fmix32(1)) == 0x514E28B7


def test_initial_embeddings_range_and_purity():
    keys = user_key(np.arange(500) * 13 + 1)
    e = initial_embeddings(keys, 7, seed=4, scale=0.25)
    assert e.dtype == np.float32 and e.shape == (500, 7)
    assert e.min() >= -0.25 and e.max() < 0.25 and abs(e.mean()) < 0.02
    assert np.array_equal(e[10:20], initial_embeddings(keys[10:20], 7, seed=4, scale=0.25))
    assert not np.array_equal(e, initial_embeddings(keys, 7, seed=5, scale=0.25))
    assert not np.any(initial_embeddings(keys, 3, seed=4, scale=0.0))


def test_init_scale():
    assert init_scale("zeros", 32, 100) == 0.0
    assert init_scale("glorot", 32, 100) == pytest.approx(np.sqrt(6 / 132), rel=1e-6)
    with pytest.raises(ValueError, match="init scheme"):
        init_scale("normal", 3, 3)


def test_user_key_is_stable_and_32_bit():
    ids = np.array([0, 1, 2**31, 2**40 + 3, -5])
    k = user_key(ids)
    assert np.all((k >= 0) & (k < 2**32))
    assert k[0] == 0 and k[1] == 1  # small ids are their own keys
    assert np.array_equal(k, user_key(ids))


def test_adam_step_counts_from_one():
    assert adam_step(0, 10, 4, 0) == 1
    assert adam_step(0, 10, 4, 2) == 3
    assert adam_step(1, 10, 4, 0) == 4  # ceil(10/4) = 3 steps per epoch


def test_step_spec_names_and_checks_its_constants():
    assert StepSpec(optimizer="sgd").optimizer == SGD() and StepSpec().optimizer == Adam(0.9, 0.999, 1e-8)
    for kwargs, match in ((dict(optimizer="rmsprop"), "optimizer"), (dict(loss="huber"), "loss"),
                          (dict(batch_size=0), "batch_size"), (dict(batch_size=2.0), "batch_size"),
                          (dict(seed=-1), "seed"), (dict(damping=-0.5), "damping"),
                          (dict(damping=float("nan")), "damping"), (dict(damping=1e39), "damping"),
                          # HyperParams' ranges: 2^63 was a TypeError inside the cpu backend's pybind11
                          # call, and the seed 2^32 trained as seed 0
                          (dict(batch_size=2**63), r"batch_size must be an integer in \[1, 4611686018427387904\]"),
                          (dict(seed=2**32), r"seed must be an integer in \[0, 4294967295\]")):
        with pytest.raises(InputError, match=match):
            StepSpec(**kwargs)
    with pytest.raises(ValueError, match="beta1"):
        Adam(beta1=1.0)


def test_exact_sums_do_not_depend_on_order_and_match_fsum():
    rng = np.random.default_rng(0)
    values = rng.random(20_000) * 10.0 ** rng.integers(-6, 9, 20_000)
    total, ok = exact_sum(torch.from_numpy(values))
    assert ok and total == math.fsum(np.floor(values * 2.0**64) / 2.0**64)
    shuffled, _ = exact_sum(torch.from_numpy(rng.permutation(values)))
    assert shuffled == total
    halves = fixed_point_limbs(torch.from_numpy(values[:7000]))[0].sum(0) + \
        fixed_point_limbs(torch.from_numpy(values[7000:]))[0].sum(0)
    assert fixed_point_value(halves) == total  # split across processes: the same bits


def test_fixed_point_value_rounds_any_limb_sums_once():
    # Summed limbs are any int64s (carries never propagated, negative low limbs from negative
    # values): the value is their exact sum rounded once to float64, here against Fraction's
    # correctly rounded conversion, for every shape a caller passes (numpy, torch, [..., 6]).
    rng = np.random.default_rng(3)
    limbs = rng.integers(-2**63, 2**63 - 1, (40, 6), dtype=np.int64, endpoint=True)
    limbs[:10, 3:] = 0  # small values: the low limbs carry the rounding
    limbs[10:20, 5] = rng.integers(-3, 3, 10)
    limbs[20] = [2**63 - 1, 2**63 - 1, 0, 0, 0, 0]  # a carry into limb 2 only
    limbs[21] = [-(2**63), 0, 0, 0, 0, 0]
    want = [float(Fraction(sum(int(limb) << (32 * k) for k, limb in enumerate(row)), 2**64)) for row in limbs]
    assert fixed_point_value(limbs).tolist() == want
    assert fixed_point_value(torch.from_numpy(limbs).reshape(4, 10, 6)).reshape(-1).tolist() == want
    assert fixed_point_value(limbs[0]).shape == () and float(fixed_point_value(limbs[0])) == want[0]


def test_exact_sums_flag_what_they_cannot_hold():
    limbs, ok = fixed_point_limbs(torch.tensor([1.5, -2.25, float("nan"), float("inf"), 2.0**130]))
    assert ok.tolist() == [True, True, False, False, False]
    assert fixed_point_value(limbs[:2]).tolist() == [1.5, -2.25] and not limbs[2:].any()


def test_keys_of_wide_integer_and_string_ids():
    # uint64 ids above 2**63 are their own 64-bit words (as int64 -1 is 2**64 - 1), and string ids
    # are keyed by a fixed hash of their UTF-8 bytes: the values are pinned.
    wide = user_key(np.array([2**64 - 1, 2**63 + 5], dtype=np.uint64))
    assert wide.tolist() == user_key(np.array([-1, -(2**63) + 5])).tolist()
    assert user_key(["alice", "bob", "Zoë"]).tolist() == PINNED_STRING_KEYS
    assert user_key(np.array(["alice", "bob", "Zoë"], dtype=object)).tolist() == PINNED_STRING_KEYS


def test_a_string_id_without_utf8_is_an_input_error():
    # A lone surrogate (what surrogateescape makes of bytes that are not UTF-8) has no UTF-8 to hash:
    # a UnicodeEncodeError in the middle of a training run.
    with pytest.raises(InputError, match=r"user id 'a\\udc80' is not valid text"):
        user_key(["b", "a\udc80"])
    # Item ids are hashed too (the per-user rating splits): the error names them.
    ratings = Ratings.from_ids(["u", "u"], ["x", "y\udc80"], [1.0, 2.0])
    with pytest.raises(InputError, match=r"item id 'y\\udc80' is not valid text"):
        ratings.split_per_user(0.5)


def test_damping_terms_are_float32_divisions_and_zero_damping_changes_no_reg():
    counts = np.array([0, 1, 3, 7, 10, 2**25 + 1])
    terms = damping_terms(0.7, counts)
    assert terms.dtype == np.float32 and terms[0] == 0.0  # no ratings: no step, no term
    # fl32(fl32(0.7) / fl32(n)); for n = 9, 0.7 / 9 in float64 then rounded is another float.
    want = [np.float32(0.7) / np.float32(n) for n in counts[1:]]
    assert terms[1:].tolist() == [float(x) for x in want]
    assert damping_terms(0.7, [9])[0] == np.float32(0.7) / np.float32(9) != np.float32(0.7 / 9)
    regs = np.float32([0.0, 1e-5, 0.3, 1e-30])
    zero = damping_terms(0.0, counts)
    assert not np.signbit(zero).any() and all(np.array_equal(regs + t, regs) for t in zero)  # reg + 0 is reg
