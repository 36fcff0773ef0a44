"""The live progress display on a terminal: one rich ``Live`` of the run's counts and bytes.

:class:`LiveReporter` keeps a :class:`~bulkdl.progress.Tally` of the events the pipeline emits and
lets rich redraw it a few times a second from rich's own thread. It is a module of its own so
that rich (about 40 ms of imports) loads only for runs that draw on a terminal, never for batch
jobs, logs or ``--json``. I/O only to the console it is given.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from typing import Literal, Self

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from bulkdl.progress import BaseReporter, Event, RateMeter, Tally, eta_text, human_bytes, short_uid


class LiveReporter(BaseReporter):
    """One rich ``Live`` display on ``console``: series done/total, a bytes bar with rate and ETA,
    retries and failures, and the oldest few series in flight with their bytes so far.

    rich redraws it ``refresh_per_second`` times from its own thread; emit only updates counts
    under a lock the drawing thread takes just long enough to copy them. Starts on ``with`` or on
    the first event. stdout and stderr are left alone (not redirected through the display).
    """

    def __init__(
        self,
        console: Console,
        *,
        refresh_per_second: float = 4.0,
        shown_in_flight: int = 5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.console = console
        self._clock = clock
        self._shown = shown_in_flight
        self._tally = Tally()
        self._rate = RateMeter()
        self._lock = threading.Lock()
        self._live = Live(
            get_renderable=self.render,
            console=self.console,
            refresh_per_second=refresh_per_second,
            redirect_stdout=False,
            redirect_stderr=False,
        )
        self._state: Literal["new", "live", "closed"] = "new"

    def __enter__(self) -> Self:
        self._start()
        return self

    def emit(self, event: Event) -> None:
        """Count ``event``; the display picks it up at its next refresh."""
        if self._state != "live":
            self._start()
        with self._lock:
            self._tally.update(event)

    def close(self) -> None:
        """Draw the final state and leave it on screen."""
        if self._state == "live":
            self._live.stop()
        self._state = "closed"

    def render(self) -> RenderableType:
        """The display as of now (rich calls this at each refresh)."""
        with self._lock:
            tally = self._tally
            over, total = tally.series_over, tally.total
            progress, expected, received = tally.progress, tally.expected_bytes, tally.received
            retries, failed, incomplete = tally.retries, tally.failed, tally.incomplete
            flying = len(tally.in_flight)
            shown = list(itertools.islice(tally.in_flight.items(), self._shown))
            rate = self._rate.update(self._clock(), received)
            eta = tally.eta(rate)

        bar = Table.grid(padding=(0, 1))
        bar.add_row(
            Text(f"{over}/{total} series", style="bold"),
            ProgressBar(total=max(expected, 1), completed=progress, width=30),
            Text(f"{human_bytes(progress)} / {human_bytes(expected)}"),
            Text(f"{human_bytes(rate)}/s", style="cyan"),
            Text(f"ETA {eta_text(eta)}"),
        )
        counts = Text(f"retries {retries} · failed {failed} · incomplete {incomplete}")
        if failed:
            counts.stylize("red")
        rows: list[RenderableType] = [bar, counts]
        if shown:
            flight = Table.grid(padding=(0, 2))
            for uid, got in shown:
                flight.add_row(Text("  " + short_uid(uid), style="dim"), human_bytes(got))
            rows.append(flight)
        if flying > len(shown):
            rows.append(Text(f"  and {flying - len(shown)} more in flight", style="dim"))
        return Group(*rows)

    def _start(self) -> None:
        if self._state == "new":
            self._live.start()
            self._state = "live"
