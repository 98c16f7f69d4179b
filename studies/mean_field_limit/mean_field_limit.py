"""Mean-field limit: GN and GD trajectories of M particles converge as M grows.

Run with ``gnflow study mean_field_limit [--scale smoke|small|paper] [-o DIR]``; the sizes of each
scale are the tables of ``mean_field_limit.toml``.

All widths share one seed family: the initial particles of width M are the first M particles of
the widest draw, and the data are the same. The widest run is the reference. For each flow and
width M the study measures

- the loss gap sup_t |L_M(t) - L_ref(t)| / L_ref(0) over the common saved times;
- the coupling distance sup_t (mean_{i<M} |w_i^M(t) - w_i^ref(t)|^2)^(1/2) between particle i of
  the width-M run and particle i of the reference (the synchronous coupling of propagation of
  chaos; an upper bound of W2(mu_M(t), mu_ref(t)));
- the sliced Wasserstein-2 distance between the particle measures at the final common time;

and fits the rate: the slope of each against M on log-log axes (-1/2 for Monte-Carlo
fluctuations). GD is compared at equal mean-field time s = t / M, since the gradient flow of the
1/M-scaled model moves each particle at speed O(1/M) in flow time t; GN, whose step is invariant
to the scale of the Gram matrix, at equal t.
"""

from __future__ import annotations

from typing import Any

import matplotlib

matplotlib.use("Agg")
import itertools

import matplotlib.pyplot as plt
import numpy as np

from gnflow.studies import (
    Claim,
    GridRun,
    StudyContext,
    StudyReport,
    fmt,
    loglog_slope,
    run_grid,
    save_study_figure,
    select,
    table,
)

TITLE = "Mean-field limit: convergence of Gauss-Newton and gradient-flow trajectories as the width grows"
FLOWS = {"gn": "Gauss-Newton flow", "gd": "gradient flow"}


def _runs(s: dict[str, Any], context: StudyContext) -> list[GridRun]:
    runs: list[GridRun] = []
    base = {
        "seed": s["seed"],
        "data": {"kind": "teacher", "n_train": s["n_train"], "n_test": s["n_test"]},
        "model": {"init_scale": s["tau0"]},
        "solver": {
            "n_save": s["n_save"],
            "save_decades": s["save_decades"],
            "stop_loss_ratio": 0.0,
            "max_steps": s["max_steps"],
        },
        "output": {"save_test": False},
    }
    gn = {**base, "flow": {"kind": "gauss_newton"}}
    gn["solver"] = {**base["solver"], "t_end": s["gn_t_end_per_n"] * s["n_train"]}
    runs += run_grid(context, "gn", gn, grid={"model.width": s["widths"]})
    for width in s["widths"]:  # GD's horizon grows with M: equal mean-field time s = t / M
        gd = {**base, "flow": {"kind": "gradient"}, "model": {**base["model"], "width": width}}
        gd["solver"] = {**base["solver"], "t_end": s["gd_s_end"] * width, "method": s["gd_method"]}
        runs += [
            GridRun(label="gd", values={"model.width": width}, path=r.path, dataset=r.dataset)
            for r in run_grid(context, f"gd_M{width}", gd)
        ]
    return [
        r if r.label == "gd" else GridRun(label="gn", values=dict(r.values), path=r.path, dataset=r.dataset)
        for r in runs
    ]


def _time_axis(run: GridRun, flow: str) -> np.ndarray:
    t = run.dataset["t"].values
    return t / int(run.value("model.width")) if flow == "gd" else t


