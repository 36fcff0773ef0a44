"""Tests for bulkdl.progress and bulkdl.live: what each reporter writes, the closing summary."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from datetime import UTC, datetime

from rich.console import Console

from bulkdl.live import LiveReporter
from bulkdl.progress import (
    BytesReceived,
    JsonReporter,
    LineReporter,
    NullReporter,
    RunFinished,
    RunPlanned,
    SeriesFinished,
    SeriesRetrying,
    SeriesStarted,
    human_bytes,
    make_reporter,
    summary_text,
)

U1 = "1.3.6.1.4.1.14519.5.2.1.6279.6001.179049373636438705059720603192"
U2 = "1.3.6.1.4.1.14519.5.2.1.6279.6001.619372068417051974713149104919"
U3 = "1.3.6.1.4.1.14519.5.2.1.6279.6001.170052181746004939527661217512"


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    """A text stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def json_lines(text: str) -> list[dict[str, object]]:
    """Every line of ``text`` parsed as one JSON object."""
    return [json.loads(line) for line in text.splitlines()]


# --- JSON lines --------------------------------------------------------------------------------


def test_json_coalesces_bytes_into_a_few_progress_lines() -> None:
    """10,000 BytesReceived over 2 s give a handful of progress lines whose last total is exact."""
    clock, out = FakeClock(), io.StringIO()
    with JsonReporter(out, clock=clock) as reporter:
        reporter.emit(RunPlanned(total=2, to_fetch=2, skipped=0, images=20, bytes=10_000 * 1234))
        reporter.emit(SeriesStarted(U1, 1))
        reporter.emit(SeriesStarted(U2, 1))
        for i in range(10_000):
            clock.now += 0.0002
            reporter.emit(BytesReceived(U1 if i % 2 else U2, 1234))
        reporter.emit(SeriesFinished(U1, "done", 10, 5_000 * 1234))
        reporter.emit(SeriesFinished(U2, "failed", 0, 0, "image count 7 of 10"))
        reporter.emit(RunFinished(1, 0, 1, 0, 10, 5_000 * 1234, 2.0, ((U2, "image count"),)))
    lines = json_lines(out.getvalue())
    progress = [line for line in lines if line["event"] == "progress"]
    assert 2 <= len(progress) <= 6
    assert progress[-1]["bytes"] == 10_000 * 1234
    assert progress[-1]["series_total"] == 2
    names = [line["event"] for line in lines if line["event"] != "progress"]
    assert names == [
        "run_planned",
        "series_started",
        "series_started",
        "series_finished",
        "series_finished",
        "run_finished",
    ]
    failed = next(line for line in lines if line.get("outcome") == "failed")
    assert failed == {**failed, "uid": U2, "images": 0, "reason": "image count 7 of 10"}
    assert lines[-1]["failures"] == [{"uid": U2, "reason": "image count"}]
    assert lines[-2]["event"] == "progress"  # flushed before run_finished, so it is final
    for line in lines:
        stamp = datetime.fromisoformat(str(line["time"]))
        assert stamp.utcoffset() is not None and stamp.utcoffset() == UTC.utcoffset(None)


def test_json_real_clock_burst_writes_at_most_one_progress_line() -> None:
    """A burst of 10,000 chunks in well under a second writes no per-chunk lines."""
    out = io.StringIO()
    reporter = JsonReporter(out)
    for _ in range(10_000):
        reporter.emit(BytesReceived(U1, 100))
    reporter.close()
    lines = json_lines(out.getvalue())
    assert len(lines) <= 3
    assert lines[-1]["event"] == "progress" and lines[-1]["bytes"] == 1_000_000


def test_json_reporter_survives_a_closed_pipe() -> None:
    """A reader that went away ends the JSON output, not the run."""

    class Broken(io.StringIO):
        def write(self, text: str) -> int:
            raise BrokenPipeError

    reporter = JsonReporter(Broken())
    reporter.emit(SeriesStarted(U1, 1))
    reporter.emit(SeriesFinished(U1, "done", 1, 1))
    reporter.close()


