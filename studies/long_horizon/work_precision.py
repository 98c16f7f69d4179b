"""Work-precision diagrams of the long-horizon flows: error against cost for every integrator.

For each tau0 (and flow) the same initialization of the teacher-student task of
``long_horizon.toml`` is integrated to ``t_end`` by each method at several tolerances (or step
sizes), and compared at t_end with a tight reference solve:

* the error of the final weights, ||w(T) - w_ref(T)|| / ||w_ref(T) - w(0)||, and
* the relative error of the test loss at T, |L_test - L_test,ref| / L_test,ref,

against process CPU seconds (one torch thread) and evaluations (field evaluations; for the kernel
methods also linearizations, each a Gram matrix and an eigendecomposition). The reference is
kernel_etd3 at rtol 1e-10 for the gradient flow and dopri8 at rtol 1e-12 for the Gauss-Newton flow
(``REFERENCE``); as an independent check, the tightest run of another method that reached T is
reported against it. A run that exceeds its CPU budget stops there and is
reported as time-limited (its cost a lower bound, no error). Every finished run is kept in
``work_precision_<scale>_<flow>.json``, so a stopped invocation resumes where it was.

    python studies/long_horizon/work_precision.py --scale small                  # N = 100, M = 1000, GD, tau0 0.1 1 10
    python studies/long_horizon/work_precision.py --scale small --flow gauss_newton --tau0 1     # to t = 40 N
    python studies/long_horizon/work_precision.py --scale paper --flow gauss_newton --tau0 1 \
        --methods kernel_etd4 --rtols 1e-4 1e-5                                                  # chosen tolerances
    python studies/long_horizon/work_precision.py --scale smoke -o /tmp/wp       # seconds

Outputs in ``data/studies/long_horizon/<scale>/``: ``work_precision_<scale>_<flow>.{json,nc,png,md}``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import textwrap
import time
import tomllib
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

from gnflow.config import config_from_dict
from gnflow.experiment import Experiment, build_experiment
from gnflow.solve import integrate

HERE = Path(__file__).resolve().parent

SCALES: dict[str, dict[str, Any]] = {
    "smoke": {
        "n_train": 20,
        "width": 50,
        "n_test": 200,
        "t_end": 2e4,
        "budget_s": 20.0,
        "tau0": [1.0],
        "reference_rtol": 1e-9,
    },
    "small": {
        "n_train": 100,
        "width": 1000,
        "n_test": 10000,
        "t_end": 2e7,
        "budget_s": 900.0,
        "tau0": [0.1, 1.0, 10.0],
    },
    "paper": {
        "n_train": 500,
        "width": 5000,
        "n_test": 10000,
        "t_end": 2e7,
        "budget_s": 3600.0,
        "tau0": [0.1, 1.0, 10.0],
    },
}

REFERENCE = {"gradient": ("kernel_etd3", 1e-10), "gauss_newton": ("dopri8", 1e-12)}
"""The reference solve per flow (atol = rtol * 1e-3): kernel_etd3 at rtol 1e-10 for the gradient flow
(the smoke scale: 1e-9), dopri8 at rtol 1e-12 for the Gauss-Newton flow (smoke: 1e-10), which is
not stiff: the kernel methods integrate it too (exactly while J does not move), but their steps
buy no stability there, so the reference is an explicit method independent of them."""

REFERENCE_SMOKE = {"gradient": 1e-9, "gauss_newton": 1e-10}


def reference_of(scale: str, flow: str = "gradient") -> tuple[str, float]:
    method, rtol = REFERENCE[flow]
    return method, REFERENCE_SMOKE[flow] if scale == "smoke" else rtol


GRID: dict[str, dict[str, list[float]]] = {
    "gradient": {
        "kernel_etd3": [1e-3, 1e-4, 1e-5, 1e-6, 1e-7],
        "kernel_etd4": [1e-3, 1e-4, 1e-5, 1e-6, 1e-7],
        "kernel_exponential": [1e-3, 1e-4, 1e-5, 1e-6],
        "dopri5": [1e-6],
        "dopri8": [1e-8],
        "bosh3": [1e-6],
    },
    "gauss_newton": {
        "kernel_etd3": [1e-4, 1e-5, 1e-6, 1e-7],
        "kernel_etd4": [1e-4, 1e-5, 1e-6, 1e-7],
        "kernel_exponential": [1e-4, 1e-5, 1e-6],
        "dopri5": [1e-4, 1e-6, 1e-8],
        "dopri8": [1e-4, 1e-6, 1e-8, 1e-10],
        "bosh3": [1e-4, 1e-6],
    },
}
"""Tolerances per flow and method (atol = rtol * 1e-3). Fixed-step rk4 runs at fractions
(``RK4_FRACTIONS``) of its stability limit 2.78 / rate. For the gradient flow the rate is
lambda_max(A) / N at the larger of the initial state and the reference's final state: the kernel
grows along the flow (at N = 100, M = 1000 by 3.6x at tau0 = 1 and 1300x at tau0 = 0.1), so steps
set by A(0) alone are unstable later. For the Gauss-Newton flow it is 1 / N (its residual decays at
rates lambda / (lambda + eps) / N <= 1 / N). The gradient flow's steps are capped by that limit; the
Gauss-Newton flow's by accuracy (its nonlinearity), so its fractions are smaller. A run whose train
loss rises fails (the loop's check of fixed-step integrators of a flow)."""

RK4_FRACTIONS = {"gradient": [0.25, 0.5, 0.9], "gauss_newton": [0.01, 0.03, 0.1, 0.3]}

DEFAULT_METHODS = {
    "gradient": ["kernel_etd4", "kernel_etd3", "kernel_exponential", "dopri5", "dopri8", "bosh3", "rk4"],
    "gauss_newton": ["kernel_etd4", "kernel_etd3", "kernel_exponential", "dopri5", "dopri8", "bosh3", "rk4"],
}

GN_T_END_PER_N = 40.0
"""The Gauss-Newton flow's horizon in units of N (its residual is below e^{-20} of r(0) there)."""


def base_config(scale: str, flow: str, tau0: float, t_end: float | None) -> dict[str, Any]:
    with open(HERE / "long_horizon.toml", "rb") as f:
        run = tomllib.load(f)["defaults"]["run"]
    s = SCALES[scale]
    run["data"].update(n_train=s["n_train"], n_test=s["n_test"])
    run["model"].update(width=s["width"], init_scale=tau0)
    run["flow"] = {"kind": flow, "damping": "eigmin", "epsilon": 1e-7}
    default_t_end = s["t_end"] if flow == "gradient" else GN_T_END_PER_N * s["n_train"]
    run["solver"].update(t_end=t_end or default_t_end, n_save=2, save_spacing="linear", stop_loss_ratio=0.0)
    run["compute"] = {"threads": 1}
    return run


def _test_loss(experiment: Experiment, weights: torch.Tensor) -> float:
    data = experiment.data
    return half_mse(experiment, weights, experiment.tensor(data.x_test), experiment.tensor(data.y_test))


def half_mse(experiment: Experiment, weights: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> float:
    """(1 / 2n) sum (f(x_i) - y_i)^2 of the experiment's model on the points (x, y), in float64."""
    r = (experiment.model.predict(weights, x) - y).double()
    return float(r @ r) / (2 * len(y))


def _linearizations(method: str, nfe: int, accepted: int, rejected: int) -> int:
    if method == "kernel_exponential":
        return nfe
    if method in ("kernel_etd3", "kernel_etd4"):
        return 1 + accepted
    return 0


def rk4_rate(experiment: Experiment, reference_weights: torch.Tensor | None) -> float:
    """The fastest decay rate that sets rk4's stability limit 2.78 / rate (``GRID``'s note)."""
    n = experiment.flow.x.shape[0]
    if experiment.config.flow.kind != "gradient":
        return 1.0 / n
    states = [experiment.weights0] + ([] if reference_weights is None else [reference_weights])
    x = experiment.flow.x
    return max(float(torch.linalg.eigvalsh(experiment.model.linearize(w, x).gram())[-1]) for w in states) / n


def one_run(
    experiment: Experiment,
    method: str,
    setting: float,
    budget_s: float,
    reference_weights: torch.Tensor | None = None,
) -> dict[str, Any]:
    """One solve of ``experiment`` to its t_end by ``method`` at ``setting`` (rtol, or for rk4 the
    fraction of its stability limit, set with the reference's final weights when given)."""
    solver = experiment.config.solver
    if method == "rk4":
        rate = rk4_rate(experiment, reference_weights)
        n_steps = math.ceil(solver.t_end / (setting * 2.78 / rate))
        step = solver.t_end / n_steps  # the grid ends at t_end
        solver = replace(solver, method="rk4", step_size=step, max_steps=n_steps + 10, max_cpu_time_s=budget_s)
    else:
        solver = replace(solver, method=method, rtol=setting, atol=setting * 1e-3, max_cpu_time_s=budget_s)
    start = time.process_time()
    solution = integrate(experiment.flow, experiment.weights0, solver, progress=False)
    cpu = time.process_time() - start
    weights = torch.as_tensor(solution.weights[-1])
    # the losses of the state reached (not of an earlier saved state, as after a divergence)
    finite = bool(torch.isfinite(weights).all()) and math.isclose(
        float(solution.t[-1]), float(solution.stats["t_reached"]), rel_tol=1e-9
    )
    # the counters at the end of the integration (a failed run's last saved state may be far earlier)
    stats = solution.stats
    accepted, rejected, nfe = int(stats["n_accepted"]), int(stats["n_rejected"]), int(stats["nfe"])
    return {
        "method": method,
        "setting": setting,
        "status": solution.status,
        "t_reached": float(stats["t_reached"]),
        "cpu_time_s": cpu,
        "nfe": nfe,
        "linearizations": _linearizations(method, nfe, accepted, rejected),
        "n_accepted": accepted,
        "n_rejected": rejected,
        "test_loss": _test_loss(experiment, weights) if finite else math.nan,
        "train_loss": experiment.flow.train_loss(weights) if finite else math.nan,
        "weights": weights.flatten().tolist(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "load_average": list(os.getloadavg()),
    }


def measured_at(record: dict[str, Any]) -> str:
    """When and at what load a record's CPU seconds were measured (end of run, UTC; one-minute load
    average), "undated" for records from before the scripts recorded it."""
    if "date" not in record:
        return "undated"
    load = record.get("load_average")
    return record["date"][:16].replace("T", " ") + (f", {load[0]:.1f}" if load else "")


def _errors(run: dict[str, Any], reference: dict[str, Any], w0: np.ndarray, t_end: float) -> tuple[float, float]:
    if "weights" not in run:  # a row kept from the committed table: its errors against that table's reference
        return run["weight_error"], run["test_loss_error"]
    if run["status"] not in ("completed", "converged") or not math.isfinite(run["test_loss"]):
        return math.nan, math.nan
    w, wr = np.asarray(run["weights"]), np.asarray(reference["weights"])
    return (
        float(np.linalg.norm(w - wr) / np.linalg.norm(wr - w0)),
        abs(run["test_loss"] - reference["test_loss"]) / reference["test_loss"],
    )


def measure(
    scale: str,
    flow: str,
    tau0s: list[float],
    out: Path,
    methods: list[str],
    t_end: float | None,
    budget_s: float | None,
    rk4_fractions: list[float] | None = None,
    again: bool = False,
    rtols: list[float] | None = None,
) -> Path:
    torch.set_num_threads(1)
    out.mkdir(parents=True, exist_ok=True)
    store = out / f"work_precision_{scale}_{flow}.json"
    table_file = out / f"work_precision_{scale}_{flow}.nc"
    if store.exists():
        done: dict[str, Any] = json.loads(store.read_text())
    elif table_file.exists():  # a fresh checkout: the committed table's rows, without their weights
        done = rows_of_table(table_file)
        print(f"{table_file}: {len(done)} runs of the committed table kept (with their errors)", flush=True)
    else:
        done = {}
    budget = budget_s or SCALES[scale]["budget_s"]
    for tau0 in tau0s:
        config = config_from_dict(base_config(scale, flow, tau0, t_end))
        experiment = build_experiment(config)
        reference = reference_of(scale, flow)
        unknown = [m for m in methods if m != "rk4" and m not in GRID[flow]]
        if unknown:
            raise SystemExit(
                f"--methods: {', '.join(unknown)} not measured for the {flow} flow; allowed: "
                f"{', '.join([*GRID[flow], 'rk4'])}"
            )
        fractions = rk4_fractions or RK4_FRACTIONS[flow]
        plan = [reference] + [(m, s) for m in methods for s in (fractions if m == "rk4" else rtols or GRID[flow][m])]
        for method, setting in plan:
            key = f"{tau0:g}|{config.solver.t_end:g}|{method}|{setting:g}"
            kept = done.get(key)
            is_reference = (method, setting) == reference
            # solved again: a kept reference without weights (the new runs need them), and with
            # `again` every kept run of the methods asked for
            if kept is not None and not (("weights" not in kept) if is_reference else again):
                continue
            ref_weights = None  # rk4's step is set with the reference's final state
            ref_record = done.get(f"{tau0:g}|{config.solver.t_end:g}|{reference[0]}|{reference[1]:g}", {})
            if method == "rk4" and "weights" in ref_record:
                w0 = experiment.weights0
                ref_weights = torch.tensor(ref_record["weights"], dtype=w0.dtype).reshape(w0.shape)
            result = one_run(experiment, method, setting, 0.0 if is_reference else budget, ref_weights)
            result["tau0"] = tau0
            result["t_end"] = config.solver.t_end
            if kept is not None:  # solved again: the earlier run is kept beside it (without its weights)
                result["earlier_run"] = {k: v for k, v in kept.items() if k not in ("weights", "earlier_run")}
                change = abs(result["test_loss"] - kept["test_loss"]) / kept["test_loss"]
                result["test_loss_change"] = change
                print(f"{method} {setting:g} solved again: test loss {change:.1e} from the earlier run's", flush=True)
            done = _merge(store, done, {key: result})
            print(
                f"tau0={tau0:g} {method:18s} {setting:8.1e}: {result['status']:>12s} t={result['t_reached']:.3g} "
                f"{result['cpu_time_s']:8.1f} s, nfe {result['nfe']}, lin {result['linearizations']}",
                flush=True,
            )
    return store


def _merge(store: Path, done: dict[str, Any], records: dict[str, Any]) -> dict[str, Any]:
    """Merge ``records`` into the store as it is now (another invocation, on the other core, may
    have written runs since this one read it; without a store, into ``done``), replaced atomically."""
    current = json.loads(store.read_text()) if store.exists() else dict(done)
    current.update(records)
    partial = store.with_name(store.name + ".partial")
    partial.write_text(json.dumps(current))
    partial.replace(store)
    return current


TABLE_FIELDS = (
    "tau0",
    "method",
    "setting",
    "status",
    "t_reached",
    "t_end",
    "cpu_time_s",
    "nfe",
    "linearizations",
    "n_accepted",
    "n_rejected",
    "test_loss",
    "train_loss",
    "weight_error",
    "test_loss_error",
)


def rows_of_table(path: Path) -> dict[str, Any]:
    """The runs of a written table (``.nc``) as store records without weights: their errors are
    those measured against the reference of that table, and they keep their `measured` stamp."""
    with xr.open_dataset(path) as ds:
        rows = {}
        for k in range(ds.sizes["run"]):
            r = {v: ds[v].values[k].item() for v in (*TABLE_FIELDS, "measured") if v in ds.data_vars}
            r["method"], r["status"] = str(r["method"]), str(r["status"])
            rows[f"{r['tau0']:g}|{r['t_end']:g}|{r['method']}|{r['setting']:g}"] = r
    return rows


def table(store: Path, scale: str, flow: str) -> xr.Dataset:
    done = json.loads(store.read_text())
    rows = list(done.values())
    tau0s = sorted({r["tau0"] for r in rows})
    records = []
    for tau0 in tau0s:
        ref = next(r for r in rows if r["tau0"] == tau0 and (r["method"], r["setting"]) == reference_of(scale, flow))
        config = config_from_dict(base_config(scale, flow, tau0, ref["t_end"]))
        w0 = build_experiment(config).weights0.flatten().numpy()
        for r in rows:
            if r["tau0"] != tau0:
                continue
            werr, lerr = _errors(r, ref, w0, ref["t_end"])
            records.append(
                {
                    **{k: v for k, v in r.items() if k != "weights"},
                    "weight_error": werr,
                    "test_loss_error": lerr,
                    "measured": r.get("measured") or measured_at(r),
                }
            )
    n = len(records)
    ds = xr.Dataset(
        {k: ("run", np.array([rec[k] for rec in records])) for k in (*TABLE_FIELDS, "measured")},
        coords={"run": np.arange(n)},
        attrs={
            "title": f"gnflow work-precision table ({scale}, {flow} flow)",
            "Conventions": "CF-1.8",
            "reference": "{} at rtol {:g}, atol {:g}".format(
                *reference_of(scale, flow), reference_of(scale, flow)[1] * 1e-3
            ),
        },
    )
    for name in ("method", "status", "measured"):
        ds[name] = ds[name].astype(str)
    return ds


COLOURS = {
    "kernel_etd4": "C6",
    "kernel_etd3": "C3",
    "kernel_exponential": "C0",
    "dopri5": "C1",
    "dopri8": "C2",
    "bosh3": "C4",
    "rk4": "C5",
}


def plot(ds: xr.Dataset, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tau0s = sorted(set(ds["tau0"].values.tolist()))
    from matplotlib.ticker import NullFormatter

    costs = (("cpu_time_s", "CPU seconds (one thread)"), ("nfe", "evaluations"))
    errors = (("weight_error", "final-weight error / weight change"), ("test_loss_error", "relative test-loss error"))
    panels = [(error, cost) for error in errors for cost in costs]
    fig, axes = plt.subplots(len(panels), len(tau0s), figsize=(max(4.2 * len(tau0s), 6.5), 14.0), squeeze=False)
    for j, tau0 in enumerate(tau0s):
        sub = ds.where(ds["tau0"] == tau0, drop=True)
        for i, ((error, error_label), (cost, label)) in enumerate(panels):
            ax = axes[i][j]
            for method in COLOURS:
                m = sub.where(sub["method"] == method, drop=True)
                if m.sizes.get("run", 0) == 0:
                    continue
                ok = np.isfinite(m[error].values) & (m[error].values > 0)
                order = np.argsort(m[cost].values[ok])
                ax.loglog(
                    m[cost].values[ok][order], m[error].values[ok][order], "o-", color=COLOURS[method], label=method
                )
                # a run that did not finish (stopped by its CPU budget) has no error: marked at the top;
                # a finished run without one (a reference, or weights not kept) is not drawn
                finished = np.isin(m["status"].values.astype(str), ["completed", "converged"])
                lim = ~np.isfinite(m[error].values) & ~finished
                if lim.any():
                    ax.scatter(
                        m[cost].values[lim],
                        np.full(lim.sum(), ax.get_ylim()[1] if ok.any() else 1.0),
                        marker=">",
                        color=COLOURS[method],
                        label=f"{method}: stopped by budget",
                    )
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xlabel(label)
            ax.set_ylabel(error_label)
            ax.set_title(f"tau0 = {tau0:g}")
            ax.grid(True, which="major", alpha=0.3)
            if i == 0 and ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
    reference = textwrap.fill(f"reference {ds.attrs['reference']}", width=int(12 * fig.get_figwidth()))
    fig.suptitle(ds.attrs["title"] + "\n" + reference, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _error(value: float) -> str:
    """An error for the table; NaN (not measured: a reference itself, or a run without weights) as a dash."""
    return "–" if np.isnan(value) else f"{value:.2e}"


def report(ds: xr.Dataset, path: Path) -> Path:
    lines = [
        f"# {ds.attrs['title']}",
        "",
        f"Reference: {ds.attrs['reference']}. Error of the final weights "
        "relative to the weight change, relative error of the test loss; CPU seconds of one torch thread. "
        "Runs stopped by the CPU budget give a lower bound of their cost and no error; "
        "a dash is an error not measured (a reference against itself, or a run whose weights were not kept).",
        "",
    ]
    # "measured": when and at what load each run's CPU seconds were taken (the machine's speed varies
    # between hours, so CPU seconds compare within a pair measured together)
    dated = "measured" in ds.data_vars
    lines += [
        "| tau0 | method | rtol / step fraction | status | t reached | CPU s | evaluations | linearizations | "
        "weight error | test-loss error |" + (" measured (UTC, end of run; load average) |" if dated else ""),
        "|---|---|---|---|---|---|---|---|---|---|" + ("---|" if dated else ""),
    ]
    for k in range(ds.sizes["run"]):
        r = {v: ds[v].values[k] for v in ds.data_vars}
        lines.append(
            f"| {r['tau0']:g} | {r['method']} | {r['setting']:.0e} | {r['status']} | {r['t_reached']:.3g} | "
            f"{r['cpu_time_s']:.1f} | {r['nfe']} | {r['linearizations']} | {_error(r['weight_error'])} | "
            f"{_error(r['test_loss_error'])} |" + (f" {r['measured']} |" if dated else "")
        )
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=sorted(SCALES), default="small")
    parser.add_argument("--flow", choices=["gradient", "gauss_newton"], default="gradient")
    parser.add_argument("--tau0", type=float, nargs="*")
    parser.add_argument("--methods", nargs="*", help="default: every method measured for the flow (DEFAULT_METHODS)")
    parser.add_argument("--t-end", type=float)
    parser.add_argument("--budget-s", type=float, help="CPU seconds per run before it stops (time-limited)")
    parser.add_argument(
        "--rk4-fractions", type=float, nargs="+", help="rk4 steps as fractions of its stability limit (RK4_FRACTIONS)"
    )
    parser.add_argument(
        "--rtols", type=float, nargs="+", help="tolerances of the adaptive --methods (default: GRID, per method)"
    )
    parser.add_argument(
        "--again",
        action="store_true",
        help="solve the stored runs of --methods again (same-day timings; the earlier run is kept beside)",
    )
    parser.add_argument("-o", "--output", type=Path)
    args = parser.parse_args(argv)
    out = args.output or Path("data/studies/long_horizon") / args.scale
    store = measure(
        args.scale,
        args.flow,
        args.tau0 or SCALES[args.scale]["tau0"],
        out,
        args.methods or DEFAULT_METHODS[args.flow],
        args.t_end,
        args.budget_s,
        args.rk4_fractions,
        args.again,
        args.rtols,
    )
    ds = table(store, args.scale, args.flow)
    stem = out / f"work_precision_{args.scale}_{args.flow}"
    ds.to_netcdf(stem.with_suffix(".nc"))
    plot(ds, stem.with_suffix(".png"))
    print(report(ds, stem.with_suffix(".md")).read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
