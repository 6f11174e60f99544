"""Quality study on ml-latest-small (docs/pipeline.md, "Refit" and "Recommendation quality").

    .venv/bin/python tests/benchmarks/quality_study.py [--folds 5] [--item-damping 5] [--data PATH]

For each seeded fold of the leak-free protocol (``protocol_split(data, 0.2, 0.2, 0.2, seed)``):
pretrain ``matrix_factorization_32`` on the pretraining part, tune and retrain the known users
(the pipeline, ``refit=False``), then refit them on pretraining + validation ratings with the
tuned recipe (what ``refit=True`` does), and score on the test part: RMSE of each, of the
closed-form ridge fold-in (tuned reg) and of the item-bias baseline; recall@10 / NDCG@10
(test ratings >= 4 are relevant) of the refitted users' top-10 unseen items; and the share of
top-10 slots given to items with at most 2 pretraining ratings.  New users (``--new-users``, off by
default): each held-out user with more than k ratings is folded in on k random ones (the served
recipe) and scored on the others, against the item-bias baseline on the same ratings, for k in
``KS``.  Prints one markdown row per fold and the means.  Not a timed benchmark: it measures quality.
"""
import argparse
import os
import sys
import time

import numpy as np

from retrain import (HyperParams, fold_in, load_movielens, pretrain, protocol_split, recommend,
                     retrain_user_embeddings)
from retrain.report import BiasBaseline, model_rmse, ranking_metrics, rare_item_share
from retrain.ridge import ridge_embeddings
from retrain.trainer import train_embeddings

DEFAULT_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data", "ml-latest-small",
                            "ratings.csv")


KS = (1, 3, 5, 10, 20)


def first_k(ratings, k: int, seed: int):
    """(fold-in, test): ``k`` random ratings of each user with more than ``k``, and its others."""
    keep = ratings.select_users(np.flatnonzero(ratings.counts > k))
    key = np.random.default_rng(seed).random(keep.nnz)
    users = keep.user_of_row()
    order = np.lexsort((key, users))
    rank = np.empty(keep.nnz, dtype=np.int64)
    rank[order] = np.arange(keep.nnz) - np.repeat(keep.indptr[:-1], keep.counts)
    return keep._subset_rows(rank < k), keep._subset_rows(rank >= k)


def one_fold(data, seed: int, damping: float, backend: str, new_users: bool = False) -> dict:
    split = protocol_split(data, 0.2, 0.2, 0.2, seed=seed)
    base = pretrain(split.pretrain, "matrix_factorization_32", seed=seed, item_damping=damping)
    head = base.head
    hyp = HyperParams(model=head.name, seed=seed)
    result = retrain_user_embeddings(base, split.pretrain, split.val, hyp, backend=backend, refit=False)
    seen = split.pretrain.union(split.val)
    refit = train_embeddings(head, seen, result.hyp, result.epochs, backend=backend)
    top, _ = recommend(head, refit, 10, exclude_seen=seen)
    support = np.bincount(split.pretrain.items, minlength=head.n_items)
    recall, ndcg = ranking_metrics(top.numpy(), split.test)
    shots = {}
    if new_users:
        biases = BiasBaseline.fit(split.pretrain)
        for k in KS:
            fold, test = first_k(split.new_users, k, seed)
            emb = fold_in(head, fold, result.hyp, result.epochs, backend=backend)
            shots[f"new k={k}"] = model_rmse(head, emb, test)
            shots[f"bias k={k}"] = biases.item_bias_rmse(test)
    return dict(**shots,
        seed=seed, epochs=result.epochs, lr=result.hyp.learning_rate, reg=result.hyp.regularization,
        early_stopped=model_rmse(head, result.model.user_embeddings, split.test),
        refit=model_rmse(head, refit, split.test),
        ridge=model_rmse(head, ridge_embeddings(head, seen, result.hyp.regularization).float(), split.test),
        item_bias=BiasBaseline.fit(split.pretrain).item_bias_rmse(split.test),
        recall=recall, ndcg=ndcg, rare=rare_item_share(top.numpy(), support))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=DEFAULT_DATA)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--item-damping", type=float, default=5.0)
    parser.add_argument("--backend", default="cpu")
    parser.add_argument("--new-users", action="store_true", help="hold out 20%% of the users and score k-shot fold-ins")
    args = parser.parse_args()
    data = load_movielens(args.data)
    columns = ["seed", "epochs", "early_stopped", "refit", "ridge", "item_bias", "recall", "ndcg", "rare"]
    if args.new_users:
        columns = ["seed", "epochs"] + [f"{w} k={k}" for k in KS for w in ("new", "bias")]
    print(f"item_damping {args.item_damping}; {data}")
    print("| " + " | ".join(columns) + " |\n|" + "---|" * len(columns))
    rows = []
    for seed in range(args.folds):
        t = time.perf_counter()
        row = one_fold(data, seed, args.item_damping, args.backend, args.new_users)
        rows.append(row)
        print("| " + " | ".join(f"{row[c]:.4f}" if isinstance(row[c], float) else str(row[c]) for c in columns)
              + f" |  ({time.perf_counter() - t:.0f} s)", flush=True)
    means = {c: float(np.mean([r[c] for r in rows])) for c in columns[2:]}
    print("| mean | | " + " | ".join(f"{means[c]:.4f}" for c in columns[2:]) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
