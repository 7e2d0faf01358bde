"""Atomic outputs: write under a temporary name beside the target, verify, rename.

An interrupted or failed run never leaves a partial file under the final name: the file
is written under a hidden temporary name, GDAL's and the operating system's write errors
are turned into one ``OutputError`` naming the output and the cause (a full disk, a file
size limit, a folder that is not writable), the written file is synced to disk and opened
again to check it (a raster's blocks all lie inside the file and its last block reads),
and only then is it renamed into place.

A run that writes outputs it may resume holds a lock beside each of them
(``output_lock``: ``fcntl.flock`` on ``.<name>.lock``, released by the kernel when the
process dies), so a second run on the same outputs leaves them alone and start-up
clean-up (``clean_partials``) removes only the temporary files of writers that are gone.

``output_complete`` is the one test of "complete, skip it": the file opens and holds
what the job expects, never merely "a file with that name exists".
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import json
import os
import resource
import shutil
import threading
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from xml.etree import ElementTree

from geoseg.errors import IncompleteOutputError, OutputBusyError, OutputError

__all__ = [
    "atomic_output",
]

PART_MARK = ".part-"
LOCK_SUFFIX = ".lock"

#: Why an output could not be written, and what to do about it.
WRITE_FAILURES = {
    errno.ENOSPC: "free some space or write elsewhere",
    errno.EDQUOT: "free some of your quota or write elsewhere",
    errno.EFBIG: "a file size limit (ulimit -f) or the file system refuses files this "
    "large; write elsewhere",
    errno.EACCES: "choose a folder you can write to",
    errno.EPERM: "choose a folder you can write to",
    errno.EROFS: "the file system is read-only; choose another output folder",
}

RASTER_SUFFIXES = (".tif", ".tiff")
VECTOR_SUFFIXES = (".gpkg", ".fgb", ".geojson", ".shp")
#: Less free space than this after a failed write means the disk filled up.
FULL_DISK_BYTES = 1 << 20


def temporary_name(path: Path) -> Path:
    """A hidden sibling of ``path`` named after it, with the same suffix for GDAL's driver."""
    return path.with_name(f".{path.name}{PART_MARK}{uuid.uuid4().hex[:8]}{path.suffix}")


@contextlib.contextmanager
def atomic_output(path: str | Path, *, overwrite: bool = True, lock: bool = True) -> Iterator[Path]:
    """Yield a temporary path to write; on success verify it and rename it to ``path``.

    On any exception the temporary file (or folder) is removed and ``path`` is untouched;
    a write that failed for want of space or permission becomes one ``OutputError``.
    The output's lock is held meanwhile (``OutputBusyError`` if another run holds it);
    ``lock=False`` for files inside an output the caller has locked as a whole (chips).
    """
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path}: is a folder; give a file name for the output")
    if path.exists() and not overwrite:
        raise OutputError(f"{path}: exists; pass --overwrite to replace it")
    ensure_folder(path.parent)
    tmp = temporary_name(path)
    try:
        with (
            output_lock(path) if lock else contextlib.nullcontext(),
            write_errors(path, [tmp]),
        ):
            yield tmp
            _sync(tmp)
            verify_output(tmp, name=path)
            # The folder is not synced after the rename: a rename lost in a crash leaves
            # no file, or the old one, and a re-run's completeness check redoes it.
            os.replace(tmp, path)
    finally:
        remove_all([tmp])


@contextlib.contextmanager
def write_errors(path: str | Path, temporaries=()) -> Iterator[None]:
    """Turn a failure while writing ``path`` (from ``temporaries``) into one ``OutputError``
    when the cause is a full disk, a file size limit or a folder that is not writable.

    GDAL often reports a full disk only as "write error at scanline ..." (the cause goes
    to its own log), so the folder and the process's file size limit are looked at too.
    Other errors pass through unchanged.
    """
    path = Path(path)
    try:
        yield
    except OutputBusyError:
        raise
    except Exception as exc:
        failure = write_failure(path, exc, [Path(t) for t in temporaries])
        if failure is None or failure is exc:
            raise
        raise failure from None


