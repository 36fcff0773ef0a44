"""NbiaClient over real loopback HTTP against the package's fake NBIA server."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import date
from typing import Any

import anyio
import pytest
from aiohttp import web

from bulkdl.errors import AuthError, TransientError, UnknownSeriesError
from bulkdl.retry import HostBackoff, RetryPolicy
from bulkdl.sources import Source
from bulkdl.sources.auth import Credentials, TokenAuth
from bulkdl.sources.http import HttpClient, HttpSettings
from bulkdl.sources.nbia import SeriesQuery, parse_date, parse_int
from bulkdl.sources.nbia_client import NbiaClient
from bulkdl.testing import FakeArchive, FakeNbiaServer, Fault, run_in_thread
from bulkdl.testing.endpoints import ENDPOINTS as SERVER_ENDPOINTS

pytestmark = pytest.mark.anyio

UNKNOWN_UID = "1.2.3.4.5.6.7.8.9"
USER, PASSWORD = "alice", "s3cret-Pa55word"


class SleepRecorder:
    """Records requested sleeps instead of sleeping, so Retry-After waits cost nothing."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


@asynccontextmanager
async def open_client(url: str, **kwargs: Any) -> AsyncIterator[NbiaClient]:
    settings = kwargs.pop("settings", None) or HttpSettings(connect_timeout=5, read_timeout=10)
    async with HttpClient(settings) as http:
        auth = kwargs.pop("credentials", None)
        margin = kwargs.pop("margin", 30.0)
        clock = kwargs.pop("auth_clock", time.monotonic)
        token = TokenAuth(http, url, auth, margin=margin, clock=clock) if auth else None
        yield NbiaClient(http, url, auth=token, **kwargs)


@pytest.fixture
def auth_server(small_archive: FakeArchive) -> Iterator[FakeNbiaServer]:
    """A fake server with one user, whose v2 API demands a bearer token valid for 0.5 s."""
    server = FakeNbiaServer(small_archive, users={USER: PASSWORD}, token_lifetime=0.5)
    with run_in_thread(server) as running:
        yield running


def expected_series(archive: FakeArchive, **filters: str) -> set[str]:
    return {
        s.uid
        for s in archive.series
        if all(str(s.row.get(k, "")).casefold() == v.casefold() for k, v in filters.items())
    }


# --------------------------------------------------------------------------- data


async def test_value_lists_match_the_archive(nbia_server: FakeNbiaServer) -> None:
    """collections/modalities/body_parts/manufacturers return the archive's distinct values."""
    rows = [s.row for s in nbia_server.archive.series]
    async with open_client(nbia_server.v4_url) as client:
        assert await client.collections() == ["DEMO-CT"]
        assert await client.modalities() == ["CT"]
        assert set(await client.body_parts()) == {str(r["BodyPartExamined"]) for r in rows}
        assert set(await client.manufacturers()) == {str(r["Manufacturer"]) for r in rows}
        assert await client.body_parts("DEMO-CT", "CT") == await client.body_parts()


async def test_patients_and_studies_match_the_archive(nbia_server: FakeNbiaServer) -> None:
    """patients() and patient_studies() return the archive's patients and studies, typed."""
    archive = nbia_server.archive
    async with open_client(nbia_server.v4_url) as client:
        patients = await client.patients("DEMO-CT")
        assert [p.PatientID for p in patients] == [str(p["PatientId"]) for p in archive.patients]
        one = await client.patients("DEMO-CT", patients[0].PatientID)
        assert [p.PatientID for p in one] == [patients[0].PatientID]
        studies = await client.patient_studies("DEMO-CT")
        assert {s.StudyInstanceUID for s in studies} == {
            str(s["StudyInstanceUID"]) for s in archive.studies
        }
        first = archive.studies[0]
        (study,) = await client.patient_studies(
            "DEMO-CT", str(first["PatientID"]), str(first["StudyInstanceUID"])
        )
        assert study.StudyDate == parse_date(str(first["StudyDate"]))
        assert study.SeriesCount == first["SeriesCount"]


async def test_series_matches_the_archive(nbia_server: FakeNbiaServer) -> None:
    """series(query) returns typed rows: SeriesNumber from "500.000000", counts, sizes, dates."""
    archive = nbia_server.archive
    async with open_client(nbia_server.v4_url) as client:
        everything = await client.series(SeriesQuery(collection="demo-ct"))
        assert {s.SeriesInstanceUID for s in everything} == {s.uid for s in archive.series}
        for got, want in zip(everything, archive.series, strict=True):
            assert got.SeriesNumber == parse_int(str(want.row["SeriesNumber"]))
            assert got.ImageCount == len(want.instances)
            assert got.FileSize == sum(i.size for i in want.instances)
            assert got.MaxSubmissionTimestamp is not None
        chest = await client.series(SeriesQuery(body_part="CHEST"))
        assert {s.SeriesInstanceUID for s in chest} == expected_series(
            archive, BodyPartExamined="CHEST"
        )


