"""ShardedSource: any source, narrowed to the series of one shard (``--shard K/N``).

A wrapper behind the same :class:`~bulkdl.sources.Source` seam, so the pipeline's planning never
hears of shards: resolving asks the inner source for the shard's own UIDs only (the others are
neither resolved nor reported missing), and a search keeps the shard's series of the results.
Each task of a job array then plans, fetches, retries and reports exactly its part of the
selection. Which series are a shard's is :mod:`bulkdl.shard`'s pure partition. Network and disk
I/O through the wrapped source.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from bulkdl.records import FetchedSeries, Series
from bulkdl.shard import Shard
from bulkdl.sources import Source
from bulkdl.sources.nbia import SeriesQuery


def _uid_of(series: Series) -> str:
    return series.SeriesInstanceUID


class ShardedSource:
    """``inner``, seeing only the series ``shard`` owns."""

    def __init__(self, inner: Source, shard: Shard) -> None:
        self.inner = inner
        self.shard = shard
        self.name = inner.name

    async def resolve(self, uids: Sequence[str]) -> tuple[list[Series], list[str]]:
        """Source protocol: the inner source's answer for this shard's UIDs alone."""
        return await self.inner.resolve(self.shard.pick(uids, str))

    async def search(self, query: SeriesQuery) -> list[Series]:
        """Source protocol: the inner source's matches that are this shard's."""
        return self.shard.pick(await self.inner.search(query), _uid_of)

    async def fetch(
        self,
        series: Series,
        workdir: Path,
        *,
        inspect: Callable[[Path], Mapping[str, str] | None],
        on_bytes: Callable[[int], None],
    ) -> FetchedSeries:
        """Source protocol: the inner source's fetch, unchanged."""
        return await self.inner.fetch(series, workdir, inspect=inspect, on_bytes=on_bytes)
