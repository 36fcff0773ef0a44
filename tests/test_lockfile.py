"""Lock files: the format read and written exactly, and downloads pinned by a lock against the
fake NBIA server on 127.0.0.1 (a revised series fails loudly, naming its instances)."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from subprocess import PIPE

import pytest

import bulkdl
from bulkdl.audit import tree_lock
from bulkdl.errors import ManifestError
from bulkdl.lockdiff import compare_series, diff_locks, diff_text
from bulkdl.lockfile import (
    Lock,
    LockedInstance,
    LockedSeries,
    dumps,
    maybe_lock,
    parse_lock,
    public_url,
    read_lock,
    series_digest,
    write_lock,
)
from bulkdl.testing import ArchiveSpec, FakeArchive, FakeNbiaServer, run_in_thread
from tests.helpers import bulkdl_cmd, download, expected_tree, get_images, manifest, run, tree

SOP = "1.2.840.1"
MD5 = "0" * 32
SHA = "a" * 64


def inst(n: int, size: int = 10, sha: str = SHA, path: str | None = None) -> LockedInstance:
    """An instance with SOPInstanceUID 1.2.840.1.<n>."""
    return LockedInstance(f"{SOP}.{n}", size, MD5, sha, path)


def series(uid: str, *instances: LockedInstance) -> LockedSeries:
    """A locked series with these instances (counts follow them)."""
    return LockedSeries(
        uid, "COLL", "P1", "1.2.3", len(instances), sum(i.size for i in instances), instances
    )


# --------------------------------------------------------------------------- the format


def test_dumps_is_sorted_canonical_and_reads_back() -> None:
    """Series and instances come out sorted, the same lock gives the same bytes, and parsing
    the text gives the lock back with digests over the documented canonical listing."""
    lock = Lock(
        (series("1.9", inst(2, path="a/2.dcm"), inst(1, path="a/1.dcm")), series("1.10", inst(3))),
        name="demo",
        source="https://example.org/nbia-api/services/v4/",
        layout="{SeriesInstanceUID}/{SOPInstanceUID}.dcm",
    )
    text = dumps(lock)
    assert text == dumps(Lock(tuple(reversed(lock.series)), "demo", lock.source, lock.layout))
    assert text.index('"1.10"') < text.index('"1.9"')
    assert text.index(f"{SOP}.1") < text.index(f"{SOP}.2")
    back = parse_lock(text, "x.lock")
    assert back == lock
    listing = f"{SOP}.1\t10\t{SHA}\n{SOP}.2\t10\t{SHA}\n"
    assert back.series[1].digest == hashlib.sha256(listing.encode()).hexdigest()
    data = json.loads(text)
    assert (data["format"], data["version"], data["digest"]) == ("bulkdl-lock", 1, lock.digest)
    assert data["series"][1]["instances"][0] == {
        "SOPInstanceUID": f"{SOP}.1",
        "size": 10,
        "md5": MD5,
        "sha256": SHA,
        "path": "a/1.dcm",
    }


def test_digest_ignores_paths() -> None:
    """A series' digest depends on its content, not on where the layout put its files."""
    assert series_digest([inst(1, path="x/1.dcm")]) == series_digest([inst(1, path="y.dcm")])
    assert series_digest([inst(1)]) != series_digest([inst(1, size=11)])


