"""An example Alertmanager configuration for inferwatch's alerts."""

from __future__ import annotations

from typing import Any

from inferwatch.generate.options import GenerateOptions

GROUP_BY = ["alertname", "namespace", "model_name"]


def alertmanager_config(options: GenerateOptions) -> dict[str, Any]:
    """Critical alerts page, warnings open tickets; a critical silences its own warning."""

    def receiver(name: str) -> dict[str, Any]:
        return {
            "name": name,
            "webhook_configs": [{"url": options.alert_webhook_url, "send_resolved": True}],
        }

    return {
        "route": {
            "receiver": "tickets",
            "group_by": GROUP_BY,
            "group_wait": "30s",
            "group_interval": "5m",
            "repeat_interval": "4h",
            "routes": [
                {
                    "receiver": "pager",
                    "matchers": ['severity="critical"'],
                    "group_wait": "10s",
                    "repeat_interval": "1h",
                },
            ],
        },
        "inhibit_rules": [
            {
                # A page for a model makes its ticket-level alerts noise.
                "source_matchers": ['severity="critical"'],
                "target_matchers": ['severity="warning"'],
                "equal": GROUP_BY[1:],
            },
            {
                # A model server that is down explains its missing traffic.
                "source_matchers": ['alertname="InferenceSidecarUpstreamDown"'],
                "target_matchers": ['alertname="InferenceNoTraffic"'],
                "equal": ["namespace"],
            },
        ],
        "receivers": [receiver("pager"), receiver("tickets")],
    }
