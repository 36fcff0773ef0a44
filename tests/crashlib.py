"""Helpers for the crash, disk and permission tests: bulkdl as a real subprocess, seeded kills,
snapshots of output folders, the checks a finished folder must pass, and small mounts.

Everything here talks to bulkdl only as a user would (its command line, its files, ``bulkdl
status --json``); nothing reaches into the package. Mounting needs root and a kernel that lets
this process mount; :func:`tmpfs` skips the test with a clear reason when it may not.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import pytest

from bulkdl.manifest import write_tcia
from bulkdl.testing import ArchiveSpec, FakeArchive, FakeNbiaServer

SIDECARS: Final = frozenset({"metadata.csv", "failures.csv", "LICENSES", ".bulkdl"})
PRESETS: Final = ("default", "nbia-classic", "idc", "flat")
Preexec = Callable[[], None]


# -- running bulkdl ----------------------------------------------------------------------------


def bulkdl_cmd(*args: str) -> list[str]:
    """The argv that runs bulkdl in a subprocess."""
    return [sys.executable, "-m", "bulkdl", *args]


def clean_env() -> dict[str, str]:
    """This process's environment without BULKDL_* settings that would change a run."""
    return {k: v for k, v in os.environ.items() if not k.startswith("BULKDL_")}


def run(
    *args: str, timeout: float = 120, preexec_fn: Preexec | None = None
) -> subprocess.CompletedProcess[str]:
    """Run bulkdl to completion, capturing its output."""
    return subprocess.run(
        bulkdl_cmd(*args),
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=timeout,
        preexec_fn=preexec_fn,
    )


def start(*args: str, stderr: Any = subprocess.DEVNULL) -> subprocess.Popen[bytes]:
    """Start bulkdl in the background (output discarded unless ``stderr`` says otherwise)."""
    return subprocess.Popen(
        bulkdl_cmd(*args), stdout=subprocess.DEVNULL, stderr=stderr, env=clean_env()
    )


def download_args(
    manifest: Path, out: Path, url: str, *, concurrency: int = 2, layout: str = "default"
) -> list[str]:
    """The arguments of one quiet `bulkdl download`."""
    return [
        "download",
        str(manifest),
        "--out",
        str(out),
        "--api-url",
        url,
        "--concurrency",
        str(concurrency),
        "--layout",
        layout,
        "--no-progress",
    ]


def write_manifest(folder: Path, uids: list[str], name: str = "m.tcia") -> Path:
    """Write a .tcia manifest of ``uids`` into ``folder``."""
    path = folder / name
    path.write_text(write_tcia(uids))
    return path


def wait_for(predicate: Callable[[], bool], timeout: float, step: float = 0.002) -> bool:
    """Poll ``predicate`` until it holds (True) or ``timeout`` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def images_served(server: FakeNbiaServer) -> int:
    """getImage answers the server has finished sending (the log records a request at its end)."""
    return server.log.count("getImage")


# -- looking at an output folder --------------------------------------------------------------


def md5(path: Path) -> str:
    """MD5 of a file's bytes."""
    return hashlib.md5(path.read_bytes()).hexdigest()


@dataclass(frozen=True, slots=True)
class Tree:
    """The image tree of an output folder (sidecars excluded): files with their MD5, folders."""

    files: dict[str, str]
    folders: frozenset[str]

    @classmethod
    def of(cls, out: Path) -> Tree:
        """Read the tree under ``out``."""
        files: dict[str, str] = {}
        folders: set[str] = set()
        if not out.exists():
            return cls(files, frozenset())
        for path in out.rglob("*"):
            rel = path.relative_to(out)
            if rel.parts[0] in SIDECARS:
                continue
            if path.is_dir() and not path.is_symlink():
                folders.add(rel.as_posix())
            else:
                files[rel.as_posix()] = md5(path)
        return cls(files, frozenset(folders))

    @classmethod
    def expected(cls, archive: FakeArchive) -> Tree:
        """The default layout's tree of ``archive``: PatientID/Study/Series/SOP.dcm -> MD5."""
        files: dict[str, str] = {}
        folders: set[str] = set()
        for series in archive.series:
            parts = [series.patient_id, series.study_uid, series.uid]
            folders.update("/".join(parts[:depth]) for depth in range(1, 4))
            for inst in series.instances:
                files[f"{'/'.join(parts)}/{inst.sop_uid}.dcm"] = inst.md5
        return cls(files, frozenset(folders))

    def series_files(self, uid: str) -> dict[str, str]:
        """The files whose path names series ``uid`` (every preset has a SeriesInstanceUID part)."""
        return {p: h for p, h in self.files.items() if uid in p}


