"""``python -m dlkit.scan`` (also ``dlkit-scan``): run, see, retry and cancel a scan.

    dlkit-scan run --experiment calodnn.ClassificationExperiment --points 0-3 --slots 2 -- --Test
    dlkit-scan search my_search.py --experiment calodnn.ClassificationExperiment --trials 20 --parallel 2 \
        --objective Gamma_AUC --direction maximize -- --Test
    dlkit-scan best TrainedModels.Test
    dlkit-scan status TrainedModels [--watch]
    dlkit-scan retry TrainedModels
    dlkit-scan cancel TrainedModels

Exit status of ``run``: 0 every point done; 1 some failed or stuck (see ``status``); 75 stopped by a signal or
``cancel`` (run the same command again to resume); 2 a usage or configuration error.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

from dlkit.protocol import EXIT_CTRL_C, EXIT_OK, EXIT_SOME_FAILED, EXIT_USER_ERROR


def _add_target(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", metavar="SCAN_OR_OUTPUTBASE",
                   help="an OutputBase (e.g. TrainedModels), its .dlkit-scan/ or one scan's ledger directory")
    p.add_argument("--name", default=None, help="the scan under OutputBase (default: all of them)")


def _add_engine_options(r: argparse.ArgumentParser) -> None:
    """What ``run`` and ``search`` share: the experiment, the scan's name and OutputBase, the engine options."""
    r.add_argument("--experiment", required=True, metavar="MODULE",
                   help="a dlkit experiment module (calodnn.ClassificationExperiment) or a .py file")
    r.add_argument("--name", default=None,
                   help="scan name (default: <experiment>-<config file stem>); its ledger is "
                        "<OutputBase>/.dlkit-scan/<name>/")
    r.add_argument("--OutputBase", default=None, metavar="DIR",
                   help="where the models (and the ledger) go (default TrainedModels; TrainedModels.Test with "
                        "--Test among the experiment flags)")
    r.add_argument("--engine", default="local",
                   help="where points run: local (default), slurm, pbs, dask")
    r.add_argument("--slots", type=int, default=None, metavar="K",
                   help="points run at once (default: #gpus or 1; cluster engines: the array's %%K, no limit)")
    r.add_argument("--gpus", default=None, metavar="LIST",
                   help="GPU ids, e.g. 0,1,2,3: one slot per GPU (CUDA_VISIBLE_DEVICES)")
    r.add_argument("--threads-per-point", type=int, default=None, metavar="T",
                   help="CPU threads per point without --gpus (default: CPU count / slots)")
    r.add_argument("--max-retries", type=int, default=None, metavar="N",
                   help="retries of a crashing point (2); set when the scan is created")
    r.add_argument("--lease-timeout", type=float, default=None, metavar="SECONDS",
                   help="a point whose worker sent no heartbeat for this long is taken over (120); set when the "
                        "scan is created, the same for all its workers")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    q = r.add_argument_group("cluster engines (--engine slurm|pbs)",
                             "one job array of the points not yet final, --slots of them at once (%K); each task "
                             "runs its point through the ledger. Slurm's spelling for PBS too (--partition is the "
                             "queue, --time the walltime)")
    q.add_argument("--partition", default=None, help="partition (PBS: queue)")
    q.add_argument("--time", default=None, help="time limit per point's task, e.g. 4:00:00 (PBS: walltime)")
    q.add_argument("--gres", default=None, help="e.g. gpu:1 (PBS: ngpus / gpus)")
    q.add_argument("--ntasks-per-point", type=int, default=None, metavar="N",
                   help="Slurm: processes per point training one model together (DataParallel=True, JAX)")
    q.add_argument("--gpus-per-point", type=int, default=None, metavar="G",
                   help="Slurm: GPUs per point, split over its tasks")
    q.add_argument("--mem", default=None, help="memory per task, e.g. 16G")
    q.add_argument("--cpus-per-task", type=int, default=None, metavar="C", help="CPUs per task (PBS: ncpus / ppn)")
    q.add_argument("--account", default=None, help="account to charge (-A)")
    q.add_argument("--sbatch-extra", action="append", default=None, metavar="DIRECTIVE",
                   help="one more #SBATCH (or #PBS) line, e.g. --sbatch-extra=--qos=high; repeatable")
    q.add_argument("--signal-seconds", type=int, default=None, metavar="S",
                   help="Slurm: SIGUSR1 this long before the time limit; the point saves and the task requeues "
                        "itself (300)")
    q.add_argument("--dask-cluster", default=None, metavar="SPEC.yaml",
                   help="--engine dask: a cluster spec (cluster: LocalCluster|SLURMCluster|PBSCluster, jobs: N, "
                        "options: {...}); default a LocalCluster of --slots workers")
    q.add_argument("--pbs-flavor", choices=("pro", "torque"), default=None,
                   help="PBS Pro/OpenPBS (-J, PBS_ARRAY_INDEX) or Torque (-t, PBS_ARRAYID); default: from qstat")
    q.add_argument("--wait", action="store_true",
                   help="follow the scan to its end (progress bar); resubmit pending points when no job is left")


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dlkit-scan", description="Run every point of a dlkit scan exactly once.")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = p.add_subparsers(dest="command", required=True)
    _add_run(sub)
    _add_search(sub)
    b = sub.add_parser("best", help="the best trials of a search, with their params and objective")
    _add_target(b)
    b.add_argument("-n", type=int, default=5, help="how many per search (5)")
    b.add_argument("--tablefmt", default="simple", help="tabulate format (simple, github, ...)")
    s = sub.add_parser("status", help="one row per point: state, attempts, epochs, metric, run dir, host, error")
    _add_target(s)
    s.add_argument("--watch", nargs="?", type=float, const=2.0, default=None, metavar="SECONDS",
                   help="refresh every SECONDS (2) until every point is done, failed or stuck")
    s.add_argument("--state", default=None, help="only these states (comma list: pending,running,done,...)")
    s.add_argument("--tablefmt", default="simple", help="tabulate format (simple, github, ...)")
    _add_work(sub)
    t = sub.add_parser("retry", help="requeue the failed and stuck points (then run the scan again)")
    _add_target(t)
    c = sub.add_parser("cancel", help="stop a scan: running points save and exit; run again to resume")
    _add_target(c)
    return p


