"""Checking expositions with promtool, the real Prometheus tool."""

from __future__ import annotations

import subprocess


def promtool_check_metrics(promtool: str, text: str) -> str:
    """Run `promtool check metrics` on an exposition; returns its complaints ('' when clean)."""
    done = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return (done.stdout + done.stderr).strip()
