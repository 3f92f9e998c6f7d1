"""Spawned worker processes that start, or say in one line why they could not.

dlkit starts its worker processes (the generator's readers, the simulators' pools) with ``spawn``: the parent
may hold threads (Keras). A spawned child normally imports the parent's main module again before it runs
anything, which goes wrong three ways: a script without ``if __name__ == "__main__":`` runs its whole code
again in every child (each of which then fails starting processes of its own), code piped to ``python -``
cannot be imported at all, and a main module that fails to import kills the child. Python's own pools then
start new children without end.

So dlkit hides ``__main__`` while it starts children whenever what they run comes from library modules
(:func:`spawn_environment`, :func:`needs_main`); and where a child must import the main module and dies
starting, :func:`start_failure` says what happened and what to do, for the caller to raise.
"""

from __future__ import annotations

import ast
import contextlib
import os
import pickle
import sys
import types

__all__ = ["THREAD_ENV", "has_main_guard", "needs_main", "spawn_environment", "start_failure"]

THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS")


def needs_main(payload) -> bool:
    """Whether unpickling ``payload`` (bytes, or an object to pickle) in a child needs the main module."""
    data = payload if isinstance(payload, bytes) else pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
    return b"__main__" in data


@contextlib.contextmanager
def spawn_environment(hide_main: bool, one_thread: bool = False):
    """While processes start: with ``hide_main``, an empty ``__main__`` (the children do not import the user's
    script again: no second run of an unguarded script, no TensorFlow import in each child); with
    ``one_thread``, one BLAS/OpenMP thread per child unless the environment says otherwise."""
    saved_env = {k: os.environ.get(k) for k in THREAD_ENV}
    if one_thread:
        for k in THREAD_ENV:
            os.environ.setdefault(k, "1")
    main = sys.modules.get("__main__")
    if hide_main and main is not None:
        sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        if hide_main and main is not None:
            sys.modules["__main__"] = main
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def has_main_guard(path: str | os.PathLike) -> bool:
    """Whether the script at ``path`` has a top-level ``if __name__ == "__main__":`` (True if unreadable)."""
    try:
        tree = ast.parse(open(path, encoding="utf-8").read())  # noqa: SIM115 - read once
    except (OSError, SyntaxError, ValueError):
        return True
    for node in tree.body:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Compare) and len(node.test.comparators) == 1:
            sides = [node.test.left, node.test.comparators[0]]
            names = {s.id for s in sides if isinstance(s, ast.Name)}
            texts = {s.value for s in sides if isinstance(s, ast.Constant)}
            if names == {"__name__"} and texts == {"__main__"}:
                return True
    return False


def start_failure(what: str, main_needed: bool = True) -> str:
    """One line for ``what`` (e.g. "reader process 0") having died while starting: the likely cause, from the
    main module the children had to import, and what to do."""
    guard = 'if __name__ == "__main__":'
    if not main_needed:
        return f"{what} died while starting (its error is above)"
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if path is None or not os.path.isfile(path):
        return (f"{what} could not start: spawned processes import what they run from the main module, and code "
                f"piped to `python -` or given with -c cannot be imported again; save it as a script with its code "
                f"under `{guard}`, or define the functions dlkit runs in a module")
    if not has_main_guard(path):
        return (f"{what} could not start: spawned processes import the main script {path} again, and without "
                f"`{guard}` its code runs again in each of them; put the script's code under `{guard}`")
    return (f"{what} could not start while importing the main script {path} (its error is above); fix that "
            f"error, or define the functions dlkit runs in a module")
