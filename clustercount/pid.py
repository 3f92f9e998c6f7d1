"""Particle identification over a track of many drift cells: dN/dx (cluster counting) vs dE/dx (truncated mean).

At each momentum, ``n_tracks`` pions and kaons each cross ``n_cells`` cells (one waveform per cell, a fresh
impact parameter in every cell). Per track:

- dN/dx from cluster counting: the summed per-cell cluster counts over the summed path length, with the counts
  from the trained CNN (``ML``), from the derivative + time-proximity baseline, from time proximity on the
  true electron arrival times (``ideal``: perfect peak finding, the limit of step 2 alone), and from the truth
  (the Poisson limit of perfect counting); two references: the true number of electrons (``electrons``: every
  electron counted perfectly, primaries and secondaries alike) and the number of detected peaks (``peaks``);
- dE/dx: the truncated mean of the per-cell collected charge per cm (the lowest ``f`` of the cells; ``f`` is
  chosen to maximise dE/dx's separation, the most favourable choice for dE/dx). The charge is the simulated
  sum of the electrons' gains, without electronics noise or an integration window: an ideal charge
  measurement, so the comparison flatters dE/dx rather than dN/dx.

The separation power of an estimator at fixed momentum is ``S = |mu_pi - mu_K| / ((sigma_pi + sigma_K) / 2)``
over the tracks. Results: ``PID_Separation.csv`` (S per estimator and momentum), a plot of S and of the
dN/dx / dE/dx ratio vs momentum, and metadata ``PID_RatioMean``/``PID_RatioMin`` (ML dN/dx over dE/dx),
``PID_TruthRatioMean``, ``PID_BaselineRatioMean``.

The track samples are simulated once per configuration and cached (``$DLKIT_DATA/clustercount/pid-<key>``);
the study itself is :func:`pid_study`. As a CLI, on a trained clusterization model::

    python -m clustercount.pid -L TrainedModels/Clusterization_... [--momenta 4 10 30] [--tracks 100] [--cells 100]
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import multiprocessing
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from clustercount.baselines import PeakList, time_proximity_counts
from dlkit.analysis import style
from dlkit.datasets import atomic_file, available_cores
from clustercount.data import TP_GAPS_NS, DerivationOptions, PeakScorer, cluster_features
from clustercount.simulate import PARTICLES, DriftSimConfig, simulate_waveforms
from dlkit.analysis import AnalysisResults
from dlkit.datasets import cached_dataset, data_root
from dlkit.protocol import EXIT_OK, EXIT_USER_ERROR

log = logging.getLogger(__name__)

__all__ = ["PIDOptions", "pid_dataset", "separation_power", "truncated_mean", "pid_study", "main"]

#: Version of the PID sample files (part of their cache key).
PID_VERSION = 2


@dataclass(frozen=True)
class PIDOptions:
    """Which tracks the PID study simulates (every field is part of the cache key)."""

    momenta: tuple = (4.0, 8.0, 16.0, 32.0, 64.0, 128.0)  # GeV/c
    particles: tuple = ("pi", "K")  # the pair to separate (first vs second)
    n_tracks: int = 100  # tracks per particle and momentum
    n_cells: int = 100  # cells (waveforms) per track
    seed: int = 1

    def __post_init__(self):
        object.__setattr__(self, "momenta", tuple(float(p) for p in self.momenta))
        object.__setattr__(self, "particles", tuple(self.particles))
        if len(self.particles) != 2 or any(p not in PARTICLES for p in self.particles):
            raise ValueError(f"PID particles must be two of {list(PARTICLES)}, got {self.particles}")
        if not self.momenta or min(self.momenta) <= 0:
            raise ValueError(f"PID momenta must be positive, got {self.momenta}")
        if self.n_tracks < 2 or self.n_cells < 1:
            raise ValueError("PID needs n_tracks >= 2 and n_cells >= 1")

    @classmethod
    def from_config(cls, config) -> PIDOptions:
        from dlkit.config import ConfigError

        try:
            return cls(momenta=tuple(config["PIDMomenta"]), particles=tuple(config["PIDParticles"]),
                       n_tracks=int(config["PIDTracks"]), n_cells=int(config["PIDCells"]), seed=int(config["PIDSeed"]))
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"config entries PIDMomenta/PIDParticles/PIDTracks/PIDCells: {exc}") from None


def _file_name(particle: str, momentum: float) -> str:
    return f"pid_{particle}_{momentum:g}GeV.h5"


def _make_pid_file(args, scorer=None) -> str:
    """Top-level (picklable) worker: simulate one particle at one momentum, keep only per-cell features."""
    out, particle, momentum, sim_dict, opts_dict, pid_dict = args
    cfg = DriftSimConfig.from_dict(sim_dict)
    opts = DerivationOptions(**opts_dict)
    pid = PIDOptions(**pid_dict)
    n = pid.n_tracks * pid.n_cells
    ss = np.random.SeedSequence(entropy=pid.seed, spawn_key=(PARTICLES[particle][0], int(round(momentum * 1000))))
    rng = np.random.default_rng(ss)
    chunk = 2000
    parts = {k: [] for k in ("times", "n_clusters", "n_electrons", "charge", "n_peaks", "tp_counts", "tp_truth_counts",
                             "track_length")}
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        ev = simulate_waveforms(m, rng, cfg, particle=particle, momentum=momentum)
        times, n_peaks, tp = cluster_features(ev["waveform"].astype(np.float32), opts, cfg.dt_ns, cfg.window_ns,
                                              scorer)
        # Perfect peak finding: time proximity on the true electron arrival times.
        ideal = time_proximity_counts(PeakList(ev["electron_offset"], ev["electron_time"]), TP_GAPS_NS)
        for key, value in (("times", times), ("n_clusters", ev["n_clusters"]), ("n_electrons", ev["n_electrons"]),
                           ("charge", ev["charge"]), ("n_peaks", n_peaks), ("tp_counts", tp),
                           ("tp_truth_counts", ideal.astype(np.int16)), ("track_length", ev["track_length"])):
            parts[key].append(value)
    log.info("PID sample %s at %g GeV/c: %d cells simulated", particle, momentum, n)
    out = Path(out)
    with atomic_file(out) as tmp:
        with h5py.File(tmp, "w") as f:
            for key, value in parts.items():
                value = np.concatenate(value)
                kwargs = {"compression": "lzf", "chunks": (min(1024, len(value)), *value.shape[1:])} \
                    if key == "times" else {}
                f.create_dataset(key, data=value, **kwargs)
            f.attrs.update({"particle": particle, "momentum": momentum, "n_tracks": pid.n_tracks,
                            "n_cells": pid.n_cells, "tp_gaps_ns": list(TP_GAPS_NS)})
    return str(out)


def pid_dataset(sim_config: DriftSimConfig | None = None, options: PIDOptions = PIDOptions(),
                derivation: DerivationOptions = DerivationOptions(), path=None, workers: int | None = None,
                scorer=None) -> Path:
    """Directory of the PID track samples (per-cell CNN inputs, truth counts, charge), made if missing.

    ``scorer`` (a :class:`~clustercount.data.PeakScorer`) encodes the trained peak finder's peaks (as the
    clusterization model was trained on) instead of the derivative algorithm's.
    """
    cfg = sim_config or DriftSimConfig()
    blob = json.dumps({"sim": cfg.to_dict(), "pid": dataclasses.asdict(options),
                       "derivation": dataclasses.asdict(derivation),
                       "scorer": None if scorer is None else scorer.identity(), "version": PID_VERSION}, sort_keys=True)
    key = hashlib.sha256(blob.encode()).hexdigest()[:16]
    path = Path(path) if path is not None else data_root("clustercount") / f"pid-{key}"

    def build(tmp):
        tasks = [(str(tmp / _file_name(part, p)), part, p, cfg.to_dict(), dataclasses.asdict(derivation),
                  dataclasses.asdict(options)) for p in options.momenta for part in options.particles]
        n = workers
        if n is None:
            n = 1 if options.n_tracks * options.n_cells * len(tasks) < 8000 else min(available_cores(), len(tasks))
        log.info("simulating PID samples: %d x %d tracks of %d cells into %s", len(tasks), options.n_tracks,
                 options.n_cells, path)
        if n <= 1 or scorer is not None:  # the classifier runs here, in the process that holds Keras
            return [Path(_make_pid_file(t, scorer)) for t in tasks]
        with multiprocessing.get_context("spawn").Pool(n) as pool:
            return [Path(p) for p in pool.map(_make_pid_file, tasks)]

    return cached_dataset(path, key, build, {"pid": dataclasses.asdict(options), "sim": cfg.to_dict(),
                                                 "derivation": dataclasses.asdict(derivation)})


def separation_power(a, b) -> float:
    """``|mean(a) - mean(b)| / ((std(a) + std(b)) / 2)``: how many (average) sigmas apart two samples are."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(abs(a.mean() - b.mean()) / (0.5 * (a.std(ddof=1) + b.std(ddof=1))))


