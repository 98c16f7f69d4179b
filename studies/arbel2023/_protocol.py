"""The arms of the arbel2023 study (Arbel et al.'s discrete methods, the step-size sweep, the flows),
the rule that decides how discrete GD is computed, the validation/test split of the test draw and
the measurements of one run.

Arms (one labeled run per tau0 and seed; ``lam`` is the step of the discrete method, h = lam):

- ``gn_lam<lam>``: discrete Gauss-Newton, Euler steps h = lam of the GN flow (eigmin damping);
  t = lam x iterations. The paper's GN is lam = 10 (h/N = 0.02 at N = 500), by plain iterations
  (``gn_method``); the sweep arms below it by ``sweep_method``.
- ``gn_hN<r>``: the step with h/N = r (the paper's h/N = 0.02) at N other than 500.
- ``gn_flow``: the continuous GN flow (dopri5), the limit lam -> 0.
- ``gd``: discrete GD at lam = 10 up to ``gd_iterations`` iterations, by ``gd_discrete_method``
  (``kernel_euler``: the Euler iterations in blocks exact for the linearized model, within
  ``discrete_rtol`` of the plain iterations; ``euler``: the plain iterations).
- ``gd_flow``: the converged gradient flow, its own horizon ``gd_t_end``.
- ``check_*``: the agreement check, the same discrete method by plain iterations and by
  ``kernel_euler`` over ``agreement_iterations`` iterations at ``agreement_tau0``.

Every discrete method is the object the paper ran (its iterations); the flows are labeled as
limits. The step ratio lam lambda_max(A(t)) / N of every GD run is recorded (above 2 the top mode
of the iterations is unstable).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

from gnflow.dataset import atomic_write, cf_attributes, dataset_result, read_dataset, run_config_of
from gnflow.kernels import kernel_regression, large_scale_limit_kernel
from gnflow.model import ParticleModel
from gnflow.observables import refit_output_layer
from gnflow.studies import GridRun
from gnflow.verdicts import VERDICT_RULE, PairedComparison, paired_comparison

__all__ = ["VERDICT_RULE", "PairedComparison", "paired_comparison"]


def _num(x: float) -> str:
    """A step size as a label: 10, 1, 0.316 (no exponent, no trailing zeros)."""
    return f"{x:.3g}"


@dataclass(frozen=True)
class Arm:
    """One arm of the study: a method, its step lam (None: a continuous flow) and its horizon.

    Attributes
    ----------
    name:
        Run label in the sweep grid and in the study's NetCDF (``gn_lam10``, ``gn_flow``, ...).
    method:
        ``"gn"`` or ``"gd"``.
    lam:
        Step size h = lam of the discrete method; None for a continuous flow.
    n_train:
        N, to state h/N.
    role:
        ``"paper"`` (the authors' lam), ``"sweep"`` (a smaller lam), ``"h/N"`` (the paper's h/N at
        another N), ``"flow"`` (lam -> 0 limit), ``"converged flow"`` (GD to its own horizon).
    t_end:
        Horizon in flow time.
    solver_method:
        ``solver.method`` of the run.
    """

    name: str
    method: str
    lam: float | None
    n_train: int
    role: str
    t_end: float
    solver_method: str

    @property
    def h_over_n(self) -> float:
        """h/N of the discrete method (0 for a flow)."""
        return 0.0 if self.lam is None else self.lam / self.n_train

    @property
    def label(self) -> str:
        """Legend and table label: method, lam and h/N."""
        who = "GN" if self.method == "gn" else "GD"
        if self.lam is None:
            return f"{who} flow ({'lam -> 0' if self.method == 'gn' else 'converged'})"
        return f"{who} lam={_num(self.lam)} (h/N={_num(self.h_over_n)})"

    @property
    def iterations(self) -> float:
        """Iterations of the discrete method to the horizon (NaN for a flow)."""
        return float("nan") if self.lam is None else self.t_end / self.lam

    def run_entry(self, s: dict[str, Any]) -> dict[str, Any]:
        """The ``[[runs]]`` entry of this arm (dotted config keys)."""
        entry: dict[str, Any] = {
            "name": self.name,
            "flow.kind": "gauss_newton" if self.method == "gn" else "gradient",
            "solver.method": self.solver_method,
            "solver.t_end": self.t_end,
        }
        if self.lam is not None and self.solver_method in DISCRETE_METHODS:
            entry["solver.step_size"] = self.lam
            entry["solver.max_steps"] = math.ceil(self.t_end / self.lam) + 10
            if self.solver_method == "kernel_euler":
                entry["solver.rtol"] = float(s["discrete_rtol"])
                entry["solver.atol"] = float(s["discrete_rtol"]) * 1e-3
        else:
            entry["solver.max_steps"] = int(s["max_steps"])
        return entry


DISCRETE_METHODS = ("euler", "kernel_euler")
"""The two ways of computing a discrete method: its plain iterations, or kernel_euler's blocks."""


