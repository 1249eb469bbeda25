"""Generated configuration: dashboards, rules, autoscaling and Alertmanager, from the schema.

``render`` returns every file as text, keyed by its path in the repository; ``inferwatch
generate`` writes them, and a test fails when a committed copy differs from what ``render`` makes.
"""

from __future__ import annotations

import json
from pathlib import Path

from inferwatch.generate import alertmanager, compose, dashboards, kubernetes, rules, yaml_text
from inferwatch.generate.options import GenerateOptions

RECORDING_RULES = "alerts/inferwatch-recording-rules.yaml"
ALERTING_RULES = "alerts/inferwatch-alerts.yaml"
RULE_TESTS = "alerts/tests/inferwatch-alerts-test.yaml"
ALERTMANAGER = "alerts/alertmanager.yml"
RUNBOOKS = "docs/runbooks.md"
KUBERNETES = "deploy/kubernetes"


to_yaml = yaml_text.generated


def render(options: GenerateOptions | None = None) -> dict[str, str]:
    """Every generated file: repository-relative path -> content."""
    options = options or GenerateOptions()
    files = {
        RECORDING_RULES: to_yaml(rules.recording_rules(options)),
        ALERTING_RULES: to_yaml(rules.alerting_rules(options)),
        # promtool resolves rule_files relative to the test file.
        RULE_TESTS: to_yaml(
            rules.rule_tests(
                options,
                [f"../{Path(RECORDING_RULES).name}", f"../{Path(ALERTING_RULES).name}"],
            )
        ),
        ALERTMANAGER: to_yaml(alertmanager.alertmanager_config(options)),
        RUNBOOKS: rules.runbooks(options),
        **kubernetes.manifests(options),
        **compose.files(options),
    }
    for name, dashboard in dashboards.dashboards(options).items():
        files[f"dashboards/{name}"] = json.dumps(dashboard, indent=2, sort_keys=True) + "\n"
    for name, text in dashboards.provisioning(options).items():
        files[f"dashboards/{name}"] = text
    return files


def write(out: Path, options: GenerateOptions | None = None) -> dict[str, str]:
    """Write every generated file under ``out`` that is missing or differs (unchanged files
    keep their modification time); returns each file's status: created, updated or
    unchanged."""
    statuses = {}
    for relative, content in render(options).items():
        path = out / relative
        if path.is_file():
            if path.read_text() == content:
                statuses[relative] = "unchanged"
                continue
            statuses[relative] = "updated"
        else:
            statuses[relative] = "created"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    return statuses


def stale(root: Path, options: GenerateOptions | None = None) -> list[str]:
    """Generated files under ``root`` that are missing or differ from what render() makes."""
    out = []
    for relative, content in render(options).items():
        path = root / relative
        if not path.is_file() or path.read_text() != content:
            out.append(relative)
    return out
