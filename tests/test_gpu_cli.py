"""`inferwatch gpu`: the table, the JSON for scripts, the live redraw, and no GPU."""

from __future__ import annotations

import io
import json
import os

import pytest
from support.fake_pynvml import FakeGpu, build, clear_visible_devices, install, mig

from inferwatch import cli
from inferwatch.gpu_cli import human_bytes, human_joules

GiB = 2**30
H100 = "NVIDIA H100 80GB HBM3"
MIG_1G = "NVIDIA H100 80GB HBM3 MIG 1g.10gb"
NOT_OURS = 2**22 + 7  # beyond Linux's largest pid_max: no process of this machine


@pytest.fixture(autouse=True)
def _no_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    clear_visible_devices(monkeypatch)


def machine() -> list[FakeGpu]:
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
            energy_mj=1_234_567_000,
            pcie_replay=1,
            ecc=(3, 0),
            throttle=0x4,
            processes=[(os.getpid(), 11 * GiB), (NOT_OURS, GiB)],
        ),
        FakeGpu(
            "GPU-bbbb2222",
            H100,
            memory=(GiB, 80 * GiB, 79 * GiB),
            mig_mode=1,
            mig_slots=[mig("MIG-1111", MIG_1G, GiB, 10 * GiB)],
            fail={"nvmlDeviceGetPcieReplayCounter": 3},  # NVML_ERROR_NOT_SUPPORTED
        ),
    ]


def without_age(document: dict) -> tuple[dict, list[float]]:
    ages = [gpu.pop("sample_age_seconds") for gpu in document["gpus"]]
    return document, ages


NO_THROTTLE = {
    "gpu_idle": False,
    "applications_clocks_setting": False,
    "sw_power_cap": False,
    "hw_slowdown": False,
    "sync_boost": False,
    "sw_thermal_slowdown": False,
    "hw_thermal_slowdown": False,
    "hw_power_brake_slowdown": False,
    "display_clock_setting": False,
}


