"""Dataset specs and ``bulkdl build``: a named dataset, its tree, and the lock that pins it.

A spec is a TOML file (examples in ``configs/datasets/``): ``name``, ``description``, ``lock``
(where its lock lives, relative to the spec; default ``<spec>.lock`` beside it), a ``[select]``
table of ``manifests`` (relative to the spec), inline ``series`` UIDs and ``[[select.query]]``
tables of getSeries filters (all joined, each series once), and a ``[download]`` table of the
settings of ``configs/download.toml`` (layout, API URL, concurrency...). Settings layer as
defaults < ``--config`` < ``BULKDL_*`` environment < the spec < flags: the spec describes the
dataset, so its layout wins over the environment. :func:`build` runs one download: when the lock
exists it pins the series and their content (every file checked as it arrives) and the finished
tree must match it; otherwise the spec's selection is resolved, downloaded, and the tree's lock
written. :func:`load_spec` raises InputError naming ``spec:line``. Network and disk I/O.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from functools import partial
from pathlib import Path
from typing import Final

import anyio

from bulkdl.api import open_source, read_inputs, run_download
from bulkdl.audit import tree_lock
from bulkdl.config import Settings, load_settings, settings_in_table
from bulkdl.errors import ExitCode, InputError
from bulkdl.layout import resolve_layout
from bulkdl.lockdiff import LockDiff, diff_locks
from bulkdl.lockfile import Lock, read_lock, write_lock
from bulkdl.pipeline import RunResult, Selection
from bulkdl.progress import Reporter
from bulkdl.records import check_uid
from bulkdl.sources.nbia import SeriesQuery

_TOP: Final = frozenset({"name", "description", "lock", "select", "download"})
_SELECT: Final = frozenset({"manifests", "series", "query"})
_FILTERS: Final = tuple(f.name for f in fields(SeriesQuery))
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
#: Makes the error for a key of the spec: (key, problem) -> InputError naming spec:line.
_Fail = Callable[[str, str], InputError]


@dataclass(frozen=True, slots=True)
class DatasetSpec:
    """A dataset spec as read from ``path``; ``settings`` are its checked ``[download]`` values."""

    path: Path
    name: str
    description: str | None
    lock: Path
    manifests: tuple[Path, ...]
    series: tuple[str, ...]
    queries: tuple[SeriesQuery, ...]
    settings: Mapping[str, object]


def _where(path: Path, text: str, key: str) -> str:
    quoted = re.escape(key)
    found = re.search(rf"^[ \t]*\[*[ \t]*(?:[\w.-]*\.)?{quoted}[ \t]*[=\]]", text, re.MULTILINE)
    return f"{path}:{text.count(chr(10), 0, found.start()) + 1}" if found else str(path)


def load_spec(path: Path) -> DatasetSpec:
    """Read and check the dataset spec at ``path``.

    Raises InputError naming the file (and line) for unreadable or invalid TOML, unknown keys,
    a bad name, UID or filter, an empty query, or a spec that selects nothing.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not UTF-8 text"
        raise InputError(f"{path}: cannot read the dataset spec ({why})") from exc
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        line = re.search(r"at line (\d+)", str(exc))
        raise InputError(f"{path}:{line.group(1) if line else '?'}: invalid TOML: {exc}") from exc
    except RecursionError as exc:
        raise InputError(f"{path}: invalid TOML: nested too deeply") from exc

    def fail(key: str, problem: str) -> InputError:
        return InputError(f"{_where(path, text, key)}: {problem}")

    for key in doc:
        if key not in _TOP:
            raise fail(key, f"unknown key {key!r} (known: {', '.join(sorted(_TOP))})")
    name = doc.get("name", path.stem)
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise fail("name", f"name must be letters, digits, '.', '_' or '-' (got {name!r})")
    description = doc.get("description")
    if description is not None and not isinstance(description, str):
        raise fail("description", "description must be a string")
    lock_value = doc.get("lock", f"{path.stem}.lock")
    if not isinstance(lock_value, str) or not lock_value.strip():
        raise fail("lock", "lock must be a path (relative to the spec)")
    select = doc.get("select", {})
    if not isinstance(select, dict):
        raise fail("select", "select must be a table ([select])")
    for key in select:
        if key not in _SELECT:
            raise fail(
                key, f"unknown key {key!r} in [select] (known: {', '.join(sorted(_SELECT))})"
            )
    manifests = tuple(path.parent / m for m in _strings(select, "manifests", fail))
    series = tuple(_uid(u, fail) for u in _strings(select, "series", fail))
    queries = _queries(select.get("query", []), fail)
    if not (manifests or series or queries):
        raise fail("select", "the spec selects nothing: give [select] manifests, series or query")
    download = doc.get("download", {})
    if not isinstance(download, dict):
        raise fail("download", "download must be a table ([download])")
    settings = settings_in_table(download, path, text)
    return DatasetSpec(
        path, name, description, path.parent / lock_value, manifests, series, queries, settings
    )


def _strings(table: Mapping[str, object], key: str, fail: _Fail) -> list[str]:
    value = table.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise fail(key, f"{key} must be a list of strings")
    return [str(v).strip() for v in value]


