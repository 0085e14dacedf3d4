"""The porter's journey: a small CNN trained in torch, its BatchNorm state converted by bnconform (the CLI and the
Python API) into Keras 3 (tensorflow backend) and flax.linen, and a Keras-trained one back into torch; the
torch model exported to ONNX Runtime. Every framework runs in its own child process (tests/unit/port_journey.py).

What is checked, against bounds from the error model (never a tuned tolerance):
  - inference outputs agree: each framework's output is within B of the float64 network evaluated exactly, so
    two frameworks differ by at most 2B; B propagates the first-order rounding error of every layer in float32
    (dot products gamma_k sum|w||x|, BatchNorm's inference bound from conformance/core/tolerance.py, the pooling
    average), times tolerance.SAFETY;
  - running statistics agree: the torch state converted with --purpose training equals what the target's own
    BatchNorm holds after training on the same BatchNorm inputs (recorded in torch), within the two frameworks'
    running-statistics bounds (tolerance.bounds) and the rounding of the converted float32 value;
  - with naive defaults (Keras' eps and momentum, the statistics copied without the estimator correction) they
    measurably do not: the difference is many times the bound.
The figures are printed (pytest -s) for the closing note.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from conformance.core import tolerance
from conformance.core.catalogue import load
from conformance.cli import main as bnconform
from conformance.explain.state import History, convert_model, read_model
from reference import Problem, simulate

from . import port_journey as pj

ROOT = Path(__file__).resolve().parents[2]
U = 2.0 ** -24
NEEDS = {"torch-train": ("torch", "onnx", "onnxruntime"), "keras": ("keras", "tensorflow", "h5py"),
         "flax": ("flax", "jax"), "torch-from-keras": ("torch",)}
N_PER_CHANNEL = pj.N * pj.H * pj.W  # both BatchNorm layers see N x H x W per channel (same padding)


def _child(step: str, d: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "2",
           "CUDA_VISIBLE_DEVICES": ""}
    out = subprocess.run([sys.executable, "-m", "tests.unit.port_journey", step, str(d)], capture_output=True,
                         text=True, timeout=600, cwd=ROOT, env=env)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("BNCONFORM-JSON ")), None)
    assert out.returncode == 0 and line, f"{step} failed:\n{out.stderr[-3000:]}"
    return json.loads(line.removeprefix("BNCONFORM-JSON "))


def _missing(step):
    return [m for m in NEEDS[step] if importlib.util.find_spec(m) is None]


@pytest.fixture(scope="module")
def journey(tmp_path_factory):
    missing = _missing("torch-train")
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed")
    d = tmp_path_factory.mktemp("journey")
    facts = {"torch-train": _child("torch-train", d)}
    # bnconform's conversions, through the CLI as a user runs them
    assert bnconform(["port", "--from", "torch", "--to", "keras", "--state", str(d / "torch.pt"),
                      "--out", str(d / "bn_inference.weights.h5")]) == 0
    children = [s for s in ("keras", "flax") if not _missing(s)]
    if "flax" in children:
        assert bnconform(["port", "--from", "torch", "--to", "flax", "--state", str(d / "torch.pt"),
                          "--out", str(d / "bn_inference.msgpack")]) == 0
    threads = [threading.Thread(target=lambda s=s: facts.__setitem__(s, _child(s, d))) for s in children]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in children:
        assert s in facts, f"the {s} child failed (see its assertion above)"
    if "keras" in children:
        assert bnconform(["port", "--from", "keras", "--to", "torch", "--state", str(d / "keras.weights.h5"),
                          "--out", str(d / "bn_from_keras.pt"), "--map", "batch_normalization=1",
                          "--map", "batch_normalization_1=4"]) == 0
        facts["torch-from-keras"] = _child("torch-from-keras", d)
    return d, facts


# ---- the error model of the whole network's inference (float32), evaluated in float64
def _gamma(k):
    return k * U / (1 - k * U)


def _conv(x, w, b):
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    patches = np.lib.stride_tricks.sliding_window_view(xp, (3, 3), axis=(2, 3))  # N C H W 3 3
    return np.einsum("nchwij,ocij->nohw", patches, w) + b.reshape(1, -1, 1, 1)


def network(x, weights: dict, bn: dict, eps: float):
    """(exact float64 output, elementwise bound B on a float32 implementation's error) of
    conv -> BN -> relu -> conv -> BN -> global average pool -> linear, channels first."""
    x = x.astype(np.float64)
    e = np.zeros_like(x)

    def conv_step(x, e, w, b):
        k = w.shape[1] * 9 + 1
        y = _conv(x, w, b)
        return y, _conv(e, np.abs(w), 0 * b) + _gamma(k) * (_conv(np.abs(x) + e, np.abs(w), np.abs(b)))

    def bn_step(x, e, st):
        c = lambda v: np.asarray(v, np.float64).reshape(1, -1, 1, 1)  # noqa: E731
        g, b, m = c(st["gamma"]), c(st["beta"]), c(st["mean"])
        r = 1 / np.sqrt(c(st["var"]) + eps)
        y = g * (x - m) * r + b
        return y, np.abs(g) * r * e + 4 * U * (np.abs(g) * r * (np.abs(x) + e + np.abs(m)) + np.abs(b)) + U * (
            np.abs(y) + np.abs(g) * r * e)

    x, e = conv_step(x, e, weights["conv1_w"], weights["conv1_b"])
    x, e = bn_step(x, e, bn["bn1"])
    x = np.maximum(x, 0)
    x, e = conv_step(x, e, weights["conv2_w"], weights["conv2_b"])
    x, e = bn_step(x, e, bn["bn2"])
    P = x.shape[2] * x.shape[3]
    e = e.mean(axis=(2, 3)) + _gamma(P + 1) * (np.abs(x) + e).mean(axis=(2, 3))
    x = x.mean(axis=(2, 3))
    w, b = weights["fc_w"], weights["fc_b"]
    y = x @ w.T + b
    e = e @ np.abs(w).T + _gamma(w.shape[1] + 1) * ((np.abs(x) + e) @ np.abs(w).T + np.abs(b))
    return y, tolerance.SAFETY * e


def _torch_reference(t):
    weights = {"conv1_w": t["w_0.weight"], "conv1_b": t["w_0.bias"], "conv2_w": t["w_3.weight"],
               "conv2_b": t["w_3.bias"], "fc_w": t["w_7.weight"], "fc_b": t["w_7.bias"]}
    bn = {name: {"gamma": t[f"w_{p}.weight"], "beta": t[f"w_{p}.bias"], "mean": t[f"w_{p}.running_mean"],
                 "var": t[f"w_{p}.running_var"]} for name, p in pj.TORCH_BN.items()}
    return network(t["x_eval"], weights, bn, pj.TORCH_EPS)


def _keras_reference(k):
    weights = {"conv1_w": pj.to_oihw(k["conv1_kernel"]), "conv1_b": k["conv1_bias"],
               "conv2_w": pj.to_oihw(k["conv2_kernel"]), "conv2_b": k["conv2_bias"],
               "fc_w": k["dense_kernel"].T, "fc_b": k["dense_bias"]}
    bn = {name: {r: k[f"{name}_{r}"] for r in ("gamma", "beta", "mean", "var")} for name in pj.BN_LAYERS}
    return network(k["x_eval"], weights, bn, pj.KERAS_EPS)


FIGURES: dict[str, str] = {}


def _agree(label, a, b, exact, bound):
    """a and b each within `bound` of the exact output; returns max|a - b| / (2 bound)."""
    for name, v in (("first", a), ("second", b)):
        excess = np.abs(np.asarray(v, np.float64) - exact) / bound
        assert np.max(excess) <= 1, f"{label}: the {name} output is {np.max(excess):.3g}x the error model's bound"
    ratio = float(np.max(np.abs(np.asarray(a, np.float64) - b) / (2 * bound)))
    FIGURES[label] = f"max |diff| {np.max(np.abs(np.asarray(a, np.float64) - b)):.3g}, {ratio:.3g} of the bound"
    return ratio


def test_torch_to_onnxruntime_inference_agrees(journey):
    d, _ = journey
    t = np.load(d / "torch_run.npz")
    exact, bound = _torch_reference(t)
    assert _agree("torch -> ONNX Runtime, eval", t["y"], np.load(d / "ort.npz")["y"], exact, bound) <= 1


@pytest.mark.parametrize("target", ["keras", "flax"])
def test_torch_to_target_inference_agrees_and_naive_defaults_do_not(journey, target):
    d, facts = journey
    if target not in facts:
        pytest.skip(f"{target}: {', '.join(_missing(target))} not installed")
    t, o = np.load(d / "torch_run.npz"), np.load(d / f"{target}_run.npz")
    exact, bound = _torch_reference(t)
    assert _agree(f"torch -> {target}, eval, converted", t["y"], o["y_ported"], exact, bound) <= 1
    naive = float(np.max(np.abs(o["y_naive"] - t["y"]) / (2 * bound)))
    FIGURES[f"torch -> {target}, eval, naive defaults"] = (
        f"max |diff| {np.max(np.abs(o['y_naive'] - t['y'])):.3g}, {naive:.3g} of the bound")
    if target == "keras":  # Keras' eps 1e-3 where torch trained with 1e-5
        assert naive > 10, "Keras' default eps should make the naive port measurably different"
    else:  # flax's default eps is torch's: inference needs no change (its momentum matters for training only)
        assert naive <= 1


def _replay_bound(recorded, alpha, eps, name_src, name_dst):
    """Bounds on the running statistics of the source's and the target's BatchNorm trained on `recorded`
    (T batches, channels first), from the error model; and the exact target statistics (oracle)."""
    xs = tuple(np.asarray(x, np.float64) for x in recorded)
    C = xs[0].shape[1]
    p = Problem(xs=xs, modes=("train",) * len(xs), axis=1, gamma=None, beta=None, running_mean=np.zeros(C),
                running_var=np.ones(C), momentum=alpha, eps=eps, dy=np.zeros_like(xs[0]), v=np.zeros_like(xs[0]),
                dtype="float32", quantities=frozenset({"y", "running_mean", "running_var"}))
    out = {}
    for role, name in (("src", name_src), ("dst", name_dst)):
        a = load(name)
        tr = simulate(p, a.convention, second_order=False)
        b = tolerance.bounds(p, tr, a.convention, a.precision(p))
        out[role] = (tr, b)
    return out


@pytest.mark.parametrize("direction", ["torch->keras", "torch->flax", "keras->torch"])
def test_running_statistics_converted_for_training_match_the_targets_own(journey, direction):
    d, facts = journey
    src, dst = direction.split("->")
    child = dst if dst != "torch" else "torch-from-keras"
    if child not in facts:
        pytest.skip(f"{dst} not run here")
    names = {"torch": "torch.nn.BatchNorm", "keras": "keras.tensorflow", "flax": "flax.linen"}
    if src == "torch":
        run, replayed = np.load(d / "torch_run.npz"), np.load(d / f"{dst}_run.npz")
        state_file, alpha, eps = d / "torch.pt", pj.TORCH_MOMENTUM, pj.TORCH_EPS
        replay = {n: (replayed[f"ported_{n}_mean"], replayed[f"ported_{n}_var"]) for n in pj.BN_LAYERS}
        naive_replay = {n: replayed[f"naive_{n}_var"] for n in pj.BN_LAYERS}
        layer_of = {n: p for n, p in pj.TORCH_BN.items()}
    else:
        run, replayed = np.load(d / "keras_run.npz"), np.load(d / "torch_from_keras.npz")
        state_file, alpha, eps = d / "keras.weights.h5", 1 - pj.KERAS_MOMENTUM, pj.KERAS_EPS
        replay = {n: (replayed[f"replay_{n}_mean"], replayed[f"replay_{n}_var"]) for n in pj.BN_LAYERS}
        naive_replay = {}
        layer_of = {"bn1": "batch_normalization", "bn2": "batch_normalization_1"}
    layers = read_model(state_file, names[src])
    history = History(n=N_PER_CHANNEL, steps=pj.STEPS)
    converted = convert_model(layers, names[src], names[dst], alpha, history, purpose="training")
    assert converted.exact
    rows = []
    for bn, src_layer in layer_of.items():
        got_mean, got_var = converted.layers[converted.names[src_layer]]["mean"], \
            converted.layers[converted.names[src_layer]]["var"]
        want_mean, want_var = replay[bn]
        (tr_s, b_s), (tr_d, b_d) = _replay_bound(run[f"rec_{bn}"] if src == "torch" else
                                                 np.moveaxis(run[f"rec_{bn}"], -1, 2), alpha, eps,
                                                 names[src], names[dst]).values()
        # the oracle: the exact correction maps the source's exact statistics onto the target's exactly
        exact = convert_model({"x": {"mean": tr_s["running_mean"][-1], "var": tr_s["running_var"][-1]}},
                              names[src], names[dst], alpha, history, purpose="training")
        np.testing.assert_allclose(next(iter(exact.layers.values()))["var"], tr_d["running_var"][-1], rtol=1e-13)
        allowed_var = b_s["running_var"].values[-1] * (1 + 1 / (N_PER_CHANNEL - 1)) + b_d["running_var"].values[-1] \
            + U * np.abs(want_var)
        allowed_mean = b_s["running_mean"].values[-1] + b_d["running_mean"].values[-1]
        ratio_var = float(np.max(np.abs(got_var - want_var) / allowed_var))
        ratio_mean = float(np.max(np.abs(got_mean - want_mean) / allowed_mean))
        src_var = np.asarray(layers[src_layer]["var"], np.float64)
        naive_copy = float(np.max(np.abs(src_var - want_var) / allowed_var))
        factor = (N_PER_CHANNEL / (N_PER_CHANNEL - 1)) if src == "keras" else (N_PER_CHANNEL - 1) / N_PER_CHANNEL
        naive_rescale = float(np.max(np.abs(src_var * factor - want_var) / allowed_var))
        rows.append(f"{bn}: running var {ratio_var:.3g} of the bound converted, {naive_copy:.3g} copied, "
                    f"{naive_rescale:.3g} rescaled by n/(n-1); running mean {ratio_mean:.3g}")
        if bn in naive_replay:
            rows.append(f"{bn}: trained in {dst} with its default momentum: running var "
                        f"{float(np.max(np.abs(naive_replay[bn] - want_var) / allowed_var)):.3g} of the bound away")
        assert ratio_var <= 1 and ratio_mean <= 1, rows[-1]
        # outside both frameworks' rounding: copying, or rescaling by n/(n-1) (a planted wrong correction), is
        # measurably not what the target would hold
        assert naive_copy > 1 and naive_rescale > 1, f"naive conversions should measurably differ: {rows[-1]}"
    FIGURES[f"{direction}, running statistics"] = "; ".join(rows)


def test_keras_back_to_torch_inference_agrees(journey):
    d, facts = journey
    if "torch-from-keras" not in facts:
        pytest.skip("keras not run here")
    k, t = np.load(d / "keras_run.npz"), np.load(d / "torch_from_keras.npz")
    exact, bound = _keras_reference(k)
    assert _agree("keras -> torch, eval, converted", k["y"], t["y_ported"], exact, bound) <= 1
    naive = float(np.max(np.abs(t["y_naive"] - k["y"]) / (2 * bound)))
    FIGURES["keras -> torch, eval, naive defaults"] = (
        f"max |diff| {np.max(np.abs(t['y_naive'] - k['y'])):.3g}, {naive:.3g} of the bound")
    assert naive > 10, "torch's default eps should make the naive port measurably different"


def test_zz_print_figures():
    """The agreement figures for the closing note (pytest -s shows them)."""
    for k, v in sorted(FIGURES.items()):
        print(f"{k}: {v}")
