"""Shared machinery of the benchmarks: a fake NBIA server in its own process, and measured runs.

The server runs as ``bulkdl serve-fake`` in a separate process so its CPU never counts against a
client; every contender runs as a child process and is measured with ``os.wait4``: wall time,
CPU seconds (user + system, its children included) and peak memory: the larger of the peak RSS
of its biggest process (``wait4``) and the peak total PSS of its whole process tree, sampled
every 0.25 s from ``/proc`` (PSS shares each page among the processes mapping it, so a forked
worker's pages shared with its parent count once; for one process it is about its RSS). Each
ZIP the contenders will ask for is requested once first, so the server answers from its on-disk
cache and every contender sees the same, warm server.
"""

from __future__ import annotations

import compileall
import itertools
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Final

ROOT = Path(__file__).resolve().parent.parent
BULKDL = [sys.executable, "-m", "bulkdl"]


@dataclass(frozen=True)
class Measure:
    """One measured run of one command."""

    wall: float
    cpu: float
    rss_mb: float
    code: int
    #: DICOM bytes the run left under its output folder, where it was asked to count them.
    written: int | None = None


@dataclass(frozen=True)
class Server:
    """A running ``bulkdl serve-fake``."""

    process: subprocess.Popen[str]
    v4_url: str

    @property
    def root(self) -> str:
        """http://host:port"""
        return self.v4_url.split("/nbia-api/")[0]

    @property
    def services_url(self) -> str:
        """The un-versioned services base, as nbiatoolkit wants it."""
        return self.root + "/nbia-api/services/"


