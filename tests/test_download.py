"""`bulkdl download` end to end: real subprocesses against the fake NBIA server on 127.0.0.1."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

import bulkdl
from bulkdl.testing import FakeArchive, FakeNbiaServer, Fault, run_in_thread
from tests.helpers import (
    bulkdl_cmd,
    expected_tree,
    get_images,
    manifest,
    no_leftovers,
    run,
    tree,
)


@pytest.fixture
def all_uids(small_archive: FakeArchive) -> list[str]:
    """Every series UID of the small archive, in archive order."""
    return [s.uid for s in small_archive.series]


def test_download_places_verified_tree(
    nbia_server: FakeNbiaServer, tmp_path: Path, all_uids: list[str]
) -> None:
    """A clean run places every image byte-for-byte in the default layout and exits 0."""
    out = tmp_path / "out"
    result = run(
        "download",
        str(manifest(tmp_path, all_uids)),
        "--out",
        str(out),
        "--api-url",
        nbia_server.v4_url,
    )
    assert result.returncode == 0, result.stderr
    assert tree(out) == expected_tree(nbia_server.archive)
    no_leftovers(out)
    assert get_images(nbia_server) == len(all_uids)
    asked = nbia_server.log.for_endpoint("getImage")[0].query
    assert asked["IncludeMD5"] == "Yes"
    assert "format" not in asked
    assert all(r.status != 400 for r in nbia_server.log.records)
    rows = list(csv.DictReader((out / "metadata.csv").open(newline="")))
    assert [r["Series UID"] for r in rows] == all_uids
    first = nbia_server.archive.series[0]
    assert rows[0]["Number of Images"] == str(len(first.instances))
    assert rows[0]["File Size"] == str(sum(i.size for i in first.instances))
    assert rows[0]["Subject ID"] == first.patient_id
    assert rows[0]["File Location"] == f"./{first.patient_id}/{first.study_uid}/{first.uid}"
    licenses = list((out / "LICENSES").iterdir())
    assert [p.name for p in licenses] == [f"{first.collection}.txt"]
    assert not (out / "failures.csv").exists()


def test_rerun_downloads_nothing(
    nbia_server: FakeNbiaServer, tmp_path: Path, all_uids: list[str]
) -> None:
    """A second run over a finished tree asks for no image and leaves the tree as it was."""
    out, m = tmp_path / "out", manifest(tmp_path, all_uids)
    first = run("download", str(m), "--out", str(out), "--api-url", nbia_server.v4_url)
    assert first.returncode == 0, first.stderr
    before = tree(out)
    nbia_server.log.reset()
    second = run("download", str(m), "--out", str(out), "--api-url", nbia_server.v4_url)
    assert second.returncode == 0, second.stderr
    assert get_images(nbia_server) == 0
    assert tree(out) == before


def _left(path: Path) -> tuple[int, int]:
    """(inode, mtime_ns): what a rewrite by rename changes."""
    stat = path.stat()
    return stat.st_ino, stat.st_mtime_ns


def test_sidecars_are_rewritten_only_when_what_they_show_changed(
    nbia_server: FakeNbiaServer, tmp_path: Path, all_uids: list[str]
) -> None:
    """A re-run that changed nothing leaves metadata.csv and the licence untouched; a re-run
    that fetched a series again, or finds a sidecar removed or edited, writes them afresh."""
    out, m = tmp_path / "out", manifest(tmp_path, all_uids)

    def again() -> None:
        result = run("download", str(m), "--out", str(out), "--api-url", nbia_server.v4_url)
        assert result.returncode == 0, result.stderr

    def rows() -> dict[str, dict[str, str]]:
        with (out / "metadata.csv").open(newline="") as stream:
            return {row["Series UID"]: row for row in csv.DictReader(stream)}

    again()
    metadata, licence = out / "metadata.csv", next((out / "LICENSES").iterdir())
    first, text = (_left(metadata), _left(licence)), licence.read_text()
    written = rows()
    again()
    assert (_left(metadata), _left(licence)) == first
    # a file gone from the tree: its series is fetched again, at a new download time
    (out / sorted(expected_tree(nbia_server.archive, [all_uids[1]]))[0]).unlink()
    again()
    assert _left(metadata) != first[0]
    now = rows()
    assert list(now) == all_uids
    assert now[all_uids[1]]["Download Timestamp"] > written[all_uids[1]]["Download Timestamp"]
    assert now[all_uids[0]] == written[all_uids[0]]
    # sidecars removed or edited by hand are written again, though the ledger did not change
    metadata.write_text("edited\n")
    licence.unlink()
    again()
    assert rows() == now
    assert licence.read_text() == text


def test_deleted_file_is_noticed_and_refetched(
    nbia_server: FakeNbiaServer, tmp_path: Path, all_uids: list[str]
) -> None:
    """A file deleted from the tree since sends exactly its series back to be fetched."""
    out, m = tmp_path / "out", manifest(tmp_path, all_uids)
    assert (
        run("download", str(m), "--out", str(out), "--api-url", nbia_server.v4_url).returncode == 0
    )
    victim = sorted(expected_tree(nbia_server.archive, [all_uids[2]]))[0]
    (out / victim).unlink()
    nbia_server.log.reset()
    again = run("download", str(m), "--out", str(out), "--api-url", nbia_server.v4_url)
    assert again.returncode == 0, again.stderr
    assert get_images(nbia_server) == 1
    assert get_images(nbia_server, all_uids[2]) == 1
    assert tree(out) == expected_tree(nbia_server.archive)


@pytest.mark.parametrize(
    "fault",
    [
        Fault.http_status(500),
        Fault.http_status(503),
        Fault.rate_limited(retry_after=1),
        Fault.reset(at_fraction=0.5),
        Fault.corrupt(at_fraction=0.5),
        Fault.not_zip(),
        Fault.short_zip(keep=1),
        Fault.hostile_names(),
        Fault.empty_series(),
        Fault.corrupt(in_entry="md5hashes.csv"),
        Fault.reset(in_entry="md5hashes.csv"),
    ],
    ids=lambda f: f.to_dict()["kind"] + ("-md5" if "in_entry" in f.to_dict() else ""),
)
def test_transient_fault_is_retried(
    nbia_server: FakeNbiaServer, tmp_path: Path, all_uids: list[str], fault: Fault
) -> None:
    """A fault on the first attempt of a series costs one retry; the tree ends complete."""
    out, target = tmp_path / "out", all_uids[1]
    nbia_server.faults.script(target, fault)
    result = run(
        "download",
        str(manifest(tmp_path, all_uids)),
        "--out",
        str(out),
        "--api-url",
        nbia_server.v4_url,
    )
    assert result.returncode == 0, result.stderr
    assert get_images(nbia_server, target) == 2
    assert tree(out) == expected_tree(nbia_server.archive)
    assert not any(p.name.startswith("evil") or p.name == "abs.dcm" for p in tmp_path.rglob("*"))
    no_leftovers(out)


def test_stall_is_cut_by_read_timeout(
    nbia_server: FakeNbiaServer, tmp_path: Path, all_uids: list[str]
) -> None:
    """A server that stops sending mid-body is abandoned after --read-timeout and retried."""
    out, target = tmp_path / "out", all_uids[0]
    nbia_server.faults.script(target, Fault.stall(seconds=None, at_fraction=0.3))
    started = time.monotonic()
    result = run(
        "download",
        str(manifest(tmp_path, all_uids)),
        "--out",
        str(out),
        "--api-url",
        nbia_server.v4_url,
        "--read-timeout",
        "1",
    )
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 30
    assert get_images(nbia_server, target) == 2
    assert tree(out) == expected_tree(nbia_server.archive)


def test_persistent_shortfall_fails_and_is_named(
    nbia_server: FakeNbiaServer, tmp_path: Path, all_uids: list[str]
) -> None:
    """A series always short of images fails by name ("expected N, got M"), exit 1, not placed."""
    out, bad = tmp_path / "out", all_uids[3]
    expected_count = len(nbia_server.archive.series[3].instances)
    nbia_server.faults.always(bad, Fault.short_zip(keep=2))
    result = run(
        "download",
        str(manifest(tmp_path, all_uids)),
        "--out",
        str(out),
        "--api-url",
        nbia_server.v4_url,
        "--retries",
        "2",
    )
    assert result.returncode == 1, result.stderr
    assert f"expected {expected_count} images, got 2" in result.stderr
    assert bad in result.stderr
    assert get_images(nbia_server, bad) == 3
    good = [u for u in all_uids if u != bad]
    assert tree(out) == expected_tree(nbia_server.archive, good)
    failures = list(csv.DictReader((out / "failures.csv").open(newline="")))
    assert [f["SeriesInstanceUID"] for f in failures] == [bad]
    assert f"expected {expected_count} images, got 2" in failures[0]["Reason"]
    no_leftovers(out)


def test_accept_incomplete_places_short_series(
    nbia_server: FakeNbiaServer, tmp_path: Path, all_uids: list[str]
) -> None:
    """--accept-incomplete places a persistently short series, marked incomplete in status."""
    out, bad = tmp_path / "out", all_uids[0]
    nbia_server.faults.always(bad, Fault.short_zip(keep=2))
    result = run(
        "download",
        str(manifest(tmp_path, all_uids)),
        "--out",
        str(out),
        "--api-url",
        nbia_server.v4_url,
        "--retries",
        "1",
        "--accept-incomplete",
    )
    assert result.returncode == 0, result.stderr
    placed = [p for p in tree(out) if bad in p]
    assert len(placed) == 2
    status = run("status", str(out), "--json")
    counts = json.loads(status.stdout)["counts"]
    assert counts["incomplete"] == 1
    assert counts["done"] == len(all_uids) - 1


def test_unknown_series_fails_others_proceed(
    nbia_server: FakeNbiaServer, tmp_path: Path, all_uids: list[str]
) -> None:
    """A UID the server does not know fails with a clear reason; every other series is placed."""
    out, ghost = tmp_path / "out", "1.2.3.4.5.6.7.8.9"
    result = run(
        "download",
        str(manifest(tmp_path, [ghost, *all_uids])),
        "--out",
        str(out),
        "--api-url",
        nbia_server.v4_url,
    )
    assert result.returncode == 1
    assert ghost in result.stderr and "unknown" in result.stderr
    assert tree(out) == expected_tree(nbia_server.archive)
    assert get_images(nbia_server, ghost) == 0


def test_series_uid_mismatch_is_refused(
    nbia_server: FakeNbiaServer, tmp_path: Path, all_uids: list[str]
) -> None:
    """Files that carry another SeriesInstanceUID than requested are never placed."""
    out, target = tmp_path / "out", all_uids[0]
    nbia_server.faults.always(target, Fault.wrong_series(all_uids[1]))
    result = run(
        "download",
        str(manifest(tmp_path, all_uids[:2])),
        "--out",
        str(out),
        "--api-url",
        nbia_server.v4_url,
        "--retries",
        "0",
    )
    assert result.returncode == 1
    assert "belongs to series" in result.stderr
    assert tree(out) == expected_tree(nbia_server.archive, [all_uids[1]])


def test_query_flags_instead_of_manifest(nbia_server: FakeNbiaServer, tmp_path: Path) -> None:
    """`download --patient-id X` fetches exactly that patient's series."""
    first = nbia_server.archive.series[0]
    out = tmp_path / "out"
    result = run(
        "download",
        "--patient-id",
        first.patient_id,
        "--out",
        str(out),
        "--api-url",
        nbia_server.v4_url,
    )
    assert result.returncode == 0, result.stderr
    mine = [s.uid for s in nbia_server.archive.series if s.patient_id == first.patient_id]
    assert tree(out) == expected_tree(nbia_server.archive, mine)


