"""Serving: fold new users in with the retrain's recipe, and recommend top-k items.

A new user's embedding is trained exactly as the retrain trained every user: same init (keyed by
the original user id), same per-epoch permutations, same hyper-parameters and the same number of
epochs.  Users are independent, so folding in many users at once gives each the row a full
retrain would have given it.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .backends import get_backend
from .data import Ratings, as_ratings
from .errors import InputError
from .heads import Head, Model
from .ids import shown_ids
from .hyperparams import HyperParams, check_hyperparams
from .ridge import ridge_solve, well_formed_request
from .trainer import check_finite_rows, check_ratings, contract_init, train_embeddings

SCORE_BLOCK_BYTES = 1 << 28  # rows of the [n, n_items] score matrix are computed this many bytes at a time


def check_item_ids(head: Head, ratings: Ratings, name: str) -> None:
    """InputError unless ``ratings`` are ``Ratings`` that index items exactly as ``head`` does."""
    as_ratings(ratings, name, frames=False)  # a DataFrame, say: it indexes no items of the head
    same = ratings.item_ids is head.item_ids  # with_items(head.item_ids) shares the array: no O(items) check
    if not same and (ratings.n_items != head.n_items or not np.array_equal(ratings.item_ids, head.item_ids)):
        raise InputError(f"{name} index items differently from the model ({ratings.n_items} vs {head.n_items} "
                         "items, or other ids): re-index with ratings.with_items(head.item_ids)")


def fold_in(model_or_head: Model | Head, new_users_ratings: Ratings, hyp: HyperParams, epochs: int, *,
            backend="auto", solver: str = "train") -> torch.Tensor:
    """Embeddings ``[n_new, d]`` (float32, CPU) of the users in ``new_users_ratings``.

    The low-level fold-in: ``retrain.load(path).fold_in(...)`` takes the recipe from the model
    file, maps original ids and drops unknown items; this function takes the recipe as arguments
    and ratings already indexed as the head's items.

    ``solver="train"`` (the default, the retrain's recipe) trains each user for exactly
    ``epochs`` epochs with ``hyp`` (use ``RetrainResult.hyp`` and ``RetrainResult.epochs``).
    ``hyp.num_users`` must be the retrain's user count when the head uses the Glorot init,
    because the init's bound depends on it.  ``solver="ridge"`` returns instead the exact
    minimiser of the full-batch objective with ``hyp.regularization`` and ``hyp.damping``
    (``(1/n) sum w err^2 + (reg + damping / n) ||e||^2``, the training loss's; linear heads only;
    ``epochs`` is ignored; users without ratings keep their init).

    Raises InputError when some user's embedding is not finite (the recipe diverged on its
    ratings), naming the users: never NaN rows.
    """
    head = _head_of(model_or_head)
    emb = fold_in_rows(head, new_users_ratings, hyp, epochs, backend=backend, solver=solver)
    if not math.isfinite(np.add.reduce(emb.numpy(), axis=None)):  # NaN/inf anywhere (a sum of sane rows is finite)
        check_ratings(new_users_ratings, "new_users_ratings", head.n_items)  # a hand-built non-finite rating?
        bad = np.flatnonzero(~np.isfinite(emb.numpy()).all(1))
        if len(bad):
            raise InputError(diverged_message(new_users_ratings.user_ids[bad], len(emb), hyp))
    return emb


def fold_in_rows(head: Head, ratings: Ratings, hyp: HyperParams, epochs: int, *, backend="auto",
                 solver: str = "train") -> torch.Tensor:
    """``fold_in`` without the divergence check: rows of diverged users are not finite."""
    if solver not in ("train", "ridge"):
        raise InputError(f"solver must be 'train' or 'ridge', got {solver!r}")
    hyp = check_hyperparams(hyp)
    if head.init == "glorot" and hyp.num_users is None:
        raise InputError("hyp.num_users must be the user count of the retrain being reproduced (it sets the "
                         "Glorot bound of the init); RetrainResult.hyp carries it")
    check_item_ids(head, ratings, "new_users_ratings")
    if solver == "ridge":
        emb, rated = ridge_solve(head, ratings, hyp.regularization, damping=hyp.damping)
        emb = emb.astype(np.float32)
        if len(rated) < len(emb):  # the others keep the contract's init (computed only for them: it is per user)
            empty = np.setdiff1d(np.arange(len(emb)), rated)
            emb[empty] = contract_init(head, ratings.user_ids[empty], hyp, ratings.n_users).numpy()
        return torch.from_numpy(emb)
    return train_embeddings(head, ratings, hyp, epochs, backend=backend)


def diverged_message(user_ids, n: int, hyp: HyperParams) -> str:
    """The error for users whose fold-in is not finite."""
    return (f"the fold-in diverged for {len(user_ids)} of {n} users (user ids {shown_ids(user_ids)}): their embeddings are not "
            f"finite with learning rate {hyp.learning_rate:.4g} and regularisation {hyp.regularization:.4g}; "
            "check their ratings and the recipe")


def _head_of(model_or_head) -> Head:
    head = model_or_head.head if isinstance(model_or_head, Model) else model_or_head
    if not isinstance(head, Head):
        raise InputError(f"expected a retrain Model or a Head, got {type(model_or_head).__name__}")
    return head


def recommend(model_or_head: Model | Head, embeddings: torch.Tensor | None = None, k: int = 10, *,
              exclude_seen: Ratings | None = None, exclude_items=None,
              backend="auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` items for each row of ``embeddings`` (default: the model's user table).

    Args:
        model_or_head: a ``Model`` or its ``Head``.
        embeddings: ``[n, d]`` user embeddings; required with a bare ``Head``.
        k: items per user, ``1 <= k <= n_items``.
        exclude_seen: ratings of the same ``n`` users (row ``u`` of it is row ``u`` of
            ``embeddings``); their items are never recommended (score ``-inf``; when fewer than
            ``k`` items remain, the last entries have score ``-inf``).
        exclude_items: optional bool ``[n_items]``: items never recommended to anyone (e.g. too
            little support).
        backend: the backend whose ``score`` computes ``tower(e) . Q[i] + b[i] + mu``.

    Returns ``(items, scores)``: int64 item indices ``[n, k]`` (``head.item_ids[items]`` are the
    original ids) and float32 scores ``[n, k]``, best first, on the CPU.  A score that is NaN is
    never ranked (it counts as ``-inf``); an embedding that is not finite is an InputError naming
    its row, and so is a hand-built ``exclude_seen`` with an item index out of range or a broken
    ``indptr``.
    """
    model = model_or_head if isinstance(model_or_head, Model) else None
    head = _head_of(model_or_head)
    if embeddings is None:
        if model is None:
            raise InputError("embeddings are required when recommending from a Head")
        embeddings = model.user_embeddings
    embeddings = torch.as_tensor(embeddings, dtype=torch.float32)
    if embeddings.ndim != 2 or embeddings.shape[1] != head.d:
        raise InputError(f"embeddings must be [n, d={head.d}], got {tuple(embeddings.shape)}")
    check_finite_rows("embeddings", embeddings, ": refusing to rank its scores")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= head.n_items:
        raise InputError(f"k must be an integer in [1, n_items={head.n_items}], got {k!r}")
    n = embeddings.shape[0]
    if exclude_seen is not None:
        check_item_ids(head, exclude_seen, "exclude_seen")
        # A hand-built one (no constructor checks) with item -1 excluded the last item instead, and
        # with an index past the items or a broken indptr raised inside torch / numpy.
        if not well_formed_request(exclude_seen, head.n_items, finite_ratings=False):
            check_ratings(exclude_seen, "exclude_seen", head.n_items)
        if exclude_seen.n_users != n:
            raise InputError(f"exclude_seen has {exclude_seen.n_users} users but embeddings have {n} rows")
    if exclude_items is not None:
        mask = np.asarray(exclude_items)
        if mask.dtype != np.bool_:  # 0.5 or item indices cast to True would exclude every item or the wrong ones
            raise InputError(f"exclude_items must be bool [n_items={head.n_items}], got {mask.dtype} values")
        exclude_items = torch.as_tensor(mask)
        if exclude_items.shape != (head.n_items,):
            raise InputError(f"exclude_items must be bool [n_items={head.n_items}], got {tuple(exclude_items.shape)}")

    be = get_backend(backend)
    rows = max(1, SCORE_BLOCK_BYTES // (4 * head.n_items))
    items_out, scores_out = [], []
    for first in range(0, n, rows):
        last = min(n, first + rows)
        scores = be.score(head, embeddings[first:last])
        scores = scores.masked_fill(torch.isnan(scores), -torch.inf)  # topk would rank NaN first
        if exclude_items is not None:
            scores[:, exclude_items.to(scores.device)] = -torch.inf
        if exclude_seen is not None:
            seen = exclude_seen.select_users(np.arange(first, last))
            users = torch.from_numpy(seen.user_of_row()).to(scores.device)
            scores[users, torch.from_numpy(seen.items).to(scores.device)] = -torch.inf
        top = torch.topk(scores, k, dim=1)
        items_out.append(top.indices.cpu())
        scores_out.append(top.values.float().cpu())
    if not items_out:
        return torch.zeros(0, k, dtype=torch.int64), torch.zeros(0, k, dtype=torch.float32)
    return torch.cat(items_out), torch.cat(scores_out)
