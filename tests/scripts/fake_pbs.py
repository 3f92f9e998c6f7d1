#!/usr/bin/env python3
"""A fake PBS for tests/test_scan_slurm.py: linked as qsub, qstat and qdel into a directory put first on PATH.

Each call appends {"prog": ..., "argv": [...]} as a JSON line to $FAKE_PBS_LOG. qsub prints $FAKE_QSUB_ID
(default 4242[].fakepbs), qstat prints the file $FAKE_QSTAT_FILE (if set), qdel prints nothing.
"""

import json
import os
import sys

prog = os.path.basename(sys.argv[0])
with open(os.environ["FAKE_PBS_LOG"], "a") as log:
    log.write(json.dumps({"prog": prog, "argv": [prog, *sys.argv[1:]]}) + "\n")
if prog == "qsub":
    print(os.environ.get("FAKE_QSUB_ID", "4242[].fakepbs"))
elif prog == "qstat" and os.environ.get("FAKE_QSTAT_FILE"):
    with open(os.environ["FAKE_QSTAT_FILE"]) as f:
        sys.stdout.write(f.read())