# --- plain lines -------------------------------------------------------------------------------


def test_line_reporter_writes_status_every_interval() -> None:
    """With a fake clock, one status line per 10 s, with counts, bytes, rate, failures and ETA."""
    clock, out = FakeClock(), io.StringIO()
    reporter = LineReporter(out, clock=clock)
    reporter.emit(RunPlanned(total=40, to_fetch=38, skipped=2, images=4000, bytes=10_000_000_000))
    for second in range(1, 21):
        clock.now += 1
        reporter.emit(BytesReceived(U1, 100_000_000))
        if second == 5:
            reporter.emit(SeriesFinished(U2, "done", 100, 0))
            reporter.emit(SeriesFinished(U3, "failed", 0, 0, "HTTP 500\nthree times"))
    reporter.close()
    reporter.emit(BytesReceived(U1, 1))  # after close: ignored
    assert out.getvalue().splitlines() == [
        "40 series planned: 38 to fetch, 2 already done; 4,000 images, 10.0 GB",
        f"failed {U3}: HTTP 500 three times",
        "4/40 series, 1.0 GB, 100.0 MB/s, 1 failed, ETA 0:01:30",
        "4/40 series, 2.0 GB, 100.0 MB/s, 1 failed, ETA 0:01:20",
    ]


def test_line_reporter_retry_line_and_bytes_leave_the_bar() -> None:
    """A retry gets its own line; the failed attempt's bytes stop counting toward the ETA."""
    clock, out = FakeClock(), io.StringIO()
    reporter = LineReporter(out, clock=clock)
    reporter.emit(RunPlanned(total=1, to_fetch=1, skipped=0, images=10, bytes=1_000_000))
    reporter.emit(SeriesStarted(U1, 1))
    reporter.emit(BytesReceived(U1, 500_000))
    reporter.emit(SeriesRetrying(U1, 1, "stalled for 60 s", 2.0))
    reporter.emit(SeriesStarted(U1, 2))
    clock.now += 10
    reporter.emit(BytesReceived(U1, 250_000))
    lines = out.getvalue().splitlines()
    assert lines[1] == f"retrying {U1} in 2.0 s (attempt 1 failed: stalled for 60 s)"
    # 750 kB over the wire in 10 s; 750 kB of the planned 1 MB still to come at 75 kB/s.
    assert lines[2] == "0/1 series, 750.0 kB, 75.0 kB/s, 1 retried, ETA 0:00:10"


# --- live display ------------------------------------------------------------------------------


def test_live_reporter_renders_counts_and_series_in_flight() -> None:
    """On a (forced) terminal the display shows series done/total, failures, and UIDs in flight."""
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=100, color_system=None)
    clock = FakeClock()
    with LiveReporter(console, clock=clock) as reporter:
        reporter.emit(RunPlanned(total=40, to_fetch=40, skipped=0, images=400, bytes=4_000_000))
        for uid in (U1, U2, U3):
            reporter.emit(SeriesStarted(uid, 1))
        reporter.emit(BytesReceived(U1, 1_500_000))
        reporter.emit(BytesReceived(U2, 20_000))
        reporter.emit(SeriesFinished(U3, "failed", 0, 0, "not a ZIP"))
        reporter.emit(SeriesRetrying(U2, 1, "reset", 1.0))
        clock.now += 2
    text = out.getvalue()
    assert "1/40 series" in text
    assert "failed 1" in text and "retries 1" in text
    assert "…" + U1[-23:] in text and "1.5 MB" in text
    assert U3[-23:] not in text  # finished series leave the in-flight list
    assert "1.5 MB / 4.0 MB" in text


def test_live_reporter_lists_only_a_few_in_flight() -> None:
    """Beyond the first few series in flight the display says how many more there are."""
    console = Console(file=io.StringIO(), force_terminal=True, width=100, color_system=None)
    reporter = LiveReporter(console, shown_in_flight=2)
    for i in range(7):
        reporter.emit(SeriesStarted(f"1.2.3.{i}", 1))
    reporter.close()
    plain = Console(file=io.StringIO(), width=100)
    with plain.capture() as capture:
        plain.print(reporter.render())
    assert "1.2.3.0" in capture.get() and "1.2.3.2" not in capture.get()
    assert "and 5 more in flight" in capture.get()


