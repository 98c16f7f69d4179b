"""kernel_euler: Euler iterations taken in blocks that are exact for the linearized model.

Oracles: the explicit geometric sum for the block factor; plain Euler iterations (solver.method =
"euler", torchdiffeq) of the same flow and step, exact to rounding for random features, within
the tolerance otherwise; the uninterrupted run for a resumed one.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from gnflow.checkpoint import checkpoint_path
from gnflow.config import config_from_dict
from gnflow.exponential import exponential_factor, power_factor
from gnflow.simulation import run, simulate


def _config(method, *, kind="gradient", train="all", lam=2.0, iterations=400, rtol=1e-6, stop=0.0, **extra):
    flow = {"kind": kind}
    if kind == "gauss_newton":
        flow.update(damping="eigmin", epsilon=1e-7)
    values = {
        "seed": 4,
        "device": "cpu",
        "data": {"input_dim": 3, "teacher_width": 2, "n_train": 20, "n_test": 30},
        "model": {"width": 40, "train": train, "output_init": "normal" if train == "output" else "zero"},
        "flow": flow,
        "solver": {
            "method": method,
            "step_size": lam,
            "t_end": lam * iterations,
            "n_save": 30,
            "save_decades": 2.5,
            "rtol": rtol,
            "atol": rtol * 1e-3,
            "stop_loss_ratio": stop,
        },
        "output": {"path": "unused.nc", **extra},
    }
    return config_from_dict(values)


def test_power_factor_is_the_geometric_sum():
    n, lam = 7, 0.9
    eigenvalues = torch.tensor([0.0, 1e-300, 1e-9, 0.3, 4.0, 7.0, 9.0, 14.0, 20.0], dtype=torch.float64)
    multiplier = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, 1.1, 0.95, 1.0, 1.0], dtype=torch.float64)
    x = (lam * eigenvalues * multiplier / n).numpy()  # spans 0, tiny, (0, 1), 1, (1, 2) and > 2
    for k in (1, 2, 3, 17, 60):
        psi = power_factor(eigenvalues, multiplier, lam, k, n).numpy()
        expected = (lam / n) * multiplier.numpy() * np.array([sum((1.0 - xi) ** j for j in range(k)) for xi in x])
        np.testing.assert_allclose(psi, expected, rtol=1e-12, atol=0.0)


def test_power_factor_becomes_the_exponential_factor_for_small_steps():
    eigenvalues = torch.tensor([0.0, 0.01, 0.5, 3.0], dtype=torch.float64)
    multiplier = torch.ones(4, dtype=torch.float64)
    h, n = 5.0, 4
    continuous = exponential_factor(eigenvalues, multiplier, h, n).numpy()
    k = 100_000
    discrete = power_factor(eigenvalues, multiplier, h / k, k, n).numpy()
    np.testing.assert_allclose(discrete, continuous, rtol=1e-4)


def test_power_factor_refuses_no_iterations():
    with pytest.raises(ValueError, match="iterations must be >= 1"):
        power_factor(torch.ones(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64), 1.0, 0, 2)


@pytest.mark.parametrize("kind", ["gradient", "gauss_newton"])
def test_random_features_blocks_are_the_euler_iterations(kind):
    # with a frozen J (only v trains) the block is exact whatever its length: a loose tolerance
    # lets the blocks grow to hundreds of iterations and the states still match the iterations
    lam = 2.0 if kind == "gradient" else 0.5
    euler = simulate(_config("euler", kind=kind, train="output", lam=lam), progress=False)
    blocks = simulate(_config("kernel_euler", kind=kind, train="output", lam=lam, rtol=0.5), progress=False)
    assert blocks.attrs["gnflow_status"] == euler.attrs["gnflow_status"] == "completed"
    np.testing.assert_array_equal(blocks["t"].values, euler["t"].values)
    assert int(blocks["nfe"].values[-1]) < int(euler["nfe"].values[-1]) / 10
    scale = np.abs(euler["weights"].values).max()
    np.testing.assert_allclose(blocks["weights"].values, euler["weights"].values, rtol=0, atol=1e-10 * scale)
    np.testing.assert_allclose(blocks["train_loss"].values, euler["train_loss"].values, rtol=1e-8)


@pytest.mark.parametrize(("kind", "lam"), [("gradient", 2.0), ("gauss_newton", 0.5)])
def test_feature_learning_blocks_agree_with_the_iterations_within_the_tolerance(kind, lam):
    euler = simulate(_config("euler", kind=kind, lam=lam), progress=False)
    loss = euler["train_loss"].values
    assert loss[-1] < 0.5 * loss[0]  # the hidden layer moves: J is not frozen
    for rtol, bound in ((1e-4, 1e-2), (1e-7, 1e-5)):
        blocks = simulate(_config("kernel_euler", kind=kind, lam=lam, rtol=rtol), progress=False)
        np.testing.assert_array_equal(blocks["t"].values, euler["t"].values)
        # train loss relative to itself down to 1e-6 L0 (below, the iterations' own rounding); test loss
        train = np.abs(blocks["train_loss"].values - loss) / np.maximum(loss, 1e-6 * loss[0])
        test = np.abs(blocks["test_loss"].values - euler["test_loss"].values) / euler["test_loss"].values
        assert max(train.max(), test.max()) < bound, (rtol, train.max(), test.max())


def test_early_stop_lands_on_the_iteration_of_the_plain_iterations():
    euler = simulate(_config("euler", kind="gauss_newton", lam=0.5, stop=1e-6, iterations=4000), progress=False)
    blocks = simulate(
        _config("kernel_euler", kind="gauss_newton", lam=0.5, stop=1e-6, iterations=4000, rtol=1e-6), progress=False
    )
    assert euler.attrs["gnflow_status"] == blocks.attrs["gnflow_status"] == "converged"
    assert euler["t"].values[-1] < 0.5 * 4000  # it did stop early
    assert abs(blocks["t"].values[-1] - euler["t"].values[-1]) <= 0.5 + 1e-9  # within one iteration


def test_beyond_the_stability_limit_the_run_diverges_like_the_iterations():
    # lam lambda_max / N far above 2 for GD: the iterations blow up; so must the blocks
    lam = 2000.0
    euler = simulate(_config("euler", lam=lam, iterations=300), progress=False)
    blocks = simulate(_config("kernel_euler", lam=lam, iterations=300), progress=False)
    assert euler.attrs["gnflow_status"].startswith("failed")
    assert blocks.attrs["gnflow_status"].startswith("failed")
    assert "finite" in blocks.attrs["gnflow_status"]


def test_kernel_euler_run_resumes_exactly(tmp_path, monkeypatch):
    import gnflow.kernel_euler as kernel_euler

    class Killed(BaseException):
        pass

    def config_at(path, every_steps):
        config = _config("kernel_euler", lam=2.0, rtol=1e-5, stop=1e-4, checkpoint_every_steps=every_steps)
        return replace(config, output=replace(config.output, path=str(path)))

    reference, _ = run(config_at(tmp_path / "reference.nc", 0), progress=False)
    total = int(reference["nfe"].values[-1])
    assert total > 10
    config = config_at(tmp_path / "run.nc", 2)
    original = kernel_euler.freeze_kernel
    calls = {"n": 0}

    def dying_freeze(flow, weights):
        calls["n"] += 1
        if calls["n"] == (2 * total) // 3:
            raise Killed
        return original(flow, weights)

    with monkeypatch.context() as patch:
        patch.setattr(kernel_euler, "freeze_kernel", dying_freeze)
        with pytest.raises(Killed):
            run(config, progress=False)
    assert checkpoint_path(config.output.path).is_file()
    resumed, _ = run(config, progress=False, resume=True)
    for name in ("t", "nfe", "weights", "n_steps", "train_loss"):
        np.testing.assert_array_equal(resumed[name].values, reference[name].values)
    assert resumed.attrs["gnflow_status"] == reference.attrs["gnflow_status"]


def test_the_file_names_the_step_and_the_tolerance():
    ds = simulate(_config("kernel_euler", iterations=20), progress=False)
    assert ds.attrs["gnflow_solver"] == "kernel_euler (step_size=2, rtol=1e-06, atol=1e-09)"
