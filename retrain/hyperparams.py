"""Hyper-parameters of a retrain: the seed's ``HyperParams`` with per-model defaults."""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from .contract import FLOAT32_MAX, MAX_BATCH_SIZE, MAX_SEED, MAX_STEPS
from .errors import C_INT_MAX, InputError, check_float, check_fraction, check_int

OPTIMIZERS = ("adam", "sgd")
_MODEL_RE = re.compile(r"^(user_item_biases|matrix_factorization_(\d+)|mlp_(\d+)x(\d+))$")

# Defaults per model family: a checkpoint every few epochs during tuning (patience 0 there), and
# the fraction of users the tuner trains on.
_DEFAULTS = {
    "user_item_biases": dict(batch_size=16, max_epochs=64, epochs_per_checkpoint=2, subsampling_factor=0.25),
    "matrix_factorization": dict(batch_size=16, max_epochs=128, epochs_per_checkpoint=4, subsampling_factor=0.25),
    "mlp": dict(batch_size=16, max_epochs=128, epochs_per_checkpoint=4, subsampling_factor=0.25),
}


MAX_MODEL_SIZE = C_INT_MAX  # a model name's d and h: C ints in the cpu kernels
DEFAULT_DAMPING = 5.0  # HyperParams.damping's default (docs/pipeline.md, "New users with few ratings")
# Fields added after files began recording hyper-parameters, with the value every older file's
# model was trained with.
RECORDED_BEFORE = dict(damping=0.0)


def lr_from_a(a: float) -> float:
    """The seed's learning-rate mapping ``lr = 1e-3 * 10**a``."""
    return 1e-3 * 10.0 ** float(a)


def reg_from_b(b: float) -> float:
    """The seed's regularisation mapping ``reg = 1e-5 * 10**b``."""
    return 1e-5 * 10.0 ** float(b)


def model_family(model: str) -> str:
    """``user_item_biases``, ``matrix_factorization`` or ``mlp``; InputError for unknown names."""
    m = _MODEL_RE.match(model) if isinstance(model, str) else None
    if m is None:
        raise InputError(
            f"unknown model name {model!r}: expected 'user_item_biases', 'matrix_factorization_K' or 'mlp_DxH'"
        )
    # mlp_0x4 pretrained a d = 0 model; the kernels take d and h as C ints (pybind11 refused more)
    if any(size is not None and not 1 <= int(size) <= MAX_MODEL_SIZE for size in m.groups()[1:]):
        raise InputError(f"model name {model!r}: its sizes must be in [1, {MAX_MODEL_SIZE}]")
    return model.rsplit("_", 1)[0] if m.group(2) else ("mlp" if m.group(3) else model)


@dataclass(frozen=True)
class HyperParams:
    """Everything that defines how user embeddings are (re)trained.

    ``learning_rate`` and ``regularization`` are what the tuner searches (``lr = 1e-3 * 10**a``,
    ``reg = 1e-5 * 10**b``).  Fields left as ``None`` take the model family's default.
    ``patience`` counts checkpoints without improvement before a probe stops; ``num_users`` is the
    user count that sets the Glorot bound (``None``: the data's).  ``damping``: count-independent
    L2 on the user embedding, in ratings: a user with n ratings is shrunk as if by ``damping / n``
    more reg (``StepSpec.damping``, docs/semantics.md); fixed, the tuner does not search it.  A bad
    value (a float or a bool where an integer belongs, a negative count, a seed above ``2**32 - 1``,
    ``max_epochs``, ``epochs_per_checkpoint`` or ``patience`` above ``MAX_STEPS = 2**62``, which an
    epoch's one Adam step or more would pass, a non-finite rate) raises InputError naming the field.
    """

    model: str = "matrix_factorization_32"
    learning_rate: float = 1e-3
    regularization: float = 1e-5
    optimizer: str = "adam"
    batch_size: int | None = None
    seed: int = 0
    max_epochs: int | None = None
    epochs_per_checkpoint: int | None = None
    patience: int = 0
    subsampling_factor: float | None = None
    num_users: int | None = None
    damping: float = DEFAULT_DAMPING

    def __post_init__(self):
        # Every field is checked and stored as a plain Python value (a numpy integer becomes an
        # int), so that ``to_dict`` is JSON as it is and a bad value fails here, naming its field.
        defaults = _DEFAULTS[model_family(self.model)]
        for name, value in defaults.items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        if self.optimizer not in OPTIMIZERS:
            raise InputError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        checked = dict(
            learning_rate=check_float("learning_rate", self.learning_rate, 0.0, strict=True, maximum=FLOAT32_MAX),
            regularization=check_float("regularization", self.regularization, 0.0, maximum=FLOAT32_MAX),
            batch_size=check_int("batch_size", self.batch_size, 1, MAX_BATCH_SIZE),
            seed=check_int("seed", self.seed, 0, MAX_SEED),
            max_epochs=check_int("max_epochs", self.max_epochs, 1, MAX_STEPS),
            epochs_per_checkpoint=check_int("epochs_per_checkpoint", self.epochs_per_checkpoint, 1, MAX_STEPS),
            patience=check_int("patience", self.patience, 0, MAX_STEPS),
            subsampling_factor=check_fraction("subsampling_factor", self.subsampling_factor, zero=False, one=True),
            num_users=None if self.num_users is None else check_int("num_users", self.num_users, 1),
            damping=check_float("damping", self.damping, 0.0, maximum=FLOAT32_MAX),
        )
        for name, value in checked.items():
            object.__setattr__(self, name, value)

    @classmethod
    def recorded(cls, fields: dict) -> "HyperParams":
        """The hyper-parameters a model file or ``.hyp.json`` recorded (``to_dict``'s fields).  A
        field the file predates takes the value its model was trained with, not today's default:
        ``damping`` 0.  Any other missing field is an InputError naming it: every file records
        them all, and today's default need not be what the model was trained with."""
        if not isinstance(fields, dict):
            raise InputError(f"the recorded hyper-parameters must be a mapping, got {type(fields).__name__}")
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in fields and f.name not in RECORDED_BEFORE]
        if missing:
            raise InputError(f"the recorded hyper-parameters lack the field(s) {missing}")
        return cls(**{**RECORDED_BEFORE, **fields})

    def replace(self, **changes) -> "HyperParams":
        """A copy with ``changes`` applied (like ``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)

    def with_ab(self, a: float, b: float) -> "HyperParams":
        """A copy with ``lr = 1e-3 * 10**a`` and ``reg = 1e-5 * 10**b``."""
        return self.replace(learning_rate=lr_from_a(a), regularization=reg_from_b(b))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def check_hyperparams(hyp, name: str = "hyp") -> HyperParams:
    """``hyp`` if it is a ``HyperParams``, else InputError naming ``name`` (a dict or a model name
    raised an AttributeError on its first field deep in the trainer)."""
    if not isinstance(hyp, HyperParams):
        raise InputError(f"{name} must be a retrain.HyperParams, got {type(hyp).__name__}: build one with "
                         f"retrain.HyperParams(model=...)")
    return hyp
