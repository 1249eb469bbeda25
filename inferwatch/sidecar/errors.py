"""What the sidecar answers when it, not the upstream, ends a request.

One table maps each way a forwarded request can fail to the HTTP status the client gets, the
``reason`` label of ``model_inference_failures_total`` and the error code of the JSON body, so
the proxy's steps never spell a status or a reason themselves. The upstream's own answers pass
through unchanged; :func:`reason_for_status` only says how they count.
"""

from __future__ import annotations

import asyncio
import json
from typing import NamedTuple

from aiohttp import web

from inferwatch import schema

# The "reason" of the sidecar's own JSON errors (the upstream's errors pass through unchanged).
ERR_BAD_REQUEST = "bad_request"
ERR_CODING = "unsupported_transfer_coding"
ERR_TOO_LARGE = "body_too_large"
ERR_OVERLOADED = "overloaded"
ERR_TIMEOUT = "upstream_timeout"
ERR_UNAVAILABLE = "upstream_unavailable"
ERR_UPSTREAM_FAILED = "upstream_failed"
ERR_NOT_READY = "not_ready"
ERR_DRAINING = "draining"


class ConnectFailed(Exception):
    """The upstream could not be reached (refused, unreachable, connect timeout)."""


class BodyTooLarge(Exception):
    """A streamed request body went past the configured limit."""


class ClientGone(Exception):
    """The client went away, or its answer had to be cut: close the upstream connection."""


class Failure(NamedTuple):
    """How one kind of upstream failure is answered and counted."""

    status: int  # what the client gets, while no answer has started
    reason: str  # model_inference_failures_total{reason}
    error: str  # "reason" of the JSON body
    message: str  # "error" of the JSON body; {timeout} and {exception} are filled in


UPSTREAM_UNAVAILABLE = Failure(
    502, schema.REASON_UPSTREAM_UNAVAILABLE, ERR_UNAVAILABLE, "cannot connect to the upstream"
)
UPSTREAM_TIMEOUT = Failure(
    504,
    schema.REASON_TIMEOUT,
    ERR_TIMEOUT,
    "the upstream did not answer within {timeout:g}s",
)
UPSTREAM_FAILED = Failure(
    502, schema.REASON_SERVER_ERROR, ERR_UPSTREAM_FAILED, "the upstream failed: {exception}"
)

# First match wins; anything else the upstream connection raises is UPSTREAM_FAILED.
UPSTREAM_FAILURES: tuple[tuple[type[BaseException], Failure], ...] = (
    (ConnectFailed, UPSTREAM_UNAVAILABLE),
    (asyncio.TimeoutError, UPSTREAM_TIMEOUT),
)


def upstream_failure(exc: BaseException) -> Failure:
    """The row of :data:`UPSTREAM_FAILURES` for an exception from the upstream side."""
    for kind, failure in UPSTREAM_FAILURES:
        if isinstance(exc, kind):
            return failure
    return UPSTREAM_FAILED


def failure_message(failure: Failure, exc: BaseException, timeout: float) -> str:
    return failure.message.format(timeout=timeout, exception=type(exc).__name__)


def reason_for_status(status: int) -> str | None:
    """How an upstream's answer counts: ``None`` for a success, else its failure reason."""
    if status < 400:
        return None
    return schema.REASON_CLIENT_ERROR if status < 500 else schema.REASON_SERVER_ERROR


# How a gRPC status counts, by its name (grpc.StatusCode.X.name), so this module needs no grpc.
# None: a success. UNAVAILABLE is what gRPC reports when the upstream refused or reset the
# connection, and what servers answer when they cannot take the call now.
GRPC_STATUS_REASONS: dict[str, str | None] = {
    "OK": None,
    "CANCELLED": schema.REASON_CANCELLED,
    "DEADLINE_EXCEEDED": schema.REASON_TIMEOUT,
    "UNAVAILABLE": schema.REASON_UPSTREAM_UNAVAILABLE,
    "INVALID_ARGUMENT": schema.REASON_CLIENT_ERROR,
    "NOT_FOUND": schema.REASON_CLIENT_ERROR,
    "ALREADY_EXISTS": schema.REASON_CLIENT_ERROR,
    "FAILED_PRECONDITION": schema.REASON_CLIENT_ERROR,
    "OUT_OF_RANGE": schema.REASON_CLIENT_ERROR,
    "UNAUTHENTICATED": schema.REASON_CLIENT_ERROR,
    "PERMISSION_DENIED": schema.REASON_CLIENT_ERROR,
    "INTERNAL": schema.REASON_SERVER_ERROR,
    "UNKNOWN": schema.REASON_SERVER_ERROR,
    "DATA_LOSS": schema.REASON_SERVER_ERROR,
    "UNIMPLEMENTED": schema.REASON_SERVER_ERROR,
    "RESOURCE_EXHAUSTED": schema.REASON_SERVER_ERROR,
    "ABORTED": schema.REASON_SERVER_ERROR,
}


def reason_for_grpc_status(name: str) -> str | None:
    """How a call that ended with the gRPC status ``name`` counts: ``None`` for OK."""
    return GRPC_STATUS_REASONS.get(name, schema.REASON_SERVER_ERROR)


def error_body(error: str, reason: str) -> bytes:
    """The sidecar's own error document: ``{"error": ..., "reason": ...}``."""
    return json.dumps({"error": error, "reason": reason}).encode()


def json_error(
    status: int, error: str, reason: str, headers: dict[str, str] | None = None
) -> web.Response:
    """The same error as an aiohttp response (the admin port)."""
    return web.Response(
        body=error_body(error, reason),
        status=status,
        content_type="application/json",
        headers=headers,
    )
