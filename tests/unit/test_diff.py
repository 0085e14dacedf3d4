"""`bnconform diff` categories on synthetic result pairs, the gate, and the refusals."""
from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from conformance.diff import DiffRefused, diff, gate, parse_fail_on


@dataclass
class RS:
    records: list
    metas: list = field(default_factory=lambda: [{"input_checksum": "abc", "versions": {"torch": "1"}}])


def rec(quantity, verdict, ratio=None, adapter="a", case="c", version="1", evidence=None, schema=1):
    return {"schema": schema, "check_id": f"{adapter}::{case}::{quantity}", "adapter": adapter, "case": case,
            "quantity": quantity, "verdict": verdict, "version": version,
            "metrics": None if ratio is None else {"ratio": ratio}, "evidence": evidence}


OLD = RS([rec("y", "pass", 0.1), rec("dx", "fail", 50.0), rec("running_var", "pass", 0.001),
          rec("running_mean", "pass", 0.2), rec("dgamma", "characterized", 0.5), rec("gone", "pass", 0.1),
          rec("batch_mean", "skip"), rec("dbeta", "xfail", 3.0)])
NEW = RS([rec("y", "fail", 12.0, version="2"), rec("dx", "pass", 0.3, version="2"),
          rec("running_var", "pass", 0.9, version="2"), rec("running_mean", "pass", 0.25, version="2"),
          rec("dgamma", "characterized", 40.0, version="2"), rec("added", "pass", 0.1, version="2"),
          rec("batch_mean", "pass", 0.1, version="2"), rec("dbeta", "xpass", 0.5, version="2")],
         [{"input_checksum": "abc", "versions": {"torch": "2"}}])


def test_every_category():
    d = diff(OLD, NEW)
    cats = {c.quantity: c.category for c in d.changes}
    assert cats == {"y": "regression", "dx": "fix", "running_var": "drift", "dgamma": "drift", "gone": "missing",
                    "added": "new", "batch_mean": "other", "dbeta": "fix"}
    assert d.environment == [("torch", "1", "2")]
    reg = d.of("regression")[0]
    assert "passed in 1, fail in 2" in reg.sentence and "12" in reg.sentence
    assert "stale" in next(c for c in d.changes if c.quantity == "dbeta").sentence


def test_drift_floor_hides_noise_in_tiny_ratios():
    o = RS([rec("y", "pass", 1e-9)])
    n = RS([rec("y", "pass", 5e-4)])
    assert diff(o, n).changes == []
    assert [c.category for c in diff(o, n, drift_floor=1e-12).changes] == ["drift"]


def test_convention_change_from_evidence():
    ev_old = {"knob": "running variance", "inferred": "unbiased"}
    ev_new = {"knob": "running variance", "inferred": "biased"}
    d = diff(RS([rec("y", "pass", 0.1, evidence=ev_old)]), RS([rec("y", "pass", 0.1, evidence=ev_new)]))
    (c,) = d.of("convention")
    assert "observed unbiased in 1, biased in 1" in c.sentence


def test_gate_regressions_always_and_others_on_request():
    d = diff(OLD, NEW)
    assert gate(d, parse_fail_on([])) == ["1 regression"]
    assert gate(d, parse_fail_on(["drift:10x", "new"])) == ["1 regression", "2 drifts", "1 new"]
    # running_var moved x900 and dgamma x80: only the first exceeds 100x
    assert gate(d, parse_fail_on(["drift:100x"])) == ["1 regression", "1 drift"]


def test_gate_without_changes_passes():
    assert gate(diff(OLD, OLD), parse_fail_on(["drift:2x", "convention", "new", "missing"])) == []


@pytest.mark.parametrize("spec", ["drift:1x", "drift:ten", "speed", "new:3"])
def test_bad_fail_on(spec):
    with pytest.raises(ValueError, match="--fail-on"):
        parse_fail_on([spec])


