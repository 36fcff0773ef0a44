"""Placing a verified series into the output tree: where each file goes, and the move itself.

:meth:`Placer.plan` renders each staged file's path from the layout template (header values
first, then the series record's, e.g. ``Collection``) and resolves collisions: two different
instances never share a path (the later one, in SOPInstanceUID order, gets a deterministic
``~hash`` suffix); a path already owned by another instance in the ledger, claimed by a series
in flight, or holding a foreign file with other bytes is never overwritten. A file that already
holds exactly the same bytes (a tree whose ledger was lost) is kept in place and recorded, so
re-runs converge on one tree. :meth:`Placer.commit` moves staged files in with a rename, or, when
staging is on another filesystem (``--staging``), with :func:`bulkdl.move.move_into`'s copy,
fsync and rename, fsyncing each folder it copied into. Every move is exclusive (a hard link and
an unlink), so a file another process put there since planning (the shards of a job array write
the same Patient/Study folders) is never replaced, and no empty or partial file is ever visible:
the series is planned again instead. Blocking file I/O: call from a worker thread.

Templates with series-wide values (``padmax``, as in the ``nbia-descriptive`` preset's
``1-001.dcm``) get them from :meth:`~bulkdl.layout.Layout.series_context`, measured over every
file of the series in :meth:`Placer.plan` before any one is rendered: the pipeline and
``bulkdl organize`` plan whole series, so neither needs to know about it.
"""

from __future__ import annotations

import hashlib
import os
import stat
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import date
from pathlib import Path, PurePosixPath

from bulkdl.errors import PlacementConflict
from bulkdl.layout import Layout, dedupe_name
from bulkdl.move import fsync_dir, fsync_file, move_into
from bulkdl.records import PlacedFile, Series, StagedFile

OwnerOf = Callable[[str], tuple[str, str] | None]


@dataclass(frozen=True, slots=True)
class Move:
    """One staged file and the tree path it goes to."""

    source: Path
    placed: PlacedFile


def record_values(series: Series) -> dict[str, str]:
    """The series record as layout values: DICOM-style strings (dates as YYYYMMDD)."""
    values: dict[str, str] = {}
    for field in fields(series):
        value = getattr(series, field.name)
        if value is None or field.name == "extra":
            continue
        values[field.name] = value.strftime("%Y%m%d") if isinstance(value, date) else str(value)
    return values


