"""``bulkdl organize``: DICOM files already on disk placed into a bulkdl tree as a download would.

Sources are folders and ZIPs of DICOM files (from the NBIA Data Retriever, tcia_utils or
anything else), found and read by :mod:`bulkdl.scan` (headers in a thread pool, only the
keywords the layout needs plus the UIDs; ZIPs extracted into staging under ``DIR/.bulkdl/``).
Files are grouped by SeriesInstanceUID and placed series by series the way a download places
them: brought into staging by ``copy`` (the default; the source untouched), ``link`` (a hard
link: no space used, DIR on the source's filesystem) or ``move`` (a hard link, or a copy across
filesystems, and the source removed once its series is recorded done) while their MD5 and
SHA-256 are computed; planned by the :class:`~bulkdl.place.Placer` (sanitization, collisions,
series-wide values); recorded in the ledger as placing, renamed into the tree, recorded done
(a row per file with size, MD5 and SHA-256). Series are placed in parallel. An instance already
recorded in the tree is not placed twice; a second copy of one instance among the sources is
listed and left. A source is removed only by ``--move``, only after its series is recorded
done; ZIPs are never removed. Files that are not DICOM are listed and left where they were.
A crash leaves at worst a series marked placing, which the next organize settles without
deleting anything (:func:`~bulkdl.relayout.recover`). The series record (what ``metadata.csv``
and later layouts use) is the ledger's own when the series is known, else a Data Retriever
``metadata.csv`` found among the sources, else the header of one of its files, with
``--collection`` for a Collection nothing names. ``bulkdl organize DIR --layout NEW`` re-lays
the tree DIR in place instead (:mod:`bulkdl.relayout`). Does file I/O; blocking.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol, TextIO

from bulkdl import dicom
from bulkdl.errors import ExitCode, InputError, PlacementConflict
from bulkdl.layout import Layout, resolve_layout
from bulkdl.ledger import LEDGER_NAME, Ledger
from bulkdl.merged import write_sidecars
from bulkdl.outdir import disk_error, exclusive, prepare_output
from bulkdl.place import Move, Placer
from bulkdl.records import PlacedFile, Series, StagedFile
from bulkdl.relayout import Relaid, is_tree, present, readonly_ledger, recover, relayout, settle
from bulkdl.scan import (
    SERIES_FIELDS,
    Found,
    Header,
    Mode,
    Note,
    SourceProblem,
    hash_file,
    scan,
    stage,
    unpack_members,
)
from bulkdl.shard import Shard
from bulkdl.sources.nbia import parse_date, parse_int

log = logging.getLogger(__name__)

#: What a series record takes from one of its files (read once per series, not per file).
RECORD_KEYWORDS = (
    *("PatientID", "PatientName", "PatientSex", "PatientAge", "StudyDate", "StudyDescription"),
    *("StudyID", "Modality", "SeriesDate", "SeriesDescription", "SeriesNumber"),
    *("ProtocolName", "BodyPartExamined", "Manufacturer", "ManufacturerModelName"),
    "SoftwareVersions",
)
#: Plans of one series tried when other writers (shards) keep taking its paths.
_PLACING_TRIES = 3
# Counts describe what is in the tree, never what a file or metadata.csv says.
_NOT_FROM_FILES = frozenset({"ImageCount", "FileSize", "SeriesInstanceUID"})


class _Sized(Protocol):
    @property
    def size(self) -> int: ...


@dataclass
class Report:
    """What one run did; ``left`` lists files left where they were (not DICOM...), ``errors``
    what went wrong, each as (file, why)."""

    mode: str
    dry_run: bool
    series: int = 0
    placed: int = 0
    bytes: int = 0
    already: int = 0
    plan: list[tuple[str, str]] = field(default_factory=list)
    left: list[tuple[str, str]] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    relaid: Relaid | None = None
    interrupted: bool = False

    @property
    def exit_code(self) -> ExitCode:
        """0 all placed, 1 some file failed, 130 interrupted."""
        if self.interrupted:
            return ExitCode.INTERRUPTED
        return ExitCode.SOME_FAILED if self.errors else ExitCode.OK


# --- placing -----------------------------------------------------------------------------------


@dataclass
class _Run:
    out: Path
    layout: Layout
    mode: Mode
    dry_run: bool
    ledger: Ledger | None
    placer: Placer
    staging: Path
    metadata: Mapping[str, Mapping[str, str]]
    collection: str | None
    report: Report
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)


def _record(
    uid: str, header: Header, run: _Run, known: Series | None, files: Sequence[_Sized]
) -> Series:
    """The series record: the ledger's own values first, then metadata.csv's, then the header's;
    ImageCount and FileSize are those of ``files``, all the series' files in the tree."""
    values: dict[str, Any] = {}
    for source in (header, run.metadata.get(uid, {})):
        for key, text in source.items():
            if key not in SERIES_FIELDS or key in _NOT_FROM_FILES or not text:
                continue
            if key in ("StudyDate", "SeriesDate"):
                values[key] = parse_date(text)
            elif key == "SeriesNumber":
                values[key] = parse_int(text)
            else:
                values[key] = text
    if run.collection and not values.get("Collection"):
        values["Collection"] = run.collection
    if known is not None:
        values.update({f: getattr(known, f) for f in SERIES_FIELDS if getattr(known, f)})
    values.update(SeriesInstanceUID=uid, ImageCount=len(files), FileSize=sum(f.size for f in files))
    return Series(**values, extra=known.extra if known is not None else ())


