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
* Users sampled by a seeded ``fraction`` (``sample_users``): with ``lo``, ``hi`` the 32-bit halves
  of a user's id word (``id_words``), its rank is ``(combine(combine(combine(SAMPLE_DOMAIN, seed),
  lo), hi), word, id)`` (lexicographic), and the ``k = max(1, round(n * fraction))`` users of least
  rank are chosen: the choice depends on each id alone, not on the order or the index of the users.
* Ratings split per user by a seeded ``fraction`` (``sample_ratings_per_user``): with ``lo``/``hi``
  the halves of the user's and of the item's id words, a rating's hash is
  ``combine(combine(combine(combine(combine(SPLIT_DOMAIN, seed), user lo), user hi), item lo),
  item hi)``; its rank inside its user orders the user's ratings by ``(hash, item word, item id,
  rating, weight)``, and a user's ``round(fraction * n_u)`` (half to even) ratings of least rank are
  chosen.  ``sample_ratings`` chooses each rating of ``hash < fraction * 2**32`` (not per user).
* Adam step count of a user's step ``c`` (0-based) in epoch ``t``: ``t * ceil(n / B) + c + 1``.
* The step itself (loss, optimizer and its constants, batch size, seed, damping) is a
  ``StepSpec``: every backend receives one and takes its constants from it.
* Per-user L2 of probe ``p`` on user ``u`` with ``n`` training ratings in the call:
  ``reg_u = fl32(reg_p + fl32(fl32(damping) / fl32(n)))`` (float32 division, then float32 add;
  ``damping_terms`` is the inner term, 0 for ``n = 0``), so ``damping = 0`` gives ``reg_p`` exactly.
* Validation sums are exact: each user's sum ``sum w (pred - r)^2`` (float64) is truncated to a
  multiple of ``2**-64`` and the users' values are added as integers (``fixed_point_limbs``), so
  the total does not depend on the order of the users, the thread count or how users are split
  across processes.

``CONTRACT_VERSION`` names this contract; model files record it, and a file written under another
version is refused (its embeddings would not be reproducible here).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import torch

from .errors import InputError, check_float, check_fraction, check_int

CONTRACT_VERSION = "1"

MASK32 = 0xFFFFFFFF
GOLDEN = 0x9E3779B9
INIT_DOMAIN = 0x1D2E3F40
PERM_DOMAIN = 0x5A17C0DE
SAMPLE_DOMAIN = 0x5E1EC7ED
SPLIT_DOMAIN = 0x5B1175ED
PERM_ROUNDS = 4
FLOAT32_MAX = float(np.finfo(np.float32).max)
# Far above any user's rating count (a larger batch is the same full batch); near 2^63 a kernel's
# step count (n + batch_size - 1) / batch_size overflows int64.
MAX_BATCH_SIZE = 2**62
MAX_SEED = 2**32 - 1  # the contract hashes the seed mod 2**32: a larger one would alias a smaller one
MAX_STEPS = 2**62  # a user's Adam step count, int64 in every backend (the cpu kernel refuses more)


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


def id_words(user_ids, what: str = "user id") -> np.ndarray:
    """The 64-bit word (uint64) each original id is keyed by: the id itself for integers (int64 or
    uint64: negatives wrap, as two's complement), the 8-byte BLAKE2b digest (``digest_size=8``, not
    a prefix of the 64-byte one) of the UTF-8 text, read little-endian, for strings.  Stable across
    runs, processes and machines.  ``what`` names the ids in the error for text without UTF-8
    bytes (``"item id"`` for item ids)."""
    ids = np.asarray(user_ids)
    if ids.dtype.kind in "US" or (ids.dtype == object and all(isinstance(x, str) for x in ids.ravel())):
        return np.frombuffer(b"".join(_text_digest(x, what) for x in ids.ravel()),
                             dtype="<u8").reshape(ids.shape).copy()
    if ids.dtype == np.uint64:
        return ids.copy()
    return ids.astype(np.int64).view(np.uint64)