def truncated_mean(values, fraction: float, axis: int = -1) -> np.ndarray:
    """Mean of the lowest ``fraction`` of ``values`` along ``axis`` (at least one value)."""
    v = np.sort(np.asarray(values, dtype=np.float64), axis=axis)
    k = max(1, int(round(fraction * v.shape[axis])))
    return np.take(v, np.arange(k), axis=axis).mean(axis=axis)


def pid_study(directory, options: PIDOptions, predict=None, baseline_gap_ns: float | None = None,
              fractions=(0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0), title: str = "") -> AnalysisResults:
    """Separation powers of dN/dx (ML, baseline, truth) and dE/dx vs momentum for the PID samples.

    ``predict(times) -> per-cell cluster counts`` is the trained counter (None: no ML row);
    ``baseline_gap_ns`` the tuned time-proximity gap (None: the 2 ns default).
    """
    gap = 2.0 if baseline_gap_ns is None else float(baseline_gap_ns)
    gap_index = int(np.argmin(np.abs(np.asarray(TP_GAPS_NS) - gap)))
    first, second = options.particles
    # The perfect-peak-finding bound uses the gap whose count follows the true one best over all cells.
    spread = 0.0
    for p in options.momenta:
        for part in options.particles:
            with h5py.File(Path(directory) / _file_name(part, p), "r") as f:
                spread = spread + np.square(f["tp_truth_counts"][()] - f["n_clusters"][()][:, None]).sum(axis=0)
    ideal_index = int(np.argmin(spread))
    per_track = {}
    for p in options.momenta:
        for part in options.particles:
            with h5py.File(Path(directory) / _file_name(part, p), "r") as f:
                shape = (int(f.attrs["n_tracks"]), int(f.attrs["n_cells"]))
                length = f["track_length"][()].reshape(shape).sum(axis=1)
                est = {"truth": f["n_clusters"][()].reshape(shape).sum(axis=1) / length,
                       "baseline": f["tp_counts"][:, gap_index].reshape(shape).sum(axis=1) / length,
                       "ideal": f["tp_truth_counts"][:, ideal_index].reshape(shape).sum(axis=1) / length,
                       # references: every electron counted perfectly, and the detected peaks unclustered
                       "electrons": f["n_electrons"][()].reshape(shape).sum(axis=1) / length,
                       "peaks": f["n_peaks"][()].reshape(shape).sum(axis=1) / length}
                if predict is not None:
                    pred = np.asarray(predict(f["times"][()].astype(np.float32)), dtype=np.float64).reshape(shape)
                    est["ML"] = pred.sum(axis=1) / length
                charge = f["charge"][()].reshape(shape) / (length[:, None] / shape[1])
                for frac in fractions:
                    est[f"dEdx{frac:g}"] = truncated_mean(charge, frac)
            per_track[(p, part)] = est
    sep = {}
    for name in per_track[(options.momenta[0], first)]:
        sep[name] = [separation_power(per_track[(p, first)][name], per_track[(p, second)][name])
                     for p in options.momenta]
    best = max(fractions, key=lambda fr: np.mean(sep[f"dEdx{fr:g}"]))
    rows = []
    for i, p in enumerate(options.momenta):
        row = {"momentum": p, "S_dEdx": sep[f"dEdx{best:g}"][i], "S_dNdx_truth": sep["truth"][i],
               "S_dNdx_ideal": sep["ideal"][i], "S_dNdx_baseline": sep["baseline"][i],
               "S_electrons": sep["electrons"][i], "S_peaks": sep["peaks"][i]}
        if "ML" in sep:
            row["S_dNdx_ML"] = sep["ML"][i]
        for name in ("truth", "ideal", "baseline", "ML", "electrons", "peaks"):
            if name in sep:
                row[f"ratio_{name}"] = sep[name][i] / row["S_dEdx"]
        a = per_track[(p, first)]
        row["res_dEdx"] = float(a[f"dEdx{best:g}"].std() / a[f"dEdx{best:g}"].mean())
        for name in ("truth", "ML"):
            if name in a:
                row[f"res_dNdx_{name}"] = float(a[name].std() / a[name].mean())
        rows.append(row)
    table = pd.DataFrame(rows).set_index("momentum")
    md = {"PID_dEdxTruncation": float(best), "PID_TruthRatioMean": float(table["ratio_truth"].mean()),
          "PID_BaselineRatioMean": float(table["ratio_baseline"].mean()),
          "PID_IdealPeaksRatioMean": float(table["ratio_ideal"].mean()),
          "PID_ElectronsRatioMean": float(table["ratio_electrons"].mean()),
          "PID_PeaksRatioMean": float(table["ratio_peaks"].mean()),
          "PID_IdealPeaksGapNs": float(TP_GAPS_NS[ideal_index]), "PID_Tracks": options.n_tracks,
          "PID_Cells": options.n_cells, "PID_Momenta": list(options.momenta)}
    if "ML" in sep:
        md.update({"PID_RatioMean": float(table["ratio_ML"].mean()), "PID_RatioMin": float(table["ratio_ML"].min()),
                   "PID_RatioMax": float(table["ratio_ML"].max())})
    trunc = pd.DataFrame({f"{fr:g}": sep[f"dEdx{fr:g}"] for fr in fractions}, index=pd.Index(options.momenta,
                                                                                            name="momentum"))
    figures = {"PID_Separation": _separation_figure(table, best, options, title),
               "PID_Distributions": _distribution_figure(per_track, options, best, title)}
    return AnalysisResults(metadata=md, tables={"PID_Separation": table, "PID_dEdxTruncation": trunc}, figures=figures)


