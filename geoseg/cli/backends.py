"""``geoseg backends``: the installed backends, their capabilities, and broken plugins."""

from __future__ import annotations

import dataclasses
import json
import os
import textwrap
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from geoseg.backend import Backend


@click.command()
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option(
    "--model",
    "model_dir",
    default=None,
    metavar="DIR",
    help="With NAME: also show the manifest of a model folder written by geoseg train.",
)
def backends(name: str | None, as_json: bool, model_dir: str | None) -> None:
    """List installed backends (or show one with its options) and any broken plugins.

    Plugins load from the 'geoseg' entry-point group; GEOSEG_PLUGINS=a,b loads only
    the named ones.
    """
    from geoseg import plugins

    infos = plugins.backend_infos()
    broken = plugins.broken_plugins()
    if name is not None:
        infos = {name: plugins.backend_info(name)}
        broken = []
    records = [_backend_record(info) for info in infos.values()]
    broken_records = [dataclasses.asdict(plugin) for plugin in broken]
    manifest = None
    if model_dir is not None:
        from geoseg.errors import OptionError
        from geoseg.manifest import check_backend

        if name is None:
            raise OptionError(
                "--model shows one backend's model; name it: geoseg backends NAME --model DIR"
            )
        manifest = check_backend(model_dir, name)
        if manifest is None:
            raise OptionError(
                f"{model_dir}: no geoseg_model.json; give a folder written by geoseg train"
            )
        records[0]["model"] = manifest

    if as_json:
        click.echo(json.dumps({"backends": records, "broken": broken_records}, indent=2))
        return
    if name is not None:
        _echo_details(records[0])
        if manifest is not None:
            from geoseg.manifest import describe

            click.echo(f"  model {model_dir}:")
            for line in describe(manifest):
                click.echo(f"    {line}")
        return
    if records:
        _echo_table(records)
    else:
        restricted = os.environ.get(plugins.PLUGINS_ENV)
        click.echo(
            "no backends installed; install one, e.g. pip install geoseg-spectral"
            + (
                f" ({plugins.PLUGINS_ENV}={restricted!r} restricts which plugins load)"
                if restricted is not None
                else ""
            )
        )
    if broken_records:
        click.echo("")
        click.echo("broken plugins:")
        for plugin in broken_records:
            origin = " ".join(p for p in (plugin["distribution"], plugin["version"]) if p)
            click.echo(
                f"  {plugin['name']}" + (f" ({origin})" if origin else "") + f": {plugin['error']}"
            )


def _backend_record(info: Any) -> dict[str, Any]:
    from geoseg.config import describe_options

    cls: type[Backend] = info.backend
    capabilities = cls.capabilities()
    return {
        "name": info.name,
        "version": info.version or getattr(cls, "version", None),
        "distribution": info.distribution,
        "plugin": info.plugin,
        "description": cls.description,
        "details": _details(cls),
        "contract_version": cls.contract_version,
        "capabilities": {
            **dataclasses.asdict(capabilities),
            "summary": capabilities.describe(),
        },
        "options": describe_options(cls.Options, trains=capabilities.trains),
    }


def _details(cls: type) -> str:
    """The backend class's docstring past its first line: what a user should know."""
    import inspect

    from geoseg.backend import Backend

    doc = inspect.getdoc(cls) or ""
    if inspect.getdoc(Backend) == doc:
        return ""
    return doc.partition("\n")[2].strip()


def _echo_table(records: list[dict[str, Any]]) -> None:
    header = ("NAME", "VERSION", "DISTRIBUTION", "CAPABILITIES", "DESCRIPTION")
    rows = [
        (
            r["name"],
            r["version"] or "-",
            r["distribution"] or "-",
            r["capabilities"]["summary"],
            r["description"] or "",
        )
        for r in records
    ]
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header) - 1)]
    for row in [header, *rows]:
        cells = [str(cell).ljust(width) for cell, width in zip(row, widths, strict=False)]
        click.echo("  ".join([*cells, row[-1]]).rstrip())


def _echo_details(record: dict[str, Any]) -> None:
    origin = " ".join(p for p in (record["distribution"], record["version"]) if p) or "-"
    click.echo(f"{record['name']}: {record['description']}")
    if record.get("details"):
        click.echo(textwrap.indent(record["details"], "  "))
    click.echo(f"  provided by: {origin} (plugin {record['plugin']!r})")
    click.echo(f"  contract: v{record['contract_version']}")
    click.echo(f"  capabilities: {record['capabilities']['summary']}")
    classes = record["capabilities"]["classes"]
    if classes:
        click.echo(f"  classes: {', '.join(classes)}")
    if record["options"]:
        click.echo("  options (--option KEY=VALUE or --config FILE):")
        trains = record["capabilities"]["trains"]
        for option in record["options"]:
            default = "none" if option["default"] is None else option["default"]
            # Only a backend that trains has options that apply to one command alone.
            applies = (
                f"  [{option['applies']} only]" if trains and option["applies"] != "both" else ""
            )
            click.echo(f"    {option['name']}={default}  ({option['type']}){applies}")
            if option["help"]:
                click.echo(
                    textwrap.fill(
                        option["help"], width=88, initial_indent=" " * 8, subsequent_indent=" " * 8
                    )
                )
    else:
        click.echo("  options: none")