def word_halves(words) -> tuple[np.ndarray, np.ndarray]:
    """``(lo, hi)``: the low and high 32-bit halves (uint32) of 64-bit id words (``id_words``)."""
    words = np.asarray(words, dtype=np.uint64)
    return (words & np.uint64(MASK32)).astype(np.uint32), (words >> np.uint64(32)).astype(np.uint32)


def _text_digest(text, what: str) -> bytes:
    """The 8-byte BLAKE2b digest (``digest_size=8``) of ``text``'s UTF-8; InputError for text that
    has none (a lone surrogate, as ``surrogateescape`` makes of bytes that are not UTF-8): a
    UnicodeEncodeError in the middle of a training run before."""
    try:
        data = str(text).encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(f"{what} {str(text)!r} is not valid text (it holds a lone surrogate): it has no UTF-8 "
                         "bytes to key it by") from None
    return hashlib.blake2b(data, digest_size=8).digest()


def user_key(user_ids) -> np.ndarray:
    """Stable 32-bit key of each original user id: ``lo ^ fmix32(hi)`` of the two 32-bit halves of
    its 64-bit word (``id_words``: integers as they are, strings hashed).

    Keys depend on the id alone, so a user gets the same initial embedding and schedule in a full
    retrain and when folded in at serving time.  Returned as int64 in ``[0, 2**32)``.
    """
    lo, hi = word_halves(id_words(user_ids))
    return (lo ^ fmix32(hi)).astype(np.int64)


