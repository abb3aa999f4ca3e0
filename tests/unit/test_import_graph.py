"""The layers, as a test: the contracts import nothing of ours; the runtime
imports the contracts only; a service imports the runtime and the contracts,
never another service; only the entry package (``crm_app``) imports the
services. Every import counts, a deferred one inside a function too."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: Our top-level packages, and where each one's modules live.
PACKAGES = {"crm_contracts": ROOT / "contracts" / "crm_contracts",
            "crm_runtime": ROOT / "crm_runtime", "services": ROOT / "services",
            "crm_app": ROOT / "crm_app", "crm": ROOT / "crm", "bench": ROOT / "bench",
            "tests": ROOT / "tests", "scripts": ROOT / "scripts"}
#: What each layer may import of ours (besides itself). ``crm`` is the code
#: generated from proto/.
ALLOWED = {"crm_contracts": set(),
           "crm_runtime": {"crm_contracts", "crm"},
           "services": {"crm_contracts", "crm_runtime", "crm"},
           "crm_app": {"crm_contracts", "crm_runtime", "crm", "services"}}


def imported(path: Path) -> Iterator[tuple[int, str]]:
    """Every module name ``path`` imports, with its line (relative imports
    resolved against the module's package)."""
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                raise AssertionError(f"{path}:{node.lineno}: relative import; use the full name")
            yield node.lineno, node.module or ""


def layer_of(module: str) -> str:
    """``services.customers`` for a service's modules, else the top package."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "services" and len(parts) > 1 else parts[0]


def violations(packages: dict[str, Path], allowed: dict[str, set[str]]) -> list[str]:
    found = []
    for package, folder in packages.items():
        if package not in allowed:
            continue
        for path in sorted(folder.rglob("*.py")):
            rel = path.relative_to(folder.parent).with_suffix("")
            own = layer_of(".".join(rel.parts))
            for line, module in imported(path):
                target = layer_of(module)
                if target.split(".")[0] not in packages or target == own:
                    continue  # the standard library, a third party, or itself
                if target.split(".")[0] == package == "services":
                    if rel.name == "__init__" and own == "services":
                        continue
                    found.append(f"{rel}.py:{line}: {own} imports {module} "
                                 "(a service never imports another service)")
                elif target.split(".")[0] not in allowed[package]:
                    found.append(f"{rel}.py:{line}: {package} imports {module} "
                                 f"(it may import {sorted(allowed[package]) or 'nothing of ours'})")
    return found


def test_no_import_crosses_a_layer_upwards_or_between_services() -> None:
    assert violations(PACKAGES, ALLOWED) == []


@pytest.mark.parametrize(("package", "source", "problem"), [
    ("services", "from services.customers import domain\n", "never imports another service"),
    ("services", "def f() -> None:\n    import services.customers.app\n",
     "never imports another service"),
    ("crm_runtime", "from services.loyalty import app\n", "crm_runtime imports"),
    ("crm_runtime", "import crm_app.cli\n", "crm_runtime imports"),
    ("crm_contracts", "from crm_runtime import ids\n", "nothing of ours"),
])
def test_the_check_finds_a_forbidden_import(tmp_path: Path, package: str, source: str,
                                            problem: str) -> None:
    """The check itself can fail: a tree with one forbidden import."""
    folders = {name: tmp_path / name for name in ("crm_contracts", "crm_runtime", "services",
                                                  "crm_app")}
    for folder in folders.values():
        folder.mkdir()
        (folder / "__init__.py").write_text("")
    (folders["services"] / "customers").mkdir()
    (folders["services"] / "customers" / "domain.py").write_text("")
    (folders["services"] / "loyalty").mkdir()
    if package == "services":
        offender = folders["services"] / "loyalty" / "handlers.py"
    else:
        offender = folders[package] / "module.py"
    offender.write_text(source)
    found = violations(folders, ALLOWED)
    assert len(found) == 1 and problem in found[0], found
