"""unpack_zip and StreamUnpacker on NBIA-shaped ZIPs: files on disk, MD5s, headers, each refusal."""

from __future__ import annotations

import errno
import hashlib
import random
import struct
import tracemalloc
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path

import aiohttp
import pytest

from bulkdl.dicom import read_header
from bulkdl.errors import ArchiveError
from bulkdl.records import FetchedSeries
from bulkdl.testing import FakeArchive, FakeNbiaServer, Fault
from bulkdl.testing.archive import SeriesData
from bulkdl.testing.zips import ZipVariant, build_zip, image_names
from bulkdl.unpack import MAX_MEMBERS, StreamUnpacker, parse_md5_csv, unpack_zip

UID = "1.2.3.4"
KEYWORDS = ("PatientID", "InstanceNumber")


def header(path: Path) -> Mapping[str, str] | None:
    return read_header(path, KEYWORDS)


def no_header(path: Path) -> Mapping[str, str] | None:
    return None


def unpack(zip_path: Path, dest: Path, max_total: int | None = None) -> FetchedSeries:
    return unpack_zip(zip_path, dest, series_uid=UID, max_total=max_total, inspect=header)


def series_zip(archive: FakeArchive, tmp_path: Path, variant: ZipVariant, n: int = 0) -> Path:
    out = tmp_path / f"series-{n}-{variant.key()}.zip"
    build_zip(archive, archive.series[n], variant, out)
    return out


def custom_zip(
    path: Path,
    members: list[tuple[str, bytes]],
    method: int = zipfile.ZIP_DEFLATED,
    force_zip64: bool = False,
) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate names are the point of one test
        with zipfile.ZipFile(path, "w", method) as zf:
            for name, data in members:
                info = zipfile.ZipInfo(name, (2020, 1, 1, 0, 0, 0))
                info.compress_type = method
                with zf.open(info, "w", force_zip64=force_zip64) as w:
                    w.write(data)
    return path


def all_files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


def assert_matches_archive(
    fetched: FetchedSeries, archive: FakeArchive, series: SeriesData, new_names: bool = False
) -> None:
    named = image_names(series.instances, new_names)
    assert [f.name for f in fetched.files] == [name for name, _ in named]
    for n, (f, (_, inst)) in enumerate(zip(fetched.files, named, strict=True), 1):
        original = archive.file_path(inst).read_bytes()
        assert f.path.name == f"{n:06d}.dcm"
        assert f.path.read_bytes() == original
        assert f.size == len(original) == inst.size
        assert f.md5 == inst.md5 == hashlib.md5(original).hexdigest()
        assert f.sha256 == hashlib.sha256(original).hexdigest()
        assert f.header is not None
        assert f.header["SOPInstanceUID"] == inst.sop_uid
        assert f.header["SeriesInstanceUID"] == series.uid
        assert f.header["InstanceNumber"] == str(inst.instance_number)


def test_get_image_zip(small_archive: FakeArchive, tmp_path: Path) -> None:
    """A getImage ZIP unpacks to the original files, in ZIP order, with MD5s, headers, LICENSE."""
    series = small_archive.series[1]
    fetched = unpack(series_zip(small_archive, tmp_path, ZipVariant(), 1), tmp_path / "out")
    assert_matches_archive(fetched, small_archive, series)
    assert fetched.declared_md5 is None
    assert fetched.license_text == small_archive.license_text(series.collection)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        f"{n:06d}.dcm" for n in range(1, len(series.instances) + 1)
    ]


def test_new_file_names(small_archive: FakeArchive, tmp_path: Path) -> None:
    """NewFileNames=Yes names (``<acq>-<inst>.dcm``) are kept as names, never used as paths."""
    series = small_archive.series[2]
    variant = ZipVariant(new_file_names=True, include_md5=True)
    fetched = unpack(series_zip(small_archive, tmp_path, variant, 2), tmp_path / "out")
    assert_matches_archive(fetched, small_archive, series, new_names=True)
    assert all("-" in f.name for f in fetched.files)
    assert fetched.declared_md5 == {f.name: f.md5 for f in fetched.files}