def _discrete(s: dict[str, Any], key: str) -> str:
    method = str(s[key])
    if method not in DISCRETE_METHODS:
        raise ValueError(f"{key} must be one of {', '.join(DISCRETE_METHODS)}, got {method!r}")
    return method


def gn_arms(s: dict[str, Any], n_train: int, *, sweep: bool) -> list[Arm]:
    """The GN arms at N = ``n_train``: the paper's lam, the sweep below it (``sweep``), the step with
    the paper's h/N where it differs from lam, and the continuous flow.

    The paper's lam and the h/N arm run to ``gn_iterations`` iterations (the authors' cap); the
    sweep arms to the fixed budget ``sweep_iterations`` (iterations, the same for every lam).
    """
    lam = float(s["lam"])
    paper, sweep_method = _discrete(s, "gn_method"), _discrete(s, "sweep_method")
    arms = [Arm(f"gn_lam{_num(lam)}", "gn", lam, n_train, "paper", lam * float(s["gn_iterations"]), paper)]
    if sweep:
        budget = float(s["sweep_iterations"])
        for small in s["lam_sweep"]:
            if not 0 < small < lam:
                raise ValueError(f"lam_sweep: every step must lie in (0, lam = {lam:g}), got {small}")
            arms.append(Arm(f"gn_lam{_num(small)}", "gn", float(small), n_train, "sweep", small * budget, sweep_method))
    h = float(s["paper_h_over_n"]) * n_train
    if not any(a.lam is not None and math.isclose(a.lam, h, rel_tol=1e-9) for a in arms):
        arms.append(
            Arm(f"gn_hN{_num(s['paper_h_over_n'])}", "gn", h, n_train, "h/N", h * float(s["gn_iterations"]), paper)
        )
    arms.append(Arm("gn_flow", "gn", None, n_train, "flow", float(s["gn_t_end_per_n"]) * n_train, "dopri5"))
    return arms


def gd_flow_method(s: dict[str, Any], tau0: float) -> str:
    """The integrator of the gradient flow at tau0: ``gd_exponential_method`` (kernel_exponential
    unless set; kernel_etd3 is its third-order successor) from ``gd_exponential_from`` on (kernel
    regime: stiff A, nearly frozen Jacobian), ``gd_method`` below."""
    if tau0 >= float(s.get("gd_exponential_from", math.inf)):
        return str(s.get("gd_exponential_method", "kernel_exponential"))
    return str(s["gd_method"])


def gd_arm(s: dict[str, Any], n_train: int) -> Arm:
    """The paper's GD: lam up to ``gd_iterations`` iterations, by ``gd_discrete_method``."""
    lam = float(s["lam"])
    t_end = lam * float(s["gd_iterations"])
    return Arm("gd", "gd", lam, n_train, "paper", t_end, _discrete(s, "gd_discrete_method"))


def check_arms(s: dict[str, Any], n_train: int) -> list[Arm]:
    """The agreement check, by plain iterations (``*_euler``) and by kernel_euler (``*_blocks``):
    GD at lam over ``agreement_iterations`` iterations, and GN at the smallest swept lam over the
    sweep's budget ``sweep_iterations``."""
    lam, small = float(s["lam"]), float(min(s["lam_sweep"]))
    arms = []
    for method, step, k in (("gd", lam, s["agreement_iterations"]), ("gn", small, s["sweep_iterations"])):
        for how, solver in (("euler", "euler"), ("blocks", "kernel_euler")):
            arms.append(Arm(f"check_{method}_{how}", method, step, n_train, "check", step * float(k), solver))
    return arms


