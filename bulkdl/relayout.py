"""Re-laying a bulkdl tree in place (``bulkdl organize DIR --layout NEW``), and settling what an
interrupted ``organize`` left behind.

:func:`relayout` renames every recorded file of ``DIR`` to the path a new layout gives it,
without downloading anything: the values are the series record the ledger keeps (as a download
had them) with each file's own header over it (read in a thread pool, only the keywords the
layout needs), planned by the same :class:`~bulkdl.place.Placer` as a download (sanitization,
collisions, series-wide values such as the widths of ``1-001.dcm``). Series go one at a time:

1. the ledger notes the series' renames (old path, new path) in one transaction;
2. the files are renamed (``os.replace``, same filesystem, each atomic);
3. one transaction records the new paths and the folders' mtimes and drops the note;
4. folders left empty are removed; at the end ``metadata.csv`` is rewritten.

The crash window is between 1 and 3: some files may sit at their new paths while the ledger
still lists the old ones. The note covers it: the next ``bulkdl organize`` on ``DIR``
(:func:`recover`, run before anything else) finishes the renames the note lists (a file still
at its old path is moved, one already at its new path is left) and records them, so the tree
and the ledger agree again; a crash before 1 or after 3 leaves nothing to do. A
``bulkdl download`` that meets the tree first knows nothing of the note: it sees the files
missing from their recorded paths and fetches those series again (nothing is deleted; the
renamed copies stay where they are), so finish an interrupted re-lay with ``bulkdl organize``
before downloading into the tree again.

:func:`recover` also settles series a crash left ``placing``: the files of the series that did
reach the tree are kept (organize may have moved their sources away, so nothing is deleted);
the series is done when they are all its images, otherwise pending with those files still
recorded, for a later run to complete. Blocking file I/O and SQLite: call from a worker thread
or a command.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from bulkdl import dicom, sidecar
from bulkdl.errors import InputError
from bulkdl.layout import Layout
from bulkdl.ledger import LEDGER_NAME, Ledger, open_all
from bulkdl.place import Placer, prune_empty
from bulkdl.records import PlacedFile, Series, StagedFile

log = logging.getLogger(__name__)

Header = Mapping[str, str]


@dataclass
class Relaid:
    """What a re-lay did: ``moves`` as (old, new) relative paths, and files it could not move."""

    series: int = 0
    moved: int = 0
    unchanged: int = 0
    moves: list[tuple[str, str]] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)  # (path, why)


def is_tree(folder: Path, name: str = LEDGER_NAME) -> bool:
    """Whether ``folder`` is a bulkdl output folder (it has a ledger, or ledger ``name``)."""
    return (folder / ".bulkdl" / name).is_file()


def readonly_ledger(out: Path, name: str = LEDGER_NAME) -> Ledger | None:
    """``out``'s main ledger (or ledger ``name``, a shard's) opened read-only (for a dry run),
    or None when there is none.

    Raises AbortError as :func:`~bulkdl.ledger.open_all` does.
    """
    chosen = None
    for ledger in open_all(out):
        if ledger.path.name == name and chosen is None:
            chosen = ledger
        else:
            ledger.close()
    return chosen


def recover(ledger: Ledger, out: Path) -> list[str]:
    """Finish a re-lay and settle placements an interrupted run left; returns what was done."""
    done: list[str] = []
    pending = ledger.pending_relocation()
    if pending is not None:
        uid, moves = pending
        _finish_moves(ledger, out, uid, moves)
        done.append(f"finished the interrupted re-lay of series {uid} ({len(moves)} files)")
    for uid, state in ledger.states(records=False).items():
        if state.state == "placing":
            kept = settle(ledger, out, uid, state.expected_images)
            done.append(f"settled series {uid}, interrupted while placing: {kept} files kept")
    return done


def settle(ledger: Ledger, out: Path, uid: str, expected: int | None) -> int:
    """Keep the recorded files of ``uid`` that are in the tree with their recorded size, drop
    the rest from the ledger; done when they are all ``expected`` images. Deletes nothing."""
    recorded = ledger.files(uid)
    kept = [f for f in recorded if present(out / f.path, f.size)]
    complete = bool(kept) and len(kept) == expected
    ledger.settle_placed(uid, kept, done=complete, sop_class_uid=None)
    return len(kept)


def present(path: Path, size: int) -> bool:
    """Whether a regular file of ``size`` bytes is at ``path`` (a symbolic link is not)."""
    try:
        return path.is_file() and not path.is_symlink() and path.stat().st_size == size
    except OSError:
        return False


def _finish_moves(
    ledger: Ledger, out: Path, uid: str, moves: Sequence[tuple[str, str]]
) -> list[tuple[str, int]]:
    """Do the renames of a noted relocation still to do, record them, prune. Raises OSError."""
    touched: set[PurePosixPath] = set()
    for old, new in moves:
        source, target = out / old, out / new
        if old != new and (source.is_file() or source.is_symlink()):
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(source, target)
        touched.add(PurePosixPath(new).parent)
    folders = []
    for parent in touched:
        folder = "" if str(parent) == "." else parent.as_posix()
        try:
            folders.append((folder, (out / parent).stat().st_mtime_ns))
        except OSError:
            continue  # nothing arrived there: no proof to record
    ledger.finish_relocation(uid, moves, folders)
    prune_empty(out, [(out / old).parent for old, _ in moves])
    return folders


def relayout(
    ledger: Ledger,
    out: Path,
    layout: Layout,
    *,
    dry_run: bool,
    workers: int,
    result: Relaid | None = None,
) -> Relaid:
    """Rename every recorded file of ``out`` to its path under ``layout`` (see the module
    docstring); with ``dry_run``, only plan. ``result`` (filled as it goes, so an interrupted
    caller still has it) is returned. Raises InputError for a sharded or packed tree,
    AbortError when the ledger fails, OSError when a rename fails (the note lets the next run
    finish)."""
    if len(list((out / ".bulkdl").glob("ledger*.sqlite"))) > 1:
        raise InputError(f"{out}: a tree with several ledger shards cannot be re-laid in place")
    result = result if result is not None else Relaid()
    states = ledger.states()
    by_series = ledger.files_by_series()
    if any(f.archive for files in by_series.values() for f in files):
        raise InputError(f"{out}: series packed into archives (--pack) cannot be re-laid in place")
    keywords = layout.keywords | frozenset(dicom.HEADER_KEYWORDS_ALWAYS)
    placer = Placer(out, layout, ledger.owner_of)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for uid in sorted(by_series):
            state = states.get(uid)
            if state is None or state.record is None or state.state not in ("done", "incomplete"):
                continue
            recorded = by_series[uid]
            # One series' headers at a time: memory stays that of the largest series.
            headers = pool.map(lambda f: _header(out / f.path, keywords), recorded)
            staged = []
            for placed, header in zip(recorded, headers, strict=True):
                if isinstance(header, str):
                    result.problems.append((placed.path, header))
                    continue
                # The ledger's SOPInstanceUID names the file, whatever its header now says.
                values = {**header, "SOPInstanceUID": placed.SOPInstanceUID}
                staged.append(_as_staged(out, placed, values))
            _relay_series(ledger, out, placer, state.record, staged, result, dry_run=dry_run)
    if not dry_run:
        sidecar.write_all(ledger, out)
    return result


def _relay_series(
    ledger: Ledger,
    out: Path,
    placer: Placer,
    record: Series,
    staged: Sequence[StagedFile],
    result: Relaid,
    *,
    dry_run: bool,
) -> None:
    """Plan one series under the new layout; note, rename and record its moves."""
    moves = placer.plan(record, staged)
    try:
        pairs = [(m.source.relative_to(out).as_posix(), m.placed.path) for m in moves]
        changed = [pair for pair in pairs if pair[0] != pair[1]]
        result.unchanged += len(pairs) - len(changed)
        if not changed:
            return
        result.series += 1
        result.moved += len(changed)
        result.moves.extend(changed)
        if not dry_run:
            ledger.begin_relocation(record.SeriesInstanceUID, changed)
            _finish_moves(ledger, out, record.SeriesInstanceUID, changed)
            log.info("series %s: %d files renamed", record.SeriesInstanceUID, len(changed))
    finally:
        placer.release(moves)


def _header(path: Path, keywords: frozenset[str]) -> Header | str:
    """The file's header, or why it has none (a string)."""
    try:
        header = dicom.read_header(path, keywords)
    except FileNotFoundError:
        return "missing from the tree (left recorded; a download fetches its series again)"
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc}); left where it is"
    if header is None:
        return "no longer a readable DICOM file; left where it is"
    return header


def _as_staged(out: Path, placed: PlacedFile, header: Header) -> StagedFile:
    return StagedFile(
        placed.path, out / placed.path, placed.size, placed.md5, placed.sha256, header
    )
