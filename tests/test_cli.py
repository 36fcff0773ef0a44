"""The command line as a user runs it: real subprocesses against the fake server on 127.0.0.1."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bulkdl import __version__
from bulkdl.manifest import parse_manifest, read_manifest
from bulkdl.testing import FakeArchive, FakeNbiaServer


def run(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m bulkdl ARGS`` and capture its output."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("BULKDL_")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "bulkdl", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd,
        timeout=120,
    )


def collection_series(archive: FakeArchive, collection: str) -> list[str]:
    """The archive's series UIDs in one collection, in the server's order."""
    return [s.uid for s in archive.series if s.collection == collection]


def test_version_and_help() -> None:
    """--version prints the package version; --help lists the sub-commands."""
    version = run("--version")
    assert version.returncode == 0
    assert version.stdout.strip() == f"bulkdl {__version__}"
    helped = run("--help")
    assert helped.returncode == 0
    for command in ("query", "demo", "serve-fake"):
        assert command in helped.stdout


def test_quick_exit_keeps_all_output_and_the_status(
    nbia_server: FakeNbiaServer, tmp_path: Path
) -> None:
    """The script skips the interpreter's teardown: what it wrote to a file (block-buffered)
    is all there, the logging on stderr too, and the exit status is main's."""
    listing = tmp_path / "all.jsonl"
    buffered = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    with listing.open("w") as stdout:
        done = subprocess.run(
            [sys.executable, "-m", "bulkdl", "-vv", "query", "--api-url", nbia_server.v4_url,
             "--format", "json"],
            stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=120, env=buffered,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in listing.read_text().splitlines()]
    assert sorted(r["SeriesInstanceUID"] for r in rows) == sorted(
        s.uid for s in nbia_server.archive.series
    )
    assert "GET " in done.stderr and "getSeries" in done.stderr  # -vv logs each request
    missing = run("download", str(tmp_path / "none.tcia"), "--out", str(tmp_path / "out"))
    assert missing.returncode == 2
    assert missing.stderr.strip() == f"bulkdl: error: {tmp_path / 'none.tcia'}: no such file"


