"""Training loop for nn.Module regression models: GGN against SGD with momentum, histories."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import xarray as xr

from gnflow.config import ConfigError, DataConfig
from gnflow.data import RegressionData, make_data
from gnflow.dataset import read_dataset, write_dataset
from gnflow.ggn import GGN
from gnflow.solve import Budget
from gnflow.status import RunResult, RunStatus
from gnflow.training import history_dataset, mean_half_squared_error, train_module


def _mlp(d: int, hidden: int = 32, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(d, hidden),
        torch.nn.Tanh(),
        torch.nn.Linear(hidden, hidden),
        torch.nn.Tanh(),
        torch.nn.Linear(hidden, 1),
    ).double()


def _toy_data(n: int = 40, n_test: int = 10, d: int = 3) -> RegressionData:
    rng = np.random.default_rng(0)
    x, xt = rng.normal(size=(n, d)), rng.normal(size=(n_test, d))
    return RegressionData(x_train=x, y_train=np.sin(x.sum(1)), x_test=xt, y_test=np.sin(xt.sum(1)), name="toy")


@pytest.fixture(scope="module")
def concrete() -> RegressionData:
    return make_data(DataConfig(kind="concrete"), activation="tanh", seed=0)


@pytest.mark.slow
def test_minibatch_ggn_beats_tuned_sgd_with_momentum_on_concrete(concrete):
    """Cai et al.'s claim at small scale: same network, same batches, same number of epochs."""
    net0 = _mlp(concrete.input_dim)
    schedule = {"epochs": 3, "batch_size": 128, "batch_order": "shuffled", "seed": 1}
    net = copy.deepcopy(net0)
    ggn = train_module(net, GGN(net.parameters(), lam=1.0, alpha=1.0), concrete, **schedule)
    sgd_final = {}
    for lr in (0.03, 0.1, 0.3):
        net = copy.deepcopy(net0)
        history = train_module(net, torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9), concrete, **schedule)
        sgd_final[lr] = history.train_loss[-1]
    best_sgd = min(v for v in sgd_final.values() if np.isfinite(v))
    assert ggn.status == "completed"
    assert ggn.train_loss[0] == pytest.approx(
        mean_half_squared_error(net0, *map(torch.as_tensor, (concrete.x_train, concrete.y_train)))
    )
    assert ggn.train_loss[-1] < best_sgd, (ggn.train_loss, sgd_final)


def test_history_dataset_is_cf_clean_and_round_trips(tmp_path):
    data = _toy_data()
    net = _mlp(3, hidden=8)
    history = train_module(
        net, GGN(net.parameters(), lam=1.0, alpha=0.5), data, epochs=3, batch_size=16, evaluate_iterations=True
    )
    ds = history_dataset(history, optimizer="GGN", model=net, data=data, batch_size=16, batch_order="shuffled", seed=0)
    assert ds.sizes == {"iteration": 9, "epoch": 4}
    np.testing.assert_array_equal(ds["iteration_epoch"].values, [1, 1, 1, 2, 2, 2, 3, 3, 3])
    assert np.all(np.diff(ds["elapsed_s"].values) >= 0) and ds["wall_time_s"].values[0] == 0
    # the per-iteration loss at the end of each epoch is the per-epoch loss
    np.testing.assert_allclose(ds["iteration_train_loss"].values[2::3], ds["train_loss"].values[1:], rtol=1e-14)
    np.testing.assert_allclose(
        ds["train_loss"].values[-1],
        mean_half_squared_error(net, torch.as_tensor(data.x_train), torch.as_tensor(data.y_train)),
        rtol=1e-14,
    )
    path = write_dataset(ds, tmp_path / "history.nc")
    xr.testing.assert_identical(read_dataset(path), ds)
    for name in ds.variables:
        assert ds[name].attrs.get("long_name") and "units" in ds[name].attrs, name

    from compliance_checker.runner import CheckSuite, ComplianceChecker

    CheckSuite.load_all_available_checkers()
    ok, errors = ComplianceChecker.run_checker(
        str(path),
        ["cf:1.8"],
        verbose=0,
        criteria="strict",
        output_filename=str(tmp_path / "report.txt"),
        output_format="text",
    )
    assert not errors and ok, (tmp_path / "report.txt").read_text()


def test_diverging_optimizer_is_recorded_not_raised():
    data = _toy_data()
    net = _mlp(3, hidden=8)
    history = train_module(net, torch.optim.SGD(net.parameters(), lr=1e200), data, epochs=3, batch_size=8)
    assert history.status.startswith("failed: non-finite batch loss")
    assert history.result.status is RunStatus.FAILED and RunResult.parse(history.status) == history.result
    ds = history_dataset(history, optimizer="SGD", model=net, data=data, batch_size=8, batch_order="shuffled", seed=0)
    assert ds.sizes == {"iteration": 15, "epoch": 4}
    assert np.isnan(ds["train_loss"].values[-1]) and ds.attrs["gnflow_status"] == history.status


def test_a_step_budget_stops_training_as_a_failure_with_the_steps_taken():
    data = _toy_data()
    net0 = _mlp(3, hidden=8)
    schedule = {"epochs": 3, "batch_size": 8, "seed": 2}
    full_net, cut_net = copy.deepcopy(net0), copy.deepcopy(net0)
    full = train_module(full_net, torch.optim.SGD(full_net.parameters(), lr=0.05), data, **schedule)
    budget = Budget(max_steps=7, key_prefix="")
    cut = train_module(cut_net, torch.optim.SGD(cut_net.parameters(), lr=0.05), data, budget=budget, **schedule)
    assert full.status == "completed" and full.result == RunResult.completed()
    assert cut.status == "failed: more than max_steps = 7 steps"
    assert cut.batch_loss == full.batch_loss[:7]  # the same steps, up to the budget
    assert cut.train_loss == full.train_loss[:2]  # one epoch of 5 steps completed
    ds = history_dataset(cut, optimizer="SGD", model=cut_net, data=data, batch_size=8, batch_order="shuffled", seed=2)
    assert ds.attrs["gnflow_status"] == cut.status and np.isnan(ds["batch_loss"].values[7:]).all()


def test_training_errors():
    data = _toy_data()
    net = _mlp(3, hidden=8)
    with pytest.raises(ConfigError, match=r"batch_size: must lie in 1..N = 1..40 .*got 41"):
        train_module(net, torch.optim.SGD(net.parameters(), lr=0.1), data, epochs=1, batch_size=41)
    with pytest.raises(ValueError, match="epochs must be >= 1, got 0"):
        train_module(net, torch.optim.SGD(net.parameters(), lr=0.1), data, epochs=0, batch_size=4)
    bn = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 1)).double()
    with pytest.raises(ValueError, match="BatchNorm1d layer '1' is in training mode"):
        train_module(bn, GGN(bn.parameters()), data, epochs=1, batch_size=4)
    frozen = _mlp(3, hidden=8)
    optimizer = torch.optim.SGD(frozen.parameters(), lr=0.1)
    for p in frozen.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="the model has no trainable parameters"):
        train_module(frozen, optimizer, data, epochs=1, batch_size=4)