def test_get_image_with_md5_hash_shape(small_archive: FakeArchive, tmp_path: Path) -> None:
    """getImageWithMD5Hash's ZIP (no LICENSE, md5hashes.csv last) gives declared MD5s, no text."""
    series = small_archive.series[0]
    variant = ZipVariant(include_md5=True, license=False)
    fetched = unpack(series_zip(small_archive, tmp_path, variant), tmp_path / "out")
    assert_matches_archive(fetched, small_archive, series)
    assert fetched.license_text is None
    assert fetched.declared_md5 == {
        name: inst.md5 for name, inst in image_names(series.instances, False)
    }


def test_empty_series(small_archive: FakeArchive, tmp_path: Path) -> None:
    """An empty series (LICENSE and an empty md5hashes.csv only) gives no files and no error."""
    variant = ZipVariant(include_md5=True, keep=0)
    fetched = unpack(series_zip(small_archive, tmp_path, variant), tmp_path / "out")
    assert fetched.files == ()
    assert fetched.declared_md5 == {}
    assert fetched.license_text
    assert list((tmp_path / "out").iterdir()) == []


def test_short_zip(small_archive: FakeArchive, tmp_path: Path) -> None:
    """A silently truncated series unpacks fine with fewer files (verify's job to notice)."""
    variant = ZipVariant(include_md5=True, keep=2)
    fetched = unpack(series_zip(small_archive, tmp_path, variant), tmp_path / "out")
    assert len(fetched.files) == 2
    assert fetched.declared_md5 is not None and set(fetched.declared_md5) == {
        f.name for f in fetched.files
    }


@pytest.mark.parametrize(
    "name",
    [
        "../evil.dcm",
        "sub/../../evil.dcm",
        "..",
        "/abs.dcm",
        "..\\win.dcm",
        "dir\\x.dcm",
        "C:/drive.dcm",
        "c:drive.dcm",
        "bell\x07.dcm",
        "esc\x1b[31m.dcm",
        "del\x7f.dcm",
        "tab\t.dcm",
        "../",
    ],
)
def test_hostile_names_refused(tmp_path: Path, name: str) -> None:
    """Each kind of hostile member name is refused before anything is written anywhere."""
    zip_path = custom_zip(
        tmp_path / "x.zip", [("LICENSE", b"L"), ("00000001.dcm", b"ok"), (name, b"evil")]
    )
    before = all_files(tmp_path)
    with pytest.raises(ArchiveError, match="hostile member name") as caught:
        unpack(zip_path, tmp_path / "deep" / "out")
    assert repr(name) in str(caught.value)
    assert caught.value.series_uid == UID
    assert all_files(tmp_path) == before


