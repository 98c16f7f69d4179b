"""Long-horizon gradient flows: the kernel-exponential integrator against dopri5.

For every tau0 of ``long_horizon.toml`` the same initialization is integrated to t_end = 2e7 by
``solver.method = "kernel_exponential"`` and by dopri5 (with a CPU-time budget; a dopri5 run that
exceeds it is reported as a lower bound). The table (NetCDF) holds wall time, evaluations and
steps of both methods, their final train and test losses, their train-loss curves, and how far
apart their trajectories are at the saved times both reached; a figure shows the curves and the
times.

Usage (from the repository root)::

    python studies/long_horizon/long_horizon.py --scale small
    python studies/long_horizon/long_horizon.py --scale smoke -o /tmp/lh

The tau0 values can run as separate processes (``--tau0 0.1``; each writes its own table,
``long_horizon_<scale>_tau0-0.1.nc``) and be joined afterwards with
``--combine FILE [FILE ...]``, which writes ``long_horizon_<scale>.nc`` and its figure.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import logging
import sys
import time
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

from gnflow import __version__
from gnflow.config import ConfigError, RunConfig, apply_overrides, config_from_dict
from gnflow.dataset import write_dataset
from gnflow.flows import Flow, FlowError
from gnflow.run import Experiment, build_experiment
from gnflow.solve import Solution, integrate, save_times

logger = logging.getLogger("long_horizon")

HERE = Path(__file__).resolve().parent
METHODS = ("kernel_exponential", "dopri5")
LOSS_RATIO_FLOOR = 1e-6


@dataclass(frozen=True)
class Benchmark:
    """The ``[benchmark]`` table of the study config, after the scale's overrides."""

    init_scales: tuple[float, ...]
    exponential_rtol: float
    exponential_atol: float
    dopri5_rtol: float
    dopri5_atol: float
    dopri5_budget_s: float  # process CPU time
    threads: int


class _CPUTimeBudget:
    """A flow that fails (FlowError) once a budget of process CPU time is spent.

    ``integrate`` then returns the trajectory up to that point with a failed status, which the
    study reports as a time-limited run. CPU time, not wall time: the bound then does not depend
    on what else shares the machine (the study runs single-threaded).
    """

    def __init__(self, flow: Flow, seconds: float) -> None:
        self._flow = flow
        self._deadline = time.process_time() + seconds
        self._seconds = seconds

    def __call__(self, t: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        if time.process_time() > self._deadline:
            raise FlowError(f"CPU-time budget of {self._seconds:g} s spent")
        return self._flow(t, weights)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._flow, name)


def load_study(path: Path, scale: str) -> tuple[RunConfig, Benchmark]:
    """The run config and benchmark settings of ``scale`` in the study file ``path``."""
    values = tomllib.loads(path.read_text())
    scales = values.get("scales", {})
    if scale not in scales:
        raise ConfigError(f"--scale {scale!r}: unknown; allowed: {', '.join(scales)}")
    chosen = dict(scales[scale])
    run = config_from_dict(apply_overrides(values["run"], chosen.pop("set", [])))
    bench = {**values["benchmark"], **chosen}
    bench["init_scales"] = tuple(float(s) for s in bench["init_scales"])
    return run, Benchmark(**bench)


def _test_loss(experiment: Experiment, weights: torch.Tensor) -> float:
    data = experiment.data
    r = (experiment.model.predict(weights, experiment.tensor(data.x_test)) - experiment.tensor(data.y_test)).double()
    return float(r @ r) / (2 * data.n_test)


def _integrate(experiment: Experiment, method: str, bench: Benchmark) -> Solution:
    solver = experiment.config.solver
    if method == "kernel_exponential":
        solver = replace(solver, method=method, rtol=bench.exponential_rtol, atol=bench.exponential_atol)
        flow: Any = experiment.flow
    else:
        solver = replace(solver, method=method, rtol=bench.dopri5_rtol, atol=bench.dopri5_atol)
        flow = _CPUTimeBudget(experiment.flow, bench.dopri5_budget_s)
    experiment.flow.nfe = 0
    cpu_start = time.process_time()
    solution = integrate(flow, experiment.weights0, solver, progress=False)
    solution.extra["cpu_time_s"] = time.process_time() - cpu_start
    logger.info(
        "tau0=%g %s: %s at t=%.4g in %.1f s (%.1f s CPU), %d evaluations, %d steps (%d rejected)",
        experiment.config.model.init_scale,
        method,
        solution.status,
        solution.t[-1],
        solution.wall_time_s,
        solution.extra["cpu_time_s"],
        solution.nfe[-1],
        solution.n_accepted[-1],
        solution.n_rejected[-1],
    )
    return solution


