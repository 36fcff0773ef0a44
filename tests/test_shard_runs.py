"""Sharded runs (``--shard K/N``) into one tree equal one plain run, and re-runs stay exact.

Shards run as real subprocesses against the fake NBIA server, several at once into one output
folder, with a layout that puts the series of a study in one folder, so shards write the same
folders at the same time. ``bulkdl status``, ``finalize`` and ``organize`` run in this process.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import bulkdl as bulkdl_api
from bulkdl import cli
from bulkdl.errors import AbortError, PlacementConflict
from bulkdl.layout import resolve_layout
from bulkdl.merged import foreign_ledgers
from bulkdl.outdir import exclusive, prepare_output
from bulkdl.place import Placer
from bulkdl.records import Series, StagedFile
from bulkdl.shard import Shard
from bulkdl.testing import FakeArchive, FakeNbiaServer, Fault
from tests.helpers import bulkdl_cmd, get_images, manifest, md5, tree
from tests.test_organize import retriever_tree

#: Every series of a study in one folder: shards place into the same folders.
SHARED = "{PatientID}/{StudyInstanceUID}/{SOPInstanceUID}.dcm"

Outcome = tuple[int, str, str]


@pytest.fixture
def bulkdl(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., Outcome]]:
    """``bulkdl ARGS`` in this process, no BULKDL_* or SLURM_* settings: (exit, stdout, stderr)."""
    for name in os.environ:
        if name.startswith(("BULKDL_", "SLURM_")):
            monkeypatch.delenv(name)

    def call(*args: str | Path) -> Outcome:
        code = cli.main([str(a) for a in args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    yield call


@pytest.fixture
def uids(small_archive: FakeArchive) -> list[str]:
    """Every series UID of the small archive, in archive order."""
    return [s.uid for s in small_archive.series]


def shard_args(server: FakeNbiaServer, out: Path, m: Path, shard: str, *more: str) -> list[str]:
    """The argv of one shard's download."""
    return bulkdl_cmd(
        *("download", str(m), "--out", str(out), "--api-url", server.v4_url, "--no-progress"),
        *("--shard", shard, *more),
    )


def shard_argv(server: FakeNbiaServer, out: Path, m: Path, shard: str, *more: str) -> list[str]:
    """``bulkdl``'s arguments for one shard's download."""
    return shard_args(server, out, m, shard, *more)[3:]


def run_shards(server: FakeNbiaServer, out: Path, m: Path, count: int, *more: str) -> list[int]:
    """Every shard of ``count`` at once, as separate processes; their exit codes."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BULKDL_", "SLURM_"))}
    procs = [
        subprocess.Popen(
            shard_args(server, out, m, f"{k}/{count}", *more),
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for k in range(count)
    ]
    codes = []
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode in (0, 1), err
        codes.append(proc.returncode)
    return codes


def metadata(out: Path) -> list[dict[str, str]]:
    """metadata.csv's rows without the timestamp, by Series UID."""
    with (out / "metadata.csv").open(newline="") as handle:
        rows = [
            {k: v for k, v in row.items() if k != "Download Timestamp"}
            for row in csv.DictReader(handle)
        ]
    return sorted(rows, key=lambda row: row["Series UID"])


