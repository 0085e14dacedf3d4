"""The memory-bandwidth bound the BatchNorm benchmarks are reported against.

Bytes BatchNorm must move, per operation, for E = N*C*H*W elements of s bytes (per-channel vectors, C values
each, are left out: at the benchmark shapes they are < 0.1% of the traffic):

    eval            2 E s   read x, write y (the statistics are given)
    train           3 E s   read x for the batch statistics (one pass: mean and variance together, e.g. Welford
                            or sum and sum of squares), read x again to normalize, write y. x is too large to
                            stay in cache between the passes, so two reads are the minimum; a two-pass variance
                            (mean, then squared deviations) reads x three times and can reach at most 75%.
    train_backward  8 E s   the training forward (3 E s), then the backward: one pass reading x (or the saved
                            x-hat) and dy for its two reductions, sum(dy) and sum(dy * x-hat), and one pass
                            reading x and dy again and writing dx (5 E s). y is written, as in a training step
                            (it feeds the next layer).

The bandwidth is MEASURED in the same run, with the same machinery (pytest-benchmark, median): np.copyto of a
buffer of the same size as the benchmark's x into a preallocated, already-touched buffer moves 2 * nbytes
(read src, write dst), so bandwidth = 2 * nbytes / median copy time. Two probes per size: one thread, and one
thread per core (np.copyto on equal slices; it releases the GIL), and the bound takes the FASTER: from DRAM one
core already saturates memory on the 2-core machine this was written on, but a cache-resident x is copied
about twice as fast by two cores (as the frameworks' two threads normalize it). Write-allocate traffic is not
counted on either side: BN's writes are counted as the copy's are, so the bound stays comparable.

    bound time  = bytes BN must move / copy bandwidth
    % of bound  = 100 * bound time / measured median time        (100% = as fast as copying its bytes)

What the bound does not include, so a framework can lose to it honestly: allocating and first-touching a fresh
output (a freshly mmap'd y costs page faults: the `copy.fresh` rows, x.copy(), show what that alone costs),
extra passes (two-pass statistics, a separate pass for the running update, saving x-hat), and compute.
Shapes whose x fits in the last-level cache can exceed 100%; the copy of the same size sees the same cache,
which is why each row uses the copy measured at the size closest to its x.
"""
from __future__ import annotations

import itertools
import math
import os
from collections.abc import Callable

import numpy as np

ITEMSIZE = {"float64": 8, "float32": 4, "float16": 2, "bfloat16": 2}
PASSES = {"eval": 2, "train": 3, "train_backward": 8}  # multiples of E * s, see the module docstring


def elements(shape) -> int:
    return math.prod(int(s) for s in shape)


def bn_bytes(shape, dtype: str, what: str) -> int:
    """Bytes BatchNorm must move for operation `what` on an input of `shape` in `dtype`."""
    if what not in PASSES:
        raise ValueError(f"unknown operation {what!r}; known: {', '.join(PASSES)}")
    return PASSES[what] * elements(shape) * ITEMSIZE[dtype]


def copy_bytes(nbytes: int) -> int:
    """A copy of an nbytes buffer reads nbytes and writes nbytes."""
    return 2 * int(nbytes)


def bandwidth(copy_seconds: float, nbytes: int) -> float:
    """Bytes per second of a copy of `nbytes` that took `copy_seconds`."""
    return copy_bytes(nbytes) / copy_seconds


def bound_seconds(nbytes_moved: int, bytes_per_second: float) -> float:
    return nbytes_moved / bytes_per_second


def percent_of_bound(bound: float, measured: float) -> float:
    return 100.0 * bound / measured


def nearest_bandwidth(copies: dict[int, float], nbytes: int) -> float:
    """The bandwidth of the copy whose size is nearest (in ratio) to `nbytes`; copies: size -> bytes/s."""
    if not copies:
        raise ValueError("no copy was measured in this run: the bound needs one")
    size = min(copies, key=lambda s: abs(math.log(s / nbytes)))
    return copies[size]


def copy_buffers(nbytes: int) -> tuple[np.ndarray, np.ndarray]:
    """Two float32 buffers of `nbytes`, both written once (every page mapped: np.zeros would not map them,
    and reading never-touched pages reads the kernel's shared zero page, which is not memory traffic)."""
    n = max(1, int(nbytes) // 4)
    src, dst = np.empty(n, dtype=np.float32), np.empty(n, dtype=np.float32)
    src.fill(1.0)
    dst.fill(0.0)
    return src, dst


def numpy_copy(src: np.ndarray, dst: np.ndarray) -> Callable[[], None]:
    """The bandwidth probe: src into the preallocated dst."""
    def call():
        np.copyto(dst, src)
    return call


def threaded_copy(src: np.ndarray, dst: np.ndarray, threads: int | None = None) -> Callable[[], None]:
    """The same copy split into one contiguous slice per thread (default: one per core)."""
    from concurrent.futures import ThreadPoolExecutor

    threads = threads or os.cpu_count() or 1
    pool = ThreadPoolExecutor(threads)  # lives as long as the probe (a few idle threads)
    bounds = np.linspace(0, src.size, threads + 1).astype(int)
    parts = [(dst[a:b], src[a:b]) for a, b in itertools.pairwise(bounds)]

    def call():
        for f in [pool.submit(np.copyto, d, s) for d, s in parts]:
            f.result()
    return call


def fresh_copy(src: np.ndarray) -> Callable[[], np.ndarray]:
    """For comparison only: a copy into a new array, paying for its allocation and first touch as a framework
    returning a new tensor does."""
    def call():
        return src.copy()
    return call
