"""The mathematics of the observables, as plain functions of tensors.

Kernel alignment, feature distance, the output-layer refit, a loss and the regime rule; the
observables (:mod:`gnflow.observables`) call these at each saved state.
"""

from __future__ import annotations

import numpy as np
import torch

from gnflow.config import ObserveConfig
from gnflow.model import Linearization, ParticleModel


def centered_kernel_alignment(a: torch.Tensor, b: torch.Tensor) -> float:
    """CKA(a, b) = <HaH, HbH>_F / (||HaH||_F ||HbH||_F) with H = I - 11^T / N.

    a, b: symmetric (sample, sample) kernel matrices. NaN when either centered kernel is 0.
    """

    def center(k: torch.Tensor) -> torch.Tensor:
        return k - k.mean(0, keepdim=True) - k.mean(1, keepdim=True) + k.mean()

    ca, cb = center(a.double()), center(b.double())
    denominator = float(torch.linalg.norm(ca) * torch.linalg.norm(cb))
    if denominator == 0.0:
        return float("nan")
    return float((ca * cb).sum()) / denominator


def feature_distance(features: torch.Tensor, reference: torch.Tensor, *, chunk: int = 1024) -> float:
    """Weighted cosine distance of features to their nearest reference feature.

    D = sum_i ||u_i||^2 min_j sqrt(2 (1 - cos(u_i, r_j))) / sum_i ||u_i||^2, the metric of
    Arbel et al.'s code (the bias is not part of the feature). sqrt(2 (1 - cos)) is the
    Euclidean distance between the unit vectors, in [0, 2].

    Parameters
    ----------
    features:
        u_i, shape (particle, input_dim).
    reference:
        r_j, shape (reference_particle, input_dim); a zero vector has cos = 0 with everything.
    chunk:
        Rows of ``features`` per block, to bound the (chunk, reference_particle) work array.

    Returns
    -------
    float
        D in [0, 2] (dimensionless); NaN when every u_i is 0.
    """
    u = features.double()
    ref = reference.double()
    weight = (u * u).sum(1)
    total = float(weight.sum())
    if total == 0.0:
        return float("nan")
    tiny = torch.finfo(torch.float64).tiny
    unit_ref = ref / ref.norm(dim=1, keepdim=True).clamp_min(tiny)
    nearest = torch.empty(u.shape[0], dtype=torch.float64, device=u.device)
    for start in range(0, u.shape[0], chunk):
        block = u[start : start + chunk]
        unit = block / block.norm(dim=1, keepdim=True).clamp_min(tiny)
        best = (unit @ unit_ref.T).argmax(dim=1)
        # ||unit - unit_ref|| = sqrt(2 (1 - cos)) without the cancellation of 1 - cos near cos = 1
        nearest[start : start + chunk] = torch.linalg.vector_norm(unit - unit_ref[best], dim=1)
    return float((weight * nearest).sum()) / total


def refit_output_layer(
    model: ParticleModel,
    weights: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    ridge: float = 0.0,
    rcond: float = 1e-10,
    linearization: Linearization | None = None,
) -> torch.Tensor:
    """Particles with the hidden part of ``weights`` and the output weights refit on (x, y).

    With the feature matrix Phi = c(M) sigma(X U^T + b) (sample, particle) = U S V^T (thin SVD,
    float64), the refit output weights are v = V diag(g(s)) U^T y with g(s) = s / (s^2 + ridge),
    which minimizes ||Phi v - y||^2 + ridge ||v||^2; for ridge = 0, g(s) = 1/s for
    s > rcond * s_max and 0 otherwise: the minimum-norm least-squares solution.

    Parameters
    ----------
    model:
        The particle model (its scaling c(M) and activation define Phi).
    weights:
        Particles (particle, component); only u and b are read.
    x, y:
        Inputs (sample, input_dim) and labels (sample,).
    ridge, rcond:
        Ridge penalty (units of Phi Phi^T, i.e. of the Gram matrix) and relative singular-value
        cutoff of the least-squares solution.
    linearization:
        ``model.linearize(weights, x)`` when it is known already (it is not computed again).

    Returns
    -------
    torch.Tensor
        (particle, component): u and b of ``weights``, v refit.
    """
    lin = linearization if linearization is not None else model.linearize(weights, x)
    phi = lin.scale * lin.s.double()
    left, singular, right_t = torch.linalg.svd(phi, full_matrices=False)
    if ridge > 0:
        gain = singular / (singular * singular + ridge)
    else:
        keep = singular > rcond * singular[0]
        gain = torch.zeros_like(singular)
        gain[keep] = 1.0 / singular[keep]
    v = right_t.T @ (gain * (left.T @ y.double()))
    refit = weights.clone()
    refit[:, -1] = v.to(weights.dtype)
    return refit


def loss(model: ParticleModel, weights: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> float:
    """L = ||f(x) - y||^2 / (2 n) for inputs x (n, input_dim) and labels y (n,)."""
    r = (model.predict(weights, x) - y).double()
    return float(r @ r) / (2 * x.shape[0])


def regime_label(hidden_weight_movement: float, kernel_movement: float, options: ObserveConfig) -> str:
    """``"kernel"`` when both movements lie below their thresholds, else ``"feature"``.

    A run whose kernel movement is NaN (A_0 = 0: the kernel is undefined at t = 0) is labelled
    by its weight movement alone.
    """
    lazy_weights = hidden_weight_movement < options.regime_weight_threshold
    lazy_kernel = np.isnan(kernel_movement) or kernel_movement < options.regime_kernel_threshold
    return "kernel" if lazy_weights and lazy_kernel else "feature"
