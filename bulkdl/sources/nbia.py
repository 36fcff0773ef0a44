"""NBIA REST API, sans I/O: the endpoint table, request builders, base URLs and response parsers.

Everything here is pure: requests are built as values (method, URL, query, form) that the HTTP
layer sends, and responses are parsed from bytes. The endpoint table is strict because the real
server is: it answers 400 to any query parameter an endpoint does not list, so a request with an
unknown or missing parameter is refused here (:class:`InputError`) before the server sees it.
Rows are turned into the typed records of :mod:`bulkdl.records` through ``KEYWORD_OF``, so v1/v2
column names (``TimeStamp``, ``CollectionURI``...) land on the same fields as v4's.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from functools import lru_cache, partial
from typing import Any, Final, Literal, TypeVar, cast
from urllib.parse import urlencode, urlsplit

from bulkdl.errors import InputError, ResponseError
from bulkdl.records import KEYWORD_OF, Patient, Series, SeriesSize, Study

# --------------------------------------------------------------------------- endpoints

Method = Literal["GET", "POST"]
ParamValue = str | int | date | bool | None
Row = dict[str, str]


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One NBIA endpoint: its HTTP method, the parameters it accepts, and which are required."""

    name: str
    method: Method
    params: frozenset[str]
    required: frozenset[str] = frozenset()

    @property
    def form(self) -> bool:
        """True when the parameters travel as a urlencoded form body (POST), not in the query."""
        return self.method == "POST"


def _ep(name: str, params: str, required: str = "", method: Method = "GET") -> Endpoint:
    return Endpoint(name, method, frozenset(params.split()), frozenset(required.split()))


_SERIES_FILTERS = (
    "Collection PatientID StudyInstanceUID SeriesInstanceUID Modality BodyPartExamined "
    "Manufacturer ManufacturerModelName"
)

#: Every endpoint bulkdl calls, as the server code (not the OpenAPI file) defines it.
ENDPOINTS: Final[Mapping[str, Endpoint]] = {
    e.name: e
    for e in (
        _ep("getCollectionValues", "format"),
        _ep("getModalityValues", "Collection BodyPartExamined format"),
        _ep("getBodyPartValues", "Collection Modality format"),
        _ep("getManufacturerValues", "Collection Modality BodyPartExamined format"),
        _ep("getPatient", "Collection PatientId format"),
        _ep(
            "getPatientByCollectionAndModality", "Collection Modality format", "Collection Modality"
        ),
        _ep("getPatientStudy", "Collection PatientID StudyInstanceUID format", "Collection"),
        _ep("NewPatientsInCollection", "Collection fromDate format", "Collection fromDate"),
        _ep(
            "NewStudiesInPatientCollection",
            "Collection PatientID fromDate format",
            "Collection fromDate",
        ),
        _ep("getSeries", _SERIES_FILTERS + " format"),
        _ep("getUpdatedSeries", "fromDate format", "fromDate"),
        _ep("getSeriesSize", "SeriesInstanceUID format", "SeriesInstanceUID"),
        _ep("getSOPInstanceUIDs", "SeriesInstanceUID format", "SeriesInstanceUID"),
        _ep("getImage", "SeriesInstanceUID NewFileNames IncludeMD5", "SeriesInstanceUID"),
        _ep("getImageWithMD5Hash", "SeriesInstanceUID", "SeriesInstanceUID"),
        _ep("getSeriesMetadata", "list format", "list", method="POST"),
    )
}


@dataclass(frozen=True, slots=True)
class ApiRequest:
    """A request ready to send: ``params`` go in the query string, ``form`` in a POST body."""

    endpoint: str
    method: Method
    url: str
    params: Mapping[str, str]
    form: Mapping[str, str] | None = None

    @property
    def display_url(self) -> str:
        """The URL with its query, for messages (NBIA queries carry no credentials)."""
        return f"{self.url}?{urlencode(dict(self.params))}" if self.params else self.url


