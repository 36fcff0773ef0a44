"""NLST scale: a 200,000-series manifest against a metadata-only server.

Time and peak RSS to resolve and plan (``--dry-run``), and of a re-run when every series is
already done. The done state is made directly through the ledger (one small file per series in
its folder, the folder's mtime recorded as a placement records it) since the metadata-only
server has no images to send, and the sidecars are written from it as the run that placed the
series would have ended; the re-run is a plain ``bulkdl download``.

Run alone at several sizes: ``python benchmarks/nlst_scale.py --series 20000,200000``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from harness import ROOT, Context, Measure, bulkdl_download, compile_bulkdl, measure
from report import Section, Target

PLAN_LIMIT_S, RERUN_LIMIT_S, RSS_LIMIT_MB = 30.0, 20.0, 500.0


def _mark_all_done(out: Path, v4_url: str, uids: list[str]) -> float:
    """Resolve every series through bulkdl's client and record it done with one file each."""
    import anyio

    from bulkdl.ledger import Ledger
    from bulkdl.merged import write_sidecars
    from bulkdl.records import PlacedFile
    from bulkdl.sources.nbia_client import open_client

    async def resolve() -> list:  # type: ignore[type-arg]
        async with open_client(v4_url) as client:
            found, _ = await client.series_metadata(uids)
            return found

    started = time.monotonic()
    found = anyio.run(resolve)
    (out / ".bulkdl").mkdir(parents=True, exist_ok=True)
    folders = []
    with Ledger.open(out) as ledger:
        ledger.upsert_resolved(found)
        for series in found:
            folder = f"{series.PatientID}/{series.SeriesInstanceUID}"
            rel = f"{folder}/1.dcm"
            path = out / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"x")
            folders.append((folder, os.stat(path.parent).st_mtime_ns))
            placed = [PlacedFile(rel, series.SeriesInstanceUID + ".1", 1, "0" * 32, "0" * 64)]
            ledger.begin_placing(series.SeriesInstanceUID, placed)
            ledger.finish_placing(
                series.SeriesInstanceUID,
                images=series.ImageCount or 0,
                bytes_=series.FileSize or 0,
                incomplete=False,
                sop_class_uid=None,
            )
        # The re-run checks each folder's mtime against these, as after real placements.
        ledger.record_folders(folders)
        write_sidecars(out, ledger)
    return time.monotonic() - started


def _row(step: str, m: Measure) -> dict[str, object]:
    return {
        "step": step,
        "wall s": round(m.wall, 1),
        "CPU s": round(m.cpu, 1),
        "peak RSS MB": round(m.rss_mb),
        "exit": m.code,
    }


def run(ctx: Context, patients: int = 20000, series_per_patient: int = 10) -> Section:
    """The NLST-scale scenario."""
    total = patients * series_per_patient
    section = Section(
        "5. NLST scale",
        f"A {total:,}-series manifest; `serve-fake --metadata-only`; one run each. A fetch in the "
        "re-run would fail (the server has no images), so its exit 0 says nothing was fetched.",
    )
    spec = ["--metadata-only", "--patients", str(patients), "--series", str(series_per_patient)]
    with ctx.server(*spec, variants=()) as (server, manifest, uids):
        out = ctx.work / "out"
        plan = measure(bulkdl_download(manifest, out, server.v4_url, "--dry-run"), cwd=ctx.work)
        section.rows.append(_row("resolve + plan (--dry-run)", plan))
        ctx.echo(section.rows[-1])
        setup = _mark_all_done(out, server.v4_url, uids)
        rerun = measure(bulkdl_download(manifest, out, server.v4_url), cwd=ctx.work)
        section.rows.append(_row("re-run, all done", rerun))
        ctx.echo(section.rows[-1])
        section.notes.append(f"(Making the done state took {setup:.0f} s, outside the figures.)")
    section.targets += [
        Target(f"plan <= {PLAN_LIMIT_S:.0f} s", plan.wall <= PLAN_LIMIT_S, f"{plan.wall:.1f} s"),
        Target(
            f"all-done re-run <= {RERUN_LIMIT_S:.0f} s",
            rerun.wall <= RERUN_LIMIT_S and rerun.code == 0,
            f"{rerun.wall:.1f} s, exit {rerun.code}",
        ),
        Target(
            f"peak RSS <= {RSS_LIMIT_MB:.0f} MB",
            max(plan.rss_mb, rerun.rss_mb) <= RSS_LIMIT_MB,
            f"{max(plan.rss_mb, rerun.rss_mb):.0f} MB",
        ),
    ]
    return section


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--series", default="200000", help="comma-separated totals")
    parser.add_argument("--cache", type=Path, default=ROOT / ".cache" / "bench-archives")
    args = parser.parse_args()
    compile_bulkdl()
    for total in (int(n) for n in args.series.split(",")):
        work = Path(tempfile.mkdtemp(prefix="bulkdl-nlst-"))
        try:
            print(run(Context(work, args.cache, 1, None), patients=total // 10).markdown())
        finally:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
