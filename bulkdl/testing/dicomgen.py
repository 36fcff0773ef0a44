"""Synthetic CT images: pixel data that compresses like real CT, written as DICOM files by pydicom.

The only module of ``bulkdl.testing`` that imports pydicom. A smooth "body" image is built once per
image geometry and variant; each instance is that base XOR-ed with random low bits (Python big-int
arithmetic, no numpy), which gives zlib level 6 a ratio close to real CT (about 50-70 % of raw).
:func:`write_ct_file` writes one Explicit VR Little Endian CT Image Storage file atomically. Values
are written without VR validation on purpose: the awkward archive carries values (300-byte IDs,
control characters) that real archives hold although the standard forbids them.
"""

from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass, fields
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydicom import config, dcmread
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
IMPLEMENTATION_CLASS_UID = "1.2.826.0.1.3680043.10.1412.1"
IMPLEMENTATION_VERSION = "BULKDL_FAKE_1"
#: Noise bits XOR-ed into each pixel inside the body and in the air around it (12-bit values).
BODY_NOISE_MASK = 0x00FF
AIR_NOISE_MASK = 0x001F


@lru_cache(maxsize=16)
def base_image(rows: int, columns: int, variant: int) -> tuple[bytes, int]:
    """A 16-bit little-endian CT-like slice (air, an ellipse of soft tissue, a bright spine) and its
    noise mask as one big integer; cached because it is the slow, pure-Python part."""
    cy, cx = rows / 2, columns / 2
    ry, rx = rows * (0.36 + 0.02 * (variant % 3)), columns * (0.44 - 0.02 * (variant % 2))
    out = bytearray()
    mask = bytearray()
    body, air = BODY_NOISE_MASK.to_bytes(2, "little"), AIR_NOISE_MASK.to_bytes(2, "little")
    for y in range(rows):
        dy = (y - cy) / ry
        row = bytearray()
        row_mask = bytearray()
        for x in range(columns):
            dx = (x - cx) / rx
            d = dx * dx + dy * dy
            if d > 1.0:
                value, m = 24, air  # air: -1000 HU with intercept -1024
            else:
                # soft tissue (~40 HU) with slow anatomical variation, bone near the spine
                value = 1064 + int(60 * math.sin(x / 23.0 + variant) * math.cos(y / 31.0))
                sy, sx = (y - cy - 0.55 * ry) / (0.12 * ry), (x - cx) / (0.08 * rx)
                if sy * sy + sx * sx < 1.0:
                    value = 1900 + int(200 * (1.0 - (sy * sy + sx * sx)))
                m = body
            row += value.to_bytes(2, "little")
            row_mask += m
        out += row
        mask += row_mask
    return bytes(out), int.from_bytes(mask, "little")


def noisy_pixels(rows: int, columns: int, variant: int, rng: random.Random) -> bytes:
    """One slice's pixel bytes: the cached base XOR-ed with ``rng``'s bits under the noise mask."""
    base, mask = base_image(rows, columns, variant)
    noise = int.from_bytes(rng.randbytes(len(base)), "little") & mask
    return (int.from_bytes(base, "little") ^ noise).to_bytes(len(base), "little")


@dataclass(frozen=True, slots=True)
class CtInstance:
    """What one synthetic CT file says: the identifying attributes and the free-text ones."""

    patient_id: str
    patient_name: str
    patient_sex: str
    patient_age: str
    study_uid: str
    study_date: str  # DICOM DA, YYYYMMDD
    study_id: str
    study_description: str
    series_uid: str
    series_number: int
    series_description: str
    protocol_name: str
    body_part: str
    manufacturer: str
    model_name: str
    software_versions: str
    sop_uid: str
    frame_of_reference_uid: str
    instance_number: int
    acquisition_number: int
    rows: int
    columns: int


