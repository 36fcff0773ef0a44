"""ZipStreamReader on NBIA-shaped, zipfile-made and hand-made ZIPs in any chunking; each refusal."""

from __future__ import annotations

import io
import random
import struct
import tracemalloc
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bulkdl.errors import ArchiveError
from bulkdl.testing import FakeArchive
from bulkdl.testing.zips import ZipVariant, build_zip
from bulkdl.unpack import StreamUnpacker
from bulkdl.zipstream import (
    ArchiveEnd,
    Event,
    MemberData,
    MemberEnd,
    MemberStart,
    ZipStreamReader,
)

UID = "1.2.3.4"
Member = tuple[str, bytes, int]  # name, inflated bytes, CRC-32


class _Sink(io.RawIOBase):
    """A write-only, unseekable sink: zipfile then writes data descriptors, as NBIA's Java does."""

    def __init__(self) -> None:
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, b: bytes) -> int:  # type: ignore[override]
        self.data += b
        return len(b)


def zipfile_body(
    members: Iterable[tuple[str, bytes]],
    *,
    method: int = zipfile.ZIP_DEFLATED,
    stream: bool = True,
    force_zip64: bool = False,
) -> bytes:
    """A ZIP made by zipfile: streamed (data descriptors) or seekable (sizes in local headers)."""
    sink: _Sink | io.BytesIO = _Sink() if stream else io.BytesIO()
    with zipfile.ZipFile(sink, "w", method) as zf:
        for name, data in members:
            info = zipfile.ZipInfo(name, (2020, 1, 1, 0, 0, 0))
            info.compress_type = method
            with zf.open(info, "w", force_zip64=force_zip64) as w:
                w.write(data)
    return bytes(sink.data) if isinstance(sink, _Sink) else sink.getvalue()


def handmade_body(
    members: Iterable[tuple[str, bytes]],
    *,
    method: int = zipfile.ZIP_DEFLATED,
    descriptor: str | None = "sig",
    zip64_extra: bool = False,
    utf8: bool = False,
) -> bytes:
    """A ZIP written byte by byte: data descriptors with or without signature, 32- or 64-bit
    (64-bit when the local header has a ZIP64 extra field, whose sizes are faked small)."""
    out, central = bytearray(), bytearray()
    count = 0
    for name, data in members:
        count += 1
        raw = name.encode("utf-8" if utf8 else "cp437")
        flags = (0x08 if descriptor else 0) | (0x800 if utf8 else 0)
        if method == zipfile.ZIP_DEFLATED:
            packer = zlib.compressobj(6, zlib.DEFLATED, -15)
            comp = packer.compress(data) + packer.flush()
        else:
            comp = data
        crc = zlib.crc32(data)
        extra = b""
        local = (0, 0, 0) if descriptor else (crc, len(comp), len(data))
        if zip64_extra:
            sizes = (0, 0) if descriptor else (len(data), len(comp))
            extra = struct.pack("<HHQQ", 1, 16, *sizes)
            local = (local[0], 0xFFFFFFFF, 0xFFFFFFFF)
        offset = len(out)
        out += struct.pack(
            "<4s5H3L2H", b"PK\x03\x04", 45, flags, method, 0, 0x21, *local, len(raw), len(extra)
        )
        out += raw + extra + comp
        if descriptor:
            signature = b"PK\x07\x08" if descriptor == "sig" else b""
            fmt = "<LQQ" if zip64_extra else "<LLL"
            out += signature + struct.pack(fmt, crc, len(comp), len(data))
        central += struct.pack(
            "<4s6H3L5H2L", b"PK\x01\x02", 45, 45, flags, method, 0, 0x21, crc, len(comp),
            len(data), len(raw), 0, 0, 0, 0, 0, offset,
        )  # fmt: skip
        central += raw
    cd_at = len(out)
    out += central
    out += struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, count, count, len(central), cd_at, 0)
    return bytes(out)


def split(body: bytes, size: int) -> Iterator[bytes]:
    """``body`` in pieces of ``size`` bytes."""
    for at in range(0, len(body), size):
        yield body[at : at + size]


def read(chunks: Iterable[bytes], **kwargs: int) -> list[Event]:
    """Every event of a body fed as ``chunks``, then closed."""
    reader = ZipStreamReader(series_uid=UID, **kwargs)
    events: list[Event] = []
    for chunk in chunks:
        events += reader.feed(chunk)
    events += reader.close()
    return events


