"""Files written beside the tree from the ledger: ``metadata.csv``, ``failures.csv``, licences.

``metadata.csv`` has the NBIA Data Retriever's columns, one row per placed series, so users who
migrate find what they expect. ``failures.csv`` names every failed series with its reason and is
itself a manifest (it has a ``SeriesInstanceUID`` column): ``bulkdl download DIR/failures.csv``
retries exactly those. ``LICENSES/<Collection>.txt`` holds each collection's licence once. Each
file is written whole to a temporary name under ``.bulkdl/`` and renamed into place, so a reader
never sees half of one; metadata.csv is written as the ledger's pages are read, so a
200,000-series ledger never sits in memory whole. ``.bulkdl/sidecars.json`` notes what they were
last written from (the ledgers' data versions) and each file as it was left (size, mtime, inode):
when neither moved, nothing is rewritten, so a re-run that changed nothing costs a few stats.
Blocking file I/O.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import date
from functools import lru_cache
from pathlib import Path
from typing import Any, Final, Protocol

from bulkdl import __version__, dicom
from bulkdl.layout import sanitize_component
from bulkdl.ledger import SeriesState, State

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
#: Under ``.bulkdl/``: what the sidecars were last written from, and each file as left then.
STAMP_NAME: Final = "sidecars.json"
#: Changes whenever the sidecars written from one ledger would differ (a column, a format).
_FORMAT: Final = 1
#: What metadata.csv takes from each series' record.
RECORD_FIELDS: Final = (
    "Collection",
    "ThirdPartyAnalysis",
    "DataDescriptionURI",
    "PatientID",
    "StudyInstanceUID",
    "StudyDescription",
    "StudyDate",
    "SeriesDescription",
    "Manufacturer",
    "Modality",
)


class LedgerView(Protocol):
    """What the sidecars are written from: one :class:`~bulkdl.ledger.Ledger`, or every ledger
    of a tree merged (:class:`~bulkdl.merged.MergedLedgers`)."""

    def states_in(
        self, *states: State, fields: Sequence[str] = ()
    ) -> Iterator[tuple[SeriesState, tuple[Any, ...]]]: ...

    def series_folders(self) -> dict[str, str]: ...

    def licenses(self) -> dict[str, str]: ...

    def data_version(self) -> str | None: ...


@lru_cache(maxsize=4096)
def _nbia_date(iso: str | None) -> str:
    """An ISO date as the Data Retriever writes it (MM-DD-YYYY); most series share a few."""
    return date.fromisoformat(iso).strftime("%m-%d-%Y") if iso else ""


def series_folder(folder: str | None) -> str:
    """A series' folder (as :meth:`Ledger.series_folders` gives it; None when it has no files)
    as metadata.csv shows it: ``./a/b``, ``.`` for the tree's root, empty for none."""
    if folder is None:
        return ""
    return f"./{folder}" if folder else "."


def metadata_rows(
    placed: Iterable[tuple[SeriesState, Sequence[Any]]], folders: Mapping[str, str]
) -> Iterator[list[str]]:
    """One metadata.csv row (values in ``METADATA_COLUMNS`` order) per placed series: its state
    and the values of ``RECORD_FIELDS`` in its record (:meth:`Ledger.states_in`); ``folders``
    maps a series to the folder of its files (:meth:`Ledger.series_folders`)."""
    for st, values in placed:
        (
            collection,
            third_party,
            description_uri,
            patient_id,
            study_uid,
            study_description,
            study_date,
            series_description,
            manufacturer,
            modality,
        ) = values
        sop_class = st.sop_class_uid or ""
        yield [
            st.uid,
            collection or "",
            third_party or "",
            description_uri or "",
            patient_id or "",
            study_uid or "",
            study_description or "",
            _nbia_date(study_date),
            series_description or "",
            manufacturer or "",
            modality or "",
            dicom.sop_class_name(sop_class) if sop_class else "",
            sop_class,
            str(st.actual_images or 0),
            str(st.actual_bytes or 0),
            series_folder(folders.get(st.uid)),
            st.completed_at or "",
        ]


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


def _write_metadata(ledger: LedgerView, target: Path, scratch: Path) -> None:
    temporary = scratch / f".{target.name}.{os.getpid()}.tmp"
    with temporary.open("w", encoding="utf-8", newline="") as stream:
        writer = csv.writer(stream, lineterminator="\r\n")
        writer.writerow(METADATA_COLUMNS)
        placed = ledger.states_in("done", "incomplete", fields=RECORD_FIELDS)
        writer.writerows(metadata_rows(placed, ledger.series_folders()))
    os.replace(temporary, target)


def _fingerprint(path: Path) -> list[int] | None:
    """(size, mtime_ns, inode) of ``path``, or None when it does not exist."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def _up_to_date(out: Path, stamp: Path, source: str | None) -> bool:
    """True when the sidecars under ``out`` were written from ``source`` and are as left then."""
    if source is None:
        return False
    try:
        noted = json.loads(stamp.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(noted, dict) or noted.get("source") != source:
        return False
    files = noted.get("files")
    return isinstance(files, dict) and all(
        _fingerprint(out / name) == left for name, left in files.items()
    )


def write_all(ledger: LedgerView, out: Path) -> None:
    """Rewrite metadata.csv, failures.csv (removed when nothing failed) and LICENSES/ under out,
    unless nothing they show changed since this bulkdl wrote them (the ledger's data version is
    the one noted then) and each is still as it was left.

    Raises OSError when the output folder refuses the writes.
    """
    scratch = out / ".bulkdl"
    stamp = scratch / STAMP_NAME
    version = ledger.data_version()
    source = None if version is None else f"{__version__}/{_FORMAT}/{version}"
    if _up_to_date(out, stamp, source):
        return
    # Gone before any sidecar changes: a run stopped midway leaves none, so the next rewrites.
    stamp.unlink(missing_ok=True)
    written = ["metadata.csv", "failures.csv"]
    _write_metadata(ledger, out / "metadata.csv", scratch)
    failed = [
        {"SeriesInstanceUID": st.uid, "Reason": st.last_error or "", "Attempts": str(st.attempts)}
        for st, _ in ledger.states_in("failed")
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
            name = f"LICENSES/{sanitize_component(collection)}.txt"
            _write_atomic(out / name, text, scratch)
            written.append(name)
    if source is not None:
        files = {name: _fingerprint(out / name) for name in written}
        _write_atomic(stamp, json.dumps({"source": source, "files": files}), scratch)
