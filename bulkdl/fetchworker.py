"""A fetch worker process: ``python -m bulkdl.fetchworker FD``, started by a FetchPool.

FD is the worker's end of a socket pair with its parent (:mod:`bulkdl.fetchpool`). The first
message is the :class:`~bulkdl.fetchpool.WorkerSpec`; the worker then opens an NBIA source of its
own with the run's settings (:func:`bulkdl.api.open_source`: its HTTP session, its
:class:`~bulkdl.cpugate.CpuGate` of ``spec.slots`` threads) and runs
each :class:`~bulkdl.fetchpool.Fetch` as a task, reporting received bytes (in 1 MiB steps), log
records at the parent's level, and the result or the error. A
:class:`~bulkdl.fetchpool.Cancel` cancels its job (the fetch removes what it wrote before the
worker answers); :class:`~bulkdl.fetchpool.Stop`, or the parent going away (end of the socket),
ends the worker, the latter cancelling every job first. SIGINT is ignored: a Ctrl-C reaches the
whole process group, and the parent decides what stops. Network and disk I/O.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import signal
import socket
import sys
import threading
import traceback
from typing import NoReturn

import anyio

from bulkdl.api import open_source
from bulkdl.fetchpool import (
    Cancel,
    Done,
    Fetch,
    LogLine,
    Received,
    Stop,
    WorkerSpec,
    encode,
    read_frame,
)
from bulkdl.sources.nbia_source import NbiaSource

#: Received bytes are reported in steps of this many (the parent's progress, not each read).
PROGRESS_STEP = 1 << 20


class _ToParent(logging.Handler):
    """Log records of the worker, formatted, sent to the parent from whichever thread."""

    def __init__(self, writer: asyncio.StreamWriter, level: int) -> None:
        super().__init__(level)
        self._writer = writer
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()

    def emit(self, record: logging.LogRecord) -> None:
        frame = encode(LogLine(record.name, record.levelno, self.format(record)))
        if threading.get_ident() == self._loop_thread:
            self._writer.write(frame)
        else:
            self._loop.call_soon_threadsafe(self._writer.write, frame)


def _portable(exc: BaseException) -> BaseException:
    """``exc`` if it survives pickling, else a RuntimeError carrying its traceback as text."""
    try:
        pickle.dumps(exc)
    except Exception:
        text = "".join(traceback.format_exception(exc)).rstrip()
        return RuntimeError(f"in fetch worker: {text}")
    return exc


async def _job(
    source: NbiaSource,
    order: Fetch,
    scopes: dict[int, anyio.CancelScope],
    writer: asyncio.StreamWriter,
) -> None:
    scope = scopes[order.job]
    pending = 0

    def on_bytes(count: int) -> None:
        nonlocal pending
        pending += count
        if pending >= PROGRESS_STEP:
            writer.write(encode(Received(order.job, pending)))
            pending = 0

    reply = Done(order.job)  # cancelled, unless the fetch ends first
    with scope:
        try:
            fetched = await source.fetch(
                order.series, order.workdir, inspect=order.inspect, on_bytes=on_bytes
            )
            reply = Done(order.job, fetched=fetched)
        except Exception as exc:
            reply = Done(order.job, error=_portable(exc))
    scopes.pop(order.job, None)
    if pending:
        writer.write(encode(Received(order.job, pending)))
    writer.write(encode(reply))
    await writer.drain()


async def _serve(fd: int) -> None:
    reader, writer = await asyncio.open_connection(sock=socket.socket(fileno=fd))
    try:
        spec = await read_frame(reader)
    except EOFError:  # the parent stopped before it had work for us
        return
    assert isinstance(spec, WorkerSpec)
    root = logging.getLogger()
    for handler in root.handlers[:]:  # a forked worker's copies of the parent's: not ours
        root.removeHandler(handler)
    root.setLevel(spec.log_level)
    root.addHandler(_ToParent(writer, spec.log_level))
    scopes: dict[int, anyio.CancelScope] = {}
    async with (
        open_source(spec.settings, slots=spec.slots) as (source, _),
        anyio.create_task_group() as jobs,
    ):
        while True:
            try:
                message = await read_frame(reader)
            except EOFError:  # the parent is gone: nobody wants the results
                jobs.cancel_scope.cancel()
                break
            if type(message) is Fetch:
                scopes[message.job] = anyio.CancelScope()
                jobs.start_soon(_job, source, message, scopes, writer)
            elif type(message) is Cancel:
                if (scope := scopes.pop(message.job, None)) is not None:
                    scope.cancel()
            elif type(message) is Stop:
                break
    writer.close()


def _signals() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides what a Ctrl-C stops
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a TERM for the whole group ends us at once


def serve_forked(sock: socket.socket) -> NoReturn:
    """The body of a child forked by :func:`~bulkdl.fetchpool.fork_workers`: serve ``sock``,
    then leave at once, running none of the parent's exit handlers and flushing none of its
    buffers (what the parent had not yet written is the parent's to write)."""
    code = 1
    try:
        _signals()
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 0)
        os.dup2(devnull, 1)
        os.close(devnull)
        anyio.run(_serve, sock.detach())
        code = 0
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stderr.flush()
        os._exit(code)


def main(argv: list[str]) -> int:
    """Serve the parent on the socket whose descriptor is ``argv[1]``."""
    _signals()
    anyio.run(_serve, int(argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
