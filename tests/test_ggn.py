"""GGN = Euler steps of the Gauss--Newton flow: the run pipeline, mini-batches, nn.Module optimizer.

The law itself (an Euler step of size b/lam with eps = alpha/lam is a GGN(lam, alpha) step; with
eps = 0 the minimum-norm least-squares step) is run in ``test_exact_laws.py``. The oracles here
are those of ``tests/problems.py``: the GGN formula with the autograd Jacobian of the particle
model, and with the autograd Jacobian of a ``torch.nn.Module`` (``torch.func.functional_call``).
"""

from __future__ import annotations

import copy
import dataclasses
import itertools

import numpy as np
import pytest
import torch
from problems import explicit_jacobian, ggn_formula_step, module_ggn_step, relative_error, small_problem

from gnflow.config import ConfigError, FlowConfig, SolverConfig, config_from_dict
from gnflow.damping import ConstantDamping, EigminDamping, GramSolveError
from gnflow.data import teacher_student
from gnflow.experiment import build_experiment
from gnflow.flows import GaussNewtonFlow
from gnflow.ggn import GGN, RegressionBatch, ggn_schedule, minibatches
from gnflow.model import ParticleModel
from gnflow.simulation import simulate
from gnflow.solve import integrate

# --- helpers --------------------------------------------------------------------------------


def _particle_problem(n: int = 12, width: int = 30, d: int = 3, train: str = "all", scaling: str = "ntk"):
    data = teacher_student(input_dim=d, teacher_width=3, n_train=n, n_test=0, activation="tanh", seed=7)
    model = ParticleModel(input_dim=d, activation="tanh", scaling=scaling, train=train)
    w0 = model.initial_weights(width, init_scale=1.0, output_init="sign", seed=11)
    return model, torch.as_tensor(data.x_train), torch.as_tensor(data.y_train), w0


def _ggn_config(n_train: int, **flow) -> dict:
    return {
        "seed": 5,
        "data": {"kind": "teacher", "input_dim": 3, "teacher_width": 3, "n_train": n_train, "n_test": 0},
        "model": {"width": 25, "activation": "tanh", "scaling": "ntk", "output_init": "sign", "train": "all"},
        "flow": {"kind": "ggn", "save_every": "iteration", **flow},
        "solver": {"stop_loss_ratio": 0.0},
    }


# --- full batch: GGN == Euler step of the GN flow ---------------------------------------------------


@pytest.mark.parametrize(("lam", "alpha"), [(1.0, 0.1), (2.5, 0.3), (0.7, 0.0)])
def test_full_batch_ggn_equals_euler_step_of_gauss_newton_flow(lam, alpha):
    n, k_steps = 12, 4
    config = config_from_dict(_ggn_config(n, lam=lam, alpha=alpha, batch_size=n, iterations=k_steps))
    ds = simulate(config, progress=False)
    experiment = build_experiment(config)
    x, y, w0 = experiment.flow.x, experiment.flow.y, experiment.weights0

    # K iterations of GGN = K Euler steps of size N/lam of the GN flow with eps = alpha/lam
    h = n / lam
    flow = GaussNewtonFlow(experiment.model, x, y, ConstantDamping(alpha / lam))
    euler = SolverConfig(method="euler", step_size=h, t_end=k_steps * h, stop_loss_ratio=0.0)
    solution = integrate(flow, w0, euler, times=h * np.arange(k_steps + 1), progress=False)
    np.testing.assert_allclose(ds["t"].values, solution.t, rtol=0, atol=1e-12)
    np.testing.assert_allclose(ds["weights"].values, solution.weights.numpy(), rtol=0, atol=1e-12)
    np.testing.assert_array_equal(ds["iteration"].values, np.arange(k_steps + 1))
    np.testing.assert_array_equal(ds["epoch"].values, np.arange(k_steps + 1))
    # (that each Euler step is the GGN formula is the law ggn_euler of tests/problems.py)


# --- mini-batches ---------------------------------------------------------------------------


