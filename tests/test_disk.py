"""A full disk, a file size limit, a ledger that cannot grow: the run aborts cleanly (exit 3, one
line, no traceback), nothing is recorded done that is not whole in the tree, staging is cleared,
the ledger stays readable, and once space returns a re-run completes the tree.

The small filesystems are tmpfs mounts made by each test (root and mount permission needed; the
tests skip with the reason otherwise).
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from crashlib import (
    Tree,
    assert_finished,
    assert_no_leftovers,
    download_args,
    over_two_mb,
    remount,
    run,
    status,
    tmpfs,
    write_manifest,
)

from bulkdl.testing import FakeArchive, FakeNbiaServer, run_in_thread


@pytest.fixture(scope="module")
def big_archive(tmp_path_factory: pytest.TempPathFactory) -> FakeArchive:
    """An archive of more than 2 MB (see :func:`crashlib.over_two_mb`)."""
    return over_two_mb(tmp_path_factory.mktemp("big-archive"))


def assert_aborted(stderr: str, words: str) -> None:
    """One clear error line saying ``words``, no traceback."""
    errors = [line for line in stderr.splitlines() if line.startswith("bulkdl: error:")]
    assert len(errors) == 1, stderr
    assert words in errors[0], stderr
    assert "Traceback" not in stderr


def assert_done_means_whole(out: Path, clean: Tree, uids: list[str]) -> set[str]:
    """Every series the ledger (read through `bulkdl status`) records done is whole in the tree
    with the right MD5s; returns them."""
    report = status(out)
    not_done = set(report["pending"]) | {r["uid"] for r in report["failed"]}
    not_done |= {r["uid"] for r in report["incomplete"]}
    done = {uid for uid in uids if uid not in not_done} & _known(report, uids)
    got = Tree.of(out)
    for uid in done:
        assert got.series_files(uid) == clean.series_files(uid), f"done {uid} is not whole"
    assert got.files.items() <= clean.files.items(), "a file in the tree has wrong bytes"
    return done


def _known(report: dict[str, object], uids: list[str]) -> set[str]:
    # A ledger that died before resolving knows no series at all.
    return set(uids) if report["total"] else set()


def assert_ledger_readable(out: Path) -> None:
    """`bulkdl status` reads the ledger, and the file passes SQLite's integrity check (read as
    immutable when its WAL is empty, so that a full disk does not stop the check itself)."""
    status(out)
    path = out / ".bulkdl" / "ledger.sqlite"
    wal = path.with_name(path.name + "-wal")
    immutable = "&immutable=1" if not wal.exists() or wal.stat().st_size == 0 else ""
    conn = sqlite3.connect(f"{path.as_uri()}?mode=ro{immutable}", uri=True)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        conn.close()


def test_disk_full_aborts_then_rerun_completes(big_archive: FakeArchive, tmp_path: Path) -> None:
    """A 2 MB disk: exit 3 "disk is full", done series whole, staging empty; more space: exit 0."""
    uids = [s.uid for s in big_archive.series]
    clean = Tree.expected(big_archive)
    manifest = write_manifest(tmp_path, uids)
    with (
        tmpfs(tmp_path / "disk", "2m") as disk,
        run_in_thread(FakeNbiaServer(big_archive)) as server,
    ):
        out = disk / "out"
        args = download_args(manifest, out, server.v4_url, concurrency=2)
        full = run(*args)
        assert full.returncode == 3, full.stderr
        assert_aborted(full.stderr, "the disk is full")
        done = assert_done_means_whole(out, clean, uids)
        assert len(done) < len(uids)
        assert_no_leftovers(out)
        assert_ledger_readable(out)
        remount(disk, "size=64m")
        again = run(*args)
        assert again.returncode == 0, again.stderr
        assert_finished(out, clean, uids)


def _limit_file_size(limit: int) -> Callable[[], None]:
    def preexec() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return preexec


def test_file_size_limit_aborts_then_rerun_completes(
    big_archive: FakeArchive, tmp_path: Path
) -> None:
    """Under RLIMIT_FSIZE (EFBIG, SIGXFSZ ignored) a run aborts with exit 3; without it, exit 0."""
    uids = [s.uid for s in big_archive.series]
    clean = Tree.expected(big_archive)
    out, manifest = tmp_path / "out", write_manifest(tmp_path, uids)
    with run_in_thread(FakeNbiaServer(big_archive)) as server:
        args = download_args(manifest, out, server.v4_url)
        limited = run(*args, preexec_fn=_limit_file_size(256 * 1024))
        assert limited.returncode == 3, limited.stderr
        assert_aborted(limited.stderr, "too large")
        assert_done_means_whole(out, clean, uids)
        assert_no_leftovers(out)
        assert_ledger_readable(out)
        again = run(*args)
        assert again.returncode == 0, again.stderr
    assert_finished(out, clean, uids)


def _fill(disk: Path) -> Path:
    """Write a ballast file until the filesystem refuses another byte."""
    ballast = disk / "ballast"
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        for size in (1 << 16, 4096, 512, 1):
            with contextlib.suppress(OSError):
                while os.write(fd, b"\0" * size):
                    pass
    finally:
        os.close(fd)
    return ballast


def test_ledger_on_full_disk_stays_readable(small_archive: FakeArchive, tmp_path: Path) -> None:
    """A disk full before the ledger's first write of a run: exit 3, the ledger still readable
    with what it knew, nothing new in the tree; freed space lets a re-run finish."""
    uids = [s.uid for s in small_archive.series]
    half = uids[: len(uids) // 2]
    with (
        tmpfs(tmp_path / "disk", "4m") as disk,
        run_in_thread(FakeNbiaServer(small_archive)) as server,
    ):
        out = disk / "out"
        first = run(*download_args(write_manifest(tmp_path, half, "half.tcia"), out, server.v4_url))
        assert first.returncode == 0, first.stderr
        before = Tree.of(out)
        ballast = _fill(disk)
        args = download_args(write_manifest(tmp_path, uids), out, server.v4_url)
        full = run(*args)
        assert full.returncode == 3, full.stderr
        assert_aborted(full.stderr, "the disk is full")
        assert "move it aside" not in full.stderr
        assert Tree.of(out) == before
        assert_ledger_readable(out)
        report = status(out)
        assert report["counts"]["done"] == len(half)
        assert_no_leftovers(out)
        ballast.unlink()
        again = run(*args)
        assert again.returncode == 0, again.stderr
        assert len(Tree.of(out).files) == sum(len(s.instances) for s in small_archive.series)
        assert status(out)["counts"]["done"] == len(uids)


def test_ledger_hits_file_size_limit_mid_run(small_archive: FakeArchive, tmp_path: Path) -> None:
    """The ledger's WAL outgrows RLIMIT_FSIZE mid-run (series files fit): exit 3, the ledger
    stays readable, done series are whole; a re-run completes."""
    uids = [s.uid for s in small_archive.series]
    out, manifest = tmp_path / "out", write_manifest(tmp_path, uids)
    with run_in_thread(FakeNbiaServer(small_archive)) as server:
        args = download_args(manifest, out, server.v4_url, concurrency=1)
        limited = run(*args, preexec_fn=_limit_file_size(96 * 1024))
        assert limited.returncode == 3, limited.stderr
        assert "ledger" in limited.stderr
        assert_aborted(limited.stderr, "")
        assert_ledger_readable(out)
        assert_no_leftovers(out)
        again = run(*args)
        assert again.returncode == 0, again.stderr
    assert status(out)["counts"]["done"] == len(uids)
    assert len(Tree.of(out).files) == sum(len(s.instances) for s in small_archive.series)
