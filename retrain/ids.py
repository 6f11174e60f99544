"""Original user and item ids, kept exact: integers of any width, or strings.

An id column is one of

* integers: int64, or uint64 when some id is at least ``2**63`` (then none may be negative);
  integral floats up to ``2**53`` (a pandas column that met a NaN once) are accepted as integers;
* strings (numpy ``str_``).

Anything else (a float id like ``1.5``, NaN, None, a bool, integers mixed with strings, an integer
that fits neither int64 nor uint64) is an InputError naming the column and the row.  Ids are never
cast blindly: ``1.5`` would merge into user 1, NaN would become ``INT64_MIN`` and a uint64 above
``2**63`` would wrap negative.

``lookup`` finds ids of one column in another (a model's), whatever their integer widths
(``IdIndex`` keeps a column's sort order for many lookups);
``encode`` / ``decode`` store a column in safetensors tensors (strings as UTF-8 bytes and offsets).
"""
from __future__ import annotations

import numbers

import numpy as np

from .errors import InputError

_INT64_MAX = np.iinfo(np.int64).max
_FLOAT_EXACT = 2.0**53  # every integer up to here is exact in float64


def exact_ids(values, name: str) -> np.ndarray:
    """``values`` (numpy, pandas, torch or a sequence) as an exact id column: int64, uint64 or str.

    Raises InputError naming ``name`` and the first bad row.
    """
    if hasattr(values, "detach"):  # torch.Tensor
        values = values.detach().cpu().numpy()
    elif hasattr(values, "to_numpy"):  # pandas Series (nullable dtypes give objects with pd.NA)
        values = values.to_numpy()
    ids = np.asarray(values)
    if ids.ndim != 1:
        raise InputError(f"{name} must be one-dimensional, got shape {ids.shape}")
    kind = ids.dtype.kind
    if kind == "i":
        return ids.astype(np.int64, copy=False)  # no copy: a model's own ids stay the same object
    if kind == "u":
        return ids.astype(np.int64) if ids.size == 0 or ids.max() <= _INT64_MAX else ids.astype(np.uint64, copy=False)
    if kind == "U":
        return ids
    if kind == "S":
        return _strings([_decode(x, name, row) for row, x in enumerate(ids)], name)
    if kind == "f":
        return _integral_floats(ids, name)
    if kind == "O":
        return _objects(ids, name)
    row = 0 if ids.size else None
    raise InputError(f"{name} must be integers or strings, got {ids.dtype} values"
                     + (f" (row {row} has {ids[row]!r})" if row is not None else ""))


def _integral_floats(ids: np.ndarray, name: str) -> np.ndarray:
    bad = ~np.isfinite(ids) | (ids != np.round(ids)) | (np.abs(ids) > _FLOAT_EXACT)
    if bad.any():
        row = int(np.argmax(bad))
        raise InputError(f"{name} must be integers or strings: row {row} has {ids[row].item()!r} "
                         "(a float id that is not an exact integer)")
    return ids.astype(np.int64)


def _decode(value: bytes, name: str, row: int) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{name}: row {row} is not UTF-8 text ({value[:20]!r})") from None


def _objects(ids: np.ndarray, name: str) -> np.ndarray:
    """An object column: all Python/numpy integers, or all strings."""
    if ids.size == 0:
        return np.zeros(0, np.int64)
    first = ids[0]
    want_str = isinstance(first, str)
    for row, x in enumerate(ids):
        is_int = isinstance(x, numbers.Integral) and not isinstance(x, (bool, np.bool_))
        if want_str and not isinstance(x, str) or not want_str and not is_int:
            expected = "strings like row 0" if want_str else "integers like row 0"
            raise InputError(f"{name} must be all integers or all strings: row {row} has {x!r} "
                             f"({type(x).__name__}), expected {expected} ({first!r})")
    if want_str:
        return _strings(list(ids), name)
    as_int = [int(x) for x in ids]
    low, high = min(as_int), max(as_int)
    if low >= -(2**63) and high <= _INT64_MAX:
        return np.asarray(as_int, dtype=np.int64)
    if low >= 0 and high < 2**64:
        return np.asarray(as_int, dtype=np.uint64)
    too_big = [x < -(2**63) or x >= 2**64 for x in as_int]
    if not any(too_big):  # both negatives and ids >= 2**63: blame the first big one
        too_big = [x > _INT64_MAX for x in as_int]
    row = int(np.argmax(too_big))
    raise InputError(f"{name}: row {row} has {as_int[row]}, which int64 and uint64 ids cannot hold "
                     f"together with the other ids (in [{low}, {high}])")


