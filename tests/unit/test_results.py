"""Results on disk: the JSON Schemas hold for REAL output of `bnconform run` and of the pytest plugin (with
pytest-xdist), the two are interchangeable and merge, records are written crash-safe, non-finite numbers
stay strict JSON, and the schemas themselves are valid."""
from __future__ import annotations

import json
import os
from pathlib import Path

import jsonschema
import pytest

from conformance.outputs import results
from conformance.core.cases import cases_for_tier
from conformance.core.engine import SCHEMA_VERSION, evaluate

from .clirun import FAKES, ROOT, bnconform, run_dir
from .fakes import OracleAdapter

pytest_plugins = ["pytester"]
SCHEMAS = ROOT / "conformance" / "schema"
TEST = (ROOT / "tests" / "conformance" / "test_conformance.py").read_text()


def _validator(name):
    schema = json.loads((SCHEMAS / f"{name}.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())


def validate_dir(d: Path) -> list[dict]:
    rv, mv = _validator("record"), _validator("meta")
    lines = (d / "records.jsonl").read_text().splitlines()
    assert lines
    out = []
    for i, line in enumerate(lines, 1):
        rec = json.loads(line)
        errors = sorted(rv.iter_errors(rec), key=str)
        assert not errors, f"{d}/records.jsonl:{i}: {errors[0].message} at {list(errors[0].path)}"
        out.append(rec)
    meta = json.loads((d / "meta.json").read_text())
    errors = list(mv.iter_errors(meta))
    assert not errors, f"{d}/meta.json: {errors[0].message} at {list(errors[0].path)}"
    return out


def test_schemas_are_valid_and_carry_the_version():
    for name in ("record", "meta", "analysis"):
        schema = json.loads((SCHEMAS / f"{name}.schema.json").read_text())
        jsonschema.Draft202012Validator.check_schema(schema)
        assert schema["schema"] == SCHEMA_VERSION


def test_cli_output_validates(tmp_path):
    """Real files from `bnconform run`: pass, fail and error records, a not-installed adapter in meta.json."""
    r = bnconform("run", "--frameworks", "fake.oracle,fake.wrong_var,fake.killer,fake.absent", "--tier", "smoke",
                  "--out", tmp_path, "--no-report", BNCONFORM_FAKE_KILL=cases_for_tier("smoke")[0].id)
    assert r.returncode == 1, r.stderr
    recs = validate_dir(run_dir(tmp_path))
    assert {"pass", "fail", "error"} <= {x["verdict"] for x in recs}


@pytest.mark.parametrize("case_id", [
    "f32-8x4-ax1-TE-a0.1-eps1e-05-loc1000-s0",  # characterization
    "f32-1x4-ax1-T-a0.1-eps1e-05-s0",  # one element per channel: edge records
    "f32-4x3x2x3-ax1-TE-a0.1-eps1e-05-constant-channel-s0",
])
@pytest.mark.parametrize("fake", [OracleAdapter(), OracleAdapter(single="raises", nan_y=True),
                                  OracleAdapter(raise_with=RuntimeError("boom")), OracleAdapter(drop=("dx",))],
                         ids=["oracle", "raises-nan", "raising", "dropping"])
def test_engine_records_of_every_shape_validate(case_id, fake, tmp_path):
    """Records the engine makes for edge cases (characterized, n = 1, errors, skips, NaN) validate once written."""
    from conformance.core.cases import case_by_id

    w = results.RecordWriter(tmp_path / "records.jsonl")
    w.write(evaluate(fake, case_by_id(case_id)))
    w.close()
    rv = _validator("record")
    for rec in results.read_records(tmp_path / "records.jsonl", []):
        rv.validate(rec)


def test_analysis_contract_validates_an_example():
    example = {"schema": 1, "tables": [{"id": "defaults-hazard", "title": "Defaults hazard", "description": "d",
                                        "columns": ["adapter", "momentum", "eps"],
                                        "rows": [["torch.nn.BatchNorm", 0.1, 1e-5], ["keras", 0.01, None]]}]}
    _validator("analysis").validate(example)


@pytest.fixture
def suite(pytester, monkeypatch):
    pytester.makeconftest('pytest_plugins = ["conformance.execution.plugin"]\n')
    pytester.makepyfile(test_conformance=TEST)
    monkeypatch.setenv("PYTHONPATH", str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for var in list(os.environ):
        if var.startswith("BNCONFORM_"):
            monkeypatch.delenv(var)
    monkeypatch.setenv("BNCONFORM_EXTRA_ADAPTERS", FAKES)
    return pytester


def _comparable(rec):
    return {k: v for k, v in rec.items() if k not in ("seconds", "harness_seconds", "nodeid")}


def test_pytest_and_cli_results_are_interchangeable(suite, tmp_path):
    """The same selection through pytest (two xdist workers, parts merged) and through `bnconform run`: the
    same records but for timing and node ids, both valid; the two result sets merge and render together."""
    res = tmp_path / "pytest-results"
    r = suite.runpytest_subprocess("--bn-frameworks", "fake.wrong_var,fake.oracle", "--bn-tier", "smoke",
                                   f"--bn-results={res}", "-p", "no:cacheprovider", "-n", "2")
    outcomes = r.parseoutcomes()
    assert outcomes.get("failed", 0) > 0 and outcomes.get("passed", 0) > 0
    assert not (res / "parts").exists(), "the controller merges the workers' parts"
    from_pytest = validate_dir(res)
    meta = json.loads((res / "meta.json").read_text())
    assert meta["source"] == "pytest" and meta["status"] == "complete" and meta["worker"].startswith("merged:")
    assert all(x["nodeid"].startswith("test_conformance.py::test_batchnorm[") for x in from_pytest)

    cli = tmp_path / "cli"
    c = bnconform("run", "--frameworks", "fake.wrong_var,fake.oracle", "--tier", "smoke", "--out", cli, "--no-report")
    assert c.returncode == 1, c.stderr
    from_cli = validate_dir(run_dir(cli))
    assert sorted(map(_comparable, from_pytest), key=lambda x: x["check_id"]) == \
        sorted(map(_comparable, from_cli), key=lambda x: x["check_id"])
    cli_meta = json.loads((run_dir(cli) / "meta.json").read_text())
    assert cli_meta["input_checksum"] == meta["input_checksum"]
    assert cli_meta["run_id"].split("-", 1)[1] == meta["run_id"].split("-", 1)[1]  # same but for the time

    rs = results.load([res, run_dir(cli)])
    assert len(rs.records) == len(from_cli) and len(rs.metas) == 2
    out = tmp_path / "merged.html"
    m = bnconform("report", res, run_dir(cli), "--out", out)
    assert m.returncode == 0, m.stderr
    assert out.is_file() and "appear in more than one result set (0 with different results)" in m.stderr


def test_xdist_loadgroup_gives_a_worker_a_whole_family_in_one_process(suite, tmp_path, monkeypatch):
    """Under `-n 2 --dist loadgroup` the checks of a framework family are one xdist group: the worker given it
    sets both adapters up in ONE process (the family's imports paid once, as `bnconform run` does); an adapter
    of no family is a group of its own."""
    pids = tmp_path / "pids"
    pids.mkdir()
    monkeypatch.setenv("BNCONFORM_FAKE_PIDS", str(pids))
    res = tmp_path / "res"
    r = suite.runpytest_subprocess("--bn-frameworks", "fake.family.oracle,fake.family.killer,fake.oracle",
                                   "--bn-tier", "smoke", f"--bn-results={res}", "-p", "no:cacheprovider",
                                   "-n", "2", "--dist", "loadgroup")
    assert r.parseoutcomes().get("failed", 0) == 0
    setups = sorted(p.name for p in pids.iterdir())
    assert len(setups) == 2 and len({p.rsplit(".", 1)[1] for p in setups}) == 1, setups
    recs = validate_dir(res)
    assert {x["adapter"] for x in recs} == {"fake.family.oracle", "fake.family.killer", "fake.oracle"}
    assert len({x["check_id"] for x in recs}) == len(recs)


def test_pytest_results_without_xdist(suite, tmp_path):
    res = tmp_path / "res"
    (res / "parts" / "gw7").mkdir(parents=True)  # a previous session's leftovers are cleared
    (res / "parts" / "gw7" / "records.jsonl").write_text("garbage\n")
    r = suite.runpytest_subprocess("--bn-frameworks", "fake.oracle", "--bn-tier", "smoke", f"--bn-results={res}",
                                   "-p", "no:cacheprovider")
    r.assert_outcomes(passed=sum(1 for _ in validate_dir(res)))
    assert not (res / "parts").exists()
    assert json.loads((res / "meta.json").read_text())["worker"] == "main"


def test_records_are_appended_whole_and_strict_json(tmp_path):
    recs = []
    for case in cases_for_tier("smoke"):
        recs += evaluate(OracleAdapter(nan_y=True), case)
    recs[0]["metrics"] = {**(recs[0]["metrics"] or {}), "ratio": float("inf")}
    w = results.RecordWriter(tmp_path / "records.jsonl")
    w.write(recs[:3])
    w.write(recs[3:])
    w.close()
    text = (tmp_path / "records.jsonl").read_text()
    assert text.endswith("\n") and len(text.splitlines()) == len(recs)
    for line in text.splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    back = results.read_records(tmp_path / "records.jsonl", [])
    assert back[0]["metrics"]["ratio"] == "inf" and results.number(back[0]["metrics"]["ratio"]) == float("inf")
    assert [r["check_id"] for r in back] == [r["check_id"] for r in recs]


def test_meta_is_replaced_atomically(tmp_path):
    results.write_meta(tmp_path, {"schema": 1, "a": 1})
    results.write_meta(tmp_path, {"schema": 1, "a": 2})
    assert json.loads((tmp_path / "meta.json").read_text())["a"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["meta.json"]  # no temporary file left behind
