"""Frozen heads (the item side) and models (head + user table), with safetensors save/load.

``pred(u, i) = tower(e_u) . Q[i] + b[i] + mu`` where ``tower`` is 0-2 frozen dense layers
``x -> act(W x + c)``.  File format (``docs/semantics.md``): a safetensors file with tensors
``item_vectors [I, h]``, ``item_bias [I]``, ``global_bias [1]``, ``item_ids [I]`` (int64),
``tower.{l}.weight [out, in]``, ``tower.{l}.bias [out]`` and, for a model, ``user_embeddings
[U, d]`` and ``user_ids [U]`` (int64); metadata ``format = "retrain.model"``, ``version = "1"``,
``name``, ``init`` (``zeros`` | ``glorot``) and ``activations`` (comma-separated, one per layer).
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field

import numpy as np
import torch

from .errors import InputError

ACTIVATIONS = ("identity", "relu", "tanh")
FORMAT = "retrain.model"
VERSION = "1"


@dataclass
class Layer:
    """One frozen dense layer ``x -> act(weight @ x + bias)``; ``weight`` is ``[out, in]``."""

    weight: torch.Tensor
    bias: torch.Tensor
    activation: str = "identity"


@dataclass
class Head:
    """The frozen item side.

    Attributes:
        item_vectors: ``Q [n_items, h]`` float32.
        item_bias: ``b [n_items]`` float32.
        global_bias: ``mu`` (float).
        tower: up to two ``Layer``s mapping the user embedding (``d``) to ``h``.
        init: initial user embeddings, ``"zeros"`` or ``"glorot"`` (uniform, ``sqrt(6/(d+U))``).
        name: the model name (``user_item_biases``, ``matrix_factorization_K``, ``mlp_DxH``).
        item_ids: original item ids ``[n_items]`` int64 (default ``0..n_items-1``).
    """

    item_vectors: torch.Tensor
    item_bias: torch.Tensor
    global_bias: float
    tower: list[Layer] = field(default_factory=list)
    init: str = "glorot"
    name: str = "head"
    item_ids: np.ndarray | None = None

    def __post_init__(self):
        self.item_vectors = torch.as_tensor(self.item_vectors, dtype=torch.float32).contiguous()
        self.item_bias = torch.as_tensor(self.item_bias, dtype=torch.float32).contiguous()
        self.global_bias = float(self.global_bias)
        if self.item_ids is None:
            self.item_ids = np.arange(self.item_vectors.shape[0], dtype=np.int64)
        self.item_ids = np.asarray(self.item_ids, dtype=np.int64)
        self.tower = [Layer(torch.as_tensor(l.weight, dtype=torch.float32).contiguous(),
                            torch.as_tensor(l.bias, dtype=torch.float32).contiguous(), l.activation)
                      for l in self.tower]
        self.validate()

    def validate(self) -> None:
        """Raise ValueError if shapes disagree or values are not finite."""
        Q, b = self.item_vectors, self.item_bias
        if Q.ndim != 2 or Q.shape[0] < 1 or Q.shape[1] < 1:
            raise ValueError(f"item_vectors must be [n_items, h] with n_items, h >= 1, got {tuple(Q.shape)}")
        if b.shape != (Q.shape[0],):
            raise ValueError(f"item_bias must be [n_items={Q.shape[0]}], got {tuple(b.shape)}")
        if len(self.item_ids) != Q.shape[0]:
            raise ValueError(f"item_ids must have n_items={Q.shape[0]} entries, got {len(self.item_ids)}")
        if len(self.tower) > 2:
            raise ValueError(f"a tower has at most 2 layers, got {len(self.tower)}")
        if self.init not in ("zeros", "glorot"):
            raise ValueError(f"init must be 'zeros' or 'glorot', got {self.init!r}")
        width = None
        for l, layer in enumerate(self.tower):
            if layer.activation not in ACTIVATIONS:
                raise ValueError(f"tower layer {l}: activation must be one of {ACTIVATIONS}, got {layer.activation!r}")
            if layer.weight.ndim != 2 or layer.bias.shape != (layer.weight.shape[0],):
                raise ValueError(f"tower layer {l}: weight must be [out, in] and bias [out], got "
                                 f"{tuple(layer.weight.shape)} and {tuple(layer.bias.shape)}")
            if width is not None and layer.weight.shape[1] != width:
                raise ValueError(f"tower layer {l} takes {layer.weight.shape[1]} inputs but layer {l-1} gives {width}")
            width = layer.weight.shape[0]
        if width is not None and width != Q.shape[1]:
            raise ValueError(f"the tower outputs {width} values but item_vectors have h={Q.shape[1]} columns")
        tensors = [Q, b] + [t for layer in self.tower for t in (layer.weight, layer.bias)]
        if not all(bool(torch.isfinite(t).all()) for t in tensors) or not np.isfinite(self.global_bias):
            raise ValueError("head parameters must be finite")

    @property
    def n_items(self) -> int:
        return self.item_vectors.shape[0]

    @property
    def h(self) -> int:
        return self.item_vectors.shape[1]

    @property
    def d(self) -> int:
        """Dimension of a user embedding."""
        return self.tower[0].weight.shape[1] if self.tower else self.h

    @property
    def is_linear(self) -> bool:
        """True when ``pred`` is affine in the embedding (no tower, or identity activations)."""
        return all(layer.activation == "identity" for layer in self.tower)

    def init_scale(self, n_users: int) -> float:
        """Half-width of the uniform init for ``n_users`` users (0 for zeros)."""
        from .contract import init_scale
        return init_scale(self.init, self.d, n_users)

    def user_features(self, emb: torch.Tensor) -> torch.Tensor:
        """``tower(emb)``: ``[..., d] -> [..., h]``."""
        x = emb
        for layer in self.tower:
            x = x @ layer.weight.to(x).T + layer.bias.to(x)
            if layer.activation == "relu":
                x = torch.relu(x)
            elif layer.activation == "tanh":
                x = torch.tanh(x)
        return x

    def predict(self, emb: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Predictions for rows of embeddings ``emb [n, d]`` and item indices ``items [n]``."""
        feats = self.user_features(emb)
        Q = self.item_vectors.to(feats)
        return (feats * Q[items]).sum(-1) + self.item_bias.to(feats)[items] + self.global_bias

    def linear_form(self) -> tuple[torch.Tensor, torch.Tensor]:
        """For a linear head: ``(A [I, d], c [I])`` with ``pred(e, i) = A[i] . e + c[i]`` (float64)."""
        if not self.is_linear:
            raise ValueError("linear_form needs a linear head (no tower or identity activations)")
        A = self.item_vectors.double()
        c = self.item_bias.double() + self.global_bias
        for layer in reversed(self.tower):  # Q . (W x + c0) = (W^T Q) . x + Q . c0
            c = c + A @ layer.bias.double()
            A = A @ layer.weight.double()
        return A, c

    # ----------------------------------------------------------------- named heads
    @staticmethod
    def user_item_biases(item_bias, global_bias: float, item_ids=None) -> "Head":
        """``pred = e_u + b_i + mu`` with ``d = h = 1``, ``Q = 1``, zeros init."""
        b = torch.as_tensor(item_bias, dtype=torch.float32)
        return Head(torch.ones(len(b), 1), b, global_bias, init="zeros", name="user_item_biases", item_ids=item_ids)

    @staticmethod
    def matrix_factorization(item_vectors, item_bias, global_bias: float, item_ids=None) -> "Head":
        """``pred = e_u . Q_i + b_i + mu`` with ``d = h = K``, Glorot init."""
        Q = torch.as_tensor(item_vectors, dtype=torch.float32)
        return Head(Q, item_bias, global_bias, init="glorot", name=f"matrix_factorization_{Q.shape[1]}", item_ids=item_ids)