@pytest.mark.parametrize("order", ["cyclic", "shuffled"])
def test_minibatch_ggn_steps_follow_the_formula_on_each_batch(order):
    n, b, lam, alpha = 10, 4, 1.5, 0.2
    config = config_from_dict(_ggn_config(n, lam=lam, alpha=alpha, batch_size=b, epochs=2, batch_order=order))
    ds = simulate(config, progress=False)
    experiment = build_experiment(config)
    schedule = ggn_schedule(config.flow, n, np.random.SeedSequence(config.seed).spawn(3)[2])
    assert [len(batch) for batch in schedule.batches] == [4, 4, 2, 4, 4, 2]
    for epoch in range(2):
        batches = schedule.batches[3 * epoch : 3 * epoch + 3]
        assert sorted(np.concatenate(batches).tolist()) == list(range(n))  # a partition per epoch
    if order == "cyclic":
        assert [batch.tolist() for batch in schedule.batches[:3]] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]

    x, y, w = experiment.flow.x, experiment.flow.y, experiment.weights0.clone()
    for k, batch in enumerate(schedule.batches):
        index = torch.as_tensor(batch)
        w = ggn_formula_step(experiment.model, w, x[index], y[index], lam, alpha)
        np.testing.assert_allclose(ds["weights"].values[k + 1], w.numpy(), rtol=0, atol=1e-12)
    # flow time is the sum of the step sizes b_k / lam; epochs count passes over the data
    np.testing.assert_allclose(ds["t"].values, np.concatenate([[0], np.cumsum([4, 4, 2, 4, 4, 2])]) / lam)
    np.testing.assert_allclose(ds["epoch"].values, np.concatenate([[0], np.cumsum([4, 4, 2, 4, 4, 2])]) / n)


def test_shuffled_batches_are_seeded_and_change_between_epochs():
    first = minibatches(20, 5, 8, "shuffled", np.random.default_rng(3))
    again = minibatches(20, 5, 8, "shuffled", np.random.default_rng(3))
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first[:4], first[4:], strict=True))


def test_epoch_saving_and_iteration_count():
    config = config_from_dict(_ggn_config(10, batch_size=3, epochs=3, save_every="epoch"))
    ds = simulate(config, progress=False)
    np.testing.assert_array_equal(ds["iteration"].values, [0, 4, 8, 12])
    np.testing.assert_allclose(ds["epoch"].values, [0, 1, 2, 3])
    np.testing.assert_allclose(ds["t"].values, [0, 10, 20, 30])  # lam = 1: t = samples used
    assert int(ds.attrs["gnflow_steps"]) == 12


# --- quadratic convergence of full-batch GGN on the wide theory network -------------------------


@pytest.mark.slow
def test_full_batch_ggn_converges_quadratically_on_wide_theory_network():
    """Cai et al.'s Theorem 1: NTK scaling, output weights fixed at +-1, W ~ N(0, I), only W trained."""
    n = 40
    config = config_from_dict(
        {
            "seed": 0,
            "data": {"kind": "diabetes", "max_train": n},
            "model": {
                "width": 3000,
                "activation": "tanh",
                "scaling": "ntk",
                "output_init": "sign",
                "train": "hidden",
                "init_scale": 1.0,
            },
            "flow": {
                "kind": "ggn",
                "lam": 1.0,
                "alpha": 0.0,
                "batch_size": n,
                "iterations": 6,
                "save_every": "iteration",
            },
            "solver": {"stop_loss_ratio": 0.0},
        }
    )
    ds = simulate(config, progress=False)
    v = ds["weights"].values[:, :, -1]
    assert np.all(np.abs(v) == 1) and np.all(v == v[0])  # output weights stay at +-1
    e = np.sqrt(2 * n * ds["train_loss"].values)  # ||r_k||
    above_floor = [k for k in range(len(e) - 1) if e[k + 1] > 1e-12 and e[k] < 1]
    assert len(above_floor) >= 2, e
    ratios = [np.log(e[k + 1]) / np.log(e[k]) for k in above_floor]
    # e_{k+1} = C e_k^2 gives log e_{k+1} / log e_k = 2 + log C / log e_k -> 2 from above
    assert all(r1 < r0 for r0, r1 in itertools.pairwise(ratios)), ratios
    assert 1.9 < ratios[-1] < 3.0, ratios
    # the estimated order log(e_{k+1}/e_k) / log(e_k/e_{k-1}) is close to 2 (1 for a linear method)
    k = above_floor[-1]
    order = np.log(e[k + 1] / e[k]) / np.log(e[k] / e[k - 1])
    assert 1.7 < order < 2.3, (order, e)
    assert e[-1] < 1e-9 * e[0]


