"""The evidence behind the float16 overflow findings (registry: haiku-float16-rsqrt-derivative-overflows,
tf-xla-float16-rsqrt-grad-cubes-first; further below, the var + eps = 1e-5 ones), reduced to the one operation
each names: the derivative of 1/sqrt(v) at v = var + eps = 1.1e-4, where y = v^(-1/2) = 95 and dy is small, so
that the gradient itself (-0.5 dy y^3) is representable in float16 but y^3 = 8.6e5 is not. Each runs in a fresh
Python (the frameworks' own flags and devices)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

TF = """
import json, tensorflow as tf
y = tf.constant([95.0], tf.float16)   # rsqrt(1.1e-4)
dy = tf.constant([0.01], tf.float16)
eager = tf.raw_ops.RsqrtGrad(y=y, dy=dy)
xla = tf.function(lambda y, dy: tf.raw_ops.RsqrtGrad(y=y, dy=dy), jit_compile=True)(y, dy)
print(json.dumps({"eager": float(eager[0]), "xla": float(xla[0])}))
"""

JAX = """
import json, jax, jax.numpy as jnp
v = jnp.asarray([1.1e-4], jnp.float16)
f = lambda v: (jax.lax.rsqrt(v) * 0.01).sum()     # a small cotangent reaching 1/sqrt(var + eps)
print(json.dumps({"float16": float(jax.grad(f)(v)[0]),
                  "float32": float(jax.grad(f)(v.astype(jnp.float32))[0])}))
"""


def _run(code: str) -> dict:
    env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "3", "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_tf_rsqrt_grad_is_finite_eagerly_and_infinite_under_xla_in_float16():
    pytest.importorskip("tensorflow")
    got = _run(TF)
    assert abs(got["eager"] - (-0.5 * 0.01 * 95.0**3)) < 0.01 * 4287  # -4287: within float16's range
    assert got["xla"] == float("-inf")  # (y * y) * y overflows before dy / -2 scales it


def test_jax_rsqrt_derivative_overflows_in_float16():
    pytest.importorskip("jax")
    got = _run(JAX)
    assert got["float16"] == float("-inf")  # 0.01 * -0.5 * (ans / x): ans / x = 8.7e5 > 65504
    assert -4500 < got["float32"] < -4000


# -- var + eps = 1.0e-5 (fuzz case f16-7x1-...-denormal: subnormal float16 inputs), y = v^(-1/2) = 316
# (registry: tf-nn-float16-rsqrt-grad-squares-y, equinox-float16-division-derivative-overflows)

TF_EAGER = """
import json, tensorflow as tf
grad = lambda y, dy: float(tf.raw_ops.RsqrtGrad(y=tf.constant([y], tf.float16), dy=tf.constant([dy], tf.float16))[0])
print(json.dumps({"y316": grad(316.2, 1e-5), "y250": grad(250.0, 1e-4)}))
"""

JAX_DIVISION = """
import json, jax, jax.numpy as jnp
c = jnp.asarray([1e-6, -1e-6], jnp.float16)   # (x - m) * dy: a small cotangent of each element
f = lambda v: (c / jnp.sqrt(v + jnp.float16(1e-5))).sum()   # equinox's (y - m) / sqrt(v + eps)
v = jnp.float16(0.0)
print(json.dumps({"division": float(jax.grad(f)(v)),
                  "float32": float(jax.grad(lambda v: (c.astype(jnp.float32) / jnp.sqrt(v + 1e-5)).sum())(0.0))}))
"""


def test_tf_rsqrt_grad_overflows_eagerly_once_y_squared_leaves_float16():
    pytest.importorskip("tensorflow")
    got = _run(TF_EAGER)
    assert got["y316"] == float("-inf")  # the answer, -0.5 * 1e-5 * 316.2^3 = -158, is representable
    assert got["y250"] == pytest.approx(-0.5 * 1e-4 * 250.0**3, rel=1e-3)  # y * y = 62500 < 65504: right


def test_jax_division_derivative_is_nan_in_float16_where_the_answer_is_finite():
    pytest.importorskip("jax")
    got = _run(JAX_DIVISION)
    assert got["division"] != got["division"]  # NaN: -g x y^-2 with y^-2 = 1e5 = inf, and +inf - inf
    assert abs(got["float32"]) < 1e-6  # the two cotangents cancel: the answer is ~0
