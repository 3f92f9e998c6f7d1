"""dlkit.callbacks: time budget, signal handling and per-class AUC on tiny models."""

import logging
import os
import signal
import threading
import time
import types
import warnings

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

keras = pytest.importorskip("keras")

from dlkit import callbacks as cb  # noqa: E402

N, FEATURES, BATCH = 64, 4, 8  # 8 batches per epoch


def _data(seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(N, FEATURES)).astype("float32"), rng.normal(size=(N, 1)).astype("float32")


def _regressor():
    model = keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    return model


class BatchCounter(keras.callbacks.Callback):
    """Counts train batches; optionally sleeps or runs an action after a given batch."""

    def __init__(self, sleep=0.0, action=None, at_batch=None):
        super().__init__()
        self.batches = 0
        self.sleep = sleep
        self.action = action
        self.at_batch = at_batch

    def on_train_batch_end(self, batch, logs=None):
        self.batches += 1
        if self.sleep:
            time.sleep(self.sleep)
        if self.action is not None and self.batches == self.at_batch:
            self.action()


# --------------------------------------------------------------------------------------------
# TimeStopping
# --------------------------------------------------------------------------------------------


def test_time_stopping_stops_slow_fit():
    x, y = _data()
    slow = BatchCounter(sleep=0.02)  # >= 0.16 s per epoch
    stopper = cb.TimeStopping(seconds=0.6)
    history = _regressor().fit(x, y, batch_size=BATCH, epochs=100, verbose=0, callbacks=[slow, stopper])
    n_epochs = len(history.epoch)
    assert 1 <= n_epochs < 100
    assert stopper.stop_reason is not None and "time limit" in stopper.stop_reason
    assert stopper.stopped_epoch == n_epochs - 1
    assert len(stopper.epoch_times) == n_epochs and stopper.history is stopper.epoch_times
    assert all(t >= 8 * 0.02 * 0.9 for t in stopper.epoch_times[:-1])


def test_time_stopping_zero_budget_stops_after_first_batch():
    x, y = _data()
    counter = BatchCounter()
    stopper = cb.TimeStopping(seconds=0)
    history = _regressor().fit(x, y, batch_size=BATCH, epochs=5, verbose=0, callbacks=[counter, stopper])
    assert counter.batches == 1 and len(history.epoch) == 1
    assert "batch 1" in stopper.stop_reason


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(time, "monotonic", fake)  # the clock of dlkit.callbacks.time_stopping
    return fake


def _attach(callback):
    model = types.SimpleNamespace(stop_training=False)
    callback.set_model(model)
    return model


def _run_epoch(callback, clock, epoch, duration, batches=4):
    callback.on_epoch_begin(epoch)
    for batch in range(batches):
        clock.now += duration / batches
        callback.on_train_batch_end(batch)
        if callback.model.stop_training:
            break
    callback.on_epoch_end(epoch, {})


def test_time_stopping_predicts_next_epoch(clock):
    stopper = cb.TimeStopping(seconds=10)
    model = _attach(stopper)
    stopper.on_train_begin()
    _run_epoch(stopper, clock, 0, 4.0)  # t = 4, 6 s left for a ~4 s epoch
    assert not model.stop_training and stopper.stop_reason is None
    _run_epoch(stopper, clock, 1, 4.0)  # t = 8, 2 s left
    assert model.stop_training
    assert "next epoch" in stopper.stop_reason and stopper.stopped_epoch == 1
    assert stopper.epoch_times == pytest.approx([4.0, 4.0])


def test_time_stopping_without_prediction_stops_mid_epoch(clock):
    stopper = cb.TimeStopping(seconds=10, predict_next_epoch=False)
    model = _attach(stopper)
    stopper.on_train_begin()
    _run_epoch(stopper, clock, 0, 4.0)
    _run_epoch(stopper, clock, 1, 4.0)
    assert not model.stop_training
    _run_epoch(stopper, clock, 2, 4.0)  # crosses 10 s at the 2nd batch (t = 10)
    assert model.stop_training and "batch 2" in stopper.stop_reason and "epoch 3" in stopper.stop_reason
    assert stopper.epoch_times[-1] == pytest.approx(2.0)


def test_time_stopping_no_limit_and_validation(clock):
    stopper = cb.TimeStopping(seconds=None)
    model = _attach(stopper)
    stopper.on_train_begin()
    clock.now += 1e9
    _run_epoch(stopper, clock, 0, 1.0)
    assert not model.stop_training and stopper.stop_reason is None
    with pytest.raises(ValueError, match="seconds"):
        cb.TimeStopping(seconds=-1)
    with pytest.raises(TypeError, match="seconds"):
        cb.TimeStopping(seconds="3600")


