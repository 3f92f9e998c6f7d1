"""The DUNE-requirement measurement: per-class AUC and efficiency at 1 % fake rate with a large simulated sample.

The default ``ClassificationExperiment`` run is sized for a few CPU minutes (7 x 300 events); this study is
the dedicated, larger run behind the "efficiency at 1 % fake rate" row (``bench/lartpcdnn_bench.py --only
pid``; results in ``bench/results/lartpcdnn.md``)::

    python -m lartpcdnn.pid_study --events-per-class 2000 --epochs 20 --json pid.json

What it does, step by step:

1. **Simulate and pre-process in memory** (``simulate_events`` + :class:`~lartpcdnn.preprocess.ProcessWireData`
   in worker processes, chunks of ``--chunk`` events, each seeded by
   :func:`~lartpcdnn.simulate.file_seed_sequence`): the raw 2 x 240 x 4096 events are never written (gzip
   writing would double the time), only the processed views (float16) and the truth, one ``.npz`` per chunk
   in ``--cache`` (``$DLKIT_DATA/lartpcdnn/pid-<hash>``). A later run, or a larger one, reuses every chunk
   already made. The images are exactly what the experiment's readers produce with the same
   ``DownSampleFactor``/``ScanWindowSize``/``NormScale``.
2. **Split** each class's events reproducibly (``--seed``) into train / validation / test (70/10/20).
3. **Train** :func:`lartpcdnn.models.build_classifier` (the two-view CNN; batch normalisation on by default)
   with Adam, the learning rate halved when the validation loss stalls, the best epoch (validation loss)
   restored; the model's initialisation is seeded.
4. **Analyse** the test set with :func:`lartpcdnn.analysis.efficiency_table` (one vs rest, the same code as
   the experiment), plus pair AUCs and a truth-level *physics ceiling* (:func:`topology_ceiling`): the
   fraction of each track class that leaves the TPC without interacting, decaying or stopping. Without a
   magnetic field such through-going muons and pions (and, up to a small dE/dx difference, kaons) are the
   same picture, which bounds what any classifier can reach for mu / pi at 1 % fake.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np

from dlkit.datasets import atomic_file, data_root
from lartpcdnn.preprocess import ProcessWireData
from lartpcdnn.simulate import DEFAULT_PARTICLES, VIEW_NAMES, LArSimConfig, file_seed_sequence, simulate_events
from dlkit.protocol import EXIT_OK

log = logging.getLogger("lartpcdnn.pid_study")

__all__ = ["load_processed", "main", "markdown", "run", "simulate_processed", "split_indices", "through_going",
           "topology_ceiling"]

#: Bumped when the content of a chunk file changes.
CHUNK_VERSION = 1
TRACK_CLASSES = ("muon", "pionPlus", "kaonPlus", "proton", "antimuon", "pionMinus", "kaonMinus")


def _cache_dir(path, pre: ProcessWireData, seed: int, chunk: int, config: LArSimConfig) -> Path:
    if path is not None:
        return Path(path)
    root = data_root("lartpcdnn")
    key = json.dumps({"v": CHUNK_VERSION, "pre": repr(pre), "rev": pre.revision, "seed": seed, "chunk": chunk,
                      "sim": config.to_dict()}, sort_keys=True, default=str)
    return root / f"pid-{hashlib.sha1(key.encode()).hexdigest()[:12]}"


def through_going(ev: dict, config: LArSimConfig | None = None) -> np.ndarray:
    """Per event: does the primary leave the TPC (its own path reaches the box boundary along its initial
    direction from its entry point, the lowest-z deposit)? Approximate for scattered tracks (3 % slack)."""
    cfg = config or LArSimConfig()
    truth = ev["truth3d"]
    n = len(ev["Energy"])
    box = np.array([cfg.tpc_x_cm, cfg.tpc_y_cm, cfg.tpc_z_cm])
    p = np.stack([ev["px"], ev["py"], ev["pz"]], axis=1).astype(np.float64)
    d = p / np.maximum(np.linalg.norm(p, axis=1, keepdims=True), 1e-12)
    out = np.zeros(n, bool)
    for i in range(n):
        c = truth.C[i]
        if len(c) == 0:
            continue
        entry = c[np.argmin(c[:, 2])].astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.where(d[i] > 0, (box[:, 1] - entry) / d[i], np.where(d[i] < 0, (box[:, 0] - entry) / d[i], np.inf))
        out[i] = ev["Track_length"][i] >= 0.97 * np.min(t)
    return out


def _chunk_task(args):
    particle, index, n, seed, pre, config = args
    rng = np.random.default_rng(file_seed_sequence(seed, particle, index))
    ev = simulate_events(particle, n, rng, config)
    batch = pre({"features": ev["features"], "Energy": ev["Energy"]})
    out = {v: batch[v] for v in VIEW_NAMES}
    out.update({k: np.asarray(ev[k]) for k in ("Energy", "px", "py", "pz", "pdg", "Track_length")})
    out["through_going"] = through_going(ev, config) if particle in TRACK_CLASSES else np.zeros(n, bool)
    return particle, index, out


def simulate_processed(particles=DEFAULT_PARTICLES, events_per_class: int = 2000, chunk: int = 50, seed: int = 0,
                       pre: ProcessWireData | None = None, config: LArSimConfig | None = None, cache=None,
                       workers: int = 2, progress: bool = True) -> Path:
    """Make (or complete) the chunk files of the study; returns their directory. Chunks are interleaved over
    the classes, so a run stopped early leaves balanced classes."""
    pre = pre or ProcessWireData(16, 128, 50.0)
    config = config or LArSimConfig()
    out = _cache_dir(cache, pre, seed, chunk, config)
    out.mkdir(parents=True, exist_ok=True)
    n_chunks = -(-events_per_class // chunk)
    todo = [(p, i, chunk, seed, pre, config) for i in range(n_chunks) for p in particles
            if not (out / f"{p}_{i}.npz").exists()]
    if not todo:
        return out
    write_chunks(out, todo, _chunk_task, chunk, workers, progress)
    return out


def write_chunks(out: Path, todo: list, task, chunk: int, workers: int, progress: bool = True) -> None:
    """Run ``task`` on each of ``todo`` (in ``workers`` spawned processes) and write each result
    ``(particle, index, arrays)`` atomically as ``<out>/<particle>_<index>.npz``; the timing goes to
    ``last_simulation.json``. Shared by the PID and point studies."""
    log.info("simulating %d chunks of %d events into %s with %d workers", len(todo), chunk, out, workers)
    t0 = time.perf_counter()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(todo) * chunk, unit="ev", desc="simulate+process")

    def save(result):
        particle, index, arrays = result
        with atomic_file(out / f"{particle}_{index}.npz", suffix=".npz") as tmp:  # np.savez wants the suffix
            np.savez(tmp, **arrays)
        if bar is not None:
            bar.update(chunk)

    if workers <= 1:
        for item in todo:
            save(task(item))
    else:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(workers) as pool:
            for result in pool.imap_unordered(task, todo):
                save(result)
    if bar is not None:
        bar.close()
    dt = time.perf_counter() - t0
    log.info("simulated %d events in %.0f s (%.1f events/s)", len(todo) * chunk, dt, len(todo) * chunk / dt)
    (out / "last_simulation.json").write_text(json.dumps({"events": len(todo) * chunk, "seconds": dt,
                                                          "workers": workers}))


def load_processed(directory, particles=DEFAULT_PARTICLES, events_per_class: int = 2000, chunk: int = 50) -> dict:
    """Concatenate the first ``events_per_class`` events of each class: views, truth and the class index."""
    directory = Path(directory)
    parts = {}
    for label, p in enumerate(particles):
        files = [directory / f"{p}_{i}.npz" for i in range(-(-events_per_class // chunk))]
        arrays = [dict(np.load(f)) for f in files]
        merged = {k: np.concatenate([a[k] for a in arrays])[:events_per_class] for k in arrays[0]}
        merged["label"] = np.full(len(merged["Energy"]), label, np.int64)
        parts[p] = merged
    return {k: np.concatenate([parts[p][k] for p in particles]) for k in parts[particles[0]]}


def split_indices(labels, fractions=(0.7, 0.1, 0.2), seed: int = 0):
    """Per class, a seeded permutation cut into train / validation / test index arrays."""
    rng = np.random.default_rng(seed)
    out = [[], [], []]
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        a = round(fractions[0] * len(idx))
        b = a + round(fractions[1] * len(idx))
        for j, part in enumerate((idx[:a], idx[a:b], idx[b:])):
            out[j].append(part)
    return [np.sort(np.concatenate(o)) for o in out]


def topology_ceiling(labels, through, class_names, fake_rate: float = 0.01) -> dict:
    """Truth-level bound on the efficiency at ``fake_rate`` from indistinguishable topologies.

    Without a magnetic field a muon and a charged pion that both cross the TPC without interacting,
    decaying or stopping leave the same minimum-ionising track (their dE/dx at these momenta differs by a few
    per cent, less than the Landau width; multiple scattering differs as little). Treat those two event
    populations as identical: a selection that keeps a fraction ``e`` of the through-going signal keeps the
    same fraction of the through-going events of the confusable class, which must stay below ``fake_rate``
    of the whole background. Bound: ``eff <= (1 - f_s) + f_s * min(1, fake_rate * N_bkg / (f_b * N_b))``
    with ``f`` the through-going fractions, for the pair muon / pionPlus (in both directions). Returns
    ``{class: {"through_going": f, "bound": eff_max}}`` for the track classes present.
    """
    labels = np.asarray(labels)
    through = np.asarray(through, bool)
    names = list(class_names)
    frac = {n: float(through[labels == i].mean()) for i, n in enumerate(names) if n in TRACK_CLASSES}
    out = {n: {"through_going": f} for n, f in frac.items()}
    for sig, bkg in (("muon", "pionPlus"), ("pionPlus", "muon")):
        if sig in names and bkg in names:
            n_bkg_total = int(np.sum(labels != names.index(sig)))
            n_b = int(np.sum(labels == names.index(bkg)))
            confusable = frac[bkg] * n_b
            keep = min(1.0, fake_rate * n_bkg_total / confusable) if confusable else 1.0
            out[sig]["bound"] = (1.0 - frac[sig]) + frac[sig] * keep
    return out


def batches(x, y, idx, batch, shuffle, seed, flip=False):
    """The events ``idx`` of the in-memory views ``x`` (float16) and one-hot ``y`` as a
    ``keras.utils.PyDataset`` of ``({view: float32}, y)`` batches, numpy only, so it feeds every Keras backend.

    ``shuffle``: a new seeded order every epoch; ``flip``: each event's drift direction (ticks, both views
    together) mirrored with probability 1/2, seeded per epoch and batch.
    """
    import keras

    class Batches(keras.utils.PyDataset):
        def __init__(self):
            super().__init__()
            self.epoch = 0
            self.order = self._order()

        def _order(self):
            idx_ = np.asarray(idx)
            return np.random.default_rng([seed, self.epoch]).permutation(idx_) if shuffle else idx_

        def __len__(self):
            return (len(idx) + batch - 1) // batch

        def __getitem__(self, i):
            rows = self.order[i * batch:(i + 1) * batch]
            inputs = {k: x[k][rows].astype(np.float32) for k in VIEW_NAMES}
            if flip:
                do = np.random.default_rng([seed, self.epoch, i, 1]).random(len(rows)) < 0.5
                for k in VIEW_NAMES:
                    inputs[k][do] = inputs[k][do][:, :, ::-1]
            return inputs, y[rows]

        def on_epoch_end(self):
            self.epoch += 1
            self.order = self._order()

    return Batches()


def run(particles=DEFAULT_PARTICLES, events_per_class: int = 2000, epochs: int = 20, batch: int = 64,
        lr: float = 1e-3, filters: int = 8, depth: int = 4, width: int = 64, batch_norm: bool = True,
        dropout: float = 0.2, factor: int = 16, window: int = 128, scale: float = 50.0, seed: int = 0,
        chunk: int = 50, workers: int = 2, cache=None, flip: bool = False, fake_rate: float = 0.01,
        progress: bool = True, train_seed: int | None = None) -> dict:
    """The whole study; returns a JSON-able dict of the settings, timings and per-class results.

    ``seed`` seeds the simulation (and so the chunk cache); ``train_seed`` (default: ``seed``) the split, the
    model's initialisation and the batch order, so repeated trainings on the same events show the spread."""
    train_seed = seed if train_seed is None else train_seed
    t_start = time.perf_counter()
    particles = list(particles)
    pre = ProcessWireData(factor, window, scale)
    directory = simulate_processed(particles, events_per_class, chunk, seed, pre, cache=cache, workers=workers,
                                   progress=progress)
    t_sim = time.perf_counter() - t_start
    data = load_processed(directory, particles, events_per_class, chunk)
    labels = data["label"]
    train, val, test = split_indices(labels, seed=train_seed)

    import keras

    from lartpcdnn.analysis import efficiency_table
    from lartpcdnn.models import build_classifier

    keras.utils.set_random_seed(train_seed)
    y = keras.utils.to_categorical(labels, len(particles)).astype(np.float32)
    shapes = {k: data[k].shape[1:] for k in VIEW_NAMES}
    model = build_classifier(shapes, len(particles), Model="CNN", Filters=filters, Depth=depth, Width=width,
                             BatchNormalization=batch_norm, Dropout=dropout)
    model.compile(optimizer=keras.optimizers.Adam(lr), loss="categorical_crossentropy", metrics=["accuracy"])
    callbacks = [keras.callbacks.ReduceLROnPlateau("val_loss", factor=0.5, patience=2, min_lr=lr / 32),
                 keras.callbacks.EarlyStopping("val_loss", patience=5, restore_best_weights=True)]
    t0 = time.perf_counter()
    history = model.fit(batches(data, y, train, batch, True, train_seed, flip), epochs=epochs, shuffle=False,
                        validation_data=batches(data, y, val, 256, False, seed), callbacks=callbacks,
                        verbose=2 if progress else 0)
    t_train = time.perf_counter() - t0
    scores = model.predict(batches(data, y, test, 256, False, seed), verbose=0)
    table, _, metadata = efficiency_table(y[test], scores, particles, fake_rate)
    from sklearn.metrics import roc_auc_score

    pairs = {}
    for a, b in (("electron", "photon"), ("photon", "pion0"), ("muon", "pionPlus"), ("kaonPlus", "pionPlus"),
                 ("proton", "pionPlus")):
        if a in particles and b in particles:
            ia, ib = particles.index(a), particles.index(b)
            sel = (labels[test] == ia) | (labels[test] == ib)
            s = scores[sel, ia] / np.maximum(scores[sel, ia] + scores[sel, ib], 1e-12)
            pairs[f"{a}_{b}_AUC"] = float(roc_auc_score(labels[test][sel] == ia, s))
    ceiling = topology_ceiling(labels[test], data["through_going"][test], particles, fake_rate)
    tag = f"Eff{fake_rate * 100:g}pctFake"
    hist = {k: [float(v) for v in vals] for k, vals in history.history.items()}
    return {
        "settings": {"particles": particles, "events_per_class": events_per_class, "epochs": epochs,
                     "batch": batch, "lr": lr, "filters": filters, "depth": depth, "width": width,
                     "batch_norm": batch_norm, "dropout": dropout, "preprocess": repr(pre), "seed": seed,
                     "train_seed": train_seed,
                     "flip": flip, "fake_rate": fake_rate, "parameters": int(model.count_params())},
        "events": {"train": len(train), "validation": len(val), "test": len(test)},
        "seconds": {"simulation": t_sim, "training": t_train, "total": time.perf_counter() - t_start},
        "epochs_run": len(hist.get("loss", [])),
        "best_epoch": int(np.argmin(hist["val_loss"])) + 1 if "val_loss" in hist else None,
        "history": hist,
        "test_accuracy": float(np.mean(np.argmax(scores, 1) == labels[test])),
        "classes": {n: {"AUC": metadata[f"{n}_AUC"], tag: metadata[f"{n}_{tag}"],
                        f"{tag}_lower": float(table.loc[n, "efficiency lower"]),  # Clopper-Pearson 68.3 %
                        f"{tag}_upper": float(table.loc[n, "efficiency upper"]),
                        "n_signal": int(np.sum(labels[test] == i)), **ceiling.get(n, {})}
                    for i, n in enumerate(particles)},
        "pairs": pairs,
        "table": table.to_dict(),
    }


