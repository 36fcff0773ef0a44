"""getImage's ZIP over real loopback HTTP: headers, entries, order, names, MD5s, stream format."""

from __future__ import annotations

import hashlib
import io
import zipfile

import aiohttp
import pydicom
import pytest

from bulkdl.testing import FakeArchive, FakeNbiaServer
from bulkdl.testing.zipinspect import DATA_DESCRIPTOR_FLAG, local_headers

pytestmark = pytest.mark.anyio


async def get(url: str, **params: str) -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession() as session, session.get(url, params=params) as resp:
        return resp.status, dict(resp.headers), await resp.read()


def two_acquisition_series(archive: FakeArchive) -> str:
    return next(
        s.uid for s in archive.series if len({i.acquisition_number for i in s.instances}) > 1
    )


async def test_zip_response_headers(nbia_server: FakeNbiaServer) -> None:
    """A ZIP comes as a chunked 200 octet-stream attachment named after the series, no length."""
    uid = nbia_server.archive.series[0].uid
    status, headers, _ = await get(nbia_server.v4_url + "getImage", SeriesInstanceUID=uid)
    assert status == 200
    assert headers["Content-Type"] == "application/octet-stream"
    assert headers["Content-Disposition"] == f'attachment; filename="{uid}.zip"'
    assert headers["Transfer-Encoding"] == "chunked"
    assert "Content-Length" not in headers
    assert "Accept-Ranges" not in headers


async def test_zip_entries_are_license_then_valid_dicom(nbia_server: FakeNbiaServer) -> None:
    """LICENSE first, then ImageCount DICOM files of the series, in database not instance order."""
    series = nbia_server.archive.series[1]
    _, _, body = await get(nbia_server.v4_url + "getImage", SeriesInstanceUID=series.uid)
    zf = zipfile.ZipFile(io.BytesIO(body))
    names = zf.namelist()
    count = int(series.row["ImageCount"])
    assert names[0] == "LICENSE"
    assert b"Data Usage Policy" in zf.read("LICENSE")
    assert names[1:] == [f"{n:08d}.dcm" for n in range(1, count + 1)]
    assert all(i.compress_type == zipfile.ZIP_DEFLATED for i in zf.infolist())
    instance_numbers = []
    total = 0
    for name in names[1:]:
        data = zf.read(name)
        total += len(data)
        ds = pydicom.dcmread(io.BytesIO(data))
        assert ds.SeriesInstanceUID == series.uid
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        instance_numbers.append(int(ds.InstanceNumber))
    assert total == series.row["FileSize"]
    assert sorted(instance_numbers) == list(range(1, count + 1))
    assert instance_numbers != sorted(instance_numbers)


async def test_local_headers_use_data_descriptors(nbia_server: FakeNbiaServer) -> None:
    """Like Java's ZipOutputStream: DEFLATED entries, no sizes or CRC in local headers (bit 3)."""
    uid = nbia_server.archive.series[0].uid
    _, _, body = await get(nbia_server.v4_url + "getImage", SeriesInstanceUID=uid, IncludeMD5="Yes")
    headers = local_headers(body)
    assert len(headers) == int(nbia_server.archive.series[0].row["ImageCount"]) + 2
    for h in headers:
        assert h.flags & DATA_DESCRIPTOR_FLAG
        assert (h.crc, h.compressed_size, h.size) == (0, 0, 0)
        assert h.method == zipfile.ZIP_DEFLATED
        assert "/" not in h.name


async def test_md5hashes_csv_is_last_and_correct(nbia_server: FakeNbiaServer) -> None:
    """IncludeMD5=Yes adds md5hashes.csv last: header Filename,MD5Hash, one right MD5 per image."""
    uid = nbia_server.archive.series[2].uid
    _, _, body = await get(nbia_server.v4_url + "getImage", SeriesInstanceUID=uid, IncludeMD5="Yes")
    zf = zipfile.ZipFile(io.BytesIO(body))
    assert zf.namelist()[-1] == "md5hashes.csv"
    lines = zf.read("md5hashes.csv").decode().splitlines()
    assert lines[0] == "Filename,MD5Hash"
    table = dict(line.split(",") for line in lines[1:])
    images = [n for n in zf.namelist() if n.endswith(".dcm")]
    assert sorted(table) == sorted(images)
    assert all(hashlib.md5(zf.read(n)).hexdigest() == table[n] for n in images)


