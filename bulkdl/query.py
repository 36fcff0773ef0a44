"""``bulkdl query``: what a listing needs from the archive, and which filters it can honour.

Each listing (series, collections, modalities, body parts, manufacturers, patients, studies) maps
onto one NBIA endpoint; a filter that endpoint cannot take is refused up front with a clear
message rather than silently dropped. ``--updated-since`` uses getUpdatedSeries, which takes no
other filter, so the remaining filters are applied here with NBIA's own rule (exact,
case-insensitive). Network I/O only through the client it is given.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import date
from enum import StrEnum

from bulkdl.errors import InputError
from bulkdl.records import Series
from bulkdl.sources.nbia import SeriesQuery
from bulkdl.sources.nbia_client import NbiaClient


class Listing(StrEnum):
    """What ``bulkdl query`` lists."""

    SERIES = "series"
    COLLECTIONS = "collections"
    MODALITIES = "modalities"
    BODY_PARTS = "body-parts"
    MANUFACTURERS = "manufacturers"
    PATIENTS = "patients"
    STUDIES = "studies"


#: The SeriesQuery filters each listing's endpoint can take.
ACCEPTED: dict[Listing, frozenset[str]] = {
    Listing.SERIES: frozenset(f.name for f in fields(SeriesQuery)),
    Listing.COLLECTIONS: frozenset(),
    Listing.MODALITIES: frozenset({"collection", "body_part"}),
    Listing.BODY_PARTS: frozenset({"collection", "modality"}),
    Listing.MANUFACTURERS: frozenset({"collection", "modality", "body_part"}),
    Listing.PATIENTS: frozenset({"collection", "patient_id"}),
    Listing.STUDIES: frozenset({"collection", "patient_id", "study_uid"}),
}

_FLAG = {
    "collection": "--collection",
    "patient_id": "--patient-id",
    "study_uid": "--study-uid",
    "series_uid": "--series-uid",
    "modality": "--modality",
    "body_part": "--body-part",
    "manufacturer": "--manufacturer",
    "manufacturer_model": "--manufacturer-model",
}

# SeriesQuery filter -> the Series field it matches.
_SERIES_FIELD = {
    "collection": "Collection",
    "patient_id": "PatientID",
    "study_uid": "StudyInstanceUID",
    "series_uid": "SeriesInstanceUID",
    "modality": "Modality",
    "body_part": "BodyPartExamined",
    "manufacturer": "Manufacturer",
    "manufacturer_model": "ManufacturerModelName",
}


@dataclass(frozen=True, slots=True)
class QueryRequest:
    """One ``bulkdl query`` invocation: the listing, its filters, and an optional since-date."""

    listing: Listing
    filters: SeriesQuery
    updated_since: date | None = None

    def check(self) -> None:
        """Raise InputError naming any filter the listing's endpoint cannot honour."""
        given = {f.name for f in fields(self.filters) if getattr(self.filters, f.name)}
        refused = sorted(given - ACCEPTED[self.listing])
        if refused:
            flags = ", ".join(_FLAG[name] for name in refused)
            raise InputError(f"'query {self.listing}' cannot filter by {flags}")
        if self.updated_since is not None and self.listing is not Listing.SERIES:
            raise InputError(f"--updated-since applies to series, not to {self.listing}")
        if self.listing is Listing.STUDIES and not self.filters.collection:
            raise InputError("'query studies' needs --collection (NBIA requires it)")


def matches(series: Series, filters: SeriesQuery) -> bool:
    """NBIA's filter rule applied locally: every given filter equals the field, ignoring case."""
    for name, field in _SERIES_FIELD.items():
        wanted = getattr(filters, name)
        if wanted and (getattr(series, field) or "").casefold() != wanted.casefold():
            return False
    return True


async def run_query(client: NbiaClient, request: QueryRequest) -> Sequence[object]:
    """The records (or plain values for value listings) that ``request`` asks for.

    Raises InputError for filters the listing cannot take, and the client's SourceErrors.
    """
    request.check()
    f = request.filters
    match request.listing:
        case Listing.SERIES if request.updated_since is not None:
            rows = await client.updated_series(request.updated_since)
            return [s for s in rows if matches(s, f)]
        case Listing.SERIES:
            return await client.series(f)
        case Listing.COLLECTIONS:
            return await client.collections()
        case Listing.MODALITIES:
            return await client.modalities(collection=f.collection, body_part=f.body_part)
        case Listing.BODY_PARTS:
            return await client.body_parts(collection=f.collection, modality=f.modality)
        case Listing.MANUFACTURERS:
            return await client.manufacturers(
                collection=f.collection, modality=f.modality, body_part=f.body_part
            )
        case Listing.PATIENTS:
            return await client.patients(collection=f.collection, patient_id=f.patient_id)
        case Listing.STUDIES:
            assert f.collection is not None
            return await client.patient_studies(
                f.collection, patient_id=f.patient_id, study_uid=f.study_uid
            )
