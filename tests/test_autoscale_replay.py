"""`inferwatch autoscale replay`: the HPA algorithm (inferwatch.autoscale.hpa) against cases
taken from the Kubernetes HPA controller's own tests (kubernetes/kubernetes,
pkg/controller/podautoscaler/replica_calculator_test.go and horizontal_test.go; each case names
its upstream test), a hand-computed scenario with the seed's behavior block, and the command
end to end against a real Prometheus holding backfilled series."""

from __future__ import annotations

import os
import struct
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from support.processes import inferwatch_command
from support.prometheus import running_prometheus

from inferwatch.autoscale import hpa
from inferwatch.autoscale import replay as replaying
from inferwatch.autoscale.hpa import (
    Behavior,
    Controller,
    Event,
    Policy,
    Recommendation,
    ScalingRules,
    Spec,
)
from inferwatch.generate import promql

# --- the replica calculator (replica_calculator_test.go, horizontal_test.go) ------------------


def test_pods_metric_scale_up() -> None:
    # TestReplicaCalcScaleUpCM / TestScaleUpCM: qps 20, 10, 30 per pod, target 15 -> 4
    assert hpa.plain_metric_replicas(3, [20.0, 10.0, 30.0], 15.0) == 4


def test_pods_metric_scale_down() -> None:
    # TestReplicaCalcScaleDownCM: five pods at 12 against 20 -> 3
    assert hpa.plain_metric_replicas(5, [12.0] * 5, 20.0) == 3


def test_pods_metric_within_tolerance() -> None:
    # TestReplicaCalcToleranceCM: 20, 21, 21 against 20 is within 10%: stays at 3
    assert hpa.plain_metric_replicas(3, [20.0, 21.0, 21.0], 20.0) == 3


def test_pods_metric_missing_pods() -> None:
    # calcPlainMetricReplicas' missing-pod rule: on a scale-down, pods without a metric count
    # at the target (so 2 pods at 2 plus 2 missing ones at 10 against 10 -> ratio 0.6 -> 3)...
    assert hpa.plain_metric_replicas(4, [2.0, 2.0], 10.0, missing_pods=2) == 3
    # ...on a scale-up as 0 (30, 30 plus two missing against 10: ratio 1.5 over 4 pods -> 6)
    assert hpa.plain_metric_replicas(4, [30.0, 30.0], 10.0, missing_pods=2) == 6
    # and when filling them in flips the direction, nothing changes
    assert hpa.plain_metric_replicas(4, [12.0, 12.0], 10.0, missing_pods=2) == 4
    with pytest.raises(hpa.MetricUnavailable):
        hpa.plain_metric_replicas(3, [], 10.0)


def test_resource_utilization() -> None:
    # TestReplicaCalcScaleUp / TestScaleUpReplicaSet: 300m, 500m, 700m of 1-core requests,
    # target 30% -> utilization 50% -> 5
    assert hpa.resource_utilization_replicas(3, [0.3, 0.5, 0.7], [1.0] * 3, 30) == 5
    # TestReplicaCalcScaleDown / TestScaleDown: 100m, 300m, 500m, 250m, 250m, target 50%
    # -> utilization 28% -> 3
    usages = [0.1, 0.3, 0.5, 0.25, 0.25]
    assert hpa.resource_utilization_replicas(5, usages, [1.0] * 5, 50) == 3


def test_external_and_object_metrics() -> None:
    # TestReplicaCalcScaleUpCMExternal: 8.6 against a Value of 4.4 with 1 replica -> 2
    assert hpa.value_replicas(1, 1, 8.6, 4.4) == 2
    # TestReplicaCalcScaleUpPerPodCMExternal: 8.6 against an AverageValue of 2.15 -> 4
    assert hpa.average_value_replicas(3, 8.6, 2.15) == 4
    # TestReplicaCalcScaleDownPerPodCMObject: 6 against an AverageValue of 2 with 5 -> 3
    assert hpa.average_value_replicas(5, 6.0, 2.0) == 3


