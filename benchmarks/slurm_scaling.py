"""Job-array scaling: one dataset downloaded by 1, 2 and 4 Slurm array tasks.

A real one-node Slurm (munged, slurmctld, slurmd on 127.0.0.1, from ``tests/slurm_cluster.py``;
installed with apt-get when missing) runs the arrays that ``bulkdl slurm --submit`` writes,
against ``serve-fake --bandwidth 4MB --first-byte-delay 0.3``: every connection is capped, so
what more tasks multiply is connections, as more nodes do against a distant archive. Each task
runs at ``--concurrency 2``. The wall time runs from the submission to the moment the array and
its finalize job have both left the queue (polled every 0.2 s); throughput is ZIP bytes per
second of that; the ideal for N tasks is N x 2 x the per-connection cap. Start-up costs (Slurm
starting tasks, Python and bulkdl importing, the delayed metadata call) are in the wall time, and
so is the partition's balance: the array is done when its largest shard is (the table names how
many series it has; a hash partition of few series per task is uneven).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

from harness import BULKDL, ROOT, Context, emptied, median
from report import Section, Target

from bulkdl.shard import Shard

sys.path.insert(0, str(ROOT))
from tests.slurm_cluster import Unavailable, local_cluster

CAP = 4e6
DELAY = 0.3
CONCURRENCY = 2
TASKS = (1, 2, 4)


def _gone(job: str, env: dict[str, str]) -> bool:
    done = subprocess.run(
        ["squeue", "-h", "-j", job], env=env, capture_output=True, text=True, check=False
    )
    return done.returncode == 0 and not done.stdout.strip()


def _array_run(
    manifest: Path, out: Path, url: str, tasks: int, env: dict[str, str]
) -> tuple[float, float]:
    """Submit, wait for the array and its finalize job: seconds until the array was done, and
    until both were."""
    command = [
        *BULKDL,
        *("slurm", str(manifest), "--out", str(out), "--tasks", str(tasks)),
        *("--api-url", url, "--concurrency", str(CONCURRENCY), "--submit"),
    ]
    started = time.monotonic()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    array, finalize = re.findall(r"job (\d+)", done.stdout)[:2]
    while not _gone(array, env):
        time.sleep(0.2)
    array_wall = time.monotonic() - started
    while not _gone(finalize, env):
        time.sleep(0.2)
    wall = time.monotonic() - started
    status = subprocess.run(
        [*BULKDL, "status", str(out)], env=env, capture_output=True, text=True, check=False
    )
    if status.returncode != 0:
        raise RuntimeError(f"array of {tasks} left work undone: {status.stdout}")
    return array_wall, wall


def run(ctx: Context, series: int = 24, images: int = 40) -> Section:
    """The job-array scaling scenario."""
    section = Section(
        "7. Slurm job arrays",
        f"{series} series x {images} CT images 512x512 against `serve-fake --bandwidth 4MB "
        f"--first-byte-delay 0.3` (per connection); `bulkdl slurm --tasks N --concurrency "
        f"{CONCURRENCY} --submit` on a one-node Slurm on this machine; wall time from the "
        f"submission until the array and its finalize job are done (array done: the array "
        f"alone); median of {ctx.runs} runs.",
    )
    spec = ["--patients", str(series), "--series", "1", "--images", str(images)]
    network = ["--bandwidth", str(int(CAP)), "--first-byte-delay", str(DELAY)]
    try:
        cluster = local_cluster(ctx.work / "slurm")
        env = cluster.__enter__()
    except Unavailable as why:
        section.notes.append(f"Not measured: no local Slurm on this machine ({why}).")
        return section
    try:
        with ctx.server(*spec, network=network) as (server, manifest, uids):
            size = ctx.zip_bytes["getImage?IncludeMD5=Yes&"]
            out = ctx.work / "out"
            walls: dict[int, float] = {}
            bounds: dict[int, float] = {}
            for tasks in TASKS:
                runs = []
                for _ in range(ctx.runs):
                    emptied(out)()
                    runs.append(_array_run(manifest, out, server.v4_url, tasks, env))
                walls[tasks] = median([wall for _, wall in runs])
                largest = max(len(Shard(k, tasks).pick(uids, str)) for k in range(tasks))
                bounds[tasks] = len(uids) / largest
                ideal = tasks * CONCURRENCY * CAP
                rate = size / walls[tasks]
                section.rows.append(
                    {
                        "array tasks": tasks,
                        "connections": tasks * CONCURRENCY,
                        "largest shard": f"{largest} series",
                        "array done s": round(median([array for array, _ in runs]), 2),
                        "wall s": round(walls[tasks], 2),
                        "MB/s": round(rate / 1e6, 2),
                        "ideal MB/s": round(ideal / 1e6, 1),
                        "of ideal": f"{rate / ideal:.0%}",
                        "speed-up vs 1 task": round(walls[TASKS[0]] / walls[tasks], 2),
                        "partition allows": round(bounds[tasks], 2),
                    }
                )
                ctx.echo(section.rows[-1])
    finally:
        cluster.__exit__(None, None, None)
    for tasks in TASKS[1:]:
        speedup = walls[TASKS[0]] / walls[tasks]
        section.targets.append(
            Target(
                f"{tasks} tasks: speed-up at least 75 % of what the partition allows "
                f"(series / largest shard = {bounds[tasks]:.2f})",
                speedup >= 0.75 * bounds[tasks],
                f"x{speedup:.2f}: {speedup / bounds[tasks]:.0%}",
            )
        )
    section.notes.append(
        f"{size / 1e6:.0f} MB of ZIPs. All tasks share this machine's {os.cpu_count()} cores "
        "and one loopback server, so the figures show what the per-connection cap lets N "
        "tasks add, not what N nodes add."
    )
    return section
