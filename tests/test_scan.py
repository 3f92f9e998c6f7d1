"""dlkit.scan: every point exactly once through concurrent workers, kill -9, SIGSTOP, Ctrl-C and restarts.

The fast fake experiment is toy (no Keras). "Exactly once" is counted independently of the ledger's
own state markers: from the attempt records (attempts with exit code 0) and from the run directories on disk
(MetaData.json with Status "completed"), read with plain json.
"""

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dlkit.scan import Ledger
from dlkit.scan.ledger import Decision, classify_attempts
from scan_helpers import (assert_each_done_once, ended_attempts, ledger_of, running_points, scan_processes, wait_for,
                          write_config)

pytestmark = pytest.mark.timeout(240)


def scan_cmd(config, out, *options, flags=()):
    return [sys.executable, "-m", "dlkit.scan", "run", "--experiment", "toy", "-C", str(config),
            "--OutputBase", str(out), "--no-progress", *options, "--", *flags]


_started: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def _no_leftovers():
    """A failing test must not leave a (stopped) worker behind: kill what it started, SIGCONT first."""
    yield
    while _started:
        proc = _started.pop()
        if proc.poll() is None:
            for sig in (signal.SIGCONT, signal.SIGKILL):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    pass
            proc.wait()


def start(cmd, host=None, **kwargs):
    env = dict(os.environ)
    if host:
        env["DLKIT_SCAN_HOST"] = host
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kwargs)
    _started.append(proc)
    return proc


# -- the contract, unit level -------------------------------------------------------------------------

def test_classify_attempts():
    crash = {"exit_code": 1, "outcome": "crashed"}
    interrupted = {"exit_code": 75, "outcome": "interrupted"}
    assert classify_attempts([], 2).state == "pending"
    assert classify_attempts([crash, {"exit_code": 0, "outcome": "done"}], 2).state == "done"
    assert classify_attempts([{"exit_code": 2, "outcome": "failed"}], 2).state == "failed"
    assert classify_attempts([crash, crash], 2).state == "pending"
    assert classify_attempts([crash, crash, crash], 2) == Decision(
        "failed", "crashed 3 times (--max-retries 2); last: exit 1")
    # interruptions: stuck after 3 in a row without a new completed epoch, not while epochs advance
    progressing = [{**interrupted, "epochs": e} for e in (1, 2, 3, 4)]
    assert classify_attempts(progressing, 2).state == "pending"
    assert classify_attempts([{**interrupted, "epochs": 2}] * 2, 2).state == "pending"
    assert classify_attempts([{**interrupted, "epochs": 0}] * 3, 2).state == "stuck"
    assert classify_attempts([{**interrupted, "epochs": 2}] * 3, 2).state == "pending"  # the first one made 2
    assert classify_attempts([{**interrupted, "epochs": 2}] * 4, 2).state == "stuck"
    assert classify_attempts([{**interrupted, "epochs": 2}, *[{**interrupted, "epochs": 3}] * 2], 2).state == "pending"
    assert classify_attempts([{**interrupted, "epochs": 3}, *[{**interrupted, "epochs": 3}] * 3], 2).state == "stuck"


def _race(path, index, queue):
    ledger = Ledger(path)
    token = ledger.new_token()
    queue.put(token if ledger.acquire(0, token, {"pid": os.getpid()}) else None)


def test_lease_is_acquired_and_ended_exactly_once(tmp_path):
    ledger = Ledger(tmp_path / "ledger")
    ledger.create_or_check({"experiment": "x", "points": [0], "params": {}, "flags": []})
    queue = multiprocessing.get_context("fork").Queue()
    procs = [multiprocessing.get_context("fork").Process(target=_race, args=(ledger.path, 0, queue))
             for _ in range(12)]
    for p in procs:
        p.start()
    winners = [t for t in (queue.get(timeout=30) for _ in procs) if t]
    for p in procs:
        p.join()
    assert len(winners) == 1
    assert ledger.owner(0)["token"] == winners[0]
    assert not ledger.fenced(0, winners[0])
    assert ledger.end(0, winners[0]) and not ledger.end(0, winners[0])  # a lease ends once
    assert ledger.fenced(0, winners[0])


