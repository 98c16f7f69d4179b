"""What ``gnflow info`` prints about a file: a run's status, flow, solver and model, its regime
after ``gnflow observe``, sizes and first and last values; for a sweep's ``sweep.nc`` its grid,
its runs and their final values.

The text is made from the attributes and, for values, the first and last saved time of each
series only, so a lazily opened dataset is read no further than that.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

__all__ = ["info_text"]

#: The run's model parameters shown on the ``model`` line, in this order.
MODEL_KEYS = ("width", "activation", "scaling", "init_scale", "output_init", "train")
SERIES = ("train_loss", "test_loss", "gram_eigmin", "gram_eigmax", "damping")


def _line(label: str, text: str) -> str:
    return f"  {label:<10} {text}"


def _number(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, (int, float, np.integer, np.floating)) else str(value)


def _stored_config(ds: xr.Dataset) -> dict[str, Any] | None:
    text = ds.attrs.get("gnflow_config")
    if not isinstance(text, str):
        return None
    try:
        values = json.loads(text)
    except json.JSONDecodeError:
        return None
    return values if isinstance(values, dict) else None


def _run_lines(ds: xr.Dataset) -> list[str]:
    attrs = ds.attrs
    lines = []
    for key in ("gnflow_status", "gnflow_flow", "gnflow_solver"):
        if key in attrs:
            lines.append(_line(key.removeprefix("gnflow_"), str(attrs[key])))
    config = _stored_config(ds)
    if config is not None:
        model = config.get("model", {})
        shown = [f"{key}={_number(model[key])}" for key in MODEL_KEYS if key in model]
        if shown:
            lines.append(_line("model", ", ".join(shown)))
    for key in ("gnflow_data", "gnflow_device", "gnflow_dtype"):
        if key in attrs:
            lines.append(_line(key.removeprefix("gnflow_"), str(attrs[key])))
    if config is not None:
        from gnflow.config import config_from_dict, config_hash

        try:
            lines.append(
                _line("config", f"seed {config.get('seed', '?')}, hash {config_hash(config_from_dict(config))}")
            )
        except ValueError as exc:  # a config this version does not accept: say so, show the rest
            lines.append(_line("config", f"not readable by this gnflow ({str(exc).splitlines()[0]})"))
    if "gnflow_wall_time_s" in attrs:
        lines.append(
            _line(
                "cost",
                f"{attrs.get('gnflow_nfe', '?')} evaluations, {attrs.get('gnflow_steps', '?')} steps "
                f"({attrs.get('gnflow_rejected_steps', '?')} rejected), {float(attrs['gnflow_wall_time_s']):.2f} s",
            )
        )
    if "gnflow_regime" in attrs:
        measured = [
            f"{words} {_number(attrs[key])}"
            for key, words in (
                ("gnflow_regime_hidden_weight_movement", "hidden weight movement"),
                ("gnflow_regime_kernel_movement", "kernel movement"),
            )
            if key in attrs
        ]
        rule = f"; {attrs['gnflow_regime_rule']}" if "gnflow_regime_rule" in attrs else ""
        lines.append(
            _line("regime", f"{attrs['gnflow_regime']}" + (f" ({', '.join(measured)}{rule})" if measured else ""))
        )
    return lines


def _sweep_lines(ds: xr.Dataset) -> list[str]:
    attrs = ds.attrs
    lines = []
    try:
        keys = json.loads(str(attrs["gnflow_grid_keys"]))
    except (KeyError, json.JSONDecodeError):
        keys = {}
    for dim, key in keys.items():
        if dim in ds.coords:
            values = ", ".join(_number(v.item() if hasattr(v, "item") else v) for v in ds[dim].values)
            lines.append(_line("grid", f"{key} = {values}"))
    if "run" in ds.coords:
        lines.append(_line("grid", f"runs = {', '.join(str(v) for v in ds['run'].values)}"))
    if "status" in ds:
        counts = Counter(str(s).split(":")[0] for s in np.ravel(ds["status"].values))
        failed = attrs.get("gnflow_failed_runs", "?")
        summary = ", ".join(f"{n} {status}" for status, n in counts.items())
        lines.append(_line("runs", f"{attrs.get('gnflow_runs', sum(counts.values()))} ({failed} failed): {summary}"))
    return lines


def _value_lines(ds: xr.Dataset) -> list[str]:
    lines = []
    n_times = ds.sizes.get("t", 0)
    for name in SERIES:
        if name not in ds or n_times == 0 or "t" not in ds[name].dims:
            continue
        if ds[name].dims == ("t",):
            first, last = (float(ds[name].isel(t=k).values) for k in (0, -1))
            lines.append(f"  {name:<12} {first:.6g} -> {last:.6g}")
        elif f"{name}_final" in ds:  # a sweep: the runs' values at their last saved times
            finals = np.asarray(ds[f"{name}_final"].values, dtype=np.float64).ravel()
            finite = finals[np.isfinite(finals)]
            if finite.size:
                lines.append(
                    f"  {name:<12} final {finite.min():.6g} .. {finite.max():.6g} over {finite.size} runs"
                    + (f" ({finals.size - finite.size} without a value)" if finite.size < finals.size else "")
                )
    return lines


def info_text(ds: xr.Dataset, path: Path, *, show_config: bool = False) -> str:
    """The text ``gnflow info`` prints for the file ``path`` holding ``ds`` (newline-terminated)."""
    attrs = ds.attrs
    lines = [f"{path}: {attrs.get('title', 'NetCDF file')}"]
    lines.extend(_sweep_lines(ds) if "gnflow_grid_keys" in attrs else _run_lines(ds))
    sizes = ", ".join(f"{k}={v}" for k, v in ds.sizes.items())
    lines.append(_line("sizes", sizes))
    if "t" in ds.coords and ds.sizes.get("t", 0) > 0:
        lines.append(_line("flow time", f"{float(ds['t'][0]):.6g} .. {float(ds['t'][-1]):.6g}"))
    lines.extend(_value_lines(ds))
    lines.append(_line("variables", ", ".join(sorted(str(v) for v in ds.data_vars))))
    if show_config and "gnflow_config" in attrs:
        from gnflow.dataset import dataset_config  # raises ValueError naming the attribute when malformed

        lines.append(json.dumps(dataset_config(ds), indent=2, sort_keys=True))
    return "\n".join(lines) + "\n"
