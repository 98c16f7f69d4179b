"""The ``gnflow`` command line.

Errors print one line (no traceback unless ``--debug``) and exit non-zero; progress bars go to
stderr and switch off when stderr is not a terminal. Library code logs; only this module prints.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tomllib
import warnings
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from gnflow import __version__
from gnflow.dataset import dataset_result

__all__ = ["main"]

logger = logging.getLogger("gnflow.cli")

EXIT_ERROR = 1
EXIT_USAGE = 2


class CommandError(Exception):
    """A user-facing error: printed as one line, exit status ``code``."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


def default_config_text() -> str:
    """The TOML text of the embedded default run."""
    return resources.files("gnflow").joinpath("default_run.toml").read_text()


def _free_path(path: Path) -> Path:
    """``path`` if it does not exist, else the first free ``stem-K.suffix`` beside it."""
    if not path.exists():
        return path
    k = 1
    while True:
        candidate = path.with_name(f"{path.stem}-{k}{path.suffix}")
        if not candidate.exists():
            return candidate
        k += 1


def _new_file_path(
    explicit: str | None, default: str | Path, overwrite: bool, suffixes: Sequence[str], what: str
) -> Path:
    """The file a command writes: ``-o`` as given, which must not exist unless ``overwrite``; or
    ``default``, moved to the first free ``stem-K.suffix`` beside an existing file unless
    ``overwrite``. The name must end in one of ``suffixes``."""
    path = Path(explicit) if explicit is not None else Path(default)
    if path.suffix.lower() not in suffixes:
        raise CommandError(f"-o {path}: the output must be {what} ending in {', '.join(suffixes)}", EXIT_USAGE)
    if explicit is not None:
        if path.exists() and not overwrite:
            raise CommandError(f"{path} exists; pass --overwrite to replace it or choose another -o")
        return path
    if overwrite:
        return path
    free = _free_path(path)
    if free != path:
        logger.info("%s exists; writing %s instead (use --overwrite to replace)", path, free)
    return free


def _output_path(explicit: str | None, configured: str, overwrite: bool) -> Path:
    return _new_file_path(explicit, configured, overwrite, (".nc",), "a NetCDF file")


def _cmd_run(args: argparse.Namespace) -> int:
    from gnflow.config import apply_overrides, config_from_dict
    from gnflow.simulation import run

    if args.config is None:
        values = tomllib.loads(default_config_text())
    else:
        path = Path(args.config)
        if not path.is_file():
            raise CommandError(f"config file {args.config!r} does not exist", EXIT_USAGE)
        try:
            values = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise CommandError(f"{path}: invalid TOML: {exc}", EXIT_USAGE) from None
    config = config_from_dict(apply_overrides(values, args.set or []))
    # A resumed run writes where the interrupted one was writing, beside its checkpoint.
    out = _output_path(args.output, config.output.path, args.overwrite or args.resume)
    progress = False if args.quiet else None
    ds, written = run(config, path=out, progress=progress, resume=args.resume)
    _print_summary(ds, written, quiet=args.quiet)
    return EXIT_ERROR if dataset_result(ds).failed else 0


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


def _cmd_info(args: argparse.Namespace) -> int:
    import json

    from gnflow.dataset import read_dataset

    path = Path(args.file)
    if not path.is_file():
        raise CommandError(f"no such file: {args.file}")
    try:
        ds = read_dataset(path)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    attrs = ds.attrs
    print(f"{path}: {attrs.get('title', 'NetCDF file')}")
    for key in ("gnflow_status", "gnflow_flow", "gnflow_solver", "gnflow_data", "gnflow_device", "gnflow_dtype"):
        if key in attrs:
            print(f"  {key.removeprefix('gnflow_'):<10} {attrs[key]}")
    if "gnflow_wall_time_s" in attrs:
        print(
            f"  {'cost':<10} {attrs.get('gnflow_nfe', '?')} evaluations, {attrs.get('gnflow_steps', '?')} steps "
            f"({attrs.get('gnflow_rejected_steps', '?')} rejected), {float(attrs['gnflow_wall_time_s']):.2f} s"
        )
    sizes = ", ".join(f"{k}={v}" for k, v in ds.sizes.items())
    print(f"  {'sizes':<10} {sizes}")
    if "t" in ds.coords and ds.sizes.get("t", 0) > 0:
        print(f"  {'flow time':<10} {float(ds['t'][0]):.6g} .. {float(ds['t'][-1]):.6g}")
    for name in ("train_loss", "test_loss", "gram_eigmin", "gram_eigmax", "damping"):
        if name in ds and ds[name].size:
            values = ds[name].values
            print(f"  {name:<12} {values[0]:.6g} -> {values[-1]:.6g}")
    print(f"  {'variables':<10} {', '.join(sorted(str(v) for v in ds.data_vars))}")
    if args.config and "gnflow_config" in attrs:
        print(json.dumps(json.loads(attrs["gnflow_config"]), indent=2, sort_keys=True))
    return 0