def _strings(values: list, name: str) -> np.ndarray:
    return np.asarray(values, dtype=str) if values else np.zeros(0, dtype="<U1")


def kind(ids: np.ndarray) -> str:
    """``"str"`` or ``"int"``."""
    return "str" if ids.dtype.kind == "U" else "int"


_KIND_WORDS = {"int": ("an integer", "integers"), "str": ("a string", "strings")}


def same_kind(known: np.ndarray, query: np.ndarray, what: str) -> None:
    """InputError unless ``query`` ids are of ``known``'s kind (both integers or both strings):
    an id of one kind never matches the other, so a lookup would find none of them, and a
    concatenation would turn integers into strings.  ``what``: e.g. ``"user id"``."""
    if len(query) and len(known) and kind(known) != kind(query):
        raise InputError(f"{what} {format_id(query[0])!r} is {_KIND_WORDS[kind(query)][0]} but the model's {what}s "
                         f"are {_KIND_WORDS[kind(known)][1]}: an id of one kind never matches the other; convert them")


def concatenate(first: np.ndarray, second: np.ndarray, what: str) -> np.ndarray:
    """Two id columns as one, exactly: strings with strings; integers with integers, int64 when
    every id fits, else uint64 (numpy would give float64 for int64 with uint64).  InputError
    for ids of two kinds (``same_kind``) or negative ids beside ids above ``2**63 - 1``."""
    same_kind(first, second, what)
    if not len(first) or not len(second):
        return second if len(second) else first
    if first.dtype == second.dtype or kind(first) == "str":
        return np.concatenate([first, second])
    return _objects(np.concatenate([first.astype(object), second.astype(object)]), f"{what}s")