def _add_run(sub) -> None:
    r = sub.add_parser("run", help="run (or resume) a scan; extra experiment flags go after '--'",
                       description="Run the points of a scan that are not done yet. Everything after '--' is "
                                   "passed to every point (e.g. -- --Test --set Epochs=5). A later run with other "
                                   "--points adds them to the same scan.")
    r.add_argument("-C", "--config", default=None, help="the scan's config file (default: the experiment's)")
    r.add_argument("--points", default=None, metavar="LIST", help="a subset of the grid, e.g. 0-3,7 (default all)")
    r.add_argument("--metric", default=None,
                   help="main metric shown by status: a MetaData key (Ele_AUC) or History metric (val_loss)")
    _add_engine_options(r)


def _add_search(sub) -> None:
    f = sub.add_parser("search", help="random or Bayesian (TPE) search over a config's Search block",
                       description="Sample trials from the config file's Search block (dlkit.scan.space) with "
                                   "Optuna, each a ledger point run exactly once; a Params grid in the file is the "
                                   "outer loop. Run the same command again after a crash or kill to finish it. "
                                   "Everything after '--' is passed to every trial.")
    f.add_argument("config", metavar="CONFIG", help="config file with Config, a Search block and optionally Params")
    f.add_argument("--sampler", choices=("tpe", "random"), default="tpe", help="Optuna's TPE (default) or random")
    f.add_argument("--trials", type=int, required=True, metavar="N", help="trials (per grid point)")
    f.add_argument("--parallel", type=int, default=1, metavar="K", help="trials running at once (1)")
    f.add_argument("--objective", default="val_loss",
                   help="MetaData key (Gamma_AUC) or History metric (val_loss, the default) to optimise")
    f.add_argument("--direction", choices=("minimize", "maximize"), default=None,
                   help="default: minimize a loss, maximize anything else")
    f.add_argument("--seed", type=int, default=None, help="the sampler's seed (default: random)")
    f.add_argument("--pruner", choices=("median", "halving"), default=None,
                   help="stop poor trials early (Optuna's median or successive-halving pruner); default none")
    f.add_argument("--prune-metric", default="val_loss", metavar="METRIC",
                   help="the per-epoch metric the pruner compares (val_loss)")
    f.add_argument("--prune-direction", choices=("minimize", "maximize"), default=None,
                   help="whether --prune-metric is better low or high (default: from its name, like --direction)")
    f.add_argument("--points", default=None, metavar="LIST", help="grid points to search at (default all)")
    _add_engine_options(f)