def test_dry_run_fetches_nothing(
    nbia_server: FakeNbiaServer, tmp_path: Path, all_uids: list[str]
) -> None:
    """--dry-run prints the plan (series, images, bytes) and downloads nothing."""
    out = tmp_path / "out"
    result = run(
        "download",
        str(manifest(tmp_path, all_uids)),
        "--out",
        str(out),
        "--api-url",
        nbia_server.v4_url,
        "--dry-run",
    )
    assert result.returncode == 0, result.stderr
    assert get_images(nbia_server) == 0
    assert tree(out) == {}
    lines = result.stdout.splitlines()
    assert [line.split("\t")[0] for line in lines] == all_uids
    images = sum(len(s.instances) for s in nbia_server.archive.series)
    assert f"{len(all_uids)} series to fetch, {images} images" in result.stderr


def test_json_events(nbia_server: FakeNbiaServer, tmp_path: Path, all_uids: list[str]) -> None:
    """--json writes one JSON event per line on stdout, ending with the run's totals."""
    out = tmp_path / "out"
    result = run(
        "download",
        str(manifest(tmp_path, all_uids)),
        "--out",
        str(out),
        "--api-url",
        nbia_server.v4_url,
        "--json",
    )
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    finished = [e for e in events if e["event"] == "series_finished"]
    assert sorted(e["uid"] for e in finished) == sorted(all_uids)
    assert events[-1]["event"] == "run_finished"
    assert events[-1]["done"] == len(all_uids)


