"""Targets for the tests' spawned processes. Kept apart from the test modules, which import Keras: a spawned
process imports the module of its target, and eight TensorFlow imports at once on a loaded machine take minutes."""

from dlkit.metadata import claim_run_dir


def claim(base, barrier, queue):
    """Claim ``base/Race[.n]`` at the same moment as the other processes at ``barrier``."""
    barrier.wait()
    queue.put(str(claim_run_dir(base, "Race")))
