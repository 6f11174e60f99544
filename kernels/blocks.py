"""Block sizes, warp counts and kernel variants for every kernel launch: the one place that picks them.

A program holds a few register tiles ``[rows, width]`` (rows = probes of one user, or users to
score).  Rows are capped so that rows * widest feature block stays within ``ROW_TILE``, and warps
are added as the estimated tile floats pass 64 per thread.  (The compiled kernels hold more: a
float32 ``tl.dot`` keeps a whole reduction row per thread; docs/benchmarks.md has the counts.)

The training kernel has three variant switches, each proven equal to the reference under the
interpreter; which is fastest is for the GPU check to say (docs/benchmarks.md):

* ``products``: ``"ieee"`` (``tl.dot`` in float32, the default), ``"fma"`` (broadcast
  multiply-and-sum: per-thread FMA chains, no ``tl.dot`` staging) or ``"tf32x3"``
  (``kernels/tower.py``);
* ``persistent``: one program per (user, probe block) (the default), or a grid of about as many
  programs as fit on the GPU, each claiming the next (user, probe block) from an atomic counter,
  heaviest users first, with the next item's dependent loads issued before the current item trains;
* ``fold_bias``: item rows read from a table ``[I, h + 1]`` whose last column is the item bias
  (one gather per rating instead of two), by default where the extra column fits the tile's
  padding (h not a power of two), so that it costs no registers.

``$RETRAIN_TRITON_TRAIN`` forces them for every training launch that does not pass its own
blocks, e.g. ``RETRAIN_TRITON_TRAIN=products=fma,persistent=1,fold_bias=0`` (the GPU check times
the variants side by side through ``pick_blocks``'s arguments).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import triton

from .tower import MIN_DOT_K as _MIN_DOT_K
from .tower import check_products

MIN_DOT_K = _MIN_DOT_K.value  # below it, kernels/tower.py's _mm sums a broadcast product instead
MIN_ROWS = 8  # the least probe block of several probes
MAX_ROWS = 64  # probes per program: more probes share one read of the ratings, but cost registers
ROW_TILE = 2048  # rows * widest feature block held per program (d = 128: 16 probes)
RATING_TILE = 2048  # ratings (or items) * h gathered per sub-tile
FMA_TILE = 32768  # rows * cols * h of the FMA products' broadcast [rows, cols, h] (beyond it ptxas spills)
FLOATS_PER_THREAD = 64
VARIANT_ENV = "RETRAIN_TRITON_TRAIN"


@dataclass(frozen=True)
class Blocks:
    """``rows``: probes (train, validate) or users (score) per program; ``d``, ``h1``, ``h``: the
    tower's feature blocks (``h`` holds the bias column too when ``fold_bias``); ``cols``: ratings
    per sub-tile (train, validate) or items per tile (score); ``products``, ``persistent``,
    ``fold_bias``: the training kernel's variant (module docstring; validate and score use
    ``products`` only)."""

    rows: int
    d: int
    h1: int
    h: int
    cols: int
    num_warps: int
    products: str = "ieee"
    persistent: bool = False
    fold_bias: bool = False


def variant_from_env() -> dict:
    """The training variant forced by ``$RETRAIN_TRITON_TRAIN`` (``key=value`` pairs separated by
    commas, keys ``products``, ``persistent``, ``fold_bias``; 0/1 for the last two), as
    ``pick_blocks`` keyword arguments; ``{}`` when it is unset or empty."""
    text = os.environ.get(VARIANT_ENV, "").strip()
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or key not in ("products", "persistent", "fold_bias"):
            raise ValueError(f"${VARIANT_ENV}: expected products=..., persistent=0|1 or fold_bias=0|1, got {part!r}")
        if key == "products":
            try:
                out[key] = check_products(value)
            except ValueError as exc:
                raise ValueError(f"${VARIANT_ENV}: {exc}") from None
        elif value in ("0", "1"):
            out[key] = value == "1"
        else:
            raise ValueError(f"${VARIANT_ENV}: {key} must be 0 or 1, got {value!r}")
    return out


def folds_for_free(h: int) -> bool:
    """Whether a bias column next to ``h`` item features fits the tile's padding (h not a power of
    two), so that folding costs no registers.  (At h = 1 the row of two floats would be one gather
    instead of two, but the widened feature and state tiles cost d = 1, P = 64 24-34 more
    registers on sm_90: docs/benchmarks.md.)"""
    return triton.next_power_of_2(h + 1) == triton.next_power_of_2(h)


def pick_blocks(kind: str, n_rows: int, d: int, h1: int, h: int, n_cols: int, *, rows: int | None = None,
                cols: int | None = None, num_warps: int | None = None, products: str | None = None,
                persistent: bool | None = None, fold_bias: bool | None = None) -> Blocks:
    """Blocks for ``kind`` in ``train | validate | score``.

    Args:
        n_rows: probes P (train, validate) or users n (score).
        d, h1, h: tower dimensions (``h1`` = width of layer 1's output; ``h`` when < 2 layers).
        n_cols: batch size (train), unused (validate), items (score).
        rows, cols, num_warps: force these (tests, benchmarks); blocks are powers of two.
        products, persistent, fold_bias: force the variant (module docstring); for ``train``
            the defaults come from ``$RETRAIN_TRITON_TRAIN`` first.  Only ``train`` persists or
            folds the bias.
    """
    if kind not in ("train", "validate", "score"):
        raise ValueError(f"kind must be 'train', 'validate' or 'score', got {kind!r}")
    forced = variant_from_env() if kind == "train" else {}
    products = check_products(products if products is not None else forced.get("products", "ieee"))
    persistent = kind == "train" and (persistent if persistent is not None else forced.get("persistent", False))
    if kind != "train":
        fold_bias = False
    elif fold_bias is None:
        fold_bias = forced.get("fold_bias", folds_for_free(h))
    block_d, block_h1, block_h = (triton.next_power_of_2(x) for x in (d, h1, h))
    if fold_bias:
        # The features get a column of ones against the bias: with no tower (d == h) that is the
        # embedding's block widened too.
        block_h = triton.next_power_of_2(h + 1)
        block_d = block_h if d == h else block_d
    widest = max(block_d, block_h1, block_h)
    if rows is None:
        cap = max(1, min(MAX_ROWS, ROW_TILE // widest))
        # A single row (one probe, one user) stays single; several use at least MIN_ROWS, so that
        # P <= 8 probes do not pay for a padded 16-row tile.  (Float32 ``tl.dot`` lowers to FMA
        # chains over K, one per output, so a row's arithmetic does not depend on the tile's rows.)
        rows = 1 if n_rows == 1 else min(max(MIN_ROWS, triton.next_power_of_2(n_rows)), max(cap, MIN_ROWS))
    col_cap = max(MIN_DOT_K, min(128, RATING_TILE // block_h))
    if products == "fma":  # its products hold [rows, cols, h] at once (d = 32, P = 64, cols 128: 16 KB of stack)
        col_cap = max(1, min(col_cap, FMA_TILE // (rows * block_h)))
    if cols is None:
        cols = col_cap if kind == "validate" else min(max(MIN_DOT_K, triton.next_power_of_2(n_cols)), col_cap)
    for name, value in (("rows", rows), ("cols", cols)):
        if value < 1 or value & (value - 1):
            raise ValueError(f"{name} must be a power of two >= 1, got {value}")
    # Registers: embedding + two moments, features and their gradient, the gathered item rows, the
    # [rows, cols] predictions.
    floats = rows * (3 * block_d + 2 * block_h + block_h1) + cols * block_h + rows * cols
    if num_warps is None:
        num_warps = min(8, max(2, triton.next_power_of_2(-(-floats // (32 * FLOATS_PER_THREAD)))))
    return Blocks(rows, block_d, block_h1, block_h, cols, num_warps, products, bool(persistent), bool(fold_bias))