def test_changed_config_or_flags_refused(tmp_path):
    config = write_config(tmp_path, n=2, epoch_time=0)
    out = tmp_path / "out"
    assert subprocess.run(scan_cmd(config, out)).returncode == 0
    config.write_text(config.read_text().replace("[1, 2]", "[1, 2, 3]"))
    result = subprocess.run(scan_cmd(config, out), capture_output=True, text=True)
    assert result.returncode == 2
    assert "different config_sha256, params" in result.stderr and "[1, 2, 3]" in result.stderr
    config.write_text(config.read_text().replace("[1, 2, 3]", "[1, 2]"))
    result = subprocess.run(scan_cmd(config, out, flags=["--set", "Epochs=5"]), capture_output=True, text=True)
    assert result.returncode == 2 and "different flags" in result.stderr and "Epochs=5" in result.stderr
    result = subprocess.run(scan_cmd(config, out, flags=["-s", "1"]), capture_output=True, text=True)
    assert result.returncode == 2 and "'-s'" in result.stderr


def test_a_scan_grows_by_points_and_keeps_its_policy(tmp_path):
    """Points are a selection of one scan: --points 0-1, then --points 2-3, is one scan with 4 done; its lease
    timeout is the scan's, so a later run asking for another one is refused."""
    config = write_config(tmp_path, n=4, epoch_time=0)
    out = tmp_path / "out"
    first = subprocess.run(scan_cmd(config, out, "--points", "0-1", "--lease-timeout", "30"), capture_output=True,
                           text=True)
    assert first.returncode == 0, first.stderr
    second = subprocess.run(scan_cmd(config, out, "--points", "2-3"), capture_output=True, text=True)
    assert second.returncode == 0, second.stderr
    assert "scan toy-toy_scan: 4 done" in second.stderr  # the whole scan's count
    assert_each_done_once(out, range(4))  # one ledger, every point once
    (ledger,) = Ledger.find(out)
    manifest = json.loads((ledger.path / "manifest.json").read_text())
    assert manifest["points"] == [0, 1] and manifest["options"]["lease_timeout"] == 30.0
    status = subprocess.run([sys.executable, "-m", "dlkit.scan", "status", str(out)], capture_output=True, text=True)
    assert status.returncode == 0 and "4 done" in status.stdout.splitlines()[0], status.stdout
    refused = subprocess.run(scan_cmd(config, out, "--points", "3", "--lease-timeout", "1"), capture_output=True,
                             text=True)
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines()[-1] == (
        f"dlkit-scan: error: --lease-timeout 1: scan {ledger.name!r} was created with --lease-timeout 30, which all "
        "its workers use; leave the flag out (or start another scan with --name)")
    worker = subprocess.run([sys.executable, "-m", "dlkit.scan", "work", str(ledger.path), "--lease-timeout", "1"],
                            capture_output=True, text=True)
    assert worker.returncode == 2 and "--lease-timeout 1: scan" in worker.stderr


# -- many workers -------------------------------------------------------------------------------------

