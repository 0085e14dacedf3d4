"""Results on disk: one JSON record per check (JSONL) and a meta.json describing the run."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_results(directory, records: list[dict], **meta) -> Path:
    d = Path(directory)
    worker = meta.get("worker", "main")
    name = "records.jsonl" if worker == "main" else f"records-{worker}.jsonl"
    path = d / name
    _atomic_write(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
    _atomic_write(d / ("meta.json" if worker == "main" else f"meta-{worker}.json"), json.dumps(meta, indent=2))
    return path
