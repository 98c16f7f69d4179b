"""Exponential Runge--Kutta steps of third and fourth order on the kernel splitting
(``solver.method = "kernel_etd3"`` and ``"kernel_etd4"``).

Write the flow dw/dt = F(w) = -J^T B(A) r / N, from the state w_n of a step, as

    dv/dt = L v + G(v),     v = w - w_n,     L = -J_n^T B_n J_n / N,     G(v) = F(w_n + v) - L v,

where L is the Gauss--Newton linearization of the field at w_n (the frozen kernel of
:mod:`gnflow.exponential`) and G the rest, which is constant, G = F(w_n), when J does not move
(random features). Functions of L act on a weight-space vector x through the eigendecomposition
A_n = Q diag(lambda) Q^T alone: with mu = lambda beta the nonzero eigenvalues of -N L,

    f(L) x = f(0) x - (1 / N) J_n^T Q diag(beta (f(-mu / N) - f(0)) / (-mu / N)) Q^T (J_n x),

one product J_n x and one J_n^T; vectors are kept as ``dense + J_n^T q`` so that most products
are N x N.

A step of size h is Cox and Matthews' ETD3RK (J. Comput. Phys. 176, 2002), with the phi functions
phi_k(z) = sum_j z^j / (j + k)! taken at h L:

    a  = (h/2) phi_1(hL/2) G(0)                            (the kernel-exponential half step)
    b  = h phi_1(hL) (2 G(a) - G(0))
    v3 = h [ (phi_1 - 3 phi_2 + 4 phi_3) G(0) + 4 (phi_2 - 2 phi_3) G(a) + (4 phi_3 - phi_2) G(b) ]

third order, with the embedded second-order solution v2 = h [phi_1 G(0) + 2 phi_2 (G(a) - G(0))]
(G interpolated linearly through s = 0 and s = h/2). Their difference,

    v3 - v2 = h (4 phi_3 - phi_2)(hL) (G(0) - 2 G(a) + G(b)),

is a second difference of G: O(h^3), and zero when J does not move, so the step is exact for
random features at any h (as kernel_exponential). The state w_n + v3 is accepted when that estimate
is <= 1 in torchdiffeq's mixed norm, and the next step size is h clip(0.9 err^(-1/3), 0.2, 10).

One step costs one linearization at w_n (forward pass, Gram matrix, eigendecomposition), two field
evaluations F(w_n + a) and F(w_n + b), and a few products J_n x and J_n^T q. For the gradient
flow a field evaluation is a gradient (a fraction of a linearization); for Gauss--Newton it is a
Gram solve, so this method pays mainly on long gradient flows (``docs/kernel_exponential.md``).
``kernel_etd4`` (:class:`KernelETD4Solver`) is Krogstad's fourth-order ETDRK4-B on the same splitting,
with three field evaluations per step and the same second-order embedded estimate: the same
steps for a given tolerance as kernel_etd3, about ten times more accurate.

States inside a step come from the interpolant of :class:`gnflow.exponential.ExponentialStep`:
the kernel-exponential flow from w_n plus (s/h)^2 times the difference to the accepted state.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from gnflow.exponential import FrozenKernel, KernelExponentialSolver, error_ratio

__all__ = ["ETD3_ERROR_EXPONENT", "KernelETD3Solver", "KernelETD4Solver", "phi_functions"]

logger = logging.getLogger(__name__)

ETD3_ERROR_EXPONENT = 1.0 / 3.0
"""The error estimate v3 - v2 is O(h^3), hence err^(-1/3) in the step-size controller."""

_SERIES_BELOW = 1.0
_SERIES_TERMS = 24


def phi_functions(z: torch.Tensor, k_max: int) -> list[torch.Tensor]:
    """[phi_0(z), ..., phi_k_max(z)] elementwise for real z <= 0 (phi_0 = exp).

    phi_k(z) = sum_j z^j / (j + k)!. For abs(z) < 1 the series (24 terms: error below 1e-18);
    otherwise the recursion phi_{k+1} = (phi_k - 1/k!) / z from phi_0 = e^z, which loses at most
    a factor abs(1/z) <= 1 per level there.
    """
    small = z.abs() < _SERIES_BELOW
    zs = torch.where(small, z, torch.zeros_like(z))
    zl = torch.where(small, -torch.ones_like(z), z)
    out = []
    large = torch.exp(zl)
    for k in range(k_max + 1):
        if k > 0:
            large = (large - 1.0 / math.factorial(k - 1)) / zl
        series = torch.zeros_like(z)
        for j in reversed(range(_SERIES_TERMS)):
            series = series * zs + 1.0 / math.factorial(j + k)
        out.append(torch.where(small, series, large))
    return out


@dataclass
class _Vector:
    """dense + J_n^T Q-space part: the weight-space vector ``dense + J^T q`` and its image J x."""

    dense: torch.Tensor | None  # (particle, component) or None (zero)
    q: torch.Tensor  # (sample,), float64
    image: torch.Tensor  # J_n (dense + J^T q), (sample,), float64


class KernelETD3Solver(KernelExponentialSolver):
    """Adaptive ETD3RK steps on the kernel splitting, with the embedded second-order estimate.

    The interface, the parameters and the step-size control are those of
    :class:`gnflow.exponential.KernelExponentialSolver` (call :meth:`attempt` until ``t`` reaches
    the horizon); the trial step and the controller's exponent (1/3) differ. ``nfe`` counts
    linearizations plus field evaluations; ``linearizations`` and ``field_evaluations`` count each.
    """

    error_exponent = ETD3_ERROR_EXPONENT
    field_evaluations = 0

    @property
    def nfe(self) -> int:
        """Linearizations plus field evaluations."""
        return self.linearizations + self.field_evaluations

    @nfe.setter
    def nfe(self, value: int) -> None:  # the base class counts linearizations through nfe
        self.linearizations = value - self.field_evaluations

    def _field(self, weights: torch.Tensor) -> torch.Tensor:
        self.field_evaluations += 1
        return self.flow(torch.zeros((), dtype=torch.float64), weights)

    def _trial(self, start: FrozenKernel, h: float) -> tuple[torch.Tensor, float, None]:
        weights, error = self._etd3(start, h)
        return weights, error, None

    def _etd3(self, kernel: FrozenKernel, h: float) -> tuple[torch.Tensor, float]:
        """The ETD3RK state w_n + v3 and the error ratio of v3 - v2."""
        s = _Splitting(self, kernel)
        n, beta = s.n, s.beta

        # G(0) = F(w_n) = -J^T Q diag(beta) Q^T r / N
        g0 = s.remainder_at_start(kernel.residual)

        # a = (h/2) phi_1(hL/2) G(0): f(0) = h/2, and the divided difference (h/2)^2 phi_2
        half = phi_functions(-0.5 * h * s.mu_n, 2)
        qa = 0.5 * h * g0.q - (0.25 * h * h / n) * s.spectral(beta * half[2], g0.image)
        a = _Vector(dense=None, q=qa, image=s.gram_times(qa))
        ga, image_fa = s.remainder_and_field_image(a)

        # b = h phi_1(hL) (2 G(a) - G(0))
        full = phi_functions(-h * s.mu_n, 4)
        x_q = 2.0 * ga.q - g0.q
        x_image = 2.0 * ga.image - g0.image
        assert ga.dense is not None
        qb = h * x_q - (h * h / n) * s.spectral(beta * full[2], x_image)
        dense_b = (2.0 * h) * ga.dense
        b = _Vector(dense=dense_b, q=qb, image=(2.0 * h) * image_fa + s.gram_times(qb))
        gb, _ = s.remainder_and_field_image(b)
        assert gb.dense is not None

        # v3 = h [c0(hL) G(0) + ca(hL) G(a) + cb(hL) G(b)]; f(0) = h (1/6, 2/3, 1/6) (Simpson) and the
        # divided differences h^2 (phi_2 - 3 phi_3 + 4 phi_4, 4 phi_3 - 8 phi_4, 4 phi_4 - phi_3)
        p2, p3, p4 = full[2], full[3], full[4]
        c0, ca, cb = p2 - 3.0 * p3 + 4.0 * p4, 4.0 * p3 - 8.0 * p4, 4.0 * p4 - p3
        basis = s.basis
        kernel_part = (
            -(h * h / n)
            * basis
            @ (beta * (c0 * (basis.T @ g0.image) + ca * (basis.T @ ga.image) + cb * (basis.T @ gb.image)))
        )
        v3 = _Vector(
            dense=h * ((2.0 / 3.0) * ga.dense + (1.0 / 6.0) * gb.dense),
            q=h * ((1.0 / 6.0) * g0.q + (2.0 / 3.0) * ga.q + (1.0 / 6.0) * gb.q) + kernel_part,
            image=torch.zeros_like(g0.q),  # not needed
        )
        # v3 - v2 = h (4 phi_3 - phi_2)(hL) D, D = G(0) - 2 G(a) + G(b): f(0) = h/6, divided
        # difference h^2 (4 phi_4 - phi_3)
        d_q = g0.q - 2.0 * ga.q + gb.q
        d_image = g0.image - 2.0 * ga.image + gb.image
        err_q = (h / 6.0) * d_q - (h * h / n) * s.spectral(beta * (4.0 * p4 - p3), d_image)
        err = s.lin.vjp(err_q).to(s.w0.dtype) + (h / 6.0) * (gb.dense - 2.0 * ga.dense)
        new = s.weights(v3)
        return new, error_ratio(s.w0, new - err, new, self.rtol, self.atol)


# ---- the vector algebra of the kernel splitting ---------------------------------------------------


class _Splitting:
    """The linear algebra of one step on the kernel splitting: functions of L on
    :class:`_Vector` (``dense + J_n^T q`` with its image J_n x), linear combinations, the map back
    to weights, and the remainder G (kernel_etd3 and kernel_etd4 alike)."""

    def __init__(self, solver: KernelETD3Solver, kernel: FrozenKernel) -> None:
        self.solver = solver
        self.n = kernel.n_samples
        self.lam, self.basis, self.beta = kernel.eigenvalues, kernel.eigenvectors, kernel.multiplier
        self.mu_n = self.lam * self.beta / self.n  # L's eigenvalues are -mu_n
        self.lin = kernel.linearization
        self.w0 = kernel.weights

    def spectral(self, c: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """Q diag(c) Q^T image."""
        return self.basis @ (c * (self.basis.T @ image))

    def gram_times(self, q: torch.Tensor) -> torch.Tensor:
        """A_n q = Q diag(lambda) Q^T q."""
        return self.spectral(self.lam, q)

    def apply(self, f0: float, divided: torch.Tensor, x: _Vector) -> _Vector:
        """f(L) x for the f with f(0) = ``f0`` and (f(-mu_n) - f(0)) / (-mu_n) = ``divided``:
        f(0) x - (1/N) J^T Q diag(beta divided) Q^T (J x); its image J f(L) x is
        f(0) J x - Q diag(mu_n divided) Q^T (J x), with no product with J."""
        return _Vector(
            dense=None if x.dense is None else f0 * x.dense,
            q=f0 * x.q - self.spectral(self.beta * divided, x.image) / self.n,
            image=f0 * x.image - self.spectral(self.mu_n * divided, x.image),
        )

    @staticmethod
    def combine(*terms: tuple[float, _Vector]) -> _Vector:
        """sum_i c_i x_i."""
        dense: torch.Tensor | None = None
        q = torch.zeros_like(terms[0][1].q)
        image = torch.zeros_like(terms[0][1].image)
        for c, x in terms:
            if x.dense is not None:
                dense = c * x.dense if dense is None else dense + c * x.dense
            q = q + c * x.q
            image = image + c * x.image
        return _Vector(dense=dense, q=q, image=image)

    def weights(self, v: _Vector) -> torch.Tensor:
        """w_n + v as weights, shape (particle, component)."""
        out = self.w0 + self.lin.vjp(v.q).to(self.w0.dtype)
        return out if v.dense is None else out + v.dense

    def remainder_and_field_image(self, v: _Vector) -> tuple[_Vector, torch.Tensor]:
        """G(v) = F(w_n + v) - L v, with L v = -J^T Q diag(beta) Q^T (J v) / N, and J_n F(w_n + v):
        one field evaluation and one product J_n F."""
        f = self.solver._field(self.weights(v))
        image_f = self.lin.jvp(f).double()
        q = self.spectral(self.beta, v.image) / self.n
        return _Vector(dense=f, q=q, image=image_f + self.gram_times(q)), image_f

    def remainder(self, v: _Vector) -> _Vector:
        """G(v) (see :meth:`remainder_and_field_image`)."""
        return self.remainder_and_field_image(v)[0]

    def remainder_at_start(self, residual: torch.Tensor) -> _Vector:
        """G(0) = F(w_n) = -J^T Q diag(beta) Q^T r / N, from the linearization alone."""
        q0 = -self.spectral(self.beta, residual) / self.n
        return _Vector(dense=None, q=q0, image=self.gram_times(q0))


# ---- fourth order: Krogstad's ETDRK4-B ------------------------------------------------------------


class KernelETD4Solver(KernelETD3Solver):
    """Adaptive fourth-order exponential Runge--Kutta steps on the kernel splitting
    (``solver.method = "kernel_etd4"``).

    Krogstad's ETDRK4-B (J. Comput. Phys. 203, 2005): Cox and Matthews' ETD4RK combination with
    stages that satisfy more of the stiff order conditions, phi functions at hL (hL/2 for a, b):

        a  = (h/2) phi_1(hL/2) G(0)
        b  = a + h phi_2(hL/2) (G(a) - G(0))
        c  = h phi_1(hL) G(0) + 2 h phi_2(hL) (G(b) - G(0))
        v4 = h [ (phi_1 - 3 phi_2 + 4 phi_3) G(0) + 2 (phi_2 - 2 phi_3) (G(a) + G(b)) + (4 phi_3 - phi_2) G(c) ]

    and the embedded second-order solution v2 = h [phi_1 G(0) + 2 phi_2 (G(a) - G(0))] (ETD3's).
    The estimate v4 - v2 is O(h^3) (exponent 1/3, as kernel_etd3) and zero when J does not move,
    so the step is exact for random features at any h; the accepted state w_n + v4 is fourth order
    (local extrapolation), so at the same tolerance it is more accurate than kernel_etd3 by about
    one order of magnitude, for the same steps. One step costs one linearization and three field
    evaluations (one more than kernel_etd3).
    """

    _dense: Callable[[float], torch.Tensor] | None = None

    def _trial(self, start: FrozenKernel, h: float) -> tuple[torch.Tensor, float, None]:
        weights, error = self._etd4(start, h)
        return weights, error, None

    def _dense_output(self) -> Callable[[float], torch.Tensor] | None:
        return self._dense

    def _etd4(self, kernel: FrozenKernel, h: float) -> tuple[torch.Tensor, float]:
        """The ETDRK4-B state w_n + v4 and the error ratio of v4 - v2; records the step's continuous
        extension (``_dense_output``)."""
        s = _Splitting(self, kernel)
        full = phi_functions(-h * s.mu_n, 4)
        half = phi_functions(-0.5 * h * s.mu_n, 3)
        half_phi1 = (0.5 * h, (0.25 * h * h) * half[2])  # (h/2) phi_1(hL/2)
        half_phi2 = (0.5 * h, (0.5 * h * h) * half[3])  # h phi_2(hL/2)
        g0 = s.remainder_at_start(kernel.residual)
        a = s.apply(*half_phi1, g0)
        ga = s.remainder(a)
        b = s.combine((1.0, a), (1.0, s.apply(*half_phi2, s.combine((1.0, ga), (-1.0, g0)))))
        gb = s.remainder(b)
        c = s.combine(
            (1.0, s.apply(*_h_phi(h, 1.0, full, {1: 1.0}), g0)),
            (1.0, s.apply(*_h_phi(h, 1.0, full, {2: 2.0}), s.combine((1.0, gb), (-1.0, g0)))),
        )
        gc = s.remainder(c)
        middle = s.combine((1.0, ga), (1.0, gb))
        v4 = _etd4_combination(s, h, 1.0, full, g0, middle, gc)
        # v4 - v2 with v2 = h [phi_1 G(0) + 2 phi_2 (G(a) - G(0))]
        v2 = s.combine(
            (1.0, s.apply(*_h_phi(h, 1.0, full, {1: 1.0}), g0)),
            (1.0, s.apply(*_h_phi(h, 1.0, full, {2: 2.0}), s.combine((1.0, ga), (-1.0, g0)))),
        )
        d = s.combine((1.0, v4), (-1.0, v2))
        new = s.weights(v4)
        err = s.lin.vjp(d.q).to(s.w0.dtype)
        if d.dense is not None:
            err = err + d.dense
        mu_n = s.mu_n

        def dense(theta: float) -> torch.Tensor:
            phis = phi_functions(-theta * h * mu_n, 4)
            return s.weights(_etd4_combination(s, h, theta, phis, g0, middle, gc))

        self._dense = dense
        return new, error_ratio(s.w0, new - err, new, self.rtol, self.atol)


def _h_phi(
    h: float, theta: float, phis: list[torch.Tensor], coefficients: dict[int, float]
) -> tuple[float, torch.Tensor]:
    """f(z) = h sum_k c_k theta^k phi_k(theta h z) as (f(0), (f(-mu) - f(0)) / (-mu)) for
    :meth:`_Splitting.apply`, with ``phis`` = phi_k(-theta h mu): f(0) = h sum_k c_k theta^k / k!
    and the divided difference h^2 sum_k c_k theta^(k+1) phi_(k+1)."""
    f0 = h * sum(c * theta**k / math.factorial(k) for k, c in coefficients.items())
    divided = torch.zeros_like(phis[0])
    for k, c in coefficients.items():
        divided = divided + (c * theta ** (k + 1)) * phis[k + 1]
    return f0, (h * h) * divided


def _etd4_combination(
    s: _Splitting, h: float, theta: float, phis: list[torch.Tensor], g0: _Vector, middle: _Vector, gc: _Vector
) -> _Vector:
    """v(theta h) = h [b_0 G(0) + b_m (G(a) + G(b)) + b_c G(c)] with the weights of ETD4RK's (and ETDRK4-B's)
    continuous extension at theta h L: b_0 = theta phi_1 - 3 theta^2 phi_2 + 4 theta^3 phi_3,
    b_m = 2 theta^2 phi_2 - 4 theta^3 phi_3, b_c = -theta^2 phi_2 + 4 theta^3 phi_3 (at theta = 1 the
    step v4; third order inside the step, exact for constant G: the weights sum to theta phi_1)."""
    return s.combine(
        (1.0, s.apply(*_h_phi(h, theta, phis, {1: 1.0, 2: -3.0, 3: 4.0}), g0)),
        (1.0, s.apply(*_h_phi(h, theta, phis, {2: 2.0, 3: -4.0}), middle)),
        (1.0, s.apply(*_h_phi(h, theta, phis, {2: -1.0, 3: 4.0}), gc)),
    )