def _distances(run: GridRun, ref: GridRun, flow: str, projections: int) -> dict[str, float]:
    from gnflow.transport import wasserstein2

    t, t_ref = _time_axis(run, flow), _time_axis(ref, flow)
    common = np.intersect1d(np.round(t, 9), np.round(t_ref, 9))
    idx = np.searchsorted(np.round(t, 9), common)
    idx_ref = np.searchsorted(np.round(t_ref, 9), common)
    loss, loss_ref = (
        run.dataset["train_loss"].values[idx],
        ref.dataset["train_loss"].values[idx_ref],
    )
    width = int(run.value("model.width"))
    w = run.dataset["weights"].values[idx]
    w_ref = ref.dataset["weights"].values[idx_ref][:, :width]
    coupling = np.sqrt(np.mean(np.sum((w - w_ref) ** 2, axis=-1), axis=-1))
    sliced = wasserstein2(
        run.dataset["weights"].values[idx[-1]],
        ref.dataset["weights"].values[idx_ref[-1]],
        exact_max=1,
        n_projections=projections,
    ).distance
    return {
        "loss_gap": float(np.max(np.abs(loss - loss_ref)) / loss_ref[0]),
        "coupling": float(np.max(coupling)),
        "initial_coupling": float(coupling[0]),
        "sliced_w2_final": float(sliced),
        "common_times": int(common.size),
        "t_final": float(common[-1]),
    }


def run(s: dict[str, Any], context: StudyContext) -> StudyReport:
    """Run GN and GD for every width, measure the distances to the widest run and their rates."""
    runs = _runs(s, context)
    widths = sorted(int(m) for m in s["widths"])
    ref_width = widths[-1]
    measured: dict[str, dict[int, dict[str, float]]] = {}
    rates: dict[str, dict[str, float]] = {}
    for flow in FLOWS:
        ref = select(runs, flow, model__width=ref_width)[0]
        measured[flow] = {
            m: _distances(select(runs, flow, model__width=m)[0], ref, flow, int(s["wasserstein_projections"]))
            for m in widths[:-1]
        }
        rates[flow] = {
            key: loglog_slope(widths[:-1], [measured[flow][m][key] for m in widths[:-1]])
            for key in ("loss_gap", "coupling", "sliced_w2_final")
        }
    claims = []
    for flow, name in FLOWS.items():
        gaps = [measured[flow][m]["loss_gap"] for m in widths[:-1]]
        couplings = [measured[flow][m]["coupling"] for m in widths[:-1]]
        decreasing = all(b < a for a, b in itertools.pairwise(gaps)) and all(
            b < a for a, b in itertools.pairwise(couplings)
        )
        rate_ok = rates[flow]["loss_gap"] <= -float(s["min_rate"]) and rates[flow]["coupling"] <= -float(s["min_rate"])
        claims.append(
            Claim(
                f"The {name} trajectories of M particles converge as M grows (loss curves and particle measures), "
                "at the Monte-Carlo rate M^(-1/2).",
                "; ".join(
                    f"M={m}: loss gap {fmt(measured[flow][m]['loss_gap'])}, "
                    f"coupling {fmt(measured[flow][m]['coupling'])}, "
                    f"SW2 {fmt(measured[flow][m]['sliced_w2_final'])}"
                    for m in widths[:-1]
                )
                + f"; slopes vs M: loss gap {fmt(rates[flow]['loss_gap'])}, coupling {fmt(rates[flow]['coupling'])}, "
                f"SW2 {fmt(rates[flow]['sliced_w2_final'])}",
                "supported" if decreasing and rate_ok else "not supported",
                f"Supported = the loss gap and the coupling distance decrease with M and both fall at least as "
                f"fast as M^(-{s['min_rate']:g}). Reference: M = {ref_width}.",
            )
        )
    figures = _figures(s, context, runs, measured, rates, widths)
    rows = [
        [
            FLOWS[flow],
            str(m),
            fmt(d["loss_gap"]),
            fmt(d["coupling"]),
            fmt(d["initial_coupling"]),
            fmt(d["sliced_w2_final"]),
            fmt(d["t_final"]),
        ]
        for flow in FLOWS
        for m, d in measured[flow].items()
    ]
    setup = [
        f"Teacher-student task (d = 10, teacher of 5 SiLU units), N = {s['n_train']}, tau0 = {s['tau0']:g}, "
        f"v = 0 at t = 0, seed {s['seed']}; widths M = {widths}; reference M = {ref_width}.",
        f"GN: eigmin damping, dopri5, t in [0, {s['gn_t_end_per_n']:g} N]. GD: {s['gd_method']}, mean-field time "
        f"s = t / M in [0, {s['gd_s_end']:g}]. No early stop, {s['n_save']} log-spaced saved times over "
        f"{s['save_decades']:g} decades, the same for every width (in t for GN, in s for GD).",
        "The initial particles of width M are the first M particles of the reference draw (the "
        "`initial coupling` column is 0 when they are).",
        f"Sliced W2: {s['wasserstein_projections']} random directions, between the particle measures at the last "
        "common saved time.",
    ]
    sections = {
        "Distances to the widest run": table(
            [
                "flow",
                "M",
                "sup_t loss gap / L(0)",
                "sup_t coupling distance",
                "initial coupling",
                "SW2 at the end",
                "last common time",
            ],
            rows,
        ),
        "Measured rates": table(
            ["flow", "slope of loss gap", "slope of coupling distance", "slope of SW2"],
            [[FLOWS[f], fmt(r["loss_gap"]), fmt(r["coupling"]), fmt(r["sliced_w2_final"])] for f, r in rates.items()],
        ),
    }
    return StudyReport(title=TITLE, setup=setup, claims=claims, figures=figures, sections=sections)


