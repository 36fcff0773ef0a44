"""Every fault kind as a client sees it, per attempt, and the fault plan's file and admin forms."""

from __future__ import annotations

import asyncio
import io
import json
import time
import zipfile
import zlib
from pathlib import Path

import aiohttp
import pytest

from bulkdl.testing import FakeNbiaServer, Fault, FaultPlan

pytestmark = pytest.mark.anyio


async def get_image(
    server: FakeNbiaServer, uid: str, **params: str
) -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession() as session:
        url = server.v4_url + "getImage"
        async with session.get(url, params={"SeriesInstanceUID": uid, **params}) as resp:
            return resp.status, dict(resp.headers), await resp.read()


async def read_until_error(server: FakeNbiaServer, uid: str) -> tuple[int, BaseException | None]:
    received = 0
    async with aiohttp.ClientSession() as session:
        try:
            async with session.get(
                server.v4_url + "getImage", params={"SeriesInstanceUID": uid}
            ) as r:
                async for chunk in r.content.iter_any():
                    received += len(chunk)
        except aiohttp.ClientError as exc:
            return received, exc
    return received, None


def uid_of(server: FakeNbiaServer, n: int = 0) -> str:
    return server.archive.series[n].uid


async def test_status_fault_and_retry_after(nbia_server: FakeNbiaServer) -> None:
    """A status fault answers that status with short text; 429 carries Retry-After."""
    uid = uid_of(nbia_server)
    nbia_server.faults.script(uid, Fault.http_status(503), Fault.rate_limited(2.5))
    status, _, body = await get_image(nbia_server, uid)
    assert status == 503 and body.startswith(b"Error:")
    status, headers, _ = await get_image(nbia_server, uid)
    assert status == 429 and headers["Retry-After"] == "3"


async def test_reset_mid_body(nbia_server: FakeNbiaServer) -> None:
    """A reset fault delivers part of the body, then the client sees a connection error."""
    uid = uid_of(nbia_server)
    nbia_server.faults.script(uid, Fault.reset(at_offset=3000))
    received, error = await read_until_error(nbia_server, uid)
    assert error is not None
    assert 0 < received <= 3000


async def test_reset_inside_md5hashes_csv(nbia_server: FakeNbiaServer) -> None:
    """A reset placed in md5hashes.csv arrives after every image was sent."""
    uid = uid_of(nbia_server)
    _, _, clean = await get_image(nbia_server, uid, IncludeMD5="Yes")
    md5_offset = clean.index(b"md5hashes.csv")  # its local header
    nbia_server.faults.script(uid, Fault.reset(at_fraction=0.5, in_entry="md5hashes.csv"))
    async with aiohttp.ClientSession() as session:
        url = nbia_server.v4_url + "getImage"
        received = b""
        with pytest.raises(aiohttp.ClientError):
            async with session.get(
                url, params={"SeriesInstanceUID": uid, "IncludeMD5": "Yes"}
            ) as r:
                async for chunk in r.content.iter_any():
                    received += chunk
    assert md5_offset < len(received) < len(clean)
    assert received == clean[: len(received)]


async def test_stall_mid_body_then_resume(nbia_server: FakeNbiaServer) -> None:
    """A finite stall sends nothing for its duration, then the rest of a valid ZIP."""
    uid = uid_of(nbia_server)
    nbia_server.faults.script(uid, Fault.stall(0.6, at_offset=2000))
    gaps = []
    async with (
        aiohttp.ClientSession() as session,
        session.get(nbia_server.v4_url + "getImage", params={"SeriesInstanceUID": uid}) as r,
    ):
        body, last = b"", time.monotonic()
        async for chunk in r.content.iter_any():
            now = time.monotonic()
            gaps.append(now - last)
            last = now
            body += chunk
    assert max(gaps) >= 0.5
    assert zipfile.ZipFile(io.BytesIO(body)).testzip() is None


async def test_endless_stall_trips_the_client_read_timeout(nbia_server: FakeNbiaServer) -> None:
    """A stall without end leaves the client waiting until its own read timeout fires."""
    uid = uid_of(nbia_server)
    nbia_server.faults.always(uid, Fault.stall(None, at_fraction=0.3))
    timeout = aiohttp.ClientTimeout(sock_read=0.4)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        with pytest.raises(asyncio.TimeoutError):
            async with session.get(
                nbia_server.v4_url + "getImage", params={"SeriesInstanceUID": uid}
            ) as r:
                await r.read()


async def test_short_zip_is_valid_with_fewer_images(nbia_server: FakeNbiaServer) -> None:
    """Silent truncation: 200, a valid ZIP, fewer images, md5hashes.csv listing only those."""
    series = nbia_server.archive.series[0]
    nbia_server.faults.script(series.uid, Fault.short_zip(keep=2))
    status, _, body = await get_image(nbia_server, series.uid, IncludeMD5="Yes")
    zf = zipfile.ZipFile(io.BytesIO(body))
    assert status == 200 and zf.testzip() is None
    images = [n for n in zf.namelist() if n.endswith(".dcm")]
    assert len(images) == 2 < int(series.row["ImageCount"])
    assert len(zf.read("md5hashes.csv").decode().splitlines()) == 3


