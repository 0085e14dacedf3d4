"""A corpus of bad invocations and bad files. Each gives ONE line on stderr naming the problem, exit status 2,
no traceback, and nothing half-written (no report file, no results directory)."""
from __future__ import annotations

import json
import shutil

import pytest

from .clirun import FAKES, bnconform, run_dir



@pytest.fixture(scope="module")
def good(tmp_path_factory):
    out = tmp_path_factory.mktemp("good")
    r = bnconform("run", "--frameworks", "fake.oracle", "--tier", "smoke", "--out", out, "--no-report")
    assert r.returncode == 0, r.stderr
    return run_dir(out)


def _copy(good, tmp_path, name="copy"):
    d = tmp_path / name
    shutil.copytree(good, d)
    return d


def _rewrite_records(d, fn):
    path = d / "records.jsonl"
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    path.write_text("".join(json.dumps(fn(r)) + "\n" for r in lines))


# Each builder gets (good results dir, tmp_path) and returns (argv, expected text in the one stderr line).
def corrupt_line(good, tmp):
    d = _copy(good, tmp)
    lines = (d / "records.jsonl").read_text().splitlines(keepends=True)
    lines[1] = '{"schema": 1, "check_id": "x::y::z", "adap\n'
    (d / "records.jsonl").write_text("".join(lines))
    return ["report", d], "records.jsonl:2: not a JSON record"


def not_utf8(good, tmp):
    f = tmp / "records.jsonl"
    f.write_bytes(b"\xff\xfe\x00garbage\x81\n")
    return ["report", f], "not a results file (not UTF-8 text)"


def missing_file(good, tmp):
    return ["report", tmp / "nowhere" / "records.jsonl"], "no such file or directory"


def unreadable_dir_entry(good, tmp):
    d = _copy(good, tmp)
    (d / "records.jsonl").unlink()
    (d / "records.jsonl").mkdir()  # a directory where the records file should be
    return ["report", d / "records.jsonl"], "no results here"


def wrong_schema_version(good, tmp):
    d = _copy(good, tmp)
    _rewrite_records(d, lambda r: {**r, "schema": 99})
    return ["report", d], "results schema version 99; this bnconform reads versions 1, 2"


def wrong_meta_schema_version(good, tmp):
    d = _copy(good, tmp)
    meta = json.loads((d / "meta.json").read_text())
    (d / "meta.json").write_text(json.dumps({**meta, "schema": 3}))
    return ["report", d], "meta.json: results schema version 3"


def mixed_schema_versions(good, tmp):
    a, b = _copy(good, tmp, "a"), _copy(good, tmp, "b")
    _rewrite_records(b, lambda r: {**r, "schema": 3, "adapter": "other", "check_id": "other" + r["check_id"]})
    return ["report", a, b], "results schema version 3"


def mismatched_checksums(good, tmp):
    a, b = _copy(good, tmp, "a"), _copy(good, tmp, "b")
    meta = json.loads((b / "meta.json").read_text())
    (b / "meta.json").write_text(json.dumps({**meta, "input_checksum": "0" * 64, "tier": "default"}))
    return ["report", a, b], "input checksums differ"


def empty_file(good, tmp):
    f = tmp / "records.jsonl"
    f.write_text("")
    return ["report", f], "empty results"


def empty_dir(good, tmp):
    (tmp / "nothing").mkdir()
    return ["report", tmp / "nothing"], "no results here"


def not_a_record(good, tmp):
    f = tmp / "records.jsonl"
    f.write_text('{"hello": "world"}\n')
    return ["report", f], "not a bnconform check record (missing schema, check_id"


def unknown_verdict(good, tmp):
    d = _copy(good, tmp)
    _rewrite_records(d, lambda r: {**r, "verdict": "maybe"})
    return ["report", d], "unknown verdict 'maybe'"


def bad_analysis(good, tmp):
    d = _copy(good, tmp)
    (d / "analysis.json").write_text(json.dumps({"tables": [{"id": "t", "title": "T", "columns": ["a", "b"],
                                                             "rows": [[1]]}]}))
    return ["report", d], "analysis.json: table #1 needs"


def report_out_not_writable(good, tmp):
    blocker = tmp / "file"
    blocker.write_text("a regular file, not a directory")
    return ["report", good, "--out", blocker / "index.html"], "cannot write"


def report_out_is_a_directory(good, tmp):
    return ["report", good, "--out", tmp], "is a directory"