def _figure_path(explicit: str | None, default: Path, overwrite: bool) -> Path:
    from gnflow.plot import FIGURE_SUFFIXES

    return _new_file_path(explicit, default, overwrite, FIGURE_SUFFIXES, "a figure")


def _cmd_plot(args: argparse.Namespace) -> int:
    from gnflow.dataset import read_dataset
    from gnflow.plot import differing_config_keys, load_run_curves, plot_run, plot_runs, save_figure

    source = Path(args.path)
    if args.output is not None:
        _figure_path(args.output, source.with_suffix(".png"), args.overwrite)  # reject a bad -o before reading
    progress = False if args.quiet else None
    if source.is_dir():
        files = sorted(p for p in source.rglob("*.nc") if not p.name.startswith("."))
        if not files:
            raise CommandError(f"{source}: no NetCDF (.nc) files in this directory")
        runs = load_run_curves(files, progress=progress)
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
        if "train_loss" not in ds or "t" not in ds.coords:
            raise CommandError(f"{source}: not a gnflow trajectory file (no t coordinate or train_loss variable)")
        out = _figure_path(args.output, source.with_suffix(".png"), args.overwrite)
        written = save_figure(plot_run(ds), out, dpi=args.dpi)
        summary = (
            f"summary of {source.name}: {ds.attrs.get('gnflow_status', 'unknown status')}, "
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
    try:
        stored = run_config_of(ds)
    except ValueError as exc:
        raise CommandError(f"{path}: {exc}") from None
    options = _observe_options(stored, args.set or [])
    result = observe(ds, args.names or None, options=options, device=resolve_device(args.device))  # type: ignore[arg-type]
    computed = json.loads(result.attrs["gnflow_observe"])["names"]
    append_history(result, f"gnflow observe {' '.join(computed)}")
    written = write_dataset(result, out)
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


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``gnflow`` (exposed for documentation)."""
    parser = argparse.ArgumentParser(
        prog="gnflow",
        description="Gauss-Newton and gradient flows of two-layer networks as particle ODEs.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "examples:\n"
            "  gnflow run                          # the embedded default run -> data/runs/default.nc\n"
            "  gnflow info data/runs/default.nc    # what the file holds\n"
            "  gnflow plot data/runs/default.nc    # summary figure -> data/runs/default.png\n"
            "\nRun 'gnflow COMMAND --help' for the options and examples of each command."
        ),
    )
    parser.add_argument("--version", action="version", version=f"gnflow {__version__}")
    _add_common_options(parser, None)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    # The same options after the command name (``gnflow run -q``); SUPPRESS keeps a value given
    # before the command from being reset by the subcommand's default.
    common = argparse.ArgumentParser(add_help=False)
    _add_common_options(common, argparse.SUPPRESS)

    run = sub.add_parser(
        "run",
        parents=[common],
        help="integrate one trajectory and write it as NetCDF",
        description="Integrate one trajectory described by a TOML run config and write it as a CF NetCDF file.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "examples:\n"
            "  gnflow run                                   # the embedded default run\n"
            "  gnflow run config.toml -o data/runs/gn.nc\n"
            "  gnflow run config.toml --set model.init_scale=0.1 --set flow.kind=gradient\n"
            "  gnflow run long.toml --set output.checkpoint_every_s=600   # checkpoint every 10 min\n"
            "  gnflow run long.toml --set output.checkpoint_every_s=600 --resume  # after a crash\n"
        ),
    )
    run.add_argument("config", nargs="?", help="TOML run config (default: the embedded default run)")
    run.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key, e.g. solver.rtol=1e-8")
    run.add_argument("-o", "--output", metavar="OUT.nc", help="output file (default: output.path of the config)")
    run.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    run.add_argument(
        "--resume",
        action="store_true",
        help="continue from the checkpoint beside the output file (NAME.checkpoint.pt) when there is one; "
        "the output file is replaced",
    )
    run.set_defaults(handler=_cmd_run)

    info = sub.add_parser(
        "info",
        parents=[common],
        help="summarize a gnflow NetCDF file",
        description="Print what a file holds: status, flow and solver, sizes, first and last losses.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  gnflow info data/runs/default.nc\n  gnflow info run.nc --config\n",
    )
    info.add_argument("file", help="a NetCDF file written by gnflow")
    info.add_argument("--config", action="store_true", help="also print the stored run config as JSON")
    info.set_defaults(handler=_cmd_info)

    plot = sub.add_parser(
        "plot",
        parents=[common],
        help="draw a summary figure of a run, or compare the runs in a directory",
        description=(
            "FILE.nc: summary of one run (losses, Gram spectrum and damping, weight and kernel movement,\n"
            "particles projected on the teacher directions at three times).\n"
            "DIR: comparison of every run file below DIR (loss curves labeled by the config values that\n"
            "differ, final losses against tau0 = model.init_scale or N = data.n_train when they vary)."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "examples:\n"
            "  gnflow plot data/runs/default.nc              # writes data/runs/default.png\n"
            "  gnflow plot data/runs/default.nc -o fig.pdf\n"
            "  gnflow plot data/sweeps/tau0/                 # writes data/sweeps/tau0/comparison.png\n"
        ),
    )
    plot.add_argument(
        "path", metavar="FILE.nc|DIR", help="a run file, or a directory searched recursively for run files"
    )
    plot.add_argument(
        "-o",
        "--output",
        metavar="FIG.png",
        help="figure file, .png, .pdf or .svg (default: FILE.png beside the run, or DIR/comparison.png)",
    )
    plot.add_argument("--overwrite", action="store_true", help="replace an existing figure file")
    plot.add_argument("--dpi", type=float, default=120, help="resolution of raster figures (default: 120)")
    plot.set_defaults(handler=_cmd_plot)

    sweep = sub.add_parser(
        "sweep",
        parents=[common],
        help="run a sweep grid of configs on dask.distributed or serially",
        description=(
            "Expand a sweep grid file (a [base] run config, a [grid] of values and optional [[runs]]) to "
            "runs, compute the runs without a valid file in DIR/runs/, and write DIR/sweep.nc (losses "
            "over t with the grid keys as dimensions) and DIR/manifest.json. Starting it again after a "
            "crash computes only the missing runs."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "examples:\n"
            "  gnflow sweep grid.toml -o data/sweeps/tau0          # local dask cluster, one worker per core\n"
            "  gnflow sweep grid.toml --workers 4\n"
            "  gnflow sweep grid.toml --workers 0                  # serially, in this process\n"
            "  gnflow sweep grid.toml --scheduler tcp://10.0.0.5:8786\n"
            "  gnflow sweep grid.toml --scheduler-file ~/scheduler.json   # e.g. a Slurm allocation\n"
        ),
    )
    sweep.add_argument("grid", metavar="GRID.toml", help="sweep grid file (TOML)")
    sweep.add_argument("-o", "--output", metavar="DIR", help="output folder (default: data/sweeps/<grid name>)")
    where = sweep.add_mutually_exclusive_group()
    where.add_argument(
        "--workers",
        type=int,
        metavar="K",
        help="worker processes of a local dask cluster (default: one per GPU, else per core); 0 = serial",
    )
    where.add_argument("--scheduler", metavar="ADDRESS", help="address of a running dask scheduler")
    where.add_argument("--scheduler-file", metavar="FILE", help="scheduler file of a running dask cluster")
    sweep.add_argument(
        "--retries",
        type=int,
        default=2,
        metavar="N",
        help="dask retries of a task that failed outside the run (default 2)",
    )
    sweep.set_defaults(handler=_cmd_sweep)

    obs = sub.add_parser(
        "observe",
        parents=[common],
        help="add observables (regime, movement, refit, Wasserstein, ...) to a saved trajectory",
        description=(
            "Compute observables at the saved times of a trajectory file and add them as variables. "
            "The file is rewritten atomically (or written to -o) and the command is appended to its "
            "history attribute. With no NAMES, every observable that applies to the file is computed. "
            "Options come from the file's [observe] config and --set."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "examples:\n"
            "  gnflow observe run.nc                                  # all applicable observables\n"
            "  gnflow observe run.nc regime refit teacher_alignment\n"
            "  gnflow observe run.nc wasserstein --set wasserstein_exact_max=2000 -o run-obs.nc\n"
            "  gnflow observe --list                                  # names and the variables they add\n"
        ),
    )
    obs.add_argument("file", nargs="?", help="a trajectory file written by gnflow run")
    obs.add_argument("names", nargs="*", metavar="NAME", help="observables to compute (default: all that apply)")
    obs.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="override an [observe] option, e.g. top_k=[1,10]"
    )
    obs.add_argument("-o", "--output", metavar="OUT.nc", help="write here instead of rewriting FILE.nc")
    obs.add_argument("--device", default="cpu", help='torch device of the computations (default "cpu")')
    obs.add_argument("--list", action="store_true", help="list the observables and their variables, then exit")
    obs.set_defaults(handler=_cmd_observe)

    study = sub.add_parser(
        "study",
        parents=[common],
        help="run a scripted reproduction study and write its data, figures and claims report",
        description=(
            "Run the study NAME (studies/NAME/, shipped with the package) at a scale: smoke (seconds), and\n"
            "for reproductions small (a laptop CPU, under an hour) and paper (the published setting, on\n"
            "dask workers or GPUs); benchmarks name their own (--list). Writes the runs (NetCDF), figures\n"
            "and report.md: each claim of the paper, the numbers measured for it and a verdict, or, for a\n"
            "benchmark, its measured tables."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "examples:\n"
            "  gnflow study --list\n"
            "  gnflow study arbel2023 --scale smoke -o /tmp/arbel\n"
            "  gnflow study cai2019 --scale small          # writes data/studies/cai2019/small/report.md\n"
            "  gnflow study mean_field_limit --scale paper --workers 4\n"
            "  gnflow study performance --scale full         # a benchmark: measured tables, no claims\n"
        ),
    )
    study.add_argument("name", nargs="?", metavar="NAME", help="a study of gnflow study --list")
    study.add_argument(
        "--scale", default="smoke", help="a scale of the study: smoke|small|paper, or a benchmark's (default: smoke)"
    )
    study.add_argument("-o", "--output", metavar="DIR", help="output folder (default: data/studies/NAME/SCALE)")
    study.add_argument(
        "--workers",
        type=int,
        metavar="K",
        help="run the runs on K local dask worker processes (0: serially in this process; default: serially "
        "for smoke and small, dask with the sweep engine's default workers for paper)",
    )
    study.add_argument("--list", action="store_true", help="list the studies and exit")
    study.set_defaults(handler=_cmd_study)
    return parser


def _add_common_options(parser: argparse.ArgumentParser, default: object) -> None:
    """-q/--quiet, -v/--verbose and --debug (``default=None`` means False)."""
    verbosity = parser.add_mutually_exclusive_group()
    flags: dict[str, Any] = {} if default is None else {"default": default}
    verbosity.add_argument("-q", "--quiet", action="store_true", help="print errors only; no progress bars", **flags)
    verbosity.add_argument("-v", "--verbose", action="store_true", help="log progress details", **flags)
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors", **flags)


def _configure_logging(args: argparse.Namespace) -> None:
    level = logging.WARNING if args.quiet else logging.DEBUG if args.verbose else logging.INFO
    root = logging.getLogger("gnflow")
    root.handlers.clear()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("%(message)s" if not args.verbose else "%(levelname)s %(name)s: %(message)s")
    )
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False
    logging.captureWarnings(True)
    warnings_logger = logging.getLogger("py.warnings")
    warnings_logger.handlers = [handler]
    warnings_logger.propagate = False


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``gnflow``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.quiet and args.verbose:
        parser.error("--quiet and --verbose exclude each other")
    _configure_logging(args)
    handler: Callable[[argparse.Namespace], int] = args.handler
    from gnflow.config import ConfigError
    from gnflow.data import DataError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            return handler(args)
    except CommandError as exc:
        if args.debug:
            raise
        print(f"gnflow: error: {exc}", file=sys.stderr)
        return exc.code
    except (ConfigError, DataError) as exc:
        if args.debug:
            raise
        print(f"gnflow: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (OSError, ValueError, RuntimeError) as exc:
        if args.debug:
            raise
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"gnflow: error: {message}", file=sys.stderr)
        return EXIT_ERROR
