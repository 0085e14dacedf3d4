"""`bnconform diff` categories on synthetic result pairs, the gate, and the refusals."""
from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from conformance.outputs.diff import DiffRefused, diff, gate, parse_fail_on, summarize


@dataclass
class RS:
    records: list
    metas: list = field(default_factory=lambda: [{"input_checksum": "abc", "versions": {"torch": "1"}}])


def rec(quantity, verdict, ratio=None, adapter="a", case="c", version="1", evidence=None, schema=1, **extra):
    return {"schema": schema, "check_id": f"{adapter}::{case}::{quantity}", "adapter": adapter, "case": case,
            "quantity": quantity, "verdict": verdict, "version": version,
            "metrics": None if ratio is None else {"ratio": ratio}, "evidence": evidence, **extra}


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
    # its failing new checks are regressions (not in OLD, failing in NEW): the gate says so and why, and the
    # page it names exists
    assert "baseline main: FAIL (" in wrong.stdout and "did not in OLD" in wrong.stdout
    page = out / "baseline-main.html"
    assert f"diff page: {page}" in wrong.stdout.replace("\n", "") and "Regressions" in page.read_text()
    (out / "baselines" / "broken.json").write_text("{")
    r = bnconform(*args, "--compare-baseline", "broken")
    assert r.returncode == 2 and "broken.json:1: not valid JSON" in r.stderr and len(r.stderr.strip().splitlines()) == 1


# -- sentences a user understands: registry entries, notes, grouped summaries (what tox -e upgrade-* shows)
ENTRY = {"id": "x-float64-in-float32", "reason": "float64 is computed in float32", "link": "https://example.org/1"}
OLD_ENTRY = {"id": "x-biased-var", "reason": "biased running variance before 2", "link": ""}


def test_pass_to_registered_deviation_is_its_own_category_and_names_the_entry():
    o = RS([rec("y", "pass", 0.05, case=f"f64-{i}") for i in range(3)] + [rec("dx", "pass", 0.0, case="f64-0")])
    n = RS([rec("y", "xfail", 2e6 * (i + 1), case=f"f64-{i}", version="2", registry=ENTRY) for i in range(3)]
           + [rec("dx", "xfail", 8e6, case="f64-0", version="2", registry=ENTRY)],
           [{"input_checksum": "abc", "versions": {"torch": "2"}}])
    d = diff(o, n)
    assert {c.category for c in d.changes} == {"registered"}
    assert "fails as the registered deviation x-float64-in-float32" in d.changes[0].sentence
    assert gate(d, parse_fail_on([])) == [] and gate(d, parse_fail_on(["registered"])) == ["4 newly registered deviations"]
    (g,) = summarize(d)
    assert g.sentence == ("4 checks passed in 1 and fail in 2 as the registered deviation x-float64-in-float32: "
                          "dx, y in 3 cases (f64-0, f64-1, ...); error/bound 0 to 0.05 -> 2e+06 to 8e+06")
    assert g.detail == ENTRY["reason"] and g.link == ENTRY["link"]


def test_fix_of_a_registered_deviation_says_what_it_was_even_without_a_ratio():
    dtype = {"ratio": "inf", "problem": "dtype", "detail": "dtype float64 != expected float32"}
    o = RS([rec("running_var", "xfail", registry=OLD_ENTRY, metrics=dtype),
            rec("y", "xfail", registry=OLD_ENTRY, reason="declared to raise with one element per channel, but computed")])
    n = RS([rec("running_var", "pass", 0.4, version="2"),
            rec("y", "pass", version="2", reason="raised as declared: needs more than one value")])
    d = diff(o, n)
    by_q = {c.quantity: c for c in d.changes}
    assert by_q["running_var"].sentence == ("the registered deviation x-biased-var of 1 (xfail (dtype float64 != "
                                            "expected float32)) no longer occurs in 2: pass (error/bound 0.4)")
    assert "but computed" in by_q["y"].sentence and "raised as declared" in by_q["y"].sentence
    (g,) = summarize(d)
    assert g.sentence.startswith("2 checks that were the registered deviation x-biased-var in 1 pass in 2")
    assert "dtype float64 != expected float32" in g.sentence and "-> error/bound 0.4; raised as declared" in g.sentence


