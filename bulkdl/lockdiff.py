"""What differs: two locks, or a lock and the series an archive serves or a tree holds.

Instances are matched by SOPInstanceUID and compared by size and hashes (SHA-256 only where
both sides know it, since a ledger written before SHA-256 was kept lacks it); a path differing
alone is a layout difference (``moved``), not a content one. :func:`compare_series` words the
differences of one series for a failure message, naming each instance (the first
:data:`~bulkdl.lockfile.MAX_NAMED`, then "and N more"); :func:`diff_locks` and
:func:`diff_text` / :func:`diff_json` serve ``bulkdl diff``. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from bulkdl.lockfile import MAX_NAMED, SERIES_TEXT, Lock, LockedInstance, LockedSeries
from bulkdl.progress import human_bytes
from bulkdl.records import Series


@dataclass(frozen=True, slots=True)
class InstanceDiff:
    """How two listings of one series' instances differ (matched by SOPInstanceUID)."""

    added: tuple[LockedInstance, ...] = ()
    removed: tuple[LockedInstance, ...] = ()
    changed: tuple[tuple[LockedInstance, LockedInstance], ...] = ()
    moved: tuple[tuple[LockedInstance, LockedInstance], ...] = ()

    @property
    def same_content(self) -> bool:
        """No instance added, removed or changed (paths aside)."""
        return not (self.added or self.removed or self.changed)


def compare_instances(old: Iterable[LockedInstance], new: Iterable[LockedInstance]) -> InstanceDiff:
    """What changed from ``old`` to ``new``: sizes and hashes compared, SHA-256 only where both
    sides know it; a path compared only where both sides have one."""
    before = {i.SOPInstanceUID: i for i in old}
    after = {i.SOPInstanceUID: i for i in new}
    changed: list[tuple[LockedInstance, LockedInstance]] = []
    moved: list[tuple[LockedInstance, LockedInstance]] = []
    for sop in sorted(before.keys() & after.keys()):
        a, b = before[sop], after[sop]
        if _content_differs(a, b):
            changed.append((a, b))
        elif a.path is not None and b.path is not None and a.path != b.path:
            moved.append((a, b))
    return InstanceDiff(
        added=tuple(after[s] for s in sorted(after.keys() - before.keys())),
        removed=tuple(before[s] for s in sorted(before.keys() - after.keys())),
        changed=tuple(changed),
        moved=tuple(moved),
    )


def _content_differs(a: LockedInstance, b: LockedInstance) -> bool:
    if a.size != b.size or a.md5.lower() != b.md5.lower():
        return True
    return bool(a.sha256 and b.sha256 and a.sha256.lower() != b.sha256.lower())


def change_text(a: LockedInstance, b: LockedInstance) -> str:
    """``size 100 -> 104, md5 and sha256 differ`` for one changed instance."""
    parts = [f"size {a.size:,} -> {b.size:,}"] if a.size != b.size else []
    hashes = [
        name
        for name, x, y in (("md5", a.md5, b.md5), ("sha256", a.sha256, b.sha256))
        if x and y and x.lower() != y.lower()
    ]
    if hashes:
        parts.append(" and ".join(hashes) + (" differs" if len(hashes) == 1 else " differ"))
    return ", ".join(parts)


def count_changes(locked: LockedSeries, series: Series) -> list[str]:
    """``ImageCount 5 -> 4``-style sentences where the archive's counts differ from the lock's
    (a count unknown on either side is not compared)."""
    out = []
    for name in ("ImageCount", "FileSize"):
        want, got = getattr(locked, name), getattr(series, name)
        if want is not None and got is not None and want != got:
            out.append(f"{name} {want:,} in the lock, {got:,} on the server")
    return out


def compare_series(
    locked: LockedSeries, actual: Sequence[LockedInstance], *, here: str = "on the server"
) -> list[str]:
    """Why ``actual`` is not the content ``locked`` records, as short sentences naming each
    differing instance ([] when it is, or when the lock lists no instances but the counts
    agree). ``here`` words where ``actual`` is (``on the server``, ``in the tree``)."""
    if locked.instances is None:
        problems = []
        size = sum(i.size for i in actual)
        if locked.ImageCount is not None and locked.ImageCount != len(actual):
            problems.append(f"{len(actual):,} images {here}, {locked.ImageCount:,} in the lock")
        if locked.FileSize is not None and locked.FileSize != size:
            problems.append(f"{size:,} bytes {here}, {locked.FileSize:,} in the lock")
        return problems
    diff = compare_instances(locked.instances, actual)
    lines = [f"instance {a.SOPInstanceUID}: {change_text(a, b)}" for a, b in diff.changed]
    lines += [f"instance {i.SOPInstanceUID}: in the lock, not {here}" for i in diff.removed]
    lines += [f"instance {i.SOPInstanceUID}: {here}, not in the lock" for i in diff.added]
    if len(lines) > MAX_NAMED:
        lines = [*lines[:MAX_NAMED], f"and {len(lines) - MAX_NAMED:,} more"]
    return lines


