"""Plot hygiene (dlkit.analysis.style) and golden images of three plots.

The golden PNGs are compared with matplotlib's own ``compare_images`` (RMS over the pixels, as its
``image_comparison`` does). After a deliberate change of a plot, regenerate them with
``DLKIT_UPDATE_GOLDEN=1 pytest tests/test_plot_style.py`` and look at the diff before committing.
"""

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.testing.compare import compare_images

from dlkit.analysis import plot_binned, plot_history, plot_resolution, plot_roc, save_figure, style
from dlkit.analysis.scan import PlotMetaData, PlotMetaDataMany, ScanModel

GOLDEN = Path(__file__).parent / "golden" / "plots"
#: RMS tolerance (0-255 grey levels): passes renderer noise, fails a changed label or tick (see below).
TOL = 2.0

HISTORY = {"loss": [0.9, 0.6, 0.5, 0.45, 0.43], "val_loss": [0.95, 0.7, 0.6, 0.58, 0.6]}


def history_figure(**kwargs):
    return plot_history(HISTORY, boundaries=[2], loss_name="binary_crossentropy", title="Dense_64_2", **kwargs)


def binned_figure():
    frame = pd.DataFrame({"bin_low": [10, 50, 100, 200], "bin_high": [50, 100, 200, 500],
                          "Ele_AUC": [0.90, 0.93, 0.95, 0.97], "Ele_AUC_lower": [0.88, 0.92, 0.94, 0.96],
                          "Ele_AUC_upper": [0.92, 0.94, 0.96, 0.975], "n_Ele": [100] * 4},
                         index=[30.0, 75.0, 150.0, 350.0])
    return plot_binned(frame, title="e vs pi")


def models(n=3):
    return [ScanModel(f"/scan/Dense_{32 * 2 ** i}", {"Name": f"Dense_{32 * 2 ** i}", "Ele_AUC": 0.9 + 0.02 * (i % 3),
                                                      "Loss": "binary_crossentropy",
                                                      "History": {"val_loss": list(np.linspace(1, 0.5 - 0.01 * i, 6))}})
            for i in range(n)]


def metadata_figure():
    return PlotMetaData(models(), "Ele_AUC")


def check_golden(fig, name, tmp_path):
    actual = save_figure(fig, tmp_path, name, formats=("png",))[0]
    expected = GOLDEN / f"{name}.png"
    if os.environ.get("DLKIT_UPDATE_GOLDEN"):
        expected.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(actual, expected)
        pytest.skip(f"wrote {expected}")
    assert expected.exists(), f"{expected} missing: run with DLKIT_UPDATE_GOLDEN=1"
    return compare_images(str(expected), str(actual), tol=TOL)


@pytest.mark.parametrize("name, make", [("history", history_figure), ("binned_auc", binned_figure),
                                        ("metadata_bars", metadata_figure)])
def test_golden_images(name, make, tmp_path):
    assert check_golden(make(), name, tmp_path) is None


def test_the_golden_comparison_fails_on_the_old_value_label(tmp_path):
    """The tolerance is tight enough to see a y label change (the History plot's old "value")."""
    fig = history_figure()
    fig.axes[0].set_ylabel("value")
    result = check_golden(fig, "history", tmp_path)
    assert result is not None and "did not match" in result


def test_history_axes_say_what_they_show():
    ax = history_figure().axes[0]
    assert ax.get_xlabel() == "epoch" and ax.get_ylabel() == "loss (binary cross-entropy)"
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks)
    labels = ax.get_legend_handles_labels()[1]
    assert labels == ["loss (training)", "loss (validation)", "resumed"]
    accuracy = plot_history({"accuracy": [0.5, 0.7], "val_accuracy": [0.4, 0.6]}).axes[0]
    assert accuracy.get_ylabel() == "accuracy [fraction]"


def test_plot_metadata_of_a_fraction_starts_at_zero_and_epoch_curves_are_labelled():
    ax = metadata_figure().axes[0]
    assert ax.get_ylim()[0] == 0 and ax.get_ylim()[1] >= 1.0
    curves = PlotMetaData(models(), "History.val_loss").axes[0]
    assert curves.get_xlabel() == "epoch" and curves.get_ylabel() == "loss (binary cross-entropy)"
    assert all(float(t).is_integer() for t in curves.get_xticks())


def test_legends_go_outside_the_axes_when_they_would_hide_curves():
    few = PlotMetaData(models(3), "History.val_loss")
    many = PlotMetaData(models(10), "History.val_loss")
    for fig, outside in ((few, False), (many, True)):
        fig.canvas.draw()
        ax = fig.axes[0]
        legend_box = ax.get_legend().get_window_extent()
        axes_box = ax.get_window_extent()
        assert bool(legend_box.x0 >= axes_box.x1 - 1) == outside
    panels = PlotMetaDataMany(models(10), 5, "History.val_loss")
    assert all(ax.get_legend() is not None for ax in panels.axes)


def test_every_plot_uses_the_one_style():
    roc = {"NN": {"fpr": np.array([0, 0.1, 1]), "tpr": np.array([0, 0.8, 1]), "auc": 0.85}}
    table = pd.DataFrame({"resolution": [0.1, 0.05], "resolution_err": [0.01, 0.005]}, index=[10.0, 100.0])
    figures = [history_figure(), binned_figure(), metadata_figure(), plot_roc(roc),
               plot_resolution({"Ele": table}, fits={"Ele": {"a": 0.3, "b": 0.0, "c": 0.01, "b_at_bound": True}})]
    for fig in figures:
        ax = fig.axes[0]
        assert not ax.spines["top"].get_visible() and fig.get_layout_engine() is not None
    legend = [t.get_text() for t in figures[-1].axes[0].get_legend().get_texts()]
    assert "b=0 (at bound)" in legend[0]
    assert style.is_fraction("Ele_AUC") and style.is_fraction("val_accuracy") and not style.is_fraction("loss")
