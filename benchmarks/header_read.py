"""Header reads per second: bulkdl's hand-written fast path against the pydicom reference path.

Builds 200 NBIA-shaped CT files (512x512, Explicit VR Little Endian, ~526 KB each) with
bulkdl.testing into a temporary cache, checks both paths give the same answer for every file,
then times :func:`bulkdl.dicom.read_header` (fast path, pydicom fallback) and
:func:`bulkdl.dicom._read_header` (pydicom alone, ``specific_tags``) over all of them, the two
interleaved, median of RUNS runs (the machine is shared: medians, not means). Files are in the
page cache after the first pass, as they are when unpack reads a file it has just written.
Run: ``.venv/bin/python benchmarks/header_read.py`` (about 10 s, half of it building the
files). Does file I/O in a temporary folder.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bulkdl.dicom import _read_header, read_header
from bulkdl.testing import ArchiveSpec, FakeArchive

RUNS = 9
FILES = 200
#: What verification needs plus a typical layout template's keywords.
KEYWORDS = (
    "PatientID",
    "PatientName",
    "StudyDate",
    "Modality",
    "SeriesNumber",
    "SeriesDescription",
    "InstanceNumber",
    "AcquisitionNumber",
)


def fast(files: list[Path]) -> None:
    for path in files:
        read_header(path, KEYWORDS)


def reference(files: list[Path]) -> None:
    for path in files:
        _read_header(path, KEYWORDS, specific=True)


def main() -> None:
    spec = ArchiveSpec(
        patients_per_collection=1,
        studies_per_patient=1,
        series_per_study=2,
        images_per_series=FILES // 2,
        seed=2025,
    )
    with tempfile.TemporaryDirectory(prefix="bulkdl-header-bench-") as tmp:
        started = time.perf_counter()
        archive = FakeArchive.build(spec, Path(tmp))
        files = [archive.file_path(i) for s in archive.series for i in s.instances]
        size = sum(p.stat().st_size for p in files) / len(files)
        for path in files:  # also warms the page cache
            answer = read_header(path, KEYWORDS)
            assert answer is not None and answer == _read_header(path, KEYWORDS, specific=True)
        print(
            f"{len(files)} CT files 512x512, {size / 1e3:.0f} KB each, {len(KEYWORDS)} keywords "
            f"+ 4 UIDs; setup {time.perf_counter() - started:.1f} s; median of {RUNS} runs"
        )
        paths: dict[str, Callable[[list[Path]], None]] = {
            "pydicom (reference)": reference,
            "fast path": fast,
        }
        times: dict[str, list[float]] = {name: [] for name in paths}
        for _ in range(RUNS):
            for name, run in paths.items():
                begin = time.perf_counter()
                run(files)
                times[name].append(time.perf_counter() - begin)
    medians = {name: statistics.median(t) for name, t in times.items()}
    base = medians["pydicom (reference)"]
    print(f"{'path':<22} {'headers/s':>10} {'us/header':>10} {'speed-up':>9}")
    for name, seconds in medians.items():
        rate = len(files) / seconds
        print(
            f"{name:<22} {rate:>10,.0f} {seconds / len(files) * 1e6:>10.1f} {base / seconds:>8.1f}x"
        )


if __name__ == "__main__":
    main()
