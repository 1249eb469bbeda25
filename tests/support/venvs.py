"""Virtualenvs of their own for real servers the tests install from the package index (their
dependencies would fight ours), made once per machine and kept while their packages match."""

from __future__ import annotations

import fcntl
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
INSTALL_TIMEOUT = 900.0


def run(command: list[str], what: str, timeout: float, env: dict[str, str] | None = None) -> str:
    """Run ``command``; fails the test with its whole output when it does not exit 0."""
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=timeout, check=False, env=env
    )
    if done.returncode != 0:
        pytest.fail(
            f"{what} failed (exit {done.returncode}): {' '.join(command)}\n"
            f"--- stdout\n{done.stdout[-6000:]}\n--- stderr\n{done.stderr[-6000:]}"
        )
    return done.stdout


def isolated_venv(name: str, packages: Sequence[str]) -> Path:
    """The python of ``REPO/name``, made (``pip install PACKAGES``) unless its stamp already
    names PACKAGES. Fails the test, with pip's output, when it cannot be made: a skipped check
    would pass unnoticed."""
    venv = REPO / name
    stamp = venv / ".installed"
    wanted = "\n".join(packages) + "\n"
    python = venv / "bin" / "python"
    with open(REPO / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two pytest processes: one installs, one waits
        if python.exists() and stamp.exists() and stamp.read_text() == wanted:
            return python
        started = time.monotonic()
        stamp.unlink(missing_ok=True)
        run([sys.executable, "-m", "venv", "--clear", str(venv)], "making the venv", 120)
        pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        run([*pip, *packages], "pip install " + " ".join(packages), INSTALL_TIMEOUT)
        stamp.write_text(wanted)
        print(f"made {venv} in {time.monotonic() - started:.1f} s", file=sys.stderr)
    return python
