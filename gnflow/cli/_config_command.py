"""Run configs on the command line: reading one with ``--set`` overrides, ``gnflow config``, and the
name of a run's output when overrides change what it computes.

``gnflow config [CONFIG] [--set KEY=VALUE ...]`` prints the fully resolved config as TOML (every
key, defaults included), so that its output, saved as a file, is a run config of its own with the
same config hash.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from gnflow.cli._paths import EXIT_USAGE, CommandError, default_config_text
from gnflow.config import (
    LOCATION_KEYS,
    ConfigError,
    RunConfig,
    apply_overrides,
    config_from_dict,
    config_hash,
    config_to_dict,
    read_toml,
)

__all__ = ["config_to_toml", "examples_folder", "override_output_path", "read_config_values", "resolve_config"]

#: The longest ``key=value`` suffix an output name gets; longer ones name the config hash instead.
MAX_NAME_SUFFIX = 80


def examples_folder() -> Path | None:
    """The ``examples/`` folder of a source checkout of gnflow (None for an installed package)."""
    folder = Path(__file__).resolve().parents[2] / "examples"
    return folder if folder.is_dir() else None


def _missing_config_hint() -> str:
    folder = examples_folder()
    where = f"{folder}/" if folder is not None else "examples/ of the gnflow source tree"
    return f"example configs are in {where}, and 'gnflow config > my.toml' writes the default run's config to edit"


def read_config_values(config: str | None) -> dict[str, Any]:
    """The TOML values of the run config file ``config`` (None: the embedded default run).

    Raises
    ------
    CommandError
        The file does not exist (the message points to ``examples/`` and ``gnflow config``) or is
        not valid TOML.
    """
    if config is None:
        return tomllib.loads(default_config_text())
    path = Path(config)
    if not path.exists():
        raise CommandError(f"config file {config!r} does not exist; {_missing_config_hint()}", EXIT_USAGE)
    try:  # a directory, bytes that are not UTF-8, invalid TOML: one line naming the file
        return read_toml(path, "config file")
    except ConfigError as exc:
        raise CommandError(str(exc), EXIT_USAGE) from None


def resolve_config(config: str | None, overrides: Sequence[str]) -> tuple[RunConfig, RunConfig]:
    """The run config of ``CONFIG --set ...``, and the config of ``CONFIG`` alone (no overrides)."""
    values = read_config_values(config)
    return config_from_dict(apply_overrides(values, overrides)), config_from_dict(values)


def _toml_value(value: Any, key: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return repr(value)  # shortest round-tripping text; 'inf', '-inf', '1e-07' are TOML too
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # JSON string escapes are TOML basic-string escapes
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v, key) for v in value) + "]"
    raise ValueError(f"{key}: a config value of type {type(value).__name__} has no TOML form")


def config_to_toml(config: RunConfig, header: str = "") -> str:
    """The resolved ``config`` as TOML text: top-level keys, then one table per section.

    Every key is written, defaults included; keys whose value is absent (None) are left out, as
    in the stored ``gnflow_config``. Reading the text back gives an equal config (same hash).

    Parameters
    ----------
    config:
        The run config.
    header:
        Comment lines put first (each prefixed with ``# ``).
    """
    values = config_to_dict(config)
    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    tables = {k: v for k, v in values.items() if isinstance(v, Mapping)}
    lines.extend(f"{k} = {_toml_value(v, k)}" for k, v in values.items() if k not in tables)
    for section, table in tables.items():
        lines.append("")
        lines.append(f"[{section}]")
        for key, value in table.items():
            if isinstance(value, Mapping):
                raise ValueError(f"{section}.{key}: nested tables are not part of a run config")
            lines.append(f"{key} = {_toml_value(value, f'{section}.{key}')}")
    return "\n".join(lines) + "\n"


def _flat(config: RunConfig) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in config_to_dict(config).items():
        if isinstance(value, Mapping):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    return flat


def override_output_path(config: RunConfig, base: RunConfig) -> Path:
    """Where a run of ``config`` goes when it is ``base`` with ``--set`` overrides and no ``-o``.

    The stem of ``base.output.path`` gets the overrides that change what is computed, as
    ``-key=value`` in config order (``data/runs/default-init_scale=0.1-flow.kind=gradient.nc``: the
    section is left out where no other section has a key of that name); keys that only say
    where and how long to compute (:data:`gnflow.config.LOCATION_KEYS`) do not count, so that a run
    and its ``--resume`` with another time budget share a file. A suffix longer than
    :data:`MAX_NAME_SUFFIX` characters is replaced by the config hash, as sweeps name their runs. An
    ``output.path`` given by ``--set`` is used as it is.
    """
    path = Path(config.output.path)
    if config.output.path != base.output.path:
        return path
    new, old = _flat(config), _flat(base)
    changed = [key for key in new.keys() | old.keys() if key not in LOCATION_KEYS and new.get(key) != old.get(key)]
    if not changed:
        return path
    order = list(new) + [key for key in old if key not in new]
    # a key is named without its section where no other section has a key of that name
    names = [key.rpartition(".")[2] for key in order]
    parts = []
    for key in sorted(changed, key=order.index):
        name = key.rpartition(".")[2]
        value = new.get(key)
        text = "none" if value is None else _toml_value(value, key).strip("[]").replace('"', "").replace(" ", "")
        if isinstance(value, float) and value.is_integer() and text.endswith(".0"):
            text = text[:-2]
        if key == "model.init_from":  # a run file: its name without ".nc" (the output adds its own)
            text = re.sub(r"\.nc(?=@|$)", "", text)
        label = name if names.count(name) == 1 else key
        parts.append(f"{label}={re.sub(r'[^A-Za-z0-9._+,=-]', '_', text)}")
    suffix = "-".join(parts)
    if len(suffix) > MAX_NAME_SUFFIX:
        suffix = config_hash(config)
    return path.with_name(f"{path.stem}-{suffix}{path.suffix}")


def _cmd_config(args: argparse.Namespace) -> int:
    config, _ = resolve_config(args.config, args.set or [])
    source = args.config if args.config is not None else "the embedded default run"
    overrides = "".join(f" --set {item}" for item in args.set or [])
    header = f"gnflow run config resolved from {source}{overrides}\nconfig hash {config_hash(config)}"
    print(config_to_toml(config, header), end="")
    return 0
