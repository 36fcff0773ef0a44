"""Tests for ``bulkdl organize``: files on disk placed into a tree, and trees re-laid in place.

Sources are real DICOM files of the shared small archive laid out as the NBIA Data Retriever
leaves them, and NBIA-shaped ZIPs (as tcia_utils keeps them); the re-lay tests download a tree
from the fake server first. Most runs go through ``bulkdl.cli.main`` in this process (fast);
exit codes and the download round trip go through a real subprocess.
"""

from __future__ import annotations

import csv
import hashlib
import os
import random
import shutil
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from bulkdl import cli, place
from bulkdl.ledger import Ledger
from bulkdl.testing import FakeArchive, FakeNbiaServer
from bulkdl.testing.archive import SeriesData
from bulkdl.testing.dicomgen import CtInstance, noisy_pixels, write_ct_file
from bulkdl.testing.zips import ZipVariant, build_zip, image_names
from tests.helpers import download, expected_tree, get_images, manifest, md5, run, tree

Outcome = tuple[int, str, str]
Organize = Callable[..., Outcome]


@pytest.fixture
def organize(capsys: pytest.CaptureFixture[str]) -> Iterator[Organize]:
    """``bulkdl ARGS`` in this process: (exit code, stdout, stderr)."""

    def call(*args: str | Path) -> Outcome:
        try:
            code = cli.main([str(a) for a in args])
        except SystemExit as exit_:  # argparse's usage errors
            code = int(exit_.code or 0)
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    yield call


def series_of(archive: FakeArchive, count: int) -> list[SeriesData]:
    """The first ``count`` series of the archive."""
    return archive.series[:count]


def retriever_tree(archive: FakeArchive, root: Path, series: Sequence[SeriesData]) -> Path:
    """The series laid out as the NBIA Data Retriever leaves them, with its metadata.csv,
    a LICENSE and a stray README; returns the manifest folder."""
    top = root / "manifest-1600709154662"
    rows = []
    for s in series:
        study = f"{s.row['StudyDate']}-{s.study_uid[-5:]}"
        folder = top / s.collection / s.patient_id / study / f"{s.row['SeriesNumber']}-{s.uid[-5:]}"
        folder.mkdir(parents=True)
        for inst in s.instances:
            name = f"{inst.acquisition_number}-{inst.instance_number:03d}.dcm"
            shutil.copyfile(archive.file_path(inst), folder / name)
        (top / s.collection / "LICENSE").write_text("licence\n")
        rows.append({"Series UID": s.uid, "Collection": s.collection, "Subject ID": s.patient_id})
    with (top / "metadata.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, ["Series UID", "Collection", "Subject ID"])
        writer.writeheader()
        writer.writerows(rows)
    (top / "README.txt").write_text("not DICOM\n")
    return top


def nbia_zip(archive: FakeArchive, series: SeriesData, folder: Path) -> Path:
    """The series as getImage sends it (LICENSE, 1-001.dcm names, md5hashes.csv)."""
    path = folder / f"{series.uid}.zip"
    folder.mkdir(parents=True, exist_ok=True)
    build_zip(archive, series, ZipVariant(new_file_names=True, include_md5=True), path)
    return path


def snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root``: relative path -> MD5."""
    return {p.relative_to(root).as_posix(): md5(p) for p in root.rglob("*") if p.is_file()}


def ledger_rows(out: Path) -> dict[str, tuple[int, str, str]]:
    """The ledger's file rows: path -> (size, md5, sha256)."""
    with sqlite3.connect(out / ".bulkdl" / "ledger.sqlite") as conn:
        rows = conn.execute("SELECT path, size, md5, sha256 FROM files").fetchall()
    return {path: (size, m, s) for path, size, m, s in rows}


def assert_ledger_true(out: Path) -> None:
    """Every recorded file is in the tree with its recorded bytes, and every tree file is
    recorded; nothing is left placing or noted half-relocated."""
    rows = ledger_rows(out)
    assert rows == {
        rel: (
            (out / rel).stat().st_size,
            md5(out / rel),
            hashlib.sha256((out / rel).read_bytes()).hexdigest(),
        )
        for rel in tree(out)
    }
    with sqlite3.connect(out / ".bulkdl" / "ledger.sqlite") as conn:
        assert conn.execute("SELECT count(*) FROM series WHERE state != 'done'").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM meta WHERE key LIKE 'organize%'").fetchone() == (
            0,
        )


# --- organizing sources ------------------------------------------------------------------------


