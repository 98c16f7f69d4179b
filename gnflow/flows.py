"""Vector fields over particles: the gradient flow and the Gauss--Newton flow.

Both are callables ``(t, weights) -> d weights / dt`` on states of shape (particle, component), as
torchdiffeq expects. With r = f(X) - y, g = r / N and A = J J^T:

    gradient flow:  dw/dt = -J^T g
    Gauss--Newton:  dw/dt = -J^T (A + eps(w) I)^{-1} g

Each flow kind is a :class:`Flow` subclass registered under its ``flow.kind`` name with
:func:`register_flow`; the class says how it is built from the ``[flow]`` section
(:meth:`Flow.from_config`), whether it is a second-order (Gauss--Newton type) field, whether it runs
as a schedule of Euler steps (:meth:`Flow.schedule`) and how a trajectory file describes it
(:meth:`Flow.describe`). A new flow is one more decorated class.

The fields remember the residual of the last state they saw, so that the solver loop can read the
train loss of an accepted state without another forward pass. Evaluations are counted by the
integration (:mod:`gnflow.solve`), once per run, not by the fields.

Host synchronisation (:mod:`gnflow._host`, which also counts the reads): the Gauss--Newton field
reads the device twice per evaluation in steady state (its Cholesky status with the first block of
Lanczos steps, and the first block of CG steps; see :class:`~gnflow.damping.DampedGramSolver`), and
the finiteness of the residual travels with the first read. The gradient field on a GPU reads
nothing, so that an evaluation never waits for the device: a non-finite state is caught once per
step by the solver (torchdiffeq checks the state, and :func:`gnflow.solve.integrate` the train loss
of every accepted step). On the CPU a read is free and the residual is always checked.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Self, TypeVar

import numpy as np
import torch

from gnflow import _host as host
from gnflow.config import KERNEL_EULER_METHODS, ConfigError, FlowConfig, RunConfig
from gnflow.damping import (
    DampedGramSolver,
    DampedSolveStats,
    Damping,
    GramSolveError,
    NonFiniteSolveError,
    make_damping,
)
from gnflow.model import Linearization, ParticleModel
from gnflow.registry import FLOW_KINDS

if TYPE_CHECKING:
    from gnflow.solve import StepSchedule

__all__ = [
    "Flow",
    "FlowDescription",
    "FlowError",
    "GaussNewtonFlow",
    "GradientFlow",
    "StateDiagnostics",
    "flow_kind",
    "register_flow",
]


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


@dataclass(frozen=True)
class FlowDescription:
    """How a trajectory file describes its flow (the texts of its global attributes).

    Attributes
    ----------
    flow:
        ``gnflow_flow``: the flow and its parameters, e.g. ``"gauss_newton (eigmin damping,
        epsilon=1e-07)"``.
    solver:
        ``gnflow_solver``: the method that integrates it and its tolerances or step size.
    title:
        ``title``: one line, e.g. ``"gnflow gauss_newton flow of a two-layer network of 5000
        particles"``.
    """

    flow: str
    solver: str
    title: str


class Flow(ABC):
    """Common part of the particle flows: data, model, residual cache.

    Parameters
    ----------
    model:
        The particle model.
    x:
        Training inputs, shape (sample, d), in the state's dtype and device.
    y:
        Training labels, shape (sample,).
    """

    #: the ``flow.kind`` name the class is registered under (:func:`register_flow`)
    name: ClassVar[str] = "flow"

    #: whether the field preconditions with the Gram matrix (Gauss--Newton type): building one
    #: for relu, which is not differentiable at 0, warns
    second_order: ClassVar[bool] = False

    #: the damping rule eps(w), for flows that solve with A + eps I (None: no damping)
    damping: Damping | None = None

    #: whether each evaluation checks the residual for non-finite values on a device (a host
    #: synchronisation; on the CPU the check is always made)
    check_finite: bool = True

    def __init__(self, model: ParticleModel, x: torch.Tensor, y: torch.Tensor, *, allow_tf32: bool = False) -> None:
        if x.ndim != 2 or y.ndim != 1 or x.shape[0] != y.shape[0]:
            raise ValueError(f"x must be (sample, d) and y (sample,), got {tuple(x.shape)} and {tuple(y.shape)}")
        self.model = model
        self.x = x
        self.y = y
        self.allow_tf32 = allow_tf32
        self._last_state: torch.Tensor | None = None
        self._last_residual: torch.Tensor | None = None

    @classmethod
    def from_config(
        cls, config: FlowConfig, model: ParticleModel, x: torch.Tensor, y: torch.Tensor, *, allow_tf32: bool = False
    ) -> Flow:
        """The flow of the ``[flow]`` section ``config`` on the training data ``x``, ``y``.

        Subclasses with parameters override it; the default suits flows without any.

        Parameters
        ----------
        config:
            The ``[flow]`` section, with ``config.kind == cls.name``.
        model:
            The particle model.
        x, y:
            Training inputs (sample, d) and labels (sample,), in the state's dtype and device.
        allow_tf32:
            Allow TF32 matrix products on CUDA (``compute.allow_tf32``).
        """
        return cls(model, x, y, allow_tf32=allow_tf32)

    @classmethod
    def schedule(cls, config: FlowConfig, n_samples: int, seed: int | np.random.SeedSequence) -> StepSchedule | None:
        """The fixed steps the flow runs as, or None (the default) when ``[solver]`` integrates it.

        A flow that returns a :class:`~gnflow.solve.StepSchedule` (GGN: mini-batches and step sizes
        b / lam) is integrated by the Euler method on that schedule, whatever ``solver.method``
        says.

        Parameters
        ----------
        config:
            The ``[flow]`` section.
        n_samples:
            N, the number of training samples.
        seed:
            Seed of the schedule's random draws (the run's ``batches`` stream).
        """
        return None

    @classmethod
    def describe(cls, config: RunConfig, n_train: int) -> FlowDescription:
        """The ``gnflow_flow``, ``gnflow_solver`` and ``title`` texts of a run of ``config``.

        Parameters
        ----------
        config:
            The resolved run config, with ``config.flow.kind == cls.name``.
        n_train:
            N, the number of training samples of the run.
        """
        solver = config.solver
        if solver.adaptive:
            solver_text = f"{solver.method} (rtol={solver.rtol:g}, atol={solver.atol:g})"
        elif solver.method in KERNEL_EULER_METHODS:
            tolerances = f"rtol={solver.rtol:g}, atol={solver.atol:g}"
            solver_text = f"{solver.method} (step_size={solver.step_size:g}, {tolerances})"
        else:
            solver_text = f"{solver.method} (step_size={solver.step_size:g})"
        title = f"gnflow {cls.name} flow of a two-layer network of {config.model.width} particles"
        return FlowDescription(flow=cls.name, solver=solver_text, title=title)

    @property
    def solve_stats(self) -> DampedSolveStats | None:
        """Work of the damped Gram solves so far (None for flows without a damped solve)."""
        return None

    @property
    def n_samples(self) -> int:
        """N, the number of training points."""
        return int(self.x.shape[0])

    def _linearize(self, weights: torch.Tensor) -> tuple[Linearization, torch.Tensor]:
        lin = self.model.linearize(weights, self.x)
        residual = lin.predict() - self.y
        if (self.check_finite or not host.synchronizes(residual)) and not host.read_bool(
            torch.isfinite(residual).all()
        ):
            raise FlowError("non-finite network output: the state has diverged")
        self._last_state = weights
        self._last_residual = residual
        return lin, residual

    def state_dict(self) -> dict[str, Any]:
        """What the field carries from one evaluation to the next (empty for memoryless fields).

        An integration writes it into its checkpoints and gives it back by
        :meth:`load_state_dict` on resume, so that the resumed run is bit-identical.
        """
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:  # noqa: B027 - optional hook
        """Continue from a state written by :meth:`state_dict`."""

    def restrict(self, index: torch.Tensor) -> Self:
        """The same vector field on the training samples ``index`` only (a mini-batch).

        Parameters
        ----------
        index:
            Sample indices, shape (batch,), on the device of the data.

        Returns
        -------
        Flow
            A flow of the same kind and parameters (damping rule included) whose data are
            ``x[index]``, ``y[index]``, so that N becomes the batch size b. Subclasses that keep
            data-dependent state must override this.
        """
        batch = copy.copy(self)
        batch.x = self.x[index]
        batch.y = self.y[index]
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
            "solver.method: 'kernel_exponential', 'kernel_etd3', 'kernel_etd4' and 'kernel_euler' need a flow whose "
            "direction is a "
            f"function of the Gram matrix (gradient, gauss_newton); the {self.name} flow is not"
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


FlowT = TypeVar("FlowT", bound=type[Flow])


def register_flow(cls: FlowT) -> FlowT:
    """Class decorator: register the :class:`Flow` subclass ``cls`` as ``flow.kind = cls.name``.

    Raises
    ------
    gnflow.registry.RegistryError
        If another flow holds the name.
    TypeError
        If ``cls`` is abstract or has no name of its own.
    """
    if getattr(cls, "__abstractmethods__", None):
        raise TypeError(f"register_flow: {cls.__qualname__} is abstract: {', '.join(sorted(cls.__abstractmethods__))}")
    if cls.name == Flow.name or not cls.name:
        raise TypeError(f"register_flow: {cls.__qualname__} needs a class attribute name (its flow.kind)")
    FLOW_KINDS.add(cls.name, cls)
    return cls


def flow_kind(name: str) -> type[Flow]:
    """The flow class registered as ``flow.kind = name``.

    Raises
    ------
    gnflow.registry.RegistryError
        ``unknown flow 'x'; allowed: gauss_newton, gradient, ggn`` when ``name`` is not registered.
    """
    return FLOW_KINDS.get(name)


@register_flow
class GaussNewtonFlow(Flow):
    """dw/dt = -J^T (A + eps(w) I)^{-1} g, solved in float64 by Cholesky.

    Parameters
    ----------
    model, x, y:
        As for :class:`Flow`.
    damping:
        The rule eps(w): a registered damping rule such as
        :class:`~gnflow.damping.EigminDamping`, :class:`~gnflow.damping.ConstantDamping` or
        :class:`~gnflow.damping.RelativeDamping`.
    allow_tf32:
        On CUDA, let float32 products (activations, J^T c) use TF32 tensor cores.

    Notes
    -----
    Each evaluation costs the two N x M x N Gram products and one Cholesky factorization; a rule
    that requires lambda_min(A) (``eigmin``) gets it from that factorization (see
    :class:`~gnflow.damping.DampedGramSolver`), warm-started from the previous evaluation.
    """

    name = "gauss_newton"
    second_order = True
    # the damped solve reads the finiteness of g = r / N with its first block: no read of its own
    check_finite = False
    damping: Damping

    def __init__(
        self,
        model: ParticleModel,
        x: torch.Tensor,
        y: torch.Tensor,
        damping: Damping,
        *,
        allow_tf32: bool = False,
    ) -> None:
        super().__init__(model, x, y, allow_tf32=allow_tf32)
        self.damping = damping
        self.solver = DampedGramSolver(damping)
        self.last_epsilon: torch.Tensor | None = None

    @classmethod
    def from_config(
        cls, config: FlowConfig, model: ParticleModel, x: torch.Tensor, y: torch.Tensor, *, allow_tf32: bool = False
    ) -> Flow:
        """The flow with the damping rule ``config.damping`` of parameter ``config.epsilon``."""
        return cls(model, x, y, make_damping(config.damping, config.epsilon), allow_tf32=allow_tf32)

    @classmethod
    def describe(cls, config: RunConfig, n_train: int) -> FlowDescription:
        """As :meth:`Flow.describe`, with the damping rule and its parameter in the flow text."""
        base = super().describe(config, n_train)
        epsilon = f"epsilon={config.flow.epsilon:g}"
        if config.flow.epsilon_scaling == "per_particle":
            epsilon += f" per particle (eps0 = {config.flow.epsilon / config.model.width:g})"
        text = f"{cls.name} ({config.flow.damping} damping, {epsilon})"
        return FlowDescription(flow=text, solver=base.solver, title=base.title)

    @property
    def solve_stats(self) -> DampedSolveStats:
        """Work of the damped Gram solves so far (Cholesky factorizations, Lanczos and CG steps)."""
        return self.solver.stats

    def state_dict(self) -> dict[str, Any]:
        """The warm start of the damped Gram solver (see :meth:`DampedGramSolver.state_dict`)."""
        return {"solver": self.solver.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue with the solver's warm start of :meth:`state_dict`."""
        if "solver" in state:
            self.solver.load_state_dict(state["solver"])

    def restrict(self, index: torch.Tensor) -> Self:
        """The Gauss--Newton flow on the samples ``index``, with a damped solver of its own.

        The solver's warm start (shift and eigenvector from the previous evaluation) belongs to
        the full data set, so the batch flow starts a fresh one.
        """
        batch = super().restrict(index)
        batch.solver = DampedGramSolver(self.damping)
        batch.last_epsilon = None
        return batch

    def function_space_direction(self, lin: Linearization, residual: torch.Tensor) -> torch.Tensor:
        """(A + eps I)^{-1} g in float64."""
        try:
            solved = self.solver(lin.gram(), residual.double() / self.n_samples)
        except NonFiniteSolveError:
            raise FlowError("non-finite network output: the state has diverged") from None
        self.last_epsilon = solved.epsilon
        return solved.direction

    def epsilon(self, gram: torch.Tensor, eigenvalues: torch.Tensor | None = None) -> float:
        """eps(w) from the damping rule, given lambda_min = ``eigenvalues[0]`` of ``gram`` when passed."""
        lambda_min = None if eigenvalues is None else eigenvalues[0]
        return float(self.damping.epsilon(gram, lambda_min=lambda_min))

    def preconditioner_spectrum(self, gram: torch.Tensor, eigenvalues: torch.Tensor) -> torch.Tensor:
        """beta_k = 1 / (lambda_k + eps(w)), the spectrum of (A + eps I)^{-1}.

        Raises
        ------
        GramSolveError
            If A + eps I is not positive definite (e.g. eps = 0 and A singular), as the
            Cholesky solve of :meth:`function_space_direction` would.
        """
        # a rule that needs lambda_min reads it off the given spectrum instead of a second eigvalsh
        shifted = eigenvalues + self.epsilon(gram, eigenvalues)
        if not bool(shifted[0] > 0):
            raise GramSolveError(
                "the damped Gram matrix A + eps I is not positive definite "
                f"(smallest eigenvalue {float(shifted[0]):.3g}); "
                "increase flow.epsilon or use eigmin damping"
            )
        return 1.0 / shifted


@register_flow
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
