"""CPU work of many series in flight, a few at once, the series that started first first.

Every series in flight hands its body to worker threads in ~1 MiB batches (inflate, hash, write).
On a fast link there are more batches than cores, and a fair queue serves the series in turn, so
all of them finish together at the very end and their placing (links, ledger) runs alone, with
the cores idle. :class:`CpuGate` serves the waiting batch of the oldest series instead: series
finish one after another, each one's placing overlaps the others' unpacking, and fewer series
sit half-unpacked on disk. It is work-conserving: a younger series' batch runs whenever no older
one is waiting. On a slow link nobody waits and the order does not matter.

:func:`default_slots` is one more than there are cores: when a batch ends, its worker thread
hands the result back to the event loop, which must take the GIL and wake the next waiter
before another batch starts, and that round trip left a core idle about 5 % of the time. With
one batch queued beyond the cores, the loopback benchmark (12 series x 100 CT, 2 cores,
interleaved with curl + unzip) took 2.78 s against 2.92 s, faster in 11 of 12 rounds; twice the
cores was no better than one per core.
"""

from __future__ import annotations

import heapq
import itertools
import os
from collections.abc import Callable
from typing import TypeVar

import anyio

T = TypeVar("T")


def default_slots() -> int:
    """One more slot than there are cores (at least 2 cores are assumed)."""
    return max(2, os.cpu_count() or 2) + 1


class CpuGate:
    """At most ``slots`` calls run at once in worker threads; waiters are served by ticket.

    ``ticket()`` when a series starts; ``await run(ticket, func, *args)`` for each piece of its
    CPU work. Cancellation while waiting gives nothing up: a slot handed over at that moment is
    passed on to the next waiter.
    """

    def __init__(self, slots: int) -> None:
        if slots < 1:
            raise ValueError(f"a CpuGate needs at least one slot, got {slots}")
        self._free = slots
        self._waiting: list[tuple[int, int, anyio.Event]] = []
        self._tickets = itertools.count()
        self._order = itertools.count()

    def ticket(self) -> int:
        """A number for a series starting now: smaller numbers are served first."""
        return next(self._tickets)

    async def run(self, ticket: int, func: Callable[..., T], *args: object) -> T:
        """``func(*args)`` in a worker thread once a slot is free and no older ticket waits."""
        await self._acquire(ticket)
        try:
            return await anyio.to_thread.run_sync(func, *args)
        finally:
            self._release()

    async def _acquire(self, ticket: int) -> None:
        if self._free:  # a free slot means nobody waits: slots go straight to waiters
            self._free -= 1
            return
        waiter = (ticket, next(self._order), anyio.Event())
        heapq.heappush(self._waiting, waiter)
        try:
            await waiter[2].wait()
        except BaseException:
            if waiter[2].is_set():
                self._release()  # handed a slot while being cancelled
            else:
                self._waiting.remove(waiter)
                heapq.heapify(self._waiting)
            raise

    def _release(self) -> None:
        if self._waiting:
            heapq.heappop(self._waiting)[2].set()  # the slot passes to the oldest waiter
        else:
            self._free += 1
