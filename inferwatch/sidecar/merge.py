"""One scrape for the pod: the sidecar's own families plus the upstream model server's.

As KServe's qpext does, so a pod needs one scrape port, but without its flaws: the upstream's
families keep their type, HELP, unit and timestamps (and exemplars, OpenMetrics to
OpenMetrics); untyped stays untyped; OpenMetrics or text is answered as the scraper asks,
whatever the upstream spoke; the scrape timeout is honoured, less a margin to answer in. The
upstream's exposition is parsed in full (TorchServe's trailing commas and vLLM's colons
included) and rendered again, so a broken upstream can never corrupt the sidecar's output: if
it is down, slow, too large, not 200 or not an exposition, its part is left out and
``inferwatch_upstream_scrape_errors_total{reason}`` counts why.

Families both sides expose (an application instrumented with inferwatch behind the sidecar:
``model_inference_total{source="app"}`` next to ``{source="sidecar"}``) are merged into one
family, ours first. A series both expose, or an upstream family whose name or samples collide
with one of ours of another type, is left out in favour of ours (logged once per name).

Text format counters without ``_total`` (Triton's ``nv_inference_request_success``) cannot be
OpenMetrics counters without renaming their series, so they are answered as ``unknown`` to an
OpenMetrics scraper: series names are never changed.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field

import aiohttp
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.openmetrics import exposition as openmetrics
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from inferwatch import schema

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
CONTENT_TYPE_OPENMETRICS = openmetrics.CONTENT_TYPE_LATEST
CONTENT_TYPE_TEXT = CONTENT_TYPE_PLAIN_0_0_4

_ERRORS_NAME = schema.UPSTREAM_SCRAPE_ERRORS.name.removesuffix("_total")

# Sample name suffixes each OpenMetrics type may use ("" is the family name itself).
_SUFFIXES: dict[str, tuple[str, ...]] = {
    "counter": ("_total", "_created", ""),  # "": a text format counter without _total
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "gaugehistogram": ("_bucket", "_gcount", "_gsum"),
    "summary": ("", "_count", "_sum", "_created"),
    "info": ("_info",),
    "stateset": ("",),
    "unknown": ("",),
}
_TEXT_TYPES = {
    "counter": "counter",
    "gauge": "gauge",
    "histogram": "histogram",
    "summary": "summary",
    "untyped": "unknown",
}
# OpenMetrics samples the text format has no place for: separate gauges, as client_python does.
_TEXT_SEPARATE = {
    "counter": ("_created",),
    "histogram": ("_created",),
    "summary": ("_created",),
    "gaugehistogram": ("_gcount", "_gsum"),
}
_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL = re.compile(r'[ \t]*([a-zA-Z_][a-zA-Z0-9_]*)[ \t]*=[ \t]*"((?:[^"\\\n]|\\.)*)"[ \t]*')
_UNESCAPE = re.compile(r"\\(.)")
_UNITS = re.compile(r"[a-zA-Z0-9_:]*")

Labels = tuple[tuple[str, str], ...]


class InvalidExposition(ValueError):
    """The upstream's answer is not a valid text or OpenMetrics exposition."""


