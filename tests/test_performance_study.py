"""The performance study at smoke size: it writes its table, figure and report, and what it measures is sane.

Timings are not asserted (they depend on the machine); the study's own consistency checks are:
the full-Jacobian baseline computes the same field as gnflow, and the paper-style run obeys the
eigmin law at every saved time.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from gnflow.cli import main
from gnflow.config import ConfigError
from gnflow.dataset import read_dataset
from gnflow.studies import StudyError, claims_table, load_study_settings, study_module


@pytest.fixture(scope="module")
def study():
    return study_module("performance")


def _scale(study, scale: str):
    return study.benchmark_of(load_study_settings("performance", scale))


@pytest.fixture(scope="module")
def smoke_table(study, tmp_path_factory):
    out = tmp_path_factory.mktemp("performance")
    assert main(["study", "performance", "--scale", "smoke", "-o", str(out), "-q"]) == 0
    return read_dataset(out / "performance_smoke.nc"), out


def test_smoke_study_writes_table_and_figure(smoke_table) -> None:
    ds, out = smoke_table
    assert (out / "performance_smoke.png").stat().st_size > 0
    assert ds.sizes["n_train"] == 2 and ds.sizes["width"] == 1
    for key in ("gn", "gn_eigh", "baseline", "roofline", "products", "cholesky", "gd"):
        values = ds[f"{key}_time"].values
        assert np.all(np.isfinite(values)) and np.all(values > 0), key
    for name in ds.variables:
        assert "long_name" in ds[name].attrs and "units" in ds[name].attrs, name


def test_baseline_computes_the_same_field(smoke_table) -> None:
    ds, _ = smoke_table
    assert float(ds["baseline_difference"].max()) < 1e-8


def test_paper_style_run_obeys_the_eigmin_law(smoke_table) -> None:
    ds, _ = smoke_table
    assert ds.attrs["paper_run_status"] == "converged"
    assert ds.attrs["paper_run_final_loss_ratio"] <= 1e-8
    margin = ds["paper_law_margin"].values
    assert np.isfinite(margin).sum() >= 2
    assert np.all(margin[np.isfinite(margin)] >= -1e-6)
    assert ds.attrs["paper_run_eigmin_law_holds"] == 1
    # the law again, from the stored residual ratios and Gram eigenvalues, with N and eps0 of the run
    run = json.loads(ds.attrs["paper_run_config"])
    n, eps0 = run["data"]["n_train"], run["flow"]["epsilon"]
    t, ratio = ds["paper_t"].values, ds["paper_residual_ratio"].values
    applies = ds["paper_gram_eigmin"].values >= eps0
    assert applies.sum() >= 2
    assert np.all(ratio[applies] >= np.exp(-t[applies] / n) * (1 - 1e-6))
    assert np.all(ratio[applies] <= np.exp(-t[applies] / (2 * n)) * (1 + 1e-6))


def test_large_run_reports_peak_memory(smoke_table) -> None:
    ds, _ = smoke_table
    assert ds.attrs["large_run_status"] == "converged"  # to 1e-8 x L0, adaptively
    assert ds.attrs["large_run_final_loss_ratio"] <= 1e-8
    assert ds.attrs["large_run_peak_rss_gib"] > 0
    assert ds.attrs["large_run_nfe"] > 0


def test_large_run_result_is_reused_only_for_its_config(study, tmp_path: Path) -> None:
    assert study.main(["--scale", "smoke", "-o", str(tmp_path), "--large-only"]) == 0
    stored = tmp_path / "large_run_smoke.json"
    _, _, large = _scale(study, "smoke")
    result = study._load_large_result(stored, large)
    assert result["status"] == "converged" and result["maxrss_kib"] > 0
    other = replace(large, seed=large.seed + 1)
    with pytest.raises(ConfigError, match="written for another large_run config"):
        study._load_large_result(stored, other)


def test_unknown_scale_is_one_line_error(study, capsys) -> None:
    with pytest.raises(StudyError, match="unknown scale 'huge'; allowed: smoke, full, gpu, gpu_float32"):
        load_study_settings("performance", "huge")
    assert study.main(["--scale", "huge"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_smoke_report_holds_the_measured_tables(smoke_table) -> None:
    ds, out = smoke_table
    report = (out / "report.md").read_text()
    assert "\n## Measurements\n" in report and claims_table(report) == []
    gn = float(ds["gn_time"].sel(n_train=60, width=50))
    assert f"| 60 | 50 | {gn:.3g} |" in report
    assert "Large run (N = 50, M = 300): converged" in report


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_cuda_timings_compute_the_same_field_as_the_baseline(study, dtype: str) -> None:
    bench, _, _ = _scale(study, "smoke")
    bench = replace(bench, device="cuda", dtype=dtype)
    row = study.time_size(bench, 30, 50)
    assert all(row[k] > 0 for k in ("gn", "gn_eigh", "baseline", "roofline", "gd"))
    if dtype == "float64":
        assert row["baseline_difference"] < 1e-8
    else:  # the float32 baseline solves in float32 (gnflow in float64): only sanity here
        assert np.isfinite(row["baseline_difference"])


def test_gpu_scales_name_cuda_for_the_timings_and_both_runs(study) -> None:
    for scale in ("gpu", "gpu_float32"):
        bench, paper, large = _scale(study, scale)
        assert bench.device == paper.device == large.device == "cuda"
        assert bench.dtype == paper.dtype == large.dtype
