"""BatchNorm state conversion (conformance/explain/state.py, adapters/state_io.py): the running-variance correction is
exact against the oracle, says when it is approximate, and the files round-trip in each framework's names; and
the porting code `bnconform port` prints runs as pasted, without bnconform."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from adapters import state_io
from conformance.core.catalogue import load
from conformance.cli import main
from conformance.explain.port import port
from conformance.explain.state import History, StateError, convert_layer, convert_model, read_model, write_model
from reference import Problem, simulate

ROOT = Path(__file__).resolve().parents[2]
TORCH, KERAS, FLAX = "torch.nn.BatchNorm", "keras.tensorflow", "flax.linen"


def _installed(module: str) -> bool:
    """find_spec of a submodule imports its parent package, and raises where that is missing."""
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def _trained(n_shape=(6, 3, 2, 2), steps=4, alpha=0.1, seed=0):
    """(problem, {adapter: oracle trace}) of `steps` training steps from random R0, torch's and Keras' conventions."""
    rng = np.random.default_rng(seed)
    xs = tuple(rng.standard_normal(n_shape) * [[[[1.0]], [[3.0]], [[0.2]]]] + 0.3 for _ in range(steps))
    C = n_shape[1]
    p = Problem(xs=xs, modes=("train",) * steps, axis=1, gamma=None, beta=None, running_mean=rng.uniform(-1, 1, C),
                running_var=rng.uniform(0.5, 1.5, C), momentum=alpha, eps=1e-5, dy=np.zeros(n_shape),
                v=np.zeros(n_shape), quantities=frozenset({"y", "running_mean", "running_var"}))
    return p, {name: simulate(p, load(name).convention, second_order=False) for name in (TORCH, KERAS)}


@pytest.mark.parametrize("alpha, steps", [(0.1, 1), (0.1, 4), (0.01, 30), (0.5, 3)])
def test_exact_correction_maps_one_frameworks_running_variance_onto_the_others(alpha, steps):
    p, tr = _trained(steps=steps, alpha=alpha)
    n = p.reduced_count
    for src, dst in ((TORCH, KERAS), (KERAS, TORCH)):
        h = History(n=n, steps=steps, initial_var=0.0)  # per-channel R0 below: the vector form
        state = {"mean": tr[src]["running_mean"][-1], "var": tr[src]["running_var"][-1]}
        # the correction with each channel's own R0
        outs = []
        for c in range(p.channels):
            hc = History(n=n, steps=steps, initial_var=float(p.running_var[c]))
            out, notes, exact = convert_layer({k: v[c:c + 1] for k, v in state.items()}, src, dst, alpha, hc,
                                              "training", "float64")
            assert exact and "(exact)" in notes[0]
            outs.append(out["var"][0])
        np.testing.assert_allclose(outs, tr[dst]["running_var"][-1], rtol=1e-13)
        np.testing.assert_array_equal(convert_layer(state, src, dst, alpha, h, "training", "float64")[0]["mean"],
                                      state["mean"])
        # a plain n/(n-1) rescale is not the same thing
        factor = n / (n - 1) if src == KERAS else (n - 1) / n
        assert np.max(np.abs(state["var"] * factor - tr[dst]["running_var"][-1])) > 1e-6


def test_cumulative_average_gives_the_initial_statistic_no_weight():
    p, _ = _trained(steps=3)
    p = p.with_(momentum=None)
    t = simulate(p, load(TORCH).convention, second_order=False)
    k = simulate(p, load(TORCH).convention.with_(running_var="biased"), second_order=False)
    out, _, exact = convert_layer({"mean": t["running_mean"][-1], "var": t["running_var"][-1]}, TORCH, KERAS, None,
                                  History(n=p.reduced_count, steps=3, initial_var=5.0), "training", "float64")
    assert exact
    np.testing.assert_allclose(out["var"], k["running_var"][-1], rtol=1e-13)


def test_approximate_corrections_say_so():
    p, tr = _trained(steps=4)
    state = {"mean": tr[TORCH]["running_mean"][-1], "var": tr[TORCH]["running_var"][-1]}
    _, notes, exact = convert_layer(state, TORCH, KERAS, 0.1, History(n=24, steps=4, n_varied=True), "training")
    assert not exact and "APPROXIMATE: n varied" in notes[0]
    _, notes, exact = convert_layer(state, TORCH, KERAS, 0.1, History(n=24), "training")
    assert not exact and "number of steps is unknown" in notes[0]
    with pytest.raises(StateError, match="needs n"):
        convert_layer(state, TORCH, KERAS, 0.1, History(), "training")


def test_inference_purpose_copies_the_statistics_and_same_estimators_copy_for_training():
    state = {"gamma": np.ones(3, np.float32), "beta": np.zeros(3, np.float32), "mean": np.arange(3.0, dtype=np.float32),
             "var": np.full(3, 2.0, np.float32), "count": np.asarray(7)}
    out, notes, _ = convert_layer(state, TORCH, KERAS, 0.1, History(), "inference")
    np.testing.assert_array_equal(out["var"], state["var"])
    assert out["var"].dtype == np.float32 and "count" not in out and any("dropped" in n for n in notes)
    out, notes, _ = convert_layer(state, KERAS, FLAX, 0.01, History(), "training")  # both biased
    np.testing.assert_array_equal(out["var"], state["var"])
    back, notes, _ = convert_layer(out, FLAX, TORCH, 0.01, History(steps=3), "inference")
    assert int(back["count"]) == 3 and any("num_batches_tracked set to 3" in n for n in notes)


def _layers():
    rng = np.random.default_rng(0)
    return {name: {"gamma": rng.uniform(0.5, 1.5, c).astype(np.float32), "beta": rng.normal(size=c).astype(np.float32),
                   "mean": rng.normal(size=c).astype(np.float32), "var": rng.uniform(0.5, 2, c).astype(np.float32),
                   "count": np.asarray(5)} for name, c in (("features.1", 4), ("features.4", 6))}


@pytest.mark.parametrize("target, suffix, needs", [
    (KERAS, ".npz", None), (KERAS, ".weights.h5", "h5py"), (FLAX, ".msgpack", "flax"), (FLAX, ".npz", None),
    (TORCH, ".pt", "torch"), (FLAX, ".orbax", "orbax.checkpoint"),
])
def test_whole_model_round_trips_in_the_targets_names(target, suffix, needs, tmp_path):
    if needs and not _installed(needs):
        pytest.skip(f"{needs} not installed")
    layers = _layers()
    conv = convert_model(layers, TORCH, target, 0.1, History(n=32, steps=5), "inference")
    path = tmp_path / f"out{suffix}"
    write_model(path, conv, target)
    back = read_model(path, target)
    assert list(back) == list(conv.layers)  # the model's order, the target's automatic names
    for name, st in conv.layers.items():
        for role in ("gamma", "beta", "mean", "var"):
            np.testing.assert_array_equal(back[name][role], st[role])
        if "count" in st and suffix == ".pt":  # torch's num_batches_tracked is a 0-d int64 tensor
            assert back[name]["count"].shape == () and int(back[name]["count"]) == 5
    expected = {KERAS: ["batch_normalization", "batch_normalization_1"], FLAX: ["BatchNorm_0", "BatchNorm_1"],
                TORCH: ["features.1", "features.4"]}[target]
    assert list(conv.layers) == expected


def test_mapping_renames_layers_and_unknown_names_are_refused():
    conv = convert_model(_layers(), TORCH, KERAS, 0.1, History(), mapping={"features.4": "bn_last"})
    assert list(conv.layers) == ["batch_normalization", "bn_last"]
    with pytest.raises(StateError, match="does not have: nope"):
        convert_model(_layers(), TORCH, KERAS, 0.1, History(), mapping={"nope": "x"})


def test_cli_converts_a_state_dict_npz_with_per_layer_n(tmp_path, capsys):
    flat = {f"{layer}.{state_io.TORCH.names[r]}": a for layer, st in _layers().items() for r, a in st.items()}
    np.savez(tmp_path / "sd.npz", **flat)
    argv = ["port", "--from", "torch", "--to", "keras", "--state", str(tmp_path / "sd.npz"), "--out",
            str(tmp_path / "o.npz"), "--purpose", "training", "--steps", "5", "--n", "features.1=32", "--n", "8"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "n = 32, T = 5" in out and "n = 8, T = 5" in out and "APPROXIMATE" not in out
    with np.load(tmp_path / "o.npz") as z:
        assert sorted(z.files) == sorted(f"{b}/{k}" for b in ("batch_normalization", "batch_normalization_1")
                                         for k in ("gamma", "beta", "moving_mean", "moving_variance"))


# ---- the porting code runs as pasted
SNIPPETS = [("torch", "keras", ("torch", "keras", "tensorflow")), ("torch", "flax", ("torch", "flax")),
            ("torch", "onnx", ("torch", "onnxruntime"))]  # every layer block once (keras -> torch: the journey)


def test_porting_code_needs_no_bnconform_and_is_dedented():
    for src, dst, _ in SNIPPETS:
        code = port(src, dst).snippet
        assert code.startswith("# Porting code") and "\n " not in code.split("\n", 1)[0]
        assert "conformance" not in code and "import bnconform" not in code and "or not True" not in code
        compile(code, "<snippet>", "exec")
    assert "(no porting code for haiku" in port("torch", "haiku").snippet


def test_porting_code_runs_and_reports_within_the_bound(tmp_path):
    runnable = [(s, d) for s, d, needs in SNIPPETS if all(_installed(m) for m in needs)]
    if not runnable:
        pytest.skip("no pair of frameworks installed")
    results = {}
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # bnconform is NOT importable there
    env.update(OMP_NUM_THREADS="1", TF_CPP_MIN_LOG_LEVEL="2", JAX_PLATFORMS="cpu")

    def run(src, dst):
        path = tmp_path / f"{src}_{dst}.py"
        path.write_text(port(src, dst, batch_shape=(4, 3, 5, 5)).snippet)
        results[(src, dst)] = subprocess.run([sys.executable, str(path)], capture_output=True, text=True,
                                             timeout=600, cwd=tmp_path, env=env)

    threads = [threading.Thread(target=run, args=pair) for pair in runnable]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for pair, r in results.items():
        assert r.returncode == 0, f"{pair}: {r.stderr[-2000:]}"
        assert "(within float rounding)" in r.stdout, f"{pair}: {r.stdout}"


def test_orbax_checkpoints_are_read_and_never_overwritten(tmp_path, capsys):
    if not _installed("orbax.checkpoint"):
        pytest.skip("orbax-checkpoint not installed")
    conv = convert_model(_layers(), TORCH, FLAX, 0.1, History(), "inference")
    write_model(tmp_path / "ckpt.orbax", conv, FLAX)
    argv = ["port", "--from", "flax", "--to", "torch", "--state", str(tmp_path / "ckpt.orbax"), "--out"]
    assert main(argv + [str(tmp_path / "back.pt")]) == 0
    assert "converted 2 BatchNorm layer(s)" in capsys.readouterr().out
    assert main(["port", "--from", "torch", "--to", "flax", "--state", str(tmp_path / "back.pt"), "--out",
                 str(tmp_path / "ckpt.orbax")]) == 2
    assert "exists" in capsys.readouterr().err
