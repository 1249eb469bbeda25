"""The sidecar's configuration: CLI flags > ``INFERWATCH_SIDECAR_*`` env > YAML file > defaults.

Every field is declared once in :data:`FIELDS` (parser, check, help); the CLI flags, the
environment variable names and the YAML keys all derive from it. A bad value stops start-up
with a :class:`ConfigError` naming the field and where the value came from.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from inferwatch import schema
from inferwatch.sidecar import server_metrics
from inferwatch.sidecar.protocols import MAX_NAME_CHARS

ENV_PREFIX = "INFERWATCH_SIDECAR_"


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message names the field."""


@dataclass(frozen=True)
class Address:
    """A host and port to listen on (``host`` "" means every interface)."""

    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def bind_host(self) -> str | None:
        return self.host or None


@dataclass(frozen=True)
class SidecarConfig:
    """Everything the sidecar needs to run; built by :func:`load_config`."""

    upstream: str = ""
    listen: Address = Address("", 8080)
    admin: Address = Address("", 9464)
    workers: int = 1
    upstream_timeout: float = 300.0
    connect_timeout: float = 5.0
    max_body_bytes: int = 100 * 1024 * 1024
    parse_body_bytes: int = 64 * 1024
    max_concurrency: int = 0
    max_queue: int = -1  # -1: ten times max_concurrency, as Knative's breaker
    queue_timeout: float = 10.0
    retry_after: int = 1
    default_model: str = "unknown"
    default_version: str = ""  # "": a request that names no version is labelled ""
    routes: tuple[tuple[str, str], ...] = ()
    max_models: int = 100
    max_versions: int = 10
    allow_models: tuple[str, ...] = ()
    health_path: str = "/health"
    ready_path: str = "/ready"
    upstream_ready_path: str = "/v2/health/ready"
    ready_interval: float = 1.0
    ready_timeout: float = 1.0
    upstream_metrics_url: str = "default"  # "default": <upstream>/metrics; "": no merge
    scrape_timeout: float = 5.0
    upstream_kind: str = "auto"  # which model server: its queue signal's metric names
    upstream_management_url: str = ""  # TorchServe's management API ("": not polled)
    server_metrics: tuple[server_metrics.Mapping, ...] = ()  # the user's own mappings
    drain_quiet_period: float = 10.0
    drain_timeout: float = 120.0
    gpu_metrics: bool = False
    gpu_interval: float = 5.0
    tracing: bool | None = None  # None: on when OTEL_* configure an exporter
    otlp_metrics: bool = False
    grpc_listen: Address | None = None  # None: no gRPC proxy
    grpc_upstream: str = ""  # HOST:PORT of the model server's gRPC port
    grpc_max_message_bytes: int = 256 * 1024 * 1024

    @property
    def queue_limit(self) -> int:
        """Requests allowed to wait for admission."""
        if self.max_queue >= 0:
            return self.max_queue
        return 10 * self.max_concurrency

    @property
    def ready_url(self) -> str | None:
        """The upstream's readiness URL, or ``None`` when it is not checked."""
        if not self.upstream_ready_path:
            return None
        return self.upstream.rstrip("/") + self.upstream_ready_path

    @property
    def metrics_url(self) -> str | None:
        """The upstream's /metrics to merge into ours, or ``None``."""
        if self.upstream_metrics_url == "default":
            return self.upstream.rstrip("/") + "/metrics"
        return self.upstream_metrics_url or None

    def to_dict(self) -> dict[str, Any]:
        """Plain values (JSON-able), as :func:`from_dict` reads them back."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Address):
                value = str(value)
            elif f.name == "routes":
                value = [{"path": p, "model": m} for p, m in value]
            elif f.name == "server_metrics":
                value = [m.to_dict() for m in value]
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out


# --- value parsers: (raw value) -> typed value, raising ValueError with a short reason --------


def _int(minimum: int) -> Callable[[Any], int]:
    def parse(raw: Any) -> int:
        if isinstance(raw, bool):
            raise ValueError("must be an integer")
        try:
            value = int(raw)
        except (TypeError, ValueError):
            raise ValueError("must be an integer") from None
        if isinstance(raw, float) and raw != value:
            raise ValueError("must be an integer")
        if value < minimum:
            raise ValueError(f"must be >= {minimum}")
        return value

    return parse


def _seconds(allow_zero: bool = False) -> Callable[[Any], float]:
    def parse(raw: Any) -> float:
        if isinstance(raw, bool):
            raise ValueError("must be a number of seconds")
        try:
            value = float(raw)
        except (TypeError, ValueError):
            raise ValueError("must be a number of seconds") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError("must be a finite number of seconds")
        if value < 0 or (value == 0 and not allow_zero):
            raise ValueError("must be > 0" if not allow_zero else "must be >= 0")
        return value

    return parse


def _bool(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("must be true or false")


def _auto_bool(raw: Any) -> bool | None:
    if raw is None or (isinstance(raw, str) and raw.strip().lower() == "auto"):
        return None
    try:
        return _bool(raw)
    except ValueError:
        raise ValueError("must be true, false or auto") from None


def _address(raw: Any) -> Address:
    text = str(raw).strip()
    if isinstance(raw, int) and not isinstance(raw, bool):
        text = str(raw)
    host, sep, port_text = text.rpartition(":")
    if not sep:
        host, port_text = "", text
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError("IPv6 hosts need brackets, e.g. [::1]:8080")
    if host in ("*", "0.0.0.0"):
        host = "" if host == "*" else host
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"must be HOST:PORT or :PORT, got {text!r}") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"port must be 0-65535, got {port}")
    return Address(host, port)


def _optional_address(raw: Any) -> Address | None:
    if raw is None or str(raw).strip().lower() in ("", "none", "off"):
        return None
    return _address(raw)


def _grpc_upstream(raw: Any) -> str:
    text = str(raw).strip()
    if not text:
        return ""
    if "://" in text:
        raise ValueError(f"must be HOST:PORT (no scheme), got {text!r}")
    address = _address(text)
    if not address.host or address.port == 0:
        raise ValueError(f"must be HOST:PORT with a host and a port, got {text!r}")
    return str(address)


def _upstream(raw: Any) -> str:
    text = str(raw).strip()
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"must be an http:// or https:// URL with a host, got {text!r}")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"must be scheme://host[:port] without a path, got {text!r}")
    try:
        parts.port  # noqa: B018  (raises on a bad port)
    except ValueError:
        raise ValueError(f"has a bad port: {text!r}") from None
    return f"{parts.scheme}://{parts.netloc}"


def _metrics_url(raw: Any) -> str:
    text = str(raw).strip()
    if text in ("", "default", "none", "off"):
        return "" if text in ("none", "off") else text
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"must be an http(s) URL, 'default' or 'none', got {text!r}")
    return text


def _management_url(raw: Any) -> str:
    text = str(raw).strip()
    if text.lower() in ("", "none", "off"):
        return ""
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"must be an http(s) URL (TorchServe's management API), got {text!r}")
    return text.rstrip("/")


def _path(allow_empty: bool) -> Callable[[Any], str]:
    def parse(raw: Any) -> str:
        text = str(raw).strip()
        if not text and allow_empty:
            return ""
        if not text.startswith("/") or any(c in text for c in " ?#"):
            raise ValueError(f"must be a path starting with '/', got {text!r}")
        return text

    return parse


def _label(raw: Any) -> str:
    text = str(raw).strip()
    if not text:
        raise ValueError("must not be empty")
    return text


def _version(raw: Any) -> str:
    """A model version label; "" (the default) leaves unversioned requests unlabelled."""
    if isinstance(raw, bool) or not isinstance(raw, (str, int)):
        # a YAML float (1.10 reads as 1.1) or a list would not be the version meant
        raise ValueError(f"must be a string (quote it in YAML), got {raw!r}")
    text = str(raw).strip()
    if len(text) > MAX_NAME_CHARS:
        raise ValueError(f"must be at most {MAX_NAME_CHARS} characters")
    if not text.isprintable():
        raise ValueError(f"must be printable text, got {text!r}")
    if text == schema.OTHER:
        raise ValueError(f"{schema.OTHER!r} is where versions over max_versions are counted")
    return text


def _names(raw: Any) -> tuple[str, ...]:
    items = raw.split(",") if isinstance(raw, str) else raw
    if not isinstance(items, (list, tuple)):
        raise ValueError("must be a list of names")
    return tuple(str(i).strip() for i in items if str(i).strip())


def _routes(raw: Any) -> tuple[tuple[str, str], ...]:
    """``[{path: REGEX, model: NAME}]`` in YAML; ``REGEX=NAME[,REGEX=NAME]`` in env and flags."""
    if isinstance(raw, str):
        raw = [r for r in raw.split(",") if r.strip()]
    if not isinstance(raw, (list, tuple)):
        raise ValueError("must be a list of {path, model}")
    routes: list[tuple[str, str]] = []
    for item in raw:
        if isinstance(item, Mapping):
            unknown = set(item) - {"path", "model"}
            if unknown or "path" not in item or "model" not in item:
                raise ValueError(f"each route needs exactly 'path' and 'model', got {dict(item)}")
            path, model = str(item["path"]), str(item["model"])
        elif isinstance(item, (list, tuple)) and len(item) == 2:
            path, model = str(item[0]), str(item[1])
        elif isinstance(item, str) and "=" in item:
            path, _, model = item.rpartition("=")
        else:
            raise ValueError(f"a route is PATH_REGEX=MODEL or {{path, model}}, got {item!r}")
        path, model = path.strip(), model.strip()
        if not path or not model:
            raise ValueError(f"a route needs a path and a model, got {item!r}")
        try:
            re.compile(path)
        except re.error as exc:
            raise ValueError(f"bad path regex {path!r}: {exc}") from None
        routes.append((path, model))
    return tuple(routes)


@dataclass(frozen=True)
class Field:
    name: str
    parse: Callable[[Any], Any]
    help: str
    metavar: str | None = None
    repeatable: bool = False  # a flag given several times adds up (routes)


FIELDS: tuple[Field, ...] = (
    Field("upstream", _upstream, "the model server to forward to (required)", "URL"),
    Field("listen", _address, "proxy address (default :8080)", "ADDR"),
    Field("admin", _address, "admin address: /metrics, /health, /ready, /wait-for-drain", "ADDR"),
    Field("workers", _int(1), "proxy processes sharing the port (SO_REUSEPORT)", "N"),
    Field(
        "upstream_timeout",
        _seconds(),
        "seconds to wait for upstream headers, a chunk, or room for more of an upload",
        "S",
    ),
    Field("connect_timeout", _seconds(), "seconds to connect to the upstream", "S"),
    Field("max_body_bytes", _int(0), "request bodies larger get 413 (0: no limit)", "BYTES"),
    Field("parse_body_bytes", _int(0), "body prefix read to find model and batch size", "BYTES"),
    Field("max_concurrency", _int(0), "requests in flight to the upstream (0: no limit)", "N"),
    Field("max_queue", _int(-1), "requests waiting for admission (-1: 10 x concurrency)", "N"),
    Field("queue_timeout", _seconds(), "seconds a request may wait for admission", "S"),
    Field("retry_after", _int(0), "Retry-After seconds on 503 overloaded", "S"),
    Field("default_model", _label, "model name when the request names none", "NAME"),
    Field(
        "default_version",
        _version,
        "model version when the request names none (default '': unlabelled); the "
        "generated Kubernetes sidecar takes it from the pod label app.kubernetes.io/version",
        "VERSION",
    ),
    Field("routes", _routes, "route override PATH_REGEX=MODEL (repeatable)", "RE=NAME", True),
    Field("max_models", _int(0), "distinct model names kept; later ones are 'other'", "N"),
    Field("max_versions", _int(0), "distinct model versions kept; later ones are 'other'", "N"),
    Field("allow_models", _names, "model names always kept (comma-separated)", "NAMES"),
    Field("health_path", _path(True), "liveness path answered on the proxy port ('' off)", "PATH"),
    Field("ready_path", _path(True), "readiness path answered on the proxy port ('' off)", "PATH"),
    Field("upstream_ready_path", _path(True), "upstream readiness check ('' off)", "PATH"),
    Field("ready_interval", _seconds(), "seconds between upstream readiness checks", "S"),
    Field("ready_timeout", _seconds(), "seconds a readiness check may take", "S"),
    Field("upstream_metrics_url", _metrics_url, "upstream /metrics to merge ('none' off)", "URL"),
    Field("scrape_timeout", _seconds(), "seconds to fetch the upstream's /metrics", "S"),
    Field(
        "upstream_kind",
        server_metrics.parse_kind,
        "the model server, whose metrics give the queue signal (source=server): "
        + "|".join(server_metrics.KINDS)
        + " (default auto: detected from its metric names)",
        "KIND",
    ),
    Field(
        "upstream_management_url",
        _management_url,
        "TorchServe's management API (e.g. http://127.0.0.1:8081), polled for each model's "
        "pending requests ('' off)",
        "URL",
    ),
    Field(
        "server_metrics",
        server_metrics.parse_mappings,
        "more upstream metrics for the queue signal: a list of {metric, family "
        "(queue_length|active_requests|kv_cache_usage_ratio), model_label, match, divide_by} "
        "(YAML; JSON in env and flag)",
        "JSON",
    ),
    Field("drain_quiet_period", _seconds(True), "quiet seconds before drain completes", "S"),
    Field("drain_timeout", _seconds(), "most seconds to wait for in-flight requests", "S"),
    Field("gpu_metrics", _bool, "also export NVML GPU metrics on the admin port", None),
    Field("gpu_interval", _seconds(), "seconds between GPU samples", "S"),
    Field(
        "tracing",
        _auto_bool,
        "OpenTelemetry traces, exported as the OTEL_* variables say (default auto: on when "
        "OTEL_TRACES_EXPORTER or OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT is set)",
        None,
    ),
    Field(
        "otlp_metrics",
        _bool,
        "also push the inference metrics over OTLP (OTEL_EXPORTER_OTLP_[METRICS_]* and "
        "OTEL_METRIC_EXPORT_INTERVAL configure it)",
        None,
    ),
    Field("grpc_listen", _optional_address, "gRPC proxy address (default off)", "ADDR"),
    Field("grpc_upstream", _grpc_upstream, "the model server's gRPC port", "HOST:PORT"),
    Field(
        "grpc_max_message_bytes",
        _int(1),
        "largest gRPC message either way (default 256 MiB)",
        "BYTES",
    ),
)
_BY_NAME = {f.name: f for f in FIELDS}


def env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


def flag_name(name: str) -> str:
    if name == "routes":
        return "--route"  # given once per route
    return "--" + name.replace("_", "-")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per field; unset flags stay absent so lower layers show through."""
    for f in FIELDS:
        kwargs: dict[str, Any] = {
            "dest": f.name,
            "default": argparse.SUPPRESS,
            "help": f"{f.help} [env {env_name(f.name)}]",
        }
        if f.parse is _bool or f.parse is _auto_bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif f.repeatable:
            kwargs["action"] = "append"
            kwargs["metavar"] = f.metavar
        else:
            kwargs["metavar"] = f.metavar
        parser.add_argument(flag_name(f.name), **kwargs)


