"""``bulkdl demo``: the whole pipeline against bulkdl's own NBIA-compatible server, no network.

Builds (or reuses from the cache) a small synthetic CT archive of real 512x512 DICOM files,
serves it on 127.0.0.1 the way NBIA does, queries it into a ``.tcia`` manifest, and downloads
that manifest through the real pipeline into ``OUT/tree``: streamed, verified, organized, with
the usual progress display and summary. Running it again shows a resume (nothing to fetch).
Network I/O on loopback; writes only inside ``OUT`` and the archive cache.
"""

from __future__ import annotations

import sys
from pathlib import Path

import anyio

from bulkdl.api import run_download
from bulkdl.config import load_settings
from bulkdl.manifest import read_manifest, write_tcia
from bulkdl.pipeline import RunResult, Selection
from bulkdl.progress import make_reporter, summary_text
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


async def _demo(out: Path, cache: Path) -> RunResult:
    archive = await anyio.to_thread.run_sync(FakeArchive.build, DEMO_SPEC, cache)
    async with FakeNbiaServer(archive) as server:
        print(f"NBIA-compatible server at {server.v4_url}", flush=True)
        async with open_client(server.v4_url) as client:
            series = await client.series(SeriesQuery(collection=DEMO_COLLECTION))
        manifest = out / "demo.tcia"
        await anyio.Path(manifest).write_text(write_tcia(s.SeriesInstanceUID for s in series))
        uids = await anyio.to_thread.run_sync(read_manifest, str(manifest))
        print(f"manifest {manifest}: {len(uids)} series of collection {DEMO_COLLECTION}")
        settings = load_settings(
            flags={"out": out / "tree", "api_url": server.v4_url}, config_file=None, env={}
        )
        with make_reporter(json=False, progress=True, stream=sys.stdout, err=sys.stderr) as rep:
            return await run_download(settings, Selection(uids=tuple(uids)), rep)


def run_demo(out: Path) -> int:
    """Run the demo, writing into ``out``; returns the download's exit status."""
    cache = default_cache_dir()
    print(f"building the demo archive (cached in {cache}) ...", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    result = anyio.run(_demo, out, cache)
    print(summary_text(result.finished, failures_file=str(result.out / "failures.csv")))
    files = sum(1 for _ in result.out.rglob("*.dcm"))
    print(f"tree: {result.out} ({files} DICOM files; metadata.csv beside them)")
    print(f"run it again to see a resume, or: bulkdl status {result.out}")
    return result.exit_code
