"""The command line of lock files: ``bulkdl lock``, ``verify``, ``diff`` and ``build``.

:func:`add_commands` adds the four sub-commands to ``bulkdl``'s parser and :func:`run` runs
one; each turns its arguments into plain values and calls :mod:`bulkdl.api`,
:mod:`bulkdl.audit`, :mod:`bulkdl.lockdiff` or :mod:`bulkdl.build`. Reports go to stdout,
progress and messages to stderr (with ``--json``, JSON lines on stdout). Exit 0 when all
matches (or was written), 1 when something differs or failed, 2 for bad input, 3 when aborted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from functools import partial
from pathlib import Path
from typing import Final

import anyio

from bulkdl.cli import INSECURE_WARNING, add_api, add_filters, filters_of
from bulkdl.errors import ExitCode, InputError
from bulkdl.lockfile import Lock, dumps, read_lock, write_lock
from bulkdl.progress import JsonReporter, Reporter, human_bytes, make_reporter, summary_text

COMMANDS: Final = frozenset({"lock", "verify", "diff", "build"})
#: Series named one by one in a message before "and N more".
_NAMED: Final = 20


def add_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """Add ``lock``, ``verify``, ``diff`` and ``build`` to ``commands``."""
    lock = commands.add_parser(
        "lock",
        parents=[common],
        help="write the lock file of manifests, a query or a finished tree",
        description="Write a lock file: the exact series of the inputs (manifests, a lock, or "
        "query filters) with their counts and sizes as the archive states them now, without "
        "downloading; or, with --from DIR, of a finished tree: every instance with its size, "
        "MD5, SHA-256 and path. Exit 0 written, 1 unknown series or unfinished tree, 2 bad input.",
    )
    lock.add_argument("inputs", nargs="*", metavar="INPUT", help="manifests, or '-' for stdin")
    lock.add_argument(
        "-o", "--output", type=Path, metavar="FILE", help="lock file (default: stdout)"
    )
    lock.add_argument("--from", dest="from_dir", type=Path, metavar="DIR", help="a bulkdl tree")
    lock.add_argument(
        "--partial", action="store_true", help="with --from: lock the done series, skip the rest"
    )
    lock.add_argument("--config", type=Path, metavar="FILE", help="TOML settings")
    add_api(lock)
    add_filters(lock)

    verify = commands.add_parser(
        "verify",
        parents=[common],
        help="re-hash a tree against its ledger or a lock file",
        description="Read every file of DIR again and compare it with what its ledger (or "
        "--lock FILE) records: missing, modified and unexpected files, by series. Exit 0 only "
        "when everything matches, 1 otherwise.",
    )
    verify.add_argument("out", type=Path, metavar="DIR")
    verify.add_argument("--lock", type=Path, metavar="FILE", help="check against this lock")
    verify.add_argument("--workers", type=_positive, metavar="N", help="files read at once")
    verify.add_argument("--json", action="store_true", help="JSON lines on stdout")
    verify.add_argument(
        "--no-progress", dest="progress", action="store_false", default=True, help="no display"
    )

    diff = commands.add_parser(
        "diff",
        parents=[common],
        help="series and instances added, removed or changed between two locks (or trees)",
        description="Compare two lock files; a folder stands for the lock of its tree. Exit 0 "
        "when they hold the same series and instances, 1 when not.",
    )
    diff.add_argument("a", type=Path, metavar="A", help="lock file or bulkdl tree")
    diff.add_argument("b", type=Path, metavar="B", help="lock file or bulkdl tree")
    diff.add_argument("--json", action="store_true", help="one JSON object on stdout")

    build = commands.add_parser(
        "build",
        parents=[common],
        help="download a dataset spec and lock it (or check it against its lock)",
        description="Download the dataset a spec (configs/datasets/*.toml) describes. When its "
        "lock exists, exactly the locked series are fetched, every file is checked against it, "
        "and the tree must match it; otherwise the tree's lock is written. Exit 0 done, 1 some "
        "series failed or the tree does not match the lock, 2 bad input, 3 aborted.",
    )
    build.add_argument("spec", type=Path, metavar="SPEC", help="dataset spec (TOML)")
    build.add_argument("--out", type=Path, metavar="DIR", help="output folder (default ./NAME)")
    build.add_argument("--lock", type=Path, metavar="FILE", help="lock file (default: the spec's)")
    build.add_argument(
        "--update", action="store_true", help="resolve the spec again and rewrite the lock"
    )
    add_api(build)
    tuning = build.add_argument_group("settings (also from --config and BULKDL_* variables)")
    tuning.add_argument("--config", type=Path, metavar="FILE", help="TOML settings")
    tuning.add_argument("--concurrency", type=int, metavar="N", help="series in flight at once")
    tuning.add_argument("--retries", type=int, metavar="N", help="further attempts per series")
    tuning.add_argument("--read-timeout", type=float, metavar="S", help="stall timeout")
    tuning.add_argument("--connect-timeout", type=float, metavar="S")
    tuning.add_argument("--dry-run", action="store_true", default=None, help="print the plan")
    tuning.add_argument(
        "--no-progress", dest="progress", action="store_false", default=None, help="no display"
    )
    tuning.add_argument("--json", action="store_true", default=None, help="JSON events on stdout")
    tuning.add_argument("--fsync", action="store_true", default=None, help="fsync every file")
    tuning.add_argument(
        "--staging", type=Path, metavar="PATH", help="stage downloads under PATH (as download)"
    )
    tuning.add_argument("--pack", choices=("zip", "tar"), help="one archive per series")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 1 <= value <= 256:
        raise argparse.ArgumentTypeError(f"must be between 1 and 256, got {value}")
    return value


def run(args: argparse.Namespace) -> int:
    """Run the sub-command ``args.command`` (one of :data:`COMMANDS`); returns the exit status.
    Raises bulkdl's errors for the caller to print."""
    if args.command == "lock":
        return _lock(args)
    if args.command == "verify":
        return _verify(args)
    if args.command == "diff":
        return _diff(args)
    return _build(args)


