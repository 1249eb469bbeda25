"""Span attribute names: the HTTP semantic conventions', and inferwatch's own for inference."""

from __future__ import annotations

from typing import Any

# HTTP semantic conventions (stable):
ATTR_HTTP_METHOD = "http.request.method"
ATTR_HTTP_ROUTE = "http.route"
ATTR_HTTP_STATUS = "http.response.status_code"
ATTR_URL_PATH = "url.path"
# RPC semantic conventions (gRPC):
ATTR_RPC_SYSTEM = "rpc.system"
ATTR_RPC_SERVICE = "rpc.service"
ATTR_RPC_METHOD = "rpc.method"
ATTR_RPC_GRPC_STATUS = "rpc.grpc.status_code"
ATTR_ERROR_TYPE = "error.type"
# inferwatch's own (no semantic convention covers a model server's inference):
ATTR_MODEL_NAME = "model.name"
ATTR_MODEL_VERSION = "model.version"
ATTR_BATCH_SIZE = "inference.batch_size"  # items in the request (or, on a batch span, the batch)
ATTR_BATCH_REQUESTS = "inference.batch.requests"  # requests whose items a batch span ran
ATTR_SOURCE = "inference.source"  # "sidecar" or "app", as the metrics' source label


def model_attributes(source: str, model_name: str, model_version: str) -> dict[str, Any]:
    """The attributes naming a model, as its metrics' labels do (no version: none set)."""
    attributes: dict[str, Any] = {ATTR_SOURCE: source, ATTR_MODEL_NAME: model_name}
    if model_version:
        attributes[ATTR_MODEL_VERSION] = model_version
    return attributes
