"""The retrain pipeline end to end: subsampled tuning, full retrain, atomic save, fold-in, and the
ml-latest-small check against the closed-form ridge fold-in."""
import dataclasses
import importlib
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import retrain
import retrain.pipeline as pipeline
from problems import BACKEND, permuted_users, planted_hyp, planted_problem, rel_err, users_by_id
from retrain.data import Ratings, sample_users
from retrain.heads import Model
from retrain.hyperparams import HyperParams
from retrain.pipeline import retrain_user_embeddings
from retrain.ridge import ridge_embeddings
from retrain.serving import fold_in

ML_SMALL = Path(__file__).resolve().parents[2] / "shared" / "data" / "ml-latest-small" / "ratings.csv"


def _val_loss(model: Model, val: Ratings) -> float:
    """Weighted mean squared error of the model's table on ``val`` (users in the same order)."""
    pred = model.predict_indices(val.user_of_row(), val.items).double().numpy()
    w = val.weights.astype(np.float64)
    return float((w * (pred - val.ratings) ** 2).sum() / w.sum())


def _pretrained(head, train):
    return Model(head, torch.zeros(train.n_users, head.d), train.user_ids)


def test_pipeline_end_to_end(tmp_path, monkeypatch):
    head, train, val = planted_problem(n_users=60)
    hyp = planted_hyp(subsampling_factor=0.5, seed=3)
    seen = {}

    def spy_tune(head, train, val, hyp, **kwargs):
        seen["tune"] = (train, val, hyp, kwargs)
        return tune(head, train, val, hyp, **kwargs)

    def spy_train_probes(head, train, val, lrs, regs, hyp, **kwargs):
        seen["retrain"] = (train, hyp)
        return train_probes(head, train, val, lrs, regs, hyp, **kwargs)

    tune, train_probes = pipeline.tune, pipeline.train_probes
    monkeypatch.setattr(pipeline, "tune", spy_tune)
    monkeypatch.setattr(pipeline, "train_probes", spy_train_probes)
    path, journal = tmp_path / "model.safetensors", tmp_path / "tune.jsonl"
    result = retrain_user_embeddings(_pretrained(head, train), train, val, hyp, max_iters=24, n_starts=4,
                                     backend=BACKEND, path=path, journal=journal, refit=False,
                                     memory_budget=2**30)

    # Tuning ran on the seeded half of the users, with the Glorot bound of the subsample.
    sub_train, sub_val, tune_hyp, kwargs = seen["tune"]
    users = sample_users(train.user_ids, 0.5, 3)
    assert np.array_equal(sub_train.user_ids, train.user_ids[users]) and sub_val.n_users == len(users) == 30
    assert tune_hyp.num_users == 30 and kwargs["max_evals"] == 24 and kwargs["n_starts"] == 4
    assert kwargs["memory_budget"] == 2**30
    # The space-filling batch (6 points) and the zoomed one (10: it leaves a search's opening and
    # steps, 8), then searches, which may converge under the budget.
    entries = journal.read_text().splitlines()[1:]  # after the header
    assert len(entries) == result.tune.n_evals and 16 < result.tune.n_evals <= 24
    assert [e.round for e in result.tune.history[:16]] == [0] * 6 + [1] * 10
    # The retrain: every user, a checkpoint every epoch, patience = the tuning's checkpoint interval.
    retrain_data, retrain_hyp = seen["retrain"]
    assert retrain_data.n_users == 60 and retrain_hyp.epochs_per_checkpoint == 1 and retrain_hyp.patience == 2
    assert (result.hyp.learning_rate, result.hyp.regularization) == (result.tune.lr, result.tune.reg)
    assert result.hyp.num_users == 60 and 0 < result.epochs <= hyp.max_epochs

    model = result.model
    assert np.array_equal(model.user_ids, train.user_ids) and model.user_embeddings.shape == (60, 3)
    assert result.val_loss == pytest.approx(_val_loss(model, val), rel=1e-5)
    assert result.val_loss < _val_loss(_pretrained(head, train), val)
    saved = Model.load(path)
    assert torch.equal(saved.user_embeddings, model.user_embeddings)
    # Serving reproduces the retrained rows from the returned hyper-parameters and epoch count.
    held = np.array([1, 5, 33, 59])
    emb = fold_in(head, train.select_users(held), result.hyp, result.epochs, backend=BACKEND)
    assert rel_err(emb, model.user_embeddings[held]) <= 1e-6


