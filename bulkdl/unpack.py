"""A series ZIP -> staged files: checked names, capped sizes, MD5s, DICOM headers, as it arrives.

:class:`StreamUnpacker` consumes a getImage body chunk by chunk while it downloads: it feeds the
pure :class:`~bulkdl.zipstream.ZipStreamReader` and acts on its events in the calling worker
thread (blocking file I/O): hostile or duplicate member names are refused before that member is
written, member i is written to ``dest/00000i.dcm`` (a member name is never a path) while its
MD5 is computed, ``LICENSE`` becomes the licence text and ``md5hashes.csv`` the declared MD5s,
and ``inspect`` reads each image's header. Every failure of the archive is an
:class:`~bulkdl.errors.ArchiveError` and removes what was written; a failure to write ``dest``
stays the OSError it is (the caller aborts the run on a full disk). :func:`unpack_zip` feeds a
ZIP already on disk through the same code.

Streaming means the caps are enforced as the data arrives, not from the central directory up
front: the member count as each member starts, each member's declared size (when its local
header has one) before it is inflated, and ``max_total`` on the inflated bytes as they come (a
ZIP bomb is stopped as soon as the images' total passes it, with one ``chunk_size`` in memory).
The central directory, read last, is checked against every streamed member. No compression-ratio
limit: an all-zero slice deflates ~1000:1 and is legitimate DICOM.

Decision (``benchmarks/unpack_strategies.py``, ``benchmarks/DECISIONS.md``): inflate as the
bytes arrive instead of spooling the ZIP to disk first. Same user CPU (the same inflate, MD5 and
writes), but the spool wrote every ZIP byte to the page cache and read it back: on a 30.2 MB ZIP
(100 CT images, 52.6 MB) spool+extract took 0.38 s wall, 0.23-0.26 s user, 0.11-0.13 s system;
streaming 0.27-0.31 s wall, 0.23 s user, 0.03-0.04 s system. Page-cache writes are what this
machine kind pays for (``dd`` of 1 GB: 0.30 s of system CPU on a quiet machine, ~4.6 s reported
under load), and a streamed series starts unpacking with its first batch instead of its last
byte. Members are inflated with ISA-L (``isal``, releases the GIL; 2x zlib's speed) and written
with plain buffered ``open()`` in this thread (aiofiles' per-call thread hop is 2-8x slower).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import logging
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import BinaryIO

from bulkdl.errors import ArchiveError
from bulkdl.records import FetchedSeries, StagedFile
from bulkdl.zipstream import ArchiveEnd, MemberData, MemberEnd, MemberStart, ZipStreamReader

log = logging.getLogger(__name__)

LICENSE_NAME = "LICENSE"
MD5_NAME = "md5hashes.csv"
#: More members than any series holds (the largest have thousands of images).
MAX_MEMBERS = 1_000_000
#: A LICENSE longer than this is cut: it is shown to users, not checked.
LICENSE_CAP = 1 << 20
#: md5hashes.csv at ~60 bytes a row for MAX_MEMBERS rows.
MD5_CSV_CAP = 64 << 20

_DRIVE_RE = re.compile(r"[A-Za-z]:")
_MD5_RE = re.compile(r"[0-9a-fA-F]{32}")
_IMAGE, _LICENSE, _MD5, _SKIP = range(4)

Inspect = Callable[[Path], Mapping[str, str] | None]


def unpack_zip(
    zip_path: Path,
    dest: Path,
    *,
    series_uid: str,
    max_total: int | None,
    inspect: Inspect,
    chunk_size: int = 1 << 20,
) -> FetchedSeries:
    """Extract the series ZIP at ``zip_path`` into ``dest`` (created if missing) and describe it,
    by feeding it to a :class:`StreamUnpacker` in ``chunk_size`` pieces (one code path).

    Raises what :class:`StreamUnpacker` raises, and ArchiveError when the file cannot be read.
    """
    unpacker = StreamUnpacker(
        dest, series_uid=series_uid, max_total=max_total, inspect=inspect, chunk_size=chunk_size
    )
    try:
        try:
            src = zip_path.open("rb")
        except OSError as exc:
            raise ArchiveError(f"cannot read the ZIP file: {exc}", series_uid=series_uid) from exc
        with src:
            while block := _read(src, chunk_size, series_uid):
                unpacker.feed(block)
        return unpacker.finish()
    except BaseException:
        unpacker.abort()
        raise


def _read(src: BinaryIO, size: int, uid: str) -> bytes:
    try:
        return src.read(size)
    except OSError as exc:
        raise ArchiveError(f"cannot read the ZIP file: {exc}", series_uid=uid) from exc


class StreamUnpacker:
    """Unpack one series' ZIP body as it arrives; blocking, for one worker thread at a time.

    ``feed(*pieces)`` for the next pieces of the body, ``finish()`` at its end, ``abort()`` when the
    transfer fails or is cancelled. ``LICENSE`` becomes ``license_text`` (cut at LICENSE_CAP),
    ``md5hashes.csv`` ``declared_md5``; every other file member is written to ``dest/<n>.dcm``
    (n = 1, 2, ... in ZIP order, six digits), hashed, and passed to ``inspect`` for its header
    (None: not DICOM). ``max_total`` caps the inflated bytes of those members, declared and
    written. Directory entries are ignored.

    ``feed`` and ``finish`` raise ArchiveError (naming the problem, carrying ``series_uid``) when
    the body is not a ZIP, is truncated or corrupt (CRC, inflate error, central directory at odds
    with the members), is encrypted or uses another compression than STORED/DEFLATED, has a
    hostile or duplicate member name, more than MAX_MEMBERS members, more bytes than
    ``max_total`` or a malformed md5hashes.csv; and the original OSError when writing under
    ``dest`` fails (disk full, permissions). Either way what was written under ``dest`` (and
    ``dest`` itself, with any folders created for it, when empty) is removed first, and the
    unpacker cannot be used again.
    """

    def __init__(
        self,
        dest: Path,
        *,
        series_uid: str,
        max_total: int | None,
        inspect: Inspect,
        chunk_size: int = 1 << 20,
    ) -> None:
        self.dest = dest
        self.series_uid = series_uid
        self.max_total = max_total
        self._inspect = inspect
        self._reader = ZipStreamReader(series_uid=series_uid, out_chunk=chunk_size)
        self._written: list[Path] = []
        self._made: list[Path] | None = None  # folders we created, deepest first
        self._files: list[StagedFile] = []
        self._seen: set[str] = set()
        self._members = 0
        self._total = 0
        self._license: str | None = None
        self._declared_md5: dict[str, str] | None = None
        self._ended = False
        self._closed = False
        # the member being unpacked
        self._kind = _SKIP
        self._name = ""
        self._path: Path | None = None
        self._out: BinaryIO | None = None
        self._digest = hashlib.md5(usedforsecurity=False)
        self._sha256 = hashlib.sha256()
        self._size = 0
        self._parts: list[bytes] = []

    def feed(self, *pieces: bytes) -> None:
        """Unpack what ``pieces`` (the next bytes of the body, in order) complete; handing over
        several at once spares joining them. Raises ArchiveError or OSError (see the class)."""
        self._check_open()
        try:
            for data in pieces:
                for event in self._reader.feed_iter(data):
                    if type(event) is MemberData:
                        self._data(event.data)
                    elif type(event) is MemberStart:
                        self._start(event)
                    elif type(event) is MemberEnd:
                        self._end()
                    elif type(event) is ArchiveEnd:
                        self._ended = True
        except BaseException:
            self.abort()
            raise

    def finish(self) -> FetchedSeries:
        """The body ended: the series' files and declarations. Raises ArchiveError (truncated,
        not a ZIP) or OSError, after cleaning up."""
        self._check_open()
        try:
            self._reader.close()
            if not self._ended:  # close() raises first; this guards the invariant
                raise self._fail("ZIP truncated: no end of central directory")
            self._make_dest()
        except BaseException:
            self.abort()
            raise
        self._closed = True
        log.debug("%s: unpacked %d files, %d bytes", self.series_uid, len(self._files), self._total)
        return FetchedSeries(tuple(self._files), self._declared_md5, self._license)

    def abort(self) -> None:
        """Remove what was written (idempotent; never raises for a file already gone)."""
        self._closed = True
        if self._out is not None:
            with contextlib.suppress(OSError):
                self._out.close()
            self._out = None
        for path in self._written:
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)
        self._written.clear()
        for folder in self._made or ():
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty: never remove what someone else put there
        self._made = []

    # -- events -----------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this StreamUnpacker has finished or was aborted")

    def _fail(self, message: str) -> ArchiveError:
        return ArchiveError(message, series_uid=self.series_uid)

    def _make_dest(self) -> None:
        if self._made is not None:
            return
        missing: list[Path] = []
        folder = self.dest
        while not folder.exists() and folder.parent != folder:
            missing.append(folder)
            folder = folder.parent
        self._made = missing
        self.dest.mkdir(parents=True, exist_ok=True)

    def _start(self, event: MemberStart) -> None:
        name = event.name
        self._members += 1
        if self._members > MAX_MEMBERS:
            raise self._fail(f"the ZIP holds more than the {MAX_MEMBERS:,} members allowed")
        problem = member_name_problem(name)
        if problem:
            raise self._fail(f"hostile member name {name!r}: {problem}")
        if name in self._seen:
            raise self._fail(f"member name {name!r} appears twice")
        self._seen.add(name)
        self._name = name
        self._size = 0
        self._parts = []
        declared = event.declared_size
        if name.endswith("/"):
            self._kind = _SKIP
        elif name == LICENSE_NAME:
            self._kind = _LICENSE
        elif name == MD5_NAME:
            if declared is not None and declared > MD5_CSV_CAP:
                raise self._fail(f"{name} is {declared:,} bytes, more than {MD5_CSV_CAP:,}")
            self._kind = _MD5
        else:
            cap = self.max_total
            if cap is not None and declared is not None and self._total + declared > cap:
                raise self._fail(
                    f"the ZIP declares {self._total + declared:,} bytes of images, more "
                    f"than the {cap:,} expected (at {name})"
                )
            self._make_dest()
            self._kind = _IMAGE
            path = self.dest / f"{len(self._files) + 1:06d}.dcm"
            self._written.append(path)
            self._path = path
            self._out = path.open("wb")
            self._digest = hashlib.md5(usedforsecurity=False)
            self._sha256 = hashlib.sha256()

    def _data(self, data: bytes) -> None:
        self._size += len(data)
        kind = self._kind
        if kind == _IMAGE:
            self._total += len(data)
            if self.max_total is not None and self._total > self.max_total:
                raise self._fail(
                    f"{self._name} inflates past the {self.max_total:,} bytes expected "
                    "for the series' images"
                )
            self._digest.update(data)
            self._sha256.update(data)
            assert self._out is not None
            self._out.write(data)
        elif kind == _LICENSE:
            kept = self._size - len(data)
            if kept < LICENSE_CAP:  # the rest is inflated (and CRC-checked) but not kept
                self._parts.append(data[: LICENSE_CAP - kept])
        elif kind == _MD5:
            if self._size > MD5_CSV_CAP:
                raise self._fail(f"{self._name} is more than {MD5_CSV_CAP:,} bytes")
            self._parts.append(data)

    def _end(self) -> None:
        kind = self._kind
        self._kind = _SKIP
        if kind == _IMAGE:
            out, path = self._out, self._path
            assert out is not None and path is not None
            self._out = None
            out.close()
            header = self._inspect(path)
            self._files.append(
                StagedFile(
                    self._name,
                    path,
                    self._size,
                    self._digest.hexdigest(),
                    self._sha256.hexdigest(),
                    header,
                )
            )
        elif kind == _LICENSE:
            self._license = b"".join(self._parts).decode("utf-8", errors="replace")
        elif kind == _MD5:
            self._declared_md5 = parse_md5_csv(b"".join(self._parts), series_uid=self.series_uid)
        self._parts = []


def member_name_problem(name: str) -> str | None:
    """Why a ZIP member name is unacceptable (absolute, ``..``, drive, backslash, control
    characters, empty), or None when it is fine. Pure."""
    if not name or name == "/":
        return "empty name"
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        return "control character"
    if "\\" in name:
        return "backslash"
    if name.startswith("/"):
        return "absolute path"
    if _DRIVE_RE.match(name):
        return "drive letter"
    if ".." in name.split("/"):
        return "'..' component"
    return None


def parse_md5_csv(data: bytes, *, series_uid: str | None = None) -> dict[str, str]:
    """NBIA's md5hashes.csv (``Filename,MD5Hash`` then one row per file) -> name -> lowercase hex.

    Tolerates a BOM, CRLF, quotes, blank lines, surrounding spaces and a missing header; an empty
    file declares nothing. Raises ArchiveError for a row that is not a name and a 32-digit hex
    MD5, or for a name listed twice with different hashes. Pure.
    """
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ArchiveError(f"{MD5_NAME} is not UTF-8 text", series_uid=series_uid) from exc
    out: dict[str, str] = {}
    rows = csv.reader(text.splitlines())
    first = True
    for number, row in enumerate(rows, 1):
        cells = [c.strip() for c in row]
        if not any(cells):
            continue
        if first and [c.lower() for c in cells] == ["filename", "md5hash"]:
            first = False
            continue
        first = False
        if len(cells) != 2 or not cells[0] or not _MD5_RE.fullmatch(cells[1]):
            raise ArchiveError(
                f"{MD5_NAME} line {number} is not 'name,md5': {','.join(row)[:80]!r}",
                series_uid=series_uid,
            )
        name, md5 = cells[0], cells[1].lower()
        if out.get(name, md5) != md5:
            raise ArchiveError(
                f"{MD5_NAME} lists {name} twice with different hashes", series_uid=series_uid
            )
        out[name] = md5
    return out
