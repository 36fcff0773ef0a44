"""The download pipeline: the one module that wires every stage together.

resolve (the source's metadata, batched) -> plan (:mod:`bulkdl.planning`: the ledger says what
is done; files deleted from the tree, revised series and crashed placements send a series back
to work) -> fetch (a
bounded pool of workers; each attempt in a fresh staging folder under ``DIR/.bulkdl/``) ->
verify -> place (``os.replace`` into the tree, the ledger told before and after) -> sidecars
(``metadata.csv``, ``failures.csv``, licences). ``--staging PATH`` moves the fetch, unpack and
verify steps to a private folder under PATH (:class:`~bulkdl.move.PrivateFolder`, removed at the
end of the run, whatever ends it), and placing copies across filesystems when it must
(:func:`~bulkdl.move.move_into`); ``--pack`` places each series as one archive
(:mod:`bulkdl.pack`). A series that fails is a value recorded in the
ledger, retried with backoff until its attempts run out; only run-fatal conditions (disk full,
unwritable output, a bad ledger, another run holding the folder) stop the run. SIGINT and SIGTERM
stop it cleanly: a placement in progress finishes, staging is cleared, nothing half-written is
left in the tree. A shard of a job array (``Selection.shard``) keeps its own ledger, lock and
staging folder and writes no sidecars (``bulkdl finalize`` does, from every shard's ledger).
Does network and disk I/O.
"""

from __future__ import annotations

import contextlib
import logging
import random
import shutil
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Literal, TypeVar

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream

from bulkdl import dicom
from bulkdl.config import Settings
from bulkdl.errors import (
    BulkdlError,
    ExitCode,
    PlacementConflict,
    SeriesError,
    SourceError,
    TransientError,
    VerificationError,
)
from bulkdl.layout import Layout, resolve_layout
from bulkdl.ledger import LEDGER_NAME, Ledger
from bulkdl.lockfile import Lock
from bulkdl.merged import foreign_ledgers, write_sidecars
from bulkdl.move import PrivateFolder, open_staging, refused_by
from bulkdl.outdir import STATE_DIR, disk_error, exclusive, prepare_output
from bulkdl.pack import Packer, check_layout
from bulkdl.place import Move, Placer
from bulkdl.planning import plan
from bulkdl.progress import (
    BytesReceived,
    Reporter,
    RunFinished,
    RunPlanned,
    SeriesFinished,
    SeriesRetrying,
    SeriesStarted,
)
from bulkdl.records import Series, StagedFile
from bulkdl.retry import RetryPolicy
from bulkdl.shard import Shard
from bulkdl.sources import Source
from bulkdl.sources.nbia import SeriesQuery
from bulkdl.verify import Verdict, verify_series

log = logging.getLogger(__name__)

Outcome = Literal["done", "incomplete", "failed", "skipped"]
T = TypeVar("T")
#: Plans of one series tried when other writers keep taking its paths, before the attempt fails.
_PLACING_TRIES = 3


@dataclass(frozen=True, slots=True)
class SeriesOutcome:
    """How one series ended in this run."""

    uid: str
    outcome: Outcome
    images: int = 0
    bytes: int = 0
    reason: str | None = None
    attempts: int = 0


@dataclass(frozen=True, slots=True)
class RunResult:
    """What a run did, series by series; ``exit_code`` is 0 when nothing failed, else 1."""

    outcomes: tuple[SeriesOutcome, ...]
    seconds: float
    out: Path
    planned: tuple[Series, ...] = ()
    interrupted: bool = False

    def count(self, outcome: Outcome) -> int:
        """How many series ended with ``outcome``."""
        return sum(1 for o in self.outcomes if o.outcome == outcome)

    @property
    def failures(self) -> tuple[SeriesOutcome, ...]:
        """The series that failed, with their reasons."""
        return tuple(o for o in self.outcomes if o.outcome == "failed")

    @property
    def finished(self) -> RunFinished:
        """The run's totals as the progress event that ends it."""
        return RunFinished(
            done=self.count("done"),
            incomplete=self.count("incomplete"),
            failed=self.count("failed"),
            skipped=self.count("skipped"),
            images=sum(o.images for o in self.outcomes),
            bytes=sum(o.bytes for o in self.outcomes),
            seconds=self.seconds,
            failures=tuple((o.uid, o.reason or "") for o in self.failures),
        )

    @property
    def exit_code(self) -> ExitCode:
        """0 all placed (or skipped as already done), 1 some failed, 130 interrupted."""
        if self.interrupted:
            return ExitCode.INTERRUPTED
        return ExitCode.SOME_FAILED if self.failures else ExitCode.OK


