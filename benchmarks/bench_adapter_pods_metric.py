"""Where prometheus-adapter's p95 query for one 10,000-pod Deployment spends its time.

The adapter serves a pods metric: for an HPA it renders its metricsQuery with
``pod=~"<every pod of the HPA's selector>"`` and answers one value per pod. Its series is the
per-pod p95 record (one series per pod, models already summed), so no per-pod record can be
cheaper to read. This loads that record alone for ``--pods`` pods (the pod names of
bench_autoscaling_scale.py, 3 minutes at 15 s) into Prometheus (Debian's, on PATH) and times,
at the data's last timestamp: the query as the adapter renders it; its count() (no
10,000-element answer); the selector alone; the same query with the namespace only, without
the pod-name regex; and its count().

    .venv/bin/python benchmarks/bench_adapter_pods_metric.py [--pods 10000] [--reps 10]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

import bench_autoscaling_scale as scale

from inferwatch.generate import promql


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=10_000)
    parser.add_argument("--reps", type=int, default=10)
    args = parser.parse_args()
    workdir = tempfile.mkdtemp(prefix="bench-adapter-")
    end = (int(time.time()) // 7200) * 7200 - 3600
    record = promql.POD_P95_SECONDS
    namespace = f'namespace="{scale.NAMESPACE}"'
    pods = [scale.pod_name(i) for i in range(args.pods)]
    try:
        source = os.path.join(workdir, "p95.om")
        with open(source, "w") as out:
            out.write(f"# TYPE {record} gauge\n")
            for pod in pods:
                for k in range(13):
                    at = end - scale.STEP * (12 - k)
                    out.write(f'{record}{{{namespace},pod="{pod}"}} 0.09 {at}\n')
            out.write("# EOF\n")
        data = os.path.join(workdir, "data")
        scale.run_measured(
            ["promtool", "tsdb", "create-blocks-from", "openmetrics", "-q", source, data]
        )
        prom = scale.Prometheus(workdir, data)
        _, p95_rule = scale.hpa_adapter_rules()
        rendered = scale.adapter_render(p95_rule["metricsQuery"], record, pods)
        no_regex = promql.ADAPTER_MS_QUERY.replace(
            "<<.Series>>{<<.LabelMatchers>>}", f"{record}{{{namespace}}}"
        ).replace("<<.GroupBy>>", "pod")
        variants = [
            (f"as rendered (pod=~ {args.pods:,} names)", rendered),
            ("count() of it", f"count({rendered})"),
            ("the selector alone", f'{record}{{{namespace},pod=~"{"|".join(pods)}"}}'),
            ("namespace only, no pod regex", no_regex),
            ("count() of that", f"count({no_regex})"),
        ]
        print(f"{args.pods:,} pods; the rendered query has {len(rendered):,} characters")
        print(f"{'adapter p95 query':40} {'median':>8} {'p95':>8} results")
        for name, query in variants:
            t = prom.time_query(query, end, args.reps)
            print(f"{name:40} {scale.fmt(t)} {t.results}")
        prom.stop()
    finally:
        for proc in list(scale.CHILDREN):
            proc.kill()
            proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
