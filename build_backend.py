"""inferwatch's build backend: setuptools', asking for mypy to compile the sidecar's hot path.

``setup.py`` compiles the hot path with mypyc when mypy and a C compiler are there; in an
isolated build environment mypy is there only when the backend asks for it, which it does
unless ``INFERWATCH_COMPILE=0`` (then nothing beyond setuptools is needed).
"""

from __future__ import annotations

import os
from typing import Any

from setuptools import build_meta
from setuptools.build_meta import (  # noqa: F401  (the rest of the backend, as is)
    build_editable,
    build_sdist,
    build_wheel,
    get_requires_for_build_sdist,
    prepare_metadata_for_build_editable,
    prepare_metadata_for_build_wheel,
)

COMPILER = ["mypy>=1.10"]


def _compiling() -> list[str]:
    off = os.environ.get("INFERWATCH_COMPILE", "auto").strip().lower() in (
        "0",
        "no",
        "false",
        "off",
    )
    return [] if off else COMPILER


def get_requires_for_build_wheel(config_settings: dict[str, Any] | None = None) -> list[str]:
    return [*build_meta.get_requires_for_build_wheel(config_settings), *_compiling()]


def get_requires_for_build_editable(config_settings: dict[str, Any] | None = None) -> list[str]:
    return [*build_meta.get_requires_for_build_editable(config_settings), *_compiling()]
