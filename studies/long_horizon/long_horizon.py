"""Long-horizon gradient flows: the kernel-exponential integrator against dopri5.

For every tau0 of ``long_horizon.toml`` the same initialization is integrated to t_end = 2e7 by
``solver.method = "kernel_exponential"`` and by dopri5 (with a CPU-time budget; a dopri5 run that
exceeds it is reported as a lower bound). The table (NetCDF) holds wall time, evaluations and
steps of both methods, their final train and test losses, their train-loss curves, and how far
apart their trajectories are at the saved times both reached; a figure shows the curves and the
times.

Usage::

    gnflow study long_horizon --scale small             # writes data/studies/long_horizon/small/
    python studies/long_horizon/long_horizon.py --scale smoke -o /tmp/lh

The tau0 values can run as separate processes (``--tau0 0.1``; each writes its own table,
``long_horizon_<scale>_tau0-0.1.nc``), and so can the two methods (``--method dopri5``; such a
table keeps the weights at the saved times); ``--combine FILE [FILE ...]`` joins them into
``long_horizon_<scale>.nc`` and its figure, comparing the methods where a tau0 has both. A
dopri5 run also stops, as a time-limited run at the CPU time spent so far, when the file
``<table name>.STOP`` appears in the output folder. These flags are the study options
``tau0``, ``method``, ``dopri5_budget_s`` and ``combine`` of :func:`run`; every invocation goes
through :func:`gnflow.studies.run_study` and writes ``report.md`` with the measured tables.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

from gnflow.config import ConfigError, RunConfig, config_from_dict
from gnflow.dataset import cf_attributes, write_dataset
from gnflow.experiment import Experiment, build_experiment
from gnflow.solve import Callback, Solution, integrate, save_times
from gnflow.studies import StudyContext, StudyError, StudyReport, fmt, run_study, table

logger = logging.getLogger("long_horizon")

METHODS = ("kernel_exponential", "dopri5")
LOSS_RATIO_FLOOR = 1e-6


@dataclass(frozen=True)
class Benchmark:
    """The benchmark keys of a scale of ``long_horizon.toml``."""

    init_scales: tuple[float, ...]
    exponential_rtol: float
    exponential_atol: float
    dopri5_rtol: float
    dopri5_atol: float
    dopri5_budget_s: float  # process CPU time
    threads: int


def _stop_on_file(path: Path) -> Callback:
    """A step callback that stops the run once ``path`` exists."""
    return lambda info: path.exists() and f"{path.name} file"


def _time_limited(status: str) -> bool:
    return "CPU-time budget" in status or "stopped on request" in status


def benchmark_of(settings: Mapping[str, Any]) -> tuple[RunConfig, Benchmark]:
    """The run config (``run`` table) and benchmark settings of a scale's settings."""
    chosen = dict(settings)
    run = config_from_dict(chosen.pop("run"))
    chosen["init_scales"] = tuple(float(s) for s in chosen["init_scales"])
    return run, Benchmark(**chosen)


def _test_loss(experiment: Experiment, weights: torch.Tensor) -> float:
    data = experiment.data
    r = (experiment.model.predict(weights, experiment.tensor(data.x_test)) - experiment.tensor(data.y_test)).double()
    return float(r @ r) / (2 * data.n_test)


