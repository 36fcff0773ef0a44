"""The fast path of :func:`bulkdl.dicom.read_header`: a hand-written walker over one 16 KiB read.

pydicom (``dcmread`` with ``specific_tags``, stopping before the pixels) costs ~1.0-1.5 ms per
512x512 CT file, more than inflating it. :func:`walk_header` reads the preamble and ``DICM``, the
File Meta group for the Transfer Syntax, then the dataset's element headers with
``struct.unpack_from`` (explicit or implicit VR little endian), jumping over values and
sequences, up to the Pixel Data element, decoding only the wanted values the way pydicom does.
``benchmarks/header_read.py`` (200 files, median of 9 runs, shared 2-CPU machine) measured
60-113 us per header against 1,020-1,450 us, 13-26x faster depending on the machine's load.
The walker is deliberately narrow: any file off the common case (big endian or deflated syntax,
a character set other than the default, ISO_IR 100 or ISO_IR 192, escape sequences, odd or
overrunning lengths, unknown VRs, tags out of order, an undefined-length value that is not a
sequence, a file ending before its Pixel Data, a wanted value in a VR it does not decode,
non-default pydicom settings) makes it answer None, "fall back", never an error, and pydicom
decides. It reads every element header up to the Pixel Data rather than stopping after the last
wanted tag, because pydicom's answer for a cut or damaged file (None) depends on all of them.
Every helper returns None (or -1 for a position) to mean "fall back"; only OSError (the file
cannot be read) escapes. Tags and VRs come from :mod:`bulkdl.dicomdict`, so pydicom is imported
only for other keywords. File I/O (reads).
"""

from __future__ import annotations

import os
import re
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from bulkdl.dicomdict import VR_OF

_BLOCK = 16 << 10  # one read holds a typical CT header (~1.5 KB; ~10 KB with vendor private tags)
_MAX_VALUE = 1 << 20  # a longer wanted value goes to pydicom
_MAX_DEPTH = 8  # deeper nested sequences go to pydicom
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})  # pydicom stops before any of them
_CHARSET = 0x00080005
_TRANSFER_SYNTAX = 0x00020010
_IMPLICIT_LE = "1.2.840.10008.1.2"
_NOT_EXPLICIT_LE = frozenset({"1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"})  # BE, deflated
_VRS = frozenset(
    b"AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI UL UN "
    b"UR US UT UV".split()
)
_LONG_VRS = frozenset(b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())  # 4-byte lengths
_EXPLICIT = struct.Struct("<HH2sH")
_IMPLICIT = struct.Struct("<HHL")
_LENGTH = struct.Struct("<L")
_HEADER_SIZES = {vr: 12 if vr in _LONG_VRS else 8 for vr in _VRS}
#: Specific Character Set -> codec; "" and ISO_IR 6 are ASCII here (non-ASCII goes to pydicom).
_CODECS = {"": "ascii", "ISO_IR 6": "ascii", "ISO_IR 100": "latin-1", "ISO_IR 192": "utf-8"}
_NUMBERS = {b"US": "H", b"SS": "h", b"UL": "L", b"SL": "l", b"FL": "f", b"FD": "d"}
_NUMBER_SIZES = {b"US": 2, b"SS": 2, b"UL": 4, b"SL": 4, b"FL": 4, b"FD": 8}
_SINGLE_TEXTS = frozenset({b"ST", b"LT", b"UT"})  # backslash is text, not a separator
# Only numbers Python's int()/float() read exactly as written, so str(IS)/str(DS) is the text;
# at most 12 digits so that pydicom's IS never turns into an ISfloat.
_IS_PART = re.compile(r" *(?:[+-]?[0-9]{1,12})? *")
_DS_PART = re.compile(r" *(?:[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)? *")
_UID = re.compile(r"[0-9.]+")


@dataclass(frozen=True, slots=True)
class Plan:
    """What to pick out of a file: ``(keyword, tag)`` in output order, their tags, and the VR
    each has in an implicit VR file (None for an ambiguous dictionary VR such as ``US or SS``)."""

    wanted: tuple[tuple[str, int], ...]
    tags: frozenset[int]
    implicit_vrs: dict[int, bytes | None]


def _dictionary_vr(tag: int) -> str:
    """The dictionary VR of ``tag`` (``"US or SS"`` when ambiguous); KeyError when unknown."""
    if tag in VR_OF:
        return VR_OF[tag]
    from pydicom.datadict import dictionary_VR

    return str(dictionary_VR(tag))


@lru_cache(maxsize=64)
def plan_for(wanted: tuple[tuple[str, int], ...]) -> Plan:
    vrs: dict[int, bytes | None] = {}
    for _, tag in wanted:
        vr = _dictionary_vr(tag)
        vrs[tag] = None if " " in vr else vr.encode()
    vrs[_CHARSET] = b"CS"
    return Plan(wanted, frozenset(vrs), vrs)


