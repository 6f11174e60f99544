"""Property-based tests (hypothesis) of the contract, the data layout and the ridge oracle.

(The C++ and Triton contract functions are compared with these in tests/test_contract.py.)
"""
import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from problems import random_head
from retrain.contract import initial_embeddings, permutation
from retrain.data import Ratings
from retrain.ridge import ridge_embeddings

uint32 = st.integers(0, 2**32 - 1)
FAST = settings(max_examples=60, deadline=None)


@FAST
@given(seed=uint32, epoch=st.integers(0, 10_000), key=uint32, n=st.integers(0, 3000))
def test_permutation_is_a_bijection(seed, epoch, key, n):
    assert np.array_equal(np.sort(permutation(seed, epoch, key, n)), np.arange(n))


@FAST
@given(keys=st.lists(uint32, min_size=1, max_size=20), d=st.integers(1, 9), seed=uint32,
       scale=st.floats(0.0, 10.0, width=32))
def test_init_is_bounded(keys, d, seed, scale):
    assert np.all(np.abs(initial_embeddings(keys, d, seed, scale)) <= scale)


@FAST
@given(st.data())
def test_csr_keeps_every_rating_in_canonical_order(data):
    n_users, n_items = data.draw(st.integers(1, 8)), data.draw(st.integers(1, 8))
    nnz = data.draw(st.integers(1, 40))
    users = data.draw(st.lists(st.integers(0, n_users - 1), min_size=nnz, max_size=nnz))
    items = data.draw(st.lists(st.integers(0, n_items - 1), min_size=nnz, max_size=nnz))
    ratings = np.arange(nnz, dtype=np.float64)  # the input position, to check tie order
    r = Ratings.from_coo(users, items, ratings, n_users=n_users, n_items=n_items)
    assert r.indptr[0] == 0 and r.indptr[-1] == nnz and np.all(np.diff(r.indptr) >= 0)
    expected = sorted(zip(users, items, ratings))  # by user, then item, then input position
    assert list(zip(r.user_of_row(), r.items, r.ratings)) == [(u, i, float(x)) for u, i, x in expected]


@FAST
@given(seed=st.integers(0, 10_000), reg=st.floats(1e-3, 10.0))
def test_ridge_solution_zeroes_the_gradient(seed, reg):
    rng = np.random.default_rng(seed)
    head = random_head("mf", 6, d=3, seed=seed)
    n = rng.integers(1, 10)
    data = Ratings.from_coo(np.zeros(n, np.int64), rng.integers(0, 6, n), rng.uniform(1, 5, n),
                            rng.uniform(0.1, 2, n), n_users=1, n_items=6)
    e = ridge_embeddings(head, data, reg)[0].requires_grad_(True)
    A, c = head.linear_form()
    items = torch.from_numpy(data.items)
    w, r = torch.from_numpy(data.weights).double(), torch.from_numpy(data.ratings).double()
    loss = (w * (A[items] @ e + c[items] - r) ** 2).mean() + reg * (e * e).sum()
    (grad,) = torch.autograd.grad(loss, e)
    assert grad.abs().max() <= 1e-9 * max(1.0, float(e.detach().abs().max()))
