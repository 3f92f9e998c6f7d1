"""On-the-fly flips and rotations of calorimeter images, run in the generator's reader processes.

A calorimeter with a square transverse grid centred on the beam looks the same after the symmetries of the
square: the four rotations by 90 degrees and their mirror images (the dihedral group D4, 8 elements). Seed
001 (CALICE AHCAL) got "x12 the images" from 4 rotations x 3 flip states; 4 of those 12 coincide, so there are
8 distinct images per event. Each event gets one transform drawn at random, the same for every image of the
event (ECAL and HCAL, whatever their grid sizes), so the geometry stays consistent. Energies only move
between cells: every layer's sum, hence the total energy, is unchanged.

Valid when the single-particle direction is symmetric under these transforms (impact point and angles
spread symmetrically around the grid centre, as in the LCD data and calodnn's simulator); per-cell
calibration maps and dead cells are not symmetric, which a per-channel calibration would learn. Flips
alone work for rectangular grids too; rotations need square ones (checked).

Pass it as (part of) the generator's ``preprocess``; the readers seed ``np.random`` per batch, so the flips
are reproducible and differ between epochs (run without the on-disk cache and preload, which would keep
one draw)::

    from dlkit.augment import FlipRotate
    from dlkit.generators.preprocess import Chain
    gen = MultiClassGenerator(samples, 128, preprocess=Chain(norm, FlipRotate(("ECAL", "HCAL"))), cache=False)

This module imports numpy only (readers unpickle it; Keras must not load there).
"""

from __future__ import annotations

import numpy as np

__all__ = ["FlipRotate", "TRANSFORMS", "apply_transform"]

#: The 8 elements of D4 as (transpose x<->y first, then flip x, then flip y). Index 0 is the identity;
#: 0-3 are the flips (no transpose), the transposing ones include the 90/270 degree rotations.
TRANSFORMS = tuple((t, fx, fy) for t in (False, True) for fx in (False, True) for fy in (False, True))
_MODES = {"all": tuple(range(8)), "flips": (0, 1, 2, 3), "rotations": (0, 3, 5, 6)}


def apply_transform(images: np.ndarray, transform: int, x_axis: int = 1) -> np.ndarray:
    """One D4 element (index into :data:`TRANSFORMS`) applied to images with x, y at ``x_axis``, ``x_axis+1``.

    Returns a view when possible. ``transform`` 5 and 6 are the rotations by +-90 degrees, 3 by 180.
    """
    transpose, flip_x, flip_y = TRANSFORMS[int(transform)]
    y_axis = x_axis + 1
    out = images
    if transpose:
        out = np.swapaxes(out, x_axis, y_axis)
    if flip_x:
        out = np.flip(out, axis=x_axis)
    if flip_y:
        out = np.flip(out, axis=y_axis)
    return out


class FlipRotate:
    """Picklable pre-process: a random symmetry of the square per event, the same for all listed images.

    Parameters
    ----------
    keys : names of the image arrays, each ``(N, X, Y, ...)``: x and y on axes 1 and 2.
    mode : ``"all"`` (the 8 elements of D4), ``"flips"`` (identity, flip x, flip y, both: valid for
        rectangular grids) or ``"rotations"`` (0, 90, 180, 270 degrees).
    seed : None uses ``np.random`` (seeded per batch by the generator's readers); an int gives a private
        generator (for use outside the generator).
    """

    def __init__(self, keys=("ECAL", "HCAL"), mode: str = "all", seed: int | None = None):
        if isinstance(keys, str):
            keys = (keys,)
        if mode not in _MODES:
            raise ValueError(f"FlipRotate mode must be one of {sorted(_MODES)}, got {mode!r}")
        self.keys = tuple(keys)
        self.mode = mode
        self.seed = seed
        self._rng = None if seed is None else np.random.default_rng(seed)

    @property
    def n_transforms(self) -> int:
        """Distinct images per event this augmentation can make (8 for "all")."""
        return len(_MODES[self.mode])

    def draw(self, n: int) -> np.ndarray:
        """Transform indices for ``n`` events."""
        choices = np.asarray(_MODES[self.mode])
        if self._rng is not None:
            return choices[self._rng.integers(0, len(choices), n)]
        return choices[np.random.randint(0, len(choices), n)]

    def __call__(self, arrays, transforms=None):
        missing = [k for k in self.keys if k not in arrays]
        if missing:
            raise KeyError(f"FlipRotate: no array {missing[0]!r} in the batch (has {sorted(arrays)})")
        n = len(arrays[self.keys[0]])
        for k in self.keys:
            x = arrays[k]
            if x.ndim < 3 or len(x) != n:
                raise ValueError(f"FlipRotate: {k!r} has shape {x.shape}; expected (N, X, Y, ...) with N={n}")
            if self.mode != "flips" and x.shape[1] != x.shape[2]:
                raise ValueError(f"FlipRotate: {k!r} has a {x.shape[1]}x{x.shape[2]} transverse grid; rotations "
                                 "need a square one (use mode='flips')")
        transforms = self.draw(n) if transforms is None else np.asarray(transforms).reshape(-1)
        if len(transforms) != n:
            raise ValueError(f"FlipRotate: {len(transforms)} transforms for {n} events")
        groups = [(t, np.flatnonzero(transforms == t)) for t in np.unique(transforms) if t != 0]
        for k in self.keys:
            x = arrays[k]
            for t, rows in groups:
                # fancy indexing copies the rows, so writing the transformed copy back is safe in place
                x[rows] = apply_transform(x[rows], t)
        return arrays

    def __repr__(self):
        return f"FlipRotate({self.keys!r}, mode={self.mode!r}, seed={self.seed!r})"
