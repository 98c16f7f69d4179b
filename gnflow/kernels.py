"""Infinite-width kernels of gnflow's two-layer network at initialization, and kernel regression.

At initialization gnflow draws the hidden weights and biases of every particle i.i.d. from
N(0, tau0^2) (``model.init_scale``), so the pre-activations z = u.x + b and z' = u.x' + b of two
inputs are jointly Gaussian with covariance

    Sigma(x, x') = tau0^2 [[x.x + 1, x.x' + 1], [x.x' + 1, x'.x' + 1]].

Every kernel of the infinite-width network is an expectation over this 2 x 2 Gaussian:

- the random-features kernel k(x, x') = E[sigma(z) sigma(z')] (:func:`random_features_kernel`),
- the derivative kernel k1(x, x') = E[sigma'(z) sigma'(z')] (:func:`derivative_kernel`),
- the neural tangent kernel of either scaling (:func:`neural_tangent_kernel`),
- the limit of the random-features kernel as tau0 -> infinity (:func:`large_scale_limit_kernel`),

    E[A_M(x, x')] = M c(M)^2 ( [output trains] k(x, x') + [hidden trains] E[v^2] k1(x, x') (x.x' + 1) ),

  exact at every width M because the particles are i.i.d.; M c(M)^2 = 1 under NTK scaling (A_M
  converges to the bracket) and 1/M under mean-field scaling (A_M vanishes like 1/M and M A_M
  converges to the bracket).

ReLU (arc-cosine kernels of orders 1 and 0) and erf (Williams' arcsine formula) have closed forms
and use them; the other activations use a two-dimensional Gaussian quadrature in polar
coordinates (:class:`QuadratureRule`). ``erf`` is not an activation of :class:`gnflow.model.ParticleModel`:
it is offered here as the smooth activation whose kernels are known in closed form, to validate
the quadrature. :func:`kernel_regression` is the kernel-regression predictor (minimum-norm
interpolant or ridge) with gnflow's loss L = ||r||^2 / (2 n).

The mathematics and the measured accuracy are in ``docs/infinite_width.md``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from gnflow._kernel_forms import _DERIVATIVES, _VALUES, _angle, _arc_cosine, _williams
from gnflow.model import ACTIVATIONS

__all__ = [
    "CLOSED_FORM_ACTIVATIONS",
    "KERNEL_ACTIVATIONS",
    "LARGE_SCALE_LIMITS",
    "KernelPrediction",
    "QuadratureRule",
    "derivative_kernel",
    "gaussian_expectation",
    "kernel_regression",
    "large_scale_limit_kernel",
    "neural_tangent_kernel",
    "output_second_moment",
    "pre_activation_covariance",
    "random_features_kernel",
]

logger = logging.getLogger(__name__)

#: Activations whose kernels this module computes: gnflow's model activations and ``erf``.
KERNEL_ACTIVATIONS = (*ACTIVATIONS, "erf")

#: Activations with closed-form kernels (arc-cosine for relu, Williams' arcsine for erf).
CLOSED_FORM_ACTIVATIONS = ("relu", "erf")

# E[v^2] of the output weights at initialization, for each model.output_init
_OUTPUT_SECOND_MOMENTS = {"zero": 0.0, "normal": 1.0, "sign": 1.0}

# the quadrature works on blocks of at most this many (pair, node) entries (32 MiB in float64)
_BLOCK_ENTRIES = 1 << 22

# the radial rule ends at r = 9: the Gaussian weight r exp(-r^2 / 2) is 2e-17 there
_RADIAL_END = math.log(9.0)

Function = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True, kw_only=True)
class QuadratureRule:
    """The two-dimensional Gaussian quadrature of E[f(z) g(z')], (z, z') ~ N(0, Sigma).

    With xi ~ N(0, I_2) and the Cholesky factor of Sigma, z = s xi_1 and
    z' = s' (cos(theta) xi_1 + sin(theta) xi_2), where s, s' are the standard deviations and
    cos(theta) the correlation. In polar coordinates xi = r (cos phi, sin phi), pairing r with -r,

        E[f(z) g(z')] = 1/(2 pi) int_{theta/2 - pi/2}^{theta/2 + pi/2} dphi int_0^inf r exp(-r^2/2)
                        [F(r, phi) + F(-r, phi)] dr,    F(r, phi) = f(r s cos phi) g(r s' cos(phi - theta)).

    The angle interval is cut at the two lines where z = 0 and z' = 0 (where relu and the steep
    activations of a large init_scale bend), and each of the three arcs gets a tanh-sinh
    (double-exponential) rule, whose nodes crowd the ends of the arc where those bends lie.
    The radius is integrated by the trapezoidal rule in log r on
    [-log(max(s, s', 1)) - log_radius_span, log 9], which resolves the bend of sigma(r a) at
    r ~ 1/a whatever the scale a. Evaluations per pair: 2 * 3 * angular_nodes * radial_nodes.

    Parameters
    ----------
    angular_nodes:
        Nodes of the tanh-sinh rule on each of the three arcs (>= 3).
    radial_nodes:
        Nodes of the trapezoidal rule in log r (>= 3).
    log_radius_span:
        How far (in log r) below the smallest scale 1/max(s, s', 1) the radial rule starts; the
        part left out is of relative size exp(-2 log_radius_span) or smaller (> 0).
    """

    angular_nodes: int = 48
    radial_nodes: int = 96
    log_radius_span: float = 12.0

    def __post_init__(self) -> None:
        if self.angular_nodes < 3:
            raise ValueError(f"angular_nodes must be >= 3, got {self.angular_nodes}")
        if self.radial_nodes < 3:
            raise ValueError(f"radial_nodes must be >= 3, got {self.radial_nodes}")
        if not self.log_radius_span > 0:
            raise ValueError(f"log_radius_span must be > 0, got {self.log_radius_span}")

    @property
    def nodes_per_pair(self) -> int:
        """Evaluations of F per pair of inputs, 2 * 3 * angular_nodes * radial_nodes."""
        return 6 * self.angular_nodes * self.radial_nodes

    def angular(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The tanh-sinh rule on [-1, 1]: nodes and weights, both (angular_nodes,)."""
        # t in [-3.2, 3.2]: the last nodes lie 1e-16 from the ends, the last weights are 1e-15
        t = torch.linspace(-3.2, 3.2, self.angular_nodes, dtype=torch.float64)
        step = float(t[1] - t[0])
        inner = 0.5 * math.pi * torch.sinh(t)
        nodes = torch.tanh(inner)
        weights = step * 0.5 * math.pi * torch.cosh(t) / torch.cosh(inner) ** 2
        return nodes, weights


def _activation(name: str, derivative: bool) -> Function:
    """sigma (or sigma') of a kernel activation, as a function of a float64 tensor."""
    if name not in KERNEL_ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; allowed: {', '.join(KERNEL_ACTIVATIONS)}")
    return (_DERIVATIVES if derivative else _VALUES)[name]


def _as_inputs(x: torch.Tensor | np.ndarray, name: str, device: torch.device | None = None) -> torch.Tensor:
    out = torch.as_tensor(x, dtype=torch.float64, device=device)
    if out.ndim != 2:
        raise ValueError(f"{name} must have shape (sample, input_dim), got {tuple(out.shape)}")
    return out


def pre_activation_covariance(
    x: torch.Tensor | np.ndarray, x2: torch.Tensor | np.ndarray, init_scale: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The covariance of (u.x + b, u.x' + b) for u ~ N(0, tau0^2 I_d), b ~ N(0, tau0^2).

    Parameters
    ----------
    x, x2:
        Inputs (n, d) and (m, d).
    init_scale:
        tau0 > 0, the standard deviation of the hidden weights and biases.

    Returns
    -------
    tuple of torch.Tensor
        Variances tau0^2 (x.x + 1), shape (n,), tau0^2 (x'.x' + 1), shape (m,), and the
        covariances tau0^2 (x.x' + 1), shape (n, m); float64.
    """
    if not (math.isfinite(init_scale) and init_scale > 0):
        raise ValueError(f"init_scale must be a finite number > 0, got {init_scale}")
    a = _as_inputs(x, "x")
    b = _as_inputs(x2, "x2", a.device)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"x and x2 must have the same input_dim, got {a.shape[1]} and {b.shape[1]}")
    tau2 = init_scale * init_scale
    return tau2 * ((a * a).sum(1) + 1.0), tau2 * ((b * b).sum(1) + 1.0), tau2 * (a @ b.T + 1.0)


def gaussian_expectation(
    f: Function,
    g: Function,
    var1: torch.Tensor,
    var2: torch.Tensor,
    cov: torch.Tensor,
    rule: QuadratureRule | None = None,
) -> torch.Tensor:
    """E[f(z) g(z')] for (z, z') ~ N(0, [[var1, cov], [cov, var2]]), pair by pair, by quadrature.

    Parameters
    ----------
    f, g:
        Elementwise functions of float64 tensors.
    var1, var2, cov:
        The covariance of each pair, shape (pair,), var1 and var2 > 0.
    rule:
        The quadrature (:class:`QuadratureRule`; its defaults when None).

    Returns
    -------
    torch.Tensor
        (pair,) float64.
    """
    rule = rule or QuadratureRule()
    if not (var1.shape == var2.shape == cov.shape and var1.ndim == 1):
        raise ValueError(f"var1, var2, cov must have one shape (pair,), got {var1.shape}, {var2.shape}, {cov.shape}")
    if not bool((var1 > 0).all() and (var2 > 0).all()):
        raise ValueError("var1 and var2 must be > 0")
    s1, s2 = torch.sqrt(var1), torch.sqrt(var2)
    theta = _angle(var1, var2, cov)
    nodes, weights = (t.to(var1.device) for t in rule.angular())
    radial = torch.arange(rule.radial_nodes, dtype=torch.float64, device=var1.device)
    out = torch.empty_like(var1)
    per_pair = rule.nodes_per_pair
    block = max(1, _BLOCK_ENTRIES // per_pair)
    for start in range(0, var1.shape[0], block):
        part = slice(start, start + block)
        th = theta[part]
        # the three arcs of [theta/2 - pi/2, theta/2 + pi/2] between the lines z = 0 and z' = 0
        ends = torch.stack(
            [th / 2 - math.pi / 2, th - math.pi / 2, torch.full_like(th, math.pi / 2), th / 2 + math.pi / 2]
        )
        half = (ends[1:] - ends[:-1]).T / 2  # (pair, arc)
        phi = (half[..., None] * nodes + (ends[:-1].T + half)[..., None]).flatten(1)  # (pair, angle)
        w_phi = (half[..., None] * weights).flatten(1)
        a1 = s1[part, None] * torch.cos(phi)
        a2 = s2[part, None] * torch.cos(phi - th[:, None])
        low = -torch.log(torch.maximum(torch.maximum(s1[part], s2[part]), torch.ones_like(th))) - rule.log_radius_span
        step = (_RADIAL_END - low) / (rule.radial_nodes - 1)
        r = torch.exp(low[:, None] + step[:, None] * radial)  # (pair, radius)
        w_r = step[:, None] * r * r * torch.exp(-0.5 * r * r)  # r dr = r^2 d(log r)
        w_r[:, 0] *= 0.5
        w_r[:, -1] *= 0.5
        z1 = a1[:, :, None] * r[:, None, :]
        z2 = a2[:, :, None] * r[:, None, :]
        values = f(z1) * g(z2) + f(-z1) * g(-z2)
        out[part] = torch.einsum("pa,pr,par->p", w_phi, w_r, values) / (2.0 * math.pi)
    return out


def _pairs(
    x: torch.Tensor | np.ndarray, x2: torch.Tensor | np.ndarray | None, init_scale: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None, tuple[int, int]]:
    """Flat covariances of the pairs to compute; for x2 None only the pairs i <= j."""
    symmetric = x2 is None
    var1, var2, cov = pre_activation_covariance(x, x if x2 is None else x2, init_scale)
    n, m = cov.shape
    if symmetric:
        rows, cols = torch.triu_indices(n, n, device=cov.device)
        return var1[rows], var2[cols], cov[rows, cols], (rows, cols), (n, m)
    return var1[:, None].expand(n, m).flatten(), var2[None, :].expand(n, m).flatten(), cov.flatten(), None, (n, m)


def _kernel(
    x: torch.Tensor | np.ndarray,
    x2: torch.Tensor | np.ndarray | None,
    *,
    activation: str,
    init_scale: float,
    derivative: bool,
    rule: QuadratureRule | None,
    closed_form: bool,
) -> torch.Tensor:
    function = _activation(activation, derivative)
    var1, var2, cov, triangle, shape = _pairs(x, x2, init_scale)
    started = time.perf_counter()
    if closed_form and activation == "relu":
        values = _arc_cosine(0 if derivative else 1, torch.sqrt(var1), torch.sqrt(var2), _angle(var1, var2, cov))
    elif closed_form and activation == "erf":
        values = _williams(derivative, var1, var2, cov)
    else:
        values = gaussian_expectation(function, function, var1, var2, cov, rule)
        logger.debug(
            "quadrature of %s for %d pairs (%d nodes each) in %.2f s",
            "sigma' sigma'" if derivative else "sigma sigma",
            var1.shape[0],
            (rule or QuadratureRule()).nodes_per_pair,
            time.perf_counter() - started,
        )
    if triangle is None:
        return values.reshape(shape)
    out = values.new_empty(shape)
    rows, cols = triangle
    out[rows, cols] = values
    out[cols, rows] = values
    return out


def random_features_kernel(
    x: torch.Tensor | np.ndarray,
    x2: torch.Tensor | np.ndarray | None = None,
    *,
    activation: str = "silu",
    init_scale: float = 1.0,
    rule: QuadratureRule | None = None,
    closed_form: bool = True,
) -> torch.Tensor:
    """k(x, x') = E[sigma(u.x + b) sigma(u.x' + b)], u ~ N(0, tau0^2 I_d), b ~ N(0, tau0^2).

    The limit of (1/M) S S^T, the output-layer part of the Gram matrix, as M -> infinity.

    Parameters
    ----------
    x, x2:
        Inputs (n, d) and (m, d); x2 None means x2 = x (then only the pairs i <= j are computed
        and the result is exactly symmetric).
    activation:
        One of :data:`KERNEL_ACTIVATIONS`.
    init_scale:
        tau0 > 0 (``model.init_scale``).
    rule:
        The quadrature of the activations without a closed form (:class:`QuadratureRule`).
    closed_form:
        Use the closed form of relu and erf (True), or the quadrature for them too (False:
        to measure the quadrature).

    Returns
    -------
    torch.Tensor
        (n, m) float64.
    """
    return _kernel(
        x, x2, activation=activation, init_scale=init_scale, derivative=False, rule=rule, closed_form=closed_form
    )


#: The limit of sigma(a z) / a^p as a -> infinity for each kernel activation: (p, limit), where the
#: limit is relu (p = 1) for the activations that grow linearly and sign (p = 0) for the bounded ones.
LARGE_SCALE_LIMITS = {
    "silu": (1, "relu"),
    "gelu": (1, "relu"),
    "relu": (1, "relu"),
    "tanh": (0, "sign"),
    "erf": (0, "sign"),
}


def large_scale_limit_kernel(
    x: torch.Tensor | np.ndarray,
    x2: torch.Tensor | np.ndarray | None = None,
    *,
    activation: str = "silu",
) -> torch.Tensor:
    """lim_{tau0 -> inf} k_tau0(x, x') / tau0^(2p), the random-features kernel at a large init scale.

    With u, b ~ N(0, tau0^2), z = tau0 (u'.x + b') for standard normal u', b', and
    sigma(tau0 z') / tau0^p converges to relu(z') (silu, gelu, relu: p = 1) or sign(z')
    (tanh, erf: p = 0). The limit kernels are closed forms of the correlation
    cos(theta) = (x.x' + 1) / sqrt((x.x + 1)(x'.x' + 1)):

    - p = 1: the arc-cosine kernel of order 1 of the inputs (x, 1),
      sqrt((x.x + 1)(x'.x' + 1)) (sin(theta) + (pi - theta) cos(theta)) / (2 pi);
    - p = 0: E[sign(z) sign(z')] = 1 - 2 theta / pi.

    Kernel regression without a ridge does not change when the kernel is scaled, so the
    minimum-norm interpolant of this kernel is the tau0 -> infinity limit of the interpolant of
    k_tau0, that is of the random-features refit as M -> infinity and then tau0 -> infinity (the
    lazy limit of training from v = 0). Between distinct inputs k_tau0 / tau0^(2p) approaches the
    limit as O(1/tau0^2); on the diagonal of tanh and erf as O(1/tau0) (E[sigma^2] misses 1 by
    the mass of the band where z is below 1/tau0 in size). tests/test_kernels.py measures both orders.

    Parameters
    ----------
    x, x2:
        Inputs (n, d) and (m, d); x2 None means x2 = x (then the result is exactly symmetric).
    activation:
        One of :data:`KERNEL_ACTIVATIONS`.

    Returns
    -------
    torch.Tensor
        (n, m) float64.
    """
    if activation not in LARGE_SCALE_LIMITS:
        raise ValueError(f"unknown activation {activation!r}; allowed: {', '.join(LARGE_SCALE_LIMITS)}")
    if LARGE_SCALE_LIMITS[activation][1] == "relu":
        return random_features_kernel(x, x2, activation="relu")  # scale-free: its own limit
    var1, var2, cov = pre_activation_covariance(x, x if x2 is None else x2, 1.0)
    theta = _angle(var1[:, None], var2[None, :], cov)
    if x2 is None:
        theta = (theta + theta.T) / 2  # symmetric exactly, not only up to rounding
    return 1.0 - 2.0 * theta / math.pi


def derivative_kernel(
    x: torch.Tensor | np.ndarray,
    x2: torch.Tensor | np.ndarray | None = None,
    *,
    activation: str = "silu",
    init_scale: float = 1.0,
    rule: QuadratureRule | None = None,
    closed_form: bool = True,
) -> torch.Tensor:
    """k1(x, x') = E[sigma'(u.x + b) sigma'(u.x' + b)] under the same law as :func:`random_features_kernel`.

    For relu this is the arc-cosine kernel of order 0, (pi - theta) / (2 pi). Parameters and
    result as in :func:`random_features_kernel`.
    """
    return _kernel(
        x, x2, activation=activation, init_scale=init_scale, derivative=True, rule=rule, closed_form=closed_form
    )


def output_second_moment(output_init: str) -> float:
    """E[v^2] of the output weights drawn by ``model.output_init``: zero 0, normal 1, sign 1."""
    try:
        return _OUTPUT_SECOND_MOMENTS[output_init]
    except KeyError:
        raise ValueError(f"unknown output_init {output_init!r}; allowed: {', '.join(_OUTPUT_SECOND_MOMENTS)}") from None


def neural_tangent_kernel(
    x: torch.Tensor | np.ndarray,
    x2: torch.Tensor | np.ndarray | None = None,
    *,
    activation: str = "silu",
    init_scale: float = 1.0,
    scaling: str = "ntk",
    output_init: str = "zero",
    train: str = "all",
    width: int | None = None,
    rule: QuadratureRule | None = None,
    closed_form: bool = True,
) -> torch.Tensor:
    """The expected tangent kernel E[A_M(x, x')] of the network at initialization.

    Summed over the trained parameters (u, b, v of every particle),

        A_M(x, x') = c(M)^2 sum_i ( sigma(z_i) sigma(z'_i) + v_i^2 sigma'(z_i) sigma'(z'_i) (x.x' + 1) ),

    the first term from v (``train`` = all or output), the second from u and b (all or hidden).
    The particles are i.i.d., so its mean is exact at every width:

        E[A_M] = M c(M)^2 ( k + E[v^2] k1 (x.x' + 1) ),

    and A_M fluctuates around it by O(M^{-1/2}) relative. Under NTK scaling M c(M)^2 = 1 (the
    infinite-width NTK, independent of M); under mean-field scaling M c(M)^2 = 1/M, so the
    tangent kernel vanishes and M A_M converges to the bracket. With ``output_init = "zero"``
    E[v^2] = 0: the hidden-layer part vanishes at initialization and only k remains (and the
    kernel is 0 for ``train = "hidden"``).

    Parameters
    ----------
    x, x2:
        Inputs (n, d) and (m, d); x2 None means x2 = x.
    activation, init_scale, rule, closed_form:
        As in :func:`random_features_kernel`.
    scaling:
        ``"ntk"`` (c = 1/sqrt(M)) or ``"mean_field"`` (c = 1/M).
    output_init:
        ``"zero"``, ``"normal"`` or ``"sign"`` (sets E[v^2]).
    train:
        ``"all"``, ``"hidden"`` or ``"output"``: the parameters the kernel sums over.
    width:
        M; required for mean-field scaling (the kernel is of order 1/M); under NTK scaling the
        kernel does not depend on M and width may be omitted.

    Returns
    -------
    torch.Tensor
        (n, m) float64.
    """
    if scaling not in ("ntk", "mean_field"):
        raise ValueError(f"unknown scaling {scaling!r}; allowed: ntk, mean_field")
    if train not in ("all", "hidden", "output"):
        raise ValueError(f"unknown train {train!r}; allowed: all, hidden, output")
    if width is not None and width < 1:
        raise ValueError(f"width must be >= 1, got {width}")
    if scaling == "mean_field" and width is None:
        raise ValueError("scaling 'mean_field': the tangent kernel is of order 1/M; give width = M")
    second_moment = output_second_moment(output_init)
    a = _as_inputs(x, "x")
    b = a if x2 is None else _as_inputs(x2, "x2", a.device)
    other = None if x2 is None else b
    total = a.new_zeros(a.shape[0], b.shape[0])
    if train in ("all", "output"):
        total += random_features_kernel(
            a, other, activation=activation, init_scale=init_scale, rule=rule, closed_form=closed_form
        )
    if train in ("all", "hidden") and second_moment > 0:
        k1 = derivative_kernel(
            a, other, activation=activation, init_scale=init_scale, rule=rule, closed_form=closed_form
        )
        inner = a @ b.T + 1.0
        if x2 is None:
            inner = (inner + inner.T) / 2  # the product is symmetric only up to rounding
        total += second_moment * k1 * inner
    factor = 1.0 if width is None or scaling == "ntk" else 1.0 / width
    return total.mul_(factor)


@dataclass(frozen=True)
class KernelPrediction:
    """The kernel-regression predictor on test inputs, and its losses.

    Attributes
    ----------
    predictions:
        f(X*) = K(X*, X) alpha, shape (test_sample,).
    coefficients:
        alpha = (K + (ridge + jitter) I)^{-1} y, shape (sample,).
    train_loss:
        ||K alpha - y||^2 / (2 n) on the training points (0 up to rounding for the interpolant).
    test_loss:
        ||f(X*) - y*||^2 / (2 n*), NaN when no test labels were given.
    ridge, jitter:
        What was added to the diagonal of the Gram matrix: the ridge asked for, and the jitter
        that made the Cholesky factorization succeed (0 unless asked for).
    """

    predictions: torch.Tensor
    coefficients: torch.Tensor
    train_loss: float
    test_loss: float
    ridge: float
    jitter: float


def kernel_regression(
    gram: torch.Tensor,
    cross: torch.Tensor,
    y: torch.Tensor | np.ndarray,
    *,
    y_test: torch.Tensor | np.ndarray | None = None,
    ridge: float = 0.0,
    jitter: float = 0.0,
) -> KernelPrediction:
    """Kernel regression: f(X*) = K(X*, X) (K(X, X) + ridge I)^{-1} y.

    With ridge = 0 this is the minimum-norm interpolant of the kernel (the limit of gradient
    flow on the random features from v = 0, and of the linearized network under the NTK); with
    ridge > 0 it minimizes ||f(X) - y||^2 / (2 n) + ridge ||f||_K^2 / (2 n). The Gram matrix is
    factorized by Cholesky in float64.

    Parameters
    ----------
    gram:
        K(X, X), (sample, sample), symmetric positive definite.
    cross:
        K(X*, X), (test_sample, sample).
    y:
        Training labels (sample,).
    y_test:
        Test labels (test_sample,), for the test loss.
    ridge:
        >= 0, added to the diagonal (units of the kernel).
    jitter:
        >= 0, added to the diagonal as well, only for a Gram matrix that is positive
        semi-definite up to rounding; it is reported in the result and logged.

    Returns
    -------
    KernelPrediction
    """
    k = torch.as_tensor(gram, dtype=torch.float64)
    kx = torch.as_tensor(cross, dtype=torch.float64, device=k.device)
    labels = torch.as_tensor(y, dtype=torch.float64, device=k.device)
    n = labels.shape[0]
    if k.shape != (n, n):
        raise ValueError(f"gram must have shape ({n}, {n}) for {n} labels, got {tuple(k.shape)}")
    if kx.ndim != 2 or kx.shape[1] != n:
        raise ValueError(f"cross must have shape (test_sample, {n}), got {tuple(kx.shape)}")
    if float(torch.linalg.matrix_norm(k - k.T)) > 1e-12 * float(torch.linalg.matrix_norm(k)):
        raise ValueError("gram must be symmetric (K(X, X)); got a matrix that differs from its transpose")
    if not (ridge >= 0 and jitter >= 0):
        raise ValueError(f"ridge and jitter must be >= 0, got ridge={ridge}, jitter={jitter}")
    if jitter > 0:
        logger.info("kernel regression: jitter %.3g added to the diagonal of the Gram matrix", jitter)
    shifted = k + (ridge + jitter) * torch.eye(n, dtype=torch.float64, device=k.device)
    factor, info = torch.linalg.cholesky_ex(shifted)
    if int(info) != 0:
        raise ValueError(
            f"the Gram matrix plus {ridge + jitter:.3g} I is not positive definite (Cholesky failed at "
            f"column {int(info)}); use ridge > 0, or jitter > 0 for a matrix singular up to rounding"
        )
    alpha = torch.cholesky_solve(labels[:, None], factor)[:, 0]
    residual = k @ alpha - labels
    predictions = kx @ alpha
    test_loss = float("nan")
    if y_test is not None:
        targets = torch.as_tensor(y_test, dtype=torch.float64, device=k.device)
        if targets.shape != predictions.shape:
            raise ValueError(f"y_test must have shape {tuple(predictions.shape)}, got {tuple(targets.shape)}")
        test_loss = float(((predictions - targets) ** 2).sum()) / (2 * targets.shape[0])
    return KernelPrediction(
        predictions=predictions,
        coefficients=alpha,
        train_loss=float(residual @ residual) / (2 * n),
        test_loss=test_loss,
        ridge=ridge,
        jitter=jitter,
    )
