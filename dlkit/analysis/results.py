"""The result of an analysis step: metadata entries, tables and figures, saved together."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

__all__ = ["AnalysisResults", "smoke_test_summary", "format_interval", "TOO_SMALL"]

#: What a summary shows instead of a number its sample cannot determine.
TOO_SMALL = "n too small"


@dataclass
class AnalysisResults:
    """What an analysis found: ``metadata`` (goes into MetaData.json, so ScanAnalysis tables show it),
    ``tables`` (DataFrames, saved as CSV) and ``figures`` (saved as PNG and PDF) by name.

    >>> results = AnalysisResults({"Ele_AUC": 0.99}, {"Confusion": table}, {"ROC": fig})   # doctest: +SKIP
    >>> wrapper.MetaData.update(results.metadata); results.save(wrapper.OutDir)          # doctest: +SKIP
    """

    metadata: dict
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    figures: dict = field(default_factory=dict)

    def save(self, directory) -> list[Path]:
        """Write ``<name>.png``/``.pdf`` per figure and ``<name>.csv`` per table into ``directory``."""
        from dlkit.analysis.plots import save_figure

        directory = Path(directory)
        paths = []
        for stem, fig in self.figures.items():
            paths += save_figure(fig, directory, stem)
        for stem, table in self.tables.items():
            path = directory / f"{stem}.csv"
            table.to_csv(path)
            paths.append(path)
        return paths

    def merge(self, other: AnalysisResults) -> AnalysisResults:
        """Both steps' results in one (``other`` wins on equal names)."""
        return AnalysisResults({**self.metadata, **other.metadata}, {**self.tables, **other.tables},
                               {**self.figures, **other.figures})


def format_interval(value, lower, upper, fmt: str = ".3f") -> str:
    """``0.500 [0.312, 0.688]``: a value with its interval (just the value where the interval is NaN)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "nan"
    text = format(value, fmt)
    if lower is None or upper is None or math.isnan(lower) or math.isnan(upper):
        return text
    return f"{text} [{format(lower, fmt)}, {format(upper, fmt)}]"


def smoke_test_summary(summary: str, config: Mapping, metadata: Mapping) -> str:
    """The summary of a ``--Test`` run, headed by what such a run is: a smoke test whose numbers mean nothing.

    :meth:`dlkit.Experiment.run` puts every experiment's ``--Test`` summary through this, so no experiment
    has to say it itself. The head names the epochs and, where the analysis recorded ``NTestEvents``, the
    test events the numbers come from.
    """
    epochs = config.get("Epochs")
    n_test = metadata.get("NTestEvents")
    sample = f" and {n_test} test events" if isinstance(n_test, int) else " and a tiny sample"
    head = (f"SMOKE TEST (--Test): {epochs} epoch(s){sample}. It checks that data, training, analysis and saving "
            "run end to end; its numbers mean nothing physically (an interval, where one is shown, says how "
            "little a number pins down). Run without --Test for results.")
    return textwrap.fill(head, width=100) + "\n\n" + summary
