"""Configuration: flags > INFERWATCH_SIDECAR_* env > YAML > defaults; bad values name the field."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from inferwatch.sidecar.config import (
    Address,
    ConfigError,
    SidecarConfig,
    add_arguments,
    from_dict,
    load_config,
)


def flags(*argv: str) -> dict[str, object]:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    add_arguments(parser)
    return vars(parser.parse_args(list(argv)))


def test_defaults_need_only_the_upstream() -> None:
    config = load_config({"upstream": "http://127.0.0.1:8000"}, env={})
    assert config.upstream == "http://127.0.0.1:8000"
    assert config.listen == Address("", 8080)
    assert config.admin == Address("", 9464)
    assert config.metrics_url == "http://127.0.0.1:8000/metrics"
    assert config.max_concurrency == 0
    assert config.health_path == "/health"
    assert config.ready_path == "/ready"


def test_layers_flags_over_env_over_yaml(tmp_path: Path) -> None:
    path = tmp_path / "sidecar.yaml"
    path.write_text(
        "upstream: http://model:8000\n"
        "listen: ':9000'\n"
        "max_concurrency: 4\n"
        "queue_timeout: 2.5\n"
        "routes:\n"
        "  - {path: '/predict', model: iris}\n"
        "allow_models: [iris, resnet]\n"
    )
    env = {"INFERWATCH_SIDECAR_MAX_CONCURRENCY": "8", "INFERWATCH_SIDECAR_LISTEN": "127.0.0.1:7000"}
    config = load_config(flags("--config", str(path), "--listen", "[::1]:7100"), env=env)
    assert config.upstream == "http://model:8000"  # YAML
    assert config.max_concurrency == 8  # env beats YAML
    assert config.listen == Address("::1", 7100)  # flag beats env
    assert str(config.listen) == "[::1]:7100"
    assert config.queue_timeout == 2.5
    assert config.queue_limit == 80  # Knative's 10 x concurrency
    assert config.routes == (("/predict", "iris"),)
    assert config.allow_models == ("iris", "resnet")


def test_config_file_from_env_and_a_sidecar_section(tmp_path: Path) -> None:
    path = tmp_path / "all.yaml"
    path.write_text("sidecar:\n  upstream: http://m:1\n  max-models: 7\n")
    config = load_config({}, env={"INFERWATCH_SIDECAR_CONFIG": str(path)})
    assert (config.upstream, config.max_models) == ("http://m:1", 7)


def test_repeated_route_flags_and_env_routes() -> None:
    config = load_config(
        flags("--upstream", "http://m:1", "--route", "/a=m1", "--route", "^/b/.*$=m2"), env={}
    )
    assert config.routes == (("/a", "m1"), ("^/b/.*$", "m2"))
    config = load_config(
        {},
        env={"INFERWATCH_SIDECAR_UPSTREAM": "http://m:1", "INFERWATCH_SIDECAR_ROUTES": "/x=a,/y=b"},
    )
    assert config.routes == (("/x", "a"), ("/y", "b"))


@pytest.mark.parametrize(
    ("layer", "field", "value", "message"),
    [
        (
            "flag",
            "max_concurrency",
            "lots",
            "max_concurrency (command line, --max-concurrency): must be an integer",
        ),
        (
            "env",
            "upstream_timeout",
            "-3",
            "upstream_timeout (environment, INFERWATCH_SIDECAR_UPSTREAM_TIMEOUT): must be > 0",
        ),
        (
            "env",
            "listen",
            "localhost:99999",
            "listen (environment, INFERWATCH_SIDECAR_LISTEN): port must be 0-65535, got 99999",
        ),
        (
            "flag",
            "upstream",
            "ftp://x",
            "upstream (command line, --upstream): must be an http:// "
            "or https:// URL with a host, got 'ftp://x'",
        ),
        (
            "flag",
            "upstream",
            "http://x:8000/v2",
            "upstream (command line, --upstream): must be scheme://host[:port] without a path",
        ),
        (
            "env",
            "gpu_metrics",
            "maybe",
            "gpu_metrics (environment, INFERWATCH_SIDECAR_GPU_METRICS): must be true or false",
        ),
        (
            "flag",
            "health_path",
            "health",
            "health_path (command line, --health-path): must be a path starting with '/'",
        ),
        (
            "env",
            "routes",
            "/a(=m",
            "routes (environment, INFERWATCH_SIDECAR_ROUTES): bad path regex '/a('",
        ),
        (
            "env",
            "scrape_timeout",
            "nan",
            "scrape_timeout (environment, "
            "INFERWATCH_SIDECAR_SCRAPE_TIMEOUT): must be a finite number of seconds",
        ),
    ],
)
def test_bad_values_name_the_field_and_where_it_came_from(
    layer: str, field: str, value: str, message: str
) -> None:
    given = {"upstream": "http://m:1"}
    env: dict[str, str] = {}
    if layer == "flag":
        given[field] = value
    else:
        env[f"INFERWATCH_SIDECAR_{field.upper()}"] = value
    with pytest.raises(ConfigError) as err:
        load_config(given, env=env)
    assert str(err.value).startswith(message)


def test_yaml_errors(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("upstream: http://m:1\nmax_concurency: 3\n")
    with pytest.raises(ConfigError, match=r"unknown field 'max_concurency'"):
        load_config({}, env={}, path=str(path))
    path.write_text("upstream: http://m:1\nqueue_timeout: soon\n")
    with pytest.raises(
        ConfigError, match=rf"queue_timeout \(config file {path}, queue_timeout\): must be a number"
    ):
        load_config({}, env={}, path=str(path))
    path.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config({}, env={}, path=str(path))
    with pytest.raises(ConfigError, match="No such file"):
        load_config({}, env={}, path=str(tmp_path / "missing.yaml"))


def test_checks_across_fields() -> None:
    with pytest.raises(ConfigError, match="upstream: required"):
        load_config({}, env={})
    with pytest.raises(ConfigError, match="max_queue: needs max_concurrency > 0"):
        load_config({"upstream": "http://m:1", "max_queue": "5"}, env={})
    with pytest.raises(ConfigError, match="listen: workers > 1 need a fixed port"):
        load_config({"upstream": "http://m:1", "workers": "2", "listen": ":0"}, env={})


def test_round_trip_for_worker_processes() -> None:
    config = load_config(
        {"upstream": "http://m:1", "routes": ["/a=b"], "allow_models": "x,y", "listen": ":81"},
        env={},
    )
    assert from_dict(config.to_dict()) == config
    assert SidecarConfig(upstream="http://m:1").metrics_url == "http://m:1/metrics"
    assert (
        load_config({"upstream": "http://m:1", "upstream_metrics_url": "none"}, env={}).metrics_url
        is None
    )


def test_example_config_is_valid() -> None:
    example = Path(__file__).parent.parent / "examples" / "sidecar.yaml"
    config = load_config({}, env={}, path=str(example))
    assert config.upstream == "http://127.0.0.1:8000"
    assert config.max_concurrency == 8


def test_cli_reports_a_bad_value_and_exits_2() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "inferwatch",
            "sidecar",
            "--upstream",
            "http://m:1",
            "--max-concurrency",
            "-1",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "inferwatch sidecar: bad configuration: max_concurrency (command line, "
        "--max-concurrency): must be >= 0"
    )


def test_grpc_is_off_unless_given() -> None:
    config = load_config({"upstream": "http://127.0.0.1:8000"}, env={})
    assert config.grpc_listen is None and config.grpc_upstream == ""
    assert config.grpc_max_message_bytes == 256 * 1024 * 1024


def test_grpc_fields_from_flags_env_and_yaml(tmp_path: Path) -> None:
    path = tmp_path / "sidecar.yaml"
    path.write_text(
        "upstream: http://model:8000\ngrpc_listen: ':8081'\ngrpc_upstream: 'model:8001'\n"
    )
    config = load_config(flags("--config", str(path)), env={})
    assert (config.grpc_listen, config.grpc_upstream) == (Address("", 8081), "model:8001")
    env = {"INFERWATCH_SIDECAR_GRPC_UPSTREAM": "[::1]:9001"}
    config = load_config(flags("--config", str(path), "--grpc-listen", "127.0.0.1:0"), env=env)
    assert (config.grpc_listen, config.grpc_upstream) == (Address("127.0.0.1", 0), "[::1]:9001")
    # A worker process gets the same configuration back.
    assert from_dict(config.to_dict()) == config
    assert from_dict(load_config({"upstream": "http://m:1"}, env={}).to_dict()).grpc_listen is None


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"grpc_listen": ":8081"}, "grpc_upstream: needed with grpc_listen"),
        ({"grpc_upstream": "m:8001"}, "grpc_listen: needed with grpc_upstream"),
        ({"grpc_listen": ":8081", "grpc_upstream": "http://m:8001"}, "grpc_upstream"),
        ({"grpc_listen": ":8081", "grpc_upstream": "m"}, "grpc_upstream"),
        ({"grpc_listen": ":8081", "grpc_upstream": ":8001"}, "grpc_upstream"),
        ({"grpc_listen": "nope", "grpc_upstream": "m:8001"}, "grpc_listen"),
        ({"grpc_listen": ":8081", "grpc_upstream": "m:1", "grpc_max_message_bytes": 0}, "grpc_max"),
        (
            {"grpc_listen": ":0", "grpc_upstream": "m:1", "workers": 2, "listen": ":8080"},
            "grpc_listen: workers > 1",
        ),
    ],
)
def test_bad_grpc_settings_name_the_field(values: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config({"upstream": "http://127.0.0.1:8000", **values}, env={})
    assert str(caught.value).startswith(field)


def test_default_version_from_flags_env_and_yaml(tmp_path: Path) -> None:
    assert load_config({"upstream": "http://m:1"}, env={}).default_version == ""
    path = tmp_path / "sidecar.yaml"
    path.write_text("upstream: http://m:1\ndefault_version: 2\n")  # a YAML integer
    assert load_config({}, env={}, path=str(path)).default_version == "2"
    env = {"INFERWATCH_SIDECAR_DEFAULT_VERSION": " v2-canary "}
    assert load_config(flags("--config", str(path)), env=env).default_version == "v2-canary"
    config = load_config(flags("--config", str(path), "--default-version", "3"), env=env)
    assert config.default_version == "3"
    assert from_dict(config.to_dict()) == config
    # What the downward API gives for a missing pod label: today's behaviour.
    env = {"INFERWATCH_SIDECAR_UPSTREAM": "http://m:1", "INFERWATCH_SIDECAR_DEFAULT_VERSION": ""}
    assert load_config({}, env=env).default_version == ""


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("x" * 129, "must be at most 128 characters"),
        ("2\n3", "must be printable text"),
        ("other", "'other' is where versions over max_versions are counted"),
        (1.1, "must be a string (quote it in YAML), got 1.1"),
        (["1"], "must be a string"),
        (True, "must be a string"),
    ],
)
def test_a_bad_default_version_names_the_field(raw: object, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config({"upstream": "http://m:1", "default_version": raw}, env={})
    assert str(caught.value).startswith(
        f"default_version (command line, --default-version): {message}"
    )