def _say(text: str) -> None:
    print(text, file=sys.stderr)


def _describe(lock: Lock) -> str:
    text = f"{len(lock.series):,} series, {lock.images:,} images, {human_bytes(lock.bytes)}"
    digest = lock.digest
    return text + (f", digest {digest[:16]}" if digest else " (counts only: no instances)")


def _emit(lock: Lock, output: Path | None) -> None:
    if output is None or str(output) == "-":
        sys.stdout.write(dumps(lock))
        sys.stdout.flush()
    else:
        write_lock(lock, output)
    _say(f"lock: {output or '<stdout>'}: {_describe(lock)}")


def _left_out(left: dict[str, str]) -> list[str]:
    lines = [f"  {uid}: {state}" for uid, state in list(left.items())[:_NAMED]]
    if len(left) > _NAMED:
        lines.append(f"  and {len(left) - _NAMED:,} more")
    return lines


def _lock(args: argparse.Namespace) -> int:
    from bulkdl.api import resolve_lock, selection_of, vars_of
    from bulkdl.audit import tree_lock
    from bulkdl.config import load_settings

    if args.from_dir is not None:
        if args.inputs or any(vars_of(filters_of(args)).values()):
            raise InputError("give --from DIR or inputs (or query filters), not both")
        # Plain lines, only if files must be read (a ledger without SHA-256s): no live display.
        with make_reporter(json=False, progress=False, stream=sys.stdout, err=sys.stderr) as rep:
            made = tree_lock(args.from_dir, reporter=rep)
        if made.left_out and not args.partial:
            _say(f"bulkdl: {args.from_dir}: {len(made.left_out):,} series are not done:")
            for line in _left_out(made.left_out):
                _say(line)
            _say("no lock written: finish the download (bulkdl status DIR) or give --partial")
            return ExitCode.SOME_FAILED
        if made.left_out:
            _say(f"bulkdl: warning: {len(made.left_out):,} series left out (not done)")
        _emit(made.lock, args.output)
        return ExitCode.OK
    flags = {"api_url": args.api_url, "insecure": args.insecure, "ca_bundle": args.ca_bundle}
    settings = load_settings(flags=flags, config_file=args.config, env=os.environ)
    if settings.insecure:
        _say(INSECURE_WARNING)
    selection = selection_of(args.inputs, filters_of(args))
    lock, missing = anyio.run(partial(resolve_lock, settings, selection, interactive=True))
    if missing:
        _say(f"bulkdl: {len(missing):,} series unknown to the server (or not accessible):")
        for uid in missing[:_NAMED]:
            _say(f"  {uid}")
        _say("no lock written")
        return ExitCode.SOME_FAILED
    if not lock.series:
        raise InputError("nothing to lock: the inputs select no series")
    _emit(lock, args.output)
    return ExitCode.OK


