"""The public API for plugins: what docs/plugins.md lists is what plugins use, and exists.

A plugin that imports a private geoseg name breaks silently when the core is refactored;
these tests make the boundary explicit. The public modules declare their names in
``__all__``; plugins in ``plugins/`` and the examples in docs/plugins.md import only those.
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PLUGINS_DOC = ROOT / "docs" / "plugins.md"


def public_table() -> dict[str, list[str]]:
    """Module -> names, from the table under "The public API" in docs/plugins.md."""
    text = PLUGINS_DOC.read_text()
    section = text.split("## The public API", 1)[1].split("\n## ", 1)[0]
    table = {}
    for line in section.splitlines():
        match = re.match(r"\| `(geoseg\.[a-z_]+)` \| (.*?) \|", line)
        if match:
            table[match.group(1)] = re.findall(r"`([A-Za-z_][A-Za-z0-9_]*)`", match.group(2))
    return table


def imports_from_geoseg(source: str) -> list[tuple[str, str, int]]:
    """(module, name, line) for every ``from geoseg.X import name`` and ``import geoseg.X``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("geoseg."):
            for alias in node.names:
                found.append((node.module, alias.name, node.lineno))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("geoseg.") and alias.name.count(".") == 1:
                    found.append((alias.name, "*", node.lineno))
    return found


def plugin_sources() -> list[Path]:
    return sorted(
        path for path in (ROOT / "plugins").glob("*/geoseg_*/**/*.py") if "tests" not in path.parts
    )


def test_the_documented_table_is_every_module_all():
    table = public_table()
    assert len(table) >= 15, "docs/plugins.md lost its public API table"
    for module_name, names in table.items():
        module = importlib.import_module(module_name)
        assert sorted(module.__all__) == sorted(names), (
            f"{module_name}.__all__ and docs/plugins.md disagree"
        )
        for name in names:
            assert hasattr(module, name), f"{module_name}.{name} is documented but missing"


@pytest.mark.parametrize("path", plugin_sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_plugins_import_only_public_names(path):
    table = public_table()
    for module, name, line in imports_from_geoseg(path.read_text()):
        where = f"{path.relative_to(ROOT)}:{line}"
        assert module in table, f"{where} imports private module {module}"
        assert name in table[module], f"{where} imports {module}.{name}, which is not public"


def test_the_docs_examples_import_only_public_names():
    table = public_table()
    blocks = re.findall(r"^```python\n(.*?)^```", PLUGINS_DOC.read_text(), flags=re.S | re.M)
    checked = 0
    for block in blocks:
        try:
            found = imports_from_geoseg(block)
        except SyntaxError:  # a fragment, not a module
            continue
        for module, name, _ in found:
            checked += 1
            assert module in table and name in table[module], (
                f"docs/plugins.md's example imports {module}.{name}, which is not public"
            )
    assert checked >= 5


def test_prompts_live_with_the_prompt_code_and_v1_imports_still_resolve():
    from geoseg import backend, prompts

    assert prompts.Prompts.__module__ == "geoseg.prompts"
    assert backend.Prompts is prompts.Prompts  # contract v1 imported it from geoseg.backend
    with pytest.raises(AttributeError):
        backend.NoSuchName  # noqa: B018