# --- the controller (horizontal_test.go) ------------------------------------------------------


def _cpu_spec(min_replicas: int, max_replicas: int, behavior: Behavior | None = None) -> Spec:
    return Spec(
        min_replicas, max_replicas, (hpa.Metric("Resource", "cpu", "Utilization", 50),), behavior
    )


def test_controller_limits_and_zero() -> None:
    # TestScaleUpRCImmediately: 1 replica under minReplicas 2 goes to 2 without metrics
    assert Controller(_cpu_spec(2, 6)).sync(0, 1, [None]).replicas == 2
    # TestScaleDownRCImmediately: 6 replicas over maxReplicas 5 goes to 5
    assert Controller(_cpu_spec(2, 5)).sync(0, 6, [None]).replicas == 5
    # TestZeroReplicas: a target scaled to 0 is not autoscaled
    decision = Controller(_cpu_spec(3, 5)).sync(0, 0, [None])
    assert (decision.replicas, decision.reason) == (0, "ScalingDisabled")


def test_controller_missing_metric() -> None:
    # TestScaleUpOneMetricEmpty: CPU at 40% of 30% proposes 4, the External metric fails:
    # the scale-up still happens
    cpu = hpa.resource_utilization_replicas(3, [0.3, 0.4, 0.5], [1.0] * 3, 30)
    assert Controller(_cpu_spec(2, 6)).sync(0, 3, [cpu, None]).replicas == 4
    # TestNoScaleDownOneMetricEmpty: CPU proposes 3 of 5, the External metric fails: no
    # scale-down, and no recommendation recorded
    cpu = hpa.resource_utilization_replicas(5, [0.1, 0.3, 0.5, 0.25, 0.25], [1.0] * 5, 50)
    controller = Controller(_cpu_spec(2, 6))
    assert controller.sync(0, 5, [cpu, None]).replicas == 5
    assert controller.recommendations == []
    # all metrics failing: nothing changes either
    assert Controller(_cpu_spec(2, 6)).sync(0, 3, [None, None]).replicas == 3


def test_stabilization_without_behavior() -> None:
    # TestNormalizeDesiredReplicas "stabilize": 4 and 5 recommended in the last 5 minutes,
    # 3 now -> 5; "no stabilize - old recommendations": 10 and 9 older than 5 minutes -> 3
    now = 1000.0
    recent = [Recommendation(now - 120, 4), Recommendation(now - 60, 5)]
    assert Controller(_cpu_spec(1, 10), recent).sync(now, 5, [3]).replicas == 5
    old = [Recommendation(now - 600, 10), Recommendation(now - 540, 9)]
    assert Controller(_cpu_spec(1, 10), old).sync(now, 5, [3]).replicas == 3


def _rules(pods: int, pods_period: int, percent: int, percent_period: int, window: int) -> Any:
    # horizontal_test.go's generateScalingRules
    policies = []
    if pods:
        policies.append(Policy("Pods", pods, pods_period))
    if percent:
        policies.append(Policy("Percent", percent, percent_period))
    return ScalingRules(window, "Max", tuple(policies))


def _uniform(changes: list[int], period: int, now: float) -> list[Event]:
    # horizontal_test.go's generateEventsUniformDistribution: centred in equal segments
    segment = period / len(changes)
    return [
        Event(now - (period - segment * (i + 1) + segment / 2), c) for i, c in enumerate(changes)
    ]


NOW = 10_000.0

