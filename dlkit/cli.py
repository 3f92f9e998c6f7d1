"""What dlkit's command-line shells share (ground floor: no Keras, nothing above ``dlkit.config``)."""

from __future__ import annotations

import os
import sys

__all__ = ["prog", "plural"]


def prog(module: str) -> str:
    """The name a CLI's usage line shows: the console script it was started as (``calodnn-classify``, found
    beside the interpreter, as pip installs it), else ``python -m <module>``."""
    argv0 = sys.argv[0] if sys.argv else ""
    if argv0 and not argv0.endswith(".py") and \
            os.path.dirname(os.path.abspath(argv0)) == os.path.dirname(os.path.abspath(sys.executable)):
        return os.path.basename(argv0)
    return f"python -m {module}"


def plural(n: int, word: str, words: str | None = None) -> str:
    """``1 run``, ``2 runs`` (``words``: an irregular plural)."""
    return f"{n} {word if n == 1 else (words or word + 's')}"
