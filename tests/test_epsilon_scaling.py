"""``flow.epsilon_scaling = "per_particle"``: eps0 / M, the damping that follows A ~ 1/M."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gnflow.config import ConfigError, config_hash, load_config
from gnflow.experiment import build_experiment
from gnflow.simulation import simulate

BASE = ["data.n_train=20", "model.width=50", "data.n_test=10", "solver.n_save=3"]


def test_per_particle_is_eps0_over_m() -> None:
    scaled = simulate(
        load_config(None, [*BASE, "flow.epsilon=1e-3", "flow.epsilon_scaling='per_particle'"]), progress=False
    )
    plain = simulate(load_config(None, [*BASE, "flow.epsilon=2e-5"]), progress=False)
    np.testing.assert_array_equal(scaled["weights"].values, plain["weights"].values)
    assert "epsilon=0.001 per particle (eps0 = 2e-05)" in scaled.attrs["gnflow_flow"]
    assert config_hash(load_config(None, ["flow.epsilon_scaling='per_particle'"])) != config_hash(load_config(None))


def test_relative_damping_refuses_the_scaling() -> None:
    with pytest.raises(ConfigError, match=r"^flow\.epsilon_scaling: 'per_particle' applies to eigmin and constant"):
        load_config(None, ["flow.damping='relative'", "flow.epsilon_scaling='per_particle'"])


def test_absolute_eps0_binds_more_eigenvalues_as_m_grows_and_per_particle_does_not() -> None:
    # A(0) ~ 1/M under mean-field scaling: the eigenvalues below an absolute eps0 grow in number with M,
    # those below eps0 / M settle (M A(0) converges to the random-features kernel matrix)
    below_absolute, below_scaled = [], []
    for width in (250, 1000, 4000):
        config = load_config(
            None, ["data.n_train=60", f"model.width={width}", "model.init_scale=0.3", "data.n_test=10"]
        )
        experiment = build_experiment(config)
        lam = torch.linalg.eigvalsh(experiment.model.linearize(experiment.weights0, experiment.flow.x).gram())
        below_absolute.append(int((lam < 1e-5).sum()))
        below_scaled.append(int((lam < 1e-5 * 250 / width).sum()))
    assert below_absolute[0] < below_absolute[1] < below_absolute[2], below_absolute
    assert max(below_scaled) - min(below_scaled) <= 3, below_scaled
