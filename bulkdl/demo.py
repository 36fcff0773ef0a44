"""``bulkdl demo``: bulkdl end to end against its own NBIA-compatible server, with no network.

Builds (or reuses from the cache) a small synthetic CT archive, serves it on 127.0.0.1, asks it
what it holds through the real client, writes a ``.tcia`` manifest of every series into the output
folder and reads it back, then prints what it found. Does network I/O on loopback and writes only
inside the output folder (and the archive cache).
"""

from __future__ import annotations

import sys
from pathlib import Path

import anyio

from bulkdl.errors import ExitCode
from bulkdl.manifest import read_manifest, write_tcia
from bulkdl.output import OutputFormat, write_records
from bulkdl.records import Series
from bulkdl.sources.nbia import SeriesQuery
from bulkdl.sources.nbia_client import open_client
from bulkdl.testing import ArchiveSpec, FakeArchive, FakeNbiaServer, default_cache_dir

DEMO_COLLECTION = "DEMO-CT"
DEMO_SPEC = ArchiveSpec(
    collections=(DEMO_COLLECTION,),
    patients_per_collection=3,
    studies_per_patient=1,
    series_per_study=2,
    images_per_series=(12, 20, 16),
)


async def _discover(cache: Path) -> tuple[list[str], list[Series]]:
    archive = await anyio.to_thread.run_sync(FakeArchive.build, DEMO_SPEC, cache)
    async with FakeNbiaServer(archive) as server:
        print(f"NBIA-compatible server at {server.v4_url}\n", flush=True)
        async with open_client(server.v4_url) as client:
            collections = await client.collections()
            series = await client.series(SeriesQuery(collection=DEMO_COLLECTION))
    return collections, series


def run_demo(out: Path) -> int:
    """Run the demo, writing into ``out``; returns the exit status."""
    cache = default_cache_dir()
    print(f"building the demo archive (cached in {cache}) ...", flush=True)
    collections, series = anyio.run(_discover, cache)
    print(f"collections: {', '.join(collections)}")
    write_records(series, OutputFormat.TABLE, sys.stdout)
    out.mkdir(parents=True, exist_ok=True)
    manifest = out / "demo.tcia"
    uids = [s.SeriesInstanceUID for s in series]
    manifest.write_text(write_tcia(uids))
    back = read_manifest(str(manifest))
    verdict = "identically" if back == uids else "DIFFERENTLY"
    print(f"\nwrote {manifest} ({len(back)} series; reads back {verdict})")
    return ExitCode.OK if back == uids else ExitCode.SOME_FAILED