def sample_users(user_ids, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices (int64 ``[k]``) into ``user_ids [n]`` (distinct ids, as ``Ratings`` holds) of
    a seeded ``fraction`` of the users: the ``k = max(1, round(n * fraction))`` users of least rank
    (all of them for ``fraction = 1``, none for ``n = 0``).

    A user's rank is ``(combine(combine(combine(SAMPLE_DOMAIN, seed), lo), hi), word, id)``, compared
    in that order, where ``word`` is its 64-bit id word (``id_words``) and ``lo``, ``hi`` its 32-bit
    halves.  The hash alone would tie about ``n**2 / 2**33`` pairs (a hundred at a million users);
    the word breaks those ties, and the id itself the ties of two string ids whose 8-byte digests
    agree, so the order is total.  Whether a user is chosen therefore depends on its id, ``seed``
    and ``fraction`` only, and on the other users only through ``k`` and their ranks, never on the
    order in which the users are given or their indices.  So adding one user (a daily job's new
    id, wherever it sorts) keeps the choice but for the new user coming in and the user at the
    boundary going out, or, where ``k`` grows by the rounding, one user coming in.

    ``fraction`` in ``(0, 1]``, ``seed`` in ``[0, MAX_SEED]``; InputError otherwise.
    """
    fraction = check_fraction("fraction", fraction, zero=False, one=True)
    seed = check_int("seed", seed, 0, MAX_SEED)
    ids = np.asarray(user_ids)
    if ids.ndim != 1:
        raise InputError(f"user_ids must be one-dimensional, got shape {ids.shape}")
    n = len(ids)
    k = min(n, max(1, int(round(n * fraction))))
    if k == n:
        return np.arange(n, dtype=np.int64)
    words = id_words(ids)
    lo, hi = word_halves(words)
    rank = combine(combine(combine(SAMPLE_DOMAIN, np.uint32(seed)), lo), hi)
    # The k least of a total order without sorting all n: every rank below the k-th least is in,
    # and the users tied with it (usually one) are ordered by word, then id, for the rest.
    cut = np.partition(rank, k - 1)[k - 1]
    below = np.flatnonzero(rank < cut)
    tied = np.flatnonzero(rank == cut)
    tied = tied[np.lexsort((ids[tied], words[tied]))]
    return np.sort(np.concatenate([below, tied[:k - len(below)]])).astype(np.int64)


def rating_hashes(users, items, user_ids, item_ids, seed: int) -> np.ndarray:
    """Seeded hash (uint32 ``[nnz]``) of each rating, from its user's and its item's id words:
    ``combine(combine(combine(combine(combine(SPLIT_DOMAIN, seed), ulo), uhi), ilo), ihi)`` with
    ``ulo``, ``uhi`` (``ilo``, ``ihi``) the 32-bit halves of the user's (item's) id word.

    ``users``, ``items``: int64 ``[nnz]`` indices into ``user_ids [n_users]`` and ``item_ids
    [n_items]``, the rows in any order.  The hash depends on ``seed`` and the two ids only.
    """
    return _rating_hashes(users, items, id_words(user_ids), id_words(item_ids, "item id"), seed)


def _rating_hashes(users, items, user_words, item_words, seed: int) -> np.ndarray:
    """``rating_hashes`` from the users' and items' id words (``id_words``)."""
    seed = check_int("seed", seed, 0, MAX_SEED)
    (user_lo, user_hi), (item_lo, item_hi) = word_halves(user_words), word_halves(item_words)
    per_user = combine(combine(combine(SPLIT_DOMAIN, np.uint32(seed)), user_lo), user_hi)  # [n_users]: once per user
    return combine(combine(per_user[users], item_lo[items]), item_hi[items])


def rating_ranks(users, items, ratings, weights, user_ids, item_ids, seed: int) -> np.ndarray:
    """Rank (int64 ``[nnz]``, ``0 .. n_u - 1``) of each rating inside its user, in the order of
    ``(rating_hashes, item word, item id, rating, weight)`` (compared in that order).

    ``users``, ``items`` as for ``rating_hashes``; ``ratings``, ``weights``: ``[nnz]``.  The 32-bit
    hash ties two of a user's items rarely (about ``n_u**2 / 2**33`` pairs, and never two ids of
    one high half: it is a bijection of the low half); the item word breaks those
    ties, the item id those of two string ids whose 8-byte digests agree, and the rating and weight
    those of one item rated twice by the user (``Ratings`` keeps such rows): the order is total up
    to rows equal in all of (user, item, rating, weight), which are interchangeable.  So a rating's
    rank depends on the ids, values and seed of its user's ratings only: not on the row order, the
    user or item indices, nor on any other user.
    """
    users, items = np.asarray(users, dtype=np.int64), np.asarray(items, dtype=np.int64)
    ratings, weights = np.asarray(ratings), np.asarray(weights)
    if len(user_ids) > 2**32:  # the user index takes the high 32 bits of the sort word below
        raise InputError(f"rating_ranks takes at most 2**32 users, got {len(user_ids)}")
    # Sort by (user, hash) as one 64-bit word (a tenth of the time of lexsort over all the keys),
    # then order the few rows that tie on it (two of a user's ratings of one hash) by the rest.
    item_words = id_words(item_ids, "item id")  # hashed once: string ids cost a BLAKE2b each
    word = (users.astype(np.uint64) << np.uint64(32)) | _rating_hashes(users, items, id_words(user_ids), item_words,
                                                                        seed)
    order = np.argsort(word, kind="stable")  # stable: timsort, fast on rows already by user (CSR)
    same = word[order[1:]] == word[order[:-1]]
    tied = np.flatnonzero(np.concatenate([same, [False]]) | np.concatenate([[False], same]))
    if len(tied):
        rows = order[tied]
        id_order = np.unique(np.asarray(item_ids), return_inverse=True)[1].reshape(-1)  # each item's place in id order
        order[tied] = rows[np.lexsort((weights[rows], ratings[rows], id_order[items[rows]],
                                       item_words[items[rows]], word[rows]))]
    counts = np.bincount(users, minlength=len(user_ids))
    first = np.cumsum(counts) - counts  # the position of each user's first rating in ``order``
    ranks = np.empty(len(users), dtype=np.int64)
    ranks[order] = np.arange(len(users), dtype=np.int64) - first[users[order]]
    return ranks


def sample_ratings_per_user(users, items, ratings, weights, user_ids, item_ids, fraction: float,
                            seed: int) -> np.ndarray:
    """Which ratings (bool ``[nnz]``) a seeded ``fraction`` of each user's ratings is: the user's
    ``round(fraction * n_u)`` (half to even) ratings of least ``rating_ranks``.

    Arguments as for ``rating_ranks``; ``fraction`` in ``[0, 1]``, ``seed`` in ``[0, MAX_SEED]``.
    Whether a rating is chosen depends on its user's ratings (ids, values) and on ``fraction`` and
    ``seed`` only: the same ratings in another row order, under other user or item indices, or
    beside other users (one more user, wherever its id sorts) give each user the same choice.
    """
    fraction = check_fraction("fraction", fraction, one=True)
    users = np.asarray(users, dtype=np.int64)
    ranks = rating_ranks(users, items, ratings, weights, user_ids, item_ids, seed)
    chosen = np.round(np.bincount(users, minlength=len(user_ids)) * fraction).astype(np.int64)
    return ranks < chosen[users]


def sample_ratings(users, items, user_ids, item_ids, fraction: float, seed: int) -> np.ndarray:
    """Which ratings (bool ``[nnz]``) a seeded ``fraction`` of all the ratings is, not per user:
    each rating whose ``rating_hashes`` value is below ``fraction * 2**32`` (about ``fraction`` of
    them, each independently).  Arguments as for ``rating_hashes``; ``fraction`` in ``[0, 1]``.
    Whether a rating is chosen depends on its user's and item's ids and ``seed`` only.
    """
    fraction = check_fraction("fraction", fraction, one=True)
    return rating_hashes(users, items, user_ids, item_ids, seed) < fraction * 2.0**32


def init_scale(scheme: str, d: int, n_users: int) -> float:
    """Half-width ``s`` of the uniform init: 0 for ``"zeros"``, Glorot ``sqrt(6 / (d + n_users))``."""
    if scheme == "zeros":
        return 0.0
    if scheme == "glorot":
        return float(np.float32(np.sqrt(6.0 / (d + n_users))))
    raise InputError(f"init scheme must be 'zeros' or 'glorot', got {scheme!r}")


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


# --------------------------------------------------------------------------- the step
@dataclass(frozen=True)
class Adam:
    """Adam with bias correction by the user's own step count (docs/semantics.md)."""

    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    name = "adam"
    n_moments = 2  # first and second moment, each the shape of the embeddings

    def __post_init__(self):
        check_float("beta1", self.beta1, 0.0, maximum=1.0)
        check_float("beta2", self.beta2, 0.0, maximum=1.0)
        check_float("eps", self.eps, 0.0, strict=True)
        if self.beta1 == 1.0 or self.beta2 == 1.0:
            raise InputError(f"Adam's beta1 and beta2 must be < 1, got {self.beta1} and {self.beta2}")


