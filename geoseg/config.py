"""Backend options from ``--option key=value`` pairs and YAML/JSON config files.

A backend's options are a dataclass; its field types say how text is converted and its
``__post_init__`` validates the values. Every mistake becomes an ``OptionError`` that
names the option (and, given an ``owner``, the backend) and says what would be accepted.

Options explain themselves (``describe_options``, shown by ``geoseg backends NAME``): a
field's help is its ``option(help=...)`` metadata, else the sentence of the class
docstring that introduces it (``name``: ...); ``option(applies=...)`` says whether it
applies to ``train``, ``predict`` or ``both`` (the training core's own options: train).
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

__all__ = [
    "option",
]

#: The commands an option applies to.
APPLIES = ("train", "predict", "both")

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

    who = f"{owner}: " if owner else ""
    try:
        return options_cls(**values)
    except OptionError as exc:
        raise OptionError(f"{who}{exc}") from None
    except (ValueError, TypeError) as exc:
        raise OptionError(who + _explain(str(exc), fields, sources)) from None


def option(
    default: Any = dataclasses.MISSING,
    *,
    help: str | None = None,
    applies: str = "both",
    default_factory: Any = dataclasses.MISSING,
) -> Any:
    """A dataclass field for a backend option, with its help and where it applies.

    ``applies``: ``"train"`` (``geoseg train`` only), ``"predict"`` or ``"both"``.
    """
    if applies not in APPLIES:
        raise ValueError(f"applies must be one of {', '.join(APPLIES)}, got {applies!r}")
    metadata = {"applies": applies}
    if help is not None:
        metadata["help"] = help
    return dataclasses.field(default=default, default_factory=default_factory, metadata=metadata)


def describe_options(options_cls: type, *, trains: bool = True) -> list[dict[str, Any]]:
    """One record per option: name, type (as typed), default, help and ``applies``.

    ``trains=False`` (a backend that does not train): every option applies to predict.
    """
    if not dataclasses.is_dataclass(options_cls):
        return []
    hints = typing.get_type_hints(options_cls)
    fields = [f for f in dataclasses.fields(options_cls) if f.init]
    docs = _docstring_help(options_cls, [f.name for f in fields])
    training = _training_core_fields()
    records = []
    for field in fields:
        if field.default is not dataclasses.MISSING:
            default = field.default
        elif field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
        else:
            default = None
        applies = field.metadata.get("applies")
        if not trains:
            applies = "predict"
        elif applies is None:
            applies = "train" if field.name in training else "both"
        records.append(
            {
                "name": field.name,
                "type": type_text(hints.get(field.name, Any)),
                "default": _default_text(default),
                "help": field.metadata.get("help") or docs.get(field.name, ""),
                "applies": applies,
            }
        )
    return records


def _training_core_fields() -> frozenset[str]:
    """Names of the training core's options (``geoseg.training.TrainingOptions``)."""
    try:
        from geoseg.training import TrainingOptions
    except ImportError:  # a core without the training extra
        return frozenset()
    return frozenset(f.name for f in dataclasses.fields(TrainingOptions))


def _docstring_help(options_cls: type, names: Sequence[str]) -> dict[str, str]:
    """Help per field from the class docstrings (this class first, then its bases).

    A field's help is the sentence that introduces it as ````name````: (or
    ````a```` / ````b````:), else the first sentence that names it.
    """
    import inspect
    import re

    sentences: list[str] = []
    for cls in options_cls.__mro__:
        doc = cls.__dict__.get("__doc__")
        if not doc or cls is object:
            continue
        body = inspect.cleandoc(doc).partition("\n")[2]
        text = " ".join(body.split())
        sentences += [part.strip() for part in re.split(r"(?<=[.;])\s+(?=``|[A-Z])", text)]
    found: dict[str, str] = {}
    for name in names:
        mark = f"``{name}``"
        introduced = re.compile(rf"^(?:``\w+``\s*(?:/|,|and)\s*)*{re.escape(mark)}[^:]*?:")
        mentions = [s for s in sentences if mark in s]
        best = next((s for s in mentions if introduced.match(s)), None)
        if best is None and mentions:
            best = mentions[0]
        if best:
            if best.startswith(f"{mark}:"):  # "``name``: what it is" -> "What it is"
                best = best[len(mark) + 1 :].replace("``", "").strip()
                best = best[:1].upper() + best[1:]
            found[name] = best.replace("``", "").rstrip(";,").rstrip(".") + "."
    return found


def type_text(hint: Any) -> str:
    """A type as a user types its values: ``ndwi|mndwi``, ``float,float``, ``int|none``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return "|".join(str(arg) for arg in args)
    if origin is Union or origin is types.UnionType:
        return "|".join("none" if arg is type(None) else type_text(arg) for arg in args)
    if origin in (tuple, list, set, frozenset):
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            return ",".join(type_text(arg) for arg in args) if args else "a,b,..."
        return f"{type_text(args[0]) if args else 'text'},..."
    return getattr(hint, "__name__", str(hint))


def _default_text(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return ",".join(f"{item:g}" if isinstance(item, float) else str(item) for item in value)
    return value if isinstance(value, (str, int, float, bool, type(None))) else repr(value)


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
