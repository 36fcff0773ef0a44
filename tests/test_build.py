"""Dataset specs and `bulkdl build`: the same spec (and lock) in two places gives byte-identical
trees and identical locks; a series revised on the server fails a pinned build loudly. Real
downloads from the fake NBIA server on 127.0.0.1."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from bulkdl.build import load_spec, spec_settings
from bulkdl.errors import InputError
from bulkdl.lockfile import read_lock
from bulkdl.testing import ArchiveSpec, FakeArchive, FakeNbiaServer, run_in_thread
from tests.helpers import bulkdl_cmd, get_images, run, tree

ARCHIVE = ArchiveSpec(
    patients_per_collection=2,
    studies_per_patient=1,
    series_per_study=2,
    images_per_series=3,
    rows=16,
    columns=16,
    seed=53,
)
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where this module's archive is built once."""
    folder = tmp_path_factory.mktemp("build-cache")
    FakeArchive.build(ARCHIVE, folder)
    return folder


@pytest.fixture
def server(cache: Path) -> Iterator[FakeNbiaServer]:
    """The fake server over a fresh archive object (revise() mutates it)."""
    with run_in_thread(FakeNbiaServer(FakeArchive.build(ARCHIVE, cache))) as running:
        yield running


def write_spec(folder: Path, server: FakeNbiaServer, layout: str = "nbia-classic") -> Path:
    """A spec joining a query (patient 1's series) and one inline series of patient 2."""
    first = server.archive.series[0]
    other = next(s for s in server.archive.series if s.patient_id != first.patient_id)
    spec = folder / "demo.toml"
    spec.write_text(
        f"""# a test dataset
name = "demo-set"
description = "patient 1, and one series of patient 2"

[select]
series = ["{other.uid}"]

[[select.query]]
collection = "{first.collection}"
patient_id = "{first.patient_id}"

[download]
api-url = "{server.v4_url}"
layout = "{layout}"
concurrency = 4
"""
    )
    return spec


def build(spec: Path, out: Path, lock: Path, *more: str) -> subprocess.CompletedProcess[str]:
    """`bulkdl build SPEC --out OUT --lock LOCK --no-progress MORE`."""
    return run("build", str(spec), "--out", str(out), "--lock", str(lock), "--no-progress", *more)


def start_build(spec: Path, out: Path, lock: Path) -> subprocess.Popen[str]:
    """`bulkdl build` started in the background (stdout and stderr piped)."""
    argv = bulkdl_cmd("build", str(spec), "--out", str(out), "--lock", str(lock), "--no-progress")
    env = {k: v for k, v in os.environ.items() if not k.startswith("BULKDL_")}
    return subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def selected(server: FakeNbiaServer) -> set[str]:
    """The series write_spec selects."""
    first = server.archive.series[0]
    other = next(s for s in server.archive.series if s.patient_id != first.patient_id)
    return {s.uid for s in server.archive.series if s.patient_id == first.patient_id} | {other.uid}


def test_same_spec_twice_gives_identical_trees_and_locks(
    server: FakeNbiaServer, tmp_path: Path
) -> None:
    """Two builds of one spec into two folders give byte-identical trees in the spec's layout
    and byte-identical locks; a third build pinned by the lock matches it, which is unchanged."""
    spec = write_spec(tmp_path, server)
    # Both at once: two independent machines, and half the wait.
    a, b = (start_build(spec, tmp_path / name.upper(), tmp_path / f"{name}.lock") for name in "ab")
    a_err, b_err = a.communicate(timeout=120)[1], b.communicate(timeout=120)[1]
    assert a.returncode == 0, a_err
    assert b.returncode == 0, b_err
    assert f"lock: wrote {tmp_path / 'a.lock'}: 3 series, 9 images" in a_err
    first_tree = tree(tmp_path / "A")
    assert first_tree == tree(tmp_path / "B")
    assert len(first_tree) == 9
    collection = server.archive.series[0].collection
    assert all(path.startswith(f"{collection}/") for path in first_tree)
    assert (tmp_path / "a.lock").read_bytes() == (tmp_path / "b.lock").read_bytes()
    lock = read_lock(tmp_path / "a.lock")
    assert lock.name == "demo-set" and set(lock.uids) == selected(server)
    assert lock.layout is not None and lock.layout.startswith("{Collection}/")

    before = (tmp_path / "a.lock").read_bytes()
    pinned = build(spec, tmp_path / "C", tmp_path / "a.lock")
    assert pinned.returncode == 0, pinned.stderr
    assert f"lock: the tree matches {tmp_path / 'a.lock'}" in pinned.stderr
    assert tree(tmp_path / "C") == first_tree
    assert (tmp_path / "a.lock").read_bytes() == before


