"""Regenerate the two tables of the calorimetry paper on calodnn's simulated data, plus MSRE vs MRSE.

Belayneh et al., "Calorimetry with deep learning", EPJC 80 (2020) 688 (numbers quoted in seed 003):

1. classification, gamma vs pi0 and e vs pi+-: accuracy, AUC, signal-efficiency gain and background-rejection
   gain over the BDT, for a BDT on the scalar features, a DNN on the same features and a DNN on the cells
   (:mod:`calodnn.baselines`);
2. energy resolution sigma/E = a/sqrt(E) (+) b/E (+) c per particle for the simple linear calibration (sum
   of the cells times a fitted scale) and the learned calibrations (:mod:`calodnn.calibration`), on the
   raw-visible-energy regression dataset (:data:`calodnn.regression.REGRESSION_SIM_CONFIG`);
3. seed 001's loss study: the mean bias of the reconstructed energy trained with MSE, MSRE and MRSE.

Everything is trained here, small and on the CPU (a few minutes on 2 cores), from the cached simulated
datasets (made on first use under $DLKIT_DATA/calodnn or ~/.cache/dlkit/calodnn)::

    python bench/paper_tables.py                                  # writes bench/results/paper_tables.md
    python bench/paper_tables.py --events-per-class 2000 --out /tmp/tables.md     # quicker, noisier
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402
from tabulate import tabulate  # noqa: E402

log = logging.getLogger("paper_tables")

PAPER_CLASSIFICATION = {  # (acc, AUC, d_eff_sig, R ratio) in %, %, %, x
    "GammaPi0": {"BDT": (83.1, 89.8, None, None), "FeatureDNN": (82.8, 90.2, 0.9, 0.95),
                 "CellDNN": (87.2, 93.5, 9.4, 1.63)},
    "EPi": {"BDT": (93.8, 98.0, None, None), "FeatureDNN": (93.6, 98.0, -0.1, 0.95),
            "CellDNN": (99.4, 99.9, 4.9, 151)},
}
PAPER_RESOLUTION = {  # a, b, c "in their units"
    "Linear": {"Gamma": (55.5, 1.85, 1245), "Ele": (42.3, 1.51, 1037), "Pi0": (55.3, 1.71, 1222),
               "ChPi": (442, 25, 11706)},
    "CNN": {"Gamma": (18.3, 0.75, 131), "Ele": (18.7, 0.574, 111), "Pi0": (19.3, 0.45, 231),
            "ChPi": (114, 1.02, 893)},
}
PARTICLE_NAMES = {"Gamma": "Photons", "Ele": "Electrons", "Pi0": "Neutral pions", "ChPi": "Charged pions"}
MODEL_NAMES = {"BDT": "BDT", "FeatureDNN": "DNN (features)", "CellDNN": "DNN (cells)"}
REGRESSION_MODELS = ("Linear", "PerChannel", "LayerMLP", "Dense")
REGRESSION_LABELS = {"Linear": "simple linear (sum x scale)", "PerChannel": "per-channel (CALICE)",
                     "LayerMLP": "layer-sum MLP (BHCal)", "Dense": "DNN on cells"}
BIAS_PARTICLES = ("Ele", "ChPi")


def machine() -> str:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import keras
    import sklearn

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (f"{platform.node()}: {cpu}, {cores} cores, Python {platform.python_version()}, numpy {np.__version__}, "
            f"keras {keras.__version__} ({keras.backend.backend()}), scikit-learn {sklearn.__version__}")


# ------------------------------------------------------------------------------------------------ classification

def classification(data_dir, events_per_class: int, seed: int, cell_epochs: int):
    """Both tasks; e/pi is separable by the HCAL/ECAL ratio alone here, so its cell net gets 4 epochs."""
    from calodnn.baselines import load_task, run_task

    tables, seconds, n_test = {}, {}, {}
    for task in ("GammaPi0", "EPi"):
        t0 = time.perf_counter()
        splits = load_task(data_dir, task, events_per_class, seed=seed)
        n_test[task] = len(splits["test"])
        table, _, secs = run_task(splits, epochs=40, cell_epochs=cell_epochs if task == "GammaPi0" else 4, seed=seed)
        tables[task], seconds[task] = table, secs
        log.info("%s done in %.0f s: %s", task, time.perf_counter() - t0, table.round(4).to_dict("index"))
        del splits
    return tables, seconds, n_test


def classification_markdown(tables, n_test) -> str:
    rows = []
    for model in ("BDT", "FeatureDNN", "CellDNN"):
        row = [MODEL_NAMES[model]]
        for task in ("GammaPi0", "EPi"):
            t = tables[task].loc[model]
            p = PAPER_CLASSIFICATION[task][model]
            deps = "-" if not np.isfinite(t.d_eff_sig) else f"{100 * t.d_eff_sig:+.1f}%"
            bound = ">" if t.r_bkg_lower_bound else ""
            dr = "-" if not np.isfinite(t.r_bkg_ratio) else f"{bound}{t.r_bkg_ratio:.3g}"
            row += [f"{100 * t.accuracy:.1f}% ({p[0]}%)", f"{100 * t.auc:.1f}% ({p[1]}%)",
                    f"{deps} ({'-' if p[2] is None else f'{p[2]}%'})", f"{dr} ({'-' if p[3] is None else p[3]})"]
        rows.append(row)
    headers = ["model", "γ/π0 acc.", "γ/π0 AUC", "γ/π0 Δε_sig", "γ/π0 ΔR_bkg",
               "e/π acc.", "e/π AUC", "e/π Δε_sig", "e/π ΔR_bkg"]
    return (tabulate(rows, headers=headers, tablefmt="github")
            + f"\n\nTest events: γ/π0 {n_test['GammaPi0']}, e/π {n_test['EPi']} (half signal).")


# ------------------------------------------------------------------------------------------------ regression

def _normalized(split):
    return (split["ECAL"] / np.float32(3.53), split["HCAL"] / np.float32(2.7))


def train_regressor(model_name, train, val, loss="MRSE", epochs=25, seed=0):
    import keras

    from calodnn.calibration import build_regressor, n_outputs
    from dlkit.losses import get_loss

    keras.utils.set_random_seed(seed)
    x, xv = _normalized(train), _normalized(val)
    model = build_regressor({"ECAL": x[0].shape[1:], "HCAL": x[1].shape[1:]}, Model=model_name, Width=32, Depth=1,
                            n_out=n_outputs(loss))
    lr = 0.01 if model_name == "PerChannel" else 1e-3  # one weight per cell moves by ~lr per step with Adam
    model.compile(optimizer=keras.optimizers.Adam(lr), loss=get_loss(loss))
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=4, restore_best_weights=True)
    model.fit(x, train["energy"], validation_data=(xv, val["energy"]), epochs=epochs, batch_size=128,
              callbacks=[stop], verbose=0)
    return model


def regression(data_dir, events_per_class: int, seed: int, edges):
    from calodnn.calibration import fit_linear_scale
    from calodnn.data import read_splits
    from calodnn.regression import predict_energy
    from dlkit.analysis import RegressionAnalysis

    results, tables, bias, seconds = {}, {}, {}, {}
    for particle in ("Gamma", "Ele", "Pi0", "ChPi"):
        splits = read_splits(data_dir, [particle], ["ECAL", "HCAL", "energy"], (0.5, 0.1, 0.4), seed, events_per_class)
        train, val, test = splits["train"], splits["validation"], splits["test"]
        e_test = test["energy"].astype(float)
        preds = {}
        t0 = time.perf_counter()

        def cell_sum(s):
            return sum(a.reshape(len(a), -1).sum(axis=1, dtype=np.float64) for a in _normalized(s))

        k = fit_linear_scale(cell_sum(train), train["energy"], "MSE")
        preds["Linear"] = k * cell_sum(test)
        seconds[(particle, "Linear")] = time.perf_counter() - t0
        for name in REGRESSION_MODELS[1:]:
            t0 = time.perf_counter()
            model = train_regressor(name, train, val, "MRSE", seed=seed)
            preds[name] = predict_energy(model, _normalized(test))[0]
            seconds[(particle, name)] = time.perf_counter() - t0
            if name == "Dense" and particle in BIAS_PARTICLES:
                bias[(particle, "MRSE")] = preds[name]
                for loss in ("MSE", "MSRE"):
                    t0 = time.perf_counter()
                    m = train_regressor("Dense", train, val, loss, seed=seed)
                    bias[(particle, loss)] = predict_energy(m, _normalized(test))[0]
                    seconds[(particle, f"Dense-{loss}")] = time.perf_counter() - t0
        for name, pred in preds.items():
            table, md = RegressionAnalysis(e_test, pred, edges)
            tables[(particle, name)] = table
            results[(particle, name)] = md
        for key in [k for k in bias if k[0] == particle]:
            bias[key] = (e_test, bias[key])
        log.info("%s: %s", particle, {n: round(results[(particle, n)]["Resolution_c"], 4) for n in preds})
        del splits, train, val, test
    return results, tables, bias, seconds


def fit_correlation(table, md, prefix: str = "") -> float:
    """Correlation of a and c in the resolution fit, from its Jacobian at the fitted point (b left out when
    it sits at its bound 0, where the fit has no curvature); NaN if a or c is at its bound.

    The fit's weights are the table's errors (absolute, as :func:`dlkit.analysis.fit_resolution`); a strong
    negative correlation means the data cannot tell a stochastic term from a constant one."""
    e = np.asarray(table.e_mean, float)
    y = np.asarray(table.resolution, float)
    err = np.asarray(table.resolution_err, float)
    ok = np.isfinite(e) & (e > 0) & np.isfinite(y) & np.isfinite(err) & (err > 0)
    e, err = e[ok], err[ok]
    p = {k: md[f"{prefix}Resolution_{k}"] for k in "abc"}
    scale = float(np.max(y[ok])) if ok.any() else 1.0
    free = [k for k in "abc" if np.isfinite(p[k]) and p[k] > 1e-6 * scale]
    if "a" not in free or "c" not in free:
        return float("nan")
    f = np.sqrt(p["a"] ** 2 / e + p["b"] ** 2 / e**2 + p["c"] ** 2)
    grad = {"a": p["a"] / (e * f), "b": p["b"] / (e**2 * f), "c": p["c"] / f}
    jac = np.stack([grad[k] / err for k in free], axis=1)
    try:
        cov = np.linalg.inv(jac.T @ jac)
    except np.linalg.LinAlgError:
        return float("nan")
    ia, ic = free.index("a"), free.index("c")
    return float(cov[ia, ic] / np.sqrt(cov[ia, ia] * cov[ic, ic]))


FIXED_ENERGIES = (10.0, 20.0, 35.0, 60.0, 100.0, 160.0, 250.0, 400.0)
LOW_SPOTS = 3  # "few spots" in a cell: below this many spot energies


def fixed_energy_check(n_per_point: int, seed: int):
    """The physics behind Table 2 without any training: EM showers at fixed energies, raw visible cells.

    Per particle (Ele, Gamma) and energy, ``n_per_point`` events of the regression simulation; compared are
    the plain sum of the cells (what the simple linear calibration scales) and the per-layer sum divided by
    each layer's *known* sampling fraction (the ideal per-layer calibration, the best a layer-wise learned
    calibration can do on the sampling-fraction mis-weighting). One bin per energy, so the fit sees no
    spread of true energies within a bin. Also returned: the ratio of the two sums' stochastic terms that
    independent per-cell sampling fluctuations alone would give (from the mean layer profile and the
    simulated spot energies), and the largest fraction of the stochastic term that knowing every spot's
    Landau (Moyal) factor could remove (``mip_landau_width`` as the per-spot width), and per energy the
    share of the ECAL energy in cells with fewer than ``LOW_SPOTS`` spots (where a per-cell non-linear
    response could tell spots apart).
    """
    from calodnn.regression import REGRESSION_SIM_CONFIG
    from calodnn.simulate import CaloSimConfig, _geometry, simulate_events
    from dlkit.analysis import RegressionAnalysis

    cfg = CaloSimConfig(**REGRESSION_SIM_CONFIG)
    geo = _geometry(cfg)
    f = np.delete(np.asarray(geo.sampling_fraction, float), geo.dead)  # the rendered layers: ECAL then HCAL
    n_ecal = cfg.ecal_shape[2]
    spot = np.r_[np.full(n_ecal, cfg.ecal_spot_gev), np.full(cfg.hcal_shape[2], cfg.hcal_spot_gev)]
    # Variant (not simulated): sampling fluctuations growing with the absorber, spot ~ layer thickness in X0.
    thick = np.arange(n_ecal) >= min(cfg.ecal_thin_layers, n_ecal)
    spot_abs = spot.copy()
    spot_abs[:n_ecal][thick] *= cfg.ecal_thick_layer_x0 / cfg.ecal_thin_layer_x0
    energies = np.asarray(FIXED_ENERGIES)
    mids = np.sqrt(energies[1:] * energies[:-1])
    edges = np.r_[energies[0] / 2, mids, energies[-1] * 1.5]
    out = {}
    for k, particle in enumerate(("Gamma", "Ele")):
        e_all, plain, ideal, ratios, ratios_abs, low = [], [], [], [], [], []
        for i, energy in enumerate(energies):
            rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(7, k, i)))
            ev = simulate_events(particle, n_per_point, rng, cfg, energies=np.full(n_per_point, energy))
            layers = np.c_[ev["ECAL"].sum(axis=(1, 2)), ev["HCAL"].sum(axis=(1, 2))].astype(np.float64)
            e_all.append(np.full(n_per_point, energy))
            plain.append(layers.sum(axis=1))
            ideal.append((layers / f).sum(axis=1))
            # Share of the ECAL energy in cells with fewer than LOW_SPOTS spots: where a per-cell non-linear
            # response could tell single spots apart (and so remove per-spot fluctuations).
            cells = ev["ECAL"] / f[:n_ecal].astype(np.float32)
            few = (cells > 0) & (cells < LOW_SPOTS * cfg.ecal_spot_gev)
            low.append(float(cells[few].sum() / cells.sum()))
            deposit = (layers / f).mean(axis=0)  # mean calibrated deposit per layer
            scale = deposit.sum() / (f * deposit).sum()
            for r, sp in ((ratios, spot), (ratios_abs, spot_abs)):
                r.append(np.sqrt(np.sum((scale * f) ** 2 * sp * deposit) / np.sum(sp * deposit)))
        e_all = np.concatenate(e_all)
        for name, s in (("plain", np.concatenate(plain)), ("ideal", np.concatenate(ideal))):
            s = s * np.sum(s * e_all) / np.sum(s * s)  # one scale (irrelevant for sigma/E: per-bin response)
            table, md = RegressionAnalysis(e_all, s, edges)
            md["corr_ac"] = fit_correlation(table, md)
            out[(particle, name)] = (table, md)
        out[(particle, "sampling_ratio")] = (min(ratios), max(ratios))
        out[(particle, "sampling_ratio_abs")] = (min(ratios_abs), max(ratios_abs))
        out[(particle, "low_occupancy")] = low
    z = np.random.default_rng(seed).standard_normal(1_000_000)
    moyal = 1.0 + cfg.mip_landau_width * -np.log(z * z)
    cv2 = moyal.var() / moyal.mean() ** 2
    out["landau"] = (cfg.mip_landau_width, cv2, 1.0 - 1.0 / np.sqrt(1.0 + cv2))
    out["thick_over_thin_x0"] = cfg.ecal_thick_layer_x0 / cfg.ecal_thin_layer_x0
    return out


def fixed_energy_markdown(check, n_per_point: int) -> str:
    rows = []
    for particle in ("Gamma", "Ele"):
        for name, label in (("plain", "plain sum of raw cells"),
                            ("ideal", "per-layer sum / known sampling fraction")):
            table, md = check[(particle, name)]
            rows.append([PARTICLE_NAMES[particle], label,
                         _pm(100 * md["Resolution_a"], 100 * md["Resolution_a_err"], 1),
                         _pm(md["Resolution_b"], md["Resolution_b_err"], 2),
                         _pm(100 * md["Resolution_c"], 100 * md["Resolution_c_err"], 2),
                         "-" if not np.isfinite(md["corr_ac"]) else f"{md['corr_ac']:+.2f}",
                         " ".join(f"{100 * r:.2f}" for r in table.resolution)])
    headers = ["particle", "sum", "a [%·√GeV]", "b [GeV]", "c [%]", "ρ(a,c)",
               "σ/E [%] at " + ", ".join(f"{e:g}" for e in FIXED_ENERGIES) + " GeV"]
    width, cv2, gain = check["landau"]
    cfg_ratio = check["thick_over_thin_x0"]
    low_max = max(check[(p, "low_occupancy")][0] for p in ("Gamma", "Ele"))
    low_min = max(check[(p, "low_occupancy")][-1] for p in ("Gamma", "Ele"))

    def low_text(particle):
        shares = check[(particle, "low_occupancy")]
        return ", ".join(f"{100 * x:.0f} %" for x in shares) + f" at {', '.join(f'{e:g}' for e in FIXED_ENERGIES)} GeV"
    lo_g, hi_g = check[("Gamma", "sampling_ratio")]
    lo_e, hi_e = check[("Ele", "sampling_ratio")]
    lo = min(check[(p, "sampling_ratio_abs")][0] for p in ("Gamma", "Ele"))
    hi = max(check[(p, "sampling_ratio_abs")][1] for p in ("Gamma", "Ele"))
    return (tabulate(rows, headers=headers, tablefmt="github")
            + f"\n\n{n_per_point} events per energy, no training. Stochastic term of the plain sum / the ideal "
              f"per-layer sum that the independent per-cell sampling fluctuations alone give (mean layer profiles, "
              f"simulated spot energies): photons {lo_g:.2f}-{hi_g:.2f}, electrons {lo_e:.2f}-{hi_e:.2f} over "
              f"10-400 GeV ({lo:.2f}-{hi:.2f} if the thick layers' spot energy grew with their absorber, "
              f"x{cfg_ratio:.2f}). A per-spot Landau (Moyal, width {width:g} of the MPV) factor adds "
              f"{100 * cv2:.1f} % to the sampling variance; knowing every spot's factor would lower a by at most "
              f"{100 * gain:.1f} %. Share of the ECAL energy in cells with fewer than {LOW_SPOTS} spots (where a "
              f"per-cell non-linear response could tell single spots apart): photons {low_text('Gamma')}, electrons "
              f"{low_text('Ele')}; even if per-spot factors carried half of the sampling variance (CV² = 1, "
              f"{1 / cv2:.0f}x the Moyal's) and were removed completely in those cells, the stochastic part of "
              f"σ/E would drop by at most "
              f"{100 * (1 - np.sqrt(1 - 0.5 * low_max)):.0f} % at {FIXED_ENERGIES[0]:g} GeV and "
              f"{100 * (1 - np.sqrt(1 - 0.5 * low_min)):.0f} % at {FIXED_ENERGIES[-1]:g} GeV.")


def _pm(value, error, digits):
    """``value ± error``; a parameter the fit left at (or near) its bound 0 gets ``*`` and no error."""
    if not np.isfinite(error) or error > 10 * max(abs(value), 10.0 ** -digits):
        return f"{value:.{digits}f}*"
    return f"{value:.{digits}f} ± {error:.{digits}f}"


def resolution_markdown(results, tables) -> str:
    rows = []
    for name in REGRESSION_MODELS:
        for particle in ("Gamma", "Ele", "Pi0", "ChPi"):
            md = results[(particle, name)]
            t = tables[(particle, name)]
            paper = PAPER_RESOLUTION["Linear" if name == "Linear" else "CNN"][particle] if name in ("Linear", "Dense") \
                else None
            at = {int(round(c)): r for c, r in zip(t.index, t.resolution)}
            rows.append([REGRESSION_LABELS[name], PARTICLE_NAMES[particle],
                         _pm(100 * md["Resolution_a"], 100 * md["Resolution_a_err"], 1),
                         _pm(md["Resolution_b"], md["Resolution_b_err"], 2),
                         _pm(100 * md["Resolution_c"], 100 * md["Resolution_c_err"], 2),
                         "-" if not np.isfinite(rho := fit_correlation(t, md)) else f"{rho:+.2f}",
                         *(f"{100 * at[e]:.2f}" for e in (35, 135, 485)),
                         f"{100 * md['MeanRelativeBias']:+.2f}",
                         "" if paper is None else f"{paper[0]} / {paper[1]} / {paper[2]}"])
    headers = ["calibration", "particle", "a [%·√GeV]", "b [GeV]", "c [%]", "ρ(a,c)", "σ/E@35 GeV [%]",
               "σ/E@135 [%]",
               "σ/E@485 [%]", "mean (E_pred−E)/E [%]", "paper a / b / c (their units)"]
    return (tabulate(rows, headers=headers, tablefmt="github")
            + "\n\n`*`: at (or near) the bound 0, the error is undefined (σ/E depends on its square). σ/E@E: the "
              "fitted Gaussian core width / response in the 50-GeV bin centred at E. ρ(a,c): correlation of a and c "
              "in the fit (\"-\" when one of them is at its bound).")


def bias_markdown(bias) -> str:
    from dlkit.analysis import resolution_vs_energy

    rows = []
    for particle in BIAS_PARTICLES:
        for loss in ("MSE", "MSRE", "MRSE"):
            e, pred = bias[(particle, loss)]
            table = resolution_vs_energy(e, pred, np.linspace(10, 510, 11))
            rel = (pred - e) / e
            rows.append([PARTICLE_NAMES[particle], loss, f"{np.mean(pred - e):+.2f}", f"{100 * np.mean(rel):+.2f}",
                         f"{100 * (np.median(pred / e) - 1):+.2f}", f"{100 * (table.response.iloc[0] - 1):+.2f}",
                         f"{100 * (table.response.mean() - 1):+.2f}"])
    headers = ["particle", "loss", "mean E_pred−E [GeV]", "mean (E_pred−E)/E [%]", "median E_pred/E − 1 [%]",
               "response−1 @35 GeV [%]", "response−1, mean of bins [%]"]
    return tabulate(rows, headers=headers, tablefmt="github")


def targets_markdown(cls_tables, results, rtables=None, check=None) -> str:
    """The issue's two targets, checked on this run's numbers (``check``: :func:`fixed_energy_check`)."""
    lines = []
    if rtables is not None:
        lin_at35 = {p: rtables[(p, "Linear")].resolution.iloc[0] for p in ("Gamma", "Ele")}
        dnn_at35 = {p: rtables[(p, "Dense")].resolution.iloc[0] for p in ("Gamma", "Ele")}
    if cls_tables is not None:
        t = cls_tables["GammaPi0"]
        best_feature = max(t.loc["BDT", "auc"], t.loc["FeatureDNN", "auc"])
        ok = t.loc["CellDNN", "auc"] > best_feature
        lines.append(f"- Cells beat features in AUC for γ vs π0: **{'met' if ok else 'missed'}** "
                     f"(DNN on cells {100 * t.loc['CellDNN', 'auc']:.1f}% vs best on features "
                     f"{100 * best_feature:.1f}%).")
    if results is not None:
        for particle in ("Gamma", "Ele"):
            lin = results[(particle, "Linear")]
            dnn = results[(particle, "Dense")]
            a_lin = lin["Resolution_a"]
            ratio = dnn["Resolution_a"] / a_lin if a_lin > 1e-3 else np.inf
            ok = ratio <= 0.5
            # A ratio of fitted parameters is only a result if it holds within the errors (1 sigma each).
            err_lin, err_dnn = (np.nan_to_num(r["Resolution_a_err"], nan=np.inf) for r in (lin, dnn))
            significant = ok and dnn["Resolution_a"] + err_dnn <= 0.5 * (a_lin - err_lin)
            verdict = "met" if significant else "met nominally, not significant within the errors" if ok else "missed"
            text = "the linear a is fitted at 0" if not np.isfinite(ratio) else f"ratio {ratio:.2f}"
            rho = fit_correlation(rtables[(particle, "Linear")], lin) if rtables is not None else float("nan")
            rho_text = "" if not np.isfinite(rho) else f", ρ(a,c) of the linear fit {rho:+.2f}"
            fixed = ""
            if check is not None:
                plain, ideal = check[(particle, "plain")][1], check[(particle, "ideal")][1]
                fixed = (f"; at fixed energies without training the plain sum has a = "
                         f"{_pm(100 * plain['Resolution_a'], 100 * plain['Resolution_a_err'], 1)}, c = "
                         f"{100 * plain['Resolution_c']:.2f} %, the ideal per-layer sum a = "
                         f"{_pm(100 * ideal['Resolution_a'], 100 * ideal['Resolution_a_err'], 1)}")
            lines.append(f"- {PARTICLE_NAMES[particle]}: stochastic term of the DNN at most half the linear "
                         f"calibration's: **{verdict}** (a = "
                         f"{_pm(100 * dnn['Resolution_a'], 100 * dnn['Resolution_a_err'], 1)} vs "
                         f"{_pm(100 * a_lin, 100 * lin['Resolution_a_err'], 1)} %·√GeV, {text}{rho_text}; "
                         f"constant term "
                         f"c = {100 * dnn['Resolution_c']:.2f} vs {100 * lin['Resolution_c']:.2f} %; σ/E at 35 GeV "
                         f"{100 * dnn_at35[particle]:.2f} vs {100 * lin_at35[particle]:.2f} %{fixed}).")
    return "\n".join(lines)


NOTES = """\
- Data: calodnn's simulator (calodnn/README.md), not Geant4. Classification uses the default dataset (calibrated
  cells); regression the same showers stored as raw visible energies (`raw_visible_energy`: 17 thin + 8 thick
  W layers and the HCAL sample 3.5 %, 1.8 % and 2.7 % of the deposit), so the plain sum of the cells mis-weights
  the deep part of the shower as raw data do. Events are split 60/10/30 (classification) and 50/10/40
  (regression) by `dlkit.generators.split_samples`; one training per cell, no tuning on the test set.
