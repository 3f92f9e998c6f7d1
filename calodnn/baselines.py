"""Feature baselines for the paper's two classification tasks: a BDT and a DNN on the scalar features,
against a DNN on the cells.

The paper (Belayneh et al., EPJC 80 (2020) 688; seed 003) compares, for photons vs pi0 and electrons vs charged
pions, a gradient-boosted decision tree and a fully connected network on the ~46 scalar features of the LCD
files (``ECAL_E``, moments, ratios: :data:`calodnn.simulate.FEATURE_NAMES`) with a network on the cells, and
quotes accuracy, AUC, and the signal-efficiency and background-rejection gains over the BDT at a fixed working
point. Here::

    splits = load_task(data_dir, "GammaPi0", events_per_class=4000)
    table, scores = run_task(splits)                     # BDT, FeatureDNN, CellDNN -> DataFrame
    python -m calodnn.baselines --task GammaPi0           # the same from the shell (simulated data by default)

- BDT: :class:`sklearn.ensemble.HistGradientBoostingClassifier` (DLKit's BDT.py used the slower
  GradientBoostingClassifier; ``method="classic"`` gives that one).
- DNN on features: an MLP on the standardised features.
- DNN on cells: the paper's was fully connected; with the few thousand events a CPU run affords, a fully
  connected net on 17k cells stays far below the BDT, so the cells go through a small 2D convolution that
  treats the ECAL layers as channels, on the central ECAL window (default 17 x 17 cells), each cell as the
  square root of its fraction of the event's ECAL energy (shapes, not energy, separate the classes; the
  square root keeps the core from dominating), plus a dense HCAL branch; every epoch shows each training
  event under a random symmetry of the square (seed 001's flips and rotations, :mod:`dlkit.augment`).

Working point (the paper does not restate it in seed 003): Delta eps_sig is the signal efficiency gained over
the BDT at the background efficiency where the BDT keeps ``working_point`` (90 %) of the signal, and
Delta R_bkg the ratio of background rejections 1/eps_bkg at that signal efficiency
(:func:`working_point_gains`). A model that rejects every test background event there gets a lower bound
(``>``); if the BDT does too, the ratio is undefined (``-``).

The paper's e/pi task keeps "EM-like" pions with HCAL/ECAL energy < 0.025 (``Task.max_hcal_ecal``). In calodnn's
simulation about half of the pions interact in the ECAL, but only ~0.2 % are that EM-like (only when the
first interaction's pi0s take nearly all the energy does no hadronic remainder reach the HCAL), so the default
e/pi task keeps all events, and every method stays close to 100 % (bench/paper_tables.py's truth check says why).

This module imports Keras only inside the functions that build networks.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from dlkit.protocol import EXIT_OK, EXIT_USER_ERROR

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

__all__ = ["Task", "TASKS", "TaskSplit", "load_task", "train_bdt", "Standardizer", "build_feature_dnn",
           "cell_inputs", "build_cell_classifier", "fit_classifier", "working_point_gains",
           "compare_classifiers", "run_task", "format_table", "main"]


@dataclass(frozen=True)
class Task:
    """A two-class task: signal and background particle, an optional EM-likeness cut on both."""

    signal: str
    background: str
    max_hcal_ecal: float | None = None  # keep events with HCAL_ECAL_ERatio below this (paper: 0.025 for e/pi)
    title: str = ""


TASKS = {
    "GammaPi0": Task("Gamma", "Pi0", None, "gamma vs pi0"),
    "EPi": Task("Ele", "ChPi", None, "e vs pi+-"),
}


@dataclass
class TaskSplit:
    """One split of a task, in memory: features, cells, labels (1 = signal) and true energy."""

    features: np.ndarray
    y: np.ndarray
    energy: np.ndarray
    ecal: np.ndarray | None = None
    hcal: np.ndarray | None = None
    feature_names: tuple = field(default_factory=tuple)

    def __len__(self):
        return len(self.y)


def _task(task) -> Task:
    if isinstance(task, Task):
        return task
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {sorted(TASKS)} or a Task")
    return TASKS[task]


def load_task(data_dir, task="GammaPi0", events_per_class: int | None = None,
              fractions=(0.6, 0.1, 0.3), seed: int = 0, cells: bool = True,
              feature_names=None) -> dict[str, TaskSplit]:
    """Read a task's events from ``<data_dir>/<Particle>/*.h5`` into ``{"train", "validation", "test"}``.

    Events are split as the experiments split them (:func:`calodnn.data.read_splits`); with
    ``events_per_class`` only that many events per class are used (the same fractions of them). Missing
    features or files raise :class:`dlkit.generators.DataError` naming the file and key.
    """
    from calodnn.data import read_splits
    from calodnn.simulate import FEATURE_NAMES

    t = _task(task)
    names = tuple(feature_names or FEATURE_NAMES)
    keys = list(dict.fromkeys([*names, "energy", "HCAL_ECAL_ERatio"] + (["ECAL", "HCAL"] if cells else [])))
    splits = read_splits(data_dir, [t.signal, t.background], keys, fractions, seed, events_per_class)
    out = {}
    for name, arrays in splits.items():
        y = (arrays["particle"] == 0).astype(np.int64)  # signal first
        keep = np.ones(len(y), bool)
        if t.max_hcal_ecal is not None:
            keep = arrays["HCAL_ECAL_ERatio"].reshape(-1) < t.max_hcal_ecal
        feats = np.stack([arrays[k].astype(np.float32).reshape(-1) for k in names], axis=1)
        out[name] = TaskSplit(features=feats[keep], y=y[keep], energy=arrays["energy"].reshape(-1)[keep].astype(float),
                              ecal=arrays["ECAL"][keep] if cells else None,
                              hcal=arrays["HCAL"][keep] if cells else None, feature_names=names)
        for label, particle in ((1, t.signal), (0, t.background)):
            if not np.any(out[name].y == label):
                raise ValueError(f"task {t.title or task}: no {particle} events left in the {name} split"
                                 + (f" after HCAL/ECAL < {t.max_hcal_ecal}" if t.max_hcal_ecal is not None else ""))
    log.info("task %s: %s events (train/validation/test)", t.title or task, [len(s) for s in out.values()])
    return out


def train_bdt(X, y, method: str = "hist", seed: int = 0, **params):
    """A gradient-boosted decision tree (scikit-learn) on the features.

    ``method="hist"``: HistGradientBoostingClassifier (default up to 300 trees of 31 leaves, learning rate
    0.1, early stopping on 15 % of the training events); ``"classic"``: GradientBoostingClassifier with
    DLKit's BDT.py settings (depth 3, 800 trees, learning rate 0.5) unless overridden.
    """
    from sklearn.ensemble import GradientBoostingClassifier, HistGradientBoostingClassifier

    if method == "hist":
        options = dict(max_iter=300, learning_rate=0.1, early_stopping=True, validation_fraction=0.15,
                       n_iter_no_change=20, random_state=seed)
        options.update(params)
        model = HistGradientBoostingClassifier(**options)
    elif method == "classic":
        options = dict(max_depth=3, n_estimators=800, learning_rate=0.5, random_state=seed)
        options.update(params)
        model = GradientBoostingClassifier(**options)
    else:
        raise ValueError(f"train_bdt: method must be 'hist' or 'classic', got {method!r}")
    return model.fit(np.asarray(X), np.asarray(y))


class Standardizer:
    """Feature scaling fitted on the training set: ``(x - mean) / std`` (std 0 -> 1)."""

    def __init__(self, X):
        X = np.asarray(X, np.float64)
        self.mean = X.mean(axis=0)
        std = X.std(axis=0)
        self.std = np.where(std > 0, std, 1.0)

    def __call__(self, X):
        return ((np.asarray(X, np.float64) - self.mean) / self.std).astype(np.float32)


def build_feature_dnn(n_features: int, width: int = 64, depth: int = 3, dropout: float = 0.1):
    """An MLP on standardised features with a sigmoid output (the paper's "DNN (features)")."""
    import keras
    from keras import layers

    inp = keras.Input((n_features,), name="features")
    x = inp
    for i in range(depth):
        x = layers.Dense(width, activation="relu", name=f"dense{i}")(x)
        if dropout:
            x = layers.Dropout(dropout, name=f"dropout{i}")(x)
    return keras.Model(inp, layers.Dense(1, activation="sigmoid", name="signal")(x), name="FeatureDNN")


def cell_inputs(ecal, hcal=None, crop: int | None = 8):
    """Cells as the cell classifier sees them: sqrt of each cell's fraction of the event's ECAL energy.

    ``crop`` keeps the central (2 crop + 1)^2 ECAL cells (None: all). The HCAL is scaled by the same ECAL
    total, so the HCAL/ECAL balance survives.
    """
    ecal = np.asarray(ecal, np.float32)
    total = ecal.reshape(len(ecal), -1).sum(axis=1).astype(np.float32)
    total = np.where(total > 0, total, 1.0).reshape(-1, 1, 1, 1)
    if crop is not None:
        cx, cy = ecal.shape[1] // 2, ecal.shape[2] // 2
        ecal = ecal[:, max(cx - crop, 0):cx + crop + 1, max(cy - crop, 0):cy + crop + 1]
    out = [np.sqrt(np.clip(ecal / total, 0, None))]
    if hcal is not None:
        out.append(np.sqrt(np.clip(np.asarray(hcal, np.float32) / total, 0, None)))
    return tuple(out)


def build_cell_classifier(ecal_shape, hcal_shape=None, filters: int = 32, width: int = 64):
    """The cell classifier: Conv2D over (x, y) with the ECAL layers as channels, plus a dense HCAL branch."""
    import keras
    from keras import layers

    ie = keras.Input(tuple(ecal_shape), name="ECAL")
    x = layers.Conv2D(filters, 3, padding="same", activation="relu", name="ecal_conv0")(ie)
    x = layers.Conv2D(filters, 3, padding="same", activation="relu", name="ecal_conv1")(x)
    x = layers.MaxPooling2D(2, name="ecal_pool")(x)
    x = layers.Conv2D(2 * filters, 3, padding="same", activation="relu", name="ecal_conv2")(x)
    x = layers.Flatten(name="ecal_flatten")(x)
    inputs, branches = [ie], [x]
    if hcal_shape is not None:
        ih = keras.Input(tuple(hcal_shape), name="HCAL")
        h = layers.Flatten(name="hcal_flatten")(ih)
        branches.append(layers.Dense(32, activation="relu", name="hcal_dense")(h))
        inputs.append(ih)
    x = layers.Concatenate(name="merge")(branches) if len(branches) > 1 else branches[0]
    x = layers.Dense(width, activation="relu", name="dense")(x)
    return keras.Model(inputs, layers.Dense(1, activation="sigmoid", name="signal")(x), name="CellDNN")


_AUGMENTED = {}


def augmented_batches(x, y, batch_size: int = 128, seed: int = 0):
    """A ``keras.utils.PyDataset`` of shuffled batches of ``(x, y)`` with a random flip/rotation of the square
    per event (:class:`dlkit.augment.FlipRotate` on every image input), new draws every epoch: seed 001's
    augmentation, in memory. ``x`` is a tuple of arrays; image inputs are those with 3+ dimensions."""
    import keras

    from dlkit.augment import FlipRotate

    cls = _AUGMENTED.get("cls")
    if cls is None:
        class AugmentedBatches(keras.utils.PyDataset):
            def __init__(self, x, y, batch_size, seed):
                super().__init__()
                self.x, self.y, self.batch_size = tuple(x), np.asarray(y), int(batch_size)
                self.rng = np.random.default_rng(seed)
                self.flip = FlipRotate(tuple(str(i) for i, a in enumerate(self.x) if a.ndim >= 3), seed=seed)
                self.order = self.rng.permutation(len(self.y))

            def __len__(self):
                return math.ceil(len(self.y) / self.batch_size)

            def __getitem__(self, i):
                rows = np.sort(self.order[i * self.batch_size:(i + 1) * self.batch_size])
                arrays = {str(k): a[rows] for k, a in enumerate(self.x)}
                self.flip(arrays)
                return tuple(arrays[str(k)] for k in range(len(self.x))), self.y[rows]

            def on_epoch_end(self):
                self.order = self.rng.permutation(len(self.y))

        cls = _AUGMENTED["cls"] = AugmentedBatches
    return cls(x, y, batch_size, seed)


def fit_classifier(model, x, y, validation, epochs: int = 20, batch_size: int = 128, lr: float = 1e-3,
                   patience: int = 4, seed: int = 0, augment: bool = False):
    """Train a sigmoid classifier with Adam and binary cross-entropy, keeping the best validation epoch.

    ``augment``: every epoch sees each event under a random symmetry of the square (:func:`augmented_batches`).
    """
    import keras

    keras.utils.set_random_seed(seed)
    model.compile(optimizer=keras.optimizers.Adam(lr), loss="binary_crossentropy")
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience, restore_best_weights=True)
    y = np.asarray(y, np.float32)
    fit_kwargs = dict(epochs=epochs, validation_data=(validation[0], np.asarray(validation[1], np.float32)),
                      callbacks=[stop], verbose=0)
    if augment:
        history = model.fit(augmented_batches(x, y, batch_size, seed), **fit_kwargs)
    else:
        history = model.fit(x, y, batch_size=batch_size, **fit_kwargs)
    return model, history


