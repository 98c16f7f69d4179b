"""The trajectory dataset: schema, CF-1.8 attributes, atomic NetCDF writing and reading.

Dimensions: ``t`` (saved flow times), ``particle``, ``component``, ``sample`` (training points),
``test_sample``, ``input_dim``. The time dimension is not called ``time`` because CF readers take
that for calendar time. Every variable carries ``long_name`` and ``units``; ``VARIABLES`` below is
the one place where they are written down, and later capabilities register theirs with
:func:`register_variable`.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import hashlib
import json
import logging
import os
import platform
import re
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from gnflow import __version__
from gnflow.config import ConfigError, MemoryTerm, RunConfig, config_from_dict, require_memory
from gnflow.lock import UNOWNED_STALE_SECONDS, file_age, process_tag, tag_is_stale
from gnflow.status import RunResult

__all__ = [
    "REFERENCES",
    "VARIABLES",
    "OutputExistsError",
    "VariableInfo",
    "atomic_write",
    "cf_attributes",
    "check_writable",
    "component_labels",
    "dataset_config",
    "dataset_result",
    "file_sha256",
    "free_path",
    "read_dataset",
    "register_variable",
    "remove_stale_temporaries",
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

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class VariableInfo:
    """Documentation of one dataset variable.

    ``long_name`` is short, for axis labels and legends ("train loss"); ``description`` holds the
    definition or formula ("L = ||f(X) - y||^2 / (2N) on the N training points"); ``comment`` a
    remark on how values are made. Each becomes the variable attribute of that name.
    """

    long_name: str
    units: str = "1"
    comment: str = ""
    description: str = ""

    def attrs(self) -> dict[str, str]:
        """The CF attributes of the variable."""
        out = {"long_name": self.long_name, "units": self.units}
        if self.description:
            out["description"] = self.description
        if self.comment:
            out["comment"] = self.comment
        return out


COMPONENT_DESCRIPTION = "u0..u{d-1}: input weights, b: bias, v: output weight"

VARIABLES: dict[str, VariableInfo] = {
    "t": VariableInfo(
        "flow time", "1", "dimensionless time of the continuous flow; Euler steps of size h advance it by h"
    ),
    "particle": VariableInfo("particle", description="index of the particle (hidden neuron)"),
    "component": VariableInfo("component", "1", description=COMPONENT_DESCRIPTION),
    "component_name": VariableInfo(
        "component label",
        "1",
        "the labels of the component coordinate as a character array (files of gnflow 0.1.0 have only this)",
        COMPONENT_DESCRIPTION,
    ),
    "weights": VariableInfo(
        "particle position", description="w_i = (u_i, b_i, v_i) of hidden neuron i, components as in component"
    ),
    "train_loss": VariableInfo("train loss", description="L = ||f(X) - y||^2 / (2N) on the N training points"),
    "test_loss": VariableInfo("test loss", description="||f(X_test) - y_test||^2 / (2 N_test) on the test points"),
    "gram_eigmin": VariableInfo(
        "smallest Gram eigenvalue", description="lambda_min(A) of the Gram matrix A = J J^T on the training points"
    ),
    "gram_eigmax": VariableInfo(
        "largest Gram eigenvalue", description="lambda_max(A) of the Gram matrix A = J J^T on the training points"
    ),
    "damping": VariableInfo("damping", description="eps(w) of the Gauss-Newton direction J^T (A + eps I)^-1 g"),
    "nfe": VariableInfo("field evaluations", description="cumulative number of vector-field evaluations"),
    "n_steps": VariableInfo("accepted steps", description="cumulative number of accepted solver steps"),
    "n_rejected": VariableInfo("rejected steps", description="cumulative number of rejected solver steps"),
    "x_train": VariableInfo("training input"),
    "y_train": VariableInfo("training label"),
    "x_test": VariableInfo("test input"),
    "y_test": VariableInfo("test label"),
    "teacher_weights": VariableInfo(
        "teacher particle position", description="(u, b, v) of the hidden units of the teacher network"
    ),
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


class OutputExistsError(FileExistsError):
    """The output file exists and was not to be replaced (pass ``overwrite=True`` / ``--overwrite``)."""


def free_path(path: str | Path) -> Path:
    """``path`` if it does not exist, else the first free ``stem-K.suffix`` beside it."""
    path = Path(path)
    if not os.path.lexists(path):
        return path
    k = 1
    while True:
        candidate = path.with_name(f"{path.stem}-{k}{path.suffix}")
        if not os.path.lexists(candidate):
            return candidate
        k += 1


def _os_error(number: int | None, message: str) -> OSError:
    """An OSError whose text is ``message`` alone (one line, naming the path) and whose errno is ``number``."""
    error = OSError(message)
    error.errno = number
    return error


def _next_name(path: Path) -> Path:
    """The first free name after ``path`` in the sequence ``stem``, ``stem-1``, ``stem-2``, ..."""
    stem, _, number = path.stem.rpartition("-")
    k = int(number) + 1 if stem and number.isdigit() else 1
    stem = stem if stem and number.isdigit() else path.stem
    while os.path.lexists(candidate := path.with_name(f"{stem}-{k}{path.suffix}")):
        k += 1
    return candidate


def check_writable(folder: str | Path) -> None:
    """Make sure a file can be created in ``folder`` (created if missing) before a long computation.

    Raises
    ------
    OSError
        One line naming the folder and the OS error, e.g.
        ``cannot write to data/runs: [Errno 13] Permission denied``.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(folder / "gnflow-write-test")
        fd, name = tempfile.mkstemp(prefix=f".gnflow-write-test.{process_tag()}.", suffix=".tmp", dir=folder)
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        raise _os_error(exc.errno, f"cannot write to {folder}: [Errno {exc.errno}] {exc.strerror}") from None


