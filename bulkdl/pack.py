"""``--pack zip|tar``: each verified series enters the tree as one archive file, not a file per
instance (parallel filesystems handle a few large files far better than millions of small ones).

The layout still decides everything: a series whose files the layout puts at
``P/S/SERIES/1.2.3.dcm`` becomes the archive ``P/S/SERIES.zip`` (or ``.tar``) with the member
``1.2.3.dcm``, written by :func:`bulkdl.archive.write_archive` (deterministic: the same series
gives the same bytes) in the staging area, then moved in as one file
(:func:`bulkdl.move.move_into`: a rename, or a copy, fsync and rename from another filesystem).
The ledger keeps one row per instance: its ``path`` is ``<archive>/<member name>`` and its
``archive`` column names the archive, so the row says without guessing that the file lives
inside one. An archive path already used (by another series' archive, a recorded or foreign
file, a folder) gets a deterministic ``~hash`` of the series UID before its suffix; a foreign
file holding exactly the same bytes is replaced, so a tree whose ledger was lost converges.
Blocking file I/O: call from a worker thread.
"""

from __future__ import annotations

import filecmp
import itertools
import os
import stat
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Literal

from bulkdl.archive import Kind, write_archive
from bulkdl.errors import InputError, PlacementConflict
from bulkdl.layout import Layout, dedupe_name
from bulkdl.move import fsync_dir, fsync_file, move_into
from bulkdl.place import Move, OwnerOf
from bulkdl.records import PlacedFile
from bulkdl.sanitize import MAX_COMPONENT_BYTES

ArchiveOwner = Callable[[str], str | None]
_names = itertools.count()


@dataclass(frozen=True, slots=True)
class Packed:
    """One archive of a series: written at ``temporary`` (staging), going to tree ``path``;
    ``replaces`` when a file there is to be replaced (this series' own, or the same bytes)."""

    path: str
    temporary: Path
    members: tuple[PlacedFile, ...]
    replaces: bool = False


def check_layout(layout: Layout) -> None:
    """Raise InputError when ``layout`` puts files at the tree's top (no folder to name an
    archive after)."""
    if len(layout.render({}).parts) < 2:
        raise InputError(
            f"--pack needs a layout that puts each series in a folder (the archive is named "
            f"after it); {layout.template!r} puts files at the top of the tree"
        )


def archive_name(folder: str, kind: Kind) -> str:
    """The archive file name for a series folder named ``folder``: ``folder.zip``, cut with a
    ``~hash`` mark when that would pass 255 bytes."""
    name = f"{folder}.{kind}"
    if len(name.encode("utf-8", "surrogateescape")) > MAX_COMPONENT_BYTES:
        name = dedupe_name(name, folder)
    return name


def gone_members(archives: Mapping[str, Sequence[str]], names: set[str]) -> list[str]:
    """The member paths of those ``archives`` (archive path -> member paths, all in one folder)
    whose file name is not among ``names``, the folder's entries: their archive is gone."""
    return [
        member
        for archive, members in archives.items()
        if archive.rsplit("/", 1)[-1] not in names
        for member in members
    ]


