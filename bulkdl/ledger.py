"""The run's memory: which series are pending, placing, done, incomplete or failed, and every file.

A ledger is one SQLite file, ``DIR/.bulkdl/ledger.sqlite`` (or ``ledger-<shard>.sqlite`` for one
Slurm array task), holding the runs, each series with its state, attempts, expected and actual
counts and whole record (as JSON), one row per placed file (path, series and SOP UID, size, MD5;
SHA-256, for lock files; for an instance packed into a series archive by ``--pack``, the
archive's path, the row's path being ``<archive>/<member name>``), and the collections'
licences. SQLite (stdlib ``sqlite3``) gives atomic, crash-safe transactions without a server, a
file users can query, and shard ledgers that merge by key: every row is keyed by UIDs or paths,
never by a counter, and ``meta`` carries the ``schema_version`` (a writer opening an older
ledger migrates it forward, adding columns only) and a ``data_version``, a token drawn anew by
every transaction that changes the series, files or licences, so the sidecars written from them
are rewritten only when it moved. Durability: WAL journal,
``synchronous=NORMAL`` (a power cut may lose the last transactions, never corrupt the file), a
busy timeout, and one transaction per state change. A file that is not a ledger, is corrupt or
is newer than this code raises :class:`AbortError` naming it, and is never overwritten or
repaired. Does file I/O and blocks: call it from a worker thread; one lock serializes the shared
connection.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import sqlite3
import threading
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, date, datetime
from operator import attrgetter
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, get_args, get_type_hints

from bulkdl import __version__
from bulkdl.errors import AbortError
from bulkdl.records import PlacedFile, Series

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
#: The version ``_SCHEMA`` creates; :data:`_MIGRATIONS` bring a ledger from there to the current.
_BASE_VERSION = 1
STATE_DIR = ".bulkdl"
LEDGER_NAME = "ledger.sqlite"
BUSY_TIMEOUT_S = 30.0
_MAGIC = b"SQLite format 3\x00"
_CHUNK = 500  # UIDs per IN (...) query, well under SQLite's variable limit
_PAGE = 1000  # series per read when going through the whole table
_FULL_BELOW = 1 << 20  # free bytes under which an I/O error is blamed on a full disk
_CACHE_KIB = -(64 << 10)  # a writer's page cache (negative: in KiB, as SQLite takes it)

State = Literal["pending", "placing", "done", "incomplete", "failed"]
STATES: tuple[State, ...] = get_args(State)
# When shards disagree, the furthest state wins: done anywhere is done.
_RANK: dict[str, int] = {"pending": 0, "placing": 1, "failed": 2, "incomplete": 3, "done": 4}

#: meta key: a random token drawn anew by every write transaction that changed the series, files
#: or licences (what the sidecars show).
_DATA_VERSION = "data_version"
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS runs (
        run_id TEXT PRIMARY KEY, started_at TEXT NOT NULL, finished_at TEXT,
        settings_json TEXT NOT NULL, exit_code INTEGER)""",
    """CREATE TABLE IF NOT EXISTS series (
        uid TEXT PRIMARY KEY,
        state TEXT NOT NULL DEFAULT 'pending'
            CHECK (state IN ('pending', 'placing', 'done', 'incomplete', 'failed')),
        attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT,
        expected_images INTEGER, expected_bytes INTEGER,
        actual_images INTEGER, actual_bytes INTEGER,
        collection TEXT, patient_id TEXT, study_uid TEXT, record_json TEXT NOT NULL,
        sop_class_uid TEXT, first_seen_run TEXT, updated_at TEXT NOT NULL, completed_at TEXT,
        license_collection TEXT)""",
    """CREATE TABLE IF NOT EXISTS files (
        path TEXT PRIMARY KEY, series_uid TEXT NOT NULL REFERENCES series (uid),
        sop_uid TEXT NOT NULL, size INTEGER NOT NULL, md5 TEXT NOT NULL, sha256 TEXT)""",
    "CREATE INDEX IF NOT EXISTS files_series ON files (series_uid)",
    "CREATE TABLE IF NOT EXISTS licenses (collection TEXT PRIMARY KEY, text TEXT NOT NULL)",
    # Each tree folder bulkdl placed files in, with its mtime right after: an unchanged mtime
    # proves no file in it was added, removed or renamed since, without listing it.
    "CREATE TABLE IF NOT EXISTS folders (path TEXT PRIMARY KEY, mtime_ns INTEGER NOT NULL)",
)
_UPSERT = """
    INSERT INTO series (uid, expected_images, expected_bytes, collection, patient_id, study_uid,
                        record_json, first_seen_run, updated_at)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (uid) DO UPDATE SET
        expected_images = excluded.expected_images, expected_bytes = excluded.expected_bytes,
        collection = excluded.collection, patient_id = excluded.patient_id,
        study_uid = excluded.study_uid, record_json = excluded.record_json,
        updated_at = excluded.updated_at
    WHERE series.record_json IS NOT excluded.record_json"""
# A path already recorded for the same instance (another series listing it) is taken over, as
# the placer reuses it; a path recorded for another instance is left alone and counted short.
_INSERT_FILE = """
    INSERT INTO files (path, series_uid, sop_uid, size, md5, sha256, archive)
    VALUES (?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (path) DO UPDATE SET series_uid = excluded.series_uid, size = excluded.size,
        md5 = excluded.md5, sha256 = excluded.sha256, archive = excluded.archive
    WHERE files.sop_uid = excluded.sop_uid"""
