"""The plain-PyTorch speed baselines: shapes, they train, probes are independent; ``user_parallel``
follows the contract (equal to the reference backend)."""
import numpy as np
import pytest
import torch

from problems import describe_mismatch, random_head, random_ratings, rel_err
from retrain.backends.base import csr_tensors
from retrain.baselines import (_bucket_permutations, _linear_update, _user_parallel_grad, batched, eager_loop,
                               user_parallel)
from retrain.contract import permutation
from retrain.errors import InputError
from retrain.hyperparams import HyperParams
from retrain.trainer import prepare

BASELINES = {"eager_loop": eager_loop, "batched": batched, "user_parallel": user_parallel}


def _problem(kind, d=4, h=None, n_users=12, n_items=15, seed=0):
    head = random_head(kind, n_items, d, h, seed=seed)
    data = csr_tensors(random_ratings(n_users, n_items, seed=seed), "cpu")
    init = torch.empty(n_users, d).uniform_(-0.3, 0.3, generator=torch.Generator().manual_seed(seed))
    return head, data, init


def _training_loss(head, data, emb):
    """Per-probe mean of w (pred - r)^2 over all ratings, emb [U, P, d]."""
    counts = data.indptr[1:] - data.indptr[:-1]
    users = torch.repeat_interleave(torch.arange(data.n_users), counts)
    items = data.items.long()
    features = head.user_features(emb[users])  # [nnz, P, h]
    pred = (features * head.item_vectors[items][:, None, :]).sum(-1) + head.item_bias[items, None] + head.global_bias
    return (data.weights[:, None] * (pred - data.ratings[:, None]) ** 2).mean(0)


