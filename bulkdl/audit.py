"""Checking a tree on disk: ``bulkdl verify`` and the lock of a finished tree (``lock --from``).

:func:`verify_tree` re-reads every file the ledgers of ``DIR`` record (every shard's
``ledger*.sqlite``), or every file a lock lists with its tree path, in a pool of threads
(hashlib releases the GIL on large buffers, so hashing scales with cores until the disk is the
limit), and compares size and hash: SHA-256 where it is known, else the MD5 the archive served.
It reports, by series, the files that are missing or modified, and the files in the tree that
nothing records (bulkdl's own ``.bulkdl/``, ``metadata.csv``, ``failures.csv`` and
``LICENSES/`` aside). An instance packed in a series archive (``--pack``) is checked the same
way, its archive streamed once for all its members (nothing extracted); a member no record names
is unexpected. Progress goes through the download's reporters, one ``BytesReceived`` per file
read and one ``SeriesFinished`` per series. :func:`tree_lock` builds the lock of a tree from
its ledgers, hashing only the files whose SHA-256 the ledger lacks. Reads files only: nothing
under ``DIR`` is written.
"""

from __future__ import annotations

import hashlib
import os
import stat
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal, TypeVar

from bulkdl.archive import ArchiveError, digest_members
from bulkdl.errors import BulkdlError, ExitCode, InputError
from bulkdl.layout import resolve_layout
from bulkdl.ledger import RunRecord, SeriesState
from bulkdl.lockfile import Lock, LockedInstance, locked_series, public_url
from bulkdl.merged import MergedLedgers
from bulkdl.progress import (
    BytesReceived,
    NullReporter,
    Reporter,
    RunFinished,
    RunPlanned,
    SeriesFinished,
    human_bytes,
    human_duration,
)
from bulkdl.records import PlacedFile, Series
from bulkdl.sources.nbia import resolve_base_url

#: Entries at the top of a tree that bulkdl writes beside the files it places.
SIDECARS: Final = frozenset({".bulkdl", "metadata.csv", "failures.csv", "LICENSES"})
#: Files named per series (and unexpected files named) in the text report; --json has them all.
LISTED: Final = 100
#: Files read at once beyond the workers, so results stream in series order with flat memory.
_WINDOW_PER_WORKER: Final = 8
_CHUNK: Final = 1 << 20

T = TypeVar("T")
R = TypeVar("R")
Kind = Literal["missing", "modified"]


def default_workers() -> int:
    """Threads that read and hash at once: twice the cores (reads wait on the disk), 4..32."""
    return max(4, min(32, 2 * (os.cpu_count() or 2)))


class TreeChangedError(BulkdlError):
    """A file of the tree no longer holds what its ledger recorded: run ``bulkdl verify``."""

    exit_code = ExitCode.SOME_FAILED


@dataclass(frozen=True, slots=True)
class Expected:
    """One file a ledger or lock says the tree holds; ``sha256`` "" when unknown; ``archive``
    the series archive holding it (``--pack``; ``path`` is then ``<archive>/<member>``)."""

    series_uid: str
    path: str
    size: int
    md5: str
    sha256: str
    archive: str = ""


@dataclass(frozen=True, slots=True)
class Facts:
    """What is on disk at one path: None ``size`` when nothing is there."""

    size: int | None
    md5: str = ""
    sha256: str = ""
    oddity: str | None = None  # "a symlink", "a folder"...


@dataclass(frozen=True, slots=True)
class FileProblem:
    """A recorded file that is gone or holds other bytes."""

    path: str
    kind: Kind
    detail: str = ""


@dataclass(frozen=True, slots=True)
class TreeReport:
    """The outcome of :func:`verify_tree`: what was checked and every difference found."""

    root: Path
    against: str
    series: int
    files: int
    bytes: int
    seconds: float
    differing: Mapping[str, tuple[FileProblem, ...]] = field(default_factory=dict)
    unexpected: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """Every recorded file is there with its bytes, and nothing else is."""
        return not self.differing and not self.unexpected

    def to_json(self) -> dict[str, object]:
        """The report as plain data."""
        return {
            "ok": self.ok,
            "root": str(self.root),
            "against": self.against,
            "series": self.series,
            "files": self.files,
            "bytes": self.bytes,
            "seconds": round(self.seconds, 3),
            "differing": [
                {
                    "uid": uid,
                    "missing": [p.path for p in problems if p.kind == "missing"],
                    "modified": [
                        {"path": p.path, "detail": p.detail}
                        for p in problems
                        if p.kind == "modified"
                    ],
                }
                for uid, problems in self.differing.items()
            ],
            "unexpected": list(self.unexpected),
        }

    def text(self) -> str:
        """The report for people: a headline, the differences by series, a verdict."""
        lines = [
            f"{self.root}: {self.series:,} series, {self.files:,} files, "
            f"{human_bytes(self.bytes)} checked against {self.against} "
            f"in {human_duration(self.seconds)}"
        ]
        for uid, problems in self.differing.items():
            counts = {k: sum(1 for p in problems if p.kind == k) for k in ("modified", "missing")}
            lines.append(f"series {uid}: " + ", ".join(f"{n} {k}" for k, n in counts.items() if n))
            lines += _capped(
                [
                    f"  {p.kind:<9} {p.path}" + (f" ({p.detail})" if p.detail else "")
                    for p in problems
                ]
            )
        if self.unexpected:
            lines.append(f"unexpected (recorded nowhere): {len(self.unexpected):,} file(s)")
            lines += _capped([f"  {path}" for path in self.unexpected])
        if self.ok:
            lines.append("ok: every file matches")
        else:
            parts = []
            if self.differing:
                parts.append(f"{len(self.differing):,} of {self.series:,} series differ")
            if self.unexpected:
                parts.append(f"{len(self.unexpected):,} unexpected file(s)")
            lines.append("FAILED: " + "; ".join(parts))
        return "\n".join(lines) + "\n"


