"""Reading the few header values bulkdl needs from a DICOM file, and SOP Class names.

The only runtime module that imports pydicom, so its quirks and exceptions stay here:
:func:`read_header` returns plain ``keyword -> str`` values (or None for a file that is not DICOM,
truncated ones included), :func:`sop_class_name` looks a UID up in pydicom's registry. Does file
I/O (reads). pydicom is imported only when it is needed: the fast path's keywords and the common
SOP Class names come from :mod:`bulkdl.dicomdict`.

Two paths give the same answer. The reference is pydicom (:func:`_read_header`): ``dcmread``
stopping before the pixel data and keeping only the asked-for elements (``specific_tags``, ~15 %
faster than reading every element; values looked up by tag, ~30 % faster than by keyword). It
still cost ~1.0-1.5 ms per 512x512 CT file (up to 4 ms on a loaded machine), about a third of the
client's CPU per series, more than inflating the ZIP. So :func:`read_header` first tries a
hand-written walker over one 16 KiB read (:mod:`bulkdl.headerwalk`, 13-26x faster), which
answers "fall back" for any file off the common case, and pydicom decides those.
``tests/test_dicom_fastpath.py`` checks that both paths agree, file by file and under random
damage.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Collection
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from bulkdl.dicomdict import KEYWORDS, SOP_CLASS_NAMES
from bulkdl.headerwalk import plan_for, walk_header

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

log = logging.getLogger(__name__)

#: What verification needs from every file, read whatever else the caller asks for.
HEADER_KEYWORDS_ALWAYS: tuple[str, ...] = (
    "SOPInstanceUID",
    "SeriesInstanceUID",
    "StudyInstanceUID",
    "SOPClassUID",
)

_ELEMENT_HEADER = 8
_SOP_CLASS_UID = 0x00080016
_MEDIA_SOP_CLASS_UID = 0x00020002


def read_header(path: Path, keywords: Collection[str]) -> dict[str, str] | None:
    """The values of ``keywords`` (plus :data:`HEADER_KEYWORDS_ALWAYS`) in the file at ``path``.

    Values are strings: multiple values joined with ``\\``, person names and numbers in pydicom's
    string form (``"2.500000"`` stays as written); empty values and keywords absent from the file
    (or unknown to the DICOM dictionary) are left out. Returns None when the file is not DICOM,
    including a damaged or truncated header. Raises OSError when the file cannot be read.
    """
    wanted = _known_keywords(frozenset(keywords))
    try:
        fast = walk_header(path, plan_for(wanted))
    except OSError:
        fast = None  # the pydicom path meets it again and raises it, as it always has
    except Exception as exc:  # a fast-path bug must cost speed, never change an answer
        log.debug("%s: fast header read failed: %s: %s", path, type(exc).__name__, exc)
        fast = None
    if fast is not None:
        return fast
    return _read_header(path, keywords, specific=True)


def _read_header(path: Path, keywords: Collection[str], *, specific: bool) -> dict[str, str] | None:
    """:func:`read_header` through pydicom alone: the reference and the fallback of the fast path.

    ``specific=False`` reads every element (for the benchmark).
    """
    from pydicom import dcmread

    wanted = _known_keywords(frozenset(keywords))
    try:
        with path.open("rb") as raw:
            fp = _ShortReadWatch(raw)
            ds = dcmread(
                fp,
                stop_before_pixels=True,
                specific_tags=[tag for _, tag in wanted] if specific else None,
            )
            if fp.truncated or (fp.hit_end and _needs_pixels(ds)):
                log.debug("%s: DICOM header cut short", path)
                return None
            return _values(ds, wanted)
    except OSError:
        raise
    except Exception as exc:
        # pydicom reports a non-DICOM or damaged file through many types (InvalidDicomError,
        # EOFError, struct.error, ValueError, ...); to the caller each means "not DICOM".
        log.debug("%s is not readable as DICOM: %s: %s", path, type(exc).__name__, exc)
        return None


class _ShortReadWatch:
    """A file wrapper noticing a read cut short by the end of the file.

    pydicom reads a truncated file without complaint, keeping a partial last value (a UID cut in
    half). Only a read of exactly 8 bytes (the next element's tag and length) may meet the end of
    the file cleanly: that is how a file without pixel data ends. A seek past the end (over a
    skipped value) is a cut too. A cut exactly between two elements looks like such an end, so
    the caller also refuses an end of file met before the pixel data of an image.
    """

    def __init__(self, fp: BinaryIO) -> None:
        self._fp = fp
        self._size = os.fstat(fp.fileno()).st_size
        self.name = fp.name
        self.truncated = False
        self.hit_end = False

    def read(self, size: int = -1) -> bytes:
        data = self._fp.read(size)
        if 0 <= len(data) < size:
            if data or size != _ELEMENT_HEADER:
                self.truncated = True
            self.hit_end = True
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        # with specific_tags pydicom seeks over the values it skips, past the end if cut short
        position = self._fp.seek(offset, whence)
        if position > self._size:
            self.truncated = True
        return position

    def tell(self) -> int:
        return self._fp.tell()


def _needs_pixels(ds: Dataset) -> bool:
    """Whether the dataset's SOP Class is an image (Pixel Data is Type 1), or it has no class."""
    from pydicom.uid import UID

    sop = ds.get(_SOP_CLASS_UID) or ds.file_meta.get(_MEDIA_SOP_CLASS_UID)
    if sop is None or not sop.value:
        return True
    return "Image Storage" in str(UID(str(sop.value)).name)


@lru_cache(maxsize=64)
def _known_keywords(keywords: frozenset[str]) -> tuple[tuple[str, int], ...]:
    wanted = dict.fromkeys(HEADER_KEYWORDS_ALWAYS)
    wanted.update(dict.fromkeys(sorted(keywords)))
    tags = ((k, _tag_of(k)) for k in wanted)
    return tuple((k, tag) for k, tag in tags if tag is not None)


def _tag_of(keyword: str) -> int | None:
    if keyword in KEYWORDS:
        known = KEYWORDS[keyword]
        return None if known is None else known[0]
    from pydicom.datadict import tag_for_keyword

    return tag_for_keyword(keyword)


def _values(ds: Dataset, wanted: tuple[tuple[str, int], ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for keyword, tag in wanted:
        # by tag, not keyword: Dataset.get(keyword) goes through __getattr__, ~2x slower
        if tag in ds:
            text = _text(ds[tag].value)
            if text:
                out[keyword] = text
    return out


def _text(value: Any) -> str:
    from pydicom.dataset import Dataset
    from pydicom.multival import MultiValue
    from pydicom.sequence import Sequence

    if value is None or isinstance(value, Sequence | bytes | bytearray | Dataset):
        return ""
    if isinstance(value, MultiValue | list | tuple):
        parts = [_text(v) for v in value]
        return "\\".join(parts) if any(parts) else ""
    return str(value).strip()


def sop_class_name(uid: str) -> str:
    """The registry name of a SOP Class UID (``"CT Image Storage"``), or ``""`` when unknown."""
    uid = uid.strip()
    if uid in SOP_CLASS_NAMES:
        return SOP_CLASS_NAMES[uid]
    from pydicom.uid import UID

    value = UID(uid)
    name = str(value.name)
    return "" if name == str(value) else name
