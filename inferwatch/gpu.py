"""GPU metrics read from NVML (nvidia-ml-py, imported as ``pynvml``).

NVML is read on a background thread every ``interval`` seconds; a scrape only formats the
last sample, so a slow or hung driver never blocks ``/metrics``. Each device's sample carries
its age (``gpu_sample_age_seconds``), which grows when reading stops.

Failures never crash the host process: no library, no driver, no GPU, a lost GPU or a call a
device does not support are each logged once, counted in ``gpu_collector_errors_total{reason}``
and leave the other GPUs and metrics working. A call a device does not support is remembered
and not made again.

    from inferwatch.gpu import start_gpu_metrics
    gpus = start_gpu_metrics(interval=5.0)   # registers on prometheus_client's REGISTRY
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from inferwatch import schema
from inferwatch.exposition import multiprocess_dir

log = logging.getLogger(__name__)

# The label values live in the schema (the generators name them too); the old names stay.
REASON_LIBRARY_NOT_FOUND = schema.GPU_ERROR_LIBRARY_NOT_FOUND
REASON_NOT_SUPPORTED = schema.GPU_ERROR_NOT_SUPPORTED
REASON_GPU_IS_LOST = schema.GPU_ERROR_GPU_IS_LOST
REASON_DRIVER_NOT_LOADED = schema.GPU_ERROR_DRIVER_NOT_LOADED
REASON_NO_DEVICES = schema.GPU_ERROR_NO_DEVICES
REASON_EXCEPTION = schema.GPU_ERROR_EXCEPTION
PRESET_REASONS = schema.GPU_ERROR_PRESET_REASONS
ECC_CORRECTED = schema.ECC_CORRECTED
ECC_UNCORRECTED = schema.ECC_UNCORRECTED
THROTTLE_REASONS = schema.THROTTLE_REASONS

DEFAULT_MAX_PROCESSES = 8  # per GPU; the rest is summed into pid="other"
VISIBLE_DEVICES_ENV = ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES")

_HINTS = {
    REASON_LIBRARY_NOT_FOUND: "no NVIDIA driver here, or it is not mounted into this container",
    REASON_DRIVER_NOT_LOADED: "the NVIDIA kernel module is not loaded",
    "no_permission": "this user may not open /dev/nvidia*",
}

# Errors after which the rest of a device's reading this round is pointless.
_DEVICE_FATAL = ("NVML_ERROR_GPU_IS_LOST", "NVML_ERROR_RESET_REQUIRED")
# Errors that mean "this device never answers this call": remembered, not retried.
_UNSUPPORTED = ("NVML_ERROR_NOT_SUPPORTED", "NVML_ERROR_FUNCTION_NOT_FOUND")


@dataclass(frozen=True)
class Device:
    """A GPU (or a MIG instance) NVML can read, found once at start."""

    gpu: str  # "0"; a MIG instance: "<parent index>/<MIG device index>", as nvidia-smi -L lists
    uuid: str
    name: str
    handle: Any = field(repr=False, compare=False)
    mig: bool = False  # a MIG instance
    mig_enabled: bool = False  # a physical GPU split into MIG instances
    parent_uuid: str = ""


@dataclass(frozen=True)
class GpuSample:
    """One device's values as NVML last reported them, in base units; None: not available."""

    gpu: str
    uuid: str
    name: str
    mig: bool
    taken_at: float  # the collector's clock (monotonic) when read
    utilization: float | None = None  # ratio 0-1
    memory_copy_utilization: float | None = None
    memory_used: int | None = None  # bytes
    memory_total: int | None = None
    memory_free: int | None = None
    temperature: float | None = None  # celsius
    power_usage: float | None = None  # watts
    power_limit: float | None = None
    sm_clock: float | None = None  # hertz
    memory_clock: float | None = None
    energy: float | None = None  # joules since the driver loaded
    pcie_replay: int | None = None
    ecc_errors: Mapping[str, int] = field(default_factory=dict)  # type -> count
    throttled: Mapping[str, bool] = field(default_factory=dict)  # reason -> held down
    processes: Mapping[str, int] = field(default_factory=dict)  # pid -> bytes

    @property
    def labels(self) -> list[str]:
        return [self.gpu, self.uuid, self.name]


class _DeviceLost(Exception):
    """The device stopped answering; skip the rest of its reading this round."""