def _pydicom_defaults() -> bool:
    """Whether pydicom is configured as the fast path assumes (its values as plain strings)."""
    if "pydicom" not in sys.modules:
        return True  # nobody can have changed its settings
    import pydicom.uid
    from pydicom import config

    return not (
        config.datetime_conversion
        or config.use_DS_numpy
        or config.use_IS_numpy
        or config.use_DS_decimal
        or config.settings.reading_validation_mode == config.RAISE
        or pydicom.uid.PrivateTransferSyntaxes
    )


def walk_header(path: Path, plan: Plan) -> dict[str, str] | None:
    """:func:`read_header`'s answer for a common file, or None to let pydicom decide.

    Raises OSError when the file cannot be read (the caller lets pydicom meet it again).
    """
    if not _pydicom_defaults():
        return None
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    try:
        window = _Window(fd)
        start = _dataset_start(window)
        if start is None:
            return None
        found = _walk(window, start[0], start[1], plan)
    finally:
        os.close(fd)
    return None if found is None else _decode_all(found, plan)


class _Window:
    """Up to a block of a file's bytes, re-read further on when a walk jumps past them.

    Walks only go forward, so memory stays at one block (or one wanted value) per file, and a
    jump over a large value is a seek, never a read of it. Plain ``os.read`` on a descriptor:
    a buffered file object costs more than the whole walk's reading.
    """

    __slots__ = ("_eof", "_fd", "base", "data", "end")

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self.data = os.read(fd, _BLOCK)
        self.base = 0
        self.end = len(self.data)
        self._eof = self.end < _BLOCK

    def cover(self, pos: int, size: int) -> bool:
        """Whether the file holds bytes ``[pos, pos + size)``, now in :attr:`data`."""
        if pos + size <= self.end:
            return True
        if self._eof or size > _MAX_VALUE:
            return False
        want = max(size, _BLOCK)
        os.lseek(self._fd, pos, os.SEEK_SET)
        self.data = os.read(self._fd, want)
        while 0 < len(self.data) < want:  # a short read is not yet the end of the file
            more = os.read(self._fd, want - len(self.data))
            if not more:
                break
            self.data += more
        self.base, self.end = pos, pos + len(self.data)
        self._eof = len(self.data) < want
        return len(self.data) >= size


def _header(w: _Window, pos: int, explicit: bool) -> tuple[int, bytes, int, int] | None:
    """The element at ``pos``: tag, VR (``b""`` when implicit or an item), length, value offset."""
    if not w.cover(pos, 8):
        return None
    off = pos - w.base
    if not explicit or w.data[off + 2 : off + 4] == b"\xfe\xff":  # items and delimiters: no VR
        group, element, length = _IMPLICIT.unpack_from(w.data, off)
        return group << 16 | element, b"", length, pos + 8
    group, element, vr, length = _EXPLICIT.unpack_from(w.data, off)
    if vr in _LONG_VRS:
        if not w.cover(pos, 12):
            return None
        (length,) = _LENGTH.unpack_from(w.data, pos - w.base + 8)
        return group << 16 | element, vr, length, pos + 12
    if vr not in _VRS:
        return None
    return group << 16 | element, vr, length, pos + 8


def _dataset_start(w: _Window) -> tuple[int, bool] | None:
    """Where the dataset starts after the File Meta group, and whether its VRs are explicit.

    The File Meta group must lie in the first block (it is ~200 bytes); anything else, and any
    syntax but Implicit or Explicit VR Little Endian (or an encapsulated one), goes to pydicom.
    """
    data, pos, syntax = w.data, 132, ""
    if data[128:132] != b"DICM":
        return None
    while True:
        if pos + 12 > len(data):
            return None
        group, element, vr, length = _EXPLICIT.unpack_from(data, pos)
        if group != 2:
            break
        if vr in _LONG_VRS:
            (length,) = _LENGTH.unpack_from(data, pos + 8)
            pos += 12
        elif vr in _VRS:
            pos += 8
        else:
            return None
        if length & 1 or pos + length > len(data):
            return None  # also an undefined length
        if element == 0x0010:
            syntax = data[pos : pos + length].decode("latin-1")
        pos += length
    uid = syntax.rstrip("\0 ")
    if not _UID.fullmatch(uid) or uid in _NOT_EXPLICIT_LE:
        return None  # no or odd syntax (pydicom guesses), big endian, deflated
    if uid != _IMPLICIT_LE:
        return pos, True
    # pydicom switches to explicit VR when an implicit dataset's first "length" reads as a VR
    if 0x40 < data[pos + 4] < 0x5B and 0x40 < data[pos + 5] < 0x5B:
        return None
    return pos, False


