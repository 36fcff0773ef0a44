"""Rows to response bodies in NBIA's formats: JSON (default), quoted CSV, XML and HTML.

JSON is always an array of objects whose null values are absent; CSV has a header row and every
field quoted, nulls as empty strings; an empty result is an empty body in every format. v1/v2 rename
two series columns. Pure: no I/O.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from xml.sax.saxutils import escape

from bulkdl.testing.archive import Row
from bulkdl.testing.endpoints import LEGACY_RENAMES

FORMATS = {
    "json": "application/json",
    "csv": "text/csv",
    "xml": "application/xml",
    "html": "text/html",
}


def legacy_names(columns: Sequence[str], rows: list[Row]) -> tuple[list[str], list[Row]]:
    """v1/v2 spellings of the columns and rows (``TimeStamp``, ``CollectionURI``)."""
    cols = [LEGACY_RENAMES.get(c, c) for c in columns]
    out = [{LEGACY_RENAMES.get(k, k): v for k, v in row.items()} for row in rows]
    return cols, out


def render(rows: list[Row], columns: Sequence[str], fmt: str) -> tuple[bytes, str]:
    """The body and content type for ``rows`` in ``fmt`` (json, csv, xml or html).

    Raises KeyError for an unknown format.
    """
    content_type = FORMATS[fmt]
    if not rows:
        return b"", content_type
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, quoting=csv.QUOTE_ALL, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([[row.get(c, "") for c in columns] for row in rows])
        return buf.getvalue().encode(), content_type
    ordered = [{c: row[c] for c in columns if c in row} for row in rows]
    if fmt == "json":
        return json.dumps(ordered, ensure_ascii=False, separators=(",", ":")).encode(), content_type
    if fmt == "xml":
        parts = ['<?xml version="1.0" encoding="UTF-8"?><collection>']
        for row in ordered:
            cells = "".join(f"<{k}>{escape(str(v))}</{k}>" for k, v in row.items() if "(" not in k)
            parts.append(f"<row>{cells}</row>")
        parts.append("</collection>")
        return "".join(parts).encode(), content_type
    head = "".join(f"<th>{escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{escape(str(row.get(c, '')))}</td>" for c in columns) + "</tr>"
        for row in ordered
    )
    html = f"<html><body><table><tr>{head}</tr>{body}</table></body></html>"
    return html.encode(), content_type