def test_copy_places_a_retriever_tree_and_a_zip_byte_for_byte(
    small_archive: FakeArchive, tmp_path: Path, organize: Organize
) -> None:
    """A Data Retriever tree and a getImage ZIP become the default tree, sources untouched."""
    chosen = series_of(small_archive, 4)
    top = retriever_tree(small_archive, tmp_path / "dr", chosen[:3])
    archive_zip = nbia_zip(small_archive, chosen[3], tmp_path / "zips")
    before = snapshot(tmp_path / "dr"), md5(archive_zip)
    out = tmp_path / "out"

    code, _, err = organize("organize", top, archive_zip, "--out", out)

    assert code == 0, err
    assert tree(out) == expected_tree(small_archive, [s.uid for s in chosen])
    assert (snapshot(tmp_path / "dr"), md5(archive_zip)) == before
    assert f"left in place: {top / 'README.txt'}: not DICOM" in err
    assert "metadata.csv: not DICOM (a metadata.csv: its series values were used)" in err
    assert f"{archive_zip}:LICENSE: a licence text" in err
    assert_ledger_true(out)
    with (out / "metadata.csv").open(newline="") as handle:
        collections = {row["Series UID"]: row["Collection"] for row in csv.DictReader(handle)}
    assert collections == {s.uid: s.collection for s in chosen[:3]} | {chosen[3].uid: ""}


def test_a_second_run_places_nothing_twice(
    small_archive: FakeArchive, tmp_path: Path, organize: Organize
) -> None:
    """Organizing the same sources again finds every instance already in the tree."""
    top = retriever_tree(small_archive, tmp_path / "dr", series_of(small_archive, 2))
    out = tmp_path / "out"
    assert organize("organize", top, "--out", out)[0] == 0
    first = snapshot(out / "DEMO-CT-0001")
    code, _, err = organize("organize", top, "--out", out)
    assert code == 0
    count = sum(len(s.instances) for s in series_of(small_archive, 2))
    assert f"0 files (0.0 MB) in 0 series were placed, {count} already in the tree" in err
    assert snapshot(out / "DEMO-CT-0001") == first
    assert_ledger_true(out)


def test_move_removes_only_the_sources_it_placed(
    small_archive: FakeArchive, tmp_path: Path, organize: Organize
) -> None:
    """--move empties the source of its DICOM files; other files and ZIPs stay."""
    chosen = series_of(small_archive, 3)
    top = retriever_tree(small_archive, tmp_path / "dr", chosen[:2])
    archive_zip = nbia_zip(small_archive, chosen[2], tmp_path / "zips")
    out = tmp_path / "out"
    code, _, err = organize("organize", top, archive_zip, "--out", out, "--move")
    assert code == 0, err
    assert tree(out) == expected_tree(small_archive, [s.uid for s in chosen])
    assert sorted(p.name for p in top.rglob("*") if p.is_file()) == [
        "LICENSE",
        "README.txt",
        "metadata.csv",
    ]
    assert archive_zip.is_file()
    assert_ledger_true(out)


def test_link_makes_hard_links(
    small_archive: FakeArchive, tmp_path: Path, organize: Organize
) -> None:
    """--link places hard links to the sources: same inode, no second copy."""
    top = retriever_tree(small_archive, tmp_path / "dr", series_of(small_archive, 1))
    out = tmp_path / "out"
    code, _, err = organize("organize", top, "--out", out, "--link")
    assert code == 0, err
    sources = {p.stat().st_ino for p in top.rglob("*.dcm")}
    placed = {(out / rel).stat().st_ino for rel in tree(out)}
    assert placed == sources
    assert all((out / rel).stat().st_nlink == 2 for rel in tree(out))
    assert_ledger_true(out)


