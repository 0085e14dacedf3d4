"""The CI files: tox's default envlist checks every core adapter, and the GitHub Actions workflow is valid (its
JSON Schema, offline: check-jsonschema's bundled copy) and runs exactly the envs of that envlist."""
from __future__ import annotations

import configparser
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = ROOT / ".github" / "workflows" / "ci.yml"


def _tox() -> configparser.ConfigParser:
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read(ROOT / "tox.ini", encoding="utf-8")
    return cfg


def _envlist() -> list[str]:
    return [e.strip() for e in _tox()["tox"]["envlist"].replace("\n", ",").split(",") if e.strip()]


def _family_selection(cfg, env: str) -> str | None:
    """BNCONFORM_FRAMEWORKS of an env, by name or through its factor section (keras-{tensorflow,jax,torch})."""
    for section in cfg.sections():
        if not section.startswith("testenv:"):
            continue
        name = section.removeprefix("testenv:")
        if "{" in name:
            prefix, _, rest = name.partition("{")
            factors = rest.rstrip("}").split(",")
            if not any(env == prefix + f for f in factors):
                continue
            factor = env.removeprefix(prefix)
        elif name != env:
            continue
        else:
            factor = ""
        for line in cfg[section].get("setenv", "").splitlines():
            line = line.strip()
            if factor and line.startswith(f"{factor}:"):
                line = line.split(":", 1)[1].strip()
            if line.startswith("BNCONFORM_FRAMEWORKS"):
                return line.split("=", 1)[1].strip()
    return None


def test_default_envlist_checks_every_core_adapter_once():
    from adapters import SPECS, select

    cfg = _tox()
    envs = _envlist()
    assert envs[0] == "unit" and envs[-1] == "report", envs
    covered: dict[str, str] = {}
    for env in envs[1:-1]:
        selection = _family_selection(cfg, env)
        assert selection, f"tox env {env} selects no framework (BNCONFORM_FRAMEWORKS)"
        for spec in select(selection):
            assert spec.name not in covered, f"{spec.name} is checked by both {covered[spec.name]} and {env}"
            covered[spec.name] = env
    core = {s.name for s in SPECS if s.core}
    assert core <= set(covered), f"core adapters no default tox env checks: {sorted(core - set(covered))}"


def _yaml(path: Path):
    from ruamel.yaml import YAML

    return YAML(typ="safe").load(path.read_text(encoding="utf-8"))


def _lint(path: Path) -> subprocess.CompletedProcess:
    pytest.importorskip("check_jsonschema")
    return subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows",
                           str(path)], capture_output=True, text=True, timeout=120)


def test_workflow_passes_its_schema():
    out = _lint(WORKFLOW)
    assert out.returncode == 0, out.stdout + out.stderr


def test_workflow_linter_rejects_a_broken_workflow(tmp_path):
    """The linter can fail: a job without `runs-on` and a step with a misspelled key are refused."""
    broken = WORKFLOW.read_text(encoding="utf-8").replace("    runs-on: ubuntu-24.04\n    timeout-minutes: 45\n",
                                                         "    timeout-minutes: 45\n", 1)
    broken = broken.replace("      - uses: actions/checkout@v4\n", "      - usess: actions/checkout@v4\n", 1)
    assert broken != WORKFLOW.read_text(encoding="utf-8")
    path = tmp_path / "ci.yml"
    path.write_text(broken, encoding="utf-8")
    assert _lint(path).returncode != 0


def test_workflow_runs_the_default_envlist_and_uploads_the_report():
    pytest.importorskip("ruamel.yaml")
    wf = _yaml(WORKFLOW)
    jobs = wf["jobs"]
    matrix = jobs["tox"]["strategy"]["matrix"]["env"]
    assert matrix == _envlist()[:-1], "the workflow's matrix must be tox's default envlist before `report`"
    assert any("tox -e" in (s.get("run") or "") and "matrix.env" in s["run"] for s in jobs["tox"]["steps"])
    report = jobs["report"]
    assert report["needs"] == "tox" and report.get("if") == "always()"
    runs = " ".join(s.get("run") or "" for s in report["steps"])
    assert "tox -e report" in runs
    uploads = [s for s in report["steps"] if str(s.get("uses", "")).startswith("actions/upload-artifact")]
    assert uploads and uploads[-1]["with"]["path"] == "reports/index.html"
