"""The work-precision script of the long-horizon study at its smoke scale: its reference agrees with
an independent dopri8 solve, the errors it reports fall with the tolerance, and a stopped
invocation resumes from its store."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

from gnflow.config import config_from_dict
from gnflow.experiment import build_experiment

SCRIPT = Path(__file__).resolve().parents[1] / "studies" / "long_horizon" / "work_precision.py"


@pytest.fixture(scope="module")
def wp():
    spec = importlib.util.spec_from_file_location("work_precision", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def table(wp, tmp_path_factory):
    out = tmp_path_factory.mktemp("wp")
    args = ["--scale", "smoke", "--t-end", "500", "-o", str(out), "--methods", "kernel_etd3", "dopri8", "rk4"]
    assert wp.main(args) == 0
    with xr.open_dataset(out / "work_precision_smoke_gradient.nc") as ds:
        return out, ds.load()


def test_reference_agrees_with_an_independent_tight_solve(table) -> None:
    _, ds = table
    dopri8 = ds.where(ds["method"] == "dopri8", drop=True)
    assert dopri8.sizes["run"] == 1
    assert float(dopri8["weight_error"].values[0]) < 1e-7  # dopri8 at rtol 1e-8 against kernel_etd3 at 1e-9


def test_errors_fall_with_the_tolerance(table) -> None:
    _, ds = table
    etd3 = ds.where((ds["method"] == "kernel_etd3") & (ds["setting"] > 2e-9), drop=True)
    order = np.argsort(-etd3["setting"].values)
    errors = etd3["weight_error"].values[order]
    assert np.all(np.diff(np.log10(errors)) < -0.5), errors  # each decade of rtol gains half a decade or more
    rk4 = ds.where(ds["method"] == "rk4", drop=True)
    assert rk4.sizes["run"] == 3 and (rk4["nfe"] > 0).any()


def test_rk4_steps_are_set_by_the_kernel_grown_along_the_flow(wp, table) -> None:
    # the kernel grows along the flow (3.4x at the smoke scale), so a step at 0.9 of the limit set by
    # A(0) alone is unstable later and fails the loss check; with the reference's final state the
    # three fractions finish with errors that grow with the step
    _, ds = table
    rk4 = ds.where(ds["method"] == "rk4", drop=True)
    assert set(rk4["status"].values.astype(str)) == {"completed"}
    errors = rk4["weight_error"].values[np.argsort(rk4["setting"].values)]
    assert np.all(np.isfinite(errors)) and np.all(np.diff(errors) > 0), errors
    config = config_from_dict(wp.base_config("smoke", "gradient", 1.0, 500.0))
    unstable = wp.one_run(build_experiment(config), "rk4", 0.9, 60.0, reference_weights=None)
    assert unstable["status"].startswith("failed: train loss increased"), unstable["status"]
    assert 0 < unstable["t_reached"] < 500 and unstable["nfe"] > 0 and np.isnan(unstable["test_loss"])


def test_concurrent_invocations_keep_each_others_runs(wp, tmp_path) -> None:
    # two invocations (one per core) read the store at their start; each run is merged into the
    # store as it is when written, so neither drops the other's runs (nor the seeded table rows)
    store = tmp_path / "work_precision_small_gradient.json"
    first, second = {"kept|row": {"from": "table"}}, {}
    first = wp._merge(store, first, {"1|2e7|rk4|0.9": {"run": 1}})
    second = wp._merge(store, second, {"0.1|2e7|rk4|0.9": {"run": 2}})
    first = wp._merge(store, first, {"1|2e7|rk4|0.5": {"run": 3}})
    assert set(json.loads(store.read_text())) == {"kept|row", "1|2e7|rk4|0.9", "0.1|2e7|rk4|0.9", "1|2e7|rk4|0.5"}


def test_again_solves_only_the_methods_asked_for_and_keeps_the_earlier_run(wp, table, tmp_path) -> None:
    out, _ = table
    before = json.loads((out / "work_precision_smoke_gradient.json").read_text())
    (tmp_path / "work_precision_smoke_gradient.json").write_text(json.dumps(before))
    args = ["--scale", "smoke", "--t-end", "500", "-o", str(tmp_path), "--methods", "dopri8", "--again"]
    assert wp.main(args) == 0
    after = json.loads((tmp_path / "work_precision_smoke_gradient.json").read_text())
    assert after.keys() == before.keys()
    for key, run in after.items():
        if run["method"] == "dopri8":
            assert run["earlier_run"]["cpu_time_s"] == before[key]["cpu_time_s"] and run["test_loss_change"] < 1e-12
        else:
            assert run == before[key]  # the reference and the other methods are not solved again


def test_a_second_invocation_reuses_the_store(wp, table) -> None:
    out, _ = table
    store = out / "work_precision_smoke_gradient.json"
    before = json.loads(store.read_text())
    assert (
        wp.main(["--scale", "smoke", "--t-end", "500", "-o", str(out), "--methods", "kernel_etd3", "dopri8", "rk4"])
        == 0
    )
    assert json.loads(store.read_text()) == before
    assert (out / "work_precision_smoke_gradient.png").stat().st_size > 0
    assert "| kernel_etd3 |" in (out / "work_precision_smoke_gradient.md").read_text()


def test_a_fresh_checkout_keeps_the_committed_rows_and_solves_only_the_reference_again(wp, table, tmp_path) -> None:
    # without the store (it holds the weights and is not committed), the committed table's rows are
    # kept with their errors, the reference is solved again for its weights, and new runs are
    # measured against it; a row that was solved again would lose the marked error below
    out, _ = table
    with xr.open_dataset(out / "work_precision_smoke_gradient.nc") as ds:
        committed = ds.load()
    marked = int(
        np.flatnonzero((committed["method"] == "kernel_etd3").values & (committed["setting"] == 1e-5).values)[0]
    )
    committed["weight_error"].values[marked] = 0.123
    committed.to_netcdf(tmp_path / "work_precision_smoke_gradient.nc")
    args = ["--scale", "smoke", "--t-end", "500", "-o", str(tmp_path), "--methods", "kernel_etd3", "dopri5"]
    assert wp.main(args) == 0
    store = json.loads((tmp_path / "work_precision_smoke_gradient.json").read_text())
    reference = next(r for r in store.values() if (r["method"], r["setting"]) == wp.reference_of("smoke"))
    assert "weights" in reference and reference["test_loss_change"] < 1e-12  # the same solve again
    assert reference["earlier_run"]["cpu_time_s"] == pytest.approx(float(committed["cpu_time_s"].values[0]))
    with xr.open_dataset(tmp_path / "work_precision_smoke_gradient.nc") as ds:
        ds = ds.load()
    kept = ds.where((ds["method"] == "kernel_etd3") & (ds["setting"] == 1e-5), drop=True)
    assert float(kept["weight_error"].values[0]) == 0.123 and str(kept["measured"].values[0]) != "undated"
    dopri5 = ds.where(ds["method"] == "dopri5", drop=True)
    assert dopri5.sizes["run"] == 1 and 0 < float(dopri5["weight_error"].values[0]) < 1e-4


def test_gauss_newton_flow_table_against_its_dopri8_reference(wp, tmp_path) -> None:
    # the GN flow's reference is dopri8 at rtol 1e-10 (smoke, independent of the kernel methods), checked here
    # against dopri5 at rtol 1e-8, an independent solve; dopri5's error falls with its tolerance
    args = ["--scale", "smoke", "--flow", "gauss_newton", "-o", str(tmp_path), "--methods", "dopri5", "rk4"]
    assert wp.main(args) == 0
    with xr.open_dataset(tmp_path / "work_precision_smoke_gauss_newton.nc") as ds:
        ds = ds.load()
    assert ds.attrs["reference"].startswith("dopri8 at rtol 1e-10")
    assert float(ds["t_end"].values[0]) == wp.GN_T_END_PER_N * wp.SCALES["smoke"]["n_train"]
    dopri5 = ds.where((ds["method"] == "dopri5") & (ds["status"] == "completed"), drop=True)
    order = np.argsort(-dopri5["setting"].values)
    errors = dopri5["weight_error"].values[order]
    assert errors[-1] < 1e-8, errors  # rtol 1e-8 against the reference
    assert np.all(np.diff(np.log10(errors)) < -1.0), errors
    rk4 = ds.where(ds["method"] == "rk4", drop=True)
    assert rk4.sizes["run"] == len(wp.RK4_FRACTIONS["gauss_newton"])
    rk4_errors = rk4["weight_error"].values[np.argsort(rk4["setting"].values)]
    assert np.all(np.diff(np.log10(rk4_errors)) > 0), rk4_errors  # larger steps, larger errors


def test_gauss_newton_kernel_method_at_the_tolerances_asked_for(wp, tmp_path) -> None:
    # --rtols replaces the grid: the store holds the reference and kernel_etd4 at the two tolerances
    # only, and kernel_etd4's error against the independent dopri8 reference falls with its rtol
    args = ["--scale", "smoke", "--flow", "gauss_newton", "-o", str(tmp_path), "--methods", "kernel_etd4"]
    assert wp.main([*args, "--rtols", "1e-5", "1e-7"]) == 0
    store = json.loads((tmp_path / "work_precision_smoke_gauss_newton.json").read_text())
    planned = sorted((r["method"], r["setting"]) for r in store.values())
    assert planned == sorted([wp.reference_of("smoke", "gauss_newton"), ("kernel_etd4", 1e-5), ("kernel_etd4", 1e-7)])
    with xr.open_dataset(tmp_path / "work_precision_smoke_gauss_newton.nc") as ds:
        ds = ds.load()
    etd4 = ds.where(ds["method"] == "kernel_etd4", drop=True)
    errors = etd4["weight_error"].values[np.argsort(-etd4["setting"].values)]
    assert (etd4["linearizations"].values > 0).all() and errors[1] < errors[0] / 10, errors


def test_a_method_without_the_flow_is_refused(wp, tmp_path) -> None:
    with pytest.raises(SystemExit, match="midpoint not measured for the gauss_newton flow; allowed: kernel_etd3"):
        wp.main(["--scale", "smoke", "--flow", "gauss_newton", "-o", str(tmp_path), "--methods", "midpoint"])


PAPER_SCRIPT = SCRIPT.with_name("paper_etd3.py")


def _paper_script(monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPT.parent))  # paper_etd3 imports work_precision
    spec = importlib.util.spec_from_file_location("paper_etd3", PAPER_SCRIPT)
    paper = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(paper)
    return paper


def test_paper_records_survive_concurrent_invocations(tmp_path, monkeypatch) -> None:
    paper = _paper_script(monkeypatch)
    monkeypatch.setattr(paper, "OUT", tmp_path / "records.json")
    paper._store({"1.0|1e-05": {"rtol": 1e-5}})
    # another invocation writes its record between two runs of this one
    other = json.loads(paper.OUT.read_text()) | {"dopri5|1.0|1e-06": {"rtol": 1e-6}}
    paper.OUT.write_text(json.dumps(other))
    merged = paper._store({"1.0|1e-06": {"rtol": 1e-6}})
    assert set(merged) == {"1.0|1e-05", "dopri5|1.0|1e-06", "1.0|1e-06"}
    assert json.loads(paper.OUT.read_text()) == merged
    assert not paper.OUT.with_suffix(".json.partial").exists()


def test_paper_summary_measures_every_run_against_the_tightest_kernel_etd3_run(tmp_path, monkeypatch) -> None:
    paper = _paper_script(monkeypatch)
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=(7, 4))
    w_ref = w0 + rng.normal(size=(7, 4))
    offsets = {
        ("kernel_etd3", 1e-7): 0.0,
        ("kernel_etd3", 1e-5): 3e-3,
        ("dopri5", 1e-6): 2e-4,
        ("kernel_etd4", 1e-5): 5e-4,
    }
    results = {}
    for (method, rtol), size in offsets.items():
        direction = rng.normal(size=w0.shape)
        weights = w_ref + size * np.linalg.norm(w_ref - w0) * direction / np.linalg.norm(direction)
        np.save(paper._weights_path(1.0, rtol, method, tmp_path), weights)
        results[paper._key(method, 1.0, rtol)] = {
            "method": method, "tau0": 1.0, "rtol": rtol, "status": "completed", "t": 2e7, "cpu_s": 1.0 / rtol,
            "nfe": 10, "linearizations": 0, "steps": 5, "rejected": 0, "train_loss": 1.0,
            "test_loss": 2.0 * (1.0 + size),
        }  # fmt: skip
    # a tau0 without a kernel_etd3 run is left out; a run without its weights file keeps the distance
    # recorded when the file existed, and without one it has no weight error (but its test-loss error)
    results["dopri5|0.1|1e-06"] = {**results["dopri5|1.0|1e-06"], "tau0": 0.1}
    results["dopri5|1.0|1e-08"] = {**results["dopri5|1.0|1e-06"], "rtol": 1e-8, "distances": {"1.0|1e-07": 7e-5}}
    results["dopri5|1.0|1e-09"] = {**results["dopri5|1.0|1e-06"], "rtol": 1e-9}
    # a dated record says when (end of run) and at what load its CPU seconds were measured
    results["dopri5|1.0|1e-09"] |= {"date": "2026-12-03T15:13:24Z", "load_average": [2.04, 2.01, 1.63]}
    paths = paper.summarize(results, tmp_path, initial_weights=lambda tau0: w0)
    assert [p.suffix for p in paths] == [".nc", ".md", ".png"]
    with xr.open_dataset(paths[0]) as ds:
        ds = ds.load()
    assert ds.attrs["reference"].startswith("weights: kernel_etd3 at rtol 1e-07 (tau0 = 1); test loss: kernel_etd3 at")
    columns = (ds[name].values for name in ("method", "setting", "weight_error", "test_loss_error"))
    got = {(str(m), float(s)): (float(w), float(t)) for m, s, w, t in zip(*columns, strict=True)}
    expected = {key: (size, size) for key, size in offsets.items() if size > 0}
    expected |= {("dopri5", 1e-8): (7e-5, 2e-4), ("dopri5", 1e-9): (np.nan, 2e-4)}
    assert set(got) == set(expected)
    for key, errors in expected.items():
        np.testing.assert_allclose(got[key], errors, rtol=1e-12)
    table = paths[1].read_text()
    assert (
        "| 1 | dopri5 | 1e-09 | completed | 2e+07 | 1000000.0 | 10 | 0 | – | 2.00e-04 | 2026-12-03 15:13, 2.0 |"
        in table
    )
    assert "| 1 | dopri5 | 1e-06 | completed | 2e+07 | 1000000.0 | 10 | 0 | 2.00e-04 | 2.00e-04 | undated |" in table


def test_paper_summary_measures_test_loss_against_the_tightest_run_of_either_kernel_method(
    tmp_path, monkeypatch
) -> None:
    """A kernel_etd4 run tighter than every kernel_etd3 run is the test-loss reference; weights stay on kernel_etd3."""
    paper = _paper_script(monkeypatch)
    rng = np.random.default_rng(1)
    w0 = rng.normal(size=(5, 4))
    w_ref = w0 + rng.normal(size=(5, 4))
    record = {"status": "completed", "t": 2e7, "cpu_s": 1.0, "nfe": 10, "linearizations": 3, "steps": 2, "rejected": 0}
    runs = {
        ("kernel_etd3", 1e-7): (0.0, 3.0 * (1 + 1e-7)),
        ("kernel_etd4", 1e-8): (1e-7, 3.0),
        ("dopri5", 1e-6): (4e-6, 3.0 * (1 - 5e-8)),
    }
    results = {}
    for (method, rtol), (size, test_loss) in runs.items():
        direction = rng.normal(size=w0.shape)
        weights = w_ref + size * np.linalg.norm(w_ref - w0) * direction / np.linalg.norm(direction)
        np.save(paper._weights_path(1.0, rtol, method, tmp_path), weights)
        results[paper._key(method, 1.0, rtol)] = record | {
            "method": method, "tau0": 1.0, "rtol": rtol, "train_loss": 1.0, "test_loss": test_loss,
        }  # fmt: skip
    paths = paper.summarize(results, tmp_path, initial_weights=lambda tau0: w0)
    with xr.open_dataset(paths[0]) as ds:
        ds = ds.load()
    assert "test loss: kernel_etd4 at rtol 1e-08 (tau0 = 1)" in ds.attrs["reference"]
    columns = (ds[name].values for name in ("method", "setting", "weight_error", "test_loss_error"))
    got = {(str(m), float(s)): (float(w), float(t)) for m, s, w, t in zip(*columns, strict=True)}
    expected = {
        ("kernel_etd3", 1e-7): (np.nan, 1e-7),  # the weight reference: no weight error, a test-loss error
        ("kernel_etd4", 1e-8): (1e-7, np.nan),  # the test-loss reference: its distance to the weight reference
        ("dopri5", 1e-6): (4e-6, 5e-8),
    }
    assert set(got) == set(expected)
    for key, errors in expected.items():
        np.testing.assert_allclose(got[key], errors, rtol=1e-9)


def test_paper_rerun_keeps_distances_only_when_it_is_the_same_run(monkeypatch) -> None:
    """A rerun of a key (weights file lost) keeps the earlier distances only for the same steps and test loss."""
    paper = _paper_script(monkeypatch)
    earlier = {"steps": 540, "test_loss": 7.4448608195172e-05, "distances": {"0.1|1e-07": 6.1e-7}}
    same = {"steps": 540, "test_loss": 7.4448608195171e-05}
    assert paper._carry_distances(earlier, same)["distances"] == {"0.1|1e-07": 6.1e-7}
    assert "distances" not in paper._carry_distances(earlier, same | {"steps": 541})
    assert "distances" not in paper._carry_distances(earlier, same | {"test_loss": 7.45e-05})
    assert paper._carry_distances(None, same) == same
    # the earlier run's timing is kept beside the new one, after those it kept itself
    timed = earlier | {"cpu_s": 405.9, "gnflow": "abc", "earlier_runs": [{"cpu_s": 500.0}]}
    carried = paper._carry_distances(timed, same | {"cpu_s": 300.0})
    assert carried["cpu_s"] == 300.0 and carried["earlier_runs"] == [
        {"cpu_s": 500.0},
        {"cpu_s": 405.9, "gnflow": "abc"},
    ]
    # a different run of the same key is kept whole beside the new one, with its own distances
    other = paper._carry_distances(timed, same | {"steps": 541})
    assert "distances" not in other
    assert other["earlier_runs"] == [
        {"cpu_s": 500.0},
        {"cpu_s": 405.9, "gnflow": "abc", "steps": 540, "test_loss": earlier["test_loss"]}
        | {"distances": {"0.1|1e-07": 6.1e-7}, "different_run": True},
    ]


def test_population_test_loss_reads_the_runs_and_measures_their_spread(wp, tmp_path, monkeypatch) -> None:
    """The study's-sample column is the work-precision test-loss ratio of the records; the interval is
    the per-sample mean +- 1.96 sd / sqrt(samples); the reference run is left out."""
    paper = _paper_script(monkeypatch)
    spec = importlib.util.spec_from_file_location("population_test_loss", SCRIPT.with_name("population_test_loss.py"))
    population = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(population)
    experiment = build_experiment(config_from_dict(wp.base_config("smoke", "gradient", 1.0, None)))
    w0 = experiment.weights0
    rng = np.random.default_rng(3)
    records = {}
    for method, rtol, size in (("kernel_etd4", 4e-7, 0.0), ("dopri5", 1e-6, 1e-3), ("kernel_etd4", 1e-5, 3e-3)):
        weights = w0 + size * torch.as_tensor(rng.normal(size=tuple(w0.shape)))
        np.save(paper._weights_path(1.0, rtol, method, tmp_path), weights.numpy())
        records[paper._key(method, 1.0, rtol)] = {
            "method": method, "tau0": 1.0, "rtol": rtol, "cpu_s": 1.0,
            "test_loss": wp._test_loss(experiment, weights),
        }  # fmt: skip
    (tmp_path / paper.OUT.name).write_text(json.dumps(records))
    argv = ["--scale", "smoke", "--tau0", "1", "--samples", "5", "--directory", str(tmp_path)]
    assert population.main(argv) == 0
    result = json.loads((tmp_path / "population_test_loss_tau1.json").read_text())
    rows = {r["key"]: r for r in result["runs"]}
    assert set(rows) == {"dopri5|1.0|1e-06", "kernel_etd4|1.0|1e-05"}
    ref = records["kernel_etd4|1.0|4e-07"]["test_loss"]
    for key, row in rows.items():
        assert row["standard_sample"] == pytest.approx(records[key]["test_loss"] / ref - 1.0, rel=1e-9, abs=1e-15)
        low, high = row["interval_95"]
        assert high - low == pytest.approx(2 * 1.96 * row["fresh_sd"] / np.sqrt(5), rel=1e-9)
        assert row["fresh_sd"] > 0
    assert "| dopri5 | 1e-06 |" in (tmp_path / "population_test_loss_tau1.md").read_text()