def test_pipeline_checks_item_ids():
    head, train, val = planted_problem()
    other = Ratings(train.indptr, train.items, train.ratings, train.weights, train.user_ids,
                    train.item_ids + 1000)
    with pytest.raises(ValueError, match="with_items"):
        retrain_user_embeddings(_pretrained(head, train), other, val, planted_hyp(), backend=BACKEND)


@pytest.mark.movielens
@pytest.mark.slow
def test_ml_latest_small_pipeline_is_within_two_percent_of_the_best_ridge_fold_in():
    if not ML_SMALL.is_file():
        pytest.skip(f"{ML_SMALL} is absent")
    pretrain = getattr(importlib.import_module("retrain.pretrain"), "pretrain", None)
    load_movielens = getattr(importlib.import_module("retrain.movielens"), "load_movielens", None)
    if pretrain is None or load_movielens is None:
        pytest.skip("retrain.pretrain.pretrain / retrain.movielens.load_movielens are not written yet")
    # Protocol (docs/pipeline.md): the item side is pretrained on other users; the held-out
    # users' ratings are split into the ratings they are retrained on and the validation ratings.
    kept, held = load_movielens(ML_SMALL).split_users(0.2, seed=0)
    # A few ALS sweeps are enough: both fold-ins below use the same frozen item side.
    model = pretrain(kept, "matrix_factorization_32", seed=0, iterations=4)
    train, val = held.split_per_user(0.2, seed=0)
    result = retrain_user_embeddings(model, train, val, HyperParams(model="matrix_factorization_32", seed=0),
                                     refit=False)

    def rmse(emb):
        return math.sqrt(_val_loss(Model(model.head, emb, train.user_ids), val))

    best_ridge = min(rmse(ridge_embeddings(model.head, train, reg).float()) for reg in np.logspace(-3, 1, 13))
    pipeline_rmse = math.sqrt(result.val_loss)
    assert pipeline_rmse == pytest.approx(rmse(result.model.user_embeddings), rel=1e-5)
    assert pipeline_rmse <= 1.02 * best_ridge, (pipeline_rmse, best_ridge)


@pytest.mark.parametrize("damping", [0.0, 3.0])
def test_refit_trains_every_user_on_all_its_ratings_with_the_serving_recipe(tmp_path, damping):
    head, train, val = planted_problem(n_users=40)
    hyp = planted_hyp(subsampling_factor=0.5, seed=1, damping=damping)
    path = tmp_path / "bundle.safetensors"
    result = retrain_user_embeddings(_pretrained(head, train), train, val, hyp, max_iters=8, n_starts=4,
                                     backend=BACKEND, path=path)
    assert result.refit and result.seen.nnz == train.nnz + val.nnz
    # Oracle: the low-level fold-in of train + val with the returned recipe, user by user.
    held = np.array([0, 7, 39])
    emb = fold_in(head, train.union(val).select_users(held), result.hyp, result.epochs, backend="reference")
    assert rel_err(emb, result.model.user_embeddings[held]) <= 1e-6
    # The bundle carries the recipe: a served fold-in of the same users' ratings gives the same rows.
    served = retrain.load(path)
    assert served.recipe.epochs == result.epochs and served.recipe.hyp == result.hyp and served.recipe.refit
    assert result.hyp.damping == damping  # the tuner keeps it fixed and the recipe carries it
    part = train.union(val).select_users(held)
    folded = served.fold_in(part)
    assert torch.equal(folded.embeddings, result.model.user_embeddings[held])
    assert not folded.diverged.any() and folded.n_dropped == 0


