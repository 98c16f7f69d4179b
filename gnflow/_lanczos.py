"""Lanczos iteration for the largest eigenpair of a symmetric positive definite operator.

It serves :class:`gnflow.damping.DampedGramSolver`, which finds lambda_min(A) as 1 / nu - p from the
largest eigenvalue nu of (A + p I)^{-1}. The steps run in blocks queued on the device; the stopping
tests of a block are made on the host after one read of its coefficients (:mod:`gnflow._host`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from gnflow import _host as host

__all__ = ["LanczosTop", "tridiagonal_eigh"]


class LanczosTop:
    """Lanczos with full reorthogonalization for the largest eigenpair of an SPD operator.

    :meth:`extend` queues a block of steps on the device and returns their coefficients
    (alpha_k, beta_k) as one tensor, read by the caller in one host read; :meth:`check` then makes
    the stopping test of every step of the block in order, on the host.

    Ritz values increase towards nu with the steps, so the iteration also stops as soon as one
    exceeds ``certain_above`` (the caller then only needs nu > certain_above).
    """

    def __init__(self, apply: Callable[[torch.Tensor], torch.Tensor], start: torch.Tensor, *, steps: int) -> None:
        self.apply = apply
        self.n = start.shape[0]
        self.steps = steps
        self.basis = torch.empty(steps, self.n, dtype=torch.float64, device=start.device)
        self.basis[0] = start / torch.linalg.vector_norm(start)
        self.alphas: list[float] = []
        self.betas: list[float] = []
        self.done = 0  # steps queued
        self.checked = 0  # steps tested on the host

    @property
    def exhausted(self) -> bool:
        """Whether all ``steps`` steps have been taken."""
        return self.done >= self.steps

    def extend(self, count: int) -> torch.Tensor:
        """Queue up to ``count`` more steps; their (alpha_k, beta_k), flattened, on the device."""
        count = min(count, self.steps - self.done)
        coefficients = torch.empty(count, 2, dtype=torch.float64, device=self.basis.device)
        for i, k in enumerate(range(self.done, self.done + count)):
            w = self.apply(self.basis[k])
            # full reorthogonalization, twice: the basis is short and the Ritz vector is reused
            q = self.basis[: k + 1]
            coefficients[i, 0] = q[k] @ w
            w -= q.T @ (q @ w)
            w -= q.T @ (q @ w)
            beta = torch.linalg.vector_norm(w)
            coefficients[i, 1] = beta
            if k + 1 < self.steps:
                # past the converged step beta may vanish: those steps are never used
                self.basis[k + 1] = w / beta
        self.done += count
        return coefficients.reshape(-1)

    def check(self, values: list[float], *, rtol: float, certain_above: float) -> tuple[float, torch.Tensor] | None:
        """The stopping test of each step whose coefficients ``values`` holds, in order.

        Returns (nu, unit Ritz vector) at the first step that passes, None if none does.
        """
        for i, k in enumerate(range(self.checked, self.done)):
            alpha_k, beta_k = values[2 * i], values[2 * i + 1]
            self.alphas.append(alpha_k)
            theta, s = tridiagonal_eigh(self.alphas, self.betas)
            nu, s_top = float(theta[-1]), s[:, -1]
            residual = beta_k * abs(float(s_top[-1]))
            # Kato--Temple: nu - theta <= r^2 / (theta - nu_2), with nu_2 <= theta_2 + r_2 once the
            # second Ritz pair has settled on the second eigenvalue
            below = float(theta[-2]) + beta_k * abs(float(s[-1, -2])) if k >= 1 else nu
            error = residual if below >= nu else min(residual, residual * residual / (nu - below))
            if error <= rtol * nu or nu > certain_above or k + 1 == self.n:
                vector = host.to_device(s_top, self.basis.device) @ self.basis[: k + 1]
                return nu, vector / torch.linalg.vector_norm(vector)
            if k + 1 < self.steps:
                self.betas.append(beta_k)
        self.checked = self.done
        return None


def tridiagonal_eigh(alphas: list[float], betas: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (ascending) and eigenvectors of the symmetric tridiagonal Lanczos matrix."""
    t = np.diag(np.asarray(alphas))
    if betas:
        off = np.asarray(betas[: len(alphas) - 1])
        t += np.diag(off, 1) + np.diag(off, -1)
    return np.linalg.eigh(t)
