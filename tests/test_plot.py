"""Figures: the quantities they show, and PNG files that are really drawn.

Runs here are tiny (12 particles, 8 training points, Euler steps) so the whole file stays fast;
the figures are checked as images (size, non-blank, colour spread), not by eye.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import xarray as xr

from gnflow.cli import main
from gnflow.config import config_from_dict
from gnflow.dataset import read_dataset, write_dataset
from gnflow.plot import (
    differing_config_keys,
    flatten_config,
    load_run_curves,
    plot_run,
    plot_runs,
    save_figure,
    teacher_plane,
    weight_movement,
)
from gnflow.simulation import run


def _tiny_config(**sections: dict) -> object:
    values = {
        "seed": 3,
        "device": "cpu",
        "data": {"n_train": 8, "n_test": 16, "input_dim": 3, "teacher_width": 2},
        "model": {"width": 12, "init_scale": 0.5},
        "solver": {"method": "euler", "step_size": 0.25, "t_end": 40.0, "n_save": 12},
    }
    for name, update in sections.items():
        values[name] = {**values.get(name, {}), **update}
    return config_from_dict(values)


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four run files (flow x tau0) and one NetCDF file that is not a run."""
    folder = tmp_path_factory.mktemp("sweep")
    for kind in ("gauss_newton", "gradient"):
        for tau0 in (0.1, 2.0):
            config = _tiny_config(flow={"kind": kind}, model={"init_scale": tau0})
            run(config, path=folder / "runs" / f"{kind}-{tau0:g}.nc", progress=False)
    other = xr.Dataset({"x": ("n", np.arange(3.0), {"long_name": "x", "units": "1"})})
    write_dataset(other, folder / "summary.nc")
    return folder


@pytest.fixture(scope="module")
def run_file(sweep_dir: Path) -> Path:
    return sweep_dir / "runs" / "gauss_newton-2.nc"


def _check_png(path: Path, min_width: int = 400, min_height: int = 300, *, colour: bool = True) -> np.ndarray:
    """The image of a PNG file, after checking that it is large and not blank."""
    assert path.is_file() and path.stat().st_size > 10_000
    image = matplotlib.image.imread(path)
    height, width = image.shape[:2]
    assert width >= min_width and height >= min_height
    rgb = image[..., :3]
    assert float(rgb.std()) > 0.05  # not a flat image
    assert float((rgb.min(axis=-1) < 0.9).mean()) > 0.02  # ink on at least 2% of the pixels
    # colour, not only black lines: some pixels have clearly different channels
    assert not colour or float((rgb.max(axis=-1) - rgb.min(axis=-1) > 0.3).mean()) > 0.001
    return image


# --- quantities -------------------------------------------------------------------------------


def test_weight_movement_of_a_scaled_trajectory() -> None:
    rng = np.random.default_rng(0)
    w0 = rng.standard_normal((5, 4))
    factors = np.array([1.0, 1.5, 3.0])
    weights = factors[:, None, None] * w0  # W(t) - W(0) = (factor - 1) W(0)
    np.testing.assert_allclose(weight_movement(weights), factors - 1.0, rtol=1e-14)
    # components restrict the norm; a part that starts at 0 is divided by the norm of all of W(0),
    # as the weight_movement observable does (one definition)
    weights[:, :, -1] = np.array([0.0, 2.0, 4.0])[:, None]
    whole0 = np.linalg.norm(weights[0])
    np.testing.assert_allclose(weight_movement(weights, slice(3, 4)), np.array([0.0, 2.0, 4.0]) * np.sqrt(5) / whole0)
    np.testing.assert_allclose(weight_movement(weights, slice(0, 3)), factors - 1.0, rtol=1e-14)
    assert np.isnan(weight_movement(np.zeros((2, 3, 4)))).all()


def test_figure_movement_equals_the_weight_movement_observable(tmp_path) -> None:
    from gnflow.config import config_from_dict
    from gnflow.observables import observe
    from gnflow.plot._run import _movement_series
    from gnflow.simulation import simulate

    config = config_from_dict(
        {"data": {"n_train": 10, "n_test": 10}, "model": {"width": 12}, "solver": {"t_end": 20.0, "n_save": 5}}
    )
    ds = simulate(config, progress=False)  # v(0) = 0: the output part is divided by ||W(0)||
    computed = dict(_movement_series(ds))
    observed = observe(ds, ["weight_movement"])
    labels = {"hidden_weight_movement": "hidden layer", "output_weight_movement": "output layer"}
    for name, prefix in labels.items():
        (label,) = [k for k in computed if k.startswith(prefix)]
        np.testing.assert_allclose(computed[label], observed[name].values, rtol=1e-12)
    assert "‖W(0)‖" in next(k for k in computed if k.startswith("output"))
    stored = dict(_movement_series(observed))
    assert any("||W_0||" in k and "output" in k for k in stored)


