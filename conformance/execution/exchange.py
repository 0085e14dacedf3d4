"""The exchange format (version 1): how cases go out to runtimes the suite cannot drive in-process, and how
their observations come back. Specified in docs/exchange.md; the JSON Schemas are
conformance/schema/exchange-{manifest,case,observation}.schema.json.

A folder written by `bnconform export`:
    manifest.json                       format, version, runner, tier, adapters, every file with its SHA-256
    cases/<case-id>.json                one case: hyperparameters and its input arrays
    <runner files>                      run.js, package.json, package-lock.json (node); bnconform_run.m
    observations/<adapter>/<case-id>.json   written by the runner, one per case, each complete or absent

Arrays are {"dtype", "shape", "data"}: `data` is the base64 of the array's bytes in C (row-major) order,
little-endian. Why not nested JSON lists of decimals: MATLAB's jsonencode writes about 15 significant digits
(a float64 needs 17 to round-trip), JSON has no NaN or Inf, and a float32 written as a decimal is read back
as a float64 that a runtime must round again. Bytes are exact in both directions, and every runtime decodes
them with what it ships (Node's Buffer, MATLAB's matlab.net.base64decode + typecast, NumPy's frombuffer).
"""
from __future__ import annotations

import base64
import hashlib
import json
from functools import lru_cache
from pathlib import Path

import numpy as np

FORMAT = "bnconform-exchange"
CASE_FORMAT = "bnconform-exchange-case"
OBSERVATION_FORMAT = "bnconform-exchange-observation"
VERSION = 1
MANIFEST = "manifest.json"
OBSERVATIONS = "observations"
SCHEMA_DIR = Path(__file__).parent.parent / "schema"
RUNNER_DIR = Path(__file__).parent.parent / "runners"
# Element types an array may carry, with their little-endian NumPy dtypes.
DTYPES = {"float64": "<f8", "float32": "<f4", "int64": "<i8", "int32": "<i4"}


class ExchangeError(Exception):
    """A file of an exchange folder that cannot be used: one line naming the file and the problem."""


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def encode_array(a: np.ndarray, dtype: str = "float64") -> dict:
    arr = np.ascontiguousarray(np.asarray(a), dtype=DTYPES[dtype])
    return {"dtype": dtype, "shape": list(arr.shape), "data": base64.b64encode(arr.tobytes()).decode("ascii")}


def decode_array(enc: dict, where: str) -> np.ndarray:
    """The array as float64 (its own dtype is enc['dtype']); a size that does not match its shape raises."""
    try:
        raw = base64.b64decode(enc["data"], validate=True)
    except (ValueError, TypeError):
        raise ExchangeError(f"{where}: 'data' is not base64") from None
    dt = np.dtype(DTYPES[enc["dtype"]])
    count = int(np.prod(enc["shape"], dtype=np.int64))
    if len(raw) != count * dt.itemsize:
        raise ExchangeError(f"{where}: {len(raw)} bytes of {enc['dtype']} for shape {enc['shape']} "
                            f"({count * dt.itemsize} expected)")
    return np.frombuffer(raw, dtype=dt).astype(np.float64).reshape(enc["shape"])


@lru_cache(maxsize=None)
def validator(kind: str):
    """A JSON Schema validator for 'manifest', 'case' or 'observation'."""
    import jsonschema

    schema = json.loads((SCHEMA_DIR / f"exchange-{kind}.schema.json").read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def validate(kind: str, doc, where: str) -> None:
    """Raise ExchangeError with the first schema violation (path and message) in one line."""
    err = next(iter(sorted(validator(kind).iter_errors(doc), key=lambda e: list(e.absolute_path))), None)
    if err is not None:
        at = "/".join(str(p) for p in err.absolute_path) or "(top level)"
        msg = err.message if len(err.message) < 160 else err.message[:157] + "..."
        raise ExchangeError(f"{where}: not a valid {kind} file: at {at}: {msg}")


def read_json(path: Path, what: str):
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ExchangeError(f"{path}: no such file ({what})") from None
    except OSError as e:
        raise ExchangeError(f"{path}: cannot read {what}: {e.strerror or e}") from None
    try:
        return json.loads(data.decode("utf-8")), data
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ExchangeError(f"{path}: not JSON ({what}): {e}") from None
