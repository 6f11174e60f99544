"""Block sizes and warp counts for every kernel launch: the one place that picks them.

A program holds a few register tiles ``[rows, width]`` (rows = probes of one user, or users to
score).  Rows are capped so that rows * widest feature block stays within ``ROW_TILE``, and warps
are added as the estimated tile floats pass 64 per thread.  (The compiled kernels hold more: a
float32 ``tl.dot`` keeps a whole reduction row per thread; docs/benchmarks.md has the counts.)
"""
from __future__ import annotations

from dataclasses import dataclass

import triton

from .tower import MIN_DOT_K as _MIN_DOT_K

MIN_DOT_K = _MIN_DOT_K.value  # below it, kernels/tower.py's _mm sums a broadcast product instead
MIN_ROWS = 8  # the least probe block of several probes
MAX_ROWS = 64  # probes per program: more probes share one read of the ratings, but cost registers
ROW_TILE = 2048  # rows * widest feature block held per program (d = 128: 16 probes)
RATING_TILE = 2048  # ratings (or items) * h gathered per sub-tile
FLOATS_PER_THREAD = 64


@dataclass(frozen=True)
class Blocks:
    """``rows``: probes (train, validate) or users (score) per program; ``d``, ``h1``, ``h``: the
    tower's feature blocks; ``cols``: ratings per sub-tile (train, validate) or items per tile
    (score)."""

    rows: int
    d: int
    h1: int
    h: int
    cols: int
    num_warps: int


def pick_blocks(kind: str, n_rows: int, d: int, h1: int, h: int, n_cols: int, *, rows: int | None = None,
                cols: int | None = None, num_warps: int | None = None) -> Blocks:
    """Blocks for ``kind`` in ``train | validate | score``.

    Args:
        n_rows: probes P (train, validate) or users n (score).
        d, h1, h: tower dimensions (``h1`` = width of layer 1's output; ``h`` when < 2 layers).
        n_cols: batch size (train), unused (validate), items (score).
        rows, cols, num_warps: force these (tests, benchmarks); blocks are powers of two.
    """
    if kind not in ("train", "validate", "score"):
        raise ValueError(f"kind must be 'train', 'validate' or 'score', got {kind!r}")
    block_d, block_h1, block_h = (triton.next_power_of_2(x) for x in (d, h1, h))
    widest = max(block_d, block_h1, block_h)
    if rows is None:
        cap = max(1, min(MAX_ROWS, ROW_TILE // widest))
        # A single row (one probe, one user) stays single; several use at least MIN_ROWS, so that
        # P <= 8 probes do not pay for a padded 16-row tile.  (Float32 ``tl.dot`` lowers to FMA
        # chains over K, one per output, so a row's arithmetic does not depend on the tile's rows.)
        rows = 1 if n_rows == 1 else min(max(MIN_ROWS, triton.next_power_of_2(n_rows)), max(cap, MIN_ROWS))
    col_cap = max(MIN_DOT_K, min(128, RATING_TILE // block_h))
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
    return Blocks(rows, block_d, block_h1, block_h, cols, num_warps)
