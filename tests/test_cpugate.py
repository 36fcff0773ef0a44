"""CpuGate: at most N calls at once, the oldest ticket served first, no slot lost to cancels."""

from __future__ import annotations

import asyncio
import threading
import time

import anyio
import pytest

from bulkdl.cpugate import CpuGate


def test_waiters_are_served_oldest_ticket_first() -> None:
    """With the slot taken, batches queued by tickets 3, 1, 2 run as 1, 2, 3."""
    ran: list[int] = []

    async def main() -> None:
        gate = CpuGate(1)
        tickets = [gate.ticket() for _ in range(4)]
        release = threading.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(gate.run, tickets[0], release.wait)
            await anyio.sleep(0.05)
            for t in (tickets[3], tickets[1], tickets[2]):
                tg.start_soon(gate.run, t, ran.append, t)
                await anyio.sleep(0.01)
            assert ran == []
            release.set()

    anyio.run(main)
    assert ran == [1, 2, 3]


def test_never_more_calls_at_once_than_slots() -> None:
    """Twelve series' batches through two slots: never three in worker threads at once."""
    lock = threading.Lock()
    running = peak = 0

    def work() -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.005)
        with lock:
            running -= 1

    async def series(gate: CpuGate) -> None:
        ticket = gate.ticket()
        for _ in range(5):
            await gate.run(ticket, work)

    async def main() -> None:
        gate = CpuGate(2)
        async with anyio.create_task_group() as tg:
            for _ in range(12):
                tg.start_soon(series, gate)

    anyio.run(main)
    assert peak == 2


def test_a_cancelled_waiter_never_runs_and_frees_nothing_it_did_not_hold() -> None:
    """A waiter cancelled in the queue does not run; the others all still get the slot."""
    ran: list[str] = []

    async def main() -> None:
        gate = CpuGate(1)
        release = threading.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(gate.run, gate.ticket(), release.wait)
            await anyio.sleep(0.05)
            with anyio.CancelScope() as scope:
                scope.cancel()
                await gate.run(gate.ticket(), ran.append, "cancelled")
            tg.start_soon(gate.run, gate.ticket(), ran.append, "after")
            await anyio.sleep(0.01)
            release.set()
        with anyio.fail_after(2):  # both slots' worth of work can still pass: none leaked
            await gate.run(gate.ticket(), ran.append, "last")

    anyio.run(main)
    assert ran == ["after", "last"]


def test_a_slot_handed_to_a_waiter_being_cancelled_passes_on() -> None:
    """The slot released to a waiter at the moment it is cancelled goes to the next waiter,
    and afterwards the gate has its one slot free again."""
    ran: list[str] = []

    async def main() -> None:
        gate = CpuGate(1)
        await gate._acquire(gate.ticket())  # a holder outside any task
        scope = anyio.CancelScope()

        async def first() -> None:
            with scope:
                await gate.run(0, ran.append, "first")

        async with anyio.create_task_group() as tg:
            tg.start_soon(first)
            tg.start_soon(gate.run, 5, ran.append, "second")
            await anyio.sleep(0.01)
            gate._release()  # hands the slot to ticket 0 ...
            scope.cancel()  # ... which is cancelled before it resumes
        assert gate._free == 1 and not gate._waiting

    anyio.run(main)
    assert ran == ["second"]


def test_a_task_cancelled_as_its_slot_arrives_passes_it_on() -> None:
    """The same handover under a plain asyncio task cancel, which lands in the wait itself."""

    async def main() -> None:
        gate = CpuGate(1)
        await gate._acquire(gate.ticket())
        first = asyncio.ensure_future(gate._acquire(1))
        second = asyncio.ensure_future(gate._acquire(2))
        await asyncio.sleep(0.01)
        gate._release()
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        await asyncio.wait_for(second, 2)

    asyncio.run(main())


def test_no_slots_is_an_error() -> None:
    with pytest.raises(ValueError, match="at least one slot"):
        CpuGate(0)
