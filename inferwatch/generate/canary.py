"""Canary analysis of a model version: Argo Rollouts and Flagger checks, from the schema.

A new model version goes out as a canary: a new ReplicaSet (Argo Rollouts' canary, Flagger's
``<deployment>`` next to its ``<deployment>-primary``) whose pods serve version N while the
stable pods serve N-1, or one set of pods serving both versions (Triton, MLServer, TF Serving
load several). Either way the sidecar labels every inference with the version the request named
(``/v2/models/<m>/versions/<v>/infer``, TF Serving's ``model_spec.version``...), so the checks
select by ``model_name`` and ``model_version`` (and by the workload's pods, so another workload
serving the same model is not counted), never by pod hash: they work in both layouts.

Four checks, each a single number Prometheus returns (PromQL from ``promql``, like the
dashboards' and the alerts'):

- error-ratio: the canary's server-side failures per inference, at most an absolute limit;
- error-ratio-increase: the canary's error ratio minus the stable version's, at most a limit;
- p95-latency: the canary's p95 latency (seconds, at the sidecar), at most an absolute limit;
- p95-latency-ratio: the canary's p95 over the stable version's, at most a factor.

Argo Rollouts gets one ``AnalysisTemplate`` with all four (args: namespace, workload, model,
canary-version, stable-version); Flagger gets one ``MetricTemplate`` per check (its variables
``{{ namespace }}``, ``{{ target }}``, ``{{ interval }}`` and templateVariables model,
canary_version, stable_version) and an example ``Canary`` that uses them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from inferwatch.generate import promql
from inferwatch.generate.options import GenerateOptions

# Their files, in deploy/kubernetes/argo-rollouts/ and deploy/kubernetes/flagger/ (kubernetes.py).
ANALYSIS_TEMPLATE_FILE = "analysis-template.yaml"
METRIC_TEMPLATES_FILE = "metric-templates.yaml"
CANARY_FILE = "canary.yaml"

ARGO_API_VERSION = "argoproj.io/v1alpha1"
FLAGGER_API_VERSION = "flagger.app/v1beta1"
ANALYSIS_TEMPLATE = "inferwatch-model-version"
METRIC_TEMPLATE_PREFIX = "inferwatch-"

# The analysis' arguments: Argo's names (its args), Flagger's (templateVariables: Go template
# identifiers, so underscores).
ARGO_ARGS = ("namespace", "workload", "model", "canary-version", "stable-version")
FLAGGER_VARIABLES = ("model", "canary_version", "stable_version")


def interval(options: GenerateOptions) -> str:
    """The measurement interval (and rate window) in minutes or seconds: Flagger's metric
    interval must match ``^[0-9]+(m|s)`` (so 1h is 60m); Argo and PromQL read it alike."""
    seconds = options.canary_interval_seconds
    return f"{seconds // 60}m" if seconds % 60 == 0 else f"{seconds}s"


@dataclass(frozen=True)
class Placeholders:
    """How each template spells the analysis' inputs."""

    namespace: str
    workload: str
    model: str
    canary_version: str
    stable_version: str
    window: str

    def canary(self) -> str:
        return promql.model_version(self.namespace, self.workload, self.model, self.canary_version)

    def stable(self) -> str:
        return promql.model_version(self.namespace, self.workload, self.model, self.stable_version)


def argo_placeholders(options: GenerateOptions) -> Placeholders:
    # Argo has no interval variable: the rate window is the measurement interval.
    arg = {name: f"{{{{args.{name}}}}}" for name in ARGO_ARGS}
    return Placeholders(
        arg["namespace"],
        arg["workload"],
        arg["model"],
        arg["canary-version"],
        arg["stable-version"],
        interval(options),
    )


def flagger_placeholders() -> Placeholders:
    var = {name: f"{{{{ variables.{name} }}}}" for name in FLAGGER_VARIABLES}
    return Placeholders(
        "{{ namespace }}",
        "{{ target }}",
        var["model"],
        var["canary_version"],
        var["stable_version"],
        "{{ interval }}",
    )


@dataclass(frozen=True)
class Check:
    """One canary check: a query returning one number, passing while it is at most ``maximum``."""

    name: str
    description: str
    query: Callable[[Placeholders], str]
    maximum: float