def _claim(tmp_name: str, path: Path) -> None:
    """Give ``tmp_name`` the name ``path`` unless ``path`` exists (atomically: a hard link)."""
    try:
        os.link(tmp_name, path)
    except FileExistsError:
        raise
    except OSError:
        # a file system without hard links: claim the name by an exclusive create, then replace it
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        os.replace(tmp_name, path)
        return
    os.unlink(tmp_name)


def _write_error(path: Path, exc: BaseException) -> OSError:
    """A one-line OSError naming ``path`` for a failed write (ENOSPC when the disk is full)."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return _os_error(exc.errno, f"cannot write {path}: [Errno {exc.errno}] {exc.strerror}")
    try:
        stat = os.statvfs(path.parent)
        full = stat.f_bavail * stat.f_frsize < 1 << 20
    except OSError:
        full = False
    if full:  # the NetCDF library reports a full disk as "NetCDF: HDF error"
        return _os_error(
            errno.ENOSPC, f"cannot write {path}: [Errno {errno.ENOSPC}] {os.strerror(errno.ENOSPC)} ({exc})"
        )
    return OSError(f"cannot write {path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")


def atomic_write(
    path: str | Path, write: Callable[[str], object], *, overwrite: bool = True, fresh_name: bool = False
) -> Path:
    """Write a file so that a crash never leaves a half-written file under its final name.

    ``write(temporary_name)`` writes the content to a temporary file in the same folder, which is
    then given the permissions of an ordinary new file and given its final name. Every file that
    gnflow writes (datasets, checkpoints, manifests, reports, figures) goes through here.

    Parameters
    ----------
    path:
        The final name.
    write:
        Writes the content to the file name it is given.
    overwrite:
        Replace an existing ``path`` (atomic rename; a symbolic link is written through to its
        target, in the target's folder, and stays a link). When False the name is claimed at the end
        with no-replace semantics (a hard link): if ``path`` exists by then, even when another
        process wrote it during ``write``, nothing is replaced.
    fresh_name:
        With ``overwrite=False``: when ``path`` is taken, write to the first free ``stem-K.suffix``
        beside it instead of raising.

    Returns
    -------
    Path
        The path written (``path``, or the fresh name).

    Raises
    ------
    OutputExistsError
        ``overwrite`` and ``fresh_name`` are False and ``path`` exists.
    OSError
        The write failed; one line naming the path and the OS error (ENOSPC for a full disk).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # replacing a symbolic link writes through to its target; the link stays a link
    final = Path(os.path.realpath(path)) if overwrite and path.is_symlink() else path
    remove_stale_temporaries(final)
    # the writer's host and pid in the name let a later write prove the file stale if it is left behind
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.{process_tag()}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    try:
        try:
            write(tmp_name)
        except (OSError, RuntimeError) as exc:
            raise _write_error(path, exc) from exc
        # mkstemp creates the file private (0600); give it the permissions of an ordinary new file
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_name, 0o666 & ~umask)
        if overwrite:
            os.replace(tmp_name, final)
            return path
        target = path
        while True:
            try:
                _claim(tmp_name, target)
                return target
            except FileExistsError:
                if not fresh_name:
                    raise OutputExistsError(
                        f"{path} exists (written while this one was computed?); nothing was replaced: "
                        "pass --overwrite (overwrite=True) to replace it or choose another output"
                    ) from None
                target = _next_name(target)
    finally:
        Path(tmp_name).unlink(missing_ok=True)


