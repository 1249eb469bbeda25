"""The ``inferwatch`` command.

Each subcommand lives in its own module, which provides ``add_arguments(parser)`` and
``run(args) -> int``; its docstring's first line is the subcommand's help. Modules are
imported only to build the parser, so they keep heavy imports (torch) inside ``run``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from prometheus_client import disable_created_metrics

from inferwatch._version import __version__

COMMANDS: dict[str, str] = {
    "autoscale": "inferwatch.autoscale.cli",
    "dashboards": "inferwatch.render",
    "demo": "inferwatch.stack",
    "generate": "inferwatch.generate.cli",
    "gpu": "inferwatch.gpu_cli",
    "serve": "inferwatch.server.cli",
    "sidecar": "inferwatch.sidecar.cli",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="inferwatch",
        description="Observability for ML model serving: metrics, GPU stats, traces, dashboards.",
    )
    parser.add_argument("--version", action="version", version=f"inferwatch {__version__}")
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log verbosity (default: %(default)s)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        text = (module.__doc__ or "").strip().replace("``", "")  # reST literals read as noise
        summary = text.splitlines()[0] if text else name
        command = sub.add_parser(
            name,
            help=summary,
            description=text,
            formatter_class=argparse.RawDescriptionHelpFormatter,  # keep the paragraphs
        )
        module.add_arguments(command)
        command.set_defaults(run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    # The _created series double a counter's series count and no dashboard of ours reads them.
    disable_created_metrics()
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    result: int = args.run(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
