"""The work-precision script of the long-horizon study at its smoke scale: its reference agrees with
an independent dopri8 solve, the errors it reports fall with the tolerance, and a stopped
invocation resumes from its store."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

SCRIPT = Path(__file__).resolve().parents[1] / "studies" / "long_horizon" / "work_precision.py"


@pytest.fixture(scope="module")
def wp():
    spec = importlib.util.spec_from_file_location("work_precision", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def table(wp, tmp_path_factory):
    out = tmp_path_factory.mktemp("wp")
    args = ["--scale", "smoke", "--t-end", "500", "-o", str(out), "--methods", "kernel_etd3", "dopri8", "rk4"]
    assert wp.main(args) == 0
    with xr.open_dataset(out / "work_precision_smoke_gradient.nc") as ds:
        return out, ds.load()


def test_reference_agrees_with_an_independent_tight_solve(table) -> None:
    _, ds = table
    dopri8 = ds.where(ds["method"] == "dopri8", drop=True)
    assert dopri8.sizes["run"] == 1
    assert float(dopri8["weight_error"].values[0]) < 1e-7  # dopri8 at rtol 1e-8 against kernel_etd3 at 1e-9


def test_errors_fall_with_the_tolerance(table) -> None:
    _, ds = table
    etd3 = ds.where((ds["method"] == "kernel_etd3") & (ds["setting"] > 2e-9), drop=True)
    order = np.argsort(-etd3["setting"].values)
    errors = etd3["weight_error"].values[order]
    assert np.all(np.diff(np.log10(errors)) < -0.5), errors  # each decade of rtol gains half a decade or more
    rk4 = ds.where(ds["method"] == "rk4", drop=True)
    assert rk4.sizes["run"] == 3 and (rk4["nfe"] > 0).any()


def test_a_second_invocation_reuses_the_store(wp, table) -> None:
    out, _ = table
    store = out / "work_precision_smoke_gradient.json"
    before = json.loads(store.read_text())
    assert (
        wp.main(["--scale", "smoke", "--t-end", "500", "-o", str(out), "--methods", "kernel_etd3", "dopri8", "rk4"])
        == 0
    )
    assert json.loads(store.read_text()) == before
    assert (out / "work_precision_smoke_gradient.png").stat().st_size > 0
    assert "| kernel_etd3 |" in (out / "work_precision_smoke_gradient.md").read_text()