def _lock_text() -> dict[str, object]:
    return json.loads(dumps(Lock((series("1.5", inst(1, path="p/1.dcm"), inst(2)),))))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.update(format="other"), 'not a bulkdl lock file (no "format": "bulkdl-lock")'),
        (lambda d: d.update(version=3), "lock format version 3 is newer than this bulkdl reads"),
        (lambda d: d.update(extra=1), "unknown key(s) 'extra'"),
        (lambda d: d["series"][0].update(SeriesInstanceUID="x"), "series[0]: SeriesInstanceUID"),
        (
            lambda d: d["series"][0]["instances"][1].update(sha256="zz"),
            "series[0] (1.5): instances[1] (1.2.840.1.2): sha256: expected 64 lowercase hex",
        ),
        (
            lambda d: d["series"][0]["instances"][0].update(path="../etc/passwd"),
            "not a safe relative path: '../etc/passwd'",
        ),
        (
            lambda d: d["series"][0]["instances"][0].update(path="/abs.dcm"),
            "not a safe relative path",
        ),
        (
            lambda d: d["series"][0]["instances"][0].update(path=".bulkdl/ledger.sqlite"),
            "not a safe relative path",
        ),
        (
            lambda d: d["series"][0]["instances"][1].update(size=11),
            "FileSize is 20 but the instances' sizes add up to 21",
        ),
        (lambda d: d["series"][0].update(ImageCount=3), "ImageCount is 3 but 2 instances"),
        (
            lambda d: d["series"][0]["instances"][1].update(SOPInstanceUID=f"{SOP}.1"),
            "instance 1.2.840.1.1 is listed twice",
        ),
        (lambda d: d["series"].append(d["series"][0]), "is listed twice (also series[0])"),
        (lambda d: d.update(digest="b" * 64), "digest does not match"),
        (lambda d: d["series"][0].update(digest="c" * 64), "series[0] (1.5): digest does not"),
        (lambda d: d["series"][0].update(ImageCount=True), "ImageCount: expected a count"),
    ],
)
def test_bad_lock_is_named(edit: object, message: str) -> None:
    """Every malformed lock raises ManifestError naming the file and the entry."""
    data = _lock_text()
    edit(data)  # type: ignore[operator]
    with pytest.raises(ManifestError) as caught:
        parse_lock(json.dumps(data), "data.lock")
    assert str(caught.value).startswith("data.lock: ")
    assert message in str(caught.value)


def test_not_json_names_line(tmp_path: Path) -> None:
    """A lock that is not JSON names its file and line; a missing one says so."""
    bad = tmp_path / "bad.lock"
    bad.write_text('{\n  "format": "bulkdl-lock",\n  oops\n}\n')
    with pytest.raises(ManifestError, match=r"bad.lock:3: not valid JSON"):
        read_lock(bad)
    with pytest.raises(ManifestError, match="no such lock file"):
        read_lock(tmp_path / "none.lock")


def test_maybe_lock_tells_locks_from_manifests() -> None:
    """JSON manifests are not locks; a lock is; a broken lock is an error, not a manifest."""
    assert maybe_lock('["1.2.3"]', "m.json") is None
    assert maybe_lock('{"series": ["1.2.3"]}', "m.json") is None
    assert maybe_lock("1.2.3\n", "m.txt") is None
    good = maybe_lock(dumps(Lock((series("1.5", inst(1)),))), "d.lock")
    assert good is not None and good.uids == ("1.5",)
    with pytest.raises(ManifestError, match=r"d\.lock: version"):
        maybe_lock('{"format": "bulkdl-lock", "version": "1", "series": []}', "d.lock")


def test_write_is_atomic_and_source_has_no_secrets(tmp_path: Path) -> None:
    """write_lock leaves only the lock; a source URL loses user info, query and fragment."""
    target = tmp_path / "x.lock"
    lock = Lock((series("1.5", inst(1)),), source=public_url("https://u:pw@host/v4/?k=s#f"))
    write_lock(lock, target)
    assert [p.name for p in tmp_path.iterdir()] == ["x.lock"]
    assert read_lock(target).source == "https://host/v4/"
    assert "pw" not in target.read_text()


def test_diff_and_compare_name_instances() -> None:
    """diff_locks finds series added, removed and changed, instances by UID, moves apart;
    compare_series words each differing instance."""
    a = Lock((series("1.1", inst(1), inst(2)), series("1.2", inst(5)), series("1.3", inst(6))))
    b = Lock(
        (
            series("1.1", inst(1), inst(2, size=12, sha="b" * 64), inst(3)),
            series("1.3", inst(6)),
            series("1.4", inst(7)),
        )
    )
    diff = diff_locks(a, b)
    assert not diff.identical
    assert [s.SeriesInstanceUID for s in diff.added] == ["1.4"]
    assert [s.SeriesInstanceUID for s in diff.removed] == ["1.2"]
    [change] = diff.changed
    assert change.uid == "1.1"
    assert [i.SOPInstanceUID for i in change.instances.added] == [f"{SOP}.3"]
    assert [a.SOPInstanceUID for a, _ in change.instances.changed] == [f"{SOP}.2"]
    text = diff_text(diff, "a.lock", "b.lock")
    assert f"~ {SOP}.2: size 10 -> 12, sha256 differs" in text
    assert "+ 1.4" in text and "- 1.2" in text and text.endswith("the locks differ\n")
    moved = Lock((series("1.1", inst(1, path="x/1.dcm")),))
    here = Lock((series("1.1", inst(1, path="y/1.dcm")),))
    assert diff_locks(moved, here).identical and diff_locks(moved, here).moved == 1
    problems = compare_series(a.series[0], [inst(1), inst(4)])
    assert problems == [
        f"instance {SOP}.2: in the lock, not on the server",
        f"instance {SOP}.4: on the server, not in the lock",
    ]
    counts_only = LockedSeries("1.1", ImageCount=2, FileSize=20)
    assert compare_series(counts_only, [inst(1), inst(2)]) == []
    assert compare_series(counts_only, [inst(1)]) == [
        "1 images on the server, 2 in the lock",
        "10 bytes on the server, 20 in the lock",
    ]


