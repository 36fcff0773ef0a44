"""``bulkdl slurm`` and ``bulkdl finalize``: the job script's text, and a real Slurm array.

The script tests read what ``bulkdl slurm`` writes (directives, quoting, no secrets) and run
its body with a stand-in interpreter that prints its arguments. The cluster test starts
munged, slurmctld and slurmd on 127.0.0.1 (:mod:`tests.slurm_cluster`, which installs Debian's
slurm-wlm and munge when missing), submits a 4-task array written by ``bulkdl slurm --submit``
against the fake NBIA server, waits for it and its finalize job, and compares the tree, ``bulkdl
status`` and ``metadata.csv`` with a plain run's. It is skipped only where the machine cannot
install or start Slurm, saying why.
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from bulkdl import cli
from bulkdl.slurm import ArrayJob, array_script
from bulkdl.testing import FakeArchive, FakeNbiaServer
from tests.helpers import bulkdl_cmd, manifest, tree
from tests.slurm_cluster import Unavailable, local_cluster, wait_for_job

SECRET = "s3cr3t-Pa55word"


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without BULKDL_* and SLURM_* settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BULKDL_", "SLURM_"))}
    return env | extra


def slurm(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``bulkdl slurm ARGS`` in a subprocess."""
    return subprocess.run(
        bulkdl_cmd("slurm", *map(str, args)),
        capture_output=True,
        text=True,
        env=env or clean_env(),
        timeout=60,
    )


@pytest.fixture
def bulkdl(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Callable[..., subprocess.CompletedProcess[str]]:
    """``bulkdl ARGS`` in this process (no BULKDL_* or SLURM_* settings), as a finished
    process: its exit status, stdout and stderr."""
    for name in os.environ:
        if name.startswith(("BULKDL_", "SLURM_")):
            monkeypatch.delenv(name)

    def call(*args: str | Path) -> subprocess.CompletedProcess[str]:
        try:
            code = cli.main([str(a) for a in args])
        except SystemExit as exit_:  # argparse's usage errors
            code = int(exit_.code or 0)
        captured = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, captured.out, captured.err)

    return call


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    """A two-series manifest in a folder whose name has a space and a quote."""
    folder = tmp_path / "my manifests's"
    folder.mkdir()
    return manifest(folder, ["1.2.3.4", "1.2.3.5"])


