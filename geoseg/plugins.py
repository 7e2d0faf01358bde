"""The plugin manager: finds backends through the ``geoseg`` entry-point group.

geoseg's own backends (``plugins/geoseg-spectral`` and friends) are separate
distributions found exactly like a third party's: the core never imports them. A plugin
that fails to import, implements an unknown hook, raises in its hook, or registers a
backend written for another contract version is recorded as a ``BrokenPlugin`` (shown by
``geoseg backends``) instead of taking the command line down.

``GEOSEG_PLUGINS`` restricts which entry points load: a comma-separated list of entry-point
names, or an empty string for none. Unset, every installed plugin loads.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pluggy

from geoseg import hookspecs
from geoseg.backend import CONTRACT_VERSION, Backend
from geoseg.errors import BackendError, OptionError

__all__ = [
    "get_plugin_manager",
    "reset_plugin_manager",
    "create_backend",
    "backend_class",
    "backends",
    "broken_plugins",
    "BrokenPlugin",
]

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "geoseg"
PLUGINS_ENV = "GEOSEG_PLUGINS"


@dataclass(frozen=True)
class BrokenPlugin:
    """A plugin that could not be used, and why (one line for ``geoseg backends``)."""

    name: str
    distribution: str | None
    version: str | None
    error: str


@dataclass(frozen=True)
class BackendInfo:
    """A registered backend and where it came from.

    ``plugin``: the name the plugin is registered under (its entry-point name);
    ``distribution`` / ``version``: the installed distribution that provides it, or None
    for a plugin registered by hand (``get_plugin_manager().register(...)``).
    """

    name: str
    backend: type[Backend]
    plugin: str
    distribution: str | None
    version: str | None


@dataclass(frozen=True)
class _Origin:
    distribution: str | None
    version: str | None


class _Registry:
    """The plugin manager plus what geoseg learned while loading it."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self.pm.add_hookspecs(hookspecs)
        self.load_errors: list[BrokenPlugin] = []
        self.origins: dict[str, _Origin] = {}
        self.collected_for: tuple | None = None
        self.backends: dict[str, BackendInfo] = {}
        self.hook_errors: list[BrokenPlugin] = []


