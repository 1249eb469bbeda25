"""A fake ``pynvml`` (nvidia-ml-py) for tests: the same names, constants and error classes.

``build([FakeGpu(...), ...])`` returns a module object to put in ``sys.modules["pynvml"]``
(``install`` does it with monkeypatch). Values are NVML's raw units: percent, bytes, celsius,
milliwatts, MHz, millijoules. ``FakeGpu.fail`` maps a function name to the NVML error code it
raises; ``calls`` records every call so tests can see what was (not) asked.
"""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass, field
from typing import Any

import pytest

# Constants with nvidia-ml-py's values (pynvml.py).
NVML_SUCCESS = 0
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_INVALID_ARGUMENT = 2
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_ALREADY_INITIALIZED = 5
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_INSUFFICIENT_SIZE = 7
NVML_ERROR_INSUFFICIENT_POWER = 8
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_TIMEOUT = 10
NVML_ERROR_IRQ_ISSUE = 11
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_FUNCTION_NOT_FOUND = 13
NVML_ERROR_CORRUPTED_INFOROM = 14
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_RESET_REQUIRED = 16
NVML_ERROR_OPERATING_SYSTEM = 17
NVML_ERROR_LIB_RM_VERSION_MISMATCH = 18
NVML_ERROR_IN_USE = 19
NVML_ERROR_MEMORY = 20
NVML_ERROR_NO_DATA = 21
NVML_ERROR_UNKNOWN = 999

NVML_TEMPERATURE_GPU = 0
NVML_CLOCK_GRAPHICS = 0
NVML_CLOCK_SM = 1
NVML_CLOCK_MEM = 2
NVML_MEMORY_ERROR_TYPE_CORRECTED = 0
NVML_MEMORY_ERROR_TYPE_UNCORRECTED = 1
NVML_VOLATILE_ECC = 0
NVML_AGGREGATE_ECC = 1
NVML_DEVICE_MIG_DISABLE = 0
NVML_DEVICE_MIG_ENABLE = 1

nvmlClocksEventReasonGpuIdle = 0x1
nvmlClocksEventReasonSwPowerCap = 0x4
nvmlClocksEventReasonHwSlowdown = 0x8
nvmlClocksEventReasonSwThermalSlowdown = 0x20

_CONSTANTS = {name: value for name, value in dict(globals()).items() if name.startswith("NVML")}


@dataclass
class FakeGpu:
    """One device (a GPU or a MIG instance) in NVML's raw units."""

    uuid: str
    name: str | bytes = "NVIDIA H100 80GB HBM3"
    utilization: tuple[int, int] = (0, 0)  # (gpu %, memory %)
    memory: tuple[int, int, int] = (0, 80 * 2**30, 80 * 2**30)  # (used, total, free) bytes
    temperature: int = 30
    power_mw: int = 70_000
    power_limit_mw: int = 700_000
    sm_mhz: int = 345
    mem_mhz: int = 2619
    energy_mj: int = 0
    pcie_replay: int = 0
    ecc: tuple[int, int] = (0, 0)  # volatile (corrected, uncorrected)
    ecc_aggregate: tuple[int, int] = (0, 0)
    throttle: int = 0  # bitmask of nvmlClocksEventReason*
    processes: list[tuple[int, int | None]] = field(default_factory=list)  # (pid, bytes)
    mig_mode: int | None = None  # None: MIG not supported on this GPU
    mig_slots: list[FakeGpu | None] = field(default_factory=list)  # MIG instances by index
    fail: dict[str, int] = field(default_factory=dict)  # function name -> NVML error code
    is_mig: bool = False


class FakeHandle:
    def __init__(self, gpu: FakeGpu) -> None:
        self.gpu = gpu


class Struct:
    def __init__(self, **fields: Any) -> None:
        self.__dict__.update(fields)


