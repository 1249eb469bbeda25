"""An example Alertmanager configuration for inferwatch's alerts."""

from __future__ import annotations

from typing import Any

from inferwatch.generate import promql
from inferwatch.generate.options import GenerateOptions

GROUP_BY = ["alertname", "namespace", "model_name"]


def alertmanager_config(options: GenerateOptions) -> dict[str, Any]:
    """Critical alerts page, warnings open tickets; a critical silences its own warning."""

    def wait(seconds: float) -> str:
        # window_scale shrinks group timings along with the rule windows (never under 1 s), so
        # a burn that fires for a few seconds in a scaled-down run is still delivered.
        return promql.duration(max(1.0, round(seconds * options.window_scale)))

    def receiver(name: str) -> dict[str, Any]:
        return {
            "name": name,
            "webhook_configs": [{"url": options.alert_webhook_url, "send_resolved": True}],
        }

    return {
        "route": {
            "receiver": "tickets",
            "group_by": GROUP_BY,
            "group_wait": wait(30),
            "group_interval": wait(300),
            "repeat_interval": wait(4 * 3600),
            "routes": [
                {
                    "receiver": "pager",
                    "matchers": ['severity="critical"'],
                    "group_wait": wait(10),
                    "repeat_interval": wait(3600),
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
