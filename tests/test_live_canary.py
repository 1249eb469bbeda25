"""The canary checks and the version comparison panels against the real thing.

A real Prometheus scrapes a real sidecar in front of a model server that serves two versions of
one model: version 1 fast and healthy, version 2 slow (0.6 s, above the default 0.5 s p95 limit)
and failing a quarter of its requests with 500s. The generated Argo Rollouts AnalysisTemplate's
and Flagger MetricTemplates' queries, their variables filled in as Argo and Flagger fill them,
run through Prometheus' HTTP API; judged by their successCondition / thresholdRange, version 2
as the canary fails every check and version 1 as the canary passes every one. The overview
dashboard's version panels show both versions.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from support.canary import argo_phase, flagger_passes, render_argo, render_flagger
from support.polling import poll
from support.prometheus import running_prometheus, sidecar_job
from support.sidecar import running_sidecar
from support.upstreams import running_upstream, v2_body

from inferwatch.generate import canary, dashboards
from inferwatch.generate.options import GenerateOptions
from inferwatch.render import substitute

NAMESPACE = "serving"
WORKLOAD = "model-server"
POD = f"{WORKLOAD}-7d9f8b6c5d-x7k2p"  # a Deployment's (or Rollout's) pod, as Kubernetes names it
MODEL = "resnet"
GOOD, BAD = "1", "2"
SLOW_SECONDS = 0.6
RATE_INTERVAL = "15s"
VERSION_PANELS = (
    "Request rate per version",
    "Error ratio per version",
    "p50 latency per version",
    "p95 latency per version",
    "p99 latency per version",
)


async def values(http: aiohttp.ClientSession, prom: str, expr: str) -> list[float]:
    """The instant vector's values, as Argo's and Flagger's Prometheus providers read them."""
    async with http.get(f"{prom}/api/v1/query", params={"query": expr}) as response:
        doc = await response.json()
    assert doc["status"] == "success", (expr, doc)
    assert doc["data"]["resultType"] == "vector", expr
    return [float(r["value"][1]) for r in doc["data"]["result"]]


async def series(http: aiohttp.ClientSession, prom: str, expr: str) -> list[dict[str, Any]]:
    async with http.get(f"{prom}/api/v1/query", params={"query": expr}) as response:
        doc = await response.json()
    assert doc["status"] == "success", (expr, doc)
    result: list[dict[str, Any]] = doc["data"]["result"]
    return result


