"""dlkit.scan's cluster engines: real Slurm (one node, started by .ci/start-slurm) and PBS scripts.

On Slurm, with the fast toy experiment: a preempted (``scontrol requeue``) task resumes its point, a
``scancel``\\ ed task's point is run by the next ``dlkit-scan run``, Slurm's USR1 warning reaches the point which
saves and exits 75 and the task requeues itself; each point is done exactly once, counted from the attempt
records (exit code 0) and from the run directories (MetaData.json Status "completed"). A real 2-point calodnn
``--Test`` scan runs through ``--engine slurm --wait``. PBS cannot run here: its Pro and Torque scripts (and
the sbatch script) are compared with golden files, and a fake qsub/qstat/qdel checks the commands.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from scan_helpers import assert_each_done_once, ledger_of, write_config
from scan_helpers import ended_attempts as ended
from scan_helpers import wait_for as _wait_for
from slurm_fixture import slurm  # noqa: F401  (the fixture)

from dlkit.scan import Ledger
from dlkit.scan.api import open_scan
from dlkit.scan.engines.array import compress_ranges, job_environment, slurm_time_seconds
from dlkit.scan.engines.pbs import PBSEngine, pbs_memory
from dlkit.scan.engines.slurm import SlurmEngine

pytestmark = pytest.mark.timeout(180)

GOLDEN = Path(__file__).parent / "golden"
FAKE_PBS = Path(__file__).parent / "scripts" / "fake_pbs.py"


# -- helpers -----------------------------------------------------------------------------------------------
def scan_cli(config, out, *options, env=None, timeout=120):
    cmd = [sys.executable, "-m", "dlkit.scan", "run", "--experiment", "toy", "-C", str(config),
           "--OutputBase", str(out), "--no-progress", "--lease-timeout", "5", *options]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=out.parent, env=env)
    return result


def cli(*args, env=None, timeout=60):
    return subprocess.run([sys.executable, "-m", "dlkit.scan", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env)


def wait_for(predicate, timeout=90, what="condition", poll=0.2):
    return _wait_for(predicate, timeout=timeout, what=what, poll=poll)


def jobs_of(ledger) -> list[str]:
    return json.loads((ledger.path / "engine.json").read_text())["jobs"]


def squeue_tasks(job) -> dict[int, tuple[str, str, str]]:
    """task -> (its own job id, state, reason) of array job ``job``."""
    result = subprocess.run(["squeue", "-h", "-r", "-o", "%F|%K|%A|%T|%r"], capture_output=True, text=True,
                            timeout=30)
    tasks = {}
    for line in result.stdout.splitlines():
        array_job, task, own, state, reason = line.strip().split("|")
        if array_job == str(job) and task.isdigit():
            tasks[int(task)] = (own, state, reason)
    return tasks


def start_requeued_now(job, task):
    """A requeued task waits Slurm's requeue delay (cred_expire): let it start now."""
    def pending():
        entry = squeue_tasks(job).get(task)
        return entry if entry and entry[1] == "PENDING" else None

    own = wait_for(pending, timeout=60, what=f"task {job}_{task} pending again")[0]
    subprocess.run(["scontrol", "update", f"JobId={own}", "StartTime=now"], capture_output=True, timeout=30)


def point_training(ledger, index, epochs=1):
    progress = ledger.path / "leases" / str(index) / "progress.json"
    try:
        return json.loads(progress.read_text()).get("epochs", 0) >= epochs
    except (OSError, ValueError):
        return False


def all_done(ledger, n):
    return len(list((ledger.path / "done").glob("*.json"))) == n


def submit(config, out, scancel_at_end, *options):
    """``dlkit-scan run --engine slurm`` (no --wait), its jobs scancelled at the end: (ledger, the job id)."""
    result = scan_cli(config, out, "--engine", "slurm", *options)
    assert result.returncode == 0, result.stderr
    ledger = ledger_of(out)
    scancel_at_end(ledger)
    (job,) = jobs_of(ledger)
    return ledger, job


@pytest.fixture
def scancel_at_end():
    """scancel the jobs of the ledgers a test registers, whatever happens to it."""
    ledgers = []
    yield ledgers.append
    for ledger in ledgers:
        try:
            jobs = jobs_of(ledger)
        except (OSError, ValueError, KeyError):
            continue
        subprocess.run(["scancel", *jobs], capture_output=True, timeout=30)


