"""The default tier's realistic sizes, the regression corpus it replays, block-wise input generation (same
bits as whole-array generation), and what the oracle expects of NaN, Inf and subnormal inputs."""
from __future__ import annotations

import fnmatch

import numpy as np
import pytest

from conformance.core import inputs, regressions
from conformance.core.cases import CASES, Case, cases_for_tier
from conformance.core.engine import evaluate
from conformance.core.registry import Registry

from .fakes import OracleAdapter

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # NaN/Inf inputs warn in NumPy, by design


def test_default_tier_has_realistic_sizes_and_awkward_channel_counts():
    default = cases_for_tier("default")
    big = [c for c in default if c.size >= 1 << 20]
    assert big and all(not (c.quantities & {"d2x", "d2gamma"}) for c in big)  # second order stays small
    assert any(c.channels % 8 for c in default if c.size > 50_000)  # not a multiple of 8
    assert any(c.channels % 8 == 0 and c.channels % 16 for c in default if c.size > 50_000)
    assert any(c.channels % 64 == 0 for c in default if c.size > 50_000)
    assert any(c.memory_format == "channels_last" for c in default if c.size > 50_000)
    assert any(c.axis == -1 for c in default if c.size > 50_000)
    assert any(c.modes[-1] == "train" for c in big) and any("eval" in c.modes for c in default if c.size > 50_000)


def test_corpus_files_are_valid_unique_and_replayed_by_the_default_tier():
    corpus = regressions.load()
    assert corpus, "the bundled corpus is empty"
    ids = [r.case.id for r in corpus]
    assert len(ids) == len(set(ids))
    default = {c.id for c in cases_for_tier("default")}
    for r in corpus:
        assert r.case.id in default and CASES[r.case.id].tier == "default"
        if r.meta["origin"] == "historical":
            assert r.meta["link"].startswith("https://github.com/") and r.meta["versions"], r.path
        else:
            assert r.meta["adapter"] and r.meta["versions"] and r.meta["signature"], r.path


def test_fuzz_findings_in_the_corpus_are_registered():
    """A fuzz finding the default tier replays is a known deviation, or says how it was settled otherwise (a
    declared convention, a fix to our model): it must not fail the suite."""
    registry = Registry.load()
    for r in regressions.load():
        if r.meta["origin"] != "fuzz" or r.meta.get("resolved"):
            continue
        for adapter in (a.strip() for a in r.meta["adapter"].split(",")):
            # the adapter and the case; the corpus file's versions are prose (what the finding was made with)
            assert any(fnmatch.fnmatchcase(adapter, e.adapter) and e.covers_case(r.case.id)
                       for e in registry.entries), (adapter, r.path)


# around 12 size = _BLOCK: smaller sizes make all twelve uniforms of `standard` in one fill
@pytest.mark.parametrize("size", [0, 1, 7, inputs._BLOCK // 12, inputs._BLOCK // 12 + 1, inputs._BLOCK - 1, inputs._BLOCK,
                                  inputs._BLOCK + 3, 100_003])
def test_blocked_generation_is_bit_identical_to_whole_array_generation(size):
    key = inputs._key(11, "probe")
    whole = (inputs._splitmix(np.arange(12 * size, dtype=np.uint64), key) >> np.uint64(11)).astype(np.float64)
    whole *= 2.0**-53
    assert np.array_equal(inputs.uniform(11, "probe", 12 * size), whole)
    u = whole.reshape(12, size)
    acc = u[0].copy()
    for k in range(1, 12):
        acc = acc + u[k]
    assert np.array_equal(inputs.standard(11, "probe", size), acc - 6.0)


