"""Figures of trajectory files: a summary of one run and a comparison of several runs.

``plot_run(ds)`` draws one run: train and test loss against flow time, the extreme eigenvalues of
the Gram matrix A = J J^T with the Gauss--Newton damping, how far the weights (and, when the file
holds it, the kernel) moved, and the hidden features u_i projected on the teacher directions at a
few times. ``plot_runs(runs)`` compares runs, e.g. the files of a sweep: loss curves labeled by the
config values that differ between runs, and the final test loss against tau0
(``model.init_scale``) or N (``data.n_train``) when those vary.

Figures are built on :class:`matplotlib.figure.Figure` directly (Agg canvas, no pyplot state), so
plotting works without a display and never changes a global backend. Colours are the Okabe--Ito
palette (colorblind-safe) for unordered categories and ``cividis`` for ordered values.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
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

from gnflow.dataset import atomic_write, dataset_config

__all__ = [
    "FIGURE_SUFFIXES",
    "OKABE_ITO",
    "RunCurves",
    "differing_config_keys",
    "flatten_config",
    "load_run_curves",
    "plot_run",
    "plot_runs",
    "save_figure",
    "teacher_plane",
    "weight_movement",
]

logger = logging.getLogger(__name__)

# Okabe & Ito (2008), "Color Universal Design": distinguishable under the common color-vision
# deficiencies. Black comes last so that it stays free for reference lines.
OKABE_ITO = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")

FIGURE_SUFFIXES = (".png", ".pdf", ".svg")

#: Short labels of the config keys that studies vary most often.
_SHORT_KEYS = {
    "model.init_scale": "τ0",
    "data.n_train": "N",
    "model.width": "M",
    "flow.kind": "flow",
    "flow.damping": "damping",
    "flow.epsilon": "ε",
    "solver.method": "solver",
    "solver.step_size": "h",
}

_MAX_SCATTER_PARTICLES = 1500


# --- quantities ---------------------------------------------------------------------------------


def weight_movement(weights: np.ndarray, components: slice | Sequence[int] = slice(None)) -> np.ndarray:
    """Relative weight movement ||W(t) - W(0)||_F / ||W(0)||_F at every saved time.

    Parameters
    ----------
    weights:
        Particle positions, shape (t, particle, component).
    components:
        The components to include (default all), e.g. ``slice(0, d + 1)`` for the hidden layer.

    Returns
    -------
    numpy.ndarray
        Shape (t,), dimensionless; 0 at t = 0. When W(0) restricted to ``components`` is zero
        (e.g. output weights that start at 0) the root-mean-square change per particle,
        ||W(t) - W(0)||_F / sqrt(particle), is returned instead.
    """
    w = np.asarray(weights, dtype=np.float64)[:, :, components]
    if w.ndim != 3:
        raise ValueError(f"weights must have shape (t, particle, component), got {w.shape}")
    change = np.sqrt(((w - w[:1]) ** 2).sum(axis=(1, 2)))
    norm0 = float(np.sqrt((w[0] ** 2).sum()))
    return change / norm0 if norm0 > 0 else change / math.sqrt(w.shape[1])


def teacher_plane(directions: np.ndarray) -> np.ndarray:
    """An orthonormal basis of the plane spanned by the first two directions.

    Parameters
    ----------
    directions:
        Vectors in R^d, shape (k, d) with k >= 1; the first two that are linearly independent
        span the plane (Gram--Schmidt).

    Returns
    -------
    numpy.ndarray
        Shape (2, d) with orthonormal rows. When d = 1 or all directions are parallel the second
        row is the zero vector.
    """
    vectors = np.asarray(directions, dtype=np.float64)
    if vectors.ndim != 2 or vectors.shape[0] < 1:
        raise ValueError(f"directions must have shape (k, d) with k >= 1, got {vectors.shape}")
    basis: list[np.ndarray] = []
    for vector in vectors:
        residual = vector - sum((vector @ q) * q for q in basis)
        norm = float(np.linalg.norm(residual))
        if norm > 1e-12 * max(1.0, float(np.linalg.norm(vector))):
            basis.append(residual / norm)
        if len(basis) == 2:
            break
    while len(basis) < 2:
        basis.append(np.zeros(vectors.shape[1]))
    return np.stack(basis)


def flatten_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config dictionary as ``{"section.key": value}`` (lists become tuples)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_config(value, f"{name}."))
        else:
            flat[name] = tuple(value) if isinstance(value, list) else value
    return flat


def differing_config_keys(configs: Sequence[Mapping[str, Any]]) -> list[str]:
    """The flattened config keys whose values are not the same in all ``configs``.

    ``output.*`` keys (where a run was written) are left out: they differ between any two files
    and say nothing about the runs. Keys are returned in the order they first appear.
    """
    flats = [flatten_config(c) for c in configs]
    keys: list[str] = []
    for flat in flats:
        keys.extend(k for k in flat if k not in keys and not k.startswith("output."))
    missing = object()
    return [k for k in keys if len({json.dumps(f.get(k, missing), default=str) for f in flats}) > 1]


# --- styling helpers ----------------------------------------------------------------------------


def _units(ds: xr.Dataset, name: str) -> str:
    units = str(ds[name].attrs.get("units", "1")) if name in ds.variables else "1"
    return "dimensionless" if units in ("1", "") else units


def _spans_decades(values: Iterable[float], decades: float = 2.0) -> bool:
    positive = np.asarray([v for v in values if np.isfinite(v) and v > 0], dtype=np.float64)
    return positive.size >= 2 and float(np.log10(positive.max() / positive.min())) >= decades


def _scale_axis(ax: Axes, axis: str, values: Iterable[float]) -> None:
    """Log scale when the positive values span at least two decades, else linear."""
    if _spans_decades(values):
        (ax.set_xscale if axis == "x" else ax.set_yscale)("log")


def _positive_time(ds: xr.Dataset) -> np.ndarray:
    """Mask of the saved times that a log time axis can show (t > 0)."""
    return np.asarray(ds["t"].values > 0)


def _time_label(ds: xr.Dataset) -> str:
    return f"flow time t ({_units(ds, 't')})"


def _series(ds: xr.Dataset, name: str) -> np.ndarray | None:
    """A finite-valued (t,) variable of ``ds`` as float64, or None when absent or all NaN."""
    if name not in ds or ds[name].dims != ("t",):
        return None
    values = np.asarray(ds[name].values, dtype=np.float64)
    return values if np.isfinite(values).any() else None


def _config(ds: xr.Dataset) -> dict[str, Any]:
    """The stored run config as a dictionary; empty for files without one (plots still draw)."""
    try:
        return dict(dataset_config(ds))
    except ValueError:
        return {}


def _run_title(ds: xr.Dataset) -> str:
    flat = flatten_config(_config(ds))
    parts = [str(ds.attrs.get("gnflow_flow", flat.get("flow.kind", "run")))]
    for key in ("model.width", "data.n_train", "model.init_scale"):
        if key in flat:
            parts.append(f"{_SHORT_KEYS[key]} = {flat[key]:g}")
    status = ds.attrs.get("gnflow_status")
    if status:
        parts.append(str(status))
    return ", ".join(parts)


# --- one run ------------------------------------------------------------------------------------


def _plot_series(
    ax: Axes, ds: xr.Dataset, styles: Mapping[str, tuple[str, str, str]]
) -> tuple[np.ndarray, list[float]]:
    """Plot the (t,) variables named in ``styles`` (name -> label, colour, line style) that ``ds``
    holds, at t > 0; return the times and every plotted value (for choosing the axis scales)."""
    keep = _positive_time(ds)
    t = ds["t"].values[keep]
    plotted: list[float] = []
    for name, (label, color, style) in styles.items():
        values = _series(ds, name)
        if values is None:
            continue
        ax.plot(t, values[keep], style, color=color, label=label)
        plotted.extend(values[keep])
    ax.set_xlabel(_time_label(ds))
    return t, plotted


def _plot_losses(ax: Axes, ds: xr.Dataset) -> None:
    styles = {
        "train_loss": ("train", OKABE_ITO[0], "-"),
        "test_loss": ("test", OKABE_ITO[1], "-"),
        "refit_test_loss": ("test, output layer refit", OKABE_ITO[2], "--"),
        "refit_train_loss": ("train, output layer refit", OKABE_ITO[4], "--"),
    }
    t, plotted = _plot_series(ax, ds, styles)
    ax.set_ylabel(f"loss L = ‖f − y‖² / 2N ({_units(ds, 'train_loss')})")
    ax.set_title("losses")
    _scale_axis(ax, "x", t)
    _scale_axis(ax, "y", plotted)
    ax.legend(loc="best", fontsize="small")


def _plot_spectrum(ax: Axes, ds: xr.Dataset) -> None:
    styles = {
        "gram_eigmax": ("λ_max(A)", OKABE_ITO[5], "-"),
        "gram_eigmin": ("λ_min(A)", OKABE_ITO[0], "-"),
        "damping": ("damping ε(w)", "#000000", ":"),
    }
    t, plotted = _plot_series(ax, ds, styles)
    ax.set_ylabel(f"eigenvalue of A = J Jᵀ ({_units(ds, 'gram_eigmin')})")
    ax.set_title("Gram spectrum and damping")
    _scale_axis(ax, "x", t)
    if plotted and min(v for v in plotted if np.isfinite(v)) > 0:
        _scale_axis(ax, "y", plotted)
    elif _spans_decades(plotted):
        # round-off can make lambda_min slightly negative; symlog keeps those points visible
        positive = [v for v in plotted if np.isfinite(v) and v > 0]
        ax.set_yscale("symlog", linthresh=min(positive))
    if plotted:
        ax.legend(loc="best", fontsize="small")
    else:
        ax.text(0.5, 0.5, "no Gram spectrum in this file", ha="center", va="center", transform=ax.transAxes)


def _movement_series(ds: xr.Dataset) -> list[tuple[str, np.ndarray]]:
    """Movement curves: stored ``*movement*`` variables, else weight movement from ``weights``."""
    stored = [
        (str(name), values)
        for name in ds.data_vars
        if "movement" in str(name) and (values := _series(ds, str(name))) is not None
    ]
    series = [(str(ds[name].attrs.get("long_name", name)), values) for name, values in stored]
    has_weight_movement = any(name.startswith("weight_movement") for name, _ in stored)
    if not has_weight_movement and "weights" in ds and "component" in ds["weights"].dims:
        weights = ds["weights"].transpose("t", "particle", "component").values
        d = weights.shape[2] - 2
        series.insert(0, ("hidden layer (u, b): ‖Δ‖ / ‖(u, b)(0)‖", weight_movement(weights, slice(0, d + 1))))
        output_label = "output layer v: ‖Δv‖ / ‖v(0)‖"
        if not np.any(weights[0, :, d + 1]):
            output_label = "output layer v: RMS of Δv (v(0) = 0)"
        series.insert(1, (output_label, weight_movement(weights, slice(d + 1, d + 2))))
    return series


def _plot_movement(ax: Axes, ds: xr.Dataset) -> None:
    keep = _positive_time(ds)
    t = ds["t"].values[keep]
    plotted: list[float] = []
    series = _movement_series(ds)
    for k, (label, values) in enumerate(series):
        ax.plot(t, values[keep], color=OKABE_ITO[k % len(OKABE_ITO)], label=label)
        plotted.extend(values[keep])
    ax.set_xlabel(_time_label(ds))
    ax.set_ylabel("relative movement (dimensionless)")
    ax.set_title("weight and kernel movement")
    _scale_axis(ax, "x", t)
    _scale_axis(ax, "y", plotted)
    if series:
        ax.legend(loc="best", fontsize="small")
    else:
        ax.text(0.5, 0.5, "no weights in this file", ha="center", va="center", transform=ax.transAxes)


def _snapshot_indices(t: np.ndarray, count: int = 3) -> list[int]:
    """Indices of ``count`` saved times: the first, the last, and geometrically spaced between."""
    n = len(t)
    if n <= count:
        return list(range(n))
    positive = t[t > 0]
    picks = [0]
    if positive.size:
        targets = np.geomspace(positive[0], positive[-1], count)[1:-1] if positive[0] < positive[-1] else []
        picks.extend(int(np.argmin(np.abs(t - target))) for target in targets)
    picks.append(n - 1)
    return sorted(set(picks))


def _plot_particles(axes: Sequence[Axes], ds: xr.Dataset) -> None:
    """Hidden features u_i projected on the plane of the first two teacher directions."""
    weights = ds["weights"].transpose("t", "particle", "component")
    n_particles, n_components = weights.shape[1], weights.shape[2]
    d = n_components - 2
    rng = np.random.default_rng(0)
    chosen = np.sort(rng.choice(n_particles, size=min(n_particles, _MAX_SCATTER_PARTICLES), replace=False))
    t = ds["t"].values
    picks = _snapshot_indices(t, len(axes))
    snapshots = weights.values[picks][:, chosen, :]
    teacher = ds["teacher_weights"].values[:, :d] if "teacher_weights" in ds and d >= 2 else None
    if d == 1:
        coordinates = snapshots[:, :, :2]  # u0 and b: the whole hidden feature
        labels = ("u₀", "b")
        rays: np.ndarray | None = None
        basis_name = ""
    else:
        if teacher is not None:
            basis = teacher_plane(teacher)
            basis_name = "teacher direction"
        else:
            # no teacher: the top two principal directions of the final hidden features
            _, _, vt = np.linalg.svd(snapshots[-1, :, :d], full_matrices=False)
            basis = vt[:2] if vt.shape[0] >= 2 else teacher_plane(vt)
            basis_name = "principal direction"
        coordinates = snapshots[:, :, :d] @ basis.T
        labels = (f"u · q₁ (first {basis_name})", f"u · q₂ (second {basis_name})")
        rays = None
        if teacher is not None:
            unit = teacher / np.maximum(np.linalg.norm(teacher, axis=1, keepdims=True), 1e-300)
            rays = unit @ basis.T
    v = np.abs(snapshots[:, :, -1])
    vmax = float(v.max()) if v.size else 0.0
    sizes = 3.0 + (25.0 * v / vmax if vmax > 0 else 0.0 * v)
    finite = coordinates[np.isfinite(coordinates).all(axis=-1)]
    extent = float(np.quantile(np.abs(finite), 0.995)) * 1.15 if finite.size else 1.0
    extent = extent if extent > 0 else 1.0
    signs = np.sign(snapshots[:, :, -1])
    groups = (
        (1.0, OKABE_ITO[0], "particles, v > 0"),
        (-1.0, OKABE_ITO[5], "particles, v < 0"),
        (0.0, "#999999", "particles, v = 0"),
    )
    for k, (ax, index) in enumerate(zip(axes, picks, strict=False)):
        for sign, colour, label in groups:
            mask = signs[k] == sign
            if mask.any():
                ax.scatter(
                    coordinates[k, mask, 0],
                    coordinates[k, mask, 1],
                    s=sizes[k, mask],
                    color=colour,
                    alpha=0.5,
                    linewidths=0,
                    label=label,
                )
        if rays is not None:
            for j, (a, b) in enumerate(rays):
                ax.plot(
                    [0, extent * a],
                    [0, extent * b],
                    "--",
                    color="#000000",
                    lw=1,
                    label="teacher directions (projected)" if j == 0 else None,
                )
        ax.set_xlim(-extent, extent)
        ax.set_ylim(-extent, extent)
        ax.set_aspect("equal")
        ax.set_title(f"particles at t = {t[index]:.3g}")
        ax.set_xlabel(f"{labels[0]} ({_units(ds, 'weights')})")
        if k == 0:
            ax.set_ylabel(f"{labels[1]} ({_units(ds, 'weights')})")
        ax.legend(loc="upper left", fontsize="x-small", markerscale=2)
    for ax in axes[len(picks) :]:
        ax.set_visible(False)


def plot_run(ds: xr.Dataset) -> Figure:
    """Summary figure of one trajectory dataset.

    Top row: train and test loss, the extreme eigenvalues of the Gram matrix with the damping,
    and the weight movement (and any stored ``*movement*`` observables) against flow time t.
    Bottom row: the hidden features u_i projected on the plane of the first two teacher
    directions at three saved times (on the first two principal directions when the file holds
    no teacher). Marker area grows with the magnitude of the output weight v_i.

    Parameters
    ----------
    ds:
        A trajectory dataset with at least ``t`` and ``train_loss``.

    Returns
    -------
    matplotlib.figure.Figure
        The figure (not yet written; see :func:`save_figure`).
    """
    if "t" not in ds.coords or "train_loss" not in ds:
        raise ValueError("not a trajectory dataset: it needs a t coordinate and a train_loss variable")
    has_particles = "weights" in ds and ds.sizes.get("t", 0) > 0
    fig = Figure(figsize=(13.5, 8.2 if has_particles else 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    rows = 2 if has_particles else 1
    grid = fig.add_gridspec(rows, 3)
    _plot_losses(fig.add_subplot(grid[0, 0]), ds)
    _plot_spectrum(fig.add_subplot(grid[0, 1]), ds)
    _plot_movement(fig.add_subplot(grid[0, 2]), ds)
    if has_particles:
        first = fig.add_subplot(grid[1, 0])
        axes = [
            first,
            fig.add_subplot(grid[1, 1], sharex=first, sharey=first),
            fig.add_subplot(grid[1, 2], sharex=first, sharey=first),
        ]
        _plot_particles(axes, ds)
    fig.suptitle(_run_title(ds))
    return fig


# --- several runs -------------------------------------------------------------------------------


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
        test = _series(ds, "test_loss")
        return cls(
            name=name,
            config=_config(ds),
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
    from tqdm.auto import tqdm

    runs: list[RunCurves] = []
    bar = tqdm(paths, desc="reading runs", unit="file", disable=None if progress is None else not progress, leave=False)
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
    if key in _SHORT_KEYS:
        return _SHORT_KEYS[key]
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
                if array.min() > 0 and _spans_decades(array, 1.0)
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


def _plot_final(ax: Axes, runs: Sequence[RunCurves], key: str, keys: Sequence[str]) -> None:
    """Final test (and train) loss against the value of ``key``; one line per other grid point."""
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
        color = OKABE_ITO[k % len(OKABE_ITO)]
        prefix = f"{label}: " if label else ""
        if np.isfinite(test).any():
            ax.plot(xs, test, "o-", color=color, label=f"{prefix}test")
            plotted.extend(test)
        ax.plot(xs, train, "s:", color=color, markerfacecolor="none", label=f"{prefix}train")
        plotted.extend(train)
        xs_all.extend(xs)
    short = _short_key(key, keys)
    name = {"model.init_scale": "initial scale τ0 of hidden weights", "data.n_train": "training set size N"}.get(
        key, key
    )
    ax.set_xlabel(f"{name} ({short}, dimensionless)" if key == "model.init_scale" else f"{name} ({short})")
    ax.set_ylabel("final loss (dimensionless)")
    ax.set_title(f"final loss against {short}")
    _scale_axis(ax, "x", xs_all)
    _scale_axis(ax, "y", plotted)
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
        _scale_axis(ax, "x", times)
        _scale_axis(ax, "y", plotted)
        if not plotted:
            ax.text(0.5, 0.5, f"no {title} in these files", ha="center", va="center", transform=ax.transAxes)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncol=min(4, len(labels)), fontsize="small")
    for ax, key in zip(axes[2:], final_keys, strict=True):
        _plot_final(ax, runs, key, keys)
    varying = ", ".join(_short_key(k, keys) for k in keys) or "nothing"
    fig.suptitle(f"{len(runs)} runs (varying: {varying})")
    return fig


# --- writing ------------------------------------------------------------------------------------


def save_figure(fig: Figure, path: str | Path, *, dpi: float = 120) -> Path:
    """Write ``fig`` atomically (temporary file in the same folder, then rename).

    The format follows the suffix: one of ``.png``, ``.pdf``, ``.svg``. Returns the path written.
    """
    path = Path(path)
    if path.suffix.lower() not in FIGURE_SUFFIXES:
        raise ValueError(f"{path}: unsupported figure format; the name must end in {', '.join(FIGURE_SUFFIXES)}")
    return atomic_write(path, lambda name: fig.savefig(name, dpi=dpi, format=path.suffix.lower().lstrip(".")))