def _md5_of(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


class Placer:
    """Plans and performs the moves of verified series into ``root``; safe across threads."""

    def __init__(
        self,
        root: Path,
        layout: Layout,
        owner_of: OwnerOf,
        *,
        fsync: bool = False,
        landing: Path | None = None,
    ):
        self.root = root
        self._root = str(root)
        self.landing = landing  # where copies from another filesystem wait for their rename
        self.layout = layout
        self._owner_of = owner_of
        self._fsync = fsync
        self._lock = threading.Lock()
        self._claimed: dict[str, str] = {}  # path -> SOPInstanceUID, series in flight

    def _taken(self, path: str, sop: str, size: int, md5: str, mine: Mapping[str, str]) -> bool:
        if path in mine:
            return mine[path] != sop
        claimed = self._claimed.get(path)
        if claimed is not None:
            return claimed != sop
        owner = self._owner_of(path)
        if owner is not None:
            return owner[1] != sop
        target = os.path.join(self._root, path)
        try:
            found = os.lstat(target)
        except (FileNotFoundError, NotADirectoryError):
            return False
        # A foreign file: keep it unless it holds exactly these bytes.
        if not stat.S_ISREG(found.st_mode) or found.st_size != size:
            return True
        return _md5_of(Path(target)) != md5

    def plan(self, series: Series, files: Sequence[StagedFile]) -> list[Move]:
        """Choose each file's path and claim it until :meth:`commit` or :meth:`release`.

        Files without a header or SOPInstanceUID must have been rejected by verification.
        """
        base = record_values(series)
        ordered = sorted(files, key=lambda f: (f.header or {}).get("SOPInstanceUID", f.name))
        values = [{**base, **(staged.header or {})} for staged in ordered]
        # Series-wide values (e.g. the widths of 1-001.dcm) before any one file is rendered.
        context = self.layout.series_context(values)
        mine: dict[str, str] = {}
        moves: list[Move] = []
        with self._lock:
            for staged, own in zip(ordered, values, strict=True):
                header = staged.header or {}
                sop = header.get("SOPInstanceUID", staged.name)
                path = self.layout.render(own, context)
                candidate, attempt = path, 0
                while self._taken(candidate.as_posix(), sop, staged.size, staged.md5, mine):
                    attempt += 1
                    key = sop if attempt == 1 else f"{sop}#{attempt}"
                    candidate = path.parent / dedupe_name(path.name, key)
                rel = candidate.as_posix()
                mine[rel] = sop
                moves.append(
                    Move(staged.path, PlacedFile(rel, sop, staged.size, staged.md5, staged.sha256))
                )
            self._claimed.update(mine)
        return moves

    def release(self, moves: Sequence[Move]) -> None:
        """Drop the claims of ``moves`` (after commit, or when the series is abandoned)."""
        with self._lock:
            for move in moves:
                self._claimed.pop(move.placed.path, None)

    def commit(self, moves: Sequence[Move]) -> list[tuple[str, int]]:
        """Move every staged file into the tree; returns each folder touched with its mtime_ns
        afterwards (the ledger's proof that nothing changed there since).

        No file is ever replaced: a path that already holds exactly the planned bytes is left
        as it is, and a path holding another file (another shard placing into the same
        folders since :meth:`plan`) raises PlacementConflict with nothing of the series moved
        (what had moved is moved back to staging), so the caller plans again. Each move is a
        hard link and an unlink (or a copy across filesystems), so no reader, and no kill -9,
        ever leaves an empty or partial file in the tree. Raises OSError.
        """
        for move in moves:  # the common conflict, found before anything moves
            target = self.root / move.placed.path
            if os.path.lexists(target) and not _holds(target, move.placed):
                raise PlacementConflict(f"{move.placed.path} appeared in the tree since planning")
        made: set[PurePosixPath] = set()
        moved: list[Move] = []
        copied = False
        try:
            for move in moves:
                target = self.root / move.placed.path
                parent = PurePosixPath(move.placed.path).parent
                if parent not in made:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    made.add(parent)
                if self._fsync:
                    fsync_file(move.source)
                try:
                    copied |= move_into(move.source, target, self.landing, exclusive=True)
                except FileExistsError:
                    if _holds(target, move.placed):
                        continue
                    raise PlacementConflict(
                        f"{move.placed.path} appeared in the tree while the series was placed"
                    ) from None
                moved.append(move)
        except PlacementConflict:
            for move in reversed(moved):
                move_into(self.root / move.placed.path, move.source)
            prune_empty(self.root, {(self.root / m.placed.path).parent for m in moves})
            raise
        if self._fsync or copied:
            for parent in made:
                fsync_dir(self.root / parent)
        self.release(moves)
        folders = []
        for parent in made:
            folder = "" if str(parent) == "." else parent.as_posix()
            folders.append((folder, (self.root / parent).stat().st_mtime_ns))
        return folders

    def remove(self, placed: Sequence[PlacedFile]) -> None:
        """Delete files a crashed run had begun to place, and the folders they leave empty."""
        parents: set[Path] = set()
        for item in placed:
            target = self.root / (item.archive or item.path)  # a packed series: its archive
            target.unlink(missing_ok=True)
            parents.add(target.parent)
        prune_empty(self.root, parents)


def prune_empty(root: Path, folders: Iterable[Path]) -> None:
    """Remove each of ``folders`` (under ``root``) and its parents up to ``root`` while empty."""
    for folder in sorted(set(folders), key=lambda p: len(p.parts), reverse=True):
        _prune_empty(folder, root)


def _prune_empty(folder: Path, root: Path) -> None:
    while folder != root and root in folder.parents:
        try:
            folder.rmdir()
        except OSError:
            return
        folder = folder.parent


def _holds(target: Path, placed: PlacedFile) -> bool:
    """Whether ``target`` is a regular file with exactly ``placed``'s size and MD5."""
    try:
        if target.is_symlink() or not target.is_file() or target.stat().st_size != placed.size:
            return False
        return _md5_of(target) == placed.md5
    except OSError:
        return False