async def test_series_size_sop_uids_and_updated_series(nbia_server: FakeNbiaServer) -> None:
    """series_size, sop_instance_uids and updated_series agree with the archive."""
    archive = nbia_server.archive
    target = archive.series[1]
    async with open_client(nbia_server.v4_url) as client:
        size = await client.series_size(target.uid)
        assert (size.ImageCount, size.FileSize) == (
            len(target.instances),
            sum(i.size for i in target.instances),
        )
        sops = await client.sop_instance_uids(target.uid)
        assert sorted(sops) == sorted(i.sop_uid for i in target.instances)
        updated = await client.updated_series(date(2000, 1, 1))
        assert len(updated) == len(archive.series)
        new = await client.new_studies("DEMO-CT", date(2000, 1, 1))
        assert len(new) == len(archive.studies)


async def test_empty_results_are_empty_lists(nbia_server: FakeNbiaServer) -> None:
    """An empty answer (200, empty body) gives [] from every list method."""
    async with open_client(nbia_server.v4_url) as client:
        assert await client.series(SeriesQuery(collection="NO-SUCH")) == []
        assert await client.patients("NO-SUCH") == []
        assert await client.patient_studies("NO-SUCH") == []
        assert await client.modalities(collection="NO-SUCH") == []
        assert await client.updated_series(date(2099, 1, 1)) == []
        assert await client.patients_by_modality("DEMO-CT", "MR") == []


async def test_unknown_series_raises_unknown_series_error(nbia_server: FakeNbiaServer) -> None:
    """A 400 on a series endpoint is UnknownSeriesError naming the UID, for metadata and ZIPs."""
    async with open_client(nbia_server.v4_url) as client:
        with pytest.raises(UnknownSeriesError, match=UNKNOWN_UID):
            await client.series_size(UNKNOWN_UID)
        with pytest.raises(UnknownSeriesError, match=UNKNOWN_UID):
            await client.sop_instance_uids(UNKNOWN_UID)
        with pytest.raises(UnknownSeriesError, match=UNKNOWN_UID):
            async with client.open_image(UNKNOWN_UID):
                pass
    assert nbia_server.log.count("getSeriesSize") == 1  # a 400 is not retried


async def test_open_image_streams_the_zip(nbia_server: FakeNbiaServer) -> None:
    """open_image yields a 200 whose chunks form a ZIP named after the series."""
    uid = nbia_server.archive.series[0].uid
    async with open_client(nbia_server.v4_url) as client:
        async with client.open_image(uid, new_file_names=True) as resp:
            assert resp.status == 200
            assert uid in resp.headers["Content-Disposition"]
            body = b"".join([c async for c in resp.chunks()])
        async with client.open_image_with_md5(uid) as resp:
            body2 = b"".join([c async for c in resp.chunks()])
    assert body.startswith(b"PK\x03\x04") and body2.startswith(b"PK\x03\x04")
    (record,) = nbia_server.log.for_endpoint("getImage")
    assert record.query == {"SeriesInstanceUID": uid, "NewFileNames": "Yes", "IncludeMD5": "Yes"}


# --------------------------------------------------------------------------- strictness


