"""``bulkdl slurm``: an sbatch job array downloading one dataset in N shards, and submitting it.

:func:`array_script` writes a bash script with ``#SBATCH`` directives (``--array=0-(N-1)``, a log
per task under ``DIR/.bulkdl/slurm/``, and the partition, time limit, CPUs and extra options
given) whose body runs ``python -m bulkdl download ... --shard $SLURM_ARRAY_TASK_ID/N`` with the
same interpreter, absolute input paths and the download options passed through. N is written
into the script, so a re-submission of some tasks only (``sbatch --array=1,3 SCRIPT``) keeps
the partition. Every task keeps its own ledger, so tasks never share a SQLite file; a
re-submission of the same script only fetches what is not done yet. :func:`finalize_script` is
the one-task job that runs ``bulkdl finalize DIR`` after the array (``--dependency=afterany``)
to write the merged ``metadata.csv``, ``failures.csv`` and licences. Credentials never appear in
the scripts: tasks inherit the submitting environment (sbatch's default ``--export=ALL``), so
``BULKDL_*`` variables and credential files are read by the tasks themselves. sbatch reads a
directive's value in double quotes (spaces kept, no escapes) and expands ``%`` patterns in log
paths, so paths are quoted, ``%`` is doubled, and a ``"`` or a control character is refused.
A ``--staging`` folder is written in double quotes so that ``$VAR`` and ``${VAR}`` in it expand
when the task starts, on its node (``--staging '$TMPDIR'``: node-local scratch); nothing else
the shell would interpret in double quotes is accepted there.
:func:`submit` runs ``sbatch --parsable`` and returns the job id. Pure, except :func:`submit`
(runs sbatch), :func:`write_script` and :func:`prepare_logs`.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from bulkdl.errors import AbortError, InputError

#: Where each task's log goes, relative to the output folder (``%A`` job, ``%a`` task).
LOG_DIR: Final = Path(".bulkdl") / "slurm"
#: The largest array: Slurm's MaxArraySize is 1001 by default, raised by sites up to 4,000,001.
MAX_TASKS: Final = 100_000
_TIME = re.compile(
    r"\d+(:[0-5]?\d){0,2}|\d+-\d+(:[0-5]?\d){0,2}|UNLIMITED|INFINITE", re.ASCII | re.IGNORECASE
)
_NAME = re.compile(r"[A-Za-z0-9_.+-]{1,64}", re.ASCII)
_PARTITIONS = re.compile(r"[A-Za-z0-9_.+-]{1,64}(,[A-Za-z0-9_.+-]{1,64})*", re.ASCII)
_OPTION = re.compile(r"--[A-Za-z][A-Za-z0-9-]*(=.*)?", re.ASCII | re.DOTALL)
_JOB_ID = re.compile(r"(\d+)(;\S+)?")
#: Text the shell keeps as it is inside double quotes, plus $NAME and ${NAME} references.
_NODE_PATH = re.compile(
    r'(?:[^"`\\$\x00-\x1f\x7f]|\$[A-Za-z_][A-Za-z0-9_]*|\$\{[A-Za-z_][A-Za-z0-9_]*\})+', re.ASCII
)
#: Options bulkdl writes itself, which a user's --sbatch must not contradict.
_OWN_OPTIONS: Final = frozenset({"--array", "--output", "--error", "--wrap", "--parsable"})


def _printable(text: str) -> bool:
    return not any(ord(char) < 0x20 or ord(char) == 0x7F for char in text)


def _directive_value(text: str, what: str) -> str:
    """``text`` as sbatch reads it back from a directive: in double quotes when needed."""
    if '"' in text or not _printable(text):
        raise InputError(f"{what} {text!r}: a double quote or control character cannot be passed")
    return f'"{text}"' if any(char.isspace() or char == "'" for char in text) else text


def _log_path(folder: Path, pattern: str) -> str:
    """``folder/pattern`` for ``--output``: the folder's own ``%`` doubled (sbatch expands
    ``%x``, ``%j``... anywhere in the path), then quoted as a directive value."""
    return _directive_value(str(folder).replace("%", "%%") + "/" + pattern, "--out")


@dataclass(frozen=True, slots=True)
class ArrayJob:
    """What the array job runs: ``tasks`` shards of ``inputs`` into ``out``.

    ``inputs`` are absolute paths (tasks may start anywhere); ``download_options`` are
    ``bulkdl download`` arguments passed through as they are; ``staging`` is the task's
    ``--staging`` folder, its ``$VAR`` references expanded on the node; ``max_running`` caps the
    tasks running at once (``--array=0-N%M``). Raises InputError for a value sbatch would refuse or
    misread.
    """

    inputs: tuple[str, ...]
    out: Path
    tasks: int
    download_options: tuple[str, ...] = ()
    staging: str | None = None
    partition: str | None = None
    time: str | None = None
    cpus: int | None = None
    max_running: int | None = None
    job_name: str = "bulkdl"
    sbatch_options: tuple[str, ...] = field(default=())
    python: str = sys.executable

    def __post_init__(self) -> None:
        if not 1 <= self.tasks <= MAX_TASKS:
            raise InputError(f"--tasks must be 1 to {MAX_TASKS:,}, not {self.tasks}")
        if self.cpus is not None and self.cpus < 1:
            raise InputError(f"--cpus must be at least 1, not {self.cpus}")
        if self.max_running is not None and self.max_running < 1:
            raise InputError(f"--max-running must be at least 1, not {self.max_running}")
        if self.time is not None and not _TIME.fullmatch(self.time):
            raise InputError(
                f"--time {self.time!r}: use Slurm's forms, e.g. 90, 4:00:00 or 1-12:00:00"
            )
        if self.partition is not None and not _PARTITIONS.fullmatch(self.partition):
            raise InputError(
                f"--partition {self.partition!r}: a partition name (or several, comma-separated)"
            )
        if not _NAME.fullmatch(self.job_name):
            raise InputError(f"--job-name {self.job_name!r}: letters, digits and _.+- only")
        for option in self.sbatch_options:
            if not _OPTION.fullmatch(option):
                raise InputError(f"--sbatch {option!r}: give a long option such as --mem=8G")
            if option.split("=", 1)[0] in _OWN_OPTIONS:
                raise InputError(f"--sbatch {option!r}: bulkdl sets that option itself")
            _directive_value(option, "--sbatch")
        if not self.inputs:
            raise InputError("bulkdl slurm needs at least one manifest or query filter")
        for text in (str(self.out), *self.inputs, *self.download_options):
            if not _printable(text):
                raise InputError(f"{text!r}: a control character cannot go into a job script")
        _directive_value(str(self.out), "--out")
        if self.staging is not None and not _NODE_PATH.fullmatch(self.staging):
            raise InputError(
                f"--staging {self.staging!r}: a path, with $VAR or ${{VAR}} for the node's "
                "environment; quotes, backslashes, backquotes and other $ forms cannot be passed"
            )

    @property
    def array(self) -> str:
        """The ``--array`` value: every task, at most ``max_running`` at once."""
        throttle = f"%{self.max_running}" if self.max_running else ""
        return f"0-{self.tasks - 1}{throttle}"


def _directives(job: ArrayJob, name: str, *own: str) -> list[str]:
    lines = [f"#SBATCH --job-name={name}", *(f"#SBATCH {line}" for line in own)]
    if job.partition:
        lines.append(f"#SBATCH --partition={job.partition}")
    if job.time:
        lines.append(f"#SBATCH --time={job.time}")
    lines += [f"#SBATCH {_directive_value(option, '--sbatch')}" for option in job.sbatch_options]
    return lines


def _command(*parts: str) -> str:
    return " ".join(shlex.quote(part) for part in parts)


def array_script(job: ArrayJob, *, written: datetime | None = None) -> str:
    """The sbatch script of the download array."""
    out = job.out.resolve()
    log = _log_path(out / LOG_DIR, "%A_%a.log")
    head = _command(job.python, "-m", "bulkdl", "download", "--out", str(out), "--no-progress")
    if job.staging is not None:  # in double quotes: its $VAR expand on the node
        head += f' --staging "{job.staging}"'
    rest = _command(*job.download_options, "--", *job.inputs)
    # The one unquoted word: the shell expands the task id when the task starts.
    body = f'{head} --shard "${{SLURM_ARRAY_TASK_ID}}/{job.tasks}" {rest}'
    stamp = f"{written or datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    cpus = [f"--cpus-per-task={job.cpus}"] if job.cpus else []
    lines = [
        "#!/bin/bash",
        f"# bulkdl download in {job.tasks} shards into {out} (written {stamp}).",
        "# Re-submit it after a partial failure: each task only fetches what is not done in its",
        "# shard (sbatch --array=K,... SCRIPT re-runs tasks K,... only). Credentials come from",
        "# the environment sbatch is run in, never from this file.",
        *_directives(job, job.job_name, f"--array={job.array}", f"--output={log}", *cpus),
        "set -euo pipefail",
        f"exec {body}",
        "",
    ]
    return "\n".join(lines)


def finalize_script(job: ArrayJob) -> str:
    """The sbatch script that merges the shards' ledgers into the tree's sidecar files."""
    out = job.out.resolve()
    log = _log_path(out / LOG_DIR, "%j_finalize.log")
    name = f"{job.job_name}-finalize"[:64]
    return "\n".join(
        [
            "#!/bin/bash",
            f"# Writes {out}/metadata.csv, failures.csv and LICENSES/ from every shard's ledger.",
            *_directives(job, name, f"--output={log}"),
            "set -euo pipefail",
            "exec " + _command(job.python, "-m", "bulkdl", "finalize", str(out)),
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


def submit(
    script: Path,
    *options: str,
    sbatch: Sequence[str] = ("sbatch",),
    env: Mapping[str, str] | None = None,
) -> str:
    """``sbatch --parsable [options] script``; returns the job id.

    Raises AbortError with sbatch's own message when it is missing or refuses the job.
    """
    command = [*sbatch, "--parsable", *options, str(script)]
    try:
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            check=False,
            env=dict(env if env is not None else os.environ),
        )
    except FileNotFoundError as exc:
        raise AbortError(f"{command[0]} not found: is this a Slurm login node?") from exc
    answer = done.stdout.strip()
    match = _JOB_ID.fullmatch(answer)
    if done.returncode != 0 or match is None:
        why = (done.stderr or done.stdout).strip() or f"exit status {done.returncode}"
        raise AbortError(f"sbatch refused {script}: {why}")
    return match[1]
