"""The JAX-ecosystem and ONNX Runtime adapters: the native hyperparameters they build, their repro snippets,
their compilation discipline, and the evidence behind their registered deviations. Each test skips cleanly
when its framework is not installed."""
from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from adapters import load, spec
from conformance.core.cases import CASES
from conformance.core.engine import evaluate
from conformance.core.inputs import materialize
from conformance.core.registry import Registry
from conformance.core.tolerance import bounds
from reference import simulate

ROOT = Path(__file__).resolve().parents[2]
JAX = ["flax.linen", "flax.linen.two_pass", "flax.nnx", "equinox.ema", "equinox.batch", "haiku"]
ONNX = ["onnxruntime", "onnxruntime.opset14", "onnxruntime.opset9"]
WORKHORSE = "f32-4x3x2x3-ax1-T3E-a0.1-eps1e-05-rstats-s0"  # alpha 0.1, eps 1e-5
DEFAULTS = "f32-4x3x2x3-ax1-T3E-defaults-sc0.03-s0"
_READY: dict = {}


def ready(name: str):
    """The set-up adapter (once per test session), or a skip when its framework is missing."""
    for module in spec(name).requires:
        pytest.importorskip(module)
    if name not in _READY:
        adapter = load(name)
        adapter.setup()
        _READY[name] = adapter
    return _READY[name]


def problem(case_id: str):
    return materialize(CASES[case_id])


# -- native hyperparameters: momentum in the native form, eps, and the framework's own defaults

@pytest.mark.parametrize("name", ["flax.linen", "flax.linen.two_pass", "flax.nnx"])
def test_flax_builds_momentum_one_minus_alpha(name):
    a = ready(name)
    cfg = a.native_config(problem(WORKHORSE))
    assert cfg["momentum"] == 1 - 0.1 and cfg["epsilon"] == 1e-5 and cfg["axis"] == 1
    if name.startswith("flax.linen"):
        import flax.linen as nn

        bn = nn.BatchNorm(**{k: v for k, v in cfg.items() if k not in ("dtype", "param_dtype")})
        assert bn.momentum == 0.9 and bn.epsilon == 1e-5 and bn.use_fast_variance is (name == "flax.linen")
        assert nn.BatchNorm().momentum == a.convention.default_momentum == 0.99
        assert nn.BatchNorm().epsilon == a.convention.default_eps
        # the declared variance algorithm is the module's: use_fast_variance defaults to True (fast, clamped)
        assert nn.BatchNorm().use_fast_variance is True
        assert a.convention.variance == ("fast_clamped" if bn.use_fast_variance else "two_pass")
    else:
        from flax import nnx

        bn = nnx.BatchNorm(**{k: v for k, v in cfg.items() if k not in ("dtype", "param_dtype")}, rngs=nnx.Rngs(0))
        assert (bn.momentum, bn.epsilon, bn.axis) == (0.9, 1e-5, 1)
        default = nnx.BatchNorm(3, rngs=nnx.Rngs(0))
        assert (default.momentum, default.epsilon) == (a.convention.default_momentum, a.convention.default_eps)
        assert default.use_fast_variance is bn.use_fast_variance is True and a.convention.variance == "fast_clamped"
    d = a.native_config(problem(DEFAULTS))
    assert "momentum" not in d and "epsilon" not in d  # the framework's own defaults


@pytest.mark.parametrize("name", ["equinox.ema", "equinox.batch"])
def test_equinox_builds_momentum_one_minus_alpha(name):
    a = ready(name)
    import equinox as eqx

    cfg = a.native_config(problem(WORKHORSE))
    assert cfg["momentum"] == 0.9 and cfg["eps"] == 1e-5 and cfg["mode"] == name.split(".")[1]
    bn = eqx.nn.BatchNorm(**{k: v for k, v in cfg.items() if k != "dtype"})
    assert (bn.momentum, bn.eps, bn.mode) == (0.9, 1e-5, cfg["mode"])
    d = a.native_config(problem(DEFAULTS))
    assert "momentum" not in d and "eps" not in d
    default = eqx.nn.BatchNorm(**{k: v for k, v in d.items() if k != "dtype"})
    assert (default.momentum, default.eps) == (a.convention.default_momentum, a.convention.default_eps)


