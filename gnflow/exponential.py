"""Kernel-exponential integrator: steps that are exact for the linearized (kernel) model.

The flows of gnflow have the form dw/dt = -J^T B(A) g with g = r / N, A = J J^T and B a
spectral function of A (B = I for the gradient flow, B = (A + eps I)^{-1} for Gauss--Newton).
Freeze J, A and B at the start w0 of a step and linearize the network there,
r(w) = r0 + J (w - w0). The residual then obeys the linear ODE

    dr/dt = -A B(A) r / N,      r(s) = Q diag(exp(-s mu_k / N)) Q^T r0,

with A = Q diag(lambda) Q^T, B(A) = Q diag(beta) Q^T and mu_k = lambda_k beta_k, and the weights
follow by integrating dw/dt = -J^T B r(s) / N in closed form:

    w(s) = w0 - J^T Q diag(phi_k(s)) Q^T r0,
    phi_k(s) = (s / N) beta_k phi1(-s mu_k / N) = (1 - exp(-s mu_k / N)) / lambda_k,

where phi1(z) = (e^z - 1) / z (so phi_k -> s beta_k / N as lambda_k -> 0). This is the exponential
Euler method with the Gauss--Newton linearization -J^T B J / N of the field: exact, for any s,
when J does not move (random features), first order in the rate of change of J otherwise.

Adaptive steps use step doubling. One step of size h gives w1; two steps of size h/2 (the second
one linearized again at the midpoint) give w2. The local error of w2 is estimated by
w2 - w1 in torchdiffeq's mixed norm, RMS((w2 - w1) / (atol + rtol max(abs(w0), abs(w2)))), and the
step is accepted when that is <= 1. The accepted state is the Richardson extrapolation
2 w2 - w1 (second order in h; still exact for a frozen J). The next step size is
h * clip(0.9 err^(-1/2), 0.2, 10). States at saved times inside a step come from the interpolant

    w(t0 + s) = w0 - J^T Q diag(phi_k(s)) Q^T r0 + (s / h)^2 (w_new - w1),

exact for a frozen J, second order otherwise, and equal to w_new at s = h. The derivation, the
error analysis and when to use the method are in ``docs/kernel_exponential.md``.

One evaluation (counted in :attr:`KernelExponentialSolver.nfe`) is one linearization: a forward
pass, the Gram matrix, its eigendecomposition (O(N^3), float64) and the spectrum of B. An
accepted step costs two evaluations and a rejected one costs one.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from gnflow import _blas as blas
from gnflow.flows import Flow, FlowError
from gnflow.model import Linearization

__all__ = [
    "SAFETY",
    "ExponentialStep",
    "FrozenKernel",
    "KernelExponentialSolver",
    "StepSizeUnderflow",
    "error_ratio",
    "exponential_factor",
    "freeze_kernel",
    "phi1",
    "power_factor",
]

logger = logging.getLogger(__name__)

SAFETY = 0.9
"""Safety factor of the step-size controller."""
MAX_GROWTH = 10.0
"""Largest factor by which the step size grows after an accepted step."""
MIN_SHRINK = 0.2
"""Smallest factor by which the step size shrinks after a step."""
ERROR_EXPONENT = 0.5
"""The estimated local error scales as h^2 (first-order method), hence err^(-1/2)."""

_PHI1_SERIES_BELOW = 1e-5


class StepSizeUnderflow(RuntimeError):
    """The step size fell below the resolution of the flow time."""


def phi1(z: torch.Tensor) -> torch.Tensor:
    """phi1(z) = (e^z - 1) / z elementwise, with phi1(0) = 1, accurate for small abs(z).

    Uses ``expm1`` and, for abs(z) < 1e-5, the series 1 + z/2 + z^2/6 (error below 1e-16).
    """
    small = z.abs() < _PHI1_SERIES_BELOW
    safe = torch.where(small, torch.ones_like(z), z)
    return torch.where(small, 1.0 + z * (0.5 + z / 6.0), torch.expm1(safe) / safe)


def exponential_factor(eigenvalues: torch.Tensor, multiplier: torch.Tensor, h: float, n_samples: int) -> torch.Tensor:
    """phi_k(h) = (h / N) beta_k phi1(-h lambda_k beta_k / N) = (1 - exp(-h mu_k / N)) / lambda_k.

    Parameters
    ----------
    eigenvalues:
        lambda_k of A, shape (sample,), float64, >= 0.
    multiplier:
        beta_k of B(A), shape (sample,), float64.
    h:
        Step size (flow time).
    n_samples:
        N.

    Returns
    -------
    torch.Tensor
        phi_k, shape (sample,), float64: the weights move by -J^T Q diag(phi) Q^T r0.
    """
    rate = eigenvalues * multiplier / n_samples  # mu_k / N, the decay rate of residual mode k
    return (h / n_samples) * multiplier * phi1(-h * rate)


def power_factor(
    eigenvalues: torch.Tensor, multiplier: torch.Tensor, lam: float, iterations: int, n_samples: int
) -> torch.Tensor:
    """psi_k = (lam / N) beta_k S_K(x_k): K Euler steps of size lam on the linearized model.

    With x_k = lam mu_k / N (mu_k = lambda_k beta_k) the residual mode k is multiplied by
    (1 - x_k) per step, and the weights move by -J^T Q diag(psi) Q^T r0 after K steps, where
    S_K(x) = sum_{j<K} (1 - x)^j = (1 - (1 - x)^K) / x. So psi_k = (1 - (1 - x_k)^K) / lambda_k,
    the discrete counterpart of :func:`exponential_factor` (which it becomes as lam -> 0 at
    K lam = h). For 0 < x < 1, S_K = -expm1(K log1p(-x)) / x (accurate for small x); S_K(0) = K;
    for x >= 1 (steps beyond the mode's monotone range) the power is taken directly, and for
    x > 2 it grows: the linearized iteration diverges.

    Parameters
    ----------
    eigenvalues:
        lambda_k of A, shape (sample,), float64, >= 0.
    multiplier:
        beta_k of B(A), shape (sample,), float64.
    lam:
        Step size of the Euler iterations (flow time).
    iterations:
        K >= 1, the number of iterations.
    n_samples:
        N.

    Returns
    -------
    torch.Tensor
        psi_k, shape (sample,), float64.
    """
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    x = lam * eigenvalues * multiplier / n_samples
    below = x < 1.0
    x_below = torch.where(below & (x > 0), x, torch.full_like(x, 0.5))
    s_below = -torch.expm1(iterations * torch.log1p(-x_below)) / x_below
    s_below = torch.where(x > 0, s_below, torch.full_like(x, float(iterations)))
    x_above = torch.where(below, torch.full_like(x, 2.0), x)
    s_above = (1.0 - torch.pow(1.0 - x_above, iterations)) / x_above
    return (lam / n_samples) * multiplier * torch.where(below, s_below, s_above)


@dataclass(frozen=True, eq=False)
class FrozenKernel:
    """The linearized model at one state: what a kernel-exponential step from it needs.

    Attributes
    ----------
    weights:
        The state w0, shape (particle, component).
    linearization:
        Derivatives of f(X) at w0 (J^T products).
    residual:
        r0 = f(X) - y at w0, shape (sample,), float64.
    eigenvalues, eigenvectors:
        A = Q diag(lambda) Q^T: lambda shape (sample,) (clipped at 0: A is positive
        semi-definite), Q shape (sample, sample), float64.
    multiplier:
        beta_k, the spectrum of B(A) on the eigenvectors of A, shape (sample,), float64.
    """

    weights: torch.Tensor
    linearization: Linearization
    residual: torch.Tensor
    eigenvalues: torch.Tensor
    eigenvectors: torch.Tensor
    multiplier: torch.Tensor

    @property
    def n_samples(self) -> int:
        """N."""
        return int(self.residual.shape[0])

    @property
    def train_loss(self) -> float:
        """L = ||r0||^2 / (2N)."""
        return float(self.residual @ self.residual) / (2 * self.n_samples)

    @property
    def fastest_rate(self) -> float:
        """max_k mu_k / N: the decay rate of the fastest residual mode (1 / flow time)."""
        return float((self.eigenvalues * self.multiplier).max()) / self.n_samples

    def step(self, h: float) -> torch.Tensor:
        """w0 - J^T Q diag(phi(h)) Q^T r0: the flow of the linearized model after time h.

        Returns the state, shape (particle, component), in the dtype of ``weights``.
        """
        factor = exponential_factor(self.eigenvalues, self.multiplier, h, self.n_samples)
        return self._move(factor)

    def iterate(self, lam: float, iterations: int) -> torch.Tensor:
        """w0 - J^T Q diag(psi) Q^T r0: ``iterations`` Euler steps of size ``lam`` of the
        linearized model (:func:`power_factor`); for one iteration, exactly one Euler step of the
        flow (up to rounding).

        Returns the state, shape (particle, component), in the dtype of ``weights``.
        """
        return self._move(power_factor(self.eigenvalues, self.multiplier, lam, iterations, self.n_samples))

    def _move(self, factor: torch.Tensor) -> torch.Tensor:
        coefficients = self.eigenvectors.T @ self.residual
        direction = self.eigenvectors @ (factor * coefficients)
        return self.weights - self.linearization.vjp(direction).to(self.weights.dtype)


def freeze_kernel(flow: Flow, weights: torch.Tensor) -> FrozenKernel:
    """Linearize ``flow`` at ``weights`` and diagonalize its Gram matrix (one evaluation).

    The caller counts the evaluation (:attr:`KernelExponentialSolver.nfe`).

    Raises
    ------
    FlowError
        If the network output is not finite.
    GramSolveError
        If the flow's B(A) does not exist at this state (Gauss--Newton with A + eps I singular).
    """
    lin = flow.model.linearize(weights, flow.x)
    residual = (lin.predict() - flow.y).double()
    if not bool(torch.isfinite(residual).all()):
        raise FlowError("non-finite network output: the state has diverged")
    gram = lin.gram()
    eigenvalues, eigenvectors = blas.eigh(gram)
    eigenvalues = eigenvalues.clamp(min=0.0)
    multiplier = flow.preconditioner_spectrum(gram, eigenvalues)
    return FrozenKernel(
        weights=weights,
        linearization=lin,
        residual=residual,
        eigenvalues=eigenvalues,
        eigenvectors=eigenvectors,
        multiplier=multiplier,
    )


@dataclass(eq=False)
class ExponentialStep:
    """An accepted step from t0 to t1, with its interpolant for states in between.

    Attributes
    ----------
    t0, t1:
        Flow times at the start and the end of the step.
    start:
        The frozen kernel at the start state.
    one_step:
        w1, the single kernel-exponential step of size t1 - t0, shape (particle, component); None
        until first needed when the method did not compute it.
    weights:
        The accepted state at t1, shape (particle, component).
    error_ratio:
        The estimated local error in units of the tolerance (<= 1).
    dense:
        The method's own continuous extension, theta in (0, 1) -> the state at t0 + theta h
        (kernel_etd4); None: the interpolant below.
    """

    t0: float
    t1: float
    start: FrozenKernel
    one_step: torch.Tensor | None
    weights: torch.Tensor
    error_ratio: float
    dense: Callable[[float], torch.Tensor] | None = None

    def interpolate(self, t: float) -> torch.Tensor:
        """State at flow time t in [t0, t1], shape (particle, component).

        w0 - J^T Q diag(phi(s)) Q^T r0 + (s/h)^2 (w_new - w1) with s = t - t0, h = t1 - t0:
        exact when J is frozen (then w_new = w1), second order otherwise.
        """
        if t >= self.t1:
            return self.weights
        s = t - self.t0
        if s <= 0.0:
            return self.start.weights
        if self.dense is not None:
            return self.dense(s / (self.t1 - self.t0))
        if self.one_step is None:
            self.one_step = self.start.step(self.t1 - self.t0)
        theta = s / (self.t1 - self.t0)
        return self.start.step(s) + theta * theta * (self.weights - self.one_step)


def error_ratio(w0: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, rtol: float, atol: float) -> float:
    """RMS((w2 - w1) / (atol + rtol max(abs(w0), abs(w2)))), torchdiffeq's norm, in float64."""
    w0, w1, w2 = w0.double(), w1.double(), w2.double()
    scale = atol + rtol * torch.maximum(w0.abs(), w2.abs())
    return float(((w2 - w1) / scale).pow(2).mean().sqrt())


class KernelExponentialSolver:
    """Adaptive kernel-exponential steps with step-doubling error control.

    Parameters
    ----------
    flow:
        A flow whose direction is a spectral function of A
        (:meth:`~gnflow.flows.Flow.preconditioner_spectrum`): gradient or Gauss--Newton.
    weights0:
        Initial state at t = 0, shape (particle, component).
    rtol, atol:
        Tolerances of the local error estimate.
    first_step:
        First step size; default N / max_k mu_k, the time scale of the fastest residual mode.

    Notes
    -----
    Call :meth:`attempt` until ``t`` reaches the horizon; each call is one accepted or rejected
    step. ``kernel`` is the frozen kernel at the current state (its train loss is that of the
    last accepted state); ``nfe`` counts the linearizations made (the first one included).
    """

    def __init__(
        self,
        flow: Flow,
        weights0: torch.Tensor,
        *,
        rtol: float,
        atol: float,
        first_step: float | None = None,
    ) -> None:
        if not (rtol > 0 and atol > 0):
            raise ValueError(f"rtol and atol must be > 0, got {rtol} and {atol}")
        self.flow = flow
        self.rtol = rtol
        self.atol = atol
        self.t = 0.0
        self.nfe = 0
        self.kernel = self._freeze(weights0)
        if first_step is None:
            rate = self.kernel.fastest_rate
            first_step = 1.0 / rate if rate > 0 else math.inf
        self.h = first_step

    def _freeze(self, weights: torch.Tensor) -> FrozenKernel:
        self.nfe += 1
        return freeze_kernel(self.flow, weights)

    error_exponent = ERROR_EXPONENT
    """The controller's exponent: the estimate is O(h^(1/exponent))."""

    def attempt(self, t_end: float) -> ExponentialStep | None:
        """Try one step towards ``t_end``; the accepted step, or None when it was rejected.

        Raises
        ------
        StepSizeUnderflow
            If t + h rounds to t.
        FlowError, GramSolveError
            If the flow cannot be linearized at a new state.
        """
        t0 = self.t
        t1 = t_end if self.h >= t_end - t0 else t0 + self.h
        if not t1 > t0:
            raise StepSizeUnderflow(f"step size underflow (h = {self.h:.3g} at t = {t0:.6g})")
        h = t1 - t0
        start = self.kernel
        weights, error, one_step = self._trial(start, h)
        if math.isfinite(error):
            growth = MAX_GROWTH if error == 0.0 else SAFETY * error ** (-self.error_exponent)
            growth = min(MAX_GROWTH, max(MIN_SHRINK, growth))
        else:
            growth = MIN_SHRINK
        if not error <= 1.0:
            self.h = h * min(growth, 1.0)
            logger.debug("rejected h=%.3g at t=%.6g (error ratio %.3g)", h, t0, error)
            return None
        self.kernel = self._freeze(weights)
        self.t = t1
        self.h = h * growth
        return ExponentialStep(
            t0=t0, t1=t1, start=start, one_step=one_step, weights=weights, error_ratio=error, dense=self._dense_output()
        )

    def _dense_output(self) -> Callable[[float], torch.Tensor] | None:
        """The continuous extension of the last trial step, where the method has one."""
        return None

    def _trial(self, start: FrozenKernel, h: float) -> tuple[torch.Tensor, float, torch.Tensor | None]:
        """The candidate state after a step of size h from ``start``, its error ratio, and the
        kernel-exponential step of size h (None when the method does not compute it)."""
        one_step = start.step(h)
        midpoint = self._freeze(start.step(0.5 * h))
        two_steps = midpoint.step(0.5 * h)
        error = error_ratio(start.weights, one_step, two_steps, self.rtol, self.atol)
        return 2.0 * two_steps - one_step, error, one_step
