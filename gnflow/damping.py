"""Damping eps(w) of the Gauss--Newton flow and the damped Gram solve.

The Gauss--Newton field is dw/dt = -J^T (A + eps(w) I)^{-1} g with A = J J^T. A damping rule is a
small frozen class registered under its name (``flow.damping``) with :func:`register_damping`: it
is built from the ``flow.epsilon`` value, declares what it needs besides A (:attr:`Damping.requires`)
and computes eps from what it is given (:meth:`Damping.epsilon`). The solve that uses it is
:class:`DampedGramSolver`; everything here runs in float64 whatever the state dtype.

Built-in rules: ``eigmin`` (max(eps0, lambda_min(A)), Arbel et al.), ``constant`` (eps0) and
``relative`` (kappa * trace(A) / N). A new rule is one more decorated class here.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, TypeVar, cast

import torch

from gnflow import _host as host
from gnflow._lanczos import LanczosTop
from gnflow.registry import DAMPING_RULES

__all__ = [
    "DAMPING_HINT",
    "REQUIREMENTS",
    "ConstantDamping",
    "DampedGramSolver",
    "DampedSolve",
    "DampedSolveStats",
    "Damping",
    "EigminDamping",
    "GramSolveError",
    "LambdaMinDamping",
    "NonFiniteSolveError",
    "RelativeDamping",
    "cholesky_shifted",
    "make_damping",
    "register_damping",
    "solve_damped",
]

logger = logging.getLogger(__name__)

#: What a damping rule may require besides A: ``"lambda_min"``, the smallest eigenvalue of A,
#: which :class:`DampedGramSolver` finds by Lanczos from the Cholesky factor it needs anyway.
REQUIREMENTS: tuple[str, ...] = ("lambda_min",)


class GramSolveError(RuntimeError):
    """The damped Gram matrix A + eps I could not be factorized (not positive definite)."""


class Damping(Protocol):
    """A rule eps(w) evaluated from the Gram matrix A = J J^T at w.

    Attributes
    ----------
    name:
        The ``flow.damping`` value the rule is registered under.
    requires:
        Quantities of A the rule needs besides A itself, from :data:`REQUIREMENTS` (``()``: eps is
        known before the factorization, and a solve is one Cholesky).
    """

    name: ClassVar[str]
    requires: ClassVar[tuple[str, ...]]

    def epsilon(self, gram: torch.Tensor, lambda_min: torch.Tensor | float | None = None) -> torch.Tensor:
        """eps(w) as a 0-d float64 tensor, from A of shape (sample, sample).

        ``lambda_min`` (the smallest eigenvalue of A) is passed when it is known already; a rule
        that requires it computes it from A otherwise, and other rules ignore it.
        """
        ...


class LambdaMinDamping(Damping, Protocol):
    """A rule with ``requires = ("lambda_min",)``: what the Lanczos path of the solve needs to know."""

    @property
    def lambda_min_floor(self) -> float:
        """eps is the same for every lambda_min(A) <= this value (0 for a rule without such a plateau).

        The Lanczos iteration of :class:`DampedGramSolver` stops once lambda_min is certain to lie
        below it, and its first Cholesky shift is this value.
        """
        ...


RuleT = TypeVar("RuleT", bound=type)


def register_damping(cls: RuleT) -> RuleT:
    """Class decorator: register the damping rule ``cls`` under ``cls.name`` (``flow.damping``).

    The rule is built as ``cls(epsilon)`` from ``flow.epsilon`` by :func:`make_damping`.

    Raises
    ------
    gnflow.registry.RegistryError
        If the name is taken by another rule.
    TypeError
        If ``cls`` lacks ``name``, ``requires`` or ``epsilon``, requires something outside
        :data:`REQUIREMENTS`, or requires ``"lambda_min"`` without a ``lambda_min_floor``.
    """
    name = getattr(cls, "name", None)
    requires = getattr(cls, "requires", None)
    if not isinstance(name, str) or not isinstance(requires, tuple) or not callable(getattr(cls, "epsilon", None)):
        raise TypeError(f"damping rule {cls.__qualname__}: needs a name (str), requires (tuple) and epsilon()")
    unknown = [r for r in requires if r not in REQUIREMENTS]
    if unknown:
        raise TypeError(
            f"damping rule {name!r}: unknown requirement {unknown[0]!r}; allowed: {', '.join(REQUIREMENTS)}"
        )
    if "lambda_min" in requires and not hasattr(cls, "lambda_min_floor"):
        raise TypeError(f"damping rule {name!r}: requires lambda_min but defines no lambda_min_floor")
    DAMPING_RULES.add(name, cls)
    return cls


@register_damping
@dataclass(frozen=True)
class EigminDamping:
    """eps = max(eps0, lambda_min(A)) (Arbel et al.).

    While lambda_min(A) >= eps0 every gain lambda / (lambda + eps) of A (A + eps I)^{-1} lies in
    [1/2, 1), so the residual decays at least like exp(-t / (2N)) whatever the conditioning of A.
    """

    eps0: float = 1e-7
    name: ClassVar[str] = "eigmin"
    requires: ClassVar[tuple[str, ...]] = ("lambda_min",)

    @property
    def lambda_min_floor(self) -> float:
        """eps0: every lambda_min(A) <= eps0 gives eps = eps0."""
        return self.eps0

    def epsilon(self, gram: torch.Tensor, lambda_min: torch.Tensor | float | None = None) -> torch.Tensor:
        """max(eps0, lambda_min(A)), with lambda_min from ``eigvalsh`` unless given."""
        if lambda_min is None:
            lam_min = torch.linalg.eigvalsh(gram)[0]
        else:
            lam_min = torch.as_tensor(lambda_min, dtype=torch.float64)
        return torch.clamp(lam_min, min=self.eps0)


@register_damping
@dataclass(frozen=True)
class ConstantDamping:
    """eps = eps0 (Levenberg--Marquardt with a fixed parameter; eps0 = 0 is undamped GN)."""

    eps0: float = 1e-7
    name: ClassVar[str] = "constant"
    requires: ClassVar[tuple[str, ...]] = ()

    def epsilon(self, gram: torch.Tensor, lambda_min: torch.Tensor | float | None = None) -> torch.Tensor:
        """eps0 (filled on the device: no copy from the host)."""
        return torch.full((), self.eps0, dtype=torch.float64, device=gram.device)


@register_damping
@dataclass(frozen=True)
class RelativeDamping:
    """eps = kappa * trace(A) / N, invariant to the overall scale of A (e.g. its 1/M factor)."""

    kappa: float = 1e-7
    name: ClassVar[str] = "relative"
    requires: ClassVar[tuple[str, ...]] = ()

    def epsilon(self, gram: torch.Tensor, lambda_min: torch.Tensor | float | None = None) -> torch.Tensor:
        """kappa times the mean eigenvalue of A."""
        return self.kappa * torch.diagonal(gram).mean()


def make_damping(kind: str, epsilon: float) -> Damping:
    """The damping rule registered as ``kind`` (eigmin, constant, relative, ...) with parameter ``epsilon``.

    Raises
    ------
    ValueError
        If ``epsilon < 0``, or (:class:`gnflow.registry.RegistryError`) ``kind`` is not registered:
        ``unknown damping 'x'; allowed: eigmin, constant, relative``.
    """
    if epsilon < 0:
        raise ValueError(f"damping parameter must be >= 0, got {epsilon}")
    return DAMPING_RULES.get(kind)(epsilon)


def _damped_copy(gram: torch.Tensor, shift: torch.Tensor | float) -> torch.Tensor:
    damped = gram.clone()
    damped.diagonal().add_(shift)
    return damped


DAMPING_HINT = 'use flow.damping = "eigmin" or flow.epsilon > 0'
"""What to change in a run config when A + eps I cannot be solved (GGN names ``flow.alpha`` instead)."""

#: Lanczos steps per host read of :class:`DampedGramSolver` on a device: along dopri5 runs of the
#: default task at N = 200, M = 1000 (tau0 = 1 and 0.1) a solve needed 1 to 22 steps, so one
#: block nearly always holds them all
DEVICE_LANCZOS_BLOCK = 24

#: conjugate-gradient steps per host read on a device (the same runs needed 0 to 7, and 14 once,
#: at the cold first call)
DEVICE_CG_BLOCK = 8


class NonFiniteSolveError(GramSolveError):
    """The right-hand side of the damped solve has non-finite entries (the state has diverged)."""


def _singular(gram: torch.Tensor, lambda_min: float) -> bool:
    """Whether ``lambda_min`` is zero to the rounding of the eigenvalues of A (n * eps * max A_ii)."""
    scale = host.read_float(torch.diagonal(gram).abs().max()) if gram.numel() else 0.0
    return abs(lambda_min) <= 1e3 * gram.shape[0] * torch.finfo(torch.float64).eps * scale


def _factorization_error(column: int, shift: torch.Tensor | float, hint: str) -> GramSolveError:
    """The error of a Cholesky factorization of A + shift I that failed at ``column``."""
    value = host.read_float(shift) if isinstance(shift, torch.Tensor) else float(shift)
    if value == 0:
        return GramSolveError(
            f"the Gram matrix A is singular (Cholesky failed at column {column}) and eps = 0 leaves the "
            f"Gauss-Newton solve undamped; {hint}"
        )
    return GramSolveError(
        "the damped Gram matrix A + eps I is not positive definite "
        f"(Cholesky failed at column {column}, eps = {value:.3g}); {hint}"
    )


def _status(info: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """(Cholesky status, whether rhs is finite) as a float64 tensor of 2 entries, read together."""
    return torch.stack([info.to(torch.float64), torch.isfinite(rhs).all().to(torch.float64)])


def cholesky_shifted(gram: torch.Tensor, shift: torch.Tensor | float, *, hint: str = DAMPING_HINT) -> torch.Tensor:
    """Lower Cholesky factor of A + shift I, float64 (one host read: the factorization's status).

    Raises
    ------
    GramSolveError
        If A + shift I is not numerically positive definite; with shift = 0 the message says that
        A is singular, and ``hint`` what to change.
    """
    factor, info = torch.linalg.cholesky_ex(_damped_copy(gram.to(torch.float64), shift))
    column = host.read_int(info)
    if column != 0:
        raise _factorization_error(column, shift, hint)
    return factor


def solve_damped(
    gram: torch.Tensor, rhs: torch.Tensor, epsilon: torch.Tensor | float, *, hint: str = DAMPING_HINT
) -> torch.Tensor:
    """(A + eps I)^{-1} rhs in float64 by a Cholesky factorization (one host read).

    Parameters
    ----------
    gram:
        A, shape (sample, sample), symmetric positive semi-definite.
    rhs:
        Right-hand side, shape (sample,).
    epsilon:
        Damping eps >= 0 (a float, or a 0-d tensor that stays on its device).
    hint:
        What to change in the config, for the message of a failed solve.

    Raises
    ------
    GramSolveError
        If A + eps I is not numerically positive definite (e.g. eps = 0 and A singular).
    """
    factor = cholesky_shifted(gram, epsilon, hint=hint)
    return torch.cholesky_solve(rhs.to(torch.float64)[:, None], factor)[:, 0]


@dataclass
class DampedSolveStats:
    """Work done by a :class:`DampedGramSolver` since it was created.

    Attributes
    ----------
    calls:
        Damped solves.
    factorizations:
        Cholesky factorizations (one per call, plus retries and exact fallbacks).
    lanczos_steps:
        Applications of (A + p I)^{-1} by the Lanczos iteration for lambda_min(A), counting every
        step of a block (also those after the step that met the tolerance).
    cg_steps:
        Preconditioned conjugate-gradient steps of the solve with A + eps I, counted likewise.
    eigvalsh_fallbacks:
        Calls whose lambda_min came from a full eigendecomposition because Lanczos did not meet
        its tolerance within ``max_lanczos`` steps.
    """

    calls: int = 0
    factorizations: int = 0
    lanczos_steps: int = 0
    cg_steps: int = 0
    eigvalsh_fallbacks: int = 0


@dataclass
class DampedSolve:
    """Result of one damped solve: z = (A + eps I)^{-1} g and the eps used (0-d float64 tensor)."""

    direction: torch.Tensor
    epsilon: torch.Tensor


class DampedGramSolver:
    """z = (A + eps(A) I)^{-1} g for one damping rule, with one Cholesky factorization per call.

    The rule says what it needs (:attr:`Damping.requires`). Rules that require nothing, such as
    ``constant`` and ``relative`` damping, know eps before the factorization: one Cholesky of
    A + eps I and two triangular solves. Rules that require lambda_min(A), such as ``eigmin``
    damping, would need a full eigendecomposition at several times the cost of the Gram products.
    Instead, with eps0 the rule's :attr:`~LambdaMinDamping.lambda_min_floor`:

    1. factor A + p I = L L^T with the shift p = eps of the previous call (eps0 at the first);
    2. lambda_min(A) = 1 / nu - p, where nu is the largest eigenvalue of (A + p I)^{-1}, found by
       Lanczos with full reorthogonalization, started from the previous call's Ritz vector;
    3. eps = the rule's eps at lambda_min(A) (max(eps0, lambda_min(A)) for eigmin; Lanczos stops
       early once lambda_min < eps0 is certain); solve (A + eps I) z = g by conjugate gradients
       preconditioned with (A + p I)^{-1}. The preconditioned spectrum
       (lambda + eps) / (lambda + p) lies between 1 and (lambda_min + eps) / (lambda_min + p), which
       is within a few percent of 1 when eps changed little since the previous call, so a few steps
       reach rounding level. When eps = p the first step is already the exact Cholesky solve.

    Both iterations stop on rounding-level criteria, so eps and z agree with
    ``max(eps0, eigvalsh(A)[0])`` and ``solve_damped`` to rounding error amplified by the
    conditioning of A. Should Lanczos not converge within ``max_lanczos`` steps (a near-multiple
    smallest eigenvalue), lambda_min is taken from ``torch.linalg.eigvalsh`` and the event is
    counted in :attr:`stats`; CG likewise falls back to a Cholesky factorization of A + eps I.

    Host reads (see :mod:`gnflow._host`): the iterations run in blocks of steps queued on the
    device without reading anything; one read per block brings every step's stopping quantities to
    the host, where the tests are made step by step as before, and the result is that of the first
    step that meets them (the remaining steps of the block are wasted work). The Cholesky status
    and the finiteness of g travel with the first Lanczos block. A call therefore reads twice in
    steady state (the first Lanczos block, the first CG block) and once when eps = p; eps, the
    direction and the Ritz vector do not depend on the block sizes.

    The solver keeps (p, Ritz vector) between calls; :meth:`reset` forgets them.

    Parameters
    ----------
    damping:
        The damping rule.
    lanczos_rtol:
        Relative accuracy of nu = 1 / (lambda_min + p): Lanczos stops when the error bound
        min(r, r^2 / (nu - nu_2)) of its top Ritz value is below lanczos_rtol * nu, with r the
        residual norm of the Ritz pair and nu_2 bounded by the second Ritz value plus its residual
        (Kato--Temple). lambda_min then has relative error lanczos_rtol * (1 + p / lambda_min).
        Two eigenvalues closer than the tolerance are not told apart; eps is then correct to their
        distance.
    max_lanczos, max_cg:
        Step limits before the exact fallbacks.
    explicit_inverse:
        Apply (A + p I)^{-1} as a matrix--vector product with the inverse formed from the factor
        (about 2N^3/3 more flops per call) instead of two triangular solves per application.
        None (default): on CUDA devices, where a triangular solve with one right-hand side is a
        chain of small dependent kernels and dominates the Lanczos and CG steps; not on the CPU.
    lanczos_block, cg_block:
        Steps per host read of each iteration. 0 (default): :data:`DEVICE_LANCZOS_BLOCK` and
        :data:`DEVICE_CG_BLOCK` on a device, where a read waits for the device, and 1 on the CPU,
        where it costs nothing and the steps after convergence would be wasted work.
    hint:
        What to change in the run config when A + eps I is singular (:data:`DAMPING_HINT`).
    """

    def __init__(
        self,
        damping: Damping,
        *,
        lanczos_rtol: float = 1e-11,
        max_lanczos: int = 60,
        max_cg: int = 40,
        explicit_inverse: bool | None = None,
        lanczos_block: int = 0,
        cg_block: int = 0,
        hint: str = DAMPING_HINT,
    ) -> None:
        if lanczos_block < 0 or cg_block < 0:
            raise ValueError(f"block sizes must be >= 0 (0: by device), got {lanczos_block} and {cg_block}")
        self.damping = damping
        self.hint = hint
        self.explicit_inverse = explicit_inverse
        self.lanczos_rtol = lanczos_rtol
        self.max_lanczos = max_lanczos
        self.max_cg = max_cg
        self.lanczos_block = lanczos_block
        self.cg_block = cg_block
        self.stats = DampedSolveStats()
        self._shift: float | None = None
        self._vector: torch.Tensor | None = None

    def state_dict(self) -> dict[str, Any]:
        """The warm start (shift and Ritz vector of the previous call), for a checkpoint: a solver
        given it back by :meth:`load_state_dict` takes exactly the steps this one would."""
        return {"shift": self._shift, "vector": None if self._vector is None else self._vector.cpu()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from a warm start written by :meth:`state_dict` (tensors on the Gram's device
        are moved there at the next call)."""
        shift, vector = state.get("shift"), state.get("vector")
        self._shift = None if shift is None else float(shift)
        self._vector = None if vector is None else torch.as_tensor(vector, dtype=torch.float64)

    def reset(self) -> None:
        """Forget the warm start (shift and Ritz vector) of the previous call."""
        self._shift = None
        self._vector = None

    def __call__(self, gram: torch.Tensor, rhs: torch.Tensor) -> DampedSolve:
        """(A + eps I)^{-1} rhs and eps for A of shape (sample, sample), rhs of shape (sample,).

        Raises
        ------
        NonFiniteSolveError
            If rhs has non-finite entries.
        GramSolveError
            If A + eps I is not numerically positive definite.
        """
        a = gram.to(torch.float64)
        g = rhs.to(torch.float64)
        self.stats.calls += 1
        if "lambda_min" not in self.damping.requires:
            return self._solve_known(a, g)
        return self._solve_with_lambda_min(a, g, cast(LambdaMinDamping, self.damping))

    def _solve_known(self, a: torch.Tensor, g: torch.Tensor) -> DampedSolve:
        """One Cholesky of A + eps I with eps known beforehand; one host read."""
        eps = self.damping.epsilon(a).to(torch.float64)
        self.stats.factorizations += 1
        factor, info = torch.linalg.cholesky_ex(_damped_copy(a, eps))
        column, finite = host.read_values(_status(info, g))
        if not finite:
            raise NonFiniteSolveError("non-finite right-hand side of the damped Gram solve")
        if column != 0:
            raise _factorization_error(int(column), eps, self.hint)
        return DampedSolve(torch.cholesky_solve(g[:, None], factor)[:, 0], eps)

    # --- rules that require lambda_min (eigmin) --------------------------------------------------

    def _start_vector(self, a: torch.Tensor) -> torch.Tensor:
        """The previous call's Ritz vector, or a seeded random vector at the first call."""
        start = self._vector
        if start is not None and start.device != a.device:
            start = start.to(a.device, non_blocking=True)  # a warm start restored from a checkpoint
        if start is None or start.shape[0] != a.shape[0]:
            generator = torch.Generator(device="cpu").manual_seed(0)
            start = torch.randn(a.shape[0], generator=generator, dtype=torch.float64).to(a.device, non_blocking=True)
        return start

    def _solve_with_lambda_min(self, a: torch.Tensor, g: torch.Tensor, rule: LambdaMinDamping) -> DampedSolve:
        eps0 = rule.lambda_min_floor
        n = a.shape[0]
        on_device = host.synchronizes(a)
        explicit = on_device if self.explicit_inverse is None else self.explicit_inverse
        lanczos_block = self.lanczos_block or (DEVICE_LANCZOS_BLOCK if on_device else 1)
        cg_block = self.cg_block or (DEVICE_CG_BLOCK if on_device else 1)
        start = self._start_vector(a)
        p = max(eps0 if self._shift is None else self._shift, 0.0)
        floor: float | None = None
        for _ in range(40):
            # Cholesky of A + p I, and the first Lanczos block queued on its factor before the
            # status is known: one host read for both (the block is discarded if it failed)
            self.stats.factorizations += 1
            factor, info = torch.linalg.cholesky_ex(_damped_copy(a, p))
            apply_inverse = _inverse_operator(factor, explicit=explicit)
            lanczos = LanczosTop(apply_inverse, start, steps=min(self.max_lanczos, n))
            block = lanczos.extend(lanczos_block)
            column, finite, *values = host.read_values(torch.cat([_status(info, g), block]))
            if not finite:
                raise NonFiniteSolveError("non-finite right-hand side of the damped Gram solve")
            if column == 0:
                break
            if floor is None:
                floor = 1e-14 * host.read_float(torch.diagonal(a).mean())
            p = max(4.0 * p, floor)
        else:
            raise GramSolveError("the Gram matrix has non-finite entries or is not positive semi-definite")

        # once a Ritz value exceeds 1 / (eps0 + p), lambda_min < eps0 is certain and eps = eps0
        certain_above = 1.0 / (eps0 + p) if eps0 > 0 else math.inf
        found = lanczos.check(values, rtol=self.lanczos_rtol, certain_above=certain_above)
        while found is None and not lanczos.exhausted:
            values = host.read_values(lanczos.extend(lanczos_block))
            found = lanczos.check(values, rtol=self.lanczos_rtol, certain_above=certain_above)
        self.stats.lanczos_steps += lanczos.done
        if found is None:
            self.stats.eigvalsh_fallbacks += 1
            logger.debug("Lanczos did not converge in %d steps; lambda_min from eigvalsh", self.max_lanczos)
            lam_min = host.read_float(torch.linalg.eigvalsh(a)[0])
            self._vector = None
        else:
            nu, vector = found
            lam_min = 1.0 / nu - p
            self._vector = vector
        # the rule computes eps from the host value lambda_min: no read of the device
        eps = float(rule.epsilon(a, lambda_min=lam_min))
        if lam_min + eps <= 0.0:
            if _singular(a, lam_min):
                raise GramSolveError(
                    f"the Gram matrix A is singular (lambda_min = {lam_min:.3g}, zero to rounding) and eps = "
                    f"{eps:.3g} leaves the Gauss-Newton solve undamped; {self.hint}"
                )
            raise GramSolveError(
                f"the Gram matrix is not positive semi-definite (lambda_min = {lam_min:.3g}): A + eps I is singular"
            )
        self._shift = eps
        z0 = apply_inverse(g)
        # eps == p: the preconditioner solve is already exact
        direction = z0 if eps == p else self._pcg(a, g, eps, apply_inverse, z0, block=cg_block)
        return DampedSolve(direction, torch.full((), eps, dtype=torch.float64, device=a.device))

    def _pcg(
        self,
        a: torch.Tensor,
        g: torch.Tensor,
        eps: float,
        precondition: Callable[[torch.Tensor], torch.Tensor],
        x: torch.Tensor,
        *,
        block: int,
    ) -> torch.Tensor:
        """(A + eps I)^{-1} g by CG preconditioned with (A + p I)^{-1}, from the guess x.

        The steps run in blocks of ``block``; one host read per block brings, for each step, the
        quantities of the stopping tests (before the step: ||r||, ||x||; after it: r^T z), and the
        iterate of the first step that passes is returned.
        """
        # backward-error stopping test: ||r|| <= tol (||A + eps I|| ||x|| + ||g||), trace >= ||A||
        tol = 4.0 * torch.finfo(torch.float64).eps
        r = g - (a @ x + eps * x)
        zr = precondition(r)
        d = zr.clone()
        rz = r @ zr
        norms: list[torch.Tensor] | None = [torch.diagonal(a).sum(), torch.linalg.vector_norm(g)]
        norm_a = norm_g = 0.0
        taken = 0
        while taken < self.max_cg:
            count = min(block, self.max_cg - taken)
            iterates = [x]
            quantities = list(norms) if norms is not None else []
            for _ in range(count):
                quantities += [torch.linalg.vector_norm(r), torch.linalg.vector_norm(x)]
                ad = a @ d + eps * d
                step = rz / (d @ ad)
                x = x + step * d
                r = r - step * ad
                zr = precondition(r)
                rz_new = r @ zr
                d = zr + (rz_new / rz) * d
                rz = rz_new
                quantities.append(rz)
                iterates.append(x)
            quantities += [torch.linalg.vector_norm(r), torch.linalg.vector_norm(x)]
            values = host.read_values(torch.stack(quantities))
            if norms is not None:
                norm_a, norm_g = values[0] + eps, values[1]
                values = values[2:]
                norms = None
            self.stats.cg_steps += count
            taken += count
            for j in range(count + 1):
                r_norm, x_norm = values[3 * j], values[3 * j + 1]
                if r_norm <= tol * (norm_a * x_norm + norm_g):
                    return iterates[j]
                if j < count and values[3 * j + 2] <= 0.0:
                    return iterates[j + 1]
        logger.debug("CG did not converge in %d steps; direct Cholesky solve", self.max_cg)
        self.stats.factorizations += 1
        return solve_damped(a, g, eps)


def _inverse_operator(factor: torch.Tensor, *, explicit: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    """x -> (L L^T)^{-1} x, by two triangular solves or by the explicit inverse."""
    if explicit:
        inverse = torch.cholesky_inverse(factor)
        return lambda x: inverse @ x
    return lambda x: torch.cholesky_solve(x[:, None], factor)[:, 0]