def _walk(
    w: _Window, pos: int, explicit: bool, plan: Plan
) -> dict[int, tuple[bytes, bytes]] | None:
    """The wanted elements' VR and raw value, walking every element header up to Pixel Data.

    Not stopping after the last wanted tag is deliberate: pydicom reads every header up to the
    Pixel Data, so its answer for a file cut or damaged there (None) can only be matched by
    reading them too. This loop is the fast path's main cost, so a header inside the window is
    parsed inline with the common case tested first; :func:`_header` does the rest.
    """
    found: dict[int, tuple[bytes, bytes]] = {}
    wanted, implicit_vrs, header_sizes = plan.tags, plan.implicit_vrs, _HEADER_SIZES
    explicit_header, implicit_header = _EXPLICIT.unpack_from, _IMPLICIT.unpack_from
    data, base, end = w.data, w.base, w.end
    last = 0x0002FFFF  # group 0000 (a command set) or a late group 0002 go to pydicom
    while True:
        if pos + 12 <= end:
            off = pos - base
            if explicit:
                group, element, vr, length = explicit_header(data, off)
                size = header_sizes.get(vr)
                if size is None:
                    return None  # also an item or delimiter, out of place here
                if size == 12:
                    (length,) = _LENGTH.unpack_from(data, off + 8)
                pos += size
            else:
                group, element, length = implicit_header(data, off)
                vr = b""
                pos += 8
            tag = group << 16 | element
        else:
            head = _header(w, pos, explicit)
            if head is None:
                return None  # cut short, or an image file ending before its Pixel Data
            tag, vr, length, pos = head
            data, base, end = w.data, w.base, w.end
        if not last < tag < 0x7FE00008:
            if tag in _PIXEL_TAGS:
                return found
            if not last < tag < 0xFFFE0000:
                return None
        last = tag
        if length & 1:  # odd, or undefined (0xFFFFFFFF)
            if length != _UNDEFINED or tag in wanted or not _is_sequence(w, pos, explicit, tag, vr):
                return None
            pos = _skip_sequence(w, pos, explicit, 1)
            if pos < 0:
                return None
            data, base, end = w.data, w.base, w.end
            continue
        if tag in wanted:
            if not explicit:
                vr = implicit_vrs[tag] or b""
                if not vr:
                    return None
            if pos + length > end:
                if not w.cover(pos, length):
                    return None
                data, base, end = w.data, w.base, w.end
            found[tag] = vr, data[pos - base : pos - base + length]
        pos += length


def _is_sequence(w: _Window, pos: int, explicit: bool, tag: int, vr: bytes) -> bool:
    """Whether an undefined-length element is a sequence as pydicom reads it (else fall back)."""
    if explicit:
        return vr == b"SQ"  # UN (read as implicit items) and encapsulated OB go to pydicom
    try:
        return _dictionary_vr(tag) == "SQ"
    except KeyError:
        # like pydicom: a tag unknown to the dictionary is a sequence if an item follows
        return w.cover(pos, 4) and w.data[pos - w.base : pos - w.base + 4] == b"\xfe\xff\x00\xe0"


def _skip_sequence(w: _Window, pos: int, explicit: bool, depth: int) -> int:
    """The position after the delimiter of the undefined-length sequence whose items start at
    ``pos``, or -1. pydicom parses such a sequence, so its items are walked, not jumped."""
    if depth > _MAX_DEPTH:
        return -1
    while True:
        if not w.cover(pos, 8):
            return -1
        group, element, length = _IMPLICIT.unpack_from(w.data, pos - w.base)
        tag = group << 16 | element
        pos += 8
        if tag == _SEQUENCE_END:
            return pos if length == 0 else -1
        if tag != _ITEM or (length != _UNDEFINED and length & 1):
            return -1
        end = None if length == _UNDEFINED else pos + length
        pos = _skip_item(w, pos, end, explicit, depth)
        if pos < 0:
            return -1


def _skip_item(w: _Window, pos: int, end: int | None, explicit: bool, depth: int) -> int:
    """The position after an item's elements (to ``end``, or through its delimiter), or -1."""
    while pos != end:
        head = _header(w, pos, explicit)
        if head is None:
            return -1
        tag, vr, length, pos = head
        if tag == _ITEM_END:
            return pos if end is None and length == 0 else -1
        if tag >= 0xFFFE0000:
            return -1
        if length == _UNDEFINED:
            if not _is_sequence(w, pos, explicit, tag, vr):
                return -1
            pos = _skip_sequence(w, pos, explicit, depth + 1)
            if pos < 0:
                return -1
        elif length & 1:
            return -1
        else:
            pos += length
        if end is not None and pos > end:
            return -1
    return pos


