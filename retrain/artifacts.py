"""The files a retrain writes besides the model itself, and the folder of a demo run.

* ``<model>.hyp.json`` (``read_hyp``): the tuned hyper-parameters and the epoch count that older
  versions wrote beside a retrained model; the model file now holds its recipe
  (``retrain.bundle``), and such pairs are only read.
* the fold-in's embeddings (``embeddings_bytes``): safetensors with ``embeddings [n, d]``
  (float32) and the user ids (``user_ids [n]``, int64 or uint64, or UTF-8 for strings), metadata ``format = "retrain.embeddings"``, ``model``
  and ``epochs``.
* the recommendations (``recommendations_bytes``): CSV ``user_id,rank,item_id,score`` in original
  ids, ranks from 1 (a string id holding a comma, a quote or a line break is quoted as CSV does).

Their bytes are made here and written by the caller with ``retrain.files.atomic_write_files``
(a reader sees the old file or the new one, never a part; a fold-in's two files all or none).
"""
from __future__ import annotations

import csv
import io
import json
import math
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

from .errors import InputError, check_int
from .files import safetensors_bytes
from .ids import encode, exact_ids
from .hyperparams import HyperParams

HYP_SUFFIX = ".hyp.json"


def hyp_path(model_path) -> Path:
    """Where older versions put the hyper-parameters of the model at ``model_path``."""
    return Path(str(model_path) + HYP_SUFFIX)


def read_hyp(path) -> tuple[HyperParams, int]:
    """``(HyperParams, epochs)`` from a ``.hyp.json`` file of an older version.

    Raises OSError when it cannot be read and InputError naming the file when it is not such a file.
    """
    with open(path) as f:
        text = f.read()
    try:
        entry = json.loads(text)
        return HyperParams.recorded(entry["hyperparams"]), check_int("epochs", entry["epochs"], 0)
    except (json.JSONDecodeError, KeyError, TypeError, InputError) as exc:
        raise InputError(f"{path}: not a hyper-parameter file written by 'run' or 'demo' ({exc})") from None


def embeddings_bytes(embeddings: torch.Tensor, user_ids: np.ndarray, *, model: str, epochs: int) -> bytes:
    """The file of folded-in ``embeddings [n, d]`` of the users ``user_ids [n]`` (original ids,
    stored as ``retrain.ids.encode`` does: ``user_ids`` or ``user_ids.utf8`` / ``user_ids.offsets``).

    ``model`` (the head's name) and ``epochs`` (of the fold-in) go into the metadata.
    """
    tensors = {"embeddings": embeddings.contiguous(), **encode(exact_ids(user_ids, "user_ids"), "user_ids")}
    return safetensors_bytes(tensors, {"format": "retrain.embeddings", "model": model, "epochs": str(epochs)})


def recommendations_bytes(items: torch.Tensor, scores: torch.Tensor, user_ids: np.ndarray,
                          item_ids: np.ndarray) -> bytes:
    """The top-k lists of ``recommend`` as CSV ``user_id,rank,item_id,score``.

    ``items`` / ``scores``: ``[n, k]`` item indices and scores; row ``r`` belongs to user
    ``user_ids[r]``; ``item_ids`` maps item indices to original ids.  Entries scored ``-inf``
    (fewer than ``k`` unseen items) or NaN (ranked as ``-inf``) are left out; a score that
    overflowed to ``+inf`` is the user's best item and is written (``inf``).
    """
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")  # quotes a string id holding a comma, a quote or a newline
    writer.writerow(["user_id", "rank", "item_id", "score"])
    for row, user in enumerate(user_ids):
        writer.writerows([user, rank + 1, item_ids[item], f"{score:.6g}"]
                         for rank, (item, score) in enumerate(zip(items[row].tolist(), scores[row].tolist()))
                         if score > -math.inf)  # False for -inf and NaN
    return text.getvalue().encode()


def make_out_dir(out=None) -> Path:
    """The folder ``out`` (created if needed), or a fresh ``runs/<timestamp>`` when ``out`` is None."""
    if out is not None:
        path = Path(out)
        if path.exists() and not path.is_dir():
            raise InputError(f"output folder {out} exists and is not a folder")
        path.mkdir(parents=True, exist_ok=True)
        return path
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    for suffix in [""] + [f"-{i}" for i in range(2, 100)]:
        path = Path("runs") / (stamp + suffix)
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            continue
    raise InputError(f"could not create a fresh folder runs/{stamp}-N: name an output folder")
