"""Hyper-parameters of a retrain: the seed's ``HyperParams`` with per-model defaults."""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

OPTIMIZERS = ("adam", "sgd")
_MODEL_RE = re.compile(r"^(user_item_biases|matrix_factorization_(\d+)|mlp_(\d+)x(\d+))$")

# Defaults per model family: a checkpoint every few epochs during tuning (patience 0 there), and
# the fraction of users the tuner trains on.
_DEFAULTS = {
    "user_item_biases": dict(batch_size=16, max_epochs=64, epochs_per_checkpoint=2, subsampling_factor=0.25),
    "matrix_factorization": dict(batch_size=16, max_epochs=128, epochs_per_checkpoint=4, subsampling_factor=0.25),
    "mlp": dict(batch_size=16, max_epochs=128, epochs_per_checkpoint=4, subsampling_factor=0.25),
}


def lr_from_a(a: float) -> float:
    """The seed's learning-rate mapping ``lr = 1e-3 * 10**a``."""
    return 1e-3 * 10.0 ** float(a)


def reg_from_b(b: float) -> float:
    """The seed's regularisation mapping ``reg = 1e-5 * 10**b``."""
    return 1e-5 * 10.0 ** float(b)


def model_family(model: str) -> str:
    """``user_item_biases``, ``matrix_factorization`` or ``mlp``; ValueError for unknown names."""
    m = _MODEL_RE.match(model)
    if m is None:
        raise ValueError(
            f"unknown model name {model!r}: expected 'user_item_biases', 'matrix_factorization_K' or 'mlp_DxH'"
        )
    return model.rsplit("_", 1)[0] if m.group(2) else ("mlp" if m.group(3) else model)


@dataclass(frozen=True)
class HyperParams:
    """Everything that defines how user embeddings are (re)trained.

    ``learning_rate`` and ``regularization`` are what the tuner searches (``lr = 1e-3 * 10**a``,
    ``reg = 1e-5 * 10**b``).  Fields left as ``None`` take the model family's default.
    ``patience`` counts checkpoints without improvement before a probe stops; ``num_users`` is the
    user count that sets the Glorot bound (``None``: the data's).
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

    def __post_init__(self):
        defaults = _DEFAULTS[model_family(self.model)]
        for name, value in defaults.items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        for name in ("batch_size", "max_epochs", "epochs_per_checkpoint"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.patience < 0:
            raise ValueError(f"patience must be >= 0, got {self.patience}")
        if not 0.0 < self.subsampling_factor <= 1.0:
            raise ValueError(f"subsampling_factor must be in (0, 1], got {self.subsampling_factor}")
        if not (self.learning_rate > 0 and self.regularization >= 0):
            raise ValueError(
                f"learning_rate must be > 0 and regularization >= 0, got {self.learning_rate}, {self.regularization}"
            )
        if self.num_users is not None and self.num_users < 1:
            raise ValueError(f"num_users must be >= 1, got {self.num_users}")

    def replace(self, **changes) -> "HyperParams":
        """A copy with ``changes`` applied (like ``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)

    def with_ab(self, a: float, b: float) -> "HyperParams":
        """A copy with ``lr = 1e-3 * 10**a`` and ``reg = 1e-5 * 10**b``."""
        return self.replace(learning_rate=lr_from_a(a), regularization=reg_from_b(b))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
