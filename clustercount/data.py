"""clustercount data: waveform files -> the two learning datasets, their generators and test sets.

Both experiments start from waveform files in the :mod:`clustercount.simulate` layout (``<DataDir>/*.h5``
with ``waveform`` and the per-electron truth); with no ``DataDir`` the simulated default dataset is made on
first use. From them two *derived* datasets are made once, per waveform file, and cached like the simulated
data (``$DLKIT_DATA/clustercount/<kind>-<key>/``, a ``COMPLETE.json`` marker written last; the key hashes
the source files and every option that changes the bytes):

- peak finding (``peaks-<key>/peaks_<i>.h5``): every *candidate* peak of every waveform - each local
  maximum more than ``CandidateThreshold`` noise RMS above the baseline, plus every peak of the derivative
  algorithm - with ``window`` (K, 15, 1) float16 [mV], the samples around it (7 before, 7 after);
  ``label`` (K,) int8, 1 if a true electron pulse peaks within ``MatchTolerance`` samples, else 0 (noise);
  ``peak_type`` (K,) int8 (0 noise, 1 primary, 2 secondary: the nearest matched electron's type);
  ``deriv`` (K,) int8, 1 if the derivative algorithm found this peak; ``amplitude`` (K,) float32 (height above
  the baseline, in noise RMS); ``waveform_index``/``sample`` (K,) int32 (where it is).
- clusterization (``clusters-<key>/clusters_<i>.h5``), one row per waveform: ``times`` (N, 1024, 1) uint8,
  the detected peak times as counts in 1024 bins over the window (the CNN input); ``n_clusters`` (N,)
  float32 (target); ``n_peaks`` (N,) int32; ``tp_counts`` (N, G) int16, the time-proximity cluster count
  for each gap of ``attrs["tp_gaps_ns"]`` (the baseline, tuned on the training set by the analysis); and the
  waveform truth ``particle``, ``momentum``, ``charge``, ``n_electrons``, ``impact_parameter``.

The generator then reads the derived files; the split is by events (:func:`dlkit.generators.split_samples`,
files shuffled with the seed). Pre-processes run in the generator's reader processes: they live in
:mod:`clustercount.preprocess` (numpy only, re-exported here), so a reader does not import this module.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import multiprocessing
import os
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from clustercount.baselines import (
    DERIVATIVE_DEFAULTS,
    PeakList,
    derivative_peaks,
    encode_times,
    local_maxima,
    robust_sigma,
    time_proximity_counts,
)
from clustercount.preprocess import TimesPreprocess, WindowPreprocess  # light: the readers unpickle them
from clustercount.simulate import DriftSimConfig, default_dataset
from dlkit.config import ConfigError
from dlkit.datasets import atomic_file, available_cores, cached_dataset, data_root, read_complete
from dlkit.experiment import RunData
from dlkit.generators.errors import DataError
from dlkit.metadata import file_sha256

log = logging.getLogger(__name__)

__all__ = ["DerivationOptions", "waveform_files", "find_candidates", "label_candidates", "extract_windows",
           "make_peak_file", "make_cluster_file", "cluster_features", "peak_dataset", "cluster_dataset",
           "WindowPreprocess", "TimesPreprocess", "PeakData", "ClusterData", "setup_peak_data",
           "setup_cluster_data", "resolve_waveforms", "TP_GAPS_NS", "PeakScorer"]

#: Gaps [ns] for which the time-proximity count is stored; the analysis picks the best on training data.
TP_GAPS_NS = tuple(float(g) for g in np.arange(0.0, 20.5, 0.5))
#: Bumped when the derived files change for the same inputs (part of their cache keys).
DERIVED_VERSION = 3


@dataclass(frozen=True)
class DerivationOptions:
    """How the derived datasets are made from the waveforms (every field is part of the cache key)."""

    candidate_threshold: float = 2.0  # noise RMS above the baseline for a local maximum to be a candidate
    window_before: int = 7  # samples before the candidate peak in its window
    window_after: int = 7  # samples after (window length = before + 1 + after = 15)
    match_tolerance: float = 2.0  # samples between a candidate and a true pulse peak for "signal"
    k1: float = DERIVATIVE_DEFAULTS["k1"]  # derivative algorithm thresholds, see baselines.derivative_peaks
    k2: float = DERIVATIVE_DEFAULTS["k2"]
    smooth: int = DERIVATIVE_DEFAULTS["smooth"]
    max_rise: int = DERIVATIVE_DEFAULTS["max_rise"]
    n_bins: int = 1024  # time bins of the clusterization input

    @classmethod
    def from_config(cls, config) -> DerivationOptions:
        """From an experiment's resolved configuration (its ``Candidate*``, ``Window*``, ``Deriv*`` entries)."""
        opts = cls(candidate_threshold=config.get("CandidateThreshold", cls.candidate_threshold),
                   window_before=config.get("WindowBefore", cls.window_before),
                   window_after=config.get("WindowAfter", cls.window_after),
                   match_tolerance=config.get("MatchTolerance", cls.match_tolerance),
                   k1=config.get("DerivK1", cls.k1), k2=config.get("DerivK2", cls.k2),
                   smooth=config.get("DerivSmooth", cls.smooth), max_rise=config.get("DerivMaxRise", cls.max_rise),
                   n_bins=config.get("TimeBins", cls.n_bins))
        if opts.window_before < 0 or opts.window_after < 0:
            raise ConfigError("config entries 'WindowBefore'/'WindowAfter' must be >= 0")
        if opts.smooth < 1 or opts.max_rise < 0 or opts.n_bins < 8:
            raise ConfigError("config entries 'DerivSmooth' >= 1, 'DerivMaxRise' >= 0 and 'TimeBins' >= 8 expected")
        return opts

    def derivative(self) -> dict:
        return {"k1": self.k1, "k2": self.k2, "smooth": self.smooth, "max_rise": self.max_rise}


