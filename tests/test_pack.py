"""``--pack zip|tar``: each verified series enters the tree as one deterministic archive, while
the ledger, ``verify``, ``lock --from`` and re-runs keep working instance by instance."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pytest
from crashlib import download_args, start, status, wait_for, write_manifest

from bulkdl.archive import digest_members, write_archive
from bulkdl.config import load_settings
from bulkdl.errors import InputError
from bulkdl.testing import FakeArchive, FakeNbiaServer, run_in_thread
from tests.helpers import SIDECARS, download, get_images, manifest, run

KINDS = ("zip", "tar")


def archives(out: Path) -> dict[str, str]:
    """Every file of the tree (sidecars aside): relative path -> MD5."""
    found = {}
    for path in sorted(out.rglob("*")):
        rel = path.relative_to(out)
        if rel.parts[0] not in SIDECARS and path.is_file():
            found[rel.as_posix()] = hashlib.md5(path.read_bytes()).hexdigest()
    return found


def expected_archives(archive: FakeArchive, kind: str) -> dict[str, dict[str, str]]:
    """Default layout, packed: archive path -> {member name: MD5}."""
    return {
        f"{s.patient_id}/{s.study_uid}/{s.uid}.{kind}": {
            f"{i.sop_uid}.dcm": i.md5 for i in s.instances
        }
        for s in archive.series
    }


def members(path: Path) -> dict[str, str]:
    """An archive's members in archive order: name -> MD5 of its bytes."""
    return {m.name: m.md5 for m in digest_members(path, sha256=False)}


def download_all(server: FakeNbiaServer, out: Path, tmp: Path, *options: str) -> None:
    uids = [s.uid for s in server.archive.series]
    result = download(server, out, str(manifest(tmp, uids)), options=options)
    assert result.returncode == 0, result.stderr


