"""Studies: every reproduction at smoke scale through ``gnflow study``, the report's structure, the
scale-file format, where studies are found, and the measurement helpers against closed forms.
(The benchmarks, long_horizon and performance, run at smoke scale in their own test files.)"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from gnflow.cli import main
from gnflow.dataset import read_dataset
from gnflow.studies import (
    BENCHMARKS,
    STUDIES,
    VERDICTS,
    Claim,
    StudyError,
    StudyReport,
    claims_table,
    load_study_settings,
    loglog_slope,
    study_folder,
    study_module,
    study_scales,
    time_to_level,
    write_report,
)

NUMBER = re.compile(r"\d")


@pytest.fixture(scope="module", params=sorted(set(STUDIES) - set(BENCHMARKS)))
def smoke_study(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    name = request.param
    out = tmp_path_factory.mktemp(name)
    assert main(["study", name, "--scale", "smoke", "-o", str(out), "-q"]) == 0
    return name, out


@pytest.mark.slow
def test_smoke_study_writes_report_with_measured_claims(smoke_study: tuple[str, Path]) -> None:
    name, out = smoke_study
    text = (out / "report.md").read_text()
    assert text.startswith("# ")
    for heading in ("## Claims", "## Setup", "## Figures"):
        assert f"\n{heading}\n" in text, heading
    assert f"`gnflow study {name} --scale smoke`" in text
    rows = claims_table(text)
    assert len(rows) >= 2
    for k, row in enumerate(rows, start=1):
        assert len(row) == 4, row
        number, statement, measured, verdict = row
        assert number == str(k)
        assert statement
        assert NUMBER.search(measured), f"claim {k} of {name} carries no measured number: {measured!r}"
        # a verdict, possibly qualified: "inconclusive (hardware)"
        assert verdict.split(" (")[0] in VERDICTS, verdict


@pytest.mark.slow
def test_cai2019_decides_its_comparisons_on_paired_seeds(smoke_study: tuple[str, Path]) -> None:
    name, out = smoke_study
    if name != "cai2019":
        pytest.skip("cai2019 only")
    text = (out / "report.md").read_text()
    rows = {row[1]: row for row in claims_table(text)}
    assert "\n## How verdicts are decided\n" in text
    seeds = load_study_settings("cai2019", "smoke")["seeds"]
    for statement, row in rows.items():
        if "quadratically" not in statement:  # every other claim compares two arms per seed
            assert re.search(rf"\(\d/{len(seeds)} seeds < 1", row[2]), row
    per_second = next(row for statement, row in rows.items() if "per second" in statement)
    assert per_second[3] == "inconclusive (hardware)" and "CPU" in per_second[2]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seeds"] == seeds
    scale = summary["gram_scale"]["per_seed"]["concrete"]
    assert len(scale) == len(seeds) and all(g > 0 for g in scale)
    alpha = summary["gram_scale"]["ggn_alpha_in_gram_units"]["concrete"]
    assert alpha == pytest.approx(0.1 / np.mean(scale))
    assert "alpha / (trace(A)/b)" in text


@pytest.mark.slow
def test_smoke_study_figures_are_drawn(smoke_study: tuple[str, Path]) -> None:
    name, out = smoke_study
    text = (out / "report.md").read_text()
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", text)
    assert len(linked) >= 2, f"{name}: too few figures in the report"
    for rel in linked:
        image = matplotlib.image.imread(out / rel)
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
        # a blank figure is one colour; a drawn one has many distinct pixel values
        assert np.unique(image[..., :3].reshape(-1, 3), axis=0).shape[0] > 50, f"{rel} looks blank"


@pytest.mark.slow
def test_smoke_study_writes_readable_netcdf(smoke_study: tuple[str, Path]) -> None:
    name, out = smoke_study
    files = sorted(out.rglob("*.nc"))
    assert files, f"{name}: no NetCDF data written"
    for path in files:
        ds = read_dataset(path)
        assert ds.data_vars, f"{path}: no data variables"
        # every gnflow writer sets the CF attributes, and write_dataset documents every variable
        assert ds.attrs.get("Conventions") == "CF-1.8", path
        undocumented = [str(v) for v in ds.variables if not ds[v].attrs.get("long_name")]
        assert not undocumented, f"{path}: variables without long_name: {undocumented}"


def test_every_study_has_a_folder_a_readme_a_run_function_and_its_scales() -> None:
    assert set(BENCHMARKS) < set(STUDIES)
    for name in STUDIES:
        folder = study_folder(name)
        assert (folder / "README.md").is_file()
        assert callable(study_module(name).run)
        scales = study_scales(name)
        assert scales[0] == "smoke", name
        for scale in scales:
            assert load_study_settings(name, scale)
    for name in ("cai2019", "mean_field_limit"):
        assert study_scales(name) == ("smoke", "small", "paper")
    assert study_scales("arbel2023") == ("smoke", "small", "medium", "paper", "paper_rows")
    assert study_scales("ggn_vs_sgd") == ("smoke", "small")
    assert study_scales("long_horizon") == ("smoke", "small", "paper")
    assert study_scales("performance") == ("smoke", "full", "gpu", "gpu_float32")


def test_scale_file_merges_defaults_under_each_scale(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text(
        "[defaults]\nthreads = 1\nwidths = [1, 2]\n[defaults.run]\nseed = 3\nsolver.t_end = 10.0\n"
        "[smoke]\nrun.solver.t_end = 1.0\n[big]\nwidths = [5]\nrun = {seed = 4}\n"
    )
    assert study_scales("arbel2023", path=path) == ("smoke", "big")
    smoke = load_study_settings("arbel2023", "smoke", path=path)
    assert smoke == {"threads": 1, "widths": [1, 2], "run": {"seed": 3, "solver": {"t_end": 1.0}}}
    big = load_study_settings("arbel2023", "big", path=path)
    assert big == {"threads": 1, "widths": [5], "run": {"seed": 4, "solver": {"t_end": 10.0}}}
    with pytest.raises(StudyError, match="unknown scale 'paper'; allowed: smoke, big"):
        load_study_settings("arbel2023", "paper", path=path)
    path.write_text("threads = 1\n[smoke]\n")
    with pytest.raises(StudyError, match="top-level key 'threads': settings go in \\[defaults\\] or a scale table"):
        load_study_settings("arbel2023", "smoke", path=path)
    path.write_text("[small]\n")
    with pytest.raises(StudyError, match="no \\[smoke\\] table"):
        study_scales("arbel2023", path=path)


def test_studies_are_found_in_the_package_data_then_in_the_checkout(tmp_path: Path) -> None:
    package = tmp_path / "site-packages" / "gnflow"
    shipped = package / "_studies" / "cai2019"
    shipped.mkdir(parents=True)
    (shipped / "cai2019.py").write_text("def run(settings, context): ...\n")
    assert study_folder("cai2019", package_dir=package) == shipped
    with pytest.raises(StudyError, match=r"no arbel2023/arbel2023.py in .*_studies .*install gnflow from a wheel"):
        study_folder("arbel2023", package_dir=package)
    checkout = tmp_path / "checkout"
    (checkout / "studies" / "arbel2023").mkdir(parents=True)
    (checkout / "studies" / "arbel2023" / "arbel2023.py").write_text("")
    assert study_folder("arbel2023", package_dir=checkout / "gnflow") == checkout / "studies" / "arbel2023"
    # this test's own gnflow is a source checkout: the folder beside the package
    assert study_folder("performance") == Path(__file__).resolve().parents[1] / "studies" / "performance"


def test_unknown_study_and_scale_are_one_line_errors(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(StudyError, match="unknown study 'nope'; allowed: arbel2023"):
        study_folder("nope")
    with pytest.raises(StudyError, match="unknown scale 'huge'"):
        load_study_settings("arbel2023", "huge")
    assert main(["study", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown study 'nope'" in err
    assert main(["study", "performance", "--scale", "paper"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown scale 'paper'; allowed: smoke, full, gpu, gpu_float32" in err


def test_study_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["study", "--list"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in listed] == list(STUDIES)
    assert listed[-1].split()[1] == "smoke|full|gpu|gpu_float32"


def test_claim_needs_a_number_and_a_known_verdict() -> None:
    with pytest.raises(ValueError, match="holds no number"):
        Claim("GN is faster.", "much faster", "supported")
    with pytest.raises(ValueError, match="verdict"):
        Claim("GN is faster.", "t = 3", "true")  # type: ignore[arg-type]


def test_report_round_trips_the_claims_table(tmp_path: Path) -> None:
    claims = [
        Claim("a | b holds", "|r| = 1e-3; ratio 2", "supported", "why"),
        Claim("c holds", "gap 0.5", "inconclusive"),
    ]
    report = StudyReport(title="T", setup=["line"], claims=claims, sections={"More": ["x"]})
    path = write_report(tmp_path / "report.md", report, name="s", scale="smoke", wall_time_s=1.0)
    rows = claims_table(path.read_text())
    assert rows == [
        ["1", "a | b holds", "|r| = 1e-3; ratio 2", "supported"],
        ["2", "c holds", "gap 0.5", "inconclusive"],
    ]


def test_benchmark_report_has_measurements_and_no_claims_table(tmp_path: Path) -> None:
    report = StudyReport(title="B", setup=["line"], claims=[], measurements=["| N | s |", "|---|---|", "| 5 | 0.1 |"])
    text = write_report(
        tmp_path / "b.md", report, name="b", scale="full", wall_time_s=2.0, options={"x": 1}
    ).read_text()
    assert "\n## Measurements\n\n| N | s |" in text and "## Claims" not in text
    assert "Study `b`, scale `full`; study options x=1; written by `gnflow.studies.run_study` in 2 s" in text
    with pytest.raises(StudyError, match="neither claims nor measurements"):
        write_report(tmp_path / "c.md", StudyReport(title="C", setup=[], claims=[]), name="c", scale="s", wall_time_s=0)


def test_time_to_level_is_exact_for_exponential_decay() -> None:
    # log-linear interpolation is exact when log L is linear in t: L = exp(-t / 7)
    t = np.linspace(0.0, 100.0, 11)
    loss = np.exp(-t / 7.0)
    for level in (0.5, 1e-3, 1e-6):
        assert time_to_level(t, loss, level) == pytest.approx(-7.0 * math.log(level), rel=1e-12)
    assert time_to_level(t, loss, 1e-9) == math.inf
    assert time_to_level(t, loss, 2.0) == 0.0


def test_loglog_slope_recovers_a_power_law() -> None:
    m = np.array([250.0, 1000.0, 4000.0])
    assert loglog_slope(m, 3.0 * m**-0.5) == pytest.approx(-0.5, rel=1e-12)
    assert math.isnan(loglog_slope([1.0], [1.0]))


def _mean_field_runs(out: Path, grid: str) -> dict[tuple[float, int, int, int], Path]:
    """Run files of one grid of the mean_field_limit study by (tau0, seed, init_seed, width)."""
    from gnflow.dataset import run_config_of

    found = {}
    for path in sorted((out / grid / "runs").glob("*.nc")):
        config = run_config_of(read_dataset(path))
        key = (config.model.init_scale, config.seed, config.model.init_seed, config.model.width)
        found[key] = path
    return found


def _silu_network(weights: np.ndarray, x: np.ndarray) -> np.ndarray:
    """f(x) = mean_i v_i silu(u_i . x + b_i), written out: weights (t, particle, component)."""
    z = np.einsum("tpd,nd->tnp", weights[..., :-2], x) + weights[:, None, :, -2]
    return np.mean(z / (1 + np.exp(-z)) * weights[:, None, :, -1], axis=-1)


@pytest.mark.slow
def test_mean_field_limit_measures_against_an_independent_reference(smoke_study: tuple[str, Path]) -> None:
    name, out = smoke_study
    if name != "mean_field_limit":
        pytest.skip("mean_field_limit only")
    s = load_study_settings(name, "smoke")
    tau0, seed, widths = float(s["tau0"][0]), int(s["seeds"][0]), [int(m) for m in s["widths"]]
    ref, small = max(widths), min(widths)
    runs = _mean_field_runs(out, "gn")
    references = _mean_field_runs(out, "gn_reference")
    a_ref, a_small = (read_dataset(runs[(tau0, seed, None, m)]) for m in (ref, small))
    b_ref = read_dataset(references[(tau0, seed, seed + int(s["reference_seed_offset"]), ref)])
    # the same data, nested prefixes within draw A, an independent draw B
    np.testing.assert_array_equal(a_ref["x_train"].values, b_ref["x_train"].values)
    np.testing.assert_array_equal(a_small["weights"].values[0], a_ref["weights"].values[0][:small])
    assert not np.allclose(b_ref["weights"].values[0][:small, :-1], a_small["weights"].values[0][:, :-1])
    # the recorded function distance at the smallest width, recomputed from the run files
    x_test = b_ref["x_test"].values
    f_m, f_a, f_b = (_silu_network(ds["weights"].values, x_test) for ds in (a_small, a_ref, b_ref))
    d2 = np.mean((f_m - f_b) ** 2, axis=1) - np.mean((f_a - f_b) ** 2, axis=1) / 2
    summary = read_dataset(out / "mean_field_limit.nc")
    recorded = summary["error"].sel(flow="gn", tau0=tau0, metric="function_distance", seed=seed, width=small)
    assert float(recorded) == pytest.approx(math.sqrt(d2.max()), rel=1e-8)
    # the coupling distance needs a nested run: none at the reference width
    assert np.isnan(summary["error"].sel(metric="coupling", width=ref).values).all()
    slopes = summary["slope"].sel(flow="gd", metric="function_distance").values
    means = summary["slope_interval"].sel(flow="gd", metric="function_distance", stat="mean").values
    np.testing.assert_allclose(means, np.nanmean(slopes, axis=-1))
    text = (out / "report.md").read_text()
    assert "lies inside [b - delta, b + delta]" in text
    for row in claims_table(text)[:4]:
        assert re.search(rf"slope -?\d.*, {len(s['seeds'])}/{len(s['seeds'])} seeds", row[2]) or "no interval" in row[2]
