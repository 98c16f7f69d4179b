"""The long-horizon study at its smoke scale, through ``gnflow study`` and through its script: it
runs, writes its table, figure and report, and the two methods it compares agree on the trajectory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from gnflow.cli import main
from gnflow.dataset import read_dataset
from gnflow.studies import claims_table, study_module


@pytest.fixture(scope="module")
def study():
    return study_module("long_horizon")


def test_smoke_scale_writes_a_table_and_a_figure(study, tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    assert main(["study", "long_horizon", "--scale", "smoke", "-o", str(tmp_path), "-q"]) == 0
    assert torch.get_num_threads() == threads  # the scale's thread count is undone afterwards
    report = (tmp_path / "report.md").read_text()
    assert "\n## Measurements\n" in report and claims_table(report) == []
    assert "| 10 | dopri5 |" in report and "![" in report
    ds = read_dataset(tmp_path / "long_horizon_smoke.nc")
    assert (tmp_path / "long_horizon_smoke.png").stat().st_size > 0
    assert list(ds["method"].values) == ["kernel_exponential", "dopri5"]
    exp = {"method": "kernel_exponential"}
    assert (ds["t_reached"].sel(exp) == ds.attrs["gnflow_t_end"]).all()
    # step doubling: one linearization at t = 0, two per accepted and one per rejected step
    nfe = 1 + 2 * ds["n_steps"].sel(exp) + ds["n_rejected"].sel(exp)
    np.testing.assert_array_equal(ds["nfe"].sel(exp).values, nfe.values)
    # the trajectories agree where both exist (exponential rtol 1e-3, dopri5 rtol 1e-4)
    assert float(ds["weight_difference"].max()) < 1e-2
    assert np.all(ds["wall_time_s"].values > 0)
    # a run stopped on its CPU-time budget did not reach t_end
    limited = ds["time_limited"].values == 1
    assert np.all(ds["t_reached"].values[limited] < ds.attrs["gnflow_t_end"])


def test_unknown_scale_is_a_one_line_error(study, capsys) -> None:
    assert study.main(["--scale", "huge"]) == 2
    assert "unknown scale 'huge'; allowed: smoke, small, paper" in capsys.readouterr().err


def test_runs_split_by_tau0_and_method_combine_into_one_table(study, tmp_path: Path, capsys) -> None:
    threads = torch.get_num_threads()
    runs = [
        ["--tau0", "1", "--method", "kernel_exponential"],
        ["--tau0", "1", "--method", "dopri5"],
        ["--tau0", "10", "--dopri5-budget-s", "0.5"],
    ]
    try:
        for extra in runs:
            assert study.main(["--scale", "smoke", "-o", str(tmp_path), *extra]) == 0
    finally:
        torch.set_num_threads(threads)
    names = ["tau0-1_kernel_exponential", "tau0-1_dopri5", "tau0-10"]
    parts = [tmp_path / f"long_horizon_smoke_{name}.nc" for name in names]
    assert study.main(["-o", str(tmp_path), "--combine", *map(str, parts)]) == 0
    ds = read_dataset(tmp_path / "long_horizon_smoke.nc")
    assert list(ds["tau0"].values) == [1.0, 10.0]
    assert list(ds["method"].values) == ["kernel_exponential", "dopri5"]
    assert ds["nfe"].dtype.kind == "i" and "saved_weights" not in ds
    exp, dop = ({"tau0": 1.0, "method": m} for m in ("kernel_exponential", "dopri5"))
    one_exp, one_dop = read_dataset(parts[0]), read_dataset(parts[1])
    assert int(ds["nfe"].sel(exp)) == int(one_exp["nfe"].squeeze())
    np.testing.assert_array_equal(ds["train_loss_ratio"].sel(dop).values, one_dop["train_loss_ratio"].squeeze().values)
    # the comparison of the split methods, from the weights their tables keep
    w_exp = one_exp["saved_weights"].squeeze(("tau0", "method")).values
    w_dop = one_dop["saved_weights"].squeeze(("tau0", "method")).values
    t = ds["t"].values
    reached = t <= float(one_dop["t_reached"].squeeze())
    gap = np.linalg.norm((w_exp[reached] - w_dop[reached]).reshape(reached.sum(), -1), axis=1)
    change = np.linalg.norm((w_dop[reached] - w_dop[0]).reshape(reached.sum(), -1), axis=1)
    expected = np.max(gap[t[reached] > 0] / change[t[reached] > 0])
    assert float(ds["weight_difference"].sel(tau0=1.0)) == pytest.approx(expected, rel=1e-12)
    assert 0 < expected < 1e-2
    # tau0 = 10 came from one table with both methods: its comparison is carried over
    both = read_dataset(parts[2])
    assert float(ds["weight_difference"].sel(tau0=10.0)) == float(both["weight_difference"].squeeze())
    assert int(ds["time_limited"].sel({"tau0": 10.0, "method": "dopri5"})) == 1
    capsys.readouterr()
    assert study.main(["--scale", "smoke", "--tau0", "3"]) == 2
    assert "--tau0 3: not a tau0 of scale 'smoke'; allowed: 1, 10" in capsys.readouterr().err
    assert study.main(["-o", str(tmp_path / "again"), "--combine", str(parts[0]), str(parts[0])]) == 2
    assert "repeats tau0=1, method=kernel_exponential" in capsys.readouterr().err


def test_dopri5_budget_stops_on_cpu_time_or_a_stop_file(study, tmp_path: Path) -> None:
    from dataclasses import replace

    from gnflow.experiment import build_experiment
    from gnflow.studies import load_study_settings

    settings = load_study_settings("long_horizon", "smoke")
    run, bench = study.benchmark_of(settings)

    def experiment():
        return build_experiment(replace(run, model=replace(run.model, init_scale=bench.init_scales[0])))

    spent = study._integrate(experiment(), "dopri5", replace(bench, dopri5_budget_s=1e-9))
    assert spent.status.startswith("failed: CPU-time budget") and study._time_limited(spent.status)
    assert spent.n_accepted[-1] <= 1 and spent.t[-1] < run.solver.t_end  # stopped at the first check
    assert spent.extra["cpu_time_s"] > 1e-9
    stop = tmp_path / "run.STOP"
    stop.touch()
    stopped = study._integrate(experiment(), "dopri5", bench, stop_file=stop)
    assert stopped.status == "failed: stopped on request (run.STOP file)" and study._time_limited(stopped.status)
    assert stopped.n_accepted[-1] == 1
    # kernel_exponential has no budget: it runs to t_end whatever the stop file says
    full = study._integrate(experiment(), "kernel_exponential", bench, stop_file=stop)
    assert full.status in ("completed", "converged") and not study._time_limited(full.status)
