"""Backend options from ``--option key=value`` pairs and YAML/JSON config files.

A backend's options are a dataclass; its field types say how text is converted and its
``__post_init__`` validates the values. Every mistake becomes an ``OptionError`` that
names the option and says what would be accepted.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from geoseg.errors import InputFileError, OptionError

_TRUE = {"true", "yes", "y", "on", "1"}
_FALSE = {"false", "no", "n", "off", "0"}
_NONE = {"none", "null", "~", ""}


def build_options(
    options_cls: type,
    pairs: Sequence[str] = (),
    config_file: str | Path | None = None,
    *,
    owner: str | None = None,
) -> Any:
    """An ``options_cls`` instance from a config file, overridden by ``key=value`` pairs.

    The config file (YAML or JSON) holds a mapping of option names to values, either at
    the top level or under an ``options:`` key. Dashes in keys count as underscores.
    ``owner`` (e.g. "backend 'spectral'") prefixes messages about unknown options.
    """
    if not dataclasses.is_dataclass(options_cls):
        raise TypeError(f"{options_cls!r} is not a dataclass")
    fields = {f.name: f for f in dataclasses.fields(options_cls) if f.init}
    hints = typing.get_type_hints(options_cls)
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}

    if config_file is not None:
        for key, value in _read_config(Path(config_file), fields).items():
            name = _field_name(str(key), fields, owner, f"in {config_file}")
            values[name] = _convert(value, hints.get(name, Any), name, f"{config_file}: option")
            sources[name] = str(config_file)

    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.strip():
            raise OptionError(f"--option {pair!r} must be KEY=VALUE, e.g. --option threshold=0.2")
        name = _field_name(key.strip(), fields, owner, f"in --option {pair}")
        values[name] = _convert(text.strip(), hints.get(name, Any), name, "--option")
        sources[name] = "--option"

    try:
        return options_cls(**values)
    except (ValueError, TypeError) as exc:
        raise OptionError(_explain(str(exc), fields, sources)) from None


def _read_config(path: Path, fields: Mapping[str, dataclasses.Field]) -> Mapping[str, Any]:
    if not path.is_file():
        raise InputFileError(f"{path}: config file not found")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputFileError(f"{path}: cannot read config file ({exc})") from None
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text) if text.strip() else None
        else:
            data = yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        detail = " ".join(str(exc).split())
        raise InputFileError(f"{path}: not valid YAML/JSON ({detail})") from None
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise InputFileError(
            f"{path}: must hold a mapping of option names to values, e.g. 'threshold: 0.2'"
        )
    if "options" in data and "options" not in fields:
        section = data["options"]
        if section is None:
            return {}
        if not isinstance(section, Mapping):
            raise InputFileError(f"{path}: 'options' must be a mapping of option names to values")
        return section
    return data


def _field_name(
    key: str, fields: Mapping[str, dataclasses.Field], owner: str | None, where: str
) -> str:
    name = key.replace("-", "_")
    if name in fields:
        return name
    who = f"{owner}: " if owner else ""
    if not fields:
        raise OptionError(f"{who}unknown option {key!r} ({where}); it takes no options")
    valid = ", ".join(fields)
    raise OptionError(f"{who}unknown option {key!r} ({where}); valid options: {valid}")


def _convert(value: Any, hint: Any, name: str, where: str) -> Any:
    try:
        return _coerce(value, hint)
    except _Mismatch as exc:
        raise OptionError(f"{where} {name}: must be {exc}, got {value!r}") from None


class _Mismatch(Exception):
    """A value that does not fit a type; the message describes what would."""


def _coerce(value: Any, hint: Any) -> Any:
    """``value`` (text from the command line, or a YAML/JSON value) as type ``hint``."""
    if hint is Any or hint is object:
        return value
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)

    if origin is Literal:
        for choice in args:
            if value == choice or (isinstance(value, str) and value == str(choice)):
                return choice
            if isinstance(value, str) and not isinstance(choice, str):
                try:
                    if _coerce(value, type(choice)) == choice:
                        return choice
                except _Mismatch:
                    pass
        raise _Mismatch("one of " + ", ".join(repr(choice) for choice in args))

    if origin is Union or origin is types.UnionType:
        members = list(args)
        if type(None) in members:
            if value is None or (isinstance(value, str) and value.strip().lower() in _NONE):
                return None
            members.remove(type(None))
        # Text fits any str member, so try the stricter members first.
        members.sort(key=lambda member: member is str)
        expected = []
        for member in members:
            try:
                return _coerce(value, member)
            except _Mismatch as exc:
                expected.append(str(exc))
        if type(None) in args:
            expected.append("none")
        raise _Mismatch(" or ".join(expected))

    if origin in (tuple, list, set, frozenset) or hint in (tuple, list):
        container = origin or hint
        if isinstance(value, str):
            items: list[Any] = [part.strip() for part in value.split(",")] if value.strip() else []
        elif isinstance(value, (list, tuple)):
            items = list(value)
        else:
            items = [value]
        if container is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(items) != len(args):
                kinds = ", ".join(_describe(arg) for arg in args)
                raise _Mismatch(f"{len(args)} comma-separated values ({kinds})")
            return tuple(_coerce(item, arg) for item, arg in zip(items, args, strict=True))
        item_hint = args[0] if args else Any
        converted = [_coerce(item, item_hint) for item in items]
        return container(converted)

    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise _Mismatch("true or false")

    if hint is int:
        if isinstance(value, bool):
            raise _Mismatch("an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        raise _Mismatch("an integer")

    if hint is float:
        if isinstance(value, bool):
            raise _Mismatch("a number")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
        raise _Mismatch("a number")

    if hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise _Mismatch("text")

    if hint is Path:
        if isinstance(value, (str, Path)):
            return Path(value).expanduser()
        raise _Mismatch("a path")

    if origin in (dict, Mapping) or hint is dict:
        if isinstance(value, Mapping):
            return dict(value)
        raise _Mismatch("a mapping (only in a config file)")

    if isinstance(hint, type):
        if isinstance(value, hint):
            return value
        try:
            return hint(value)
        except (TypeError, ValueError):
            raise _Mismatch(_describe(hint)) from None
    return value


def _describe(hint: Any) -> str:
    return {int: "integer", float: "number", str: "text", bool: "true/false"}.get(
        hint, getattr(hint, "__name__", str(hint))
    )


def _explain(message: str, fields: Mapping[str, Any], sources: Mapping[str, str]) -> str:
    """A validation message from ``__post_init__``, made to name the option if it does not."""
    message = message.strip().splitlines()[0] if message.strip() else "invalid options"
    mentioned = [name for name in fields if name in message]
    if mentioned:
        return f"invalid option: {message}"
    if len(sources) == 1:
        (name,) = sources
        return f"invalid option {name}: {message}"
    given = ", ".join(sources) or "defaults"
    return f"invalid options ({given}): {message}"