def _uid(text: str, fail: _Fail) -> str:
    try:
        return check_uid(text, "SeriesInstanceUID")
    except InputError as exc:
        raise fail("series", str(exc)) from None


def _queries(value: object, fail: _Fail) -> tuple[SeriesQuery, ...]:
    tables = [value] if isinstance(value, dict) else value
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise fail("query", "query must be a table or tables ([[select.query]])")
    out = []
    for table in tables:
        assert isinstance(table, dict)
        filters: dict[str, str] = {}
        for key, text in table.items():
            name = str(key).replace("-", "_")
            if name not in _FILTERS:
                raise fail(str(key), f"unknown filter {key!r} (known: {', '.join(_FILTERS)})")
            if not isinstance(text, str) or not text.strip():
                raise fail(str(key), f"filter {key!r} must be a non-empty string")
            filters[name] = text.strip()
        if not filters:
            raise fail("query", "an empty query would select the whole archive: give filters")
        out.append(SeriesQuery(**filters))
    return tuple(out)


def spec_settings(
    spec: DatasetSpec,
    flags: Mapping[str, object | None],
    config_file: Path | None,
    env: Mapping[str, str],
) -> Settings:
    """Settings for building ``spec``: defaults < ``config_file`` < ``env`` < the spec's
    ``[download]`` < ``flags``; the output folder defaults to ``./<name>``. Raises InputError."""
    given = {k: v for k, v in flags.items() if v is not None}
    settings = load_settings(flags={**spec.settings, **given}, config_file=config_file, env=env)
    if settings.out is None:
        settings = replace(settings, out=Path(spec.name))
    return settings


# --------------------------------------------------------------------------- building


@dataclass(frozen=True, slots=True)
class BuildResult:
    """A build: the download's result, the tree's lock, and (when pinned) how it differs."""

    run: RunResult
    lock_path: Path
    pinned: bool
    lock: Lock | None = None
    diff: LockDiff | None = None
    left_out: Mapping[str, str] | None = None

    @property
    def exit_code(self) -> ExitCode:
        """The download's status; 1 too when the tree does not match its lock."""
        if self.run.exit_code != ExitCode.OK:
            return self.run.exit_code
        if self.left_out or (self.diff is not None and not _matches(self.diff)):
            return ExitCode.SOME_FAILED
        return ExitCode.OK


def _matches(diff: LockDiff) -> bool:
    return diff.identical and diff.moved == 0


async def selected_uids(
    spec: DatasetSpec, settings: Settings, *, interactive: bool = False
) -> list[str]:
    """The spec's series UIDs: its manifests', its inline ones, then each query's; each once.

    Raises ManifestError / InputError (a lock file among the manifests; nothing selected), and
    the source's errors for the queries.
    """
    uids: list[str] = []
    for manifest in spec.manifests:
        found, lock = read_inputs([str(manifest)])
        if lock is not None:
            raise InputError(
                f"{spec.path}: {manifest} is a lock file: give it with --lock (or as 'lock')"
            )
        uids += found
    uids += spec.series
    if spec.queries:
        async with open_source(settings, interactive=interactive) as (source, _):
            for query in spec.queries:
                uids += [s.SeriesInstanceUID for s in await source.search(query)]
    if not uids:
        raise InputError(f"{spec.path}: the spec selects no series")
    return list(dict.fromkeys(uids))


async def build(
    spec: DatasetSpec,
    settings: Settings,
    reporter: Reporter,
    *,
    lock_path: Path | None = None,
    update: bool = False,
    interactive: bool = False,
    handle_signals: bool = False,
) -> BuildResult:
    """Download ``spec`` into ``settings.out`` and lock or check the tree (module docstring).

    ``update`` ignores an existing lock and rewrites it. Raises InputError (bad spec or lock, a
    layout other than the lock's), ManifestError, AbortError, AuthError; per-series failures
    are in the result, and no lock is written unless every series was placed.
    """
    assert settings.out is not None
    path = lock_path or spec.lock
    pinned = None if update or not path.exists() else read_lock(path)
    if pinned is not None:
        layout = resolve_layout(settings.layout).template
        if pinned.layout is not None and pinned.layout != layout:
            raise InputError(
                f"{path}: the lock's tree has layout {pinned.layout!r}, this build {layout!r}: "
                "the tree would not match (use --update to lock it anew)"
            )
        selection = Selection(uids=pinned.uids, pinned=pinned)
    else:
        uids = await selected_uids(spec, settings, interactive=interactive)
        selection = Selection(uids=tuple(uids))
    run = await run_download(
        settings, selection, reporter, handle_signals=handle_signals, interactive=interactive
    )
    if run.exit_code != ExitCode.OK or settings.dry_run:
        return BuildResult(run, path, pinned is not None)
    made = await anyio.to_thread.run_sync(
        partial(tree_lock, settings.out, only=selection.uids, name=spec.name)
    )
    if made.left_out:
        return BuildResult(run, path, pinned is not None, made.lock, left_out=made.left_out)
    if pinned is not None:
        diff = diff_locks(pinned, made.lock)
        return BuildResult(run, path, True, made.lock, diff)
    await anyio.to_thread.run_sync(write_lock, made.lock, path)
    return BuildResult(run, path, False, made.lock)
