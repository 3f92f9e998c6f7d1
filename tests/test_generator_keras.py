"""dlkit.generators with Keras: fit/evaluate/predict on MultiClassGenerator, exact epochs on every backend.

Keras fetches batches the generator must not count as training: TensorFlow probes two for the tensor
signature outside any epoch, JAX and torch fetch one inside an epoch that ``reset()`` then ends, to build the
model symbolically. Whatever the trainer does, every Keras epoch must train on every event exactly once, and
no batch may be overwritten while the backend holds it. The checks do not count the probes: they read what
the epochs and the optimizer actually saw.
"""

from __future__ import annotations

import threading
import warnings

import h5py
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


def h5_part(specs, key):
    """``key`` of every event of a split part, read with plain h5py (file order)."""
    out = []
    for s in specs:
        with h5py.File(s.file, "r") as f:
            out.append(f[key][s.start : s.stop])
    return np.concatenate(out)


def last_epochs(seen, n_batches, epochs):
    """The event ids of each of the last ``epochs`` epochs of ``n_batches`` batches the generator served
    (whatever the trainer fetched before them)."""
    assert len(seen) >= epochs * n_batches
    tail = seen[len(seen) - epochs * n_batches :]
    return [np.sort(np.concatenate([i for i, _ in tail[e * n_batches : (e + 1) * n_batches]])) for e in range(epochs)]


class SumOfOutputs(keras.losses.Loss):
    """The model's output summed over the batch: with a bias-free linear model its gradient is the sum
    of the batch's inputs, whatever the weights, so plain SGD moves the kernel by -lr * (sum of every input
    trained on), independently of the order and the batching."""

    def __init__(self):
        super().__init__(reduction="sum", name="sum_of_outputs")

    def call(self, y_true, y_pred):
        return keras.ops.sum(y_pred, axis=-1)


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
        ids_train, ids_val = np.sort(h5_part(train, "id")), np.sort(h5_part(val, "id"))
        model = small_model()
        hist = model.fit(tgen, validation_data=vgen, epochs=epochs, verbose=0)
        assert np.all(np.isfinite(hist.history["loss"])) and len(hist.history["val_loss"]) == epochs
        for e, got in enumerate(last_epochs(rec_t.seen, len(tgen), epochs)):
            assert np.array_equal(got, ids_train), f"train epoch {e}"
        for e, got in enumerate(last_epochs(rec_v.seen, len(vgen), epochs)):
            assert np.array_equal(got, ids_val), f"validation epoch {e}"
        # evaluate() may probe again; then it reads one exact epoch
        model.evaluate(vgen, verbose=0)
        assert np.array_equal(last_epochs(rec_v.seen, len(vgen), 1)[0], ids_val)
        assert len(tgen._pool.slots) <= tgen._pool.max_slots


@pytest.mark.timeout(240)
def test_training_sees_every_event_once_per_epoch(h5dir):  # noqa: F811
    """What the optimizer trained on, not what was fetched: after E epochs of SGD on the sum of a linear
    model's outputs the kernel moved by -E * lr * (sum of every training event's inputs, read with h5py).
    A batch trained twice or never (an epoch shifted by a probe) moves it by a whole batch's sum more or less."""
    samples = make_samples_from_dirs(h5dir, ["X", "id"])
    train, _ = split_samples(samples, [0.75, 0.25], seed=2)
    ref = h5_part(train, "X").astype(np.float64).sum(axis=0)
    epochs, lr = 2, 1e-3
    x = keras.Input((4, 3), name="X")
    out = keras.layers.Dense(1, use_bias=False, kernel_initializer="zeros")(keras.layers.Flatten()(x))
    model = keras.Model(x, out)
    model.compile(optimizer=keras.optimizers.SGD(lr), loss=SumOfOutputs())
    # The model has one input tensor, so the batches carry the bare array (Select("X"), not Select(["X"]): a
    # 1-tuple for a single-tensor model is the structure mismatch Keras warns about).
    with MultiClassGenerator(train, 32, n_workers=2, postprocess=Select("X", "onehot"), seed=4) as gen, \
            warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(gen, epochs=epochs, verbose=0)
    assert not [w for w in caught if "structure of `inputs`" in str(w.message)]
    kernel = keras.ops.convert_to_numpy(model.layers[-1].kernel)[:, 0]
    assert np.allclose(kernel, -epochs * lr * ref.reshape(-1), rtol=1e-4, atol=1e-4)


@pytest.mark.timeout(120)
def test_an_epoch_that_ends_early_is_served_again_from_its_first_batch(h5dir):  # noqa: F811
    """The trainers' patterns without a trainer: a bracket that fetches a batch and ends (JAX/torch's symbolic
    build), a ``break`` out of an epoch, batches fetched outside any epoch (TensorFlow's probes): the next epoch
    is still the generator's epoch from its first batch, the same batches an undisturbed generator serves."""
    samples = make_samples_from_dirs(h5dir, ["X", "id"])
    ids = np.sort(h5_part(samples, "id"))

    def epoch(gen):
        gen.on_epoch_begin()
        got = [gen[i]["id"].copy() for i in range(len(gen))]
        gen.on_epoch_end()
        return got

    with MultiClassGenerator(samples, 64, n_workers=1, seed=5) as ref:
        expected = [epoch(ref), epoch(ref)]
    with MultiClassGenerator(samples, 64, n_workers=1, seed=5) as gen:
        gen.on_epoch_begin()
        gen[0]
        gen.on_epoch_end()  # a one-batch bracket
        first = epoch(gen)
        for k, _ in enumerate(gen):  # a break after 3 batches of the second epoch
            if k == 2:
                break
        gen[0], gen[1]  # outside any epoch
        second = epoch(gen)
    for got, want in zip((first, second), expected, strict=True):
        assert np.array_equal(np.sort(np.concatenate(got)), ids)
        assert all(np.array_equal(a, b) for a, b in zip(got, want, strict=True))


@pytest.mark.timeout(240)
def test_zero_copy_batches_are_not_overwritten_while_the_backend_holds_them(h5dir):  # noqa: F811
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
