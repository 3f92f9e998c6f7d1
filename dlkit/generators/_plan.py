"""Epoch planning: which contiguous runs of which files make up each batch. Pure numpy, deterministic.

Every event has a *canonical* position: entries in specification order, selected events in file order.
An epoch plan cuts each class's events into chunks of ``chunk_size`` consecutive events, orders the
chunks (file order shuffled, chunks shuffled globally or within a window of batches), takes each
class's share of every batch from that stream, and records a batch as runs
``(entry, position, count, offset in batch)``. Within a batch the rows are permuted by the reader
(seeded per batch), which costs nothing: rows are scattered by ``preadv`` as they are read.

Per-batch class counts come from merging the classes' events evenly (event ``i`` of class ``k`` at
"time" ``(i + 0.5) / u_k``, ties by class index): counts are as even as possible, exactly ``B * r_k``
whenever that is an integer, and over an epoch each class contributes exactly its ``u_k`` events.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

RUN_FIELDS = 4  # entry, pos, count, off


def _cut(starts: np.ndarray, cuts: np.ndarray, total: int):
    """Segments of [0, total) split at both ``starts`` (pieces) and ``cuts`` (batches)."""
    b = np.union1d(starts[starts < total], cuts[cuts <= total])
    b = np.union1d(b, [0, total])
    seg_start, seg_end = b[:-1], b[1:]
    keep = seg_end > seg_start
    seg_start, seg_end = seg_start[keep], seg_end[keep]
    piece = np.searchsorted(starts, seg_start, side="right") - 1
    batch = np.searchsorted(cuts, seg_start, side="right") - 1
    return seg_start, seg_end, piece, batch


@dataclass
class EpochPlan:
    """Runs of every batch of one epoch, sorted by (batch, offset); ``ptr[b]:ptr[b+1]`` are batch b's."""

    epoch: int
    runs: np.ndarray  # (m, 4) int64
    ptr: np.ndarray  # (n_batches + 1,)

    def batch_runs(self, b: int) -> np.ndarray:
        return self.runs[self.ptr[b] : self.ptr[b + 1]]


def merge_runs(runs: np.ndarray) -> np.ndarray:
    """Merge runs that continue each other in file and in batch (fewer syscalls when unshuffled)."""
    if len(runs) < 2:
        return runs
    cont = (
        (runs[1:, 0] == runs[:-1, 0])
        & (runs[1:, 1] == runs[:-1, 1] + runs[:-1, 2])
        & (runs[1:, 3] == runs[:-1, 3] + runs[:-1, 2])
    )
    if not cont.any():
        return runs
    head = np.concatenate([[True], ~cont])
    group = np.cumsum(head) - 1
    out = runs[head].copy()
    out[:, 2] = np.bincount(group, weights=runs[:, 2]).astype(np.int64)
    return out


