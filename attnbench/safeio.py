"""Every file attnbench writes, rewrites or reads whole goes through here.

Three rules, each in one place:

- **Never through a link, never half written.** :func:`write_atomic` writes a new file beside
  the target (created exclusively, so never through a link an attacker planted), fsyncs it and
  renames it over the target, then fsyncs the directory: a reader sees the old file or the new
  one, never part of one, after a SIGKILL or on a full disk (the temporary file is removed on
  an error; a kill leaves only a hidden ``.NAME.*.tmp`` beside it). :func:`open_append` and
  :func:`open_lock` open without following a link (``O_NOFOLLOW``). A target that is a
  symbolic link, a directory, a FIFO or a device is refused, naming it.
- **Regular files only, of bounded size.** :func:`read_bytes` opens without blocking (a FIFO
  cannot hang it), refuses anything but a regular file and reads at most ``limit`` bytes,
  saying so when a file is larger.
- **No output replaces an input.** :func:`check_outputs` refuses an output path that is one
  of the command's input files (by inode, so a hard link or a second spelling counts), a file
  the store owns (``meta.json``, ``results.jsonl``, ``.lock``), two outputs that are one file,
  or a file inside a run directory the command does not read.

Errors are :class:`UnsafePathError` (a ValueError: the commands print it and exit 2) or, for
the system's own failures (a full disk, a permission), the ``OSError`` itself with its path.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

# The files a run directory's store owns (attnbench.store): no other command may write them.
STORE_OWNED = ("meta.json", "results.jsonl", ".lock", "checkpoints")
# What a run directory holds besides: only ``run`` and ``report`` write these there.
DERIVED = ("results.csv", "index.html")
TEMP_SUFFIX = ".tmp"


class UnsafePathError(ValueError):
    """A path attnbench will not read or write, and why (the message names it)."""


def kind_of(mode: int) -> str:
    """What a file is, in words (for messages)."""
    for test, name in ((stat.S_ISREG, "a regular file"), (stat.S_ISLNK, "a symbolic link"),
                       (stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def _refuse_unless_regular(path: Path, mode: int, doing: str) -> None:
    if not stat.S_ISREG(mode):
        extra = ""
        if stat.S_ISLNK(mode):
            extra = f" (to {os.readlink(path)}); attnbench never writes through a link"
        raise UnsafePathError(f"{path}: is {kind_of(mode)}{extra}, so it cannot {doing}; "
                              "remove it or choose another path")


def check_writable_target(path: str | os.PathLike) -> None:
    """Refuse a target that exists and is not a regular file (a link, a directory, ...)."""
    path = Path(path)
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    _refuse_unless_regular(path, mode, "be written")


def is_temp_name(name: str) -> bool:
    """A temporary file :func:`write_atomic` leaves only when it is killed."""
    return name.startswith(".") and name.endswith(TEMP_SUFFIX)


def write_atomic(path: str | os.PathLike, data: str | bytes) -> Path:
    """Replace ``path`` with ``data`` (text is written as UTF-8; a character the file-system
    encoding could not decode is kept as a backslash escape), atomically. Returns the path."""
    path = Path(path)
    check_writable_target(path)
    if isinstance(data, str):
        data = data.encode("utf-8", errors="backslashreplace")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:200]}.", suffix=TEMP_SUFFIX,
                               dir=path.parent)
    try:
        os.fchmod(fd, _mode_for(path))  # mkstemp's 0600 would hide a report from its readers
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # a link planted meanwhile is replaced, never followed
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def _mode_for(path: Path) -> int:
    """The replaced file's permissions, or a new file's (0666 less the umask)."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


@contextlib.contextmanager
def atomic_text(path: str | os.PathLike, newline: str | None = None) -> Iterator:
    """A text file object whose content replaces ``path`` atomically when the block ends
    without an error (for writers such as ``csv``); nothing changes otherwise."""
    import io

    buffer = io.StringIO(newline=newline)
    yield buffer
    write_atomic(path, buffer.getvalue())


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return  # not every file system lets a directory be opened; the rename is done
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _open_nofollow(path: Path, flags: int, doing: str) -> int:
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        try:
            mode = os.lstat(path).st_mode
        except OSError:
            raise exc from None
        _refuse_unless_regular(path, mode, doing)
        raise
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        _refuse_unless_regular(path, info.st_mode, doing)
    if info.st_nlink > 1:  # a hard link: the same file is somewhere else too
        os.close(fd)
        raise UnsafePathError(f"{path}: has {info.st_nlink} hard links, so it is also a file "
                              f"elsewhere and cannot {doing}; attnbench never writes a file "
                              "linked outside its directory: replace it with a copy")
    os.set_blocking(fd, True)
    return fd


def open_append(path: str | os.PathLike, binary: bool = False):
    """``path`` opened for appending (created if missing), never through a link."""
    fd = _open_nofollow(Path(path), os.O_WRONLY | os.O_APPEND | os.O_CREAT, "be appended to")
    return os.fdopen(fd, "ab") if binary else os.fdopen(fd, "a", encoding="utf-8")


def open_lock(path: str | os.PathLike):
    """``path`` opened for reading and writing (created if missing), never through a link."""
    fd = _open_nofollow(Path(path), os.O_RDWR | os.O_CREAT, "be a lock file")
    return os.fdopen(fd, "r+", encoding="utf-8")


