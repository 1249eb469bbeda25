"""The admin /metrics merge against a hostile or broken upstream.

Whatever the upstream's /metrics answers, the merged scrape must keep the sidecar's own
families, stay parseable by Prometheus (checked with promtool and client_python's strict
OpenMetrics parser), count a dropped upstream in inferwatch_upstream_scrape_errors_total,
answer within the scrape timeout, and never let an upstream series pass for a sidecar one.
Upstreams are real servers on 127.0.0.1, ephemeral ports only.
"""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_parse
from prometheus_client.parser import text_string_to_metric_families as text_parse
from support.http import serving
from support.ports import LOOPBACK
from support.prometheus import promtool_status
from support.sidecar import own_registry, running_sidecar

from inferwatch import schema
from inferwatch.exposition.render import CONTENT_TYPE_OPENMETRICS, CONTENT_TYPE_TEXT
from inferwatch.sidecar import scrape as scraping
from inferwatch.sidecar.scrape import UpstreamScraper

TEXT_ACCEPT = "text/plain;version=0.0.4;q=1,*/*;q=0.1"
OM_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)
TEXT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# --- helpers ----------------------------------------------------------------------------------


@asynccontextmanager
async def upstream(handler: Handler) -> AsyncIterator[UpstreamScraper]:
    """``handler`` as an upstream's /metrics on an ephemeral port; yields a scraper of it."""
    app = web.Application()
    app.router.add_get("/metrics", handler)
    async with (
        serving(app, shutdown_timeout=0.2, handler_cancellation=True) as url,
        aiohttp.ClientSession() as session,
    ):
        yield UpstreamScraper(session, f"{url}/metrics")


def answering(body: bytes, content_type: str = TEXT_TYPE, **headers: str) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.Response(body=body, headers=headers)
        response.headers["Content-Type"] = content_type
        return response

    return handler


@asynccontextmanager
async def raw_upstream(response: bytes) -> AsyncIterator[UpstreamScraper]:
    """A TCP server that reads one request and writes ``response`` verbatim, then closes."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(response)
            await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_server(handle, LOOPBACK, 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with aiohttp.ClientSession() as session:
            yield UpstreamScraper(session, f"http://{LOOPBACK}:{port}/metrics")
    finally:
        server.close()
        await server.wait_closed()


async def scrape(
    scraper: UpstreamScraper,
    accept: str = TEXT_ACCEPT,
    timeout: float = 3.0,
    registry: CollectorRegistry | None = None,
) -> str:
    registry = registry or own_registry()
    body, content_type = await scraper.exposition(registry, accept, timeout)
    assert content_type == (CONTENT_TYPE_OPENMETRICS if accept == OM_ACCEPT else CONTENT_TYPE_TEXT)
    return body.decode()


def errors(scraper: UpstreamScraper) -> dict[str, int]:
    """Non-zero scrape error counts of ``scraper``."""
    return {reason: n for reason, n in scraper.errors.items() if n}


def assert_parseable(promtool: str, text: str, accept: str) -> None:
    """What Prometheus would ingest: promtool parses the text format (lint aside); the
    OpenMetrics answer passes client_python's strict parser."""
    if accept == OM_ACCEPT:
        assert text.endswith("# EOF\n") and text.count("# EOF") == 1
        list(om_parse(text))
    else:
        status, complaints = promtool_status(promtool, text)
        assert status != 1, complaints


def assert_ours_served(text: str) -> None:
    assert "inferwatch_upstream_up 1.0\n" in text
    assert (
        'model_inference_total{model_name="resnet50",model_version="1",source="sidecar",'
        'status="success"} 1.0\n' in text
    )


def upstream_samples(text: str, om: bool = False) -> dict[tuple[str, frozenset], float]:
    """Every sample of an exposition by (name, labels), via client_python's parsers."""
    parse = om_parse if om else text_parse
    return {(s.name, frozenset(s.labels.items())): s.value for f in parse(text) for s in f.samples}


