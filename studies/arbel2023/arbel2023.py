"""Arbel, Menegaux, Wolinski (2023), "Rethinking Gauss-Newton for learning over-parameterized
models": GN against GD on the teacher-student task, across tau0 and N, and hidden learning of
slowed GN.

Run with ``gnflow study arbel2023 [--scale smoke|small|paper] [-o DIR]``; the sizes of each scale
are the tables of ``arbel2023.toml``. Three grids go through the sweep engine:

- ``tau0``: GN (continuous flow) and GD for every tau0 and seed at N = ``n_train``;
- ``n_train``: the same for every N of ``n_grid`` at the tau0 values ``n_grid_tau0``;
- ``slowed``: GN as Euler steps of size h = fraction x N for each fraction of ``slow_steps`` at
  tau0 = ``slow_tau0`` (the continuous flow is the limit h -> 0).

Every run records the observables ``refit`` (output layer refit on the current features; its
value at t = 0 is the random-features baseline) and ``teacher_alignment``.
"""

from __future__ import annotations

from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from gnflow.studies import (
    Claim,
    GridRun,
    StudyContext,
    StudyReport,
    fmt,
    run_grid,
    save_study_figure,
    select,
    table,
    time_to_level,
)

TITLE = "Arbel, Menegaux, Wolinski (2023): Gauss-Newton vs gradient flow on the teacher-student task"
OBSERVE = ["refit", "teacher_alignment"]
FLOWS = {"gn": "Gauss-Newton flow", "gd": "gradient flow"}


def _base(s: dict[str, Any], n_train: int) -> dict[str, Any]:
    return {
        "data": {"kind": "teacher", "n_train": n_train, "n_test": s["n_test"]},
        "model": {"width": s["width"]},
        "observe": {"names": OBSERVE},
        "solver": {
            "n_save": s["n_save"],
            "save_decades": s["save_decades"],
            "stop_loss_ratio": s["stop_loss_ratio"],
            "max_steps": s["max_steps"],
        },
        "output": {"save_test": False},
    }


def _flow_runs(s: dict[str, Any], n_train: int, gd_method: str) -> list[dict[str, Any]]:
    return [
        {"name": "gn", "flow.kind": "gauss_newton", "solver.t_end": s["gn_t_end_per_n"] * n_train},
        {
            "name": "gd",
            "flow.kind": "gradient",
            "solver.method": gd_method,
            "solver.t_end": s["gd_t_end"],
        },
    ]


def _tau_grid(context: StudyContext, name: str, s: dict[str, Any], n_train: int, taus: list[float]) -> list[GridRun]:
    """GN and GD for every tau0 of ``taus`` and every seed at N = ``n_train``.

    GD uses ``gd_method`` below tau0 = ``gd_exponential_from`` and ``kernel_exponential`` from
    there on: in the kernel regime the Jacobian hardly moves, so the exponential step is exact
    over long steps, while an explicit method is held back by the stiffness of A; at small tau0
    the features move and explicit methods are the faster ones.
    """
    threshold = float(s.get("gd_exponential_from", float("inf")))
    groups = [
        (name, [t for t in taus if t < threshold], s["gd_method"]),
        (f"{name}_kernel_exponential", [t for t in taus if t >= threshold], "kernel_exponential"),
    ]
    runs: list[GridRun] = []
    for folder, values, method in groups:
        if values:
            runs += run_grid(
                context,
                folder,
                _base(s, n_train),
                grid={"model.init_scale": values, "seed": list(s["seeds"])},
                runs=_flow_runs(s, n_train, method),
            )
    return runs


def _final(run: GridRun, name: str) -> float:
    return float(run.dataset[name].values[-1])


def _loss_ratio(run: GridRun) -> float:
    loss = run.dataset["train_loss"].values
    return float(loss[-1] / loss[0])


def _converged(run: GridRun) -> bool:
    return str(run.dataset.attrs["gnflow_status"]) == "converged"


def _common_level(gn: GridRun, gd: GridRun, stop_ratio: float) -> float:
    """Train-loss level both flows reached: the stopping level, or the higher of their lowest
    losses when one of them stopped at its horizon."""
    l0 = float(gn.dataset["train_loss"].values[0])
    lowest = max(float(np.nanmin(r.dataset["train_loss"].values)) for r in (gn, gd))
    return max(stop_ratio * l0, lowest)


