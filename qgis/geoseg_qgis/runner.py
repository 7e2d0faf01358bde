"""Run the geoseg command line of another Python environment from QGIS.

QGIS's own Python lacks rasterio and has other numpy/GDAL versions, so geoseg never runs
inside QGIS: each algorithm runs the ``geoseg`` executable of the environment geoseg is
installed in, with QGIS's Python, GDAL and PROJ variables removed from its environment.
Progress comes back as JSON lines (``GEOSEG_PROGRESS=json``); cancelling stops the
command (SIGTERM, which geoseg handles like Ctrl-C: it removes its partial outputs); a
failure is reported as the command's own one-line message.

This module does not import QGIS, so it can be tested without it.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence

#: Variables QGIS sets for its own Python, GDAL and PROJ; geoseg's environment has its own.
QGIS_VARIABLES = (
    "PYTHONPATH",
    "PYTHONHOME",
    "PYTHONSTARTUP",
    "PYTHONEXECUTABLE",
    "PROJ_DATA",
    "PROJ_LIB",
    "GDAL_DATA",
    "GDAL_DRIVER_PATH",
)
#: Environment variable naming the geoseg executable when the provider setting is empty.
EXECUTABLE_ENV = "GEOSEG_EXECUTABLE"
#: Seconds a cancelled command gets to clean up after SIGTERM before it is killed.
CANCEL_GRACE = 10.0

_TQDM = re.compile(r"(\d+)/(\d+) \[")


class GeosegCommandError(Exception):
    """geoseg failed, could not be found, or was cancelled; the message is one line."""


def clean_environment(environ: dict[str, str] | None = None) -> dict[str, str]:
    """``environ`` (default: this process's) without QGIS's variables, with JSON progress."""
    env = dict(os.environ if environ is None else environ)
    for name in QGIS_VARIABLES:
        env.pop(name, None)
    env["GEOSEG_PROGRESS"] = "json"
    env["PYTHONIOENCODING"] = "utf-8"
    return env


def find_executable(configured: str | None = None) -> str:
    """The geoseg executable: the provider setting, else ``$GEOSEG_EXECUTABLE``, else PATH."""
    name = (configured or "").strip() or os.environ.get(EXECUTABLE_ENV, "").strip() or "geoseg"
    found = shutil.which(os.path.expanduser(name))
    if found is None:
        raise GeosegCommandError(
            f"geoseg command {name!r} not found; set the geoseg executable of the environment "
            f"geoseg is installed in (e.g. /path/to/.venv/bin/geoseg) in Processing > "
            f"Options > Providers > geoseg"
        )
    return found


def parse_progress(line: str) -> tuple[float | None, str] | None:
    """(fraction done or None, what) from one line of geoseg's stderr, or None if not progress.

    JSON lines come from ``GEOSEG_PROGRESS=json``; tqdm bars (``12/40 [``) from commands
    that draw their own bars.
    """
    text = line.strip()
    if text.startswith("{"):
        try:
            record = json.loads(text)
        except ValueError:
            return None
        if isinstance(record, dict) and "progress" in record:
            total = record.get("total")
            fraction = min(1.0, record.get("n", 0) / total) if total else None
            return fraction, str(record["progress"])
        return None
    match = _TQDM.search(text)
    if match and int(match.group(2)) > 0:
        return min(1.0, int(match.group(1)) / int(match.group(2))), text.split(":")[0]
    return None


def error_line(lines: Sequence[str]) -> str:
    """The message to show for a failed command: its ``geoseg: error:`` line, else its last."""
    for line in reversed(lines):
        if line.startswith("geoseg: error:"):
            return line[len("geoseg: error:") :].strip()
    meaningful = [line for line in lines if line.strip() and parse_progress(line) is None]
    return meaningful[-1].strip() if meaningful else "geoseg failed without a message"


def run_geoseg(
    command: Sequence[str],
    *,
    on_progress: Callable[[float | None, str], None] = lambda fraction, what: None,
    on_output: Callable[[str], None] = lambda line: None,
    is_canceled: Callable[[], bool] = lambda: False,
    env: dict[str, str] | None = None,
) -> list[str]:
    """Run ``command`` (the executable first); return its stdout lines.

    Progress lines go to ``on_progress``, every other line of stdout and stderr to
    ``on_output``. Raises ``GeosegCommandError`` with the command's one-line message when
    it fails, or when ``is_canceled()`` turned true and the command was stopped.
    """
    posix = os.name == "posix"
    process = subprocess.Popen(
        list(command),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=clean_environment() if env is None else env,
        start_new_session=posix,  # its own process group: cancel reaches dask workers too
        creationflags=0 if posix else subprocess.CREATE_NEW_PROCESS_GROUP,
    )
    lines: queue.Queue[tuple[str, str | None]] = queue.Queue()
    readers = [
        threading.Thread(target=_read, args=(process.stdout, "out", lines), daemon=True),
        threading.Thread(target=_read, args=(process.stderr, "err", lines), daemon=True),
    ]
    for reader in readers:
        reader.start()
    stdout: list[str] = []
    stderr: list[str] = []
    open_streams = len(readers)
    while open_streams:
        if is_canceled():
            _stop(process)
            process.stdout.close()
            process.stderr.close()
            raise GeosegCommandError(
                "cancelled; geoseg was stopped and removed its partial outputs"
            )
        try:
            stream, line = lines.get(timeout=0.1)
        except queue.Empty:
            continue
        if line is None:
            open_streams -= 1
            continue
        (stdout if stream == "out" else stderr).append(line)
        progress = parse_progress(line) if stream == "err" else None
        if progress is not None:
            on_progress(*progress)
        elif line.strip() and not line.startswith("geoseg: error:"):  # raised as the error
            on_output(line)
    returncode = process.wait()
    process.stdout.close()
    process.stderr.close()
    if returncode != 0:
        raise GeosegCommandError(error_line(stderr))
    return stdout


def _read(stream, name: str, lines: queue.Queue) -> None:
    """Put each line of ``stream`` (split at newlines and tqdm's carriage returns)."""
    pending = b""
    for chunk in iter(lambda: stream.read1(4096), b""):
        pending += chunk
        *complete, pending = re.split(rb"[\r\n]", pending)
        for raw in complete:
            lines.put((name, raw.decode("utf-8", "replace")))
    if pending:
        lines.put((name, pending.decode("utf-8", "replace")))
    lines.put((name, None))


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM to the command's process group, then SIGKILL if it has not ended in time."""
    if process.poll() is not None:
        return
    try:
        if os.name == "posix":
            os.killpg(process.pid, signal.SIGTERM)
        else:
            process.send_signal(signal.CTRL_BREAK_EVENT)
    except (ProcessLookupError, PermissionError):
        return
    deadline = time.monotonic() + CANCEL_GRACE
    while process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if process.poll() is None:
        if os.name == "posix":
            os.killpg(process.pid, signal.SIGKILL)
        else:
            process.kill()
        process.wait()


def backends(executable: str, timeout: float = 120) -> dict[str, dict]:
    """The backends installed beside ``executable`` by name (``geoseg backends --json``)."""
    result = subprocess.run(
        [executable, "backends", "--json"],
        capture_output=True,
        text=True,
        env=clean_environment(),
        timeout=timeout,
    )
    if result.returncode != 0:
        raise GeosegCommandError(error_line(result.stderr.splitlines()))
    return {record["name"]: record for record in json.loads(result.stdout)["backends"]}


if __name__ == "__main__":  # pragma: no cover - a manual check: python runner.py geoseg ...
    print(run_geoseg(sys.argv[1:], on_progress=print, on_output=print))
