"""Tests for bulkdl.ledger: methods round-tripped, crashes survived, bad files refused intact."""

from __future__ import annotations

import os
import random
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest

from bulkdl.errors import AbortError
from bulkdl.ledger import (
    SCHEMA_VERSION,
    Ledger,
    decode_record,
    encode_record,
    merged_states,
    open_all,
)
from bulkdl.records import PlacedFile, Series

U1 = "1.3.6.1.4.1.14519.5.2.1.6279.6001.179049373636438705059720603192"
U2 = "1.3.6.1.4.1.14519.5.2.1.6279.6001.619372068417051974713149104919"
U3 = "1.3.6.1.4.1.14519.5.2.1.6279.6001.170052181746004939527661217512"

RICH = Series(
    U1,
    StudyInstanceUID="1.2.3",
    PatientID="LIDC-IDRI-0001",
    Collection="LIDC-IDRI",
    Modality="CT",
    SeriesDate=date(2000, 1, 1),
    SeriesDescription="Chest 1.25mm — ünïcode",
    SeriesNumber=3000566,
    ImageCount=3,
    FileSize=1_578_048,
    MaxSubmissionTimestamp=date(2020, 2, 29),
    StudyDate=date(1999, 12, 31),
    extra=(("Weird Column", "x"), ("Weird Column", "y"), ("empty", "")),
)


def planned(uid: str, count: int) -> list[PlacedFile]:
    """``count`` files of series ``uid`` as the placer would plan them."""
    return [
        PlacedFile(f"P/{uid[-6:]}/{i:04d}.dcm", f"{uid}.{i}", 1000 + i, f"{i:032x}", f"{i:064x}")
        for i in range(count)
    ]


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    """A fresh ledger in a temporary output folder."""
    with Ledger.open(tmp_path) as opened:
        yield opened


def place(ledger: Ledger, uid: str, count: int) -> list[PlacedFile]:
    """Run one series through begin/finish placing; return its files."""
    files = planned(uid, count)
    ledger.begin_placing(uid, files)
    ledger.finish_placing(
        uid,
        images=count,
        bytes_=sum(f.size for f in files),
        incomplete=False,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
    )
    return files


# -- opening ---------------------------------------------------------------------------------------


def test_open_creates_the_file_with_the_users_umask(tmp_path: Path) -> None:
    """The ledger lands at DIR/.bulkdl/ledger.sqlite, WAL, schema_version set, mode = umask."""
    old = os.umask(0o027)
    try:
        Ledger.open(tmp_path).close()
    finally:
        os.umask(old)
    path = tmp_path / ".bulkdl" / "ledger.sqlite"
    assert path.stat().st_mode & 0o777 == 0o640
    conn = sqlite3.connect(path)
    try:
        meta = dict(conn.execute("SELECT key, value FROM meta"))
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()
    assert meta["schema_version"] == str(SCHEMA_VERSION)
    assert {"created_at", "bulkdl_version"} <= meta.keys()


def test_an_empty_file_is_adopted_as_a_fresh_ledger(tmp_path: Path) -> None:
    """A zero-byte ledger (a run that died at once) holds nothing to lose and is initialized."""
    (tmp_path / ".bulkdl").mkdir()
    (tmp_path / ".bulkdl" / "ledger.sqlite").touch()
    with Ledger.open(tmp_path) as ledger:
        ledger.upsert_resolved([Series(U1)])
        assert ledger.summary()["pending"] == 1


def test_reopen_after_close_keeps_everything(tmp_path: Path) -> None:
    """Runs, states, files and licences all survive close and open."""
    with Ledger.open(tmp_path) as ledger:
        run_id = ledger.begin_run({"concurrency": 4, "out": "/data"})
        ledger.upsert_resolved([RICH, Series(U2), Series(U3)])
        files = place(ledger, U1, 3)
        ledger.record_attempt(U2, "HTTP 503")
        ledger.mark_failed(U3, "unknown to the server")
        ledger.set_license("LIDC-IDRI", "CC BY 3.0")
        ledger.end_run(run_id, 1)
        before = (ledger.states(), ledger.files_by_series(), ledger.licenses(), ledger.summary())
    with Ledger.open(tmp_path) as ledger:
        after = (ledger.states(), ledger.files_by_series(), ledger.licenses(), ledger.summary())
        runs = ledger.runs()
    assert after == before
    assert after[1] == {U1: files}
    assert after[0][U1].record == RICH
    assert [(r.run_id, r.exit_code, r.settings) for r in runs] == [
        (run_id, 1, {"concurrency": 4, "out": "/data"})
    ]
    assert runs[0].finished_at is not None


