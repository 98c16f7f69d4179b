"""The trajectory dataset: schema, CF-1.8 attributes, atomic NetCDF writing and reading.

Dimensions: ``t`` (saved flow times), ``particle``, ``component``, ``sample`` (training points),
``test_sample``, ``input_dim``. The time dimension is not called ``time`` because CF readers take
that for calendar time. Every variable carries ``long_name`` and ``units``; ``VARIABLES`` below is
the one place where they are written down, and later capabilities register theirs with
:func:`register_variable`.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from gnflow import __version__
from gnflow.config import RunConfig, config_from_dict
from gnflow.status import RunResult

__all__ = [
    "REFERENCES",
    "VARIABLES",
    "VariableInfo",
    "atomic_write",
    "cf_attributes",
    "dataset_config",
    "dataset_result",
    "read_dataset",
    "register_variable",
    "run_config_of",
    "to_attr",
    "write_dataset",
]

REFERENCES = (
    "Arbel, Menegaux, Wolinski (2023), Rethinking Gauss-Newton for learning over-parameterized models, "
    "arXiv:2302.02904; Cai et al. (2019), Gram-Gauss-Newton Method: Learning Overparameterized Neural "
    "Networks for Regression Problems, arXiv:1905.11675"
)
"""The two papers gnflow is built from, as a CF ``references`` attribute."""


@dataclass(frozen=True)
class VariableInfo:
    """Documentation of one dataset variable: its long name, units and (optional) comment."""

    long_name: str
    units: str = "1"
    comment: str = ""

    def attrs(self) -> dict[str, str]:
        """The CF attributes of the variable."""
        out = {"long_name": self.long_name, "units": self.units}
        if self.comment:
            out["comment"] = self.comment
        return out


VARIABLES: dict[str, VariableInfo] = {
    "t": VariableInfo(
        "flow time", "1", "dimensionless time of the continuous flow; Euler steps of size h advance it by h"
    ),
    "particle": VariableInfo("particle (hidden neuron) index"),
    "component_name": VariableInfo(
        "particle component label", "1", "u0..u{d-1}: input weights, b: bias, v: output weight"
    ),
    "weights": VariableInfo("particle positions (u, b, v) of the hidden neurons"),
    "train_loss": VariableInfo("training loss L = ||f(X) - y||^2 / (2N)"),
    "test_loss": VariableInfo("test loss ||f(X_test) - y_test||^2 / (2 N_test)"),
    "gram_eigmin": VariableInfo("smallest eigenvalue of the Gram matrix A = J J^T"),
    "gram_eigmax": VariableInfo("largest eigenvalue of the Gram matrix A = J J^T"),
    "damping": VariableInfo("Gauss-Newton damping eps(w)"),
    "nfe": VariableInfo("cumulative number of vector-field evaluations"),
    "n_steps": VariableInfo("cumulative number of accepted solver steps"),
    "n_rejected": VariableInfo("cumulative number of rejected solver steps"),
    "x_train": VariableInfo("training inputs"),
    "y_train": VariableInfo("training labels"),
    "x_test": VariableInfo("test inputs"),
    "y_test": VariableInfo("test labels"),
    "teacher_weights": VariableInfo("teacher network particles (u, b, v)"),
}


def register_variable(name: str, info: VariableInfo) -> None:
    """Document a variable added to trajectory datasets by another part of gnflow."""
    VARIABLES[name] = info


def to_attr(value: Any) -> str | int | float:
    """Turn a Python value into a NetCDF-safe attribute (bools as 0/1, containers as JSON)."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float, str)):
        return value
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return json.dumps(value, sort_keys=True, default=str)


def apply_variable_attrs(ds: xr.Dataset) -> xr.Dataset:
    """Set ``long_name``/``units`` (and ``comment``) on every documented variable of ``ds``."""
    for name in ds.variables:
        info = VARIABLES.get(str(name))
        if info is not None:
            ds[name].attrs.update(info.attrs())
        elif "long_name" not in ds[name].attrs or "units" not in ds[name].attrs:
            raise ValueError(f"variable {name!r} has no long_name/units: register it with register_variable")
    return ds