@dataclass(frozen=True, slots=True)
class Selection:
    """What to download: manifest UIDs (in order), or a query the source answers. ``pinned`` is
    the lock file the UIDs came from: the source then checks every series against it."""

    uids: tuple[str, ...] = ()
    query: SeriesQuery | None = None
    pinned: Lock | None = None
    #: One shard of a job array: its own ledger, lock and staging, and no sidecars (those are
    #: ``bulkdl finalize``'s, from every shard's ledger); the source sees only its series.
    shard: Shard | None = None


@dataclass(slots=True)
class _Run:
    """The mutable state of one run, shared by its workers."""

    settings: Settings
    out: Path
    source: Source
    ledger: Ledger
    layout: Layout
    placer: Placer
    reporter: Reporter
    staging: Path
    inspect: Callable[[Path], dict[str, str] | None]
    ledger_lock: anyio.CapacityLimiter = field(default_factory=lambda: anyio.CapacityLimiter(1))
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    outcomes: dict[str, SeriesOutcome] = field(default_factory=dict)
    licensed: set[str] = field(default_factory=set)
    packer: Packer | None = None  # --pack

    async def db(self, call: Callable[[], T]) -> T:
        """Run a ledger call in its worker thread (SQLite is not for the event loop)."""
        return await anyio.to_thread.run_sync(call, limiter=self.ledger_lock)


def _run_fatal(group: BaseExceptionGroup[BaseException], out: Path) -> BaseException:
    """The error that stopped the workers, out of anyio's exception group: bulkdl's own first,
    a disk error as AbortError, anything else (a bug, KeyboardInterrupt) as it was."""
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            leaves.append(exc)

    walk(group)
    for leaf in leaves:
        if isinstance(leaf, BulkdlError):
            return leaf
    for leaf in leaves:
        if isinstance(leaf, OSError):
            return disk_error(leaf, out)
    return leaves[0] if len(leaves) == 1 else group


async def _fetch_once(run: _Run, series: Series, attempt: int) -> SeriesOutcome:
    """One attempt: fetch into fresh staging, verify, place. Raises on a failed attempt."""
    uid = series.SeriesInstanceUID
    workdir = run.staging / f"{uid}.{attempt}"
    await anyio.to_thread.run_sync(_fresh_dir, workdir)
    try:
        fetched = await run.source.fetch(
            series,
            workdir,
            inspect=run.inspect,
            on_bytes=lambda n: run.reporter.emit(BytesReceived(uid, n)),
        )
        verdict = verify_series(series, fetched)
        last = attempt > run.settings.retries
        if not verdict.ok and not (verdict.shortfall and last and run.settings.accept_incomplete):
            raise _verification_failure(verdict, uid)
        if fetched.license_text and series.Collection and series.Collection not in run.licensed:
            run.licensed.add(series.Collection)
            await run.db(partial(run.ledger.set_license, series.Collection, fetched.license_text))
        # A placement, once begun, finishes: the ledger and the tree must agree.
        with anyio.CancelScope(shield=True):
            outcome = await _place(run, series, fetched.files, verdict)
        return outcome
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(partial(shutil.rmtree, workdir, ignore_errors=True))


def _verification_failure(verdict: Verdict, uid: str) -> VerificationError:
    return VerificationError("; ".join(verdict.problems), series_uid=uid)


