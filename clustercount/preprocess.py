"""clustercount's per-batch pre-processes, run inside the generator's reader processes.

Each reader process unpickles its pre-process and so imports the module that defines it: this one imports
numpy and :mod:`dlkit.config` only, so a reader starts without :mod:`clustercount.data`'s simulator, scipy and
h5py imports (about a second of CPU per reader). :mod:`clustercount.data` re-exports both classes.

>>> out = WindowPreprocess(10)({"window": np.full((2, 15, 1), 20, np.float16), "label": np.array([0, 1], np.int8)})
>>> out["window"].dtype, float(out["window"].max()), out["label"].tolist()
(dtype('float32'), 2.0, [0.0, 1.0])
"""

from __future__ import annotations

import numpy as np

from dlkit.config import ConfigError

__all__ = ["WindowPreprocess", "TimesPreprocess"]


class WindowPreprocess:
    """Worker pre-process of peak windows: float16 mV -> float32 / ``scale``; labels -> float32."""

    def __init__(self, scale: float):
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0:
            raise ConfigError(f"config entry 'WindowScale' = {scale!r}; expected a positive number (mV)")
        self.scale = float(scale)

    def __call__(self, arrays):
        arrays["window"] = arrays["window"].astype(np.float32) / np.float32(self.scale)
        arrays["label"] = arrays["label"].astype(np.float32)
        return arrays

    def __repr__(self):
        return f"WindowPreprocess({self.scale!r})"


class TimesPreprocess:
    """Worker pre-process of the clusterization input: uint8 counts -> float32; target -> float32."""

    def __call__(self, arrays):
        arrays["times"] = arrays["times"].astype(np.float32)
        arrays["n_clusters"] = arrays["n_clusters"].astype(np.float32)
        return arrays

    def __repr__(self):
        return "TimesPreprocess()"