class _ScrapeError(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


@dataclass(slots=True)
class Exemplar:
    labels: Labels
    value: float
    timestamp: float | None


@dataclass(slots=True)
class Sample:
    name: str
    labels: Labels
    value: float
    timestamp: float | None = None  # seconds
    exemplar: Exemplar | None = None


@dataclass(slots=True)
class Family:
    """A metric family in OpenMetrics terms: a counter ``x`` has samples ``x_total``."""

    name: str
    type: str
    help: str | None = None
    unit: str = ""
    samples: list[Sample] = field(default_factory=list)

    @property
    def legacy_counter(self) -> bool:
        """A text format counter whose samples carry no ``_total`` (Triton's)."""
        return self.type == "counter" and any(s.name == self.name for s in self.samples)

    def sample_names(self) -> set[str]:
        return {self.name + suffix for suffix in _SUFFIXES[self.type]}


# --- parsing ----------------------------------------------------------------------------------


def _float(token: str) -> float:
    if "_" in token:  # Python's float() accepts 1_000; Prometheus does not
        raise InvalidExposition(f"bad number {token!r}")
    try:
        return float(token)
    except ValueError:
        raise InvalidExposition(f"bad number {token!r}") from None


def _unescape(value: str, quotes: bool = True) -> str:
    if "\\" not in value:
        return value

    def one(match: re.Match[str]) -> str:
        char = match.group(1)
        if char == "n":
            return "\n"
        if char == "\\" or (quotes and char == '"'):
            return char
        return match.group(0)

    return _UNESCAPE.sub(one, value)


def _labels(line: str, pos: int) -> tuple[Labels, int]:
    """The label set starting after ``{`` at ``pos``; trailing commas allowed (TorchServe)."""
    labels: list[tuple[str, str]] = []
    seen: set[str] = set()
    while True:
        while line[pos : pos + 1] in (" ", "\t"):
            pos += 1
        if line[pos : pos + 1] == "}":
            return tuple(labels), pos + 1
        match = _LABEL.match(line, pos)
        if match is None:
            raise InvalidExposition(f"bad label set in {line[:200]!r}")
        name = match.group(1)
        if name in seen:
            raise InvalidExposition(f"duplicate label {name!r} in {line[:200]!r}")
        if name == "__name__":  # Prometheus refuses the whole scrape over it
            raise InvalidExposition(f"a __name__ label in {line[:200]!r}")
        seen.add(name)
        labels.append((name, _unescape(match.group(2))))
        pos = match.end()
        char = line[pos : pos + 1]
        if char == ",":
            pos += 1
        elif char != "}":
            raise InvalidExposition(f"bad label set in {line[:200]!r}")


def _sample(line: str, openmetrics_format: bool) -> Sample:
    match = _NAME.match(line)
    if match is None:
        raise InvalidExposition(f"bad sample line {line[:200]!r}")
    name, pos = match.group(0), match.end()
    while line[pos : pos + 1] in (" ", "\t"):
        pos += 1
    labels: Labels = ()
    if line[pos : pos + 1] == "{":
        labels, pos = _labels(line, pos + 1)
    elif pos == match.end():
        raise InvalidExposition(f"bad sample line {line[:200]!r}")
    rest = line[pos:]
    exemplar = None
    if openmetrics_format:
        cut = rest.find(" # ")
        if cut >= 0:
            exemplar = _exemplar(rest[cut + 3 :], line)
            rest = rest[:cut]
    tokens = rest.split()
    if not tokens or len(tokens) > 2:
        raise InvalidExposition(f"bad sample line {line[:200]!r}")
    value = _float(tokens[0])
    timestamp = None
    if len(tokens) == 2:
        if openmetrics_format:
            timestamp = _float(tokens[1])
        else:  # milliseconds, an integer
            try:
                timestamp = int(tokens[1]) / 1000
            except ValueError:
                raise InvalidExposition(f"bad timestamp in {line[:200]!r}") from None
    if timestamp is not None and not _valid_timestamp(timestamp):
        raise InvalidExposition(f"bad timestamp in {line[:200]!r}")
    return Sample(name, labels, value, timestamp, exemplar)


def _valid_timestamp(seconds: float) -> bool:
    """Finite and within int64 milliseconds: Prometheus fails the whole scrape otherwise."""
    return math.isfinite(seconds) and abs(seconds) * 1000 < 2**63


def _exemplar(text: str, line: str) -> Exemplar | None:
    text = text.strip()
    if not text.startswith("{"):
        raise InvalidExposition(f"bad exemplar in {line[:200]!r}")
    labels, pos = _labels(text, 1)
    tokens = text[pos:].split()
    if not tokens or len(tokens) > 2:
        raise InvalidExposition(f"bad exemplar in {line[:200]!r}")
    timestamp = _float(tokens[1]) if len(tokens) == 2 else None
    if timestamp is not None and not _valid_timestamp(timestamp):
        return None  # the sample stands without it
    return Exemplar(labels, _float(tokens[0]), timestamp)


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


class TooManySamples(InvalidExposition):
    """More samples than the sidecar reads from an upstream within a scrape."""


class _Parser:
    """Groups sample lines into families by name, as Prometheus' parsers do."""

    def __init__(self, openmetrics_format: bool) -> None:
        self.openmetrics = openmetrics_format
        self.families: dict[str, Family] = {}
        self.typed: set[str] = set()
        self.count = 0  # samples so far

    def family(self, name: str) -> Family:
        if _NAME.fullmatch(name) is None:
            raise InvalidExposition(f"bad metric name {name!r}")
        family = self.families.get(name)
        if family is None:
            family = self.families[name] = Family(name, "unknown")
        return family

    def metadata(self, line: str) -> None:
        parts = line.split(None, 3)
        keywords = ("HELP", "TYPE", "UNIT") if self.openmetrics else ("HELP", "TYPE")
        if len(parts) < 3 or parts[0] != "#" or parts[1] not in keywords:
            if self.openmetrics and line != "#" and not line.startswith("# "):
                raise InvalidExposition(f"bad comment {line[:200]!r}")
            return  # a plain comment
        keyword, name = parts[1], parts[2]
        family = self.family(name)
        value = parts[3] if len(parts) == 4 else ""
        if keyword == "HELP":
            if family.help is not None:
                raise InvalidExposition(f"second HELP for {name}")
            family.help = _unescape(value, quotes=self.openmetrics)
        elif keyword == "TYPE":
            kind = value.strip()
            if not self.openmetrics:
                kind = _TEXT_TYPES.get(kind, "")
            if kind not in _SUFFIXES or name in self.typed or family.samples:
                raise InvalidExposition(f"bad or late TYPE for {name}: {value!r}")
            family.type = kind
            self.typed.add(name)
        else:  # UNIT, OpenMetrics only
            unit = value.strip()
            if _UNITS.fullmatch(unit) is None or (unit and not name.endswith("_" + unit)):
                raise InvalidExposition(f"bad UNIT for {name}: {unit!r}")
            family.unit = unit

    def sample(self, line: str) -> None:
        sample = _sample(line, self.openmetrics)
        name = sample.name
        family = self.families.get(name)
        if family is None or "" not in _SUFFIXES[family.type]:
            for suffix in ("_total", "_bucket", "_count", "_sum", "_created", "_gcount", "_gsum"):
                if name.endswith(suffix):
                    owner = self.families.get(name[: -len(suffix)])
                    if owner is not None and suffix in _SUFFIXES[owner.type]:
                        family = owner
                        break
            if name.endswith("_info"):
                owner = self.families.get(name[:-5])
                if owner is not None and owner.type == "info":
                    family = owner
        if family is None:
            family = self.family(name)
        if family.type in ("histogram", "gaugehistogram", "summary"):
            bound = "quantile" if family.type == "summary" else "le"
            for label, value in sample.labels:
                if label == bound and not _is_float(value):
                    raise InvalidExposition(f"{label}={value!r} is not a number in {line[:200]!r}")
        self.count += 1
        if self.count > MAX_UPSTREAM_SAMPLES:
            raise TooManySamples(f"more than {MAX_UPSTREAM_SAMPLES} samples")
        family.samples.append(sample)


def parse_exposition(text: str, openmetrics_format: bool) -> list[Family]:
    """Families of a text (0.0.4) or OpenMetrics exposition; raises InvalidExposition."""
    parser = _Parser(openmetrics_format)
    eof = False
    for raw in text.split("\n"):
        line = raw[:-1] if raw.endswith("\r") else raw
        if not openmetrics_format:
            line = line.lstrip(" \t")
        if eof:
            if line:
                raise InvalidExposition("content after # EOF")
            continue
        if not line.strip():
            continue
        if line[0] == "#":
            if openmetrics_format and line == "# EOF":
                eof = True
            else:
                parser.metadata(line)
        else:
            parser.sample(line)
    if openmetrics_format and not eof:
        raise InvalidExposition("OpenMetrics exposition without # EOF (cut short?)")
    return _base_names(parser.families.values(), openmetrics_format)


def _base_names(families: Iterable[Family], openmetrics_format: bool) -> list[Family]:
    """Text format counters are named ``x_total``; in OpenMetrics terms the family is ``x``."""
    out: dict[str, Family] = {}
    for family in families:
        if (
            not openmetrics_format
            and family.type == "counter"
            and family.name.endswith("_total")
            and all(s.name == family.name for s in family.samples)
        ):
            family.name = family.name[:-6]
        if family.name in out:
            logger.warning("upstream exposes %s twice; the second is left out", family.name)
            continue
        out[family.name] = family
    if not openmetrics_format:
        _fold_created(out)
    return list(out.values())


def _series_labels(labels: Labels) -> frozenset[tuple[str, str]]:
    """A sample's labels less ``le``/``quantile``: which series of a family it belongs to."""
    return frozenset(kv for kv in labels if kv[0] not in ("le", "quantile"))


def _fold_created(families: dict[str, Family]) -> None:
    """Text format ``x_created`` gauges back into their family ``x``, as OpenMetrics has them.

    client_python writes the ``_created`` series of a counter, histogram or summary as a
    separate gauge in the text format; left apart, it would clash with the family's own
    ``x_created`` in OpenMetrics.
    """
    for name in [n for n in families if n.endswith("_created")]:
        created = families[name]
        owner = families.get(name[: -len("_created")])
        if (
            created.type != "gauge"
            or owner is None
            or "_created" not in _SUFFIXES[owner.type]
            or any(s.name != name for s in created.samples)
        ):
            continue
        samples = list(owner.samples)
        for sample in created.samples:
            labels = _series_labels(sample.labels)
            at = len(samples)
            for i in range(len(samples) - 1, -1, -1):  # after its series' last sample
                if _series_labels(samples[i].labels) == labels:
                    at = i + 1
                    break
            samples.insert(at, sample)
        owner.samples = samples
        del families[name]


def families_of(collector: Collector) -> list[Family]:
    """The families a prometheus_client collector exposes, in our model."""
    out = []
    for metric in collector.collect():
        samples = []
        for s in metric.samples:
            exemplar = None
            if s.exemplar is not None:
                ts = s.exemplar.timestamp
                exemplar = Exemplar(
                    tuple(sorted(s.exemplar.labels.items())),
                    float(s.exemplar.value),
                    None if ts is None else float(ts),
                )
            ts = s.timestamp
            samples.append(
                Sample(
                    s.name,
                    tuple(sorted(s.labels.items())),
                    float(s.value),
                    None if ts is None else float(ts),
                    exemplar,
                )
            )
        out.append(Family(metric.name, metric.type, metric.documentation, metric.unit, samples))
    return out


# --- merging ----------------------------------------------------------------------------------


_OWN_NAMES = frozenset(
    name
    for family in schema.OWN_FAMILIES
    for name in (family.name.removesuffix("_total"), family.name.removesuffix("_info"))
)
_SIDECAR_LABEL = ("source", schema.SOURCE_SIDECAR)


def merge_families(ours: list[Family], theirs: list[Family]) -> tuple[list[Family], list[str]]:
    """Ours followed by theirs, one family per name; returns (families, names left out)."""
    by_name = {f.name: f for f in ours}
    claimed: set[str] = set()
    for family in ours:
        claimed |= family.sample_names()
        claimed.add(family.name)
    merged = list(ours)
    left_out: list[str] = []
    for family in theirs:
        if family.name in _OWN_NAMES:  # the sidecar's own state: nobody else reports it
            left_out.append(family.name)
            continue
        # A series labelled as the sidecar's would pass for it on every dashboard and alert.
        family.samples = [s for s in family.samples if _SIDECAR_LABEL not in s.labels]
        mine = by_name.get(family.name)
        if mine is not None and mine.type == family.type and not family.legacy_counter:
            seen = {(s.name, frozenset(s.labels)) for s in mine.samples}
            mine.samples.extend(
                s for s in family.samples if (s.name, frozenset(s.labels)) not in seen
            )
            continue
        names = {s.name for s in family.samples}
        names.add(family.name)
        if mine is not None or not names.isdisjoint(claimed):
            left_out.append(family.name)
            continue
        merged.append(family)
        claimed |= names
    return merged, left_out


# --- rendering --------------------------------------------------------------------------------


def _escape_value(value: str) -> str:
    if "\\" in value or '"' in value or "\n" in value:
        value = value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
    return value


def _label_text(labels: Labels) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape_value(v)}"' for k, v in labels) + "}"


