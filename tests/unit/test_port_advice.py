"""`bnconform port`: one name resolver, advice in the target's layout, claims the oracle confirms against every
option of the target, registered deviations with their size, sizes for the user's problem, and bad input as one
line with exit status 2. Oracle only: no framework is imported here."""
from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest

from adapters import SPECS
from conformance.core.catalogue import resolve, select, siblings
from conformance.core.catalogue import load as load_adapter
from conformance.cli import main
from conformance.explain.port import port, residuals_between
from reference import simulate

CORE = [s.name for s in SPECS if s.core]
SMALL = (8, 3, 2, 2)  # n = 32: every claim is checked on a small problem


# ---- one resolver
@pytest.mark.parametrize("alias, first, members", [
    ("pytorch", "torch.nn.BatchNorm", {"torch.nn.functional.batch_norm"}),
    ("tensorflow", "keras.tensorflow", {"tf.nn.batch_normalization", "tf_keras.fused"}),
    ("keras", "keras.tensorflow", {"keras.jax", "keras.torch"}),
    ("tf_keras", "tf_keras.fused", {"tf_keras.nonfused"}),
    ("flax", "flax.linen", {"flax.linen.two_pass", "flax.nnx"}),
    ("jax", "flax.linen", {"equinox.batch", "haiku"}),
    ("onnx", "onnxruntime", {"onnxruntime.opset9"}),
    ("equinox", "equinox.ema", {"equinox.batch"}),
    ("nnx", "flax.nnx", set()),
    ("haiku", "haiku", set()),
    ("keras.*", "keras.tensorflow", {"keras.torch"}),
])
def test_one_resolver_for_every_command(alias, first, members):
    names = [s.name for s in select(alias)]
    assert names[0] == first and members <= set(names)
    assert resolve(alias).name == first