# TestScalingWithRules (convertDesiredReplicasWithBehaviorRate): name, scale-up events,
# scale-down events, min, max, scaleUp rules, scaleDown rules, current, desired, expected
SCALING_WITH_RULES = [
    ("prenormalized desired replicas within range", [], [], 3, 8, None, None, 5, 7, 7),
    ("prenormalized desired replicas < minReplicas", [], [], 2, 8, None, None, 3, 1, 2),
    (
        "maxReplicas is the limit because maxReplicas < scaleUpLimit",
        *([], [], 1, 10, None, None, 20, 1000, 10),
    ),
    (
        "scaleUpLimit is the limit because scaleUpLimit < maxReplicas with user policies",
        *([], [], 1, 2000, _rules(0, 0, 1, 60, 0), None, 3, 1000, 4),
    ),
    (
        "scaleDownLimit is the limit because scaleDownLimit > minReplicas with user defined "
        "policies",
        *([], [], 3, 2000, None, _rules(20, 60, 0, 0, 0), 1000, 3, 980),
    ),
    ("scaleUp with default behavior", [], [], 1, 1000, None, None, 10, 50, 20),
    (
        "scaleUp with pods policy larger than percent policy",
        *([], [], 1, 1000, _rules(100, 60, 100, 60, 0), None, 10, 500, 110),
    ),
    (
        "scaleUp with percent policy larger than pods policy",
        *([], [], 1, 1000, _rules(2, 60, 100, 60, 0), None, 10, 500, 20),
    ),
    (
        "scaleUp with pod policy limitation",
        *([], [], 1, 1000, _rules(30, 60, 0, 0, 0), None, 10, 50, 40),
    ),
    (
        "scaleUp with percent policy limitation",
        *([], [], 1, 1000, _rules(0, 0, 200, 60, 0), None, 10, 50, 30),
    ),
    (
        "scaleDown with percent policy larger than pod policy",
        *([], [], 1, 1000, None, _rules(20, 60, 1, 60, 300), 100, 2, 80),
    ),
    (
        "scaleDown with pod policy larger than percent policy",
        *([], [], 1, 1000, None, _rules(2, 60, 1, 60, 300), 100, 2, 98),
    ),
    (
        "scaleDown with spec MinReplicas limitation with large percent policy",
        *([], [], 5, 1000, None, _rules(0, 0, 100, 60, 300), 10, 2, 5),
    ),
    (
        "scaleUp with currentReplicas limitation with rate.PeriodSeconds with a lot of recent "
        "scale up events",
        *([1, 5, 9], [], 1, 1000, _rules(5, 120, 0, 0, 0), None, 100, 500, 100),
    ),
    (
        "scaleUp with pod policy and previous scale up events",
        *([1, 5, 9], [], 1, 1000, _rules(150, 120, 0, 0, 0), None, 100, 500, 235),
    ),
    (
        "scaleUp with percent policy and previous scale up events",
        *([1, 5, 9], [], 1, 1000, _rules(0, 0, 200, 120, 0), None, 100, 500, 255),
    ),
    (
        "scaleUp with percent policy and previous scale up and down events",
        *([4], [2], 1, 1000, _rules(0, 0, 300, 300, 0), None, 6, 24, 16),
    ),
    (
        "scaleDown with pod policy limitation and previous events",
        *([], [1, 5, 9], 1, 1000, None, _rules(5, 120, 0, 0, 300), 100, 2, 100),
    ),
    (
        "scaleDown with percent policy limitation and previous events",
        *([], [2, 4, 6], 1, 1000, None, _rules(0, 0, 50, 120, 300), 100, 0, 56),
    ),
    (
        "scaleDown with percent policy and previous scale up and down events",
        *([2], [4], 1, 1000, None, _rules(0, 0, 50, 180, 0), 10, 1, 6),
    ),
    (
        "scaleDown with previous events preventing further scale down",
        *([], [10, 10, 10], 1, 1000, None, _rules(0, 0, 10, 120, 300), 100, 0, 100),
    ),
]


