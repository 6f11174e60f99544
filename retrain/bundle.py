"""One file that serves: the model, its original ids and its recipe, and ``retrain.load``.

``RetrainResult.save(path)`` writes a model file (``retrain.heads``: head, user table, original
user and item ids) whose metadata also holds the *recipe*, one JSON entry ``recipe`` with sorted
keys: the tuned hyper-parameters (``num_users`` included: it sets the Glorot bound), the epoch
count, the contract version, the rating range and whether the user table was refitted.  Two more
tensors serve recommendations: ``seen.indptr [U + 1]`` / ``seen.items [nnz]`` (int64, the items
each user was trained on, so they are not recommended back) and ``item_support [I]`` (int64,
training ratings per item, for ``min_support``).  One atomic write, byte-reproducible.

``load(path)`` returns a ``ServedModel``: ``fold_in``, ``add_users``, ``predict`` and
``recommend`` speak original ids and take the recipe from the file, so it cannot be mismatched by
hand.  An older model with a ``<model>.hyp.json`` beside it still loads (its recipe is read from
there; it has no seen items or support), and so does a bundle written in shards by a sharded run
(``retrain.shards``: ``path`` is then the shards' index).
"""
from __future__ import annotations

import json
import logging
import math
import numbers
import os
import threading
from dataclasses import dataclass

import numpy as np
import torch

from .artifacts import hyp_path, read_hyp
from .contract import CONTRACT_VERSION
from .data import Ratings, as_ratings, well_formed
from .errors import InputError, blame, check_bool, check_int
from .files import as_path
from .heads import Head, Model, model_from_tensors, read_model_file, save_file
from .hyperparams import HyperParams, check_hyperparams
from .ids import concatenate, format_id, same_kind
from .serving import check_item_ids, diverged_message, fold_in_rows, recommend
from .shards import is_index, read_index
from .trainer import check_ratings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recipe:
    """How every user of a model was trained, so that a new user is trained the same way.

    ``hyp``: the hyper-parameters (``num_users``: the retrain's user count); ``epochs``: epochs
    of training; ``rating_range``: ``(low, high)`` of the training ratings (predictions are
    clipped to it) or None; ``val_loss``: the retrain's validation loss; ``refit``: whether the
    user table was trained on train + validation ratings (``retrain_user_embeddings(refit=True)``).
    """

    hyp: HyperParams
    epochs: int
    rating_range: tuple[float, float] | None = None
    val_loss: float | None = None
    refit: bool = False

    def __post_init__(self):
        check_hyperparams(self.hyp)  # a string raised an AttributeError on hyp.num_users below
        # Stored as plain Python values, so that to_json writes them (json refuses numpy's scalars).
        object.__setattr__(self, "epochs", check_int("epochs", self.epochs, 0))
        object.__setattr__(self, "refit", check_bool("refit", self.refit))  # bool("false") is True
        if self.val_loss is not None:
            if isinstance(self.val_loss, (bool, np.bool_)) or not isinstance(self.val_loss, numbers.Real):
                raise InputError(f"val_loss must be a number, got {self.val_loss!r}")
            object.__setattr__(self, "val_loss", float(self.val_loss))
        if self.hyp.num_users is None:
            raise InputError("a recipe's hyp.num_users must be set: it is the retrain's user count")
        if self.rating_range is not None:
            pair = self.rating_range if isinstance(self.rating_range, (tuple, list)) else ()  # not "15" as (1, 5)
            numeric = len(pair) == 2 and all(isinstance(x, numbers.Real) and not isinstance(x, bool) for x in pair)
            low, high = (float(x) for x in pair) if numeric else (math.nan, math.nan)
            if not (np.isfinite(low) and np.isfinite(high) and low <= high):
                raise InputError(f"rating_range must be finite (low, high) with low <= high, got {self.rating_range}")
            object.__setattr__(self, "rating_range", (low, high))

    def to_json(self) -> str:
        entry = dict(contract=CONTRACT_VERSION, hyperparams=self.hyp.to_dict(), epochs=self.epochs,
                     rating_range=None if self.rating_range is None else list(self.rating_range),
                     val_loss=self.val_loss, refit=self.refit)
        return json.dumps(entry, sort_keys=True, separators=(",", ":"))

    @staticmethod
    def from_json(text: str, where: str) -> "Recipe":
        try:
            entry = json.loads(text)
            rating_range = entry.get("rating_range")
            return Recipe(HyperParams.recorded(entry["hyperparams"]), entry["epochs"],
                          None if rating_range is None else tuple(rating_range), entry.get("val_loss"),
                          entry.get("refit", False))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError, InputError) as exc:
            raise InputError(f"{where}: the recipe in the file is malformed ({exc})") from None