def load_nvml() -> ModuleType:
    """Import the NVML binding (nvidia-ml-py); raises ImportError when it is not installed."""
    import pynvml

    return pynvml


def _text(value: str | bytes) -> str:
    """nvidia-ml-py 12+ returns str; older versions bytes."""
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def parse_visible_devices(environ: Mapping[str, str]) -> list[str] | None:
    """The device entries a process may use: None for all, else indexes and UUIDs.

    ``CUDA_VISIBLE_DEVICES`` wins over ``NVIDIA_VISIBLE_DEVICES``, as for CUDA itself; "all"
    means every device NVML sees, while "none", "void", "" and "-1" mean none.
    """
    for name in VISIBLE_DEVICES_ENV:
        raw = environ.get(name)
        if raw is None:
            continue
        value = raw.strip()
        if value == "all" or value.startswith("/"):
            # A path: the device plugin's volume-mounts list strategy; the container runtime
            # has already limited what NVML sees to the pod's GPUs.
            return None
        if value in ("", "none", "void", "NoDevFiles", "-1"):
            return []
        return [entry.strip() for entry in value.split(",") if entry.strip()]
    return None


def select_devices(devices: Sequence[Device], entries: Sequence[str] | None) -> list[Device]:
    """The devices ``entries`` name, in NVML order; an index or GPU UUID takes its MIG instances.

    Indexes are NVML's (nvidia-smi's); CUDA agrees only with ``CUDA_DEVICE_ORDER=PCI_BUS_ID``.
    UUID prefixes are accepted, as CUDA accepts them.
    """
    if entries is None:
        return list(devices)
    chosen: set[str] = set()
    for entry in entries:
        matched = [
            d
            for d in devices
            if (not d.mig and entry == d.gpu)
            or (entry.startswith(("GPU-", "MIG-")) and d.uuid.startswith(entry))
        ]
        if not matched:
            log.warning("visible devices: %r names no GPU NVML reports; ignored", entry)
        for device in matched:
            chosen.add(device.uuid)
            if not device.mig:
                chosen.update(d.uuid for d in devices if d.parent_uuid == device.uuid)
    return [d for d in devices if d.uuid in chosen]


def process_in_namespace(pid: int) -> bool:
    """True when ``pid`` is a process of this PID namespace (this container, or the host)."""
    if not os.path.isdir("/proc"):
        return True  # no procfs to ask: trust NVML
    return os.path.exists(f"/proc/{pid}")


