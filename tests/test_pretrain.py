"""Pretraining a base model: it must beat simple baselines, and reach RMSE <= 0.87 on ml-latest-small."""
from pathlib import Path

import numpy as np
import pytest

from retrain import InputError
from retrain.data import Ratings, synthetic_ratings
from retrain.movielens import load_movielens
from retrain.pretrain import pretrain

ML_SMALL = Path(__file__).resolve().parents[2] / "shared" / "data" / "ml-latest-small" / "ratings.csv"


def _rmse(model, test):
    pred = model.predict_indices(test.user_of_row(), test.items).numpy()
    return float(np.sqrt(np.mean((pred - test.ratings) ** 2)))


def test_models_beat_the_global_mean_on_synthetic_data():
    train, test = synthetic_ratings(600, 300, 30, seed=1).split_per_user(0.2, seed=0)
    baseline = float(np.sqrt(np.mean((test.ratings - train.ratings.mean()) ** 2)))
    biases = _rmse(pretrain(train, "user_item_biases"), test)
    mf = _rmse(pretrain(train, "matrix_factorization_8"), test)
    mlp = _rmse(pretrain(train, "mlp_8x6", iterations=10), test)
    assert biases < 0.9 * baseline and mf < biases and mlp < baseline
    model = pretrain(train, "matrix_factorization_8")
    assert model.head.name == "matrix_factorization_8" and model.head.d == 8
    assert np.all(model.head.item_vectors[:, -1].numpy() == 1.0)  # the constant column: last dim is a user bias


@pytest.mark.parametrize("model,kwargs,message", [
    ("svd_8", {}, "unknown model name"),
    ("matrix_factorization_1", {}, "K >= 2"),
    ("matrix_factorization_4", dict(iterations=2.0), r"iterations must be an integer in \[1, 2\*\*63 - 1\]"),
    ("matrix_factorization_4", dict(iterations=0), r"iterations must be an integer in \[1, 2\*\*63 - 1\]"),
    ("matrix_factorization_4", dict(reg=float("nan")), "reg must be a finite number >= 0"),
    ("mlp_4x4", dict(reg=-1.0), "reg must be a finite number >= 0"),
    ("user_item_biases", dict(seed=-1), r"seed must be an integer in \[0, 4294967295\]"),
    ("mlp_4x4", dict(seed=2**64), r"seed must be an integer in \[0, 4294967295\]"),  # overflowed in torch's generator
    ("mlp_4x4", dict(reg=1e308), r"reg must be .* <= 3.40282e\+38"),  # a RuntimeError inside torch's Adam
    ("matrix_factorization_4", dict(item_damping=1e308), r"item_damping must be .* <= 3.40282e\+38"),
])
def test_bad_arguments_name_the_problem(model, kwargs, message):
    with pytest.raises(InputError, match=message):
        pretrain(synthetic_ratings(20, 10, 5), model, **kwargs)


@pytest.mark.parametrize("model", ["matrix_factorization_4", "mlp_4x4"])
def test_ratings_that_all_weigh_zero_are_named(model):
    # The global mean was 0/0: a RuntimeWarning, then "head parameters must be finite".
    data = synthetic_ratings(20, 10, 5)
    weightless = Ratings.from_coo(data.user_of_row(), data.items, data.ratings, np.zeros(data.nnz))
    with pytest.raises(InputError, match=rf"every one of the {data.nnz} ratings has weight 0"):
        pretrain(weightless, model)


@pytest.mark.movielens
def test_ml_latest_small_test_rmse():
    if not ML_SMALL.exists():
        pytest.skip(f"{ML_SMALL} not present")
    ratings = load_movielens(ML_SMALL)
    train, test = ratings.split_random(0.2, seed=0)
    rmse = _rmse(pretrain(train, "matrix_factorization_32"), test)
    print(f"ml-latest-small matrix_factorization_32 test RMSE {rmse:.4f}")
    assert rmse <= 0.87
