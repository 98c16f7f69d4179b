"""The comparison figure of several runs (e.g. a sweep): loss curves and final losses."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure

from gnflow.plot._quantities import differing_config_keys, flatten_config
from gnflow.plot._style import OKABE_ITO, SHORT_KEYS, finite_series, scale_axis, spans_decades, stored_config

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunCurves:
    """The parts of a run file that a comparison plots.

    Attributes
    ----------
    name:
        File name (stem) of the run.
    config:
        The resolved run config (``gnflow_config``) as a nested dictionary.
    t:
        Saved flow times, shape (t,).
    train_loss, test_loss:
        Losses at the saved times, shape (t,); ``test_loss`` is NaN without a test set.
    status:
        ``gnflow_status`` of the run.
    """

    name: str
    config: dict[str, Any]
    t: np.ndarray
    train_loss: np.ndarray
    test_loss: np.ndarray
    status: str

    @classmethod
    def from_dataset(cls, name: str, ds: xr.Dataset) -> RunCurves:
        """Extract the curves of a trajectory dataset."""
        t = np.asarray(ds["t"].values, dtype=np.float64)
        test = finite_series(ds, "test_loss")
        return cls(
            name=name,
            config=stored_config(ds),
            t=t,
            train_loss=np.asarray(ds["train_loss"].values, dtype=np.float64),
            test_loss=test if test is not None else np.full(t.shape, np.nan),
            status=str(ds.attrs.get("gnflow_status", "")),
        )


def _is_run_file(ds: xr.Dataset) -> bool:
    return (
        "t" in ds.coords
        and "train_loss" in ds
        and ds["train_loss"].dims == ("t",)
        and isinstance(ds.attrs.get("gnflow_config"), str)
    )


def load_run_curves(paths: Sequence[str | Path], *, progress: bool | None = None) -> list[RunCurves]:
    """Read the loss curves of the run files among ``paths``.

    Only the variables a comparison needs are read, so large weight trajectories stay on disk.
    Files that are not single-run trajectories (a sweep's combined summary, a checkpoint, any
    other NetCDF file) are skipped with a log message.

    Parameters
    ----------
    paths:
        NetCDF files.
    progress:
        Show a progress bar: True, False, or None (only when stderr is a terminal).
    """
    from gnflow._progress import progress_bar

    runs: list[RunCurves] = []
    bar = progress_bar(paths, enabled=progress, desc="reading runs", unit="file", leave=False)
    for path in bar:
        path = Path(path)
        try:
            with xr.open_dataset(path, engine="netcdf4") as ds:
                if not _is_run_file(ds):
                    logger.info("%s: not a single-run trajectory file; skipped", path)
                    continue
                wanted = [name for name in ("train_loss", "test_loss") if name in ds]
                runs.append(RunCurves.from_dataset(path.stem, ds[wanted].load()))
        except (OSError, ValueError) as exc:
            logger.warning(
                "%s: not readable as NetCDF (%s); skipped", path, str(exc).splitlines()[0] if str(exc) else exc
            )
    return runs


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return "[" + ", ".join(_format_value(v) for v in value) + "]"
    return str(value)


def _short_key(key: str, keys: Sequence[str]) -> str:
    if key in SHORT_KEYS:
        return SHORT_KEYS[key]
    last = key.rsplit(".", 1)[-1]
    return last if sum(k.rsplit(".", 1)[-1] == last for k in keys) == 1 else key


def _run_label(run: RunCurves, keys: Sequence[str]) -> str:
    if not keys:
        return run.name
    flat = flatten_config(run.config)
    return ", ".join(f"{_short_key(k, keys)} = {_format_value(flat.get(k, '—'))}" for k in keys)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _colours(runs: Sequence[RunCurves], keys: Sequence[str]) -> list[Any]:
    """Ordered colours (cividis) when exactly one numeric key varies, else Okabe--Ito categories."""
    if len(keys) == 1:
        values = [flatten_config(r.config).get(keys[0]) for r in runs]
        if all(_is_number(v) for v in values):
            array = np.asarray(values, dtype=np.float64)
            norm: Normalize = (
                LogNorm(array.min(), array.max())
                if array.min() > 0 and spans_decades(array, 1.0)
                else Normalize(array.min(), array.max() if array.max() > array.min() else array.min() + 1)
            )
            cmap = colormaps["cividis"]
            # cividis ends in a pale yellow; stop at 0.9 so the last curve stays visible on white
            return [cmap(0.9 * float(norm(v))) for v in array]
    if len(runs) <= len(OKABE_ITO):
        return [OKABE_ITO[k] for k in range(len(runs))]
    cmap = colormaps["cividis"]
    return [cmap(0.9 * k / max(1, len(runs) - 1)) for k in range(len(runs))]


def _sort_key(run: RunCurves, keys: Sequence[str]) -> tuple[Any, ...]:
    flat = flatten_config(run.config)
    parts = [(0, flat[k], "") if _is_number(flat.get(k)) else (1, 0, str(flat.get(k))) for k in keys]
    return (*parts, run.name)


_GROUP_STYLES = ("-", "--", "-.", ":")


def _plot_final(ax: Axes, runs: Sequence[RunCurves], key: str, keys: Sequence[str], colours: Sequence[Any]) -> None:
    """Final test (and train) loss against the value of ``key``; one line per other grid point.

    Each point has its run's colour, as in the curve panels (one meaning of colour per figure);
    the lines joining a group are grey, with one line style per group: solid circles test,
    open squares train."""
    colour_of = {id(run): colour for run, colour in zip(runs, colours, strict=True)}
    others = [k for k in keys if k != key]
    groups: dict[str, list[RunCurves]] = {}
    for run in runs:
        groups.setdefault(_run_label(run, others) if others else "", []).append(run)
    plotted: list[float] = []
    xs_all: list[float] = []
    for k, (label, members) in enumerate(sorted(groups.items())):
        members = sorted(members, key=lambda r: flatten_config(r.config)[key])
        xs = [float(flatten_config(r.config)[key]) for r in members]
        test = [float(r.test_loss[-1]) for r in members]
        train = [float(r.train_loss[-1]) for r in members]
        point_colours = [colour_of[id(r)] for r in members]
        style = _GROUP_STYLES[k % len(_GROUP_STYLES)]
        prefix = f"{label}: " if label else ""
        if np.isfinite(test).any():
            ax.plot(xs, test, style, color="#777777", lw=1, label=f"{prefix}test (filled circles)")
            ax.scatter(xs, test, marker="o", c=point_colours, zorder=3)
            plotted.extend(test)
        ax.plot(xs, train, style, color="#bbbbbb", lw=1, label=f"{prefix}train (open squares)")
        ax.scatter(xs, train, marker="s", facecolors="none", edgecolors=point_colours, zorder=3)
        plotted.extend(train)
        xs_all.extend(xs)
    short = _short_key(key, keys)
    name = {"model.init_scale": "initial scale τ0 of hidden weights", "data.n_train": "training set size N"}.get(
        key, key
    )
    ax.set_xlabel(f"{name} ({short}, dimensionless)" if key == "model.init_scale" else f"{name} ({short})")
    ax.set_ylabel("final loss (dimensionless)")
    ax.set_title(f"final loss against {short}")
    scale_axis(ax, "x", xs_all)
    scale_axis(ax, "y", plotted)
    ax.legend(loc="best", fontsize="small")


def plot_runs(runs: Sequence[RunCurves]) -> Figure:
    """Comparison figure of several runs (e.g. the files of a sweep).

    Train and test loss against flow time, one curve per run, labeled by the config values that
    differ between the runs; and, when ``model.init_scale`` (tau0) or ``data.n_train`` (N)
    varies, the final losses against it with one line per value of the other varying keys.

    Parameters
    ----------
    runs:
        The runs, e.g. from :func:`load_run_curves`; at least one.

    Returns
    -------
    matplotlib.figure.Figure
        The figure (not yet written; see :func:`save_figure`).
    """
    if not runs:
        raise ValueError("no runs to compare")
    keys = differing_config_keys([r.config for r in runs])
    runs = sorted(runs, key=lambda r: _sort_key(r, keys))
    final_keys = [k for k in ("model.init_scale", "data.n_train") if k in keys]
    n_panels = 2 + len(final_keys)
    fig = Figure(figsize=(5.2 * n_panels, 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, n_panels, squeeze=False)[0]
    colours = _colours(runs, keys)
    for ax, variable, title in ((axes[0], "train_loss", "train loss"), (axes[1], "test_loss", "test loss")):
        plotted: list[float] = []
        times: list[float] = []
        for run, colour in zip(runs, colours, strict=True):
            values = getattr(run, variable)
            keep = run.t > 0
            if not np.isfinite(values[keep]).any():
                continue
            ax.plot(run.t[keep], values[keep], color=colour, label=_run_label(run, keys))
            plotted.extend(values[keep])
            times.extend(run.t[keep])
        ax.set_xlabel("flow time t (dimensionless)")
        ax.set_ylabel(f"{title} (dimensionless)")
        ax.set_title(f"{title} against flow time")
        scale_axis(ax, "x", times)
        scale_axis(ax, "y", plotted)
        if not plotted:
            ax.text(0.5, 0.5, f"no {title} in these files", ha="center", va="center", transform=ax.transAxes)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncol=min(4, len(labels)), fontsize="small")
    for ax, key in zip(axes[2:], final_keys, strict=True):
        _plot_final(ax, runs, key, keys, colours)
    varying = ", ".join(_short_key(k, keys) for k in keys) or "nothing"
    fig.suptitle(f"{len(runs)} runs (varying: {varying})")
    return fig