def format_date(value: date) -> str:
    """A date as NBIA wants it in queries: ``MM-DD-YYYY``."""
    return f"{value.month:02d}-{value.day:02d}-{value.year:04d}"


def _param_text(name: str, value: str | int | date | bool) -> str:
    if isinstance(value, bool):
        return "Yes" if value else "No"
    if isinstance(value, date):
        return format_date(value)
    return str(value)


def build_request(
    base_url: str, endpoint: str, params: Mapping[str, ParamValue] | None = None
) -> ApiRequest:
    """Build the request for ``endpoint`` with ``params`` (None values dropped).

    Booleans become ``Yes``/``No`` (``False`` is dropped: ``No`` is the server's default) and
    dates ``MM-DD-YYYY``. Raises :class:`InputError` for an unknown endpoint, a parameter the
    endpoint does not take, or a missing required one.
    """
    spec = ENDPOINTS.get(endpoint)
    if spec is None:
        raise InputError(f"unknown NBIA endpoint: {endpoint!r}")
    given = {k: v for k, v in (params or {}).items() if v is not None and v is not False}
    unknown = sorted(set(given) - spec.params)
    if unknown:
        raise InputError(
            f"{endpoint} does not take {', '.join(unknown)} "
            f"(it takes {', '.join(sorted(spec.params))})"
        )
    missing = sorted(spec.required - set(given))
    if missing:
        raise InputError(f"{endpoint} needs {', '.join(missing)}")
    text = {k: _param_text(k, v) for k, v in given.items()}
    url = base_url + endpoint
    if spec.form:
        return ApiRequest(endpoint, spec.method, url, {}, text)
    return ApiRequest(endpoint, spec.method, url, text)


# --------------------------------------------------------------------------- base URLs

DEFAULT_BASE_URL: Final = "https://services.cancerimagingarchive.net/nbia-api/services/v4/"
PRESETS: Final[Mapping[str, str]] = {
    "tcia": DEFAULT_BASE_URL,
    "nlst": "https://nlst.cancerimagingarchive.net/nbia-api/services/v4/",
}
ENV_API_URL: Final = "BULKDL_API_URL"


def normalize_base_url(text: str) -> str:
    """A preset name or an http(s) URL -> a base URL ending with ``/``.

    Raises :class:`InputError` for another scheme, a missing host, or a query/fragment.
    """
    raw = text.strip()
    if raw.lower() in PRESETS:
        return PRESETS[raw.lower()]
    parts = urlsplit(raw)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise InputError(
            f"not an http(s) API URL or preset ({', '.join(PRESETS)}): {_redact_url(raw)!r}"
        )
    if parts.query or parts.fragment:
        raise InputError(f"the API URL must not carry a query or fragment: {_redact_url(raw)!r}")
    return raw if raw.endswith("/") else raw + "/"


def resolve_base_url(flag: str | None = None, env: Mapping[str, str] | None = None) -> str:
    """The base URL: ``flag``, else ``$BULKDL_API_URL``, else TCIA's v4 (InputError if bad)."""
    environ = os.environ if env is None else env
    for candidate in (flag, environ.get(ENV_API_URL)):
        if candidate is not None and candidate.strip():
            return normalize_base_url(candidate)
    return DEFAULT_BASE_URL


_VERSION_RE = re.compile(r"v[0-9]+")


def api_version(base_url: str) -> str:
    """``"v1"``, ``"v2"``, ``"v4"``... from the URL path, or ``"unversioned"``."""
    segments = [s for s in urlsplit(base_url).path.split("/") if s]
    for segment in reversed(segments):
        if _VERSION_RE.fullmatch(segment.lower()):
            return segment.lower()
    return "unversioned"


def _redact_url(url: str) -> str:
    """Drop any ``user:password@`` from a URL before it goes into a message."""
    return re.sub(r"(?<=//)[^/@]*@", "", url)


# --------------------------------------------------------------------------- parsing bodies

