"""Shared reference problems and independent oracles for the tests.

The oracles here do not use gnflow's structured derivatives: Jacobians come from torch.func
autograd on ``ParticleModel.predict``, solves from NumPy, matrix exponentials from SciPy.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.func import jacrev

from gnflow.data import teacher_student
from gnflow.model import ParticleModel


def explicit_jacobian(model: ParticleModel, weights: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The N x P Jacobian of f(X) with respect to the trained components, by autograd.

    Columns follow the (particle, component) layout restricted to the trained components.
    """
    jac = jacrev(lambda w: model.predict(w, x))(weights)  # (sample, particle, component)
    mask = model.trainable_mask(dtype=torch.bool, device=weights.device)
    return jac[:, :, mask].reshape(x.shape[0], -1)


def scatter_trained(model: ParticleModel, flat: torch.Tensor, width: int) -> torch.Tensor:
    """A vector over trained parameters laid out as (particle, component), zeros elsewhere."""
    mask = model.trainable_mask(dtype=torch.bool)
    out = torch.zeros(width, model.n_components, dtype=flat.dtype)
    out[:, mask] = flat.reshape(width, -1)
    return out


def small_problem(
    *,
    n_train: int = 20,
    width: int = 60,
    input_dim: int = 3,
    activation: str = "silu",
    scaling: str = "mean_field",
    train: str = "all",
    init_scale: float = 1.0,
    output_init: str = "normal",
    seed: int = 0,
) -> tuple[ParticleModel, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(model, weights0, x, y) of a small float64 teacher-student problem."""
    data = teacher_student(
        input_dim=input_dim, teacher_width=3, n_train=n_train, n_test=0, activation=activation, seed=seed
    )
    model = ParticleModel(input_dim=input_dim, activation=activation, scaling=scaling, train=train)
    weights = model.initial_weights(width, init_scale=init_scale, output_init=output_init, seed=seed + 1)
    return model, weights, torch.as_tensor(data.x_train), torch.as_tensor(data.y_train)


def relative_error(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> float:
    """||a - b|| / ||b|| (or ||a - b|| when b = 0)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    scale = np.linalg.norm(b)
    return float(np.linalg.norm(a - b) / (scale if scale > 0 else 1.0))