@pytest.mark.parametrize("dist", ["nan", "inf", "denormal", "near_constant_channel"])
@pytest.mark.parametrize("modes", [("train",), ("train", "eval"), ("eval",)])
@pytest.mark.parametrize("dtype", ["float64", "float32", "float16"])
def test_oracle_rounded_passes_special_inputs(dist, modes, dtype):
    """The oracle rounded to the case dtype passes every check: the NaN/Inf patterns, the subnormal term of
    the bounds and the per-channel second order are consistent with the oracle itself."""
    case = Case((4, 3, 2, 3), dtype, modes, dist=dist, init_stats="random")
    records = evaluate(OracleAdapter(), case)
    assert {r["verdict"] for r in records} <= {"pass", "characterized"}, [
        (r["quantity"], r["verdict"], r["metrics"]) for r in records if r["verdict"] not in ("pass", "characterized")]


def test_nonfinite_inputs_propagate_by_channel_in_training_and_by_element_in_inference():
    from reference import Convention, simulate

    for modes, spread in ((("train",), "channel"), (("eval",), "element")):
        p = inputs.materialize(Case((4, 3, 2, 3), "float64", modes, dist="inf"))
        t = simulate(p, Convention())
        y = t["y"][-1]
        bad = ~np.isfinite(y)
        if spread == "channel":  # +Inf in channel 0, -Inf in channel 2: both channels entirely NaN, channel 1 finite
            assert bad[:, 0].all() and bad[:, 2].all() and not bad[:, 1].any()
            assert np.isposinf(t["batch_mean"][-1][0]) and np.isneginf(t["batch_mean"][-1][2])
            assert np.isfinite(t["d2x"][:, 1]).all() and np.isfinite(t["d2gamma"][1])
        else:
            assert bad.sum() == 2 and np.isfinite(t["dx"]).all()


def test_a_nan_spreading_across_channels_is_caught():
    class Spreads(OracleAdapter):
        def run(self, p):
            obs = super().run(p)
            if "y" in obs.values and not np.isfinite(obs.values["y"]).all():
                obs.values["y"] = obs.values["y"] * np.nan  # every channel NaN
            return obs

    records = evaluate(Spreads(), Case((4, 3, 2, 3), "float32", ("train",), dist="nan"))
    y = next(r for r in records if r["quantity"] == "y")
    assert y["verdict"] == "fail" and y["metrics"]["problem"] == "nonfinite"


def test_one_value_per_channel_without_running_statistics_is_the_single_element_edge_in_inference():
    """Inference without tracked statistics normalizes with the batch's: n = 1 is then the same edge as in
    training (torch raises there too), judged against the adapter's declaration, not an error."""
    from adapters.base import Observation

    class RaisesOnBatchStatistics(OracleAdapter):
        def run(self, p):
            if p.reduced_count == 1 and ("train" in p.modes or not p.track_running_stats):
                return Observation(raised="Expected more than 1 value per channel when training")
            return super().run(p)

    case = Case((1, 3), "float32", ("eval",), track_running_stats=False)
    assert {r["verdict"] for r in evaluate(RaisesOnBatchStatistics(single="raises"), case)} == {"pass"}
    assert {r["verdict"] for r in evaluate(RaisesOnBatchStatistics(single="computes"), case)} == {"fail"}


def test_a_broken_corpus_file_is_one_line_and_exit_2(tmp_path):
    """The case table reads the corpus when it is first built: a damaged file there (hand-edited, or a fuzz
    finding edited after the fact) is a usage error of the whole tool, not a traceback."""
    import subprocess
    import sys

    (tmp_path / "fuzz").mkdir()
    (tmp_path / "fuzz" / "bad.toml").write_text('id = "f32-8x4-ax1-T-a0.1-eps1e-05-s0"\norigin = "fuzz"\n'
                                                'note = "n"\n[case]\nshape = [8, 5]\ndtype = "float32"\nmodes = "T"\n')
    script = ("import sys; from pathlib import Path; import conformance.core.regressions as r; "
              f"r.CORPUS_DIR = Path({str(tmp_path)!r}); from conformance.cli import main; sys.exit(main(['cases']))")
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert p.returncode == 2, p.stderr
    assert p.stderr.count("\n") == 1 and "Traceback" not in p.stderr and "bad.toml" in p.stderr, p.stderr
