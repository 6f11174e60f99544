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
from dataclasses import dataclass, field

from .data import Ratings, sample_users
from .heads import Model
from .hyperparams import HyperParams
from .serving import check_item_ids
from .trainer import check_training_inputs, train_probes
from .tuner import TuneResult, tune

log = logging.getLogger("retrain")


@dataclass
class RetrainResult:
    """What ``retrain_user_embeddings`` returns.

    ``model``: the same head with the retrained user table (``train``'s users);
    ``val_loss``: its weighted mean squared validation error; ``epochs``: the epoch count of the
    kept checkpoint; ``hyp``: the tuned hyper-parameters with ``num_users`` set to the full user
    count, so that ``fold_in(head, ratings, hyp, epochs)`` reproduces a retrained user's row;
    ``tune``: the tuning run; ``history``: the final retrain's ``(epoch, val_loss)`` checkpoints.
    """

    model: Model
    val_loss: float
    epochs: int
    hyp: HyperParams
    tune: TuneResult
    history: list = field(default_factory=list)


def tuning_subsample(train: Ratings, val: Ratings, hyp: HyperParams) -> tuple[Ratings, Ratings, HyperParams]:
    """The seeded ``hyp.subsampling_factor`` of the users that tuning trains on, and ``hyp`` with
    ``num_users`` set to the subsample's size (the Glorot bound follows the subsample, as in the seed)."""
    users = sample_users(train.n_users, hyp.subsampling_factor, hyp.seed)
    return train.select_users(users), val.select_users(users), hyp.replace(num_users=len(users))


def retrain_user_embeddings(model: Model, train: Ratings, val: Ratings, hyp: HyperParams, max_iters: int = 64, *,
                            backend="auto", path=None, journal=None, n_starts: int = 8,
                            max_time: float = 3600.0) -> RetrainResult:
    """Re-initialise and retrain every user embedding of ``model`` against its frozen head.

    1. Tune ``(lr, reg)`` with ``tune`` (``max_iters`` evaluations, ``n_starts`` lock-step starts,
       ``max_time`` seconds, optional ``journal``) on a seeded subsample of
       ``hyp.subsampling_factor`` of the users; as in the seed, the Glorot bound of the init
       follows the subsample's user count.  Each evaluation early-stops as ``hyp`` says (a
       checkpoint every ``hyp.epochs_per_checkpoint`` epochs, ``hyp.patience``, 0 in the seed).
    2. Retrain all users with the tuned values, a checkpoint every epoch and patience
       ``hyp.epochs_per_checkpoint``, and keep the best checkpoint and its epoch count.
    3. Save the new model atomically to ``path`` when given.

    ``train`` and ``val`` hold the same users (``val`` may leave some users without ratings) and
    index items as ``model.head`` does.  ``val`` must be ratings the head never saw: see the
    module docstring.  ``hyp.num_users`` is ignored: the pipeline sets it from the data.
    """
    head = model.head
    check_item_ids(head, train, "train")
    check_item_ids(head, val, "val")
    check_training_inputs(head, train, val)

    sub_train, sub_val, sub_hyp = tuning_subsample(train, val, hyp)
    tuned = tune(head, sub_train, sub_val, sub_hyp, max_evals=max_iters, max_time=max_time, n_starts=n_starts,
                 journal=journal, backend=backend, seed=hyp.seed)
    log.info("tuned on %d of %d users: lr %.4g, reg %.4g (val loss %.6g, %d evaluations in %d batches)",
             sub_train.n_users, train.n_users, tuned.lr, tuned.reg, tuned.val_loss, tuned.n_evals, tuned.n_batches)

    retrain_hyp = hyp.replace(learning_rate=tuned.lr, regularization=tuned.reg, num_users=train.n_users)
    (probe,) = train_probes(head, train, val, [tuned.lr], [tuned.reg],
                            retrain_hyp.replace(epochs_per_checkpoint=1, patience=hyp.epochs_per_checkpoint),
                            backend=backend, return_embeddings=True)
    if probe.diverged:
        log.warning("the retrain diverged after epoch %d; keeping its best checkpoint", probe.best_epoch)
    new_model = Model(head, probe.embeddings, train.user_ids)
    if path is not None:
        new_model.save(path)
    return RetrainResult(new_model, probe.best_val_loss, probe.best_epoch, retrain_hyp, tuned, probe.history)
