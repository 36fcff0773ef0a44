"""Path components that are safe on Linux, macOS and Windows, whatever a header or server says.

:func:`sanitize_component` is applied by :mod:`bulkdl.layout` to every rendered component (and
by the sidecars to licence file names); pure, no I/O. The rules: invalid UTF-8 bytes become
U+FFFD; text is NFC-normalized; ``/``, ``\\``, control characters (C0, DEL, C1),
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
from functools import lru_cache
from typing import Final

#: What a missing or empty value becomes.
FALLBACK: Final = "unknown"
#: Longest component, in UTF-8 bytes, that common filesystems (ext4, APFS, NTFS) accept.
MAX_COMPONENT_BYTES: Final = 255
#: A file extension at the end of a name (with a letter, as in ``.dcm``), kept after marks.
EXTENSION: Final = re.compile(r"\.[A-Za-z0-9]{0,15}[A-Za-z][A-Za-z0-9]{0,15}\Z")

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
#: Printable ASCII but ``/ \\ < > : " | ? *``: characters every rule lets through unchanged.
_PLAIN = re.compile(r"[ !#-)+-.0-9;=@-\[\]-{}~]*")


def _raw_bytes(text: str) -> bytes:
    """The bytes a str stands for: surrogate escapes give back the bytes they came from."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")


def is_unsafe(char: str) -> bool:
    """Whether ``char`` may never appear in a path component (it becomes ``_``)."""
    return (
        char in "/\\"
        or char in _WINDOWS_INVALID
        or char in _BIDI
        or unicodedata.category(char) in _UNSAFE_CATEGORIES
    )


def _clean(text: str) -> str:
    """Apply every sanitization rule except the length limit and the mark."""
    # Printable ASCII without the unsafe characters (UIDs, IDs, most descriptions) needs no
    # per-character pass: that pass cost ~0.5 ms per file path, more than the rename.
    if _PLAIN.fullmatch(text) is None:
        text = "".join("\ufffd" if unicodedata.category(c) == "Cs" else c for c in text)
        text = unicodedata.normalize("NFC", text)
        text = "".join("_" if is_unsafe(c) else c for c in text)
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


@lru_cache(maxsize=4096)
def sanitize_within(raw: str | bytes, fallback: str, budget: int) -> str:
    """:func:`sanitize_component` within ``budget`` UTF-8 bytes (room left for an extension).

    Cached: a series' files share every folder component, so most calls repeat one."""
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

    The rules are this module docstring's. A clean value comes back unchanged; any other value
    comes back marked with ``~`` and 8 hex digits of the SHA-256 of ``raw`` (of its UTF-8 bytes
    for a str), so two different values never give the same component. An empty ``raw`` gives
    ``fallback`` (itself cleaned), marked like any changed value: ``unknown~e3b0c442``.
    The result is non-empty, at most 255 UTF-8 bytes, and never ``.`` or ``..``.
    """
    return sanitize_within(raw, fallback, MAX_COMPONENT_BYTES)


def dedupe_name(name: str, key: str) -> str:
    """``name`` with a deterministic suffix for a second instance that maps to the same path.

    Gives ``stem~<8 hex of sha256(key)>.ext`` (the extension kept when it has a letter, as in
    ``.dcm``), cut to 255 UTF-8 bytes. ``key`` is the instance's SOPInstanceUID, so reruns choose
    the same name. ``name`` should be a rendered (sanitized) component. Never raises.
    """
    match = EXTENSION.search(name)
    ext = match.group() if match and match.start() > 0 else ""
    stem = name[: len(name) - len(ext)]
    digest = hashlib.sha256(_raw_bytes(key)).hexdigest()[:_HASH_HEX]
    budget = MAX_COMPONENT_BYTES - _MARK_BYTES - len(ext.encode("utf-8"))
    return f"{_cut(stem, budget)}~{digest}{ext}"
