"""The switches the instrumented hot paths read on every call, in one object with one owner.

:func:`~inferwatch.tracing.setup_tracing` and :func:`~inferwatch.tracing.shutdown_tracing`
set them; everything else reads ``tracing_state.enabled`` at call time. Importing a plain
module-level flag would copy its value, and a copy never sees tracing turned on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from inferwatch.tracing.decision import Decider


class TracingState:
    """Whether tracing is on, whether latency observations carry exemplars, and the sampler's
    decision as computed without the SDK (``None`` while off)."""

    __slots__ = ("decider", "enabled", "exemplars")

    def __init__(self) -> None:
        self.enabled = False
        # False in prometheus_client multiprocess mode too: it keeps no exemplars.
        self.exemplars = False
        self.decider: Decider | None = None


tracing_state = TracingState()
