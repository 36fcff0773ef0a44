"""The ``bulkdl`` command line: argument parsing, logging set-up, and exit codes.

Each sub-command turns its arguments into plain values and calls one function elsewhere
(``query.run_query``, ``demo.run_demo``, ``testing.serve_forever``); this module only parses,
dispatches and maps :class:`~bulkdl.errors.BulkdlError` to one clear line on stderr and an exit
code (see :class:`~bulkdl.errors.ExitCode`). Credentials never come from argv: ``--password``
and its kin are refused (exit 2) without echoing the value. ``--insecure`` prints a warning on
every run, whatever the log level.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import select
import signal
import sys
from collections.abc import Sequence
from dataclasses import replace
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn, TextIO

import anyio

from bulkdl import __version__
from bulkdl.errors import BulkdlError, ExitCode, InputError
from bulkdl.output import OutputFormat, write_records
from bulkdl.query import Listing, QueryRequest, run_query
from bulkdl.records import Series
from bulkdl.shard import parse_shard
from bulkdl.sources.auth import load_credentials
from bulkdl.sources.http import HttpSettings
from bulkdl.sources.nbia import PRESETS, SeriesQuery, api_version, resolve_base_url
from bulkdl.sources.nbia_client import open_client

if TYPE_CHECKING:
    from bulkdl.config import Settings
    from bulkdl.fetchpool import Started
    from bulkdl.pipeline import Selection

log = logging.getLogger(__name__)


def _date(text: str) -> date:
    for parse in (date.fromisoformat, _mdy):
        try:
            return parse(text)
        except (ValueError, OverflowError):  # OverflowError: a year too large for a C int
            continue
    raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD or MM-DD-YYYY): {text!r}")


def _mdy(text: str) -> date:
    month, day, year = text.split("-")
    return date(int(year), int(month), int(day))


def _size(text: str) -> float:
    """Bytes per second from '4MB', '500k', '1.5M', '1000000' (decimal units)."""
    units = {"": 1, "K": 1e3, "M": 1e6, "G": 1e9}
    raw = text.strip().upper().removesuffix("/S").removesuffix("B")
    number, unit = (raw[:-1], raw[-1]) if raw and raw[-1] in units else (raw, "")
    try:
        value = float(number) * units[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 4MB, 500k)") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive size: {text!r}")
    return value


#: Flags a user might try for credentials; each is refused, pointing at the safe channels.
_CREDENTIAL_FLAGS = ("--password", "--passwd", "--username", "--user", "--token")
INSECURE_WARNING = (
    "bulkdl: warning: TLS certificate verification is OFF (--insecure, insecure = true or "
    "BULKDL_INSECURE): the archive's identity is not checked, so anyone on the network path "
    "can read and alter what is sent and received, credentials included"
)


class _RefuseCredentials(argparse.Action):
    """Refuse a credentials flag with a pointer to the environment, never echoing its value
    (argparse's own 'unrecognized arguments' message would print the password to stderr)."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        parser.error(
            f"{option_string}: credentials are never read from the command line (argv shows in "
            "ps and shell history): set BULKDL_USERNAME and BULKDL_PASSWORD, or point "
            "BULKDL_CREDENTIALS_FILE at a chmod-600 file"
        )


def _refuse_credential_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        *_CREDENTIAL_FLAGS,
        dest="_credentials",
        nargs="?",
        action=_RefuseCredentials,
        default=argparse.SUPPRESS,
        help=argparse.SUPPRESS,
    )


def _counts(text: str) -> tuple[int, ...]:
    """Positive integers separated by commas: '8' or '1,2'."""
    try:
        counts = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a count or list of counts: {text!r}") from None
    if not counts or min(counts) < 0:
        raise argparse.ArgumentTypeError(f"counts must be 0 or more: {text!r}")
    return counts


