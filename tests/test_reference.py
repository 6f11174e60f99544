"""The reference backend and the probe trainer: ridge oracle, fold-in, probe independence, checks."""
import numpy as np
import pytest
import torch

from problems import describe_mismatch, random_head, random_ratings, rel_err
from retrain.contract import initial_embeddings, user_key
from retrain.hyperparams import HyperParams
from retrain.ridge import ridge_embeddings
from retrain.trainer import train_embeddings, train_probes


@pytest.mark.parametrize("kind,d", [("biases", 1), ("mf", 4)])
def test_full_batch_sgd_converges_to_ridge(kind, d):
    head = random_head(kind, 15, d, seed=2)
    data = random_ratings(8, 15, counts=[0, 1, 3, 5, 9, 12, 20, 7], seed=1)
    reg = 0.1
    hyp = HyperParams(model="user_item_biases" if kind == "biases" else f"matrix_factorization_{d}",
                      learning_rate=0.15, regularization=reg, optimizer="sgd", batch_size=64)
    emb = train_embeddings(head, data, hyp, epochs=600, backend="reference")
    init = torch.from_numpy(initial_embeddings(user_key(data.user_ids), head.d, 0, head.init_scale(8)))
    exact = ridge_embeddings(head, data, reg, init=init)
    err = rel_err(emb, exact)
    assert err <= 1e-4, f"relative error {err:.3g}: {describe_mismatch(emb, exact, 1e-4)}"
    assert torch.equal(emb[0], init[0])  # the user without ratings keeps its init


def test_fold_in_one_user_reproduces_full_retrain():
    head = random_head("mf", 20, 3, seed=5)
    train, val = random_ratings(12, 20, seed=3).split_per_user(0.3, seed=0)
    hyp = HyperParams(model="matrix_factorization_3", learning_rate=0.05, regularization=1e-3, batch_size=3,
                      max_epochs=12, epochs_per_checkpoint=1, patience=3)
    (full,) = train_probes(head, train, val, [hyp.learning_rate], [hyp.regularization], hyp,
                           backend="reference", return_embeddings=True)
    assert full.best_epoch > 0
    for user in (2, 7):
        one = train_embeddings(head, train.select_users([user]), hyp.replace(num_users=train.n_users),
                               full.best_epoch, backend="reference")
        assert rel_err(one[0], full.embeddings[user]) <= 1e-6


def _problem():
    head = random_head("tower2", 14, 5, 4, seed=9)
    train, val = random_ratings(10, 14, seed=4).split_per_user(0.3, seed=2)
    hyp = HyperParams(model="mlp_5x4", batch_size=4, max_epochs=6, epochs_per_checkpoint=2, patience=1)
    return head, train, val, hyp


def test_probes_together_equal_probes_alone():
    head, train, val, hyp = _problem()
    lrs, regs = [1e-2, 3e-2, 1e-1], [1e-4, 1e-2, 1e-3]
    together = train_probes(head, train, val, lrs, regs, hyp, backend="reference", return_embeddings=True)
    for lr, reg, joint in zip(lrs, regs, together):
        (alone,) = train_probes(head, train, val, [lr], [reg], hyp, backend="reference", return_embeddings=True)
        assert np.allclose(alone.history, joint.history, rtol=1e-6, atol=0)
        assert rel_err(joint.embeddings, alone.embeddings) <= 1e-6


def test_diverging_probe_leaves_others_bit_identical():
    head, train, val, hyp = _problem()
    good = train_probes(head, train, val, [1e-2, 3e-2], [1e-4, 1e-3], hyp, backend="reference", return_embeddings=True)
    mixed = train_probes(head, train, val, [1e-2, 1e30, 3e-2], [1e-4, 1e30, 1e-3], hyp, backend="reference",
                         return_embeddings=True)
    assert mixed[1].diverged and not mixed[0].diverged and not mixed[2].diverged
    assert np.isfinite(mixed[1].best_val_loss)  # the init checkpoint is still a finite best
    for a, b in ((mixed[0], good[0]), (mixed[2], good[1])):
        assert a.history == b.history and torch.equal(a.embeddings, b.embeddings)


def test_early_stopping_and_best_state():
    head, train, val, hyp = _problem()
    hyp = hyp.replace(max_epochs=40, epochs_per_checkpoint=1, patience=0)
    (r,) = train_probes(head, train, val, [0.5], [0.0], hyp, backend="reference", return_embeddings=True)
    losses = [loss for _, loss in r.history]
    assert losses[-1] >= losses[-2]  # stopped at the first checkpoint that did not improve
    assert all(b < a for a, b in zip(losses[:-2], losses[1:-1]))
    assert r.best_epoch == r.history[-2][0] and r.best_val_loss == min(losses)
    again = train_embeddings(head, train, hyp.replace(learning_rate=0.5, regularization=0.0), r.best_epoch,
                             backend="reference")
    assert torch.equal(again, r.embeddings)


def test_memory_budget_splits_into_groups():
    head, train, val, hyp = _problem()
    lrs, regs = [1e-2, 2e-2, 3e-2], [1e-3] * 3
    whole = train_probes(head, train, val, lrs, regs, hyp, backend="reference")
    split = train_probes(head, train, val, lrs, regs, hyp, backend="reference", memory_budget=1)
    assert np.allclose([r.history for r in whole], [r.history for r in split], rtol=1e-6, atol=0)


def test_users_without_train_or_val_ratings():
    head = random_head("mf", 10, 2)
    data = random_ratings(6, 10, counts=[0, 1, 2, 5, 8, 4], seed=0)
    train, val = data.split_per_user(0.25, seed=0)  # users 0 and 1 have no val ratings
    assert val.counts[1] == 0 and train.counts[0] == 0
    hyp = HyperParams(model="matrix_factorization_2", max_epochs=4, epochs_per_checkpoint=2)
    (r,) = train_probes(head, train, val, [1e-2], [1e-3], hyp, backend="reference")
    assert all(np.isfinite(loss) for _, loss in r.history)
    empty_val = val._subset_rows(np.zeros(val.nnz, bool))
    (r,) = train_probes(head, train, empty_val, [1e-2], [1e-3], hyp, backend="reference")
    assert [loss for _, loss in r.history] == [0.0] * len(r.history)


def test_bad_training_input_is_named():
    head = random_head("mf", 10, 2)
    train, val = random_ratings(5, 10, seed=0).split_per_user(0.3)
    hyp = HyperParams(model="matrix_factorization_2")
    with pytest.raises(ValueError, match="train has 10 items but the head has 12"):
        train_probes(random_head("mf", 12, 2), train, val, [1e-2], [0.0], hyp, backend="reference")
    with pytest.raises(ValueError, match="same users"):
        train_probes(head, train, val.select_users([0, 1]), [1e-2], [0.0], hyp, backend="reference")
    with pytest.raises(ValueError, match="same length"):
        train_probes(head, train, val, [1e-2, 1e-3], [0.0], hyp, backend="reference")
    with pytest.raises(ValueError, match="lrs must be finite"):
        train_probes(head, train, val, [np.nan], [0.0], hyp, backend="reference")
    with pytest.raises(ValueError, match="unknown backend"):
        train_probes(head, train, val, [1e-2], [0.0], hyp, backend="fast")
    with pytest.raises(ValueError, match="unknown model name"):
        HyperParams(model="matrix_factorisation_8")


def test_ridge_rejects_nonlinear_heads():
    with pytest.raises(ValueError, match="linear head"):
        ridge_embeddings(random_head("tower1", 5, 2), random_ratings(3, 5, counts=[1, 2, 3]), 0.1)
