"""The sidecar's hot path: compiled with mypyc where the install could, else pure Python.

``pip install`` compiles the modules in :data:`HOT_PATH` (see ``setup.py``) when mypy and a
C compiler are there, and installs their ``.py`` files either way. The compiled modules
are all or none: compiled code reads the objects of its sibling modules directly, so a
process never mixes them. ``INFERWATCH_COMPILED=0`` in the environment makes a process
import the ``.py`` files even where compiled ones are installed (to rule them out when
looking for a bug); :func:`describe` says which ones a process runs.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Sequence
from types import ModuleType

# Compiled together; setup.py lists the same files (a test checks they agree).
HOT_PATH = (
    "inferwatch.sidecar.body",
    "inferwatch.sidecar.http1",
    "inferwatch.sidecar.upstream",
    "inferwatch.sidecar.protocols",
    "inferwatch.sidecar.proxy",
    "inferwatch.sidecar.fastmetrics",
)
ENV = "INFERWATCH_COMPILED"
# The shared library that holds the compiled code (setup.py's GROUP + "__mypyc"); each compiled
# module of HOT_PATH is a small loader of its part of it.
LIBRARY = "inferwatch_hotpath__mypyc"


class SourceFinder(importlib.abc.MetaPathFinder):
    """Finds the ``.py`` file of a hot-path module, where Python's own finders would take a
    compiled module of the same name first."""

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in HOT_PATH or not path:
            return None
        file_name = fullname.rpartition(".")[2] + ".py"
        for entry in path:
            candidate = os.path.join(entry, file_name)
            if os.path.isfile(candidate):
                return importlib.util.spec_from_file_location(fullname, candidate)
        return None


def use_source() -> None:
    """Import the hot path from its ``.py`` files from now on (before its first import)."""
    if not any(isinstance(finder, SourceFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, SourceFinder())


def is_compiled(module: ModuleType) -> bool:
    """Whether ``module`` was loaded from an extension module (a compiled one)."""
    file = getattr(module, "__file__", None) or ""
    return file.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))


def compiled_modules() -> list[str]:
    """The hot-path modules this process runs compiled (importing them)."""
    return [name for name in HOT_PATH if is_compiled(importlib.import_module(name))]


def describe() -> str:
    """One line for the start-up log: compiled or pure Python, and why when it is pure."""
    found = compiled_modules()
    if found == list(HOT_PATH):
        return "compiled (mypyc)"
    if found:
        return "mixed, compiled: " + ", ".join(found)  # a damaged install
    if os.environ.get(ENV) == "0":
        return f"pure Python ({ENV}=0)"
    return "pure Python (installed without compiling)"


if os.environ.get(ENV) == "0":
    use_source()
