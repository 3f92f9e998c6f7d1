"""Both clustercount experiments end to end in --Test mode on a tiny simulated dataset, the two-step
pipeline, ScanAnalysis on their metadata, and user errors."""

import json
import subprocess
import sys
from pathlib import Path

import h5py
import pytest

from clustercount.simulate import write_dataset
from dlkit.metadata import read_metadata


@pytest.fixture(scope="module")
def waves(tmp_path_factory):
    root = tmp_path_factory.mktemp("waves")
    write_dataset(root, n_waveforms=600, waveforms_per_file=200, seed=3, progress=False, workers=1)
    return root



def peak_run(argv):
    from clustercount.PeakFindingExperiment import cli

    return cli(argv)


def cluster_run(argv):
    from clustercount.ClusterizationExperiment import cli

    return cli(argv)


def test_two_step_pipeline_and_scan_table(waves, env, tmp_path, capsys):
    # Step 1: the LSTM peak finder, scan point 18 (Neurons=32).
    assert peak_run(["--Test", "--data", str(waves), "-s", "18", "--set", "MaxEvents=12000"]) == 0
    base = tmp_path / "TrainedModels.Test"
    peak_dir = base / "PeakFinding_BatchSize1000_Dropout0.0_Neurons32_activationrelu_lossbinary_crossentropy_optimizerAdam"
    md = read_metadata(peak_dir)
    assert md["Status"] == "completed" and md["Epochs"] == 2 and md["HyperParamSet"] == 18
    assert md["Configuration"]["MaxEvents"] == 12000 and md["Configuration"]["DataDir"] == str(waves)
    assert md["ScanPoint"]["Neurons"] == 32
    assert 0.75 < md["Peak_AUC"] <= 1 and 0 < md["DerivEfficiency"] < 1 and 0 < md["DerivFakeRate"] < 0.2
    assert 0 <= md["EffAtDerivFake"] <= 1 and 0 < md["ThresholdAtDerivFake"] < 1
    assert md["NTestCandidates"] > 1000
    for stem in ("ROC", "EfficiencyVsAmplitude", "Scores", "Waveform", "History"):
        assert (peak_dir / f"{stem}.png").stat().st_size > 1000
    import keras

    model = keras.saving.load_model(peak_dir / "model.keras")
    assert model.get_layer("lstm0").units == 32 and model.input_shape == (None, 15, 1)
    assert "Peak_AUC" in capsys.readouterr().out

    # Step 2 on the peaks of step 1 (no PID here: the CLI test below runs it).
    assert cluster_run(["--Test", "--data", str(waves), "--set", f"PeakModel={peak_dir}", "--set", "PID=false",
                        "--set", "BatchSize=100", "-s", "1"]) == 0
    cl_dir = next(p for p in base.iterdir() if p.name.startswith("Clusterization"))
    md = read_metadata(cl_dir)
    assert md["Status"] == "completed" and md["PeakFinder"] == str(peak_dir) and md["ScanPoint"]["optimizer"] == "Adam"
    assert md["NclResidualRMS"] > 0 and md["BaselineResidualRMS"] > 0 and "PID_RatioMean" not in md
    derived = next((tmp_path / "data" / "clustercount").glob("clusters-*"))
    with h5py.File(next(derived.glob("clusters_*.h5"))) as f:
        assert json.loads(f.attrs["peak_finder"])["threshold"] == pytest.approx(
            read_metadata(peak_dir)["ThresholdAtDerivFake"])
        assert f["times"].shape[1:] == (1024, 1)

    # ScanAnalysis tabulates both experiments' key results.
    from dlkit.ScanAnalysis import main as scan_main

    capsys.readouterr()
    assert scan_main([str(base), "-a", "EffAtDerivFake,NclResidualRMS,BaselineResidualRMS"]) == 0
    out = capsys.readouterr().out
    assert "Peak_AUC" in out and "EffAtDerivFake" in out and "NclResidualRMS" in out
    assert f"{read_metadata(peak_dir)['Peak_AUC']:.4f}" in out