def test_all_diverged_tuning_is_refused(monkeypatch):
    head, train, val = planted_problem(n_users=20)
    real_tune = pipeline.tune

    def all_diverged(*args, **kwargs):
        result = real_tune(*args, **kwargs)
        object.__setattr__(result, "all_diverged", True) if dataclasses.is_dataclass(result) else None
        return result

    monkeypatch.setattr(pipeline, "tune", all_diverged)
    with pytest.raises(retrain.InputError, match="every one of the 4 tuning points diverged"):
        retrain_user_embeddings(_pretrained(head, train), train, val, planted_hyp(), max_iters=4, n_starts=4,
                                backend=BACKEND)


def test_a_recipe_for_another_model_is_refused_before_tuning(monkeypatch):
    # It used to tune and retrain, then fail in save() ("the recipe is for model ...").
    head, train, val = planted_problem(n_users=20)
    monkeypatch.setattr(pipeline, "tune", lambda *a, **k: pytest.fail("tuned before checking the recipe"))
    with pytest.raises(retrain.InputError, match="hyp.model is 'matrix_factorization_8' but the model's head is "
                                                 "'matrix_factorization_3'"):
        retrain_user_embeddings(_pretrained(head, train), train, val, planted_hyp(model="matrix_factorization_8"),
                                backend=BACKEND)


def test_data_frames_where_ratings_are_expected():
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"userId": np.repeat(np.arange(30) * 11 + 5, 8), "movieId": rng.integers(0, 20, 240) * 3,
                          "rating": rng.integers(1, 6, 240).astype(float)})
    data = Ratings.from_pandas(frame)
    # pretrain and protocol_split read a DataFrame as Ratings.from_pandas does (the oracle).
    split, by_hand = retrain.protocol_split(frame, new_users=0.2, seed=1), retrain.protocol_split(data, new_users=0.2,
                                                                                                 seed=1)
    assert np.array_equal(split.pretrain.indptr, by_hand.pretrain.indptr)
    assert np.array_equal(split.new_users.user_ids, by_hand.new_users.user_ids)
    model = retrain.pretrain(frame, "matrix_factorization_3", iterations=2)
    assert torch.equal(model.head.item_vectors, retrain.pretrain(data, "matrix_factorization_3", iterations=2).head.item_vectors)
    # The retrain needs train and val indexed alike: a frame is refused with the way to build them.
    with pytest.raises(retrain.InputError, match="train must be retrain.Ratings, got a DataFrame: .*protocol_split"):
        retrain_user_embeddings(model, frame, split.val, planted_hyp(), backend=BACKEND)
    with pytest.raises(retrain.InputError, match="ratings must be retrain.Ratings or a pandas DataFrame, got list"):
        retrain.pretrain([[1, 2, 3.0]], "matrix_factorization_3")


def test_validation_ratings_are_required_for_the_retrain_and_its_tuning_subsample(monkeypatch):
    # Without them every loss is 0, and the retrain used to return its epoch-0 init as the model (epochs 0).
    head, train, val = planted_problem(n_users=20)
    model = _pretrained(head, train)
    monkeypatch.setattr(pipeline, "tune", lambda *a, **k: pytest.fail("tuned without validation ratings"))
    empty = val._subset_rows(np.zeros(val.nnz, dtype=bool))
    with pytest.raises(retrain.InputError, match="val has no ratings"):
        retrain_user_embeddings(model, train, empty, planted_hyp(), backend=BACKEND)
    tuned = sample_users(train.user_ids, planted_hyp().subsampling_factor, planted_hyp().seed)
    keep = ~np.isin(val.user_of_row(), tuned)  # validation ratings only for users outside the subsample
    with pytest.raises(retrain.InputError, match=r"the tuning subsample \(\d+ of 20 users, hyp.subsampling_factor "
                                                 r"[0-9.]+\) has no validation ratings"):
        retrain_user_embeddings(model, train, val._subset_rows(keep), planted_hyp(), backend=BACKEND)
    with pytest.raises(retrain.InputError, match="the tuning subsample"):  # what the tune command trains on too
        pipeline.tuning_subsample(train, val._subset_rows(keep), planted_hyp())


