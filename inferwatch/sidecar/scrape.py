"""One scrape for the pod: the sidecar's own families plus the upstream model server's.

As KServe's qpext does, so a pod needs one scrape port, but without its flaws: the upstream's
families keep their type, HELP, unit and timestamps (and exemplars, OpenMetrics to
OpenMetrics); untyped stays untyped; OpenMetrics or text is answered as the scraper asks,
whatever the upstream spoke; the scrape timeout is honoured, less a margin to answer in. The
upstream's exposition is parsed in full (TorchServe's trailing commas and vLLM's colons
included) and rendered again, so a broken upstream can never corrupt the sidecar's output: if
it is down, slow, too large, not 200 or not an exposition, its part is left out and
``inferwatch_upstream_scrape_errors_total{reason}`` counts why. Which upstream families join
ours is :mod:`inferwatch.sidecar.merge`'s decision. From the same parsed families the model
server's queue signal is read (:mod:`inferwatch.sidecar.server_metrics`) and added to our
queue, in-flight and KV cache families as ``source="server"``.
"""

from __future__ import annotations

import asyncio
import logging
import re
import zlib

import aiohttp
from prometheus_client import generate_latest
from prometheus_client.openmetrics import exposition as openmetrics
from prometheus_client.registry import Collector

from inferwatch import schema
from inferwatch.exposition.families import Family, Sample, families_of
from inferwatch.exposition.parse import InvalidExposition, TooManySamples, parse_exposition
from inferwatch.exposition.render import (
    CONTENT_TYPE_OPENMETRICS,
    CONTENT_TYPE_TEXT,
    render_openmetrics,
    render_text,
    wants_openmetrics,
)
from inferwatch.sidecar.merge import merge_families
from inferwatch.sidecar.server_metrics import ServerSignal

logger = logging.getLogger(__name__)