def _fake_at(fpr, tpr, efficiency: float) -> float:
    """Background efficiency of the loosest threshold keeping at least ``efficiency`` of the signal."""
    return float(fpr[np.argmax(tpr >= efficiency - 1e-12)])


def _eff_at(fpr, tpr, fake: float) -> float:
    """Best signal efficiency with a background efficiency of at most ``fake``."""
    return float(tpr[fpr <= fake + 1e-12].max())


def working_point_gains(y, scores, reference_scores, working_point: float = 0.9) -> dict:
    """Signal-efficiency gain and background-rejection ratio of ``scores`` over ``reference_scores``.

    The working point is the reference's threshold keeping ``working_point`` of the signal, with background
    efficiency ``ref_bkg_eff``. ``d_eff_sig``: signal efficiency of the model minus the reference's at that
    background efficiency. ``r_bkg_ratio``: background rejection (1/bkg efficiency) of the model over the
    reference's at ``working_point`` signal efficiency. Efficiencies are read off the ROC steps (no
    interpolation). When the model rejects every test background event there the ratio uses one event
    (``r_bkg_lower_bound`` True); when both do, it is NaN.
    """
    from sklearn.metrics import roc_curve

    y = np.asarray(y).reshape(-1)
    n_bkg = int(np.sum(y == 0))
    fpr_r, tpr_r, _ = roc_curve(y, reference_scores, drop_intermediate=False)
    fpr_m, tpr_m, _ = roc_curve(y, scores, drop_intermediate=False)
    ref_fake = _fake_at(fpr_r, tpr_r, working_point)
    model_fake = _fake_at(fpr_m, tpr_m, working_point)
    d_eff = _eff_at(fpr_m, tpr_m, ref_fake) - _eff_at(fpr_r, tpr_r, ref_fake)
    if ref_fake == 0 and model_fake == 0:
        ratio, bound = math.nan, False
    else:
        floor = 1.0 / max(n_bkg, 1)
        ratio, bound = max(ref_fake, floor) / max(model_fake, floor), model_fake == 0
    return {"d_eff_sig": d_eff, "r_bkg_ratio": ratio, "r_bkg_lower_bound": bool(bound), "ref_bkg_eff": ref_fake}


