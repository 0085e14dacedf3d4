"""Materialize a Case into concrete arrays (a reference.Problem), bit for bit the same everywhere.

NumPy's Generator streams and its transcendental functions (log, sin) are not promised to be identical
across NumPy versions and CPUs, so inputs come from a counter-based integer hash (SplitMix64's finalizer)
and are converted to floats with operations IEEE 754 rounds exactly (integer-to-float of < 2**53,
multiplication by a power of two, + - *). "Normal" values are Irwin-Hall sums of 12 uniforms minus 6:
mean 0, variance 1, bounded by 6; element-wise sums in a fixed order, never a reduction.

Each array is a stream named after its role ("x0", "gamma", ...) keyed by the case's seed only, so cases
that differ only in hyperparameters (eps, momentum, ...) see identical data: the discriminating cases
then differ in exactly one knob.

Distributions (`Case.dist`): "normal", "uniform", "outliers" (about 1 element in 64 is 16x larger),
"constant_channel" (channel 0 constant: variance 0), "near_constant_channel" (channel 0 an offset of ~1 plus a
spread of ~2**-10: variance far below eps), "denormal" (channel 0 subnormal in the case dtype), and "nan" /
"inf" (the LAST step's batch holds a NaN, or +Inf in channel 0 and -Inf in the last channel, at one element
each: training propagates them over the channel, inference to the element). Every other element of those
cases is what "normal" gives, so the special values are the only difference.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import os
from pathlib import Path

import numpy as np

from reference import Problem, round_to
from reference.dtypes import fmt

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_TWO_M53 = 2.0**-53


def _key(seed: int, stream: str) -> np.uint64:
    digest = hashlib.sha256(f"bnconform/{seed}/{stream}".encode()).digest()
    return np.uint64(int.from_bytes(digest[:8], "little"))


_BLOCK = 1 << 15  # counters per block: a block's uint64 and float64 buffers stay in a core's L2 cache


def _splitmix(counter: np.ndarray, key: np.uint64) -> np.ndarray:
    z = counter * _GOLDEN + key  # uint64 arithmetic wraps modulo 2**64, as SplitMix64 intends
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


_COUNTERS = np.arange(_BLOCK, dtype=np.uint64)
_COUNTERS.setflags(write=False)


class _Stream:
    """Uniforms of one stream for counters [start, start + count), computed block by block in place.

    The same operations on the same counters as `_splitmix` and `uniform` (integer arithmetic, an exact
    conversion and an exact scaling), so the same bits; a large request no longer makes a dozen passes through
    memory with array-sized temporaries, which made input generation most of a realistic case's cost."""

    def __init__(self, key: np.uint64, most: int = _BLOCK):
        """most: the longest fill this stream will be asked for (<= _BLOCK): the size of its buffers."""
        self.key = key
        self.base = _COUNTERS[:most]
        self.z = np.empty(most, dtype=np.uint64)
        self.t = np.empty(most, dtype=np.uint64)

    def fill(self, start: int, out: np.ndarray) -> None:
        """out[:] = uniform values for counters start, start + 1, ... (len(out) <= _BLOCK)."""
        m = out.size
        z, t = self.z[:m], self.t[:m]
        np.add(self.base[:m], np.uint64(start), out=z)
        np.multiply(z, _GOLDEN, out=z)
        np.add(z, self.key, out=z)
        for shift, mult in ((30, _M1), (27, _M2)):
            np.right_shift(z, np.uint64(shift), out=t)
            np.bitwise_xor(z, t, out=z)
            np.multiply(z, mult, out=z)
        np.right_shift(z, np.uint64(31), out=t)
        np.bitwise_xor(z, t, out=z)
        np.right_shift(z, np.uint64(11), out=z)
        out[...] = z  # < 2**53: exact
        np.multiply(out, _TWO_M53, out=out)


# Arrays of at least this many values come from the numba kernels (conformance/core/inputs_kernels.py) when
# numba is installed: the same bits, several times faster; smaller ones are not worth importing numba for.
FAST = 1 << 16
_kernels = None  # the kernels module once imported; False: numba is not installed