async def test_no_request_carries_a_parameter_the_server_rejects(
    nbia_server: FakeNbiaServer,
) -> None:
    """Every method with every optional filter set: no 400, params within the server's table."""
    archive = nbia_server.archive
    s = archive.series[0]
    row = s.row
    async with open_client(nbia_server.v4_url, metadata_batch=3) as client:
        await client.collections()
        await client.modalities("DEMO-CT", "CHEST")
        await client.body_parts("DEMO-CT", "CT")
        await client.manufacturers("DEMO-CT", "CT", "CHEST")
        await client.patients("DEMO-CT", s.patient_id)
        await client.patients_by_modality("DEMO-CT", "CT")
        await client.new_patients("DEMO-CT", date(2000, 1, 1))
        await client.patient_studies("DEMO-CT", s.patient_id, s.study_uid)
        await client.new_studies("DEMO-CT", date(2000, 1, 1), s.patient_id)
        found = await client.series(
            SeriesQuery(
                collection=s.collection,
                patient_id=s.patient_id,
                study_uid=s.study_uid,
                series_uid=s.uid,
                modality=str(row["Modality"]),
                body_part=str(row["BodyPartExamined"]),
                manufacturer=str(row["Manufacturer"]),
                manufacturer_model=str(row["ManufacturerModelName"]),
            )
        )
        assert [x.SeriesInstanceUID for x in found] == [s.uid]
        await client.updated_series(date(2000, 1, 1))
        await client.series_size(s.uid)
        await client.sop_instance_uids(s.uid)
        await client.series_metadata([x.uid for x in archive.series])
        for kwargs in ({}, {"new_file_names": True, "include_md5": True}):
            async with client.open_image(s.uid, **kwargs) as resp:
                async for _ in resp.chunks():
                    pass
        async with client.open_image_with_md5(s.uid) as resp:
            async for _ in resp.chunks():
                pass
    records = nbia_server.log.records
    assert {r.endpoint for r in records} >= set(SERVER_ENDPOINTS) - {"getSingleImage"}
    for r in records:
        assert r.status == 200, r
        allowed = set(SERVER_ENDPOINTS[r.endpoint].params)
        assert set(r.query) | set(r.form) <= allowed, r


# --------------------------------------------------------------------------- batching


async def test_metadata_is_batched_and_missing_uids_reported(nbia_server: FakeNbiaServer) -> None:
    """With batch size 3, 8 series + 2 unknown take 4 POSTs; found/missing are exact."""
    archive = nbia_server.archive
    uids = [s.uid for s in archive.series]
    asked = [*uids[:4], UNKNOWN_UID, *uids[4:], "1.2.999", uids[0]]
    async with open_client(nbia_server.v4_url, metadata_batch=3) as client:
        found, missing = await client.series_metadata(asked)
    assert [s.SeriesInstanceUID for s in found] == uids
    assert missing == [UNKNOWN_UID, "1.2.999"]
    posts = nbia_server.log.for_endpoint("getSeriesMetadata")
    assert len(posts) == 4
    assert all(p.method == "POST" and len(p.form["list"].split(",")) <= 3 for p in posts)
    by_uid = {s.uid: s for s in archive.series}
    for series in found:
        want = by_uid[series.SeriesInstanceUID]
        assert series.ImageCount == want.row["ImageCount"]
        assert series.FileSize == want.row["FileSize"]
        assert series.Collection == "DEMO-CT"


async def test_metadata_list_is_sent_as_one_urlencoded_form_body() -> None:
    """getSeriesMetadata's list reaches the server as a form body with its commas as they are,
    and any form value (a password with reserved characters) decodes to what was given."""
    seen: list[tuple[str, bytes, dict[str, str]]] = []

    async def handler(request: web.Request) -> web.Response:
        body = await request.read()
        form = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
        seen.append((request.content_type, body, form))
        return web.Response(text='"SeriesInstanceUID"\r\n"1.2.3"\r\n', content_type="text/csv")

    app = web.Application()
    app.router.add_post("/nbia-api/services/v4/getSeriesMetadata", handler)
    tricky = "a b&c,=é+%;"
    async with tiny_server(app) as url:
        async with open_client(url) as client:
            found, missing = await client.series_metadata(["1.2.3", "4.5.6"])
        async with HttpClient() as http:
            await http.request("POST", url + "getSeriesMetadata", form={"list": tricky})
    assert ([s.SeriesInstanceUID for s in found], missing) == (["1.2.3"], ["4.5.6"])
    ctype, body, form = seen[0]
    assert (ctype, body, form) == (
        "application/x-www-form-urlencoded",
        b"list=1.2.3,4.5.6",
        {"list": "1.2.3,4.5.6"},
    )
    assert seen[1][0] == "application/x-www-form-urlencoded"
    assert seen[1][2] == {"list": tricky}


async def test_client_is_a_source(nbia_server: FakeNbiaServer) -> None:
    """NbiaClient satisfies the Source protocol: resolve and search."""
    uid = nbia_server.archive.series[0].uid
    async with open_client(nbia_server.v4_url) as client:
        source: Source = client
        found, missing = await source.resolve([uid, UNKNOWN_UID])
        assert ([s.SeriesInstanceUID for s in found], missing) == ([uid], [UNKNOWN_UID])
        assert [s.SeriesInstanceUID for s in await source.search(SeriesQuery(series_uid=uid))] == [
            uid
        ]


# --------------------------------------------------------------------------- retries, backoff