def snapshot(root: Path, *, skip: frozenset[str] = frozenset()) -> dict[str, tuple[int, str]]:
    """Every file and folder under ``root`` (relative paths in ``skip`` left out): path ->
    (mode, MD5 or "dir"). Proves a folder was left exactly as it was."""
    found: dict[str, tuple[int, str]] = {}
    for path in root.rglob("*"):
        rel = path.relative_to(root).as_posix()
        if rel in skip:
            continue
        mode = path.lstat().st_mode
        found[rel] = (mode, "dir" if path.is_dir() else md5(path))
    return found


def status(out: Path) -> dict[str, Any]:
    """What `bulkdl status DIR --json` says about ``out``."""
    result = run("status", str(out), "--json")
    assert result.returncode in (0, 1), result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def done_uids(report: dict[str, Any], uids: list[str]) -> set[str]:
    """The series of ``uids`` a status report shows as done (the ledger must know them all)."""
    assert report["total"] == len(uids), report
    not_done = set(report["pending"])
    not_done |= {row["uid"] for row in report["failed"]}
    not_done |= {row["uid"] for row in report["incomplete"]}
    done = set(uids) - not_done
    assert len(done) == report["counts"]["done"], report
    return done


def metadata_uids(out: Path) -> list[str]:
    """The Series UID column of ``out/metadata.csv``, in file order."""
    with (out / "metadata.csv").open(newline="", encoding="utf-8") as handle:
        return [row["Series UID"] for row in csv.DictReader(handle)]


def assert_no_leftovers(out: Path) -> None:
    """Nothing temporary anywhere: staging empty, no temporary, partial or probe files, no
    ``~hash`` duplicates in the tree."""
    staging = out / ".bulkdl" / "staging"
    assert not staging.exists() or not any(staging.iterdir()), list(staging.rglob("*"))
    for path in out.rglob("*"):
        name = path.name
        assert ".tmp" not in name and not name.endswith(".part"), path
        assert not name.startswith("probe-") and name != "series.zip", path
        rel = path.relative_to(out)
        if rel.parts[0] not in SIDECARS:
            assert "~" not in name, f"a ~hash duplicate: {rel}"


def assert_finished(out: Path, clean: Tree, uids: list[str]) -> None:
    """``out`` is what a clean run gives: the same paths and bytes, nothing left over, every
    series done in the ledger and listed once in metadata.csv."""
    got = Tree.of(out)
    assert set(got.files) == set(clean.files), (
        f"missing {sorted(set(clean.files) - set(got.files))[:5]}, "
        f"extra {sorted(set(got.files) - set(clean.files))[:5]}"
    )
    assert got.files == clean.files, "same paths, different bytes"
    assert got.folders == clean.folders, sorted(got.folders ^ clean.folders)
    assert_no_leftovers(out)
    report = status(out)
    assert report["total"] == len(uids), report
    assert report["counts"]["done"] == len(uids), report
    listed = metadata_uids(out)
    assert sorted(listed) == sorted(uids), "metadata.csv must list every series exactly once"
    assert not (out / "failures.csv").exists()


def assert_consistent(out: Path, clean: Tree, uids: list[str]) -> set[str]:
    """After a clean stop: every file in the tree is whole and belongs to a series the ledger
    records as done, and every done series is all there. Returns the done series."""
    got = Tree.of(out)
    assert got.files.items() <= clean.files.items(), "a file in the tree is not a clean run's"
    done = done_uids(status(out), uids)
    for uid in uids:
        placed = got.series_files(uid)
        if uid in done:
            assert placed == clean.series_files(uid), f"done series {uid} is not all there"
        else:
            assert not placed, f"series {uid} has files in the tree but is not recorded done"
    return done


# -- seeded interruptions -----------------------------------------------------------------------

KillMode = Literal["timed", "after_image", "placing"]


@dataclass(frozen=True, slots=True)
class Kill:
    """When to interrupt one run.

    "timed": ``delay`` seconds after it starts. "after_image": ``delay`` seconds after the server
    finished sending the ``nth`` getImage answer of that run (the client is then unpacking,
    verifying or placing). "placing": the moment the folder of the archive's ``nth`` series
    (0-based) appears in the tree, i.e. while that series' files are being moved in.
    """

    mode: KillMode
    delay: float = 0.0
    nth: int = 0

    def describe(self) -> str:
        """A short label for failure messages."""
        if self.mode == "timed":
            return f"at {self.delay:.2f}s"
        if self.mode == "after_image":
            return f"{self.delay * 1000:.0f} ms after getImage #{self.nth}"
        return f"while placing series #{self.nth}"