def agreement(plain: xr.Dataset, blocks: xr.Dataset) -> tuple[float, float]:
    """Largest relative difference over the common saved times of the train loss (relative to
    itself down to 1e-6 L0) and of the test loss, between the plain iterations and the blocks."""
    common, ia, ib = np.intersect1d(plain["t"].values, blocks["t"].values, return_indices=True)
    if common.size < 2:
        raise ValueError("the two runs of an agreement check do not share their saved times")
    # both stop early on their own last state (the stop, a divergence): compare the shared times
    a = np.asarray(plain["train_loss"].values, dtype=np.float64)[ia]
    b = np.asarray(blocks["train_loss"].values, dtype=np.float64)[ib]
    ok = np.isfinite(a) & np.isfinite(b)
    if not ok.any():
        return math.nan, math.nan
    ta = np.asarray(plain["test_loss"].values, dtype=np.float64)[ia][ok]
    tb = np.asarray(blocks["test_loss"].values, dtype=np.float64)[ib][ok]
    train = np.abs(b[ok] - a[ok]) / np.maximum(a[ok], 1e-6 * a[0])
    return float(train.max()), float((np.abs(tb - ta) / ta).max())


def converged_gd_arm(s: dict[str, Any], n_train: int, tau0: float) -> Arm:
    """The gradient flow to its own horizon ``gd_t_end`` (the converged GD, not the paper's capped GD)."""
    return Arm("gd_flow", "gd", None, n_train, "converged flow", float(s["gd_t_end"]), gd_flow_method(s, tau0))


def step_ratio(ds: xr.Dataset, lam: float) -> float:
    """lam * max_t lambda_max(A(t)) / N over the saved states with a finite lambda_max (inf if none)."""
    eig = np.asarray(ds["gram_eigmax"].values, dtype=np.float64)
    eig = eig[np.isfinite(eig)]
    if eig.size == 0:
        return float("inf")
    return float(lam * eig.max() / ds.sizes["sample"])


def diverged(ds: xr.Dataset) -> bool:
    """A failed run whose train loss became non-finite (discrete GD beyond its stability limit)."""
    loss = np.asarray(ds["train_loss"].values, dtype=np.float64)
    return dataset_result(ds).failed and (not np.all(np.isfinite(loss)) or "finite" in str(ds.attrs["gnflow_status"]))


# --- validation / test split and the measurements of one run ------------------------------------


def choose_time(validation: np.ndarray, allowed: np.ndarray | None = None) -> int:
    """Index of the saved time with the lowest validation loss among ``allowed`` (bool, shape (t,));
    -1 when no allowed time has a finite loss. The test loss is not an argument: it cannot choose."""
    val = np.asarray(validation, dtype=np.float64).copy()
    if allowed is not None:
        val[~np.asarray(allowed, dtype=bool)] = np.nan
    if not np.any(np.isfinite(val)):
        return -1
    return int(np.nanargmin(val))


def refit_indices(n_times: int, points: int) -> np.ndarray:
    """Saved-time indices where the output layer is refit: ``points`` evenly spread, first and last
    included (all when ``points`` >= n_times)."""
    if points >= n_times:
        return np.arange(n_times)
    return np.unique(np.rint(np.linspace(0, n_times - 1, max(points, 2))).astype(np.int64))


_SPLIT_VARS = {
    "val_loss": "loss of the network on the validation half of the test draw",
    "test_half_loss": "loss of the network on the test half of the test draw",
    "refit_val_loss": "validation-half loss of the output layer refit on the training set at t",
    "refit_test_half_loss": "test-half loss of the output layer refit on the training set at t",
}


def network_indices(t: np.ndarray, budgets: tuple[float, ...] = ()) -> np.ndarray:
    """Saved-time indices where the study reads the network's own losses: the last saved time, and
    the last saved time <= each flow-time budget (:func:`budget_state`)."""
    t = np.asarray(t, dtype=np.float64)
    idx = {t.size - 1}
    for b in budgets:
        below = np.nonzero(t <= float(b) * (1 + 1e-12))[0]
        if below.size:
            idx.add(int(below[-1]))
    return np.array(sorted(idx), dtype=np.int64)


def _network_index(split: xr.Dataset) -> np.ndarray:
    """Indices where ``split`` holds the network's losses (every saved time in caches that predate
    ``network_index``)."""
    if "network_index" in split:
        return np.asarray(split["network_index"].values, dtype=np.int64)
    return np.arange(split.sizes["t"])