def test_teacher_plane_is_orthonormal_and_spans_the_first_two_directions() -> None:
    rng = np.random.default_rng(1)
    directions = rng.standard_normal((5, 6))
    basis = teacher_plane(directions)
    np.testing.assert_allclose(basis @ basis.T, np.eye(2), atol=1e-12)
    for vector in directions[:2]:
        projected = basis.T @ (basis @ vector)
        np.testing.assert_allclose(projected, vector, atol=1e-12)
    parallel = teacher_plane(np.array([[1.0, 0.0, 0.0], [2.0, 0.0, 0.0], [0.0, 3.0, 0.0]]))
    np.testing.assert_allclose(parallel, [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], atol=1e-12)


def test_differing_config_keys_ignore_output_paths() -> None:
    a = {"seed": 1, "model": {"init_scale": 0.1, "width": 10}, "output": {"path": "a.nc"}}
    b = {"seed": 1, "model": {"init_scale": 1.0, "width": 10}, "output": {"path": "b.nc"}}
    c = {"seed": 2, "model": {"init_scale": 1.0, "width": 10}, "output": {"path": "c.nc"}, "observe": {"names": ["x"]}}
    assert differing_config_keys([a, b]) == ["model.init_scale"]
    assert differing_config_keys([a, b, c]) == ["seed", "model.init_scale", "observe.names"]
    assert flatten_config(c)["observe.names"] == ("x",)


def test_run_curves_skip_files_that_are_not_runs(sweep_dir: Path) -> None:
    files = sorted(sweep_dir.rglob("*.nc"))
    runs = load_run_curves(files, progress=False)
    assert len(files) == 5 and len(runs) == 4
    for curves in runs:
        ds = read_dataset(sweep_dir / "runs" / f"{curves.name}.nc")
        np.testing.assert_array_equal(curves.train_loss, ds["train_loss"].values)
        np.testing.assert_array_equal(curves.test_loss, ds["test_loss"].values)


# --- figures ----------------------------------------------------------------------------------


def test_run_summary_png(run_file: Path, tmp_path: Path) -> None:
    fig = plot_run(read_dataset(run_file))
    assert len([ax for ax in fig.axes if ax.get_visible()]) == 6
    loss_axis = fig.axes[0]
    # saved times 0.25 .. 40 and losses spanning decades: both axes logarithmic
    assert loss_axis.get_xscale() == "log" and loss_axis.get_yscale() == "log"
    assert loss_axis.get_xlabel() and loss_axis.get_ylabel()
    _check_png(save_figure(fig, tmp_path / "run.png", dpi=60))


def test_run_summary_without_teacher_or_weights(run_file: Path, tmp_path: Path) -> None:
    ds = read_dataset(run_file)
    no_teacher = ds.drop_vars("teacher_weights")
    assert "principal direction" in plot_run(no_teacher).axes[3].get_xlabel()
    curves_only = ds.drop_vars(["weights", "teacher_weights"])
    fig = plot_run(curves_only)
    assert len(fig.axes) == 3
    _check_png(save_figure(fig, tmp_path / "curves.png", dpi=60), min_height=200)


def test_stored_movement_observables_are_plotted(run_file: Path) -> None:
    ds = read_dataset(run_file)
    ds["kernel_movement"] = ("t", np.linspace(0.0, 0.3, ds.sizes["t"]), {"long_name": "kernel movement", "units": "1"})
    labels = [line.get_label() for line in plot_run(ds).axes[2].get_lines()]
    assert "kernel movement" in labels and any(label.startswith("hidden layer") for label in labels)


def test_comparison_png_has_final_loss_against_tau0(sweep_dir: Path, tmp_path: Path) -> None:
    runs = load_run_curves(sorted(sweep_dir.rglob("*.nc")), progress=False)
    fig = plot_runs(runs)
    assert len(fig.axes) == 3
    final = fig.axes[2]
    assert "τ0" in final.get_title()
    xs = {float(x) for line in final.get_lines() for x in line.get_xdata()}
    assert xs == {0.1, 2.0}
    labels = [line.get_label() for line in fig.axes[0].get_lines()]
    assert "flow = gradient, τ0 = 0.1" in labels and len(labels) == 4
    # one meaning of colour: each final-loss point has the colour of its run's curves
    from matplotlib.colors import to_rgba

    curve = {line.get_label(): to_rgba(line.get_color()) for line in fig.axes[0].get_lines()}
    points = [tuple(c) for coll in final.collections for c in coll.get_facecolors()]
    points += [tuple(c) for coll in final.collections for c in coll.get_edgecolors()]
    assert points and {p for p in points if p[3] > 0} <= set(curve.values())
    _check_png(save_figure(fig, tmp_path / "compare.png", dpi=60), min_height=250)


