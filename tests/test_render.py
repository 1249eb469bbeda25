"""inferwatch dashboards render: variables filled as Grafana would, clear errors."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from inferwatch import cli
from inferwatch.render import panels, substitute


def test_substitute_fills_variables_and_intervals() -> None:
    expr = (
        'sum(rate(x{namespace=~"$namespace", model_name=~"${model}", gpu=~"${gpu:regex}"}'
        "[$__rate_interval]))"
    )
    assert substitute(expr, "30s") == (
        'sum(rate(x{namespace=~".*", model_name=~".*", gpu=~".*"}[30s]))'
    )


def test_panels_inside_rows_are_drawn() -> None:
    dashboard = {
        "panels": [
            {
                "type": "row",
                "panels": [{"title": "a", "gridPos": {"x": 0, "y": 0, "w": 1, "h": 1}}],
            },
            {"title": "b", "gridPos": {"x": 1, "y": 0, "w": 1, "h": 1}},
            {"title": "no position"},
        ]
    }
    assert [p["title"] for p in panels(dashboard)] == ["a", "b"]


def test_unreachable_prometheus_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = tmp_path / "x.png"
    code = cli.main(
        ["dashboards", "render", "--prometheus", f"http://127.0.0.1:{port}", "--out", str(out)]
    )
    assert code == 1
    assert "inferwatch dashboards render:" in capsys.readouterr().err
    assert not out.exists()