def test_shards_into_one_tree_equal_one_run(
    nbia_server: FakeNbiaServer,
    tmp_path: Path,
    uids: list[str],
    bulkdl: Callable[..., Outcome],
) -> None:
    """3 shards at once into one folder: the same files, status and (after finalize)
    metadata.csv as one plain run; each shard its own ledger, each series fetched once."""
    m = manifest(tmp_path, uids)
    plain, sharded = tmp_path / "plain", tmp_path / "sharded"
    code, _, err = bulkdl(
        "download", m, "--out", plain, "--api-url", nbia_server.v4_url, "--layout", SHARED
    )
    assert code == 0, err
    nbia_server.log.reset()

    assert run_shards(nbia_server, sharded, m, 3, "--layout", SHARED) == [0, 0, 0]

    assert get_images(nbia_server) == len(uids)
    assert sorted(
        r.query["SeriesInstanceUID"] for r in nbia_server.log.for_endpoint("getImage")
    ) == sorted(uids)
    assert tree(sharded) == tree(plain)
    state = sharded / ".bulkdl"
    assert sorted(p.name for p in state.glob("ledger*.sqlite")) == [
        "ledger-0of3.sqlite",
        "ledger-1of3.sqlite",
        "ledger-2of3.sqlite",
    ]
    assert not (sharded / "metadata.csv").exists() and not (sharded / "LICENSES").exists()
    assert not any(state.glob("staging*/*"))

    status = [json.loads(bulkdl("status", out, "--json")[1]) for out in (plain, sharded)]
    assert status[0] == status[1]
    assert status[1]["counts"]["done"] == len(uids)

    code, out, err = bulkdl("finalize", sharded)
    assert code == 0, err
    assert f"{len(uids)} series: {len(uids)} done" in out
    assert metadata(sharded) == metadata(plain)
    assert sorted(os.listdir(sharded / "LICENSES")) == sorted(os.listdir(plain / "LICENSES"))
    assert not (sharded / "failures.csv").exists()
    assert bulkdl("verify", sharded, "--no-progress")[0] == 0


def test_rerun_of_a_shard_fetches_only_its_failed_series(
    nbia_server: FakeNbiaServer, tmp_path: Path, uids: list[str], bulkdl: Callable[..., Outcome]
) -> None:
    """A shard whose series failed asks again for that series alone (and only ever for its own
    series' metadata); finalize then lists the failure, and after the re-run, none."""
    m, out = manifest(tmp_path, uids), tmp_path / "out"
    shard = Shard(0, 2)
    mine = shard.pick(uids, str)
    bad = mine[1]
    nbia_server.faults.always(bad, Fault.http_status(500))

    with ThreadPoolExecutor(2) as pool:  # two shards at once, through the Python API
        results = list(
            pool.map(
                lambda k: bulkdl_api.download(
                    m, out=out, api_url=nbia_server.v4_url, retries=0, shard=f"{k}/2"
                ),
                range(2),
            )
        )
    assert [r.exit_code for r in results] == [1, 0]
    assert [o.uid for o in results[0].failures] == [bad]
    assert sorted(o.uid for r in results for o in r.outcomes) == sorted(uids)
    asked = {
        u
        for r in nbia_server.log.for_endpoint("getSeriesMetadata")
        for u in r.form["list"].split(",")
    }
    assert asked == set(uids)  # each shard asked for its own; together, all
    assert bulkdl("finalize", out)[0] == 1
    with (out / "failures.csv").open(newline="") as handle:
        assert [row["SeriesInstanceUID"] for row in csv.DictReader(handle)] == [bad]

    nbia_server.faults.clear()
    nbia_server.log.reset()
    code, _, err = bulkdl(*shard_argv(nbia_server, out, m, "0/2"))
    assert code == 0, err
    assert [r.query["SeriesInstanceUID"] for r in nbia_server.log.for_endpoint("getImage")] == [bad]
    listed = [r.form["list"].split(",") for r in nbia_server.log.for_endpoint("getSeriesMetadata")]
    assert sorted(u for batch in listed for u in batch) == sorted(mine)
    assert f"{len(mine)} series: 1 ok, 0 incomplete, 0 failed, {len(mine) - 1} skipped" in err

    code, status, _ = bulkdl("finalize", out)
    assert code == 0, status
    assert not (out / "failures.csv").exists()
    assert len(metadata(out)) == len(uids)


