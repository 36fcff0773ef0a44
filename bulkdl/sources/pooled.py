"""PooledSource: any source, its series fetched in worker processes (``--processes N``).

A wrapper behind the same :class:`~bulkdl.sources.Source` seam, so the pipeline knows nothing of
processes: resolving and searching stay with the wrapped source in this process, and each fetch
goes to a :class:`~bulkdl.fetchpool.FetchPool` worker, which fetches the series with a source
of its own into the work folder it is given. Verification, placing and the ledger stay here.
Network and disk I/O through the pool.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from bulkdl.fetchpool import FetchPool
from bulkdl.records import FetchedSeries, Series
from bulkdl.sources import Source
from bulkdl.sources.nbia import SeriesQuery


class PooledSource:
    """``inner`` for metadata, ``pool`` for the series' bytes."""

    def __init__(self, inner: Source, pool: FetchPool) -> None:
        self.inner = inner
        self.pool = pool
        self.name = inner.name

    async def resolve(self, uids: Sequence[str]) -> tuple[list[Series], list[str]]:
        """Source protocol: the inner source's answer."""
        return await self.inner.resolve(uids)

    async def search(self, query: SeriesQuery) -> list[Series]:
        """Source protocol: the inner source's matches."""
        return await self.inner.search(query)

    async def fetch(
        self,
        series: Series,
        workdir: Path,
        *,
        inspect: Callable[[Path], Mapping[str, str] | None],
        on_bytes: Callable[[int], None],
    ) -> FetchedSeries:
        """Source protocol: fetched by a worker process (see :meth:`FetchPool.fetch`)."""
        return await self.pool.fetch(series, workdir, inspect=inspect, on_bytes=on_bytes)
