"""The training contract's pure functions: hashing, initial embeddings, per-user permutations.

Everything here is integer arithmetic on unsigned 32-bit words (wrap-around multiply, xor,
shifts), so that the C++ backend (``csrc/``) and the Triton kernels (``kernels/``) compute
bit-identical values.  ``docs/semantics.md`` states the same functions in words.

* ``fmix32(x)``: MurmurHash3's 32-bit finalizer.
* ``combine(h, v) = fmix32(h ^ (v + GOLDEN))`` (all mod 2**32): folds one more word into a hash.
* Initial embedding of a user with key ``k``, dimension ``j``:
  ``h = combine(combine(combine(INIT_DOMAIN, seed), k), j)``, ``u = (h >> 8) * 2**-24`` (exact in
  float32) and ``e = (2u - 1) * s`` in float32: uniform on ``[-s, s)``; ``s = 0`` gives zeros.
* Permutation of a user's ``n`` training ratings in epoch ``t``: with
  ``base = combine(combine(combine(PERM_DOMAIN, seed), t), k)``, ``bits = ceil(log2(n))``,
  ``mask = 2**bits - 1``, ``shift = (bits + 1) // 2`` and for round ``r`` in 0..3
  ``M_r = combine(base, 2r) | 1``, ``K_r = combine(base, 2r + 1)``, the bijection of
  ``[0, 2**bits)``  ``x -> (x * M_r + K_r) & mask; x ^= x >> shift`` (four rounds) is applied to
  position ``i`` repeatedly until the value is below ``n`` (cycle walking).  Position ``i`` of the
  epoch visits the user's rating ``perm(i)`` (canonical order index).
* Adam step count of a user's step ``c`` (0-based) in epoch ``t``: ``t * ceil(n / B) + c + 1``.
"""
from __future__ import annotations

import numpy as np

MASK32 = 0xFFFFFFFF
GOLDEN = 0x9E3779B9
INIT_DOMAIN = 0x1D2E3F40
PERM_DOMAIN = 0x5A17C0DE
PERM_ROUNDS = 4


def fmix32(x):
    """MurmurHash3 finalizer on uint32 values (numpy array or scalar); returns np.uint32."""
    x = np.asarray(x, dtype=np.uint32)
    with np.errstate(over="ignore"):
        x = x ^ (x >> np.uint32(16))
        x = x * np.uint32(0x85EBCA6B)
        x = x ^ (x >> np.uint32(13))
        x = x * np.uint32(0xC2B2AE35)
        x = x ^ (x >> np.uint32(16))
    return x


def combine(h, v):
    """Fold word ``v`` into hash ``h``: ``fmix32(h ^ (v + GOLDEN))`` mod 2**32 (broadcasts)."""
    h = np.asarray(h, dtype=np.uint32)
    v = np.asarray(v, dtype=np.uint32)
    with np.errstate(over="ignore"):
        return fmix32(h ^ (v + np.uint32(GOLDEN)))


def user_key(user_ids) -> np.ndarray:
    """Stable 32-bit key of each original user id (int64): ``lo ^ fmix32(hi)`` of its two words.

    Keys depend on the id alone, so a user gets the same initial embedding and schedule in a full
    retrain and when folded in at serving time.  Returned as int64 in ``[0, 2**32)``.
    """
    ids = np.asarray(user_ids, dtype=np.int64).view(np.uint64)
    lo = (ids & np.uint64(MASK32)).astype(np.uint32)
    hi = (ids >> np.uint64(32)).astype(np.uint32)
    return (lo ^ fmix32(hi)).astype(np.int64)


def init_scale(scheme: str, d: int, n_users: int) -> float:
    """Half-width ``s`` of the uniform init: 0 for ``"zeros"``, Glorot ``sqrt(6 / (d + n_users))``."""
    if scheme == "zeros":
        return 0.0
    if scheme == "glorot":
        return float(np.float32(np.sqrt(6.0 / (d + n_users))))
    raise ValueError(f"init scheme must be 'zeros' or 'glorot', got {scheme!r}")


def initial_embeddings(keys, d: int, seed: int, scale: float) -> np.ndarray:
    """Initial embeddings ``[len(keys), d]`` float32, uniform on ``[-scale, scale)``.

    A pure function of ``(seed, key, j, scale)``: every probe, backend and serving call gets the
    same values.
    """
    keys = np.asarray(keys, dtype=np.int64).astype(np.uint32)
    h = combine(combine(INIT_DOMAIN, np.uint32(seed & MASK32)), keys)[:, None]
    h = combine(h, np.arange(d, dtype=np.uint32)[None, :])
    u = (h >> np.uint32(8)).astype(np.float32) * np.float32(2.0**-24)
    return (np.float32(2.0) * u - np.float32(1.0)) * np.float32(scale)


def permutation(seed: int, epoch: int, key: int, n: int) -> np.ndarray:
    """Visiting order (int64 ``[n]``) of a user's ``n`` training ratings in epoch ``epoch``."""
    if n <= 1:
        return np.zeros(n, dtype=np.int64)
    bits = int(n - 1).bit_length()
    mask = np.uint32((1 << bits) - 1)
    shift = np.uint32((bits + 1) // 2)
    base = combine(combine(combine(PERM_DOMAIN, seed & MASK32), epoch & MASK32), key & MASK32)
    rounds = [(combine(base, 2 * r) | np.uint32(1), combine(base, 2 * r + 1)) for r in range(PERM_ROUNDS)]

    def bijection(x):
        with np.errstate(over="ignore"):
            for mult, add in rounds:
                x = (x * mult + add) & mask
                x = x ^ (x >> shift)
        return x

    x = bijection(np.arange(n, dtype=np.uint32))
    outside = x >= n
    while outside.any():
        x[outside] = bijection(x[outside])
        outside = x >= n
    return x.astype(np.int64)


def adam_step(epoch: int, n: int, batch_size: int, chunk: int) -> int:
    """1-based Adam step count of a user's ``chunk``-th step in ``epoch`` (bias correction)."""
    return epoch * (-(-n // batch_size)) + chunk + 1
