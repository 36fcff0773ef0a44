"""Files written beside the tree from the ledger: ``metadata.csv``, ``failures.csv``, licences.

``metadata.csv`` has the NBIA Data Retriever's columns, one row per placed series, so users who
migrate find what they expect. ``failures.csv`` names every failed series with its reason and is
itself a manifest (it has a ``SeriesInstanceUID`` column): ``bulkdl download DIR/failures.csv``
retries exactly those. ``LICENSES/<Collection>.txt`` holds each collection's licence once. Each
file is written whole to a temporary name under ``.bulkdl/`` and renamed into place, so a reader
never sees half of one. Blocking file I/O.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable, Mapping, Sequence
from datetime import date
from pathlib import Path, PurePosixPath
from typing import Final

from bulkdl import dicom
from bulkdl.layout import sanitize_component
from bulkdl.ledger import Ledger, SeriesState
from bulkdl.records import PlacedFile

METADATA_COLUMNS: Final = (
    "Series UID",
    "Collection",
    "3rd Party Analysis",
    "Data Description URI",
    "Subject ID",
    "Study UID",
    "Study Description",
    "Study Date",
    "Series Description",
    "Manufacturer",
    "Modality",
    "SOP Class Name",
    "SOP Class UID",
    "Number of Images",
    "File Size",
    "File Location",
    "Download Timestamp",
)
FAILURE_COLUMNS: Final = ("SeriesInstanceUID", "Reason", "Attempts")


def _nbia_date(value: date | None) -> str:
    return value.strftime("%m-%d-%Y") if value else ""


def series_folder(files: Sequence[PlacedFile]) -> str:
    """The folder holding a series' files (their deepest common parent), as ``./a/b``."""
    parents = [PurePosixPath(f.path).parent.parts for f in files]
    if not parents:
        return ""
    common: list[str] = []
    for parts in zip(*parents, strict=False):
        if len(set(parts)) != 1:
            break
        common.append(parts[0])
    return "./" + "/".join(common) if common else "."


def metadata_rows(
    states: Iterable[SeriesState], files: Mapping[str, Sequence[PlacedFile]]
) -> list[dict[str, str]]:
    """One metadata.csv row per placed (done or incomplete) series."""
    rows = []
    for st in states:
        if st.state not in ("done", "incomplete") or st.record is None:
            continue
        rec = st.record
        sop_class = st.sop_class_uid or ""
        rows.append(
            {
                "Series UID": st.uid,
                "Collection": rec.Collection or "",
                "3rd Party Analysis": rec.ThirdPartyAnalysis or "",
                "Data Description URI": rec.DataDescriptionURI or "",
                "Subject ID": rec.PatientID or "",
                "Study UID": rec.StudyInstanceUID or "",
                "Study Description": rec.StudyDescription or "",
                "Study Date": _nbia_date(rec.StudyDate),
                "Series Description": rec.SeriesDescription or "",
                "Manufacturer": rec.Manufacturer or "",
                "Modality": rec.Modality or "",
                "SOP Class Name": dicom.sop_class_name(sop_class) if sop_class else "",
                "SOP Class UID": sop_class,
                "Number of Images": str(st.actual_images or 0),
                "File Size": str(st.actual_bytes or 0),
                "File Location": series_folder(files.get(st.uid, ())),
                "Download Timestamp": st.completed_at or "",
            }
        )
    return rows


def _csv_text(columns: Sequence[str], rows: Iterable[Mapping[str, str]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\r\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _write_atomic(target: Path, text: str, scratch: Path) -> None:
    temporary = scratch / f".{target.name}.{os.getpid()}.tmp"
    temporary.write_text(text, encoding="utf-8", newline="")
    os.replace(temporary, target)


def write_all(ledger: Ledger, out: Path) -> None:
    """Rewrite metadata.csv, failures.csv (removed when nothing failed) and LICENSES/ under out.

    Raises OSError when the output folder refuses the writes.
    """
    scratch = out / ".bulkdl"
    states = list(ledger.states().values())
    files = ledger.files_by_series()
    _write_atomic(
        out / "metadata.csv", _csv_text(METADATA_COLUMNS, metadata_rows(states, files)), scratch
    )
    failed = [
        {"SeriesInstanceUID": st.uid, "Reason": st.last_error or "", "Attempts": str(st.attempts)}
        for st in states
        if st.state == "failed"
    ]
    failures = out / "failures.csv"
    if failed:
        _write_atomic(failures, _csv_text(FAILURE_COLUMNS, failed), scratch)
    else:
        failures.unlink(missing_ok=True)
    licenses = ledger.licenses()
    if licenses:
        folder = out / "LICENSES"
        folder.mkdir(exist_ok=True)
        for collection, text in licenses.items():
            _write_atomic(folder / f"{sanitize_component(collection)}.txt", text, scratch)