def _capped(lines: list[str]) -> list[str]:
    if len(lines) <= LISTED:
        return lines
    return [*lines[:LISTED], f"  and {len(lines) - LISTED:,} more (--json lists every one)"]


# --------------------------------------------------------------------------- reading files


def read_facts(path: Path, *, md5: bool, sha256: bool) -> Facts:
    """Size and the asked hashes of the regular file at ``path`` (never follows a symlink)."""
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return Facts(None)
    if not stat.S_ISREG(st.st_mode):
        kind = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a regular file"
        return Facts(st.st_size, oddity=kind)
    first = hashlib.md5(usedforsecurity=False) if md5 else None
    second = hashlib.sha256() if sha256 else None
    with open(path, "rb", buffering=0) as handle:
        while block := handle.read(_CHUNK):
            if first is not None:
                first.update(block)
            if second is not None:
                second.update(block)
    return Facts(
        st.st_size,
        md5=first.hexdigest() if first is not None else "",
        sha256=second.hexdigest() if second is not None else "",
    )


def _in_order(work: Callable[[T], R], items: Iterable[T], workers: int) -> Iterator[tuple[T, R]]:
    """``(item, work(item))`` in ``items``' order, ``workers`` threads computing ahead."""
    window = workers * _WINDOW_PER_WORKER
    pending: deque[tuple[T, Future[R]]] = deque()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="bulkdl-hash") as pool:
        try:
            for item in items:
                pending.append((item, pool.submit(work, item)))
                if len(pending) >= window:
                    first, done = pending.popleft()
                    yield first, done.result()
            while pending:
                first, done = pending.popleft()
                yield first, done.result()
        finally:
            for _, future in pending:
                future.cancel()


def _problem(want: Expected, got: Facts) -> FileProblem | None:
    if got.size is None:
        return FileProblem(want.path, "missing")
    if got.oddity is not None:
        return FileProblem(want.path, "modified", got.oddity)
    if got.size != want.size:
        return FileProblem(want.path, "modified", f"size {want.size:,} -> {got.size:,}")
    if want.sha256 and got.sha256 and got.sha256 != want.sha256:
        return FileProblem(want.path, "modified", "sha256 differs")
    if not want.sha256 and got.md5 and got.md5 != want.md5.lower():
        return FileProblem(want.path, "modified", "md5 differs")
    return None


def _checked(
    root: Path,
    items: Sequence[Expected],
    workers: int | None,
    *,
    both: bool = False,
    unlisted: list[str] | None = None,
) -> Iterator[tuple[Expected, Facts]]:
    """(item, what the tree holds for it) for each of ``items``, read in threads: a file on its
    own, every member of one archive in one pass over it. Each item's own hash, or ``both``.
    Members of those archives that no item names are added to ``unlisted``."""
    units: dict[str, list[Expected]] = {}
    for item in items:
        units.setdefault(item.archive or f"\0{item.path}", []).append(item)

    def read(unit: list[Expected]) -> tuple[list[Facts], list[str]]:
        if unit[0].archive:
            return _member_facts(root, unit, both)
        sha = both or bool(unit[0].sha256)
        return [read_facts(root / unit[0].path, md5=both or not sha, sha256=sha)], []

    for unit, (facts, others) in _in_order(read, units.values(), workers or default_workers()):
        if unlisted is not None:
            unlisted += others
        yield from zip(unit, facts, strict=True)


