"""Reliability and security details that are not a bad input or a faulty adapter: file modes follow the umask,
run directories are never shared, a results directory has one writer, links in the HTML pages are http(s)
only, text from adapters reaches the terminal without escape sequences or rich markup, and stored NaNs do
not break the tables."""
from __future__ import annotations

import json
import os
import shutil

import pytest

from conformance.outputs import results
from conformance.core import textsafe

from .clirun import FAKES, bnconform, run_dir


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    out = tmp_path_factory.mktemp("good")
    r = bnconform("run", "--frameworks", "fake.oracle", "--tier", "smoke", "--out", out, "--no-report")
    assert r.returncode == 0, r.stderr
    return run_dir(out)


@pytest.mark.parametrize("umask, mode", [(0o077, 0o600), (0o022, 0o644), (0o002, 0o664)])
def test_written_files_follow_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        atomic = results.write_atomic(tmp_path / "meta.json", "{}")
        writer = results.RecordWriter(tmp_path / "records.jsonl")
        writer.close()
    finally:
        os.umask(old)
    assert atomic.stat().st_mode & 0o777 == mode
    assert (tmp_path / "records.jsonl").stat().st_mode & 0o777 == mode


def test_run_directories_are_claimed_exclusively(tmp_path):
    import re

    from conformance.execution.runner import _claim_run_dir
    from conformance.core.validation import schema

    rid = "20260101T000000-smoke-0123abcd"
    dirs = [_claim_run_dir(tmp_path / "runs", rid) for _ in range(3)]
    assert [d.name for d in dirs] == [rid, f"{rid}-2", f"{rid}-3"]
    pattern = re.compile(schema("meta")["properties"]["run_id"]["pattern"])  # meta.json accepts the suffix
    assert all(pattern.match(d.name) for d in dirs)


def test_two_runs_in_the_same_second_never_share_a_directory(tmp_path, monkeypatch):
    """Same selection, same second: the same run id. The second run gets `<id>-2` and each directory holds
    exactly its own run's checks."""
    from conformance.outputs import runmeta
    from conformance.execution.runner import RunOptions, run

    monkeypatch.setenv("BNCONFORM_EXTRA_ADAPTERS", FAKES)
    monkeypatch.setattr(runmeta, "now", lambda: "2026-01-01T00:00:00Z")
    for _ in range(2):
        assert run(RunOptions(frameworks="fake.oracle", tier="smoke", out=str(tmp_path), jobs=1, report=False)) == 0
    a, b = sorted((tmp_path / "runs").iterdir())
    assert b.name == a.name + "-2"
    for d in (a, b):
        recs = results.load([d]).records
        assert len(recs) == len({r["check_id"] for r in recs}) == sum(1 for _ in (d / "records.jsonl").open())
        assert json.loads((d / "meta.json").read_text())["run_id"] == d.name


def test_a_run_removes_its_shared_input_streams(tmp_path, monkeypatch):
    """The directory the parent writes the large input streams to for its workers is gone after the run, and
    the workers were told where it was."""
    import tempfile

    from conformance.execution import runner, worker

    monkeypatch.setenv("BNCONFORM_EXTRA_ADAPTERS", FAKES)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    told = []
    monkeypatch.setattr(runner, "AdapterRun",
                        lambda name, ids, cfg, **kw: told.append(cfg.streams_dir) or worker.AdapterRun(name, ids, cfg, **kw))
    assert runner.run(runner.RunOptions(frameworks="fake.oracle", tier="smoke", out=str(tmp_path / "out"), jobs=1,
                                        report=False)) == 0
    assert told and all(d and d.startswith(str(scratch / "bnconform-inputs-")) for d in told)
    assert not list(scratch.iterdir())
    # a killed run's directory (its process is gone) is removed by the next run; a live run's is kept
    import subprocess
    import sys

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    orphan = scratch / f"bnconform-inputs-{int(gone.stdout)}-abc"
    alive = scratch / f"bnconform-inputs-{os.getppid()}-def"
    for d in (orphan, alive):
        d.mkdir()
        (d / "standard-0-65536-7830.npy").write_bytes(b"")
    assert runner.run(runner.RunOptions(frameworks="fake.oracle", tier="smoke", out=str(tmp_path / "out"), jobs=1,
                                        report=False)) == 0
    assert sorted(scratch.iterdir()) == [alive]


