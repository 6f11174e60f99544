"""One parity suite, written once and run for every backend present (reference, cpu, triton).

Oracles that are not the code under test: ``torch.optim.Adam`` / ``torch.optim.SGD`` run per user
on the contract's schedule (for every backend, the reference included), and the ``reference``
backend (for the fast ones).  Float32 everywhere; the fast backends may sum in another order and
fuse multiply-adds, so they agree to rounding, not bitwise: 1e-5 relative after several epochs
of Adam (a few hundred float32 operations per element, each within 6e-8).

Then the trainer's behaviour, for every backend through the same prepared-problem interface:
early stopping, best-state keeping, divergence, memory groups, checkpoint cadence, batches reusing
one problem.  Under the Triton interpreter every program runs in Python: those cases stay small.
"""
import math
import os
import time

import numpy as np
import pytest
import torch

from problems import describe_mismatch, random_head, random_ratings, rel_err
from retrain.backends import available_backends
from retrain.contract import initial_embeddings, permutation, user_key
from retrain.data import Ratings
from retrain.errors import InputError
from retrain.heads import Head
from retrain.hyperparams import HyperParams
from retrain.trainer import prepare, run_probes, train_embeddings, train_probes

FAST = [b for b in ("cpu", "triton") if b in available_backends()]
ALL = ["reference"] + FAST
TOL = 1e-5
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
NO_FAST = [pytest.param("none", marks=pytest.mark.skip("no fast backend built"))]


def _hyp(kind, d, **changes):
    model = "user_item_biases" if kind == "biases" else f"matrix_factorization_{d}" if kind == "mf" else f"mlp_{d}x{d}"
    return HyperParams(model=model, **changes)


def _train(backend, head, data, lrs, regs, *, batch_size, optimizer, epochs, seed=3):
    """Embeddings ``[U, P, d]`` and validation losses after ``1 + epochs`` epochs, trained in two
    calls (a fresh start, then a call that resumes from the state at epoch 1)."""
    hyp = _hyp("mf", head.d, batch_size=batch_size, optimizer=optimizer, seed=seed)
    problem = prepare(head, data, data, hyp, backend)
    problem.start(lrs, regs)
    problem.train(1)
    checkpoint = problem.checkpoint(epochs)
    return problem.embeddings().cpu().clone(), checkpoint.losses


def torch_optim_embeddings(head, data, lr, reg, *, batch_size, optimizer, epochs, seed, n_users_for_init=None,
                           damping=0.0):
    """The oracle: each user trained alone by ``torch.optim`` on the contract's schedule.

    ``L_C = mean_C w (pred - r)^2 + reg_u ||e||^2`` per minibatch of the user's permutation of the
    epoch, Adam(0.9, 0.999, 1e-8) or SGD, the user's own step count (a fresh optimizer per user);
    ``reg_u = fl32(reg + fl32(damping / n))`` for the user's ``n`` ratings (docs/semantics.md).
    """
    keys = user_key(data.user_ids)
    init = initial_embeddings(keys, head.d, seed, head.init_scale(n_users_for_init or data.n_users))
    out = torch.from_numpy(init).clone()
    for u in range(data.n_users):
        start, n = int(data.indptr[u]), int(data.counts[u])
        e = torch.nn.Parameter(out[u].clone())
        reg_u = float(np.float32(reg) + np.float32(damping) / np.float32(max(n, 1)))  # float32 ops, exact as float
        opt = (torch.optim.Adam([e], lr=lr, betas=(0.9, 0.999), eps=1e-8) if optimizer == "adam"
               else torch.optim.SGD([e], lr=lr))
        items = torch.from_numpy(data.items[start:start + n])
        ratings, weights = torch.from_numpy(data.ratings[start:start + n]), torch.from_numpy(data.weights[start:start + n])
        for epoch in range(epochs):
            order = torch.from_numpy(permutation(seed, epoch, int(keys[u]), n))
            for first in range(0, n, batch_size):
                rows = order[first:first + batch_size]
                pred = head.scores(e[None], items[rows])[0]
                loss = (weights[rows] * (pred - ratings[rows]) ** 2).mean() + reg_u * (e * e).sum()
                opt.zero_grad()
                loss.backward()
                opt.step()
        out[u] = e.detach()
    return out


# --------------------------------------------------------------------------- the step

