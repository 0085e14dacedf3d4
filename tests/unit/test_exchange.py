"""The exchange protocol: the array encoding, the schemas, export, and import through the engine (verdicts,
diagnosis, partial runs, one-line errors). Outside runtimes are replaced by tests/unit/exchange_support.py's
oracle runner, so these tests need neither Node nor MATLAB."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from adapters.imported import TFJS
from conformance.execution import exchange as ex
from conformance.core.cases import case_by_id
from conformance.execution.export import ExportError, export
from conformance.execution.import_ import load, write_results
from conformance.core.inputs import materialize
from conformance.core.registry import Registry

from .clirun import bnconform
from .exchange_support import oracle_runner

# Small float32 rank-2 cases: one training-last, one inference-last (second order in both), one convergence.
CASES = ["f32-8x4-ax1-T-a0.1-eps1e-05-rstats-same-s0", "f32-8x4-ax1-TE-a0.1-eps1e-05-rstats-same-s0",
         "f32-4x3-ax1-T30E-a0.5-eps1e-05-rstats-same-q-running_mean+running_var+y-s0"]
ADAPTER = TFJS.name


@pytest.fixture()
def folder(tmp_path):
    d = tmp_path / "export"
    export("node", "default", d, CASES)
    return d


def test_arrays_round_trip_bit_for_bit():
    a = np.array([[0.1, -0.0, np.nan], [np.inf, -np.inf, 5e-324]])
    back = ex.decode_array(ex.encode_array(a), "t")
    assert back.tobytes() == a.tobytes()  # NaN, -0, Inf, subnormals: every bit
    f = np.float32([1.1, 2.5, -3.0e-38])
    enc = ex.encode_array(f, "float32")
    assert enc["dtype"] == "float32" and ex.decode_array(enc, "t").tobytes() == f.astype(np.float64).tobytes()
    assert json.loads(json.dumps(enc)) == enc
    with pytest.raises(ex.ExchangeError, match="bytes of float64 for shape"):
        ex.decode_array({**ex.encode_array(a), "shape": [2, 2]}, "where")


def test_export_writes_valid_files_with_the_suites_inputs(folder):
    manifest = json.loads((folder / ex.MANIFEST).read_text())
    ex.validate("manifest", manifest, "m")
    assert manifest["adapters"] == [ADAPTER] and [c["id"] for c in manifest["cases"]] == CASES
    for name in ("run.js", "package.json", "package-lock.json"):
        assert (folder / name).is_file()
    for entry in manifest["cases"]:
        raw = (folder / entry["file"]).read_bytes()
        assert ex.sha256(raw) == entry["sha256"]
        doc = json.loads(raw)
        ex.validate("case", doc, entry["file"])
        p = materialize(case_by_id(entry["id"]))
        xs = zip(doc["arrays"]["xs"], p.xs, strict=True)
        assert all(ex.decode_array(e, "x").tobytes() == x.tobytes() for e, x in xs)
        assert ex.decode_array(doc["arrays"]["gamma"], "g").tobytes() == p.gamma.tobytes()
        assert doc["momentum_old"] == {0.1: 0.9, 0.5: 0.5}[doc["momentum"]]  # 1 - alpha without binary noise
    with pytest.raises(ExportError, match="already holds an export"):
        export("node", "default", folder, CASES)
    with pytest.raises(ExportError, match="no case"):
        export("node", "default", folder.parent / "other", ["f32-nonsense"])


def test_schema_violations_are_one_line():
    with pytest.raises(ex.ExchangeError) as e:
        ex.validate("observation", {"format": "bnconform-exchange-observation"}, "obs.json")
    assert "\n" not in str(e.value) and str(e.value).startswith("obs.json: not a valid observation file")


def _records(imported, tmp_path):
    run_dir, _ = write_results(imported, tmp_path / "out", Registry([]), report=False)
    return [json.loads(line) for line in (run_dir / "records.jsonl").read_text().splitlines()], run_dir


def test_import_of_a_correct_runtime_passes_and_is_labelled_a_stand_in(folder, tmp_path):
    oracle_runner(folder, ADAPTER, TFJS.convention)
    imported = load(folder)
    (adapter,) = imported.adapters
    assert adapter.name == f"{ADAPTER}[stand-in:oracle]" and "stand-in" in adapter.framework
    records, run_dir = _records(imported, tmp_path)
    verdicts = {r["verdict"] for r in records}
    assert verdicts <= {"pass", "skip"} and sum(r["verdict"] == "pass" for r in records) >= 15
    assert all(r["adapter"] == adapter.name for r in records)
    meta = json.loads((run_dir / "meta.json").read_text())
    rows = {a["name"]: a for a in meta["adapters"]}
    # The real runtimes keep their own rows, not run: a stand-in never fills them.
    assert rows[ADAPTER]["available"] is False
    assert "not run here" in rows["matlab.batchnorm"]["install"]
    assert rows["matlab.dlnetwork"]["available"] is False
    assert meta["source"] == "import"
    # The files are those of `bnconform run`: the same schemas.
    import jsonschema

    for name, docs in (("meta", [meta]), ("record", records)):
        schema = json.loads((ex.SCHEMA_DIR / f"{name}.schema.json").read_text())
        v = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())
        for doc in docs:
            v.validate(doc)


def test_import_finds_and_names_a_planted_deviation(folder, tmp_path):
    # The runtime keeps the unbiased running variance while the declaration says biased.
    oracle_runner(folder, ADAPTER, TFJS.convention.with_(running_var="unbiased"))
    records, _ = _records(load(folder), tmp_path)
    failed = [r for r in records if r["verdict"] == "fail"]
    assert {r["quantity"] for r in failed} >= {"running_var"}
    rv = next(r for r in failed if r["quantity"] == "running_var")
    assert "unbiased" in rv["diagnosis"]["summary"]


def test_partial_and_bad_observation_files(folder):
    oracle_runner(folder, ADAPTER, TFJS.convention)
    obs = folder / ex.OBSERVATIONS / ADAPTER
    (obs / f"{CASES[0]}.json").unlink()  # the runner was stopped before this case
    doc = json.loads((obs / f"{CASES[1]}.json").read_text())
    doc["values"]["y"]["shape"] = [2, 4, 8]
    (obs / f"{CASES[1]}.json").write_text(json.dumps(doc))
    imported = load(folder)
    assert imported.missing == {ADAPTER: [CASES[0]]}
    (line,) = imported.rejected
    assert CASES[1] in line and "values.y has" in line and "\n" not in line
    assert list(imported.adapters[0].observations) == [CASES[2]]  # what is complete is imported
    (obs / f"{CASES[2]}.json").write_text('{"format": "bnconform-exch')
    assert "not JSON" in load(folder).rejected[-1]


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "cases" / f"{CASES[0]}.json").write_text("{}"), "SHA-256 differs from the manifest"),
    (lambda d: (d / ex.MANIFEST).write_text(
        json.dumps({**json.loads((d / ex.MANIFEST).read_text()), "version": 2})),
     "exchange format version 2"),
    (lambda d: (d / ex.MANIFEST).unlink(), "no such file"),
])
def test_unusable_folders_raise_one_line(folder, damage, message):
    damage(folder)
    with pytest.raises(ex.ExchangeError, match=message) as e:
        load(folder)
    assert "\n" not in str(e.value)


def test_cli_import_exit_status_and_one_line_errors(folder, tmp_path):
    r = bnconform("import", folder, "--out", tmp_path / "out")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "no usable observation" in r.stderr
    oracle_runner(folder, ADAPTER, TFJS.convention)
    bad = folder / ex.OBSERVATIONS / ADAPTER / f"{CASES[0]}.json"
    bad.write_text("not json")
    r = bnconform("import", folder, "--out", tmp_path / "out", "--no-report")
    assert r.returncode == 1, r.stderr  # a file was left out
    assert r.stderr.count("left out:") == 1 and "Traceback" not in r.stderr
    assert "pass" in r.stdout and "stand-in:oracle" in r.stdout
    shutil.rmtree(folder / ex.OBSERVATIONS / ADAPTER)
    oracle_runner(folder, ADAPTER, TFJS.convention)
    r = bnconform("import", folder, "--out", tmp_path / "out2")
    assert r.returncode == 0, r.stderr + r.stdout
    html = (tmp_path / "out2" / "index.html").read_text()
    assert "not run here — run `matlab -batch` on the exported folder" in html
    r = bnconform("export", "--runner", "fortran", "--out", tmp_path / "x")
    assert r.returncode == 2 and r.stderr.count("\n") == 1
