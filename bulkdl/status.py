"""``bulkdl status DIR``: what the ledger(s) of an output folder say, for people or scripts.

Reads every ledger under ``DIR/.bulkdl/`` (one per shard when a job array wrote the tree) without
changing them, merges them (a series placed by any shard is placed) and reports the count per
state, each failed series with its reason, and what is still pending. Exit 0 when nothing is
failed or pending, 1 otherwise. Reads files only.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TextIO

from bulkdl.errors import ExitCode
from bulkdl.ledger import SeriesState
from bulkdl.merged import MergedLedgers

STATES = ("done", "incomplete", "failed", "pending", "placing")


def collect(out: Path) -> dict[str, SeriesState]:
    """The merged series states of ``out``. Raises InputError when it holds no ledger."""
    with MergedLedgers.open(out) as merged:
        return merged.states()


def report(states: dict[str, SeriesState]) -> dict[str, object]:
    """Counts per state and the failed, incomplete and pending series, as plain data."""
    counts = dict.fromkeys(STATES, 0)
    for st in states.values():
        counts[st.state] = counts.get(st.state, 0) + 1

    def listed(state: str) -> list[dict[str, object]]:
        return [
            {"uid": st.uid, "reason": st.last_error, "attempts": st.attempts}
            for st in states.values()
            if st.state == state
        ]

    return {
        "total": len(states),
        "counts": counts,
        "failed": listed("failed"),
        "incomplete": listed("incomplete"),
        "pending": [st.uid for st in states.values() if st.state in ("pending", "placing")],
    }


def print_status(out: Path, *, as_json: bool = False, stream: TextIO | None = None) -> int:
    """Print ``out``'s status (to stdout by default); returns 0 when all is placed, else 1."""
    stream = stream or sys.stdout
    data = report(collect(out))
    counts = data["counts"]
    assert isinstance(counts, dict)
    if as_json:
        stream.write(json.dumps(data) + "\n")
    else:
        parts = ", ".join(f"{counts[s]} {s}" for s in STATES if counts[s] or s in ("done",))
        stream.write(f"{out}: {data['total']} series: {parts}\n")
        for title in ("failed", "incomplete"):
            rows = data[title]
            assert isinstance(rows, list)
            if rows:
                stream.write(f"{title}:\n")
                for row in rows:
                    stream.write(f"  {row['uid']}: {row['reason']} ({row['attempts']} attempts)\n")
        pending = data["pending"]
        assert isinstance(pending, list)
        if pending:
            stream.write(f"pending: {len(pending)} series (run the download again)\n")
    failed_or_pending = counts["failed"] + counts["pending"] + counts["placing"]
    return ExitCode.SOME_FAILED if failed_or_pending else ExitCode.OK
