"""Frozen heads (the item side) and models (head + user table), with safetensors save/load.

``pred(u, i) = tower(e_u) . Q[i] + b[i] + mu`` where ``tower`` is 0-2 frozen dense layers
``x -> act(W x + c)``.  File format (``docs/pipeline.md``, "One file"): a safetensors file with tensors
``item_vectors [I, h]``, ``item_bias [I]``, ``global_bias [1]``, the item ids,
``tower.{l}.weight [out, in]``, ``tower.{l}.bias [out]`` and, for a model, ``user_embeddings
[U, d]`` and the user ids; metadata ``format = "retrain.model"``, ``version = "1"``, ``contract``
(the training contract's version, ``retrain.contract.CONTRACT_VERSION``), ``name``, ``init``
(``zeros`` | ``glorot``) and ``activations`` (comma-separated, one per layer).  Ids are
``item_ids [I]`` / ``user_ids [U]`` (int64 or uint64) or, for string ids, ``item_ids.utf8``
(uint8, the UTF-8 texts one after the other) and ``item_ids.offsets [I + 1]`` (int64), likewise
for users.  The header is written deterministically (``retrain.files``): the same model gives the
same bytes.  A served bundle (``retrain.bundle``) adds its recipe to the same file.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from .contract import CONTRACT_VERSION, init_scale
from .errors import InputError, blame, check_indices, check_int
from .files import as_path, atomic_write_bytes, read_safetensors, safetensors_bytes
from .ids import IdIndex, decode, encode, exact_ids, format_id, same_kind

ACTIVATIONS = ("identity", "relu", "tanh")
_CHECK_ROWS = 1 << 20  # rows of a user table checked for NaN at a time
FORMAT = "retrain.model"
VERSION = "1"


@runtime_checkable
class HeadLike(Protocol):
    """What the trainer and the ``reference`` backend need from a frozen item side.

    ``Head`` (a dense tower and an item dot product) implements it and is what the fast backends
    train; any object with these members can be trained by the ``reference`` backend, so a head
    written in PyTorch needs nothing else.  It must not change while it is being trained.

    * ``n_items``, ``d``: number of items and the user embedding's dimension.
    * ``init``: the initial embeddings' scheme, ``"zeros"`` or ``"glorot"``; ``init_scale(n_users)``
      their half-width (``retrain.contract.init_scale``).
    * ``scores(emb, items)``: predictions ``[n, m]`` of embeddings ``emb [n, d]`` (float32) for
      item indices ``items [m]`` (int64), differentiable in ``emb``.  Row ``r`` must depend on
      ``emb[r]`` only: the probes of a user are the rows.
    """

    init: str

    @property
    def n_items(self) -> int: ...

    @property
    def d(self) -> int: ...

    def init_scale(self, n_users: int) -> float: ...

    def scores(self, emb: torch.Tensor, items: torch.Tensor) -> torch.Tensor: ...


_HEAD_LIKE_MEMBERS = ("n_items", "d", "init", "init_scale", "scores")


def check_head_like(head) -> None:
    """InputError unless ``head`` has ``HeadLike``'s members, at least one item and ``d >= 1``.

    What ``scores`` returns is checked where it is called (``retrain.backends.reference``).
    """
    missing = [name for name in _HEAD_LIKE_MEMBERS if not hasattr(head, name)]
    if missing:
        raise InputError(f"head must be a retrain.Head or implement retrain.heads.HeadLike; a "
                         f"{type(head).__name__} has no {', '.join(missing)}")
    check_int("head.n_items", head.n_items, 1)
    check_int("head.d", head.d, 1)


def check_scores(pred, n_rows: int, n_items: int) -> torch.Tensor:
    """``HeadLike.scores``' output ``pred``, or InputError unless it is a floating tensor
    ``[n_rows, n_items]`` (broadcasting a ``[n, 1]`` or ``[1, m]`` one would train wrong numbers)."""
    if not isinstance(pred, torch.Tensor) or not pred.is_floating_point():
        kind = f"a {pred.dtype} tensor" if isinstance(pred, torch.Tensor) else f"a {type(pred).__name__}"
        raise InputError(f"head.scores must return a floating-point torch tensor, got {kind}")
    if tuple(pred.shape) != (n_rows, n_items):
        raise InputError(f"head.scores(emb [{n_rows}, d], items [{n_items}]) must return [{n_rows}, {n_items}], "
                         f"got {list(pred.shape)}")
    return pred


def _activate(x: torch.Tensor, activation: str) -> torch.Tensor:
    if activation == "relu":
        return torch.relu(x)
    if activation == "tanh":
        return torch.tanh(x)
    return x  # "identity": Layer checks the name at construction


@dataclass(frozen=True, eq=False)
class Layer:
    """One frozen dense layer ``x -> act(weight @ x + bias)``; ``weight`` is ``[out, in]``.

    ``activation`` is one of ``ACTIVATIONS``; anything else raises here, at construction.
    """

    weight: torch.Tensor
    bias: torch.Tensor
    activation: str = "identity"

    def __post_init__(self):
        if self.activation not in ACTIVATIONS:
            raise InputError(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        weight = torch.as_tensor(self.weight, dtype=torch.float32).contiguous()
        bias = torch.as_tensor(self.bias, dtype=torch.float32).contiguous()
        if weight.ndim != 2 or bias.shape != (weight.shape[0],):
            raise InputError(f"a layer's weight must be [out, in] and its bias [out], got {tuple(weight.shape)} "
                             f"and {tuple(bias.shape)}")
        object.__setattr__(self, "weight", weight)
        object.__setattr__(self, "bias", bias)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``act(W x + c)`` on ``x [..., in]``, products as broadcast sums: a row's numbers do not
        depend on how many rows share the call (BLAS picks shape-dependent kernels)."""
        return _activate((x[..., None, :] * self.weight.to(x)).sum(-1) + self.bias.to(x), self.activation)