def test_refuses_different_inputs_and_schemas():
    with pytest.raises(DiffRefused, match="different inputs"):
        diff(OLD, RS(NEW.records, [{"input_checksum": "xyz"}]))
    with pytest.raises(DiffRefused, match="schema"):
        diff(OLD, RS([rec("y", "pass", 0.1, schema=2)]))


# -- the command line, on real runs of framework-free adapters (tests/unit/fake_catalogue.py)
from .clirun import bnconform, run_dir  # noqa: E402


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """OLD: fake.oracle passes. NEW: fake.wrong_var under the same name would regress; we emulate an upgrade
    by running the conforming adapter, then the damaged one, and renaming its records to the old adapter."""
    import json

    base = tmp_path_factory.mktemp("diffruns")
    old, new = base / "old", base / "new"
    assert bnconform("run", "--frameworks", "fake.oracle", "--tier", "smoke", "--out", old, "--no-report").returncode == 0
    assert bnconform("run", "--frameworks", "fake.wrong_var", "--tier", "smoke", "--out", new,
                     "--no-report").returncode == 1
    d = run_dir(new)
    recs = [json.loads(line) for line in (d / "records.jsonl").read_text().splitlines()]
    with open(d / "records.jsonl", "w") as f:
        for r in recs:
            r["adapter"] = "fake.oracle"
            r["check_id"] = r["check_id"].replace("fake.wrong_var", "fake.oracle")
            f.write(json.dumps(r) + "\n")
    return run_dir(old), d


def test_diff_cli_reports_the_regression_and_fails_the_gate(two_runs, tmp_path):
    old, new = two_runs
    page = tmp_path / "upgrade.html"
    r = bnconform("diff", old, new, "--html", page)
    assert r.returncode == 1, r.stderr
    assert "Regressions" in r.stdout and "gate: FAIL (" in r.stdout and "running_var" in r.stdout
    html = page.read_text()
    assert "Regressions" in html and "<script" not in html and "http" not in html.split("<body>")[1].split("Content")[0]


def test_diff_cli_identical_runs_pass(two_runs):
    old, _ = two_runs
    r = bnconform("diff", old, old, "--fail-on", "drift:2x", "--fail-on", "convention")
    assert r.returncode == 0 and "no differences" in r.stdout and "gate: pass" in r.stdout


def test_diff_cli_refusals_are_one_line_exit_2(two_runs, tmp_path):
    old, _ = two_runs
    other = tmp_path / "default-tier"
    # a different tier means different inputs: refused
    assert bnconform("run", "--frameworks", "fake.oracle", "--tier", "default", "--out", other,
                     "--no-report").returncode == 0
    for args, text in (((old, run_dir(other)), "different inputs"), ((old, tmp_path / "nope"), "no such file"),
                       ((old, old, "--fail-on", "speed"), "--fail-on")):
        r = bnconform("diff", *args)
        assert r.returncode == 2 and text in r.stderr, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_baseline_saved_then_gated(tmp_path):
    out = tmp_path / "out"
    args = ("run", "--frameworks", "fake.oracle", "--tier", "smoke", "--out", out, "--no-report")
    assert bnconform(*args, "--save-baseline", "main").returncode == 0
    saved = (out / "baselines" / "main.json").read_text()
    assert '"ratio"' in saved and "values" not in saved  # metrics only, never arrays
    r = bnconform(*args, "--compare-baseline", "main", "--fail-on", "drift:10x")
    assert r.returncode == 0 and "baseline main: pass" in r.stdout
    wrong = bnconform("run", "--frameworks", "fake.wrong_var", "--tier", "smoke", "--out", out, "--no-report",
                      "--compare-baseline", "main")
    assert wrong.returncode == 1 and "new check" in wrong.stdout  # other adapter: its checks are new ones
    (out / "baselines" / "broken.json").write_text("{")
    r = bnconform(*args, "--compare-baseline", "broken")
    assert r.returncode == 2 and "not a readable baseline" in r.stderr and len(r.stderr.strip().splitlines()) == 1