@pytest.mark.parametrize(
    "up, down, min_r, max_r, up_rules, down_rules, current, desired, expected",
    [case[1:] for case in SCALING_WITH_RULES],
    ids=[case[0] for case in SCALING_WITH_RULES],
)
def test_scaling_with_rules(
    up: list[int],
    down: list[int],
    min_r: int,
    max_r: int,
    up_rules: ScalingRules | None,
    down_rules: ScalingRules | None,
    current: int,
    desired: int,
    expected: int,
) -> None:
    behavior = Behavior(up_rules or hpa.default_scale_up(), down_rules or hpa.default_scale_down())
    replicas, _ = hpa.rate_limited(
        current,
        desired,
        min_r,
        max_r,
        behavior,
        _uniform(up, 120, NOW) if up else [],
        _uniform(down, 120, NOW) if down else [],
        NOW,
    )
    assert replicas == expected


def test_scale_down_limit_select_min() -> None:
    # TestCalculateScaleDownLimitWithBehaviors' selectPolicy Min case: 5 replicas, 2 pods or
    # 50% a minute, the smaller change wins -> 3
    rules = ScalingRules(300, "Min", (Policy("Pods", 2, 60), Policy("Percent", 50, 60)))
    assert hpa.scale_down_limit(5, [], [], rules, NOW) == 3
    # Disabled: no change at all, either way
    disabled = ScalingRules(0, "Disabled", (Policy("Pods", 4, 15),))
    assert hpa.scale_up_limit(5, [], [], disabled, NOW) == 5
    assert hpa.scale_down_limit(5, [], [], disabled, NOW) == 5


# TestNormalizeDesiredReplicasWithBehavior (stabilizeRecommendationWithBehaviors): name,
# recommendations (replicas, seconds ago), current, desired, up window, down window, expected
STABILIZATION = [
    ("simple scale down stabilization", [(4, 120), (5, 60)], 100, 3, 0, 180, 5),
    ("simple scale up stabilization", [(4, 120), (5, 60)], 1, 7, 300, 0, 4),
    ("no scale down stabilization", [(1, 120), (2, 60)], 100, 3, 300, 0, 3),
    ("no scale up stabilization", [(4, 120), (5, 60)], 1, 3, 0, 300, 3),
    (
        "scale down stabilization, reuse one of obsolete recommendation element",
        *([(10, 600), (4, 60), (5, 120), (9, 540)], 100, 3, 0, 180, 5),
    ),
    (
        "scale up stabilization, reuse one of obsolete recommendation element",
        *([(10, 6000), (6, 60), (5, 120), (9, 180)], 1, 100, 300, 0, 5),
    ),
    (
        "scale up and down stabilization, do not scale up when prenormalized rec goes down",
        *([(2, 6000), (3, 180)], 2, 1, 300, 300, 2),
    ),
    (
        "scale up and down stabilization, do not scale down when prenormalized rec goes up",
        *([(2, 6000), (1, 180)], 2, 3, 300, 300, 2),
    ),
]


@pytest.mark.parametrize(
    "recs, current, desired, up_window, down_window, expected",
    [case[1:] for case in STABILIZATION],
    ids=[case[0] for case in STABILIZATION],
)
def test_stabilization(
    recs: list[tuple[int, int]],
    current: int,
    desired: int,
    up_window: int,
    down_window: int,
    expected: int,
) -> None:
    behavior = Behavior(ScalingRules(up_window), ScalingRules(down_window))
    recommendations = [Recommendation(NOW - ago, r) for r, ago in recs]
    assert hpa.stabilize(recommendations, current, desired, behavior, NOW) == expected


def test_behavior_defaults() -> None:
    # The API's defaulting (GenerateHPAScaleUpRules / GenerateHPAScaleDownRules) of what a
    # behavior block leaves out.
    behavior = Behavior.from_spec({"scaleDown": {"stabilizationWindowSeconds": 60}})
    assert behavior == Behavior(hpa.default_scale_up(), hpa.default_scale_down(60))
    assert Behavior.from_spec(None) is None


# --- a hand-computed scenario with the seed's behavior block ----------------------------------