def test_query_into_a_closed_pipe_stops_quietly(nbia_server: FakeNbiaServer) -> None:
    """`bulkdl query | head`: when the reader has gone, the query stops with 141 (what a shell
    reports for a program SIGPIPE stopped) and no error; a full disk stays an error (exit 3)."""
    argv = [sys.executable, "-m", "bulkdl", "query", "--api-url", nbia_server.v4_url]
    reader_gone = subprocess.Popen(
        [*argv, "--format", "json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert reader_gone.stdout is not None and reader_gone.stderr is not None
    reader_gone.stdout.close()  # before the query has written anything
    assert reader_gone.wait(timeout=120) == 141
    assert reader_gone.stderr.read() == ""
    if Path("/dev/full").exists():
        with open("/dev/full", "w") as full:
            refused = subprocess.run(
                [*argv, "--format", "json"], stdout=full, stderr=subprocess.PIPE, text=True,
                timeout=120,
            )  # fmt: skip
        assert refused.returncode == 3
        assert "No space left on device" in refused.stderr


def test_query_tcia_manifest_reads_back(nbia_server: FakeNbiaServer, tmp_path: Path) -> None:
    """`bulkdl query --collection X --format tcia > m.tcia` is a manifest of X's series."""
    collection = nbia_server.archive.series[0].collection
    result = run(
        "query", "--api-url", nbia_server.v4_url, "--collection", collection, "--format", "tcia"
    )
    assert result.returncode == 0, result.stderr
    manifest = tmp_path / "m.tcia"
    manifest.write_text(result.stdout)
    expected = collection_series(nbia_server.archive, collection)
    assert read_manifest(str(manifest)) == expected
    assert len(expected) == 8
    asked = [r for r in nbia_server.log.records if r.endpoint == "getSeries"]
    assert [r.status for r in asked] == [200]
    assert asked[0].query == {"Collection": collection, "format": "json"}


def test_query_env_url_and_json_rows(nbia_server: FakeNbiaServer) -> None:
    """BULKDL_API_URL picks the server; --format json is one object per series, DICOM keywords."""
    first = nbia_server.archive.series[0]
    result = run(
        "query",
        "--patient-id",
        first.patient_id.lower(),
        "--format",
        "json",
        env={"BULKDL_API_URL": nbia_server.v4_url},
    )
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    expected = [s for s in nbia_server.archive.series if s.patient_id == first.patient_id]
    assert [r["SeriesInstanceUID"] for r in rows] == [s.uid for s in expected]
    assert all(r["PatientID"] == first.patient_id for r in rows)
    assert [r["ImageCount"] for r in rows] == [len(s.instances) for s in expected]
    assert [r["FileSize"] for r in rows] == [sum(i.size for i in s.instances) for s in expected]
    assert "StudyDesc" not in rows[0]


def test_query_listings_csv(nbia_server: FakeNbiaServer) -> None:
    """Value listings and study listings come out as CSV with a header when piped."""
    archive = nbia_server.archive
    collection = archive.series[0].collection
    collections = run("query", "collections", "--api-url", nbia_server.v4_url)
    assert collections.returncode == 0, collections.stderr
    assert collections.stdout.splitlines() == ["Value", collection]
    studies = run("query", "studies", "--api-url", nbia_server.v4_url, "--collection", collection)
    assert studies.returncode == 0, studies.stderr
    rows = list(csv.DictReader(io.StringIO(studies.stdout)))
    assert sorted(r["StudyInstanceUID"] for r in rows) == sorted(
        {s.study_uid for s in archive.series}
    )


def test_query_refuses_filter_the_endpoint_lacks(nbia_server: FakeNbiaServer) -> None:
    """A filter the listing's endpoint cannot take is a usage error (exit 2); nothing is asked."""
    result = run("query", "collections", "--modality", "CT", "--api-url", nbia_server.v4_url)
    assert result.returncode == 2
    assert "cannot filter by --modality" in result.stderr
    assert "Traceback" not in result.stderr
    assert nbia_server.log.records == []


def test_query_bad_url_is_usage_error() -> None:
    """A non-http API URL is named in a one-line error with exit 2."""
    result = run("query", "--api-url", "ftp://example.org/x")
    assert result.returncode == 2
    assert "ftp://example.org/x" in result.stderr
    assert "Traceback" not in result.stderr


def test_query_unreachable_server_fails_cleanly() -> None:
    """A refused connection ends with one error line and exit 3, not a traceback."""
    result = run("query", "collections", "--api-url", "http://127.0.0.1:9/nbia-api/services/v4/")
    assert result.returncode == 3
    assert result.stderr.startswith("bulkdl: error:")
    assert "Traceback" not in result.stderr


def test_query_no_rows_gives_empty_manifest(nbia_server: FakeNbiaServer) -> None:
    """A query matching nothing (an empty 200 body) writes a valid, empty manifest."""
    result = run("query", "--api-url", nbia_server.v4_url, "--modality", "PT", "--format", "tcia")
    assert result.returncode == 0, result.stderr
    assert parse_manifest(result.stdout, "stdout") == []


@pytest.mark.parametrize("secret", ["hunter2-Secret!"])
def test_v2_query_uses_token_never_argv(small_archive: FakeArchive, secret: str) -> None:
    """v2 needs a token: credentials come from the environment, never show in output or logs."""
    from bulkdl.testing import run_in_thread

    server = FakeNbiaServer(small_archive, users={"alice": secret})
    with run_in_thread(server) as running:
        v2 = running.root_url + "/nbia-api/services/v2/"
        anonymous = run("query", "collections", "--api-url", v2)
        assert anonymous.returncode != 0
        assert "Traceback" not in anonymous.stderr
        ok = run(
            "query",
            "collections",
            "--api-url",
            v2,
            "-vv",
            env={"BULKDL_USERNAME": "alice", "BULKDL_PASSWORD": secret},
        )
        assert ok.returncode == 0, ok.stderr
        assert ok.stdout.splitlines()[1] == small_archive.series[0].collection
        assert secret not in ok.stdout + ok.stderr
        assert all(secret not in repr(r) for r in running.log.records)


def test_demo_downloads_then_resumes(tmp_path: Path) -> None:
    """`bulkdl demo` downloads a verified tree inside --out; a second demo fetches nothing."""
    out = tmp_path / "out"
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    result = run("demo", "--out", str(out), env=env)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["demo.tcia", "tree"]
    assert len(read_manifest(str(out / "demo.tcia"))) == 6
    assert len(list((out / "tree").rglob("*.dcm"))) == 2 * (12 + 20 + 16)
    assert "6 series: 6 ok" in result.stdout
    again = run("demo", "--out", str(out), env=env)
    assert again.returncode == 0, again.stderr
    assert "6 skipped" in again.stdout
