"""read_header's hand-written fast path answers exactly as the pydicom path, or falls back to it.

Differential tests: every file is read by :func:`bulkdl.dicom.read_header` (fast path first) and
by :func:`bulkdl.dicom._read_header` (pydicom alone, the reference); the answers (values, None,
or the exception raised) must be equal. A fixture counts the falls back to pydicom, so the tests
also prove which files take the fast path: ordinary NBIA-shaped ones must.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Collection, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom import config
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.sequence import Sequence
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
)

from bulkdl import dicom, headerwalk
from bulkdl.dicom import _read_header, read_header
from bulkdl.testing import FakeArchive

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom on hostile values

CT = "1.2.840.10008.5.1.4.1.1.2"
#: Verification's UIDs come always; these cover every VR kind the fast path decodes.
KEYWORDS = (
    "PatientID",
    "PatientName",
    "OtherPatientNames",
    "PatientSex",
    "PatientAge",
    "PatientWeight",
    "StudyDate",
    "StudyTime",
    "AcquisitionDateTime",
    "StudyID",
    "StudyDescription",
    "SeriesDescription",
    "ProtocolName",
    "Modality",
    "Manufacturer",
    "StationAETitle",
    "BodyPartExamined",
    "SeriesNumber",
    "AcquisitionNumber",
    "InstanceNumber",
    "ReferencedFrameNumber",
    "ImageType",
    "SliceThickness",
    "PixelSpacing",
    "ImagePositionPatient",
    "WindowCenter",
    "Rows",
    "Columns",
    "SmallestImagePixelValue",
    "RecommendedDisplayFrameRateInFloat",
    "CTDIvol",
    "ImageComments",
    "SpecificCharacterSet",
    "FrameOfReferenceUID",
)
LAYOUT = ("PatientID", "StudyDate", "Modality", "SeriesNumber", "SeriesDescription")
Outcome = tuple[str, object]


def outcome(read: Callable[[], object]) -> Outcome:
    """What a read gives: its value, or the type of what it raised."""
    try:
        return "value", read()
    except Exception as exc:
        return "raised", type(exc)


@pytest.fixture
def fallbacks(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Path]]:
    """The files read_header handed to pydicom during the test."""
    seen: list[Path] = []

    def counting(path: Path, keywords: Collection[str], *, specific: bool) -> dict[str, str] | None:
        seen.append(path)
        return _read_header(path, keywords, specific=specific)

    monkeypatch.setattr(dicom, "_read_header", counting)
    yield seen


def same(path: Path, keywords: tuple[str, ...] = KEYWORDS) -> Outcome:
    """Assert both paths give ``path`` the same answer; return it."""
    expected = outcome(lambda: _read_header(path, keywords, specific=True))
    assert outcome(lambda: read_header(path, keywords)) == expected, path
    return expected


# --- files made by pydicom -----------------------------------------------------------------


def dataset(**values: object) -> Dataset:
    """A small CT dataset with the four UIDs, pixel data and ``values``."""
    ds = Dataset()
    ds.SOPClassUID = CT
    ds.SOPInstanceUID = "1.2.3.1"
    ds.StudyInstanceUID = "1.2.3"
    ds.SeriesInstanceUID = "1.2.3.4"
    ds.PatientID = "P-001"
    ds.Modality = "CT"
    ds.SeriesNumber = "3"
    ds.InstanceNumber = "12"
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.PixelRepresentation = 2, 2, 16, 1
    for key, value in values.items():
        setattr(ds, key, value)
    ds.PixelData = b"\0" * 8
    return ds


def save(ds: Dataset, path: Path, syntax: str = ExplicitVRLittleEndian) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(CT)
    meta.MediaStorageSOPInstanceUID = UID("1.2.3.1")
    meta.TransferSyntaxUID = UID(syntax)
    ds.file_meta = meta
    ds.save_as(path, enforce_file_format=True)
    return path


def sequence(*, undefined: bool, nested: bool) -> Sequence:
    """A two-item sequence, with a nested sequence in its first item when ``nested``."""
    items = []
    for n in range(2):
        item = Dataset()
        item.ReferencedSOPClassUID = CT
        item.ReferencedSOPInstanceUID = f"1.2.9.{n}"
        if nested and n == 0:
            inner = Dataset()
            inner.CodeValue, inner.CodingSchemeDesignator = "T-D3000", "SRT"
            item.PurposeOfReferenceCodeSequence = Sequence([inner])
            item.PurposeOfReferenceCodeSequence.is_undefined_length = undefined
            inner.is_undefined_length_sequence_item = undefined
        item.is_undefined_length_sequence_item = undefined
        items.append(item)
    seq = Sequence(items)
    seq.is_undefined_length = undefined
    return seq


def encapsulated() -> Dataset:
    """A dataset whose Pixel Data is encapsulated (undefined length, fragments)."""
    ds = dataset()
    ds.PixelData = encapsulate([b"\0" * 8])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    return ds


def with_sequences(undefined: bool) -> Dataset:
    """Sequences before the wanted tags, among them and just before the Pixel Data."""
    ds = dataset(StudyDescription="Chest", SeriesDescription="Axial 2.5")
    ds.ReferencedImageSequence = sequence(undefined=undefined, nested=True)  # (0008,1140)
    ds.ProcedureCodeSequence = sequence(undefined=undefined, nested=False)  # (0008,1032)
    ds.add_new(0x00540016, "SQ", sequence(undefined=undefined, nested=True))  # after (0028,...)
    return ds


def with_private(undefined: bool) -> Dataset:
    """A private block: an LO, an UN, an OB and a private sequence amid the wanted tags."""
    ds = dataset(PatientName="Doe^John")
    block = ds.private_block(0x0019, "ACME 1.1", create=True)
    block.add_new(0x01, "LO", "private text")
    block.add_new(0x02, "UN", b"\x01\x02\x03\x04")
    block.add_new(0x03, "OB", b"\xff" * 10)
    block.add_new(0x04, "SQ", sequence(undefined=undefined, nested=True))
    return ds


# name -> (dataset, transfer syntax, takes the fast path)
CASES: dict[str, tuple[Callable[[], Dataset], str, bool]] = {
    "explicit": (dataset, ExplicitVRLittleEndian, True),
    "implicit": (dataset, ImplicitVRLittleEndian, True),
    "encapsulated syntax": (encapsulated, JPEG2000Lossless, True),
    "big endian": (dataset, ExplicitVRBigEndian, False),
    "deflated": (dataset, DeflatedExplicitVRLittleEndian, False),
    "defined sequences": (lambda: with_sequences(False), ExplicitVRLittleEndian, True),
    "undefined sequences": (lambda: with_sequences(True), ExplicitVRLittleEndian, True),
    "implicit defined sequences": (lambda: with_sequences(False), ImplicitVRLittleEndian, True),
    "implicit undefined sequences": (lambda: with_sequences(True), ImplicitVRLittleEndian, True),
    "private": (lambda: with_private(False), ExplicitVRLittleEndian, True),
    "private undefined sequence": (lambda: with_private(True), ExplicitVRLittleEndian, True),
    "implicit private": (lambda: with_private(True), ImplicitVRLittleEndian, True),
    "multi-valued numbers": (
        lambda: dataset(
            PixelSpacing=["0.5", "0.75"],
            ImagePositionPatient=["-250.000000", "-250.000000", "-12.5"],
            WindowCenter=["40", "400"],
            ReferencedFrameNumber=["1", "2", "3"],
            PatientWeight="72.5",
            SliceThickness="2.500000",
        ),
        ExplicitVRLittleEndian,
        True,
    ),
    "numbers as written": (
        lambda: dataset(
            SeriesNumber=" 0007",
            AcquisitionNumber="+3",
            PixelSpacing=[" .5", "1E+01"],
            PatientWeight="-0.0",
        ),
        ExplicitVRLittleEndian,
        True,
    ),
    "binary numbers": (
        lambda: dataset(
            Rows=512,
            Columns=65535,
            SmallestImagePixelValue=-2000,  # US or SS: written as SS
            RecommendedDisplayFrameRateInFloat=0.1,
            CTDIvol=12.345678901234,
        ),
        ExplicitVRLittleEndian,
        True,
    ),
    "ambiguous VR, implicit": (
        lambda: dataset(SmallestImagePixelValue=0),
        ImplicitVRLittleEndian,
        False,
    ),
    "person names": (
        lambda: dataset(
            PatientName="Doe^John^^Dr.^==",
            OtherPatientNames=["Roe^Jane", "", "Poe^Edgar=P^E"],
        ),
        ExplicitVRLittleEndian,
        True,
    ),
    "texts": (
        lambda: dataset(
            StudyDescription="  lead and trail  ",
            SeriesDescription="a\\b\\",
            ImageComments="back\\slash stays, trailing spaces go   ",
            StationAETitle="  STATION1 ",
            AcquisitionDateTime="20240101101500.123456 ",
            ImageType=["ORIGINAL", "", "AXIAL"],
            PatientAge="045Y",
        ),
        ExplicitVRLittleEndian,
        True,
    ),
    "ISO_IR 100": (
        lambda: dataset(
            SpecificCharacterSet="ISO_IR 100",
            PatientName="Müller^Jürgen",
            SeriesDescription="Größe",
        ),
        ExplicitVRLittleEndian,
        True,
    ),
    "ISO_IR 192": (
        lambda: dataset(
            SpecificCharacterSet="ISO_IR 192",
            PatientName="Yamada^Tarou=山田^太郎=やまだ^たろう",
            SeriesDescription="Recon 2: LUNG 山田 \U0001fac1",
        ),
        ExplicitVRLittleEndian,
        True,
    ),
    "ISO_IR 192 implicit": (
        lambda: dataset(SpecificCharacterSet="ISO_IR 192", PatientName="Zoë^Ñúñez"),
        ImplicitVRLittleEndian,
        True,
    ),
    "ISO 2022": (
        lambda: dataset(
            SpecificCharacterSet=["", "ISO 2022 IR 87"],
            PatientName="Yamada^Tarou=山田^太郎=やまだ^たろう",
        ),
        ExplicitVRLittleEndian,
        False,
    ),
    "empty values": (
        lambda: dataset(StudyDescription="", AcquisitionNumber=None, PatientName=""),
        ExplicitVRLittleEndian,
        True,
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_generated_file_agrees(name: str, tmp_path: Path, fallbacks: list[Path]) -> None:
    """A pydicom-written file gives the pydicom answer, on the fast path where it should."""
    make, syntax, fast = CASES[name]
    path = save(make(), tmp_path / "a.dcm", syntax)
    answer = same(path)
    assert answer[0] == "value" and answer[1] is not None
    assert fallbacks == ([] if fast else [path])


@pytest.mark.parametrize("name", sorted(CASES))
def test_generated_file_cut_anywhere_agrees(name: str, tmp_path: Path) -> None:
    """Cut at every byte of its header, a file gets the pydicom answer (None, mostly)."""
    make, syntax, _ = CASES[name]
    full = save(make(), tmp_path / "a.dcm", syntax).read_bytes()
    path = tmp_path / "cut.dcm"
    for cut in range(0, len(full) - 4):
        path.write_bytes(full[:cut])
        same(path, LAYOUT)


# --- the session archives -------------------------------------------------------------------


def test_small_archive_agrees_on_fast_path(
    small_archive: FakeArchive, fallbacks: list[Path]
) -> None:
    """Every NBIA-shaped file of the small archive is read on the fast path, as pydicom reads it."""
    count = 0
    for series in small_archive.series:
        for inst in series.instances:
            path = small_archive.file_path(inst)
            for keywords in ((), LAYOUT, KEYWORDS):
                answer = same(path, keywords)
                assert answer[0] == "value" and answer[1] is not None
            count += 1
    assert count > 20
    assert fallbacks == []


def test_awkward_archive_agrees(awkward_archive: FakeArchive, fallbacks: list[Path]) -> None:
    """Hostile values agree too; only files whose wanted values hold an ESC byte fall back."""
    paths = [awkward_archive.file_path(i) for s in awkward_archive.series for i in s.instances]
    escaped = {p for p in paths if b"\x1b" in p.read_bytes()[:4096]}
    for path in paths:
        same(path)
    assert fallbacks and set(fallbacks) <= escaped
    assert len(paths) - len(fallbacks) > 20


def test_truncated_archive_file_agrees(small_archive: FakeArchive, tmp_path: Path) -> None:
    """A real file cut at every byte up to its pixel data gets pydicom's answer."""
    full = small_archive.file_path(small_archive.series[0].instances[0]).read_bytes()
    pixel_tag = full.rfind(b"\xe0\x7f\x10\x00")
    path = tmp_path / "cut.dcm"
    for cut in [*range(0, pixel_tag + 16), len(full) - 1]:
        path.write_bytes(full[:cut])
        expected = same(path, LAYOUT)
        assert (expected[1] is None) == (cut < pixel_tag + 12), cut


