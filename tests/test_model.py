"""Structured derivatives of the particle model against autograd Jacobians (torch.func)."""

import itertools

import numpy as np
import pytest
import torch
from problems import explicit_jacobian, relative_error, scatter_trained, small_problem

from gnflow.model import ParticleModel, activation_and_derivative, component_names

CASES = list(itertools.product(["silu", "tanh", "gelu", "relu"], ["mean_field", "ntk"], ["all", "hidden", "output"]))
TOL = 1e-10


@pytest.mark.parametrize(("activation", "scaling", "train"), CASES)
def test_structured_derivatives_match_autograd(activation, scaling, train):
    model, w, x, _ = small_problem(n_train=15, width=25, activation=activation, scaling=scaling, train=train)
    jac = explicit_jacobian(model, w, x)  # (N, P)
    lin = model.linearize(w, x)
    gen = torch.Generator().manual_seed(3)
    c = torch.randn(x.shape[0], generator=gen, dtype=torch.float64)
    delta = torch.randn(w.shape, generator=gen, dtype=torch.float64)
    delta_trained = delta[:, model.trainable_mask(dtype=torch.bool)].reshape(-1)

    assert relative_error(lin.predict(), model.predict(w, x)) < TOL
    assert relative_error(lin.vjp(c), scatter_trained(model, jac.T @ c, w.shape[0])) < TOL
    assert relative_error(lin.jvp(delta), jac @ delta_trained) < TOL
    gram = lin.gram()
    assert gram.dtype == torch.float64
    oracle = jac @ jac.T
    assert relative_error(gram, oracle) < TOL
    eig, eig_oracle = torch.linalg.eigvalsh(gram), np.linalg.eigvalsh(oracle.numpy())
    assert abs(eig[-1].item() - eig_oracle[-1]) <= TOL * eig_oracle[-1]
    # lambda_min relative to the spectrum's scale (the smallest eigenvalue may be ~0)
    assert abs(eig[0].item() - eig_oracle[0]) <= TOL * eig_oracle[-1]


def test_predict_matches_definition():
    model, w, x, _ = small_problem(width=7, scaling="ntk", activation="tanh")
    d = model.input_dim
    expected = sum(w[i, d + 1] * torch.tanh(x @ w[i, :d] + w[i, d]) for i in range(w.shape[0])) / np.sqrt(w.shape[0])
    assert relative_error(model.predict(w, x), expected) < 1e-14


def test_predict_in_chunks_equals_one_block():
    model, w, x, _ = small_problem(n_train=50, width=30)
    big_x = x.repeat(2000, 1)  # 100k rows -> several row blocks (2^16 / 30 rows each)
    out = model.predict(w, big_x)
    assert relative_error(out[-50:], out[:50]) < 1e-15
    assert relative_error(out[:50], model.predict(w, x)) < 1e-15


@pytest.mark.parametrize("name", ["silu", "tanh", "gelu", "relu"])
def test_activation_derivative_by_autograd(name):
    z = torch.linspace(-4, 4, 101, dtype=torch.float64, requires_grad=True)
    value, derivative = activation_and_derivative(name, z)
    (grad,) = torch.autograd.grad(value.sum(), z)
    reference = {
        "silu": torch.nn.functional.silu,
        "tanh": torch.tanh,
        "gelu": torch.nn.functional.gelu,
        "relu": torch.relu,
    }[name](z)
    assert torch.allclose(value, reference, rtol=1e-14, atol=1e-15)
    assert torch.allclose(derivative, grad, rtol=1e-13, atol=1e-14)


def test_initial_weights_are_seeded_and_nested():
    model = ParticleModel(input_dim=4)
    a = model.initial_weights(100, init_scale=0.5, output_init="zero", seed=5)
    b = model.initial_weights(100, init_scale=0.5, output_init="zero", seed=5)
    wide = model.initial_weights(300, init_scale=0.5, output_init="zero", seed=5)
    other = model.initial_weights(100, init_scale=0.5, output_init="zero", seed=6)
    assert torch.equal(a, b)
    assert torch.equal(wide[:100, :-1], a[:, :-1])
    assert not torch.equal(a, other)
    assert torch.all(a[:, -1] == 0)
    hidden = wide[:, :-1]
    assert abs(hidden.std().item() - 0.5) < 0.05


def test_output_inits():
    model = ParticleModel(input_dim=2)
    signs = model.initial_weights(1000, init_scale=1.0, output_init="sign", seed=1)[:, -1]
    assert set(signs.tolist()) == {-1.0, 1.0}
    assert abs(signs.mean().item()) < 0.1
    normal = model.initial_weights(1000, init_scale=1.0, output_init="normal", seed=1)[:, -1]
    assert abs(normal.std().item() - 1.0) < 0.1
    with pytest.raises(ValueError, match="output_init"):
        model.initial_weights(10, init_scale=1.0, output_init="uniform", seed=1)


def test_component_names_and_masks():
    assert component_names(2) == ["u0", "u1", "b", "v"]
    assert ParticleModel(input_dim=2, train="hidden").trainable_mask().tolist() == [1, 1, 1, 0]
    assert ParticleModel(input_dim=2, train="output").trainable_mask().tolist() == [0, 0, 0, 1]
    assert ParticleModel(input_dim=2, train="all").n_parameters(10) == 40


def test_bad_model_arguments():
    with pytest.raises(ValueError, match="unknown activation 'sigmoid'; allowed"):
        ParticleModel(input_dim=2, activation="sigmoid")
    model = ParticleModel(input_dim=3)
    with pytest.raises(ValueError, match=r"weights must have shape \(particle, 5\)"):
        model.predict(torch.zeros(4, 4, dtype=torch.float64), torch.zeros(2, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"x must have shape \(sample, 3\)"):
        model.predict(torch.zeros(4, 5, dtype=torch.float64), torch.zeros(2, 2, dtype=torch.float64))


@pytest.mark.parametrize("activation", ["silu", "tanh", "gelu", "relu"])
def test_activations_in_cache_blocks_match_autograd(activation: str) -> None:
    """S and T of a linearization large enough to be computed in several row blocks (and a partial
    last one) equal sigma(z) and autograd's sigma'(z) v."""
    n, m, d = 300, 700, 4  # 2^16 // 700 = 93 rows per block: three full blocks and one of 21
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(n, d, generator=gen, dtype=torch.float64)
    w = torch.randn(m, d + 2, generator=gen, dtype=torch.float64)
    lin = ParticleModel(input_dim=d, activation=activation).linearize(w, x)
    z = (x @ w[:, :d].T + w[:, d]).requires_grad_(True)
    functions = {
        "silu": torch.nn.functional.silu,
        "tanh": torch.tanh,
        "gelu": torch.nn.functional.gelu,
        "relu": torch.relu,
    }
    value = functions[activation](z)
    (derivative,) = torch.autograd.grad(value.sum(), z)
    torch.testing.assert_close(lin.s, value.detach(), rtol=1e-14, atol=1e-15)
    torch.testing.assert_close(lin.t, derivative * w[:, d + 1], rtol=1e-13, atol=1e-14)
