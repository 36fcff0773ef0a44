"""Finding DICOM files already on disk, and bringing them into staging with their hashes.

:func:`scan` walks folders (sorted, so runs are repeatable; symbolic links are listed, not
followed; ``.bulkdl`` state folders and the output folder are skipped) and reads every file's
header in a thread pool, only the keywords asked for plus the UIDs every file must have.
A file is DICOM when :func:`~bulkdl.dicom.read_header` says so, a ZIP when it starts like one
(whatever its name); everything else, DICOM without the UIDs included, is listed as left where
it is. :func:`unpack_members` extracts a ZIP's members through
:func:`~bulkdl.unpack.unpack_zip` (its member-name and size guards; a ``md5hashes.csv`` inside
is checked against the members) and reads their headers the same way. A Data Retriever (or
bulkdl) ``metadata.csv`` met on the way is read for its series' values. :func:`stage` brings a
found file into the staging folder by copy, hard link, or (moving across filesystems) copy,
computing its size, MD5 and SHA-256 as it goes. Does file I/O; blocking.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from functools import partial
from pathlib import Path
from stat import S_ISREG
from typing import Literal

from bulkdl import dicom
from bulkdl.errors import ArchiveError
from bulkdl.records import KEYWORD_OF, Series, StagedFile
from bulkdl.unpack import LICENSE_NAME, MD5_NAME, unpack_zip

Mode = Literal["copy", "move", "link"]
Header = Mapping[str, str]
Note = tuple[str, str]  # (file, why)

STATE_DIR = ".bulkdl"
_CHUNK = 1 << 20
_ZIP_MAGIC = b"PK\x03\x04"
SERIES_FIELDS = frozenset(f.name for f in fields(Series)) - {"extra"}


@dataclass(frozen=True, slots=True)
class Found:
    """One DICOM file found: where it is, what its header says, and its staged copy for a ZIP
    member (already extracted and hashed)."""

    origin: str  # the path as given, or "<zip>:<member>"
    path: Path
    size: int
    device: int
    header: Header
    staged: StagedFile | None = None


@dataclass
class Scan:
    """What :func:`scan` (or :func:`unpack_members`) found: DICOM files, ZIPs still to open,
    series values from metadata.csv files, and the files left where they are or unreadable."""

    found: list[Found] = field(default_factory=list)
    zips: list[Path] = field(default_factory=list)
    metadata: dict[str, dict[str, str]] = field(default_factory=dict)
    left: list[Note] = field(default_factory=list)
    errors: list[Note] = field(default_factory=list)


def _walk(source: Path, skip: Path | None, report: Scan) -> Iterator[Path]:
    if not source.is_dir():
        yield source
        return

    def unreadable(exc: OSError) -> None:
        report.errors.append((str(exc.filename), f"cannot list it ({exc.strerror or exc})"))

    for root, dirs, files in os.walk(source, onerror=unreadable):
        kept = []
        for name in sorted(dirs):
            path = Path(root, name)
            if path.is_symlink():
                report.left.append((str(path), "a symbolic link: not followed"))
            elif name != STATE_DIR and (skip is None or path.resolve() != skip):
                kept.append(name)
        dirs[:] = kept
        for name in sorted(files):
            path = Path(root, name)
            if path.is_symlink():
                report.left.append((str(path), "a symbolic link: not followed"))
            else:
                yield path


Kind = Literal["dicom", "zip", "other", "special"]


def _probe(path: Path, keywords: frozenset[str]) -> tuple[os.stat_result, Kind, Header | None]:
    """(stat, what the file is, its header when DICOM). Raises OSError."""
    stat = path.stat()
    if not S_ISREG(stat.st_mode):  # a FIFO or device would block or never end
        return stat, "special", None
    header = dicom.read_header(path, keywords)
    if header is not None:
        return stat, "dicom", header
    with path.open("rb") as handle:
        is_zip = handle.read(len(_ZIP_MAGIC)) == _ZIP_MAGIC
    return stat, "zip" if is_zip else "other", None


def _missing_uids(header: Header) -> bool:
    return not header.get("SeriesInstanceUID") or not header.get("SOPInstanceUID")


def scan(
    sources: Sequence[Path],
    keywords: frozenset[str],
    *,
    skip: Path | None = None,
    workers: int = 8,
) -> Scan:
    """Walk ``sources`` and read each file's header (``keywords`` + the UIDs) in a thread pool
    of ``workers``; ``skip`` (resolved) is a folder not to enter. ZIPs come back unopened.
    Never raises for a file: an unreadable one is listed in the result's errors.
    """
    wanted = keywords | frozenset(dicom.HEADER_KEYWORDS_ALWAYS)
    result = Scan()
    paths = [path for source in sources for path in _walk(source, skip, result)]

    def probe(path: Path) -> tuple[os.stat_result, Kind, Header | None] | OSError:
        try:
            return _probe(path, wanted)
        except OSError as exc:
            return exc

    with ThreadPoolExecutor(max_workers=workers) as pool:
        for path, outcome in zip(paths, pool.map(probe, paths), strict=True):
            if isinstance(outcome, OSError):
                result.errors.append((str(path), f"cannot read it ({outcome.strerror or outcome})"))
                continue
            stat, kind, header = outcome
            if kind == "zip":
                result.zips.append(path)
            elif kind == "special":
                result.left.append((str(path), "not a regular file"))
            elif header is None:
                rows = _metadata_csv(path) if path.name == "metadata.csv" else None
                if rows:
                    result.metadata.update(rows)
                why = "not DICOM" + (" (a metadata.csv: its series values were used)" * bool(rows))
                result.left.append((str(path), why))
            elif _missing_uids(header):
                result.left.append((str(path), "DICOM without a SeriesInstanceUID/SOPInstanceUID"))
            else:
                result.found.append(Found(str(path), path, stat.st_size, stat.st_dev, header))
    return result


def _metadata_csv(path: Path) -> dict[str, dict[str, str]] | None:
    """A Data Retriever (or bulkdl) metadata.csv: series UID -> keyword -> value; else None."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error):
        return None
    out: dict[str, dict[str, str]] = {}
    for row in rows:
        values = {KEYWORD_OF.get(k, k): v.strip() for k, v in row.items() if k and v and v.strip()}
        uid = values.get("SeriesInstanceUID")
        if uid:
            out[uid] = {k: v for k, v in values.items() if k in SERIES_FIELDS}
    return out or None


