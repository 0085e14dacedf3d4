"""numba kernels behind conformance/core/inputs.py (imported only for large arrays, and only when numba is
installed: the `fast` extra). The same integer arithmetic and exact conversions as the NumPy code in inputs.py,
element by element, so the same bits (tests/unit/test_inputs.py holds them to it); one pass instead of a dozen
NumPy calls per uniform."""
from __future__ import annotations

import numpy as np
from numba import njit

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_TWO_M53 = 2.0**-53


@njit(cache=True, inline="always")
def _uniform(counter, key):
    """SplitMix64's finalizer of counter * golden + key (uint64, wrapping), top 53 bits times 2**-53."""
    z = counter * _GOLDEN + key
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    z = z ^ (z >> np.uint64(31))
    return np.float64(z >> np.uint64(11)) * _TWO_M53


@njit(cache=True)
def uniform(key, out):
    """out[j] = uniform of counter j."""
    for j in range(out.size):
        out[j] = _uniform(np.uint64(j), key)


@njit(cache=True)
def standard(key, out):
    """out[j] = uniform(j) + uniform(size + j) + ... + uniform(11 size + j) - 6, added in that order."""
    size = out.size
    for j in range(size):
        acc = _uniform(np.uint64(j), key)
        for k in range(1, 12):
            acc += _uniform(np.uint64(k * size + j), key)
        out[j] = acc - 6.0
