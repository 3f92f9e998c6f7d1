"""The point models on the 3D charge deposits next to the two-view CNN, on the same simulated events.

    python -m lartpcdnn.point_study                       # defaults: 7 x 400 events, 12 epochs (~10 min, 2 cores)
    python -m lartpcdnn.point_study --events-per-class 1000 --epochs 20 --csv points.csv

From Python (``bench/point_tables.py``)::

    from lartpcdnn.point_study import compare_models
    table = compare_models(events_per_class=400, epochs=12, seed=0)   # one row per model

What it does:

1. **Simulate once, both inputs** (:func:`simulate_both`, ``simulate_events`` in worker processes, chunks
   seeded by :func:`~lartpcdnn.simulate.file_seed_sequence`, cached in ``$DLKIT_DATA/lartpcdnn/points-<hash>``):
   per event the two wire-plane views processed as the experiment's readers process them
   (:class:`~lartpcdnn.preprocess.ProcessWireData`, ``DownSampleFactor`` 16, ``ScanWindowSize`` 128) and the
   event's deposits (``dep_x, dep_y, dep_z, dep_q``, the points of ``truth3d``) sorted by ``dep_q``, the most
   energetic first, as :class:`dlkit.generators.Collection` serves them; :func:`~lartpcdnn.preprocess.
   scale_deposits` scales them as the experiment's readers do. So every model sees the same events, split the
   same way (:func:`lartpcdnn.pid_study.split_indices`, 70/10/20 per class).
2. **Train** each model for the same number of epochs, with the same optimizer (Adam, 1e-3 unless ``lr`` /
   ``point_lr`` say otherwise), batch size, learning-rate schedule (halved when the validation loss stalls),
   drift-direction mirroring and best-epoch restore (by the validation loss); the initialisation is seeded.
   The CNN is :func:`lartpcdnn.models.build_classifier` (batch normalisation, as in :mod:`lartpcdnn.pid_study`),
   the point models
   :func:`lartpcdnn.models.build_point_classifier` with the experiment's config entries (:data:`POINT_CONFIGS`).
3. **Analyse** the test set with :func:`lartpcdnn.analysis.efficiency_table` (the experiment's code): per class
   the efficiency at 1 % fake rate (one vs rest) with its Clopper-Pearson 68.3 % interval, and the AUC.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np

from dlkit.datasets import data_root
from dlkit.protocol import EXIT_OK
from lartpcdnn.pid_study import split_indices, write_chunks
from lartpcdnn.preprocess import TPC_CENTRE, ProcessWireData, scale_deposits
from lartpcdnn.simulate import DEFAULT_PARTICLES, VIEW_NAMES, LArSimConfig, file_seed_sequence, simulate_events

log = logging.getLogger("lartpcdnn.point_study")

__all__ = ["MODELS", "POINT_CONFIGS", "compare_models", "load_both", "main", "markdown", "simulate_both"]

#: Bumped when the content of a chunk file changes.
CHUNK_VERSION = 1
#: The models :func:`compare_models` trains by default, by their ``Model`` config value.
MODELS = ("CNN", "DeepSets", "ParticleNet", "Transformer")
#: Each point model's config entries in the study (over :data:`dlkit.models.CONFIG_DEFAULTS`): sized so that on
#: 2 CPU cores each trains in about the CNN's time per epoch or less (measured: README, "Point models").
POINT_CONFIGS = {
    "DeepSets": {"PointWidth": 128, "PointDepth": 3, "Pooling": "mean"},
    "ParticleNet": {"PointWidth": 32, "PointDepth": 2, "Neighbours": 8},
    "Transformer": {"PointWidth": 64, "PointDepth": 2, "Heads": 4, "PairBias": False},
}
#: The CNN of the study: lartpcdnn.pid_study's (two views 240 x 128, batch normalisation, dropout).
CNN_CONFIG = {"Filters": 8, "Depth": 4, "Width": 64, "BatchNormalization": True, "Dropout": 0.2}


def _cache_dir(path, pre: ProcessWireData, seed: int, chunk: int, capacity: int, config: LArSimConfig) -> Path:
    if path is not None:
        return Path(path)
    key = json.dumps({"v": CHUNK_VERSION, "pre": repr(pre), "rev": pre.revision, "seed": seed, "chunk": chunk,
                      "capacity": capacity, "sim": config.to_dict()}, sort_keys=True, default=str)
    return data_root("lartpcdnn") / f"points-{hashlib.sha1(key.encode()).hexdigest()[:12]}"


def sorted_points(truth, capacity: int) -> tuple[np.ndarray, np.ndarray]:
    """The deposits of every event of a ``truth3d`` SparseTensor as ``(points (n, capacity, 4), count (n,))``:
    x, y, z [cm], q [MeV] per point, the most energetic first (ties in file order), clipped to ``capacity``,
    zero-padded; ``count`` the points before clipping (what a sorted :class:`dlkit.generators.Collection` gives)."""
    coords, values, offsets = np.asarray(truth.coords, np.float32), np.asarray(truth.values, np.float32), truth.offsets
    n = len(offsets) - 1
    out = np.zeros((n, capacity, 4), np.float32)
    count = np.diff(offsets).astype(np.int32)
    for i in range(n):
        a, b = offsets[i], offsets[i + 1]
        order = np.argsort(-values[a:b], kind="stable")[:capacity]
        out[i, :len(order), :3] = coords[a:b][order]
        out[i, :len(order), 3] = values[a:b][order]
    return out, count


def _chunk_task(args):
    particle, index, n, seed, pre, capacity, config = args
    rng = np.random.default_rng(file_seed_sequence(seed, particle, index))
    ev = simulate_events(particle, n, rng, config)
    batch = pre({"features": ev["features"], "Energy": ev["Energy"]})
    out = {v: batch[v] for v in VIEW_NAMES}
    out["points"], out["count"] = sorted_points(ev["truth3d"], capacity)
    out["Energy"] = np.asarray(ev["Energy"])
    return particle, index, out


def simulate_both(particles=DEFAULT_PARTICLES, events_per_class: int = 400, chunk: int = 50, seed: int = 0,
                  pre: ProcessWireData | None = None, capacity: int = 512, config: LArSimConfig | None = None,
                  cache=None, workers: int = 2) -> Path:
    """Make (or complete) the study's chunk files: per event the processed views and the sorted deposits (up
    to ``capacity``); returns their directory. A later or larger run reuses the chunks already made."""
    pre = pre or ProcessWireData(16, 128, 50.0)
    config = config or LArSimConfig()
    out = _cache_dir(cache, pre, seed, chunk, capacity, config)
    out.mkdir(parents=True, exist_ok=True)
    todo = [(p, i, chunk, seed, pre, capacity, config) for i in range(-(-events_per_class // chunk))
            for p in particles if not (out / f"{p}_{i}.npz").exists()]
    if not todo:
        return out
    write_chunks(out, todo, _chunk_task, chunk, workers, progress=False)
    return out


def load_both(directory, particles=DEFAULT_PARTICLES, events_per_class: int = 400, chunk: int = 50) -> dict:
    """The first ``events_per_class`` events of each class: views, points, count, Energy and the class index."""
    from lartpcdnn.pid_study import load_processed

    return load_processed(directory, particles, events_per_class, chunk)


def _batches(inputs: dict, y, idx, batch: int, shuffle: bool, seed: int, flip=None):
    """``({name: float32 rows}, y rows)`` batches of the events ``idx`` as a ``keras.utils.PyDataset``;
    ``shuffle``: a seeded new order per epoch; ``flip(inputs, rows_to_flip)``: the drift mirror of the events
    drawn (probability 1/2, seeded per epoch and batch)."""
    import keras

    class Batches(keras.utils.PyDataset):
        def __init__(self):
            super().__init__()
            self.epoch = 0
            self.order = self._order()

        def _order(self):
            return np.random.default_rng([seed, self.epoch]).permutation(idx) if shuffle else np.asarray(idx)

        def __len__(self):
            return (len(idx) + batch - 1) // batch

        def __getitem__(self, i):
            rows = self.order[i * batch:(i + 1) * batch]
            x = {k: (v[rows] if v.dtype == bool else v[rows].astype(np.float32)) for k, v in inputs.items()}
            if flip is not None:
                flip(x, np.random.default_rng([seed, self.epoch, i, 1]).random(len(rows)) < 0.5)
            return x, y[rows]

        def on_epoch_end(self):
            self.epoch += 1
            self.order = self._order()

    return Batches()


def _flip_views(x, do):
    for k in VIEW_NAMES:
        x[k][do] = x[k][do][:, :, ::-1]


def _flip_points(x, do):
    x["deposits"][do, :, 0] *= -1.0  # scaled drift coordinate, centred on the TPC: x -> 47 cm - x


class _EpochTimes:
    def __init__(self):
        import keras

        outer = self

        class Timer(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                self.t0 = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                outer.times.append(time.perf_counter() - self.t0)

        self.times: list[float] = []
        self.callback = Timer()


def point_inputs(data: dict, max_points: int, centre=TPC_CENTRE, length: float = 20.0) -> dict:
    """The point models' inputs of the loaded events: the ``max_points`` most energetic deposits, scaled as the
    experiment's readers scale them, and their mask."""
    pts = data["points"][:, :max_points]
    mask = np.arange(pts.shape[1])[None, :] < np.minimum(data["count"], max_points)[:, None]
    return {"deposits": scale_deposits(pts, mask, centre, length), "deposits_mask": mask}