def _place_series(run: _Run, uid: str, found: Sequence[Found], index: int) -> None:
    """Stage, plan, place and record the files of one series (see the module docstring)."""
    if run.stop.is_set():
        return
    out, report, ledger = run.out, run.report, run.ledger
    state = ledger.states([uid]).get(uid) if ledger is not None else None
    recorded = ledger.files(uid) if ledger is not None else []
    in_tree = {
        f.SOPInstanceUID: f
        for f in recorded  # a packed instance (--pack) is there while its archive is
        if ((out / f.archive).is_file() if f.archive else present(out / f.path, f.size))
    }
    fresh: dict[str, Found] = {}
    left: list[tuple[str, str]] = []
    errors: list[Note] = []
    already = 0
    for item in found:
        sop = item.header["SOPInstanceUID"]
        if sop in in_tree:
            already += 1
            if run.mode == "move" and not run.dry_run:
                errors += _remove_duplicate(item, in_tree[sop])
        elif sop in fresh:
            left.append((item.origin, f"the same instance as {fresh[sop].origin}: not placed"))
        else:
            fresh[sop] = item
    staged, failed = _staged(run, list(fresh.values()), index)
    errors += failed
    placed_bytes = 0
    moves = []
    if staged:
        first = staged[0]
        own = first.header or {}
        header = {**own, **(dicom.read_header(first.path, RECORD_KEYWORDS) or {})}
        kept = list(in_tree.values())
        known = state.record if state is not None else None
        record = _record(uid, header, run, known, [*kept, *staged])
        for tries in range(1, _PLACING_TRIES + 1):
            planned = moves = run.placer.plan(record, staged)
            try:
                if run.dry_run:
                    origin = {s.path: s.name for s in staged}
                    with run.lock:
                        report.plan += [(origin[m.source], m.placed.path) for m in moves]
                else:
                    assert ledger is not None
                    sop_class = own.get("SOPClassUID") or (state and state.sop_class_uid)
                    _commit(run, ledger, record, kept, moves, sop_class or None)
                placed_bytes = sum(m.placed.size for m in moves)
            except PlacementConflict as exc:  # nothing moved: plan around the file that came
                moves = []
                if tries < _PLACING_TRIES:
                    continue
                errors.append((f"series {uid}", str(exc)))
            except ValueError as exc:  # the ledger refused the paths: nothing was moved
                errors.append((f"series {uid}", str(exc)))
                moves = []
            finally:
                run.placer.release(planned)
            break
    if run.mode == "move" and not run.dry_run:
        errors += _remove_sources(moves, fresh)
    with run.lock:
        report.series += bool(moves)
        report.placed += len(moves)
        report.bytes += placed_bytes
        report.already += already
        report.left += left
        report.errors += errors


