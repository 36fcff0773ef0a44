"""Every injected server fault at every phase it can strike, transient and persistent.

bulkdl runs as a real subprocess against the fake NBIA server on 127.0.0.1. A transient fault
(first attempt only) must cost exactly one refetch and leave the tree a clean run would; a
persistent one must fail that series alone, by name and with a reason, keep it out of the tree,
and place every other series. Faults on the metadata endpoints are retried, and when they
persist end the run with one clear line and exit 3.
"""

from __future__ import annotations

import json
import re
import subprocess
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest

from bulkdl.errors import SourceError
from bulkdl.retry import RetryPolicy
from bulkdl.sources.http import HttpSettings
from bulkdl.sources.nbia import SeriesQuery
from bulkdl.sources.nbia_client import open_client
from bulkdl.testing import (
    ArchiveSpec,
    FakeArchive,
    FakeNbiaServer,
    Fault,
    FaultPlan,
    run_in_thread,
)
from tests.helpers import (
    download,
    expected_tree,
    failures,
    get_images,
    manifest,
    no_leftovers,
    only_inside,
    tree,
)

MD5 = "md5hashes.csv"
FAST = ("--retries", "1", "--read-timeout", "1")
MakeFault = Callable[[list[str]], Fault]

# (id, fault for its series given the clean series' UIDs, what a persistent failure's reason says)
IMAGE_FAULTS: list[tuple[str, MakeFault, str]] = [
    # before the headers
    ("500", lambda u: Fault.http_status(500), r"HTTP 500"),
    ("503", lambda u: Fault.http_status(503), r"HTTP 503"),
    ("429-retry-after", lambda u: Fault.rate_limited(1), r"HTTP 429"),
    ("reset-before-headers", lambda u: Fault.reset(before_headers=True), r"disconnected|reset"),
    ("stall-before-headers", lambda u: Fault.stall(before_headers=True), r"timed out"),
    # mid-body
    ("reset-mid", lambda u: Fault.reset(at_fraction=0.5), r"reset|cut short|disconnected"),
    ("stall-mid", lambda u: Fault.stall(at_fraction=0.5), r"timed out"),
    ("corrupt-mid", lambda u: Fault.corrupt(at_fraction=0.5), r"CRC|inflate|damaged"),
    ("truncate-mid", lambda u: Fault.truncate(at_fraction=0.5), r"ZIP truncated"),
    # inside the trailing md5hashes.csv
    ("reset-md5", lambda u: Fault.reset(in_entry=MD5), r"reset|cut short|disconnected"),
    ("stall-md5", lambda u: Fault.stall(in_entry=MD5), r"timed out"),
    ("corrupt-md5", lambda u: Fault.corrupt(in_entry=MD5), rf"{MD5}"),
    ("truncate-md5", lambda u: Fault.truncate(in_entry=MD5), r"ZIP truncated"),
    # the whole body
    ("short-zip", lambda u: Fault.short_zip(keep=1), r"expected \d+ images, got 1\b"),
    ("not-zip", lambda u: Fault.not_zip(), r"not a ZIP archive"),
    ("empty-series", lambda u: Fault.empty_series(), r"expected \d+ images, got 0\b"),
    ("hostile-names", lambda u: Fault.hostile_names(), r"hostile member name"),
    ("wrong-series", lambda u: Fault.wrong_series(u[0]), r"belongs to series"),
]


@pytest.fixture(scope="module")
def matrix_archive(tmp_path_factory: pytest.TempPathFactory) -> FakeArchive:
    """One series per image fault and four clean ones, 2-3 tiny images each."""
    spec = ArchiveSpec(
        patients_per_collection=len(IMAGE_FAULTS) + 4,
        studies_per_patient=1,
        series_per_study=1,
        images_per_series=(2, 3),
        rows=16,
        columns=16,
        seed=23,
    )
    return FakeArchive.build(spec, tmp_path_factory.mktemp("matrix-cache"))


@dataclass(frozen=True)
class MatrixRun:
    """One bulkdl run over the matrix archive, every image fault on a series of its own."""

    server: FakeNbiaServer
    result: subprocess.CompletedProcess[str]
    out: Path
    target: dict[str, str]  # fault id -> its series
    clean: list[str]
    uids: list[str]


def _matrix_run(
    archive: FakeArchive, folder: Path, plan: Callable[[FakeNbiaServer, str, Fault], None]
) -> Iterator[MatrixRun]:
    uids = [s.uid for s in archive.series]
    target = {fid: uids[n] for n, (fid, _, _) in enumerate(IMAGE_FAULTS)}
    clean = uids[len(IMAGE_FAULTS) :]
    with run_in_thread(FakeNbiaServer(archive)) as server:
        for fid, make, _ in IMAGE_FAULTS:
            plan(server, target[fid], make(clean))
        out = folder / "out"
        result = download(server, out, str(manifest(folder, uids)), options=FAST)
        yield MatrixRun(server, result, out, target, clean, uids)