class Packer:
    """Packs verified series into archives and moves them into ``root``; safe across threads."""

    def __init__(
        self,
        root: Path,
        kind: Kind,
        owner_of: OwnerOf,
        archive_owner: ArchiveOwner,
        *,
        fsync: bool = False,
        landing: Path | None = None,
    ) -> None:
        self.root = root
        self.kind: Kind = kind
        self._owner_of = owner_of
        self._archive_owner = archive_owner
        self._fsync = fsync
        self.landing = landing
        self._lock = threading.Lock()
        self._claimed: dict[str, str] = {}  # archive path -> series UID, series in flight

    def prepare(self, uid: str, moves: Sequence[Move], scratch: Path) -> list[Packed]:
        """Write series ``uid``'s planned files (``moves``, from :meth:`Placer.plan`) as one
        archive per folder under ``scratch``, and choose and claim each archive's tree path
        until :meth:`release`. Raises OSError (nothing left in ``scratch``)."""
        groups: dict[PurePosixPath, list[Move]] = {}
        for move in moves:
            groups.setdefault(PurePosixPath(move.placed.path).parent, []).append(move)
        packed: list[Packed] = []
        temporary: Path | None = None
        try:
            for folder, group in sorted(groups.items()):
                temporary = scratch / f"pack-{os.getpid()}-{next(_names)}.{self.kind}"
                members = [(PurePosixPath(m.placed.path).name, m.source) for m in group]
                write_archive(self.kind, members, temporary)
                if self._fsync:
                    fsync_file(temporary)
                path, replaces = self._claim(uid, folder, temporary)
                placed = tuple(
                    replace(m.placed, path=f"{path}/{name}", archive=path)
                    for m, (name, _) in zip(group, members, strict=True)
                )
                packed.append(Packed(path, temporary, placed, replaces))
        except BaseException:
            self.release(packed)
            if temporary is not None:
                temporary.unlink(missing_ok=True)
            raise
        return packed

    def _claim(self, uid: str, folder: PurePosixPath, temporary: Path) -> tuple[str, bool]:
        """The tree path for an archive of series ``uid`` in ``folder``, and whether a file
        there is to be replaced; claimed until :meth:`release`."""
        name = archive_name(folder.name, self.kind)
        with self._lock:
            for attempt in itertools.count():
                key = uid if attempt <= 1 else f"{uid}#{attempt}"
                chosen = dedupe_name(name, key) if attempt else name
                candidate = (folder.parent / chosen).as_posix()
                verdict = self._verdict(candidate, uid, temporary)
                if verdict != "taken":
                    self._claimed[candidate] = uid
                    return candidate, verdict == "replace"
        raise AssertionError("unreachable")  # pragma: no cover

    def _verdict(self, path: str, uid: str, temporary: Path) -> Literal["free", "replace", "taken"]:
        claimed = self._claimed.get(path)
        if claimed is not None and claimed != uid:
            return "taken"
        if self._owner_of(path) is not None:
            return "taken"  # a recorded file of its own
        owner = self._archive_owner(path)
        if owner is not None and owner != uid:
            return "taken"
        try:
            st = os.lstat(self.root / path)
        except (FileNotFoundError, NotADirectoryError):
            return "free"
        if owner == uid and stat.S_ISREG(st.st_mode):
            return "replace"  # this series' archive, placed before (the series was revised)
        # A foreign entry: kept, unless it is a file holding exactly these bytes.
        if not stat.S_ISREG(st.st_mode) or st.st_size != temporary.stat().st_size:
            return "taken"
        same = filecmp.cmp(self.root / path, temporary, shallow=False)
        return "replace" if same else "taken"

    def release(self, packed: Sequence[Packed]) -> None:
        """Drop the claims of ``packed`` and remove any archive still in staging."""
        with self._lock:
            for item in packed:
                self._claimed.pop(item.path, None)
        for item in packed:
            item.temporary.unlink(missing_ok=True)

    def commit(self, packed: Sequence[Packed]) -> list[tuple[str, int]]:
        """Move each archive into the tree; returns each folder touched with its mtime_ns
        afterwards, as :meth:`Placer.commit` does. An archive never replaces a file another
        writer (a shard) put at its path since planning: PlacementConflict then, with nothing
        of the series left in the tree. Raises OSError."""
        made: set[PurePosixPath] = set()
        copied = False
        moved: list[Path] = []
        for item in packed:
            target = self.root / item.path
            parent = PurePosixPath(item.path).parent
            if parent not in made:
                target.parent.mkdir(parents=True, exist_ok=True)
                made.add(parent)
            try:
                copied |= move_into(
                    item.temporary, target, self.landing, exclusive=not item.replaces
                )
            except FileExistsError:
                for path in moved:
                    path.unlink(missing_ok=True)
                raise PlacementConflict(
                    f"{item.path} appeared in the tree while the series was being placed"
                ) from None
            moved.append(target)
        if self._fsync or copied:
            for parent in made:
                fsync_dir(self.root / parent)
        self.release(packed)
        return [
            ("" if str(p) == "." else p.as_posix(), (self.root / p).stat().st_mtime_ns)
            for p in made
        ]
