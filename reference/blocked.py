"""Cache-sized blocks of a large array, for the oracle's large-array paths (statistics.moments, normalize.forward).

Why the blocking exists: on an array much larger than the CPU caches, a NumPy expression such as
`gamma * (x - m) * r + beta` runs as one full pass through memory per operation, each writing an x-sized
temporary that is read back by the next; on a 100 MB batch the oracle then spends its time moving temporaries.
Evaluating the same operations one block at a time keeps every temporary in cache, so x is read once per pass
of the algorithm and y written once. Elementwise results are bit for bit those of the whole-array expression
(the same operations in the same order on every element); sums are accumulated block by block, a different
summation order, so they differ from the whole-array sums by float64 rounding only (tests/unit/test_oracle_blocked.py).
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np

BLOCK_ELEMENTS = 1 << 16  # 512 KB of float64: a block and a temporary or two stay in a core's L2 cache
LARGE = 1 << 21  # arrays of at least this many elements (16 MB of float64) take the blocked paths


def applies(x, *per_channel, large: int | None = None) -> bool:
    """Whether `x` takes the blocked path: a large real float64 array (at least `large` elements, default
    LARGE), and every other operand (scalars or arrays of x's rank, e.g. per-channel statistics kept with
    keepdims) broadcasts to x without enlarging it."""
    if not (isinstance(x, np.ndarray) and x.dtype == np.float64 and x.size >= (LARGE if large is None else large)):
        return False
    arrays = [np.asarray(a) for a in per_channel]
    if any(a.dtype.kind != "f" or a.ndim not in (0, x.ndim) for a in arrays):
        return False
    return np.broadcast_shapes(x.shape, *(a.shape for a in arrays)) == x.shape


def blocks(shape: tuple[int, ...], target: int = BLOCK_ELEMENTS) -> Iterator[tuple[slice, ...]]:
    """Index tuples (slices only, so every block keeps x's rank) tiling an array of `shape` in C order into
    blocks of at most `target` elements where the trailing axes allow it: the trailing axes that fit are
    whole in every block, the next one is cut in chunks, the leading ones are taken one index at a time."""
    inner, k = 1, len(shape)
    while k > 0 and inner * shape[k - 1] <= target:
        inner *= shape[k - 1]
        k -= 1
    if k == 0:
        yield tuple(slice(None) for _ in shape)
        return
    step = max(1, target // inner)
    rest = tuple(slice(None) for _ in shape[k:])
    for lead in np.ndindex(*shape[:k - 1]):
        head = tuple(slice(i, i + 1) for i in lead)
        for start in range(0, shape[k - 1], step):
            yield head + (slice(start, min(start + step, shape[k - 1])),) + rest


def part(a, index: tuple[slice, ...]):
    """The part of `a` (a scalar or an array of the blocked array's rank, broadcastable to it) that lines up
    with block `index`: sliced along its full-length axes, whole along its length-1 ones."""
    a = np.asarray(a)
    if a.ndim == 0:
        return a
    return a[tuple(s if n != 1 else slice(None) for s, n in zip(index, a.shape))]