def markdown(result: dict) -> str:
    """The per-class table of a :func:`run` result."""
    fr = result["settings"]["fake_rate"]
    tag = f"Eff{fr * 100:g}pctFake"
    lines = [f"| class | AUC | efficiency at {fr:.0%} fake | through-going (truth) | topology bound |",
             "|---|---|---|---|---|"]
    for n, c in result["classes"].items():
        tg = f"{c['through_going']:.2f}" if "through_going" in c else "-"
        bound = f"{c['bound']:.2f}" if "bound" in c else "-"
        eff = f"{c[tag]:.3f}"
        if f"{tag}_lower" in c:  # the Clopper-Pearson 68.3 % interval (results saved before it had none)
            eff += f" [{c[f'{tag}_lower']:.3f}, {c[f'{tag}_upper']:.3f}]"
        lines.append(f"| {n} | {c['AUC']:.3f} | {eff} | {tg} | {bound} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events-per-class", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--filters", type=int, default=8)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--no-batch-norm", action="store_true")
    parser.add_argument("--dropout", type=float, default=0.2)
    parser.add_argument("--factor", type=int, default=16, help="DownSampleFactor (ticks summed)")
    parser.add_argument("--window", type=int, default=128, help="ScanWindowSize (down-sampled ticks)")
    parser.add_argument("--flip", action="store_true", help="augment: mirror the drift direction")
    parser.add_argument("--particles", default=",".join(DEFAULT_PARTICLES))
    parser.add_argument("--seed", type=int, default=0, help="simulation seed")
    parser.add_argument("--train-seed", type=int, default=None, help="split/initialisation seed (default --seed)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cache", default=None, help="chunk directory (default $DLKIT_DATA/lartpcdnn/pid-<hash>)")
    parser.add_argument("--simulate-only", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    particles = args.particles.split(",")
    if args.simulate_only:
        print(simulate_processed(particles, args.events_per_class, 50, args.seed,
                                 ProcessWireData(args.factor, args.window, 50.0), cache=args.cache,
                                 workers=args.workers))
        return EXIT_OK
    result = run(particles, args.events_per_class, args.epochs, args.batch, args.lr, args.filters, args.depth,
                 args.width, not args.no_batch_norm, args.dropout, args.factor, args.window, seed=args.seed,
                 workers=args.workers, cache=args.cache, flip=args.flip,
                 train_seed=args.train_seed)
    print(markdown(result))
    print(f"test accuracy {result['test_accuracy']:.3f}; pairs " +
          ", ".join(f"{k} {v:.3f}" for k, v in result["pairs"].items()))
    print(f"events {result['events']}; seconds {json.dumps({k: round(v) for k, v in result['seconds'].items()})}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
