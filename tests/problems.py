"""Random problems shared by the test files: heads of every kind and ratings with awkward users."""
from __future__ import annotations

import numpy as np
import torch

from retrain.backends import available_backends
from retrain.data import Ratings
from retrain.heads import Head, Layer
from retrain.hyperparams import HyperParams


def random_head(kind: str, n_items: int, d: int = 8, h: int | None = None, seed: int = 0) -> Head:
    """``kind``: ``biases``, ``mf`` (d = h), ``tower1`` / ``tower2`` (tanh / relu layers, d -> h)."""
    g = torch.Generator().manual_seed(seed)
    b = torch.randn(n_items, generator=g) * 0.3
    if kind == "biases":
        return Head.user_item_biases(b, 3.5)
    if kind == "mf":
        return Head.matrix_factorization(torch.randn(n_items, d, generator=g) / d**0.5, b, 3.5)
    h = h or d
    if kind == "tower1":
        tower = [Layer(torch.randn(h, d, generator=g) / d**0.5, torch.randn(h, generator=g) * 0.1, "tanh")]
    elif kind == "tower2":
        tower = [Layer(torch.randn(h + 3, d, generator=g) / d**0.5, torch.randn(h + 3, generator=g) * 0.1, "relu"),
                 Layer(torch.randn(h, h + 3, generator=g) / (h + 3)**0.5, torch.randn(h, generator=g) * 0.1, "identity")]
    else:
        raise ValueError(kind)
    return Head(torch.randn(n_items, h, generator=g) / h**0.5, b, 3.5, tower, init="glorot", name=f"mlp_{d}x{h}")


def random_ratings(n_users: int, n_items: int, counts=None, seed: int = 0) -> Ratings:
    """Ratings with the given per-user counts (default: a mix with 0, 1 and many ratings).

    Users have original ids ``1000 + 7 * index`` (so keys differ from indices).
    """
    rng = np.random.default_rng(seed)
    if counts is None:
        counts = rng.integers(2, 12, n_users)
        counts[0], counts[1] = 0, 1
        counts[2] = min(150, n_items * 3)
    counts = np.asarray(counts)
    users = np.repeat(np.arange(n_users), counts)
    items = rng.integers(0, n_items, len(users))  # repeats allowed: ties keep input order
    ratings = rng.integers(1, 6, len(users)).astype(np.float32)
    weights = rng.uniform(0.5, 2.0, len(users)).astype(np.float32)
    return Ratings.from_coo(users, items, ratings, weights, n_users=n_users, n_items=n_items,
                            user_ids=1000 + 7 * np.arange(n_users))


def permuted_users(r: Ratings, order: np.ndarray) -> Ratings:
    """``r``'s users given in another index order: user ``u`` becomes index ``order[u]``, with its
    id and ratings (as the same data read from another file or frame would be)."""
    user_ids = np.empty_like(r.user_ids)
    user_ids[order] = r.user_ids
    return Ratings.from_coo(order[r.user_of_row()], r.items, r.ratings, r.weights, n_users=r.n_users,
                            n_items=r.n_items, user_ids=user_ids, item_ids=r.item_ids)


def permuted_items(r: Ratings, order: np.ndarray) -> Ratings:
    """``r`` with its items given in another index order: item ``i`` becomes index ``order[i]``,
    with its id (as another catalogue's order would give them); the users stay where they are."""
    item_ids = np.empty_like(r.item_ids)
    item_ids[order] = r.item_ids
    return Ratings.from_coo(r.user_of_row(), order[r.items], r.ratings, r.weights, n_users=r.n_users,
                            n_items=r.n_items, user_ids=r.user_ids, item_ids=item_ids)


def ratings_by_id(r: Ratings) -> list:
    """The sorted ``(user id, item id, rating, weight)`` of every rating: equal for the same
    ratings under any user and item indices and in any row order."""
    return sorted(zip(r.user_ids[r.user_of_row()].tolist(), r.item_ids[r.items].tolist(), r.ratings.tolist(),
                      r.weights.tolist()))


def users_by_id(r: Ratings) -> list:
    """Each user's ``(id, items, ratings)``, sorted by id: equal for the same users at any indices."""
    return sorted((u.item(), r.items[a:b].tolist(), r.ratings[a:b].tolist())
                  for u, a, b in zip(r.user_ids, r.indptr[:-1], r.indptr[1:]))


def rel_err(a, b) -> float:
    """``max|a - b| / max|b|`` (0 when both are zero)."""
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    scale = b.abs().max().clamp_min(1e-30)
    return float((a - b).abs().max() / scale)


def describe_mismatch(a, b, tol: float) -> str:
    """Where ``a`` and ``b`` differ by more than ``tol`` relative (for assertion messages)."""
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    bad = ((a - b).abs() > tol * b.abs().max().clamp_min(1e-30)).nonzero()[:5]
    return "; ".join(f"at {tuple(i.tolist())}: {a[tuple(i)].item():.9g} vs {b[tuple(i)].item():.9g}" for i in bad)


# The C++ backend when built (fast); the reference otherwise (same numbers, slower).
BACKEND = "cpu" if "cpu" in available_backends() else "reference"


def planted_problem(n_users=40, n_items=30, d=3, noise=0.5, seed=0):
    """A matrix-factorisation head and ratings planted from it plus noise: (head, train, val).

    The validation loss then has a clear optimum inside the default bounds (lr around 0.1, reg
    around 0.1 with 16 epochs of Adam).  User ids are ``500 + 3 * index``.
    """
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    head = Head.matrix_factorization(torch.randn(n_items, d, generator=g) / d**0.5,
                                     torch.randn(n_items, generator=g) * 0.3, 3.5)
    truth = torch.randn(n_users, d, generator=g) * 0.7
    counts = rng.integers(4, 20, n_users)
    users = np.repeat(np.arange(n_users), counts)
    items = np.concatenate([rng.choice(n_items, c, replace=False) for c in counts])
    ratings = head.predict(truth[users], torch.as_tensor(items)).numpy() + rng.normal(0, noise, len(users))
    data = Ratings.from_coo(users, items, ratings, n_users=n_users, n_items=n_items,
                            user_ids=500 + 3 * np.arange(n_users))
    return (head, *data.split_per_user(0.3, seed=seed))


def planted_hyp(**changes):
    settings = dict(model="matrix_factorization_3", batch_size=8, max_epochs=16, epochs_per_checkpoint=2)
    return HyperParams(**{**settings, **changes})