_ELEMENTS: tuple[tuple[int, str, str], ...] = (
    (0x00080005, "CS", "charset"),
    (0x00080008, "CS", "image_type"),
    (0x00080016, "UI", "sop_class"),
    (0x00080018, "UI", "sop_uid"),
    (0x00080020, "DA", "study_date"),
    (0x00080021, "DA", "study_date"),
    (0x00080030, "TM", "study_time"),
    (0x00080060, "CS", "modality"),
    (0x00080070, "LO", "manufacturer"),
    (0x00081030, "LO", "study_description"),
    (0x0008103E, "LO", "series_description"),
    (0x00081090, "LO", "model_name"),
    (0x00100010, "PN", "patient_name"),
    (0x00100020, "LO", "patient_id"),
    (0x00100040, "CS", "patient_sex"),
    (0x00101010, "AS", "patient_age"),
    (0x00180015, "CS", "body_part"),
    (0x00180050, "DS", "slice_thickness"),
    (0x00181020, "LO", "software_versions"),
    (0x00181030, "LO", "protocol_name"),
    (0x0020000D, "UI", "study_uid"),
    (0x0020000E, "UI", "series_uid"),
    (0x00200010, "SH", "study_id"),
    (0x00200011, "IS", "series_number"),
    (0x00200012, "IS", "acquisition_number"),
    (0x00200013, "IS", "instance_number"),
    (0x00200032, "DS", "position"),
    (0x00200037, "DS", "orientation"),
    (0x00200052, "UI", "frame_of_reference_uid"),
    (0x00201041, "DS", "slice_location"),
    (0x00280002, "US", "samples"),
    (0x00280004, "CS", "photometric"),
    (0x00280010, "US", "rows"),
    (0x00280011, "US", "columns"),
    (0x00280030, "DS", "pixel_spacing"),
    (0x00280100, "US", "bits_allocated"),
    (0x00280101, "US", "bits_stored"),
    (0x00280102, "US", "high_bit"),
    (0x00280103, "US", "pixel_representation"),
    (0x00281050, "DS", "window_center"),
    (0x00281051, "DS", "window_width"),
    (0x00281052, "DS", "rescale_intercept"),
    (0x00281053, "DS", "rescale_slope"),
    (0x7FE00010, "OW", "pixels"),
)


def write_ct_file(path: Path, inst: CtInstance, pixels: bytes) -> int:
    """Write ``inst`` as a DICOM file at ``path`` (via a temporary name) and return its size.

    Raises OSError when the file cannot be written.
    """
    z = 2.5 * inst.instance_number
    values: dict[str, Any] = {
        "charset": "ISO_IR 192",
        "image_type": ["ORIGINAL", "PRIMARY", "AXIAL"],
        "sop_class": CT_IMAGE_STORAGE,
        "study_time": "101500",
        "modality": "CT",
        "slice_thickness": "2.500000",
        "position": ["-250.000000", "-250.000000", f"{-z:.6f}"],
        "orientation": ["1", "0", "0", "0", "1", "0"],
        "slice_location": f"{-z:.6f}",
        "samples": 1,
        "photometric": "MONOCHROME2",
        "pixel_spacing": ["0.976562", "0.976562"],
        "bits_allocated": 16,
        "bits_stored": 12,
        "high_bit": 11,
        "pixel_representation": 0,
        "window_center": "40",
        "window_width": "400",
        "rescale_intercept": "-1024",
        "rescale_slope": "1",
        "pixels": pixels,
    }
    for f in fields(inst):
        values.setdefault(f.name, getattr(inst, f.name))
    ds = Dataset()
    for tag, vr, key in _ELEMENTS:
        value = values[key]
        if isinstance(value, str) and value == "" and vr in ("UI",):
            continue
        ds.add(DataElement(tag, vr, value, validation_mode=config.IGNORE))
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(CT_IMAGE_STORAGE)
    meta.MediaStorageSOPInstanceUID = UID(inst.sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION
    ds.file_meta = meta
    tmp = path.with_name(path.name + ".part")
    ds.save_as(tmp, enforce_file_format=True)
    os.replace(tmp, path)
    return path.stat().st_size


def derive_ct_file(src: Path, dst: Path, *, sop_uid: str, instance_number: int) -> int:
    """Write a copy of the CT file ``src`` at ``dst`` as another instance of the same series (new
    SOPInstanceUID and InstanceNumber, noisier pixels); return its size. Raises OSError."""
    ds = dcmread(src)
    ds.SOPInstanceUID = sop_uid
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    ds.InstanceNumber = str(instance_number)
    pixels = bytearray(ds.PixelData)
    rng = random.Random(sop_uid)
    for i in range(0, len(pixels), 2):
        pixels[i] ^= rng.randrange(16)
    ds.PixelData = bytes(pixels)
    tmp = dst.with_name(dst.name + ".part")
    ds.save_as(tmp, enforce_file_format=True)
    os.replace(tmp, dst)
    return dst.stat().st_size