def _fast(size: int):
    """The numba kernels, if `size` is worth them and numba is installed, else None."""
    global _kernels
    if size < FAST:
        return None
    if _kernels is None:
        try:
            from . import inputs_kernels
        except ImportError:
            _kernels = False
        else:
            _kernels = inputs_kernels
    return _kernels or None


# -- a run's large streams, generated once: the parent of `bnconform run` generates every case's inputs to
# checksum them before a worker starts, and writes the streams of FAST values and more into a directory of
# the run's; its workers read them back (np.load: the same float64 bits) instead of generating them again,
# which on the default tier's realistic cases took ~0.35 s per worker process plus ~0.9 s to load numba's
# kernels (2 Dec 2026, 2 cores). A file that is missing, unreadable or not the array its name says is
# generated again, so the store changes only where the bits are computed.
_store: Path | None = None
_store_writes = False


@contextlib.contextmanager
def shared_streams(directory: str | os.PathLike | None, write: bool = False):
    """Within the block, large streams are read from `directory` when there, and (write=True) written there
    when generated; None: neither."""
    global _store, _store_writes
    saved = _store, _store_writes
    _store, _store_writes = (Path(directory) if directory else None), write
    try:
        yield
    finally:
        _store, _store_writes = saved


def _stored(kind: str, seed: int, stream: str, size: int, generate) -> np.ndarray:
    if _store is None or size < FAST:
        return generate()
    path = _store / f"{kind}-{seed}-{size}-{stream.encode().hex()}.npy"
    try:
        out = np.load(path, allow_pickle=False)
        if out.dtype == np.float64 and out.shape == (size,):
            return out
    except (OSError, ValueError):
        pass
    out = generate()
    if _store_writes:
        try:  # written whole, then renamed: a reader sees the whole array or no file
            part = path.with_name(f"{path.stem}.{os.getpid()}.part")
            with open(part, "wb") as f:
                np.save(f, out, allow_pickle=False)
            os.replace(part, path)
        except OSError:
            pass  # the store only saves time: the workers generate what it lacks
    return out


def uniform(seed: int, stream: str, size: int) -> np.ndarray:
    """size values in [0, 1), multiples of 2**-53."""
    return _stored("uniform", seed, stream, size, lambda: _uniform(seed, stream, size))


def _uniform(seed: int, stream: str, size: int) -> np.ndarray:
    out = np.empty(size)
    kernels = _fast(size)
    if kernels:
        kernels.uniform(_key(seed, stream), out)
        return out
    gen = _Stream(_key(seed, stream), min(size, _BLOCK))
    for start in range(0, size, _BLOCK):
        gen.fill(start, out[start:start + _BLOCK])
    return out


def standard(seed: int, stream: str, size: int) -> np.ndarray:
    """Irwin-Hall(12) - 6: mean 0, variance 1, support [-6, 6].

    Element j is the sum of uniforms j, size + j, ..., 11 size + j of the stream, added in that order, then
    6 subtracted (block by block: the same operations per element as whole-array sums)."""
    return _stored("standard", seed, stream, size, lambda: _standard(seed, stream, size))


def _standard(seed: int, stream: str, size: int) -> np.ndarray:
    out = np.empty(size)
    kernels = _fast(size)
    if kernels:
        kernels.standard(_key(seed, stream), out)
        return out
    if 12 * size <= _BLOCK:  # counters k size + j are the flat indices of a (12, size) array: one fill
        u = np.empty((12, size))
        _Stream(_key(seed, stream), 12 * size).fill(0, u.reshape(-1))
        np.copyto(out, u[0])
        for k in range(1, 12):
            np.add(out, u[k], out=out)
        np.subtract(out, 6.0, out=out)
        return out
    gen = _Stream(_key(seed, stream), min(size, _BLOCK))
    u = np.empty(min(size, _BLOCK))
    for start in range(0, size, _BLOCK):
        acc = out[start:start + _BLOCK]
        gen.fill(start, acc)
        for k in range(1, 12):
            uk = u[:acc.size]
            gen.fill(k * size + start, uk)
            np.add(acc, uk, out=acc)
        np.subtract(acc, 6.0, out=acc)
    return out