def open_regular(path: str | os.PathLike):
    """``path`` opened for binary reading: a regular file (links followed), never a FIFO or
    a device (opened without blocking, so a FIFO cannot hang the reader)."""
    path = Path(path)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise UnsafePathError(f"{path}: is {kind_of(mode)}, not a regular file; attnbench "
                              "reads regular files only")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def read_bytes(path: str | os.PathLike, limit: int, what: str = "file") -> bytes:
    """The whole of a regular file of at most ``limit`` bytes (see :func:`open_regular`)."""
    chunks, total = [], 0
    with open_regular(path) as f:
        while chunk := f.read(1 << 20):  # by chunks: read(limit) would allocate the limit
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:
                raise UnsafePathError(f"{path}: larger than the {limit / 2**20:g} MiB a "
                                      f"{what} may be; is it the file you meant?")
    return b"".join(chunks)


def read_text(path: str | os.PathLike, limit: int, what: str = "file") -> str:
    """:func:`read_bytes` decoded as UTF-8 (a UnicodeDecodeError for anything else)."""
    return read_bytes(path, limit, what).decode("utf-8")


def cannot_create_in(directory: str | os.PathLike) -> str | None:
    """Why a file cannot be created in ``directory`` (None when it can): tried, not guessed
    from permission bits (root, read-only mounts and ACLs decide otherwise)."""
    try:
        with tempfile.TemporaryFile(dir=directory):
            return None
    except OSError as exc:
        return exc.strerror or str(exc)


# --------------------------------------------------------------------------------------------
# The input/output path check
# --------------------------------------------------------------------------------------------


def run_dir_above(path: Path) -> Path | None:
    """The nearest run directory (one holding ``meta.json``) that ``path`` is inside or is."""
    for folder in (path, *path.parents):
        try:
            if (folder / "meta.json").exists():
                return folder
        except OSError:
            return None
    return None


def _run_dir_of(path: Path) -> Path | None:
    """The run directory ``path`` is, or the one holding it when it is a store file."""
    if path.is_dir():
        return path if (path / "meta.json").is_file() else None
    if path.name in ("meta.json", "results.jsonl"):
        return path.parent
    return None


def _same(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


def check_outputs(outputs: Iterable[tuple[str, str | os.PathLike]],
                  inputs: Iterable[str | os.PathLike] = (), *,
                  own_files: tuple[str, ...] = ()) -> None:
    """Refuse (UnsafePathError) an output that would replace an input or a run's own files.

    ``outputs``: (option, path) for each file the command will write, e.g. ``("--csv",
    "out.csv")``; ``inputs``: the run directories and files it reads; ``own_files``: the
    names this command may write directly inside an input run directory (``export``:
    ``results.csv``; ``report``: that and ``index.html``). Refused: a path with no file name,
    an output that is not a regular file (a link, a directory, a FIFO), one that is an input
    file or another output, a store file (:data:`STORE_OWNED`) or a derived file
    (``results.csv``, ``index.html``) of a run unless ``own_files`` allows it, and any file
    inside a run directory, at any depth, that is not one of the inputs.
    """
    inputs = [Path(p) for p in inputs]
    input_files, input_runs = [], []
    for path in inputs:
        run = _run_dir_of(path)
        if run is not None:
            input_runs.append(run)
            input_files += [run / "meta.json", run / "results.jsonl"]
        if path.is_file():
            input_files.append(path)
    seen: list[tuple[str, Path]] = []
    for option, raw in outputs:
        path = Path(raw)
        where = f"{option} {raw!s}"
        if not str(raw) or not path.name or str(raw).endswith(os.sep):
            raise UnsafePathError(f"{where!r}: names no file (a file path is needed)")
        check_writable_target(path)
        for other in input_files:
            if other.exists() and path.exists() and _same(path, other):
                raise UnsafePathError(f"{where}: is {other}, an input of this command; "
                                      "writing it would destroy what is read")
        for other_option, other in seen:
            if path.resolve() == other.resolve() or (
                    path.exists() and other.exists() and _same(path, other)):
                raise UnsafePathError(f"{where}: is also {other_option}'s output; give each "
                                      "output its own path")
        run = run_dir_above(path.parent.resolve())
        if run is not None:
            if not any(_same(run, mine) for mine in input_runs):
                raise UnsafePathError(f"{where}: is inside {run}, the directory of another "
                                      "run (not one this command reads); choose a path outside "
                                      "it")
            if path.parent.resolve() == run.resolve() and (
                    path.name in STORE_OWNED or path.name in DERIVED and
                    path.name not in own_files):
                raise UnsafePathError(f"{where}: is {path.name} of the run in {run}, which "
                                      "only attnbench run (and report, for its two files) "
                                      "writes")
        seen.append((option, path))


def check_output_dir(option: str, directory: str | os.PathLike,
                     inputs: Iterable[str | os.PathLike]) -> None:
    """Refuse an output directory inside another run's directory (one not in ``inputs``) or
    inside a run's directory at all (its report belongs in the run directory itself), or a
    path that exists and is not a directory."""
    directory = Path(directory)
    try:
        mode = os.stat(directory).st_mode
    except FileNotFoundError:
        mode = None
    if mode is not None and not stat.S_ISDIR(mode):
        raise UnsafePathError(f"{option} {directory}: exists and is {kind_of(mode)}, not a "
                              "directory")
    run = run_dir_above(directory.resolve())
    if run is not None and not any(
            (mine := _run_dir_of(Path(p))) is not None and _same(mine, run) for p in inputs):
        raise UnsafePathError(f"{option} {directory}: is inside {run}, the directory of "
                              "another run (not one this command reads); its report would be "
                              "taken for that run's")
    if run is not None and directory.resolve() != run.resolve():
        raise UnsafePathError(f"{option} {directory}: is a folder inside the run directory "
                              f"{run}; write the report into the run directory itself or "
                              "outside it")
