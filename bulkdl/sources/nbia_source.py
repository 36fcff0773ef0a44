"""NbiaSource: the NBIA REST API behind the :class:`~bulkdl.sources.Source` seam.

Metadata comes from :class:`NbiaClient` (batched getSeriesMetadata for manifests, getSeries for
searches). A series' bytes come from getImage with ``IncludeMD5=Yes``: the ZIP body is never
spooled; its pieces are gathered into ~4 MiB batches on the event loop (handed over as they
are, never joined into one copy) and each batch is handed, in order, to a
:class:`~bulkdl.unpack.StreamUnpacker` in a worker thread through the shared
:class:`~bulkdl.cpugate.CpuGate` (oldest series first), so inflating,
hashing and writing the members overlaps the download (of this series up to the
socket's buffers, of the other series fully). Streaming rather than spooling is a measured
choice: writing the ZIP to the page cache and reading it back was half of the client's system
time (see ``benchmarks/DECISIONS.md``). Network and disk I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Final

import anyio

from bulkdl.cpugate import CpuGate
from bulkdl.records import FetchedSeries, Series
from bulkdl.sources.nbia import SeriesQuery
from bulkdl.sources.nbia_client import NbiaClient
from bulkdl.unpack import StreamUnpacker

#: Bytes gathered on the event loop before one hop to a worker thread to unpack them. Fewer hops
#: cost the event loop and the GIL less: on the loopback benchmark 4 MiB beat 2 MiB (2.20 s
#: against 2.27 s), which beat 1 MiB (2.23 s against 2.37 s), each in 11 of 12 rounds, with the
#: peak RSS of 12 series at ``--concurrency 16`` 114 MB as with 2 MiB; 8 MiB was 3 % faster again
#: but took it to 164 MB, too close to the 200 MB bulkdl keeps to at any concurrency up to 16.
FEED_BATCH: Final = 4 << 20
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

    def __init__(self, client: NbiaClient, *, new_file_names: bool = False, cpu: CpuGate) -> None:
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
        """Download ``series`` and unpack it into ``workdir/files`` as it arrives; ``workdir``
        must be empty.

        Raises TransientError (retry the series), ArchiveError (the body was no usable ZIP:
        retry), UnknownSeriesError (fail it), or OSError when the disk refuses (abort the run).
        """
        uid = series.SeriesInstanceUID
        unpacker = StreamUnpacker(
            workdir / "files", series_uid=uid, max_total=inflate_cap(series), inspect=inspect
        )
        ticket = self._cpu.ticket()
        try:
            async with self.client.open_image(uid, new_file_names=self.new_file_names) as response:
                batch: list[bytes] = []
                size = 0
                async for chunk in response.chunks():
                    batch.append(chunk)
                    size += len(chunk)
                    on_bytes(len(chunk))
                    if size >= FEED_BATCH:
                        await self._cpu.run(ticket, unpacker.feed, *batch)
                        batch, size = [], 0
                if batch:
                    await self._cpu.run(ticket, unpacker.feed, *batch)
            return await self._cpu.run(ticket, unpacker.finish)
        except BaseException:
            # A transfer error, an ArchiveError or a cancellation: remove the partial files,
            # even while being cancelled (abort is quick: a few unlinks, no wait for the CpuGate).
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(unpacker.abort)
            raise