def _sample(seed: int, stream: str, shape: tuple[int, ...], dist: str) -> np.ndarray:
    size = int(np.prod(shape))
    if dist == "uniform":
        z = (uniform(seed, stream, size) * 2.0 - 1.0) * 1.7320508075688772
    else:
        z = standard(seed, stream, size)
        if dist == "outliers":  # about 1 element in 64 is 16x larger
            z = np.where(uniform(seed, stream + "/outlier", size) < 1.0 / 64.0, z * 16.0, z)
    return z.reshape(shape)


@functools.lru_cache(maxsize=1024)
def _channel_scale_loc(seed: int, C: int, case_scale: float, case_loc: float) -> tuple[np.ndarray, np.ndarray]:
    """Each channel's scale and location (read-only; the same for every step of a case, which may have 200).
    Channels get distinct scales and locations, so a statistic taken over the wrong axis is visible."""
    u_scale = uniform(seed, "channel_scale", C)
    u_loc = uniform(seed, "channel_loc", C)
    scale = case_scale * (0.5 + u_scale)
    loc = case_loc * (0.75 + 0.5 * u_loc) if case_loc != 0.0 else (u_loc - 0.5) * case_scale
    for a in (scale, loc):
        a.setflags(write=False)
    return scale, loc


def batch(case, step: int) -> np.ndarray:
    """The input batch of one step, float64, before rounding to the case dtype."""
    shape, axis, C = case.shape, case.axis_index, case.channels
    stream = "x0" if case.same_batch else f"x{step}"
    z = _sample(case.seed, stream, shape, case.dist)
    scale, loc = _channel_scale_loc(case.seed, C, case.scale, case.loc)
    bshape = [1] * len(shape)
    bshape[axis] = C
    x = loc.reshape(bshape) + scale.reshape(bshape) * z
    if case.dist in SPECIAL:
        SPECIAL[case.dist](case, step, x, loc, scale)
    return x


def _channel(x: np.ndarray, axis: int, c: int) -> np.ndarray:
    """A view of channel c of x, with the channel axis removed."""
    idx = [slice(None)] * x.ndim
    idx[axis] = c
    return x[tuple(idx)]


def _constant(case, step, x, loc, scale) -> None:
    _channel(x, case.axis_index, 0)[...] = loc[0]  # zero variance


def _near_constant(case, step, x, loc, scale) -> None:
    # An offset of ~1 and a spread 2**-10 of the channel's scale: variance ~1e-6 * scale^2 (below eps), and
    # |mean|/std ~ 1e3: the fast variance cancels, two-pass does not.
    ch = _channel(x, case.axis_index, 0)
    z = (ch - loc[0]) / scale[0]
    ch[...] = (1.0 + abs(loc[0])) + z * (scale[0] * 2.0**-10)


def _denormal(case, step, x, loc, scale) -> None:
    # Channel 0 scaled into the subnormal range of the case dtype (below its smallest normal number).
    tiny = 2.0 ** fmt(case.dtype).min_exponent
    ch = _channel(x, case.axis_index, 0)
    ch[...] = (ch - loc[0]) / scale[0] * (tiny * 2.0**-4)


def _nonfinite(case, step, x, loc, scale) -> None:
    if step != len(case.modes) - 1:  # earlier steps stay finite: the running statistics are finite before it
        return
    C = case.channels
    n = x.size // C
    picks = uniform(case.seed, "nonfinite", 2)

    def put(c: int, k: int, value: float) -> None:
        ch = _channel(x, case.axis_index, c)
        ch[np.unravel_index(k, ch.shape)] = value

    if case.dist == "nan":
        put(0, int(picks[0] * n), np.nan)
        return
    put(0, int(picks[0] * n), np.inf)
    if C > 1:
        put(C - 1, int(picks[1] * n), -np.inf)


SPECIAL = {"constant_channel": _constant, "near_constant_channel": _near_constant, "denormal": _denormal,
           "nan": _nonfinite, "inf": _nonfinite}
DISTRIBUTIONS = ("normal", "uniform", "outliers", *SPECIAL)


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
        shards=case.shards,
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
            h.update(np.ascontiguousarray(a, dtype="<f8"))  # its buffer: no bytes copy
    return h.hexdigest()
