"""``solver.method = "auto"``: the integrator chosen from the flow and the horizon.

The rule, from the measured crossovers of ``studies/long_horizon/auto_crossover.py`` (kernel_etd3
against dopri5 on the gradient flow at the default tolerances, data in
``data/studies/long_horizon/auto_crossover.md``) and the work-precision diagrams of
``studies/long_horizon/work_precision.py`` (``docs/kernel_exponential.md``):

- the **gradient flow** to a horizon t_end >= ``ETD3_FROM_HORIZON_PER_N`` x N, or with stiffness
  S = t_end lambda_max(A(0)) / N >= ``ETD3_FROM_STIFFNESS`` (an explicit method needs about S / 3.3
  steps): ``kernel_etd3``. Long gradient flows are stiff (an explicit step is capped near
  3.3 N / lambda_max(A) while the slow modes need t ~ N / lambda_min(A)), and third-order steps on
  the kernel splitting are not capped;
- the gradient flow otherwise: ``dopri5``, which is cheaper while the flow is not yet stiff
  (features are being learned and each kernel_etd3 step costs a linearization). Measured at
  N = 200, M = 1000: dopri5 was 1.5-7x faster at tau0 in {0.1, 1} up to t_end = 500 N (S <= 170),
  kernel_etd3 1.2-4.7x faster at t_end = 5000 N, and 3.4x to >= 29x faster at tau0 = 10 from S = 206 on;
- the **Gauss--Newton flow**: ``dopri5``. It is not stiff (its gains lambda / (lambda + eps) lie in
  [1/2, 1) under eigmin damping) and converges in t ~ N log(1 / ratio);
- **GGN** runs as Euler steps on its schedule whatever the method.

The choice depends on the config and the initial state only, so a resumed run makes the same one.
The file records the method used in ``gnflow_solver`` ("kernel_etd3 (rtol=..., chosen by auto: ...)").
"""

from __future__ import annotations

from gnflow.config import SolverMethod

__all__ = ["ETD3_FROM_HORIZON_PER_N", "ETD3_FROM_STIFFNESS", "auto_method"]

ETD3_FROM_HORIZON_PER_N = 2500.0
"""Horizon, in units of N, from which ``auto`` integrates the gradient flow with kernel_etd3."""
ETD3_FROM_STIFFNESS = 200.0
"""Stiffness t_end lambda_max(A(0)) / N from which ``auto`` integrates the gradient flow with kernel_etd3."""


def auto_method(flow_kind: str, t_end: float, n_train: int, lambda_max: float) -> tuple[SolverMethod, str]:
    """The method ``solver.method = "auto"`` uses, and why (one phrase for logs and files).

    ``lambda_max`` is the largest eigenvalue of the Gram matrix A at the initial state (used for
    the gradient flow only).
    """
    if flow_kind == "gradient":
        horizon, stiffness = t_end / n_train, t_end * lambda_max / n_train
        why = f"gradient flow, t_end = {horizon:.3g} N, t_end lambda_max(A(0)) / N = {stiffness:.3g}"
        if horizon >= ETD3_FROM_HORIZON_PER_N or stiffness >= ETD3_FROM_STIFFNESS:
            return "kernel_etd3", f"{why} (>= {ETD3_FROM_HORIZON_PER_N:g} N or >= {ETD3_FROM_STIFFNESS:g})"
        return "dopri5", f"{why} (< {ETD3_FROM_HORIZON_PER_N:g} N and < {ETD3_FROM_STIFFNESS:g})"
    if flow_kind == "ggn":
        return "euler", "GGN runs as Euler steps on its schedule"
    return "dopri5", f"the {flow_kind} flow is not stiff"
