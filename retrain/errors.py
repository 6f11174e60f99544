"""The one exception type for a user's mistake, and the checks that raise it.

``InputError`` is a ``ValueError``: code that catches ``ValueError`` keeps working.  It is raised for
anything the caller can fix (a bad argument, row, id, file or option) and names the culprit; the
command line turns exactly it (and ``OSError``) into one ``error:`` line and exit status 2.  Any other
exception is a bug in retrain and keeps its traceback.
"""
from __future__ import annotations

import contextlib
import math
import numbers

import numpy as np


class InputError(ValueError):
    """A mistake in what the caller passed; the message names the argument, row, id or file."""


@contextlib.contextmanager
def blame(name):
    """Prefix an InputError raised inside with ``name`` (the option, file or argument at fault),
    unless its message starts with it already."""
    try:
        yield
    except InputError as exc:
        if str(exc).startswith(str(name)):
            raise
        raise InputError(f"{name}: {exc}") from None


INT64_MAX = 2**63 - 1
C_INT_MAX = 2**31 - 1  # a C int (OpenMP's thread count, NLopt's evaluation count, the kernels' sizes)


def check_int(name: str, value, minimum: int | None = 0, maximum: int | None = INT64_MAX) -> int:
    """``value`` as a Python int, or InputError naming ``name`` and the allowed range.

    Accepts Python and numpy integers; rejects bools, floats (also ``16.0``) and strings.
    ``maximum`` is int64's by default: every count, size and seed ends up an int64 somewhere (a
    numpy or torch index, a kernel's ``int64_t``), and a larger Python int raised a bare
    OverflowError or pybind11's TypeError there.  ``None``: no maximum.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InputError(f"{name} must be an integer{_range_text(minimum, maximum)}, got {value!r}")
    value = int(value)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise InputError(f"{name} must be an integer{_range_text(minimum, maximum)}, got {value}")
    return value


def check_bool(name: str, value) -> bool:
    """``value`` as a Python bool, or InputError naming ``name`` and the value.

    Accepts ``True``, ``False`` and numpy's ``bool_`` (what ``array.any()`` and a comparison of
    numpy scalars give).  Everything else is refused, because Python would take it by its truth:
    ``"no"`` and ``"false"`` are non-empty strings, so True, a silently wrong result.  The ints 0
    and 1 are refused too: torch's functions refuse them for their bool arguments
    (``keepdim=1`` is a TypeError), ``check_int`` refuses a bool where a count belongs, and no
    flag of this API is documented to take an int; a caller with an int writes ``bool(x)``.
    """
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise InputError(f"{name} must be True or False, got {value!r}")


def check_float(name: str, value, minimum: float | None = None, *, strict: bool = False,
                maximum: float | None = None) -> float:
    """``value`` as a finite float (``> minimum`` when ``strict``, else ``>=``), or InputError."""
    # A float is checked first: the ABC check costs a microsecond, much of a one-user request.
    if type(value) is not float and (isinstance(value, bool) or not isinstance(value, numbers.Real)):
        raise InputError(f"{name} must be a number, got {value!r}")
    value = float(value)
    low_ok = minimum is None or (value > minimum if strict else value >= minimum)
    high_ok = maximum is None or value <= maximum
    if not math.isfinite(value) or not low_ok or not high_ok:
        bound = "" if minimum is None else f" {'>' if strict else '>='} {minimum:g}"
        if maximum is not None:
            bound += f"{' and' if bound else ''} <= {maximum:g}"
        raise InputError(f"{name} must be a finite number{bound}, got {value!r}")
    return value


def check_fraction(name: str, value, *, zero: bool = True, one: bool = False) -> float:
    """``value`` as a float in [0, 1], or InputError naming ``name`` and the interval.

    ``zero`` / ``one`` say whether the interval includes 0 / 1 (by default ``[0, 1)``).
    """
    interval = f"{'[' if zero else '('}0, 1{']' if one else ')'}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InputError(f"{name} must be a fraction in {interval}, got {value!r}")
    value = float(value)
    low_ok = value >= 0.0 if zero else value > 0.0
    high_ok = value <= 1.0 if one else value < 1.0
    if not (low_ok and high_ok):  # NaN fails both
        raise InputError(f"{name} must be a fraction in {interval}, got {value!r}")
    return value


def check_indices(name: str, values, n: int, what: str = "integer") -> np.ndarray:
    """``values`` as an int64 numpy array ``[m]`` of indices in ``[0, n)``, or InputError naming
    ``name`` and the first bad entry.

    Refused: anything but a 1-d array of integers (an empty one of any dtype is fine: ``[]`` is
    float64), so floats (``0.7`` would be truncated to 0, even ``1.0``) and bool masks (their 0/1
    would be used as indices); negative indices (numpy and torch count them from the end);
    indices ``>= n``.  ``what`` says in the message what the indices index (``"user"``: "a 1-d
    array of user indices").
    """
    array = np.asarray(values)
    if array.ndim != 1 or (array.size and (array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.integer))):
        raise InputError(f"{name} must be a 1-d array of {what} indices, got {array.dtype} {list(array.shape)}"
                         + (": for a mask, pass np.flatnonzero(mask)" if array.dtype == np.bool_ else ""))
    bad = (array < 0) | (array >= n)
    if bad.any():
        row = int(np.argmax(bad))
        raise InputError(f"{name} index {array[row]} (entry {row}) is not in [0, {n})")
    return array.astype(np.int64, copy=False)


def _range_text(minimum, maximum) -> str:
    high = "2**63 - 1" if maximum == INT64_MAX else maximum  # the default, in the form one recognises
    if minimum is not None and maximum is not None:
        return f" in [{minimum}, {high}]"
    if minimum is not None:
        return f" >= {minimum}"
    if maximum is not None:
        return f" <= {high}"
    return ""
