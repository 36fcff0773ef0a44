"""The ledgers of one output folder read as one, and the sidecar files written from them.

A tree written by a job array has one ledger per shard (``ledger-<K>of<N>.sqlite``), beside the
``ledger.sqlite`` of any plain run into it. :class:`MergedLedgers` opens every one read-only and
answers as a single ledger would: a series' state is the furthest any ledger reached (done in one
shard is done; attempts add up), its files and folder come from that ledger, licences are
pooled, runs are listed in time order. ``bulkdl status``, ``bulkdl verify`` and ``lock --from``
read trees through it, and so does :func:`write_sidecars`, which ``bulkdl finalize DIR`` runs
once the shards are done: sharded runs write no ``metadata.csv``, ``failures.csv`` or
``LICENSES/`` themselves, since the other shards write the same tree at the same time and their
ledgers (SQLite in WAL mode) cannot be read safely from another node while they write. Merged
rows are in tree order (PatientID, StudyInstanceUID, SeriesInstanceUID): no shard knows the
order of the whole input. Reads files; :func:`write_sidecars` writes the sidecars.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from functools import cached_property
from pathlib import Path
from types import TracebackType
from typing import Any

from bulkdl import sidecar
from bulkdl.errors import InputError
from bulkdl.ledger import (
    LEDGER_NAME,
    Ledger,
    RunRecord,
    SeriesState,
    State,
    merged_states,
    open_all,
)
from bulkdl.outdir import STATE_DIR
from bulkdl.records import PlacedFile

log = logging.getLogger(__name__)

#: The file names of a tree's ledgers (:func:`~bulkdl.ledger.open_all` reads the same).
LEDGER_GLOB = "ledger*.sqlite"


def ledger_names(out: Path) -> list[str]:
    """The names of the ledger files under ``out/.bulkdl/``, sorted."""
    return sorted(path.name for path in (out / STATE_DIR).glob(LEDGER_GLOB))


class MergedLedgers:
    """Every ledger of one tree, read-only, answering as one (see the module docstring)."""

    def __init__(self, ledgers: Sequence[Ledger]) -> None:
        self.ledgers = list(ledgers)

    @classmethod
    def open(cls, out: Path) -> MergedLedgers:
        """Open every ledger of ``out``. Raises InputError when it holds none, AbortError for a
        ledger that is not one (as :func:`~bulkdl.ledger.open_all` does)."""
        ledgers = open_all(out)
        if not ledgers:
            raise InputError(f"{out}: no bulkdl ledger here (is it a bulkdl output folder?)")
        return cls(ledgers)

    def close(self) -> None:
        """Close every ledger."""
        for ledger in self.ledgers:
            ledger.close()

    def __enter__(self) -> MergedLedgers:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    @cached_property
    def _merged(self) -> dict[str, SeriesState]:
        return merged_states(self.ledgers)

    @cached_property
    def _home(self) -> dict[str, Ledger]:
        """uid -> the ledger where the series got furthest (the last such, as a re-run's)."""
        home: dict[str, Ledger] = {}
        for ledger in self.ledgers:
            for uid, state in ledger.states(records=False).items():
                if uid not in home or state.state == self._merged[uid].state:
                    home[uid] = ledger
        return home

    def states(
        self, uids: Sequence[str] | None = None, *, records: bool = True
    ) -> dict[str, SeriesState]:
        """uid -> merged state, of ``uids`` (those any ledger knows) or of every series."""
        if uids is None:
            return dict(self._merged)
        return {uid: self._merged[uid] for uid in dict.fromkeys(uids) if uid in self._merged}

    def states_in(
        self, *states: State, fields: Sequence[str] = ()
    ) -> Iterator[tuple[SeriesState, tuple[Any, ...]]]:
        """(merged state, the values of ``fields`` in its record) of every series in one of
        ``states``, in tree order; values as the record's JSON has them (None when absent)."""
        chosen = []
        for state in self._merged.values():
            if state.state in states:
                record: dict[str, Any] = json.loads(state.record_json or "{}")
                chosen.append((state, record))
        chosen.sort(key=lambda pair: _tree_order(pair[0].uid, pair[1]))
        for state, record in chosen:
            yield state, tuple(record.get(name) for name in fields)

    def files_by_series(self) -> dict[str, list[PlacedFile]]:
        """series UID -> its recorded files, from the ledger where the series got furthest
        (from the first ledger that records any, when that one records none)."""
        files: dict[str, list[PlacedFile]] = {}
        for ledger in self.ledgers:
            for uid, placed in ledger.files_by_series().items():
                if uid not in files or self._home.get(uid) is ledger:
                    files[uid] = placed
        return files

    def series_folders(self) -> dict[str, str]:
        """series UID -> the folder of its files, chosen as :meth:`files_by_series` chooses."""
        folders: dict[str, str] = {}
        for ledger in self.ledgers:
            for uid, folder in ledger.series_folders().items():
                if uid not in folders or self._home.get(uid) is ledger:
                    folders[uid] = folder
        return folders

    def licenses(self) -> dict[str, str]:
        """collection -> licence text, from every ledger."""
        pooled: dict[str, str] = {}
        for ledger in self.ledgers:
            pooled.update(ledger.licenses())
        return dict(sorted(pooled.items()))

    def data_version(self) -> str | None:
        """Every ledger's :meth:`~bulkdl.ledger.Ledger.data_version` together (None when one
        keeps none)."""
        versions = [ledger.data_version() for ledger in self.ledgers]
        return None if None in versions else ";".join(map(str, versions))

    def runs(self) -> list[RunRecord]:
        """Every ledger's runs, oldest first."""
        runs = [run for ledger in self.ledgers for run in ledger.runs()]
        return sorted(runs, key=lambda r: (r.started_at, r.run_id))


def _tree_order(uid: str, record: dict[str, Any]) -> tuple[str, str, str]:
    return (str(record.get("PatientID") or ""), str(record.get("StudyInstanceUID") or ""), uid)


def foreign_ledgers(out: Path, own: str) -> str | None:
    """A warning when ``out`` holds ledgers a run keeping ledger ``own`` does not read, so it
    fetches again a series they placed: a plain run in a tree of shards, or shards of another
    count than an earlier array's (None when there is nothing to say)."""
    others = [name for name in ledger_names(out) if name != own and name != LEDGER_NAME]
    if own != LEDGER_NAME:  # a shard: its siblings are expected, another count is not
        count = own.rsplit("of", 1)[-1]
        others = [name for name in others if not name.endswith(f"of{count}")]
    if not others:
        return None
    listed = ", ".join(others[:4]) + (f" and {len(others) - 4} more" if len(others) > 4 else "")
    advice = (
        "give --shard with the count of the array that wrote them"
        if own == LEDGER_NAME
        else "re-run with the count of the array that wrote them"
    )
    return (
        f"{out} holds ledgers this run does not read ({listed}): a series they placed is "
        f"fetched again if this run's input has it; to resume that work, {advice}"
    )


def write_sidecars(out: Path, own: Ledger | None = None) -> None:
    """Rewrite ``out``'s metadata.csv, failures.csv and LICENSES/ (unless nothing they show
    changed since they were written: :func:`~bulkdl.sidecar.write_all`): from ``own`` when it is
    the tree's only ledger (a plain run, exactly as before shards existed), else from every ledger
    merged (``bulkdl finalize``, or a plain run into a tree that shards wrote).

    Raises OSError when the output folder refuses the writes, InputError when ``own`` is None
    and ``out`` holds no ledger.
    """
    if own is not None and ledger_names(out) in ([own.path.name], []):
        sidecar.write_all(own, out)
        return
    with MergedLedgers.open(out) as merged:
        sidecar.write_all(merged, out)
