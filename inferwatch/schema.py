"""The metric schema: every family inferwatch exposes, defined once.

The decorators, the sidecar, the GPU collector and the generators (dashboards, rules,
autoscaling) all read names, labels and buckets from here, so a rename cannot drift.
Names follow Prometheus conventions: base units, ``_total`` on counters.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

Kind = Literal["counter", "gauge", "histogram"]
MetricObject = Counter | Gauge | Histogram

# --- label values -----------------------------------------------------------------------------

SOURCE_SIDECAR = "sidecar"
SOURCE_APP = "app"
# The model server's own metrics (Triton, vLLM, SGLang, TGI, TorchServe's management API...),
# normalised into our families by the sidecar while it merges them into its scrape.
SOURCE_SERVER = "server"
SOURCES = (SOURCE_SIDECAR, SOURCE_APP, SOURCE_SERVER)

STATUS_SUCCESS = "success"
STATUS_ERROR = "error"

# model_inference_failures_total{reason}
REASON_CLIENT_ERROR = "client_error"  # upstream answered 4xx
REASON_SERVER_ERROR = "server_error"  # upstream answered 5xx
REASON_TIMEOUT = "timeout"  # upstream too slow
REASON_REJECTED = "rejected"  # admission queue full, or queue wait too long
REASON_CANCELLED = "cancelled"  # the caller went away (client disconnect, task cancelled)
REASON_UPSTREAM_UNAVAILABLE = "upstream_unavailable"  # could not connect
REASON_EXCEPTION = "exception"  # in-process code raised
FAILURE_REASONS = (
    REASON_CLIENT_ERROR,
    REASON_SERVER_ERROR,
    REASON_TIMEOUT,
    REASON_REJECTED,
    REASON_CANCELLED,
    REASON_UPSTREAM_UNAVAILABLE,
    REASON_EXCEPTION,
)
# The reasons each layer can produce; their series are created at zero when a model is first
# seen, so ratio queries have a series from the start (the others appear on first use).
REASONS_BY_SOURCE: dict[str, tuple[str, ...]] = {
    SOURCE_SIDECAR: (
        REASON_CLIENT_ERROR,
        REASON_SERVER_ERROR,
        REASON_TIMEOUT,
        REASON_REJECTED,
        REASON_CANCELLED,
        REASON_UPSTREAM_UNAVAILABLE,
    ),
    SOURCE_APP: (REASON_EXCEPTION, REASON_CANCELLED, REASON_REJECTED),
}
# Failures that are the serving side's fault: what an error-budget SLO counts.
SERVER_SIDE_REASONS = (
    REASON_SERVER_ERROR,
    REASON_TIMEOUT,
    REASON_REJECTED,
    REASON_UPSTREAM_UNAVAILABLE,
    REASON_EXCEPTION,
)

TOKEN_INPUT = "input"
TOKEN_OUTPUT = "output"

# model_inference_finish_reasons_total{reason}: why a generation ended (OpenAI's finish_reason).
FINISH_STOP = "stop"
FINISH_LENGTH = "length"  # truncated at max_tokens: what operators alert on
FINISH_TOOL_CALLS = "tool_calls"
FINISH_CONTENT_FILTER = "content_filter"
FINISH_OTHER = "other"
FINISH_REASONS = (
    FINISH_STOP,
    FINISH_LENGTH,
    FINISH_TOOL_CALLS,
    FINISH_CONTENT_FILTER,
    FINISH_OTHER,
)

# Value that unbounded label values (model names from requests) fold into.
OTHER = "other"
UNKNOWN = "unknown"

# --- buckets ----------------------------------------------------------------------------------

# Latency buckets. Prometheus' histogram_quantile interpolates linearly inside a bucket, so the
# error of a p95 estimate is bounded by the width of the bucket the p95 falls in. The generated
# HPA scales on p95 at a 100 ms target: tests/test_schema.py shows the p95 estimate within 7% of the
# true p95 for lognormal latencies whose p95 lies anywhere in 50-200 ms, however narrow or wide
# the distribution (sigma 0.05 to 1), and within 4% for sigma >= 0.1. In the same sweep a
# coarse set (.01, .05, .1, .5, 1, 2, 5) are off by up to 324%, client_python's defaults
# by 116%. Coarser buckets cover 1 ms fast paths up to minute-long generations; 34 series per
# histogram child in all.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.04,
    # dense around the 100 ms HPA target: no bucket wider than 12% of its lower bound from
    # 55 ms to 220 ms, and bounds at 0.1, 0.25, 0.5 and 1 s for latency SLO thresholds
    0.05,
    0.055,
    0.06,
    0.065,
    0.07,
    0.08,
    0.09,
    0.1,
    0.11,
    0.12,
    0.13,
    0.14,
    0.15,
    0.165,
    0.18,
    0.2,
    0.22,
    0.25,
    0.35,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)

# Queue waits are usually short (a batch window of a few ms) but grow without bound when
# saturated; the HPA acts on queue length, so resolution here matters less.
QUEUE_BUCKETS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)

# Time to first byte of a streamed answer (LLM time to first token): 1 ms to 2 minutes.
TTFB_BUCKETS: tuple[float, ...] = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
)

# Time to first token: LLM SLOs sit at 0.5-2 s; dense there (no bucket wider than 12.5% of its
# lower bound from 0.4 to 2.5 s), coarser down to 1 ms and up to two minutes. Every boundary the
# OpenTelemetry GenAI conventions advise for gen_ai.server.time_to_first_token is one of ours, so
# the OTLP export re-counts buckets exactly.
TTFT_BUCKETS: tuple[float, ...] = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.025,
    0.04,
    0.05,
    0.06,
    0.08,
    0.1,
    0.15,
    0.2,
    0.25,
    0.3,
    0.35,
    0.4,
    0.45,
    0.5,
    0.55,
    0.6,
    0.675,
    0.75,
    0.85,
    0.95,
    1.0,
    1.05,
    1.15,
    1.3,
    1.45,
    1.6,
    1.8,
    2.0,
    2.25,
    2.5,
    3.0,
    4.0,
    5.0,
    7.5,
    10.0,
    20.0,
    30.0,
    60.0,
    120.0,
)

# Time per output token: SLOs at 20-100 ms, fast GPUs reach 5 ms; no bucket wider than 12.5% of
# its lower bound from 4 ms to 110 ms; includes the GenAI conventions' advised boundaries for
# gen_ai.server.time_per_output_token.
TPOT_BUCKETS: tuple[float, ...] = (
    0.001,
    0.002,
    0.003,
    0.004,
    0.0045,
    0.005,
    0.0055,
    0.006,
    0.0065,
    0.007,
    0.0075,
    0.008,
    0.009,
    0.01,
    0.011,
    0.012,
    0.0135,
    0.015,
    0.0165,
    0.018,
    0.02,
    0.0225,
    0.025,
    0.0275,
    0.03,
    0.0335,
    0.037,
    0.041,
    0.045,
    0.05,
    0.055,
    0.06,
    0.0675,
    0.075,
    0.0825,
    0.09,
    0.1,
    0.11,
    0.125,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    2.5,
)

# Items per request or per executed batch: powers of two, 128 and above land in +Inf.
BATCH_SIZE_BUCKETS: tuple[float, ...] = (1, 2, 4, 8, 16, 32, 64, 128)


# The labels that name a model, in this order at the start of an inference family's labels.
MODEL_LABELS = ("source", "model_name", "model_version")


@dataclass(frozen=True)
class PerModel:
    """How a :class:`~inferwatch.metrics.ModelInstruments` holds a family for one model: as
    attribute ``attribute``, the child labelled with the model's own labels (as many of
    :data:`MODEL_LABELS` as the family has) followed by ``values``.

    With ``by_value`` (a family whose last label varies per observation, as failures by
    reason): a dict of children by that label's value instead, created at zero for the values
    ``preset`` for the model's source (all of ``by_value`` for another source) and on first
    use for the rest.
    """

    attribute: str
    values: tuple[str, ...] = ()
    by_value: tuple[str, ...] = ()
    preset: tuple[tuple[str, tuple[str, ...]], ...] = ()


@dataclass(frozen=True)
class Family:
    """One metric family: what Prometheus will see, and how to create it."""

    name: str  # the name a PromQL query uses (counters end in _total)
    kind: Kind
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] | None = None
    unit: str = ""
    # How gauges aggregate across processes in prometheus_client multiprocess mode.
    multiprocess_mode: str = "livesum"
    # Inference families: the children each model's instruments hold (none: not per model).
    per_model: tuple[PerModel, ...] = ()
    # Observations carry the current span as exemplar (the latency histograms).
    exemplars: bool = False

    @property
    def model_labels(self) -> tuple[str, ...]:
        """The leading labels that name the model (source, model_name[, model_version])."""
        count = 0
        for label, model_label in zip(self.labels, MODEL_LABELS, strict=False):
            if label != model_label:
                break
            count += 1
        return self.labels[:count]

    def create(self, registry: CollectorRegistry | None) -> MetricObject:
        """Create this family on ``registry`` (``None``: create unregistered)."""
        if self.kind == "counter":
            return Counter(self.name, self.help, self.labels, registry=registry)
        if self.kind == "gauge":
            return Gauge(
                self.name,
                self.help,
                self.labels,
                registry=registry,
                multiprocess_mode=self.multiprocess_mode,  # type: ignore[arg-type]
            )
        assert self.buckets is not None, self.name
        return Histogram(self.name, self.help, self.labels, registry=registry, buckets=self.buckets)

    @property
    def bucket(self) -> str:
        """The ``_bucket`` series of a histogram, for PromQL."""
        assert self.kind == "histogram", self.name
        return self.name + "_bucket"

    @property
    def count(self) -> str:
        assert self.kind == "histogram", self.name
        return self.name + "_count"

    @property
    def sum(self) -> str:
        assert self.kind == "histogram", self.name
        return self.name + "_sum"


# --- inference families -----------------------------------------------------------------------

INFERENCE_TOTAL = Family(
    "model_inference_total",
    "counter",
    "Inference requests completed, by outcome.",
    ("source", "model_name", "model_version", "status"),
    per_model=(PerModel("success", (STATUS_SUCCESS,)), PerModel("error", (STATUS_ERROR,))),
)
INFERENCE_FAILURES = Family(
    "model_inference_failures_total",
    "counter",
    "Inference requests that failed, by reason.",
    ("source", "model_name", "model_version", "reason"),
    per_model=(
        PerModel("failures", by_value=FAILURE_REASONS, preset=tuple(REASONS_BY_SOURCE.items())),
    ),
)
INFERENCE_DURATION = Family(
    "model_inference_duration_seconds",
    "histogram",
    "Inference latency: from arrival (sidecar) or call (app) to the last byte or return.",
    ("source", "model_name", "model_version"),
    LATENCY_BUCKETS,
    unit="seconds",
    per_model=(PerModel("duration"),),
    exemplars=True,
)
QUEUE_DURATION = Family(
    "model_inference_queue_duration_seconds",
    "histogram",
    "Time an inference waited for admission (sidecar) or for its batch to run (app).",
    ("source", "model_name"),
    QUEUE_BUCKETS,
    unit="seconds",
    per_model=(PerModel("queue_duration"),),
    exemplars=True,
)
TIME_TO_FIRST_BYTE = Family(
    "model_inference_time_to_first_byte_seconds",
    "histogram",
    "Time to the first chunk of a streamed answer (first token for LLMs).",
    ("source", "model_name", "model_version"),
    TTFB_BUCKETS,
    unit="seconds",
    per_model=(PerModel("ttfb"),),
    exemplars=True,
)
BATCH_SIZE = Family(
    "model_batch_size",
    "histogram",
    "Items per inference: in the request (sidecar) or in the executed batch (app).",
    ("source", "model_name"),
    BATCH_SIZE_BUCKETS,
    per_model=(PerModel("batch_size"),),
)
ACTIVE_REQUESTS = Family(
    "model_active_requests",
    "gauge",
    "Inference requests in flight.",
    ("source", "model_name"),
    per_model=(PerModel("active"),),
)
QUEUE_LENGTH = Family(
    "model_inference_queue_length",
    "gauge",
    "Inference requests waiting to run.",
    ("source", "model_name"),
    per_model=(PerModel("queue_length"),),
)
TOKENS = Family(
    "model_inference_tokens_total",
    "counter",
    "Tokens processed, from OpenAI-style usage reports.",
    ("source", "model_name", "type"),
    per_model=(
        PerModel("tokens_input", (TOKEN_INPUT,)),
        PerModel("tokens_output", (TOKEN_OUTPUT,)),
    ),
)

TIME_TO_FIRST_TOKEN = Family(
    "model_inference_time_to_first_token_seconds",
    "histogram",
    "Time from arrival (sidecar) or call (app) to the first chunk carrying generated output.",
    ("source", "model_name", "model_version"),
    TTFT_BUCKETS,
    unit="seconds",
    per_model=(PerModel("ttft"),),
    exemplars=True,
)
TIME_PER_OUTPUT_TOKEN = Family(
    "model_inference_time_per_output_token_seconds",
    "histogram",
    "Per streamed generation: (end - first token) / (output tokens - 1).",
    ("source", "model_name", "model_version"),
    TPOT_BUCKETS,
    unit="seconds",
    per_model=(PerModel("tpot"),),
    exemplars=True,
)
FINISH_REASONS_TOTAL = Family(
    "model_inference_finish_reasons_total",
    "counter",
    "Generations ended, by finish reason (stop, length, tool_calls, content_filter, other).",
    ("source", "model_name", "reason"),
    # Created on first use: a model that never generates text keeps no such series.
    per_model=(
        PerModel(
            "finish_reasons",
            by_value=FINISH_REASONS,
            preset=((SOURCE_SIDECAR, ()), (SOURCE_APP, ())),
        ),
    ),
)

KV_CACHE_USAGE = Family(
    "model_kv_cache_usage_ratio",
    "gauge",
    "Fraction of an LLM engine's KV cache in use (0-1), as the model server reports it.",
    ("source", "model_name"),
    unit="ratio",
    multiprocess_mode="max",
)

INFERENCE_FAMILIES: tuple[Family, ...] = (
    INFERENCE_TOTAL,
    INFERENCE_FAILURES,
    INFERENCE_DURATION,
    QUEUE_DURATION,
    TIME_TO_FIRST_BYTE,
    BATCH_SIZE,
    ACTIVE_REQUESTS,
    QUEUE_LENGTH,
    TOKENS,
    TIME_TO_FIRST_TOKEN,
    TIME_PER_OUTPUT_TOKEN,
    FINISH_REASONS_TOTAL,
    KV_CACHE_USAGE,
)

# --- GPU label values (NVML) ------------------------------------------------------------------
# Here, not in gpu.py, so that the dashboards and rules name them without importing the collector.

# gpu_collector_errors_total{reason}: NVML errors are named after their NVML_ERROR_* constant,
# lower-cased (gpu_is_lost, not_supported, driver_not_loaded, ...); these are inferwatch's own.
GPU_ERROR_LIBRARY_NOT_FOUND = "library_not_found"  # pynvml or libnvidia-ml.so.1 missing
GPU_ERROR_NOT_SUPPORTED = "not_supported"
GPU_ERROR_GPU_IS_LOST = "gpu_is_lost"
GPU_ERROR_DRIVER_NOT_LOADED = "driver_not_loaded"
GPU_ERROR_NO_DEVICES = "no_devices"  # NVML works but reports no GPU
GPU_ERROR_EXCEPTION = "exception"  # the binding raised something other than NVMLError
# Created at zero so that increase() sees the first error.
GPU_ERROR_PRESET_REASONS = (
    GPU_ERROR_LIBRARY_NOT_FOUND,
    GPU_ERROR_DRIVER_NOT_LOADED,
    GPU_ERROR_NO_DEVICES,
    GPU_ERROR_GPU_IS_LOST,
    GPU_ERROR_NOT_SUPPORTED,
    GPU_ERROR_EXCEPTION,
)

# gpu_ecc_errors_total{type}
ECC_CORRECTED = "corrected"
ECC_UNCORRECTED = "uncorrected"

# gpu_clock_throttled{reason}: bits of nvmlClocksEventReasons (ABI-stable values, spelled here
# because older bindings name them ...ThrottleReason... and newer ones ...EventReason...).
THROTTLE_REASONS: tuple[tuple[str, int], ...] = (
    ("gpu_idle", 0x1),
    ("applications_clocks_setting", 0x2),
    ("sw_power_cap", 0x4),
    ("hw_slowdown", 0x8),
    ("sync_boost", 0x10),
    ("sw_thermal_slowdown", 0x20),
    ("hw_thermal_slowdown", 0x40),
    ("hw_power_brake_slowdown", 0x80),
    ("display_clock_setting", 0x100),
)
# The reasons that mean "held down by the power limit".
POWER_THROTTLE_REASONS = ("sw_power_cap", "hw_power_brake_slowdown")

# --- GPU families (NVML) ----------------------------------------------------------------------

GPU_LABELS = ("gpu", "uuid", "name")

GPU_UTILIZATION = Family(
    "gpu_utilization_ratio",
    "gauge",
    "Fraction of the last sample period a kernel was running on the GPU (0-1).",
    GPU_LABELS,
)
GPU_MEMORY_COPY_UTILIZATION = Family(
    "gpu_memory_copy_utilization_ratio",
    "gauge",
    "Fraction of the last sample period device memory was being read or written (0-1).",
    GPU_LABELS,
)
GPU_MEMORY_USED = Family(
    "gpu_memory_used_bytes", "gauge", "GPU memory in use.", GPU_LABELS, unit="bytes"
)
GPU_MEMORY_TOTAL = Family(
    "gpu_memory_total_bytes",
    "gauge",
    "GPU memory installed (a MIG device: its instance's share).",
    GPU_LABELS,
    unit="bytes",
)
GPU_MEMORY_FREE = Family(
    "gpu_memory_free_bytes", "gauge", "GPU memory free.", GPU_LABELS, unit="bytes"
)
GPU_TEMPERATURE = Family(
    "gpu_temperature_celsius", "gauge", "GPU core temperature.", GPU_LABELS, unit="celsius"
)
GPU_POWER_USAGE = Family(
    "gpu_power_usage_watts", "gauge", "GPU power draw.", GPU_LABELS, unit="watts"
)
GPU_POWER_LIMIT = Family(
    "gpu_power_limit_watts", "gauge", "GPU power management limit.", GPU_LABELS, unit="watts"
)
GPU_SM_CLOCK = Family(
    "gpu_sm_clock_hertz", "gauge", "GPU streaming multiprocessor clock.", GPU_LABELS, unit="hertz"
)
GPU_MEMORY_CLOCK = Family(
    "gpu_memory_clock_hertz", "gauge", "GPU memory clock.", GPU_LABELS, unit="hertz"
)
GPU_ENERGY = Family(
    "gpu_energy_joules_total",
    "counter",
    "Energy consumed by the GPU since the driver was loaded.",
    GPU_LABELS,
    unit="joules",
)
GPU_PCIE_REPLAY = Family(
    "gpu_pcie_replay_total", "counter", "PCIe replay events (link errors).", GPU_LABELS
)
GPU_ECC_ERRORS = Family(
    "gpu_ecc_errors_total",
    "counter",
    "ECC memory errors since the driver was loaded, by type (corrected, uncorrected).",
    (*GPU_LABELS, "type"),
)
GPU_THROTTLED = Family(
    "gpu_clock_throttled",
    "gauge",
    "1 while the GPU's clocks are held down for this reason, else 0.",
    (*GPU_LABELS, "reason"),
)
GPU_PROCESS_MEMORY = Family(
    "gpu_process_memory_used_bytes",
    "gauge",
    "GPU memory used by a process of this pod or host (pid other: the rest, past the limit).",
    (*GPU_LABELS, "pid"),
    unit="bytes",
)
GPU_SAMPLE_AGE = Family(
    "gpu_sample_age_seconds",
    "gauge",
    "Seconds since the GPU values exposed were read from NVML.",
    GPU_LABELS,
    unit="seconds",
)
GPU_COLLECTOR_ERRORS = Family(
    "gpu_collector_errors_total",
    "counter",
    "NVML calls that failed, and NVML, its driver or a GPU missing at start, by reason.",
    ("reason",),
)

GPU_FAMILIES: tuple[Family, ...] = (
    GPU_UTILIZATION,
    GPU_MEMORY_COPY_UTILIZATION,
    GPU_MEMORY_USED,
    GPU_MEMORY_TOTAL,
    GPU_MEMORY_FREE,
    GPU_TEMPERATURE,
    GPU_POWER_USAGE,
    GPU_POWER_LIMIT,
    GPU_SM_CLOCK,
    GPU_MEMORY_CLOCK,
    GPU_ENERGY,
    GPU_PCIE_REPLAY,
    GPU_ECC_ERRORS,
    GPU_THROTTLED,
    GPU_PROCESS_MEMORY,
    GPU_SAMPLE_AGE,
    GPU_COLLECTOR_ERRORS,
)

# --- inferwatch's own families ----------------------------------------------------------------

UPSTREAM_UP = Family(
    "inferwatch_upstream_up",
    "gauge",
    "1 when the sidecar's upstream answers its readiness check, else 0.",
)
BUILD_INFO = Family(
    "inferwatch_build_info",
    "gauge",
    "Always 1; the inferwatch version in a label.",
    ("version",),
    multiprocess_mode="max",
)

# inferwatch_upstream_scrape_errors_total{reason}: why the upstream's /metrics was left out
SCRAPE_UNREACHABLE = "unreachable"  # connection refused, reset, DNS
SCRAPE_TIMEOUT = "timeout"  # no complete answer within the scrape timeout
SCRAPE_HTTP_STATUS = "http_status"  # answered, but not 200
SCRAPE_INVALID = "invalid"  # not a parseable text or OpenMetrics exposition
SCRAPE_TOO_LARGE = "too_large"  # larger than the sidecar will buffer
SCRAPE_ERROR_REASONS = (
    SCRAPE_UNREACHABLE,
    SCRAPE_TIMEOUT,
    SCRAPE_HTTP_STATUS,
    SCRAPE_INVALID,
    SCRAPE_TOO_LARGE,
)
UPSTREAM_SCRAPE_ERRORS = Family(
    "inferwatch_upstream_scrape_errors_total",
    "counter",
    "Scrapes of the upstream's /metrics that failed, by reason; the sidecar's own still served.",
    ("reason",),
)

# inferwatch_upstream_signal_errors_total{reason}: why part of the server's queue signal
# (model_*{source="server"}) is missing from a scrape whose upstream metrics were read
SIGNAL_MAPPING_MISSING = (
    "mapping_missing"  # a mapped family's metrics are absent (renamed, dropped)
)
SIGNAL_MANAGEMENT_FAILED = "management_failed"  # TorchServe's management API failed or was invalid
SIGNAL_ERROR_REASONS = (SIGNAL_MAPPING_MISSING, SIGNAL_MANAGEMENT_FAILED)
UPSTREAM_SIGNAL_ERRORS = Family(
    "inferwatch_upstream_signal_errors_total",
    "counter",
    "Times the model server's queue signal could not be read, by reason; other sources served.",
    ("reason",),
)

OWN_FAMILIES: tuple[Family, ...] = (
    UPSTREAM_UP,
    BUILD_INFO,
    UPSTREAM_SCRAPE_ERRORS,
    UPSTREAM_SIGNAL_ERRORS,
)

FAMILIES: tuple[Family, ...] = INFERENCE_FAMILIES + GPU_FAMILIES + OWN_FAMILIES


def families() -> Iterator[Family]:
    """Every family of the schema, in a stable order."""
    return iter(FAMILIES)


def by_name(name: str) -> Family:
    """The family a PromQL name belongs to (``_bucket``/``_count``/``_sum`` accepted)."""
    for family in FAMILIES:
        if name == family.name or (
            family.kind == "histogram" and name in (family.bucket, family.count, family.sum)
        ):
            return family
    raise KeyError(name)
