"""The reference backend: the closed-form ridge oracle, fold-in, any HeadLike head, input checks."""
import dataclasses
import math

import numpy as np
import pytest
import torch

from problems import describe_mismatch, random_head, random_ratings, rel_err
from retrain.contract import initial_embeddings, permutation, user_key
from retrain.data import Ratings
from retrain.heads import Head, HeadLike
from retrain.hyperparams import HyperParams
from retrain.errors import InputError
from retrain.ridge import ridge_embeddings
from retrain.trainer import train_embeddings, train_probes


@pytest.mark.parametrize("kind,d", [("biases", 1), ("mf", 4)])
def test_full_batch_sgd_converges_to_ridge(kind, d):
    head = random_head(kind, 15, d, seed=2)
    data = random_ratings(8, 15, counts=[0, 1, 3, 5, 9, 12, 20, 7], seed=1)
    reg = 0.1
    hyp = HyperParams(model="user_item_biases" if kind == "biases" else f"matrix_factorization_{d}",
                      learning_rate=0.15, regularization=reg, optimizer="sgd", batch_size=64,
                      damping=1.0)  # (5, the default, makes a step of lr 0.15 diverge on a one-rating user)
    emb = train_embeddings(head, data, hyp, epochs=600, backend="reference")
    init = torch.from_numpy(initial_embeddings(user_key(data.user_ids), head.d, 0, head.init_scale(8)))
    exact = ridge_embeddings(head, data, reg, init=init, damping=hyp.damping)  # the same objective
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


class SoftplusHead:
    """A head the dense Head cannot express: ``pred = softplus(e . Q_i) + b_i``, in plain PyTorch."""

    init = "glorot"

    def __init__(self, n_items, d, seed):
        g = torch.Generator().manual_seed(seed)
        self.q = torch.randn(n_items, d, generator=g)
        self.b = torch.rand(n_items, generator=g) * 3

    n_items = property(lambda self: self.q.shape[0])
    d = property(lambda self: self.q.shape[1])

    def init_scale(self, n_users):
        return float(np.sqrt(6.0 / (self.d + n_users)))

    def scores(self, emb, items):
        return torch.nn.functional.softplus(emb @ self.q[items].T) + self.b[items]


def test_reference_trains_any_head_like_object():
    head = SoftplusHead(9, 3, seed=1)
    assert isinstance(head, HeadLike) and not isinstance(head, Head)
    data = random_ratings(5, 9, seed=2)
    hyp = HyperParams(model="matrix_factorization_3", learning_rate=0.05, regularization=1e-3, batch_size=2, seed=4,
                      damping=0.0)  # the oracle's loss (tests/test_backend_parity.py checks the damping)
    emb = train_embeddings(head, data, hyp, epochs=3)  # "auto" picks the reference for such a head
    keys = user_key(data.user_ids)
    init = initial_embeddings(keys, 3, hyp.seed, head.init_scale(data.n_users))
    for u in range(data.n_users):  # the oracle: torch.optim.Adam on the user alone
        e = torch.nn.Parameter(torch.from_numpy(init[u]).clone())
        opt = torch.optim.Adam([e], lr=hyp.learning_rate)
        rows = slice(data.indptr[u], data.indptr[u + 1])
        items, r, w = (torch.from_numpy(a[rows]) for a in (data.items, data.ratings, data.weights))
        for epoch in range(3):
            order = torch.from_numpy(permutation(hyp.seed, epoch, int(keys[u]), len(items)))
            for first in range(0, len(items), 2):
                c = order[first:first + 2]
                loss = (w[c] * (head.scores(e[None], items[c])[0] - r[c]) ** 2).mean() + hyp.regularization * (e * e).sum()
                opt.zero_grad()
                loss.backward()
                opt.step()
        assert rel_err(emb[u], e.detach()) <= 1e-5, u
    with pytest.raises(ValueError, match="backend 'cpu' trains retrain.Head"):
        train_embeddings(head, data, hyp, epochs=1, backend="cpu")


class ReshapedHead(SoftplusHead):
    """A SoftplusHead whose ``scores`` output is passed through ``change`` (a broken head)."""

    def __init__(self, change, d=3):
        super().__init__(9, d, seed=1)
        self.change = change

    def scores(self, emb, items):
        return self.change(super().scores(emb, items))


@pytest.mark.parametrize("change,message", [
    (lambda s: s[:, :1], r"must return \[1, \d+\], got \[1, 1\]"),  # broadcast: trained wrong numbers
    (lambda s: s[:1, :1], r"must return \[1, \d+\], got \[1, 1\]"),
    (lambda s: s[0], r"must return \[1, \d+\], got \[\d+\]"),  # was an IndexError inside the step
    (lambda s: s.T, r"got \[\d+, 1\]"),
    (lambda s: s.detach(), "differentiable in emb"),  # trained the regulariser alone
    (lambda s: s.long(), "floating-point torch tensor, got a torch.int64"),  # truncated predictions
    (lambda s: s.detach().numpy(), "floating-point torch tensor, got a ndarray"),  # a TypeError inside
])
def test_a_head_like_whose_scores_are_malformed_is_named(change, message):
    data = random_ratings(5, 9, seed=2)
    hyp = HyperParams(model="matrix_factorization_3", batch_size=2)
    with pytest.raises(InputError, match=message):
        train_embeddings(ReshapedHead(change), data, hyp, epochs=1)


