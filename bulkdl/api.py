"""The Python API for notebooks and scripts: ``bulkdl.download(...)`` and its async twin.

Both take the same inputs as ``bulkdl download`` (manifest paths, or query filters) and the same
settings as keyword arguments, build the NBIA source, run the pipeline and return a
:class:`~bulkdl.pipeline.RunResult` with every series' outcome. No progress display unless a
reporter is given; errors are bulkdl's own exceptions. ``insecure=True`` (or ``insecure = true``
in the config, or ``BULKDL_INSECURE``) turns TLS certificate checks off and logs a warning on
every call; ``ca_bundle=`` trusts a private CA instead. An input that is a bulkdl lock file
pins the download: exactly its series are fetched, each checked against the lock (counts when
resolved; every instance's size, MD5 and SHA-256 before it is placed) by
:class:`~bulkdl.sources.locked.LockedSource`, and a series the archive changed since fails,
naming the instances. :func:`resolve_lock` makes
the lock of inputs without downloading. Network and disk I/O.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio

from bulkdl.audit import tree_records
from bulkdl.config import Settings, load_settings
from bulkdl.cpugate import CpuGate, default_slots
from bulkdl.errors import InputError
from bulkdl.fetchpool import (
    FetchPool,
    Started,
    WorkerSpec,
    can_fork,
    fork_workers,
    stop_started,
    worker_slots,
)
from bulkdl.lockdiff import compare_series
from bulkdl.lockfile import (
    Lock,
    LockedInstance,
    locked_series,
    maybe_lock,
    public_url,
)
from bulkdl.manifest import parse_manifest, read_text
from bulkdl.pipeline import RunResult, Selection, SeriesOutcome
from bulkdl.pipeline import download as run_pipeline
from bulkdl.progress import NullReporter, Reporter
from bulkdl.shard import Shard, parse_shard
from bulkdl.sources import Source
from bulkdl.sources.auth import load_credentials
from bulkdl.sources.http import HttpSettings
from bulkdl.sources.locked import LockedSource
from bulkdl.sources.nbia import SeriesQuery, api_version, resolve_base_url
from bulkdl.sources.nbia_client import open_client
from bulkdl.sources.nbia_source import NbiaSource
from bulkdl.sources.pooled import PooledSource
from bulkdl.sources.sharded import ShardedSource

log = logging.getLogger(__name__)


def read_inputs(inputs: Sequence[str]) -> tuple[list[str], Lock | None]:
    """The series UIDs of ``inputs`` (manifests, ``-`` for stdin), each once in first-seen order,
    and the lock when the input is a bulkdl lock file (which must then be the only input).

    Raises ManifestError naming the input and line, InputError for a lock among other inputs.
    """
    uids: list[str] = []
    locks: list[tuple[str, Lock]] = []
    for path in inputs:
        source, text = read_text(path)
        lock = maybe_lock(text, source)
        if lock is None:
            uids += parse_manifest(text, source)
        else:
            locks.append((source, lock))
    if locks and (len(locks) > 1 or uids):
        names = ", ".join(name for name, _ in locks)
        raise InputError(f"a lock file pins the whole selection: give it alone ({names})")
    if locks:
        lock = locks[0][1]
        return list(lock.uids), lock
    return list(dict.fromkeys(uids)), None


def selection_of(inputs: Sequence[str], query: SeriesQuery | None) -> Selection:
    """Manifests (or one lock file) or a query, not both, not neither. Raises InputError (or
    ManifestError)."""
    has_query = query is not None and any(vars_of(query).values())
    if inputs and has_query:
        raise InputError("give manifests or query filters, not both")
    if inputs:
        uids, lock = read_inputs(inputs)
        return Selection(uids=tuple(uids), pinned=lock)
    if has_query:
        return Selection(query=query)
    raise InputError("nothing to download: give a manifest (or '-' for stdin) or query filters")


def vars_of(query: SeriesQuery) -> dict[str, object]:
    """The query's filters as a dict (None for unset ones)."""
    return {name: getattr(query, name) for name in query.__dataclass_fields__}


