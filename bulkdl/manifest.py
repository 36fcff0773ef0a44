"""Manifests in and out: text -> an ordered, de-duplicated list of SeriesInstanceUIDs, and back.

Reads NBIA Data Retriever ``.tcia`` manifests (versions 1.0, 2.0 and 3.x), CSV/TSV tables with a
``SeriesInstanceUID`` (or ``Series UID``...) column as TCIA now recommends, JSON (a list of UIDs or
of row objects, or an object holding such a list; a bulkdl lock file reads as its series) and
plain UID lists with ``#`` comments; the format comes from the file's extension or, for stdin and
other names, from the content, and a caller may force it. Writes ``.tcia`` (3.0 shape) and CSV
manifests that read back to the same list. Pure: no I/O, except :func:`read_text`,
:func:`read_manifest` and :func:`read_manifests`, which read a path or stdin. Bad content always
raises :class:`~bulkdl.errors.ManifestError` naming the source and, where there is one, the line.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from enum import StrEnum
from pathlib import PurePath

from bulkdl.errors import InputError, ManifestError
from bulkdl.records import KEYWORD_OF, check_uid, is_uid

SERIES_UID = "SeriesInstanceUID"
STDIN = "-"
STDIN_NAME = "<stdin>"
DOWNLOAD_SERVER_URL = "https://nbia.cancerimagingarchive.net/nbia-download/servlet/DownloadServlet"

_BOM = "\ufeff"
_LIST_START = "listofseriestodownload"
_DELIMITERS = (",", "\t", ";")
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_BASKET_ID = re.compile(r"[A-Za-z0-9._-]{1,100}")
_JSON_LIST_KEYS = ("series", "seriesinstanceuids")


class ManifestFormat(StrEnum):
    """The manifest formats bulkdl reads; the values are what a ``--format`` option accepts."""

    TCIA = "tcia"
    CSV = "csv"
    TSV = "tsv"
    JSON = "json"
    LIST = "list"


# .txt and .lst say "text", not which text: they are sniffed, which reads a plain list exactly as
# LIST would and also forgives a renamed .tcia or a one-column table saved as .txt.
_FORMAT_OF_SUFFIX: dict[str, ManifestFormat] = {
    ".tcia": ManifestFormat.TCIA,
    ".csv": ManifestFormat.CSV,
    ".tsv": ManifestFormat.TSV,
    ".json": ManifestFormat.JSON,
}


def _column_key(name: str) -> str:
    return "".join(ch for ch in name.strip().strip(_BOM).casefold() if ch not in " _-")


#: Column names (normalized) that hold the SeriesInstanceUID: every spelling in records.KEYWORD_OF
#: plus "Series Instance UID"; the .tcia list's "Series ID" header is accepted only there.
_UID_COLUMNS = frozenset(
    [_column_key(name) for name, keyword in KEYWORD_OF.items() if keyword == SERIES_UID]
    + [_column_key("Series Instance UID")]
)
_TCIA_LIST_HEADERS = _UID_COLUMNS | {_column_key("Series ID")}
_UID_COLUMN_NAMES = "SeriesInstanceUID (or Series UID)"


def _show(text: str, limit: int = 60) -> str:
    """A short, printable quotation of user content (repr escapes control bytes and surrogates)."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _lines(text: str) -> list[str]:
    """Physical lines as an editor numbers them: split on CRLF, CR or LF only."""
    return _LINE_BREAK.split(text)


def _dedupe(uids: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(uids))


def format_for_name(name: str) -> ManifestFormat | None:
    """The format a file name's extension implies, or None when the content must decide."""
    if name in (STDIN, STDIN_NAME):
        return None
    return _FORMAT_OF_SUFFIX.get(PurePath(name).suffix.lower())


