"""Linear cost: doubling the series count, or the size of each series, doubles bulkdl's time.

Three datasets from one ``bulkdl serve-fake`` shape on 127.0.0.1: a base of ``series`` series of
``images`` CT images, the same with twice the series, and the same with twice the images per
series. Their three servers run side by side and bulkdl (defaults) downloads each in turn, for
``runs`` rounds: a shared machine's slow minute then falls on every dataset alike instead of
skewing one ratio (run one dataset after another and the base alone once came out 20 % slow).
The median wall and CPU time of each are compared with the base; the target is each ratio
within 15 % of 2. Start-up (imports, the metadata call, the ledger) is a fixed cost of about
0.3 s, so the base is sized to take several seconds: 32 series of 60 images (1 GB of DICOM),
twice the default ``--concurrency``, so the base already keeps every connection busy and "twice
the series" means twice the queue, not more parallelism.
"""

from __future__ import annotations

from contextlib import ExitStack

from harness import Context, bulkdl_download, interleaved, median
from report import Section, Target

TOLERANCE = 0.15


def run(ctx: Context, series: int = 32, images: int = 60) -> Section:
    """The scaling scenario."""
    section = Section(
        "6. Linear scaling",
        f"bulkdl (defaults) on loopback: {series} series x {images} CT images 512x512, then "
        f"twice the series, then twice the images per series; the three datasets take turns, "
        f"median of {ctx.runs} rounds.",
    )
    shapes = {
        "base": (series, images),
        "2x series": (2 * series, images),
        "2x images per series": (series, 2 * images),
    }
    out = ctx.work / "out"
    commands: dict[str, list[str]] = {}
    with ExitStack() as servers:
        for name, (count, per) in shapes.items():
            spec = ["--patients", str(count), "--series", "1", "--images", str(per)]
            server, manifest, _ = servers.enter_context(ctx.server(*spec))
            commands[name] = bulkdl_download(manifest, out, server.v4_url)
        runs = interleaved(ctx.runs, out, commands, cwd=ctx.work)
    walls = {name: median([r.wall for r in runs[name]]) for name in shapes}
    cpus = {name: median([r.cpu for r in runs[name]]) for name in shapes}
    for name, (count, per) in shapes.items():
        section.rows.append(
            {
                "dataset": f"{name} ({count} x {per})",
                "wall s": round(walls[name], 2),
                "CPU s": round(cpus[name], 2),
                "wall / base": round(walls[name] / walls["base"], 2),
                "CPU / base": round(cpus[name] / cpus["base"], 2),
                "failed runs": sum(1 for r in runs[name] if r.code != 0),
            }
        )
        ctx.echo(section.rows[-1])
    for name in ("2x series", "2x images per series"):
        ratio = walls[name] / walls["base"]
        section.targets.append(
            Target(
                f"{name}: wall time x2 within {TOLERANCE:.0%}",
                abs(ratio - 2) <= 2 * TOLERANCE,
                f"x{ratio:.2f}",
            )
        )
    return section