async def run_download(
    settings: Settings,
    selection: Selection,
    reporter: Reporter,
    *,
    handle_signals: bool = False,
    interactive: bool = False,
    workers: Sequence[Started] = (),
) -> RunResult:
    """Download ``selection`` from the NBIA API named by ``settings`` into ``settings.out``;
    ``workers`` are fetch workers forked already (:func:`fork_for`), which this run takes over.

    TLS follows ``settings.insecure`` and ``settings.ca_bundle``; warning about ``insecure`` is
    the caller's job (the CLI prints it, :func:`adownload` logs it). Raises InputError,
    AbortError, AuthError, SourceError (e.g. a certificate that does not verify); per-series
    failures are in the result.
    """
    if settings.out is None:
        raise InputError("no output folder: give --out DIR")
    async with (
        open_source(settings, interactive=interactive) as (nbia, base_url),
        fetching_source(settings, nbia, base_url, started=workers) as fetcher,
    ):
        pinned = selection.pinned
        source: Source = fetcher
        if pinned is not None:
            if pinned.source and pinned.source != public_url(base_url):
                log.warning(
                    "the lock was made against %s; downloading from %s", pinned.source, base_url
                )
            source = LockedSource(source, pinned)
        if selection.shard is not None:
            source = ShardedSource(source, selection.shard)
        result = await run_pipeline(
            settings, selection, source, reporter, handle_signals=handle_signals
        )
    if pinned is not None and not settings.dry_run:
        result = await anyio.to_thread.run_sync(check_kept, result, pinned)
    return result


@asynccontextmanager
async def open_source(
    settings: Settings, *, interactive: bool = False, slots: int | None = None
) -> AsyncIterator[tuple[NbiaSource, str]]:
    """The NBIA source ``settings`` name (API URL, TLS, timeouts, token when the API needs one),
    open for the block, with its base URL; it unpacks on ``slots`` threads (default: one per
    core). Raises InputError, AuthError."""
    base_url = resolve_base_url(settings.api_url)
    credentials = load_credentials(interactive=interactive) if _needs_token(base_url) else None
    http = HttpSettings(
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.read_timeout,
        limit_per_host=settings.limit_per_host,
        verify=not settings.insecure,
        ca_bundle=settings.ca_bundle,
    )
    with CpuGate(slots or default_slots()) as cpu:
        async with open_client(base_url, settings=http, credentials=credentials) as client:
            client.metadata_batch = settings.metadata_batch
            yield NbiaSource(client, new_file_names=settings.new_file_names, cpu=cpu), base_url


def _needs_token(base_url: str) -> bool:
    return api_version(base_url) in {"v2", "unversioned"}


@asynccontextmanager
async def fetching_source(
    settings: Settings, nbia: NbiaSource, base_url: str, *, started: Sequence[Started] = ()
) -> AsyncIterator[Source]:
    """``nbia``, its fetches in worker processes when :func:`uses_workers` (``started`` ones
    first, taken over)."""
    if not uses_workers(settings, base_url):
        if settings.processes > 1 and _needs_token(base_url):
            log.info("fetching in this process: the API needs a token, which workers are not given")
        stop_started(started)
        yield nbia
        return
    spec = WorkerSpec(
        settings=settings,
        slots=worker_slots(settings.processes),
        log_level=logging.getLogger().getEffectiveLevel(),
    )
    async with FetchPool(spec, settings.processes, started=started) as pool:
        yield PooledSource(nbia, pool)


def uses_workers(settings: Settings, base_url: str) -> bool:
    """Whether a run fetches in ``settings.processes`` worker processes: when more than one, on
    POSIX (workers inherit their socket by descriptor), but not for a dry run (nothing is
    fetched) nor for an API that needs a token (the workers are given no credentials; those runs
    fetch in this process)."""
    return (
        settings.processes > 1
        and not settings.dry_run
        and os.name == "posix"
        and not _needs_token(base_url)
    )