def _train_one(model_name: str, inputs: dict, y, split, batch: int, epochs: int, lr: float, seed: int,
               flip: bool, point_config: dict, progress: bool):
    import keras

    from lartpcdnn.models import build_classifier, build_point_classifier

    train, val, test = split
    keras.utils.set_random_seed(seed)
    n_classes = y.shape[1]
    if model_name == "CNN":
        shapes = {k: inputs[k].shape[1:] for k in VIEW_NAMES}
        model = build_classifier(shapes, n_classes, Model="CNN", **CNN_CONFIG)
        flipper = _flip_views if flip else None
    else:
        from dlkit.models import CONFIG_DEFAULTS

        config = {**CONFIG_DEFAULTS, **POINT_CONFIGS.get(model_name, {}), **point_config, "Model": model_name}
        model = build_point_classifier(inputs["deposits"].shape[-1], n_classes, config, name=model_name)
        flipper = _flip_points if flip else None
    model.compile(optimizer=keras.optimizers.Adam(lr), loss="categorical_crossentropy", metrics=["accuracy"])
    timer = _EpochTimes()
    callbacks = [keras.callbacks.ReduceLROnPlateau("val_loss", factor=0.5, patience=2, min_lr=lr / 32),
                 keras.callbacks.EarlyStopping("val_loss", patience=epochs, restore_best_weights=True),
                 timer.callback]
    t0 = time.perf_counter()
    history = model.fit(_batches(inputs, y, train, batch, True, seed, flipper), epochs=epochs, shuffle=False,
                        validation_data=_batches(inputs, y, val, 256, False, seed), callbacks=callbacks,
                        verbose=2 if progress else 0)
    seconds = time.perf_counter() - t0
    t1 = time.perf_counter()
    scores = model.predict(_batches(inputs, y, test, 256, False, seed), verbose=0)
    predict_seconds = time.perf_counter() - t1
    return model, scores, history.history, timer.times, seconds, predict_seconds


