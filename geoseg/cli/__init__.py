"""The ``geoseg`` command line.

Commands live one per module and are imported only when run, so ``geoseg tile`` never
pays for importing torch. Library errors (``GeosegError``) become one line on stderr and
exit code 2; anything else is a bug and keeps its traceback (exit code 1).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys
import warnings

import click

from geoseg import __version__
from geoseg.errors import GeosegError

GDAL_CACHE_MB = 64

#: command name -> "module:function" under geoseg.cli
COMMANDS = {
    "tile": "geoseg.cli.tile:tile",
    "reproject": "geoseg.cli.reproject:reproject",
    "index": "geoseg.cli.index:index",
    "prompts": "geoseg.cli.prompts:prompts",
    "predict": "geoseg.cli.predict:predict",
    "train": "geoseg.cli.train:train",
    "evaluate": "geoseg.cli.evaluate:evaluate",
    "vectorize": "geoseg.cli.vectorize:vectorize",
    "backends": "geoseg.cli.backends:backends",
    "export": "geoseg.cli.export:export",
}


class UserError(click.ClickException):
    """A ``GeosegError`` on its way to stderr: one line, exit code 2."""

    exit_code = 2

    def show(self, file=None) -> None:
        click.echo(f"geoseg: error: {self.format_message()}", err=True, file=file)


class GeosegGroup(click.Group):
    """Loads command modules lazily and turns library errors into user errors."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        available = []
        for name, target in COMMANDS.items():
            module = target.split(":")[0]
            if importlib.util.find_spec(module) is not None:
                available.append(name)
        return sorted(available)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        if importlib.util.find_spec(module_name) is None:
            return None
        return getattr(importlib.import_module(module_name), attr)

    def invoke(self, ctx: click.Context):
        import rasterio

        from geoseg.atomic import quiet_libtiff
        from geoseg.signals import sigterm_interrupts
        from geoseg.sources import GDAL_HTTP_DEFAULTS

        try:
            # Inside an Env, GDAL's messages go to the "rasterio" logger instead of
            # straight to stderr, so -v decides whether a user sees them.
            # A bounded block cache: GDAL's default (5% of RAM) lets peak memory grow with
            # the raster for no gain, since chips are read once (overlaps stay cached).
            options = (
                {} if "GDAL_CACHEMAX" in os.environ else {"GDAL_CACHEMAX": GDAL_CACHE_MB << 20}
            )
            # Remote COGs: windowed range reads, retries; what the environment sets wins.
            options.update({k: v for k, v in GDAL_HTTP_DEFAULTS.items() if k not in os.environ})
            with rasterio.Env(**options), sigterm_interrupts():
                quiet_libtiff()  # a full disk is reported once, by geoseg, naming the file
                return super().invoke(ctx)
        except GeosegError as exc:
            raise UserError(str(exc)) from None
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as exc:
            # One line like geoseg's own errors, instead of click's usage block.
            raise UserError(_usage_line(exc)) from None
        except KeyboardInterrupt:
            # Ctrl-C or SIGTERM (geoseg.signals): temporary files are already removed.
            click.echo("geoseg: interrupted", err=True)
            raise click.exceptions.Exit(1) from None

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as exc:  # geoseg's own options: geoseg --bogus
            raise UserError(_usage_line(exc)) from None
        except KeyboardInterrupt:
            # Ctrl-C or SIGTERM: temporary files are already removed on the way up.
            click.echo("geoseg: interrupted", err=True)
            raise click.exceptions.Exit(1) from None


def _usage_line(exc: click.UsageError) -> str:
    """A click usage error as one line that says where to find the usage."""
    message = " ".join(exc.format_message().split()).rstrip(".")
    if message[:1].isupper() and not message[1:2].isupper():
        message = message[0].lower() + message[1:]
    # The root is geoseg whatever name the program was started under.
    command = " ".join(["geoseg", *(exc.ctx.command_path.split()[1:] if exc.ctx else [])])
    return f"{message} (see {command} --help)"


def _quiet_library_warnings() -> None:
    """Keep warnings from rasterio and pyogrio off stderr; -v shows them again.

    The cases they warn about are either handled by geoseg with its own message (a PNG
    without georeferencing) or harmless to what geoseg does (a mask shadowing nodata in a
    chip it wrote, the styles table beside a GeoPackage's polygons, read by layer name).
    """
    from rasterio.errors import NodataShadowWarning, NotGeoreferencedWarning

    warnings.filterwarnings("ignore", category=NotGeoreferencedWarning)
    warnings.filterwarnings("ignore", category=NodataShadowWarning)
    warnings.filterwarnings("ignore", message="More than one layer found", module="pyogrio")
    warnings.filterwarnings("ignore", message="'crs' was not provided", module="pyogrio")


@click.group(cls=GeosegGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="geoseg")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def cli(verbose: int) -> None:
    """Turn orthoimagery and satellite rasters into georeferenced water and land-cover masks."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="geoseg: %(levelname)s: %(message)s")
    # GDAL warnings about harmless TIFF quirks are noise unless asked for.
    logging.getLogger("rasterio").setLevel(logging.ERROR if verbose == 0 else level)
    if verbose == 0:
        _quiet_library_warnings()


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="geoseg")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
