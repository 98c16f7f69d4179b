"""Sweep grids: a base run config, a grid of config values and explicit runs, expanded to runs.

A sweep grid is what ``gnflow sweep FILE.toml`` runs (a *study*, in gnflow's vocabulary, is a
scripted reproduction of :mod:`gnflow.studies`; a study may run sweep grids). A grid file is TOML::

    [sweep]                      # optional; [study] is accepted as its older name
    name = "init-scale"          # default: the file name without .toml
    base_file = "base.toml"      # optional run config (relative to this file) under [base]

    [base]                       # a run config (docs/config.md): the same keys as `gnflow run`
    seed = 1
    [base.model]
    width = 200

    [grid]                       # one list per varied key; the runs are their Cartesian product
    "model.init_scale" = [0.1, 1.0, 10.0]
    seed = [1, 2]

    [[runs]]                     # optional: explicit variants, each crossed with the grid
    name = "gn"
    "flow.kind" = "gauss_newton"
    [[runs]]
    name = "gd"
    "flow.kind" = "gradient"

Keys may be quoted dotted keys (``"model.init_scale"``) or TOML tables (``[grid.model]``).
Each run is the base config with its ``[[runs]]`` entry and its grid point applied; the grid
keys (and ``run`` when there are explicit runs) become the dimensions of the combined dataset.
A run's identifier is the :func:`~gnflow.config.config_hash` of its resolved config, so it
does not depend on the order of the grid or on where the files go.
"""

from __future__ import annotations

import itertools
import json
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gnflow.config import (
    ConfigError,
    RunConfig,
    config_from_dict,
    config_hash,
    config_to_dict,
    flatten_dotted,
    get_dotted,
    read_toml,
    set_dotted,
)

__all__ = ["RUN_DIM", "SweepGrid", "SweepRun", "check_name", "dimension_name", "grid_from_dict", "load_grid"]

RUN_DIM = "run"
_HEADERS = ("sweep", "study")  # the header table; "study" is its name before sweep grids had their own
_TABLES = (*_HEADERS, "base", "grid", "runs")
_MANAGED_KEYS = ("output.path",)  # every run writes DIR/runs/<id>.nc


@dataclass(frozen=True)
class SweepRun:
    """One run of a sweep grid.

    Attributes
    ----------
    run_id:
        :func:`~gnflow.config.config_hash` of ``config``.
    config:
        The resolved run config (its ``output.path`` is set by the sweep).
    index:
        Position along the grid's dimensions (``SweepGrid.dims``).
    values:
        The run's value of each varied key (dotted key -> resolved value).
    """

    run_id: str
    config: RunConfig
    index: tuple[int, ...]
    values: Mapping[str, Any]


@dataclass(frozen=True)
class SweepGrid:
    """A sweep grid expanded to its runs.

    Attributes
    ----------
    name:
        Grid name (``[sweep] name`` or the file name).
    grid:
        Dotted config key -> its resolved values, in the order of the file.
    labels:
        Names of the ``[[runs]]`` entries (None when the grid has none).
    runs:
        Every run, in row-major order of ``dims``.
    definition:
        The grid as read (base, grid, runs), for the record.
    """

    name: str
    grid: Mapping[str, tuple[Any, ...]]
    labels: tuple[str, ...] | None
    runs: tuple[SweepRun, ...]
    definition: Mapping[str, Any]

    @property
    def dims(self) -> tuple[str, ...]:
        """Dimension names: ``run`` (with explicit runs) then one per grid key (dots -> ``_``)."""
        names = tuple(dimension_name(key) for key in self.grid)
        return ((RUN_DIM,) if self.labels is not None else ()) + names

    @property
    def shape(self) -> tuple[int, ...]:
        """Sizes of :attr:`dims`."""
        sizes = tuple(len(values) for values in self.grid.values())
        return ((len(self.labels),) if self.labels is not None else ()) + sizes

    @property
    def keys(self) -> dict[str, str]:
        """Dimension name -> dotted config key of the grid dimensions."""
        return {dimension_name(key): key for key in self.grid}


