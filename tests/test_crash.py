"""Crash safety: kill -9, SIGINT and SIGTERM at seeded moments of a real download subprocess,
then a re-run, must give the tree an uninterrupted run gives, byte for byte, with nothing left.

Every seed draws its concurrency (1-4), layout preset, bandwidth and kill moments (see
:class:`crashlib.Scenario`); a failure names its seed, so ``-k 'seed-7'`` replays it. The soak
(``BULKDL_SOAK_RUNS=200 pytest -m slow tests/test_crash.py``) runs many more seeds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import cast

import pytest
from crashlib import (
    Kill,
    Scenario,
    Tree,
    assert_consistent,
    assert_finished,
    assert_no_leftovers,
    download_args,
    interrupt,
    run,
    start,
    status,
    wait_for,
    write_manifest,
)

from bulkdl.testing import ArchiveSpec, FakeArchive, FakeNbiaServer, run_in_thread

DEFAULT_SEEDS = range(1, 21)
SOAK_DEFAULT = 200
PARALLEL = 4  # scenarios at once: most of a scenario's time is spent waiting on bandwidth
CleanTree = Callable[[str], Tree]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Give the soak its seeds only when asked for (``-m slow`` or BULKDL_SOAK_RUNS), so the
    default suite shows one skipped test rather than hundreds."""
    if "soak_seed" not in metafunc.fixturenames:
        return
    wanted = os.environ.get("BULKDL_SOAK_RUNS")
    markexpr = metafunc.config.getoption("markexpr", "") or ""
    if wanted:
        count = int(wanted)
    elif "slow" in markexpr and "not slow" not in markexpr:
        count = SOAK_DEFAULT
    else:
        count = 0
    if count:
        seeds = [1000 + i for i in range(count)]
        metafunc.parametrize("soak_seed", seeds, ids=[f"seed-{s}" for s in seeds])
    else:
        skip = pytest.mark.skip(reason="soak: set BULKDL_SOAK_RUNS=N or select -m slow")
        metafunc.parametrize("soak_seed", [pytest.param(0, marks=skip)], ids=["off"])


@pytest.fixture(scope="module")
def crash_archive(tmp_path_factory: pytest.TempPathFactory) -> FakeArchive:
    """16 series of tiny images, every other one with 30-40 files (a long placement)."""
    spec = ArchiveSpec(
        patients_per_collection=2,
        studies_per_patient=2,
        series_per_study=4,
        images_per_series=(2, 30, 3, 40),
        rows=16,
        columns=16,
        seed=21,
    )
    return FakeArchive.build(spec, tmp_path_factory.mktemp("crash-archive"))