@pytest.fixture(scope="module")
def transient(
    matrix_archive: FakeArchive, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MatrixRun]:
    """The matrix with each fault on its series' first attempt only."""
    folder = tmp_path_factory.mktemp("transient")
    yield from _matrix_run(matrix_archive, folder, lambda s, uid, f: s.faults.script(uid, f))


@pytest.fixture(scope="module")
def persistent(
    matrix_archive: FakeArchive, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MatrixRun]:
    """The matrix with each fault on every attempt of its series."""
    folder = tmp_path_factory.mktemp("persistent")
    yield from _matrix_run(matrix_archive, folder, lambda s, uid, f: s.faults.always(uid, f))


def test_transient_faults_leave_a_clean_tree(transient: MatrixRun) -> None:
    """With every fault kind striking once, the run exits 0 and the tree is a clean run's."""
    assert transient.result.returncode == 0, transient.result.stderr
    assert tree(transient.out) == expected_tree(transient.server.archive)
    assert failures(transient.out) == {}
    assert all(get_images(transient.server, u) == 1 for u in transient.clean)
    no_leftovers(transient.out)
    only_inside(transient.out.parent, transient.out, transient.out.parent / "m.tcia")


@pytest.mark.parametrize("fid", [fid for fid, _, _ in IMAGE_FAULTS])
def test_transient_fault_costs_one_refetch(transient: MatrixRun, fid: str) -> None:
    """A fault on a series' first attempt only costs exactly one more getImage of it."""
    assert get_images(transient.server, transient.target[fid]) == 2


def test_persistent_faults_fail_only_their_series(persistent: MatrixRun) -> None:
    """With every fault kind on every attempt, exactly those series fail (exit 1) and every
    other series is placed; nothing of a failed series enters the tree or lands outside it."""
    assert persistent.result.returncode == 1, persistent.result.stderr
    assert "Traceback" not in persistent.result.stderr
    assert set(failures(persistent.out)) == set(persistent.target.values())
    assert tree(persistent.out) == expected_tree(persistent.server.archive, persistent.clean)
    no_leftovers(persistent.out)
    only_inside(persistent.out.parent, persistent.out, persistent.out.parent / "m.tcia")


@pytest.mark.parametrize(
    ("fid", "reason"), [pytest.param(fid, r, id=fid) for fid, _, r in IMAGE_FAULTS]
)
def test_persistent_fault_is_named_with_its_reason(
    persistent: MatrixRun, fid: str, reason: str
) -> None:
    """A series failing on every attempt is named in stderr and failures.csv, saying why."""
    uid = persistent.target[fid]
    why = failures(persistent.out)[uid]
    assert re.search(reason, why), why
    named = [line for line in persistent.result.stderr.splitlines() if uid in line]
    assert named and any(re.search(reason, line) for line in named), persistent.result.stderr
    # aiohttp itself resends a GET once when a reused keep-alive connection drops before any
    # byte of the answer, so a reset before the headers may be asked twice per attempt.
    per_attempt = 2 if fid == "reset-before-headers" else 1
    assert 2 <= get_images(persistent.server, uid) <= 2 * per_attempt


# --------------------------------------------------------------------------- metadata endpoints

METADATA_FAULTS: list[tuple[str, Fault]] = [
    ("500", Fault.http_status(500)),
    ("429-retry-after", Fault.rate_limited(1)),
    ("reset-before-headers", Fault.reset(before_headers=True)),
    ("reset-mid", Fault.reset(at_fraction=0.5)),
    ("stall-before-headers", Fault.stall(before_headers=True)),
    ("stall-mid", Fault.stall(at_fraction=0.5)),
    ("truncated", Fault.truncate(at_fraction=0.5)),
    ("html-200", Fault.html_page()),
]
# getSeriesMetadata resolves a manifest; getSeries answers a query (--patient-id).
ENDPOINTS = ["getSeriesMetadata", "getSeries"]


def test_transient_metadata_faults_are_retried(matrix_archive: FakeArchive, tmp_path: Path) -> None:
    """Every metadata fault kind striking one getSeriesMetadata batch each is retried; the run
    completes with the whole tree."""
    uids = [s.uid for s in matrix_archive.series[: len(METADATA_FAULTS)]]
    config = tmp_path / "batch1.toml"
    config.write_text("[download]\nmetadata_batch = 1\n")
    out = tmp_path / "out"
    with run_in_thread(FakeNbiaServer(matrix_archive)) as server:
        # batch n's first request gets fault n, its retry is clean
        server.faults.endpoint(
            "getSeriesMetadata", *(x for _, f in METADATA_FAULTS for x in (f, None))
        )
        result = download(
            server, out, str(manifest(tmp_path, uids)), options=(*FAST, "--config", str(config))
        )
        assert result.returncode == 0, result.stderr
        assert server.log.count("getSeriesMetadata") == 2 * len(uids)
        assert tree(out) == expected_tree(matrix_archive, uids)