def write_failure(path: Path, exc: BaseException, temporaries=()) -> OutputError | None:
    """The ``OutputError`` for a failed write of ``path``, or None if writing was not the cause."""
    if isinstance(exc, IncompleteOutputError):
        cause = probe_cause(path, temporaries)
        return _failed(path, cause) if cause is not None else exc
    if isinstance(exc, OutputError):
        return exc
    cause = None
    if isinstance(exc, OSError) and exc.errno in WRITE_FAILURES:
        cause = exc.errno
    if cause is None:
        text = str(exc)
        cause = next((code for code in WRITE_FAILURES if os.strerror(code) in text), None)
    if cause is None:
        cause = probe_cause(path, temporaries)
    if cause is None:
        return None
    return _failed(path, cause)


def _failed(path: Path, cause: int) -> OutputError:
    return OutputError(f"{path}: cannot write ({os.strerror(cause)}); {WRITE_FAILURES[cause]}")


def probe_cause(path: Path, temporaries) -> int | None:
    """The errno of what stops writes to ``path`` (from ``temporaries``): a full disk, the
    process's file size limit, a folder that is not writable; None when none of them."""
    folder = path.parent
    with contextlib.suppress(OSError):
        stats = os.statvfs(folder)
        if stats.f_bavail * stats.f_frsize < FULL_DISK_BYTES:
            return errno.ENOSPC
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if limit != resource.RLIM_INFINITY and any(_largest_file(t) >= limit for t in temporaries):
        return errno.EFBIG
    if not os.access(folder, os.W_OK):
        return errno.EACCES
    return None


def _largest_file(path: Path) -> int:
    with contextlib.suppress(OSError):
        if path.is_dir():
            return max((p.stat().st_size for p in path.rglob("*") if p.is_file()), default=0)
        return path.stat().st_size
    return 0


def settle(path: str | Path, *, name: str | Path | None = None) -> None:
    """Flush a written file or folder to disk and read it back (``verify_output``), before
    it is renamed into place; for writers that stage a folder themselves."""
    path = Path(path)
    with write_errors(name or path, [path]):
        _sync(path)
        verify_output(path, name=name)


