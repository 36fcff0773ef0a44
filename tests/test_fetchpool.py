"""Series fetched in worker processes: same tree as one process, errors and cancellations cross,
a dead worker costs one attempt, and no worker outlives its run (against a real local server)."""

from __future__ import annotations

import os
import pickle
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import anyio
import pytest

from bulkdl import dicom
from bulkdl.config import AUTO_PROCESSES_MAX, Settings, load_settings
from bulkdl.cpugate import usable_cores
from bulkdl.errors import (
    AbortError,
    ArchiveError,
    InputError,
    TransientError,
    UnknownSeriesError,
)
from bulkdl.fetchpool import FetchPool, Stop, WorkerSpec, encode
from bulkdl.fetchpool import _spawn as spawn_worker
from bulkdl.records import FetchedSeries, Series
from bulkdl.testing import FakeArchive, FakeNbiaServer, run_in_thread
from bulkdl.testing.faults import Fault
from tests.helpers import bulkdl_cmd, download, expected_tree, manifest, tree

pytestmark = pytest.mark.anyio


def _spec(server: FakeNbiaServer) -> WorkerSpec:
    return WorkerSpec(
        settings=Settings(api_url=server.v4_url, read_timeout=10.0, processes=1),
        slots=1,
        log_level=30,
    )


def _series(archive: FakeArchive, index: int = 0) -> Series:
    data = archive.series[index]
    return Series(data.uid, ImageCount=len(data.instances))


async def _fetch(
    pool: FetchPool,
    series: Series,
    workdir: Path,
    on_bytes: Callable[[int], None] = lambda n: None,
) -> FetchedSeries:
    """``series`` fetched by ``pool`` into ``workdir``, headers read as a download reads them."""
    inspect = partial(dicom.read_header, keywords=frozenset(dicom.HEADER_KEYWORDS_ALWAYS))
    return await pool.fetch(series, workdir, inspect=inspect, on_bytes=on_bytes)


@pytest.fixture
def slow_server(small_archive: FakeArchive) -> Iterator[FakeNbiaServer]:
    """The small archive at 20 kB/s a response: a fetch lasts seconds."""
    with run_in_thread(FakeNbiaServer(small_archive, bandwidth=20_000)) as running:
        yield running


