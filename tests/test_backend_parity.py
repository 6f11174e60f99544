"""One parity suite, written once and run for every fast backend present, against ``reference``.

Float32 everywhere; the fast backends may sum in another order (and fuse multiply-adds), so
results agree to rounding, not bitwise: we ask for 1e-5 relative after several epochs of Adam.
"""
import os

import numpy as np
import pytest
import torch

from problems import describe_mismatch, rel_err, random_head, random_ratings
from retrain.backends import available_backends, get_backend
from retrain.backends.base import csr_tensors, head_tensors, new_state

FAST = [b for b in ("cpu", "triton") if b in available_backends()]
TOL = 1e-5
# The Triton interpreter runs every program in Python: keep its cases few and small.
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


def _run(backend_name, head, data, lrs, regs, *, batch_size, optimizer, epochs, seed=3):
    be = get_backend(backend_name)
    head_t, data_t = head_tensors(head, be.device), csr_tensors(data, be.device)
    state = new_state(data_t, len(lrs), head.d, seed=seed, scale=head.init_scale(data.n_users), optimizer=optimizer)
    lr_t = torch.tensor(lrs, dtype=torch.float32, device=be.device)
    reg_t = torch.tensor(regs, dtype=torch.float32, device=be.device)
    be.train_epochs(head_t, data_t, state, lr_t, reg_t, epoch_start=1, n_epochs=epochs,
                    batch_size=batch_size, optimizer=optimizer, seed=seed)
    loss = be.validation_loss(head_t, data_t, state.emb)
    return state.emb.cpu(), loss.cpu()


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


@pytest.mark.parametrize("backend", FAST or [pytest.param("none", marks=pytest.mark.skip("no fast backend built"))])
@pytest.mark.parametrize("kind,d,h,P,batch,optimizer", CASES)
def test_matches_reference(backend, kind, d, h, P, batch, optimizer):
    if INTERPRETED and backend == "triton" and P * max(d, h) > 400:
        pytest.skip("too slow under the Triton interpreter")
    n_users, n_items = 9, 23
    head = random_head(kind, n_items, d, h, seed=d + P)
    data = random_ratings(n_users, n_items, seed=P + batch)
    rng = np.random.default_rng(batch)
    lrs = (10 ** rng.uniform(-3, -1, P)).tolist()
    regs = (10 ** rng.uniform(-5, -1, P)).tolist()
    args = dict(batch_size=batch, optimizer=optimizer, epochs=3)
    emb, loss = _run(backend, head, data, lrs, regs, **args)
    ref_emb, ref_loss = _run("reference", head, data, lrs, regs, **args)
    err = rel_err(emb, ref_emb)
    assert err <= TOL, f"embeddings differ by {err:.3g}: {describe_mismatch(emb, ref_emb, TOL)}"
    err = rel_err(loss, ref_loss)
    assert err <= TOL, f"val losses differ by {err:.3g}: {describe_mismatch(loss, ref_loss, TOL)}"


@pytest.mark.parametrize("backend", FAST or [pytest.param("none", marks=pytest.mark.skip("no fast backend built"))])
def test_diverging_probe_leaves_others_bit_identical(backend):
    head = random_head("mf", 11, 4, seed=1)
    data = random_ratings(6, 11, seed=2)
    args = dict(batch_size=3, optimizer="adam", epochs=2)
    emb_all, _ = _run(backend, head, data, [1e-2, 1e30, 3e-2], [1e-3, 1e30, 1e-4], **args)
    emb_two, _ = _run(backend, head, data, [1e-2, 3e-2], [1e-3, 1e-4], **args)
    assert not torch.isfinite(emb_all[:, 1]).all()
    assert torch.equal(emb_all[:, [0, 2]], emb_two)


@pytest.mark.parametrize("backend", FAST or [pytest.param("none", marks=pytest.mark.skip("no fast backend built"))])
def test_deterministic(backend):
    head = random_head("tower1", 13, 5, 6, seed=4)
    data = random_ratings(8, 13, seed=5)
    args = dict(batch_size=4, optimizer="adam", epochs=2)
    a, la = _run(backend, head, data, [1e-2, 2e-2], [1e-3, 1e-2], **args)
    b, lb = _run(backend, head, data, [1e-2, 2e-2], [1e-3, 1e-2], **args)
    assert torch.equal(a, b) and torch.equal(la, lb)
