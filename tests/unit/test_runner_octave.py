"""The MATLAB runner, parsed and run end to end by GNU Octave against bnconform's STAND-IN `batchnorm`
(tests/octave/, labelled a stand-in in every file). This tests the runner's reading of the exchange format,
its layout of C-order arrays as formatted dlarrays, both batchnorm syntaxes and its writing of observations;
it says nothing about MATLAB, and the import files the results under "matlab.*[stand-in:octave]".

Skipped, with the reason, where Octave is missing (Debian: apt-get install octave); BNCONFORM_REQUIRE_OCTAVE=1
(set by .ci/run) turns that skip into a failure."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from .clirun import bnconform

STANDINS = Path(__file__).resolve().parents[1] / "octave"
# Rank 2, 3, 4 and 5, channels first and last, float32 and float64, k steps then inference, no running
# statistics (3-input syntax), the seeds' scenarios: every layout and syntax the runner handles.
CASES = ["f32-8x4-ax1-TE-a0.1-eps1e-05-rstats-same-s0", "f32-8x4-ax1-T-a0.1-eps1e-05-rstats-same-s0",
         "f32-4x3-ax1-T30E-a0.5-eps1e-05-rstats-same-q-running_mean+running_var+y-s0",
         "f32-4x3x5-ax1-TE-a0.1-eps1e-05-s0", "f64-4x3x2x3-ax1-T3E-a0.1-eps1e-05-rstats-s0",
         "f32-4x2x3x3-ax-1-T2E-a0.1-eps1e-05-rstats-s0", "f32-2x3x2x2x2-ax1-TE-a0.1-eps1e-05-s0",
         "f32-4x3x2x3-ax1-TE-a0.1-eps1e-05-notrack-s0", "f64-8x4-ax1-T3E-defaults-s0",
         "f32-4x3x2x3-ax1-ETE-a0.1-eps1e-05-rstats-s0"]

# rank 3, rank 4 channels last, rank 5: a transposed read shows in each
LAYOUTS = [CASES[3], CASES[5], CASES[6]]


def _octave(folder: Path, runner: Path) -> subprocess.CompletedProcess:
    code = f"addpath('{STANDINS}'); addpath('{runner.parent}'); bnconform_run('{folder}')"
    return subprocess.run(["octave", "--no-gui", "--no-window-system", "--quiet", "--eval", code],
                          capture_output=True, text=True, timeout=300)


def _export(tmp: Path, cases=tuple(CASES)) -> Path:
    folder = tmp / "export"
    r = bnconform("export", "--runner", "matlab", "--tier", "default", "--out", folder,
                  *[a for c in cases for a in ("--case", c)])
    assert r.returncode == 0, r.stderr
    return folder


def _import(folder: Path, out: Path) -> tuple[list[dict], dict, subprocess.CompletedProcess]:
    r = bnconform("import", folder, "--out", out)
    (rd,) = list((out / "runs").iterdir())
    records = [json.loads(x) for x in (rd / "records.jsonl").read_text().splitlines()]
    return records, json.loads((rd / "meta.json").read_text()), r


@pytest.fixture(scope="module")
def octave():
    if shutil.which("octave") is None:
        why = "GNU Octave is not installed (Debian: apt-get install octave); .ci/run installs it"
        if os.environ.get("BNCONFORM_REQUIRE_OCTAVE") == "1":
            pytest.fail(f"BNCONFORM_REQUIRE_OCTAVE=1 but {why}")
        pytest.skip(why)


def test_matlab_runner_runs_end_to_end_with_the_stand_in(octave, tmp_path):
    folder = _export(tmp_path)
    run = _octave(folder, folder / "bnconform_run.m")
    # (Octave 7.3 prints "error: ignoring const execution_exception& while preparing to exit" at every exit.)
    assert run.returncode == 0 and "bnconform_run: 10 cases x 2 APIs written" in run.stderr, run.stderr
    records, meta, r = _import(folder, tmp_path / "out")
    assert r.returncode == 0, r.stdout + r.stderr
    names = {rec["adapter"] for rec in records}
    assert names == {"matlab.batchnorm[stand-in:octave]", "matlab.dlnetwork[stand-in:octave]"}
    assert all("stand-in" in rec["framework"] and "STAND-IN" in rec["api"] for rec in records)
    fn = Counter((rec["quantity"], rec["verdict"]) for rec in records
                 if rec["adapter"].startswith("matlab.batchnorm"))
    # y and the running statistics through both syntaxes, in every layout; nothing fails.
    assert (fn[("y", "pass")], fn[("running_mean", "pass")], fn[("running_var", "pass")]) == (10, 9, 9), fn
    assert not any(v in ("fail", "error") for _, v in fn)
    grads = {rec["reason"] for rec in records
             if rec["quantity"] == "dx" and rec["adapter"].startswith("matlab.b")}
    assert grads == {"dlfeval/dlgradient are not available in this runtime (no Deep Learning Toolbox)"}
    net = [rec for rec in records if rec["adapter"].startswith("matlab.dlnetwork")]
    assert any("dlnetwork is not available" in rec["reason"] for rec in net)
    assert {rec["verdict"] for rec in net} == {"skip"}
    rows = {a["name"]: a for a in meta["adapters"]}
    for real in ("matlab.batchnorm", "matlab.dlnetwork"):  # the real MATLAB rows stay "not run here"
        assert rows[real]["available"] is False
        assert rows[real]["install"].startswith("not run here — run `matlab -batch`")


def test_a_layout_bug_in_the_runner_is_caught(octave, tmp_path):
    """Planted: the runner reads C-order arrays as if they were column-major (the classic porting bug)."""
    folder = _export(tmp_path, LAYOUTS)
    source = (folder / "bnconform_run.m").read_text()
    right = "A = permute(reshape(v, fliplr(shape)), numel(shape):-1:1);"
    planted = source.replace(right, "A = reshape(v, shape);")
    assert planted != source
    buggy = tmp_path / "buggy" / "bnconform_run.m"
    buggy.parent.mkdir()
    buggy.write_text(planted)
    run = _octave(folder, buggy)
    assert "written" in run.stderr, run.stderr
    records, _, r = _import(folder, tmp_path / "out")
    assert r.returncode == 1
    failed = {rec["case"] for rec in records if rec["verdict"] == "fail"}
    assert failed == set(LAYOUTS), failed
