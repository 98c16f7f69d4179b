"""The damped Gram solve of the Gauss--Newton field against dense oracles.

eps = max(eps0, lambda_min(A)) is compared with ``torch.linalg.eigvalsh`` and the direction
z = (A + eps I)^{-1} g with a dense solve; the field of :class:`GaussNewtonFlow` with the explicit
Jacobian of ``torch.func``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from problems import explicit_jacobian, scatter_trained

from gnflow.damping import (
    ConstantDamping,
    DampedGramSolver,
    EigminDamping,
    GramSolveError,
    RelativeDamping,
    solve_damped,
)
from gnflow.flows import GaussNewtonFlow
from gnflow.model import ParticleModel

EPS_RTOL = 1e-10


def spd_matrix(eigenvalues: np.ndarray, seed: int) -> torch.Tensor:
    """Q diag(eigenvalues) Q^T with a random orthogonal Q (float64)."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((eigenvalues.size, eigenvalues.size)))
    return torch.as_tensor((q * eigenvalues) @ q.T)


def dense_reference(gram: torch.Tensor, g: torch.Tensor, eps0: float) -> tuple[float, torch.Tensor]:
    """eps and z from a full eigendecomposition and numpy's dense solve."""
    eps = max(eps0, float(torch.linalg.eigvalsh(gram)[0]))
    a = gram.numpy() + eps * np.eye(gram.shape[0])
    return eps, torch.as_tensor(np.linalg.solve(a, g.numpy()))


def assert_matches(solver: DampedGramSolver, gram: torch.Tensor, g: torch.Tensor, eps0: float) -> None:
    out = solver(gram, g)
    eps_ref, z_ref = dense_reference(gram, g, eps0)
    assert abs(float(out.epsilon) - eps_ref) <= EPS_RTOL * eps_ref
    cond = float(torch.linalg.eigvalsh(gram)[-1]) / eps_ref
    # both solves are backward stable: they agree to rounding times the condition number
    assert float(torch.linalg.vector_norm(out.direction - z_ref)) <= 1e-14 * cond * float(
        torch.linalg.vector_norm(z_ref)
    )


@pytest.mark.parametrize(
    ("spectrum", "eps0"),
    [
        (np.geomspace(1e-4, 1.0, 120), 1e-7),  # lambda_min > eps0: eps = lambda_min
        (np.geomspace(1e-4, 1.0, 120), 1e-2),  # lambda_min < eps0: eps = eps0
        (np.geomspace(1e-4, 1.0, 120), 1e-4 * (1 + 1e-9)),  # lambda_min just below eps0
        (
            np.concatenate([[3e-3], np.linspace(3.1e-3, 3.5e-3, 40), np.geomspace(4e-3, 1, 60)]),
            0.0,
        ),  # cluster
    ],
)
@pytest.mark.parametrize("explicit_inverse", [False, True], ids=["triangular", "explicit"])
def test_eigmin_solve_matches_dense_oracle(spectrum: np.ndarray, eps0: float, explicit_inverse: bool) -> None:
    gram = spd_matrix(spectrum, seed=1)
    g = torch.as_tensor(np.random.default_rng(2).standard_normal(spectrum.size))
    assert_matches(DampedGramSolver(EigminDamping(eps0), explicit_inverse=explicit_inverse), gram, g, eps0)


def test_eigmin_near_double_smallest_eigenvalue_within_its_gap() -> None:
    """Two eigenvalues 1e-7 apart are not told apart: eps is then correct to their distance."""
    spectrum = np.concatenate([[1e-3, 1e-3 * (1 + 1e-7)], np.geomspace(2e-3, 1.0, 98)])
    gram = spd_matrix(spectrum, seed=1)
    g = torch.as_tensor(np.random.default_rng(2).standard_normal(spectrum.size))
    out = DampedGramSolver(EigminDamping(1e-7))(gram, g)
    eps_ref, z_ref = dense_reference(gram, g, 1e-7)
    assert abs(float(out.epsilon) - eps_ref) <= 1e-7 * eps_ref + EPS_RTOL * eps_ref
    z_used = torch.as_tensor(np.linalg.solve(gram.numpy() + float(out.epsilon) * np.eye(100), g.numpy()))
    torch.testing.assert_close(out.direction, z_used, rtol=1e-9, atol=0)
    torch.testing.assert_close(out.direction, z_ref, rtol=1e-6, atol=0)


def test_eigmin_warm_start_along_a_path_of_matrices() -> None:
    """Each call of one solver on a drifting sequence (its warm start) is exact, and cheap."""
    rng = np.random.default_rng(3)
    base = np.geomspace(1e-5, 1.0, 150)
    q, _ = np.linalg.qr(rng.standard_normal((150, 150)))
    generator = rng.standard_normal((150, 150))
    generator = (generator - generator.T) / np.linalg.norm(generator - generator.T, 2)
    step = np.linalg.qr(np.eye(150) + 1e-3 * generator)[0]  # a rotation by about 1e-3
    solver = DampedGramSolver(EigminDamping(1e-7))
    g = torch.as_tensor(rng.standard_normal(150))
    qk = q
    for k in range(8):
        qk = step @ qk
        spectrum = base * (1 + 0.01 * k)
        gram = torch.as_tensor((qk * spectrum) @ qk.T)
        assert_matches(solver, gram, g, 1e-7)
    first_calls = DampedGramSolver(EigminDamping(1e-7))
    first_calls(gram, g)
    assert solver.stats.eigvalsh_fallbacks == 0
    assert solver.stats.factorizations == solver.stats.calls == 8
    # warm starts need fewer Lanczos steps than a cold start on every call
    assert solver.stats.lanczos_steps < 8 * first_calls.stats.lanczos_steps


