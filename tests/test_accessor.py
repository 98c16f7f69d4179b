"""Files that work with xarray idioms: the indexed component coordinate on new and old files, the
``ds.gnflow`` accessor, short long_names with a description, and ``gnflow.open_runs``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import gnflow
from gnflow.config import config_from_dict, config_from_json
from gnflow.dataset import VARIABLES, read_dataset, write_dataset
from gnflow.model import component_names
from gnflow.status import RunResult

OLD = Path(__file__).parent / "data" / "v0_1_0"

TINY = {
    "device": "cpu",
    "data": {"input_dim": 3, "n_train": 20, "n_test": 30},
    "model": {"width": 30},
    "solver": {"t_end": 200.0, "n_save": 11, "stop_loss_ratio": 0.0},
}


@pytest.fixture(scope="module")
def run_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("accessor") / "run.nc"
    gnflow.run(config_from_dict(TINY), path=path, progress=False)
    return path


@pytest.mark.parametrize("reader", [read_dataset, xr.load_dataset])
def test_components_are_selected_by_label_in_new_files(run_file: Path, reader) -> None:
    ds = reader(run_file)
    labels = component_names(3)
    assert list(ds.indexes["component"]) == labels
    v = ds.weights.sel(component="v")
    assert v.dims == ("t", "particle")
    np.testing.assert_array_equal(v.values, ds.weights.values[:, :, labels.index("v")])
    np.testing.assert_array_equal(ds.weights.sel(component=["u0", "b"]).values, ds.weights.values[:, :, [0, 3]])


@pytest.mark.parametrize("name", ["run.nc", "ggn.nc", "sweep/runs/d0e795effb7cb2ec.nc"])
def test_components_are_selected_by_label_in_files_of_0_1_0(name: str) -> None:
    raw = xr.load_dataset(OLD / name)
    assert "component" not in raw.coords  # the old files hold only the component_name labels
    ds = read_dataset(OLD / name)
    labels = [str(s) for s in raw["component_name"].values]
    assert list(ds.indexes["component"]) == labels
    np.testing.assert_array_equal(ds.weights.sel(component="v").values, raw.weights.values[:, :, labels.index("v")])
    assert ds.gnflow.output_weights.dims == ("t", "particle")


def test_the_file_with_its_coordinate_reads_back_identical(run_file: Path, tmp_path: Path) -> None:
    ds = read_dataset(run_file)
    back = read_dataset(write_dataset(ds, tmp_path / "again.nc"))
    xr.testing.assert_identical(back, ds)
    # an old file read, rewritten and read again keeps the labels as they were
    old = read_dataset(OLD / "run.nc")
    xr.testing.assert_identical(read_dataset(write_dataset(old, tmp_path / "old.nc")), old)


def test_accessor_values_are_the_datasets(run_file: Path) -> None:
    ds = read_dataset(run_file)
    final = ds.gnflow.final()
    series = [str(n) for n, v in ds.data_vars.items() if v.dims == ("t",)]
    assert sorted(final.data_vars) == sorted(series) and {"train_loss", "test_loss", "nfe"} <= set(series)
    for name in series:
        assert final[name].ndim == 0 and final[name].item() == ds[name].values[-1], name
    assert float(final["t"]) == float(ds.t.values[-1])
    d = 3
    np.testing.assert_array_equal(ds.gnflow.output_weights.values, ds.weights.values[:, :, d + 1])
    np.testing.assert_array_equal(ds.gnflow.hidden_weights.values, ds.weights.values[:, :, : d + 1])
    assert list(ds.gnflow.hidden_weights.component.values) == component_names(d)[: d + 1]
    assert ds.gnflow.config == config_from_json(ds.attrs["gnflow_config"]) == config_from_dict(TINY)
    assert isinstance(ds.gnflow.status, RunResult) and ds.gnflow.status == RunResult.parse(ds.attrs["gnflow_status"])
    figure = ds.gnflow.plot()
    assert len(figure.axes) >= 3


def test_accessor_refuses_what_is_not_a_run() -> None:
    empty = xr.Dataset()
    with pytest.raises(ValueError, match="no saved times"):
        empty.gnflow.final()
    with pytest.raises(ValueError, match="no weights variable"):
        _ = empty.gnflow.output_weights
    with pytest.raises(ValueError, match="gnflow_config"):
        _ = empty.gnflow.config


def test_long_names_are_short_labels_and_the_formula_is_a_description(run_file: Path) -> None:
    ds = read_dataset(run_file)
    for name in ("train_loss", "test_loss", "gram_eigmin", "gram_eigmax", "damping", "weights"):
        attrs = ds[name].attrs
        assert attrs["long_name"] == VARIABLES[name].long_name and len(attrs["long_name"]) <= 25, name
        assert "=" not in attrs["long_name"] and attrs["description"] == VARIABLES[name].description, name
    assert "||f(X) - y||^2" in ds.train_loss.attrs["description"]
    assert ds.train_loss.attrs["long_name"] in ds.train_loss.plot.line(x="t")[0].axes.get_ylabel()


def _run(tmp_path: Path, name: str, **changes: dict) -> Path:
    values = {key: dict(value) if isinstance(value, dict) else value for key, value in TINY.items()}
    for section, table in changes.items():
        values[section] = {**values.get(section, {}), **table}
    path = tmp_path / f"{name}.nc"
    gnflow.run(config_from_dict(values), path=path, progress=False)
    return path


def test_open_runs_aligns_runs_of_different_times(tmp_path: Path) -> None:
    paths = [
        _run(tmp_path, "gn", solver={"stop_loss_ratio": 1e-3}),  # converges early, off the save grid
        _run(tmp_path, "gd", flow={"kind": "gradient"}, solver={"n_save": 7, "save_spacing": "linear"}),
        _run(tmp_path, "long", solver={"t_end": 400.0, "n_save": 9}),
    ]
    runs = gnflow.open_runs(paths)
    files = [read_dataset(p) for p in paths]
    union = np.unique(np.concatenate([f.t.values for f in files]))
    np.testing.assert_array_equal(runs.t.values, union)
    assert list(runs.run.values) == ["gn", "gd", "long"]
    assert list(runs.flow_kind.values) == ["gauss_newton", "gradient", "gauss_newton"]
    assert runs.flow_kind.attrs["gnflow_key"] == "flow.kind"
    for k, ds in enumerate(files):
        on_union = runs.train_loss.isel(run=k)
        # exact at the run's own saved times
        np.testing.assert_array_equal(on_union.sel(t=ds.t.values).values, ds.train_loss.values)
        # linear in t between them, NaN only outside the run's first and last saved times
        inside = (union >= ds.t.values[0]) & (union <= ds.t.values[-1])
        np.testing.assert_allclose(
            on_union.values[inside], np.interp(union[inside], ds.t.values, ds.train_loss.values), rtol=1e-14
        )
        assert np.isnan(on_union.values[~inside]).all() and not np.isnan(on_union.values[inside]).any()
        # counters keep the count reached by then
        before = np.searchsorted(ds.t.values, union[inside], side="right") - 1
        np.testing.assert_array_equal(runs.nfe.isel(run=k).values[inside], ds.nfe.values[before])
        assert runs.status.values[k] == ds.attrs["gnflow_status"] and runs.t_final.values[k] == ds.t.values[-1]
    assert runs.status.values[0] == "converged" and runs.t_final.values[0] < 200.0
    # an outer join leaves far more values empty than the union axis does
    joined = xr.concat([f.train_loss for f in files], "run", join="outer")
    assert int(runs.train_loss.isnull().sum()) < int(joined.isnull().sum()) / 2
    assert runs.train_loss.attrs["long_name"] == "train loss"


def test_open_runs_reads_weights_on_request_and_refuses_bad_input(tmp_path: Path) -> None:
    paths = [_run(tmp_path, "a"), _run(tmp_path, "b", model={"init_scale": 0.5})]
    runs = gnflow.open_runs(paths, variables=["weights"])
    assert runs.weights.dims == ("run", "t", "particle", "component")
    assert list(runs.model_init_scale.values) == [1.0, 0.5]
    np.testing.assert_array_equal(
        runs.weights.sel(run="b", component="v").values, read_dataset(paths[1]).weights.sel(component="v").values
    )
    with pytest.raises(ValueError, match="no files given"):
        gnflow.open_runs([])
    with pytest.raises(ValueError, match="no variable 'nope' over t"):
        gnflow.open_runs(paths, variables=["nope"])
    with pytest.raises(ValueError, match="not a gnflow trajectory file"):
        gnflow.open_runs([OLD / "sweep" / "sweep.nc"])
