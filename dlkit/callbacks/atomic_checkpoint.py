"""AtomicModelCheckpoint: Keras' ModelCheckpoint whose file is replaced atomically."""

from __future__ import annotations

import logging

import keras

logger = logging.getLogger(__name__)


class AtomicModelCheckpoint(keras.callbacks.ModelCheckpoint):
    """Keras' ``ModelCheckpoint`` whose file is replaced atomically.

    Keras writes the checkpoint in place, truncating it first, so a job killed during a checkpoint save loses
    the best model it had. Here each save goes to a hidden file beside it (fsynced), which then replaces the
    checkpoint in one rename: a kill at any moment leaves the previous checkpoint or the new one, whole.
    Everything else - ``monitor``, ``save_best_only``, ``mode``, file name patterns - is Keras'.

    >>> checkpoint = AtomicModelCheckpoint("TrainedModels/Run/Checkpoint.keras", monitor="val_loss",
    ...                                    save_best_only=True)
    >>> model.fit(x, y, validation_split=0.1, epochs=10, callbacks=[checkpoint])
    """

    def _save_model(self, epoch, batch, logs):  # Keras 3's one place that writes the file
        from pathlib import Path

        from dlkit.metadata import atomic_write

        filepath = Path(self._get_file_path(epoch, batch, logs))
        if not self._should_save_model(epoch, batch, logs, str(filepath)):
            return
        filepath.parent.mkdir(parents=True, exist_ok=True)
        save = self.model.save_weights if self.save_weights_only else self.model.save
        # Keras checks the suffix of the file it writes: keep the checkpoint's (.keras, .weights.h5)
        suffix = ".weights.h5" if filepath.name.endswith(".weights.h5") else filepath.suffix
        atomic_write(filepath, lambda tmp: save(str(tmp), overwrite=True), suffix=f".tmp{suffix}")
        if self.verbose > 0:
            logger.info("epoch %d: saved checkpoint %s", epoch + 1, filepath)
