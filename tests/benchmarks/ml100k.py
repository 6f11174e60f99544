"""MovieLens 100k and its official u1..u5 folds, read from the recbole 1.2.1 wheel (docs/pipeline.md).

ML-100k is not on this machine, but PyPI's ``recbole==1.2.1`` wheel ships its 100,000 ratings as
``recbole/dataset_example/ml-100k/ml-100k.inter``: u.data's rows in u.data's order under a typed
header.  The data set's own ``mku.sh`` cuts fold ``i``'s test part as u.data's rows
``[20000 (i-1), 20000 i)`` and its base part as the other 80,000 (each sorted by user, item), so
the same cut of that file gives the official u1..u5 folds.  The wheel is read as a zip (recbole is
never installed or imported, nothing is extracted) and the data is never copied into the repo.

    table = read_inter(wheel_path(args.ml100k))   # a wheel path, or "fetch" (pip download into a cache)
    split = fold_split(table, fold=1, seed=1)     # the leak-free protocol on u1.base / u1.test
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zipfile
from typing import NamedTuple

import numpy as np

from retrain import Ratings
from retrain.protocol import ProtocolSplit

MEMBER = "recbole/dataset_example/ml-100k/ml-100k.inter"
MD5 = "a8a8c3f165aedc53f63b5dc0a0463b14"
COUNTS = (100_000, 943, 1_682)  # ratings, users, items
HEADER = ("user_id:token", "item_id:token", "rating:float", "timestamp:float")
WHEEL = "recbole-1.2.1-py3-none-any.whl"
CACHE = os.path.join(os.path.expanduser("~"), ".cache", "retrain-ml100k")
N_FOLDS = 5


class Table(NamedTuple):
    """Ratings as parallel columns in file order: user and item ids (int64), rating (float64),
    timestamp (int64 seconds)."""

    user: np.ndarray
    item: np.ndarray
    rating: np.ndarray
    timestamp: np.ndarray

    def take(self, rows: np.ndarray) -> "Table":
        return Table(*(column[rows] for column in self))


def wheel_path(spec: str, cache: str = CACHE) -> str:
    """``spec`` itself when it is a file, or for ``"fetch"`` the wheel in ``cache``, downloaded there
    first with ``python -m pip download --no-deps recbole==1.2.1`` when it is missing."""
    if spec != "fetch":
        if not os.path.isfile(spec):
            raise FileNotFoundError(f"recbole wheel not found: {spec} (give its path, or 'fetch')")
        return spec
    path = os.path.join(cache, WHEEL)
    if not os.path.isfile(path):
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "recbole==1.2.1", "-d", cache],
                       check=True)
    return path


def read_inter(wheel: str, *, md5: str = MD5, counts: tuple[int, int, int] = COUNTS) -> Table:
    """The ratings of ``MEMBER`` in ``wheel``, in file order; ValueError unless its md5 and its
    (ratings, users, items) counts are the expected ones (ML-100k's by default)."""
    with zipfile.ZipFile(wheel) as archive:
        raw = archive.read(MEMBER)
    digest = hashlib.md5(raw).hexdigest()
    if digest != md5:
        raise ValueError(f"{MEMBER} in {wheel} has md5 {digest}, expected {md5}: not the known ML-100k copy")
    lines = raw.decode("utf-8").splitlines()
    if tuple(lines[0].split("\t")) != HEADER:
        raise ValueError(f"{MEMBER}: header {lines[0]!r}, expected {chr(9).join(HEADER)!r}")
    values = np.array([line.split("\t") for line in lines[1:]], dtype=np.float64).reshape(-1, 4)
    table = Table(values[:, 0].astype(np.int64), values[:, 1].astype(np.int64), values[:, 2],
                  values[:, 3].astype(np.int64))
    found = (len(table.user), len(np.unique(table.user)), len(np.unique(table.item)))
    if found != tuple(counts):
        raise ValueError(f"{MEMBER}: {found} ratings/users/items, expected {tuple(counts)}")
    return table


def mku_fold(table: Table, fold: int) -> tuple[Table, Table]:
    """``(u{fold}.base, u{fold}.test)`` as ``mku.sh`` cuts them: the test part is the ``fold``-th fifth
    of the rows in file order (rows ``[n/5 (fold-1), n/5 fold)``; 20,000 rows for ML-100k), the base
    part every other row; each sorted by user, then item (``sort -k 1,1n -k 2,2n``)."""
    n = len(table.user)
    if fold not in range(1, N_FOLDS + 1) or n % N_FOLDS:
        raise ValueError(f"fold must be 1..{N_FOLDS} of a table whose rows split in {N_FOLDS} equal parts, "
                         f"got fold {fold} of {n} rows")
    size = n // N_FOLDS
    in_test = np.zeros(n, dtype=bool)
    in_test[size * (fold - 1):size * fold] = True

    def sorted_part(rows):
        part = table.take(rows)
        return part.take(np.lexsort((part.item, part.user)))

    return sorted_part(np.flatnonzero(~in_test)), sorted_part(np.flatnonzero(in_test))


def held_out_users(n_users: int, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of the ``max(1, round(n_users * fraction))`` users this protocol holds out as
    new users: the first of ``np.random.default_rng(seed).permutation(n_users)``, a draw of user
    *indices* (into the sorted ids).

    The documented ML-100k numbers (docs/pipeline.md) were measured with this draw, which was
    ``retrain.data.sample_users`` until that chose users by id; it is kept here so that each
    fold's new and known users stay what they were (the pipeline's tuning subsample of the known
    users is chosen by id, as everywhere).  ML-100k's ids and their order are fixed, so the order
    dependence that made the library key its draw does not arise here.
    """
    return np.sort(np.random.default_rng(seed).permutation(n_users)[:max(1, int(round(n_users * fraction)))])


def fold_split(table: Table, fold: int, *, new_users: float = 0.2, val: float = 0.25, seed: int = 0) -> ProtocolSplit:
    """The leak-free protocol on official fold ``fold``, as a ``ProtocolSplit``.

    A seeded ``new_users`` fraction of all the users (``held_out_users(n_users, new_users, seed)``,
    this protocol's own draw of user indices) is held out of pretraining: ``new_fold_in`` is their
    u{fold}.base ratings, ``new_test`` their u{fold}.test ratings, ``new_users`` both (all three
    ``None`` for ``new_users=0``).  Every other (known) user's u{fold}.base ratings are split per
    user into ``pretrain`` and ``val`` (``val`` of them, ``Ratings.split_per_user(val, seed + 1)``,
    as ``protocol_split`` cuts its validation part from what the test part leaves), and its
    u{fold}.test ratings are ``test``.
    The default ``val=0.25`` of the base part is 20 % of a user's ratings, as in the ml-latest-small
    study.  Every part indexes all of the table's items (sorted ids).
    """
    user_ids, item_ids = np.unique(table.user), np.unique(table.item)

    def ratings(part: Table) -> Ratings:
        return Ratings.from_coo(np.searchsorted(user_ids, part.user), np.searchsorted(item_ids, part.item),
                                part.rating, n_users=len(user_ids), n_items=len(item_ids),
                                user_ids=user_ids, item_ids=item_ids)

    base, test = (ratings(part) for part in mku_fold(table, fold))
    held = held_out_users(len(user_ids), new_users, seed) if new_users > 0 else np.zeros(0, dtype=np.int64)
    known = np.setdiff1d(np.arange(len(user_ids)), held)
    pretrain_part, val_part = base.select_users(known).split_per_user(val, seed + 1)
    if not len(held):
        return ProtocolSplit(pretrain_part, val_part, test.select_users(known), None, None, None)
    new_fold_in, new_test = base.select_users(held), test.select_users(held)
    return ProtocolSplit(pretrain_part, val_part, test.select_users(known), new_fold_in.union(new_test),
                         new_fold_in, new_test)