BOTH = pytest.mark.parametrize("accept", [TEXT_ACCEPT, OM_ACCEPT], ids=["text", "openmetrics"])

# --- garbage is left out, counted, and ours still served ---------------------------------------


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b'# TYPE g gauge\ng{path="caf\xe9"} 1\n', TEXT_TYPE),  # Latin-1, not UTF-8
        (b"\xff\xfe\x00g\x00 \x001\x00\n", TEXT_TYPE),  # UTF-16
        (b"g\x00bad 1\n", TEXT_TYPE),  # NUL in a metric name
        (b"\x1f\x8b\x08\x00garbage", TEXT_TYPE),  # gzip magic, no Content-Encoding
        (b"# HELP g one\n# HELP g two\ng 1\n", TEXT_TYPE),  # conflicting HELP
        (b"# TYPE g gauge\n# TYPE g counter\ng 1\n", TEXT_TYPE),  # conflicting TYPE
        (b"g 1\n# TYPE g gauge\n", TEXT_TYPE),  # TYPE after the samples
        (b"# TYPE a gauge\na 1\n# EOF\n# TYPE b gauge\nb 2\n", CONTENT_TYPE_OPENMETRICS),
        (b"# TYPE a gauge\na 1\n", CONTENT_TYPE_OPENMETRICS),  # no # EOF: cut short
        (b"a 1\nb 2\n", CONTENT_TYPE_OPENMETRICS),  # a Content-Type that lies (text inside)
        (b'{"metrics": []}', TEXT_TYPE),
    ],
    ids=[
        "latin1",
        "utf16",
        "nul-in-name",
        "gzip-unannounced",
        "two-help",
        "two-type",
        "late-type",
        "eof-in-the-middle",
        "eof-missing",
        "openmetrics-type-text-body",
        "json",
    ],
)
@BOTH
async def test_garbage_is_left_out_counted_and_ours_served(
    promtool: str, body: bytes, content_type: str, accept: str
) -> None:
    async with upstream(answering(body, content_type)) as scraper:
        text = await scrape(scraper, accept)
        assert errors(scraper) == {schema.SCRAPE_INVALID: 1}
    assert_ours_served(text)
    assert 'inferwatch_upstream_scrape_errors_total{reason="invalid"} 1.0\n' in text
    assert_parseable(promtool, text, accept)


@BOTH
async def test_a_text_content_type_over_openmetrics_is_still_read(
    promtool: str, accept: str
) -> None:
    body = (
        b"# HELP job_seconds How long.\n# TYPE job_seconds gauge\n# UNIT job_seconds seconds\n"
        b"job_seconds 2.5\n# EOF\n"
    )
    async with upstream(answering(body, "text/html")) as scraper:
        text = await scrape(scraper, accept)
        assert errors(scraper) == {}
    assert_ours_served(text)
    assert upstream_samples(text, accept == OM_ACCEPT)[("job_seconds", frozenset())] == 2.5
    assert_parseable(promtool, text, accept)


@pytest.mark.parametrize(
    ("response", "reason"),
    [
        (  # the connection drops before the announced length
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 1000\r\n\r\ng 1\n",
            schema.SCRAPE_INVALID,
        ),
        (  # a broken chunked encoding
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"zz\r\ng 1\n\r\n0\r\n\r\n",
            None,  # counted as "unreachable": aiohttp raises a ClientResponseError
        ),
        (b"HTTP/1.1 200 OK\r\nContent-Encoding: br\r\n\r\n\x0b\x01\x80", schema.SCRAPE_INVALID),
        (b"not http at all\r\n\r\n", schema.SCRAPE_UNREACHABLE),
        (b"HTTP/1.1 200 OK\r\nX-Huge: " + b"a" * 100_000 + b"\r\n\r\ng 1\n", None),
    ],
    ids=["short-body", "bad-chunks", "brotli", "not-http", "huge-header"],
)
async def test_broken_http_is_left_out_and_counted(response: bytes, reason: str | None) -> None:
    async with raw_upstream(response) as scraper:
        text = await scrape(scraper)
        counted = errors(scraper)
    assert_ours_served(text)
    assert sum(counted.values()) == 1, counted
    if reason is not None:
        assert counted == {reason: 1}
    assert "\ng 1" not in text