def compare_classifiers(y, scores: dict, reference: str = "BDT", working_point: float = 0.9) -> pd.DataFrame:
    """The paper's classification table for one task: accuracy (score > 0.5), AUC, and the gains over
    ``reference`` at ``working_point`` signal efficiency (:func:`working_point_gains`)."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y).reshape(-1)
    if reference not in scores:
        raise ValueError(f"reference {reference!r} is not among the models {sorted(scores)}")
    rows = []
    for name, s in scores.items():
        s = np.asarray(s, float).reshape(-1)
        row = {"model": name, "accuracy": float(np.mean((s > 0.5) == (y == 1))), "auc": float(roc_auc_score(y, s))}
        if name == reference:
            row.update(d_eff_sig=math.nan, r_bkg_ratio=math.nan, r_bkg_lower_bound=False)
        else:
            gains = working_point_gains(y, s, scores[reference], working_point)
            row.update({k: gains[k] for k in ("d_eff_sig", "r_bkg_ratio", "r_bkg_lower_bound")})
        rows.append(row)
    return pd.DataFrame(rows).set_index("model")


def run_task(splits: dict, models=("BDT", "FeatureDNN", "CellDNN"), epochs: int = 20, cell_epochs: int = 16,
             crop: int | None = 8, seed: int = 0, working_point: float = 0.9, augment: bool = True):
    """Train the requested models on a task's splits; returns ``(table, test scores, seconds per model)``.

    ``augment``: the cell DNN sees each training event under a random symmetry of the square every epoch
    (seed 001's flips and rotations; x8 the images, which the few-thousand-event CPU runs need).
    """
    train, val, test = splits["train"], splits["validation"], splits["test"]
    scores, seconds = {}, {}
    if "BDT" in models:
        t0 = time.perf_counter()
        bdt = train_bdt(train.features, train.y, seed=seed)
        scores["BDT"] = bdt.predict_proba(test.features)[:, 1]
        seconds["BDT"] = time.perf_counter() - t0
    if "FeatureDNN" in models:
        t0 = time.perf_counter()
        scale = Standardizer(train.features)
        model, _ = fit_classifier(build_feature_dnn(train.features.shape[1]), scale(train.features), train.y,
                                  (scale(val.features), val.y), epochs=epochs, seed=seed)
        scores["FeatureDNN"] = model.predict(scale(test.features), batch_size=1024, verbose=0).reshape(-1)
        seconds["FeatureDNN"] = time.perf_counter() - t0
    if "CellDNN" in models:
        if train.ecal is None:
            raise ValueError("CellDNN needs the cells: load_task(..., cells=True)")
        t0 = time.perf_counter()
        xtr, xva, xte = (cell_inputs(s.ecal, s.hcal, crop) for s in (train, val, test))
        model = build_cell_classifier(xtr[0].shape[1:], xtr[1].shape[1:])
        model, _ = fit_classifier(model, xtr, train.y, (xva, val.y), epochs=cell_epochs, lr=2e-3, patience=6,
                                  seed=seed, augment=augment)
        scores["CellDNN"] = model.predict(xte, batch_size=512, verbose=0).reshape(-1)
        seconds["CellDNN"] = time.perf_counter() - t0
    reference = "BDT" if "BDT" in scores else next(iter(scores))
    return compare_classifiers(test.y, scores, reference, working_point), scores, seconds


def format_table(table: pd.DataFrame) -> pd.DataFrame:
    """Percentages and the lower-bound marks, for printing."""
    out = pd.DataFrame(index=table.index)
    out["acc."] = [f"{100 * v:.1f}%" for v in table["accuracy"]]
    out["AUC"] = [f"{100 * v:.1f}%" for v in table["auc"]]
    out["Δε_sig"] = ["-" if not np.isfinite(v) else f"{100 * v:+.1f}%" for v in table["d_eff_sig"]]
    out["ΔR_bkg"] = ["-" if not np.isfinite(v) else (">" if b else "") + f"{v:.3g}"
                     for v, b in zip(table["r_bkg_ratio"], table["r_bkg_lower_bound"])]
    return out


def main(argv=None) -> int:
    """``python -m calodnn.baselines``: the classification table of one task; exit 2 on a user error."""
    from tabulate import tabulate

    from dlkit.generators import DataError

    parser = argparse.ArgumentParser(prog="python -m calodnn.baselines", description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="LCD-layout directory (default: the simulated dataset)")
    parser.add_argument("--task", choices=sorted(TASKS), default="GammaPi0")
    parser.add_argument("--events-per-class", type=int, default=4000)
    parser.add_argument("--models", default="BDT,FeatureDNN,CellDNN", help="comma list (default: all three)")
    parser.add_argument("--max-hcal-ecal", type=float, default=None,
                        help="keep events with HCAL/ECAL energy below this (the paper's e/pi cut: 0.025)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--csv", default=None, help="also write the table to this CSV file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    models = tuple(m.strip() for m in args.models.split(",") if m.strip())
    unknown = set(models) - {"BDT", "FeatureDNN", "CellDNN"}
    if unknown:
        parser.error(f"--models: unknown {sorted(unknown)}; expected BDT, FeatureDNN, CellDNN")
    try:
        if args.data is None:
            from calodnn.simulate import default_dataset

            data_dir = default_dataset()
        else:
            data_dir = Path(args.data)
        task = TASKS[args.task]
        if args.max_hcal_ecal is not None:
            task = Task(task.signal, task.background, args.max_hcal_ecal, task.title)
        splits = load_task(data_dir, task, args.events_per_class, seed=args.seed, cells="CellDNN" in models)
        table, _, _ = run_task(splits, models, seed=args.seed)
    except (DataError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    print(tabulate(format_table(table), headers="keys", tablefmt="github"))
    if args.csv:
        table.to_csv(args.csv)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
