"""One user's part of tests/test_cachedir.py, run as that user in a subprocess (not a test module).

``cache_user_run.py OUT locate``: where this user's caches go (``dlkit.cachedir.cache_location``).
``cache_user_run.py OUT gen SPEC_JSON``: for each ``{"cache": "default" | DIR, "files": [...]}`` in SPEC_JSON,
one generator (cache on) read for two epochs; per run the rows seen (id -> x), the cache path and the log.
Errors go through ``dlkit.experiment.run_main``: one line on stderr, exit code 2. The result goes to OUT (JSON).
"""

import json
import logging
import sys

from dlkit.experiment import run_main


def main(argv):
    out, mode, *rest = argv
    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(f"{record.levelname} {record.getMessage()}")

    logging.getLogger("dlkit").addHandler(Keep())
    logging.getLogger("dlkit").setLevel(logging.INFO)
    if mode == "locate":
        from dlkit.cachedir import cache_location

        loc = cache_location()
        result = {"write": str(loc.write), "shared": None if loc.shared is None else str(loc.shared), "log": records}
    else:
        from dlkit.generators import MultiClassGenerator, SampleSpec

        result = []
        for run in json.loads(rest[0]):
            del records[:]
            specs = [SampleSpec(f, ["x", "id"], f"c{i}") for i, f in enumerate(run["files"])]
            cache = True if run["cache"] == "default" else run["cache"]
            epochs = []
            with MultiClassGenerator(specs, 16, n_workers=1, cache=cache) as gen:
                for _ in range(2):
                    rows = {}
                    for b in gen:
                        rows.update({str(int(i)): [float(v) for v in x] for i, x in zip(b["id"], b["x"])})
                    epochs.append(rows)
                result.append({"epochs": epochs, "cache_path": str(gen.cache_path), "cache_dir": str(gen.cache_dir),
                               "workers": gen.worker_pids, "log": list(records)})
    with open(out, "w") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, sys.argv[1:]))