def sniff_format(text: str) -> ManifestFormat:
    """Guess a manifest's format from its content; never raises (a plain list is the fallback)."""
    text = text.removeprefix(_BOM)
    lines = _lines(text)
    if any(
        line.partition("=")[0].strip().casefold() == _LIST_START for line in lines if "=" in line
    ):
        return ManifestFormat.TCIA
    if text.lstrip()[:1] in ("[", "{"):
        return ManifestFormat.JSON
    delimiter = _delimiter_of_header(next((line for line in lines if line.strip()), ""))
    if delimiter is None:
        return ManifestFormat.LIST
    return ManifestFormat.TSV if delimiter == "\t" else ManifestFormat.CSV


def parse_manifest(
    text: str, source: str = "<manifest>", fmt: ManifestFormat | None = None
) -> list[str]:
    """Return the SeriesInstanceUIDs ``text`` lists, in order, each once.

    ``source`` names the manifest in error messages and, when ``fmt`` is None, its extension picks
    the format (``.tcia``, ``.csv``, ``.tsv``, ``.json``); other names, ``-`` included, are sniffed
    from the content. An empty list is returned as is: whether that is an error is for the caller.

    Raises:
        ManifestError: the content is not a manifest of that format, or an entry is not a UID; the
            message names ``source`` and the line (or, for JSON items, the item index).
    """
    text = text.removeprefix(_BOM)
    if fmt is None:
        fmt = format_for_name(source) or sniff_format(text)
    if fmt is ManifestFormat.TCIA:
        return _parse_tcia(text, source)
    if fmt is ManifestFormat.JSON:
        return _parse_json(text, source)
    if fmt is ManifestFormat.LIST:
        return _parse_list(text, source)
    return _parse_table(text, source, prefer_tab=fmt is ManifestFormat.TSV)


def _parse_tcia(text: str, source: str) -> list[str]:
    uids: list[str] = []
    started = False
    header_allowed = False
    for number, raw in enumerate(_lines(text), start=1):
        line = raw.strip()
        if not started:
            key, equals, value = line.partition("=")
            if equals and key.strip().casefold() == _LIST_START:
                started = header_allowed = True
                # A UID on the start line itself is taken rather than lost.
                line = value.strip()
            else:
                continue
        if not line:
            continue
        if is_uid(line):
            uids.append(line)
        elif header_allowed and _column_key(line) in _TCIA_LIST_HEADERS:
            pass
        else:
            raise ManifestError(source, f"not a SeriesInstanceUID: {_show(line)}", number)
        header_allowed = False
    if not started:
        raise ManifestError(source, "not a .tcia manifest: no 'ListOfSeriesToDownload=' line")
    return _dedupe(uids)


def _parse_list(text: str, source: str) -> list[str]:
    uids: list[str] = []
    header_allowed = True
    for number, raw in enumerate(_lines(text), start=1):
        line = raw.partition("#")[0].strip()
        if not line:
            continue
        if is_uid(line):
            uids.append(line)
        elif header_allowed and _column_key(line) in _UID_COLUMNS:
            pass  # a one-column table's header
        else:
            raise ManifestError(source, f"not a SeriesInstanceUID: {_show(line)}", number)
        header_allowed = False
    return _dedupe(uids)


def _uid_column(row: Sequence[str]) -> int | None:
    return next((i for i, cell in enumerate(row) if _column_key(cell) in _UID_COLUMNS), None)


def _delimiter_of_header(line: str, prefer_tab: bool = False) -> str | None:
    """The delimiter under which ``line`` has a SeriesInstanceUID column, or None."""
    order = ("\t", ",", ";") if prefer_tab else _DELIMITERS
    for delimiter in order:
        try:
            cells = next(csv.reader([line], delimiter=delimiter), [])
        except csv.Error:
            continue
        if _uid_column(cells) is not None:
            return delimiter
    return None