@dataclass(frozen=True, slots=True)
class Scenario:
    """Everything one seeded crash run varies: concurrency, layout, bandwidth and the kills."""

    seed: int
    concurrency: int
    layout: str
    bandwidth: float
    kills: tuple[Kill, ...]

    @classmethod
    def from_seed(cls, seed: int, total_bytes: int, big: list[int]) -> Scenario:
        """Draw a scenario from ``seed`` for an archive of ``total_bytes`` whose series at
        indexes ``big`` hold many files (long placements).

        The bandwidth makes an uninterrupted run last about five seconds of transfer whatever
        the concurrency. A third of the seeds use ``--concurrency 1`` and kill inside the
        placement of a big series; a third kill just after a getImage answer ends; a third
        kill at a time. About a third kill a second time during the re-run (the first kill then
        comes early enough to leave work for the second).
        """
        rng = random.Random(seed)
        kind = seed % 3
        concurrency = 1 if kind == 0 else rng.randint(1, 4)
        layout = PRESETS[rng.randrange(len(PRESETS))]
        bandwidth = total_bytes / (5.0 * concurrency)
        twice = rng.random() < 0.35
        if kind == 0:
            first = Kill("placing", nth=rng.choice(big[: max(1, len(big) // 2)]))
        elif kind == 1:
            first = Kill("after_image", rng.uniform(0.0, 0.03), rng.randint(1, 4))
        else:
            first = Kill("timed", rng.uniform(0.9, 2.0 if twice else 3.0))
        kills = [first]
        if twice:
            second = rng.choice(("after_image", "timed"))
            if second == "after_image":
                kills.append(Kill("after_image", rng.uniform(0.0, 0.03), 1))
            else:
                kills.append(Kill("timed", rng.uniform(0.9, 1.3)))
        return cls(seed, concurrency, layout, bandwidth, tuple(kills))

    def describe(self) -> str:
        """A short label for failure messages."""
        kills = ", then ".join(k.describe() for k in self.kills)
        return (
            f"seed {self.seed}: --concurrency {self.concurrency} --layout {self.layout}, "
            f"{self.bandwidth / 1000:.1f} kB/s, kill -9 {kills}"
        )


def interrupt(
    proc: subprocess.Popen[bytes],
    server: FakeNbiaServer,
    kill: Kill,
    sig: int,
    *,
    folder: Path | None = None,
) -> None:
    """Send ``sig`` to ``proc`` at ``kill``'s moment (for "placing", when ``folder`` appears);
    asserts the run was still going then."""
    if kill.mode == "after_image":
        reached = wait_for(lambda: images_served(server) >= kill.nth, timeout=60)
        assert reached, f"the server never finished getImage #{kill.nth}"
    elif kill.mode == "placing":
        assert folder is not None
        deadline = time.monotonic() + 60
        # Polled every 0.2 ms: the window between the folder's mkdir and the ledger's "done"
        # lasts a few milliseconds.
        while not os.path.isdir(folder):
            if proc.poll() is not None or time.monotonic() > deadline:
                break
            time.sleep(0.0002)
    time.sleep(kill.delay)
    assert proc.poll() is None, f"the run ended (exit {proc.returncode}) before {kill.describe()}"
    proc.send_signal(sig)


# -- mounts ---------------------------------------------------------------------------------


def _mount(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["mount", *args], capture_output=True, text=True, timeout=30)


def over_two_mb(folder: Path) -> FakeArchive:
    """6 series of 16 128x128 images: about 545 kB each, 3.3 MB in all (more than a 2 MB disk)."""
    spec = ArchiveSpec(
        patients_per_collection=2,
        studies_per_patient=1,
        series_per_study=3,
        images_per_series=16,
        rows=128,
        columns=128,
        seed=31,
    )
    return FakeArchive.build(spec, folder)


@contextmanager
def tmpfs(where: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` (e.g. "2m") mounted at ``where`` for the block; skips the test when
    this process may not mount (not root, or a container without CAP_SYS_ADMIN)."""
    where.mkdir(parents=True, exist_ok=True)
    try:
        mounted = _mount("-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(where))
    except FileNotFoundError:
        pytest.skip("no mount(8) here: cannot make a small filesystem")
    if mounted.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        # Lazy, so a test that failed with a file still open cannot leave the mount behind.
        subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=30)


def remount(where: Path, options: str) -> None:
    """Remount ``where`` with ``options`` (e.g. "size=64m" or "ro")."""
    result = _mount("-o", f"remount,{options}", str(where))
    assert result.returncode == 0, result.stderr
