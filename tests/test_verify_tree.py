"""`bulkdl verify DIR`: every file re-read against the ledger or a lock; missing, modified and
unexpected files named by series; exit 0 only when all match. Real downloads from the fake
NBIA server on 127.0.0.1 build the trees."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest

import bulkdl
from bulkdl.audit import tree_lock, verify_tree
from bulkdl.lockfile import Lock, locked_series, write_lock
from bulkdl.records import Series
from bulkdl.testing import FakeNbiaServer
from tests.helpers import expected_tree, manifest, run


@pytest.fixture
def done(nbia_server: FakeNbiaServer, tmp_path: Path) -> Path:
    """A finished tree of every series of the small archive (downloaded in-process)."""
    uids = [s.uid for s in nbia_server.archive.series]
    out = tmp_path / "out"
    result = bulkdl.download(str(manifest(tmp_path, uids)), out=out, api_url=nbia_server.v4_url)
    assert result.exit_code == 0
    return out


def series_of(path: str) -> str:
    """The series UID a default-layout path belongs to."""
    return path.split("/")[2]


def test_clean_tree_verifies(done: Path) -> None:
    """An untouched tree (sidecars and all) exits 0 with every file counted."""
    assert (done / "metadata.csv").exists() and (done / "LICENSES").is_dir()
    result = run("verify", str(done), "--no-progress")
    assert result.returncode == 0, result.stdout + result.stderr
    files = len(list(p for p in done.rglob("*.dcm")))
    assert f"{files:,} files" in result.stdout
    assert result.stdout.rstrip().endswith("ok: every file matches")


def test_tampered_deleted_and_extra_files(nbia_server: FakeNbiaServer, done: Path) -> None:
    """A changed byte is 'modified', a deleted file 'missing', each under its series; a file
    nobody recorded is 'unexpected'; exit 1."""
    paths = sorted(expected_tree(nbia_server.archive))
    tampered, deleted = paths[0], paths[-1]
    with (done / tampered).open("r+b") as handle:
        handle.seek(300)
        byte = handle.read(1)
        handle.seek(300)
        handle.write(bytes([byte[0] ^ 0xFF]))
    (done / deleted).unlink()
    (done / "notes.txt").write_text("mine")
    (done / "LICENSES" / "extra.txt").write_text("a sidecar folder: not reported")

    result = run("verify", str(done), "--no-progress")
    assert result.returncode == 1
    out = result.stdout
    assert f"series {series_of(tampered)}: 1 modified" in out
    assert f"  modified  {tampered} (sha256 differs)" in out
    assert f"series {series_of(deleted)}: 1 missing" in out
    assert f"  missing   {deleted}" in out
    assert "unexpected (recorded nowhere): 1 file(s)\n  notes.txt\n" in out
    assert "extra.txt" not in out
    assert out.rstrip().endswith("FAILED: 2 of 8 series differ; 1 unexpected file(s)")


def test_json_lines_end_with_the_report(nbia_server: FakeNbiaServer, done: Path) -> None:
    """--json writes the progress events, then one verify_finished object with the findings."""
    victim = sorted(expected_tree(nbia_server.archive))[3]
    (done / victim).write_bytes(b"x")
    result = run("verify", str(done), "--json")
    assert result.returncode == 1
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    events = [line["event"] for line in lines]
    assert events[0] == "run_planned" and events[-1] == "verify_finished"
    assert "series_finished" in events and "run_finished" in events
    report = lines[-1]
    assert report["ok"] is False and report["series"] == 8 and report["unexpected"] == []
    [bad] = report["differing"]
    assert bad["uid"] == series_of(victim)
    assert bad["modified"][0]["path"] == victim
    assert bad["modified"][0]["detail"].startswith("size ")


def test_against_a_lock(nbia_server: FakeNbiaServer, done: Path, tmp_path: Path) -> None:
    """--lock compares the tree with the lock's paths and hashes; a lock made before download
    (no paths) is refused with exit 2."""
    lock_file = tmp_path / "tree.lock"
    write_lock(tree_lock(done).lock, lock_file)
    assert run("verify", str(done), "--lock", str(lock_file)).returncode == 0
    victim = sorted(expected_tree(nbia_server.archive))[5]
    (done / victim).unlink()
    result = run("verify", str(done), "--lock", str(lock_file), "--no-progress")
    assert result.returncode == 1
    assert f"  missing   {victim}" in result.stdout
    assert f"checked against the lock {lock_file}" in result.stdout

    counts = tmp_path / "counts.lock"
    write_lock(Lock((locked_series(Series("1.2.3", ImageCount=1, FileSize=1)),)), counts)
    refused = run("verify", str(done), "--lock", str(counts))
    assert refused.returncode == 2
    assert "series 1.2.3 has no tree paths" in refused.stderr


def test_ledger_without_sha256(nbia_server: FakeNbiaServer, done: Path, tmp_path: Path) -> None:
    """A ledger from before SHA-256 was kept: verify falls back to the MD5; the lock of the
    tree reads the files for their SHA-256 and refuses one that changed, naming it."""
    with sqlite3.connect(done / ".bulkdl" / "ledger.sqlite") as db:
        db.execute("UPDATE files SET sha256 = NULL")
    db.close()
    assert verify_tree(done).ok
    made = tree_lock(done)
    assert made.lock.has_instances and made.lock.digest is not None
    victim = sorted(expected_tree(nbia_server.archive))[2]
    data = bytearray((done / victim).read_bytes())
    data[-1] ^= 1
    (done / victim).write_bytes(bytes(data))
    report = verify_tree(done)
    assert [p.detail for p in report.differing[series_of(victim)]] == ["md5 differs"]
    locked = run("lock", "--from", str(done), "-o", str(tmp_path / "x.lock"))
    assert locked.returncode == 1
    assert f"{victim}: modified since bulkdl placed it (md5 differs)" in locked.stderr
    assert not (tmp_path / "x.lock").exists()


def test_no_ledger_is_exit_2(tmp_path: Path) -> None:
    """A folder that is no bulkdl tree: one clear line, exit 2."""
    result = run("verify", str(tmp_path))
    assert result.returncode == 2
    assert "no bulkdl ledger here" in result.stderr


def test_symlink_is_reported(nbia_server: FakeNbiaServer, done: Path) -> None:
    """A recorded file replaced by a symlink is modified; a stray symlinked folder unexpected."""
    victim = sorted(expected_tree(nbia_server.archive))[1]
    target = done.parent / "elsewhere.dcm"
    target.write_bytes((done / victim).read_bytes())
    (done / victim).unlink()
    (done / victim).symlink_to(target)
    (done / "linked").symlink_to(done.parent, target_is_directory=True)
    report = verify_tree(done)
    assert [p.detail for p in report.differing[series_of(victim)]] == ["a symlink"]
    assert report.unexpected == ("linked",)


def test_shard_ledgers_are_merged(nbia_server: FakeNbiaServer, tmp_path: Path) -> None:
    """A tree written by two shards (ledger.sqlite and ledger-2.sqlite) verifies and locks as
    one: every series of both, each file once."""
    uids = [s.uid for s in nbia_server.archive.series]
    one, two = tmp_path / "one", tmp_path / "two"
    for out, part in ((one, uids[:3]), (two, uids[3:])):
        m = manifest(tmp_path, part, f"{out.name}.tcia")
        assert bulkdl.download(str(m), out=out, api_url=nbia_server.v4_url).exit_code == 0
    for path in two.rglob("*.dcm"):
        target = one / path.relative_to(two)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    shutil.copy2(two / ".bulkdl" / "ledger.sqlite", one / ".bulkdl" / "ledger-2.sqlite")
    report = verify_tree(one)
    assert report.ok and report.series == len(uids)
    lock = tree_lock(one).lock
    assert set(lock.uids) == set(uids) and lock.has_instances