- Classification: BDT = scikit-learn HistGradientBoosting on the 46 scalar features; DNN (features) = MLP on the
  standardised features; DNN (cells) = small 2D CNN (ECAL layers as channels, central 17x17 cells, sqrt of
  the energy fraction per cell, dense HCAL branch), trained with random flips/rotations of the square
  (calodnn.baselines). Δε_sig: signal efficiency gained over the BDT at the BDT's background efficiency for 90 %
  signal efficiency; ΔR_bkg: background rejection relative to the BDT at 90 % signal efficiency ("-": both
  reject every test background event). The paper's selections differ: its γ/π0 sample kept π0 with an opening
  angle < 0.01 rad (ours: all π0, 10-510 GeV, so low-energy π0 with two separate showers are included) and its
  e/π sample kept "EM-like" pions with HCAL/ECAL < 0.025 - no simulated pion is that EM-like (our hadron showers
  always reach the HCAL), so our e/π task is separable by the HCAL/ECAL ratio alone and every method is perfect.
- Resolution: per particle, a model trained on that particle only (MRSE loss, Adam, up to 25 epochs with early
  stopping on the validation loss; "DNN on cells" = calodnn.calibration's Dense model, width 32, depth 1,
  "layer-sum MLP" width 32, depth 1); σ/E from a Gaussian fit of the
  core of E_pred/E_true in 10 bins of true energy, fitted with σ/E = a/√E ⊕ b/E ⊕ c (a, b, c ≥ 0, dlkit.analysis).
  Simple linear = (sum of all raw cells) x one scale fitted by least squares on the training set. The learned
  calibrations start from the plain sum (calodnn.calibration). The paper's units are not stated in seed 003;
  ours are %·√GeV, GeV and %.
