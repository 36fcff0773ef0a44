"""Files per second of ``bulkdl organize``, and of its header reading, against plain loops.

One run, side by side, over the same files: ``FILES`` NBIA-shaped CT files (256x256, Explicit VR
Little Endian, ~130 KB each) built with bulkdl.testing into the benchmark cache. Contenders, each
the median of ``runs`` runs with the files in the page cache (a first pass warms it):

- ``cp -r``: the floor for copying the bytes, without reading a header or hashing anything;
- ``bulkdl organize --copy`` and ``--link`` as real processes (walk, headers, staging copy or hard
  link with MD5 + SHA-256, ledger, ``metadata.csv``; start-up included, and measured alone on an
  empty folder);
- header reading alone: :func:`bulkdl.scan.scan` (walk + headers of the default layout's keywords
  and the UIDs) in a pool of 8 threads and of 1;
- a plain ``pydicom.dcmread`` loop: whole files, and ``stop_before_pixels=True``.

Run alone: ``.venv/bin/python benchmarks/organize_files.py [--runs 3]``; ``run_all.py --only
organize`` puts the table in RESULTS.md. Does file I/O in a temporary folder.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pydicom
from harness import BULKDL, ROOT, Context, emptied, median, repeat
from report import Section

from bulkdl.layout import resolve_layout
from bulkdl.scan import scan
from bulkdl.testing import ArchiveSpec, FakeArchive

FILES = 800


def build(ctx: Context, files: int) -> tuple[Path, list[Path]]:
    """The source folder (a copy of the archive's files/, one folder per series, in the work
    folder: hard links cannot reach a cache on another filesystem) and its files."""
    spec = ArchiveSpec(
        patients_per_collection=files // 100,
        studies_per_patient=1,
        series_per_study=1,
        images_per_series=100,
        rows=256,
        columns=256,
        seed=4242,
    )
    archive = FakeArchive.build(spec, ctx.cache)
    assert archive.root is not None
    source = ctx.work / "source"
    shutil.copytree(archive.root / "files", source)
    return source, sorted(p for p in source.rglob("*") if p.is_file())


def timed(runs: int, call: Callable[[], object]) -> float:
    """Median seconds of ``runs`` calls, after one warm-up call."""
    call()
    times = []
    for _ in range(runs):
        began = time.perf_counter()
        call()
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def run(ctx: Context, files: int = FILES) -> Section:
    """The organize scenario."""
    source, paths = build(ctx, files)
    size = sum(p.stat().st_size for p in paths)
    section = Section(
        "Organizing files already on disk",
        f"{len(paths)} CT files 256x256 ({size / len(paths) / 1e3:.0f} KB each, "
        f"{size / 1e6:.0f} MB) in {len(paths) // 100} folders; page cache warm; median of "
        f"{ctx.runs} runs. Processes include their start-up; header rows are in-process.",
    )
    out = ctx.work / "out"

    def process_row(name: str, command: list[str]) -> None:
        repeat(1, emptied(out), lambda: command, cwd=ROOT)  # warm-up: page cache, .pyc
        measure = repeat(ctx.runs, emptied(out), lambda: command, cwd=ROOT)
        wall = median([m.wall for m in measure])
        section.rows.append(
            {
                "contender": name,
                "wall s": round(wall, 3),
                "files/s": round(len(paths) / wall),
                "CPU s": round(median([m.cpu for m in measure]), 2),
                "failed runs": sum(1 for m in measure if m.code != 0),
            }
        )
        ctx.echo(section.rows[-1])

    process_row("cp -r (copy floor)", ["cp", "-r", str(source), str(out / "copy")])
    organize = [*BULKDL, "organize", str(source), "--out", str(out / "tree")]
    process_row("bulkdl organize --copy", organize)
    process_row("bulkdl organize --link", [*organize, "--link"])
    empty = ctx.work / "empty"
    empty.mkdir(exist_ok=True)
    process_row(
        "bulkdl organize, no files (start-up)",
        [*BULKDL, "organize", str(empty), "--out", str(out / "tree")],
    )
    section.rows[-1]["files/s"] = ""

    keywords = resolve_layout("default").keywords

    def loop_row(name: str, call: Callable[[], object]) -> None:
        seconds = timed(ctx.runs, call)
        section.rows.append(
            {
                "contender": name,
                "wall s": round(seconds, 3),
                "files/s": round(len(paths) / seconds),
                "us/file": round(seconds / len(paths) * 1e6),
            }
        )
        ctx.echo(section.rows[-1])

    for workers in (8, 1):
        loop_row(
            f"bulkdl header scan ({workers} thread{'s' * (workers > 1)})",
            lambda w=workers: scan([source], keywords, workers=w),
        )
    loop_row("pydicom.dcmread loop", lambda: [pydicom.dcmread(p) for p in paths])
    loop_row(
        "pydicom.dcmread(stop_before_pixels) loop",
        lambda: [pydicom.dcmread(p, stop_before_pixels=True) for p in paths],
    )
    section.notes.append(
        "bulkdl's header scan reads only the layout's keywords and the four UIDs (the fast "
        "header path with pydicom as fallback, `bulkdl/dicom.py`); organize also hashes every "
        "byte twice (MD5 for the ledger and downloads, SHA-256 for lock files) while copying."
    )
    return section


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--files", type=int, default=FILES, help="a multiple of 100")
    parser.add_argument("--cache", type=Path, default=ROOT / ".cache" / "bench-archives")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bulkdl-organize-bench-"))
    try:
        section = run(Context(work, args.cache, args.runs, None), args.files)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(section.markdown())


if __name__ == "__main__":
    main()