# ---------------------------------------------------------------------------------------------------------
# Reading waveform files
# ---------------------------------------------------------------------------------------------------------

_REQUIRED = ("waveform", "n_clusters", "electron_offset", "electron_time", "electron_type")


def waveform_files(data_dir) -> list[Path]:
    """The waveform files of a dataset directory (``*.h5``, natural order); a DataError if none or invalid."""
    import re

    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError("waveform directory not found", file=data_dir)
    files = sorted(data_dir.glob("*.h5"),
                   key=lambda p: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name)])
    if not files:
        raise DataError("no *.h5 waveform files", file=data_dir)
    return files


def _read_waveform_file(path) -> tuple[dict, DriftSimConfig | None, dict]:
    """All datasets of a waveform file (waveforms as float32), its simulation config if any, and attrs."""
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise DataError(f"cannot open as HDF5 (truncated or corrupt?): {exc}", file=path) from None
    with f:
        missing = [k for k in _REQUIRED if k not in f]
        if missing:
            raise DataError(f"missing datasets {missing} (needs the clustercount.simulate layout, with the "
                            f"truth)", file=path)
        data = {k: f[k][()] for k in f}
        attrs = dict(f.attrs)
    w = data["waveform"]
    if w.ndim != 2:
        raise DataError(f"waveform has shape {w.shape}; expected (N, samples)", file=path, key="waveform")
    n = w.shape[0]
    if data["electron_offset"].shape != (n + 1,) or data["n_clusters"].shape != (n,):
        raise DataError("electron_offset must have N+1 and n_clusters N entries for N waveforms", file=path)
    data["waveform"] = w.astype(np.float32)
    cfg = None
    if "simulation_config" in attrs:
        try:
            cfg = DriftSimConfig.from_json(attrs["simulation_config"])
        except (ValueError, TypeError) as exc:
            raise DataError(f"bad simulation_config attribute: {exc}", file=path) from None
    return data, cfg, attrs


