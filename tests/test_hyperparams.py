"""HyperParams: per-model defaults, and every bad field raises InputError naming it."""
import json

import numpy as np
import pytest

from retrain import HyperParams, InputError

INTEGER_FIELDS = ("batch_size", "max_epochs", "epochs_per_checkpoint", "patience", "seed", "num_users")
NOT_INTEGERS = (16.0, 2.5, True, "16")
BAD_INTEGERS = ([(field, value) for field in INTEGER_FIELDS for value in NOT_INTEGERS]
                + [("batch_size", 0), ("max_epochs", 0), ("epochs_per_checkpoint", 0), ("patience", -1), ("seed", -1),
                   ("num_users", 0), ("patience", None), ("seed", None),
                   # the contract uses the seed mod 2**32: 2**32 trained exactly as 0, 2**63 crashed the cpu backend
                   ("seed", 2**32), ("seed", 2**63)])  # None: "the default" for the others
BAD_FLOATS = [
    ("learning_rate", 0.0), ("learning_rate", -1e-3), ("learning_rate", float("nan")), ("learning_rate", float("inf")),
    ("learning_rate", "0.01"), ("learning_rate", 1e39), ("regularization", 1e39),  # inf in float32: "diverged"
    ("regularization", -1e-5), ("regularization", float("nan")), ("regularization", float("inf")),
    ("subsampling_factor", 0.0), ("subsampling_factor", 1.5), ("subsampling_factor", float("nan")),
    ("damping", -1.0), ("damping", float("nan")), ("damping", float("inf")), ("damping", 1e39), ("damping", "5"),
    ("damping", None),
]


@pytest.mark.parametrize("field,value", BAD_INTEGERS)
def test_integer_fields_reject_non_integers_and_values_below_their_range(field, value):
    with pytest.raises(InputError, match=rf"^{field} must be an integer"):
        HyperParams(model="matrix_factorization_4", **{field: value})


@pytest.mark.parametrize("field,value", BAD_FLOATS)
def test_float_fields_reject_non_finite_and_out_of_range_values(field, value):
    with pytest.raises(InputError, match=rf"^{field} must be"):
        HyperParams(model="matrix_factorization_4", **{field: value})


@pytest.mark.parametrize("field,value,match", [
    ("model", "svd_8", "unknown model name 'svd_8'"),
    ("model", None, "unknown model name None"),
    ("optimizer", "rmsprop", "optimizer must be one of"),
    # mlp_0x4 pretrained a model with d = 0
    ("model", "mlp_0x4", r"model name 'mlp_0x4': its sizes must be in \[1, 2147483647\]"),
    ("model", "mlp_4x00", r"model name 'mlp_4x00': its sizes must be in \[1, 2147483647\]"),
    ("model", "matrix_factorization_0", r"model name 'matrix_factorization_0': its sizes must be in \[1, 2147483647\]"),
])
def test_names_must_be_known(field, value, match):
    with pytest.raises(InputError, match=match):
        HyperParams(**{field: value})


def test_defaults_follow_the_model_and_values_are_stored_as_plain_python():
    hyp = HyperParams(model="user_item_biases", seed=np.int64(3), learning_rate=np.float32(0.5), num_users=np.int32(7))
    assert (hyp.batch_size, hyp.max_epochs, hyp.epochs_per_checkpoint) == (16, 64, 2)
    assert HyperParams(model="matrix_factorization_8").max_epochs == 128
    assert type(hyp.seed) is int and type(hyp.num_users) is int and type(hyp.learning_rate) is float
    assert HyperParams(**json.loads(json.dumps(hyp.to_dict()))) == hyp  # a .hyp.json file round-trips
    assert HyperParams(model="matrix_factorization_4", subsampling_factor=1, regularization=0).subsampling_factor == 1.0


def test_recorded_fields_missing_from_an_old_file_take_the_value_it_was_trained_with():
    hyp = HyperParams(model="matrix_factorization_4", damping=3.0)
    old = {k: v for k, v in hyp.to_dict().items() if k != "damping"}  # written before damping existed
    assert HyperParams.recorded(old) == hyp.replace(damping=0.0)
    assert HyperParams.recorded(hyp.to_dict()) == hyp


@pytest.mark.parametrize("field", ["learning_rate", "regularization", "batch_size", "seed", "num_users"])
def test_a_recorded_field_missing_other_than_those_added_later_is_named(field):
    # A recipe without its learning rate used to serve with today's default (1e-3), silently.
    hyp = HyperParams(model="matrix_factorization_4", learning_rate=0.05, num_users=7)
    fields = {k: v for k, v in hyp.to_dict().items() if k != field}
    with pytest.raises(InputError, match=rf"lack the field\(s\) \['{field}'\]"):
        HyperParams.recorded(fields)
