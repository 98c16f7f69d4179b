"""The handlers of the ``gnflow`` commands: each takes the parsed arguments and returns the exit status."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from gnflow.cli._paths import (
    EXIT_ERROR,
    EXIT_USAGE,
    CommandError,
    _figure_path,
    _output_path,
    logger,
)
from gnflow.dataset import OutputExistsError, dataset_result

if TYPE_CHECKING:
    import xarray as xr

    from gnflow.config import RunConfig


def _config_of_source(init_from: str, sets: list[str]) -> tuple[RunConfig, RunConfig]:
    """``gnflow run --from FILE`` without CONFIG: FILE's own run config, with the overrides."""
    from gnflow.config import apply_overrides, config_from_dict, config_to_dict
    from gnflow.dataset import read_dataset, run_config_of

    path = Path(init_from.rsplit("@", 1)[0] if "@" in init_from else init_from)
    if not path.is_file():
        raise CommandError(f"--from: {path} is not a file (allowed: a gnflow run file, FILE.nc or FILE.nc@T)")
    try:
        values = config_to_dict(run_config_of(read_dataset(path)))
    except (OSError, ValueError, KeyError) as exc:
        raise CommandError(f"--from: {path} holds no gnflow run config: {str(exc).splitlines()[0]}") from None
    values["model"].pop("init_from", None)
    return config_from_dict(apply_overrides(values, sets)), config_from_dict(values)


def _main_module_is_gnflow() -> bool:
    """Whether this process was started as ``gnflow`` (the console script, whose work is guarded by
    ``if __name__ == "__main__":``) or ``python -m gnflow`` (which a spawned process does not run)."""
    import gnflow.cli

    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    return (spec is not None and spec.name == "gnflow.__main__") or getattr(main, "main", None) is gnflow.cli.main


def _cmd_run(args: argparse.Namespace) -> int:
    import gnflow.simulation
    from gnflow.cli._config_command import override_output_path, resolve_config
    from gnflow.simulation import run

    sets = list(args.set or [])
    if args.init_from is not None:
        sets.append(f"model.init_from={args.init_from}")
    if args.threads is not None:
        sets.append(f"compute.threads={args.threads}")
    if args.config is None and args.init_from is not None:
        config, base = _config_of_source(args.init_from, sets)
    else:
        config, base = resolve_config(args.config, sets)
    configured = override_output_path(config, base) if sets else Path(config.output.path)
    # A resumed run writes where the interrupted one was writing, beside its checkpoint.
    out = _output_path(args.output, str(configured), args.overwrite or args.resume)
    progress = False if args.quiet else None
    before = gnflow.simulation.MEASURE_IN_PROCESS
    # a spawned measuring process imports the main module again: safe for gnflow's own entry points
    gnflow.simulation.MEASURE_IN_PROCESS = before or _main_module_is_gnflow()
    try:
        ds, written = run(
            config,
            path=out,
            progress=progress,
            resume=args.resume,
            overwrite=args.overwrite,
            # a name the command chose (not -o) moves on to a free one when taken meanwhile
            fresh_name=args.output is None and not args.overwrite and not args.resume,
            history=shlex.join(["gnflow", *getattr(args, "argv", ["run"])]),
        )
    except OutputExistsError as exc:
        raise CommandError(str(exc)) from None
    finally:
        gnflow.simulation.MEASURE_IN_PROCESS = before
    _print_summary(ds, written, quiet=args.quiet)
    result = dataset_result(ds)
    signum = result.interruption_signal
    if signum is not None:
        return 128 + signum  # the shell convention: 130 for SIGINT, 143 for SIGTERM
    return EXIT_ERROR if result.failed else 0


def _print_summary(ds: object, path: Path, *, quiet: bool) -> None:
    import xarray as xr

    assert isinstance(ds, xr.Dataset)
    status = ds.attrs["gnflow_status"]
    if quiet and not dataset_result(ds).failed:
        return
    loss = ds["train_loss"].values
    lines = [
        f"{status}: t = {float(ds['t'][-1]):.6g}, train loss {loss[0]:.4g} -> {loss[-1]:.4g} "
        f"(ratio {loss[-1] / loss[0] if loss[0] > 0 else 0.0:.3g})",
    ]
    if "test_loss" in ds and np.isfinite(ds["test_loss"].values[-1]):
        test = ds["test_loss"].values
        lines.append(f"test loss {test[0]:.4g} -> {test[-1]:.4g}")
    lines.append(
        f"{ds.attrs['gnflow_nfe']} evaluations, {ds.attrs['gnflow_steps']} steps "
        f"({ds.attrs['gnflow_rejected_steps']} rejected), {float(ds.attrs['gnflow_wall_time_s']):.2f} s"
    )
    lines.append(f"wrote {path}")
    print("\n".join(lines))


