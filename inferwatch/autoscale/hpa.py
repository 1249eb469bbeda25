"""The Kubernetes HorizontalPodAutoscaler (autoscaling/v2) algorithm, as a pure module.

It follows the controller in kubernetes/kubernetes, pkg/controller/podautoscaler:

* replica_calculator.go: the per-metric proposal. Pods metrics (``calcPlainMetricReplicas``):
  the average over the pods with a metric against the target, ``ceil(ratio * ready pods)``, no
  change within the tolerance (10%, ``--horizontal-pod-autoscaler-tolerance``); pods without a
  metric count as at the target on a scale-down and as 0 on a scale-up, unready pods as 0 on a
  scale-up (CPU only), and no change when that flips the direction. Resource utilization
  (``GetResourceReplicas``): the sum of usage over the sum of requests, in whole percent.
  Object and External metrics: ``Value`` targets ``ceil(ratio * ready pods)``, ``AverageValue``
  targets ``ceil(total / target)`` (``Get*PerPodMetricReplicas``). Quantities are compared in
  milli-units as the controller does (``GetMetricUsageRatio`` divides integers).
* horizontal.go: ``reconcileAutoscaler`` (0 replicas disables scaling; below min / above max goes
  straight to min / max), ``computeReplicasForMetrics`` (the largest proposal; a metric that
  cannot be read blocks a scale-down, and all of them blocks any change),
  ``stabilizeRecommendationWithBehaviors`` (every sync's unstabilized recommendation is kept; the
  window's minimum bounds a scale-up, its maximum a scale-down),
  ``convertDesiredReplicasWithBehaviorRate`` with ``calculateScaleUpLimitWithScalingRules`` and
  ``calculateScaleDownLimitWithBehaviors`` (each policy's limit from the replicas at the start
  of its period, i.e. minus what was added, plus what was removed, within ``periodSeconds``;
  ``selectPolicy`` Max, Min or Disabled), ``storeScaleEvent``; without a behavior block,
  ``normalizeDesiredReplicas`` (a 5-minute scale-down stabilization and the legacy scale-up
  limit ``max(2 * current, 4)``).

Time is explicit (seconds); a window holds what is strictly newer than ``now - window``, as
``time.After(cutoff)`` does upstream.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

TOLERANCE = 0.1  # --horizontal-pod-autoscaler-tolerance
SYNC_PERIOD = 15.0  # --horizontal-pod-autoscaler-sync-period
DOWNSCALE_STABILIZATION = 300  # --horizontal-pod-autoscaler-downscale-stabilization (seconds)
SCALE_UP_LIMIT_FACTOR = 2.0  # without a behavior block (scaleUpLimitFactor)
SCALE_UP_LIMIT_MINIMUM = 4.0  # (scaleUpLimitMinimum)

# --- quantities and the spec -------------------------------------------------------------------

_SUFFIXES = {
    "n": 1e-9,
    "u": 1e-6,
    "m": 1e-3,
    "": 1.0,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "Ki": 2.0**10,
    "Mi": 2.0**20,
    "Gi": 2.0**30,
    "Ti": 2.0**40,
}


def parse_quantity(value: Any) -> float:
    """A Kubernetes quantity ("100m", "10", "1.5k", "2Gi") as a float."""
    if isinstance(value, int | float):
        return float(value)
    match = re.fullmatch(r"\s*([+-]?[0-9.]+(?:[eE][+-]?\d+)?)\s*([a-zA-Z]*)\s*", str(value))
    if not match or match.group(2) not in _SUFFIXES:
        raise ValueError(f"not a quantity: {value!r}")
    return float(match.group(1)) * _SUFFIXES[match.group(2)]


def milli(value: float) -> int:
    """A quantity in milli-units, as the controller holds metric values."""
    return round(value * 1000)


@dataclass(frozen=True)
class Policy:
    type: str  # "Pods" or "Percent"
    value: int
    period_seconds: int


@dataclass(frozen=True)
class ScalingRules:
    stabilization_window_seconds: int
    select_policy: str = "Max"  # Max, Min or Disabled
    policies: tuple[Policy, ...] = ()
    tolerance: float | None = None  # autoscaling/v2 behavior tolerance (alpha since 1.33)

    @property
    def longest_period(self) -> int:
        return max((p.period_seconds for p in self.policies), default=0)


def default_scale_up() -> ScalingRules:
    """The API's defaults (GenerateHPAScaleUpRules): 100% or 4 pods per 15 s, no window."""
    return ScalingRules(0, "Max", (Policy("Pods", 4, 15), Policy("Percent", 100, 15)))