def _integrate(experiment: Experiment, method: str, bench: Benchmark, stop_file: Path | None = None) -> Solution:
    """One run of the benchmark. dopri5 stops once its CPU-time budget is spent (CPU time, not wall
    time: the bound does not depend on what else shares the machine; the study runs single-threaded)
    or when ``stop_file`` appears; both end the run as time-limited, with its trajectory so far."""
    solver = experiment.config.solver
    if method == "kernel_exponential":
        solver = replace(solver, method=method, rtol=bench.exponential_rtol, atol=bench.exponential_atol)
    else:
        solver = replace(
            solver,
            method=method,
            rtol=bench.dopri5_rtol,
            atol=bench.dopri5_atol,
            max_cpu_time_s=bench.dopri5_budget_s,
        )
    stop = None if stop_file is None or method == "kernel_exponential" else _stop_on_file(stop_file)
    solution = integrate(experiment.flow, experiment.weights0, solver, progress=False, callback=stop)
    solution.extra["cpu_time_s"] = float(solution.stats["cpu_time_s"])
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
    out = np.full((times.size, *values.shape[1:]), np.nan)
    index = np.searchsorted(times, solution.t)
    on_grid = (index < times.size) & (times[np.minimum(index, times.size - 1)] == solution.t)
    out[index[on_grid]] = values[on_grid]
    return out


def _weight_difference(exponential: np.ndarray, dopri5: np.ndarray, times: np.ndarray) -> float:
    """Max over saved times t > 0 that both reached of ||w_exp - w_dopri5|| / ||w_dopri5 - w_dopri5(0)||.

    Both arguments are weights on the time grid, (t, particle, component), NaN where not reached.
    """
    both = np.isfinite(exponential).all(axis=(1, 2)) & np.isfinite(dopri5).all(axis=(1, 2)) & (times > 0)
    if not both.any():
        return float("nan")
    change = np.linalg.norm((dopri5[both] - dopri5[0]).reshape(both.sum(), -1), axis=1)
    gap = np.linalg.norm((exponential[both] - dopri5[both]).reshape(both.sum(), -1), axis=1)
    return float(np.max(gap / change))


