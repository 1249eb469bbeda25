"""The sidecar's hot path, compiled with mypyc or pure Python: the two are one behaviour.

The rest of the suite runs whichever this checkout has (``make test`` compiles it when it
can); these tests check the two agree on what is compiled, that the process says which one
it runs, and that the pure Python modules work where compiled ones are installed.
"""

from __future__ import annotations

import ast
import asyncio
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from support.ports import LOOPBACK, free_port
from support.processes import inferwatch_command, stop_process
from support.sidecar import running_sidecar
from support.upstreams import running_upstream, v2_body

from inferwatch import _compiled

ROOT = Path(__file__).resolve().parent.parent
COMPILED = _compiled.compiled_modules()
PURE_ENV = {**os.environ, _compiled.ENV: "0"}


def setup_assigned(name: str) -> Any:
    """A constant setup.py assigns (read, not run: running it would build)."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == name for target in node.targets
        ):
            return ast.literal_eval(node.value)
    raise AssertionError(f"setup.py assigns no {name}")


def test_setup_compiles_the_modules_the_runtime_checks() -> None:
    paths = [name.replace(".", "/") + ".py" for name in _compiled.HOT_PATH]
    assert sorted(setup_assigned("HOT_PATH")) == sorted(paths)
    for path in paths:
        assert (ROOT / path).is_file()
    assert setup_assigned("GROUP") + "__mypyc" == _compiled.LIBRARY


def test_the_hot_path_is_compiled_whole_or_not_at_all() -> None:
    # Compiled modules read each other's objects directly: a mix would crash.
    assert COMPILED in ([], list(_compiled.HOT_PATH))


@pytest.mark.skipif(not COMPILED, reason="the hot path is pure Python here")
def test_no_compiled_module_is_older_than_its_source() -> None:
    """An edit without a rebuild would leave the tests running the old code (the code is
    in the shared library: a module's own extension is a loader, rebuilt only if it changes)."""
    library = Path(sys.modules[_compiled.LIBRARY].__file__ or "")
    for name in _compiled.HOT_PATH:
        source = Path(sys.modules[name].__file__ or "").parent / (name.rpartition(".")[2] + ".py")
        assert library.stat().st_mtime >= source.stat().st_mtime, (
            f"{library.name} is older than {source.name}: rebuild (make test reinstalls, "
            "or pip install -e .)"
        )


async def test_start_up_says_which_hot_path_runs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="inferwatch.sidecar.process")
    async with running_upstream() as up, running_sidecar(up.url):
        pass
    lines = [r.getMessage() for r in caplog.records if "hot path" in r.getMessage()]
    expected = "compiled (mypyc)" if COMPILED else "pure Python"
    assert len(lines) == 1
    assert lines[0].startswith(f"sidecar: hot path {expected}")


def test_describe_names_the_switch_that_made_it_pure() -> None:
    code = (
        "from inferwatch import _compiled\n"
        "import inferwatch.sidecar.proxy\n"
        "print(_compiled.describe())\n"
        "print(_compiled.compiled_modules())\n"
    )
    found = subprocess.run(
        [sys.executable, "-c", code], env=PURE_ENV, capture_output=True, text=True, check=True
    )
    assert found.stdout.splitlines() == ["pure Python (INFERWATCH_COMPILED=0)", "[]"]


async def test_a_pure_python_sidecar_runs_where_compiled_modules_are_installed() -> None:
    """INFERWATCH_COMPILED=0: a real sidecar process imports the .py files, says so, and
    proxies an inference."""
    port = free_port()
    command = inferwatch_command(
        *("--log-level", "INFO", "sidecar", "--upstream"),
        "UPSTREAM",
        *("--listen", f"{LOOPBACK}:{port}", "--admin", f"{LOOPBACK}:{free_port()}"),
        *("--upstream-metrics-url", "none", "--drain-quiet-period", "0"),
    )
    async with running_upstream() as up:
        command[command.index("UPSTREAM")] = up.url
        process = await asyncio.create_subprocess_exec(
            *command, env=PURE_ENV, stderr=asyncio.subprocess.PIPE
        )
        try:
            assert process.stderr is not None
            line = b""
            while b"hot path" not in line:
                line = await asyncio.wait_for(process.stderr.readline(), 60)
                assert line, "the sidecar exited before saying which hot path it runs"
            assert b"sidecar: hot path pure Python (INFERWATCH_COMPILED=0)" in line
            async with (
                aiohttp.ClientSession() as session,
                session.post(
                    f"http://{LOOPBACK}:{port}/v2/models/resnet/infer", data=v2_body(2)
                ) as answer,
            ):
                assert answer.status == 200
                assert answer.headers["X-Upstream"] == "yes"
        finally:
            await stop_process(process)
    assert up.requests == 1


@pytest.mark.skipif(not COMPILED, reason="the suite already runs the pure Python hot path")
def test_the_pure_python_hot_path_passes_its_tests_where_compiled_is_installed() -> None:
    suites = ["tests/test_sidecar_body.py", "tests/test_sidecar_http.py"]
    found = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *suites],
        env=PURE_ENV,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert found.returncode == 0, found.stdout[-3000:]
    assert " passed" in found.stdout.splitlines()[-1]
