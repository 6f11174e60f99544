"""retrain: retrain user embeddings against a frozen item side, with concurrent hyper-parameter probes.

    import retrain
    data = retrain.synthetic_ratings()                      # or retrain.load_movielens(path)
    train, val = data.split_per_user(val_fraction=0.2, seed=0)
    model = retrain.pretrain(train, "matrix_factorization_32")
    hyp = retrain.HyperParams(model="matrix_factorization_32", seed=0)
    probes = retrain.train_probes(model.head, train, val, lrs, regs, hyp)

The contract every backend implements is in docs/semantics.md.
"""
from .backends import available_backends, get_backend
from .errors import InputError
from .data import Ratings, synthetic_ratings
from .heads import Head, Layer, Model, load_head
from .hyperparams import HyperParams, lr_from_a, reg_from_b
from .movielens import load_movielens
from .pretrain import pretrain
from .ridge import ridge_embeddings
from .pipeline import RetrainResult, retrain_user_embeddings
from .serving import fold_in, recommend
from .trainer import ProbeResult, train_embeddings, train_probes
from .tuner import TuneResult, tune

__all__ = [
    "InputError", "Ratings", "synthetic_ratings", "load_movielens", "Head", "Layer", "Model", "load_head", "HyperParams",
    "lr_from_a", "reg_from_b", "pretrain", "ridge_embeddings", "ProbeResult", "train_probes", "train_embeddings",
    "get_backend", "available_backends", "tune", "TuneResult", "retrain_user_embeddings", "RetrainResult",
    "fold_in", "recommend",
]