_STATE_COLUMNS = (
    "uid, state, attempts, last_error, expected_images, expected_bytes,"
    " actual_images, actual_bytes, sop_class_uid, completed_at, record_json"
)
# NULL (a file recorded before SHA-256 was; a file not inside an archive) reads as "".
_FILE_COLUMNS = "path, sop_uid, size, md5, coalesce(sha256, ''), coalesce(archive, '')"
# Schema changes since _BASE_VERSION, by the version they make; applied once, in order, by a
# writer opening an older ledger (readers see the columns added since as NULL: _read_as_current).
# 2: ``--pack``: an instance stored in a series archive, its ``path`` "<archive>/<member name>".
_MIGRATIONS: dict[int, tuple[str, ...]] = {2: ("ALTER TABLE files ADD COLUMN archive TEXT",)}
_SECRET_WORDS = ("password", "passwd", "secret", "token", "credential", "api_key", "apikey")

_FIELDS = tuple(f.name for f in fields(Series))
_GET_FIELDS = attrgetter(*_FIELDS)
# Built once: json.dumps with non-default options builds an encoder per call (2x slower).
_ENCODER = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":"), default=date.isoformat, check_circular=False
)
# (field, type, value) -> its '"field":value' JSON: most values (collection, modality, licence,
# dates...) repeat across 200,000 records. Emptied when full, which bounds it.
_MEMBERS: dict[tuple[str, type, object], str] = {}
_MAX_MEMBERS = 1 << 14
_DATE_FIELDS = frozenset(
    name for name, hint in get_type_hints(Series).items() if date in get_args(hint)
)
_RECORD_FIELDS = frozenset(_FIELDS) - {"extra"}
_OTHER_FIELDS = _FIELDS[1:-1]  # between SeriesInstanceUID and extra
_GET_OTHER_FIELDS = attrgetter(*_OTHER_FIELDS)


@dataclass(frozen=True, slots=True)
class SeriesState:
    """What the ledger knows of one series; ``record`` is the Series as last resolved."""

    uid: str
    state: State
    attempts: int
    last_error: str | None
    expected_images: int | None
    expected_bytes: int | None
    actual_images: int | None
    actual_bytes: int | None
    sop_class_uid: str | None = None
    completed_at: str | None = None
    record_json: str | None = field(default=None, repr=False)
    _decoded: Series | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def record(self) -> Series | None:
        """The Series decoded from ``record_json`` on first use (decoding 200,000 records
        up front would cost seconds that a plan, which reads only states, never needs)."""
        if self._decoded is None and self.record_json:
            object.__setattr__(self, "_decoded", decode_record(self.record_json))
        return self._decoded


@dataclass(frozen=True, slots=True)
class RunRecord:
    """One run as the ledger recorded it; ``finished_at``/``exit_code`` are None while it runs."""

    run_id: str
    started_at: str
    finished_at: str | None
    settings: dict[str, Any]
    exit_code: int | None


def encode_record(series: Series) -> str:
    """The Series as compact JSON: dates ISO, None fields left out, ``extra`` as pairs.

    The same text as encoding the dict of those fields whole, built from remembered members.
    """
    # The UID, numbers and dates are written out (often unique: not worth remembering).
    members = [f'"SeriesInstanceUID":{_ENCODER.encode(series.SeriesInstanceUID)}']
    for name, value in zip(_OTHER_FIELDS, _GET_OTHER_FIELDS(series), strict=True):
        if value is None:
            continue
        kind = type(value)
        if kind is int:
            members.append(f'"{name}":{value}')
            continue
        if kind is date:
            members.append(f'"{name}":"{value.isoformat()}"')
            continue
        members.append(_MEMBERS.get((name, kind, value)) or _member(name, value))
    if (extra := series.extra) != ():
        members.append(_MEMBERS.get(("extra", tuple, extra)) or _member("extra", extra))
    return "{" + ",".join(members) + "}"


def _member(name: str, value: object) -> str:
    """'"name":value' as JSON, remembered for the next records."""
    member = f"{_ENCODER.encode(name)}:{_ENCODER.encode(value)}"
    if len(_MEMBERS) >= _MAX_MEMBERS:
        _MEMBERS.clear()
    _MEMBERS[name, type(value), value] = member  # 1.0 and True are equal keys, not equal JSON
    return member


def decode_record(text: str) -> Series:
    """Inverse of :func:`encode_record`; keys this version has no field for go to ``extra``."""
    data: dict[str, Any] = json.loads(text)
    extra = [(str(key), str(value)) for key, value in data.pop("extra", ())]
    for name in _DATE_FIELDS.intersection(data):
        if isinstance(value := data[name], str):
            data[name] = date.fromisoformat(value)
    if not data.keys() <= _RECORD_FIELDS:
        extra += [(name, str(data.pop(name))) for name in list(data) if name not in _RECORD_FIELDS]
    return Series(**data, extra=tuple(extra))


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _redact(settings: Mapping[str, object]) -> dict[str, object]:
    """Callers pass settings without secrets; this is the belt to their braces."""
    out: dict[str, object] = {}
    for key, value in settings.items():
        if any(word in str(key).lower() for word in _SECRET_WORDS) and value is not None:
            out[str(key)] = "<redacted>"
        elif isinstance(value, Mapping):
            out[str(key)] = _redact(value)
        else:
            out[str(key)] = value
    return out


def _state_of(row: Sequence[Any]) -> SeriesState:
    return SeriesState(*row)


def _common_folder(first: str, last: str) -> str:
    """The deepest folder holding both paths (relative POSIX, "" = the root)."""
    common: list[str] = []
    for a, b in zip(first.split("/")[:-1], last.split("/")[:-1], strict=False):
        if a != b:
            break
        common.append(a)
    return "/".join(common)


