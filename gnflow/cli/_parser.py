"""The argument parser of ``gnflow``."""

from __future__ import annotations

import argparse
from typing import Any

from gnflow import __version__
from gnflow.cli._commands import _cmd_info, _cmd_observe, _cmd_plot, _cmd_run, _cmd_study, _cmd_sweep
from gnflow.cli._config_command import _cmd_config


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
            "  gnflow config > my.toml             # the default run's config, every key, to edit\n"
            "  gnflow run examples/gn.toml         # an example config (examples/ of the source tree)\n"
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
            "  gnflow run examples/gn.toml -o data/runs/gn.nc\n"
            "  gnflow run examples/gn.toml --set model.init_scale=0.1 --set flow.kind=gradient\n"
            "  gnflow run examples/ggn.toml                 # discrete Gram-Gauss-Newton\n"
            "  gnflow run examples/checkpointed.toml        # writes a checkpoint every 10 min\n"
            "  gnflow run examples/checkpointed.toml --resume   # continue it after a crash\n"
            "\n"
            "Without -o, a run with --set overrides is named by what they change (the config hash when\n"
            "that is long): gnflow run --set model.init_scale=0.1 writes data/runs/default-init_scale=0.1.nc.\n"
            "The config files are in examples/ of the gnflow source tree; gnflow config prints any of them\n"
            "resolved, with every key.\n"
        ),
    )
    run.add_argument("config", nargs="?", help="TOML run config (default: the embedded default run)")
    run.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key, e.g. solver.rtol=1e-8")
    run.add_argument("-o", "--output", metavar="OUT.nc", help="output file (default: output.path of the config)")
    run.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    run.add_argument(
        "--from",
        dest="init_from",
        metavar="FILE.nc[@T]",
        help="start from the last saved state of FILE.nc (or the one at flow time T) instead of a random draw "
        "(model.init_from); without CONFIG, FILE.nc's own config is used: continue a run with --set solver.t_end=...",
    )
    run.add_argument(
        "--threads",
        type=int,
        metavar="K",
        help="torch CPU threads of the run (compute.threads; default 0: the free cores, at most torch's default)",
    )
    run.add_argument(
        "--resume",
        action="store_true",
        help="continue from the checkpoint beside the output file (NAME.checkpoint.pt) when there is one; "
        "the output file is replaced only when it holds a run of the same config",
    )
    run.set_defaults(handler=_cmd_run)

    config = sub.add_parser(
        "config",
        parents=[common],
        help="print the fully resolved run config as TOML",
        description=(
            "Print the run config CONFIG (default: the embedded default run) with its --set overrides\n"
            "applied, resolved: every key with its value, defaults included, and the config hash. Saved\n"
            "as a file, the output is a run config that computes the same run (same hash)."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "examples:\n"
            "  gnflow config                                # the embedded default run\n"
            "  gnflow config examples/gd.toml --set model.init_scale=1.0\n"
            "  gnflow config --set flow.kind=gradient > gd.toml && gnflow run gd.toml\n"
        ),
    )
    config.add_argument("config", nargs="?", help="TOML run config (default: the embedded default run)")
    config.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="override a config key, e.g. solver.rtol=1e-8"
    )
    config.set_defaults(handler=_cmd_config)

    info = sub.add_parser(
        "info",
        parents=[common],
        help="summarize a gnflow NetCDF file",
        description="Print what a file holds: status, flow and solver, sizes, first and last losses.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  gnflow info data/runs/default.nc\n  gnflow info data/runs/default.nc --config\n",
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
            "  gnflow sweep examples/grid.toml -o data/sweeps/tau0   # local dask cluster, one worker per core\n"
            "  gnflow sweep examples/grid.toml --workers 4\n"
            "  gnflow sweep examples/grid.toml --workers 0           # serially, in this process\n"
            "  gnflow sweep examples/grid.toml --scheduler tcp://10.0.0.5:8786\n"
            "  gnflow sweep examples/grid.toml --scheduler-file ~/scheduler.json   # e.g. a Slurm allocation\n"
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
    sweep.add_argument(
        "--break-lock",
        action="store_true",
        help="take DIR's lock even if another sweep holds it; only for a lock of a sweep known to be gone "
        "(e.g. on another host: a lock of this host whose process is gone is broken without it)",
    )
    sweep.set_defaults(handler=_cmd_sweep)

    obs = sub.add_parser(
        "observe",
        parents=[common],
        help="add observables (regime, movement, refit, Wasserstein, ...) to a saved trajectory",
        description=(
            "Compute observables at the saved times of a trajectory file and add them as variables. "
            "The file is rewritten atomically with --overwrite (or written to -o) and the command is appended to its "
            "history attribute. With no NAMES, every observable that applies to the file is computed. "
            "Options come from the file's [observe] config and --set."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "examples:\n"
            "  gnflow observe data/runs/default.nc              # all applicable observables, in place\n"
            "  gnflow observe data/runs/default.nc regime refit teacher_alignment -o data/runs/default-obs.nc\n"
            "  gnflow observe data/runs/default.nc wasserstein --set wasserstein_exact_max=2000 -o w.nc\n"
            "  gnflow observe --list                                  # names and the variables they add\n"
        ),
    )
    obs.add_argument("file", nargs="?", help="a trajectory file written by gnflow run")
    obs.add_argument("names", nargs="*", metavar="NAME", help="observables to compute (default: all that apply)")
    obs.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="override an [observe] option, e.g. top_k=[1,10]"
    )
    obs.add_argument("-o", "--output", metavar="OUT.nc", help="write here instead of rewriting FILE.nc")
    obs.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing -o file, or rewrite FILE.nc in place (needed without -o)",
    )
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
        "--scale",
        default="smoke",
        help="a scale the study's TOML defines (gnflow study --list shows them; default: smoke)",
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
