"""A series revised on the server between two runs: the second run notices and refetches it."""

from __future__ import annotations

from pathlib import Path

import pytest

from bulkdl.testing import ArchiveSpec, FakeArchive, FakeNbiaServer, run_in_thread
from tests.helpers import download, expected_tree, get_images, manifest, no_leftovers, tree

SPEC = ArchiveSpec(
    patients_per_collection=1,
    studies_per_patient=1,
    series_per_study=3,
    images_per_series=4,
    rows=16,
    columns=16,
    seed=31,
)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the revision tests' archive is built once."""
    folder = tmp_path_factory.mktemp("revision-cache")
    FakeArchive.build(SPEC, folder)
    return folder


@pytest.mark.parametrize(("drop", "add"), [(1, 0), (0, 1), (2, 1)], ids=["drop", "add", "both"])
def test_revised_series_is_refetched(cache: Path, tmp_path: Path, drop: int, add: int) -> None:
    """After a series gains or loses images on the server, a re-run says it changed, fetches
    only that series again, and the tree holds exactly its new content."""
    archive = FakeArchive.build(SPEC, cache)  # an object of our own: revise() mutates it
    uids = [s.uid for s in archive.series]
    target = uids[1]
    out, m = tmp_path / "out", str(manifest(tmp_path, uids))
    with run_in_thread(FakeNbiaServer(archive)) as server:
        first = download(server, out, m)
        assert first.returncode == 0, first.stderr
        before = tree(out)
        old = archive.lookup(target)
        assert old is not None
        revised = archive.revise(target, drop=drop, add=add)
        assert revised.row["ImageCount"] == len(old.instances) - drop + add
        server.reset_log()

        second = download(server, out, m)

    assert second.returncode == 0, second.stderr
    assert "changed on the server" in second.stderr
    assert get_images(server, target) == 1
    assert get_images(server) == 1
    after = tree(out)
    assert after == expected_tree(archive)
    dropped = {i.sop_uid for i in old.instances} - {i.sop_uid for i in revised.instances}
    assert len(dropped) == drop
    assert not any(sop in path for path in after for sop in dropped)
    assert {p: h for p, h in after.items() if target not in p} == {
        p: h for p, h in before.items() if target not in p
    }
    no_leftovers(out)


def test_revise_serves_new_content(cache: Path) -> None:
    """revise() changes ImageCount and FileSize as NBIA's live counts do, and getImage's ZIP."""
    archive = FakeArchive.build(SPEC, cache)
    series = archive.series[0]
    revised = archive.revise(series.uid, drop=1, add=2)
    assert revised.row["ImageCount"] == len(series.instances) + 1
    assert revised.row["FileSize"] == sum(i.size for i in revised.instances)
    assert archive.lookup(series.uid) is revised
    assert len({i.sop_uid for i in revised.instances}) == len(revised.instances)
    with pytest.raises(ValueError):
        archive.revise(series.uid, drop=99)
