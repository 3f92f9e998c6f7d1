"""Train calodnn's --Test run twice in this process - on one device, then with DataParallel over every device
this process sees - and print the largest difference of the final weights, the devices, and the size of the
uneven last training batch and what it was padded to (if there was one).

    XLA_FLAGS=--xla_force_host_platform_device_count=2 KERAS_BACKEND=jax \\
        python tests/scripts/data_parallel_same_weights.py DATA_DIR OUT_DIR [--set KEY=VALUE ...]

With ``KERAS_BACKEND=tensorflow`` the CPU is split into two logical devices before TensorFlow starts.
"""

import json
import os
import sys

if os.environ.get("KERAS_BACKEND") == "tensorflow":  # two logical CPUs, configured before TensorFlow initializes
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import numpy as np  # noqa: E402

from calodnn import ClassificationExperiment  # noqa: E402
from dlkit import distribute  # noqa: E402

PADDED = []  # the training batches EvenBatches padded: [events, padded to]
_feed = distribute.Devices.feed


def feed(self, data):
    fed = _feed(self, data)
    if isinstance(fed, distribute.EvenBatches) and not PADDED:  # the training generator comes first
        data.seek(len(data) - 1)  # the generator serves by position: the epoch's last batch
        PADDED.extend([distribute._last_batch(data), len(fed[len(fed) - 1][1])])
        data.seek(0)  # (as if it had not been read)
    return fed


distribute.Devices.feed = feed


def main(data, out, *extra):
    overrides = dict(arg.split("=", 1) for arg in extra)
    overrides = {k: json.loads(v) for k, v in overrides.items()}
    weights, described = [], []
    for parallel in (False, True):
        result = ClassificationExperiment.run(Test=True, data=data, OutputBase=os.path.join(out, str(parallel)),
                                              NoAnalysis=True, DataParallel=parallel, Deterministic=True,
                                              **overrides)
        assert result.exit_code == 0, result.exit_code
        weights.append(result.wrapper.Model.get_weights())
        described.append(result.wrapper.MetaData["Devices"])
    diff = max(float(np.max(np.abs(a - b))) for a, b in zip(*weights))
    print(json.dumps({"max_abs_diff": diff, "devices": described, "padded": PADDED}))


if __name__ == "__main__":
    main(*sys.argv[1:])
