"""What ``--pack`` costs and saves: a 12-series download with a file per instance, packed as ZIP
and as tar, and staged on another filesystem; and what deflate would have bought over STORED.

The dataset: 12 CT series of 100 images 256x256 (~130 KB each, Explicit VR Little Endian) from
the in-package NBIA server on 127.0.0.1. For each way of placing, the median of ``--runs``
fresh ``bulkdl download`` processes (start-up included) into an empty folder; then the files
the tree holds, ``bulkdl verify`` (one run) and ``rm -r`` of the tree. The deflate rows compress
every member of one series with zlib, as a ZIP_DEFLATED member would be, in this process. The
synthetic pixel data is smooth noise over a body-shaped phantom, so read the deflate row as a
rough guide: real CT usually compresses a little better losslessly, but the CPU cost per byte
is what it is. Run alone: ``.venv/bin/python benchmarks/pack_files.py [--runs 3]
[--staging DIR]``. Writes only under a temporary folder (and DIR, when given).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

from bulkdl.manifest import write_tcia
from bulkdl.testing import ArchiveSpec, FakeArchive, FakeNbiaServer, run_in_thread

SPEC = ArchiveSpec(
    patients_per_collection=3,
    studies_per_patient=1,
    series_per_study=4,
    images_per_series=100,
    rows=256,
    columns=256,
    seed=4343,
)


def bulkdl(*args: str) -> float:
    """Seconds one ``bulkdl`` process takes; raises if it fails."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BULKDL_")}
    began = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "bulkdl", *args], capture_output=True, env=env)
    seconds = time.perf_counter() - began
    if done.returncode != 0:
        raise RuntimeError(done.stderr.decode())
    return seconds


def files_in(out: Path) -> int:
    """Files of the tree: bulkdl's own folder and its sidecars aside."""
    sidecars = {".bulkdl", "metadata.csv", "failures.csv", "LICENSES"}
    return sum(
        1
        for path in out.rglob("*")
        if path.is_file() and path.relative_to(out).parts[0] not in sidecars
    )


def deflate_row(archive: FakeArchive) -> str:
    """zlib over one series' files: the size ratio and the CPU time per MB at levels 1 and 6."""
    series = archive.series[0]
    blobs = [archive.file_path(i).read_bytes() for i in series.instances]
    size = sum(len(b) for b in blobs)
    parts = []
    for level in (1, 6):
        began = time.process_time()
        packed = sum(len(zlib.compress(b, level)) for b in blobs)
        cpu = time.process_time() - began
        parts.append(
            f"level {level}: {packed / size:.1%} of the bytes, {cpu / (size / 1e6) * 1e3:.1f} ms "
            f"CPU per MB ({size / 1e6 / cpu:.0f} MB/s on one core)"
        )
    return "deflate, one series: " + "; ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--staging", type=Path, help="also place from this folder")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bulkdl-pack-bench-") as tmp:
        work = Path(tmp)
        archive = FakeArchive.build(SPEC, work / "cache")
        manifest = work / "m.tcia"
        manifest.write_text(write_tcia([s.uid for s in archive.series]))
        total = sum(i.size for s in archive.series for i in s.instances)
        print(f"{len(archive.series)} series, {total / 1e6:.0f} MB, median of {args.runs} runs")
        ways: list[tuple[str, list[str]]] = [
            ("a file per instance", []),
            ("--pack zip", ["--pack", "zip"]),
            ("--pack tar", ["--pack", "tar"]),
        ]
        if args.staging is not None:
            staged = ["--staging", str(args.staging)]
            ways += [
                ("--staging (other fs)", staged),
                ("--staging --pack zip", [*staged, "--pack", "zip"]),
            ]
        with run_in_thread(FakeNbiaServer(archive)) as server:
            for name, options in ways:
                out = work / "out"
                times = []
                for _ in range(args.runs):
                    shutil.rmtree(out, ignore_errors=True)
                    times.append(
                        bulkdl("download", str(manifest), "--out", str(out), "--api-url",
                               server.v4_url, "--no-progress", *options)
                    )  # fmt: skip
                verify = bulkdl("verify", str(out), "--no-progress")
                count = files_in(out)
                began = time.perf_counter()
                shutil.rmtree(out)
                removal = time.perf_counter() - began
                print(
                    f"{name:<24} download {statistics.median(times):5.2f} s  "
                    f"files {count:5d}  verify {verify:5.2f} s  rm -r {removal * 1e3:6.1f} ms"
                )
        print(deflate_row(archive))


if __name__ == "__main__":
    main()