@dataclass(frozen=True, slots=True)
class SeriesChange:
    """One series in both locks whose record or content differs."""

    uid: str
    fields: tuple[str, ...]
    instances: InstanceDiff


@dataclass(frozen=True, slots=True)
class LockDiff:
    """What differs between two locks: series only in ``b`` (added), only in ``a`` (removed),
    in both but different (changed), and instances at other paths only (``moved``, a layout
    difference that leaves the content the same)."""

    added: tuple[LockedSeries, ...]
    removed: tuple[LockedSeries, ...]
    changed: tuple[SeriesChange, ...]
    moved: int

    @property
    def identical(self) -> bool:
        """The same series with the same content (paths aside)."""
        return not (self.added or self.removed or self.changed)


def diff_locks(a: Lock, b: Lock) -> LockDiff:
    """Series and instances added, removed or changed from ``a`` to ``b``. A series listing no
    instances on one side is compared by its record and counts only."""
    changed: list[SeriesChange] = []
    moved = 0
    for old in a.series:
        new = b.get(old.SeriesInstanceUID)
        if new is None:
            continue
        fields_ = [
            f"{name} {getattr(old, name)!s} -> {getattr(new, name)!s}"
            for name in (*SERIES_TEXT, "ImageCount", "FileSize")
            if getattr(old, name) != getattr(new, name)
        ]
        instances = InstanceDiff()
        if old.instances is not None and new.instances is not None:
            instances = compare_instances(old.instances, new.instances)
            moved += len(instances.moved)
        if fields_ or not instances.same_content:
            changed.append(SeriesChange(old.SeriesInstanceUID, tuple(fields_), instances))
    return LockDiff(
        added=tuple(s for s in b.series if a.get(s.SeriesInstanceUID) is None),
        removed=tuple(s for s in a.series if b.get(s.SeriesInstanceUID) is None),
        changed=tuple(changed),
        moved=moved,
    )


# --------------------------------------------------------------------------- rendering


def _series_line(sign: str, s: LockedSeries) -> str:
    where = "/".join(x for x in (s.Collection, s.PatientID) if x)
    counts = f"{s.ImageCount if s.ImageCount is not None else '?'} images"
    if s.FileSize is not None:
        counts += f", {human_bytes(s.FileSize)}"
    return f"  {sign} {s.SeriesInstanceUID}" + (f" ({where})" if where else "") + f": {counts}"


def diff_text(diff: LockDiff, a_name: str, b_name: str, *, limit: int = 50) -> str:
    """``diff`` for people: series added (+), removed (-) and changed (~) with their instances,
    at most ``limit`` instances named per series; a verdict line last."""
    lines: list[str] = []
    if diff.added:
        lines.append(f"series only in {b_name}: {len(diff.added):,}")
        lines += [_series_line("+", s) for s in diff.added]
    if diff.removed:
        lines.append(f"series only in {a_name}: {len(diff.removed):,}")
        lines += [_series_line("-", s) for s in diff.removed]
    if diff.changed:
        lines.append(f"series changed: {len(diff.changed):,}")
    for change in diff.changed:
        d = change.instances
        tally = (("added", d.added), ("removed", d.removed), ("changed", d.changed))
        counts = [f"{len(items):,} {word}" for word, items in tally if items]
        parts = [*change.fields]
        if counts:
            parts.append("instances: " + ", ".join(counts))
        summary = ", ".join(parts)
        lines.append(f"  ~ {change.uid}: {summary}")
        rows = [f"      + {i.SOPInstanceUID}" for i in d.added]
        rows += [f"      - {i.SOPInstanceUID}" for i in d.removed]
        rows += [f"      ~ {a.SOPInstanceUID}: {change_text(a, b)}" for a, b in d.changed]
        lines += rows[:limit]
        if len(rows) > limit:
            lines.append(f"      and {len(rows) - limit:,} more")
    if diff.moved:
        lines.append(f"{diff.moved:,} file(s) at other tree paths (another layout; same content)")
    lines.append(
        "identical: the same series and instances" if diff.identical else "the locks differ"
    )
    return "\n".join(lines) + "\n"


def _instance_data(i: LockedInstance) -> dict[str, object]:
    return {"SOPInstanceUID": i.SOPInstanceUID, "size": i.size, "md5": i.md5, "sha256": i.sha256}


def diff_json(diff: LockDiff) -> dict[str, object]:
    """``diff`` as plain data for ``--json``."""
    return {
        "identical": diff.identical,
        "added": [s.SeriesInstanceUID for s in diff.added],
        "removed": [s.SeriesInstanceUID for s in diff.removed],
        "changed": [
            {
                "SeriesInstanceUID": c.uid,
                "fields": list(c.fields),
                "instances_added": [_instance_data(i) for i in c.instances.added],
                "instances_removed": [_instance_data(i) for i in c.instances.removed],
                "instances_changed": [
                    {"before": _instance_data(a), "after": _instance_data(b)}
                    for a, b in c.instances.changed
                ],
            }
            for c in diff.changed
        ],
        "moved": diff.moved,
    }