def _figures(
    s: dict[str, Any],
    context: StudyContext,
    runs: list[GridRun],
    measured: dict[str, Any],
    rates: dict[str, Any],
    widths: list[int],
) -> list[tuple[Any, str]]:
    figures = []
    cmap = plt.get_cmap("viridis")
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for k, (flow, name) in enumerate(FLOWS.items()):
        for i, m in enumerate(widths):
            r = select(runs, flow, model__width=m)[0]
            t = _time_axis(r, flow)[1:]
            axes[k].loglog(
                t,
                r.dataset["train_loss"].values[1:],
                color=cmap(i / max(1, len(widths) - 1)),
                label=f"M = {m}",
            )
        axes[k].set_xlabel("flow time t" if flow == "gn" else "mean-field time s = t / M")
        axes[k].set_ylabel("train loss")
        axes[k].set_title(name)
        axes[k].legend(fontsize=7)
        axes[k].grid(True, alpha=0.3)
    ms = np.asarray(widths[:-1], dtype=float)
    for flow, marker in (("gn", "o"), ("gd", "s")):
        for key, style in (("loss_gap", "-"), ("coupling", "--"), ("sliced_w2_final", ":")):
            axes[2].loglog(
                ms,
                [measured[flow][m][key] for m in widths[:-1]],
                marker + style,
                label=f"{flow.upper()} {key} (slope {fmt(rates[flow][key], 2)})",
            )
    axes[2].loglog(
        ms,
        ms**-0.5 * measured["gn"][widths[0]]["coupling"] * widths[0] ** 0.5,
        "k-",
        lw=0.6,
        label="M^(-1/2)",
    )
    axes[2].set_xlabel("width M")
    axes[2].set_ylabel("distance to the widest run")
    axes[2].legend(fontsize=6, loc="lower left")
    axes[2].grid(True, alpha=0.3)
    fig.tight_layout()
    figures.append(
        (
            save_study_figure(fig, context, "convergence"),
            "Train loss of each width (GN against flow time, GD against mean-field time) and the distances "
            "to the widest run against M, with the fitted log-log slopes.",
        )
    )

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for k, flow in enumerate(FLOWS):
        for i, m in enumerate((widths[0], widths[-1])):
            ds = select(runs, flow, model__width=m)[0].dataset
            w = ds["weights"].values[-1]
            norm_u = np.linalg.norm(w[:, :-2], axis=1)
            axes[k].scatter(
                norm_u,
                w[:, -1],
                s=4,
                alpha=0.5,
                color=("tab:orange", "tab:blue")[i],
                label=f"M = {m}",
            )
        axes[k].set_xlabel("|u_i| at the final time")
        axes[k].set_ylabel("v_i at the final time")
        axes[k].set_title(FLOWS[flow])
        axes[k].legend(fontsize=8)
        axes[k].grid(True, alpha=0.3)
    fig.tight_layout()
    figures.append(
        (
            save_study_figure(fig, context, "particles"),
            "Final particle measures of the narrowest and the widest run: input-weight norm against output "
            "weight of each particle.",
        )
    )
    return figures