# --- files built byte by byte ---------------------------------------------------------------

LONG_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}
UNDEFINED = 0xFFFFFFFF
SEQUENCE_END = struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)


def element(tag: int, vr: str, value: bytes, *, length: int | None = None) -> bytes:
    """One explicit VR little endian element."""
    n = len(value) if length is None else length
    if vr in LONG_VRS:
        return struct.pack("<HH2s2xL", tag >> 16, tag & 0xFFFF, vr.encode(), n) + value
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr.encode(), n) + value


def raw_file(path: Path, *elements: bytes, syntax: str = ExplicitVRLittleEndian) -> Path:
    """Preamble, DICM, a File Meta group written by pydicom, then ``elements`` as given."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(CT)
    meta.MediaStorageSOPInstanceUID = UID("1.2.3.1")
    meta.TransferSyntaxUID = UID(syntax)
    buf = DicomBytesIO()
    write_file_meta_info(buf, meta)
    path.write_bytes(b"\0" * 128 + b"DICM" + buf.getvalue() + b"".join(elements))
    return path


UIDS = (
    element(0x00080016, "UI", CT.encode() + b"\0"),
    element(0x00080018, "UI", b"1.2.3.1\0"),
)
STUDY_SERIES = (
    element(0x0020000D, "UI", b"1.2.3\0"),
    element(0x0020000E, "UI", b"1.2.3.4\0"),
)
PIXELS = element(0x7FE00010, "OW", b"\0" * 8)


def test_wanted_tag_after_huge_private_ob(
    tmp_path: Path, fallbacks: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A wanted value past a 3 MB private OB is read on the fast path without reading the OB."""
    big = element(0x00091010, "OB", b"\xab" * (3 << 20))
    path = raw_file(
        tmp_path / "a.dcm",
        *UIDS,
        element(0x00090010, "LO", b"ACME"),
        big,
        element(0x00100020, "LO", b"AFTER-OB"),
        *STUDY_SERIES,
        PIXELS,
    )
    read_sizes: list[int] = []
    real_read = os.read

    def counting_read(fd: int, size: int) -> bytes:
        data = real_read(fd, size)
        read_sizes.append(len(data))
        return data

    monkeypatch.setattr(os, "read", counting_read)  # the fast path reads through os.read
    header = read_header(path, KEYWORDS)
    monkeypatch.setattr(os, "read", real_read)
    assert 0 < sum(read_sizes) <= 64 << 10
    assert fallbacks == []
    assert (
        header
        == same(path)[1]
        == {
            "SOPInstanceUID": "1.2.3.1",
            "SeriesInstanceUID": "1.2.3.4",
            "StudyInstanceUID": "1.2.3",
            "SOPClassUID": CT,
            "PatientID": "AFTER-OB",
        }
    )
    cut = tmp_path / "cut.dcm"
    for at in (5000, 2 << 20, path.stat().st_size - 20):  # inside the OB, past it
        cut.write_bytes(path.read_bytes()[:at])
        assert same(cut)[1] is None