def _text_sample(sample: Sample) -> str:
    line = sample.name + _label_text(sample.labels) + " " + floatToGoString(sample.value)
    if sample.timestamp is not None:
        line += f" {round(sample.timestamp * 1000):d}"
    return line + "\n"


_TEXT_TYPE_OF = {"unknown": "untyped", "stateset": "gauge", "gaugehistogram": "histogram"}


def _text_header(out: list[str], name: str, kind: str, help_text: str | None) -> None:
    if help_text is not None:
        out.append(f"# HELP {name} {help_text}\n")
    out.append(f"# TYPE {name} {kind}\n")


def render_text(families: Iterable[Family]) -> bytes:
    """The Prometheus text format (0.0.4), the way client_python writes it."""
    out: list[str] = []
    for family in families:
        kind, name = family.type, family.name
        if kind == "counter":
            text_name = name if family.legacy_counter else name + "_total"
        elif kind == "info":
            text_name, kind = name + "_info", "gauge"
        else:
            text_name = name
        help_text = None
        if family.help is not None:
            help_text = family.help.replace("\\", r"\\").replace("\n", r"\n")
        _text_header(out, text_name, _TEXT_TYPE_OF.get(kind, kind), help_text)
        separate = _TEXT_SEPARATE.get(family.type, ())
        apart: dict[str, list[str]] = {}
        for sample in family.samples:
            for suffix in separate:
                if sample.name == name + suffix:
                    apart.setdefault(suffix, []).append(_text_sample(sample))
                    break
            else:
                out.append(_text_sample(sample))
        for suffix, lines in sorted(apart.items()):
            _text_header(out, name + suffix, "gauge", help_text)
            out.extend(lines)
    return "".join(out).encode("utf-8")


