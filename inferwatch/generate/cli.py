"""Write the dashboards, alert and recording rules, autoscaling and Alertmanager configs.

With no options this regenerates the copies committed in the repository; --config takes a YAML
file of overrides (namespace, deployment, targets, objectives: see GenerateOptions), and
--check reports stale files without writing (for CI).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from inferwatch import generate
from inferwatch.generate import autoscaling
from inferwatch.generate.options import GenerateOptions


def load_options(path: Path | None, overrides: dict[str, Any]) -> GenerateOptions:
    """Options from a YAML file plus flags; unknown or mistyped fields are named in the error."""
    values: dict[str, Any] = {}
    if path is not None:
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: expected a mapping of option names to values")
        values.update(loaded)
    values.update({k: v for k, v in overrides.items() if v is not None})
    defaults = GenerateOptions()
    known = {f.name: f for f in dataclasses.fields(GenerateOptions)}
    for name, value in values.items():
        if name not in known:
            raise ValueError(f"unknown option {name!r}; known options: {', '.join(known)}")
        expected = type(getattr(defaults, name))
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            values[name] = float(value)
        elif not isinstance(value, expected) or isinstance(value, bool) != (expected is bool):
            raise ValueError(
                f"option {name!r} must be {expected.__name__}, got {type(value).__name__}"
            )
    return GenerateOptions(**values)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("."), help="root folder to write into")
    parser.add_argument("--config", type=Path, help="YAML file of GenerateOptions overrides")
    parser.add_argument("--namespace", help="Kubernetes namespace of the model server")
    parser.add_argument("--deployment", help="name of the model server's Deployment")
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if a file under --out is stale; write nothing"
    )


def run(args: argparse.Namespace) -> int:
    try:
        options = load_options(
            args.config, {"namespace": args.namespace, "deployment": args.deployment}
        )
    except (ValueError, OSError, yaml.YAMLError) as exc:
        print(f"inferwatch generate: {exc}", file=sys.stderr)
        return 2
    for note in autoscaling.advice(options):
        print(f"inferwatch generate: note: {note}", file=sys.stderr)
    if args.check:
        stale = generate.stale(args.out, options)
        for relative in stale:
            print(f"stale: {relative}")
        if stale:
            print("run `inferwatch generate` and commit the result", file=sys.stderr)
        return 1 if stale else 0
    statuses = generate.write(args.out, options)
    for relative, status in statuses.items():
        if status != "unchanged":
            print(f"{status:8} {args.out / relative}")
    counts = Counter(statuses.values())
    print(
        f"{len(statuses)} files under {args.out}: {counts['created']} created, "
        f"{counts['updated']} updated, {counts['unchanged']} unchanged"
    )
    return 0
