"""The arbel2023 study's own logic: its arms and labels, how the discrete methods are computed and
checked, the validation-only choice of times, and runs at a tiny size: discrete GD iterations
against the gradient flow where lam lambda_max(A) / N is small, divergence where it is large, and
the paper's 2e6-iteration GD by kernel_euler against its plain iterations."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr

from gnflow import simulate
from gnflow.config import config_from_dict
from gnflow.studies import GridRun, load_study_settings, study_module, study_scales

protocol = study_module("arbel2023").protocol


def _settings(**over: Any) -> dict[str, Any]:
    s = load_study_settings("arbel2023", "smoke")
    s.update(over)
    return s


def test_arms_are_labeled_by_lam_and_h_over_n_and_carry_their_horizons() -> None:
    s = _settings(lam=10.0, lam_sweep=[1.0, 0.316, 0.1], gn_iterations=1000, sweep_iterations=300, paper_h_over_n=0.02)
    at_500 = protocol.gn_arms(s, 500, sweep=True)
    assert [a.name for a in at_500] == ["gn_lam10", "gn_lam1", "gn_lam0.316", "gn_lam0.1", "gn_flow"]
    assert at_500[0].label == "GN lam=10 (h/N=0.02)" and at_500[0].role == "paper"
    assert at_500[-1].label == "GN flow (lam -> 0)" and at_500[-1].lam is None
    # the paper's arm runs to its cap, the sweep to the same iteration budget whatever lam
    assert at_500[0].iterations == 1000
    assert [a.iterations for a in at_500[1:4]] == pytest.approx([300, 300, 300])
    assert at_500[0].solver_method == "euler"  # the paper's GN: its plain iterations
    entry = at_500[3].run_entry(s)
    assert entry["solver.method"] == "kernel_euler" and entry["solver.step_size"] == 0.1
    assert entry["solver.t_end"] == pytest.approx(30.0) and entry["solver.max_steps"] >= 300
    # at N = 200 the paper's h/N = 0.02 is h = 4, an arm of its own
    at_200 = protocol.gn_arms(s, 200, sweep=False)
    assert [a.name for a in at_200] == ["gn_lam10", "gn_hN0.02", "gn_flow"]
    assert at_200[1].lam == pytest.approx(4.0) and at_200[1].label == "GN lam=4 (h/N=0.02)"
    assert at_200[0].label == "GN lam=10 (h/N=0.05)"
    with pytest.raises(ValueError, match=r"lam_sweep: every step must lie in \(0, lam = 10\)"):
        protocol.gn_arms(_settings(lam=10.0, lam_sweep=[20.0]), 500, sweep=True)


def test_gd_arm_is_the_papers_discrete_gd_and_its_method_is_a_setting() -> None:
    s = _settings(lam=10.0, gd_iterations=2_000_000, gd_exponential_from=5.0, gd_method="dopri5", gd_t_end=1e9)
    gd = protocol.gd_arm(s, 500)
    assert gd.t_end == pytest.approx(2e7) and gd.lam == 10.0 and gd.label == "GD lam=10 (h/N=0.02)"
    assert gd.solver_method == "kernel_euler"
    entry = gd.run_entry(s)
    assert entry["solver.step_size"] == 10.0 and entry["solver.max_steps"] >= 2_000_000
    assert entry["solver.rtol"] == s["discrete_rtol"]
    assert entry["solver.atol"] == pytest.approx(1e-3 * s["discrete_rtol"])
    plain = protocol.gd_arm({**s, "gd_discrete_method": "euler"}, 500)
    assert plain.solver_method == "euler" and "solver.rtol" not in plain.run_entry(s)
    with pytest.raises(ValueError, match="gd_discrete_method must be one of euler, kernel_euler"):
        protocol.gd_arm({**s, "gd_discrete_method": "dopri5"}, 500)
    converged = protocol.converged_gd_arm(s, 500, 1.0)
    assert converged.t_end == 1e9 and converged.label == "GD flow (converged)"
    assert converged.solver_method == "dopri5"
    assert protocol.converged_gd_arm(s, 500, 10.0).solver_method == "kernel_exponential"


def test_the_agreement_check_runs_each_discrete_method_both_ways_over_the_same_iterations() -> None:
    s = _settings(lam=10.0, lam_sweep=[1.0, 0.1], agreement_iterations=500, sweep_iterations=300)
    arms = {a.name: a for a in protocol.check_arms(s, 40)}
    assert set(arms) == {"check_gd_euler", "check_gd_blocks", "check_gn_euler", "check_gn_blocks"}
    for method, lam, k in (("gd", 10.0, 500), ("gn", 0.1, 300)):
        plain, blocks = arms[f"check_{method}_euler"], arms[f"check_{method}_blocks"]
        assert (plain.solver_method, blocks.solver_method) == ("euler", "kernel_euler")
        assert plain.lam == blocks.lam == lam and plain.t_end == blocks.t_end == pytest.approx(lam * k)
    t = np.array([0.0, 1.0, 2.0])
    a = xr.Dataset({"train_loss": ("t", [1.0, 0.5, 1e-9]), "test_loss": ("t", [2.0, 1.0, 0.5])}, coords={"t": t})
    b = xr.Dataset({"train_loss": ("t", [1.0, 0.55, 2e-9]), "test_loss": ("t", [2.0, 1.0, 0.6])}, coords={"t": t})
    train, test = protocol.agreement(a, b)
    # 0.05 / 0.5 = 0.1 at t = 1; at t = 2 the difference 1e-9 counts against the floor 1e-6 L0
    assert train == pytest.approx(0.1) and test == pytest.approx(0.2)
    with pytest.raises(ValueError, match="do not share their saved times"):
        protocol.agreement(a, b.assign_coords(t=t + 10))


def test_step_ratio_is_the_largest_finite_one() -> None:
    n = 50
    ds = xr.Dataset({"gram_eigmax": ("t", [0.1, 0.2, np.nan, 0.4])}, coords={"sample": np.arange(n)})
    assert protocol.step_ratio(ds, 10.0) == pytest.approx(10.0 * 0.4 / n)
    empty = xr.Dataset({"gram_eigmax": ("t", [np.nan])}, coords={"sample": np.arange(n)})
    assert protocol.step_ratio(empty, 10.0) == math.inf


def test_times_are_chosen_on_validation_within_the_allowed_saved_times() -> None:
    validation = np.array([1.0, 0.5, 0.2, 0.3, 0.1])
    assert protocol.choose_time(validation) == 4
    allowed = np.array([True, True, True, True, False])
    assert protocol.choose_time(validation, allowed) == 2
    assert protocol.choose_time(np.array([np.nan, 0.4, np.nan])) == 1
    assert protocol.choose_time(np.array([np.nan, np.nan])) == -1
    assert list(protocol.refit_indices(10, 4)) == [0, 3, 6, 9]
    assert list(protocol.refit_indices(3, 8)) == [0, 1, 2]


def _gd_config(tau0: float, seed: int, method: str, lam: float, t_end: float) -> Any:
    return config_from_dict(
        {
            "seed": seed,
            "data": {"kind": "teacher", "n_train": 30, "n_test": 100},
            "model": {"width": 80, "init_scale": tau0},
            "flow": {"kind": "gradient"},
            "solver": {
                "method": method,
                "step_size": lam,
                "t_end": t_end,
                "n_save": 21,
                "save_spacing": "linear",
                "stop_loss_ratio": 0.0,
                "max_steps": 100_000,
            },
        }
    )


def test_discrete_gd_agrees_with_the_gradient_flow_where_the_step_ratio_is_small() -> None:
    # tau0 = 1, N = 30, M = 80: lambda_max(A) ~ 2.5, so lam = 0.5 gives lam lambda_max / N ~ 0.04
    lam, t_end = 0.5, 3000.0
    flow = simulate(_gd_config(1.0, 1, "dopri5", lam, t_end))
    euler = simulate(_gd_config(1.0, 1, "euler", lam, t_end))
    ratio = protocol.step_ratio(flow, lam)
    assert ratio <= 0.1
    np.testing.assert_allclose(euler["t"].values, flow["t"].values)
    decay = np.abs(np.log(flow["train_loss"].values / flow["train_loss"].values[0]))
    gap = np.abs(np.log(euler["train_loss"].values / flow["train_loss"].values))
    assert decay[-1] > 1.0  # the runs went somewhere
    # stated tolerance: Euler's log-loss error is at most the ratio (here <= 0.1) times the log decay
    assert np.all(gap <= ratio * decay + 1e-6), (gap, ratio * decay)
    test_gap = abs(float(euler["test_loss"].values[-1] / flow["test_loss"].values[-1]) - 1)
    assert test_gap <= ratio


def test_discrete_gd_with_a_large_step_ratio_diverges_and_says_so() -> None:
    lam = 10.0
    flow = simulate(_gd_config(10.0, 2, "kernel_exponential", lam, 200.0))
    assert protocol.step_ratio(flow, lam) > 2.0  # beyond Euler's stability limit for the top mode
    euler = simulate(_gd_config(10.0, 2, "euler", lam, 2000.0))
    status = str(euler.attrs["gnflow_status"])
    assert status.startswith("failed") and "non-finite" in status
    assert protocol.diverged(euler) and not protocol.diverged(flow)


def test_the_study_has_a_medium_scale_between_small_and_paper() -> None:
    assert study_scales("arbel2023") == ("smoke", "small", "medium", "paper", "paper_rows")
    medium = load_study_settings("arbel2023", "medium")
    assert (medium["n_train"], medium["width"], medium["n_test"], len(medium["seeds"])) == (200, 2000, 5000, 5)
    assert medium["tau0"] == [0.01, 0.1, 0.5, 1.0, 5.0, 10.0, 100.0]
    paper = load_study_settings("arbel2023", "paper")
    assert paper["checkpoint_every_s"] > 0 and paper["gd_iterations"] == 2_000_000 and paper["lam"] == 10.0
    for scale in study_scales("arbel2023"):
        s = load_study_settings("arbel2023", scale)
        assert min(s["lam_sweep"]) <= s["lam"] / 100 + 1e-12 and len(s["lam_sweep"]) >= (2 if scale == "smoke" else 3)


def test_rows_combine_into_a_claim_verdict_and_divergence_gives_no_ratio() -> None:
    study = study_module("arbel2023")
    assert study._combine(["supported", "supported"]) == "supported"
    assert study._combine(["supported", "contradicted"]) == "contradicted"
    assert study._combine(["supported", "inconclusive"]) == "inconclusive"
    assert study._combine([]) == "inconclusive"
    seeds = [1, 2, 3, 4, 5]
    row = study._pc([0.1, 0.2, 0.1, 0.3, 0.2], [1.0, math.inf, 1.0, 1.0, 1.0], "c", "a", "b", seeds, "less")
    assert isinstance(row, study.NoComparison) and row.verdict == "inconclusive" and "1/5 seeds" in row.summary()
    close = study._pc([1.0, 1.02, 0.99, 1.01, 1.0], [1.0] * 5, "c", "a", "b", seeds, "less")
    far = study._pc([3.0, 3.2, 2.9, 3.1, 3.0], [1.0] * 5, "c", "a", "b", seeds, "less")
    noisy = study._pc([0.5, 2.0, 0.7, 1.6, 1.0], [1.0] * 5, "c", "a", "b", seeds, "less")
    assert study._equivalence(close, 0.25) == "supported"
    assert study._equivalence(far, 0.25) == "contradicted"
    assert study._equivalence(noisy, 0.25) == "inconclusive"
    assert (
        far.verdict == "contradicted"
        and study._pc([0.3] * 4 + [0.31], [1.0] * 5, "c", "a", "b", seeds, "less").verdict == "supported"
    )


def test_only_voting_rows_decide_a_claim_and_every_row_is_in_its_detail_table() -> None:
    study = study_module("arbel2023")
    seeds = [1, 2, 3, 4, 5]
    good = study._pc([0.3, 0.31, 0.29, 0.3, 0.32], [1.0] * 5, "c", "a", "b", seeds, "less")
    bad = study._pc([3.0, 3.1, 2.9, 3.2, 3.0], [1.0] * 5, "c", "a", "b", seeds, "less")
    # a contradicting row that does not vote leaves the claim supported; the same row voting flips it
    claim, rows = study._claim("s", [("voted", good, good.verdict), ("reported", bad, None)], "note")
    assert claim.verdict == "supported" and "voted: " in claim.measured and "reported:" not in claim.measured
    flipped, _ = study._claim("s", [("voted", good, good.verdict), ("reported", bad, bad.verdict)], "note")
    assert flipped.verdict == "contradicted"
    table = "\n".join(
        study._detail_table(3, [*rows, ("diverged", "discrete GD diverged in 5/5 seeds", "inconclusive")])
    )
    assert "**Claim 3**" in table
    assert "| reported | 3.04 |" in table and "| 0/5 < 1 |  | no |" in table
    assert "| diverged | discrete GD diverged in 5/5 seeds |" in table and "| inconclusive | yes |" in table


class _Measures:
    def __init__(self, diverged: bool, final_ratio: float) -> None:
        self.diverged, self.final_ratio = diverged, final_ratio


def test_an_unconverged_gd_beyond_its_stability_limit_is_unstable_and_a_converged_one_is_not() -> None:
    study = study_module("arbel2023")
    p = study.Protocol.__new__(study.Protocol)  # only the fields unstable_gd reads
    p.s, p.seeds = {"stop_loss_ratio": 1e-8}, [1, 2, 3, 4]
    # seed 1: beyond the limit and stuck (a catapult that never settled); seed 2: beyond the limit but
    # converged; seed 3: stuck but within the limit (merely slow); seed 4: diverged (counted elsewhere)
    p.ratio_run = {(10.0, 1): 5.6, (10.0, 2): 8.1, (10.0, 3): 0.5, (10.0, 4): 500.0}
    p.measures = {
        ("gd", 10.0, 1): _Measures(False, 0.047),
        ("gd", 10.0, 2): _Measures(False, 1e-8),
        ("gd", 10.0, 3): _Measures(False, 0.047),
        ("gd", 10.0, 4): _Measures(True, math.inf),
    }
    assert p.unstable_gd(10.0) == [1]


def test_the_setup_names_the_sizes_that_differ_from_the_papers() -> None:
    study = study_module("arbel2023")
    medium = load_study_settings("arbel2023", "medium")
    (line,) = study._size_differences(medium, 10.0)
    assert "N = 200 (paper: 500)" in line and "M = 2000 (paper: 5000)" in line and "h/N = 0.05" in line
    paper = load_study_settings("arbel2023", "paper")
    assert study._size_differences(paper, 10.0) == []


def test_splits_computed_on_worker_processes_equal_the_serial_ones(tmp_path) -> None:
    from gnflow import run
    from gnflow.dataset import read_dataset
    from gnflow.studies import StudyContext, map_in_workers

    runs = tmp_path / "grid" / "runs"
    runs.mkdir(parents=True)
    items = []
    for seed in (1, 2):
        config = config_from_dict(
            {
                "seed": seed,
                "data": {"kind": "teacher", "n_train": 20, "n_test": 60},
                "model": {"width": 40, "init_scale": 0.5},
                "flow": {"kind": "gauss_newton", "damping": "eigmin"},
                "solver": {"t_end": 200.0, "n_save": 9},
                "output": {"save_test": True},
            }
        )
        _, path = run(config, path=runs / f"run{seed}.nc", progress=False)
        items.append((str(path), 30, 4, True))
    for item in items:
        protocol.split_file(item)  # serially, in this process
    serial = {p: read_dataset(protocol.split_cache(Path(p))).load() for p, *_ in items}
    for p, *_ in items:
        protocol.split_cache(Path(p)).unlink()
    context = StudyContext(name="arbel2023", scale="smoke", out_dir=tmp_path, executor="dask", workers=2)
    assert map_in_workers(context, protocol.split_file, items) == [None, None]
    for p, *_ in items:
        parallel = read_dataset(protocol.split_cache(Path(p))).load()
        assert np.isfinite(parallel["refit_test_half_loss"].values).sum() == 4
        xr.testing.assert_identical(parallel.drop_attrs(), serial[p].drop_attrs())
    # a failing call is raised in the study process
    with pytest.raises(FileNotFoundError):
        map_in_workers(context, protocol.split_file, [(str(runs / "missing.nc"), 30, 4, True)] * 2)


def test_split_measures_the_network_at_the_last_state_and_the_budgets_only(tmp_path) -> None:
    from gnflow import run

    runs = tmp_path / "grid" / "runs"
    runs.mkdir(parents=True)
    config = config_from_dict(
        {
            "seed": 3,
            "data": {"kind": "teacher", "n_train": 20, "n_test": 60},
            "model": {"width": 40, "init_scale": 0.5},
            "flow": {"kind": "gauss_newton", "damping": "eigmin"},
            "solver": {"t_end": 200.0, "n_save": 9},
            "output": {"save_test": True},
        }
    )
    ds, path = run(config, path=runs / "run.nc", progress=False)
    grid_run = GridRun(label=None, values={}, path=path, dataset=ds)
    t = ds["t"].values
    budget = 0.5 * (t[3] + t[4])  # the last saved time <= budget is index 3
    split = protocol.split_measurements(grid_run, 30, 4, refit=False, budgets=(budget,))
    measured = np.flatnonzero(np.isfinite(split["test_half_loss"].values))
    assert measured.tolist() == [3, t.size - 1]
    # the two equal halves average to the run's own test loss on the whole draw (an independent pass)
    both = 0.5 * (split["val_loss"].values + split["test_half_loss"].values)
    np.testing.assert_allclose(both[measured], ds["test_loss"].values[measured], rtol=1e-12)
    assert protocol.budget_state(split, budget) == split["test_half_loss"].values[3]
    with pytest.raises(ValueError, match="no network loss at the budget"):
        protocol.budget_state(split, 0.5 * (t[1] + t[2]))
    # a cache without the budget's state is not served: the state is measured
    again = protocol.split_measurements(grid_run, 30, 4, refit=False, budgets=(0.5 * (t[1] + t[2]),))
    assert np.flatnonzero(np.isfinite(again["test_half_loss"].values)).tolist() == [1, t.size - 1]


def test_lazy_limit_is_the_wide_random_features_refit_on_the_test_half(tmp_path) -> None:
    # relu's random-features kernel is scale-free, so the lazy limit is the M -> infinity limit of the
    # minimum-norm refit on relu features at any tau0: the oracle is that refit with NumPy at
    # M = 10^5 (its spread over draws is 0.3% here; the validation half's loss differs by 40%)
    from gnflow import run
    from gnflow.dataset import read_dataset

    config = config_from_dict(
        {
            "seed": 3,
            "data": {"kind": "teacher", "n_train": 15, "n_test": 80},
            "model": {"width": 20, "activation": "relu"},
            "flow": {"kind": "gradient"},
            "solver": {"t_end": 1.0, "n_save": 2},
            "output": {"save_test": True},
        }
    )
    _, path = run(config, path=tmp_path / "relu.nc", progress=False)
    ds = read_dataset(path)
    n_val = 30
    exact = protocol.lazy_limit_test_loss(GridRun(label=None, values={}, path=path, dataset=ds), n_val)
    x, y = ds["x_train"].values, ds["y_train"].values
    x_test, y_test = ds["x_test"].values[n_val:], ds["y_test"].values[n_val:]
    rng = np.random.default_rng(4)
    hidden, bias = rng.standard_normal((x.shape[1], 100_000)), rng.standard_normal(100_000)
    output = np.linalg.lstsq(np.maximum(x @ hidden + bias, 0.0), y, rcond=None)[0]
    residual = np.maximum(x_test @ hidden + bias, 0.0) @ output - y_test
    refit = float(residual @ residual) / (2 * residual.size)
    assert abs(exact / refit - 1) < 0.02, (exact, refit)
