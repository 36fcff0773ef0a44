"""Folders bulkdl may not write, ledgers it must not trust, and the modes of what it creates.

An unwritable output (a read-only mount: root ignores chmod) and a corrupt ledger end the run
with exit 3 and one clear line, changing nothing; everything a run creates follows the user's
umask and nothing is world-writable.
"""

from __future__ import annotations

import os
import sqlite3
import stat
from functools import partial
from pathlib import Path

import pytest
from crashlib import (
    SIDECARS,
    Tree,
    assert_no_leftovers,
    download_args,
    remount,
    run,
    snapshot,
    status,
    tmpfs,
    write_manifest,
)

from bulkdl.testing import FakeArchive, FakeNbiaServer, Fault


@pytest.fixture
def all_uids(small_archive: FakeArchive) -> list[str]:
    """Every series UID of the small archive, in archive order."""
    return [s.uid for s in small_archive.series]


def one_error_line(stderr: str) -> str:
    """The single `bulkdl: error:` line of ``stderr`` (and no traceback)."""
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("bulkdl: error:")]
    assert len(errors) == 1, stderr
    return errors[0]


def test_read_only_output_aborts_and_changes_nothing(
    nbia_server: FakeNbiaServer, tmp_path: Path, all_uids: list[str]
) -> None:
    """A read-only output folder holding a half-done tree: exit 3 "read-only", not one byte
    changed, no image fetched; `bulkdl status` still reads its ledger."""
    half = all_uids[:3]
    with tmpfs(tmp_path / "disk", "16m") as disk:
        out = disk / "out"
        first = run(
            *download_args(write_manifest(tmp_path, half, "half.tcia"), out, nbia_server.v4_url)
        )
        assert first.returncode == 0, first.stderr
        before = snapshot(disk)
        remount(disk, "ro")
        nbia_server.reset_log()
        result = run(*download_args(write_manifest(tmp_path, all_uids), out, nbia_server.v4_url))
        assert result.returncode == 3, result.stderr
        assert "read-only" in one_error_line(result.stderr)
        assert snapshot(disk) == before
        assert nbia_server.log.count("getImage") == 0
        assert status(out)["counts"]["done"] == len(half)


def test_fresh_read_only_output_aborts(
    nbia_server: FakeNbiaServer, tmp_path: Path, all_uids: list[str]
) -> None:
    """An empty read-only mount as --out: exit 3 naming the folder, nothing created."""
    with tmpfs(tmp_path / "disk", "1m") as disk:
        remount(disk, "ro")
        manifest = write_manifest(tmp_path, all_uids)
        result = run(*download_args(manifest, disk / "out", nbia_server.v4_url))
        assert result.returncode == 3, result.stderr
        line = one_error_line(result.stderr)
        assert str(disk / "out") in line and "read-only" in line
        assert list(disk.iterdir()) == []
    assert nbia_server.log.count("getImage") == 0


def test_output_under_a_regular_file_aborts(
    nbia_server: FakeNbiaServer, tmp_path: Path, all_uids: list[str]
) -> None:
    """--out below a regular file: exit 3 with one line, the file untouched."""
    blocker = tmp_path / "file"
    blocker.write_bytes(b"not a folder")
    manifest = write_manifest(tmp_path, all_uids)
    result = run(*download_args(manifest, blocker / "out", nbia_server.v4_url))
    assert result.returncode == 3, result.stderr
    assert "cannot write" in one_error_line(result.stderr)
    assert blocker.read_bytes() == b"not a folder"


def _random_bytes(ledger: Path) -> None:
    ledger.write_bytes(os.urandom(8192))