# -- real Slurm --------------------------------------------------------------------------------------------
def test_preempted_task_resumes_its_point(tmp_path, slurm, scancel_at_end):  # noqa: F811
    config = write_config(tmp_path, n=4, epochs=4, epoch_time=0.5)
    out = tmp_path / "TrainedModels"
    ledger, job = submit(config, out, scancel_at_end, "--slots", "2")
    script = (ledger.path / "scripts" / "slurm-1.sh").read_text()
    assert "#SBATCH --array=0-3%2" in script and f"--output={ledger.path}/logs/slurm-%A_%a.out" in script
    wait_for(lambda: point_training(ledger, 0), what="point 0 training")
    subprocess.run(["scontrol", "requeue", f"{job}_0"], check=True, capture_output=True, timeout=30)  # preempted
    wait_for(lambda: ended(ledger, 0), what="point 0's attempt to end")
    start_requeued_now(job, 0)
    wait_for(lambda: all_done(ledger, 4), what="all 4 points done")
    assert_each_done_once(out, range(4))
    attempts = ended(ledger, 0)
    assert [(a["outcome"], a["exit_code"]) for a in attempts] == [("interrupted", 75), ("done", 0)]
    assert ledger.attempts(0)[1]["resume"] is True and ledger.attempts(0)[1]["job_id"] == f"{job}_0"
    metadata = json.loads((Path(attempts[1]["run_dir"]) / "MetaData.json").read_text())
    assert metadata["TotalEpochs"] == 4 and len(metadata["InputMetaData"]) == 1  # the chain of the two runs
    for i in (1, 2, 3):
        assert [a["outcome"] for a in ended(ledger, i)] == ["done"]
    status = cli("status", out)
    assert "4 done" in status.stdout and "queue" not in status.stdout


def test_scancelled_task_is_run_by_the_next_run(tmp_path, slurm, scancel_at_end):  # noqa: F811
    config = write_config(tmp_path, n=3, epochs=4, epoch_time=0.5)
    out = tmp_path / "TrainedModels"
    ledger, job = submit(config, out, scancel_at_end, "--slots", "2")
    # status says what squeue says: point 2 waits for a free slot of the %2
    wait_for(lambda: f"pending {job}_2 (JobArrayTaskLimit)" in cli("status", out).stdout, timeout=30,
             what="status to show point 2 waiting for a slot", poll=0.1)
    wait_for(lambda: point_training(ledger, 1), what="point 1 training")
    subprocess.run(["scancel", f"{job}_1"], check=True, capture_output=True, timeout=30)
    wait_for(lambda: ended(ledger, 1), what="point 1's attempt to end")
    wait_for(lambda: not squeue_tasks(job), what=f"job {job} to leave the queue")
    assert [(a["outcome"], a["exit_code"]) for a in ended(ledger, 1)] == [("interrupted", 75)]
    assert all_done(ledger, 2) and not (ledger.path / "done" / "1.json").exists()
    retry = cli("retry", out)
    assert retry.returncode == 0 and "requeued 0 point(s)" in retry.stdout
    again = scan_cli(config, out, "--engine", "slurm", "--slots", "2", "--wait")  # the same command, following
    assert again.returncode == 0, again.stderr
    assert "for 1 point(s) 1 " in again.stderr and "3 done" in again.stderr
    assert "#SBATCH --array=1%2" in (ledger.path / "scripts" / "slurm-2.sh").read_text()
    assert_each_done_once(out, range(3))
    attempts = ended(ledger, 1)
    assert [a["outcome"] for a in attempts] == ["interrupted", "done"]
    metadata = json.loads((Path(attempts[1]["run_dir"]) / "MetaData.json").read_text())
    assert metadata["TotalEpochs"] == 4