def _times(gn: GridRun, gd: GridRun, stop_ratio: float) -> tuple[float, float, float]:
    level = _common_level(gn, gd, stop_ratio)
    times = [time_to_level(r.dataset["t"].values, r.dataset["train_loss"].values, level) for r in (gn, gd)]
    l0 = float(gn.dataset["train_loss"].values[0])
    return times[0], times[1], level / l0


def _pairs(runs: list[GridRun], key: str, value: Any, seeds: list[int], **fixed: Any) -> list[tuple[GridRun, GridRun]]:
    out = []
    for seed in seeds:
        where = {key.replace(".", "__"): value, "seed": seed, **fixed}
        out.append((select(runs, "gn", **where)[0], select(runs, "gd", **where)[0]))
    return out


def _hidden_learning(run: GridRun) -> dict[str, float]:
    """Raw and refit test loss at the saved time where the refit test loss is lowest."""
    ds = run.dataset
    refit = ds["refit_test_loss"].values
    k = int(np.nanargmin(refit))
    return {
        "t": float(ds["t"].values[k]),
        "raw": float(ds["test_loss"].values[k]),
        "refit": float(refit[k]),
        "rf": float(ds["random_features_test_loss"]),
        "teacher": float(ds["teacher_feature_distance"].values[k]),
    }