def _member_facts(root: Path, unit: list[Expected], both: bool) -> tuple[list[Facts], list[str]]:
    """What the archive of ``unit`` (members of one archive) holds for each of them, and the
    paths of its other members."""
    archive = unit[0].archive
    try:
        st = os.lstat(root / archive)
    except (FileNotFoundError, NotADirectoryError):
        return [Facts(None)] * len(unit), []
    if not stat.S_ISREG(st.st_mode):
        kind = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a regular file"
        return [Facts(st.st_size, oddity=f"its archive is {kind}")] * len(unit), []
    names = {item.path[len(archive) + 1 :] for item in unit}
    sha = both or any(item.sha256 for item in unit)
    md5 = both or not all(item.sha256 for item in unit)
    found: dict[str, Facts] = {}
    others: list[str] = []
    broken: Facts | None = None
    try:
        for m in digest_members(root / archive, md5=md5, sha256=sha):
            if m.name in names:
                found.setdefault(m.name, Facts(m.size, m.md5, m.sha256, m.damage))
            else:
                others.append(f"{archive}/{m.name}")
    except ArchiveError as exc:
        broken = Facts(0, oddity=f"its archive is damaged: {exc}")
    missing = broken or Facts(None)
    return [found.get(item.path[len(archive) + 1 :], missing) for item in unit], others


# --------------------------------------------------------------------------- ledgers


@dataclass(frozen=True, slots=True)
class TreeRecords:
    """What the ledgers of a tree say: merged series states, each series' files, the runs."""

    states: dict[str, SeriesState]
    files: dict[str, list[PlacedFile]]
    runs: list[RunRecord]


def tree_records(out: Path) -> TreeRecords:
    """Read every ledger of ``out`` (read-only), merged as :class:`MergedLedgers` merges them.
    Raises InputError when ``out`` holds no ledger, AbortError for a bad one."""
    with MergedLedgers.open(out) as merged:
        return TreeRecords(merged.states(), merged.files_by_series(), merged.runs())


def _expected_from_ledger(records: TreeRecords) -> list[Expected]:
    return [
        Expected(uid, f.path, f.size, f.md5, f.sha256, f.archive)
        for uid in sorted(records.files)
        for f in records.files[uid]
    ]


def _expected_from_lock(lock: Lock, source: str) -> list[Expected]:
    out: list[Expected] = []
    for s in lock.series:
        if s.instances is None or any(i.path is None for i in s.instances):
            raise InputError(
                f"{source}: series {s.SeriesInstanceUID} has no tree paths (a lock made before "
                "download): make the lock of a tree with 'bulkdl lock --from DIR'"
            )
        out += [
            Expected(s.SeriesInstanceUID, i.path or "", i.size, i.md5, i.sha256, i.archive or "")
            for i in sorted(s.instances, key=lambda i: i.path or "")
        ]
    return out


def _unexpected(root: Path, known: set[str]) -> list[str]:
    """Every file or link under ``root`` not in ``known`` (bulkdl's sidecars aside), sorted."""
    found: list[str] = []
    for folder, dirs, names in os.walk(root):
        rel = Path(folder).relative_to(root).as_posix()
        prefix = "" if rel == "." else f"{rel}/"
        if not prefix:
            dirs[:] = [d for d in dirs if d not in SIDECARS]
            names = [n for n in names if n not in SIDECARS]
        for d in dirs:
            if os.path.islink(os.path.join(folder, d)):
                names.append(d)  # os.walk does not descend into it: report the link itself
        found += [prefix + n for n in names if prefix + n not in known]
    return sorted(found)


# --------------------------------------------------------------------------- verify


def verify_tree(
    root: Path,
    *,
    lock: Lock | None = None,
    lock_name: str = "",
    reporter: Reporter | None = None,
    workers: int | None = None,
) -> TreeReport:
    """Re-read every file of ``root`` against its ledgers (or ``lock``): see the module
    docstring. Raises InputError when there is nothing to check against."""
    started = time.monotonic()
    reporter = reporter or NullReporter()
    if not root.is_dir():
        raise InputError(f"{root}: not a folder")
    if lock is None:
        expected = _expected_from_ledger(tree_records(root))
        against = "its ledger"
    else:
        expected = _expected_from_lock(lock, lock_name or "lock")
        against = f"the lock {lock_name}".rstrip()
    by_series: dict[str, list[Expected]] = {}
    for item in expected:
        by_series.setdefault(item.series_uid, []).append(item)
    total = sum(e.size for e in expected)
    reporter.emit(RunPlanned(len(by_series), len(by_series), 0, len(expected), total))

    differing: dict[str, tuple[FileProblem, ...]] = {}
    left = {uid: len(items) for uid, items in by_series.items()}
    found: dict[str, list[FileProblem]] = {}
    tally = {"ok": 0, "failed": 0}
    unlisted: list[str] = []  # members of recorded archives that nothing records
    for item, facts in _checked(root, expected, workers, unlisted=unlisted):
        uid = item.series_uid
        reporter.emit(BytesReceived(uid, facts.size or 0))
        problem = _problem(item, facts)
        if problem is not None:
            found.setdefault(uid, []).append(problem)
        left[uid] -= 1
        if left[uid] == 0:
            items = by_series[uid]
            size = sum(e.size for e in items)
            problems = found.pop(uid, [])
            if problems:
                differing[uid] = tuple(problems)
                tally["failed"] += 1
                why = f"{len(problems)} file(s) missing or modified"
                reporter.emit(SeriesFinished(uid, "failed", len(items), size, why))
            else:
                tally["ok"] += 1
                reporter.emit(SeriesFinished(uid, "done", len(items), size))
    known = {e.path for e in expected} | {e.archive for e in expected if e.archive}
    unexpected = tuple(sorted(_unexpected(root, known) + unlisted))
    seconds = time.monotonic() - started
    reporter.emit(
        RunFinished(
            done=tally["ok"],
            incomplete=0,
            failed=tally["failed"],
            skipped=0,
            images=len(expected),
            bytes=total,
            seconds=seconds,
            failures=tuple((uid, f"{len(p)} file(s) differ") for uid, p in differing.items()),
        )
    )
    return TreeReport(
        root, against, len(by_series), len(expected), total, seconds, differing, unexpected
    )


