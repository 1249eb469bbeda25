"""An aiohttp middleware: a SERVER span per request, continuing the caller's ``traceparent``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from inferwatch.tracing.attributes import (
    ATTR_HTTP_METHOD,
    ATTR_HTTP_ROUTE,
    ATTR_HTTP_STATUS,
    ATTR_URL_PATH,
)
from inferwatch.tracing.sampling import start_span
from inferwatch.tracing.spans import end_span, extract_context
from inferwatch.tracing.state import tracing_state

if TYPE_CHECKING:
    from aiohttp import web

Handler = Callable[["web.Request"], Awaitable["web.StreamResponse"]]

# Probes and scrapes: a trace each second per pod would bury the inference traces.
UNTRACED_PATHS = frozenset(
    ("/metrics", "/health", "/ready", "/v2/health/live", "/v2/health/ready", "/livez", "/readyz")
)


def tracing_middleware(untraced_paths: frozenset[str] = UNTRACED_PATHS) -> Any:
    """An aiohttp middleware: a SERVER span per request (except ``untraced_paths``) that
    continues the caller's W3C ``traceparent``, with the HTTP semantic-convention attributes."""

    # A new-style middleware (what aiohttp's @web.middleware marks), so that importing
    # inferwatch does not import aiohttp.
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not tracing_state.enabled or request.path in untraced_paths:
            return await handler(request)
        return await _traced_request(request, handler)

    middleware.__middleware_version__ = 1  # type: ignore[attr-defined]
    return middleware


async def _traced_request(request: web.Request, handler: Handler) -> web.StreamResponse:
    from aiohttp.web import HTTPException

    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else None
    attributes: dict[str, Any] = {
        ATTR_HTTP_METHOD: request.method,
        ATTR_URL_PATH: request.path,
    }
    if route:
        attributes[ATTR_HTTP_ROUTE] = route
    span = start_span(
        f"{request.method} {route}" if route else request.method,
        extract_context(request.headers),
        kind=SpanKind.SERVER,
        attributes=attributes,
    )
    token = otel_context.attach(trace.set_span_in_context(span))
    status = 500
    error: BaseException | None = None
    try:
        response = await handler(request)
        status = response.status
        return response
    except HTTPException as exc:
        status = exc.status
        raise
    except BaseException as exc:
        error = exc
        raise
    finally:
        otel_context.detach(token)
        span.set_attribute(ATTR_HTTP_STATUS, status)
        if error is not None:
            end_span(span, error, type(error).__qualname__)
        elif status >= 500:
            end_span(span, None, str(status))
        else:
            span.end()


aiohttp_middleware = tracing_middleware()