async def _place(
    run: _Run, series: Series, files: Sequence[StagedFile], verdict: Verdict
) -> SeriesOutcome:
    uid = series.SeriesInstanceUID
    dicom_files = [f for f in files if f.header is not None]
    folders = await _move_in(run, series, dicom_files)
    sop_class = next((f.header.get("SOPClassUID") for f in dicom_files if f.header), None)
    incomplete = not verdict.ok
    await run.db(
        partial(
            run.ledger.finish_placing,
            uid,
            images=verdict.images,
            bytes_=verdict.bytes,
            incomplete=incomplete,
            sop_class_uid=sop_class,
        )
    )
    await run.db(partial(run.ledger.record_folders, folders))
    outcome: Outcome = "incomplete" if incomplete else "done"
    reason = "; ".join(verdict.problems) if incomplete else None
    return SeriesOutcome(uid, outcome, verdict.images, verdict.bytes, reason)


async def _move_in(run: _Run, series: Series, files: Sequence[StagedFile]) -> list[tuple[str, int]]:
    """Plan, record as placing, move in: the folders touched. Planned again when another
    writer (a shard placing into the same folders) took a planned path meanwhile, a few times
    before the attempt fails with the PlacementConflict."""
    uid = series.SeriesInstanceUID
    tries = 0
    while True:
        moves = await anyio.to_thread.run_sync(run.placer.plan, series, files)
        try:
            if run.packer is not None:
                return await _pack_in(run, run.packer, uid, moves)
            await run.db(partial(run.ledger.begin_placing, uid, [m.placed for m in moves]))
            return await anyio.to_thread.run_sync(run.placer.commit, moves)
        except PlacementConflict as exc:
            # Nothing of the series moved: forget the planned paths, one is another's file.
            await run.db(partial(run.ledger.abandon_placing, uid))
            tries += 1
            if tries == _PLACING_TRIES:
                raise
            log.info("series %s: %s; planning it again", uid, exc)
        except OSError:
            await _take_back(run, uid)
            raise
        finally:
            run.placer.release(moves)


async def _take_back(run: _Run, uid: str) -> None:
    """A placement the tree refused midway (its disk full, e.g. copying from ``--staging``):
    remove what of the series reached the tree, then forget it, so the tree holds only whole
    series when the run stops. The ledger is only read before the files go (a full disk may
    refuse its writes); if forgetting fails, the next run settles it as a crashed placement."""
    state = (await run.db(partial(run.ledger.states, [uid], records=False))).get(uid)
    if state is None or state.state != "placing":
        return
    placed = await run.db(partial(run.ledger.files, uid))
    await anyio.to_thread.run_sync(run.placer.remove, placed)
    with contextlib.suppress(BulkdlError):
        await run.db(partial(run.ledger.abandon_placing, uid))


async def _pack_in(
    run: _Run, packer: Packer, uid: str, moves: Sequence[Move]
) -> list[tuple[str, int]]:
    """``--pack``: the planned files as one archive per folder, written in staging, then
    recorded as placing and moved in (the folders touched)."""
    packed = await anyio.to_thread.run_sync(packer.prepare, uid, moves, run.staging)
    try:
        members = [member for item in packed for member in item.members]
        await run.db(partial(run.ledger.begin_placing, uid, members))
        return await anyio.to_thread.run_sync(packer.commit, packed)
    finally:
        await anyio.to_thread.run_sync(packer.release, packed)


def _staging_name(shard: Shard | None) -> str:
    """Each shard stages in its own folder: a shard starting clears only its own leftovers."""
    return f"staging-{shard.tag}" if shard else "staging"


def _clear_leftovers(state_dir: Path) -> None:
    """Remove what a killed run may have left: its staging area and half-written sidecars."""
    shutil.rmtree(state_dir / "staging", ignore_errors=True)
    for stale in state_dir.glob(".*.tmp"):
        stale.unlink(missing_ok=True)