def members_of(events: list[Event]) -> tuple[list[Member], ArchiveEnd]:
    """The members the events describe, after checking they are well formed and consistent."""
    members: list[Member] = []
    current: str | None = None
    parts: list[bytes] = []
    end: ArchiveEnd | None = None
    for event in events:
        assert end is None, "an event after ArchiveEnd"
        if isinstance(event, MemberStart):
            assert current is None
            current, parts = event.name, []
        elif isinstance(event, MemberData):
            assert current is not None and event.data
            parts.append(event.data)
        elif isinstance(event, MemberEnd):
            data = b"".join(parts)
            assert current == event.name
            assert event.crc == zlib.crc32(data) and event.size == len(data)
            members.append((event.name, data, event.crc))
            current = None
        else:
            end = event
    assert end is not None and current is None
    assert [(e.name, e.crc, e.uncompressed_size) for e in end.entries] == [
        (name, crc, len(data)) for name, data, crc in members
    ]
    return members, end


def oracle(body: bytes) -> list[Member]:
    """What zipfile reads from ``body`` (through its central directory)."""
    with zipfile.ZipFile(io.BytesIO(body)) as zf:
        return [(i.filename, zf.read(i), i.CRC) for i in zf.infolist()]


def chunkings(body: bytes) -> list[list[bytes]]:
    """1 byte, 7 bytes, 64 KiB, random splits and the whole body."""
    rng = random.Random(len(body))
    cuts = sorted(rng.sample(range(1, len(body)), min(20, len(body) - 1)))
    random_split = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
    return [list(split(body, n)) for n in (1, 7, 1 << 16)] + [random_split, [body]]


def nbia_bodies(archive: FakeArchive, tmp_path: Path) -> list[bytes]:
    """getImage ZIPs of the small archive's series, in each variant NBIA sends."""
    variants = [
        ZipVariant(),
        ZipVariant(include_md5=True),
        ZipVariant(new_file_names=True, include_md5=True),
        ZipVariant(include_md5=True, license=False),
        ZipVariant(include_md5=True, keep=0),
        ZipVariant(keep=0),
    ]
    bodies = []
    for n, variant in enumerate(variants):
        out = tmp_path / f"{n}.zip"
        build_zip(archive, archive.series[n % len(archive.series)], variant, out)
        bodies.append(out.read_bytes())
    return bodies


def test_nbia_zips_every_chunking(small_archive: FakeArchive, tmp_path: Path) -> None:
    """NBIA-shaped ZIPs give exactly zipfile's names, bytes and CRCs, however they are chunked."""
    for body in nbia_bodies(small_archive, tmp_path):
        expected = oracle(body)
        assert body[30:37] == b"LICENSE" or b"LICENSE" not in body[:60]
        for chunks in chunkings(body):
            members, _ = members_of(read(chunks))
            assert members == expected


def test_license_only(small_archive: FakeArchive, tmp_path: Path) -> None:
    """An empty series' ZIP (LICENSE only) is one member and a one-entry directory."""
    out = tmp_path / "x.zip"
    build_zip(small_archive, small_archive.series[0], ZipVariant(keep=0), out)
    members, end = members_of(read([out.read_bytes()]))
    assert [name for name, _, _ in members] == ["LICENSE"]
    assert len(end.entries) == 1


def test_member_start_declares_size_only_when_known() -> None:
    """declared_size is None behind a data descriptor and the local header's size otherwise."""
    data = [("a.dcm", b"x" * 1000)]
    starts = [e for e in read([zipfile_body(data)]) if isinstance(e, MemberStart)]
    assert starts == [MemberStart("a.dcm", 8, None)]
    starts = [e for e in read([zipfile_body(data, stream=False)]) if isinstance(e, MemberStart)]
    assert starts == [MemberStart("a.dcm", 8, 1000)]


@pytest.mark.parametrize("descriptor", ["sig", "nosig"])
@pytest.mark.parametrize("zip64_extra", [False, True])
def test_data_descriptors(descriptor: str, zip64_extra: bool) -> None:
    """Data descriptors with or without signature, 32- or 64-bit (ZIP64 extra), read right."""
    rng = random.Random(3)
    data = [(f"{n:08d}.dcm", rng.randbytes(500 * n) + bytes(3000)) for n in range(4)]
    body = handmade_body(data, descriptor=descriptor, zip64_extra=zip64_extra)
    assert oracle(body) == [(n, d, zlib.crc32(d)) for n, d in data]
    for chunks in chunkings(body):
        assert members_of(read(chunks))[0] == oracle(body)