def test_skip_to_run_says_why_it_was_skipped_and_groups_by_verdict():
    why = 'equinox 0.11.11 has no mode="batch"'
    o = RS([rec(q, "skip", reason=why) for q in ("y", "dx", "running_var")])
    n = RS([rec("y", "pass", 0.1, version="2"), rec("dx", "pass", 0.2, version="2"),
            rec("running_var", "xfail", 700.0, version="2", registry=ENTRY)])
    d = diff(o, n)
    assert all(c.category == "other" for c in d.changes)
    assert f"skipped ({why}) in 1 -> pass (error/bound 0.1) in 2" in {c.sentence for c in d.changes}
    sentences = [g.sentence for g in summarize(d)]
    assert f"2 checks skipped in 1 ({why}) -> pass in 2: dx, y in c; error/bound 0.1 to 0.2 now" in sentences
    assert any("xfail (registered deviation x-float64-in-float32)" in s for s in sentences)


def test_drift_wording_and_grouping():
    o = RS([rec("dx", "pass", 0.0, case="c1"), rec("dx", "pass", 0.0, case="c2"), rec("y", "characterized", 9.7)])
    n = RS([rec("dx", "pass", 0.025, case="c1", version="2"), rec("dx", "pass", 0.047, case="c2", version="2"),
            rec("y", "characterized", 1e-3, version="2")])
    d = diff(o, n)
    assert next(c for c in d.changes if c.quantity == "y").sentence == (
        "error/bound shrank 9.7 -> 0.001 (9.7e+03x smaller; still characterized)")
    grew = next(g for g in summarize(d) if g.adapter == "a" and "grew" in g.sentence)
    assert grew.sentence == ("2 checks: error/bound grew 25x to 47x from 1 to 2, verdicts unchanged (pass): dx in "
                             "2 cases (c1, c2); error/bound 0 -> 0.025 to 0.047")


def test_other_installed_packages_that_differ_come_from_pip_freeze():
    meta = {"input_checksum": "abc", "versions": {"flax": "0.10.2"},
            "pip_freeze": ["flax==0.10.2", "jax==0.4.38", "numpy==2.2.1", "bnconform==0.1.0"]}
    meta2 = {"input_checksum": "abc", "versions": {"flax": "0.12.8"},
             "pip_freeze": ["flax==0.12.8", "jax==0.10.2", "numpy==2.2.1", "bnconform==0.2.0", "optax==0.2.8"]}
    d = diff(RS([rec("y", "pass", 0.1)], [meta]), RS([rec("y", "pass", 0.1)], [meta2]))
    assert d.environment == [("flax", "0.10.2", "0.12.8")]
    assert d.packages == [("jax", "0.4.38", "0.10.2"), ("optax", "—", "0.2.8")]


def test_html_page_leads_with_the_grouped_changes_and_versions():
    from conformance.outputs.diffview import render_html

    o = RS([rec("y", "pass", 0.05)])
    n = RS([rec("y", "xfail", 2e6, version="2", registry=ENTRY)], [{"input_checksum": "abc", "versions": {"torch": "2"}}])
    d = diff(o, n)
    html = render_html(d, "old", "new", gate(d, parse_fail_on([])), "t")
    assert 'id="changed"' in html and "Newly registered deviations" in html and "torch 1 &rarr; 2" in html
    assert html.index('id="changed"') < html.index('id="registered"')
    assert ENTRY["reason"] in html and 'href="https://example.org/1"' in html



def test_a_change_on_one_execution_path_names_the_path():
    """Two runs that differ only in how one path computes: the diff says which adapter@path regressed, and the
    eager checks of the same case and quantity are unchanged."""
    def both(path_verdict, path_ratio):
        eager = rec("y", "pass", 0.1, adapter="torch.nn.BatchNorm", schema=2, path="eager")
        folded = rec("y", path_verdict, path_ratio, adapter="torch.nn.BatchNorm", schema=2, path="fold-eval")
        folded["check_id"] = "torch.nn.BatchNorm@fold-eval::c::y"
        return RS([eager, folded])

    d = diff(both("pass", 0.2), both("fail", 70.0))
    (reg,) = d.of("regression")
    assert reg.adapter == "torch.nn.BatchNorm@fold-eval" and reg.check_id.startswith("torch.nn.BatchNorm@fold-eval")
    (group,) = [g for g in summarize(d) if g.category == "regression"]
    assert group.adapter == "torch.nn.BatchNorm@fold-eval"
    assert gate(d, parse_fail_on([]))