def _rows(text: str, delimiter: str, source: str) -> Iterator[tuple[int, list[str]]]:
    """(first physical line, cells) of each non-blank record, with csv's errors made ours."""
    # strict: an unclosed quote is an error at its record, not every later row swallowed silently.
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    while True:
        start = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise ManifestError(source, f"unreadable CSV: {exc}", start) from None
        if any(cell.strip() for cell in row):
            yield start, row


def _parse_table(text: str, source: str, *, prefer_tab: bool) -> list[str]:
    lines = _lines(text)
    number, header = next(
        ((n, line) for n, line in enumerate(lines, start=1) if line.strip()), (None, "")
    )
    if number is None:
        raise ManifestError(
            source, "empty table: expected a header row with a SeriesInstanceUID column"
        )
    delimiter = _delimiter_of_header(header, prefer_tab)
    if delimiter is None:
        hint = (
            " (the file seems to have no header row)"
            if is_uid(re.split("[,\t;]", header.strip())[0])
            else ""
        )
        raise ManifestError(
            source, f"no {_UID_COLUMN_NAMES} column in the header row {_show(header)}{hint}", number
        )
    rows = _rows(text, delimiter, source)
    header_cells = next(rows, (number, []))[1]
    column = _uid_column(header_cells)
    if column is None:  # the header only parses differently when a quoted field spans lines
        raise ManifestError(source, f"no {_UID_COLUMN_NAMES} column in the header row", number)
    name = header_cells[column].strip().strip(_BOM)
    uids: list[str] = []
    for line, row in rows:
        cell = row[column].strip() if column < len(row) else ""
        if not cell:
            raise ManifestError(source, f"empty {name} cell", line)
        if not is_uid(cell):
            raise ManifestError(
                source, f"not a SeriesInstanceUID in column {name}: {_show(cell)}", line
            )
        uids.append(cell)
    return _dedupe(uids)


def _parse_json(text: str, source: str) -> list[str]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ManifestError(
            source, f"not valid JSON: {exc.msg} (column {exc.colno})", exc.lineno
        ) from None
    except RecursionError:
        raise ManifestError(source, "not valid JSON: nested too deeply") from None
    except ValueError as exc:  # e.g. an integer literal past Python's digit limit
        raise ManifestError(source, f"not valid JSON: {_show(str(exc))}") from None
    where = "item"
    if isinstance(data, dict):
        key = next((k for k in data if k.casefold() in _JSON_LIST_KEYS), None)
        if key is None:
            raise ManifestError(source, "JSON object has no 'series' or 'SeriesInstanceUIDs' list")
        data, where = data[key], f"{key!r} item"
    if not isinstance(data, list):
        raise ManifestError(source, f"expected a JSON list of series, got {type(data).__name__}")
    return _dedupe(_json_uid(item, source, f"{where} {index}") for index, item in enumerate(data))


def _json_uid(item: object, source: str, where: str) -> str:
    value: object = item
    if isinstance(item, dict):
        key = next((k for k in item if _column_key(k) in _UID_COLUMNS), None)
        if key is None:
            raise ManifestError(source, f"{where}: object has no SeriesInstanceUID")
        value = item[key]
    if not isinstance(value, str):
        raise ManifestError(source, f"{where}: expected a UID string, got {type(value).__name__}")
    uid = value.strip()
    if not is_uid(uid):
        raise ManifestError(source, f"{where}: not a SeriesInstanceUID: {_show(value)}")
    return uid


def read_manifest(path: str, fmt: ManifestFormat | None = None) -> list[str]:
    """Read the manifest at ``path`` (``-`` for stdin) as UTF-8 (a BOM is fine) and parse it.

    Raises:
        ManifestError: the path cannot be read (missing, a directory, no permission), is not UTF-8,
            or its content is not a manifest; the message names the path.
    """
    source, text = read_text(path)
    return parse_manifest(text, source, fmt)