def test_a_results_directory_has_one_writing_session(tmp_path):
    """Two pytest sessions with the same --bn-results: the second is refused (it used to delete the first
    one's files); once the first has finished, the directory is free again."""
    from conformance.execution.pytest_results import InUse, clean, lock

    (tmp_path / "records.jsonl").write_text("the first session's records\n")
    first = lock(tmp_path)
    with pytest.raises(InUse, match=f"being written by another session \\(pid {os.getpid()}\\)"):
        lock(tmp_path)
    assert (tmp_path / "records.jsonl").read_text() == "the first session's records\n"
    first.close()
    second = lock(tmp_path)
    clean(tmp_path)
    assert not (tmp_path / "records.jsonl").exists()
    second.close()


def test_the_plugin_refuses_a_directory_in_use(tmp_path):
    import subprocess
    import sys

    from conformance.execution.pytest_results import lock

    from .clirun import ROOT, env

    held = lock(tmp_path / "res")
    try:
        p = subprocess.run([sys.executable, "-m", "pytest", "-q", "--bn-results", str(tmp_path / "res"), "--co",
                            "tests/unit/test_cases.py"], cwd=ROOT, env=env(), capture_output=True, text=True,
                           timeout=120)
    finally:
        held.close()
    assert p.returncode == 4, p.stdout + p.stderr  # pytest's usage error
    assert "being written by another session" in p.stderr + p.stdout


@pytest.mark.parametrize("url, shown", [
    ("https://github.com/pytorch/pytorch/issues/1", True), ("http://example.org/x", True),
    ("javascript:alert(1)", False), ("JavaScript:alert(1)", False), (" javascript:alert(1)", False),
    ("data:text/html,<script>", False), ("vbscript:x", False), ("//evil.example", False), ("", False),
    ("https://ok.example/\"onmouseover=alert(1)", False), (None, False), (5, False),
])
def test_only_http_links_become_hrefs(url, shown):
    assert (textsafe.web_link(url) is not None) == shown


def _registered(rec: dict, link: str, reason: str) -> dict:
    return {**rec, "verdict": "xfail", "registry": {"id": "evil", "reason": reason, "link": link, "action": "xfail",
                                                     "versions": "", "source": "evil.toml"}}


def test_report_and_diff_pages_show_a_javascript_link_as_text(good, tmp_path):
    new = tmp_path / "new"
    shutil.copytree(good, new)
    lines = [json.loads(x) for x in (new / "records.jsonl").read_text().splitlines()]
    lines[0] = _registered(lines[0], "javascript:alert(document.domain)", "see [/] [bold]it[/bold] \x1b]0;x\x07")
    (new / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    r = bnconform("report", new, "--out", tmp_path / "r.html")
    assert r.returncode == 0, r.stderr
    html = (tmp_path / "r.html").read_text()
    assert "javascript:alert(document.domain)" in html and 'href="javascript:' not in html.replace(" ", "")
    d = bnconform("diff", good, new, "--html", tmp_path / "d.html")
    assert d.returncode == 0, d.stderr  # rich markup in the reason is printed, not interpreted (it crashed)
    assert "Traceback" not in d.stderr and "\x1b" not in d.stdout
    page = (tmp_path / "d.html").read_text()
    assert "javascript:alert(document.domain)" in page and 'href="javascript:' not in page.replace(" ", "")


def test_terminal_text_loses_escape_sequences():
    text = "a\x1b[31mred\x1b[0m \x1b]0;title\x07b \x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\ c\x9b2Jd\x07\r\n"
    assert textsafe.terminal(text) == "ared b link cd\n"
    assert textsafe.markup("[bold]x[/]") == "\\[bold]x\\[/]"


def test_capped_text_keeps_head_and_tail():
    text = "head " + "x" * 100_000 + " tail"
    out = textsafe.cap(text, 1000)
    assert len(out) <= 1000 and out.startswith("head ") and out.endswith(" tail")
    assert "characters left out" in out


def test_a_stored_nan_does_not_break_the_conventions_table():
    """infer.table once formatted the stored string "nan" with :.3g."""
    from conformance.explain.infer import table

    ev = {"case": "c", "knob": "momentum form", "declared": "weight_on_new", "inferred": "weight_on_new",
          "agrees": True, "alpha_observed": "nan"}
    assert "(α = nan)" in str(table([{"adapter": "a", "evidence": ev}])["rows"])
    ev["alpha_observed"] = 0.1
    assert "(α = 0.1)" in str(table([{"adapter": "a", "evidence": ev}])["rows"])


def test_conventions_says_when_an_adapter_could_not_run(tmp_path):
    """It printed an empty table and exited 0 when an adapter's set-up raised."""
    r = bnconform("conventions", "--frameworks", "fake.fault.setup_raises", "--jobs", "1", timeout=120)
    assert r.returncode == 1, r.stderr
    assert "fake.fault.setup_raises: error on" in r.stderr and "adapter setup failed" in r.stderr
    assert "Traceback" not in r.stderr
