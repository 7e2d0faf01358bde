"""Options shared by several commands, defined once."""

from __future__ import annotations

import sys
from pathlib import Path

import click


def bands_option(f):
    return click.option(
        "--bands",
        metavar="PRESET|MAP",
        default=None,
        help="Band names: a preset (naip, sentinel2, landsat8, rgb) or NAME=INDEX pairs, "
        "e.g. red=1,green=2,blue=3,nir=4. Default: from the file's band descriptions.",
    )(f)


def size_option(default: str | None = "512"):
    return click.option(
        "--size",
        default=default,
        show_default=default is not None,
        metavar="PX|METRES",
        help="Chip size in pixels, or in metres with an m suffix (e.g. 2560m).",
    )


def overlap_option(default: str = "64"):
    return click.option(
        "--overlap",
        default=default,
        show_default=True,
        metavar="PX|METRES",
        help="Overlap between neighbouring chips, in pixels or metres (m suffix).",
    )


def index_option(help: str, *, water_methods: bool = False):
    """--index, checked by the library so an unknown index is one line, not click's three.

    With ``water_methods`` it also takes ``auto`` (the default: the water method follows
    the bands, see ``geoseg.water``) and ``multi``.
    """
    from geoseg.indices import INDICES

    if water_methods:
        from geoseg.water import METHODS

        return click.option(
            "--index", default="auto", show_default=True, metavar="|".join(METHODS), help=help
        )
    return click.option(
        "--index", default="ndwi", show_default=True, metavar="|".join(INDICES), help=help
    )


def hsv_options(f):
    """--hue, --saturation and --value for the HSV rule."""
    from geoseg.indices import HSV_DEFAULTS

    for name, unit in (("value", "0..1"), ("saturation", "0..1"), ("hue", "degrees")):
        low, high = HSV_DEFAULTS[name]
        f = click.option(
            f"--{name}",
            default=None,
            metavar="LOW,HIGH",
            help=f"--index hsv: {name} range in {unit} (default {low:g},{high:g}).",
        )(f)
    return f


def hsv_params(index: str, hue: str | None, saturation: str | None, value: str | None) -> dict:
    """Index parameters from the HSV options; other indices take none."""
    given = {k: v for k, v in (("hue", hue), ("saturation", saturation), ("value", value)) if v}
    if given and index.lower() != "hsv":
        from geoseg.errors import OptionError

        raise OptionError(f"--{next(iter(given))} applies to --index hsv only, not {index}")
    return given


DEVICES = ("auto", "cpu", "cuda", "mps")


def _device(ctx: click.Context, param: click.Parameter, value: str) -> str:
    name = value.lower()
    # cuda:N picks one GPU; accelerate sets the device per process itself.
    if name in DEVICES or (name.startswith("cuda:") and name[5:].isdigit()):
        return name
    raise click.BadParameter(f"{value!r}; use auto, cpu, cuda, cuda:N or mps")


def backend_option(help: str):
    return click.option("--backend", "backend_name", required=True, metavar="NAME", help=help)


def model_option(help: str):
    return click.option("--model", default=None, metavar="PATH|HUB_ID", help=help)


device_option = click.option(
    "--device", default="auto", show_default=True, callback=_device, metavar="auto|cpu|cuda|mps"
)


def backend_settings_options(f):
    """--option KEY=VALUE (repeatable) and --config FILE, checked against the backend."""
    f = click.option(
        "--config",
        "config_file",
        type=click.Path(path_type=Path),
        default=None,
        help="YAML/JSON file of backend options (--option overrides it).",
    )(f)
    return click.option(
        "--option",
        "options",
        multiple=True,
        metavar="KEY=VALUE",
        help="Backend option (repeatable; see geoseg backends NAME).",
    )(f)


dst_crs_option = click.option(
    "--dst-crs", default=None, metavar="CRS", help="Output CRS, e.g. EPSG:32718."
)
resolution_option = click.option(
    "--resolution",
    type=float,
    default=None,
    metavar="R",
    help="Output pixel size in units of the output CRS.",
)
overwrite_option = click.option(
    "--overwrite",
    is_flag=True,
    help="Redo outputs that are complete. Without it a complete output is skipped (and "
    "said so); an incomplete or damaged one is always redone.",
)


def echo_skipped(path) -> None:
    """The one line for an output that is complete and kept (see ``overwrite_option``)."""
    click.echo(f"{path}: complete, skipped (--overwrite redoes it)", err=True)


