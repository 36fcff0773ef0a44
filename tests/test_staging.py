"""``--staging PATH``: downloads staged on another filesystem (a tmpfs standing in for a node's
local ``$TMPDIR``) reach the tree whole, and nothing stays in PATH after a run that succeeds,
fails a series, is interrupted, or stops on a full tree disk.

The filesystems are tmpfs mounts made by each test (root and mount permission needed; the tests
skip with the reason otherwise), so every move into the tree crosses filesystems for real.
"""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import subprocess
from pathlib import Path

import pytest
from crashlib import (
    Tree,
    assert_consistent,
    assert_finished,
    assert_no_leftovers,
    download_args,
    over_two_mb,
    remount,
    run,
    start,
    status,
    tmpfs,
    wait_for,
    write_manifest,
)

from bulkdl.config import load_settings
from bulkdl.errors import InputError
from bulkdl.move import PrivateFolder, move_into, sweep
from bulkdl.testing import FakeArchive, FakeNbiaServer, Fault, run_in_thread


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> FakeArchive:
    """An archive of more than 2 MB (see :func:`crashlib.over_two_mb`)."""
    return over_two_mb(tmp_path_factory.mktemp("staging-archive"))


def nothing_staged(staging: Path, out: Path) -> None:
    """PATH holds nothing of bulkdl's, and no copy waits in the tree's landing folder."""
    assert list(staging.iterdir()) == [], list(staging.rglob("*"))
    landing = out / ".bulkdl" / "incoming"
    assert not landing.exists() or list(landing.iterdir()) == [], list(landing.rglob("*"))


def test_staging_elsewhere_gives_the_same_tree(archive: FakeArchive, tmp_path: Path) -> None:
    """Staged on another filesystem: exit 0, every byte in the tree, PATH left empty."""
    uids = [s.uid for s in archive.series]
    out, manifest = tmp_path / "out", write_manifest(tmp_path, uids)
    with (
        tmpfs(tmp_path / "local", "64m") as local,
        run_in_thread(FakeNbiaServer(archive)) as server,
    ):
        assert os.stat(local).st_dev != os.stat(tmp_path).st_dev
        result = run(*download_args(manifest, out, server.v4_url), "--staging", str(local))
        assert result.returncode == 0, result.stderr
        assert_finished(out, Tree.expected(archive), uids)
        nothing_staged(local, out)
        assert run("verify", str(out), "--no-progress").returncode == 0


def test_failed_series_leaves_nothing_staged(archive: FakeArchive, tmp_path: Path) -> None:
    """A series that never verifies fails (exit 1, not in the tree); PATH is left empty."""
    uids = [s.uid for s in archive.series]
    bad = uids[2]
    out, manifest = tmp_path / "out", write_manifest(tmp_path, uids)
    with (
        tmpfs(tmp_path / "local", "64m") as local,
        run_in_thread(FakeNbiaServer(archive)) as server,
    ):
        server.faults.always(bad, Fault.corrupt(at_fraction=0.5))
        args = [*download_args(manifest, out, server.v4_url), "--staging", str(local)]
        result = run(*args, "--retries", "1")
        assert result.returncode == 1, result.stderr
        assert bad in result.stderr
        assert not Tree.of(out).series_files(bad)
        assert_consistent(out, Tree.expected(archive), uids)
        nothing_staged(local, out)