#: The random part of a name from ``tempfile.mkstemp`` (8 characters of this alphabet).
_RANDOM = r"[a-z0-9_]{8}"
#: ``.NAME.<host>-<pid>.XXXXXXXX.tmp``: :func:`atomic_write` since its names carry the writer.
_TAGGED = re.compile(rf"\.(?P<name>.+)\.(?P<host>[0-9a-f]{{8}})-(?P<pid>[0-9]+)\.{_RANDOM}\.tmp")
#: ``.NAME.XXXXXXXX.tmp``: :func:`atomic_write`, checkpoints and sweeps of earlier gnflow versions.
_UNTAGGED = re.compile(rf"\.(?P<name>.+)\.{_RANDOM}\.tmp")


def _why_stale(candidate: Path, name: str | None) -> str | None:
    """Why the file ``candidate`` is a provably stale temporary file of a writer of ``name`` (of any
    file when None), or None when it is not one, or not provably stale."""
    tagged = _TAGGED.fullmatch(candidate.name)
    age = file_age(candidate)
    if age is None:
        return None  # a link, a folder, or gone
    if tagged is not None:
        if name is not None and tagged["name"] != name:
            return None
        if tag_is_stale(f"{tagged['host']}-{tagged['pid']}"):
            return "its process is gone"
        if tagged["host"] == process_tag().partition("-")[0]:
            return None  # a live process of this host and boot: never
        unowned = "of another host or an earlier boot"
    else:
        untagged = _UNTAGGED.fullmatch(candidate.name)
        if untagged is None or (name is not None and untagged["name"] != name):
            return None
        unowned = "of an earlier gnflow version"
    if age > UNOWNED_STALE_SECONDS:
        return f"{unowned}, not modified for {UNOWNED_STALE_SECONDS // 3600} hours"
    return None


def remove_stale_temporaries(path: str | Path) -> list[Path]:
    """Delete the temporary files of :func:`atomic_write` that writers of ``path`` (of every file in
    it, when ``path`` is a folder) left when they were killed, where this is provable.

    Two names are recognised, exactly (the random part as ``tempfile.mkstemp`` makes it):

    - ``.NAME.<host>-<pid>.XXXXXXXX.tmp``: removed when written on this host since its last boot by
      a process that is gone; never while that process lives. Tagged by another host or by this
      host before its last boot, the writer cannot be checked: removed once not modified for
      :data:`gnflow.lock.UNOWNED_STALE_SECONDS` (24 hours).
    - ``.NAME.XXXXXXXX.tmp``, written by earlier gnflow versions (datasets, checkpoints, manifests)
      without the writer's tag: removed once not modified for 24 hours.

    Other files, links, folders and recent files of writers that cannot be checked are left alone.

    Returns
    -------
    list of Path
        The files removed.
    """
    path = Path(path)
    folder, name = (path, None) if path.is_dir() else (path.parent, path.name)
    prefix = "." if name is None else f".{name}."
    removed: list[Path] = []
    try:
        candidates = [p for p in folder.iterdir() if p.name.startswith(prefix) and p.name.endswith(".tmp")]
    except OSError:
        return removed
    for candidate in candidates:
        why = _why_stale(candidate, name)
        if why is not None:
            with contextlib.suppress(FileNotFoundError):
                candidate.unlink()
                removed.append(candidate)
                logger.info("removed %s, left by an interrupted write (%s)", candidate.name, why)
    return removed


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda name: Path(name).write_text(text))


def atomic_write_json(path: str | Path, data: Any) -> Path:
    """Write ``data`` as indented, key-sorted JSON to ``path`` atomically."""
    return atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True, default=str) + "\n")