def _sync(path: Path) -> None:
    """Flush a written file (or a folder's files) to disk; a late ENOSPC shows up here."""
    files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
    for file in files:
        fd = os.open(file, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def quiet_libtiff() -> None:
    """Stop libtiff printing write errors straight to stderr (``_tiffWriteProc: No space
    left on device.``): GDAL reports the failure itself and geoseg names the cause in
    one line. Errors of files GDAL opened still reach GDAL's own handler."""
    import ctypes

    import rasterio

    bundled = Path(rasterio.__file__).resolve().parent.parent / "rasterio.libs"
    for library in bundled.glob("libtiff*.so*"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(str(library)).TIFFSetErrorHandler(None)


# Verifying --------------------------------------------------------------------------


def verify_output(path: str | Path, *, name: str | Path | None = None) -> None:
    """Raise ``IncompleteOutputError`` unless the file written at ``path`` reads back.

    Chosen by suffix: rasters (every block inside the file, the last one decodes),
    vector files (every layer opens and counts its features), JSON and QGIS styles
    (parse), PNG (ends with its end chunk), safetensors (the header and tensors fit the
    file), zip-based checkpoints (the central directory reads).
    A folder (a model, a checkpoint) is verified file by file. ``name`` is the output's
    final name, for the message.
    """
    path = Path(path)
    name = name or path
    if path.is_dir():
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            verify_output(file, name=Path(name) / file.relative_to(path))
        return
    suffix = path.suffix.lower()
    if suffix in RASTER_SUFFIXES:
        verify_raster(path, name=name)
    elif suffix in VECTOR_SUFFIXES:
        verify_vector(path, name=name)
    elif suffix == ".json":
        _verify_json(path, name)
    elif suffix == ".safetensors":
        _verify_safetensors(path, name)
    elif suffix in (".qml", ".xml"):
        try:
            ElementTree.parse(path)
        except (OSError, ElementTree.ParseError) as exc:
            raise IncompleteOutputError(f"{name}: unreadable XML ({exc})") from None
    elif suffix == ".png":
        with open(path, "rb") as file:
            file.seek(max(0, os.fstat(file.fileno()).st_size - 12))
            if b"IEND" not in file.read():
                raise IncompleteOutputError(f"{name}: PNG cut short (no end chunk)")
    elif suffix in (".pt", ".pth", ".zip"):
        try:
            with zipfile.ZipFile(path) as archive:
                archive.infolist()
        except (OSError, zipfile.BadZipFile) as exc:
            raise IncompleteOutputError(f"{name}: unreadable checkpoint ({exc})") from None


def verify_raster(
    path: str | Path,
    *,
    name: str | Path | None = None,
    width: int | None = None,
    height: int | None = None,
    count: int | None = None,
    dtype: str | None = None,
    crs=None,
    transform=None,
    read_all: bool = False,
) -> None:
    """Raise ``IncompleteOutputError`` unless ``path`` is an intact raster of the given grid.

    Intact: it opens, every block of a GeoTIFF lies inside the file (none missing), and
    the last block of each band decodes (``read_all``: every pixel decodes).
    """
    import rasterio
    from rasterio.errors import RasterioError
    from rasterio.windows import Window

    name = name or path
    try:
        with rasterio.open(path) as dataset:
            expected = dict(width=width, height=height, count=count, dtype=dtype)
            found = dict(
                width=dataset.width,
                height=dataset.height,
                count=dataset.count,
                dtype=dataset.dtypes[0] if dataset.count else None,
            )
            for key, value in expected.items():
                if value is not None and found[key] != value:
                    raise IncompleteOutputError(f"{name}: {key} {found[key]}, expected {value}")
            if crs is not None and dataset.crs != crs:
                raise IncompleteOutputError(f"{name}: CRS {dataset.crs}, expected {crs}")
            if transform is not None and not dataset.transform.almost_equals(transform):
                raise IncompleteOutputError(
                    f"{name}: grid {tuple(dataset.transform)[:6]}, expected {tuple(transform)[:6]}"
                )
            if dataset.driver == "GTiff":
                _check_blocks(dataset, Path(path), name)
            if read_all:
                dataset.read()
            elif dataset.count:
                block_rows, block_cols = dataset.block_shapes[0]
                row = (dataset.height - 1) // block_rows * block_rows
                col = (dataset.width - 1) // block_cols * block_cols
                dataset.read(window=Window(col, row, dataset.width - col, dataset.height - row))
    except (RasterioError, OSError, ValueError) as exc:
        raise IncompleteOutputError(f"{name}: unreadable raster ({_first_line(exc)})") from None


def _check_blocks(dataset, path: Path, name) -> None:
    """Every block of every band recorded, and inside the file."""
    size = path.stat().st_size
    block_rows, block_cols = dataset.block_shapes[0]
    cols = -(-dataset.width // block_cols)
    rows = -(-dataset.height // block_rows)
    pixel_interleaved = dataset.interleaving is not None and dataset.interleaving.name == "PIXEL"
    bands = [1] if pixel_interleaved else range(1, dataset.count + 1)
    for band in bands:
        for row in range(rows):
            for col in range(cols):
                offset = dataset.get_tag_item(f"BLOCK_OFFSET_{col}_{row}", "TIFF", bidx=band)
                length = dataset.get_tag_item(f"BLOCK_SIZE_{col}_{row}", "TIFF", bidx=band)
                if not offset or not length or int(offset) == 0:
                    raise IncompleteOutputError(
                        f"{name}: block {row},{col} of band {band} was never written"
                    )
                if int(offset) + int(length) > size:
                    raise IncompleteOutputError(
                        f"{name}: truncated ({size} bytes, block {row},{col} "
                        f"reaches byte {int(offset) + int(length)})"
                    )


def verify_vector(
    path: str | Path, *, name: str | Path | None = None, layers: tuple[str, ...] = ()
) -> None:
    """Raise ``IncompleteOutputError`` unless every layer of ``path`` (and ``layers``) reads."""
    name = name or path
    if Path(path).suffix.lower() == ".gpkg":
        _verify_gpkg(Path(path), name, layers)
        return
    import pyogrio

    try:
        found = [layer for layer, _ in pyogrio.list_layers(path)]
        missing = [layer for layer in layers if layer not in found]
        if missing:
            raise IncompleteOutputError(f"{name}: no layer {missing[0]!r}")
        for layer in found:
            pyogrio.read_info(path, layer=layer, force_feature_count=True)
    except IncompleteOutputError:
        raise
    except Exception as exc:  # pyogrio's DataSourceError family, or sqlite's errors
        raise IncompleteOutputError(
            f"{name}: unreadable vector file ({_first_line(exc)})"
        ) from None


def _verify_gpkg(path: Path, name, layers: tuple[str, ...]) -> None:
    """A GeoPackage is an SQLite file: every page checks (``PRAGMA quick_check``), it says
    it is a GeoPackage, and every table it lists (``gpkg_contents``) counts its rows. No
    GDAL: opening it through pyogrio imports pandas, a quarter second per command."""
    import sqlite3

    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            problems = [row[0] for row in db.execute("PRAGMA quick_check")]
            if problems != ["ok"]:
                raise IncompleteOutputError(f"{name}: damaged GeoPackage ({problems[0]})")
            if db.execute("PRAGMA application_id").fetchone()[0] != 0x47504B47:
                raise IncompleteOutputError(f"{name}: not a GeoPackage")
            found = [row[0] for row in db.execute("SELECT table_name FROM gpkg_contents")]
            missing = [layer for layer in layers if layer not in found]
            if missing:
                raise IncompleteOutputError(f"{name}: no layer {missing[0]!r}")
            for table in found:
                quoted = table.replace('"', '""')
                db.execute(f'SELECT count(*) FROM "{quoted}"').fetchone()
    except sqlite3.Error as exc:
        raise IncompleteOutputError(f"{name}: unreadable GeoPackage ({_first_line(exc)})") from None


def _verify_json(path: Path, name) -> None:
    try:
        json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise IncompleteOutputError(f"{name}: unreadable JSON ({exc})") from None


def _verify_safetensors(path: Path, name) -> None:
    """The header length and JSON header fit the file (the tensors follow them)."""
    try:
        with open(path, "rb") as file:
            length = int.from_bytes(file.read(8), "little")
            size = os.fstat(file.fileno()).st_size
            if length <= 0 or 8 + length > size:
                raise ValueError(f"header of {length} bytes in a file of {size}")
            header = json.loads(file.read(length))
        end = max(
            (v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0
        )
        if 8 + length + end > size:
            raise ValueError(f"tensors reach byte {8 + length + end} of {size}")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise IncompleteOutputError(f"{name}: unreadable safetensors file ({exc})") from None


def output_complete(path: str | Path, **expect) -> bool:
    """True when ``path`` holds a complete output: it verifies (see ``verify_output``),
    and a raster also matches ``expect`` (``verify_raster``'s keywords)."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return False
    try:
        if expect:
            verify_raster(path, **expect)
        else:
            verify_output(path)
    except IncompleteOutputError:
        return False
    return True


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# Folders and clean-up --------------------------------------------------------------


def ensure_folder(folder: str | Path) -> Path:
    """Create ``folder`` (and parents) or say why it cannot be used as an output folder."""
    folder = Path(folder)
    for parent in [folder, *folder.parents]:
        if parent.exists() and not parent.is_dir():
            raise OutputError(f"{parent}: is a file, not a folder; choose another output folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        hint = WRITE_FAILURES.get(exc.errno, "choose another output folder")
        raise OutputError(
            f"{folder}: cannot create output folder ({exc.strerror}); {hint}"
        ) from None
    if not os.access(folder, os.W_OK | os.X_OK):
        cause = errno.EROFS if _read_only_fs(folder) else errno.EACCES
        raise OutputError(
            f"{folder}: output folder is not writable ({os.strerror(cause)}); "
            f"{WRITE_FAILURES[cause]}"
        )
    return folder


def check_output_folder(folder: str | Path) -> None:
    """Raise ``OutputError`` now, before any work, when ``folder`` could not take outputs:
    its nearest existing ancestor is a file or is not writable. Creates nothing."""
    folder = Path(folder).absolute()
    existing = next(p for p in [folder, *folder.parents] if p.exists())
    if not existing.is_dir():
        raise OutputError(f"{existing}: is a file, not a folder; choose another output folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        cause = errno.EROFS if _read_only_fs(existing) else errno.EACCES
        raise OutputError(
            f"{existing}: output folder is not writable ({os.strerror(cause)}); "
            f"{WRITE_FAILURES[cause]}"
        )


def _read_only_fs(folder: Path) -> bool:
    with contextlib.suppress(OSError):
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    return False


def remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


def remove_all(paths) -> None:
    """Delete temporary files and the ``.aux.xml`` files GDAL may have left beside them."""
    for path in paths:
        path = Path(path)
        remove(path)
        with contextlib.suppress(FileNotFoundError):
            Path(str(path) + ".aux.xml").unlink()


def partial_owner(part: Path) -> Path:
    """The output a temporary file (``.<name>.part-XXXX...``) was being written for."""
    return part.with_name(part.name.lstrip(".").split(PART_MARK, 1)[0])


def clean_partials(folder: str | Path, name: str | None = None) -> int:
    """Delete temporary files that runs which are gone left in ``folder``; return how many.

    With ``name``, only those of the output named ``name``. A temporary file whose output
    is locked (``output_lock``) by a live run is its writer's and stays.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    patterns = [f".{glob.escape(name)}{PART_MARK}*"] if name else [f".*{PART_MARK}*"]
    if name and Path(name).suffix:
        # Named after the stem alone by earlier versions: ``.<stem>.part-XXXX<suffix>``.
        stem, suffix = glob.escape(Path(name).stem), glob.escape(Path(name).suffix)
        patterns += [f".{stem}{PART_MARK}*{suffix}", f".{stem}{PART_MARK}*{suffix}.aux.xml"]
    by_owner: dict[Path, list[Path]] = {}
    for part in {p for pattern in patterns for p in folder.glob(pattern)}:
        by_owner.setdefault(partial_owner(part), []).append(part)
    # The lock files of killed runs go too: taking a free lock removes its file on release.
    locks = folder.glob(f".{glob.escape(name)}{LOCK_SUFFIX}" if name else f".*{LOCK_SUFFIX}")
    for lock in locks:
        by_owner.setdefault(lock.with_name(lock.name[1 : -len(LOCK_SUFFIX)]), [])
    removed = 0
    for owner, parts in by_owner.items():
        try:
            with output_lock(owner):
                remove_all(parts)
                removed += len(parts)
        except OutputBusyError:
            continue
    return removed


# Locks ------------------------------------------------------------------------------

_held: dict[Path, list[int]] = {}  # lock file -> [fd, depth]
_held_guard = threading.Lock()
# A forked child shares the parent's lock files but is not the writer holding them.
os.register_at_fork(after_in_child=_held.clear)


def lock_path(path: Path) -> Path:
    return path.with_name(f".{path.name}{LOCK_SUFFIX}")


@contextlib.contextmanager
def output_lock(path: str | Path, *, name: str | Path | None = None) -> Iterator[None]:
    """Hold the lock of output ``path`` while writing it; re-entrant within a process.

    Raises ``OutputBusyError`` (naming ``name``, default ``path``) at once when another
    process holds it. The lock file ``.<name>.lock`` beside the output is removed on
    release.
    """
    name = name or path
    path = Path(path).absolute()
    key = lock_path(path)
    with _held_guard:
        entry = _held.get(key)
        if entry is not None:
            entry[1] += 1
        else:
            fd = _acquire(key)
            if fd is None:
                raise OutputBusyError(
                    f"{name}: another geoseg run is writing it; skipped (run again once it "
                    f"has finished)"
                )
            entry = _held[key] = [fd, 1]
    try:
        yield
    finally:
        with _held_guard:
            entry[1] -= 1
            if entry[1] == 0:
                del _held[key]
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(key)
                os.close(entry[0])


def output_busy(path: str | Path) -> bool:
    """True when another process holds the lock of output ``path``."""
    try:
        with output_lock(path):
            return False
    except OutputBusyError:
        return True


def _acquire(lock: Path) -> int | None:
    """An fd holding ``flock`` on ``lock``, or None when another process holds it."""
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            if exc.errno in WRITE_FAILURES:
                raise _failed(lock.parent / lock.name[1 : -len(LOCK_SUFFIX)], exc.errno) from None
            raise
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        # The holder before us may have removed the file between our open and flock.
        try:
            if os.fstat(fd).st_ino == os.stat(lock).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)
