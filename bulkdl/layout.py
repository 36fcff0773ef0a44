"""Output layout: DICOM header values + a path template -> a safe, relative POSIX path.

The pipeline places each file at ``DIR / layout.render(values)``, where ``values`` maps DICOM
keywords (``PatientID``, ``SeriesInstanceUID``, ``SOPInstanceUID``...) and TCIA names
(``Collection``...) to strings read from the file's header and the series record. Whatever the
values hold, the rendered path stays inside ``DIR``: every component is sanitized. Pure: no I/O.

Template grammar::

    template    := component ("/" component)*
    component   := (literal | placeholder)+          never empty, never "." or ".."
    placeholder := "{" Keyword ("|" filter)* "}"      Keyword: [A-Za-z][A-Za-z0-9]*
    filter      := name | name "(" argument ")"       argument: any text but ")", "{", "}"
    literal     := text, with "{{" and "}}" for literal braces

Literal text (and the text a filter writes: ``default``, ``prefix``, ``suffix``, ``replace``'s
replacement, ``date``'s format) may not hold ``\\``, control or bidi characters, or ``<>:"|?*``;
a component may not start with ``.``, end with ``.`` or a space, or be a Windows device name.
:meth:`Layout.parse` raises :class:`~bulkdl.errors.InputError` naming the template and the
column of the first problem.

Filters run left to right on the value (DICOM padding, i.e. surrounding spaces and NULs, is
stripped first). An empty value passes through every filter unchanged except ``default``:

- ``last(N)``: the last N characters; ``{SeriesInstanceUID|last(5)}``: ``1.2.3.45678`` -> ``45678``
- ``first(N)``: the first N characters (truncate); ``{Modality|first(2)}``: ``CTX`` -> ``CT``
- ``date(FMT)``: a DICOM date (``YYYYMMDD``; ``YYYY-MM-DD`` and ``YYYY.MM.DD`` too) written with
  ``%Y %y %m %d %j %b %B %%`` (English month names, whatever the locale); a value that is not
  a date is kept. ``{StudyDate|date(%m-%d-%Y)}``: ``20000101`` -> ``01-01-2000``
- ``default(TEXT)``: TEXT when the value is empty; ``default()`` keeps it empty (no fallback).
  ``{StudyID|default(NA)}``: ``""`` -> ``NA``
- ``lower``, ``upper``: ``{Modality|lower}``: ``CT`` -> ``ct``
- ``int``: a decimal number cut to its integer part; anything else is kept.
  ``{SeriesNumber|int}``: ``500.000000`` -> ``500``
- ``pad(N)``: an integer zero-padded to N digits; anything else is kept.
  ``{InstanceNumber|pad(4)}``: ``7`` -> ``0007``
- ``prefix(TEXT)``, ``suffix(TEXT)``: TEXT before / after a non-empty value.
  ``{StudyID|default()|suffix(-)}``: ``""`` -> ``""``, ``42`` -> ``42-``
- ``replace(OLD,NEW)``: every OLD (up to the first comma) by NEW.
  ``{SeriesDescription|replace(/,-)}``: ``a/b`` -> ``a-b``

Fallback: a placeholder whose value is missing, empty or all padding renders as ``unknown``
(:data:`FALLBACK`) unless it has a ``default`` filter, whose text (possibly empty) is used.
So the NBIA Data Retriever's "drop an empty part with its dash" is
``{StudyID|default()|suffix(-)}``.

Sanitization (:func:`sanitize_component`, applied to every rendered component): invalid UTF-8
bytes become U+FFFD; text is NFC-normalized; ``/``, ``\\``, control characters (C0, DEL, C1),
line/paragraph separators, bidi controls (U+200E/F, U+061C, U+202A-E, U+2066-9) and ``<>:"|?*``
become ``_``; leading dots and trailing dots and spaces become ``_``; Windows device names
(``CON``, ``PRN``, ``AUX``, ``NUL``, ``COM1-9``, ``LPT1-9``, ``CONIN$``, ``CONOUT$``, also with an
extension, any case) get a leading ``_``; other letters and emoji are kept. Whenever this changed
the value, or it had to be cut to 255 UTF-8 bytes (on a character boundary), ``~`` and 8 hex
digits of the SHA-256 of the raw value are appended (before a literal ``.ext`` the template puts
at the end of a component), so two different raw values never share a component. A clean value
is kept exactly, unless it already ends in ``~`` + 8 hex digits (that form is reserved for
changed values, so it is marked too). An empty value becomes the fallback, marked the same way.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date
from pathlib import PurePosixPath
from types import MappingProxyType
from typing import Final

from bulkdl.errors import InputError

#: What a missing or empty value renders as (see the module docstring).
FALLBACK: Final = "unknown"
#: Longest component, in UTF-8 bytes, that common filesystems (ext4, APFS, NTFS) accept.
MAX_COMPONENT_BYTES: Final = 255

PRESETS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "default": "{PatientID}/{StudyInstanceUID}/{SeriesInstanceUID}/{SOPInstanceUID}.dcm",
        "nbia-classic": (
            "{Collection}/{PatientID}/{StudyInstanceUID}/{SeriesInstanceUID}/{SOPInstanceUID}.dcm"
        ),
        "idc": (
            "{Collection}/{PatientID}/{StudyInstanceUID}/{Modality}_{SeriesInstanceUID}"
            "/{SOPInstanceUID}.dcm"
        ),
        "flat": "{SeriesInstanceUID}/{SOPInstanceUID}.dcm",
    }
)

_HASH_HEX = 8
_MARK_BYTES = 1 + _HASH_HEX  # "~" + hex
_MARKED = re.compile(r"~[0-9a-f]{8}\Z")
_BIDI = frozenset("\u200e\u200f\u061c\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_WINDOWS_INVALID = frozenset('<>:"|?*')
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cs", "Zl", "Zp"})
_RESERVED = frozenset(
    ["CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"]
    + [
        f"{port}{n}"
        for port in ("COM", "LPT")
        for n in [*"123456789", "\u00b9", "\u00b2", "\u00b3"]
    ]
)
_KEYWORD = re.compile(r"[A-Za-z][A-Za-z0-9]*")
_FILTER_NAME = re.compile(r"[a-z]+")
_EXTENSION = re.compile(r"\.[A-Za-z0-9]{0,15}[A-Za-z][A-Za-z0-9]{0,15}\Z")
_DICOM_DATE = re.compile(r"(\d{4})([-.]?)(\d{2})\2(\d{2})")
_NUMBER = re.compile(r"([+-]?)(\d*)(?:\.(\d*))?")
_INTEGER = re.compile(r"[+-]?\d+")
_MONTHS = (
    *("January", "February", "March", "April", "May", "June", "July"),
    *("August", "September", "October", "November", "December"),
)
_PADDING = " \x00"


# --- sanitization ------------------------------------------------------------------------------


def _raw_bytes(text: str) -> bytes:
    """The bytes a str stands for: surrogate escapes give back the bytes they came from."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")


