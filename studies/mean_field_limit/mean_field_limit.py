"""Mean-field limit: GN and GD trajectories of M particles converge as M grows, at which rate.

Run with ``gnflow study mean_field_limit [--scale smoke|small|paper] [-o DIR]``; the sizes of each
scale are the tables of ``mean_field_limit.toml``.

Per seed (one data set) and initial scale tau0 the study runs, for every width M of the grid,
the particle draw A of that seed (``model.init_seed`` unset: the widths are nested prefixes of
one draw), and at the largest width M_ref a second, independent draw B of the same initial law on
the same data (``model.init_seed = seed + offset``). Flows: the M-consistent Gauss-Newton flow
(eigmin damping with eps0 = gn_epsilon / M, ``flow.epsilon_scaling = "per_particle"``), the
paper's GN with an absolute eps0, and the gradient flow (compared at equal mean-field time
s = t / M). For a quantity q (the network on test points, the train loss) the squared distance
to the limit is estimated without bias from the independent reference,

    e^2(M) = |q_M^A - q_ref^B|^2 - |q_ref^A - q_ref^B|^2 / 2,

since E|q_M^A - q_ref^B|^2 = e^2(M) + e^2(M_ref) and E|q_ref^A - q_ref^B|^2 = 2 e^2(M_ref) (the two
draws are independent). The coupling distance uses the synchronous coupling of particle i of the
width-M run and of the nested reference q_ref^A; their measures differ by the fluctuation of M
particles minus that of M_ref, of variance proportional to 1/M - 1/M_ref, so it is divided by
(1 - M / M_ref)^(1/2). The sliced W2 between the draws is corrected for its t = 0 value (the
Monte-Carlo floor of two empirical measures): (SW2(t)^2 - SW2(0)^2)^(1/2). Each error's slope
against M is fitted per seed and decided by :func:`gnflow.rates.rate_comparison`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
import xarray as xr

from gnflow.dataset import atomic_write, cf_attributes, run_config_of
from gnflow.kernels import QuadratureRule, kernel_regression, random_features_kernel
from gnflow.model import ParticleModel
from gnflow.rates import RATE_RULE, RateComparison, rate_comparison, slope_comparison
from gnflow.studies import Claim, GridRun, StudyContext, StudyReport, fmt, run_grid, save_study_figure, table
from gnflow.transport import wasserstein2
from gnflow.verdicts import VERDICT_RULE

TITLE = "Mean-field limit: convergence of Gauss-Newton and gradient-flow trajectories as the width grows"
FLOWS = {"gn": "M-consistent GN", "gd": "gradient flow"}
ABSOLUTE = "gn_absolute"
METRICS = {
    "function_distance": "function distance on test points",
    "loss_gap": "train-loss gap / L(0)",
    "coupling": "coupling distance",
    "sw2_excess": "SW2 above its t = 0 floor",
}
DRAWS = ("A", "B")
RATE = -0.5
# the claim "slower than M^(-1/2)" is the opposite of the comparison "slope < -1/2 + delta"
OPPOSITE = {"supported": "contradicted", "contradicted": "supported", "inconclusive": "inconclusive"}


@dataclass
class Measured:
    """Errors per (flow, tau0 index, metric): arrays of shape (seed, width), NaN where undefined."""

    errors: dict[tuple[str, int, str], np.ndarray] = field(default_factory=dict)
    absolute_distance: dict[int, np.ndarray] = field(default_factory=dict)
    below_floor: dict[tuple[int, str], np.ndarray] = field(default_factory=dict)
    sw2: dict[tuple[str, int, str], np.ndarray] = field(default_factory=dict)
    kernel_test_loss: np.ndarray | None = None
    lazy_test_loss: np.ndarray | None = None
    densities: Any = None


# --- runs ---------------------------------------------------------------------------------------


def _base(s: dict[str, Any]) -> dict[str, Any]:
    return {
        "device": "cpu",
        "data": {"kind": "teacher", "n_train": s["n_train"], "n_test": s["n_test"]},
        "solver": {
            "n_save": s["n_save"],
            "save_decades": s["save_decades"],
            "stop_loss_ratio": 0.0,
            "max_steps": s["max_steps"],
        },
    }


def _flow_table(s: dict[str, Any], flow: str) -> dict[str, Any]:
    if flow == "gd":
        return {"kind": "gradient"}
    if flow == ABSOLUTE:
        return {"kind": "gauss_newton", "damping": "eigmin", "epsilon": s["absolute_epsilon"]}
    return {"kind": "gauss_newton", "damping": "eigmin", "epsilon": s["gn_epsilon"], "epsilon_scaling": "per_particle"}


def _variant(s: dict[str, Any], flow: str, k: int, width: int) -> dict[str, Any]:
    """The [[runs]] entry of (flow, tau0 index k, width): scale, width and horizon."""
    horizon = s["gd_s_end"][k] * width if flow == "gd" else s["gn_t_end_per_n"] * s["n_train"]
    return {
        "name": f"tau{k}_M{width}",
        "model": {"init_scale": s["tau0"][k], "width": width},
        "solver": {"t_end": float(horizon), "method": s["gd_method"] if flow == "gd" else "dopri5"},
    }


def _runs(s: dict[str, Any], context: StudyContext) -> dict[tuple[str, int, int, int, str], GridRun]:
    """Every run, keyed by (flow, tau0 index, seed, width, draw)."""
    widths, seeds = [int(m) for m in s["widths"]], [int(k) for k in s["seeds"]]
    offset, ref = int(s["reference_seed_offset"]), max(int(m) for m in s["widths"])
    out: dict[tuple[str, int, int, int, str], GridRun] = {}
    for flow in (*FLOWS, ABSOLUTE):
        base = {**_base(s), "flow": _flow_table(s, flow)}
        variants = [_variant(s, flow, k, m) for k in range(len(s["tau0"])) for m in widths]
        # draw A: the seed's own particles (model.init_seed unset), every width
        for run in run_grid(context, flow, base, grid={"seed": seeds}, runs=variants):
            seed = int(run.value("seed"))
            key = (flow, _tau_index(s, run), seed, int(run.value("model.width")), "A")
            out[key] = run
        if flow == ABSOLUTE:
            continue
        # draw B: independent particles of the same law on the same data, at the reference width
        references = [
            {
                **_variant(s, flow, k, ref),
                "name": f"tau{k}_s{seed}",
                "seed": seed,
                "model": {"init_scale": s["tau0"][k], "width": ref, "init_seed": seed + offset},
            }
            for k in range(len(s["tau0"]))
            for seed in seeds
        ]
        for run in run_grid(context, f"{flow}_reference", base, runs=references):
            out[(flow, _tau_index(s, run), int(run.value("seed")), ref, "B")] = run
    return out


def _tau_index(s: dict[str, Any], run: GridRun) -> int:
    return [float(t) for t in s["tau0"]].index(float(run.value("model.init_scale")))


# --- measurements -------------------------------------------------------------------------------


def _predictions(run: GridRun, x: np.ndarray) -> np.ndarray:
    """f(t, x) at every saved time, shape (t, sample)."""
    config = run_config_of(run.dataset)
    model = ParticleModel.from_config(config, x.shape[1])
    xt = torch.as_tensor(x, dtype=torch.float64)
    weights = torch.as_tensor(run.dataset["weights"].values, dtype=torch.float64)
    return np.stack([model.predict(w, xt).numpy() for w in weights])


def _floor_corrected(d2: np.ndarray, floor2: np.ndarray) -> float:
    """sup_t of the squared distance to the reference minus half the squared distance of the two
    reference draws, as a distance; NaN where the correction leaves nothing positive."""
    value = float(np.max(d2 - floor2 / 2))
    return math.sqrt(value) if value > 0 else math.nan


def _sw2(a: np.ndarray, b: np.ndarray, projections: int) -> float:
    return wasserstein2(a, b, exact_max=1, n_projections=projections).distance


def _measure_flow(s: dict[str, Any], runs: dict[Any, GridRun], flow: str, k: int, measured: Measured) -> None:
    widths, seeds = [int(m) for m in s["widths"]], [int(q) for q in s["seeds"]]
    ref = max(widths)
    shape = (len(seeds), len(widths))
    err = {metric: np.full(shape, np.nan) for metric in METRICS}
    sw2 = {what: np.full(shape, np.nan) for what in ("initial", "final")}
    absolute = np.full(shape, np.nan)
    for i, seed in enumerate(seeds):
        ref_a, ref_b = runs[(flow, k, seed, ref, "A")], runs[(flow, k, seed, ref, "B")]
        x_test = ref_b.dataset["x_test"].values
        f_a, f_b = _predictions(ref_a, x_test), _predictions(ref_b, x_test)
        floor_f = np.mean((f_a - f_b) ** 2, axis=1)
        loss_a, loss_b = ref_a.dataset["train_loss"].values, ref_b.dataset["train_loss"].values
        floor_loss = (loss_a - loss_b) ** 2
        w_ref_a, w_ref_b = ref_a.dataset["weights"].values, ref_b.dataset["weights"].values
        for j, m in enumerate(widths):
            run = runs[(flow, k, seed, m, "A")]
            f_m = _predictions(run, x_test)
            err["function_distance"][i, j] = _floor_corrected(np.mean((f_m - f_b) ** 2, axis=1), floor_f)
            loss = run.dataset["train_loss"].values
            err["loss_gap"][i, j] = _floor_corrected((loss - loss_b) ** 2, floor_loss) / loss_b[0]
            w = run.dataset["weights"].values
            if m < ref:  # particle i of both runs starts at the same place
                rms = np.sqrt(np.mean(np.sum((w - w_ref_a[:, :m]) ** 2, axis=-1), axis=-1))
                err["coupling"][i, j] = float(np.max(rms)) / math.sqrt(1 - m / ref)
            projections = int(s["wasserstein_projections"])
            sw2["initial"][i, j] = _sw2(w[0], w_ref_b[0], projections)
            sw2["final"][i, j] = _sw2(w[-1], w_ref_b[-1], projections)
            excess = sw2["final"][i, j] ** 2 - sw2["initial"][i, j] ** 2
            err["sw2_excess"][i, j] = math.sqrt(excess) if excess > 0 else math.nan
            if flow == "gn":  # the paper's damping against the M-consistent limit
                f_abs = _predictions(runs[(ABSOLUTE, k, seed, m, "A")], x_test)
                absolute[i, j] = _floor_corrected(np.mean((f_abs - f_b) ** 2, axis=1), floor_f)
    for metric, values in err.items():
        measured.errors[(flow, k, metric)] = values
    for what, values in sw2.items():
        measured.sw2[(flow, k, what)] = values
    if flow == "gn":
        measured.absolute_distance[k] = absolute


def _below_floor(s: dict[str, Any], runs: dict[Any, GridRun], k: int, measured: Measured) -> None:
    """Fraction of the eigenvalues of A(0) below the absolute eps0 and below the per-particle one."""
    widths, seeds = [int(m) for m in s["widths"]], [int(q) for q in s["seeds"]]
    fractions = {scale: np.full((len(seeds), len(widths)), np.nan) for scale in ("absolute", "per_particle")}
    for i, seed in enumerate(seeds):
        for j, m in enumerate(widths):
            run = runs[("gn", k, seed, m, "A")]
            config = run_config_of(run.dataset)
            x = torch.as_tensor(run.dataset["x_train"].values, dtype=torch.float64)
            model = ParticleModel.from_config(config, x.shape[1])
            w0 = torch.as_tensor(run.dataset["weights"].values[0], dtype=torch.float64)
            eigenvalues = np.linalg.eigvalsh(model.linearize(w0, x).gram().numpy())
            fractions["absolute"][i, j] = np.mean(eigenvalues < float(s["absolute_epsilon"]))
            fractions["per_particle"][i, j] = np.mean(eigenvalues < float(s["gn_epsilon"]) / m)
    for scale, values in fractions.items():
        measured.below_floor[(k, scale)] = values


def _kernel_check(s: dict[str, Any], runs: dict[Any, GridRun], measured: Measured) -> int:
    """Test loss of the M-consistent GN runs at the kernel tau0 (final time) and of the kernel
    predictor (minimum-norm interpolant of the random-features kernel) on the same test points."""
    k = [float(t) for t in s["tau0"]].index(float(s["kernel_tau0"]))
    widths, seeds = [int(m) for m in s["widths"]], [int(q) for q in s["seeds"]]
    angular, radial = (int(n) for n in s["kernel_rule"])
    rule = QuadratureRule(angular_nodes=angular, radial_nodes=radial)
    n_points = int(s["kernel_test_points"])
    kernel_loss = np.full(len(seeds), np.nan)
    lazy_loss = np.full((len(seeds), len(widths)), np.nan)
    for i, seed in enumerate(seeds):
        ds = runs[("gn", k, seed, max(widths), "B")].dataset
        x, y = ds["x_train"].values, ds["y_train"].values
        x_test, y_test = ds["x_test"].values[:n_points], ds["y_test"].values[:n_points]
        tau0, activation = float(s["kernel_tau0"]), run_config_of(ds).model.activation
        gram = random_features_kernel(x, activation=activation, init_scale=tau0, rule=rule)
        cross = random_features_kernel(x_test, x, activation=activation, init_scale=tau0, rule=rule)
        kernel_loss[i] = kernel_regression(gram, cross, y, y_test=y_test).test_loss
        for j, m in enumerate(widths):
            f = _predictions(runs[("gn", k, seed, m, "A")], x_test)[-1]
            lazy_loss[i, j] = 0.5 * float(np.mean((f - y_test) ** 2))
    measured.kernel_test_loss, measured.lazy_test_loss = kernel_loss, lazy_loss
    return k


# --- claims -------------------------------------------------------------------------------------


def _tau_name(s: dict[str, Any], k: int) -> str:
    regime = "kernel regime" if float(s["tau0"][k]) == float(s["kernel_tau0"]) else "feature regime"
    return f"tau0 = {float(s['tau0'][k]):g} ({regime})"


def _rates(s: dict[str, Any], measured: Measured) -> dict[tuple[str, int, str], RateComparison]:
    widths, seeds, tol = [int(m) for m in s["widths"]], [int(q) for q in s["seeds"]], float(s["rate_tolerance"])
    out = {}
    for (flow, k, metric), values in measured.errors.items():
        # the coupling distance is not defined at M_ref: fit on the widths where some seed has a value
        fit = [j for j in range(len(widths)) if not np.all(np.isnan(values[:, j]))]
        fit = fit if len(fit) >= 2 else list(range(len(widths)))
        out[(flow, k, metric)] = rate_comparison(
            [widths[j] for j in fit],
            values[:, fit],
            seeds=seeds,
            claim=f"{FLOWS[flow]} {METRICS[metric]} ~ M^(-1/2), {_tau_name(s, k)}",
            rate=RATE,
            tolerance=tol,
        )
    return out


def _claims(s: dict[str, Any], measured: Measured, rates: dict[Any, RateComparison], k_kernel: int) -> list[Claim]:
    widths, seeds, tol = [int(m) for m in s["widths"]], [int(q) for q in s["seeds"]], float(s["rate_tolerance"])
    rule = f"Rate rule: supported when the 95% interval of the slope lies in [{RATE - tol:g}, {RATE + tol:g}]."
    claims = []
    for flow, name in FLOWS.items():
        for k in range(len(s["tau0"])):
            rc = {metric: rates[(flow, k, metric)] for metric in METRICS}
            main = rc["function_distance"]
            measured_text = "; ".join(f"{METRICS[m]}: {r.summary()} ({r.verdict})" for m, r in rc.items())
            claims.append(
                Claim(
                    f"The {name} trajectories converge as M grows at the rate M^(-1/2) ({_tau_name(s, k)}): "
                    "the network on test points, decided on its distance to the limit.",
                    measured_text,
                    main.verdict,
                    f"{rule} The verdict is that of the function distance; the other errors are reported with theirs.",
                )
            )
    # the paper's absolute eps0: distance to the M-consistent limit and the floor's reach
    for k in range(len(s["tau0"])):
        drift = rate_comparison(
            widths,
            measured.absolute_distance[k],
            seeds=seeds,
            claim="absolute-eps0 GN distance",
            rate=RATE,
            tolerance=tol,
        )
        below = measured.below_floor[(k, "absolute")].mean(axis=0)
        scaled = measured.below_floor[(k, "per_particle")].mean(axis=0)
        claims.append(
            Claim(
                f"GN with the paper's absolute eps0 = {float(s['absolute_epsilon']):g} does not converge to the "
                f"M-consistent GN limit at the rate M^(-1/2) ({_tau_name(s, k)}): its floor binds more as M grows.",
                f"distance to the M-consistent limit: {drift.summary()}; fraction of the eigenvalues of A(0) below "
                "eps0 at M = "
                + ", ".join(f"{m}: {b:.2f}" for m, b in zip(widths, below, strict=True))
                + f" (below gn_epsilon / M: {', '.join(f'{v:.2f}' for v in scaled)})",
                OPPOSITE[drift.below.verdict],
                f"Supported when the 95% interval of the slope of the distance lies above {RATE + tol:g} (slower "
                f"than M^(-1/2)), contradicted when it lies below {RATE + tol:g}, inconclusive otherwise.",
            )
        )
    assert measured.kernel_test_loss is not None and measured.lazy_test_loss is not None
    gap = np.abs(measured.lazy_test_loss - measured.kernel_test_loss[:, None])
    kernel_rate = rate_comparison(
        widths, gap, seeds=seeds, claim="lazy test-loss gap ~ M^(-1/2)", rate=RATE, tolerance=tol
    )
    decrease = slope_comparison(
        widths, kernel_rate.slopes, seeds=seeds, claim="lazy test-loss gap", bound=0.0, direction="less"
    )
    claims.append(
        Claim(
            f"The finite-M lazy runs (M-consistent GN, {_tau_name(s, k_kernel)}) approach the test loss of the "
            "infinite-width kernel predictor as M grows.",
            f"kernel predictor test loss {np.mean(measured.kernel_test_loss):.4g} (mean over seeds); mean |gap| at M = "
            + ", ".join(f"{m}: {g:.3g}" for m, g in zip(widths, np.mean(gap, axis=0), strict=True))
            + f"; {kernel_rate.summary()} (against -1/2: {kernel_rate.verdict})",
            decrease.verdict,
            "Supported when the 95% interval of the slope of |test loss - kernel test loss| lies below 0 (the gap "
            "decreases), contradicted when above; its agreement with -1/2 is decided by the rate rule.",
        )
    )
    return claims


# --- report -------------------------------------------------------------------------------------


def run(s: dict[str, Any], context: StudyContext) -> StudyReport:
    """Run every flow, seed, tau0 and width; measure the errors, their rates and the kernel check."""
    runs = _runs(s, context)
    measured = Measured()
    for k in range(len(s["tau0"])):
        for flow in FLOWS:
            _measure_flow(s, runs, flow, k, measured)
        _below_floor(s, runs, k, measured)
    k_kernel = _kernel_check(s, runs, measured)
    rates = _rates(s, measured)
    claims = _claims(s, measured, rates, k_kernel)
    figures = _figures(s, context, runs, measured, rates)
    _write_summary(s, context, measured, rates)
    widths, seeds = [int(m) for m in s["widths"]], [int(q) for q in s["seeds"]]
    setup = [
        f"Teacher-student task (d = 10, teacher of 5 SiLU units), N = {s['n_train']}, {s['n_test']} test points, "
        f"v = 0 at t = 0; seeds {seeds} (each its own data and particles); tau0 = {[float(t) for t in s['tau0']]}; "
        f"widths M = {widths}.",
        f"Reference: at M_ref = {max(widths)} a second particle draw of the same law on the same data "
        f"(`model.init_seed = seed + {s['reference_seed_offset']}`), independent of the compared runs; the "
        "compared widths are nested prefixes of the seed's own draw (`model.init_seed` unset).",
        "Errors: e(M)^2 = sup_t (|q_M - q_ref^B|^2 - |q_ref^A - q_ref^B|^2 / 2), which removes the reference's "
        "own fluctuation (the two reference draws are independent); q is the network on the test points "
        "(root mean square) or the train loss (divided by L(0)). NaN where nothing positive is left.",
        "Coupling distance: sup_t root-mean-square |w_i^M(t) - w_i^ref,A(t)| between particle i of the width-M "
        "run and of the nested reference (synchronous coupling), divided by (1 - M/M_ref)^(1/2); not defined at "
        "M_ref.",
        f"SW2 (sliced, {s['wasserstein_projections']} directions) between the width-M run and the independent "
        "reference at the last saved time, above its t = 0 value: (SW2(T)^2 - SW2(0)^2)^(1/2).",
        f"M-consistent GN: eigmin damping, eps0 = {float(s['gn_epsilon']):g} / M (`flow.epsilon_scaling = "
        f'"per_particle"`); the paper\'s GN: eigmin, eps0 = {float(s["absolute_epsilon"]):g}; dopri5, t in '
        f"[0, {s['gn_t_end_per_n']:g} N]. GD: {s['gd_method']}, mean-field time s = t/M in [0, s_end], s_end = "
        f"{[float(v) for v in s['gd_s_end']]} per tau0. No early stop; {s['n_save']} log-spaced saved times "
        f"over {s['save_decades']:g} decades, the same for every width.",
        f"Kernel predictor: the minimum-norm interpolant of the random-features kernel at tau0 = "
        f"{float(s['kernel_tau0']):g} (`gnflow.kernels`, quadrature rule {s['kernel_rule']}), on the first "
        f"{s['kernel_test_points']} test points; the runs' test loss on the same points at the final time.",
    ]
    sections = {
        "How rate verdicts are decided": [RATE_RULE, "", VERDICT_RULE],
        "Errors per width (mean over seeds)": _error_table(s, measured),
        "Measured rates": table(
            ["flow", "tau0", "error", "slope [95% interval]", "verdict against -1/2"],
            [
                [FLOWS[f], f"{float(s['tau0'][k]):g}", METRICS[m], r.summary(), r.verdict]
                for (f, k, m), r in rates.items()
            ],
        ),
    }
    return StudyReport(title=TITLE, setup=setup, claims=claims, figures=figures, sections=sections)


def _error_table(s: dict[str, Any], measured: Measured) -> list[str]:
    widths = [int(m) for m in s["widths"]]
    rows = []
    for (flow, k, metric), values in measured.errors.items():
        rows.append(
            [FLOWS[flow], f"{float(s['tau0'][k]):g}", METRICS[metric], *(fmt(v) for v in _column_means(values))]
        )
    for k, values in measured.absolute_distance.items():
        rows.append(
            [
                "absolute-eps0 GN",
                f"{float(s['tau0'][k]):g}",
                "distance to the M-consistent limit",
                *(fmt(v) for v in _column_means(values)),
            ]
        )
    for (k, scale), values in measured.below_floor.items():
        rows.append(
            [
                "A(0)",
                f"{float(s['tau0'][k]):g}",
                f"fraction of eigenvalues below eps0 ({scale})",
                *(f"{v:.2f}" for v in values.mean(0)),
            ]
        )
    return table(["flow", "tau0", "quantity", *(f"M = {m}" for m in widths)], rows)


def _column_means(values: np.ndarray, geometric: bool = False) -> np.ndarray:
    """Mean over seeds (axis 0) of the finite entries of each column; NaN for a column without one."""
    out = np.full(values.shape[1], np.nan)
    for j in range(values.shape[1]):
        column = values[np.isfinite(values[:, j]) & ((values[:, j] > 0) | (not geometric)), j]
        if column.size:
            out[j] = float(np.exp(np.mean(np.log(column)))) if geometric else float(np.mean(column))
    return out


# --- figures and the summary file ----------------------------------------------------------------


def _rate_panel(ax: Any, widths: list[int], values: np.ndarray, rc: RateComparison, color: Any, label: str) -> None:
    """Per-seed errors (faint), their geometric mean, the fitted slope and its 95% band."""
    m = np.asarray(widths, dtype=float)
    for row in values:
        ax.loglog(m, row, ".", color=color, alpha=0.25, ms=4)
    mean = _column_means(values, geometric=True)
    ax.loglog(m, mean, "o", color=color, ms=5, label=f"{label}: slope {rc.slope:.2f} [{rc.low:.2f}, {rc.high:.2f}]")
    fit = [j for j in range(m.size) if math.isfinite(mean[j])]
    if len(fit) < 2 or not math.isfinite(rc.low):
        return
    center_m = math.exp(float(np.mean(np.log(m[fit]))))
    center = math.exp(float(np.mean(np.log(mean[fit]))))
    grid = np.geomspace(m[fit].min(), m[fit].max(), 50)
    ax.loglog(grid, center * (grid / center_m) ** rc.slope, "-", color=color, lw=1)
    lines = [center * (grid / center_m) ** b for b in (rc.low, rc.high)]
    ax.fill_between(grid, np.minimum(*lines), np.maximum(*lines), color=color, alpha=0.15, lw=0)


def _figures(
    s: dict[str, Any],
    context: StudyContext,
    runs: dict[Any, GridRun],
    measured: Measured,
    rates: dict[Any, RateComparison],
) -> list[tuple[Any, str]]:
    widths, taus = [int(m) for m in s["widths"]], [float(t) for t in s["tau0"]]
    colors = dict(zip(METRICS, ("tab:blue", "tab:orange", "tab:green", "tab:purple"), strict=True))
    fig, axes = plt.subplots(len(taus), 2, figsize=(12, 4.2 * len(taus)), squeeze=False)
    for k in range(len(taus)):
        for col, flow in enumerate(FLOWS):
            ax = axes[k, col]
            for metric, name in METRICS.items():
                _rate_panel(
                    ax, widths, measured.errors[(flow, k, metric)], rates[(flow, k, metric)], colors[metric], name
                )
            if flow == "gn":
                distance = measured.absolute_distance[k]
                ax.loglog(
                    widths,
                    _column_means(distance, geometric=True),
                    "k^--",
                    ms=5,
                    lw=0.8,
                    label="absolute-eps0 GN: distance to the M-consistent limit",
                )
            m = np.asarray(widths, dtype=float)
            anchor = _column_means(measured.errors[(flow, k, "function_distance")], geometric=True)[0]
            if math.isfinite(anchor):
                ax.loglog(m, anchor * (m / m[0]) ** RATE, "k:", lw=0.8, label="M^(-1/2)")
            ax.set_title(f"{FLOWS[flow]}, {_tau_name(s, k)}", fontsize=9)
            ax.set_xlabel("width M")
            ax.set_ylabel("error")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=6, loc="lower left")
    fig.tight_layout()
    figures = [
        (
            save_study_figure(fig, context, "rates"),
            "Errors against M (log-log): seeds (dots), their geometric mean (circles), the mean of the per-seed "
            "slopes (line) and its 95% interval (band); the dotted line is M^(-1/2).",
        )
    ]

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    assert measured.kernel_test_loss is not None and measured.lazy_test_loss is not None
    gap = np.abs(measured.lazy_test_loss - measured.kernel_test_loss[:, None])
    seeds = [int(q) for q in s["seeds"]]
    gap_rate = rate_comparison(widths, gap, seeds=seeds, claim="gap", rate=RATE, tolerance=float(s["rate_tolerance"]))
    _rate_panel(axes[0], widths, gap, gap_rate, "tab:red", "|test loss - kernel predictor's|")
    axes[0].set_xlabel("width M")
    axes[0].set_ylabel("test-loss gap")
    axes[0].set_title(f"M-consistent GN at the final time, tau0 = {float(s['kernel_tau0']):g}", fontsize=9)
    axes[0].legend(fontsize=7)
    axes[0].grid(True, which="both", alpha=0.3)
    for k in range(len(taus)):
        for scale, style in (("absolute", "-o"), ("per_particle", "--s")):
            axes[1].semilogx(
                widths,
                measured.below_floor[(k, scale)].mean(0),
                style,
                label=f"tau0 = {taus[k]:g}, eps0 {scale.replace('_', '-')}",
            )
    axes[1].set_xlabel("width M")
    axes[1].set_ylabel("fraction of eigenvalues of A(0) below eps0")
    axes[1].legend(fontsize=7)
    axes[1].grid(True, alpha=0.3)
    fig.tight_layout()
    figures.append(
        (
            save_study_figure(fig, context, "kernel_and_damping"),
            "Left: the lazy runs' distance to the infinite-width kernel predictor's test loss against M, with the "
            "fitted slope and its band. Right: how much of A(0)'s spectrum the eigmin floor covers, for the "
            "absolute eps0 and for eps0 / M.",
        )
    )
    figures.append(_densities(s, context, runs, measured))
    return figures


DENSITY_COMPONENTS = ("u0", "b", "v")
DENSITY_BINS = 40


def _densities(s: dict[str, Any], context: StudyContext, runs: dict[Any, GridRun], measured: Measured) -> Any:
    """Marginal densities of three components and a 2-D projection at three times for several M (GD,
    feature-regime tau0, first seed): the histograms are stored for the summary file."""
    widths, seed = [int(m) for m in s["widths"]], int(s["seeds"][0])
    k = int(np.argmin([float(t) for t in s["tau0"]]))
    shown = [(m, "A") for m in widths[:: max(1, (len(widths) - 1) // 2)]] + [(max(widths), "B")]
    datasets = {(m, d): runs[("gd", k, seed, m, d)].dataset for m, d in shown}
    ref = datasets[(max(widths), "B")]
    names = [str(c) for c in ref["component"].values] if "component" in ref.coords else None
    columns = [names.index(c) if names else i for i, c in zip((0, -2, -1), DENSITY_COMPONENTS, strict=True)]
    times = sorted({0, (ref.sizes["t"] - 1) // 2, ref.sizes["t"] - 1})
    cmap = plt.get_cmap("viridis")
    fig, axes = plt.subplots(len(times), 4, figsize=(15, 3.2 * len(times)), squeeze=False)
    hist = np.zeros((len(times), len(shown), len(columns), DENSITY_BINS))
    edges_all = np.zeros((len(times), len(columns), DENSITY_BINS + 1))
    for r, ti in enumerate(times):
        for c, col in enumerate(columns):
            pooled = ref["weights"].values[ti][:, col]
            low, high = np.quantile(pooled, [0.005, 0.995])
            if high - low < 1e-12:
                low, high = low - 0.5, high + 0.5
            edges = np.linspace(low, high, DENSITY_BINS + 1)
            edges_all[r, c] = edges
            for q, key in enumerate(shown):
                values = datasets[key]["weights"].values[ti][:, col]
                hist[r, q, c] = np.histogram(values, bins=edges, density=True)[0]
                axes[r, c].stairs(
                    hist[r, q, c], edges, color=cmap(q / max(1, len(shown) - 1)), label=f"M = {key[0]} ({key[1]})"
                )
            axes[r, c].set_xlabel(DENSITY_COMPONENTS[c])
            axes[r, c].set_ylabel("density")
        s_value = float(ref["t"].values[ti]) / max(widths)
        axes[r, 0].set_title(f"s = t/M = {s_value:.3g}", fontsize=9, loc="left")
        axes[r, 0].legend(fontsize=6)
        for q, key in reversed(list(enumerate(shown))):  # the widest first, so the narrow runs show on top
            w = datasets[key]["weights"].values[ti]
            axes[r, 3].scatter(
                w[:, columns[1]],
                w[:, columns[2]],
                s=4 if key[0] < 1000 else 0.3,
                alpha=0.4,
                color=cmap(q / max(1, len(shown) - 1)),
                label=f"M = {key[0]} ({key[1]})",
            )
        axes[r, 3].set_xlabel("b")
        axes[r, 3].set_ylabel("v")
        axes[r, 3].set_title("2-D projection (b, v)", fontsize=9)
    fig.tight_layout()
    measured.densities = (hist, edges_all, [f"M{m}{d}" for m, d in shown], [float(ref["t"].values[t]) for t in times])
    return (
        save_study_figure(fig, context, "densities"),
        f"Particle densities of the gradient flow at tau0 = {float(s['tau0'][k]):g} (seed {seed}): marginals of "
        "u0, b and v and the projection on (b, v) at three mean-field times, for several widths of draw A and "
        "the independent reference draw B.",
    )


def _write_summary(
    s: dict[str, Any], context: StudyContext, measured: Measured, rates: dict[Any, RateComparison]
) -> None:
    """The data of the figures and tables: ``<out>/mean_field_limit.nc``."""
    widths, seeds, taus = [int(m) for m in s["widths"]], [int(q) for q in s["seeds"]], [float(t) for t in s["tau0"]]
    flows, metrics = list(FLOWS), list(METRICS)
    dims = ("flow", "tau0", "metric", "seed", "width")
    errors = np.array([[[measured.errors[(f, k, m)] for m in metrics] for k in range(len(taus))] for f in flows])
    slopes = np.array([[[rates[(f, k, m)].slopes for m in metrics] for k in range(len(taus))] for f in flows])
    interval = np.array(
        [
            [
                [[rates[(f, k, m)].slope, rates[(f, k, m)].low, rates[(f, k, m)].high] for m in metrics]
                for k in range(len(taus))
            ]
            for f in flows
        ]
    )
    assert measured.kernel_test_loss is not None and measured.lazy_test_loss is not None
    hist, edges, shown, times = measured.densities
    data = {
        "error": (
            dims,
            errors,
            {"long_name": "error of the width-M run against the limit (see the report)", "units": "1"},
        ),
        "slope": (
            ("flow", "tau0", "metric", "seed"),
            slopes,
            {"long_name": "per-seed log-log slope of the error against M", "units": "1"},
        ),
        "slope_interval": (
            ("flow", "tau0", "metric", "stat"),
            interval,
            {"long_name": "mean slope over seeds and its 95% t interval", "units": "1"},
        ),
        "sw2_initial": (
            ("flow", "tau0", "seed", "width"),
            np.array([[measured.sw2[(f, k, "initial")] for k in range(len(taus))] for f in flows]),
            {"long_name": "sliced W2 between draw A at width M and draw B at t = 0", "units": "1"},
        ),
        "sw2_final": (
            ("flow", "tau0", "seed", "width"),
            np.array([[measured.sw2[(f, k, "final")] for k in range(len(taus))] for f in flows]),
            {"long_name": "sliced W2 between draw A at width M and draw B at the last saved time", "units": "1"},
        ),
        "absolute_distance": (
            ("tau0", "seed", "width"),
            np.array([measured.absolute_distance[k] for k in range(len(taus))]),
            {"long_name": "function distance of the absolute-eps0 GN run to the M-consistent GN limit", "units": "1"},
        ),
        "fraction_below_eps0": (
            ("tau0", "eps0_scaling", "seed", "width"),
            np.array([[measured.below_floor[(k, c)] for c in ("absolute", "per_particle")] for k in range(len(taus))]),
            {"long_name": "fraction of the eigenvalues of A(0) below eps0", "units": "1"},
        ),
        "kernel_test_loss": (
            ("seed",),
            measured.kernel_test_loss,
            {"long_name": "test loss of the infinite-width kernel predictor (kernel tau0)", "units": "1"},
        ),
        "lazy_test_loss": (
            ("seed", "width"),
            measured.lazy_test_loss,
            {"long_name": "test loss of the M-consistent GN run at the kernel tau0, final time", "units": "1"},
        ),
        "density": (
            ("density_time", "density_run", "density_component", "bin"),
            hist,
            {
                "long_name": "histogram density of one component of the GD particles (feature tau0, first seed)",
                "units": "1",
            },
        ),
        "density_edges": (
            ("density_time", "density_component", "bin_edge"),
            edges,
            {"long_name": "bin edges of the density histograms", "units": "1"},
        ),
    }
    coords = {
        "flow": ("flow", np.array(flows), {"long_name": "flow", "units": "1"}),
        "tau0": ("tau0", np.array(taus), {"long_name": "initial scale tau0", "units": "1"}),
        "metric": ("metric", np.array(metrics), {"long_name": "error", "units": "1"}),
        "seed": ("seed", np.array(seeds), {"long_name": "seed of the data and of draw A", "units": "1"}),
        "width": ("width", np.array(widths), {"long_name": "number of particles M", "units": "1"}),
        "stat": ("stat", np.array(["mean", "low", "high"]), {"long_name": "mean slope and 95% interval", "units": "1"}),
        "eps0_scaling": (
            "eps0_scaling",
            np.array(["absolute", "per_particle"]),
            {"long_name": "eps0 as given or eps0 / M", "units": "1"},
        ),
        "density_time": ("density_time", np.array(times), {"long_name": "flow time t of the density", "units": "1"}),
        "density_run": (
            "density_run",
            np.array(shown),
            {"long_name": "width and particle draw of the density", "units": "1"},
        ),
        "density_component": (
            "density_component",
            np.array(DENSITY_COMPONENTS),
            {"long_name": "particle component", "units": "1"},
        ),
    }
    ds = xr.Dataset(data, coords=coords)
    ds.attrs.update(
        cf_attributes(
            "mean_field_limit study: errors against M, rates, kernel check, densities",
            f"gnflow study mean_field_limit --scale {context.scale}",
        )
    )
    atomic_write(context.out_dir / "mean_field_limit.nc", lambda tmp: ds.to_netcdf(tmp))
