"""The shard partition: stable, disjoint, covering, balanced; K/N and Slurm's variables."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bulkdl.errors import InputError
from bulkdl.shard import Shard, parse_shard, shard_index

UIDS = [f"1.3.6.1.4.1.14519.5.2.1.{n}.{n * 7919 % 100003}" for n in range(4000)]


def test_the_partition_is_pinned() -> None:
    # Written down once, from SHA-256 by hand: a change here would reshuffle every user's shards.
    uid = "1.2.840.113619.2.55.3.604688119.969.1268071029.320"
    assert int.from_bytes(bytes.fromhex("d1a63710939a7290"), "big") % 7 == 5
    assert shard_index(uid, 7) == 5
    assert [shard_index(uid, 4) for uid in UIDS[:8]] == [
        int.from_bytes(hashlib.sha256(uid.encode()).digest()[:8], "big") % 4 for uid in UIDS[:8]
    ]


@pytest.mark.parametrize("count", [1, 2, 3, 4, 16])
def test_shards_are_disjoint_and_cover_every_series(count: int) -> None:
    picked = [Shard(k, count).pick(UIDS, str) for k in range(count)]
    assert sorted(uid for part in picked for uid in part) == sorted(UIDS)
    assert sum(len(part) for part in picked) == len(UIDS)
    # balanced: each share within 20 % of the mean for 4,000 series
    mean = len(UIDS) / count
    assert all(abs(len(part) - mean) <= 0.2 * mean for part in picked)


@given(st.lists(st.text(min_size=1, max_size=64), min_size=1, max_size=50), st.integers(1, 9))
def test_every_uid_is_in_exactly_one_shard(uids: list[str], count: int) -> None:
    for uid in uids:
        assert [Shard(k, count).owns(uid) for k in range(count)].count(True) == 1


def test_pick_keeps_the_input_order() -> None:
    part = Shard(1, 3).pick(UIDS, str)
    assert part == [uid for uid in UIDS if shard_index(uid, 3) == 1]


def test_ledger_names_differ_per_shard() -> None:
    assert Shard(0, 4).ledger_name == "ledger-0of4.sqlite"
    assert len({Shard(k, 4).ledger_name for k in range(4)}) == 4


@pytest.mark.parametrize(
    ("text", "shard"), [("0/4", Shard(0, 4)), (" 3 / 4 ", Shard(3, 4)), ("0/1", Shard(0, 1))]
)
def test_parse_k_of_n(text: str, shard: Shard) -> None:
    assert parse_shard(text, {}) == shard


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("4/4", "must be 0 to 3"),
        ("1/0", "N must be 1"),
        ("two/4", "expected K/N"),
        ("-1/4", "expected K/N"),
        ("1/4/2", "expected K/N"),
        ("", "expected K/N"),
    ],
)
def test_bad_shards_are_named(text: str, problem: str) -> None:
    with pytest.raises(InputError, match=problem):
        parse_shard(text, {})


def test_slurm_array_task() -> None:
    env = {"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "0"}
    assert parse_shard("slurm", env) == Shard(2, 4)
    # an array numbered 1-4 is the same four shards
    env = {"SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "1"}
    assert parse_shard("SLURM", env) == Shard(3, 4)
    env = {"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_MIN": "5", "SLURM_ARRAY_TASK_MAX": "7"}
    assert parse_shard("slurm", env) == Shard(0, 3)


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        ({}, "SLURM_ARRAY_TASK_ID is not set"),
        ({"SLURM_ARRAY_TASK_ID": "1"}, "neither SLURM_ARRAY_TASK_COUNT"),
        ({"SLURM_ARRAY_TASK_ID": "x", "SLURM_ARRAY_TASK_COUNT": "2"}, "is not a number"),
        # a sparse re-submission (--array=1,3) cannot say N: an error, not a wrong partition
        (
            {
                "SLURM_ARRAY_TASK_ID": "3",
                "SLURM_ARRAY_TASK_COUNT": "2",
                "SLURM_ARRAY_TASK_MIN": "1",
            },
            "must be 0 to 1",
        ),
    ],
)
def test_slurm_outside_an_array_is_an_error(env: dict[str, str], problem: str) -> None:
    with pytest.raises(InputError, match=problem):
        parse_shard("slurm", env)
