"""The execution-path dimension: selection, work items, ids, records, registry entries and stale detection per path,
and version-1 results read as eager. No framework needed."""
from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from adapters.base import EAGER_PATH, PathSpec
from conformance.core import paths
from conformance.core.cases import cases_for_tier
from conformance.core.engine import check_id
from conformance.core.registry import Registry, _parse_entry
from conformance.outputs.results import _parse_record

from .clirun import bnconform

DECLARED = (EAGER_PATH, PathSpec("compile", "compiled", tier="nightly"), PathSpec("fold-eval", "folded"),
            PathSpec("compile-aot", "decomposed"))
SCHEMAS = Path(__file__).resolve().parents[2] / "conformance" / "schema"


def names(specs):
    return [p.name for p in specs]


def test_items_round_trip_and_eager_ids_are_unchanged():
    assert paths.item("f32-4x3-x", "eager") == "f32-4x3-x"
    assert paths.split(paths.item("f32-4x3-x", "compile")) == ("f32-4x3-x", "compile")
    assert paths.split("f32-4x3-x") == ("f32-4x3-x", "eager")
    assert check_id("torch.nn.BatchNorm", "c", "y") == "torch.nn.BatchNorm::c::y"  # ids from before paths
    assert check_id("torch.nn.BatchNorm", "c", "y", "compile") == "torch.nn.BatchNorm@compile::c::y"


@pytest.mark.parametrize("selection, tier, expected", [
    ("default", "default", ["eager", "fold-eval", "compile-aot"]),  # nightly paths wait for the nightly tier
    ("default", "nightly", ["eager", "compile", "fold-eval", "compile-aot"]),
    ("default", "smoke", ["eager"]),
    (None, "default", ["eager", "fold-eval", "compile-aot"]),
    ("all", "smoke", ["eager", "compile", "fold-eval", "compile-aot"]),
    ("eager", "nightly", ["eager"]),
    ("compile*", "default", ["compile", "compile-aot"]),
    ("eager,fold-eval", "default", ["eager", "fold-eval"]),
])
def test_which_paths_a_selection_runs(selection, tier, expected):
    assert names(paths.chosen(DECLARED, selection, tier)) == expected


@pytest.mark.parametrize("selection, message", [
    ("compiel", "unknown execution path 'compiel'"),
    ("all,compile", "'all' cannot be combined"),
])
def test_a_selection_naming_nothing_is_refused(selection, message):
    with pytest.raises(paths.PathError, match=message):
        paths.check_selection(selection, [DECLARED])


def test_other_paths_run_the_marked_cases_except_in_nightly():
    default = cases_for_tier("default")
    on_path = paths.cases_on("fold-eval", default, "default")
    assert on_path and all(c.paths for c in on_path) and len(on_path) < len(default)
    assert paths.cases_on("eager", default, "default") == default
    nightly = cases_for_tier("nightly")
    assert paths.cases_on("fold-eval", nightly, "nightly") == [c for c in nightly if not c.shards]
    # the path cases cover training, inference, sequences, float64, 16-bit and a cumulative average
    assert {c.dtype for c in on_path} >= {"float64", "float32", "bfloat16"}
    assert any(c.momentum is None for c in on_path) and any(c.modes == ("eval",) for c in on_path)
    items = paths.items(DECLARED, "default", "default", default)
    assert len(items) == len(default) + 2 * len(on_path)


def entry(**kw):
    raw = {"id": "e", "adapter": "torch.*", "cases": ["*T*"], "quantities": ["y"], "reason": "why",
           "action": "xfail", **kw}
    return _parse_entry(raw, "test", "test.toml")


def test_registry_entries_name_paths_and_exclude_cases():
    e = entry(paths=["export-onnx"], except_cases=["*-notrack-*"])
    assert e.matches("torch.nn.BatchNorm", "2.13.0", "f32-T2-s0", "y", "export-onnx")
    assert not e.matches("torch.nn.BatchNorm", "2.13.0", "f32-T2-s0", "y", "eager")
    assert not e.matches("torch.nn.BatchNorm", "2.13.0", "f32-T2-notrack-s0", "y", "export-onnx")
    every = entry()
    assert every.paths == ("*",) and every.matches("torch.nn.BatchNorm", "1", "f32-T2-s0", "y", "compile")


def test_an_entry_for_a_path_that_did_not_run_is_not_stale():
    reg = Registry([entry(paths=["export-onnx"])])
    assert reg.stale({"torch.nn.BatchNorm": "2.13.0"}, {}, {"torch.nn.BatchNorm": {"eager"}}) == []
    stale = reg.stale({"torch.nn.BatchNorm": "2.13.0"}, {}, {"torch.nn.BatchNorm": {"eager", "export-onnx"}})
    assert [e.id for e in stale] == ["e"]


def test_version_1_records_read_as_eager():
    from conformance.core.cases import CASES
    from conformance.core.engine import records_for

    from .fakes import OracleAdapter

    # a whole version-1 record (it is checked against the schema after the upgrade): today's, less the path
    today = records_for(OracleAdapter("a"), next(iter(CASES.values())), "skip", "because")[0]
    v1 = {**{k: v for k, v in today.items() if k not in ("path", "facts")}, "schema": 1}
    rec = _parse_record(json.dumps(v1), "records.jsonl:1")
    assert rec["schema"] == 2 and rec["path"] == "eager"


def test_records_with_a_path_and_facts_follow_the_schema():
    schema = json.loads((SCHEMAS / "record.schema.json").read_text())
    from conformance.core.engine import records_for
    from conformance.core.cases import CASES

    from .fakes import OracleAdapter

    case = next(c for c in CASES.values() if c.paths)
    adapter = OracleAdapter("fake.oracle")
    adapter.paths = DECLARED
    for rec in records_for(adapter, case, "skip", "because", path="fold-eval"):
        rec["facts"] = {"folded_into": "Conv2d"}
        jsonschema.validate(rec, schema)
        assert rec["path"] == "fold-eval" and "@fold-eval::" in rec["check_id"]
    bad = dict(rec, path="")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


def test_run_refuses_an_unknown_path_in_one_line(tmp_path):
    p = bnconform("run", "--frameworks", "fake.oracle", "--paths", "compiel", "--out", tmp_path)
    assert p.returncode == 2, p.stderr
    assert p.stderr.count("\n") == 1 and "unknown execution path 'compiel'" in p.stderr
    assert not (tmp_path / "runs").exists()


def test_sharded_cases_run_on_eager_and_sharded_paths_only():
    default = cases_for_tier("default")
    sharded = [c for c in default if c.shards]
    assert sharded and any(len(set(c.shards)) > 1 for c in sharded), "an unequal split must be in the default tier"
    assert all(c in paths.cases_on("eager", default, "default") for c in sharded)
    assert not any(c.shards for c in paths.cases_on("vmap", default, "default"))
    on_sync = paths.cases_on("sync", default, "default", sharded=True)
    assert set(sharded) <= set(on_sync) and any(not c.shards for c in on_sync)
    assert all(f"-sh{'+'.join(map(str, c.shards))}-" in c.id for c in sharded)
    assert "-sh" not in default[0].id


def test_shards_must_sum_to_the_batch():
    from conformance.core.cases import Case

    with pytest.raises(ValueError, match="sum to the batch size 8"):
        Case((8, 4), shards=(5, 2))