def test_unknown_names_get_the_same_message_everywhere(capsys):
    messages = []
    for argv in (["run", "--frameworks", "caffe", "--out", "/nonexistent/x"], ["port", "--from", "caffe", "--to", "torch"],
                 ["conventions", "--frameworks", "caffe"]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1
        messages.append(err[0][err[0].index("unknown framework"):])
    assert len(set(messages)) == 1, messages
    assert "aliases:" in messages[0] and "pytorch" in messages[0] and "flax" in messages[0]


def test_port_needs_one_framework(capsys):
    for name in ("all", "torch,keras", ""):
        assert main(["port", "--from", name, "--to", "keras"]) == 2
        assert "name one framework or adapter" in capsys.readouterr().err


def test_run_accepts_what_port_accepts():
    for name in ("flax", "equinox", "tensorflow", "pytorch", "tf_keras", "jax", "keras.*"):
        assert select(name) and resolve(name)


# ---- advice
def test_keras_and_flax_targets_get_channels_last_advice_and_say_it_was_assumed():
    for target in ("keras", "flax", "tf_keras", "nnx"):
        r = port("torch", target, snippet=False)
        assert r.target_native["axis"] == -1, r.target_native
        assert "channels_last (assumed" in r.layout_note and "--layout" in r.layout_note
    r = port("torch", "keras", layout="channels_first", snippet=False)
    assert r.target_native["axis"] == 1 and "as given" in r.layout_note
    r = port("keras", "torch", snippet=False)
    assert "channels_first (assumed" in r.layout_note


def test_flax_variance_difference_is_removed_by_use_fast_variance_false():
    r = port("torch", "flax", snippet=False)
    (variance,) = [x for x in r.residuals if x.knob == "variance"]
    assert variance.removed_by == ("flax.linen.two_pass",)
    assert "use_fast_variance=False" in r.text()


def _claims_hold(source, target, shape=SMALL):
    """Independently of port's own search: every 'no option removes it' claim is confirmed by the oracle for
    every option of the target, and every 'removed by' option does remove it."""
    sc = load_adapter(resolve(source).name).convention
    momentum = sc.canonical_to_native(0.1) if sc.default_momentum is None else None
    eps = 1e-5 if sc.default_eps is None else None
    r = port(source, target, momentum=momentum, eps=eps, batch_shape=shape, steps=2, snippet=False,
             layout="channels_first")
    base = {}
    bad = []
    for res in r.residuals:
        compute = r.problem.dtype if res.knob == "variance" else None
        if compute not in base:
            base[compute] = simulate(r.problem, sc, compute_dtype=compute, second_order=False)
        for option in (s.name for s in siblings(r.target)):
            value = getattr(load_adapter(option).convention, res.knob)
            t = simulate(r.problem, sc.with_(**{res.knob: value}), compute_dtype=compute, second_order=False)
            same = all(np.array_equal(t[q], base[compute][q]) for q in ("y", "running_mean", "running_var"))
            if same != (option in res.removed_by):
                bad.append(f"{source}->{target} {res.knob}: {option} {'removes' if same else 'does not remove'} it")
    return bad


def test_every_claim_about_options_is_confirmed_by_the_oracle():
    bad = []
    for source in CORE:
        for target in ("flax", "equinox", "tf_keras", "keras", "onnx", "haiku", "torch"):
            if resolve(target).name != source:
                bad += _claims_hold(source, target)
    assert not bad, bad


def test_claim_check_catches_a_refuted_claim(monkeypatch):
    """Planted: the search forgets the target's options (the old port): flax's variance claim is refuted."""
    import conformance.explain.port as port_module

    monkeypatch.setattr(port_module, "siblings", lambda name: [s for s in SPECS if s.name == name])
    assert any("flax.linen.two_pass removes" in b for b in _claims_hold("torch.nn.BatchNorm", "flax.linen"))


def test_equinox_target_names_the_registered_mode_batch_deviation_with_its_size():
    r = port("torch", "equinox", snippet=False)
    ids = {d.id: d for d in r.deviations}
    d = ids["equinox-batch-debiased-hidden-var-starts-at-one"]
    assert d.adapter == "equinox.batch" and d.effect["running_var"] > 1  # ~7.5x relative after 3 steps
    text = r.text()
    assert "equinox-batch-debiased-hidden-var-starts-at-one" in text and "running_var 7." in text


def test_sizes_are_for_the_users_problem():
    small = port("torch", "keras", batch_shape=(2, 8, 2, 2), steps=10, snippet=False)
    demo = port("torch", "keras", snippet=False)
    (rs,), (rd,) = small.residuals, demo.residuals
    assert "n = 8 elements" in rs.sentence and "n = 512" in rd.sentence
    assert rs.effect["running_var"] > 20 * rd.effect["running_var"]
    assert "your problem: batch 2x8x2x2" in small.text() and "the demo problem" in demo.text()
    big = port("torch", "keras", batch_shape=(256, 512, 16, 16), steps=2, snippet=False)
    assert "sized on" in big.problem_note and big.residuals[0].effect


def test_residual_sizes_match_the_oracle_on_the_bessel_factor():
    r = port("torch", "keras", batch_shape=(4, 2, 1, 1), steps=1, snippet=False, layout="channels_first")
    sc, dc = load_adapter(r.source).convention, load_adapter(r.target).convention
    (res,) = residuals_between(r.problem, sc, dc, r.source, r.target)
    # one step at alpha 0.1 from R0: the two running variances differ by alpha * v_b / (n - 1)
    p = r.problem
    v = np.var(p.xs[0], axis=(0, 2, 3))
    R_b = 0.9 * p.running_var + 0.1 * v
    R_u = 0.9 * p.running_var + 0.1 * v * 4 / 3
    expected = np.max(np.abs(R_b - R_u)) / np.max(np.abs(R_u))
    assert math.isclose(res.effect["running_var"], expected, rel_tol=1e-9)


# ---- bad input: one line, exit 2
BAD = [  # the CLI's numbers are checked by conformance.core.validation (one place, one wording), port() again
    (["port", "--from", "torch", "--to", "caffe"], "unknown framework or adapter 'caffe'"),
    (["port", "--from", "torch", "--to", "keras", "--momentum", "nan"], "must be a finite number"),
    (["port", "--from", "torch", "--to", "keras", "--momentum", "inf"], "must be a finite number"),
    (["port", "--from", "torch", "--to", "keras", "--momentum", "1.5"], "in [0, 1]"),
    (["port", "--from", "torch", "--to", "keras", "--momentum", "-0.1"], "in [0, 1]"),
    (["port", "--from", "torch", "--to", "keras", "--eps", "0"], "--eps: must be > 0, not 0"),
    (["port", "--from", "torch", "--to", "keras", "--eps=-1e-5"], "--eps: must be"),
    (["port", "--from", "torch", "--to", "keras", "--eps", "nan"], "--eps: must be a finite number"),
    (["port", "--from", "torch", "--to", "keras", "--eps", "inf"], "--eps: must be a finite number"),
    (["port", "--from", "torch", "--to", "keras", "--batch-shape", "a,b"], "--batch-shape must be positive integers"),
    (["port", "--from", "torch", "--to", "keras", "--batch-shape", "1,8"], "at least 2 elements per channel"),
    (["port", "--from", "torch", "--to", "keras", "--batch-shape", "0,8,2,2"], "positive integers"),
    (["port", "--from", "torch", "--to", "keras", "--steps", "0"], "--steps: must be >= 1, not 0"),
    (["port", "--from", "torch", "--to", "keras", "--dtype", "int8"], "unknown dtype 'int8'"),
    (["port", "--from", "torch", "--to", "keras", "--layout", "NHWC"], "invalid choice: 'NHWC'"),
    (["port", "--from", "torch", "--to", "keras", "--out", "x.npz"], "--out and --map need --state"),
]


@pytest.mark.parametrize("argv, expected", BAD, ids=[" ".join(a[3:]) for a, _ in BAD])
def test_bad_port_input_is_one_line_and_exit_2(argv, expected, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0]
    assert expected in err[0], err[0]


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("make, expected", [
    (lambda d: d / "missing.npz", "no such file"),
    (lambda d: _npz(d / "dense.npz", **{"fc.weight": np.ones((2, 3)), "fc.bias": np.ones(2)}), "no BatchNorm state"),
    (lambda d: _npz(d / "shapes.npz", **{"bn.weight": np.ones(3), "bn.bias": np.ones(3), "bn.running_mean": np.ones(3),
                                         "bn.running_var": np.ones(4)}), "mismatched shapes"),
    (lambda d: _npz(d / "nan.npz", **{"bn.running_mean": np.ones(3), "bn.running_var": np.full(3, np.nan)}),
     "NaN or infinite"),
    (lambda d: (d / "junk.pt").write_bytes(b"not a pickle") and d / "junk.pt",
     "not a readable torch file" if importlib.util.find_spec("torch") else "reading it needs torch"),
    (lambda d: (d / "state.txt").write_text("x") and d / "state.txt", "unknown state file type"),
])
def test_bad_state_files_are_one_line_and_exit_2(make, expected, tmp_path, capsys):
    path = make(tmp_path)
    assert main(["port", "--from", "torch", "--to", "keras", "--state", str(path), "--out",
                 str(tmp_path / "out.npz")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0], err
    assert not (tmp_path / "out.npz").exists()


def test_output_container_the_target_cannot_read_is_refused(tmp_path, capsys):
    src = _npz(tmp_path / "s.npz", **{"bn.running_mean": np.zeros(3), "bn.running_var": np.ones(3)})
    assert main(["port", "--from", "torch", "--to", "keras", "--state", str(src), "--out", str(tmp_path / "o.pt")]) == 2
    assert "does not read this container" in capsys.readouterr().err
