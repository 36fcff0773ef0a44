"""The one exception tree of bulkdl, and the exit codes it maps to.

Every error bulkdl raises on purpose derives from :class:`BulkdlError`; each class says when it is
raised and what the caller should do about it. The CLI turns them into one clear line and an exit
code, never a traceback. No I/O here.

::

    BulkdlError
    ├── InputError            bad manifest, argument or config: fix it (2)
    │   └── ManifestError     names the file and line that is wrong
    ├── SourceError           the archive answered badly or not at all
    │   ├── TransientError    retry the same request (5xx, 429, reset, stall); has retry_after
    │   ├── RejectedError     the server refused the request as asked (4xx): do not retry
    │   │   └── UnknownSeriesError   the server does not know (or will not give) this series
    │   ├── ResponseError     a 200 whose body is not what the endpoint promises
    │   └── AuthError         credentials missing or refused
    ├── SeriesError           one series' attempt went wrong: refetch it, then fail it
    │   ├── ArchiveError      the body is not a usable archive (not a ZIP, truncated, CRC, hostile)
    │   ├── VerificationError the files do not match what the archive promised (count, MD5, UID)
    │   └── PlacementConflict another writer's file appeared where one of ours was to go
    └── AbortError            the run cannot go on: disk full, output unwritable, bad ledger (3)
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit statuses, stable for scripts."""

    OK = 0
    SOME_FAILED = 1
    USAGE = 2
    ABORTED = 3
    INTERRUPTED = 130
    #: The reader of stdout went away (``bulkdl query | head``): what a shell reports for a
    #: program that SIGPIPE stopped.
    PIPE_CLOSED = 141


class BulkdlError(Exception):
    """Root of bulkdl's errors; ``exit_code`` is what the CLI exits with for it."""

    exit_code: ExitCode = ExitCode.ABORTED

    def __reduce__(self) -> tuple[object, ...]:
        """Pickled with its attributes (``series_uid``, ``url``, ``retry_after``...), which the
        default ``cls(*args)`` would drop: errors come back from fetch worker processes."""
        return (_rebuild, (type(self), self.args, dict(self.__dict__)))


def _rebuild(
    cls: type[BulkdlError], args: tuple[object, ...], state: dict[str, object]
) -> BulkdlError:
    exc = cls.__new__(cls, *args)
    exc.args = args
    exc.__dict__.update(state)
    return exc


class InputError(BulkdlError):
    """The user's input (argument, manifest, config) is wrong; nothing was fetched for it."""

    exit_code = ExitCode.USAGE


class ManifestError(InputError):
    """A manifest could not be read; the message names the file and, where known, the line."""

    def __init__(self, source: str, message: str, line: int | None = None) -> None:
        self.source = source
        self.line = line
        where = f"{source}:{line}" if line is not None else source
        super().__init__(f"{where}: {message}")


class SourceError(BulkdlError):
    """The archive could not give what was asked; ``url`` is the request, without credentials."""

    def __init__(self, message: str, *, url: str | None = None, status: int | None = None) -> None:
        self.url = url
        self.status = status
        super().__init__(message)


class TransientError(SourceError):
    """A failure worth retrying the same request after a pause (at least ``retry_after`` s)."""

    def __init__(
        self,
        message: str,
        *,
        url: str | None = None,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, url=url, status=status)
        self.retry_after = retry_after


class RejectedError(SourceError):
    """The server refused the request as asked (a 4xx other than 429): retrying will not help."""


class UnknownSeriesError(RejectedError):
    """The server answers 400 for this series: it does not exist or is not accessible to us."""


class ResponseError(SourceError):
    """A successful status whose body is not what the endpoint promises (e.g. HTML for JSON)."""


class AuthError(SourceError):
    """Credentials are missing, or the token endpoint refused them."""


class SeriesError(BulkdlError):
    """One attempt at one series failed a check: refetch the series, and fail it when attempts
    run out. Recorded in the ledger and the failures file; never stops the run."""

    def __init__(self, message: str, *, series_uid: str | None = None) -> None:
        self.series_uid = series_uid
        super().__init__(message)


class ArchiveError(SeriesError):
    """The series body is not a usable archive: not a ZIP, truncated, a CRC mismatch, a hostile
    member name, or an inflated size far beyond what the archive declared."""


class VerificationError(SeriesError):
    """The series' files disagree with what the archive promised (image count, MD5, UIDs)."""


class PlacementConflict(SeriesError):
    """A file appeared at a planned path after planning (another shard writing the same
    folders): nothing of the series was moved into the tree. Plan the series again; the new
    plan sees the file and names ours around it."""


class AbortError(BulkdlError):
    """The run cannot continue (disk full, unwritable output folder, unreadable ledger)."""

    exit_code = ExitCode.ABORTED
