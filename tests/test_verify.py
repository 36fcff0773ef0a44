"""verify_series: every rule, its sentence, and when a problem is only a shortfall."""

from __future__ import annotations

from pathlib import Path

from bulkdl.dicom import read_header
from bulkdl.records import FetchedSeries, Series, StagedFile
from bulkdl.testing import FakeArchive
from bulkdl.testing.zips import ZipVariant, build_zip
from bulkdl.unpack import unpack_zip
from bulkdl.verify import MAX_LISTED, verify_series

SERIES = "1.2.4"


def staged(n: int, *, size: int = 100, series: str = SERIES, sop: str | None = None) -> StagedFile:
    header = {"SeriesInstanceUID": series, "SOPInstanceUID": sop or f"9.{n}"}
    return StagedFile(
        f"{n:08d}.dcm", Path(f"/s/{n:06d}.dcm"), size, f"{n:032x}", f"{n:064x}", header
    )


def files(count: int) -> tuple[StagedFile, ...]:
    return tuple(staged(n) for n in range(1, count + 1))


def md5s(items: tuple[StagedFile, ...]) -> dict[str, str]:
    return {f.name: f.md5 for f in items}


def test_complete_series_ok() -> None:
    """Right count, bytes, MD5s and UIDs: ok, no problems, counts reported."""
    got = files(3)
    verdict = verify_series(
        Series(SERIES, ImageCount=3, FileSize=300), FetchedSeries(got, md5s(got))
    )
    assert verdict.ok and verdict.problems == () and not verdict.shortfall
    assert (verdict.images, verdict.bytes) == (3, 300)


def test_short_series_is_shortfall() -> None:
    """Fewer images than ImageCount (and so fewer bytes) is a shortfall, with both sentences."""
    got = files(118)
    verdict = verify_series(
        Series(SERIES, ImageCount=120, FileSize=62_914_560), FetchedSeries(got, md5s(got))
    )
    assert not verdict.ok and verdict.shortfall
    assert verdict.problems == (
        "expected 120 images, got 118",
        "expected 62,914,560 bytes, got 11,800",
    )


def test_more_images_than_expected() -> None:
    """More images than ImageCount is a problem and not a shortfall."""
    verdict = verify_series(Series(SERIES, ImageCount=2), FetchedSeries(files(3)))
    assert verdict.problems == ("expected 2 images, got 3",) and not verdict.shortfall


def test_non_dicom_member() -> None:
    """A member whose header is None is named as not DICOM and not counted as an image."""
    got = (*files(2), StagedFile("00000007.dcm", Path("/s/x"), 5, "0" * 32, "0" * 64, None))
    verdict = verify_series(Series(SERIES, ImageCount=2, FileSize=200), FetchedSeries(got))
    assert verdict.problems == ("00000007.dcm is not a DICOM file",)
    assert (verdict.images, verdict.bytes) == (2, 200)
    assert not verdict.shortfall


def test_md5_mismatch_missing_row_and_extra_row() -> None:
    """Declared MD5s: a mismatch, a file without a row and a row without a file are each named."""
    got = files(3)
    declared = md5s(got)
    declared["00000003.dcm"] = "f" * 32
    del declared["00000002.dcm"]
    declared["00000009.dcm"] = "e" * 32
    verdict = verify_series(Series(SERIES, ImageCount=3), FetchedSeries(got, declared))
    assert set(verdict.problems) == {
        "MD5 mismatch for 00000003.dcm",
        "no declared MD5 for 00000002.dcm",
        "an MD5 is declared for 00000009.dcm, which is not in the archive",
    }
    assert not verdict.shortfall


def test_md5_compared_case_insensitively() -> None:
    """Upper-case declared hex matches the computed lower-case MD5."""
    got = files(1)
    declared = {f.name: f.md5.upper() for f in got}
    assert verify_series(Series(SERIES, ImageCount=1), FetchedSeries(got, declared)).ok


def test_no_declared_md5_skips_the_check() -> None:
    """Without md5hashes.csv (declared None) MD5s are not checked."""
    assert verify_series(Series(SERIES, ImageCount=2), FetchedSeries(files(2), None)).ok


def test_empty_declared_md5_with_files() -> None:
    """An empty declared list with files delivered names each file as undeclared."""
    verdict = verify_series(Series(SERIES, ImageCount=1), FetchedSeries(files(1), {}))
    assert verdict.problems == ("no declared MD5 for 00000001.dcm",)


def test_wrong_series_uid() -> None:
    """A file of another series is named with both UIDs."""
    got = (staged(1), staged(4, series="1.2.3"))
    verdict = verify_series(Series(SERIES, ImageCount=2), FetchedSeries(got))
    assert verdict.problems == ("00000004.dcm belongs to series 1.2.3, not 1.2.4",)
    assert not verdict.shortfall


