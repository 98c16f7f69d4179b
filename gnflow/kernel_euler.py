"""Kernel-Euler: many Euler iterations at once, exact for the linearized (kernel) model.

The discrete methods of Arbel et al. (GD and GN with step lam) are Euler iterations
w_{k+1} = w_k + lam F(w_k) of a flow F(w) = -J^T B(A) r / N. Freeze J, A and B at w_k and the
residual of the linearized model after K iterations is Q diag((1 - lam mu_j / N)^K) Q^T r_k, the
weights move by -J^T Q diag(psi_j) Q^T r_k with psi_j = (1 - (1 - lam mu_j / N)^K) / lambda_j
(:func:`gnflow.exponential.power_factor`). A block of K iterations therefore costs one
linearization (forward pass, Gram matrix, its eigendecomposition) instead of K field
evaluations, and is exact for every K when J does not move (random features); otherwise its
error is first order in the motion of J over the block.

The block length is chosen like the step of :class:`~gnflow.exponential.KernelExponentialSolver`:
one block of K iterations gives w1, two blocks of floor(K/2) and K - floor(K/2) iterations (the
second linearized again) give w2; the block is accepted when RMS((w2 - w1) / (atol + rtol
max(abs(w0), abs(w2)))) <= 1, and the accepted state is 2 w2 - w1. Blocks of one or two
iterations are the Euler iterations themselves (each half is one linearized step, exact up to
rounding): they are always accepted, and the accepted state is w2. The next block has
K clip(0.9 err^(-1/2), 0.2, 10) iterations (at least 1; two after a single iteration, which has
no estimate). So the method falls back to plain iterations where the kernel moves fast (a
catapult, a divergence beyond the stability limit lam lambda_max / N > 2) and takes long blocks
where it is frozen. Flow times are always multiples of lam: t = lam x (iterations done).

States inside a block, at iteration j of K, come from the block's interpolant
w0 - J^T Q diag(psi(j)) Q^T r0 + (j / K)^2 (w_new - w1), exact for a frozen J and equal to w_new
at j = K; at flow times between two iterations the state is linear between them, as for the
Euler method.

One evaluation (counted in :attr:`KernelEulerSolver.nfe`) is one linearization. An accepted block
of K >= 2 iterations costs two, a rejected one one, a single iteration one.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch

from gnflow.exponential import (
    ERROR_EXPONENT,
    MAX_GROWTH,
    MIN_SHRINK,
    SAFETY,
    FrozenKernel,
    error_ratio,
    freeze_kernel,
)
from gnflow.flows import Flow

__all__ = ["KernelEulerBlock", "KernelEulerSolver"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class KernelEulerBlock:
    """An accepted block from iteration k0 to k1 = k0 + K, with its interpolant.

    Attributes
    ----------
    k0, k1:
        Iterations done before and after the block.
    lam:
        Step size of one iteration.
    start:
        The frozen kernel at the start state.
    correction:
        w_new - w1 (zero-sized when the block's states are the iterations themselves), shape
        (particle, component) or None.
    weights:
        The accepted state at k1, shape (particle, component).
    error_ratio:
        The estimated error of w1 in units of the tolerance (NaN for a single iteration).
    """

    k0: int
    k1: int
    lam: float
    start: FrozenKernel
    correction: torch.Tensor | None
    weights: torch.Tensor
    error_ratio: float

    def state(self, j: int) -> torch.Tensor:
        """State after ``j`` iterations of the block (0 <= j <= K), shape (particle, component)."""
        n = self.k1 - self.k0
        if j >= n:
            return self.weights
        if j <= 0:
            return self.start.weights
        w = self.start.iterate(self.lam, j)
        if self.correction is None:
            return w
        theta = j / n
        return w + theta * theta * self.correction

    def interpolate(self, t: float) -> torch.Tensor:
        """State at flow time t in [lam k0, lam k1]: at an iteration, the block's state there;
        between two iterations, linear between them."""
        position = t / self.lam - self.k0
        nearest = round(position)
        if abs(position - nearest) <= 1e-9 * max(1.0, abs(position)):
            return self.state(nearest)
        lower = math.floor(position)
        a, b = self.state(lower), self.state(lower + 1)
        return a + (position - lower) * (b - a)


class KernelEulerSolver:
    """Euler iterations of step ``lam`` of ``flow``, taken in adaptive blocks (see the module).

    Parameters
    ----------
    flow:
        A flow whose direction is a spectral function of A (gradient or Gauss--Newton).
    weights0:
        State after ``k`` = 0 iterations, shape (particle, component).
    lam:
        Step size (flow time per iteration), > 0.
    iterations:
        Total number of iterations to the horizon, >= 1.
    rtol, atol:
        Tolerances of the block's error estimate.
    first_block:
        Iterations of the first block (default 1: start with plain iterations and let the
        estimate lengthen the blocks).
    stop_loss:
        The train loss of the run's early stop (0 = none): a block ends no later than the first
        iteration at which the linearized model's train loss is <= it, so that a run stops within
        about one iteration of where the iterations themselves would.
    """

    def __init__(
        self,
        flow: Flow,
        weights0: torch.Tensor,
        *,
        lam: float,
        iterations: int,
        rtol: float,
        atol: float,
        first_block: int = 1,
        stop_loss: float = 0.0,
    ) -> None:
        if not (math.isfinite(lam) and lam > 0):
            raise ValueError(f"lam must be a finite number > 0, got {lam}")
        if iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {iterations}")
        if not (rtol > 0 and atol > 0):
            raise ValueError(f"rtol and atol must be > 0, got {rtol} and {atol}")
        self.flow = flow
        self.lam = float(lam)
        self.iterations = int(iterations)
        self.rtol = rtol
        self.atol = atol
        self.k = 0
        self.nfe = 0
        self.block = max(1, int(first_block))
        self.stop_loss = float(stop_loss)
        self.kernel = self._freeze(weights0)

    def _freeze(self, weights: torch.Tensor) -> FrozenKernel:
        self.nfe += 1
        return freeze_kernel(self.flow, weights)

    @property
    def t(self) -> float:
        """Flow time of the current state, lam x iterations done."""
        return self.lam * self.k

    @property
    def finished(self) -> bool:
        """Whether every iteration is done."""
        return self.k >= self.iterations

    def _iterations_to_stop(self, kernel: FrozenKernel) -> int:
        """The first j >= 1 at which the linearized train loss from ``kernel`` is <= the stop
        loss (the number of iterations left when there is no stop or it is not reached).

        The linearized loss after j iterations is sum_k c_k^2 (1 - x_k)^(2j) / (2N) with
        c = Q^T r0: non-increasing in j while every x_k <= 2, so a bisection finds j.
        """
        left = self.iterations - self.k
        if self.stop_loss <= 0 or left <= 1:
            return left
        x = self.lam * kernel.eigenvalues * kernel.multiplier / kernel.n_samples
        if bool((x > 2.0).any()):
            return left  # a growing mode: the linearized loss does not fall monotonically
        c2 = (kernel.eigenvectors.T @ kernel.residual).pow(2)
        base = (1.0 - x).abs()

        def loss(j: int) -> float:
            return float((c2 * base.pow(2 * j)).sum()) / (2 * kernel.n_samples)

        if loss(left) > self.stop_loss:
            return left
        lo, hi = 0, left  # loss(lo) > stop (lo = 0: the current state has not stopped), loss(hi) <= stop
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if loss(mid) <= self.stop_loss:
                hi = mid
            else:
                lo = mid
        return max(hi, 1)

    def attempt(self) -> KernelEulerBlock | None:
        """Try one block; the accepted block, or None when it was rejected.

        Raises
        ------
        FlowError, GramSolveError
            If the flow cannot be linearized at a new state (for example a diverged one).
        """
        start = self.kernel
        n = min(self.block, self.iterations - self.k, self._iterations_to_stop(start))
        if n == 1:
            weights = start.iterate(self.lam, 1)
            self.kernel = self._freeze(weights)
            self.k += 1
            self.block = 2
            return KernelEulerBlock(self.k - 1, self.k, self.lam, start, None, weights, math.nan)
        half = n // 2
        one_block = start.iterate(self.lam, n)
        midpoint = self._freeze(start.iterate(self.lam, half))
        two_blocks = midpoint.iterate(self.lam, n - half)
        error = error_ratio(start.weights, one_block, two_blocks, self.rtol, self.atol)
        if math.isfinite(error):
            growth = MAX_GROWTH if error == 0.0 else SAFETY * error ** (-ERROR_EXPONENT)
            growth = min(MAX_GROWTH, max(MIN_SHRINK, growth))
        else:
            growth = MIN_SHRINK
        exact = n == 2  # two linearized single iterations: the Euler iterations themselves
        if not (exact or error <= 1.0):
            self.block = max(1, math.floor(n * min(growth, 1.0)))
            logger.debug("rejected a block of %d iterations at k=%d (error ratio %.3g)", n, self.k, error)
            return None
        if exact:
            weights, correction = two_blocks, None
        else:
            weights = 2.0 * two_blocks - one_block
            correction = weights - one_block
        self.kernel = self._freeze(weights)
        k0 = self.k
        self.k += n
        self.block = max(1, math.floor(n * growth))
        return KernelEulerBlock(k0, self.k, self.lam, start, correction, weights, error)