@dataclass(frozen=True)
class SGD:
    """Plain stochastic gradient descent: ``e -= lr * g``."""

    name = "sgd"
    n_moments = 0


LOSSES = ("mse",)
OPTIMIZERS = {"adam": Adam, "sgd": SGD}


@dataclass(frozen=True)
class StepSpec:
    """What one training step is, the same for every backend.

    ``loss``: ``"mse"``: ``L_C = (1/|C|) sum_C w (pred - r)^2 + reg_u ||e||^2``, with
    ``reg_u = fl32(reg + fl32(damping / n))`` for a user with ``n`` training ratings in the call
    (all of them, not the minibatch: ``damping_terms``).
    ``optimizer``: ``Adam(beta1, beta2, eps)`` or ``SGD()`` (a name is accepted too).
    ``batch_size``: ratings per step (a user's last step may be shorter), at most ``MAX_BATCH_SIZE`` (2**62).
    ``seed``: keys the permutations and the initial embeddings, in ``[0, MAX_SEED = 2**32 - 1]``.
    ``damping``: count-independent L2 on the user embedding, in ratings (finite, >= 0): a user
    with ``n`` ratings is shrunk as if by ``damping / n`` more reg; 0 leaves every result as
    without it, bit for bit.

    Adding a loss or an optimizer means: this spec, the reference backend, each fast backend and
    the parity suite; nothing else reads these constants.
    """

    loss: str = "mse"
    optimizer: Adam | SGD = field(default_factory=Adam)
    batch_size: int = 16
    seed: int = 0
    damping: float = 0.0

    def __post_init__(self):
        if isinstance(self.optimizer, str):
            if self.optimizer not in OPTIMIZERS:
                raise InputError(f"optimizer must be one of {tuple(OPTIMIZERS)}, got {self.optimizer!r}")
            object.__setattr__(self, "optimizer", OPTIMIZERS[self.optimizer]())
        if not isinstance(self.optimizer, (Adam, SGD)):
            raise InputError(f"optimizer must be Adam() or SGD(), got {self.optimizer!r}")
        if self.loss not in LOSSES:
            raise InputError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        # HyperParams' ranges: the C++ backend takes int64 (2^63 was a TypeError inside pybind11), and
        # a seed of 2^32 trained as seed 0
        check_int("batch_size", self.batch_size, 1, MAX_BATCH_SIZE)
        check_int("seed", self.seed, 0, MAX_SEED)
        object.__setattr__(self, "damping", check_float("damping", self.damping, 0.0, maximum=FLOAT32_MAX))


