"""Working folders outside the tree, and moving verified files from them into it, across
filesystems too.

``--staging PATH`` (node-local ``$TMPDIR`` on a cluster) puts each run's downloads in a
:class:`PrivateFolder`: ``PATH/bulkdl-<random>`` (mode 0700), removed when the run ends, however
it ends. A run killed outright (``kill -9``, a node failure) cannot remove its own: it holds an
``flock`` on ``.lock`` inside for as long as it runs, so a later run that finds a ``bulkdl-*``
folder whose lock nobody holds removes it, and never one another run is still using.
:func:`move_into` moves one file into the tree: a rename when it can (atomic, nothing copied),
and when the kernel refuses that with EXDEV (staging and tree on different filesystems) a copy
to a temporary name in a landing folder on the tree's filesystem, an fsync, and a rename onto
the target, so a reader of the tree sees no file or the whole file, never part of one. Does
file I/O and blocks: call from a worker thread.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import shutil
import tempfile
from itertools import count
from pathlib import Path
from typing import Final

from bulkdl.outdir import disk_error

log = logging.getLogger(__name__)

PREFIX: Final = "bulkdl-"
#: Under ``DIR/.bulkdl/``: the landing folders of copies from another filesystem.
LANDING: Final = "incoming"
_LOCK: Final = ".lock"
_COPY_CHUNK: Final = 1 << 30  # bytes per sendfile call
_names = count()


class PrivateFolder:
    """A folder of one run's own under a shared parent; :meth:`close` removes it."""

    def __init__(self, path: Path, lock_fd: int) -> None:
        self.path = path
        self._lock_fd: int | None = lock_fd

    @classmethod
    def create(cls, parent: Path) -> PrivateFolder:
        """Make ``parent/bulkdl-<random>`` (``parent`` too, if missing) and hold its lock;
        remove folders that dead runs left in ``parent``. Raises OSError."""
        parent.mkdir(parents=True, exist_ok=True)
        sweep(parent)
        path = Path(tempfile.mkdtemp(prefix=PREFIX, dir=parent))
        try:
            # Locked under another name, then renamed: a sweeper never sees an unlocked .lock.
            fresh = path / f"{_LOCK}.new"
            fd = os.open(fresh, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            # On a filesystem without locks the folder is still removed by close().
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.rename(fresh, path / _LOCK)
        except BaseException:
            shutil.rmtree(path, ignore_errors=True)
            raise
        return cls(path, fd)

    def close(self) -> None:
        """Remove the folder and everything in it, then release its lock (idempotent)."""
        if self._lock_fd is None:
            return
        shutil.rmtree(self.path, ignore_errors=True)
        os.close(self._lock_fd)
        self._lock_fd = None


def open_staging(staging: Path, state_dir: Path) -> tuple[PrivateFolder, PrivateFolder]:
    """``--staging``: the run's folder under ``staging``, and its landing folder for copies from
    there, under ``state_dir/incoming`` (the tree's filesystem). Raises AbortError naming which
    folder could not be made."""
    try:
        area = PrivateFolder.create(staging)
    except OSError as exc:
        raise disk_error(exc, staging) from exc
    try:
        return area, PrivateFolder.create(state_dir / LANDING)
    except OSError as exc:
        area.close()
        raise disk_error(exc, state_dir.parent) from exc


def refused_by(exc: OSError, staging: Path, area: Path, out: Path) -> Path:
    """Which to name for a write ``exc`` refused: ``staging`` (holding the run's ``area``) or
    the tree ``out``. By the file it names; a write error names none, so a full disk is then
    told by the free space left on each."""
    if exc.filename is not None:
        return staging if str(exc.filename).startswith(str(area)) else out
    if exc.errno in (errno.ENOSPC, errno.EDQUOT) and _free(area) < _free(out):
        return staging
    return out


def _free(path: Path) -> float:
    try:
        stats = os.statvfs(path)
    except OSError:
        return float("inf")
    return stats.f_bavail * stats.f_frsize


def sweep(parent: Path) -> list[Path]:
    """Remove each ``bulkdl-*`` folder of ``parent`` whose lock no process holds (a run that
    was killed); returns them. Folders without a lock file, or on a filesystem that refuses
    locks, are left alone."""
    removed: list[Path] = []
    try:
        candidates = [p for p in parent.iterdir() if p.name.startswith(PREFIX)]
    except OSError:
        return removed
    for folder in candidates:
        try:
            fd = os.open(folder / _LOCK, os.O_RDWR)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue  # in use (or locks unsupported): not ours to judge
        try:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
            log.info("removed %s, left by a run that was killed", folder)
        finally:
            os.close(fd)
    return removed


def move_into(
    source: Path, target: Path, landing: Path | None = None, *, exclusive: bool = False
) -> bool:
    """Move the file ``source`` onto ``target``; True when it was copied.

    A rename first. On EXDEV the bytes go to a temporary file in ``landing`` (a folder on the
    target's filesystem; the target's own folder when None or when that fails with EXDEV too),
    are fsynced, and the temporary file is renamed onto ``target``; ``source`` is then removed.
    ``exclusive``: never replace a file at ``target`` (FileExistsError instead): a hard link
    and an unlink take the rename's place, so no reader ever sees an empty or partial file
    there (where hard links are refused, an empty file is created exclusively, then replaced).
    The caller fsyncs the target's folder once its series is in. Raises OSError (ENOSPC: the
    tree's disk is full), leaving ``target`` as it was and no temporary file behind.
    """
    try:
        _put(source, target, exclusive)
        return False
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
    folders = [landing, target.parent] if landing is not None else [target.parent]
    for folder in folders:
        assert folder is not None
        temporary = folder / f".{PREFIX}{os.getpid()}-{next(_names)}.tmp"
        try:
            _copy(source, temporary)
            _put(temporary, target, exclusive)
        except OSError as exc:
            temporary.unlink(missing_ok=True)
            if exc.errno == errno.EXDEV and folder is not folders[-1]:
                continue
            raise
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        break
    source.unlink()
    return True


def _put(source: Path, target: Path, exclusive: bool) -> None:
    """Rename ``source`` to ``target`` on one filesystem, without replacing when ``exclusive``."""
    if not exclusive:
        os.replace(source, target)
        return
    try:
        os.link(source, target)
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        os.replace(source, target)
        return
    source.unlink()


def _copy(source: Path, temporary: Path) -> None:
    """``source``'s bytes into the new file ``temporary`` (mode as the umask gives), fsynced."""
    with open(source, "rb") as src:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            size = os.fstat(src.fileno()).st_size
            offset = 0
            try:
                while offset < size:
                    sent = os.sendfile(fd, src.fileno(), offset, min(_COPY_CHUNK, size - offset))
                    if sent == 0:
                        break
                    offset += sent
            except OSError as exc:
                if offset or exc.errno not in (errno.EINVAL, errno.ENOSYS):
                    raise
                with os.fdopen(os.dup(fd), "wb") as dst:  # sendfile refused these files
                    shutil.copyfileobj(src, dst, 1 << 20)
            os.fsync(fd)
        finally:
            os.close(fd)


def fsync_file(path: Path) -> None:
    """Make a file's bytes durable."""
    _fsync(path, os.O_RDONLY)


def fsync_dir(path: Path) -> None:
    """Make a folder's entries (a rename into it) durable."""
    _fsync(path, os.O_RDONLY | os.O_DIRECTORY)


def _fsync(path: Path, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