def _staged(run: _Run, items: Sequence[Found], index: int) -> tuple[list[StagedFile], list[Note]]:
    """``items`` in staging with their hashes, and the ones whose source failed."""
    if run.dry_run:  # nothing is copied: the plan uses the sources as they are
        return [StagedFile(i.origin, i.path, i.size, "", "", i.header) for i in items], []
    folder = run.staging / "series" / f"{index:06d}"
    folder.mkdir(parents=True, exist_ok=True)
    staged, errors = [], []
    for number, item in enumerate(items):
        try:
            staged.append(stage(item, folder / f"{number:06d}.dcm", run.mode))
        except SourceProblem as exc:
            errors.append((item.origin, str(exc)))
    return staged, errors


def _commit(
    run: _Run,
    ledger: Ledger,
    record: Series,
    kept: Sequence[PlacedFile],
    moves: Sequence[Move],
    sop_class: str | None,
) -> None:
    """Record, move in, record done: the download's protocol, so a crash is recoverable."""
    uid = record.SeriesInstanceUID
    files = [*kept, *(m.placed for m in moves)]
    ledger.upsert_resolved([record])
    ledger.begin_placing(uid, files)
    try:
        folders = run.placer.commit(moves)
    except BaseException:
        settle(ledger, run.out, uid, len(files))  # keep what did arrive; delete nothing
        raise
    images, size = len(files), sum(f.size for f in files)
    ledger.finish_placing(
        uid, images=images, bytes_=size, incomplete=False, sop_class_uid=sop_class
    )
    ledger.record_folders(folders)
    log.info("series %s: %d files placed, %d in the tree", uid, len(moves), images)


def _remove_duplicate(item: Found, recorded: PlacedFile) -> list[Note]:
    """--move, for a source whose instance is already recorded in the tree (an earlier run
    placed it): remove it when its bytes are the recorded ones, so the move completes."""
    if item.staged is not None:
        return []
    try:
        same = hash_file(item.path)[1] == recorded.md5
    except SourceProblem as exc:
        return [(item.origin, str(exc))]
    if not same:
        return [(item.origin, f"differs from the same instance in the tree ({recorded.path})")]
    return _unlink(item)


def _unlink(item: Found) -> list[Note]:
    try:
        item.path.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:
        return [(item.origin, f"placed, but not removed ({exc.strerror or exc})")]
    return []


def _remove_sources(moves: Sequence[Move], fresh: Mapping[str, Found]) -> list[Note]:
    """--move: remove the sources of files now recorded in the tree (never a ZIP member)."""
    errors = []
    for move in moves:
        item = fresh[move.placed.SOPInstanceUID]
        if item.staged is None:
            errors += _unlink(item)
    return errors


# --- the command -------------------------------------------------------------------------------


