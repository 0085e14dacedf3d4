"""The bad-input corpus as a table: wrongly typed files (records, meta.json, analysis.json, baselines, registry
TOML, extra-adapter modules) and out-of-range numbers for every subcommand. Each entry must give exactly ONE
line on stderr containing the expected words, exit status 2, no traceback, nothing written, and no process
started. Entries are data: (id, what to damage, how, the command, the words expected).

Runs in process (conformance.cli.main, as the console script calls it) on one good smoke run of fake.oracle.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import shutil
from pathlib import Path

import pytest

from .clirun import FAKES, bnconform, run_dir

RUN = "run --frameworks fake.oracle --tier smoke --no-report --out {tmp}/out"


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    out = tmp_path_factory.mktemp("good")
    r = bnconform("run", "--frameworks", "fake.oracle", "--tier", "smoke", "--out", out, "--save-baseline", "base")
    assert r.returncode == 0, r.stderr
    return run_dir(out), out / "baselines" / "base.json"


def _set(doc, dotted: str, value):
    """doc with the field at a dotted path set (value DELETE removes it)."""
    *parents, last = dotted.split(".")
    node = doc
    for p in parents:
        node = node[int(p)] if isinstance(node, list) else node[p]
    if value is DELETE:
        del node[last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return doc


DELETE = object()

# -- records.jsonl: the first record with one field damaged; `bnconform report DIR`
RECORD = [
    ("metrics-a-string", "metrics", "abc", "metrics: "),
    ("case-a-number", "case", 5, "case: must be string, not an integer 5"),
    ("check-id-a-list", "check_id", [1], "check_id: must be string, not an array"),
    ("registry-a-string", "registry", "oops", "registry: "),
    ("values-expected-a-number", "values", {"expected": 5, "observed": []}, "values"),
    ("verdict-unknown", "verdict", "maybe", "verdict: must be one of 'pass'"),
    ("schema-99", "schema", 99, "results schema version 99"),
    ("schema-a-string", "schema", "1", "results schema version '1'"),
    ("adapter-empty", "adapter", "", "adapter: "),
    ("check-id-no-separators", "check_id", "nocolons", "check_id: 'nocolons' does not match"),
    ("tier-unknown", "tier", "weekly", "tier: must be one of"),
    ("seconds-negative", "seconds", -1, "seconds: must be >= 0, not -1"),
    ("seconds-a-string", "seconds", "x", "seconds: must be number"),
    ("harness-seconds-null", "harness_seconds", None, "harness_seconds: must be number"),
    ("unknown-field", "bogus", 1, "unknown key(s) bogus"),
    ("message-missing", "message", DELETE, "missing message"),
    ("knob-a-number", "knob", 5, "knob: must be string or null"),
    ("tolerance-a-number", "tolerance", 5, "tolerance"),
    ("diagnosis-summary-a-number", "diagnosis", {"summary": 1, "explained": True}, "diagnosis"),
    ("evidence-a-string", "evidence", "x", "evidence"),
    ("values-too-long", "values", {"expected": [1.0] * 17, "observed": []}, "values"),
    ("channel-stats-wrong", "channel_stats", {"channel": "a"}, "channel_stats"),
    ("device-null", "device", None, "device: must be string"),
    ("version-a-number", "version", 2.1, "version: must be string, not a number 2.1"),
    ("repro-a-number", "repro", 5, "repro: must be string or null"),
    ("characterization-a-list", "characterization", [], "characterization: must be string or null"),
    ("message-null", "message", None, "message: must be string"),
    ("quantity-empty", "quantity", "", "quantity: "),
    ("api-an-object", "api", {}, "api: must be string, not an object"),
]

# -- meta.json damaged; `bnconform report DIR`
META = [
    ("adapters-a-number", "adapters", 5, "meta.json:"),
    ("adapters-empty-object", "adapters", [{}], "adapters[0]: missing name"),
    ("versions-a-string", "versions", "x", "versions: must be object"),
    ("versions-values-numbers", "versions", {"numpy": 2}, "versions.numpy: must be string"),
    ("schema-3", "schema", 3, "meta.json: results schema version 3"),
    ("run-id-a-number", "run_id", 5, "run_id: must be string"),
    ("run-id-pattern", "run_id", "../../etc", "run_id: '../../etc' does not match"),
    ("status-unknown", "status", "done", "status: must be one of"),
    ("cases-negative", "cases", -1, "cases: must be >= 0"),
    ("checksum-not-hex", "input_checksum", "zz", "input_checksum: 'zz' does not match"),
    ("flags-a-list", "flags", [], "flags: must be object"),
    ("argv-a-string", "argv", "x", "argv: must be array"),
    ("cpu-empty", "cpu", {}, "cpu: missing model, count"),
    ("git-a-number", "git", 1, "git: must be object"),
    ("pip-freeze-no-version", "pip_freeze", ["numpy"], "pip_freeze[0]: 'numpy' does not match"),
    ("counts-unknown-verdict", "counts", {"maybe": 1}, "counts"),
    ("checks-a-string", "checks", "x", "checks: must be integer"),
    ("stale-registry-a-string", "stale_registry", "x", "stale_registry: must be array or null"),
    ("worker-a-number", "worker", 5, "worker: must be string"),
    ("tier-unknown", "tier", "weekly", "tier: must be one of"),
    ("source-unknown", "source", "cron", "source: must be one of"),
    ("missing-platform", "platform", DELETE, "missing platform"),
]

# -- analysis.json damaged (written whole); `bnconform report DIR`
ANALYSIS = [
    ("tables-a-string", {"tables": "x"}, "tables: must be array"),
    ("table-empty", {"tables": [{}]}, "tables[0]: missing id, title, columns, rows"),
    ("table-id-with-space", {"tables": [{"id": "a b", "title": "T", "columns": ["a"], "rows": []}]}, "does not match"),
    ("columns-empty", {"tables": [{"id": "t", "title": "T", "columns": [], "rows": []}]}, "columns: minItems is 1"),
    ("rows-a-string", {"tables": [{"id": "t", "title": "T", "columns": ["a"], "rows": "x"}]}, "rows: must be array"),
    ("cell-an-object", {"tables": [{"id": "t", "title": "T", "columns": ["a"], "rows": [[{}]]}]}, "rows[0][0]"),
    ("row-too-short", {"tables": [{"id": "t", "title": "T", "columns": ["a", "b"], "rows": [[1]]}]},
     "tables[0].rows[0]: 1 cells for 2 columns"),
    ("no-tables", {}, "missing tables"),
    ("a-list", [], "(document): must be object"),
]

# -- the kept baseline damaged; `bnconform run --compare-baseline base` (refused before running)
BASELINE = [
    ("checks-of-numbers", "checks", [1], "checks[0]: must be object"),
    ("checks-a-string", "checks", "x", "checks: must be array"),
    ("schema-2", "baseline_schema", 2, "baseline_schema: must be 1, not 2"),
    ("name-missing", "name", DELETE, "missing name"),
    ("verdict-unknown", "checks.0.verdict", "maybe", "checks[0].verdict: must be one of"),
    ("ratio-a-word", "checks.0.ratio", "big", "checks[0].ratio"),
    ("versions-a-number", "versions", 5, "versions: must be object"),
    ("tier-a-number", "tier", 5, "tier: must be one of"),
    ("check-id-pattern", "checks.0.check_id", "x", "checks[0].check_id: 'x' does not match"),
    ("evidence-no-knob", "checks.0.evidence", {"inferred": "x"}, "missing knob"),
]

GOOD_ENTRY = ('id = "e"\nadapter = "fake.*"\ncases = ["*"]\nquantities = ["y"]\nreason = "why"\n'
              'action = "xfail"\n')
# -- a registry file; `bnconform run --registry FILE` (refused before running)
REGISTRY = [
    ("deviation-of-numbers", "deviation = [1, 2]\n", "must be object, not an integer"),
    ("deviation-a-string", 'deviation = "x"\n', "deviation: must be array"),
    ("reason-missing", "[[deviation]]\n" + GOOD_ENTRY.replace('reason = "why"\n', ""), "missing reason"),
    ("reason-blank", "[[deviation]]\n" + GOOD_ENTRY.replace('"why"', '"  "'), "reason: is empty"),
    ("action-unknown", "[[deviation]]\n" + GOOD_ENTRY.replace('"xfail"', '"ignore"'), "action: must be one of"),
    ("unknown-key", "[[deviation]]\n" + GOOD_ENTRY + "url = 'x'\n", "unknown key(s) url"),
    ("cases-empty", "[[deviation]]\n" + GOOD_ENTRY.replace('["*"]', "[]"), "deviation[0].cases"),
    ("cases-numbers", "[[deviation]]\n" + GOOD_ENTRY.replace('["*"]', "[1]"), "deviation[0].cases"),
    ("quantity-unknown", "[[deviation]]\n" + GOOD_ENTRY.replace('["y"]', '["yy"]'), "'yy' matches no quantity"),
    ("versions-not-pep440", "[[deviation]]\n" + GOOD_ENTRY + 'versions = "two"\n', "not a PEP 440 specifier"),
    ("duplicate-ids", "[[deviation]]\n" + GOOD_ENTRY + "[[deviation]]\n" + GOOD_ENTRY, "'e' already used"),
    ("unknown-table", "[other]\nx = 1\n", "unknown key(s) other"),
    ("id-with-spaces", "[[deviation]]\n" + GOOD_ENTRY.replace('id = "e"', 'id = "a b"'), "id: 'a b' does not match"),
    ("link-a-number", "[[deviation]]\n" + GOOD_ENTRY + "link = 5\n", "link: must be string"),
    ("adapter-a-list", "[[deviation]]\n" + GOOD_ENTRY.replace('"fake.*"', '["fake.*"]'), "adapter: must be string"),
    ("not-toml", "[[deviation]\nid = 'x'\n", "not valid TOML"),
    ("not-utf8", b"\xff\xfe[[deviation]]\n", "cannot read"),
]

# -- numbers and words on the command line; "{tmp}" is the test's directory, "{good}" the good run
ARGS = [
    ("run-jobs-negative", RUN + " --jobs -1", "--jobs: must be >= 0, not -1"),
    ("run-jobs-a-word", RUN + " --jobs many", "'many' is not a whole number of jobs"),
    ("run-jobs-fraction", RUN + " --jobs 1.5", "'1.5' is not a whole number of jobs"),
    ("run-case-timeout-nan", RUN + " --case-timeout nan", "--case-timeout: must be a finite number, not 'nan'"),
    ("run-case-timeout-inf", RUN + " --case-timeout inf", "--case-timeout: must be a finite number"),
    ("run-case-timeout-zero", RUN + " --case-timeout 0", "--case-timeout: must be > 0, not 0"),
    ("run-case-timeout-negative", RUN + " --case-timeout -1", "--case-timeout: must be > 0"),
    ("run-adapter-timeout-nan", RUN + " --adapter-timeout nan", "--adapter-timeout: must be a finite number"),
    ("run-adapter-timeout-zero", RUN + " --adapter-timeout 0", "--adapter-timeout: must be > 0"),
    ("run-adapter-timeout-a-word", RUN + " --adapter-timeout soon", "'soon' is not a number of seconds"),
    ("run-tier-unknown", RUN + " --tier weekly", "invalid choice: 'weekly'"),
    ("run-framework-unknown", "run --frameworks caffe --out {tmp}/out", "unknown framework or adapter 'caffe'"),
    ("run-nothing-installed", "run --frameworks fake.absent --out {tmp}/out", "no adapter of selection"),
    ("run-save-baseline-empty", RUN + " --save-baseline=", "baseline name ''"),
    ("run-save-baseline-path", RUN + " --save-baseline ../x", "baseline name '../x'"),
    ("run-save-baseline-hidden", RUN + " --save-baseline .x", "baseline name '.x'"),
    ("run-fail-on-without-baseline", RUN + " --fail-on drift", "--fail-on gates a comparison"),
    ("run-compare-missing-baseline", RUN + " --compare-baseline nope", "no baseline 'nope'"),
    ("run-fail-on-unknown", RUN + " --compare-baseline nope --fail-on bogus", "--fail-on 'bogus': choose from"),
    ("run-fail-on-drift-zero", RUN + " --compare-baseline nope --fail-on drift:0x", "must be > 1, not 0"),
    ("run-fail-on-drift-nan", RUN + " --compare-baseline nope --fail-on drift:nan", "must be a finite number"),
    ("run-fail-on-drift-word", RUN + " --compare-baseline nope --fail-on drift:big", "'big' is not a factor"),
    ("run-unknown-option", RUN + " --bogus", "unrecognized arguments: --bogus"),
    ("run-registry-missing", RUN + " --registry {tmp}/nowhere.toml", "does not exist"),
    ("run-index-is-a-directory", "run --frameworks fake.oracle --tier smoke --out {tmp}/blocked",
     "index.html exists and is not a file"),
    ("run-out-under-a-file", "run --frameworks fake.oracle --tier smoke --out {tmp}/file/out", "cannot write results"),
    ("diff-drift-factor-zero", "diff {good} {good} --drift-factor 0", "--drift-factor: must be > 1, not 0"),
    ("diff-drift-factor-one", "diff {good} {good} --drift-factor 1", "--drift-factor: must be > 1"),
    ("diff-drift-factor-nan", "diff {good} {good} --drift-factor nan", "--drift-factor: must be a finite number"),
    ("diff-drift-factor-inf", "diff {good} {good} --drift-factor inf", "--drift-factor: must be a finite number"),
    ("diff-drift-factor-negative", "diff {good} {good} --drift-factor -5", "--drift-factor: must be > 1"),
    ("diff-drift-floor-negative", "diff {good} {good} --drift-floor -1", "--drift-floor: must be > 0"),
    ("diff-drift-floor-zero", "diff {good} {good} --drift-floor 0", "--drift-floor: must be > 0"),
    ("diff-drift-floor-nan", "diff {good} {good} --drift-floor nan", "--drift-floor: must be a finite number"),
    ("diff-fail-on-unknown", "diff {good} {good} --fail-on bogus", "choose from"),
    ("diff-fail-on-drift-word", "diff {good} {good} --fail-on drift:abc", "'abc' is not a factor"),
    ("diff-old-missing", "diff {tmp}/nowhere {good}", "no such file or directory"),
    ("diff-new-empty-dir", "diff {good} {tmp}/empty", "no results here"),
    ("diff-html-a-directory", "diff {good} {good} --html {tmp}/empty", "is a directory"),
    ("port-momentum-negative", "port --from torch --to keras --momentum=-1", "--momentum (a number in [0, 1] or 'none'): must be >= 0, not -1"),
    ("port-momentum-two", "port --from torch --to keras --momentum 2", "must be <= 1, not 2"),
    ("port-momentum-nan", "port --from torch --to keras --momentum nan", "must be a finite number"),
    ("port-momentum-inf", "port --from torch --to keras --momentum inf", "must be a finite number"),
    ("port-momentum-a-word", "port --from torch --to keras --momentum fast", "'fast' is not a number"),
    ("port-eps-zero", "port --from torch --to keras --eps 0", "--eps: must be > 0, not 0"),
    ("port-eps-negative", "port --from torch --to keras --eps=-1e-5", "--eps: must be > 0"),
    ("port-eps-nan", "port --from torch --to keras --eps nan", "--eps: must be a finite number"),
    ("port-eps-inf", "port --from torch --to keras --eps inf", "--eps: must be a finite number"),
    ("port-from-unknown", "port --from caffe --to keras", "unknown framework or adapter 'caffe'"),
    ("port-to-unknown", "port --from torch --to caffe", "unknown framework or adapter 'caffe'"),
    ("port-from-missing", "port --to keras", "the following arguments are required: --from"),
    ("conventions-jobs-negative", "conventions --frameworks fake.oracle --jobs -1", "--jobs: must be >= 0"),
    ("conventions-framework-unknown", "conventions --frameworks caffe", "unknown framework or adapter 'caffe'"),
    ("conventions-nothing-installed", "conventions --frameworks fake.absent", "no adapter of selection"),
    ("conventions-registry-missing", "conventions --frameworks fake.oracle --registry {tmp}/nowhere.toml",
     "does not exist"),
    ("conventions-registry-broken", "conventions --frameworks fake.oracle --registry {tmp}/broken.toml",
     "not valid TOML"),
    ("report-missing", "report {tmp}/nowhere", "no such file or directory"),
    ("report-out-a-directory", "report {good} --out {tmp}/empty", "is a directory"),
    ("cases-tier-unknown", "cases --tier weekly", "invalid choice: 'weekly'"),
    ("oracle-case-unknown", "oracle no-such-case", "no case with id 'no-such-case'"),
    ("port-steps-zero", "port --from torch --to keras --steps 0", "--steps: must be >= 1, not 0"),
    ("port-steps-a-word", "port --from torch --to keras --steps many", "'many' is not a whole number of steps"),
    ("port-initial-var-zero", "port --from torch --to keras --initial-var 0", "--initial-var: must be > 0"),
    ("port-initial-var-nan", "port --from torch --to keras --initial-var nan", "--initial-var: must be a finite"),
    ("port-batch-shape-zero", "port --from torch --to keras --batch-shape 32,0", "--batch-shape must be positive"),
    ("port-batch-shape-one-number", "port --from torch --to keras --batch-shape 32", "--batch-shape must be positive"),
    ("unknown-subcommand", "explode", "invalid choice: 'explode'"),
]

# -- BNCONFORM_CACHE_DIR where compiled code cannot be kept (the JAX adapters had made every check an error)
CACHE = "cannot keep compiled code in "
ENV = [
    ("run-cache-a-file", RUN, "{tmp}/file",
     CACHE + "{tmp}/file (BNCONFORM_CACHE_DIR): it is not a directory"),
    ("run-cache-under-a-file", RUN, "{tmp}/file/cache", "{tmp}/file is not a directory"),
    ("conventions-cache-a-file", "conventions --frameworks fake.oracle", "{tmp}/file",
     "bnconform conventions: " + CACHE),
    ("fuzz-cache-under-a-file", "fuzz --frameworks fake.oracle --budget 1 --out {tmp}/out", "{tmp}/file/c",
     "bnconform fuzz: " + CACHE),
    # not the variable: a results directory whose .cache is a file
    ("run-default-cache-a-file", "run --frameworks fake.oracle --tier smoke --out {tmp}/cached", "",
     CACHE + "{tmp}/cached/.cache: it is not a directory"),
]

# -- BNCONFORM_EXTRA_ADAPTERS naming a broken module
EXTRA = [
    ("syntax-error", "def broken(:\n", "SyntaxError"),
    ("specs-a-number", "SPECS = 5\n", "SPECS must be a tuple of adapters.AdapterSpec, not int"),
    ("specs-of-strings", "SPECS = ('fake',)\n", "SPECS must be a tuple of adapters.AdapterSpec"),
    ("no-specs", "X = 1\n", "has no attribute 'SPECS'"),
    ("import-raises", "raise RuntimeError('boom')\n", "RuntimeError: boom"),
]

# -- JSON that is not what it should be, at the byte level
RAW = [
    ("records-nan-literal", "records.jsonl", '{"schema": 1, "ratio": NaN}\n', "not a JSON record"),
    ("records-an-array", "records.jsonl", "[1, 2]\n", "not a check record (a JSON list"),
    ("records-deep-nesting", "records.jsonl", "[" * 100_000 + "]" * 100_000 + "\n", "not a JSON record"),
    ("records-a-string", "records.jsonl", '"hello"\n', "not a check record (a JSON str"),
    ("meta-not-json", "meta.json", "{", "meta.json:1: not valid JSON"),
    ("meta-an-array", "meta.json", "[]", "results schema version none"),
    ("meta-infinity", "meta.json", '{"schema": 1, "x": Infinity}', "not valid JSON"),
    ("analysis-not-json", "analysis.json", "{", "analysis.json:1: not valid JSON"),
    ("analysis-not-utf8", "analysis.json", b"\xff", "analysis file is not UTF-8 text"),
    ("meta-not-utf8", "meta.json", b"\xff\xfe", "not a run metadata file (not UTF-8 text)"),
]


def _case(kind, entry):
    return pytest.param(kind, entry, id=f"{kind}:{entry[0]}")


CORPUS = ([_case("record", e) for e in RECORD] + [_case("meta", e) for e in META]
          + [_case("analysis", e) for e in ANALYSIS] + [_case("baseline", e) for e in BASELINE]
          + [_case("registry", e) for e in REGISTRY] + [_case("args", e) for e in ARGS]
          + [_case("extra", e) for e in EXTRA] + [_case("raw", e) for e in RAW]
          + [_case("env", e) for e in ENV])


def _prepare(kind, entry, good, tmp: Path, monkeypatch) -> tuple[list[str], str]:
    results_dir, baseline = good
    d = tmp / "copy"
    shutil.copytree(results_dir, d)
    (tmp / "empty").mkdir()
    (tmp / "file").write_text("a regular file")
    (tmp / "blocked" / "index.html").mkdir(parents=True)
    (tmp / "broken.toml").write_text("[[deviation]\n")
    (tmp / "cached").mkdir()
    (tmp / "cached" / ".cache").write_text("a regular file")
    if kind == "record":
        _, dotted, value, expected = entry
        lines = (d / "records.jsonl").read_text().splitlines()
        lines[0] = json.dumps(_set(json.loads(lines[0]), dotted, value))
        (d / "records.jsonl").write_text("\n".join(lines) + "\n")
        return ["report", str(d), "--out", str(tmp / "r.html")], expected
    if kind == "meta":
        _, dotted, value, expected = entry
        meta = json.loads((d / "meta.json").read_text())
        (d / "meta.json").write_text(json.dumps(_set(meta, dotted, value), indent=2))
        return ["report", str(d), "--out", str(tmp / "r.html")], expected
    if kind == "analysis":
        _, doc, expected = entry
        (d / "analysis.json").write_text(json.dumps(doc))
        return ["report", str(d), "--out", str(tmp / "r.html")], expected
    if kind == "baseline":
        _, dotted, value, expected = entry
        (tmp / "out" / "baselines").mkdir(parents=True)
        doc = _set(json.loads(baseline.read_text()), dotted, value)
        (tmp / "out" / "baselines" / "base.json").write_text(json.dumps(doc, indent=0))
        return RUN.format(tmp=tmp).split() + ["--compare-baseline", "base"], expected
    if kind == "registry":
        _, text, expected = entry
        reg = tmp / "reg.toml"
        reg.write_bytes(text if isinstance(text, bytes) else text.encode())
        return RUN.format(tmp=tmp).split() + ["--registry", str(reg)], expected
    if kind == "args":
        _, line, expected = entry
        return line.format(tmp=tmp, good=results_dir).split(), expected
    if kind == "extra":
        _, source, expected = entry
        name = f"bnconform_extra_{abs(hash(source))}"
        # the user's module lives outside the checked tree: importing it may write its own __pycache__
        modules = tmp.parent / f"{tmp.name}-modules"
        modules.mkdir(exist_ok=True)
        (modules / f"{name}.py").write_text(source)
        monkeypatch.syspath_prepend(str(modules))
        monkeypatch.setenv("BNCONFORM_EXTRA_ADAPTERS", f"{FAKES},{name}")
        return RUN.format(tmp=tmp).split(), expected
    if kind == "env":
        _, line, value, expected = entry
        monkeypatch.setenv("BNCONFORM_CACHE_DIR", value.format(tmp=tmp))
        return line.format(tmp=tmp).split(), expected.format(tmp=tmp)
    if kind == "raw":
        _, name, content, expected = entry
        path = d / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return ["report", str(d), "--out", str(tmp / "r.html")], expected
    raise AssertionError(kind)


def _tree(root: Path) -> list:
    return sorted((str(p.relative_to(root)), p.is_dir()) for p in root.rglob("*"))


def _children() -> set[int]:
    out: set[int] = set()
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        try:
            out |= {int(x) for x in (task / "children").read_text().split()}
        except OSError:
            pass
    return out


@pytest.mark.parametrize("kind, entry", CORPUS)
def test_bad_input_is_one_line_exit_2_nothing_written(kind, entry, good, tmp_path, monkeypatch, capsys):
    from conformance.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BNCONFORM_EXTRA_ADAPTERS", FAKES)
    argv, expected = _prepare(kind, entry, good, tmp_path, monkeypatch)
    capsys.readouterr()
    before, children = _tree(tmp_path), _children()
    status = main(argv)
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert status == 2, err
    assert len(lines) == 1, err
    assert "Traceback" not in err + out
    assert expected in lines[0], lines[0]
    assert _tree(tmp_path) == before, "a refused command wrote something"
    assert multiprocessing.active_children() == [] and _children() <= children, "a refused command started a process"


def test_corpus_size():
    """The issue asks for at least 100 bad inputs; the README says how many there are."""
    assert len(CORPUS) >= 100
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    assert f"test_bad_input_corpus.py` ({len(CORPUS)} bad inputs)" in readme, "README.md: update the count"
