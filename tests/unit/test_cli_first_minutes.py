"""What a new user meets first: help on a bare `bnconform`, --version, descriptions and examples, a quiet
terminal (framework log lines and warnings kept in the results, not in the progress output), the end of a
run (failing checks, the next command, the elapsed time), -k / --case, install hints for a checkout."""
from __future__ import annotations

import json

from conformance.execution.runner import keyword_matches

from .clirun import ROOT, bnconform, run_dir


def test_bare_bnconform_prints_help_and_version_names_frameworks():
    r = bnconform()
    assert r.returncode == 0 and "usage: bnconform" in r.stdout and "bnconform run --tier smoke" in r.stdout
    v = bnconform("--version")
    assert v.returncode == 0 and v.stdout.startswith("bnconform ") and "frameworks: " in v.stdout
    assert "numpy " in v.stdout  # read from metadata, nothing imported


def test_subcommands_have_a_description_and_an_example():
    """Those of conformance.cli.DESCRIPTIONS (a new subcommand adds its entry there)."""
    from conformance.cli import DESCRIPTIONS, build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert set(DESCRIPTIONS) <= set(sub.choices)
    for name in DESCRIPTIONS:
        parser = sub.choices[name]
        assert parser.description and len(parser.description) > 40, name
        assert parser.epilog and f"bnconform {name}" in parser.epilog, name


def test_framework_noise_stays_off_the_terminal_and_is_kept(tmp_path):
    from tests.unit.fake_catalogue import Noisy

    r = bnconform("run", "--frameworks", "fake.noisy", "--tier", "smoke", "--out", tmp_path, "--no-report")
    assert r.returncode == 0, r.stdout + r.stderr
    for stream in (r.stdout, r.stderr):
        assert Noisy.NOISE not in stream and "a line on stdout" not in stream and "FutureWarning" not in stream
    meta = json.loads((run_dir(tmp_path) / "meta.json").read_text())
    (a,) = [a for a in meta["adapters"] if a["name"] == "fake.noisy"]
    assert a["log"]["lines"] >= 2 and Noisy.NOISE in a["log"]["tail"]
    (w,) = a["warnings"]
    assert w["category"] == "FutureWarning" and "deprecated" in w["message"] and w["count"] >= 1
    assert "framework output (kept off the terminal)" in r.stdout and "finished in " in r.stdout


def test_end_of_run_lists_failures_and_the_next_command(tmp_path):
    r = bnconform("run", "--frameworks", "fake.wrong_var", "--tier", "smoke", "--out", tmp_path, "--no-report")
    assert r.returncode == 1
    assert "failing checks (" in r.stdout and "fail  fake.wrong_var::" in r.stdout
    next_line = next(line for line in r.stdout.splitlines() if line.startswith("next: "))
    assert "bnconform run --frameworks fake.wrong_var --case " in next_line
    case = next_line.rsplit("--case ", 1)[1].strip()
    again = bnconform("run", "--frameworks", "fake.wrong_var", "--case", case, "--out", tmp_path / "again",
                      "--no-report")
    assert again.returncode == 1 and "1 cases" in again.stdout  # the suggested command runs that one case


def test_keyword_expressions():
    cid = "f64-4x3-ax1-T2E-a0.1-eps1e-05-rstats-s0"
    assert keyword_matches("f64", cid) and not keyword_matches("f32", cid)
    assert keyword_matches("f64 and not notrack", cid) and not keyword_matches("f64 and not T2E", cid)
    assert keyword_matches("(f32 or f64) and rstats", cid) and keyword_matches("f6?-*-s0", cid)


def test_install_hint_from_a_checkout(tmp_path, monkeypatch):
    from conformance.core.install import from_checkout, hint

    assert from_checkout()
    monkeypatch.chdir(ROOT)
    assert hint('pip install "bnconform[torch]" && pip install x') == 'pip install -e ".[torch]" && pip install x'
    monkeypatch.chdir(tmp_path)  # elsewhere: the checkout's path is spelt out
    assert hint('pip install "bnconform[jax]"') in (f'pip install -e "{ROOT}[jax]"',
                                                    f'pip install -e "{__import__("os").path.relpath(ROOT)}[jax]"')
    assert hint("pip install numpy") == "pip install numpy"