def printable(value: object) -> str:
    """Text from a file as it may reach a terminal: control characters (ANSI escapes, bells,
    carriage returns, bidirectional overrides) written as escapes such as ``\\x1b``."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in str(value))


def _open_lazily(path: Path) -> xr.Dataset:
    """The dataset of ``path`` without reading its arrays (no indexes either: they would load)."""
    import xarray as xr

    if path.is_dir():
        raise CommandError(f"{path} is a directory; give one NetCDF file")
    if not path.is_file():
        raise CommandError(f"no such file: {path}")
    try:
        return xr.open_dataset(path, engine="netcdf4", create_default_indexes=False)
    except (OSError, ValueError) as exc:
        raise CommandError(f"{path}: not a readable NetCDF file ({str(exc).splitlines()[0]})") from None


def _readable(var: object) -> bool:
    """Whether reading one element of ``var`` stays small: a numeric variable whose storage chunk
    (read whole to get at one element) fits easily in memory."""
    import xarray as xr

    from gnflow.config import available_memory

    assert isinstance(var, xr.DataArray)
    if var.dtype.kind not in "fiu" or var.size == 0:
        return False
    chunk = var.encoding.get("chunksizes") or ()
    chunk_bytes = float(np.prod(chunk, dtype=np.float64)) * var.dtype.itemsize
    if chunk_bytes <= 64 << 20:
        return True
    available = available_memory()
    return available is not None and chunk_bytes <= available / 4


def _number(value: object) -> float | None:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _series_summary(ds: xr.Dataset, name: str) -> str | None:
    """``first -> last`` of a time series, or ``final min .. max over K runs`` of a sweep's."""
    var = ds[name]
    if var.dims == ("t",) and _readable(var):
        return f"{float(var[0]):.6g} -> {float(var[-1]):.6g}"
    final = f"{name}_final"
    if "t" in var.dims and final in ds and _readable(ds[final]) and ds[final].size * 8 <= 64 << 20:
        values = np.asarray(ds[final].values, dtype=np.float64)
        if np.isfinite(values).any():
            return f"final {np.nanmin(values):.6g} .. {np.nanmax(values):.6g} over {values.size} runs"
    return None


def _cmd_info(args: argparse.Namespace) -> int:
    from gnflow.cli._info import info_text

    path = Path(args.file)
    with _open_lazily(path) as ds:
        try:
            text = info_text(ds, path, show_config=args.config)
        except ValueError as exc:  # a malformed gnflow_config: one line naming the file
            raise CommandError(f"{path}: {printable(str(exc).splitlines()[0])}") from None
    print("\n".join(printable(line) for line in text.rstrip("\n").split("\n")))
    return 0


def _trajectory_problem(ds: xr.Dataset, needs: Sequence[str] = ()) -> str | None:
    """Why ``ds`` is not a single-run trajectory that can be drawn or measured (None: it is);
    ``needs`` are further variables it must hold."""
    if "t" not in ds.coords or "train_loss" not in ds:
        return "not a gnflow trajectory file (no t coordinate or train_loss variable)"
    if ds["t"].dims != ("t",) or ds["train_loss"].dims != ("t",):
        return (
            f"variable train_loss has dimensions {ds['train_loss'].dims}, not (t,): not a single-run trajectory "
            "(a sweep's combined file? gnflow plot DIR compares the runs of its folder)"
        )
    for name in needs:
        if name not in ds:
            return f"no variable {name!r}: not a complete gnflow trajectory file"
    if ds.sizes["t"] == 0:
        return "variable t is empty (no saved times)"
    for name in ("t", "train_loss"):
        if ds[name].dtype.kind not in "fiu":
            return f"variable {name} is not numeric ({ds[name].dtype})"
    return None