@pytest.mark.parametrize("name", sorted(BASELINES))
@pytest.mark.parametrize("kind,d,h", [("mf", 4, None), ("tower2", 5, 3)])
def test_shapes_and_training_lowers_the_loss(name, kind, d, h):
    head, data, init = _problem(kind, d, h)
    lrs, regs = torch.tensor([3e-2, 1e-1]), torch.tensor([1e-4, 1e-3])
    kept = init.clone()
    out = BASELINES[name](head, data, init, lrs, regs, n_epochs=8, batch_size=4, seed=1)
    assert torch.equal(init, kept)
    assert out.shape == (data.n_users, 2, d) and out.dtype == torch.float32
    before = _training_loss(head, data, init[:, None, :].expand(-1, 2, -1))
    after = _training_loss(head, data, out)
    assert (after < 0.95 * before).all(), (before, after)


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_probes_are_independent(name):
    head, data, init = _problem("mf", seed=2)
    lrs, regs = torch.tensor([1e-2, 5e-2, 1e-1]), torch.tensor([1e-3, 1e-1, 0.0])
    together = BASELINES[name](head, data, init, lrs, regs, n_epochs=3, batch_size=5)
    alone = BASELINES[name](head, data, init, lrs[1:2], regs[1:2], n_epochs=3, batch_size=5)
    torch.testing.assert_close(together[:, 1], alone[:, 0], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(together[:, 0], together[:, 1])


@pytest.mark.parametrize("name", ["eager_loop", "batched"])
def test_max_steps_and_seed(name):
    head, data, init = _problem("mf", seed=3)
    lrs, regs = torch.tensor([5e-2]), torch.tensor([1e-3])
    run = lambda **kw: BASELINES[name](head, data, init, lrs, regs, n_epochs=2, batch_size=4, **kw)
    assert torch.equal(run(max_steps=0)[:, 0], init)
    assert torch.equal(run(seed=4), run(seed=4))
    assert not torch.equal(run(seed=4), run(seed=5))
    one_step = run(max_steps=1)[:, 0]
    assert 1 <= int((one_step != init).any(dim=1).sum()) <= 4  # one minibatch of 4 ratings moved


def test_bad_inputs_raise():
    head, data, init = _problem("mf")
    with pytest.raises(ValueError, match="init"):
        batched(head, data, init[:-1], torch.ones(1), torch.ones(1), n_epochs=1, batch_size=2)
    with pytest.raises(ValueError, match="lrs"):
        eager_loop(head, data, init, torch.ones(2), torch.ones(1), n_epochs=1, batch_size=2)
    with pytest.raises(ValueError, match="batch_size"):
        batched(head, data, init, torch.ones(1), torch.ones(1), n_epochs=1, batch_size=0)
    for baseline in BASELINES.values():  # init of another d: a RuntimeError inside a matmul
        with pytest.raises(InputError, match=rf"init must be \[n_users=12, d=4\], got \(12, 5\)"):
            baseline(head, data, torch.zeros(12, 5), torch.ones(1), torch.ones(1), n_epochs=1, batch_size=2)


def test_hand_written_gradient_of_the_batched_baseline_is_autograds():
    # With lr -> the gradient: Adam's first step moves e by lr * g / (|g| + eps) per element, so
    # compare the gradient itself: run the update with beta1 = 0 through m (m = (1 - 0.9) g).
    head, data, _ = _problem("mf", d=5, seed=4)
    g = torch.Generator().manual_seed(5)
    B, n_touched, P = 9, 4, 3
    inverse = torch.randint(0, n_touched, (B,), generator=g)
    items = torch.randint(0, head.n_items, (B,), generator=g)
    rating, weight = torch.rand(B, generator=g) * 4 + 1, torch.rand(B, generator=g) + 0.5
    e = torch.randn(n_touched, P, 5, generator=g, dtype=torch.float64)
    reg = torch.tensor([1e-3, 1e-1, 0.5], dtype=torch.float64)
    q, offset = head.item_vectors.double()[items], (head.item_bias.double() + head.global_bias)[items]
    zeros = torch.zeros_like(e)
    _, m, _ = _linear_update(e, zeros, zeros, inverse, q, offset, rating.double(), weight.double(),
                             torch.zeros(1, P, 1, dtype=torch.float64), reg, 1.0, 1.0)
    grad = m / 0.1  # m = (1 - beta1) * grad from zero moments

    leaf = e.clone().requires_grad_(True)
    e_c = leaf[inverse]
    pred = torch.einsum("bpd,bd->bp", e_c, q) + offset[:, None]
    loss = (weight.double()[:, None] * (pred - rating.double()[:, None]) ** 2 + reg * (e_c * e_c).sum(-1)).mean(0)
    (want,) = torch.autograd.grad(loss.sum(), leaf)
    torch.testing.assert_close(grad, want, rtol=1e-9, atol=1e-12)


# --------------------------------------------------------------------------- user_parallel

def test_user_parallel_permutations_are_the_contracts():
    # Every count of a bucket shares its mask; each user has its own round constants.
    keys = torch.tensor([0, 5, 123456789, 2**32 - 1, 1000])
    for n in (1, 2, 3, 5, 8, 9, 100, 129, 1000):
        bits = int(n - 1).bit_length()
        for seed, epoch in ((0, 0), (7, 3), (2**32 + 1, 2**32 - 1)):
            perms = _bucket_permutations(keys, torch.full((len(keys),), n), bits, seed, epoch)
            for row, key in zip(perms[:, :n].numpy(), keys.tolist()):
                assert np.array_equal(row, permutation(seed, epoch, key, n)), (n, seed, epoch, key)


@pytest.mark.parametrize("kind,d,h,batch", [("mf", 6, None, 1), ("mf", 6, None, 4), ("tower2", 5, 3, 3),
                                            ("tower1", 4, 6, 200)])
@pytest.mark.parametrize("damping", [0.0, 3.0])
def test_user_parallel_matches_the_reference_backend(kind, d, h, batch, damping):
    # Same init, same permutations, same step counts: equal up to float32 rounding (the gradient
    # sums run in another order than autograd's).  Users with 0, 1 and 150 ratings included.
    head = random_head(kind, 17, d, h, seed=2)
    ratings = random_ratings(9, 17, seed=3)
    hyp = HyperParams(model=f"matrix_factorization_{d}", batch_size=batch, seed=11, damping=damping)
    lrs, regs = [1e-2, 3e-2, 1e-1], [1e-4, 1e-2, 1e-3]
    problem = prepare(head, ratings, None, hyp, "reference")
    problem.start(lrs, regs)
    problem.train(3)
    want = problem.embeddings()
    got = user_parallel(head, csr_tensors(ratings, "cpu"), problem.init, torch.tensor(lrs), torch.tensor(regs),
                        n_epochs=3, batch_size=batch, seed=11, damping=damping)
    assert rel_err(got, want) <= 2e-6, describe_mismatch(got, want, 2e-6)


def test_user_parallel_max_steps_counts_steps_of_all_users():
    head, data, init = _problem("mf", seed=3)
    lrs, regs = torch.tensor([5e-2]), torch.tensor([1e-3])
    run = lambda **kw: user_parallel(head, data, init, lrs, regs, n_epochs=2, batch_size=4, **kw)[:, 0]
    assert torch.equal(run(max_steps=0), init)
    counts = data.indptr[1:] - data.indptr[:-1]
    moved = (run(max_steps=1) != init).any(dim=1)
    assert torch.equal(moved, counts > 0)  # the first step moves every user with ratings
    steps_per_epoch = int(-(-counts.max() // 4))
    assert torch.equal(run(max_steps=2 * steps_per_epoch), run())


def test_hand_written_gradient_of_user_parallel_is_autograds():
    head, _, _ = _problem("mf", d=5, seed=6)
    head = head.to("cpu")
    g = torch.Generator().manual_seed(7)
    k, P, w = 4, 3, 6
    items = torch.randint(0, head.n_items, (k, w), generator=g)
    q = head.item_vectors.double()[items]
    offset = (head.item_bias.double() + head.global_bias)[items]
    rating = torch.rand(k, w, generator=g, dtype=torch.float64) * 4 + 1
    sizes = torch.tensor([6, 6, 3, 1])  # the last users' minibatches are shorter: padding has coef 0
    valid = torch.arange(w)[None, :] < sizes[:, None]
    coef = torch.where(valid, torch.rand(k, w, generator=g, dtype=torch.float64) + 0.5, 0.0) / sizes[:, None]
    e = torch.randn(k, P, 5, generator=g, dtype=torch.float64)
    reg = torch.tensor([1e-3, 1e-1, 0.5], dtype=torch.float64)[None, :] + torch.tensor([[0.0], [0.2], [0.0], [1.5]],
                                                                                      dtype=torch.float64)
    grad = _user_parallel_grad(head, e, q, offset, rating, coef, reg)  # reg [k, P]: damped per user

    leaf = e.clone().requires_grad_(True)
    losses = []
    for u in range(k):  # each user's loss over its own minibatch, as docs/semantics.md states it
        n = int(sizes[u])
        pred = leaf[u] @ q[u, :n].T + offset[u, :n]  # [P, n]
        weight = coef[u, :n] * n
        losses.append((weight * (pred - rating[u, :n]) ** 2).mean(dim=1) + reg[u] * (leaf[u] ** 2).sum(dim=1))
    (want,) = torch.autograd.grad(torch.stack(losses).sum(), leaf)
    torch.testing.assert_close(grad, want, rtol=1e-12, atol=1e-12)