def default_scale_down(window: int = DOWNSCALE_STABILIZATION) -> ScalingRules:
    """The API's defaults (GenerateHPAScaleDownRules): 100% per 15 s after the window."""
    return ScalingRules(window, "Max", (Policy("Percent", 100, 15),))


def _rules(doc: Mapping[str, Any] | None, default: ScalingRules) -> ScalingRules:
    if not doc:
        return default
    policies = doc.get("policies")
    window = doc.get("stabilizationWindowSeconds")
    tolerance = doc.get("tolerance")
    return ScalingRules(
        default.stabilization_window_seconds if window is None else int(window),
        str(doc.get("selectPolicy") or "Max"),
        default.policies
        if policies is None
        else tuple(
            Policy(str(p["type"]), int(p["value"]), int(p["periodSeconds"])) for p in policies
        ),
        None if tolerance is None else parse_quantity(tolerance),
    )


@dataclass(frozen=True)
class Behavior:
    scale_up: ScalingRules = field(default_factory=default_scale_up)
    scale_down: ScalingRules = field(default_factory=default_scale_down)

    @classmethod
    def from_spec(cls, doc: Mapping[str, Any] | None) -> Behavior | None:
        """``spec.behavior`` with the API's defaulting of what it leaves out; None without."""
        if doc is None:
            return None
        return cls(
            _rules(doc.get("scaleUp"), default_scale_up()),
            _rules(doc.get("scaleDown"), default_scale_down()),
        )


@dataclass(frozen=True)
class Metric:
    """One entry of ``spec.metrics``: its source (Pods, Object, External, Resource), its name
    (the metric's, or the resource's) and its target."""

    source: str
    name: str
    target_type: str  # AverageValue, Value or Utilization
    target: float

    @property
    def label(self) -> str:
        return self.name if self.source != "Resource" else f"{self.name} utilization"

    @classmethod
    def from_spec(cls, doc: Mapping[str, Any]) -> Metric:
        source = str(doc["type"])
        body = doc[source[0].lower() + source[1:]]
        target = body["target"]
        kind = str(target.get("type") or "")
        if source == "Resource" or source == "ContainerResource":
            name = str(body["name"])
        else:
            name = str(body["metric"]["name"])
        if kind == "Utilization" or (not kind and "averageUtilization" in target):
            return cls(source, name, "Utilization", float(target["averageUtilization"]))
        if kind == "AverageValue" or (not kind and "averageValue" in target):
            return cls(source, name, "AverageValue", parse_quantity(target["averageValue"]))
        return cls(source, name, "Value", parse_quantity(target["value"]))


@dataclass(frozen=True)
class Spec:
    min_replicas: int
    max_replicas: int
    metrics: tuple[Metric, ...]
    behavior: Behavior | None

    @classmethod
    def from_manifest(cls, doc: Mapping[str, Any]) -> Spec:
        """From an autoscaling/v2 HorizontalPodAutoscaler."""
        spec = doc["spec"]
        return cls(
            int(spec.get("minReplicas", 1)),
            int(spec["maxReplicas"]),
            tuple(Metric.from_spec(m) for m in spec.get("metrics", [])),
            Behavior.from_spec(spec.get("behavior")),
        )


# --- the replica calculator (replica_calculator.go) ---------------------------------------------


@dataclass(frozen=True)
class Tolerances:
    scale_down: float = TOLERANCE
    scale_up: float = TOLERANCE

    def within(self, ratio: float) -> bool:
        return 1.0 - self.scale_down <= ratio <= 1.0 + self.scale_up

    @classmethod
    def of(cls, behavior: Behavior | None, default: float = TOLERANCE) -> Tolerances:
        if behavior is None:
            return cls(default, default)
        down, up = behavior.scale_down.tolerance, behavior.scale_up.tolerance
        return cls(default if down is None else down, default if up is None else up)


class MetricUnavailable(Exception):
    """No usable value for a metric at this sync: the controller's FailedGet*Metric."""