SEED_BEHAVIOR = {
    "scaleDown": {
        "stabilizationWindowSeconds": 300,
        "policies": [{"type": "Percent", "value": 50, "periodSeconds": 60}],
    },
    "scaleUp": {
        "stabilizationWindowSeconds": 60,
        "selectPolicy": "Max",
        "policies": [
            {"type": "Percent", "value": 100, "periodSeconds": 30},
            {"type": "Pods", "value": 2, "periodSeconds": 30},
        ],
    },
}


def _seed_plan() -> replaying.Plan:
    from inferwatch.generate import autoscaling

    manifest = {
        "metadata": {"name": "model-server", "namespace": "prod"},
        "spec": {
            "scaleTargetRef": {"kind": "Deployment", "name": "model-server"},
            "minReplicas": 2,
            "maxReplicas": 20,
            "metrics": [
                {
                    "type": "Pods",
                    "pods": {
                        "metric": {"name": "inference_queue_length"},
                        "target": {"type": "AverageValue", "averageValue": "10"},
                    },
                }
            ],
            "behavior": SEED_BEHAVIOR,
        },
    }
    return replaying.hpa_plan(manifest, autoscaling.adapter_rules())


def test_seed_behavior_scenario() -> None:
    """The queue's total (all pods) is 20, then 100 from 15 s to 120 s, then 20; per pod it is
    that over the replay's replicas, against 10. By hand:

    * 0 s: 2 replicas at 10 each: within tolerance, 2.
    * 15-45 s: 50 a pod proposes 10, but the 60 s scale-up window still holds 0 s's 2: 2.
    * 60 s: the window's minimum is 10; 100%/30 s or 2 pods/30 s from 2 -> 4 (ScaleUpLimit).
    * 75 s: 25 a pod proposes 10; the +2 at 60 s is within 30 s: still 4.
    * 90 s: the period is clear again: 8 (100% of 4). 105 s: +4 at 90 s: 8.
    * 120 s: 12.5 a pod proposes 10; the limit 16 allows it: 10.
    * 135-405 s: 2 a pod proposes 2 (minReplicas), but the 300 s window holds a 10 until
      120 s leaves it: 10.
    * 420 s: -50% a minute: 5 (ScaleDownLimit). 435-465 s: 5 removed within 60 s: 5.
    * 480 s: from 5, 50% -> 2, which is minReplicas: 2.
    """
    plan = _seed_plan()
    assert plan.sources[0].query == (
        f'sum by (pod) ({promql.POD_QUEUE_LENGTH}{{namespace="prod",pod=~"model-server-.*"}})'
    )
    times = [15.0 * i for i in range(34)]
    load = [20.0] + [100.0] * 8 + [20.0] * 25
    observed = replaying.Observed(times, [load], [[None] * 34], [[2] * 34], [None] * 34)
    result = replaying.replay(plan, observed)
    replicas = {step.at: step.decision.replicas for step in result.steps}
    expected = {0: 2, 15: 2, 45: 2, 60: 4, 75: 4, 90: 8, 105: 8, 120: 10}
    expected |= {135: 10, 405: 10, 420: 5, 435: 5, 465: 5, 480: 2, 495: 2}
    assert {t: replicas[t] for t in expected} == expected
    reasons = {step.at: step.decision.reason for step in result.steps}
    assert reasons[60] == reasons[75] == "ScaleUpLimit"
    assert reasons[420] == reasons[435] == "ScaleDownLimit"
    assert result.steps[1].values == [50.0]  # 100 over the replay's 2 replicas
    assert result.steps[1].proposals == [10]


# --- end to end: a real Prometheus with backfilled series -------------------------------------

PODS = ("model-server-a", "model-server-b")


