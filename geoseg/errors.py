"""The exceptions geoseg raises for user mistakes.

Every message says what was wrong and what to do next. The library raises these; only
the command line turns them into one line on stderr and exit code 2. Anything else that
escapes is a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = [
    "GeosegError",
    "InputFileError",
    "MissingCRSError",
    "BandError",
    "LabelsError",
    "ClassError",
    "OutputError",
    "OutputBusyError",
    "IncompleteOutputError",
    "SetupError",
    "OptionError",
    "BackendError",
    "WeightsError",
]


class GeosegError(Exception):
    """Root of every error caused by input, options or environment, not by a bug."""


class InputFileError(GeosegError):
    """A source file is missing, unreadable or not in a format geoseg reads."""


class MissingCRSError(InputFileError):
    """A raster or vector file carries no coordinate reference system."""


class BandError(GeosegError):
    """A band name, index or band mapping does not fit the raster."""


class LabelsError(GeosegError):
    """Labels cannot be used with a raster (no overlap, missing field, bad values)."""


class ClassError(GeosegError):
    """A class name or id is unknown, or a classes file is malformed."""


class OutputError(GeosegError):
    """An output path cannot be written (it is a file, exists, or is not writable)."""


class OutputBusyError(OutputError):
    """Another geoseg run is writing this output now; this run leaves it alone."""


class IncompleteOutputError(OutputError):
    """A file written, or found under an output's name, is unreadable or not what the job
    expects (cut short, a block missing, another grid)."""


class SetupError(GeosegError):
    """The environment geoseg runs in is broken, e.g. PROJ finds another PROJ's database."""


class OptionError(GeosegError):
    """An option value is out of range or does not fit the other options."""


class BackendError(GeosegError):
    """A backend is unknown, broken, or cannot do what was asked."""


class WeightsError(BackendError):
    """Model weights are missing or cannot be loaded."""