class GpuCollector:
    """A prometheus_client collector for the GPUs this process may use.

    ``poll()`` reads NVML once (the first call also initialises it); ``start()`` polls on a
    daemon thread; ``collect()`` (a scrape) formats the last sample and never calls NVML.
    """

    def __init__(
        self,
        interval: float = 5.0,
        all_devices: bool = False,
        max_processes: int = DEFAULT_MAX_PROCESSES,
        *,
        environ: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
        process_filter: Callable[[int], bool] = process_in_namespace,
    ) -> None:
        if not interval > 0:
            raise ValueError(f"interval must be > 0 seconds, got {interval!r}")
        if max_processes < 0:
            raise ValueError(f"max_processes must be >= 0, got {max_processes!r}")
        self.interval = float(interval)
        self.all_devices = all_devices
        self.max_processes = max_processes
        self._environ = os.environ if environ is None else environ
        self._clock = clock
        self._process_filter = process_filter

        self._nvml: ModuleType | None = None
        self._initialised = False  # nvmlInit was tried
        self._init_ok = False  # ... and succeeded (so nvmlShutdown is owed)
        self.problem = ""  # why no GPU is reported, for humans ('' when fine)
        self._devices: list[Device] = []
        self._unsupported: dict[str, set[str]] = {}  # uuid -> calls the device refuses
        self._lost: set[str] = set()
        self._reason_names: dict[int, str] = {}
        self._throttle_call = ""

        self._errors: dict[str, int] = dict.fromkeys(PRESET_REASONS, 0)
        self._logged: set[tuple[str, ...]] = set()
        self._samples: tuple[GpuSample, ...] = ()
        self._generation = 0
        self._changed = threading.Condition()
        self._poll_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._registry: CollectorRegistry | None = None
        self._closed = False

    # --- reading NVML ----------------------------------------------------------------------

    @property
    def devices(self) -> list[Device]:
        """The devices being reported (after visible-devices filtering)."""
        return list(self._devices)

    @property
    def generation(self) -> int:
        """How many polls have completed."""
        return self._generation

    @property
    def closed(self) -> bool:
        return self._closed

    def samples(self) -> tuple[GpuSample, ...]:
        """The last sample of every reported device."""
        return self._samples

    def errors(self) -> dict[str, int]:
        """gpu_collector_errors_total, by reason."""
        with self._changed:
            return dict(self._errors)

    def sample_age(self, sample: GpuSample) -> float:
        return max(0.0, self._clock() - sample.taken_at)

    def poll(self) -> None:
        """Read every device once, now (initialising NVML on the first call)."""
        with self._poll_lock:
            if self._closed:
                return
            if not self._initialised:
                self._initialise()
            samples = tuple(self._read(d) for d in self._devices) if self._init_ok else ()
            with self._changed:
                self._samples = samples
                self._generation += 1
                self._changed.notify_all()

    def wait_for_generation(self, generation: int, timeout: float) -> bool:
        """Block until at least ``generation`` polls completed; False on timeout."""
        with self._changed:
            return self._changed.wait_for(lambda: self._generation >= generation, timeout)

    def _initialise(self) -> None:
        self._initialised = True
        try:
            nvml = load_nvml()
        except ImportError as exc:
            self._fail_start(REASON_LIBRARY_NOT_FOUND, f"nvidia-ml-py is not installed ({exc})")
            return
        self._nvml = nvml
        self._reason_names = {
            value: name.removeprefix("NVML_ERROR_").lower()
            for name in dir(nvml)
            if name.startswith("NVML_ERROR_") and isinstance(value := getattr(nvml, name), int)
        }
        try:
            nvml.nvmlInit()
        except Exception as exc:
            reason = self._reason(exc)
            hint = _HINTS.get(reason, "")
            self._fail_start(reason, f"NVML did not start: {exc}" + (f" ({hint})" if hint else ""))
            return
        self._init_ok = True
        self._throttle_call = (
            "nvmlDeviceGetCurrentClocksEventReasons"
            if hasattr(nvml, "nvmlDeviceGetCurrentClocksEventReasons")
            else "nvmlDeviceGetCurrentClocksThrottleReasons"
        )
        found = self._enumerate(nvml)
        entries = None if self.all_devices else parse_visible_devices(self._environ)
        self._devices = select_devices(found, entries)
        self._unsupported = {d.uuid: set() for d in self._devices}
        if not found:
            if not self.problem:
                self._fail_start(REASON_NO_DEVICES, "NVML reports no GPU")
        elif not self._devices:
            self.problem = "the visible-devices setting selects none of the GPUs"
            log.info("GPU metrics: %s (%s)", self.problem, self._visible_env())
        else:
            log.info(
                "GPU metrics: reading %s every %gs",
                ", ".join(f"{d.gpu} {d.name} {d.uuid}" for d in self._devices),
                self.interval,
            )

    def _visible_env(self) -> str:
        return ", ".join(
            f"{k}={self._environ[k]!r}" for k in VISIBLE_DEVICES_ENV if k in self._environ
        )

    def _fail_start(self, reason: str, message: str) -> None:
        self.problem = message
        self._count(reason)
        log.warning("GPU metrics off: %s", message)

    def _enumerate(self, nvml: ModuleType) -> list[Device]:
        try:
            count = int(nvml.nvmlDeviceGetCount())
        except Exception as exc:
            self._fail_start(self._reason(exc), f"NVML could not count GPUs: {exc}")
            return []
        devices: list[Device] = []
        for index in range(count):
            try:
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                uuid = _text(nvml.nvmlDeviceGetUUID(handle))
                name = _text(nvml.nvmlDeviceGetName(handle))
            except Exception as exc:
                self._problem(("enumerate", str(index)), exc, f"GPU {index} skipped")
                continue
            migs = self._mig_devices(nvml, handle, str(index), uuid)
            devices.append(Device(str(index), uuid, name, handle, mig_enabled=bool(migs)))
            devices.extend(migs)
        return devices

    def _mig_devices(self, nvml: ModuleType, handle: Any, index: str, uuid: str) -> list[Device]:
        """The MIG instances of a GPU in MIG mode (none when it is not, or has no MIG)."""
        try:
            current, _pending = nvml.nvmlDeviceGetMigMode(handle)
            if current != nvml.NVML_DEVICE_MIG_ENABLE:
                return []
            slots = int(nvml.nvmlDeviceGetMaxMigDeviceCount(handle))
        except nvml.NVMLError:
            return []  # a GPU without MIG: a capability probe, not an error
        found: list[Device] = []
        for slot in range(slots):
            try:
                mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, slot)
            except nvml.NVMLError as exc:
                if exc.value != nvml.NVML_ERROR_NOT_FOUND:  # NOT_FOUND: an empty slot
                    self._problem(("mig", uuid, str(slot)), exc, f"MIG device {index}/{slot}")
                continue
            try:
                mig_uuid = _text(nvml.nvmlDeviceGetUUID(mig))
                mig_name = _text(nvml.nvmlDeviceGetName(mig))
            except Exception as exc:
                self._problem(("mig", uuid, str(slot)), exc, f"MIG device {index}/{slot}")
                continue
            found.append(
                Device(f"{index}/{slot}", mig_uuid, mig_name, mig, mig=True, parent_uuid=uuid)
            )
        return found

    def _read(self, device: Device) -> GpuSample:
        nvml = self._nvml
        assert nvml is not None
        taken_at = self._clock()
        values: dict[str, Any] = {}
        try:
            self._read_into(nvml, device, values)
        except Exception as exc:
            if not isinstance(exc, _DeviceLost):  # a value of a shape the code did not expect
                self._problem((device.uuid, "read"), exc, f"GPU {device.gpu} ({device.uuid})")
            previous = next((s for s in self._samples if s.uuid == device.uuid), None)
            # The values of a GPU not read are dropped, not repeated; their age keeps growing.
            last = previous.taken_at if previous is not None else taken_at
            return GpuSample(device.gpu, device.uuid, device.name, device.mig, last)
        if device.uuid in self._lost:
            self._lost.discard(device.uuid)
            self._logged = {key for key in self._logged if device.uuid not in key}
            log.warning("GPU %s (%s) answers again", device.gpu, device.uuid)
        return GpuSample(device.gpu, device.uuid, device.name, device.mig, taken_at, **values)

    def _read_into(self, nvml: ModuleType, device: Device, out: dict[str, Any]) -> None:
        call = self._caller(nvml, device)
        memory = call("nvmlDeviceGetMemoryInfo")
        if memory is not None:
            out.update(memory_used=memory.used, memory_total=memory.total, memory_free=memory.free)
        # NVML refuses utilization on MIG instances and MIG-enabled GPUs: expected, not an error.
        rates = call("nvmlDeviceGetUtilizationRates", quiet=device.mig or device.mig_enabled)
        if rates is not None:
            out.update(utilization=rates.gpu / 100.0, memory_copy_utilization=rates.memory / 100.0)
        if not device.mig_enabled:  # a MIG-enabled GPU's processes are listed per instance
            running = call("nvmlDeviceGetComputeRunningProcesses")
            if running is not None:
                out["processes"] = self._bounded_processes(running)
        if device.mig:
            return  # the rest is per physical GPU, reported on the parent
        temperature = call("nvmlDeviceGetTemperature", nvml.NVML_TEMPERATURE_GPU)
        if temperature is not None:
            out["temperature"] = float(temperature)
        power = call("nvmlDeviceGetPowerUsage")
        if power is not None:
            out["power_usage"] = power / 1000.0
        limit = call("nvmlDeviceGetEnforcedPowerLimit")
        if limit is not None:
            out["power_limit"] = limit / 1000.0
        sm_clock = call("nvmlDeviceGetClockInfo", nvml.NVML_CLOCK_SM)
        if sm_clock is not None:
            out["sm_clock"] = sm_clock * 1e6
        memory_clock = call("nvmlDeviceGetClockInfo", nvml.NVML_CLOCK_MEM)
        if memory_clock is not None:
            out["memory_clock"] = memory_clock * 1e6
        energy = call("nvmlDeviceGetTotalEnergyConsumption")
        if energy is not None:
            out["energy"] = energy / 1000.0
        replay = call("nvmlDeviceGetPcieReplayCounter")
        if replay is not None:
            out["pcie_replay"] = int(replay)
        ecc: dict[str, int] = {}
        for kind, error_type in (
            (ECC_CORRECTED, nvml.NVML_MEMORY_ERROR_TYPE_CORRECTED),
            (ECC_UNCORRECTED, nvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED),
        ):
            count = call("nvmlDeviceGetTotalEccErrors", error_type, nvml.NVML_VOLATILE_ECC)
            if count is not None:
                ecc[kind] = int(count)
        out["ecc_errors"] = ecc
        mask = call(self._throttle_call)
        if mask is not None:
            out["throttled"] = {reason: bool(mask & bit) for reason, bit in THROTTLE_REASONS}

    def _caller(self, nvml: ModuleType, device: Device) -> Callable[..., Any]:
        """call(function name, *args): the value, or None when it failed (handled here)."""
        refused = self._unsupported[device.uuid]

        def call(function: str, *args: Any, quiet: bool = False) -> Any:
            key = function if not args else f"{function}{args}"
            if key in refused:
                return None
            try:
                return getattr(nvml, function)(device.handle, *args)
            except Exception as exc:
                code_name = self._code_name(exc)
                if code_name in _UNSUPPORTED:
                    refused.add(key)
                    if quiet:
                        log.debug("GPU %s: NVML refuses %s on MIG", device.gpu, function)
                        return None
                if code_name in _DEVICE_FATAL:
                    self._lost.add(device.uuid)
                    self._problem((device.uuid, "lost"), exc, f"GPU {device.gpu} ({device.uuid})")
                    raise _DeviceLost from exc
                self._problem(
                    (device.uuid, function, code_name),
                    exc,
                    f"GPU {device.gpu} ({device.uuid}): {function}",
                    "; not asked again" if code_name in _UNSUPPORTED else "",
                )
                return None

        return call

    def _bounded_processes(self, running: Iterable[Any]) -> dict[str, int]:
        """This namespace's processes: the largest ``max_processes``, the rest as "other"."""
        memory_by_pid: dict[int, int] = {}
        for process in running:
            used = getattr(process, "usedGpuMemory", None)
            if used is None or not self._process_filter(int(process.pid)):
                continue
            memory_by_pid[int(process.pid)] = memory_by_pid.get(int(process.pid), 0) + int(used)
        ranked = sorted(memory_by_pid.items(), key=lambda item: (-item[1], item[0]))
        kept = {str(pid): used for pid, used in ranked[: self.max_processes]}
        rest = ranked[self.max_processes :]
        if rest:
            kept[schema.OTHER] = sum(used for _, used in rest)
        return kept

    # --- errors --------------------------------------------------------------------------------

    def _code_name(self, exc: BaseException) -> str:
        """NVML_ERROR_GPU_IS_LOST and the like; '' for anything but an NVMLError."""
        nvml = self._nvml
        if nvml is None or not isinstance(exc, nvml.NVMLError):
            return ""
        return "NVML_ERROR_" + self._reason(exc).upper()

    def _reason(self, exc: BaseException) -> str:
        nvml = self._nvml
        if nvml is not None and isinstance(exc, nvml.NVMLError):
            return self._reason_names.get(getattr(exc, "value", -1), "unknown")
        return REASON_EXCEPTION

    def _count(self, reason: str) -> None:
        with self._changed:
            self._errors[reason] = self._errors.get(reason, 0) + 1

    def _problem(self, key: tuple[str, ...], exc: BaseException, what: str, note: str = "") -> None:
        """Count a failed call; log it only the first time this problem is seen."""
        reason = self._reason(exc)
        self._count(reason)
        if key not in self._logged:
            self._logged.add(key)
            log.warning("GPU metrics: %s failed: %s (%s)%s", what, exc, reason, note)

    # --- the collector -------------------------------------------------------------------------

    def describe(self) -> Iterator[Metric]:
        for family in schema.GPU_FAMILIES:
            yield _metric_family(family)

    def collect(self) -> Iterator[Metric]:
        samples = self._samples
        now = self._clock()
        out = {family.name: _metric_family(family) for family in schema.GPU_FAMILIES}

        def add(family: schema.Family, labels: list[str], value: float | None) -> None:
            if value is not None:
                out[family.name].add_metric(labels, value)

        for s in samples:
            labels = s.labels
            add(schema.GPU_UTILIZATION, labels, s.utilization)
            add(schema.GPU_MEMORY_COPY_UTILIZATION, labels, s.memory_copy_utilization)
            add(schema.GPU_MEMORY_USED, labels, s.memory_used)
            add(schema.GPU_MEMORY_TOTAL, labels, s.memory_total)
            add(schema.GPU_MEMORY_FREE, labels, s.memory_free)
            add(schema.GPU_TEMPERATURE, labels, s.temperature)
            add(schema.GPU_POWER_USAGE, labels, s.power_usage)
            add(schema.GPU_POWER_LIMIT, labels, s.power_limit)
            add(schema.GPU_SM_CLOCK, labels, s.sm_clock)
            add(schema.GPU_MEMORY_CLOCK, labels, s.memory_clock)
            add(schema.GPU_ENERGY, labels, s.energy)
            add(schema.GPU_PCIE_REPLAY, labels, s.pcie_replay)
            for kind, count in s.ecc_errors.items():
                add(schema.GPU_ECC_ERRORS, [*labels, kind], count)
            for reason, held in s.throttled.items():
                add(schema.GPU_THROTTLED, [*labels, reason], 1.0 if held else 0.0)
            for pid, used in s.processes.items():
                add(schema.GPU_PROCESS_MEMORY, [*labels, pid], used)
            add(schema.GPU_SAMPLE_AGE, labels, max(0.0, now - s.taken_at))
        for reason, count in sorted(self.errors().items()):
            add(schema.GPU_COLLECTOR_ERRORS, [reason], count)
        for metric in out.values():
            if metric.samples:
                yield metric

    # --- lifecycle -----------------------------------------------------------------------------

    def register(self, registry: CollectorRegistry) -> None:
        registry.register(self)
        self._registry = registry

    def start(self) -> None:
        """Poll on a daemon thread: at once, then every ``interval`` seconds."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="inferwatch-gpu", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll()
            except Exception:  # a bug must not kill the thread, nor the process
                self._count(REASON_EXCEPTION)
                if ("poll",) not in self._logged:
                    self._logged.add(("poll",))
                    log.exception("GPU metrics: polling failed")
            if self._initialised and not self._devices:
                return  # no library, driver or GPU to read: counted and logged once
            self._stop.wait(self.interval)

    def close(self, timeout: float = 5.0) -> None:
        """Stop polling, unregister, and shut NVML down (once; also run at interpreter exit)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning(
                    "GPU metrics: NVML call still running after %gs; not shut down", timeout
                )
                return
        with self._poll_lock:
            if self._closed:
                return
            self._closed = True
            if self._registry is not None:
                with contextlib.suppress(KeyError):  # unregistered by its owner already
                    self._registry.unregister(self)
                self._registry = None
            atexit.unregister(self.close)
            if self._init_ok and self._nvml is not None:
                try:
                    self._nvml.nvmlShutdown()
                except Exception as exc:
                    log.warning("GPU metrics: nvmlShutdown failed: %s", exc)

    def __enter__(self) -> GpuCollector:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _metric_family(family: schema.Family) -> CounterMetricFamily | GaugeMetricFamily:
    if family.kind == "counter":
        return CounterMetricFamily(family.name, family.help, labels=family.labels)
    return GaugeMetricFamily(family.name, family.help, labels=family.labels)


