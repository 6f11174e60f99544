"""Pretrain a base model (every parameter) so that there is a real item side to freeze.

``user_item_biases`` and ``matrix_factorization_K`` are fitted by alternating least squares: each
half-step is the exact per-row ridge solution of ``retrain.ridge`` (weighted-lambda ALS, i.e. the
penalty is scaled by each row's rating count).  The MF heads carry a constant last item column of
ones, so the last user dimension acts as that user's bias (DESIGN.md §2).  ``mlp_DxH`` heads
(one tanh layer D -> H) are fitted with Adam on minibatches.
"""
from __future__ import annotations

import logging

import numpy as np
import torch

from .contract import FLOAT32_MAX, MAX_SEED, initial_embeddings, user_key
from .data import Ratings, as_ratings
from .errors import InputError, check_float, check_int
from .heads import Head, Layer, Model
from .hyperparams import model_family
from .ridge import ridge_embeddings
from .trainer import check_ratings

log = logging.getLogger(__name__)

DEFAULT_ITEM_DAMPING = 5.0  # measured in docs/pipeline.md ("Recommendation quality")


def pretrain(ratings: Ratings, model: str = "matrix_factorization_32", *, seed: int = 0, reg: float | None = None,
             iterations: int | None = None, item_damping: float = DEFAULT_ITEM_DAMPING) -> Model:
    """Fit a base model on ``ratings``; returns the head and the fitted user table.

    Args:
        ratings: the pretraining ratings (keep validation and test ratings out of them).
        model: ``user_item_biases``, ``matrix_factorization_K`` (K >= 2) or ``mlp_DxH``.
        seed: seeds the item-side initialisation.
        reg: ridge penalty per rating (ALS; default 0.1) or Adam weight decay (MLP; default 1e-4).
        iterations: ALS sweeps (default 10) or Adam epochs (default 20).
        item_damping: ALS only: a penalty ``item_damping * ||[q_i, b_i]||^2`` on each item that,
            unlike the count-scaled ``reg``, does not grow with the item's rating count
            (``ridge_embeddings(damping=...)``): it shrinks a rarely rated item toward predicting the
            global mean, so an item with one 5-star rating no longer tops everyone's list.  0 gives
            plain weighted-lambda ALS.

    Raises InputError for an unknown model name, no ratings (or only ratings of weight 0), malformed
    hand-built ratings (naming the row), or a bad ``seed``/``reg``/``iterations``.
    ``ratings`` may be a pandas DataFrame (``Ratings.from_pandas`` reads it).
    """
    ratings = as_ratings(ratings, "ratings")
    # Hand-built Ratings (no constructor checks): the MLP trained item -1 as the last item and a
    # negative weight with its sign flipped, silently; ALS named the items "users".
    check_ratings(ratings, "ratings", ratings.n_items)
    family = model_family(model)
    seed = check_int("seed", seed, 0, MAX_SEED)  # HyperParams' range; torch's generator overflowed at 2^64
    # float32's range: torch's weight decay cannot hold 1e308 (a RuntimeError inside Adam's step)
    reg = None if reg is None else check_float("reg", reg, 0.0, maximum=FLOAT32_MAX)
    item_damping = check_float("item_damping", item_damping, 0.0, maximum=FLOAT32_MAX)
    iterations = None if iterations is None else check_int("iterations", iterations, 1)
    if ratings.nnz == 0:
        raise InputError("pretrain needs at least one rating")
    if not ratings.weights.any():  # the weighted global mean would be 0/0
        raise InputError(f"every one of the {ratings.nnz} ratings has weight 0: pretrain needs a rating of weight > 0")
    if family == "mlp":
        d, h = (int(x) for x in model.split("_")[1].split("x"))
        return _pretrain_mlp(ratings, d, h, seed, 1e-4 if reg is None else reg, iterations or 20)
    k = 1 if family == "user_item_biases" else int(model.rsplit("_", 1)[1])
    if family == "matrix_factorization" and k < 2:
        raise InputError(f"{model}: matrix_factorization_K needs K >= 2 (one dimension is the user bias)")
    return _pretrain_als(ratings, k - 1, seed, 0.1 if reg is None else reg, iterations or 10, item_damping)


