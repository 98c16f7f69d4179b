"""Damping eps(w) of the Gauss--Newton flow and the damped Gram solve.

The Gauss--Newton field is dw/dt = -J^T (A + eps(w) I)^{-1} g with A = J J^T. The three damping
rules (eigmin, constant, relative) are small objects with one method, ``epsilon(gram)``; the
solve that uses them is :func:`solve_damped`. Everything here runs in float64 whatever the state dtype.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Protocol

import torch

__all__ = [
    "ConstantDamping",
    "Damping",
    "EigminDamping",
    "GramSolveError",
    "RelativeDamping",
    "make_damping",
    "solve_damped",
]


class GramSolveError(RuntimeError):
    """The damped Gram matrix A + eps I could not be factorized (not positive definite)."""


class Damping(Protocol):
    """A rule eps(w) evaluated from the Gram matrix A = J J^T at w."""

    name: ClassVar[str]

    def epsilon(self, gram: torch.Tensor) -> torch.Tensor:
        """eps(w) as a 0-d float64 tensor, from A of shape (sample, sample)."""
        ...


@dataclass(frozen=True)
class EigminDamping:
    """eps = max(eps0, lambda_min(A)) (Arbel et al.).

    While lambda_min(A) >= eps0 every gain lambda / (lambda + eps) of A (A + eps I)^{-1} lies in
    [1/2, 1), so the residual decays at least like exp(-t / (2N)) whatever the conditioning of A.
    """

    eps0: float = 1e-7
    name: ClassVar[str] = "eigmin"

    def epsilon(self, gram: torch.Tensor) -> torch.Tensor:
        """max(eps0, lambda_min(A))."""
        lam_min = torch.linalg.eigvalsh(gram)[0]
        return torch.clamp(lam_min, min=self.eps0)


@dataclass(frozen=True)
class ConstantDamping:
    """eps = eps0 (Levenberg--Marquardt with a fixed parameter; eps0 = 0 is undamped GN)."""

    eps0: float = 1e-7
    name: ClassVar[str] = "constant"

    def epsilon(self, gram: torch.Tensor) -> torch.Tensor:
        """eps0."""
        return torch.tensor(self.eps0, dtype=torch.float64, device=gram.device)


@dataclass(frozen=True)
class RelativeDamping:
    """eps = kappa * trace(A) / N, invariant to the overall scale of A (e.g. its 1/M factor)."""

    kappa: float = 1e-7
    name: ClassVar[str] = "relative"

    def epsilon(self, gram: torch.Tensor) -> torch.Tensor:
        """kappa times the mean eigenvalue of A."""
        return self.kappa * torch.diagonal(gram).mean()


def make_damping(kind: str, epsilon: float) -> EigminDamping | ConstantDamping | RelativeDamping:
    """The damping rule named ``kind`` (eigmin, constant, relative) with parameter ``epsilon``."""
    if epsilon < 0:
        raise ValueError(f"damping parameter must be >= 0, got {epsilon}")
    if kind == "eigmin":
        return EigminDamping(epsilon)
    if kind == "constant":
        return ConstantDamping(epsilon)
    if kind == "relative":
        return RelativeDamping(epsilon)
    raise ValueError(f"unknown damping {kind!r}; allowed: eigmin, constant, relative")


def solve_damped(gram: torch.Tensor, rhs: torch.Tensor, epsilon: torch.Tensor | float) -> torch.Tensor:
    """(A + eps I)^{-1} rhs in float64 by a Cholesky factorization.

    Parameters
    ----------
    gram:
        A, shape (sample, sample), symmetric positive semi-definite.
    rhs:
        Right-hand side, shape (sample,).
    epsilon:
        Damping eps >= 0.

    Raises
    ------
    GramSolveError
        If A + eps I is not numerically positive definite (e.g. eps = 0 and A singular).
    """
    a = gram.to(torch.float64)
    n = a.shape[0]
    damped = a + epsilon * torch.eye(n, dtype=torch.float64, device=a.device)
    factor, info = torch.linalg.cholesky_ex(damped)
    if int(info) != 0:
        raise GramSolveError(
            "the damped Gram matrix A + eps I is not positive definite "
            f"(Cholesky failed at column {int(info)}); increase flow.epsilon or use eigmin damping"
        )
    return torch.cholesky_solve(rhs.to(torch.float64)[:, None], factor)[:, 0]
