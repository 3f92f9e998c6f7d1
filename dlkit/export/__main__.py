"""``python -m dlkit.export RUN_DIR ...``: ``dlkit-export`` (see :mod:`dlkit.export.cli`)."""

import sys

from dlkit.export.cli import export_main

if __name__ == "__main__":
    sys.exit(export_main())