def test_an_object_that_is_no_head_like_is_named():
    data = random_ratings(5, 9, seed=2)
    hyp = HyperParams(model="matrix_factorization_3")
    with pytest.raises(InputError, match="implement retrain.heads.HeadLike; a object has no n_items, d, init"):
        train_embeddings(object(), data, hyp, epochs=1)  # was an AttributeError
    with pytest.raises(InputError, match=r"head.d must be an integer in \[1, 2\*\*63 - 1\], got 0"):
        train_embeddings(ReshapedHead(lambda s: s, d=0), data, hyp, epochs=1)  # was a RuntimeError inside
    for scale in (math.nan, -1.0):  # every probe "diverged" at epoch 0
        head = ReshapedHead(lambda s: s)
        head.init_scale = lambda n_users: scale
        with pytest.raises(InputError, match=r"head.init_scale\(5\) must be a finite number >= 0"):
            train_embeddings(head, data, hyp, epochs=1)


def test_bad_training_input_is_named():
    head = random_head("mf", 10, 2)
    train, val = random_ratings(5, 10, seed=0).split_per_user(0.3)
    hyp = HyperParams(model="matrix_factorization_2")
    with pytest.raises(InputError, match="train has 10 items but the head has 12"):
        train_probes(random_head("mf", 12, 2), train, val, [1e-2], [0.0], hyp, backend="reference")
    with pytest.raises(ValueError, match="same users"):
        train_probes(head, train, val.select_users([0, 1]), [1e-2], [0.0], hyp, backend="reference")
    with pytest.raises(ValueError, match="same length"):
        train_probes(head, train, val, [1e-2, 1e-3], [0.0], hyp, backend="reference")
    other = dataclasses.replace(val, user_ids=val.user_ids[::-1].copy())  # as many users, other ids
    with pytest.raises(InputError, match=rf"same order: row 0 is user {train.user_ids[0]} in train, "
                                         rf"{train.user_ids[-1]} in val"):  # said "got 5 and 5 users"
        train_probes(head, train, other, [1e-2], [0.0], hyp, backend="reference")
    with pytest.raises(ValueError, match="lrs must be finite"):
        train_probes(head, train, val, [np.nan], [0.0], hyp, backend="reference")
    with pytest.raises(ValueError, match="unknown backend"):
        train_probes(head, train, val, [1e-2], [0.0], hyp, backend="fast")
    # These used to raise a bare ValueError or TypeError from numpy or a comparison deep inside.
    with pytest.raises(InputError, match=r"lrs must be a non-empty 1-d sequence of numbers, got \['0.01', 'a'\]"):
        train_probes(head, train, val, ["0.01", "a"], [0.0, 0.0], hyp, backend="reference")
    with pytest.raises(InputError, match=r"at most 3.40282e\+38 \(float32's range\), got 1e\+39"):
        train_probes(head, train, val, [1e-2, 1e-2], [0.0, 1e39], hyp, backend="reference")  # was "diverged"
    with pytest.raises(InputError, match="at least float32's smallest number .* got 1e-50"):
        train_probes(head, train, val, [1e-2, 1e-50], [0.0, 0.0], hyp, backend="reference")  # trained lr 0
    with pytest.raises(InputError, match="got 1e-50"):
        train_embeddings(head, train, hyp.replace(learning_rate=1e-50), epochs=2, backend="reference")
    for backend in ("reference", "cpu"):  # the cpu kernel segfaulted (int64 overflow of n + batch_size - 1)
        with pytest.raises(InputError, match=r"batch_size must be an integer in \[1, 4611686018427387904\]"):
            train_embeddings(head, train, hyp.replace(batch_size=2**63 - 16), epochs=1, backend=backend)
    with pytest.raises(InputError, match="memory_budget must be a finite number >= 0, got nan"):
        train_probes(head, train, val, [1e-2], [0.0], hyp, backend="reference", memory_budget=float("nan"))
    with pytest.raises(InputError, match="deadline must be a number, got '10'"):
        train_probes(head, train, val, [1e-2], [0.0], hyp, backend="reference", deadline="10")
    with pytest.raises(ValueError, match="unknown model name"):
        HyperParams(model="matrix_factorisation_8")


def test_ridge_rejects_nonlinear_heads():
    with pytest.raises(ValueError, match="linear head"):
        ridge_embeddings(random_head("tower1", 5, 2), random_ratings(3, 5, counts=[1, 2, 3]), 0.1)


@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
def test_hand_built_ratings_outside_the_item_table_are_refused_before_any_backend_runs(backend):
    head = random_head("mf", 10, 2)
    good = random_ratings(4, 10, counts=[2, 3, 1, 2], seed=1)
    hyp = HyperParams(model="matrix_factorization_2")
    for value, match in ((-1, r"row 0 has an item index < 0 \(-1\)"), (10, r"row 0 has an item index >= 10")):
        items = good.items.copy()
        items[0] = value
        bad = Ratings(good.indptr, items, good.ratings, good.weights, good.user_ids, good.item_ids)
        with pytest.raises(InputError, match=match):
            train_probes(head, bad, good, [1e-2], [0.0], hyp, backend=backend)
    broken = Ratings(good.indptr[::-1].copy(), good.items, good.ratings, good.weights, good.user_ids, good.item_ids)
    with pytest.raises(InputError, match="indptr must start at 0"):
        train_embeddings(head, broken, hyp, 1, backend=backend)


def test_a_memory_budget_below_one_probe_trains_one_at_a_time_and_says_so(caplog):
    head = random_head("mf", 10, 2)
    train, val = random_ratings(5, 10, seed=0).split_per_user(0.3)
    hyp = HyperParams(model="matrix_factorization_2", max_epochs=2)
    want = train_probes(head, train, val, [1e-2, 1e-1], [0.0, 0.0], hyp, backend="reference")
    with caplog.at_level("WARNING", logger="retrain.trainer"):
        got = train_probes(head, train, val, [1e-2, 1e-1], [0.0, 0.0], hyp, backend="reference", memory_budget=1)
    assert [r.history for r in got] == [r.history for r in want]  # the oracle: one batch of both
    assert "below one probe's state" in caplog.text