def _timing(cfg: DriftSimConfig | None, attrs: dict, n_samples: int) -> tuple[float, float, float]:
    """(sampling period ns, window ns, pulse peak delay ns) from the file's attributes or config."""
    ghz = float(attrs.get("sampling_ghz", cfg.sampling_ghz if cfg else 1.2))
    peak = float(attrs.get("pulse_peak_ns", 1.1))
    return 1.0 / ghz, n_samples / ghz, peak


# ---------------------------------------------------------------------------------------------------------
# Candidates, labels, windows
# ---------------------------------------------------------------------------------------------------------


def find_candidates(w: np.ndarray, opts: DerivationOptions = DerivationOptions()) -> tuple[PeakList, np.ndarray,
                                                                                             np.ndarray]:
    """Candidate peaks of waveforms ``w`` (N, T): local maxima above threshold, plus the derivative peaks.

    Returns ``(candidates, deriv, amplitude)``: the candidates (CSR, sample numbers), whether the
    derivative algorithm found each, and each one's height above the waveform's median in noise RMS
    (:func:`~clustercount.baselines.robust_sigma`).
    """
    base = np.median(w, axis=1, keepdims=True)
    sigma = np.maximum(robust_sigma(w), 1e-6)
    height = (w - base) / sigma
    mask = local_maxima(w) & (height > opts.candidate_threshold)
    deriv = derivative_peaks(w, **opts.derivative())
    dmask = np.zeros_like(mask)
    dmask[deriv.waveform, deriv.index] = True
    cands = PeakList.from_mask(mask | dmask)
    wf, idx = cands.waveform, cands.index
    return cands, dmask[wf, idx], height[wf, idx].astype(np.float32)


def label_candidates(cands: PeakList, electron_offset, electron_time, electron_type, dt_ns: float,
                     pulse_peak: float, tolerance: float) -> np.ndarray:
    """Truth of each candidate: the type (1 primary, 2 secondary) of the nearest electron pulse peak within
    ``tolerance`` samples, else 0 (noise)."""
    n = len(electron_offset) - 1
    e_wf = np.repeat(np.arange(n), np.diff(electron_offset))
    # Electrons are sorted by time within a waveform; a key with a gap between waveforms keeps them apart.
    span = max(float(np.max(electron_time, initial=0.0)) / dt_ns, float(np.max(cands.index, initial=0))) \
        + 10 * tolerance + 10
    ekey = e_wf * span + (np.asarray(electron_time, np.float64) + pulse_peak) / dt_ns
    ckey = cands.waveform * span + cands.index
    if len(ekey) == 0 or len(ckey) == 0:
        return np.zeros(len(ckey), np.int8)
    pos = np.searchsorted(ekey, ckey)
    best = np.full(len(ckey), np.inf)
    arg = np.zeros(len(ckey), np.int64)
    for j in (pos - 1, pos):
        jj = np.clip(j, 0, len(ekey) - 1)
        d = np.abs(ekey[jj] - ckey)
        better = d < best
        best[better], arg[better] = d[better], jj[better]
    return np.where(best <= tolerance, np.asarray(electron_type)[arg], 0).astype(np.int8)


def extract_windows(w: np.ndarray, cands: PeakList, before: int = 7, after: int = 7) -> np.ndarray:
    """The samples ``[i - before, i + after]`` around each candidate, (K, before+1+after, 1); edges repeat."""
    padded = np.pad(w, ((0, 0), (before, after)), mode="edge")
    offsets = np.arange(before + after + 1)
    return padded[cands.waveform[:, None], cands.index[:, None] + offsets][..., None]