def test_shard_from_slurm_environment(
    nbia_server: FakeNbiaServer,
    tmp_path: Path,
    uids: list[str],
    bulkdl: Callable[..., Outcome],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """--shard slurm takes the array task's shard from SLURM_ARRAY_TASK_ID and _COUNT; outside
    an array task it is a usage error."""
    m, out = manifest(tmp_path, uids), tmp_path / "out"
    code, _, err = bulkdl(*shard_argv(nbia_server, out, m, "slurm"))
    assert code == 2
    assert "SLURM_ARRAY_TASK_ID is not set" in err
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "1")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "2")
    code, _, err = bulkdl(*shard_argv(nbia_server, out, m, "slurm"))
    assert code == 0, err
    fetched = sorted(r.query["SeriesInstanceUID"] for r in nbia_server.log.for_endpoint("getImage"))
    assert fetched == sorted(Shard(1, 2).pick(uids, str))
    assert [p.name for p in (out / ".bulkdl").glob("ledger*.sqlite")] == ["ledger-1of2.sqlite"]


def test_shared_folders_and_the_rerun_mtime_check(
    nbia_server: FakeNbiaServer, tmp_path: Path, uids: list[str], bulkdl: Callable[..., Outcome]
) -> None:
    """Another shard adding files to a folder changes its mtime: the re-run lists the folder,
    finds its own files all there and fetches nothing; a file deleted is still noticed."""
    m, out = manifest(tmp_path, uids), tmp_path / "out"

    def shard(spec: str) -> list[str]:
        nbia_server.log.reset()
        code, _, err = bulkdl(*shard_argv(nbia_server, out, m, spec, "--layout", SHARED))
        assert code == 0, err
        return [r.query["SeriesInstanceUID"] for r in nbia_server.log.for_endpoint("getImage")]

    shard("0/2")
    folders = {p.parent for p in out.rglob("*.dcm")}
    before = {f: f.stat().st_mtime_ns for f in folders}
    shard("1/2")
    assert any(f.stat().st_mtime_ns != before[f] for f in folders)  # shared folders were written
    assert shard("0/2") == []

    victim_series = Shard(0, 2).pick(uids, str)[0]
    data = next(s for s in nbia_server.archive.series if s.uid == victim_series)
    victim = next(out / path for path in tree(out) if data.instances[0].sop_uid in path)
    victim.unlink()
    assert shard("1/2") == []
    assert shard("0/2") == [victim_series]
    assert victim.exists()


def test_shard_locks(tmp_path: Path) -> None:
    """Shards of one array hold the tree together; the same shard twice, or a plain run beside
    shards, is refused."""
    state = prepare_output(tmp_path / "out")
    with exclusive(state, "0of2"), exclusive(state, "1of2"):
        with pytest.raises(AbortError, match="shard 0of2 already runs"), exclusive(state, "0of2"):
            pass
        with pytest.raises(AbortError, match="another bulkdl run"), exclusive(state):
            pass
    with exclusive(state), pytest.raises(AbortError, match="not a shard"), exclusive(state, "0of2"):
        pass


def test_preparing_one_tree_from_many_threads_at_once(tmp_path: Path) -> None:
    """Shards run in one process (the Python API) prepare the same tree at once: none of them
    sees its writability probe vanish, and no probe is left behind."""
    out = tmp_path / "out"

    def prepare(_: int) -> list[Path]:
        return [prepare_output(out) for _ in range(200)]

    with ThreadPoolExecutor(8) as pool:
        states = {state for batch in pool.map(prepare, range(8)) for state in batch}
    assert states == {out / ".bulkdl"}
    assert list((out / ".bulkdl").iterdir()) == []


def _staged(folder: Path, name: str, data: bytes, sop: str) -> StagedFile:
    path = folder / name
    path.write_bytes(data)
    digest = md5(path)
    return StagedFile(name, path, len(data), digest, "", {"SOPInstanceUID": sop, "PatientID": "P"})