def read_text(path: str) -> tuple[str, str]:
    """(the name errors use, the text) of the input at ``path`` (``-`` for stdin), read as UTF-8.

    For callers that look at the text before choosing a parser (a bulkdl lock file is JSON).

    Raises:
        ManifestError: the path cannot be read (missing, a directory, no permission) or is not
            UTF-8; the message names the path.
    """
    source = STDIN_NAME if path == STDIN else path
    try:
        if path == STDIN:
            data = sys.stdin.buffer.read()
        else:
            with open(path, "rb") as file:
                data = file.read()
    except IsADirectoryError:
        raise ManifestError(source, "is a directory, not a manifest file") from None
    except FileNotFoundError:
        raise ManifestError(source, "no such file") from None
    except OSError as exc:
        raise ManifestError(source, f"cannot read: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ManifestError(
            source, f"not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})", line
        ) from None
    return source, text


def read_manifests(paths: Iterable[str], fmt: ManifestFormat | None = None) -> list[str]:
    """Read several manifests into one list: each UID once, at its first place.

    Raises:
        ManifestError: as :func:`read_manifest`, for the first manifest that fails.
    """
    return _dedupe(uid for path in paths for uid in read_manifest(path, fmt))


def write_tcia(uids: Iterable[str], *, database_id: str | None = None) -> str:
    """A ``.tcia`` manifest (NBIA Data Retriever 3.0 shape) listing ``uids``, each once, in order.

    ``database_id`` names the basket (``databasketId=manifest-<database_id>.tcia``); by default it
    is derived from the UIDs, so the same list always gives the same text.

    Raises:
        InputError: a UID is not valid, or ``database_id`` has characters other than letters,
            digits, ``.``, ``_`` and ``-``.
    """
    checked = _dedupe(check_uid(uid, SERIES_UID) for uid in uids)
    if database_id is None:
        database_id = hashlib.sha256("\n".join(checked).encode()).hexdigest()[:16]
    basket = database_id.removeprefix("manifest-").removesuffix(".tcia")
    if _BASKET_ID.fullmatch(basket) is None:
        raise InputError(f"not a usable databasketId: {_show(database_id)}")
    header = [
        f"downloadServerUrl={DOWNLOAD_SERVER_URL}",
        "includeAnnotation=true",
        "noOfrRetry=4",
        f"databasketId=manifest-{basket}.tcia",
        "manifestVersion=3.0",
        "ListOfSeriesToDownload=",
    ]
    return "\n".join([*header, *checked]) + "\n"


def _row_uid(row: str | Mapping[str, object]) -> str:
    if isinstance(row, str):
        return row
    for key, value in row.items():
        if _column_key(key) in _UID_COLUMNS and isinstance(value, str):
            return value
    raise InputError(f"row has no {SERIES_UID}: {_show(str(dict(row)))}")


def write_csv(rows: Iterable[str | Mapping[str, object]], columns: Sequence[str] = ()) -> str:
    """A CSV manifest: a ``SeriesInstanceUID`` column, then ``columns`` taken from each row.

    ``rows`` are UID strings or mappings holding the UID under ``SeriesInstanceUID`` (or another
    spelling, such as ``Series UID``); a row missing a column gets an empty cell, None is written
    empty. A UID's later rows are dropped, so the file reads back to the de-duplicated list.

    Raises:
        InputError: a row has no SeriesInstanceUID or it is not a valid UID.
    """
    others = [c for c in dict.fromkeys(columns) if _column_key(c) not in _UID_COLUMNS]
    out = io.StringIO()
    # CRLF (csv's default, RFC 4180) also makes the writer quote a lone CR inside a value.
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow([SERIES_UID, *others])
    seen: set[str] = set()
    for row in rows:
        uid = check_uid(_row_uid(row), SERIES_UID)
        if uid in seen:
            continue
        seen.add(uid)
        values = [None if isinstance(row, str) else row.get(c) for c in others]
        writer.writerow([uid, *("" if v is None else str(v) for v in values)])
    return out.getvalue()