def make_peak_file(raw_path, out_path, opts: DerivationOptions = DerivationOptions()) -> Path:
    """Write the peak-finding dataset of one waveform file (module docstring), atomically."""
    data, cfg, attrs = _read_waveform_file(raw_path)
    w = data["waveform"]
    dt, _, peak = _timing(cfg, attrs, w.shape[1])
    cands, deriv, amp = find_candidates(w, opts)
    ptype = label_candidates(cands, data["electron_offset"], data["electron_time"], data["electron_type"], dt, peak,
                             opts.match_tolerance)
    windows = extract_windows(w, cands, opts.window_before, opts.window_after).astype(np.float16)
    arrays = {"window": windows, "label": (ptype > 0).astype(np.int8), "peak_type": ptype,
              "deriv": deriv.astype(np.int8), "amplitude": amp, "waveform_index": cands.waveform.astype(np.int32),
              "sample": cands.index.astype(np.int32)}
    return _write(out_path, arrays, {"source": str(raw_path), "options": json.dumps(dataclasses.asdict(opts))})


def cluster_features(w: np.ndarray, opts: DerivationOptions, dt_ns: float, window_ns: float, scorer=None
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Waveforms ``w`` -> ``(times (N, n_bins, 1) uint8, n_peaks (N,), tp_counts (N, G))``.

    ``times`` encodes the peaks of the derivative algorithm, or of ``scorer`` (a :class:`PeakScorer`: the
    trained peak finder) if given; ``tp_counts`` is always the baseline, derivative + time proximity.
    """
    deriv = derivative_peaks(w, **opts.derivative())
    deriv_times = PeakList(deriv.offsets, deriv.index * dt_ns)
    peaks = deriv if scorer is None else scorer(w)
    times = PeakList(peaks.offsets, peaks.index * dt_ns)
    return (encode_times(times, opts.n_bins, window_ns), peaks.counts.astype(np.int32),
            time_proximity_counts(deriv_times, TP_GAPS_NS).astype(np.int16))


class PeakScorer:
    """Step 1 with a trained peak-finding model: candidates -> classifier scores -> the peaks above a cut.

    The candidates and windows are made exactly as for the model's training (its saved configuration);
    the cut defaults to the model's ``ThresholdAtDerivFake`` (the score cut at the derivative algorithm's
    fake rate, from its analysis), else 0.5. Runs in the calling process (it needs Keras).
    """

    def __init__(self, model_dir, threshold: float | None = None):
        import keras

        from dlkit.metadata import MetaDataError, read_metadata

        model_dir = Path(model_dir)
        try:
            md = read_metadata(model_dir)
        except (MetaDataError, FileNotFoundError) as exc:
            raise ConfigError(f"config entry 'PeakModel' = {str(model_dir)!r}: {exc}") from None
        conf = md.get("Configuration") or {}
        if "WindowScale" not in conf:
            raise ConfigError(f"config entry 'PeakModel' = {str(model_dir)!r}: not a clustercount peak-finding "
                              "model (no WindowScale in its Configuration)")
        self.options = DerivationOptions.from_config(conf)
        self.scale = float(conf["WindowScale"])
        self.threshold = float(threshold if threshold is not None else md.get("ThresholdAtDerivFake", 0.5))
        path = model_dir / "model.keras"
        self.digest = file_sha256(path)[:16]
        self.model = keras.saving.load_model(path, compile=False)  # predicting only
        self.directory = model_dir

    def identity(self) -> dict:
        """What makes its peaks (for cache keys): model bytes, cut, candidate and window options."""
        return {"model": self.digest, "threshold": self.threshold, "options": dataclasses.asdict(self.options),
                "scale": self.scale}

    def __call__(self, w: np.ndarray) -> PeakList:
        cands, _, _ = find_candidates(w, self.options)
        x = extract_windows(w, cands, self.options.window_before, self.options.window_after).astype(np.float32)
        x /= np.float32(self.scale)
        scores = np.asarray(self.model.predict(x, batch_size=16384, verbose=0)).reshape(-1) if len(x) else np.zeros(0)
        keep = scores >= self.threshold
        counts = np.bincount(cands.waveform[keep], minlength=w.shape[0])
        return PeakList(np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), cands.index[keep])


def make_cluster_file(raw_path, out_path, opts: DerivationOptions = DerivationOptions(), scorer=None) -> Path:
    """Write the clusterization dataset of one waveform file (module docstring), atomically.

    ``scorer``: a :class:`PeakScorer` whose peaks are encoded instead of the derivative algorithm's.
    """
    data, cfg, attrs = _read_waveform_file(raw_path)
    w = data["waveform"]
    dt, window, _ = _timing(cfg, attrs, w.shape[1])
    times, n_peaks, tp = cluster_features(w, opts, dt, window, scorer)
    arrays = {"times": times, "n_clusters": data["n_clusters"].astype(np.float32), "n_peaks": n_peaks,
              "tp_counts": tp}
    for key in ("particle", "momentum", "charge", "n_electrons", "impact_parameter"):
        if key in data:
            arrays[key] = data[key]
    finder = "derivative" if scorer is None else json.dumps(scorer.identity())
    return _write(out_path, arrays, {"source": str(raw_path), "options": json.dumps(dataclasses.asdict(opts)),
                                     "tp_gaps_ns": list(TP_GAPS_NS), "window_ns": window, "peak_finder": finder})


def _write(path, arrays: dict, attrs: dict) -> Path:
    path = Path(path)
    with atomic_file(path) as tmp, h5py.File(tmp, "w") as f:
        for key, value in arrays.items():
            f.create_dataset(key, data=value)  # contiguous: the generator reads slices with preadv
        f.attrs.update({**attrs, "derived_version": DERIVED_VERSION, "generator": "clustercount.data"})
    return path


# ---------------------------------------------------------------------------------------------------------
# Cached derived datasets
# ---------------------------------------------------------------------------------------------------------


def _source_identity(files) -> list:
    """What identifies the source files: a simulated dataset's key, else paths, sizes and times."""
    info = read_complete(Path(files[0]).parent)
    if info is not None:
        return [info.get("key"), [Path(f).name for f in files]]
    out = []
    for f in files:
        st = os.stat(f)
        out.append([os.path.abspath(f), st.st_size, st.st_mtime_ns])
    return out