def _stable_euler_steps(gd: GridRun, t: float) -> float:
    """Iterations of discrete gradient descent to flow time t at its largest stable step
    h = 2 N / lambda_max(A) (the largest lambda_max(A) along the run)."""
    n = gd.dataset.sizes["sample"]
    return float(t * np.nanmax(gd.dataset["gram_eigmax"].values) / (2 * n))


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def run(s: dict[str, Any], context: StudyContext) -> StudyReport:
    """Execute the three grids, measure the four claims and draw the figures."""
    seeds = list(s["seeds"])
    n_main = int(s["n_train"])
    stop = float(s["stop_loss_ratio"])
    tau_runs = _tau_grid(context, "tau0", s, n_main, list(s["tau0"]))
    n_runs: list[GridRun] = []
    for n in s["n_grid"]:
        n_runs += _tau_grid(context, f"n_train_{n}", s, n, list(s["n_grid_tau0"]))
    slow_base = _base(s, n_main)
    slow_base["model"]["init_scale"] = s["slow_tau0"]
    slow_base["seed"] = seeds[0]
    slow_base["solver"].update({"method": "euler", "t_end": s["gn_t_end_per_n"] * n_main})
    slow_runs = run_grid(
        context,
        "slowed",
        slow_base,
        runs=[{"name": f"h={frac:g}N", "solver.step_size": frac * n_main} for frac in s["slow_steps"]],
    )
    continuous = select(tau_runs, "gn", model__init_scale=s["slow_tau0"], seed=seeds[0])
    gd_slow = select(tau_runs, "gd", model__init_scale=s["slow_tau0"], seed=seeds[0])

    # --- measurements per tau0 (means over seeds) ---
    rows, per_tau = [], {}
    for tau in s["tau0"]:
        pairs = _pairs(tau_runs, "model.init_scale", tau, seeds)
        t_gn, t_gd, levels = zip(*(_times(gn, gd, stop) for gn, gd in pairs), strict=True)
        m = {
            "t_gn": _mean(list(t_gn)),
            "t_gd": _mean(list(t_gd)),
            "level": max(levels),
            "test_gn": _mean([_final(gn, "test_loss") for gn, _ in pairs]),
            "test_gd": _mean([_final(gd, "test_loss") for _, gd in pairs]),
            "refit_gn": _mean([_final(gn, "refit_test_loss") for gn, _ in pairs]),
            "rf": _mean([float(gn.dataset["random_features_test_loss"]) for gn, _ in pairs]),
            "ratio_gd": max(_loss_ratio(gd) for _, gd in pairs),
            "gd_converged": all(_converged(gd) for _, gd in pairs),
            "gn_converged": all(_converged(gn) for gn, _ in pairs),
            "gd_steps": _mean([_stable_euler_steps(gd, t) for (_, gd), t in zip(pairs, t_gd, strict=True)]),
            "gn_steps": _mean([t / s["arbel_step"] for t in t_gn]),
            "eigmin_gn": _mean([float(np.min(gn.dataset["gram_eigmin"].values[1:])) for gn, _ in pairs]),
            "eigmin_gd": _mean([float(np.min(gd.dataset["gram_eigmin"].values[1:])) for _, gd in pairs]),
        }
        per_tau[tau] = m
        rows.append(
            [
                f"{tau:g}",
                fmt(m["t_gn"]),
                fmt(m["t_gd"]),
                fmt(m["level"], 2),
                fmt(m["ratio_gd"], 2),
                fmt(m["test_gn"]),
                fmt(m["test_gd"]),
                fmt(m["rf"]),
                fmt(m["refit_gn"]),
                fmt(m["gn_steps"]),
                fmt(m["gd_steps"]),
                fmt(m["eigmin_gn"], 2),
                fmt(m["eigmin_gd"], 2),
            ]
        )

    n_rows, per_n = [], {}
    for n in s["n_grid"]:
        for tau in s["n_grid_tau0"]:
            sub = [r for r in n_runs if r.dataset.sizes["sample"] == n]
            pairs = _pairs(sub, "model.init_scale", tau, seeds)
            t_gn, t_gd, levels = zip(*(_times(gn, gd, stop) for gn, gd in pairs), strict=True)
            m = {
                "t_gn": _mean(list(t_gn)),
                "t_gd": _mean(list(t_gd)),
                "test_gn": _mean([_final(gn, "test_loss") for gn, _ in pairs]),
                "test_gd": _mean([_final(gd, "test_loss") for _, gd in pairs]),
                "rf": _mean([float(gn.dataset["random_features_test_loss"]) for gn, _ in pairs]),
                "level": max(levels),
            }
            per_n[(n, tau)] = m
            n_rows.append(
                [
                    str(n),
                    f"{tau:g}",
                    fmt(m["t_gn"]),
                    fmt(m["t_gd"]),
                    fmt(m["level"], 2),
                    fmt(m["test_gn"]),
                    fmt(m["test_gd"]),
                    fmt(m["rf"]),
                ]
            )

    hidden = [(r.label or "", r) for r in slow_runs] + [("continuous", continuous[0])]
    h_rows = []
    for label, r in [*hidden, ("GD", gd_slow[0])]:
        h = _hidden_learning(r)
        h_rows.append(
            [
                label,
                str(r.dataset.attrs["gnflow_status"]),
                fmt(_loss_ratio(r), 2),
                fmt(_final(r, "test_loss")),
                fmt(h["t"]),
                fmt(h["raw"]),
                fmt(h["refit"]),
                fmt(h["teacher"]),
            ]
        )

    claims = _claims(s, per_tau, per_n, hidden, gd_slow[0])
    figures = _figures(s, context, tau_runs, n_runs, per_tau, per_n, hidden, gd_slow[0])
    setup = [
        f"Teacher-student task of SPEC (d = 10, teacher of 5 SiLU units, noiseless labels), N = {n_main} "
        f"training points, {s['n_test']} test points, M = {s['width']} particles, mean-field scaling, "
        f"output weights v = 0 at t = 0, seeds {seeds} (numbers below are means over seeds).",
        f"GN: continuous Gauss-Newton flow, eigmin damping (eps0 = 1e-7), dopri5 (rtol 1e-6, atol 1e-9), "
        f"horizon t_end = {s['gn_t_end_per_n']:g} N. GD: gradient flow, {s['gd_method']} for tau0 < "
        f"{s.get('gd_exponential_from', float('inf')):g} and kernel_exponential above (rtol 1e-6), horizon t_end = "
        f"{s['gd_t_end']:g}. Both stop when the train loss reaches {stop:g} x its initial value.",
        "The gradient flow of the mean-field model is slow: its time scale is about N / lambda_min(A), "
        "with A of order 1/M. Where GD stopped at its horizon, its loss there is reported and "
        "'faster' compares the flow times at which GN and GD first reach a common train-loss level "
        "(the stopping level, or the higher of the two lowest losses).",
        "Random-features baseline: the output layer refit (minimum-norm least squares) on the initial "
        "features, `random_features_test_loss` of the `refit` observable.",
        f"N grid {list(s['n_grid'])} at tau0 in {list(s['n_grid_tau0'])}; slowed GN at tau0 = {s['slow_tau0']:g}: "
        f"Euler steps h = {', '.join(f'{f:g}' for f in s['slow_steps'])} x N and the continuous flow.",
    ]
    sections = {
        "Results across tau0": table(
            [
                "tau0",
                "t GN",
                "t GD",
                "level / L0",
                "GD final L/L0",
                "test GN",
                "test GD",
                "test RF",
                "refit test GN",
                "GN steps (h = arbel_step)",
                "GD steps (h = 2N/lambda_max)",
                "min eig A GN",
                "min eig A GD",
            ],
            rows,
        ),
        "Results across N": table(["N", "tau0", "t GN", "t GD", "level / L0", "test GN", "test GD", "test RF"], n_rows),
        "Slowed Gauss-Newton (hidden learning)": table(
            [
                "run",
                "status",
                "final L/L0",
                "final test loss",
                "t of best refit",
                "test loss at t",
                "refit test loss at t",
                "teacher feature distance at t",
            ],
            h_rows,
        ),
    }
    return StudyReport(title=TITLE, setup=setup, claims=claims, figures=figures, sections=sections)