def measure(
    run: RunConfig,
    bench: Benchmark,
    scale: str,
    methods: tuple[str, ...] = METHODS,
    *,
    stop_file: Path | None = None,
    keep_weights: bool = False,
) -> xr.Dataset:
    """Integrate every tau0 with ``methods`` and collect the table.

    ``keep_weights``: keep the weights at the saved times (variable ``saved_weights``), so that
    tables of separate methods can be compared by :func:`combine`.
    """
    torch.set_num_threads(bench.threads)
    times = save_times(run.solver)
    shape = (len(bench.init_scales), len(methods))
    table: dict[str, np.ndarray] = {
        name: np.full(shape, np.nan)
        for name in ("wall_time_s", "cpu_time_s", "t_reached", "final_train_loss", "final_test_loss")
    }
    counts = {name: np.zeros(shape, dtype=np.int64) for name in ("nfe", "n_steps", "n_rejected")}
    time_limited = np.zeros(shape, dtype=np.int8)
    status = np.empty(shape, dtype=object)
    curves = np.full((*shape, times.size), np.nan)
    weights: np.ndarray | None = None
    for i, tau0 in enumerate(bench.init_scales):
        config = replace(run, model=replace(run.model, init_scale=tau0))
        experiment = build_experiment(config)
        loss0 = experiment.flow.train_loss(experiment.weights0)
        for j, method in enumerate(methods):
            solution = _integrate(experiment, method, bench, stop_file)
            losses = np.asarray([experiment.flow.train_loss(w) for w in solution.weights])
            table["wall_time_s"][i, j] = solution.wall_time_s
            table["cpu_time_s"][i, j] = solution.extra["cpu_time_s"]
            table["t_reached"][i, j] = solution.t[-1]
            table["final_train_loss"][i, j] = losses[-1]
            table["final_test_loss"][i, j] = _test_loss(experiment, solution.weights[-1])
            counts["nfe"][i, j] = solution.nfe[-1]
            counts["n_steps"][i, j] = solution.n_accepted[-1]
            counts["n_rejected"][i, j] = solution.n_rejected[-1]
            time_limited[i, j] = _time_limited(solution.status)
            status[i, j] = solution.status
            curves[i, j] = _on_saved_times(solution, times, losses / loss0)
            on_grid = _on_saved_times(solution, times, solution.weights.detach().cpu().double().numpy())
            if weights is None:
                weights = np.full((*shape, *on_grid.shape), np.nan)
            weights[i, j] = on_grid
    assert weights is not None
    dims = ("tau0", "method")
    ds = xr.Dataset(
        {
            "wall_time_s": (dims, table["wall_time_s"], _attrs("wall-clock time of the integration", "s")),
            "cpu_time_s": (dims, table["cpu_time_s"], _attrs("CPU time of the integration (process time)", "s")),
            "nfe": (dims, counts["nfe"], _attrs("vector-field evaluations (kernel_exponential: linearizations)")),
            "n_steps": (dims, counts["n_steps"], _attrs("accepted solver steps")),
            "n_rejected": (dims, counts["n_rejected"], _attrs("rejected solver steps")),
            "t_reached": (dims, table["t_reached"], _attrs("last flow time reached")),
            "time_limited": (
                dims,
                time_limited,
                _attrs("1 where the run stopped on its CPU-time budget or on request (its time is a lower bound)"),
            ),
            "status": (dims, status.astype(str), {"long_name": "solver status", "units": "1"}),
            "final_train_loss": (dims, table["final_train_loss"], _attrs("train loss at t_reached")),
            "final_test_loss": (dims, table["final_test_loss"], _attrs("test loss at t_reached")),
            "train_loss_ratio": (
                (*dims, "t"),
                curves,
                _attrs("train loss / initial train loss (NaN after t_reached)"),
            ),
        },
        coords={
            "tau0": ("tau0", np.asarray(bench.init_scales), _attrs("initial scale of hidden weights and biases")),
            "method": ("method", np.asarray(methods, dtype=object), {"long_name": "integration method", "units": "1"}),
            "t": ("t", times, _attrs("flow time")),
        },
    )
    ds.attrs = cf_attributes(
        "gnflow long-horizon gradient flows: kernel_exponential against dopri5",
        f"gnflow study long_horizon --scale {scale}",
        references="Arbel, Menegaux, Wolinski (2023), arXiv:2302.02904",
        gnflow_threads=bench.threads,
        gnflow_scale=scale,
        gnflow_n_train=run.data.n_train,
        gnflow_width=run.model.width,
        gnflow_t_end=run.solver.t_end,
        gnflow_exponential_tolerances=f"rtol={bench.exponential_rtol:g}, atol={bench.exponential_atol:g}",
        gnflow_dopri5_tolerances=f"rtol={bench.dopri5_rtol:g}, atol={bench.dopri5_atol:g}",
        gnflow_dopri5_budget_s=bench.dopri5_budget_s,
    )
    weights_da = xr.DataArray(
        weights, dims=(*dims, "t", "particle", "component"), coords={name: ds[name] for name in ("tau0", "method", "t")}
    )
    ds = compare(ds, weights_da)
    if keep_weights:
        ds["saved_weights"] = weights_da.assign_attrs(
            _attrs("particle positions at the saved times (NaN after t_reached), for comparing tables")
        )
    return ds


