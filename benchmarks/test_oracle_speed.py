"""The oracle's speed on the largest ResNet-50 stage shape, (32, 64, 112, 112), in float64: one training
forward as `reference.simulate` computes it (batch statistics by `moments`, y by `normalize.forward`, one
running update by `running.update`), and the forward and backward of a one-step training problem through
`reference.simulate` itself (second order off), against the same bounds as the frameworks (float64 bytes:
3 E 8 and 8 E 8, see benchmarks/bandwidth.py). The target is within 2x of the bound (>= 50%).

Three paths, in the same run: `oracle.fused` (reference/fused.py, numba: the default when numba is installed),
`oracle.blocked` (reference/blocked.py, NumPy only), `oracle.plain` (the whole-array expressions: LARGE out of
reach). All three return the same bits for y and dx (tests/unit/test_oracle_fused.py). Selected with the oracle: `--bench-frameworks` containing "oracle"
(tox -e bench's first command) or "all".
"""
from __future__ import annotations

import os

import numpy as np
import pytest

from benchmarks import bandwidth as bw

SHAPE, AXIS, DTYPE = (32, 64, 112, 112), 1, "float64"


@pytest.fixture(scope="module")
def oracle_selected(request):
    if request.config.getoption("--bench-frameworks") not in ("all", "everything") and "oracle" not in [
            t.strip() for t in request.config.getoption("--bench-frameworks").split(",")]:
        pytest.skip("the oracle is benchmarked when --bench-frameworks (BNCONFORM_FRAMEWORKS) names 'oracle'")


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    C = SHAPE[AXIS]
    loc = rng.uniform(-1.0, 1.0, C).reshape(1, C, 1, 1)
    return rng.standard_normal(SHAPE) * 0.1 + loc


def train_forward(x, gamma, beta, state, convention):
    """One training step of the oracle, as simulate() runs it (without the backward simulate also takes)."""
    from reference import moments, to_channels
    from reference import normalize as nz
    from reference.running import update

    mu, v = moments(x, AXIS)
    ch = lambda a: to_channels(a, x.ndim, AXIS)  # noqa: E731
    norm = nz.Normalizer(ch(mu), ch(v), ch(mu), 1.0, 1.0, 1e-5)
    y = nz.forward(x, ch(gamma), ch(beta), norm)
    return y, update(state, mu, v, x.size // x.shape[AXIS], 0.1, convention)


@pytest.mark.parametrize("threads", ["1", "all"])
def test_copy_float64(benchmark, oracle_selected, threads):
    nbytes = bw.elements(SHAPE) * bw.ITEMSIZE[DTYPE]
    src, dst = bw.copy_buffers(nbytes)
    benchmark.group = "oracle"
    benchmark.extra_info.update(kind="copy", threads=1 if threads == "1" else os.cpu_count(), shape=list(SHAPE),
                                dtype=DTYPE, x_nbytes=nbytes, bytes=bw.copy_bytes(nbytes))
    benchmark(bw.numpy_copy(src, dst) if threads == "1" else bw.threaded_copy(src, dst))
    benchmark.extra_info["loadavg_1min"] = round(os.getloadavg()[0], 2)


PATHS = ["fused", "blocked", "plain"]


def _take(path, monkeypatch):
    from reference import blocked, fused

    if path == "fused" and not fused.available():
        pytest.skip("the fused path needs numba (pip install 'bnconform[fast]')")
    if path != "fused":
        monkeypatch.setattr(fused, "_kernels", False)
    if path == "plain":
        monkeypatch.setattr(blocked, "LARGE", 1 << 62)


def _info(benchmark, path, op):
    benchmark.group = "oracle"
    benchmark.extra_info.update(kind="oracle", adapter=f"oracle.{path}", shape=list(SHAPE), native_shape=list(SHAPE),
                                layout="NCHW", op=op, dtype=DTYPE, x_nbytes=bw.elements(SHAPE) * bw.ITEMSIZE[DTYPE],
                                bytes=bw.bn_bytes(SHAPE, DTYPE, op))


@pytest.mark.parametrize("path", PATHS)
def test_oracle_train_forward(benchmark, oracle_selected, batch, path, monkeypatch):
    from reference import Convention
    from reference.running import RunningState

    _take(path, monkeypatch)
    C = SHAPE[AXIS]
    conv = Convention()
    state = RunningState.initial(np.zeros(C), np.ones(C), conv)
    gamma, beta = np.linspace(0.5, 1.5, C), np.linspace(-0.5, 0.5, C)
    _info(benchmark, path, "train")
    train_forward(batch, gamma, beta, state, conv)  # compiles the fused kernels (cached on disk) before timing
    benchmark(train_forward, batch, gamma, beta, state, conv)
    benchmark.extra_info["loadavg_1min"] = round(os.getloadavg()[0], 2)


@pytest.mark.parametrize("path", PATHS)
def test_oracle_train_backward(benchmark, oracle_selected, batch, path, monkeypatch):
    """simulate() of one training step with its backward (dx, dgamma, dbeta): what a conformance check on this
    shape asks of the oracle, first order."""
    from reference import Convention, Problem, simulate

    _take(path, monkeypatch)
    C = SHAPE[AXIS]
    dy = np.random.default_rng(1).standard_normal(SHAPE)
    problem = Problem(xs=(batch,), modes=("train",), axis=AXIS, gamma=np.linspace(0.5, 1.5, C),
                      beta=np.linspace(-0.5, 0.5, C), running_mean=np.zeros(C), running_var=np.ones(C),
                      momentum=0.1, eps=1e-5, dy=dy, v=dy)
    _info(benchmark, path, "train_backward")
    simulate(problem, Convention(), second_order=False)
    benchmark(simulate, problem, Convention(), second_order=False)
    benchmark.extra_info["loadavg_1min"] = round(os.getloadavg()[0], 2)