def test_placing_never_replaces_a_file_that_appeared_after_planning(tmp_path: Path) -> None:
    """A file another process put at a planned path is kept: nothing of the series moves
    (PlacementConflict), and the next plan names ours around it. The same bytes are kept."""
    root, staging = tmp_path / "tree", tmp_path / "staging"
    staging.mkdir()
    placer = Placer(root, resolve_layout("{PatientID}/{SOPInstanceUID}.dcm"), lambda _path: None)
    files = [_staged(staging, f"{n}.dcm", f"ours {n}".encode(), f"1.2.{n}") for n in range(3)]
    series = Series("1.2")
    moves = placer.plan(series, files)
    placer.release(moves)
    (root / "P").mkdir(parents=True)
    (root / "P" / "1.2.1.dcm").write_bytes(b"another shard's file")
    with pytest.raises(PlacementConflict, match=r"P/1\.2\.1\.dcm appeared"):
        placer.commit(moves)
    assert sorted(p.name for p in (root / "P").iterdir()) == ["1.2.1.dcm"]  # claims taken back
    assert all(f.path.exists() for f in files)  # nothing left staging

    again = placer.plan(series, files)
    assert again[1].placed.path != "P/1.2.1.dcm" and again[1].placed.path.startswith("P/1.2.1~")
    placer.commit(again)
    assert (root / "P" / "1.2.1.dcm").read_bytes() == b"another shard's file"
    assert {p.name: p.read_bytes() for p in (root / "P").iterdir() if p.name != "1.2.1.dcm"} == {
        "1.2.0.dcm": b"ours 0",
        again[1].placed.path.split("/")[1]: b"ours 1",
        "1.2.2.dcm": b"ours 2",
    }

    # the same bytes already at a path (a tree whose ledger was lost): kept, nothing moved there
    same = _staged(staging, "x.dcm", b"ours 0", "1.2.0")
    moves = placer.plan(series, [same])
    assert moves[0].placed.path == "P/1.2.0.dcm"
    placer.commit(moves)
    assert (root / "P" / "1.2.0.dcm").read_bytes() == b"ours 0"


def test_organize_in_shards_equals_one_organize(
    small_archive: FakeArchive, tmp_path: Path, bulkdl: Callable[..., Outcome]
) -> None:
    """organize --shard K/N places the series it owns (by header SeriesInstanceUID) with its
    own ledger; the shards and a finalize give one organize's tree and metadata.csv."""
    source = retriever_tree(small_archive, tmp_path / "src", small_archive.series)
    plain, sharded = tmp_path / "plain", tmp_path / "sharded"
    assert bulkdl("organize", source, "--out", plain)[0] == 0
    for k in range(2):
        code, _, err = bulkdl("organize", source, "--out", sharded, "--shard", f"{k}/2")
        assert code == 0, err
    assert not (sharded / "metadata.csv").exists()
    assert tree(sharded) == tree(plain)
    assert bulkdl("finalize", sharded)[0] == 0
    assert metadata(sharded) == metadata(plain)
    assert sorted(p.name for p in (sharded / ".bulkdl").glob("ledger*")) == [
        "ledger-0of2.sqlite",
        "ledger-1of2.sqlite",
    ]


def test_runs_that_do_not_read_a_trees_ledgers_say_so(tmp_path: Path) -> None:
    """A plain run in a tree of shards, or shards of another count, is warned that the series
    the other ledgers placed are fetched again; the shards of one array are not."""
    state = tmp_path / ".bulkdl"
    state.mkdir()
    for name in ("ledger-0of4.sqlite", "ledger-1of4.sqlite"):
        (state / name).write_bytes(b"")
    assert foreign_ledgers(tmp_path, "ledger-2of4.sqlite") is None
    plain = foreign_ledgers(tmp_path, "ledger.sqlite")
    assert plain is not None and "ledger-0of4.sqlite, ledger-1of4.sqlite" in plain
    assert "give --shard" in plain
    other = foreign_ledgers(tmp_path, "ledger-0of2.sqlite")
    assert other is not None and "re-run with the count" in other
