"""The NBIA builders and parsers, without a server: requests as values, answers as bytes."""

from __future__ import annotations

import contextlib
from datetime import date
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bulkdl.errors import AuthError, InputError, ResponseError
from bulkdl.sources import nbia
from bulkdl.sources.auth import (
    load_credentials,
    parse_credentials_text,
    parse_token_response,
    token_url,
)
from bulkdl.sources.nbia import (
    DEFAULT_BASE_URL,
    ENDPOINTS,
    SeriesQuery,
    api_version,
    build_request,
    metadata_batches,
    normalize_base_url,
    parse_date,
    parse_int,
    parse_rows,
    resolve_base_url,
)

BASE = DEFAULT_BASE_URL
URL = BASE + "getSeries?format=json"
UID = "1.3.6.1.4.1.14519.5.2.1.6834.5010.322628904903035357840500590726"

# getSeriesMetadata's CSV example from nbia-api.yaml, verbatim.
METADATA_CSV = (
    b'"PatientID","PatientName","PatientSex","EthnicGroup","Phantom","SpeciesCode",'
    b'"SpeciesDescription","StudyInstanceUID","StudyDate","StudyDesc",'
    b'"AdmittingDiagnosisDescription","StudyID","PatientAge","LongitudinalTemporalEventType",'
    b'"LongitudinalTemporalOffsetFromEvent","SeriesInstanceUID","Collection","Site","Modality",'
    b'"ProtocolName","SeriesDate","SeriesDescription","BodyPartExamined","SeriesNumber",'
    b'"AnnotationsFlag","Manufacturer","ManufacturerModelName","PixelSpacing(mm)-Row",'
    b'"SliceThickness(mm)","SoftwareVersions","ImageCount","MaxSubmissionTimestamp",'
    b'"LicenseName","LicenseURI","DataDescriptionURI","FileSize","ReleasedStatus",'
    b'"DateReleased","ThirdPartyAnalysis","Authorized"\n'
    b'"100_HM10395","P100","M","","NO","337915000","Homo sapiens",'
    b'"1.3.6.1.4.1.14519.5.2.1.6834.5010.335014117706890137582032169351","09-15-1997","p4","",'
    b'"","000Y","","","1.3.6.1.4.1.14519.5.2.1.6834.5010.322628904903035357840500590726",'
    b'"4D-Lung","VCU","CT","5.1 4DCT & ITV FB + 4D + INSP/EXP","09-15-1997",'
    b'"P4^P100^S100^I0, Gated, 0.0%","LUNG","500.000000","",'
    b'"Varian Imaging Laboratories, Switzerland","Trilogy Cone Beam CT","0.878906","3.000000",'
    b'"LightSpeedverrel","50","07-20-2015","Creative Commons Attribution 3.0 Unported License",'
    b'"http://creativecommons.org/licenses/by/3.0/",'
    b'"https://doi.org/10.7937/TCIA.2016.ELN8YGLE","26405888","Yes","10-19-2016","","1"\n'
)


# --------------------------------------------------------------------------- builders

EXAMPLE_PARAMS: dict[str, dict[str, nbia.ParamValue]] = {
    "getCollectionValues": {"format": "json"},
    "getModalityValues": {"Collection": "C", "BodyPartExamined": "LUNG", "format": "json"},
    "getBodyPartValues": {"Collection": "C", "Modality": "CT", "format": "json"},
    "getManufacturerValues": {
        "Collection": "C",
        "Modality": "CT",
        "BodyPartExamined": "LUNG",
        "format": "json",
    },
    "getPatient": {"Collection": "C", "PatientId": "P1", "format": "json"},
    "getPatientByCollectionAndModality": {"Collection": "C", "Modality": "CT", "format": "json"},
    "getPatientStudy": {
        "Collection": "C",
        "PatientID": "P1",
        "StudyInstanceUID": "1.2",
        "format": "json",
    },
    "NewPatientsInCollection": {"Collection": "C", "fromDate": date(2023, 3, 28)},
    "NewStudiesInPatientCollection": {
        "Collection": "C",
        "PatientID": "P1",
        "fromDate": date(2023, 3, 28),
    },
    "getSeries": {
        "Collection": "C",
        "PatientID": "P1",
        "StudyInstanceUID": "1.2",
        "SeriesInstanceUID": "1.2.3",
        "Modality": "CT",
        "BodyPartExamined": "LUNG",
        "Manufacturer": "GE",
        "ManufacturerModelName": "X",
        "format": "json",
    },
    "getUpdatedSeries": {"fromDate": date(2023, 3, 28), "format": "json"},
    "getSeriesSize": {"SeriesInstanceUID": UID, "format": "json"},
    "getSOPInstanceUIDs": {"SeriesInstanceUID": UID, "format": "json"},
    "getImage": {"SeriesInstanceUID": UID, "NewFileNames": True, "IncludeMD5": True},
    "getImageWithMD5Hash": {"SeriesInstanceUID": UID},
    "getSeriesMetadata": {"list": "1.2,1.3", "format": "csv"},
}