def _read_yaml(path: str) -> dict[str, Any]:
    import yaml

    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle)
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path}: not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: must be a mapping of field: value")
    # Accept a top-level `sidecar:` section, so one file can configure several components.
    if set(data) == {"sidecar"} and isinstance(data["sidecar"], dict):
        data = data["sidecar"]
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def load_config(
    flags: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    path: str | None = None,
) -> SidecarConfig:
    """Merge the layers, parse and check every value; raises :class:`ConfigError`."""
    env = os.environ if env is None else env
    flags = dict(flags or {})
    layers: list[tuple[str, dict[str, Any]]] = []
    path = path or flags.pop("config", None) or env.get(ENV_PREFIX + "CONFIG") or None
    if path:
        from_file = _read_yaml(path)
        unknown = sorted(set(from_file) - set(_BY_NAME))
        if unknown:
            raise ConfigError(
                f"config file {path}: unknown field {unknown[0]!r} (known: {', '.join(_BY_NAME)})"
            )
        layers.append((f"config file {path}", from_file))
    from_env = {f.name: env[env_name(f.name)] for f in FIELDS if env_name(f.name) in env}
    layers.append(("environment", from_env))
    from_flags = {k: v for k, v in flags.items() if k in _BY_NAME and v is not None}
    layers.append(("command line", from_flags))

    values: dict[str, Any] = {}
    for where, layer in layers:
        for name, raw in layer.items():
            f = _BY_NAME[name]
            label = env_name(name) if where == "environment" else name
            if where == "command line":
                label = flag_name(name)
            try:
                values[name] = f.parse(raw)
            except ValueError as exc:
                raise ConfigError(f"{name} ({where}, {label}): {exc}") from None
    if "upstream" not in values:
        raise ConfigError(
            f"upstream: required; pass --upstream URL, set {env_name('upstream')} "
            "or put 'upstream:' in the config file"
        )
    config = SidecarConfig(**values)
    _check(config)
    return config


