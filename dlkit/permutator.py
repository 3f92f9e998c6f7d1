"""Hyperparameter grids: ``Params`` (dict of lists) -> an indexed list of scan points.

The order is DLKit's, so ``-s N`` names the same point it always did: keys sorted (plain code-point
sort, so ``Depth, Width, decay, lr, optimizer``), the last key varying fastest.

>>> scan = Permutator({"Width": [32, 64], "Depth": [1, 2], "lr": [0.1, 0.01]})
>>> len(scan), scan[1]
(8, {'Depth': 1, 'Width': 32, 'lr': 0.01})
>>> scan.index_of({"Depth": 1, "Width": 32, "lr": 0.01})
1
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from collections.abc import Mapping

from dlkit.config import ConfigError, _check_params

__all__ = ["Permutator", "point_hash", "scan_index_from_env", "SCAN_INDEX_ENV_VARS"]

#: Environment variables of batch-system job arrays that select the scan point when ``-s`` is absent, in the
#: order they are tried: Slurm, Torque (``PBS_ARRAYID``), PBS Pro (``PBS_ARRAY_INDEX``).
SCAN_INDEX_ENV_VARS = ("SLURM_ARRAY_TASK_ID", "PBS_ARRAYID", "PBS_ARRAY_INDEX")


def _canonical(value):
    """A JSON-stable form of a scan value (numpy scalars and tuples included)."""
    if hasattr(value, "item") and callable(value.item):
        value = value.item()
    if isinstance(value, tuple):
        return [_canonical(v) for v in value]
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in value.items()}
    return value


def point_hash(point: Mapping, length: int = 8) -> str:
    """A stable short hash of a scan point: its run identity, independent of dict order and process."""
    text = json.dumps(_canonical(dict(point)), sort_keys=True, default=repr)
    return hashlib.sha1(text.encode()).hexdigest()[:length]


def scan_index_from_env(environ: Mapping[str, str] | None = None) -> int | None:
    """The scan index from a Slurm, Torque or PBS Pro job array (the first of :data:`SCAN_INDEX_ENV_VARS`
    that is set and not empty), or None if none is."""
    environ = os.environ if environ is None else environ
    for name in SCAN_INDEX_ENV_VARS:
        raw = environ.get(name)
        if raw is None or raw == "":
            continue
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(f"environment variable {name}={raw!r} is not an integer scan index") from None
    return None


class Permutator:
    """The grid of a ``Params`` dict, in DLKit order.

    Supports ``len()``, indexing (``scan[N]`` -> dict), iteration, :meth:`index_of` and
    :meth:`hash`. ``Permutations()`` returns the whole list, as DLKit's did.
    """

    def __init__(self, params: Mapping[str, list]):
        self.params = _check_params(params, "Params")
        self.keys = sorted(self.params)
        self._sizes = [len(self.params[k]) for k in self.keys]

    def __len__(self) -> int:
        n = 1
        for size in self._sizes:
            n *= size
        return n

    def __getitem__(self, index: int) -> dict:
        if isinstance(index, bool) or not isinstance(index, int):
            try:
                index = int(index)
            except (TypeError, ValueError):
                raise ConfigError(f"scan index {index!r} is not an integer") from None
        n = len(self)
        if not 0 <= index < n:
            raise ConfigError(
                f"scan index {index} is out of range: this scan has {n} points, valid -s values are 0..{n - 1}"
            )
        # Mixed-radix digits, the last key the least significant (varies fastest).
        point = {}
        for key, size in zip(reversed(self.keys), reversed(self._sizes)):
            index, digit = divmod(index, size)
            point[key] = self.params[key][digit]
        return {key: point[key] for key in self.keys}

    def __iter__(self):
        for values in itertools.product(*(self.params[k] for k in self.keys)):
            yield dict(zip(self.keys, values))

    def Permutations(self) -> list[dict]:  # noqa: N802 - DLKit's name
        return list(self)

    def index_of(self, point: Mapping) -> int:
        """The index of ``point`` (a dict with exactly the scanned keys) in the grid."""
        if set(point) != set(self.keys):
            raise ConfigError(f"scan point keys {sorted(point)} differ from the scanned keys {self.keys}")
        index = 0
        for key, size in zip(self.keys, self._sizes):
            values = self.params[key]
            matches = [i for i, v in enumerate(values) if _canonical(v) == _canonical(point[key])]
            if not matches:
                raise ConfigError(f"scan point value {key}={point[key]!r} is not in the grid {values!r}")
            index = index * size + matches[0]
        return index

    def hash(self, index: int) -> str:
        """The stable short hash of point ``index`` (see :func:`point_hash`)."""
        return point_hash(self[index])

    def select(self, index: int | None = None, environ: Mapping[str, str] | None = None) -> tuple[int, dict]:
        """Pick the point to run: ``index`` (``-s``) if given, else a Slurm/PBS array index, else 0."""
        if index is None:
            index = scan_index_from_env(environ)
        if index is None:
            index = 0
        return index, self[index]

    def __repr__(self) -> str:
        return f"Permutator({len(self)} points over {self.keys})"
