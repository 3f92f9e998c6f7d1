"""dlkit.scan --engine dask on a real distributed LocalCluster: a killed Dask worker's point is rerun through the
ledger, each point done exactly once."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("distributed", reason="dask.distributed is not installed (pip install 'dlkit[dask]')")

from slurm_fixture import slurm  # noqa: E402,F401  (the fixture)
from scan_helpers import (assert_each_done_once, ended_attempts, ledger_of, running_points,  # noqa: E402
                          scan_processes, wait_for, write_config)

pytestmark = pytest.mark.timeout(240)


def dask_cmd(config, out, *options):
    return [sys.executable, "-m", "dlkit.scan", "run", "--engine", "dask", "--experiment", "toy",
            "-C", str(config), "--OutputBase", str(out), "--no-progress", *options]


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def test_dask_scan_runs_every_point_once(tmp_path):
    config = write_config(tmp_path, n=5, epochs=2, epoch_time=0.05)
    out = tmp_path / "out"
    result = subprocess.run(dask_cmd(config, out, "--slots", "2"), capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_each_done_once(out, 5)
    ledger = ledger_of(out)
    assert json.loads((ledger.path / "engine.json").read_text())["engine"] == "dask"
    assert {a["token"] for i in range(5) for a in ended_attempts(ledger, i)}  # recorded by the work processes
    assert "distributed.scheduler INFO" not in result.stderr  # quiet unless -v


def test_killed_dask_worker_point_rerun_through_ledger(tmp_path):
    config = write_config(tmp_path, n=4, epochs=4, epoch_time=0.5)
    out = tmp_path / "out"
    driver = subprocess.Popen(dask_cmd(config, out, "--slots", "2", "--lease-timeout", "3"), start_new_session=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    held = wait_for(lambda: running_points(out), timeout=120, what="a running point")
    index, owner = sorted(held.items())[0]
    dask_worker = parent_of(owner["pid"])  # the `dlkit.scan work` process runs under the Dask worker
    assert "python" in Path(f"/proc/{dask_worker}/cmdline").read_text()
    os.kill(dask_worker, signal.SIGKILL)
    output = driver.communicate(timeout=180)[0]
    assert driver.returncode == 0, output[-3000:]
    assert_each_done_once(out, 4)
    attempts = ledger_of(out).attempts(index)
    assert attempts[0]["outcome"] == "interrupted" and attempts[0]["exit_code"] == 75  # stopped, saved, requeued
    assert attempts[-1]["outcome"] == "done" and attempts[-1]["resume"] is True
    metadata = json.loads((Path(attempts[-1]["run_dir"]) / "MetaData.json").read_text())
    assert metadata["TotalEpochs"] == 4 and len(metadata["InputMetaData"]) == 1
    time.sleep(0.5)
    assert not scan_processes(ledger_of(out).path)


def test_dask_jobqueue_slurmcluster_on_local_slurm(tmp_path, slurm):  # noqa: F811
    """dask-jobqueue's SLURMCluster against the one-node Slurm that .ci/start-slurm runs: the Dask workers are
    Slurm jobs, and each point's `dlkit.scan work` runs inside one."""
    pytest.importorskip("dask_jobqueue", reason="dask-jobqueue is not installed (pip install 'dlkit[dask]')")
    config = write_config(tmp_path, n=2, epochs=2, epoch_time=0.05)
    out = tmp_path / "out"
    spec = tmp_path / "slurm.yaml"
    spec.write_text("cluster: SLURMCluster\njobs: 1\noptions:\n  cores: 1\n  processes: 1\n  memory: 1GB\n"
                    "  walltime: '00:10:00'\n  scheduler_options: {host: 127.0.0.1}\n"
                    f"  log_directory: {tmp_path / 'dask-logs'}\n")
    result = subprocess.run(dask_cmd(config, out, "--dask-cluster", str(spec)), capture_output=True, text=True,
                            timeout=200, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_each_done_once(out, 2)
    jobs = {a.get("job_id") for i in range(2) for a in ledger_of(out).attempts(i)}
    assert None not in jobs and jobs  # each point ran inside a Slurm job (its SLURM_JOB_ID recorded)


def test_cancel_stops_a_dask_scan_and_run_resumes(tmp_path):
    config = write_config(tmp_path, n=6, epochs=4, epoch_time=0.5)
    out = tmp_path / "out"
    driver = subprocess.Popen(dask_cmd(config, out, "--slots", "2"), start_new_session=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for(lambda: len(running_points(out)) == 2, timeout=120, what="two running points")
    cancel = subprocess.run([sys.executable, "-m", "dlkit.scan", "cancel", str(out)], capture_output=True, text=True,
                            timeout=60)
    assert cancel.returncode == 0
    output = driver.communicate(timeout=120)[0]
    assert driver.returncode == 75, output[-3000:]
    ledger = ledger_of(out)
    started = {i for i in range(6) if ledger.attempts(i)}
    assert len(started) == 2  # the queued tasks that started after the cancel ran nothing
    assert not scan_processes(ledger.path)
    result = subprocess.run(dask_cmd(config, out, "--slots", "2"), capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_each_done_once(out, 6)
    for i in started:
        assert [a["outcome"] for a in ended_attempts(ledger, i)] == ["interrupted", "done"]
