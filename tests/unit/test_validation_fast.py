"""jsonschema-rs (the "fast" extra) only says "surely valid"; jsonschema words every violation and decides where
the two would differ (conformance.core.validation._fast). Held here: over every field of real documents
(records of every shape, a run's meta.json, the registry files) replaced by values of every JSON type, removed,
or joined by an unknown key, a document jsonschema rejects is never one jsonschema-rs accepts, and what
bnconform concludes (validation.problems, validation.check) is jsonschema's verdict."""
from __future__ import annotations

import copy
import json
import tomllib

import pytest

from conformance.core import validation
from conformance.core.cases import case_by_id
from conformance.core.engine import evaluate
from conformance.outputs import results

from .clirun import ROOT, bnconform, run_dir
from .fakes import OracleAdapter

pytest.importorskip("jsonschema_rs")

REPLACEMENTS = [None, True, 0, -1, 0.5, 1e308, "", "x", "abc\n", [], [1], {}, {"k": 1}]


def _mutations(doc):
    """`doc` with one change each: every value (at any depth) replaced by each of REPLACEMENTS, every key
    removed, an unknown key added to every object."""
    def paths(node, at=()):
        yield at
        if isinstance(node, dict):
            for k, v in node.items():
                yield from paths(v, at + (k,))
        elif isinstance(node, list):
            for i, v in enumerate(node[:3]):  # the first elements: the items' schema is the same for all
                yield from paths(v, at + (i,))

    def edited(at, change):
        out = copy.deepcopy(doc)
        parent = out
        for k in at[:-1]:
            parent = parent[k]
        change(parent, at[-1])
        return out

    for at in paths(doc):
        if not at:
            continue
        for value in REPLACEMENTS:
            yield edited(at, lambda parent, k, value=value: parent.__setitem__(k, value))
        if isinstance(at[-1], str):
            yield edited(at, lambda parent, k: parent.pop(k))
    for at in paths(doc):
        node = doc
        for k in at:
            node = node[k]
        if isinstance(node, dict):
            yield edited(at + ("__unknown__",), lambda parent, k: parent.__setitem__(k, 1)) if at else \
                {**doc, "__unknown__": 1}


@pytest.fixture(scope="module")
def documents(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("docs")
    docs = []
    w = results.RecordWriter(tmp / "records.jsonl")
    for fake in (OracleAdapter(), OracleAdapter(single="raises", nan_y=True), OracleAdapter(drop=("dx",)),
                 OracleAdapter(raise_with=RuntimeError("boom"))):
        w.write(evaluate(fake, case_by_id("f32-1x4-ax1-T-a0.1-eps1e-05-s0")))
        w.write(evaluate(fake, case_by_id("f32-8x4-ax1-TE-a0.1-eps1e-05-loc1000-s0")))
    w.close()
    records = list(results.read_records(tmp / "records.jsonl", []))
    seen = set()
    for rec in records:  # one record per verdict and set of fields: the shapes a record takes
        key = (rec["verdict"], frozenset(rec))
        if key not in seen:
            seen.add(key)
            docs.append(("record", rec))
    r = bnconform("run", "--frameworks", "fake.oracle", "--tier", "smoke", "--out", tmp / "run", "--no-report")
    assert r.returncode == 0, r.stderr
    docs.append(("meta", json.loads((run_dir(tmp / "run") / "meta.json").read_text())))
    for f in sorted((ROOT / "conformance" / "registry").glob("*.toml"))[:4]:
        docs.append(("registry", tomllib.loads(f.read_text())))
    return docs


def test_jsonschema_rs_never_accepts_what_jsonschema_rejects(documents):
    rejected = 0
    for name, doc in documents:
        fast, slow = validation._fast(name), validation._validator(name)
        assert fast.is_valid(doc) and slow.is_valid(doc), name
        for bad in _mutations(doc):
            if not slow.is_valid(bad):
                rejected += 1
                assert not fast.is_valid(bad), (name, json.dumps(bad)[:300])
    assert rejected > 1000  # the mutations reach the schemas' constraints, not only their top level


def test_the_verdict_and_its_words_are_jsonschemas(documents):
    """A document both accept passes; one jsonschema-rs rejects is judged and worded by jsonschema alone."""
    for name, doc in documents[:3] + documents[-2:]:
        slow = validation._validator(name)
        for bad in _mutations(doc):
            expected = sorted(slow.iter_errors(bad), key=lambda e: list(e.absolute_path))
            got = validation.problems(bad, name)
            assert bool(got) == bool(expected)
            if expected:
                with pytest.raises(validation.Invalid):
                    validation.check(bad, name, "doc.json")
            else:
                validation.check(bad, name, "doc.json")