def test_example_params_cover_every_endpoint() -> None:
    """The table below exercises every endpoint of the endpoint table."""
    assert set(EXAMPLE_PARAMS) == set(ENDPOINTS)


@pytest.mark.parametrize("endpoint", sorted(EXAMPLE_PARAMS))
def test_build_every_endpoint_with_all_its_params(endpoint: str) -> None:
    """Every endpoint builds with every parameter it takes, as text, on the base URL."""
    req = build_request(BASE, endpoint, EXAMPLE_PARAMS[endpoint])
    assert req.url == BASE + endpoint
    sent = dict(req.form or {}) | dict(req.params)
    assert set(sent) == set(EXAMPLE_PARAMS[endpoint])
    assert all(isinstance(v, str) for v in sent.values())


@pytest.mark.parametrize("endpoint", sorted(ENDPOINTS))
def test_unknown_param_is_refused_before_sending(endpoint: str) -> None:
    """A parameter an endpoint does not list raises InputError (the server would answer 400)."""
    params = dict(EXAMPLE_PARAMS[endpoint], Bogus="x")
    with pytest.raises(InputError, match="Bogus"):
        build_request(BASE, endpoint, params)


@pytest.mark.parametrize(
    ("endpoint", "params", "missing"),
    [
        ("getPatientByCollectionAndModality", {"Collection": "C"}, "Modality"),
        ("getPatientStudy", {"PatientID": "P"}, "Collection"),
        ("NewPatientsInCollection", {"Collection": "C"}, "fromDate"),
        ("NewStudiesInPatientCollection", {"fromDate": date(2020, 1, 1)}, "Collection"),
        ("getUpdatedSeries", {"format": "json"}, "fromDate"),
        ("getSeriesSize", {}, "SeriesInstanceUID"),
        ("getSOPInstanceUIDs", {"SeriesInstanceUID": None}, "SeriesInstanceUID"),
        ("getImage", {"IncludeMD5": True}, "SeriesInstanceUID"),
        ("getImageWithMD5Hash", {}, "SeriesInstanceUID"),
        ("getSeriesMetadata", {"format": "csv"}, "list"),
    ],
)
def test_missing_required_param_is_refused(
    endpoint: str, params: dict[str, nbia.ParamValue], missing: str
) -> None:
    """Leaving out a required parameter (or passing None for it) raises InputError naming it."""
    with pytest.raises(InputError, match=missing):
        build_request(BASE, endpoint, params)


def test_get_image_takes_no_format() -> None:
    """getImage refuses ``format``: the real server answers 400 to it."""
    with pytest.raises(InputError, match="format"):
        build_request(BASE, "getImage", {"SeriesInstanceUID": UID, "format": "json"})


def test_get_patient_spells_patient_id_its_own_way() -> None:
    """getPatient takes ``PatientId``, not ``PatientID``."""
    build_request(BASE, "getPatient", {"PatientId": "P"})
    with pytest.raises(InputError):
        build_request(BASE, "getPatient", {"PatientID": "P"})


def test_unknown_endpoint_is_refused() -> None:
    """An endpoint missing from the table raises InputError."""
    with pytest.raises(InputError):
        build_request(BASE, "getEverything", {})