def split_measurements(
    run: GridRun, n_val: int, refit_points: int, *, refit: bool, budgets: tuple[float, ...] = ()
) -> xr.Dataset:
    """Losses on the validation half (the first ``n_val`` test points) and the test half (the rest),
    of the network at :func:`network_indices` (the last saved time and the budgets ``budgets``) and
    (``refit``) of the output layer refit by minimum-norm least squares on the training set at
    :func:`refit_indices`; NaN elsewhere. Each is one pass over 10^4 test points at the paper's size,
    so only the states the study reads are measured.

    Cached next to the run (``<grid>/split/<run id>.nc``, keyed by ``n_val``, the refit times and
    the network times, a cache with more network times serving).
    """
    cache = split_cache(run.path)
    n_t = run.dataset.sizes["t"]
    idx = refit_indices(n_t, refit_points) if refit else np.zeros(0, dtype=np.int64)
    net_idx = network_indices(run.dataset["t"].values, budgets)
    if cache.is_file():
        cached = read_dataset(cache)
        if (
            int(cached.attrs["n_val"]) == n_val
            and np.array_equal(cached["refit_index"].values, idx)
            and set(net_idx.tolist()) <= set(_network_index(cached).tolist())
        ):
            return cached
    ds = run.dataset
    config = run_config_of(ds)
    x_test = torch.as_tensor(ds["x_test"].values, dtype=torch.float64)
    y_test = torch.as_tensor(ds["y_test"].values, dtype=torch.float64)
    if not 0 < n_val < x_test.shape[0]:
        raise ValueError(f"n_val must lie in (0, {x_test.shape[0]}) (the test draw), got {n_val}")
    x_train = torch.as_tensor(ds["x_train"].values, dtype=torch.float64)
    y_train = torch.as_tensor(ds["y_train"].values, dtype=torch.float64)
    model = ParticleModel.from_config(config, x_train.shape[1])
    halves = ((x_test[:n_val], y_test[:n_val]), (x_test[n_val:], y_test[n_val:]))
    out = {name: np.full(n_t, np.nan) for name in _SPLIT_VARS}
    weights = ds["weights"]
    refit_set, net_set = set(idx.tolist()), set(net_idx.tolist())
    for k in sorted(refit_set | net_set):
        w = torch.as_tensor(weights.values[k], dtype=torch.float64)
        if not torch.all(torch.isfinite(w)):
            continue
        if k in net_set:
            for name, (x, y) in zip(("val_loss", "test_half_loss"), halves, strict=True):
                out[name][k] = _loss(model, w, x, y)
        if k in refit_set:
            w_refit = refit_output_layer(model, w, x_train, y_train, rcond=config.observe.refit_rcond)
            for name, (x, y) in zip(("refit_val_loss", "refit_test_half_loss"), halves, strict=True):
                out[name][k] = _loss(model, w_refit, x, y)
    result = xr.Dataset(
        {name: ("t", values, {"long_name": _SPLIT_VARS[name], "units": "1"}) for name, values in out.items()},
        coords={"t": ("t", ds["t"].values, {"long_name": "flow time", "units": "1"})},
    )
    result["refit_index"] = ("refit", idx, {"long_name": "saved-time indices of the refits", "units": "1"})
    result["network_index"] = (
        "network",
        net_idx,
        {"long_name": "saved-time indices of the network's own losses", "units": "1"},
    )
    result.attrs.update(cf_attributes(f"validation/test split of {run.path.name}", "arbel2023 study", n_val=int(n_val)))
    atomic_write(cache, lambda tmp: result.to_netcdf(tmp))
    return result


def split_cache(run_path: Path) -> Path:
    """Where :func:`split_measurements` caches the split of the run file ``run_path``."""
    return run_path.parent.parent / "split" / run_path.name


def split_file(item: tuple) -> None:
    """:func:`split_measurements` of one run file, cached: ``(path, n_val, refit_points, refit)`` or
    ``(path, n_val, refit_points, refit, budgets)``. The unit of work of the parallel split pass
    (:func:`gnflow.studies.map_in_workers`)."""
    path, n_val, refit_points, refit, *rest = item
    budgets = tuple(rest[0]) if rest else ()
    run = GridRun(label=None, values={}, path=Path(path), dataset=read_dataset(path))
    split_measurements(run, n_val, refit_points, refit=refit, budgets=budgets)