def _unsafe(char: str) -> bool:
    return (
        char in "/\\"
        or char in _WINDOWS_INVALID
        or char in _BIDI
        or unicodedata.category(char) in _UNSAFE_CATEGORIES
    )


def _clean(text: str) -> str:
    """Apply every sanitization rule except the length limit and the mark."""
    text = "".join("\ufffd" if unicodedata.category(c) == "Cs" else c for c in text)
    text = unicodedata.normalize("NFC", text)
    text = "".join("_" if _unsafe(c) else c for c in text)
    body = text.lstrip(".")
    text = "_" * (len(text) - len(body)) + body
    body = text.rstrip(". ")
    text = body + "_" * (len(text) - len(body))
    if text.split(".", 1)[0].rstrip(" ").upper() in _RESERVED:
        text = "_" + text
    return text


def _cut(text: str, budget: int) -> str:
    """``text`` cut to at most ``budget`` UTF-8 bytes, on a character boundary."""
    return text.encode("utf-8")[:budget].decode("utf-8", "ignore")


def _sanitize(raw: str | bytes, fallback: str, budget: int) -> str:
    if isinstance(raw, bytes):
        data, text = raw, raw.decode("utf-8", "surrogateescape")
    else:
        data, text = _raw_bytes(raw), raw
    if text:
        cleaned = _clean(text)
        if (
            cleaned == text
            and _MARKED.search(text) is None
            and len(cleaned.encode("utf-8")) <= budget
        ):
            return cleaned
    else:
        cleaned = _clean(fallback) if fallback else FALLBACK
    digest = hashlib.sha256(data).hexdigest()[:_HASH_HEX]
    return f"{_cut(cleaned, budget - _MARK_BYTES)}~{digest}"