@dataclass
class FoldInResult:
    """What ``ServedModel.fold_in`` returns, row ``r`` for user ``user_ids[r]``.

    ``embeddings [n, d]`` (float32); ``ratings``: the users' ratings on the model's items (those
    used); ``dropped [n]`` (int64): ratings per user on items the model does not know (left out);
    ``no_known_items [n]`` (bool): users left with no rating, who get their initial embedding;
    ``diverged [n]`` (bool): users whose embedding is not finite (never served).
    """

    user_ids: np.ndarray
    embeddings: torch.Tensor
    ratings: Ratings
    dropped: np.ndarray
    no_known_items: np.ndarray
    diverged: np.ndarray

    @property
    def n_dropped(self) -> int:
        """Ratings on unknown items, left out."""
        return int(self.dropped.sum())


@dataclass
class Recommendations:
    """Top-k lists: ``item_ids [n, k]`` (original ids), ``scores [n, k]`` (float32, best first) and
    ``counts [n]``: how many entries of each row are real (fewer than ``k`` items were left)."""

    user_ids: np.ndarray
    item_ids: np.ndarray
    scores: np.ndarray
    counts: np.ndarray


class ServedModel:
    """A model with its recipe: fold in, add, predict and recommend in original ids.

    ``model``: the ``Model`` (head, user table, ids); ``recipe``: a ``Recipe``; ``seen``: the
    ratings each user of the table was trained on (indexed as ``model``'s users and items) or
    None; ``item_support [n_items]``: training ratings per item, or None.
    """

    def __init__(self, model: Model, recipe: Recipe, seen: Ratings | None = None, item_support=None):
        if not all(hasattr(model, name) for name in ("head", "user_embeddings", "user_ids")):  # model.head below
            raise InputError(f"model must be a retrain.heads.Model, got {type(model).__name__}")
        if not isinstance(recipe, Recipe):
            raise InputError(f"recipe must be a retrain.bundle.Recipe, got {type(recipe).__name__}")
        if recipe.hyp.model != model.head.name:
            raise InputError(f"the recipe is for model {recipe.hyp.model!r} but the head is {model.head.name!r}")
        if seen is not None and (seen.n_users != model.n_users or seen.n_items != model.head.n_items
                                 or not np.array_equal(seen.user_ids, model.user_ids)
                                 or not np.array_equal(seen.item_ids, model.head.item_ids)):
            raise InputError(f"seen ratings describe {seen.n_users} users and {seen.n_items} items, the model "
                             f"{model.n_users} and {model.head.n_items} (or other ids): row u of seen must be user u")
        if item_support is not None:
            support = np.asarray(item_support)
            if (support.shape != (model.head.n_items,) or not np.issubdtype(support.dtype, np.integer)
                    or (support < 0).any()):  # else truncated, or a shape mismatch in recommend
                raise InputError(f"item_support must be integer counts >= 0 [n_items={model.head.n_items}], got "
                                 f"{support.dtype} {list(support.shape)}")
            item_support = support.astype(np.int64)
        self.recipe, self.item_support = recipe, item_support
        # The user table and its seen items, replaced together by add_users in one assignment: a
        # reader takes the pair once, so it never pairs one update's rows with another's items.
        self._table = (model, seen)
        self._adding = threading.Lock()  # add_users from several threads: one table update at a time

    def __getstate__(self) -> dict:  # pickled or copied without the lock (a new one on the other side)
        return {name: value for name, value in self.__dict__.items() if name != "_adding"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _adding=threading.Lock())

    @property
    def model(self) -> Model:
        """The ``Model`` served now (``add_users`` replaces it)."""
        return self._table[0]

    @property
    def seen(self) -> Ratings | None:
        """The ratings each user of ``model`` was trained on (row u: user u), or None."""
        return self._table[1]

    @property
    def head(self) -> Head:
        return self.model.head

    def __repr__(self) -> str:
        return (f"ServedModel({self.head.name}, {self.model.n_users} users, {self.head.n_items} items, "
                f"{self.recipe.epochs} epochs)")

    # ----------------------------------------------------------------- new users
    def fold_in(self, ratings, *, solver: str = "train", backend="auto") -> FoldInResult:
        """Train embeddings for the users of ``ratings`` (a DataFrame as ``Ratings.from_pandas``
        reads it, or ``Ratings`` with original ids) with the model's recipe.

        Ratings on items the model does not know are dropped and counted; users left without
        ratings get their initial embedding and are flagged.  A batch flags diverged users
        (``diverged``); for a single user a divergence is an InputError.  A rating far outside the
        recipe's rating range ``[lo, hi]`` (below ``lo - (hi - lo)`` or above ``hi + (hi - lo)``:
        another column or scale) is an InputError naming the user and the value.
        """
        raw = as_ratings(ratings, "ratings")
        if not well_formed(raw, raw.n_items):  # a hand-built Ratings: the item lookup would wrap or fail
            check_ratings(raw, "ratings", raw.n_items)
        self._check_rating_scale(raw)
        same_kind(self.head.item_ids, raw.item_ids, "item id")  # else every rating would be dropped
        known = raw.with_items(self.head.item_index, drop_unknown=True)
        dropped = raw.counts - known.counts
        if known.nnz < raw.nnz:
            log.info("fold-in: dropped %d ratings on items the model does not know", raw.nnz - known.nnz)
        emb = fold_in_rows(self.head, known, self.recipe.hyp, self.recipe.epochs, backend=backend, solver=solver)
        diverged = ~np.isfinite(emb.numpy()).all(1)
        if diverged.any() and known.n_users == 1:
            raise InputError(diverged_message(known.user_ids, 1, self.recipe.hyp))
        return FoldInResult(known.user_ids, emb, known, dropped, known.counts == 0, diverged)

    def _check_rating_scale(self, ratings: Ratings) -> None:
        """InputError for the first rating far outside the recipe's range (none without a range)."""
        if self.recipe.rating_range is None or ratings.nnz == 0:
            return
        lo, hi = self.recipe.rating_range
        far = (ratings.ratings < lo - (hi - lo)) | (ratings.ratings > hi + (hi - lo))
        if far.any():
            row = int(np.argmax(far))
            user = ratings.user_ids[ratings.user_of_row()[row]]
            raise InputError(f"ratings: user {format_id(user)} has the rating {ratings.ratings[row]:g}, far outside "
                             f"the model's rating range [{lo:g}, {hi:g}] ({int(far.sum())} such ratings): another "
                             "column or scale?")

    def add_users(self, ratings_or_result, **fold_in_options) -> FoldInResult:
        """Fold in users (as ``fold_in``, or a ``FoldInResult`` already computed) and put them in the
        user table: a new id is appended, a known id's row and seen items are replaced.  Diverged
        users are an InputError (nothing is added).  Safe to call from several threads at once: the
        fold-ins run side by side, the table updates one after the other (each reads the table the
        last one wrote; two threads' users were lost, and the second raised about a user index).
        ``predict``, ``recommend`` and ``save`` meanwhile read the table before or after an update,
        never half of one."""
        if isinstance(ratings_or_result, FoldInResult):
            result = ratings_or_result
            check_item_ids(self.head, result.ratings, "the fold-in result's ratings")  # another model's result?
            if tuple(result.embeddings.shape) != (len(result.user_ids), self.head.d):
                raise InputError(f"the fold-in result's embeddings are {list(result.embeddings.shape)}, the model "
                                 f"needs [{len(result.user_ids)}, d={self.head.d}]: a result of another model?")
        else:
            result = self.fold_in(ratings_or_result, **fold_in_options)
        if result.diverged.any():
            raise InputError(diverged_message(result.user_ids[result.diverged], len(result.user_ids),
                                              self.recipe.hyp) + ": not added")
        with self._adding:
            self._add(result)
        return result

    def _add(self, result: FoldInResult) -> None:
        model, seen = self._table
        index, found = model.user_lookup.find(result.user_ids)
        table = model.user_embeddings.clone()
        table[torch.from_numpy(index[found])] = result.embeddings[torch.from_numpy(found)]
        user_ids = concatenate(model.user_ids, result.user_ids[~found], "user id")
        table = torch.cat([table, result.embeddings[torch.from_numpy(~found)]])
        if seen is not None:
            seen = _replace_seen(seen, result.ratings, index, found, user_ids)
        self._table = (Model(self.head, table, user_ids), seen)

    # ----------------------------------------------------------------- serving
    def predict(self, user_ids, item_ids, *, clip: bool = True) -> np.ndarray:
        """Predicted ratings (float32 ``[n]``) for equal-length original ``user_ids`` and ``item_ids``,
        clipped to the recipe's rating range when ``clip``; InputError naming an unknown id."""
        clip = check_bool("clip", clip)
        pred = self.model.predict(user_ids, item_ids).numpy()
        if clip and self.recipe.rating_range is not None:
            pred = np.clip(pred, *self.recipe.rating_range).astype(np.float32)
        return pred

    def recommend(self, user_ids, k: int = 10, *, exclude_seen: bool = True, min_support: int = 0,
                  backend="auto") -> Recommendations:
        """Top-``k`` items for original ``user_ids``: the items each user was trained on are left
        out when ``exclude_seen`` (and the model knows them), and items with fewer than
        ``min_support`` training ratings (when the model knows the support)."""
        min_support = check_int("min_support", min_support, 0)
        exclude_seen = check_bool("exclude_seen", exclude_seen)  # "no" excluded them
        model, seen = self._table  # one table: an add_users meanwhile is not half seen
        rows = model.user_index(user_ids)
        exclude = None
        if min_support > 0:
            if self.item_support is None:
                raise InputError("min_support needs the item support, which this model file does not hold")
            exclude = self.item_support < min_support
        seen = seen.select_users(rows) if exclude_seen and seen is not None else None
        k = min(check_int("k", k, 1), self.head.n_items)
        items, scores = recommend(self.head, model.user_embeddings[torch.from_numpy(rows)], k,
                                  exclude_seen=seen, exclude_items=exclude, backend=backend)
        scores = scores.numpy()
        return Recommendations(model.user_ids[rows], self.head.item_ids[items.numpy()], scores,
                               np.isfinite(scores).sum(1))

    # ----------------------------------------------------------------- files
    def save(self, path) -> None:
        """Write the bundle (module docstring) in one atomic, byte-reproducible write."""
        model, seen = self._table  # one table: an add_users meanwhile is not half saved
        save_bundle(path, model, self.recipe, seen, self.item_support)


