"""The contract's pure functions: permutations, initial embeddings, keys and Adam step counts."""
import numpy as np
import pytest

from retrain.contract import adam_step, fmix32, init_scale, initial_embeddings, permutation, user_key


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