def _usage_ratio(values: Sequence[int], target: int) -> float:
    # metricsclient.GetMetricUsageRatio: an integer average of milli-values.
    return (sum(values) // len(values)) / target


def plain_metric_replicas(
    current_replicas: int,
    values: Sequence[float],
    target: float,
    missing_pods: int = 0,
    tolerances: Tolerances = Tolerances(),
) -> int:
    """A Pods metric with an AverageValue target (calcPlainMetricReplicas): ``values`` are the
    ready pods' values; ``missing_pods`` pods have none. Unreadiness does not matter here: only
    the CPU resource metric treats unready pods apart."""
    if not values:
        raise MetricUnavailable("did not receive metrics for targeted pods")
    return _replicas_from_usage(
        current_replicas, [milli(v) for v in values], milli(target), missing_pods, 0, tolerances
    )


def _replicas_from_usage(
    current: int,
    values: list[int],
    target: int,
    missing: int,
    unready: int,
    tolerances: Tolerances,
    missing_value: int | None = None,
) -> int:
    ratio = _usage_ratio(values, target)
    scale_up_with_unready = unready > 0 and ratio > 1.0
    if not scale_up_with_unready and missing == 0:
        if tolerances.within(ratio):
            return current
        return math.ceil(ratio * len(values))
    if missing:
        # on a scale-down missing pods use 100% of the target, on a scale-up nothing
        fill = (target if missing_value is None else missing_value) if ratio < 1.0 else 0
        values = values + [fill] * missing
    if scale_up_with_unready:
        values = values + [0] * unready
    new_ratio = _usage_ratio(values, target)
    if (
        tolerances.within(new_ratio)
        or (ratio < 1.0 and new_ratio > 1.0)
        or (ratio > 1.0 and new_ratio < 1.0)
    ):
        return current
    replicas = math.ceil(new_ratio * len(values))
    if (new_ratio < 1.0 and replicas > current) or (new_ratio > 1.0 and replicas < current):
        return current
    return replicas


def resource_utilization_replicas(
    current_replicas: int,
    usages: Sequence[float],
    requests: Sequence[float],
    target_utilization: float,
    missing_requests: Sequence[float] = (),
    unready_requests: Sequence[float] = (),
    tolerances: Tolerances = Tolerances(),
) -> int:
    """A Resource metric with a Utilization target (GetResourceReplicas): ``usages`` and
    ``requests`` of the ready pods with metrics (cores, say); pods without a metric and unready
    pods by their requests. Utilization is whole percent of the summed requests."""
    if not usages:
        raise MetricUnavailable("did not receive metrics for targeted pods")
    req = [milli(r) for r in requests]
    use = [milli(u) for u in usages]
    target = int(target_utilization)

    def ratio_of(u: list[int], r: list[int]) -> float:
        return (sum(u) * 100 // sum(r)) / target  # GetResourceUtilizationRatio

    ratio = ratio_of(use, req)
    unready = len(unready_requests)
    if not (unready > 0 and ratio > 1.0) and not missing_requests:
        if tolerances.within(ratio):
            return current_replicas
        return math.ceil(ratio * len(use))
    if missing_requests:
        miss = [milli(r) for r in missing_requests]
        # scale-down: missing pods use all of their request; scale-up: none of it
        use = use + (miss if ratio < 1.0 else [0] * len(miss))
        req = req + miss
    if unready > 0 and ratio > 1.0:
        use = use + [0] * unready
        req = req + [milli(r) for r in unready_requests]
    new_ratio = ratio_of(use, req)
    if (
        tolerances.within(new_ratio)
        or (ratio < 1.0 and new_ratio > 1.0)
        or (ratio > 1.0 and new_ratio < 1.0)
    ):
        return current_replicas
    replicas = math.ceil(new_ratio * len(use))
    if (new_ratio < 1.0 and replicas > current_replicas) or (
        new_ratio > 1.0 and replicas < current_replicas
    ):
        return current_replicas
    return replicas


def value_replicas(
    current_replicas: int,
    ready_pods: int,
    usage: float,
    target: float,
    tolerances: Tolerances = Tolerances(),
) -> int:
    """An Object or External metric with a Value target (getUsageRatioReplicaCount): the
    metric as one number against the target, times the ready pods."""
    ratio = milli(usage) / milli(target)
    if current_replicas == 0:
        return math.ceil(ratio)  # scaling up from zero
    if tolerances.within(ratio):
        return current_replicas
    return math.ceil(ratio * ready_pods)


def average_value_replicas(
    status_replicas: int, usage: float, target: float, tolerances: Tolerances = Tolerances()
) -> int:
    """An Object or External metric with an AverageValue target
    (GetExternalPerPodMetricReplicas): the total over the target per pod."""
    total, per_pod = milli(usage), milli(target)
    ratio = total / (per_pod * status_replicas) if status_replicas else math.inf
    if tolerances.within(ratio):
        return status_replicas
    return math.ceil(total / per_pod)


# --- the controller's normalization (horizontal.go) -------------------------------------------


@dataclass(frozen=True)
class Event:
    at: float
    change: int  # replicas added (scale-up events) or removed (scale-down events)


def replicas_change(events: Sequence[Event], period: float, now: float) -> int:
    """getReplicasChangePerPeriod: the change within the last ``period`` seconds."""
    return sum(e.change for e in events if e.at > now - period)


def scale_up_limit(
    current: int,
    up_events: Sequence[Event],
    down_events: Sequence[Event],
    rules: ScalingRules,
    now: float,
) -> int:
    """calculateScaleUpLimitWithScalingRules: the most replicas the policies allow now."""
    if rules.select_policy == "Disabled":
        return current
    choose = min if rules.select_policy == "Min" else max
    result: int | None = None
    for policy in rules.policies:
        added = replicas_change(up_events, policy.period_seconds, now)
        removed = replicas_change(down_events, policy.period_seconds, now)
        start = current - added + removed
        if policy.type == "Pods":
            proposed = start + policy.value
        else:
            proposed = math.ceil(start * (1 + policy.value / 100))
        result = proposed if result is None else choose(result, proposed)
    return current if result is None else result


def scale_down_limit(
    current: int,
    up_events: Sequence[Event],
    down_events: Sequence[Event],
    rules: ScalingRules,
    now: float,
) -> int:
    """calculateScaleDownLimitWithBehaviors: the fewest replicas the policies allow now."""
    if rules.select_policy == "Disabled":
        return current
    choose = max if rules.select_policy == "Min" else min
    result: int | None = None
    for policy in rules.policies:
        added = replicas_change(up_events, policy.period_seconds, now)
        removed = replicas_change(down_events, policy.period_seconds, now)
        start = current - added + removed
        if policy.type == "Pods":
            proposed = start - policy.value
        else:
            proposed = int(start * (1 - policy.value / 100))  # truncated, as int32() does
        result = proposed if result is None else choose(result, proposed)
    return current if result is None else result


@dataclass(frozen=True)
class Recommendation:
    at: float
    replicas: int


def stabilize(
    recommendations: Sequence[Recommendation],
    current: int,
    desired: int,
    behavior: Behavior,
    now: float,
) -> int:
    """stabilizeRecommendationWithBehaviors, without the recording: the new recommendation
    bounded by the scale-up window's minimum and the scale-down window's maximum."""
    up_cutoff = now - behavior.scale_up.stabilization_window_seconds
    down_cutoff = now - behavior.scale_down.stabilization_window_seconds
    up, down = desired, desired
    for rec in recommendations:
        if rec.at > up_cutoff:
            up = min(up, rec.replicas)
        if rec.at > down_cutoff:
            down = max(down, rec.replicas)
    return min(max(current, up), down)


def rate_limited(
    current: int,
    desired: int,
    min_replicas: int,
    max_replicas: int,
    behavior: Behavior,
    up_events: Sequence[Event],
    down_events: Sequence[Event],
    now: float,
) -> tuple[int, str]:
    """convertDesiredReplicasWithBehaviorRate: the replicas and the ScalingLimited reason."""
    if desired > current:
        limit = max(
            current, scale_up_limit(current, up_events, down_events, behavior.scale_up, now)
        )
        if max_replicas > limit:
            allowed, reason = limit, "ScaleUpLimit"
        else:
            allowed, reason = max_replicas, "TooManyReplicas"
        if desired > allowed:
            return allowed, reason
    elif desired < current:
        limit = min(
            current, scale_down_limit(current, up_events, down_events, behavior.scale_down, now)
        )
        if min_replicas < limit:
            allowed, reason = limit, "ScaleDownLimit"
        else:
            allowed, reason = min_replicas, "TooFewReplicas"
        if desired < allowed:
            return allowed, reason
    return desired, "DesiredWithinRange"


def legacy_limited(
    current: int, desired: int, min_replicas: int, max_replicas: int
) -> tuple[int, str]:
    """convertDesiredReplicasWithRules: without a behavior block."""
    limit = int(max(SCALE_UP_LIMIT_FACTOR * current, SCALE_UP_LIMIT_MINIMUM))
    if max_replicas > limit:
        maximum, reason = limit, "ScaleUpLimit"
    else:
        maximum, reason = max_replicas, "TooManyReplicas"
    if desired < min_replicas:
        return min_replicas, "TooFewReplicas"
    if desired > maximum:
        return maximum, reason
    return desired, "DesiredWithinRange"


@dataclass
class Decision:
    """One sync: the largest metric proposal (None when the metrics blocked a change), the
    stabilized recommendation and the replicas the controller sets."""

    proposal: int | None
    stabilized: int
    replicas: int
    reason: str


@dataclass
class Controller:
    """One HPA's controller state across syncs: recommendations and scale events."""

    spec: Spec
    recommendations: list[Recommendation] = field(default_factory=list)
    up_events: list[Event] = field(default_factory=list)
    down_events: list[Event] = field(default_factory=list)

    def sync(self, now: float, current: int, proposals: Sequence[int | None]) -> Decision:
        """reconcileAutoscaler for one sync: ``proposals`` per metric, None for one that
        could not be computed."""
        spec = self.spec
        if current == 0 and spec.min_replicas != 0:
            return Decision(None, 0, 0, "ScalingDisabled")
        if current > spec.max_replicas:
            desired, reason, proposal = spec.max_replicas, "TooManyReplicas", None
            stabilized = desired
        elif current < spec.min_replicas:
            desired, reason, proposal = spec.min_replicas, "TooFewReplicas", None
            stabilized = desired
        else:
            valid = [p for p in proposals if p is not None]
            invalid = len(proposals) - len(valid)
            best = max(valid, default=0)
            if invalid >= len(proposals) or (invalid > 0 and best < current):
                # computeReplicasForMetrics returns an error: nothing changes, nothing recorded
                return Decision(None, current, current, "FailedGetMetrics")
            proposal = best
            stabilized, desired, reason = self._normalize(now, current, best)
        if desired != current:
            self._store_event(now, current, desired)
        return Decision(proposal, stabilized, desired, reason)

    def _normalize(self, now: float, current: int, desired: int) -> tuple[int, int, str]:
        spec = self.spec
        behavior = spec.behavior
        if behavior is None:
            # stabilizeRecommendation: the highest recommendation of the last 5 minutes (one
            # exactly 5 minutes old still counts there: it is not Before(cutoff))
            cutoff = now - DOWNSCALE_STABILIZATION
            stabilized = max(
                [desired] + [r.replicas for r in self.recommendations if r.at >= cutoff]
            )
            self._record(now, desired, DOWNSCALE_STABILIZATION + 1)
            replicas, reason = legacy_limited(
                current, stabilized, spec.min_replicas, spec.max_replicas
            )
            return stabilized, replicas, reason
        stabilized = stabilize(self.recommendations, current, desired, behavior, now)
        keep = max(
            behavior.scale_up.stabilization_window_seconds,
            behavior.scale_down.stabilization_window_seconds,
        )
        self._record(now, desired, keep)
        replicas, reason = rate_limited(
            current,
            stabilized,
            spec.min_replicas,
            spec.max_replicas,
            behavior,
            self.up_events,
            self.down_events,
            now,
        )
        return stabilized, replicas, reason

    def _record(self, now: float, desired: int, keep: float) -> None:
        self.recommendations = [r for r in self.recommendations if r.at > now - keep]
        self.recommendations.append(Recommendation(now, desired))

    def _store_event(self, now: float, previous: int, new: int) -> None:
        behavior = self.spec.behavior
        if behavior is None:
            return  # storeScaleEvent keeps nothing without a behavior
        keep = max(behavior.scale_up.longest_period, behavior.scale_down.longest_period)
        self.up_events = [e for e in self.up_events if e.at > now - keep]
        self.down_events = [e for e in self.down_events if e.at > now - keep]
        if new > previous:
            self.up_events.append(Event(now, new - previous))
        else:
            self.down_events.append(Event(now, previous - new))
