"""CpuGate: at most N calls at once on its own threads, the oldest ticket first, cancels safe."""

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
        with CpuGate(1) as gate:
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
        with CpuGate(2) as gate:
            async with anyio.create_task_group() as tg:
                for _ in range(12):
                    tg.start_soon(series, gate)

    anyio.run(main)
    assert peak == 2


def test_a_cancelled_waiter_never_runs_and_frees_nothing_it_did_not_hold() -> None:
    """A waiter cancelled in the queue does not run; the others all still get the slot."""
    ran: list[str] = []

    async def main() -> None:
        with CpuGate(1) as gate:
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


def test_a_call_cancelled_while_running_is_waited_for() -> None:
    """Cancelling a running call returns only once it has finished (the clean-up after it must
    not race it), and the gate goes on serving."""
    events: list[str] = []
    release = threading.Event()

    def slow() -> None:
        release.wait()
        time.sleep(0.05)
        events.append("finished")

    async def main() -> None:
        with CpuGate(1) as gate:
            with anyio.CancelScope() as scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(gate.run, gate.ticket(), slow)
                    await anyio.sleep(0.05)
                    scope.cancel()
                    release.set()
            events.append("cancelled")
            with anyio.fail_after(2):
                await gate.run(gate.ticket(), events.append, "next")

    anyio.run(main)
    assert events == ["finished", "cancelled", "next"]


def test_an_exception_reaches_the_caller_and_results_come_back() -> None:
    def fail() -> None:
        raise OSError(28, "No space left on device")

    async def main() -> int:
        with CpuGate(2) as gate:
            with pytest.raises(OSError, match="No space left"):
                await gate.run(gate.ticket(), fail)
            return await gate.run(gate.ticket(), sum, [1, 2, 3])

    assert anyio.run(main) == 6


def test_work_runs_on_the_gates_threads_which_stop_with_it() -> None:
    """The calls run on the gate's own threads (never the event loop's), and leaving the gate
    stops them; a closed gate refuses work."""
    names: set[str] = set()

    async def main() -> CpuGate:
        with CpuGate(2) as gate:
            async with anyio.create_task_group() as tg:
                for _ in range(8):
                    tg.start_soon(gate.run, gate.ticket(), lambda: names.add(_thread_name()))
        with pytest.raises(RuntimeError, match="closed"):
            await gate.run(gate.ticket(), print)
        return gate

    anyio.run(main)
    assert names and all(name.startswith("bulkdl-cpu-") for name in names)
    assert not [t for t in threading.enumerate() if t.name.startswith("bulkdl-cpu-")]


def _thread_name() -> str:
    return threading.current_thread().name


def test_an_asyncio_cancel_of_a_queued_call_runs_nothing() -> None:
    """A plain asyncio task cancel (not an anyio scope) of a queued call: it never runs."""
    ran: list[str] = []

    async def main() -> None:
        with CpuGate(1) as gate:
            release = threading.Event()
            holder = asyncio.ensure_future(gate.run(gate.ticket(), release.wait))
            await asyncio.sleep(0.02)
            queued = asyncio.ensure_future(gate.run(gate.ticket(), ran.append, "queued"))
            await asyncio.sleep(0.02)
            queued.cancel()
            with pytest.raises(asyncio.CancelledError):
                await queued
            release.set()
            await asyncio.wait_for(holder, 2)
            await asyncio.wait_for(gate.run(gate.ticket(), ran.append, "after"), 2)

    asyncio.run(main())
    assert ran == ["after"]


def test_no_slots_is_an_error() -> None:
    with pytest.raises(ValueError, match="at least one slot"):
        CpuGate(0)
