"""Series archives for ``--pack``: deterministic ZIP and tar files, written and read by streaming.

:func:`write_archive` writes members in name order with nothing taken from the machine or the
moment: ZIP entries STORED (DICOM pixel data gains little from deflate; see the README's
figures) with the DOS epoch 1980-01-01 00:00 as their time, Unix permissions 0644 and no extra
fields; tar members in ustar form (pax headers only for names ustar cannot hold), mtime 0, owner
0:0 with empty names, mode 0644. So the same files always give the same bytes, whoever packs
them, wherever, whenever. :func:`digest_members` reads an archive member by member, never
extracting to disk and never holding a member in memory, and reports each one's size, MD5 and
SHA-256, or what stopped it being read whole (a bad CRC, a truncated member). The kind comes
from the suffix, ``.zip`` or ``.tar``. Does file I/O and blocks.
"""

from __future__ import annotations

import hashlib
import shutil
import tarfile
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final, Literal

Kind = Literal["zip", "tar"]
KINDS: Final[tuple[Kind, ...]] = ("zip", "tar")
#: Every ZIP entry's time: the earliest a ZIP can hold (DOS dates start in 1980).
ZIP_EPOCH: Final = (1980, 1, 1, 0, 0, 0)
MEMBER_MODE: Final = 0o644
_CHUNK: Final = 1 << 20


class ArchiveError(Exception):
    """An archive cannot be read as its kind (truncated, damaged, or something else)."""


@dataclass(frozen=True, slots=True)
class MemberDigest:
    """One regular member as read: ``damage`` says why it could not be read whole (then the
    digests are of what was read)."""

    name: str
    size: int
    md5: str
    sha256: str
    damage: str | None = None


def kind_of(path: Path | str) -> Kind:
    """The archive kind a file name's suffix says; ValueError for any other."""
    suffix = str(path).rsplit(".", 1)[-1].lower()
    if suffix not in KINDS:
        raise ValueError(f"not a .zip or .tar name: {path}")
    return "zip" if suffix == "zip" else "tar"


def write_archive(kind: Kind, members: Sequence[tuple[str, Path]], target: Path) -> None:
    """Write the files of ``members`` (member name, source file) into a new archive at
    ``target``, in member-name order. Raises OSError; ValueError for a name used twice."""
    ordered = sorted(members)
    names = [name for name, _ in ordered]
    if len(set(names)) != len(names):
        raise ValueError("two members with one name")
    with open(target, "xb") as stream:
        if kind == "zip":
            _write_zip(ordered, stream)
        else:
            _write_tar(ordered, stream)


def _write_zip(members: Sequence[tuple[str, Path]], stream: IO[bytes]) -> None:
    with zipfile.ZipFile(stream, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, source in members:
            info = zipfile.ZipInfo(name, date_time=ZIP_EPOCH)
            info.compress_type = zipfile.ZIP_STORED
            info.create_system = 3  # Unix, whatever this machine is
            info.external_attr = (0o100000 | MEMBER_MODE) << 16
            with open(source, "rb") as src:
                info.file_size = src.seek(0, 2)  # decides ZIP64 up front, as the size does
                src.seek(0)
                with zf.open(info, "w") as dst:
                    shutil.copyfileobj(src, dst, _CHUNK)


def _write_tar(members: Sequence[tuple[str, Path]], stream: IO[bytes]) -> None:
    with tarfile.open(fileobj=stream, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, source in members:
            info = tarfile.TarInfo(name)
            info.mode = MEMBER_MODE
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            with open(source, "rb") as src:
                info.size = src.seek(0, 2)
                src.seek(0)
                tf.addfile(info, src)


def digest_members(path: Path, *, md5: bool = True, sha256: bool = True) -> Iterator[MemberDigest]:
    """Each regular member of the archive at ``path``, in archive order, with the asked hashes
    (a hash not asked for is ""). Raises ArchiveError when the archive (not one member) cannot
    be read, OSError when the file cannot."""
    reader = _zip_members if kind_of(path) == "zip" else _tar_members
    yield from reader(path, md5, sha256)


def _digest(name: str, stream: IO[bytes], md5: bool, sha256: bool) -> MemberDigest:
    first = hashlib.md5(usedforsecurity=False) if md5 else None
    second = hashlib.sha256() if sha256 else None
    size = 0
    damage = None
    try:
        while block := stream.read(_CHUNK):
            size += len(block)
            if first is not None:
                first.update(block)
            if second is not None:
                second.update(block)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError) as exc:
        damage = f"damaged in its archive: {exc}"
    return MemberDigest(
        name,
        size,
        first.hexdigest() if first is not None else "",
        second.hexdigest() if second is not None else "",
        damage,
    )


def _open_zip(path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, EOFError, ValueError) as exc:
        raise ArchiveError(f"not a readable ZIP: {exc}") from exc


def _zip_members(path: Path, md5: bool, sha256: bool) -> Iterator[MemberDigest]:
    with _open_zip(path) as zf:
        for info in zf.infolist():
            if info.is_dir():
                continue
            try:
                stream = zf.open(info)
            except (zipfile.BadZipFile, NotImplementedError, EOFError, ValueError) as exc:
                yield MemberDigest(info.filename, 0, "", "", f"damaged in its archive: {exc}")
                continue
            with stream:
                yield _digest(info.filename, stream, md5, sha256)


def _open_tar(path: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(path, mode="r:")
    except (tarfile.TarError, EOFError) as exc:
        raise ArchiveError(f"not a readable tar: {exc}") from exc


def _tar_members(path: Path, md5: bool, sha256: bool) -> Iterator[MemberDigest]:
    with _open_tar(path) as tf:
        while True:
            try:
                info = tf.next()
            except (tarfile.TarError, EOFError) as exc:
                raise ArchiveError(f"damaged tar: {exc}") from exc
            if info is None:
                return
            if not info.isfile():
                continue
            stream = tf.extractfile(info)
            if stream is None:  # pragma: no cover - a regular member always has a stream
                continue
            with stream:
                yield _digest(info.name, stream, md5, sha256)
