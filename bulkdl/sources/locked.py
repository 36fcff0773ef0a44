"""LockedSource: any source, pinned by a lock file (``bulkdl download dataset.lock``).

A wrapper behind the same :class:`~bulkdl.sources.Source` seam, so the pipeline knows nothing of
locks. Resolving compares the archive's ImageCount and FileSize with the lock's; a series that
changed is reported with the lock's counts (so a copy already in the tree, which the lock vouches
for, is kept rather than refetched) and fails when fetched, before any byte is asked for. A
fetched series that passed the archive's own checks (MD5s, counts) is then compared with the
lock instance by instance; a difference is a :class:`~bulkdl.lockfile.LockMismatchError`, which
fails the series without a retry. Network and disk I/O through the wrapped source.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from bulkdl.lockdiff import compare_series, count_changes
from bulkdl.lockfile import Lock, LockedInstance, LockMismatchError
from bulkdl.records import FetchedSeries, Series
from bulkdl.sources import Source
from bulkdl.sources.nbia import SeriesQuery
from bulkdl.verify import verify_series

log = logging.getLogger(__name__)


class LockedSource:
    """``inner``, with its series pinned by ``lock`` (see the module docstring)."""

    def __init__(self, inner: Source, lock: Lock) -> None:
        self.inner = inner
        self.lock = lock
        self.name = inner.name
        self._changed: dict[str, str] = {}

    def _pin(self, series: Series) -> Series:
        uid = series.SeriesInstanceUID
        locked = self.lock.get(uid)
        changes = count_changes(locked, series) if locked is not None else []
        if locked is None or not changes:
            return series
        reason = "changed on the server since the lock: " + "; ".join(changes)
        self._changed[uid] = reason
        log.warning("series %s %s", uid, reason)
        return replace(
            series,
            ImageCount=locked.ImageCount if locked.ImageCount is not None else series.ImageCount,
            FileSize=locked.FileSize if locked.FileSize is not None else series.FileSize,
        )

    async def resolve(self, uids: Sequence[str]) -> tuple[list[Series], list[str]]:
        """Source protocol: the inner source's records, pinned to the lock's counts."""
        found, missing = await self.inner.resolve(uids)
        return [self._pin(s) for s in found], missing

    async def search(self, query: SeriesQuery) -> list[Series]:
        """Source protocol: the inner source's records, pinned to the lock's counts."""
        return [self._pin(s) for s in await self.inner.search(query)]

    async def fetch(
        self,
        series: Series,
        workdir: Path,
        *,
        inspect: Callable[[Path], Mapping[str, str] | None],
        on_bytes: Callable[[int], None],
    ) -> FetchedSeries:
        """Source protocol; also raises LockMismatchError when the series is not as locked."""
        uid = series.SeriesInstanceUID
        if uid in self._changed:
            raise LockMismatchError(self._changed[uid])
        fetched = await self.inner.fetch(series, workdir, inspect=inspect, on_bytes=on_bytes)
        locked = self.lock.get(uid)
        # A transfer error also changes bytes: the archive's own checks judge (and retry) first.
        if locked is None or not verify_series(series, fetched).ok:
            return fetched
        actual = [
            LockedInstance(f.header["SOPInstanceUID"], f.size, f.md5, f.sha256)
            for f in fetched.files
            if f.header is not None and "SOPInstanceUID" in f.header
        ]
        problems = compare_series(locked, actual)
        if problems:
            reason = "changed on the server since the lock: " + "; ".join(problems)
            log.error("series %s %s", uid, reason)
            raise LockMismatchError(reason)
        return fetched
