"""Answers to NBIA's query endpoints over a :class:`FakeArchive`, as lists of rows.

Filters match exactly and case-insensitively, as NBIA's do; dates (``fromDate``) are MM-DD-YYYY.
Each function returns rows with nulls already absent; the caller renders them. Raises
:class:`QueryError` (the caller answers 400) for a bad date. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import date

from bulkdl.testing.archive import FakeArchive, Row, SeriesData
from bulkdl.testing.endpoints import METADATA_COLUMNS, SERIES_FILTERS


class QueryError(ValueError):
    """The request's values cannot be used (e.g. a malformed date): answer 400 with the text."""


def parse_mdy(text: str) -> date:
    """A ``MM-DD-YYYY`` date. Raises QueryError when it is not one."""
    try:
        month, day, year = (int(p) for p in text.split("-"))
        if len(text) != 10:
            raise ValueError(text)
        return date(year, month, day)
    except ValueError as exc:
        raise QueryError(f"Invalid date format: '{text}'. Expected MM-DD-YYYY") from exc


def _same(value: object, wanted: str) -> bool:
    return value is not None and str(value).casefold() == wanted.casefold()


def _matches(row: Mapping[str, object], filters: Mapping[str, str]) -> bool:
    return all(_same(row.get(col), want) for col, want in filters.items())


def _distinct(rows: Iterable[Row], column: str) -> list[Row]:
    seen: dict[str, None] = {}
    for row in rows:
        value = row.get(column)
        if value is not None:
            seen.setdefault(str(value), None)
    return [{column: v} for v in seen]


class Queries:
    """Row selection over one archive, with the indexes the endpoints need."""

    def __init__(self, archive: FakeArchive) -> None:
        self.archive = archive
        self._studies = {str(s["StudyInstanceUID"]): s for s in archive.studies}
        self._patients = {(str(p["Collection"]), str(p["PatientId"])): p for p in archive.patients}
        self._submitted = [parse_mdy(str(s.row["MaxSubmissionTimestamp"])) for s in archive.series]
        self._context: dict[str, dict[str, object]] = {}

    def values(self, column: str, filters: Mapping[str, str]) -> list[Row]:
        """The getXxxValues rows: distinct ``column`` values of the matching series."""
        return _distinct((s.row for s in self.archive.series if _matches(s.row, filters)), column)

    def patients(self, filters: Mapping[str, str], since: date | None = None) -> list[Row]:
        """getPatient / NewPatientsInCollection rows (``PatientId`` spelling)."""
        wanted = {"PatientId" if k == "PatientID" else k: v for k, v in filters.items()}
        rows = [p for p in self.archive.patients if _matches(p, wanted)]
        if since is not None:
            recent = {
                (s.collection, s.patient_id)
                for s, when in zip(self.archive.series, self._submitted, strict=True)
                if when >= since
            }
            rows = [p for p in rows if (p["Collection"], p["PatientId"]) in recent]
        return rows

    def patients_by_modality(self, collection: str, modality: str) -> list[Row]:
        """getPatientByCollectionAndModality rows."""
        seen: dict[str, None] = {}
        for s in self.archive.series:
            if _matches(s.row, {"Collection": collection, "Modality": modality}):
                seen.setdefault(s.patient_id, None)
        return [{"PatientId": pid, "Authorized": 1} for pid in seen]

    def studies(self, filters: Mapping[str, str], since: date | None = None) -> list[Row]:
        """getPatientStudy / NewStudiesInPatientCollection rows."""
        rows = [s for s in self.archive.studies if _matches(s, filters)]
        if since is not None:
            recent = {
                s.study_uid
                for s, when in zip(self.archive.series, self._submitted, strict=True)
                if when >= since
            }
            rows = [s for s in rows if s["StudyInstanceUID"] in recent]
        return rows

    def series(self, filters: Mapping[str, str]) -> list[Row]:
        """getSeries rows; only the series filters apply."""
        wanted = {k: v for k, v in filters.items() if k in SERIES_FILTERS}
        return [s.row for s in self.archive.series if _matches(s.row, wanted)]

    def updated_series(self, since: date) -> list[Row]:
        """getUpdatedSeries rows: series submitted on or after ``since``."""
        return [
            s.row
            for s, when in zip(self.archive.series, self._submitted, strict=True)
            if when >= since
        ]

    def series_size(self, series: SeriesData) -> list[Row]:
        """getSeriesSize's row; TotalSizeInBytes comes as a decimal string, as NBIA sends it."""
        return [
            {
                "TotalSizeInBytes": f"{float(series.row['FileSize'])!r}",
                "ObjectCount": int(series.row["ImageCount"]),
            }
        ]

    def metadata(self, uids: Iterable[str]) -> list[Row]:
        """getSeriesMetadata rows: patient, study and series columns of each known series."""
        rows: list[Row] = []
        for uid in uids:
            series = self.archive.lookup(uid)
            if series is None:
                continue
            merged = {**self._study_context(series), **series.row, **_IMAGE_COLUMNS}
            rows.append(
                {c: v for c in METADATA_COLUMNS if isinstance(v := merged.get(c), str | int)}
            )
        return rows

    def _study_context(self, series: SeriesData) -> dict[str, object]:
        """The patient and study columns of ``series``' metadata rows, made once per study (a
        200,000-series archive is asked for every series in turn)."""
        context = self._context.get(series.study_uid)
        if context is None:
            patient = self._patients.get((series.collection, series.patient_id), {})
            study = self._studies.get(series.study_uid, {})
            context = self._context[series.study_uid] = {
                **{("PatientID" if k == "PatientId" else k): v for k, v in patient.items()},
                **{("StudyDesc" if k == "StudyDescription" else k): v for k, v in study.items()},
            }
        return context


_IMAGE_COLUMNS: dict[str, object] = {
    "PixelSpacing(mm)-Row": "0.976562",
    "SliceThickness(mm)": "2.500000",
}
