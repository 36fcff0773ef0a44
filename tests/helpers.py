"""Helpers shared by the end-to-end tests: run bulkdl in a subprocess, read back the tree."""

from __future__ import annotations

import csv
import hashlib
import os
import subprocess
import sys
from pathlib import Path

from bulkdl.manifest import write_tcia
from bulkdl.testing import FakeArchive, FakeNbiaServer

SIDECARS = {"metadata.csv", "failures.csv", "LICENSES", ".bulkdl"}


def bulkdl_cmd(*args: str) -> list[str]:
    """The argv that runs bulkdl in a subprocess."""
    return [sys.executable, "-m", "bulkdl", *args]


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run bulkdl to completion (no BULKDL_* settings inherited), capturing its output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BULKDL_")}
    return subprocess.run(
        bulkdl_cmd(*args), capture_output=True, text=True, env=env, timeout=timeout
    )


def download(
    server: FakeNbiaServer, out: Path, *inputs: str, options: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    """``bulkdl download INPUTS --out OUT --api-url <server> --no-progress OPTIONS``."""
    return run(
        "download",
        *inputs,
        "--out",
        str(out),
        "--api-url",
        server.v4_url,
        "--no-progress",
        *options,
    )


def md5(path: Path) -> str:
    """MD5 of a file's bytes."""
    return hashlib.md5(path.read_bytes()).hexdigest()


def tree(out: Path) -> dict[str, str]:
    """Every file of the output tree (sidecars excluded): relative path -> MD5."""
    found: dict[str, str] = {}
    for path in out.rglob("*"):
        rel = path.relative_to(out)
        if rel.parts[0] in SIDECARS or not path.is_file():
            continue
        found[rel.as_posix()] = md5(path)
    return found


def expected_tree(archive: FakeArchive, uids: list[str] | None = None) -> dict[str, str]:
    """The default layout of the archive's series: PatientID/Study/Series/SOP.dcm -> MD5."""
    expected: dict[str, str] = {}
    for series in archive.series:
        if uids is not None and series.uid not in uids:
            continue
        for inst in series.instances:
            rel = f"{series.patient_id}/{series.study_uid}/{series.uid}/{inst.sop_uid}.dcm"
            expected[rel] = inst.md5
    return expected


def manifest(folder: Path, uids: list[str], name: str = "m.tcia") -> Path:
    """Write a .tcia manifest of ``uids`` into ``folder``."""
    path = folder / name
    path.write_text(write_tcia(uids))
    return path


def get_images(server: FakeNbiaServer, uid: str | None = None) -> int:
    """How many getImage requests the server has seen (for one series, or all)."""
    records = server.log.for_endpoint("getImage")
    return sum(1 for r in records if uid is None or r.query.get("SeriesInstanceUID") == uid)


def failures(out: Path) -> dict[str, str]:
    """DIR/failures.csv as SeriesInstanceUID -> Reason ({} when there is none)."""
    path = out / "failures.csv"
    if not path.exists():
        return {}
    with path.open(newline="") as f:
        return {row["SeriesInstanceUID"]: row["Reason"] for row in csv.DictReader(f)}


def no_leftovers(out: Path) -> None:
    """Nothing temporary survives a run: staging is empty and no stray files exist."""
    staging = out / ".bulkdl" / "staging"
    assert not staging.exists() or not any(staging.iterdir())
    for path in out.rglob("*"):
        assert ".tmp" not in path.name and not path.name.endswith(".part"), path


def only_inside(folder: Path, *allowed: Path) -> None:
    """``folder`` holds nothing but ``allowed``: no run wrote beside its output folder."""
    assert set(folder.iterdir()) <= set(allowed), sorted(set(folder.iterdir()) - set(allowed))