def run(
    sources: Sequence[Path],
    out: Path | None,
    layout: str | None,
    *,
    mode: Mode = "copy",
    dry_run: bool = False,
    collection: str | None = None,
    workers: int = 8,
    shard: Shard | None = None,
) -> Report:
    """``bulkdl organize``: place ``sources`` into ``out``, or re-lay the tree ``sources[0]`` in
    place when ``out`` is None or that same folder. ``shard`` places only the series it owns (by
    each file's SeriesInstanceUID), with its own ledger and no sidecars, as a download shard.

    ``layout`` is a preset or template (None: ``BULKDL_LAYOUT`` or the default preset). Raises
    InputError for bad arguments (exit 2), AbortError when DIR or its ledger fails (exit 3);
    every per-file problem is in the report instead. KeyboardInterrupt stops the run after the
    series being placed (their placements finish), marked interrupted in the report.
    """
    if not sources:
        raise InputError("organize needs at least one SRC folder or ZIP")
    for source in sources:
        if not source.exists():
            raise InputError(f"{source}: no such file or folder")
    if out is None or (len(sources) == 1 and sources[0].resolve() == out.resolve()):
        if len(sources) != 1:
            raise InputError("give --out DIR to organize several sources")
        if shard is not None:
            raise InputError("--shard places files into --out DIR; a re-lay in place has none")
        if layout is None:
            raise InputError(
                f"re-laying {sources[0]} in place needs --layout (a preset or template)"
            )
        return _relay(sources[0], resolve_layout(layout), dry_run=dry_run, workers=workers)
    template = resolve_layout(layout or os.environ.get("BULKDL_LAYOUT") or "default")
    target = out.resolve()
    for source in sources:
        real = source.resolve()
        if real == target or target in real.parents:
            raise InputError(f"{source} is inside the output folder {out}: give another --out")
    report = Report(mode, dry_run)
    name = shard.ledger_name if shard else LEDGER_NAME
    place_all = partial(_organize, shard=shard)
    if dry_run:
        ledger = readonly_ledger(out, name) if is_tree(out, name) else None
        try:
            with tempfile.TemporaryDirectory(prefix="bulkdl-organize-") as scratch:
                place_all(
                    sources, out, template, ledger, Path(scratch), mode, collection, workers, report
                )
        finally:
            if ledger is not None:
                ledger.close()
        return report
    state = prepare_output(out)
    with exclusive(state, shard.tag if shard else None), Ledger.open(out, name) as ledger:
        report.notes += recover(ledger, out)
        staging = state / (f"staging-{shard.tag}" if shard else "staging")
        shutil.rmtree(staging, ignore_errors=True)  # what a killed run left
        settings = _settings(sources, template, mode, collection)
        run_id = ledger.begin_run({**settings, "shard": str(shard)} if shard else settings)
        try:
            place_all(sources, out, template, ledger, staging, mode, collection, workers, report)
            if shard is None:  # a shard's sidecars are bulkdl finalize's, as a download's
                write_sidecars(out, ledger)
        except OSError as exc:
            raise disk_error(exc, out) from exc
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            ledger.end_run(run_id, int(report.exit_code))
    return report


def _settings(
    sources: Sequence[Path], layout: Layout, mode: str, collection: str | None
) -> dict[str, object]:
    return {
        "command": "organize",
        "sources": [str(s) for s in sources],
        "layout": layout.template,
        "mode": mode,
        "collection": collection,
    }


def _organize(
    sources: Sequence[Path],
    out: Path,
    layout: Layout,
    ledger: Ledger | None,
    staging: Path,
    mode: Mode,
    collection: str | None,
    workers: int,
    report: Report,
    shard: Shard | None = None,
) -> None:
    """Scan, unpack the ZIPs, and place every series found (in a pool of ``workers``); with
    ``shard``, only the series it owns."""
    scanned = scan(sources, layout.keywords, skip=out.resolve(), workers=workers)
    report.left += scanned.left
    report.errors += scanned.errors
    if mode == "link":
        _check_one_filesystem(scanned.found, out)
    staging.mkdir(parents=True, exist_ok=True)
    owner_of = ledger.owner_of if ledger is not None else lambda _path: None
    run = _Run(
        out=out,
        layout=layout,
        mode=mode,
        dry_run=report.dry_run,
        ledger=ledger,
        placer=Placer(out, layout, owner_of),
        staging=staging,
        metadata=scanned.metadata,
        collection=collection,
        report=report,
    )
    with ThreadPoolExecutor(max_workers=workers) as pool:
        try:
            unpack = partial(unpack_members, keywords=layout.keywords)
            (staging / "zips").mkdir(exist_ok=True)
            folders = [staging / "zips" / f"{n:06d}" for n in range(len(scanned.zips))]
            for members in pool.map(unpack, scanned.zips, folders):
                scanned.found += members.found
                report.left += members.left
                report.errors += members.errors
            series: dict[str, list[Found]] = {}
            for item in scanned.found:
                uid = item.header["SeriesInstanceUID"]
                if shard is None or shard.owns(uid):
                    series.setdefault(uid, []).append(item)
            jobs = [
                pool.submit(_place_series, run, uid, series[uid], index)
                for index, uid in enumerate(sorted(series))
            ]
            for job in jobs:
                job.result()
        except KeyboardInterrupt:
            # Placements under way finish (threads are not interrupted); none starts after.
            run.stop.set()
            pool.shutdown(wait=True, cancel_futures=True)
            report.interrupted = True
        except BaseException:
            run.stop.set()  # a run-fatal error: let no other series start
            raise
    report.plan.sort()


