"""The two-step chain of seed 004: which peak finder feeds the clusterization step.

The clusterization experiment's ``PeakModel`` entry says where its detected peaks come from:

- ``"auto"`` (the default): a peak-finding LSTM trained on the same waveforms. It is trained once, by
  :mod:`clustercount.PeakFindingExperiment` at scan point ``PeakModelPoint`` of its default config (18:
  LSTM(32), Adam, batch 1000 - the README's step 1), with ``PeakModelSet`` overrides and ``--Test``'s
  settings in ``--Test`` mode, and cached like the derived datasets
  (``$DLKIT_DATA/clustercount/peakmodel-<key>/``, complete only with its ``COMPLETE.json``; the key hashes the
  waveforms, the peak experiment's defaults and config file, the scan point, the overrides and the mode).
  Later runs on the same waveforms reuse it.
- a directory: a trained ``PeakFindingExperiment`` model (e.g. the best point of a scan).
- ``"derivative"`` (or None): the derivative algorithm's peaks (the single-step variant).

Whatever the finder, the baseline stays the derivative algorithm + time proximity.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)

__all__ = ["AUTO", "DERIVATIVE", "peak_model_dir", "auto_peak_model", "check_peak_model"]

AUTO = "auto"
DERIVATIVE = "derivative"


def _source_key(waveform_dir) -> list:
    from clustercount.data import _source_identity, waveform_files

    return _source_identity(waveform_files(waveform_dir))


def auto_peak_model(config, waveform_dir, test: bool = False) -> Path:
    """Directory of the peak finder trained (once, then cached) on ``waveform_dir`` for this configuration."""
    from clustercount import PeakFindingExperiment as pfe
    from dlkit.config import ConfigError
    from dlkit.datasets import cached_dataset, data_root
    from dlkit.metadata import METADATA_FILE, atomic_write, file_sha256, read_metadata, to_jsonable

    point = int(config.get("PeakModelPoint", 18))
    overrides = dict(config.get("PeakModelSet") or {})
    for key in overrides:
        if key not in pfe.DEFAULTS:
            raise ConfigError(f"config entry 'PeakModelSet': {key!r} is not a PeakFindingExperiment entry")
    for key in ("DataDir", "OutputBase", "LoadPreviousModel"):
        overrides.pop(key, None)
    blob = json.dumps({"source": _source_key(waveform_dir), "defaults": pfe.DEFAULTS, "test": bool(test),
                       "test_overrides": pfe.TEST_OVERRIDES if test else None,
                       "config_file": file_sha256(pfe.DEFAULT_CONFIG),
                       "point": point, "overrides": overrides}, sort_keys=True, default=str)
    key = hashlib.sha256(blob.encode()).hexdigest()[:16]
    path = data_root("clustercount") / f"peakmodel-{key}"

    def build(tmp: Path):
        log.info("training the default peak finder (PeakFindingExperiment point %d%s, %s) into %s", point,
                 ", --Test" if test else "", overrides or "no overrides", path)
        result = pfe.run(point=point, Test=test, data=str(waveform_dir), OutputBase=str(tmp), **overrides)
        if not result.ok:
            raise RuntimeError(f"training the default peak finder stopped with exit code {result.exit_code}")
        run_dir = result.run_dir
        # its MetaData names where it lives once the cache is renamed into place, not this build directory
        metadata = read_metadata(run_dir)
        metadata["OutDir"] = str(path / run_dir.name)
        atomic_write(run_dir / METADATA_FILE,
                     lambda f: Path(f).write_text(json.dumps(to_jsonable(metadata), indent=1)))
        return [f for f in run_dir.rglob("*") if f.is_file()]

    cached_dataset(path, key, build, {"kind": "peakmodel", "point": point, "overrides": overrides,
                                          "test": bool(test), "waveforms": str(waveform_dir)})
    dirs = [d for d in path.iterdir() if d.is_dir() and (d / "model.keras").is_file()]
    if len(dirs) != 1:
        raise RuntimeError(f"{path}: expected one trained peak model, found {[d.name for d in dirs]}")
    return dirs[0]


def check_peak_model(config) -> None:
    """``PeakModel`` is ``"auto"``, ``"derivative"`` (or None) or an existing model directory, else a ConfigError."""
    from dlkit.config import ConfigError

    model = config.get("PeakModel")
    if model not in (None, "", AUTO, DERIVATIVE) and not Path(model).is_dir():
        raise ConfigError(f"config entry 'PeakModel' = {model!r}: no such model directory (expected 'auto', "
                          "'derivative' or a trained PeakFindingExperiment model directory)")


def peak_model_dir(config, waveform_dir, test: bool = False) -> Path | None:
    """The peak-finding model a clusterization run uses (``PeakModel``), trained if ``"auto"``; None: derivative."""
    check_peak_model(config)
    value = config.get("PeakModel")
    if value in (None, "", DERIVATIVE):
        return None
    if value == AUTO:
        return auto_peak_model(config, waveform_dir, test)
    return Path(value)