def _om_timestamp(seconds: float) -> str:
    return repr(seconds) if seconds != int(seconds) else f"{int(seconds)}"


def _exemplar_allowed(kind: str, family: str, sample: str) -> bool:
    """OpenMetrics admits exemplars on counters' _total and histograms' _bucket only."""
    if kind == "counter":
        return sample == family + "_total"
    return kind in ("histogram", "gaugehistogram") and sample == family + "_bucket"


def render_openmetrics(families: Iterable[Family]) -> bytes:
    """OpenMetrics 1.0 text, ending in ``# EOF``."""
    out: list[str] = []
    for family in families:
        kind = "unknown" if family.legacy_counter else family.type
        name = family.name
        if family.help is not None:
            help_text = family.help.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
            out.append(f"# HELP {name} {help_text}\n")
        out.append(f"# TYPE {name} {kind}\n")
        if family.unit:
            out.append(f"# UNIT {name} {family.unit}\n")
        for s in family.samples:
            line = s.name + _label_text(s.labels) + " " + floatToGoString(s.value)
            if s.timestamp is not None:
                line += " " + _om_timestamp(s.timestamp)
            if s.exemplar is not None and _exemplar_allowed(kind, family.name, s.name):
                ex = s.exemplar
                line += " # " + (_label_text(ex.labels) or "{}") + " " + floatToGoString(ex.value)
                if ex.timestamp is not None:
                    line += " " + _om_timestamp(ex.timestamp)
            out.append(line + "\n")
    out.append("# EOF\n")
    return "".join(out).encode("utf-8")