def _add_work(sub) -> None:
    w = sub.add_parser("work", help="run points of an existing scan's ledger (what a Slurm/PBS array task runs)",
                       description="Join a scan as one more worker: run its points (or --points) until they are "
                                   "done or held by live workers. Exit 75 if stopped by a signal.")
    w.add_argument("ledger", metavar="LEDGER_DIR", help="<OutputBase>/.dlkit-scan/<scan name>")
    w.add_argument("--points", default=None, metavar="LIST", help="only these points (an array task: its index)")
    w.add_argument("--slots", type=int, default=None, metavar="K")
    w.add_argument("--gpus", default=None, metavar="LIST")
    w.add_argument("--threads-per-point", type=int, default=None, metavar="T")
    w.add_argument("--max-retries", type=int, default=None, metavar="N", help="(the scan's; checked against it)")
    w.add_argument("--lease-timeout", type=float, default=None, metavar="SECONDS",
                   help="(the scan's; checked against it)")
    w.add_argument("--wait-for-others", action="store_true",
                   help="keep going until every point is final, taking over those of workers that die")
    w.add_argument("--engine", default="local", help="recorded as the engine of the leases")
    w.add_argument("--parent-pid", type=int, default=None, metavar="PID",
                   help="stop (points save and are requeued) once PID is no longer this worker's parent")
    w.add_argument("--since", type=float, default=None, metavar="EPOCH_SECONDS",
                   help="obey a cancel asked after this time (default: when this worker starts)")