def compare(ds: xr.Dataset, weights: xr.DataArray | None) -> xr.Dataset:
    """Add the per-tau0 comparisons of the two methods (NaN where a table lacks one of them).

    ``weights``: (tau0, method, t, particle, component) weights at the saved times, or None (then
    ``weight_difference`` is NaN).
    """
    ds = ds.drop_vars(
        ["speedup", "dopri5_projected_time_s", "weight_difference", "loss_ratio_difference"], errors="ignore"
    )
    n_tau = ds.sizes["tau0"]
    nan = np.full(n_tau, np.nan)
    speedup, projected, weight_difference, loss_difference = nan.copy(), nan.copy(), nan.copy(), nan.copy()
    methods = list(ds["method"].values)
    if set(METHODS) <= set(methods):
        exp, dop = {"method": "kernel_exponential"}, {"method": "dopri5"}  # dicts: method is a keyword of .sel
        cpu_exp, cpu_dop = ds["cpu_time_s"].sel(exp).values, ds["cpu_time_s"].sel(dop).values
        # CPU time of the (single-threaded) process: what the run costs, whatever else shares the
        # machine; wall time is reported too
        speedup = cpu_dop / cpu_exp
        # a time-limited dopri5 run: its time to t_end, extrapolated at its average speed so far
        limited = ds["time_limited"].sel(dop).values == 1
        projected = np.where(limited, cpu_dop * ds.attrs["gnflow_t_end"] / ds["t_reached"].sel(dop).values, cpu_dop)
        times = ds["t"].values
        curves = ds["train_loss_ratio"]
        for i in range(n_tau):
            pair = np.stack([curves.isel(tau0=i).sel(exp).values, curves.isel(tau0=i).sel(dop).values])
            # below ~1e-6 x L0 the loss ratio resolves the solvers' absolute error floors, not the flow
            both = np.isfinite(pair).all(0) & (times > 0) & (pair.min(0) >= LOSS_RATIO_FLOOR)
            if both.any():
                loss_difference[i] = float(np.max(np.abs(pair[0, both] / pair[1, both] - 1.0)))
            tau0 = ds["tau0"].values[i]
            if weights is not None and tau0 in weights["tau0"].values and set(METHODS) <= set(weights["method"].values):
                here = weights.sel(tau0=tau0)
                weight_difference[i] = _weight_difference(here.sel(exp).values, here.sel(dop).values, times)
    ds["speedup"] = (
        ("tau0",),
        speedup,
        _attrs("dopri5 CPU time / kernel_exponential CPU time (lower bound where dopri5 is time-limited)"),
    )
    ds["dopri5_projected_time_s"] = (
        ("tau0",),
        projected,
        _attrs("dopri5 CPU time to t_end, extrapolated linearly in t where time-limited", "s"),
    )
    ds["weight_difference"] = (
        ("tau0",),
        weight_difference,
        _attrs("max over common saved times of ||w_exp - w_dopri5|| / ||w_dopri5 - w0||"),
    )
    ds["loss_ratio_difference"] = (
        ("tau0",),
        loss_difference,
        _attrs("max of |L_exp / L_dopri5 - 1| over common saved times where both L / L0 >= 1e-6"),
    )
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
        for method in ds["method"].values:
            style = "-" if method == "kernel_exponential" else "--"
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
    for k, method in enumerate(ds["method"].values):
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


_DERIVED = ["speedup", "dopri5_projected_time_s", "weight_difference", "loss_ratio_difference"]


def combine(paths: list[Path]) -> xr.Dataset:
    """The tables of separate runs of one scale (``--tau0``, ``--method``) joined into one.

    The comparisons of the two methods are recomputed where a tau0 now has both; the weight
    difference needs the weights of both, which tables written with ``--method`` keep.
    """
    parts = [xr.load_dataset(path) for path in paths]
    scales = {part.attrs["gnflow_scale"] for part in parts}
    if len(scales) != 1:
        raise ConfigError(f"--combine: tables of different scales ({', '.join(sorted(scales))}); give one scale's")
    seen: set[tuple[float, str]] = set()
    for path, part in zip(paths, parts, strict=True):
        for tau0 in part["tau0"].values:
            for method in part["method"].values:
                if (float(tau0), str(method)) in seen:
                    raise ConfigError(f"--combine: {path} repeats tau0={tau0:g}, method={method}")
                seen.add((float(tau0), str(method)))
    earlier = [part["weight_difference"] for part in parts if part.sizes["method"] == len(METHODS)]
    with_weights = [part[["saved_weights"]] for part in parts if "saved_weights" in part]
    weights = xr.merge(with_weights, compat="no_conflicts", join="outer")["saved_weights"] if with_weights else None
    ds = xr.merge(
        [part.drop_vars([*_DERIVED, "saved_weights"], errors="ignore") for part in parts],
        compat="no_conflicts",
        join="outer",
        combine_attrs="override",
    )
    ds = ds.sortby("tau0")
    ds = ds.sel({"method": [m for m in METHODS if m in set(ds["method"].values)]})
    for name, dtype in (("nfe", np.int64), ("n_steps", np.int64), ("n_rejected", np.int64), ("time_limited", np.int8)):
        if not ds[name].isnull().any():
            ds[name] = ds[name].astype(dtype)
    ds = compare(ds, weights)
    for difference in earlier:
        ds["weight_difference"] = ds["weight_difference"].fillna(difference.reindex_like(ds["weight_difference"]))
    ds.attrs["history"] = "\n".join(part.attrs["history"] for part in parts)
    return ds


