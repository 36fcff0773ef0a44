"""Loopback throughput: bulkdl against the C floor (curl + unzip), tcia_utils and nbiatoolkit.

Same data for every contender, in one run, from one ``bulkdl serve-fake`` on 127.0.0.1: 12 series
of 100 CT images, 512x512 (about 630 MB of DICOM). The median of ``runs`` runs of each: wall time,
client CPU seconds, peak RSS and MB/s of DICOM written, and the ratios the targets are stated in.
In the same rounds, bulkdl's own compute floor (:mod:`cpu_budget`): the CPU of the inflating,
hashing and writing any verified download of these ZIPs must do, and the start-up of a dry run.
"""

from __future__ import annotations

import os
from pathlib import Path

from cpu_budget import STEPS, floor, measure_budget
from harness import Context, Measure, bulkdl_download, emptied, interleaved, measure, median
from report import Section, Target


def curl_unzip(v4_url: str, uids: list[str], out: Path, parallel: int) -> list[str]:
    """The C floor: curl N in parallel, then unzip every ZIP (as many at once as cores)."""
    listing = out.parent / "uids.txt"
    listing.write_text("\n".join(uids) + "\n")
    script = (
        f"cd {out} && xargs -P {parallel} -I{{}} curl -sf -o {{}}.zip "
        f"'{v4_url}getImage?SeriesInstanceUID={{}}' < {listing} && "
        f"ls *.zip | xargs -P {os.cpu_count() or 2} -I{{}} sh -c "
        '\'unzip -q -o "$1" -d "${1%.zip}" && rm "$1"\' _ {}'
    )
    return ["bash", "-c", script]


def row(name: str, runs: list[Measure], written: int) -> dict[str, object]:
    """Medians of one contender's runs as a table row."""
    wall = median([r.wall for r in runs])
    return {
        "contender": name,
        "wall s": round(wall, 2),
        "CPU s": round(median([r.cpu for r in runs]), 2),
        "peak RSS MB": round(max(r.rss_mb for r in runs), 1),
        "MB/s written": round(written / 1e6 / wall, 1),
        "failed runs": sum(1 for r in runs if r.code != 0),
    }


def run(ctx: Context, series: int = 12, images: int = 100) -> Section:
    """The loopback scenario."""
    section = Section(
        "1. Throughput on loopback",
        f"{series} series x {images} CT images 512x512 from `bulkdl serve-fake` on 127.0.0.1, "
        f"median of {ctx.runs} rounds in which the contenders take turns; bulkdl verifies and "
        "organizes, the others do not.",
    )
    spec = ["--patients", str(series), "--series", "1", "--images", str(images)]
    variants = ["getImage?", "getImage?IncludeMD5=Yes&", "getImage?NewFileNames=Yes&"]
    if ctx.others_python:
        variants.append("getImageWithMD5Hash?")
    with ctx.server(*spec, variants=variants) as (server, manifest, uids):
        out = ctx.work / "out"
        commands = {
            "curl+unzip (8 parallel)": curl_unzip(server.v4_url, uids, out, 8),
            "bulkdl (defaults)": bulkdl_download(manifest, out, server.v4_url),
        }
        if ctx.others_python:
            contenders = Path(__file__).resolve().parent / "contenders"
            commands["tcia_utils (max_workers=8)"] = [
                ctx.others_python,
                str(contenders / "tcia_utils_run.py"),
                server.v4_url,
                str(manifest),
                str(out),
                "8",
            ]
            commands["nbiatoolkit (nParallel=2)"] = [
                ctx.others_python,
                str(contenders / "nbiatoolkit_run.py"),
                server.services_url,
                str(manifest),
                str(out),
                "2",
            ]
        urls = [f"{server.v4_url}getImage?SeriesInstanceUID={uid}&IncludeMD5=Yes" for uid in uids]
        dry = bulkdl_download(manifest, out, server.v4_url, "--dry-run")
        measured: dict[str, list[Measure]] = {name: [] for name in commands}
        startup: list[float] = []
        budgets: list[dict[str, float]] = []
        for _ in range(ctx.runs):  # the floor is measured in the same rounds, under the same load
            for name, runs in interleaved(1, out, commands, cwd=ctx.work).items():
                measured[name].extend(runs)
            emptied(out)()
            startup.append(measure(dry, cwd=ctx.work).wall)
            budgets.append(measure_budget(urls, ctx.work / "budget"))
        budget = {step: median([b[step] for b in budgets]) for step in STEPS}
    walls: dict[str, float] = {}
    cpus: dict[str, float] = {}
    for name, runs in measured.items():
        written = min(r.written or 0 for r in runs)
        section.rows.append(row(name, runs, written))
        walls[name] = median([r.wall for r in runs])
        cpus[name] = median([r.cpu for r in runs]) / max(written / 1e9, 1e-9)
        ctx.echo(section.rows[-1])
    floor = walls["curl+unzip (8 parallel)"]
    ours = walls["bulkdl (defaults)"]
    section.targets.append(
        Target(
            "bulkdl wall time <= 0.8 x curl+unzip",
            ours <= 0.8 * floor,
            f"{ours:.2f} s vs {floor:.2f} s: {ours / floor:.2f}x",
        )
    )
    if "tcia_utils (max_workers=8)" in walls:
        theirs = walls["tcia_utils (max_workers=8)"]
        section.targets.append(
            Target(
                "bulkdl wall time <= 0.6 x tcia_utils",
                ours <= 0.6 * theirs,
                f"{ours:.2f} s vs {theirs:.2f} s: {ours / theirs:.2f}x",
            )
        )
    section.notes.append(budget_note(budget, median(startup), walls))
    floor_cpu, our_cpu = cpus["curl+unzip (8 parallel)"], cpus["bulkdl (defaults)"]
    section.targets.append(
        Target(
            "bulkdl client CPU per GB <= the floor's",
            our_cpu <= floor_cpu,
            f"{our_cpu:.2f} vs {floor_cpu:.2f} CPU s/GB",
        )
    )
    return section


def budget_note(budget: dict[str, float], startup: float, walls: dict[str, float]) -> str:
    """The compute floor as markdown: each necessary step's CPU, and the wall time they allow."""
    cores = os.cpu_count() or 1
    steps = ", ".join(f"{step} {budget[step]:.2f}" for step in STEPS)
    note = (
        f"Compute floor of bulkdl here (the same ZIPs, one thread, CPU s): {steps}; "
        f"{sum(budget.values()):.2f} CPU s over {cores} cores plus a {startup:.2f} s start-up "
        f"(`--dry-run`): no run that verifies and records these hashes can end before "
        f"{floor(budget, startup, cores):.2f} s (bulkdl took {walls['bulkdl (defaults)']:.2f} s)."
    )
    theirs = walls.get("tcia_utils (max_workers=8)")
    return note if theirs is None else f"{note} 0.6 x tcia_utils is {0.6 * theirs:.2f} s."
