"""read_header and sop_class_name: values as strings, non-DICOM and truncated files as None."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from bulkdl.dicom import HEADER_KEYWORDS_ALWAYS, read_header, sop_class_name
from bulkdl.testing import FakeArchive

CT = "1.2.840.10008.5.1.4.1.1.2"
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"


def write(path: Path, pixels: bool = True, sop_class: str = CT, **values: object) -> Path:
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = "1.2.3.1"
    ds.StudyInstanceUID = "1.2.3"
    ds.SeriesInstanceUID = "1.2.3.4"
    for key, value in values.items():
        setattr(ds, key, value)
    if pixels:
        ds.Rows, ds.Columns, ds.BitsAllocated = 2, 2, 16
        ds.PixelData = b"\0" * 8
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    ds.save_as(path, enforce_file_format=True)
    return path


def test_values_from_real_ct(small_archive: FakeArchive) -> None:
    """A generated CT file gives its UIDs and the asked keywords as DICOM's string forms."""
    series = small_archive.series[0]
    inst = series.instances[0]
    path = small_archive.file_path(inst)
    header = read_header(
        path, ["PatientName", "ImageType", "SliceThickness", "InstanceNumber", "Rows"]
    )
    assert header is not None
    assert header["SOPInstanceUID"] == inst.sop_uid
    assert header["SeriesInstanceUID"] == series.uid
    assert header["StudyInstanceUID"] == series.study_uid
    assert header["SOPClassUID"] == CT
    assert header["ImageType"] == "ORIGINAL\\PRIMARY\\AXIAL"
    assert header["SliceThickness"] == "2.500000"
    assert header["InstanceNumber"] == str(inst.instance_number)
    assert header["Rows"] == "64"
    assert header["PatientName"] == str(pydicom.dcmread(path).PatientName)


def test_always_keywords_read_without_asking(tmp_path: Path) -> None:
    """HEADER_KEYWORDS_ALWAYS are read even when not asked for; nothing else is."""
    header = read_header(write(tmp_path / "a.dcm", PatientID="P1"), [])
    assert header == {
        "SOPInstanceUID": "1.2.3.1",
        "StudyInstanceUID": "1.2.3",
        "SeriesInstanceUID": "1.2.3.4",
        "SOPClassUID": CT,
    }
    assert set(HEADER_KEYWORDS_ALWAYS) == set(header)


def test_value_forms(tmp_path: Path) -> None:
    """Person names, multi-values, numbers and UTF-8 text come back as strings."""
    path = write(
        tmp_path / "a.dcm",
        SpecificCharacterSet="ISO_IR 192",
        PatientName="Müller^Jürgen",
        PixelSpacing=["0.5", "0.75"],
        SeriesNumber="500",
        SeriesDescription="Recon 2: LUNG 山田",
        WindowCenter=["40", "400"],
    )
    header = read_header(
        path,
        ["PatientName", "PixelSpacing", "SeriesNumber", "SeriesDescription", "WindowCenter"],
    )
    assert header is not None
    assert header["PatientName"] == "Müller^Jürgen"
    assert header["PixelSpacing"] == "0.5\\0.75"
    assert header["SeriesNumber"] == "500"
    assert header["SeriesDescription"] == "Recon 2: LUNG 山田"
    assert header["WindowCenter"] == "40\\400"


def test_empty_absent_and_unknown_keywords_left_out(tmp_path: Path) -> None:
    """Empty values, keywords missing from the file and non-DICOM keywords are omitted."""
    path = write(tmp_path / "a.dcm", SeriesDescription="", StudyID=None)
    header = read_header(path, ["SeriesDescription", "StudyID", "BodyPartExamined", "Collection"])
    assert header is not None
    assert not {"SeriesDescription", "StudyID", "BodyPartExamined", "Collection"} & set(header)


def test_file_without_pixel_data(tmp_path: Path) -> None:
    """A complete non-image DICOM file (an SR) is read, not taken as truncated."""
    path = write(tmp_path / "a.dcm", pixels=False, sop_class=BASIC_TEXT_SR, Modality="SR")
    header = read_header(path, ["Modality"])
    assert header is not None and header["Modality"] == "SR"


def test_image_ending_before_pixel_data_is_none(tmp_path: Path) -> None:
    """An image (CT Image Storage) that ends cleanly before its pixel data was cut short."""
    assert read_header(write(tmp_path / "a.dcm", pixels=False, Modality="CT"), []) is None


@pytest.mark.parametrize(
    "data",
    [b"", b"hello", b"<html>error</html>" * 20, b"PK\x03\x04" + b"\0" * 300, b"\0" * 132],
)
def test_not_dicom_is_none(tmp_path: Path, data: bytes) -> None:
    """Empty files, text, HTML, a ZIP or a preamble without DICM are None, not an error."""
    path = tmp_path / "x.dcm"
    path.write_bytes(data)
    assert read_header(path, ["PatientID"]) is None


