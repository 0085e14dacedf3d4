"""The pytest plugin, run in a scratch directory: selection (options and environment), header, verdicts,
strictness, stale registry entries, zero checks, bad options."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]
ROOT = Path(__file__).resolve().parents[2]
TEST = (ROOT / "tests" / "conformance" / "test_conformance.py").read_text()
HAVE_TORCH = __import__("importlib.util").util.find_spec("torch") is not None
needs_torch = pytest.mark.skipif(not HAVE_TORCH, reason="torch is not installed")


@pytest.fixture
def suite(pytester, monkeypatch):
    pytester.makeconftest('pytest_plugins = ["conformance.execution.plugin"]\n')
    pytester.makepyfile(test_conformance=TEST)
    monkeypatch.setenv("PYTHONPATH", str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for var in [v for v in os.environ if v.startswith("BNCONFORM_")]:  # e.g. BNCONFORM_RESULTS from tox
        monkeypatch.delenv(var, raising=False)
    return pytester


def _registry(pytester, text):
    d = pytester.mkdir("reg")
    (d / "r.toml").write_text(text)
    return str(d)


def test_zero_checks_fail(suite):
    r = suite.runpytest_subprocess("--bn-frameworks", "mindspore", "-p", "no:cacheprovider")
    r.assert_outcomes(skipped=1, failed=1)
    r.stdout.fnmatch_lines(["*collected zero checks*"])


def test_unknown_framework_is_a_usage_error(suite):
    r = suite.runpytest_subprocess("--bn-frameworks", "caffe", "-p", "no:cacheprovider")
    assert r.ret == pytest.ExitCode.USAGE_ERROR
    r.stderr.fnmatch_lines(["*unknown framework or adapter 'caffe'*"])
    assert "Traceback" not in r.stderr.str()


def test_broken_registry_is_a_usage_error(suite):
    reg = _registry(suite, "[[deviation]\n")
    r = suite.runpytest_subprocess("--bn-registry", reg, "-p", "no:cacheprovider")
    assert r.ret == pytest.ExitCode.USAGE_ERROR
    r.stderr.fnmatch_lines(["*r.toml: not valid TOML*"])


def test_cache_directory_that_cannot_hold_compiled_code_is_a_usage_error(suite, monkeypatch):
    blocker = suite.path / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("BNCONFORM_CACHE_DIR", str(blocker / "cache"))
    r = suite.runpytest_subprocess("-p", "no:cacheprovider")
    assert r.ret == pytest.ExitCode.USAGE_ERROR
    r.stderr.fnmatch_lines([f"*cannot keep compiled code in {blocker}/cache (BNCONFORM_CACHE_DIR): "
                            f"{blocker} is not a directory*"])
    assert "Traceback" not in r.stderr.str()


@needs_torch
def test_environment_selects_and_header_reports(suite, monkeypatch):
    monkeypatch.setenv("BNCONFORM_FRAMEWORKS", "torch.nn.functional.batch_norm")
    monkeypatch.setenv("BNCONFORM_TIER", "smoke")
    r = suite.runpytest_subprocess("-p", "no:cacheprovider", "-rs")
    r.stdout.fnmatch_lines(["bnconform: tier smoke, frameworks torch.nn.functional.batch_norm*",
                            "bnconform versions: torch 2.*",
                            "bnconform adapters (1 of 1 available): torch.nn.functional.batch_norm"])
    outcomes = r.parseoutcomes()
    assert outcomes.get("passed", 0) > 10 and "failed" not in outcomes
    r.stdout.fnmatch_lines(["SKIPPED*F.batch_norm does not return the batch statistics"])


@needs_torch
def test_registered_deviation_that_passes_is_xpass_and_fails_under_strict(suite):
    reg = _registry(suite, """
[[deviation]]
id = "not-a-real-deviation"
adapter = "torch.nn.functional.batch_norm"
cases = "f64-8x4-*"
quantities = "y"
reason = "planted to prove that XPASS is reported"
action = "xfail"
""")
    args = ("--bn-frameworks", "torch.nn.functional.batch_norm", "--bn-tier", "smoke", "--bn-registry", reg,
            "-p", "no:cacheprovider", "-k", "f64-8x4 and y")
    lenient = suite.runpytest_subprocess(*args).parseoutcomes()
    assert lenient.get("xpassed") == 1 and "failed" not in lenient
    strict = suite.runpytest_subprocess(*args, "--bn-strict").parseoutcomes()
    assert strict.get("failed") == 1 and "xpassed" not in strict


@needs_torch
def test_stale_entry_is_reported_and_fails_under_strict(suite):
    reg = _registry(suite, """
[[deviation]]
id = "first"
adapter = "torch.nn.functional.batch_norm"
cases = "*"
quantities = "y"
reason = "an entry that takes every y check first"
action = "xfail"

[[deviation]]
id = "matches-nothing"
adapter = "torch.nn.functional.batch_norm"
cases = "*"
quantities = "y"
reason = "covers the same checks, matched by none (the first entry wins)"
action = "xfail"

[[deviation]]
id = "other-tier"
adapter = "torch.nn.functional.batch_norm"
cases = "no-such-case-*"
quantities = "*"
reason = "no case of this tier is one it covers: not checked, never stale"
action = "xfail"
""")
    args = ("--bn-frameworks", "torch.nn.functional.batch_norm", "--bn-tier", "smoke", "--bn-registry", reg,
            "-p", "no:cacheprovider")
    lenient = suite.runpytest_subprocess(*args)
    assert lenient.ret == 0
    lenient.stdout.fnmatch_lines(["*stale registry entry matches-nothing*"])
    assert "stale registry entry other-tier" not in lenient.stdout.str()
    assert suite.runpytest_subprocess(*args, "--bn-strict").ret == 1
