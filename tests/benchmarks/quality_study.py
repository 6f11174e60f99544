"""Quality study on ml-latest-small and ML-100k u1..u5 (docs/pipeline.md, "Refit" and "Recommendation quality").

    .venv/bin/python tests/benchmarks/quality_study.py [--folds 5] [--item-damping 5] [--data PATH]

For each seeded fold of the leak-free protocol (``protocol_split(data, 0.2, 0.2, 0.2, seed)``):
pretrain ``matrix_factorization_32`` on the pretraining part, tune and retrain the known users
(the pipeline, ``refit=False``), then refit them on pretraining + validation ratings with the
tuned recipe (what ``refit=True`` does), and score on the test part: RMSE of each, of the
closed-form ridge fold-in (tuned reg) and of the item-bias baseline; recall@10 / NDCG@10
(test ratings >= 4 are relevant) of the refitted users' top-10 unseen items; and the share of
top-10 slots given to items with at most 2 pretraining ratings.  New users (``--new-users``, off by
default): each held-out user with more than k ratings is folded in on k of them (keyed by id:
``first_k``; the served recipe) and scored on the others, against the closed-form ridge fold-in (tuned reg, the recipe's
damping: ``fold_in(solver="ridge")``), the same with a count-independent penalty
(``--new-user-damping``, ``ridge_embeddings(damping=...)``, instead of the recipe's) and
the item-bias baseline on the same ratings, for k in ``KS``.  ``--damping D`` sets the recipe's
``HyperParams.damping`` (tuning, retrain, refit, the served fold-in and the ridge columns use
it; the damped ridge column uses ``--new-user-damping``).  Prints one markdown row per fold and
the means.  Not a timed benchmark: it measures quality.

    .venv/bin/python tests/benchmarks/quality_study.py --ml100k WHEEL|fetch [--item-damping 5] [--held-out 0.2]
        [--damping D]

ML-100k's official folds u1..u5 instead (``ml100k.py``: read from the recbole 1.2.1 wheel; ``fetch``
downloads it into a cache outside the repo), the same protocol on each (``ml100k.fold_split``):
20 % of the users (``--held-out``) held out as new users, each known user's u{i}.base split into pretraining and
validation (a quarter), scored on its u{i}.test ratings; new users folded in on k of their
u{i}.base ratings (``first_k``) and scored on their u{i}.test ratings.  Prints every column.
"""
import argparse
import os
import sys
import time

import numpy as np

from retrain import (HyperParams, fold_in, load_movielens, pretrain, protocol_split, recommend,
                     retrain_user_embeddings)
from retrain.contract import rating_ranks
from retrain.report import BiasBaseline, model_rmse, ranking_metrics, rare_item_share
from retrain.ridge import ridge_embeddings
from retrain.trainer import train_embeddings

import ml100k

DEFAULT_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data", "ml-latest-small",
                            "ratings.csv")


KS = (1, 3, 5, 10, 20)


def first_k(ratings, k: int, seed: int):
    """(fold-in, test): ``k`` ratings of each user with more than ``k``, and its others.

    The ``k`` are keyed by id as the library samples a user's ratings: the user's ``k`` of least
    ``retrain.contract.rating_ranks`` (the order ``sample_ratings_per_user`` takes its share from),
    so a user's choice depends on its own ratings and ``seed`` only, not on the row order or the
    other users (a draw by row re-chose every user's ratings when one user was added)."""
    keep = ratings.select_users(np.flatnonzero(ratings.counts > k))
    rank = rating_ranks(keep.user_of_row(), keep.items, keep.ratings, keep.weights, keep.user_ids, keep.item_ids,
                        seed)
    return keep._subset_rows(rank < k), keep._subset_rows(rank >= k)


def base_k(split, k: int, seed: int):
    """(fold-in, test) of the new users of an ML-100k fold with more than ``k`` u{i}.base ratings:
    ``k`` of those (``first_k``), and their u{i}.test ratings."""
    fold, _ = first_k(split.new_fold_in, k, seed)
    return fold, split.new_test.select_users(np.flatnonzero(split.new_fold_in.counts > k))