def _encoding(ds: xr.Dataset) -> dict[str, dict[str, Any]]:
    encoding: dict[str, dict[str, Any]] = {}
    for name, var in ds.variables.items():
        enc: dict[str, Any] = {"_FillValue": None}
        if var.dtype.kind in "OUS":
            enc = {"dtype": "S1"}
        elif var.ndim >= 2 and var.size > 4096:
            enc.update(zlib=True, complevel=4)
        encoding[str(name)] = enc
    return encoding


def utc_now() -> str:
    """The current UTC time in ISO 8601 to the second (for ``history`` and ``date_created``)."""
    return _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat()


def cf_attributes(
    title: str,
    history: str,
    *,
    references: str = REFERENCES,
    libraries: bool = True,
    **extra: str | int | float,
) -> dict[str, str | int | float]:
    """The CF-1.8 global attributes every gnflow file carries, plus ``extra``.

    Parameters
    ----------
    title:
        What the file holds, one line.
    history:
        The command that made it; stamped with the current UTC time.
    references:
        CF ``references`` (default: the two papers gnflow is built from).
    libraries:
        Name torch and torchdiffeq versions in ``source`` (besides gnflow and Python).
    extra:
        Further attributes (``gnflow_*``), added after the CF block.
    """
    now = utc_now()
    source = f"gnflow {__version__}"
    if libraries:
        import torch
        import torchdiffeq

        source += f"; torch {torch.__version__}; torchdiffeq {torchdiffeq.__version__}"
    source += f"; python {platform.python_version()}"
    return {
        "Conventions": "CF-1.8",
        "title": title,
        "institution": "gnflow",
        "source": source,
        "history": f"{now} {history}",
        "references": references,
        "date_created": now,
        "gnflow_version": __version__,
        **extra,
    }


def atomic_write(path: str | Path, write: Callable[[str], object]) -> Path:
    """Write a file so that a crash never leaves a half-written file under its final name.

    ``write(temporary_name)`` writes the content to a temporary file in the same folder, which is
    then given the permissions of an ordinary new file and renamed onto ``path``. Every file that
    gnflow writes (datasets, checkpoints, manifests, reports, figures) goes through here.

    Returns the path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp_name)
        # mkstemp creates the file private (0600); give it the permissions of an ordinary new file
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_name, 0o666 & ~umask)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda name: Path(name).write_text(text))


def atomic_write_json(path: str | Path, data: Any) -> Path:
    """Write ``data`` as indented, key-sorted JSON to ``path`` atomically."""
    return atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True, default=str) + "\n")


def write_dataset(ds: xr.Dataset, path: str | Path) -> Path:
    """Write ``ds`` to ``path`` as NetCDF-4 atomically (see :func:`atomic_write`).

    Returns the path written.
    """
    apply_variable_attrs(ds)
    return atomic_write(
        path, lambda name: ds.to_netcdf(name, engine="netcdf4", format="NETCDF4", encoding=_encoding(ds))
    )


def read_dataset(path: str | Path) -> xr.Dataset:
    """Read a gnflow NetCDF file fully into memory (the file is closed afterwards)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    try:
        return xr.load_dataset(path, engine="netcdf4")
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable NetCDF file ({exc})") from None


def dataset_config(ds: xr.Dataset) -> Mapping[str, Any]:
    """The resolved run config stored in the ``gnflow_config`` attribute, as a dictionary.

    Raises
    ------
    ValueError
        When the dataset has no ``gnflow_config`` (it was not written by ``gnflow run``).
    """
    text = ds.attrs.get("gnflow_config")
    if not isinstance(text, str):
        raise ValueError("the dataset has no gnflow_config attribute: not a trajectory written by gnflow run")
    result: Mapping[str, Any] = json.loads(text)
    return result


def run_config_of(ds: xr.Dataset) -> RunConfig:
    """The :class:`~gnflow.config.RunConfig` of the run that wrote ``ds`` (``gnflow_config``)."""
    return config_from_dict(dataset_config(ds))


def dataset_result(ds: xr.Dataset) -> RunResult:
    """How the run that wrote ``ds`` ended (``gnflow_status``).

    Raises
    ------
    ValueError
        When the dataset has no valid ``gnflow_status`` attribute.
    """
    if "gnflow_status" not in ds.attrs:
        raise ValueError("the dataset has no gnflow_status attribute: not written by gnflow")
    return RunResult.parse(str(ds.attrs["gnflow_status"]))