def _decode_all(found: dict[int, tuple[bytes, bytes]], plan: Plan) -> dict[str, str] | None:
    """The wanted values as :func:`_values` gives them from pydicom, or None."""
    codec = "ascii"
    if _CHARSET in found:
        vr, raw = found[_CHARSET]
        name = _CODECS.get(raw.decode("latin-1").rstrip(" \0")) if vr == b"CS" else None
        if name is None:
            return None  # ISO 2022, multi-valued, misspelt, ...: pydicom's charset handling
        codec = name
    out: dict[str, str] = {}
    for keyword, tag in plan.wanted:
        if tag in found:
            vr, raw = found[tag]
            if not raw:
                continue  # pydicom's empty value (None or ""), left out
            decode = _DECODERS.get(vr)
            if decode is None:
                return None  # OB, SQ, AT, UN, UR, ...: not worth mirroring
            text = decode(vr, raw, codec)
            if text is None:
                return None
            if text:
                out[keyword] = text
    return out


# One decoder per kind of VR, each giving ``_text(pydicom 3's value)`` or None (fall back).
# pydicom decodes AE/AS/CS/DA/DT/TM/UI/IS/DS as Latin-1 whatever the character set, and only
# SH/LO/UC/ST/LT/UT/PN with it; _text strips each value and joins multiple ones with "\\".


def _joined(parts: list[str]) -> str:
    texts = [p.strip() for p in parts]
    return "\\".join(texts) if any(texts) else ""


def _decode_string(vr: bytes, raw: bytes, codec: str) -> str | None:
    """AS CS DA DT TM UI: padding stripped, split on backslashes (pydicom's multi_string)."""
    text = raw.decode("latin-1").rstrip(" \0")
    return _joined(text.split("\\")) if "\\" in text else text.strip()


def _decode_ae(vr: bytes, raw: bytes, codec: str) -> str | None:
    """AE: split on backslashes, each value stripped, NUL padding kept."""
    return _joined(raw.decode("latin-1").split("\\"))


def _decode_number_string(vr: bytes, raw: bytes, codec: str) -> str | None:
    """IS DS: the text as written when Python reads it exactly as a number, else None."""
    text = raw.decode("latin-1")
    text = (text.strip() if vr == b"DS" else text).rstrip(" \0")
    pattern = _IS_PART if vr == b"IS" else _DS_PART
    if "\\" not in text:
        return text.strip() if pattern.fullmatch(text) else None
    parts = text.split("\\")
    for part in parts:
        if not pattern.fullmatch(part):
            return None  # pydicom would try other VRs, or change the text
    return _joined(parts)


def _decode_binary(vr: bytes, raw: bytes, codec: str) -> str | None:
    """US SS UL SL FL FD: Python's str() of each little-endian number."""
    size = _NUMBER_SIZES[vr]
    if len(raw) % size:
        return None
    values = struct.unpack(f"<{len(raw) // size}{_NUMBERS[vr]}", raw)
    return "\\".join(map(str, values))


def _decode_text(vr: bytes, raw: bytes, codec: str) -> str | None:
    """SH LO UC ST LT UT PN in the character set; ESC (ISO 2022) and bad bytes give None."""
    if b"\x1b" in raw:
        return None  # pydicom decodes escape sequences fragment by fragment
    try:
        text = (raw.rstrip(b"\0 ") if vr == b"PN" else raw).decode(codec)
    except UnicodeDecodeError:
        return None  # pydicom would decode with replacement characters and warn
    if vr in _SINGLE_TEXTS:
        return text.rstrip("\0 ").strip()
    if "\\" not in text:
        return (_person_name(text) if vr == b"PN" else text.rstrip("\0 ")).strip()
    if vr == b"PN":
        return _joined([_person_name(p) for p in text.split("\\")])
    return _joined([p.rstrip("\0 ") for p in text.split("\\")])


def _person_name(text: str) -> str:
    """``str(PersonName(text))``: the ``=`` groups without trailing empty ones."""
    groups = text.split("=")
    while groups and not groups[-1]:
        groups.pop()
    return "=".join(groups)


_Decoder = Callable[[bytes, bytes, str], "str | None"]
_DECODERS: dict[bytes, _Decoder] = {
    **dict.fromkeys((b"AS", b"CS", b"DA", b"DT", b"TM", b"UI"), _decode_string),
    b"AE": _decode_ae,
    b"IS": _decode_number_string,
    b"DS": _decode_number_string,
    **dict.fromkeys(_NUMBERS, _decode_binary),
    **dict.fromkeys((b"SH", b"LO", b"UC", b"PN", *_SINGLE_TEXTS), _decode_text),
}
