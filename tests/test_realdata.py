"""Named real data sets: seeded splits, standardization with training statistics, bad data."""

from __future__ import annotations

import numpy as np
import pytest

from gnflow.config import DataConfig, config_from_dict
from gnflow.data import DataError, make_data
from gnflow.experiment import build_experiment
from gnflow.realdata import standardized_split


def _rows_of(split, n):
    """Recover the original row of every standardized sample from column 0 (= row index)."""
    col = np.concatenate([split.x_train[:, 0], split.x_test[:, 0]])
    ordered = np.sort(col)
    scale = 1.0 / (ordered[1] - ordered[0])  # consecutive integers are one standard unit / std apart
    offset = -ordered[0] * scale
    to_row = lambda values: np.rint(values * scale + offset).astype(int)  # noqa: E731
    return to_row(split.x_train[:, 0]), to_row(split.x_test[:, 0])


def test_split_is_a_partition_standardized_with_training_statistics():
    rng = np.random.default_rng(0)
    n = 60
    x = np.column_stack([np.arange(n), rng.normal(3.0, 5.0, (n, 3))])
    y = rng.normal(-2.0, 4.0, n)
    split = standardized_split(x, y, test_fraction=0.25, seed=4, name="synthetic")
    train, test = _rows_of(split, n)
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(n))
    assert len(test) == 15 and len(train) == 45
    mean, std = x[train].mean(0), x[train].std(0)
    np.testing.assert_allclose(split.x_train, (x[train] - mean) / std, atol=1e-12)
    np.testing.assert_allclose(split.x_test, (x[test] - mean) / std, atol=1e-12)
    np.testing.assert_allclose(split.y_test, (y[test] - y[train].mean()) / y[train].std(), atol=1e-12)
    np.testing.assert_allclose(split.y_train.mean(), 0, atol=1e-12)
    np.testing.assert_allclose(split.y_train.std(), 1, atol=1e-12)


def test_split_is_seeded_and_max_train_takes_a_prefix():
    rng = np.random.default_rng(1)
    x, y = np.column_stack([np.arange(40), rng.normal(size=(40, 2))]), rng.normal(size=40)
    a = standardized_split(x, y, test_fraction=0.2, seed=3, name="s")
    b = standardized_split(x, y, test_fraction=0.2, seed=3, name="s")
    c = standardized_split(x, y, test_fraction=0.2, seed=4, name="s")
    np.testing.assert_array_equal(a.x_train, b.x_train)
    assert not np.array_equal(_rows_of(a, 40)[1], _rows_of(c, 40)[1])
    small = standardized_split(x, y, test_fraction=0.2, seed=3, max_train=10, name="s")
    train_rows, test_rows = _rows_of(a, 40)
    rows = np.concatenate([train_rows[:10], test_rows])
    # column 0 of the smaller split must be one affine map of the expected row indices
    values = np.concatenate([small.x_train[:, 0], small.x_test[:, 0]])
    fit = np.polyfit(rows, values, 1)
    np.testing.assert_allclose(np.polyval(fit, rows), values, atol=1e-12)
    np.testing.assert_allclose([small.x_train.mean(0), small.x_train.std(0)], [[0] * 3, [1] * 3], atol=1e-12)


@pytest.mark.parametrize(
    ("x", "y", "message"),
    [
        (np.zeros((0, 3)), np.zeros(0), "s: the data set is empty"),
        (
            np.array([[1.0, np.nan], [2.0, 3.0], [0.0, 1.0]]),
            np.ones(3),
            r"s: the data hold non-finite values \(NaN or inf\)",
        ),
        (np.array([[1.0, 5.0], [2.0, 5.0], [3.0, 5.0]]), np.arange(3.0), r"s: input column\(s\) \[1\] constant"),
    ],
)
def test_bad_data_are_refused(x, y, message):
    with pytest.raises(DataError, match=message):
        standardized_split(x, y, test_fraction=0.0, seed=0, name="s")


@pytest.mark.parametrize(("kind", "n", "d"), [("diabetes", 442, 10), ("concrete", 1030, 8)])
def test_named_data_sets_load_from_config(kind, n, d):
    data = make_data(DataConfig(kind=kind, test_fraction=0.1), activation="tanh", seed=2)
    assert data.input_dim == d
    assert data.n_test == round(0.1 * n) and data.n_train + data.n_test == n
    np.testing.assert_allclose(data.x_train.mean(0), 0, atol=1e-10)
    np.testing.assert_allclose(data.x_train.std(0), 1, atol=1e-10)
    np.testing.assert_allclose([data.y_train.mean(), data.y_train.std()], [0, 1], atol=1e-10)
    assert kind in data.name


def test_theory_network_runs_on_diabetes_from_config():
    config = config_from_dict(
        {
            "data": {"kind": "diabetes", "max_train": 30},
            "model": {"width": 50, "scaling": "ntk", "output_init": "sign", "train": "hidden"},
            "flow": {"kind": "ggn", "batch_size": 10, "epochs": 1},
        }
    )
    experiment = build_experiment(config)
    assert experiment.data.n_train == 30 and experiment.data.n_test == 44
    assert set(np.abs(experiment.weights0[:, -1].numpy()).tolist()) == {1.0}
