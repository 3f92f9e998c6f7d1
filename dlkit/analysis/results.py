"""The result of an analysis step: metadata entries, tables and figures, saved together."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

__all__ = ["AnalysisResults"]


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
