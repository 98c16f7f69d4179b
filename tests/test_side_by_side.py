"""The side-by-side study compares the same iterations: the authors' GN step is an Euler step of gnflow's field."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from gnflow.config import config_from_dict
from gnflow.damping import EigminDamping, solve_damped
from gnflow.experiment import build_experiment

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def side_by_side():
    spec = importlib.util.spec_from_file_location("side_by_side", ROOT / "studies/performance/side_by_side.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["side_by_side"] = module
    spec.loader.exec_module(module)
    return module


def _experiment(output_init: str = "normal", width: int = 60):
    config = config_from_dict(
        {
            "seed": 3,
            "data": {"n_train": 25, "n_test": 10, "input_dim": 3},
            "model": {"width": width, "output_init": output_init, "init_scale": 1.0},
        }
    )
    return build_experiment(config)


@pytest.mark.parametrize("output_init", ["normal", "zero"])
def test_authors_step_is_an_euler_step_of_the_gn_field(side_by_side, output_init: str) -> None:
    """In float64 the authors' iteration (vmap Jacobian, SVD) is w - 10 J^T (A + eps I)^{-1} g from gnflow's algebra."""
    ex = _experiment(output_init)
    flow, w = ex.flow, ex.weights0
    lin = flow.model.linearize(w, flow.x)
    gram = lin.gram()
    g = (lin.predict() - flow.y).double() / flow.n_samples
    field = -lin.vjp(solve_damped(gram, g, EigminDamping(side_by_side.EPS0).epsilon(gram)))
    step = side_by_side.authors_step(w, flow.x, flow.y, dtype=torch.float64)
    scale = float((side_by_side.LR * field).abs().max())  # the damped solve may be ill-conditioned at v = 0
    torch.testing.assert_close(step, w + side_by_side.LR * field, rtol=1e-10, atol=1e-9 * scale)
    # and the float32 iteration of their runs is that step to single precision
    step32 = side_by_side.authors_step(w, flow.x, flow.y)
    torch.testing.assert_close(step32, step, rtol=1e-4, atol=1e-5)


def test_iteration_count_is_the_euler_run_to_the_stop(side_by_side) -> None:
    """The counted iterations are the authors' loop run to 1e-8 of the initial loss, iteration by iteration."""
    ex = _experiment("zero", width=40)
    config = config_from_dict(
        {
            "seed": 3,
            "data": {"n_train": 25, "n_test": 10, "input_dim": 3},
            "model": {"width": 40, "output_init": "zero", "init_scale": 1.0},
            "solver": {"stop_loss_ratio": 1e-4},
        }
    )
    count = side_by_side.count_iterations(config)
    flow, w = ex.flow, ex.weights0
    loss0, iterations = flow.train_loss(w), 0
    while flow.train_loss(w) > 1e-4 * loss0 and iterations < 10_000:
        w = side_by_side.authors_step(w, flow.x, flow.y, dtype=torch.float64)
        iterations += 1
    assert count["status"] == "converged"
    assert abs(count["iterations"] - iterations) <= 1, (count, iterations)


def test_main_writes_the_report(side_by_side, tmp_path: Path) -> None:
    config = tmp_path / "tiny.toml"
    config.write_text(
        "seed = 2\n[data]\nn_train = 20\nn_test = 30\ninput_dim = 3\n[model]\nwidth = 30\n"
        "[solver]\nt_end = 1e4\nn_save = 11\nstop_loss_ratio = 1e-4\n"
    )
    out = tmp_path / "side.json"
    assert side_by_side.main(["--config", str(config), "--rounds", "1", "--steps", "1", "-o", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["gnflow"]["runs"][0]["status"] == "converged"
    assert result["gnflow"]["runs"][0]["saved_states"] >= 2
    assert result["authors"]["iterations"] > 0
    assert 0 < result["gnflow"]["runs"][0]["integration_wall_s"] < result["gnflow"]["runs"][0]["wall_s"]
    text = out.with_suffix(".md").read_text()
    assert f"{result['ratio']:.0f}x" in text