def test_wait_resubmits_when_no_job_of_the_scan_is_left(tmp_path, slurm, scancel_at_end):  # noqa: F811
    config = write_config(tmp_path, n=2, epochs=16, epoch_time=0.25)
    out = tmp_path / "TrainedModels"
    cmd = [sys.executable, "-m", "dlkit.scan", "run", "--experiment", "toy", "-C", str(config),
           "--OutputBase", str(out), "--no-progress", "--lease-timeout", "5", "--engine", "slurm", "--wait"]
    driver = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # engine.json is written after the manifest: once it is there, the ledger can be read whole
        ledger = wait_for(lambda: any((out / ".dlkit-scan").glob("*/engine.json")) and ledger_of(out),
                          what="the submission")
        scancel_at_end(ledger)
        (job,) = jobs_of(ledger)
        again = scan_cli(config, out, "--engine", "slurm")  # while queued: nothing more to submit
        assert again.returncode == 0 and "queued already" in again.stderr, again.stderr
        wait_for(lambda: point_training(ledger, 0) and point_training(ledger, 1), what="both points training")
        subprocess.run(["scancel", job], check=True, capture_output=True, timeout=30)  # the whole array
        _, stderr = driver.communicate(timeout=120)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 0, stderr
    assert "no job of the scan is queued and 2 point(s) are pending; resubmitting" in stderr
    assert len(jobs_of(ledger)) == 2 and "#SBATCH --array=0-1" in (ledger.path / "scripts" / "slurm-2.sh").read_text()
    assert_each_done_once(out, range(2))
    for i in range(2):
        assert [a["outcome"] for a in ended(ledger, i)] == ["interrupted", "done"]


def test_cancel_stops_the_jobs_and_run_resumes(tmp_path, slurm, scancel_at_end):  # noqa: F811
    config = write_config(tmp_path, n=3, epochs=16, epoch_time=0.25)
    out = tmp_path / "TrainedModels"
    ledger, job = submit(config, out, scancel_at_end, "--slots", "2")
    wait_for(lambda: point_training(ledger, 0) and point_training(ledger, 1), what="two points training")
    cancel = cli("cancel", out)
    assert cancel.returncode == 0 and "cancel requested" in cancel.stdout
    wait_for(lambda: not squeue_tasks(job), what=f"job {job} (with its pending task 2) gone from the queue")
    assert [[a["outcome"] for a in ended(ledger, i)] for i in range(3)] == [["interrupted"], ["interrupted"], []]
    again = scan_cli(config, out, "--engine", "slurm", "--slots", "2", "--wait")
    assert again.returncode == 0 and "3 done" in again.stderr, again.stderr
    assert_each_done_once(out, range(3))


def test_usr1_reaches_the_point_which_saves_and_the_task_requeues(tmp_path, slurm, scancel_at_end):  # noqa: F811
    config = write_config(tmp_path, n=1, epochs=5, epoch_time=0.5)
    out = tmp_path / "TrainedModels"
    ledger, job = submit(config, out, scancel_at_end, "--signal-seconds", "60")
    assert "#SBATCH --signal=B:USR1@60" in (ledger.path / "scripts" / "slurm-1.sh").read_text()
    wait_for(lambda: point_training(ledger, 0), what="point 0 training")
    # what --signal=B:USR1@60 does 60 s before the time limit: SIGUSR1 to the job script (its batch shell) only
    subprocess.run(["scancel", "--batch", "--signal=USR1", f"{job}_0"], check=True, capture_output=True,
                   timeout=30)
    first = wait_for(lambda: ended(ledger, 0), what="point 0's attempt to end")[0]
    assert (first["exit_code"], first["outcome"]) == (75, "interrupted")
    stopped = json.loads((Path(first["run_dir"]) / "MetaData.json").read_text())
    assert stopped["Status"] == "interrupted" and stopped["StopReason"] == "signal SIGUSR1"
    start_requeued_now(job, 0)  # the task requeued itself
    wait_for(lambda: all_done(ledger, 1), what="point 0 done")
    assert_each_done_once(out, [0])
    attempts = ended(ledger, 0)
    assert [a["outcome"] for a in attempts] == ["interrupted", "done"]
    metadata = json.loads((Path(attempts[1]["run_dir"]) / "MetaData.json").read_text())
    assert metadata["TotalEpochs"] == 5 and metadata["InputMetaData"][0]["StopReason"] == "signal SIGUSR1"
    log = (ledger.path / "logs" / f"slurm-{job}_0.out").read_text()
    assert "requeueing this task" in log


