"""Spool-then-extract vs inflate-as-a-stream, plain vs aiofiles writes, header reading options.

Builds one NBIA-shaped series (100 x 512x512 CT, ~52 MB inflated) with bulkdl.testing, cached
under the fake-archive cache, and its getImage ZIP, then measures, median of RUNS runs, wall time
and this process's user and system CPU (``getrusage(RUSAGE_SELF)`` deltas):
(a) spool: the ZIP arriving in 64 KiB chunks written to a file in 4 MiB batches (as bulkdl did),
then ``unpack_zip`` reading it back;
(b) stream: the same chunks batched to 4 MiB and fed to :class:`bulkdl.unpack.StreamUnpacker`
(what ``NbiaSource.fetch`` now does), with the same MD5s and header reads;
(r) the pure :class:`bulkdl.zipstream.ZipStreamReader` alone (inflate + CRC, no writes);
(c) writing the inflated members with plain ``open`` in one worker thread vs aiofiles;
(d) :func:`bulkdl.dicom.read_header` with and without ``specific_tags``;
and ``dd`` writing 1 GB to the page cache (its children's user and system CPU), the cost the
spool paid twice per ZIP byte. Run: ``.venv/bin/python benchmarks/unpack_strategies.py`` (about
a minute). Does file I/O in a temporary folder.
"""

from __future__ import annotations

import asyncio
import resource
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import aiofiles

from bulkdl.dicom import HEADER_KEYWORDS_ALWAYS, _read_header, read_header
from bulkdl.testing import ArchiveSpec, FakeArchive, default_cache_dir
from bulkdl.testing.zips import ZipVariant, build_zip
from bulkdl.unpack import StreamUnpacker, unpack_zip
from bulkdl.zipstream import ZipStreamReader

RUNS = 7
IMAGES = 100
ARRIVAL_CHUNK = 64 << 10  # what aiohttp's iter_chunked hands over
BATCH = 4 << 20  # what NbiaSource gathers before a thread hop
KEYWORDS = ("PatientID", "StudyDate", "SeriesNumber", "SeriesDescription", "Modality")


@dataclass(frozen=True)
class Cost:
    """Median wall, user and system seconds of some runs."""

    wall: float
    user: float
    sys: float


def measure(fn: Callable[[], object], runs: int = RUNS) -> Cost:
    walls, users, syss = [], [], []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_SELF)
        start = time.perf_counter()
        fn()
        walls.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_SELF)
        users.append(after.ru_utime - before.ru_utime)
        syss.append(after.ru_stime - before.ru_stime)
    return Cost(statistics.median(walls), statistics.median(users), statistics.median(syss))