def test_once_json(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    install(monkeypatch, build(machine()))
    assert cli.main(["gpu", "--once", "--json"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    document, ages = without_age(json.loads(out))
    assert all(isinstance(age, float) and age >= 0.0 for age in ages)
    assert document == {
        "gpus": [
            {
                "gpu": "0",
                "uuid": "GPU-aaaa1111",
                "name": H100,
                "mig": False,
                "utilization_ratio": 0.42,
                "memory_copy_utilization_ratio": 0.1,
                "memory_used_bytes": 12 * GiB,
                "memory_total_bytes": 80 * GiB,
                "memory_free_bytes": 68 * GiB,
                "temperature_celsius": 54.0,
                "power_usage_watts": 312.5,
                "power_limit_watts": 700.0,
                "sm_clock_hertz": 1.98e9,
                "memory_clock_hertz": 2.619e9,
                "energy_joules_total": 1234567.0,
                "pcie_replay_total": 1,
                "ecc_errors_total": {"corrected": 3, "uncorrected": 0},
                "clock_throttled": {**NO_THROTTLE, "sw_power_cap": True},
                "process_memory_used_bytes": {str(os.getpid()): 11 * GiB},
            },
            {
                "gpu": "1",
                "uuid": "GPU-bbbb2222",
                "name": H100,
                "mig": False,
                "utilization_ratio": None,  # refused on a MIG-enabled GPU
                "memory_copy_utilization_ratio": None,
                "memory_used_bytes": GiB,
                "memory_total_bytes": 80 * GiB,
                "memory_free_bytes": 79 * GiB,
                "temperature_celsius": 30.0,
                "power_usage_watts": 70.0,
                "power_limit_watts": 700.0,
                "sm_clock_hertz": 3.45e8,
                "memory_clock_hertz": 2.619e9,
                "energy_joules_total": 0.0,
                "pcie_replay_total": None,
                "ecc_errors_total": {"corrected": 0, "uncorrected": 0},
                "clock_throttled": NO_THROTTLE,
                "process_memory_used_bytes": {},
            },
            {
                "gpu": "1/0",
                "uuid": "MIG-1111",
                "name": MIG_1G,
                "mig": True,
                "utilization_ratio": None,
                "memory_copy_utilization_ratio": None,
                "memory_used_bytes": GiB,
                "memory_total_bytes": 10 * GiB,
                "memory_free_bytes": 9 * GiB,
                "temperature_celsius": None,
                "power_usage_watts": None,
                "power_limit_watts": None,
                "sm_clock_hertz": None,
                "memory_clock_hertz": None,
                "energy_joules_total": None,
                "pcie_replay_total": None,
                "ecc_errors_total": {},
                "clock_throttled": {},
                "process_memory_used_bytes": {},
            },
        ],
        "collector_errors_total": {"not_supported": 1},
        "problem": None,
    }


def table(pid: int) -> str:
    return "\n".join(
        [
            "GPU  NAME                               UTIL  MEM UTIL  MEMORY USED / TOTAL  TEMP"
            "  POWER / LIMIT  SM CLOCK  MEM CLOCK  ENERGY  THROTTLED",
            "0    NVIDIA H100 80GB HBM3               42%       10%  12.0 GiB / 80.0 GiB   54C"
            "  312 W / 700 W  1980 MHz   2619 MHz  1.2 MJ  sw_power_cap",
            "1    NVIDIA H100 80GB HBM3                 -         -   1.0 GiB / 80.0 GiB   30C"
            "   70 W / 700 W   345 MHz   2619 MHz     0 J  none",
            "1/0  NVIDIA H100 80GB HBM3 MIG 1g.10gb     -         -   1.0 GiB / 10.0 GiB     -"
            "              -         -          -       -  -",
            "",
            f"GPU  {'PID'.rjust(len(str(pid)))}  GPU MEMORY",
            f"0    {pid}    11.0 GiB",
            "NVML errors: not_supported 1",
        ]
    )


def test_once_table(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    install(monkeypatch, build(machine()))
    assert cli.main(["gpu", "--once"]) == 0
    assert capsys.readouterr().out == table(os.getpid()) + "\n"


def test_refreshes_until_the_iterations_are_done(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    module = build(machine())
    install(monkeypatch, module)
    assert cli.main(["gpu", "--interval", "0.01", "--iterations", "3"]) == 0
    # not a terminal: one table after another
    assert capsys.readouterr().out == (table(os.getpid()) + "\n") * 3
    assert module.calls.count("nvmlDeviceGetMemoryInfo") == 3 * 3  # type: ignore[attr-defined]
    assert module.calls[-1] == "nvmlShutdown"  # type: ignore[attr-defined]


def test_json_lines_when_refreshing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    gpus = machine()
    install(monkeypatch, build(gpus))
    assert cli.main(["gpu", "--json", "--interval", "0.01", "--iterations", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    for line in lines:
        document, _ = without_age(json.loads(line))
        assert [g["uuid"] for g in document["gpus"]] == ["GPU-aaaa1111", "GPU-bbbb2222", "MIG-1111"]
        assert document["gpus"][0]["temperature_celsius"] == 54.0


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_live_table_redraws_in_place(monkeypatch: pytest.MonkeyPatch) -> None:
    install(monkeypatch, build(machine()))
    screen = Terminal()
    monkeypatch.setattr("sys.stdout", screen)
    assert cli.main(["gpu", "--interval", "0.01", "--iterations", "2"]) == 0
    frames = screen.getvalue().split("\x1b[H")
    assert frames[0] == "\x1b[2J"  # the screen is cleared once, then redrawn from the top
    assert len(frames) == 3
    expected_body = "".join(line + "\x1b[K\n" for line in table(os.getpid()).splitlines())
    for frame in frames[1:]:
        header, blank, body = frame.split("\n", 2)
        assert header.startswith("inferwatch gpu  ")
        assert header.endswith("  every 0.01s\x1b[K")
        assert blank == "\x1b[K"
        assert body == expected_body + "\x1b[J"


def test_all_ignores_visible_devices(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    install(monkeypatch, build(machine()))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-bbbb2222")
    assert cli.main(["gpu", "--once", "--json"]) == 0
    shown = [g["gpu"] for g in json.loads(capsys.readouterr().out)["gpus"]]
    assert shown == ["1", "1/0"]
    assert cli.main(["gpu", "--once", "--json", "--all"]) == 0
    shown = [g["gpu"] for g in json.loads(capsys.readouterr().out)["gpus"]]
    assert shown == ["0", "1", "1/0"]


def test_no_gpu_says_why(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    install(monkeypatch, build([], init_error=12))  # NVML_ERROR_LIBRARY_NOT_FOUND
    assert cli.main(["gpu", "--once"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        "inferwatch gpu: no GPU to show: NVML did not start: Library Not Found"
        " (no NVIDIA driver here, or it is not mounted into this container)\n"
    )


def test_no_library_json_for_scripts(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    install(monkeypatch, None)
    assert cli.main(["gpu", "--once", "--json"]) == 1
    captured = capsys.readouterr()
    document = json.loads(captured.out)
    assert document["gpus"] == []
    assert document["collector_errors_total"] == {"library_not_found": 1}
    assert document["problem"].startswith("nvidia-ml-py is not installed (")
    assert captured.err.startswith("inferwatch gpu: no GPU to show: nvidia-ml-py is not installed")


def test_visible_devices_selecting_none(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    install(monkeypatch, build(machine()))
    monkeypatch.setenv("NVIDIA_VISIBLE_DEVICES", "none")
    assert cli.main(["gpu", "--once"]) == 1
    assert capsys.readouterr().err == (
        "inferwatch gpu: no GPU to show: the visible-devices setting selects none of the GPUs\n"
    )


def test_bad_interval(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        cli.main(["gpu", "--interval", "0"])
    assert done.value.code == 2
    assert "argument --interval: must be > 0, got 0" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("value", "text"),
    [(0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB"), (80 * GiB, "80.0 GiB"), (2**41, "2.0 TiB")],
)
def test_human_bytes(value: int, text: str) -> None:
    assert human_bytes(value) == text


@pytest.mark.parametrize(
    ("value", "text"), [(0.4, "0 J"), (999, "999 J"), (1234.5, "1.2 kJ"), (3.2e9, "3.2 GJ")]
)
def test_human_joules(value: float, text: str) -> None:
    assert human_joules(value) == text
