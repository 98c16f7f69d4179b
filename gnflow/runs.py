"""Several run files as one dataset: the runs' time series on one ``t`` axis, a ``run`` dimension.

Runs rarely save the same times: a run that converges stops early and saves its stopping time,
and runs with other ``t_end``, ``n_save`` or step schedules save other grids. Concatenating them
with xarray's outer join puts each run's values at its own times only, so that at most times of
the union most values are NaN (with 4 runs of the default run's grid, one value in four).
:func:`open_runs` reads the runs onto the union of their saved times instead, by this rule:

- at its own saved times a run's values are exact (what the file holds);
- between two of its saved times a float variable is interpolated linearly in ``t``, and a
  counter (an integer variable: ``nfe``, ``n_steps``, ``iteration``, ...) keeps the value of the
  earlier saved time, the count reached by then;
- before a run's first and after its last saved time its values are NaN: the run has no state
  there (it converged, failed or ended), and none is made up.

A researcher comparing flows reads values of different runs at the same ``t`` (ratios, gaps,
"loss of GN at the time GD reached 1e-3") and plots them against one axis: both need every run
on one time axis, valid wherever the run was integrated, which a per-run ``t`` (a 2-D
coordinate) does not give. Linear interpolation is exact at the saved times, needs no
assumption about the dynamics and is accurate to the resolution of the saved grid; it is not a
solution of the flow between them, and the files keep the exact states.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from gnflow.config import config_to_dict
from gnflow.dataset import VariableInfo, cf_attributes, component_labels, run_config_of
from gnflow.grid import dimension_name

__all__ = ["RUN_VARIABLES", "open_runs"]

RUN_VARIABLES: dict[str, VariableInfo] = {
    "run": VariableInfo("run", "1", description="the run's file name without .nc (its path where names repeat)"),
    "run_path": VariableInfo("run file", "1", description="the file the run was read from"),
    "status": VariableInfo("run status", "1", description="gnflow_status of the run: completed, converged or failed"),
    "t_final": VariableInfo("last saved flow time", "1", description="the last time the run saved a state"),
}
"""The per-run variables of :func:`open_runs` besides the runs' own."""


def _flat_config(ds: xr.Dataset) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in config_to_dict(run_config_of(ds)).items():
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    return flat


def _on_union(t: np.ndarray, values: np.ndarray, times: np.ndarray) -> np.ndarray:
    """``values`` (t first) of one run at the union ``times`` by the module's rule."""
    out = np.full((times.size, *values.shape[1:]), np.nan)
    inside = (times >= t[0]) & (times <= t[-1])
    if values.dtype.kind in "iub":  # a counter: the value reached by then
        index = np.searchsorted(t, times[inside], side="right") - 1
        out[inside] = values[index]
        return out
    flat = values.reshape(t.size, -1).astype(np.float64)
    columns = [np.interp(times[inside], t, flat[:, j]) for j in range(flat.shape[1])]
    out[inside] = np.stack(columns, axis=-1).reshape((int(inside.sum()), *values.shape[1:]))
    return out


def _run_names(paths: Sequence[Path]) -> list[str]:
    stems = [p.stem for p in paths]
    return stems if len(set(stems)) == len(stems) else [str(p) for p in paths]