def damping_terms(damping: float, counts) -> np.ndarray:
    """float32 ``[U]``: ``fl32(fl32(damping) / fl32(n))`` for users with ``n = counts[u]`` training
    ratings (0 where ``n = 0``: those take no step).  Every backend adds it to each probe's reg in
    float32 (``reg_u = reg + term``), so the backends agree and ``damping = 0`` changes nothing."""
    counts = np.asarray(counts, dtype=np.int64)
    n = np.maximum(counts, 1).astype(np.float32)
    terms = np.float32(damping) / n
    return np.where(counts > 0, terms, np.float32(0.0)).astype(np.float32)


# --------------------------------------------------------------------------- exact sums
FIXED_POINT_LIMBS = 6  # 32-bit limbs: value = sum_k limb_k * 2**(32 k - 64), |value| < 2**127
_FRACTION_BITS = 64
_LIMIT = 2.0**127


def fixed_point_limbs(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact fixed-point form of float64 ``values [...]``: ``(limbs int64 [..., 6], ok bool [...])``.

    Each value is truncated to a multiple of ``2**-64`` (toward minus infinity) and cut into six
    32-bit limbs, every step exact in float64.  Sums of limbs over any set of values, in any order,
    are exact integers (up to 2**31 values per sum), so ``fixed_point_value`` of them does not depend
    on the order.  ``ok`` is False where a value is NaN, infinite or ``|value| >= 2**127``; its limbs
    are 0.
    """
    values = values.to(torch.float64)
    ok = torch.isfinite(values) & (values.abs() < _LIMIT)
    x = torch.floor(torch.where(ok, values, 0.0) * 2.0**_FRACTION_BITS)
    limbs = []
    for _ in range(FIXED_POINT_LIMBS - 1):
        high = torch.floor(x * 2.0**-32)
        limbs.append((x - high * 2.0**32).to(torch.int64))  # in [0, 2**32)
        x = high
    limbs.append(x.to(torch.int64))  # the signed top limb
    return torch.stack(limbs, dim=-1), ok


def fixed_point_value(limb_sums) -> np.ndarray:
    """float64 ``[...]`` from summed limbs ``[..., 6]``: the exact sum, rounded once."""
    if not isinstance(limb_sums, np.ndarray):
        limb_sums = torch.as_tensor(limb_sums).cpu()
    sums = np.asarray(limb_sums, dtype=np.int64)
    # Python ints, Horner over the limbs (top first), one correctly rounded division: called per
    # checkpoint, five times faster than a sum of shifted limbs per row.
    out = [((((((((((l5 << 32) + l4) << 32) + l3) << 32) + l2) << 32) + l1) << 32) + l0) / 2**_FRACTION_BITS
           for l0, l1, l2, l3, l4, l5 in sums.reshape(-1, FIXED_POINT_LIMBS).tolist()]
    return np.array(out, dtype=np.float64).reshape(sums.shape[:-1])


def exact_sum(values: torch.Tensor, dim: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(sum, ok)`` of float64 ``values`` along ``dim``, exactly as ``fixed_point_limbs`` defines
    it; ``ok`` is False where some term was not finite."""
    limbs, ok = fixed_point_limbs(values)
    return fixed_point_value(limbs.sum(dim=dim)), ok.all(dim=dim).cpu().numpy()
