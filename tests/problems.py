"""Exact problems of gnflow's flows and the independent oracles the tests check them with.

A catalog in the manner of torchdiffeq's ``tests/problems.py``: each entry of :data:`PROBLEMS` is
one exact law of docs/mathematics.md (section Exact laws) on a small float64 teacher--student problem, the integration
methods it holds for (with the step or tolerance each one runs at and how closely the law then
holds) and the methods it does not hold for, with the reason. ``law.solve(method)`` integrates it
through the public driver :func:`gnflow.solve.integrate`; ``law.check(solution)`` asserts the law at
every saved time against an oracle that does not use gnflow's structured derivatives:

- closed forms (exp(-t/N), the stability polynomial of a Runge--Kutta method);
- ``scipy.linalg.expm`` for the linear residual dynamics of random features;
- NumPy dense solves, eigenvalues and ``lstsq`` on the explicit Jacobian;
- the explicit Jacobian itself from one autograd oracle, :func:`explicit_jacobian`
  (``torch.func.jacrev`` of ``ParticleModel.predict``); :func:`module_jacobian` is its
  counterpart for ``torch.nn.Module`` regression models (GGN optimizer tests).

Notation: N training points, r = f(X) - y, J the N x P Jacobian over the trained components,
A = J J^T, and dr/dt = -A B(A) r / N for a flow dw/dt = -J^T B(A) r / N with a frozen J.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property

import numpy as np
import scipy.linalg
import torch
from torch.func import functional_call, jacrev

from gnflow.config import SolverConfig
from gnflow.damping import ConstantDamping, EigminDamping
from gnflow.data import teacher_student
from gnflow.flows import Flow, GaussNewtonFlow, GradientFlow
from gnflow.ggn import ggn_flow, ggn_step_size
from gnflow.model import ParticleModel
from gnflow.solve import Solution, StepSchedule, integrate

# --- small problems and autograd oracles ------------------------------------------------------


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


def explicit_jacobian(model: ParticleModel, weights: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The N x P Jacobian of f(X) with respect to the trained components, by autograd.

    Columns follow the (particle, component) layout restricted to the trained components; with
    every component trained they are the entries of ``weights.reshape(-1)``.
    """
    jac = jacrev(lambda w: model.predict(w, x))(weights)  # (sample, particle, component)
    mask = model.trainable_mask(dtype=torch.bool, device=weights.device)
    return jac[:, :, mask].reshape(x.shape[0], -1)


def explicit_gram(model: ParticleModel, weights: torch.Tensor, x: torch.Tensor) -> np.ndarray:
    """A = J J^T (N x N) from :func:`explicit_jacobian`."""
    jac = explicit_jacobian(model, weights, x).numpy()
    return jac @ jac.T


def scatter_trained(model: ParticleModel, flat: torch.Tensor, width: int) -> torch.Tensor:
    """A vector over trained parameters laid out as (particle, component), zeros elsewhere."""
    mask = model.trainable_mask(dtype=torch.bool)
    out = torch.zeros(width, model.n_components, dtype=flat.dtype)
    out[:, mask] = flat.reshape(width, -1)
    return out


def ggn_formula_step(
    model: ParticleModel, weights: torch.Tensor, x: torch.Tensor, y: torch.Tensor, lam: float, alpha: float
) -> torch.Tensor:
    """One GGN(lam, alpha) step on the batch (x, y): w - J^T (lam A + alpha I)^{-1} r (dense float64)."""
    jac = explicit_jacobian(model, weights, x).numpy()
    r = (model.predict(weights, x) - y).numpy()
    coef = np.linalg.solve(lam * jac @ jac.T + alpha * np.eye(r.size), r)
    return weights - scatter_trained(model, torch.as_tensor(jac.T @ coef), weights.shape[0])


