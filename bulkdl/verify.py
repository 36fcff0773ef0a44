"""Whether a fetched series is what the archive promised: expected vs actual -> a verdict.

:func:`verify_series` compares a :class:`~bulkdl.records.Series` row (``ImageCount``,
``FileSize``, ``SeriesInstanceUID``) with the :class:`~bulkdl.records.FetchedSeries` an unpack
produced (files, headers, MD5s, the declared md5hashes.csv) and returns a :class:`Verdict` of short
sentences. It tells a series that is merely short (NBIA's silent truncation: a valid ZIP with fewer
images, every one of them right) from one that is wrong, so the caller can place the first with
``--accept-incomplete``. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from bulkdl.records import FetchedSeries, Series, StagedFile

#: How many problems a verdict lists before "and N more".
MAX_LISTED = 10


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome of :func:`verify_series`.

    ``ok`` when nothing is wrong; ``problems`` are short sentences (at most :data:`MAX_LISTED`
    plus an "and N more"); ``shortfall`` when the only problem is missing images (the byte total
    falling short with them), so the series is complete-but-short; ``images`` and ``bytes`` count
    the DICOM files delivered.
    """

    ok: bool
    problems: tuple[str, ...]
    shortfall: bool
    images: int
    bytes: int


def verify_series(series: Series, fetched: FetchedSeries) -> Verdict:
    """Check ``fetched`` against ``series``: image count, non-DICOM members, declared MD5s,
    SeriesInstanceUID, unique SOPInstanceUIDs and the byte total. Never raises."""
    dicom = [f for f in fetched.files if f.header is not None]
    images = len(dicom)
    total = sum(f.size for f in dicom)
    missing: list[str] = []  # problems that a short series explains
    wrong: list[str] = []  # every other problem

    expected = series.ImageCount
    if expected is None:
        if images == 0:
            wrong.append("no images")
    elif images < expected:
        missing.append(f"expected {expected:,} images, got {images:,}")
    elif images > expected:
        wrong.append(f"expected {expected:,} images, got {images:,}")

    wrong.extend(f"{f.name} is not a DICOM file" for f in fetched.files if f.header is None)
    if fetched.declared_md5 is not None:
        wrong.extend(_md5_problems(fetched.files, fetched.declared_md5))
    wrong.extend(_uid_problems(dicom, series.SeriesInstanceUID))

    if series.FileSize is not None and total != series.FileSize:
        text = f"expected {series.FileSize:,} bytes, got {total:,}"
        short = expected is not None and images < expected and total < series.FileSize
        (missing if short else wrong).append(text)

    problems = missing + wrong
    listed = problems[:MAX_LISTED]
    if len(problems) > MAX_LISTED:
        listed.append(f"and {len(problems) - MAX_LISTED:,} more")
    return Verdict(
        ok=not problems,
        problems=tuple(listed),
        shortfall=bool(missing) and not wrong,
        images=images,
        bytes=total,
    )


def _md5_problems(files: tuple[StagedFile, ...], declared: Mapping[str, str]) -> list[str]:
    problems: list[str] = []
    names: set[str] = set()
    for f in files:
        names.add(f.name)
        want = declared.get(f.name)
        if want is None:
            problems.append(f"no declared MD5 for {f.name}")
        elif want.lower() != f.md5.lower():
            problems.append(f"MD5 mismatch for {f.name}")
    problems.extend(
        f"an MD5 is declared for {name}, which is not in the archive"
        for name in declared
        if name not in names
    )
    return problems


def _uid_problems(files: list[StagedFile], series_uid: str) -> list[str]:
    problems: list[str] = []
    first_with: dict[str, str] = {}
    for f in files:
        header = f.header or {}
        got = header.get("SeriesInstanceUID")
        if got is None:
            problems.append(f"{f.name} has no SeriesInstanceUID")
        elif got != series_uid:
            problems.append(f"{f.name} belongs to series {got}, not {series_uid}")
        sop = header.get("SOPInstanceUID")
        if sop is None:
            problems.append(f"{f.name} has no SOPInstanceUID")
        elif sop in first_with:
            problems.append(f"{f.name} repeats the SOPInstanceUID of {first_with[sop]}")
        else:
            first_with[sop] = f.name
    return problems
