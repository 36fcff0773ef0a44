"""Output layout: DICOM header values + a path template -> a safe, relative POSIX path.

The pipeline places each file at ``DIR / layout.render(values)``, where ``values`` maps DICOM
keywords (``PatientID``, ``SeriesInstanceUID``, ``SOPInstanceUID``...) and TCIA names
(``Collection``...) to strings read from the file's header and the series record. Whatever the
values hold, the rendered path stays inside ``DIR``: every component is sanitized. Pure: no I/O.

Template grammar::

    template    := component ("/" component)*
    component   := (literal | placeholder)+          never empty, never "." or ".."
    placeholder := "{" Keyword ("|" filter)* "}"      Keyword: [A-Za-z][A-Za-z0-9_]*
    filter      := name | name "(" argument ")"       argument: any text but ")", "{", "}"
    literal     := text, with "{{" and "}}" for literal braces

Literal text (and the text a filter writes: ``default``, ``prefix``, ``suffix``, ``replace``'s
replacement, ``date``'s format) may not hold ``\\``, control or bidi characters, or ``<>:"|?*``;
a component may not start with ``.``, end with ``.`` or a space, or be a Windows device name.
:meth:`Layout.parse` raises :class:`~bulkdl.errors.InputError` naming the template and the
column of the first problem.

Keywords are DICOM keywords (study, series and instance level, read from each file's header)
and TCIA's fields (``Collection``...), plus one derived value: ``collection_id``, IDC's name for
a collection, ``Collection`` through the ``snake`` filter (``LIDC-IDRI`` -> ``lidc_idri``).

Filters run left to right on the value (DICOM padding, i.e. surrounding spaces and NULs, is
stripped first). An empty value passes through every filter unchanged except ``default``:

- ``last(N)``: the last N characters; ``{SeriesInstanceUID|last(5)}``: ``1.2.3.45678`` -> ``45678``
- ``first(N)``: the first N characters (truncate); ``{Modality|first(2)}``: ``CTX`` -> ``CT``
- ``date(FMT)``: a DICOM date (``YYYYMMDD``; ``YYYY-MM-DD`` and ``YYYY.MM.DD`` too) written with
  ``%Y %y %m %d %j %b %B %%`` (English month names, whatever the locale); a value that is not
  a date is kept. ``{StudyDate|date(%m-%d-%Y)}``: ``20000101`` -> ``01-01-2000``
- ``default(TEXT)``: TEXT when the value is empty; ``default()`` keeps it empty (no fallback).
  ``{StudyID|default(NA)}``: ``""`` -> ``NA``
- ``omit(TEXT)``: empty when the value is exactly TEXT. ``{StudyID|omit(null)}``: ``null`` -> ``""``
- ``lower``, ``upper``: ``{Modality|lower}``: ``CT`` -> ``ct``
- ``snake``: lower case, every run of other characters than letters and digits one ``_``.
  ``{Collection|snake}``: ``NSCLC Radiomics-Genomics`` -> ``nsclc_radiomics_genomics``
- ``int``: a decimal number cut to its integer part; anything else is kept.
  ``{SeriesNumber|int}``: ``500.000000`` -> ``500``
- ``decimal(N)``: a number written with N decimals (rounded half up); anything else is kept.
  ``{SeriesNumber|decimal(6)}``: ``3000566`` -> ``3000566.000000``
- ``pad(N)``: an integer zero-padded to N digits; anything else is kept.
  ``{InstanceNumber|pad(4)}``: ``7`` -> ``0007``
- ``padmax``: an integer (leading zeros and ``+`` dropped) zero-padded to the width of the
  longest such value of the same placeholder across the file's series: with instance numbers
  1 to 133, ``{InstanceNumber|padmax}``: ``7`` -> ``007``; with 1 to 1,200, ``0007``. The
  widths are series-wide values: :meth:`Layout.series_context` measures them over a series'
  files before each file is rendered (rendered without that context, the width is the value's
  own). Anything but an integer is kept.
- ``prefix(TEXT)``, ``suffix(TEXT)``: TEXT before / after a non-empty value.
  ``{StudyID|default()|suffix(-)}``: ``""`` -> ``""``, ``42`` -> ``42-``
- ``replace(OLD,NEW)``: every OLD (up to the first comma) by NEW.
  ``{SeriesDescription|replace(/,-)}``: ``a/b`` -> ``a-b``

Fallback: a placeholder whose value is missing, empty or all padding renders as ``unknown``
(:data:`FALLBACK`) unless it has a ``default`` filter, whose text (possibly empty) is used.
So the NBIA Data Retriever's "drop an empty part with its dash" is
``{StudyID|default()|suffix(-)}``.

Presets (:data:`PRESETS`): ``default``, ``nbia-classic`` and ``nbia-descriptive`` (the NBIA Data
Retriever's two layouts), ``idc`` (Imaging Data Commons' default) and ``flat``. The descriptive
one follows the Data Retriever's rules: ``<StudyDate MM-dd-yyyy>-<StudyID>-<StudyDescription cut
to 53>-<last 5 of StudyInstanceUID>`` and ``<SeriesNumber>-<SeriesDescription cut to
53>-<last 5 of SeriesInstanceUID>``, where an empty part (or one reading ``null``, as Java
prints a missing value) is dropped with its dash and ``/`` in a description becomes ``-`` (a
description that is then just ``-`` is dropped); NBIA sends SeriesNumber as a decimal, so it is
written with 6 decimals (``3000566.000000``); files are ``<AcquisitionNumber>-<InstanceNumber>
.dcm`` with each number zero-padded to the width of its series maximum, as NBIA names them
(``1-001.dcm``). ``NA`` in the Data Retriever's real paths (``01-01-2000-NA-NA-30178``) is a
value the archive holds, not something the rule writes: an empty StudyID is dropped, a StudyID
of ``NA`` is kept. Where the Data Retriever would make a nested folder (a ``/`` in a StudyID)
this preset writes ``-`` as for descriptions.

Sanitization: every rendered component goes through :func:`~bulkdl.sanitize.sanitize_component`
(rules in :mod:`bulkdl.sanitize`), so whatever the values hold the path stays inside ``DIR``.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from pathlib import PurePosixPath
from types import MappingProxyType
from typing import Final

from bulkdl.errors import InputError
from bulkdl.sanitize import (
    EXTENSION,
    FALLBACK,
    MAX_COMPONENT_BYTES,
    dedupe_name,
    is_unsafe,
    sanitize_component,
    sanitize_within,
)

__all__ = [
    "FALLBACK",
    "MAX_COMPONENT_BYTES",
    "PRESETS",
    "Layout",
    "SeriesContext",
    "dedupe_name",
    "resolve_layout",
    "sanitize_component",
]

PRESETS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "default": "{PatientID}/{StudyInstanceUID}/{SeriesInstanceUID}/{SOPInstanceUID}.dcm",
        "nbia-classic": (
            "{Collection}/{PatientID}/{StudyInstanceUID}/{SeriesInstanceUID}/{SOPInstanceUID}.dcm"
        ),
        "nbia-descriptive": (
            "{Collection}/{PatientID}/"
            "{StudyDate|date(%m-%d-%Y)|default()|suffix(-)}"
            "{StudyID|replace(/,-)|omit(null)|default()|suffix(-)}"
            "{StudyDescription|replace(/,-)|omit(null)|omit(-)|first(53)|default()|suffix(-)}"
            "{StudyInstanceUID|last(5)}/"
            "{SeriesNumber|decimal(6)|omit(null)|default()|suffix(-)}"
            "{SeriesDescription|replace(/,-)|omit(null)|omit(-)|first(53)|default()|suffix(-)}"
            "{SeriesInstanceUID|last(5)}/"
            "{AcquisitionNumber|padmax}-{InstanceNumber|padmax}.dcm"
        ),
        "idc": (
            "{collection_id}/{PatientID}/{StudyInstanceUID}/{Modality}_{SeriesInstanceUID}"
            "/{SOPInstanceUID}.dcm"
        ),
        "flat": "{SeriesInstanceUID}/{SOPInstanceUID}.dcm",
    }
)

_KEYWORD = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_FILTER_NAME = re.compile(r"[a-z]+")
_DICOM_DATE = re.compile(r"(\d{4})([-.]?)(\d{2})\2(\d{2})")
_NUMBER = re.compile(r"([+-]?)(\d*)(?:\.(\d*))?")
_INTEGER = re.compile(r"[+-]?\d+")
_SIGNED_DIGITS = re.compile(r"([+-]?)(\d+)")
_NOT_WORD = re.compile(r"[\W_]+")
_MAX_DECIMALS = 20
_MONTHS = (
    *("January", "February", "March", "April", "May", "June", "July"),
    *("August", "September", "October", "November", "December"),
)
_PADDING = " \x00"


# --- filters -----------------------------------------------------------------------------------

Apply = Callable[[str], str]


def _format_date(value: str, tokens: tuple[str, ...]) -> str:
    match = _DICOM_DATE.fullmatch(value)
    if match is None:
        return value
    try:
        day = date(int(match[1]), int(match[3]), int(match[4]))
    except ValueError:
        return value
    fields = {
        "%Y": f"{day.year:04d}",
        "%y": f"{day.year % 100:02d}",
        "%m": f"{day.month:02d}",
        "%d": f"{day.day:02d}",
        "%j": f"{day.timetuple().tm_yday:03d}",
        "%b": _MONTHS[day.month - 1][:3],
        "%B": _MONTHS[day.month - 1],
        "%%": "%",
    }
    return "".join(fields.get(token, token) for token in tokens)


def _to_int(value: str) -> str:
    match = _NUMBER.fullmatch(value)
    if match is None or not (match[2] or match[3]):
        return value
    digits = match[2].lstrip("0") or "0"
    return f"-{digits}" if match[1] == "-" and digits != "0" else digits


def _pad(value: str, width: int) -> str:
    return value.zfill(width) if _INTEGER.fullmatch(value) else value


def _decimal(value: str, places: int) -> str:
    match = _NUMBER.fullmatch(value)
    if match is None or not (match[2] or match[3]):
        return value
    try:
        number = Decimal(value).quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)
    except InvalidOperation:  # more digits than Decimal's precision: keep it as written
        return value
    return f"{abs(number) if number.is_zero() else number:f}"


def _integer_text(value: str) -> str | None:
    """An integer without leading zeros or '+' (``"+007"`` -> ``"7"``); None for anything else.
    By regex, not int(): a hostile 5,000-digit value must not raise."""
    match = _SIGNED_DIGITS.fullmatch(value)
    if match is None:
        return None
    digits = match[2].lstrip("0") or "0"
    return f"-{digits}" if match[1] == "-" and digits != "0" else digits


def _pad_to(value: str, width: int) -> str:
    text = _integer_text(value)
    return value if text is None else text.zfill(width)


def _snake(value: str) -> str:
    return _NOT_WORD.sub("_", value.lower()).strip("_")


#: Values computed from another when the values given lack them: keyword -> (source, how).
_DERIVED: Final[Mapping[str, tuple[str, Callable[[str], str]]]] = MappingProxyType(
    {"collection_id": ("Collection", _snake)}
)


def _non_empty(apply: Apply) -> Apply:
    """Most filters leave an empty value empty, so the fallback can still apply after them."""
    return lambda value: apply(value) if value else value


@dataclass(frozen=True, slots=True)
class _Filter:
    name: str
    argument: str | None
    apply: Apply


Values = Mapping[str, str | bytes | None]


@dataclass(frozen=True, slots=True)
class _Placeholder:
    keyword: str
    filters: tuple[_Filter, ...]
    keeps_empty: bool  # has a default filter: its text, even empty, replaces the fallback
    index: int  # its position in the template: the key of its series-wide width

    @property
    def series_wide(self) -> bool:
        return any(step.name == "padmax" for step in self.filters)

    def value(self, values: Values) -> str:
        raw = values.get(self.keyword)
        if raw is None and self.keyword in _DERIVED:
            source, derive = _DERIVED[self.keyword]
            base = values.get(source)
            if isinstance(base, bytes):
                base = base.decode("utf-8", "surrogateescape")
            raw = derive(base.strip(_PADDING)) if base else None
        if isinstance(raw, bytes):
            raw = raw.decode("utf-8", "surrogateescape")
        return (raw or "").strip(_PADDING)

    def width(self, values: Values) -> int | None:
        """The width of the value as it reaches ``padmax`` (None: not an integer there)."""
        value = self.value(values)
        for step in self.filters:
            if step.name == "padmax":
                text = _integer_text(value)
                return None if text is None else len(text)
            value = step.apply(value)
        return None

    def render(self, values: Values, width: int | None = None) -> str:
        value = self.value(values)
        for step in self.filters:
            if step.name == "padmax":
                value = _pad_to(value, width or 0) if value else value
            else:
                value = step.apply(value)
        return value if value or self.keeps_empty else FALLBACK


@dataclass(frozen=True, slots=True)
class _Component:
    parts: tuple[str | _Placeholder, ...]  # sanitized as one text
    extension: str  # a literal ".ext" kept out of the sanitized text, so marks go before it


class _Parser:
    """One template, read once; every error names the template and a 1-based column."""

    def __init__(self, template: str) -> None:
        self.template = template
        self.placeholders = 0

    def error(self, column: int, problem: str) -> InputError:
        return InputError(f"layout template {self.template!r}: {problem} (column {column})")

    def check_literal(self, text: str, column: int, what: str = "literal text") -> None:
        for offset, char in enumerate(text):
            if char == "/" and what != "literal text":
                raise self.error(column + offset, f"'/' is not allowed in {what}")
            if char != "/" and is_unsafe(char):
                raise self.error(column + offset, f"{char!r} is not allowed in {what}")

    def parse(self) -> tuple[_Component, ...]:
        text = self.template
        if not text:
            raise self.error(1, "the template is empty")
        if text.startswith("/"):
            raise self.error(1, "the template must be a relative path, not absolute")
        components: list[_Component] = []
        parts: list[tuple[int, str | _Placeholder]] = []
        literal: list[str] = []
        literal_start = start = 1
        index = 0

        def flush() -> None:
            if literal:
                parts.append((literal_start, unicodedata.normalize("NFC", "".join(literal))))
                literal.clear()

        while index < len(text):
            char, column = text[index], index + 1
            if char == "/" or (char in "{}" and text[index + 1 : index + 2] != char):
                flush()
                if char == "/":
                    components.append(self.component(parts, start))
                    parts, start = [], column + 1
                elif char == "}":
                    raise self.error(column, "unbalanced '}' (write '}}' for a literal brace)")
                else:
                    end = text.find("}", index + 1)
                    nested = text.find("{", index + 1)
                    if end < 0:
                        raise self.error(column, "unbalanced '{' (write '{{' for a literal brace)")
                    if 0 <= nested < end:
                        raise self.error(nested + 1, "'{' inside a placeholder")
                    parts.append((column, self.placeholder(text[index + 1 : end], column + 1)))
                    index = end
                index += 1
                continue
            if not literal:
                literal_start = column
            self.check_literal(char, column)
            literal.append(char)
            index += 2 if char in "{}" else 1
        flush()
        components.append(self.component(parts, start))
        return tuple(components)

    def component(self, parts: list[tuple[int, str | _Placeholder]], column: int) -> _Component:
        if not parts:
            raise self.error(column, "empty path component")
        first, last = parts[0][1], parts[-1][1]
        if len(parts) == 1 and first in (".", ".."):
            raise self.error(column, f"{first!r} is not allowed as a path component")
        if isinstance(first, str) and first.startswith("."):
            raise self.error(column, "a path component may not start with '.'")
        if isinstance(last, str) and last.endswith((".", " ")):
            end = parts[-1][0] + len(last) - 1
            raise self.error(end, "a path component may not end with '.' or a space")
        if len(parts) == 1 and isinstance(first, str) and sanitize_component(first) != first:
            raise self.error(column, f"{first!r} is not a portable file or folder name")
        items = [part for _, part in parts]
        match = EXTENSION.search(last) if isinstance(last, str) else None
        if match is None or (len(items) == 1 and match.start() == 0):
            return _Component(tuple(items), "")
        stem = last[: match.start()] if isinstance(last, str) else ""
        return _Component(tuple(items[:-1] + ([stem] if stem else [])), match.group())

    def placeholder(self, body: str, column: int) -> _Placeholder:
        match = _KEYWORD.match(body)
        if not body:
            raise self.error(column - 1, "empty placeholder '{}'")
        if match is None:
            raise self.error(column, "a placeholder must start with a DICOM keyword")
        filters: list[_Filter] = []
        index = match.end()
        while index < len(body):
            if body[index] != "|":
                raise self.error(column + index, "expected '|' or '}' after the keyword or filter")
            name_match = _FILTER_NAME.match(body, index + 1)
            if name_match is None:
                raise self.error(column + index + 1, "expected a filter name after '|'")
            name, index = name_match.group(), name_match.end()
            argument: str | None = None
            argument_column = column + index + 1
            if body[index : index + 1] == "(":
                close = body.find(")", index + 1)
                if close < 0:
                    raise self.error(column + index, "unclosed '(' in a filter argument")
                argument, index = body[index + 1 : close], close + 1
            filters.append(
                self.filter(name, argument, column + name_match.start(), argument_column)
            )
        keeps_empty = any(f.name == "default" for f in filters)
        self.placeholders += 1
        return _Placeholder(match.group(), tuple(filters), keeps_empty, self.placeholders - 1)

    def count(self, name: str, argument: str | None, column: int, top: int) -> int:
        if argument is None or not argument.isascii() or not argument.isdigit():
            raise self.error(column, f"filter {name!r} needs a whole number, e.g. {name}(5)")
        number = int(argument)
        if not 1 <= number <= top:
            raise self.error(column, f"filter {name!r} needs a number from 1 to {top}")
        return number

    def filter(self, name: str, argument: str | None, column: int, at: int) -> _Filter:
        """Compile one filter; ``column`` is its name's, ``at`` its argument's."""
        apply: Apply
        needs_argument = {
            *("last", "first", "pad", "date", "default", "prefix", "suffix", "replace"),
            *("omit", "decimal"),
        }
        if name in needs_argument and argument is None:
            raise self.error(column, f"filter {name!r} needs an argument in parentheses")
        if name in ("lower", "upper", "int", "snake", "padmax") and argument is not None:
            raise self.error(at - 1, f"filter {name!r} takes no argument")
        if name == "last":
            n = self.count(name, argument, at, MAX_COMPONENT_BYTES)
            apply = _non_empty(lambda v: v[-n:])
        elif name == "first":
            n = self.count(name, argument, at, MAX_COMPONENT_BYTES)
            apply = _non_empty(lambda v: v[:n])
        elif name == "pad":
            n = self.count(name, argument, at, MAX_COMPONENT_BYTES)
            apply = _non_empty(lambda v: _pad(v, n))
        elif name == "decimal":
            n = self.count(name, argument, at, _MAX_DECIMALS)
            apply = _non_empty(lambda v: _decimal(v, n))
        elif name == "padmax":
            apply = _non_empty(lambda v: _pad_to(v, 0))  # the width comes at render time
        elif name == "omit":
            if not argument:
                raise self.error(at, "filter 'omit' needs the text to omit, e.g. omit(null)")
            unwanted = argument
            apply = lambda v: "" if v == unwanted else v  # noqa: E731
        elif name == "date":
            tokens = self.date_format(argument or "", at)
            apply = _non_empty(lambda v: _format_date(v, tokens))
        elif name in ("default", "prefix", "suffix"):
            text = unicodedata.normalize("NFC", argument or "")
            self.check_literal(text, at, f"the {name} filter's text")
            if name == "default":
                apply = lambda v: v or text  # noqa: E731
            elif name == "prefix":
                apply = _non_empty(lambda v: text + v)
            else:
                apply = _non_empty(lambda v: v + text)
        elif name == "replace":
            old, comma, new = (argument or "").partition(",")
            if not old or not comma:
                raise self.error(at, "filter 'replace' needs OLD,NEW, e.g. replace(/,-)")
            new = unicodedata.normalize("NFC", new)
            self.check_literal(new, at + len(old) + 1, "the replace filter's text")
            apply = _non_empty(lambda v: v.replace(old, new))
        elif name == "lower":
            apply = _non_empty(str.lower)
        elif name == "upper":
            apply = _non_empty(str.upper)
        elif name == "int":
            apply = _non_empty(_to_int)
        elif name == "snake":
            apply = _non_empty(_snake)
        else:
            known = (
                "date, decimal, default, first, int, last, lower, omit, pad, padmax, prefix, "
                "replace, snake, suffix, upper"
            )
            raise self.error(column, f"unknown filter {name!r} (known: {known})")
        return _Filter(name, argument, apply)

    def date_format(self, fmt: str, column: int) -> tuple[str, ...]:
        if not fmt:
            raise self.error(column, "filter 'date' needs a format, e.g. date(%Y-%m-%d)")
        tokens = re.findall(r"%.?|[^%]+", fmt, flags=re.DOTALL)
        offset = 0
        for token in tokens:
            if token.startswith("%") and token not in (
                "%Y",
                "%y",
                "%m",
                "%d",
                "%j",
                "%b",
                "%B",
                "%%",
            ):
                raise self.error(
                    column + offset,
                    f"unknown date directive {token!r} (use %Y %y %m %d %j %b %B %%)",
                )
            if not token.startswith("%"):
                self.check_literal(token, column + offset, "a date format")
            offset += len(token)
        return tuple(tokens)


# --- layouts -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SeriesContext:
    """What a template needs to know of a whole series before it renders one of its files:
    the width each ``padmax`` placeholder pads to. Build it with :meth:`Layout.series_context`."""

    widths: Mapping[int, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Layout:
    """A parsed path template; build one with :meth:`parse` or :func:`resolve_layout`."""

    template: str
    _components: tuple[_Component, ...]

    @classmethod
    def parse(cls, template: str) -> Layout:
        """Parse ``template`` (grammar in the module docstring).

        Raises :class:`~bulkdl.errors.InputError` naming the template and the column of the
        problem: unbalanced brace, empty placeholder, unknown filter or bad argument, an empty,
        absolute, ``.``/``..``, hidden or non-portable component, or a character not allowed in
        literal text (such as ``\\``).
        """
        return cls(template, _Parser(template).parse())

    def _placeholders(self) -> Iterable[_Placeholder]:
        for component in self._components:
            for part in component.parts:
                if isinstance(part, _Placeholder):
                    yield part

    @property
    def keywords(self) -> frozenset[str]:
        """The keywords the template reads, so a header reader can read only those (a derived
        value such as ``collection_id`` counts as the keyword it comes from)."""
        return frozenset(
            _DERIVED[part.keyword][0] if part.keyword in _DERIVED else part.keyword
            for part in self._placeholders()
        )

    @property
    def series_wide(self) -> bool:
        """Whether a file's path depends on its whole series (``padmax``)."""
        return any(part.series_wide for part in self._placeholders())

    def series_context(self, rows: Iterable[Values]) -> SeriesContext:
        """The series-wide values of one series, from the render values of all its files.

        Never raises. Pass the result to :meth:`render` for each file of that series.
        """
        wide = [part for part in self._placeholders() if part.series_wide]
        if not wide:
            return SeriesContext()
        widths = dict.fromkeys((part.index for part in wide), 0)
        for values in rows:
            for part in wide:
                width = part.width(values)
                if width is not None and width > widths[part.index]:
                    widths[part.index] = width
        return SeriesContext(MappingProxyType(widths))

    def render(self, values: Values, context: SeriesContext | None = None) -> PurePosixPath:
        """The relative path for one file; never raises, whatever ``values`` hold.

        Missing keywords render as the fallback (see the module docstring); every component is
        passed through :func:`sanitize_component`, so the path never leaves its root.
        ``context`` carries the series-wide values (:meth:`series_context`); without it a
        ``padmax`` number is written at its own width.
        """
        widths = context.widths if context is not None else {}
        components = []
        for component in self._components:
            text = "".join(
                part if isinstance(part, str) else part.render(values, widths.get(part.index))
                for part in component.parts
            )
            budget = MAX_COMPONENT_BYTES - len(component.extension.encode("utf-8"))
            components.append(sanitize_within(text, FALLBACK, budget) + component.extension)
        return PurePosixPath(*components)

    def __str__(self) -> str:
        return self.template


def resolve_layout(text: str) -> Layout:
    """The layout a ``--layout`` value names: a :data:`PRESETS` name or a template.

    Text without a ``{`` placeholder is taken as a preset name. Raises
    :class:`~bulkdl.errors.InputError` for an unknown preset or a template that does not parse.
    """
    name = text.strip()
    if name in PRESETS:
        return Layout.parse(PRESETS[name])
    if "{" not in text:
        known = ", ".join(sorted(PRESETS))
        raise InputError(f"unknown layout preset {text!r} (known: {known}; or give a template)")
    return Layout.parse(text)