# --- summary and choice ------------------------------------------------------------------------


def test_summary_text_exact() -> None:
    """The closing paragraph states counts, volume, time, rate and each failure's reason."""
    run = RunFinished(
        done=35,
        incomplete=1,
        failed=2,
        skipped=2,
        images=12_345,
        bytes=6_000_000_000,
        seconds=70.4,
        failures=((U1, "HTTP 500 after 5 attempts"), (U2, "MD5 mismatch:\n  00000003.dcm")),
    )
    assert summary_text(run) == (
        "40 series: 35 ok, 1 incomplete, 2 failed, 2 skipped\n"
        "12,345 images, 6.0 GB in 0:01:10 (85.2 MB/s)\n"
        "failed:\n"
        f"  {U1}: HTTP 500 after 5 attempts\n"
        f"  {U2}: MD5 mismatch: 00000003.dcm\n"
    )


def test_summary_names_twenty_failures_then_points_to_the_file() -> None:
    """Past 20 failures the summary counts the rest and names the failures file."""
    failures = tuple((f"1.2.{i}", "stalled") for i in range(25))
    run = RunFinished(0, 0, 25, 0, 0, 0, 3.25, failures)
    text = summary_text(run, failures_file="out/failures.csv")
    lines = text.splitlines()
    assert lines[:2] == [
        "25 series: 0 ok, 0 incomplete, 25 failed, 0 skipped",
        "0 images, 0 B in 3.2 s (0 B/s)",
    ]
    assert lines[-2:] == ["  1.2.19: stalled", "  and 5 more; see out/failures.csv"]
    assert len(lines) == 2 + 1 + 20 + 1


def test_human_bytes_units() -> None:
    """Byte counts read in decimal units with one decimal from kB up."""
    assert [human_bytes(n) for n in (0, 999, 1000, 1_234_567, 1.2e9, 3e12, 5e15)] == [
        "0 B",
        "999 B",
        "1.0 kB",
        "1.2 MB",
        "1.2 GB",
        "3.0 TB",
        "5.0 PB",
    ]


def test_make_reporter_picks_by_mode_and_terminal() -> None:
    """--json gives JSON on stdout; a terminal gets the live display; otherwise plain lines."""
    stdout, tty, pipe = io.StringIO(), Terminal(), io.StringIO()
    assert isinstance(make_reporter(json=True, progress=True, stream=stdout, err=tty), JsonReporter)
    live = make_reporter(json=False, progress=True, stream=stdout, err=tty)
    assert isinstance(live, LiveReporter)
    live.close()
    assert isinstance(
        make_reporter(json=False, progress=True, stream=stdout, err=pipe), LineReporter
    )
    assert isinstance(
        make_reporter(json=False, progress=False, stream=stdout, err=tty), LineReporter
    )
    assert stdout.getvalue() == ""


def test_null_reporter_is_a_silent_reporter() -> None:
    """NullReporter takes every event and writes nothing, inside or outside ``with``."""
    with NullReporter() as reporter:
        reporter.emit(RunPlanned(1, 1, 0, 1, 1))
        reporter.emit(BytesReceived(U1, 10))
    reporter.close()


def test_a_run_without_a_terminal_never_loads_rich() -> None:
    """rich is start-up time (~40 ms) that only the live display and query's table need: the
    command line with every subcommand's parser built, the download pipeline, and a plain
    reporter leave it unloaded."""
    code = (
        "import sys, io; import bulkdl.cli as c; c.build_parser(); import bulkdl.pipeline; "
        "from bulkdl.progress import make_reporter; "
        "make_reporter(json=False, progress=True, stream=io.StringIO(), err=io.StringIO()); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'rich'))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