def _openmetrics(start: float, seconds: int) -> str:
    """Two pods' queue (per pod: 5 for 3 minutes, 40 for 4 minutes, then 1) and p95 (50 ms),
    their deployment's queue (what KEDA reads), and kube-state-metrics' replicas (2), one
    sample a second."""
    queue = [f"# TYPE {promql.POD_QUEUE_LENGTH} gauge"]
    workload = [f"# TYPE {promql.WORKLOAD_QUEUE_LENGTH} gauge"]
    p95 = [f"# TYPE {promql.POD_P95_SECONDS} gauge"]
    replicas = ["# TYPE kube_deployment_status_replicas gauge"]
    for second in range(seconds):
        at = start + second
        value = 5 if second < 180 else 40 if second < 420 else 1
        for pod in PODS:
            labels = f'namespace="prod",pod="{pod}"'
            queue.append(f"{promql.POD_QUEUE_LENGTH}{{{labels}}} {value} {at}")
            p95.append(f"{promql.POD_P95_SECONDS}{{{labels}}} 0.05 {at}")
        labels = 'namespace="prod",workload="model-server"'
        workload.append(f"{promql.WORKLOAD_QUEUE_LENGTH}{{{labels}}} {value * len(PODS)} {at}")
        replicas.append(
            f'kube_deployment_status_replicas{{namespace="prod",deployment="model-server"}} 2 {at}'
        )
    return "\n".join([*queue, *p95, *workload, *replicas, "# EOF", ""])


