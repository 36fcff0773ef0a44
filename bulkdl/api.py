"""The Python API for notebooks and scripts: ``bulkdl.download(...)`` and its async twin.

Both take the same inputs as ``bulkdl download`` (manifest paths, or query filters) and the same
settings as keyword arguments, build the NBIA source, run the pipeline and return a
:class:`~bulkdl.pipeline.RunResult` with every series' outcome. No progress display unless a
reporter is given; errors are bulkdl's own exceptions. ``insecure=True`` (or ``insecure = true``
in the config, or ``BULKDL_INSECURE``) turns TLS certificate checks off and logs a warning on
every call; ``ca_bundle=`` trusts a private CA instead. Network and disk I/O.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio

from bulkdl.config import Settings, load_settings
from bulkdl.errors import InputError
from bulkdl.manifest import read_manifests
from bulkdl.pipeline import RunResult, Selection
from bulkdl.pipeline import download as run_pipeline
from bulkdl.progress import NullReporter, Reporter
from bulkdl.sources.auth import load_credentials
from bulkdl.sources.http import HttpSettings
from bulkdl.sources.nbia import SeriesQuery, api_version, resolve_base_url
from bulkdl.sources.nbia_client import open_client
from bulkdl.sources.nbia_source import NbiaSource

log = logging.getLogger(__name__)


def selection_of(inputs: Sequence[str], query: SeriesQuery | None) -> Selection:
    """Manifests or a query, not both, not neither. Raises InputError (or ManifestError)."""
    has_query = query is not None and any(vars_of(query).values())
    if inputs and has_query:
        raise InputError("give manifests or query filters, not both")
    if inputs:
        return Selection(uids=tuple(read_manifests(inputs)))
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
) -> RunResult:
    """Download ``selection`` from the NBIA API named by ``settings`` into ``settings.out``.

    TLS follows ``settings.insecure`` and ``settings.ca_bundle``; warning about ``insecure`` is
    the caller's job (the CLI prints it, :func:`adownload` logs it). Raises InputError,
    AbortError, AuthError, SourceError (e.g. a certificate that does not verify); per-series
    failures are in the result.
    """
    if settings.out is None:
        raise InputError("no output folder: give --out DIR")
    base_url = resolve_base_url(settings.api_url)
    needs_token = api_version(base_url) in {"v2", "unversioned"}
    credentials = load_credentials(interactive=interactive) if needs_token else None
    http = HttpSettings(
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.read_timeout,
        limit_per_host=settings.limit_per_host,
        verify=not settings.insecure,
        ca_bundle=settings.ca_bundle,
    )
    cpu = anyio.CapacityLimiter(max(2, os.cpu_count() or 2))
    async with open_client(base_url, settings=http, credentials=credentials) as client:
        client.metadata_batch = settings.metadata_batch
        source = NbiaSource(client, new_file_names=settings.new_file_names, cpu=cpu)
        return await run_pipeline(
            settings, selection, source, reporter, handle_signals=handle_signals
        )


async def adownload(
    *inputs: str | Path,
    out: str | Path,
    query: SeriesQuery | None = None,
    config: str | Path | None = None,
    reporter: Reporter | None = None,
    **options: Any,
) -> RunResult:
    """Async twin of :func:`download`."""
    flags: dict[str, object | None] = {**options, "out": Path(out)}
    settings = load_settings(
        flags=flags, config_file=Path(config) if config else None, env=os.environ
    )
    selection = selection_of([str(i) for i in inputs], query)
    if settings.insecure:
        log.warning("TLS certificate verification is off (insecure): the archive is not verified")
    return await run_download(settings, selection, reporter or NullReporter())


def download(
    *inputs: str | Path,
    out: str | Path,
    query: SeriesQuery | None = None,
    config: str | Path | None = None,
    **options: Any,
) -> RunResult:
    """Download the series of ``inputs`` (manifest paths) or ``query`` into ``out``; blocking.

    ``options`` are the settings of ``bulkdl download`` by name (``concurrency=8``,
    ``layout="nbia-classic"``, ``api_url=...``, ``accept_incomplete=True`` ...). Returns the
    run's result; raises InputError, AbortError or AuthError for problems that stop the run.
    """

    async def main() -> RunResult:
        return await adownload(*inputs, out=out, query=query, config=config, **options)

    return anyio.run(main)