def lazy_limit_test_loss(run: GridRun, n_val: int) -> float:
    """Test-half loss of the lazy, infinite-width limit of the random-features refit on ``run``'s data.

    The refit at t = 0 is the minimum-norm least-squares fit of the output layer on the M features
    sigma(u.x + b), u, b ~ N(0, tau0^2). As M -> infinity it becomes the minimum-norm interpolant of
    the random-features kernel k_tau0, and as tau0 -> infinity (the kernel regime, where the features
    do not move) the interpolant of the closed-form limit kernel
    (:func:`gnflow.kernels.large_scale_limit_kernel`: arc-cosine of order 1 for silu). Depends on the
    data (the seed) only.
    """
    ds = run.dataset
    config = run_config_of(ds)
    x_test = torch.as_tensor(ds["x_test"].values[n_val:], dtype=torch.float64)
    x_train = torch.as_tensor(ds["x_train"].values, dtype=torch.float64)
    activation = config.model.activation
    gram = large_scale_limit_kernel(x_train, activation=activation)
    cross = large_scale_limit_kernel(x_test, x_train, activation=activation)
    return kernel_regression(gram, cross, ds["y_train"].values, y_test=ds["y_test"].values[n_val:]).test_loss


def _loss(model: ParticleModel, weights: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> float:
    r = model.predict(weights, x).double() - y
    return float(r @ r) / (2 * x.shape[0])


@dataclass(frozen=True)
class RunMeasures:
    """The numbers of one run that the claims and figures use.

    Attributes
    ----------
    final_test:
        Test-half loss at the last saved state (inf when the run diverged).
    final_ratio:
        Final train loss / initial train loss.
    refit_test, refit_time:
        Test-half loss of the refit at the saved time of lowest validation refit loss (within the
        iteration budget when one is given), and that time; NaN without refits.
    rf_test:
        Test-half loss of the refit on the initial features (random features).
    status, diverged, wall_s, cpu_s:
        The run's status text, whether it diverged, its wall-clock and processor time (NaN in
        files without ``gnflow_cpu_time_s``).
    """

    final_test: float
    final_ratio: float
    refit_test: float
    refit_time: float
    rf_test: float
    status: str
    diverged: bool
    wall_s: float
    cpu_s: float


def measure(run: GridRun, split: xr.Dataset, *, t_max: float | None = None) -> RunMeasures:
    """:class:`RunMeasures` of ``run``; the refit time is chosen on validation among t <= ``t_max``."""
    ds = run.dataset
    loss = np.asarray(ds["train_loss"].values, dtype=np.float64)
    bad = diverged(ds)
    t = np.asarray(ds["t"].values, dtype=np.float64)
    allowed = np.ones(t.size, dtype=bool) if t_max is None else t <= t_max * (1 + 1e-12)
    k = choose_time(split["refit_val_loss"].values, allowed)
    refit_test = float(split["refit_test_half_loss"].values[k]) if k >= 0 else float("nan")
    return RunMeasures(
        final_test=float("inf") if bad else float(split["test_half_loss"].values[-1]),
        final_ratio=float("inf") if bad else float(loss[-1] / loss[0]),
        refit_test=refit_test,
        refit_time=float(t[k]) if k >= 0 else float("nan"),
        rf_test=float(split["refit_test_half_loss"].values[0]),
        status=str(ds.attrs["gnflow_status"]),
        diverged=bad,
        wall_s=float(ds.attrs.get("gnflow_wall_time_s", float("nan"))),
        cpu_s=float(ds.attrs.get("gnflow_cpu_time_s", float("nan"))),
    )


def budget_state(split: xr.Dataset, t_budget: float) -> float:
    """Test-half loss of the network at the last saved time <= ``t_budget``."""
    t = split["t"].values
    k = int(np.nonzero(t <= t_budget * (1 + 1e-12))[0][-1])
    if k not in set(_network_index(split).tolist()):
        raise ValueError(
            f"the split has no network loss at the budget t = {t_budget:g} (saved index {k}); "
            "pass the budget to split_measurements"
        )
    return float(split["test_half_loss"].values[k])


def study_path(out_dir: Path, name: str) -> Path:
    """The study's summary NetCDF."""
    return out_dir / f"{name}.nc"
