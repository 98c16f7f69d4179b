"""The estimators of the mean_field_limit study, on synthetic fluctuations with a known law.

(The study itself runs at smoke scale in tests/test_studies.py, which also checks its reference
and its recorded errors against the run files.)"""

from __future__ import annotations

import math

import numpy as np
import pytest

from gnflow.studies import study_module

POINTS = 400  # entries of q (test points): enough that one estimate concentrates
SIGMA = 0.7


@pytest.fixture(scope="module")
def study() -> object:
    return study_module("mean_field_limit")


def _draw(rng: np.random.Generator, limit: np.ndarray, width: int) -> np.ndarray:
    """A width-M estimate of ``limit``: a Monte-Carlo fluctuation of variance SIGMA^2 / M per entry."""
    return limit + SIGMA / math.sqrt(width) * rng.standard_normal(limit.shape)


@pytest.mark.parametrize("width", [250, 1000, 4000])
def test_the_floor_corrected_distance_estimates_the_distance_to_the_limit(study: object, width: int) -> None:
    rng = np.random.default_rng(width)
    reference = 4000  # compared widths up to the reference width itself
    limit = np.sin(np.linspace(0.0, 6.0, POINTS))
    truth = SIGMA / math.sqrt(width)
    corrected, raw = [], []
    for _ in range(20):
        q_m, q_a, q_b = _draw(rng, limit, width), _draw(rng, limit, reference), _draw(rng, limit, reference)
        if width == reference:
            q_m = q_a  # the compared run at M_ref is the nested reference itself
        d2 = np.mean((q_m - q_b) ** 2, keepdims=True)
        floor2 = np.mean((q_a - q_b) ** 2, keepdims=True)
        corrected.append(study._floor_corrected(d2, floor2))
        raw.append(math.sqrt(float(d2[0])))
    assert np.mean(corrected) == pytest.approx(truth, rel=0.05)
    # without the correction the reference's own fluctuation inflates the distance
    assert np.mean(raw) == pytest.approx(truth * math.sqrt(1 + width / reference), rel=0.05)
    if width >= reference / 4:
        assert np.mean(raw) > 1.1 * truth


def test_the_floor_corrected_distance_is_undefined_where_the_floor_dominates(study: object) -> None:
    assert math.isnan(study._floor_corrected(np.array([0.1, 0.2]), np.array([0.5, 0.6])))
    assert study._floor_corrected(np.array([0.1, 0.5]), np.array([0.0, 0.36])) == pytest.approx(math.sqrt(0.32))