def _derived_key(kind: str, files, opts: DerivationOptions, scorer=None) -> str:
    blob = json.dumps({"kind": kind, "source": _source_identity(files), "options": dataclasses.asdict(opts),
                       "scorer": None if scorer is None else scorer.identity(), "version": DERIVED_VERSION},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _derive_task(args):
    """Top-level (picklable) worker: one derived file."""
    kind, raw, out, opts = args
    (make_peak_file if kind == "peaks" else make_cluster_file)(raw, out, DerivationOptions(**opts))
    return out


def _derive_all(kind: str, files, out_dir: Path, opts: DerivationOptions, workers: int | None,
                scorer=None) -> list[Path]:
    if scorer is not None:  # the classifier runs here, in the process that holds Keras
        return [make_cluster_file(f, out_dir / f"{kind}_{i}.h5", opts, scorer) for i, f in enumerate(files)]
    tasks = [(kind, str(f), str(out_dir / f"{kind}_{i}.h5"), dataclasses.asdict(opts)) for i, f in enumerate(files)]
    if workers is None:
        workers = 1 if len(tasks) < 4 else min(available_cores(), len(tasks))
    if workers <= 1:
        return [Path(_derive_task(t)) for t in tasks]
    ctx = multiprocessing.get_context("spawn")  # the parent may hold Keras threads
    with ctx.Pool(workers) as pool:
        return [Path(p) for p in pool.map(_derive_task, tasks)]


def _derived_dataset(kind: str, data_dir, opts: DerivationOptions, workers=None, path=None, scorer=None) -> Path:
    files = waveform_files(data_dir)
    key = _derived_key(kind, files, opts, scorer)
    path = Path(path) if path is not None else data_root("clustercount") / f"{kind}-{key}"
    meta = {"kind": kind, "source_dir": str(Path(data_dir).resolve()), "options": dataclasses.asdict(opts),
            "peak_finder": "derivative" if scorer is None else scorer.identity(), "version": DERIVED_VERSION}
    log.info("%s dataset of %s -> %s", kind, data_dir, path)
    return cached_dataset(path, key, lambda tmp: _derive_all(kind, files, tmp, opts, workers, scorer), meta)


def peak_dataset(data_dir, opts: DerivationOptions = DerivationOptions(), workers=None, path=None) -> Path:
    """Directory of the peak-finding dataset of the waveform files in ``data_dir``, made if missing."""
    return _derived_dataset("peaks", data_dir, opts, workers, path)


def cluster_dataset(data_dir, opts: DerivationOptions = DerivationOptions(), workers=None, path=None,
                    scorer=None) -> Path:
    """Directory of the clusterization dataset of the waveform files in ``data_dir``, made if missing.

    ``scorer`` (a :class:`PeakScorer`) encodes the trained peak finder's peaks instead of the derivative's.
    """
    return _derived_dataset("clusters", data_dir, opts, workers, path, scorer)


def derived_files(directory, kind: str) -> list[Path]:
    """The derived files of a complete derived dataset, in the order of their source files."""
    info = read_complete(directory)
    if info is None:
        raise DataError("not a complete derived dataset (no COMPLETE.json)", file=directory)
    return [Path(directory) / f for f in info["files"] if Path(f).name.startswith(kind)]


# ---------------------------------------------------------------------------------------------------------
# Generators
# ---------------------------------------------------------------------------------------------------------


def resolve_waveforms(config) -> Path:
    """The waveform directory of a run: ``DataDir``, or the simulated default dataset of ``SimWaveforms``."""
    if config.get("DataDir"):
        return Path(config["DataDir"])
    sim = {k: v for k, v in (config.get("SimConfig") or {}).items()}
    try:
        cfg = DriftSimConfig.from_dict(sim)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"config entry 'SimConfig' = {sim!r}: {exc}") from None
    return default_dataset(n_waveforms=int(config["SimWaveforms"]), seed=int(config.get("SimSeed", 0)), config=cfg)