def _count(tx: sqlite3.Connection) -> int:
    return int(tx.execute("SELECT count(*) FROM series").fetchone()[0])


def _file_row(uid: str, f: PlacedFile) -> tuple[object, ...]:
    return (f.path, uid, f.SOPInstanceUID, f.size, f.md5, f.sha256 or None, f.archive or None)


def _migrate(tx: sqlite3.Connection) -> None:
    """Bring the ledger of ``tx`` (a write transaction) forward to SCHEMA_VERSION."""
    row = tx.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    version = int(row[0])
    for target in range(version + 1, SCHEMA_VERSION + 1):
        for statement in _MIGRATIONS[target]:
            tx.execute(statement)
    if version < SCHEMA_VERSION:
        tx.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),))


def _read_as_current(conn: sqlite3.Connection) -> None:
    """Let a read-only connection to an older ledger read as the current schema: a TEMP view
    (searched before the file's own tables; nothing is written to the file) adds the columns
    added since, as NULL."""
    columns = {row[1] for row in conn.execute("PRAGMA main.table_info(files)")}
    if columns and "archive" not in columns:
        conn.execute("CREATE TEMP VIEW files AS SELECT *, NULL AS archive FROM main.files")


def _chunks(items: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


def _fail(path: Path, problem: str) -> AbortError:
    return AbortError(
        f"ledger {path}: {problem}; bulkdl leaves it untouched: fix or move it aside "
        "(a fresh ledger fetches every series again)"
    )


def _disk_trouble(exc: sqlite3.Error) -> bool:
    """SQLite's I/O errors ("disk I/O error", "database or disk is full", "unable to open"):
    the disk's problem, not the ledger's."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    return name.startswith(("SQLITE_IOERR", "SQLITE_FULL", "SQLITE_CANTOPEN"))


def _disk_fail(path: Path, exc: sqlite3.Error) -> AbortError:
    """An I/O error says nothing against the ledger: name the disk, never suggest moving it."""
    try:
        stats = os.statvfs(path.parent)
        full = stats.f_bavail * stats.f_frsize < _FULL_BELOW
    except OSError:
        full = False
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if full:
        why = "the disk is full"
    elif limit != resource.RLIM_INFINITY:
        why = f"{exc}: a file is too large for this process's size limit (ulimit -f, {limit:,} B)"
    else:
        why = str(exc)
    return AbortError(
        f"ledger {path}: cannot use it: {why}; the ledger is left as it was: "
        "free some space (or fix the disk) and run again"
    )


def _connect(path: Path, *, readonly: bool, immutable: bool = False) -> sqlite3.Connection:
    mode = "ro" if readonly else "rw"
    uri = f"{path.absolute().as_uri()}?mode={mode}{'&immutable=1' if immutable else ''}"
    return sqlite3.connect(
        uri, uri=True, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
    )


def _wal_empty(path: Path) -> bool:
    wal = path.with_name(path.name + "-wal")
    try:
        return wal.stat().st_size == 0
    except FileNotFoundError:
        return True


def _validate(path: Path) -> sqlite3.Connection | None:
    """A read-only connection to the checked ledger at ``path``, or None if it is still empty.

    Raises AbortError if the file cannot be read, is not SQLite, is corrupt, is some other
    database, or has a newer schema. Reads only: nothing is written to the file.
    """
    try:
        with path.open("rb") as stream:
            head = stream.read(len(_MAGIC))
    except OSError as exc:
        raise AbortError(f"ledger {path}: cannot read it ({exc.strerror or exc})") from exc
    if not head:
        return None
    if head != _MAGIC:
        raise _fail(path, "not a SQLite database")
    # With no WAL to replay the main file holds everything: read it as immutable, which makes
    # SQLite create no -shm and -wal beside it (any reader of a WAL database otherwise does,
    # and a full or read-only disk refuses them). A WAL left by a crash must be read through.
    immutable = _wal_empty(path)
    try:
        return _checked(_connect(path, readonly=True, immutable=immutable), path)
    except sqlite3.Error as exc:
        if _disk_trouble(exc):
            raise _disk_fail(path, exc) from exc
        raise _fail(path, f"unreadable ({exc})") from exc


def _checked(conn: sqlite3.Connection, path: Path) -> sqlite3.Connection | None:
    """``conn`` once its database passed the checks of :func:`_validate` (None, closed, if it
    has no tables yet). Closes it and raises AbortError or sqlite3.Error otherwise."""
    try:
        problems = [row[0] for row in conn.execute("PRAGMA quick_check(5)")]
        if problems != ["ok"]:
            raise _fail(path, "corrupt (quick_check: " + "; ".join(map(str, problems)) + ")")
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        if not tables:
            conn.close()
            return None
        if "meta" not in tables:
            raise _fail(path, "a SQLite database, but not a bulkdl ledger (no meta table)")
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        version = int(row[0]) if row is not None and str(row[0]).isdigit() else None
        if version is None:
            raise _fail(path, "no valid schema_version in its meta table")
        if version > SCHEMA_VERSION:
            raise _fail(
                path,
                f"written by a newer bulkdl (schema {version}; this bulkdl {__version__} "
                f"reads up to {SCHEMA_VERSION}); upgrade bulkdl",
            )
    except BaseException:
        conn.close()
        raise
    return conn


class Ledger:
    """One ledger file. Open with :meth:`open` (or :func:`open_all` for read-only shards).

    Methods that name a series raise KeyError if it is unknown, ValueError for a state change
    the series' state forbids (or on a closed or read-only ledger), and AbortError when SQLite
    fails (disk full, I/O error, corruption found mid-run).
    """

    def __init__(self, conn: sqlite3.Connection, path: Path, *, readonly: bool) -> None:
        self.path = path
        self.readonly = readonly
        self._conn: sqlite3.Connection | None = conn
        self._lock = threading.RLock()
        self._run_id: str | None = None

    # -- opening and closing -------------------------------------------------------------------

    @classmethod
    def open(cls, dir_: Path, name: str = LEDGER_NAME) -> Ledger:
        """Open (creating if needed) ``dir_/.bulkdl/<name>`` for writing.

        Raises AbortError naming the file when it cannot be created or written, is not a SQLite
        database, fails ``PRAGMA quick_check``, is another program's database, or has a newer
        schema_version. Such a file is never written to.
        """
        folder = Path(dir_) / STATE_DIR
        path = folder / name
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise AbortError(
                f"ledger {path}: cannot create {folder} ({exc.strerror or exc})"
            ) from exc
        if path.exists():
            checked = _validate(path)
            if checked is not None:
                checked.close()
        else:
            try:
                # Created here rather than by SQLite (0644) so the user's umask alone decides.
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            except FileExistsError:
                pass
            except OSError as exc:
                raise AbortError(
                    f"ledger {path}: cannot create it ({exc.strerror or exc})"
                ) from exc
        try:
            conn = _connect(path, readonly=False)
        except sqlite3.Error as exc:
            raise AbortError(f"ledger {path}: cannot open it ({exc})") from exc
        ledger = cls(conn, path, readonly=False)
        try:
            ledger._initialize()
        except BaseException:
            conn.close()
            raise
        return ledger

    def _initialize(self) -> None:
        conn = self._live()
        try:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            conn.execute("PRAGMA synchronous = NORMAL")
            # 64 MiB of page cache rather than SQLite's 2: the UID index of a 200,000-series
            # ledger then stays in memory, where inserting or looking up a series by UID in
            # random order otherwise re-reads its pages (a quarter of a first plan's time).
            conn.execute(f"PRAGMA cache_size = {_CACHE_KIB}")
            conn.execute("PRAGMA foreign_keys = ON")
        except sqlite3.Error as exc:
            if _disk_trouble(exc):
                raise _disk_fail(self.path, exc) from exc
            raise AbortError(f"ledger {self.path}: cannot write it ({exc})") from exc
        if str(mode).lower() != "wal":
            log.warning("ledger %s: WAL unavailable here, using journal mode %s", self.path, mode)
        now = _now()
        with self._write(data=False) as tx:
            for statement in _SCHEMA:
                tx.execute(statement)
            tx.executemany(
                "INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)",
                [
                    ("schema_version", str(_BASE_VERSION)),
                    ("created_at", now),
                    ("bulkdl_version", __version__),
                    (_DATA_VERSION, uuid.uuid4().hex),
                ],
            )
            _migrate(tx)
            # Also proves now, not mid-run, that the file is writable.
            tx.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('last_opened_at', ?)", (now,)
            )

    def close(self) -> None:
        """Close the connection (idempotent); the WAL is checkpointed into the file."""
        with self._lock:
            if self._conn is not None:
                conn, self._conn = self._conn, None
                try:
                    conn.close()
                except sqlite3.Error as exc:
                    raise AbortError(f"ledger {self.path}: closing failed ({exc})") from exc

    def __enter__(self) -> Ledger:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Ledger({str(self.path)!r}, readonly={self.readonly})"

    # -- transactions ----------------------------------------------------------------------------

    def _live(self) -> sqlite3.Connection:
        if self._conn is None:
            raise ValueError(f"ledger {self.path} is closed")
        return self._conn

    @contextmanager
    def _transaction(self, begin: str, *, data: bool = False) -> Iterator[sqlite3.Connection]:
        with self._lock:
            conn = self._live()
            try:
                conn.execute(begin)
                changes = conn.total_changes
                try:
                    yield conn
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
                if data and conn.total_changes != changes:
                    conn.execute(
                        "UPDATE meta SET value = ? WHERE key = ?", (uuid.uuid4().hex, _DATA_VERSION)
                    )
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                if _disk_trouble(exc):
                    raise _disk_fail(self.path, exc) from exc
                raise AbortError(f"ledger {self.path}: {exc}") from exc

    def _write(self, *, data: bool = True) -> AbstractContextManager[sqlite3.Connection]:
        """A write transaction; unless ``data`` is False (it writes nothing the sidecars show:
        runs, folders, notes), one that changes any row draws a new data_version with it."""
        if self.readonly:
            raise ValueError(f"ledger {self.path} was opened read-only")
        # IMMEDIATE takes the write lock up front, so the busy timeout applies at BEGIN.
        return self._transaction("BEGIN IMMEDIATE", data=data)

    def _read(self) -> AbstractContextManager[sqlite3.Connection]:
        # One snapshot across the several queries of a read.
        return self._transaction("BEGIN")

    @staticmethod
    def _state(tx: sqlite3.Connection, uid: str) -> str:
        row = tx.execute("SELECT state FROM series WHERE uid = ?", (uid,)).fetchone()
        if row is None:
            raise KeyError(uid)
        return str(row[0])

    # -- runs ------------------------------------------------------------------------------------

    def begin_run(self, settings: Mapping[str, object]) -> str:
        """Record a run starting with ``settings`` (no secrets; any key naming one is redacted)."""
        run_id = str(uuid.uuid4())
        text = json.dumps(_redact(settings), sort_keys=True, default=str, ensure_ascii=False)
        with self._write(data=False) as tx:
            tx.execute(
                "INSERT INTO runs (run_id, started_at, settings_json) VALUES (?, ?, ?)",
                (run_id, _now(), text),
            )
        self._run_id = run_id
        return run_id

    def end_run(self, run_id: str, exit_code: int) -> None:
        """Record the end of run ``run_id`` (KeyError if unknown) with its exit code."""
        with self._write(data=False) as tx:
            cursor = tx.execute(
                "UPDATE runs SET finished_at = ?, exit_code = ? WHERE run_id = ?",
                (_now(), int(exit_code), run_id),
            )
            if cursor.rowcount == 0:
                raise KeyError(run_id)

    def runs(self) -> list[RunRecord]:
        """Every run recorded, oldest first."""
        with self._read() as tx:
            rows = tx.execute(
                "SELECT run_id, started_at, finished_at, settings_json, exit_code FROM runs"
                " ORDER BY started_at, run_id"
            ).fetchall()
        return [RunRecord(r[0], r[1], r[2], json.loads(r[3]), r[4]) for r in rows]

    def data_version(self) -> str | None:
        """A token that changes with every change to the series, files or licences recorded
        (what the sidecars show), or None for a ledger that keeps none (made by an older bulkdl
        and not opened for writing since)."""
        with self._read() as tx:
            row = tx.execute("SELECT value FROM meta WHERE key = ?", (_DATA_VERSION,)).fetchone()
        return None if row is None else f"{self.path.name}:{row[0]}"

    # -- series ----------------------------------------------------------------------------------

    def upsert_resolved(self, series: Sequence[Series]) -> None:
        """Add new series as pending; refresh the record and expected counts of known ones.

        A known series keeps its state, attempts and actual counts: a done series stays done (the
        caller compares expected with actual counts to decide on a refetch).
        """
        now, run_id = _now(), self._run_id
        with self._write() as tx:
            # A chunk at a time (200,000 records are 200 MB of JSON); an unchanged record (the
            # other columns come from it) is left as it was, unwritten: re-runs change few.
            empty = _count(tx) == 0
            for start in range(0, len(series), _CHUNK):
                chunk = series[start : start + _CHUNK]
                known: dict[str, str] = {}
                if not empty:
                    marks = ",".join("?" * len(chunk))
                    query = f"SELECT uid, record_json FROM series WHERE uid IN ({marks})"
                    known.update(tx.execute(query, [s.SeriesInstanceUID for s in chunk]))
                rows = []
                for s in chunk:
                    record = encode_record(s)
                    if known.get(s.SeriesInstanceUID) == record:
                        continue
                    known[s.SeriesInstanceUID] = record
                    rows.append(
                        (
                            s.SeriesInstanceUID,
                            s.ImageCount,
                            s.FileSize,
                            s.Collection,
                            s.PatientID,
                            s.StudyInstanceUID,
                            record,
                            run_id,
                            now,
                        )
                    )
                tx.executemany(_UPSERT, rows)

    def states(
        self, uids: Sequence[str] | None = None, *, records: bool = True
    ) -> dict[str, SeriesState]:
        """uid -> state of ``uids`` (those the ledger knows), or of every series when None.

        ``records=False`` leaves each state's ``record`` out (None): a fraction of the memory
        when only states and counts are wanted, as in planning 200,000 series.
        """
        columns = _STATE_COLUMNS if records else _STATE_COLUMNS.replace("record_json", "NULL")
        query = f"SELECT {columns} FROM series"
        with self._read() as tx:
            if uids is None:
                rows = tx.execute(query).fetchall()
            else:
                wanted = list(dict.fromkeys(uids))
                if len(wanted) >= 4 * _CHUNK and 4 * len(wanted) >= _count(tx):
                    # Most of the table: one pass over it is cheaper than a lookup per UID.
                    keep = set(wanted)
                    rows = [row for row in tx.execute(query) if row[0] in keep]
                else:
                    rows = []
                    for chunk in _chunks(wanted):
                        marks = ",".join("?" * len(chunk))
                        rows += tx.execute(f"{query} WHERE uid IN ({marks})", chunk).fetchall()
        return {row[0]: _state_of(row) for row in rows}

    def states_in(
        self, *states: State, fields: Sequence[str] = ()
    ) -> Iterator[tuple[SeriesState, tuple[Any, ...]]]:
        """(state, the values of ``fields`` in its record) of every series in one of ``states``,
        in the ledger's order, read a page at a time (each page a read of its own): a
        200,000-series ledger never sits in memory. The state leaves its record out; a value is
        as the record's JSON has it (dates ISO text, None when absent), picked out by SQLite
        rather than decoding every record. ValueError for a name that is no field of Series.
        """
        unknown = set(fields) - _RECORD_FIELDS
        if unknown:
            raise ValueError(f"not fields of Series: {', '.join(sorted(unknown))}")
        values = "".join(f", json_extract(record_json, '$.{name}')" for name in fields)
        columns = _STATE_COLUMNS.replace("record_json", "NULL")
        marks = ",".join("?" * len(states))
        query = (
            f"SELECT rowid, {columns}{values} FROM series"
            f" WHERE rowid > ? AND state IN ({marks}) ORDER BY rowid LIMIT {_PAGE}"
        )
        width = len(_STATE_COLUMNS.split(","))
        last = 0
        while True:
            with self._read() as tx:
                rows = tx.execute(query, (last, *states)).fetchall()
            if not rows:
                return
            last = rows[-1][0]
            for row in rows:
                yield _state_of(row[1 : width + 1]), row[width + 1 :]

    def record_attempt(self, uid: str, error: str | None) -> None:
        """Count one more attempt at ``uid``; ``error`` (None after a success) is its outcome."""
        with self._write() as tx:
            cursor = tx.execute(
                "UPDATE series SET attempts = attempts + 1, last_error = ?, updated_at = ?"
                " WHERE uid = ?",
                (error, _now(), uid),
            )
            if cursor.rowcount == 0:
                raise KeyError(uid)

    def mark_failed(self, uid: str, reason: str) -> None:
        """Fail ``uid`` with ``reason``. ValueError while it is placing: abandon it first."""
        with self._write() as tx:
            if self._state(tx, uid) == "placing":
                raise ValueError(f"series {uid} is being placed: abandon_placing it first")
            tx.execute(
                "UPDATE series SET state = 'failed', last_error = ?, updated_at = ? WHERE uid = ?",
                (reason, _now(), uid),
            )

    def summary(self) -> dict[str, int]:
        """How many series are in each state (every state listed, zeros included)."""
        with self._read() as tx:
            counts = dict(tx.execute("SELECT state, count(*) FROM series GROUP BY state"))
        return {state: int(counts.get(state, 0)) for state in STATES}

    def failures(self) -> list[SeriesState]:
        """The failed series, by UID."""
        with self._read() as tx:
            rows = tx.execute(
                f"SELECT {_STATE_COLUMNS} FROM series WHERE state = 'failed' ORDER BY uid"
            ).fetchall()
        return [_state_of(row) for row in rows]

    # -- placing ---------------------------------------------------------------------------------

    def begin_placing(self, uid: str, files: Sequence[PlacedFile]) -> None:
        """Before moving files in: mark ``uid`` placing and record ``files`` as its only files.

        A path recorded for the same SOPInstanceUID under another series passes to ``uid``. A
        path recorded for another instance raises ValueError, and nothing changes.
        """
        rows = [_file_row(uid, f) for f in files]
        with self._write() as tx:
            self._state(tx, uid)
            tx.execute("DELETE FROM files WHERE series_uid = ?", (uid,))
            written = tx.executemany(_INSERT_FILE, rows).rowcount
            if written != len(rows):
                raise ValueError(f"series {uid}: {self._clashes(tx, uid, files)}")
            tx.execute(
                "UPDATE series SET state = 'placing', updated_at = ? WHERE uid = ?", (_now(), uid)
            )

    @staticmethod
    def _clashes(tx: sqlite3.Connection, uid: str, files: Sequence[PlacedFile]) -> str:
        planned: dict[str, str] = {}
        for f in files:
            if planned.setdefault(f.path, f.SOPInstanceUID) != f.SOPInstanceUID:
                return f"two instances planned at {f.path}"
        for f in files:
            row = tx.execute(
                "SELECT series_uid, sop_uid FROM files WHERE path = ?", (f.path,)
            ).fetchone()
            if row is not None and row[1] != f.SOPInstanceUID:
                return f"{f.path} already holds instance {row[1]} of series {row[0]}"
        return "planned paths clash"  # pragma: no cover - one of the above always applies

    def finish_placing(
        self,
        uid: str,
        *,
        images: int,
        bytes_: int,
        incomplete: bool,
        sop_class_uid: str | None,
    ) -> None:
        """After the moves: ``uid`` is done (or incomplete) with these actual counts."""
        state = "incomplete" if incomplete else "done"
        with self._write() as tx:
            if (current := self._state(tx, uid)) != "placing":
                raise ValueError(f"series {uid} is {current}, not placing")
            now = _now()
            tx.execute(
                "UPDATE series SET state = ?, actual_images = ?, actual_bytes = ?,"
                " sop_class_uid = ?, completed_at = ?, updated_at = ? WHERE uid = ?",
                (state, images, bytes_, sop_class_uid, now, now, uid),
            )

    def abandon_placing(self, uid: str) -> list[PlacedFile]:
        """Take back a placement a crash interrupted: its planned files, now forgotten.

        The series returns to pending; the caller deletes the returned files from the tree. A
        series that is not placing is left alone and [] returned.
        """
        with self._write() as tx:
            if self._state(tx, uid) != "placing":
                return []
            placed = self._files(tx, uid)
            self._forget_files(tx, uid, "placement abandoned after an interruption")
        return placed

    def mark_missing(self, uid: str, reason: str) -> None:
        """Files of ``uid`` left the tree (or are stale): forget them and make it pending again."""
        with self._write() as tx:
            if self._state(tx, uid) == "placing":
                raise ValueError(f"series {uid} is being placed: abandon_placing it instead")
            self._forget_files(tx, uid, reason)

    @staticmethod
    def _forget_files(tx: sqlite3.Connection, uid: str, reason: str) -> None:
        tx.execute("DELETE FROM files WHERE series_uid = ?", (uid,))
        tx.execute(
            "UPDATE series SET state = 'pending', last_error = ?, actual_images = NULL,"
            " actual_bytes = NULL, completed_at = NULL, updated_at = ? WHERE uid = ?",
            (reason, _now(), uid),
        )

    # -- files -----------------------------------------------------------------------------------

    @staticmethod
    def _files(tx: sqlite3.Connection, uid: str | None) -> list[PlacedFile]:
        query = f"SELECT {_FILE_COLUMNS} FROM files"
        if uid is None:
            rows = tx.execute(f"{query} ORDER BY path")
        else:
            rows = tx.execute(f"{query} WHERE series_uid = ? ORDER BY path", (uid,))
        return [PlacedFile(*row) for row in rows]

    def files(self, uid: str | None = None) -> list[PlacedFile]:
        """The recorded files of series ``uid`` (or of every series), by path."""
        with self._read() as tx:
            return self._files(tx, uid)

    def owner_of(self, path: str) -> tuple[str, str] | None:
        """(series UID, SOPInstanceUID) recorded at relative POSIX ``path``, or None."""
        with self._read() as tx:
            row = tx.execute(
                "SELECT series_uid, sop_uid FROM files WHERE path = ?", (path,)
            ).fetchone()
        return None if row is None else (row[0], row[1])

    def files_by_series(self) -> dict[str, list[PlacedFile]]:
        """series UID -> its recorded files (by path), in one query."""
        out: dict[str, list[PlacedFile]] = {}
        with self._read() as tx:
            rows = tx.execute(
                f"SELECT series_uid, {_FILE_COLUMNS} FROM files ORDER BY series_uid, path"
            )
            for series_uid, *rest in rows:
                out.setdefault(series_uid, []).append(PlacedFile(*rest))
        return out

    def series_folders(self) -> dict[str, str]:
        """series UID -> the deepest tree folder holding all its recorded files (relative POSIX,
        "" = the root), without reading every file: the first and last path in sort order share
        the folders that every path between them shares."""
        with self._read() as tx:
            rows = tx.execute(
                "SELECT series_uid, min(path), max(path) FROM files GROUP BY series_uid"
            )
            return {uid: _common_folder(first, last) for uid, first, last in rows}

    def files_under(self, folder: str) -> list[PlacedFile]:
        """The recorded files directly inside tree folder ``folder`` (relative POSIX, "" = root)."""
        prefix = f"{folder}/" if folder else ""
        with self._read() as tx:
            # '/' + 1 == '0': the range is every path starting with the prefix, by the index
            rows = tx.execute(
                f"SELECT {_FILE_COLUMNS} FROM files WHERE path >= ? AND path < ?",
                (prefix, f"{folder}0" if folder else "\U0010ffff"),
            )
            return [PlacedFile(*row) for row in rows if "/" not in row[0][len(prefix) :]]

    def archives_under(self, folder: str) -> dict[str, list[str]]:
        """Archives (``--pack``) directly inside tree folder ``folder`` -> their members' paths."""
        prefix = f"{folder}/" if folder else ""
        found: dict[str, list[str]] = {}
        with self._read() as tx:
            rows = tx.execute(
                "SELECT path, archive FROM files WHERE path >= ? AND path < ?"
                " AND archive IS NOT NULL",
                (prefix, f"{folder}0" if folder else "\U0010ffff"),
            )
            for path, archive in rows:
                if "/" not in archive[len(prefix) :]:
                    found.setdefault(archive, []).append(path)
        return found

    def archive_owner(self, archive: str) -> str | None:
        """The series whose instances the ledger records inside archive ``archive``, or None."""
        with self._read() as tx:
            row = tx.execute(
                "SELECT series_uid FROM files WHERE path >= ? AND path < ? AND archive = ? LIMIT 1",
                (f"{archive}/", f"{archive}0", archive),
            ).fetchone()
        return None if row is None else str(row[0])

    def owners(self, paths: Sequence[str]) -> dict[str, str]:
        """path -> series UID for those of ``paths`` the ledger records."""
        out: dict[str, str] = {}
        with self._read() as tx:
            for chunk in _chunks(list(paths)):
                marks = ",".join("?" * len(chunk))
                query = f"SELECT path, series_uid FROM files WHERE path IN ({marks})"
                out.update(dict(tx.execute(query, list(chunk))))
        return out

    def record_folders(self, folders: Sequence[tuple[str, int]]) -> None:
        """Remember each (folder, mtime_ns) right after files were placed in it."""
        with self._write(data=False) as tx:
            tx.executemany(
                "INSERT INTO folders (path, mtime_ns) VALUES (?, ?)"
                " ON CONFLICT (path) DO UPDATE SET mtime_ns = excluded.mtime_ns",
                folders,
            )

    def folders(self) -> dict[str, int]:
        """Every recorded tree folder -> its mtime_ns after bulkdl last placed files in it."""
        with self._read() as tx:
            return dict(tx.execute("SELECT path, mtime_ns FROM folders"))

    # -- licences --------------------------------------------------------------------------------

    def set_license(self, collection: str, text: str, *, series_uids: Sequence[str] = ()) -> None:
        """Store ``collection``'s licence text; ``series_uids`` are marked as covered by it."""
        with self._write() as tx:
            tx.execute(
                "INSERT INTO licenses (collection, text) VALUES (?, ?)"
                " ON CONFLICT (collection) DO UPDATE SET text = excluded.text",
                (collection, text),
            )
            tx.executemany(
                "UPDATE series SET license_collection = ? WHERE uid = ?",
                [(collection, uid) for uid in series_uids],
            )

    def licenses(self) -> dict[str, str]:
        """collection -> licence text."""
        with self._read() as tx:
            return dict(tx.execute("SELECT collection, text FROM licenses ORDER BY collection"))

    # -- organize --------------------------------------------------------------------------------
    # ``bulkdl organize``: series placed from files already on disk, and trees re-laid in place.

    _RELOCATING = "organize.relocating"  # meta key: the renames of one series, until recorded

    def settle_placed(
        self, uid: str, files: Sequence[PlacedFile], *, done: bool, sop_class_uid: str | None
    ) -> None:
        """Record ``files`` as the only files of ``uid``, in one transaction, whatever its state:
        done with their count and bytes when ``done``, else pending (the files stay recorded).

        Organize settles a series a crash left placing this way: the files that reached the
        tree are kept, none is deleted (a download can fetch a series again; organize cannot
        bring back a source it moved). Raises KeyError for an unknown series, ValueError
        (nothing changed) when a path is recorded for another instance.
        """
        rows = [_file_row(uid, f) for f in files]
        now = _now()
        with self._write() as tx:
            self._state(tx, uid)
            tx.execute("DELETE FROM files WHERE series_uid = ?", (uid,))
            if tx.executemany(_INSERT_FILE, rows).rowcount != len(rows):
                raise ValueError(f"series {uid}: {self._clashes(tx, uid, files)}")
            if done:
                tx.execute(
                    "UPDATE series SET state = 'done', last_error = NULL, actual_images = ?,"
                    " actual_bytes = ?, sop_class_uid = coalesce(?, sop_class_uid),"
                    " completed_at = ?, updated_at = ? WHERE uid = ?",
                    (len(files), sum(f.size for f in files), sop_class_uid, now, now, uid),
                )
            else:
                tx.execute(
                    "UPDATE series SET state = 'pending', last_error = ?, actual_images = NULL,"
                    " actual_bytes = NULL, completed_at = NULL, updated_at = ? WHERE uid = ?",
                    (f"interrupted while placing; {len(files)} file(s) kept", now, uid),
                )

    def begin_relocation(self, uid: str, moves: Sequence[tuple[str, str]]) -> None:
        """Note, before renaming them, that files of ``uid`` move (old path, new path).

        Until :meth:`finish_relocation` the note says which renames may have happened, so a run
        that died among them can finish them (:meth:`pending_relocation`). ValueError when
        another relocation is still noted.
        """
        note = json.dumps({"uid": uid, "moves": [list(m) for m in moves]}, ensure_ascii=False)
        with self._write(data=False) as tx:
            self._state(tx, uid)
            row = tx.execute("SELECT 1 FROM meta WHERE key = ?", (self._RELOCATING,)).fetchone()
            if row is not None:
                raise ValueError("an earlier relocation is unfinished: finish it first")
            tx.execute("INSERT INTO meta (key, value) VALUES (?, ?)", (self._RELOCATING, note))

    def pending_relocation(self) -> tuple[str, list[tuple[str, str]]] | None:
        """(series UID, moves) of a relocation noted and not finished, or None."""
        with self._read() as tx:
            row = tx.execute("SELECT value FROM meta WHERE key = ?", (self._RELOCATING,)).fetchone()
        if row is None:
            return None
        note = json.loads(row[0])
        return str(note["uid"]), [(str(old), str(new)) for old, new in note["moves"]]

    def finish_relocation(
        self, uid: str, moves: Sequence[tuple[str, str]], folders: Sequence[tuple[str, int]]
    ) -> None:
        """After the renames, in one transaction: the recorded paths of ``uid`` follow ``moves``,
        each (folder, mtime_ns) is remembered as :meth:`record_folders` does, and the note of
        :meth:`begin_relocation` is gone. ValueError (nothing changed) when a new path is
        recorded for another series."""
        with self._write() as tx:
            self._state(tx, uid)
            # Through temporary paths ("/" + new: a recorded path is relative, never so), so a
            # move onto a path another move of the batch leaves never meets the primary key.
            parked = [(f"/{new}", old, uid) for old, new in moves if old != new]
            tx.executemany("UPDATE files SET path = ? WHERE path = ? AND series_uid = ?", parked)
            try:
                tx.execute(
                    "UPDATE files SET path = substr(path, 2) WHERE series_uid = ?"
                    " AND substr(path, 1, 1) = '/'",
                    (uid,),
                )
            except sqlite3.IntegrityError as exc:
                raise ValueError(f"series {uid}: a new path is another series' file") from exc
            tx.executemany(
                "INSERT INTO folders (path, mtime_ns) VALUES (?, ?)"
                " ON CONFLICT (path) DO UPDATE SET mtime_ns = excluded.mtime_ns",
                folders,
            )
            tx.execute("DELETE FROM meta WHERE key = ?", (self._RELOCATING,))


def open_all(dir_: Path) -> list[Ledger]:
    """Every ``ledger*.sqlite`` under ``dir_/.bulkdl/``, checked and opened read-only, by name.

    [] when there is none. Raises AbortError as :meth:`Ledger.open` does (after closing the
    ledgers already opened).
    """
    folder = Path(dir_) / STATE_DIR
    opened: list[Ledger] = []
    try:
        for path in sorted(folder.glob("ledger*.sqlite")):
            conn = _validate(path)
            if conn is None:
                continue  # an empty file: a run that died before writing anything
            _read_as_current(conn)
            conn.execute("PRAGMA query_only = ON")
            opened.append(Ledger(conn, path, readonly=True))
    except BaseException:
        for ledger in opened:
            ledger.close()
        raise
    return opened


def merged_states(ledgers: Iterable[Ledger]) -> dict[str, SeriesState]:
    """uid -> state across shard ledgers: the furthest state wins (done in any shard is done),
    with its counts and record, and the attempts of every shard added up."""
    merged: dict[str, SeriesState] = {}
    for ledger in ledgers:
        for uid, state in ledger.states().items():
            seen = merged.get(uid)
            if seen is None:
                merged[uid] = state
                continue
            best = state if _RANK[state.state] > _RANK[seen.state] else seen
            merged[uid] = replace(
                best,
                attempts=seen.attempts + state.attempts,
                record_json=best.record_json or seen.record_json or state.record_json,
            )
    return merged