OPTIONS = ("tau0", "method", "dopri5_budget_s", "combine")


def run(settings: dict[str, Any], context: StudyContext) -> StudyReport:
    """Measure both methods at every tau0 of the scale (or join tables: option ``combine``).

    Options (:attr:`~gnflow.studies.StudyContext.options`): ``tau0`` (list: only these tau0 of
    the scale), ``method`` (only this method; its table keeps the saved weights),
    ``dopri5_budget_s`` (the scale's dopri5 CPU-time budget replaced) and ``combine`` (list of
    tables of this scale written with ``tau0`` / ``method``, joined into one).
    """
    options = dict(context.options)
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise StudyError(f"long_horizon: unknown option {unknown[0]!r}; allowed: {', '.join(OPTIONS)}")
    name = f"long_horizon_{context.scale}"
    if options.get("combine"):
        ds = combine([Path(p) for p in options["combine"]])
        if ds.attrs["gnflow_scale"] != context.scale:
            raise ConfigError(f"--combine: tables of scale {ds.attrs['gnflow_scale']!r}, not {context.scale!r}")
    else:
        run_config, bench = benchmark_of({**settings, "threads": context.threads or torch.get_num_threads()})
        if options.get("tau0"):
            chosen = sorted({float(v) for v in options["tau0"]})
            missing = sorted(set(chosen) - set(bench.init_scales))
            if missing:
                allowed = ", ".join(f"{v:g}" for v in bench.init_scales)
                raise ConfigError(f"--tau0 {missing[0]:g}: not a tau0 of scale {context.scale!r}; allowed: {allowed}")
            bench = replace(bench, init_scales=tuple(chosen))
            name += "_tau0-" + "-".join(f"{v:g}" for v in bench.init_scales)
        method = options.get("method")
        if method is not None:
            if method not in METHODS:
                raise ConfigError(f"--method {method!r}: unknown; allowed: {', '.join(METHODS)}")
            name += f"_{method}"
        if options.get("dopri5_budget_s") is not None:
            budget = float(options["dopri5_budget_s"])
            if budget <= 0:
                raise ConfigError(f"--dopri5-budget-s {budget:g}: must be > 0 seconds")
            bench = replace(bench, dopri5_budget_s=budget)
        # dopri5 also stops early, with the CPU time it has spent, once this file appears
        stop_file = context.out_dir / f"{name}.STOP"
        stop_file.unlink(missing_ok=True)
        methods = (method,) if method else METHODS
        ds = measure(run_config, bench, context.scale, methods, stop_file=stop_file, keep_weights=bool(method))
    path = write_dataset(ds, context.out_dir / f"{name}.nc")
    figure = plot(ds.drop_vars("saved_weights", errors="ignore"), context.out_dir / f"{name}.png")
    logger.info("wrote %s and %s", path, figure)
    return StudyReport(
        title="Long-horizon gradient flows: kernel_exponential against dopri5",
        setup=_setup(ds, path),
        claims=[],
        measurements=_measurements(ds),
        figures=[(figure, "train-loss curves of both methods and their CPU times to t_end, per tau0")],
    )


