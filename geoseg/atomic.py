"""Atomic outputs: write under a temporary name beside the target, rename when complete.

An interrupted or failed run never leaves a partial file under the final name, and a
re-run can trust that every file it finds under its final name is complete.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from geoseg.errors import OutputError

PART_MARK = ".part-"


def temporary_name(path: Path) -> Path:
    """A hidden sibling of ``path`` with the same suffix, so GDAL picks the same driver."""
    return path.with_name(f".{path.stem}{PART_MARK}{uuid.uuid4().hex[:8]}{path.suffix}")


@contextlib.contextmanager
def atomic_output(path: str | Path, *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path to write; on success rename it to ``path``.

    On any exception the temporary file (or folder) is removed and ``path`` is untouched.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path}: is a folder; give a file name for the output")
    if path.exists() and not overwrite:
        raise OutputError(f"{path}: exists; pass --overwrite to replace it")
    ensure_folder(path.parent)
    tmp = temporary_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        remove(tmp)
        raise


def ensure_folder(folder: str | Path) -> Path:
    """Create ``folder`` (and parents) or say why it cannot be used as an output folder."""
    folder = Path(folder)
    for parent in [folder, *folder.parents]:
        if parent.exists() and not parent.is_dir():
            raise OutputError(f"{parent}: is a file, not a folder; choose another output folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{folder}: cannot create output folder ({exc.strerror})") from None
    return folder


def remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


def clean_partials(folder: str | Path, stem: str | None = None) -> int:
    """Delete temporary files an interrupted run left in ``folder``; return how many.

    With ``stem``, only those of the output named ``stem`` (other runs may be writing
    their own outputs in the same folder).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    stale = list(folder.glob(f".{stem or '*'}{PART_MARK}*"))
    for path in stale:
        remove(path)
    return len(stale)
