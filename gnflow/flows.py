"""Vector fields over particles: the gradient flow and the Gauss--Newton flow.

Both are callables ``(t, weights) -> d weights / dt`` on states of shape (particle, component), as
torchdiffeq expects. With r = f(X) - y, g = r / N and A = J J^T:

    gradient flow:  dw/dt = -J^T g
    Gauss--Newton:  dw/dt = -J^T (A + eps(w) I)^{-1} g

The fields count their own evaluations (``nfe``) and remember the residual of the last state they
saw, so that the solver loop can read the train loss of an accepted state without another
forward pass.

Host synchronisation: the Gauss--Newton field synchronises anyway (its Cholesky status, Lanczos and
CG stopping tests are read on the host), and checks the residual for non-finite values at no extra
cost. The gradient field on a GPU does not check, so that an evaluation never waits for the device:
a non-finite state is caught once per step by the solver (torchdiffeq checks the state, and
:func:`gnflow.solve.integrate` the train loss of every accepted step). On the CPU the check is free and
is always made.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from gnflow.config import ConfigError
from gnflow.damping import (
    ConstantDamping,
    DampedGramSolver,
    EigminDamping,
    GramSolveError,
    RelativeDamping,
)
from gnflow.model import Linearization, ParticleModel

__all__ = ["Flow", "FlowError", "GaussNewtonFlow", "GradientFlow", "StateDiagnostics"]


class FlowError(RuntimeError):
    """The vector field cannot be evaluated (non-finite state or residual, singular solve)."""


@dataclass(frozen=True)
class StateDiagnostics:
    """Scalar measurements of one state.

    Attributes
    ----------
    train_loss:
        L = ||r||^2 / (2N) on the training data.
    gram_eigmin, gram_eigmax:
        Extreme eigenvalues of A = J J^T (float64).
    damping:
        eps(w) of the Gauss--Newton flow (NaN for the gradient flow).
    """

    train_loss: float
    gram_eigmin: float
    gram_eigmax: float
    damping: float


class Flow(ABC):
    """Common part of the particle flows: data, model, evaluation count, residual cache.

    Parameters
    ----------
    model:
        The particle model.
    x:
        Training inputs, shape (sample, d), in the state's dtype and device.
    y:
        Training labels, shape (sample,).
    """

    name = "flow"

    #: whether each evaluation checks the residual for non-finite values (a host synchronisation)
    check_finite: bool = True

    def __init__(self, model: ParticleModel, x: torch.Tensor, y: torch.Tensor, *, allow_tf32: bool = False) -> None:
        if x.ndim != 2 or y.ndim != 1 or x.shape[0] != y.shape[0]:
            raise ValueError(f"x must be (sample, d) and y (sample,), got {tuple(x.shape)} and {tuple(y.shape)}")
        self.model = model
        self.x = x
        self.y = y
        self.allow_tf32 = allow_tf32
        self.nfe = 0
        self._last_state: torch.Tensor | None = None
        self._last_residual: torch.Tensor | None = None

    @property
    def n_samples(self) -> int:
        """N, the number of training points."""
        return int(self.x.shape[0])

    def _linearize(self, weights: torch.Tensor) -> tuple[Linearization, torch.Tensor]:
        lin = self.model.linearize(weights, self.x)
        residual = lin.predict() - self.y
        if (self.check_finite or self.x.device.type == "cpu") and not bool(torch.isfinite(residual).all()):
            raise FlowError("non-finite network output: the state has diverged")
        self._last_state = weights
        self._last_residual = residual
        return lin, residual

    def restrict(self, index: torch.Tensor) -> Flow:
        """The same vector field on the training samples ``index`` only (a mini-batch).

        Parameters
        ----------
        index:
            Sample indices, shape (batch,), on the device of the data.

        Returns
        -------
        Flow
            A flow of the same kind and parameters (damping rule included) whose data are
            ``x[index]``, ``y[index]``, so that N becomes the batch size b. Its evaluation count
            starts at zero. Subclasses that keep data-dependent state must override this.
        """
        batch = copy.copy(self)
        batch.x = self.x[index]
        batch.y = self.y[index]
        batch.nfe = 0
        batch._last_state = None
        batch._last_residual = None
        return batch

    def residual(self, weights: torch.Tensor) -> torch.Tensor:
        """r = f(X) - y at ``weights``, shape (sample,)."""
        if weights is self._last_state and self._last_residual is not None:
            return self._last_residual
        return self.model.predict(weights, self.x) - self.y

    def train_loss(self, weights: torch.Tensor) -> float:
        """L = ||r||^2 / (2N) at ``weights``."""
        r = self.residual(weights).double()
        return float(r @ r) / (2 * self.n_samples)

    def __call__(self, t: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """d weights / dt at flow time t; weights and result have shape (particle, component)."""
        self.nfe += 1
        with _tf32(self.allow_tf32 and weights.is_cuda):
            lin, residual = self._linearize(weights)
            return -lin.vjp(self.function_space_direction(lin, residual)).to(weights.dtype)

    @abstractmethod
    def function_space_direction(self, lin: Linearization, residual: torch.Tensor) -> torch.Tensor:
        """The vector c with dw/dt = -J^T c, shape (sample,)."""

    def epsilon(self, gram: torch.Tensor, eigenvalues: torch.Tensor | None = None) -> float:
        """Damping used at a state with Gram matrix ``gram`` (NaN when the flow has none).

        ``eigenvalues`` (ascending, of ``gram``) may be passed when they are known already.
        """
        return float("nan")

    def preconditioner_spectrum(self, gram: torch.Tensor, eigenvalues: torch.Tensor) -> torch.Tensor:
        """Eigenvalues beta_k of B(A), where c = B(A) g is :meth:`function_space_direction`.

        Flows whose direction is a spectral function of A = Q diag(lambda) Q^T, B(A) =
        Q diag(beta) Q^T, define this; the kernel-exponential integrator
        (:mod:`gnflow.exponential`) needs it.

        Parameters
        ----------
        gram:
            A, shape (sample, sample), float64.
        eigenvalues:
            lambda_k of A in increasing order, shape (sample,), float64.

        Returns
        -------
        torch.Tensor
            beta_k, shape (sample,), float64.
        """
        raise ConfigError(
            "solver.method: 'kernel_exponential' needs a flow whose direction is a function of "
            f"the Gram matrix (gradient, gauss_newton); the {self.name} flow is not"
        )

    def diagnostics(self, weights: torch.Tensor) -> StateDiagnostics:
        """Train loss, extreme Gram eigenvalues and damping at ``weights``."""
        lin = self.model.linearize(weights, self.x)
        r = (lin.predict() - self.y).double()
        gram = lin.gram()
        eig = torch.linalg.eigvalsh(gram)
        return StateDiagnostics(
            train_loss=float(r @ r) / (2 * self.n_samples),
            gram_eigmin=float(eig[0]),
            gram_eigmax=float(eig[-1]),
            damping=self.epsilon(gram, eig),
        )


@contextmanager
def _tf32(enabled: bool) -> Iterator[None]:
    """Allow TF32 in CUDA float32 matrix products inside the block (restored afterwards)."""
    if not enabled:
        yield
        return
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous


class GradientFlow(Flow):
    """dw/dt = -J^T g = -grad_w L, with g = r / N."""

    name = "gradient"
    check_finite = False

    def function_space_direction(self, lin: Linearization, residual: torch.Tensor) -> torch.Tensor:
        """g = r / N."""
        return residual / self.n_samples

    def preconditioner_spectrum(self, gram: torch.Tensor, eigenvalues: torch.Tensor) -> torch.Tensor:
        """beta_k = 1 (B = I)."""
        return torch.ones_like(eigenvalues)


class GaussNewtonFlow(Flow):
    """dw/dt = -J^T (A + eps(w) I)^{-1} g, solved in float64 by Cholesky.

    Parameters
    ----------
    model, x, y:
        As for :class:`Flow`.
    damping:
        The rule eps(w): :class:`~gnflow.damping.EigminDamping`,
        :class:`~gnflow.damping.ConstantDamping` or :class:`~gnflow.damping.RelativeDamping`.
    allow_tf32:
        On CUDA, let float32 products (activations, J^T c) use TF32 tensor cores.

    Notes
    -----
    Each evaluation costs the two N x M x N Gram products and one Cholesky factorization; the
    ``eigmin`` damping finds lambda_min(A) from that factorization (see
    :class:`~gnflow.damping.DampedGramSolver`), warm-started from the previous evaluation.
    """

    name = "gauss_newton"

    def __init__(
        self,
        model: ParticleModel,
        x: torch.Tensor,
        y: torch.Tensor,
        damping: EigminDamping | ConstantDamping | RelativeDamping,
        *,
        allow_tf32: bool = False,
    ) -> None:
        super().__init__(model, x, y, allow_tf32=allow_tf32)
        self.damping = damping
        self.solver = DampedGramSolver(damping)
        self.last_epsilon: torch.Tensor | None = None

    def restrict(self, index: torch.Tensor) -> Flow:
        """The Gauss--Newton flow on the samples ``index``, with a damped solver of its own.

        The solver's warm start (shift and eigenvector from the previous evaluation) belongs to
        the full data set, so the batch flow starts a fresh one.
        """
        batch = super().restrict(index)
        assert isinstance(batch, GaussNewtonFlow)
        batch.solver = DampedGramSolver(self.damping)
        batch.last_epsilon = None
        return batch

    def function_space_direction(self, lin: Linearization, residual: torch.Tensor) -> torch.Tensor:
        """(A + eps I)^{-1} g in float64."""
        solved = self.solver(lin.gram(), residual.double() / self.n_samples)
        self.last_epsilon = solved.epsilon
        return solved.direction

    def epsilon(self, gram: torch.Tensor, eigenvalues: torch.Tensor | None = None) -> float:
        """eps(w) from the damping rule (from ``eigenvalues`` of ``gram`` when given, for eigmin)."""
        if eigenvalues is not None and isinstance(self.damping, EigminDamping):
            return max(self.damping.eps0, float(eigenvalues[0]))
        return float(self.damping.epsilon(gram))

    def preconditioner_spectrum(self, gram: torch.Tensor, eigenvalues: torch.Tensor) -> torch.Tensor:
        """beta_k = 1 / (lambda_k + eps(w)), the spectrum of (A + eps I)^{-1}.

        Raises
        ------
        GramSolveError
            If A + eps I is not positive definite (e.g. eps = 0 and A singular), as the
            Cholesky solve of :meth:`function_space_direction` would.
        """
        # eigmin reads lambda_min off the given spectrum instead of a second eigvalsh
        shifted = eigenvalues + self.epsilon(gram, eigenvalues)
        if not bool(shifted[0] > 0):
            raise GramSolveError(
                "the damped Gram matrix A + eps I is not positive definite "
                f"(smallest eigenvalue {float(shifted[0]):.3g}); "
                "increase flow.epsilon or use eigmin damping"
            )
        return 1.0 / shifted