def test_script_directives_and_command(
    inputs: Path, tmp_path: Path, bulkdl: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    """The array covers N tasks, logs go under DIR/.bulkdl/slurm (quoted, % doubled), the job
    options are directives, and only the download flags given are passed on."""
    out = tmp_path / "out dir %x"
    done = bulkdl(
        "slurm",
        inputs,
        *("--out", out, "--tasks", "4", "--partition", "debug,long", "--time", "1-12:00:00"),
        *("--cpus", "2", "--max-running", "3", "--sbatch=--mem=4G", "--sbatch", "comment=a b"),
        *("--api-url", "http://127.0.0.1:9/nbia-api/services/v4/", "--concurrency", "2"),
        *("--layout", "flat", "--collection", "LIDC-IDRI", "--new-file-names"),
    )
    assert done.returncode == 2  # manifests and filters together: refused as download does
    done = bulkdl(
        "slurm",
        inputs,
        *("--out", out, "--tasks", "4", "--partition", "debug,long", "--time", "1-12:00:00"),
        *("--cpus", "2", "--max-running", "3", "--sbatch=--mem=4G", "--sbatch", "comment=a b"),
        *("--api-url", "http://127.0.0.1:9/nbia-api/services/v4/", "--concurrency", "2"),
        *("--layout", "flat", "--new-file-names"),
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "#!/bin/bash"
    directives = [line for line in lines if line.startswith("#SBATCH")]
    assert directives == [
        "#SBATCH --job-name=bulkdl",
        "#SBATCH --array=0-3%3",
        f'#SBATCH --output="{tmp_path}/out dir %%x/.bulkdl/slurm/%A_%a.log"',
        "#SBATCH --cpus-per-task=2",
        "#SBATCH --partition=debug,long",
        "#SBATCH --time=1-12:00:00",
        "#SBATCH --mem=4G",
        '#SBATCH "--comment=a b"',
    ]
    assert "bulkdl finalize" in done.stderr
    assert not out.exists()  # printing the script writes nothing


def test_script_runs_the_shard_of_its_task(inputs: Path, tmp_path: Path) -> None:
    """The body, run by bash as a task would, passes every path intact and the task's shard."""
    probe = tmp_path / "probe"
    probe.write_text(f"#!{sys.executable}\nimport json, sys\nprint(json.dumps(sys.argv[1:]))\n")
    probe.chmod(0o755)
    out = tmp_path / "it's a $HOME `dir`"
    job = ArrayJob(
        inputs=(str(inputs),),
        out=out,
        tasks=4,
        download_options=("--layout", "{PatientID}/{SOPInstanceUID}.dcm", "--api-url", "x y"),
        python=str(probe),
    )
    script = tmp_path / "job.sh"
    script.write_text(array_script(job))
    done = subprocess.run(
        ["bash", str(script)],
        capture_output=True,
        text=True,
        env=clean_env(SLURM_ARRAY_TASK_ID="2"),
        check=True,
    )
    assert json.loads(done.stdout) == [
        *("-m", "bulkdl", "download", "--out", str(out), "--no-progress", "--shard", "2/4"),
        *("--layout", "{PatientID}/{SOPInstanceUID}.dcm", "--api-url", "x y", "--", str(inputs)),
    ]


def test_staging_expands_on_the_node_and_pack_is_passed_on(
    inputs: Path, tmp_path: Path, bulkdl: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    """--staging keeps its $VAR for the task's shell (node-local scratch), --pack is passed on."""
    done = bulkdl(
        "slurm",
        inputs,
        *("--out", tmp_path / "out", "--tasks", "2", "--pack", "zip"),
        *("--staging", "${NODE_SCRATCH}/bulkdl $USER"),
    )
    assert done.returncode == 0, done.stderr
    assert '--staging "${NODE_SCRATCH}/bulkdl $USER"' in done.stdout
    probe = tmp_path / "probe"
    probe.write_text(f"#!{sys.executable}\nimport json, sys\nprint(json.dumps(sys.argv[1:]))\n")
    probe.chmod(0o755)
    script = tmp_path / "job.sh"
    script.write_text(done.stdout.replace(sys.executable, str(probe), 1))
    ran = subprocess.run(
        ["bash", str(script)],
        capture_output=True,
        text=True,
        env=clean_env(SLURM_ARRAY_TASK_ID="1", NODE_SCRATCH="/scratch/42", USER="ann"),
        check=True,
    )
    argv = json.loads(ran.stdout)
    assert argv[argv.index("--staging") + 1] == "/scratch/42/bulkdl ann"
    assert argv[argv.index("--pack") + 1] == "zip"
    unset = subprocess.run(
        ["bash", str(script)],
        capture_output=True,
        text=True,
        env=clean_env(SLURM_ARRAY_TASK_ID="1"),
    )
    assert unset.returncode != 0 and "NODE_SCRATCH: unbound variable" in unset.stderr


@pytest.mark.parametrize(
    "staging", ["$(rm -rf ~)", "`id`", '/a"b', "/a\\b", "$1/x", "${HOME:-/tmp}", "/a\tb"]
)
def test_staging_that_the_shell_would_run_is_refused(
    staging: str,
    inputs: Path,
    tmp_path: Path,
    bulkdl: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    done = bulkdl("slurm", inputs, "--out", tmp_path / "out", "--tasks", "2", "--staging", staging)
    assert done.returncode == 2
    assert "--staging" in done.stderr and "cannot be passed" in done.stderr
    assert done.stdout == ""


def test_no_secret_reaches_the_script(
    inputs: Path,
    tmp_path: Path,
    bulkdl: Callable[..., subprocess.CompletedProcess[str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Credentials in the environment stay there: not in the script, its output or the files;
    a URL carrying them and a credentials flag are refused without echoing them."""
    monkeypatch.setenv("BULKDL_USERNAME", "alice")
    monkeypatch.setenv("BULKDL_PASSWORD", SECRET)
    script = tmp_path / "job.sh"
    done = bulkdl("slurm", inputs, "--out", tmp_path / "out", "--tasks", "2", "-o", script)
    assert done.returncode == 0, done.stderr
    written = [script, *(tmp_path / "out").rglob("*")]
    assert all(SECRET not in p.read_text() for p in written if p.is_file())
    assert SECRET not in done.stdout + done.stderr
    assert "finalize.sh" in done.stderr
    url = f"https://alice:{SECRET}@example.org/nbia-api/services/v4/"
    for bad in (["--api-url", url], ["--password", SECRET]):
        refused = bulkdl("slurm", inputs, "--out", tmp_path / "o", "--tasks", "2", *bad)
        assert refused.returncode == 2
        assert SECRET not in refused.stdout + refused.stderr


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["--time", "1:61:00"], "--time '1:61:00': use Slurm's forms"),
        (["--time", "soon"], "--time 'soon'"),
        (["--partition", "a b"], "--partition 'a b': a partition name"),
        (["--partition", "x;rm"], "a partition name"),
        (["--tasks", "0"], "--tasks must be 1 to"),
        (["--cpus", "0"], "--cpus must be at least 1"),
        (["--sbatch=--array=0-9"], "bulkdl sets that option itself"),
        (["--sbatch", 'comment=say "hi"'], "a double quote"),
        (["--sbatch=-A"], "give a long option"),
        (["--concurrency", "0"], "concurrency"),
    ],
)
def test_bad_job_options_are_named(
    inputs: Path,
    tmp_path: Path,
    args: list[str],
    problem: str,
    bulkdl: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    """What sbatch would refuse or misread is a usage error naming it, before anything runs."""
    base = ["--out", str(tmp_path / "out"), "--tasks", "2"]
    if "--tasks" in args:
        base = base[:2]
    done = bulkdl("slurm", inputs, *base, *args)
    assert done.returncode == 2
    assert problem in done.stderr


def test_stdin_and_other_array_sizes_are_refused(
    inputs: Path, tmp_path: Path, bulkdl: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    """Tasks cannot read stdin; a tree written by an array of another size is named."""
    done = bulkdl("slurm", "-", "--out", tmp_path / "out", "--tasks", "2")
    assert done.returncode == 2 and "cannot read stdin" in done.stderr
    state = tmp_path / "out" / ".bulkdl"
    state.mkdir(parents=True)
    (state / "ledger-0of3.sqlite").write_bytes(b"")
    done = bulkdl("slurm", inputs, "--out", tmp_path / "out", "--tasks", "2")
    assert done.returncode == 2 and "an array of 3 tasks" in done.stderr


def _rows(out: Path) -> list[dict[str, str]]:
    with (out / "metadata.csv").open(newline="") as handle:
        rows = [
            {k: v for k, v in row.items() if k != "Download Timestamp"}
            for row in csv.DictReader(handle)
        ]
    return sorted(rows, key=lambda row: row["Series UID"])


def _status(out: Path) -> object:
    done = subprocess.run(
        bulkdl_cmd("status", str(out), "--json"), capture_output=True, text=True, env=clean_env()
    )
    return json.loads(done.stdout)


def test_a_real_slurm_array_equals_one_run(
    nbia_server: FakeNbiaServer, small_archive: FakeArchive, tmp_path: Path
) -> None:
    """A 4-task array from 'bulkdl slurm --submit' on a real Slurm, staging in the node's
    $NODE_SCRATCH, then its finalize job: the tree, 'bulkdl status' and metadata.csv equal a
    single-process run's."""
    uids = [s.uid for s in small_archive.series]
    m = manifest(tmp_path, uids)
    plain, sharded = tmp_path / "plain", tmp_path / "sharded tree"
    scratch = tmp_path / "node scratch"  # what $NODE_SCRATCH is where the tasks run
    (scratch / "staging").mkdir(parents=True)
    api = ("--api-url", nbia_server.v4_url)
    single = subprocess.run(
        bulkdl_cmd("download", str(m), "--out", str(plain), *api, "--no-progress"),
        capture_output=True,
        text=True,
        env=clean_env(),
    )
    assert single.returncode == 0, single.stderr
    try:
        cluster = local_cluster(tmp_path / "slurm")
        env = cluster.__enter__()
    except Unavailable as why:
        pytest.skip(f"no local Slurm on this machine: {why}")
    try:
        submitted = slurm(
            m,
            *("--out", sharded, "--tasks", "4", *api, "--concurrency", "2"),
            *("--time", "10", "--sbatch", "comment=bulkdl test"),
            *("--staging", "${NODE_SCRATCH}/staging", "--submit"),
            env=clean_env(SLURM_CONF=env["SLURM_CONF"], NODE_SCRATCH=str(scratch)),
        )
        assert submitted.returncode == 0, submitted.stderr
        ids = re.findall(r"job (\d+)", submitted.stdout)
        assert len(ids) == 3 and ids[0] == ids[2], submitted.stdout  # array, finalize after it
        wait_for_job(ids[0], env, timeout=90)
        wait_for_job(ids[1], env, timeout=60)
    finally:
        cluster.__exit__(None, None, None)

    logs = sharded / ".bulkdl" / "slurm"
    assert len(list(logs.glob(f"{ids[0]}_*.log"))) == 4
    assert list(logs.glob(f"{ids[1]}_finalize.log")), list(logs.iterdir())
    assert sorted(p.name for p in (sharded / ".bulkdl").glob("ledger*.sqlite")) == [
        f"ledger-{k}of4.sqlite" for k in range(4)
    ]
    assert tree(sharded) == tree(plain)
    assert [p.name for p in (scratch / "staging").iterdir()] == []  # each task's folder removed
    assert _status(sharded) == _status(plain)
    assert _rows(sharded) == _rows(plain)
    assert sorted(os.listdir(sharded / "LICENSES")) == sorted(os.listdir(plain / "LICENSES"))
    assert len(nbia_server.log.for_endpoint("getImage")) == 2 * len(uids)  # once each, per tree