def _setup(ds: xr.Dataset, path: Path) -> list[str]:
    return [
        f"teacher-student gradient flow, N = {ds.attrs['gnflow_n_train']}, M = {ds.attrs['gnflow_width']}, "
        f"t_end = {ds.attrs['gnflow_t_end']:g}, tau0 in {{{', '.join(f'{v:g}' for v in ds['tau0'].values)}}}",
        f"kernel_exponential {ds.attrs['gnflow_exponential_tolerances']}; dopri5 "
        f"{ds.attrs['gnflow_dopri5_tolerances']}, CPU-time budget {ds.attrs['gnflow_dopri5_budget_s']:g} s",
        f"{ds.attrs['gnflow_threads']} torch thread(s); the table: `{path.name}`",
    ]


def _measurements(ds: xr.Dataset) -> list[str]:
    """The per-run table and the per-tau0 comparison, as Markdown (``>=``: a time-limited run)."""
    rows = []
    for tau0 in ds["tau0"].values:
        for method in ds["method"].values:
            cell = ds.sel({"tau0": tau0, "method": method})  # a dict: method is a keyword of .sel
            bound = ">= " if int(cell["time_limited"]) == 1 else ""
            rows.append(
                [
                    f"{tau0:g}",
                    str(method),
                    bound + fmt(float(cell["cpu_time_s"])),
                    fmt(float(cell["wall_time_s"])),
                    str(int(cell["nfe"])),
                    f"{int(cell['n_steps'])} ({int(cell['n_rejected'])})",
                    fmt(float(cell["t_reached"])),
                    fmt(float(cell["final_train_loss"])),
                    fmt(float(cell["final_test_loss"])),
                ]
            )
    header = ["tau0", "method", "CPU s", "wall s", "evaluations", "steps (rejected)", "t reached"]
    lines = table([*header, "final train loss", "final test loss"], rows)
    comparison = [
        [
            f"{tau0:g}",
            fmt(float(ds["speedup"].sel(tau0=tau0))),
            fmt(float(ds["dopri5_projected_time_s"].sel(tau0=tau0))),
            fmt(float(ds["weight_difference"].sel(tau0=tau0))),
            fmt(float(ds["loss_ratio_difference"].sel(tau0=tau0))),
        ]
        for tau0 in ds["tau0"].values
    ]
    lines += [
        "",
        *table(["tau0", "speedup (CPU)", "dopri5 CPU s to t_end", "weight diff.", "loss-ratio diff."], comparison),
    ]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", default="small", help="smoke | small | paper (default: small)")
    parser.add_argument("--config", type=Path, help="another scale file (default: long_horizon.toml of the study)")
    parser.add_argument(
        "--tau0", type=float, action="append", help="run only this tau0 of the scale (repeatable); own table"
    )
    parser.add_argument(
        "--method", choices=METHODS, help="run only this method; its own table keeps the weights for --combine"
    )
    parser.add_argument("--dopri5-budget-s", type=float, help="override the scale's dopri5 CPU-time budget (s)")
    parser.add_argument(
        "--combine", type=Path, nargs="+", metavar="FILE", help="join --tau0 / --method tables of one scale"
    )
    parser.add_argument("-o", "--output", type=Path, help="output folder (default: data/studies/long_horizon/SCALE)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    options: dict[str, Any] = {}
    scale = args.scale
    try:
        if args.combine:
            options["combine"] = [str(p) for p in args.combine]
            with xr.open_dataset(args.combine[0]) as first:
                scale = first.attrs["gnflow_scale"]  # the scale of the tables
        for key in ("tau0", "method", "dopri5_budget_s"):
            if getattr(args, key) is not None:
                options[key] = getattr(args, key)
        report = run_study("long_horizon", scale, args.output, options=options, settings_path=args.config)
    except (StudyError, ConfigError, OSError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