def dimension_name(key: str) -> str:
    """The dataset dimension of a grid key: ``model.init_scale`` -> ``model_init_scale``."""
    return key.replace(".", "_")


def _flatten(table: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Nested TOML tables -> dotted keys, refusing the keys the sweep sets itself."""
    flat = flatten_dotted(table, where)
    for key in flat:
        if key in _MANAGED_KEYS:
            raise ConfigError(f"{where}: {key} is set by the sweep (each run writes DIR/runs/<id>.nc)")
    return flat


def _bad_component(part: str) -> bool:
    return (
        not part
        or part[0] in "-."  # also . and ..
        or any(c == "\\" or unicodedata.category(c)[0] == "C" for c in part)
        or len(part.encode()) > 255
    )


def check_name(name: str, key: str) -> str:
    """``name`` if it can name a folder below the output folder, else a one-line :class:`ConfigError`.

    Grid and study names become folder names (``data/sweeps/<name>``; the grids of a study go to
    ``OUT/<name>``), so a name is a relative path of file-name components: each one not empty, not
    ``.`` or ``..`` or anything else starting with ``.`` or ``-``, without ``\\`` or control
    characters, at most 255 bytes. It cannot leave the folder it is put in.
    """
    if not name or any(_bad_component(part) for part in name.split("/")):
        raise ConfigError(
            f"{key}: {name!r} is not a file name; it names a folder, so use letters, digits and - _ . "
            "(not first), without .. or \\"
        )
    return name


def _label(value: Any) -> Any:
    """A coordinate value: numbers and strings as they are, bools as 0/1, lists as JSON."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float, str)):
        return value
    return json.dumps(value)


def grid_from_dict(values: Mapping[str, Any], *, name: str, base_dir: Path | None = None) -> SweepGrid:
    """Expand a sweep grid given as a mapping (the parsed TOML file) to its runs.

    Raises
    ------
    ConfigError
        Unknown tables or keys, grid values that are not non-empty lists, a key set both in
        ``[grid]`` and ``[[runs]]``, invalid resolved configs (the message names the run), or
        two runs that resolve to the same config.
    """
    unknown = [k for k in values if k not in _TABLES]
    if unknown:
        raise ConfigError(
            f"unknown sweep grid table {unknown[0]!r}; allowed: {', '.join(_TABLES)} (run config keys go under [base])"
        )
    headers = [h for h in _HEADERS if h in values]
    if len(headers) > 1:
        raise ConfigError("[sweep] and [study] are the same table (study is its older name); keep one")
    where = f"[{headers[0]}]" if headers else "[sweep]"
    header = values.get(headers[0], {}) if headers else {}
    if not isinstance(header, Mapping) or set(header) - {"name", "base_file"}:
        raise ConfigError(f"{where}: allowed keys are name and base_file")
    name = check_name(str(header.get("name", name)), f"{where[1:-1]}.name")

    base: dict[str, Any] = {}
    if "base_file" in header:
        base_path = Path(header["base_file"])
        if not base_path.is_absolute() and base_dir is not None:
            base_path = base_dir / base_path
        base = read_toml(base_path, f"{where[1:-1]}.base_file: run config")
    base_table = values.get("base", {})
    if not isinstance(base_table, Mapping):
        raise ConfigError("base: expected a table [base] holding a run config")
    for key, value in _flatten(base_table, "[base]").items():
        set_dotted(base, key, value)
    try:
        base_config = config_from_dict(base)
    except ConfigError as exc:
        raise ConfigError(f"[base] {exc}") from None

    grid_table = values.get("grid", {})
    if not isinstance(grid_table, Mapping):
        raise ConfigError('grid: expected a table [grid] of lists, e.g. "model.init_scale" = [0.1, 1.0]')
    grid = _flatten(grid_table, "[grid]")
    for key, options in grid.items():
        if not isinstance(options, list) or not options:
            raise ConfigError(f"grid.{key}: expected a non-empty list of values, got {options!r}")

    runs_table = values.get("runs")
    labels: tuple[str, ...] | None = None
    variants: list[dict[str, Any]] = [{}]
    if runs_table is not None:
        if not isinstance(runs_table, list) or not runs_table or not all(isinstance(r, Mapping) for r in runs_table):
            raise ConfigError("runs: expected one or more [[runs]] tables")
        variants, names = [], []
        for i, entry in enumerate(runs_table):
            entry = dict(entry)
            label = entry.pop("name", f"run{i}")
            if not isinstance(label, str) or not label:
                raise ConfigError(f"runs[{i}].name: expected a non-empty string, got {label!r}")
            overrides = _flatten(entry, f"runs[{i}] ({label})")
            both = sorted(set(overrides) & set(grid))
            if both:
                raise ConfigError(f"runs[{i}] ({label}): {both[0]} is also a [grid] key; set it in one place")
            variants.append(overrides)
            names.append(label)
        if len(set(names)) != len(names):
            raise ConfigError(f"runs: names must be distinct, got {', '.join(names)}")
        labels = tuple(names)

    dims = [dimension_name(k) for k in grid]
    reserved = {RUN_DIM, "t"}
    for dim, key in zip(dims, grid, strict=True):
        if dim in reserved or dims.count(dim) > 1:
            raise ConfigError(f"grid.{key}: its dimension name {dim!r} is taken; grid keys must give distinct names")

    runs: list[SweepRun] = []
    seen: dict[str, str] = {}
    keys = list(grid)
    for v_index, overrides in enumerate(variants):
        for point in itertools.product(*(range(len(grid[k])) for k in keys)):
            settings = {**overrides, **{k: grid[k][i] for k, i in zip(keys, point, strict=True)}}
            where = (
                ", ".join(
                    ([f"run {labels[v_index]}"] if labels is not None else [])
                    + [f"{k}={grid[k][i]!r}" for k, i in zip(keys, point, strict=True)]
                )
                or "the base run"
            )
            resolved = json.loads(json.dumps(base))
            for key, value in settings.items():
                set_dotted(resolved, key, value)
            try:
                config = config_from_dict(resolved)
            except ConfigError as exc:
                raise ConfigError(f"{where}: {exc}") from None
            run_id = config_hash(config)
            if run_id in seen:
                raise ConfigError(f"{where} gives the same run as {seen[run_id]}; remove one of them")
            seen[run_id] = where
            as_dict = config_to_dict(config)
            index = ((v_index,) if labels is not None else ()) + point
            runs.append(
                SweepRun(
                    run_id=run_id,
                    config=config,
                    index=index,
                    values={k: get_dotted(as_dict, k) for k in settings},
                )
            )

    resolved_grid: dict[str, tuple[Any, ...]] = {}
    for axis, key in enumerate(keys):
        position = axis + (1 if labels is not None else 0)
        by_index = {run.index[position]: _label(run.values[key]) for run in runs}
        axis_values = tuple(by_index[i] for i in range(len(grid[key])))
        if len(set(axis_values)) != len(axis_values):
            raise ConfigError(f"grid.{key}: values must be distinct, got {list(axis_values)}")
        resolved_grid[key] = axis_values

    definition = {
        "base": config_to_dict(base_config),
        "grid": {k: list(v) for k, v in grid.items()},
        "runs": [{"name": n, **o} for n, o in zip(labels, variants, strict=True)] if labels is not None else [],
    }
    return SweepGrid(name=name, grid=resolved_grid, labels=labels, runs=tuple(runs), definition=definition)


def load_grid(path: str | Path) -> SweepGrid:
    """Read and expand a sweep grid file (see the module documentation for its format)."""
    path = Path(path)
    return grid_from_dict(read_toml(path, "sweep grid file"), name=path.stem, base_dir=path.parent)
