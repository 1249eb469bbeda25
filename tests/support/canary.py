"""What Argo Rollouts and Flagger do with the generated canary checks, for the parts we use:
fill their template variables into a query, judge a measurement, and validate an object
against the project's published CustomResourceDefinition (kept in tests/data/crds/).

Argo resolves ``{{args.<name>}}`` in a metric's query and judges the result with its
``successCondition`` / ``failureCondition`` (expr-lang on ``result``, the vector's values;
metricproviders/prometheus, utils/evaluate/evaluate.go). Flagger renders a MetricTemplate's query
as a Go text/template whose functions are ``namespace``, ``target``, ``interval``,
``variables``... (pkg/metrics/observers/render.go), takes the vector's value, treats none or NaN
as "no values found" (a failed check) and compares it with the metric's ``thresholdRange``.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

CRDS = Path(__file__).resolve().parent.parent / "data" / "crds"

# --- template variables -------------------------------------------------------------------------

_ARGO_ARG = re.compile(r"\{\{args\.([A-Za-z0-9_.-]+)\}\}")
_FLAGGER_VAR = re.compile(
    r"\{\{\s*(namespace|name|target|service|interval|variables\.(\w+))\s*\}\}"
)


def render_argo(query: str, args: Mapping[str, str]) -> str:
    """A metric's query with ``{{args.NAME}}`` replaced, as Argo resolves an AnalysisRun's args;
    an argument without a value is an error, as there."""
    rendered = _ARGO_ARG.sub(lambda m: args[m.group(1)], query)
    assert "{{" not in rendered, f"an unresolved template variable: {rendered}"
    return rendered


def render_flagger(query: str, model: Mapping[str, str], variables: Mapping[str, str]) -> str:
    """A MetricTemplate's query as Flagger renders it for a Canary (missing keys are errors)."""

    def value(match: re.Match[str]) -> str:
        if match.group(2) is not None:
            return variables[match.group(2)]
        return model[match.group(1)]

    rendered = _FLAGGER_VAR.sub(value, query)
    assert "{{" not in rendered, f"an unresolved template variable: {rendered}"
    return rendered


# --- judging a measurement ----------------------------------------------------------------------

_CONDITION = re.compile(r"result\[0\] (<=|<|>=|>) ([-+0-9.eE]+)")
_OPERATORS = {"<=": operator.le, "<": operator.lt, ">=": operator.ge, ">": operator.gt}


def _holds(condition: str, result: list[float]) -> bool:
    match = _CONDITION.fullmatch(condition)
    assert match, f"a condition this evaluator does not know: {condition!r}"
    if not result:
        raise IndexError("result[0] of an empty result")  # Argo: the measurement errs
    # Go and Python alike: every comparison with NaN is false.
    return bool(_OPERATORS[match.group(1)](result[0], float(match.group(2))))


def argo_phase(metric: Mapping[str, Any], result: list[float]) -> str:
    """Argo's evaluate.EvaluateResult: Successful, Failed, Inconclusive or Error."""
    try:
        success = (
            _holds(metric["successCondition"], result) if "successCondition" in metric else None
        )
        failure = (
            _holds(metric["failureCondition"], result) if "failureCondition" in metric else None
        )
    except IndexError:
        return "Error"
    if success is None and failure is None:
        return "Successful"
    if failure is None:
        failure = not success
    if success is None:
        success = not failure
    if failure:
        return "Failed"
    return "Successful" if success else "Inconclusive"


def flagger_passes(metric: Mapping[str, Any], result: list[float]) -> bool:
    """Flagger's check of one custom metric: a value within ``thresholdRange``."""
    if not result or math.isnan(result[-1]):
        return False  # "Halt advancement no values found"
    value = result[-1]
    limits = metric["thresholdRange"]
    if "min" in limits and value < limits["min"]:
        return False
    return not ("max" in limits and value > limits["max"])


# --- CustomResourceDefinition schemas -----------------------------------------------------------


def _strict(schema: Any) -> Any:
    """The schema with unknown fields refused where the API server would prune them (every
    object with ``properties``, unless it preserves unknown fields), as ``kubectl apply
    --validate=strict`` refuses them: so a misspelt field fails instead of vanishing."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@cache
def crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> the served version's openAPIV3Schema, strict, from tests/data/crds."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(CRDS.glob("*.yaml")):
        for crd in yaml.safe_load_all(path.read_text()):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            spec = crd["spec"]
            for version in spec["versions"]:
                if version.get("served"):
                    key = (f"{spec['group']}/{version['name']}", spec["names"]["kind"])
                    out[key] = _strict(version["schema"]["openAPIV3Schema"])
    return out


def validate_custom_resource(doc: Mapping[str, Any]) -> None:
    """Raises jsonschema.ValidationError unless ``doc`` is a valid object of a served version
    of one of the CRDs kept in tests/data/crds (its apiVersion and kind naming that version)."""
    key = (str(doc.get("apiVersion")), str(doc.get("kind")))
    schema = crd_schemas().get(key)
    if schema is None:
        raise jsonschema.ValidationError(f"no served CustomResourceDefinition for {key}")
    jsonschema.Draft7Validator(schema).validate(dict(doc))