async def test_new_file_names_sorted_by_acquisition_then_instance(
    nbia_server: FakeNbiaServer,
) -> None:
    """NewFileNames=Yes names images <acq>-<inst>.dcm, padded, in acquisition/instance order."""
    uid = two_acquisition_series(nbia_server.archive)
    _, _, body = await get(
        nbia_server.v4_url + "getImage", SeriesInstanceUID=uid, NewFileNames="Yes"
    )
    zf = zipfile.ZipFile(io.BytesIO(body))
    images = zf.namelist()[1:]
    keys = []
    for name in images:
        ds = pydicom.dcmread(io.BytesIO(zf.read(name)))
        acq, inst = int(ds.AcquisitionNumber), int(ds.InstanceNumber)
        assert name == f"{acq}-{inst}.dcm"  # maxima are single digits here
        keys.append((acq, inst))
    assert keys == sorted(keys)
    assert {k[0] for k in keys} == {1, 2}


def test_padding_follows_the_widest_number() -> None:
    """Instance numbers are padded to the width of the largest one (1-001.dcm for 100+ images)."""
    from bulkdl.testing.archive import Instance
    from bulkdl.testing.zips import image_names

    instances = tuple(Instance(str(n), n, 1, "", 0, "") for n in range(120, 0, -1))
    names = [name for name, _ in image_names(instances, new_file_names=True)]
    assert names[0] == "1-001.dcm"
    assert names[-1] == "1-120.dcm"


async def test_get_image_with_md5_hash_has_no_license(nbia_server: FakeNbiaServer) -> None:
    """getImageWithMD5Hash sends images and md5hashes.csv but no LICENSE."""
    series = nbia_server.archive.series[0]
    _, _, body = await get(nbia_server.v4_url + "getImageWithMD5Hash", SeriesInstanceUID=series.uid)
    names = zipfile.ZipFile(io.BytesIO(body)).namelist()
    assert "LICENSE" not in names
    assert names[-1] == "md5hashes.csv"
    assert len(names) == int(series.row["ImageCount"]) + 1


async def test_single_image_and_sop_instance_uids(nbia_server: FakeNbiaServer) -> None:
    """getSOPInstanceUIDs lists the series' images and getSingleImage returns each one's file."""
    series = nbia_server.archive.series[0]
    status, _, body = await get(
        nbia_server.v4_url + "getSOPInstanceUIDs", SeriesInstanceUID=series.uid
    )
    import json

    sops = [row["SOPInstanceUID"] for row in json.loads(body)]
    assert status == 200
    assert sorted(sops) == sorted(i.sop_uid for i in series.instances)
    _, _, dicom = await get(
        nbia_server.v4_url + "getSingleImage", SeriesInstanceUID=series.uid, SOPInstanceUID=sops[0]
    )
    assert pydicom.dcmread(io.BytesIO(dicom)).SOPInstanceUID == sops[0]


def test_zipfile_on_a_stream_writes_data_descriptors() -> None:
    """Python's zipfile writing to a non-seekable sink emits data descriptors (we rely on it)."""
    from bulkdl.testing.zips import _WriteOnly

    raw = io.BytesIO()
    with zipfile.ZipFile(_WriteOnly(raw), "w", zipfile.ZIP_DEFLATED) as zf:  # type: ignore[call-overload]
        zf.writestr("a.dcm", b"x" * 1000)
    (header,) = local_headers(raw.getvalue())
    assert header.flags & DATA_DESCRIPTOR_FLAG and header.size == 0