def _check(config: SidecarConfig) -> None:
    """Checks that involve several fields."""
    if config.max_queue > 0 and config.max_concurrency == 0:
        raise ConfigError("max_queue: needs max_concurrency > 0 (there is no queue without it)")
    if config.ready_path and config.ready_path == config.health_path:
        raise ConfigError("ready_path: must differ from health_path")
    if config.workers > 1 and config.listen.port == 0:
        raise ConfigError("listen: workers > 1 need a fixed port to share (not port 0)")
    if config.grpc_listen is not None and not config.grpc_upstream:
        raise ConfigError("grpc_upstream: needed with grpc_listen (the model server's gRPC port)")
    if config.grpc_upstream and config.grpc_listen is None:
        raise ConfigError("grpc_listen: needed with grpc_upstream (where to serve gRPC)")
    if (
        config.upstream_kind == server_metrics.KIND_TORCHSERVE
        and not config.upstream_management_url
    ):
        raise ConfigError(
            "upstream_management_url: needed with upstream_kind torchserve (its queue is only "
            "in the management API)"
        )
    if config.workers > 1 and config.grpc_listen is not None and config.grpc_listen.port == 0:
        raise ConfigError("grpc_listen: workers > 1 need a fixed port to share (not port 0)")


def from_dict(values: Mapping[str, Any]) -> SidecarConfig:
    """Rebuild a config from :meth:`SidecarConfig.to_dict` output (worker processes)."""
    parsed = {name: _BY_NAME[name].parse(raw) for name, raw in values.items()}
    return SidecarConfig(**parsed)