- Why the stochastic-term target is missed (the physics, see the fixed-energy check): the learned calibrations
  beat the linear one by 1.5-5x in σ/E, but on this simulator the gain is in the constant term. At fixed
  energies the plain sum's σ/E is flat from 10 to 400 GeV: mis-weighting the thick layers (1.8 % vs 3.5 %
  sampling fraction) turns the event-by-event longitudinal fluctuations (depth of the shower maximum, photon
  conversion depth) into an error whose relative size does not depend on energy, i.e. c. The stochastic term
  comes from the sampling fluctuations (compound Poisson of spots), which no calibration of the summed cell
  energies can undo; the plain sum and the ideal per-layer sum weight them almost equally (ratio printed under
  the check), and the DNN comes close to the ideal's a (Table 2 vs the check). The other ingredients of
  physics.md do not make a stochastic term either: noise and threshold give b, the per-cell calibration spread
  and leakage give c. Ideas evaluated: a Landau (Moyal) factor per spot in the thin silicon adds only a few % to
  the sampling variance (width 0.1 of the MPV, as the MIP deposits), so even knowing every spot's factor lowers
  a by < 2 % (printed under the check); path-length (angle) fluctuations of the spots are likewise a per-spot
  factor inside the sampling term. A per-cell non-linear response can only tell spots apart in cells with few of
  them, which hold a large share of the energy at 10 GeV but little at high energy; the bound printed under the
  check (per-spot factors carrying half of the sampling variance, all removed there) is far from the factor 2,
  because the Poisson number of spots itself cannot be undone. Sampling fluctuations growing with the absorber
  thickness (thick layers 2x the spot energy: real, not simulated) would make the plain sum's a *smaller* than
  the ideal's (ratio printed under the check), as it under-weights the thick layers. Doubling the plain sum's a
  would need energy-conserving exchanges between the thin and thick sections that grow like √E, with quanta of
  order 1 GeV (a thick-layer fraction fluctuating by ~0.5/√E), far above particle-level fluctuations, so the
  simulator does not model it. Better constraining the fit does not help either: with one bin per fixed energy
  the plain sum's a fits at 0 for both particles; the non-zero linear a of Table 2 (photons) has a large error,
  is strongly anti-correlated with c (ρ(a,c) column) and vanishes with one bin per energy. A longer-trained DNN
  only approaches the ideal per-layer sum's a: tried during development (not rerun here), 100 epochs with
  patience 10 instead of 25 lowered the DNN's σ/E by 3-10 % per bin, a 21.0 -> 19.4 (photons) and 17.0 -> 17.7
  (electrons, the fit moving b and c).
