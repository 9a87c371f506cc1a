"""The import rules of DESIGN.md hold (import-linter contracts in pyproject.toml), checked over
the package as it is installed: the root folders are mapped into `pdserve` by package-dir,
which import-linter cannot follow from the repository root (it would see only `pdserve/` and
every contract would pass vacuously). So the test lays the package out the way setuptools
maps it, in a folder of links, first shows that import-linter's graph holds every module of
every subpackage, then runs `lint-imports` on it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = REPO / "pyproject.toml"
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def package_tree(out: Path) -> dict[str, str]:
    """Link every module into `out` at its installed path; return {module: source file}."""
    package_dir = tomllib.loads(PYPROJECT.read_text())["tool"]["setuptools"]["package-dir"]
    modules: dict[str, str] = {}
    for package, folder in package_dir.items():
        for source in sorted((REPO / folder).rglob("*.py")):
            relative = source.relative_to(REPO / folder)
            target = out / Path(*package.split(".")) / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(source)
            parts = [*package.split("."), *relative.with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = str(source)
    return modules


def run_in_tree(tree: Path, *command: str) -> subprocess.CompletedProcess[str]:
    """Run with the tree first on the path, from a folder that holds no `pdserve`."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run(command, cwd=tree.parent, env=env, capture_output=True, text=True,
                          timeout=300, check=False)


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    out = tmp_path_factory.mktemp("import-graph") / "site"
    return out, package_tree(out)


def test_import_linter_sees_every_module_of_every_subpackage(
    tree: tuple[Path, dict[str, str]],
) -> None:
    root, modules = tree
    probe = ("import grimp, json, pdserve; "
             "print(json.dumps([pdserve.__file__, sorted(grimp.build_graph('pdserve').modules)]))")
    result = run_in_tree(root, sys.executable, "-c", probe)
    assert result.returncode == 0, result.stderr[-3000:]
    location, seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert location.startswith(str(root)), f"pdserve imported from {location}, not the tree"
    assert set(seen) == set(modules), sorted(set(modules) ^ set(seen))
    for subpackage in ("deployments.api", "deployments.engine", "deployments.config",
                       "deployments.autoscaling", "prefill", "decode", "kv_transfer",
                       "routing", "benchmarks", "simulation"):
        assert any(m.startswith(f"pdserve.{subpackage}.") for m in seen), subpackage


def test_the_import_rules_of_the_design_hold(tree: tuple[Path, dict[str, str]]) -> None:
    root, _ = tree
    result = run_in_tree(root, str(LINT_IMPORTS), "--config", str(PYPROJECT))
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout, result.stdout[-3000:]