@dataclass
class Model:
    """A head and a user table: ``user_embeddings [n_users, d]`` with original ``user_ids``."""

    head: Head
    user_embeddings: torch.Tensor
    user_ids: np.ndarray

    def __post_init__(self):
        self.user_embeddings = torch.as_tensor(self.user_embeddings, dtype=torch.float32).contiguous()
        self.user_ids = np.asarray(self.user_ids, dtype=np.int64)
        if self.user_embeddings.ndim != 2 or self.user_embeddings.shape[1] != self.head.d:
            raise ValueError(f"user_embeddings must be [n_users, d={self.head.d}] for head {self.head.name!r}, "
                             f"got {tuple(self.user_embeddings.shape)}")
        if len(self.user_ids) != self.user_embeddings.shape[0]:
            raise ValueError(f"user_ids has {len(self.user_ids)} entries for {self.user_embeddings.shape[0]} users")

    @property
    def n_users(self) -> int:
        return self.user_embeddings.shape[0]

    def predict(self, users, items) -> torch.Tensor:
        """Predictions for user indices and item indices (equal-length arrays)."""
        users = torch.as_tensor(np.asarray(users), dtype=torch.long)
        items = torch.as_tensor(np.asarray(items), dtype=torch.long)
        return self.head.predict(self.user_embeddings[users], items)

    def save(self, path) -> None:
        """Write the model atomically (temporary file, fsync, rename) in the documented format."""
        save_file(path, head=self.head, user_embeddings=self.user_embeddings, user_ids=self.user_ids)

    @staticmethod
    def load(path) -> "Model":
        head, tensors = _load(path)
        if "user_embeddings" not in tensors:
            raise InputError(f"{path}: no user_embeddings in the file (a head only?)")
        return Model(head, tensors["user_embeddings"], tensors["user_ids"].numpy())