def _processes_with(marker: str) -> list[int]:
    """PIDs of live processes whose command line holds ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker.encode() in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


def _wait_until(check: object, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


def test_two_processes_place_the_same_tree_as_one(
    nbia_server: FakeNbiaServer, small_archive: FakeArchive, tmp_path: Path
) -> None:
    uids = [s.uid for s in small_archive.series]
    m = manifest(tmp_path, uids)
    one = download(nbia_server, tmp_path / "one", str(m), options=("--processes", "1"))
    two = download(nbia_server, tmp_path / "two", str(m), options=("--processes", "2"))
    assert one.returncode == 0, one.stderr
    assert two.returncode == 0, two.stderr
    assert tree(tmp_path / "two") == tree(tmp_path / "one") == expected_tree(small_archive)
    meta_one = (tmp_path / "one" / "metadata.csv").read_text().splitlines()
    meta_two = (tmp_path / "two" / "metadata.csv").read_text().splitlines()
    strip = [line.rsplit(",", 1)[0] for line in meta_one]  # the download timestamp differs
    assert [line.rsplit(",", 1)[0] for line in meta_two] == strip
    # each series once per run: no refetch, no retry
    assert nbia_server.log.count("getImage") == 2 * len(uids)
    assert _processes_with(str(tmp_path / "two")) == []  # no worker outlives its run


def test_worker_errors_arrive_with_their_kind_and_series(
    nbia_server: FakeNbiaServer, small_archive: FakeArchive, tmp_path: Path
) -> None:
    async def main() -> None:
        async with FetchPool(_spec(nbia_server), 1) as pool:
            with pytest.raises(UnknownSeriesError) as unknown:
                await _fetch(pool, Series("1.2.826.0.1.3680043.99.99"), tmp_path / "w1")
            assert unknown.value.url is not None and "getImage" in unknown.value.url
            nbia_server.faults.always(small_archive.series[0].uid, Fault.corrupt(at_fraction=0.5))
            with pytest.raises(ArchiveError) as broken:
                await _fetch(pool, _series(small_archive), tmp_path / "w2")
            assert broken.value.series_uid == small_archive.series[0].uid
            assert not any((tmp_path / "w2").rglob("*.dcm"))  # what it wrote is gone

    anyio.run(main)


def test_result_bytes_and_progress_come_back(
    nbia_server: FakeNbiaServer, small_archive: FakeArchive, tmp_path: Path
) -> None:
    received: list[int] = []

    async def main() -> None:
        async with FetchPool(_spec(nbia_server), 2) as pool:
            fetched = await _fetch(pool, _series(small_archive, 1), tmp_path / "w", received.append)
        data = small_archive.series[1]
        assert sorted(f.md5 for f in fetched.files) == sorted(i.md5 for i in data.instances)
        for f in fetched.files:  # the staged files are there, as the worker described them
            assert f.path.stat().st_size == f.size
            assert f.header is not None and f.header["SeriesInstanceUID"] == data.uid
        assert fetched.declared_md5 is not None and len(fetched.declared_md5) == len(data.instances)
        assert nbia_server.log.count("getImage") == 1
        assert sum(received) > 0

    anyio.run(main)


def test_cancelled_fetch_stops_in_its_worker_which_serves_on(
    slow_server: FakeNbiaServer, small_archive: FakeArchive, tmp_path: Path
) -> None:
    async def main() -> None:
        async with FetchPool(_spec(slow_server), 1) as pool:
            got: list[int] = []
            with anyio.move_on_after(1.5):
                await _fetch(pool, _series(small_archive), tmp_path / "w1", got.append)
                raise AssertionError("a fetch of several seconds finished in 1.5 s")
            # Back from the cancel only once the worker stopped writing and removed its files.
            assert not any((tmp_path / "w1").rglob("*.dcm"))
            slow_server.bandwidth = None
            fetched = await _fetch(pool, _series(small_archive, 2), tmp_path / "w2")
            assert len(fetched.files) == len(small_archive.series[2].instances)

    anyio.run(main)


def test_dead_worker_costs_its_series_one_attempt_and_the_last_one_aborts(
    slow_server: FakeNbiaServer, small_archive: FakeArchive, tmp_path: Path
) -> None:
    async def main() -> None:
        async with FetchPool(_spec(slow_server), 2) as pool:
            first, second = pool.pids
            failed: list[BaseException] = []

            async def doomed() -> None:
                try:
                    await _fetch(pool, _series(small_archive), tmp_path / "w1")
                except TransientError as exc:
                    failed.append(exc)

            async with anyio.create_task_group() as tg:
                tg.start_soon(doomed)
                await anyio.sleep(0.5)
                os.kill(first, signal.SIGKILL)
            assert len(failed) == 1 and str(first) in str(failed[0])
            assert pool.pids == [second]
            slow_server.bandwidth = None
            fetched = await _fetch(pool, _series(small_archive, 1), tmp_path / "w2")
            assert len(fetched.files) == len(small_archive.series[1].instances)
            os.kill(second, signal.SIGKILL)
            await anyio.sleep(0.5)
            with pytest.raises(AbortError, match="every fetch worker"):
                await _fetch(pool, _series(small_archive, 2), tmp_path / "w3")

    anyio.run(main)


def test_worker_exits_when_its_parent_is_gone(nbia_server: FakeNbiaServer) -> None:
    ours, theirs = socket.socketpair()
    process = spawn_worker(theirs.fileno())
    theirs.close()
    ours.sendall(encode(_spec(nbia_server)))
    time.sleep(0.5)
    assert process.poll() is None  # serving
    ours.close()  # what the kernel does for a parent killed with SIGKILL
    assert process.wait(timeout=15) == 0


def test_worker_stops_when_told(nbia_server: FakeNbiaServer) -> None:
    ours, theirs = socket.socketpair()
    process = spawn_worker(theirs.fileno())
    theirs.close()
    ours.sendall(encode(_spec(nbia_server)) + encode(Stop()))
    assert process.wait(timeout=15) == 0
    ours.close()


def test_killed_run_leaves_no_worker_behind(
    slow_server: FakeNbiaServer, small_archive: FakeArchive, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    m = manifest(tmp_path, [s.uid for s in small_archive.series])
    cmd = bulkdl_cmd(
        "download", str(m), "--out", str(out), "--api-url", slow_server.v4_url,
        "--no-progress", "--processes", "2",
    )  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("BULKDL_")}
    run = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert _wait_until(lambda: len(_processes_with(str(out))) >= 3)  # the run and 2 workers
    assert _wait_until(lambda: slow_server.log.count("getImage") >= 4)  # bodies on their way
    run.kill()
    run.wait()
    assert _wait_until(lambda: _processes_with(str(out)) == [])
    slow_server.bandwidth = None
    again = download(slow_server, out, str(m), options=("--processes", "2"))
    assert again.returncode == 0, again.stderr
    assert tree(out) == expected_tree(small_archive)


def test_errors_pickle_with_their_attributes() -> None:
    error = TransientError("503 from getImage", url="http://h/x", status=503, retry_after=2.5)
    back = pickle.loads(pickle.dumps(error))
    assert (type(back), str(back), back.url, back.status, back.retry_after) == (
        TransientError, "503 from getImage", "http://h/x", 503, 2.5,
    )  # fmt: skip
    archive = pickle.loads(pickle.dumps(ArchiveError("CRC", series_uid="1.2.3")))
    assert archive.series_uid == "1.2.3" and str(archive) == "CRC"


def test_processes_default_to_the_cores_within_limits(tmp_path: Path) -> None:
    assert Settings().processes == min(usable_cores(), AUTO_PROCESSES_MAX, 16)
    assert Settings(concurrency=1).processes == 1
    assert Settings(processes=3).processes == 3
    env = load_settings(flags={}, config_file=None, env={"BULKDL_PROCESSES": "2"})
    assert env.processes == 2
    config = tmp_path / "c.toml"
    config.write_text("processes = 65\n")
    with pytest.raises(InputError, match=r"c.toml.*processes"):
        load_settings(flags={}, config_file=config, env={})
