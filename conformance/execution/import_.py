"""`bnconform import DIR`: validate what an outside runner wrote into an exchange folder and turn it into
check records, exactly as for an in-process adapter (conformance.core.engine.evaluate with
adapters.imported.ImportedAdapter, whose run() returns the imported Observation), then results and the report.

What is checked, in order: the manifest (JSON Schema, format version); every case file against its SHA-256 in
the manifest, and its inputs against the suite's own (the same case id must mean the same numbers); then each
observation file: JSON, schema, the case it names, the SHA-256 of the case file it says it read, the
runtime's declaration, every array's dtype, size and shape. A file that fails is left out with one line
naming it and why; an absent file is a case that did not run (a partial run imports what is complete).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from adapters.base import Observation
from adapters.imported import RUNTIMES, ImportedAdapter, Runtime

from . import exchange as ex
from ..core.cases import Case, case_by_id
from ..core.engine import applicable, evaluate
from ..core.inputs import checksum, materialize
from ..core.registry import Registry

FAILED = "the runtime threw computing it: "  # prefix of the reason of a quantity listed in "failed"



@dataclass
class Imported:
    """What an exchange folder holds, validated."""

    manifest: dict
    cases: list[Case]
    adapters: list[ImportedAdapter] = field(default_factory=list)  # those with at least one observation
    not_run: list[Runtime] = field(default_factory=list)  # declared by the manifest, no observation at all
    rejected: list[str] = field(default_factory=list)  # one line per unusable observation file
    missing: dict[str, list[str]] = field(default_factory=dict)  # adapter -> case ids without an observation


def expected_shapes(case: Case) -> dict[str, tuple[int, ...]]:
    steps, C = len(case.modes), case.channels
    trains = sum(m == "train" for m in case.modes)
    return {"y": (steps, *case.shape), "running_mean": (steps, C), "running_var": (steps, C),
            "batch_mean": (trains, C), "batch_var": (trains, C), "num_batches_tracked": (steps,),
            "dx": case.shape, "d2x": case.shape, "dgamma": (C,), "dbeta": (C,), "d2gamma": (C,)}


def read_manifest(folder: Path) -> dict:
    doc, _ = ex.read_json(folder / ex.MANIFEST, "the exchange manifest")
    if isinstance(doc, dict) and doc.get("format") == ex.FORMAT and doc.get("version") != ex.VERSION:
        raise ex.ExchangeError(f"{folder / ex.MANIFEST}: exchange format version {doc.get('version')!r}; "
                               f"this bnconform reads version {ex.VERSION}")
    ex.validate("manifest", doc, str(folder / ex.MANIFEST))
    return doc


def _check_case(folder: Path, entry: dict) -> tuple[Case, str]:
    """The suite's case for a manifest entry, after checking the file's checksum and inputs."""
    path = folder / entry["file"]
    doc, raw = ex.read_json(path, "a case file")
    if ex.sha256(raw) != entry["sha256"]:
        raise ex.ExchangeError(f"{path}: SHA-256 differs from the manifest's (the file was changed)")
    ex.validate("case", doc, str(path))
    try:
        case = case_by_id(entry["id"])
    except KeyError:
        raise ex.ExchangeError(f"{path}: case {entry['id']!r} is not in this bnconform's case table "
                               "(export again with this version)") from None
    if doc["case_id"] != case.id or doc["input_checksum"] != checksum(materialize(case)):
        raise ex.ExchangeError(f"{path}: its inputs differ from this bnconform's case {case.id} "
                               "(export again)")
    return case, entry["sha256"]


def _observation(path: Path, adapter: str, case: Case, case_sha: str) -> tuple[Observation, dict]:
    """The observation and the runtime it names. A quantity whose computation threw ("failed") is kept as
    unsupported with the FAILED prefix; evaluate_all turns it into an error."""
    doc, _ = ex.read_json(path, "an observation file")
    ex.validate("observation", doc, str(path))
    if doc["case_id"] != case.id or doc["adapter"] != adapter:
        raise ex.ExchangeError(f"{path}: holds case {doc['case_id']!r} of {doc['adapter']!r}, not "
                               f"{case.id!r} of {adapter!r}")
    if doc["case_sha256"] != case_sha:
        raise ex.ExchangeError(f"{path}: computed from another case file (its case_sha256 is not the "
                               "manifest's)")
    facts = {k: str(v) for k, v in doc["runtime"].items() if v is not None and k != "standin"}
    obs = Observation(facts=facts)
    failed = {q: m for q, m in doc.get("failed", {}).items() if m}
    if doc["skip"]:  # "" is none too: MATLAB's jsonencode has no null
        obs.facts["skip"] = doc["skip"]
        return obs, doc["runtime"]
    if doc["raised"]:
        obs.raised = doc["raised"]
        return obs, doc["runtime"]
    shapes = expected_shapes(case)
    for q, enc in doc["values"].items():
        arr = ex.decode_array(enc, f"{path}: values.{q}")
        if arr.shape != shapes[q]:
            raise ex.ExchangeError(f"{path}: values.{q} has shape {list(arr.shape)}; case {case.id} needs "
                                   f"{list(shapes[q])}")
        obs.put(q, arr, enc["dtype"])
    obs.unsupported.update(doc["unsupported"])
    obs.unsupported.update({q: f"{FAILED}{m}" for q, m in failed.items()})
    missing = [q for q in applicable(case) if q not in obs.values and q not in obs.unsupported]
    if missing:
        raise ex.ExchangeError(f"{path}: no value and no reason for {', '.join(missing)}")
    return obs, doc["runtime"]


def load(folder: str | Path) -> Imported:
    """Validate an exchange folder. Raises ExchangeError when nothing in it can be used."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ex.ExchangeError(f"{folder}: not a folder")
    manifest = read_manifest(folder)
    checked = [_check_case(folder, e) for e in manifest["cases"]]
    out = Imported(manifest=manifest, cases=[c for c, _ in checked])
    for name in manifest["adapters"]:
        runtime = RUNTIMES.get(name)
        if runtime is None:
            raise ex.ExchangeError(f"{folder / ex.MANIFEST}: adapter {name!r} is not declared in "
                                   f"adapters/imported.py (known: {', '.join(RUNTIMES)})")
        observations: dict[str, Observation] = {}
        runtimes: list[dict] = []
        for case, sha in checked:
            path = folder / manifest["observations"] / name / f"{case.id}.json"
            if not path.exists():
                out.missing.setdefault(name, []).append(case.id)
                continue
            try:
                observations[case.id], rt = _observation(path, name, case, sha)
            except ex.ExchangeError as e:
                out.rejected.append(str(e))
                continue
            runtimes.append(rt)
        if not observations:
            out.not_run.append(runtime)
            continue
        versions = {(r["name"], r["version"], r.get("standin") or None) for r in runtimes}
        if len(versions) > 1:
            raise ex.ExchangeError(f"{folder}: observations of {name} come from several runtimes "
                                   f"({sorted(map(str, versions))}); import one run at a time")
        (rt_name, version, standin), = versions
        out.adapters.append(ImportedAdapter(runtime, version, observations, standin=standin))
    return out