@contextmanager
def fake_server(*args: str, cache: Path) -> Iterator[Server]:
    """Start ``bulkdl serve-fake ARGS`` and stop it by its PID afterwards."""
    process = subprocess.Popen(
        [*BULKDL, "serve-fake", "--cache-dir", str(cache), *args],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        if not url.startswith("http"):
            raise RuntimeError(f"serve-fake did not start (said {url!r})")
        yield Server(process, url)
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class Context:
    """What every scenario gets: where to work, how many runs, the other tools' interpreter."""

    work: Path
    cache: Path
    runs: int
    others_python: str | None
    quiet: bool = False
    zip_bytes: dict[str, int] = field(default_factory=dict)
    _manifests: Iterator[int] = field(default_factory=itertools.count, repr=False)

    def echo(self, row: object) -> None:
        """Show a result as soon as it is measured."""
        if not self.quiet:
            print(row, flush=True)

    @contextmanager
    def server(
        self,
        *args: str,
        variants: Sequence[str] = ("getImage?IncludeMD5=Yes&",),
        network: Sequence[str] = (),
    ) -> Iterator[tuple[Server, Path, list[str]]]:
        """A warm fake server for ``serve-fake ARGS``, a manifest of all its series, the UIDs.

        The ZIPs are built and cached by an unthrottled server first; ``network`` options (a
        bandwidth cap, a first-byte delay) apply only to the server handed out. Each server's
        manifest has a file of its own, so several servers can be open at once.
        """
        with fake_server(*args, cache=self.cache) as server:
            uids = series_uids(server)
            self.zip_bytes = warm(server, uids, variants)
        manifest = self.work / f"m{next(self._manifests)}.tcia"
        manifest.write_text("ListOfSeriesToDownload=\n" + "\n".join(uids) + "\n")
        with fake_server(*args, *network, cache=self.cache) as server:
            yield server, manifest, uids


def bulkdl_download(manifest: Path, out: Path, v4_url: str, *extra: str) -> list[str]:
    """The argv of a bulkdl download without a progress display."""
    return [
        *BULKDL,
        "download",
        str(manifest),
        "--out",
        str(out),
        "--api-url",
        v4_url,
        "--no-progress",
        *extra,
    ]


def series_uids(server: Server) -> list[str]:
    """Every series UID the server holds (through bulkdl's own query, as a manifest)."""
    out = subprocess.run(
        [*BULKDL, "query", "--api-url", server.v4_url, "--format", "tcia"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout
    return [line for line in out.splitlines() if line[:1].isdigit()]


def warm(server: Server, uids: Sequence[str], variants: Sequence[str]) -> dict[str, int]:
    """Ask for every ZIP variant once so later requests come from the server's on-disk cache;
    returns the body bytes of each variant, all series together."""
    sizes = dict.fromkeys(variants, 0)
    for uid in uids:
        for variant in variants:
            url = f"{server.v4_url}{variant}SeriesInstanceUID={uid}"
            with urllib.request.urlopen(url) as response:
                while block := response.read(1 << 20):
                    sizes[variant] += len(block)
    return sizes


def measure(
    command: Sequence[str], *, cwd: Path | None = None, env: dict[str, str] | None = None
) -> Measure:
    """Run ``command`` to completion and measure it (its children included)."""
    started = time.monotonic()
    process = subprocess.Popen(
        command,
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    memory = _TreeMemory(process.pid)
    memory.start()
    try:
        _, status, usage = os.wait4(process.pid, 0)
    except BaseException:
        # An interrupted benchmark must not leave its contender (and its children) running.
        os.killpg(process.pid, signal.SIGKILL)
        raise
    finally:
        memory.stop()
    wall = time.monotonic() - started
    code = os.waitstatus_to_exitcode(status)
    process.returncode = code
    if code != 0 and process.stderr is not None:
        sys.stderr.write(process.stderr.read().decode(errors="replace")[-2000:])
    if process.stderr is not None:
        process.stderr.close()
    peak = max(usage.ru_maxrss / 1024, memory.peak_mb)
    return Measure(wall, usage.ru_utime + usage.ru_stime, peak, code)


#: Seconds between two samples of a contender's memory. Reading a process's PSS walks its page
#: tables under its memory lock, which its own page faults then wait for: every 50 ms cost a
#: 2,000-series run 10 % (11.8 s against 10.6 s); the peaks measured here last seconds.
SAMPLE_EVERY: Final = 0.25


class _TreeMemory(threading.Thread):
    """The peak total PSS (MB) of process ``pid`` and its descendants, sampled every
    SAMPLE_EVERY seconds."""

    def __init__(self, pid: int) -> None:
        super().__init__(name="tree-memory", daemon=True)
        self.pid = pid
        self.peak_mb = 0.0
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(SAMPLE_EVERY):
            total_kb = sum(_pss_kb(p) for p in _descendants(self.pid))
            self.peak_mb = max(self.peak_mb, total_kb / 1024)

    def stop(self) -> None:
        self._done.set()
        self.join()


def _descendants(pid: int) -> list[int]:
    """``pid`` and every process under it (children of any of their threads)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        try:
            threads = list(Path(f"/proc/{current}/task").iterdir())
        except OSError:
            continue  # gone meanwhile
        for thread in threads:
            try:
                todo += [int(c) for c in (thread / "children").read_text().split()]
            except (OSError, ValueError):
                continue  # gone meanwhile
    return found


def _pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as rollup:
            for line in rollup:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass  # gone meanwhile, or a zombie
    return 0


def repeat(
    runs: int, prepare: Callable[[], None], command: Callable[[], Sequence[str]], **kw: object
) -> list[Measure]:
    """``runs`` measured runs, each after ``prepare()`` (e.g. emptying the output folder)."""
    results = []
    for _ in range(runs):
        prepare()
        results.append(measure(command(), **kw))  # type: ignore[arg-type]
    return results


def interleaved(
    runs: int, out: Path, commands: Mapping[str, Sequence[str]], **kw: object
) -> dict[str, list[Measure]]:
    """``runs`` rounds in which every command runs once, in turn, into ``out`` emptied first: a
    shared machine's slow minutes then fall on every contender alike, not on whichever ran
    while they lasted. Each measure counts the DICOM bytes its run left in ``out``."""
    results: dict[str, list[Measure]] = {name: [] for name in commands}
    for _ in range(runs):
        for name, command in commands.items():
            emptied(out)()
            m = measure(command, **kw)  # type: ignore[arg-type]
            results[name].append(replace(m, written=dir_bytes(out)))
    return results


def compile_bulkdl() -> None:
    """Write the bytecode of bulkdl's modules, as installing a package does, so no contender's
    first run (or every run, under PYTHONDONTWRITEBYTECODE) pays for compiling them."""
    compileall.compile_dir(ROOT / "bulkdl", quiet=1)


def median(values: Sequence[float]) -> float:
    """The median."""
    return statistics.median(values)


def emptied(path: Path) -> Callable[[], None]:
    """A ``prepare`` that removes and recreates ``path``."""

    def prepare() -> None:
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)

    return prepare


def dir_bytes(path: Path, suffix: str = ".dcm") -> int:
    """Total size of the files under ``path`` ending in ``suffix``."""
    return sum(p.stat().st_size for p in path.rglob(f"*{suffix}") if p.is_file())