def _fresh_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)


async def _process(run: _Run, series: Series) -> SeriesOutcome:
    """Every attempt at one series until it is placed or its attempts run out."""
    uid = series.SeriesInstanceUID
    attempts = run.settings.retries + 1
    reason = "not attempted"
    for attempt in range(1, attempts + 1):
        run.reporter.emit(SeriesStarted(uid, attempt))
        try:
            outcome = await _fetch_once(run, series, attempt)
        except (TransientError, SeriesError) as exc:
            reason = str(exc)
            await run.db(partial(run.ledger.record_attempt, uid, reason))
            if attempt == attempts:
                break
            retry_after = exc.retry_after if isinstance(exc, TransientError) else None
            delay = max(run.policy.backoff(attempt, random.random), retry_after or 0.0)
            run.reporter.emit(SeriesRetrying(uid, attempt, reason, delay))
            log.info(
                "series %s attempt %d failed (%s); retrying in %.1fs", uid, attempt, reason, delay
            )
            await anyio.sleep(delay)
            continue
        except SourceError as exc:  # refused, unknown, auth, bad body: retrying will not help
            reason = str(exc)
            await run.db(partial(run.ledger.record_attempt, uid, reason))
            break
        except OSError as exc:
            staging = run.settings.staging
            where = run.out if staging is None else refused_by(exc, staging, run.staging, run.out)
            raise disk_error(exc, where) from exc
        await run.db(partial(run.ledger.record_attempt, uid, None))
        return SeriesOutcome(
            uid, outcome.outcome, outcome.images, outcome.bytes, outcome.reason, attempt
        )
    await run.db(partial(run.ledger.mark_failed, uid, reason))
    return SeriesOutcome(uid, "failed", reason=reason, attempts=attempt)


def _finish(run: _Run, outcome: SeriesOutcome) -> None:
    run.outcomes[outcome.uid] = outcome
    run.reporter.emit(
        SeriesFinished(outcome.uid, outcome.outcome, outcome.images, outcome.bytes, outcome.reason)
    )


async def _workers(run: _Run, todo: Sequence[Series]) -> None:
    send, receive = anyio.create_memory_object_stream[Series](run.settings.concurrency)

    async def produce() -> None:
        async with send:
            for series in todo:
                await send.send(series)

    async def work(mine: MemoryObjectReceiveStream[Series]) -> None:
        async with mine:
            async for series in mine:
                _finish(run, await _process(run, series))

    async with anyio.create_task_group() as tg, receive:
        tg.start_soon(produce)
        for _ in range(run.settings.concurrency):
            tg.start_soon(work, receive.clone())


async def _watch_signals(tg: TaskGroup, interrupted: list[bool]) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.warning("received %s: stopping cleanly", signal.Signals(signum).name)
            interrupted.append(True)
            tg.cancel_scope.cancel()
            return


async def download(
    settings: Settings,
    selection: Selection,
    source: Source,
    reporter: Reporter,
    *,
    handle_signals: bool = False,
) -> RunResult:
    """Run one download into ``settings.out``; the source must be open for the whole run.

    Raises AbortError for run-fatal conditions and InputError for bad input; every per-series
    problem ends up in the result instead.
    """
    assert settings.out is not None
    started = time.monotonic()
    out = settings.out
    state_dir = await anyio.to_thread.run_sync(prepare_output, out)
    shard = selection.shard
    with exclusive(state_dir, shard.tag if shard else None):
        name = shard.ledger_name if shard else LEDGER_NAME
        if (mixed := foreign_ledgers(out, name)) is not None:
            log.warning("%s", mixed)
        ledger = await anyio.to_thread.run_sync(Ledger.open, out, name)
        private: tuple[PrivateFolder, ...] = ()
        try:
            if settings.staging is not None:
                private = await anyio.to_thread.run_sync(open_staging, settings.staging, state_dir)
            return await _download(
                settings, selection, source, reporter, ledger, started, handle_signals,
                *(folder.path for folder in private),
            )  # fmt: skip
        finally:
            with anyio.CancelScope(shield=True):
                for folder in private:
                    await anyio.to_thread.run_sync(folder.close)
            ledger.close()


