"""Run the sidecar: a reverse proxy in front of a model server that measures every inference.

Flags override INFERWATCH_SIDECAR_* environment variables, which override the YAML file given
with --config, which overrides the defaults. Example:

    inferwatch sidecar --upstream http://127.0.0.1:8000 --listen :8080 --admin :9464
"""

from __future__ import annotations

import argparse
import sys

from inferwatch import runtime
from inferwatch.sidecar import config as config_module

COMMAND = "inferwatch sidecar"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=argparse.SUPPRESS,
        help=f"YAML file of settings [env {config_module.ENV_PREFIX}CONFIG]",
    )
    config_module.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    config = _config(args)
    if config is None:
        return 2
    if config.workers > 1:
        from inferwatch.sidecar.workers import run_workers

        return run_workers(config)
    from inferwatch.sidecar.process import run_sidecar

    return run_sidecar(config)


def _config(args: argparse.Namespace) -> config_module.SidecarConfig | None:
    """The validated configuration, or ``None`` after saying on stderr what is wrong."""
    flags = {k: v for k, v in vars(args).items() if k not in ("run", "command", "log_level")}
    try:
        config = config_module.load_config(flags)
    except config_module.ConfigError as exc:
        _bad("configuration", exc)
        return None
    try:
        runtime.check_tracing(config.tracing)
    except ValueError as exc:
        _bad("tracing configuration", exc)
        return None
    try:
        runtime.check_otlp_metrics(config.otlp_metrics)
    except ValueError as exc:
        _bad("OTLP metrics configuration", exc)
        return None
    return config


def _bad(what: str, exc: Exception) -> None:
    print(f"{COMMAND}: bad {what}: {exc}", file=sys.stderr)
