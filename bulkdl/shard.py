"""Which series belong to one task of a download split N ways (``--shard K/N``, a Slurm array).

Series ``uid`` belongs to shard ``k`` of ``n`` when the first 8 bytes of ``SHA-256(uid)`` (UTF-8),
read as a big-endian unsigned integer, are ``k`` modulo ``n``. The hash is fixed by the standard,
not by Python (``hash()`` is salted per process), so the partition is the same on every run,
machine and Python version; the ``n`` shards are disjoint and together cover every series, and
they are balanced to within sampling noise (SHA-256 output is uniform). ``k`` counts from 0, as
Slurm's ``--array=0-(N-1)`` does. :func:`parse_shard` reads ``K/N``, or ``slurm`` for the
running array task's own shard from ``SLURM_ARRAY_TASK_ID`` and ``SLURM_ARRAY_TASK_COUNT``
(``SLURM_ARRAY_TASK_MIN``/``MAX`` when the count is missing). Each shard keeps its own ledger,
``ledger-<K>of<N>.sqlite``, so tasks on different nodes never write one SQLite file. Pure.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Final, TypeVar

from bulkdl.errors import InputError

#: The largest N accepted: far beyond any job array (Slurm's MaxArraySize defaults to 1001).
MAX_SHARDS: Final = 1_000_000
_SPEC = re.compile(r"\s*(\d+)\s*/\s*(\d+)\s*")
T = TypeVar("T")


def shard_index(uid: str, count: int) -> int:
    """The shard (0 to ``count - 1``) series ``uid`` belongs to."""
    digest = hashlib.sha256(uid.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % count


@dataclass(frozen=True, slots=True)
class Shard:
    """Shard ``index`` of ``count`` (0 <= index < count)."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if not 1 <= self.count <= MAX_SHARDS:
            raise InputError(f"--shard: N must be 1 to {MAX_SHARDS:,}, not {self.count}")
        if not 0 <= self.index < self.count:
            raise InputError(
                f"--shard {self.index}/{self.count}: K counts from 0, so it must be "
                f"0 to {self.count - 1}"
            )

    def owns(self, uid: str) -> bool:
        """Whether series ``uid`` is this shard's."""
        return self.count == 1 or shard_index(uid, self.count) == self.index

    def pick(self, items: Iterable[T], uid_of: Callable[[T], str]) -> list[T]:
        """The items whose series is this shard's, in their order."""
        return [item for item in items if self.owns(uid_of(item))]

    @property
    def tag(self) -> str:
        """``<K>of<N>``: what names this shard's ledger, lock and staging folder."""
        return f"{self.index}of{self.count}"

    @property
    def ledger_name(self) -> str:
        """This shard's ledger file name under ``DIR/.bulkdl/``."""
        return f"ledger-{self.tag}.sqlite"

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str, env: Mapping[str, str]) -> Shard:
    """``K/N``, or ``slurm`` for the array task's own shard read from ``env``.

    Raises InputError naming the problem: a malformed value, K out of range, or ``slurm``
    outside an array task.
    """
    if text.strip().lower() == "slurm":
        return _from_slurm(env)
    match = _SPEC.fullmatch(text)
    if match is None:
        raise InputError(f"--shard {text!r}: expected K/N (e.g. 0/4) or 'slurm'")
    return Shard(int(match[1]), int(match[2]))


def _from_slurm(env: Mapping[str, str]) -> Shard:
    def number(name: str) -> int | None:
        value = env.get(name, "").strip()
        if not value:
            return None
        if not value.isdigit():
            raise InputError(f"--shard slurm: {name}={value!r} is not a number")
        return int(value)

    task = number("SLURM_ARRAY_TASK_ID")
    if task is None:
        raise InputError(
            "--shard slurm: SLURM_ARRAY_TASK_ID is not set (not a Slurm array task); "
            "submit with sbatch --array, or give --shard K/N"
        )
    low = number("SLURM_ARRAY_TASK_MIN") or 0
    count = number("SLURM_ARRAY_TASK_COUNT")
    if count is None:
        high = number("SLURM_ARRAY_TASK_MAX")
        if high is None:
            raise InputError(
                "--shard slurm: neither SLURM_ARRAY_TASK_COUNT nor SLURM_ARRAY_TASK_MAX is set"
            )
        count = high - low + 1
    return Shard(task - low, count)