# --------------------------------------------------------------------------------------------
# GracefulExit
# --------------------------------------------------------------------------------------------

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


@pytest.fixture
def original_handlers():
    before = {s: signal.getsignal(s) for s in SIGNALS}
    yield before
    for s, handler in before.items():  # safety net if a test failed half-way
        if signal.getsignal(s) != handler:
            signal.signal(s, handler)


def test_exit_code_constant():
    assert cb.EXIT_CODE_INTERRUPTED == 75
    assert cb.GracefulExit.EXIT_CODE == cb.EXIT_CODE_INTERRUPTED


def test_graceful_exit_stops_after_current_batch(original_handlers):
    x, y = _data()
    graceful = cb.GracefulExit()
    seen = {}

    def send():
        seen["during"] = signal.getsignal(signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGUSR1)

    counter = BatchCounter(action=send, at_batch=3)
    history = _regressor().fit(x, y, batch_size=BATCH, epochs=3, verbose=0, callbacks=[counter, graceful])
    assert seen["during"] == graceful._handle  # installed during fit
    assert counter.batches == 3  # the batch in which the signal arrived was the last one
    assert len(history.epoch) == 1
    assert graceful.interrupted
    assert graceful.received_signal == signal.SIGUSR1 and graceful.signal_name == "SIGUSR1"
    assert graceful.stop_reason == "signal SIGUSR1"
    assert {s: signal.getsignal(s) for s in SIGNALS} == original_handlers


def test_graceful_exit_without_signal(original_handlers):
    x, y = _data()
    graceful = cb.GracefulExit(signals=["SIGTERM", "USR1"])
    assert graceful.signals == (signal.SIGTERM, signal.SIGUSR1)
    history = _regressor().fit(x, y, batch_size=32, epochs=2, verbose=0, callbacks=[graceful])
    assert len(history.epoch) == 2
    assert not graceful.interrupted and graceful.stop_reason is None and graceful.received_signal is None
    assert {s: signal.getsignal(s) for s in SIGNALS} == original_handlers


def test_graceful_exit_second_signal_forces_quit(original_handlers):
    with cb.GracefulExit() as graceful:
        assert signal.getsignal(signal.SIGTERM) == graceful._handle
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)
        assert graceful.received_signal == signal.SIGTERM and graceful.stop_reason == "signal SIGTERM"
        os.kill(os.getpid(), signal.SIGUSR1)  # another kind: only logged
        time.sleep(0.01)
        assert graceful.received_signal == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.01)
        assert not graceful.installed  # handlers were restored before raising
    assert {s: signal.getsignal(s) for s in SIGNALS} == original_handlers


def test_graceful_exit_restore_and_context_manager(original_handlers):
    graceful = cb.GracefulExit(signals=[signal.SIGUSR1])
    assert graceful.install()
    assert signal.getsignal(signal.SIGUSR1) == graceful._handle
    graceful.restore()
    graceful.restore()  # idempotent
    assert signal.getsignal(signal.SIGUSR1) == original_handlers[signal.SIGUSR1]
    # Signal between entering the context and fit: fit stops after its first batch.
    x, y = _data()
    counter = BatchCounter()
    with graceful:
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(0.01)
        _regressor().fit(x, y, batch_size=BATCH, epochs=2, verbose=0, callbacks=[counter, graceful])
        assert graceful.installed  # fit does not restore what the context manager installed
    assert counter.batches == 1 and graceful.interrupted
    assert signal.getsignal(signal.SIGUSR1) == original_handlers[signal.SIGUSR1]


def test_graceful_exit_outside_main_thread(original_handlers, caplog):
    graceful = cb.GracefulExit()
    result = {}

    def worker():
        result["installed"] = graceful.install()
        graceful.set_model(types.SimpleNamespace(stop_training=False))
        graceful.on_train_begin()
        graceful.on_train_end()

    with caplog.at_level(logging.WARNING, logger="dlkit.callbacks"):
        thread = threading.Thread(target=worker)
        thread.start()
        thread.join()
    assert result["installed"] is False
    assert "main thread" in caplog.text
    assert {s: signal.getsignal(s) for s in SIGNALS} == original_handlers


# --------------------------------------------------------------------------------------------
# AUCCallback
# --------------------------------------------------------------------------------------------


def _classification_data(n_classes=3, n=120, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % n_classes
    rng.shuffle(labels)
    x = rng.normal(size=(n, FEATURES)).astype("float32")
    x[:, 0] += labels  # a learnable signal, so AUCs differ from 0.5
    return x, labels


def _classifier(n_outputs, activation="softmax", seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dense(n_outputs, activation=activation)])
    loss = "categorical_crossentropy" if n_outputs > 1 else "binary_crossentropy"
    model.compile(optimizer="adam", loss=loss)
    return model


