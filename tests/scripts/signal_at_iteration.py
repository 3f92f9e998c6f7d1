"""Run an experiment's CLI; this process sends itself SIGTERM after optimizer iteration ``DLKIT_SIGNAL_AT``
(a real signal, handled by the run's GracefulExit as a batch system's would be), or ``DLKIT_SIGNAL`` (KILL:
a kill -9, before that batch's periodic checkpoint).

    DLKIT_SIGNAL_AT=34 python tests/scripts/signal_at_iteration.py calodnn.ClassificationExperiment --Test ...
"""

import importlib
import os
import signal
import sys

import keras

import dlkit.experiment as experiment

AT = int(os.environ["DLKIT_SIGNAL_AT"])
SIGNAL = signal.Signals[f"SIG{os.environ.get('DLKIT_SIGNAL', 'TERM')}"]
_training_callbacks = experiment.training_callbacks


class SignalAt(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        if int(keras.ops.convert_to_numpy(self.model.optimizer.iterations)) == AT:
            os.kill(os.getpid(), SIGNAL)


def training_callbacks(wrapper, config):
    return [*_training_callbacks(wrapper, config), SignalAt()]


if __name__ == "__main__":
    experiment.training_callbacks = training_callbacks
    module = importlib.import_module(sys.argv[1])
    sys.exit(module.cli(sys.argv[2:]))