@pytest.mark.parametrize(
    ("body", "encoding"),
    [
        (gzip.compress(b"g 1\n")[:-8] + b"\x00" * 8, "gzip"),  # a wrong CRC
        (b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03garbage", "gzip"),
        (b"not deflate", "deflate"),
    ],
    ids=["bad-crc", "bad-gzip", "bad-deflate"],
)
async def test_corrupt_compression_is_left_out_and_counted(body: bytes, encoding: str) -> None:
    async with upstream(answering(body, **{"Content-Encoding": encoding})) as scraper:
        text = await scrape(scraper)
        assert errors(scraper) == {schema.SCRAPE_INVALID: 1}
    assert_ours_served(text)


# --- hangs and floods ---------------------------------------------------------------------------


async def test_an_endless_chunked_stream_is_cut_at_the_size_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(scraping, "MAX_UPSTREAM_BYTES", 1024 * 1024)
    written = 0

    async def endless(request: web.Request) -> web.StreamResponse:
        nonlocal written
        response = web.StreamResponse(headers={"Content-Type": TEXT_TYPE})
        await response.prepare(request)
        chunk = b"g 1\n" * 16384
        while True:  # ends when the sidecar hangs up
            await response.write(chunk)
            written += len(chunk)

    async with upstream(endless) as scraper:
        text = await scrape(scraper, timeout=3.0)
        assert errors(scraper) == {schema.SCRAPE_TOO_LARGE: 1}  # cut by size, not by the timeout
    assert_ours_served(text)
    assert written > scraping.MAX_UPSTREAM_BYTES
    assert "\ng 1" not in text


async def test_a_trickling_upstream_is_cut_at_the_scrape_timeout() -> None:
    """One byte every 20 ms, forever: the answer still comes within the scrape's budget."""

    async def trickle(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": TEXT_TYPE})
        await response.prepare(request)
        while True:
            await response.write(b"#")
            await asyncio.sleep(0.02)  # the hostile behaviour itself, not a wait in the test

    async with upstream(trickle) as scraper:
        text = await scrape(scraper, timeout=0.6)
        assert errors(scraper) == {schema.SCRAPE_TIMEOUT: 1}  # given up on, within the budget
    assert_ours_served(text)


async def test_a_gzip_bomb_in_a_small_body_is_too_large(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scraping, "MAX_UPSTREAM_BYTES", 1024 * 1024)
    bomb = gzip.compress(b"\n" * (64 * 1024 * 1024), compresslevel=9)  # 64 MiB of newlines
    assert len(bomb) < 100_000
    async with upstream(answering(bomb, **{"Content-Encoding": "gzip"})) as scraper:
        text = await scrape(scraper)
        assert errors(scraper) == {schema.SCRAPE_TOO_LARGE: 1}
    assert_ours_served(text)


@pytest.mark.parametrize(("samples", "served"), [(1000, True), (1001, False)])
async def test_an_upstream_with_too_many_samples_is_left_out(
    monkeypatch: pytest.MonkeyPatch, samples: int, served: bool
) -> None:
    """Reading costs time per sample: past MAX_UPSTREAM_SAMPLES the merge would outlast a
    scrape's timeout (and Prometheus would lose the sidecar's own families with it), so the
    upstream part is left out and counted instead. 32 MiB of tiny samples is ~4 million."""
    monkeypatch.setattr(scraping, "MAX_UPSTREAM_SAMPLES", 1000)
    body = b"".join(b"m%d 1\n" % i for i in range(samples))
    async with upstream(answering(body)) as scraper:
        text = await scrape(scraper)
        assert errors(scraper) == ({} if served else {"too_large": 1})
    assert_ours_served(text)
    assert ("m999 1.0\n" in text) is served


# --- what passes through stays valid -------------------------------------------------------------


@BOTH
async def test_hostile_label_values_survive_escaped(promtool: str, accept: str) -> None:
    body = (
        '# HELP odd A help with \\\\ and \\n and "quotes".\n# TYPE odd gauge\n'
        'odd{q="say \\"hi\\"",b="C:\\\\dir\\\\",n="line1\\nline2",u="\u00e9\u2028\U0001f600",'
        'e="",cr="a\rb",nul="x\x00y",unknown_escape="\\q"} 1\n'
    ).encode()
    async with upstream(answering(body)) as scraper:
        text = await scrape(scraper, accept)
        assert errors(scraper) == {}
    assert_ours_served(text)
    assert_parseable(promtool, text, accept)
    labels = {
        "q": 'say "hi"',
        "b": "C:\\dir\\",
        "n": "line1\nline2",
        "u": "\u00e9\u2028\U0001f600",
        "e": "",
        "cr": "a\rb",
        "nul": "x\x00y",
        "unknown_escape": "\\q",
    }
    samples = upstream_samples(text, accept == OM_ACCEPT)
    assert samples[("odd", frozenset(labels.items()))] == 1.0


@BOTH
async def test_nan_inf_and_timestamps_survive(promtool: str, accept: str) -> None:
    body = (
        b"# TYPE v gauge\n"
        b'v{k="nan"} NaN\nv{k="inf"} +Inf 1700000000123\nv{k="ninf"} -Inf\n'
        b'v{k="tiny"} 1e-300 -1000\nv{k="neg"} -0.0\n'
    )
    async with upstream(answering(body)) as scraper:
        text = await scrape(scraper, accept)
        assert errors(scraper) == {}
    assert_parseable(promtool, text, accept)
    parse = om_parse if accept == OM_ACCEPT else text_parse
    got = {s.labels["k"]: s for f in parse(text) for s in f.samples if s.name == "v"}
    assert got["nan"].value != got["nan"].value
    assert (got["inf"].value, got["ninf"].value, got["tiny"].value) == (
        float("inf"),
        float("-inf"),
        1e-300,
    )
    assert float(got["inf"].timestamp) == pytest.approx(1700000000.123)
    assert float(got["tiny"].timestamp) == -1.0


async def test_exemplars_where_openmetrics_forbids_them_are_dropped() -> None:
    body = (
        b"# TYPE g gauge\n"
        b'g 1 # {trace_id="abc"} 1\n'
        b"# TYPE c counter\n"
        b'c_total 2 # {trace_id="def"} 1 1700000000.5\n'
        b"c_created 1700000000\n"
        b"# EOF\n"
    )
    async with upstream(answering(body, CONTENT_TYPE_OPENMETRICS)) as scraper:
        text = await scrape(scraper, OM_ACCEPT)
        assert errors(scraper) == {}
    families = {f.name: f for f in om_parse(text)}
    (gauge,) = families["g"].samples
    assert gauge.exemplar is None
    total = next(s for s in families["c"].samples if s.name == "c_total")
    assert total.exemplar is not None and total.exemplar.labels == {"trace_id": "def"}


@BOTH
async def test_an_exemplar_with_a_nan_timestamp_is_dropped_and_its_sample_kept(
    promtool: str, accept: str
) -> None:
    body = b'# TYPE c counter\nc_total 1 # {a="b"} 1 NaN\n# EOF\n'
    async with upstream(answering(body, CONTENT_TYPE_OPENMETRICS)) as scraper:
        text = await scrape(scraper, accept)
        assert errors(scraper) == {}
    assert_ours_served(text)
    assert_parseable(promtool, text, accept)
    assert "\nc_total 1.0\n" in text  # no exemplar after it


@BOTH
async def test_upstream_families_colliding_with_each_other_stay_one_family(
    promtool: str, accept: str
) -> None:
    body = (
        b"# TYPE req_total counter\nreq_total 1\n"
        b"# TYPE req gauge\nreq 2\n"  # the counter's OpenMetrics name
        b"# TYPE lat summary\nlat_count 1\nlat_sum 2\n"
        b"# TYPE lat_count gauge\nlat_count 5\n"  # a sample name of the summary
        b"dup 1\ndup 2\n"  # the same series twice
    )
    async with upstream(answering(body)) as scraper:
        text = await scrape(scraper, accept)
    assert_ours_served(text)
    assert_parseable(promtool, text, accept)
    names = [line.split(" ")[2] for line in text.splitlines() if line.startswith("# TYPE ")]
    assert len(names) == len(set(names))
    assert "lat_count 5" not in text


# --- output Prometheus would reject: the upstream part is refused ----------------------------


@BOTH
async def test_a_name_label_never_reaches_the_scrape(promtool: str, accept: str) -> None:
    body = b'# TYPE g gauge\ng{__name__="other"} 1\nfine 1\n'
    async with upstream(answering(body)) as scraper:
        text = await scrape(scraper, accept)
    assert_ours_served(text)
    assert "__name__" not in text
    assert_parseable(promtool, text, accept)


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"g 1 99999999999999999999\n", TEXT_TYPE),
        (b"# TYPE g gauge\ng 1 1e300\n# EOF\n", CONTENT_TYPE_OPENMETRICS),
    ],
    ids=["text-ms-over-int64", "openmetrics-1e300-seconds"],
)
async def test_timestamps_beyond_int64_milliseconds_never_reach_a_text_scrape(
    promtool: str, body: bytes, content_type: str
) -> None:
    async with upstream(answering(body, content_type)) as scraper:
        text = await scrape(scraper, TEXT_ACCEPT)
    assert_ours_served(text)
    assert_parseable(promtool, text, TEXT_ACCEPT)