def flip_byte_in_member(path: Path, name: str) -> None:
    """Change one byte in the middle of member ``name``'s data, in place."""
    if path.suffix == ".zip":
        with zipfile.ZipFile(path) as zf:
            info = zf.getinfo(name)
        with path.open("rb") as f:
            f.seek(info.header_offset + 26)
            name_len, extra_len = (
                int.from_bytes(f.read(2), "little"),
                int.from_bytes(f.read(2), "little"),
            )
        offset = info.header_offset + 30 + name_len + extra_len + info.file_size // 2
    else:
        with tarfile.open(path) as tf:
            member = tf.getmember(name)
        offset = member.offset_data + member.size // 2
    with path.open("r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


@pytest.mark.parametrize("kind", KINDS)
def test_pack_places_one_archive_per_series(
    nbia_server: FakeNbiaServer, tmp_path: Path, kind: str
) -> None:
    """One archive per series at its folder's path + .zip/.tar, members named <SOP>.dcm in order
    with the archive's bytes, fixed times and modes; verify passes; metadata.csv names it."""
    out = tmp_path / "out"
    download_all(nbia_server, out, tmp_path, "--pack", kind)
    want = expected_archives(nbia_server.archive, kind)
    assert set(archives(out)) == set(want)
    for rel, content in want.items():
        got = members(out / rel)
        assert list(got) == sorted(content), "members in name order"
        assert got == content
    first = out / min(want)
    if kind == "zip":
        with zipfile.ZipFile(first) as zf:
            infos = zf.infolist()
        assert {(i.compress_type, i.date_time, i.external_attr >> 16) for i in infos} == {
            (zipfile.ZIP_STORED, (1980, 1, 1, 0, 0, 0), 0o100644)
        }
    else:
        with tarfile.open(first) as tf:
            infos_tar = tf.getmembers()
        assert {(m.mtime, m.uid, m.gid, m.uname, m.mode) for m in infos_tar} == {
            (0, 0, 0, "", 0o644)
        }
    checked = run("verify", str(out), "--no-progress")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    with (out / "metadata.csv").open(newline="") as f:
        locations = {row["Series UID"]: row["File Location"] for row in csv.DictReader(f)}
    for s in nbia_server.archive.series:
        assert locations[s.uid] == f"./{s.patient_id}/{s.study_uid}/{s.uid}.{kind}"
    conn = sqlite3.connect(out / ".bulkdl" / "ledger.sqlite")
    rows = conn.execute("SELECT path, archive, sop_uid FROM files").fetchall()
    conn.close()
    assert len(rows) == sum(len(c) for c in want.values())
    assert all(path == f"{arc}/{sop}.dcm" and arc in want for path, arc, sop in rows)


def test_archives_are_byte_identical_across_runs(
    nbia_server: FakeNbiaServer, tmp_path: Path
) -> None:
    """Two runs (other concurrency, one staged elsewhere) give byte-identical archives."""
    staging = tmp_path / "staging"
    staging.mkdir()
    for kind in KINDS:
        one, two = tmp_path / f"one-{kind}", tmp_path / f"two-{kind}"
        download_all(nbia_server, one, tmp_path, "--pack", kind, "--concurrency", "1")
        download_all(
            nbia_server,
            two,
            tmp_path,
            "--pack",
            kind,
            "--concurrency",
            "4",
            "--staging",
            str(staging),
        )
        assert archives(one) == archives(two)
        assert len(archives(one)) == len(nbia_server.archive.series)


@pytest.mark.parametrize("kind", KINDS)
def test_verify_names_a_corrupted_member(
    nbia_server: FakeNbiaServer, tmp_path: Path, kind: str
) -> None:
    """One byte changed inside one member: verify exits 1 naming that instance only; a member
    nothing records is reported as unexpected."""
    out = tmp_path / "out"
    download_all(nbia_server, out, tmp_path, "--pack", kind)
    series = nbia_server.archive.series[1]
    rel = f"{series.patient_id}/{series.study_uid}/{series.uid}.{kind}"
    victim = series.instances[2].sop_uid
    flip_byte_in_member(out / rel, f"{victim}.dcm")
    result = run("verify", str(out), "--no-progress")
    assert result.returncode == 1, result.stdout + result.stderr
    named = [line for line in result.stdout.splitlines() if line.startswith("  ")]
    assert len(named) == 1, result.stdout
    assert "modified" in named[0] and f"{rel}/{victim}.dcm" in named[0]
    assert f"series {series.uid}: 1 modified" in result.stdout
    report = json.loads(run("verify", str(out), "--json").stdout.splitlines()[-1])
    assert report["differing"][0]["modified"][0]["path"] == f"{rel}/{victim}.dcm"


def test_member_nobody_records_is_unexpected(nbia_server: FakeNbiaServer, tmp_path: Path) -> None:
    """A member added to a packed archive is listed as unexpected; verify exits 1."""
    out = tmp_path / "out"
    download_all(nbia_server, out, tmp_path, "--pack", "zip")
    rel = min(archives(out))
    with zipfile.ZipFile(out / rel, "a") as zf:
        zf.writestr("extra.dcm", b"not recorded")
    result = run("verify", str(out), "--no-progress")
    assert result.returncode == 1
    assert f"  {rel}/extra.dcm" in result.stdout


def test_deleted_archive_is_fetched_again(nbia_server: FakeNbiaServer, tmp_path: Path) -> None:
    """A deleted archive: the re-run fetches exactly that series and packs the same bytes."""
    out = tmp_path / "out"
    download_all(nbia_server, out, tmp_path, "--pack", "zip")
    before = archives(out)
    series = nbia_server.archive.series[3]
    rel = f"{series.patient_id}/{series.study_uid}/{series.uid}.zip"
    (out / rel).unlink()
    fetched = get_images(nbia_server)
    again = download(
        nbia_server,
        out,
        str(manifest(tmp_path, [s.uid for s in nbia_server.archive.series])),
        options=("--pack", "zip"),
    )
    assert again.returncode == 0, again.stderr
    assert get_images(nbia_server) - fetched == 1
    assert get_images(nbia_server, series.uid) == 2
    assert archives(out) == before
    assert run("verify", str(out), "--no-progress").returncode == 0


def test_untouched_packed_series_are_skipped(nbia_server: FakeNbiaServer, tmp_path: Path) -> None:
    """A re-run over a packed tree fetches nothing."""
    out = tmp_path / "out"
    download_all(nbia_server, out, tmp_path, "--pack", "tar")
    fetched = get_images(nbia_server)
    download_all(nbia_server, out, tmp_path, "--pack", "tar")
    assert get_images(nbia_server) == fetched


def test_lock_of_a_packed_tree(nbia_server: FakeNbiaServer, tmp_path: Path) -> None:
    """lock --from records each instance's archive and <archive>/<member> path (version 2);
    verify --lock passes, then fails on a corrupted member; the dataset digest is the same
    packed as zip, tar or not at all."""
    digests = {}
    for kind in (*KINDS, None):
        out = tmp_path / f"out-{kind}"
        download_all(nbia_server, out, tmp_path, *(("--pack", kind) if kind else ()))
        lock = tmp_path / f"{kind}.lock"
        made = run("lock", "--from", str(out), "-o", str(lock))
        assert made.returncode == 0, made.stderr
        data = json.loads(lock.read_text())
        digests[kind] = data["digest"]
        instance = data["series"][0]["instances"][0]
        if kind is None:
            assert data["version"] == 1 and "archive" not in instance
            continue
        assert data["version"] == 2
        assert instance["archive"].endswith(f".{kind}")
        assert instance["path"] == f"{instance['archive']}/{instance['SOPInstanceUID']}.dcm"
        checked = run("verify", str(out), "--lock", str(lock), "--no-progress")
        assert checked.returncode == 0, checked.stdout + checked.stderr
        flip_byte_in_member(out / instance["archive"], f"{instance['SOPInstanceUID']}.dcm")
        checked = run("verify", str(out), "--lock", str(lock), "--no-progress")
        assert checked.returncode == 1
        assert f"{instance['path']}" in checked.stdout
    assert len(set(digests.values())) == 1


def test_interrupted_packed_placement_is_taken_back(
    nbia_server: FakeNbiaServer, tmp_path: Path
) -> None:
    """A series the ledger shows mid-placement (a crash): the re-run removes its archive,
    fetches it again and ends with the same tree."""
    out = tmp_path / "out"
    download_all(nbia_server, out, tmp_path, "--pack", "zip")
    before = archives(out)
    uid = nbia_server.archive.series[0].uid
    conn = sqlite3.connect(out / ".bulkdl" / "ledger.sqlite")
    with conn:
        conn.execute("UPDATE series SET state = 'placing' WHERE uid = ?", (uid,))
    conn.close()
    download_all(nbia_server, out, tmp_path, "--pack", "zip")
    assert get_images(nbia_server, uid) == 2
    assert archives(out) == before
    assert run("verify", str(out), "--no-progress").returncode == 0


def test_pack_needs_a_series_folder(nbia_server: FakeNbiaServer, tmp_path: Path) -> None:
    """A layout that puts files at the top of the tree cannot be packed: exit 2, one line."""
    uid = nbia_server.archive.series[0].uid
    result = download(
        nbia_server,
        tmp_path / "out",
        str(manifest(tmp_path, [uid])),
        options=("--pack", "zip", "--layout", "{SOPInstanceUID}.dcm"),
    )
    assert result.returncode == 2, result.stderr
    assert "--pack needs a layout that puts each series in a folder" in result.stderr


def test_ledger_of_an_older_bulkdl(nbia_server: FakeNbiaServer, tmp_path: Path) -> None:
    """A schema-1 ledger (no archive column) is read as it is, unchanged, by status and
    verify; the next download migrates it forward and packs into the same tree."""
    out = tmp_path / "out"
    uids = [s.uid for s in nbia_server.archive.series]
    first = download(nbia_server, out, str(manifest(tmp_path, uids[:4])))
    assert first.returncode == 0, first.stderr
    path = out / ".bulkdl" / "ledger.sqlite"
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("ALTER TABLE files DROP COLUMN archive")
        conn.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    before = path.read_bytes()
    assert run("status", str(out)).returncode == 0
    assert run("verify", str(out), "--no-progress").returncode == 0
    assert path.read_bytes() == before
    again = download(nbia_server, out, str(manifest(tmp_path, uids)), options=("--pack", "zip"))
    assert again.returncode == 0, again.stderr
    conn = sqlite3.connect(path)
    version = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    packed = conn.execute("SELECT count(*) FROM files WHERE archive IS NOT NULL").fetchone()
    conn.close()
    assert version == ("2",)
    assert packed[0] == sum(len(s.instances) for s in nbia_server.archive.series[4:])
    assert run("verify", str(out), "--no-progress").returncode == 0


# -- the pieces ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_archive_bytes_depend_on_content_only(tmp_path: Path, kind: str) -> None:
    """The same files, with other times, modes and order, give the same archive bytes."""
    one, two = tmp_path / "one", tmp_path / "two"
    for folder, (mtime, mode) in ((one, (1_000_000, 0o600)), (two, (2_000_000_000, 0o755))):
        folder.mkdir()
        for n in range(3):
            path = folder / f"{n}.dcm"
            path.write_bytes(bytes([n]) * (1000 + n))
            os.chmod(path, mode)
            os.utime(path, (mtime, mtime))
    first = [(f"{n}.dcm", one / f"{n}.dcm") for n in range(3)]
    second = [(f"{n}.dcm", two / f"{n}.dcm") for n in reversed(range(3))]
    write_archive(kind, first, tmp_path / f"a.{kind}")  # type: ignore[arg-type]
    write_archive(kind, second, tmp_path / f"b.{kind}")  # type: ignore[arg-type]
    assert (tmp_path / f"a.{kind}").read_bytes() == (tmp_path / f"b.{kind}").read_bytes()
    assert [m.name for m in digest_members(tmp_path / f"a.{kind}")] == ["0.dcm", "1.dcm", "2.dcm"]


def test_damaged_member_is_reported(tmp_path: Path) -> None:
    """A STORED member with a changed byte reads as damaged (bad CRC), the others as they are."""
    for n in range(2):
        (tmp_path / f"{n}.dcm").write_bytes(bytes([n]) * 5000)
    archive = tmp_path / "s.zip"
    write_archive("zip", [(f"{n}.dcm", tmp_path / f"{n}.dcm") for n in range(2)], archive)
    flip_byte_in_member(archive, "1.dcm")
    got = list(digest_members(archive))
    assert got[0].damage is None and got[0].md5 == hashlib.md5(b"\0" * 5000).hexdigest()
    assert got[1].damage is not None and "CRC" in got[1].damage


def test_pack_setting() -> None:
    """BULKDL_PACK sets it; anything but zip or tar is refused by name."""
    assert load_settings(flags={}, config_file=None, env={"BULKDL_PACK": "tar"}).pack == "tar"
    with pytest.raises(InputError, match="BULKDL_PACK: pack must be zip or tar"):
        load_settings(flags={}, config_file=None, env={"BULKDL_PACK": "rar"})


def test_interrupted_packed_run_is_consistent(small_archive: FakeArchive, tmp_path: Path) -> None:
    """SIGINT mid-run with --pack and --staging: exit 130, every archive in the tree whole and
    recorded done, nothing staged; the re-run ends with the archives a clean run packs."""
    uids = [s.uid for s in small_archive.series]
    staging, clean, out = tmp_path / "staging", tmp_path / "clean", tmp_path / "out"
    staging.mkdir()
    total = sum(i.size for s in small_archive.series for i in s.instances)
    want = expected_archives(small_archive, "zip")
    with run_in_thread(FakeNbiaServer(small_archive, bandwidth=total / 3.0)) as server:
        args = [
            *download_args(write_manifest(tmp_path, uids), out, server.v4_url, concurrency=2),
            "--pack", "zip", "--staging", str(staging),
        ]  # fmt: skip
        proc = start(*args, stderr=subprocess.PIPE)
        try:
            assert wait_for(lambda: any(out.glob("*/*/*.zip")), 30)
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=60)
        finally:
            proc.kill()
            proc.wait(timeout=30)
        assert proc.returncode == 130, err.decode()
        report = status(out)
        done = set(uids) - set(report["pending"]) - {r["uid"] for r in report["failed"]}
        placed = archives(out)
        assert 0 < len(placed) < len(uids)
        for rel in placed:
            assert members(out / rel) == want[rel], f"{rel} is not whole"
            assert rel.rsplit("/", 1)[-1].removesuffix(".zip") in done
        assert list(staging.iterdir()) == []
        server.bandwidth = None
        again = run(*args)
        assert again.returncode == 0, again.stderr
        download_all(server, clean, tmp_path, "--pack", "zip")
    assert archives(out) == archives(clean)
    assert run("verify", str(out), "--no-progress").returncode == 0


def test_organize_respects_packed_series(nbia_server: FakeNbiaServer, tmp_path: Path) -> None:
    """organize into a packed tree places no instance it holds in an archive again; re-laying a
    packed tree in place is refused (exit 2) and changes nothing."""
    out = tmp_path / "out"
    download_all(nbia_server, out, tmp_path, "--pack", "zip")
    before = archives(out)
    root = nbia_server.archive.root
    assert root is not None
    placed = run("organize", str(root / "files"), "--out", str(out))
    assert placed.returncode == 0, placed.stdout + placed.stderr
    assert archives(out) == before
    relaid = run("organize", str(out), "--layout", "flat")
    assert relaid.returncode == 2, relaid.stdout + relaid.stderr
    assert "packed into archives (--pack) cannot be re-laid" in relaid.stderr
    assert archives(out) == before