def test_haiku_builds_decay_rate_one_minus_alpha_and_has_no_default():
    a = ready("haiku")
    import haiku as hk

    cfg = a.native_config(problem(WORKHORSE))
    assert cfg["decay_rate"] == 0.9 and cfg["eps"] == 1e-5 and cfg["data_format"] == "channels_first"
    assert a.native_config(problem("f32-4x2x3x3-ax-1-T2E-a0.1-eps1e-05-rstats-s0"))["data_format"] == "channels_last"
    seen = {}

    def f():
        bn = hk.BatchNorm(**cfg)
        seen.update(decay=bn.mean_ema.decay, eps=bn.eps, zero_debias=bn.mean_ema.zero_debias)
    hk.transform(f).init(None)
    assert seen == {"decay": 0.9, "eps": 1e-5, "zero_debias": True}
    assert "decay_rate" in a.unsupported(problem(DEFAULTS))  # a required argument: no default to compare


@pytest.mark.parametrize("name", ONNX)
def test_onnx_node_carries_momentum_one_minus_alpha(name):
    a = ready(name)
    import onnx

    node = a.model(problem(WORKHORSE), train=True).graph.node[0]
    attrs = {at.name: onnx.helper.get_attribute_value(at) for at in node.attribute}
    assert attrs["momentum"] == pytest.approx(0.9, rel=1e-7) and attrs["epsilon"] == pytest.approx(1e-5, rel=1e-7)
    assert attrs.get("training_mode") == (1 if a.opset >= 14 else None)
    assert len(node.output) == (3 if a.opset >= 14 else 5)
    assert a.native_config(problem(DEFAULTS)) == {}
    schema = onnx.defs.get_schema("BatchNormalization", a.opset)
    assert schema.attributes["momentum"].default_value.f == pytest.approx(a.convention.default_momentum, rel=1e-7)
    assert schema.attributes["epsilon"].default_value.f == pytest.approx(a.convention.default_eps, rel=1e-7)


# -- repro snippets compute exactly what the adapter observed

SNIPPET_CASES = [
    "f32-4x3x2x3-ax1-T2-a0.1-eps1e-05-rstats-s0",  # training last: first and second order
    "f64-8x4-ax1-TE-a0.1-eps1e-05-rstats-s0",
    "f32-4x3x2x3-ax1-ETE-a0.1-eps1e-05-rstats-s0",
    "f32-4x2x3x3-ax-1-T2E-a0.1-eps1e-05-rstats-s0",
    "f32-4x3x2x3-ax1-TE-a0.1-eps1e-05-noaffine-s0",
    "f32-4x3x2x3-ax1-TE-a0.1-eps1e-05-notrack-s0",
    "f16-4x3x2x3-ax1-T2E-a0.1-eps1e-05-rstats-s0",
    "bf16-4x3x2x3-ax1-T2E-a0.1-eps1e-05-rstats-s0",
    DEFAULTS,
]


@pytest.mark.parametrize("case_id", SNIPPET_CASES)
@pytest.mark.parametrize("name", JAX + ONNX)
def test_snippet_computes_what_the_adapter_observed(name, case_id):
    a = ready(name)
    p = problem(case_id)
    if a.unsupported(p):
        pytest.skip(a.unsupported(p))
    observed = a.run(p)
    ns = {"p": p, "np": np}
    exec(compile(a.snippet(p), f"<snippet {name}>", "exec"), ns)
    assert ns["observed"], "the snippet observed nothing"
    for q, v in ns["observed"].items():
        assert np.array_equal(v, observed.values[q], equal_nan=True), q


# -- each execution path's snippet reproduces that path (adapters/jax_repro.py), bit for bit

TRAIN_LAST = "f32-4x3x2x3-ax1-T2-a0.1-eps1e-05-rstats-s0"  # first and second order; a no-jit case (few_cases)
UNEQUAL_SHARDS = "f64-8x4-ax1-T2-a0.1-eps1e-05-rstats-sh6+2-s0"  # sync, padded and masked (flax), training last