@pytest.mark.parametrize(
    "elements",
    [
        pytest.param((element(0x00100020, "LO", b"ODD"),), id="odd length"),
        pytest.param((element(0x00100020, "XX", b"P1"),), id="unknown VR"),
        pytest.param((element(0x00100020, "lo", b"P1"),), id="lower-case VR"),
        pytest.param(
            (element(0x00100020, "LO", b"P1"), element(0x00100010, "PN", b"Doe^John")),
            id="tags out of order",
        ),
        pytest.param(
            (element(0x00100020, "LO", b"P1"), element(0x00100020, "LO", b"P2")),
            id="duplicate tag",
        ),
        pytest.param(
            (
                element(0x00191001, "UN", b"", length=UNDEFINED),
                struct.pack("<HHL", 0xFFFE, 0xE0DD, 0),
            ),
            id="UN of undefined length",
        ),
        pytest.param(
            (
                element(0x00191001, "OB", b"", length=UNDEFINED),
                struct.pack("<HHL", 0xFFFE, 0xE0DD, 0),
            ),
            id="OB of undefined length",
        ),
        pytest.param((struct.pack("<HHL", 0xFFFE, 0xE000, 0),), id="item at top level"),
        pytest.param((element(0x00100020, "LO", b"P1", length=40000),), id="length past the end"),
        pytest.param(
            (element(0x00080005, "CS", b"ISO_IR 100\\ISO_IR 192"),), id="two character sets"
        ),
        pytest.param((element(0x00080005, "CS", b"ISO_IR 13 "),), id="Japanese charset"),
        pytest.param((element(0x00100020, "LO", b"caf\xe9"),), id="Latin-1 without charset"),
        pytest.param(
            (element(0x00080005, "CS", b"ISO_IR 192"), element(0x00100020, "LO", b"\xff\xfe")),
            id="bad UTF-8",
        ),
        pytest.param((element(0x00100020, "LO", b"P\x1b(B1"),), id="escape sequence"),
        pytest.param((element(0x00180050, "DS", b"nan "),), id="DS nan"),
        pytest.param((element(0x00200013, "IS", b"1.0 "),), id="IS written as a float"),
        pytest.param((element(0x00200013, "IS", b"abc "),), id="IS not a number"),
        pytest.param((element(0x00200013, "IS", b"12345678901234"),), id="IS too long"),
        pytest.param((element(0x00280010, "US", b"\x01\x02\x03\x04\x05\x06"),), id="US x3"),
        pytest.param((element(0x00280010, "US", b"\x01\x02\x03\x00"),), id="US x2"),
        pytest.param((element(0x00280010, "US", b"\x01\x02\x03"),), id="US odd"),
        pytest.param((element(0x00280010, "SS", b"\xff\xff"),), id="US written as SS"),
        pytest.param((element(0x00200011, "FD", b"\0" * 7 + b"\x40"),), id="IS as FD"),
        pytest.param((element(0x00080016, "UI", b"1.2.840.10008.5.1.4.1.1.2 "),), id="dup UID"),
        pytest.param((element(0x00100020, "LO", b"\0lead NUL\0"),), id="NULs"),
        pytest.param((element(0x00100020, "LO", b"tab\t "),), id="tab"),
        pytest.param((element(0x00100020, "SQ", b""),), id="wanted empty SQ"),
        pytest.param((element(0x00100020, "SQ", b"", length=UNDEFINED),), id="wanted SQ"),
        pytest.param((element(0x00100020, "OB", b"ab"),), id="wanted OB"),
        pytest.param((element(0x00100020, "UN", b"P-001 "),), id="wanted UN"),
        pytest.param((element(0x00100020, "AT", b"\x08\x00\x16\x00"),), id="wanted AT"),
    ],
)
def test_odd_element_agrees(
    elements: tuple[bytes, ...], tmp_path: Path, fallbacks: list[Path]
) -> None:
    """Off-standard elements after the UIDs get the pydicom answer (mostly by falling back)."""
    path = raw_file(tmp_path / "a.dcm", *UIDS, *elements, *STUDY_SERIES, PIXELS)
    same(path)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"DICM",
        b"\0" * 128 + b"DICM",
        b"\0" * 128 + b"DICX" + b"\0" * 300,
        b"<html><body>Service Unavailable</body></html>" * 10,
        b"PK\x03\x04" + b"\0" * 600,
        b"\x08\x00\x16\x00UI\x1a\x001.2.840.10008.5.1.4.1.1.2\0" * 3,
    ],
)
def test_not_dicom_agrees(data: bytes, tmp_path: Path) -> None:
    """Empty, HTML, ZIP, a preamble without DICM or a bare dataset: None on both paths."""
    path = tmp_path / "x.dcm"
    path.write_bytes(data)
    assert same(path) == ("value", None)