def _cmd_plot(args: argparse.Namespace) -> int:
    from gnflow._progress import progress_bar
    from gnflow.dataset import read_dataset, run_config_of
    from gnflow.plot import differing_config_keys, load_run_curves, plot_run, plot_runs, save_figure

    source = Path(args.path)
    if args.output is not None:
        _figure_path(args.output, source.with_suffix(".png"), args.overwrite)  # reject a bad -o before reading
    progress = False if args.quiet else None
    if source.is_dir():
        files = sorted(p for p in source.rglob("*.nc") if not p.name.startswith("."))
        if not files:
            raise CommandError(f"{source}: no NetCDF (.nc) files in this directory")
        runs = []
        for file in progress_bar(files, enabled=progress, desc="reading runs", unit="file"):
            try:  # one bad file is skipped with a warning, the others are drawn
                with _open_lazily(file) as ds:
                    if isinstance(ds.attrs.get("gnflow_config"), str):
                        run_config_of(ds)  # a run file whose config cannot be read is not compared
                runs.extend(load_run_curves([file], progress=False))
            except (CommandError, OSError, ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
                message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                logger.warning("%s: skipped (%s)", file, printable(message))
        if not runs:
            raise CommandError(f"{source}: none of the {len(files)} .nc files is a gnflow run file")
        out = _figure_path(args.output, source / "comparison.png", args.overwrite)
        written = save_figure(plot_runs(runs), out, dpi=args.dpi)
        varying = ", ".join(differing_config_keys([r.config for r in runs])) or "nothing"
        summary = f"{len(runs)} runs compared (varying: {varying})"
    elif source.is_file():
        try:
            ds = read_dataset(source)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        problem = _trajectory_problem(ds)
        if problem is not None:
            raise CommandError(f"{source}: {problem}")
        out = _figure_path(args.output, source.with_suffix(".png"), args.overwrite)
        written = save_figure(plot_run(ds), out, dpi=args.dpi)
        summary = (
            f"summary of {source.name}: {printable(ds.attrs.get('gnflow_status', 'unknown status'))}, "
            f"{ds.sizes['t']} saved times up to t = {float(ds['t'][-1]):.6g}"
        )
    else:
        raise CommandError(f"no such file or directory: {args.path}")
    if not args.quiet:
        print(f"{summary}\nwrote {written}")
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from gnflow.grid import load_grid
    from gnflow.sweep import SweepError, run_sweep

    study = load_grid(args.grid)
    out_dir = Path(args.output) if args.output is not None else Path("data") / "sweeps" / study.name
    if args.workers is not None and args.workers < 0:
        raise CommandError(f"--workers {args.workers}: expected 0 (serial, in this process) or more", EXIT_USAGE)
    executor = "serial" if args.workers == 0 else "auto"
    try:
        result = run_sweep(
            study,
            out_dir,
            executor=executor,
            workers=args.workers,
            scheduler=args.scheduler,
            scheduler_file=args.scheduler_file,
            retries=args.retries,
            progress=False if args.quiet else None,
            break_lock=args.break_lock,
        )
    except SweepError as exc:
        raise CommandError(str(exc)) from None
    failed = result.failed
    if not args.quiet or failed:
        print(
            f"{len(study.runs)} runs: {len(result.executed)} computed, "
            f"{len(study.runs) - len(result.executed)} found done, {len(failed)} failed"
        )
        for run_id in failed:
            print(f"  {run_id}: {result.outcomes[run_id]['status']}")
        print(f"wrote {result.combined_path} (manifest: {result.manifest_path})")
    return EXIT_ERROR if failed else 0


def _observe_options(stored: object, overrides: Sequence[str]) -> object:
    """The stored ``[observe]`` options with ``--set`` overrides (keys with or without ``observe.``)."""
    from gnflow.config import RunConfig, apply_overrides, config_from_dict, config_to_dict

    assert isinstance(stored, RunConfig)
    prefixed = []
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        if "." in key and not key.startswith("observe."):
            raise CommandError(
                f"--set {item!r}: gnflow observe changes [observe] keys only, e.g. observe.top_k=[1,10]", EXIT_USAGE
            )
        prefixed.append(item if key.startswith("observe.") else f"observe.{item}")
    return config_from_dict(apply_overrides(config_to_dict(stored), prefixed)).observe


def _cmd_observe(args: argparse.Namespace) -> int:
    from gnflow.dataset import read_dataset, run_config_of, write_dataset
    from gnflow.experiment import resolve_device
    from gnflow.observables import OBSERVABLES, append_history, observe

    if args.list:
        for name, cls in OBSERVABLES.items():
            print(f"{name:<18} {', '.join(cls.variables) or 'global attributes gnflow_regime*'}")
        return 0
    if args.file is None:
        raise CommandError("observe: FILE.nc is required (or --list)", EXIT_USAGE)
    path = Path(args.file)
    if not path.is_file():
        raise CommandError(f"no such file: {args.file}")
    out = path
    if args.output is not None:
        out = Path(args.output)
        if out.suffix != ".nc":
            raise CommandError(f"-o {args.output}: the output must be a NetCDF file ending in .nc", EXIT_USAGE)
    for name in args.names:
        if name not in OBSERVABLES:
            raise CommandError(f"unknown observable {name!r}; allowed: {', '.join(OBSERVABLES)}", EXIT_USAGE)
    ds = read_dataset(path)
    problem = _trajectory_problem(ds, needs=("weights", "x_train", "y_train"))
    if problem is not None:
        raise CommandError(f"{path}: {problem}")
    try:
        stored = run_config_of(ds)
    except ValueError as exc:
        raise CommandError(f"{path}: {exc}") from None
    options = _observe_options(stored, args.set or [])
    # usage errors first; then, before any computation, another file that would be replaced. Adding
    # observables to FILE itself is what the command is for (docs/cli.md): FILE is rewritten atomically with
    # everything it held, so in place needs no --overwrite.
    in_place = out.resolve() == path.resolve()
    if out.exists() and not in_place and not args.overwrite:
        raise CommandError(f"{out} exists; pass --overwrite to replace it, or choose another -o")
    result = observe(ds, args.names or None, options=options, device=resolve_device(args.device))  # type: ignore[arg-type]
    computed = json.loads(result.attrs["gnflow_observe"])["names"]
    command = shlex.join(["gnflow", *getattr(args, "argv", ["observe"])])
    append_history(result, f"{command} (added {', '.join(computed) or 'nothing'})")
    try:  # in place: a symbolic link is written through to its target and stays a link
        written = write_dataset(result, out, overwrite=args.overwrite or in_place)
    except OutputExistsError as exc:
        raise CommandError(str(exc)) from None
    if not args.quiet:
        print(f"added {', '.join(computed)}")
        if "regime" in computed:
            print(
                f"regime {result.attrs['gnflow_regime']}: hidden weight movement "
                f"{result.attrs['gnflow_regime_hidden_weight_movement']:.4g}, kernel movement "
                f"{result.attrs['gnflow_regime_kernel_movement']:.4g} ({result.attrs['gnflow_regime_rule']})"
            )
        print(f"wrote {written}")
    return 0


def _cmd_study(args: argparse.Namespace) -> int:
    from gnflow.config import ConfigError
    from gnflow.studies import STUDIES, StudyError, claims_table, run_study, study_scales

    if args.list or args.name is None:
        if args.name is None and not args.list:
            raise CommandError("study: NAME is required (or --list); allowed: " + ", ".join(STUDIES), EXIT_USAGE)
        try:
            for name, description in STUDIES.items():
                print(f"{name:<17} {'|'.join(study_scales(name)):<27} {description}")
        except StudyError as exc:
            raise CommandError(str(exc)) from None
        return 0
    if args.name not in STUDIES:
        raise CommandError(f"study: unknown study {args.name!r}; allowed: {', '.join(STUDIES)}", EXIT_USAGE)
    executor = None if args.workers is None else "serial" if args.workers == 0 else "auto"
    try:
        if args.scale not in (scales := study_scales(args.name)):
            raise CommandError(
                f"study {args.name}: unknown scale {args.scale!r}; allowed: {', '.join(scales)}", EXIT_USAGE
            )
        report = run_study(
            args.name,
            args.scale,
            args.output,
            executor=executor,
            workers=args.workers or None,
            progress=False if args.quiet else None,
        )
    except (StudyError, ConfigError) as exc:
        raise CommandError(str(exc)) from None
    if not args.quiet:
        for number, claim, _measured, verdict in claims_table(report.read_text()):
            print(f"{number}. [{verdict}] {claim}")
        print(f"wrote {report}")
    return 0
