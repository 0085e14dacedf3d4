"""`bnconform export`: write a tier's cases, a runner for an outside runtime and a manifest with checksums
into a folder (the exchange format: conformance/execution/exchange.py, docs/exchange.md)."""
from __future__ import annotations

import json
from pathlib import Path

from adapters.imported import RUNNERS, RUNTIMES
from reference.convention import _complement

from . import exchange as ex
from ..core.cases import Case, cases_for_tier
from ..core.engine import applicable, input_checksum
from ..core.inputs import checksum, materialize
from ..outputs.runmeta import dist_version, now

# Files each runner needs, relative to conformance/runners/<runner>/ (copied into the folder's top level).
RUNNER_FILES = {
    "node": ("run.js", "package.json", "package-lock.json"),
    "matlab": ("bnconform_run.m",),
    "json": (),
}
HOW_TO_RUN = {
    "node": "cd DIR && npm ci && node run.js .   (or: NODE_PATH=<a node_modules with @tensorflow/tfjs> node "
            "DIR/run.js DIR)",
    "matlab": "matlab -batch \"addpath('DIR'); bnconform_run('DIR')\"",
    "json": "a runner of your own: read manifest.json and cases/, write observations/<adapter>/<case>.json "
            "(docs/exchange.md)",
}


class ExportError(Exception):
    """The folder cannot be written (one line for the user)."""


def case_document(case: Case) -> dict:
    p = materialize(case)
    enc = ex.encode_array
    return {
        "format": ex.CASE_FORMAT, "version": ex.VERSION, "case_id": case.id, "note": case.note,
        "tier": case.tier,
        "dtype": case.dtype, "shape": list(p.shape), "axis": p.axis, "modes": list(p.modes),
        "momentum": p.momentum,
        "momentum_old": None if p.momentum is None else _complement(p.momentum),
        "eps": p.eps, "use_defaults": p.use_defaults, "affine": p.affine,
        "track_running_stats": p.track_running_stats, "memory_format": p.memory_format,
        "quantities": applicable(case), "input_checksum": checksum(p),
        "arrays": {
            "xs": [enc(x) for x in p.xs],
            "gamma": enc(p.gamma) if p.affine else None,
            "beta": enc(p.beta) if p.affine else None,
            "running_mean": enc(p.running_mean), "running_var": enc(p.running_var),
            "dy": enc(p.dy), "v": enc(p.v),
        },
    }


def _write(path: Path, data: bytes) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return ex.sha256(data)


def export(runner: str, tier: str, out: str | Path, case_ids: list[str] | None = None) -> Path:
    """Write the folder; returns the manifest's path. Refuses a folder that already holds an export."""
    if runner not in RUNNER_FILES:
        raise ExportError(f"unknown runner {runner!r}; choose one of: {', '.join(RUNNER_FILES)}")
    cases = cases_for_tier(tier)
    if case_ids:
        by_id = {c.id: c for c in cases}
        unknown = [i for i in case_ids if i not in by_id]
        if unknown:
            raise ExportError(f"no case {unknown[0]!r} in tier {tier!r} (bnconform cases --tier {tier})")
        cases = [by_id[i] for i in case_ids]
    out = Path(out)
    if (out / ex.MANIFEST).exists():
        raise ExportError(f"{out} already holds an export ({ex.MANIFEST}); choose an empty folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        entries = []
        for case in cases:
            rel = f"cases/{case.id}.json"
            data = json.dumps(case_document(case), sort_keys=True).encode("utf-8")
            entries.append({"id": case.id, "file": rel, "sha256": _write(out / rel, data)})
        files = []
        for name in RUNNER_FILES[runner]:
            data = (ex.RUNNER_DIR / runner / name).read_bytes()
            files.append({"path": name, "sha256": _write(out / name, data)})
        (out / ex.OBSERVATIONS).mkdir(exist_ok=True)
        adapters = list(RUNNERS.get(runner, ())) if runner != "json" else sorted(RUNTIMES)
        manifest = {
            "format": ex.FORMAT, "version": ex.VERSION, "runner": runner, "tier": tier,
            "created": now(), "bnconform": dist_version("bnconform"),
            "input_checksum": input_checksum(cases), "adapters": adapters,
            "how_to_run": HOW_TO_RUN[runner], "observations": ex.OBSERVATIONS,
            "cases": entries, "files": files,
        }
        ex.validate("manifest", manifest, str(out / ex.MANIFEST))
        path = out / ex.MANIFEST
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        tmp.replace(path)  # the manifest last: a folder without one is not an export
    except OSError as e:
        raise ExportError(f"cannot write {out}: {e.strerror or e}") from None
    return path

