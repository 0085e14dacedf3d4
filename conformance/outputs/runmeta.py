"""What meta.json says about a run: where, on what, with which versions, adapters and flags.

Everything here runs in the parent process and imports no framework: adapter metadata comes from the
catalogue (`load` imports the adapter module only), versions from installed distributions' metadata until a
worker reports the version it actually imported.
"""
from __future__ import annotations

import hashlib
import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from ..core.engine import SCHEMA_VERSION, applicable
from ..core.install import hint as install_hint

ROOT = Path(__file__).resolve().parents[2]


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def run_id(started: str, tier: str, selection: list[str], checksum: str) -> str:
    """<UTC time>-<tier>-<hash of what ran>: two runs of the same selection on the same inputs differ only
    in the timestamp."""
    stamp = started.replace("-", "").replace(":", "").removesuffix("Z")
    digest = hashlib.sha256("\n".join([tier, checksum, *sorted(selection)]).encode()).hexdigest()[:8]
    return f"{stamp}-{tier}-{digest}"


def cpu() -> dict:
    model = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"model": model or platform.machine(), "count": os.cpu_count() or 1}


def git() -> dict:
    def out(*args):
        try:
            r = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return r.stdout.strip() if r.returncode == 0 else None

    sha = out("rev-parse", "HEAD")
    status = out("status", "--porcelain", "--untracked-files=no") if sha else None
    return {"sha": sha, "dirty": None if status is None else bool(status)}


def installed() -> list[str]:
    """Installed distributions as `name==version`, sorted: what `pip freeze` lists, without running pip."""
    seen = {}
    for d in metadata.distributions():
        name = d.metadata.get("Name")
        if name:
            seen.setdefault(name.lower(), f"{name}=={d.version}")
    return [seen[k] for k in sorted(seen)]


def dist_version(name: str) -> str | None:
    for candidate in (name, name.replace("_", "-"), {"tensorflow": "tensorflow-cpu", "haiku": "dm-haiku"}.get(name)):
        if candidate:
            try:
                return metadata.version(candidate)
            except metadata.PackageNotFoundError:
                continue
    return None


def adapter_info(spec, cases) -> dict:
    """An adapter's entry in meta.json: availability, install hint, declared convention, precision."""
    missing = spec.missing()
    info = {"name": spec.name, "family": spec.family, "available": not missing, "missing": missing,
            "install": install_hint(spec.install), "api": None, "framework": None, "version": None,
            "convention": None,
            "source": None, "precision": {}, "planned": sum(len(applicable(c)) for c in cases)}
    if missing:
        return info
    from adapters.base import OnPath

    from ..core.catalogue import load
    from ..core.inputs import materialize

    adapter = load(spec.name)
    conv = adapter.convention
    info.update(api=adapter.api, framework=adapter.framework, version=dist_version(adapter.framework),
                convention={k: v for k, v in conv.knobs().items()}, source=adapter.source or None,
                paths_declared=[{"name": p.name, "what": p.what, "tier": p.tier,
                                 "convention": {k: v for k, v in (p.convention or conv).differences(conv).items()}}
                                for p in adapter.paths])
    for case in {c.dtype: c for c in reversed(cases)}.values():
        try:
            info["precision"][case.dtype] = OnPath(adapter).precision(materialize(case)).describe()
        except Exception as e:  # noqa: BLE001  metadata must not stop a run
            info["precision"][case.dtype] = f"unknown ({type(e).__name__}: {e})"
    return info


def base(*, source: str, tier: str, selection: str, specs, cases, flags: dict, checksum: str) -> dict:
    started = now()
    return {
        "schema": SCHEMA_VERSION,
        "run_id": run_id(started, tier, [s.name for s in specs], checksum),
        "source": source,
        "bnconform": dist_version("bnconform"),
        "status": "running",
        "started": started,
        "finished": None,
        "tier": tier,
        "selection": selection,
        "cases": len(cases),
        "input_checksum": checksum,
        "flags": flags,
        "argv": list(sys.argv),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpu": cpu(),
        "git": git(),
        "pip_freeze": installed(),
        "versions": {},
        "adapters": [adapter_info(s, cases) for s in specs],
        "counts": {},
        "checks": 0,
        "stale_registry": None,
        "worker": "main",
    }