def _replace_seen(seen: Ratings, new: Ratings, index: np.ndarray, found: np.ndarray, user_ids: np.ndarray) -> Ratings:
    """``seen`` with the rows of re-added users replaced by ``new``'s and new users appended."""
    new_row = np.where(found, index, seen.n_users + np.cumsum(~found) - 1)  # table row of each new user
    keep = ~np.isin(seen.user_of_row(), index[found])
    users = np.concatenate([seen.user_of_row()[keep], new_row[new.user_of_row()]])
    return Ratings.from_coo(users, np.concatenate([seen.items[keep], new.items]),
                            np.concatenate([seen.ratings[keep], new.ratings]),
                            np.concatenate([seen.weights[keep], new.weights]), n_users=len(user_ids),
                            n_items=seen.n_items, user_ids=user_ids, item_ids=seen.item_ids)


def item_support(seen: Ratings | None, n_items: int) -> np.ndarray | None:
    """Training ratings per item (int64 ``[n_items]``) of ``seen``, what ``min_support`` filters
    on; None without ``seen``."""
    return None if seen is None else np.bincount(seen.items, minlength=n_items).astype(np.int64)


def save_bundle(path, model: Model, recipe: Recipe, seen: Ratings | None = None, item_support=None) -> None:
    """Write ``model`` with its recipe (and the seen items and item support when given) to ``path``."""
    extra = {}
    if seen is not None:
        extra["seen.indptr"], extra["seen.items"] = seen.indptr, seen.items
    if item_support is not None:
        extra["item_support"] = np.asarray(item_support, dtype=np.int64)
    save_file(path, head=model.head, user_embeddings=model.user_embeddings, user_ids=model.user_ids,
              extra_tensors=extra, extra_metadata={"recipe": recipe.to_json()})