def evaluate_all(imported: Imported, registry: Registry, on_records) -> None:
    """Records for every (adapter, case) observed, through the engine as for an in-process adapter."""
    from ..explain.diagnose import diagnose
    from ..explain.infer import evidence

    for adapter in imported.adapters:
        for case in imported.cases:
            if case.id in adapter.observations:
                records = evaluate(adapter, case, registry, diagnose=diagnose, evidence=evidence)
                on_records(adapter, [_failed(r, adapter, registry) for r in records])


def _failed(rec: dict, adapter: ImportedAdapter, registry: Registry) -> dict:
    """A quantity the runtime threw on is an error (xfail when registered), not a skip: the engine skips what
    an observation does not hold, and the exchange format says why it does not."""
    if rec["verdict"] != "skip" or not rec["reason"].startswith(FAILED):
        return rec
    entry = registry.match(adapter.name, adapter.version, rec["case"], rec["quantity"])
    rec.update(verdict="xfail" if entry else "error", message=rec["reason"],
               registry=entry.as_dict() if entry else None)
    if entry:
        rec["reason"] = f"registered: {entry.reason}"
    return rec


def adapter_meta(adapter: ImportedAdapter | None, runtime: Runtime, cases: list[Case]) -> dict:
    """The adapter's entry in meta.json (the shape runmeta.adapter_info writes for in-process adapters)."""
    planned = sum(len(applicable(c)) for c in cases)
    if adapter is None:
        return {"name": runtime.name, "family": runtime.runner, "available": False,
                "missing": [runtime.missing], "install": runtime.not_run, "api": runtime.api,
                "framework": runtime.framework, "version": None, "convention": runtime.convention.knobs(),
                "source": runtime.source, "precision": {}, "planned": planned}
    return {"name": adapter.name, "family": runtime.runner, "available": True, "missing": [],
            "install": "", "api": adapter.api, "framework": adapter.framework, "version": adapter.version,
            "convention": adapter.convention.knobs(), "source": adapter.source,
            "precision": {dt: adapter.precision(materialize(c)).describe()
                          for dt, c in {c.dtype: c for c in cases if c.dtype in adapter.dtypes}.items()},
            "planned": planned}