- MSRE vs MRSE: the DNN on cells trained with each loss; MSRE weights events by 1/E^2, which pulls the
  prediction down where the resolution is poor (the seed-001 shift), MRSE (1/E) much less, MSE not on average
  (it estimates the conditional mean, which the flat energy spectrum pushes up at the low edge).
"""


# ------------------------------------------------------------------------------------------------ main

def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events-per-class", type=int, default=8000,
                        help="simulated events per particle of each dataset (default %(default)s)")
    parser.add_argument("--cell-epochs", type=int, default=24, help="epochs of the gamma/pi0 cell classifier")
    parser.add_argument("--fixed-events", type=int, default=500,
                        help="events per energy of the fixed-energy check (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "paper_tables.md"))
    parser.add_argument("--skip", choices=("classification", "regression"), default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    for noisy in ("dlkit.analysis.regression", "calodnn.simulate"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    from calodnn.regression import REGRESSION_SIM_CONFIG
    from calodnn.simulate import CaloSimConfig, default_dataset

    t_start = time.perf_counter()
    n = args.events_per_class
    sections = [f"# The paper's tables on calodnn's simulated data\n\nGenerated by `python bench/paper_tables.py"
                f"{'' if n == 8000 else f' --events-per-class {n}'}` on "
                f"{datetime.date.today().isoformat()}.\nMachine: {machine()}.\n"]
    secs_all = {}
    tables = results = rtables = check = None
    if args.skip != "classification":
        cls_dir = default_dataset(events_per_class=n, progress=False)
        tables, secs, n_test = classification(cls_dir, n, args.seed, args.cell_epochs)
        secs_all.update({f"{task} {m}": s for task, d in secs.items() for m, s in d.items()})
        sections.append("## Table 1: classification (ours, paper in brackets)\n\n"
                        + classification_markdown(tables, n_test))
    if args.skip != "regression":
        reg_dir = default_dataset(events_per_class=n, config=CaloSimConfig(**REGRESSION_SIM_CONFIG), progress=False)
        results, rtables, bias, secs = regression(reg_dir, n, args.seed, np.linspace(10, 510, 11))
        secs_all.update({f"{p} {m}": s for (p, m), s in secs.items()})
        sections.append("## Table 2: energy resolution σ/E = a/√E ⊕ b/E ⊕ c (ours; paper: linear vs CNN)\n\n"
                        + resolution_markdown(results, rtables))
        sections.append("## MSRE vs MRSE (seed 001): bias of the reconstructed energy, DNN on cells\n\n"
                        + bias_markdown(bias))
        t0 = time.perf_counter()
        check = fixed_energy_check(args.fixed_events, args.seed)
        secs_all["fixed-energy check (simulation)"] = time.perf_counter() - t0
        sections.append("## Fixed-energy check: where the linear calibration loses (no training)\n\n"
                        + fixed_energy_markdown(check, args.fixed_events))
    sections.append("## Targets\n\n" + targets_markdown(tables, results, rtables, check))
    sections.append("## Notes\n\n" + NOTES)
    total = time.perf_counter() - t_start
    timing = ", ".join(f"{k} {v:.0f} s" for k, v in secs_all.items())
    sections.append(f"Total {total:.0f} s (training: {timing}).")
    text = "\n\n".join(sections) + "\n"
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    log.info("wrote %s", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