def _check_one_filesystem(found: Sequence[Found], out: Path) -> None:
    folder = out
    while not folder.exists() and folder.parent != folder:
        folder = folder.parent
    device = folder.stat().st_dev
    for item in found:
        if item.staged is None and item.device != device:
            raise InputError(
                f"--link: {item.origin} is on another filesystem than {out}, and hard links "
                "cannot cross filesystems: use --copy (or --move)"
            )


def _relay(out: Path, layout: Layout, *, dry_run: bool, workers: int) -> Report:
    if not is_tree(out):
        raise InputError(
            f"{out} is not a bulkdl tree (no .bulkdl/ledger.sqlite): to organize the files in it, "
            "give --out DIR"
        )
    report = Report("re-lay", dry_run)
    report.relaid = Relaid()
    if dry_run:
        ledger = readonly_ledger(out)
        assert ledger is not None
        with ledger:
            relayout(ledger, out, layout, dry_run=True, workers=workers, result=report.relaid)
    else:
        with exclusive(prepare_output(out)), Ledger.open(out) as ledger:
            report.notes += recover(ledger, out)
            run_id = ledger.begin_run({"command": "organize", "relayout": layout.template})
            try:
                relayout(ledger, out, layout, dry_run=False, workers=workers, result=report.relaid)
            except KeyboardInterrupt:
                # Finish the renames of the series under way, so the ledger is true on exit.
                report.notes += recover(ledger, out)
                report.interrupted = True
            except OSError as exc:
                raise disk_error(exc, out) from exc
            finally:
                ledger.end_run(run_id, int(report.exit_code))
    relaid = report.relaid
    report.plan = relaid.moves
    report.series, report.placed = relaid.series, relaid.moved
    report.already = relaid.unchanged
    report.errors += relaid.problems
    return report


def print_report(report: Report, out: Path | None, stdout: TextIO, stderr: TextIO) -> None:
    """The plan (a dry run: ``source -> target`` lines on stdout), every file left or failed,
    and a summary on stderr."""
    if report.dry_run:
        where = out if out is not None and report.mode != "re-lay" else None
        for source, target in report.plan:
            stdout.write(f"{source} -> {where / target if where else target}\n")
    for note in report.notes:
        stderr.write(f"bulkdl: {note}\n")
    for origin, why in report.left:
        stderr.write(f"left in place: {origin}: {why}\n")
    for origin, why in report.errors:
        stderr.write(f"error: {origin}: {why}\n")
    verb = "would be" if report.dry_run else "were"
    if report.mode == "re-lay":
        summary = (
            f"re-lay: {report.placed} files in {report.series} series {verb} moved, "
            f"{report.already} already in place"
        )
    else:
        summary = (
            f"organize ({report.mode}): {report.placed} files ({report.bytes / 1e6:.1f} MB) in "
            f"{report.series} series {verb} placed, {report.already} already in the tree, "
            f"{len(report.left)} left in place"
        )
    stderr.write(
        f"{summary}, {len(report.errors)} errors" + " (interrupted)" * report.interrupted + "\n"
    )
    if out is not None and not report.dry_run:
        stderr.write(f"tree: {out}\n")