def test_interrupted_run_leaves_nothing_staged(archive: FakeArchive, tmp_path: Path) -> None:
    """SIGINT while series are staged: exit 130, PATH empty, the tree consistent; a re-run
    (staged again) completes it."""
    uids = [s.uid for s in archive.series]
    clean = Tree.expected(archive)
    out, manifest = tmp_path / "out", write_manifest(tmp_path, uids)
    total = sum(i.size for s in archive.series for i in s.instances)
    with (
        tmpfs(tmp_path / "local", "64m") as local,
        run_in_thread(FakeNbiaServer(archive, bandwidth=total / 4.0)) as server,
    ):
        args = [*download_args(manifest, out, server.v4_url), "--staging", str(local)]
        proc = start(*args, stderr=subprocess.PIPE)
        try:
            # Files in a series' folder under PATH: the run is downloading into its own folder.
            assert wait_for(lambda: any(local.glob("bulkdl-*/*/*")), 30)
            assert proc.poll() is None
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=60)
        finally:
            proc.kill()
            proc.wait(timeout=30)
        assert proc.returncode == 130, err.decode()
        assert "Traceback" not in err.decode()
        done = assert_consistent(out, clean, uids)
        assert len(done) < len(uids)
        nothing_staged(local, out)
        assert_no_leftovers(out)
        server.bandwidth = None
        again = run(*args)
        assert again.returncode == 0, again.stderr
        assert_finished(out, clean, uids)
        nothing_staged(local, out)


def test_killed_run_leftover_is_swept(archive: FakeArchive, tmp_path: Path) -> None:
    """kill -9 leaves the run's folder in PATH; the next run uses a fresh one, removes the dead
    one, and completes the tree."""
    uids = [s.uid for s in archive.series]
    clean = Tree.expected(archive)
    out, manifest = tmp_path / "out", write_manifest(tmp_path, uids)
    total = sum(i.size for s in archive.series for i in s.instances)
    with (
        tmpfs(tmp_path / "local", "64m") as local,
        run_in_thread(FakeNbiaServer(archive, bandwidth=total / 4.0)) as server,
    ):
        args = [*download_args(manifest, out, server.v4_url), "--staging", str(local)]
        proc = start(*args)
        try:
            assert wait_for(lambda: any(local.glob("bulkdl-*/*/*")), 30)
        finally:
            proc.kill()
            proc.wait(timeout=30)
        (dead,) = list(local.iterdir())
        server.bandwidth = None
        again = run(*args)
        assert again.returncode == 0, again.stderr
        assert not dead.exists()
        assert_finished(out, clean, uids)
        nothing_staged(local, out)


def test_full_tree_disk_aborts_cleanly(archive: FakeArchive, tmp_path: Path) -> None:
    """Staged on a roomy disk, placed on a 2 MB one: exit 3 "disk is full", done series whole,
    no partial copy anywhere, PATH empty; with space, a re-run completes the tree."""
    uids = [s.uid for s in archive.series]
    clean = Tree.expected(archive)
    manifest = write_manifest(tmp_path, uids)
    with (
        tmpfs(tmp_path / "local", "64m") as local,
        tmpfs(tmp_path / "disk", "2m") as disk,
        run_in_thread(FakeNbiaServer(archive)) as server,
    ):
        out = disk / "out"
        args = [*download_args(manifest, out, server.v4_url), "--staging", str(local)]
        full = run(*args)
        assert full.returncode == 3, full.stderr
        errors = [line for line in full.stderr.splitlines() if line.startswith("bulkdl: error:")]
        assert len(errors) == 1 and "the disk is full" in errors[0], full.stderr
        assert str(out) in errors[0], "the tree's disk is the one named"
        assert "Traceback" not in full.stderr
        report = status(out)
        assert report["counts"]["done"] < len(uids)
        got = Tree.of(out)
        assert got.files.items() <= clean.files.items(), "a partial or wrong file in the tree"
        not_done = set(report["pending"]) | {r["uid"] for r in report["failed"]}
        for uid in set(uids) - not_done if report["total"] else ():
            assert got.series_files(uid) == clean.series_files(uid), f"done {uid} not whole"
        nothing_staged(local, out)
        assert_no_leftovers(out)
        remount(disk, "size=64m")
        again = run(*args)
        assert again.returncode == 0, again.stderr
        assert_finished(out, clean, uids)
        nothing_staged(local, out)


