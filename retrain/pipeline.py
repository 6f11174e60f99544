"""The retrain pipeline (the seed notebook's ``retrain_user_embeddings``): tune, retrain, keep the best.

Evaluation protocol (docs/pipeline.md): the frozen item side must never have seen the ratings in
``val``.  ``val`` picks the hyper-parameters and the epoch count, so if the item side was fitted
on them the validation loss is far too optimistic (ml-latest-small: validation RMSE 0.43 against
a true test RMSE of 0.90) and tuning picks almost no regularisation.  Pretrain the item side on
one part of the data, tune and early-stop on ratings it never saw, and report on a third part or
on held-out users.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import torch

from . import distributed
from .bundle import Recipe, ServedModel, item_support
from .data import Ratings, as_ratings, sample_users
from .errors import InputError, check_bool, check_float, check_int
from .files import check_writable
from .heads import Model
from .hyperparams import HyperParams, check_hyperparams
from .serving import check_item_ids
from .trainer import check_training_inputs, train_embeddings, train_probes
from .tuner import MAX_EVALS, TuneResult, tune

log = logging.getLogger("retrain")


@dataclass
class RetrainResult:
    """What ``retrain_user_embeddings`` returns.

    ``model``: the same head with the retrained user table (``train``'s users);
    ``val_loss``: the early-stopped retrain's weighted mean squared validation error; ``epochs``:
    the epoch count of its kept checkpoint; ``hyp``: the tuned hyper-parameters with ``num_users``
    set to the full user count; ``tune``: the tuning run; ``history``: the early-stopped retrain's
    ``(epoch, val_loss)`` checkpoints; ``refit``: whether the user table was then trained on
    train + validation ratings for ``epochs`` epochs; ``seen``: the ratings the user table was
    trained on; ``stop_reason``: why the early-stopped retrain stopped (``ProbeResult``'s).

    A sharded run (``retrain_user_embeddings`` over ranks) returns the same on every rank but for
    the user table: gathered, ``model`` is None on the ranks but 0; kept as shards, ``model``
    holds this rank's users (``shard.users``, global indices into ``seen``, which holds every
    user) and ``save`` is collective: every rank must call it.

    ``recipe`` / ``served()`` / ``save(path)`` carry all of it to serving: a fold-in with the
    recipe reproduces a retrained (refitted) user's row.
    """

    model: Model
    val_loss: float
    epochs: int
    hyp: HyperParams
    tune: TuneResult
    history: list = field(default_factory=list)
    refit: bool = False
    seen: Ratings | None = None
    stop_reason: str = ""
    shard: distributed.Shard | None = None

    @property
    def recipe(self) -> Recipe:
        rating_range = None
        if self.seen is not None and self.seen.nnz:
            rating_range = (float(self.seen.ratings.min()), float(self.seen.ratings.max()))
        return Recipe(self.hyp, self.epochs, rating_range, float(self.val_loss), self.refit)

    def served(self) -> ServedModel:
        """The retrained model as ``retrain.load`` would return it from ``save``'s file."""
        if self.model is None or self.shard is not None:
            raise InputError("this rank holds no whole user table: load the saved bundle (retrain.load) instead")
        return ServedModel(self.model, self.recipe, self.seen, item_support(self.seen, self.model.head.n_items))

    def save(self, path) -> None:
        """Write the model, its ids and its recipe as one file (``retrain.bundle``), atomically; a
        sharded result as one file per rank and an index at ``path`` (``retrain.shards``)."""
        if self.shard is not None:
            distributed.save_shards(path, self.shard, self.model, self.recipe, self.seen)
        else:
            self.served().save(path)


def tuning_subsample(train: Ratings, val: Ratings, hyp: HyperParams) -> tuple[Ratings, Ratings, HyperParams]:
    """The seeded ``hyp.subsampling_factor`` of the users that tuning trains on, and ``hyp`` with
    ``num_users`` set to the subsample's size (the Glorot bound follows the subsample, as in the seed).

    The users are chosen by id (``retrain.contract.sample_users`` of ``train.user_ids``): the
    subsample depends on the ids, the factor and ``hyp.seed``, not on the users' order, and a day
    with one more user tunes on the same users but for at most one in and one out.
    InputError when ``val`` or the subsample's part of it has no ratings: every loss would be 0,
    and the epoch-0 init would win (a table of untrained rows)."""
    if val.nnz == 0:
        raise InputError("val has no ratings: tuning and early stopping validate on it (protocol_split makes one)")
    users = sample_users(train.user_ids, hyp.subsampling_factor, hyp.seed)
    sub_val = val.select_users(users)
    if sub_val.nnz == 0:
        raise InputError(f"the tuning subsample ({len(users)} of {train.n_users} users, hyp.subsampling_factor "
                         f"{hyp.subsampling_factor:g}) has no validation ratings: raise subsampling_factor or give "
                         "more users validation ratings")
    return train.select_users(users), sub_val, hyp.replace(num_users=len(users))


DEFAULT_MAX_GATHER_BYTES = 2 * 2**30
"""A sharded run's user table larger than this (float32 bytes) stays sharded (``shards=None``)."""


def retrain_user_embeddings(model: Model, train: Ratings, val: Ratings, hyp: HyperParams, max_iters: int = 64, *,
                            backend="auto", path=None, journal=None, n_starts: int = 8,
                            max_time: float = 3600.0, refit: bool = True,
                            final_max_time: float | None = None, group=None, shards: bool | None = None,
                            max_gather_bytes: int = DEFAULT_MAX_GATHER_BYTES,
                            memory_budget: int | None = None) -> RetrainResult:
    """Re-initialise and retrain every user embedding of ``model`` against its frozen head.

    1. Tune ``(lr, reg)`` with ``tune`` (``max_iters`` evaluations, at most ``2**31 - 1``,
       ``n_starts`` lock-step starts, ``max_time`` seconds, optional ``journal`` and
       ``memory_budget``) on a seeded subsample of ``hyp.subsampling_factor`` of the users; as
       in the seed, the Glorot bound of the init follows the subsample's user count.  Each
       evaluation early-stops as ``hyp`` says (a checkpoint every ``hyp.epochs_per_checkpoint``
       epochs, ``hyp.patience``, 0 in the seed).
       If every point diverged, InputError: there is nothing to retrain with.
    2. Retrain all users with the tuned values, a checkpoint every epoch and patience
       ``hyp.epochs_per_checkpoint``, and keep the best checkpoint and its epoch count.  This
       retrain stops after ``final_max_time`` seconds (default ``max_time``; ``math.inf``: no
       limit) at its next checkpoint, keeping the best checkpoint so far (``stop_reason ==
       "deadline"``, logged).
    3. With ``refit`` (the default), train every user again from its init on all of its ratings
       (``train`` and ``val``) for that epoch count with the tuned values: the serving recipe
       exactly, so a fold-in of the same ratings reproduces each row (docs/pipeline.md gives the
       measured effect).  ``refit=False`` keeps step 2's rows.
    4. Save the bundle (``RetrainResult.save``) atomically to ``path`` when given; ``path`` is
       checked to be writable before any work.

    ``train`` and ``val`` hold the same users (``val`` may leave some users without ratings) and
    index items as ``model.head`` does.  ``val`` must be ratings the head never saw: see the
    module docstring.  ``hyp.model`` must be the head's name (the recipe is for this model; checked
    before any work).  ``hyp.num_users`` is ignored: the pipeline sets it from the data.

    Sharded (docs/scaling.md) when a ``torch.distributed`` process group is initialised, ``group``
    is given or ``backend`` is a ``retrain.distributed.ShardedBackend``: call it with the same
    arguments on every rank.  Rank 0 drives the tuning and the retrain (NLopt, the journal, the
    clock), each rank refits its own users, and every rank returns the same tuned values, epochs
    and history, bitwise those of one process.  The user table is gathered on rank 0 and written
    there as one bundle, or with ``shards`` (default: when it is larger than ``max_gather_bytes``)
    stays on its ranks and is written as one file per rank plus an index at ``path``, which
    ``retrain.load`` reads (see ``RetrainResult``).
    """
    if not isinstance(model, Model):  # an AttributeError on model.head before
        raise InputError(f"model must be a retrain.heads.Model (the pretrained head, a user table and its ids), "
                         f"got {type(model).__name__}")
    head = model.head
    hyp = check_hyperparams(hyp)
    train, val = as_ratings(train, "train", frames=False), as_ratings(val, "val", frames=False)
    if hyp.model != head.name:  # else the bundle would refuse it only after the whole tuning
        raise InputError(f"hyp.model is {hyp.model!r} but the model's head is {head.name!r}: the recipe must be "
                         "for this model")
    check_item_ids(head, train, "train")
    check_item_ids(head, val, "val")
    check_training_inputs(head, train, val)
    final_max_time = max_time if final_max_time is None else final_max_time
    if final_max_time != math.inf:  # inf: no limit, as tune's max_time (which it defaults to)
        final_max_time = check_float("final_max_time", final_max_time, 0.0, strict=True)
    if path is not None:
        check_writable(path, "path")
    max_gather_bytes = check_int("max_gather_bytes", max_gather_bytes, 0)
    max_iters = check_int("max_iters", max_iters, 1, MAX_EVALS)  # named as here, not as tune's max_evals
    refit = check_bool("refit", refit)  # "no" refitted
    shards = None if shards is None else check_bool("shards", shards)
    sharded = distributed.sharded_backend(backend, group)
    if shards is None:
        shards = sharded is not None and train.n_users * head.d * 4 > max_gather_bytes
    elif shards and sharded is None:
        raise InputError("shards=True writes one file per rank: it needs a sharded run (a torch.distributed group)")

    sub_train, sub_val, sub_hyp = tuning_subsample(train, val, hyp)
    tune_options = dict(max_evals=max_iters, max_time=max_time, n_starts=n_starts, journal=journal, seed=hyp.seed,
                        memory_budget=memory_budget)
    if sharded is None:
        tuned = tune(head, sub_train, sub_val, sub_hyp, backend=backend, **tune_options)
    else:
        tuned = distributed.tune(head, sub_train, sub_val, sub_hyp, backend=sharded, **tune_options)
    if getattr(tuned, "all_diverged", False):
        raise InputError(f"every one of the {tuned.n_evals} tuning points diverged: no learning rate in the "
                         "searched range trains this model on these ratings; check the ratings (their scale) "
                         "and the head")
    log.info("tuned on %d of %d users: lr %.4g, reg %.4g (val loss %.6g, %d evaluations in %d batches)",
             sub_train.n_users, train.n_users, tuned.lr, tuned.reg, tuned.val_loss, tuned.n_evals, tuned.n_batches)

    retrain_hyp = hyp.replace(learning_rate=tuned.lr, regularization=tuned.reg, num_users=train.n_users)
    final = (head, train, val, [tuned.lr], [tuned.reg],
             retrain_hyp.replace(epochs_per_checkpoint=1, patience=hyp.epochs_per_checkpoint))
    options = dict(return_embeddings=True,
                   deadline=None if final_max_time == math.inf else time.monotonic() + final_max_time)
    if sharded is None:
        (probe,) = train_probes(*final, backend=backend, **options)
        shard = None
    else:  # each rank's users' rows stay on it: the refit below trains the same users there
        (probe,) = distributed.train_probes(*final, backend=sharded, gather=False, **options)
        shard = distributed.Shard.of(sharded)
    if probe.diverged:
        log.warning("the retrain diverged after epoch %d; keeping its best checkpoint", probe.best_epoch)
    if probe.stop_reason == "deadline":
        log.warning("the final retrain used its %.0f s budget: keeping its best checkpoint (epoch %d) before early "
                    "stopping chose one", final_max_time, probe.best_epoch)
    embeddings, seen = probe.embeddings, train
    if refit:
        seen = train.union(val)
        if shard is None:
            refitted = train_embeddings(head, seen, retrain_hyp, probe.best_epoch, backend=backend)
        else:
            refitted = distributed.train_embeddings(head, seen, retrain_hyp, probe.best_epoch, sharded,
                                                    owner=shard.owner, gather=False)
        bad = ~torch.isfinite(refitted).all(1)
        n_bad = int(bad.sum()) if shard is None else int(shard.backend.all_reduce_sum(bad.sum().reshape(1))[0])
        if n_bad:
            log.warning("the refit diverged for %d of %d users: they keep the early-stopped rows", n_bad,
                        train.n_users)
        refitted[bad] = embeddings[bad]
        embeddings = refitted
    user_ids = train.user_ids
    if shard is not None and shards:
        user_ids = user_ids[shard.users]
    elif shard is not None:
        embeddings, shard = shard.gather(embeddings), None  # None on the ranks but 0
    table = None if embeddings is None else Model(head, embeddings, user_ids)
    result = RetrainResult(table, probe.best_val_loss, probe.best_epoch, retrain_hyp, tuned, probe.history, refit,
                           seen, probe.stop_reason, shard)
    if path is not None and sharded is not None and not shards:
        distributed.on_rank0(sharded, lambda: result.save(path))
    elif path is not None:
        result.save(path)
    return result
