"""inferwatch dashboards render: variables filled as Grafana would, clear errors."""

from __future__ import annotations

import http.server
import json
import math
import threading
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
from support.ports import LOOPBACK, free_port

from inferwatch import cli
from inferwatch.render import format_value, panels, substitute


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
    port = free_port()
    out = tmp_path / "x.png"
    code = cli.main(
        ["dashboards", "render", "--prometheus", f"http://{LOOPBACK}:{port}", "--out", str(out)]
    )
    assert code == 1
    assert "inferwatch dashboards render:" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize(
    ("value", "unit", "shown"),
    [
        (0.0374, "s", "37.4 ms"),
        (0.00025, "s", "250 µs"),
        (2.5, "s", "2.5 s"),
        (0.0, "s", "0 s"),
        (87.0, "ms", "87 ms"),
        (0.0123, "percentunit", "1.23%"),
        (112.4, "reqps", "112 req/s"),
        (2400.0, "reqps", "2.4 kreq/s"),
        (3 * 2**30, "bytes", "3 GiB"),
        (1.41e9, "hertz", "1.41 GHz"),
        (286.0, "watt", "286 W"),
        (71.0, "celsius", "71 °C"),
        (8.0, "short", "8"),
        (15000.0, None, "15k"),
    ],
)
def test_values_are_shown_in_the_panel_unit(value: float, unit: str | None, shown: str) -> None:
    assert format_value(value, unit) == shown


class _FakePrometheus(http.server.BaseHTTPRequestHandler):
    """/api/v1/query_range with made-up data: cumulative buckets for bucket queries (what a
    heatmap asks for), two wavy series for everything else."""

    empty = False  # answer every query with no series

    def do_GET(self) -> None:
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        start, end, step = (float(query[k][0]) for k in ("start", "end", "step"))
        times = [start + i * step for i in range(int((end - start) / step) + 1)]
        if self.empty:
            result: list[dict[str, Any]] = []
        elif "_bucket" in query["query"][0]:
            bounds = ["1", "2", "4", "8", "+Inf"]
            result = [
                {
                    "metric": {"le": le},
                    "values": [[t, str((i + 1) * (1 + math.sin(t / 9)))] for t in times],
                }
                for i, le in enumerate(bounds)
            ]
        else:
            result = [
                {
                    "metric": {"model_name": name, "source": "sidecar"},
                    "values": [[t, str(k + 0.04 * (1 + math.sin(t / 7)))] for t in times],
                }
                for k, name in enumerate(("text-classifier", "image-classifier"))
            ]
        body = json.dumps(
            {"status": "success", "data": {"resultType": "matrix", "result": result}}
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _EmptyPrometheus(_FakePrometheus):
    empty = True


def _render(tmp_path: Path, name: str, handler: type[_FakePrometheus]) -> Any:
    import matplotlib.image

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        out = tmp_path / f"{name}.png"
        code = cli.main(
            [
                *("dashboards", "render", "--dashboard", name, "--minutes", "5"),
                *("--prometheus", f"http://127.0.0.1:{server.server_address[1]}"),
                *("--out", str(out)),
            ]
        )
    finally:
        server.shutdown()
        server.server_close()
    assert code == 0
    return matplotlib.image.imread(out)[:, :, :3]


@pytest.mark.parametrize("name", ["overview", "llm", "gpu", "autoscaling"])
def test_every_dashboard_renders_in_grafana_colours(tmp_path: Path, name: str) -> None:
    pixels = _render(tmp_path, name, _FakePrometheus)
    assert pixels.shape[1] == 1600
    corner = tuple(round(float(c) * 255) for c in pixels[2, 2])
    assert corner == (0x11, 0x12, 0x17)  # the theme's background
    assert pixels.std() > 0.05  # and something drawn on it


def test_a_dashboard_without_data_is_nearly_uniform(tmp_path: Path) -> None:
    # What the demo's check for a blank preview relies on (tests/test_demo.py).
    assert _render(tmp_path, "overview", _EmptyPrometheus).std() < 0.05