def least_squares_gauss_newton_step(
    model: ParticleModel, weights: torch.Tensor, x: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    """w + delta with delta the minimum-norm least-squares solution of J delta = -r (numpy lstsq)."""
    jac = explicit_jacobian(model, weights, x).numpy()
    r = (model.predict(weights, x) - y).numpy()
    delta, *_ = np.linalg.lstsq(jac, -r, rcond=None)
    return weights + scatter_trained(model, torch.as_tensor(delta), weights.shape[0])


def module_jacobian(
    model: torch.nn.Module, x: torch.Tensor, names: Sequence[str] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(J, f): the (batch, P) Jacobian of a regression module's outputs over the parameters
    ``names`` (default: all, in ``named_parameters`` order), by autograd of the batched forward
    pass, and the outputs f (batch,). The other parameters and the buffers stay fixed."""
    params = {n: p.detach() for n, p in model.named_parameters()}
    names = list(params) if names is None else list(names)
    fixed = {**dict(model.named_buffers()), **{n: p for n, p in params.items() if n not in names}}

    def outputs(trained: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return functional_call(model, {**fixed, **trained}, (x,)).reshape(-1)

    trained = {n: params[n] for n in names}
    jac = jacrev(outputs)(trained)
    return torch.cat([jac[n].reshape(x.shape[0], -1) for n in names], dim=1), outputs(trained)


def module_ggn_step(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    lam: float,
    alpha: float,
    names: Sequence[str] | None = None,
) -> torch.Tensor:
    """The parameters ``names`` (flattened, in order) after one GGN(lam, alpha) step of ``model``
    on (x, y): w - J^T (lam J J^T + alpha I)^{-1} r with J from :func:`module_jacobian`."""
    params = dict(model.named_parameters())
    names = list(params) if names is None else list(names)
    jac, out = module_jacobian(model, x, names)
    r = out - y.reshape(-1)
    coef = torch.linalg.solve(lam * jac @ jac.T + alpha * torch.eye(r.numel(), dtype=jac.dtype), r)
    return torch.cat([params[n].detach().reshape(-1) for n in names]) - jac.T @ coef


# --- the catalog ------------------------------------------------------------------------------

ADAPTIVE = ("dopri5", "dopri8", "bosh3", "adaptive_heun", "fehlberg2")
FIXED = ("euler", "midpoint", "rk4")
EXPONENTIAL = ("kernel_exponential", "kernel_etd3", "kernel_etd4")
KERNEL_EULER = ("kernel_euler",)
"""The Euler iterations in blocks: wherever euler holds a law, so does kernel_euler at the same step
(its blocks agree with the iterations to their tolerance, exactly for random features)."""
METHODS = ADAPTIVE + FIXED + EXPONENTIAL + KERNEL_EULER
"""Every integration method of ``SolverConfig.method``."""

ORDER = {"euler": 1, "midpoint": 2, "rk4": 4, "kernel_euler": 1}
"""Order p of the fixed-step methods; each is the explicit p-stage Runge--Kutta method of order p."""


def stability_polynomial(method: str, z: np.ndarray) -> np.ndarray:
    """R(z) = sum_{j <= p} z^j / j!, the step y_{k+1} = R(hL) y_k of a fixed-step method on y' = L y.

    Every explicit Runge--Kutta method with p = s <= 4 stages and order p has this R; for a
    matrix z the powers are matrix powers.
    """
    z = np.asarray(z, dtype=np.float64)
    eye = np.eye(z.shape[0]) if z.ndim == 2 else np.ones_like(z)
    term, total = eye, eye.copy()
    for j in range(1, ORDER[method] + 1):
        term = (term @ z if z.ndim == 2 else term * z) / j
        total = total + term
    return total


@dataclass(frozen=True)
class Problem:
    """A network, its training data and initial particles (float64).

    Attributes
    ----------
    model:
        The particle model (which components train is part of the problem).
    weights0:
        Initial particles, shape (particle, component).
    x, y:
        Training inputs (sample, d) and labels (sample,).
    """

    model: ParticleModel
    weights0: torch.Tensor
    x: torch.Tensor
    y: torch.Tensor

    @property
    def n(self) -> int:
        """N, the number of training points."""
        return int(self.x.shape[0])

    def residuals(self, weights: torch.Tensor) -> np.ndarray:
        """r = f(X) - y by the plain forward pass at each state, weights (t, particle, component) ->
        (t, sample)."""
        return np.stack([(self.model.predict(w, self.x) - self.y).numpy() for w in weights])

    def gram(self, weights: torch.Tensor | None = None) -> np.ndarray:
        """A = J J^T at ``weights`` (default: the initial state), from the autograd Jacobian."""
        return explicit_gram(self.model, self.weights0 if weights is None else weights, self.x)


def problem(**kwargs: object) -> Callable[[], Problem]:
    """A builder of the :func:`small_problem` with these arguments, as a :class:`Problem`."""

    def build() -> Problem:
        model, weights, x, y = small_problem(**kwargs)
        return Problem(model, weights, x, y)

    return build


@dataclass(frozen=True, kw_only=True)
class MethodSetting:
    """How one method integrates a law, and how closely the law must then hold.

    Attributes
    ----------
    tol:
        Largest error of the law allowed at a saved time, in the law's own measure (see
        :meth:`ExactLaw.error`).
    rtol:
        Relative tolerance of adaptive methods and kernel_exponential (atol = 1e-3 rtol).
    step:
        h / N, the step of a fixed-step method in units of N.
    """

    tol: float
    rtol: float = 1e-9
    step: float = 0.0


@dataclass(frozen=True, kw_only=True, eq=False)
class ExactLaw(ABC):
    """One exact law on one problem, and the methods it holds for.

    Attributes
    ----------
    name:
        Identifier (test ids are ``name-method``).
    statement:
        The law, in the notation of docs/mathematics.md.
    build:
        Builds the problem (deterministic: every call gives the same problem).
    make_flow:
        The flow to integrate on the problem (a fresh one per call: flows count evaluations
        and keep warm starts).
    methods:
        The methods the law holds for and their settings.
    excluded:
        The other methods of :data:`METHODS`, each with the reason the law does not hold for it.
    horizon:
        t_end / N.
    save_at:
        Saved times / N (0 and the horizon are added); fixed-step methods save at the nearest
        grid points.
    """

    name: str
    statement: str
    build: Callable[[], Problem]
    make_flow: Callable[[Problem], Flow]
    methods: Mapping[str, MethodSetting]
    excluded: Mapping[str, str] = field(default_factory=dict)
    horizon: float = 6.0
    save_at: tuple[float, ...] = (0.01, 0.1, 0.3, 1.0, 2.0, 3.5, 5.0)

    def __post_init__(self) -> None:
        # kernel_etd3 and kernel_etd4 are exact wherever kernel_exponential is (J frozen) and of
        # higher order elsewhere: they join every law at kernel_exponential's tolerance and bound,
        # and are excluded where kernel_exponential is, for the same reason
        for higher in ("kernel_etd3", "kernel_etd4"):
            if higher in self.methods or higher in self.excluded:
                continue
            if "kernel_exponential" in self.methods:
                object.__setattr__(self, "methods", {**self.methods, higher: self.methods["kernel_exponential"]})
            elif "kernel_exponential" in self.excluded:
                reason = f"as for kernel_exponential, on the same splitting: {self.excluded['kernel_exponential']}"
                object.__setattr__(self, "excluded", {**self.excluded, higher: reason})
        # kernel_euler computes euler's iterations: it joins every law at euler's step and bound
        # (blocks at rtol 1e-10), and is excluded where euler is, for the same reason
        if "kernel_euler" in self.methods or "kernel_euler" in self.excluded:
            return
        if "euler" in self.methods:
            setting = replace(self.methods["euler"], rtol=1e-10)
            object.__setattr__(self, "methods", {**self.methods, "kernel_euler": setting})
        elif "euler" in self.excluded:
            reason = f"as for euler, whose iterations it computes: {self.excluded['euler']}"
            object.__setattr__(self, "excluded", {**self.excluded, "kernel_euler": reason})

    @cached_property
    def problem(self) -> Problem:
        """The problem, built once per law."""
        return self.build()

    def solver_config(self, method: str, **overrides: object) -> SolverConfig:
        """The solver settings of ``method`` on this law (``overrides`` replace fields)."""
        setting = self.methods[method]
        n = self.problem.n
        t_end = self.horizon * n
        config = SolverConfig(
            method=method,
            rtol=setting.rtol,
            atol=1e-3 * setting.rtol,
            step_size=setting.step * n if setting.step > 0 else 1.0,
            t_end=t_end,
            save_times=tuple(s * n for s in self.save_at if 0 < s < self.horizon),
            stop_loss_ratio=0.0,
        )
        return replace(config, **overrides)

    def solve(self, method: str, **overrides: object) -> Solution:
        """Integrate the law's flow with ``method`` from the initial state."""
        return integrate(
            self.make_flow(self.problem), self.problem.weights0, self.solver_config(method, **overrides), progress=False
        )

    def check(self, solution: Solution) -> None:
        """Assert that ``solution`` reached the horizon and obeys the law at every saved time."""
        assert solution.status == "completed", solution.status
        assert solution.t[0] == 0.0
        assert math.isclose(solution.t[-1], self.horizon * self.problem.n, rel_tol=1e-12), solution.t[-1]
        errors = self.errors(solution)
        tol = self.methods[solution.method].tol
        worst = int(np.argmax(errors))
        assert errors[worst] <= tol, (
            f"{self.name} with {solution.method}: error {errors[worst]:.3g} > {tol:.3g} at t = {solution.t[worst]:.6g}"
        )

    def error(self, solution: Solution) -> float:
        """The largest error of the law over the saved times."""
        return float(np.max(self.errors(solution)))

    @abstractmethod
    def errors(self, solution: Solution) -> np.ndarray:
        """The error of the law at each saved time, shape (t,) (0 where it holds exactly)."""

    def fixed_steps(self, solution: Solution) -> np.ndarray:
        """k with t = k h for a fixed-step solution (asserting that t lies on the grid)."""
        h = self.methods[solution.method].step * self.problem.n
        k = np.rint(solution.t / h)
        np.testing.assert_allclose(solution.t, k * h, rtol=1e-12, atol=0)
        return k.astype(np.int64)


@dataclass(frozen=True, kw_only=True, eq=False)
class ResidualLaw(ExactLaw):
    """r(t) = expm(-t L) r(0) with a constant N x N rate L (dr/dt = -L r).

    On a linear problem (``frozen_jacobian``: only v trains, so f is linear in the state) a
    fixed-step method obeys the discrete law r_k = R(-h L)^k r(0) exactly, R its stability
    polynomial; on the nonlinear network a fixed-step method holds the continuous law to its
    order, and its setting's tolerance is sized for its step.

    The error at a saved time is ||r(t) - r_exact(t)|| / ||r(0)||.
    """

    rate: Callable[[Problem], np.ndarray]
    frozen_jacobian: bool

    @cached_property
    def rate_matrix(self) -> np.ndarray:
        """L, (sample, sample)."""
        return self.rate(self.problem)

    def expected(self, solution: Solution) -> np.ndarray:
        """The exact residuals at the saved times of ``solution``, shape (t, sample)."""
        r0 = self.problem.residuals(self.problem.weights0[None])[0]
        rate = self.rate_matrix
        if self.frozen_jacobian and solution.method in FIXED + KERNEL_EULER:
            h = self.methods[solution.method].step * self.problem.n
            step = stability_polynomial(solution.method, -h * rate)
            return np.stack([np.linalg.matrix_power(step, k) @ r0 for k in self.fixed_steps(solution)])
        return np.stack([scipy.linalg.expm(-t * rate) @ r0 for t in solution.t])

    def errors(self, solution: Solution) -> np.ndarray:
        r = self.problem.residuals(solution.weights)
        return np.linalg.norm(r - self.expected(solution), axis=1) / np.linalg.norm(r[0])


@dataclass(frozen=True, kw_only=True, eq=False)
class EigminBounds(ExactLaw):
    """Gauss--Newton with eigmin damping eps = max(eps0, lambda_min(A)): while lambda_min(A) >= eps0,
    exp(-t/N) <= ||r(t)|| / ||r(0)|| <= exp(-t/(2N)).

    The gains lambda / (lambda + eps) of A (A + eps I)^{-1} then lie in [1/2, 1). With a frozen J
    (only v trains) a fixed-step method multiplies each eigencomponent of r by R(-h g / N) per
    step, so R(-h/N)^k <= ||r_k|| / ||r_0|| <= R(-h/(2N))^k exactly.

    The error at a saved time is the violation of the nearer bound by ||r(t)|| / ||r(0)|| (0
    inside), in the units of the residual laws. lambda_min comes from the autograd Jacobian; the
    problems are built so that the law applies at every saved time, so that the damping shows
    (the residual ends visibly above the undamped exp(-t/N)), and so that one bound is nearly
    attained (the lower one on the nonlinear network, the upper one with random features).
    """

    eps0: float
    frozen_jacobian: bool

    def bounds(self, solution: Solution) -> tuple[np.ndarray, np.ndarray]:
        """(lower, upper) bounds of ||r(t)|| / ||r(0)|| at the saved times."""
        n = self.problem.n
        if self.frozen_jacobian and solution.method in FIXED + KERNEL_EULER:
            h = self.methods[solution.method].step * n
            k = self.fixed_steps(solution)
            return (
                stability_polynomial(solution.method, np.array(-h / n)) ** k,
                stability_polynomial(solution.method, np.array(-h / (2 * n))) ** k,
            )
        return np.exp(-solution.t / n), np.exp(-solution.t / (2 * n))

    def errors(self, solution: Solution) -> np.ndarray:
        r = self.problem.residuals(solution.weights)
        ratio = np.linalg.norm(r, axis=1) / np.linalg.norm(r[0])
        lower, upper = self.bounds(solution)
        return np.maximum(0.0, np.maximum(lower - ratio, ratio - upper))

    def check(self, solution: Solution) -> None:
        super().check(solution)
        eigmin = np.array([np.linalg.eigvalsh(self.problem.gram(w))[0] for w in solution.weights])
        assert np.all(eigmin >= self.eps0), f"lambda_min(A) < eps0 = {self.eps0} at some saved time: {eigmin.min()}"
        r = self.problem.residuals(solution.weights[[0, -1]])
        lower, _ = self.bounds(solution)
        assert np.linalg.norm(r[1]) / np.linalg.norm(r[0]) > lower[-1] * (1 + 1e-3), "the damping does not show"


@dataclass(frozen=True, kw_only=True, eq=False)
class LossDescent(ExactLaw):
    """Gradient flow: L(t) = ||r(t)||^2 / (2N) is non-increasing.

    The error at a saved time is the increase of L since the previous saved time, in units of L(0).
    ``check`` also asserts that the flow learns (L at the horizon below L(0) / 2), so that the law
    is not met by a state that does not move.
    """

    def losses(self, solution: Solution) -> np.ndarray:
        r = self.problem.residuals(solution.weights)
        return np.sum(r * r, axis=1) / (2 * self.problem.n)

    def errors(self, solution: Solution) -> np.ndarray:
        loss = self.losses(solution)
        return np.concatenate([[0.0], np.maximum(0.0, np.diff(loss)) / loss[0]])

    def check(self, solution: Solution) -> None:
        super().check(solution)
        loss = self.losses(solution)
        assert loss[-1] < 0.5 * loss[0], f"the flow does not learn: L(T) / L(0) = {loss[-1] / loss[0]:.3g}"


@dataclass(frozen=True, kw_only=True, eq=False)
class EulerStepLaw(ExactLaw):
    """Euler steps of a flow equal a discrete update, step by step.

    ``schedule`` gives the steps (sizes h_k and mini-batches); ``update(problem, w, batch, h)`` is
    the discrete update of step size h on the samples ``batch`` (all samples when None), computed
    by an oracle.
    The error at a saved step is ||w_k - w_k^oracle|| / ||w_k^oracle - w_0||, the oracle's states
    iterated on their own.
    """

    schedule: Callable[[Problem], StepSchedule]
    update: Callable[[Problem, torch.Tensor, np.ndarray | None, float], torch.Tensor]

    def solve(self, method: str, **overrides: object) -> Solution:
        config = SolverConfig(method=method, stop_loss_ratio=0.0)
        schedule = self.schedule(self.problem)
        return integrate(self.make_flow(self.problem), self.problem.weights0, config, schedule=schedule, progress=False)

    def check(self, solution: Solution) -> None:
        assert solution.status == "completed", solution.status
        schedule = self.schedule(self.problem)
        times = np.concatenate([[0.0], np.cumsum(schedule.step_sizes)])
        np.testing.assert_allclose(solution.t, times[np.concatenate([[True], schedule.save])], rtol=1e-14)
        assert solution.nfe[-1] == schedule.n_steps  # one evaluation per Euler step
        errors = self.errors(solution)
        tol = self.methods[solution.method].tol
        assert errors.max() <= tol, f"{self.name}: error {errors.max():.3g} > {tol:.3g} at step {errors.argmax()}"

    def errors(self, solution: Solution) -> np.ndarray:
        schedule = self.schedule(self.problem)
        p = self.problem
        states = [p.weights0]
        for k in range(schedule.n_steps):
            batch = None if schedule.batches is None else schedule.batches[k]
            states.append(self.update(p, states[-1], batch, float(schedule.step_sizes[k])))
        saved = torch.stack(states)[np.concatenate([[True], schedule.save])]
        assert saved.shape == solution.weights.shape
        error = (solution.weights - saved).flatten(1).norm(dim=1)
        change = (saved - p.weights0).flatten(1).norm(dim=1)
        return np.concatenate([[float(error[0])], (error[1:] / change[1:]).numpy()])


# --- the entries ------------------------------------------------------------------------------

NONLINEAR = problem(n_train=15, width=60, output_init="normal")
"""All components trained: J moves with the state."""
RANDOM_FEATURES = problem(n_train=15, width=40, train="output", output_init="zero")
"""Only v trains: f is linear in the state and J = c(M) sigma(X U^T + b) is frozen."""
EIGMIN = problem(n_train=15, width=60, output_init="zero")
"""Zero output weights: lambda_min(A) stays above eps0, and r(0) lies mostly on the large
eigenvalues of A, whose gains are near 1: ||r(t)|| / ||r(0)|| stays within 1e-5 to 5e-3 of the
lower bound exp(-t/N)."""


def _min_mode_random_features() -> Problem:
    """Random features with labels that put r(0) on the eigenvector of lambda_min(A).

    Eigmin damping gives that mode the gain lambda_min / (lambda_min + lambda_min) = 1/2: the ratio
    ||r(t)|| / ||r(0)|| equals the upper bound exp(-t/(2N)) (R(-h/(2N))^k for a fixed-step method).
    """
    p = RANDOM_FEATURES()
    _, q = np.linalg.eigh(p.gram())
    y = p.model.predict(p.weights0, p.x) - float(p.y.norm()) * torch.as_tensor(q[:, 0])
    return Problem(p.model, p.weights0, p.x, y)


GGN_LAM, GGN_ALPHA = 1.5, 0.2
GGN_BATCHES = (
    np.arange(0, 4),
    np.arange(4, 8),
    np.arange(8, 10),
    np.array([7, 2, 9, 0]),
    np.array([5, 1, 8, 3]),
    np.array([6, 4]),
    np.arange(10),
)
"""Two epochs of mini-batches of b = 4 (a last batch of 2), then a full-batch step (b = N = 10)."""


def _ggn_schedule(p: Problem) -> StepSchedule:
    sizes = np.array([ggn_step_size(len(b), GGN_LAM) for b in GGN_BATCHES])
    return StepSchedule(step_sizes=sizes, save=np.ones(len(sizes), dtype=bool), batches=GGN_BATCHES, n_samples=p.n)


def _ggn_update(p: Problem, w: torch.Tensor, batch: np.ndarray | None, h: float) -> torch.Tensor:
    # the GGN formula knows lam and alpha only, not the step size h = b / lam it corresponds to
    index = torch.as_tensor(batch) if batch is not None else torch.arange(p.n)
    return ggn_formula_step(p.model, w, p.x[index], p.y[index], GGN_LAM, GGN_ALPHA)


LSTSQ_STEPS = (1.0, 0.5, 1.0)
"""h_k / N: full Gauss--Newton steps (h = N, the official update) and a half step."""


def _lstsq_schedule(p: Problem) -> StepSchedule:
    sizes = np.array(LSTSQ_STEPS) * p.n
    return StepSchedule(step_sizes=sizes, save=np.ones(len(sizes), dtype=bool))


def _lstsq_update(p: Problem, w: torch.Tensor, batch: np.ndarray | None, h: float) -> torch.Tensor:
    full = least_squares_gauss_newton_step(p.model, w, p.x, p.y)
    return w + (h / p.n) * (full - w)


def _undamped(p: Problem) -> Flow:
    return GaussNewtonFlow(p.model, p.x, p.y, ConstantDamping(0.0))


def _identity_rate(p: Problem) -> np.ndarray:
    # A (A + 0 I)^{-1} = I: r(t) = exp(-t/N) r(0), whatever J does
    return np.eye(p.n) / p.n


RF_EPS = 1e-4
"""Constant damping of the random-features Gauss--Newton law, near the middle of the spectrum of A."""


def _rf_gn_rate(p: Problem) -> np.ndarray:
    a = p.gram()
    return a @ np.linalg.inv(a + RF_EPS * np.eye(p.n)) / p.n


EXCLUDED_EULER_NONLINEAR_BOUNDS = (
    "Euler's factor 1 - h g/N per step is below exp(-h g/N), and on the nonlinear network the "
    "curvature error of a step is of the same order h^2: neither the continuous nor the discrete "
    "bounds hold exactly"
)
ONLY_EULER = "the law is about one Euler step; other methods take other steps"

ADAPTIVE_SETTINGS = {
    "dopri5": MethodSetting(rtol=1e-8, tol=1e-7),
    "dopri8": MethodSetting(rtol=1e-8, tol=1e-5),
    "bosh3": MethodSetting(rtol=1e-6, tol=1e-3),
    "adaptive_heun": MethodSetting(rtol=1e-4, tol=1e-3),
    "fehlberg2": MethodSetting(rtol=1e-6, tol=2e-3),
}
"""Adaptive methods on the continuous laws. The global error of a run is not bounded by rtol (the
controller bounds local errors; fehlberg2 and dopri8 overshoot it most): each tol is at least 5
times the largest error measured on these problems."""

FROZEN_J_EXACT = {
    "kernel_exponential": MethodSetting(rtol=1e-3, tol=1e-11),
    "euler": MethodSetting(step=1 / 4, tol=1e-11),
    "midpoint": MethodSetting(step=1 / 4, tol=1e-11),
    "rk4": MethodSetting(step=1 / 4, tol=1e-11),
}
"""Exact to rounding whatever the step when J is frozen: kernel_exponential steps solve the linear
residual dynamics exactly, and a fixed-step method obeys its discrete law r_k = R(-h L)^k r(0)."""

GAUSS_NEWTON_NONLINEAR = {
    **ADAPTIVE_SETTINGS,
    # the steps are exact for the linearized model: the error is first order in the motion of J,
    # and the controller keeps it near rtol
    "kernel_exponential": MethodSetting(rtol=1e-4, tol=1e-4),
    # the continuous law to the method's order: the global error is C (h/N)^p with C < 1 here
    "euler": MethodSetting(step=1 / 50, tol=(1 / 50) ** 1),
    "midpoint": MethodSetting(step=1 / 20, tol=(1 / 20) ** 2),
    "rk4": MethodSetting(step=1 / 4, tol=(1 / 4) ** 4),
}

EIGMIN_EPS0 = 1e-9


def _eigmin(p: Problem) -> Flow:
    return GaussNewtonFlow(p.model, p.x, p.y, EigminDamping(EIGMIN_EPS0))


LAWS: tuple[ExactLaw, ...] = (
    ResidualLaw(
        name="undamped_gn",
        statement="eps = 0, A invertible: r(t) = exp(-t/N) r(0), for the nonlinear network too",
        build=NONLINEAR,
        make_flow=_undamped,
        rate=_identity_rate,
        frozen_jacobian=False,
        methods=GAUSS_NEWTON_NONLINEAR,
    ),
    ResidualLaw(
        name="undamped_gn_random_features",
        statement="eps = 0, frozen J: r(t) = exp(-t/N) r(0); a fixed-step method: r_k = R(-h/N)^k r(0)",
        build=RANDOM_FEATURES,
        make_flow=_undamped,
        rate=_identity_rate,
        frozen_jacobian=True,
        methods={**ADAPTIVE_SETTINGS, **FROZEN_J_EXACT},
    ),
    EigminBounds(
        name="eigmin_bounds",
        statement="eigmin damping, lambda_min(A) >= eps0: exp(-t/N) <= ||r(t)|| / ||r(0)|| <= exp(-t/(2N))",
        build=EIGMIN,
        make_flow=_eigmin,
        eps0=EIGMIN_EPS0,
        frozen_jacobian=False,
        methods={key: value for key, value in GAUSS_NEWTON_NONLINEAR.items() if key != "euler"},
        excluded={"euler": EXCLUDED_EULER_NONLINEAR_BOUNDS},
    ),
    EigminBounds(
        name="eigmin_bounds_random_features",
        statement="eigmin damping, frozen J: the bounds; a fixed-step method: R(-h/N)^k <= ratio <= R(-h/(2N))^k",
        build=_min_mode_random_features,
        make_flow=_eigmin,
        eps0=EIGMIN_EPS0,
        frozen_jacobian=True,
        methods={**ADAPTIVE_SETTINGS, **FROZEN_J_EXACT},
    ),
    ResidualLaw(
        name="random_features_gd",
        statement="gradient flow, frozen J: r(t) = expm(-t A / N) r(0); a fixed-step method: R(-h A / N)^k r(0)",
        build=RANDOM_FEATURES,
        make_flow=lambda p: GradientFlow(p.model, p.x, p.y),
        rate=lambda p: p.gram() / p.n,
        frozen_jacobian=True,
        horizon=20.0,
        save_at=(0.1, 1.0, 3.0, 10.0),
        # steps h = N: h lambda_max(A) / N = 0.65, inside every method's stability region
        methods={**ADAPTIVE_SETTINGS, **FROZEN_J_EXACT, **{m: MethodSetting(step=1.0, tol=1e-11) for m in FIXED}},
    ),
    ResidualLaw(
        name="random_features_gn",
        statement="constant damping eps, frozen J: r(t) = expm(-t A (A + eps I)^{-1} / N) r(0)",
        build=RANDOM_FEATURES,
        make_flow=lambda p: GaussNewtonFlow(p.model, p.x, p.y, ConstantDamping(RF_EPS)),
        rate=_rf_gn_rate,
        frozen_jacobian=True,
        methods={**ADAPTIVE_SETTINGS, **FROZEN_J_EXACT},
    ),
    LossDescent(
        name="gd_loss_descent",
        statement="gradient flow: L(t) is non-increasing",
        build=problem(n_train=15, width=40, activation="tanh", output_init="zero"),
        make_flow=lambda p: GradientFlow(p.model, p.x, p.y),
        horizon=100.0,
        save_at=(0.1, 0.3, 1.0, 2.0, 5.0, 10.0, 20.0, 35.0, 50.0, 70.0),
        # any increase of L is a violation: tol is rounding, for every method; fixed steps are well
        # inside the descent regime h < 2 / Lip(grad L)
        methods={
            **{m: MethodSetting(rtol=1e-4, tol=1e-12) for m in ADAPTIVE},
            "kernel_exponential": MethodSetting(rtol=1e-4, tol=1e-12),
            **{m: MethodSetting(step=1.0, tol=1e-12) for m in FIXED},
        },
    ),
    EulerStepLaw(
        name="ggn_euler",
        statement="an Euler step of size b/lam of the GN flow on a batch, eps = alpha/lam, is a GGN(lam, alpha) step",
        build=problem(n_train=10, width=30, activation="tanh", scaling="ntk", output_init="sign", seed=7),
        make_flow=lambda p: ggn_flow(p.model, p.x, p.y, lam=GGN_LAM, alpha=GGN_ALPHA),
        schedule=_ggn_schedule,
        update=_ggn_update,
        methods={"euler": MethodSetting(tol=1e-10)},
        excluded={m: ONLY_EULER for m in METHODS if m != "euler"},
    ),
    EulerStepLaw(
        name="euler_least_squares",
        statement="eps = 0: an Euler step of size h is h/N times the minimum-norm least-squares Gauss-Newton step",
        build=problem(
            n_train=10, width=20, activation="tanh", scaling="ntk", train="hidden", output_init="sign", seed=7
        ),
        make_flow=_undamped,
        schedule=_lstsq_schedule,
        update=_lstsq_update,
        methods={"euler": MethodSetting(tol=1e-10)},
        excluded={m: ONLY_EULER for m in METHODS if m != "euler"},
    ),
)

PROBLEMS: dict[str, ExactLaw] = {law.name: law for law in LAWS}
