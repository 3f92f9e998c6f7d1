"""The point models (dlkit.models) against the image models, at equal epochs, on calodnn's and lartpcdnn's
simulated data; the tables of issue 31 in BENCHMARKS.md ("Point models").

1. calodnn gamma/pi0: the AUC with its bootstrap 68 % interval and the training time per epoch of the dense
   network and the 3D CNN on the cell images, and of DeepSets, ParticleNet (EdgeConv) and the transformer on
   the same events' hit lists;
2. the multi-task network (classes and energy, one point model) against the single-task classifier and the
   single-task regression of the same model: the AUC, and sigma/E at fixed energies;
3. lartpcdnn: efficiency at 1 % fake per class (Clopper-Pearson) of the two-view CNN and the point models on
   the 3D deposits (:func:`lartpcdnn.point_study.compare_models`).

Every network trains through the experiments' Python API (``ClassificationExperiment.run``), so what is
measured is what a user runs::

    python bench/point_tables.py                   # both parts: bench/results/point_tables.md and BENCHMARKS.md
    python bench/point_tables.py --only calodnn    # one part (its subsection of BENCHMARKS.md "Point models")
    python bench/point_tables.py --events-per-class 1000 --epochs 3 --out /tmp/p.md --no-benchmarks   # quick
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from tabulate import tabulate  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from paper_tables import SIGMA_AT, machine, sigma_at_fixed_energies  # noqa: E402

log = logging.getLogger("point_tables")

IMAGE_MODELS = ("Dense", "CNN")
POINT_MODELS = ("DeepSets", "ParticleNet", "Transformer")
#: Per-model sizes where a model differs from the common ones: EdgeConv's edge MLPs cost k x the points' MLPs,
#: so ParticleNet runs at half the width (blocks of 32 and 64) to train about as fast as the 3D CNN on the CPU.
SIZES = {"ParticleNet": {"PointWidth": 32}}
LABELS = {"Dense": "dense (cells)", "CNN": "3D CNN (ECAL cells)", "DeepSets": "DeepSets (hits)",
          "ParticleNet": "ParticleNet / EdgeConv (hits)", "Transformer": "transformer (hits)"}


def _config_file(directory: Path) -> Path:
    """A scan-free config: every run here sets its entries as keywords."""
    path = directory / "point_tables_config.py"
    path.write_text("Config = {}\n")
    return path


def train(experiment, config_file, out, **entries):
    """One run of a calodnn experiment; returns its ExperimentResult."""
    result = experiment.run(config=config_file, OutputBase=str(out), **entries)
    if result.exit_code != 0:
        raise RuntimeError(f"{experiment.__name__ if hasattr(experiment, '__name__') else experiment} "
                           f"{entries.get('Model')}: exit code {result.exit_code}")
    return result


def _auc(md, key="GammaPi0_AUC"):
    return md[key], 0.5 * (md[f"{key}_upper"] - md[f"{key}_lower"])


def _epoch_time(md):
    times = md.get("EpochTime") or []
    return float(np.median(times[1:] if len(times) > 2 else times)) if times else float("nan")


def calodnn_tables(args, work: Path) -> dict:
    from calodnn import ClassificationExperiment, RegressionExperiment

    cfg = _config_file(work)
    common = dict(Particles=["Gamma", "Pi0"], SimEventsPerClass=args.events_per_class, Epochs=args.epochs,
                  BatchSize=128, optimizer="Adam", lr=1e-3, Width=64, Depth=2, CNNFilters=8, Seed=args.seed,
                  MaxPoints=args.max_points, PointWidth=64, PointDepth=2, Neighbours=args.k, AUCBootstrap=200,
                  TestFraction=0.3)
    rows, results = [], {}
    for model in (*IMAGE_MODELS, *POINT_MODELS):
        t0 = time.time()
        res = train(ClassificationExperiment, cfg, work / "cls", **{**common, "Model": model, **SIZES.get(model, {})})
        md = res.wrapper.MetaData
        auc, err = _auc(md)
        results[model] = res
        rows.append({"model": LABELS[model], "gamma/pi0 AUC": auc, "error (68 %)": err,
                     "s/epoch": _epoch_time(md), "parameters": int(res.wrapper.Model.count_params()),
                     "wall s": time.time() - t0})
        log.info("%s: AUC %.4f +- %.4f, %.1f s/epoch", model, auc, err, rows[-1]["s/epoch"])
    table = pd.DataFrame(rows)
    best = max(POINT_MODELS, key=lambda m: _auc(results[m].wrapper.MetaData)[0])
    # the multi-task network, and the regression of the same point model on the same events
    sizes = {**common, "Model": best, **SIZES.get(best, {})}
    # the AUC's spread from one training seed to the next is as large as its test-sample error: the single- and the
    # multi-task networks are compared over several seeds (each seed also draws its own split of the events)
    single = {args.seed: results[best], **{s: train(ClassificationExperiment, cfg, work / f"single{s}", **{**sizes,
                                                     "Seed": s}) for s in args.seeds if s != args.seed}}
    multi = {w: {s: train(ClassificationExperiment, cfg, work / f"multi{w}-{s}", MultiTask=w, EnergyLoss="MRSE",
                          **{**sizes, "Seed": s}) for s in dict.fromkeys([args.seed, *args.seeds])}
             for w in args.energy_weight}
    regression = train(RegressionExperiment, cfg, work / "reg", loss="MRSE", SimConfig={}, ECALNorm=100.0,
                       HCALNorm=100.0, EnergyScale=100.0, Augment=False,
                       **{k: v for k, v in sizes.items() if k != "AUCBootstrap"})
    fixed = fixed_energy_resolution({"single-task regression": regression.wrapper.Model,
                                     **{_multi(w): m[args.seed].wrapper.Model for w, m in multi.items()}}, args)
    return {"table": table, "results": results, "best": best, "single": single, "multi": multi, "regression": regression,
            "fixed": fixed}


def _multi(weight) -> str:
    return f"multi-task w={weight:g}"


def fixed_energy_inputs(particle: str, n: int, seed: int, max_points: int):
    """Events at each energy of SIGMA_AT as the point models' inputs (the readers' clipping and scaling)."""
    from calodnn.data import HIT_FIELDS, HitFeatures
    from calodnn.simulate import PDG_IDS, CaloSimConfig, hits_from_images, simulate_events
    from dlkit.generators import Collection
    from dlkit.generators.sources.base import pad_points

    cfg = CaloSimConfig()
    parts = []
    for i, e in enumerate(SIGMA_AT):
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(31, PDG_IDS[particle], i)))
        ev = simulate_events(particle, n, rng, cfg, energies=np.full(n, e))
        hits = hits_from_images(ev["ECAL"], ev["HCAL"], cfg)
        counts = np.diff(hits["hit_e"].offsets)
        coll = Collection(HIT_FIELDS, max_points=max_points, sort_by="hit_e")
        points, mask, count = pad_points([hits[f].values for f in HIT_FIELDS], counts, coll, HIT_FIELDS)
        arrays = HitFeatures()({"hits": points, "hits_mask": mask})
        parts.append({"hits": arrays["hits"], "hits_mask": mask,
                      "ECAL_E": ev["ECAL"].sum(axis=(1, 2, 3)).astype(np.float32),
                      "HCAL_E": ev["HCAL"].sum(axis=(1, 2, 3)).astype(np.float32),
                      "energy": np.full(n, e, np.float32)})
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def fixed_energy_resolution(models: dict, args) -> pd.DataFrame:
    rows = []
    for particle in ("Gamma", "Pi0"):
        data = fixed_energy_inputs(particle, args.n_fixed, args.seed, args.max_points)
        x = {k: data[k] for k in ("hits", "hits_mask", "ECAL_E", "HCAL_E")}
        for name, model in models.items():
            pred = model.predict(x, batch_size=1024, verbose=0)
            pred = pred["energy"] if isinstance(pred, dict) else pred
            sig = sigma_at_fixed_energies(data["energy"], np.asarray(pred).reshape(len(pred), -1)[:, 0])
            for e, (s, ds) in zip(SIGMA_AT, sig):
                rows.append({"particle": particle, "model": name, "E [GeV]": e, "sigma/E": s, "error": ds})
    return pd.DataFrame(rows)


def lartpcdnn_table(args) -> pd.DataFrame | None:
    try:
        from lartpcdnn.point_study import compare_models
    except ImportError as exc:
        log.warning("lartpcdnn's point study is not there (%s): no lartpcdnn table", exc)
        return None
    return compare_models(events_per_class=args.lar_events_per_class, epochs=args.lar_epochs, seed=args.seed)


def _verdict(ok: bool) -> str:
    return "**met**" if ok else "**missed**"


def header(args, seconds: float, part: str) -> str:
    sizes = (f"--events-per-class {args.events_per_class} --epochs {args.epochs} --seeds "
             + " ".join(map(str, args.seeds)) if part == "calodnn" else
             f"--lar-events-per-class {args.lar_events_per_class} --lar-epochs {args.lar_epochs}")
    return (f"Machine: {machine()}. Command: `python bench/point_tables.py --only {part} {sizes} --seed {args.seed}` "
            f"({seconds / 60:.0f} min, {datetime.date.today().isoformat()}).")


def calodnn_markdown(cal, args, seconds: float) -> str:
    t = cal["table"]
    lines = [header(args, seconds, "calodnn") + f" Every model {args.epochs} epochs, Adam 1e-3, batch 128, "
             f"{args.events_per_class} simulated events per class (60/10/30 % train/validation/test), point models on "
             f"the {args.max_points} most energetic hits, width 64 (ParticleNet 32), depth 2, k = {args.k}; "
             "s/epoch: the median over the epochs after the first.", "",
             "**gamma/pi0** (AUC with its bootstrap 68 % half-width):", "",
             tabulate(t, headers="keys", tablefmt="github", floatfmt=".4f", showindex=False), ""]
    res = cal["results"]
    cnn_auc, cnn_err = _auc(res["CNN"].wrapper.MetaData)
    best = cal["best"]
    best_auc, best_err = _auc(res[best].wrapper.MetaData)
    t_cnn = _epoch_time(res["CNN"].wrapper.MetaData)
    times = {m: _epoch_time(res[m].wrapper.MetaData) for m in POINT_MODELS}
    seeds = list(cal["single"])
    per_seed = pd.DataFrame({"seed": [str(s) for s in seeds], "single-task": [_auc(cal["single"][s].wrapper.MetaData)[0] for s in seeds],
                             **{_multi(w): [_auc(m[s].wrapper.MetaData)[0] for s in seeds]
                                for w, m in cal["multi"].items()}})
    mean = {c: (per_seed[c].mean(), per_seed[c].std(ddof=1) / np.sqrt(len(seeds))) for c in per_seed.columns[1:]}
    lines += [f"**Multi-task** ({best}: the classes and the energy in one network, the energy's loss weight w, MRSE) "
              f"against the single-task classifier, gamma/pi0 AUC at {len(seeds)} training seeds (a seed also draws "
              "its own split of the events; the spread between seeds is larger than one run's bootstrap error):", "",
              tabulate(per_seed, headers="keys", tablefmt="github", floatfmt=".4f", showindex=False), "",
              "Mean +- its standard error: " + ", ".join(f"{c} {m:.4f} +- {e:.4f}" for c, (m, e) in mean.items())
              + f". sigma/E (Gaussian core) at fixed energies (seed {args.seed}), {args.n_fixed} events per point, "
              "against the single-task regression of the same model (RegressionExperiment, MRSE) on the same events:",
              ""]
    fixed = cal["fixed"].pivot_table(index=["particle", "E [GeV]"], columns="model", values="sigma/E")
    for w in cal["multi"]:
        fixed[f"ratio w={w:g}"] = fixed[_multi(w)] / fixed["single-task regression"]
    lines += [tabulate(fixed.reset_index(), headers="keys", tablefmt="github", floatfmt=".4f", showindex=False), ""]
    fast = [m for m in POINT_MODELS if times[m] <= 2 * t_cnn]
    lines += ["**Targets**", "",
              f"- the best point model's AUC ({best}) >= the 3D CNN's, or within its 1-sigma error: {best_auc:.4f} "
              f"+- {best_err:.4f} vs {cnn_auc:.4f} +- {cnn_err:.4f}: {_verdict(best_auc >= cnn_auc - cnn_err)}"]
    s_auc, s_err = mean["single-task"]
    for w in cal["multi"]:
        ratio = fixed[f"ratio w={w:g}"]
        m_auc, m_err = mean[_multi(w)]
        lines += [f"- multi-task (w={w:g}) AUC within errors of the single-task classifier ({len(seeds)}-seed means): "
                  f"{m_auc:.4f} vs {s_auc:.4f} (combined error {np.hypot(m_err, s_err):.4f}): "
                  f"{_verdict(abs(m_auc - s_auc) <= np.hypot(m_err, s_err))}; sigma/E within 10 % of the "
                  f"single-task regression at each fixed energy: ratio {ratio.min():.3f} to {ratio.max():.3f}: "
                  f"{_verdict(bool((ratio <= 1.10).all()))}"]
    lines += [f"- epoch time of the best point model <= 2x the 3D CNN's: {best} {times[best]:.1f} s vs {t_cnn:.1f} s "
              f"(x{times[best] / t_cnn:.2f}): {_verdict(times[best] <= 2 * t_cnn)}; within 2x: "
              f"{', '.join(fast) or 'none'}", ""]
    return "\n".join(lines) + "\n"


SEED_NOTE = ("The efficiencies of photons and pi0s at 1 % fake rest on the ~5 highest of 480 background events: "
             "another seed moves them by up to 0.2 while the AUCs move by ~0.01 (lartpcdnn/README.md has seeds 0 and "
             "1: at seed 1 the transformer's pi0 efficiency, 0.19, is below the CNN's 0.41). The electrons' lead is "
             "the truth deposits' (no wire projection, noise or down-sampling): an upper reference.")


def lartpcdnn_markdown(lar, args, seconds: float) -> str:
    classes = [c[:-len("_eff")] for c in lar.columns if c.endswith("_eff")]
    table = pd.DataFrame({"model": lar["model"], "parameters": lar["parameters"],
                          "s/epoch": lar["seconds_per_epoch"].round(2), "accuracy": lar["test_accuracy"].round(3),
                          **{c: [f"{e:.2f} [{lo:.2f}, {hi:.2f}]" for e, lo, hi in
                                 zip(lar[f"{c}_eff"], lar[f"{c}_eff_lower"], lar[f"{c}_eff_upper"])] for c in classes}})
    lines = [header(args, seconds, "lartpcdnn") + f" Every model {args.lar_epochs} epochs on the same simulated "
             "events (lartpcdnn.point_study.compare_models: the CNN on the two wire views, the point models on the 3D "
             "deposits). Efficiency at 1 % fake per class with its Clopper-Pearson 68 % interval:", "",
             tabulate(table, headers="keys", tablefmt="github", showindex=False), ""]
    for key in ("target", "note"):
        if key in lar.attrs:
            lines += [f"{lar.attrs[key]}", ""]
    lines += [SEED_NOTE, ""]
    return "\n".join(lines) + "\n"


def replace_subsection(path: Path, heading: str, text: str) -> None:
    """Replace (or add at the end of "## Point models") the part of ``path`` under ``heading`` (a ### line), up to
    the next ## or ### heading."""
    lines = path.read_text().splitlines(keepends=True)
    if not any(line.startswith("## Point models") for line in lines):
        lines += ["\n", "## Point models\n", "\n", "Written by `python bench/point_tables.py` (both parts).\n", "\n"]
    start = next((i for i, line in enumerate(lines) if line.rstrip("\n") == heading), None)
    if start is None:
        top = next(i for i, line in enumerate(lines) if line.startswith("## Point models"))
        start = end = next((i for i in range(top + 1, len(lines)) if lines[i].startswith(("# ", "## "))), len(lines))
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith(("# ", "## ", "### "))), len(lines))
    path.write_text("".join(lines[:start]) + heading + "\n\n" + text.rstrip("\n") + "\n\n" + "".join(lines[end:]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=("calodnn", "lartpcdnn"), help="one part (default: both)")
    parser.add_argument("--events-per-class", type=int, default=3000)
    parser.add_argument("--lar-events-per-class", type=int, default=400)
    parser.add_argument("--lar-epochs", type=int, default=12, help="lartpcdnn: every model's epochs")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--max-points", type=int, default=64)
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="training seeds of the single- against multi-task comparison")
    parser.add_argument("--energy-weight", type=float, nargs="+", default=[1.0],
                        help="the multi-task network's energy loss weights (one network each)")
    parser.add_argument("--n-fixed", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "point_tables.md"),
                        help="where both parts go (with --only: BENCHMARKS.md only)")
    parser.add_argument("--no-benchmarks", action="store_true", help="do not update BENCHMARKS.md")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    parts = {}
    with tempfile.TemporaryDirectory(prefix="dlkit-point-tables-") as tmp:
        os.environ.setdefault("DLKIT_CACHE_DIR", str(Path(tmp) / "cache"))
        if args.only in (None, "calodnn"):
            t0 = time.time()
            cal = calodnn_tables(args, Path(tmp))
            parts["### calodnn: gamma/pi0, multi-task"] = calodnn_markdown(cal, args, time.time() - t0)
        if args.only in (None, "lartpcdnn"):
            t0 = time.time()
            lar = lartpcdnn_table(args)
            if lar is not None:
                parts["### lartpcdnn: efficiency at 1 % fake"] = lartpcdnn_markdown(lar, args, time.time() - t0)
    text = "".join(f"{heading}\n\n{md}\n" for heading, md in parts.items())
    if args.only is None:
        Path(args.out).write_text("# Point models\n\n" + text)
    print(text)
    if not args.no_benchmarks:
        for heading, md in parts.items():
            replace_subsection(Path(__file__).parent.parent / "BENCHMARKS.md", heading, md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
