"""Picklable pre-process building blocks that run inside the reader processes.

A pre-process receives the batch as ``{name: array}`` (views on shared memory, rows already shuffled) and
returns the dict (or None after in-place changes). Modifying float arrays in place costs no copy; new
arrays (other dtypes or shapes) are copied into the batch. Keep pre-processes in modules that do not
import Keras: readers unpickle them, which imports their module.

>>> norm = Normalize({"ECAL": 480.4, "HCAL": "nonlinear"})
>>> out = norm({"ECAL": np.full((2, 3), 480.4, np.float32), "HCAL": np.zeros((2, 2), np.float32)})
>>> float(out["ECAL"][0, 0]), float(out["HCAL"][0, 0])
(1.0, 0.0)
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping

import numpy as np

__all__ = ["Chain", "Normalize"]


class Normalize:
    """DLKit's LCD normalisation, with its pitfalls removed.

    Each entry of ``norms`` is a number (``x / norm``; integers work too), ``"nonlinear"``
    (``tanh(sign(x) * log(|x| + 1) / 2)``, case-insensitive) or None (leave as is). A norm of 0 is an error
    rather than a silent drop of the array; unknown array names are an error at the first batch.
    """

    def __init__(self, norms: Mapping):
        self.norms = {}
        for name, norm in dict(norms).items():
            if norm is None:
                continue
            if isinstance(norm, str):
                if norm.lower() != "nonlinear":
                    raise ValueError(
                        f"normalisation of {name!r} must be a number, 'nonlinear' or None, got {norm!r}"
                    )
                self.norms[name] = "nonlinear"
            elif isinstance(norm, numbers.Real) and not isinstance(norm, bool):
                if norm == 0:
                    raise ValueError(f"normalisation of {name!r} is 0; use None to leave an array unchanged")
                self.norms[name] = float(norm)
            else:
                raise TypeError(
                    f"normalisation of {name!r} must be a number, 'nonlinear' or None, got {norm!r}"
                )

    def __call__(self, arrays):
        for name, norm in self.norms.items():
            if name not in arrays:
                raise KeyError(f"Normalize: no array {name!r} in the batch (has {sorted(arrays)})")
            x = arrays[name]
            if x.dtype.kind != "f":
                x = arrays[name] = x.astype(np.float32)
            if norm == "nonlinear":
                s = np.sign(x)
                np.abs(x, out=x)
                np.log1p(x, out=x)
                x *= s
                x *= 0.5
                np.tanh(x, out=x)
            else:
                np.divide(x, x.dtype.type(norm), out=x)
        return arrays

    def __repr__(self):
        return f"Normalize({self.norms!r})"


class Chain:
    """Several pre-processes one after the other (each gets the previous one's output)."""

    def __init__(self, *steps):
        self.steps = steps

    def __call__(self, arrays):
        for step in self.steps:
            out = step(arrays)
            arrays = arrays if out is None else out
        return arrays

    def __repr__(self):
        return f"Chain{self.steps!r}"
