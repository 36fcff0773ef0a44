"""getImage's ZIP as NBIA streams it, built once per series and variant and cached on disk.

NBIA writes its ZIPs with Java's ``ZipOutputStream`` straight onto the response: entries DEFLATED,
local headers without sizes and each entry followed by a data descriptor, ZIP64 when needed, flat
names. Python's :mod:`zipfile` writes exactly that when its output cannot seek, so :func:`build_zip`
hands it a write-only sink rather than hand-writing ZIP structures. Entries: ``LICENSE`` first,
images in database order named ``00000001.dcm``... (or ``<acq>-<inst>.dcm`` with NewFileNames), and
``md5hashes.csv`` last when asked. Variants also cover the faults that change the ZIP's content
(fewer images, hostile names). :class:`ZipCache` keeps each built file and its entry spans so a
server only streams bytes. Does file I/O.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import threading
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO

from bulkdl.testing.archive import FakeArchive, Instance, SeriesData

#: Names a hostile (or broken) server could put in a ZIP; the client must never follow them.
HOSTILE_NAMES: tuple[str, ...] = ("../evil.dcm", "/abs.dcm", "..\\win.dcm", "C:/drive.dcm")
MD5_ENTRY = "md5hashes.csv"
LICENSE_ENTRY = "LICENSE"
_ZIP_TIME = (2020, 1, 1, 0, 0, 0)
_COPY_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class ZipVariant:
    """Which ZIP to make for a series: getImage's options plus content-changing faults.

    ``keep`` sends only the first ``keep`` images (NBIA's silent truncation; 0 = empty series);
    ``hostile`` renames the first images to :data:`HOSTILE_NAMES`.
    """

    new_file_names: bool = False
    include_md5: bool = False
    license: bool = True
    keep: int | None = None
    hostile: bool = False

    def key(self) -> str:
        """A short name for this variant, used in cache file names."""
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass(frozen=True, slots=True)
class EntrySpan:
    """Where one entry lies in the ZIP: its local header offset and its compressed data bytes."""

    name: str
    header_start: int
    data_start: int
    data_end: int


def image_names(
    instances: tuple[Instance, ...], new_file_names: bool
) -> list[tuple[str, Instance]]:
    """The ZIP names of a series' images, in the order NBIA writes them.

    Default: database order, ``00000001.dcm``...; NewFileNames: sorted by AcquisitionNumber then
    InstanceNumber, named ``<acq>-<inst>.dcm`` with each number padded to the width of its maximum.
    """
    if not new_file_names:
        return [(f"{n:08d}.dcm", inst) for n, inst in enumerate(instances, 1)]
    if not instances:
        return []
    acq_width = len(str(max(i.acquisition_number for i in instances)))
    inst_width = len(str(max(i.instance_number for i in instances)))
    ordered = sorted(instances, key=lambda i: (i.acquisition_number, i.instance_number))
    return [
        (f"{i.acquisition_number:0{acq_width}d}-{i.instance_number:0{inst_width}d}.dcm", i)
        for i in ordered
    ]


class _WriteOnly:
    """A sink that cannot seek or tell, so zipfile writes data descriptors as a stream would."""

    def __init__(self, fp: BinaryIO) -> None:
        self._fp = fp
        self.position = 0

    def write(self, data: bytes) -> int:
        self._fp.write(data)
        self.position += len(data)
        return len(data)

    def flush(self) -> None:
        self._fp.flush()


def build_zip(
    archive: FakeArchive, series: SeriesData, variant: ZipVariant, out: Path
) -> list[EntrySpan]:
    """Write the ZIP for ``series`` in ``variant`` to ``out`` (atomically); return its entry spans.

    Raises OSError when a file cannot be read or written.
    """
    named = image_names(series.instances, variant.new_file_names)
    if variant.keep is not None:
        named = named[: variant.keep]
    if variant.hostile:
        named = [
            (HOSTILE_NAMES[n] if n < len(HOSTILE_NAMES) else name, inst)
            for n, (name, inst) in enumerate(named)
        ]
    spans: list[EntrySpan] = []
    tmp = out.with_name(f"{out.name}.{os.getpid()}.{threading.get_ident()}.part")
    with tmp.open("wb") as raw:
        sink = _WriteOnly(raw)
        with zipfile.ZipFile(sink, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as zf:  # type: ignore[call-overload]

            def add(name: str, chunks: list[bytes] | Path, size: int) -> None:
                info = zipfile.ZipInfo(name, _ZIP_TIME)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.create_system = 0  # Java writes "MS-DOS" as the maker
                info.file_size = size
                start = sink.position
                with zf.open(info, "w") as w:
                    data_start = sink.position
                    if isinstance(chunks, Path):
                        with chunks.open("rb") as f:
                            while block := f.read(_COPY_CHUNK):
                                w.write(block)
                    else:
                        for block in chunks:
                            w.write(block)
                spans.append(EntrySpan(name, start, data_start, data_start + info.compress_size))

            if variant.license:
                text = archive.license_text(series.collection).encode()
                add(LICENSE_ENTRY, [text], len(text))
            for name, inst in named:
                add(name, archive.file_path(inst), inst.size)
            if variant.include_md5:
                rows = [f"{name},{inst.md5}\n" for name, inst in named]
                random.Random(series.uid).shuffle(rows)  # NBIA: "rows in arbitrary order"
                text = ("Filename,MD5Hash\n" + "".join(rows)).encode()
                add(MD5_ENTRY, [text], len(text))
    os.replace(tmp, out)
    return spans


class ZipCache:
    """Built ZIPs on disk under ``folder``, one file per (series, variant), built on first use.

    Thread-safe: builds run in worker threads; one lock per key stops duplicate builds.
    """

    def __init__(self, archive: FakeArchive, folder: Path) -> None:
        self.archive = archive
        self.folder = folder
        self._spans: dict[str, list[EntrySpan]] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def get(self, series: SeriesData, variant: ZipVariant) -> tuple[Path, list[EntrySpan]]:
        """The ZIP file for ``series`` in ``variant`` and its entry spans, built if missing.

        Blocking; call it from a worker thread. Raises LookupError for a metadata-only archive.
        """
        # A revised series is other content: its ZIPs must not be the original's.
        revision = f"-{series.revision}" if series.revision else ""
        key = f"{series.index:06d}{revision}-{variant.key()}"
        path = self.folder / f"{key}.zip"
        with self._guard:
            if key in self._spans:
                return path, self._spans[key]
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            with self._guard:
                if key in self._spans:
                    return path, self._spans[key]
            meta = self.folder / f"{key}.json"
            if path.is_file() and meta.is_file():
                spans = [EntrySpan(**s) for s in json.loads(meta.read_text())]
            else:
                self.folder.mkdir(parents=True, exist_ok=True)
                spans = build_zip(self.archive, series, variant, path)
                tmp = meta.with_name(meta.name + f".{os.getpid()}.part")
                tmp.write_text(json.dumps([asdict(s) for s in spans]))
                os.replace(tmp, meta)
            with self._guard:
                self._spans[key] = spans
            return path, spans
