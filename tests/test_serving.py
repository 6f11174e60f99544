"""Serving: fold-in reproduces the retrain's rows; recommend matches a brute-force top-k."""
import dataclasses

import numpy as np
import pytest
import torch

import retrain.ridge
import retrain.serving as serving
from problems import random_head, random_ratings, rel_err
from retrain.backends import available_backends
from retrain.data import Ratings
from retrain.errors import InputError
from retrain.heads import Head, Layer, Model
from retrain.hyperparams import HyperParams
from retrain.ridge import ridge_embeddings
from retrain.serving import fold_in, recommend
from retrain.trainer import train_embeddings, train_probes

# Triton runs under the interpreter without a GPU: too slow for several epochs here.
BACKENDS = [b for b in ("reference", "cpu") if b in available_backends()]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["mf", "tower2"])
def test_fold_in_of_held_out_users_equals_the_full_retrain(backend, kind):
    head = random_head(kind, n_items=25, d=4, seed=1)
    train = random_ratings(30, 25, seed=2)
    val = train  # random ratings have no signal to validate on; this test is about reproducing rows
    hyp = HyperParams(model="mlp_4x4" if kind != "mf" else "matrix_factorization_4", learning_rate=0.03,
                      regularization=1e-3, batch_size=4, max_epochs=9, epochs_per_checkpoint=1, patience=2,
                      num_users=train.n_users)
    (probe,) = train_probes(head, train, val, [hyp.learning_rate], [hyp.regularization], hyp, backend=backend,
                            return_embeddings=True)
    assert probe.best_epoch > 0
    held = np.array([0, 1, 2, 7, 19, 29])  # users with 0, 1 and many ratings among them
    new_users = train.select_users(held)
    emb = fold_in(head, new_users, hyp, probe.best_epoch, backend=backend)
    assert emb.shape == (len(held), head.d)
    assert rel_err(emb, probe.embeddings[held]) <= 1e-6
    # The serving recipe on all users gives the same rows too.
    everyone = train_embeddings(head, train, hyp, probe.best_epoch, backend=backend)
    assert rel_err(emb, everyone[held]) <= 1e-6


def test_fold_in_checks_its_inputs():
    head = random_head("mf", n_items=10, d=3)
    data = random_ratings(5, 10)
    with pytest.raises(ValueError, match="num_users"):
        fold_in(head, data, HyperParams(model="matrix_factorization_3"), 2)
    other_items = Ratings(data.indptr, data.items, data.ratings, data.weights, data.user_ids, np.arange(100, 110))
    with pytest.raises(ValueError, match="with_items"):
        fold_in(head, other_items, HyperParams(model="matrix_factorization_3", num_users=5), 2)
    with pytest.raises(ValueError, match="epochs"):
        fold_in(head, data, HyperParams(model="matrix_factorization_3", num_users=5), -1)


def test_fold_in_ridge_solver_is_the_closed_form():
    head = random_head("mf", n_items=12, d=3, seed=4)
    data = random_ratings(6, 12, counts=[0, 2, 5, 9, 3, 4], seed=5)
    hyp = HyperParams(model="matrix_factorization_3", regularization=0.05, num_users=6)
    init = train_embeddings(head, data, hyp, 0, backend="reference")
    emb = fold_in(head, data, hyp, epochs=0, solver="ridge")
    assert torch.equal(emb[0], init[0])  # no ratings: the init
    assert rel_err(emb, ridge_embeddings(head, data, 0.05, init=init, damping=hyp.damping)) <= 1e-7
    with pytest.raises(ValueError, match="solver"):
        fold_in(head, data, hyp, 1, solver="als")
    with pytest.raises(ValueError, match="linear head"):
        fold_in(random_head("tower1", n_items=12, d=3), data, hyp, 1, solver="ridge")


def _ridge_by_lstsq(head, data, reg, damping):
    """Oracle: each user's ridge solution as the least-squares solution of the stacked system
    ``[sqrt(w/n) A; sqrt(reg + damping/n) I] e = [sqrt(w/n) (r - c); 0]`` (no normal equations)."""
    A, c = (t.numpy() for t in head.linear_form())
    out = np.zeros((data.n_users, A.shape[1]))
    for u in range(data.n_users):
        rows = slice(data.indptr[u], data.indptr[u + 1])
        n = rows.stop - rows.start
        if n == 0:
            continue
        scale = np.sqrt(data.weights[rows].astype(np.float64) / n)[:, None]
        X = np.vstack([scale * A[data.items[rows]], np.sqrt(reg + damping / n) * np.eye(A.shape[1])])
        y = np.concatenate([scale[:, 0] * (data.ratings[rows] - c[data.items[rows]]), np.zeros(A.shape[1])])
        out[u] = np.linalg.lstsq(X, y, rcond=None)[0]
    return out