@pytest.mark.parametrize(
    "body",
    [
        b'# TYPE h histogram\nh_bucket{le="abc"} 1\nh_bucket{le="+Inf"} 1\nh_count 1\nh_sum 1\n',
        b'# TYPE s summary\ns{quantile="median"} 1\ns_count 1\ns_sum 1\n',
    ],
    ids=["le", "quantile"],
)
@BOTH
async def test_non_numeric_le_and_quantile_never_reach_the_scrape(
    promtool: str, body: bytes, accept: str
) -> None:
    async with upstream(answering(body)) as scraper:
        text = await scrape(scraper, accept)
    assert_ours_served(text)
    assert_parseable(promtool, text, accept)


# --- compression ------------------------------------------------------------------------------


async def test_a_truncated_gzip_body_is_not_served_as_data() -> None:
    whole = gzip.compress(b"# TYPE foo gauge\nfoo 123\nbar 1\n", compresslevel=0)
    cut = whole[: whole.index(b"foo 123") + len(b"foo 12")]  # ends mid-value
    async with upstream(answering(cut, **{"Content-Encoding": "gzip"})) as scraper:
        text = await scrape(scraper)
        counted = errors(scraper)
    assert_ours_served(text)
    assert "\nfoo 12.0\n" not in text  # a value the upstream never exposed
    assert counted == {schema.SCRAPE_INVALID: 1}