@dataclass(frozen=True, eq=False)
class Head:
    """The frozen item side: ``pred(e, i) = tower(e) . Q[i] + b[i] + mu`` (a ``HeadLike``).

    Attributes:
        item_vectors: ``Q [n_items, h]`` float32.
        item_bias: ``b [n_items]`` float32.
        global_bias: ``mu`` (float).
        tower: up to two ``Layer``s mapping the user embedding (``d``) to ``h``.
        init: initial user embeddings, ``"zeros"`` or ``"glorot"`` (uniform, ``sqrt(6/(d+U))``).
        name: the model name (``user_item_biases``, ``matrix_factorization_K``, ``mlp_DxH``).
        item_ids: original item ids ``[n_items]``, int64, uint64 or str (default ``0..n_items-1``).

    Frozen: the fields cannot be reassigned (``to`` and ``dataclasses.replace`` make copies), and
    every check runs at construction.
    """

    item_vectors: torch.Tensor
    item_bias: torch.Tensor
    global_bias: float
    tower: tuple = ()
    init: str = "glorot"
    name: str = "head"
    item_ids: np.ndarray | None = None

    def __post_init__(self):
        convert = lambda name, value: object.__setattr__(self, name, value)
        convert("item_vectors", torch.as_tensor(self.item_vectors, dtype=torch.float32).contiguous())
        convert("item_bias", torch.as_tensor(self.item_bias, dtype=torch.float32).contiguous())
        if isinstance(self.global_bias, (str, bytes)) or np.size(self.global_bias) != 1:
            raise InputError(f"global_bias must be one number, got {self.global_bias!r}")
        convert("global_bias", float(self.global_bias))
        n_items = self.item_vectors.shape[0] if self.item_vectors.ndim == 2 else 0
        convert("item_ids", np.arange(n_items, dtype=np.int64) if self.item_ids is None
                else exact_ids(self.item_ids, "item_ids"))
        for l, layer in enumerate(self.tower):
            if not isinstance(layer, Layer):
                raise InputError(f"tower layer {l} must be a retrain.Layer, got {type(layer).__name__}")
        convert("tower", tuple(self.tower))
        self.validate()

    def __repr__(self) -> str:
        return (f"Head({self.name}, {self.n_items} items, d={self.d}, h={self.h}, {len(self.tower)} tower layers, "
                f"init={self.init})")

    def validate(self) -> None:
        """Raise InputError if shapes disagree or values are not finite."""
        Q, b = self.item_vectors, self.item_bias
        if Q.ndim != 2 or Q.shape[0] < 1 or Q.shape[1] < 1:
            raise InputError(f"item_vectors must be [n_items, h] with n_items, h >= 1, got {tuple(Q.shape)}")
        if b.shape != (Q.shape[0],):
            raise InputError(f"item_bias must be [n_items={Q.shape[0]}], got {tuple(b.shape)}")
        if len(self.item_ids) != Q.shape[0]:
            raise InputError(f"item_ids must have n_items={Q.shape[0]} entries, got {len(self.item_ids)}")
        if len(self.tower) > 2:
            raise InputError(f"a tower has at most 2 layers, got {len(self.tower)}")
        if self.init not in ("zeros", "glorot"):
            raise InputError(f"init must be 'zeros' or 'glorot', got {self.init!r}")
        width = None
        for l, layer in enumerate(self.tower):
            if width is not None and layer.weight.shape[1] != width:
                raise InputError(f"tower layer {l} takes {layer.weight.shape[1]} inputs but layer {l-1} gives {width}")
            width = layer.weight.shape[0]
        if width is not None and width != Q.shape[1]:
            raise InputError(f"the tower outputs {width} values but item_vectors have h={Q.shape[1]} columns")
        tensors = [Q, b] + [t for layer in self.tower for t in (layer.weight, layer.bias)]
        if not all(bool(torch.isfinite(t).all()) for t in tensors) or not np.isfinite(self.global_bias):
            raise InputError("head parameters must be finite")

    def to(self, device) -> "Head":
        """This head with its tensors on ``device`` (itself when they are there already)."""
        device = torch.device(device)
        if self.item_vectors.device == device:
            return self
        tower = tuple(Layer(l.weight.to(device), l.bias.to(device), l.activation) for l in self.tower)
        return dataclasses.replace(self, item_vectors=self.item_vectors.to(device),
                                   item_bias=self.item_bias.to(device), tower=tower)

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
        return not self.tower or all(layer.activation == "identity" for layer in self.tower)

    def init_scale(self, n_users: int) -> float:
        """Half-width of the uniform init for ``n_users`` users (0 for zeros)."""
        return init_scale(self.init, self.d, n_users)

    def user_features(self, emb: torch.Tensor) -> torch.Tensor:
        """``tower(emb)``: ``[..., d] -> [..., h]`` (matrix products: for scoring and evaluation)."""
        x = emb
        for layer in self.tower:
            x = _activate(x @ layer.weight.to(x).T + layer.bias.to(x), layer.activation)
        return x

    def scores(self, emb: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """``HeadLike.scores``: ``[n, m]`` for ``emb [n, d]`` and ``items [m]``, products as
        broadcast sums so that each row's numbers do not depend on the other rows."""
        x = emb
        for layer in self.tower:
            x = layer(x)
        q = self.item_vectors.to(x)[items]  # [m, h]
        return (x[:, None, :] * q).sum(-1) + self.item_bias.to(x)[items] + self.global_bias

    def predict(self, emb: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Predictions for rows of embeddings ``emb [n, d]`` and item indices ``items [n]``."""
        feats = self.user_features(emb)
        Q = self.item_vectors.to(feats)
        return (feats * Q[items]).sum(-1) + self.item_bias.to(feats)[items] + self.global_bias

    @property
    def item_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """``(Q [n_items, h] float32, b + mu [n_items] float64)`` as numpy arrays (``Q`` a view of a
        CPU head's tensor): a serving request gathers its rows from them without a torch round
        trip.  Made once, and again when either tensor is modified in place (torch counts that in
        ``_version``), so an edited head never serves stale biases."""
        versions = (self.item_vectors._version, self.item_bias._version)
        cached = self.__dict__.get("_item_arrays")
        if cached is None or cached[0] != versions:
            arrays = (self.item_vectors.detach().cpu().numpy(),
                      self.item_bias.detach().cpu().numpy().astype(np.float64) + self.global_bias)
            cached = self.__dict__["_item_arrays"] = (versions, arrays)
        return cached[1]

    @functools.cached_property
    def item_index(self) -> IdIndex:
        """``item_ids`` with their sort order, made once: requests map original item ids through it.
        InputError when an item id is there twice."""
        return IdIndex(self.item_ids).unique("item id")

    def linear_form(self, items=None) -> tuple[torch.Tensor, torch.Tensor]:
        """For a linear head: ``(A [m, d], c [m])`` with ``pred(e, i) = A[i] . e + c[i]`` (float64)
        for the item indices ``items [m]`` (default: every item; serving asks only for a user's)."""
        if not self.is_linear:
            raise InputError("linear_form needs a linear head (no tower or identity activations)")
        Q, c = self.item_arrays  # gathers in numpy
        if items is not None:
            Q, c = Q[items], c[items]
        A = torch.from_numpy(Q.astype(np.float64))
        c = torch.from_numpy(c.copy() if items is None else c)  # never the cached array itself
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
    """A head and a user table: ``user_embeddings [n_users, d]`` with original ``user_ids``
    (int64, uint64 or str: ``retrain.ids``)."""

    head: Head
    user_embeddings: torch.Tensor
    user_ids: np.ndarray

    def __post_init__(self):
        check_head_like(self.head)  # a string raised an AttributeError on head.d below
        try:
            self.user_embeddings = torch.as_tensor(self.user_embeddings, dtype=torch.float32).contiguous()
        except (TypeError, ValueError, RuntimeError):  # torch's "new(): invalid data type 'str'"
            raise InputError(f"user_embeddings must be a [n_users, d] tensor or array of numbers, got "
                             f"{type(self.user_embeddings).__name__}") from None
        self.user_ids = exact_ids(self.user_ids, "user_ids")
        if self.user_embeddings.ndim != 2 or self.user_embeddings.shape[1] != self.head.d:
            raise InputError(f"user_embeddings must be [n_users, d={self.head.d}] for head {self.head.name!r}, "
                             f"got {tuple(self.user_embeddings.shape)}")
        if len(self.user_ids) != self.user_embeddings.shape[0]:
            raise InputError(f"user_ids has {len(self.user_ids)} entries for {self.user_embeddings.shape[0]} users")

    def __repr__(self) -> str:
        return f"Model({self.head.name}, {self.n_users} users, {self.head.n_items} items, d={self.head.d})"

    @property
    def n_users(self) -> int:
        return self.user_embeddings.shape[0]

    def user_index(self, user_ids) -> np.ndarray:
        """Rows of the original ``user_ids`` in the user table; InputError naming an unknown one."""
        return _positions(self.user_lookup, user_ids, "user")

    @property
    def user_lookup(self) -> IdIndex:
        """``user_ids`` with their sort order, made on first use and again only when ``user_ids`` is
        replaced (assign a new array rather than editing it in place).  InputError when a user id
        is there twice."""
        index = self.__dict__.get("_user_lookup")
        if index is None or index.ids is not self.user_ids:
            index = self.__dict__["_user_lookup"] = IdIndex(self.user_ids).unique("user id")
        return index

    def predict(self, user_ids, item_ids) -> torch.Tensor:
        """Predictions ``[n]`` for equal-length arrays of original user and item ids (not row
        indices: ``predict_indices`` takes those); InputError naming an unknown id."""
        return self.predict_indices(self.user_index(user_ids), _positions(self.head.item_index, item_ids, "item"))

    def predict_indices(self, users, items) -> torch.Tensor:
        """Predictions ``[n]`` for user row indices and item indices (equal-length arrays); InputError
        naming an index that is not an integer in range (a negative one would count from the end)."""
        users = torch.from_numpy(check_indices("users", users, self.n_users))
        items = torch.from_numpy(check_indices("items", items, self.head.n_items))
        if len(users) != len(items):
            raise InputError(f"users and items must have equal lengths, got {len(users)} and {len(items)}")
        return self.head.predict(self.user_embeddings[users], items)

    def save(self, path) -> None:
        """Write the model atomically and byte-reproducibly in the documented format."""
        save_file(path, head=self.head, user_embeddings=self.user_embeddings, user_ids=self.user_ids)

    @staticmethod
    def load(path) -> "Model":
        head, tensors, _ = read_model_file(path)
        return model_from_tensors(path, head, tensors)


def _positions(known: IdIndex, query, what: str) -> np.ndarray:
    query = exact_ids(np.atleast_1d(np.asarray(query)) if not hasattr(query, "to_numpy") else query, f"{what}_ids")
    same_kind(known.ids, query, f"{what} id")
    index, found = known.find(query)
    if not found.all():
        row = int(np.argmin(found))
        raise InputError(f"{what} id {format_id(query[row])!r} (entry {row}) is not in the model")
    return index


def model_from_tensors(path, head: Head, tensors: dict) -> Model:
    """The ``Model`` of a file's tensors; InputError naming the file when the user table is missing."""
    with blame(path):
        user_ids = decode(tensors, "user_ids")
        if "user_embeddings" not in tensors or user_ids is None:
            raise InputError("no user_embeddings / user_ids in the file (a head only?)")
        model = Model(head, torch.from_numpy(np.array(tensors["user_embeddings"])), user_ids)
        _check_finite_rows(model.user_embeddings.numpy())  # a retrain never writes one: it would predict NaN
        model.user_lookup  # made now, so that a repeated user id fails the load, not a later request
    return model


def _check_finite_rows(table: np.ndarray) -> None:
    """InputError naming the first row of ``table [n, d]`` that is not finite.  One sum first (a
    sum of finite rows is finite but for an overflow): a bool copy of the table would cost a
    quarter of its memory and most of the load's time."""
    if math.isfinite(np.add.reduce(table, axis=None)):
        return
    for first in range(0, len(table), _CHECK_ROWS):
        bad = np.flatnonzero(~np.isfinite(table[first:first + _CHECK_ROWS]).all(1))
        if len(bad):
            raise InputError(f"user_embeddings row {first + int(bad[0])} is not finite")


def head_tensors(head: Head) -> dict:
    """The tensors of a head in the file format (``user_embeddings`` etc. are added by the caller)."""
    tensors = {
        "item_vectors": head.item_vectors.cpu(), "item_bias": head.item_bias.cpu(),
        "global_bias": torch.tensor([head.global_bias], dtype=torch.float32),
        **encode(head.item_ids, "item_ids"),
    }
    for l, layer in enumerate(head.tower):
        tensors[f"tower.{l}.weight"] = layer.weight.cpu()
        tensors[f"tower.{l}.bias"] = layer.bias.cpu()
    return tensors


def head_metadata(head: Head) -> dict:
    return {"format": FORMAT, "version": VERSION, "contract": CONTRACT_VERSION, "name": head.name, "init": head.init,
            "activations": ",".join(layer.activation for layer in head.tower)}


def save_file(path, *, head: Head, user_embeddings=None, user_ids=None, extra_tensors=None,
              extra_metadata=None) -> None:
    """Atomically write a head (and optionally a user table, and more tensors and metadata
    entries) as safetensors, the same bytes for the same content."""
    path = as_path(path, "path")  # before any work: os's TypeError deep in the write for an int
    tensors = head_tensors(head)
    if user_embeddings is not None:
        tensors["user_embeddings"] = torch.as_tensor(user_embeddings, dtype=torch.float32)
        _check_finite_rows(tensors["user_embeddings"].detach().cpu().numpy())  # the load would refuse the file
        tensors.update(encode(exact_ids(user_ids, "user_ids"), "user_ids"))
    tensors.update(extra_tensors or {})
    atomic_write_bytes(path, safetensors_bytes(tensors, {**head_metadata(head), **(extra_metadata or {})}))


def read_model_file(path) -> tuple[Head, dict, dict]:
    """``(head, tensors, metadata)`` of a model or head file; InputError naming the file and what
    is wrong (not safetensors, another format, another contract version, a missing tensor)."""
    tensors, metadata = read_safetensors(path)
    if metadata.get("format") != FORMAT:
        raise InputError(f"{path}: metadata format is {metadata.get('format')!r}, expected {FORMAT!r}")
    # Files written before the contract had a version were written under version 1.
    contract = metadata.get("contract", "1")
    if contract != CONTRACT_VERSION:
        raise InputError(f"{path} was written under training contract version {contract!r}, but this retrain "
                         f"implements version {CONTRACT_VERSION!r}: its embeddings cannot be reproduced here "
                         "(retrain again with this version)")
    acts = [a for a in metadata.get("activations", "").split(",") if a]
    tower_tensors = [f"tower.{l}.{t}" for l in range(len(acts)) for t in ("weight", "bias")]
    needed = ["item_vectors", "item_bias", "global_bias"] + tower_tensors
    missing = [name for name in needed if name not in tensors]
    with blame(path):
        item_ids = decode(tensors, "item_ids")
        if missing or item_ids is None:
            raise InputError(f"the file lacks the tensor(s) {missing or ['item_ids']}: not a complete model file")
        absent = [key for key in ("init", "name") if key not in metadata]  # every file records them
        if absent:  # a default init would give other initial embeddings than the model was trained from
            raise InputError(f"the metadata lacks {absent}: not a complete model file")
        extra = sorted(name for name in tensors if name.startswith("tower.") and name not in tower_tensors)
        if extra:  # the metadata and the tensors disagree on the tower: which one is the model?
            raise InputError(f"the tensor(s) {extra} belong to no layer of the activations {acts} in the metadata")
        if tensors["global_bias"].shape != (1,):
            raise InputError(f"global_bias must be [1], got {list(tensors['global_bias'].shape)}")
        t = lambda name: torch.from_numpy(np.array(tensors[name]))
        tower = [Layer(t(f"tower.{l}.weight"), t(f"tower.{l}.bias"), act) for l, act in enumerate(acts)]
        head = Head(t("item_vectors"), t("item_bias"), float(tensors["global_bias"][0]), tower,
                    init=metadata["init"], name=metadata["name"], item_ids=item_ids)
        head.item_index  # made now, so that a repeated item id fails the load, not a later request
    return head, tensors, metadata


def load_head(path) -> Head:
    """Load the head of a saved model or head file."""
    return read_model_file(path)[0]
