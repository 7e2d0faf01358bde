"""docs/plugins.md stays in step with the hooks, and its example backend really works."""

from __future__ import annotations

import inspect
import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from geoseg import hookspecs
from geoseg.backend import ChipBatch
from geoseg.plugins import backend_info, create_backend, get_plugin_manager

PLUGINS_DOC = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"


def hook_names() -> list[str]:
    prefix = f"{hookspecs.PROJECT_NAME}_spec"
    return sorted(
        name
        for name, value in vars(hookspecs).items()
        if callable(value) and hasattr(value, prefix)
    )


def code_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.S | re.M)


def example_module_source(text: str) -> str:
    match = re.search(
        r"<!-- example: geoseg_darkwater/__init__.py -->\n```python\n(.*?)^```", text, re.S | re.M
    )
    assert match, "docs/plugins.md lost its marked example backend"
    return match.group(1)


def test_every_hook_is_documented():
    text = PLUGINS_DOC.read_text()
    names = hook_names()
    assert names, "no hook specifications found in geoseg.hookspecs"
    for name in names:
        assert re.search(rf"^#+ {name}\b", text, re.M), (
            f"hook {name} has no heading in docs/plugins.md"
        )
        arguments = ", ".join(inspect.signature(getattr(hookspecs, name)).parameters)
        assert f"def {name}({arguments}" in text, f"docs/plugins.md lacks the signature of {name}"


def test_documented_contract_names_exist():
    from geoseg import backend

    text = PLUGINS_DOC.read_text()
    for name in ("Capabilities", "ChipBatch", "Prompts", "TrainSettings", "CONTRACT_VERSION"):
        assert hasattr(backend, name) and name in text
    for field in backend.Capabilities.__dataclass_fields__:
        assert f"`{field}`" in text, f"Capabilities.{field} is not documented"
    for field in backend.ChipBatch.__dataclass_fields__:
        assert f"`{field}`" in text, f"ChipBatch.{field} is not documented"
    for field in backend.TrainSettings.__dataclass_fields__:
        assert f"`{field}`" in text, f"TrainSettings.{field} is not documented"


def test_documented_pyproject_declares_the_entry_point():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    (pyproject,) = code_blocks(PLUGINS_DOC.read_text(), "toml")
    entry_points = tomllib.loads(pyproject)["project"]["entry-points"]
    assert entry_points == {"geoseg": {"darkwater": "geoseg_darkwater"}}


@pytest.fixture
def darkwater_module(monkeypatch):
    """The documented example, imported as module ``geoseg_darkwater`` and registered."""
    module = types.ModuleType("geoseg_darkwater")
    monkeypatch.setitem(sys.modules, "geoseg_darkwater", module)
    exec(
        compile(example_module_source(PLUGINS_DOC.read_text()), "geoseg_darkwater", "exec"),
        module.__dict__,
    )
    pm = get_plugin_manager()
    pm.register(module, name="test-docs-darkwater")
    yield module
    pm.unregister(name="test-docs-darkwater")


def test_example_backend_registers_and_predicts(darkwater_module):
    assert backend_info("darkwater").backend is darkwater_module.DarkWaterBackend
    backend = create_backend("darkwater", ["threshold=40", "softness=1"])
    nir = np.array([[[[10.0, 200.0], [39.0, 41.0]]]], np.float32)
    valid = np.array([[[True, True], [True, False]]])
    probabilities = backend.predict(ChipBatch(nir, valid, ("nir",), ()))
    assert probabilities.shape == (1, 2, 2, 2) and probabilities.dtype == np.float32
    assert probabilities[0].argmax(axis=0).tolist() == [[1, 0], [1, 0]]
    assert backend.classes().names == ("background", "water")


def test_documented_test_passes(darkwater_module):
    """The test shown under "Testing a backend" runs as written."""
    (test_source,) = [
        block for block in code_blocks(PLUGINS_DOC.read_text(), "python") if "def test_" in block
    ]
    # Run it the way pytest would, without nesting a pytest session: the fixture as a
    # plain generator around the test function.
    namespace: dict = {}
    exec(compile(test_source.replace("@pytest.fixture\n", ""), "docs-test", "exec"), namespace)
    fixture = namespace["darkwater"]()
    next(fixture)
    try:
        namespace["test_dark_pixels_are_water"](None)
    finally:
        next(fixture, None)