def test_crc_looking_like_a_signature() -> None:
    """A descriptor without signature whose CRC-32 is 'PK\\x07\\x08' is still read right."""
    # find data whose CRC-32 is the descriptor signature's value: forge the last 4 bytes
    target = 0x08074B50
    prefix = b"abc"
    data = prefix + _crc_forge(prefix, target)
    assert zlib.crc32(data) == target
    body = handmade_body([("a.dcm", data), ("b.dcm", b"b")], descriptor="nosig")
    assert members_of(read(split(body, 5)))[0] == oracle(body)


def _crc_forge(prefix: bytes, target: int) -> bytes:
    """Four bytes that, appended to ``prefix``, give CRC-32 ``target`` (CRC is linear in GF(2))."""
    base = zlib.crc32(prefix + bytes(4))
    columns = [zlib.crc32(prefix + (1 << bit).to_bytes(4, "little")) ^ base for bit in range(32)]
    want = base ^ target
    # Gaussian elimination over GF(2): solve sum(x_i * columns[i]) == want
    rows = list(zip(columns, [1 << i for i in range(32)], strict=True))
    basis: list[tuple[int, int]] = []
    for value, combo in rows:
        for b_value, b_combo in basis:
            if value ^ b_value < value:
                value, combo = value ^ b_value, combo ^ b_combo
        if value:
            basis.append((value, combo))
            basis.sort(reverse=True)
    solution = 0
    for b_value, b_combo in basis:
        if want ^ b_value < want:
            want, solution = want ^ b_value, solution ^ b_combo
    assert want == 0
    return solution.to_bytes(4, "little")


def test_utf8_and_cp437_names() -> None:
    """Names decode as UTF-8 when flagged (bit 11) and as cp437 otherwise, as zipfile does."""
    body = handmade_body([("é-ü.dcm", b"x")], utf8=True)
    assert members_of(read([body]))[0][0][0] == "é-ü.dcm"
    body = handmade_body([("ü.dcm", b"x")])
    assert b"\x81.dcm" in body  # cp437's ü
    assert members_of(read([body]))[0][0][0] == "ü.dcm" == oracle(body)[0][0]


@pytest.mark.parametrize("stream", [True, False])
def test_zip64_from_zipfile(stream: bool) -> None:
    """zipfile's force_zip64 members (ZIP64 extra, 64-bit descriptors when streamed) read right."""
    data = [(f"{n:08d}.dcm", random.Random(n).randbytes(2000) * 3) for n in range(3)]
    body = zipfile_body(data, stream=stream, force_zip64=True)
    assert struct.unpack_from("<II", body, 18) == (0xFFFFFFFF, 0xFFFFFFFF)
    for chunks in chunkings(body):
        assert members_of(read(chunks))[0] == oracle(body)


def test_zip64_end_record(monkeypatch: pytest.MonkeyPatch) -> None:
    """A ZIP ending with a ZIP64 end record and locator is read and checked."""
    monkeypatch.setattr(zipfile, "ZIP_FILECOUNT_LIMIT", 1)
    body = zipfile_body([(f"{n}.dcm", b"x" * n) for n in range(3)], stream=False)
    monkeypatch.undo()
    assert b"PK\x06\x06" in body and b"PK\x06\x07" in body
    for chunks in chunkings(body):
        assert [len(d) for _, d, _ in members_of(read(chunks))[0]] == [0, 1, 2]


def test_stored_members() -> None:
    """STORED members (sizes in the local header) stream byte for byte, in bounded pieces."""
    data = [(f"{n}.dcm", random.Random(n).randbytes(5000 + n)) for n in range(4)]
    body = zipfile_body(data, method=zipfile.ZIP_STORED, stream=False)
    for chunks in chunkings(body):
        events = read(chunks, out_chunk=1000)
        assert max(len(e.data) for e in events if isinstance(e, MemberData)) <= 1000
        assert members_of(events)[0] == oracle(body)


def test_empty_archive() -> None:
    """A ZIP with no members (an end record only) is an empty, complete archive."""
    body = zipfile_body([])
    assert body.startswith(b"PK\x05\x06")
    for chunks in chunkings(body):
        assert read(chunks) == [ArchiveEnd(())]