def test_time_limit_warning_stops_the_point_and_requeues_the_task(tmp_path, slurm, scancel_at_end):  # noqa: F811
    """The real --signal=B:USR1@50 of a 1-minute task: Slurm checks it every ~30 s, so it comes 10-40 s in."""
    config = write_config(tmp_path, n=1, epochs=1000, epoch_time=0.5)
    out = tmp_path / "TrainedModels"
    ledger, job = submit(config, out, scancel_at_end, "--time", "1", "--signal-seconds", "50")
    first = wait_for(lambda: ended(ledger, 0), timeout=55, what="Slurm's USR1 before the time limit")[0]
    assert (first["exit_code"], first["outcome"]) == (75, "interrupted")
    stopped = json.loads((Path(first["run_dir"]) / "MetaData.json").read_text())
    assert stopped["StopReason"] == "signal SIGUSR1" and stopped["TotalEpochs"] >= 1
    wait_for(lambda: (squeue_tasks(job).get(0) or ("", "", ""))[1] == "PENDING", timeout=30,
             what="the task requeued by itself")
    assert "requeueing this task" in (ledger.path / "logs" / f"slurm-{job}_0.out").read_text()
    status = cli("status", out)
    assert f"pending {job}_0" in status.stdout  # queued again (BeginTime: the requeue delay)


def test_calodnn_scan_on_slurm_wait_then_scan_analysis(tmp_path, slurm, scancel_at_end):  # noqa: F811
    from calodnn.simulate import write_dataset

    data = tmp_path / "lcd"
    write_dataset(data, events_per_class=300, events_per_file=150, seed=5, progress=False)
    out = tmp_path / "TrainedModels"
    cmd = [sys.executable, "-m", "dlkit.scan", "run", "--experiment", "calodnn.ClassificationExperiment",
           "--points", "0-1", "--slots", "2", "--cpus-per-task", "1", "--engine", "slurm", "--wait",
           "--OutputBase", str(out), "--metric", "Ele_AUC", "--no-progress",
           "--", "--Test", "--data", str(data), "--set", "BatchSize=64", "--set", "EnergyBins=[10, 510, 4]"]
    env = dict(os.environ, DLKIT_CACHE_DIR=str(tmp_path / "cache"), TF_CPP_MIN_LOG_LEVEL="3")
    try:
        result = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=170)
    finally:
        for ledger in Ledger.find(out) if (out / ".dlkit-scan").is_dir() else []:
            scancel_at_end(ledger)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 done" in result.stderr
    assert_each_done_once(out, [0, 1])
    table = subprocess.run([sys.executable, "-m", "dlkit.ScanAnalysis", str(out), "--per-point"],
                           capture_output=True, text=True, timeout=120)
    assert table.returncode == 0, table.stderr
    rows = table.stdout.splitlines()[2:]
    assert len(rows) == 2 and all(" ok " in row for row in rows), table.stdout


# -- scripts, without a scheduler --------------------------------------------------------------------------
OPTIONS = dict(slots=2, partition="gpu", time="2:30:00", gres="gpu:1", mem="8G", cpus_per_task=4, account="physics",
               sbatch_extra=["--qos=high", "--constraint=a100"], max_retries=3, lease_timeout=30.0)
PBS_EXTRA = ["-l place=scatter", "-m abe"]
PLACEHOLDERS = dict(python="@PYTHON@", pythonpath="@PYTHONPATH@", workdir="@WORKDIR@")


def golden_ledger(tmp_path) -> Ledger:
    return open_scan("toy", write_config(tmp_path, n=6), points="0-3,5", name="golden",
                     output_base=tmp_path / "TrainedModels")


