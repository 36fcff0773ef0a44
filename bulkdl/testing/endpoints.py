"""The fake server's own table of NBIA endpoints: parameters, required ones, method and columns.

This is an independent copy of what NBIA accepts (from ``nbia-api.md``), kept apart from the
client's so that tests check the client against it rather than against itself. Parameter names
are case-sensitive and spelled as NBIA spells them (``PatientId`` on getPatient). Pure data.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One endpoint: the parameters it allows (in NBIA's order), the required ones, its method."""

    params: tuple[str, ...]
    required: tuple[str, ...] = ()
    method: str = "GET"
    columns: tuple[str, ...] = ()


PATIENT_COLUMNS = (
    "PatientId",
    "PatientName",
    "PatientSex",
    "EthnicGroup",
    "Collection",
    "Phantom",
    "SpeciesCode",
    "SpeciesDescription",
    "Authorized",
)
STUDY_COLUMNS = (
    "StudyInstanceUID",
    "StudyDate",
    "StudyDescription",
    "AdmittingDiagnosesDescription",
    "StudyID",
    "PatientAge",
    "PatientID",
    "PatientName",
    "PatientSex",
    "EthnicGroup",
    "Collection",
    "SeriesCount",
    "LongitudinalTemporalEventType",
    "LongitudinalTemporalOffsetFromEvent",
    "Authorized",
)
SERIES_COLUMNS = (
    "SeriesInstanceUID",
    "StudyInstanceUID",
    "Modality",
    "ProtocolName",
    "SeriesDate",
    "SeriesDescription",
    "BodyPartExamined",
    "SeriesNumber",
    "AnnotationsFlag",
    "Collection",
    "Site",
    "PatientID",
    "PatientSex",
    "PatientAge",
    "AdmittingDiagnosisDescription",
    "Manufacturer",
    "ManufacturerModelName",
    "SoftwareVersions",
    "ImageCount",
    "MaxSubmissionTimestamp",
    "LicenseName",
    "LicenseURI",
    "DataDescriptionURI",
    "FileSize",
    "ReleasedStatus",
    "DateReleased",
    "StudyDesc",
    "StudyDate",
    "ThirdPartyAnalysis",
    "Authorized",
)
METADATA_COLUMNS = (
    "PatientID",
    "PatientName",
    "PatientSex",
    "EthnicGroup",
    "Phantom",
    "SpeciesCode",
    "SpeciesDescription",
    "StudyInstanceUID",
    "StudyDate",
    "StudyDesc",
    "AdmittingDiagnosisDescription",
    "StudyID",
    "PatientAge",
    "LongitudinalTemporalEventType",
    "LongitudinalTemporalOffsetFromEvent",
    "SeriesInstanceUID",
    "Collection",
    "Site",
    "Modality",
    "ProtocolName",
    "SeriesDate",
    "SeriesDescription",
    "BodyPartExamined",
    "SeriesNumber",
    "AnnotationsFlag",
    "Manufacturer",
    "ManufacturerModelName",
    "PixelSpacing(mm)-Row",
    "SliceThickness(mm)",
    "SoftwareVersions",
    "ImageCount",
    "MaxSubmissionTimestamp",
    "LicenseName",
    "LicenseURI",
    "DataDescriptionURI",
    "FileSize",
    "ReleasedStatus",
    "DateReleased",
    "ThirdPartyAnalysis",
    "Authorized",
)
#: v1/v2 spell two series columns differently.
LEGACY_RENAMES = {"MaxSubmissionTimestamp": "TimeStamp", "DataDescriptionURI": "CollectionURI"}
SERIES_FILTERS = (
    "Collection",
    "PatientID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "Modality",
    "BodyPartExamined",
    "Manufacturer",
    "ManufacturerModelName",
)

ENDPOINTS: dict[str, Endpoint] = {
    "getCollectionValues": Endpoint(("format",), columns=("Collection",)),
    "getModalityValues": Endpoint(
        ("Collection", "BodyPartExamined", "format"), columns=("Modality",)
    ),
    "getBodyPartValues": Endpoint(
        ("Collection", "Modality", "format"), columns=("BodyPartExamined",)
    ),
    "getManufacturerValues": Endpoint(
        ("Collection", "Modality", "BodyPartExamined", "format"), columns=("Manufacturer",)
    ),
    "getPatient": Endpoint(("Collection", "PatientId", "format"), columns=PATIENT_COLUMNS),
    "getPatientByCollectionAndModality": Endpoint(
        ("Collection", "Modality", "format"),
        ("Collection", "Modality"),
        columns=("PatientId", "Authorized"),
    ),
    "getPatientStudy": Endpoint(
        ("Collection", "PatientID", "StudyInstanceUID", "format"),
        ("Collection",),
        columns=STUDY_COLUMNS,
    ),
    "NewPatientsInCollection": Endpoint(
        ("Collection", "fromDate", "format"), ("Collection", "fromDate"), columns=PATIENT_COLUMNS
    ),
    "NewStudiesInPatientCollection": Endpoint(
        ("Collection", "PatientID", "fromDate", "format"),
        ("Collection", "fromDate"),
        columns=STUDY_COLUMNS,
    ),
    "getSeries": Endpoint((*SERIES_FILTERS, "format"), columns=SERIES_COLUMNS),
    "getUpdatedSeries": Endpoint(("fromDate", "format"), ("fromDate",), columns=SERIES_COLUMNS),
    "getSeriesSize": Endpoint(
        ("SeriesInstanceUID", "format"),
        ("SeriesInstanceUID",),
        columns=("TotalSizeInBytes", "ObjectCount"),
    ),
    "getSOPInstanceUIDs": Endpoint(
        ("SeriesInstanceUID", "format"), ("SeriesInstanceUID",), columns=("SOPInstanceUID",)
    ),
    "getSingleImage": Endpoint(
        ("SeriesInstanceUID", "SOPInstanceUID"), ("SeriesInstanceUID", "SOPInstanceUID")
    ),
    "getImage": Endpoint(
        ("SeriesInstanceUID", "NewFileNames", "IncludeMD5"), ("SeriesInstanceUID",)
    ),
    "getImageWithMD5Hash": Endpoint(("SeriesInstanceUID",), ("SeriesInstanceUID",)),
    "getSeriesMetadata": Endpoint(("list", "format"), ("list",), "POST", METADATA_COLUMNS),
}
#: Other spellings NBIA answers to.
ALIASES = {"getSeriesMetaData": "getSeriesMetadata"}


def invalid_parameter_message(name: str, endpoint: Endpoint) -> str:
    """NBIA's 400 text for a parameter the endpoint does not list."""
    return (
        f"Invalid query parameter: '{name}'. Allowed parameters are: [{', '.join(endpoint.params)}]"
    )
