"""NBIA's query endpoints and their strictness, over real loopback HTTP."""

from __future__ import annotations

import csv
import io
import json
import re

import aiohttp
import pytest

from bulkdl.testing import FakeNbiaServer

pytestmark = pytest.mark.anyio
MDY = re.compile(r"\d\d-\d\d-\d{4}")


async def get(url: str, **params: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(url, params=params) as resp:
        return resp.status, await resp.text()


async def test_unknown_parameter_is_rejected_with_nbia_message(nbia_server: FakeNbiaServer) -> None:
    """An unlisted parameter answers 400 naming it and the allowed ones."""
    status, text = await get(nbia_server.v4_url + "getSeries", Colection="DEMO-CT")
    assert status == 400
    assert text == (
        "Invalid query parameter: 'Colection'. Allowed parameters are: [Collection, PatientID, "
        "StudyInstanceUID, SeriesInstanceUID, Modality, BodyPartExamined, Manufacturer, "
        "ManufacturerModelName, format]"
    )


async def test_format_is_not_allowed_on_get_image(nbia_server: FakeNbiaServer) -> None:
    """getImage rejects format=... like any unlisted parameter."""
    uid = nbia_server.archive.series[0].uid
    status, text = await get(nbia_server.v4_url + "getImage", SeriesInstanceUID=uid, format="zip")
    assert status == 400
    assert text.startswith("Invalid query parameter: 'format'.")


async def test_get_patient_wants_the_patientid_spelling(nbia_server: FakeNbiaServer) -> None:
    """getPatient takes PatientId; PatientID is an unknown parameter there."""
    pid = nbia_server.archive.series[0].patient_id
    assert (await get(nbia_server.v4_url + "getPatient", PatientID=pid))[0] == 400
    status, text = await get(nbia_server.v4_url + "getPatient", PatientId=pid)
    assert status == 200
    assert [row["PatientId"] for row in json.loads(text)] == [pid]


async def test_missing_required_parameter_is_400(nbia_server: FakeNbiaServer) -> None:
    """A required parameter left out (or empty) answers 400."""
    assert (await get(nbia_server.v4_url + "getImage"))[0] == 400
    assert (await get(nbia_server.v4_url + "getSeriesSize", SeriesInstanceUID=""))[0] == 400
    assert (await get(nbia_server.v4_url + "getPatientStudy"))[0] == 400


@pytest.mark.parametrize("endpoint", ["getImage", "getSeriesSize", "getSOPInstanceUIDs"])
async def test_unknown_series_is_400_not_404(nbia_server: FakeNbiaServer, endpoint: str) -> None:
    """A series the archive does not hold answers 400."""
    status, _ = await get(nbia_server.v4_url + endpoint, SeriesInstanceUID="1.2.3.4")
    assert status == 400


async def test_empty_result_is_an_empty_body(nbia_server: FakeNbiaServer) -> None:
    """No matching rows: 200 with an empty body (not "[]"), in JSON and CSV alike."""
    for fmt in ("json", "csv"):
        status, text = await get(nbia_server.v4_url + "getSeries", Collection="NOPE", format=fmt)
        assert (status, text) == (200, "")


async def test_series_rows_omit_nulls_and_use_nbia_formats(nbia_server: FakeNbiaServer) -> None:
    """Null columns are absent; SeriesNumber is a decimal string; dates are MM-DD-YYYY."""
    status, text = await get(nbia_server.v4_url + "getSeries", Collection="DEMO-CT")
    rows = json.loads(text)
    assert status == 200 and len(rows) == len(nbia_server.archive.series)
    assert all(v is not None for row in rows for v in row.values())
    assert any("ProtocolName" not in row for row in rows)
    assert all("AnnotationsFlag" not in row for row in rows)
    assert all(re.fullmatch(r"\d+\.000000", row["SeriesNumber"]) for row in rows)
    for key in ("SeriesDate", "StudyDate", "MaxSubmissionTimestamp", "DateReleased"):
        assert all(MDY.fullmatch(row[key]) for row in rows)
    assert all(isinstance(row["ImageCount"], int) and row["FileSize"] > 0 for row in rows)


async def test_filters_are_exact_and_case_insensitive(nbia_server: FakeNbiaServer) -> None:
    """getSeries filters match whole values, ignoring case."""
    pid = nbia_server.archive.series[0].patient_id
    _, text = await get(nbia_server.v4_url + "getSeries", PatientID=pid.lower())
    assert {row["PatientID"] for row in json.loads(text)} == {pid}
    assert (await get(nbia_server.v4_url + "getSeries", PatientID=pid[:-1]))[1] == ""


async def test_csv_format_is_quoted_with_header(nbia_server: FakeNbiaServer) -> None:
    """format=csv: a header row, every field quoted, one row per series."""
    _, text = await get(nbia_server.v4_url + "getSeries", format="csv")
    assert text.startswith('"SeriesInstanceUID","StudyInstanceUID","Modality"')
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == len(nbia_server.archive.series)


async def test_legacy_versions_rename_columns(nbia_server: FakeNbiaServer) -> None:
    """v1 says TimeStamp/CollectionURI for v4's MaxSubmissionTimestamp/DataDescriptionURI."""
    url = nbia_server.root_url + "/nbia-api/services/v1/getSeries"
    row = json.loads((await get(url))[1])[0]
    assert "TimeStamp" in row and "CollectionURI" in row
    assert "MaxSubmissionTimestamp" not in row


async def test_unversioned_route_answers(nbia_server: FakeNbiaServer) -> None:
    """/nbia-api/services/<endpoint> serves the same endpoints."""
    url = nbia_server.root_url + "/nbia-api/services/getCollectionValues"
    assert json.loads((await get(url))[1]) == [{"Collection": "DEMO-CT"}]


async def test_value_and_patient_endpoints(nbia_server: FakeNbiaServer) -> None:
    """getModalityValues, getPatientStudy and getPatientByCollectionAndModality answer."""
    v4 = nbia_server.v4_url
    assert json.loads((await get(v4 + "getModalityValues"))[1]) == [{"Modality": "CT"}]
    studies = json.loads((await get(v4 + "getPatientStudy", Collection="demo-ct"))[1])
    assert len(studies) == len(nbia_server.archive.studies)
    assert all(s["SeriesCount"] == 2 for s in studies)
    patients = json.loads(
        (await get(v4 + "getPatientByCollectionAndModality", Collection="DEMO-CT", Modality="CT"))[
            1
        ]
    )
    assert len(patients) == 2


async def test_series_size_and_updated_series(nbia_server: FakeNbiaServer) -> None:
    """getSeriesSize matches FileSize/ImageCount; getUpdatedSeries filters by an MM-DD-YYYY date."""
    series = nbia_server.archive.series[0]
    _, text = await get(nbia_server.v4_url + "getSeriesSize", SeriesInstanceUID=series.uid)
    (size,) = json.loads(text)
    assert float(size["TotalSizeInBytes"]) == series.row["FileSize"]
    assert size["ObjectCount"] == series.row["ImageCount"]
    _, text = await get(nbia_server.v4_url + "getUpdatedSeries", fromDate="01-01-2000")
    assert len(json.loads(text)) == len(nbia_server.archive.series)
    assert (await get(nbia_server.v4_url + "getUpdatedSeries", fromDate="01-01-2100"))[1] == ""
    assert (await get(nbia_server.v4_url + "getUpdatedSeries", fromDate="2020-01-01"))[0] == 400


@pytest.mark.parametrize("spelling", ["getSeriesMetadata", "getSeriesMetaData"])
async def test_series_metadata_is_a_csv_post(nbia_server: FakeNbiaServer, spelling: str) -> None:
    """POST getSeriesMetadata with list=uid,uid answers CSV by default; GET is refused."""
    uids = [s.uid for s in nbia_server.archive.series[:3]]
    async with aiohttp.ClientSession() as session:
        async with session.post(nbia_server.v4_url + spelling, data={"list": ",".join(uids)}) as r:
            status, text = r.status, await r.text()
        async with session.get(nbia_server.v4_url + spelling) as r:
            assert r.status == 405
    rows = list(csv.DictReader(io.StringIO(text)))
    assert status == 200
    assert [r["SeriesInstanceUID"] for r in rows] == uids
    assert all(r["ImageCount"] and r["FileSize"] and r["PatientID"] for r in rows)
