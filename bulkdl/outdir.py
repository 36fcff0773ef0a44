"""The output folder: its state folder, the lock that keeps two runs apart, and disk errors.

Every command that writes a tree (download, organize, build) calls :func:`prepare_output` to
create ``DIR/.bulkdl`` and prove it writable, holds :func:`exclusive` (an ``flock`` on
``DIR/.bulkdl/lock``) while it writes, and reports a refused write through :func:`disk_error`,
which names the cause as users read it (disk full, read-only, permission denied) and the path.
Does file I/O.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Final

from bulkdl.errors import AbortError

log = logging.getLogger(__name__)

STATE_DIR: Final = ".bulkdl"
#: flock errors that mean "no locks on this filesystem" (e.g. Lustre mounted without flock).
_NO_LOCKS: Final = frozenset({errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP})
_unlocked: list[Path] = []  # the warning above is given once per process


def disk_error(exc: OSError, out: Path) -> AbortError:
    """``exc``, a refused write under ``out``, as the AbortError that stops the run."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        why = "the disk is full"
    elif exc.errno == errno.EROFS:
        why = "the file system is read-only"
    elif exc.errno in (errno.EACCES, errno.EPERM):
        why = "permission denied"
    else:
        why = exc.strerror or str(exc)
    where = f" ({exc.filename})" if exc.filename else ""
    return AbortError(f"cannot write under {out}: {why}{where}")


@contextmanager
def exclusive(state_dir: Path, shard: str | None = None) -> Iterator[None]:
    """Hold ``.bulkdl/lock`` so two runs never write one tree at once.

    A shard of a job array (``shard`` names it, e.g. ``0of4``) holds that lock shared and its
    own ``lock-0of4`` exclusively: the shards of one array write the tree side by side, never
    beside a plain run, ``bulkdl finalize`` or a second copy of the same shard. Raises
    AbortError when the tree is taken; where the filesystem has no locks (some parallel
    filesystems are mounted so), warns once and goes on unguarded.
    """
    with ExitStack() as held:
        if shard is None:
            _hold(held, state_dir / "lock", fcntl.LOCK_EX, "another bulkdl run is using")
        else:
            _hold(held, state_dir / "lock", fcntl.LOCK_SH, "a bulkdl run (not a shard) is using")
            own = state_dir / f"lock-{shard}"
            _hold(held, own, fcntl.LOCK_EX, f"shard {shard} already runs in")
        yield


def _hold(held: ExitStack, path: Path, how: int, taken: str) -> None:
    handle = held.enter_context(path.open("a"))
    try:
        fcntl.flock(handle, how | fcntl.LOCK_NB)
    except BlockingIOError:
        raise AbortError(f"{taken} {path.parent.parent}") from None
    except OSError as exc:
        if exc.errno not in _NO_LOCKS:
            raise
        if not _unlocked:
            _unlocked.append(path)
            log.warning(
                "%s: this filesystem has no file locks (%s): nothing keeps two runs from "
                "writing this tree at once",
                path.parent.parent,
                exc.strerror or exc,
            )


def prepare_output(out: Path) -> Path:
    """Create ``out/.bulkdl`` and prove it writable; returns the state folder.

    Raises AbortError (exit 3) when ``out`` cannot be created or written. The probe file gets a
    name of its own (``mkstemp``), so runs that prepare one tree at once (the shards of an array,
    in one process or on nodes whose PIDs coincide) never remove each other's probe.
    """
    state = out / STATE_DIR
    try:
        state.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(prefix="probe-", dir=state)
        os.close(handle)
        os.unlink(probe)
    except OSError as exc:
        raise disk_error(exc, out) from exc
    return state