def start_gpu_metrics(
    registry: CollectorRegistry | None = None,
    interval: float = 5.0,
    all_devices: bool = False,
    max_processes: int = DEFAULT_MAX_PROCESSES,
) -> GpuCollector:
    """Report this process's GPUs on ``registry`` (default: prometheus_client's REGISTRY).

    Reads the GPUs ``CUDA_VISIBLE_DEVICES``/``NVIDIA_VISIBLE_DEVICES`` name (every GPU with
    ``all_devices``) every ``interval`` seconds on a daemon thread. Never raises for a missing
    GPU, driver or library: those are logged and counted. ``close()`` (also run at exit)
    stops it and shuts NVML down. Started twice on one registry, it returns the first.
    """
    registry = REGISTRY if registry is None else registry
    if registry is REGISTRY and multiprocess_dir() is not None:
        log.warning(
            "GPU metrics: prometheus_client multiprocess mode serves no custom collector;"
            " serve them from one process's own registry (or the sidecar's --gpu-metrics)"
        )
    with _started_lock:
        running = _started.get(registry)
        if running is not None and not running.closed:
            return running  # one collector per registry: a second start shares the first
        collector = GpuCollector(interval, all_devices, max_processes)
        collector.register(registry)
        _started[registry] = collector
    collector.start()
    atexit.register(collector.close)
    return collector


_started: weakref.WeakKeyDictionary[CollectorRegistry, GpuCollector] = weakref.WeakKeyDictionary()
_started_lock = threading.Lock()