CASES = [  # kind, d, h, P, batch, optimizer
    ("biases", 1, 1, 5, 7, "adam"),
    ("mf", 1, 1, 1, 1, "sgd"),
    ("mf", 3, 3, 5, 7, "adam"),
    ("mf", 16, 16, 64, 64, "adam"),
    ("mf", 32, 32, 5, 7, "sgd"),
    ("mf", 64, 64, 5, 64, "adam"),
    ("tower1", 5, 7, 5, 7, "adam"),
    ("tower2", 6, 4, 5, 7, "sgd"),
    ("tower2", 16, 8, 64, 1, "adam"),
]


@pytest.mark.parametrize("backend", FAST or NO_FAST)
@pytest.mark.parametrize("kind,d,h,P,batch,optimizer", CASES)
def test_matches_reference(backend, kind, d, h, P, batch, optimizer):
    if INTERPRETED and backend == "triton" and P * max(d, h) > 400:
        pytest.skip("too slow under the Triton interpreter")
    head = random_head(kind, 23, d, h, seed=d + P)
    data = random_ratings(9, 23, seed=P + batch)
    rng = np.random.default_rng(batch)
    lrs = (10 ** rng.uniform(-3, -1, P)).tolist()
    regs = (10 ** rng.uniform(-5, -1, P)).tolist()
    args = dict(batch_size=batch, optimizer=optimizer, epochs=2)
    emb, loss = _train(backend, head, data, lrs, regs, **args)
    ref_emb, ref_loss = _train("reference", head, data, lrs, regs, **args)
    err = rel_err(emb, ref_emb)
    assert err <= TOL, f"embeddings differ by {err:.3g}: {describe_mismatch(emb, ref_emb, TOL)}"
    err = rel_err(loss, ref_loss)
    assert err <= TOL, f"val losses differ by {err:.3g}: {describe_mismatch(loss, ref_loss, TOL)}"


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("kind,d,h,optimizer,batch,P,damping", [
    ("mf", 3, 3, "adam", 4, 2, 0.0), ("tower1", 4, 5, "adam", 3, 2, 0.0), ("biases", 1, 1, "sgd", 2, 2, 0.0),
    ("mf", 3, 3, "adam", 4, 1, 2.5), ("tower1", 4, 5, "adam", 3, 3, 2.5), ("biases", 1, 1, "sgd", 2, 2, 2.5)])
def test_matches_torch_optim_per_user(backend, kind, d, h, optimizer, batch, P, damping):
    # Users with 1 rating, fewer than, exactly and more than a batch, and none (no step: the init).
    # With damping, reg_u = reg + damping / n for the user's n ratings in the call (not its
    # minibatch's); P = 1 packs users of these different counts into the cpu backend's lanes.
    head = random_head(kind, 13, d, h, seed=4)
    counts = [1, batch - 1, batch, batch + 1, 3 * batch + 2, 0, 1, 2 * batch]
    data = random_ratings(len(counts), 13, counts=counts, seed=5)
    lrs, regs, epochs, seed = [3e-2, 1e-2, 5e-2][:P], [1e-3, 1e-1, 0.0][:P], 3, 7
    hyp = _hyp(kind, head.d, batch_size=batch, optimizer=optimizer, seed=seed, damping=damping)
    problem = prepare(head, data, None, hyp, backend)
    problem.start(lrs, regs)
    problem.train(epochs)
    got = problem.embeddings().cpu()
    for p, (lr, reg) in enumerate(zip(lrs, regs)):
        oracle = dict(batch_size=batch, optimizer=optimizer, epochs=epochs, seed=seed)
        want = torch_optim_embeddings(head, data, lr, reg, damping=damping, **oracle)
        err = rel_err(got[:, p], want)
        assert err <= TOL, f"probe {p}: {err:.3g}: {describe_mismatch(got[:, p], want, TOL)}"
        if damping:  # it is not ignored: the test can fail
            assert rel_err(got[:, p], torch_optim_embeddings(head, data, lr, reg, **oracle)) > 100 * TOL


@pytest.mark.parametrize("backend", FAST or NO_FAST)
@pytest.mark.parametrize("kind,d,P,batch,optimizer", [("mf", 3, 1, 4, "adam"), ("mf", 8, 5, 3, "adam"),
                                                      ("tower2", 6, 2, 5, "sgd")])
