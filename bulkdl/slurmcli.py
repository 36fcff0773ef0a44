"""The command line of HPC runs: ``bulkdl slurm`` (a job array) and ``bulkdl finalize DIR``.

``bulkdl slurm INPUT... --out DIR --tasks N`` checks what a download would check first (the
manifests parse, the settings and layout are valid, DIR is not the tree of an array of another
size), then writes the sbatch array script of :mod:`bulkdl.slurm`: printed, written to ``-o
FILE``, or, with ``--submit``, submitted together with the ``bulkdl finalize`` job that runs
after it (``--dependency=afterany``); the job ids are printed. Only the download flags given
on this command line are passed to the tasks (``--config`` and ``--ca-bundle`` as absolute
paths); ``BULKDL_*`` variables and credentials reach them through the environment, never
through the script. ``bulkdl finalize DIR`` writes the sidecars of a tree from every ledger in
it (:func:`bulkdl.merged.write_sidecars`) and prints its status; exit 0 when every series is
done, 1 otherwise. Writes under DIR only (and the ``-o`` file).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path
from typing import Final

from bulkdl.cli import INSECURE_WARNING, add_api, add_filters, add_tuning, filters_of
from bulkdl.errors import AbortError, InputError
from bulkdl.merged import ledger_names, write_sidecars
from bulkdl.outdir import STATE_DIR, disk_error, exclusive
from bulkdl.slurm import (
    ArrayJob,
    array_script,
    finalize_script,
    prepare_logs,
    submit,
    write_script,
)

COMMANDS: Final = frozenset({"slurm", "finalize"})
#: Download flags passed to every task: (flag, kind); "path" is made absolute, "switch" has no
#: value. Filters are passed too. Credentials are no flag at all.
FORWARDED: Final = (
    ("--api-url", "value"),
    ("--ca-bundle", "path"),
    ("--insecure", "switch"),
    ("--config", "path"),
    ("--concurrency", "value"),
    ("--layout", "value"),
    ("--retries", "value"),
    ("--read-timeout", "value"),
    ("--connect-timeout", "value"),
    ("--accept-incomplete", "switch"),
    ("--new-file-names", "switch"),
    ("--fsync", "switch"),
    ("--pack", "value"),
)
_SHARD_LEDGER = re.compile(r"ledger-\d+of(\d+)\.sqlite")


def add_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """Add ``slurm`` and ``finalize`` to ``commands``."""
    slurm = commands.add_parser(
        "slurm",
        parents=[common],
        help="write or submit a Slurm job array that downloads INPUT in N shards",
        description="Write an sbatch job array script: task K of N runs 'bulkdl download "
        "--shard K/N' into DIR with its own ledger. Printed on stdout, written to -o FILE, or "
        "submitted (--submit) with a 'bulkdl finalize DIR' job after it. Submitting the same "
        "again after a partial failure only fetches what is not done.",
    )
    slurm.add_argument("inputs", nargs="*", metavar="INPUT", help="manifests or a lock file")
    slurm.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    slurm.add_argument("--tasks", type=int, required=True, metavar="N", help="array tasks")
    job = slurm.add_argument_group("the job")
    job.add_argument("--partition", metavar="P", help="partition (or several: a,b)")
    job.add_argument("--time", metavar="T", help="time limit per task (90, 4:00:00, 1-12:00:00)")
    job.add_argument("--cpus", type=int, metavar="C", help="CPUs per task")
    job.add_argument("--max-running", type=int, metavar="M", help="tasks running at once at most")
    job.add_argument("--job-name", default="bulkdl", metavar="NAME")
    job.add_argument(
        "--sbatch",
        action="append",
        default=[],
        metavar="OPTION",
        help="another sbatch option for the script, e.g. --sbatch=--mem=4G or --sbatch "
        "account=lab (repeatable)",
    )
    job.add_argument("-o", "--output", type=Path, metavar="FILE", help="write the script here")
    job.add_argument(
        "--submit", action="store_true", help="submit it, and the finalize job after it"
    )
    add_api(slurm)
    add_filters(slurm)
    tuning = slurm.add_argument_group("download settings passed to every task")
    add_tuning(tuning)
    tuning.add_argument(
        "--staging",
        metavar="PATH",
        help="each task downloads, unpacks and verifies under PATH, then moves verified series "
        "into DIR; $VAR in PATH expand on the node when the task starts: --staging '$TMPDIR'",
    )
    tuning.add_argument(
        "--pack", choices=("zip", "tar"), help="keep each series as one archive file"
    )

    finalize = commands.add_parser(
        "finalize",
        parents=[common],
        help="write metadata.csv, failures.csv and LICENSES/ of DIR from every shard's ledger",
        description="Merge every ledger of DIR (one per shard of a job array) into DIR's "
        "metadata.csv, failures.csv and LICENSES/, then print its status. Run it once the "
        "shards are done ('bulkdl slurm --submit' does). Exit 0 when every series is done, "
        "1 otherwise.",
    )
    finalize.add_argument("out", type=Path, metavar="DIR")


def run(args: argparse.Namespace) -> int:
    """Run ``slurm`` or ``finalize``; returns the exit status. Raises bulkdl's errors."""
    if args.command == "finalize":
        return _finalize(args.out)
    return _slurm(args)