def lookup(known: np.ndarray, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions of ``query`` ids in the id column ``known``: ``(index int64 [n], found bool [n])``.

    ``index`` is meaningful where ``found``.  Integer columns of different widths compare by value
    (a uint64 above ``2**63`` matches nothing in an int64 column); strings never match integers.
    The first occurrence wins when ``known`` repeats an id.  ``IdIndex(known).find(query)``: build
    the ``IdIndex`` once to look up many queries in the same column.
    """
    return IdIndex(known).find(query)


class IdIndex:
    """An id column ``ids`` with its sort order, made once (``O(n log n)``), so that each ``find``
    costs ``O(m log n)`` for ``m`` query ids: what a served model keeps for its users and items,
    whose every request looks ids up.  ``ids`` is the column itself (not a copy)."""

    def __init__(self, ids: np.ndarray):
        self.ids = ids
        self._order = np.argsort(ids, kind="stable")
        self._sorted = ids[self._order]

    def unique(self, what: str) -> "IdIndex":
        """Itself, or InputError naming an id that ``ids`` holds twice (``what``: e.g. ``"user id"``):
        the ids of a model or a ``Ratings`` must be distinct, else a lookup finds only the first row
        of a repeated one."""
        repeated = np.flatnonzero(self._sorted[1:] == self._sorted[:-1])  # the sort is there already: no cost
        if len(repeated):
            rows = np.sort(self._order[repeated[0]:repeated[0] + 2])
            raise InputError(f"{what} {format_id(self._sorted[repeated[0]])!r} is there twice (entries {rows[0]} and "
                             f"{rows[1]}; {len(repeated)} repeats): {what}s must be distinct")
        return self

    def find(self, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``lookup(self.ids, query)``."""
        index = np.zeros(len(query), np.int64)
        if len(self.ids) == 0 or len(query) == 0 or kind(self.ids) != kind(query):
            return index, np.zeros(len(query), dtype=bool)
        known, query, valid = _comparable(self._sorted, query)
        pos = np.minimum(np.searchsorted(known, query), len(known) - 1)
        found = valid & (known[pos] == query)
        index[found] = self._order[pos[found]]
        return index, found


def _comparable(known: np.ndarray, query: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Both integer columns in one dtype (numpy would compare int64 with uint64 as float64)."""
    valid = np.ones(len(query), dtype=bool)
    if known.dtype == query.dtype:
        return known, query, valid
    if kind(known) == "str":
        return known, query.astype(str), valid
    if query.dtype == np.uint64:  # known is int64: big query ids cannot be there
        valid = query <= np.uint64(_INT64_MAX)
        return known, np.where(valid, query, 0).astype(np.int64), valid
    # known is uint64 and query int64: negative query ids cannot be there
    valid = query >= 0
    return known, np.where(valid, query, 0).astype(np.uint64), valid


def encode(ids: np.ndarray, name: str) -> dict[str, np.ndarray]:
    """Tensors that store an id column in a file: ``{name: int64 | uint64 [n]}`` for integers,
    ``{name + ".utf8": uint8 [bytes], name + ".offsets": int64 [n + 1]}`` for strings."""
    if kind(ids) == "int":
        return {name: np.ascontiguousarray(ids)}
    try:
        blobs = [x.encode("utf-8") for x in ids.tolist()]
    except UnicodeEncodeError:  # a lone surrogate (text decoded with surrogateescape): no UTF-8 for it
        row = next(row for row, x in enumerate(ids.tolist()) if not _encodes(x))
        raise InputError(f"{name}: row {row} is not valid text ({ids[row]!r} holds a lone surrogate)") from None
    offsets = np.concatenate([[0], np.cumsum([len(b) for b in blobs], dtype=np.int64)]).astype(np.int64)
    return {f"{name}.utf8": np.frombuffer(b"".join(blobs), dtype=np.uint8).copy(), f"{name}.offsets": offsets}


def _encodes(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def decode(tensors: dict, name: str) -> np.ndarray | None:
    """The id column ``encode`` stored under ``name`` (None when the file has none)."""
    if name in tensors:
        return exact_ids(np.asarray(tensors[name]), name)
    if f"{name}.utf8" not in tensors or f"{name}.offsets" not in tensors:
        return None
    data, offsets = np.asarray(tensors[f"{name}.utf8"]), np.asarray(tensors[f"{name}.offsets"])
    if data.dtype != np.uint8 or data.ndim != 1 or offsets.dtype != np.int64 or offsets.ndim != 1:
        raise InputError(f"{name}.utf8 / {name}.offsets must be uint8 [bytes] / int64 [n + 1], got "
                         f"{data.dtype} {list(data.shape)} / {offsets.dtype} {list(offsets.shape)}")
    if not len(offsets) or offsets[0] != 0 or offsets[-1] != len(data) or np.any(np.diff(offsets) < 0):
        raise InputError(f"{name}.offsets must rise from 0 to the {len(data)} bytes of {name}.utf8")
    data = data.tobytes()
    try:
        return _strings([data[a:b].decode("utf-8") for a, b in zip(offsets[:-1], offsets[1:])], name)
    except UnicodeDecodeError as exc:
        raise InputError(f"{name}.utf8 is not UTF-8 text ({exc.reason} at byte {exc.start} of an id)") from None


def format_id(value) -> str:
    """An id as text (CSV files, messages)."""
    return str(value.item() if hasattr(value, "item") else value)


def shown_ids(ids, most: int = 5) -> str:
    """The first ``most`` ids as text, for a message: ``"3, 8, ..."``."""
    return ", ".join(format_id(u) for u in ids[:most]) + (", ..." if len(ids) > most else "")
