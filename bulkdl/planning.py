"""The plan step: which resolved series to fetch, after reconciling the ledger with the tree.

A series the ledger calls done is skipped unless the archive revised it since (its ImageCount or
FileSize changed: its files are removed and it is fetched again) or files of it are gone from the
tree (found by one stat per folder: a folder whose mtime is what bulkdl recorded when it last
placed files there has lost none). A series a crashed run was still placing is taken back first.
Every other series is fetched. Reads the tree; changes the ledger and removes stale files.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Protocol, TypeVar

import anyio

from bulkdl.ledger import Ledger, SeriesState
from bulkdl.pack import gone_members
from bulkdl.place import Placer
from bulkdl.records import Series

log = logging.getLogger(__name__)

T = TypeVar("T")


class LedgerRunner(Protocol):
    """Runs a ledger call in the ledger's own worker thread."""

    def __call__(self, call: Callable[[], T], /) -> Awaitable[T]: ...


def missing_files(ledger: Ledger, out: Path, done: Sequence[str]) -> dict[str, int]:
    """Done series with files no longer in the tree: uid -> how many are missing.

    A folder whose mtime is what it was right after bulkdl last placed files in it has lost
    none (a deletion or rename changes its mtime), so only changed folders are listed: a re-run
    over millions of untouched files costs one stat per folder.
    """
    wanted = set(done)
    gone: list[str] = []
    root = str(out)
    for folder, mtime_ns in ledger.folders().items():
        path = os.path.join(root, folder)  # strings: a Path per folder costs more than its stat
        try:
            if os.stat(path).st_mtime_ns == mtime_ns:
                continue
            names = {entry.name for entry in os.scandir(path)}
        except OSError:
            names = set()
        gone += [
            f.path for f in ledger.files_under(folder) if f.path.rsplit("/", 1)[-1] not in names
        ]
        gone += gone_members(ledger.archives_under(folder), names)  # --pack: archives gone
    missing: dict[str, int] = {}
    for uid in ledger.owners(gone).values():
        if uid in wanted:
            missing[uid] = missing.get(uid, 0) + 1
    return missing


async def plan(
    found: Sequence[Series],
    *,
    ledger: Ledger,
    placer: Placer,
    out: Path,
    accept_incomplete: bool,
    db: LedgerRunner,
) -> tuple[list[Series], list[Series]]:
    """(to fetch, already done) after reconciling the ledger with the tree and the server;
    ``db`` runs each ledger call in the ledger's worker thread.

    The ledger's states are read once: resolving changes no state, so what this plan sends
    back to pending is all that differs afterwards. Raises OSError (the tree cannot be read or
    changed) and the ledger's errors.
    """
    uids = [s.SeriesInstanceUID for s in found]
    before = await db(lambda: ledger.states(uids, records=False))
    reset: set[str] = set()
    for series in found:
        state = before.get(series.SeriesInstanceUID)
        if state is None:
            continue
        if state.state == "placing":
            # A run died while moving this series in: take back what it had placed.
            reset.add(state.uid)
            abandoned = await db(partial(ledger.abandon_placing, state.uid))
            await anyio.to_thread.run_sync(placer.remove, abandoned)
        elif state.state in ("done", "incomplete") and _revised(state, series):
            reset.add(state.uid)
            log.warning(
                "series %s changed on the server (ImageCount %s -> %s, FileSize %s -> %s): "
                "fetching it again",
                state.uid, state.expected_images, series.ImageCount,
                state.expected_bytes, series.FileSize,
            )  # fmt: skip
            stale = await db(partial(ledger.files, state.uid))
            await anyio.to_thread.run_sync(placer.remove, stale)
            await db(partial(ledger.mark_missing, state.uid, "revised on the server"))
    await db(partial(ledger.upsert_resolved, found))
    finished = [
        uid
        for uid, st in before.items()
        if (st.state == "done" or (st.state == "incomplete" and accept_incomplete))
        and uid not in reset
    ]
    gone = await db(lambda: missing_files(ledger, out, finished))
    for uid, count in gone.items():
        log.warning("%d file(s) of series %s are gone from the tree: fetching it again", count, uid)
        await db(partial(ledger.mark_missing, uid, f"{count} file(s) deleted from tree"))
    done_now = set(finished) - set(gone)
    to_fetch = [s for s in found if s.SeriesInstanceUID not in done_now]
    done = [s for s in found if s.SeriesInstanceUID in done_now]
    return to_fetch, done


def _revised(state: SeriesState, series: Series) -> bool:
    def changed(old: int | None, new: int | None) -> bool:
        return old is not None and new is not None and old != new

    return changed(state.expected_images, series.ImageCount) or changed(
        state.expected_bytes, series.FileSize
    )