def test_closed_ledger_refuses_calls(tmp_path: Path) -> None:
    """Using a closed ledger is a ValueError, and closing twice is harmless."""
    ledger = Ledger.open(tmp_path)
    ledger.close()
    ledger.close()
    with pytest.raises(ValueError, match="closed"):
        ledger.summary()


# -- refusing bad files, untouched -----------------------------------------------------------------


def _refused(tmp_path: Path, content: bytes, match: str) -> None:
    folder = tmp_path / ".bulkdl"
    folder.mkdir(exist_ok=True)
    path = folder / "ledger.sqlite"
    path.write_bytes(content)
    with pytest.raises(AbortError, match=match) as caught:
        Ledger.open(tmp_path)
    assert str(path) in str(caught.value)
    assert path.read_bytes() == content


def test_random_bytes_are_refused_and_left_intact(tmp_path: Path) -> None:
    """A file of random bytes is not a ledger: AbortError naming it, file unchanged."""
    _refused(tmp_path, random.Random(3).randbytes(8192), "not a SQLite database")


def test_truncated_ledger_is_refused_and_left_intact(tmp_path: Path) -> None:
    """A real ledger cut in half fails quick_check: AbortError naming it, file unchanged."""
    source = tmp_path / "source"
    with Ledger.open(source) as ledger:
        ledger.upsert_resolved(
            [Series(f"1.2.{i}", SeriesDescription="x" * 200) for i in range(2000)]
        )
    whole = (source / ".bulkdl" / "ledger.sqlite").read_bytes()
    _refused(tmp_path, whole[: len(whole) // 2], "corrupt|malformed")


def test_a_foreign_sqlite_database_is_refused(tmp_path: Path) -> None:
    """Another program's SQLite file at the ledger's path is not adopted or altered."""
    scratch = tmp_path / "scratch.sqlite"
    conn = sqlite3.connect(scratch)
    conn.execute("CREATE TABLE photos (id INTEGER PRIMARY KEY, name TEXT)")
    conn.execute("INSERT INTO photos (name) VALUES ('cat')")
    conn.commit()
    conn.close()
    _refused(tmp_path, scratch.read_bytes(), "not a bulkdl ledger")


def test_a_newer_schema_is_refused_and_left_intact(tmp_path: Path) -> None:
    """A ledger from a newer bulkdl is refused (upgrade, don't downgrade its data)."""
    with Ledger.open(tmp_path) as ledger:
        ledger.upsert_resolved([Series(U1)])
    path = tmp_path / ".bulkdl" / "ledger.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (SCHEMA_VERSION + 1,))
    conn.commit()
    conn.close()
    content = path.read_bytes()
    with pytest.raises(AbortError, match="newer bulkdl") as caught:
        Ledger.open(tmp_path)
    assert str(path) in str(caught.value)
    assert path.read_bytes() == content


def test_an_unwritable_place_is_an_abort(tmp_path: Path) -> None:
    """An output folder under a regular file cannot hold a ledger: AbortError naming it."""
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(AbortError, match=r"ledger .*/file/out/\.bulkdl/ledger\.sqlite"):
        Ledger.open(blocker / "out")


# -- runs and series -------------------------------------------------------------------------------


def test_settings_keep_no_secrets(ledger: Ledger) -> None:
    """A setting named like a secret is stored redacted; the others as given."""
    ledger.begin_run({"api_token": "abc", "auth": {"password": "pw", "user": "me"}, "n": 1})
    (run,) = ledger.runs()
    assert run.settings == {
        "api_token": "<redacted>",
        "auth": {"password": "<redacted>", "user": "me"},
        "n": 1,
    }
    assert run.exit_code is None


def test_end_run_of_unknown_run_is_a_key_error(ledger: Ledger) -> None:
    """Ending a run that never began is a programming error."""
    with pytest.raises(KeyError):
        ledger.end_run("no-such-run", 0)


def test_series_record_survives_the_json_round_trip(ledger: Ledger) -> None:
    """Dates, None, ints, unicode and repeated extra columns come back equal."""
    assert decode_record(encode_record(RICH)) == RICH
    ledger.upsert_resolved([RICH])
    state = ledger.states([U1])[U1]
    assert state.record == RICH
    assert (state.state, state.attempts, state.expected_images, state.expected_bytes) == (
        "pending",
        0,
        3,
        1_578_048,
    )


def test_unknown_record_keys_are_kept_in_extra() -> None:
    """A record key this version has no field for is kept, in extra, not dropped."""
    series = decode_record('{"SeriesInstanceUID": "1.2", "Retired": 5}')
    assert series == Series("1.2", extra=(("Retired", "5"),))


def test_upsert_refreshes_records_but_never_downgrades_done(ledger: Ledger) -> None:
    """A done series stays done with its actual counts; its record and expectations refresh."""
    ledger.upsert_resolved([RICH, Series(U2)])
    place(ledger, U1, 3)
    revised = Series(U1, Collection="LIDC-IDRI", ImageCount=4)
    ledger.upsert_resolved([revised, Series(U2, ImageCount=7)])
    states = ledger.states()
    assert states[U1].state == "done"
    assert (states[U1].actual_images, states[U1].expected_images) == (3, 4)
    assert states[U1].record == revised
    assert (states[U2].state, states[U2].expected_images) == ("pending", 7)
    assert len(ledger.files(U1)) == 3


def test_states_of_selected_and_unknown_uids(ledger: Ledger) -> None:
    """states(uids) returns just the known ones asked for; states() returns all."""
    ledger.upsert_resolved([Series(U1), Series(U2)])
    assert set(ledger.states([U1, U3, U1])) == {U1}
    assert set(ledger.states()) == {U1, U2}
    assert ledger.states([]) == {}


def test_attempts_failures_and_summary(ledger: Ledger) -> None:
    """Attempts count up, failures list the failed with their reason, summary counts states."""
    ledger.upsert_resolved([Series(U1), Series(U2), Series(U3)])
    ledger.record_attempt(U2, "HTTP 503")
    ledger.record_attempt(U2, "stalled")
    ledger.mark_failed(U2, "stalled")
    place(ledger, U3, 1)
    (failed,) = ledger.failures()
    assert (failed.uid, failed.attempts, failed.last_error) == (U2, 2, "stalled")
    assert ledger.summary() == {"pending": 1, "placing": 0, "done": 1, "incomplete": 0, "failed": 1}
    with pytest.raises(KeyError):
        ledger.record_attempt("9.9.9", None)


def test_data_version_moves_only_with_what_the_sidecars_show(ledger: Ledger) -> None:
    """Series, file and licence changes draw a new data_version; runs, folders, re-resolving
    the same records and a failed write leave it as it was."""
    ledger.upsert_resolved([RICH, Series(U2)])
    version = ledger.data_version()
    assert version is not None
    run_id = ledger.begin_run({})
    ledger.upsert_resolved([RICH, Series(U2)])
    ledger.record_folders([("P", 1)])
    ledger.end_run(run_id, 0)
    assert ledger.data_version() == version
    with pytest.raises(ValueError):
        ledger.finish_placing(U1, images=1, bytes_=1, incomplete=False, sop_class_uid=None)
    assert ledger.data_version() == version
    seen: set[str | None] = {version}
    for change in (
        lambda: ledger.upsert_resolved([Series(U2, ImageCount=9)]),
        lambda: ledger.record_attempt(U2, "HTTP 503"),
        lambda: ledger.mark_failed(U2, "stalled"),
        lambda: place(ledger, U1, 2),
        lambda: ledger.set_license("LIDC-IDRI", "CC BY 3.0"),
        lambda: ledger.mark_missing(U1, "1 file(s) deleted from tree"),
    ):
        change()
        now = ledger.data_version()
        assert now not in seen
        seen.add(now)


# -- placing ---------------------------------------------------------------------------------------


def test_placing_round_trip(ledger: Ledger) -> None:
    """begin/finish placing records files, owners, actual counts, SOP class and completion."""
    ledger.upsert_resolved([Series(U1), Series(U2)])
    files = planned(U1, 3)
    ledger.begin_placing(U1, files)
    assert ledger.states([U1])[U1].state == "placing"
    ledger.finish_placing(U1, images=3, bytes_=3003, incomplete=True, sop_class_uid="1.2.840")
    state = ledger.states([U1])[U1]
    assert (state.state, state.actual_images, state.actual_bytes) == ("incomplete", 3, 3003)
    assert state.sop_class_uid == "1.2.840" and state.completed_at is not None
    assert ledger.files(U1) == files
    assert ledger.files() == files
    assert ledger.files(U2) == []
    assert ledger.owner_of(files[1].path) == (U1, files[1].SOPInstanceUID)
    assert ledger.owner_of("nowhere.dcm") is None
    assert ledger.files_by_series() == {U1: files}


def test_begin_placing_replaces_earlier_rows(ledger: Ledger) -> None:
    """Placing a series again leaves only the newly planned rows."""
    ledger.upsert_resolved([Series(U1)])
    place(ledger, U1, 3)
    again = [PlacedFile("new/0.dcm", "1.9", 10, "0" * 32, "0" * 64)]
    ledger.begin_placing(U1, again)
    assert ledger.files(U1) == again
    assert ledger.owner_of(planned(U1, 1)[0].path) is None


def test_a_path_of_another_instance_is_refused_unchanged(ledger: Ledger) -> None:
    """begin_placing onto a path holding another instance raises; nothing changes."""
    ledger.upsert_resolved([Series(U1), Series(U2)])
    taken = place(ledger, U1, 1)[0]
    with pytest.raises(ValueError, match="already holds instance"):
        ledger.begin_placing(U2, [PlacedFile(taken.path, "7.7.7", 1, "f" * 32, "f" * 64)])
    assert ledger.states([U2])[U2].state == "pending"
    assert ledger.owner_of(taken.path) == (U1, taken.SOPInstanceUID)


def test_finish_placing_needs_a_placing_series(ledger: Ledger) -> None:
    """Finishing a series that was never begun is refused; failing one being placed too."""
    ledger.upsert_resolved([Series(U1)])
    with pytest.raises(ValueError, match="not placing"):
        ledger.finish_placing(U1, images=1, bytes_=1, incomplete=False, sop_class_uid=None)
    ledger.begin_placing(U1, planned(U1, 1))
    with pytest.raises(ValueError, match="abandon_placing"):
        ledger.mark_failed(U1, "boom")


CRASH = """
import os, sys
from pathlib import Path
from bulkdl.ledger import Ledger
from bulkdl.records import PlacedFile, Series
ledger = Ledger.open(Path(sys.argv[1]))
ledger.upsert_resolved([Series(sys.argv[2])])
files = [PlacedFile(f"a/{i}.dcm", f"1.{i}", i, "0" * 32, "0" * 64) for i in range(3)]
ledger.begin_placing(sys.argv[2], files)
os._exit(9)  # die mid-placement: no finish, no close, no checkpoint
"""


def test_crash_while_placing_is_taken_back(tmp_path: Path) -> None:
    """A process killed between begin and finish leaves 'placing'; abandon returns its rows."""
    crashed = subprocess.run([sys.executable, "-c", CRASH, str(tmp_path), U1], check=False)
    assert crashed.returncode == 9
    with Ledger.open(tmp_path) as ledger:
        assert ledger.states()[U1].state == "placing"
        abandoned = ledger.abandon_placing(U1)
        assert abandoned == [
            PlacedFile(f"a/{i}.dcm", f"1.{i}", i, "0" * 32, "0" * 64) for i in range(3)
        ]
        assert ledger.states()[U1].state == "pending"
        assert ledger.files() == []
        assert ledger.abandon_placing(U1) == []


def test_mark_missing_makes_a_done_series_pending(ledger: Ledger) -> None:
    """A done series whose files vanished returns to pending with no file rows."""
    ledger.upsert_resolved([Series(U1)])
    place(ledger, U1, 2)
    ledger.mark_missing(U1, "2 file(s) deleted from tree")
    state = ledger.states()[U1]
    assert (state.state, state.last_error, state.actual_images) == (
        "pending",
        "2 file(s) deleted from tree",
        None,
    )
    assert ledger.files(U1) == []


def test_licenses_round_trip(ledger: Ledger) -> None:
    """Licence texts are stored once per collection, the last text winning."""
    ledger.upsert_resolved([Series(U1, Collection="A")])
    ledger.set_license("A", "old")
    ledger.set_license("A", "CC BY 4.0", series_uids=[U1])
    ledger.set_license("B", "TCIA restricted")
    assert ledger.licenses() == {"A": "CC BY 4.0", "B": "TCIA restricted"}


def test_usable_from_many_threads(ledger: Ledger) -> None:
    """Calls from several threads at once are serialized; no update is lost."""
    ledger.upsert_resolved([Series(U1)])

    def hammer() -> None:
        for _ in range(50):
            ledger.record_attempt(U1, None)
            ledger.states([U1])

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert ledger.states()[U1].attempts == 200


def test_200k_series_upsert_and_states_fast_enough(ledger: Ledger) -> None:
    """200,000 series upsert and read back well within a sanity bound (not a benchmark)."""
    series = [
        Series(
            f"1.2.826.0.1.{i}",
            PatientID=f"P{i // 50}",
            Modality="CT",
            SeriesDate=date(2020, 1, 1),
            ImageCount=100,
        )
        for i in range(200_000)
    ]
    uids = [s.SeriesInstanceUID for s in series]
    start = time.perf_counter()
    ledger.upsert_resolved(series)
    states = ledger.states(uids)
    elapsed = time.perf_counter() - start
    assert len(states) == 200_000
    assert states[uids[-1]].record == series[-1]
    print(f"200k upsert + states: {elapsed:.1f}s")
    assert elapsed < 20, f"200k upsert + states took {elapsed:.1f}s"


# -- shards ----------------------------------------------------------------------------------------


def test_shard_ledgers_open_read_only_and_merge(tmp_path: Path) -> None:
    """open_all reads every ledger*.sqlite; done in any shard is done, attempts add up."""
    with Ledger.open(tmp_path, "ledger-0.sqlite") as shard:
        shard.upsert_resolved([Series(U1), Series(U2)])
        shard.record_attempt(U1, "HTTP 500")
        shard.mark_failed(U1, "HTTP 500")
    with Ledger.open(tmp_path, "ledger-1.sqlite") as shard:
        shard.upsert_resolved([RICH, Series(U3)])
        shard.record_attempt(U1, None)
        place(shard, U1, 2)
    ledgers = open_all(tmp_path)
    try:
        assert [ledger.path.name for ledger in ledgers] == ["ledger-0.sqlite", "ledger-1.sqlite"]
        merged = merged_states(ledgers)
        with pytest.raises(ValueError, match="read-only"):
            ledgers[0].record_attempt(U2, None)
    finally:
        for ledger in ledgers:
            ledger.close()
    assert {uid: st.state for uid, st in merged.items()} == {
        U1: "done",
        U2: "pending",
        U3: "pending",
    }
    assert merged[U1].attempts == 2
    assert merged[U1].record == RICH


def test_open_all_of_a_folder_without_ledgers(tmp_path: Path) -> None:
    """No .bulkdl folder means no ledgers, not an error."""
    assert open_all(tmp_path) == []


def test_open_all_refuses_a_corrupt_shard(tmp_path: Path) -> None:
    """One bad shard aborts the read, naming it."""
    Ledger.open(tmp_path, "ledger-0.sqlite").close()
    (tmp_path / ".bulkdl" / "ledger-1.sqlite").write_bytes(b"garbage" * 100)
    with pytest.raises(AbortError, match=r"ledger-1\.sqlite"):
        open_all(tmp_path)
