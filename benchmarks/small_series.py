"""Many small series: 2,000 series of 1-2 small images; series per second.

This measures bulkdl's per-series overhead (batched metadata, keep-alive, staging, ledger
transactions) against the C floor doing only transfer and unzip.
"""

from __future__ import annotations

from harness import Context, bulkdl_download, dir_bytes, emptied, median, repeat
from loopback import curl_unzip
from report import Section


def run(ctx: Context, series: int = 2000) -> Section:
    """The many-small-series scenario."""
    section = Section(
        "4. Many small series",
        f"{series} series of 1-2 CT images 128x128; median of {ctx.runs} runs.",
    )
    spec = ["--patients", str(series), "--series", "1", "--images", "1,2", "--matrix", "128"]
    variants = ["getImage?", "getImage?IncludeMD5=Yes&"]
    with ctx.server(*spec, variants=variants) as (server, manifest, uids):
        out = ctx.work / "out"
        for name, command in (
            ("curl+unzip (8 parallel)", curl_unzip(server.v4_url, uids, out, 8)),
            ("bulkdl (defaults)", bulkdl_download(manifest, out, server.v4_url)),
        ):
            runs = repeat(ctx.runs, emptied(out), lambda c=command: c, cwd=ctx.work)
            wall = median([r.wall for r in runs])
            section.rows.append(
                {
                    "contender": name,
                    "wall s": round(wall, 2),
                    "series/s": round(series / wall, 1),
                    "CPU s": round(median([r.cpu for r in runs]), 2),
                    "files": sum(1 for _ in out.rglob("*.dcm")),
                    "MB": round(dir_bytes(out) / 1e6, 1),
                }
            )
            ctx.echo(section.rows[-1])
    return section