def write_results(imported: Imported, out: str | Path, registry: Registry, report: bool = True):
    """Results (records.jsonl, meta.json, analysis.json) under OUT/runs/<run-id>/ and the report at
    OUT/index.html, like `bnconform run`. Returns (run directory, verdict counts)."""
    import json
    from collections import Counter

    from ..outputs import results
    from ..outputs import runmeta
    from ..core.engine import input_checksum

    manifest, cases = imported.manifest, imported.cases
    flags = {"folder_runner": manifest["runner"], "exported": manifest["created"],
             "exported_by": manifest.get("bnconform"), "rejected_files": len(imported.rejected),
             "missing_observations": sum(len(v) for v in imported.missing.values())}
    meta = runmeta.base(source="import", tier=manifest["tier"], selection=",".join(manifest["adapters"]),
                        specs=[], cases=cases, flags=flags, checksum=input_checksum(cases))
    # Every declared outside runtime without observations here gets its row, saying how to get them. A
    # stand-in never fills the real runtime's row: its adapter has another name.
    have = {a.name for a in imported.adapters}
    meta["adapters"] = [adapter_meta(None, r, cases) for r in RUNTIMES.values() if r.name not in have]
    meta["adapters"] += [adapter_meta(a, a.runtime, cases) for a in imported.adapters]
    run_dir = results.claim_run_dir(Path(out) / "runs", meta["run_id"])  # never another run's directory
    meta["run_id"] = run_dir.name
    results.write_meta(run_dir, meta)
    writer = results.RecordWriter(run_dir / results.RECORDS)
    counts: dict[str, Counter] = {a.name: Counter() for a in imported.adapters}

    def take(adapter, records):
        writer.write(records)
        counts[adapter.name].update(r["verdict"] for r in records)

    evaluate_all(imported, registry, take)
    writer.close()
    total = sum(counts.values(), Counter())
    meta.update(finished=runmeta.now(), status="complete", counts=dict(sorted(total.items())),
                checks=writer.count, versions={a.framework: a.version for a in imported.adapters})
    for a in meta["adapters"]:
        if a["name"] in counts:
            a["cases_done"] = len(next(x for x in imported.adapters if x.name == a["name"]).observations)
            a["counts"] = dict(sorted(counts[a["name"]].items()))
    selected = {a.name: a.version for a in imported.adapters}
    meta["stale_registry"] = [e.as_dict() for e in registry.stale(selected)]
    results.write_meta(run_dir, meta)
    from ..explain import analysis

    loaded = results.load([run_dir])
    tables = analysis.tables(loaded.records)
    text = json.dumps(results.sanitize({"tables": tables}), indent=1) + "\n"
    results.write_atomic(run_dir / results.ANALYSIS, text)
    if report:
        from ..outputs import report as report_mod

        report_mod.write(results.load([run_dir]), Path(out) / "index.html")
    return run_dir, counts