def test_eigmin_on_a_network_gram_matrix() -> None:
    model = ParticleModel(input_dim=4)
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(80, 4, generator=gen, dtype=torch.float64)
    w = torch.randn(400, 6, generator=gen, dtype=torch.float64)
    gram = model.linearize(w, x).gram()
    g = torch.randn(80, generator=gen, dtype=torch.float64)
    lam_min = float(torch.linalg.eigvalsh(gram)[0])
    for eps0 in (1e-7, 0.5 * lam_min, 2 * lam_min):
        for explicit_inverse in (False, True):
            assert_matches(DampedGramSolver(EigminDamping(eps0), explicit_inverse=explicit_inverse), gram, g, eps0)


def test_exact_fallbacks_stay_exact() -> None:
    """Forced out of Lanczos and CG, the solver falls back to eigvalsh and Cholesky: same answer."""
    gram = spd_matrix(np.geomspace(1e-3, 1.0, 60), seed=5)
    g = torch.as_tensor(np.random.default_rng(6).standard_normal(60))
    solver = DampedGramSolver(EigminDamping(1e-7), max_lanczos=1, max_cg=0)
    assert_matches(solver, gram, g, 1e-7)
    assert solver.stats.eigvalsh_fallbacks == 1
    assert solver.stats.factorizations == 2


def test_eigmin_epsilon_from_a_given_lambda_min_is_the_floor_or_the_value() -> None:
    gram = spd_matrix(np.geomspace(1e-3, 1.0, 30), seed=11)
    rule = EigminDamping(1e-2)
    assert float(rule.epsilon(gram, lambda_min=0.5)) == 0.5
    assert float(rule.epsilon(gram, lambda_min=1e-9)) == 1e-2
    assert float(rule.epsilon(gram, lambda_min=torch.tensor(0.25, dtype=torch.float64))) == 0.25
    assert float(rule.epsilon(gram)) == 1e-2  # eigvalsh: lambda_min = 1e-3 < eps0
    assert rule.lambda_min_floor == 1e-2


@pytest.mark.parametrize("damping", [ConstantDamping(1e-3), RelativeDamping(1e-2)])
def test_known_damping_is_one_cholesky_solve(damping: ConstantDamping | RelativeDamping) -> None:
    gram = spd_matrix(np.geomspace(1e-6, 1.0, 50), seed=7)
    g = torch.as_tensor(np.random.default_rng(8).standard_normal(50))
    solver = DampedGramSolver(damping)
    out = solver(gram, g)
    eps = float(damping.epsilon(gram))
    assert float(out.epsilon) == pytest.approx(eps, rel=1e-15)
    z_ref = torch.as_tensor(np.linalg.solve(gram.numpy() + eps * np.eye(50), g.numpy()))
    torch.testing.assert_close(out.direction, z_ref, rtol=1e-10, atol=0)
    torch.testing.assert_close(out.direction, solve_damped(gram, g, eps), rtol=1e-12, atol=0)
    assert solver.stats.factorizations == 1 and solver.stats.lanczos_steps == 0


def test_indefinite_or_nonfinite_gram_raises() -> None:
    bad = spd_matrix(np.linspace(-1.0, 1.0, 20), seed=9)
    g = torch.ones(20, dtype=torch.float64)
    with pytest.raises(GramSolveError):
        DampedGramSolver(EigminDamping(1e-7))(bad, g)
    with pytest.raises(GramSolveError):
        DampedGramSolver(EigminDamping(1e-7))(torch.full((20, 20), math.nan, dtype=torch.float64), g)
    with pytest.raises(GramSolveError):
        DampedGramSolver(ConstantDamping(0.0))(torch.zeros(20, 20, dtype=torch.float64), g)


@pytest.mark.parametrize("train", ["all", "hidden", "output"])
def test_gauss_newton_field_equals_dense_jacobian_field(train: str) -> None:
    """dw/dt = -J^T (A + eps I)^{-1} r / N with J from torch.func and eps from eigvalsh."""
    d, n, m = 3, 40, 150
    model = ParticleModel(input_dim=d, activation="tanh", train=train)
    gen = torch.Generator().manual_seed(10)
    x = torch.randn(n, d, generator=gen, dtype=torch.float64)
    y = torch.randn(n, generator=gen, dtype=torch.float64)
    w = torch.randn(m, d + 2, generator=gen, dtype=torch.float64)
    flow = GaussNewtonFlow(model, x, y, EigminDamping(1e-7))
    for step in range(3):  # the second and third calls use the warm start
        state = w + 0.05 * step * torch.randn(m, d + 2, generator=gen, dtype=torch.float64)
        field = flow(torch.tensor(0.0), state)
        jac = explicit_jacobian(model, state, x)  # trained components only: frozen ones do not move
        gram = jac @ jac.T
        residual = model.predict(state, x) - y
        eps, z = dense_reference(gram, residual / n, 1e-7)
        reference = scatter_trained(model, -(jac.T @ z), m)
        cond = float(torch.linalg.eigvalsh(gram)[-1]) / eps
        error = float(torch.linalg.vector_norm(field - reference))
        assert error <= 1e-14 * cond * float(torch.linalg.vector_norm(reference))
        assert float(flow.last_epsilon) == pytest.approx(eps, rel=EPS_RTOL)
