"""What the user sees while a download runs: the events the pipeline emits, and their reporters.

The pipeline calls ``reporter.emit(event)`` from the event loop, for every chunk too, so emit is
O(1) bookkeeping; output happens on a clock, not per event. The display on a terminal is
:class:`~bulkdl.live.LiveReporter`, in its own module so that rich loads only where it draws;
:class:`LineReporter` writes a plain line every few seconds (and one per retried or failed
series) for logs; :class:`JsonReporter` writes one JSON object per line, coalescing
:class:`BytesReceived` into a few ``progress`` objects a second. :func:`summary_text` is the
closing paragraph, which the caller prints once the run is over (reporters do not print it, so a
``--json`` run can still put it on stderr). Progress is not logging: nothing here logs, and the
events hold no secrets. I/O only to the stream or console a reporter is given.
"""

from __future__ import annotations

import dataclasses
import json as jsonlib
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Final, Literal, Protocol, Self, TextIO

Outcome = Literal["done", "incomplete", "failed", "skipped"]


# --------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class RunPlanned:
    """The plan, once resolved: ``total`` series, of which ``to_fetch`` will be downloaded and
    ``skipped`` are already done (these get no further events); ``images`` and ``bytes`` are what
    the series to fetch are expected to hold."""

    total: int
    to_fetch: int
    skipped: int
    images: int
    bytes: int


@dataclass(frozen=True, slots=True)
class SeriesStarted:
    """An attempt at a series begins (``attempt`` 1 is the first)."""

    uid: str
    attempt: int


@dataclass(frozen=True, slots=True)
class BytesReceived:
    """``n`` more body bytes of a series arrived. Very frequent: reporters only add it up."""

    uid: str
    n: int


@dataclass(frozen=True, slots=True)
class SeriesRetrying:
    """Attempt ``attempt`` at a series failed for ``reason``; the next starts in ``delay`` s."""

    uid: str
    attempt: int
    reason: str
    delay: float


@dataclass(frozen=True, slots=True)
class SeriesFinished:
    """A series is over: placed (``done``), placed short of images (``incomplete``), given up
    (``failed``, with ``reason``) or skipped during the run (not counted in RunPlanned.skipped)."""

    uid: str
    outcome: Outcome
    images: int
    bytes: int
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class RunFinished:
    """The run is over; ``failures`` are (uid, reason) pairs of failed series."""

    done: int
    incomplete: int
    failed: int
    skipped: int
    images: int
    bytes: int
    seconds: float
    failures: tuple[tuple[str, str], ...] = ()


Event = RunPlanned | SeriesStarted | BytesReceived | SeriesRetrying | SeriesFinished | RunFinished


class Reporter(Protocol):
    """Receives the run's events; ``close`` (or leaving the ``with`` block) ends its output."""

    def emit(self, event: Event) -> None:
        """Take one event; cheap enough to call for every chunk received."""

    def close(self) -> None:
        """Flush and stop; calling it again does nothing."""

    def __enter__(self) -> Self: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


# --------------------------------------------------------------------------- formatting


def human_bytes(n: float) -> str:
    """``n`` bytes in decimal units, as the rest of bulkdl counts: ``512 B``, ``1.2 GB``."""
    if abs(n) < 1000:
        return f"{n:.0f} B"
    for unit in ("kB", "MB", "GB", "TB"):
        n /= 1000
        if abs(n) < 1000:
            return f"{n:.1f} {unit}"
    return f"{n / 1000:.1f} PB"


