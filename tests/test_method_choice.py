"""``solver.method = "auto"``: the rule of gnflow.method_choice, and runs that use what it chooses."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from gnflow.config import config_hash, config_to_dict, load_config
from gnflow.method_choice import ETD3_FROM_HORIZON_PER_N, ETD3_FROM_STIFFNESS, auto_method
from gnflow.simulation import simulate

SMALL = ["data.n_train=20", "model.width=30", "data.n_test=10", "solver.n_save=5"]


def test_rule_follows_the_horizon_and_the_stiffness() -> None:
    n = 100
    long = ETD3_FROM_HORIZON_PER_N * n
    assert auto_method("gradient", long, n, 0.0)[0] == "kernel_etd3"
    assert auto_method("gradient", 0.99 * long, n, 0.0)[0] == "dopri5"
    t = 10.0 * n  # short horizon: stiffness decides
    stiff = ETD3_FROM_STIFFNESS * n / t
    assert auto_method("gradient", t, n, stiff)[0] == "kernel_etd3"
    assert auto_method("gradient", t, n, 0.99 * stiff)[0] == "dopri5"
    assert auto_method("gauss_newton", 1e12, n, 1e6)[0] == "dopri5"
    assert auto_method("ggn", 1e12, n, 1e6)[0] == "euler"
    _, why = auto_method("gradient", long, n, 0.0)
    assert why.startswith("gradient flow, t_end = 2.5e+03 N") and f">= {ETD3_FROM_HORIZON_PER_N:g} N" in why


@pytest.mark.parametrize(("t_end", "expected"), [(100.0, "dopri5"), (1e6, "kernel_etd3")])
def test_auto_run_is_the_run_of_the_method_it_chooses(t_end, expected) -> None:
    overrides = [*SMALL, f"solver.t_end={t_end}"]
    auto = simulate(load_config("examples/gd.toml", [*overrides, "solver.method='auto'"]), progress=False)
    explicit = simulate(load_config("examples/gd.toml", [*overrides, f"solver.method='{expected}'"]), progress=False)
    assert auto.attrs["gnflow_solver"].startswith(f"{expected} (rtol=")
    assert "chosen by solver.method = auto: gradient flow" in auto.attrs["gnflow_solver"]
    np.testing.assert_array_equal(auto["weights"].values, explicit["weights"].values)
    assert auto.attrs["gnflow_nfe"] == explicit.attrs["gnflow_nfe"]


def test_auto_stays_in_the_config_and_its_hash() -> None:
    config = load_config("examples/gd.toml", [*SMALL, "solver.method='auto'"])
    assert config_to_dict(config)["solver"]["method"] == "auto"
    assert config_hash(config) != config_hash(load_config("examples/gd.toml", [*SMALL, "solver.method='dopri5'"]))


def test_auto_on_gauss_newton_and_ggn() -> None:
    gn = simulate(load_config(None, [*SMALL, "solver.method='auto'"]), progress=False)
    assert gn.attrs["gnflow_solver"].startswith("dopri5 (") and "not stiff" in gn.attrs["gnflow_solver"]
    ggn = simulate(
        load_config("examples/ggn.toml", [*SMALL, "flow.batch_size=10", "solver.method='auto'"]), progress=False
    )
    assert ggn.attrs["gnflow_status"] in ("completed", "converged")


def test_a_kernel_method_where_dopri5_is_faster_is_warned_about(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="gnflow.simulation"):
        simulate(
            load_config("examples/gd.toml", [*SMALL, "solver.t_end=50", "solver.method='kernel_etd3'"]), progress=False
        )
    assert "solver.method = kernel_etd3 will likely be slower than dopri5 here" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="gnflow.simulation"):
        simulate(
            load_config("examples/gd.toml", [*SMALL, "solver.t_end=1e6", "solver.method='kernel_etd3'"]), progress=False
        )
    assert "slower than dopri5" not in caplog.text