fail_fast_option = click.option(
    "--fail-fast",
    is_flag=True,
    help="Stop at the first source that fails (default: report it, go on with the others, "
    "exit 2 at the end).",
)
seed_option = click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
quiet_option = click.option("-q", "--quiet", is_flag=True, help="No progress bar.")


#: ``GEOSEG_PROGRESS=json``: progress as JSON lines on stderr instead of bars, for programs
#: that run geoseg (the QGIS plugin): ``{"progress": DESC, "n": DONE, "total": TOTAL|null,
#: "unit": UNIT}``, at most every ``JsonProgress.interval`` seconds and at each end.
PROGRESS_ENV = "GEOSEG_PROGRESS"


class JsonProgress:
    """The part of tqdm's interface the commands use, reported as JSON lines on stderr."""

    interval = 0.2

    def __init__(self, total: int | None, desc: str, unit: str, disable: bool) -> None:
        self.total, self.desc, self.unit, self.disable = total, desc, unit, disable
        self.n, self._last = 0, 0.0

    def update(self, n: int = 1) -> None:
        self.n += n
        self._emit(force=self.total is not None and self.n >= self.total)

    def refresh(self) -> None:
        self._emit(force=True)

    def set_postfix(self, *args, **kwargs) -> None:
        """Bars show loss and the like beside the count; the JSON lines keep to the count."""

    def close(self) -> None:
        self._emit(force=True)

    def _emit(self, force: bool = False) -> None:
        import json
        import time

        now = time.monotonic()
        if self.disable or (not force and now - self._last < self.interval):
            return
        self._last = now
        record = {"progress": self.desc, "n": self.n, "total": self.total, "unit": self.unit}
        click.echo(json.dumps(record), err=True)


def progress_bar(total: int | None, desc: str, *, quiet: bool = False, unit: str = "chip"):
    """A progress bar on stderr (the library reports progress through callbacks).

    JSON lines instead when ``GEOSEG_PROGRESS=json`` (see ``PROGRESS_ENV``).
    """
    import os

    if os.environ.get(PROGRESS_ENV, "").lower() == "json":
        return JsonProgress(total, desc, unit, disable=quiet)
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=quiet, leave=True, dynamic_ncols=True)


class Progress:
    """A progress bar that appears once the library says how much work there is.

    Pass ``start`` as the library's ``on_start`` callback and ``update`` as ``progress``.
    """

    def __init__(self, desc: str, *, quiet: bool = False, unit: str = "chip") -> None:
        self.desc, self.quiet, self.unit = desc, quiet, unit
        self.bar = None

    def start(self, total: int | None) -> None:
        if self.bar is None:
            self.bar = progress_bar(total, self.desc, quiet=self.quiet, unit=self.unit)
        else:
            self.bar.total = total
            self.bar.refresh()

    def update(self, n: int = 1) -> None:
        if self.bar is None:
            self.start(None)
        self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def cluster_options(f):
    """``--workers N`` (a local dask cluster) and ``--scheduler`` (an existing one)."""
    f = click.option(
        "--scheduler",
        default=None,
        metavar="tcp://HOST:PORT|FILE",
        help="Run on an existing dask cluster: scheduler address or scheduler JSON file.",
    )(f)
    return click.option(
        "--workers",
        type=click.IntRange(min=1),
        default=None,
        metavar="N",
        help="Run on a local dask cluster of N worker processes (one thread each).",
    )(f)


def echo_failure(failure, bar: Progress | None = None) -> None:
    """One line on stderr for a source that failed (``geoseg.batch.Failure``).

    An internal error keeps its traceback above that line, as a bug should.
    """
    write = bar.bar.write if bar is not None and bar.bar is not None else click.echo
    if failure.details:
        write(failure.details.rstrip(), file=sys.stderr)
    write(f"geoseg: error: {failure.describe()}", file=sys.stderr)


def finish_batch(sources: int, done: int, failures, already_complete: int | None = None) -> None:
    """The summary of a job over several sources, and its exit code when any failed."""
    from geoseg.batch import exit_code

    if sources > 1:
        line = f"{done} done, {len(failures)} failed"
        if already_complete is not None:
            line += f", {already_complete} already complete"
        click.echo(line)
    if failures:
        if sources > 1:
            click.echo("re-run the same command to redo only what failed", err=True)
        sys.exit(exit_code(failures))