def _item_view(ratings: Ratings) -> Ratings:
    """The same ratings with items as rows (for the item half-step)."""
    return Ratings.from_coo(ratings.items, ratings.user_of_row(), ratings.ratings, ratings.weights,
                            n_users=ratings.n_items, n_items=ratings.n_users)


def _pretrain_als(ratings: Ratings, factors: int, seed: int, reg: float, iterations: int, damping: float) -> Model:
    w = ratings.weights.astype(np.float64)
    mu = float((w * ratings.ratings).sum() / w.sum())
    rng = np.random.default_rng(seed)
    item_factors = torch.from_numpy(rng.normal(0, 0.1, (ratings.n_items, factors)))
    item_bias = torch.zeros(ratings.n_items, dtype=torch.float64)
    by_item = _item_view(ratings)
    ones_items = torch.ones(ratings.n_items, 1, dtype=torch.float64)
    ones_users = torch.ones(ratings.n_users, 1, dtype=torch.float64)
    for sweep in range(iterations):
        # Users: solve [p_u, bu] against item rows [q_i, 1] with offsets b_i + mu.
        users = ridge_embeddings(Head(torch.cat([item_factors, ones_items], 1), item_bias, mu), ratings, reg)
        # Items: solve [q_i, b_i] against user rows [p_u, 1] with offsets bu + mu.
        items = ridge_embeddings(Head(torch.cat([users[:, :factors], ones_users], 1), users[:, factors], mu), by_item,
                                 reg, damping=damping)
        item_factors, item_bias = items[:, :factors], items[:, factors]
        log.debug("ALS sweep %d/%d done", sweep + 1, iterations)
    users = ridge_embeddings(Head(torch.cat([item_factors, ones_items], 1), item_bias, mu), ratings, reg)
    if factors == 0:
        head = Head.user_item_biases(item_bias, mu, item_ids=ratings.item_ids)
    else:
        head = Head.matrix_factorization(torch.cat([item_factors, ones_items], 1), item_bias, mu, item_ids=ratings.item_ids)
    return Model(head, users.float(), ratings.user_ids)


def _pretrain_mlp(ratings: Ratings, d: int, h: int, seed: int, weight_decay: float, epochs: int) -> Model:
    gen = torch.Generator().manual_seed(seed)
    w = ratings.weights.astype(np.float64)
    mu = float((w * ratings.ratings).sum() / w.sum())
    scale = float(np.sqrt(6.0 / (d + ratings.n_users)))
    params = {
        "users": torch.from_numpy(initial_embeddings(user_key(ratings.user_ids), d, seed, scale)),
        "W": torch.randn(h, d, generator=gen) / d**0.5, "c": torch.zeros(h),
        "Q": torch.randn(ratings.n_items, h, generator=gen) * 0.1, "b": torch.zeros(ratings.n_items),
    }
    for p in params.values():
        p.requires_grad_(True)
    opt = torch.optim.Adam(params.values(), lr=1e-2, weight_decay=weight_decay)
    users = torch.from_numpy(ratings.user_of_row())
    items = torch.from_numpy(ratings.items)
    r, wt = torch.from_numpy(ratings.ratings), torch.from_numpy(ratings.weights)
    for epoch in range(epochs):
        for batch in torch.randperm(ratings.nnz, generator=gen).split(4096):
            feats = torch.tanh(params["users"][users[batch]] @ params["W"].T + params["c"])
            pred = (feats * params["Q"][items[batch]]).sum(1) + params["b"][items[batch]] + mu
            loss = (wt[batch] * (pred - r[batch]) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        tower = [Layer(params["W"].detach().clone(), params["c"].detach().clone(), "tanh")]
        head = Head(params["Q"].detach().clone(), params["b"].detach().clone(), mu, tower, init="glorot",
                    name=f"mlp_{d}x{h}", item_ids=ratings.item_ids)
    return Model(head, params["users"].detach().clone(), ratings.user_ids)