async def test_corrupt_byte_fails_extraction(nbia_server: FakeNbiaServer) -> None:
    """A flipped byte in an image's compressed data makes extracting that image fail."""
    uid = uid_of(nbia_server)
    nbia_server.faults.script(uid, Fault.corrupt(at_fraction=0.5))
    status, _, body = await get_image(nbia_server, uid)
    zf = zipfile.ZipFile(io.BytesIO(body))
    assert status == 200
    with pytest.raises((zipfile.BadZipFile, zlib.error)):
        for name in zf.namelist():
            zf.read(name)


async def test_corrupt_md5hashes_csv_only(nbia_server: FakeNbiaServer) -> None:
    """A corrupt byte placed in md5hashes.csv spoils that entry and leaves the images intact."""
    uid = uid_of(nbia_server)
    nbia_server.faults.script(uid, Fault.corrupt(in_entry="md5hashes.csv"))
    _, _, body = await get_image(nbia_server, uid, IncludeMD5="Yes")
    zf = zipfile.ZipFile(io.BytesIO(body))
    for name in zf.namelist()[:-1]:
        zf.read(name)
    with pytest.raises((zipfile.BadZipFile, zlib.error)):
        zf.read("md5hashes.csv")


async def test_hostile_member_names(nbia_server: FakeNbiaServer) -> None:
    """A hostile-names fault puts traversal and absolute names in the ZIP."""
    uid = uid_of(nbia_server)
    nbia_server.faults.script(uid, Fault.hostile_names())
    _, _, body = await get_image(nbia_server, uid)
    names = zipfile.ZipFile(io.BytesIO(body)).namelist()
    assert {"../evil.dcm", "/abs.dcm", "..\\win.dcm", "C:/drive.dcm"} <= set(names)


async def test_not_zip_body_with_200(nbia_server: FakeNbiaServer) -> None:
    """A not-zip fault answers 200 with an HTML error page."""
    uid = uid_of(nbia_server)
    nbia_server.faults.script(uid, Fault.not_zip())
    status, headers, body = await get_image(nbia_server, uid)
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert not zipfile.is_zipfile(io.BytesIO(body))


async def test_empty_series_holds_only_license(nbia_server: FakeNbiaServer) -> None:
    """An empty-series fault answers a ZIP holding only LICENSE."""
    uid = uid_of(nbia_server)
    nbia_server.faults.script(uid, Fault.empty_series())
    _, _, body = await get_image(nbia_server, uid)
    assert zipfile.ZipFile(io.BytesIO(body)).namelist() == ["LICENSE"]


async def test_faults_follow_attempts(nbia_server: FakeNbiaServer) -> None:
    """Attempt 1 gets the scripted fault, later attempts are clean; other series are untouched."""
    uid = uid_of(nbia_server)
    nbia_server.faults.script(uid, Fault.http_status(500), None)
    assert (await get_image(nbia_server, uid))[0] == 500
    assert (await get_image(nbia_server, uid))[0] == 200
    assert (await get_image(nbia_server, uid))[0] == 200
    assert (await get_image(nbia_server, uid_of(nbia_server, 1)))[0] == 200
    assert nbia_server.faults.attempts(uid) == 3


async def test_always_faults_every_attempt(nbia_server: FakeNbiaServer) -> None:
    """always() faults every attempt; the "*" UID faults every series (an outage)."""
    nbia_server.faults.always("*", Fault.http_status(500))
    for n in (0, 1, 0):
        assert (await get_image(nbia_server, uid_of(nbia_server, n)))[0] == 500


async def test_fault_plan_over_admin_route(nbia_server: FakeNbiaServer) -> None:
    """POST /_fake/faults sets a plan; /_fake/log shows requests; /_fake/reset clears both."""
    uid = uid_of(nbia_server)
    plan = FaultPlan()
    plan.script(uid, Fault.rate_limited(1), None)
    root = nbia_server.root_url
    async with aiohttp.ClientSession() as session:
        async with session.post(root + "/_fake/faults", json=plan.to_dict()) as r:
            assert r.status == 200
        assert (await get_image(nbia_server, uid))[0] == 429
        async with session.get(root + "/_fake/log") as r:
            log = await r.json()
        assert log["counts"] == {"getImage": 1}
        assert log["records"][0]["query"] == {"SeriesInstanceUID": uid}
        async with session.post(root + "/_fake/reset") as r:
            assert r.status == 200
    assert nbia_server.log.records == [] and nbia_server.faults.attempts(uid) == 0


def test_fault_plan_loads_from_json_and_toml(tmp_path: Path) -> None:
    """A plan round-trips through JSON, and TOML files (with {kind="clean"}) load too."""
    plan = FaultPlan()
    plan.script("1.2.3", Fault.reset(at_fraction=0.25), None, Fault.short_zip(3))
    plan.always("4.5.6", Fault.rate_limited(7))
    (tmp_path / "plan.json").write_text(json.dumps(plan.to_dict()))
    assert FaultPlan.load(tmp_path / "plan.json").to_dict() == plan.to_dict()
    (tmp_path / "plan.toml").write_text(
        '[series."1.2.3"]\nscript = [{kind = "status", status = 503}, {kind = "clean"}]\n'
    )
    loaded = FaultPlan.load(tmp_path / "plan.toml")
    assert loaded.next_fault("1.2.3") == Fault.http_status(503)
    assert loaded.next_fault("1.2.3") is None
