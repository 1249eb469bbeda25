"""inferwatch: observability for ML model serving."""

# First, so that INFERWATCH_COMPILED=0 applies to every import of the hot path.
from inferwatch import _compiled  # noqa: F401
from inferwatch._version import __version__
from inferwatch.decorators import monitor_inference, track_inference
from inferwatch.exposition import metrics_handler, start_metrics_server
from inferwatch.gpu import start_gpu_metrics
from inferwatch.tracing import setup_tracing

__all__ = [
    "__version__",
    "metrics_handler",
    "monitor_inference",
    "setup_tracing",
    "start_gpu_metrics",
    "start_metrics_server",
    "track_inference",
]