def test_damping_matches_reference(backend, kind, d, P, batch, optimizer):
    head = random_head(kind, 23, d, d, seed=d + P)
    counts = np.random.default_rng(P).choice([0, 1, 2, batch - 1, batch, batch + 1, 3 * batch, 40], 30)
    data = random_ratings(30, 23, counts=counts, seed=P + batch)
    rng = np.random.default_rng(batch)
    lrs, regs = (10 ** rng.uniform(-3, -1, P)).tolist(), (10 ** rng.uniform(-5, -1, P)).tolist()
    hyp = _hyp(kind, d, batch_size=batch, optimizer=optimizer, seed=2, damping=4.0)

    def run(backend):
        problem = prepare(head, data, data, hyp, backend)
        problem.start(lrs, regs)
        problem.train(1)
        return problem.embeddings().cpu().clone(), problem.checkpoint(2).losses

    (emb, loss), (ref_emb, ref_loss) = run(backend), run("reference")
    assert rel_err(emb, ref_emb) <= TOL, describe_mismatch(emb, ref_emb, TOL)
    assert rel_err(loss, ref_loss) <= TOL, describe_mismatch(loss, ref_loss, TOL)


@pytest.mark.parametrize("backend", ALL)
def test_a_diverging_probe_leaves_the_others_bit_identical(backend):
    head = random_head("mf", 11, 4, seed=1)
    data = random_ratings(6, 11, seed=2)
    args = dict(batch_size=3, optimizer="adam", epochs=2)
    emb_all, loss_all = _train(backend, head, data, [1e-2, 1e30, 3e-2], [1e-3, 1e30, 1e-4], **args)
    emb_two, loss_two = _train(backend, head, data, [1e-2, 3e-2], [1e-3, 1e-4], **args)
    assert not torch.isfinite(emb_all[:, 1]).all()
    assert torch.equal(emb_all[:, [0, 2]], emb_two)
    assert np.array_equal(loss_all[[0, 2]], loss_two)


@pytest.mark.parametrize("backend", ALL)
def test_deterministic(backend):
    head = random_head("tower1", 13, 5, 6, seed=4)
    data = random_ratings(8, 13, seed=5)
    args = dict(batch_size=4, optimizer="adam", epochs=1)
    a, la = _train(backend, head, data, [1e-2, 2e-2], [1e-3, 1e-2], **args)
    b, lb = _train(backend, head, data, [1e-2, 2e-2], [1e-3, 1e-2], **args)
    assert torch.equal(a, b) and np.array_equal(la, lb)


@pytest.mark.parametrize("backend", ALL)
def test_users_with_zero_one_and_many_ratings(backend):
    head = random_head("mf", 13, 4, seed=10)
    data = random_ratings(4, 13, counts=[0, 1, 70 if backend != "triton" else 20, 0], seed=11)
    for optimizer in ("adam", "sgd"):
        hyp = _hyp("mf", 4, batch_size=16, optimizer=optimizer)
        problem = prepare(head, data, None, hyp, backend)
        init = problem.init.cpu()
        problem.start([1e-2, 1e-1], [1e-3, 0.0])
        problem.train(2)
        emb = problem.embeddings().cpu()
        assert torch.equal(emb[[0, 3]], init[[0, 3], None, :].expand(-1, 2, -1))  # no ratings: the init
        assert (emb[[1, 2]] != init[[1, 2], None, :]).all()
        if problem.moments:
            m = problem.moments[0].cpu()
            assert not m[[0, 3]].any() and m[[1, 2]].all()


@pytest.mark.parametrize("backend", ALL)
def test_validation_isolates_probes_and_flags_non_finite_ones(backend):
    head = random_head("tower1", 13, 4, 6, seed=9)
    train = random_ratings(6, 13, counts=[0, 3, 1, 0, 8, 5], seed=10)
    val = random_ratings(6, 13, counts=[0, 3, 1, 0, 8, 5], seed=12)
    hyp = _hyp("tower1", 4, batch_size=2)
    problem = prepare(head, train, val, hyp, backend)
    problem.start([1e-2, 1e30, 3e-2], [1e-3, 1e30, 0.0])
    checkpoint = problem.checkpoint(1)
    assert checkpoint.finite.tolist() == [True, False, True]
    ref = prepare(head, train, val, hyp, "reference")
    ref.start([1e-2, 3e-2], [1e-3, 0.0])
    want = ref.checkpoint(1)
    assert rel_err(checkpoint.losses[[0, 2]], want.losses) <= TOL