def test_pinned_build_fails_on_revision_and_update_relocks(
    server: FakeNbiaServer, tmp_path: Path
) -> None:
    """After the server revises a locked series, a pinned build exits 1 naming the series and
    instance and leaves the lock alone; --update takes the new content and rewrites it."""
    spec = write_spec(tmp_path, server)
    lock_file = tmp_path / "data.lock"
    assert build(spec, tmp_path / "A", lock_file).returncode == 0
    before = lock_file.read_bytes()
    target = server.archive.series[0].uid
    old = server.archive.lookup(target)
    assert old is not None
    server.archive.revise(target, drop=1, add=1)
    server.reset_log()

    failed = build(spec, tmp_path / "B", lock_file)
    assert failed.returncode == 1
    assert f"series {target} changed on the server since the lock" in failed.stderr
    assert f"instance {old.instances[-1].sop_uid}: in the lock, not on the server" in failed.stderr
    assert f"lock: {lock_file} not written" in failed.stderr
    assert get_images(server, target) == 1
    assert lock_file.read_bytes() == before

    updated = build(spec, tmp_path / "B", lock_file, "--update")
    assert updated.returncode == 0, updated.stderr
    assert read_lock(lock_file).digest != read_lock_bytes(before)


def read_lock_bytes(data: bytes) -> str | None:
    """The digest of a lock given as bytes."""
    from bulkdl.lockfile import parse_lock

    return parse_lock(data.decode()).digest


def test_defaults_lock_beside_spec_tree_in_cwd(server: FakeNbiaServer, tmp_path: Path) -> None:
    """Without --out and --lock the tree goes to ./NAME and the lock beside the spec; a layout
    other than the lock's is refused (exit 2) before anything is fetched."""
    specs = tmp_path / "specs"
    specs.mkdir()
    spec = write_spec(specs, server)
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BULKDL_")}
    command = [*bulkdl_cmd("build", str(spec), "--no-progress")]
    done = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (specs / "demo.lock").is_file()
    assert len(tree(work / "demo-set")) == 9

    write_spec(specs, server, layout="flat")
    server.reset_log()
    refused = subprocess.run(
        command, cwd=work, env=env, capture_output=True, text=True, timeout=120
    )
    assert refused.returncode == 2
    assert "the tree would not match (use --update to lock it anew)" in refused.stderr
    assert get_images(server) == 0


def test_spec_layout_wins_over_environment(tmp_path: Path) -> None:
    """Settings layer: environment < spec < flags; the output folder defaults to ./NAME."""
    spec_file = tmp_path / "s.toml"
    spec_file.write_text('name = "s1"\n[select]\nseries = ["1.2.3"]\n[download]\nlayout = "flat"\n')
    spec = load_spec(spec_file)
    env = {"BULKDL_LAYOUT": "idc", "BULKDL_CONCURRENCY": "3"}
    settings = spec_settings(spec, {"out": None}, None, env)
    assert (settings.layout, settings.concurrency, settings.out) == ("flat", 3, Path("s1"))
    flagged = spec_settings(spec, {"layout": "default", "out": tmp_path}, None, env)
    assert (flagged.layout, flagged.out) == ("default", tmp_path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('nmae = "x"\n[select]\nseries = ["1.2"]\n', "s.toml:1: unknown key 'nmae'"),
        ('name = "../x"\n[select]\nseries = ["1.2"]\n', "s.toml:1: name must be letters"),
        ('[select]\nseries = ["1.2", "x.y"]\n', "s.toml:2: not a valid SeriesInstanceUID: 'x.y'"),
        ("[select]\n[[select.query]]\n", "an empty query would select the whole archive"),
        ('[[select.query]]\ncolour = "x"\n', "s.toml:2: unknown filter 'colour'"),
        ('name = "x"\n', "the spec selects nothing"),
        (
            '[select]\nseries = ["1.2"]\n[download]\npassword = "p"\n',
            "s.toml:4: 'password' refused",
        ),
        ('[select]\nseries = ["1.2"]\n[download]\nconcurrency = 0\n', "s.toml:4: concurrency must"),
        ("[select\n", "s.toml:1: invalid TOML"),
    ],
)
def test_bad_spec_is_named(tmp_path: Path, text: str, message: str) -> None:
    """Every bad spec raises InputError naming the file, the line and the problem."""
    spec = tmp_path / "s.toml"
    spec.write_text(text)
    with pytest.raises(InputError) as caught:
        load_spec(spec)
    assert message in str(caught.value)
    assert str(caught.value).startswith(str(spec))


def test_example_specs_load() -> None:
    """The dataset specs shipped in configs/datasets/ are valid."""
    found = sorted((REPO / "configs" / "datasets").glob("*.toml"))
    assert len(found) >= 2
    for path in found:
        spec = load_spec(path)
        assert spec.queries or spec.manifests or spec.series
        assert spec.lock == path.with_suffix(".lock")