@pytest.mark.parametrize("n_users", [3, 12])  # the user-by-user path (<= 8 users) and the bucketed one
def test_fold_in_ridge_solver_minimises_the_damped_training_objective(n_users):
    # solver="ridge" solves the training loss's full-batch objective, damping included:
    # (1/n) sum w err^2 + (reg + damping / n) ||e||^2.
    head = random_head("mf", n_items=15, d=4, seed=8)
    data = random_ratings(n_users, 15, counts=np.arange(n_users) % 5 + 1, seed=9)
    hyp = HyperParams(model="matrix_factorization_4", regularization=0.01, damping=2.0, num_users=n_users)
    emb = fold_in(head, data, hyp, epochs=0, solver="ridge").double().numpy()
    np.testing.assert_allclose(emb, _ridge_by_lstsq(head, data, 0.01, 2.0), rtol=1e-6, atol=1e-7)  # float32 rows
    assert np.abs(emb - _ridge_by_lstsq(head, data, 0.01, 0.0)).max() > 1e-2  # and the damping is not ignored


@pytest.mark.parametrize("kind", ["mf", "linear_tower"])
@pytest.mark.parametrize("n_users", [1, 5, 20])  # one user, the user-by-user path (<= 8), the bucketed path
@pytest.mark.parametrize("scipy", [True, False])  # the user-by-user path's Cholesky, or numpy's solve without scipy
def test_ridge_solver_paths_equal_a_least_squares_oracle(kind, n_users, scipy, monkeypatch):
    if not scipy:
        monkeypatch.setattr(retrain.ridge, "_dposv", lambda: None)
    if kind == "mf":
        head = random_head("mf", n_items=15, d=4, seed=6)
    else:  # two identity layers: linear, but through linear_form's tower composition
        g = torch.Generator().manual_seed(6)
        head = Head(torch.randn(15, 3, generator=g), torch.randn(15, generator=g), 3.5,
                    (Layer(torch.randn(5, 4, generator=g), torch.randn(5, generator=g), "identity"),
                     Layer(torch.randn(3, 5, generator=g), torch.randn(3, generator=g), "identity")), name="mlp_4x3")
    data = random_ratings(n_users, 15, counts=np.arange(n_users) % 7 + 1, seed=7)
    data = Ratings(data.indptr, data.items, data.ratings, np.linspace(0.5, 2.0, data.nnz).astype(np.float32),
                   data.user_ids, data.item_ids)
    got = ridge_embeddings(head, data, 0.03, damping=0.5).numpy()
    np.testing.assert_allclose(got, _ridge_by_lstsq(head, data, 0.03, 0.5), rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("scipy", [True, False])
def test_ridge_solver_refuses_a_singular_system(scipy, monkeypatch):
    if not scipy:
        monkeypatch.setattr(retrain.ridge, "_dposv", lambda: None)
    head = random_head("mf", n_items=6, d=4, seed=1)
    one_rating = random_ratings(1, 6, counts=[1], seed=2)  # rank 1 < d = 4 and no regularisation
    with pytest.raises(InputError, match="singular"):
        ridge_embeddings(head, one_rating, 0.0)



@pytest.mark.parametrize("n_users", [1, 12])  # the user-by-user path, the bucketed path
@pytest.mark.parametrize("scipy", [True, False])
def test_ridge_solver_refuses_a_rank_deficient_system_without_an_exact_zero_pivot(n_users, scipy, monkeypatch):
    # Three ratings span at most 3 of d = 4 dimensions: with reg = 0 every user's system is
    # singular, but rounding leaves no exact zero pivot, so the solves returned one of infinitely
    # many minimisers (seed 1: on all four paths).
    if not scipy:
        monkeypatch.setattr(retrain.ridge, "_dposv", lambda: None)
    head = random_head("mf", n_items=6, d=4, seed=1)
    data = random_ratings(n_users, 6, counts=[3] * n_users, seed=1)
    with pytest.raises(InputError, match=rf"singular for user ids 1000\b.*\({n_users} of them\).*d = 4"):
        ridge_embeddings(head, data, 0.0)
    ridge_embeddings(head, data, 1e-9)  # a little regularisation makes every system regular
    with pytest.raises(InputError, match="reg must be .* <= 3.40282e"):  # n * 1e308 is inf: no system at all
        ridge_embeddings(head, data, 1e308)


def test_ridge_serves_a_head_edited_in_place_with_its_new_values():
    # The ridge path caches the item table as numpy arrays per head: an in-place edit of the
    # head's tensors must reach the next request (else: the old biases, silently).
    head = random_head("mf", n_items=15, d=4, seed=6)
    data = random_ratings(3, 15, counts=np.array([4, 6, 2]), seed=7)
    before = ridge_embeddings(head, data, 0.03).numpy()
    with torch.no_grad():
        head.item_bias.add_(0.5)
        head.item_vectors.mul_(2.0)
    fresh = dataclasses.replace(head, item_vectors=head.item_vectors.clone(), item_bias=head.item_bias.clone())
    np.testing.assert_allclose(ridge_embeddings(head, data, 0.03).numpy(), _ridge_by_lstsq(fresh, data, 0.03, 0.0),
                               rtol=1e-9, atol=1e-10)
    assert not np.allclose(ridge_embeddings(head, data, 0.03).numpy(), before)


def _brute_force(head, emb, k, seen=None):
    scores = torch.stack([head.predict(emb, torch.full((len(emb),), i)) for i in range(head.n_items)], dim=1)
    if seen is not None:
        for u in range(seen.n_users):
            scores[u, seen.items[seen.indptr[u]:seen.indptr[u + 1]]] = -torch.inf
    return torch.topk(scores, k, dim=1)


@pytest.mark.parametrize("kind", ["mf", "tower1"])
def test_recommend_matches_brute_force(kind, monkeypatch):
    head = random_head(kind, n_items=40, d=5, seed=3)
    emb = torch.randn(9, head.d, generator=torch.Generator().manual_seed(4))
    seen = random_ratings(9, 40, counts=[0, 1, 3, 5, 8, 12, 2, 4, 6], seed=5)
    items, scores = recommend(head, emb, k=6, backend="reference")
    top = _brute_force(head, emb, 6)
    assert items.dtype == torch.int64 and items.shape == scores.shape == (9, 6)
    assert torch.equal(items, top.indices) and torch.allclose(scores, top.values, atol=1e-5)

    monkeypatch.setattr(serving, "SCORE_BLOCK_BYTES", 4 * 40 * 2)  # two users per block
    items, scores = recommend(head, emb, k=6, exclude_seen=seen, backend="reference")
    top = _brute_force(head, emb, 6, seen)
    assert torch.equal(items, top.indices) and torch.allclose(scores, top.values, atol=1e-5)
    for u in range(9):
        assert not set(items[u].tolist()) & set(seen.items[seen.indptr[u]:seen.indptr[u + 1]].tolist())


def test_recommend_from_a_model_and_when_few_items_are_left():
    head = random_head("mf", n_items=4, d=2)
    model = Model(head, torch.randn(3, 2), np.array([10, 11, 12]))
    seen = Ratings.from_coo([0, 0, 0, 1, 1, 1, 1], [0, 1, 2, 0, 1, 2, 3], [4.0] * 7, n_users=3, n_items=4)
    items, scores = recommend(model, k=2, exclude_seen=seen, backend="reference")
    assert items.shape == (3, 2)
    assert torch.isfinite(scores[0, 0]) and scores[0, 1] == -torch.inf  # one unseen item left
    assert torch.all(scores[1] == -torch.inf)  # every item seen
    assert torch.all(torch.isfinite(scores[2]))


@pytest.mark.parametrize("call, match", [
    (lambda h, m: recommend(h, k=3), "embeddings are required"),
    (lambda h, m: recommend(m, k=0), "k must be"),
    (lambda h, m: recommend(m, k=11), "k must be"),
    (lambda h, m: recommend(m, k=2.0), "k must be"),
    (lambda h, m: recommend(h, torch.zeros(2, 5), k=3), r"\[n, d=3\]"),
    (lambda h, m: recommend(m, k=3, exclude_seen=random_ratings(4, 10)), "4 users"),
    (lambda h, m: recommend("head", torch.zeros(2, 3)), "Model or a Head"),
])
def test_recommend_checks_its_inputs(call, match):
    head = random_head("mf", n_items=10, d=3)
    model = Model(head, torch.zeros(2, 3), np.array([1, 2]))
    with pytest.raises(ValueError, match=match):
        call(head, model)