def _claims(
    s: dict[str, Any],
    per_tau: dict[float, dict[str, Any]],
    per_n: dict[tuple[int, float], dict[str, Any]],
    hidden: list[tuple[str, GridRun]],
    gd: GridRun,
) -> list[Claim]:
    claims = []
    faster = all(m["t_gd"] > m["t_gn"] for m in per_tau.values())
    any_gd_open = not all(m["gd_converged"] for m in per_tau.values())
    claims.append(
        Claim(
            "GN reaches the training optimum faster than GD at every tau0 (flow time).",
            "; ".join(
                f"tau0={tau:g}: t_GN={fmt(m['t_gn'])}, t_GD={fmt(m['t_gd'])} (level {fmt(m['level'], 2)} L0)"
                for tau, m in per_tau.items()
            ),
            "supported" if faster else "not supported",
            "Flow time to the common train-loss level."
            + (
                " GD stopped at its horizon or step limit for some tau0; the level is then the higher of the two "
                "lowest losses."
                if any_gd_open
                else ""
            ),
        )
    )
    fewer = all(m["gd_steps"] > m["gn_steps"] for m in per_tau.values())
    claims.append(
        Claim(
            "GN reaches the training optimum faster than GD at every tau0 (iterations of the discrete methods).",
            "; ".join(
                f"tau0={tau:g}: GN {fmt(m['gn_steps'])} steps, GD {fmt(m['gd_steps'])} steps"
                for tau, m in per_tau.items()
            ),
            "supported" if fewer else "not supported",
            f"Iterations to the same level: GN as Euler steps of Arbel et al.'s size h = {s['arbel_step']:g} "
            "(t_GN / h), GD at its largest stable step h = 2N / lambda_max(A) (t_GD lambda_max / 2N, the largest "
            "lambda_max(A) of the run).",
        )
    )

    large = [t for t in s["large_tau0"] if t in per_tau]
    tol = float(s["alike_tolerance"])
    alike, close, open_gd = True, True, False
    parts = []
    for tau in large:
        m = per_tau[tau]
        gap = abs(m["test_gn"] - m["test_gd"]) / min(m["test_gn"], m["test_gd"])
        to_rf = max(m["test_gn"], m["test_gd"]) / m["rf"]
        alike &= gap <= tol
        close &= abs(to_rf - 1) <= tol
        open_gd |= m["ratio_gd"] > 1e-3
        parts.append(
            f"tau0={tau:g}: test GN={fmt(m['test_gn'])}, GD={fmt(m['test_gd'])}, RF={fmt(m['rf'])} "
            f"(GN-GD gap {fmt(100 * gap, 2)}%, max/RF={fmt(to_rf)})"
        )
    verdict = "supported" if alike and close else "not supported"
    if open_gd and verdict == "not supported":
        verdict = "inconclusive"
    claims.append(
        Claim(
            "At large tau0 (kernel regime) GN and GD generalize alike and close to random features.",
            "; ".join(parts),
            verdict,
            f"'alike' and 'close' mean within {100 * tol:g}% relative."
            + (" GD had not fitted the data at its horizon (L/L0 > 1e-3)." if open_gd else ""),
        )
    )

    small = [t for t in s["small_tau0"] if t in per_tau]
    worse = all(per_tau[t]["test_gn"] > per_tau[t]["test_gd"] for t in small)
    open_small = any(per_tau[t]["ratio_gd"] > 1e-3 for t in small)
    parts = [
        f"tau0={t:g}: test GN={fmt(per_tau[t]['test_gn'])} vs GD={fmt(per_tau[t]['test_gd'])} "
        f"(GD L/L0={fmt(per_tau[t]['ratio_gd'], 2)})"
        for t in small
    ]
    verdict = "supported" if worse else "not supported"
    if open_small:
        verdict = "inconclusive"
    claims.append(
        Claim(
            "At small tau0 (feature regime) GN's test loss is worse than GD's.",
            "; ".join(parts),
            verdict,
            "GD had not fitted the data at its horizon (L/L0 > 1e-3), so its test loss is not final."
            if open_small
            else "",
        )
    )

    # "small step" = the smallest Euler step and its limit, the continuous flow
    parts, present = [], []
    for label, r in hidden:
        h = _hidden_learning(r)
        if label in (hidden[-2][0], hidden[-1][0]):
            present.append(h["refit"] < 0.5 * h["raw"] and h["refit"] < h["rf"])
        parts.append(f"{label}: at t={fmt(h['t'])} test {fmt(h['raw'])} vs refit test {fmt(h['refit'])}")
    rf = float(gd.dataset["random_features_test_loss"])
    parts.append(f"RF {fmt(rf)}; GD final test {fmt(_final(gd, 'test_loss'))}")
    verdict = "supported" if all(present) else "not supported" if not any(present) else "inconclusive"
    claims.append(
        Claim(
            "With small tau0 and a small step, GN's features refit to a good test loss although its own "
            "test loss is poor (hidden learning).",
            f"tau0={s['slow_tau0']:g}: " + "; ".join(parts),
            verdict,
            "At the saved time t where a run's refit test loss is lowest, hidden learning is present when "
            "the refit test loss is below half the network's own test loss at t and below the "
            "random-features baseline (RF). Supported: present for the smallest Euler step and for the "
            "continuous flow; inconclusive: present for one of them only.",
        )
    )

    faster_n = all(m["t_gd"] > m["t_gn"] for m in per_n.values())
    claims.append(
        Claim(
            "GN is faster than GD at every training-set size N as well.",
            "; ".join(
                f"N={n}, tau0={tau:g}: t_GN={fmt(m['t_gn'])}, t_GD={fmt(m['t_gd'])}" for (n, tau), m in per_n.items()
            ),
            "supported" if faster_n else "not supported",
        )
    )
    return claims


