"""Series fetched in worker processes: each with its own interpreter, event loop and GIL.

One interpreter's GIL is shared by its event loop (reading the sockets) and its unpacking
threads (inflate, MD5, SHA-256, writes, which release it for their C calls): every hand-back
between them can find the GIL taken and put a core to sleep. On the loopback benchmark's 2
cores, two processes of 6 series each took 2.19-2.29 s where one process of 12 took 2.65-2.92 s
(6 interleaved rounds; ``benchmarks/DECISIONS.md``). :class:`FetchPool` starts ``processes``
workers (:mod:`bulkdl.fetchworker`), each given one end of a socket pair, and hands each
series' fetch to the worker with the fewest in flight. A worker is forked by :func:`fork_workers`
when the command line starts (single-threaded, every module already imported: it is ready at
once), or else started as ``python -m bulkdl.fetchworker FD`` (~0.3 s of imports). The parent
keeps resolving, verifying, placing and the ledger; a worker fetches into the staging folder it
is given and sends back the :class:`~bulkdl.records.FetchedSeries` (names, sizes, hashes,
headers: a few hundred bytes a file), never the bytes. Messages are length-prefixed pickles
between a process and its own child. A series whose worker dies is failed as transient (the
pipeline retries it in another); once every worker is gone the run aborts. A cancelled fetch is
cancelled in its worker and waited for, so nothing writes into a work folder being removed.
Network (local sockets) and processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import logging
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Final, NoReturn, Protocol

import anyio

from bulkdl.cpugate import usable_cores
from bulkdl.errors import AbortError, TransientError
from bulkdl.records import FetchedSeries, Series
from bulkdl.unpack import Inspect

if TYPE_CHECKING:
    from bulkdl.config import Settings

log = logging.getLogger(__name__)

_LENGTH: Final = struct.Struct("!I")
#: No message comes near this (a FetchedSeries is ~300 bytes a file): more is a broken stream.
MAX_FRAME: Final = 1 << 30
#: Seconds a worker gets to exit after being told to stop, before it is killed.
STOP_GRACE: Final = 10.0


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """What a worker needs to open the run's source as the run does: its settings (no
    credentials: a pool is only used for APIs that need no token), how many unpacking threads,
    and the lowest log level the parent shows."""

    settings: Settings
    slots: int
    log_level: int


@dataclass(frozen=True, slots=True)
class Fetch:
    """Parent -> worker: fetch ``series`` into ``workdir`` as job ``job``."""

    job: int
    series: Series
    workdir: Path
    inspect: Inspect


@dataclass(frozen=True, slots=True)
class Cancel:
    """Parent -> worker: stop job ``job`` and remove what it wrote."""

    job: int


@dataclass(frozen=True, slots=True)
class Stop:
    """Parent -> worker: no more jobs; exit."""


@dataclass(frozen=True, slots=True)
class Received:
    """Worker -> parent: ``count`` more bytes of job ``job``'s body arrived."""

    job: int
    count: int


@dataclass(frozen=True, slots=True)
class Done:
    """Worker -> parent: job ``job`` ended; ``fetched`` is its result or ``error`` what it raised
    (None and None: it was cancelled)."""

    job: int
    fetched: FetchedSeries | None = None
    error: BaseException | None = None


@dataclass(frozen=True, slots=True)
class LogLine:
    """Worker -> parent: a log record of the worker, already formatted."""

    name: str
    level: int
    text: str


def encode(message: object) -> bytes:
    """``message`` as one frame: its pickle's length, then the pickle."""
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(body)) + body


async def read_frame(reader: asyncio.StreamReader) -> object:
    """The next message; raises EOFError when the other side has gone."""
    try:
        head = await reader.readexactly(_LENGTH.size)
        size = _LENGTH.unpack(head)[0]
        if size > MAX_FRAME:
            raise EOFError(f"a frame of {size:,} bytes: the stream is broken")
        return pickle.loads(await reader.readexactly(size))
    except (asyncio.IncompleteReadError, ConnectionError) as exc:
        raise EOFError("the other side closed the connection") from exc


