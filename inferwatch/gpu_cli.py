"""Show this machine's GPUs as NVML reports them: a live table, or JSON for scripts.

The GPUs shown are those CUDA_VISIBLE_DEVICES / NVIDIA_VISIBLE_DEVICES name (every GPU with
--all), with the values and units the gpu_* metrics expose. Exits 1 when there is no GPU to
show, saying why.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from inferwatch import schema
from inferwatch.gpu import GpuCollector, GpuSample


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--once", action="store_true", help="print one sample and exit")
    parser.add_argument("--json", action="store_true", help="JSON (one object per sample)")
    parser.add_argument(
        "--interval", type=_positive, default=1.0, help="seconds between refreshes (default: 1)"
    )
    parser.add_argument(
        "--iterations",
        type=int,
        default=0,
        help="stop after this many refreshes (default: 0, run until Ctrl-C)",
    )
    parser.add_argument(
        "--all",
        action="store_true",
        help="every GPU on the machine, ignoring CUDA_VISIBLE_DEVICES/NVIDIA_VISIBLE_DEVICES",
    )


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def run(args: argparse.Namespace) -> int:
    gpu_log = logging.getLogger("inferwatch.gpu")
    level = gpu_log.level
    if getattr(args, "log_level", "INFO") != "DEBUG":
        # The table's footer and the exit message say what went wrong; log lines would only
        # break the redrawn table.
        gpu_log.setLevel(logging.ERROR)
    try:
        return _show(args)
    finally:
        gpu_log.setLevel(level)


def _show(args: argparse.Namespace) -> int:
    collector = GpuCollector(interval=args.interval, all_devices=args.all)
    out = sys.stdout
    try:
        collector.poll()
        if not collector.samples():
            if args.json:
                print(json.dumps(snapshot(collector)), file=out)
            print(f"inferwatch gpu: no GPU to show: {collector.problem}", file=sys.stderr)
            return 1
        show: Callable[[], None]
        if args.json:
            show = lambda: print(json.dumps(snapshot(collector)), file=out, flush=True)  # noqa: E731
        elif args.once or not out.isatty():
            show = lambda: print(render_table(collector), file=out, flush=True)  # noqa: E731
        else:
            show = _redraw(collector, out)
        shown = 0
        while True:
            show()
            shown += 1
            if args.once or shown == args.iterations:
                return 0
            time.sleep(args.interval)
            collector.poll()
    except KeyboardInterrupt:
        return 0
    finally:
        collector.close()


def _redraw(collector: GpuCollector, out: TextIO) -> Callable[[], None]:
    """Redraw in place with plain ANSI: cursor home, each line cleared to its end."""
    first = [True]

    def show() -> None:
        lines = render_table(collector).splitlines()
        header = f"inferwatch gpu  {time.strftime('%H:%M:%S')}  every {collector.interval:g}s"
        text = "\n".join(line + "\x1b[K" for line in [header, "", *lines])
        out.write(("\x1b[2J" if first[0] else "") + "\x1b[H" + text + "\n\x1b[J")
        out.flush()
        first[0] = False

    return show


# --- JSON ---------------------------------------------------------------------------------------


def _key(family: schema.Family) -> str:
    """JSON keys are the metric names without ``gpu_``, so units stay in the name."""
    return family.name.removeprefix("gpu_")


def sample_json(sample: GpuSample, age: float) -> dict[str, Any]:
    return {
        "gpu": sample.gpu,
        "uuid": sample.uuid,
        "name": sample.name,
        "mig": sample.mig,
        _key(schema.GPU_UTILIZATION): sample.utilization,
        _key(schema.GPU_MEMORY_COPY_UTILIZATION): sample.memory_copy_utilization,
        _key(schema.GPU_MEMORY_USED): sample.memory_used,
        _key(schema.GPU_MEMORY_TOTAL): sample.memory_total,
        _key(schema.GPU_MEMORY_FREE): sample.memory_free,
        _key(schema.GPU_TEMPERATURE): sample.temperature,
        _key(schema.GPU_POWER_USAGE): sample.power_usage,
        _key(schema.GPU_POWER_LIMIT): sample.power_limit,
        _key(schema.GPU_SM_CLOCK): sample.sm_clock,
        _key(schema.GPU_MEMORY_CLOCK): sample.memory_clock,
        _key(schema.GPU_ENERGY): sample.energy,
        _key(schema.GPU_PCIE_REPLAY): sample.pcie_replay,
        _key(schema.GPU_ECC_ERRORS): dict(sample.ecc_errors),
        _key(schema.GPU_THROTTLED): dict(sample.throttled),
        _key(schema.GPU_PROCESS_MEMORY): dict(sample.processes),
        _key(schema.GPU_SAMPLE_AGE): round(age, 3),
    }


def snapshot(collector: GpuCollector) -> dict[str, Any]:
    """The last sample as one JSON-able object; missing values are null."""
    return {
        "gpus": [sample_json(s, collector.sample_age(s)) for s in collector.samples()],
        _key(schema.GPU_COLLECTOR_ERRORS): {
            reason: count for reason, count in sorted(collector.errors().items()) if count
        },
        "problem": collector.problem or None,
    }


# --- the table ----------------------------------------------------------------------------------


def human_bytes(value: float) -> str:
    """IEC units, as nvidia-smi's MiB: 512 B, 1.5 KiB, 79.6 GiB."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def human_joules(value: float) -> str:
    for unit in ("J", "kJ", "MJ", "GJ"):
        if abs(value) < 1000 or unit == "GJ":
            return f"{value:.0f} {unit}" if unit == "J" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def _fmt(value: float | None, render: Callable[[float], str]) -> str:
    return "-" if value is None else render(value)