def human_duration(seconds: float) -> str:
    """``4.2 s`` under a minute, else ``H:MM:SS``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    return str(timedelta(seconds=round(seconds)))


def short_uid(uid: str, width: int = 24) -> str:
    """The end of a UID (where series of one study differ), ``…`` standing for the rest."""
    return uid if len(uid) <= width else "…" + uid[-(width - 1) :]


#: Failures the summary names one by one; the rest are counted and left to failures.csv.
SUMMARY_FAILURES: Final = 20


def summary_text(run: RunFinished, *, failures_file: str = "failures.csv") -> str:
    """The closing paragraph of a run, for people: counts, volume, time, rate, then each failure
    with its reason (the first 20, then a pointer to ``failures_file``)."""
    total = run.done + run.incomplete + run.failed + run.skipped
    lines = [
        f"{total} series: {run.done} ok, {run.incomplete} incomplete, {run.failed} failed, "
        f"{run.skipped} skipped",
        f"{run.images:,} images, {human_bytes(run.bytes)} in {human_duration(run.seconds)}"
        + (f" ({human_bytes(run.bytes / run.seconds)}/s)" if run.seconds > 0 else ""),
    ]
    if run.failures:
        lines.append("failed:")
        for uid, reason in run.failures[:SUMMARY_FAILURES]:
            lines.append(f"  {uid}: {' '.join(reason.split())}")
        rest = len(run.failures) - SUMMARY_FAILURES
        if rest > 0:
            lines.append(f"  and {rest} more; see {failures_file}")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- shared state


class RateMeter:
    """Bytes per second over roughly the last ``window`` seconds, from samples taken when output
    is produced (never per event)."""

    __slots__ = ("_samples", "_window")

    def __init__(self, window: float = 10.0) -> None:
        self._window = window
        self._samples: deque[tuple[float, int]] = deque()

    def update(self, now: float, total: int) -> float:
        samples = self._samples
        samples.append((now, total))
        # Keep the newest sample at least ``window`` old, so the rate spans a full window.
        while len(samples) > 2 and now - samples[1][0] >= self._window:
            samples.popleft()
        then, before = samples[0]
        # Under a second of history the figure is noise (the first chunks arrive in a burst).
        return (total - before) / (now - then) if now - then >= 1.0 else 0.0


class Tally:
    """Running counts from the events; every update is O(1).

    ``received`` counts every body byte (the rate); ``progress`` counts bytes toward the plan: the
    current attempt of each series in flight plus the last attempt of each placed series, so a
    retried or failed attempt's bytes leave the bar instead of running it past 100 %.
    """

    __slots__ = (
        "done",
        "failed",
        "finished",
        "in_flight",
        "incomplete",
        "planned",
        "progress",
        "received",
        "retries",
        "skipped",
    )

    def __init__(self) -> None:
        self.planned: RunPlanned | None = None
        self.in_flight: dict[str, int] = {}
        self.received = 0
        self.progress = 0
        self.done = self.incomplete = self.failed = self.skipped = 0
        self.finished = 0
        self.retries = 0

    def update(self, event: Event) -> None:
        if type(event) is BytesReceived:
            self.in_flight[event.uid] = self.in_flight.get(event.uid, 0) + event.n
            self.received += event.n
            self.progress += event.n
        elif isinstance(event, SeriesStarted):
            self.progress -= self.in_flight.get(event.uid, 0)
            self.in_flight[event.uid] = 0
        elif isinstance(event, SeriesRetrying):
            self.progress -= self.in_flight.pop(event.uid, 0)
            self.retries += 1
        elif isinstance(event, SeriesFinished):
            got = self.in_flight.pop(event.uid, 0)
            self.finished += 1
            if event.outcome == "done":
                self.done += 1
            elif event.outcome == "incomplete":
                self.incomplete += 1
            elif event.outcome == "failed":
                self.failed += 1
                self.progress -= got
            else:
                self.skipped += 1
        elif isinstance(event, RunPlanned):
            self.planned = event

    @property
    def total(self) -> int:
        return self.planned.total if self.planned else 0

    @property
    def series_over(self) -> int:
        """Series no longer pending: skipped at planning, plus finished since."""
        return (self.planned.skipped if self.planned else 0) + self.finished

    @property
    def expected_bytes(self) -> int:
        return max(self.planned.bytes if self.planned else 0, self.progress)

    def eta(self, rate: float) -> float | None:
        remaining = self.expected_bytes - self.progress
        if self.planned is None or rate <= 0:
            return None
        return remaining / rate


def eta_text(seconds: float | None) -> str:
    """An ETA as ``H:MM:SS``, or ``?`` when there is none yet."""
    return "?" if seconds is None else str(timedelta(seconds=round(seconds)))


class BaseReporter:
    """Context-manager plumbing shared by the reporters."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class NullReporter(BaseReporter):
    """Shows nothing: for library calls and tests that want no output."""

    def emit(self, event: Event) -> None:
        """Ignore ``event``."""

    def close(self) -> None:
        """Nothing to close."""


# --------------------------------------------------------------------------- JSON lines