def _truncated(ledger: Path) -> None:
    data = ledger.read_bytes()
    ledger.write_bytes(data[: len(data) // 3])


def _foreign_database(ledger: Path) -> None:
    ledger.unlink()
    conn = sqlite3.connect(ledger)
    conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
    conn.execute("INSERT INTO notes (body) VALUES ('someone else''s data')")
    conn.commit()
    conn.close()


def _foreign_wal_database(ledger: Path) -> None:
    ledger.unlink()
    conn = sqlite3.connect(ledger)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("CREATE TABLE series (uid TEXT)")
    conn.commit()
    conn.close()


@pytest.mark.parametrize(
    "corrupt",
    [_random_bytes, _truncated, _foreign_database, _foreign_wal_database],
    ids=["random-bytes", "truncated", "foreign-db", "foreign-wal-db"],
)
def test_bad_ledger_aborts_and_changes_nothing(
    nbia_server: FakeNbiaServer, tmp_path: Path, all_uids: list[str], corrupt: object
) -> None:
    """A ledger spoiled on purpose: exit 3 naming it, the ledger byte for byte as it was, the
    tree and sidecars untouched, no image fetched."""
    out = tmp_path / "out"
    args = download_args(write_manifest(tmp_path, all_uids), out, nbia_server.v4_url)
    first = run(*download_args(write_manifest(tmp_path, all_uids[:3], "half.tcia"), out,
                               nbia_server.v4_url))  # fmt: skip
    assert first.returncode == 0, first.stderr
    ledger = out / ".bulkdl" / "ledger.sqlite"
    corrupt(ledger)  # type: ignore[operator]
    before = snapshot(out, skip=frozenset({".bulkdl/lock"}))
    nbia_server.reset_log()
    result = run(*args)
    assert result.returncode == 3, result.stderr
    assert str(ledger) in one_error_line(result.stderr)
    assert snapshot(out, skip=frozenset({".bulkdl/lock"})) == before
    assert nbia_server.log.count("getImage") == 0
    again = run("status", str(out), "--json")
    assert again.returncode == 3, again.stderr
    assert str(ledger) in one_error_line(again.stderr)
    assert snapshot(out, skip=frozenset({".bulkdl/lock"})) == before


def _set_umask(umask: int) -> None:
    os.umask(umask)


def _created_modes(out: Path) -> dict[str, int]:
    """Permission bits of ``out`` and of everything under it."""
    modes = {".": stat.S_IMODE(out.stat().st_mode)}
    for path in out.rglob("*"):
        modes[path.relative_to(out).as_posix()] = stat.S_IMODE(path.lstat().st_mode)
    return modes


@pytest.mark.parametrize("umask", [0o077, 0o022, 0o002], ids=["077", "022", "002"])
def test_created_files_follow_umask(
    nbia_server: FakeNbiaServer, tmp_path: Path, all_uids: list[str], umask: int
) -> None:
    """Every folder and file a run creates (tree, sidecars, .bulkdl, ledger) has exactly the mode
    the user's umask gives (0666/0777 masked): none world-writable, none readable by others
    under 077."""
    out = tmp_path / "out"
    bad = all_uids[-1]
    nbia_server.faults.always(bad, Fault.short_zip(keep=1))
    result = run(
        *download_args(write_manifest(tmp_path, all_uids), out, nbia_server.v4_url),
        "--retries",
        "0",
        preexec_fn=partial(_set_umask, umask),
    )
    assert result.returncode == 1, result.stderr
    modes = _created_modes(out)
    names = set(modes)
    assert {"metadata.csv", "failures.csv", "LICENSES", ".bulkdl", ".bulkdl/ledger.sqlite"} <= names
    assert any(Path(p).parts[0] not in SIDECARS for p in names if p != ".")
    for rel, mode in sorted(modes.items()):
        is_dir = (out / rel).is_dir()
        want = (0o777 if is_dir else 0o666) & ~umask
        assert mode == want, f"{rel}: {oct(mode)}, the umask {oct(umask)} gives {oct(want)}"
        assert not mode & stat.S_IWOTH, f"{rel} is world-writable"
    assert_no_leftovers(out)
    assert len(Tree.of(out).files) == sum(
        len(s.instances) for s in nbia_server.archive.series if s.uid != bad
    )
