"""What the HPA's queries cost a real Prometheus at 1,000 and 10,000 pods: raw vs recorded.

For each size, synthetic series of the inference families the rules read are written as
OpenMetrics for ``pods`` pods x 4 models (the labels a PodMonitor adds: namespace, pod,
instance, job, container, endpoint), one sample every 15 s over ``--minutes``, and loaded with
``promtool tsdb create-blocks-from openmetrics``. Per pod and model: the sidecar's
``model_inference_duration_seconds`` histogram (the schema's LATENCY_BUCKETS, +Inf and _count;
no _sum: no rule reads it), ``model_inference_queue_length``, ``model_inference_total`` (success,
error) and ``model_inference_failures_total`` (each reason of each source) for both sources.

Then Prometheus (Debian's, on PATH, no scrape targets) is started on the blocks and, at the
data's last timestamp, via /api/v1/query (POST, as the adapter and KEDA send them):

1. every generated recording rule whose expression reads raw families over at most 5 minutes
   is timed (the cost of one rule evaluation);
2. the autoscaling group's records are backfilled with ``promtool tsdb create-blocks-from rules``
   over the last 2 minutes (15 s steps) and Prometheus restarted on the result;
3. the adapter's metricsQuery templates (rendered for one deployment's pods: a pod=~"a|b|..."
   list, as the adapter renders <<.LabelMatchers>>; and for the Deployment itself, the Object
   metrics of hpa_metric_type Object: workload="serve"), its discovery seriesQuery
   (/api/v1/series, cluster-wide) and the KEDA triggers' queries are timed on the recorded
   series and, as the baseline in the same run, the same query on the raw expression the record
   stands for; KEDA's also as they were on the per-pod records, before the per-workload ones.
   The per-workload records themselves (they read the per-pod ones) are timed once the
   backfilled per-pod records are loaded. "deployment" is one Deployment holding a tenth of
   the pods; "cluster" is one holding them all (the worst case: the adapter query then spans
   every pod; KEDA's reads the records of the 10 Deployments the synthetic pods belong to).

Each query runs ``--reps`` times after one warm-up; the table has the median and p95 in ms and
raw/recorded. Memory: promtool's and Prometheus' peak RSS; disk: the OpenMetrics file (deleted
after loading) and the blocks. Everything lives in one temp dir, removed at exit (also on
Ctrl-C/SIGTERM), and every process started is stopped.

    .venv/bin/python benchmarks/bench_autoscaling_scale.py [--pods 1000,10000] [--minutes 6]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass

import yaml

from inferwatch import schema
from inferwatch.autoscale.replay import render_adapter_query
from inferwatch.generate import autoscaling, promql
from inferwatch.generate.options import GenerateOptions

STEP = 15
MODELS = ("bert", "resnet", "whisper", "llama")
DEPLOYMENTS = 10  # pods are spread over 10 Deployments; the first is "the" deployment
NAMESPACE = "serving"
RECORDING_RULES = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "alerts", "inferwatch-recording-rules.yaml"
)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- synthetic series -------------------------------------------------------------------------


def pod_name(i: int) -> str:
    deployment = f"dep{i % DEPLOYMENTS}" if i % DEPLOYMENTS else "serve"
    return f"{deployment}-7d9f8c6b5-{i:05d}"


def deployment_pods(pods: int) -> list[str]:
    return [pod_name(i) for i in range(0, pods, DEPLOYMENTS)]


def lognormal_cdf(x: float, median: float, sigma: float = 0.6) -> float:
    return 0.5 * (1 + math.erf(math.log(x / median) / (sigma * math.sqrt(2))))


def write_openmetrics(path: str, pods: int, samples: int, end: int) -> int:
    """Series grouped by family, each series' samples in time order; returns the series count.

    Each series is written with one str.join: its samples' " value timestamp" suffixes are
    precomputed per latency profile (16 of them, a pod's median from 30 to 180 ms)."""
    times = [end - STEP * (samples - 1 - k) for k in range(samples)]
    bounds = [*schema.LATENCY_BUCKETS, math.inf]
    les = [promql.le(b) if b != math.inf else "+Inf" for b in bounds]
    per_step = 75  # 5 inferences/s per pod and model

    def suffixes(start: float, increment: float) -> list[str]:
        return [f" {int(start + increment * k)} {t}" for k, t in enumerate(times)]

    profiles = []
    for p in range(16):
        median = 0.03 + 0.01 * p
        fractions = [lognormal_cdf(b, median) if b != math.inf else 1.0 for b in bounds]
        profiles.append([suffixes(10_000 * f, per_step * f) for f in fractions])
    count_suffix = suffixes(10_000, per_step)
    small = [suffixes(10 * n, n / 4) for n in range(1, 8)]  # slow counters (errors)
    gauges = [[f" {(n + k) % 5} {t}" for k, t in enumerate(times)] for n in range(8)]

    def targets(i: int) -> str:
        return (
            f'namespace="{NAMESPACE}",pod="{pod_name(i)}",instance="10.{i >> 16 & 255}.'
            f'{i >> 8 & 255}.{i & 255}:9464",job="{NAMESPACE}/model-server",container="sidecar",'
            'endpoint="metrics"'
        )

    labels = [targets(i) for i in range(pods)]
    series = 0
    with open(path, "w", buffering=1 << 22) as out:

        def emit(prefix: str, values: list[str]) -> None:
            out.write(prefix)
            out.write(("\n" + prefix).join(values))
            out.write("\n")

        name = schema.INFERENCE_DURATION.name
        out.write(f"# TYPE {name} histogram\n")
        for i, target in enumerate(labels):
            profile = profiles[i % 16]
            for model in MODELS:
                base = f'{target},model_name="{model}",model_version="1",source="sidecar"'
                for le, values in zip(les, profile, strict=True):
                    emit(f'{name}_bucket{{{base},le="{le}"}}', values)
                emit(f"{name}_count{{{base}}}", count_suffix)
                series += len(les) + 1
        name = schema.QUEUE_LENGTH.name
        out.write(f"# TYPE {name} gauge\n")
        for i, target in enumerate(labels):
            for m, model in enumerate(MODELS):
                for s, source in enumerate((schema.SOURCE_SIDECAR, schema.SOURCE_APP, "server")):
                    emit(
                        f'{name}{{{target},model_name="{model}",source="{source}"}}',
                        gauges[(i + m + s) % 8],
                    )
                    series += 1
        name = schema.INFERENCE_TOTAL.name.removesuffix("_total")
        out.write(f"# TYPE {name} counter\n")
        for i, target in enumerate(labels):
            for model in MODELS:
                for source in (schema.SOURCE_SIDECAR, schema.SOURCE_APP):
                    base = f'{target},model_name="{model}",model_version="1",source="{source}"'
                    emit(f'{name}_total{{{base},status="{schema.STATUS_SUCCESS}"}}', count_suffix)
                    emit(f'{name}_total{{{base},status="{schema.STATUS_ERROR}"}}', small[i % 7])
                    series += 2
        name = schema.INFERENCE_FAILURES.name.removesuffix("_total")
        out.write(f"# TYPE {name} counter\n")
        for i, target in enumerate(labels):
            for model in MODELS:
                for source, reasons in schema.REASONS_BY_SOURCE.items():
                    base = f'{target},model_name="{model}",model_version="1",source="{source}"'
                    for r, reason in enumerate(reasons):
                        emit(f'{name}_total{{{base},reason="{reason}"}}', small[(i + r) % 7])
                        series += 1
        out.write("# EOF\n")
    return series


# --- processes --------------------------------------------------------------------------------


def run_measured(cmd: list[str], **kwargs: object) -> tuple[float, int]:
    """Run to completion; (wall seconds, peak RSS in MiB) from wait4."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kwargs)
    CHILDREN.append(proc)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{cmd[:4]} failed: {proc.stderr.read().decode()[-2000:]}")
    CHILDREN.remove(proc)
    return time.perf_counter() - started, usage.ru_maxrss // 1024


CHILDREN: list[subprocess.Popen] = []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Prometheus:
    def __init__(self, workdir: str, data: str) -> None:
        self.port = free_port()
        config = os.path.join(workdir, "prometheus.yml")
        with open(config, "w") as f:
            f.write("global:\n  scrape_interval: 15s\n")
        with open(os.path.join(workdir, "prometheus.log"), "ab") as log_file:
            self.proc = subprocess.Popen(
                [
                    "prometheus",
                    f"--config.file={config}",
                    f"--storage.tsdb.path={data}",
                    "--storage.tsdb.retention.time=100y",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                ],
                stdout=subprocess.DEVNULL,
                stderr=log_file,
            )
        CHILDREN.append(self.proc)
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.url + "/-/ready", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        raise SystemExit("Prometheus did not become ready")

    def rss_mib(self) -> tuple[int, int]:
        """(current, peak) resident memory in MiB."""
        fields = {}
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                fields[key] = value
        return int(fields["VmRSS"].split()[0]) // 1024, int(fields["VmHWM"].split()[0]) // 1024

    def call(self, path: str, params: dict[str, str]) -> dict:
        body = urllib.parse.urlencode(params).encode()
        with urllib.request.urlopen(self.url + path, data=body, timeout=300) as r:
            return json.loads(r.read())

    def time_query(self, query: str, at: int, reps: int, series: bool = False) -> Timing:
        path, params = (
            "/api/v1/series",
            {"match[]": query, "start": str(at - 300), "end": str(at)},
        )
        if not series:
            path, params = "/api/v1/query", {"query": query, "time": str(at)}
        try:
            answer = self.call(path, params)  # warm-up
        except urllib.error.HTTPError as e:
            return Timing([], 0, json.loads(e.read()).get("error", str(e))[:80])
        results = len(answer["data"] if series else answer["data"]["result"])
        durations = []
        started = time.perf_counter()
        self.call(path, params)
        durations.append((time.perf_counter() - started) * 1000)
        if durations[0] > 1000:
            reps = min(reps, 3)  # seconds each: a few are enough
        for _ in range(reps - 1):
            started = time.perf_counter()
            self.call(path, params)
            durations.append((time.perf_counter() - started) * 1000)
        return Timing(durations, results)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        CHILDREN.remove(self.proc)


@dataclass
class Timing:
    ms: list[float]
    results: int
    error: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.ms) if self.ms else math.nan

    @property
    def p95(self) -> float:
        if not self.ms:
            return math.nan
        ordered = sorted(self.ms)
        return ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]


# --- the queries ----------------------------------------------------------------------------


def adapter_render(template: str, record: str, pods: list[str]) -> str:
    """A metricsQuery as prometheus-adapter renders it for a pods metric of these pods."""
    matchers = f'namespace="{NAMESPACE}",pod=~"{"|".join(pods)}"'
    return (
        template.replace("<<.Series>>", record)
        .replace("<<.LabelMatchers>>", matchers)
        .replace("<<.GroupBy>>", "pod")
    )


def with_matchers(expr: str, family: str, matchers: str) -> str:
    """``expr`` with ``matchers`` added to each selector of ``family`` in it."""
    out = []
    rest = expr
    while (at := rest.find(family)) >= 0:
        end = at + len(family)
        out.append(rest[:end])
        rest = rest[end:]
        if rest.startswith("{"):
            out.append("{" + matchers + ",")
            rest = rest[1:]
        elif not rest[:1].isalnum() and rest[:1] != "_":
            out.append("{" + matchers + "}")
    return "".join(out) + rest


def raw_p95(matchers: str, labels: tuple[str, ...]) -> str:
    """The p95 straight from the raw histogram: what the records stand for (and, per
    deployment, what the KEDA trigger sent before it read the per-pod bucket record)."""
    sidecar = "{" + f'source="{schema.SOURCE_SIDECAR}",{matchers}' + "}"
    return promql.quantile(95, schema.INFERENCE_DURATION, sidecar, labels, "1m")


def hpa_queries(pods: list[str], keda_regex: str, keda_workload: str) -> list[tuple[str, str, str]]:
    """(name, query on the records, the same on the raw families) for one deployment's pods;
    KEDA's are also timed as they were before the per-workload records (on the per-pod ones,
    pods picked by ``keda_regex``)."""
    queue, p95 = promql.POD_QUEUE_LENGTH, promql.POD_P95_SECONDS
    pod_list = f'namespace="{NAMESPACE}",pod=~"{"|".join(pods)}"'
    raw_queue = promql.sum_by(promql.POD_LABELS, f"{schema.QUEUE_LENGTH.name}{{{pod_list}}}")
    adapter_queue, adapter_p95 = (r["metricsQuery"] for r in hpa_adapter_rules())

    def adapter_raw(template: str, expr: str) -> str:
        inner = template.replace("<<.Series>>{<<.LabelMatchers>>}", f"({expr})")
        return inner.replace("<<.GroupBy>>", "pod")

    object_queue, object_p95 = (
        render_adapter_query(rule, "deployment", NAMESPACE, '="serve"')
        for rule in hpa_adapter_rules("deployment")
    )
    keda_workload_sel = (promql.eq("namespace", NAMESPACE), keda_workload)
    keda_sel = f'namespace="{NAMESPACE}",pod=~"{keda_regex}"'
    per_pod_queue = f"sum({queue}{{{keda_sel}}}) or vector(0)"
    per_pod_buckets = promql.sum_by(["le"], f"{promql.POD_LATENCY_BUCKETS}{{{keda_sel}}}")
    per_pod_p95 = promql.ms_without_idle(f"histogram_quantile(0.95, {per_pod_buckets})")
    return [
        (
            "adapter queue",
            adapter_render(adapter_queue, queue, pods),
            adapter_raw(adapter_queue, raw_queue),
        ),
        (
            "adapter p95",
            adapter_render(adapter_p95, p95, pods),
            adapter_raw(adapter_p95, raw_p95(pod_list, promql.POD_LABELS)),
        ),
        # hpa_metric_type Object: the adapter names the Deployment, not its pods. Its record
        # has a few series per workload whatever the pod count, so "cluster" reads "serve"'s.
        (
            "adapter queue, Object metric",
            object_queue,
            f"sum({schema.QUEUE_LENGTH.name}{{{keda_sel}}})",
        ),
        (
            "adapter p95, Object metric",
            object_p95,
            promql.ms_without_idle(raw_p95(keda_sel, ())),
        ),
        (
            "KEDA queue",
            promql.workload_total(promql.WORKLOAD_QUEUE_LENGTH, keda_workload_sel),
            f"sum({schema.QUEUE_LENGTH.name}{{{keda_sel}}}) or vector(0)",
        ),
        (
            "KEDA queue on the per-pod record (before)",
            per_pod_queue,
            f"sum({schema.QUEUE_LENGTH.name}{{{keda_sel}}}) or vector(0)",
        ),
        (
            "KEDA p95",
            promql.deployment_p95_ms(keda_workload_sel),
            f"{promql.ms_without_idle(raw_p95(keda_sel, ()))} or vector(0)",
        ),
        (
            "KEDA p95 on the per-pod buckets (before)",
            f"{per_pod_p95} or vector(0)",
            f"{promql.ms_without_idle(raw_p95(keda_sel, ()))} or vector(0)",
        ),
    ]


def hpa_adapter_rules(resource: str = "pod") -> list[dict]:
    """The adapter's rules for the queue length and the p95 of pods (Pods metrics) or of a
    Deployment (Object metrics), in that order."""
    rules = {
        r["name"]["as"]: r
        for r in autoscaling.adapter_rules()
        if render_adapter_query(r, resource, NAMESPACE, '=""') is not None
    }
    return [rules[autoscaling.QUEUE_METRIC], rules[autoscaling.P95_METRIC]]


def autoscaling_group() -> list[dict]:
    with open(RECORDING_RULES) as f:
        groups = yaml.safe_load(f)["groups"]
    return next(g for g in groups if g["name"] == "inferwatch.autoscaling")["rules"]


def timed_rules() -> list[tuple[str, str]]:
    """Recording rules reading raw families over windows this data covers (<= 5m)."""
    with open(RECORDING_RULES) as f:
        groups = yaml.safe_load(f)["groups"]
    chosen = []
    for group in groups:
        for rule in group["rules"]:
            expr = " ".join(rule["expr"].split())
            reads_records = ":" in expr.replace("[1m]", "").replace("[5m]", "")
            if reads_records or (not any(w in expr for w in ("[1m]", "[5m]")) and "[" in expr):
                continue
            if "time_to_first_token" in expr or "time_per_output_token" in expr:
                continue  # LLM families: not in this data
            chosen.append((rule["record"], expr))
    return chosen


# --- one size ---------------------------------------------------------------------------------


def run_size(pods: int, minutes: int, reps: int, workdir: str, end: int) -> dict:
    root = os.path.join(workdir, f"pods{pods}")
    os.makedirs(root)
    data = os.path.join(root, "data")
    samples = minutes * 60 // STEP + 1
    om = os.path.join(root, "series.om")
    log(f"{pods} pods: writing OpenMetrics ({samples} samples per series)")
    started = time.perf_counter()
    n_series = write_openmetrics(om, pods, samples, end)
    om_bytes = os.path.getsize(om)
    generate_s = time.perf_counter() - started
    log(f"  {n_series:,} series, {om_bytes / 2**30:.2f} GiB in {generate_s:.0f} s; promtool")
    load_s, promtool_rss = run_measured(
        ["promtool", "tsdb", "create-blocks-from", "openmetrics", "-q", om, data]
    )
    os.remove(om)
    log(f"  blocks in {load_s:.0f} s (promtool peak RSS {promtool_rss} MiB)")
    info: dict = {
        "pods": pods,
        "series": n_series,
        "samples": n_series * samples,
        "om_gib": om_bytes / 2**30,
        "generate_s": generate_s,
        "load_s": load_s,
        "promtool_rss": promtool_rss,
    }

    prom = Prometheus(root, data)
    rules = []
    for record, expr in timed_rules():
        reps_here = reps if "pod" in record else max(3, reps // 4)
        log(f"  rule {record}")
        rules.append((record, prom.time_query(expr, end, reps_here)))
    info["rules"] = rules
    info["rss_raw"] = prom.rss_mib()
    prom.stop()

    log("  backfilling the autoscaling records (promtool create-blocks-from rules)")
    # promtool evaluates each rule through the query API: a rule reading another record
    # needs that record's blocks loaded first, so records go in dependency order.
    group = autoscaling_group()
    passes = [
        [r for r in group if ":" not in r["expr"]],
        [r for r in group if ":" in r["expr"]],
    ]
    backfill_s = 0.0
    for n, rules_here in enumerate(passes):
        only = os.path.join(root, f"autoscaling-rules-{n}.yaml")
        with open(only, "w") as f:
            yaml.safe_dump({"groups": [{"name": "inferwatch.autoscaling", "rules": rules_here}]}, f)
        prom = Prometheus(root, data)
        rules_dir = os.path.join(root, f"rules-blocks-{n}")
        seconds, _ = run_measured(
            [
                "promtool",
                "tsdb",
                "create-blocks-from",
                "rules",
                f"--start={end - 120}",
                f"--end={end + 1}",
                "--eval-interval=15s",
                f"--url={prom.url}",
                f"--output-dir={rules_dir}",
                only,
            ],
            cwd=root,
        )
        backfill_s += seconds
        prom.stop()
        for block in os.listdir(rules_dir):
            shutil.move(os.path.join(rules_dir, block), os.path.join(data, block))
    info["backfill_s"] = backfill_s
    info["block_mib"] = du(data) / 2**20

    prom = Prometheus(root, data)
    # The per-workload records read the per-pod ones: one evaluation, on the backfilled records.
    for rule in autoscaling_group():
        if rule["record"].startswith("namespace_workload"):
            log(f"  rule {rule['record']}")
            expr = " ".join(rule["expr"].split())
            info["rules"].append((rule["record"], prom.time_query(expr, end, reps)))
    deployment = deployment_pods(pods)
    everyone = [pod_name(i) for i in range(pods)]
    hpa = []
    # "cluster": the synthetic pods belong to 10 Deployments; KEDA reads all 10 workloads' records.
    for scope, pod_list, regex, workload in (
        (f"deployment ({len(deployment)} pods)", deployment, "serve-.*", promql.workload("serve")),
        (f"cluster ({pods} pods)", everyone, ".+", promql.matches("workload", ".+")),
    ):
        for name, recorded, raw in hpa_queries(pod_list, regex, workload):
            log(f"  {scope}: {name}")
            rec = prom.time_query(recorded, end, reps)
            base = prom.time_query(raw, end, reps)
            hpa.append((f"{name}, {scope}", rec, base))
    discovery = hpa_adapter_rules()
    for rule, raw_family in zip(
        discovery, (schema.QUEUE_LENGTH.name, schema.INFERENCE_DURATION.bucket), strict=True
    ):
        raw = promql.adapter_series(raw_family)
        rec = prom.time_query(rule["seriesQuery"], end, max(3, reps // 4), series=True)
        base = prom.time_query(raw, end, max(3, reps // 4), series=True)
        metric = rule["name"]["as"]
        hpa.append((f"adapter discovery {metric} (series, cluster)", rec, base))
    info["hpa"] = hpa
    info["rss_end"] = prom.rss_mib()
    prom.stop()
    shutil.rmtree(root)
    return info


def du(path: str) -> int:
    total = 0
    for folder, _, files in os.walk(path):
        total += sum(os.path.getsize(os.path.join(folder, f)) for f in files)
    return total


def fmt(t: Timing) -> str:
    if t.error:
        return f"error: {t.error}"
    return f"{t.median:8.1f} {t.p95:8.1f}"


def report(results: list[dict], minutes: int, reps: int) -> None:
    print(f"\nPrometheus {prometheus_version()}, {os.cpu_count()} CPUs; {minutes} min at 15 s;")
    print(f"median and p95 of {reps} queries (ms), at the data's last timestamp\n")
    for info in results:
        print(
            f"## {info['pods']:,} pods x {len(MODELS)} models: {info['series']:,} series, "
            f"{info['samples'] / 1e6:.0f} M samples; OpenMetrics {info['om_gib']:.2f} GiB "
            f"(written in {info['generate_s']:.0f} s), blocks {info['block_mib']:.0f} MiB "
            f"(promtool {info['load_s']:.0f} s, peak RSS {info['promtool_rss']} MiB; rules "
            f"backfill {info['backfill_s']:.0f} s); Prometheus RSS after the rules "
            f"{info['rss_raw'][0]} MiB (peak {info['rss_raw'][1]}), after the HPA queries "
            f"{info['rss_end'][0]} MiB (peak {info['rss_end'][1]})"
        )
        print(f"\n{'recording rule (one evaluation)':70} {'median':>8} {'p95':>8} results")
        for record, t in info["rules"]:
            print(f"{record:70} {fmt(t)} {t.results}")
        print(
            f"\n{'HPA query':62} {'recorded':>17} {'raw':>17} {'raw/rec':>8}\n"
            f"{'':62} {'median':>8} {'p95':>8} {'median':>8} {'p95':>8}"
        )
        for name, rec, raw in info["hpa"]:
            ratio = f"{raw.median / rec.median:7.1f}x"
            print(f"{name:62} {fmt(rec):>17} {fmt(raw):>17} {ratio:>8}")
        print()


def prometheus_version() -> str:
    out = subprocess.run(["prometheus", "--version"], capture_output=True, text=True)
    return (out.stdout or out.stderr).split()[2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", default="1000,10000")
    parser.add_argument("--minutes", type=int, default=6)
    parser.add_argument("--reps", type=int, default=20)
    args = parser.parse_args()
    for tool in ("prometheus", "promtool"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is not on PATH (Debian: apt-get install prometheus)")
    GenerateOptions()  # the generated rules are the committed ones
    workdir = tempfile.mkdtemp(prefix="bench-autoscaling-")

    def cleanup(*_: object) -> None:
        for proc in list(CHILDREN):
            proc.kill()
            proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)

    def on_signal(signum: int, _frame: object) -> None:
        cleanup()
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    # In the middle of a 2-hour block range, an hour back: one block per size.
    end = (int(time.time()) // 7200) * 7200 - 3600
    try:
        results = [
            run_size(int(p), args.minutes, args.reps, workdir, end) for p in args.pods.split(",")
        ]
    finally:
        cleanup()
    report(results, args.minutes, args.reps)


if __name__ == "__main__":
    main()