@pytest.mark.anyio
@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_transient_metadata_fault_each_kind(
    nbia_server: FakeNbiaServer, endpoint: str
) -> None:
    """Each metadata fault kind, once, costs the client exactly one more request and the answer
    is the clean one."""
    uids = [s.uid for s in nbia_server.archive.series]
    settings = HttpSettings(read_timeout=0.5)
    async with open_client(nbia_server.v4_url, settings=settings) as client:
        client.policy = RetryPolicy(base=0.01)
        for fid, fault in METADATA_FAULTS:
            nbia_server.faults.endpoint(endpoint, fault)
            before = nbia_server.log.count(endpoint)
            if endpoint == "getSeries":
                found = [s.SeriesInstanceUID for s in await client.series(SeriesQuery())]
            else:
                found = [s.SeriesInstanceUID for s in (await client.series_metadata(uids))[0]]
            assert found == uids, fid
            # a stalled answer is logged when the server notices the client left
            await _settle(lambda n=before: nbia_server.log.count(endpoint) - n >= 2)
            assert nbia_server.log.count(endpoint) - before == 2, fid


async def _settle(done: Callable[[], bool]) -> None:
    """Wait (up to 2 s) until ``done()``."""
    with anyio.move_on_after(2):
        # the log is another thread's list: nothing to wait on but the clock
        while not done():  # noqa: ASYNC110
            await anyio.sleep(0.02)


@pytest.mark.anyio
@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("fault", [pytest.param(f, id=i) for i, f in METADATA_FAULTS])
async def test_persistent_metadata_fault_gives_up(
    nbia_server: FakeNbiaServer, endpoint: str, fault: Fault
) -> None:
    """A metadata call that keeps failing is tried a bounded number of times, then raises a
    SourceError naming the endpoint (what the CLI turns into exit 3)."""
    settings = HttpSettings(read_timeout=0.3)
    nbia_server.faults.endpoint_always(endpoint, fault)
    async with open_client(nbia_server.v4_url, settings=settings) as client:
        client.policy = RetryPolicy(base=0.01, max_retry_after=0.05)
        with pytest.raises(SourceError, match=endpoint):
            if endpoint == "getSeries":
                await client.series(SeriesQuery())
            else:
                await client.series_metadata([nbia_server.archive.series[0].uid])
    assert 2 <= nbia_server.log.count(endpoint) <= 2 * client.policy.attempts


@pytest.mark.parametrize(
    ("endpoint", "fault"),
    [
        pytest.param("getSeriesMetadata", Fault.http_status(500), id="getSeriesMetadata-500"),
        pytest.param("getSeriesMetadata", Fault.truncate(), id="getSeriesMetadata-truncated"),
        pytest.param("getSeries", Fault.html_page(), id="getSeries-html-200"),
    ],
)
def test_persistent_metadata_fault_aborts_run(
    nbia_server: FakeNbiaServer, tmp_path: Path, endpoint: str, fault: Fault
) -> None:
    """A metadata call that keeps failing ends the run: one line naming it, exit 3, no tree."""
    out = tmp_path / "out"
    first = nbia_server.archive.series[0]
    if endpoint == "getSeries":
        inputs = ["--patient-id", first.patient_id]
    else:
        inputs = [str(manifest(tmp_path, [first.uid]))]
    nbia_server.faults.endpoint_always(endpoint, fault)
    result = download(nbia_server, out, *inputs, options=FAST)
    assert result.returncode == 3, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("bulkdl: error:")]
    assert len(errors) == 1 and endpoint in errors[0], result.stderr
    assert nbia_server.log.count(endpoint) >= 2
    assert get_images(nbia_server) == 0
    assert tree(out) == {}


def test_endpoint_faults_over_admin_route_and_file(
    nbia_server: FakeNbiaServer, tmp_path: Path
) -> None:
    """Endpoint fault plans round-trip through a plan file and the admin route."""
    plan = FaultPlan()
    plan.endpoint("getSeries", Fault.rate_limited(1), None, Fault.truncate(at_offset=10))
    plan.endpoint_always("getSeriesMetadata", Fault.stall(2, before_headers=True))
    (tmp_path / "plan.json").write_text(json.dumps(plan.to_dict()))
    assert FaultPlan.load(tmp_path / "plan.json").to_dict() == plan.to_dict()
    request = urllib.request.Request(
        nbia_server.root_url + "/_fake/faults",
        data=json.dumps(plan.to_dict()).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert json.loads(answer.read()) == plan.to_dict()
    assert nbia_server.faults.to_dict() == plan.to_dict()
    with pytest.raises(ValueError, match="only applies to getImage"):
        plan.endpoint("getSeries", Fault.short_zip())
