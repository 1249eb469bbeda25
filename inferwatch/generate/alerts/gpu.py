"""GPUs: memory, heat, power, and a collector that cannot read them."""

from __future__ import annotations

from inferwatch import schema
from inferwatch.generate import promql
from inferwatch.generate.alerts.alert import GPU, POD, Alert, AlertTest
from inferwatch.generate.options import GenerateOptions


def alerts(options: GenerateOptions) -> list[Alert]:
    return [
        memory_near_full(options),
        temperature_high(options),
        power_throttling(),
        *collector_failing(),
    ]


def memory_near_full(options: GenerateOptions) -> Alert:
    ratio = options.gpu_memory_alert_ratio
    used = promql.series(schema.GPU_MEMORY_USED.name, **GPU)
    total = promql.series(schema.GPU_MEMORY_TOTAL.name, **GPU)
    return Alert(
        name="GPUMemoryNearFull",
        expr=promql.above(promql.gpu_memory_used_ratio(""), ratio),
        for_="15m",
        severity="warning",
        summary="GPU {{ $labels.gpu }} on {{ $labels.pod }} is almost out of memory.",
        description=(
            f"GPU {{{{ $labels.gpu }}}} ({{{{ $labels.name }}}}) has used more than "
            f"{ratio:.0%} of its memory for 15 minutes; the next larger "
            "batch or model load may fail with out-of-memory."
        ),
        runbook="""
GPU memory is nearly full. The next larger batch, a second model load, or fragmentation can end
in CUDA out-of-memory errors.

1. See per-process GPU memory on the GPU dashboard: which process holds it?
2. Reduce the maximum batch size or the number of models per GPU, or move to a larger GPU.
3. Frameworks that cache memory (PyTorch) show high usage by design; alert only matters if it
   keeps growing or errors appear.
""",
        tests=(
            AlertTest("full", {used: "79e9x30", total: "80e9x30"}, "20m", [GPU]),
            AlertTest("half", {used: "40e9x30", total: "80e9x30"}, "20m", []),
        ),
    )


def temperature_high(options: GenerateOptions) -> Alert:
    celsius = options.gpu_temperature_alert_celsius
    temperature = promql.series(schema.GPU_TEMPERATURE.name, **GPU)
    return Alert(
        name="GPUTemperatureHigh",
        expr=promql.above(schema.GPU_TEMPERATURE.name, celsius),
        for_="5m",
        severity="warning",
        summary="GPU {{ $labels.gpu }} on {{ $labels.pod }} is running hot.",
        description=(
            f"GPU {{{{ $labels.gpu }}}} ({{{{ $labels.name }}}}) has been above "
            f"{celsius} °C for 5 minutes; it will throttle its "
            "clocks and inference slows down."
        ),
        runbook="""
The GPU is hotter than it should be under sustained load and will lower its clocks.

1. Check the node's cooling and fan status with the hardware team or cloud provider.
2. Compare with other GPUs on the node: one hot GPU points at hardware.
3. If it persists, drain the node.
""",
        tests=(
            AlertTest("hot", {temperature: "90x20"}, "10m", [GPU]),
            AlertTest("cool", {temperature: "70x20"}, "10m", []),
        ),
    )


def power_throttling() -> Alert:
    sw_power_cap, hw_power_brake = schema.POWER_THROTTLE_REASONS
    capped = promql.series(schema.GPU_THROTTLED.name, reason=sw_power_cap, **GPU)
    return Alert(
        name="GPUPowerThrottling",
        expr=promql.gpu_power_capped("10m"),
        for_="15m",
        severity="warning",
        summary="GPU {{ $labels.gpu }} on {{ $labels.pod }} is held at its power limit.",
        description=(
            "GPU {{ $labels.gpu }} ({{ $labels.name }}) has had its clocks held down by its "
            "power limit most of the time for 15 minutes: inference is bound by power, "
            "not by the model."
        ),
        runbook=f"""
The GPU has drawn almost all of its power limit for a long time, so its clocks are capped.
Inference throughput is bounded by power rather than by the model.

1. Check the power limit on the GPU dashboard: was it lowered (`nvidia-smi -pl`)?
2. `{hw_power_brake}`: the power supply or the chassis asked the GPU to slow down;
   check the node's hardware.
3. `{sw_power_cap}` under full batch load is expected on some GPUs; it matters when the latency
   objective burns too.
""",
        tests=(
            AlertTest("capped", {capped: "1 1 0 1 1 1 1 1 1 1 0 1 1x30"}, "30m", [GPU]),
            AlertTest("now and then", {capped: "0 0 1 0 0 0 0 1 0 0x30"}, "30m", []),
        ),
    )


def collector_failing() -> list[Alert]:
    """Two ways to go blind: a lost GPU stops producing samples (their age grows); other NVML
    failures are counted."""
    reason = schema.GPU_ERROR_DRIVER_NOT_LOADED
    errors = promql.series(schema.GPU_COLLECTOR_ERRORS.name, reason=reason, **POD)
    age = promql.series(schema.GPU_SAMPLE_AGE.name, **GPU)
    fresh = "5x40"
    cases = {
        "stale": {errors: "0x40", age: "5x10 65+60x30"},
        "errors keep coming": {errors: "0+5x40", age: fresh},
        "one-off error": {errors: "0 1x40", age: fresh},
    }
    sample_age, lost = schema.GPU_SAMPLE_AGE.name, schema.GPU_ERROR_GPU_IS_LOST
    runbook = f"""
inferwatch cannot read the GPU's statistics from NVML (the reason label says why: lost GPU,
driver problem, unsupported call). GPU dashboards and alerts are blind on this pod.

1. Run `inferwatch gpu --once` or `nvidia-smi` in the pod.
2. Stale samples (`{sample_age}` growing) usually mean a lost GPU (`{lost}`): it
   fell off the bus; drain the node and check the kernel log for XID errors.
3. Driver or library errors: check the NVIDIA device plugin and the driver version on the node.
"""
    return [
        Alert(
            name="GPUCollectorFailing",
            expr=expr,
            for_="10m",
            severity="warning",
            labels={"problem": problem},
            summary="GPU metrics on {{ $labels.pod }} are failing.",
            description=(
                f"In {{{{ $labels.namespace }}}}/{{{{ $labels.pod }}}} {what} (10 minutes "
                "now): GPU panels and alerts are blind there."
            ),
            runbook=runbook,
            tests=tuple(
                AlertTest(name, series, "35m", [labels] if name == firing_case else [])
                for name, series in cases.items()
            ),
        )
        for expr, firing_case, labels, what, problem in (
            (
                promql.above(schema.GPU_SAMPLE_AGE.name, 60),
                "stale",
                GPU,
                "GPU {{ $labels.gpu }} has not been read for over a minute",
                "stale_samples",
            ),
            (
                promql.gpu_collector_failing("10m"),
                "errors keep coming",
                {**POD, "reason": reason},
                "NVML calls keep failing with {{ $labels.reason }}",
                "nvml_errors",
            ),
        )
    ]