# --- GGN for torch.nn.Module --------------------------------------------------------------------


def _mlp(seed: int = 0, d: int = 4, hidden: int = 7) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(d, hidden),
        torch.nn.Tanh(),
        torch.nn.Linear(hidden, hidden),
        torch.nn.SiLU(),
        torch.nn.Linear(hidden, 1),
    ).double()


def _flat(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


@pytest.mark.parametrize("budget", [1 << 24, 40, 1])
def test_module_ggn_step_equals_formula_with_explicit_jacobian(budget):
    torch.manual_seed(1)
    x, y = torch.randn(9, 4, dtype=torch.float64), torch.randn(9, dtype=torch.float64)
    model = _mlp()
    expected = module_ggn_step(model, x, y, lam=1.7, alpha=0.05)
    optimizer = GGN(model.parameters(), lam=1.7, alpha=0.05, max_jacobian_elements=budget)
    loss = optimizer.step(lambda: RegressionBatch(model, x, y))
    np.testing.assert_allclose(_flat(model).numpy(), expected.numpy(), rtol=0, atol=1e-12)
    r0 = _mlp()(x).detach().reshape(-1) - y
    assert float(loss) == pytest.approx(float(r0 @ r0) / 18, rel=1e-14)


def test_module_ggn_trains_only_the_given_parameters():
    torch.manual_seed(2)
    x, y = torch.randn(6, 4, dtype=torch.float64), torch.randn(6, 1, dtype=torch.float64)
    model = _mlp()
    frozen = model[0].weight.detach().clone()
    model[0].weight.requires_grad_(False)
    reference = copy.deepcopy(model)
    GGN([p for p in model.parameters() if p.requires_grad], lam=1.0, alpha=0.1).step(lambda: (model, x, y))
    assert torch.equal(model[0].weight, frozen)
    # the step is the formula over the trained parameters only
    names = [n for n, p in reference.named_parameters() if p.requires_grad]
    expected = module_ggn_step(reference, x, y, lam=1.0, alpha=0.1, names=names)
    got = torch.cat([p.detach().reshape(-1) for n, p in model.named_parameters() if n in names])
    np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=0, atol=1e-12)


def test_module_ggn_on_particle_network_matches_particle_ggn():
    """The nn.Module path and the particle path take the same GGN step on the same network."""
    model, x, y, w0 = _particle_problem(n=8, width=10, train="all", scaling="mean_field")

    class Particles(torch.nn.Module):
        def __init__(self, w):
            super().__init__()
            self.w = torch.nn.Parameter(w.clone())

        def forward(self, inputs):
            return model.predict(self.w, inputs)

    net = Particles(w0)
    GGN(net.parameters(), lam=2.0, alpha=1e-3).step(lambda: (net, x, y))
    flow = GaussNewtonFlow(model, x, y, ConstantDamping(1e-3 / 2.0))
    euler = SolverConfig(method="euler", step_size=8 / 2.0, t_end=4.0, stop_loss_ratio=0.0)
    w1 = integrate(flow, w0, euler, progress=False).weights[-1]
    np.testing.assert_allclose(net.w.detach().numpy(), w1.numpy(), rtol=0, atol=1e-12)


# --- refusals and bad input ---------------------------------------------------------------------


def test_batchnorm_in_training_mode_is_refused():
    model = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.BatchNorm1d(5), torch.nn.Linear(5, 1)).double()
    x, y = torch.randn(8, 3, dtype=torch.float64), torch.randn(8, dtype=torch.float64)
    optimizer = GGN(model.parameters())
    with pytest.raises(ValueError, match=r"BatchNorm1d layer '1' is in training mode.*f\(w, x\) per sample"):
        optimizer.step(lambda: (model, x, y))
    model.eval()  # with running statistics the output is per sample again
    optimizer.step(lambda: (model, x, y))


