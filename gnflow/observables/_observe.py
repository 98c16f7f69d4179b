"""Choosing observables, measuring them on a trajectory dataset and writing their variables."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import logging
from collections.abc import Iterable, Sequence

import torch
import xarray as xr

from gnflow.config import ConfigError, ObserveConfig
from gnflow.data import RegressionData
from gnflow.dataset import apply_variable_attrs
from gnflow.observables._builtin import OBSERVABLES
from gnflow.observables._observable import Observable
from gnflow.observables._trajectory import Trajectory, measure, run_config, trajectory_from_dataset

logger = logging.getLogger(__name__)


def _with_requirements(names: Iterable[str]) -> list[str]:
    """Names in registry order, with every required observable included."""
    wanted: set[str] = set()

    def add(name: str) -> None:
        if name not in wanted:
            wanted.add(name)
            for required in OBSERVABLES[name].requires:
                add(required)

    for name in names:
        add(name)
    return [name for name in OBSERVABLES if name in wanted]


def validate_observable_names(names: Sequence[str], *, has_teacher: bool) -> None:
    """Raise ConfigError if a name is unknown or needs teacher--student data that are absent."""
    for name in names:
        if name not in OBSERVABLES:
            raise ConfigError(f"observe.names: unknown observable {name!r}; allowed: {', '.join(OBSERVABLES)}")
        if OBSERVABLES[name].needs_teacher and not has_teacher:
            raise ConfigError(
                f'observe.names: {name!r} needs teacher-student data (data.kind = "teacher"); '
                "this run has no teacher_weights"
            )


def select_observables(names: Sequence[str] | None, *, has_teacher: bool) -> list[str]:
    """The observables to compute for ``names``, validated, with their requirements, in registry order.

    ``names = None`` selects every observable that applies (the teacher ones only with a teacher).

    Raises
    ------
    gnflow.config.ConfigError
        A name is unknown or needs a teacher that the data do not have.
    """
    if names is None:
        names = [name for name, cls in OBSERVABLES.items() if has_teacher or not cls.needs_teacher]
    validate_observable_names(names, has_teacher=has_teacher)
    return _with_requirements(names)


def make_observables(names: Sequence[str], trajectory: Trajectory, options: ObserveConfig) -> list[Observable]:
    """Fresh observables ``names`` (as from :func:`select_observables`) on ``trajectory``."""
    return [OBSERVABLES[name](trajectory, options) for name in names]


def add_observables(ds: xr.Dataset, observables: Sequence[Observable], options: ObserveConfig) -> xr.Dataset:
    """A copy of ``ds`` with the variables and attributes of ``observables``, measured already.

    Earlier values of the same variables are replaced; ``gnflow_observe`` records the names and
    ``options`` (JSON).
    """
    written = {v for observable in observables for v in observable.variables}
    out = ds.drop_vars([v for v in written if v in ds.variables])
    out.attrs = dict(ds.attrs)
    for observable in observables:
        output = observable.result(out)
        out = out.assign(output.variables)
        out.attrs.update(output.attrs)
    out.attrs["gnflow_observe"] = json.dumps(
        {
            "names": [observable.name for observable in observables],
            "options": {k: v for k, v in _options_dict(options).items() if k != "names"},
        },
        sort_keys=True,
    )
    return apply_variable_attrs(out)


def observe(
    ds: xr.Dataset,
    names: Sequence[str] | None = None,
    *,
    options: ObserveConfig | None = None,
    data: RegressionData | None = None,
    device: torch.device | str = "cpu",
) -> xr.Dataset:
    """Add observables to a trajectory dataset (the input is not modified).

    Parameters
    ----------
    ds:
        A trajectory dataset written by gnflow (``weights``, ``x_train``, ``y_train``,
        ``gnflow_config``; ``x_test``/``y_test`` and ``teacher_weights`` when present).
    names:
        Observables to compute (see ``OBSERVABLES``); None computes every observable that applies
        to the dataset (the teacher ones only when it holds ``teacher_weights``). Observables that
        others require (``regime`` needs ``weight_movement`` and ``kernel_movement``) are added.
    options:
        Parameters of the observables; default: the ``[observe]`` section of the stored config.
    data:
        The run's data, used for the test set when ``ds`` does not hold it.
    device:
        Torch device of the computations.

    Returns
    -------
    xr.Dataset
        A copy of ``ds`` with the observables' variables (replacing earlier values of the same
        variables), global attributes ``gnflow_observe`` (JSON: names and options) and, with
        ``regime``, ``gnflow_regime`` and the numbers behind it.
    """
    if options is None:
        options = run_config(ds).observe
    selected = select_observables(names, has_teacher="teacher_weights" in ds)
    need_test = any(OBSERVABLES[n].needs_test for n in selected)
    trajectory = trajectory_from_dataset(ds, data=data, device=device, need_test=need_test)
    observables = make_observables(selected, trajectory, options)
    logger.info("observing %s at %d saved times", ", ".join(selected), trajectory.n_times)
    measure(trajectory, observables)
    return add_observables(ds, observables, options)


def _options_dict(options: ObserveConfig) -> dict[str, object]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(options).items()}


def append_history(ds: xr.Dataset, line: str) -> None:
    """Append a timestamped line to the CF ``history`` attribute of ``ds`` (in place)."""
    now = _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat()
    previous = str(ds.attrs.get("history", "")).rstrip("\n")
    ds.attrs["history"] = f"{previous}\n{now} {line}" if previous else f"{now} {line}"
