"""Sources: where series metadata and series bytes come from, behind one seam.

The pipeline never talks HTTP or knows an archive's dialect: it asks a :class:`Source` to *resolve*
the series UIDs of a manifest into :class:`~bulkdl.records.Series` records (what to fetch, how many
images and bytes to expect, the context that names folders) and to *search* by collection, patient,
modality and the like. NBIA's REST API is the first source (:mod:`bulkdl.sources.nbia` pure
builders and parsers, :mod:`bulkdl.sources.nbia_client` the thin async layer,
:mod:`bulkdl.sources.http` the only module that imports aiohttp, :mod:`bulkdl.sources.nbia_source`
the seam's implementation; :mod:`bulkdl.sources.pooled` runs any source's fetches in worker
processes); DICOMweb servers and IDC's public buckets follow behind the same protocol. To *fetch* a
series, a source writes its files into a work folder it is given, in whatever transport it speaks
(NBIA's ZIP, DICOMweb's multipart, one object per instance), and returns a
:class:`~bulkdl.records.FetchedSeries`: the staged files with their MD5 and header, and what the
source declared of them. Verification, organizing and the ledger never see the transport. No I/O in
this module.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from bulkdl.records import FetchedSeries, Series
    from bulkdl.sources.nbia import SeriesQuery


class Source(Protocol):
    """Where series come from: resolve UIDs, search, and fetch one series' files."""

    name: str

    async def resolve(self, uids: Sequence[str]) -> tuple[list[Series], list[str]]:
        """(found, missing): records of the UIDs the source knows, and the UIDs it does not."""
        ...

    async def search(self, query: SeriesQuery) -> list[Series]:
        """The series matching ``query``'s filters."""
        ...

    async def fetch(
        self,
        series: Series,
        workdir: Path,
        *,
        inspect: Callable[[Path], Mapping[str, str] | None],
        on_bytes: Callable[[int], None],
    ) -> FetchedSeries:
        """Write ``series``' files under the empty ``workdir``; ``inspect`` reads a staged file's
        header (None: not DICOM); ``on_bytes`` is told of every received byte count.

        Raises TransientError or ArchiveError (worth another attempt), UnknownSeriesError or
        other RejectedError (fail the series), OSError from the disk (abort the run).
        """
        ...


__all__ = ["Source"]
