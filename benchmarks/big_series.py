"""Memory with big series: one series of 4,000 CT images (about 2 GB), and many at once.

bulkdl spools each series to disk and unpacks it in chunks, so its peak RSS should not grow with
the series; tcia_utils holds each whole ZIP in memory. Also bulkdl at ``--concurrency 16``.
"""

from __future__ import annotations

from pathlib import Path

from harness import Context, bulkdl_download, emptied, repeat
from report import Section, Target

RSS_LIMIT_MB = 200


def run(ctx: Context, images: int = 4000) -> Section:
    """The big-series scenario."""
    section = Section(
        "3. Big series: peak memory",
        f"One series of {images} CT images 512x512 (~{images * 0.526 / 1000:.1f} GB of DICOM), "
        "then 16 series x 100 images at --concurrency 16; one run each (peak RSS is stable).",
    )
    peaks: dict[str, float] = {}

    def measure(name: str, command: list[str], out: Path) -> None:
        result = repeat(1, emptied(out), lambda: command, cwd=ctx.work)[0]
        peaks[name] = result.rss_mb
        section.rows.append(
            {
                "contender": name,
                "wall s": round(result.wall, 1),
                "peak RSS MB": round(result.rss_mb, 1),
                "exit": result.code,
            }
        )
        ctx.echo(section.rows[-1])

    spec = ["--patients", "1", "--series", "1", "--images", str(images), "--seed", "4000"]
    variants = ["getImage?IncludeMD5=Yes&", "getImage?NewFileNames=Yes&"]
    out = ctx.work / "out"
    with ctx.server(*spec, variants=variants) as (server, manifest, _):
        measure("bulkdl, one big series", bulkdl_download(manifest, out, server.v4_url), out)
        if ctx.others_python:
            script = Path(__file__).resolve().parent / "contenders" / "tcia_utils_run.py"
            measure(
                "tcia_utils, one big series",
                [ctx.others_python, str(script), server.v4_url, str(manifest), str(out)],
                out,
            )
    spec16 = ["--patients", "16", "--series", "1", "--images", "100", "--seed", "16"]
    with ctx.server(*spec16) as (server, manifest, _):
        measure(
            "bulkdl, 16 series at --concurrency 16",
            bulkdl_download(manifest, out, server.v4_url, "--concurrency", "16"),
            out,
        )
    worst = max(v for k, v in peaks.items() if k.startswith("bulkdl"))
    section.targets.append(
        Target(
            f"bulkdl peak RSS <= {RSS_LIMIT_MB} MB whatever the series size, concurrency 16",
            worst <= RSS_LIMIT_MB,
            f"worst {worst:.0f} MB",
        )
    )
    return section