@pytest.mark.parametrize("path", ["no-jit", "vmap", "sync"])
@pytest.mark.parametrize("name", JAX)
def test_path_snippet_computes_what_the_adapter_observed_on_that_path(name, path):
    a = ready(name)
    ran = 0
    for case_id in (TRAIN_LAST, UNEQUAL_SHARDS) if path == "sync" else (TRAIN_LAST,):
        p = problem(case_id)
        if a.unsupported(p) or a.path_unsupported(p, path):
            continue
        observed = a.run_path(p, path)
        ns = {"p": p, "np": np}
        exec(compile(a.path_snippet(p, path), f"<snippet {name}@{path}>", "exec"), ns)  # noqa: S102
        assert set(ns["observed"]) == set(observed.values), case_id
        for q, v in ns["observed"].items():
            assert np.array_equal(v, observed.values[q], equal_nan=True), f"{case_id}: {q}"
        ran += 1
    if not ran:
        pytest.skip(f"{name} runs none of the cases on {path}")


@pytest.mark.parametrize("name, case_id, quantity", [
    ("equinox.batch", "f32-4x3x2x3-ax1-T3-a0.1-eps1e-05-rstats-s0", "running_var"),
    ("onnxruntime.opset9", "f32-4x3-ax1-T2E-a0.1-eps1e-05-rstats-s0", "batch_var"),
    ("onnxruntime", "f64-8x4-ax1-TE-a0.1-eps1e-05-rstats-s0", "y"),
])
def test_registered_deviation_prints_a_repro_that_reproduces_it(name, case_id, quantity):
    a = ready(name)
    rec = {r["quantity"]: r for r in evaluate(a, CASES[case_id], Registry.load())}[quantity]
    assert rec["verdict"] == "xfail" and rec["repro"], rec["reason"]
    out = subprocess.run([sys.executable, "-c", rec["repro"]], capture_output=True, text=True, cwd=ROOT,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    printed = float(re.search(r"max abs error ([0-9.eE+-]+)", out.stdout).group(1))
    assert printed == pytest.approx(rec["metrics"]["max_abs"], rel=1e-12)


EQUAL_SHARDS = "f64-8x4-ax1-T2-a0.1-eps1e-05-rstats-sh4+4-s0"  # sync, training last, float64 statistics


@pytest.mark.parametrize("name", ["flax.linen", "haiku"])
def test_sync_gradients_are_what_a_data_parallel_step_gets(name):
    """The sync path reports jax.vjp of the whole sharded step (the global loss <y, dy>); a pmap-style training
    step instead differentiates each device's loss inside shard_map and sums the parameter gradients over the
    devices (lax.psum). Both must give the same dx (the module's pmean transposes into cross-device sums) and,
    after the sum, the same dgamma and dbeta."""
    a = ready(name)  # first: a skip where the framework is missing (tox's unit env)
    import jax
    from jax.sharding import Mesh, PartitionSpec as P

    from adapters import jax_common as jc

    p = problem(EQUAL_SHARDS)
    obs = a.run_path(p, "sync")
    key, *_, apply = a._apply(p, "sync")  # the module with its device axis, as the sync path builds it
    shape = tuple(p.channels if i == p.axis else 1 for i in range(len(p.shape))) if name == "haiku" else None
    params = jc.initial_params(jax, p, p.dtype, shape)
    # the state the gradients are taken at: after the first training step (run again: exact, deterministic)
    state = a.jitted.get((key, jc.SYNC, jc.shards_of(p)), "step", jc.synchronized(jax, apply, jc.shards_of(p)),
                         True)(params, _initial_state(a, p), jax.numpy.asarray(p.xs[0]))[1]

    def device_step(params, x, dy):
        loss = lambda params, x: jax.numpy.sum(apply(params, state, x, True)[0] * dy)  # noqa: E731
        dparams, dx = jax.grad(loss, argnums=(0, 1))(params, x)
        return dx, jax.lax.psum(dparams, jc.DEVICE_AXIS)
    mesh = Mesh(np.array(jax.devices("cpu")[:jc.DEVICES]), (jc.DEVICE_AXIS,))
    step = jax.jit(jax.shard_map(device_step, mesh=mesh, in_specs=(P(), P(jc.DEVICE_AXIS), P(jc.DEVICE_AXIS)),
                                 out_specs=(P(jc.DEVICE_AXIS), P()), check_vma=False))
    dx, dparams = step(params, jax.numpy.asarray(p.xs[-1]), jax.numpy.asarray(p.dy))
    np.testing.assert_allclose(np.asarray(dx), obs.values["dx"], rtol=1e-12, atol=1e-14)
    for q in ("gamma", "beta"):
        np.testing.assert_allclose(np.asarray(dparams[q]).reshape(-1), obs.values["d" + q], rtol=1e-12, atol=1e-14)


def _initial_state(a, p):
    """The initial state the adapter's run() starts `p` from (random statistics, as the case says)."""
    import jax

    from adapters import jax_common as jc

    if a.name == "haiku":
        shape = tuple(p.channels if i == p.axis else 1 for i in range(len(p.shape)))
        return {name: {"counter": jc.to_jax(jax, 0, "int32"), "hidden": jc.to_jax(jax, np.zeros(shape), p.dtype),
                       "average": jc.to_jax(jax, init.reshape(shape), p.dtype)}
                for name, init in zip(("batch_norm/~/mean_ema", "batch_norm/~/var_ema"), (p.running_mean, p.running_var))}
    return {"mean": jc.to_jax(jax, p.running_mean, "float64"), "var": jc.to_jax(jax, p.running_var, "float64")}


def test_sync_repro_pasted_into_a_fresh_python_reproduces_the_record():
    """A sync check's repro sets XLA_FLAGS for its 2 logical devices at its top, so it runs in a Python that has
    no flags (the record: flax's registered unweighted pmean over unequal shards)."""
    a = ready("flax.linen")
    rec = {r["quantity"]: r for r in evaluate(a, CASES[UNEQUAL_SHARDS], Registry.load(), path="sync")}["dx"]
    assert rec["verdict"] == "xfail" and rec["repro"], rec["reason"]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    out = subprocess.run([sys.executable, "-c", rec["repro"]], capture_output=True, text=True, cwd=ROOT,
                         timeout=300, env=env)
    assert out.returncode == 0, out.stderr
    printed = float(re.search(r"max abs error ([0-9.eE+-]+)", out.stdout).group(1))
    assert printed == pytest.approx(rec["metrics"]["max_abs"], rel=1e-12)


# -- compilation: everything runs jitted; a repeated case compiles nothing

@pytest.mark.parametrize("name", JAX)
def test_a_new_shape_compiles_only_the_jitted_functions_and_a_rerun_nothing(name):
    a = ready(name)
    import jax

    names: list[str] = []

    class Grab(logging.Handler):
        def emit(self, record):
            m = re.match(r"Compiling (?:jit\()?([\w<>]+)", record.getMessage())
            if m:
                names.append(m.group(1))
    logger, handler = logging.getLogger("jax"), Grab()
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    jax.config.update("jax_log_compiles", True)
    try:
        p = problem("f32-4x3x5-ax1-TE-a0.1-eps1e-05-s0")
        a.run(p)
        # nothing eager: every compilation is one of the adapter's jitted functions (equinox also jits the
        # module's construction once per configuration); a warm persistent cache may log none of them
        assert set(names) <= {"step", "grads", "construct"}, names
        names.clear()
        a.run(p)
        assert names == []
    finally:
        jax.config.update("jax_log_compiles", False)
        logger.removeHandler(handler)
        logger.setLevel(level)


def test_compilation_cache_directory_follows_the_environment(monkeypatch, tmp_path):
    from adapters.base import compiled_code_dir

    monkeypatch.setenv("BNCONFORM_CACHE_DIR", str(tmp_path))
    assert compiled_code_dir("jax") == tmp_path / "jax"
    monkeypatch.setenv("BNCONFORM_CACHE_DIR", "")  # empty counts as unset, as the workers read it
    assert compiled_code_dir("inductor") == ROOT / "reports" / ".cache" / "inductor"
    monkeypatch.delenv("BNCONFORM_CACHE_DIR")
    assert compiled_code_dir("inductor") == ROOT / "reports" / ".cache" / "inductor"


# -- evidence behind the registered deviations (conformance/registry/{jax,onnx}.toml)

def registered(entry_id: str, adapter):
    entry = next(e for e in Registry.load().entries if e.id == entry_id)
    version = adapter.versions().get(adapter.framework, "")
    if not entry.applies_to(adapter.name, version):
        pytest.skip(f"{entry_id} is not registered for {adapter.name} {version}")


def within_bound(adapter, p, convention, quantity):
    trace = simulate(p, convention, second_order=False)
    bound = bounds(p, trace, convention, adapter.precision(p))[quantity].values
    return np.all(np.abs(adapter.run(p).values[quantity] - trace[quantity]) <= bound)


def test_equinox_batch_debiases_a_hidden_variance_that_starts_at_one():
    a = ready("equinox.batch")
    registered("equinox-batch-debiased-hidden-var-starts-at-one", a)
    p = problem("f32-4x3x5-ax1-TE-a0.1-eps1e-05-s0")  # initial statistics (0, 1): equinox's own init
    obs = a.run(p).values["running_var"]
    zero_debiased = simulate(p, a.convention, second_order=False)["running_var"]
    # one training step at momentum 0.9: hidden = 0.9 * 1 + 0.1 * v, divided by 1 - 0.9 = 0.1 -> v + 9
    np.testing.assert_allclose(obs[0] - zero_debiased[0], 9.0, rtol=1e-5)
    assert within_bound(a, p, a.convention.with_(debias_hidden_init="initial_stats"), "running_var")
    assert not within_bound(a, p, a.convention, "running_var")


def test_onnx_float64_runs_with_float32_eps_and_momentum():
    a = ready("onnxruntime")
    registered("onnx-float64-hyperparameters-are-float32", a)
    p = problem("f64-4x3x2x3-ax1-T3E-a0.1-eps1e-05-rstats-s0")
    f32 = p.with_(eps=float(np.float32(p.eps)), momentum=1 - float(np.float32(1 - p.momentum)))
    for q in ("y", "running_mean", "running_var"):
        assert not within_bound(a, p, a.convention, q)
        assert within_bound(a, f32, a.convention, q)


def test_ort_opset9_saved_var_is_the_inverse_standard_deviation():
    a = ready("onnxruntime.opset9")
    registered("ort-opset9-saved-var-is-inverse-std", a)
    p = problem("f64-4x3x2x3-ax1-T3E-a0.1-eps1e-05-rstats-s0")
    var = simulate(p, a.convention, second_order=False)["batch_var"]
    np.testing.assert_allclose(a.run(p).values["batch_var"], 1 / np.sqrt(var + float(np.float32(p.eps))),
                               rtol=1e-14)


def test_flax_nnx_keeps_float32_running_statistics_in_a_float64_model():
    """Declared precision, not a deviation: nnx.BatchNorm creates its BatchStat in float32 even in a float64
    model. The error model rounds the case's float64 initial statistics into that storage (d_R_0 = u_s |R_0|)."""
    a = ready("flax.nnx")
    p = problem("f64-4x3x2x3-ax1-T2-a0.1-eps1e-05-rstats-s0")
    obs = a.run(p)
    assert obs.dtypes["running_var"] == "float32" and obs.dtypes["y"] == "float64"
    assert a.precision(p).stats == "float32"
    assert within_bound(a, p, a.convention, "running_var")


@pytest.mark.parametrize("case_id, worse", [("f16-2x1-ax1-T-a0.1-eps1e-05-s0", 5.0),
                                             ("f16-8x4-ax1-T-a0.1-eps1e-05-sc0.01-s0", 4e-4)])
@pytest.mark.parametrize("name", ["flax.linen", "flax.nnx"])
def test_flax_float16_dx_is_the_float16_sum_of_two_converted_uses_of_x(name, case_id, worse):
    """The evidence behind flax-float16-input-cotangent-summed-in-float16: flax's float16 dx is, bit for bit,
    jax.vjp of the same float32 steps with x converted to float32 twice (once for the statistics, once where
    the normalization promotes it), and converting it once gives the oracle's answer to float16 rounding. On
    the n = 2 corpus case dx is 8x the answer; with std 0.01 the error is 5e-4 of max |dx|, 2.7x its bound."""
    a = ready(name)  # first: skips where flax (or JAX) is missing, as in tox's framework-free unit env
    import jax
    import jax.numpy as jnp

    p = problem(case_id)
    x, dy = jnp.asarray(p.xs[0], jnp.float16), jnp.asarray(p.dy, jnp.float16)
    g, b, eps = jnp.asarray(p.gamma, jnp.float16), jnp.asarray(p.beta, jnp.float16), p.eps

    def normalized(x_for_stats, x_for_y):
        m = x_for_stats.mean(0)
        v = ((x_for_stats - m) ** 2).mean(0)
        return ((x_for_y - m) * (jax.lax.rsqrt(v + eps) * g) + b).astype(jnp.float16)

    twice = jax.vjp(lambda x: normalized(x.astype(jnp.float32), x), x)[1](dy)[0]
    once = jax.vjp(lambda x: (lambda x32: normalized(x32, x32))(x.astype(jnp.float32)), x)[1](dy)[0]
    observed = a.run(p).values["dx"]
    expected = simulate(p, a.convention)["dx"]
    np.testing.assert_array_equal(observed, np.asarray(twice, np.float64))
    assert np.max(np.abs(observed - expected)) > worse * np.max(np.abs(expected))
    assert np.max(np.abs(np.asarray(once, np.float64) - expected)) < 1e-3 * np.max(np.abs(expected))


def _equinox_under_shard_map(mode: str, check_vma: bool):
    """One training step of equinox BatchNorm(mode) under jax.shard_map over the sync path's devices, the way
    the sync path would run it (axis_name = the vmapped batch and the device axis)."""
    import equinox as eqx
    import jax
    from jax.sharding import Mesh, PartitionSpec as P

    from adapters import jax_common as jc

    bn, state = eqx.nn.make_with_state(eqx.nn.BatchNorm)(3, axis_name=("batch", jc.DEVICE_AXIS), mode=mode)
    mesh = Mesh(np.array(jax.devices("cpu")[:jc.DEVICES]), (jc.DEVICE_AXIS,))

    def step(state, x):
        return jax.vmap(bn, axis_name="batch", in_axes=(0, None), out_axes=(0, None))(x, state)
    f = jax.shard_map(step, mesh=mesh, in_specs=(P(), P(jc.DEVICE_AXIS)), out_specs=(P(jc.DEVICE_AXIS), P()),
                      check_vma=check_vma)
    return jax.jit(f)(state, jax.numpy.ones((4, 3)))


def test_equinox_ema_cannot_run_under_shard_map_so_its_sync_path_shards_the_batch():
    """Why equinox.ema's sync path is jax.jit over a sharded batch (adapters/equinox_bn.py): under shard_map
    State.set refuses the first-step flag's fresh constant (its eval_shape lacks the manual mesh's sharding the
    old value has). If this starts passing, equinox (or JAX) changed: run ema under shard_map like mode="batch"."""
    ready("equinox.ema")
    for check_vma in (False, True):
        with pytest.raises(ValueError, match="Old and new values have different structures"):
            _equinox_under_shard_map("ema", check_vma)
    adapter = ready("equinox.ema")
    assert adapter.sync_by_sharding and not ready("equinox.batch").sync_by_sharding


def test_equinox_batch_under_shard_map_needs_check_vma_off():
    """Why jax_common runs shard_map with check_vma=False: with JAX's default (True) lax.pmean over a vmapped axis
    and the device axis together, as equinox's axis_name=("batch", "devices") asks, is refused."""
    ready("equinox.batch")
    _equinox_under_shard_map("batch", check_vma=False)
    with pytest.raises(ValueError, match="psum can only accept axis_name"):
        _equinox_under_shard_map("batch", check_vma=True)