def add_api(parser: argparse.ArgumentParser) -> None:
    """The API and TLS options every command that talks to the server has."""
    parser.add_argument(
        "--api-url",
        metavar="URL",
        help=f"NBIA API base URL or preset ({', '.join(PRESETS)}); env BULKDL_API_URL; "
        "default: TCIA's public v4 API",
    )
    parser.add_argument(
        "--ca-bundle",
        type=Path,
        metavar="FILE",
        help="PEM file of CA certificates to trust instead of the system's, e.g. a site's "
        "TLS-inspecting proxy (env BULKDL_CA_BUNDLE; OpenSSL's SSL_CERT_FILE works too); "
        "verification stays on",
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        default=None,
        help="do not verify TLS certificates (env BULKDL_INSECURE); a last resort, warned "
        "about on every run",
    )


def add_tuning(group: argparse._ArgumentGroup) -> None:
    """The download settings a run takes as flags (also from --config and BULKDL_* variables),
    shared by ``download`` and the tasks ``slurm`` writes."""
    group.add_argument("--config", type=Path, metavar="FILE", help="TOML settings")
    group.add_argument("--concurrency", type=int, metavar="N", help="series in flight at once")
    group.add_argument(
        "--processes",
        type=int,
        metavar="N",
        help="processes fetching and unpacking the series in flight (env BULKDL_PROCESSES)",
    )
    group.add_argument("--layout", metavar="TEMPLATE", help="path template or preset name")
    group.add_argument("--retries", type=int, metavar="N", help="further attempts per series")
    group.add_argument(
        "--read-timeout", type=float, metavar="S", help="no bytes for S seconds aborts an attempt"
    )
    group.add_argument("--connect-timeout", type=float, metavar="S")
    group.add_argument(
        "--accept-incomplete",
        action="store_true",
        default=None,
        help="also place series whose image count falls short, marked as such",
    )
    group.add_argument(
        "--new-file-names",
        action="store_true",
        default=None,
        help="ask NBIA for <acq>-<inst>.dcm member names",
    )
    group.add_argument(
        "--fsync", action="store_true", default=None, help="fsync every file as it is placed"
    )


