"""dlkit.generators with Keras: fit/evaluate on MultiClassGenerator, exact epochs under Keras' iteration.

Keras (TF backend) probes two batches for the tensor signature before the first epoch, calls
``__getitem__`` from tf.data threads in shuffled index order and wraps aligned arrays without copying;
the generator must still give every event exactly once per Keras epoch, and no batch may be overwritten
while TensorFlow holds it.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
from test_generators import h5dir, no_leftovers  # noqa: F401 - fixtures

from dlkit.generators import MultiClassGenerator, Select, make_samples_from_dirs, split_samples

keras = pytest.importorskip("keras")


class Recording(Select):
    """Select that also records the event ids Keras receives, and a checksum of the inputs."""

    def __init__(self, *args):
        super().__init__(*args)
        self.seen = []
        self.lock = threading.Lock()

    def __call__(self, arrays):
        with self.lock:
            self.seen.append((arrays["id"].copy(), float(arrays["X"].sum(dtype=np.float64))))
        return super().__call__(arrays)


def small_model():
    keras.utils.set_random_seed(0)
    x = keras.Input((4, 3), name="X")
    h = keras.Input((5,), name="H")
    z = keras.layers.Concatenate()([keras.layers.Flatten()(x), keras.ops.cast(h, "float32")])
    out = keras.layers.Dense(4, activation="softmax")(keras.layers.Dense(8, activation="relu")(z))
    m = keras.Model([x, h], out)
    m.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    return m


@pytest.mark.timeout(240)
def test_fit_with_validation_every_event_once_per_keras_epoch(h5dir):  # noqa: F811
    samples = make_samples_from_dirs(h5dir, ["X", "H", "id"])
    train, val = split_samples(samples, [0.75, 0.25], seed=2)
    rec_t, rec_v = Recording(["X", "H"], "onehot"), Recording(["X", "H"], "onehot")
    epochs = 3
    with (
        MultiClassGenerator(train, 32, n_workers=2, postprocess=rec_t, seed=1) as tgen,
        MultiClassGenerator(val, 32, n_workers=1, postprocess=rec_v, seed=1) as vgen,
    ):
        ids_train = np.sort(tgen.read_all()["id"])
        ids_val = np.sort(vgen.read_all()["id"])
        model = small_model()
        hist = model.fit(tgen, validation_data=vgen, epochs=epochs, verbose=0)
        assert np.all(np.isfinite(hist.history["loss"])) and len(hist.history["val_loss"]) == epochs
        n, nv = len(tgen), len(vgen)
        # Keras' two signature probes come first; they are served again when the epoch starts
        assert len(rec_t.seen) == 2 + epochs * n
        for e in range(epochs):
            got = np.concatenate([i for i, _ in rec_t.seen[2 + e * n : 2 + (e + 1) * n]])
            assert np.array_equal(np.sort(got), ids_train), f"train epoch {e}"
        assert len(rec_v.seen) == 2 + epochs * nv
        for e in range(epochs):
            got = np.concatenate([i for i, _ in rec_v.seen[2 + e * nv : 2 + (e + 1) * nv]])
            assert np.array_equal(np.sort(got), ids_val), f"validation epoch {e}"
        # evaluate() probes again and then reads one exact epoch
        before = len(rec_v.seen)
        model.evaluate(vgen, verbose=0)
        got = np.concatenate([i for i, _ in rec_v.seen[before + 2 :]])
        assert np.array_equal(np.sort(got), ids_val)
        assert len(tgen._engine.slots) <= tgen._engine.max_slots


@pytest.mark.timeout(240)
def test_zero_copy_batches_are_not_overwritten_while_tensorflow_holds_them(h5dir):  # noqa: F811
    """Predictions on generator batches equal predictions on the same data read with plain h5py."""
    samples = make_samples_from_dirs(h5dir, ["X", "H", "id"])
    with MultiClassGenerator(
        samples, 16, n_workers=2, queue_depth=1, shuffle=False, postprocess=Select(["X", "H"]), seed=3
    ) as gen:
        model = small_model()
        pred = model.predict(gen, verbose=0)
        data = gen.read_all()
    ref = model.predict([data["X"], data["H"]], batch_size=64, verbose=0)
    # unshuffled batches interleave classes by their counts; compare as sets of rows (sorted by id)
    order = np.argsort(data["id"])
    with MultiClassGenerator(samples, 16, n_workers=1, shuffle=False) as gen2:
        ids = np.concatenate([b["id"].copy() for b in gen2])
    assert np.allclose(pred[np.argsort(ids)], ref[order], atol=1e-5)
