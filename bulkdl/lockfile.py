"""Lock files: the exact content of a dataset, to rebuild it later and prove it is the same.

A lock is JSON (format ``bulkdl-lock``, described in the README): the series of a
dataset sorted by SeriesInstanceUID, each with its Collection, PatientID, StudyInstanceUID,
``ImageCount`` and ``FileSize`` and, once downloaded, every instance sorted by SOPInstanceUID
with its size, MD5 (as the archive serves it), SHA-256 and tree path; in a tree packed with
``--pack``, also the series archive holding it (``archive``, the tree path of the ``.zip`` or
``.tar``; ``path`` is then ``<archive>/<member name>``). Such a lock is version 2, so an older
bulkdl refuses it ("upgrade bulkdl") rather than misreading it; every other lock stays 1. A
series' ``digest`` is the SHA-256 of a canonical listing of its instances
(``SOPInstanceUID<TAB>size<TAB>sha256``, one line each, in UID order), so it depends on content
only, not on layout or packing; the lock's ``digest`` is the SHA-256 of
``SeriesInstanceUID<TAB>digest`` lines. The same content always gives the same bytes: no
timestamps, nothing of the machine it was made on. :func:`parse_lock` checks
everything (UIDs, hex digests, counts against instances, digests against their listing, safe
relative paths) and raises :class:`~bulkdl.errors.ManifestError` naming the file and the entry
(:mod:`bulkdl.lockdiff` tells what differs). Pure, except :func:`read_lock` and
:func:`write_lock` (atomic: a temporary name beside the target, then a rename).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Final, TypeGuard
from urllib.parse import urlsplit, urlunsplit

from bulkdl.errors import InputError, ManifestError, SourceError
from bulkdl.records import Series, is_uid

FORMAT: Final = "bulkdl-lock"
VERSION: Final = 2
#: The version written when no instance lies inside an archive (what bulkdl before --pack reads).
PLAIN_VERSION: Final = 1
#: How many instances a message names before "and N more".
MAX_NAMED: Final = 10

_HEX = re.compile(r"[0-9a-f]+")
_TOP_KEYS: Final = frozenset({"format", "version", "name", "source", "layout", "digest", "series"})
SERIES_TEXT: Final = ("Collection", "PatientID", "StudyInstanceUID")
_SERIES_KEYS: Final = frozenset(
    {"SeriesInstanceUID", *SERIES_TEXT, "ImageCount", "FileSize", "digest", "instances"}
)
_INSTANCE_KEYS: Final = frozenset({"SOPInstanceUID", "size", "md5", "sha256", "path", "archive"})


class LockMismatchError(SourceError):
    """The archive now serves a series other than the lock records it (other counts, instances
    or bytes): fail the series; fetching it again will not help."""


@dataclass(frozen=True, slots=True)
class LockedInstance:
    """One file of a locked series; ``path`` (relative POSIX) when the lock came from a tree;
    ``archive`` the series archive holding it in a packed tree (``path`` is then
    ``<archive>/<member name>``)."""

    SOPInstanceUID: str
    size: int
    md5: str
    sha256: str
    path: str | None = None
    archive: str | None = None


@dataclass(frozen=True, slots=True)
class LockedSeries:
    """One series of a lock; ``instances`` is None for a lock made before any download."""

    SeriesInstanceUID: str
    Collection: str | None = None
    PatientID: str | None = None
    StudyInstanceUID: str | None = None
    ImageCount: int | None = None
    FileSize: int | None = None
    instances: tuple[LockedInstance, ...] | None = None

    def __post_init__(self) -> None:
        if self.instances is not None:
            ordered = tuple(sorted(self.instances, key=lambda i: i.SOPInstanceUID))
            object.__setattr__(self, "instances", ordered)

    @property
    def digest(self) -> str | None:
        """SHA-256 of the canonical listing of the instances (None without instances)."""
        if self.instances is None:
            return None
        return series_digest(self.instances)


@dataclass(frozen=True, slots=True)
class Lock:
    """A dataset: its series sorted by UID, and where it came from (``source``: the API base
    URL, ``layout``: the path template of the tree, ``name``: a dataset spec's name)."""

    series: tuple[LockedSeries, ...]
    name: str | None = None
    source: str | None = None
    layout: str | None = None
    _by_uid: dict[str, LockedSeries] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "series", tuple(sorted(self.series, key=lambda s: s.SeriesInstanceUID))
        )
        self._by_uid.update((s.SeriesInstanceUID, s) for s in self.series)

    def get(self, uid: str) -> LockedSeries | None:
        """The series ``uid``, or None when the lock does not hold it."""
        return self._by_uid.get(uid)

    @property
    def uids(self) -> tuple[str, ...]:
        """Every series UID, sorted."""
        return tuple(s.SeriesInstanceUID for s in self.series)

    @property
    def has_instances(self) -> bool:
        """True when every series lists its instances (the lock came from a downloaded tree)."""
        return all(s.instances is not None for s in self.series)

    @property
    def digest(self) -> str | None:
        """SHA-256 over every series' digest (None when some series lists no instances)."""
        if not self.has_instances:
            return None
        listing = "".join(f"{s.SeriesInstanceUID}\t{s.digest}\n" for s in self.series)
        return hashlib.sha256(listing.encode()).hexdigest()

    @property
    def images(self) -> int:
        """Images in all, as far as known."""
        return sum(s.ImageCount or 0 for s in self.series)

    @property
    def bytes(self) -> int:
        """Bytes in all, as far as known."""
        return sum(s.FileSize or 0 for s in self.series)


