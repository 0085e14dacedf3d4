"""The registry: entries parse and validate, match by glob and version range, and go stale."""
from __future__ import annotations

import pytest

from conformance.core.registry import Registry, RegistryError

GOOD = '''
[[deviation]]
id = "demo"
adapter = "torch.*"
versions = ">=2.0,<3"
cases = ["f16-*", "bf16-*"]
quantities = ["running_var"]
reason = "half-precision running variance"
link = "https://example.invalid/issue/1"
action = "xfail"
'''


def _load(tmp_path, text, name="r.toml"):
    p = tmp_path / name
    p.write_text(text)
    return Registry.load(p)


def test_bundled_registry_loads():
    Registry.load()


def test_match_by_adapter_version_case_quantity(tmp_path):
    reg = _load(tmp_path, GOOD)
    assert reg.match("torch.nn.BatchNorm", "2.13.0", "f16-4x3-ax1-T-a0.1-eps1e-05-s0", "running_var").id == "demo"
    assert reg.match("torch.nn.BatchNorm", "3.0.0", "f16-x", "running_var") is None  # outside the range
    assert reg.match("keras.jax", "2.13.0", "f16-x", "running_var") is None
    assert reg.match("torch.nn.BatchNorm", "2.13.0", "f32-x", "running_var") is None
    assert reg.match("torch.nn.BatchNorm", "2.13.0", "f16-x", "y") is None


def test_stale_entries_are_those_of_selected_adapters_without_hits(tmp_path):
    reg = _load(tmp_path, GOOD)
    assert [e.id for e in reg.stale({"torch.nn.BatchNorm": "2.13.0"})] == ["demo"]
    assert reg.stale({"keras.jax": "3.0"}) == []  # not selected: not stale
    reg.match("torch.nn.BatchNorm", "2.13.0", "f16-x", "running_var")
    assert reg.stale({"torch.nn.BatchNorm": "2.13.0"}) == []


@pytest.mark.parametrize("text,message", [
    ("[[deviation]\nid=1", "not valid TOML"),
    (GOOD.replace('action = "xfail"', 'action = "ignore"'), "action: must be one of 'xfail', 'skip', not 'ignore'"),
    (GOOD.replace('reason = "half-precision running variance"', 'reason = " "'), "reason: is empty"),
    (GOOD.replace('versions = ">=2.0,<3"', 'versions = "two"'), "not a PEP 440 specifier"),
    (GOOD.replace('link =', 'url ='), "unknown key(s) url"),
    (GOOD.replace('cases = ["f16-*", "bf16-*"]', ''), "missing cases"),
    (GOOD + GOOD, "already used"),
    ("[other]\nx = 1", "unknown key(s) other"),
])
def test_malformed_registry_is_one_clear_error(tmp_path, text, message):
    with pytest.raises(RegistryError, match=message.replace("(", r"\(").replace(")", r"\)")) as e:
        _load(tmp_path, text)
    assert "r.toml" in str(e.value)


def test_missing_path(tmp_path):
    with pytest.raises(RegistryError, match="does not exist"):
        Registry.load(tmp_path / "nope")