def sanitize_component(raw: str | bytes, fallback: str = FALLBACK) -> str:
    """``raw`` made safe as one path component on Linux, macOS and Windows; never raises.

    The rules are the module docstring's. A clean value comes back unchanged; any other value
    comes back marked with ``~`` and 8 hex digits of the SHA-256 of ``raw`` (of its UTF-8 bytes
    for a str), so two different values never give the same component. An empty ``raw`` gives
    ``fallback`` (itself cleaned), marked like any changed value: ``unknown~e3b0c442``.
    The result is non-empty, at most 255 UTF-8 bytes, and never ``.`` or ``..``.
    """
    return _sanitize(raw, fallback, MAX_COMPONENT_BYTES)


def dedupe_name(name: str, key: str) -> str:
    """``name`` with a deterministic suffix for a second instance that maps to the same path.

    Gives ``stem~<8 hex of sha256(key)>.ext`` (the extension kept when it has a letter, as in
    ``.dcm``), cut to 255 UTF-8 bytes. ``key`` is the instance's SOPInstanceUID, so reruns choose
    the same name. ``name`` should be a rendered (sanitized) component. Never raises.
    """
    match = _EXTENSION.search(name)
    ext = match.group() if match and match.start() > 0 else ""
    stem = name[: len(name) - len(ext)]
    digest = hashlib.sha256(_raw_bytes(key)).hexdigest()[:_HASH_HEX]
    budget = MAX_COMPONENT_BYTES - _MARK_BYTES - len(ext.encode("utf-8"))
    return f"{_cut(stem, budget)}~{digest}{ext}"


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


def _non_empty(apply: Apply) -> Apply:
    """Most filters leave an empty value empty, so the fallback can still apply after them."""
    return lambda value: apply(value) if value else value


@dataclass(frozen=True, slots=True)
class _Filter:
    name: str
    argument: str | None
    apply: Apply


@dataclass(frozen=True, slots=True)
class _Placeholder:
    keyword: str
    filters: tuple[_Filter, ...]
    keeps_empty: bool  # has a default filter: its text, even empty, replaces the fallback

    def render(self, values: Mapping[str, str | bytes | None]) -> str:
        raw = values.get(self.keyword)
        if isinstance(raw, bytes):
            raw = raw.decode("utf-8", "surrogateescape")
        value = (raw or "").strip(_PADDING)
        for step in self.filters:
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

    def error(self, column: int, problem: str) -> InputError:
        return InputError(f"layout template {self.template!r}: {problem} (column {column})")

    def check_literal(self, text: str, column: int, what: str = "literal text") -> None:
        for offset, char in enumerate(text):
            if char == "/" and what != "literal text":
                raise self.error(column + offset, f"'/' is not allowed in {what}")
            if char != "/" and _unsafe(char):
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
        match = _EXTENSION.search(last) if isinstance(last, str) else None
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
        return _Placeholder(match.group(), tuple(filters), keeps_empty)

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
        needs_argument = {"last", "first", "pad", "date", "default", "prefix", "suffix", "replace"}
        if name in needs_argument and argument is None:
            raise self.error(column, f"filter {name!r} needs an argument in parentheses")
        if name in ("lower", "upper", "int") and argument is not None:
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
        else:
            known = "date, default, first, int, last, lower, pad, prefix, replace, suffix, upper"
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

    @property
    def keywords(self) -> frozenset[str]:
        """The keywords the template reads, so a header reader can read only those."""
        return frozenset(
            part.keyword
            for component in self._components
            for part in component.parts
            if isinstance(part, _Placeholder)
        )

    def render(self, values: Mapping[str, str | bytes | None]) -> PurePosixPath:
        """The relative path for one file; never raises, whatever ``values`` hold.

        Missing keywords render as the fallback (see the module docstring); every component is
        passed through :func:`sanitize_component`, so the path never leaves its root.
        """
        components = []
        for component in self._components:
            text = "".join(
                part if isinstance(part, str) else part.render(values) for part in component.parts
            )
            budget = MAX_COMPONENT_BYTES - len(component.extension.encode("utf-8"))
            components.append(_sanitize(text, FALLBACK, budget) + component.extension)
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