class Planner:
    """Batch composition for every epoch, from entry sizes and classes; see the module docstring."""

    def __init__(
        self,
        entry_class,
        entry_n,
        n_classes: int,
        batch_size: int,
        *,
        rates=None,
        max_events: int | None = None,
        last_batch: str = "keep",
        shuffle: bool = True,
        chunk_size: int = 64,
        shuffle_window: int | None = None,
        seed: int = 0,
    ):
        self.entry_class = np.asarray(entry_class, dtype=np.int64)
        self.entry_n = np.asarray(entry_n, dtype=np.int64)
        self.entry_base = np.concatenate([[0], np.cumsum(self.entry_n)]).astype(np.int64)
        self.n_classes = int(n_classes)
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.chunk_size = max(1, int(chunk_size))
        self.shuffle_window = None if shuffle_window is None else max(1, int(shuffle_window))
        self.seed = int(seed)
        if last_batch not in ("keep", "drop"):
            raise ValueError(f"last_batch must be 'keep' or 'drop', got {last_batch!r}")
        self.last_batch = last_batch
        self.available = np.bincount(self.entry_class, weights=self.entry_n, minlength=self.n_classes).astype(
            np.int64
        )
        self.used = self._used(rates, max_events)
        self._schedule()

    @property
    def n_canonical(self) -> int:
        return int(self.entry_base[-1])

    def _used(self, rates, max_events) -> np.ndarray:
        avail = self.available
        if rates is None:
            used = avail.copy()
        else:
            r = np.asarray(rates, dtype=np.float64)
            if r.shape != (self.n_classes,) or (r < 0).any() or r.sum() <= 0:
                raise ValueError(f"rates must be {self.n_classes} non-negative numbers, got {rates!r}")
            r = r / r.sum()
            pos = r > 0
            if (avail[pos] == 0).any():
                raise ValueError("a class with a non-zero rate has no events")
            t = np.min(avail[pos] / r[pos])
            used = np.where(pos, np.floor(t * r + 1e-9), 0).astype(np.int64)
            used = np.minimum(used, avail)
        total = int(used.sum())
        if max_events is not None and total > int(max_events):
            m = int(max_events)
            exact = used * (m / total)
            scaled = np.floor(exact).astype(np.int64)
            rest = m - int(scaled.sum())
            if rest > 0:
                order = np.argsort(-(exact - scaled), kind="stable")[:rest]
                scaled[order] += 1
            used = np.minimum(scaled, used)
        return used

    def _schedule(self):
        K, B = self.n_classes, self.batch_size
        U = int(self.used.sum())
        if self.last_batch == "drop":
            nb, total = U // B, (U // B) * B
        else:
            nb, total = math.ceil(U / B), U
        if nb == 0:
            raise ValueError(
                f"{U} events selected: not enough for one batch of {B}"
                + (" (last_batch='drop')" if U else "")
            )
        times = np.concatenate([(np.arange(u) + 0.5) / u for u in self.used if u > 0])
        labels = np.concatenate([np.full(u, k, dtype=np.int64) for k, u in enumerate(self.used) if u > 0])
        lab = labels[np.argsort(times, kind="stable")][:total]
        bidx = np.arange(total, dtype=np.int64) // B
        self.batch_counts = np.bincount(bidx * K + lab, minlength=nb * K).reshape(nb, K).astype(np.int64)
        self.n_batches = nb
        self.batch_sizes = self.batch_counts.sum(axis=1)
        self.events_per_epoch = int(total)
        self.class_cum = np.vstack([np.zeros((1, K), np.int64), np.cumsum(self.batch_counts, axis=0)])
        self.class_off = np.hstack(
            [np.zeros((nb, 1), np.int64), np.cumsum(self.batch_counts, axis=1)[:, :-1]]
        )

    def perm_key(self, epoch: int, batch: int):
        """Seed of the within-batch row permutation (None when unshuffled)."""
        return (self.seed, int(epoch), int(batch), 7) if self.shuffle else None

    def _class_stream(self, k: int, rng):
        """Chunks of class k in this epoch's order: (entry, pos, len, stream start)."""
        ents = np.flatnonzero((self.entry_class == k) & (self.entry_n > 0))
        cs = self.chunk_size
        n = self.entry_n[ents]
        reps = -(-n // cs)
        c_entry = np.repeat(ents, reps)
        first = np.concatenate([[0], np.cumsum(reps)[:-1]])
        c_idx = np.arange(int(reps.sum()), dtype=np.int64) - np.repeat(first, reps)
        c_pos = c_idx * cs
        c_len = np.minimum(cs, self.entry_n[c_entry] - c_pos)
        if self.shuffle and len(c_entry):
            rank = np.empty(len(ents), np.int64)
            rank[rng.permutation(len(ents))] = np.arange(len(ents))
            entry_rank = np.zeros(len(self.entry_n), np.int64)
            entry_rank[ents] = rank
            if self.shuffle_window is None:
                order = rng.permutation(len(c_entry))
            else:
                fm = np.lexsort((rng.random(len(c_entry)), entry_rank[c_entry]))
                lens = c_len[fm]
                starts = np.cumsum(lens) - lens
                per_batch = max(1, round(float(self.batch_size * self.used[k] / max(1, self.used.sum()))))
                group = starts // (self.shuffle_window * per_batch)
                order = fm[np.lexsort((rng.random(len(fm)), group))]
            c_entry, c_pos, c_len = c_entry[order], c_pos[order], c_len[order]
        c_start = np.cumsum(c_len) - c_len
        return c_entry, c_pos, c_len, c_start

    def epoch_plan(self, epoch: int) -> EpochPlan:
        parts = []
        for k in range(self.n_classes):
            cuts = self.class_cum[:, k]
            total = int(cuts[-1])
            if total == 0:
                continue
            rng = np.random.default_rng([self.seed, int(epoch), k, 3])
            c_entry, c_pos, _, c_start = self._class_stream(k, rng)
            s0, s1, piece, batch = _cut(c_start, cuts, total)
            runs = np.empty((len(s0), RUN_FIELDS), np.int64)
            runs[:, 0] = c_entry[piece]
            runs[:, 1] = c_pos[piece] + (s0 - c_start[piece])
            runs[:, 2] = s1 - s0
            runs[:, 3] = self.class_off[batch, k] + (s0 - cuts[batch])
            parts.append((batch, runs))
        batch = np.concatenate([p[0] for p in parts])
        runs = np.concatenate([p[1] for p in parts])
        order = np.lexsort((runs[:, 3], batch))
        batch, runs = batch[order], runs[order]
        ptr = np.searchsorted(batch, np.arange(self.n_batches + 1))
        # merge continuing runs within each batch
        merged, mptr = [], [0]
        for b in range(self.n_batches):
            r = merge_runs(runs[ptr[b] : ptr[b + 1]])
            merged.append(r)
            mptr.append(mptr[-1] + len(r))
        return EpochPlan(int(epoch), np.concatenate(merged) if merged else runs, np.asarray(mptr, np.int64))

    def canonical_runs(self, a: int, z: int) -> np.ndarray:
        """Runs covering canonical positions [a, z), offsets counted from a."""
        base = self.entry_base
        s0, s1, piece, _ = _cut(base[:-1].copy(), np.array([a], np.int64), z)
        keep = s0 >= a
        s0, s1, piece = s0[keep], s1[keep], piece[keep]
        runs = np.empty((len(s0), RUN_FIELDS), np.int64)
        runs[:, 0] = piece
        runs[:, 1] = s0 - base[piece]
        runs[:, 2] = s1 - s0
        runs[:, 3] = s0 - a
        return runs[runs[:, 2] > 0]

    def canonical_tasks(self, size: int):
        """(row0, runs) tasks of at most ``size`` events covering every canonical position in order."""
        n = self.n_canonical
        return [(a, self.canonical_runs(a, min(a + size, n))) for a in range(0, n, size)]

    def canonical_start(self, runs: np.ndarray) -> np.ndarray:
        return self.entry_base[runs[:, 0]] + runs[:, 1]


def mask_runs(mask: np.ndarray):
    """(start, end) pairs of the True stretches of a boolean array."""
    m = np.concatenate([[False], mask.astype(bool), [False]])
    d = np.diff(m.astype(np.int8))
    return np.flatnonzero(d == 1), np.flatnonzero(d == -1)
