"""Reproduction studies: every study at smoke scale through ``gnflow study``, the report's structure,
and the measurement helpers against closed forms."""

from __future__ import annotations

import math
import re
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from gnflow.cli import main
from gnflow.dataset import read_dataset
from gnflow.studies import (
    STUDIES,
    VERDICTS,
    Claim,
    StudyError,
    StudyReport,
    claims_table,
    load_study_settings,
    loglog_slope,
    study_folder,
    time_to_level,
    write_report,
)

NUMBER = re.compile(r"\d")


@pytest.fixture(scope="module", params=sorted(STUDIES))
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
        assert verdict in VERDICTS


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


def test_every_study_has_a_folder_with_three_scales_and_a_readme() -> None:
    for name in STUDIES:
        folder = study_folder(name)
        assert (folder / "README.md").is_file()
        for scale in ("smoke", "small", "paper"):
            assert load_study_settings(name, scale)


def test_unknown_study_and_scale_are_one_line_errors(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(StudyError, match="unknown study 'nope'; allowed: arbel2023"):
        study_folder("nope")
    with pytest.raises(StudyError, match="unknown scale 'huge'"):
        load_study_settings("arbel2023", "huge")
    assert main(["study", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown study 'nope'" in err


def test_study_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["study", "--list"]) == 0
    listed = capsys.readouterr().out
    for name in STUDIES:
        assert name in listed


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
