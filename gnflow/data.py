"""Regression data: the teacher--student task and user files (NetCDF, CSV, .npz).

Every data set is a :class:`RegressionData` of float64 NumPy arrays, validated on construction.
"""

from __future__ import annotations

import codecs
import csv
import io
import itertools
import zipfile
from array import array as _array
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch

from gnflow.config import (
    ConfigError,
    DataConfig,
    MemoryTerm,
    RunConfig,
    format_bytes,
    register_data_kind,
    require_memory,
    run_memory_terms,
)
from gnflow.model import ParticleModel

if TYPE_CHECKING:
    import _csv

__all__ = [
    "DataError",
    "RegressionData",
    "load_data_file",
    "make_data",
    "register_dataset",
    "teacher_student",
]


class DataError(ValueError):
    """Training or test data are missing, malformed or non-finite (one-line message)."""


@dataclass(frozen=True, eq=False)
class RegressionData:
    """Training and test data of a scalar regression problem.

    Attributes
    ----------
    x_train:
        Training inputs, shape (sample, input_dim).
    y_train:
        Training labels, shape (sample,).
    x_test, y_test:
        Test inputs (test_sample, input_dim) and labels (test_sample,); may hold zero samples.
    name:
        Short description of where the data come from.
    teacher_weights:
        For teacher--student data, the teacher's particles (teacher_particle, component).
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    name: str = "data"
    teacher_weights: np.ndarray | None = None

    def __post_init__(self) -> None:
        x, y = self.x_train, self.y_train
        if x.ndim != 2:
            raise DataError(f"{self.name}: x must be 2-d (sample, input_dim), got shape {x.shape}")
        if y.ndim != 1 or y.shape[0] != x.shape[0]:
            raise DataError(f"{self.name}: y must be 1-d with one label per row of x; got x {x.shape}, y {y.shape}")
        if x.shape[0] < 1 or x.shape[1] < 1:
            raise DataError(f"{self.name}: need at least one training sample and one input feature, got x {x.shape}")
        xt, yt = self.x_test, self.y_test
        if xt.ndim != 2 or xt.shape[1] != x.shape[1]:
            raise DataError(f"{self.name}: x_test must be (test_sample, {x.shape[1]}), got {xt.shape}")
        if yt.ndim != 1 or yt.shape[0] != xt.shape[0]:
            raise DataError(f"{self.name}: y_test must have one label per row of x_test; got {xt.shape}, {yt.shape}")
        for label, array in (("x", x), ("y", y), ("x_test", xt), ("y_test", yt)):
            if not np.all(np.isfinite(array)):
                raise DataError(f"{self.name}: {label} has non-finite values (NaN or inf)")

    @property
    def input_dim(self) -> int:
        """d, the number of input features."""
        return int(self.x_train.shape[1])

    @property
    def n_train(self) -> int:
        """N, the number of training samples."""
        return int(self.x_train.shape[0])

    @property
    def n_test(self) -> int:
        """The number of test samples."""
        return int(self.x_test.shape[0])


def teacher_student(
    *,
    input_dim: int,
    teacher_width: int,
    n_train: int,
    n_test: int,
    activation: str,
    seed: int | np.random.SeedSequence,
    noise: float = 0.0,
) -> RegressionData:
    """The teacher--student task of Arbel et al.

    The teacher is the mean-field network f*(x) = (1/M*) sum_j v*_j sigma(u*_j . x + b*_j) with
    all parameters N(0, 1); inputs x ~ N(0, I_d); labels y = f*(x) (+ N(0, noise^2)).
    Teacher, training inputs, test inputs and noise come from four independent streams of
    ``seed``, and rows are drawn one after the other, so training sets of different sizes are
    nested prefixes of one draw and the test set does not depend on n_train.
    """
    seq = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
    teacher_seq, train_seq, test_seq, noise_seq = seq.spawn(4)
    teacher = np.random.default_rng(teacher_seq).standard_normal((teacher_width, input_dim + 2))
    x_train = np.random.default_rng(train_seq).standard_normal((n_train, input_dim))
    x_test = np.random.default_rng(test_seq).standard_normal((n_test, input_dim))
    model = ParticleModel(input_dim=input_dim, activation=activation, scaling="mean_field")
    w = torch.as_tensor(teacher)
    y_train = model.predict(w, torch.as_tensor(x_train)).numpy()
    y_test = model.predict(w, torch.as_tensor(x_test)).numpy()
    if noise > 0:
        rng = np.random.default_rng(noise_seq)
        y_train = y_train + noise * rng.standard_normal(n_train)
        y_test = y_test + noise * rng.standard_normal(n_test)
    return RegressionData(
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        name=f"teacher-student (d={input_dim}, teacher width {teacher_width}, {activation})",
        teacher_weights=teacher,
    )


def _as_float_array(value: object, label: str, path: Path) -> np.ndarray:
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(f"{path}: {label} is not numeric") from None


def _from_arrays(arrays: dict[str, np.ndarray], path: Path) -> RegressionData:
    def pick(*names: str) -> np.ndarray | None:
        for name in names:
            if name in arrays:
                return _as_float_array(arrays[name], name, path)
        return None

    x = pick("x", "x_train")
    y = pick("y", "y_train")
    if x is None or y is None:
        raise DataError(
            f"{path}: needs arrays 'x' and 'y' (or 'x_train' and 'y_train'); "
            f"found: {', '.join(sorted(arrays)) or 'none'}"
        )
    if x.ndim == 1:
        x = x[:, None]
    y = y.reshape(-1) if y.ndim == 2 and 1 in y.shape else y
    x_test = pick("x_test")
    y_test = pick("y_test")
    if (x_test is None) != (y_test is None):
        raise DataError(f"{path}: 'x_test' and 'y_test' must be given together")
    if x_test is None or y_test is None:
        x_test = np.zeros((0, x.shape[1] if x.ndim == 2 else 1))
        y_test = np.zeros(0)
    elif x_test.ndim == 1:
        x_test = x_test[:, None]
    return RegressionData(x_train=x, y_train=y, x_test=x_test, y_test=y_test.reshape(-1), name=str(path))


#: Memory that reading a CSV file may take, per byte of the file (an upper bound, checked from the
#: size on disk before anything is read). A file of B bytes holds at most (B + 1) / 2 numbers, as every
#: number takes a character and a separator; 8 bytes each, held at most about twice at the peak (the
#: growing buffer of parsed values while it is enlarged, or the parsed values and the x / y arrays made
#: of them): 8 (B + 1). The ``split`` column adds a code and two masks per row, and a file holds at most
#: (B + 1) / 2 rows: 1.5 (B + 1). Rows are parsed one at a time, so the text is never held whole.
CSV_BYTES_PER_FILE_BYTE = 10
#: Memory that one row of a CSV file takes while it is parsed, per byte of the row: the row as text and
#: its fields as Python strings and floats (at most (L + 1) / 2 fields in a row of L bytes, under 60
#: bytes each with the list that holds them). Rows longer than ``_CSV_ROW_CHECKED`` are checked
#: against the memory available before they are parsed.
CSV_ROW_BYTES_PER_BYTE = 64
_CSV_ROW_CHECKED = 1 << 20


def _utf8_error(path: Path) -> str:
    """The message for a file that is not UTF-8: its first invalid byte and the byte's offset."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with path.open("rb") as stream:
        for block in itertools.chain(iter(lambda: stream.read(1 << 20), b""), [None]):
            pending = len(decoder.getstate()[0])
            try:
                decoder.decode(block or b"", final=block is None)
            except UnicodeDecodeError as exc:
                where = f"byte 0x{exc.object[exc.start]:02x} at offset {offset - pending + exc.start}"
                return f"{path}: not UTF-8 text ({where}); save the CSV file as UTF-8"
            offset += len(block or b"")
    return f"{path}: not UTF-8 text; save the CSV file as UTF-8"