_EXCERPT = 80


def endpoint_of(url: str) -> str:
    """The endpoint name (last path segment) of a request URL, for messages."""
    path = urlsplit(url).path.rstrip("/")
    return path.rsplit("/", 1)[-1] or url


def _bad(url: str, why: str, body: bytes) -> ResponseError:
    excerpt = body[:_EXCERPT].decode("utf-8", "replace")
    excerpt = " ".join(excerpt.split())
    return ResponseError(
        f"{endpoint_of(url)}: {why} (body starts {excerpt!r})", url=_redact_url(url), status=200
    )


def _cell(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    return json.dumps(value, separators=(",", ":"))


def _json_rows(data: object, url: str, body: bytes) -> list[Row]:
    if data is None:
        return []
    items = data if isinstance(data, list) else [data]
    rows: list[Row] = []
    for item in items:
        if not isinstance(item, dict):
            raise _bad(url, "expected JSON objects", body)
        rows.append({str(k): c for k, v in item.items() if (c := _cell(v)) is not None})
    return rows


@dataclass(frozen=True, slots=True)
class Table:
    """A CSV answer as it came: the header and each record's fields, in the header's order
    (every record exactly as long as the header)."""

    header: tuple[str, ...]
    records: list[list[str]]

    def rows(self) -> list[Row]:
        """The records as rows of column -> text."""
        return list(map(dict, map(partial(zip, self.header), self.records)))


def _csv_table(text: str, url: str, body: bytes) -> Table:
    try:
        # strict: a quoted field still open at the end is a body cut short, not a value.
        records = [r for r in csv.reader(io.StringIO(text, newline=""), strict=True) if r]
    except csv.Error as exc:
        raise _bad(url, f"malformed CSV ({exc})", body) from exc
    if not records:
        return Table((), [])
    header = tuple(h.strip() for h in records[0])
    if not all(header) or len(set(header)) != len(header):
        raise _bad(url, "CSV header has empty or repeated names", body)
    width = len(header)
    for n, record in enumerate(records[1:], start=2):
        if len(record) > width:
            raise _bad(url, f"CSV record {n} has more fields than the header", body)
        if len(record) < width:
            # NBIA writes every field of every row; a short last row is a body cut short,
            # and taking it would invent values (ImageCount "12" of "120") or drop them.
            raise _bad(url, f"CSV record {n} has fewer fields than the header (truncated?)", body)
    return Table(header, records[1:])


def parse_answer(body: bytes, content_type: str | None, url: str) -> Table | list[Row]:
    """Parse a query endpoint's answer: a CSV answer as a :class:`Table`, a JSON one as rows of
    column -> text (absent key = null).

    A 200 with an empty body means no rows; a single JSON object where an array was expected is
    one row; quoted CSV with a header row is accepted as well as JSON. Raises
    :class:`ResponseError` naming the endpoint for anything else (an HTML error page, truncated
    JSON, bytes that are not UTF-8).
    """
    ctype = (content_type or "").split(";", 1)[0].strip().lower()
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _bad(url, "body is not UTF-8 text", body) from exc
    stripped = text.strip()
    if not stripped:
        return []
    first = stripped[0]
    if first == "<" or "html" in ctype or "xml" in ctype:
        raise _bad(url, f"expected JSON or CSV, got {ctype or 'markup'}", body)
    if first in "[{" or "json" in ctype:
        try:
            data = json.loads(stripped)
        except (ValueError, RecursionError) as exc:
            raise _bad(url, "invalid or truncated JSON", body) from exc
        return _json_rows(data, url, body)
    if "csv" in ctype or first == '"':
        return _csv_table(text, url, body)
    raise _bad(url, f"expected JSON or CSV, got {ctype or 'unlabelled text'}", body)


def parse_rows(body: bytes, content_type: str | None, url: str) -> list[Row]:
    """:func:`parse_answer` as rows of column -> text, whatever the format."""
    answer = parse_answer(body, content_type, url)
    return answer.rows() if isinstance(answer, Table) else answer


# --------------------------------------------------------------------------- values

_MAX_NUMBER_TEXT = 40


def parse_int(text: str | None) -> int | None:
    """An integer from NBIA text, defensively: ``"500.000000"`` -> 500; ``"1.5"``, junk -> None."""
    if text is None:
        return None
    s = text.strip()
    if s.isascii() and s.isdigit() and len(s) <= _MAX_NUMBER_TEXT:
        return int(s)  # the common case, without Decimal's cost
    if not s or len(s) > _MAX_NUMBER_TEXT:
        return None
    try:
        number = Decimal(s)
    except InvalidOperation:
        return None
    # The exponent check keeps "1e999999" from building a huge int.
    if not number.is_finite() or abs(number.adjusted()) > _MAX_NUMBER_TEXT:
        return None
    if number != number.to_integral_value():
        return None
    return int(number)


_DATE_FORMATS = ("%m-%d-%Y", "%Y-%m-%d", "%Y%m%d", "%m/%d/%Y")
_DATE_HEAD = re.compile(r"\s*([0-9]{1,4}[-/]?[0-9]{1,2}[-/]?[0-9]{1,4})(?:$|[ T])")


def parse_date(text: str | None) -> date | None:
    """A date from ``MM-DD-YYYY`` (NBIA), ``YYYY-MM-DD`` or ``YYYYMMDD``; a time part is ignored.

    Junk and empty text give None.
    """
    if not text:
        return None
    return _parse_date(text)


@lru_cache(maxsize=16384)
def _parse_date(text: str) -> date | None:
    # Cached: a 200,000-series answer repeats a few thousand dates, and strptime is slow.
    match = _DATE_HEAD.match(text)
    if match is None:
        return None
    for fmt in _DATE_FORMATS:
        try:
            return datetime.strptime(match.group(1), fmt).date()
        except ValueError:
            continue
    return None


_KEYWORD_CI: Final[Mapping[str, str]] = {k.lower(): v for k, v in KEYWORD_OF.items()}


def keyword_of(column: str) -> str | None:
    """bulkdl's keyword for a TCIA column name (any known spelling, case-insensitive), or None."""
    return KEYWORD_OF.get(column) or _KEYWORD_CI.get(column.strip().lower())


def normalize_row(row: Mapping[str, str]) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """Split a row into (keyword -> non-empty value, unknown columns kept as they came).

    When two spellings of one keyword are present, the first non-empty value wins.
    """
    known: dict[str, str] = {}
    unknown: list[tuple[str, str]] = []
    for column, value in row.items():
        keyword = keyword_of(column)
        if keyword is None:
            if value.strip():
                unknown.append((column, value))
        elif value.strip() and keyword not in known:
            # Interned: across 200,000 rows most values (collection, modality, licence...)
            # repeat, and one shared string each keeps the planning memory flat.
            known[keyword] = sys.intern(value.strip())
    return known, unknown


R = TypeVar("R")
V = TypeVar("V")


_FIELD_KINDS: dict[type[Any], dict[str, str]] = {}


def _field_kinds(cls: type[Any]) -> dict[str, str]:
    kinds = _FIELD_KINDS.get(cls)
    if kinds is None:
        kinds = _FIELD_KINDS[cls] = {f.name: str(f.type) for f in fields(cls)}
    return kinds


Kind = Literal["str", "int", "date", "extra", "unknown"]
# Every row of an answer has the same columns: each column's keyword and kind is worked out
# once per record class (a bounded number of columns, against hostile answers).
_COLUMN_PLANS: dict[type[Any], dict[str, tuple[str, Kind]]] = {}
_MAX_PLANNED_COLUMNS: Final = 1024
# Equal ``extra`` pairs and tuples are shared: 200,000 rows repeat a few of them.
_SHARED: dict[Any, Any] = {}
_MAX_SHARED: Final = 1 << 16


def _column_plan(cls: type[Any], column: str) -> tuple[str, Kind]:
    """(keyword, how its value is read) of ``column`` in rows of ``cls``, remembered for the
    next rows. An ``unknown`` column keeps its own name; it goes to ``extra`` as it came, as does
    a keyword ``cls`` has no field for (``extra`` kind)."""
    keyword = keyword_of(column)
    kind = _field_kinds(cls).get(keyword or "")
    plan: tuple[str, Kind]
    if keyword is None:
        plan = (column, "unknown")
    elif kind is None or keyword == "extra":
        plan = (keyword, "extra")
    elif kind.startswith("int"):
        plan = (keyword, "int")
    elif kind.startswith("date"):
        plan = (keyword, "date")
    else:
        plan = (keyword, "str")
    plans = _COLUMN_PLANS.setdefault(cls, {})
    if len(plans) < _MAX_PLANNED_COLUMNS:
        plans[column] = plan
    return plan


def _shared(value: V) -> V:
    """The object kept for a value equal to ``value``, or ``value`` itself (then kept)."""
    kept = _SHARED.get(value)
    if kept is not None:
        return cast(V, kept)
    if len(_SHARED) < _MAX_SHARED:
        _SHARED[value] = value
    return value


def _record(cls: type[R], row: Mapping[str, str], key: str, url: str | None) -> R:
    """``cls`` from a row as :func:`normalize_row` splits it: a keyword's first non-empty value
    wins; values are stripped (and interned: most repeat across rows); the unknown columns,
    then the keywords ``cls`` has no field for, go to ``extra``."""
    kwargs: dict[str, Any] = {}
    unknown: list[tuple[str, str]] = []
    others: dict[str, str] = {}
    plans = _COLUMN_PLANS.get(cls, {})
    for column, value in row.items():
        keyword, kind = plans.get(column) or _column_plan(cls, column)
        if kind == "unknown":
            if value.strip():
                unknown.append((column, value))
            continue
        if keyword in kwargs or keyword in others:
            continue
        text = value.strip()
        if not text:
            continue
        if kind == "str":
            kwargs[keyword] = sys.intern(text)
        elif kind == "int":
            kwargs[keyword] = parse_int(text)
        elif kind == "date":
            kwargs[keyword] = parse_date(text)
        else:
            others[keyword] = sys.intern(text)
    if key not in kwargs:
        raise ResponseError(
            f"{endpoint_of(url) if url else 'NBIA'}: a row has no {key}", url=url, status=200
        )
    pairs = [*unknown, *others.items()]
    kwargs["extra"] = _shared(tuple(_shared(pair) for pair in pairs)) if pairs else ()
    return cls(**kwargs)


def series_from_row(row: Mapping[str, str], url: str | None = None) -> Series:
    """A :class:`Series` from a getSeries/getUpdatedSeries/getSeriesMetadata row.

    Raises :class:`ResponseError` if the row has no SeriesInstanceUID.
    """
    return _record(Series, row, "SeriesInstanceUID", url)


_CONVERT: Final[Mapping[Kind, Callable[[str], Any]]] = {
    "str": sys.intern,
    "int": parse_int,
    "date": parse_date,
}
_SERIES_FIELDS: Final = tuple(f.name for f in fields(Series))


def series_from_rows(rows: Sequence[Mapping[str, str]], url: str | None = None) -> list[Series]:
    """:func:`series_from_row` of each row; a column at a time when every row has the same
    columns in the same order, as CSV rows do: see :func:`series_from_answer`.

    Raises :class:`ResponseError` if a row has no SeriesInstanceUID.
    """
    if not rows:
        return []
    header = tuple(rows[0])
    if any(tuple(row) != header for row in rows):
        # Rows of different shapes (JSON leaves nulls out): one row at a time.
        return [series_from_row(row, url) for row in rows]
    cells = list(zip(*[row.values() for row in rows], strict=True))
    return _series_from_columns(header, cells, url)


def series_from_answer(answer: Table | list[Row], url: str | None = None) -> list[Series]:
    """:func:`series_from_row` of each row of a :func:`parse_answer` answer. A CSV table is read
    a column at a time (a 200,000-series manifest is 200 such answers): most columns hold one
    value all the way down, which is then read once.

    Raises :class:`ResponseError` if a row has no SeriesInstanceUID.
    """
    if not isinstance(answer, Table):
        return series_from_rows(answer, url)
    if not answer.records:
        return []
    return _series_from_columns(answer.header, list(zip(*answer.records, strict=True)), url)


def _series_from_columns(
    header: tuple[str, ...], cells: list[tuple[str, ...]], url: str | None
) -> list[Series]:
    """The Series of rows given as columns (``cells[i]``: every row's text of ``header[i]``)."""
    plans = [_column_plan(Series, column) for column in header]
    sources: dict[str, list[int]] = {}
    for index, (keyword, kind) in enumerate(plans):
        if kind != "unknown":
            sources.setdefault(keyword, []).append(index)
    if any(len(i) > 1 and plans[i[0]][1] == "extra" for i in sources.values()):
        # A keyword kept in ``extra`` under two spellings: one row at a time.
        rows = map(dict, map(partial(zip, header), zip(*cells, strict=True)))
        return [series_from_row(row, url) for row in rows]
    count = len(cells[0]) if cells else 0
    stripped = [_stripped(column) for column in cells]
    columns: dict[str, list[Any]] = {}
    for keyword, indexes in sources.items():
        kind = plans[indexes[0]][1]
        if kind != "extra":
            texts = stripped[indexes[0]]
            for index in indexes[1:]:  # another spelling: the first non-empty value wins
                texts = [a or b for a, b in zip(texts, stripped[index], strict=True)]
            columns[keyword] = _converted(texts, _CONVERT[kind])
    uids = columns.get("SeriesInstanceUID")
    if uids is None or not all(uids):
        where = endpoint_of(url) if url else "NBIA"
        raise ResponseError(f"{where}: a row has no SeriesInstanceUID", url=url, status=200)
    # extra: the unknown columns as they came, then the keywords Series has no field for.
    extra: list[tuple[str, Sequence[str], list[str]]] = [
        (header[i], cells[i], stripped[i]) for i, p in enumerate(plans) if p[1] == "unknown"
    ]
    extra += [(p[0], stripped[i], stripped[i]) for i, p in enumerate(plans) if p[1] == "extra"]
    columns["extra"] = _extras(extra, count)
    absent = [None] * count
    return list(map(Series, *(columns.get(name, absent) for name in _SERIES_FIELDS)))


def _stripped(column: Sequence[str]) -> list[str]:
    """Each text stripped (once for a column holding one text all the way down)."""
    first = column[0]
    if column.count(first) == len(column):
        return [first.strip()] * len(column)
    return list(map(str.strip, column))


def _converted(texts: list[str], convert: Callable[[str], Any]) -> list[Any]:
    """``convert`` of each non-empty text, None for an empty one (once for a repeated text)."""
    first = texts[0]
    if texts.count(first) == len(texts):
        return [convert(first) if first else None] * len(texts)
    if "" not in texts:
        return list(map(convert, texts))
    return [convert(text) if text else None for text in texts]


def _extras(
    columns: Sequence[tuple[str, Sequence[str], list[str]]], count: int
) -> list[tuple[tuple[str, str], ...]]:
    """Each of ``count`` rows' ``extra``: (name, value) of each of ``columns`` (name, values,
    values stripped) where the row's stripped value is not empty, in column order."""
    if all(values.count(values[0]) == count for _, values, _ in columns):
        pairs = [(name, values[0]) for name, values, kept in columns if kept[0]]
        return [_shared(tuple(_shared(pair) for pair in pairs))] * count
    out = []
    for row in range(count):
        pairs = [(name, values[row]) for name, values, kept in columns if kept[row]]
        out.append(_shared(tuple(_shared(pair) for pair in pairs)))
    return out


def study_from_row(row: Mapping[str, str], url: str | None = None) -> Study:
    """A :class:`Study` from a getPatientStudy row; ResponseError without StudyInstanceUID."""
    return _record(Study, row, "StudyInstanceUID", url)


def patient_from_row(row: Mapping[str, str], url: str | None = None) -> Patient:
    """A :class:`Patient` from a getPatient row (``PatientId``); ResponseError without it."""
    return _record(Patient, row, "PatientID", url)


def series_size_from_rows(uid: str, rows: Sequence[Mapping[str, str]]) -> SeriesSize:
    """getSeriesSize's answer (TotalSizeInBytes/ObjectCount, or imageCount/seriesSize)."""
    known = normalize_row(rows[0])[0] if rows else {}
    return SeriesSize(uid, parse_int(known.get("ImageCount")), parse_int(known.get("FileSize")))


def column_values(rows: Iterable[Mapping[str, str]], keyword: str) -> list[str]:
    """The non-empty values of one column (any spelling of ``keyword``), in order, deduplicated."""
    seen: dict[str, None] = {}
    for row in rows:
        for column, value in row.items():
            if value.strip() and (column == keyword or keyword_of(column) == keyword):
                seen.setdefault(value.strip(), None)
                break
    return list(seen)


def sop_instance_uids(rows: Iterable[Mapping[str, str]]) -> list[str]:
    """getSOPInstanceUIDs rows -> the SOPInstanceUIDs."""
    return column_values(rows, "SOPInstanceUID")


# --------------------------------------------------------------------------- queries, batches


@dataclass(frozen=True, slots=True)
class SeriesQuery:
    """getSeries filters; the server matches each exactly (case-insensitive). None = no filter."""

    collection: str | None = None
    patient_id: str | None = None
    study_uid: str | None = None
    series_uid: str | None = None
    modality: str | None = None
    body_part: str | None = None
    manufacturer: str | None = None
    manufacturer_model: str | None = None

    def to_params(self) -> dict[str, ParamValue]:
        """The getSeries query parameters for this query (unset filters left out)."""
        pairs = {
            "Collection": self.collection,
            "PatientID": self.patient_id,
            "StudyInstanceUID": self.study_uid,
            "SeriesInstanceUID": self.series_uid,
            "Modality": self.modality,
            "BodyPartExamined": self.body_part,
            "Manufacturer": self.manufacturer,
            "ManufacturerModelName": self.manufacturer_model,
        }
        return {k: v for k, v in pairs.items() if v is not None}


DEFAULT_METADATA_BATCH: Final = 1000
#: Keeps a getSeriesMetadata form body well under the common 1-2 MB request-body limits.
MAX_FORM_CHARS: Final = 200_000


def metadata_batches(
    uids: Iterable[str], size: int = DEFAULT_METADATA_BATCH, max_chars: int = MAX_FORM_CHARS
) -> Iterator[list[str]]:
    """Chunks of at most ``size`` UIDs (and ``max_chars`` of comma-joined text), duplicates dropped.

    Raises :class:`InputError` if ``size`` or ``max_chars`` is below 1.
    """
    if size < 1 or max_chars < 1:
        raise InputError(f"batch size must be at least 1, got {size} (max_chars {max_chars})")
    batch: list[str] = []
    chars = 0
    for uid in dict.fromkeys(uids):
        cost = len(uid) + (1 if batch else 0)
        if batch and (len(batch) >= size or chars + cost > max_chars):
            yield batch
            batch, chars, cost = [], 0, len(uid)
        batch.append(uid)
        chars += cost
    if batch:
        yield batch


def metadata_form_list(uids: Sequence[str]) -> str:
    """The ``list`` form field of getSeriesMetadata: comma-separated UIDs."""
    return ",".join(uids)