@dataclass
class _Data(RunData):
    train: object
    validation: object
    test_samples: list
    directory: Path
    waveform_dir: Path
    options: DerivationOptions
    generator_options: dict = field(default_factory=dict)


@dataclass
class PeakData(_Data):
    """Peak-finding generators (``(window, label)`` batches) and the test set. Close it to stop the readers."""

    scale: float = 10.0

    def read_test(self) -> dict:
        """The whole test set: ``window`` (K, 15, 1) scaled, ``label``, ``peak_type``, ``deriv``, ``amplitude``."""
        from dlkit.generators import MultiClassGenerator

        keys = {k: k for k in ("window", "label", "peak_type", "deriv", "amplitude")}
        samples = [dataclasses.replace(s, keys=keys) for s in self.test_samples]
        with MultiClassGenerator(samples, 4096, shuffle=False, onehot=False, class_index=False,
                                 preprocess=WindowPreprocess(self.scale), **self.generator_options) as gen:
            return gen.read_all()


@dataclass
class ClusterData(_Data):
    """Clusterization generators (``(times, n_clusters)`` batches) and the test set. Close it when done."""

    def read_split(self, samples) -> dict:
        """Every event of ``samples`` with all per-waveform arrays (times as float32)."""
        from dlkit.generators import MultiClassGenerator

        keys = {k: k for k in ("times", "n_clusters", "n_peaks", "tp_counts", "particle", "momentum", "charge")}
        samples = [dataclasses.replace(s, keys=keys) for s in samples]
        with MultiClassGenerator(samples, 2048, shuffle=False, onehot=False, class_index=False,
                                 preprocess=TimesPreprocess(), **self.generator_options) as gen:
            return gen.read_all()

    def read_test(self) -> dict:
        return self.read_split(self.test_samples)

    def read_baseline_train(self) -> dict:
        """Training events' ``tp_counts`` and ``n_clusters`` only (to tune the baseline without the inputs)."""
        from dlkit.generators import MultiClassGenerator

        keys = {"tp_counts": "tp_counts", "n_clusters": "n_clusters"}
        samples = [dataclasses.replace(s, keys=keys) for s in self.train_samples]
        with MultiClassGenerator(samples, 8192, shuffle=False, onehot=False, class_index=False,
                                 **self.generator_options) as gen:
            return gen.read_all()

    train_samples: list = field(default_factory=list)
    scorer: object = None
    peak_model: Path | None = None  # the peak-finding model whose peaks are encoded (None: derivative)


