"""pytest options and fixtures of the benchmark tier.

  --bench-frameworks  BNCONFORM_FRAMEWORKS     adapters, families or globs, as the conformance suite takes them
                                               ("all": the core adapters), and "oracle" for the oracle's own
                                               benchmark (selected by "all" too)
  --bench-shapes      BNCONFORM_BENCH_SHAPES   logical shapes, ';'-separated, e.g. "32x2048x7x7;4096x1024"
                                               (default: the ResNet-50 stages at batch 32 and 4096x1024)

Keras 3 fixes its backend per process: the first Keras 3 adapter a process sets up wins and the others skip
with a pointer to running them in their own invocation (tox -e bench does, one command per backend).
Tests are ordered by shape, and within a shape the copy probes come first, so each shape's bound is measured
next to the operations it bounds.
"""
from __future__ import annotations

import os

import pytest

SHAPES = ((32, 64, 112, 112), (32, 256, 56, 56), (32, 512, 28, 28), (32, 1024, 14, 14), (32, 2048, 7, 7),
          (4096, 1024))
OPS = ("train", "eval", "train_backward")
DTYPE = "float32"


def pytest_addoption(parser):
    g = parser.getgroup("bnconform-bench", "BatchNorm benchmarks")
    g.addoption("--bench-frameworks", default=os.environ.get("BNCONFORM_FRAMEWORKS", "all"),
                help="adapters, families or globs, comma separated; 'all' = core adapters")
    g.addoption("--bench-shapes", default=os.environ.get("BNCONFORM_BENCH_SHAPES", ""),
                help="logical (N, C, ...) shapes, ';'-separated, dims joined by 'x'")


def shapes(config) -> tuple[tuple[int, ...], ...]:
    text = config.getoption("--bench-shapes").strip()
    if not text:
        return SHAPES
    try:
        return tuple(tuple(int(d) for d in s.strip().split("x")) for s in text.split(";") if s.strip())
    except ValueError:
        raise pytest.UsageError(f"--bench-shapes: cannot read {text!r} (e.g. '32x64x112x112;4096x1024')") from None


def selected(config) -> list[str]:
    """Adapter names selected; the token "oracle" selects benchmarks/test_oracle_speed.py, no adapter."""
    from conformance.core.catalogue import select

    tokens = [t.strip() for t in config.getoption("--bench-frameworks").split(",") if t.strip()]
    adapters = [t for t in tokens if t != "oracle"]
    if tokens and not adapters:
        return []
    try:
        return [s.name for s in select(",".join(adapters))]
    except KeyError as e:
        raise pytest.UsageError(str(e.args[0])) from None


def shape_id(shape) -> str:
    return "x".join(map(str, shape))


def pytest_generate_tests(metafunc):
    config = metafunc.config
    if "bench_shape" in metafunc.fixturenames:
        metafunc.parametrize("bench_shape", shapes(config), ids=shape_id)
    if "copy_shape" in metafunc.fixturenames:
        metafunc.parametrize("copy_shape", shapes(config), ids=shape_id)
    if "adapter_name" in metafunc.fixturenames:
        metafunc.parametrize("adapter_name", selected(config))
    if "op" in metafunc.fixturenames:
        metafunc.parametrize("op", OPS)


def pytest_collection_modifyitems(config, items):
    """By shape (largest first, as listed), copies before operations, then adapter and operation order."""
    order = {s: i for i, s in enumerate(shapes(config))}
    names = {n: i for i, n in enumerate(selected(config))}

    def key(item):
        params = getattr(item, "callspec", None)
        p = params.params if params else {}
        shape = p.get("bench_shape") or p.get("copy_shape")
        kind = 0 if "copy_shape" in p else (2 if "bench_shape" in p else 3)
        return (order.get(shape, len(order)), kind, names.get(p.get("adapter_name"), 0),
                OPS.index(p["op"]) if "op" in p else 0)
    items.sort(key=key)


_ADAPTERS: dict[str, object] = {}


@pytest.fixture
def adapter(adapter_name):
    """The adapter, set up once per process; a skip when its framework is missing or cannot load here."""
    from adapters import load, spec

    missing = spec(adapter_name).missing()
    if missing:
        pytest.skip(f"{adapter_name}: {', '.join(missing)} not installed")
    if adapter_name not in _ADAPTERS:
        a = load(adapter_name)
        try:
            a.setup()
        except RuntimeError as e:  # Keras 3 with another backend already imported in this process
            if "keras is already imported" not in str(e):
                raise
            pytest.skip(f"{e}; run it in its own invocation: "
                        f"BNCONFORM_FRAMEWORKS={adapter_name} pytest benchmarks/test_bn_speed.py")
        _ADAPTERS[adapter_name] = a
    return _ADAPTERS[adapter_name]