def _say(text: str) -> None:
    print(text, file=sys.stderr)


def forwarded_options(args: argparse.Namespace) -> list[str]:
    """The download flags (and filters) given on this command line, as task arguments."""
    options: list[str] = []
    for flag, kind in FORWARDED:
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is None or value is False:
            continue
        if kind == "switch":
            options.append(flag)
        else:
            options += [flag, str(Path(value).resolve()) if kind == "path" else str(value)]
    from bulkdl.api import vars_of

    for name, value in vars_of(filters_of(args)).items():
        if value is not None:
            options += [f"--{name.replace('_', '-')}", str(value)]
    return options


def _check_download(args: argparse.Namespace) -> None:
    """Refuse at once what every task would refuse: bad settings, layout or manifests."""
    from bulkdl.api import selection_of
    from bulkdl.config import load_settings
    from bulkdl.layout import resolve_layout

    if "-" in args.inputs:
        raise InputError("bulkdl slurm: array tasks cannot read stdin: save the manifest to a file")
    flags: dict[str, object | None] = {
        flag[2:].replace("-", "_"): getattr(args, flag[2:].replace("-", "_"))
        for flag, _ in FORWARDED
        if flag != "--config"
    }
    env = os.environ  # the tasks inherit it
    settings = load_settings(flags={**flags, "out": args.out}, config_file=args.config, env=env)
    if settings.insecure:
        print(INSECURE_WARNING, file=sys.stderr)
    resolve_layout(settings.layout)
    selection_of(args.inputs, filters_of(args))


def _check_tree(out: Path, tasks: int) -> None:
    """DIR must not hold the shard ledgers of an array of another size: its done series would
    be fetched again, as no new shard reads them."""
    counts = {int(m[1]) for name in ledger_names(out) if (m := _SHARD_LEDGER.fullmatch(name))}
    other = sorted(counts - {tasks})
    if other:
        raise InputError(
            f"{out} holds the ledgers of an array of {other[0]} tasks: submit again with "
            f"--tasks {other[0]}, or the series they placed are fetched again"
        )


def _slurm(args: argparse.Namespace) -> int:
    _check_download(args)
    out: Path = args.out.resolve()
    _check_tree(out, args.tasks)
    sbatch = [o if o.startswith("-") else f"--{o}" for o in args.sbatch]
    job = ArrayJob(
        inputs=tuple(str(Path(i).resolve()) for i in args.inputs),
        out=out,
        tasks=args.tasks,
        download_options=tuple(forwarded_options(args)),
        staging=args.staging,
        partition=args.partition,
        time=args.time,
        cpus=args.cpus,
        max_running=args.max_running,
        job_name=args.job_name,
        sbatch_options=tuple(sbatch),
    )
    script = array_script(job)
    if args.output is None and not args.submit:
        sys.stdout.write(script)
        _say(f"bulkdl: save it (-o FILE) or --submit it; then: bulkdl finalize {out}")
        return 0
    logs = prepare_logs(out)
    path = args.output or logs / "array.sh"
    write_script(path, script)
    finalize = logs / "finalize.sh"
    write_script(finalize, finalize_script(job))
    if not args.submit:
        _say(f"bulkdl: wrote {path}; submit it with: sbatch {path}")
        _say(f"bulkdl: then, once it is done: sbatch {finalize} (or bulkdl finalize {out})")
        return 0
    array_id = submit(path)
    print(f"array job {array_id}: {job.tasks} tasks downloading into {out}", flush=True)
    try:
        finalize_id = submit(finalize, f"--dependency=afterany:{array_id}")
    except AbortError as exc:
        raise AbortError(
            f"{exc}; the array job {array_id} is submitted: run 'bulkdl finalize {out}' after it"
        ) from exc
    print(f"finalize job {finalize_id}: bulkdl finalize {out}, after job {array_id}")
    _say(f"bulkdl: task logs in {logs}; progress: bulkdl status {out}")
    return 0


def _finalize(out: Path) -> int:
    from bulkdl.status import print_status

    if not ledger_names(out):
        raise InputError(f"{out}: no bulkdl ledger here (is it a bulkdl output folder?)")
    # Not while shards write: their ledgers are read whole, and on another node mid-write
    # they cannot be read safely.
    with exclusive(out / STATE_DIR):
        try:
            write_sidecars(out)
        except OSError as exc:
            raise disk_error(exc, out) from exc
    _say(f"bulkdl: wrote {out}/metadata.csv, failures.csv and LICENSES/ from every ledger")
    return print_status(out)
