"""The summary figure of one run: losses, Gram spectrum and damping, movement, hidden features."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import xarray as xr
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from gnflow.plot._quantities import movement_normalization, teacher_plane, weight_movement
from gnflow.plot._style import (
    OKABE_ITO,
    finite_series,
    positive_time,
    run_title,
    scale_axis,
    spans_decades,
    time_label,
    units,
)

_MAX_SCATTER_PARTICLES = 1500


def _plot_series(
    ax: Axes, ds: xr.Dataset, styles: Mapping[str, tuple[str, str, str]]
) -> tuple[np.ndarray, list[float]]:
    """Plot the (t,) variables named in ``styles`` (name -> label, colour, line style) that ``ds``
    holds, at t > 0; return the times and every plotted value (for choosing the axis scales)."""
    keep = positive_time(ds)
    t = ds["t"].values[keep]
    plotted: list[float] = []
    for name, (label, color, style) in styles.items():
        values = finite_series(ds, name)
        if values is None:
            continue
        ax.plot(t, values[keep], style, color=color, label=label)
        plotted.extend(values[keep])
    ax.set_xlabel(time_label(ds))
    return t, plotted


def _plot_losses(ax: Axes, ds: xr.Dataset) -> None:
    styles = {
        "train_loss": ("train", OKABE_ITO[0], "-"),
        "test_loss": ("test", OKABE_ITO[1], "-"),
        "refit_test_loss": ("test, output layer refit", OKABE_ITO[2], "--"),
        "refit_train_loss": ("train, output layer refit", OKABE_ITO[4], "--"),
    }
    t, plotted = _plot_series(ax, ds, styles)
    ax.set_ylabel(f"loss L = ‖f − y‖² / 2N ({units(ds, 'train_loss')})")
    ax.set_title("losses")
    scale_axis(ax, "x", t)
    scale_axis(ax, "y", plotted)
    floor = loss_floor(ds)
    if floor is not None and ax.get_yscale() == "log" and min(v for v in plotted if v > 0) < floor:
        # a refit that interpolates the training set has a train loss at rounding level (~1e-28):
        # it would squash the run's own curves into the top of the panel
        top = max(v for v in plotted if np.isfinite(v))
        ax.set_ylim(floor, top * 2.0)
        ax.text(0.01, 0.01, f"curves below {floor:.1e} are clipped", transform=ax.transAxes, fontsize="x-small")
    ax.legend(loc="best", fontsize="small")


def loss_floor(ds: xr.Dataset) -> float | None:
    """The lowest loss the loss panel shows: a hundredth of the lowest positive train or test loss of
    the network itself (refit curves may go below and are clipped); None without losses."""
    own = [finite_series(ds, name) for name in ("train_loss", "test_loss")]
    positive = [v[np.isfinite(v) & (v > 0)] for v in own if v is not None]
    lowest = [float(v.min()) for v in positive if v.size]
    return 0.01 * min(lowest) if lowest else None


def _plot_spectrum(ax: Axes, ds: xr.Dataset) -> None:
    styles = {
        "gram_eigmax": ("λ_max(A)", OKABE_ITO[5], "-"),
        "gram_eigmin": ("λ_min(A)", OKABE_ITO[0], "-"),
        "damping": ("damping ε(w)", "#000000", ":"),
    }
    t, plotted = _plot_series(ax, ds, styles)
    ax.set_ylabel(f"eigenvalue of A = J Jᵀ ({units(ds, 'gram_eigmin')})")
    ax.set_title("Gram spectrum and damping")
    scale_axis(ax, "x", t)
    if plotted and min(v for v in plotted if np.isfinite(v)) > 0:
        scale_axis(ax, "y", plotted)
    elif spans_decades(plotted):
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
        if "movement" in str(name) and (values := finite_series(ds, str(name))) is not None
    ]
    series = [(_stored_label(ds, name), values) for name, values in stored]
    has_weight_movement = any(name.startswith("weight_movement") for name, _ in stored)
    if not has_weight_movement and "weights" in ds and "component" in ds["weights"].dims:
        weights = ds["weights"].transpose("t", "particle", "component").values
        d = weights.shape[2] - 2
        hidden, output = slice(0, d + 1), slice(d + 1, d + 2)
        hidden_label = f"hidden layer (u, b): ‖Δ(u, b)‖ / {movement_normalization(weights, hidden, '(u, b)')}"
        series.insert(0, (hidden_label, weight_movement(weights, hidden)))
        output_label = f"output layer v: ‖Δv‖ / {movement_normalization(weights, output, 'v')}"
        series.insert(1, (output_label, weight_movement(weights, output)))
    return series


def _stored_label(ds: xr.Dataset, name: str) -> str:
    """Legend of a stored movement variable: its long name, with the normalization the file records
    (the output weights' movement is divided by ||W_0|| when v_0 = 0, whatever the long name says)."""
    attrs = ds[name].attrs
    label = str(attrs.get("long_name", name))
    norm = attrs.get("normalization")
    if norm and " / " in label:
        label = f"{label.rsplit(' / ', 1)[0]} / {norm}"
    return label


def _plot_movement(ax: Axes, ds: xr.Dataset) -> None:
    keep = positive_time(ds)
    t = ds["t"].values[keep]
    plotted: list[float] = []
    series = _movement_series(ds)
    for k, (label, values) in enumerate(series):
        ax.plot(t, values[keep], color=OKABE_ITO[k % len(OKABE_ITO)], label=label)
        plotted.extend(values[keep])
    ax.set_xlabel(time_label(ds))
    ax.set_ylabel("relative movement (dimensionless)")
    ax.set_title("weight and kernel movement")
    scale_axis(ax, "x", t)
    scale_axis(ax, "y", plotted)
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
        targets = np.geomspace(positive[0], positive[-1], count)[1:-1] if positive[0] < positive[-1] else np.zeros(0)
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
    extent = float(np.abs(finite).max()) * 1.05 if finite.size else 1.0  # every particle on the panel
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
        ax.set_xlabel(f"{labels[0]} ({units(ds, 'weights')})")
        if k == 0:
            ax.set_ylabel(f"{labels[1]} ({units(ds, 'weights')})")
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
    fig.suptitle(run_title(ds))
    return fig