def add_filters(parser: argparse.ArgumentParser) -> None:
    """The series filters (``--collection``...) of query, download, lock and slurm."""
    group = parser.add_argument_group("filters (exact match, case-insensitive)")
    group.add_argument("--collection")
    group.add_argument("--patient-id")
    group.add_argument("--study-uid")
    group.add_argument("--series-uid")
    group.add_argument("--modality")
    group.add_argument("--body-part")
    group.add_argument("--manufacturer")
    group.add_argument("--manufacturer-model")


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (exposed for tests and documentation)."""
    parser = argparse.ArgumentParser(
        prog="bulkdl",
        description="Bulk download and organize DICOM series from TCIA (NBIA) and other archives.",
    )
    parser.add_argument("--version", action="version", version=f"bulkdl {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log detail")
    parser.add_argument("-q", "--quiet", action="store_true", default=False, help="errors only")
    _refuse_credential_flags(parser)
    # The same two flags after the sub-command; SUPPRESS keeps the top level's value otherwise.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS)
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS)
    _refuse_credential_flags(common)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    query = commands.add_parser(
        "query",
        parents=[common],
        help="list series, studies, patients or values the archive holds",
        description="List what the archive holds. A table on a terminal, CSV otherwise.",
    )
    query.add_argument(
        "listing",
        nargs="?",
        default=Listing.SERIES.value,
        choices=[item.value for item in Listing],
        help="what to list (default: series)",
    )
    add_api(query)
    add_filters(query)
    query.add_argument(
        "--updated-since",
        type=_date,
        metavar="DATE",
        help="series added or changed since DATE (YYYY-MM-DD or MM-DD-YYYY)",
    )
    query.add_argument(
        "--format",
        choices=[item.value for item in OutputFormat],
        help="output format (default: table on a terminal, csv otherwise); "
        "tcia writes a manifest of the series",
    )

    download = commands.add_parser(
        "download",
        parents=[common],
        help="download series into a verified Patient/Study/Series tree",
        description="Download every series of the manifests (or matching the query filters) "
        "into DIR: streamed, verified against the archive's image counts and MD5s, placed "
        "atomically, resumable. Exit 0 all placed, 1 some failed, 2 bad input, 3 aborted, "
        "130 interrupted.",
    )
    download.add_argument(
        "inputs",
        nargs="*",
        metavar="INPUT",
        help="manifests (.tcia, .csv/.tsv, .txt, .json), a bulkdl lock file, or '-' for stdin",
    )
    download.add_argument("--out", type=Path, metavar="DIR", help="output folder (env BULKDL_OUT)")
    add_api(download)
    add_filters(download)
    _add_shard(download)
    tuning = download.add_argument_group("settings (also from --config and BULKDL_* variables)")
    add_tuning(tuning)
    tuning.add_argument(
        "--dry-run", action="store_true", default=None, help="print the plan; download nothing"
    )
    tuning.add_argument(
        "--no-progress", dest="progress", action="store_false", default=None, help="no display"
    )
    tuning.add_argument(
        "--json", action="store_true", default=None, help="one JSON event per line on stdout"
    )
    tuning.add_argument(
        "--staging",
        type=Path,
        metavar="PATH",
        help="download, unpack and verify in a private folder under PATH (e.g. node-local "
        "$TMPDIR; env BULKDL_STAGING), then move each verified series into the tree",
    )
    tuning.add_argument(
        "--pack",
        choices=("zip", "tar"),
        help="keep each verified series as one archive file (SERIES-FOLDER.zip or .tar) "
        "instead of a file per instance (env BULKDL_PACK)",
    )

    status = commands.add_parser(
        "status",
        parents=[common],
        help="what the ledger of DIR says: done, failed (with reasons), pending",
        description="Summarize DIR's ledger(s). Exit 0 when every series is done, 1 otherwise.",
    )
    status.add_argument("out", type=Path, metavar="DIR")
    status.add_argument("--json", action="store_true", help="one JSON object on stdout")

    from bulkdl import lockcli  # lock, verify, diff, build: imports this module's helpers

    lockcli.add_commands(commands, common)

    _add_organize(commands, common)

    from bulkdl import slurmcli  # slurm, finalize: imports this module's helpers

    slurmcli.add_commands(commands, common)

    demo = commands.add_parser(
        "demo",
        parents=[common],
        help="run bulkdl end to end against its own local NBIA-compatible server",
        description="Start the in-package NBIA-compatible server on 127.0.0.1 with a generated "
        "archive and run bulkdl against it. Needs no network.",
    )
    demo.add_argument("--out", type=Path, default=Path("demo-output"), help="output folder")

    serve = commands.add_parser(
        "serve-fake",
        parents=[common],
        help="serve a synthetic archive over NBIA's REST API (for tests and benchmarks)",
        description="Serve a deterministic synthetic archive of real DICOM files the way NBIA "
        "does, until interrupted. Prints the v4 base URL when ready.",
    )
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=0, help="0 picks a free port")
    serve.add_argument("--collections", default="DEMO-CT", help="comma-separated names")
    serve.add_argument("--patients", type=int, default=2, help="per collection")
    serve.add_argument("--studies", type=int, default=1, help="per patient")
    serve.add_argument("--series", type=int, default=2, help="per study")
    serve.add_argument(
        "--images",
        type=_counts,
        default=(8,),
        metavar="N[,N...]",
        help="images per series; several counts are cycled over the series (e.g. 1,2)",
    )
    serve.add_argument("--matrix", type=int, default=512, help="image rows and columns")
    serve.add_argument("--seed", type=int, default=0)
    serve.add_argument("--awkward", action="store_true", help="hostile attribute values")
    serve.add_argument("--metadata-only", action="store_true", help="rows only, no files")
    serve.add_argument("--cache-dir", type=Path, help="where built archives are kept")
    serve.add_argument("--faults", type=Path, metavar="FILE", help="fault plan (JSON or TOML)")
    serve.add_argument(
        "--bandwidth", type=_size, metavar="RATE", help="per-connection cap, e.g. 4MB"
    )
    serve.add_argument("--first-byte-delay", type=float, default=0.0, metavar="S", help="seconds")
    return parser


#: The only destinations argparse may fill with a list (nargs="*", or "append").
_LIST_DESTS = frozenset({"inputs", "sources", "sbatch"})


def parse_args(
    argv: Sequence[str] | None = None, parser: argparse.ArgumentParser | None = None
) -> argparse.Namespace:
    """Parse ``argv`` (default ``sys.argv[1:]``); exits 2 through argparse on bad input.

    Python 3.11's argparse turns ``--flag=--`` into ``[]`` without calling the flag's type, so a
    list where one value belongs is refused here instead of crashing later.
    """
    parser = parser or build_parser()
    args = parser.parse_args(argv)
    for name, value in vars(args).items():
        if isinstance(value, list) and name not in _LIST_DESTS:
            parser.error(f"argument --{name.replace('_', '-')}: expected one value, got '--'")
    return args


def _configure_logging(verbose: int, quiet: bool) -> None:
    level = (
        logging.ERROR if quiet else (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    )
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )


def filters_of(args: argparse.Namespace) -> SeriesQuery:
    """The series filters given on the command line, as a query."""
    return SeriesQuery(
        collection=args.collection,
        patient_id=args.patient_id,
        study_uid=args.study_uid,
        series_uid=args.series_uid,
        modality=args.modality,
        body_part=args.body_part,
        manufacturer=args.manufacturer,
        manufacturer_model=args.manufacturer_model,
    )


def _tls_settings(args: argparse.Namespace) -> HttpSettings:
    """The API URL and TLS flags checked as ``download`` checks them (env included), so a
    ``user:password@`` URL or a missing CA file is refused the same way."""
    from bulkdl.config import load_settings

    flags = {"api_url": args.api_url, "insecure": args.insecure, "ca_bundle": args.ca_bundle}
    settings = load_settings(flags=flags, config_file=None, env=os.environ)
    if settings.insecure:
        print(INSECURE_WARNING, file=sys.stderr)
    return HttpSettings(verify=not settings.insecure, ca_bundle=settings.ca_bundle)


async def _query(args: argparse.Namespace) -> int:
    http = _tls_settings(args)
    base_url = resolve_base_url(args.api_url)
    needs_token = api_version(base_url) in {"v2", "unversioned"}
    credentials = load_credentials(interactive=True) if needs_token else None
    request = QueryRequest(Listing(args.listing), filters_of(args), args.updated_since)
    request.check()
    fmt = (
        OutputFormat(args.format)
        if args.format
        else (OutputFormat.TABLE if sys.stdout.isatty() else OutputFormat.CSV)
    )
    async with open_client(base_url, settings=http, credentials=credentials) as client:
        records = await run_query(client, request)
    write_records(records, fmt, sys.stdout)
    return ExitCode.OK


_SETTING_FLAGS = (
    "out",
    "api_url",
    "concurrency",
    "processes",
    "layout",
    "retries",
    "read_timeout",
    "connect_timeout",
    "accept_incomplete",
    "dry_run",
    "progress",
    "json",
    "new_file_names",
    "fsync",
    "insecure",
    "ca_bundle",
    "staging",
    "pack",
)


def setting_flags(args: argparse.Namespace) -> dict[str, object | None]:
    """``bulkdl download``'s parsed flags as :func:`~bulkdl.config.load_settings` takes them
    (None: not given)."""
    return {name: getattr(args, name) for name in _SETTING_FLAGS}


def _download(args: argparse.Namespace) -> int:
    from bulkdl.api import fork_for, selection_of
    from bulkdl.config import load_settings
    from bulkdl.fetchpool import stop_started

    settings = load_settings(flags=setting_flags(args), config_file=args.config, env=os.environ)
    # The fetch workers are forked now, while this process has one thread and no event loop, so
    # they are ready at once; and before the manifest is read, whose pages this process would
    # otherwise copy for itself as it goes through them, leaving the originals to the workers.
    workers = fork_for(settings)
    try:
        selection = selection_of(args.inputs, filters_of(args))
        if args.shard is not None:
            selection = replace(selection, shard=parse_shard(args.shard, os.environ))
        return anyio.run(_run_download, settings, selection, workers)
    finally:
        stop_started(workers)


async def _run_download(
    settings: Settings, selection: Selection, workers: Sequence[Started]
) -> int:
    from bulkdl.api import run_download
    from bulkdl.progress import make_reporter, summary_text

    if settings.insecure:
        print(INSECURE_WARNING, file=sys.stderr)
    with make_reporter(
        json=settings.json, progress=settings.progress, stream=sys.stdout, err=sys.stderr
    ) as reporter:
        result = await run_download(
            settings, selection, reporter, handle_signals=True, interactive=True, workers=workers
        )
    if settings.dry_run:
        _print_plan(result.planned, result.count("skipped"))
    if not settings.json:
        failures = str(result.out / "failures.csv")
        if selection.shard is not None:
            failures += f" (once 'bulkdl finalize {result.out}' has run)"
        print(summary_text(result.finished, failures_file=failures), file=sys.stderr)
        print(f"tree: {result.out}", file=sys.stderr)
    return result.exit_code


def _print_plan(planned: Sequence[Series], skipped: int) -> None:
    images = sum(s.ImageCount or 0 for s in planned)
    size = sum(s.FileSize or 0 for s in planned)
    for series in planned:
        print(f"{series.SeriesInstanceUID}\t{series.ImageCount or '?'}\t{series.FileSize or '?'}")
    print(
        f"plan: {len(planned)} series to fetch, {images} images, {size / 1e9:.2f} GB; "
        f"{skipped} already done",
        file=sys.stderr,
    )


def _status(args: argparse.Namespace) -> int:
    from bulkdl.status import print_status

    return print_status(args.out, as_json=args.json)


def _add_organize(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
) -> None:
    organize = commands.add_parser(
        "organize",
        parents=[common],
        help="lay out DICOM files already on disk (folders, ZIPs) as a bulkdl tree, or "
        "re-lay a tree in place",
        description="Place the DICOM files of SRC folders and ZIPs into DIR with the layout, "
        "the way a download places them (sanitized paths, collisions, atomic moves, ledger); "
        "files that are not DICOM are listed and left where they are. 'bulkdl organize DIR "
        "--layout NEW' re-lays the bulkdl tree DIR in place. Exit 0 all placed, 1 some files "
        "failed, 2 bad input, 3 aborted, 130 interrupted.",
    )
    organize.add_argument(
        "sources",
        nargs="+",
        type=Path,
        metavar="SRC",
        help="folders and ZIPs of DICOM files (without --out: the bulkdl tree to re-lay)",
    )
    organize.add_argument("--out", type=Path, metavar="DIR", help="the tree to place files in")
    organize.add_argument(
        "--layout", metavar="TEMPLATE", help="path template or preset (env BULKDL_LAYOUT)"
    )
    how = organize.add_mutually_exclusive_group()
    for flag, text in (
        ("--copy", "copy each file (the default; sources untouched)"),
        ("--move", "move each file, removing the source once its series is recorded"),
        ("--link", "hard-link each file (no space used; SRC and DIR on one filesystem)"),
    ):
        how.add_argument(flag, dest="mode", action="store_const", const=flag[2:], help=text)
    organize.add_argument(
        "--dry-run", action="store_true", help="print the plan (source -> target); write nothing"
    )
    organize.add_argument(
        "--collection", metavar="NAME", help="Collection of series nothing else names"
    )
    organize.add_argument(
        "--workers", type=int, default=8, metavar="N", help="threads reading and copying files"
    )
    _add_shard(organize)


def _add_shard(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--shard",
        metavar="K/N|slurm",
        help="only the series of shard K of N (K from 0; by a hash of SeriesInstanceUID), with "
        "the shard's own ledger and no metadata.csv (run 'bulkdl finalize DIR' after the "
        "last shard); 'slurm': this Slurm array task's shard",
    )


def _organize(args: argparse.Namespace) -> int:
    from bulkdl.organize import print_report, run

    if args.workers < 1:
        raise InputError(f"--workers must be 1 or more, not {args.workers}")
    report = run(
        args.sources,
        args.out,
        args.layout,
        mode=args.mode or "copy",
        dry_run=args.dry_run,
        collection=args.collection,
        workers=args.workers,
        shard=parse_shard(args.shard, os.environ) if args.shard is not None else None,
    )
    print_report(report, args.out or args.sources[0], sys.stdout, sys.stderr)
    return report.exit_code


def _serve(args: argparse.Namespace) -> int:
    from bulkdl.testing import ArchiveSpec, default_cache_dir, serve_forever

    spec = ArchiveSpec(
        collections=tuple(c.strip() for c in args.collections.split(",") if c.strip()),
        patients_per_collection=args.patients,
        studies_per_patient=args.studies,
        series_per_study=args.series,
        images_per_series=args.images[0] if len(args.images) == 1 else args.images,
        rows=args.matrix,
        columns=args.matrix,
        seed=args.seed,
        awkward=args.awkward,
        metadata_only=args.metadata_only,
    )
    if not spec.collections:
        raise InputError("--collections needs at least one name")

    def ready(root_url: str) -> None:
        print(f"{root_url}/nbia-api/services/v4/", flush=True)

    async def serve() -> None:
        await serve_forever(
            spec,
            host=args.host,
            port=args.port,
            cache_dir=args.cache_dir or default_cache_dir(),
            faults_file=args.faults,
            bandwidth=args.bandwidth,
            first_byte_delay=args.first_byte_delay,
            on_ready=ready,
        )

    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C or SIGTERM is how a server stops
        anyio.run(serve)
    return ExitCode.OK


def _terminate_as_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    # SIGTERM stops as cleanly as Ctrl-C (a download watches both once its workers start).
    signal.signal(signal.SIGTERM, _terminate_as_interrupt)
    parser = build_parser()
    args = parse_args(argv, parser)
    _configure_logging(args.verbose, args.quiet)
    if args.command is None:
        parser.print_help()
        return ExitCode.USAGE
    try:
        if args.command == "query":
            return anyio.run(_query, args)
        if args.command == "serve-fake":
            return _serve(args)
        if args.command == "download":
            return _download(args)
        if args.command == "status":
            return _status(args)
        if args.command in ("lock", "verify", "diff", "build"):
            from bulkdl import lockcli

            return lockcli.run(args)
        if args.command == "organize":
            return _organize(args)
        if args.command in ("slurm", "finalize"):
            from bulkdl import slurmcli

            return slurmcli.run(args)
        from bulkdl.demo import run_demo

        return run_demo(args.out)
    except BulkdlError as exc:
        print(f"bulkdl: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("bulkdl: interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED
    except OSError as exc:
        if isinstance(exc, BrokenPipeError) and _reader_gone(sys.stdout):
            return ExitCode.PIPE_CLOSED  # the reader has what it wanted: stop quietly, as cat does
        print(f"bulkdl: error: {exc}", file=sys.stderr)
        return ExitCode.ABORTED


def _reader_gone(stream: TextIO) -> bool:
    """True when ``stream`` is a pipe whose reading end is closed (poll reports an error on
    it), so a broken pipe was stdout's and not, say, a socket's."""
    try:
        poller = select.poll()
        poller.register(stream.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (OSError, ValueError):  # no file descriptor (a StringIO), or a closed one
        return False


def run() -> NoReturn:
    """The ``bulkdl`` script and ``python -m bulkdl``: :func:`main`, then a quick exit.

    By the time main returns, everything the command wrote is closed (ledgers, files, locks) and
    its threads are done, so the interpreter's teardown (freeing every object of some 400 modules
    one by one) only costs time: 30-40 ms of every run, ~1.5 % of a 600 MB loopback download and
    more of a small one. stdout, stderr and logging are flushed first, and a stdout whose reader
    has gone (``bulkdl query | head``) is not an error. ``main`` itself stays an ordinary
    function for callers in Python.
    """
    code = main()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)