def _on_saved_times(solution: Solution, times: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``values`` (one per saved state) placed on the study's time grid (NaN where not reached)."""
    out = np.full(times.shape, np.nan)
    index = np.searchsorted(times, solution.t)
    on_grid = (index < times.size) & (times[np.minimum(index, times.size - 1)] == solution.t)
    out[index[on_grid]] = values[on_grid]
    return out


def _weight_difference(a: Solution, b: Solution) -> float:
    """Max over common saved times t > 0 of ||w_a - w_b|| / ||w_b - w_b(0)||."""
    common, ia, ib = np.intersect1d(a.t, b.t, return_indices=True)
    keep = common > 0
    if not keep.any():
        return float("nan")
    wa, wb = a.weights[ia[keep]].double(), b.weights[ib[keep]].double()
    change = (wb - b.weights[0].double()).flatten(1).norm(dim=1)
    return float(((wa - wb).flatten(1).norm(dim=1) / change).max())


def run_study(run: RunConfig, bench: Benchmark, scale: str) -> xr.Dataset:
    """Integrate every tau0 with both methods and collect the table."""
    torch.set_num_threads(bench.threads)
    times = save_times(run.solver)
    n_tau, n_method = len(bench.init_scales), len(METHODS)
    shape = (n_tau, n_method)
    table: dict[str, np.ndarray] = {
        name: np.full(shape, np.nan)
        for name in (
            "wall_time_s",
            "cpu_time_s",
            "t_reached",
            "final_train_loss",
            "final_test_loss",
        )
    }
    counts = {name: np.zeros(shape, dtype=np.int64) for name in ("nfe", "n_steps", "n_rejected")}
    time_limited = np.zeros(shape, dtype=np.int8)
    status = np.empty(shape, dtype=object)
    curves = np.full((n_tau, n_method, times.size), np.nan)
    weight_difference = np.full(n_tau, np.nan)
    loss_difference = np.full(n_tau, np.nan)
    for i, tau0 in enumerate(bench.init_scales):
        config = replace(run, model=replace(run.model, init_scale=tau0))
        experiment = build_experiment(config)
        loss0 = experiment.flow.train_loss(experiment.weights0)
        solutions = {}
        for j, method in enumerate(METHODS):
            solution = _integrate(experiment, method, bench)
            solutions[method] = solution
            losses = np.asarray([experiment.flow.train_loss(w) for w in solution.weights])
            table["wall_time_s"][i, j] = solution.wall_time_s
            table["cpu_time_s"][i, j] = solution.extra["cpu_time_s"]
            table["t_reached"][i, j] = solution.t[-1]
            table["final_train_loss"][i, j] = losses[-1]
            table["final_test_loss"][i, j] = _test_loss(experiment, solution.weights[-1])
            counts["nfe"][i, j] = solution.nfe[-1]
            counts["n_steps"][i, j] = solution.n_accepted[-1]
            counts["n_rejected"][i, j] = solution.n_rejected[-1]
            time_limited[i, j] = "CPU-time budget" in solution.status
            status[i, j] = solution.status
            curves[i, j] = _on_saved_times(solution, times, losses / loss0)
        weight_difference[i] = _weight_difference(solutions["kernel_exponential"], solutions["dopri5"])
        # below ~1e-6 x L0 the loss ratio resolves the solvers' absolute error floors, not the flow
        both = np.isfinite(curves[i]).all(0) & (times > 0) & (curves[i].min(0) >= LOSS_RATIO_FLOOR)
        if both.any():
            loss_difference[i] = float(np.max(np.abs(curves[i, 0, both] / curves[i, 1, both] - 1.0)))
    j_exp, j_dop = METHODS.index("kernel_exponential"), METHODS.index("dopri5")
    # CPU time of the (single-threaded) process: what the run costs, whatever else shares the
    # machine; wall time is reported too
    speedup = table["cpu_time_s"][:, j_dop] / table["cpu_time_s"][:, j_exp]
    # a time-limited dopri5 run: its time to t_end, extrapolated at its average speed so far
    projected = np.where(
        time_limited[:, j_dop] == 1,
        table["cpu_time_s"][:, j_dop] * run.solver.t_end / table["t_reached"][:, j_dop],
        table["cpu_time_s"][:, j_dop],
    )
    ds = xr.Dataset(
        {
            "wall_time_s": (
                ("tau0", "method"),
                table["wall_time_s"],
                _attrs("wall-clock time of the integration", "s"),
            ),
            "cpu_time_s": (
                ("tau0", "method"),
                table["cpu_time_s"],
                _attrs("CPU time of the integration (process time)", "s"),
            ),
            "nfe": (
                ("tau0", "method"),
                counts["nfe"],
                _attrs("vector-field evaluations (kernel_exponential: linearizations)"),
            ),
            "n_steps": (("tau0", "method"), counts["n_steps"], _attrs("accepted solver steps")),
            "n_rejected": (
                ("tau0", "method"),
                counts["n_rejected"],
                _attrs("rejected solver steps"),
            ),
            "t_reached": (("tau0", "method"), table["t_reached"], _attrs("last flow time reached")),
            "time_limited": (
                ("tau0", "method"),
                time_limited,
                _attrs("1 where the run stopped on its CPU-time budget (its time is a lower bound)"),
            ),
            "status": (
                ("tau0", "method"),
                status.astype(str),
                {"long_name": "solver status", "units": "1"},
            ),
            "final_train_loss": (
                ("tau0", "method"),
                table["final_train_loss"],
                _attrs("train loss at t_reached"),
            ),
            "final_test_loss": (
                ("tau0", "method"),
                table["final_test_loss"],
                _attrs("test loss at t_reached"),
            ),
            "train_loss_ratio": (
                ("tau0", "method", "t"),
                curves,
                _attrs("train loss / initial train loss (NaN after t_reached)"),
            ),
            "speedup": (
                ("tau0",),
                speedup,
                _attrs("dopri5 CPU time / kernel_exponential CPU time (lower bound where dopri5 is time-limited)"),
            ),
            "dopri5_projected_time_s": (
                ("tau0",),
                projected,
                _attrs("dopri5 CPU time to t_end, extrapolated linearly in t where time-limited", "s"),
            ),
            "weight_difference": (
                ("tau0",),
                weight_difference,
                _attrs("max over common saved times of ||w_exp - w_dopri5|| / ||w_dopri5 - w0||"),
            ),
            "loss_ratio_difference": (
                ("tau0",),
                loss_difference,
                _attrs("max of |L_exp / L_dopri5 - 1| over common saved times where both L / L0 >= 1e-6"),
            ),
        },
        coords={
            "tau0": (
                "tau0",
                np.asarray(bench.init_scales),
                _attrs("initial scale of hidden weights and biases"),
            ),
            "method": (
                "method",
                np.asarray(METHODS, dtype=object),
                {"long_name": "integration method", "units": "1"},
            ),
            "t": ("t", times, _attrs("flow time")),
        },
    )
    now = _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat()
    ds.attrs = {
        "Conventions": "CF-1.8",
        "title": "gnflow long-horizon gradient flows: kernel_exponential against dopri5",
        "institution": "gnflow",
        "source": f"gnflow {__version__}; torch {torch.__version__}; {bench.threads} thread(s)",
        "history": f"{now} studies/long_horizon/long_horizon.py --scale {scale}",
        "references": "Arbel, Menegaux, Wolinski (2023), arXiv:2302.02904",
        "gnflow_scale": scale,
        "gnflow_n_train": run.data.n_train,
        "gnflow_width": run.model.width,
        "gnflow_t_end": run.solver.t_end,
        "gnflow_exponential_tolerances": (f"rtol={bench.exponential_rtol:g}, atol={bench.exponential_atol:g}"),
        "gnflow_dopri5_tolerances": f"rtol={bench.dopri5_rtol:g}, atol={bench.dopri5_atol:g}",
        "gnflow_dopri5_budget_s": bench.dopri5_budget_s,
    }
    return ds


def _attrs(long_name: str, units: str = "1") -> dict[str, str]:
    return {"long_name": long_name, "units": units}


def plot(ds: xr.Dataset, path: Path) -> Path:
    """Train-loss curves of both methods and their wall times, per tau0."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (curves, times) = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    t = ds["t"].values
    for i, tau0 in enumerate(ds["tau0"].values):
        for method, style in zip(METHODS, ("-", "--"), strict=True):
            # a dict: `method` is also a keyword of .sel
            ratio = ds["train_loss_ratio"].sel({"tau0": tau0, "method": method}).values
            keep = t > 0
            curves.loglog(
                t[keep],
                ratio[keep],
                style,
                color=colors[i % len(colors)],
                label=f"tau0={tau0:g}, {method}",
            )
    curves.set_xlabel("flow time t")
    curves.set_ylabel("train loss / initial train loss")
    curves.set_title("gradient flow, both methods")
    curves.legend(fontsize=7)
    x = np.arange(ds.sizes["tau0"])
    width = 0.38
    for k, method in enumerate(METHODS):
        wall = ds["cpu_time_s"].sel({"method": method}).values
        limited = ds["time_limited"].sel({"method": method}).values == 1
        bars = times.bar(x + (k - 0.5) * width, wall, width, label=method)
        for bar, lim in zip(bars, limited, strict=True):
            if lim:
                bar.set_hatch("//")
                times.annotate(
                    ">=",
                    (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center",
                    va="bottom",
                )
    times.set_yscale("log")
    times.set_xticks(x, [f"tau0={v:g}" for v in ds["tau0"].values])
    times.set_ylabel("CPU time to t_end (s)")
    sizes = f"N={ds.attrs['gnflow_n_train']}, M={ds.attrs['gnflow_width']}"
    times.set_title(f"{sizes}, t_end={ds.attrs['gnflow_t_end']:g}")
    times.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def combine(paths: list[Path]) -> xr.Dataset:
    """The tables of separate ``--tau0`` runs of one scale joined along tau0."""
    parts = [xr.load_dataset(path) for path in paths]
    scales = {part.attrs["gnflow_scale"] for part in parts}
    if len(scales) != 1:
        raise ConfigError(f"--combine: tables of different scales ({', '.join(sorted(scales))}); give one scale's")
    ds = xr.concat(parts, dim="tau0", data_vars="minimal", coords="minimal", compat="override", join="override")
    ds = ds.sortby("tau0")
    ds.attrs["history"] = "\n".join(part.attrs["history"] for part in parts)
    return ds


def _report(ds: xr.Dataset) -> None:
    print(
        ds[["cpu_time_s", "wall_time_s", "nfe", "n_steps", "final_train_loss", "final_test_loss"]]
        .to_dataframe()
        .to_string()
    )
    print(
        ds[["speedup", "dopri5_projected_time_s", "weight_difference", "loss_ratio_difference"]]
        .to_dataframe()
        .to_string()
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", default="small", help="smoke | small | paper (default: small)")
    parser.add_argument("--config", type=Path, default=HERE / "long_horizon.toml", help="study TOML")
    parser.add_argument(
        "--tau0", type=float, action="append", help="run only this tau0 of the scale (repeatable); own table"
    )
    parser.add_argument("--dopri5-budget-s", type=float, help="override the scale's dopri5 CPU-time budget (s)")
    parser.add_argument("--combine", type=Path, nargs="+", metavar="FILE", help="join --tau0 tables of one scale")
    parser.add_argument("-o", "--output", type=Path, default=Path("data/studies/long_horizon"), help="output folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    try:
        if args.combine:
            ds = combine(args.combine)
            name = f"long_horizon_{ds.attrs['gnflow_scale']}"
        else:
            run, bench = load_study(args.config, args.scale)
            name = f"long_horizon_{args.scale}"
            if args.tau0:
                unknown = sorted(set(args.tau0) - set(bench.init_scales))
                if unknown:
                    allowed = ", ".join(f"{v:g}" for v in bench.init_scales)
                    raise ConfigError(f"--tau0 {unknown[0]:g}: not a tau0 of scale {args.scale!r}; allowed: {allowed}")
                bench = replace(bench, init_scales=tuple(sorted(set(args.tau0))))
                name += "_tau0-" + "-".join(f"{v:g}" for v in bench.init_scales)
            if args.dopri5_budget_s is not None:
                if args.dopri5_budget_s <= 0:
                    raise ConfigError(f"--dopri5-budget-s {args.dopri5_budget_s:g}: must be > 0 seconds")
                bench = replace(bench, dopri5_budget_s=args.dopri5_budget_s)
    except (ConfigError, OSError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not args.combine:
        ds = run_study(run, bench, args.scale)
    table = write_dataset(ds, args.output / f"{name}.nc")
    figure = plot(ds, args.output / f"{name}.png")
    _report(ds)
    print(f"wrote {table} and {figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