def test_staging_disk_full_names_it(archive: FakeArchive, tmp_path: Path) -> None:
    """PATH itself full: exit 3 naming PATH, not the tree."""
    uids = [s.uid for s in archive.series]
    out, manifest = tmp_path / "out", write_manifest(tmp_path, uids)
    with (
        tmpfs(tmp_path / "local", "512k") as local,
        run_in_thread(FakeNbiaServer(archive)) as server,
    ):
        result = run(*download_args(manifest, out, server.v4_url), "--staging", str(local))
        assert result.returncode == 3, result.stderr
        assert f"cannot write under {local}: the disk is full" in result.stderr
        nothing_staged(local, out)


# -- the pieces ----------------------------------------------------------------------------------


def test_move_across_filesystems(tmp_path: Path) -> None:
    """A move to another filesystem copies, replaces the target whole and removes the source;
    a full target disk raises ENOSPC and leaves the target and the landing folder as they were;
    an exclusive move never replaces a file, on one filesystem or across two."""
    source = tmp_path / "src.bin"
    with tmpfs(tmp_path / "disk", "1m") as disk:
        landing = disk / "landing"
        landing.mkdir()
        target = disk / "a.bin"
        target.write_bytes(b"old")
        source.write_bytes(b"x" * 300_000)
        assert move_into(source, target, landing) is True
        assert target.read_bytes() == b"x" * 300_000 and not source.exists()
        big = tmp_path / "big.bin"
        big.write_bytes(b"y" * 2_000_000)
        with pytest.raises(OSError) as raised:
            move_into(big, target, landing)
        assert raised.value.errno == errno.ENOSPC
        assert target.read_bytes() == b"x" * 300_000 and big.exists()
        assert list(landing.iterdir()) == []
        small = tmp_path / "small.bin"
        small.write_bytes(b"s")
        with pytest.raises(FileExistsError):
            move_into(small, target, landing, exclusive=True)
        assert target.read_bytes() == b"x" * 300_000 and small.exists()
        assert list(landing.iterdir()) == []
        assert move_into(small, disk / "new.bin", landing, exclusive=True) is True
        assert (disk / "new.bin").read_bytes() == b"s" and not small.exists()
    same = tmp_path / "same.bin"
    same.write_bytes(b"z")
    assert move_into(same, tmp_path / "moved.bin") is False
    same.write_bytes(b"w")
    with pytest.raises(FileExistsError):
        move_into(same, tmp_path / "moved.bin", exclusive=True)
    assert (tmp_path / "moved.bin").read_bytes() == b"z" and same.exists()
    assert move_into(same, tmp_path / "other.bin", exclusive=True) is False
    assert not same.exists()


def test_private_folder_and_sweep(tmp_path: Path) -> None:
    """A run's folder is private and goes on close; a dead run's folder is swept by the next,
    a live run's never."""
    area = PrivateFolder.create(tmp_path)
    assert area.path.parent == tmp_path and area.path.name.startswith("bulkdl-")
    assert area.path.stat().st_mode & 0o777 == 0o700
    (area.path / "x").write_bytes(b"1")
    assert sweep(tmp_path) == []  # its lock is held
    dead = tmp_path / "bulkdl-dead"
    dead.mkdir()
    (dead / ".lock").touch()
    (dead / "series").mkdir()
    other = tmp_path / "bulkdl-other"  # another process's: locked
    other.mkdir()
    fd = os.open(other / ".lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        second = PrivateFolder.create(tmp_path)
        assert not dead.exists() and other.exists() and area.path.exists()
        second.close()
    finally:
        os.close(fd)
    area.close()
    area.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bulkdl-other"]


def test_staging_setting_layers(tmp_path: Path) -> None:
    """BULKDL_STAGING sets the folder, the flag wins, a missing folder is refused by name."""
    env = {"BULKDL_STAGING": str(tmp_path)}
    assert load_settings(flags={}, config_file=None, env=env).staging == tmp_path
    flags = {"staging": str(tmp_path / "x")}
    with pytest.raises(InputError, match=r"--staging: .*no such folder"):
        load_settings(flags=flags, config_file=None, env=env)
    (tmp_path / "x").mkdir()
    assert load_settings(flags=flags, config_file=None, env=env).staging == tmp_path / "x"