# --------------------------------------------------------------------------- end to end

SPEC = ArchiveSpec(
    patients_per_collection=2,
    studies_per_patient=1,
    series_per_study=2,
    images_per_series=4,
    rows=16,
    columns=16,
    seed=41,
)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where this module's archive is built once."""
    folder = tmp_path_factory.mktemp("lock-cache")
    FakeArchive.build(SPEC, folder)
    return folder


@pytest.fixture
def archive(cache: Path) -> FakeArchive:
    """A fresh archive object per test (revise() mutates it)."""
    return FakeArchive.build(SPEC, cache)


@pytest.fixture
def server(archive: FakeArchive) -> Iterator[FakeNbiaServer]:
    """The fake server over this test's own archive."""
    with run_in_thread(FakeNbiaServer(archive)) as running:
        yield running


def together(*commands: list[str]) -> list[subprocess.CompletedProcess[str]]:
    """Run several bulkdl commands at once (independent of each other); their results."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BULKDL_")}
    started = [
        (argv, subprocess.Popen(bulkdl_cmd(*argv), env=env, stdout=PIPE, stderr=PIPE, text=True))
        for argv in commands
    ]
    results = []
    for argv, process in started:
        out, err = process.communicate(timeout=120)
        results.append(subprocess.CompletedProcess(argv, process.returncode, out, err))
    return results


def locked_tree(server: FakeNbiaServer, tmp_path: Path) -> tuple[Path, Path, list[str]]:
    """Download every series into tmp/first and lock it (in-process, to keep the test fast):
    (tree, lock file, series UIDs)."""
    uids = [s.uid for s in server.archive.series]
    out = tmp_path / "first"
    result = bulkdl.download(str(manifest(tmp_path, uids)), out=out, api_url=server.v4_url)
    assert result.exit_code == 0
    lock_file = tmp_path / "data.lock"
    made = tree_lock(out)
    assert not made.left_out
    write_lock(made.lock, lock_file)
    return out, lock_file, uids


def test_lock_resolve_download_and_lock_tree(server: FakeNbiaServer, tmp_path: Path) -> None:
    """`lock MANIFEST` records the archive's series and counts without downloading; a download
    of that lock places them; `lock --from DIR` adds every instance's size, hashes and path."""
    archive = server.archive
    uids = [s.uid for s in archive.series]
    pre = tmp_path / "pre.lock"
    made = run("lock", str(manifest(tmp_path, uids)), "--api-url", server.v4_url, "-o", str(pre))
    assert made.returncode == 0, made.stderr
    assert get_images(server) == 0
    data = json.loads(pre.read_text())
    assert [s["SeriesInstanceUID"] for s in data["series"]] == sorted(uids)
    first = next(s for s in data["series"] if s["SeriesInstanceUID"] == archive.series[0].uid)
    assert first["ImageCount"] == 4 and "instances" not in first and data["digest"] is None
    assert first["FileSize"] == sum(i.size for i in archive.series[0].instances)

    out = tmp_path / "out"
    fetched = download(server, out, str(pre))
    assert fetched.returncode == 0, fetched.stderr
    assert tree(out) == expected_tree(archive)

    post = tmp_path / "post.lock"
    assert run("lock", "--from", str(out), "-o", str(post)).returncode == 0
    lock = read_lock(post)
    assert lock.layout == "{PatientID}/{StudyInstanceUID}/{SeriesInstanceUID}/{SOPInstanceUID}.dcm"
    assert lock.source == server.v4_url
    for s in archive.series:
        locked = lock.get(s.uid)
        assert locked is not None and locked.instances is not None
        want = {i.sop_uid: archive.file_path(i).read_bytes() for i in s.instances}
        assert {i.SOPInstanceUID: i.sha256 for i in locked.instances} == {
            sop: hashlib.sha256(data).hexdigest() for sop, data in want.items()
        }
        for i in locked.instances:
            assert (out / (i.path or "")).read_bytes() == want[i.SOPInstanceUID]
    same, queried = together(
        ["diff", str(pre), str(post)],
        ["lock", "--collection", archive.series[0].collection, "--api-url", server.v4_url],
    )
    assert same.returncode == 0, same.stdout
    assert "identical" in same.stdout
    assert queried.returncode == 0, queried.stderr
    assert queried.stdout == pre.read_text()


