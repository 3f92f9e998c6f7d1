"""Shared-memory segments that cannot leak.

Segments are created by the consumer under a ``dlkit_<pid>_<token>`` name, attached by the readers
(without registering them with the resource tracker, which would otherwise unlink or warn at worker
exit), and *unlinked as soon as every reader has attached*: from then on nothing is left in /dev/shm
whatever happens to the processes, and the memory is returned when the last mapping goes away. Until
then multiprocessing's resource tracker is the safety net if the consumer is killed.
"""

from __future__ import annotations

import logging
import os
import secrets
from multiprocessing import resource_tracker, shared_memory

logger = logging.getLogger(__name__)

PREFIX = "dlkit_"
_SHM_DIR = "/dev/shm"


def _check_space(size: int) -> None:
    """Refuse early (a clear error) instead of a SIGBUS later when /dev/shm is too small."""
    if not os.path.isdir(_SHM_DIR):
        return
    try:
        st = os.statvfs(_SHM_DIR)
    except OSError:
        return
    free = st.f_bavail * st.f_frsize
    if size > free:
        from dlkit.generators.errors import GeneratorError

        raise GeneratorError(
            f"not enough shared memory: need {size / 2**20:.0f} MiB, {_SHM_DIR} has "
            f"{free / 2**20:.0f} MiB free (reduce batch_size, n_workers or queue_depth, or "
            f"enlarge {_SHM_DIR}, e.g. docker --shm-size)"
        )


def create(size: int) -> shared_memory.SharedMemory:
    """A new segment of ``size`` bytes."""
    size = max(int(size), 1)
    _check_space(size)
    while True:
        name = f"{PREFIX}{os.getpid()}_{secrets.token_hex(6)}"
        try:
            return shared_memory.SharedMemory(name=name, create=True, size=size)
        except FileExistsError:  # pragma: no cover - 48 random bits
            continue


def attach(name: str) -> shared_memory.SharedMemory:
    """Attach an existing segment without handing it to this process's resource tracker."""
    try:
        return shared_memory.SharedMemory(name=name, track=False)  # Python >= 3.13
    except TypeError:
        pass
    register = resource_tracker.register
    resource_tracker.register = lambda *args, **kwargs: None
    try:
        return shared_memory.SharedMemory(name=name)
    finally:
        resource_tracker.register = register


def unlink(shm: shared_memory.SharedMemory) -> None:
    """Remove the name from /dev/shm (idempotent); mappings stay valid."""
    if getattr(shm, "_dlkit_unlinked", False):
        return
    shm._dlkit_unlinked = True
    try:
        shm.unlink()  # also unregisters from the resource tracker
    except FileNotFoundError:
        pass
    except Exception as exc:  # pragma: no cover
        logger.debug("unlink %s: %s", shm.name, exc)


def close(shm: shared_memory.SharedMemory) -> None:
    """Unmap, or, if numpy views still export the buffer, leave the mapping to die with those views."""
    try:
        shm.close()
    except BufferError:
        # Views handed out are still alive (e.g. held by the caller or a TF tensor): drop our handles
        # without closing; the mmap is freed when the last view goes. The name is already unlinked.
        shm._buf = None
        shm._mmap = None
        try:
            if shm._fd >= 0:
                os.close(shm._fd)
        except OSError:
            pass
        shm._fd = -1


def detach_buffer(shm: shared_memory.SharedMemory):
    """Hand the segment's memory over to whoever holds views of the returned buffer.

    Returns a writable buffer (the mmap itself) whose views keep the memory alive after this
    SharedMemory object is gone; the SharedMemory object becomes inert. Used for ``read_all`` results,
    which must outlive the generator.
    """
    mm = shm._mmap
    if shm._buf is not None:
        shm._buf.release()
        shm._buf = None
    shm._mmap = None
    if shm._fd >= 0:
        os.close(shm._fd)
        shm._fd = -1
    return mm


def list_ours() -> list[str]:
    """Names of dlkit segments currently in /dev/shm (for tests and diagnostics)."""
    try:
        return sorted(n for n in os.listdir(_SHM_DIR) if n.startswith(PREFIX))
    except OSError:
        return []
