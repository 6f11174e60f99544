"""Hostile calls of ``retrain._C``, run in a child process so that a crash (a segfault, an abort)
is a failed case, not a dead pytest (tests/test_cpu_backend.py drives it).

``CASES[name] = (call, expected)``: ``expected`` is a regular expression the ValueError's message
must match (it names the argument), or a predicate on the returned value for a call that has a
documented result.  Run as ``python hostile_calls.py NAME ...``: one line per case,
``name<TAB>outcome<TAB>detail``, flushed before the next case starts, where outcome is ``match``,
``mismatch`` or the exception's type name.
"""
from __future__ import annotations

import sys

import numpy as np

U, I, P, D = 5, 11, 3, 4  # users (rating counts 0, 1, 4, 3, 2), items, probes, d


def _train_args(**changes) -> dict:
    """A valid ``_C.train_epochs`` call (an MF head, Adam, 2 epochs) as keyword arguments, changed."""
    rng = np.random.default_rng(0)
    indptr = np.array([0, 0, 1, 5, 8, 10], np.int64)
    state = lambda: np.zeros((U, P, D), np.float32)
    args = dict(emb=rng.uniform(-0.1, 0.1, (U, P, D)).astype(np.float32), adam_m=state(), adam_v=state(),
                lrs=np.full(P, 1e-2, np.float32), regs=np.full(P, 1e-3, np.float32), indptr=indptr,
                items=rng.integers(0, I, 10).astype(np.int32), ratings=rng.uniform(1, 5, 10).astype(np.float32),
                weights=np.ones(10, np.float32), keys=np.arange(U, dtype=np.int64) * 7,
                order=np.array([2, 3, 4, 1, 0]), item_vectors=rng.normal(size=(I, D)).astype(np.float32),
                item_bias=np.zeros(I, np.float32), global_bias=3.0, tower_weights=[], tower_biases=[],
                tower_activations=[], epoch_start=0, n_epochs=2, batch_size=2, optimizer="adam", beta1=0.9,
                beta2=0.999, eps=1e-8, seed=0)
    args.update({k: v(args) if callable(v) else v for k, v in changes.items()})
    return args


def _val(a) -> tuple:
    return a["indptr"], a["items"], a["ratings"], a["weights"]


def _no_probes(a) -> dict:
    return dict(emb=np.zeros((U, 0, D), np.float32), adam_m=np.zeros((U, 0, D), np.float32),
                adam_v=np.zeros((U, 0, D), np.float32), lrs=np.zeros(0, np.float32), regs=np.zeros(0, np.float32))


def _train(**changes):
    from retrain import _C
    return lambda: _C.train_epochs(**_train_args(**changes))


def _train_with(build):
    """A call whose arguments ``build(args)`` derives from the valid ones (several at once)."""
    from retrain import _C
    return lambda: _C.train_epochs(**build(_train_args()))


def _validate(**changes):
    from retrain import _C

    def call():
        a = _train_args()
        val = {k: a[k] for k in ("emb", "indptr", "items", "ratings", "weights", "item_vectors", "item_bias",
                                 "global_bias", "tower_weights", "tower_biases", "tower_activations")}
        val.update({k: v(val) if callable(v) else v for k, v in changes.items()})
        return _C.validation_loss(**val)
    return call


def _finite_flags(want):
    return lambda out: out[0].tolist() == want