def test_lock_of_unknown_series_writes_nothing(server: FakeNbiaServer, tmp_path: Path) -> None:
    """A manifest naming a series the server does not know: exit 1 naming it, no lock file."""
    uids = [server.archive.series[0].uid, "1.2.3.999"]
    target = tmp_path / "x.lock"
    made = run("lock", str(manifest(tmp_path, uids)), "--api-url", server.v4_url, "-o", str(target))
    assert made.returncode == 1
    assert "1.2.3.999" in made.stderr and "no lock written" in made.stderr
    assert not target.exists()


def test_revised_content_fails_download_from_lock(server: FakeNbiaServer, tmp_path: Path) -> None:
    """A series whose instances changed on the server (same counts) fails, once, without a
    retry, naming the series and both differing instances; nothing of it is placed."""
    _, lock_file, uids = locked_tree(server, tmp_path)
    target = uids[1]
    old = server.archive.lookup(target)
    assert old is not None
    new = server.archive.revise(target, drop=1, add=1)
    gone = old.instances[-1].sop_uid
    added = new.instances[-1].sop_uid
    server.reset_log()

    out = tmp_path / "second"
    again = download(server, out, str(lock_file))
    assert again.returncode == 1
    assert get_images(server, target) == 1
    assert f"series {target} changed on the server since the lock" in again.stderr
    assert f"instance {gone}: in the lock, not on the server" in again.stderr
    assert f"instance {added}: on the server, not in the lock" in again.stderr
    with (out / "failures.csv").open(newline="") as f:
        [row] = list(csv.DictReader(f))
    assert row["SeriesInstanceUID"] == target and gone in row["Reason"]
    placed = tree(out)
    assert not any(target in path for path in placed)
    assert placed == expected_tree(server.archive, [u for u in uids if u != target])


def test_changed_counts_fail_before_fetching(server: FakeNbiaServer, tmp_path: Path) -> None:
    """A series whose ImageCount changed fails at once, naming the counts, with no getImage;
    a tree that already holds the locked content keeps it (exit 0)."""
    first, lock_file, uids = locked_tree(server, tmp_path)
    before = tree(first)
    target = uids[2]
    server.archive.revise(target, drop=1)
    server.reset_log()

    common = ["--api-url", server.v4_url, "--no-progress"]
    fresh, kept = together(
        ["download", str(lock_file), "--out", str(tmp_path / "fresh"), *common],
        ["download", str(lock_file), "--out", str(first), *common],
    )
    assert fresh.returncode == 1
    assert f"{target}: changed on the server since the lock: ImageCount 4 in the lock, 3 on" in (
        fresh.stderr
    )
    assert kept.returncode == 0, kept.stderr
    assert "changed on the server since the lock" in kept.stderr
    assert tree(first) == before
    assert get_images(server, target) == 0


def test_kept_series_unlike_the_lock_fails(server: FakeNbiaServer, tmp_path: Path) -> None:
    """A tree holding another content of a locked series (placed before, unchecked) makes a
    download of the lock exit 1 naming the series, instead of passing it as done."""
    first, lock_file, uids = locked_tree(server, tmp_path)
    target = uids[0]
    lock = read_lock(lock_file)
    old = lock.get(target)
    assert old is not None and old.instances
    stand_in = LockedInstance("1.2.3.4", old.instances[0].size, MD5, SHA, "x/y.dcm")
    edited = [*old.instances[1:], stand_in]
    other = Lock(
        tuple(s if s.SeriesInstanceUID != target else series(target, *edited) for s in lock.series),
        layout=lock.layout,
    )
    write_lock(other, lock_file)
    result = download(server, first, str(lock_file))
    assert result.returncode == 1
    assert f"series {target} in the tree already, but not as locked" in result.stderr
    assert "instance 1.2.3.4: in the lock, not in the tree" in result.stderr