def _tau_colors(values: list[float]) -> dict[float, Any]:
    cmap = plt.get_cmap("viridis")
    return {v: cmap(i / max(1, len(values) - 1)) for i, v in enumerate(values)}


def _figures(
    s: dict[str, Any],
    context: StudyContext,
    tau_runs: list[GridRun],
    n_runs: list[GridRun],
    per_tau: dict[float, dict[str, Any]],
    per_n: dict[tuple[int, float], dict[str, Any]],
    hidden: list[tuple[str, GridRun]],
    gd: GridRun,
) -> list[tuple[Any, str]]:
    seed = s["seeds"][0]
    taus = list(s["tau0"])
    colors = _tau_colors(taus)
    figures = []

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for tau in taus:
        for label, style in (("gn", "-"), ("gd", "--")):
            ds = select(tau_runs, label, model__init_scale=tau, seed=seed)[0].dataset
            t = ds["t"].values[1:]
            axes[0].loglog(
                t,
                ds["train_loss"].values[1:],
                style,
                color=colors[tau],
                label=f"{label.upper()} tau0={tau:g}",
            )
            axes[1].loglog(t, ds["test_loss"].values[1:], style, color=colors[tau])
            axes[2].loglog(t, ds["gram_eigmin"].values[1:], style, color=colors[tau])
    for ax, name in zip(axes, ("train loss", "test loss", "lambda_min(A)"), strict=True):
        ax.set_xlabel("flow time t")
        ax.set_ylabel(name)
        ax.grid(True, which="major", alpha=0.3)
    axes[0].legend(fontsize=6, ncol=2)
    fig.suptitle(f"GN (solid) and GD (dashed), N = {s['n_train']}, M = {s['width']}, seed {seed}")
    fig.tight_layout()
    figures.append(
        (
            save_study_figure(fig, context, "loss_curves"),
            "Train loss, test loss and lambda_min of the Gram matrix A against flow time, per tau0.",
        )
    )

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    x = np.asarray(taus)
    for key, label, marker in (
        ("test_gn", "GN", "o"),
        ("test_gd", "GD", "s"),
        ("rf", "random features", "^"),
        ("refit_gn", "GN features, output refit", "x"),
    ):
        axes[0].loglog(x, [per_tau[t][key] for t in taus], marker=marker, label=label)
    axes[0].set_xlabel("tau0")
    axes[0].set_ylabel("final test loss")
    axes[0].legend(fontsize=8)
    axes[1].loglog(x, [per_tau[t]["t_gn"] for t in taus], "o-", label="GN")
    axes[1].loglog(x, [per_tau[t]["t_gd"] for t in taus], "s--", label="GD")
    axes[1].set_xlabel("tau0")
    axes[1].set_ylabel("flow time to the common loss level")
    axes[1].legend(fontsize=8)
    for ax in axes:
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    figures.append(
        (
            save_study_figure(fig, context, "tau0_summary"),
            "Final test loss against tau0 (GN, GD, random features, GN's features with the output layer "
            "refit) and flow time to reach the common train-loss level.",
        )
    )

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    ns = list(s["n_grid"])
    for tau in s["n_grid_tau0"]:
        axes[0].loglog(ns, [per_n[(n, tau)]["test_gn"] for n in ns], "o-", label=f"GN tau0={tau:g}")
        axes[0].loglog(ns, [per_n[(n, tau)]["test_gd"] for n in ns], "s--", label=f"GD tau0={tau:g}")
        axes[1].loglog(ns, [per_n[(n, tau)]["t_gn"] for n in ns], "o-", label=f"GN tau0={tau:g}")
        axes[1].loglog(ns, [per_n[(n, tau)]["t_gd"] for n in ns], "s--", label=f"GD tau0={tau:g}")
    axes[0].set_ylabel("final test loss")
    axes[1].set_ylabel("flow time to the common loss level")
    for ax in axes:
        ax.set_xlabel("N")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    figures.append(
        (
            save_study_figure(fig, context, "n_train_summary"),
            "Final test loss and time to the common train-loss level against the training-set size N.",
        )
    )

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    cmap = plt.get_cmap("plasma")
    for i, (label, r) in enumerate([*hidden, ("GD", gd)]):
        ds = r.dataset
        t = ds["t"].values[1:]
        color = cmap(i / max(1, len(hidden)))
        axes[0].loglog(t, ds["test_loss"].values[1:], "-", color=color, label=f"{label}: test loss")
        axes[0].loglog(t, ds["refit_test_loss"].values[1:], ":", color=color, label=f"{label}: refit test loss")
        axes[1].semilogx(t, ds["teacher_feature_distance"].values[1:], "-", color=color, label=label)
    axes[0].axhline(
        float(gd.dataset["random_features_test_loss"]),
        color="grey",
        lw=0.8,
        label="random features",
    )
    axes[0].set_ylabel("test loss")
    axes[1].set_ylabel("feature distance to the teacher")
    for ax in axes:
        ax.set_xlabel("flow time t")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=6)
    fig.suptitle(f"Slowed GN at tau0 = {s['slow_tau0']:g}: raw and refit test loss, teacher alignment")
    fig.tight_layout()
    figures.append(
        (
            save_study_figure(fig, context, "hidden_learning"),
            "Hidden learning: test loss of the network (solid) and of its features with the output layer "
            "refit (dotted), and the distance of the features to the teacher's, for GN Euler steps of "
            "decreasing size, the continuous GN flow and GD.",
        )
    )
    return figures
