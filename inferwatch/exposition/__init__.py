"""Prometheus expositions: serving our registry (:mod:`.serve`), reading any exposition into
families (:mod:`.parse`, :mod:`.families`) and writing families back out (:mod:`.render`).

The serving helpers are the package's public face: ``from inferwatch.exposition import
metrics_handler``.
"""

from inferwatch.exposition.serve import (
    MULTIPROC_ENV,
    MetricsServer,
    metrics_handler,
    multiprocess_dir,
    scrape_registry,
    start_metrics_server,
)

__all__ = [
    "MULTIPROC_ENV",
    "MetricsServer",
    "metrics_handler",
    "multiprocess_dir",
    "scrape_registry",
    "start_metrics_server",
]