def _pair(a: float | None, b: float | None, render: Callable[[float], str]) -> str:
    if a is None and b is None:
        return "-"
    return f"{_fmt(a, render)} / {_fmt(b, render)}"


COLUMNS = (  # (title, right-aligned)
    ("GPU", False),
    ("NAME", False),
    ("UTIL", True),
    ("MEM UTIL", True),
    ("MEMORY USED / TOTAL", True),
    ("TEMP", True),
    ("POWER / LIMIT", True),
    ("SM CLOCK", True),
    ("MEM CLOCK", True),
    ("ENERGY", True),
    ("THROTTLED", False),
)


def _row(s: GpuSample) -> list[str]:
    percent: Callable[[float], str] = lambda r: f"{r * 100:.0f}%"  # noqa: E731
    mhz: Callable[[float], str] = lambda hz: f"{hz / 1e6:.0f} MHz"  # noqa: E731
    held = [reason for reason, on in s.throttled.items() if on]
    return [
        s.gpu,
        s.name,
        _fmt(s.utilization, percent),
        _fmt(s.memory_copy_utilization, percent),
        _pair(s.memory_used, s.memory_total, human_bytes),
        _fmt(s.temperature, lambda c: f"{c:.0f}C"),
        _pair(s.power_usage, s.power_limit, lambda w: f"{w:.0f} W"),
        _fmt(s.sm_clock, mhz),
        _fmt(s.memory_clock, mhz),
        _fmt(s.energy, human_joules),
        ",".join(held) if held else ("-" if not s.throttled else "none"),
    ]


def _align(rows: Sequence[Sequence[str]], right: Sequence[bool]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(right))]
    return [
        "  ".join(
            cell.rjust(width) if r else cell.ljust(width)
            for cell, width, r in zip(row, widths, right, strict=True)
        ).rstrip()
        for row in rows
    ]


def render_table(collector: GpuCollector) -> str:
    """The last sample as aligned text: one row per GPU, then the processes using them."""
    samples = collector.samples()
    right = [r for _, r in COLUMNS]
    lines = _align([[title for title, _ in COLUMNS], *(_row(s) for s in samples)], right)
    processes = [
        [s.gpu, pid, human_bytes(used)] for s in samples for pid, used in s.processes.items()
    ]
    lines.append("")
    if processes:
        lines.extend(_align([["GPU", "PID", "GPU MEMORY"], *processes], [False, True, True]))
    else:
        lines.append("No processes of this machine or container are using the GPUs.")
    stale = [
        f"{s.gpu} ({collector.sample_age(s):.0f}s old)" for s in samples if s.memory_total is None
    ]
    if stale:
        lines.append("No answer from GPU " + ", ".join(stale))
    errors = {reason: n for reason, n in sorted(collector.errors().items()) if n}
    if errors:
        listed = ", ".join(f"{reason} {n}" for reason, n in errors.items())
        lines.append(f"NVML errors: {listed}")
    return "\n".join(lines)