@asynccontextmanager
async def flaky_server() -> AsyncIterator[tuple[str, list[int]]]:
    """A tiny NBIA-like server, in the test's own loop, whose getCollectionValues answers 503
    (Retry-After: 2), then 500, then the values."""
    answers: list[tuple[int, dict[str, str]]] = [(503, {"Retry-After": "2"}), (500, {})]
    hits: list[int] = []

    async def handler(request: web.Request) -> web.Response:
        hits.append(len(hits))
        if answers:
            status, headers = answers.pop(0)
            return web.Response(status=status, text="Error: busy", headers=headers)
        return web.json_response([{"Collection": "A"}, {"Collection": "B"}])

    app = web.Application()
    app.router.add_get("/nbia-api/services/v4/getCollectionValues", handler)
    async with tiny_server(app) as url:
        yield url, hits


@asynccontextmanager
async def tiny_server(app: web.Application) -> AsyncIterator[str]:
    """``app`` served on 127.0.0.1 in the test's own loop, for the block: its v4 base URL."""
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        host, port = runner.addresses[0][:2]
        yield f"http://{host}:{port}/nbia-api/services/v4/"
    finally:
        await runner.cleanup()


async def test_5xx_is_retried_and_retry_after_honoured() -> None:
    """503 (Retry-After: 2) then 500 then 200: three tries, the first wait is the server's 2 s."""
    sleep = SleepRecorder()
    policy = RetryPolicy(attempts=4, base=0.01, cap=0.05)
    async with (
        flaky_server() as (url, hits),
        open_client(url, policy=policy, sleep=sleep, rand=lambda: 1.0) as client,
    ):
        assert await client.collections() == ["A", "B"]
    assert len(hits) == 3
    # the retry delay honours Retry-After; the 503 also paused the whole host for 2 s
    assert 2.0 in sleep.calls
    assert all(c <= 2.0 for c in sleep.calls)


async def test_retries_are_capped(nbia_server: FakeNbiaServer) -> None:
    """When every try fails, the client gives up after ``attempts`` with a TransientError."""
    async with open_client(
        nbia_server.root_url + "/nbia-api/services/v9/",  # 404s: not retried
        policy=RetryPolicy(attempts=3, base=0.0),
    ) as client:
        with pytest.raises(Exception) as info:
            await client.collections()
    assert not isinstance(info.value, TransientError)
    async with open_client(
        "http://127.0.0.1:9/nbia-api/services/v4/",  # nothing listens on the discard port
        policy=RetryPolicy(attempts=3, base=0.0),
        sleep=SleepRecorder(),
    ) as client:
        with pytest.raises(TransientError, match="getCollectionValues"):
            await client.collections()


async def test_rate_limit_on_a_zip_pauses_the_whole_host(nbia_server: FakeNbiaServer) -> None:
    """A 429 on getImage raises TransientError(retry_after) and the shared host backoff waits."""
    uid = nbia_server.archive.series[0].uid
    nbia_server.faults.script(uid, Fault.rate_limited(retry_after=3))
    backoff = HostBackoff()
    async with open_client(nbia_server.v4_url, backoff=backoff) as client:
        with pytest.raises(TransientError) as info:
            async with client.open_image(uid):
                pass
    assert info.value.status == 429 and info.value.retry_after == 3.0
    assert 2.0 < backoff.wait_time(time.monotonic()) <= 3.0


async def test_500_on_a_zip_is_transient_with_the_server_text(nbia_server: FakeNbiaServer) -> None:
    """A 500 on getImage is a TransientError carrying an excerpt of the server's text."""
    uid = nbia_server.archive.series[0].uid
    nbia_server.faults.script(uid, Fault.http_status(500))
    async with open_client(nbia_server.v4_url) as client:
        with pytest.raises(TransientError, match="Unable to process") as info:
            async with client.open_image(uid):
                pass
    assert info.value.status == 500


# --------------------------------------------------------------------------- timeouts


async def test_stalled_zip_times_out_quickly(nbia_server: FakeNbiaServer) -> None:
    """A body that stalls longer than the read timeout raises TransientError, not a hang."""
    uid = nbia_server.archive.series[0].uid
    nbia_server.faults.script(uid, Fault.stall(seconds=30, at_offset=100))
    settings = HttpSettings(connect_timeout=2, read_timeout=0.3)
    started = time.monotonic()
    async with open_client(nbia_server.v4_url, settings=settings) as client:
        with pytest.raises(TransientError, match="timed out"):
            async with client.open_image(uid) as resp:
                async for _ in resp.chunks():
                    pass
    assert time.monotonic() - started < 5