def _separation_figure(table, best, options, title) -> Figure:
    fig, (ax, rx) = style.figure((7, 7), nrows=2, sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    styles = {"S_dNdx_truth": ("dN/dx, true cluster count (Poisson limit)", "k:"),
              "S_dNdx_ideal": ("dN/dx, perfect peak finding + time proximity", "C7d:"),
              "S_dNdx_ML": ("dN/dx, CNN cluster count", "C0o-"),
              "S_dNdx_baseline": ("dN/dx, derivative + time proximity", "C2s--"),
              "S_dEdx": (f"dE/dx, truncated mean ({best:.0%} lowest)", "C3^-")}
    for col, (label, fmt) in styles.items():
        if col in table:
            ax.plot(table.index, table[col], fmt, label=label)
    ax.set(xscale="log", ylabel=f"{options.particles[0]}/{options.particles[1]} separation power",
           title=f"{title} {options.n_tracks} tracks x {options.n_cells} cells".strip())
    style.legend(ax)
    styles = (("ratio_ML", "C0o-"), ("ratio_truth", "k:"), ("ratio_ideal", "C7d:"), ("ratio_baseline", "C2s--"))
    for col, fmt in styles:
        if col in table:
            rx.plot(table.index, table[col], fmt, label=col.replace("ratio_", ""))
    rx.axhline(1.5, color="grey", ls="--", lw=1, label="target 1.5")
    rx.axhline(1.0, color="grey", ls=":", lw=1)
    rx.set(xscale="log", xlabel="momentum [GeV/c]", ylabel="S(dN/dx) / S(dE/dx)")
    style.legend(rx, ncol=4)
    return fig


def _distribution_figure(per_track, options, best, title) -> Figure:
    p = options.momenta[min(1, len(options.momenta) - 1)]
    names = [n for n in ("ML", "truth") if n in per_track[(p, options.particles[0])]] + [f"dEdx{best:g}"]
    fig, axes = style.figure((4 * len(names), 3.8), ncols=len(names))
    for ax, name in zip(np.atleast_1d(axes), names):
        for part in options.particles:
            ax.hist(per_track[(p, part)][name], 20, histtype="step", lw=1.5, label=part)
        label = {"ML": "dN/dx (CNN) [1/cm]", "truth": "dN/dx (true) [1/cm]"}.get(name, "truncated charge / cm")
        ax.set(xlabel=label, ylabel="tracks", title=f"{p:g} GeV/c")
        style.legend(ax)
    fig.suptitle(title)
    return fig


# ---------------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------------


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m clustercount.pid",
                                description="pi/K separation power vs momentum: dN/dx (trained cluster counter) "
                                            "vs dE/dx (truncated mean), over tracks of many cells.")
    p.add_argument("-L", "--LoadModel", required=True, metavar="DIR",
                   help="a trained clusterization model directory (its configuration sets the simulation and "
                        "the peak finding)")
    p.add_argument("--momenta", type=float, nargs="+", default=None, help="momenta [GeV/c] (default: the model's "
                   "PIDMomenta)")
    p.add_argument("--tracks", type=int, default=None, help="tracks per particle and momentum")
    p.add_argument("--cells", type=int, default=None, help="cells per track")
    p.add_argument("--out", default=None, help="where results go (default: the model directory)")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    return p


