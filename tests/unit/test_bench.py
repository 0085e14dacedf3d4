"""The benchmark tier's own checks: every core adapter's `bench()` times what its `run()` computes (on tiny
shapes, against `run()` on the benchmark's own Problem), in the layout its API takes natively; and the
bytes / bound arithmetic of benchmarks.bandwidth.

Adapters skip cleanly when their framework is missing; the Keras 3 backends run in a child process each
(tests/unit/bench_child.py), because Keras fixes its backend at import.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from adapters import SPECS, load, spec

ROOT = Path(__file__).resolve().parents[2]
CORE = [s.name for s in SPECS if s.core]
KERAS3 = ("keras.tensorflow", "keras.jax", "keras.torch")
CHANNELS_FIRST = {"torch.nn.BatchNorm", "torch.nn.functional.batch_norm", "equinox.ema", "equinox.batch",
                  "onnxruntime", "onnxruntime.opset14", "onnxruntime.opset9"}
FOUR_D_ONLY = {"tf.raw_ops.FusedBatchNormV3", "tf_keras.fused"}
TOLERANCE = 1e-5  # max |bench - run| / max(1, max |run|): float32 graph vs eager reassociation is ~1e-7


def _installed(name: str) -> list[str]:
    return [m for m in spec(name).requires if importlib.util.find_spec(m) is None]


@pytest.fixture(scope="module")
def keras_children():
    """One child per installed Keras 3 backend, all started at the first request (they run concurrently)."""
    procs, results = {}, {}

    def run(name):
        if not procs:
            for other in KERAS3:
                if not _installed(other):
                    procs[other] = subprocess.Popen(
                        [sys.executable, "-m", "tests.unit.bench_child", other], cwd=ROOT, stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
        if name not in results:
            stdout, stderr = procs[name].communicate(timeout=600)
            line = next((s for s in stdout.splitlines() if s.startswith("BNCONFORM-JSON ")), None)
            assert procs[name].returncode == 0 and line, stderr[-3000:]
            results[name] = json.loads(line.removeprefix("BNCONFORM-JSON "))
        return results[name]

    yield run
    for proc in procs.values():
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


@pytest.mark.parametrize("name", CORE)
def test_bench_times_what_run_computes(name, keras_children):
    missing = _installed(name)
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed")
    if name in KERAS3:
        records = keras_children(name)
    else:
        from .bench_child import compare

        records = compare(name)
    assert records
    for r in records:
        where = f"{name} {r['op']} on {r['shape']}"
        if r["status"] == "unsupported":
            two_d = len(r["shape"]) == 2
            assert (name.startswith("onnxruntime") and r["op"] == "train_backward") or (
                name in FOUR_D_ONLY and two_d), f"{where} unexpectedly unsupported: {r['reason']}"
            continue
        expected = "NC" if len(r["shape"]) == 2 else ("NCHW" if name in CHANNELS_FIRST else "NHWC")
        assert r["layout"] == expected, where
        assert r["y"] <= TOLERANCE, f"{where}: y differs from run() by {r['y']:.2e} (scaled)"
        if r["op"] == "train_backward":
            assert r["dx"] <= TOLERANCE, f"{where}: dx differs from run() by {r['dx']:.2e} (scaled)"
        # the check can tell the modes apart: a benchmark of the wrong mode would fail it
        assert r["y_vs_other_mode"] > 100 * TOLERANCE, where


def test_base_adapter_has_no_benchmark():
    from adapters.base import Adapter, Unsupported

    class Bare(Adapter):
        name = "bare"

    with pytest.raises(Unsupported, match="bare has no benchmark"):
        Bare().bench((2, 3), "float32", "train")


def test_benchmark_problem_layouts_and_data():
    from adapters import bench_support as bs

    assert bs.native((32, 64, 112, 112), "first") == ((32, 64, 112, 112), 1)
    assert bs.native((32, 64, 112, 112), "last") == ((32, 112, 112, 64), 3)
    assert bs.native((4096, 1024), "last") == ((4096, 1024), 1)
    assert [bs.layout_name(s, c) for s, c in [((2, 3, 4, 5), "first"), ((2, 3, 4, 5), "last"), ((2, 3), "last"),
                                              ((2, 3, 4, 5, 6), "last")]] == ["NCHW", "NHWC", "NC", "NDHWC"]
    p = bs.problem((4, 3, 5, 6), "last", "float32", "train_backward")
    assert p.shape == (4, 5, 6, 3) and p.axis == 3 and p.modes == ("train",) and "dx" in p.quantities
    assert np.array_equal(p.xs[0], p.xs[0].astype(np.float32))  # exactly representable in the case dtype
    assert bs.problem((4, 3, 5, 6), "last", "float32", "eval").modes == ("eval",)
    with pytest.raises(ValueError):
        bs.problem((4, 3), "first", "float32", "backward")
    # the adapters' own refusals come through as Unsupported, without touching a framework
    from adapters.base import Unsupported

    with pytest.raises(Unsupported, match="4-D or 5-D"):
        bs.start(load("tf.raw_ops.FusedBatchNormV3"), (8, 4), "float32", "train", "last")


# -- the bytes model and the bound (benchmarks/bandwidth.py)

def test_bytes_bn_must_move():
    from benchmarks import bandwidth as bw

    shape, E = (32, 64, 112, 112), 32 * 64 * 112 * 112
    assert bw.bn_bytes(shape, "float32", "eval") == 2 * E * 4  # read x, write y
    assert bw.bn_bytes(shape, "float32", "train") == 3 * E * 4  # statistics pass, then read x, write y
    assert bw.bn_bytes(shape, "float32", "train_backward") == 8 * E * 4  # + read x, dy; read x, dy, write dx
    assert bw.bn_bytes(shape, "float64", "train") == 3 * E * 8
    assert bw.bn_bytes((4096, 1024), "bfloat16", "eval") == 2 * 4096 * 1024 * 2
    with pytest.raises(ValueError):
        bw.bn_bytes(shape, "float32", "backward")


def test_copy_bandwidth_bound_and_percent():
    from benchmarks import bandwidth as bw

    # a copy of 1 GB (read 1 GB + write 1 GB) in 0.2 s moves 10 GB/s
    assert bw.copy_bytes(10**9) == 2 * 10**9
    assert bw.bandwidth(copy_seconds=0.2, nbytes=10**9) == pytest.approx(1e10)
    # BN training forward on 1e9 bytes of x moves 3e9 bytes: 0.3 s at 10 GB/s
    assert bw.bound_seconds(3 * 10**9, 1e10) == pytest.approx(0.3)
    assert bw.percent_of_bound(bound=0.3, measured=0.6) == pytest.approx(50.0)
    assert bw.percent_of_bound(bound=0.3, measured=0.3) == pytest.approx(100.0)
    # nearest copy size: the bound for a row uses the copy measured at the size closest to its x
    copies = {1000: 5e9, 10**6: 8e9, 10**8: 10e9}
    assert bw.nearest_bandwidth(copies, 2 * 10**6) == 8e9
    assert bw.nearest_bandwidth(copies, 10**9) == 10e9


def test_copy_function_copies():
    from benchmarks import bandwidth as bw

    src, dst = bw.copy_buffers(1 << 16)
    src[:] = 7
    bw.numpy_copy(src, dst)()
    assert dst.nbytes == 1 << 16 and np.all(dst == 7)


def test_threaded_copy_copies_every_slice():
    from benchmarks import bandwidth as bw

    src, dst = bw.copy_buffers(4 * 1001)
    src[:] = np.arange(src.size)
    bw.threaded_copy(src, dst, threads=3)()
    assert np.array_equal(src, dst)


def test_table_uses_the_copy_of_its_own_file(tmp_path):
    """A row's bound comes from the copy measured in the same JSON file, at the nearest size, the faster of
    the one-thread and all-threads probes."""
    from benchmarks import table

    def row(kind, median, **info):
        return {"name": kind, "stats": {"median": median, "iqr": 0.0, "rounds": 3}, "extra_info": {"kind": kind,
                                                                                                  **info}}
    nbytes = 10**8
    fast = [row("copy", 0.02, x_nbytes=nbytes, bytes=2 * nbytes, threads=1, shape=[32, 64, 112, 112],
                dtype="float32"),  # 10 GB/s, this shape's own probe
            row("copy", 0.04, x_nbytes=nbytes, bytes=2 * nbytes, threads=2, shape=[32, 64, 112, 112],
                dtype="float32"),
            row("copy", 0.01, x_nbytes=nbytes, bytes=2 * nbytes, threads=1, shape=[32, 256, 56, 56],
                dtype="float32"),  # 20 GB/s at the same size, another shape's probe: not this row's bound
            row("bn", 0.06, adapter="torch.nn.BatchNorm", op="train", x_nbytes=nbytes, bytes=3 * nbytes,
                shape=[32, 64, 112, 112], layout="NCHW", dtype="float32")]
    slow = [row("copy", 0.04, x_nbytes=nbytes, bytes=2 * nbytes, threads=1, shape=[1]),  # 5 GB/s
            row("bn", 0.06, adapter="keras.jax", op="train", x_nbytes=nbytes, bytes=3 * nbytes,
                shape=[32, 64, 112, 112], layout="NHWC", dtype="float32")]
    paths = []
    for name, benches in (("a.json", fast), ("b.json", slow)):
        (tmp_path / name).write_text(json.dumps({"benchmarks": benches}))
        paths.append(str(tmp_path / name))
    rows = {r.get("adapter"): r for r in table.load(paths) if r["kind"] == "bn"}
    assert rows["torch.nn.BatchNorm"]["bound"] == pytest.approx(0.03)  # 3e8 bytes at 10 GB/s
    assert rows["torch.nn.BatchNorm"]["percent"] == pytest.approx(50.0)
    assert rows["keras.jax"]["percent"] == pytest.approx(100.0)  # its own file's 5 GB/s
    text = table.render(table.load(paths))
    assert "torch.nn.BatchNorm" in text and "50%" in text and "100%" in text


def test_compare_normalizes_by_each_runs_own_bound(tmp_path, capsys):
    """A run on a machine whose copy got 2x slower and whose BN got 2x slower too did not regress relative to
    its bound; a BN that got 2x slower at the same bandwidth did."""
    from benchmarks import table

    nbytes, shape = 10**8, [32, 64, 112, 112]

    def run(name, copy_s, bn_s):
        benches = [{"name": "c", "stats": {"median": copy_s, "iqr": 0, "rounds": 3},
                    "extra_info": {"kind": "copy", "x_nbytes": nbytes, "bytes": 2 * nbytes, "shape": shape,
                                   "dtype": "float32"}},
                   {"name": "b", "stats": {"median": bn_s, "iqr": 0, "rounds": 3},
                    "extra_info": {"kind": "bn", "adapter": "haiku", "op": "eval", "x_nbytes": nbytes,
                                   "bytes": 2 * nbytes, "shape": shape, "layout": "NHWC", "dtype": "float32"}}]
        (tmp_path / name).write_text(json.dumps({"benchmarks": benches}))
        return str(tmp_path / name)
    old = run("old.json", 0.02, 0.04)
    assert table.main([run("busy.json", 0.04, 0.08), "--baseline", old, "--fail-slower", "25"]) == 0
    assert table.main([run("slower.json", 0.02, 0.08), "--baseline", old, "--fail-slower", "25"]) == 1
    assert "SLOWER: haiku 32x64x112x112 eval: +100%" in capsys.readouterr().err
