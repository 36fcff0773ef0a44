"""A streaming ZIP reader: bytes in, member events out, every check a ZIP allows. Pure, no I/O.

:class:`ZipStreamReader` is sans-I/O in the manner of h11: the caller feeds the body as it arrives
and gets back events: :class:`MemberStart`, :class:`MemberData` (inflated bytes, at most
``out_chunk`` at a time), :class:`MemberEnd`, and finally :class:`ArchiveEnd` with the central
directory. It reads what Java's ``ZipOutputStream`` writes for NBIA (DEFLATED, local headers
without sizes, data descriptors with or without their signature, 32- or 64-bit, ZIP64) and what
:mod:`zipfile` writes (sizes in the local header, STORED, ZIP64 extra fields, ZIP64 end records).
Each member's CRC-32 and sizes are checked against its data descriptor or local header, then every
central-directory entry against what was streamed (names, order, CRC, sizes, offsets) and the end
record against the directory. Anything else is an :class:`~bulkdl.errors.ArchiveError`: not a ZIP,
encrypted, a method other than STORED/DEFLATED, STORED with a data descriptor (its end cannot be
found), truncated, corrupt, bytes after the end record.

Memory is bounded: the reader keeps at most one input chunk plus one header (a few hundred KiB at
worst) and inflates with ISA-L (``isal_zlib``, which releases the GIL) at most ``out_chunk`` bytes
per call, so a ZIP bomb never makes it allocate more than that. :meth:`ZipStreamReader.feed_iter`
produces events lazily, so a caller that consumes each event before asking for the next holds one
``out_chunk`` at a time; :meth:`ZipStreamReader.feed` collects the events of one chunk in a list.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final, cast

from isal import isal_zlib

from bulkdl.errors import ArchiveError

STORED: Final = 0
DEFLATED: Final = 8

_LOCAL_SIG: Final = b"PK\x03\x04"
_CENTRAL_SIG: Final = b"PK\x01\x02"
_ZIP64_END_SIG: Final = b"PK\x06\x06"
_ZIP64_LOCATOR_SIG: Final = b"PK\x06\x07"
_END_SIG: Final = b"PK\x05\x06"
_DESCRIPTOR_SIG: Final = b"PK\x07\x08"
_DESCRIPTOR_SIG_INT: Final = 0x08074B50

_LOCAL = struct.Struct("<4s5H3L2H")  # 30 bytes
_CENTRAL = struct.Struct("<4s6H3L5H2L")  # 46 bytes
_END = struct.Struct("<4s4H2LH")  # 22 bytes
_ZIP64_END_HEAD = struct.Struct("<4sQ")  # signature and the size of the rest
_ZIP64_END = struct.Struct("<4sQ2H2L4Q")  # 56 bytes
_ZIP64_LOCATOR = struct.Struct("<4sLQL")  # 20 bytes
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<L")
_U64 = struct.Struct("<Q")

#: ISA-L's inflate error (its stub declares it as an instance).
_InflateError = cast("type[Exception]", isal_zlib.error)
_ZIP64_EXTRA_ID: Final = 0x0001
_MAX32: Final = 0xFFFFFFFF
_MAX16: Final = 0xFFFF
_FLAG_ENCRYPTED: Final = 0x0001
_FLAG_DESCRIPTOR: Final = 0x0008
_FLAG_UTF8: Final = 0x0800
#: A ZIP64 end record's extensible data sector larger than this is refused (bounded memory).
_ZIP64_END_MAX: Final = 1 << 16
_QUOTE: Final = 40

# Reader states.
_START, _RECORD, _DEFLATE, _STORED, _CHECK, _DESCRIPTOR, _COMMENT, _DONE, _FAILED = range(9)
# Record ranks: a ZIP is local members, central directory, ZIP64 end, locator, end, in order.
_RANK_LOCAL, _RANK_CENTRAL, _RANK_ZIP64_END, _RANK_LOCATOR, _RANK_END = range(5)


@dataclass(frozen=True, slots=True)
class MemberStart:
    """A member begins. ``declared_size`` is its inflated size from the local header, or None when
    the header defers it to a data descriptor (NBIA's case)."""

    name: str
    method: int
    declared_size: int | None


@dataclass(frozen=True, slots=True)
class MemberData:
    """Inflated bytes of the current member, in order."""

    data: bytes


@dataclass(frozen=True, slots=True)
class MemberEnd:
    """The current member ended; its CRC-32 and size were checked."""

    name: str
    crc: int
    size: int


@dataclass(frozen=True, slots=True)
class CentralEntry:
    """One central-directory entry (already checked against the streamed member)."""

    name: str
    crc: int
    compressed_size: int
    uncompressed_size: int


@dataclass(frozen=True, slots=True)
class ArchiveEnd:
    """The end record was read: the archive is complete and consistent."""

    entries: tuple[CentralEntry, ...]


Event = MemberStart | MemberData | MemberEnd | ArchiveEnd


@dataclass(slots=True)
class _Member:
    """What the reader knows of the member being streamed, then of each streamed member."""

    name: str
    raw_name: bytes
    method: int
    flags: int
    offset: int
    crc: int
    compressed: int
    size: int
    zip64: bool
    actual_crc: int = 0
    actual_compressed: int = 0
    actual_size: int = 0


_PROGRESS: Final = object()


class ZipStreamReader:
    """Push parser for one ZIP body; see the module docstring. Not thread-safe (one feeder)."""

    def __init__(
        self,
        *,
        series_uid: str | None = None,
        out_chunk: int = 1 << 20,
        in_piece: int = 256 << 10,
    ) -> None:
        """``out_chunk`` bounds each :class:`MemberData`; ``in_piece`` bounds the compressed bytes
        handed to the inflater per call (small enough that its unconsumed tail stays small)."""
        if out_chunk <= 0 or in_piece <= 0:
            raise ValueError("out_chunk and in_piece must be positive")
        self.series_uid = series_uid
        self._out_chunk = out_chunk
        self._in_piece = in_piece
        self._buf: bytes | bytearray = b""
        self._pos = 0
        self._base = 0  # offset in the body of self._buf[0]
        self._state = _START
        self._rank = _RANK_LOCAL
        self._member: _Member | None = None
        self._members: list[_Member] = []
        self._entries: list[CentralEntry] = []
        self._inflater: isal_zlib.Decompress | None = None
        self._cd_start: int | None = None
        self._cd_size = 0
        self._zip64_end_at: int | None = None
        self._zip64_end: tuple[int, int, int] | None = None  # count, size, offset
        self._end_at = 0
        self._comment_left = 0
        self._pending: ArchiveEnd | None = None
        self._busy = False

    # -- public API -------------------------------------------------------------------------

    def feed(self, data: bytes) -> list[Event]:
        """All events ``data`` completes, in order. Raises ArchiveError."""
        return list(self.feed_iter(data))

    def feed_iter(self, data: bytes) -> Iterator[Event]:
        """The events ``data`` completes, produced one at a time as the caller asks (bounded
        memory); exhaust it before feeding more. Raises ArchiveError."""
        self._check_usable()
        self._append(data)
        return self._drain()

    def close(self) -> list[Event]:
        """The body ended. Returns the remaining events (none for a complete archive); raises
        ArchiveError when it is empty, not a ZIP or cut short."""
        self._check_usable()
        if self._state == _DONE:
            return []
        if self._state == _START:
            head = bytes(self._buf[self._pos : self._pos + _QUOTE])
            if not head:
                raise self._fail("the body is empty, not a ZIP archive")
            if not any(sig.startswith(head[:4]) for sig in (_LOCAL_SIG, _END_SIG)):
                raise self._fail(self._not_zip(head))
        where = self._where()
        raise self._fail(f"ZIP truncated: the body ends {where} after {self._at():,} bytes")

    @property
    def done(self) -> bool:
        """True once the end record has been read."""
        return self._state == _DONE

    # -- machinery --------------------------------------------------------------------------

    def _check_usable(self) -> None:
        if self._state == _FAILED:
            raise ArchiveError("the ZIP reader already failed", series_uid=self.series_uid)
        if self._busy:
            raise RuntimeError("feed_iter's previous iterator was not exhausted")

    def _append(self, data: bytes) -> None:
        rest = len(self._buf) - self._pos
        if rest <= 0:
            self._base += len(self._buf)
            self._buf, self._pos = data, 0
        elif data:
            if isinstance(self._buf, bytearray) and self._pos == 0:
                self._buf += data
            else:
                kept = bytearray(self._buf[self._pos :])
                kept += data
                self._base += self._pos
                self._buf, self._pos = kept, 0

    def _drain(self) -> Iterator[Event]:
        self._busy = True
        try:
            while True:
                result = self._step()
                if result is None:
                    return
                if result is not _PROGRESS:
                    yield result  # type: ignore[misc]
        except ArchiveError:
            self._state = _FAILED
            raise
        finally:
            self._busy = False

    def _at(self) -> int:
        return self._base + self._pos

    def _fail(self, message: str) -> ArchiveError:
        self._state = _FAILED
        return ArchiveError(message, series_uid=self.series_uid)

    def _where(self) -> str:
        state = self._state
        if state in (_DEFLATE, _STORED) and self._member is not None:
            return f"inside {self._member.name}"
        if state == _DESCRIPTOR and self._member is not None:
            return f"in {self._member.name}'s data descriptor"
        if self._rank == _RANK_LOCAL:
            return "before its central directory"
        return "in its central directory"

    @staticmethod
    def _not_zip(head: bytes) -> str:
        shown = head[:_QUOTE].decode("ascii", errors="replace")
        return f"the body is not a ZIP archive (starts with {shown!r}...)"

    def _need(self, n: int) -> bytes | None:
        """The next ``n`` bytes (not consumed), or None when they have not arrived yet."""
        if len(self._buf) - self._pos < n:
            return None
        return bytes(self._buf[self._pos : self._pos + n])

    def _step(self) -> object:
        """Advance by one event (returned), some progress (_PROGRESS) or nothing (None)."""
        state = self._state
        if state == _DEFLATE:
            return self._step_deflate()
        if state == _STORED:
            return self._step_stored()
        if state == _RECORD:
            return self._step_record()
        if state == _DESCRIPTOR:
            return self._step_descriptor()
        if state == _CHECK:
            return self._finish_member()
        if state == _START:
            return self._step_start()
        if state == _COMMENT:
            return self._step_comment()
        if state == _DONE:
            if self._pending is not None:
                event, self._pending = self._pending, None
                return event
            if len(self._buf) > self._pos:
                extra = bytes(self._buf[self._pos : self._pos + _QUOTE])
                raise self._fail(
                    f"garbage after the ZIP's end record at byte {self._at():,}: {extra!r}"
                )
            return None
        raise self._fail("the ZIP reader already failed")

    def _step_start(self) -> object:
        head = bytes(self._buf[self._pos : self._pos + _QUOTE])
        if head[:4] in (_LOCAL_SIG, _END_SIG):
            self._state = _RECORD
            return _PROGRESS
        if len(head) < 4 and any(sig.startswith(head) for sig in (_LOCAL_SIG, _END_SIG)):
            return None
        if len(head) < _QUOTE:
            return None  # wait for enough of it to quote (close() quotes what there is)
        raise self._fail(self._not_zip(head))

    def _step_record(self) -> object:
        sig = self._need(4)
        if sig is None:
            return None
        if sig == _LOCAL_SIG:
            return self._local_header()
        if sig == _CENTRAL_SIG:
            return self._central_entry()
        if sig == _ZIP64_END_SIG:
            return self._zip64_end_record()
        if sig == _ZIP64_LOCATOR_SIG:
            return self._zip64_locator()
        if sig == _END_SIG:
            return self._end_record()
        raise self._fail(f"ZIP damaged: unexpected bytes {sig!r} at byte {self._at():,}")

    def _enter(self, rank: int, what: str) -> None:
        if rank < self._rank or (rank == self._rank and rank > _RANK_CENTRAL):
            raise self._fail(f"ZIP damaged: {what} out of place at byte {self._at():,}")
        if self._rank == _RANK_LOCAL and rank > _RANK_LOCAL:
            self._cd_start = self._at()
        self._rank = rank

    def _decode_name(self, raw: bytes, flags: int) -> str:
        if flags & _FLAG_UTF8:
            try:
                return raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise self._fail(f"member name {raw[:80]!r} is flagged UTF-8 but is not") from exc
        return raw.decode("cp437")

    def _local_header(self) -> object:
        fixed = self._need(_LOCAL.size)
        if fixed is None:
            return None
        _, _, flags, method, _, _, crc, csize, usize, name_len, extra_len = _LOCAL.unpack(fixed)
        whole = self._need(_LOCAL.size + name_len + extra_len)
        if whole is None:
            return None
        self._enter(_RANK_LOCAL, "a local file header")
        raw_name = whole[_LOCAL.size : _LOCAL.size + name_len]
        extra = whole[_LOCAL.size + name_len :]
        name = self._decode_name(raw_name, flags)
        if flags & _FLAG_ENCRYPTED:
            raise self._fail(f"{name} is encrypted")
        if method not in (STORED, DEFLATED):
            raise self._fail(
                f"{name} uses compression method {method} (only STORED and DEFLATED are supported)"
            )
        descriptor = bool(flags & _FLAG_DESCRIPTOR)
        if method == STORED and descriptor:
            raise self._fail(
                f"{name} is STORED with its size in a data descriptor: its end cannot be found"
            )
        zip64 = self._zip64_extra(extra, name)
        if zip64 is not None:
            # a local ZIP64 extra holds both sizes (APPNOTE 4.5.3); a short one, the first
            if len(zip64) >= 2:
                usize = zip64[0] if usize == _MAX32 else usize
                csize = zip64[1] if csize == _MAX32 else csize
            elif zip64 and usize == _MAX32:
                usize = zip64[0]
            elif zip64 and csize == _MAX32:
                csize = zip64[0]
        if not descriptor and _MAX32 in (usize, csize):
            raise self._fail(f"{name}: ZIP64 sizes announced without a ZIP64 extra field")
        self._member = _Member(
            name, raw_name, method, flags, self._at(), crc, csize, usize, zip64 is not None
        )
        self._pos += len(whole)
        if method == DEFLATED and (descriptor or csize > 0):
            self._inflater = isal_zlib.decompressobj(-15)
            self._state = _DEFLATE
        else:
            self._state = _STORED  # also an empty DEFLATED member with no deflate stream
        return MemberStart(name, method, None if descriptor else usize)

    def _zip64_extra(self, extra: bytes, name: str) -> tuple[int, ...] | None:
        """The 64-bit values of the ZIP64 extra field, in order, or None when there is none."""
        at = 0
        while at + 4 <= len(extra):
            kind, size = struct.unpack_from("<HH", extra, at)
            body = extra[at + 4 : at + 4 + size]
            if kind == _ZIP64_EXTRA_ID:
                if len(body) < size or size % 8 not in (0, 4):
                    raise self._fail(f"{name}: malformed ZIP64 extra field")
                return tuple(_U64.unpack_from(body, i)[0] for i in range(0, size - size % 8, 8))
            at += 4 + size
        return None

    def _check_member_size(self, member: _Member) -> None:
        if not member.flags & _FLAG_DESCRIPTOR and member.actual_size > member.size:
            raise self._fail(f"{member.name} inflates past the {member.size:,} bytes it declares")

    def _step_deflate(self) -> object:
        avail = len(self._buf) - self._pos
        if avail <= 0:
            return None
        member = self._member
        inflater = self._inflater
        assert member is not None and inflater is not None
        n = min(avail, self._in_piece)
        with memoryview(self._buf) as view:
            piece = view[self._pos : self._pos + n]
            try:
                out = inflater.decompress(piece, self._out_chunk)
            except _InflateError as exc:
                raise self._fail(f"{member.name} does not inflate: {exc}") from exc
            finally:
                piece.release()
        used = n - len(inflater.unconsumed_tail)
        self._pos += used
        member.actual_compressed += used
        if inflater.eof:
            # The bytes after the deflate stream come back as unused_data. ISA-L reads ahead,
            # so they may start before this piece, even in a previous (dropped) buffer.
            unused = inflater.unused_data
            member.actual_compressed -= len(unused)
            if len(unused) <= self._pos:
                self._pos -= len(unused)
            else:
                start = self._at() - len(unused)
                rest = bytearray(unused)
                rest += self._buf[self._pos :]
                self._buf, self._pos, self._base = rest, 0, start
            # the member's last bytes (if any) go out first; the next step checks it
            self._inflater = None
            self._state = _DESCRIPTOR if member.flags & _FLAG_DESCRIPTOR else _CHECK
        elif not out and used == 0:
            raise self._fail(f"{member.name} does not inflate: the inflater made no progress")
        if out:
            member.actual_size += len(out)
            member.actual_crc = isal_zlib.crc32(out, member.actual_crc)
            self._check_member_size(member)
            return MemberData(out)
        return _PROGRESS

    def _step_stored(self) -> object:
        member = self._member
        assert member is not None
        left = member.compressed - member.actual_compressed
        if left <= 0:
            return self._finish_member()
        avail = len(self._buf) - self._pos
        if avail <= 0:
            return None
        n = min(avail, left, self._out_chunk)
        out = bytes(self._buf[self._pos : self._pos + n])
        self._pos += n
        member.actual_compressed += n
        member.actual_size += n
        member.actual_crc = isal_zlib.crc32(out, member.actual_crc)
        self._check_member_size(member)
        return MemberData(out)

    def _finish_member(self) -> object:
        """Check a member whose sizes came in its local header, and end it."""
        member = self._member
        assert member is not None
        if member.actual_crc != member.crc:
            raise self._fail(f"CRC mismatch in {member.name}")
        if member.actual_compressed != member.compressed or member.actual_size != member.size:
            raise self._fail(
                f"{member.name} holds {member.actual_compressed:,} compressed and "
                f"{member.actual_size:,} inflated bytes, its header says "
                f"{member.compressed:,} and {member.size:,}"
            )
        return self._end_member(member)

    def _end_member(self, member: _Member) -> MemberEnd:
        self._members.append(member)
        self._member = None
        self._state = _RECORD
        return MemberEnd(member.name, member.actual_crc, member.actual_size)

    def _step_descriptor(self) -> object:
        member = self._member
        assert member is not None
        wide = (
            member.zip64 or member.actual_compressed > _MAX32 or member.actual_size > _MAX32
        )  # Java writes 64-bit sizes for big members even without a ZIP64 extra
        fields = "<LQQ" if wide else "<LLL"
        length = struct.calcsize(fields)
        first = self._need(4)
        if first is None:
            return None
        values: tuple[int, int, int] | None = None
        skip = 0
        if first == _DESCRIPTOR_SIG:
            raw = self._need(4 + length)
            if raw is None:
                return None
            values = struct.unpack_from(fields, raw, 4)
            skip = 4 + length
            if values[0] != member.actual_crc and member.actual_crc == _DESCRIPTOR_SIG_INT:
                values = None  # no signature after all: the CRC happens to look like one
        if values is None:
            raw = self._need(length)
            if raw is None:
                return None
            values = struct.unpack_from(fields, raw, 0)
            skip = length
        crc, compressed, size = values
        if crc != member.actual_crc:
            raise self._fail(f"CRC mismatch in {member.name}")
        if compressed != member.actual_compressed or size != member.actual_size:
            raise self._fail(
                f"{member.name} holds {member.actual_compressed:,} compressed and "
                f"{member.actual_size:,} inflated bytes, its data descriptor says "
                f"{compressed:,} and {size:,}"
            )
        member.crc, member.compressed, member.size = crc, compressed, size
        self._pos += skip
        return self._end_member(member)

    def _central_entry(self) -> object:
        fixed = self._need(_CENTRAL.size)
        if fixed is None:
            return None
        (
            _,
            _,
            _,
            flags,
            method,
            _,
            _,
            crc,
            csize,
            usize,
            name_len,
            extra_len,
            comment_len,
            disk,
        ) = _CENTRAL.unpack(fixed)[:14]
        offset: int = _CENTRAL.unpack(fixed)[-1]
        length = _CENTRAL.size + name_len + extra_len + comment_len
        whole = self._need(length)
        if whole is None:
            return None
        self._enter(_RANK_CENTRAL, "a central directory entry")
        raw_name = whole[_CENTRAL.size : _CENTRAL.size + name_len]
        extra = whole[_CENTRAL.size + name_len : _CENTRAL.size + name_len + extra_len]
        name = self._decode_name(raw_name, flags)
        values = list(self._zip64_extra(extra, name) or ())
        if usize == _MAX32 and values:
            usize = values.pop(0)
        if csize == _MAX32 and values:
            csize = values.pop(0)
        if offset == _MAX32 and values:
            offset = values.pop(0)
        index = len(self._entries)
        if index >= len(self._members):
            raise self._fail(
                f"the central directory lists {name}, which is not among the "
                f"{len(self._members):,} members streamed"
            )
        member = self._members[index]
        streamed = (member.raw_name, member.method, member.crc, member.compressed, member.size)
        listed = (raw_name, method, crc, csize, usize)
        if listed != streamed or offset != member.offset or disk not in (0, _MAX16):
            raise self._fail(
                f"the central directory disagrees with the streamed members at entry "
                f"{index + 1}: it lists {name} (method {method}, CRC {crc:08x}, {csize:,} -> "
                f"{usize:,} bytes at byte {offset:,}), the stream held {member.name} "
                f"(method {member.method}, CRC {member.crc:08x}, {member.compressed:,} -> "
                f"{member.size:,} bytes at byte {member.offset:,})"
            )
        self._entries.append(CentralEntry(name, crc, csize, usize))
        self._cd_size += length
        self._pos += length
        return _PROGRESS

    def _zip64_end_record(self) -> object:
        head = self._need(_ZIP64_END_HEAD.size)
        if head is None:
            return None
        rest = _ZIP64_END_HEAD.unpack(head)[1]
        if rest < _ZIP64_END.size - 12 or rest > _ZIP64_END_MAX:
            raise self._fail(f"ZIP damaged: a ZIP64 end record of {rest:,} bytes")
        whole = self._need(12 + rest)
        if whole is None:
            return None
        self._enter(_RANK_ZIP64_END, "a ZIP64 end record")
        fields = _ZIP64_END.unpack_from(whole)
        self._zip64_end_at = self._at()
        self._zip64_end = (fields[7], fields[8], fields[9])
        self._pos += len(whole)
        return _PROGRESS

    def _zip64_locator(self) -> object:
        raw = self._need(_ZIP64_LOCATOR.size)
        if raw is None:
            return None
        self._enter(_RANK_LOCATOR, "a ZIP64 end locator")
        where = _ZIP64_LOCATOR.unpack(raw)[2]
        if self._zip64_end_at is None or where != self._zip64_end_at:
            raise self._fail(f"ZIP damaged: the ZIP64 locator points to byte {where:,}")
        self._pos += len(raw)
        return _PROGRESS

    def _end_record(self) -> object:
        raw = self._need(_END.size)
        if raw is None:
            return None
        self._enter(_RANK_END, "an end of central directory record")
        _, _, _, _, count, size, offset, comment_len = _END.unpack(raw)
        if self._zip64_end is not None:
            count, size, offset = self._zip64_end
        if count != len(self._entries):
            raise self._fail(
                f"the end record declares {count:,} members but the central directory "
                f"holds {len(self._entries):,}"
            )
        if len(self._entries) != len(self._members):
            raise self._fail(
                f"the central directory lists {len(self._entries):,} members, the stream "
                f"held {len(self._members):,}"
            )
        if size != self._cd_size or offset != self._cd_start:
            raise self._fail(
                f"the end record puts the central directory at byte {offset:,} "
                f"({size:,} bytes); it was at byte {self._cd_start:,} ({self._cd_size:,} bytes)"
            )
        self._pos += len(raw)
        self._comment_left = comment_len
        self._pending = ArchiveEnd(tuple(self._entries))
        self._state = _COMMENT
        return _PROGRESS

    def _step_comment(self) -> object:
        if self._comment_left:
            take = min(self._comment_left, len(self._buf) - self._pos)
            if take <= 0:
                return None
            self._pos += take
            self._comment_left -= take
            return _PROGRESS
        self._state = _DONE
        return _PROGRESS