def test_batch_dependent_model_is_detected():
    class Centered(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(3, 1).double()

        def forward(self, inputs):
            out = self.lin(inputs)
            return out - out.mean() if out.shape[0] > 1 else out

    model = Centered()
    x, y = torch.randn(6, 3, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    with pytest.raises(ValueError, match="output for one sample changes with the rest of the batch"):
        GGN(model.parameters()).step(lambda: (model, x, y))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lam": 0.0}, r"GGN: lam must be a finite number > 0, got 0.0"),
        ({"lam": -1.0}, r"GGN: lam must be a finite number > 0, got -1.0"),
        ({"alpha": -0.1}, r"GGN: alpha must be a finite number >= 0, got -0.1"),
    ],
)
def test_optimizer_hyper_parameters_are_validated(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GGN(_mlp().parameters(), **kwargs)


def test_model_without_trainable_parameters_is_refused():
    model = _mlp()
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="GGN: the model has no trainable parameters"):
        GGN(model.parameters())
    with pytest.raises(ValueError, match="GGN: the model has no trainable parameters"):
        GGN([])


@pytest.mark.parametrize(
    ("x", "y", "message"),
    [
        (torch.zeros(0, 4), torch.zeros(0), r"GGN: empty batch \(0 samples\)"),
        (torch.full((3, 4), float("nan")), torch.zeros(3), r"GGN: the batch inputs x hold non-finite values"),
        (torch.zeros(3, 4), torch.tensor([0.0, float("inf"), 1.0]), r"GGN: the batch targets y hold non-finite values"),
        (torch.zeros(3, 4), torch.zeros(4), r"GGN: targets must have shape \(3,\) or \(3, 1\)"),
    ],
)
def test_bad_batches_are_refused(x, y, message):
    model = _mlp()
    with pytest.raises(ValueError, match=message):
        GGN(model.parameters()).step(lambda: (model, x.double(), y.double()))


def test_singular_undamped_gram_says_to_use_alpha():
    model = _mlp()
    x = torch.ones(3, 4, dtype=torch.float64)  # identical samples: rank-one Gram matrix
    with pytest.raises(GramSolveError, match=r"use alpha > 0"):
        GGN(model.parameters(), alpha=0.0).step(lambda: (model, x, torch.arange(3.0, dtype=torch.float64)))