# --------------------------------------------------------------------------- lock of a tree


@dataclass(frozen=True, slots=True)
class TreeLock:
    """A tree's lock, and the series its ledgers know that it leaves out (uid -> state)."""

    lock: Lock
    left_out: dict[str, str]


def _last_settings(runs: Sequence[RunRecord]) -> Mapping[str, object]:
    real = [r for r in runs if not r.settings.get("dry_run")]
    return real[-1].settings if real else {}


def _source_of(settings: Mapping[str, object]) -> str | None:
    api_url = settings.get("api_url")
    try:
        return public_url(resolve_base_url(api_url if isinstance(api_url, str) else None, env={}))
    except BulkdlError:
        return None


def _layout_of(settings: Mapping[str, object]) -> str | None:
    layout = settings.get("layout")
    if not isinstance(layout, str):
        return None
    try:
        return resolve_layout(layout).template
    except BulkdlError:
        return layout


def tree_lock(
    root: Path,
    *,
    only: Iterable[str] | None = None,
    name: str | None = None,
    reporter: Reporter | None = None,
    workers: int | None = None,
) -> TreeLock:
    """The lock of ``root``'s done series (of ``only`` those, when given), from its ledgers.

    Files the ledger records without a SHA-256 (placed by an older bulkdl) are read to get it,
    and must still hold the recorded size and MD5. Raises InputError (no ledger) or
    TreeChangedError naming a file that changed since it was placed.
    """
    records = tree_records(root)
    wanted = set(records.states) if only is None else set(only)
    left_out = {
        uid: records.states[uid].state if uid in records.states else "unknown"
        for uid in sorted(wanted)
        if uid not in records.states or records.states[uid].state != "done"
    }
    done = sorted(wanted - set(left_out))
    missing_sha = [
        Expected(uid, f.path, f.size, f.md5, "", f.archive)
        for uid in done
        for f in records.files.get(uid, [])
        if not f.sha256
    ]
    filled: dict[str, str] = {}
    if missing_sha:
        filled = _fill_sha256(root, missing_sha, reporter or NullReporter(), workers)
    series = []
    for uid in done:
        record = records.states[uid].record or Series(uid)
        instances = [
            LockedInstance(
                f.SOPInstanceUID,
                f.size,
                f.md5,
                f.sha256 or filled[f.path],
                f.path,
                f.archive or None,
            )
            for f in records.files.get(uid, [])
        ]
        series.append(locked_series(record, instances))
    settings = _last_settings(records.runs)
    lock = Lock(tuple(series), name=name, source=_source_of(settings), layout=_layout_of(settings))
    return TreeLock(lock, left_out)


def _fill_sha256(
    root: Path, items: Sequence[Expected], reporter: Reporter, workers: int | None
) -> dict[str, str]:
    total = sum(e.size for e in items)
    count = len({e.series_uid for e in items})
    reporter.emit(RunPlanned(count, count, 0, len(items), total))
    out: dict[str, str] = {}

    for item, facts in _checked(root, items, workers, both=True):
        reporter.emit(BytesReceived(item.series_uid, facts.size or 0))
        problem = _problem(item, facts)
        if problem is not None:
            detail = f" ({problem.detail})" if problem.detail else ""
            raise TreeChangedError(
                f"{root / item.path}: {problem.kind} since bulkdl placed it{detail}: "
                f"run 'bulkdl verify {root}' (series {item.series_uid})"
            )
        out[item.path] = facts.sha256
    return out
