"""The import rule: the planes depend on the API package and never on each other.

    respublica.cli  ──►  respublica.operator  ──►  respublica.api
                    ──►  respublica.serving   ──►  respublica.api

Every `import` and `from … import` in the source tree is parsed (including imports inside functions
and under TYPE_CHECKING), so a forbidden arrow fails here before anyone reads it in review.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# package -> the respublica packages it may import (besides itself).
ALLOWED: dict[str, set[str]] = {
    "api": set(),
    "operator": {"api"},
    "serving": {"api"},
    "cli": {"api", "operator", "serving"},
}
SOURCE_ROOTS = {name: ROOT / name / "respublica" / name for name in ALLOWED}


def _imported_modules(tree: ast.AST) -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            # `from respublica import operator` names a package in the imported names.
            if node.module == "respublica":
                found.extend((node.lineno, f"respublica.{alias.name}") for alias in node.names)
    return found


def forbidden_imports(package: str, source: str, filename: str = "<source>") -> list[str]:
    """Each import in `source` (a module of `package`) that breaks the rule, as 'file:line -> target'."""
    bad: list[str] = []
    for line, module in _imported_modules(ast.parse(source, filename)):
        parts = module.split(".")
        if parts[0] != "respublica" or len(parts) < 2:
            continue
        target = parts[1]
        if target != package and target not in ALLOWED[package]:
            bad.append(f"{filename}:{line} -> {module}")
    return bad


def _python_files(package: str) -> list[Path]:
    return sorted(SOURCE_ROOTS[package].rglob("*.py"))


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_what_the_rule_allows(package: str) -> None:
    files = _python_files(package)
    assert len(files) >= 3, f"no sources found for respublica.{package} under {SOURCE_ROOTS[package]}"
    bad = [
        hit
        for path in files
        for hit in forbidden_imports(package, path.read_text(), str(path.relative_to(ROOT)))
    ]
    assert not bad, "imports against the rule in docs/architecture.md:\n" + "\n".join(bad)


def test_every_top_level_package_is_under_the_rule() -> None:
    """A new `respublica.<x>` package must be placed in the rule before it can be imported."""
    namespaces = {
        package.name
        for root in ROOT.glob("*/respublica")  # also charts/respublica, which holds no Python package
        for package in root.iterdir()
        if (package / "__init__.py").is_file()
    }
    assert namespaces == set(ALLOWED)


@pytest.mark.parametrize(
    ("package", "source", "expected"),
    [
        ("operator", "from respublica.serving.engine import up\n", 1),
        ("serving", "def f():\n    from respublica.operator.render import render\n", 1),
        ("serving", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import respublica.cli\n", 1),
        ("api", "from respublica import operator\n", 1),
        ("serving", "from respublica.api.models import ModelDeployment\n", 0),
        ("cli", "import respublica.operator.handlers\nimport respublica.serving.gateway\n", 0),
        ("operator", "from . import sibling\n", 0),
    ],
)
def test_the_checker_sees_every_kind_of_import(package: str, source: str, expected: int) -> None:
    assert len(forbidden_imports(package, source)) == expected
