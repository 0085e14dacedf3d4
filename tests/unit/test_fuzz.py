"""The fuzzer: its strategy draws valid cases, a planted size-threshold bug is found and shrunk to the threshold,
crashes stay in the worker, findings become corpus files the default tier can replay."""
from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, given, settings

from conformance.execution import fuzz
from conformance.core import regressions
from conformance.core.engine import applicable
from conformance.core.inputs import DISTRIBUTIONS, materialize

from .fuzz_fakes import THRESHOLD

EXTRA = "tests.unit.fuzz_fakes,tests.unit.fake_catalogue"


@settings(max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(fuzz.strategy(max_size=4096, max_steps=30))
def test_drawn_cases_are_valid_and_materialize(case):
    assert 2 <= case.ndim <= 5 and case.size <= 4096 and 1 <= len(case.modes) <= 30
    assert case.dtype in fuzz.DTYPES and case.dist in DISTRIBUTIONS and 0 <= (case.momentum or 0) <= 1
    assert case.eps > 0 and applicable(case)
    p = materialize(case)
    assert p.shape == case.shape and p.steps == len(case.modes)
    if case.memory_format == "channels_last":
        assert case.ndim in (4, 5) and case.axis == 1


def test_signature_names_verdict_family_and_kind():
    rec = lambda q, v, **kw: {"quantity": q, "verdict": v, "metrics": {"problem": None}, "diagnosis": None, **kw}  # noqa: E731
    assert fuzz.signature([rec("y", "pass"), rec("dx", "xfail")]) is None
    assert fuzz.signature([rec("y", "pass"), rec("running_var", "fail")]) == "fail:statistics:values"
    diag = {"explained": True, "hypothesis": "running_var_biased"}
    assert fuzz.signature([rec("running_var", "fail", diagnosis=diag)]) == "fail:statistics:running_var_biased"
    assert fuzz.signature([rec("y", "error", reason="worker crashed (exit code -9)")]) == "error:crash"
    assert fuzz.signature([rec("y", "error", reason="ValueError: bad")]) == "error:ValueError"


def test_planted_size_threshold_bug_is_found_and_shrunk_to_the_threshold(monkeypatch):
    """A kernel bug that only triggers from THRESHOLD elements per channel: the search finds it, and shrinking
    brings it down to exactly THRESHOLD elements, one channel, rank 2, the simplest everything else."""
    monkeypatch.setenv("BNCONFORM_EXTRA_ADAPTERS", EXTRA)
    evaluator = fuzz.Evaluator("fake.size_bug", None, 1, case_timeout=60)
    try:
        cases = fuzz.strategy(("float64", "float32"), "any", max_size=1 << 14, max_steps=4)
        found = fuzz.search(evaluator, cases, seed=7, known=set(), deadline=time.monotonic() + 120,
                            max_examples=300)
    finally:
        evaluator.close()
    assert found is not None, "the planted bug was not found"
    case, sig = found
    assert sig == "fail:output:values"
    assert case.reduced_count == THRESHOLD, case.id
    assert case.shape == (THRESHOLD, 1) and case.dtype == "float32" and case.modes == ("train",), case.id
    assert case.dist == "normal" and case.momentum == 0.1 and case.eps == 1e-5, case.id


def test_control_adapter_yields_no_finding(monkeypatch):
    monkeypatch.setenv("BNCONFORM_EXTRA_ADAPTERS", EXTRA)
    evaluator = fuzz.Evaluator("fake.oracle", None, 1, case_timeout=60)
    try:
        cases = fuzz.strategy(("float64", "float32"), "any", max_size=1 << 10, max_steps=3)
        assert fuzz.search(evaluator, cases, seed=3, known=set(), deadline=time.monotonic() + 60,
                           max_examples=40) is None
    finally:
        evaluator.close()


def test_a_crashing_adapter_is_an_error_outcome_and_the_worker_restarts(monkeypatch):
    from conformance.core.cases import Case

    victim = Case((4, 3), "float32", ("train",), seed=99, tier="fuzz")
    monkeypatch.setenv("BNCONFORM_EXTRA_ADAPTERS", EXTRA)
    monkeypatch.setenv("BNCONFORM_FAKE_KILL", victim.id)
    evaluator = fuzz.Evaluator("fake.killer", None, 1, case_timeout=60)
    try:
        crashed = evaluator(victim)
        assert fuzz.signature(crashed) == "error:crash"
        assert fuzz.signature(evaluator(victim.with_(seed=1))) is None  # a fresh worker took over
        assert evaluator.restarts == 1
    finally:
        evaluator.close()


def test_corpus_file_round_trip_and_validation(tmp_path):
    from conformance.core.cases import Case

    case = Case((5, 2, 3), "bfloat16", ("train", "eval", "train"), momentum=None, eps=1e-12, dist="inf",
                loc=-1000.0, memory_format="contiguous", seed=12, tier="default", note="n")
    path = regressions.write(case, {"origin": "fuzz", "note": "n", "adapter": "a", "fuzz_seed": 5}, tmp_path)
    back = regressions.load(tmp_path)[0]
    assert back.case.id == case.id and back.case == case and back.meta["fuzz_seed"] == 5
    path.write_text(path.read_text().replace('dtype = "bfloat16"', 'dtype = "float8"'))
    with pytest.raises(regressions.CorpusError, match="dtype"):
        regressions.load(tmp_path)
    path.write_text(regressions.render(case, {"origin": "fuzz", "note": "n"}).replace("seed = 12", "seed = 13"))
    with pytest.raises(regressions.CorpusError, match="does not match"):
        regressions.load(tmp_path)


@pytest.mark.parametrize("args", [["--budget", "-1"], ["--budget", "nan"], ["--seed", "-3"],
                                  ["--seed", str(2**32)], ["--case-timeout", "0"], ["--case-timeout", "inf"],
                                  ["--max-size", "0"], ["--max-steps", "0"], ["--max-steps", "2.5"],
                                  ["--jobs", "-1"], ["--jobs", "1.5"], ["--frameworks", "no.such.adapter"]])
def test_bad_fuzz_options_are_one_line_and_exit_2(args, capsys):
    from conformance.cli import main

    assert main(["fuzz", "--budget", "1", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("bnconform") and len(err.splitlines()) == 1 and "Traceback" not in err


def test_fuzz_command_end_to_end_writes_corpus_and_results(tmp_path):
    """`bnconform fuzz` on an adapter with an always-visible bug: exit status 1, the seed printed, a corpus file
    that loads back, and records that `bnconform report` renders."""
    from conformance.outputs import results

    from .clirun import bnconform

    out, corpus = tmp_path / "out", tmp_path / "corpus"
    r = bnconform("fuzz", "--frameworks", "fake.wrong_var", "--budget", "20", "--seed", "5", "--jobs", "1",
                  "--out", out, "--corpus", corpus, "--max-size", "256", "--max-steps", "3", timeout=240)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "rerun with --seed 5" in r.stdout and "| fake.wrong_var |" in r.stdout
    found = regressions.load(corpus)  # one file per minimal case (how many signatures fit the budget varies)
    assert found and all(f.meta["adapter"] == "fake.wrong_var" and f.meta["fuzz_seed"] == 5 for f in found)
    assert any("running_var" in f.meta["note"] for f in found)
    (run,) = [d for d in (out / "fuzz").iterdir() if d.name != "logs"]
    assert (out / "fuzz" / "logs" / "fake.wrong_var.log").is_file()  # the framework's output, off the terminal
    rs = results.load([run])
    assert {x["case"] for x in rs.records} == {f.case.id for f in found}
    page = tmp_path / "report.html"
    assert bnconform("report", run, "--out", page).returncode == 0 and page.stat().st_size > 0