def test_link_across_filesystems_is_refused(
    small_archive: FakeArchive, tmp_path: Path, organize: Organize
) -> None:
    """--link with SRC and DIR on different filesystems is a usage error naming the fix."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("no second filesystem to try")
    top = retriever_tree(small_archive, tmp_path / "dr", series_of(small_archive, 1))
    out = shm / f"bulkdl-test-{os.getpid()}"
    try:
        code, _, err = organize("organize", top, "--out", out, "--link")
        assert code == 2
        assert "another filesystem" in err and "--copy" in err
        assert tree(out) == {}
    finally:
        shutil.rmtree(out, ignore_errors=True)


def test_dry_run_prints_the_plan_and_writes_nothing(
    small_archive: FakeArchive, tmp_path: Path, organize: Organize
) -> None:
    """--dry-run lists 'source -> target' for every file and creates nothing at all."""
    chosen = series_of(small_archive, 2)
    top = retriever_tree(small_archive, tmp_path / "dr", chosen[:1])
    archive_zip = nbia_zip(small_archive, chosen[1], tmp_path / "zips")
    before = snapshot(tmp_path)
    out = tmp_path / "out"
    code, stdout, err = organize("organize", top, archive_zip, "--out", out, "--dry-run")
    assert code == 0, err
    assert not out.exists()
    assert snapshot(tmp_path) == before
    lines = stdout.splitlines()
    expected = {f"{out}/{rel}" for rel in expected_tree(small_archive, [s.uid for s in chosen])}
    assert {line.split(" -> ")[1] for line in lines} == expected
    assert any(line.startswith(f"{archive_zip}:1-") for line in lines)
    assert "would be placed" in err


def test_collisions_never_overwrite(
    small_archive: FakeArchive, tmp_path: Path, organize: Organize
) -> None:
    """Instances sharing a path get ~hash names; a foreign file keeps its bytes; an instance
    found twice (folder and ZIP) is placed once and the copy is listed."""
    series = series_of(small_archive, 1)[0]
    top = retriever_tree(small_archive, tmp_path / "dr", [series])
    archive_zip = nbia_zip(small_archive, series, tmp_path / "zips")
    out = tmp_path / "out"
    (out / series.patient_id).mkdir(parents=True)
    foreign = out / series.patient_id / "CT.dcm"
    foreign.write_bytes(b"somebody else's file")
    code, _, err = organize(
        "organize", top, archive_zip, "--out", out, "--layout", "{PatientID}/{Modality}.dcm"
    )
    assert code == 0, err
    assert foreign.read_bytes() == b"somebody else's file"
    placed = {md5(out / rel) for rel in tree(out)} - {md5(foreign)}
    assert placed == {inst.md5 for inst in series.instances}
    assert len(tree(out)) == len(series.instances) + 1
    assert err.count("the same instance as") == len(series.instances)
    assert_ledger_true_except(out, foreign)


def assert_ledger_true_except(out: Path, foreign: Path) -> None:
    """Like assert_ledger_true, with one unrecorded foreign file in the tree."""
    rows = ledger_rows(out)
    assert set(rows) == set(tree(out)) - {foreign.relative_to(out).as_posix()}
    assert all(md5(out / rel) == m for rel, (_, m, _) in rows.items())


def test_files_without_uids_and_broken_zips_are_reported(
    small_archive: FakeArchive, tmp_path: Path, organize: Organize
) -> None:
    """A broken ZIP is an error (exit 1) naming it; the rest is still placed."""
    top = retriever_tree(small_archive, tmp_path / "dr", series_of(small_archive, 1))
    broken = tmp_path / "broken.zip"
    broken.write_bytes(b"PK\x03\x04" + b"\x00" * 40)
    out = tmp_path / "out"
    code, _, err = organize("organize", top, broken, "--out", out)
    assert code == 1
    assert f"error: {broken}: not a usable ZIP" in err
    assert len(tree(out)) == len(series_of(small_archive, 1)[0].instances)


# --- the descriptive layout from real headers --------------------------------------------------

LIDC_STUDY = "1.3.6.1.4.1.14519.5.2.1.6279.6001.298806137288633453246975630178"
LIDC_SERIES = "1.3.6.1.4.1.14519.5.2.1.6279.6001.179049373636438705059720603192"


def lidc_files(folder: Path, numbers: Sequence[int]) -> None:
    """Tiny CT files carrying LIDC-IDRI-0001's header values, one per InstanceNumber."""
    folder.mkdir(parents=True)
    for number in numbers:
        inst = CtInstance(
            patient_id="LIDC-IDRI-0001",
            patient_name="",
            patient_sex="",
            patient_age="",
            study_uid=LIDC_STUDY,
            study_date="20000101",
            study_id="NA",
            study_description="NA",
            series_uid=LIDC_SERIES,
            series_number=3000566,
            series_description="NA",
            protocol_name="",
            body_part="CHEST",
            manufacturer="GE MEDICAL SYSTEMS",
            model_name="LightSpeed Plus",
            software_versions="",
            sop_uid=f"1.3.6.1.4.1.14519.5.2.1.6279.6001.{number}",
            frame_of_reference_uid="1.2.3",
            instance_number=number,
            acquisition_number=1,
            rows=8,
            columns=8,
        )
        write_ct_file(folder / f"{number}.dcm", inst, noisy_pixels(8, 8, 0, random.Random(number)))