def run_out_not_writable(good, tmp):
    blocker = tmp / "file"
    blocker.write_text("a regular file, not a directory")
    return ["run", "--frameworks", "fake.oracle", "--tier", "smoke", "--out", blocker / "reports"], \
        "cannot write results to"


def unknown_framework(good, tmp):
    return ["run", "--frameworks", "caffe", "--out", tmp / "out"], "unknown framework or adapter 'caffe'"


def unknown_tier(good, tmp):
    return ["run", "--tier", "weekly", "--out", tmp / "out"], "invalid choice: 'weekly'"


def nothing_installed(good, tmp):
    return ["run", "--frameworks", "fake.absent", "--out", tmp / "out"], "no adapter of selection 'fake.absent'"


def registry_syntax_error(good, tmp):
    reg = tmp / "reg.toml"
    reg.write_text("[[deviation]\nid = 'x'\n")
    return ["run", "--frameworks", "fake.oracle", "--registry", reg, "--out", tmp / "out"], "not valid TOML"


def registry_missing_reason(good, tmp):
    reg = tmp / "reg.toml"
    reg.write_text('[[deviation]]\nid = "x"\nadapter = "*"\ncases = "*"\nquantities = "*"\naction = "xfail"\n')
    return ["run", "--frameworks", "fake.oracle", "--registry", reg, "--out", tmp / "out"], "missing reason"


def negative_jobs(good, tmp):
    return ["run", "--frameworks", "fake.oracle", "--jobs", "-1", "--out", tmp / "out"], "--jobs must be >= 0"


def unknown_case(good, tmp):
    return ["run", "--frameworks", "fake.oracle", "--case", "no-such-case", "--out", tmp / "out"], "no case with id"


def bad_keyword(good, tmp):
    return ["run", "--frameworks", "fake.oracle", "-k", "f64 and (", "--out", tmp / "out"], "-k 'f64 and ('"


def keyword_matching_nothing(good, tmp):
    return ["run", "--frameworks", "fake.oracle", "-k", "no-such-text", "--out", tmp / "out"], "matches no case"


CORPUS = [corrupt_line, not_utf8, missing_file, unreadable_dir_entry, wrong_schema_version, wrong_meta_schema_version,
          mixed_schema_versions, mismatched_checksums, empty_file, empty_dir, not_a_record, unknown_verdict,
          bad_analysis, report_out_not_writable, report_out_is_a_directory, run_out_not_writable, unknown_framework,
          unknown_tier, nothing_installed, registry_syntax_error, registry_missing_reason, negative_jobs,
          unknown_case, bad_keyword, keyword_matching_nothing]


@pytest.mark.parametrize("make", CORPUS, ids=[f.__name__ for f in CORPUS])
def test_bad_input_is_one_line_and_exit_2(make, good, tmp_path, monkeypatch, capsys):
    """In process (fast): conformance.cli.main as the console script calls it."""
    from conformance.cli import main

    argv, expected = make(good, tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BNCONFORM_EXTRA_ADAPTERS", FAKES)
    before = _tree(tmp_path)
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    _assert_one_line(status, err, expected)
    assert _tree(tmp_path) == before, "a failed command left files behind"


@pytest.mark.parametrize("make", [corrupt_line, unknown_framework, registry_syntax_error, report_out_not_writable],
                         ids=lambda f: f.__name__)
def test_bad_input_through_the_real_entry_point(make, good, tmp_path):
    """The same through `python -m conformance` in a fresh process: nothing else reaches stderr."""
    argv, expected = make(good, tmp_path)
    before = _tree(tmp_path)
    r = bnconform(*argv, cwd=tmp_path, timeout=120)
    _assert_one_line(r.returncode, r.stderr, expected)
    assert _tree(tmp_path) == before


def _tree(root):
    return sorted(p.relative_to(root) for p in root.rglob("*"))


def _assert_one_line(status, err, expected):
    assert status == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert expected in lines[0], lines[0]


def test_cut_off_last_line_is_dropped_with_a_warning(good, tmp_path):
    """What a killed run leaves: every whole record is read, the partial last line is dropped and reported."""
    d = _copy(good, tmp_path)
    whole = (d / "records.jsonl").read_text()
    (d / "records.jsonl").write_text(whole + '{"schema": 1, "check_id": "fake.oracle::cut')
    r = bnconform("report", d, "--out", tmp_path / "r.html")
    assert r.returncode == 0, r.stderr
    assert "dropped a cut-off last line" in r.stderr
    assert f"({len(whole.splitlines())} checks" in r.stdout