class JsonReporter(BaseReporter):
    """One JSON object per line on ``stream``, each with ``event`` and ``time`` (ISO 8601, UTC).

    Every event but :class:`BytesReceived` is written as it comes (``series_finished``,
    ``run_finished``...); bytes are summed into a ``progress`` object at most once per
    ``interval`` seconds, and once more before ``run_finished`` so its totals are exact.
    A closed pipe on ``stream`` ends the output, not the run.
    """

    def __init__(
        self,
        stream: TextIO,
        *,
        interval: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._stream = stream
        self._interval = interval
        self._clock = clock
        self._wall = wall
        self._tally = Tally()
        self._rate = RateMeter()
        self._next_progress = clock() + interval
        self._reported = 0  # ``received`` as of the last progress object
        self._closed = False

    def emit(self, event: Event) -> None:
        """Count ``event``; write it, or for bytes a coalesced progress object when one is due."""
        self._tally.update(event)
        if type(event) is BytesReceived:
            if self._clock() >= self._next_progress:
                self._progress()
            return
        if isinstance(event, RunFinished):
            self._progress_if_pending()
        record: dict[str, object] = {"event": _EVENT_NAMES[type(event)]}
        record.update(dataclasses.asdict(event))
        if isinstance(event, RunFinished):
            record["failures"] = [{"uid": u, "reason": r} for u, r in event.failures]
        self._write(record)

    def close(self) -> None:
        """Write the last progress object if bytes arrived since the previous one."""
        if not self._closed:
            self._progress_if_pending()
            self._closed = True

    def _progress_if_pending(self) -> None:
        if self._tally.received != self._reported:
            self._progress()

    def _progress(self) -> None:
        now = self._clock()
        self._next_progress = now + self._interval
        tally = self._tally
        self._reported = tally.received
        rate = self._rate.update(now, tally.received)
        self._write(
            {
                "event": "progress",
                "bytes": tally.received,
                "expected_bytes": tally.expected_bytes,
                "series_done": tally.series_over,
                "series_total": tally.total,
                "in_flight": len(tally.in_flight),
                "failed": tally.failed,
                "retries": tally.retries,
                "rate": round(rate, 1),
                "eta": None if (eta := tally.eta(rate)) is None else round(eta, 1),
            }
        )

    def _write(self, record: dict[str, object]) -> None:
        if self._closed:
            return
        line = {"event": record.pop("event"), "time": self._wall().isoformat(), **record}
        try:
            self._stream.write(jsonlib.dumps(line, ensure_ascii=False) + "\n")
            self._stream.flush()
        except BrokenPipeError:
            self._closed = True


_EVENT_NAMES: Final[dict[type, str]] = {
    RunPlanned: "run_planned",
    SeriesStarted: "series_started",
    BytesReceived: "bytes_received",
    SeriesRetrying: "series_retrying",
    SeriesFinished: "series_finished",
    RunFinished: "run_finished",
}


# --------------------------------------------------------------------------- plain lines


class LineReporter(BaseReporter):
    """Plain lines for logs and pipes: the plan, a status line every ``interval`` seconds
    (``12/40 series, 1.2 GB, 85.3 MB/s, 2 failed, ETA 0:01:10``), and one line per retried,
    incomplete or failed series. The status line is written by the emit that finds it due, so a
    run with no events writes none (a stall shows up as a retry line after the read timeout)."""

    def __init__(
        self,
        stream: TextIO,
        *,
        interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stream = stream
        self._interval = interval
        self._clock = clock
        self._tally = Tally()
        self._rate = RateMeter(window=interval)
        self._next_line = clock() + interval
        self._closed = False

    def emit(self, event: Event) -> None:
        """Count ``event``; write its line if it has one, and the status line when due."""
        tally = self._tally
        tally.update(event)
        if type(event) is not BytesReceived:
            if isinstance(event, RunPlanned):
                self._rate.update(self._clock(), tally.received)
                self._write(
                    f"{event.total} series planned: {event.to_fetch} to fetch, "
                    f"{event.skipped} already done; {event.images:,} images, "
                    f"{human_bytes(event.bytes)}"
                )
            elif isinstance(event, SeriesRetrying):
                self._write(
                    f"retrying {event.uid} in {event.delay:.1f} s "
                    f"(attempt {event.attempt} failed: {_one_line(event.reason)})"
                )
            elif isinstance(event, SeriesFinished) and event.outcome in ("failed", "incomplete"):
                why = f": {_one_line(event.reason)}" if event.reason else ""
                self._write(f"{event.outcome} {event.uid}{why}")
        if self._clock() >= self._next_line:
            self._status()

    def status_line(self) -> str:
        """The status line as of now (samples the rate, so call it only to print it)."""
        tally = self._tally
        rate = self._rate.update(self._clock(), tally.received)
        parts = [
            f"{tally.series_over}/{tally.total} series",
            human_bytes(tally.received),
            f"{human_bytes(rate)}/s",
        ]
        if tally.retries:
            parts.append(f"{tally.retries} retried")
        if tally.failed:
            parts.append(f"{tally.failed} failed")
        parts.append(f"ETA {eta_text(tally.eta(rate))}")
        return ", ".join(parts)

    def close(self) -> None:
        """Nothing buffered to flush; later events are ignored."""
        self._closed = True

    def _status(self) -> None:
        self._next_line = self._clock() + self._interval
        self._write(self.status_line())

    def _write(self, line: str) -> None:
        if not self._closed:
            self._stream.write(line + "\n")
            self._stream.flush()


def _one_line(text: str | None) -> str:
    return " ".join((text or "").split())


# --------------------------------------------------------------------------- choice


def make_reporter(*, json: bool, progress: bool, stream: TextIO, err: TextIO) -> Reporter:
    """The reporter a run wants: JSON lines on ``stream`` (stdout) with ``json`` and nothing else
    there; else a live display on ``err`` if ``progress`` and ``err`` is a terminal; else plain
    periodic lines on ``err``."""
    if json:
        return JsonReporter(stream)
    if progress and err.isatty():
        # rich (~40 ms of imports) only where a terminal shows it
        from rich.console import Console

        from bulkdl.live import LiveReporter

        return LiveReporter(Console(file=err))
    return LineReporter(err)
