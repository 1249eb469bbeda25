"""Running ``inferwatch`` commands as real processes, and stopping them whatever happened."""

from __future__ import annotations

import asyncio
import contextlib
import sys


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