def compare_models(events_per_class: int = 400, epochs: int = 12, seed: int = 0, models=MODELS,
                   particles=DEFAULT_PARTICLES, max_points: int = 128, batch: int = 32, lr: float = 1e-3,
                   point_lr: float = 1e-3, flip: bool = True, fake_rate: float = 0.01, point_config: dict | None = None,
                   workers: int = 2, cache=None, progress: bool = False, chunk: int = 50):
    """Train ``models`` (``"CNN"`` and point models by their ``Model`` config value) on the same simulated events
    (``events_per_class`` per class of ``particles``, simulation ``seed``) for ``epochs`` epochs each; returns a
    pandas DataFrame, one row per model:

    ``model``, ``parameters``, ``seconds_per_epoch`` (median over the epochs: training plus validation, the
    first epoch's tracing included in ``train_seconds`` only), ``train_seconds``, ``best_epoch``,
    ``test_accuracy``, and per class ``<class>_eff`` (efficiency at ``fake_rate``, one vs rest),
    ``<class>_eff_lower`` / ``<class>_eff_upper`` (its Clopper-Pearson 68.3 % interval), ``<class>_auc``; the
    settings are in ``DataFrame.attrs``, and ``attrs["target"]`` says (a line of text) which point models reach
    at least the CNN's efficiency for electron, photon and pion0 (with the CNN, a point model and those
    classes). ``point_config`` overrides :data:`POINT_CONFIGS` entries for every point model (e.g.
    ``{"PointWidth": 64}``); ``max_points``: the deposits kept per event (``MaxPoints``);
    ``lr``: the CNN's learning rate (pid_study's), ``point_lr``: the point models' (5e-4 instead of 1e-3 moved
    the transformer's photon / pion0 efficiencies by up to +-0.18, up on seed 1, down on seed 0: no default
    better than the other);
    ``chunk``: events per cached simulation chunk (part of the cache key); ``workers``: simulation processes.
    """
    import pandas as pd

    from dlkit.models import point_model_kind
    from lartpcdnn.analysis import efficiency_table

    models = list(models)
    for m in models:
        if m != "CNN" and point_model_kind(m) is None:
            raise ValueError(f"compare_models: model {m!r} is not 'CNN' or a point model {list(POINT_CONFIGS)}")
    particles = list(particles)
    t_start = time.perf_counter()
    capacity = max(512, int(max_points))
    directory = simulate_both(particles, events_per_class, chunk, seed, capacity=capacity, cache=cache,
                              workers=workers)
    t_sim = time.perf_counter() - t_start
    data = load_both(directory, particles, events_per_class, chunk)
    labels = data["label"]
    split = split_indices(labels, seed=seed)
    y = np.eye(len(particles), dtype=np.float32)[labels]
    views = {k: data[k] for k in VIEW_NAMES}
    points = point_inputs(data, max_points)
    test = split[2]
    tag = f"Eff{fake_rate * 100:g}pctFake"
    rows = []
    for name in models:
        key = "CNN" if name == "CNN" else next(k for k in POINT_CONFIGS if k.lower() == name.lower())
        log.info("training %s for %d epochs on %d events", key, epochs, len(split[0]))
        model, scores, hist, times, seconds, predict_seconds = _train_one(
            key, views if key == "CNN" else points, y, split, batch, epochs, lr if key == "CNN" else point_lr, seed,
            flip, point_config or {}, progress)
        _, _, md = efficiency_table(y[test], scores, particles, fake_rate, n_boot=0)
        row = {"model": key, "parameters": int(model.count_params()),
               "seconds_per_epoch": float(np.median(times)), "train_seconds": seconds,
               "predict_ms_per_event": 1000 * predict_seconds / len(test),
               "best_epoch": int(np.argmin(hist["val_loss"])) + 1, "epochs": len(hist["loss"]),
               "test_accuracy": float(np.mean(scores.argmax(1) == labels[test]))}
        for c in particles:
            row[f"{c}_eff"] = md[f"{c}_{tag}"]
            row[f"{c}_eff_lower"], row[f"{c}_eff_upper"] = md[f"{c}_{tag}_lower"], md[f"{c}_{tag}_upper"]
            row[f"{c}_auc"] = md[f"{c}_AUC"]
        rows.append(row)
        log.info("%s: %s", key, {k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()})
    table = pd.DataFrame(rows)
    target = _target(table, particles)
    if target:
        table.attrs["target"] = target
    table.attrs.update({"events_per_class": events_per_class, "epochs": epochs, "seed": seed,
                        "particles": particles, "max_points": max_points, "batch": batch, "lr": lr,
                        "point_lr": point_lr,
                        "flip": flip, "fake_rate": fake_rate, "events": [len(s) for s in split],
                        "point_configs": {k: {**POINT_CONFIGS[k], **(point_config or {})} for k in POINT_CONFIGS},
                        "cnn_config": CNN_CONFIG, "simulation_seconds": t_sim,
                        "total_seconds": time.perf_counter() - t_start})
    return table


