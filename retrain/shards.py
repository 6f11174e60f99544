"""A bundle in shards: one file per rank and an index, for user tables too large to gather on one rank.

``path`` (what ``retrain.load`` is given) is the *index*, a small JSON file (sorted keys)::

    {"format": "retrain-sharded-bundle", "version": 1, "n_users": U,
     "recipe": {...},                      # the one-file bundle's recipe entry, once
     "head": {"file": "m.head.safetensors", "bytes": 1234, "sha256": "..."},
     "shards": [{"file": "m.shard-00000-of-00002.safetensors", "users": 6, "bytes": ..., "sha256": ...},
                {"file": "m.shard-00001-of-00002.safetensors", "users": 5, "bytes": ..., "sha256": ...}]}

File names are relative to the index's folder (``m`` is the index's name without its suffix).  The
head file holds the head and ``item_support`` as a one-file bundle does; shard ``r`` holds its
users' ``user_embeddings [n_r, d]``, ``user_ids``, ``seen.indptr`` / ``seen.items`` and
``users [n_r]`` (int64: each row's position in the whole table, so that ``read_index`` puts the
rows back in the order of the one-file bundle of the same result).

Every file is written atomically (``retrain.files``), the index last: a reader sees the old set or
the new one, and an index whose files were replaced or removed since is an InputError naming the
file (its size and SHA-256 are checked on every load).
"""
from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import torch

from .errors import InputError
from .files import atomic_write_bytes, read_safetensors, safetensors_bytes
from .heads import Head, head_metadata, head_tensors, read_model_file
from .ids import decode, encode, exact_ids

INDEX_FORMAT, INDEX_VERSION = "retrain-sharded-bundle", 1
SHARD_FORMAT = "retrain-bundle-shard"
_INDEX_MAX_BYTES = 64 * 2**20  # an index is a few hundred bytes per shard: anything larger is no index


def _names(path) -> tuple[str, str, str]:
    """``(folder, stem, suffix)`` of an index path (suffix ``.safetensors`` when it has none)."""
    path = os.fspath(path)
    stem, suffix = os.path.splitext(os.path.basename(path))
    return os.path.dirname(os.path.abspath(path)), stem, suffix or ".safetensors"


def shard_file(path, rank: int, world_size: int) -> str:
    """Where rank ``rank`` of ``world_size`` writes its users for the index at ``path``."""
    folder, stem, suffix = _names(path)
    return os.path.join(folder, f"{stem}.shard-{rank:05d}-of-{world_size:05d}{suffix}")


def head_file(path) -> str:
    """Where the head of the index at ``path`` is written."""
    folder, stem, suffix = _names(path)
    return os.path.join(folder, f"{stem}.head{suffix}")