# --- negotiation, fetching, counting ----------------------------------------------------------


def wants_openmetrics(accept: str | None) -> bool:
    """Whether the scraper's Accept admits OpenMetrics 1.x (as client_python decides)."""
    for item in (accept or "").split(","):
        media, *params = item.split(";")
        if media.strip().lower() != "application/openmetrics-text":
            continue
        values = dict(p.strip().partition("=")[::2] for p in params)
        if values.get("q", "1").strip() in ("0", "0.0", "0.00", "0.000"):
            continue
        version = values.get("version", "").strip()
        if not version or version.startswith("1."):
            return True
    return False


@dataclass
class _UpstreamState:
    errors: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(schema.SCRAPE_ERROR_REASONS, 0)
    )
    last_reason: str | None = None
    warned: set[str] = field(default_factory=set)
    text_only: bool = False  # its OpenMetrics output is not usable (colon names)


_STATES: dict[str, _UpstreamState] = {}


def scrape_errors(upstream_url: str) -> dict[str, int]:
    """Failed scrapes of ``upstream_url`` so far in this process, by reason."""
    return dict(_STATES[upstream_url].errors) if upstream_url in _STATES else {}


def _errors_family(state: _UpstreamState) -> Family:
    samples = [
        Sample(_ERRORS_NAME + "_total", (("reason", reason),), float(count))
        for reason, count in state.errors.items()
    ]
    return Family(_ERRORS_NAME, "counter", schema.UPSTREAM_SCRAPE_ERRORS.help, "", samples)


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


