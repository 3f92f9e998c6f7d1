"""Byte layouts shared by the consumer, the reader processes and the cache file.

A block holds ``rows`` events of several arrays, array after array (each region aligned), so that a
batch slot, the on-disk cache and a ``read_all`` destination are all described the same way and a
region's rows can be filled with one ``preadv`` scatter. Alignment of 64 bytes lets TensorFlow wrap the
numpy views without copying.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ALIGN = 64


def align_up(n: int, a: int) -> int:
    return (int(n) + a - 1) // a * a


@dataclass(frozen=True)
class ArraySpec:
    """One array of a batch: name, dtype string (numpy ``dtype.str``) and per-event shape."""

    name: str
    dtype: str
    shape: tuple

    @property
    def np_dtype(self) -> np.dtype:
        return np.dtype(self.dtype)

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.np_dtype.itemsize

    def describe(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


@dataclass(frozen=True)
class BlockLayout:
    """``rows`` events of each array in ``arrays``, region ``i`` starting at byte ``offsets[i]``."""

    arrays: tuple
    rows: int
    offsets: tuple
    size: int

    @classmethod
    def build(cls, arrays, rows: int, align: int = ALIGN, base: int = 0) -> BlockLayout:
        offsets, pos = [], align_up(base, align)
        for a in arrays:
            offsets.append(pos)
            pos = align_up(pos + a.row_bytes * rows, align)
        return cls(tuple(arrays), int(rows), tuple(offsets), max(pos, align))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.arrays)

    def index(self, name: str) -> int:
        return self.names.index(name)

    def spec(self, name: str) -> ArraySpec:
        return self.arrays[self.index(name)]

    def views(self, buf, n: int | None = None, row0: int = 0) -> dict[str, np.ndarray]:
        """Numpy views of rows [row0, row0+n) of every array on ``buf`` (a writable buffer or uint8 array).

        All views derive from one uint8 array over ``buf``, so one object's lifetime (that array's
        ``base``) tells whether any of them, or anything derived from them, is still alive.
        """
        n = self.rows - row0 if n is None else n
        u8 = buf if isinstance(buf, np.ndarray) else np.frombuffer(buf, dtype=np.uint8)
        out = {}
        for a, off in zip(self.arrays, self.offsets):
            start = off + row0 * a.row_bytes
            arr = u8[start : start + n * a.row_bytes].view(a.np_dtype)
            out[a.name] = arr.reshape((n,) + tuple(a.shape))
        return out
