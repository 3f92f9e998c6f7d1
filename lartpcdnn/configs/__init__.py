"""Default scan configs of lartpcdnn (plain Python files defining ``Config`` and ``Params``)."""

from pathlib import Path

CONFIG_DIR = Path(__file__).parent
