"""The adapter catalogue as the engine sees it: `adapters.SPECS` plus adapters declared outside the package,
and the one name resolver every command uses (run, port, conventions, explain, the pytest options).

A name is an adapter name, a family ("torch", "jax", ...), a glob ("keras.*") or an alias people type
(`ALIASES`: "pytorch", "tensorflow", "flax", ...); a selection is a comma-separated list of them. Every
unknown name raises KeyError with the same message listing the choices (`choices()`). Where ONE adapter is
needed (`port`), `resolve` takes the first adapter of the selection: the catalogue's order puts each framework's
default API first (torch.nn.BatchNorm, keras.tensorflow, flax.linen, equinox.ema, onnxruntime).

`BNCONFORM_EXTRA_ADAPTERS` names importable modules (comma separated), each with a `SPECS` tuple of
`adapters.AdapterSpec`. Their adapters are selectable by name, family or glob like the bundled ones, run in
worker processes like them (the variable is inherited by the workers), and are never part of "all": a
user's own adapter, or a test's fake one (tests/unit/fake_catalogue.py), without editing `adapters/`.
Imports no framework.
"""
from __future__ import annotations

import fnmatch
import importlib
import os

import adapters
from adapters import AdapterSpec

ENV = "BNCONFORM_EXTRA_ADAPTERS"

# Names people type -> the selection they mean. The first adapter of each is what a single-adapter command
# (port) uses. "tensorflow" means Keras first: since TF 2.16 tf.keras.layers.BatchNormalization IS Keras 3.
ALIASES = {
    "pytorch": "torch",
    "torch.functional": "torch.nn.functional.batch_norm",
    "tensorflow": "keras.tensorflow,tf",
    "keras": "keras.*", "keras3": "keras.*",
    "keras-tf": "keras.tensorflow", "keras-jax": "keras.jax", "keras-torch": "keras.torch",
    "tf_keras": "tf_keras.*", "tf-keras": "tf_keras.*", "keras2": "tf_keras.*",
    "tf.fused": "tf.raw_ops.FusedBatchNormV3",
    "flax": "flax.linen,flax.linen.two_pass,flax.nnx", "linen": "flax.linen,flax.linen.two_pass",
    "nnx": "flax.nnx", "flax.nnx": "flax.nnx",
    "equinox": "equinox.*", "eqx": "equinox.*",
    "dm-haiku": "haiku",
    "onnx": "onnxruntime*", "ort": "onnxruntime*",
}


def extra_specs() -> list[AdapterSpec]:
    out: list[AdapterSpec] = []
    for module in filter(None, (m.strip() for m in os.environ.get(ENV, "").split(","))):
        try:
            specs = importlib.import_module(module).SPECS
        except Exception as e:  # noqa: BLE001  a user's module: SyntaxError, ImportError, anything its import raises
            raise KeyError(f"{ENV}: cannot load adapter specs from {module!r}: {type(e).__name__}: {e}") from None
        if not isinstance(specs, (tuple, list)) or not all(isinstance(s, AdapterSpec) for s in specs):
            raise KeyError(f"{ENV}: {module}.SPECS must be a tuple of adapters.AdapterSpec, not "
                           f"{type(specs).__name__}")
        out += [s for s in specs if s.name not in adapters.BY_NAME]
    return out


def choices() -> str:
    """The names a selection may use, for error messages."""
    specs = list(adapters.SPECS) + extra_specs()
    families = sorted({s.family for s in specs})
    return (f"adapters: {', '.join(s.name for s in specs)}; families: {', '.join(families)}; "
            f"aliases: {', '.join(sorted(ALIASES))}; globs like 'keras.*'; 'all' (core adapters) or 'everything'")


def select(selection: str | None) -> list[AdapterSpec]:
    """Adapters named by a selection: comma-separated adapter names, families, globs and aliases; "all" (every
    core adapter), "everything" (optional extras too). Unknown names raise KeyError listing the choices."""
    extra = extra_specs()
    if not selection or selection.strip() in ("all", "everything"):
        return adapters.select(selection.strip() if selection else selection)
    specs = list(adapters.SPECS) + extra
    chosen: list[AdapterSpec] = []
    for token in (t.strip() for t in selection.split(",")):
        if not token:
            continue
        found = [s for s in specs if s.name == token or s.family == token or fnmatch.fnmatchcase(s.name, token)]
        if not found and token.lower() in ALIASES:
            found = select(ALIASES[token.lower()])
        if not found:
            raise KeyError(f"unknown framework or adapter {token!r}; {choices()}")
        chosen += [s for s in found if s not in chosen]
    if not chosen:
        raise KeyError(f"empty selection {selection!r}; {choices()}")
    return chosen


def resolve(name: str) -> AdapterSpec:
    """The one adapter a name stands for (the first of its selection); KeyError as `select`."""
    if not isinstance(name, str) or "," in name or name.strip() in ("", "all", "everything"):
        raise KeyError(f"name one framework or adapter, not {name!r}; {choices()}")
    return select(name)[0]


def siblings(name: str) -> list[AdapterSpec]:
    """Adapters of the same API class as `name` with other options (flax.linen's use_fast_variance, equinox's
    mode, tf_keras' fused, ONNX opsets, Keras backends): what a user of that API can also choose."""
    s = spec(name)
    return [o for o in list(adapters.SPECS) + extra_specs() if o.module == s.module and o.cls == s.cls]


def spec(name: str) -> AdapterSpec:
    for s in extra_specs():
        if s.name == name:
            return s
    return adapters.spec(name)


def load(name: str):
    """An adapter instance (its module imported, its framework not)."""
    s = spec(name)
    if s.name in adapters.BY_NAME:
        return adapters.load(name)
    cls = getattr(importlib.import_module(s.module), s.cls)
    return cls(**s.kwargs) if s.kwargs else cls()
