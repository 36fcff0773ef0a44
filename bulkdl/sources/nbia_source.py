"""NbiaSource: the NBIA REST API behind the :class:`~bulkdl.sources.Source` seam.

Metadata comes from :class:`NbiaClient` (batched getSeriesMetadata for manifests, getSeries for
searches). A series' bytes come from getImage with ``IncludeMD5=Yes``: the ZIP body is spooled to
a file in the series' work folder, in 4 MiB batches written through aiofiles so the event loop
never blocks on the disk (one thread hop per 4 MiB, where aiofiles' per-call hop costs nothing
measurable), and then unpacked in one worker thread by :func:`unpack_zip`. Spooling rather than
inflating on the fly is a measured choice: see ``benchmarks/RESULTS.md``. Network and disk I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Final

import aiofiles
import anyio

from bulkdl.records import FetchedSeries, Series
from bulkdl.sources.nbia import SeriesQuery
from bulkdl.sources.nbia_client import NbiaClient
from bulkdl.unpack import unpack_zip

SPOOL_BATCH: Final = 4 << 20
# Slack over FileSize before an archive counts as a ZIP bomb: FileSize is exact for NBIA, but a
# series revised between resolve and fetch may legitimately grow a little.
BOMB_SLACK: Final = 64 << 20

Inspect = Callable[[Path], Mapping[str, str] | None]


def inflate_cap(series: Series) -> int | None:
    """The most inflated bytes accepted for ``series`` (None: unknown size, no cap)."""
    if series.FileSize is None:
        return None
    return series.FileSize + max(series.FileSize // 4, BOMB_SLACK)


class NbiaSource:
    """Series from one NBIA API: resolve, search and fetch."""

    name = "nbia"

    def __init__(
        self, client: NbiaClient, *, new_file_names: bool = False, cpu: anyio.CapacityLimiter
    ) -> None:
        self.client = client
        self.new_file_names = new_file_names
        self._cpu = cpu

    async def resolve(self, uids: Sequence[str]) -> tuple[list[Series], list[str]]:
        """Source protocol: records for ``uids`` in batches, and the UIDs NBIA does not know."""
        return await self.client.series_metadata(uids)

    async def search(self, query: SeriesQuery) -> list[Series]:
        """Source protocol: getSeries with ``query``'s filters."""
        return await self.client.series(query)

    async def fetch(
        self,
        series: Series,
        workdir: Path,
        *,
        inspect: Inspect,
        on_bytes: Callable[[int], None],
    ) -> FetchedSeries:
        """Download ``series`` into ``workdir`` and unpack it; ``workdir`` must be empty.

        Raises TransientError (retry the series), ArchiveError (the body was no usable ZIP:
        retry), UnknownSeriesError (fail it), or OSError when the disk refuses (abort the run).
        """
        spool = workdir / "series.zip"
        uid = series.SeriesInstanceUID
        async with (
            self.client.open_image(uid, new_file_names=self.new_file_names) as response,
            aiofiles.open(spool, "wb") as out,
        ):
            batch = bytearray()
            async for chunk in response.chunks():
                batch += chunk
                on_bytes(len(chunk))
                if len(batch) >= SPOOL_BATCH:
                    await out.write(batch)
                    batch.clear()
            await out.write(batch)
        try:
            return await anyio.to_thread.run_sync(
                lambda: unpack_zip(
                    spool,
                    workdir / "files",
                    series_uid=uid,
                    max_total=inflate_cap(series),
                    inspect=inspect,
                ),
                limiter=self._cpu,
            )
        finally:
            await anyio.to_thread.run_sync(lambda: spool.unlink(missing_ok=True))
