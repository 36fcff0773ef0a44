"""CPU work of many series in flight, on the gate's own worker threads, the oldest series first.

Every series in flight hands its body to worker threads in ~4 MiB batches (inflate, hash, write).
On a fast link there are more batches than cores, and a fair queue serves the series in turn, so
all of them finish together at the very end and their placing (links, ledger) runs alone, with
the cores idle. :class:`CpuGate` serves the waiting batch of the oldest series instead: series
finish one after another, each one's placing overlaps the others' unpacking, and fewer series
sit half-unpacked on disk. It is work-conserving: a younger series' batch runs whenever no older
one is waiting. On a slow link nobody waits and the order does not matter.

The gate keeps its own worker threads, each taking the next batch from the queue as soon as it
finishes one: the event loop is told of each result, but no core waits for it to hand out the
next batch, as it did when every batch went to a thread pool through the event loop. There is
one thread per core (:func:`default_slots`): with that gap gone, a thread more than the cores no
longer pays. A fetch worker process (:mod:`bulkdl.fetchpool`) has a gate of its own, with its
share of the cores. Both measured on the loopback benchmark (``benchmarks/DECISIONS.md``, "How many
batches unpack at once?").
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future
from types import TracebackType
from typing import Any, TypeVar

import anyio

T = TypeVar("T")


def usable_cores() -> int:
    """The cores this process may run on (a Slurm task's allocation, not the node's), >= 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # no affinity call on this platform (macOS)
        return os.cpu_count() or 1


def default_slots() -> int:
    """One worker thread per usable core (at least 2)."""
    return max(2, usable_cores())


class CpuGate:
    """At most ``slots`` calls run at once, in the gate's worker threads; queued calls are
    served by ticket, smallest first.

    ``ticket()`` when a series starts; ``await run(ticket, func, *args)`` for each piece of its
    CPU work. A call cancelled while queued never runs; one cancelled while running is waited
    for (its series' files must not change under the clean-up that follows). Use as
    ``with CpuGate(n) as gate:``; leaving stops the threads.
    """

    def __init__(self, slots: int) -> None:
        if slots < 1:
            raise ValueError(f"a CpuGate needs at least one slot, got {slots}")
        self._slots = slots
        self._ready = threading.Condition()
        self._queue: list[tuple[int, int, Future[Any], Callable[..., Any], tuple[object, ...]]] = []
        self._threads: list[threading.Thread] = []
        self._closed = False
        self._tickets = itertools.count()
        self._order = itertools.count()

    def __enter__(self) -> CpuGate:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def ticket(self) -> int:
        """A number for a series starting now: smaller numbers are served first."""
        return next(self._tickets)

    async def run(self, ticket: int, func: Callable[..., T], *args: object) -> T:
        """``func(*args)`` in a worker thread once one is free and no smaller ticket waits."""
        job: Future[T] = Future()
        with self._ready:
            if self._closed:
                raise RuntimeError("this CpuGate is closed")
            heapq.heappush(self._queue, (ticket, next(self._order), job, func, args))
            if len(self._threads) < self._slots:
                self._start_thread()
            self._ready.notify()
        done = asyncio.wrap_future(job)
        try:
            return await asyncio.shield(done)
        except BaseException:
            if job.cancel():  # still queued: it never runs
                raise
            with anyio.CancelScope(shield=True):
                await asyncio.wait([done])
            raise

    def close(self) -> None:
        """Stop the worker threads once the queue is empty (idempotent)."""
        with self._ready:
            self._closed = True
            self._ready.notify_all()
            threads, self._threads = self._threads, []
        for thread in threads:
            thread.join()

    def _start_thread(self) -> None:
        thread = threading.Thread(
            target=self._work, name=f"bulkdl-cpu-{len(self._threads)}", daemon=True
        )
        self._threads.append(thread)
        thread.start()

    def _work(self) -> None:
        while True:
            with self._ready:
                while not self._queue:
                    if self._closed:
                        return
                    self._ready.wait()
                _, _, job, func, args = heapq.heappop(self._queue)
            if not job.set_running_or_notify_cancel():
                continue  # cancelled while queued
            try:
                job.set_result(func(*args))
            except BaseException as exc:
                job.set_exception(exc)