def test_save_figure_rejects_unknown_formats(run_file: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"\.png"):
        save_figure(plot_run(read_dataset(run_file)), tmp_path / "fig.jpeg")
    assert not list(tmp_path.iterdir())


# --- command line -----------------------------------------------------------------------------


def test_cli_plot_file_default_name_never_overwrites(
    run_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    local = tmp_path / "run.nc"
    local.write_bytes(run_file.read_bytes())
    assert main(["plot", str(local), "--dpi", "50"]) == 0
    first = tmp_path / "run.png"
    out = capsys.readouterr().out
    assert f"wrote {first}" in out and "summary of run.nc" in out
    _check_png(first)
    content = first.read_bytes()
    assert main(["plot", str(local), "--dpi", "50"]) == 0
    assert first.read_bytes() == content
    _check_png(tmp_path / "run-1.png")
    # an explicit -o that exists is an error without --overwrite
    assert main(["plot", str(local), "-o", str(first), "--dpi", "50"]) == 1
    assert "exists" in capsys.readouterr().err and first.read_bytes() == content
    assert main(["plot", str(local), "-o", str(first), "--overwrite", "--dpi", "40", "-q"]) == 0
    assert capsys.readouterr().out == ""
    assert first.read_bytes() != content


def test_cli_plot_directory(sweep_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "figs" / "compare.png"
    assert main(["plot", str(sweep_dir), "-o", str(out), "--dpi", "50"]) == 0
    printed = capsys.readouterr().out
    assert "4 runs compared" in printed and "model.init_scale" in printed and "flow.kind" in printed
    _check_png(out, min_height=200)


def test_cli_plot_errors_are_one_line(tmp_path: Path, sweep_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plot", str(tmp_path / "missing.nc")]) == 1
    assert main(["plot", str(sweep_dir / "summary.nc")]) == 1
    assert main(["plot", str(tmp_path)]) == 1  # an empty directory
    assert main(["plot", str(sweep_dir / "summary.nc"), "-o", str(tmp_path / "x.gif")]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 4 and all(line.startswith("gnflow: error: ") for line in errors)


def test_a_run_with_only_its_initial_state_still_plots(run_file: Path, tmp_path: Path) -> None:
    # what a run that failed at its first step leaves: one saved time, t = 0
    first_only = read_dataset(run_file).isel(t=[0])
    fig = plot_run(first_only)
    assert [ax.get_visible() for ax in fig.axes[3:]] == [True, False, False]
    # no curve has a point at t > 0 and every output weight is 0 (grey particles): no colour
    _check_png(save_figure(fig, tmp_path / "first.png", dpi=60), colour=False)


def test_the_loss_panel_clips_refit_curves_at_rounding_level_and_keeps_every_particle(tmp_path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from gnflow.config import config_from_dict
    from gnflow.observables import observe
    from gnflow.plot._run import _plot_losses, _plot_particles, loss_floor
    from gnflow.simulation import simulate

    config = config_from_dict(
        {"data": {"n_train": 10, "n_test": 10}, "model": {"width": 400}, "solver": {"t_end": 50.0, "n_save": 6}}
    )
    ds = observe(simulate(config, progress=False), ["refit"])
    assert float(np.nanmin(ds["refit_train_loss"].values)) < 1e-20  # M > N: the refit interpolates
    _, ax = plt.subplots()
    _plot_losses(ax, ds)
    low, _ = ax.get_ylim()
    own = min(float(ds["train_loss"].values.min()), float(ds["test_loss"].values.min()))
    assert low == loss_floor(ds) == 0.01 * own
    weights = ds["weights"].values.copy()
    weights[-1, 0, :-2] *= 20.0  # one far particle at the end: it must stay on the panel too
    _, axes = plt.subplots(1, 3)
    _plot_particles(axes, ds.assign(weights=(ds["weights"].dims, weights)))
    for a in axes:
        for collection in a.collections:
            xy = collection.get_offsets()
            x0, x1 = a.get_xlim()
            y0, y1 = a.get_ylim()
            assert np.all((xy[:, 0] >= x0) & (xy[:, 0] <= x1) & (xy[:, 1] >= y0) & (xy[:, 1] <= y1))
    plt.close("all")