def test_dataset_without_preamble_agrees(tmp_path: Path) -> None:
    """A dataset saved without preamble and File Meta is None on both paths."""
    path = tmp_path / "raw.dcm"
    dataset().save_as(path, implicit_vr=False, little_endian=True)
    assert same(path) == ("value", None)


def test_non_image_without_pixel_data_falls_back(tmp_path: Path, fallbacks: list[Path]) -> None:
    """A file ending before any Pixel Data (an SR) is left to pydicom's end-of-file rules."""
    ds = dataset(Modality="SR")
    del ds.PixelData
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"
    path = save(ds, tmp_path / "sr.dcm")
    assert same(path)[1] is not None
    assert fallbacks == [path]


def test_non_default_pydicom_config_falls_back(
    small_archive: FakeArchive, monkeypatch: pytest.MonkeyPatch, fallbacks: list[Path]
) -> None:
    """With pydicom set to return dates as objects, pydicom answers, not the fast path."""
    monkeypatch.setattr(config, "datetime_conversion", True)
    path = small_archive.file_path(small_archive.series[0].instances[0])
    same(path)
    assert fallbacks == [path]


def test_missing_file_raises_like_pydicom(tmp_path: Path) -> None:
    """A missing file or a directory raises the same OSError on both paths."""
    assert same(tmp_path / "absent.dcm")[1] is FileNotFoundError
    assert same(tmp_path)[0] == "raised"


