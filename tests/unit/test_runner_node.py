"""TensorFlow.js, run for real: `bnconform export --runner node`, the generated runner under Node with the
@tensorflow/tfjs of the committed lockfile (`npm ci --prefix conformance/runners/node`), `bnconform import`.

Skipped, with the reason, where Node or the installed packages are missing; BNCONFORM_REQUIRE_NODE=1 (set by
.ci/run and tox -e tfjs) turns that skip into a failure. With BNCONFORM_IMPORT_RESULTS set (tox -e tfjs) the
results are written there, for `tox -e report`."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from conformance.execution.exchange import RUNNER_DIR

from .clirun import bnconform

MODULES = RUNNER_DIR / "node" / "node_modules"
ADAPTER = "tfjs.layers.batchNormalization"


def _why_not() -> str | None:
    if shutil.which("node") is None:
        return "node is not installed (Debian: apt-get install nodejs npm); .ci/run installs it"
    if not (MODULES / "@tensorflow" / "tfjs").is_dir():
        return (f"@tensorflow/tfjs is not installed in {MODULES} "
                "(npm ci --prefix conformance/runners/node; .ci/run and tox -e tfjs run it)")
    return None


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    why = _why_not()
    if why:
        if os.environ.get("BNCONFORM_REQUIRE_NODE") == "1":
            pytest.fail(f"BNCONFORM_REQUIRE_NODE=1 but {why}")
        pytest.skip(why)
    folder = tmp_path_factory.mktemp("tfjs") / "export"
    r = bnconform("export", "--runner", "node", "--tier", "default", "--out", folder)
    assert r.returncode == 0, r.stderr
    run = subprocess.run(["node", str(folder / "run.js"), str(folder)], capture_output=True, text=True,
                         timeout=600, env={**os.environ, "NODE_PATH": str(MODULES)})
    assert run.returncode == 0, run.stderr
    out = Path(os.environ.get("BNCONFORM_IMPORT_RESULTS") or tmp_path_factory.mktemp("tfjs-results"))
    r = bnconform("import", folder, "--out", out)
    assert r.returncode == 0, r.stdout + r.stderr  # every failure is a registered deviation
    rd = sorted((out / "runs").iterdir())[-1]  # run ids start with the UTC time: the latest import
    records = [json.loads(x) for x in (rd / "records.jsonl").read_text().splitlines()]
    return {"records": records, "meta": json.loads((rd / "meta.json").read_text()), "stdout": r.stdout,
            "html": (out / "index.html").read_text()}


def _by(records, case_glob):
    import fnmatch

    return [r for r in records if fnmatch.fnmatchcase(r["case"], case_glob)]


def test_tfjs_verdicts_come_from_the_real_runtime(imported):
    records = imported["records"]
    assert {r["adapter"] for r in records} == {ADAPTER}
    assert {r["framework"] for r in records} == {"@tensorflow/tfjs"}
    assert {r["version"] for r in records} == {"4.22.0"}  # the lockfile's version
    counts = Counter(r["verdict"] for r in records)
    assert counts["fail"] == counts["error"] == 0 and counts["pass"] >= 60, counts


def test_channels_last_and_rank_2_conform_including_second_order(imported):
    # The seeds' scenarios: given statistics in training vs inference, second order in both modes.
    for case in ("f32-8x4-ax1-TE-a0.1-eps1e-05-rstats-same-s0", "f32-8x4-ax1-T-a0.1-eps1e-05-rstats-same-s0",
                 "f32-4x2x3x3-ax-1-T2E-a0.1-eps1e-05-rstats-s0"):
        recs = {r["quantity"]: r["verdict"] for r in _by(imported["records"], case)}
        wanted = ("y", "running_mean", "running_var", "dx", "dgamma", "dbeta", "d2x")
        assert {recs[q] for q in wanted} == {"pass"}, (case, recs)
    conv = {r["quantity"]: r["verdict"] for r in _by(imported["records"], "f32-4x3-ax1-T30E-*")}
    assert conv == {"y": "pass", "running_mean": "pass", "running_var": "pass"}  # biased: predict == forward


def test_registered_deviations_are_what_fails(imported):
    by_entry = Counter(r["registry"]["id"] for r in imported["records"]
                       if r["verdict"] in ("xfail", "skip") and r.get("registry"))
    assert by_entry["tfjs-cpu-batchnorm-channels-first"] >= 10
    assert by_entry["tfjs-gradient-channels-first-throws"] >= 30
    assert by_entry["tfjs-no-affine-training-throws"] >= 1
    for r in imported["records"]:
        if r["verdict"] == "xfail" and r["quantity"] == "y":
            assert r["case"].startswith("f32-") and "-ax1-" in r["case"] and r["case"].count("x") >= 3


def test_report_has_tfjs_and_an_honest_matlab_row(imported):
    rows = {a["name"]: a for a in imported["meta"]["adapters"]}
    assert rows[ADAPTER]["available"] and rows[ADAPTER]["version"] == "4.22.0"
    assert rows[ADAPTER]["convention"]["momentum_form"] == "weight_on_old"
    assert rows["matlab.batchnorm"]["available"] is False
    html = imported["html"]
    assert ADAPTER in html and "not run here — run `matlab -batch` on the exported folder" in html


def test_a_planted_momentum_bug_in_the_runner_is_caught(imported, tmp_path):
    """Planted: the runner passes the weight on the new statistic as tfjs' momentum (the porting bug the
    declared convention exists to catch). The import fails the running statistics and names the cause."""
    folder = tmp_path / "export"
    cases = ["f32-8x4-ax1-T2E-a0.1-eps1e-05-rstats-s0", "f32-8x4-ax1-TE-a0.1-eps0.001-sc0.03-s0"]
    r = bnconform("export", "--runner", "node", "--out", folder, *[a for c in cases for a in ("--case", c)])
    assert r.returncode == 0, r.stderr
    source = (folder / "run.js").read_text()
    planted = source.replace("cfg.momentum = c.momentum_old;", "cfg.momentum = c.momentum;")
    assert planted != source
    (folder / "run.js").write_text(planted)
    run = subprocess.run(["node", str(folder / "run.js"), str(folder)], capture_output=True, text=True,
                         timeout=300, env={**os.environ, "NODE_PATH": str(MODULES)})
    assert run.returncode == 0, run.stderr
    r = bnconform("import", folder, "--out", tmp_path / "out", "--no-report")
    assert r.returncode == 1, r.stdout + r.stderr
    (rd,) = (tmp_path / "out" / "runs").iterdir()
    records = [json.loads(x) for x in (rd / "records.jsonl").read_text().splitlines()]
    failed = [x for x in records if x["verdict"] == "fail"]
    assert {x["quantity"] for x in failed} >= {"running_mean", "running_var"}
    assert all("momentum" in x["diagnosis"]["summary"] for x in failed if x["quantity"] == "running_mean")