def test_bad_manifest_line_is_usage_error(nbia_server: FakeNbiaServer, tmp_path: Path) -> None:
    """A malformed manifest line stops the run before any download with exit 2, naming the line."""
    bad = tmp_path / "bad.tcia"
    bad.write_text("ListOfSeriesToDownload=\n1.2.3\nnot-a-uid\n")
    result = run(
        "download", str(bad), "--out", str(tmp_path / "out"), "--api-url", nbia_server.v4_url
    )
    assert result.returncode == 2
    assert f"{bad}:3" in result.stderr
    assert nbia_server.log.records == []


def test_unwritable_output_aborts(nbia_server: FakeNbiaServer, tmp_path: Path) -> None:
    """An output folder that cannot be created ends with exit 3 and a clear message."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = run(
        "download",
        "--series-uid",
        nbia_server.archive.series[0].uid,
        "--out",
        str(blocker / "out"),
        "--api-url",
        nbia_server.v4_url,
    )
    assert result.returncode == 3
    assert "cannot write" in result.stderr and "Traceback" not in result.stderr


def test_corrupt_ledger_aborts_untouched(
    nbia_server: FakeNbiaServer, tmp_path: Path, all_uids: list[str]
) -> None:
    """A ledger corrupted on purpose stops the run (exit 3) and is left byte for byte as it was."""
    out = tmp_path / "out"
    (out / ".bulkdl").mkdir(parents=True)
    ledger = out / ".bulkdl" / "ledger.sqlite"
    ledger.write_bytes(b"SQLite format 3\x00" + os.urandom(4000))
    before = ledger.read_bytes()
    result = run(
        "download",
        str(manifest(tmp_path, all_uids)),
        "--out",
        str(out),
        "--api-url",
        nbia_server.v4_url,
    )
    assert result.returncode == 3, result.stderr
    assert "ledger" in result.stderr
    assert ledger.read_bytes() == before
    assert get_images(nbia_server) == 0


def test_awkward_values_stay_inside_tree(awkward_archive: FakeArchive, tmp_path: Path) -> None:
    """Hostile header values (../, CON, NUL, RTL marks...) all land inside the tree, distinct."""
    out = tmp_path / "out"
    with run_in_thread(FakeNbiaServer(awkward_archive)) as server:
        uids = [s.uid for s in awkward_archive.series]
        result = run(
            "download", str(manifest(tmp_path, uids)), "--out", str(out), "--api-url", server.v4_url
        )
    assert result.returncode == 0, result.stderr
    placed = tree(out)
    assert sorted(placed.values()) == sorted(
        i.md5 for s in awkward_archive.series for i in s.instances
    )
    outside = {p for p in tmp_path.iterdir()} - {out, tmp_path / "m.tcia"}
    assert outside == set()
    patients = {Path(p).parts[0] for p in placed}
    assert len(patients) == len({s.patient_id for s in awkward_archive.series})


def test_python_api(nbia_server: FakeNbiaServer, tmp_path: Path, all_uids: list[str]) -> None:
    """bulkdl.download() returns each series' outcome and places the same tree as the CLI."""
    out = tmp_path / "out"
    result = bulkdl.download(
        manifest(tmp_path, all_uids[:3]), out=out, api_url=nbia_server.v4_url, concurrency=2
    )
    assert result.exit_code == 0
    assert [o.uid for o in result.outcomes] == all_uids[:3]
    assert {o.outcome for o in result.outcomes} == {"done"}
    assert tree(out) == expected_tree(nbia_server.archive, all_uids[:3])


