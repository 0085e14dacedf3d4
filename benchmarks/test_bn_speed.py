"""Each selected adapter's BatchNorm ("train", "eval", "train_backward") on the standard shapes in its native
layout, next to copies of the same sizes: the bound (benchmarks/bandwidth.py) is measured in the same run.

Every row's `extra_info` carries what the table needs: kind, adapter, logical and native shape, layout, op,
dtype, the bytes BN must move (or the copy moves) and the size of x; `python -m benchmarks.table` merges the
JSON files of several invocations and prints median time, bound and % of bound.
"""
from __future__ import annotations

import os

import pytest

from benchmarks import bandwidth as bw
from benchmarks.conftest import DTYPE


def _load() -> dict:
    return {"loadavg_1min": round(os.getloadavg()[0], 2)}


@pytest.mark.parametrize("threads", ["1", "all"])
def test_copy(benchmark, copy_shape, threads):
    """np.copyto of a buffer the size of x (float32) into a preallocated, touched buffer, on one thread and on
    one per core: the faster is the bound."""
    nbytes = bw.elements(copy_shape) * bw.ITEMSIZE[DTYPE]
    src, dst = bw.copy_buffers(nbytes)
    benchmark.group = "x".join(map(str, copy_shape))
    benchmark.extra_info.update(kind="copy", threads=1 if threads == "1" else os.cpu_count(),
                                shape=list(copy_shape), dtype=DTYPE, x_nbytes=nbytes, bytes=bw.copy_bytes(nbytes))
    benchmark(bw.numpy_copy(src, dst) if threads == "1" else bw.threaded_copy(src, dst))
    benchmark.extra_info.update(_load())


def test_copy_fresh(benchmark, copy_shape):
    """For comparison: the same copy into a NEW array (allocation + first touch), as a framework returning a
    new tensor pays. Not used for the bound."""
    nbytes = bw.elements(copy_shape) * bw.ITEMSIZE[DTYPE]
    src, _ = bw.copy_buffers(nbytes)
    benchmark.group = "x".join(map(str, copy_shape))
    benchmark.extra_info.update(kind="copy_fresh", shape=list(copy_shape), dtype=DTYPE, x_nbytes=nbytes,
                                bytes=bw.copy_bytes(nbytes))
    benchmark(bw.fresh_copy(src))
    benchmark.extra_info.update(_load())


def test_bn(benchmark, adapter, bench_shape, op):
    from adapters.base import Unsupported

    try:
        fn = adapter.bench(bench_shape, DTYPE, op)
    except Unsupported as e:
        pytest.skip(str(e))
    benchmark.group = "x".join(map(str, bench_shape))
    benchmark.extra_info.update(kind="bn", adapter=adapter.name, shape=list(bench_shape),
                                native_shape=list(fn.problem.shape), layout=fn.layout, op=op, dtype=DTYPE,
                                x_nbytes=bw.elements(bench_shape) * bw.ITEMSIZE[DTYPE],
                                bytes=bw.bn_bytes(bench_shape, DTYPE, op))
    benchmark(fn)
    benchmark.extra_info.update(_load())
