"""retrain: retrain user embeddings against a frozen item side, with concurrent hyper-parameter probes.

    import retrain
    data = retrain.synthetic_ratings()                      # or retrain.load_movielens(path)
    split = retrain.protocol_split(data, new_users=0.2, val=0.2, test=0.2, seed=0)   # leak-free parts
    model = retrain.pretrain(split.pretrain, "matrix_factorization_32")
    hyp = retrain.HyperParams(model="matrix_factorization_32", seed=0)
    probes = retrain.train_probes(model.head, split.pretrain, split.val, lrs, regs, hyp)
    result = retrain.retrain_user_embeddings(model, split.pretrain, split.val, hyp)  # tune, retrain, refit
    result.save("model.safetensors")                        # one file: head, users, ids, recipe
    served = retrain.load("model.safetensors")
    served.add_users(new_ratings_frame)                     # original ids; unknown items dropped
    served.recommend([user_id], k=10)

The contract every backend implements is in docs/semantics.md; the evaluation protocol in
docs/pipeline.md.  Mistakes in what the caller passes raise ``retrain.InputError``.
"""
from .backends import available_backends, get_backend
from .errors import InputError
from .data import Ratings, synthetic_ratings
from .heads import Head, Layer, Model, load_head
from .hyperparams import HyperParams, lr_from_a, reg_from_b
from .movielens import load_movielens
from .pretrain import pretrain
from .protocol import ProtocolSplit, protocol_split
from .ridge import ridge_embeddings
from .pipeline import RetrainResult, retrain_user_embeddings
from .serving import fold_in, recommend
from .bundle import FoldInResult, Recipe, Recommendations, ServedModel, load
from .trainer import ProbeResult, train_embeddings, train_probes
from .tuner import TuneResult, tune

__all__ = [
    "InputError", "Ratings", "synthetic_ratings", "load_movielens", "Head", "Layer", "Model", "load_head", "HyperParams",
    "lr_from_a", "reg_from_b", "ProtocolSplit", "protocol_split", "pretrain", "ridge_embeddings", "ProbeResult",
    "train_probes", "train_embeddings", "get_backend", "available_backends", "tune", "TuneResult",
    "retrain_user_embeddings", "RetrainResult", "fold_in", "recommend", "load", "ServedModel", "Recipe",
    "FoldInResult", "Recommendations",
]
