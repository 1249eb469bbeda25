"""The model server's own queue signal, normalised into our families with ``source="server"``.

Each model server reports how many requests wait inside it under its own name; the table
:data:`SERVERS` (data, one entry per server) says which of its metrics feed
``model_inference_queue_length``, ``model_active_requests`` and ``model_kv_cache_usage_ratio``.
While the sidecar merges the upstream's ``/metrics`` into its scrape, :class:`ServerSignal`
reads those metrics from the families already parsed and adds one series per model and family,
``source="server"``. TorchServe reports no queue gauge: :class:`ManagementPoller` reads
``jobQueueStatus.pendingRequests`` from its management API in the background instead.

The three queues are disjoint, so the pod's queue is their sum (``sum by (pod)`` over sources):
the sidecar's admission queue holds requests not yet forwarded, the server's queue requests
forwarded and not yet executing, an instrumented app's batcher requests waiting for a batch.
For the same reason only gauges of requests *waiting* feed the queue: never a gauge that
includes the running ones (Knative's ``revision_queue_depth``), never two gauges one request
sits in at once (the pending counts of every model of a Triton ensemble).

Names verified against each project's documentation and source (see docs/sidecar.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp

from inferwatch import schema
from inferwatch.exposition.families import Family, Sample

logger = logging.getLogger(__name__)

QUEUE_LENGTH = "queue_length"
ACTIVE_REQUESTS = "active_requests"
KV_CACHE_USAGE = "kv_cache_usage_ratio"
# What a mapping may feed, and the schema family it becomes.
TARGETS: dict[str, schema.Family] = {
    QUEUE_LENGTH: schema.QUEUE_LENGTH,
    ACTIVE_REQUESTS: schema.ACTIVE_REQUESTS,
    KV_CACHE_USAGE: schema.KV_CACHE_USAGE,
}

KIND_AUTO = "auto"  # detected from the metric names the upstream exposes
KIND_NONE = "none"  # no built-in mapping (only the configured ones)

Match = tuple[tuple[str, tuple[str, ...]], ...]  # label -> accepted values


@dataclass(frozen=True)
class Mapping:
    """One upstream metric that feeds one of our families.

    Samples of ``metric`` whose labels match ``match`` (each label one of its values) are
    added up per model (``model_label``'s value; without it, the configured default model).
    For :data:`KV_CACHE_USAGE` the value is a ratio: the largest of the model's series, or,
    with ``divide_by``, the sum of the ``match`` series over the sum of the ``divide_by``
    series of the same metric (TensorRT-LLM's used and max KV blocks).
    """

    metric: str
    family: str
    model_label: str | None = None
    match: Match = ()
    divide_by: Match | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"metric": self.metric, "family": self.family}
        if self.model_label:
            out["model_label"] = self.model_label
        if self.match:
            out["match"] = {label: list(values) for label, values in self.match}
        if self.divide_by is not None:
            out["divide_by"] = {label: list(values) for label, values in self.divide_by}
        return out


@dataclass(frozen=True)
class Server:
    """A model server: the names that identify its exposition, and what feeds which family.

    Mappings of one family are alternatives, first present wins (a renamed metric, old name
    after the new)."""

    name: str
    detect: tuple[str, ...]
    mappings: tuple[Mapping, ...]


def _m(label: str, *values: str) -> Match:
    return ((label, values),)


# --- the table --------------------------------------------------------------------------------
# Order matters for detection: TensorRT-LLM behind Triton also exposes Triton's nv_inference_*.

SERVERS: tuple[Server, ...] = (
    Server(
        # Triton's TensorRT-LLM backend (inflight batcher): batch manager statistics.
        "tensorrt-llm",
        ("nv_trt_llm_request_metrics", "nv_trt_llm_kv_cache_block_metrics"),
        (
            Mapping(
                "nv_trt_llm_request_metrics", QUEUE_LENGTH, "model", _m("request_type", "waiting")
            ),
            Mapping(
                "nv_trt_llm_request_metrics",
                ACTIVE_REQUESTS,
                "model",
                _m("request_type", "scheduled"),
            ),
            Mapping(
                "nv_trt_llm_kv_cache_block_metrics",
                KV_CACHE_USAGE,
                "model",
                _m("kv_cache_block_type", "fraction"),
            ),
            Mapping(
                "nv_trt_llm_kv_cache_block_metrics",
                KV_CACHE_USAGE,
                "model",
                _m("kv_cache_block_type", "used"),
                _m("kv_cache_block_type", "max"),
            ),
        ),
    ),
    Server(
        "triton",
        ("nv_inference_pending_request_count", "nv_inference_request_success"),
        (Mapping("nv_inference_pending_request_count", QUEUE_LENGTH, "model"),),
    ),
    Server(
        "vllm",
        ("vllm:num_requests_waiting", "vllm:num_requests_running"),
        (
            Mapping("vllm:num_requests_waiting", QUEUE_LENGTH, "model_name"),
            Mapping("vllm:num_requests_running", ACTIVE_REQUESTS, "model_name"),
            Mapping("vllm:kv_cache_usage_perc", KV_CACHE_USAGE, "model_name"),
            Mapping("vllm:gpu_cache_usage_perc", KV_CACHE_USAGE, "model_name"),  # before v0.10
        ),
    ),
    Server(
        "sglang",
        ("sglang:num_queue_reqs", "sglang:num_running_reqs"),
        (
            Mapping("sglang:num_queue_reqs", QUEUE_LENGTH, "model_name"),
            Mapping("sglang:num_running_reqs", ACTIVE_REQUESTS, "model_name"),
            Mapping("sglang:token_usage", KV_CACHE_USAGE, "model_name"),
        ),
    ),
    Server(
        # trtllm-serve (TensorRT-LLM's OpenAI server), /prometheus/metrics
        "trtllm-serve",
        ("trtllm_num_requests_waiting", "trtllm_num_requests_running"),
        (
            Mapping("trtllm_num_requests_waiting", QUEUE_LENGTH, "model_name"),
            Mapping("trtllm_num_requests_running", ACTIVE_REQUESTS, "model_name"),
            Mapping("trtllm_kv_cache_utilization", KV_CACHE_USAGE, "model_name"),
        ),
    ),
    Server(
        # text-generation-inference: one model per server, no model label
        "tgi",
        ("tgi_queue_size", "tgi_batch_current_size"),
        (
            Mapping("tgi_queue_size", QUEUE_LENGTH),
            Mapping("tgi_batch_current_size", ACTIVE_REQUESTS),
        ),
    ),
    Server(
        # BentoML: requests in progress only; no queue gauge (adaptive batching exposes a
        # histogram of batch sizes, not what waits)
        "bentoml",
        ("bentoml_service_request_in_progress",),
        (Mapping("bentoml_service_request_in_progress", ACTIVE_REQUESTS),),
    ),
    Server(
        # MLServer: its queue metrics (parallel_request_queue, batch_request_queue) are
        # histograms of queue sizes observed at dispatch, not a gauge of what waits now; only
        # the REST server's in-progress gauge (starlette, label path) says anything current.
        "mlserver",
        ("model_infer_request_success", "parallel_request_queue_bucket"),
        (
            Mapping(
                "rest_server_requests_in_progress",
                ACTIVE_REQUESTS,
                None,
                _m(
                    "path",
                    "/v2/models/{model_name}/infer",
                    "/v2/models/{model_name}/versions/{model_version}/infer",
                ),
            ),
        ),
    ),
)
# TorchServe: its /metrics has no queue gauge; see ManagementPoller.
KIND_TORCHSERVE = "torchserve"
KINDS = (KIND_AUTO, KIND_NONE, *(s.name for s in SERVERS), KIND_TORCHSERVE)
_BY_NAME = {s.name: s for s in SERVERS}


# --- user mappings (YAML: server_metrics) ------------------------------------------------------

_METRIC_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_:")


def _match(raw: Any, where: str) -> Match:
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: must be a mapping of label: value (or list of values)")
    out = []
    for label, values in raw.items():
        if isinstance(values, (list, tuple)):
            accepted = tuple(str(v) for v in values)
        elif isinstance(values, (str, int, float)) and not isinstance(values, bool):
            accepted = (str(values),)
        else:
            raise ValueError(f"{where}.{label}: must be a value or a list of values")
        if not accepted:
            raise ValueError(f"{where}.{label}: needs at least one value")
        out.append((str(label), accepted))
    return tuple(out)


def parse_mappings(raw: Any) -> tuple[Mapping, ...]:
    """``[{metric, family, model_label?, match?, divide_by?}]`` (YAML, or JSON in env and
    flags); raises ValueError naming the item and key."""
    if isinstance(raw, str):
        text = raw.strip()
        if not text:
            return ()
        try:
            raw = json.loads(text)
        except ValueError:
            raise ValueError("must be a list of {metric, family, ...} (JSON here)") from None
    if raw is None:
        return ()
    if not isinstance(raw, (list, tuple)):
        raise ValueError("must be a list of {metric, family, model_label, match, divide_by}")
    out = []
    for i, item in enumerate(raw):
        if isinstance(item, Mapping):
            out.append(item)
            continue
        where = f"[{i}]"
        if not isinstance(item, dict):
            raise ValueError(f"{where}: must be a mapping with 'metric' and 'family'")
        unknown = sorted(set(item) - {"metric", "family", "model_label", "match", "divide_by"})
        if unknown:
            raise ValueError(f"{where}: unknown key {unknown[0]!r}")
        metric = str(item.get("metric") or "").strip()
        if not metric or not set(metric) <= _METRIC_CHARS or metric[0].isdigit():
            raise ValueError(f"{where}.metric: must be a metric name, got {item.get('metric')!r}")
        family = str(item.get("family") or "").strip()
        if family not in TARGETS:
            raise ValueError(f"{where}.family: must be one of {', '.join(TARGETS)}, got {family!r}")
        model_label = item.get("model_label")
        if model_label is not None:
            model_label = str(model_label).strip()
            if not model_label or not model_label.replace("_", "a").isalnum():
                raise ValueError(f"{where}.model_label: must be a label name, got {model_label!r}")
        match = _match(item["match"], f"{where}.match") if "match" in item else ()
        divide_by = None
        if item.get("divide_by") is not None:
            if family != KV_CACHE_USAGE:
                raise ValueError(f"{where}.divide_by: only for family {KV_CACHE_USAGE}")
            divide_by = _match(item["divide_by"], f"{where}.divide_by")
        out.append(Mapping(metric, family, model_label or None, match, divide_by))
    return tuple(out)


def parse_kind(raw: Any) -> str:
    text = str(raw).strip().lower()
    if text not in KINDS:
        raise ValueError(f"must be one of {', '.join(KINDS)}, got {text!r}")
    return text


def detect(names: Iterable[str]) -> Server | None:
    """The first server of :data:`SERVERS` whose identifying names are among ``names``."""
    present = set(names)
    for server in SERVERS:
        if not present.isdisjoint(server.detect):
            return server
    return None


# --- reading the signal -------------------------------------------------------------------------


def _matches(labels: dict[str, str], match: Match) -> bool:
    return all(labels.get(label) in values for label, values in match)


class ServerSignal:
    """The ``source="server"`` series of one sidecar, from each parsed upstream exposition
    (and TorchServe's management API); counts what could not be read.

    ``kind``: a name of :data:`SERVERS`, :data:`KIND_AUTO` (detected from the first exposition
    that identifies a server, kept from then on) or :data:`KIND_NONE`; ``mappings``: the
    user's, tried before the built-in ones of the same family. ``bound`` folds model names as
    the sidecar's own model label is folded.
    """

    def __init__(
        self,
        kind: str = KIND_AUTO,
        mappings: tuple[Mapping, ...] = (),
        default_model: str = schema.UNKNOWN,
        bound: Callable[[str], str] = lambda name: name,
        management: ManagementPoller | None = None,
    ) -> None:
        self.kind = kind
        self.server: Server | None = _BY_NAME.get(kind)
        self.mappings = mappings
        self.default_model = default_model
        self.bound = bound
        self.management = management
        self.errors = dict.fromkeys(schema.SIGNAL_ERROR_REASONS, 0)
        self._warned: set[str] = set()

    @property
    def active(self) -> bool:
        """Whether there is a signal to read (a server known, mappings or a management API)."""
        return bool(self.server or self.mappings or self.management)

    def _table(self) -> list[Mapping]:
        return [*self.mappings, *(self.server.mappings if self.server else ())]

    def derive(self, upstream: list[Family] | None) -> dict[str, list[Sample]]:
        """Our series (family name -> samples) from the upstream's families (``None``: its
        scrape failed) and the management API's last answer."""
        out: dict[str, dict[str, float]] = {}
        if upstream is not None:
            if self.server is None and self.kind == KIND_AUTO:
                self.server = detect(f.name for f in upstream)
                if self.server is not None:
                    logger.info("upstream detected as %s from its metric names", self.server.name)
            self._from_exposition(upstream, out)
        if self.management is not None:
            values, failures = self.management.take()
            self.errors[schema.SIGNAL_MANAGEMENT_FAILED] += failures
            for model, pending in values.items():
                per_model = out.setdefault(QUEUE_LENGTH, {})
                name = self.bound(model)
                per_model[name] = per_model.get(name, 0.0) + pending
        return {
            TARGETS[target].name: [
                Sample(
                    TARGETS[target].name,
                    (("model_name", model), ("source", schema.SOURCE_SERVER)),
                    value,
                )
                for model, value in sorted(per_model.items())
            ]
            for target, per_model in out.items()
        }

    def _from_exposition(self, upstream: list[Family], out: dict[str, dict[str, float]]) -> None:
        by_name: dict[str, list[Sample]] = {}
        for family in upstream:
            for sample in family.samples:
                by_name.setdefault(sample.name, []).append(sample)
        done: set[str] = set()
        wanted: set[str] = set()
        for mapping in self._table():
            wanted.add(mapping.family)
            if mapping.family in done:
                continue
            values = self._read(mapping, by_name.get(mapping.metric, ()))
            if values is None:
                continue
            done.add(mapping.family)
            out[mapping.family] = values
        for target in sorted(wanted - done):
            self.errors[schema.SIGNAL_MAPPING_MISSING] += 1
            if target not in self._warned:
                self._warned.add(target)
                names = [m.metric for m in self._table() if m.family == target]
                logger.warning(
                    "upstream metrics have none of %s: model_*{source=server} %s left out",
                    ", ".join(dict.fromkeys(names)),
                    target,
                )

    def _read(self, mapping: Mapping, samples: Iterable[Sample]) -> dict[str, float] | None:
        """Per model, or None when no sample of the mapping is present."""
        top: dict[str, float] = {}
        bottom: dict[str, float] = {}
        found = False
        for sample in samples:
            value = sample.value
            if math.isnan(value) or math.isinf(value):
                continue
            labels = dict(sample.labels)
            if mapping.divide_by is not None and _matches(labels, mapping.divide_by):
                into = bottom
            elif _matches(labels, mapping.match):
                into = top
            else:
                continue
            found = True
            model = labels.get(mapping.model_label or "") or self.default_model
            model = self.bound(model)
            if mapping.family == KV_CACHE_USAGE and mapping.divide_by is None:
                into[model] = max(into.get(model, 0.0), value)
            else:
                into[model] = into.get(model, 0.0) + value
        if not found:
            return None
        if mapping.family != KV_CACHE_USAGE:
            return top
        if mapping.divide_by is not None:
            top = {m: top.get(m, 0.0) / total for m, total in bottom.items() if total > 0}
            if not top:
                return None
        return {m: min(1.0, max(0.0, v)) for m, v in top.items()}

    def errors_family(self) -> Family:
        name = schema.UPSTREAM_SIGNAL_ERRORS.name.removesuffix("_total")
        samples = [
            Sample(name + "_total", (("reason", reason),), float(count))
            for reason, count in self.errors.items()
        ]
        return Family(name, "counter", schema.UPSTREAM_SIGNAL_ERRORS.help, "", samples)


# --- TorchServe's management API --------------------------------------------------------------

MANAGEMENT_INTERVAL = 1.0
MAX_MODEL_PAGES = 10


class ManagementPoller:
    """Polls TorchServe's management API (``GET /models``, then ``GET /models/<name>`` for
    each) every ``interval`` seconds in the background: ``jobQueueStatus.pendingRequests``
    is each model's queue (jobs not yet taken by a worker). A failed round leaves no value
    (a stale queue would mislead the autoscaler) and counts one failure."""

    def __init__(
        self, session: aiohttp.ClientSession, url: str, interval: float | None = None
    ) -> None:
        self.session = session
        self.url = url.rstrip("/")
        self.interval = MANAGEMENT_INTERVAL if interval is None else interval
        self._values: dict[str, float] = {}
        self._failures = 0
        self._task: asyncio.Task[None] | None = None
        self._last_error: str | None = None

    def take(self) -> tuple[dict[str, float], int]:
        """The last round's pending requests by model, and the failures since the last take."""
        failures, self._failures = self._failures, 0
        return dict(self._values), failures

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await self.poll()
            await asyncio.sleep(self.interval)

    async def poll(self) -> None:
        """One round; never raises (but for cancellation)."""
        try:
            self._values = await asyncio.wait_for(self._round(), max(self.interval, 1.0) * 5)
            self._last_error = None
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._values = {}
            self._failures += 1
            detail = f"{type(exc).__name__}: {exc}"
            if detail != self._last_error:
                logger.warning("TorchServe management API %s: %s", self.url, detail)
            self._last_error = detail

    async def _get(self, path: str) -> Any:
        async with self.session.get(self.url + path, allow_redirects=False) as response:
            if response.status != 200:
                raise ValueError(f"GET {path} answered {response.status}")
            return json.loads(await response.read())

    async def _round(self) -> dict[str, float]:
        names: list[str] = []
        token = ""
        for _ in range(MAX_MODEL_PAGES):
            page = await self._get(
                "/models?limit=100" + (f"&next_page_token={token}" if token else "")
            )
            models = page.get("models") if isinstance(page, dict) else None
            if not isinstance(models, list):
                raise ValueError("GET /models: no 'models' list")
            names += [
                str(m["modelName"]) for m in models if isinstance(m, dict) and "modelName" in m
            ]
            token = str(page.get("nextPageToken") or "")
            if not token:
                break
        values: dict[str, float] = {}
        for name in names:
            described = await self._get("/models/" + quote(name, safe=""))
            if not isinstance(described, list):
                raise ValueError(f"GET /models/{name}: not a list")
            for version in described:
                status = version.get("jobQueueStatus") if isinstance(version, dict) else None
                pending = status.get("pendingRequests") if isinstance(status, dict) else None
                if not isinstance(pending, (int, float)) or isinstance(pending, bool):
                    raise ValueError(f"GET /models/{name}: no jobQueueStatus.pendingRequests")
                values[name] = values.get(name, 0.0) + float(pending)
        return values


def signal_for(
    config: Any, session: aiohttp.ClientSession, bound: Callable[[str], str]
) -> ServerSignal:
    """The signal a sidecar's config asks for (``upstream_kind``, ``server_metrics``,
    ``upstream_management_url``)."""
    management = None
    if config.upstream_management_url:
        management = ManagementPoller(session, config.upstream_management_url)
    return ServerSignal(
        config.upstream_kind, config.server_metrics, config.default_model, bound, management
    )


__all__ = [
    "ACTIVE_REQUESTS",
    "KINDS",
    "KV_CACHE_USAGE",
    "QUEUE_LENGTH",
    "SERVERS",
    "ManagementPoller",
    "Mapping",
    "Server",
    "ServerSignal",
    "detect",
    "parse_kind",
    "parse_mappings",
    "signal_for",
]