def test_tuning_subsample_and_new_users_do_not_depend_on_the_users_order():
    # The same users at other indices (another file's or frame's order) tuned on another subsample,
    # and protocol_split held out other new users.
    head, train, val = planted_problem(n_users=60)
    hyp = planted_hyp(subsampling_factor=0.3, seed=5)
    sub_train, sub_val, sub_hyp = pipeline.tuning_subsample(train, val, hyp)
    data = train.union(val)
    for seed in (0, 1):
        order = np.random.default_rng(seed).permutation(train.n_users)
        other = pipeline.tuning_subsample(permuted_users(train, order), permuted_users(val, order), hyp)
        assert users_by_id(other[0]) == users_by_id(sub_train) and users_by_id(other[1]) == users_by_id(sub_val)
        assert other[2].num_users == sub_hyp.num_users == 18
        mine, theirs = retrain.protocol_split(data, seed=seed), retrain.protocol_split(permuted_users(data, order), seed=seed)
        assert users_by_id(theirs.new_users) == users_by_id(mine.new_users)
        assert sorted(theirs.pretrain.user_ids.tolist()) == sorted(mine.pretrain.user_ids.tolist())


def test_the_same_users_in_another_order_are_tuned_and_retrained_alike_bitwise():
    # Everything else is keyed by id (init, permutations, exact validation sums): with the tuning
    # subsample keyed too, users given in another order get the same tuning, epochs and rows.
    head, train, val = planted_problem(n_users=40)
    hyp = planted_hyp(subsampling_factor=0.5, seed=4)
    order = np.random.default_rng(3).permutation(40)
    a, b = (retrain_user_embeddings(_pretrained(head, t), t, v, hyp, max_iters=8, n_starts=4, backend=BACKEND)
            for t, v in ((train, val), (permuted_users(train, order), permuted_users(val, order))))
    assert [(e.a, e.b, e.loss, e.epochs) for e in a.tune.history] == [(e.a, e.b, e.loss, e.epochs) for e in b.tune.history]
    assert (a.epochs, a.val_loss, a.hyp) == (b.epochs, b.val_loss, b.hyp)
    assert torch.equal(b.model.user_embeddings[order], a.model.user_embeddings)  # user u is b's row order[u]


def test_one_more_user_keeps_the_tuning_subsample_but_for_one_in_and_one_out():
    # A daily job's data sorted by id: a new user with the smallest id shifts every index; the
    # tuning subsample (so the tuned hyper-parameters) used to be redrawn whole.
    head, train, val = planted_problem(n_users=60)  # ids 500 + 3 i
    hyp = planted_hyp(subsampling_factor=0.25, seed=2)

    def with_new_user(r, items, ratings):
        return Ratings.from_coo(np.concatenate([[0] * len(items), r.user_of_row() + 1]), np.concatenate([items, r.items]),
                                np.concatenate([ratings, r.ratings]), n_users=r.n_users + 1, n_items=r.n_items,
                                user_ids=np.concatenate([[7], r.user_ids]), item_ids=r.item_ids)

    before = set(pipeline.tuning_subsample(train, val, hyp)[0].user_ids.tolist())
    grown = pipeline.tuning_subsample(with_new_user(train, [1, 4, 9], [3.0, 4.0, 2.0]), with_new_user(val, [2], [5.0]),
                                      hyp)[0]
    after = set(grown.user_ids.tolist())
    assert len(before) == len(after) == 15  # round(60 / 4) == round(61 / 4)
    assert after - before <= {7} and len(before - after) == len(after - before)


def test_max_time_inf_means_no_limit_for_the_tuning_and_the_final_retrain():
    # tune takes max_time = math.inf as no limit; the pipeline passed it on as final_max_time and
    # refused it ("final_max_time must be a finite number > 0"), an argument the caller never gave.
    head, train, val = planted_problem(n_users=20)
    result = retrain_user_embeddings(_pretrained(head, train), train, val, planted_hyp(), max_iters=4, n_starts=4,
                                     max_time=math.inf, backend=BACKEND)
    assert result.stop_reason != "deadline" and result.epochs >= 1
    with pytest.raises(retrain.InputError, match="final_max_time must be a finite number > 0"):
        retrain_user_embeddings(_pretrained(head, train), train, val, planted_hyp(), final_max_time=-1.0,
                                backend=BACKEND)
