"""bulkdl's compute floor on loopback: the CPU its necessary work takes, the wall time it allows.

For the series ZIPs a loopback run downloads, :func:`measure_budget` times, on one thread, the
CPU seconds (user + system) of each step that every verified download must take: inflating with
the CRC-32 checks (:class:`bulkdl.zipstream.ZipStreamReader`, as bulkdl does it), the MD5
checked against md5hashes.csv, the SHA-256 kept for lock files, and writing the images to the
page cache. It does so in a child process (this file run as a script), so the bodies it holds
never swell the benchmark process whose children are measured next (a forked child's peak RSS
starts at its parent's). :func:`floor` adds that CPU spread perfectly over the cores to a
measured start-up (``bulkdl download --dry-run``: imports, planning): no bulkdl run can finish
sooner on this machine while doing that work, however well it schedules. Fetching the bodies is
not timed. Does network I/O (loopback) and file I/O under ``folder``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

from bulkdl.unpack import LICENSE_NAME, MD5_NAME
from bulkdl.zipstream import MemberData, MemberStart, ZipStreamReader

ARRIVAL_CHUNK = 64 << 10
NOT_IMAGES = frozenset({LICENSE_NAME, MD5_NAME})
STEPS = ("inflate + CRC-32", "MD5", "SHA-256", "page-cache writes")


def measure_budget(urls: Sequence[str], folder: Path) -> dict[str, float]:
    """Each step's CPU seconds, summed over the bodies at ``urls``, in a child process."""
    args = [sys.executable, __file__, str(folder), *urls]
    answer = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    budget: dict[str, float] = json.loads(answer)
    return budget


def floor(budget: dict[str, float], startup: float, cores: int) -> float:
    """The shortest wall time that work allows: start-up, then all the CPU on every core."""
    return startup + sum(budget.values()) / cores


def _budget(urls: Sequence[str], folder: Path) -> dict[str, float]:
    total = dict.fromkeys(STEPS, 0.0)
    for url in urls:
        with urllib.request.urlopen(url) as response:
            body: bytes = response.read()
        for step, seconds in _series_budget(body, folder).items():
            total[step] += seconds
    return total


def _series_budget(body: bytes, folder: Path) -> dict[str, float]:
    chunks = [body[i : i + ARRIVAL_CHUNK] for i in range(0, len(body), ARRIVAL_CHUNK)]
    members: list[list[bytes]] = []

    def inflate() -> None:
        reader = ZipStreamReader()
        pieces: list[bytes] = []  # LICENSE and md5hashes.csv are inflated, not kept
        for chunk in chunks:
            for event in reader.feed_iter(chunk):
                if type(event) is MemberData:
                    pieces.append(event.data)
                elif type(event) is MemberStart:
                    pieces = []
                    if event.name not in NOT_IMAGES:
                        members.append(pieces)
        reader.close()

    def digest(kind: str) -> None:
        for pieces in members:
            h = hashlib.new(kind)
            for piece in pieces:
                h.update(piece)
            h.hexdigest()

    def write() -> None:
        for n, pieces in enumerate(members):
            with (folder / f"{n:06d}.dcm").open("wb") as out:
                out.writelines(pieces)

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    try:
        return {
            "inflate + CRC-32": _cpu(inflate),
            "MD5": _cpu(digest, "md5"),
            "SHA-256": _cpu(digest, "sha256"),
            "page-cache writes": _cpu(write),
        }
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _cpu(fn: Callable[..., None], *args: str) -> float:
    start = time.process_time()
    fn(*args)
    return time.process_time() - start


if __name__ == "__main__":
    folder, *urls = sys.argv[1:]
    print(json.dumps(_budget(urls, Path(folder))))