#: The classes of issue 31's target: a point model's efficiency at 1 % fake >= the two-view CNN's for each.
TARGET_CLASSES = ("electron", "photon", "pion0")


def _target(table, particles) -> str | None:
    """The target's verdict as a line of text (None without the CNN, a point model or the target's classes)."""
    classes = [c for c in TARGET_CLASSES if c in particles]
    points = table[table["model"] != "CNN"]
    if "CNN" not in set(table["model"]) or points.empty or len(classes) < len(TARGET_CLASSES):
        return None
    cnn = table[table["model"] == "CNN"].iloc[0]
    met = [r["model"] for _, r in points.iterrows() if all(r[f"{c}_eff"] >= cnn[f"{c}_eff"] for c in classes)]
    values = "; ".join(f"{r['model']} " + ", ".join(f"{r[f'{c}_eff']:.2f}" for c in classes)
                       for _, r in table.iterrows())
    return (f"a point model's efficiency at 1 % fake >= the two-view CNN's for {', '.join(classes)} "
            f"({values}): {'**met** by ' + ', '.join(met) if met else '**missed**'}")


def markdown(table, classes=None) -> str:
    """The efficiency at 1 % fake per class (with its interval), seconds per epoch and parameters, as markdown."""
    classes = list(classes or table.attrs.get("particles") or
                   [c[:-4] for c in table.columns if c.endswith("_eff")])
    fr = table.attrs.get("fake_rate", 0.01)
    head = ["model", *[f"{c} eff @ {fr:.0%} fake" for c in classes], "accuracy", "s/epoch", "parameters"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in table.iterrows():
        cells = [r["model"]] + [f"{r[f'{c}_eff']:.2f} [{r[f'{c}_eff_lower']:.2f}, {r[f'{c}_eff_upper']:.2f}]"
                                for c in classes]
        cells += [f"{r['test_accuracy']:.3f}", f"{r['seconds_per_epoch']:.1f}", f"{int(r['parameters']):,}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events-per-class", type=int, default=400)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--max-points", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3, help="the CNN's learning rate")
    parser.add_argument("--point-lr", type=float, default=1e-3, help="the point models' learning rate")
    parser.add_argument("--no-flip", action="store_true", help="no drift-direction mirroring")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cache", default=None, help="chunk directory (default $DLKIT_DATA/lartpcdnn/points-<hash>)")
    parser.add_argument("--csv", default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    table = compare_models(args.events_per_class, args.epochs, args.seed, args.models.split(","),
                           max_points=args.max_points, batch=args.batch, lr=args.lr, point_lr=args.point_lr,
                           flip=not args.no_flip,
                           workers=args.workers, cache=args.cache, progress=True)
    print(markdown(table))
    if "target" in table.attrs:
        print(table.attrs["target"])
    print(json.dumps({k: v for k, v in table.attrs.items() if k not in ("particles", "target")}, default=str))
    if args.csv:
        table.to_csv(args.csv, index=False)
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
