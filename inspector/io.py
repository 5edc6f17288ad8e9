"""Files as every command needs them: written whole or not at all, read only when they are regular files,
listed without the run's own output, named safely in reports, and one run per output folder.

Torch-free: training, export and the runtime all use these helpers.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import stat
from collections.abc import Callable, Iterable
from contextlib import suppress
from pathlib import Path
from types import TracebackType
from typing import IO

from inspector.errors import InspectorError

LOCK_NAME = ".inspector.lock"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pbm", ".jp2")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


# --- names ---------------------------------------------------------------------------------------------


def is_image_name(path: str | os.PathLike[str]) -> bool:
    """True when the file name has an image extension (the file itself may still be unreadable)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def display_path(path: str | os.PathLike[str]) -> str:
    """``path`` as text that can always be printed and written to a UTF-8 report.

    Bytes that are not UTF-8 (kept by Python as surrogate escapes) become ``\\xNN``, and so do control
    characters (a newline or an escape sequence in a file name cannot break a line or the terminal).
    """
    text = os.fspath(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = os.fsencode(text).decode("utf-8", "backslashreplace")
    return _CONTROL.sub(lambda match: f"\\x{ord(match.group()):02x}", text)


def os_error_text(error: OSError, path: str | os.PathLike[str] | None = None) -> str:
    """One line naming the path and the cause of an ``OSError``: ``out/report.csv: No space left on device``."""
    where = path if path is not None else error.filename
    cause = error.strerror or str(error) or type(error).__name__
    if where is None:
        return cause
    text = f"{display_path(where)}: {cause}"
    if error.filename2 is not None:
        text += f" (-> {display_path(error.filename2)})"
    return text


def file_kind(mode: int) -> str:
    """What a ``stat`` mode is, in words: ``a directory``, ``a FIFO (named pipe)``, ``a regular file``..."""
    kinds = (
        (stat.S_ISREG, "a regular file"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    )
    return next((name for check, name in kinds if check(mode)), "not a regular file")


# --- reading ---------------------------------------------------------------------------------------------


class NotRegularFileError(InspectorError):
    """A path that is a directory, FIFO, device or socket where a regular file was expected."""


def read_regular_file(path: str | os.PathLike[str]) -> bytes:
    """The bytes of a regular file (symbolic links followed).

    A directory, FIFO, device or socket is refused before it is read, so a FIFO named like an image never
    blocks; the file is opened without blocking and checked again, in case it was swapped in between.

    Raises:
        NotRegularFileError: the path is not a regular file (the message says what it is).
        OSError: missing, a broken link or a link loop, no permission, an I/O error.
    """
    _require_regular(path, os.stat(path).st_mode)
    flags = (
        os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_BINARY", 0)
    )
    descriptor = os.open(path, flags)
    with os.fdopen(descriptor, "rb") as handle:
        _require_regular(path, os.fstat(handle.fileno()).st_mode)
        return handle.read()


def check_regular_file(path: str | os.PathLike[str], what: str, hint: str = "") -> Path:
    """``path`` when it is a regular file; else :class:`InspectorError` saying what it is instead.

    ``what`` names the expected file (``model file``), ``hint`` says how to get one when it is missing.
    """
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise InspectorError(f"{display_path(path)}: {what} not found{'; ' + hint if hint else ''}") from None
    except OSError as error:
        raise InspectorError(f"{os_error_text(error, path)} (cannot read the {what})") from None
    if not stat.S_ISREG(mode):
        raise InspectorError(f"{display_path(path)}: is {file_kind(mode)}, not a {what}")
    return path


def _require_regular(path: str | os.PathLike[str], mode: int) -> None:
    if not stat.S_ISREG(mode):
        raise NotRegularFileError(f"{display_path(path)}: is {file_kind(mode)}, not a regular file")


# --- writing ---------------------------------------------------------------------------------------------


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], None]) -> Path:
    """Write a file through ``write(handle)`` so that readers see the old file or the new one, never half.

    The data goes to a uniquely named temporary file in the same folder (created with the permissions a
    plain ``open(path, "w")`` gives: the umask's, or the replaced file's), is flushed to disk and renamed
    over ``path``. On any failure, Ctrl-C included, the temporary file is removed and the error re-raised.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = _create_temporary(path)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        with suppress(OSError):
            os.unlink(temporary)
        if isinstance(error, OSError) and error.filename is None and error.errno is not None:
            raise OSError(error.errno, error.strerror, str(path)) from error  # name the file we were writing
        raise
    _fsync_folder(path.parent)
    return path


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """:func:`atomic_write` of ``data``."""
    return atomic_write(path, lambda handle: handle.write(data))


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """:func:`atomic_write` of a UTF-8 text file."""
    return atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


def _create_temporary(path: Path) -> tuple[int, str]:
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        mode = None  # a new file: 0o666 less the umask, as open() gives
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        temporary = str(path.with_name(f".{path.name[:80]}.{secrets.token_hex(6)}.tmp"))
        try:
            descriptor = os.open(temporary, flags, 0o666)
        except FileExistsError:
            continue
        if mode is not None:
            with suppress(OSError, AttributeError):
                os.fchmod(descriptor, mode)
        return descriptor, temporary
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(path))


def _fsync_folder(folder: Path) -> None:
    # Makes the rename itself durable; not possible on every platform (Windows), where it is skipped.
    with suppress(OSError, AttributeError):
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def make_folder(path: str | os.PathLike[str], what: str = "output folder") -> Path:
    """Create ``path`` (and its parents) if needed; :class:`InspectorError` naming the path and cause if not."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        blocker = _file_in_the_way(path)
        cause = f"{display_path(blocker)} is a file, not a folder" if blocker else os_error_text(error)
        raise InspectorError(f"cannot create the {what} {display_path(path)} ({cause})") from None
    return path