def test_descriptive_preset_reproduces_the_data_retriever_path(
    tmp_path: Path, organize: Organize
) -> None:
    """Files with LIDC-IDRI-0001's header values land at the Data Retriever's exact path."""
    lidc_files(tmp_path / "src", [1, 2, 133])
    out = tmp_path / "out"
    code, _, err = organize(
        "organize", tmp_path / "src", "--out", out, "--layout", "nbia-descriptive",
        "--collection", "LIDC-IDRI",
    )  # fmt: skip
    assert code == 0, err
    folder = "LIDC-IDRI/LIDC-IDRI-0001/01-01-2000-NA-NA-30178/3000566.000000-NA-03192"
    assert sorted(tree(out)) == [
        f"{folder}/1-001.dcm",
        f"{folder}/1-002.dcm",
        f"{folder}/1-133.dcm",
    ]
    assert md5(out / folder / "1-133.dcm") == md5(tmp_path / "src" / "133.dcm")


def test_descriptive_file_names_are_nbia_s_own(
    small_archive: FakeArchive, tmp_path: Path, organize: Organize
) -> None:
    """Each series' 1-001.dcm names are exactly those NBIA gives with NewFileNames=Yes, two
    acquisitions and series without a StudyID or description included."""
    chosen = series_of(small_archive, 8)
    src = tmp_path / "src"
    src.mkdir()
    for s in chosen:
        for inst in s.instances:
            shutil.copyfile(small_archive.file_path(inst), src / f"{inst.sop_uid}.dcm")
    out = tmp_path / "out"
    code, _, err = organize("organize", src, "--out", out, "--layout", "nbia-descriptive")
    assert code == 0, err
    placed: dict[str, dict[str, str]] = {}
    for rel, digest in tree(out).items():
        folder, name = rel.rsplit("/", 1)
        last5 = folder.rsplit("-", 1)[1].split("~")[0]  # a changed description adds ~hash
        placed.setdefault(last5, {})[name] = digest
    for s in chosen:
        assert placed[s.uid[-5:]] == {name: i.md5 for name, i in image_names(s.instances, True)}
    assert any(
        s.instances[0].acquisition_number != s.instances[-1].acquisition_number for s in chosen
    )


# --- re-laying a tree in place -----------------------------------------------------------------


def test_relayout_keeps_the_ledger_true(
    small_archive: FakeArchive, nbia_server: FakeNbiaServer, tmp_path: Path, organize: Organize
) -> None:
    """A downloaded tree re-laid as nbia-descriptive: files moved, old folders gone, the ledger
    and metadata.csv follow, status is clean and a new download fetches nothing."""
    uids = [s.uid for s in series_of(small_archive, 4)]
    out = tmp_path / "out"
    m = manifest(tmp_path, uids)
    assert download(nbia_server, out, str(m)).returncode == 0
    before = tree(out)

    code, stdout, err = organize("organize", out, "--layout", "nbia-descriptive", "--dry-run")
    assert code == 0 and len(stdout.splitlines()) == len(before)
    assert tree(out) == before

    code, _, err = organize("organize", out, "--layout", "nbia-descriptive")
    assert code == 0, err
    after = tree(out)
    assert sorted(after.values()) == sorted(before.values())
    assert all(rel.startswith("DEMO-CT/") and rel.rsplit("/", 1)[1][0].isdigit() for rel in after)
    assert not any((out / rel.split("/")[0]).exists() for rel in before)  # old folders pruned
    assert_ledger_true(out)
    with (out / "metadata.csv").open(newline="") as handle:
        locations = {row["File Location"] for row in csv.DictReader(handle)}
    assert all(loc.startswith("./DEMO-CT/") for loc in locations)

    fetched = get_images(nbia_server)
    status = run("status", str(out))
    assert status.returncode == 0 and f"{len(uids)} done" in status.stdout
    again = download(nbia_server, out, str(m))
    assert again.returncode == 0, again.stderr
    assert get_images(nbia_server) == fetched
    assert tree(out) == after


