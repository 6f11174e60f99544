"""MovieLens-style loaders: ml-100k ``u.data``, ml-1m ``ratings.dat``, ml-latest(-small)
``ratings.csv``, and any CSV with a header naming its columns.

Comma-separated fields may be quoted as CSV quotes them (``"smith, j"``).  A file with a header is
read by column name: ``userId`` / ``movieId`` / ``rating`` (MovieLens) or
``user`` / ``item`` / ``rating`` (and ``weight`` when present), in any order; only the headerless
MovieLens formats (``u.data``, ``ratings.dat``, a headerless CSV) are read by position (user,
item, rating).  A log line says which columns were used.  Ids are integers of any width, or
strings when a column holds no integer at all (``retrain.ids``); an integer is written the one
way (``7``, ``-7``: ``007``, ``+7`` and ``7_0`` are no integers, so no two ids merge into one).
Users and items are indexed in sorted original-id order; ``Ratings.user_ids`` / ``item_ids``
keep the original ids.
"""
from __future__ import annotations

import csv
import logging
import os
import re

import numpy as np

from .data import Ratings, find_columns, value_problem
from .errors import InputError
from .files import as_path

log = logging.getLogger(__name__)


def _split_lines(path: str) -> tuple[list[list[str]], list[int], str | None]:
    """Rows of fields, their 1-based line numbers, and the separator (None: whitespace)."""
    # utf-8-sig: a byte-order mark (Excel writes one) is not part of the first column's name.
    # surrogateescape: bytes that are not UTF-8 in a column that is not read do no harm; in an id
    # they are an error naming the line (``_id_column``).
    with open(path, "r", encoding="utf-8-sig", errors="surrogateescape") as f:
        lines = f.read().splitlines()
    first = next((line for line in lines if line.strip()), "")
    sep = "::" if "::" in first else "," if "," in first else "\t" if "\t" in first else None
    rows, numbers = [], []
    for number, line in enumerate(lines, start=1):
        if line.strip():
            rows.append([field.strip() for field in _fields(line, sep)])
            numbers.append(number)
    return rows, numbers, sep


def _fields(line: str, sep: str | None) -> list[str]:
    if sep == "," and '"' in line:  # CSV quoting (pandas writes "smith, j" for a string holding a comma)
        return next(csv.reader([line]))
    return line.split(sep)


_NOT_UTF8 = re.compile("[\udc80-\udcff]")  # what surrogateescape made of bytes that are not UTF-8
# An integer id is written the one way: no sign but "-", no leading zero, no "_" (Python's int()
# reads "007", "+7", "7_0" and "٧" too, and would merge "007" with "7").
_INTEGER_ID = re.compile(r"0|-?[1-9][0-9]*")


def _number(text: str) -> float:
    """``float(text)`` of a plain number; ValueError for what only Python reads as one ("1_0" is
    10 to it, "٣" is 3)."""
    if not text.isascii() or "_" in text:
        raise ValueError(text)
    return float(text)


def _is_number(text: str) -> bool:
    try:
        _number(text)
        return True
    except ValueError:
        return False


def _id_column(path: str, values: list[str], numbers: list[int], column: str) -> np.ndarray:
    """Integers when every value is one (``_INTEGER_ID``), strings when none is; a mix, an empty
    id or text that is not UTF-8 names the first odd line."""
    if "" in values:  # a missing value, not the id "" of a user
        raise InputError(f"{path}:{numbers[values.index('')]}: malformed id: column {column!r} is empty")
    parsed = [int(text) if _INTEGER_ID.fullmatch(text) else None for text in values]
    is_int = [p is not None for p in parsed]
    if all(is_int):
        return np.asarray(parsed) if max(parsed) < 2**63 and min(parsed) >= -(2**63) else np.asarray(parsed, dtype=object)
    if not any(is_int):
        for text, number in zip(values, numbers):
            if _NOT_UTF8.search(text):
                raise InputError(f"{path}:{number}: malformed id: column {column!r} has {text!r}, which is not "
                                 "UTF-8 text (save the file as UTF-8)")
        return np.asarray(values, dtype=str)
    odd = is_int.index(not is_int[0])
    raise InputError(f"{path}:{numbers[odd]}: malformed id: column {column!r} has {values[odd]!r} but line {numbers[0]} "
                     f"has {values[0]!r}: ids must be all integers (written 0, 7 or -7: no leading zero, '+' or '_') "
                     "or all strings")


def _parse(path: str) -> Ratings:
    rows, numbers, sep = _split_lines(path)
    if not rows:
        raise InputError(f"{path}: no ratings in the file")
    header = None if any(_is_number(field) for field in rows[0]) else rows[0]
    if header is not None:
        columns = find_columns(header, {}, path, "rename that column in the header")
        for name in (c for c in columns.values() if c is not None and header.count(c) > 1):
            raise InputError(f"{path}:{numbers[0]}: the header names the column {name!r} {header.count(name)} times")
        positions = {name: header.index(c) for name, c in columns.items() if c is not None}
        rows, numbers = rows[1:], numbers[1:]
        used = (f"header {','.join(header)}; users from column {columns['user']!r}, items from {columns['item']!r}, "
                f"ratings from {columns['rating']!r}" + (f", weights from {columns['weight']!r}" if columns["weight"] else ""))
    else:
        positions = {"user": 0, "item": 1, "rating": 2}
        used = "no header; columns by position (MovieLens): user, item, rating"
    if not rows:
        raise InputError(f"{path}: no ratings in the file")
    width = max(positions.values()) + 1
    for fields, number in zip(rows, numbers):
        if len(fields) < width:
            raise InputError(f"{path}:{number}: malformed line: {len(fields)} fields, expected at least {width} "
                             f"({sep or 'whitespace'}-separated)")
    column = lambda name: [fields[positions[name]] for fields in rows]
    values = {}
    for name in [n for n in ("rating", "weight") if n in positions]:
        try:
            values[name] = np.asarray([_number(x) for x in column(name)])
        except ValueError:
            bad = next(i for i, x in enumerate(column(name)) if not _is_number(x))
            raise InputError(f"{path}:{numbers[bad]}: malformed {name} {column(name)[bad]!r}") from None
        problem = value_problem(values[name], name)  # here, where the row's line is known
        if problem is not None:
            row, rule, value = problem
            raise InputError(f"{path}:{numbers[row]}: {name} {rule}, got {value}")
    users = _id_column(path, column("user"), numbers, header[positions["user"]] if header else "user")
    items = _id_column(path, column("item"), numbers, header[positions["item"]] if header else "item")
    try:
        ratings = Ratings.from_ids(users, items, values["rating"], values.get("weight"))
    except InputError as exc:  # rows of the arrays are the file's data lines
        raise InputError(f"{path}: {exc}") from None
    log.info("%s: %s", path, used)  # once it has read well: an error stays one line
    return ratings


def load_movielens(path) -> Ratings:
    """Load a ratings file (``u.data``, ``ratings.dat``, ``ratings.csv`` or a CSV with a header).

    Raises InputError with one clear line for a missing file or a malformed line.
    """
    path = as_path(path, "ratings file")
    if not os.path.isfile(path):
        raise InputError(f"ratings file {path} is a folder, expected a file" if os.path.isdir(path)
                         else f"ratings file not found: {path}")
    return _parse(path)