def check_golden(name, text, ledger):
    text = text.replace(str(ledger.path.resolve()), "@LEDGER@")
    path = GOLDEN / name
    if os.environ.get("DLKIT_UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text(), f"{name} differs from its golden file (DLKIT_UPDATE_GOLDEN=1 rewrites it)"


@pytest.mark.parametrize("engine, name, options", [
    (SlurmEngine(), "slurm_array.sh", dict(signal_seconds=120)),
    (PBSEngine("pro"), "pbs_pro_array.sh", dict(sbatch_extra=PBS_EXTRA)),
    (PBSEngine("torque"), "torque_array.sh", dict(sbatch_extra=PBS_EXTRA)),
])
def test_scripts_match_golden_files(tmp_path, engine, name, options):
    ledger = golden_ledger(tmp_path)
    text = engine.write_script(ledger, ledger.points(), **{**OPTIONS, **options}, **PLACEHOLDERS)
    check_golden(name, text, ledger)
    subprocess.run(["bash", "-n"], input=text, text=True, check=True)  # valid shell


def test_script_pieces():
    assert compress_ranges([7, 0, 1, 2, 3, 9, 10, 12]) == "0-3,7,9-10,12" and compress_ranges([4]) == "4"
    assert [slurm_time_seconds(t) for t in ("90", "1:30", "2:00:00", "1-0", "1-2:03:04")] == [
        5400, 90, 7200, 86400, 93784]
    assert [pbs_memory(m) for m in ("8G", "4000M", "4000", "16gb")] == ["8gb", "4000mb", "4000mb", "16gb"]


def test_fake_qsub_gets_the_submission_and_status_needs_no_scheduler(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for prog in ("qsub", "qstat", "qdel"):
        (bin_dir / prog).symlink_to(FAKE_PBS)
    calls = tmp_path / "pbs_calls.jsonl"
    qstat = tmp_path / "qstat.txt"
    qstat.write_text("Job id            Name             User              Time Use S Queue\n"
                     "----------------  ---------------- ----------------  -------- - -----\n"
                     "4242[].fakepbs    dlkit-toy_scan   root                     0 B workq\n"
                     "4242[1].fakepbs   dlkit-toy_scan   root              00:00:01 R workq\n"
                     "4242[3].fakepbs   dlkit-toy_scan   root                     0 Q workq\n")
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", FAKE_PBS_LOG=str(calls),
               FAKE_QSTAT_FILE=str(qstat))
    config = write_config(tmp_path, n=6)
    out = tmp_path / "TrainedModels"
    options = ["--slots", "2", "--partition", "gpu", "--time", "2:30:00", "--gres", "gpu:1", "--mem", "8G",
               "--cpus-per-task", "4", "--account", "physics", "--sbatch-extra=-l place=scatter",
               "--sbatch-extra=-m abe", "--max-retries", "3", "--points", "0-3,5"]
    result = scan_cli(config, out, "--engine", "pbs", "--pbs-flavor", "pro", "--name", "golden", *options,
                      "--lease-timeout", "30", env=env)
    assert result.returncode == 0, result.stderr
    ledger = ledger_of(out)
    script = ledger.path / "scripts" / "pbs-1.sh"
    submitted = [json.loads(line) for line in calls.read_text().splitlines()]  # then qstat, for the status
    assert submitted[0] == {"prog": "qsub", "argv": ["qsub", str(script.resolve())]}
    assert [c["prog"] for c in submitted] == ["qsub", "qstat"]
    assert json.loads((ledger.path / "engine.json").read_text())["jobs"] == ["4242[].fakepbs"]
    environment = {**job_environment(), "workdir": str(tmp_path)}
    text = script.read_text()
    assert text == PBSEngine("pro").write_script(ledger, [0, 1, 2, 3, 5], **{**OPTIONS, "sbatch_extra": PBS_EXTRA},
                                                 **environment)
    text = text.replace(str(ledger.path.resolve()), "@LEDGER@").replace(environment["python"], "@PYTHON@")
    text = text.replace(str(tmp_path), "@WORKDIR@")
    golden = (GOLDEN / "pbs_pro_array.sh").read_text()
    if environment["pythonpath"]:
        text = text.replace(environment["pythonpath"], "@PYTHONPATH@")
    else:  # dlkit installed in site-packages: the script sets no PYTHONPATH
        golden = "".join(line for line in golden.splitlines(keepends=True) if "@PYTHONPATH@" not in line)
    assert text == golden  # the golden file's script, but for the paths

    status = cli("status", out, env=env)  # the queue column from qstat -t
    assert status.returncode == 0 and "queue" in status.stdout.splitlines()[1]
    assert "R 4242[1]" in status.stdout and "Q 4242[3]" in status.stdout
    last_call = json.loads(calls.read_text().splitlines()[-1])
    assert last_call == {"prog": "qstat", "argv": ["qstat", "-t", "4242[].fakepbs"]}
    bare = dict(os.environ, PATH=str(Path(sys.executable).parent))  # no scheduler tools at all
    status = cli("status", out, env=bare)
    assert status.returncode == 0 and "5 pending" in status.stdout and "queue" not in status.stdout
    code = ("import sys; from dlkit.scan.api import status_rows; from dlkit.scan import Ledger; "
            f"status_rows(Ledger({str(ledger.path)!r})); "
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules")
    probe = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert probe.returncode == 0, probe.stderr
    cancel = cli("cancel", out, env=env)
    assert cancel.returncode == 0
    assert json.loads(calls.read_text().splitlines()[-1]) == {"prog": "qdel", "argv": ["qdel", "4242[].fakepbs"]}