def _print_status(args) -> bool:
    """Print the tables; True when every point of every scan is final."""
    from tabulate import tabulate

    from dlkit.scan.ledger import FINAL_STATES, Ledger
    from dlkit.scan.api import STATUS_COLUMNS, status_rows

    all_final = True
    for ledger in Ledger.find(args.path, args.name):
        rows = status_rows(ledger)
        counts: dict[str, int] = {}
        for row in rows:
            counts[row["state"]] = counts.get(row["state"], 0) + 1
        all_final &= all(row["state"] in FINAL_STATES for row in rows)
        if args.state:
            wanted = {s.strip() for s in args.state.split(",")}
            rows = [row for row in rows if row["state"] in wanted]
        print(f"scan {ledger.name} ({ledger.path}): " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
        columns = list(STATUS_COLUMNS)
        if any("trial" in row for row in rows):  # a search: its trial number beside the point, the objective named
            columns.insert(1, "trial")
        columns += ["queue"] if any(row.get("queue") for row in rows) else []
        table = [[row.get(c) if row.get(c) is not None else "" for c in columns] for row in rows]
        metric = ledger.manifest().get("metric")
        headers = [metric if c == "metric" and metric else c for c in columns]
        print(tabulate(table, headers=headers, tablefmt=args.tablefmt, floatfmt=".4g"))
    return all_final


def _print_table(frame, title: str, tablefmt: str) -> None:
    from tabulate import tabulate

    print(f"{title}:")
    print(tabulate(frame.fillna("").values.tolist(), headers=list(frame.columns), tablefmt=tablefmt,
                   floatfmt=".4g") if len(frame) else "(no finished trial yet)")


def _print_best(args) -> int:
    from dlkit.scan.search import best

    for name, frame in best(args.path, args.name, n=args.n).groupby("scan", sort=False):
        _print_table(frame.drop(columns="scan"), f"search {name}: best trials", args.tablefmt)
    return EXIT_OK


def _gpus(text: str | None) -> list[str] | None:
    return [g.strip() for g in text.split(",") if g.strip()] if text else None


def _watch(args) -> int:
    """``status``, once or refreshed every ``--watch`` seconds until every point is final."""
    if args.watch is None:
        _print_status(args)
        return EXIT_OK
    while True:
        if sys.stdout.isatty():
            print("\033[H\033[2J", end="")
        print(time.strftime("%H:%M:%S"), flush=True)
        if _print_status(args):
            return EXIT_OK
        sys.stdout.flush()
        time.sleep(args.watch)


def _retry(args) -> int:
    from dlkit.scan.api import retry

    for name, points in retry(args.path, args.name).items():
        print(f"scan {name}: requeued {len(points)} point(s) {points}; run the scan again to run them")
    return EXIT_OK


def _cancel(args) -> int:
    from dlkit.scan.api import cancel

    for name in cancel(args.path, args.name):
        print(f"scan {name}: cancel requested; running points save and stop")
    return EXIT_OK


def _work(args) -> int:
    from dlkit.scan.api import work

    return work(args.ledger, points=args.points, slots=args.slots, gpus=_gpus(args.gpus),
                threads_per_point=args.threads_per_point, max_retries=args.max_retries,
                lease_timeout=args.lease_timeout, wait_for_others=args.wait_for_others, engine=args.engine,
                parent_pid=args.parent_pid, since=args.since)


def _launch(args, passthrough: list[str]):
    """``run`` or ``search``: their status frame."""
    cluster = {key: getattr(args, key) for key in ("partition", "time", "gres", "mem", "cpus_per_task", "account",
                                                   "sbatch_extra", "signal_seconds", "pbs_flavor", "wait",
                                                   "dask_cluster", "ntasks_per_point", "gpus_per_point")
               if getattr(args, key) not in (None, False)}
    common = dict(flags=passthrough, points=args.points, name=args.name, output_base=args.OutputBase,
                  engine=args.engine, slots=args.slots, gpus=_gpus(args.gpus),
                  threads_per_point=args.threads_per_point, max_retries=args.max_retries,
                  lease_timeout=args.lease_timeout, progress=False if args.no_progress else None, **cluster)
    if args.command == "search":
        from dlkit.scan.search import search

        return search(args.experiment, args.config, trials=args.trials, sampler=args.sampler,
                      objective=args.objective, direction=args.direction, parallel=args.parallel,
                      seed=args.seed, prune=args.pruner, prune_metric=args.prune_metric,
                      prune_direction=args.prune_direction, **common)
    from dlkit.scan.api import run

    return run(args.experiment, config=args.config, metric=args.metric, **common)


def _report(args, frame) -> int:
    """What ``run`` and ``search`` print at the end (stderr: stdout stays for tables), and their exit code."""
    from dlkit.scan.engines.array import compress_ranges

    for sub in frame.attrs.get("submitted", []):
        script = os.path.join(frame.attrs["ledger"], sub["script"])
        print(f"scan {frame['scan'].iloc[0]}: submitted {args.engine} job {sub['job']} for {len(sub['points'])} "
              f"point(s) {compress_ranges(sub['points'])} ({script})", file=sys.stderr)
    counts = frame["state"].value_counts().to_dict()
    print(f"scan {frame['scan'].iloc[0]}: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())),
          file=sys.stderr)
    if args.command == "search":
        _print_table(frame.attrs["best"].head(5), "best trials", "simple")
        for path in frame.attrs.get("plots", []):
            print(f"plot: {path}", file=sys.stderr)
    code = frame.attrs.get("exit_code", EXIT_OK)
    if code != EXIT_OK:
        print(f"dlkit-scan: stopped; run the same command again to resume (ledger: {frame.attrs['ledger']})",
              file=sys.stderr)
        return code
    return EXIT_SOME_FAILED if counts.get("failed") or counts.get("stuck") else EXIT_OK


_COMMANDS = {"status": _watch, "retry": _retry, "cancel": _cancel, "work": _work, "best": _print_best}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    passthrough: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, passthrough = argv[:cut], argv[cut + 1:]
    args = make_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING - 10 * min(args.verbose, 2),
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    from dlkit.scan.ledger import ScanError

    try:
        if args.command in _COMMANDS:
            return _COMMANDS[args.command](args)
        frame = _launch(args, passthrough)
    except (ScanError, ValueError) as exc:
        print(f"dlkit-scan: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        return EXIT_CTRL_C
    return _report(args, frame)


if __name__ == "__main__":
    sys.exit(main())
