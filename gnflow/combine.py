"""The combined summary dataset of a sweep (``sweep.nc``): the runs' losses on one grid.

Every variable of the run files that is a function of ``t`` alone is gathered into one array with
the sweep grid's dimensions (``run`` for explicit runs, one per grid key) and ``t``; how runs that stop
at different times share the ``t`` axis is said in :func:`combine_runs`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from gnflow.dataset import VariableInfo, cf_attributes
from gnflow.grid import RUN_DIM, SweepGrid
from gnflow.status import RunResult

__all__ = ["SWEEP_VARIABLES", "combine_runs", "is_failure"]

logger = logging.getLogger(__name__)

# Variables of the combined dataset besides the runs' own (whose attributes are copied).
SWEEP_VARIABLES: dict[str, VariableInfo] = {
    "run_id": VariableInfo(
        "run identifier", "1", "hash of the resolved run config; the run's file is runs/<run_id>.nc"
    ),
    "status": VariableInfo("run status", "1", "completed, converged, failed: <reason>, error: <message> or missing"),
    "t_final": VariableInfo("last saved flow time of the run", "1"),
    "wall_time_s": VariableInfo("wall-clock time of the integration", "s"),
    RUN_DIM: VariableInfo("name of the explicit run ([[runs]] entry of the sweep grid)", "1"),
}


def is_failure(status: str) -> bool:
    """Whether a sweep outcome means the run has no valid result (failed, raised or never ran).

    Besides the run statuses of :class:`~gnflow.status.RunResult`, a sweep records ``missing``
    (never ran) and ``error: <message>`` (the run raised before writing its file).
    """
    if status == "missing" or status.startswith("error"):
        return True
    try:
        return RunResult.parse(status).failed
    except ValueError:
        return True


def _time_series(ds: xr.Dataset) -> list[str]:
    return [str(name) for name, var in ds.data_vars.items() if var.dims == ("t",)]


def _coordinate(values: Sequence[Any]) -> np.ndarray:
    """Grid values as int32, float64 or text: CF 1.8 has no 64-bit integers."""
    if any(isinstance(v, str) for v in values):
        return np.asarray([str(v) for v in values], dtype=object)
    if all(isinstance(v, int) for v in values):
        if all(abs(v) < 2**31 for v in values):
            return np.asarray(values, dtype=np.int32)
        return np.asarray([str(v) for v in values], dtype=object)
    return np.asarray(values, dtype=np.float64)


def combine_runs(grid: SweepGrid, paths: Mapping[str, Path], outcomes: Mapping[str, Mapping[str, Any]]) -> xr.Dataset:
    """The summary dataset of a sweep: every scalar-over-``t`` variable of the runs on one grid.

    Dimensions are ``run`` (explicit runs, when the grid has them), one per grid key (named
    like the key with dots as underscores, e.g. ``model_init_scale``) and ``t``. The ``t`` axis
    is the union of the times the runs saved, except the extra state a converged run saves at
    its stopping time (off the save grid): a run's values are NaN at times it did not save, in
    particular after it stopped. Each variable ``X`` also comes as ``X_final``, the run's value
    at its last saved time ``t_final``, the stopping time included. Runs without a file are NaN
    everywhere, with their error in ``status``. Weight trajectories stay in the run files.
    """
    shape = grid.shape
    loaded: dict[str, xr.Dataset] = {}
    for run in grid.runs:
        path = paths[run.run_id]
        if path.is_file():
            try:
                with xr.open_dataset(path, engine="netcdf4") as ds:
                    loaded[run.run_id] = ds[_time_series(ds)].load()
                    loaded[run.run_id].attrs = dict(ds.attrs)
            except Exception as exc:  # damaged file of a failed run
                logger.warning("leaving %s out of the combined dataset: %s", path, exc)

    def on_grid(ds: xr.Dataset) -> np.ndarray:
        t = ds["t"].values
        if ds.attrs.get("gnflow_status") == "converged" and len(t) > 1:
            return t[:-1]
        return t

    times = np.unique(np.concatenate([on_grid(ds) for ds in loaded.values()] or [np.zeros(0)]))
    names: list[str] = []
    attrs: dict[str, dict[str, Any]] = {}
    for ds in loaded.values():
        for name in _time_series(ds):
            if name not in names:
                names.append(name)
                attrs[name] = {
                    k: v for k, v in ds[name].attrs.items() if k in ("long_name", "units", "description", "comment")
                }
    series = {name: np.full((*shape, times.size), np.nan) for name in names}
    finals = {name: np.full(shape, np.nan) for name in names}
    t_final = np.full(shape, np.nan)
    wall = np.full(shape, np.nan)
    run_ids = np.empty(shape, dtype=object)
    status = np.empty(shape, dtype=object)
    for run in grid.runs:
        run_ids[run.index] = run.run_id
        outcome = outcomes.get(run.run_id, {})
        run_ds = loaded.get(run.run_id)
        if run_ds is None:
            status[run.index] = str(outcome.get("status", "missing"))
            continue
        ds = run_ds
        status[run.index] = str(ds.attrs.get("gnflow_status", "missing"))
        if str(outcome.get("status", "")).startswith("error"):
            status[run.index] = str(outcome["status"])
        wall[run.index] = float(ds.attrs.get("gnflow_wall_time_s", np.nan))
        t = on_grid(ds)
        where = np.searchsorted(times, t)
        t_final[run.index] = float(ds["t"].values[-1])
        for name in _time_series(ds):
            values = ds[name].values.astype(np.float64)
            series[name][run.index][where] = values[: t.size]
            finals[name][run.index] = values[-1]

    dims = grid.dims
    data_vars: dict[str, Any] = {}
    for name in names:
        data_vars[name] = ((*dims, "t"), series[name], attrs[name])
        final_attrs = dict(attrs[name])
        final_attrs["long_name"] = f"{attrs[name].get('long_name', name)} at the last saved time t_final"
        data_vars[f"{name}_final"] = (dims, finals[name], final_attrs)
    data_vars["t_final"] = (dims, t_final)
    data_vars["wall_time_s"] = (dims, wall)
    data_vars["run_id"] = (dims, run_ids)
    data_vars["status"] = (dims, status)
    coords: dict[str, Any] = {"t": ("t", times)}
    if grid.labels is not None:
        coords[RUN_DIM] = (RUN_DIM, np.asarray(grid.labels, dtype=object))
    for dim, key in grid.keys.items():
        array = _coordinate(grid.grid[key])
        coords[dim] = (
            dim,
            array,
            {"long_name": f"value of the config key {key}", "units": "1", "gnflow_key": key},
        )
    combined = xr.Dataset(data_vars, coords=coords)
    for name, info in SWEEP_VARIABLES.items():
        if name in combined.variables:
            combined[name].attrs.update(info.attrs())
    n_valid = sum(1 for run in grid.runs if not is_failure(str(status[run.index])))
    n_runs = len(grid.runs)
    combined.attrs = cf_attributes(
        f"gnflow sweep {grid.name}: {n_runs} runs over {', '.join(dims) or 'one run'}",
        f"gnflow sweep {grid.name} (combined {n_valid} of {n_runs} runs)",
        libraries=False,
        comment="per-run trajectories with weights: runs/<run_id>.nc; values are NaN where a "
        "run saved no state (after it stopped); X_final is X at the run's last saved time t_final",
        gnflow_study=json.dumps(grid.definition, sort_keys=True),
        gnflow_grid_keys=json.dumps(grid.keys, sort_keys=True),
        gnflow_runs=len(grid.runs),
        gnflow_failed_runs=len(grid.runs) - n_valid,
    )
    return combined
