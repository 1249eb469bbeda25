"""Running ``inferwatch`` commands as real processes, and stopping them whatever happened."""

from __future__ import annotations

import asyncio
import contextlib
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass

from support.ports import LOOPBACK


def inferwatch_command(*args: str) -> list[str]:
    """``python -m inferwatch ARGS`` with this interpreter (the test's virtualenv)."""
    return [sys.executable, "-m", "inferwatch", *args]


async def stop_process(process: asyncio.subprocess.Process, timeout: float = 30.0) -> int:
    """SIGTERM (if still running), wait up to ``timeout`` s, else SIGKILL; the exit status.

    Tests that check a clean exit assert on the status; clean-up code ignores it.
    """
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        try:
            return await asyncio.wait_for(process.wait(), timeout)
        except asyncio.TimeoutError:
            process.kill()
    return await process.wait()


def end_process(process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """``stop_process`` for a process started with ``subprocess.Popen``."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# What `inferwatch serve --host 127.0.0.1` prints first on its stdout.
_LISTENING = re.compile(rf"listening on (http://{re.escape(LOOPBACK)}:\d+) \(device (\S+)\)")


@dataclass
class ServeProcess:
    """A running ``inferwatch serve`` process, where it listens and the device it runs on."""

    process: asyncio.subprocess.Process
    url: str
    device: str


async def read_listening(
    process: asyncio.subprocess.Process, timeout: float = 60.0
) -> tuple[str, str]:
    """The URL and device of the 'listening on http://127.0.0.1:PORT (device D)' line that
    ``inferwatch serve`` prints first on its stdout (a pipe)."""
    assert process.stdout is not None
    line = (await asyncio.wait_for(process.stdout.readline(), timeout)).decode()
    found = _LISTENING.search(line)
    assert found, line
    return found.group(1), found.group(2)


@asynccontextmanager
async def serve_process(
    *flags: str, env: Mapping[str, str] | None = None, line_timeout: float = 60.0
) -> AsyncIterator[ServeProcess]:
    """``inferwatch serve --host 127.0.0.1 --port 0 FLAGS``, yielded once it said where it
    listens (not yet ready: its models may still be warming up); stopped (SIGTERM, then
    SIGKILL) at the end if still running. Its stderr goes to the test's."""
    command = inferwatch_command("serve", "--host", LOOPBACK, "--port", "0", *flags)
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, env=env
    )
    try:
        yield ServeProcess(process, *await read_listening(process, line_timeout))
    finally:
        await stop_process(process)