def test_auc_callback_logs_match_sklearn_and_feed_early_stopping():
    names = ["Ele", "ChPi", "Gamma"]
    x, labels = _classification_data()
    onehot = np.eye(3, dtype="float32")[labels]
    model = _classifier(3)
    auc = cb.AUCCallback((x, onehot), class_names=names, batch_size=50)
    early = keras.callbacks.EarlyStopping(monitor="val_auc_Ele", mode="max", patience=10)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = model.fit(x, onehot, batch_size=40, epochs=2, verbose=0, callbacks=[auc, early])
    assert not [w for w in caught if "not available" in str(w.message)]

    pred = model.predict(x, verbose=0)
    expected = {f"val_auc_{n}": roc_auc_score(onehot[:, i], pred[:, i]) for i, n in enumerate(names)}
    for key, value in expected.items():
        assert len(history.history[key]) == 2
        assert history.history[key][-1] == pytest.approx(value, abs=1e-6)
        assert auc.history[key] == history.history[key]
    assert history.history["val_auc_mean"][-1] == pytest.approx(np.mean(list(expected.values())), abs=1e-6)
    assert early.best == pytest.approx(max(history.history["val_auc_Ele"]))


class ListDataset(keras.utils.PyDataset):
    def __init__(self, batches):
        super().__init__()
        self.batches = batches

    def __len__(self):
        return len(self.batches)

    def __getitem__(self, index):
        return self.batches[index]


class EndlessWithLength:
    """Yields its batches forever but claims a length: only len() batches may be used."""

    def __init__(self, batches):
        self.batches = batches

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        while True:
            yield from self.batches


def _dict_input_model():
    keras.utils.set_random_seed(1)
    inp = keras.Input((FEATURES,), name="calo")
    model = keras.Model({"calo": inp}, keras.layers.Dense(3, activation="softmax")(inp))
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    return model


@pytest.mark.parametrize("kind", ["arrays", "pydataset", "endless"])
def test_auc_callback_inputs(kind):
    x, labels = _classification_data()
    model = _dict_input_model()
    pred = model.predict({"calo": x}, verbose=0)
    expected = [roc_auc_score(labels == i, pred[:, i]) for i in range(3)]
    batches = [({"calo": x[i : i + 40]}, labels[i : i + 40]) for i in range(0, len(x), 40)]
    if kind == "arrays":
        data = ({"calo": x}, labels)  # integer class indices
    elif kind == "pydataset":
        data = ListDataset(batches)
    else:
        data = EndlessWithLength(batches)
    auc = cb.AUCCallback(data)
    auc.set_model(model)
    result = auc.compute()
    assert list(result) == ["val_auc_0", "val_auc_1", "val_auc_2", "val_auc_mean"]
    np.testing.assert_allclose([result[f"val_auc_{i}"] for i in range(3)], expected, atol=1e-6)


def test_auc_callback_binary_sigmoid():
    x, labels = _classification_data(n_classes=2)
    model = _classifier(1, activation="sigmoid")
    pred = model.predict(x, verbose=0)[:, 0]
    auc = cb.AUCCallback((x, labels.reshape(-1, 1)), class_names=["Pi0", "Gamma"], prefix="auc_")
    auc.set_model(model)
    result = auc.compute()
    assert list(result) == ["auc_Gamma"]
    assert result["auc_Gamma"] == pytest.approx(roc_auc_score(labels, pred), abs=1e-6)


def test_auc_callback_absent_class_is_nan(caplog):
    x, labels = _classification_data(n_classes=2)  # labels 0 and 1 only, 3 output columns
    model = _classifier(3)
    pred = model.predict(x, verbose=0)
    auc = cb.AUCCallback((x, labels), class_names=["a", "b", "c"])
    auc.set_model(model)
    with caplog.at_level(logging.WARNING, logger="dlkit.callbacks"):
        logs = {}
        auc.on_epoch_end(0, logs)
    assert np.isnan(logs["val_auc_c"])
    assert "'c'" in caplog.text and "absent" in caplog.text
    expected = [roc_auc_score(labels == i, pred[:, i]) for i in range(2)]
    assert logs["val_auc_a"] == pytest.approx(expected[0], abs=1e-6)
    assert logs["val_auc_mean"] == pytest.approx(np.mean(expected), abs=1e-6)


def test_auc_callback_bad_class_names():
    x, labels = _classification_data()
    auc = cb.AUCCallback((x, labels), class_names=["only", "two"])
    auc.set_model(_classifier(3))
    with pytest.raises(ValueError, match="class_names"):
        auc.compute()
