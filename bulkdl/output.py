"""Render archive records for people and pipelines: a terminal table, CSV, JSON lines or ``.tcia``.

``bulkdl query`` hands its records here. CSV and JSON carry every field under its DICOM keyword
(dates as ISO ``YYYY-MM-DD``, unknown server columns under their own names); the table shows the
columns a person scans for; ``.tcia`` is only for series. Pure apart from writing to the stream it
is given.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from collections.abc import Sequence
from datetime import date
from enum import StrEnum
from typing import Any, TextIO

from bulkdl.errors import InputError
from bulkdl.manifest import write_tcia
from bulkdl.records import Series


class OutputFormat(StrEnum):
    """The shapes ``bulkdl query`` can print."""

    TABLE = "table"
    CSV = "csv"
    JSON = "json"
    TCIA = "tcia"


#: Columns the terminal table shows, per record type; CSV and JSON show every field.
TABLE_COLUMNS: dict[str, tuple[str, ...]] = {
    "Series": (
        "Collection",
        "PatientID",
        "Modality",
        "SeriesNumber",
        "SeriesDescription",
        "ImageCount",
        "FileSize",
        "SeriesInstanceUID",
    ),
    "Study": ("Collection", "PatientID", "StudyDate", "StudyDescription", "StudyInstanceUID"),
    "Patient": ("Collection", "PatientID", "PatientSex"),
}


def _plain(value: object) -> str | int | None:
    if value is None or isinstance(value, int | str):
        return value
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


def record_fields(record: object) -> dict[str, Any]:
    """A record as an ordered dict of keyword -> JSON-able value, ``extra`` columns flattened in."""
    if isinstance(record, str):
        return {"Value": record}
    assert dataclasses.is_dataclass(record) and not isinstance(record, type)
    out: dict[str, Any] = {}
    for field in dataclasses.fields(record):
        value = getattr(record, field.name)
        if field.name == "extra":
            out.update({k: v for k, v in value if k not in out})
        else:
            out[field.name] = _plain(value)
    return out


def _columns(records: Sequence[object]) -> list[str]:
    columns: dict[str, None] = {}
    for record in records:
        columns.update(dict.fromkeys(record_fields(record)))
    return list(columns)


def write_records(records: Sequence[object], fmt: OutputFormat, stream: TextIO) -> None:
    """Write ``records`` (dataclass rows or plain strings) to ``stream`` in ``fmt``.

    Raises InputError when ``fmt`` is ``tcia`` and the records are not series.
    """
    if fmt is OutputFormat.TCIA:
        if not all(isinstance(r, Series) for r in records):
            raise InputError("--format tcia needs series: list series, not another kind of row")
        stream.write(write_tcia([r.SeriesInstanceUID for r in records if isinstance(r, Series)]))
    elif fmt is OutputFormat.JSON:
        for record in records:
            stream.write(json.dumps(record_fields(record), ensure_ascii=False) + "\n")
    elif fmt is OutputFormat.CSV:
        writer = csv.DictWriter(stream, fieldnames=_columns(records), lineterminator="\n")
        writer.writeheader()
        for record in records:
            writer.writerow({k: "" if v is None else v for k, v in record_fields(record).items()})
    else:
        _write_table(records, stream)


def _write_table(records: Sequence[object], stream: TextIO) -> None:
    # rich is imported here, not at the top: a download never draws a table (~40 ms of start-up).
    from rich.console import Console
    from rich.table import Table

    kind = type(records[0]).__name__ if records else ""
    columns = list(TABLE_COLUMNS.get(kind, ())) or _columns(records)
    table = Table(show_lines=False, header_style="bold")
    for column in columns:
        table.add_column(column, overflow="fold")
    for record in records:
        fields = record_fields(record)
        table.add_row(*("" if fields.get(c) is None else str(fields[c]) for c in columns))
    console = Console(file=stream, width=None if stream.isatty() else 200)
    console.print(table)
    console.print(f"{len(records)} row{'s' if len(records) != 1 else ''}")


def render(records: Sequence[object], fmt: OutputFormat) -> str:
    """``write_records`` into a string (for tests and small outputs)."""
    buffer = io.StringIO()
    write_records(records, fmt, buffer)
    return buffer.getvalue()