def one_fold(split, seed: int, damping: float, backend: str, shots_of=None, new_damping: float = 5.0,
             user_damping: float | None = None) -> dict:
    """One fold's row: ``split`` a ``ProtocolSplit``; ``shots_of(k) -> (fold-in, test)`` the new
    users' k-shot parts (None: no new-user columns); ``new_damping`` the count-independent
    penalty of the damped ridge fold-in of new users; ``user_damping`` the recipe's
    ``HyperParams.damping`` (None: the default), which the pipeline, the refit and the served
    fold-in train with."""
    base = pretrain(split.pretrain, "matrix_factorization_32", seed=seed, item_damping=damping)
    head = base.head
    hyp = HyperParams(model=head.name, seed=seed)
    if user_damping is not None:
        hyp = hyp.replace(damping=user_damping)
    result = retrain_user_embeddings(base, split.pretrain, split.val, hyp, backend=backend, refit=False)
    seen = split.pretrain.union(split.val)
    refit = train_embeddings(head, seen, result.hyp, result.epochs, backend=backend)
    top, _ = recommend(head, refit, 10, exclude_seen=seen)
    support = np.bincount(split.pretrain.items, minlength=head.n_items)
    recall, ndcg = ranking_metrics(top.numpy(), split.test)
    shots = {}
    if shots_of is not None:
        biases = BiasBaseline.fit(split.pretrain)
        for k in KS:
            fold, test = shots_of(k)
            emb = fold_in(head, fold, result.hyp, result.epochs, backend=backend)
            shots[f"new k={k}"] = model_rmse(head, emb, test)
            ridge = ridge_embeddings(head, fold, result.hyp.regularization, damping=result.hyp.damping).float()
            shots[f"ridge k={k}"] = model_rmse(head, ridge, test)
            damped = ridge_embeddings(head, fold, result.hyp.regularization, damping=new_damping).float()
            shots[f"damped k={k}"] = model_rmse(head, damped, test)
            shots[f"bias k={k}"] = biases.item_bias_rmse(test)
    return dict(**shots,
        seed=seed, epochs=result.epochs, lr=result.hyp.learning_rate, reg=result.hyp.regularization,
        early_stopped=model_rmse(head, result.model.user_embeddings, split.test),
        refit=model_rmse(head, refit, split.test),
        ridge=model_rmse(head, ridge_embeddings(head, seen, result.hyp.regularization,
                                                damping=result.hyp.damping).float(), split.test),
        item_bias=BiasBaseline.fit(split.pretrain).item_bias_rmse(split.test),
        recall=recall, ndcg=ndcg, rare=rare_item_share(top.numpy(), support))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=DEFAULT_DATA)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--item-damping", type=float, default=5.0)
    parser.add_argument("--backend", default="cpu")
    parser.add_argument("--new-users", action="store_true", help="hold out 20%% of the users and score k-shot fold-ins")
    parser.add_argument("--ml100k", metavar="WHEEL", help="ML-100k's u1..u5 from the recbole 1.2.1 wheel "
                        "(its path, or 'fetch': pip download into " + ml100k.CACHE + ")")
    parser.add_argument("--held-out", type=float, default=0.2, help="with --ml100k: the fraction of users held "
                        "out as new users (0: none, every user is known)")
    parser.add_argument("--new-user-damping", type=float, default=5.0,
                        help="the damped ridge fold-in's penalty (ridge_embeddings(damping=...))")
    parser.add_argument("--damping", type=float, help="the recipe's HyperParams.damping (default: "
                        "HyperParams' default): the pipeline, the refit and the served fold-in train with it")
    args = parser.parse_args()
    known = ["early_stopped", "refit", "ridge", "item_bias", "recall", "ndcg", "rare"]
    new = [f"{w} k={k}" for k in KS for w in ("new", "ridge", "damped", "bias")]
    if args.ml100k:
        table = ml100k.read_inter(ml100k.wheel_path(args.ml100k))
        print(f"ML-100k u1..u5 from {args.ml100k} ({ml100k.MEMBER}, md5 {ml100k.MD5}), {args.held_out:g} held out")
        folds = [ml100k.fold_split(table, fold, new_users=args.held_out, seed=fold - 1)
                 for fold in range(1, ml100k.N_FOLDS + 1)]
        shots = [lambda k, split=split, seed=seed: base_k(split, k, seed) for seed, split in enumerate(folds)]
        columns = ["seed", "epochs"] + known + (new if args.held_out > 0 else [])
    else:
        data = load_movielens(args.data)
        print(data)
        folds = [protocol_split(data, 0.2, 0.2, 0.2, seed=seed) for seed in range(args.folds)]
        shots = [lambda k, split=split, seed=seed: first_k(split.new_users, k, seed) for seed, split in enumerate(folds)]
        columns = ["seed", "epochs"] + (new if args.new_users else known)
    print(f"item_damping {args.item_damping}, recipe damping "
          f"{HyperParams().damping if args.damping is None else args.damping}")
    print("| " + " | ".join(columns) + " |\n|" + "---|" * len(columns))
    rows = []
    for seed, split in enumerate(folds):
        t = time.perf_counter()
        row = one_fold(split, seed, args.item_damping, args.backend, shots[seed] if new[0] in columns else None,
                       args.new_user_damping, args.damping)
        rows.append(row)
        print("| " + " | ".join(f"{row[c]:.4f}" if isinstance(row[c], float) else str(row[c]) for c in columns)
              + f" |  ({time.perf_counter() - t:.0f} s)", flush=True)
    means = {c: float(np.mean([r[c] for r in rows])) for c in columns[2:]}
    print("| mean | | " + " | ".join(f"{means[c]:.4f}" for c in columns[2:]) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
