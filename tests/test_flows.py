"""Vector fields and damping rules against explicit autograd Jacobians and dense linear algebra."""

import numpy as np
import pytest
import torch
from problems import explicit_jacobian, relative_error, scatter_trained, small_problem

from gnflow.damping import ConstantDamping, EigminDamping, GramSolveError, RelativeDamping, make_damping, solve_damped
from gnflow.flows import FlowError, GaussNewtonFlow, GradientFlow


@pytest.mark.parametrize("train", ["all", "hidden", "output"])
def test_gradient_flow_is_minus_gradient_of_loss(train):
    model, w, x, y = small_problem(train=train, activation="gelu")
    flow = GradientFlow(model, x, y)
    w_req = w.clone().requires_grad_(True)
    loss = ((model.predict(w_req, x) - y) ** 2).sum() / (2 * x.shape[0])
    (grad,) = torch.autograd.grad(loss, w_req)
    grad = grad * model.trainable_mask()
    assert relative_error(flow(torch.tensor(0.0), w), -grad) < 1e-12


@pytest.mark.parametrize(
    "damping",
    [EigminDamping(1e-7), EigminDamping(1e3), ConstantDamping(1e-4), ConstantDamping(0.0), RelativeDamping(0.1)],
)
@pytest.mark.parametrize("scaling", ["mean_field", "ntk"])
def test_gauss_newton_field_matches_explicit_formula(damping, scaling):
    model, w, x, y = small_problem(n_train=12, width=40, scaling=scaling)
    flow = GaussNewtonFlow(model, x, y, damping)
    jac = explicit_jacobian(model, w, x).numpy()
    a = jac @ jac.T
    lam = np.linalg.eigvalsh(a)
    eps = {
        "eigmin": max(getattr(damping, "eps0", 0.0), lam[0]),
        "constant": getattr(damping, "eps0", 0.0),
        "relative": getattr(damping, "kappa", 0.0) * np.trace(a) / a.shape[0],
    }[damping.name]
    g = (model.predict(w, x) - y).numpy() / x.shape[0]
    expected = -jac.T @ np.linalg.solve(a + eps * np.eye(a.shape[0]), g)
    field = flow(torch.tensor(0.0), w)
    assert relative_error(field, scatter_trained(model, torch.as_tensor(expected), w.shape[0])) < 1e-9
    assert abs(flow.epsilon(torch.as_tensor(a)) - eps) <= 1e-12 * max(eps, lam[-1])


def test_eigmin_damping_is_max_of_floor_and_lambda_min():
    a = torch.diag(torch.tensor([1e-9, 2.0, 3.0], dtype=torch.float64))
    assert EigminDamping(1e-7).epsilon(a).item() == pytest.approx(1e-7)
    b = torch.diag(torch.tensor([0.5, 2.0, 3.0], dtype=torch.float64))
    assert EigminDamping(1e-7).epsilon(b).item() == pytest.approx(0.5)
    assert RelativeDamping(0.2).epsilon(b).item() == pytest.approx(0.2 * 5.5 / 3)


@pytest.mark.parametrize("kind", ["eigmin", "constant", "relative"])
def test_known_lambda_min_gives_the_same_epsilon(kind):
    """eps from the spectrum passed in equals eps computed from A: for eigmin, max(eps0, lambda_min)."""
    model, w, x, y = small_problem(n_train=12, width=40)
    flow = GaussNewtonFlow(model, x, y, make_damping(kind, 1e-3))
    gram = model.linearize(w, x).gram()
    eig = torch.linalg.eigvalsh(gram)
    assert flow.epsilon(gram, eig) == flow.epsilon(gram)
    if kind == "eigmin":
        assert flow.epsilon(gram, eig) == max(1e-3, float(eig[0]))
        shifted = eig.clone()
        shifted[0] = 0.5  # the rule reads lambda_min from what it is given
        assert flow.epsilon(gram, shifted) == 0.5


def test_flows_say_whether_they_have_a_damping():
    model, w, x, y = small_problem(n_train=12, width=40)
    gn = GaussNewtonFlow(model, x, y, EigminDamping(1e-7))
    gd = GradientFlow(model, x, y)
    assert gn.damping == EigminDamping(1e-7) and gd.damping is None
    assert gd.solve_stats is None
    gn(torch.tensor(0.0), w)
    assert gn.solve_stats is not None and gn.solve_stats.calls == 1
    batch = gn.restrict(torch.arange(5))
    assert type(batch) is GaussNewtonFlow and batch.solver is not gn.solver and batch.solve_stats.calls == 0


def test_make_damping_is_a_registry_lookup():
    assert make_damping("eigmin", 1e-5) == EigminDamping(1e-5)
    assert make_damping("constant", 0.0) == ConstantDamping(0.0)
    assert make_damping("relative", 0.1) == RelativeDamping(0.1)
    assert [r.requires for r in (EigminDamping(), ConstantDamping(), RelativeDamping())] == [("lambda_min",), (), ()]
    with pytest.raises(ValueError, match="damping parameter must be >= 0, got -1"):
        make_damping("eigmin", -1.0)


def test_solve_damped_and_singular_error():
    rng = np.random.default_rng(0)
    m = rng.standard_normal((5, 5))
    a = torch.as_tensor(m @ m.T)
    rhs = torch.as_tensor(rng.standard_normal(5))
    z = solve_damped(a, rhs, 0.3)
    assert relative_error(z, np.linalg.solve(m @ m.T + 0.3 * np.eye(5), rhs.numpy())) < 1e-12
    singular = torch.zeros(3, 3, dtype=torch.float64)
    with pytest.raises(GramSolveError, match="singular"):
        solve_damped(singular, torch.ones(3, dtype=torch.float64), 0.0)
    with pytest.raises(ValueError, match="unknown damping 'lm'; allowed: eigmin, constant, relative"):
        make_damping("lm", 1.0)


def test_float32_state_keeps_float64_solve():
    model, w, x, y = small_problem(n_train=10, width=30)
    flow64 = GaussNewtonFlow(model, x, y, EigminDamping(1e-7))
    flow32 = GaussNewtonFlow(model, x.float(), y.float(), EigminDamping(1e-7))
    f64 = flow64(torch.tensor(0.0), w)
    f32 = flow32(torch.tensor(0.0), w.float())
    assert f32.dtype == torch.float32
    assert relative_error(f32.double(), f64) < 1e-4


def test_non_finite_state_is_a_flow_error():
    model, w, x, y = small_problem()
    w = w.clone()
    w[0, 0] = float("nan")
    with pytest.raises(FlowError, match="non-finite"):
        GradientFlow(model, x, y)(torch.tensor(0.0), w)
