"""The NVML collector against a fake pynvml: exact series and values, failures, devices."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from support.fake_pynvml import FakeGpu, build, clear_visible_devices, install, mig
from support.metrics import samples
from support.prometheus import promtool_check_metrics

from inferwatch import gpu, schema
from inferwatch.gpu import GpuCollector, parse_visible_devices, start_gpu_metrics

GiB = 2**30
H100 = "NVIDIA H100 80GB HBM3"
A100 = "NVIDIA A100-SXM4-40GB"
MIG_1G = "NVIDIA H100 80GB HBM3 MIG 1g.10gb"
MIG_3G = "NVIDIA H100 80GB HBM3 MIG 3g.40gb"
NO_ERRORS = dict.fromkeys(gpu.PRESET_REASONS, 0)
THROTTLE = [reason for reason, _ in gpu.THROTTLE_REASONS]

Series = dict[tuple[str, frozenset[tuple[str, str]]], float]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def _no_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    clear_visible_devices(monkeypatch)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def collectors() -> Iterator[list[GpuCollector]]:
    made: list[GpuCollector] = []
    yield made
    for collector in made:
        collector.close()


def key(metric: str, /, **labels: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return (metric, frozenset(labels.items()))


def dev(index: str, uuid: str, name: str) -> dict[str, str]:
    return {"gpu": index, "uuid": uuid, "name": name}


def scrape(collector: GpuCollector) -> str:
    registry = CollectorRegistry()
    registry.register(collector)
    return generate_latest(registry).decode()


def scraped(collector: GpuCollector) -> Series:
    return samples(scrape(collector))


def errors_series(**counts: int) -> Series:
    return {
        key(schema.GPU_COLLECTOR_ERRORS.name, reason=reason): float(n)
        for reason, n in {**NO_ERRORS, **counts}.items()
    }


def of_device(series: Series, uuid: str) -> Series:
    return {k: v for k, v in series.items() if ("uuid", uuid) in k[1]}


def family_series(series: Series, family: schema.Family) -> Series:
    return {k: v for k, v in series.items() if k[0] == family.name}


def full_gpu_series(
    labels: dict[str, str],
    *,
    util: float,
    copy_util: float,
    memory: tuple[int, int, int],
    temperature: float,
    power: float,
    limit: float,
    sm_hz: float,
    mem_hz: float,
    joules: float,
    replay: int,
    ecc: tuple[int, int],
    throttled: set[str],
    processes: dict[str, int],
    age: float,
) -> Series:
    """Every series one physical GPU exposes, with the values given."""
    out: Series = {
        key(schema.GPU_UTILIZATION.name, **labels): util,
        key(schema.GPU_MEMORY_COPY_UTILIZATION.name, **labels): copy_util,
        key(schema.GPU_MEMORY_USED.name, **labels): memory[0],
        key(schema.GPU_MEMORY_TOTAL.name, **labels): memory[1],
        key(schema.GPU_MEMORY_FREE.name, **labels): memory[2],
        key(schema.GPU_TEMPERATURE.name, **labels): temperature,
        key(schema.GPU_POWER_USAGE.name, **labels): power,
        key(schema.GPU_POWER_LIMIT.name, **labels): limit,
        key(schema.GPU_SM_CLOCK.name, **labels): sm_hz,
        key(schema.GPU_MEMORY_CLOCK.name, **labels): mem_hz,
        key(schema.GPU_ENERGY.name, **labels): joules,
        key(schema.GPU_PCIE_REPLAY.name, **labels): replay,
        key(schema.GPU_ECC_ERRORS.name, **labels, type="corrected"): ecc[0],
        key(schema.GPU_ECC_ERRORS.name, **labels, type="uncorrected"): ecc[1],
        key(schema.GPU_SAMPLE_AGE.name, **labels): age,
    }
    for reason in THROTTLE:
        out[key(schema.GPU_THROTTLED.name, **labels, reason=reason)] = float(reason in throttled)
    for pid, used in processes.items():
        out[key(schema.GPU_PROCESS_MEMORY.name, **labels, pid=pid)] = used
    return out


def two_gpus() -> list[FakeGpu]:
    return [
        FakeGpu(
            "GPU-aaaa1111",
            H100,
            utilization=(42, 10),
            memory=(12 * GiB, 80 * GiB, 68 * GiB),
            temperature=54,
            power_mw=312_500,
            power_limit_mw=700_000,
            sm_mhz=1980,
            mem_mhz=2619,
            energy_mj=1_234_567,
            pcie_replay=2,
            ecc=(3, 1),
            ecc_aggregate=(30, 10),
            throttle=0x4 | 0x20,
            processes=[(101, 10 * GiB), (102, 1 * GiB), (999_001, 5 * GiB)],
        ),
        FakeGpu(
            "GPU-bbbb2222",
            A100.encode(),  # nvidia-ml-py before 12 returns bytes
            utilization=(0, 0),
            memory=(0, 40 * GiB, 40 * GiB),
            temperature=31,
            power_mw=55_000,
            power_limit_mw=400_000,
            sm_mhz=210,
            mem_mhz=1215,
            energy_mj=5_000,
            throttle=0x1,
        ),
    ]


def expected_two_gpus(age_a: float, age_b: float) -> Series:
    return {
        **full_gpu_series(
            dev("0", "GPU-aaaa1111", H100),
            util=0.42,
            copy_util=0.1,
            memory=(12 * GiB, 80 * GiB, 68 * GiB),
            temperature=54.0,
            power=312.5,
            limit=700.0,
            sm_hz=1.98e9,
            mem_hz=2.619e9,
            joules=1234.567,
            replay=2,
            ecc=(3, 1),
            throttled={"sw_power_cap", "sw_thermal_slowdown"},
            processes={"101": 10 * GiB, "102": 1 * GiB},  # 999001: not this namespace's
            age=age_a,
        ),
        **full_gpu_series(
            dev("1", "GPU-bbbb2222", A100),
            util=0.0,
            copy_util=0.0,
            memory=(0, 40 * GiB, 40 * GiB),
            temperature=31.0,
            power=55.0,
            limit=400.0,
            sm_hz=2.1e8,
            mem_hz=1.215e9,
            joules=5.0,
            replay=0,
            ecc=(0, 0),
            throttled={"gpu_idle"},
            processes={},
            age=age_b,
        ),
        **errors_series(),
    }


def make(
    monkeypatch: pytest.MonkeyPatch,
    gpus: list[FakeGpu],
    clock: Clock,
    collectors: list[GpuCollector],
    **options: object,
) -> tuple[GpuCollector, object]:
    module = build(gpus)
    install(monkeypatch, module)
    collector = GpuCollector(
        clock=clock,
        process_filter=lambda pid: pid in (101, 102, 201, 202),
        **options,  # type: ignore[arg-type]
    )
    collectors.append(collector)
    return collector, module


# --- values -------------------------------------------------------------------------------


def test_two_gpus_every_series_in_base_units(
    monkeypatch: pytest.MonkeyPatch, clock: Clock, collectors: list[GpuCollector]
) -> None:
    collector, _ = make(monkeypatch, two_gpus(), clock, collectors)
    collector.poll()
    assert scraped(collector) == expected_two_gpus(0.0, 0.0)
    clock.now += 2.5  # no poll since: the values are 2.5 s old
    assert scraped(collector) == expected_two_gpus(2.5, 2.5)


def test_a_scrape_never_calls_nvml(
    monkeypatch: pytest.MonkeyPatch, clock: Clock, collectors: list[GpuCollector]
) -> None:
    collector, module = make(monkeypatch, two_gpus(), clock, collectors)
    collector.poll()
    before = list(module.calls)  # type: ignore[attr-defined]
    scrape(collector)
    scrape(collector)
    assert module.calls == before  # type: ignore[attr-defined]


def test_values_follow_the_driver(
    monkeypatch: pytest.MonkeyPatch, clock: Clock, collectors: list[GpuCollector]
) -> None:
    gpus = two_gpus()
    collector, _ = make(monkeypatch, gpus, clock, collectors)
    collector.poll()
    gpus[0].energy_mj = 2_000_000
    gpus[0].utilization = (100, 55)
    collector.poll()
    series = scraped(collector)
    labels = dev("0", "GPU-aaaa1111", H100)
    assert series[key(schema.GPU_ENERGY.name, **labels)] == 2000.0
    assert series[key(schema.GPU_UTILIZATION.name, **labels)] == 1.0
    assert series[key(schema.GPU_MEMORY_COPY_UTILIZATION.name, **labels)] == 0.55


def test_legacy_throttle_reasons_name(
    monkeypatch: pytest.MonkeyPatch, clock: Clock, collectors: list[GpuCollector]
) -> None:
    install(monkeypatch, build(two_gpus(), legacy_throttle_name=True))
    collector = GpuCollector(clock=clock, process_filter=lambda pid: True)
    collectors.append(collector)
    collector.poll()
    series = family_series(scraped(collector), schema.GPU_THROTTLED)
    held = {dict(k[1])["reason"] for k, v in series.items() if v == 1.0}
    assert held == {"sw_power_cap", "sw_thermal_slowdown", "gpu_idle"}
    assert len(series) == 2 * len(THROTTLE)


def test_processes_bounded_largest_first_rest_as_other(
    monkeypatch: pytest.MonkeyPatch, clock: Clock, collectors: list[GpuCollector]
) -> None:
    big = FakeGpu(
        "GPU-cccc3333",
        processes=[(pid, pid * 1000) for pid in range(1, 13)] + [(50, None)],
    )
    install(monkeypatch, build([big]))
    collector = GpuCollector(max_processes=3, clock=clock, process_filter=lambda pid: pid != 11)
    collectors.append(collector)
    collector.poll()
    labels = dev("0", "GPU-cccc3333", H100)
    assert family_series(scraped(collector), schema.GPU_PROCESS_MEMORY) == {
        key(schema.GPU_PROCESS_MEMORY.name, **labels, pid="12"): 12000.0,
        key(schema.GPU_PROCESS_MEMORY.name, **labels, pid="10"): 10000.0,
        key(schema.GPU_PROCESS_MEMORY.name, **labels, pid="9"): 9000.0,
        # pids 1-8: 36000 bytes; pid 11 is not ours, pid 50 reports no figure
        key(schema.GPU_PROCESS_MEMORY.name, **labels, pid="other"): 36000.0,
    }


def test_only_processes_of_this_pid_namespace(
    monkeypatch: pytest.MonkeyPatch, collectors: list[GpuCollector]
) -> None:
    beyond_pid_max = 2**22 + 7  # Linux pid_max is at most 2**22: never a live process
    card = FakeGpu("GPU-dddd4444", processes=[(os.getpid(), 5 * GiB), (beyond_pid_max, GiB)])
    install(monkeypatch, build([card]))
    collector = GpuCollector()  # the default filter: /proc of this namespace
    collectors.append(collector)
    collector.poll()
    assert family_series(scraped(collector), schema.GPU_PROCESS_MEMORY) == {
        key(
            schema.GPU_PROCESS_MEMORY.name,
            **dev("0", "GPU-dddd4444", H100),
            pid=str(os.getpid()),
        ): 5.0 * GiB
    }


# --- MIG ----------------------------------------------------------------------------------


def mig_machine() -> list[FakeGpu]:
    return [
        FakeGpu(
            "GPU-aaaa1111",
            H100,
            memory=(11 * GiB, 80 * GiB, 69 * GiB),
            temperature=60,
            power_mw=400_000,
            processes=[(201, GiB), (202, 10 * GiB)],  # listed per instance instead
            mig_mode=1,
            mig_slots=[
                mig("MIG-1111", MIG_1G, GiB, 10 * GiB, processes=[(201, GiB)]),
                None,  # an empty slot
                mig("MIG-3333", MIG_3G, 10 * GiB, 40 * GiB, processes=[(202, 10 * GiB)]),
            ],
        ),
        FakeGpu("GPU-bbbb2222", A100, utilization=(7, 3), mig_mode=0),
    ]


def test_mig_instances_are_devices_with_their_own_memory(
    monkeypatch: pytest.MonkeyPatch, clock: Clock, collectors: list[GpuCollector]
) -> None:
    collector, _ = make(monkeypatch, mig_machine(), clock, collectors)
    collector.poll()
    series = scraped(collector)
    first = dev("0/0", "MIG-1111", MIG_1G)
    third = dev("0/2", "MIG-3333", MIG_3G)
    assert of_device(series, "MIG-1111") == {
        key(schema.GPU_MEMORY_USED.name, **first): 1.0 * GiB,
        key(schema.GPU_MEMORY_TOTAL.name, **first): 10.0 * GiB,
        key(schema.GPU_MEMORY_FREE.name, **first): 9.0 * GiB,
        key(schema.GPU_PROCESS_MEMORY.name, **first, pid="201"): 1.0 * GiB,
        key(schema.GPU_SAMPLE_AGE.name, **first): 0.0,
    }
    assert of_device(series, "MIG-3333") == {
        key(schema.GPU_MEMORY_USED.name, **third): 10.0 * GiB,
        key(schema.GPU_MEMORY_TOTAL.name, **third): 40.0 * GiB,
        key(schema.GPU_MEMORY_FREE.name, **third): 30.0 * GiB,
        key(schema.GPU_PROCESS_MEMORY.name, **third, pid="202"): 10.0 * GiB,
        key(schema.GPU_SAMPLE_AGE.name, **third): 0.0,
    }
    # The parent: per-GPU values, no utilization (refused under MIG), processes per instance.
    labels = dev("0", "GPU-aaaa1111", H100)
    expected_parent = full_gpu_series(
        labels,
        util=0,
        copy_util=0,
        memory=(11 * GiB, 80 * GiB, 69 * GiB),
        temperature=60.0,
        power=400.0,
        limit=700.0,
        sm_hz=3.45e8,
        mem_hz=2.619e9,
        joules=0.0,
        replay=0,
        ecc=(0, 0),
        throttled=set(),
        processes={},
        age=0.0,
    )
    del expected_parent[key(schema.GPU_UTILIZATION.name, **labels)]
    del expected_parent[key(schema.GPU_MEMORY_COPY_UTILIZATION.name, **labels)]
    assert of_device(series, "GPU-aaaa1111") == expected_parent
    # A GPU with MIG off is an ordinary GPU.
    assert series[key(schema.GPU_UTILIZATION.name, **dev("1", "GPU-bbbb2222", A100))] == 0.07
    # MIG refusing utilization is expected: no error counted.
    assert family_series(series, schema.GPU_COLLECTOR_ERRORS) == errors_series()


def test_mig_refusal_is_not_asked_again(
    monkeypatch: pytest.MonkeyPatch, clock: Clock, collectors: list[GpuCollector]
) -> None:
    collector, module = make(monkeypatch, mig_machine(), clock, collectors)
    for _ in range(3):
        collector.poll()
    # 3 polls of GPU 1; the MIG GPU and its 2 instances were asked once each
    assert module.calls.count("nvmlDeviceGetUtilizationRates") == 3 + 3  # type: ignore[attr-defined]


# --- failures -----------------------------------------------------------------------------


def test_unsupported_call_is_counted_once_logged_once_and_not_retried(
    monkeypatch: pytest.MonkeyPatch,
    clock: Clock,
    collectors: list[GpuCollector],
    caplog: pytest.LogCaptureFixture,
) -> None:
    gpus = two_gpus()
    gpus[1].fail = {
        "nvmlDeviceGetPcieReplayCounter": 3,  # NVML_ERROR_NOT_SUPPORTED
        "nvmlDeviceGetTotalEccErrors": 3,
    }
    collector, module = make(monkeypatch, gpus, clock, collectors)
    with caplog.at_level(logging.WARNING, logger="inferwatch.gpu"):
        for _ in range(4):
            collector.poll()
    calls = module.calls  # type: ignore[attr-defined]
    assert calls.count("nvmlDeviceGetPcieReplayCounter") == 4 + 1
    assert calls.count("nvmlDeviceGetTotalEccErrors") == 4 * 2 + 2
    assert [r.getMessage() for r in caplog.records] == [
        "GPU metrics: GPU 1 (GPU-bbbb2222): nvmlDeviceGetPcieReplayCounter failed: "
        "Not Supported (not_supported); not asked again",
        "GPU metrics: GPU 1 (GPU-bbbb2222): nvmlDeviceGetTotalEccErrors failed: "
        "Not Supported (not_supported); not asked again",
    ]
    series = scraped(collector)
    expected = expected_two_gpus(0.0, 0.0)
    b = dev("1", "GPU-bbbb2222", A100)
    for gone in (
        key(schema.GPU_PCIE_REPLAY.name, **b),
        key(schema.GPU_ECC_ERRORS.name, **b, type="corrected"),
        key(schema.GPU_ECC_ERRORS.name, **b, type="uncorrected"),
    ):
        del expected[gone]
    expected.update(errors_series(not_supported=3))  # one per refused call
    assert series == expected


def test_failing_call_counted_each_time_logged_once_others_unaffected(
    monkeypatch: pytest.MonkeyPatch,
    clock: Clock,
    collectors: list[GpuCollector],
    caplog: pytest.LogCaptureFixture,
) -> None:
    gpus = two_gpus()
    gpus[0].fail = {"nvmlDeviceGetPowerUsage": 10}  # NVML_ERROR_TIMEOUT
    collector, _ = make(monkeypatch, gpus, clock, collectors)
    with caplog.at_level(logging.WARNING, logger="inferwatch.gpu"):
        for _ in range(3):
            collector.poll()
    assert len(caplog.records) == 1
    assert caplog.records[0].getMessage() == (
        "GPU metrics: GPU 0 (GPU-aaaa1111): nvmlDeviceGetPowerUsage failed: Timeout (timeout)"
    )
    expected = expected_two_gpus(0.0, 0.0)
    del expected[key(schema.GPU_POWER_USAGE.name, **dev("0", "GPU-aaaa1111", H100))]
    expected.update(errors_series(timeout=3))
    assert scraped(collector) == expected
    # transient: asked again, and back once the driver answers
    gpus[0].fail = {}
    collector.poll()
    assert scraped(collector) == {**expected_two_gpus(0.0, 0.0), **errors_series(timeout=3)}


def test_binding_raising_something_else_is_an_exception_error(
    monkeypatch: pytest.MonkeyPatch, clock: Clock, collectors: list[GpuCollector]
) -> None:
    collector, module = make(monkeypatch, two_gpus(), clock, collectors)

    def broken(handle: object, sensor: int) -> int:
        raise TypeError("a binding bug")

    monkeypatch.setattr(module, "nvmlDeviceGetTemperature", broken)
    collector.poll()
    series = scraped(collector)
    assert family_series(series, schema.GPU_TEMPERATURE) == {}
    assert family_series(series, schema.GPU_COLLECTOR_ERRORS) == errors_series(exception=2)
    assert len(family_series(series, schema.GPU_MEMORY_USED)) == 2


def test_unexpected_value_drops_that_gpu_only(
    monkeypatch: pytest.MonkeyPatch,
    clock: Clock,
    collectors: list[GpuCollector],
    caplog: pytest.LogCaptureFixture,
) -> None:
    gpus = two_gpus()
    collector, module = make(monkeypatch, gpus, clock, collectors)
    collector.poll()
    read_at = clock.now
    real_rates = module.nvmlDeviceGetUtilizationRates  # type: ignore[attr-defined]

    def odd_rates(handle: object) -> object:
        rates = real_rates(handle)
        if handle.gpu is gpus[0]:  # type: ignore[attr-defined]
            rates.gpu = None  # a binding returning a shape we did not expect
        return rates

    monkeypatch.setattr(module, "nvmlDeviceGetUtilizationRates", odd_rates)
    with caplog.at_level(logging.WARNING, logger="inferwatch.gpu"):
        for _ in range(2):
            clock.now += 5
            collector.poll()
    assert len(caplog.records) == 1
    assert (
        caplog.records[0]
        .getMessage()
        .startswith("GPU metrics: GPU 0 (GPU-aaaa1111) failed: unsupported operand type(s)")
    )
    series = scraped(collector)
    assert of_device(series, "GPU-aaaa1111") == {
        key(schema.GPU_SAMPLE_AGE.name, **dev("0", "GPU-aaaa1111", H100)): clock.now - read_at
    }
    assert of_device(series, "GPU-bbbb2222") == of_device(
        expected_two_gpus(0.0, 0.0), "GPU-bbbb2222"
    )
    assert family_series(series, schema.GPU_COLLECTOR_ERRORS) == errors_series(exception=2)


def test_lost_gpu_mid_run(
    monkeypatch: pytest.MonkeyPatch,
    clock: Clock,
    collectors: list[GpuCollector],
    caplog: pytest.LogCaptureFixture,
) -> None:
    gpus = two_gpus()
    collector, _ = make(monkeypatch, gpus, clock, collectors)
    collector.poll()
    lost_at = clock.now
    gpus[0].fail = {"nvmlDeviceGetMemoryInfo": 15}  # NVML_ERROR_GPU_IS_LOST
    with caplog.at_level(logging.WARNING, logger="inferwatch.gpu"):
        for _ in range(3):
            clock.now += 5
            collector.poll()
    assert [r.getMessage() for r in caplog.records] == [
        "GPU metrics: GPU 0 (GPU-aaaa1111) failed: Gpu Is Lost (gpu_is_lost)"
    ]
    series = scraped(collector)
    a = dev("0", "GPU-aaaa1111", H100)
    # GPU 0's values are gone, not repeated; its age says since when
    assert of_device(series, "GPU-aaaa1111") == {
        key(schema.GPU_SAMPLE_AGE.name, **a): clock.now - lost_at,
    }
    assert clock.now - lost_at == 15.0
    expected_b = of_device(expected_two_gpus(0.0, 0.0), "GPU-bbbb2222")
    assert of_device(series, "GPU-bbbb2222") == expected_b
    assert family_series(series, schema.GPU_COLLECTOR_ERRORS) == errors_series(gpu_is_lost=3)

    gpus[0].fail = {}  # reset and back
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="inferwatch.gpu"):
        collector.poll()
    assert [r.getMessage() for r in caplog.records] == ["GPU 0 (GPU-aaaa1111) answers again"]
    assert scraped(collector) == {**expected_two_gpus(0.0, 0.0), **errors_series(gpu_is_lost=3)}


def test_gpu_failing_at_start_is_skipped(
    monkeypatch: pytest.MonkeyPatch, clock: Clock, collectors: list[GpuCollector]
) -> None:
    gpus = two_gpus()
    gpus[0].fail = {"nvmlDeviceGetHandleByIndex": 15}
    collector, _ = make(monkeypatch, gpus, clock, collectors)
    collector.poll()
    series = scraped(collector)
    assert of_device(series, "GPU-aaaa1111") == {}
    assert of_device(series, "GPU-bbbb2222") == of_device(
        expected_two_gpus(0.0, 0.0), "GPU-bbbb2222"
    )
    assert family_series(series, schema.GPU_COLLECTOR_ERRORS) == errors_series(gpu_is_lost=1)
    assert [d.gpu for d in collector.devices] == ["1"]


def only_errors(collector: GpuCollector) -> str:
    """The whole exposition of a collector that has no GPU: just the error counter."""
    return scrape(collector)


@pytest.mark.parametrize(
    ("init_error", "reason", "message"),
    [
        (
            12,
            "library_not_found",
            "NVML did not start: Library Not Found"
            " (no NVIDIA driver here, or it is not mounted into this container)",
        ),
        (
            9,
            "driver_not_loaded",
            "NVML did not start: Driver Not Loaded (the NVIDIA kernel module is not loaded)",
        ),
        (
            4,
            "no_permission",
            "NVML did not start: No Permission (this user may not open /dev/nvidia*)",
        ),
        (999, "unknown", "NVML did not start: Unknown"),
    ],
)
def test_nvml_not_starting(
    init_error: int,
    reason: str,
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    registry: CollectorRegistry,
) -> None:
    module = build(two_gpus(), init_error=init_error)
    install(monkeypatch, module)
    with caplog.at_level(logging.INFO, logger="inferwatch.gpu"):
        collector = start_gpu_metrics(registry, interval=0.01)
        assert collector.wait_for_generation(1, timeout=10)
        assert collector._thread is not None
        collector._thread.join(10)  # nothing to poll: the thread ends by itself
        assert not collector._thread.is_alive()
    assert samples(generate_latest(registry).decode()) == errors_series(**{reason: 1})
    assert [r.getMessage() for r in caplog.records] == [f"GPU metrics off: {message}"]
    assert collector.problem == message
    collector.close()
    assert module.calls == ["nvmlInit"]  # type: ignore[attr-defined]  # no shutdown owed


def test_no_library_at_all(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    registry: CollectorRegistry,
) -> None:
    install(monkeypatch, None)  # `import pynvml` raises ImportError
    with caplog.at_level(logging.INFO, logger="inferwatch.gpu"):
        collector = start_gpu_metrics(registry, interval=0.01)
        assert collector.wait_for_generation(1, timeout=10)
        collector.poll()
    assert samples(generate_latest(registry).decode()) == errors_series(library_not_found=1)
    assert len(caplog.records) == 1
    assert (
        caplog.records[0]
        .getMessage()
        .startswith("GPU metrics off: nvidia-ml-py is not installed (")
    )
    collector.close()
    assert generate_latest(registry) == b""


def test_no_gpu(monkeypatch: pytest.MonkeyPatch, collectors: list[GpuCollector]) -> None:
    module = build([])
    install(monkeypatch, module)
    collector = GpuCollector(interval=0.01)
    collectors.append(collector)
    collector.start()
    assert collector.wait_for_generation(1, timeout=10)
    assert collector._thread is not None
    collector._thread.join(10)  # nothing to read: the thread ends by itself
    assert not collector._thread.is_alive()
    collector.poll()
    assert scraped(collector) == errors_series(no_devices=1)
    assert collector.problem == "NVML reports no GPU"
    collector.close()
    assert module.calls.count("nvmlShutdown") == 1  # type: ignore[attr-defined]


def test_real_nvml_binding_without_a_driver(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The real nvidia-ml-py on a machine without NVIDIA's driver: one clean error."""
    monkeypatch.delitem(sys.modules, "pynvml", raising=False)
    import pynvml

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        code = exc.value
    else:
        pynvml.nvmlShutdown()
        pytest.skip("this machine has an NVIDIA driver; test_gpu_device covers it")
    reason = next(
        n.removeprefix("NVML_ERROR_").lower()
        for n in dir(pynvml)
        if n.startswith("NVML_ERROR_") and getattr(pynvml, n) == code
    )
    with caplog.at_level(logging.WARNING, logger="inferwatch.gpu"):
        collector = GpuCollector()
        collector.poll()
        collector.poll()
        text = scrape(collector)
        collector.close()
    assert samples(text) == errors_series(**{reason: 1})
    assert len(caplog.records) == 1
    assert caplog.records[0].getMessage().startswith("GPU metrics off: NVML did not start: ")