# --------------------------------------------------------------------------- the trainer, per backend

def _trainer_problem():
    head = random_head("tower2", 14, 5, 4, seed=9)
    train, val = random_ratings(10, 14, seed=4).split_per_user(0.3, seed=2)
    hyp = HyperParams(model="mlp_5x4", batch_size=4, max_epochs=6, epochs_per_checkpoint=2, patience=1)
    return head, train, val, hyp


@pytest.mark.parametrize("backend", ALL)
def test_probes_together_equal_probes_alone(backend):
    head, train, val, hyp = _trainer_problem()
    lrs, regs = [1e-2, 3e-2, 1e-1], [1e-4, 1e-2, 1e-3]
    together = train_probes(head, train, val, lrs, regs, hyp, backend=backend, return_embeddings=True)
    for lr, reg, joint in zip(lrs, regs, together):
        (alone,) = train_probes(head, train, val, [lr], [reg], hyp, backend=backend, return_embeddings=True)
        assert np.allclose(alone.history, joint.history, rtol=1e-6, atol=0)
        assert rel_err(joint.embeddings, alone.embeddings) <= 1e-6


@pytest.mark.parametrize("backend", ALL)
def test_trainer_isolates_a_diverging_probe(backend):
    head, train, val, hyp = _trainer_problem()
    good = train_probes(head, train, val, [1e-2, 3e-2], [1e-4, 1e-3], hyp, backend=backend, return_embeddings=True)
    mixed = train_probes(head, train, val, [1e-2, 1e30, 3e-2], [1e-4, 1e30, 1e-3], hyp, backend=backend,
                         return_embeddings=True)
    assert mixed[1].diverged and not mixed[0].diverged and not mixed[2].diverged
    assert mixed[1].stop_reason == "diverged"
    assert mixed[1].best_epoch == 0 and np.isfinite(mixed[1].best_val_loss)  # the init stays its best
    # Its last checkpoint's loss is undefined: NaN, not the partial sum of the users that stayed
    # finite (which read lower than any real loss); every earlier one is finite.
    *before, (_, last) = mixed[1].history
    assert math.isnan(last) and all(math.isfinite(loss) for _, loss in before)
    assert torch.equal(mixed[1].embeddings, prepare(head, train, val, hyp).init)
    for a, b in ((mixed[0], good[0]), (mixed[2], good[1])):
        assert a.history == b.history and torch.equal(a.embeddings, b.embeddings)


@pytest.mark.parametrize("backend", ALL)
def test_a_probe_without_a_finite_checkpoint_returns_the_init(backend):
    # Validation ratings of 1e20 (finite, accepted) put the init's loss past 2^127: every probe
    # diverges at epoch 0, before any checkpoint was kept, and its embeddings were uninitialised memory.
    head, train, val, hyp = _trainer_problem()
    huge = Ratings.from_coo(val.user_of_row(), val.items, np.full(val.nnz, 1e20), n_users=val.n_users,
                            n_items=val.n_items, user_ids=val.user_ids)
    results = train_probes(head, train, huge, [1e-2, 3e-2], [1e-4, 1e-3], hyp, backend=backend,
                           return_embeddings=True)
    init = prepare(head, train, huge, hyp).init
    for r in results:
        assert r.stop_reason == "diverged" and r.best_epoch == 0 and r.best_val_loss == math.inf
        assert torch.equal(r.embeddings, init)  # the embeddings at best_epoch 0
        assert len(r.history) == 1 and r.history[0][0] == 0 and math.isnan(r.history[0][1])  # was 0.0


@pytest.mark.parametrize("backend", ALL)
def test_an_init_that_is_not_finite_is_named(backend):
    # a NaN row trained NaN (train_embeddings returned it; train_probes called every probe diverged)
    head, train, val, hyp = _trainer_problem()
    for bad in (math.nan, math.inf):
        init = prepare(head, train, val, hyp).init.clone()
        init[3, 1] = bad
        with pytest.raises(InputError, match=r"init row 3 is not finite \(1 of 10 rows\)"):
            train_probes(head, train, val, [1e-2], [1e-4], hyp, backend=backend, init=init)
        with pytest.raises(InputError, match=r"init row 3 is not finite"):
            train_embeddings(head, train, hyp, 2, backend=backend, init=init)


