"""MovieLens loaders: ml-100k ``u.data``, ml-1m ``ratings.dat``, ml-latest(-small) ``ratings.csv``.

Users and items are indexed in sorted original-id order; ``Ratings.user_ids`` / ``item_ids`` keep
the original ids.
"""
from __future__ import annotations

import os

import numpy as np

from .data import Ratings
from .errors import InputError


def _parse(path: str) -> np.ndarray:
    """Rows ``(user id, item id, rating)`` as float64 ``[n, 3]``."""
    name = os.path.basename(path)
    with open(path, "r", encoding="latin-1") as f:
        text = f.read()
    lines = text.splitlines()
    if name.endswith(".csv") or (lines and lines[0].startswith("userId,")):
        sep, skip = ",", 1 if lines and not lines[0][:1].isdigit() else 0
    elif "::" in (lines[0] if lines else ""):
        sep, skip = "::", 0
    else:
        sep, skip = None, 0  # u.data: whitespace (tab) separated
    rows = []
    for number, line in enumerate(lines[skip:], start=skip + 1):
        if not line.strip():
            continue
        fields = line.split(sep)
        try:
            rows.append((float(int(fields[0])), float(int(fields[1])), float(fields[2])))
        except (ValueError, IndexError):
            raise InputError(f"{path}:{number}: malformed MovieLens line {line[:80]!r}") from None
    if not rows:
        raise InputError(f"{path}: no ratings in the file")
    return np.asarray(rows, dtype=np.float64)


def load_movielens(path) -> Ratings:
    """Load a MovieLens ratings file (``u.data``, ``ratings.dat`` or ``ratings.csv``).

    Raises InputError with one clear line for a missing file or a malformed line.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InputError(f"ratings file not found: {path}")
    table = _parse(path)
    return Ratings.from_ids(table[:, 0].astype(np.int64), table[:, 1].astype(np.int64), table[:, 2])