# --- visible devices ----------------------------------------------------------------------


def three_gpus_one_mig() -> list[FakeGpu]:
    return [
        FakeGpu("GPU-aaaa1111"),
        FakeGpu(
            "GPU-bbbb2222",
            mig_mode=1,
            mig_slots=[mig("MIG-b1", MIG_1G, 0, 10 * GiB), mig("MIG-b2", MIG_1G, 0, 10 * GiB)],
        ),
        FakeGpu("GPU-cccc3333"),
    ]


@pytest.mark.parametrize(
    ("env", "shown"),
    [
        ({}, ["0", "1", "1/0", "1/1", "2"]),
        ({"CUDA_VISIBLE_DEVICES": "2"}, ["2"]),
        ({"CUDA_VISIBLE_DEVICES": "2,0"}, ["0", "2"]),
        ({"CUDA_VISIBLE_DEVICES": "GPU-cccc3333"}, ["2"]),
        ({"CUDA_VISIBLE_DEVICES": "GPU-cccc"}, ["2"]),  # a UUID prefix, as CUDA allows
        ({"CUDA_VISIBLE_DEVICES": "1"}, ["1", "1/0", "1/1"]),
        ({"CUDA_VISIBLE_DEVICES": "MIG-b2"}, ["1/1"]),
        ({"NVIDIA_VISIBLE_DEVICES": "GPU-aaaa1111,MIG-b1"}, ["0", "1/0"]),
        ({"NVIDIA_VISIBLE_DEVICES": "all"}, ["0", "1", "1/0", "1/1", "2"]),
        ({"NVIDIA_VISIBLE_DEVICES": "none"}, []),
        ({"NVIDIA_VISIBLE_DEVICES": "void"}, []),
        ({"NVIDIA_VISIBLE_DEVICES": ""}, []),
        ({"CUDA_VISIBLE_DEVICES": ""}, []),
        ({"CUDA_VISIBLE_DEVICES": "-1"}, []),
        ({"CUDA_VISIBLE_DEVICES": "0", "NVIDIA_VISIBLE_DEVICES": "all"}, ["0"]),
        ({"CUDA_VISIBLE_DEVICES": "0,7,GPU-ffff"}, ["0"]),  # unknown entries ignored
    ],
)
def test_visible_devices(
    env: dict[str, str],
    shown: list[str],
    monkeypatch: pytest.MonkeyPatch,
    clock: Clock,
    collectors: list[GpuCollector],
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    collector, _ = make(monkeypatch, three_gpus_one_mig(), clock, collectors)
    collector.poll()
    memory = family_series(scraped(collector), schema.GPU_MEMORY_TOTAL)
    assert sorted(dict(labels)["gpu"] for _, labels in memory) == shown
    assert [d.gpu for d in collector.devices] == shown
    all_of_them = GpuCollector(all_devices=True, clock=clock)
    collectors.append(all_of_them)
    all_of_them.poll()
    assert [d.gpu for d in all_of_them.devices] == ["0", "1", "1/0", "1/1", "2"]


def test_visible_devices_selecting_none_is_not_an_error(
    monkeypatch: pytest.MonkeyPatch,
    clock: Clock,
    collectors: list[GpuCollector],
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("NVIDIA_VISIBLE_DEVICES", "void")
    collector, _ = make(monkeypatch, two_gpus(), clock, collectors)
    with caplog.at_level(logging.INFO, logger="inferwatch.gpu"):
        collector.poll()
    assert scraped(collector) == errors_series()
    assert collector.problem == "the visible-devices setting selects none of the GPUs"
    assert [r.getMessage() for r in caplog.records] == [
        "GPU metrics: the visible-devices setting selects none of the GPUs "
        "(NVIDIA_VISIBLE_DEVICES='void')"
    ]


def test_unknown_visible_device_is_logged(
    monkeypatch: pytest.MonkeyPatch,
    clock: Clock,
    collectors: list[GpuCollector],
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,GPU-ffff")
    collector, _ = make(monkeypatch, two_gpus(), clock, collectors)
    with caplog.at_level(logging.WARNING, logger="inferwatch.gpu"):
        collector.poll()
    assert [r.getMessage() for r in caplog.records] == [
        "visible devices: 'GPU-ffff' names no GPU NVML reports; ignored"
    ]


@pytest.mark.parametrize(
    ("env", "entries"),
    [
        ({}, None),
        ({"CUDA_VISIBLE_DEVICES": " 0, 1 "}, ["0", "1"]),
        ({"CUDA_VISIBLE_DEVICES": "all"}, None),
        ({"NVIDIA_VISIBLE_DEVICES": "GPU-a,MIG-b"}, ["GPU-a", "MIG-b"]),
        ({"NVIDIA_VISIBLE_DEVICES": "none"}, []),
        ({"CUDA_VISIBLE_DEVICES": "1", "NVIDIA_VISIBLE_DEVICES": "none"}, ["1"]),
        ({"NVIDIA_VISIBLE_DEVICES": "/var/run/nvidia-container-devices"}, None),
    ],
)
def test_parse_visible_devices(env: dict[str, str], entries: list[str] | None) -> None:
    assert parse_visible_devices(env) == entries


# --- lifecycle ----------------------------------------------------------------------------


def test_polls_in_the_background_at_the_interval(
    monkeypatch: pytest.MonkeyPatch, registry: CollectorRegistry
) -> None:
    gpus = two_gpus()
    install(monkeypatch, build(gpus))
    collector = start_gpu_metrics(registry, interval=0.01)
    try:
        assert collector.wait_for_generation(1, timeout=10)
        labels = dev("0", "GPU-aaaa1111", H100)
        assert registry.get_sample_value(schema.GPU_TEMPERATURE.name, labels) == 54.0
        gpus[0].temperature = 71
        seen = collector.generation
        assert collector.wait_for_generation(seen + 2, timeout=10)  # a poll that began after
        assert registry.get_sample_value(schema.GPU_TEMPERATURE.name, labels) == 71.0
    finally:
        collector.close()


def test_close_shuts_nvml_down_once_and_unregisters(
    monkeypatch: pytest.MonkeyPatch, registry: CollectorRegistry
) -> None:
    module = build(two_gpus())
    install(monkeypatch, module)
    collector = start_gpu_metrics(registry, interval=0.01)
    assert collector.wait_for_generation(2, timeout=10)
    collector.close()
    collector.close()
    calls = module.calls  # type: ignore[attr-defined]
    assert calls.count("nvmlInit") == 1
    assert calls.count("nvmlShutdown") == 1
    assert calls[-1] == "nvmlShutdown"  # nothing is read after shutdown
    assert collector._thread is not None and not collector._thread.is_alive()
    assert generate_latest(registry) == b""
    collector.poll()  # after close: a no-op, not an NVML call
    assert calls[-1] == "nvmlShutdown"


def test_started_twice_on_a_registry_shares_one_collector(
    monkeypatch: pytest.MonkeyPatch, registry: CollectorRegistry
) -> None:
    module = build(two_gpus())
    install(monkeypatch, module)
    first = start_gpu_metrics(registry, interval=0.01)
    try:
        assert start_gpu_metrics(registry, interval=0.01) is first
        assert first.wait_for_generation(1, timeout=10)
        assert module.calls.count("nvmlInit") == 1  # type: ignore[attr-defined]
    finally:
        first.close()
    second = start_gpu_metrics(registry, interval=0.01)  # after close: a new one
    try:
        assert second is not first
        assert second.wait_for_generation(1, timeout=10)
        assert (
            registry.get_sample_value(schema.GPU_TEMPERATURE.name, dev("1", "GPU-bbbb2222", A100))
            == 31.0
        )
    finally:
        second.close()


def test_one_collector_per_registry(
    monkeypatch: pytest.MonkeyPatch, registry: CollectorRegistry, collectors: list[GpuCollector]
) -> None:
    install(monkeypatch, build(two_gpus()))
    first = GpuCollector()
    collectors.append(first)
    first.register(registry)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        GpuCollector().register(registry)


@pytest.mark.parametrize(
    ("options", "message"),
    [({"interval": 0}, "interval must be > 0"), ({"max_processes": -1}, "max_processes")],
)
def test_bad_options(options: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        GpuCollector(**options)  # type: ignore[arg-type]


def test_exposition_is_promtool_clean(
    monkeypatch: pytest.MonkeyPatch, clock: Clock, collectors: list[GpuCollector], promtool: str
) -> None:
    machine = [
        *mig_machine(),
        FakeGpu("GPU-eeee5555", processes=[(101, GiB)], fail={"nvmlDeviceGetPowerUsage": 3}),
    ]
    collector, _ = make(monkeypatch, machine, clock, collectors)
    collector.poll()
    text = scrape(collector)
    # MIG parent 24 - 2 (no utilization), 2 MIG instances x 5, GPU 1: 24,
    # GPU 2: 24 - 1 (no power) + 1 process, the error counter: 6 reasons
    assert len(samples(text)) == 22 + 10 + 24 + 24 + 6
    assert promtool_check_metrics(promtool, text) == ""
