"""The GPU dashboard: NVML readings per device, with the GPU alerts' thresholds drawn in."""

from __future__ import annotations

from typing import Any

from grafanalib import core

from inferwatch import schema
from inferwatch.generate import promql
from inferwatch.generate.dashboards.panels import (
    RATE,
    Query,
    dashboard,
    datasource_variable,
    label_values,
    line,
    query_variable,
    red_above,
    timeseries,
)
from inferwatch.generate.options import GenerateOptions

GPU_UID = "inferwatch-gpu"

INSTANCE = promql.grafana_selector(instance="$instance")
GPUS = promql.grafana_selector(instance="$instance", gpu="$gpu")
PER_GPU = ("instance", "gpu")
GPU_LEGEND = "{{instance}} GPU {{gpu}}"


def gpus(options: GenerateOptions) -> dict[str, Any]:
    memory_total = schema.GPU_MEMORY_TOTAL.name
    return dashboard(
        GPU_UID,
        "inferwatch / GPUs",
        "NVML readings per GPU: utilization, memory, temperature, power, clocks, processes.",
        [
            datasource_variable(options),
            query_variable("instance", "Instance", label_values(memory_total, "instance")),
            query_variable("gpu", "GPU", label_values(memory_total, "gpu", INSTANCE)),
        ],
        [
            ("Utilization", [line(8, (utilization(), 12), (memory_bandwidth(), 12))]),
            (
                "Memory",
                [
                    line(
                        8,
                        (memory_used(), 8),
                        (memory_used_ratio(options), 8),
                        (memory_per_process(), 8),
                    )
                ],
            ),
            (
                "Thermals and power",
                [line(8, (temperature(options), 8), (power(), 8), (clocks(), 8))],
            ),
            (
                "Health",
                [
                    line(
                        8,
                        (throttle_reasons(), 6),
                        (ecc_and_pcie_errors(), 6),
                        (sample_age(), 6),
                        (nvml_errors(), 6),
                    )
                ],
            ),
        ],
    )


def reading(family: schema.Family, legend: str = GPU_LEGEND) -> Query:
    """A gauge of the selected GPUs, one series each."""
    return Query(promql.instant(family.name, GPUS), legend)


# --- Utilization ----------------------------------------------------------------------------


def utilization() -> core.TimeSeries:
    return timeseries(
        "GPU utilization",
        "Fraction of time a kernel was running.",
        "percentunit",
        [reading(schema.GPU_UTILIZATION)],
        maximum=1,
    )


def memory_bandwidth() -> core.TimeSeries:
    return timeseries(
        "Memory bandwidth utilization",
        "Fraction of time device memory was being read or written.",
        "percentunit",
        [reading(schema.GPU_MEMORY_COPY_UTILIZATION)],
        maximum=1,
    )


# --- Memory ---------------------------------------------------------------------------------


def memory_used() -> core.TimeSeries:
    return timeseries(
        "Memory used",
        "Device memory in use; dashed: installed.",
        "bytes",
        [reading(schema.GPU_MEMORY_USED), reading(schema.GPU_MEMORY_TOTAL, f"{GPU_LEGEND} total")],
        dashed=[1],
    )


def memory_used_ratio(options: GenerateOptions) -> core.TimeSeries:
    return timeseries(
        "Memory used ratio",
        "Used over installed; dashed: the alert threshold.",
        "percentunit",
        [Query(promql.gpu_memory_used_ratio(GPUS), GPU_LEGEND)],
        maximum=1,
        thresholds=red_above(options.gpu_memory_alert_ratio),
    )


def memory_per_process() -> core.TimeSeries:
    return timeseries(
        "Memory per process",
        "Device memory per process (pid); processes beyond the per-GPU limit are summed "
        'into pid="other".',
        "bytes",
        [reading(schema.GPU_PROCESS_MEMORY, f"{GPU_LEGEND} pid {{{{pid}}}}")],
        stacked=True,
    )


# --- Thermals and power ---------------------------------------------------------------------


def temperature(options: GenerateOptions) -> core.TimeSeries:
    return timeseries(
        "Temperature",
        "Core temperature; dashed: the alert threshold.",
        "celsius",
        [reading(schema.GPU_TEMPERATURE)],
        thresholds=red_above(options.gpu_temperature_alert_celsius),
    )


def power() -> core.TimeSeries:
    return timeseries(
        "Power",
        "Power draw; dashed: the power management limit.",
        "watt",
        [reading(schema.GPU_POWER_USAGE), reading(schema.GPU_POWER_LIMIT, f"{GPU_LEGEND} limit")],
        dashed=[1],
    )


def clocks() -> core.TimeSeries:
    return timeseries(
        "Clocks",
        "Streaming multiprocessor and memory clocks.",
        "hertz",
        [
            reading(schema.GPU_SM_CLOCK, f"{GPU_LEGEND} SM"),
            reading(schema.GPU_MEMORY_CLOCK, f"{GPU_LEGEND} memory"),
        ],
    )


# --- Health ---------------------------------------------------------------------------------


def throttle_reasons() -> core.TimeSeries:
    return timeseries(
        "Clock throttle reasons",
        "GPUs whose clocks are held down, by reason (gpu_idle is normal when idle).",
        "short",
        [Query(promql.gpus_throttled(GPUS), "{{reason}}")],
    )


def ecc_and_pcie_errors() -> core.TimeSeries:
    return timeseries(
        "ECC errors and PCIe replays",
        "New errors per interval.",
        "short",
        [
            Query(
                promql.gpu_errors(schema.GPU_ECC_ERRORS, GPUS, (*PER_GPU, "type"), RATE),
                f"{GPU_LEGEND} ECC {{{{type}}}}",
            ),
            Query(
                promql.gpu_errors(schema.GPU_PCIE_REPLAY, GPUS, PER_GPU, RATE),
                f"{GPU_LEGEND} PCIe replays",
            ),
        ],
    )


def sample_age() -> core.TimeSeries:
    return timeseries(
        "NVML sample age",
        "Seconds since the values were read from NVML: a growing age means a stuck collector.",
        "s",
        [reading(schema.GPU_SAMPLE_AGE)],
    )


def nvml_errors() -> core.TimeSeries:
    return timeseries(
        "NVML errors",
        "Failed NVML calls per second, by reason (0 for a collector without any).",
        "short",
        [Query(promql.gpu_collector_errors(INSTANCE, GPUS, RATE), "{{instance}} {{reason}}")],
    )
