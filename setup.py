"""Builds inferwatch, compiling the sidecar's hot path with mypyc where it can.

The modules in HOT_PATH are compiled to C extension modules (next to their ``.py`` files,
which are installed too) when mypy and a working C compiler with Python's headers are
there; otherwise, or with ``INFERWATCH_COMPILE=0`` in the environment, inferwatch installs
as pure Python, which behaves the same, on more CPU per request. ``INFERWATCH_COMPILE=1``
makes a failure to compile an error instead of a fallback. Everything else about the
package is in pyproject.toml.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
import sysconfig

from setuptools import setup
from setuptools.extension import Extension

# Compiled together (inferwatch/_compiled.py lists the same modules; a test checks it).
HOT_PATH = [
    "inferwatch/sidecar/body.py",
    "inferwatch/sidecar/http1.py",
    "inferwatch/sidecar/upstream.py",
    "inferwatch/sidecar/protocols.py",
    "inferwatch/sidecar/proxy.py",
    "inferwatch/sidecar/fastmetrics.py",
]
# The compiled modules' shared library: a top-level module, as mypyc expects it (it finds
# the compiled modules' own files from there).
GROUP = "inferwatch_hotpath"
MODE = os.environ.get("INFERWATCH_COMPILE", "auto").strip().lower()


def note(message: str) -> None:
    print(f"inferwatch: {message}", file=sys.stderr)


def can_compile_c() -> str | None:
    """Why C extension modules cannot be built here, or None when they can."""
    if sys.implementation.name != "cpython":
        return f"{sys.implementation.name} is not CPython"
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    program = shlex.split(cc)[0] if cc.strip() else "cc"
    if shutil.which(program) is None:
        return f"no C compiler ({program} not found)"
    headers = sysconfig.get_paths()["include"]
    if not os.path.isfile(os.path.join(headers, "Python.h")):
        return f"no Python.h in {headers} (Debian: apt-get install python3-dev)"
    return None


# setuptools runs this file for metadata too (egg_info, dist_info): compiling, which takes
# a minute, is for the commands that build extension modules.
BUILDS = {"build", "build_ext", "bdist_wheel", "editable_wheel", "install", "develop"}


def compiled_modules() -> list[Extension]:
    if not BUILDS.intersection(sys.argv[1:]):
        return []
    if MODE in ("0", "no", "false", "off"):
        note("INFERWATCH_COMPILE=0: installing pure Python")
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        why: str | None = "mypy (mypyc) is not installed"
    else:
        why = can_compile_c()
    if why is None:
        try:
            # Compiled the same wherever it is built: third-party types are Any (an isolated
            # build environment has none of them), which compiled code checks least, and
            # only the compiled modules' own type errors count (mypy inferwatch checks all).
            options = [
                "--no-site-packages",
                "--ignore-missing-imports",
                "--follow-imports=silent",
            ]
            return mypycify([*options, *HOT_PATH], opt_level="3", group_name=GROUP)
        except (Exception, SystemExit) as exc:  # mypyc reports its errors with sys.exit
            why = f"mypyc failed: {exc!r}"
    if MODE in ("1", "yes", "true", "on"):
        raise SystemExit(f"inferwatch: INFERWATCH_COMPILE=1 but cannot compile: {why}")
    note(f"installing pure Python, not compiled: {why}")
    return []


setup(ext_modules=compiled_modules())