@pytest.fixture(scope="module")
def clean_tree(
    crash_archive: FakeArchive, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[CleanTree]:
    """layout preset -> the tree an uninterrupted run gives (each made once, on first use)."""
    folder = tmp_path_factory.mktemp("clean")
    uids = [s.uid for s in crash_archive.series]
    manifest = write_manifest(folder, uids)
    made: dict[str, Tree] = {}
    lock = threading.Lock()
    with run_in_thread(FakeNbiaServer(crash_archive)) as server:

        def clean(layout: str) -> Tree:
            with lock:
                if layout not in made:
                    out = folder / layout
                    result = run(*download_args(manifest, out, server.v4_url, layout=layout))
                    assert result.returncode == 0, result.stderr
                    made[layout] = Tree.of(out)
                return made[layout]

        yield clean


def scenario_of(archive: FakeArchive, seed: int) -> Scenario:
    """The scenario ``seed`` draws for ``archive``."""
    total = sum(i.size for s in archive.series for i in s.instances)
    sizes = [len(s.instances) for s in archive.series]
    big = [i for i, n in enumerate(sizes) if n >= 20]
    return Scenario.from_seed(seed, total, big)


def crash_and_recover(
    archive: FakeArchive, folder: Path, clean_tree: CleanTree, scenario: Scenario
) -> None:
    """Run ``scenario``: its kill -9s during throttled runs, then an unthrottled re-run that
    must finish the folder exactly as a clean run does. Raises AssertionError naming the seed."""
    try:
        _crash_and_recover(archive, folder, clean_tree, scenario)
    except AssertionError as exc:
        raise AssertionError(f"{scenario.describe()}: {exc}") from exc


def _crash_and_recover(
    archive: FakeArchive, folder: Path, clean_tree: CleanTree, scenario: Scenario
) -> None:
    uids = [s.uid for s in archive.series]
    clean = clean_tree(scenario.layout)
    out, manifest = folder / "out", write_manifest(folder, uids)
    server = FakeNbiaServer(archive, bandwidth=scenario.bandwidth)
    with run_in_thread(server) as running:
        args = download_args(
            manifest, out, running.v4_url, concurrency=scenario.concurrency, layout=scenario.layout
        )
        for kill in scenario.kills:
            running.reset_log()
            target = None
            if kill.mode == "placing":
                first = min(clean.series_files(uids[kill.nth]))
                target = out / Path(first).parent
            proc = start(*args)
            try:
                interrupt(proc, running, kill, signal.SIGKILL, folder=target)
            finally:
                proc.kill()
                proc.wait(timeout=30)
            assert proc.returncode == -signal.SIGKILL
            # os.replace is atomic: whatever a kill leaves in the tree is some clean file whole.
            assert Tree.of(out).files.items() <= clean.files.items()
        running.bandwidth = None
        final = run(*args)
        assert final.returncode == 0, final.stderr
    assert_finished(out, clean, uids)


def run_in_parallel(
    archive: FakeArchive, folder: Path, clean_tree: CleanTree, seeds: list[int]
) -> dict[int, BaseException | None]:
    """Run the scenarios of ``seeds`` a few at a time: seed -> its error, or None."""
    with ThreadPoolExecutor(PARALLEL) as pool:
        # The clean trees first, so no scenario waits for another's reference run.
        list(pool.map(clean_tree, sorted({scenario_of(archive, s).layout for s in seeds})))
        futures = {
            seed: pool.submit(
                crash_and_recover, archive, folder / f"seed-{seed}", clean_tree,
                scenario_of(archive, seed),
            )
            for seed in seeds
        }  # fmt: skip
        wait(futures.values())
    return {seed: future.exception() for seed, future in futures.items()}


@pytest.fixture(scope="module")
def default_runs(
    request: pytest.FixtureRequest,
    crash_archive: FakeArchive,
    clean_tree: CleanTree,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[int, BaseException | None]:
    """The default seeds' scenarios, run together (only those selected): seed -> error or None."""
    seeds = [
        cast(int, item.callspec.params["seed"])
        for item in request.session.items
        if isinstance(item, pytest.Function)
        and item.originalname == "test_kill_9_at_seeded_moment_then_rerun"
    ]
    folder = tmp_path_factory.mktemp("kill-9")
    for seed in seeds:
        (folder / f"seed-{seed}").mkdir()
    return run_in_parallel(crash_archive, folder, clean_tree, seeds)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("seed", DEFAULT_SEEDS, ids=[f"seed-{s}" for s in DEFAULT_SEEDS])
def test_kill_9_at_seeded_moment_then_rerun(
    default_runs: dict[int, BaseException | None], seed: int
) -> None:
    """kill -9 once or twice at a seeded moment, then a re-run: a clean run's tree, nothing left."""
    error = default_runs[seed]
    if error is not None:
        raise error


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_kill_9_soak(
    crash_archive: FakeArchive, clean_tree: CleanTree, tmp_path: Path, soak_seed: int
) -> None:
    """The kill -9 scenario over many more seeds (BULKDL_SOAK_RUNS of them, default 200)."""
    crash_and_recover(crash_archive, tmp_path, clean_tree, scenario_of(crash_archive, soak_seed))


def test_kill_9_inside_placement_is_taken_back(
    crash_archive: FakeArchive, clean_tree: CleanTree, tmp_path: Path
) -> None:
    """kill -9 while a series is half moved in leaves it "placing"; a re-run takes it back."""
    uids = [s.uid for s in crash_archive.series]
    clean = clean_tree("default")
    big = max(range(len(uids)), key=lambda i: len(crash_archive.series[i].instances))
    series_folder = Path(min(clean.series_files(uids[big]))).parent
    total = sum(i.size for s in crash_archive.series for i in s.instances)
    with run_in_thread(FakeNbiaServer(crash_archive, bandwidth=total / 3)) as running:
        for attempt in range(3):
            out = tmp_path / f"out{attempt}"
            args = download_args(write_manifest(tmp_path, uids), out, running.v4_url, concurrency=1)
            proc = start(*args)
            try:
                interrupt(proc, running, Kill("placing", nth=big), signal.SIGKILL,
                          folder=out / series_folder)  # fmt: skip
            finally:
                proc.kill()
                proc.wait(timeout=30)
            if status(out)["counts"]["placing"] == 1:
                break
        else:
            pytest.fail("no kill landed inside a placement in 3 tries")
        half = Tree.of(out).series_files(uids[big])
        assert half.items() <= clean.series_files(uids[big]).items()
        running.bandwidth = None
        again = run(*args)
        assert again.returncode == 0, again.stderr
    assert_finished(out, clean, uids)


SIGNAL_CASES = [
    pytest.param(signal.SIGINT, Kill("timed", 0.4), id="SIGINT-early"),
    pytest.param(signal.SIGINT, Kill("placing", nth=1), id="SIGINT-placing"),
    pytest.param(signal.SIGINT, Kill("after_image", 0.01, 4), id="SIGINT-after-image"),
    pytest.param(signal.SIGTERM, Kill("timed", 0.1), id="SIGTERM-early"),
    pytest.param(signal.SIGTERM, Kill("placing", nth=3), id="SIGTERM-placing"),
    pytest.param(signal.SIGTERM, Kill("timed", 1.6), id="SIGTERM-late"),
]


@pytest.mark.parametrize(("signum", "when"), SIGNAL_CASES)
def test_signal_stops_cleanly_then_rerun_completes(
    crash_archive: FakeArchive,
    clean_tree: CleanTree,
    tmp_path: Path,
    signum: signal.Signals,
    when: Kill,
) -> None:
    """SIGINT/SIGTERM mid-run: exit 130, only whole done series in the tree; a re-run ends it."""
    uids = [s.uid for s in crash_archive.series]
    clean = clean_tree("default")
    out, manifest = tmp_path / "out", write_manifest(tmp_path, uids)
    target = out / Path(min(clean.series_files(uids[when.nth]))).parent
    total = sum(i.size for s in crash_archive.series for i in s.instances)
    with run_in_thread(FakeNbiaServer(crash_archive, bandwidth=total / 8.0)) as running:
        args = download_args(manifest, out, running.v4_url, concurrency=2)
        proc = start(*args, stderr=subprocess.PIPE)
        try:
            # Once a worker has made its staging folder the run is downloading.
            staging = out / ".bulkdl" / "staging"
            assert wait_for(lambda: staging.exists() and any(staging.iterdir()), 30)
            interrupt(proc, running, when, signum, folder=target)
            _, err = proc.communicate(timeout=60)
        finally:
            proc.kill()
            proc.wait(timeout=30)
        stderr = err.decode()
        assert proc.returncode == 130, stderr
        assert "Traceback" not in stderr
        done = assert_consistent(out, clean, uids)
        assert len(done) < len(uids), "the signal came after the last series"
        assert_no_leftovers(out)
        running.bandwidth = None
        again = run(*args)
        assert again.returncode == 0, again.stderr
    assert_finished(out, clean, uids)