def dd_cost(folder: Path, megabytes: int = 1000) -> Cost:
    """``dd`` writing ``megabytes`` MB of zeros to the page cache (no fsync), as a child."""
    target = folder / "dd.bin"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(
        ["dd", "if=/dev/zero", f"of={target}", "bs=1M", f"count={megabytes}"],
        check=True,
        capture_output=True,
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    target.unlink()
    return Cost(wall, after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime)


def arriving(body: bytes) -> Iterator[bytes]:
    for at in range(0, len(body), ARRIVAL_CHUNK):
        yield body[at : at + ARRIVAL_CHUNK]


def header(path: Path) -> dict[str, str] | None:
    return read_header(path, KEYWORDS)


def fresh(folder: Path) -> Path:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def batches(body: bytes) -> Iterator[bytes]:
    """The arriving chunks gathered to BATCH bytes, as NbiaSource does."""
    batch: list[bytes] = []
    size = 0
    for chunk in arriving(body):
        batch.append(chunk)
        size += len(chunk)
        if size >= BATCH:
            yield b"".join(batch)
            batch, size = [], 0
    if batch:
        yield b"".join(batch)


def spool(body: bytes, work: Path) -> int:
    """(a) Write the body to a spool file as it arrives, then extract it (the old way)."""
    dest = fresh(work / "spool")
    zip_path = dest / "body.zip"
    with zip_path.open("wb") as f:
        for batch in batches(body):
            f.write(batch)
    fetched = unpack_zip(zip_path, dest / "files", series_uid="1.2", max_total=None, inspect=header)
    zip_path.unlink()
    return len(fetched.files)


def stream(body: bytes, work: Path) -> int:
    """(b) Unpack the body as it arrives: StreamUnpacker fed 4 MiB batches."""
    dest = fresh(work / "stream")
    unpacker = StreamUnpacker(dest / "files", series_uid="1.2", max_total=None, inspect=header)
    for batch in batches(body):
        unpacker.feed(batch)
    return len(unpacker.finish().files)


def reader_only(body: bytes) -> int:
    """(r) The pure reader alone: inflate and CRC-32, no files."""
    reader = ZipStreamReader()
    total = 0
    for batch in batches(body):
        for event in reader.feed_iter(batch):
            total += len(getattr(event, "data", b""))
    reader.close()
    return total


def plain_writes(members: list[bytes], dest: Path, chunk: int) -> None:
    for n, data in enumerate(members):
        with (dest / f"{n:06d}.dcm").open("wb") as f:
            for at in range(0, len(data), chunk):
                f.write(data[at : at + chunk])


async def plain_in_thread(members: list[bytes], dest: Path, chunk: int) -> None:
    await asyncio.to_thread(plain_writes, members, dest, chunk)


async def aiofiles_writes(members: list[bytes], dest: Path, chunk: int) -> None:
    for n, data in enumerate(members):
        async with aiofiles.open(dest / f"{n:06d}.dcm", "wb") as f:
            for at in range(0, len(data), chunk):
                await f.write(data[at : at + chunk])


def run_writes(
    writer: Callable[[list[bytes], Path, int], Coroutine[None, None, None]],
    members: list[bytes],
    folder: Path,
    chunk: int,
) -> None:
    asyncio.run(writer(members, fresh(folder), chunk))


def read_all(files: list[Path], wanted: tuple[str, ...], specific: bool) -> None:
    for path in files:
        _read_header(path, wanted, specific=specific)


def main() -> None:
    spec = ArchiveSpec(
        patients_per_collection=1,
        studies_per_patient=1,
        series_per_study=1,
        images_per_series=IMAGES,
        seed=2024,
    )
    started = time.perf_counter()
    archive = FakeArchive.build(spec, default_cache_dir())
    series = archive.series[0]
    raw = sum(i.size for i in series.instances)
    with tempfile.TemporaryDirectory(prefix="bulkdl-bench-") as tmp:
        work = Path(tmp)
        zip_path = work / "series.zip"
        build_zip(archive, series, ZipVariant(include_md5=True), zip_path)
        body = zip_path.read_bytes()
        print(
            f"series: {IMAGES} images 512x512, {raw / 1e6:.1f} MB inflated, ZIP "
            f"{len(body) / 1e6:.1f} MB ({len(body) / raw:.0%}); setup "
            f"{time.perf_counter() - started:.1f} s; median of {RUNS} runs",
        )
        rows: list[tuple[str, Cost, float]] = []

        def add(label: str, cost: Cost, nbytes: int) -> None:
            rows.append((label, cost, nbytes / cost.wall / 1e6))

        assert spool(body, work) == stream(body, work) == len(series.instances)
        assert reader_only(body) > raw
        for _ in range(2):  # interleaved, so drift on a shared machine hits both alike
            add(
                "(a) spool: write ZIP, read back, unpack_zip (+MD5, headers)",
                measure(lambda: spool(body, work)),
                raw,
            )
            add(
                "(b) stream: StreamUnpacker, 4 MiB batches (+MD5, headers)",
                measure(lambda: stream(body, work)),
                raw,
            )
        add("(r) ZipStreamReader alone (inflate + CRC-32)", measure(lambda: reader_only(body)), raw)
        files = sorted((work / "spool" / "files").glob("*.dcm"))
        add(
            "    header reads alone (both include them)",
            measure(lambda: [header(p) for p in files]),
            raw,
        )
        members = [p.read_bytes() for p in files]
        w = work / "w"
        for chunk in (1 << 20, 64 << 10):
            label = f"{chunk >> 10} KiB chunks"
            add(
                f"(c) plain open() in one thread, {label}",
                measure(partial(run_writes, plain_in_thread, members, w, chunk)),
                raw,
            )
            add(
                f"(c) aiofiles, {label}",
                measure(partial(run_writes, aiofiles_writes, members, w, chunk)),
                raw,
            )
        wanted = (*HEADER_KEYWORDS_ALWAYS, *KEYWORDS)
        for specific in (True, False):
            cost = measure(partial(read_all, files, wanted, specific))
            rows.append(
                (
                    f"(d) read_header, specific_tags={'on' if specific else 'off'}"
                    f" ({len(files) / cost.wall:,.0f} headers/s)",
                    cost,
                    raw / cost.wall / 1e6,
                )
            )
        dd = min((dd_cost(work) for _ in range(3)), key=lambda c: c.wall)
        rows.append(("dd of 1,000 MB to the page cache (best of 3)", dd, 1000 / dd.wall))
    print(f"{'what':<64} {'wall s':>7} {'user s':>7} {'sys s':>7} {'MB/s':>7}")
    for label, cost, rate in rows:
        print(f"{label:<64} {cost.wall:>7.3f} {cost.user:>7.3f} {cost.sys:>7.3f} {rate:>7.0f}")


if __name__ == "__main__":
    main()
