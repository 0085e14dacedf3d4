"""benchmarks/suite_speed.py --analyze reads runs made elsewhere, checked against the results schemas as `bnconform
report` reads them: a run directory, or a results directory for its latest run. Anything else ends with one
message and exit status 1, no traceback."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .clirun import ROOT, bnconform, env, run_dir


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("speed")
    r = bnconform("run", "--frameworks", "fake.oracle", "--tier", "smoke", "--out", out, "--no-report")
    assert r.returncode == 0, r.stderr
    return out


def _analyze(*dirs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "suite_speed.py"), "--analyze", *map(str, dirs)],
                          capture_output=True, text=True, cwd=ROOT, env=env(), timeout=120)


def test_a_results_directory_stands_for_its_latest_run(results):
    by_results, by_run = _analyze(results), _analyze(run_dir(results))
    assert by_results.returncode == 0 == by_run.returncode, by_results.stderr
    assert "| fake.oracle |" in by_results.stdout and "checks" in by_results.stdout
    # the load average now is not the analysed runs' (it made two analyses differ when it moved in between)
    assert "load average" not in by_results.stdout
    assert by_results.stdout == by_run.stdout


@pytest.mark.parametrize("damage,words", [
    (lambda d: (d / "meta.json").write_text("{not json"), "not valid JSON"),
    (lambda d: (d / "meta.json").write_text("[1, 2]"), "schema version"),
    (lambda d: (d / "records.jsonl").write_text('{"schema": 2}\n'), "not a bnconform check record"),
    (lambda d: (d / "records.jsonl").write_text(json.dumps({**json.loads(
        (d / "records.jsonl").read_text().splitlines()[0]), "harness_seconds": "slow"}) + "\n"), "harness_seconds"),
], ids=["meta-malformed", "meta-not-an-object", "record-incomplete", "record-wrong-type"])
def test_unreadable_runs_get_one_message(results, tmp_path, damage, words):
    copy = tmp_path / "copy"
    shutil.copytree(run_dir(results), copy)
    damage(copy)
    proc = _analyze(copy)
    assert proc.returncode == 1, proc.stdout
    assert proc.stderr.startswith("suite_speed: ") and words in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_directory_that_holds_no_run_gets_one_message(tmp_path):
    proc = _analyze(tmp_path)
    assert proc.returncode == 1 and "no results here" in proc.stderr and "Traceback" not in proc.stderr