MAX_UPSTREAM_BYTES = 32 * 1024 * 1024  # an upstream exposition larger than this is left out
# Reading and writing an upstream sample costs about 3 µs: past this many (~0.6 s here) the
# merge could outlast a scrape's timeout, and Prometheus would lose our families with it.
MAX_UPSTREAM_SAMPLES = 200_000
DEFAULT_SCRAPE_TIMEOUT = 10.0  # Prometheus' default scrape_timeout
# Asked of the upstream for a text scrape: the text format, which every model server speaks.
UPSTREAM_ACCEPT = "text/plain;version=0.0.4;q=1.0,*/*;q=0.1"
# Asked for an OpenMetrics scrape, so that exemplars (trace ids on the app's latency buckets)
# come through. client_python's OpenMetrics output (0.2x) writes colon names (vllm:...)
# differently in TYPE lines and samples: an upstream that does so is asked for text from then on.
UPSTREAM_ACCEPT_OPENMETRICS = (
    "application/openmetrics-text;version=1.0.0;q=0.9,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)
_COLON_TYPE_LINE = re.compile(rb"^# TYPE [^ :]*:", re.MULTILINE)

_ERRORS_NAME = schema.UPSTREAM_SCRAPE_ERRORS.name.removesuffix("_total")


class _ScrapeError(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class UpstreamScraper:
    """The upstream's ``/metrics`` (``url``; ``None``: no merge), merged into each scrape of
    ours. One per sidecar process: it keeps what the scrapes learn about the upstream, the
    failures by reason, the collisions already logged, and whether its OpenMetrics is usable."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        url: str | None,
        signal: ServerSignal | None = None,
    ) -> None:
        self.session = session
        self.url = url or None
        # The server's queue signal; by default detected from the upstream's metric names.
        self.signal = ServerSignal() if signal is None else signal
        self._errors = dict.fromkeys(schema.SCRAPE_ERROR_REASONS, 0)
        self._last_reason: str | None = None
        self._warned: set[str] = set()
        self._text_only = False  # its OpenMetrics output is not usable (colon names)

    @property
    def errors(self) -> dict[str, int]:
        """Failed scrapes of the upstream so far, by reason."""
        return dict(self._errors)

    async def exposition(
        self, collector: Collector, accept: str, scrape_timeout: float | None
    ) -> tuple[bytes, str]:
        """The collector's exposition plus the upstream's: (body, content_type).

        ``accept`` is the scraper's Accept header; ``scrape_timeout`` its budget in seconds
        (Prometheus' X-Prometheus-Scrape-Timeout-Seconds), of which the upstream gets all but a
        margin. Never raises for anything the upstream does.
        """
        om = wants_openmetrics(accept)
        content_type = CONTENT_TYPE_OPENMETRICS if om else CONTENT_TYPE_TEXT
        url = self.url
        signal = self.signal
        if url is None and signal.management is None:
            output, _ = await asyncio.to_thread(_render, collector, None, None, om)
            return output, content_type
        upstream: list[Family] | None = None
        if url is None:  # the management API alone
            polled = await asyncio.to_thread(signal.derive, None)
            output, _ = await asyncio.to_thread(
                _render, collector, None, None, om, polled, signal.errors_family()
            )
            return output, content_type
        try:
            body, upstream_type = await self._fetch_for(url, _fetch_timeout(scrape_timeout), om)
            upstream = await asyncio.to_thread(_upstream_families, body, upstream_type)
            self._last_reason = None
        except _ScrapeError as exc:
            self._errors[exc.reason] += 1
            log = logger.warning if self._last_reason != exc.reason else logger.debug
            log("upstream metrics %s left out (%s): %s", url, exc.reason, exc)
            self._last_reason = exc.reason
        server: dict[str, list[Sample]] = {}
        try:
            server = await asyncio.to_thread(signal.derive, upstream)
        except Exception:  # the signal is an addition: never at the cost of the scrape
            logger.exception("reading the server's queue signal failed")
        signal_errors = signal.errors_family() if signal.active else None
        try:
            output, left_out = await asyncio.to_thread(
                _render, collector, upstream, self._errors, om, server, signal_errors
            )
        except Exception:
            if not upstream:
                raise
            logger.exception("merging the upstream's metrics failed; serving ours alone")
            self._errors[schema.SCRAPE_INVALID] += 1
            output, left_out = await asyncio.to_thread(
                _render, collector, None, self._errors, om, server, signal_errors
            )
        for name in left_out:
            if name not in self._warned and len(self._warned) < 1000:
                self._warned.add(name)
                logger.warning("upstream family %s collides with the sidecar's: left out", name)
        return output, content_type

    async def _fetch_for(self, url: str, timeout: float, om: bool) -> tuple[bytes, str]:
        """OpenMetrics (with exemplars) for an OpenMetrics scrape when the upstream writes it
        correctly; text otherwise."""
        if not om or self._text_only:
            return await _fetch(self.session, url, timeout)
        loop = asyncio.get_running_loop()
        started = loop.time()
        body, content_type = await _fetch(self.session, url, timeout, UPSTREAM_ACCEPT_OPENMETRICS)
        if _is_openmetrics(content_type) and _COLON_TYPE_LINE.search(body):
            self._text_only = True
            logger.info("upstream %s writes colon names badly in OpenMetrics: asking for text", url)
            left = timeout - (loop.time() - started)
            if left <= 0:
                raise _ScrapeError(schema.SCRAPE_TIMEOUT, f"no answer within {timeout:.2f} s")
            return await _fetch(self.session, url, left)
        return body, content_type


def _fetch_timeout(scrape_timeout: float | None) -> float:
    """The time the upstream gets: the scrape's budget less a margin to answer in."""
    budget = scrape_timeout if scrape_timeout and scrape_timeout > 0 else DEFAULT_SCRAPE_TIMEOUT
    return budget - min(0.5, budget / 4)


def _decode(body: bytes, encoding: str) -> bytes:
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "x-gzip", "deflate"):
        raise _ScrapeError(schema.SCRAPE_INVALID, f"unsupported Content-Encoding {encoding!r}")
    wbits = 16 + zlib.MAX_WBITS if "gzip" in encoding else zlib.MAX_WBITS
    parts: list[bytes] = []
    size = 0
    rest = body
    while True:  # gzip allows several members back to back; each is read, within the cap
        try:
            inflater = zlib.decompressobj(wbits)
            out = inflater.decompress(rest, MAX_UPSTREAM_BYTES + 1 - size)
        except zlib.error as exc:
            raise _ScrapeError(schema.SCRAPE_INVALID, f"bad {encoding} body: {exc}") from None
        size += len(out)
        parts.append(out)
        if size > MAX_UPSTREAM_BYTES or inflater.unconsumed_tail:
            raise _ScrapeError(schema.SCRAPE_TOO_LARGE, "decompressed exposition too large")
        if not inflater.eof:
            raise _ScrapeError(schema.SCRAPE_INVALID, f"{encoding} body cut short")
        rest = inflater.unused_data
        if not rest or "gzip" not in encoding:
            return b"".join(parts)


async def _get(
    session: aiohttp.ClientSession, url: str, timeout: float, accept: str
) -> tuple[bytes, str]:
    async with session.get(
        url,
        headers={"Accept": accept, "Accept-Encoding": "gzip"},
        timeout=aiohttp.ClientTimeout(total=timeout),
        allow_redirects=False,
        auto_decompress=False,
    ) as response:
        if response.status != 200:
            raise _ScrapeError(schema.SCRAPE_HTTP_STATUS, f"answered {response.status}")
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.content.iter_chunked(256 * 1024):
            size += len(chunk)
            if size > MAX_UPSTREAM_BYTES:
                raise _ScrapeError(schema.SCRAPE_TOO_LARGE, f"over {MAX_UPSTREAM_BYTES} bytes")
            chunks.append(chunk)
        body = b"".join(chunks)
        return _decode(body, response.headers.get("Content-Encoding", "")), response.headers.get(
            "Content-Type", ""
        )


async def _fetch(
    session: aiohttp.ClientSession, url: str, timeout: float, accept: str = UPSTREAM_ACCEPT
) -> tuple[bytes, str]:
    """The upstream's exposition and its Content-Type, within ``timeout`` seconds."""
    try:
        return await asyncio.wait_for(_get(session, url, timeout, accept), timeout)
    except asyncio.TimeoutError:
        raise _ScrapeError(schema.SCRAPE_TIMEOUT, f"no answer within {timeout:.2f} s") from None
    except aiohttp.ClientPayloadError as exc:
        raise _ScrapeError(schema.SCRAPE_INVALID, f"bad body: {exc}") from None
    except (aiohttp.ClientError, OSError) as exc:
        raise _ScrapeError(schema.SCRAPE_UNREACHABLE, f"{type(exc).__name__}: {exc}") from None


def _is_openmetrics(content_type: str) -> bool:
    return content_type.split(";")[0].strip().lower() == "application/openmetrics-text"


def _upstream_families(body: bytes, content_type: str) -> list[Family]:
    try:
        text = body.decode("utf-8")
        return parse_exposition(text, _is_openmetrics(content_type), MAX_UPSTREAM_SAMPLES)
    except TooManySamples as exc:
        raise _ScrapeError(schema.SCRAPE_TOO_LARGE, str(exc)) from None
    except (InvalidExposition, UnicodeDecodeError) as exc:
        raise _ScrapeError(schema.SCRAPE_INVALID, str(exc)[:300]) from None
    except Exception as exc:  # whatever the upstream sent, our own metrics are served
        logger.exception("reading the upstream's exposition failed")
        raise _ScrapeError(schema.SCRAPE_INVALID, repr(exc)[:300]) from None


def _errors_family(errors: dict[str, int]) -> Family:
    samples = [
        Sample(_ERRORS_NAME + "_total", (("reason", reason),), float(count))
        for reason, count in errors.items()
    ]
    return Family(_ERRORS_NAME, "counter", schema.UPSTREAM_SCRAPE_ERRORS.help, "", samples)


def _add_server_series(ours: list[Family], server: dict[str, list[Sample]]) -> None:
    """The server's normalised series join our family of that name (created if we lack it);
    a series we already hold stays ours."""
    by_name = {f.name: f for f in ours}
    for name, samples in server.items():
        if not samples:
            continue
        mine = by_name.get(name)
        if mine is None:
            mine = Family(name, "gauge", schema.by_name(name).help, "", [])
            ours.append(mine)
            by_name[name] = mine
        seen = {s.labels for s in mine.samples}
        mine.samples.extend(s for s in samples if s.labels not in seen)


def _render(
    own: Collector,
    upstream: list[Family] | None,
    errors: dict[str, int] | None,
    om: bool,
    server: dict[str, list[Sample]] | None = None,
    signal_errors: Family | None = None,
) -> tuple[bytes, list[str]]:
    if errors is None and not server and signal_errors is None:
        # nothing to merge: exactly what client_python serves
        encoder = openmetrics.generate_latest if om else generate_latest
        return encoder(own), []
    ours = families_of(own)
    if errors is not None and not any(f.name == _ERRORS_NAME for f in ours):
        ours.append(_errors_family(errors))
    if signal_errors is not None and not any(f.name == signal_errors.name for f in ours):
        ours.append(signal_errors)
    _add_server_series(ours, server or {})
    families, left_out = merge_families(ours, upstream or [])
    return (render_openmetrics(families) if om else render_text(families)), left_out