async def test_a_multi_member_gzip_body_is_read_in_full() -> None:
    body = gzip.compress(b"a 1\n") + gzip.compress(b"b 2\n")
    assert gzip.decompress(body) == b"a 1\nb 2\n"  # what Go's gzip reader (Prometheus) reads
    async with upstream(answering(body, **{"Content-Encoding": "gzip"})) as scraper:
        text = await scrape(scraper)
        counted = errors(scraper)
    assert "\na 1.0\n" in text
    assert "\nb 2.0\n" in text or counted, "b left out without a count"


# --- an upstream series passing for the sidecar's ---------------------------------------------


def sidecar_series(text: str) -> set[tuple[str, frozenset]]:
    """Series claiming to be the sidecar's: source="sidecar", or inferwatch's own families."""
    own = {f.name for f in schema.OWN_FAMILIES}
    return {
        (name, labels)
        for name, labels in upstream_samples(text)
        if ("source", schema.SOURCE_SIDECAR) in labels
        or name in own
        or any(name.startswith(n + "_") for n in own)
    }


async def test_sidecar_series_helper_sees_only_the_sidecars_own_on_a_benign_upstream() -> None:
    """The control for the masquerade test below: an honest upstream adds no sidecar series."""
    body = b"# TYPE honest gauge\nhonest 1\n"
    registry = own_registry()
    async with upstream(answering(body)) as scraper:
        text = await scrape(scraper, registry=registry)
        assert errors(scraper) == {}
    expected = sidecar_series(generate_latest(registry).decode())
    got = sidecar_series(text)
    assert expected <= got
    assert {name for name, _ in got - expected} == {"inferwatch_upstream_scrape_errors_total"}