def load(path) -> ServedModel:
    """The ``ServedModel`` of a file written by ``RetrainResult.save`` (or ``python -m retrain
    run``; the index of a bundle in shards included), or of an older model with its
    ``<model>.hyp.json``.  InputError naming the file when it is no model, has no recipe, lacks a
    tensor, or (shards) is missing or does not match the index."""
    path = as_path(path, "path")
    head, tensors, metadata = read_index(path) if is_index(path) else read_model_file(path)
    model = model_from_tensors(path, head, tensors)
    if "recipe" in metadata:
        recipe = Recipe.from_json(metadata["recipe"], path)
    elif os.path.isfile(hyp_path(path)):
        hyp, epochs = read_hyp(hyp_path(path))
        log.info("%s has no recipe inside: using %s (an older model + .hyp.json pair)", path, hyp_path(path))
        recipe = Recipe(hyp, epochs)
    else:
        raise InputError(f"{path} holds no recipe (hyper-parameters and epochs): it was not written by "
                         "RetrainResult.save or 'run' (a pretrained model?), and there is no "
                         f"{hyp_path(path).name} beside it")
    with blame(path):
        return ServedModel(model, recipe, _seen(tensors, model), tensors.get("item_support"))


def _seen(tensors: dict, model: Model) -> Ratings | None:
    """The seen items a bundle holds (None when it holds none); InputError unless they are CSR of
    the model's users and items."""
    if "seen.indptr" not in tensors or "seen.items" not in tensors:
        return None
    indptr, items = np.array(tensors["seen.indptr"]), np.array(tensors["seen.items"])
    if (indptr.dtype != np.int64 or items.dtype != np.int64 or indptr.shape != (model.n_users + 1,) or items.ndim != 1
            or indptr[0] != 0 or indptr[-1] != len(items) or np.any(np.diff(indptr) < 0)):
        raise InputError(f"seen.indptr / seen.items do not describe {model.n_users} users: int64 [{model.n_users + 1}] "
                         f"rising from 0 to the length of int64 [nnz] expected, got {indptr.dtype} "
                         f"{list(indptr.shape)} / {items.dtype} {list(items.shape)}")
    with blame("seen.items"):
        return Ratings.from_coo(np.repeat(np.arange(model.n_users), np.diff(indptr)), items, np.zeros(len(items)),
                                n_users=model.n_users, n_items=model.head.n_items, user_ids=model.user_ids,
                                item_ids=model.head.item_ids)
