"""A module-level task for dlkit.datasets.write_files in the no-main-guard tests (test_spawn_main_guard.py): the
spawned workers import it from here, never from the script that calls write_files."""

import h5py
import numpy as np


def write_events(job, progress):
    """``job = (path, class, events)``: one small HDF5 file of ``events`` rows of X = class + row / 100."""
    path, cls, n = job
    with h5py.File(path, "w") as f:
        f["X"] = (cls + np.arange(n * 3, dtype=np.float32).reshape(n, 3) / 100).astype(np.float32)
    if progress is not None:
        progress(n)
    return path, n
