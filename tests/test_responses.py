"""Answers that are not what the endpoint promises: wrong labels, wrong bodies, cut bodies, and
very large ones, over real HTTP against the fake NBIA server."""

from __future__ import annotations

import re
import time
from pathlib import Path

import anyio
import pytest

from bulkdl.errors import ResponseError, SourceError
from bulkdl.retry import RetryPolicy
from bulkdl.sources.http import HttpSettings
from bulkdl.sources.nbia import SeriesQuery
from bulkdl.sources.nbia_client import open_client
from bulkdl.testing import ArchiveSpec, FakeArchive, FakeNbiaServer, Fault, run_in_thread
from tests.helpers import download, expected_tree, failures, get_images, manifest, tree

QUICK = RetryPolicy(base=0.01)


@pytest.fixture
def uids(nbia_server: FakeNbiaServer) -> list[str]:
    """Two series of the small archive."""
    return [s.uid for s in nbia_server.archive.series[:2]]


def test_zip_labelled_text_plain_is_accepted(
    nbia_server: FakeNbiaServer, tmp_path: Path, uids: list[str]
) -> None:
    """A valid ZIP under a wrong Content-Type (text/plain) is judged by its bytes: it is
    accepted, verified and placed, with no refetch (the label is not what bulkdl trusts)."""
    out = tmp_path / "out"
    nbia_server.faults.always(uids[0], Fault.wrong_content_type("text/plain"))
    result = download(nbia_server, out, str(manifest(tmp_path, uids)), options=("--retries", "1"))
    assert result.returncode == 0, result.stderr
    assert tree(out) == expected_tree(nbia_server.archive, uids)
    assert get_images(nbia_server, uids[0]) == 1


@pytest.mark.parametrize("persistent", [False, True], ids=["once", "always"])
def test_json_instead_of_zip(
    nbia_server: FakeNbiaServer, tmp_path: Path, uids: list[str], persistent: bool
) -> None:
    """A 200 JSON body where the ZIP should be is refetched; when it persists the series fails
    saying the body is not a ZIP, and nothing of it is placed."""
    out = tmp_path / "out"
    fault = Fault.body('{"error":"Series not available"}', "application/json")
    if persistent:
        nbia_server.faults.always(uids[0], fault)
    else:
        nbia_server.faults.script(uids[0], fault)
    result = download(nbia_server, out, str(manifest(tmp_path, uids)), options=("--retries", "1"))
    assert get_images(nbia_server, uids[0]) == 2
    if not persistent:
        assert result.returncode == 0, result.stderr
        assert tree(out) == expected_tree(nbia_server.archive, uids)
        return
    assert result.returncode == 1, result.stderr
    reason = failures(out)[uids[0]]
    assert "not a ZIP archive" in reason and "error" in reason
    assert tree(out) == expected_tree(nbia_server.archive, uids[1:])


@pytest.mark.anyio
@pytest.mark.parametrize("endpoint", ["getSeriesMetadata", "getSeries"])
async def test_html_error_page_on_metadata_is_named(
    nbia_server: FakeNbiaServer, endpoint: str
) -> None:
    """An HTML page with status 200 on a metadata endpoint is refused, saying it was HTML."""
    nbia_server.faults.endpoint_always(endpoint, Fault.html_page())
    async with open_client(nbia_server.v4_url) as client:
        client.policy = QUICK
        with pytest.raises(
            ResponseError, match=rf"{endpoint}: expected JSON or CSV, got text/html"
        ):
            if endpoint == "getSeries":
                await client.series(SeriesQuery())
            else:
                await client.series_metadata([nbia_server.archive.series[0].uid])


@pytest.mark.anyio
@pytest.mark.parametrize("fraction", [0.2, 0.45, 0.7, 0.97])
async def test_truncated_json_is_refused(nbia_server: FakeNbiaServer, fraction: float) -> None:
    """getSeries JSON cut short (a well-formed 200) is an error naming truncated JSON."""
    nbia_server.faults.endpoint_always("getSeries", Fault.truncate(at_fraction=fraction))
    async with open_client(nbia_server.v4_url) as client:
        client.policy = QUICK
        with pytest.raises(ResponseError, match="invalid or truncated JSON"):
            await client.series(SeriesQuery())


@pytest.mark.anyio
async def test_truncated_csv_never_yields_an_altered_record(nbia_server: FakeNbiaServer) -> None:
    """getSeriesMetadata CSV cut anywhere is refused, or (cut exactly at a row's end, which no
    client can tell) yields fewer rows, each exactly as the server has it: never a record with
    missing or cut values (an ImageCount of "12" for 120)."""
    uids = [s.uid for s in nbia_server.archive.series]
    async with open_client(nbia_server.v4_url) as client:
        client.policy = RetryPolicy(attempts=1)
        clean = {s.SeriesInstanceUID: s for s in (await client.series_metadata(uids))[0]}
        refused = 0
        for step in range(1, 100):
            fault = Fault.truncate(at_fraction=step / 100)
            nbia_server.faults.endpoint_always("getSeriesMetadata", fault)
            try:
                found, _ = await client.series_metadata(uids)
            except ResponseError as exc:
                assert re.search(r"getSeriesMetadata: (malformed CSV|CSV record)", str(exc))
                refused += 1
                continue
            assert all(s == clean[s.SeriesInstanceUID] for s in found), step
    assert refused > 90


@pytest.fixture(scope="module")
def huge_server() -> FakeNbiaServer:
    """A metadata-only archive of 50,000 series (rows only, no files)."""
    spec = ArchiveSpec(
        collections=("HUGE",),
        patients_per_collection=5_000,
        studies_per_patient=1,
        series_per_study=10,
        metadata_only=True,
        seed=5,
    )
    return FakeNbiaServer(FakeArchive.build(spec))


@pytest.mark.anyio
async def test_huge_series_listing(huge_server: FakeNbiaServer) -> None:
    """A getSeries answer of 50,000 rows is read whole and parsed in bounded time."""
    with run_in_thread(huge_server) as server:
        started = time.monotonic()
        async with open_client(server.v4_url) as client:
            found = await client.series(SeriesQuery(collection="HUGE"))
        elapsed = time.monotonic() - started
    assert len(found) == 50_000
    assert len({s.SeriesInstanceUID for s in found}) == 50_000
    assert all(s.ImageCount for s in found[:100])
    assert elapsed < 60, elapsed


@pytest.mark.anyio
@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_body_over_max_body_is_a_clear_error(
    huge_server: FakeNbiaServer, chunked: bool
) -> None:
    """An answer larger than the client's body guard fails with a ResponseError saying so
    (asked once, not retried), never a MemoryError, whether or not its size was announced."""
    if chunked:
        # a stall of 10 ms makes the server stream the answer chunked, without Content-Length
        huge_server.faults.endpoint_always("getSeries", Fault.stall(0.01, at_fraction=0.99))
    huge_server.reset_log()
    with run_in_thread(huge_server) as server:
        async with open_client(server.v4_url, settings=HttpSettings(max_body=1 << 20)) as client:
            with pytest.raises(SourceError, match="larger than 1048576 bytes"):
                await client.series(SeriesQuery(collection="HUGE"))
        # a streamed answer is logged once the server sees the client gone
        with anyio.move_on_after(2):
            while server.log.count("getSeries") < 1:  # noqa: ASYNC110
                await anyio.sleep(0.02)
        assert server.log.count("getSeries") == 1
    huge_server.faults.clear()
    huge_server.reset_log()
