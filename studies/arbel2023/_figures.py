"""The figures of the arbel2023 study, one per figure of the paper, and the study's NetCDF that holds
the data of every figure (``<out>/arbel2023.nc``)."""

from __future__ import annotations

import math
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import xarray as xr

from gnflow.dataset import atomic_write, cf_attributes
from gnflow.studies import StudyContext, save_study_figure


def _geo(values: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """Geometric mean over seeds and its t interval (the interval of the verdicts, ratio to 1)."""
    from scipy import stats

    logs = np.log(np.asarray([v for v in values if math.isfinite(v) and v > 0], dtype=np.float64))
    if logs.size == 0:
        return (math.nan,) * 3
    m = float(np.mean(logs))
    if logs.size < 2:
        return math.exp(m), math.nan, math.nan
    half = float(stats.t.ppf(0.5 + level / 2, logs.size - 1) * np.std(logs, ddof=1) / math.sqrt(logs.size))
    return math.exp(m), math.exp(m - half), math.exp(m + half)


def _errorbar(ax: Any, x: np.ndarray, stats3: np.ndarray, **kw: Any) -> None:
    c, lo, hi = stats3[:, 0], stats3[:, 1], stats3[:, 2]
    err = np.vstack([np.where(np.isfinite(lo), c - lo, 0), np.where(np.isfinite(hi), hi - c, 0)])
    ax.errorbar(x, c, yerr=err, capsize=3, **kw)


def draw(s: dict[str, Any], context: StudyContext, p: Any, by_n: dict[int, Any]) -> list[tuple[Any, str]]:
    """Draw the five figures and write their data into ``<out>/arbel2023.nc``."""
    taus = np.asarray(p.taus)
    lam = float(s["lam"])
    budget = float(s["sweep_iterations"])
    data: dict[str, Any] = {}
    out = []

    # 1. test loss against tau0 (paper Figure 2)
    series: dict[str, tuple[str, np.ndarray]] = {}
    for arm in p.gn_arms:
        series[arm.name] = (arm.label, np.array([_geo(p.values(arm.name, t, "final_test")) for t in p.taus]))
    series["gd"] = (
        p.arms["gd"].label + ", the paper's",
        np.array([_geo(p.values("gd", t, "final_test")) for t in p.taus]),
    )
    series["gd_flow"] = (
        p.arms["gd_flow"].label,
        np.array([_geo(p.values("gd_flow", t, "final_test")) for t in p.taus]),
    )
    paper = p.gn_arms[0].name
    series["rf"] = ("random features", np.array([_geo(p.values(paper, t, "rf_test")) for t in p.taus]))
    for name in (paper, "gn_flow"):
        series[f"refit_{name}"] = (
            f"refit of {p.arms[name].label} (time on validation)",
            np.array([_geo(p.values(name, t, "refit_test")) for t in p.taus]),
        )
    fig, ax = plt.subplots(figsize=(8, 5))
    for k, (name, (label, st)) in enumerate(series.items()):
        _errorbar(
            ax,
            taus * (1.0 + 0.03 * k),
            st,
            marker="os^vDx+*<>p"[k % 11],
            label=label,
            ls="-" if name.startswith("g") else ":",
        )
        data[f"fig1_test_{name}"] = (("tau0", "stat"), st, {"long_name": f"final test loss: {label}", "units": "1"})
    lazy = np.array(_geo(p.lazy_limit))
    ax.axhline(lazy[0], color="0.3", lw=1.0, ls="--", label="kernel limit (M -> inf, tau0 -> inf; lazy)")
    ax.axhspan(lazy[1], lazy[2], color="0.3", alpha=0.12, lw=0)
    data["fig1_test_lazy_limit"] = (
        ("stat",),
        lazy,
        {"long_name": "test loss of the kernel limit of the random-features refit (M, tau0 -> infinity)", "units": "1"},
    )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("tau0")
    ax.set_ylabel("test loss (test half), geometric mean over seeds, 95% t interval")
    ax.legend(fontsize=6)
    ax.grid(True, alpha=0.3)
    ax.set_title(f"N = {p.n}, M = {s['width']}, {len(p.seeds)} seeds")
    fig.tight_layout()
    out.append(
        (
            save_study_figure(fig, context, "test_loss_vs_tau0"),
            "Final test loss against tau0 for every arm, random features, the refits and the kernel limit of the "
            "random features (dashed, its band the interval over seeds).",
        )
    )

    # 2. train loss against iterations; 3. lambda_min(A) along training
    seed = p.seeds[0]
    discrete = [a for a in p.gn_arms if a.lam is not None] + [p.arms["gd"]]
    for fig_no, var, ylabel, stem in (
        (2, "train_loss", "train loss", "train_loss_vs_iterations"),
        (3, "gram_eigmin", "lambda_min(A)", "eigmin_vs_iterations"),
    ):
        fig, axes = plt.subplots(1, len(p.taus), figsize=(3.2 * len(p.taus), 3.4), squeeze=False)
        arms = discrete if fig_no == 2 else [p.gn_arms[0], p.arms["gd"]]
        for ax, t in zip(axes[0], p.taus, strict=True):
            for arm in arms:
                ds = p.runs[(arm.name, t, seed)].dataset
                it = ds["t"].values[1:] / (arm.lam or lam)
                ax.loglog(it, ds[var].values[1:], label=arm.label)
                data[f"fig{fig_no}_{arm.name}_tau{t:g}"] = (
                    (f"saved_{arm.name}_{t:g}",),
                    ds[var].values,
                    {"long_name": f"{ylabel} of {arm.label} at tau0 = {t:g}, seed {seed}", "units": "1"},
                )
                data[f"fig{fig_no}_{arm.name}_tau{t:g}_iteration"] = (
                    (f"saved_{arm.name}_{t:g}",),
                    ds["t"].values / (arm.lam or lam),
                    {"long_name": "iterations (t / lam)", "units": "1"},
                )
            ax.set_title(f"tau0 = {t:g}", fontsize=8)
            ax.set_xlabel("iterations")
            ax.grid(True, alpha=0.3)
        axes[0][0].set_ylabel(ylabel)
        axes[0][0].legend(fontsize=5)
        fig.tight_layout()
        caption = (
            "Train loss against iterations of the discrete methods (GN at each lam, GD at lam = 10), seed 1."
            if fig_no == 2
            else f"lambda_min(A) along training for GN and GD at lam = {lam:g}, seed 1."
        )
        out.append((save_study_figure(fig, context, stem), caption))

    # 4. hidden learning against lam
    sweep = [a for a in p.gn_arms if a.role in ("paper", "sweep")]
    lams = np.array([a.lam for a in sweep])
    hidden_taus = [t for t in s["hidden_tau0"] if t in p.taus]
    fig, axes = plt.subplots(1, max(1, len(hidden_taus)), figsize=(5 * max(1, len(hidden_taus)), 4), squeeze=False)
    for ax, t in zip(axes[0], hidden_taus, strict=False):
        refit = np.array([_geo(p.hidden(a.name, t)[0]) for a in sweep])
        raw = np.array([_geo(p.hidden(a.name, t)[1]) for a in sweep])
        _errorbar(ax, lams, refit, marker="o", label="refit of GN's features (time on validation)")
        _errorbar(ax, lams, raw, marker="s", label=f"GN's own test loss at {budget:g} iterations")
        ax.axhline(_geo(p.values("gd", t, "final_test"))[0], color="k", ls="--", lw=0.8, label="GD final")
        ax.axhline(
            _geo(p.values(p.gn_arms[0].name, t, "final_test"))[0],
            color="r",
            ls=":",
            lw=0.8,
            label=f"GN lam={lam:g} final",
        )
        ax.axhline(_geo(p.values("gn_flow", t, "final_test"))[0], color="g", ls="-.", lw=0.8, label="GN flow final")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("lam (GN step)")
        ax.set_title(f"tau0 = {t:g}, budget {budget:g} iterations", fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=6)
        data[f"fig4_refit_tau{t:g}"] = (
            ("lam", "stat"),
            refit,
            {"long_name": f"refit test loss at tau0 = {t:g}", "units": "1"},
        )
        data[f"fig4_raw_tau{t:g}"] = (
            ("lam", "stat"),
            raw,
            {"long_name": f"test loss at the budget, tau0 = {t:g}", "units": "1"},
        )
    axes[0][0].set_ylabel("test loss (test half)")
    fig.tight_layout()
    out.append(
        (
            save_study_figure(fig, context, "hidden_learning_vs_lam"),
            "Hidden learning against lam at a fixed iteration budget: refit of GN's features (time chosen on "
            "validation), GN's own test loss, GD's and the fast GN's final test losses.",
        )
    )

    # 5. the N sweep at tau0 in n_grid_tau0
    ns = sorted(by_n)
    n_taus = [float(t) for t in s["n_grid_tau0"]]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for t in n_taus:
        gn = np.array([_geo(by_n[n].values(by_n[n].gn_arms[0].name, t, "final_test")) for n in ns])
        gd = np.array([_geo(by_n[n].values("gd", t, "final_test")) for n in ns])
        speed = np.array([_geo(by_n[n].iterations_to_level(t, by_n[n].gn_arms[0].name)) for n in ns])
        _errorbar(axes[0], np.asarray(ns, dtype=float), gn, marker="o", label=f"GN lam={lam:g}, tau0={t:g}")
        _errorbar(axes[0], np.asarray(ns, dtype=float), gd, marker="s", ls="--", label=f"GD lam={lam:g}, tau0={t:g}")
        _errorbar(axes[1], np.asarray(ns, dtype=float), speed, marker="o", label=f"tau0={t:g}")
        for name, st in (("gn", gn), ("gd", gd), ("iteration_ratio", speed)):
            data[f"fig5_{name}_tau{t:g}"] = (
                ("n_train", "stat"),
                st,
                {"long_name": f"N sweep {name}, tau0 = {t:g}", "units": "1"},
            )
    axes[0].set_ylabel("final test loss (test half)")
    axes[1].set_ylabel("GN iterations / GD iterations to a common level")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("N")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    out.append(
        (
            save_study_figure(fig, context, "n_sweep"),
            "The N sweep: final test loss of GN and GD at lam = 10, and the ratio of their iterations to a "
            "common level.",
        )
    )

    coords = {
        "tau0": ("tau0", taus, {"long_name": "initial scale tau0", "units": "1"}),
        "stat": (
            "stat",
            np.array(["geometric_mean", "low", "high"]),
            {"long_name": "geometric mean over seeds and 95% t interval", "units": "1"},
        ),
        "lam": ("lam", lams, {"long_name": "GN step lam", "units": "1"}),
        "n_train": ("n_train", np.asarray(ns), {"long_name": "training points N", "units": "1"}),
    }
    ds = xr.Dataset(data, coords=coords)
    ds.attrs.update(
        cf_attributes("arbel2023 study: the data of its figures", f"gnflow study arbel2023 --scale {context.scale}")
    )
    atomic_write(context.out_dir / "arbel2023.nc", lambda tmp: ds.to_netcdf(tmp))
    return out