def check_writable_folder(path: str | os.PathLike[str], what: str = "output folder") -> None:
    """Raise :class:`InspectorError` when ``path`` could not be created or written, without creating it.

    Checks the nearest existing ancestor: a file in the way, a read-only file system or no permission.
    """
    path = Path(path)
    blocker = _file_in_the_way(path)
    if blocker is not None:
        raise InspectorError(
            f"cannot create the {what} {display_path(path)} ({display_path(blocker)} is a file, not a folder)"
        )
    existing = path
    while not existing.is_dir() and existing != existing.parent:
        existing = existing.parent
    if not os.access(existing, os.W_OK | os.X_OK):
        cause = "read-only file system" if _read_only_mount(existing) else "no write permission"
        raise InspectorError(
            f"cannot write the {what} {display_path(path)} ({display_path(existing)}: {cause})"
        )


def _file_in_the_way(path: Path) -> Path | None:
    """The nearest of ``path`` and its ancestors that exists, when it is not a folder."""
    existing = path
    while not os.path.lexists(existing) and existing != existing.parent:
        existing = existing.parent
    return existing if existing.exists() and not existing.is_dir() else None


def _read_only_mount(folder: Path) -> bool:
    with suppress(OSError, AttributeError):
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    return False


# --- one run per output folder ------------------------------------------------------------------------


class FolderLock:
    """An exclusive lock on an output folder, held by one run from start to end.

    A second run into the same folder gets :class:`InspectorError` at once. The lock belongs to the open
    file, so a run that is killed releases it too; a lock file left behind by a killed run is reused.

    Example:
        >>> with FolderLock("runs/inspect/photos"):
        ...     ...  # write the report
    """

    def __init__(self, folder: str | os.PathLike[str]):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._descriptor: int | None = None

    def acquire(self) -> FolderLock:
        make_folder(self.folder)
        while True:
            try:
                descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
            except OSError as error:
                raise InspectorError(
                    f"cannot write to {display_path(self.folder)} ({os_error_text(error)})"
                ) from None
            if not _try_lock(descriptor):
                holder = _read_holder(descriptor)
                os.close(descriptor)
                raise InspectorError(
                    f"{display_path(self.folder)} is in use by another inspector run{holder}; wait for it to "
                    "end or choose another --out"
                )
            if _same_file(descriptor, self.path):
                break
            os.close(descriptor)  # the previous holder removed the file as we opened it: lock the new one
        with suppress(OSError):
            os.ftruncate(descriptor, 0)
            os.write(descriptor, f"{os.getpid()}\n".encode())
        self._descriptor = descriptor
        return self

    def release(self) -> None:
        if self._descriptor is None:
            return
        with suppress(OSError):
            os.unlink(self.path)  # while still locked, so that no one else holds a lock on a removed file
        os.close(self._descriptor)
        self._descriptor = None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.release()


def _try_lock(descriptor: int) -> bool:
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        try:
            msvcrt.locking(descriptor, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        if error.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            return False
        raise
    return True


def _read_holder(descriptor: int) -> str:
    with suppress(OSError, ValueError, AttributeError):  # no os.pread on Windows
        text = os.pread(descriptor, 32, 0).decode("ascii").strip()
        return f" (process {int(text)})"
    return ""


def _same_file(descriptor: int, path: Path) -> bool:
    try:
        on_disk = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(descriptor)
    return (held.st_dev, held.st_ino) == (on_disk.st_dev, on_disk.st_ino)


# --- listing images ---------------------------------------------------------------------------------------


def list_images(
    folder: str | os.PathLike[str],
    recursive: bool = False,
    exclude: Iterable[str | os.PathLike[str]] = (),
) -> list[tuple[str, Path]]:
    """The image-named entries under ``folder`` as (report key, path), sorted by key; a file is its own list.

    Keys are paths relative to ``folder`` with ``/`` separators, escaped by :func:`display_path`. Every
    image-named entry is listed whatever it is (a directory, a FIFO, a broken link): reading it says why it
    cannot be used. Recursively, real sub-folders are walked (linked ones are not, so link loops end);
    nothing inside an ``exclude`` folder is listed, through a link or not.
    """
    folder = Path(folder)
    if folder.is_file():
        return [(display_path(folder.name), folder)]
    if not folder.is_dir():
        raise InspectorError(f"{display_path(folder)}: no such folder or image file")
    excluded = [os.path.realpath(path) for path in exclude]
    found: list[tuple[str, Path]] = []

    def visit(directory: str, prefix: str) -> None:
        with os.scandir(directory) as scan:
            entries = sorted(scan, key=lambda entry: entry.name)
        for entry in entries:
            if recursive and entry.is_dir(follow_symlinks=False):
                if not _inside(os.path.realpath(entry.path), excluded):
                    visit(entry.path, f"{prefix}{entry.name}/")
            elif is_image_name(entry.name):
                if entry.is_symlink() and _inside(os.path.realpath(entry.path), excluded):
                    continue
                found.append((display_path(prefix + entry.name), Path(entry.path)))

    visit(os.fspath(folder), "")
    found.sort(key=lambda pair: pair[0])
    return found


def is_inside(path: str | os.PathLike[str], folders: Iterable[str | os.PathLike[str]]) -> bool:
    """True when ``path`` is one of ``folders`` or lies inside one (links resolved on both sides)."""
    return _inside(os.path.realpath(path), [os.path.realpath(folder) for folder in folders])


def _inside(resolved: str, folders: list[str]) -> bool:
    return any(
        resolved == folder or resolved.startswith(folder.rstrip(os.sep) + os.sep) for folder in folders
    )
