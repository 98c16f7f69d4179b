"""Wasserstein-2 distances between empirical particle measures (Python Optimal Transport).

A trajectory of M particles is the empirical measure mu_t = (1/M) sum_i delta_{w_i(t)} on
R^{d+2}; the teacher is nu* = (1/M*) sum_j delta_{w*_j}. Small problems are solved exactly
(network simplex, ``ot.emd2``); when the cost matrix would exceed ``exact_max^2`` entries the
sliced Wasserstein-2 distance (``ot.sliced_wasserstein_distance``) replaces it, because the exact
problem costs O(M^2) memory and roughly O(M^3) time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.spatial.distance import cdist

__all__ = ["TransportResult", "wasserstein2"]


@dataclass(frozen=True)
class TransportResult:
    """A Wasserstein-2 distance and how it was computed.

    Attributes
    ----------
    distance:
        W2 (exact) or SW2 (sliced), in the units of the particle coordinates.
    method:
        ``"exact"`` or ``"sliced"``.
    description:
        One line naming the solver and its parameters (stored as a variable attribute).
    """

    distance: float
    method: str
    description: str


def _uniform(n: int) -> np.ndarray:
    return np.full(n, 1.0 / n)


def wasserstein2(
    points_a: np.ndarray,
    points_b: np.ndarray,
    *,
    exact_max: int = 1000,
    n_projections: int = 200,
    seed: int = 0,
) -> TransportResult:
    """Wasserstein-2 distance between two uniform empirical measures.

    Parameters
    ----------
    points_a:
        Support of the first measure, shape (n_a, D), each point with mass 1/n_a.
    points_b:
        Support of the second measure, shape (n_b, D), each point with mass 1/n_b.
    exact_max:
        The exact transport problem is solved when n_a * n_b <= exact_max^2; otherwise the sliced
        distance SW2 = (E_theta W2^2(theta#mu, theta#nu))^(1/2) over uniform directions theta on the
        sphere is returned (a lower bound of W2; SW2 = W2 / sqrt(D) for a translation).
    n_projections:
        Number of directions theta of the sliced distance (drawn from ``seed``, so the result is
        deterministic and the same directions serve every saved time).
    seed:
        Seed of the directions of the sliced distance.

    Returns
    -------
    TransportResult
        The distance (same units as the points) and the method used.
    """
    a = np.ascontiguousarray(points_a, dtype=np.float64)
    b = np.ascontiguousarray(points_b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"points must be (n, D) arrays of the same D, got {a.shape} and {b.shape}")
    if a.shape[0] == 0 or b.shape[0] == 0:
        raise ValueError("both measures need at least one particle")
    import ot  # POT, and scikit-learn under it, take about a second to import: only when a distance is asked

    n_a, n_b = a.shape[0], b.shape[0]
    if n_a * n_b <= exact_max * exact_max:
        # coordinate differences, not ||a||^2 + ||b||^2 - 2 a.b, so that coincident points cost 0
        cost = cdist(a, b, metric="sqeuclidean")
        # the network simplex needs O(n_a n_b) pivots in the worst case; POT's default cap
        # (100000) is reached for a few hundred particles
        value, log = ot.emd2(_uniform(n_a), _uniform(n_b), cost, numItermax=max(100_000, 50 * n_a * n_b), log=True)
        if log.get("warning"):
            raise RuntimeError(f"exact optimal transport did not converge: {log['warning']}")
        return TransportResult(
            distance=math.sqrt(max(float(value), 0.0)),
            method="exact",
            description="exact optimal transport (POT ot.emd2, squared Euclidean cost)",
        )
    value = ot.sliced_wasserstein_distance(
        a, b, _uniform(n_a), _uniform(n_b), n_projections=n_projections, p=2, seed=seed
    )
    return TransportResult(
        distance=float(value),
        method="sliced",
        description=(
            "sliced Wasserstein-2 (POT ot.sliced_wasserstein_distance, "
            f"{n_projections} projections, "
            f"seed {seed}); used because {n_a} x {n_b} > {exact_max}^2"
        ),
    )