def test_dataset_without_preamble_is_none(tmp_path: Path) -> None:
    """A bare dataset without the 128-byte preamble and DICM is not accepted as a DICOM file."""
    ds = Dataset()
    ds.SOPInstanceUID = "1.2.3"
    path = tmp_path / "raw.dcm"
    ds.save_as(path, implicit_vr=True, little_endian=True)
    assert read_header(path, []) is None


def test_truncated_header_is_none(small_archive: FakeArchive, tmp_path: Path) -> None:
    """A file cut anywhere inside its header is None, never an exception nor a half value."""
    full = small_archive.file_path(small_archive.series[0].instances[0]).read_bytes()
    pixel_tag = full.rfind(b"\xe0\x7f\x10\x00")
    assert pixel_tag > 0
    path = tmp_path / "cut.dcm"
    for cut in range(0, pixel_tag, 7):
        path.write_bytes(full[:cut])
        assert read_header(path, ["PatientName", "SeriesDescription"]) is None, cut


def test_truncated_pixel_data_still_reads_header(
    small_archive: FakeArchive, tmp_path: Path
) -> None:
    """A cut inside the pixel data leaves the header whole (MD5 and size checks catch it)."""
    full = small_archive.file_path(small_archive.series[0].instances[0]).read_bytes()
    path = tmp_path / "cut.dcm"
    path.write_bytes(full[: len(full) - 100])
    header = read_header(path, [])
    assert header is not None and "SOPInstanceUID" in header


def test_missing_file_raises(tmp_path: Path) -> None:
    """A file that cannot be opened is an OSError: that is not a "not DICOM" answer."""
    with pytest.raises(FileNotFoundError):
        read_header(tmp_path / "absent.dcm", [])


def test_generated_uid_roundtrip(tmp_path: Path) -> None:
    """A 64-character UID is returned whole."""
    uid = generate_uid(prefix=None)
    path = write(tmp_path / "a.dcm")
    ds = pydicom.dcmread(path)
    ds.SOPInstanceUID = uid
    ds.save_as(path)
    assert (read_header(path, []) or {})["SOPInstanceUID"] == uid


def test_sop_class_name() -> None:
    """Known SOP Class UIDs give the registry name; unknown ones give an empty string."""
    assert sop_class_name(CT) == "CT Image Storage"
    assert sop_class_name(" 1.2.840.10008.5.1.4.1.1.4 ") == "MR Image Storage"
    assert sop_class_name("1.2.3.4") == ""
    assert sop_class_name("") == ""
    assert sop_class_name("1.2.840.10008.5.1.4.1.1.9.1.1") == "12-lead ECG Waveform Storage"


def test_kept_dictionary_answers_are_pydicoms() -> None:
    """Every keyword, tag, VR and SOP Class name kept in bulkdl.dicomdict is pydicom's own, and
    every keyword the presets, records and organize ask for is kept (so they never import it)."""
    from pydicom.datadict import dictionary_VR, tag_for_keyword

    from bulkdl.dicomdict import KEYWORDS, SOP_CLASS_NAMES, VR_OF
    from bulkdl.layout import PRESETS, Layout
    from bulkdl.organize import RECORD_KEYWORDS
    from bulkdl.records import VOCABULARY

    for keyword, entry in KEYWORDS.items():
        tag = tag_for_keyword(keyword)
        assert entry == (None if tag is None else (tag, dictionary_VR(tag))), keyword
    assert all(VR_OF[tag] == dictionary_VR(tag) for tag in VR_OF)
    for uid, name in SOP_CLASS_NAMES.items():
        assert UID(uid).name == name
    asked = {t.keyword for t in VOCABULARY} | set(RECORD_KEYWORDS) | set(HEADER_KEYWORDS_ALWAYS)
    for template in PRESETS.values():
        asked |= Layout.parse(template).keywords
    assert asked <= set(KEYWORDS)


def test_common_reads_do_not_import_pydicom(small_archive: FakeArchive) -> None:
    """A CT header read for the presets' keywords, and a CT SOP Class name, leave pydicom
    unimported (~0.15 s of every run's start-up); an unknown keyword loads it."""
    path = small_archive.file_path(small_archive.series[0].instances[0])
    script = (
        "import sys; from pathlib import Path; from bulkdl import dicom\n"
        f"header = dicom.read_header(Path({str(path)!r}), ['PatientID', 'Modality'])\n"
        f"assert header['Modality'] == 'CT' and dicom.sop_class_name({CT!r})\n"
        "print('pydicom' in sys.modules)\n"
        "dicom.read_header(Path(sys.argv[1]), ['KVP'])\n"
        "print('pydicom' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(path)], capture_output=True, text=True, check=True
    )
    assert done.stdout.split() == ["False", "True"]