def test_clusterization_cli_with_pid(waves, env, tmp_path):
    # The default chain: a peak finder is trained on the same waveforms first (PeakModel="auto"), cached.
    proc = subprocess.run([sys.executable, "-m", "clustercount.ClusterizationExperiment", "--Test", "--data",
                           str(waves), "--set", "PIDTracks=6", "--set", "PIDCells=20", "--set", "PIDMomenta=[10]",
                           "--set", "BatchSize=100", "--set", 'PeakModelSet={"MaxEvents": 12000}'], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "TrainedModels.Test" / "Clusterization_BatchSize250_Dropout0.0_Neurons32_activationrelu_lossmae_optimizerRMSprop"
    md = read_metadata(out)
    assert md["Status"] == "completed" and md["Epochs"] == 2 and md["Configuration"]["Epochs"] == 2
    assert md["Configuration"]["PeakModel"] == "auto" and md["BaselineGapNs"] >= 0
    peak_model = md["PeakFinder"]
    assert "peakmodel-" in peak_model and (tmp_path / "data" / "clustercount") in Path(peak_model).parents
    peak_md = read_metadata(peak_model)
    assert peak_md["Status"] == "completed" and peak_md["HyperParamSet"] == 18 and peak_md["Epochs"] == 2
    assert peak_md["OutDir"] == peak_model  # where the cached model lives, not its temporary build directory
    assert peak_md["Configuration"]["MaxEvents"] == 12000 and 0 < peak_md["ThresholdAtDerivFake"] < 1
    for key in ("NclResidualMean", "NclResidualRMS", "BaselineResidualRMS", "BaselineCalibratedRMS",
                "PID_RatioMean", "PID_TruthRatioMean", "PID_dEdxTruncation"):
        assert key in md, key
    assert md["PID_TruthRatioMean"] > 0 and md["PID_Momenta"] == [10.0]
    for stem in ("Residuals", "Counts", "Profile", "History", "PID_Separation", "PID_Distributions"):
        assert (out / f"{stem}.png").stat().st_size > 1000, stem
    assert (out / "PID_Separation.csv").read_text().startswith("momentum,S_dEdx")
    assert "NclResidualRMS" in proc.stdout
    pid = list((tmp_path / "data" / "clustercount").glob("pid-*"))
    assert len(pid) == 1 and (pid[0] / "COMPLETE.json").is_file()

    # The single-step variant on the derivative algorithm's peaks; the cached peak finder is not retrained.
    proc = subprocess.run([sys.executable, "-m", "clustercount.ClusterizationExperiment", "--Test", "--data",
                           str(waves), "--set", "PID=false", "--set", "BatchSize=100", "--set",
                           "PeakModel=derivative", "--set", "Epochs=1"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    md = read_metadata(out.with_name(out.name + ".1"))
    assert md["PeakFinder"] == "derivative" and "PID_RatioMean" not in md
    assert len(list((tmp_path / "data" / "clustercount").glob("peakmodel-*"))) == 1


@pytest.mark.parametrize(
    "experiment, argv, message",
    [
        ("peak", ["-s", "999"], "valid -s values are 0..215"),
        ("peak", ["--set", "Nuerons=3"], "did you mean 'Neurons'"),
        ("peak", ["--set", "WindowScale=0"], "WindowScale"),
        ("cluster", ["--set", "Epochs=two"], "expected int"),
        ("cluster", ["--set", "PeakModel=/nonexistent/model"], "PeakModel"),
        ("cluster", ["--set", 'PeakModelSet={"Nuerons": 3}'], "PeakModelSet"),
        ("cluster", ["--set", "Pooling=max"], "Pooling"),
    ],
)
def test_user_errors_are_one_line(waves, env, tmp_path, capsys, experiment, argv, message):
    run = peak_run if experiment == "peak" else cluster_run
    code = run(["--Test", "--data", str(waves), "--set", "MaxEvents=3000", *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert message in err and len(err.splitlines()) == 1


def test_missing_data_dir_is_a_clear_error(env, capsys):
    assert peak_run(["--Test", "--data", "/nonexistent/waves"]) == 2
    err = capsys.readouterr().err
    assert "/nonexistent/waves" in err and "not found" in err