@pytest.mark.parametrize(
    ("flow", "message"),
    [
        ({"lam": 0.0}, r"flow.lam: must be a finite number > 0, got 0.0"),
        ({"alpha": -1.0}, r"flow.alpha: must be a finite number >= 0, got -1.0"),
        ({"batch_size": 0}, r"flow.batch_size: must be >= 1, got 0"),
        ({"epochs": 2, "iterations": 3}, r"flow.iterations: give flow.epochs or flow.iterations, not both"),
        ({"batch_order": "random"}, r"flow.batch_order: unknown value 'random'; allowed: cyclic, shuffled"),
    ],
)
def test_ggn_config_errors(flow, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict({"flow": {"kind": "ggn", **flow}})


@pytest.mark.parametrize("batch_size", [13, 1000])
def test_batch_size_larger_than_the_data_is_an_error_at_run_time(batch_size):
    config = config_from_dict(_ggn_config(12, batch_size=batch_size))
    with pytest.raises(ConfigError, match=rf"flow.batch_size: must lie in 1..N = 1..12 .*got {batch_size}"):
        simulate(config, progress=False)


def test_ggn_defaults():
    flow = FlowConfig(kind="ggn")
    assert (flow.lam, flow.alpha, flow.batch_size, flow.batch_order) == (1.0, 0.1, 128, "cyclic")
    schedule = ggn_schedule(dataclasses.replace(flow, batch_size=50), 200, 0)
    assert schedule.n_steps == 10 * 4  # 10 epochs by default


# --- end to end: TOML config -> CLI -> CF dataset ------------------------------------------------


def test_theory_network_ggn_run_from_toml_writes_a_readable_dataset(tmp_path, capsys):
    from gnflow.cli import main
    from gnflow.dataset import read_dataset

    config = tmp_path / "ggn.toml"
    config.write_text(
        """
seed = 2
[data]
kind = "diabetes"
max_train = 40
[model]
width = 200
activation = "tanh"
scaling = "ntk"
output_init = "sign"
train = "hidden"
init_scale = 1.0
[flow]
kind = "ggn"
lam = 1.0
alpha = 0.1
batch_size = 16
epochs = 2
batch_order = "shuffled"
"""
    )
    out = tmp_path / "ggn.nc"
    assert main(["-q", "run", str(config), "-o", str(out)]) == 0
    ds = read_dataset(out)
    np.testing.assert_array_equal(ds["iteration"].values, [0, 3, 6])
    np.testing.assert_allclose(ds["epoch"].values, [0, 1, 2])
    np.testing.assert_allclose(ds["t"].values, [0, 40, 80])
    np.testing.assert_allclose(ds["damping"].values, 0.1)
    for name in ("iteration", "epoch"):
        assert ds[name].attrs["long_name"] and ds[name].attrs["units"] == "1"
    assert ds.attrs["gnflow_flow"].startswith("ggn (lam=1, alpha=0.1, batch_size=16, batch_order=shuffled)")
    assert ds["train_loss"].values[-1] < ds["train_loss"].values[0]
    v = ds["weights"].values[:, :, -1]
    assert np.all(v == v[0]) and set(np.abs(v[0]).tolist()) == {1.0}  # hidden layer only

    from compliance_checker.runner import CheckSuite, ComplianceChecker

    CheckSuite.load_all_available_checkers()
    report = tmp_path / "cf.txt"
    ok, errors = ComplianceChecker.run_checker(
        str(out), ["cf:1.8"], verbose=0, criteria="strict", output_filename=str(report), output_format="text"
    )
    assert ok and not errors, report.read_text()


def test_batch_size_error_from_the_command_line(tmp_path, capsys):
    from gnflow.cli import main

    code = main(
        [
            "run",
            "--set",
            "flow.kind=ggn",
            "--set",
            "flow.batch_size=500",
            "--set",
            "data.n_train=50",
            "--set",
            "model.width=10",
            "-o",
            str(tmp_path / "x.nc"),
        ]
    )
    assert code != 0
    assert "flow.batch_size: must lie in 1..N = 1..50" in capsys.readouterr().err


def test_uniform_fixed_step_schedule_keeps_grid_saving_and_steps():
    model, x, y, w0 = _particle_problem(n=6, width=8)
    flow = GaussNewtonFlow(model, x, y, ConstantDamping(1e-3))
    config = SolverConfig(method="euler", step_size=0.5, t_end=3.0, stop_loss_ratio=0.0)
    solution = integrate(flow, w0, config, times=np.array([0.0, 1.0, 1.8, 3.0]), progress=False)
    np.testing.assert_allclose(solution.t, [0.0, 1.0, 2.0, 3.0])  # saved at the nearest grid points
    assert solution.epoch is None and list(solution.n_accepted) == [0, 2, 4, 6]
    w = w0.clone()
    states = [w0]
    for k in range(6):
        w = w + 0.5 * flow(torch.tensor(0.5 * k), w)
        states.append(w)
    np.testing.assert_allclose(solution.weights.numpy(), torch.stack(states)[[0, 2, 4, 6]].numpy(), rtol=0, atol=1e-14)


def test_restricted_gauss_newton_flow_has_its_own_solver_state():
    # eigmin damping warm-starts from the previous evaluation: a batch flow must not reuse the
    # full flow's N-dimensional eigenvector
    model, w, x, y = small_problem(n_train=20, width=40)
    full = GaussNewtonFlow(model, x, y, EigminDamping(1e-9))
    full(torch.tensor(0.0), w)  # leaves a warm start of length 20
    index = torch.arange(0, 20, 3)
    batch = full.restrict(index)
    assert batch.solver is not full.solver
    field = batch(torch.tensor(0.0), w)
    jac = explicit_jacobian(model, w, x[index]).numpy()
    a = jac @ jac.T
    eps = max(1e-9, np.linalg.eigvalsh(a)[0])
    g = (model.predict(w, x[index]) - y[index]).numpy() / len(index)
    expected = -jac.T @ np.linalg.solve(a + eps * np.eye(len(index)), g)
    assert relative_error(field.reshape(-1), expected) < 1e-8