@pytest.mark.parametrize("backend", ALL)
def test_early_stopping_and_best_state(backend):
    head, train, val, hyp = _trainer_problem()
    hyp = hyp.replace(max_epochs=30, epochs_per_checkpoint=1, patience=0)
    (r,) = train_probes(head, train, val, [0.5], [0.0], hyp, backend=backend, return_embeddings=True)
    losses = [loss for _, loss in r.history]
    assert len(losses) < 31, "this probe overfits: it must stop before max_epochs"
    assert losses[-1] >= losses[-2]  # stopped at the first checkpoint that did not improve
    assert all(b < a for a, b in zip(losses[:-2], losses[1:-1]))
    assert r.best_epoch == r.history[-2][0] and r.best_val_loss == min(losses)
    assert r.stop_reason == "patience" and r.finished and not r.diverged
    again = train_embeddings(head, train, hyp.replace(learning_rate=0.5, regularization=0.0), r.best_epoch,
                             backend=backend)
    assert torch.equal(again, r.embeddings)


@pytest.mark.parametrize("backend", ALL)
def test_memory_budget_splits_into_groups(backend):
    head, train, val, hyp = _trainer_problem()
    lrs, regs = [1e-2, 2e-2, 3e-2], [1e-3] * 3
    whole = train_probes(head, train, val, lrs, regs, hyp, backend=backend, return_embeddings=True)
    split = train_probes(head, train, val, lrs, regs, hyp, backend=backend, memory_budget=1, return_embeddings=True)
    for a, b in zip(whole, split):
        assert np.allclose(a.history, b.history, rtol=1e-6, atol=0)
        assert rel_err(a.embeddings, b.embeddings) <= 1e-6


@pytest.mark.parametrize("backend", ALL)
def test_checkpoint_cadence_and_dropped_probes_do_not_change_a_probe(backend):
    # Probes stop at different checkpoints (patience 0) and are dropped from the state in place;
    # the one that trains longest must end exactly where it ends when trained alone, with one
    # checkpoint every epoch or every 3 epochs.
    head, train, val, hyp = _trainer_problem()
    lrs, regs = [2.0, 0.5, 1e-2], [0.0, 0.0, 1e-3]
    hyp = hyp.replace(max_epochs=6, patience=0)
    every = train_probes(head, train, val, lrs, regs, hyp.replace(epochs_per_checkpoint=1), backend=backend)
    assert len({r.epochs_trained for r in every}) > 1, "the probes should stop at different epochs"
    survivor = max(range(3), key=lambda p: every[p].epochs_trained)
    epochs = every[survivor].epochs_trained
    alone = train_embeddings(head, train, hyp.replace(learning_rate=lrs[survivor], regularization=regs[survivor]),
                             epochs, backend=backend)
    problem = prepare(head, train, val, hyp, backend)
    problem.start(lrs, regs)
    for step in range(epochs):
        problem.checkpoint(1)
        if step == 0:
            problem.drop([s for s in range(3) if s == survivor or s == (survivor + 1) % 3])
    slot = 0 if survivor < (survivor + 1) % 3 else 1
    assert torch.equal(problem.embeddings()[:, slot].cpu(), alone)


@pytest.mark.parametrize("backend", ALL)
def test_batches_on_one_problem_equal_fresh_problems(backend):
    head, train, val, hyp = _trainer_problem()
    problem = prepare(head, train, val, hyp, backend)
    first = run_probes(problem, [1e-2, 5e-2, 2e-1], [1e-3, 0.0, 1e-2], hyp)
    second = run_probes(problem, [3e-2], [1e-4], hyp)  # reuses the state of the first batch
    assert [r.history for r in second] == [r.history for r in
                                           train_probes(head, train, val, [3e-2], [1e-4], hyp, backend=backend)]
    assert [r.history for r in first] == [r.history for r in
                                          train_probes(head, train, val, [1e-2, 5e-2, 2e-1], [1e-3, 0.0, 1e-2], hyp,
                                                       backend=backend)]