def _backfill(tmp_path: Path, promtool: str, start: float, seconds: int) -> None:
    """_openmetrics' series as a TSDB block under tmp_path/tsdb (running_prometheus's data)."""
    source = tmp_path / "series.om"
    source.write_text(_openmetrics(start, seconds))
    subprocess.run(
        [
            promtool,
            "tsdb",
            "create-blocks-from",
            "openmetrics",
            str(source),
            str(tmp_path / "tsdb"),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


@pytest.mark.timeout(240)
async def test_replay_command_against_prometheus(
    tmp_path: Path, prometheus: str, promtool: str
) -> None:
    from inferwatch.generate import autoscaling
    from inferwatch.generate.options import GenerateOptions

    seconds = 600
    start = float(int(time.time()) - seconds - 120)
    _backfill(tmp_path, promtool, start, seconds)
    config = {"global": {"scrape_interval": "15s"}}
    async with running_prometheus(prometheus, config, tmp_path) as running:
        end = start + seconds - 1
        plan = replaying.hpa_plan(
            autoscaling.hpa(GenerateOptions(namespace="prod")), autoscaling.adapter_rules()
        )
        observed = replaying.fetch(running.url, plan, start, end)
        queue = next(
            i for i, s in enumerate(plan.sources) if s.metric.name.endswith("queue_length")
        )
        # The adapter's query, summed over the pods, is the deployment's queue at each sync.
        assert observed.values[queue][:3] == [10.0, 10.0, 10.0]
        assert observed.values[queue][12] == 80.0  # 180 s: 40 a pod
        assert observed.actual[0] == 2
        assert all(a == 2 for a in observed.actual)

        out = tmp_path / "out"
        done = subprocess.run(
            [
                *inferwatch_command("autoscale", "replay"),
                *("--prometheus", running.url, "--namespace", "prod"),
                *("--start", str(start), "--end", str(end), "--out", str(out)),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "COLUMNS": "200"},
        )
        assert done.returncode == 0, done.stdout + done.stderr
        result = replaying.replay(plan, observed)
    text = done.stdout
    assert "HPA replay: prod/model-server" in text
    assert "inference_queue_length" in text and "recommended" in text and "actual" in text
    rows = [line for line in text.splitlines() if line.startswith("│") and ":" in line[:12]]
    assert len(rows) == len(replaying.sync_times(start, end, 15.0)) == 40
    recommended = [s.decision.replicas for s in result.steps]
    assert max(recommended) > 2  # the 80-deep queue scales it up
    assert recommended[0] == max(2, plan.spec.min_replicas)
    png = out / "replay.png"
    assert str(png) in text
    assert _png_size(png) == replaying.png_size(result)
    assert "skipped" in text or all(not s.skipped for s in plan.sources)


async def test_replay_keda_scaled_object(tmp_path: Path, prometheus: str, promtool: str) -> None:
    """The KEDA path: the ScaledObject's prometheus triggers' queries, run in-process."""
    import yaml

    from inferwatch.autoscale import cli
    from inferwatch.generate import autoscaling
    from inferwatch.generate.options import GenerateOptions

    seconds = 300
    start = float(int(time.time()) - seconds - 120)
    _backfill(tmp_path, promtool, start, seconds)
    keda = tmp_path / "keda.yaml"
    keda.write_text(
        yaml.safe_dump(autoscaling.keda_scaled_object(GenerateOptions(namespace="prod")))
    )
    async with running_prometheus(prometheus, {"global": {}}, tmp_path) as running:
        plan = cli.load_plan(keda_file=keda)
        assert plan.origin == "KEDA ScaledObject" and plan.namespace == "prod"
        observed = replaying.fetch(running.url, plan, start, start + seconds - 1)
        # Prometheus answers in milliseconds: a start with more digits still finds its syncs
        odd = replaying.fetch(running.url, plan, start + 0.1234567, start + seconds - 1)
    queue = next(i for i, s in enumerate(plan.sources) if "queue" in s.metric.name)
    assert observed.values[queue][0] == 10.0  # the deployment's queue, one element
    assert odd.values[queue][:3] == [10.0, 10.0, 10.0]
    result = replaying.replay(plan, observed, replicas=3)
    assert result.start_replicas == 3
    active = next(i for i, s in enumerate(plan.active) if "queue" in s.metric.name)
    assert result.steps[0].values[active] == pytest.approx(10.0 / 3)  # AverageValue: per pod
    cpu = [s for s in plan.sources if s.kind == "cpu"]
    for source in cpu:  # no cAdvisor series here: skipped, and the notes say so
        assert source.skipped and f"skipped {source.metric.label}" in replaying.notes(result)[0]


async def test_replay_object_metric_of_the_deployment(
    tmp_path: Path, prometheus: str, promtool: str
) -> None:
    """hpa_metric_type Object: the adapter's query names the Deployment and reads the
    per-workload record; the HPA divides an AverageValue by the replicas, so the replay sees
    the same per-pod queue and decides as for the Pods metric, sync by sync."""
    from inferwatch.generate import autoscaling
    from inferwatch.generate.options import GenerateOptions

    seconds = 600
    start = float(int(time.time()) - seconds - 120)
    _backfill(tmp_path, promtool, start, seconds)

    def queue_only(kind: str) -> replaying.Plan:
        manifest = autoscaling.hpa(GenerateOptions(namespace="prod", hpa_metric_type=kind))
        manifest["spec"]["metrics"] = [
            m for m in manifest["spec"]["metrics"] if "inference_queue_length" in str(m)
        ]
        return replaying.hpa_plan(manifest, autoscaling.adapter_rules())

    pods, deployment = queue_only("Pods"), queue_only("Object")
    (source,) = deployment.sources
    assert (source.kind, source.metric.source, source.metric.target_type) == (
        "total",
        "Object",
        "AverageValue",
    )
    assert source.query == (
        f"sum by (workload) ({promql.WORKLOAD_QUEUE_LENGTH}"
        '{namespace="prod",workload="model-server"})'
    )
    async with running_prometheus(prometheus, {"global": {}}, tmp_path) as running:
        end = start + seconds - 1
        by_pods = replaying.fetch(running.url, pods, start, end)
        by_deployment = replaying.fetch(running.url, deployment, start, end)
    assert by_deployment.values == by_pods.values  # the Deployment's total = the pods' sum
    assert by_deployment.values[0][12] == 80.0
    from_pods = replaying.replay(pods, by_pods)
    from_deployment = replaying.replay(deployment, by_deployment)
    decisions = [s.decision.replicas for s in from_deployment.steps]
    assert decisions == [s.decision.replicas for s in from_pods.steps]
    assert max(decisions) > 2  # the 80-deep queue scales it up
    assert [s.values for s in from_deployment.steps] == [s.values for s in from_pods.steps]