class _CsvLines:
    """The lines of a CSV file (UTF-8, any line ending), read one at a time for :func:`csv.reader`.

    A row (the lines of one record, more than one when a quoted field holds a line break) is read in
    pieces of ``_CSV_ROW_CHECKED`` characters, and once it is longer than that, the memory it will take
    is checked before each further piece is read; reading stops with a DataError when the file grows
    past the size that was checked, or is not UTF-8.
    """

    def __init__(self, stream: io.BufferedReader, path: Path, size: int) -> None:
        self.binary, self.path, self.size = stream, path, size
        self.text = io.TextIOWrapper(stream, encoding="utf-8-sig", newline="")
        self.row_chars = 0  # characters of the row being parsed (reset by the reader's caller)
        self.held = 0  # numbers held so far (set by the reader's caller)
        self.line = 1  # the line being read

    def __iter__(self) -> _CsvLines:
        return self

    def __next__(self) -> str:
        pieces: list[str] = []
        while True:
            try:
                piece = self.text.readline(_CSV_ROW_CHECKED)
            except UnicodeDecodeError:
                raise DataError(_utf8_error(self.path)) from None
            if self.binary.tell() > self.size:
                raise DataError(
                    f"{self.path}: the file grew while it was read (past the {self.size} bytes checked); "
                    "read it when it is complete"
                )
            pieces.append(piece)
            self.row_chars += len(piece)
            if not piece or piece.endswith(("\n", "\r")):
                self.line += bool(piece)
                break
            self._check_row(self.row_chars + _CSV_ROW_CHECKED)
        line = "".join(pieces)
        if not line:
            raise StopIteration
        return line

    def _check_row(self, chars: int) -> None:
        row = MemoryTerm(
            float(CSV_ROW_BYTES_PER_BYTE) * (chars + 1),
            f"the row at line {self.line} ({chars - _CSV_ROW_CHECKED} characters so far)",
            "the row as text and its fields as Python objects",
        )
        held = MemoryTerm(16.5 * self.held, "the numbers read before it", "their values")
        require_memory(
            [row, held],
            "parsing it",
            lambda message: DataError(f"{self.path}: {message}"),
            advice="split the row, or save the data as .npz or .nc",
        )