async def _download(
    settings: Settings,
    selection: Selection,
    source: Source,
    reporter: Reporter,
    ledger: Ledger,
    started: float,
    handle_signals: bool,
    staging: Path | None = None,
    landing: Path | None = None,
) -> RunResult:
    assert settings.out is not None
    out = settings.out
    layout = resolve_layout(settings.layout)
    packer = None
    if settings.pack is not None:
        check_layout(layout)
        packer = Packer(
            out, "zip" if settings.pack == "zip" else "tar", ledger.owner_of,
            ledger.archive_owner, fsync=settings.fsync, landing=landing,
        )  # fmt: skip
    keywords = layout.keywords | frozenset(dicom.HEADER_KEYWORDS_ALWAYS)
    run = _Run(
        settings=settings,
        out=out,
        source=source,
        ledger=ledger,
        layout=layout,
        placer=Placer(out, layout, ledger.owner_of, fsync=settings.fsync, landing=landing),
        reporter=reporter,
        staging=staging or out / STATE_DIR / _staging_name(selection.shard),
        inspect=partial(dicom.read_header, keywords=keywords),
        packer=packer,
    )
    await anyio.to_thread.run_sync(_clear_leftovers, out / STATE_DIR)
    if staging is None:  # a --staging folder is this run's own, new, and holds its lock
        await anyio.to_thread.run_sync(partial(shutil.rmtree, run.staging, ignore_errors=True))
    run_id = await run.db(partial(ledger.begin_run, settings.public()))

    missing: list[str] = []
    if selection.query is not None:
        found = await source.search(selection.query)
    else:
        found, missing = await source.resolve(list(selection.uids))
    for uid in missing:
        reason = f"series {uid} is unknown to the server (or not accessible)"
        await run.db(partial(ledger.upsert_resolved, [Series(uid)]))
        await run.db(partial(ledger.mark_failed, uid, reason))
        run.outcomes[uid] = SeriesOutcome(uid, "failed", reason=reason)

    to_fetch, done = await plan(
        found,
        ledger=ledger,
        placer=run.placer,
        out=out,
        accept_incomplete=settings.accept_incomplete,
        db=run.db,
    )
    for series in done:
        run.outcomes[series.SeriesInstanceUID] = SeriesOutcome(series.SeriesInstanceUID, "skipped")
    reporter.emit(
        RunPlanned(
            total=len(found) + len(missing),
            to_fetch=len(to_fetch),
            skipped=len(done),
            images=sum(s.ImageCount or 0 for s in to_fetch),
            bytes=sum(s.FileSize or 0 for s in to_fetch),
        )
    )
    for uid in missing:
        _finish(run, run.outcomes[uid])

    interrupted: list[bool] = []
    if not settings.dry_run and to_fetch:
        try:
            async with anyio.create_task_group() as tg:
                if handle_signals:
                    tg.start_soon(_watch_signals, tg, interrupted)
                await _workers(run, to_fetch)
                tg.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            raise _run_fatal(group, out) from group

    with anyio.CancelScope(shield=True):
        await anyio.to_thread.run_sync(partial(shutil.rmtree, run.staging, ignore_errors=True))
        order = [*selection.uids] or [s.SeriesInstanceUID for s in found]
        outcomes = tuple(run.outcomes[uid] for uid in dict.fromkeys(order) if uid in run.outcomes)
        result = RunResult(
            outcomes, time.monotonic() - started, out, tuple(to_fetch), bool(interrupted)
        )
        if not settings.dry_run and selection.shard is None:
            await run.db(lambda: write_sidecars(out, ledger))
        await run.db(partial(ledger.end_run, run_id, int(result.exit_code)))
    reporter.emit(result.finished)
    return result
