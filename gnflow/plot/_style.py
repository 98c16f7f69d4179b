"""Shared styling of the figures: palette, axis scales and labels, titles from the stored config."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import xarray as xr
from matplotlib.axes import Axes

from gnflow.dataset import dataset_config
from gnflow.plot._quantities import flatten_config

# Okabe & Ito (2008), "Color Universal Design": distinguishable under the common color-vision
# deficiencies. Black comes last so that it stays free for reference lines.
OKABE_ITO = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")

#: Short labels of the config keys that studies vary most often.
SHORT_KEYS = {
    "model.init_scale": "τ0",
    "data.n_train": "N",
    "model.width": "M",
    "flow.kind": "flow",
    "flow.damping": "damping",
    "flow.epsilon": "ε",
    "solver.method": "solver",
    "solver.step_size": "h",
}


def units(ds: xr.Dataset, name: str) -> str:
    """The CF units of variable ``name`` for an axis label (``"dimensionless"`` for 1)."""
    text = str(ds[name].attrs.get("units", "1")) if name in ds.variables else "1"
    return "dimensionless" if text in ("1", "") else text


def spans_decades(values: Iterable[float], decades: float = 2.0) -> bool:
    """Whether the finite positive ``values`` span at least ``decades`` powers of ten."""
    positive = np.asarray([v for v in values if np.isfinite(v) and v > 0], dtype=np.float64)
    return positive.size >= 2 and float(np.log10(positive.max() / positive.min())) >= decades


def scale_axis(ax: Axes, axis: str, values: Iterable[float]) -> None:
    """Log scale when the positive values span at least two decades, else linear."""
    if spans_decades(values):
        (ax.set_xscale if axis == "x" else ax.set_yscale)("log")


def positive_time(ds: xr.Dataset) -> np.ndarray:
    """Mask of the saved times that a log time axis can show (t > 0)."""
    return np.asarray(ds["t"].values > 0)


def time_label(ds: xr.Dataset) -> str:
    """The label of a flow-time axis."""
    return f"flow time t ({units(ds, 't')})"


def finite_series(ds: xr.Dataset, name: str) -> np.ndarray | None:
    """A finite-valued (t,) variable of ``ds`` as float64, or None when absent or all NaN."""
    if name not in ds or ds[name].dims != ("t",):
        return None
    values = np.asarray(ds[name].values, dtype=np.float64)
    return values if np.isfinite(values).any() else None


def stored_config(ds: xr.Dataset) -> dict[str, Any]:
    """The stored run config as a dictionary; empty for files without one (plots still draw)."""
    try:
        return dict(dataset_config(ds))
    except ValueError:
        return {}


def run_title(ds: xr.Dataset) -> str:
    """Flow, M, N, tau0 and status of a run, for a figure title."""
    flat = flatten_config(stored_config(ds))
    parts = [str(ds.attrs.get("gnflow_flow", flat.get("flow.kind", "run")))]
    for key in ("model.width", "data.n_train", "model.init_scale"):
        if key in flat:
            parts.append(f"{SHORT_KEYS[key]} = {flat[key]:g}")
    status = ds.attrs.get("gnflow_status")
    if status:
        parts.append(str(status))
    return ", ".join(parts)