def fork_for(settings: Settings) -> list[Started]:
    """The worker processes a run of ``settings`` will use, forked now, when this process can
    (:func:`~bulkdl.fetchpool.can_fork`: the command line, before its event loop starts); none
    otherwise, and the run starts them itself. Raises InputError for a bad API URL."""
    if not can_fork() or not uses_workers(settings, resolve_base_url(settings.api_url)):
        return []
    return fork_workers(settings.processes)


def check_kept(result: RunResult, lock: Lock) -> RunResult:
    """``result`` with each series skipped as already done, whose recorded files differ from
    ``lock``'s instances, turned into a failure naming them (placed by an earlier run that no
    lock checked). Reads the ledgers; blocking."""
    kept = [
        o.uid
        for o in result.outcomes
        if o.outcome == "skipped" and (s := lock.get(o.uid)) is not None and s.instances is not None
    ]
    if not kept:
        return result
    files = tree_records(result.out).files
    failed: dict[str, str] = {}
    for uid in kept:
        locked = lock.get(uid)
        assert locked is not None
        actual = [
            LockedInstance(f.SOPInstanceUID, f.size, f.md5, f.sha256) for f in files.get(uid, [])
        ]
        problems = compare_series(locked, actual, here="in the tree")
        if problems:
            failed[uid] = "in the tree already, but not as locked: " + "; ".join(problems)
            log.error("series %s %s", uid, failed[uid])
    if not failed:
        return result
    outcomes = tuple(
        SeriesOutcome(o.uid, "failed", reason=failed[o.uid]) if o.uid in failed else o
        for o in result.outcomes
    )
    return replace(result, outcomes=outcomes)


async def resolve_lock(
    settings: Settings, selection: Selection, *, interactive: bool = False
) -> tuple[Lock, list[str]]:
    """The lock of ``selection`` as the archive describes it now (series, counts and sizes; no
    instances: nothing is downloaded), and the UIDs the archive does not know.

    Raises InputError, AuthError, SourceError as a download's resolve step does.
    """
    missing: list[str] = []
    async with open_source(settings, interactive=interactive) as (source, base_url):
        if selection.query is not None:
            found = await source.search(selection.query)
        else:
            found, missing = await source.resolve(list(selection.uids))
    unique = {s.SeriesInstanceUID: locked_series(s) for s in found}
    return Lock(tuple(unique.values()), source=public_url(base_url)), missing


async def adownload(
    *inputs: str | Path,
    out: str | Path,
    query: SeriesQuery | None = None,
    config: str | Path | None = None,
    reporter: Reporter | None = None,
    shard: str | Shard | None = None,
    **options: Any,
) -> RunResult:
    """Async twin of :func:`download`."""
    flags: dict[str, object | None] = {**options, "out": Path(out)}
    settings = load_settings(
        flags=flags, config_file=Path(config) if config else None, env=os.environ
    )
    selection = selection_of([str(i) for i in inputs], query)
    if shard is not None:
        own = shard if isinstance(shard, Shard) else parse_shard(shard, os.environ)
        selection = replace(selection, shard=own)
    if settings.insecure:
        log.warning("TLS certificate verification is off (insecure): the archive is not verified")
    return await run_download(settings, selection, reporter or NullReporter())


def download(
    *inputs: str | Path,
    out: str | Path,
    query: SeriesQuery | None = None,
    config: str | Path | None = None,
    shard: str | Shard | None = None,
    **options: Any,
) -> RunResult:
    """Download the series of ``inputs`` (manifest paths) or ``query`` into ``out``; blocking.

    ``options`` are the settings of ``bulkdl download`` by name (``concurrency=8``,
    ``layout="nbia-classic"``, ``api_url=...``, ``accept_incomplete=True`` ...). ``shard``
    (``"K/N"``, ``"slurm"`` or a :class:`~bulkdl.shard.Shard`) downloads one shard's series,
    as ``--shard`` does. Returns the run's result; raises InputError, AbortError or AuthError
    for problems that stop the run.
    """

    async def main() -> RunResult:
        return await adownload(*inputs, out=out, query=query, config=config, shard=shard, **options)

    return anyio.run(main)
