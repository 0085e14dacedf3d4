"""benchmarks/suite_speed.py. --analyze reads runs made elsewhere, checked against the results schemas as
`bnconform report` reads them: a run directory, or a results directory for its latest run. --cases times
exactly the cases a file lists (the filing's workload: benchmarks/issue20_filing_cases.txt). Bad input ends
with one message, no traceback."""
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


def _speed(*args, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "suite_speed.py"), *map(str, args)],
                          check=False, capture_output=True, text=True, cwd=ROOT, env=env(), timeout=timeout)


def _analyze(*dirs) -> subprocess.CompletedProcess:
    return _speed("--analyze", *dirs, timeout=120)


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


FILING = ROOT / "benchmarks" / "issue20_filing_cases.txt"


def test_more_than_a_cold_and_a_warm_run_is_refused(results):
    proc = _analyze(results, results, results)
    assert proc.returncode == 2
    assert "--analyze takes one or two run directories (cold, then warm), not 3" in proc.stderr
    assert proc.stdout == ""


def test_the_filing_workload_is_the_38_cases_issue_20_was_filed_on_and_each_is_still_a_case(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))  # benchmarks/ is a folder of the checkout, not an installed package
    from benchmarks.suite_speed import case_ids
    from conformance.core.cases import case_by_id

    ids = case_ids(str(FILING))
    assert len(ids) == len(set(ids)) == 38
    assert [case_by_id(i).id for i in ids] == ids  # a renamed or dropped case fails here, not in a benchmark


def test_a_cases_file_runs_exactly_its_cases_cold_and_warm(tmp_path):
    listed = ["f32-4x3x2x3-ax1-T2-a0.1-eps1e-05-rstats-s0", "f64-8x4-ax1-TE-a0.1-eps1e-05-rstats-s0"]
    cases = tmp_path / "cases.txt"
    cases.write_text(f"# two of the filing's cases\n\n{listed[0]}  # a training step twice\n{listed[1]}\n")
    out = tmp_path / "speed"
    proc = _speed("--frameworks", "fake.oracle", "--paths", "eager", "--cases", cases, "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert f"the 2 cases of {cases}" in proc.stdout
    for label in ("cold", "warm"):
        lines = (run_dir(out / label) / "records.jsonl").read_text().splitlines()
        records = [json.loads(line) for line in lines]
        assert sorted({r["case"] for r in records}) == sorted(listed)


@pytest.mark.parametrize("content,words", [
    (None, "cannot read it"),
    ("# only a comment\n\n", "lists no case id"),
    (b"\xff\xfe not text", "cannot read it"),
], ids=["missing", "no-ids", "not-utf8"])
def test_a_bad_cases_file_gets_one_message_before_any_run(tmp_path, content, words):
    cases = tmp_path / "cases.txt"
    if isinstance(content, str):
        cases.write_text(content)
    elif content is not None:
        cases.write_bytes(content)
    out = tmp_path / "speed"
    proc = _speed("--frameworks", "fake.oracle", "--cases", cases, "--out", out, timeout=60)
    assert proc.returncode == 1 and proc.stderr.startswith("suite_speed: --cases ") and words in proc.stderr
    assert "Traceback" not in proc.stderr and not out.exists()


def test_an_unknown_case_id_stops_the_benchmark_with_bnconform_runs_message(tmp_path):
    cases = tmp_path / "cases.txt"
    cases.write_text("f32-no-such-case\n")
    proc = _speed("--frameworks", "fake.oracle", "--cases", cases, "--out", tmp_path / "speed", timeout=60)
    assert proc.returncode == 1 and "f32-no-such-case" in proc.stderr and "Traceback" not in proc.stderr


def test_k_and_cases_together_are_refused():
    proc = _speed("-k", "f32", "--cases", FILING, timeout=60)
    assert proc.returncode == 2 and "not allowed with" in proc.stderr
