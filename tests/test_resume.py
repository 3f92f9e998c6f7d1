"""Preemption that costs nothing: a run stopped by a signal in the middle of an epoch, resumed with -p, trains
exactly what an uninterrupted run trains (optimizer iterations; with Deterministic=True the same weights and
the same per-epoch losses); EarlyStopping's patience carries over a resume; a kill -9 loses at most the time
since the last periodic checkpoint.

The signals are real: tests/scripts/signal_at_iteration.py sends its own process SIGTERM after a chosen
optimizer iteration, and the run's GracefulExit handles it as a batch system's.
"""

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from calodnn.simulate import write_dataset
from dlkit.metadata import chained_history, read_metadata

SIGNAL_AT = Path(__file__).parent / "scripts" / "signal_at_iteration.py"
STEPS = 53  # batches per epoch of the --Test training set below (840 events, batches of 16)


@pytest.fixture(scope="module")
def lcd(tmp_path_factory):
    path = tmp_path_factory.mktemp("lcd")
    write_dataset(path, events_per_class=300, events_per_file=150, seed=5, progress=False)
    return path


def run(lcd, out, env, *extra, signal_at=None):
    flags = ["--Test", "--data", str(lcd), "--set", "BatchSize=16", "-s", "0", "--NoAnalysis",
             "--OutputBase", str(out), *extra]
    if signal_at is None:
        cmd = [sys.executable, "-m", "calodnn.ClassificationExperiment", *flags]
    else:
        cmd = [sys.executable, str(SIGNAL_AT), "calodnn.ClassificationExperiment", *flags]
        env = dict(env, DLKIT_SIGNAL_AT=str(signal_at))
    return subprocess.run(cmd, env=env, cwd=out.parent, capture_output=True, text=True, timeout=300)


def runs(out) -> list[Path]:
    """The run directories of the scan point, oldest first (Name, Name.1, Name.2, ...)."""
    return sorted(out.glob("CaloDNN_*"), key=lambda p: int(p.suffix[1:]) if p.suffix[1:].isdigit() else 0)


def final_model(out):
    from dlkit.saving import load_model

    return load_model(runs(out)[-1] / "model.keras")


def test_signals_mid_epoch_then_resume_reproduce_the_uninterrupted_run(lcd, env, tmp_path):
    epochs = ["--set", "Epochs=3", "--set", "Deterministic=true"]
    whole = tmp_path / "whole"
    assert run(lcd, whole, env, *epochs).returncode == 0
    rng = np.random.default_rng(int(os.environ.get("DLKIT_TEST_SEED", "7")))
    at = [e * STEPS + int(rng.integers(1, STEPS - 1)) for e in range(3)]  # one random batch in each epoch
    out = tmp_path / "interrupted"
    for k in at:
        stopped = run(lcd, out, env, *epochs, "-p", signal_at=k)
        assert stopped.returncode == 75, stopped.stderr[-3000:]
        md = read_metadata(runs(out)[-1])
        assert md["Status"] == "interrupted" and md["MidEpoch"]["batch"] == k % STEPS, (k, md.get("MidEpoch"))
        assert md["TotalEpochs"] == k // STEPS  # the interrupted epoch is not counted as done
    done = run(lcd, out, env, *epochs, "-p")
    assert done.returncode == 0, done.stderr[-3000:]
    a, b = final_model(whole), final_model(out)
    assert int(np.asarray(b.optimizer.iterations)) == int(np.asarray(a.optimizer.iterations)) == 3 * STEPS
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        if backend == "tensorflow":  # deterministic ops: bitwise
            assert np.array_equal(wa, wb)
        else:
            np.testing.assert_allclose(wb, wa, atol=1e-6, rtol=0)
    # one History entry per epoch over the chain of runs, with the uninterrupted run's losses
    history = chained_history(read_metadata(runs(out)[-1]))
    reference = read_metadata(runs(whole)[-1])["History"]
    assert len(history["loss"]) == 3
    np.testing.assert_allclose(history["loss"], reference["loss"], rtol=0, atol=1e-6 if backend != "tensorflow" else 0)


def test_early_stopping_patience_carries_over_a_resume(lcd, env, tmp_path):
    """EarlyStopping (patience 1, a min_delta no epoch reaches: it stops after epoch 2) stops at the same epoch
    when the run is interrupted after epoch 1 and resumed: its patience is not restarted."""
    flags = ["--set", "Epochs=5", "--set", "EarlyStopping=true", "--set", "EarlyStopping_patience=1",
             "--set", "EarlyStopping_min_delta=10.0", "--set", "monitor=loss"]
    whole = tmp_path / "whole"
    assert run(lcd, whole, env, *flags).returncode == 0
    assert read_metadata(runs(whole)[-1])["TotalEpochs"] == 2
    out = tmp_path / "resumed"
    stopped = run(lcd, out, env, *flags, signal_at=STEPS)  # the last batch of epoch 1: the epoch ends, saved
    assert stopped.returncode == 75, stopped.stderr[-3000:]
    first = read_metadata(runs(out)[-1])
    assert first["TotalEpochs"] == 1 and first["CallbackState"]["EarlyStopping"]["wait"] == 0
    resumed = run(lcd, out, env, *flags, "-p")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    md = read_metadata(runs(out)[-1])
    assert md["TotalEpochs"] == 2 and "EarlyStopping" in md["StopReason"], md["StopReason"]


def test_kill9_resumes_from_the_last_periodic_checkpoint(lcd, env, tmp_path):
    """CheckpointEvery saves the mid-epoch state without stopping: after a kill -9 in the middle of epoch 2,
    -p continues from the newest checkpoint (here: the batch before the kill), not from the last epoch end;
    nothing is trained twice or skipped (optimizer iterations)."""
    out = tmp_path / "killed"
    kill_at = STEPS + 20
    killed = run(lcd, out, dict(env, DLKIT_SIGNAL="KILL"), "--set", "Epochs=3", "--set", "CheckpointEvery=1e-9",
                 signal_at=kill_at)  # a checkpoint after every batch
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    saved = read_metadata(runs(out)[-1])  # the newest complete save
    assert saved["Status"] == "training" and saved["MidEpoch"]["epoch"] == 1
    assert saved["MidEpoch"]["batch"] == kill_at - STEPS - 1  # the kill came before that batch's checkpoint
    resumed = run(lcd, out, env, "--set", "Epochs=3", "--set", "CheckpointEvery=0", "-p")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"continuing epoch 2 at batch {kill_at - STEPS}" in resumed.stderr
    assert int(np.asarray(final_model(out).optimizer.iterations)) == 3 * STEPS
    assert len(chained_history(read_metadata(runs(out)[-1]))["loss"]) == 3
