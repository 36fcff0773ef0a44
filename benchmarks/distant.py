"""A distant server: each connection capped (4 MB/s) and every answer delayed (300 ms).

Throughput against bulkdl's ``--concurrency``, and each tool at its default settings, on the same
data. The ideal for N connections is N x the per-connection cap (the link itself, loopback, is
not the limit); throughput is ZIP bytes moved per second of the whole command, start-up and
metadata calls included.

With as many series as connections, every series starts and ends together and the fixed costs
(start-up, the delayed metadata call, the last series' tail) are a third of a run of a few
seconds. So the ">= 90 % of the ideal" target is measured on a sustained download instead:
``steady_series`` series of ``steady_images`` images (several series per connection), at
bulkdl's defaults. The other tools are compared on the small dataset, as they would take many
minutes on the large one.
"""

from __future__ import annotations

from pathlib import Path

from harness import Context, bulkdl_download, emptied, median, repeat
from report import Section, Target

CAP = 4e6
DELAY = 0.3
DEFAULT_TCIA_UTILS_WORKERS = 10
DEFAULT_NBIATOOLKIT_PARALLEL = 1


def run(
    ctx: Context,
    series: int = 16,
    images: int = 60,
    steady_series: int = 48,
    steady_images: int = 120,
) -> Section:
    """The distant-server scenario."""
    runs = min(ctx.runs, 2)
    section = Section(
        "2. A distant server",
        f"{series} series x {images} CT images 512x512; `serve-fake --bandwidth 4MB "
        f"--first-byte-delay 0.3` (per connection); median of {runs} run(s).",
    )
    spec = ["--patients", str(series), "--series", "1", "--images", str(images)]
    variants = ["getImage?IncludeMD5=Yes&", "getImage?NewFileNames=Yes&"]
    if ctx.others_python:
        variants.append("getImageWithMD5Hash?")
    network = ["--bandwidth", str(int(CAP)), "--first-byte-delay", str(DELAY)]
    rates: dict[str, float] = {}
    with ctx.server(*spec, variants=variants, network=network) as (server, manifest, _):
        out = ctx.work / "out"

        def measure(name: str, command: list[str], variant: str, ideal_conns: int) -> None:
            walls = [r.wall for r in repeat(runs, emptied(out), lambda: command, cwd=ctx.work)]
            rate = ctx.zip_bytes[variant] / median(walls)
            ideal = min(ideal_conns, series) * CAP
            rates[name] = rate
            section.rows.append(
                {
                    "contender": name,
                    "wall s": round(median(walls), 2),
                    "MB/s": round(rate / 1e6, 2),
                    "ideal MB/s": round(ideal / 1e6, 1),
                    "of ideal": f"{rate / ideal:.0%}",
                }
            )
            ctx.echo(section.rows[-1])

        for conc in (2, 4, 8, 16):
            measure(
                f"bulkdl --concurrency {conc}",
                bulkdl_download(manifest, out, server.v4_url, "--concurrency", str(conc)),
                "getImage?IncludeMD5=Yes&",
                conc,
            )
        from bulkdl.config import DEFAULT_CONCURRENCY

        measure(
            "bulkdl (defaults)",
            bulkdl_download(manifest, out, server.v4_url),
            "getImage?IncludeMD5=Yes&",
            DEFAULT_CONCURRENCY,
        )
        if ctx.others_python:
            contenders = Path(__file__).resolve().parent / "contenders"
            measure(
                "tcia_utils (defaults: max_workers=10)",
                [
                    ctx.others_python,
                    str(contenders / "tcia_utils_run.py"),
                    server.v4_url,
                    str(manifest),
                    str(out),
                ],
                "getImage?NewFileNames=Yes&",
                DEFAULT_TCIA_UTILS_WORKERS,
            )
            measure(
                "nbiatoolkit (defaults: nParallel=1)",
                [
                    ctx.others_python,
                    str(contenders / "nbiatoolkit_run.py"),
                    server.services_url,
                    str(manifest),
                    str(out),
                ],
                "getImageWithMD5Hash?",
                DEFAULT_NBIATOOLKIT_PARALLEL,
            )
    steady = ["--patients", str(steady_series), "--series", "1", "--images", str(steady_images)]
    with ctx.server(*steady, network=network) as (server, manifest, _):
        out = ctx.work / "out"
        measure(
            f"bulkdl (defaults), sustained: {steady_series} x {steady_images} images",
            bulkdl_download(manifest, out, server.v4_url),
            "getImage?IncludeMD5=Yes&",
            DEFAULT_CONCURRENCY,
        )
    sustained = rates[f"bulkdl (defaults), sustained: {steady_series} x {steady_images} images"]
    ideal = min(DEFAULT_CONCURRENCY, steady_series) * CAP
    section.targets.append(
        Target(
            "bulkdl at defaults >= 90 % of the ideal, sustained",
            sustained >= 0.9 * ideal,
            f"{sustained / 1e6:.1f} of {ideal / 1e6:.1f} MB/s: {sustained / ideal:.0%}",
        )
    )
    ours = rates["bulkdl (defaults)"]
    for name, factor in (
        ("tcia_utils (defaults: max_workers=10)", 1.5),
        ("nbiatoolkit (defaults: nParallel=1)", 5.0),
    ):
        if name in rates:
            ratio = ours / rates[name]
            section.targets.append(
                Target(
                    f"bulkdl >= {factor}x {name.split(' ')[0]}", ratio >= factor, f"{ratio:.2f}x"
                )
            )
    return section