def worker_slots(processes: int) -> int:
    """Unpacking threads per worker: the usable cores shared out, at least one."""
    return max(1, usable_cores() // processes)


class Child(Protocol):
    """A worker process as the pool handles it (:class:`subprocess.Popen` is one)."""

    pid: int

    def wait(self, timeout: float | None = None) -> int: ...

    def kill(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Started:
    """A worker process running, and the parent's end of its socket."""

    process: Child
    sock: socket.socket


class _Forked:
    """A child made by ``os.fork``, with the part of Popen's interface the pool uses (waited for
    by one thread at a time: a worker's reader, or :func:`stop_started` for one no pool took)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._status: int | None = None

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._status is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)  # waitpid itself has no timeout
            if pid:
                self._status = os.waitstatus_to_exitcode(status)
            elif deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(f"fetch worker {self.pid}", timeout or 0)
            else:
                time.sleep(0.01)
        return self._status

    def kill(self) -> None:
        if self._status is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)


def can_fork() -> bool:
    """Whether :func:`fork_workers` is safe here: a POSIX fork, and no thread but this one (a
    child forked beside other threads may inherit a lock one of them held)."""
    return hasattr(os, "fork") and threading.active_count() == 1


def fork_workers(count: int) -> list[Started]:
    """``count`` workers forked from this process, which must be single-threaded
    (:func:`can_fork`) with no event loop running; each child serves its socket and exits.

    Raises AbortError when a fork fails (the children already forked are stopped first).
    """
    from bulkdl import fetchworker

    sys.stdout.flush()  # or the children would hold copies of what is not written yet
    sys.stderr.flush()
    # Frozen, the parent's objects are never visited by a child's garbage collector, so their
    # pages stay shared instead of being copied into every child (a 200,000-series manifest).
    gc.freeze()
    started: list[Started] = []
    try:
        for _ in range(count):
            started.append(_fork_one(started, fetchworker.serve_forked))
    finally:
        gc.unfreeze()  # in this process; the children keep them frozen
    return started


def _fork_one(siblings: Sequence[Started], serve: Callable[[socket.socket], NoReturn]) -> Started:
    ours, theirs = socket.socketpair()
    try:
        pid = os.fork()
    except OSError as exc:
        ours.close()
        theirs.close()
        stop_started(siblings)
        raise AbortError(f"cannot start a fetch worker process: {exc}") from exc
    if pid == 0:  # the child: serve, and never return into the parent's code
        ours.close()
        for other in siblings:
            other.sock.close()  # a parent's end held here would hide the parent's death
        serve(theirs)
    theirs.close()
    return Started(_Forked(pid), ours)


def stop_started(started: Sequence[Started]) -> None:
    """Close the sockets of workers no pool took (each then exits) and wait for them."""
    for worker in started:
        worker.sock.close()
    for worker in started:
        _reap(worker.process)


@dataclass(eq=False)
class _Worker:
    """One worker process, its socket, and the jobs it has not answered yet."""

    process: Child
    writer: asyncio.StreamWriter
    jobs: dict[int, tuple[asyncio.Future[FetchedSeries], Callable[[int], None]]] = field(
        default_factory=dict
    )
    reading: asyncio.Task[None] | None = None
    alive: bool = True


class FetchPool:
    """``processes`` fetch workers for one run; ``async with FetchPool(spec, n) as pool:``.

    ``started`` are workers forked already (:func:`fork_workers`), taken over by the pool (it
    stops them); the rest are started as ``python -m bulkdl.fetchworker``.
    """

    def __init__(
        self, spec: WorkerSpec, processes: int, *, started: Sequence[Started] = ()
    ) -> None:
        if processes < 1:
            raise ValueError(f"a FetchPool needs at least one process, got {processes}")
        self.spec = spec
        self.processes = processes
        self._started = list(started)
        self._workers: list[_Worker] = []
        self._jobs = itertools.count()

    async def __aenter__(self) -> FetchPool:
        try:
            while self._started:
                self._workers.append(await self._connect(self._started.pop(0)))
            while len(self._workers) < self.processes:
                self._workers.append(await self._connect(await self._spawn()))
        except BaseException:
            stop_started(self._started)
            await self.aclose()
            raise
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    @property
    def pids(self) -> list[int]:
        """The worker processes' PIDs (the live ones)."""
        return [w.process.pid for w in self._workers if w.alive]

    async def fetch(
        self, series: Series, workdir: Path, *, inspect: Inspect, on_bytes: Callable[[int], None]
    ) -> FetchedSeries:
        """The Source protocol's fetch, in the worker with the fewest jobs in flight.

        Raises what the worker's fetch raised; TransientError when the worker died meanwhile;
        AbortError when no worker is left.
        """
        live = [w for w in self._workers if w.alive]
        if not live:
            raise AbortError("every fetch worker process has exited (see the errors above)")
        worker = min(live, key=lambda w: len(w.jobs))
        job = next(self._jobs)
        answer: asyncio.Future[FetchedSeries] = asyncio.get_running_loop().create_future()
        worker.jobs[job] = (answer, on_bytes)
        worker.writer.write(encode(Fetch(job, series, workdir, inspect)))
        try:
            return await asyncio.shield(answer)
        except BaseException:
            if not answer.done():  # we were cancelled: so is the job, and we wait for it
                if worker.alive:
                    worker.writer.write(encode(Cancel(job)))
                with anyio.CancelScope(shield=True):
                    await asyncio.wait([answer])
            if not answer.cancelled():
                answer.exception()  # retrieved: its own exception, or one replaced by ours
            raise

    async def aclose(self) -> None:
        """Tell the workers to stop and wait for them: each one's reader sees its socket close
        and reaps it (killing one that does not exit)."""
        workers, self._workers = self._workers, []
        for worker in workers:
            if worker.alive:
                worker.writer.write(encode(Stop()))
            worker.writer.close()
        readers = [w.reading for w in workers if w.reading is not None]
        if readers:
            with anyio.CancelScope(shield=True):
                await asyncio.wait(readers)

    async def _spawn(self) -> Started:
        ours, theirs = socket.socketpair()
        try:
            process = await anyio.to_thread.run_sync(_spawn, theirs.fileno())
        except OSError as exc:
            ours.close()
            raise AbortError(f"cannot start a fetch worker process: {exc}") from exc
        finally:
            theirs.close()
        return Started(process, ours)

    async def _connect(self, started: Started) -> _Worker:
        reader, writer = await asyncio.open_connection(sock=started.sock)
        writer.write(encode(self.spec))
        worker = _Worker(started.process, writer)
        worker.reading = asyncio.create_task(self._read(worker, reader))
        return worker

    async def _read(self, worker: _Worker, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                message = await read_frame(reader)
                if type(message) is Received:
                    entry = worker.jobs.get(message.job)
                    if entry is not None:
                        entry[1](message.count)
                elif type(message) is Done:
                    answer = worker.jobs.pop(message.job)[0]
                    if message.error is not None:
                        answer.set_exception(message.error)
                    elif message.fetched is not None:
                        answer.set_result(message.fetched)
                    else:
                        answer.cancel()
                elif type(message) is LogLine:
                    logging.getLogger(message.name).log(message.level, "%s", message.text)
        except EOFError:
            pass
        finally:
            worker.alive = False
            code = await anyio.to_thread.run_sync(_reap, worker.process)
            if worker.jobs:
                log.error("fetch worker %d exited (status %s)", worker.process.pid, code)
            for job, (answer, _) in worker.jobs.items():
                if not answer.done():
                    answer.set_exception(
                        TransientError(
                            f"the fetch worker process {worker.process.pid} exited (status "
                            f"{code}) during job {job}"
                        )
                    )
            worker.jobs.clear()


def _spawn(fd: int) -> subprocess.Popen[bytes]:
    """``python -m bulkdl.fetchworker FD``, given descriptor ``fd`` and nothing else of ours."""
    return subprocess.Popen(
        [sys.executable, "-m", "bulkdl.fetchworker", str(fd)],
        pass_fds=(fd,),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        env=_worker_env(),
    )


def _reap(process: Child) -> int:
    """Wait for ``process`` to exit, killing it after STOP_GRACE s; its exit status."""
    try:
        return process.wait(STOP_GRACE)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


def _worker_env() -> dict[str, str]:
    """The environment with this bulkdl's folder first on PYTHONPATH, so the worker imports the
    same code however the parent found it (installed, a checkout, ``python -m``)."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env