def test_none_values_are_dropped_and_bools_are_yes() -> None:
    """None filters are left out; True is ``Yes``; False is left out (the server's default)."""
    req = build_request(
        BASE,
        "getImage",
        {"SeriesInstanceUID": UID, "NewFileNames": False, "IncludeMD5": True},
    )
    assert dict(req.params) == {"SeriesInstanceUID": UID, "IncludeMD5": "Yes"}
    req = build_request(BASE, "getSeries", {"Collection": None, "Modality": "CT"})
    assert dict(req.params) == {"Modality": "CT"}


def test_dates_are_sent_month_day_year() -> None:
    """A date parameter goes out as MM-DD-YYYY."""
    req = build_request(BASE, "getUpdatedSeries", {"fromDate": date(2023, 3, 8)})
    assert req.params["fromDate"] == "03-08-2023"
    assert req.display_url == BASE + "getUpdatedSeries?fromDate=03-08-2023"


def test_series_metadata_is_a_post_form() -> None:
    """getSeriesMetadata's UIDs travel in a POST form field ``list``, not in the query."""
    req = build_request(BASE, "getSeriesMetadata", {"list": "1.2,1.3"})
    assert req.method == "POST"
    assert dict(req.params) == {}
    assert dict(req.form or {}) == {"list": "1.2,1.3"}


def test_series_query_translates_to_get_series_params() -> None:
    """Each SeriesQuery filter maps onto its getSeries parameter; unset filters are omitted."""
    query = SeriesQuery(
        collection="C",
        patient_id="P",
        study_uid="1.2",
        series_uid="1.2.3",
        modality="CT",
        body_part="LUNG",
        manufacturer="GE",
        manufacturer_model="M",
    )
    params = query.to_params()
    assert params == {
        "Collection": "C",
        "PatientID": "P",
        "StudyInstanceUID": "1.2",
        "SeriesInstanceUID": "1.2.3",
        "Modality": "CT",
        "BodyPartExamined": "LUNG",
        "Manufacturer": "GE",
        "ManufacturerModelName": "M",
    }
    assert set(params) <= ENDPOINTS["getSeries"].params
    assert SeriesQuery(modality="MR").to_params() == {"Modality": "MR"}


# --------------------------------------------------------------------------- base URLs


def test_base_url_flag_beats_env_beats_default() -> None:
    """The flag wins over $BULKDL_API_URL, which wins over TCIA's v4 default."""
    env = {"BULKDL_API_URL": "https://env.example/nbia-api/services/v4"}
    assert resolve_base_url("nlst", env) == nbia.PRESETS["nlst"]
    assert resolve_base_url(None, env) == "https://env.example/nbia-api/services/v4/"
    assert resolve_base_url(None, {}) == DEFAULT_BASE_URL
    assert resolve_base_url("", {"BULKDL_API_URL": "  "}) == DEFAULT_BASE_URL


def test_presets_and_trailing_slash() -> None:
    """Preset names resolve (any case) and URLs gain a trailing slash."""
    assert normalize_base_url("TCIA") == DEFAULT_BASE_URL
    assert normalize_base_url("nlst").startswith("https://nlst.cancerimagingarchive.net/")
    assert normalize_base_url("http://127.0.0.1:8080/x/v2") == "http://127.0.0.1:8080/x/v2/"


@pytest.mark.parametrize(
    "bad", ["ftp://host/nbia/", "file:///etc/passwd", "nbia.example/v4/", "https://", "tcia2"]
)
def test_non_http_base_url_is_refused(bad: str) -> None:
    """Anything but an http(s) URL with a host, or a preset name, raises InputError."""
    with pytest.raises(InputError):
        normalize_base_url(bad)


def test_bad_url_message_hides_userinfo() -> None:
    """A refused URL's message does not repeat a password embedded in it."""
    with pytest.raises(InputError) as info:
        normalize_base_url("ftp://user:s3cret@host/")
    assert "s3cret" not in str(info.value)


