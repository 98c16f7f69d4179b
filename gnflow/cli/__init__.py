"""The ``gnflow`` command line.

Errors print one line (no traceback unless ``--debug``) and exit non-zero; progress bars go to
stderr and switch off when stderr is not a terminal. Library code logs; only this package prints.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import warnings
from collections.abc import Callable, Sequence

from gnflow.cli._parser import build_parser
from gnflow.cli._paths import EXIT_ERROR, EXIT_USAGE, CommandError, default_config_text
from gnflow.status import SignalInterrupt

__all__ = ["CommandError", "build_parser", "default_config_text", "main"]


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
    args.argv = list(sys.argv[1:] if argv is None else argv)  # the command line, for the files' history
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
    except KeyboardInterrupt as exc:  # before or after the run's own handling: nothing to write
        if args.debug:
            raise
        print("gnflow: interrupted", file=sys.stderr)
        return 128 + (exc.signum if isinstance(exc, SignalInterrupt) else signal.SIGINT)
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