def _wait_for(predicate: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.01)


def test_sigint_stops_cleanly_and_rerun_completes(
    small_archive: FakeArchive, tmp_path: Path, all_uids: list[str]
) -> None:
    """Ctrl-C mid-run exits 130 with nothing half-written in the tree; a re-run completes it."""
    out, m = tmp_path / "out", manifest(tmp_path, all_uids)
    server = FakeNbiaServer(small_archive, bandwidth=30_000)
    with run_in_thread(server) as running:
        proc = subprocess.Popen(
            bulkdl_cmd(
                "download",
                str(m),
                "--out",
                str(out),
                "--api-url",
                running.v4_url,
                "--concurrency",
                "2",
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        _wait_for(lambda: get_images(running) >= 3, 30)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err
        assert "Traceback" not in err
        expected = expected_tree(small_archive)
        partial = tree(out)
        assert partial.items() <= expected.items()
        assert len(partial) < len(expected)
        no_leftovers(out)
        running.bandwidth = None
        again = run("download", str(m), "--out", str(out), "--api-url", running.v4_url)
        assert again.returncode == 0, again.stderr
        assert tree(out) == expected


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_kill_9_then_rerun_gives_clean_tree(
    small_archive: FakeArchive, tmp_path: Path, all_uids: list[str], seed: int
) -> None:
    """kill -9 at a random moment, then a re-run: the tree equals a clean run's, no leftovers."""
    import random

    out, m = tmp_path / "out", manifest(tmp_path, all_uids)
    delay = random.Random(seed).uniform(0.6, 3.5)
    with run_in_thread(FakeNbiaServer(small_archive, bandwidth=30_000)) as running:
        proc = subprocess.Popen(
            bulkdl_cmd(
                "download",
                str(m),
                "--out",
                str(out),
                "--api-url",
                running.v4_url,
                "--concurrency",
                "2",
            ),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(delay)
        assert proc.poll() is None, "the run ended before it could be killed"
        proc.kill()
        proc.wait(timeout=30)
        expected = expected_tree(small_archive)
        assert tree(out).items() <= expected.items()
        running.bandwidth = None
        again = run("download", str(m), "--out", str(out), "--api-url", running.v4_url)
        assert again.returncode == 0, again.stderr
    assert tree(out) == expected
    no_leftovers(out)
    assert not list((out / ".bulkdl").glob(".*.tmp"))


def test_sigterm_stops_cleanly(
    small_archive: FakeArchive, tmp_path: Path, all_uids: list[str]
) -> None:
    """SIGTERM mid-run: exit 130, every file in the tree complete, the ledger consistent."""
    out, m = tmp_path / "out", manifest(tmp_path, all_uids)
    with run_in_thread(FakeNbiaServer(small_archive, bandwidth=30_000)) as running:
        proc = subprocess.Popen(
            bulkdl_cmd("download", str(m), "--out", str(out), "--api-url", running.v4_url),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        _wait_for(lambda: get_images(running) >= 2, 30)
        proc.terminate()
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    placed = tree(out)
    assert placed.items() <= expected_tree(small_archive).items()
    status = json.loads(run("status", str(out), "--json").stdout)
    done = status["counts"]["done"]
    assert done < len(all_uids)
    per_series = {uid: sum(1 for p in placed if f"/{uid}/" in p) for uid in all_uids}
    finished = [uid for uid, n in per_series.items() if n]
    assert len(finished) == done
    no_leftovers(out)