def _write(path: str, data: bytes) -> dict:
    atomic_write_bytes(path, data)
    return {"file": os.path.basename(path), "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def write_shard(path, rank: int, world_size: int, users, user_ids, embeddings: torch.Tensor, seen=None) -> dict:
    """Write rank ``rank``'s file for the index at ``path``: the rows ``embeddings [n, d]`` of the
    users at global positions ``users [n]`` (original ids ``user_ids``), with the items each was
    trained on (``seen``: ``Ratings`` of these users, or None).  Returns its index entry."""
    users = np.asarray(users, dtype=np.int64)
    tensors = {"users": users, "user_embeddings": torch.as_tensor(embeddings, dtype=torch.float32),
               **encode(exact_ids(user_ids, "user_ids"), "user_ids")}
    if seen is not None:
        tensors["seen.indptr"], tensors["seen.items"] = seen.indptr, seen.items
    data = safetensors_bytes(tensors, {"format": SHARD_FORMAT, "shard": str(rank), "of": str(world_size)})
    return {**_write(shard_file(path, rank, world_size), data), "users": len(users)}


def write_index(path, head: Head, recipe_json: str, item_support, entries: list[dict]) -> None:
    """Write the head file and then the index at ``path`` naming the shards' ``entries`` (in rank
    order, as ``write_shard`` returned them)."""
    tensors = head_tensors(head)
    if item_support is not None:
        tensors["item_support"] = np.asarray(item_support, dtype=np.int64)
    head_entry = _write(head_file(path), safetensors_bytes(tensors, head_metadata(head)))
    index = {"format": INDEX_FORMAT, "version": INDEX_VERSION, "n_users": sum(e["users"] for e in entries),
             "recipe": json.loads(recipe_json), "head": head_entry, "shards": entries}
    atomic_write_bytes(path, json.dumps(index, sort_keys=True, indent=1).encode() + b"\n")


def save_shards(path, model, recipe, owner, seen=None, item_support=None) -> None:
    """Write ``model`` (a ``Model`` of every user, with its ``Recipe``) from one process as the
    shards of ``owner`` (int64 ``[U]``: each user's shard, ``max + 1`` shards) and their index."""
    owner = np.asarray(owner, dtype=np.int64)
    world_size = int(owner.max()) + 1 if len(owner) else 1
    entries = []
    for rank in range(world_size):
        users = np.flatnonzero(owner == rank)
        entries.append(write_shard(path, rank, world_size, users, model.user_ids[users],
                                   model.user_embeddings[torch.from_numpy(users)],
                                   None if seen is None else seen.select_users(users)))
    write_index(path, model.head, recipe.to_json(), item_support, entries)


# --------------------------------------------------------------------------- reading
def is_index(path) -> bool:
    """Whether ``path`` is a shard index (a one-file bundle is safetensors: never JSON)."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            if f.read(1) != b"{" or os.path.getsize(path) > _INDEX_MAX_BYTES:
                return False
            text = b"{" + f.read()
    except OSError:
        return False
    try:
        return json.loads(text).get("format") == INDEX_FORMAT
    except (ValueError, AttributeError):  # a safetensors header length whose low byte is "{"
        return False


def _checked(index_path: str, entry, what: str) -> str:
    """The file an index entry names, after checking that it exists and has its size and SHA-256."""
    try:
        path = os.path.join(os.path.dirname(os.path.abspath(index_path)), os.path.basename(entry["file"]))
        size, digest = int(entry["bytes"]), str(entry["sha256"])
    except (KeyError, TypeError, ValueError):
        raise InputError(f"{index_path}: the {what} entry is malformed ({entry!r})") from None
    if not os.path.isfile(path):
        raise InputError(f"{path}: the {what} file that {index_path} names is missing")
    with open(path, "rb") as f:
        data = f.read()
    if len(data) != size or hashlib.sha256(data).hexdigest() != digest:
        raise InputError(f"{path}: the {what} file does not match {index_path} (size {len(data)} bytes, expected "
                         f"{size}, or another SHA-256): it was rewritten or damaged since the index was written")
    return path


def _ids(parts: list[np.ndarray], index_path: str) -> np.ndarray:
    """The shards' id columns as one (a shard of a uint64 column may hold only ids below 2^63: int64)."""
    parts = [p for p in parts if len(p)] or parts[:1]  # an empty shard's column has no kind to agree on
    kinds = {p.dtype.kind for p in parts}
    if len(kinds - {"i", "u"}) and len(kinds) > 1:
        raise InputError(f"{index_path}: the shards' user ids are of different kinds ({sorted(kinds)})")
    if kinds == {"i", "u"}:
        parts = [p.astype(np.uint64) for p in parts]
    return np.concatenate(parts)


def read_index(path) -> tuple[Head, dict, dict]:
    """``(head, tensors, metadata)`` of a sharded bundle, as ``heads.read_model_file`` gives them for
    a one-file bundle (the rows in the one-file order); InputError naming the index or the file at fault."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            index = json.loads(f.read())
        head_entry, entries, n_users = index["head"], list(index["shards"]), int(index["n_users"])
        recipe = json.dumps(index["recipe"], sort_keys=True, separators=(",", ":"))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{path}: not a readable shard index ({exc})") from None
    if index.get("version") != INDEX_VERSION:
        raise InputError(f"{path}: shard index version {index.get('version')!r}, expected {INDEX_VERSION}")
    head, head_tensors_, _ = read_model_file(_checked(path, head_entry, "head"))
    users, rows, ids, indptrs, items = [], [], [], [], []
    for rank, entry in enumerate(entries):
        file = _checked(path, entry, f"shard {rank}")
        tensors, metadata = read_safetensors(file)
        n = len(tensors.get("users", ()))
        if (metadata.get("format"), metadata.get("shard"), metadata.get("of")) != (SHARD_FORMAT, str(rank),
                                                                                    str(len(entries))) \
                or n != entry.get("users") or "user_embeddings" not in tensors \
                or tensors["user_embeddings"].shape != (n, head.d):
            raise InputError(f"{file}: not shard {rank} of {len(entries)} with {entry.get('users')} users of "
                             f"dimension {head.d}, as {path} says")
        user_ids = decode(tensors, "user_ids")
        if user_ids is None or len(user_ids) != n:
            raise InputError(f"{file}: the user ids do not describe its {n} users")
        users.append(np.asarray(tensors["users"], dtype=np.int64))
        rows.append(np.asarray(tensors["user_embeddings"]))
        ids.append(user_ids)
        if "seen.indptr" in tensors and "seen.items" in tensors:
            indptrs.append(np.asarray(tensors["seen.indptr"], dtype=np.int64))
            items.append(np.asarray(tensors["seen.items"], dtype=np.int64))
    position = np.concatenate(users) if users else np.zeros(0, dtype=np.int64)
    if len(position) != n_users or not np.array_equal(np.sort(position), np.arange(n_users)):
        raise InputError(f"{path}: its shards do not hold each of its {n_users} users once")
    order = np.argsort(position, kind="stable")  # shard order -> table order
    tensors = {"user_embeddings": np.concatenate(rows)[order], **encode(_ids(ids, path)[order], "user_ids")}
    if len(indptrs) == len(entries):
        counts = np.concatenate([np.diff(p) for p in indptrs])
        row_of = np.repeat(np.arange(len(position)), counts)  # each seen item's row, in shard order
        by_user = np.argsort(order.argsort()[row_of], kind="stable")  # the rows' items in table order
        tensors["seen.indptr"] = np.concatenate([[0], np.cumsum(counts[order])]).astype(np.int64)
        tensors["seen.items"] = np.concatenate(items)[by_user]
    if "item_support" in head_tensors_:
        tensors["item_support"] = head_tensors_["item_support"]
    return head, tensors, {"recipe": recipe}