@pytest.mark.parametrize("workers", [2, 4])
def test_concurrent_workers_run_each_point_once(tmp_path, workers):
    n = 10
    config = write_config(tmp_path, n=n, epochs=2, epoch_time=0.05)
    out = tmp_path / "out"
    procs = [start(scan_cmd(config, out, "--slots", "1")) for _ in range(workers)]
    outputs = [p.communicate(timeout=180)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * workers, outputs
    assert_each_done_once(out, n)
    hosts = {a["token"].rsplit("-", 2)[1] for i in range(n) for a in ended_attempts(ledger_of(out), i)}
    assert len(hosts) > 1  # the work was shared between the worker processes


def test_kill9_worker_point_taken_over_after_timeout(tmp_path):
    config = write_config(tmp_path, n=2, epochs=4, epoch_time=0.4)
    out = tmp_path / "out"
    a = start(scan_cmd(config, out, "--slots", "2", "--lease-timeout", "2"), host="hostA")
    held = wait_for(lambda: running_points(out), what="a running point")
    # kill -9 the worker and its points: nothing heartbeats any more, and the holder is on "another host"
    for owner in held.values():
        assert owner["host"] == "hostA"
    children = [json.loads((ledger_of(out).lease_dir(i) / "heartbeat.json").read_text())["child_pid"] for i in held]
    os.kill(a.pid, signal.SIGKILL)
    for pid in children:
        os.killpg(pid, signal.SIGKILL)
    a.wait()
    t0 = time.monotonic()
    b = start(scan_cmd(config, out, "--slots", "2", "--lease-timeout", "2"), host="hostB")
    output = b.communicate(timeout=120)[0]
    assert b.returncode == 0, output
    assert time.monotonic() - t0 >= 2.0  # not before the lease timeout
    assert_each_done_once(out, 2)
    for i in held:
        lost = [a for a in ended_attempts(ledger_of(out), i) if a.get("exit_code") is None]
        assert len(lost) == 1 and "no heartbeat" in lost[0]["reason"] and lost[0]["outcome"] == "interrupted"
        resumed = [a for a in ledger_of(out).attempts(i) if a.get("exit_code") == 0]
        assert resumed[0]["resume"] is True and resumed[0]["host"] == "hostB"


def test_sigstopped_holder_is_fenced_and_writes_nothing(tmp_path):
    config = write_config(tmp_path, n=1, epochs=6, epoch_time=0.3)
    out = tmp_path / "out"
    a = start(scan_cmd(config, out, "--lease-timeout", "1.5"), host="hostA")
    held = wait_for(lambda: running_points(out), what="a running point")
    ledger = ledger_of(out)
    child = json.loads((ledger.lease_dir(0) / "heartbeat.json").read_text())["child_pid"]
    token = held[0]["token"]
    os.kill(a.pid, signal.SIGSTOP)
    os.killpg(child, signal.SIGSTOP)
    run_dir = Path(json.loads((ledger.lease_dir(0) / "progress.json").read_text())["run_dir"])
    snapshot = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    b = start(scan_cmd(config, out, "--lease-timeout", "1.5"), host="hostB")
    output = b.communicate(timeout=120)[0]
    assert b.returncode == 0, output
    os.killpg(child, signal.SIGCONT)  # the point wakes first: at its next save it must see the fence and quit
    wait_for(lambda: not scan_processes(ledger.path), timeout=10, what="the fenced point to exit by itself")
    assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == snapshot
    os.kill(a.pid, signal.SIGCONT)
    output_a = a.communicate(timeout=60)[0]
    assert a.returncode == 0, output_a  # the holder noticed, killed its point, and found the scan done
    assert "taken over" in output_a
    assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == snapshot  # the fenced holder wrote nothing
    assert not (ledger.path / "attempts" / "0" / f"{token}.end.json").read_text().count('"exit_code": 0')
    assert_each_done_once(out, 1)
    assert not scan_processes(ledger.path)


def test_sigint_driver_leaves_no_orphans_and_rerun_finishes(tmp_path):
    config = write_config(tmp_path, n=4, epochs=5, epoch_time=0.3)
    out = tmp_path / "out"
    a = start(scan_cmd(config, out, "--slots", "2"))
    wait_for(lambda: len(running_points(out)) == 2, what="two running points")
    ledger = ledger_of(out)
    assert len(scan_processes(ledger.path)) == 2
    os.kill(a.pid, signal.SIGINT)  # what Ctrl-C sends
    a.communicate(timeout=60)
    assert a.returncode == 75
    assert not scan_processes(ledger.path)
    interrupted = {i for i in range(4) for x in ended_attempts(ledger, i) if x["exit_code"] == 75}
    assert len(interrupted) == 2
    b = subprocess.run(scan_cmd(config, out, "--slots", "2"), capture_output=True, text=True, timeout=120)
    assert b.returncode == 0, b.stderr
    assert_each_done_once(out, 4)
    for i in interrupted:  # resumed with -p, to the configured total of epochs
        final = [x for x in ledger.attempts(i) if x.get("exit_code") == 0][0]
        assert final["resume"] and "-p" in final["argv"]
        metadata = json.loads((Path(final["run_dir"]) / "MetaData.json").read_text())
        assert metadata["TotalEpochs"] == 5 and len(metadata["InputMetaData"]) == 1
        assert len(metadata["EpochTime"]) + len(metadata["InputMetaData"][0]["EpochTime"]) == 5


def test_failed_crashing_and_stuck_points(tmp_path):
    extra = ", 'UserErrorPoints': [0], 'CrashPoints': [1], 'InterruptPoints': [2]"
    config = write_config(tmp_path, n=4, epochs=10, epoch_time=0, extra=extra)
    out = tmp_path / "out"
    result = subprocess.run(scan_cmd(config, out, "--slots", "2", "--max-retries", "2"), capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 1, result.stderr  # some points failed
    ledger = ledger_of(out)
    assert [a["exit_code"] for a in ended_attempts(ledger, 0)] == [2]  # not retried
    assert [a["exit_code"] for a in ended_attempts(ledger, 1)] == [1, 1, 1]  # the first try and 2 retries
    assert [a["exit_code"] for a in ended_attempts(ledger, 2)] == [75, 75, 75]
    assert [a["exit_code"] for a in ended_attempts(ledger, 3)] == [0]
    import dlkit.scan

    table = dlkit.scan.status(out).set_index("point")
    assert list(table["state"]) == ["failed", "failed", "stuck", "done"]
    assert list(table["attempts"]) == [1, 3, 3, 1]
    assert "UserErrorPoints" in table.loc[0, "last_error"]
    assert "CrashPoints" in table.loc[1, "last_error"]
    assert table.loc[3, "epochs"] == 10 and table.loc[3, "metric"] == pytest.approx(1.1 / (4 * 10))

    # retry requeues the failed and stuck points; their old attempts no longer count against the limits
    assert dlkit.scan.retry(out) == {ledger.name: [0, 1, 2]}
    config.write_text(config.read_text())  # same content: same scan
    result = subprocess.run(scan_cmd(config, out, "--slots", "2"), capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert len(ended_attempts(ledger, 1)) == 6 and len(ended_attempts(ledger, 0)) == 2


def test_a_point_killed_after_its_run_completed_is_done_not_rerun(tmp_path):
    """A signal or crash on the way out (after MetaData says completed) must not make the scan train it again."""
    config = write_config(tmp_path, n=2, extra=", 'KilledAfterPoints': [1]")
    out = tmp_path / "out"
    assert subprocess.run(scan_cmd(config, out), timeout=120).returncode == 0
    ledger = ledger_of(out)
    (attempt,) = ended_attempts(ledger, 1)
    assert attempt["exit_code"] == -signal.SIGKILL and attempt["outcome"] == "done"
    assert "had completed" in attempt["reason"]
    assert_each_done_once(out, 2)


def test_cancel_stops_running_points_and_run_resumes(tmp_path):
    config = write_config(tmp_path, n=2, epochs=4, epoch_time=0.4)
    out = tmp_path / "out"
    a = start(scan_cmd(config, out, "--slots", "2"))
    wait_for(lambda: len(running_points(out)) == 2, what="two running points")
    cancel = subprocess.run([sys.executable, "-m", "dlkit.scan", "cancel", str(out)], capture_output=True,
                            text=True, timeout=60)
    assert cancel.returncode == 0 and "cancel requested" in cancel.stdout
    a.communicate(timeout=60)
    assert a.returncode == 75
    assert not scan_processes(ledger_of(out).path)
    assert subprocess.run(scan_cmd(config, out, "--slots", "2"), timeout=120).returncode == 0
    assert_each_done_once(out, 2)


def test_status_without_tensorflow(tmp_path):
    config = write_config(tmp_path, n=3, epoch_time=0)
    out = tmp_path / "out"
    assert subprocess.run(scan_cmd(config, out)).returncode == 0
    code = ("import sys; sys.modules['tensorflow'] = None; sys.modules['keras'] = None; "
            "from dlkit.scan.__main__ import main; rc = main(['status', sys.argv[1]]); "
            "import dlkit.scan; frame = dlkit.scan.status(sys.argv[1]); print(list(frame['state'])); "
            "assert 'tensorflow' not in [m for m in sys.modules if sys.modules[m] is not None]; sys.exit(rc)")
    result = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "3 done" in result.stdout and "['done', 'done', 'done']" in result.stdout
    assert "Width=3" in result.stdout


def test_point_selection_and_scan_analysis_rows(tmp_path):
    config = write_config(tmp_path, n=4, epoch_time=0, extra=", 'UserErrorPoints': [2]")
    out = tmp_path / "out"
    result = subprocess.run(scan_cmd(config, out, "--points", "1-2"), capture_output=True, text=True)
    assert result.returncode == 1
    from dlkit.analysis.scan import PointModels

    models = PointModels(out)
    assert [m.metadata.get("HyperParamSet") for m in models] == [1, 2]
    assert [m.status for m in models] == ["ok", "failed"]
    assert models[0].metadata["Width"] == 2 and "UserErrorPoints" in models[1].message
    table = subprocess.run([sys.executable, "-m", "dlkit.ScanAnalysis", str(out), "--per-point"],
                           capture_output=True, text=True)
    assert table.returncode == 0
    lines = table.stdout.splitlines()
    assert "HyperParamSet" in lines[0] and len(lines) == 4 and "failed" in lines[3]
    result = subprocess.run(scan_cmd(config, out, "--points", "1-7"), capture_output=True, text=True)
    assert result.returncode == 2 and "out of range: [4, 5, 6, 7]" in result.stderr


def test_calodnn_scan_kill9_whole_group_then_rerun(tmp_path):
    """The README's workflow on the real experiment: a 3-point --Test scan, kill -9 mid-scan, the same command."""
    from calodnn.simulate import write_dataset

    data = tmp_path / "lcd"
    write_dataset(data, events_per_class=300, events_per_file=150, seed=5, progress=False)
    out = tmp_path / "TrainedModels"
    cmd = [sys.executable, "-m", "dlkit.scan", "run", "--experiment", "calodnn.ClassificationExperiment",
           "--points", "0-2", "--slots", "2", "--OutputBase", str(out), "--metric", "Ele_AUC", "--no-progress",
           "--", "--Test", "--data", str(data), "--set", "BatchSize=64", "--set", "EnergyBins=[10, 510, 4]"]
    env = dict(os.environ, DLKIT_CACHE_DIR=str(tmp_path / "cache"), TF_CPP_MIN_LOG_LEVEL="3")
    first = subprocess.Popen(cmd, env=env, cwd=tmp_path, start_new_session=True, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)

    def one_done_one_training():
        done = list((out / ".dlkit-scan").glob("*/done/*.json"))
        return done and running_points(out)

    wait_for(one_done_one_training, timeout=200, what="a done point and a point in training")
    os.killpg(first.pid, signal.SIGKILL)  # the whole process group of the scan command
    first.wait()
    second = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=400)
    assert second.returncode == 0, second.stderr[-3000:]
    assert_each_done_once(out, 3)
    ledger = ledger_of(out)
    # the point seen training when the scan was killed lost its worker (resumed, or found complete)
    assert any(str(a.get("reason")).startswith("lost") for i in range(3) for a in ended_attempts(ledger, i))
    assert not scan_processes(ledger.path)
    for i in range(3):
        final = [a for a in ledger.attempts(i) if a.get("outcome") == "done"][0]
        metadata = json.loads((Path(final["run_dir"]) / "MetaData.json").read_text())
        assert metadata["TotalEpochs"] == 2 and metadata["HyperParamSet"] == i and "Ele_AUC" in metadata
    table = subprocess.run([sys.executable, "-m", "dlkit.ScanAnalysis", str(out), "--per-point"],
                           capture_output=True, text=True, timeout=120)
    assert table.returncode == 0, table.stderr
    rows = table.stdout.splitlines()[2:]
    assert len(rows) == 3 and all(" ok " in row for row in rows) and "Ele_AUC" in table.stdout.splitlines()[0]
    status = subprocess.run([sys.executable, "-m", "dlkit.scan", "status", str(out)], capture_output=True,
                            text=True, timeout=60)
    assert "3 done" in status.stdout


def _slot_environment(tmp_path, *options):
    """(CUDA_VISIBLE_DEVICES, OMP_NUM_THREADS) each run saw, and the slots of the attempts."""
    config = write_config(tmp_path, n=4, epochs=1, epoch_time=0.2)
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS")}
    assert subprocess.run(scan_cmd(config, out, *options), env=env, timeout=120).returncode == 0
    seen = set()
    for md in out.glob("*/MetaData.json"):
        provenance = json.loads(md.read_text())["Provenance"]
        seen.add((provenance["cuda_visible_devices"], provenance["omp_num_threads"]))
    return seen, {a["slot"] for i in range(4) for a in ledger_of(out).attempts(i)}


def test_gpu_slots_pin_one_gpu_each(tmp_path):
    seen, slots = _slot_environment(tmp_path, "--gpus", "3,5")
    assert {device for device, _ in seen} == {"3", "5"} and slots == {"gpu3", "gpu5"}


def test_cpu_slots_get_their_threads(tmp_path):
    seen, slots = _slot_environment(tmp_path, "--slots", "2", "--threads-per-point", "1")
    assert seen == {(None, "1")} and slots == {"cpu0", "cpu1"}


FENCE_SCRIPT = """
import os, sys
import keras
from dlkit import ModelWrapper

class Tiny(ModelWrapper):
    def Build(self):
        inputs = keras.Input((3,))
        self.Model = keras.Model(inputs, keras.layers.Dense(2)(inputs))

wrapper = Tiny("Tiny", OutputBase=sys.argv[1])
wrapper.Build()
wrapper.Compile(Loss="mse")
wrapper.Initialize()
print(wrapper.OutDir, flush=True)
os.mkdir(os.path.join(os.environ["DLKIT_SCAN_DIR"], "ends", "0." + os.environ["DLKIT_SCAN_TOKEN"]))  # stolen
wrapper.Save()
print("saved although fenced", flush=True)
"""


def test_model_wrapper_reports_its_run_dir_and_obeys_the_fence(tmp_path):
    """A Keras run under a lease: the run dir is reported when claimed (a -p resume that trains no epoch has
    no training callbacks to report it), and once the lease is taken over, Save() writes nothing and quits."""
    ledger = tmp_path / "ledger"
    (ledger / "leases" / "0").mkdir(parents=True)
    (ledger / "ends").mkdir()
    env = dict(os.environ, DLKIT_SCAN_DIR=str(ledger), DLKIT_SCAN_POINT="0", DLKIT_SCAN_TOKEN="tok")
    result = subprocess.run([sys.executable, "-c", FENCE_SCRIPT, str(tmp_path / "out")], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 76, result.stderr[-2000:]  # EXIT_FENCED
    run_dir = Path(result.stdout.splitlines()[0])
    assert "saved although fenced" not in result.stdout and not (run_dir / "model.keras").exists()
    progress = json.loads((ledger / "leases" / "0" / "progress.json").read_text())
    assert progress == {"run_dir": str(run_dir), "epochs": 0}
    assert json.loads((run_dir / "MetaData.json").read_text())["Status"] == "initialized"  # not touched after


def test_running_time_in_a_scan_requeues_the_point_until_its_epochs(tmp_path):
    """RunningTime (-r) in a scan exits 75, so the point resumes with -p until it has trained its Epochs (alone
    it keeps DLKit's meaning: test_calodnn_experiment's -r run ends with exit 0)."""
    from calodnn.simulate import write_dataset

    data = tmp_path / "lcd"
    write_dataset(data, events_per_class=200, events_per_file=200, seed=5, progress=False)
    out = tmp_path / "TrainedModels"
    env = dict(os.environ, DLKIT_CACHE_DIR=str(tmp_path / "cache"), TF_CPP_MIN_LOG_LEVEL="3")
    # ~70 batches in all: a few 1-second attempts on an idle machine, and still few on a loaded one
    flags = ["--Test", "--data", str(data), "--set", "BatchSize=16", "--set", "Epochs=2", "-r", "1"]
    cmd = [sys.executable, "-m", "dlkit.scan", "run", "--experiment", "calodnn.ClassificationExperiment",
           "--points", "0", "--OutputBase", str(out), "--no-progress", "--", *flags]
    result = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    attempts = ended_attempts(ledger_of(out), 0)
    assert [a["exit_code"] for a in attempts][:1] == [75] and attempts[-1]["outcome"] == "done", attempts
    assert all(a["outcome"] == "interrupted" for a in attempts[:-1])
    final = json.loads((Path(attempts[-1]["run_dir"]) / "MetaData.json").read_text())
    assert final["TotalEpochs"] == 2 and final["Status"] == "completed"


def test_a_late_heartbeat_never_brings_a_lease_back(tmp_path, monkeypatch):
    """The holder's fence check passes, then another worker ends and removes its lease (a takeover), then the
    heartbeat write runs: the lease directory must not come back, and the point must be acquired and done."""
    config = write_config(tmp_path, n=1, epoch_time=0)
    out = tmp_path / "out"
    from dlkit.scan.api import open_scan

    ledger = open_scan("toy", config, output_base=out, lease_timeout=3)
    token = ledger.new_token()
    assert ledger.acquire(0, token, {"host": "elsewhere", "pid": 1})
    real_fenced = Ledger.fenced
    calls = []

    def fenced_then_taken_over(self, index, tok):
        calls.append(tok)
        if len(calls) == 1:  # the check passes ... and the takeover happens right after it
            assert self.end(index, tok)
            self.remove_lease(index, tok)
            return False
        return real_fenced(self, index, tok)

    monkeypatch.setattr(Ledger, "fenced", fenced_then_taken_over)
    assert ledger.heartbeat(0, token, 1) is False
    monkeypatch.setattr(Ledger, "fenced", real_fenced)
    assert not (ledger.path / "leases" / "0").exists()
    # what an older dlkit's late heartbeat left: a lease directory with a heartbeat and no owner
    orphan = ledger.path / "leases" / "0"
    orphan.mkdir()
    (orphan / "heartbeat.json").write_text('{"seq": 7, "time": 0}')
    result = subprocess.run(scan_cmd(config, out), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "removed its lease directory, which had no owner" in result.stderr
    assert sorted(ledger.done_indices()) == [0]