async def _fetch_for(
    session: aiohttp.ClientSession, url: str, timeout: float, om: bool, state: _UpstreamState
) -> tuple[bytes, str]:
    """OpenMetrics (with exemplars) for an OpenMetrics scrape when the upstream writes it
    correctly; text otherwise."""
    if not om or state.text_only:
        return await _fetch(session, url, timeout)
    loop = asyncio.get_running_loop()
    started = loop.time()
    body, content_type = await _fetch(session, url, timeout, UPSTREAM_ACCEPT_OPENMETRICS)
    if _is_openmetrics(content_type) and _COLON_TYPE_LINE.search(body):
        state.text_only = True
        logger.info("upstream %s writes colon names badly in OpenMetrics: asking for text", url)
        left = timeout - (loop.time() - started)
        if left <= 0:
            raise _ScrapeError(schema.SCRAPE_TIMEOUT, f"no answer within {timeout:.2f} s")
        return await _fetch(session, url, left)
    return body, content_type


def _upstream_families(body: bytes, content_type: str) -> list[Family]:
    openmetrics_format = content_type.split(";")[0].strip().lower() == (
        "application/openmetrics-text"
    )
    try:
        text = body.decode("utf-8")
        return parse_exposition(text, openmetrics_format)
    except TooManySamples as exc:
        raise _ScrapeError(schema.SCRAPE_TOO_LARGE, str(exc)) from None
    except (InvalidExposition, UnicodeDecodeError) as exc:
        raise _ScrapeError(schema.SCRAPE_INVALID, str(exc)[:300]) from None
    except Exception as exc:  # whatever the upstream sent, our own metrics are served
        logger.exception("reading the upstream's exposition failed")
        raise _ScrapeError(schema.SCRAPE_INVALID, repr(exc)[:300]) from None


def _render(
    own: Collector, upstream: list[Family] | None, state: _UpstreamState | None, om: bool
) -> tuple[bytes, list[str]]:
    if state is None:  # nothing to merge: exactly what client_python serves
        encoder = openmetrics.generate_latest if om else generate_latest
        return encoder(own), []
    ours = families_of(own)
    if not any(f.name == _ERRORS_NAME for f in ours):
        ours.append(_errors_family(state))
    families, left_out = merge_families(ours, upstream or [])
    return (render_openmetrics(families) if om else render_text(families)), left_out


async def merged_metrics(
    own: Collector,
    session: aiohttp.ClientSession,
    upstream_url: str | None,
    accept: str,
    scrape_timeout: float | None,
) -> tuple[bytes, str]:
    """Our registry's exposition plus the upstream's /metrics: (body, content_type).

    ``accept`` is the scraper's Accept header; ``scrape_timeout`` its budget in seconds
    (Prometheus' X-Prometheus-Scrape-Timeout-Seconds), of which the upstream gets all but a
    margin. Never raises for anything the upstream does.
    """
    om = wants_openmetrics(accept)
    content_type = CONTENT_TYPE_OPENMETRICS if om else CONTENT_TYPE_TEXT
    state = None
    upstream: list[Family] | None = None
    if upstream_url:
        state = _STATES.setdefault(upstream_url, _UpstreamState())
        try:
            body, upstream_type = await _fetch_for(
                session, upstream_url, _fetch_timeout(scrape_timeout), om, state
            )
            upstream = await asyncio.to_thread(_upstream_families, body, upstream_type)
            state.last_reason = None
        except _ScrapeError as exc:
            state.errors[exc.reason] += 1
            log = logger.warning if state.last_reason != exc.reason else logger.debug
            log("upstream metrics %s left out (%s): %s", upstream_url, exc.reason, exc)
            state.last_reason = exc.reason
    try:
        output, left_out = await asyncio.to_thread(_render, own, upstream, state, om)
    except Exception:
        if not upstream or state is None:
            raise
        logger.exception("merging the upstream's metrics failed; serving ours alone")
        state.errors[schema.SCRAPE_INVALID] += 1
        output, left_out = await asyncio.to_thread(_render, own, None, state, om)
    if state is not None:
        for name in left_out:
            if name not in state.warned and len(state.warned) < 1000:
                state.warned.add(name)
                logger.warning("upstream family %s collides with the sidecar's: left out", name)
    return output, content_type
