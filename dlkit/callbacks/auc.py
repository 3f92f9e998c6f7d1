"""AUCCallback: per-class one-vs-rest ROC AUC on validation data after every epoch."""

from __future__ import annotations

import logging

import keras
import numpy as np

logger = logging.getLogger(__name__)


class AUCCallback(keras.callbacks.Callback):
    """Per-class one-vs-rest ROC AUC on validation data after every epoch, written into ``logs``.

    The values go into the epoch ``logs`` as ``<prefix><class name>`` (``val_auc_Ele``), so
    that ``History``, ``ModelCheckpoint`` and ``EarlyStopping`` can use them. With more than one
    class, ``<prefix>mean`` (``val_auc_mean``) holds the mean over the classes with a defined
    AUC. **Order matters**: Keras calls callbacks in list order, so this callback must come
    before the callbacks that monitor its values.

    Binary models with a single sigmoid output get one AUC, named after the positive class
    (``class_names[-1]``, e.g. ``["Pi0", "Gamma"]`` gives ``val_auc_Gamma``; default ``"1"``)
    and no mean. A class absent from (or the only class
    in) the labels gets NaN and a logged warning.

    Parameters
    ----------
    validation_data : tuple or iterable
        ``(x, y)`` with ``x`` an array, list or dict of arrays, and ``y`` one-hot ``(N, C)`` or
        integer class indices ``(N,)``; or a ``keras.utils.PyDataset``/iterable yielding
        ``(x, y)`` (or ``(x, y, sample_weight)``) batches. Exactly ``steps`` batches are used
        each epoch if given, else ``len()`` batches if the dataset has a length, else all it
        yields (an endless generator needs ``steps``). It is iterated again every epoch, so pass
        a re-iterable (a PyDataset, a list, a ``tf.data.Dataset``), not a one-shot generator.
    class_names : sequence of str, optional
        Names for the output columns; default ``"0"`` .. ``"C-1"``.
    batch_size : int, default 1024
        Prediction batch size for ``(x, y)`` data.
    prefix : str, default "val_auc_"
        Prefix of the keys written into ``logs``.
    steps : int, optional
        Number of batches to draw from a dataset each epoch.

    Attributes
    ----------
    history : dict of str to list of float
        The values of every epoch, by log key.

    Examples
    --------
    >>> auc = AUCCallback((x_val, y_val), class_names=["Ele", "ChPi", "Gamma", "Pi0"])
    >>> checkpoint = keras.callbacks.ModelCheckpoint("best.keras", monitor="val_auc_Ele",
    ...                                              mode="max", save_best_only=True)
    >>> model.fit(x, y, epochs=10, callbacks=[auc, checkpoint])  # auc first
    """

    def __init__(self, validation_data, class_names=None, batch_size=1024, prefix="val_auc_", steps=None):
        super().__init__()
        if isinstance(validation_data, tuple) and len(validation_data) not in (2, 3):
            raise ValueError(
                "AUCCallback: validation_data must be (x, y) or a dataset, "
                f"got a tuple of {len(validation_data)}"
            )
        self.validation_data = validation_data
        self.class_names = None if class_names is None else [str(c) for c in class_names]
        self.batch_size = int(batch_size)
        self.prefix = prefix
        self.steps = None if steps is None else int(steps)
        self.history = {}
        self._warned = set()

    # -- data --------------------------------------------------------------------------------
    def _n_batches(self):
        """Number of batches to draw from a dataset: ``steps``, else its length, else None."""
        if self.steps is not None:
            return self.steps
        data = self.validation_data
        try:
            if hasattr(data, "__len__"):
                return len(data)
            return getattr(data, "num_batches", None)  # PyDataset defining num_batches only
        except (TypeError, NotImplementedError):  # e.g. a tf.data.Dataset of unknown length
            return None

    def _predict(self):
        """Return ``(predictions, labels)`` as numpy arrays for the validation data."""
        data = self.validation_data
        if isinstance(data, tuple):
            pred = self.model.predict(data[0], batch_size=self.batch_size, verbose=0)
            return self._as_array(pred), np.asarray(data[1])
        preds, labels = [], []
        n_batches = self._n_batches()
        for i, batch in enumerate(data):
            if n_batches is not None and i >= n_batches:
                break
            preds.append(self._as_array(self.model.predict_on_batch(batch[0])))
            labels.append(np.asarray(keras.ops.convert_to_numpy(batch[1])))
        if not preds:
            raise ValueError("AUCCallback: validation_data yielded no batches")
        return np.concatenate(preds), np.concatenate(labels)

    @staticmethod
    def _as_array(pred):
        if isinstance(pred, (list, tuple, dict)):
            raise ValueError("AUCCallback: the model has several outputs; it needs a single (N, C) output")
        return np.asarray(keras.ops.convert_to_numpy(pred))

    @staticmethod
    def _binarize(y, n_columns):
        """Return ``(N, n_columns)`` 0/1 labels from one-hot or integer-index labels."""
        y = np.asarray(y)
        if n_columns > 1 and y.ndim == 2 and y.shape[1] == n_columns:
            return (y > 0.5).astype(np.int8)  # one-hot (or multi-label)
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.ndim != 1:
            raise ValueError(
                f"AUCCallback: labels of shape {y.shape} do not match predictions with {n_columns} columns"
            )
        if n_columns == 1:
            return (y > 0.5).astype(np.int8)[:, None]
        return (np.rint(y).astype(np.int64)[:, None] == np.arange(n_columns)[None, :]).astype(np.int8)

    def _names(self, n_columns):
        if n_columns == 1:
            if self.class_names and len(self.class_names) > 2:
                raise ValueError(
                    f"AUCCallback: {len(self.class_names)} class_names for a single-column (binary) output"
                )
            return [self.class_names[-1] if self.class_names else "1"]
        names = self.class_names or [str(i) for i in range(n_columns)]
        if len(names) != n_columns:
            raise ValueError(
                f"AUCCallback: {len(names)} class_names for a model output with {n_columns} columns"
            )
        return names

    # -- AUC ---------------------------------------------------------------------------------
    def compute(self):
        """Return ``{log key: AUC}`` for the current model on the validation data."""
        from sklearn.metrics import roc_auc_score

        pred, y = self._predict()
        if pred.ndim == 1:
            pred = pred[:, None]
        if pred.ndim != 2:
            raise ValueError(f"AUCCallback: expected (N, C) predictions, got shape {pred.shape}")
        n_columns = pred.shape[1]
        labels = self._binarize(y, n_columns)
        if len(labels) != len(pred):
            raise ValueError(f"AUCCallback: {len(labels)} labels for {len(pred)} predictions")
        result = {}
        values = []
        for column, name in enumerate(self._names(n_columns)):
            target = labels[:, column]
            n_pos = int(target.sum())
            if n_pos == 0 or n_pos == len(target):
                if name not in self._warned:
                    logger.warning(
                        "AUCCallback: class %r is %s in the validation labels; its AUC is NaN",
                        name,
                        "absent" if n_pos == 0 else "the only class",
                    )
                    self._warned.add(name)
                auc = float("nan")
            else:
                auc = float(roc_auc_score(target, pred[:, column]))
                values.append(auc)
            result[self.prefix + name] = auc
        if n_columns > 1:
            result[self.prefix + "mean"] = float(np.mean(values)) if values else float("nan")
        return result

    def on_epoch_end(self, epoch, logs=None):
        result = self.compute()
        if logs is not None:
            logs.update(result)
        for key, value in result.items():
            self.history.setdefault(key, []).append(value)
