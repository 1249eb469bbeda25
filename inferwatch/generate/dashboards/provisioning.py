"""Grafana's provisioning files: the Prometheus data source and the provider of our dashboards."""

from __future__ import annotations

from inferwatch.generate import yaml_text
from inferwatch.generate.dashboards.panels import TAG
from inferwatch.generate.options import GenerateOptions

# Where the provider reads the JSON from: mount dashboards/*.json here.
DASHBOARDS_PATH = "/var/lib/grafana/dashboards/inferwatch"
# Exemplars carry the OpenTelemetry trace id under this label; Grafana links it to the traces
# data source (Tempo, Jaeger) provisioned with options.traces_datasource_uid.
TRACE_ID_LABEL = "trace_id"

DATASOURCES_FILE = "provisioning/datasources/inferwatch.yaml"
PROVIDERS_FILE = "provisioning/dashboards/inferwatch.yaml"


def provisioning(options: GenerateOptions) -> dict[str, str]:
    """Path under ``dashboards/`` -> YAML for Grafana's provisioning folders."""
    datasources = {
        "apiVersion": 1,
        "datasources": [
            {
                "name": "Prometheus",
                "uid": options.datasource_uid,
                "type": "prometheus",
                "access": "proxy",
                "url": options.prometheus_url,
                "isDefault": True,
                "editable": False,
                "jsonData": {
                    "httpMethod": "POST",
                    # Prometheus' scrape interval: $__rate_interval is at least 4 of them.
                    "timeInterval": options.scrape_interval,
                    "exemplarTraceIdDestinations": [
                        {"name": TRACE_ID_LABEL, "datasourceUid": options.traces_datasource_uid}
                    ],
                },
            }
        ],
    }
    providers = {
        "apiVersion": 1,
        "providers": [
            {
                "name": TAG,
                "orgId": 1,
                "folder": TAG,
                "folderUid": TAG,
                "type": "file",
                "disableDeletion": True,
                "allowUiUpdates": False,
                "updateIntervalSeconds": 30,
                "options": {"path": DASHBOARDS_PATH, "foldersFromFilesStructure": False},
            }
        ],
    }
    return {
        DATASOURCES_FILE: yaml_text.generated(datasources),
        PROVIDERS_FILE: yaml_text.generated(providers),
    }