def main(argv=None) -> int:
    args = make_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING - 10 * min(args.verbose + 1, 2),
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from dlkit.metadata import MetaDataError, read_metadata

    directory = Path(args.LoadModel)
    try:
        md = read_metadata(directory)
    except (MetaDataError, FileNotFoundError) as exc:
        print(f"error: -L {args.LoadModel}: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    config = dict(md.get("Configuration") or {})
    if "PIDMomenta" not in config:
        print(f"error: -L {args.LoadModel}: not a clustercount clusterization model (no PIDMomenta in its "
              "Configuration)", file=sys.stderr)
        return EXIT_USER_ERROR
    if args.momenta:
        config["PIDMomenta"] = args.momenta
    if args.tracks:
        config["PIDTracks"] = args.tracks
    if args.cells:
        config["PIDCells"] = args.cells
    import keras

    model = keras.saving.load_model(directory / "model.keras", compile=False)  # predicting only
    sim = DriftSimConfig.from_dict(config.get("SimConfig") or {})
    options = PIDOptions.from_config(config)
    finder = md.get("PeakFinder", config.get("PeakModel"))  # the resolved peak model ("auto" -> its directory)
    scorer = PeakScorer(finder, config.get("PeakThreshold")) if finder not in (None, "", "derivative") else None
    samples = pid_dataset(sim, options, DerivationOptions.from_config(config), scorer=scorer)
    results = pid_study(samples, options, lambda x: model.predict(x, batch_size=2048, verbose=0),
                        md.get("BaselineGapNs"), title=md.get("Name", ""))
    out = Path(args.out) if args.out else directory
    out.mkdir(parents=True, exist_ok=True)
    results.save(out)
    print(results.tables["PID_Separation"].to_string(float_format=lambda v: f"{v:.3f}"))
    print(json.dumps({k: v for k, v in results.metadata.items() if k.startswith("PID_Ratio")
                      or k == "PID_TruthRatioMean"}, indent=1))
    return EXIT_OK


if __name__ == "__main__":
    from clustercount.pid import main as _main

    sys.exit(_main())