_registry: _Registry | None = None
_lock = threading.RLock()


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, loading entry-point plugins on first use."""
    return _get_registry().pm


def reset_plugin_manager() -> None:
    """Forget the plugin manager so the next call rediscovers installed plugins."""
    global _registry
    with _lock:
        _registry = None
    # New distributions may have appeared on sys.path (tests, a pip install in-process).
    importlib.invalidate_caches()


def backends() -> dict[str, type[Backend]]:
    """Every working backend, by name, from the plugins registered right now."""
    return {name: info.backend for name, info in _collect().backends.items()}


def backend_infos() -> dict[str, BackendInfo]:
    """Every working backend, by name, with the plugin and distribution providing it."""
    return dict(_collect().backends)


def backend_info(name: str) -> BackendInfo:
    """The backend called ``name`` and where it came from; BackendError if unknown."""
    registry = _collect()
    info = registry.backends.get(name)
    if info is not None:
        return info
    available = ", ".join(sorted(registry.backends)) or "none"
    message = f"unknown backend {name!r}; available: {available}; see geoseg backends"
    for broken in registry.load_errors + registry.hook_errors:
        if broken.name == name:
            message = f"backend plugin {name!r} is broken: {broken.error}"
            break
    raise BackendError(message)


def backend_class(name: str) -> type[Backend]:
    """The backend class called ``name``; BackendError listing the available ones if unknown."""
    return backend_info(name).backend


def create_backend(
    name: str,
    options: Sequence[str] = (),
    config: str | Path | None = None,
) -> Backend:
    """A backend instance with its options built from ``key=value`` pairs and a config file.

    The pairs override the config file (YAML or JSON). Raises OptionError naming the
    offending option, BackendError for an unknown backend.
    """
    from geoseg.config import build_options

    cls = backend_class(name)
    built = build_options(cls.Options, options, config, owner=f"backend {name!r}")
    return cls(built)


def check_model_option(name: str, model: str | None) -> None:
    """Refuse ``--model`` for a backend whose capabilities say it loads no weights.

    Called before any work, so a user who expects a model to be used learns at once
    that it would not be.
    """
    if model is None:
        return
    capabilities = backend_class(name).capabilities()
    if not capabilities.weights:
        raise OptionError(
            f"backend {name!r} loads no model weights, so --model {model} would be ignored; "
            f"drop --model, or pick a backend that loads weights (see geoseg backends)"
        )


def broken_plugins() -> list[BrokenPlugin]:
    """Plugins that failed to load or to register their backends, with their errors."""
    registry = _collect()
    return list(registry.load_errors) + list(registry.hook_errors)


def _get_registry() -> _Registry:
    global _registry
    with _lock:
        if _registry is None:
            registry = _Registry()
            _load_entry_points(registry)
            _registry = registry
        return _registry


def _allowed_names() -> set[str] | None:
    raw = os.environ.get(PLUGINS_ENV)
    if raw is None:
        return None
    return {part.strip() for part in raw.split(",") if part.strip()}


def _load_entry_points(registry: _Registry) -> None:
    allowed = _allowed_names()
    found: set[str] = set()
    # Sorted so that which of two clashing backends wins does not depend on sys.path order.
    entry_points = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    for entry_point in sorted(entry_points, key=lambda point: (point.name, point.value)):
        name = entry_point.name
        if allowed is not None and name not in allowed:
            continue
        dist = getattr(entry_point, "dist", None)
        origin = _Origin(
            dist.metadata["Name"] if dist is not None else None,
            dist.version if dist is not None else None,
        )
        if name in found:
            registry.load_errors.append(
                BrokenPlugin(
                    name,
                    origin.distribution,
                    origin.version,
                    f"entry point {name!r} is declared by more than one installed "
                    f"distribution ({registry.origins[name].distribution} and "
                    f"{origin.distribution}); uninstall one of them",
                )
            )
            continue
        found.add(name)
        registry.origins[name] = origin
        try:
            plugin = entry_point.load()
        except Exception as exc:  # any import-time failure of third-party code
            log.debug("plugin %s failed to import", name, exc_info=True)
            registry.load_errors.append(
                BrokenPlugin(
                    name,
                    origin.distribution,
                    origin.version,
                    f"cannot import {entry_point.value}: {_one_line(exc)}",
                )
            )
            continue
        error = _register(registry.pm, plugin, name)
        if error:
            registry.load_errors.append(
                BrokenPlugin(name, origin.distribution, origin.version, error)
            )
    if allowed:
        for name in sorted(allowed - found):
            registry.load_errors.append(
                BrokenPlugin(
                    name,
                    None,
                    None,
                    f"{PLUGINS_ENV} names {name!r} but no installed distribution has a "
                    f"{ENTRY_POINT_GROUP!r} entry point of that name",
                )
            )


def _register(pm: pluggy.PluginManager, plugin: Any, name: str) -> str | None:
    """Register one entry-point plugin; the reason it is broken, or None."""
    try:
        pm.register(plugin, name=name)
    except Exception as exc:  # pluggy's validation errors and duplicate names
        return f"cannot register: {_one_line(exc, with_type=False)}"
    callers = pm.get_hookcallers(plugin) or []
    unknown = sorted(caller.name for caller in callers if caller.spec is None)
    if unknown:
        pm.unregister(plugin)
        known = ", ".join(sorted(_hook_names()))
        return f"implements unknown hook {', '.join(unknown)}; geoseg hooks are: {known}"
    if not callers:
        pm.unregister(plugin)
        return (
            f"{getattr(plugin, '__name__', plugin)!s} implements no geoseg hook; decorate a "
            "register_backends(register) function with @geoseg.hookspecs.hookimpl"
        )
    return None


def _one_line(exc: BaseException, *, with_type: bool = True) -> str:
    """An exception as one line: ``broken plugins`` are listed one per line."""
    text = " ".join(str(exc).split())
    if not with_type:
        return text or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _hook_names() -> list[str]:
    return [name for name in dir(hookspecs) if hasattr(getattr(hookspecs, name), "geoseg_spec")]


def _collect() -> _Registry:
    """Call ``register_backends`` on every plugin, unless nothing changed since last time."""
    registry = _get_registry()
    pm = registry.pm
    with _lock:
        state = tuple(sorted((name, id(plugin)) for name, plugin in pm.list_name_plugin()))
        if state == registry.collected_for:
            return registry
        found: dict[str, BackendInfo] = {}
        errors: list[BrokenPlugin] = []
        # One plugin at a time, oldest first, so a plugin whose hook raises is recorded
        # alone and the first plugin to claim a backend name keeps it.
        for impl in pm.hook.register_backends.get_hookimpls():
            if impl.wrapper or impl.hookwrapper:
                continue
            plugin_name = impl.plugin_name
            origin = registry.origins.get(plugin_name, _Origin(None, None))

            def broken(message: str, plugin_name=plugin_name, origin=origin) -> None:
                errors.append(
                    BrokenPlugin(plugin_name, origin.distribution, origin.version, message)
                )

            def register(
                backend: type[Backend], plugin_name=plugin_name, origin=origin, broken=broken
            ) -> None:
                problem = _check_backend(backend, plugin_name)
                if problem:
                    broken(problem)
                    return
                if backend.name in found:
                    first = found[backend.name]
                    broken(
                        f"backend {backend.name!r} is already registered by plugin "
                        f"{first.plugin!r}"
                        + (f" ({first.distribution})" if first.distribution else "")
                        + f"; uninstall one of them or restrict plugins with {PLUGINS_ENV}"
                    )
                    return
                found[backend.name] = BackendInfo(
                    backend.name, backend, plugin_name, origin.distribution, origin.version
                )

            try:
                impl.function(**{arg: register for arg in impl.argnames})
            except Exception as exc:  # third-party hook code
                log.debug("register_backends of %s raised", plugin_name, exc_info=True)
                broken(f"register_backends raised {_one_line(exc)}")
        registry.backends = dict(sorted(found.items()))
        registry.hook_errors = errors
        registry.collected_for = state
        return registry


def _check_backend(backend: Any, plugin_name: str) -> str | None:
    """Why ``backend`` cannot be registered, or None."""
    if not (isinstance(backend, type) and issubclass(backend, Backend)):
        return f"register_backends registered {backend!r}, which is not a geoseg.backend.Backend subclass"
    if not backend.name:
        return f"backend class {backend.__qualname__} has no name; set its `name` class attribute"
    version = backend.contract_version
    if version != CONTRACT_VERSION:
        fix = (
            "upgrade geoseg or install an older release of the plugin"
            if version > CONTRACT_VERSION
            else "upgrade the plugin or install an older geoseg (for its author: "
            f"docs/plugins.md, 'Contract version', says what changed since v{version} "
            "and how to upgrade)"
        )
        return (
            f"plugin {plugin_name!r} (backend {backend.name!r}) was written for geoseg backend "
            f"contract v{version}; this geoseg speaks v{CONTRACT_VERSION}: {fix}"
        )
    return None
