"""The plugin manager: entry-point discovery, broken plugins, registration by hand."""

from __future__ import annotations

import json
import sys
import textwrap

import numpy as np
import pytest

from geoseg import plugins
from geoseg.backend import CONTRACT_VERSION, Backend, ChipBatch
from geoseg.errors import BackendError, OptionError

BACKEND_MODULE = """
from dataclasses import dataclass

import numpy as np

from geoseg.backend import Backend, Capabilities
from geoseg.hookspecs import hookimpl


@dataclass(frozen=True)
class Options:
    level: int = 1


class {cls}(Backend):
    name = "{backend}"
    description = "installed from a fake distribution"
    contract_version = {contract}
    Options = Options

    @classmethod
    def capabilities(cls):
        return Capabilities(binary=True, classes=("background", "water"))

    def predict(self, batch):
        n, _, h, w = batch.images.shape
        return np.full((n, 2, h, w), 0.5, np.float32)


@hookimpl
def register_backends(register):
    register({cls})
"""


@pytest.fixture
def installed(tmp_path, monkeypatch):
    """Factory that installs a fake distribution with one ``geoseg`` entry point.

    Writes ``<dist>-<version>.dist-info/{METADATA,entry_points.txt}`` and the plugin module
    into a site folder on sys.path, then resets the plugin manager so it is discovered the
    way ``pip install`` would make it discoverable. Only these fake plugins load
    (GEOSEG_PLUGINS lists their entry points), so installed real plugins do not interfere.
    """
    site = tmp_path / "site-packages"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    entry_names: list[str] = []
    modules: list[str] = []

    def install(
        dist: str,
        entry: str,
        source: str,
        *,
        version: str = "1.0",
        module: str | None = None,
    ) -> None:
        module = module or f"{dist.replace('-', '_')}_{entry.replace('-', '_')}_plugin"
        (site / f"{module}.py").write_text(textwrap.dedent(source))
        info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir(exist_ok=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        with (info / "entry_points.txt").open("a") as points:
            if points.tell() == 0:
                points.write("[geoseg]\n")
            points.write(f"{entry} = {module}\n")
        entry_names.append(entry)
        modules.append(module)
        monkeypatch.setenv(plugins.PLUGINS_ENV, ",".join(entry_names))
        plugins.reset_plugin_manager()

    yield install
    for module in modules:
        sys.modules.pop(module, None)
    monkeypatch.undo()
    plugins.reset_plugin_manager()


def backend_source(backend: str, contract: int = CONTRACT_VERSION) -> str:
    return BACKEND_MODULE.format(
        cls=backend.capitalize() + "Backend", backend=backend, contract=contract
    )


def test_entry_point_backend_is_discovered_with_its_distribution(installed):
    installed("geoseg-lakes", "lakes", backend_source("lakes"), version="2.3.1")

    assert "lakes" in plugins.backends()
    info = plugins.backend_info("lakes")
    assert (info.distribution, info.version, info.plugin) == ("geoseg-lakes", "2.3.1", "lakes")
    backend = plugins.create_backend("lakes", ["level=3"])
    assert backend.options.level == 3
    assert plugins.broken_plugins() == []


def test_plugin_that_fails_to_import_is_broken_and_others_still_work(installed):
    installed("geoseg-lakes", "lakes", backend_source("lakes"))
    installed("geoseg-oops", "oops", "import no_such_module_anywhere\n")

    assert list(plugins.backends()) == ["lakes"]
    (broken,) = plugins.broken_plugins()
    assert (broken.name, broken.distribution, broken.version) == ("oops", "geoseg-oops", "1.0")
    assert "ModuleNotFoundError" in broken.error and "no_such_module_anywhere" in broken.error
    with pytest.raises(BackendError, match="backend plugin 'oops' is broken"):
        plugins.backend_class("oops")


def test_contract_version_mismatch_is_a_broken_plugin_with_a_clear_message(installed):
    installed("geoseg-future", "future", backend_source("future", contract=CONTRACT_VERSION + 1))

    assert "future" not in plugins.backends()
    (broken,) = plugins.broken_plugins()
    assert broken.distribution == "geoseg-future"
    assert (
        f"was written for geoseg backend contract v{CONTRACT_VERSION + 1}; "
        f"this geoseg speaks v{CONTRACT_VERSION}: upgrade geoseg" in broken.error
    )


def test_hook_that_raises_or_misnames_a_hook_is_broken(installed):
    installed(
        "geoseg-raises",
        "raises",
        """
        from geoseg.hookspecs import hookimpl

        @hookimpl
        def register_backends(register):
            raise RuntimeError("weights folder missing")
        """,
    )
    installed(
        "geoseg-typo",
        "typo",
        """
        from geoseg.hookspecs import hookimpl

        @hookimpl
        def register_backend(register):
            pass
        """,
    )
    installed("geoseg-lakes", "lakes", backend_source("lakes"))

    assert list(plugins.backends()) == ["lakes"]
    errors = {b.name: b.error for b in plugins.broken_plugins()}
    assert "RuntimeError: weights folder missing" in errors["raises"]
    assert "unknown hook register_backend" in errors["typo"]
    assert "register_backends" in errors["typo"]


def test_duplicate_backend_names_keep_the_first_and_report_the_second(installed):
    installed("geoseg-lakes", "lakes", backend_source("lakes"))
    installed("geoseg-lakes-fork", "lakes-fork", backend_source("lakes"), module="lakes_fork")

    assert plugins.backend_info("lakes").distribution == "geoseg-lakes"
    (broken,) = plugins.broken_plugins()
    assert broken.name == "lakes-fork"
    assert "backend 'lakes' is already registered by plugin 'lakes'" in broken.error


def test_geoseg_plugins_restricts_what_loads(installed, monkeypatch):
    installed("geoseg-lakes", "lakes", backend_source("lakes"))
    installed("geoseg-rivers", "rivers", backend_source("rivers"))
    assert set(plugins.backends()) == {"lakes", "rivers"}

    sys.modules.pop("geoseg_lakes_lakes_plugin")
    monkeypatch.setenv(plugins.PLUGINS_ENV, "rivers")
    plugins.reset_plugin_manager()
    assert set(plugins.backends()) == {"rivers"}
    assert "geoseg_lakes_lakes_plugin" not in sys.modules  # not even imported

    monkeypatch.setenv(plugins.PLUGINS_ENV, "")
    plugins.reset_plugin_manager()
    assert plugins.backends() == {}
    assert plugins.broken_plugins() == []

    monkeypatch.setenv(plugins.PLUGINS_ENV, "rivers,nowhere")
    plugins.reset_plugin_manager()
    assert set(plugins.backends()) == {"rivers"}
    (missing,) = plugins.broken_plugins()
    assert missing.name == "nowhere" and "GEOSEG_PLUGINS names 'nowhere'" in missing.error


def test_registered_backend_appears_and_disappears(register_backend):
    class Marsh(Backend):
        name = "marsh-test"

    pm = plugins.get_plugin_manager()
    plugin_name = register_backend(Marsh)
    assert plugins.backends()["marsh-test"] is Marsh
    info = plugins.backend_info("marsh-test")
    assert info.plugin == plugin_name and info.distribution is None
    pm.unregister(name=plugin_name)
    assert "marsh-test" not in plugins.backends()


def test_fake_backend_fixture_is_usable(fake_backend):
    backend = plugins.create_backend("fake", ["threshold=10", "scale=2"])
    assert isinstance(backend, fake_backend)
    assert (backend.options.threshold, backend.options.scale) == (10.0, 2.0)
    with pytest.raises(OptionError, match="scale must be > 0"):
        plugins.create_backend("fake", ["scale=0"])


def test_unknown_backend_lists_the_available_ones(fake_backend):
    with pytest.raises(BackendError) as caught:
        plugins.backend_class("nope")
    message = str(caught.value)
    assert message.startswith("unknown backend 'nope'; available: ")
    assert "fake" in message and message.endswith("see geoseg backends")


def test_registering_something_that_is_not_a_backend_is_reported(register_backend):
    class NotABackend:
        name = "imposter"

    class Nameless(Backend):
        pass

    register_backend(NotABackend, name="test-imposter")
    register_backend(Nameless, name="test-nameless")
    errors = {b.name: b.error for b in plugins.broken_plugins()}
    assert "not a geoseg.backend.Backend subclass" in errors["test-imposter"]
    assert "has no name" in errors["test-nameless"]
    assert "imposter" not in plugins.backends()


def test_create_backend_reads_a_config_file_and_pairs_override_it(fake_backend, tmp_path):
    config = tmp_path / "fake.yaml"
    config.write_text("options:\n  threshold: 12\n  scale: 3\n")
    backend = plugins.create_backend("fake", ["scale=5"], config=config)
    assert (backend.options.threshold, backend.options.scale) == (12.0, 5.0)
    with pytest.raises(OptionError, match=r"backend 'fake': unknown option 'treshold'.*threshold"):
        plugins.create_backend("fake", ["treshold=1"])


def test_geoseg_backends_shows_a_broken_plugin_and_still_lists_the_others(installed, invoke):
    installed("geoseg-lakes", "lakes", backend_source("lakes"), version="2.0")
    installed("geoseg-oops", "oops", "raise RuntimeError('needs CUDA 13')\n", version="0.3")
    installed("geoseg-future", "future", backend_source("future", contract=CONTRACT_VERSION + 1))

    result = invoke("backends")
    lines = result.output.splitlines()
    lakes = next(line for line in lines if line.startswith("lakes "))
    assert lakes.split()[:3] == ["lakes", "2.0", "geoseg-lakes"]
    broken = lines[lines.index("broken plugins:") + 1 :]
    assert any(
        line.startswith("  oops (geoseg-oops 0.3): cannot import")
        and "RuntimeError: needs CUDA 13" in line
        for line in broken
    )
    assert any(
        "future (geoseg-future 1.0)" in line and f"contract v{CONTRACT_VERSION + 1}" in line
        for line in broken
    )

    records = json.loads(invoke("backends", "--json").output)
    assert [b["name"] for b in records["backends"]] == ["lakes"]
    assert {b["name"] for b in records["broken"]} == {"oops", "future"}
    # A broken plugin does not stop a working backend from running.
    batch = ChipBatch(np.zeros((1, 1, 8, 8), np.float32), np.ones((1, 8, 8), bool), ("a",), ())
    assert plugins.create_backend("lakes").predict(batch).shape == (1, 2, 8, 8)


def test_syntax_errors_and_bad_hook_signatures_are_one_line_errors(installed):
    installed("geoseg-syntax", "syntax", "def broken(:\n    pass\n")
    installed(
        "geoseg-args",
        "args",
        """
        from geoseg.hookspecs import hookimpl

        @hookimpl
        def register_backends(registry):
            pass
        """,
    )
    errors = {b.name: b.error for b in plugins.broken_plugins()}
    assert errors["syntax"].startswith("cannot import geoseg_syntax_syntax_plugin: SyntaxError")
    assert "cannot register" in errors["args"] and "registry" in errors["args"]
    assert all("\n" not in error for error in errors.values())