@pytest.mark.parametrize(
    ("url", "version"),
    [
        (DEFAULT_BASE_URL, "v4"),
        ("https://h/nbia-api/services/v1/", "v1"),
        ("https://h/nbia-api/services/v2/", "v2"),
        ("https://h/nbia-api/services/", "unversioned"),
        ("http://127.0.0.1:9/", "unversioned"),
    ],
)
def test_api_version_from_path(url: str, version: str) -> None:
    """The API version is read from the URL path."""
    assert api_version(url) == version


# --------------------------------------------------------------------------- parse_rows


def test_empty_body_is_no_rows() -> None:
    """NBIA answers an empty result with 200 and an empty body: that is zero rows."""
    assert parse_rows(b"", "application/json", URL) == []
    assert parse_rows(b"  \r\n", None, URL) == []


def test_json_array_of_objects() -> None:
    """A JSON array becomes rows of text; numbers become text, nulls and absent keys are absent."""
    body = (
        b'[{"SeriesInstanceUID":"1.2","ImageCount":57,"Modality":null},{"SeriesInstanceUID":"1.3"}]'
    )
    rows = parse_rows(body, "application/json", URL)
    assert rows == [{"SeriesInstanceUID": "1.2", "ImageCount": "57"}, {"SeriesInstanceUID": "1.3"}]


def test_single_object_is_one_row() -> None:
    """A lone JSON object where an array was expected is one row (getSeriesSize does this)."""
    rows = parse_rows(b'{"imageCount": 136, "seriesSize": 71599388}', "application/json", URL)
    assert rows == [{"imageCount": "136", "seriesSize": "71599388"}]


def test_csv_with_quotes_and_commas() -> None:
    """getSeriesMetadata's quoted CSV example parses with commas kept inside values."""
    rows = parse_rows(METADATA_CSV, "text/csv;charset=UTF-8", BASE + "getSeriesMetadata")
    assert len(rows) == 1
    row = rows[0]
    assert row["SeriesDescription"] == "P4^P100^S100^I0, Gated, 0.0%"
    assert row["Manufacturer"] == "Varian Imaging Laboratories, Switzerland"
    assert row["SeriesNumber"] == "500.000000"
    assert row["EthnicGroup"] == ""


def test_csv_with_embedded_quote_and_newline_and_crlf() -> None:
    """Doubled quotes and newlines inside quoted fields survive; CRLF line ends are fine."""
    body = b'"SeriesInstanceUID","SeriesDescription"\r\n"1.2","say ""hi""\r\nthere"\r\n'
    rows = parse_rows(body, "text/csv", URL)
    assert rows == [{"SeriesInstanceUID": "1.2", "SeriesDescription": 'say "hi"\r\nthere'}]


def test_csv_without_content_type_is_sniffed() -> None:
    """A quoted CSV body is recognised even when labelled text/plain."""
    rows = parse_rows(b'"Collection"\n"LIDC-IDRI"\n', "text/plain", URL)
    assert rows == [{"Collection": "LIDC-IDRI"}]


def test_html_error_page_is_a_response_error_naming_the_endpoint() -> None:
    """An HTML page in a 200 is a ResponseError naming the endpoint, never rows."""
    body = b"<html><body><h1>Service Unavailable</h1></body></html>"
    with pytest.raises(ResponseError, match="getSeries"):
        parse_rows(body, "text/html", URL)
    with pytest.raises(ResponseError, match="getSeries"):
        parse_rows(body, "application/json", URL)


@pytest.mark.parametrize(
    ("body", "ctype"),
    [
        (b'[{"SeriesInstanceUID":"1.2"},{"Series', "application/json"),
        (b"[1, 2, 3]", "application/json"),
        (b'"just a string"', "application/json"),
        (b"Error: Unable to process the request", "application/json"),
        (b"Error: Unable to process the request", "text/plain"),
        (b"Error: Unable to process the request", None),
        (b"\xff\xfe\x00garbage", None),
    ],
)
def test_bodies_that_are_not_rows_are_response_errors(body: bytes, ctype: str | None) -> None:
    """Truncated JSON, non-object items, bare text and non-UTF-8 bytes raise ResponseError."""
    with pytest.raises(ResponseError):
        parse_rows(body, ctype, URL)


