"""Many small series under random transient faults and a few persistent ones: every series ends
placed or named as failed, and the run's wall time stays affordable."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from bulkdl.testing import ArchiveSpec, FakeArchive, FakeNbiaServer, Fault, run_in_thread
from tests.helpers import download, expected_tree, failures, get_images, manifest, tree

TRANSIENT = [
    Fault.http_status(500),
    Fault.rate_limited(0),
    Fault.rate_limited(1),
    Fault.reset(at_fraction=0.5),
    Fault.corrupt(at_fraction=0.5),
    Fault.short_zip(keep=0),
]
PERSISTENT = [Fault.http_status(503), Fault.not_zip(), Fault.short_zip(keep=0)]


def _archive(series: int, cache: Path) -> FakeArchive:
    spec = ArchiveSpec(
        patients_per_collection=series // 4,
        studies_per_patient=2,
        series_per_study=2,
        images_per_series=(1, 2),
        rows=16,
        columns=16,
        seed=41,
    )
    return FakeArchive.build(spec, cache)


@pytest.mark.parametrize(
    "series", [200, pytest.param(1000, marks=pytest.mark.slow)], ids=["200", "1000"]
)
def test_many_series_under_faults(
    series: int, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    """With ~10 % of series faulted once and a few faulted always, the run names exactly the
    latter as failed (exit 1), places every other series byte for byte, and then a run with
    the faults gone completes the tree (exit 0)."""
    archive = _archive(series, tmp_path_factory.mktemp(f"load-{series}"))
    uids = [s.uid for s in archive.series]
    assert len(uids) == series
    rng = random.Random(series)
    picked = rng.sample(uids, series // 10 + 5)
    flaky, broken = picked[5:], picked[:5]
    out, m = tmp_path / "out", str(manifest(tmp_path, uids))
    with run_in_thread(FakeNbiaServer(archive)) as server:
        for uid in flaky:
            server.faults.script(uid, rng.choice(TRANSIENT))
        for uid in broken:
            server.faults.always(uid, rng.choice(PERSISTENT))
        started = time.monotonic()
        first = download(server, out, m, options=("--retries", "2", "--concurrency", "8"))
        elapsed = time.monotonic() - started
        print(f"{series} series, {len(flaky)} flaky, {len(broken)} broken: {elapsed:.1f} s")
        assert first.returncode == 1, first.stderr[-2000:]
        assert set(failures(out)) == set(broken)
        assert all(uid in first.stderr for uid in broken)
        good = [u for u in uids if u not in broken]
        assert tree(out) == expected_tree(archive, good)
        assert all(get_images(server, uid) == 2 for uid in flaky)
        assert all(get_images(server, uid) == 3 for uid in broken)

        server.faults.clear()
        server.reset_log()
        second = download(server, out, m)
        assert second.returncode == 0, second.stderr[-2000:]
        assert get_images(server) == len(broken)
        assert tree(out) == expected_tree(archive)
        assert not (out / "failures.csv").exists() or failures(out) == {}
