"""Teacher-student generator and user data files."""

import re

import numpy as np
import pytest
import xarray as xr

from gnflow.config import DataConfig
from gnflow.data import DataError, RegressionData, load_data_file, make_data, teacher_student


def test_teacher_student_is_seeded_nested_and_noiseless():
    small = teacher_student(input_dim=4, teacher_width=5, n_train=30, n_test=50, activation="silu", seed=2)
    large = teacher_student(input_dim=4, teacher_width=5, n_train=100, n_test=50, activation="silu", seed=2)
    other = teacher_student(input_dim=4, teacher_width=5, n_train=30, n_test=50, activation="silu", seed=3)
    np.testing.assert_array_equal(large.x_train[:30], small.x_train)
    np.testing.assert_array_equal(large.y_train[:30], small.y_train)
    np.testing.assert_array_equal(large.x_test, small.x_test)  # test set does not depend on N
    assert not np.array_equal(other.x_train, small.x_train)
    # labels are the teacher's outputs: (1/5) sum_j v_j silu(u_j.x + b_j)
    t = small.teacher_weights
    z = small.x_train @ t[:, :4].T + t[:, 4]
    expected = (z / (1 + np.exp(-z))) @ t[:, 5] / 5
    np.testing.assert_allclose(small.y_train, expected, rtol=1e-12, atol=1e-14)


def test_label_noise():
    clean = teacher_student(input_dim=3, teacher_width=2, n_train=2000, n_test=10, activation="tanh", seed=1)
    noisy = teacher_student(input_dim=3, teacher_width=2, n_train=2000, n_test=10, activation="tanh", seed=1, noise=0.3)
    assert np.std(noisy.y_train - clean.y_train) == pytest.approx(0.3, rel=0.1)


def test_file_formats(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((12, 3)), rng.standard_normal(12)
    xt, yt = rng.standard_normal((4, 3)), rng.standard_normal(4)
    np.savez(tmp_path / "d.npz", x=x, y=y, x_test=xt, y_test=yt)
    xr.Dataset({"x": (("s", "f"), x), "y": ("s", y)}).to_netcdf(tmp_path / "d.nc")
    lines = ["a,b,c,y,split"] + [
        ",".join(repr(float(v)) for v in [*row, label]) + f",{split}"
        for rows, labels, split in ((x, y, "train"), (xt, yt, "test"))
        for row, label in zip(rows, labels, strict=False)
    ]
    (tmp_path / "d.csv").write_text("\n".join(lines) + "\n")
    for name in ("d.npz", "d.csv"):
        data = load_data_file(tmp_path / name)
        np.testing.assert_array_equal(data.x_train, x)
        np.testing.assert_array_equal(data.y_train, y)
        np.testing.assert_array_equal(data.x_test, xt)
        np.testing.assert_array_equal(data.y_test, yt)
    nc = load_data_file(tmp_path / "d.nc")
    np.testing.assert_array_equal(nc.x_train, x)
    assert nc.n_test == 0
    via_config = make_data(DataConfig(kind="file", path=str(tmp_path / "d.npz")), activation="silu", seed=1)
    assert via_config.input_dim == 3


def test_bad_data(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_data_file(tmp_path / "missing.npz")
    np.savez(tmp_path / "nan.npz", x=np.array([[1.0], [np.nan]]), y=np.zeros(2))
    with pytest.raises(DataError, match="x has non-finite values"):
        load_data_file(tmp_path / "nan.npz")
    np.savez(tmp_path / "shape.npz", x=np.zeros((3, 2)), y=np.zeros(4))
    with pytest.raises(DataError, match="one label per row of x"):
        load_data_file(tmp_path / "shape.npz")
    np.savez(tmp_path / "empty.npz", x=np.zeros((0, 2)), y=np.zeros(0))
    with pytest.raises(DataError, match="at least one training sample"):
        load_data_file(tmp_path / "empty.npz")
    np.savez(tmp_path / "names.npz", a=np.zeros((3, 2)))
    with pytest.raises(DataError, match="needs arrays 'x' and 'y'"):
        load_data_file(tmp_path / "names.npz")
    (tmp_path / "d.txt").write_text("1 2 3")
    with pytest.raises(DataError, match=re.escape("unknown data file type '.txt'; allowed: .nc, .csv, .npz")):
        load_data_file(tmp_path / "d.txt")
    (tmp_path / "noy.csv").write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="'y' column"):
        load_data_file(tmp_path / "noy.csv")
    (tmp_path / "text.csv").write_text("a,y\n1,abc\n")
    with pytest.raises(DataError, match="non-numeric CSV value"):
        load_data_file(tmp_path / "text.csv")
    with pytest.raises(DataError, match="x_test must be"):
        RegressionData(x_train=np.zeros((2, 2)), y_train=np.zeros(2), x_test=np.zeros((2, 3)), y_test=np.zeros(2))
