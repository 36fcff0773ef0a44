"""Sources: where series metadata and series bytes come from, behind one seam.

The pipeline never talks HTTP or knows an archive's dialect: it asks a :class:`Source` to
*resolve* the series UIDs of a manifest into :class:`~bulkdl.records.Series` records (what to
fetch, how many images and bytes to expect, the context that names folders) and to *search* by
collection, patient, modality and the like. NBIA's REST API is the first source
(:mod:`bulkdl.sources.nbia` pure builders and parsers, :mod:`bulkdl.sources.nbia_client` the thin
async layer, :mod:`bulkdl.sources.http` the only module that imports aiohttp); DICOMweb servers and
IDC's public buckets are meant to follow behind the same protocol. Only the metadata half is
defined here; the fetch half (open a series' bytes) joins when the download pipeline lands, so
the protocol stays open to grow. No I/O in this module.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from bulkdl.records import Series
    from bulkdl.sources.nbia import SeriesQuery


class Source(Protocol):
    """The metadata half every source can offer."""

    async def resolve(self, uids: Sequence[str]) -> tuple[list[Series], list[str]]:
        """(found, missing): records of the UIDs the source knows, and the UIDs it does not."""
        ...

    async def search(self, query: SeriesQuery) -> list[Series]:
        """The series matching ``query``'s filters."""
        ...


__all__ = ["Source"]