@pytest.mark.parametrize("backend", ALL)
def test_a_prepared_problem_keeps_its_own_copy_of_the_ratings_and_the_init(backend):
    """The caller's arrays changed in place after ``prepare`` (ratings, weights, the init) change
    nothing: the next batch trains what was prepared.  On the CPU the problem held views of them,
    and trained and validated the changed values (with the old validation weight and epoch-0 loss)."""
    head, train, val, hyp = _trainer_problem()
    init = np.random.default_rng(0).uniform(-0.1, 0.1, (train.n_users, head.d)).astype(np.float32)
    problem = prepare(head, train, val, hyp, backend, init=torch.from_numpy(init))
    lrs, regs = [1e-2, 2e-1], [1e-3, 1e-2]
    first = run_probes(problem, lrs, regs, hyp, return_embeddings=True)
    train.ratings[:] = 1.0
    val.ratings[:] = 100.0
    val.weights[:] = 0.0
    init[:] = 5.0
    second = run_probes(problem, lrs, regs, hyp, return_embeddings=True)
    assert [r.history for r in second] == [r.history for r in first]
    for a, b in zip(second, first):
        assert torch.equal(a.embeddings, b.embeddings)


@pytest.mark.parametrize("backend", ALL)
def test_a_probe_state_that_cannot_be_allocated_is_a_memory_error_naming_its_size(backend):
    """8192 users x 2^23 probes x d = 1024 is 2^48 bytes, beyond any address space: a MemoryError
    naming the state and its size (it was the allocator's RuntimeError), leaving the problem
    without a batch, ready for one that fits."""
    d, n_users, n_probes = 1024, 8192, 2**23
    head = Head.matrix_factorization(torch.full((2, d), 0.01), torch.zeros(2), 3.0)
    data = Ratings.from_coo(np.arange(n_users), np.arange(n_users) % 2, np.full(n_users, 4.0), n_users=n_users,
                            n_items=2)
    problem = prepare(head, data, data, HyperParams(model=f"matrix_factorization_{d}"), backend)
    with pytest.raises(MemoryError, match=r"the probe state, float32 \[8192, 8388608, 1024\] \(2\.621e\+05 GiB\)"):
        problem.start(np.full(n_probes, 0.1, dtype=np.float32), np.zeros(n_probes, dtype=np.float32))
    assert problem.n_probes == 0
    problem.start([0.1, 0.2], [0.0, 0.0], keep_best=True)
    assert problem.n_probes == 2 and torch.equal(problem.embeddings()[:, 1].cpu(), problem.init.cpu())


@pytest.mark.parametrize("backend", ALL)
def test_users_without_train_or_val_ratings(backend):
    head = random_head("mf", 10, 2)
    data = random_ratings(6, 10, counts=[0, 1, 2, 5, 8, 4], seed=0)
    train, val = data.split_per_user(0.25, seed=0)  # users 0 and 1 have no val ratings
    assert val.counts[1] == 0 and train.counts[0] == 0
    hyp = HyperParams(model="matrix_factorization_2", max_epochs=4, epochs_per_checkpoint=2)
    (r,) = train_probes(head, train, val, [1e-2], [1e-3], hyp, backend=backend)
    assert len(r.history) == 3 and all(np.isfinite(loss) and loss > 0 for _, loss in r.history)
    empty_val = val._subset_rows(np.zeros(val.nnz, bool))
    weightless = Ratings(val.indptr, val.items, val.ratings, np.zeros_like(val.weights), val.user_ids, val.item_ids)
    for no_val in (empty_val, weightless, None):
        # Every loss was 0 and the untrained init came back as the best checkpoint (best_epoch 0).
        with pytest.raises(InputError, match=r"val has no ratings of weight > 0 \(it is empty, or every weight is 0\)"):
            train_probes(head, train, no_val, [1e-2], [1e-3], hyp, backend=backend)
        problem = prepare(head, train, no_val, hyp, backend)  # train_embeddings' way: no validation needed
        problem.start([1e-2], [1e-3])
        problem.train(2)
        assert problem.validate().losses.tolist() == [0.0]
        with pytest.raises(InputError, match="val has no ratings of weight > 0"):
            run_probes(problem, [1e-2], [1e-3], hyp)