# --- random damage ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_files(small_archive: FakeArchive, tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    """An archive CT file, and a file with sequences and a private block, as bytes."""
    ds = with_private(False)
    ds.ReferencedImageSequence = sequence(undefined=True, nested=True)
    ds.SeriesDescription = "Axial 2.5"
    made = save(ds, tmp_path_factory.mktemp("mutate") / "a.dcm").read_bytes()
    archive = small_archive.file_path(small_archive.series[1].instances[2]).read_bytes()
    return [archive, made]


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    changes=st.lists(st.tuples(st.integers(0, 2047), st.integers(0, 255)), min_size=1, max_size=6),
    cut=st.one_of(st.none(), st.integers(0, 2047)),
    which=st.integers(0, 1),
)
def test_mutated_header_agrees(
    real_files: list[bytes],
    tmp_path: Path,
    changes: list[tuple[int, int]],
    cut: int | None,
    which: int,
) -> None:
    """Random damage in the first 2 KiB: the pydicom answer or a fallback, never an exception."""
    data = bytearray(real_files[which])
    for at, byte in changes:
        data[at % len(data)] = byte
    path = tmp_path / "m.dcm"
    path.write_bytes(bytes(data[:cut] if cut is not None else data))
    expected = outcome(lambda: _read_header(path, KEYWORDS, specific=True))
    plan = headerwalk.plan_for(dicom._known_keywords(frozenset(KEYWORDS)))
    fast = headerwalk.walk_header(path, plan)  # raising here fails the test
    assert fast is None or ("value", fast) == expected
    assert outcome(lambda: read_header(path, KEYWORDS)) == expected