def _generators(config, samples, keys, preprocess, name):
    from dlkit.generators import MultiClassGenerator, Select, split_fractions, split_samples

    train_s, val_s, test_s = split_samples(samples, split_fractions(config, samples), seed=config["Seed"],
                                           allow_empty_classes=config["AllowEmptyClasses"])
    options = dict(n_workers=config["Workers"] or None)
    common = dict(onehot=False, class_index=False, seed=config["Seed"], preprocess=preprocess,
                  postprocess=Select(keys[0], keys[1]), preload=config["Preload"], **options)
    spec = {k: k for k in keys}
    train_s = [dataclasses.replace(s, keys=spec) for s in train_s]
    val_s = [dataclasses.replace(s, keys=spec) for s in val_s]
    train = MultiClassGenerator(train_s, config["BatchSize"], shuffle=True, cache=bool(config["Cache"]), **common)
    try:
        # The validation set is small and read once per epoch: no cache.
        val = MultiClassGenerator(val_s, config["BatchSize"], shuffle=False, cache=False, **common)
    except BaseException:
        train.close()
        raise
    log.info("%s data: %d train / %d validation batches of %d", name, len(train), len(val), config["BatchSize"])
    return train, val, train_s, test_s, options


def setup_peak_data(config) -> PeakData:
    """Peak-finding data of a run (see PeakFindingExperiment.DEFAULTS): derived dataset, split, generators."""
    from dlkit.generators import SampleSpec

    opts = DerivationOptions.from_config(config)
    waveforms = resolve_waveforms(config)
    directory = peak_dataset(waveforms, opts)
    files = derived_files(directory, "peaks")
    samples = [SampleSpec(str(f), {"window": "window", "label": "label"}, "peaks") for f in files]
    preprocess = WindowPreprocess(config["WindowScale"])
    train, val, _, test_s, gen_opts = _generators(config, samples, ("window", "label"), preprocess, "peak finding")
    return PeakData(train=train, validation=val, test_samples=test_s, directory=directory, waveform_dir=waveforms,
                    options=opts, generator_options=gen_opts, scale=float(config["WindowScale"]))


def setup_cluster_data(config, waveforms: Path, model_dir: Path | None) -> ClusterData:
    """Clusterization data of a run (see ClusterizationExperiment.DEFAULTS) on the waveforms in ``waveforms``
    (:func:`resolve_waveforms`), with the peaks of the peak finder in ``model_dir`` (None: the derivative
    algorithm's; :func:`clustercount.chain.peak_model_dir` turns the config's ``PeakModel`` into it)."""
    from dlkit.generators import SampleSpec

    opts = DerivationOptions.from_config(config)
    scorer = PeakScorer(model_dir, config.get("PeakThreshold")) if model_dir is not None else None
    directory = cluster_dataset(waveforms, opts, scorer=scorer)
    files = derived_files(directory, "clusters")
    samples = [SampleSpec(str(f), {"times": "times", "n_clusters": "n_clusters"}, "waveforms") for f in files]
    train, val, train_s, test_s, gen_opts = _generators(config, samples, ("times", "n_clusters"), TimesPreprocess(),
                                                        "clusterization")
    return ClusterData(train=train, validation=val, test_samples=test_s, directory=directory,
                       waveform_dir=waveforms, options=opts, generator_options=gen_opts, train_samples=train_s,
                       scorer=scorer, peak_model=model_dir)


def input_shape(gen, key) -> tuple:
    """Per-event shape of ``key`` in a generator's batches."""
    return tuple(gen.shapes[key][1:])
