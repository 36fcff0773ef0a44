"""Streaming a cached file (or a body in memory) onto an aiohttp response, throttled, with faults.

Reads run in a worker thread in large chunks so the event loop stays free; writes go through a
token bucket when a bandwidth cap is set (one bucket per response, which on HTTP/1.1 is one per
connection at a time). A RESET, STALL, CORRUPT or TRUNCATE fault strikes at a byte position
computed from the ZIP's entry spans (or the body's length). Does file and socket I/O.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import socket
import struct
import time
from pathlib import Path
from typing import BinaryIO

from aiohttp import web

from bulkdl.testing.faults import Fault, FaultKind
from bulkdl.testing.zips import EntrySpan


class TokenBucket:
    """Limits a writer to ``rate`` bytes/s with a small burst."""

    def __init__(self, rate: float, burst: float | None = None) -> None:
        self.rate = rate
        self.burst = burst if burst is not None else max(rate / 20, 4096.0)
        self._tokens = self.burst
        self._last = time.monotonic()

    async def take(self, n: int) -> None:
        """Wait until ``n`` bytes may be sent."""
        while True:
            now = time.monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
            self._last = now
            if self._tokens >= n or self._tokens >= self.burst:
                self._tokens -= n
                return
            await asyncio.sleep((min(n, self.burst) - self._tokens) / self.rate)


def fault_position(fault: Fault, spans: list[EntrySpan], total: int) -> int:
    """The absolute byte offset in the body where ``fault`` strikes.

    With ``in_entry`` the position is within that entry's compressed data; a CORRUPT fault without
    it is moved into the nearest image's compressed data so that extraction must notice.
    """
    if fault.in_entry is not None:
        span = next((s for s in spans if s.name == fault.in_entry), None)
        if span is not None:
            lo, hi = span.data_start, span.data_end
            pos = lo + fault.position(hi - lo)
            return min(pos, hi - 1) if fault.kind is FaultKind.CORRUPT else pos
    pos = fault.position(total)
    if fault.kind is not FaultKind.CORRUPT:
        return pos
    images = [s for s in spans if s.name.endswith(".dcm") and s.data_end > s.data_start]
    if not images:
        return min(pos, max(total - 1, 0))
    best = min(
        images,
        key=lambda s: (
            0
            if s.data_start <= pos < s.data_end
            else min(abs(pos - s.data_start), abs(pos - s.data_end))
        ),
    )
    # Stay clear of the first bytes: a flip there can leave a still-valid block header.
    return (
        min(max(pos, best.data_start + 16), best.data_end - 1)
        if best.data_end - best.data_start > 32
        else best.data_start
    )


async def _flushed(request: web.BaseRequest, limit: float = 2.0) -> None:
    transport = request.transport
    deadline = time.monotonic() + limit
    # asyncio offers no "write buffer empty" event to wait on, so poll briefly.
    while (  # noqa: ASYNC110
        transport is not None and transport.get_write_buffer_size() and time.monotonic() < deadline
    ):
        await asyncio.sleep(0.005)


def reset_connection(request: web.BaseRequest) -> None:
    """Abort the connection with a TCP RST (SO_LINGER 0), as a crashed proxy would."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        # OSError: the peer went away already; the abort below still ends the response
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


async def stall(request: web.BaseRequest, seconds: float | None) -> bool:
    """Send nothing for ``seconds`` (None: until the client goes); True if the client went."""
    deadline = None if seconds is None else time.monotonic() + seconds
    while deadline is None or time.monotonic() < deadline:
        transport = request.transport
        if transport is None or transport.is_closing():
            return True
        await asyncio.sleep(0.05)
    return False


_POSITIONED = (FaultKind.RESET, FaultKind.STALL, FaultKind.CORRUPT, FaultKind.TRUNCATE)


async def stream_file(
    request: web.BaseRequest,
    response: web.StreamResponse,
    path: Path,
    *,
    chunk_size: int,
    bandwidth: float | None = None,
    fault: Fault | None = None,
    spans: list[EntrySpan] | None = None,
) -> None:
    """Write ``path`` to the prepared ``response``, applying ``fault`` at its position.

    Returns early (after aborting the connection) on a RESET, or after the cut on a TRUNCATE;
    raises ConnectionError if the client goes away, which aiohttp handles.
    """
    total = (await asyncio.to_thread(path.stat)).st_size
    f = await asyncio.to_thread(path.open, "rb")
    try:
        await _pump(request, response, f, total, chunk_size, bandwidth, fault, spans or [])
    finally:
        await asyncio.to_thread(f.close)


async def stream_bytes(
    request: web.BaseRequest,
    response: web.StreamResponse,
    body: bytes,
    *,
    chunk_size: int,
    bandwidth: float | None = None,
    fault: Fault | None = None,
) -> None:
    """Write ``body`` to the prepared ``response`` as :func:`stream_file` writes a file."""
    await _pump(request, response, io.BytesIO(body), len(body), chunk_size, bandwidth, fault, [])


async def _pump(
    request: web.BaseRequest,
    response: web.StreamResponse,
    f: BinaryIO,
    total: int,
    chunk_size: int,
    bandwidth: float | None,
    fault: Fault | None,
    spans: list[EntrySpan],
) -> None:
    strike = None
    if fault is not None and fault.kind in _POSITIONED:
        strike = fault_position(fault, spans, total)
    bucket = TokenBucket(bandwidth) if bandwidth else None
    if bucket is not None:
        chunk_size = max(1024, min(chunk_size, int(bandwidth or 0) // 10))
    sent = 0
    while True:
        want = chunk_size
        if (
            strike is not None
            and fault is not None
            and fault.kind is not FaultKind.CORRUPT
            and sent < strike
        ):
            want = min(want, strike - sent)
        data = await asyncio.to_thread(f.read, want) if want else b""
        corrupting = fault is not None and fault.kind is FaultKind.CORRUPT
        if corrupting and strike is not None and sent <= strike < sent + len(data):
            i = strike - sent
            data = data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1 :]
        if data:
            if bucket is not None:
                await bucket.take(len(data))
            await response.write(data)
            sent += len(data)
        if fault is not None and strike is not None and sent == strike:
            if fault.kind is FaultKind.TRUNCATE:
                return  # the caller ends the response properly: a clean, short body
            if fault.kind is FaultKind.RESET:
                await _flushed(request)
                # Linux drops unread received data on RST: give the client time to read
                # what was sent, so the cut falls where the fault says.
                await asyncio.sleep(0.05)
                reset_connection(request)
                return
            if fault.kind is FaultKind.STALL:
                await _flushed(request)
                if await stall(request, fault.seconds):
                    return
                strike = None
                continue
        if not data:
            return
