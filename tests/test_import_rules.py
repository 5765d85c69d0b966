"""Dependencies run one way (DESIGN.md): the library imports no Flower and none of the apps;
the site and coordinator apps do not import each other; only the CLI sits above everything.

Every import statement counts, including ones inside functions (lazy imports), so the rule
cannot be dodged by importing late.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "fedreid": {"flwr", "sims", "server", "clients", "cli", "wire"},
    "wire": {"sims", "server", "clients", "cli"},  # wire may use the library's npy codec
    "clients": {"server", "sims", "cli"},
    "server": {"clients", "sims", "cli"},
    "sims": {"cli"},
}


def imported_packages(path: Path) -> set[str]:
    """Top-level names of every module ``path`` imports, wherever the statement is."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_run_one_way(package):
    offenders = {
        str(p.relative_to(ROOT)): sorted(imported_packages(p) & FORBIDDEN[package])
        for p in (ROOT / package).rglob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_rule_sees_lazy_imports(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from sims.runner import run_sim_command\n    import flwr.app\n")
    assert imported_packages(module) == {"sims", "flwr"}
