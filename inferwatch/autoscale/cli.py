"""Replay the HPA over Prometheus data: what would the autoscaler have done?

inferwatch autoscale replay --prometheus URL --start=-30m [--end T] [--hpa FILE | --keda FILE]

Reads the metric queries from the generated (or given) HPA and prometheus-adapter rules, or from
a KEDA ScaledObject's triggers, fetches their values over the range at the controller's sync
period (15 s) and runs the Kubernetes HPA v2 algorithm sync by sync: each metric's proposal
(10% tolerance), the largest of them, min/max replicas, the behavior's stabilization windows,
rate limits and selectPolicy. Prints a table and writes replay.png.

The model of the world: the observed load is what it was; the replay's replicas share it. A
per-pod average (AverageValue) is the observed total over the deployment's pods divided by the
replay's replicas, a CPU utilization the observed CPU seconds over their requests; a Value
target (KEDA's p95 trigger) is taken as observed. New replicas are ready at the next sync. The
replay starts from --replicas, else the observed replicas (kube_deployment_status_replicas,
else the pods reporting), else minReplicas.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

import yaml

from inferwatch.autoscale import replay as replaying


def _documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict)]


def _adapter_rules(docs: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    for doc in docs:
        if "rules" in doc and isinstance(doc["rules"], list):
            return list(doc["rules"])
        config = (
            (doc.get("data") or {}).get("config.yaml") if doc.get("kind") == "ConfigMap" else None
        )
        if config:
            rules = (yaml.safe_load(config) or {}).get("rules")
            if rules:
                return list(rules)
    return None


def load_plan(
    hpa_file: Path | None = None,
    keda_file: Path | None = None,
    adapter_file: Path | None = None,
    namespace: str | None = None,
    deployment: str | None = None,
) -> replaying.Plan:
    """The HPA (or ScaledObject) to replay: from the files given, else the generator's."""
    from inferwatch.generate import autoscaling
    from inferwatch.generate.options import GenerateOptions

    options = GenerateOptions()
    if namespace:
        options = dataclasses.replace(options, namespace=namespace)
    if keda_file is not None:
        docs = [d for d in _documents(keda_file) if d.get("kind") == "ScaledObject"]
        if not docs:
            raise ValueError(f"{keda_file}: no ScaledObject")
        manifest = docs[0]
        if deployment:
            manifest["spec"]["scaleTargetRef"]["name"] = deployment
        return replaying.keda_plan(manifest, namespace)
    rules: list[dict[str, Any]] | None = None
    if hpa_file is not None:
        docs = _documents(hpa_file)
        found = [d for d in docs if d.get("kind") == "HorizontalPodAutoscaler"]
        if not found:
            raise ValueError(f"{hpa_file}: no HorizontalPodAutoscaler")
        manifest = found[0]
        rules = _adapter_rules(docs)
    else:
        manifest = autoscaling.hpa(options)
    if adapter_file is not None:
        rules = _adapter_rules(_documents(adapter_file))
        if rules is None:
            raise ValueError(f"{adapter_file}: no prometheus-adapter rules")
    if rules is None:
        rules = autoscaling.adapter_rules()
    if deployment:
        manifest["spec"]["scaleTargetRef"]["name"] = deployment
    return replaying.hpa_plan(manifest, rules, namespace)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    command = sub.add_parser(
        "replay",
        help="run the HPA algorithm over Prometheus data: recommended vs actual replicas",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    command.add_argument("--prometheus", default="http://127.0.0.1:9090", help="%(default)s")
    command.add_argument(
        "--start",
        required=True,
        help="unix seconds, RFC 3339, or before now: --start=-30m, --start=-2h",
    )
    command.add_argument("--end", default="now", help="as --start (default: now)")
    which = command.add_mutually_exclusive_group()
    which.add_argument(
        "--hpa",
        type=Path,
        help="an autoscaling/v2 HPA manifest (default: the generated one); its file may hold "
        "the prometheus-adapter ConfigMap too",
    )
    which.add_argument("--keda", type=Path, help="a KEDA ScaledObject manifest")
    command.add_argument(
        "--adapter",
        type=Path,
        help="prometheus-adapter's config (ConfigMap or rules; default: the generated rules)",
    )
    command.add_argument("--namespace", help="the deployment's namespace (default: the HPA's)")
    command.add_argument("--deployment", help="the scaled deployment (default: the HPA's target)")
    command.add_argument(
        "--replicas", type=int, help="start from this many replicas (default: observed)"
    )
    command.add_argument(
        "--sync-period", type=float, default=15.0, help="seconds (default: %(default)s)"
    )
    command.add_argument(
        "--out", type=Path, default=Path("."), help="folder for replay.png (default: .)"
    )


def run(args: Any) -> int:
    try:
        start = replaying.parse_time(args.start)
        end = replaying.parse_time(args.end)
        if end <= start:
            raise ValueError("--end must be after --start")
        plan = load_plan(args.hpa, args.keda, args.adapter, args.namespace, args.deployment)
        _, png = replaying.replay_and_report(
            args.prometheus,
            plan,
            start,
            end,
            args.out / "replay.png",
            args.replicas,
            period=args.sync_period,
        )
    except (OSError, RuntimeError, ValueError, KeyError) as exc:
        print(f"inferwatch autoscale replay: {exc}", file=sys.stderr)
        return 1
    if png is not None:
        print(png)
    return 0
