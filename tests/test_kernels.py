"""The infinite-width kernels against independent oracles, and the kernel predictor against finite M.

Oracles: Monte Carlo over 10^6 hidden units drawn with NumPy and activations written with SciPy
(not gnflow's), the closed forms of relu (arc-cosine) and erf (Williams), one-dimensional
adaptive quadrature (scipy.integrate.quad) on the diagonal, gnflow's own Gram matrix at large
width, numpy's dense solve, and the first-order (delta-method) law of the random-features refit.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate, special

from gnflow.kernels import (
    KERNEL_ACTIVATIONS,
    LARGE_SCALE_LIMITS,
    QuadratureRule,
    derivative_kernel,
    kernel_regression,
    large_scale_limit_kernel,
    neural_tangent_kernel,
    random_features_kernel,
)
from gnflow.model import ACTIVATIONS, ParticleModel
from gnflow.observables import refit_output_layer


def _sigma(name: str, z: np.ndarray) -> np.ndarray:
    if name == "silu":
        return z * special.expit(z)
    if name == "tanh":
        return np.tanh(z)
    if name == "gelu":
        return z * special.ndtr(z)
    if name == "relu":
        return np.maximum(z, 0.0)
    assert name == "erf"
    return special.erf(z)


def _sigma_prime(name: str, z: np.ndarray) -> np.ndarray:
    if name == "silu":
        s = special.expit(z)
        return s * (1.0 + z * (1.0 - s))
    if name == "tanh":
        return 1.0 - np.tanh(z) ** 2
    if name == "gelu":
        return special.ndtr(z) + z * np.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
    if name == "relu":
        return (z > 0).astype(float)
    assert name == "erf"
    return 2.0 / math.sqrt(math.pi) * np.exp(-z * z)


def _points(n: int, d: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d))


def test_every_model_activation_has_a_kernel() -> None:
    assert set(ACTIVATIONS) <= set(KERNEL_ACTIVATIONS)


MC_UNITS = 1_000_000


@pytest.mark.parametrize("init_scale", [1.0, 4.0])
@pytest.mark.parametrize("activation", ["silu", "tanh", "gelu", "relu", "erf"])
def test_quadrature_agrees_with_monte_carlo_over_a_million_units(activation: str, init_scale: float) -> None:
    x = _points(5, 10, seed=1)
    rng = np.random.default_rng([2, KERNEL_ACTIVATIONS.index(activation)])  # one draw of units per activation
    u = rng.standard_normal((MC_UNITS, 10)) * init_scale
    b = rng.standard_normal(MC_UNITS) * init_scale
    z = x @ u.T + b  # (point, unit)
    rows, cols = np.triu_indices(x.shape[0])
    for derivative, kernel, function in (
        (False, random_features_kernel, _sigma),
        (True, derivative_kernel, _sigma_prime),
    ):
        s = function(activation, z)
        products = s[rows] * s[cols]  # (pair, unit)
        mean = products.mean(1)
        standard_error = products.std(1, ddof=1) / math.sqrt(MC_UNITS)
        quadrature = kernel(x, activation=activation, init_scale=init_scale, closed_form=False).numpy()[rows, cols]
        z_scores = (quadrature - mean) / standard_error
        assert np.all(np.abs(z_scores) < 4.0), (derivative, z_scores)


@pytest.mark.parametrize("init_scale", [0.1, 1.0, 10.0])
@pytest.mark.parametrize("activation", ["relu", "erf"])
def test_quadrature_agrees_with_the_closed_forms(activation: str, init_scale: float) -> None:
    x = _points(12, 10, seed=3)
    x2 = _points(7, 10, seed=4)
    for kernel in (random_features_kernel, derivative_kernel):
        closed = kernel(x, x2, activation=activation, init_scale=init_scale)
        quadrature = kernel(x, x2, activation=activation, init_scale=init_scale, closed_form=False)
        # relative to sqrt(k(x, x) k(x', x')), the scale of the entry
        diagonal = (
            kernel(x, activation=activation, init_scale=init_scale).diag(),
            kernel(x2, activation=activation, init_scale=init_scale).diag(),
        )
        scale = torch.sqrt(diagonal[0][:, None] * diagonal[1][None, :])
        assert float(((quadrature - closed).abs() / scale).max()) < 1e-4


def test_arc_cosine_kernel_of_relu_at_known_angles() -> None:
    # x = e_1, x' = -e_1 at tau0 = 1: Sigma = [[2, 0], [0, 2]], independent pre-activations
    x = np.array([[1.0, 0.0]])
    x2 = np.array([[-1.0, 0.0]])
    k = float(random_features_kernel(x, x2, activation="relu")[0, 0])
    assert k == pytest.approx((math.sqrt(2.0 / (2.0 * math.pi))) ** 2, rel=1e-12)  # (E relu(z))^2, z ~ N(0, 2)
    assert float(random_features_kernel(x, activation="relu")[0, 0]) == pytest.approx(1.0, rel=1e-12)  # E z^2 / 2
    assert float(derivative_kernel(x, x2, activation="relu")[0, 0]) == pytest.approx(0.25, rel=1e-12)


@pytest.mark.parametrize("init_scale", [1.0, 10.0, 100.0])
@pytest.mark.parametrize("activation", ["silu", "tanh", "gelu"])
def test_diagonal_agrees_with_one_dimensional_adaptive_quadrature(activation: str, init_scale: float) -> None:
    # the diagonal (correlation 1) is the hardest pair; at tau0 = 100 the steep sigma' of tanh
    # (a spike of width 1 / (100 |x|)) needs the finer rule of docs/infinite_width.md
    x = _points(3, 10, seed=5)
    rule, tolerance = (QuadratureRule(angular_nodes=96, radial_nodes=160), 1e-6) if init_scale > 10 else (None, 1e-5)
    values = random_features_kernel(x, activation=activation, init_scale=init_scale, rule=rule).diag().numpy()
    derivatives = derivative_kernel(x, activation=activation, init_scale=init_scale, rule=rule).diag().numpy()
    for i, point in enumerate(x):
        s = init_scale * math.sqrt(point @ point + 1.0)
        density = lambda t: math.exp(-0.5 * t * t) / math.sqrt(2.0 * math.pi)  # noqa: E731
        for got, function in ((values[i], _sigma), (derivatives[i], _sigma_prime)):
            exact, _ = integrate.quad(
                lambda t: float(function(activation, np.array(s * t))) ** 2 * density(t),  # noqa: B023
                -12.0,
                12.0,
                points=[0.0],
                limit=400,
                epsabs=0.0,
                epsrel=1e-11,
            )
            assert got == pytest.approx(exact, rel=tolerance)


@pytest.mark.parametrize("activation", ["silu", "relu"])
def test_kernel_matrices_are_symmetric_and_positive_semidefinite(activation: str) -> None:
    x = _points(40, 10, seed=6)
    rule = QuadratureRule(angular_nodes=24, radial_nodes=48)
    for kernel in (
        random_features_kernel(x, activation=activation, rule=rule),
        derivative_kernel(x, activation=activation, rule=rule),
        neural_tangent_kernel(x, activation=activation, output_init="normal", rule=rule),
    ):
        assert torch.equal(kernel, kernel.T)
        eigenvalues = torch.linalg.eigvalsh(kernel)
        assert float(eigenvalues.min()) > -1e-10 * float(eigenvalues.max())
    # the cross kernel of x with itself is the symmetric kernel
    full = random_features_kernel(x, x, activation=activation, rule=rule)
    torch.testing.assert_close(full, random_features_kernel(x, activation=activation, rule=rule), rtol=1e-13, atol=0)


@pytest.mark.parametrize(
    ("scaling", "output_init", "train"),
    [
        ("ntk", "normal", "all"),
        ("ntk", "sign", "hidden"),
        ("mean_field", "normal", "all"),
        ("mean_field", "zero", "all"),
    ],
)
def test_tangent_kernel_is_the_mean_of_gnflows_gram_matrix(scaling: str, output_init: str, train: str) -> None:
    width = 200_000
    x = _points(4, 3, seed=7)
    model = ParticleModel(input_dim=3, activation="tanh", scaling=scaling, train=train)  # type: ignore[arg-type]
    weights = model.initial_weights(width, init_scale=1.5, output_init=output_init, seed=8)
    gram = model.linearize(weights, torch.as_tensor(x)).gram().numpy()
    # per-particle terms of M c(M)^2 A, for the standard error of each entry
    w = weights.numpy()
    z = x @ w[:, :3].T + w[:, 3]
    s, t = np.tanh(z), (1.0 - np.tanh(z) ** 2) * w[:, 4]
    terms = np.zeros((4, 4, width))
    if train in ("all", "output"):
        terms += s[:, None, :] * s[None, :, :]
    if train in ("all", "hidden"):
        terms += t[:, None, :] * t[None, :, :] * (x @ x.T + 1.0)[:, :, None]
    factor = 1.0 if scaling == "ntk" else 1.0 / width
    standard_error = factor * terms.std(2, ddof=1) / math.sqrt(width)
    kernel = neural_tangent_kernel(
        x, activation="tanh", init_scale=1.5, scaling=scaling, output_init=output_init, train=train, width=width
    ).numpy()
    assert np.all(np.abs(gram - kernel) < 4.0 * standard_error + 1e-14 * np.abs(kernel).max())


def test_mean_field_tangent_kernel_needs_the_width() -> None:
    with pytest.raises(ValueError, match="give width"):
        neural_tangent_kernel(_points(2, 2, seed=0), scaling="mean_field")
    with pytest.raises(ValueError, match="unknown activation 'softplus'; allowed: silu, tanh, gelu, relu, erf"):
        random_features_kernel(_points(2, 2, seed=0), activation="softplus")


def test_kernel_regression_matches_a_dense_solve() -> None:
    x, xt = _points(30, 4, seed=9), _points(50, 4, seed=10)
    y, yt = np.cos(x.sum(1)), np.cos(xt.sum(1))
    gram = random_features_kernel(x, activation="relu").numpy()
    cross = random_features_kernel(xt, x, activation="relu").numpy()
    for ridge in (0.0, 0.3):
        result = kernel_regression(torch.as_tensor(gram), torch.as_tensor(cross), y, y_test=yt, ridge=ridge)
        expected = cross @ np.linalg.solve(gram + ridge * np.eye(30), y)
        np.testing.assert_allclose(result.predictions.numpy(), expected, rtol=1e-8, atol=1e-10)
        assert result.test_loss == pytest.approx(float(((expected - yt) ** 2).sum()) / (2 * 50), rel=1e-8)
    interpolant = kernel_regression(torch.as_tensor(gram), torch.as_tensor(cross), y)
    assert interpolant.train_loss < 1e-16 * float(y @ y) and math.isnan(interpolant.test_loss)


def test_kernel_regression_names_a_gram_matrix_that_is_not_positive_definite() -> None:
    x = _points(3, 2, seed=11)
    gram = random_features_kernel(np.concatenate([x, x[:1]]), activation="relu")  # a repeated point
    gram[3, 3] -= 1e-3  # now indefinite
    cross = gram[:1]
    with pytest.raises(ValueError, match="not positive definite"):
        kernel_regression(gram, cross, np.ones(4))
    result = kernel_regression(gram, cross, np.ones(4), jitter=1e-2)
    assert result.jitter == 1e-2 and result.ridge == 0.0


def test_random_features_refit_approaches_the_kernel_predictor_at_the_first_order_rate() -> None:
    """L_M - L_inf = l + q with l ~ N(0, Var(Q)/M) and E q = D/(2M) (delta method in 1/M).

    With alpha = (K + lam I)^{-1} y and P = K(X*, X)(K + lam I)^{-1}, the refit of M random
    features is, to first order, the kernel predictor plus the mean of M i.i.d. terms
    psi_i(x*) = [sigma_i(x*) - P sigma_i(X)] (sigma_i(X) . alpha) minus their mean. Its test loss then
    differs from the kernel predictor's by the mean of Q_i = <r_inf, psi_i> / n* (fluctuation) plus
    D / (2M), D = mean over x* of Var psi(x*). Var Q and D are estimated from 2 10^5 independent
    features; the tolerance is 4 standard deviations, so it shrinks like M^{-1/2}.
    """
    d, n, n_test, tau0, lam = 5, 20, 100, 1.0, 0.1
    rng = np.random.default_rng(12)
    x, xt = rng.standard_normal((n, d)), rng.standard_normal((n_test, d))
    direction = rng.standard_normal(d) / math.sqrt(d)
    y, yt = np.sin(2 * x @ direction), np.sin(2 * xt @ direction)
    gram = random_features_kernel(x, activation="silu", init_scale=tau0)
    cross = random_features_kernel(xt, x, activation="silu", init_scale=tau0)
    limit = kernel_regression(gram, cross, y, y_test=yt, ridge=lam)
    alpha = limit.coefficients.numpy()
    residual = limit.predictions.numpy() - yt
    projection = cross.numpy() @ np.linalg.inv(gram.numpy() + lam * np.eye(n))
    hidden = rng.standard_normal((200_000, d + 1)) * tau0
    features, test_features = (_sigma("silu", p @ hidden[:, :d].T + hidden[:, d]) for p in (x, xt))
    psi = (test_features - projection @ features) * (alpha @ features)  # (test_sample, feature)
    q_variance = float(((residual @ psi) / n_test).var())
    d_mean = float(psi.var(1).mean())

    model = ParticleModel(input_dim=d, activation="silu", scaling="mean_field", train="output")
    for width in (2_000, 8_000, 32_000):
        weights = model.initial_weights(width, init_scale=tau0, output_init="zero", seed=13)
        # refit ridge is in units of Phi Phi^T = K_M / M (mean field): lam / M is the kernel ridge lam
        refit = refit_output_layer(model, weights, torch.as_tensor(x), torch.as_tensor(y), ridge=lam / width)
        f = model.predict(refit, torch.as_tensor(xt)).numpy()
        loss = float(((f - yt) ** 2).sum()) / (2 * n_test)
        gap = loss - limit.test_loss - d_mean / (2 * width)
        tolerance = 4.0 * math.sqrt(q_variance / width)
        assert abs(gap) < tolerance, (width, gap, tolerance)
    # the tolerance is meaningful: at the largest width it is a small part of the loss
    assert 4.0 * math.sqrt(q_variance / 32_000) < 0.05 * limit.test_loss


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_kernels_on_cuda_equal_the_cpu_kernels() -> None:
    x, xt = _points(20, 6, seed=14), _points(9, 6, seed=15)
    y = np.sin(x.sum(1))
    for activation in ("silu", "relu"):
        cpu = neural_tangent_kernel(x, activation=activation, output_init="normal")
        cuda = neural_tangent_kernel(torch.as_tensor(x, device="cuda"), activation=activation, output_init="normal")
        assert cuda.device.type == "cuda"
        torch.testing.assert_close(cuda.cpu(), cpu, rtol=1e-12, atol=1e-12)
        cross = random_features_kernel(torch.as_tensor(xt, device="cuda"), x, activation=activation)
        gram = random_features_kernel(torch.as_tensor(x, device="cuda"), activation=activation)
        result = kernel_regression(gram, cross, y, ridge=0.1)
        expected = kernel_regression(
            random_features_kernel(x, activation=activation),
            random_features_kernel(xt, x, activation=activation),
            y,
            ridge=0.1,
        )
        torch.testing.assert_close(result.predictions.cpu(), expected.predictions, rtol=1e-10, atol=1e-12)


def test_kernel_activations_are_the_model_activations() -> None:
    from gnflow.kernels import _activation
    from gnflow.model import activation_and_derivative

    z = torch.linspace(-30.0, 30.0, 2001, dtype=torch.float64)
    for name in ACTIVATIONS:
        value, derivative = activation_and_derivative(name, z)
        torch.testing.assert_close(_activation(name, False)(z), value, rtol=1e-15, atol=1e-15)
        torch.testing.assert_close(_activation(name, True)(z), derivative, rtol=1e-15, atol=1e-15)


def test_kernel_regression_refuses_a_gram_matrix_that_is_not_symmetric() -> None:
    gram = random_features_kernel(_points(4, 2, seed=16), activation="relu")
    gram[0, 1] += 1e-3
    with pytest.raises(ValueError, match="gram must be symmetric"):
        kernel_regression(gram, gram[:1], np.ones(4))


@pytest.mark.parametrize("limit", ["relu", "sign"])
def test_large_scale_limit_kernel_agrees_with_monte_carlo_over_a_million_units(limit: str) -> None:
    activation = "silu" if limit == "relu" else "tanh"
    assert LARGE_SCALE_LIMITS[activation][1] == limit
    x = _points(5, 10, seed=21)
    rng = np.random.default_rng(22)
    z = x @ rng.standard_normal((MC_UNITS, 10)).T + rng.standard_normal(MC_UNITS)
    s = np.maximum(z, 0.0) if limit == "relu" else np.sign(z)
    rows, cols = np.triu_indices(x.shape[0])
    products = s[rows] * s[cols]
    standard_error = products.std(1, ddof=1) / math.sqrt(MC_UNITS)
    exact = large_scale_limit_kernel(x, activation=activation).numpy()[rows, cols]
    off_diagonal = rows != cols  # sign(z)^2 = 1 on the diagonal: no spread, compared exactly
    z_scores = (exact - products.mean(1))[off_diagonal] / standard_error[off_diagonal]
    assert np.all(np.abs(z_scores) < 4.0), z_scores
    if limit == "sign":
        np.testing.assert_allclose(exact[~off_diagonal], 1.0, rtol=0, atol=1e-14)


@pytest.mark.parametrize(
    ("activation", "pairs", "order"),
    [
        ("silu", "cross", 2),
        ("gelu", "cross", 2),
        ("tanh", "cross", 2),
        ("erf", "cross", 2),
        ("tanh", "diagonal", 1),
        ("erf", "diagonal", 1),
    ],
)
def test_random_features_kernel_approaches_its_large_scale_limit_at_its_order(
    activation: str, pairs: str, order: int
) -> None:
    # sigma(tau0 z) / tau0^p - limit(z) lives on |z| < 1/tau0: between distinct inputs the kernel
    # error is O(1/tau0^2); on the diagonal E[sigma(tau0 z)^2] of a bounded activation misses
    # E[sign^2] = 1 by the mass of that band, O(1/tau0). A decade in tau0 gains 10^order
    x = _points(8, 10, seed=23)
    x2 = _points(6, 10, seed=24) if pairs == "cross" else None
    power = LARGE_SCALE_LIMITS[activation][0]

    def entries(k: torch.Tensor) -> torch.Tensor:
        return k if pairs == "cross" else k.diag()

    limit = entries(large_scale_limit_kernel(x, x2, activation=activation))
    errors = []
    for tau0 in (10.0, 100.0):
        k = entries(random_features_kernel(x, x2, activation=activation, init_scale=tau0)) / tau0 ** (2 * power)
        errors.append(float((k - limit).abs().max() / limit.abs().max()))
    gain = errors[0] / errors[1]
    assert 10**order / 2 < gain < 10**order * 2, errors


def test_large_scale_limit_of_relu_is_its_kernel_at_every_scale() -> None:
    # relu is positively homogeneous: k_tau0 / tau0^2 does not depend on tau0
    x = _points(6, 4, seed=25)
    for tau0 in (0.1, 3.0):
        torch.testing.assert_close(
            random_features_kernel(x, activation="relu", init_scale=tau0) / tau0**2,
            large_scale_limit_kernel(x, activation="relu"),
            rtol=1e-12,
            atol=0,
        )


def test_large_scale_limit_kernel_names_an_unknown_activation() -> None:
    with pytest.raises(ValueError, match="unknown activation 'softsign'; allowed: silu, gelu, relu, tanh, erf"):
        large_scale_limit_kernel(_points(3, 2, seed=26), activation="softsign")