def test_truncated_everywhere(small_archive: FakeArchive, tmp_path: Path) -> None:
    """A body cut at any offset is an ArchiveError, never a success."""
    out = tmp_path / "x.zip"
    build_zip(small_archive, small_archive.series[0], ZipVariant(include_md5=True, keep=1), out)
    body = out.read_bytes()
    for cut in range(len(body)):
        with pytest.raises(ArchiveError) as caught:
            read(split(body[:cut], 4096))
        assert caught.value.series_uid == UID
        if cut >= 40:
            assert "ZIP truncated" in str(caught.value)


def test_corrupt_byte(small_archive: FakeArchive, tmp_path: Path) -> None:
    """A flipped byte in an image's compressed data is an ArchiveError naming the member."""
    out = tmp_path / "x.zip"
    spans = build_zip(small_archive, small_archive.series[0], ZipVariant(), out)
    raw = bytearray(out.read_bytes())
    raw[(spans[2].data_start + spans[2].data_end) // 2] ^= 0x10
    with pytest.raises(ArchiveError, match=spans[2].name):
        read(split(bytes(raw), 1000))


def _patch_central(body: bytes, at: int, fmt: str, value: int, entry: int = 0) -> bytes:
    raw = bytearray(body)
    where = -1
    for _ in range(entry + 1):
        where = raw.index(b"PK\x01\x02", where + 1)
    struct.pack_into(fmt, raw, where + at, value)
    return bytes(raw)


@pytest.mark.parametrize(
    ("at", "fmt", "value"),
    [(16, "<L", 12345), (20, "<L", 7), (24, "<L", 99999), (42, "<L", 5)],
    ids=["crc", "compressed size", "size", "offset"],
)
def test_central_directory_disagrees(at: int, fmt: str, value: int) -> None:
    """A central directory entry at odds with its streamed member is an ArchiveError."""
    body = zipfile_body([("a.dcm", b"a" * 100), ("b.dcm", b"b" * 200)])
    with pytest.raises(ArchiveError, match="central directory disagrees"):
        read([_patch_central(body, at, fmt, value, entry=1)])


def test_central_directory_renames_member() -> None:
    """A central directory naming a member differently from its local header is refused."""
    body = zipfile_body([("a.dcm", b"a"), ("b.dcm", b"b")])
    cd = body.index(b"PK\x01\x02")
    patched = body[:cd] + body[cd:].replace(b"b.dcm", b"c.dcm")
    with pytest.raises(ArchiveError, match=r"lists c\.dcm"):
        read([patched])


def test_end_record_disagrees() -> None:
    """An end record whose member count or directory offset is wrong is refused."""
    body = zipfile_body([("a.dcm", b"a"), ("b.dcm", b"b")])
    end = body.rindex(b"PK\x05\x06")
    for at, value, message in ((10, 3, "declares 3 members"), (16, 1, "central directory at")):
        raw = bytearray(body)
        struct.pack_into("<H" if at == 10 else "<L", raw, end + at, value)
        with pytest.raises(ArchiveError, match=message):
            read([bytes(raw)])


def test_member_missing_from_directory() -> None:
    """A directory (and end record) listing fewer members than were streamed is refused."""
    one = zipfile_body([("a.dcm", b"a")])
    two = zipfile_body([("a.dcm", b"a"), ("b.dcm", b"b")])
    cd1 = one.index(b"PK\x01\x02")
    cd2 = two.index(b"PK\x01\x02")
    entry = one[cd1 : one.index(b"PK\x05\x06")]
    end = bytearray(one[one.index(b"PK\x05\x06") :])
    struct.pack_into("<L", end, 16, cd2)
    with pytest.raises(ArchiveError, match="1 members, the stream held 2"):
        read([two[:cd2] + entry + bytes(end)])


def test_html_body() -> None:
    """An HTML error page is refused as not a ZIP, quoting its first 40 bytes, in any chunking."""
    page = b"<html><body>Error: Unable to process the request</body></html>"
    for chunks in chunkings(page):
        with pytest.raises(ArchiveError, match=r"not a ZIP archive \(starts with '<html><body>Err"):
            read(chunks)


def test_short_and_empty_bodies() -> None:
    """A short non-ZIP body is quoted on close; an empty one says empty; 'PK' alone is cut short."""
    with pytest.raises(ArchiveError, match=r"starts with 'oops'"):
        read([b"oo", b"ps"])
    with pytest.raises(ArchiveError, match="empty"):
        read([])
    with pytest.raises(ArchiveError, match="truncated"):
        read([b"PK\x03"])


def test_garbage_after_end_record() -> None:
    """Bytes after the end record are refused, even when they arrive later."""
    body = zipfile_body([("a.dcm", b"a")])
    with pytest.raises(ArchiveError, match="garbage after"):
        read([body, b"<html>"])
    with pytest.raises(ArchiveError, match="garbage after"):
        read([body + b"\x00"])


def test_refusals() -> None:
    """Encrypted members, other methods and STORED with a data descriptor are refused."""
    body = bytearray(zipfile_body([("a.dcm", b"a" * 100)], stream=False))
    body[6] |= 1
    with pytest.raises(ArchiveError, match=r"a\.dcm is encrypted"):
        read([bytes(body)])
    bz = zipfile_body([("a.dcm", b"a" * 100)], method=zipfile.ZIP_BZIP2, stream=False)
    with pytest.raises(ArchiveError, match="compression method 12"):
        read([bz])
    stored = handmade_body([("a.dcm", b"a")], method=zipfile.ZIP_STORED, descriptor="sig")
    with pytest.raises(ArchiveError, match="STORED with its size in a data descriptor"):
        read([stored])


def test_used_after_failure() -> None:
    """A reader that raised keeps raising ArchiveError rather than parsing on."""
    reader = ZipStreamReader(series_uid=UID)
    with pytest.raises(ArchiveError):
        reader.feed(b"x" * 100)
    with pytest.raises(ArchiveError, match="already failed"):
        reader.feed(b"PK\x03\x04")


def _bomb(size: int) -> bytes:
    sink = _Sink()
    with zipfile.ZipFile(sink, "w", zipfile.ZIP_DEFLATED) as zf, zf.open("00000001.dcm", "w") as w:
        block = bytes(1 << 20)
        for _ in range(size >> 20):
            w.write(block)
    return bytes(sink.data)


def test_bomb_streams_in_bounded_memory() -> None:
    """100 MB of zeros in one member stream through with a flat memory peak (< 8 MB)."""
    body = _bomb(100 << 20)
    assert len(body) < 200_000
    total = 0
    tracemalloc.start()
    try:
        reader = ZipStreamReader(series_uid=UID)
        for chunk in split(body, 1 << 16):
            for event in reader.feed_iter(chunk):
                if isinstance(event, MemberData):
                    total += len(event.data)
        reader.close()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == 100 << 20
    assert peak < 8 << 20


def test_unpacker_stops_bomb_at_max_total(tmp_path: Path) -> None:
    """StreamUnpacker stops a bomb once past max_total, in flat memory, leaving nothing."""
    body = _bomb(100 << 20)
    dest = tmp_path / "out"
    unpacker = StreamUnpacker(dest, series_uid=UID, max_total=5 << 20, inspect=lambda p: None)
    tracemalloc.start()
    try:
        with pytest.raises(ArchiveError, match="inflates past the 5,242,880 bytes"):
            unpacker.feed(body)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20
    assert not dest.exists()


_VALID = zipfile_body([("LICENSE", b"L" * 50), ("00000001.dcm", b"\x00\x01" * 300)])


@st.composite
def bodies_and_splits(draw: st.DrawFn) -> tuple[bytes, list[bytes]]:
    """A body (random bytes, or a valid ZIP cut or with flipped bytes) and a random chunking."""
    kind = draw(st.sampled_from(["random", "cut", "flip", "valid"]))
    if kind == "random":
        prefix = draw(st.sampled_from([b"", b"PK\x03\x04", b"PK\x05\x06"]))
        body = prefix + draw(st.binary(max_size=200))
    else:
        body = _VALID
        if kind == "cut":
            body = body[: draw(st.integers(0, len(body)))]
        elif kind == "flip":
            raw = bytearray(body)
            for at in draw(st.lists(st.integers(0, len(raw) - 1), min_size=1, max_size=3)):
                raw[at] ^= draw(st.integers(1, 255))
            body = bytes(raw)
    cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=8)))
    chunks = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
    return body, chunks


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bodies_and_splits())
def test_any_bytes_any_chunking(case: tuple[bytes, list[bytes]]) -> None:
    """Any bytes in any chunking either read consistently (as whole) or raise ArchiveError."""
    body, chunks = case
    try:
        events = read(chunks, out_chunk=100)
    except ArchiveError:
        with pytest.raises(ArchiveError):
            read([body])
        return
    members, _ = members_of(events)
    assert members_of(read([body]))[0] == members
    if body == _VALID:
        assert members == oracle(body)
