"""Spool-then-extract vs inflate-as-a-stream, plain vs aiofiles writes, header reading options.

Builds one NBIA-shaped series (100 x 512x512 CT, ~52 MB inflated) with bulkdl.testing, cached
under the fake-archive cache, and its getImage ZIP, then times, median of RUNS runs:
(a) spool: the ZIP arriving in 64 KiB chunks written to a file, then ``unpack_zip``;
(b) stream: a minimal streaming reader (local headers, zlib until eof, data descriptors) written
here only, writing the members with MD5 and header read as (a) does;
(c) writing the inflated members with plain ``open`` in one worker thread vs aiofiles;
(d) :func:`bulkdl.dicom.read_header` with and without ``specific_tags``.
Run: ``.venv/bin/python benchmarks/unpack_strategies.py`` (about 30 s). Does file I/O in a
temporary folder.
"""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import statistics
import struct
import tempfile
import time
import zipfile
import zlib
from collections.abc import Callable, Coroutine, Iterator
from functools import partial
from pathlib import Path

import aiofiles

from bulkdl.dicom import HEADER_KEYWORDS_ALWAYS, _read_header, read_header
from bulkdl.testing import ArchiveSpec, FakeArchive, default_cache_dir
from bulkdl.testing.zips import ZipVariant, build_zip
from bulkdl.unpack import unpack_zip

RUNS = 7
IMAGES = 100
ARRIVAL_CHUNK = 64 << 10  # what aiohttp's iter_chunked hands over
KEYWORDS = ("PatientID", "StudyDate", "SeriesNumber", "SeriesDescription", "Modality")


def median_time(fn: Callable[[], object], runs: int = RUNS) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def arriving(body: bytes) -> Iterator[bytes]:
    for at in range(0, len(body), ARRIVAL_CHUNK):
        yield body[at : at + ARRIVAL_CHUNK]


def header(path: Path) -> dict[str, str] | None:
    return read_header(path, KEYWORDS)


def fresh(folder: Path) -> Path:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def spool(body: bytes, work: Path) -> int:
    """(a) Write the body to a spool file as it arrives, then extract it."""
    dest = fresh(work / "spool")
    zip_path = dest / "body.zip"
    with zip_path.open("wb") as f:
        for chunk in arriving(body):
            f.write(chunk)
    fetched = unpack_zip(zip_path, dest / "files", series_uid="1.2", max_total=None, inspect=header)
    return len(fetched.files)


class StreamUnzip:
    """A push parser for a data-descriptor ZIP: enough of ZIP to measure streaming's cost
    (no ZIP64, no name checks, no central directory), writing members as they inflate."""

    def __init__(self, dest: Path) -> None:
        self.dest = dest
        self.buf = b""
        self.state = "header"
        self.name = ""
        self.inflater: zlib._Decompress | None = None
        self.out: object = None
        self.md5 = hashlib.md5(usedforsecurity=False)
        self.crc = 0
        self.count = 0
        self.files: list[tuple[str, Path, str, dict[str, str] | None]] = []
        self.path = dest

    def feed(self, data: bytes) -> None:
        self.buf += data
        while self.step():
            pass

    def step(self) -> bool:
        if self.state == "header":
            if len(self.buf) < 30:
                return False
            sig = self.buf[:4]
            if sig == b"PK\x01\x02" or sig == b"PK\x05\x06":
                self.state = "done"
                return False
            if sig != b"PK\x03\x04":
                raise ValueError("bad local header")
            _v, flags, method, _t, _d, _crc, _cs, _us, nlen, xlen = struct.unpack(
                "<HHHHHIIIHH", self.buf[4:30]
            )
            if len(self.buf) < 30 + nlen + xlen:
                return False
            if method != zipfile.ZIP_DEFLATED or not flags & 0x08:
                raise ValueError("benchmark reader handles DEFLATED + descriptor only")
            self.name = self.buf[30 : 30 + nlen].decode()
            self.buf = self.buf[30 + nlen + xlen :]
            self.inflater = zlib.decompressobj(-15)
            self.count += 1
            self.path = self.dest / f"{self.count:06d}.dcm"
            self.out = self.path.open("wb")
            self.md5 = hashlib.md5(usedforsecurity=False)
            self.crc = 0
            self.state = "data"
            return True
        if self.state == "data":
            assert self.inflater is not None
            data = self.inflater.decompress(self.buf)
            out = self.out
            assert hasattr(out, "write")
            out.write(data)
            self.md5.update(data)
            self.crc = zlib.crc32(data, self.crc)
            if not self.inflater.eof:
                self.buf = b""
                return False
            self.buf = self.inflater.unused_data
            out.close()  # type: ignore[attr-defined]
            self.state = "descriptor"
            return True
        if self.state == "descriptor":
            if len(self.buf) < 16:
                return False
            crc = struct.unpack("<I", self.buf[4:8])[0]
            if crc != self.crc:
                raise ValueError(f"CRC mismatch in {self.name}")
            self.buf = self.buf[16:]
            hdr = header(self.path) if self.name.endswith(".dcm") else None
            self.files.append((self.name, self.path, self.md5.hexdigest(), hdr))
            self.state = "header"
            return True
        return False


def stream(body: bytes, work: Path) -> int:
    """(b) Inflate the body as it arrives, writing, hashing and reading headers."""
    dest = fresh(work / "stream")
    parser = StreamUnzip(dest)
    for chunk in arriving(body):
        parser.feed(chunk)
    if parser.state != "done":
        raise ValueError("stream ended early")
    return len(parser.files)


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
        rows: list[tuple[str, float, float]] = []

        def add(label: str, seconds: float, nbytes: int) -> None:
            rows.append((label, seconds, nbytes / seconds / 1e6))

        assert spool(body, work) == stream(body, work) - 2  # LICENSE, md5hashes.csv

        def spool_once() -> int:
            return spool(body, work)

        def stream_once() -> int:
            return stream(body, work)

        add(
            "(a) spool: write ZIP + unpack_zip (+MD5, headers)",
            median_time(lambda: spool(body, work)),
            raw,
        )
        add(
            "(b) stream: inflate as it arrives (+MD5, headers)",
            median_time(lambda: stream(body, work)),
            raw,
        )
        files = sorted((work / "spool" / "files").glob("*.dcm"))
        add(
            "    header reads alone (both include them)",
            median_time(lambda: [header(p) for p in files]),
            raw,
        )
        members = [p.read_bytes() for p in files]
        w = work / "w"
        for chunk in (1 << 20, 64 << 10):
            label = f"{chunk >> 10} KiB chunks"
            add(
                f"(c) plain open() in one thread, {label}",
                median_time(partial(run_writes, plain_in_thread, members, w, chunk)),
                raw,
            )
            add(
                f"(c) aiofiles, {label}",
                median_time(partial(run_writes, aiofiles_writes, members, w, chunk)),
                raw,
            )
        wanted = (*HEADER_KEYWORDS_ALWAYS, *KEYWORDS)
        for specific in (True, False):
            seconds = median_time(partial(read_all, files, wanted, specific))
            rows.append(
                (
                    f"(d) read_header, specific_tags={'on' if specific else 'off'}"
                    f" ({len(files) / seconds:,.0f} headers/s)",
                    seconds,
                    raw / seconds / 1e6,
                )
            )
    print(f"{'what':<62} {'wall s':>8} {'MB/s':>8}")
    for label, seconds, rate in rows:
        print(f"{label:<62} {seconds:>8.3f} {rate:>8.0f}")


if __name__ == "__main__":
    main()