@pytest.mark.parametrize("backend", ALL)
def test_several_checkpoints_in_one_call_equal_one_call_each(backend):
    # The cpu backend validates all of them in one pass over the state; the result, and the
    # embeddings kept at each checkpoint, must be those of one call per checkpoint, bit for bit.
    head, train, val, hyp = _trainer_problem()
    lrs, regs = [1e-2, 1e30, 5e-2], [1e-3, 1e30, 0.0]
    together = prepare(head, train, val, hyp, backend)
    together.start(lrs, regs, keep_best=True)
    joint = together.checkpoints([2, 1, 3])
    one = prepare(head, train, val, hyp, backend)
    one.start(lrs, regs)
    for index, n_epochs in enumerate([2, 1, 3]):
        alone = one.checkpoint(n_epochs)
        assert np.array_equal(joint[index].losses[[0, 2]], alone.losses[[0, 2]])
        assert joint[index].finite.tolist() == alone.finite.tolist() == [True, False, True]
        together.keep_best([0, 2], index)
        assert torch.equal(together.best_embeddings()[:, [0, 2]], one.embeddings()[:, [0, 2]].cpu())


BAD_SLOTS = [  # slots of 3 live probes; what torch did with them before they were checked
    ([3], r"{name} index 3 \(entry 0\) is not in \[0, 3\)"),  # IndexError
    ([0, -1], r"{name} index -1 \(entry 1\) is not in \[0, 3\)"),  # probe 2, silently
    ([1.0], r"{name} must be a 1-d array of probe slot indices, got float64 \[1\]"),  # IndexError
    ([True, False, True], r"got bool \[3\]: for a mask, pass np.flatnonzero\(mask\)"),  # slots 1, 0, 1
    ([[0, 1]], r"{name} must be a 1-d array of probe slot indices, got int64 \[1, 2\]"),
]


@pytest.mark.parametrize("backend", ALL)
def test_keep_best_and_drop_refuse_bad_slots_and_leave_the_state_alone(backend):
    head, train, val, hyp = _trainer_problem()
    problem = prepare(head, train, val, hyp, backend)
    problem.start([1e-2, 3e-2, 1e-1], [1e-4, 1e-2, 1e-3], keep_best=True)
    problem.checkpoints([1, 1])  # checkpoint 0 is a snapshot, 1 the current state
    state = problem.embeddings().cpu().clone()
    cases = [("keep_best", slots, message.format(name="slots")) for slots, message in BAD_SLOTS]
    cases += [("keep_best", [2, 0, 2], r"slots must be distinct probe slots, got slot 2 twice")]
    cases += [("drop", keep, message.format(name="keep")) for keep, message in BAD_SLOTS]
    cases += [("drop", [0, 2, 1], r"keep must be increasing probe slots, got 1 after 2 \(entry 2\)"),
              ("drop", [1, 1], r"keep must be increasing probe slots, got 1 after 1 \(entry 1\)")]
    for call, slots, message in cases:
        with pytest.raises(InputError, match=message):
            getattr(problem, call)(*([slots, 0] if call == "keep_best" else [slots]))
    for index, message in [(-1, "got -1"), (2, "got 2"), (1.0, "got 1.0")]:  # -1: the last snapshot, silently
        with pytest.raises(InputError, match=r"index must be an integer in \[0, 1\], " + message):
            problem.keep_best([0], index)
    assert problem.live.tolist() == [0, 1, 2] and torch.equal(problem.embeddings().cpu(), state)
    problem.keep_best([2, 0], 1)  # in any order
    problem.drop([0, 2])
    assert problem.live.tolist() == [0, 2]
    assert torch.equal(problem.best_embeddings()[:, [0, 2]], state[:, [0, 2]])
    assert torch.equal(problem.embeddings().cpu(), state[:, [0, 2]])


@pytest.mark.parametrize("backend", ALL)
def test_stop_reasons_max_epochs_and_deadline(backend):
    head, train, val, hyp = _trainer_problem()
    capped = train_probes(head, train, val, [1e-3, 3e-2], [0.0, 1e-3], hyp.replace(patience=100), backend=backend)
    assert [r.stop_reason for r in capped] == ["max_epochs"] * 2 and [r.epochs_trained for r in capped] == [6, 6]
    late = train_probes(head, train, val, [1e-3, 3e-2], [0.0, 1e-3], hyp, backend=backend, deadline=time.monotonic())
    assert [r.stop_reason for r in late] == ["deadline"] * 2 and not any(r.finished for r in late)
    assert [len(r.history) for r in late] == [1, 1]  # the init's checkpoint, then the clock