def _cell(text: str) -> str:
    """A CSV cell for a one-line message: quoted, escaped, at most 40 characters."""
    return repr(text) if len(text) <= 40 else repr(text[:37]) + "..."


def _read_csv(path: Path) -> dict[str, np.ndarray]:
    """The arrays of a CSV file, parsed row by row after its size was checked against the memory."""
    size = path.stat().st_size
    estimate = MemoryTerm(
        float(CSV_BYTES_PER_FILE_BYTE) * (size + 1),
        f"a CSV file of {format_bytes(size)}",
        f"up to {CSV_BYTES_PER_FILE_BYTE} bytes of memory per byte of the file",
    )

    def allowed(available: int) -> str:
        largest = max(0, available // CSV_BYTES_PER_FILE_BYTE - 1)
        return (
            f"CSV files up to {format_bytes(largest)} can be read with this memory; "
            "save the data as .npz or .nc (their arrays are checked at their exact size)"
        )

    require_memory([estimate], "parsing it", lambda message: DataError(f"{path}: {message}"), advice=allowed)
    try:
        with path.open("rb") as stream:
            lines = _CsvLines(stream, path, size)
            reader = csv.reader(lines)
            try:
                return _parse_csv(reader, lines, path)
            except csv.Error as exc:
                raise DataError(f"{path}: line {reader.line_num}: malformed CSV ({exc})") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read the CSV file ({exc.strerror or exc})") from None


def _parse_csv(reader: _csv.Reader, lines: _CsvLines, path: Path) -> dict[str, np.ndarray]:
    header_row = next(reader, None)
    if header_row is None:
        raise DataError(f"{path}: empty CSV file")
    header = [h.strip() for h in header_row]
    lines.row_chars = 0
    if "y" not in header:
        raise DataError(
            f"{path}: CSV needs a header row with a 'y' column "
            "(other columns are inputs; optional 'split' = train|test)"
        )
    split_col = header.index("split") if "split" in header else None
    columns = [*(i for i, h in enumerate(header) if h not in ("y", "split")), header.index("y")]
    values = _array("d")
    split = _array("b")  # 0 train, 1 test
    for row in reader:
        line = reader.line_num
        lines.row_chars, lines.held = 0, len(values)
        if not row or not any(c.strip() for c in row):
            continue
        if len(row) != len(header):
            raise DataError(
                f"{path}: line {line} has {len(row)} field{'s' * (len(row) != 1)}, the header {len(header)}: "
                f"every CSV row must have {len(header)} fields"
            )
        for i in columns:
            try:
                values.append(float(row[i]))
            except ValueError:
                value = "an empty CSV value" if not row[i].strip() else f"non-numeric CSV value {_cell(row[i])}"
                raise DataError(f"{path}: line {line}, column {header[i]!r}: {value}") from None
        if split_col is not None:
            value = row[split_col].strip()
            if value not in ("train", "test"):
                raise DataError(f"{path}: line {line}: 'split' values must be train or test, got {_cell(value)}")
            split.append(value == "test")
    if not values:
        raise DataError(f"{path}: CSV has a header but no data rows")
    table = np.frombuffer(values, dtype=np.float64).reshape(-1, len(columns))
    if split_col is None:
        return {"x": table[:, :-1], "y": table[:, -1]}
    test = np.frombuffer(split, dtype=np.int8).astype(bool)
    train = ~test
    return {"x": table[train, :-1], "y": table[train, -1], "x_test": table[test, :-1], "y_test": table[test, -1]}


def _require_file_memory(sizes: list[MemoryTerm], path: Path) -> None:
    """Refuse a data file whose arrays exceed the memory available (a DataError naming the file)."""
    advice = "the data file cannot be read on this machine"
    require_memory(sizes, "reading its arrays", lambda message: DataError(f"{path}: {message}"), advice=advice)


def load_data_file(path: str | Path) -> RegressionData:
    """Read regression data from a NetCDF (.nc), CSV (.csv) or NumPy (.npz) file.

    NetCDF and .npz files hold arrays ``x`` (sample, input_dim) and ``y`` (sample,), optionally
    ``x_test`` and ``y_test`` (``x_train``/``y_train`` are accepted for ``x``/``y``, so a gnflow
    trajectory file can be reused). A CSV file has a header row, a ``y`` column, input columns,
    and optionally a ``split`` column with values ``train`` or ``test``.

    Sizes are checked against the memory available before anything is allocated: the arrays of a
    NetCDF or .npz file at their exact size, a CSV file from its size on disk (up to
    :data:`CSV_BYTES_PER_FILE_BYTE` bytes of memory per byte of the file) and each row longer than
    1 MiB before it is parsed. A malformed file raises a one-line DataError naming the file and, for
    CSV, the line (not UTF-8, ragged rows, non-numeric or empty cells, bad ``split`` values).
    """
    path = Path(path)
    if path.is_dir():
        raise DataError(f"data file {str(path)!r} is a directory; data.path names a .nc, .csv or .npz file")
    if not path.is_file():
        if path.exists():
            raise DataError(f"data file {str(path)!r} is not a regular file; data.path names a .nc, .csv or .npz file")
        raise DataError(f"data file {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as npz:
                members = npz.zip.infolist()
                sizes = [MemoryTerm(float(m.file_size), f"array {m.filename!r}", "its values") for m in members]
                _require_file_memory(sizes, path)
                arrays = {k: npz[k] for k in npz.files}
        except (OSError, ValueError, zipfile.BadZipFile) as exc:
            if isinstance(exc, DataError):
                raise
            raise DataError(f"{path}: cannot read .npz file ({exc})") from None
    elif suffix == ".csv":
        arrays = _read_csv(path)
    elif suffix in (".nc", ".nc4", ".netcdf"):
        import xarray as xr

        names = ("x", "y", "x_train", "y_train", "x_test", "y_test")
        try:
            with xr.open_dataset(path, engine="netcdf4") as ds:
                present = [k for k in names if k in ds.variables]
                sizes = [MemoryTerm(8.0 * ds[k].size, f"variable {k!r} {ds[k].shape}", "its values") for k in present]
                _require_file_memory(sizes, path)
                arrays = {k: ds[k].values for k in present}
        except (OSError, ValueError) as exc:
            if isinstance(exc, DataError):
                raise
            raise DataError(f"{path}: cannot read NetCDF file ({exc})") from None
    else:
        raise DataError(f"{path}: unknown data file type {suffix!r}; allowed: .nc, .csv, .npz")
    return _from_arrays(arrays, path)


def make_data(config: DataConfig, *, activation: str, seed: int | np.random.SeedSequence) -> RegressionData:
    """The data set described by the ``[data]`` section.

    For ``kind = "teacher"`` the teacher uses the student's activation; for ``kind = "file"`` the
    file's arrays are used as they are (``input_dim``, ``n_train``, ``n_test`` and ``noise`` apply to
    the teacher task only).
    """
    if config.kind == "teacher":
        row = 8.0 * 3 * (config.input_dim + 1)  # a row of inputs and label, drawn, predicted and stored
        sizes = [
            MemoryTerm(row * config.n_train, f"data.n_train = {config.n_train}", "the training inputs and labels"),
            MemoryTerm(row * config.n_test, f"data.n_test = {config.n_test}", "the test inputs and labels"),
        ]
        require_memory(sizes, "the teacher-student data", ConfigError)
        return teacher_student(
            input_dim=config.input_dim,
            teacher_width=config.teacher_width,
            n_train=config.n_train,
            n_test=config.n_test,
            activation=activation,
            seed=seed,
            noise=config.noise,
        )
    if config.kind == "file":
        assert config.path is not None  # checked by DataConfig
        return load_data_file(config.path)
    loader = _NAMED_LOADERS.get(config.kind)
    if loader is None:
        raise DataError(f"unknown data kind {config.kind!r}")
    seq = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
    return loader(config, seq)


class RunSeeds(NamedTuple):
    """The independent random streams of one run, all derived from its ``seed``."""

    data: np.random.SeedSequence
    """Teacher, inputs, label noise, real-data splits."""
    init: np.random.SeedSequence
    """Initial particles."""
    batches: np.random.SeedSequence
    """Mini-batch order of GGN."""


def run_seeds(config: RunConfig) -> RunSeeds:
    """The seed streams of the run ``config``: the one place where ``seed`` is split.

    ``model.init_seed``, when set, replaces the particle stream by the one of that seed (the
    particles ``seed = model.init_seed`` would draw), leaving the data and batch streams alone.
    """
    data, init, batches = np.random.SeedSequence(config.seed).spawn(3)
    if config.model.init_seed is not None:
        init = np.random.SeedSequence(config.model.init_seed).spawn(3)[1]
    return RunSeeds(data=data, init=init, batches=batches)


def make_run_data(config: RunConfig) -> RegressionData:
    """The data of the run ``config`` (the draw every part of gnflow reproduces from the config).

    What the run will allocate (data, Gram matrix, particles, saved trajectory) is estimated first
    and refused when it exceeds the memory available (:func:`gnflow.config.run_memory_terms`); for
    data from a file or a named data set, once their size is known.

    Raises
    ------
    ConfigError
        One line naming the key of the largest allocation and the estimate.
    """
    teacher = config.data.kind == "teacher"
    if teacher:
        require_memory(run_memory_terms(config), "the run", ConfigError)
    data = make_data(config.data, activation=config.model.activation, seed=run_seeds(config).data)
    if not teacher:
        sizes = run_memory_terms(
            config, n_train=data.n_train, n_test=data.n_test, input_dim=data.input_dim, source=data.name
        )
        require_memory(sizes, "the run", ConfigError)
    return data


DatasetLoader = Callable[[DataConfig, np.random.SeedSequence], RegressionData]
_NAMED_LOADERS: dict[str, DatasetLoader] = {}


def register_dataset(name: str, loader: DatasetLoader) -> None:
    """Make ``data.kind = name`` load data with ``loader(config, seed_sequence)``."""
    _NAMED_LOADERS[name] = loader
    register_data_kind(name)