def save_file(path, *, head: Head, user_embeddings=None, user_ids=None) -> None:
    """Atomically write a head (and optionally a user table) as safetensors."""
    from safetensors.torch import save as st_save

    tensors = {
        "item_vectors": head.item_vectors, "item_bias": head.item_bias,
        "global_bias": torch.tensor([head.global_bias], dtype=torch.float32),
        "item_ids": torch.as_tensor(head.item_ids, dtype=torch.int64),
    }
    for l, layer in enumerate(head.tower):
        tensors[f"tower.{l}.weight"] = layer.weight
        tensors[f"tower.{l}.bias"] = layer.bias
    if user_embeddings is not None:
        tensors["user_embeddings"] = torch.as_tensor(user_embeddings, dtype=torch.float32)
        tensors["user_ids"] = torch.as_tensor(np.asarray(user_ids), dtype=torch.int64)
    metadata = {"format": FORMAT, "version": VERSION, "name": head.name, "init": head.init,
                "activations": ",".join(layer.activation for layer in head.tower)}
    blob = st_save({k: v.contiguous() for k, v in tensors.items()}, metadata=metadata)
    atomic_write_bytes(path, blob)


def atomic_write_bytes(path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a part."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _load(path) -> tuple[Head, dict]:
    from safetensors import safe_open

    if not os.path.isfile(path):
        raise InputError(f"model file not found: {path}")
    try:
        with safe_open(os.fspath(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises its own error types for malformed files
        raise InputError(f"{path}: not a safetensors model file ({exc})") from None
    if metadata.get("format") != FORMAT:
        raise InputError(f"{path}: metadata format is {metadata.get('format')!r}, expected {FORMAT!r}")
    acts = [a for a in metadata.get("activations", "").split(",") if a]
    tower = [Layer(tensors[f"tower.{l}.weight"], tensors[f"tower.{l}.bias"], act) for l, act in enumerate(acts)]
    head = Head(tensors["item_vectors"], tensors["item_bias"], float(tensors["global_bias"][0]), tower,
                init=metadata.get("init", "glorot"), name=metadata.get("name", "head"),
                item_ids=tensors["item_ids"].numpy())
    return head, tensors


def load_head(path) -> Head:
    """Load the head of a saved model or head file."""
    return _load(path)[0]
