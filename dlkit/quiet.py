"""Import Keras (and its backend) without TensorFlow's start-up noise in the user's log.

TensorFlow's C++ start-up lines (oneDNN, "Could not find cuda drivers", cpu_feature_guard, cuDNN/cuFFT/cuBLAS
factory registration, ...) are written to file descriptor 2 before absl's logging is initialised, so
``TF_CPP_MIN_LOG_LEVEL`` cannot hide them. :func:`import_keras` imports Keras with fd 2 captured and writes back
every line except those (an import error, a real warning still reach stderr), and sets
``TF_CPP_MIN_LOG_LEVEL=2`` (unless set) for the later C++ lines such as "GeneratorDataset ... finalizing".

    from dlkit.quiet import import_keras
    keras = import_keras()      # call it once the device choice (CUDA_VISIBLE_DEVICES) is made
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import sys
import tempfile

__all__ = ["NOISE", "filtered_stderr", "import_keras"]

#: The start-up lines of TensorFlow (and XLA/CUDA stubs) that say nothing to a dlkit user.
NOISE = re.compile(
    r"All log messages before absl::InitializeLog\(\) is called"
    r"|oneDNN custom operations are on"
    r"|Could not find cuda drivers on your machine"
    r"|failed call to cuInit"
    r"|cpu_feature_guard\.cc"
    r"|^To enable the following instructions: .* rebuild TensorFlow"
    r"|Unable to register cu(DNN|FFT|BLAS) factory"
    r"|TF-TRT Warning: Could not find TensorRT"
    r"|computation placer already registered"
)


@contextlib.contextmanager
def filtered_stderr(noise: re.Pattern = NOISE):
    """Capture file descriptor 2 (C++ writes too) for the block; write back the lines ``noise`` does not match."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            kept = [line for line in capture.read().decode(errors="replace").splitlines(keepends=True)
                    if not noise.search(line)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


def import_keras():
    """``import keras`` with TensorFlow's start-up noise filtered out (a no-op once Keras is imported)."""
    if "keras" in sys.modules:
        return sys.modules["keras"]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with filtered_stderr():
        import keras
        keras.ops.zeros(())  # the backend's runtime starts here (TF prints its second batch of lines)
        if keras.backend.backend() != "tensorflow" and importlib.util.find_spec("tensorflow") is not None:
            # on JAX and torch, keras.utils.set_random_seed imports TensorFlow too when it is installed
            import tensorflow  # noqa: F401
    return keras