def series_digest(instances: Iterable[LockedInstance]) -> str:
    """SHA-256 of ``SOPInstanceUID\\tsize\\tsha256\\n`` per instance, in UID order."""
    ordered = sorted(instances, key=lambda i: i.SOPInstanceUID)
    listing = "".join(f"{i.SOPInstanceUID}\t{i.size}\t{i.sha256}\n" for i in ordered)
    return hashlib.sha256(listing.encode()).hexdigest()


def locked_series(
    series: Series, instances: Sequence[LockedInstance] | None = None
) -> LockedSeries:
    """A series record as the lock holds it; with ``instances`` its counts are theirs."""
    if instances is None:
        return LockedSeries(
            series.SeriesInstanceUID,
            series.Collection,
            series.PatientID,
            series.StudyInstanceUID,
            series.ImageCount,
            series.FileSize,
        )
    ordered = tuple(sorted(instances, key=lambda i: i.SOPInstanceUID))
    return LockedSeries(
        series.SeriesInstanceUID,
        series.Collection,
        series.PatientID,
        series.StudyInstanceUID,
        len(ordered),
        sum(i.size for i in ordered),
        ordered,
    )


def public_url(url: str | None) -> str | None:
    """``url`` without user info, query or fragment: what a lock may say of its source."""
    if not url:
        return None
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


# --------------------------------------------------------------------------- writing


def _instance_json(i: LockedInstance) -> dict[str, object]:
    data: dict[str, object] = {
        "SOPInstanceUID": i.SOPInstanceUID,
        "size": i.size,
        "md5": i.md5,
        "sha256": i.sha256,
    }
    if i.path is not None:
        data["path"] = i.path
    if i.archive is not None:
        data["archive"] = i.archive
    return data


def dumps(lock: Lock) -> str:
    """The lock as JSON text: a stable key order, one instance per line, ASCII only, so the
    same dataset always gives the same bytes and version control shows readable diffs."""

    def enc(value: object) -> str:
        return json.dumps(value, ensure_ascii=True, separators=(", ", ": "))

    packed = any(i.archive for s in lock.series for i in s.instances or ())
    head: dict[str, object] = {"format": FORMAT, "version": VERSION if packed else PLAIN_VERSION}
    for key, value in (("name", lock.name), ("source", lock.source), ("layout", lock.layout)):
        if value is not None:
            head[key] = value
    head["digest"] = lock.digest
    lines = ["{"] + [f"  {enc(k)}: {enc(v)}," for k, v in head.items()] + ['  "series": [']
    for n, s in enumerate(lock.series):
        record: dict[str, object] = {"SeriesInstanceUID": s.SeriesInstanceUID}
        for name in (*SERIES_TEXT, "ImageCount", "FileSize"):
            record[name] = getattr(s, name)
        record["digest"] = s.digest
        tail = "," if n < len(lock.series) - 1 else ""
        if s.instances is None:
            lines.append(f"    {enc(record)}{tail}")
            continue
        body = enc(record)[:-1]
        rows = [f"      {enc(_instance_json(i))}" for i in s.instances]
        if rows:
            lines.append(f'    {body}, "instances": [')
            lines.append(",\n".join(rows))
            lines.append(f"    ]}}{tail}")
        else:
            lines.append(f'    {body}, "instances": []}}{tail}')
    lines += ["  ]", "}"]
    return "\n".join(lines) + "\n"