def test_an_interrupted_relayout_is_finished_by_the_next_run(
    small_archive: FakeArchive, tmp_path: Path, organize: Organize, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A re-lay that dies among its renames leaves a note; the next run finishes it."""
    top = retriever_tree(small_archive, tmp_path / "dr", series_of(small_archive, 2))
    out = tmp_path / "out"
    assert organize("organize", top, "--out", out)[0] == 0
    files = sorted(tree(out).values())
    real_replace = os.replace
    calls = []

    def dying_replace(src: object, dst: object) -> None:
        calls.append(src)
        if len(calls) == 3:
            raise OSError(5, "Input/output error")
        real_replace(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr("bulkdl.relayout.os.replace", dying_replace)
    code, _, err = organize("organize", out, "--layout", "flat")
    assert code == 3, err
    monkeypatch.undo()
    assert sorted(tree(out).values()) == files  # nothing lost mid-way
    code, _, err = organize("organize", out, "--layout", "flat")
    assert code == 0, err
    assert "finished the interrupted re-lay" in err
    assert sorted(tree(out).values()) == files
    assert_ledger_true(out)


def test_a_placement_cut_short_is_settled_without_deleting(
    small_archive: FakeArchive, tmp_path: Path, organize: Organize, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A move into the tree failing mid-series aborts the run (exit 3); the next run keeps
    what arrived and completes the series, and with --move no source was lost."""
    series = series_of(small_archive, 1)[0]
    top = retriever_tree(small_archive, tmp_path / "dr", [series])
    out = tmp_path / "out"
    real_move = place.move_into
    calls = []

    def dying_move(src: Path, dst: Path, *args: Any, **kw: Any) -> bool:
        calls.append(src)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return real_move(src, dst, *args, **kw)

    monkeypatch.setattr("bulkdl.place.move_into", dying_move)
    code, _, err = organize("organize", top, "--out", out, "--move")
    assert code == 3 and "disk is full" in err
    monkeypatch.undo()
    with Ledger.open(out) as ledger:
        assert ledger.states()[series.uid].state == "pending"
    assert len(list(top.rglob("*.dcm"))) == len(series.instances)  # no source removed yet
    code, _, err = organize("organize", top, "--out", out, "--move")
    assert code == 0, err
    assert tree(out) == expected_tree(small_archive, [series.uid])
    assert not list(top.rglob("*.dcm"))
    assert_ledger_true(out)


# --- usage ---------------------------------------------------------------------------------------


def test_exit_codes_and_messages(
    small_archive: FakeArchive, tmp_path: Path, organize: Organize
) -> None:
    """Bad input exits 2 naming what was wrong; an unwritable DIR exits 3 (a real process)."""
    top = retriever_tree(small_archive, tmp_path / "dr", series_of(small_archive, 1))
    cases = [
        (("organize", str(tmp_path / "nope"), "--out", str(tmp_path / "o")), 2, "no such file"),
        (("organize", str(top), "--out", str(tmp_path / "o"), "--layout", "{X"), 2, "unbalanced"),
        (("organize", str(top), "--layout", "flat"), 2, "not a bulkdl tree"),
        (("organize", str(top), "--out", str(top.parent)), 2, "inside the output folder"),
        (("organize", str(top), "--copy", "--move", "--out", "x"), 2, "not allowed with"),
    ]
    for args, code, message in cases:
        got, _, err = organize(*args)
        assert got == code, (args, err)
        assert message in err, (args, err)
        assert "Traceback" not in err
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = run("organize", str(top), "--out", str(blocker / "out"))
    assert result.returncode == 3, result.stderr
    assert "cannot write" in result.stderr and "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dr", "file"]


@pytest.mark.filterwarnings("ignore:Found unknown escape sequence")
def test_hostile_header_values_stay_inside_the_tree(
    awkward_archive: FakeArchive, tmp_path: Path, organize: Organize
) -> None:
    """Files whose IDs and descriptions are '../../x', 'CON', control characters... all land
    inside DIR, each once, under the descriptive layout."""
    src = tmp_path / "src"
    src.mkdir()
    files = [inst for s in awkward_archive.series for inst in s.instances]
    for number, inst in enumerate(files):
        shutil.copyfile(awkward_archive.file_path(inst), src / f"{number}.dcm")
    out = tmp_path / "out"
    code, _, err = organize("organize", src, "--out", out, "--layout", "nbia-descriptive")
    assert code == 0, err
    assert sorted(tree(out).values()) == sorted(inst.md5 for inst in files)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]
    assert_ledger_true(out)


def test_a_download_after_organize_fetches_nothing(
    small_archive: FakeArchive, nbia_server: FakeNbiaServer, tmp_path: Path, organize: Organize
) -> None:
    """Series organized complete from a Data Retriever tree count as done for a download."""
    chosen = series_of(small_archive, 2)
    top = retriever_tree(small_archive, tmp_path / "dr", chosen)
    out = tmp_path / "out"
    assert organize("organize", top, "--out", out)[0] == 0
    before = tree(out)
    result = download(nbia_server, out, str(manifest(tmp_path, [s.uid for s in chosen])))
    assert result.returncode == 0, result.stderr
    assert get_images(nbia_server) == 0
    assert tree(out) == before
    assert_ledger_true(out)