async def test_slow_metadata_answer_times_out_quickly(nbia_server: FakeNbiaServer) -> None:
    """A metadata answer slower than the read timeout is a TransientError after the retries."""
    nbia_server.first_byte_delay = 1.0
    settings = HttpSettings(connect_timeout=2, read_timeout=0.2)
    started = time.monotonic()
    async with open_client(
        nbia_server.v4_url, settings=settings, policy=RetryPolicy(attempts=2, base=0.0)
    ) as client:
        with pytest.raises(TransientError, match="timed out"):
            await client.collections()
    assert time.monotonic() - started < 3


async def test_reset_mid_zip_is_transient(nbia_server: FakeNbiaServer) -> None:
    """A connection reset in the middle of a ZIP raises TransientError from chunks()."""
    uid = nbia_server.archive.series[0].uid
    nbia_server.faults.script(uid, Fault.reset(at_fraction=0.5))
    async with open_client(nbia_server.v4_url) as client:
        with pytest.raises(TransientError):
            async with client.open_image(uid) as resp:
                async for _ in resp.chunks():
                    pass


# --------------------------------------------------------------------------- auth


def v2(server: FakeNbiaServer) -> str:
    return server.root_url + "/nbia-api/services/v2/"


async def test_v2_without_credentials_is_an_auth_error(auth_server: FakeNbiaServer) -> None:
    """v2 demands a token: without credentials the client raises AuthError."""
    async with open_client(v2(auth_server)) as client:
        with pytest.raises(AuthError):
            await client.collections()


async def test_v2_with_credentials_works(auth_server: FakeNbiaServer) -> None:
    """With credentials the client signs in once and v2's legacy columns map onto v4 fields."""
    creds = Credentials(USER, PASSWORD)
    async with open_client(v2(auth_server), credentials=creds) as client:
        assert await client.collections() == ["DEMO-CT"]
        series = await client.series(SeriesQuery(collection="DEMO-CT"))
    assert all(s.MaxSubmissionTimestamp is not None for s in series)  # from v2's TimeStamp
    assert all(s.DataDescriptionURI for s in series)  # from v2's CollectionURI
    tokens = auth_server.log.for_endpoint("token")
    assert [t.form["grant_type"] for t in tokens] == ["password"]
    assert all(r.authorization for r in auth_server.log.records if r.endpoint != "token")


async def test_wrong_password_is_an_auth_error_without_the_password(
    auth_server: FakeNbiaServer,
) -> None:
    """Refused credentials raise AuthError whose text never holds the password."""
    creds = Credentials(USER, "wrong-" + PASSWORD)
    async with open_client(v2(auth_server), credentials=creds) as client:
        with pytest.raises(AuthError) as info:
            await client.collections()
    text = f"{info.value} {info.value!r} {info.value.url} {creds!r}"
    assert PASSWORD not in text


async def test_token_expiry_triggers_refresh(auth_server: FakeNbiaServer) -> None:
    """A token past ``expires_in`` is refreshed with grant_type=refresh_token before use."""
    creds = Credentials(USER, PASSWORD)
    async with open_client(v2(auth_server), credentials=creds, margin=0.0) as client:
        await client.collections()
        await anyio.sleep(0.6)
        await client.collections()
    grants = [t.form["grant_type"] for t in auth_server.log.for_endpoint("token")]
    assert grants == ["password", "refresh_token"]
    assert all(r.status == 200 for r in auth_server.log.records)


async def test_401_triggers_one_reauthentication(auth_server: FakeNbiaServer) -> None:
    """When the server refuses a token the client still trusts, it signs in again once."""
    creds = Credentials(USER, PASSWORD)
    frozen = time.monotonic()
    async with open_client(
        v2(auth_server), credentials=creds, margin=0.0, auth_clock=lambda: frozen
    ) as client:
        await client.collections()
        await anyio.sleep(0.6)  # the server's token expires; the client's clock says it has not
        assert await client.collections() == ["DEMO-CT"]
    statuses = [(r.endpoint, r.status) for r in auth_server.log.records]
    assert statuses == [
        ("token", 200),
        ("getCollectionValues", 200),
        ("getCollectionValues", 401),
        ("token", 200),
        ("getCollectionValues", 200),
    ]


async def test_password_never_reaches_log_or_errors(auth_server: FakeNbiaServer) -> None:
    """The password is in no logged request (path, query, form) and in no repr."""
    creds = Credentials(USER, PASSWORD)
    async with open_client(v2(auth_server), credentials=creds) as client:
        await client.collections()
        with pytest.raises(UnknownSeriesError) as info:
            await client.series_size(UNKNOWN_UID)
        reprs = f"{client!r} {creds!r} {client._auth!r} {info.value}"
    assert PASSWORD not in str(auth_server.log.to_dict())
    assert PASSWORD not in reprs