def open_runs(paths: Sequence[str | Path], variables: Sequence[str] | None = None) -> xr.Dataset:
    """Read run files into one dataset with dimensions ``run`` and ``t``, ``t`` the union of their saved times.

    Each run's values are put on the union axis by the rule of :mod:`gnflow.runs`: exact at the
    run's saved times, linear in ``t`` between them (counters: the value reached by then), NaN only
    before its first and after its last saved time.

    Parameters
    ----------
    paths:
        gnflow trajectory files (``gnflow run``, ``gnflow observe``; gnflow 0.1.0 files too).
    variables:
        The variables to read; each must have the dimension ``t`` in every run, and its other
        dimensions must have the same sizes in all runs. Default: every variable whose only
        dimension is ``t`` in any of the runs (losses, spectra, damping, counts, observables).

    Returns
    -------
    xarray.Dataset
        ``variables`` of dimensions ``(run, t, ...)``, with their attributes; per-run coordinates
        ``run`` (file names), ``run_path``, ``run_id`` (config hash), ``status``, ``t_final`` and,
        for every config key whose value is not the same in all runs (``output.*`` left out), that
        value, named as in sweeps (``model_init_scale``, attribute ``gnflow_key``).

    Raises
    ------
    ValueError
        No paths, a file that is not a gnflow trajectory, saved times that do not increase, or a
        variable that is missing from a run or has other sizes there.
    """
    from gnflow.config import config_hash

    files = [Path(p) for p in paths]
    if not files:
        raise ValueError("open_runs: no files given; expected one or more gnflow trajectory files")
    loaded: list[xr.Dataset] = []
    for path in files:
        with xr.open_dataset(path, engine="netcdf4") as ds:
            if "t" not in ds.coords or "gnflow_config" not in ds.attrs:
                raise ValueError(f"{path}: not a gnflow trajectory file (no t coordinate or gnflow_config)")
            for name in variables or ():
                if name not in ds or "t" not in ds[name].dims:
                    raise ValueError(f"{path}: no variable {name!r} over t; allowed: those every run holds over t")
            wanted = (
                list(variables) if variables is not None else [n for n, v in ds.data_vars.items() if v.dims == ("t",)]
            )
            loaded.append(component_labels(ds[[n for n in wanted if n in ds]].load()).assign_attrs(ds.attrs))
    if variables is None:
        names: list[str] = []
        for ds in loaded:
            names.extend(str(n) for n in ds.data_vars if n not in names)
    else:
        names = list(variables)
    for path, ds in zip(files, loaded, strict=True):
        t = ds["t"].values
        if t.size and np.any(np.diff(t) <= 0):
            raise ValueError(f"{path}: saved times do not increase; open_runs aligns runs on t")
    times = np.unique(np.concatenate([ds["t"].values for ds in loaded]))
    data_vars: dict[str, Any] = {}
    for name in names:
        present = [ds[name] for ds in loaded if name in ds]
        first = present[0].transpose("t", ...)
        other = first.dims[1:]
        stacked = []
        for path, var in zip(files, (ds.get(name) for ds in loaded), strict=True):
            if var is None:  # default selection: a series only some runs hold
                stacked.append(np.full((times.size, *first.shape[1:]), np.nan))
                continue
            var = var.transpose("t", *other)
            if var.shape[1:] != first.shape[1:]:
                raise ValueError(f"{path}: {name} has sizes {dict(var.sizes)}, another run {dict(first.sizes)}")
            stacked.append(_on_union(var["t"].values, var.values, times))
        data_vars[name] = (("run", "t", *other), np.stack(stacked), dict(first.attrs))
    configs = [_flat_config(ds) for ds in loaded]
    coords: dict[str, Any] = {
        "run": ("run", np.asarray(_run_names(files), dtype=object), RUN_VARIABLES["run"].attrs()),
        "t": ("t", times, dict(loaded[0]["t"].attrs)),
        "run_path": ("run", np.asarray([str(p) for p in files], dtype=object), RUN_VARIABLES["run_path"].attrs()),
        "run_id": (
            "run",
            np.asarray([config_hash(run_config_of(ds)) for ds in loaded], dtype=object),
            VariableInfo("run identifier", "1", description="hash of the resolved run config").attrs(),
        ),
        "status": (
            "run",
            np.asarray([str(ds.attrs.get("gnflow_status", "")) for ds in loaded], dtype=object),
            RUN_VARIABLES["status"].attrs(),
        ),
        "t_final": ("run", np.asarray([float(ds["t"].values[-1]) for ds in loaded]), RUN_VARIABLES["t_final"].attrs()),
    }
    keys = [k for k in configs[0] if not k.startswith("output.")]
    keys += [k for c in configs[1:] for k in c if k not in keys and not k.startswith("output.")]
    for key in keys:
        values = [c.get(key) for c in configs]
        if len({json.dumps(v, default=str) for v in values}) > 1:
            attrs = {"long_name": key, "units": "1", "gnflow_key": key}
            if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
                array = np.asarray(values, dtype=np.int64)
            elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                array = np.asarray(values, dtype=np.float64)
            else:
                array = np.asarray([json.dumps(v) if not isinstance(v, str) else v for v in values], dtype=object)
            coords[dimension_name(key)] = ("run", array, attrs)
    for name in ("component", "particle"):
        if any(name in v[0] for v in data_vars.values()) and name in loaded[0].coords:
            coords[name] = (name, loaded[0][name].values, dict(loaded[0][name].attrs))
    return xr.Dataset(
        data_vars,
        coords=coords,
        attrs=cf_attributes(
            f"{len(files)} gnflow runs on the union of their saved times",
            "gnflow.open_runs: values linear in t between a run's saved times, NaN outside its first and last",
            libraries=False,
        ),
    )