# -- the gate cannot pass failures (issue 18): whatever a check was in OLD, failing in NEW gates
def test_xfail_to_fail_with_an_emptied_registry_gates_and_says_why():
    o = RS([rec("y", "xfail", 900.0, registry=ENTRY), rec("dx", "xfail", 80.0, registry=ENTRY),
            rec("dgamma", "pass", 0.1)])
    n = RS([rec("y", "fail", 900.0), rec("dx", "fail", 80.0), rec("dgamma", "pass", 0.1)],
           [{"input_checksum": "abc", "versions": {"torch": "1"}, "flags": {"registry": "/tmp/empty"}}])
    d = diff(o, n)
    assert [c.category for c in d.changes] == ["regression", "regression"]
    assert gate(d, parse_fail_on([])) == ["2 regressions"]
    assert all("registered deviation x-float64-in-float32" in c.sentence and "no registry entry matched it in NEW"
               in c.sentence for c in d.changes)
    assert "the registry differs: OLD the bundled one, NEW /tmp/empty" in d.context
    assert any("matched 2 checks in OLD and none in NEW: x-float64-in-float32" in line for line in d.context)
    (g,) = summarize(d)
    assert g.sentence.startswith("2 checks were xfail (registered deviation x-float64-in-float32) in 1 and fail in 1")


@pytest.mark.parametrize("old", ["skip", "characterized", "xfail", None])
def test_any_new_failure_gates_whatever_it_was(old):
    same = rec("z", "pass", 0.1)
    o = RS([same] + ([] if old is None else [rec("y", old, 0.5 if old == "characterized" else None)]))
    n = RS([same, rec("y", "error")])
    d = diff(o, n)
    assert [c.category for c in d.changes] == ["regression"], d.changes
    assert gate(d, parse_fail_on([])) == ["1 regression"]


def test_failing_in_both_runs_is_not_a_regression():
    d = diff(RS([rec("y", "fail", 3.0)]), RS([rec("y", "error")]))
    assert gate(d, parse_fail_on([])) == [] and [c.category for c in d.changes] == ["other"]


def test_selection_differences_are_stated():
    o = RS([rec("y", "pass", 0.1, adapter="a")], [{"input_checksum": "abc", "selection": "torch", "tier": "smoke"}])
    n = RS([rec("y", "pass", 0.1, adapter="a"), rec("y", "pass", 0.1, adapter="b")],
           [{"input_checksum": "abc", "selection": "all", "tier": "smoke"}])
    ctx = diff(o, n).context
    assert "the selection differs: OLD 'torch', NEW 'all'" in ctx and "adapters only in NEW: b" in ctx


def test_a_ratio_that_stops_or_starts_being_infinite_is_a_drift_in_words():
    """A NaN/Inf pattern mismatch has ratio inf; when the same check's ratio becomes finite (or the other way),
    the factor between them is 0 (or inf): the sentence and the grouped summary say so instead of dividing by it."""
    o = RS([rec("dgamma", "xfail", float("inf")), rec("dx", "xfail", 0.5)])
    n = RS([rec("dgamma", "xfail", 0.5, version="2"), rec("dx", "xfail", float("inf"), version="2")])
    d = diff(o, n)
    sentences = {c.quantity: c.sentence for c in d.changes}
    assert sentences == {"dgamma": "error/bound shrank inf -> 0.5 (no longer infinite; still xfail)",
                         "dx": "error/bound grew 0.5 -> inf (now infinite; still xfail)"}
    assert any("shrank infinitely from 1 to 2" in g.sentence for g in summarize(d))
    same = diff(RS([rec("y", "xfail", float("inf"))]), RS([rec("y", "xfail", float("inf"), version="2")]))
    assert same.changes == []