def write_dataset(ds: xr.Dataset, path: str | Path, *, overwrite: bool = True, fresh_name: bool = False) -> Path:
    """Write ``ds`` to ``path`` as NetCDF-4 atomically (see :func:`atomic_write` for ``overwrite``
    and ``fresh_name``).

    Returns the path written.
    """
    apply_variable_attrs(ds)
    return atomic_write(
        path,
        lambda name: ds.to_netcdf(name, engine="netcdf4", format="NETCDF4", encoding=_encoding(ds)),
        overwrite=overwrite,
        fresh_name=fresh_name,
    )


def file_sha256(path: str | Path) -> str:
    """The SHA-256 digest of the file ``path`` (hex), read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while block := stream.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def component_labels(ds: xr.Dataset) -> xr.Dataset:
    """``ds`` with the indexed coordinate ``component`` (labels ``u0 .. u{d-1}, b, v``), so that
    ``ds.weights.sel(component="v")`` works.

    Files written since the coordinate exists hold it; in files of gnflow 0.1.0 the labels are only
    in ``component_name``, from which it is made here. Datasets without a ``component`` dimension,
    or with the coordinate already, are returned as they are.
    """
    if "component" not in ds.dims or "component" in ds.coords or "component_name" not in ds.variables:
        return ds
    labels = np.asarray([str(label) for label in ds["component_name"].values], dtype=object)
    return ds.assign_coords(component=("component", labels, VARIABLES["component"].attrs()))


def read_dataset(path: str | Path) -> xr.Dataset:
    """Read a gnflow NetCDF file fully into memory (the file is closed afterwards).

    The components of the particles are an indexed coordinate (``sel(component="v")``), in files of
    gnflow 0.1.0 too (see :func:`component_labels`).

    Raises
    ------
    ValueError
        One line naming the file: not NetCDF, or its arrays need more memory than is available
        (a small compressed file may unpack to gigabytes), with the estimate and the largest variable.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory, not a NetCDF file")
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    try:
        sizes = _variable_memory(path)
    except OSError as exc:
        raise ValueError(f"{path}: not a readable NetCDF file ({exc})") from None
    require_memory(
        sizes,
        "reading the file",
        lambda message: ValueError(f"{path}: {message}"),
        advice="it cannot be read whole on this machine",
    )
    try:
        ds = xr.load_dataset(path, engine="netcdf4")
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable NetCDF file ({exc})") from None
    return component_labels(ds)


def _itemsize(dtype: Any) -> int:
    """Bytes per element; variable-length strings count as 8 (a pointer) beyond their text."""
    return dtype.itemsize if isinstance(dtype, np.dtype) else 8


def _variable_memory(path: Path) -> list[MemoryTerm]:
    """The in-memory size of every variable of the NetCDF file ``path``, read from its header only."""
    import netCDF4

    with netCDF4.Dataset(path) as nc:
        return [
            MemoryTerm(
                float(np.prod(var.shape, dtype=np.float64)) * _itemsize(var.dtype),
                f"variable {name!r} {tuple(var.dimensions)} = {var.shape}",
                "its decoded values",
            )
            for name, var in nc.variables.items()
        ]


def dataset_config(ds: xr.Dataset) -> Mapping[str, Any]:
    """The resolved run config stored in the ``gnflow_config`` attribute, as a dictionary.

    Raises
    ------
    ValueError
        When the dataset has no ``gnflow_config`` (it was not written by ``gnflow run``).
    """
    text = ds.attrs.get("gnflow_config")
    if text is None:
        raise ValueError("the dataset has no gnflow_config attribute: not a trajectory written by gnflow run")
    if not isinstance(text, str):
        kind = type(text).__name__
        raise ValueError(f"attribute gnflow_config is a {kind} ({text!r:.60}), not the JSON text of a run config")
    try:
        result = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"attribute gnflow_config is not valid JSON ({exc})") from None
    if not isinstance(result, dict):
        kind = "null" if result is None else type(result).__name__
        raise ValueError(f"attribute gnflow_config holds a JSON {kind}, not a run config (a JSON object)")
    return result


def run_config_of(ds: xr.Dataset) -> RunConfig:
    """The :class:`~gnflow.config.RunConfig` of the run that wrote ``ds`` (``gnflow_config``).

    Raises
    ------
    ValueError
        The attribute is missing, not JSON, not an object, or not a valid config (a
        :class:`~gnflow.config.ConfigError` naming the attribute and the key).
    """
    values = dataset_config(ds)
    try:
        return config_from_dict(values)
    except ConfigError as exc:
        raise ConfigError(f"attribute gnflow_config: {exc}") from None


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