def _error_classes(module: types.ModuleType) -> type[Exception]:
    """NVMLError and its NVMLError_<Name> subclasses, created as nvidia-ml-py creates them."""

    class NVMLError(Exception):
        _valClassMapping: dict[int, type] = {}  # noqa: RUF012

        def __new__(cls, value: int) -> NVMLError:
            if cls is NVMLError:
                cls = NVMLError._valClassMapping.get(value, cls)
            obj = Exception.__new__(cls)
            obj.value = value  # type: ignore[attr-defined]
            return obj

        def __init__(self, value: int) -> None:
            super().__init__(value)

        def __str__(self) -> str:  # "Gpu Is Lost"; the real module has NVML's own strings
            names = {v: k for k, v in _CONSTANTS.items() if k.startswith("NVML_ERROR_")}
            name = names.get(self.value, "NVML_ERROR_UNKNOWN")  # type: ignore[attr-defined]
            return name.removeprefix("NVML_ERROR_").replace("_", " ").title()

    NVMLError.__module__ = module.__name__
    for name, value in _CONSTANTS.items():
        if not name.startswith("NVML_ERROR_"):
            continue
        class_name = "NVMLError_" + name.removeprefix("NVML_ERROR_").title().replace("_", "")

        def new(cls: type, *args: Any, _value: int = value) -> Any:
            return NVMLError.__new__(cls, _value)

        sub = type(class_name, (NVMLError,), {"__new__": new, "__init__": Exception.__init__})
        sub.__module__ = module.__name__
        NVMLError._valClassMapping[value] = sub
        setattr(module, class_name, sub)
    return NVMLError


