"""Exceptions of the data pipeline: each names the file and dataset key it is about, never a raw h5py trace."""

from __future__ import annotations

__all__ = ["DataError", "GeneratorError", "GeneratorTimeoutError", "WorkerDiedError"]


class GeneratorError(RuntimeError):
    """Base class for data-pipeline failures."""


class DataError(GeneratorError):
    """Bad input data: missing file or key, inconsistent shapes, truncated or corrupt file.

    ``file`` and ``key`` say where; the message repeats them so a log line alone is enough.
    """

    def __init__(self, message: str, file: str | None = None, key: str | None = None, kind: str = "file"):
        self.file = None if file is None else str(file)
        self.key = key
        self.kind = kind  # what ``file`` names: "file" or "directory"
        self.reason = message
        where = []
        if file is not None:
            where.append(f"{kind} {str(file)!r}")
        if key is not None:
            where.append(f"key {key!r}")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)

    def __reduce__(self):
        return (type(self), (self.reason, self.file, self.key, self.kind))


class WorkerDiedError(GeneratorError):
    """A reader process exited (killed, out of memory, crashed) while the generator needed it."""


class GeneratorTimeoutError(GeneratorError, TimeoutError):
    """No reader made progress within the generator's ``timeout``."""