def test_nul_in_name_refused(tmp_path: Path) -> None:
    """A NUL inside a member name (which zipfile would silently cut) is refused."""
    zip_path = custom_zip(tmp_path / "x.zip", [("evilX.dcm/../../x", b"data")])
    raw = zip_path.read_bytes().replace(b"evilX.dcm", b"evil\x00.dcm")
    zip_path.write_bytes(raw)
    with pytest.raises(ArchiveError, match="control character"):
        unpack(zip_path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_server_hostile_variant(small_archive: FakeArchive, tmp_path: Path) -> None:
    """The fake server's hostile_names ZIP is refused and nothing lands outside dest."""
    zip_path = series_zip(small_archive, tmp_path, ZipVariant(hostile=True))
    before = all_files(tmp_path)
    with pytest.raises(ArchiveError, match=r"\.\./evil\.dcm"):
        unpack(zip_path, tmp_path / "out")
    assert all_files(tmp_path) == before


def test_duplicate_names_refused(tmp_path: Path) -> None:
    """Two members with the same name are refused, naming it."""
    zip_path = custom_zip(
        tmp_path / "x.zip", [("00000001.dcm", b"a"), ("00000002.dcm", b"b"), ("00000001.dcm", b"c")]
    )
    with pytest.raises(ArchiveError, match=r"00000001\.dcm' appears twice"):
        unpack(zip_path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_corrupt_byte(small_archive: FakeArchive, tmp_path: Path) -> None:
    """One flipped byte in an image's compressed data is an ArchiveError; nothing is left."""
    series = small_archive.series[0]
    out = tmp_path / "x.zip"
    spans = build_zip(small_archive, series, ZipVariant(), out)
    span = spans[3]
    raw = bytearray(out.read_bytes())
    raw[(span.data_start + span.data_end) // 2] ^= 0xFF
    out.write_bytes(bytes(raw))
    with pytest.raises(ArchiveError, match=rf"{span.name}") as caught:
        unpack(out, tmp_path / "out")
    assert "CRC mismatch" in str(caught.value) or "inflate" in str(caught.value)
    assert not (tmp_path / "out").exists()


def test_crc_mismatch_stored(tmp_path: Path) -> None:
    """A changed byte in a STORED member fails its CRC, named in the message."""
    zip_path = custom_zip(tmp_path / "x.zip", [("00000003.dcm", b"A" * 1000)], zipfile.ZIP_STORED)
    zip_path.write_bytes(zip_path.read_bytes().replace(b"A" * 10, b"A" * 9 + b"B", 1))
    with pytest.raises(ArchiveError, match=r"CRC mismatch in 00000003\.dcm"):
        unpack(zip_path, tmp_path / "out")


def test_truncated(small_archive: FakeArchive, tmp_path: Path) -> None:
    """A body cut short (no central directory) is an ArchiveError saying so."""
    zip_path = series_zip(small_archive, tmp_path, ZipVariant())
    raw = zip_path.read_bytes()
    for cut in (len(raw) // 2, len(raw) - 30, 100):
        zip_path.write_bytes(raw[:cut])
        with pytest.raises(ArchiveError, match="truncated"):
            unpack(zip_path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_html_body(tmp_path: Path) -> None:
    """An HTML error page sent with status 200 is refused as "not a ZIP", quoting its start."""
    page = tmp_path / "body.zip"
    page.write_bytes(b"<html><body>Error: Unable to process the request</body></html>")
    with pytest.raises(ArchiveError, match=r"not a ZIP archive \(starts with '<html>"):
        unpack(page, tmp_path / "out")


def test_empty_body(tmp_path: Path) -> None:
    """An empty body is an ArchiveError, not a crash."""
    (tmp_path / "body.zip").write_bytes(b"")
    with pytest.raises(ArchiveError, match="empty"):
        unpack(tmp_path / "body.zip", tmp_path / "out")


def test_missing_spool_file(tmp_path: Path) -> None:
    """An unreadable spool file is reported as an ArchiveError (the series is refetched)."""
    with pytest.raises(ArchiveError, match="cannot read"):
        unpack(tmp_path / "nope.zip", tmp_path / "out")


def _zeros_zip(path: Path, size: int) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        info = zipfile.ZipInfo("00000001.dcm", (2020, 1, 1, 0, 0, 0))
        info.compress_type = zipfile.ZIP_DEFLATED
        with zf.open(info, "w") as w:
            block = bytes(1 << 20)
            for _ in range(size >> 20):
                w.write(block)
    return path


def test_zip_bomb_declared(tmp_path: Path) -> None:
    """A member declaring 50 MB of zeros against a 1 MB cap is refused before any inflating."""
    zip_path = _zeros_zip(tmp_path / "bomb.zip", 50 << 20)
    assert zip_path.stat().st_size < 200_000
    tracemalloc.start()
    try:
        with pytest.raises(ArchiveError, match="declares 52,428,800 bytes"):
            unpack(zip_path, tmp_path / "out", max_total=1 << 20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 10 << 20
    assert not (tmp_path / "out").exists()


def test_zip_bomb_lying_sizes(tmp_path: Path) -> None:
    """A central directory declaring 1,000 bytes for 50 MB of zeros: refused, flat memory,
    never more than the declared bytes on disk."""
    zip_path = _zeros_zip(tmp_path / "bomb.zip", 50 << 20)
    raw = bytearray(zip_path.read_bytes())
    cd = raw.rfind(b"PK\x01\x02")
    assert struct.unpack_from("<I", raw, cd + 24)[0] == 50 << 20
    struct.pack_into("<I", raw, cd + 24, 1000)
    zip_path.write_bytes(bytes(raw))
    tracemalloc.start()
    try:
        with pytest.raises(ArchiveError, match=r"00000001\.dcm"):
            unpack(zip_path, tmp_path / "out", max_total=1 << 20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 10 << 20
    assert not (tmp_path / "out").exists()


def test_zip_bomb_no_cap_streams_in_chunks(tmp_path: Path) -> None:
    """Without a cap, 50 MB inflate to disk with memory bounded by the chunk size."""
    zip_path = _zeros_zip(tmp_path / "bomb.zip", 50 << 20)
    tracemalloc.start()
    try:
        fetched = unpack_zip(
            zip_path, tmp_path / "out", series_uid=UID, max_total=None, inspect=no_header
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 10 << 20
    assert fetched.files[0].size == 50 << 20
    assert fetched.files[0].md5 == hashlib.md5(bytes(50 << 20)).hexdigest()


def test_max_total_counts_all_images(tmp_path: Path) -> None:
    """The cap applies to the images' total, not each member; LICENSE is not counted."""
    members = [("LICENSE", b"x" * 5000)] + [(f"{n:08d}.dcm", b"d" * 400) for n in range(1, 4)]
    zip_path = custom_zip(tmp_path / "x.zip", members)
    assert len(unpack(zip_path, tmp_path / "ok", max_total=1200).files) == 3
    with pytest.raises(ArchiveError, match="1,200 bytes of images, more than the 1,199"):
        unpack(zip_path, tmp_path / "out", max_total=1199)


def test_stored_members(tmp_path: Path) -> None:
    """STORED members are extracted byte for byte."""
    members = [(f"{n:08d}.dcm", random.Random(n).randbytes(3000 + n)) for n in range(1, 6)]
    zip_path = custom_zip(tmp_path / "x.zip", members, zipfile.ZIP_STORED)
    fetched = unpack_zip(zip_path, tmp_path / "out", series_uid=UID, max_total=None, inspect=header)
    assert [f.path.read_bytes() for f in fetched.files] == [data for _, data in members]
    assert all(f.header is None for f in fetched.files)


def test_zip64(small_archive: FakeArchive, tmp_path: Path) -> None:
    """A ZIP64 archive (ZIP64 local headers on every member) unpacks to the original files."""
    series = small_archive.series[0]
    named = image_names(series.instances, False)
    members = [(n, small_archive.file_path(i).read_bytes()) for n, i in named]
    zip_path = custom_zip(tmp_path / "x.zip", members, force_zip64=True)
    raw = zip_path.read_bytes()
    assert struct.unpack_from("<II", raw, 18) == (0xFFFFFFFF, 0xFFFFFFFF)  # sizes in ZIP64 extra
    assert_matches_archive(unpack(zip_path, tmp_path / "out"), small_archive, series)


def _zip64_end_zip(path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A small ZIP that zipfile itself ends with a ZIP64 end record and locator."""
    monkeypatch.setattr(zipfile, "ZIP_FILECOUNT_LIMIT", 1)  # as if it held > 65,535 entries
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for n in range(3):
            zf.writestr(f"{n:08d}.dcm", b"x" * n)
    monkeypatch.undo()
    assert b"PK\x06\x06" in path.read_bytes()
    return path


def test_zip64_end_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A ZIP ending with a ZIP64 end of central directory (the >65,535-entry form) unpacks."""
    path = _zip64_end_zip(tmp_path / "x.zip", monkeypatch)
    fetched = unpack_zip(path, tmp_path / "out", series_uid=UID, max_total=None, inspect=no_header)
    assert [f.size for f in fetched.files] == [0, 1, 2]


def test_too_many_members_refused_from_end_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An end record claiming 1,000,001 entries (more than MAX_MEMBERS) is refused."""
    path = _zip64_end_zip(tmp_path / "x.zip", monkeypatch)
    raw = bytearray(path.read_bytes())
    at = raw.rfind(b"PK\x06\x06")
    struct.pack_into("<QQ", raw, at + 24, MAX_MEMBERS + 1, MAX_MEMBERS + 1)
    path.write_bytes(bytes(raw))
    with pytest.raises(ArchiveError, match="1,000,001 members"):
        unpack(path, tmp_path / "out")


def test_member_count_capped_while_streaming(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More members than MAX_MEMBERS are refused as they arrive, before the directory."""
    monkeypatch.setattr("bulkdl.unpack.MAX_MEMBERS", 3)
    zip_path = custom_zip(tmp_path / "x.zip", [(f"{n:08d}.dcm", b"x") for n in range(5)])
    with pytest.raises(ArchiveError, match="more than the 3 members allowed"):
        unpack(zip_path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_stream_unpacker_any_chunking(small_archive: FakeArchive, tmp_path: Path) -> None:
    """StreamUnpacker fed a getImage body in 1-byte, 1000-byte or whole pieces unpacks it all."""
    series = small_archive.series[2]
    body = series_zip(small_archive, tmp_path, ZipVariant(include_md5=True), 2).read_bytes()
    for size in (1, 1000, len(body)):
        dest = tmp_path / f"out{size}"
        unpacker = StreamUnpacker(dest, series_uid=UID, max_total=None, inspect=header)
        for at in range(0, len(body), size):
            unpacker.feed(body[at : at + size])
        fetched = unpacker.finish()
        assert_matches_archive(fetched, small_archive, series)
        assert fetched.declared_md5 == {f.name: f.md5 for f in fetched.files}


def test_stream_unpacker_abort_removes_partial_files(
    small_archive: FakeArchive, tmp_path: Path
) -> None:
    """abort() mid-body (a broken transfer) removes the files written so far and dest."""
    body = series_zip(small_archive, tmp_path, ZipVariant()).read_bytes()
    dest = tmp_path / "a" / "out"
    unpacker = StreamUnpacker(dest, series_uid=UID, max_total=None, inspect=header)
    unpacker.feed(body[: len(body) * 2 // 3])
    assert list(dest.iterdir())
    unpacker.abort()
    unpacker.abort()
    assert not (tmp_path / "a").exists()


def test_stream_unpacker_truncated_body(small_archive: FakeArchive, tmp_path: Path) -> None:
    """finish() on a body cut short raises ArchiveError and leaves nothing behind."""
    body = series_zip(small_archive, tmp_path, ZipVariant()).read_bytes()
    unpacker = StreamUnpacker(tmp_path / "out", series_uid=UID, max_total=None, inspect=header)
    unpacker.feed(body[:-10])
    with pytest.raises(ArchiveError, match="ZIP truncated"):
        unpacker.finish()
    assert not (tmp_path / "out").exists()


def test_thousands_of_tiny_members(tmp_path: Path) -> None:
    """3,000 tiny members unpack in ZIP order with the right bytes and MD5s."""
    members = [(f"{n:08d}.dcm", f"member {n}".encode()) for n in range(1, 3001)]
    zip_path = custom_zip(tmp_path / "x.zip", members)
    fetched = unpack_zip(
        zip_path, tmp_path / "out", series_uid=UID, max_total=10**6, inspect=no_header
    )
    assert len(fetched.files) == 3000
    for f, (name, data) in zip(fetched.files, members, strict=True):
        assert f.name == name
        assert f.path.read_bytes() == data
        assert f.md5 == hashlib.md5(data).hexdigest()
    assert fetched.files[-1].path.name == "003000.dcm"


def test_directories_ignored(tmp_path: Path) -> None:
    """Directory entries are skipped; files inside folders are extracted flat by index."""
    members = [("images/", b""), ("images/00000001.dcm", b"one"), ("00000002.dcm", b"two")]
    zip_path = custom_zip(tmp_path / "x.zip", members)
    fetched = unpack_zip(zip_path, tmp_path / "out", series_uid=UID, max_total=None, inspect=header)
    assert [(f.name, f.path.name) for f in fetched.files] == [
        ("images/00000001.dcm", "000001.dcm"),
        ("00000002.dcm", "000002.dcm"),
    ]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["000001.dcm", "000002.dcm"]


def test_unsupported_compression(tmp_path: Path) -> None:
    """A member compressed with anything but STORED or DEFLATED is refused, naming the method."""
    zip_path = custom_zip(tmp_path / "x.zip", [("00000001.dcm", b"x" * 100)], zipfile.ZIP_BZIP2)
    with pytest.raises(ArchiveError, match="compression method 12"):
        unpack(zip_path, tmp_path / "out")


def test_encrypted_member(tmp_path: Path) -> None:
    """A member flagged as encrypted is refused."""
    raw = bytearray(custom_zip(tmp_path / "x.zip", [("00000001.dcm", b"x")]).read_bytes())
    for sig, flag_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        at = raw.find(sig)
        raw[at + flag_at] |= 0x01
    (tmp_path / "x.zip").write_bytes(bytes(raw))
    with pytest.raises(ArchiveError, match="encrypted"):
        unpack(tmp_path / "x.zip", tmp_path / "out")


def test_license_capped(tmp_path: Path) -> None:
    """A huge LICENSE is cut to 1 MiB of text; invalid UTF-8 is replaced, not fatal."""
    zip_path = custom_zip(tmp_path / "x.zip", [("LICENSE", b"\xff" + b"L" * (3 << 20))])
    fetched = unpack(zip_path, tmp_path / "out")
    assert fetched.license_text is not None
    assert len(fetched.license_text) == 1 << 20
    assert fetched.license_text.startswith("\ufffdLLL")


def test_malformed_md5_csv_in_zip(tmp_path: Path) -> None:
    """A malformed md5hashes.csv makes the archive unusable."""
    zip_path = custom_zip(
        tmp_path / "x.zip", [("00000001.dcm", b"x"), ("md5hashes.csv", b"Filename,MD5Hash\nzz\n")]
    )
    with pytest.raises(ArchiveError, match=r"md5hashes\.csv line 2"):
        unpack(zip_path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (b"", {}),
        (b"Filename,MD5Hash\n", {}),
        (b"Filename,MD5Hash\na.dcm," + b"A" * 32 + b"\n", {"a.dcm": "a" * 32}),
        (b"\xef\xbb\xbfFilename,MD5Hash\r\na.dcm," + b"b" * 32 + b"\r\n", {"a.dcm": "b" * 32}),
        (b'"Filename","MD5Hash"\n"a,b.dcm","' + b"c" * 32 + b'"\n', {"a,b.dcm": "c" * 32}),
        (b"\nFILENAME, MD5HASH\n\n a.dcm , " + b"d" * 32 + b" \n\n", {"a.dcm": "d" * 32}),
        (b"a.dcm," + b"e" * 32, {"a.dcm": "e" * 32}),
        (b"a.dcm," + b"e" * 32 + b"\na.dcm," + b"E" * 32, {"a.dcm": "e" * 32}),
    ],
)
def test_parse_md5_csv_tolerant(text: bytes, expected: dict[str, str]) -> None:
    """md5hashes.csv with BOM, CRLF, quotes, spaces, blank lines or no header parses."""
    assert parse_md5_csv(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        b"Filename,MD5Hash\na.dcm\n",
        b"Filename,MD5Hash\na.dcm,123\n",
        b"Filename,MD5Hash\na.dcm," + b"g" * 32 + b"\n",
        b"Filename,MD5Hash\n," + b"a" * 32 + b"\n",
        b"Filename,MD5Hash\na.dcm," + b"a" * 32 + b",extra\n",
        b"Filename,MD5Hash\na.dcm," + b"a" * 32 + b"\na.dcm," + b"b" * 32 + b"\n",
        b"\xff\xfeF\x00",
        b"<html>error</html>",
    ],
)
def test_parse_md5_csv_malformed(text: bytes) -> None:
    """A malformed md5hashes.csv is an ArchiveError carrying the series UID."""
    with pytest.raises(ArchiveError) as caught:
        parse_md5_csv(text, series_uid=UID)
    assert caught.value.series_uid == UID


def test_disk_full_is_not_disguised(small_archive: FakeArchive, tmp_path: Path) -> None:
    """A write failure under dest (ENOSPC) propagates as the OSError, not an ArchiveError."""
    zip_path = series_zip(small_archive, tmp_path, ZipVariant())
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "000002.dcm").symlink_to("/dev/full")
    with pytest.raises(OSError) as caught:
        unpack(zip_path, dest)
    assert not isinstance(caught.value, ArchiveError)
    assert caught.value.errno == errno.ENOSPC
    assert list(dest.iterdir()) == []  # what was written is removed; dest was ours to keep


def test_unwritable_dest_is_not_disguised(small_archive: FakeArchive, tmp_path: Path) -> None:
    """A dest that cannot be created raises the OSError itself."""
    zip_path = series_zip(small_archive, tmp_path, ZipVariant())
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(OSError) as caught:
        unpack(zip_path, tmp_path / "file" / "out")
    assert not isinstance(caught.value, ArchiveError)


def test_damage_anywhere_is_archive_error_or_success(
    small_archive: FakeArchive, tmp_path: Path
) -> None:
    """Any truncation or flipped byte either unpacks correctly or raises ArchiveError."""
    zip_path = series_zip(small_archive, tmp_path, ZipVariant(include_md5=True))
    raw = zip_path.read_bytes()
    rng = random.Random(5)
    damaged = [raw[:cut] for cut in range(0, len(raw), max(1, len(raw) // 40))]
    for _ in range(150):
        b = bytearray(raw)
        b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        damaged.append(bytes(b))
    for n, body in enumerate(damaged):
        path = tmp_path / "d.zip"
        path.write_bytes(body)
        try:
            fetched = unpack(path, tmp_path / f"out{n}", max_total=1 << 20)
        except ArchiveError:
            assert not (tmp_path / f"out{n}").exists()
            continue
        assert all(f.path.is_file() for f in fetched.files)


@pytest.mark.anyio
async def test_from_fake_server(nbia_server: FakeNbiaServer, tmp_path: Path) -> None:
    """Bodies spooled from the fake NBIA server: clean unpacks, corrupt and HTML are refused."""
    series = nbia_server.archive.series[0]
    nbia_server.faults.script(series.uid, None, Fault.corrupt(), Fault.not_zip())
    outcomes: list[str] = []
    async with aiohttp.ClientSession() as session:
        for attempt in range(3):
            spool = tmp_path / f"spool{attempt}.zip"
            params = {"SeriesInstanceUID": series.uid, "IncludeMD5": "Yes"}
            async with session.get(nbia_server.v4_url + "getImage", params=params) as resp:
                with spool.open("wb") as f:
                    async for chunk in resp.content.iter_chunked(1 << 16):
                        f.write(chunk)
            try:
                fetched = unpack(spool, tmp_path / f"out{attempt}")
            except ArchiveError as exc:
                outcomes.append(str(exc))
            else:
                assert_matches_archive(fetched, nbia_server.archive, series)
                outcomes.append("ok")
    assert outcomes[0] == "ok"
    assert "CRC mismatch" in outcomes[1] or "inflate" in outcomes[1]
    assert "not a ZIP archive" in outcomes[2]