def checks(options: GenerateOptions) -> tuple[Check, ...]:
    return (
        Check(
            "error-ratio",
            "The canary version's server-side failures per inference.",
            lambda p: promql.version_error_ratio(p.canary(), p.window),
            options.canary_max_error_ratio,
        ),
        Check(
            "error-ratio-increase",
            "The canary version's error ratio minus the stable version's.",
            lambda p: promql.error_ratio_increase(p.canary(), p.stable(), p.window),
            options.canary_max_error_increase,
        ),
        Check(
            "p95-latency",
            "The canary version's p95 latency in seconds, measured by the sidecars.",
            lambda p: promql.version_p95(p.canary(), p.window),
            options.canary_max_p95_seconds,
        ),
        Check(
            "p95-latency-ratio",
            "The canary version's p95 latency as a multiple of the stable version's.",
            lambda p: promql.p95_ratio(p.canary(), p.stable(), p.window),
            options.canary_max_p95_ratio,
        ),
    )


def _number(value: float) -> str:
    return format(value, "g")


def success_condition(check: Check) -> str:
    return f"result[0] <= {_number(check.maximum)}"


def failure_condition(check: Check) -> str:
    # With both conditions, a NaN (no inference in the window: 0/0) is neither: Argo counts it
    # inconclusive instead of failed. No series at all (a misspelt version) is an error.
    return f"result[0] > {_number(check.maximum)}"


# --- Argo Rollouts ------------------------------------------------------------------------------


def analysis_template(options: GenerateOptions) -> dict[str, Any]:
    placeholders = argo_placeholders(options)
    every = interval(options)
    return {
        "apiVersion": ARGO_API_VERSION,
        "kind": "AnalysisTemplate",
        "metadata": {
            "name": ANALYSIS_TEMPLATE,
            "namespace": options.namespace,
            "labels": {"app.kubernetes.io/part-of": "inferwatch"},
        },
        "spec": {
            "args": [
                {"name": "namespace", "value": options.namespace},
                {"name": "workload", "value": options.deployment},
                {"name": "model"},
                {"name": "canary-version"},
                {"name": "stable-version"},
            ],
            "metrics": [
                {
                    "name": check.name,
                    "interval": every,
                    "count": options.canary_count,
                    "failureLimit": options.canary_failure_limit,
                    "successCondition": success_condition(check),
                    "failureCondition": failure_condition(check),
                    "provider": {
                        "prometheus": {
                            "address": options.prometheus_url,
                            "query": check.query(placeholders),
                        }
                    },
                }
                for check in checks(options)
            ],
        },
    }


# --- Flagger ------------------------------------------------------------------------------------


def metric_template_name(check: Check) -> str:
    return METRIC_TEMPLATE_PREFIX + check.name


def metric_templates(options: GenerateOptions) -> list[dict[str, Any]]:
    placeholders = flagger_placeholders()
    return [
        {
            "apiVersion": FLAGGER_API_VERSION,
            "kind": "MetricTemplate",
            "metadata": {
                "name": metric_template_name(check),
                "namespace": options.namespace,
                "labels": {"app.kubernetes.io/part-of": "inferwatch"},
            },
            "spec": {
                "provider": {"type": "prometheus", "address": options.prometheus_url},
                "query": check.query(placeholders),
            },
        }
        for check in checks(options)
    ]


def flagger_canary(options: GenerateOptions) -> dict[str, Any]:
    """An example Canary for the model server's Deployment, checking ``canary_version`` of
    ``canary_model`` against ``stable_version`` with the metric templates."""
    every = interval(options)
    variables = {
        "model": options.canary_model,
        "canary_version": options.canary_version,
        "stable_version": options.stable_version,
    }
    return {
        "apiVersion": FLAGGER_API_VERSION,
        "kind": "Canary",
        "metadata": {
            "name": options.deployment,
            "namespace": options.namespace,
            "labels": {"app.kubernetes.io/part-of": "inferwatch"},
        },
        "spec": {
            "targetRef": {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "name": options.deployment,
            },
            # Flagger takes the Service over (same name, port and target as base/'s) and adds
            # <deployment>-canary and <deployment>-primary next to it.
            "service": {"port": 80, "targetPort": "http"},
            "analysis": {
                "interval": every,
                # Flagger rolls back at `threshold` failed checks; Argo fails after more than
                # failureLimit: the same tolerance.
                "threshold": options.canary_failure_limit + 1,
                "maxWeight": 50,
                "stepWeight": 10,
                "metrics": [
                    {
                        "name": check.name,
                        "templateRef": {"name": metric_template_name(check)},
                        "templateVariables": variables,
                        "thresholdRange": {"max": check.maximum},
                        "interval": every,
                    }
                    for check in checks(options)
                ],
            },
        },
    }