def build(
    gpus: list[FakeGpu],
    init_error: int | None = None,
    legacy_throttle_name: bool = False,
) -> types.ModuleType:
    """A module with nvidia-ml-py's API over ``gpus`` (NVML indexes = list order)."""
    module = types.ModuleType("pynvml")
    module.__dict__.update(_CONSTANTS)
    nvml_error = _error_classes(module)
    module.NVMLError = nvml_error  # type: ignore[attr-defined]
    state = {"initialised": 0}
    calls: list[str] = []
    module.calls = calls  # type: ignore[attr-defined]
    module.gpus = gpus  # type: ignore[attr-defined]

    def api(function: Any) -> Any:
        name = function.__name__

        def wrapper(*args: Any) -> Any:
            calls.append(name)
            if name not in ("nvmlInit", "nvmlShutdown") and not state["initialised"]:
                raise nvml_error(NVML_ERROR_UNINITIALIZED)
            if args and isinstance(args[0], FakeHandle):
                code = args[0].gpu.fail.get(name)
                if code is not None:
                    raise nvml_error(code)
            return function(*args)

        wrapper.__name__ = name
        setattr(module, name, wrapper)
        return wrapper

    @api
    def nvmlInit() -> None:
        if init_error is not None:
            raise nvml_error(init_error)
        state["initialised"] += 1

    @api
    def nvmlShutdown() -> None:
        if not state["initialised"]:
            raise nvml_error(NVML_ERROR_UNINITIALIZED)
        state["initialised"] -= 1

    @api
    def nvmlDeviceGetCount() -> int:
        return len(gpus)

    @api
    def nvmlDeviceGetHandleByIndex(index: int) -> FakeHandle:
        if not 0 <= index < len(gpus):
            raise nvml_error(NVML_ERROR_INVALID_ARGUMENT)
        code = gpus[index].fail.get("nvmlDeviceGetHandleByIndex")
        if code is not None:
            raise nvml_error(code)
        return FakeHandle(gpus[index])

    @api
    def nvmlDeviceGetUUID(handle: FakeHandle) -> str:
        return handle.gpu.uuid

    @api
    def nvmlDeviceGetName(handle: FakeHandle) -> str | bytes:
        return handle.gpu.name

    @api
    def nvmlDeviceGetUtilizationRates(handle: FakeHandle) -> Struct:
        if handle.gpu.is_mig or handle.gpu.mig_mode == NVML_DEVICE_MIG_ENABLE:
            raise nvml_error(NVML_ERROR_NOT_SUPPORTED)
        gpu, memory = handle.gpu.utilization
        return Struct(gpu=gpu, memory=memory)

    @api
    def nvmlDeviceGetMemoryInfo(handle: FakeHandle, version: Any = None) -> Struct:
        used, total, free = handle.gpu.memory
        return Struct(used=used, total=total, free=free)

    @api
    def nvmlDeviceGetTemperature(handle: FakeHandle, sensor: int) -> int:
        if sensor != NVML_TEMPERATURE_GPU:
            raise nvml_error(NVML_ERROR_INVALID_ARGUMENT)
        return handle.gpu.temperature

    @api
    def nvmlDeviceGetPowerUsage(handle: FakeHandle) -> int:
        return handle.gpu.power_mw

    @api
    def nvmlDeviceGetEnforcedPowerLimit(handle: FakeHandle) -> int:
        return handle.gpu.power_limit_mw

    @api
    def nvmlDeviceGetClockInfo(handle: FakeHandle, clock: int) -> int:
        if clock == NVML_CLOCK_SM:
            return handle.gpu.sm_mhz
        if clock == NVML_CLOCK_MEM:
            return handle.gpu.mem_mhz
        raise nvml_error(NVML_ERROR_INVALID_ARGUMENT)

    @api
    def nvmlDeviceGetTotalEnergyConsumption(handle: FakeHandle) -> int:
        return handle.gpu.energy_mj

    @api
    def nvmlDeviceGetPcieReplayCounter(handle: FakeHandle) -> int:
        return handle.gpu.pcie_replay

    @api
    def nvmlDeviceGetTotalEccErrors(handle: FakeHandle, error_type: int, counter: int) -> int:
        counts = handle.gpu.ecc if counter == NVML_VOLATILE_ECC else handle.gpu.ecc_aggregate
        return counts[error_type]

    def clocks_reasons(handle: FakeHandle) -> int:
        return handle.gpu.throttle

    if legacy_throttle_name:  # nvidia-ml-py before 12.535 only had the "Throttle" name
        clocks_reasons.__name__ = "nvmlDeviceGetCurrentClocksThrottleReasons"
        api(clocks_reasons)
    else:
        clocks_reasons.__name__ = "nvmlDeviceGetCurrentClocksEventReasons"
        api(clocks_reasons)

        def legacy(handle: FakeHandle) -> int:
            return handle.gpu.throttle

        legacy.__name__ = "nvmlDeviceGetCurrentClocksThrottleReasons"
        api(legacy)

    @api
    def nvmlDeviceGetComputeRunningProcesses(handle: FakeHandle) -> list[Struct]:
        return [Struct(pid=pid, usedGpuMemory=used) for pid, used in handle.gpu.processes]

    @api
    def nvmlDeviceGetMigMode(handle: FakeHandle) -> list[int]:
        if handle.gpu.mig_mode is None or handle.gpu.is_mig:
            raise nvml_error(NVML_ERROR_NOT_SUPPORTED)
        return [handle.gpu.mig_mode, handle.gpu.mig_mode]

    @api
    def nvmlDeviceGetMaxMigDeviceCount(handle: FakeHandle) -> int:
        if handle.gpu.mig_mode is None:
            raise nvml_error(NVML_ERROR_NOT_SUPPORTED)
        return len(handle.gpu.mig_slots)

    @api
    def nvmlDeviceGetMigDeviceHandleByIndex(handle: FakeHandle, index: int) -> FakeHandle:
        if handle.gpu.mig_mode != NVML_DEVICE_MIG_ENABLE:
            raise nvml_error(NVML_ERROR_INVALID_ARGUMENT)
        if not 0 <= index < len(handle.gpu.mig_slots):
            raise nvml_error(NVML_ERROR_INVALID_ARGUMENT)
        mig = handle.gpu.mig_slots[index]
        if mig is None:
            raise nvml_error(NVML_ERROR_NOT_FOUND)
        return FakeHandle(mig)

    @api
    def nvmlDeviceIsMigDeviceHandle(handle: FakeHandle) -> bool:
        return handle.gpu.is_mig

    return module


def install(monkeypatch: pytest.MonkeyPatch, module: types.ModuleType | None) -> None:
    """Make ``import pynvml`` return ``module`` (None: make the import fail)."""
    monkeypatch.setitem(sys.modules, "pynvml", module)


def mig(uuid: str, name: str, used: int, total: int, **values: Any) -> FakeGpu:
    """A MIG instance."""
    return FakeGpu(uuid, name, memory=(used, total, total - used), is_mig=True, **values)


def clear_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES"):
        monkeypatch.delenv(name, raising=False)