def _verify(args: argparse.Namespace) -> int:
    from bulkdl.audit import verify_tree

    lock = read_lock(args.lock) if args.lock is not None else None
    reporter: Reporter
    if args.json:
        reporter = JsonReporter(sys.stdout)
    else:
        reporter = make_reporter(
            json=False, progress=args.progress, stream=sys.stdout, err=sys.stderr
        )
    with reporter:
        report = verify_tree(
            args.out, lock=lock, lock_name=str(args.lock or ""), reporter=reporter,
            workers=args.workers,
        )  # fmt: skip
    if args.json:
        sys.stdout.write(json.dumps({"event": "verify_finished", **report.to_json()}) + "\n")
    else:
        sys.stdout.write(report.text())
    return ExitCode.OK if report.ok else ExitCode.SOME_FAILED


def _side(path: Path) -> Lock:
    from bulkdl.audit import tree_lock

    if not path.is_dir():
        return read_lock(path)
    made = tree_lock(path)
    if made.left_out:
        _say(f"bulkdl: note: {path}: {len(made.left_out):,} series not done are left out")
    return made.lock


def _diff(args: argparse.Namespace) -> int:
    from bulkdl.lockdiff import diff_json, diff_locks, diff_text

    a, b = _side(args.a), _side(args.b)
    result = diff_locks(a, b)
    if args.json:
        sys.stdout.write(json.dumps(diff_json(result)) + "\n")
    else:
        sys.stdout.write(diff_text(result, str(args.a), str(args.b)))
    return ExitCode.OK if result.identical else ExitCode.SOME_FAILED


_BUILD_FLAGS: Final = (
    "out",
    "api_url",
    "insecure",
    "ca_bundle",
    "concurrency",
    "retries",
    "read_timeout",
    "connect_timeout",
    "dry_run",
    "progress",
    "json",
    "fsync",
    "staging",
    "pack",
)


def _build(args: argparse.Namespace) -> int:
    from bulkdl.build import BuildResult, build, load_spec, spec_settings
    from bulkdl.lockdiff import diff_text

    spec = load_spec(args.spec)
    flags = {name: getattr(args, name) for name in _BUILD_FLAGS}
    settings = spec_settings(spec, flags, args.config, os.environ)
    if settings.insecure:
        _say(INSECURE_WARNING)

    async def main() -> BuildResult:
        with make_reporter(
            json=settings.json, progress=settings.progress, stream=sys.stdout, err=sys.stderr
        ) as reporter:
            return await build(
                spec, settings, reporter, lock_path=args.lock, update=args.update,
                interactive=True, handle_signals=True,
            )  # fmt: skip

    result = anyio.run(main)
    run_result, path = result.run, result.lock_path
    matches = result.exit_code == ExitCode.OK and not settings.dry_run
    if settings.json:
        record = {
            "event": "build_finished",
            "lock": str(path),
            "pinned": result.pinned,
            "matches": matches,
            "digest": result.lock.digest if result.lock else None,
        }
        sys.stdout.write(json.dumps(record) + "\n")
        return result.exit_code
    _say(summary_text(run_result.finished, failures_file=str(run_result.out / "failures.csv")))
    if settings.dry_run:
        _say("lock: not written (dry run)")
    elif result.left_out:
        _say("series not done:\n" + "\n".join(_left_out(dict(result.left_out))))
        _say(f"lock: {path} not written: not every series is done")
    elif result.lock is None:
        _say(f"lock: {path} not written: not every series was placed")
    elif result.pinned:
        if matches:
            _say(f"lock: the tree matches {path}: {_describe(result.lock)}")
        else:
            assert result.diff is not None
            _say(diff_text(result.diff, str(path), str(run_result.out)).rstrip())
            _say(f"lock: the tree does NOT match {path}")
    else:
        _say(f"lock: wrote {path}: {_describe(result.lock)}")
    _say(f"tree: {run_result.out}")
    return result.exit_code
