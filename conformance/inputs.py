"""Materialize a Case into concrete arrays (a reference.Problem), bit for bit the same everywhere.

NumPy's Generator streams and its transcendental functions (log, sin) are not promised to be identical
across NumPy versions and CPUs, so inputs come from a counter-based integer hash (SplitMix64's finalizer)
and are converted to floats with operations IEEE 754 rounds exactly (integer-to-float of < 2**53,
multiplication by a power of two, + - *). "Normal" values are Irwin-Hall sums of 12 uniforms minus 6:
mean 0, variance 1, bounded by 6; element-wise sums in a fixed order, never a reduction.

Each array is a stream named after its role ("x0", "gamma", ...) keyed by the case's seed only, so cases
that differ only in hyperparameters (eps, momentum, ...) see identical data: the discriminating cases
then differ in exactly one knob.
"""
from __future__ import annotations

import hashlib

import numpy as np

from reference import Problem, round_to

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_TWO_M53 = 2.0**-53


def _key(seed: int, stream: str) -> np.uint64:
    digest = hashlib.sha256(f"bnconform/{seed}/{stream}".encode()).digest()
    return np.uint64(int.from_bytes(digest[:8], "little"))


def _splitmix(counter: np.ndarray, key: np.uint64) -> np.ndarray:
    z = counter * _GOLDEN + key  # uint64 arithmetic wraps modulo 2**64, as SplitMix64 intends
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def uniform(seed: int, stream: str, size: int) -> np.ndarray:
    """size values in [0, 1), multiples of 2**-53."""
    bits = _splitmix(np.arange(size, dtype=np.uint64), _key(seed, stream))
    return (bits >> np.uint64(11)).astype(np.float64) * _TWO_M53


def standard(seed: int, stream: str, size: int) -> np.ndarray:
    """Irwin-Hall(12) - 6: mean 0, variance 1, support [-6, 6]."""
    u = uniform(seed, stream, 12 * size).reshape(12, size)
    acc = u[0].copy()
    for k in range(1, 12):
        acc = acc + u[k]
    return acc - 6.0


def _sample(seed: int, stream: str, shape: tuple[int, ...], dist: str) -> np.ndarray:
    size = int(np.prod(shape))
    if dist == "uniform":
        z = (uniform(seed, stream, size) * 2.0 - 1.0) * 1.7320508075688772
    else:
        z = standard(seed, stream, size)
        if dist == "outliers":  # about 1 element in 64 is 16x larger
            z = np.where(uniform(seed, stream + "/outlier", size) < 1.0 / 64.0, z * 16.0, z)
    return z.reshape(shape)


def batch(case, step: int) -> np.ndarray:
    """The input batch of one step, float64, before rounding to the case dtype."""
    shape, axis, C = case.shape, case.axis_index, case.channels
    stream = "x0" if case.same_batch else f"x{step}"
    z = _sample(case.seed, stream, shape, case.dist)
    # Channels get distinct scales and locations, so a statistic taken over the wrong axis is visible.
    u_scale = uniform(case.seed, "channel_scale", C)
    u_loc = uniform(case.seed, "channel_loc", C)
    scale = case.scale * (0.5 + u_scale)
    loc = case.loc * (0.75 + 0.5 * u_loc) if case.loc != 0.0 else (u_loc - 0.5) * case.scale
    bshape = [1] * len(shape)
    bshape[axis] = C
    x = loc.reshape(bshape) + scale.reshape(bshape) * z
    if case.dist == "constant_channel":  # channel 0 is constant: zero variance
        idx = [slice(None)] * len(shape)
        idx[axis] = 0
        x[tuple(idx)] = loc[0]
    return x


def materialize(case) -> Problem:
    """The Problem a case describes, every array rounded to the case dtype and widened to float64."""
    C, dt, seed = case.channels, case.dtype, case.seed

    def r(a):
        return round_to(a, dt)

    xs = tuple(r(batch(case, k)) for k in range(len(case.modes)))
    gamma = beta = None
    if case.affine:
        sign = np.where(uniform(seed, "gamma_sign", C) < 0.25, -1.0, 1.0)
        gamma = r(sign * (0.5 + uniform(seed, "gamma", C)))
        beta = r(uniform(seed, "beta", C) - 0.5)
    if case.init_stats == "random":
        rmean = r(uniform(seed, "running_mean", C) - 0.5)
        rvar = r(0.5 + uniform(seed, "running_var", C))
    else:
        rmean, rvar = np.zeros(C), np.ones(C)
    dy = r(_sample(seed, "dy", case.shape, "normal"))
    v = r(_sample(seed, "v", case.shape, "normal"))
    # Read-only: the oracle and the adapter share these arrays, and an adapter that writes into its inputs
    # (torch.from_numpy shares memory; in-place running-statistics updates) must fail loudly, not silently
    # change what the oracle sees.
    for a in (*xs, gamma, beta, rmean, rvar, dy, v):
        if a is not None:
            a.setflags(write=False)
    return Problem(
        xs=xs,
        modes=case.modes,
        axis=case.axis_index,
        gamma=gamma,
        beta=beta,
        running_mean=rmean,
        running_var=rvar,
        momentum=case.momentum,
        eps=case.eps,
        dy=dy,
        v=v,
        dtype=dt,
        track_running_stats=case.track_running_stats,
        memory_format=case.memory_format,
        native_init=case.init_stats == "default",
        use_defaults=case.defaults,
        quantities=case.quantities,
        label=case.id,
    )


def checksum(problem: Problem) -> str:
    """SHA-256 over every input array's float64 little-endian bytes, in a fixed order."""
    h = hashlib.sha256()
    arrays = list(problem.xs) + [problem.gamma, problem.beta, problem.running_mean, problem.running_var,
                                 problem.dy, problem.v]
    for a in arrays:
        if a is None:
            h.update(b"none")
        else:
            h.update(np.ascontiguousarray(a, dtype="<f8").tobytes())
    return h.hexdigest()
