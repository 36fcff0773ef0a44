"""Typed records for what an archive knows about patients, studies and series, and UID checks.

Field names are DICOM keywords (``PatientID``, ``SeriesInstanceUID``, ``SeriesDescription``...) so
the whole program, layout templates included, speaks one vocabulary; where DICOM has no keyword the
field keeps TCIA's name (``Collection``, ``ImageCount``, ``FileSize``...). ``VOCABULARY`` maps
TCIA's column names (v1, v2 and v4 spellings) and the seed names of the project's design
(``images_in_series``...) onto those keywords, with the DICOM tag where there is one. Values a
server sends that have no field are kept in ``extra`` so nothing is lost. Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from bulkdl.errors import InputError

_UID_RE = re.compile(r"[0-9]+(?:\.[0-9]+)*")
UID_MAX_LEN = 64


def is_uid(text: str) -> bool:
    """True when ``text`` looks like a DICOM UID: digits and dots, at most 64 characters."""
    return len(text) <= UID_MAX_LEN and _UID_RE.fullmatch(text) is not None


def check_uid(text: str, what: str = "UID") -> str:
    """Return ``text`` stripped if it is a UID; raise :class:`InputError` naming it otherwise."""
    uid = text.strip()
    if not is_uid(uid):
        raise InputError(f"not a valid {what}: {text!r} (expected digits and dots, at most 64)")
    return uid


@dataclass(frozen=True, slots=True)
class Term:
    """One word of the vocabulary: the keyword bulkdl uses, its DICOM tag, and its other names."""

    keyword: str
    tag: str | None
    aliases: tuple[str, ...] = ()
    seed: str | None = None


VOCABULARY: tuple[Term, ...] = (
    Term("PatientID", "0010,0020", ("PatientId", "Subject ID"), "patient_id"),
    Term("PatientName", "0010,0010"),
    Term("PatientSex", "0010,0040"),
    Term("PatientAge", "0010,1010"),
    Term("EthnicGroup", "0010,2160"),
    Term("StudyInstanceUID", "0020,000D", ("Study UID",), "study_instance_uid"),
    Term("StudyDate", "0008,0020", ("Study Date",)),
    Term("StudyDescription", "0008,1030", ("StudyDesc", "Study Description")),
    Term("StudyID", "0020,0010"),
    Term(
        "AdmittingDiagnosesDescription",
        "0008,1080",
        ("AdmittingDiagnosisDescription",),
    ),
    Term("LongitudinalTemporalEventType", "0012,0053"),
    Term("LongitudinalTemporalOffsetFromEvent", "0012,0052"),
    Term("SeriesInstanceUID", "0020,000E", ("Series UID", "SeriesUID"), "series_instance_uid"),
    Term("SeriesDate", "0008,0021"),
    Term("Modality", "0008,0060", (), "modality"),
    Term("ProtocolName", "0018,1030", (), "protocol_name"),
    Term("SeriesDescription", "0008,103E", ("Series Description",), "series_desc"),
    Term("BodyPartExamined", "0018,0015", (), "body_part_examined"),
    Term("SeriesNumber", "0020,0011", (), "series_number"),
    Term("Manufacturer", "0008,0070", (), "manufacturer"),
    Term("ManufacturerModelName", "0008,1090", (), "manufacturer_model_name"),
    Term("SoftwareVersions", "0018,1020", (), "software_versions"),
    Term("Collection", None, (), "collection"),
    Term("Site", None),
    Term("AnnotationsFlag", None, (), "annotations_flag"),
    Term("ImageCount", None, ("Number of Images", "ObjectCount", "imageCount"), "images_in_series"),
    Term("FileSize", None, ("File Size", "TotalSizeInBytes", "seriesSize")),
    Term("MaxSubmissionTimestamp", None, ("TimeStamp",)),
    Term("LicenseName", None),
    Term("LicenseURI", None),
    Term("DataDescriptionURI", None, ("CollectionURI", "Data Description URI")),
    Term("ReleasedStatus", None),
    Term("DateReleased", None),
    Term("ThirdPartyAnalysis", None, ("3rd Party Analysis",)),
    Term("Authorized", None),
    Term("Phantom", None),
    Term("SpeciesCode", None),
    Term("SpeciesDescription", None),
    Term("SeriesCount", None),
)

#: Every known spelling (keyword, TCIA alias, seed name) -> the keyword bulkdl uses.
KEYWORD_OF: dict[str, str] = {
    name: term.keyword
    for term in VOCABULARY
    for name in (term.keyword, *term.aliases, *((term.seed,) if term.seed else ()))
}


@dataclass(frozen=True, slots=True)
class Patient:
    """A patient (TCIA "subject") row."""

    PatientID: str
    Collection: str | None = None
    PatientName: str | None = None
    PatientSex: str | None = None
    EthnicGroup: str | None = None
    Phantom: str | None = None
    SpeciesCode: str | None = None
    SpeciesDescription: str | None = None
    extra: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Study:
    """A study row, with the patient context the archive sends alongside it."""

    StudyInstanceUID: str
    PatientID: str | None = None
    Collection: str | None = None
    StudyDate: date | None = None
    StudyDescription: str | None = None
    StudyID: str | None = None
    AdmittingDiagnosesDescription: str | None = None
    PatientAge: str | None = None
    PatientName: str | None = None
    PatientSex: str | None = None
    EthnicGroup: str | None = None
    SeriesCount: int | None = None
    LongitudinalTemporalEventType: str | None = None
    LongitudinalTemporalOffsetFromEvent: str | None = None
    extra: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Series:
    """A series row: what to fetch, what to expect (``ImageCount``, ``FileSize``), and its context.

    ``ImageCount`` is the archive's live count of the series' images (``images_in_series``) and
    ``FileSize`` the exact sum of the uncompressed file sizes; either may be unknown (None).
    """

    SeriesInstanceUID: str
    StudyInstanceUID: str | None = None
    PatientID: str | None = None
    Collection: str | None = None
    Modality: str | None = None
    ProtocolName: str | None = None
    SeriesDate: date | None = None
    SeriesDescription: str | None = None
    BodyPartExamined: str | None = None
    SeriesNumber: int | None = None
    AnnotationsFlag: str | None = None
    Site: str | None = None
    Manufacturer: str | None = None
    ManufacturerModelName: str | None = None
    SoftwareVersions: str | None = None
    ImageCount: int | None = None
    FileSize: int | None = None
    MaxSubmissionTimestamp: date | None = None
    LicenseName: str | None = None
    LicenseURI: str | None = None
    DataDescriptionURI: str | None = None
    ReleasedStatus: str | None = None
    DateReleased: date | None = None
    ThirdPartyAnalysis: str | None = None
    PatientName: str | None = None
    PatientSex: str | None = None
    PatientAge: str | None = None
    EthnicGroup: str | None = None
    StudyDate: date | None = None
    StudyDescription: str | None = None
    StudyID: str | None = None
    AdmittingDiagnosesDescription: str | None = None
    extra: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class SeriesSize:
    """What getSeriesSize says of one series."""

    SeriesInstanceUID: str
    ImageCount: int | None
    FileSize: int | None


@dataclass(frozen=True, slots=True)
class StagedFile:
    """One file of a fetched series, waiting in the staging area under ``DIR/.bulkdl/``.

    ``name`` is what the source called it (a ZIP member name such as ``00000001.dcm``); it is
    only ever compared and reported, never used as a path. ``md5`` and ``sha256`` (for lock
    files) were computed while the file was written; ``header`` holds the DICOM keywords read
    from it (string values), or None when the file is not DICOM.
    """

    name: str
    path: Path
    size: int
    md5: str
    sha256: str
    header: Mapping[str, str] | None


@dataclass(frozen=True, slots=True)
class FetchedSeries:
    """What a source delivered for one series: its files, and what the source declared of them.

    ``declared_md5`` maps member name -> MD5 as the source listed it (NBIA's md5hashes.csv), or is
    None when the source declared none. ``license_text`` is the collection licence that came
    with the series, if any.
    """

    files: tuple[StagedFile, ...]
    declared_md5: Mapping[str, str] | None = None
    license_text: str | None = None


@dataclass(frozen=True, slots=True)
class PlacedFile:
    """One file in the output tree, as the ledger records it (``path`` relative, POSIX).

    ``sha256`` is empty for files recorded by a ledger older than the column's first use.
    ``archive`` is the tree path of the series archive holding the file (``--pack``), whose
    ``path`` is then ``<archive>/<member name>``; empty for a file of its own.
    """

    path: str
    SOPInstanceUID: str
    size: int
    md5: str
    sha256: str
    archive: str = ""