@pytest.mark.timeout(180)
async def test_canary_checks_fail_the_bad_version_and_pass_the_good_one(
    tmp_path: Path, prometheus: str
) -> None:
    options = GenerateOptions(namespace=NAMESPACE, deployment=WORKLOAD)
    template = canary.analysis_template(options)
    metric_templates = canary.metric_templates(options)
    flagger_metrics = canary.flagger_canary(options)["spec"]["analysis"]["metrics"]
    overview = dashboards.overview(options)
    version_queries = [
        (title, substitute(expr, RATE_INTERVAL))
        for title, expr in dashboards.panel_queries(overview)
        if title in VERSION_PANELS
    ]
    assert {title for title, _ in version_queries} == set(VERSION_PANELS)

    async with (
        running_upstream() as upstream,
        running_sidecar(upstream.url) as sidecar,
    ):
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
            "scrape_configs": [sidecar_job(f"127.0.0.1:{sidecar.admin_port}", NAMESPACE, POD)],
        }
        async with (
            running_prometheus(prometheus, config, tmp_path, ready_timeout=30) as running,
            aiohttp.ClientSession() as http,
        ):
            prom = running.url
            proxy = f"http://127.0.0.1:{sidecar.proxy_port}"
            statuses: dict[str, list[int]] = {GOOD: [], BAD: []}

            async def infer(version: str, query: str = "") -> None:
                url = f"{proxy}/v2/models/{MODEL}/versions/{version}/infer{query}"
                async with http.post(url, data=v2_body(1)) as response:
                    await response.read()
                    statuses[version].append(response.status)

            async def good_load() -> None:
                while True:
                    await asyncio.gather(*(infer(GOOD) for _ in range(4)))
                    await asyncio.sleep(0.05)

            async def bad_load() -> None:
                while True:  # slow, and one request in four answered 500
                    slow = f"?sleep={SLOW_SECONDS}"
                    await asyncio.gather(
                        infer(BAD, slow + "&status=500"), *(infer(BAD, slow) for _ in range(3))
                    )

            def argo(canary_version: str, stable_version: str) -> dict[str, dict[str, str]]:
                args = {
                    "namespace": NAMESPACE,
                    "workload": WORKLOAD,
                    "model": MODEL,
                    "canary-version": canary_version,
                    "stable-version": stable_version,
                }
                return {
                    m["name"]: {
                        **m,
                        "query": render_argo(m["provider"]["prometheus"]["query"], args),
                    }
                    for m in template["spec"]["metrics"]
                }

            def flagger(canary_version: str, stable_version: str) -> dict[str, dict[str, Any]]:
                model = {"namespace": NAMESPACE, "target": WORKLOAD, "interval": "30s"}
                variables = {
                    "model": MODEL,
                    "canary_version": canary_version,
                    "stable_version": stable_version,
                }
                queries = {t["metadata"]["name"]: t["spec"]["query"] for t in metric_templates}
                return {
                    m["name"]: {
                        **m,
                        "query": render_flagger(
                            queries[m["templateRef"]["name"]], model, variables
                        ),
                    }
                    for m in flagger_metrics
                }

            async def judgements() -> dict[str, Any]:
                out: dict[str, Any] = {}
                for label, canary_version, stable_version in (
                    ("bad canary", BAD, GOOD),
                    ("good canary", GOOD, BAD),
                ):
                    for name, metric in argo(canary_version, stable_version).items():
                        result = await values(http, prom, metric["query"])
                        out[f"argo {label} {name}"] = (argo_phase(metric, result), result)
                    for name, metric in flagger(canary_version, stable_version).items():
                        result = await values(http, prom, metric["query"])
                        out[f"flagger {label} {name}"] = (flagger_passes(metric, result), result)
                return out

            expected = {
                **{f"argo bad canary {c.name}": "Failed" for c in canary.checks(options)},
                **{f"argo good canary {c.name}": "Successful" for c in canary.checks(options)},
                **{f"flagger bad canary {c.name}": False for c in canary.checks(options)},
                **{f"flagger good canary {c.name}": True for c in canary.checks(options)},
            }
            seen: dict[str, Any] = {}

            async def judged_as_expected() -> bool:
                seen.update(await judgements())
                return {k: v[0] for k, v in seen.items()} == expected

            async def versions_seen() -> dict[str, set[str]]:
                """Panel title -> the versions of MODEL it shows a finite value for."""
                shown: dict[str, set[str]] = {title: set() for title in VERSION_PANELS}
                for title, expr in version_queries:
                    for s in await series(http, prom, expr):
                        finite = math.isfinite(float(s["value"][1]))
                        if finite and s["metric"].get("model_name") == MODEL:
                            shown[title].add(s["metric"]["model_version"])
                return shown

            async def panels_show_both_versions() -> bool:
                return all(v == {GOOD, BAD} for v in (await versions_seen()).values())

            load = [asyncio.create_task(good_load()), asyncio.create_task(bad_load())]
            try:
                try:
                    await poll(judged_as_expected, "every check to judge", timeout=90, interval=0.5)
                except AssertionError:
                    wrong = {k: v for k, v in seen.items() if v[0] != expected[k]}
                    pytest.fail(f"checks judged otherwise (judgement, values): {wrong}")
                try:
                    await poll(panels_show_both_versions, timeout=30, interval=0.5)
                except AssertionError:
                    pytest.fail(f"version panels: {await versions_seen()}")
            finally:
                for task in load:
                    task.cancel()
                for task in load:
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            assert set(statuses[GOOD]) == {200}
            assert set(statuses[BAD]) == {200, 500}
            # The numbers behind the judgements: the bad version's errors and latency.
            bad_error_ratio = seen["argo bad canary error-ratio"][1][0]
            assert 0.1 < bad_error_ratio < 0.5
            assert seen["argo good canary error-ratio"][1] == [0.0]
            assert seen["argo bad canary p95-latency"][1][0] > SLOW_SECONDS - 0.1