def cases() -> dict:
    from retrain import _C
    return {
        # layouts
        "emb reversed (negative strides)": (_train(emb=lambda a: a["emb"][::-1]), "emb must be C-contiguous"),
        "items reversed": (_train(items=lambda a: a["items"][::-1]), "items must be C-contiguous"),
        "lrs strided": (_train(lrs=np.full(2 * P, 1e-2, np.float32)[::2]), "lrs must be C-contiguous"),
        "init transposed": (_train(init=np.zeros((D, U), np.float32).T), "init must be C-contiguous"),
        "validation emb reversed": (_validate(emb=lambda a: a["emb"][:, ::-1]), "emb must be C-contiguous"),
        # sizes at their edges: documented results
        "P = 0": (_train_with(lambda a: {**a, **_no_probes(a)}), lambda out: out[0].shape == (1, 0)),
        "P = 0 with val": (_train_with(lambda a: {**a, **_no_probes(a), "val": _val(a)}),
                           lambda out: out[0].shape == (1, 0) and out[1].shape == (1, 0, 6)),
        "no users": (_train_with(lambda a: {**a, **{k: v[:0] for k, v in a.items() if k in ("emb", "adam_m", "adam_v",
                                                                                            "keys", "order")},
                                            "indptr": np.zeros(1, np.int64), "items": np.zeros(0, np.int32),
                                            "ratings": np.zeros(0, np.float32), "weights": np.zeros(0, np.float32)}),
                     _finite_flags([[1, 1, 1]])),
        "d = 0 (item_vectors [I, 0])": (_train(item_vectors=np.zeros((I, 0), np.float32)), r"item_vectors must be \[n_items >= 1"),
        "validation P = 0": (_validate(emb=np.zeros((U, 0, D), np.float32)), lambda out: out[0].shape == (0, 6)),
        # values
        "NaN learning rates: every probe flagged": (_train(lrs=np.full(P, np.nan, np.float32), val=_val),
                                                    _finite_flags([[0, 0, 0]])),
        "infinite reg: every probe flagged": (_train(regs=np.full(P, np.inf, np.float32)), _finite_flags([[0, 0, 0]])),
        "eps inf": (_train(eps=float("inf")), "finite eps > 0"),
        "n_epochs 2^62 (the step count overflowed)": (_train(n_epochs=2**62), r"epoch_start \+ n_epochs must be at most"),
        "epoch_start 2^62 (trained with wrapped step counts)": (_train(epoch_start=2**62, n_epochs=1),
                                                                r"epoch_start \+ n_epochs must be at most"),
        # aliasing: a buffer written in place must not overlap another argument
        "adam_m is emb": (_train_with(lambda a: {**a, "adam_m": a["emb"]}), "emb and adam_m share memory"),
        "adam_v is adam_m": (_train_with(lambda a: {**a, "adam_v": a["adam_m"]}), "adam_m and adam_v share memory"),
        "init inside emb": (_train_with(lambda a: {**a, "init": a["emb"].reshape(U * P, D)[:U]}),
                            "emb and init share memory"),
        "snapshots inside emb": (_train_with(lambda a: {**a, "checkpoint_ends": np.array([1, 2]),
                                                        "snapshots": a["emb"][None]}), "emb and snapshots share memory"),
        # val
        "val a list": (_train(val=lambda a: list(_val(a))), r"val must be a tuple \(indptr, items, ratings, weights\)"),
        "val an int": (_train(val=5), "val must be a tuple"),
        "val items out of range": (_train(val=lambda a: (a["indptr"], np.full(10, I, np.int32), a["ratings"],
                                                         a["weights"])), "val items: row 0 has item 11"),
        "val of fewer users": (_train(val=lambda a: (a["indptr"][:-1].copy(),) + _val(a)[1:]), "val indptr"),
        # the contract functions
        "permutation n = -1": (lambda: _C.permutation(0, 0, 0, -1), r"n must be in \[0, 2\*\*32\)"),
        "permutation n = 2^32": (lambda: _C.permutation(0, 0, 0, 2**32), r"n must be in \[0, 2\*\*32\)"),
        "permutation n = 0": (lambda: _C.permutation(0, 0, 0, 0), lambda out: out.shape == (0,)),
        "initial_embeddings d = -1": (lambda: _C.initial_embeddings(np.zeros(3, np.int64), -1, 0, 1.0), "d must be >= 0"),
        "initial_embeddings float keys": (lambda: _C.initial_embeddings(np.zeros(3), 2, 0, 1.0),
                                          "keys must have dtype int64"),
    }


if __name__ == "__main__":
    import re

    table = cases()
    for name in sys.argv[1:]:
        call, expected = table[name]
        try:
            out = call()
            outcome, detail = ("match" if callable(expected) and expected(out) else "mismatch"), repr(out)[:200]
        except ValueError as exc:
            matched = isinstance(expected, str) and re.search(expected, str(exc))
            outcome, detail = ("match" if matched else "mismatch"), str(exc)
        except Exception as exc:  # noqa: BLE001 - reported as a failed case
            outcome, detail = type(exc).__name__, str(exc)
        print(f"{name}\t{outcome}\t{detail}".replace("\n", " "), flush=True)