def test_missing_uids() -> None:
    """A DICOM file without SeriesInstanceUID or SOPInstanceUID is a problem."""
    got = (StagedFile("00000001.dcm", Path("/s/1"), 10, "0" * 32, "0" * 64, {}),)
    verdict = verify_series(Series(SERIES, ImageCount=1), FetchedSeries(got))
    assert verdict.problems == (
        "00000001.dcm has no SeriesInstanceUID",
        "00000001.dcm has no SOPInstanceUID",
    )


def test_duplicate_sop_instance_uid() -> None:
    """The same SOPInstanceUID twice names the repeat and the first holder."""
    got = (staged(1, sop="7.7"), staged(2), staged(3, sop="7.7"))
    verdict = verify_series(Series(SERIES, ImageCount=3), FetchedSeries(got))
    assert verdict.problems == ("00000003.dcm repeats the SOPInstanceUID of 00000001.dcm",)


def test_byte_total_wrong_with_right_count() -> None:
    """The right count with a different byte total is a problem, not a shortfall."""
    verdict = verify_series(Series(SERIES, ImageCount=2, FileSize=250), FetchedSeries(files(2)))
    assert verdict.problems == ("expected 250 bytes, got 200",) and not verdict.shortfall


def test_short_count_with_too_many_bytes_is_not_shortfall() -> None:
    """Fewer images but more bytes than FileSize cannot be explained by missing images."""
    verdict = verify_series(Series(SERIES, ImageCount=3, FileSize=150), FetchedSeries(files(2)))
    assert len(verdict.problems) == 2 and not verdict.shortfall


def test_short_count_plus_other_problem_is_not_shortfall() -> None:
    """A short series that also has a bad MD5 is not merely short."""
    got = files(2)
    declared = md5s(got)
    declared["00000001.dcm"] = "0" * 32
    verdict = verify_series(Series(SERIES, ImageCount=3), FetchedSeries(got, declared))
    assert "expected 3 images, got 2" in verdict.problems and not verdict.shortfall


def test_bytes_unknown_count_short_is_shortfall() -> None:
    """Without FileSize, a short count alone is a shortfall."""
    verdict = verify_series(Series(SERIES, ImageCount=5), FetchedSeries(files(4)))
    assert verdict.problems == ("expected 5 images, got 4",) and verdict.shortfall


def test_empty_series_expected_empty_is_ok() -> None:
    """ImageCount 0 and no images (NBIA's empty series) is ok."""
    verdict = verify_series(Series(SERIES, ImageCount=0, FileSize=0), FetchedSeries((), {}))
    assert verdict.ok and (verdict.images, verdict.bytes) == (0, 0)


def test_no_images_with_unknown_count_is_not_ok() -> None:
    """No images when ImageCount is unknown is "no images", and not a shortfall."""
    verdict = verify_series(Series(SERIES), FetchedSeries(()))
    assert verdict.problems == ("no images",) and not verdict.shortfall


def test_unknown_count_with_images_is_ok() -> None:
    """ImageCount and FileSize unknown: delivered images with good UIDs are ok."""
    assert verify_series(Series(SERIES), FetchedSeries(files(3))).ok


def test_all_missing_is_shortfall() -> None:
    """Zero images of an expected 4 is a shortfall (every problem is missing images)."""
    verdict = verify_series(Series(SERIES, ImageCount=4, FileSize=400), FetchedSeries(()))
    assert verdict.shortfall and verdict.problems[0] == "expected 4 images, got 0"


def test_problems_are_capped() -> None:
    """Many problems list the first MAX_LISTED and "and N more"."""
    got = tuple(staged(n, series="1.9") for n in range(1, 26))
    verdict = verify_series(Series(SERIES, ImageCount=25), FetchedSeries(got))
    assert len(verdict.problems) == MAX_LISTED + 1
    assert verdict.problems[-1] == "and 15 more"
    assert verdict.problems[0] == "00000001.dcm belongs to series 1.9, not 1.2.4"


def test_verdict_is_frozen() -> None:
    """A Verdict cannot be changed after the fact."""
    verdict = verify_series(Series(SERIES), FetchedSeries(files(1)))
    try:
        verdict.ok = False  # type: ignore[misc]
    except AttributeError:
        return
    raise AssertionError("Verdict is mutable")


def test_real_short_zip_end_to_end(small_archive: FakeArchive, tmp_path: Path) -> None:
    """NBIA's silent truncation, unpacked for real: only a shortfall; the full ZIP is ok."""
    data = small_archive.series[0]
    series = Series(
        data.uid, ImageCount=int(data.row["ImageCount"]), FileSize=int(data.row["FileSize"])
    )
    for keep, ok, short in ((None, True, False), (2, False, True)):
        zip_path = tmp_path / f"{keep}.zip"
        build_zip(small_archive, data, ZipVariant(include_md5=True, keep=keep), zip_path)
        fetched = unpack_zip(
            zip_path,
            tmp_path / f"out{keep}",
            series_uid=data.uid,
            max_total=None,
            inspect=lambda p: read_header(p, ()),
        )
        verdict = verify_series(series, fetched)
        assert (verdict.ok, verdict.shortfall) == (ok, short), verdict.problems