def write_lock(lock: Lock, path: Path) -> None:
    """Write ``lock`` to ``path`` atomically (a temporary file beside it, then a rename).

    Raises InputError naming ``path`` when it cannot be written.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("w", encoding="ascii", newline="\n") as handle:
            handle.write(dumps(lock))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise InputError(f"{path}: cannot write the lock file ({exc.strerror or exc})") from exc


# --------------------------------------------------------------------------- reading


def read_lock(path: Path) -> Lock:
    """Read and check the lock file at ``path``.

    Raises:
        ManifestError: it cannot be read, is not JSON, not a bulkdl lock, newer than this
            bulkdl, or an entry is wrong; the message names ``path`` and the entry.
    """
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ManifestError(source, "no such lock file") from None
    except IsADirectoryError:
        raise ManifestError(source, "is a directory, not a lock file") from None
    except OSError as exc:
        raise ManifestError(source, f"cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ManifestError(source, "not UTF-8 text: not a lock file") from None
    return parse_lock(text, source)


def is_lock_data(data: object) -> bool:
    """True when decoded JSON ``data`` claims to be a bulkdl lock (its ``format`` says so)."""
    return isinstance(data, dict) and data.get("format") == FORMAT


def maybe_lock(text: str, source: str) -> Lock | None:
    """The lock ``text`` holds, or None when it is not a bulkdl lock (e.g. a manifest).

    Raises ManifestError when it says it is a lock but is not a valid one.
    """
    if text.lstrip("\ufeff \t\r\n")[:1] != "{":
        return None
    try:
        data = json.loads(text.removeprefix("\ufeff"))
    except (ValueError, RecursionError):
        return None  # not JSON at all: the manifest reader names the problem
    return parse_lock_data(data, source) if is_lock_data(data) else None


def parse_lock(text: str, source: str = "<lock>") -> Lock:
    """Parse and check lock ``text``; ``source`` names it in errors (ManifestError)."""
    try:
        data = json.loads(text.removeprefix("\ufeff"))
    except json.JSONDecodeError as exc:
        raise ManifestError(
            source, f"not valid JSON: {exc.msg} (column {exc.colno})", exc.lineno
        ) from None
    except (ValueError, RecursionError) as exc:
        raise ManifestError(source, f"not valid JSON: {str(exc)[:80]}") from None
    return parse_lock_data(data, source)


def parse_lock_data(data: object, source: str) -> Lock:
    """A lock from decoded JSON; every check of the module docstring. Raises ManifestError."""
    if not isinstance(data, dict):
        raise ManifestError(source, "not a bulkdl lock file (expected a JSON object)")
    if data.get("format") != FORMAT:
        raise ManifestError(source, f'not a bulkdl lock file (no "format": "{FORMAT}")')
    version = data.get("version")
    if not _is_int(version) or version < 1:
        raise ManifestError(source, f"version: expected a positive integer, got {version!r}")
    if version > VERSION:
        raise ManifestError(
            source,
            f"lock format version {version} is newer than this bulkdl reads ({VERSION}): "
            "upgrade bulkdl",
        )
    _no_unknown(data, _TOP_KEYS, source, "")
    name = _opt_text(data, "name", source, "")
    where = _opt_text(data, "source", source, "")
    layout = _opt_text(data, "layout", source, "")
    items = data.get("series")
    if not isinstance(items, list):
        raise ManifestError(source, "series: expected a list of series")
    series = [_series(item, source, f"series[{n}]") for n, item in enumerate(items)]
    seen: dict[str, int] = {}
    paths: dict[str, str] = {}
    for n, s in enumerate(series):
        first = seen.setdefault(s.SeriesInstanceUID, n)
        if first != n:
            raise ManifestError(
                source, f"series[{n}]: {s.SeriesInstanceUID} is listed twice (also series[{first}])"
            )
        for i in s.instances or ():
            if i.path is None:
                continue
            other = paths.setdefault(i.path, i.SOPInstanceUID)
            if other != i.SOPInstanceUID:
                raise ManifestError(source, f"series[{n}]: two instances at one path {i.path!r}")
    lock = Lock(tuple(series), name=name, source=public_url(where), layout=layout)
    declared = data.get("digest")
    if declared is not None and declared != lock.digest:
        raise ManifestError(
            source, "digest does not match the series' digests: the lock was edited or damaged"
        )
    return lock


def _series(item: object, source: str, at: str) -> LockedSeries:
    if not isinstance(item, dict):
        raise ManifestError(source, f"{at}: expected an object")
    uid = item.get("SeriesInstanceUID")
    if not isinstance(uid, str) or not is_uid(uid):
        raise ManifestError(source, f"{at}: SeriesInstanceUID: not a UID: {uid!r}")
    at = f"{at} ({uid})"
    _no_unknown(item, _SERIES_KEYS, source, at)
    collection, patient, study = (_opt_text(item, name, source, at) for name in SERIES_TEXT)
    count = _opt_count(item, "ImageCount", source, at)
    size = _opt_count(item, "FileSize", source, at)
    raw = item.get("instances")
    instances: tuple[LockedInstance, ...] | None = None
    if raw is not None:
        if not isinstance(raw, list):
            raise ManifestError(source, f"{at}: instances: expected a list")
        listed = [_instance(x, source, f"{at}: instances[{k}]") for k, x in enumerate(raw)]
        instances = tuple(sorted(listed, key=lambda i: i.SOPInstanceUID))
        sops = [i.SOPInstanceUID for i in instances]
        for a, b in itertools.pairwise(sops):
            if a == b:
                raise ManifestError(source, f"{at}: instance {a} is listed twice")
        if count is not None and count != len(instances):
            raise ManifestError(
                source, f"{at}: ImageCount is {count:,} but {len(instances):,} instances are listed"
            )
        total = sum(i.size for i in instances)
        if size is not None and size != total:
            raise ManifestError(
                source, f"{at}: FileSize is {size:,} but the instances' sizes add up to {total:,}"
            )
    locked = LockedSeries(uid, collection, patient, study, count, size, instances)
    declared = item.get("digest")
    if declared is not None:
        if not isinstance(declared, str) or locked.digest is None:
            raise ManifestError(source, f"{at}: digest without instances, or not a string")
        if declared != locked.digest:
            raise ManifestError(
                source,
                f"{at}: digest does not match its instances: the lock was edited or damaged",
            )
    return locked


def _instance(item: object, source: str, at: str) -> LockedInstance:
    if not isinstance(item, dict):
        raise ManifestError(source, f"{at}: expected an object")
    _no_unknown(item, _INSTANCE_KEYS, source, at)
    sop = item.get("SOPInstanceUID")
    if not isinstance(sop, str) or not is_uid(sop):
        raise ManifestError(source, f"{at}: SOPInstanceUID: not a UID: {sop!r}")
    size = item.get("size")
    if not _is_int(size) or size < 0:
        raise ManifestError(source, f"{at} ({sop}): size: expected a count of bytes, got {size!r}")
    md5 = _hex(item.get("md5"), 32, source, f"{at} ({sop}): md5")
    sha = _hex(item.get("sha256"), 64, source, f"{at} ({sop}): sha256")
    path = item.get("path")
    if path is not None:
        path = _safe_path(path, source, f"{at} ({sop}): path")
    archive = item.get("archive")
    if archive is not None:
        archive = _safe_path(archive, source, f"{at} ({sop}): archive")
        member = (path or "").removeprefix(f"{archive}/")
        if path is None or member == path or not member or "/" in member:
            raise ManifestError(
                source, f"{at} ({sop}): path must be <archive>/<member name>, got {path!r}"
            )
    return LockedInstance(sop, size, md5, sha, path, archive)


def _safe_path(value: object, source: str, at: str) -> str:
    """A relative POSIX path that stays inside a tree and out of bulkdl's own folder."""
    if not isinstance(value, str) or not value:
        raise ManifestError(source, f"{at}: expected a relative path, got {value!r}")
    parts = PurePosixPath(value).parts
    bad = (
        value.startswith("/")
        or "\\" in value
        or "\0" in value
        or any(p in (".", "..") for p in value.split("/"))
        or "" in value.split("/")
        or (parts and parts[0] == ".bulkdl")
    )
    if bad:
        raise ManifestError(source, f"{at}: not a safe relative path: {value[:80]!r}")
    return value


def _hex(value: object, length: int, source: str, at: str) -> str:
    if not isinstance(value, str) or len(value) != length or not _HEX.fullmatch(value):
        raise ManifestError(
            source, f"{at}: expected {length} lowercase hex digits, got {str(value)[:80]!r}"
        )
    return value


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _opt_count(item: Mapping[str, Any], key: str, source: str, at: str) -> int | None:
    value = item.get(key)
    if value is None:
        return None
    if not _is_int(value) or value < 0:
        raise ManifestError(source, f"{at}: {key}: expected a count, got {value!r}")
    return int(value)


def _opt_text(item: Mapping[str, Any], key: str, source: str, at: str) -> str | None:
    value = item.get(key)
    if value is None or isinstance(value, str):
        return value
    prefix = f"{at}: " if at else ""
    raise ManifestError(source, f"{prefix}{key}: expected a string, got {value!r}")


def _no_unknown(item: Mapping[str, Any], known: frozenset[str], source: str, at: str) -> None:
    unknown = sorted(str(k) for k in item if k not in known)
    if unknown:
        prefix = f"{at}: " if at else ""
        raise ManifestError(source, f"{prefix}unknown key(s) {', '.join(map(repr, unknown))}")