def test_csv_row_longer_than_header_is_a_response_error() -> None:
    """A CSV record with more fields than the header is refused."""
    with pytest.raises(ResponseError):
        parse_rows(b'"A","B"\n"1","2","3"\n', "text/csv", URL)


@given(
    st.binary(max_size=300), st.sampled_from([None, "application/json", "text/csv", "text/html"])
)
def test_parse_rows_never_raises_anything_else(body: bytes, ctype: str | None) -> None:
    """Any bytes either parse into rows of text or raise ResponseError, nothing else."""
    try:
        rows = parse_rows(body, ctype, URL)
    except ResponseError:
        return
    for row in rows:
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in row.items())


@given(st.text(max_size=200))
def test_parse_rows_on_text_never_raises_anything_else(text: str) -> None:
    """Any text, labelled CSV, either parses or raises ResponseError."""
    with contextlib.suppress(ResponseError):
        parse_rows(text.encode(), "text/csv", URL)


# --------------------------------------------------------------------------- values


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("500.000000", 500),
        ("5", 5),
        (" 42 ", 42),
        ("-3", -3),
        ("1.5", None),
        ("NaN", None),
        ("Infinity", None),
        ("1e999999", None),
        ("junk", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_int_is_defensive(text: str | None, value: int | None) -> None:
    """Integers come from decimal strings; non-integral values and junk give None."""
    assert parse_int(text) == value


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("09-15-1997", date(1997, 9, 15)),
        ("1997-09-15", date(1997, 9, 15)),
        ("20171120", date(2017, 11, 20)),
        ("2015-07-20 10:11:12.0", date(2015, 7, 20)),
        ("13-45-2020", None),
        ("yesterday", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_date_tolerates_nbia_and_iso(text: str | None, value: date | None) -> None:
    """NBIA's MM-DD-YYYY, ISO and DICOM dates parse; junk gives None."""
    assert parse_date(text) == value


# --------------------------------------------------------------------------- records


def test_metadata_csv_row_to_series() -> None:
    """The yaml's getSeriesMetadata row becomes a fully typed Series."""
    row = parse_rows(METADATA_CSV, "text/csv", BASE + "getSeriesMetadata")[0]
    s = nbia.series_from_row(row)
    assert s.SeriesInstanceUID == UID
    assert s.SeriesNumber == 500
    assert s.ImageCount == 50
    assert s.FileSize == 26405888
    assert s.SeriesDate == date(1997, 9, 15)
    assert s.StudyDate == date(1997, 9, 15)
    assert s.MaxSubmissionTimestamp == date(2015, 7, 20)
    assert s.StudyDescription == "p4"  # from StudyDesc
    assert s.EthnicGroup is None  # empty string -> None
    assert s.AnnotationsFlag is None
    assert s.Collection == "4D-Lung"
    extra = dict(s.extra)
    assert extra["PixelSpacing(mm)-Row"] == "0.878906"
    assert extra["Authorized"] == "1"
    assert extra["Phantom"] == "NO"


def test_v1_v2_field_names_map_to_v4_fields() -> None:
    """``TimeStamp`` and ``CollectionURI`` (v1/v2) land on v4's fields."""
    row = {
        "SeriesInstanceUID": "1.2",
        "TimeStamp": "08-04-2023",
        "CollectionURI": "https://doi.org/x",
        "ImageCount": "180",
        "SeriesNumber": "5",
    }
    s = nbia.series_from_row(row)
    assert s.MaxSubmissionTimestamp == date(2023, 8, 4)
    assert s.DataDescriptionURI == "https://doi.org/x"
    assert s.SeriesNumber == 5
    assert s.extra == ()


def test_absent_keys_are_none_and_junk_numbers_are_none() -> None:
    """A row with only a UID gives a Series of Nones; junk numbers and dates become None."""
    s = nbia.series_from_row({"SeriesInstanceUID": "1.2", "SeriesNumber": "3.5", "SeriesDate": "x"})
    assert (s.SeriesNumber, s.SeriesDate, s.Modality, s.ImageCount) == (None, None, None, None)


def test_row_without_key_is_a_response_error() -> None:
    """A series row without SeriesInstanceUID raises ResponseError."""
    with pytest.raises(ResponseError):
        nbia.series_from_row({"Modality": "CT"}, URL)


def test_patient_and_study_rows() -> None:
    """getPatient's ``PatientId`` and getPatientStudy's columns map onto Patient and Study."""
    p = nbia.patient_from_row(
        {"PatientId": "P1", "PatientSex": "F", "Collection": "C", "Authorized": "1"}
    )
    assert (p.PatientID, p.PatientSex, p.Collection) == ("P1", "F", "C")
    assert p.extra == (("Authorized", "1"),)
    st_ = nbia.study_from_row(
        {
            "StudyInstanceUID": "1.2",
            "StudyDate": "20171120",
            "PatientID": "P1",
            "SeriesCount": "4",
            "StudyDescription": "DBT",
        }
    )
    assert (st_.StudyDate, st_.SeriesCount, st_.StudyDescription) == (date(2017, 11, 20), 4, "DBT")


_BATCH_COLUMNS = [
    "SeriesInstanceUID",
    "Series UID",
    "StudyDesc",
    "StudyDescription",
    "ImageCount",
    "SeriesDate",
    "Phantom",
    "PixelSpacing(mm)-Row",
    "Modality",
]
_BATCH_VALUES = st.sampled_from(["", " ", "1.2", " 1.2", "500.000000", "09-15-1997", "x", "CT"])


@given(
    st.lists(st.sampled_from(_BATCH_COLUMNS), min_size=1, max_size=6, unique=True),
    st.lists(st.lists(_BATCH_VALUES, min_size=6, max_size=6), max_size=4),
)
def test_batch_of_rows_reads_as_each_row(columns: list[str], values: list[list[str]]) -> None:
    """series_from_rows gives what series_from_row gives row by row, or the same error."""
    rows = [dict(zip(columns, row, strict=False)) for row in values]
    try:
        one_by_one = [nbia.series_from_row(row, URL) for row in rows]
    except ResponseError:
        with pytest.raises(ResponseError):
            nbia.series_from_rows(rows, URL)
        return
    assert nbia.series_from_rows(rows, URL) == one_by_one


@given(
    st.lists(st.sampled_from(_BATCH_COLUMNS), min_size=1, max_size=6, unique=True),
    st.lists(st.lists(_BATCH_VALUES, min_size=6, max_size=6), max_size=4),
)
def test_csv_table_reads_as_its_rows(columns: list[str], values: list[list[str]]) -> None:
    """A CSV answer read as a table gives the Series its rows give, or the same error."""
    records = [row[: len(columns)] for row in values]
    text = "\r\n".join(",".join(f'"{v}"' for v in line) for line in [columns, *records])
    answer = nbia.parse_answer(text.encode(), "text/csv", URL)
    assert isinstance(answer, nbia.Table)
    rows = nbia.parse_rows(text.encode(), "text/csv", URL)
    assert answer.rows() == rows
    try:
        expected = nbia.series_from_rows(rows, URL)
    except ResponseError:
        with pytest.raises(ResponseError):
            nbia.series_from_answer(answer, URL)
        return
    assert nbia.series_from_answer(answer, URL) == expected


@pytest.mark.parametrize(
    "row",
    [
        {"TotalSizeInBytes": "71599388", "ObjectCount": "136"},
        {"imageCount": "136", "seriesSize": "71599388.0"},
    ],
)
def test_series_size_accepts_both_spellings(row: dict[str, str]) -> None:
    """getSeriesSize's server spelling and the OpenAPI spelling both parse."""
    size = nbia.series_size_from_rows(UID, [row])
    assert (size.SeriesInstanceUID, size.ImageCount, size.FileSize) == (UID, 136, 71599388)


def test_sop_uids_and_value_lists() -> None:
    """getSOPInstanceUIDs rows give UIDs; value lists give strings (any column case)."""
    assert nbia.sop_instance_uids([{"SOPInstanceUID": "1.1"}, {"SOPInstanceUID": "1.2"}]) == [
        "1.1",
        "1.2",
    ]
    rows = [{"Collection": "A"}, {"collection": "B"}, {"Collection": "A"}, {}]
    assert nbia.column_values(rows, "Collection") == ["A", "B"]


# --------------------------------------------------------------------------- batching


def test_batches_of_at_most_n() -> None:
    """UIDs are cut into chunks of at most N, in order, duplicates dropped."""
    uids = [f"1.2.{i}" for i in range(7)] + ["1.2.0"]
    assert list(metadata_batches(uids, 3)) == [
        ["1.2.0", "1.2.1", "1.2.2"],
        ["1.2.3", "1.2.4", "1.2.5"],
        ["1.2.6"],
    ]
    assert list(metadata_batches([], 3)) == []


def test_default_batch_is_1000_and_form_stays_small() -> None:
    """The default batch is 1,000 UIDs, and a batch's ``list`` stays under the char budget."""
    uids = [f"1.3.6.1.4.1.14519.5.2.1.6834.5010.{i:030d}" for i in range(2500)]
    batches = list(metadata_batches(uids))
    assert [len(b) for b in batches] == [1000, 1000, 500]
    small = list(metadata_batches(uids, 10_000, max_chars=10_000))
    assert all(len(nbia.metadata_form_list(b)) <= 10_000 for b in small)
    assert sum(len(b) for b in small) == 2500


def test_batch_size_below_one_is_refused() -> None:
    """A batch size of 0 raises InputError."""
    with pytest.raises(InputError):
        list(metadata_batches(["1.2"], 0))


# --------------------------------------------------------------------------- credentials


def test_credentials_from_lines_json_and_env(tmp_path: Path) -> None:
    """Credentials load from key=value lines, JSON, or the environment; repr hides the password."""
    creds = parse_credentials_text("# mine\nusername = alice\npassword=p=w\n")
    assert (creds.username, creds.password, creds.client_id) == ("alice", "p=w", "nbia")
    assert parse_credentials_text('{"username": "bob", "password": "x"}').username == "bob"
    env = {"BULKDL_USERNAME": "carol", "BULKDL_PASSWORD": "hunter2"}
    loaded = load_credentials(env=env)
    assert loaded is not None and loaded.username == "carol"
    assert "hunter2" not in repr(loaded)
    assert load_credentials(env={}) is None


def test_credentials_file_must_not_be_world_readable(tmp_path: Path) -> None:
    """A 0600 file loads; a world-readable one is refused; an incomplete one names no secret."""
    path = tmp_path / "creds"
    path.write_text("username=alice\npassword=topsecret\n")
    path.chmod(0o600)
    creds = load_credentials(env={"BULKDL_CREDENTIALS_FILE": str(path)})
    assert creds is not None and creds.password == "topsecret"
    path.chmod(0o644)
    with pytest.raises(InputError, match="world-readable"):
        load_credentials(path, env={})
    path.write_text("password=topsecret\n")
    path.chmod(0o600)
    with pytest.raises(InputError) as info:
        load_credentials(path, env={})
    assert "topsecret" not in str(info.value)


def test_token_url_and_token_parsing() -> None:
    """The token URL is on the API's origin; a Keycloak answer parses, junk is AuthError."""
    assert token_url("http://127.0.0.1:8080/nbia-api/services/v2/") == (
        "http://127.0.0.1:8080/nbia-api/oauth/token"
    )
    token = parse_token_response(
        b'{"access_token":"abc","expires_in":300,"refresh_token":"r","refresh_expires_in":1800}',
        100.0,
        margin=30.0,
    )
    assert (token.expires_at, token.refresh_at, token.refresh_token) == (400.0, 370.0, "r")
    assert "abc" not in repr(token)
    short = parse_token_response(b'{"access_token":"abc","expires_in":10}', 0.0, margin=30.0)
    assert short.refresh_at == 5.0  # half-way through a short life, not before it starts
    with pytest.raises(AuthError):
        parse_token_response(b"<html>", 0.0)