def unpack_members(zip_path: Path, dest: Path, keywords: frozenset[str]) -> Scan:
    """The members of the ZIP ``zip_path``, extracted into ``dest`` (created) with their
    headers and hashes: DICOM ones found, the rest listed. Raises OSError when ``dest`` cannot
    be written; a ZIP that cannot be used is listed in the result's errors."""
    wanted = keywords | frozenset(dicom.HEADER_KEYWORDS_ALWAYS)
    report = Scan()
    try:
        room = shutil.disk_usage(dest.parent).free
        fetched = unpack_zip(
            zip_path,
            dest,
            series_uid=str(zip_path),
            max_total=room,  # a ZIP bomb stops at the free space, not at a full disk
            inspect=partial(dicom.read_header, keywords=wanted),
        )
    except ArchiveError as exc:
        report.errors.append((str(zip_path), f"not a usable ZIP: {exc}"))
        return report
    found = report.found
    declared = fetched.declared_md5 or {}
    if fetched.license_text is not None:
        report.left.append((f"{zip_path}:{LICENSE_NAME}", "a licence text: left in the ZIP"))
    if fetched.declared_md5 is not None:
        report.left.append((f"{zip_path}:{MD5_NAME}", "checked against the members' MD5s"))
    for staged in fetched.files:
        origin = f"{zip_path}:{staged.name}"
        if staged.name in declared and declared[staged.name] != staged.md5:
            report.errors.append((origin, f"MD5 differs from the ZIP's {MD5_NAME}: not placed"))
        elif staged.header is None:
            report.left.append((origin, "not DICOM: left in the ZIP"))
        elif _missing_uids(staged.header):
            report.left.append((origin, "DICOM without a SeriesInstanceUID/SOPInstanceUID"))
        else:
            device = staged.path.stat().st_dev
            found.append(Found(origin, staged.path, staged.size, device, staged.header, staged))
    return report


# --- staging -----------------------------------------------------------------------------------


class SourceProblem(Exception):
    """A source file could not be read: that file is skipped, the run goes on."""


def hash_file(path: Path) -> tuple[int, str, str]:
    """(size, MD5, SHA-256) of the file at ``path``. Raises SourceProblem."""
    md5, sha = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    size = 0
    try:
        with path.open("rb") as handle:
            while block := handle.read(_CHUNK):
                md5.update(block)
                sha.update(block)
                size += len(block)
    except OSError as exc:
        raise SourceProblem(f"cannot read it ({exc.strerror or exc})") from exc
    return size, md5.hexdigest(), sha.hexdigest()


def _copy_file(source: Path, dest: Path) -> tuple[int, str, str]:
    """Copy ``source`` to the new file ``dest`` hashing it on the way; a read error is the
    source's (SourceProblem), a write error the run's (OSError)."""
    md5, sha = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    size = 0
    try:
        reader = source.open("rb")
    except OSError as exc:
        raise SourceProblem(f"cannot read it ({exc.strerror or exc})") from exc
    with reader, dest.open("xb") as writer:
        while True:
            try:
                block = reader.read(_CHUNK)
            except OSError as exc:
                raise SourceProblem(f"cannot read it ({exc.strerror or exc})") from exc
            if not block:
                break
            md5.update(block)
            sha.update(block)
            writer.write(block)
            size += len(block)
    return size, md5.hexdigest(), sha.hexdigest()


def stage(found: Found, dest: Path, mode: Mode) -> StagedFile:
    """``found`` brought to the new file ``dest`` (copied, or hard-linked for ``link`` and
    ``move``) and hashed. Raises SourceProblem when the source cannot be read or linked (skip
    that file), OSError when ``dest`` cannot be written (the run's problem)."""
    if found.staged is not None:
        return found.staged
    if mode == "copy":
        size, md5, sha = _copy_file(found.path, dest)
    else:
        try:
            os.link(found.path, dest)
        except OSError as exc:
            if exc.errno != errno.EXDEV or mode == "link":
                why = "across filesystems: use --copy" if exc.errno == errno.EXDEV else exc.strerror
                raise SourceProblem(f"cannot hard-link it ({why or exc})") from exc
            size, md5, sha = _copy_file(found.path, dest)  # --move across filesystems: copy
        else:
            size, md5, sha = hash_file(dest)
    return StagedFile(found.origin, dest, size, md5, sha, found.header)
