"""``bulkdl slurm``: an sbatch job array downloading one dataset in N shards, and submitting it.

:func:`array_script` writes a bash script with ``#SBATCH`` directives (``--array=0-(N-1)``, a log
per task under ``DIR/.bulkdl/slurm/``, and the partition, time limit, CPUs and extra options
given) whose body runs ``python -m bulkdl download ... --shard $SLURM_ARRAY_TASK_ID/N`` with the
same interpreter, absolute input paths and the download options passed through. Every task
keeps its own ledger, so tasks never share a SQLite file; a re-submission of the same script
(or of some of its tasks, ``sbatch --array=1,3 SCRIPT``) only fetches what is not done yet.
:func:`finalize_script` is the one-task job that runs ``bulkdl finalize DIR`` after the array
(``--dependency=afterany``) to write the merged ``metadata.csv``, ``failures.csv`` and licences.
Credentials never appear in the scripts: tasks inherit the submitting environment (sbatch's
default ``--export=ALL``), so ``BULKDL_*`` variables and credential files are read by the tasks
themselves. :func:`submit` runs ``sbatch --parsable`` and returns the job id. Pure, except
:func:`submit` (runs sbatch) and :func:`write_script`.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from bulkdl.errors import AbortError, InputError

#: Where each task's log goes, relative to the output folder (``%A`` job, ``%a`` task).
LOG_DIR: Final = Path(".bulkdl") / "slurm"
_TIME = re.compile(r"(\d+-)?\d+(:\d{1,2}){0,2}|\d+-\d+(:\d{1,2}){0,2}|UNLIMITED|INFINITE", re.I)
_NAME = re.compile(r"[A-Za-z0-9_.+-]{1,64}")
_JOB_ID = re.compile(r"(\d+)(;\S+)?")


@dataclass(frozen=True, slots=True)
class ArrayJob:
    """What the array job runs: ``tasks`` shards of ``inputs`` into ``out``."""

    inputs: tuple[str, ...]
    out: Path
    tasks: int
    download_options: tuple[str, ...] = ()
    partition: str | None = None
    time: str | None = None
    cpus: int | None = None
    job_name: str = "bulkdl"
    sbatch_options: tuple[str, ...] = field(default=())
    python: str = sys.executable

    def __post_init__(self) -> None:
        if not 1 <= self.tasks <= 100_000:
            raise InputError(f"--tasks must be 1 to 100,000, not {self.tasks}")
        if self.cpus is not None and self.cpus < 1:
            raise InputError(f"--cpus must be at least 1, not {self.cpus}")
        if self.time is not None and not _TIME.fullmatch(self.time):
            raise InputError(
                f"--time {self.time!r}: use Slurm's forms, e.g. 90, 4:00:00 or 1-12:00:00"
            )
        if self.partition is not None and not _NAME.fullmatch(self.partition):
            raise InputError(f"--partition {self.partition!r} is not a partition name")
        if not _NAME.fullmatch(self.job_name):
            raise InputError(f"--job-name {self.job_name!r}: letters, digits and _.+- only")
        for option in self.sbatch_options:
            if not option.startswith("--") or "\n" in option:
                raise InputError(f"--sbatch {option!r}: give a long option such as --mem=8G")
            if option.split("=", 1)[0] in ("--array", "--output", "--error", "--wrap"):
                raise InputError(f"--sbatch {option!r}: bulkdl sets that option itself")
        if not self.inputs:
            raise InputError("bulkdl slurm needs at least one manifest or query filter")


def _directives(job: ArrayJob, *extra: str) -> list[str]:
    lines = [f"#SBATCH --job-name={job.job_name}", *extra]
    if job.partition:
        lines.append(f"#SBATCH --partition={job.partition}")
    if job.time:
        lines.append(f"#SBATCH --time={job.time}")
    lines += [f"#SBATCH {shlex.quote(option)}" for option in job.sbatch_options]
    return lines


def array_script(job: ArrayJob) -> str:
    """The sbatch script of the download array."""
    out = job.out.resolve()
    logs = out / LOG_DIR
    quoted = " ".join(
        shlex.quote(part)
        for part in (job.python, "-m", "bulkdl", "download", "--out", str(out), "--no-progress")
    )
    rest = " ".join(shlex.quote(part) for part in (*job.download_options, "--", *job.inputs))
    # The one unquoted word: the shell expands the task id when the task starts.
    body = f'{quoted} --shard "${{SLURM_ARRAY_TASK_ID}}/{job.tasks}" {rest}'
    stamp = f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    lines = [
        "#!/bin/bash",
        f"# bulkdl download in {job.tasks} shards into {out} (written {stamp}).",
        "# Re-submit it after a partial failure: each task only fetches what is not done yet",
        "# (sbatch --array=K,... SCRIPT re-runs only tasks K,...). Credentials come from the",
        "# environment sbatch is run in, never from this file.",
        *_directives(
            job,
            f"#SBATCH --array=0-{job.tasks - 1}",
            f"#SBATCH --output={logs}/%A_%a.log",
            *([f"#SBATCH --cpus-per-task={job.cpus}"] if job.cpus else []),
        ),
        "set -euo pipefail",
        f"exec {body}",
        "",
    ]
    return "\n".join(lines)


def finalize_script(job: ArrayJob) -> str:
    """The sbatch script that merges the shards' ledgers into the tree's sidecar files."""
    out = job.out.resolve()
    command = [job.python, "-m", "bulkdl", "finalize", str(out)]
    return "\n".join(
        [
            "#!/bin/bash",
            f"# Writes {out}/metadata.csv, failures.csv and LICENSES/ from every shard's ledger.",
            *_directives(job, f"#SBATCH --output={out / LOG_DIR}/%j_finalize.log"),
            "set -euo pipefail",
            "exec " + " ".join(shlex.quote(part) for part in command),
            "",
        ]
    )


def write_script(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` (mode 0755). Raises InputError naming the path on failure."""
    try:
        path.write_text(text, encoding="utf-8")
        path.chmod(0o755)
    except OSError as exc:
        raise InputError(f"cannot write {path}: {exc.strerror or exc}") from exc


def prepare_logs(out: Path) -> Path:
    """Create the task log folder (Slurm does not create it) and return it."""
    logs = out.resolve() / LOG_DIR
    try:
        logs.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AbortError(f"cannot create {logs}: {exc.strerror or exc}") from exc
    return logs


def submit(script: Path, *options: str, sbatch: Sequence[str] = ("sbatch",)) -> str:
    """``sbatch --parsable [options] script``; returns the job id.

    Raises AbortError with sbatch's own message when it is missing or refuses the job.
    """
    command = [*sbatch, "--parsable", *options, str(script)]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, check=False, env=dict(os.environ)
        )
    except FileNotFoundError as exc:
        raise AbortError(f"{command[0]} not found: is this a Slurm login node?") from exc
    answer = done.stdout.strip()
    match = _JOB_ID.fullmatch(answer)
    if done.returncode != 0 or match is None:
        why = (done.stderr or done.stdout).strip() or f"exit status {done.returncode}"
        raise AbortError(f"sbatch refused {script}: {why}")
    return match[1]
