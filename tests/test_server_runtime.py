"""Tokens, the request log, distant-server imitation, archives and the ways to run the server."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
import warnings
from pathlib import Path

import aiohttp
import pydicom
import pytest

from bulkdl.testing import ArchiveSpec, FakeArchive, FakeNbiaServer, run_in_thread, serve_forever
from bulkdl.testing.archive import AWKWARD_VALUES

pytestmark = pytest.mark.anyio
TOKEN_FORM = {
    "username": "nbia_guest",
    "password": "",
    "client_id": "NBIA",
    "grant_type": "password",
}


async def test_v2_needs_a_live_token(small_archive: FakeArchive) -> None:
    """v2: no token 401, token 200, expired token 401; a refresh grant gives a working token."""
    async with FakeNbiaServer(small_archive, token_lifetime=0.4) as server:
        v2 = server.root_url + "/nbia-api/services/v2/getCollectionValues"
        async with aiohttp.ClientSession() as session:
            async with session.get(v2) as r:
                assert r.status == 401
            async with session.post(
                server.root_url + "/nbia-api/oauth/token", data=TOKEN_FORM
            ) as r:
                token = await r.json()
            assert token["token_type"] == "bearer"
            assert {"access_token", "expires_in", "refresh_token", "refresh_expires_in"} <= set(
                token
            )
            auth = {"Authorization": f"Bearer {token['access_token']}"}
            async with session.get(v2, headers=auth) as r:
                assert r.status == 200
            await asyncio.sleep(0.5)
            async with session.get(v2, headers=auth) as r:
                assert r.status == 401
            refresh = {"client_id": "NBIA", "grant_type": "refresh_token"}
            refresh["refresh_token"] = token["refresh_token"]
            url = server.root_url + "/nbia-api/services/oauth/token"
            async with session.post(url, data=refresh) as r:
                fresh = await r.json()
            async with session.get(
                v2, headers={"Authorization": f"Bearer {fresh['access_token']}"}
            ) as r:
                assert r.status == 200
        assert all("Bearer" not in json.dumps(rec.form) for rec in server.log.records)
        grants = [r.form for r in server.log.for_endpoint("token") if "password" in r.form]
        assert grants and all(form["password"] == "***" for form in grants)


async def test_bad_password_and_logout(small_archive: FakeArchive) -> None:
    """A wrong password is refused; after logout the token stops working."""
    async with FakeNbiaServer(small_archive) as server, aiohttp.ClientSession() as session:
        token_url = server.root_url + "/nbia-api/oauth/token"
        async with session.post(token_url, data={**TOKEN_FORM, "username": "x"}) as r:
            assert r.status == 401
        async with session.post(token_url, data=TOKEN_FORM) as r:
            auth = {"Authorization": f"Bearer {(await r.json())['access_token']}"}
        async with session.post(server.root_url + "/nbia-api/logout", headers=auth) as r:
            assert r.status == 200
        async with session.get(server.v4_url + "getCollectionValues", headers=auth) as r:
            assert r.status == 401


def test_request_log_records_what_was_asked(nbia_server: FakeNbiaServer) -> None:
    """Each request is logged with version, endpoint, query, status and whether auth was sent."""
    url = nbia_server.v4_url + "getSeries?Collection=DEMO-CT&format=csv"
    request = urllib.request.Request(url, headers={"Authorization": "Bearer nope"})
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(request, timeout=5)
    with urllib.request.urlopen(url, timeout=5) as resp:
        assert resp.status == 200
    first, second = nbia_server.log.records
    assert (first.version, first.endpoint, first.status, first.authorization) == (
        "v4",
        "getSeries",
        401,
        True,
    )
    assert second.query == {"Collection": "DEMO-CT", "format": "csv"}
    assert (second.status, second.authorization) == (200, False)
    assert nbia_server.log.count("getSeries") == 2
    nbia_server.reset_log()
    assert nbia_server.log.records == []


@pytest.fixture(scope="module")
def big_archive(tmp_path_factory: pytest.TempPathFactory) -> FakeArchive:
    """One series of four 512x512 CT images (about 1.2 MB zipped)."""
    spec = ArchiveSpec(patients_per_collection=1, series_per_study=1, images_per_series=4, seed=3)
    return FakeArchive.build(spec, tmp_path_factory.mktemp("big"))


async def test_bandwidth_cap_and_first_byte_delay(big_archive: FakeArchive) -> None:
    """A 1 MB/s cap slows a ~1.2 MB ZIP to over a second; first_byte_delay delays the answer."""
    uid = big_archive.series[0].uid
    async with FakeNbiaServer(big_archive) as server, aiohttp.ClientSession() as session:
        url, params = server.v4_url + "getImage", {"SeriesInstanceUID": uid}
        async with session.get(url, params=params) as r:
            size = len(await r.read())
        server.bandwidth = 1_000_000
        started = time.monotonic()
        async with session.get(url, params=params) as r:
            assert len(await r.read()) == size
        assert time.monotonic() - started >= 0.85 * size / 1_000_000
        server.bandwidth, server.first_byte_delay = None, 0.3
        started = time.monotonic()
        async with session.get(server.v4_url + "getCollectionValues") as r:
            await r.read()
        assert time.monotonic() - started >= 0.3


def test_zip_compresses_like_ct(big_archive: FakeArchive) -> None:
    """512x512 synthetic CT compresses to 50-70 % of its size, as real CT does."""
    from bulkdl.testing.zips import ZipCache, ZipVariant

    series = big_archive.series[0]
    assert big_archive.root is not None
    path, _ = ZipCache(big_archive, big_archive.root / "zips").get(series, ZipVariant())
    assert 0.5 <= path.stat().st_size / int(series.row["FileSize"]) <= 0.7


def test_awkward_values_all_appear(awkward_archive: FakeArchive) -> None:
    """Every awkward value shows up in some PatientID, description or name, and in the files."""
    seen: set[str] = set()
    for s in awkward_archive.series:
        seen |= {str(s.row.get(k, "")) for k in ("PatientID", "SeriesDescription", "StudyDesc")}
    seen |= {str(p.get("PatientName", "")) for p in awkward_archive.patients}
    assert set(AWKWARD_VALUES) <= seen
    long_one = next(
        s for s in awkward_archive.series if s.row.get("SeriesDescription") == "L" * 300
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns that a 300-byte LO breaks the standard
        ds = pydicom.dcmread(awkward_archive.file_path(long_one.instances[0]))
        assert ds.SeriesDescription == "L" * 300
        assert ds.PatientID == long_one.patient_id


def test_archive_is_deterministic_and_cached(tmp_path: Path) -> None:
    """The same spec gives the same UIDs and bytes; a second build reuses the cache."""
    spec = ArchiveSpec(images_per_series=2, rows=16, columns=16, seed=5)
    a = FakeArchive.build(spec, tmp_path / "a")
    b = FakeArchive.build(spec, tmp_path / "b")
    assert [(s.uid, [i.md5 for i in s.instances]) for s in a.series] == [
        (s.uid, [i.md5 for i in s.instances]) for s in b.series
    ]
    assert a.root is not None
    stamp = (a.root / "index.json").stat().st_mtime_ns
    assert FakeArchive.build(spec, tmp_path / "a").series == a.series
    assert (a.root / "index.json").stat().st_mtime_ns == stamp


def test_metadata_only_archive_is_fast_and_has_no_images() -> None:
    """A metadata-only archive of 20,000 series builds in seconds; getImage says it has no files."""
    spec = ArchiveSpec(patients_per_collection=2500, series_per_study=8, metadata_only=True)
    started = time.monotonic()
    archive = FakeArchive.build(spec)
    assert time.monotonic() - started < 5
    assert len(archive.series) == 20_000
    assert all(
        int(s.row["FileSize"]) > int(s.row["ImageCount"]) * 512 * 512 for s in archive.series[:50]
    )
    with run_in_thread(FakeNbiaServer(archive)) as server:
        url = server.v4_url + "getImage?SeriesInstanceUID=" + archive.series[0].uid
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(url, timeout=5)
        assert info.value.code == 500


async def test_serve_forever_reports_its_url(small_spec: ArchiveSpec, tmp_path: Path) -> None:
    """serve_forever builds the archive, calls on_ready with the URL, and stops on cancel."""
    ready: asyncio.Queue[str] = asyncio.Queue()
    task = asyncio.create_task(
        serve_forever(small_spec, cache_dir=tmp_path, on_ready=ready.put_nowait)
    )
    url = await asyncio.wait_for(ready.get(), 30)
    async with (
        aiohttp.ClientSession() as session,
        session.get(url + "/nbia-api/services/v4/getCollectionValues") as r,
    ):
        assert await r.json() == [{"Collection": "DEMO-CT"}]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