@pytest.mark.parametrize(
    "body",
    [
        b"# TYPE model_inference_total counter\n"
        b'model_inference_total{model_name="resnet50",model_version="2",source="sidecar",'
        b'status="success"} 1e9\n',
        b"# TYPE model_inference_duration_seconds histogram\n"  # a bucket inside our series
        b'model_inference_duration_seconds_bucket{le="0.0001",model_name="resnet50",'
        b'model_version="1",source="sidecar"} 999\n',
        b'# TYPE inferwatch_upstream_up gauge\ninferwatch_upstream_up{pod="evil"} 0\n',
        b'# TYPE inferwatch_upstream_up gauge\ninferwatch_upstream_up{pod=""} 0\n',
        b"# TYPE inferwatch_upstream_scrape_errors_total counter\n"
        b'inferwatch_upstream_scrape_errors_total{reason="timeout",x="y"} 1e6\n',
    ],
    ids=[
        "source-sidecar",
        "bucket-in-our-series",
        "upstream-up",
        "upstream-up-empty-label",
        "scrape-errors",
    ],
)
async def test_an_upstream_series_never_passes_for_the_sidecars(body: bytes) -> None:
    registry = own_registry()
    async with upstream(answering(body)) as scraper:
        text = await scrape(scraper, registry=registry)
    expected = sidecar_series(generate_latest(registry).decode())
    expected |= {
        (schema.UPSTREAM_SCRAPE_ERRORS.name, frozenset({("reason", r)}))
        for r in schema.SCRAPE_ERROR_REASONS
    }
    got = sidecar_series(text)
    assert got == expected, sorted(map(str, got ^ expected))


async def test_a_running_sidecar_serves_no_forged_sidecar_counter() -> None:
    forged = (
        b"# HELP model_inference_total Forged.\n# TYPE model_inference_total counter\n"
        b'model_inference_total{model_name="victim",model_version="1",source="sidecar",'
        b'status="success"} 123456\n'
    )
    app = web.Application()
    app.router.add_get("/metrics", answering(forged))
    async with (
        serving(app, shutdown_timeout=0.2) as base,
        running_sidecar(base) as sidecar,
        aiohttp.ClientSession() as session,
    ):
        url = f"http://{LOOPBACK}:{sidecar.admin_port}/metrics"
        async with session.get(url, headers={"Accept": TEXT_ACCEPT}) as response:
            assert response.status == 200
            text = await response.text()
        own = generate_latest(sidecar.registry).decode()
    assert "inferwatch_upstream_up" in text  # the sidecar's own families are served
    assert 'model_name="victim"' not in own  # the sidecar never saw such a request...
    assert 'model_name="victim"' not in text  # ...so it must not claim one
