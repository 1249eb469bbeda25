"""Reading a Prometheus text (0.0.4) or OpenMetrics exposition into families.

Strict where Prometheus would refuse the whole scrape over a line (a ``__name__`` label, a
timestamp beyond int64 milliseconds, a non-numeric ``le`` or ``quantile``), lenient where real
exporters stray and Prometheus reads them anyway (TorchServe's trailing commas in label sets,
vLLM's colon names), so what it accepts can be written out again without breaking a scrape.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable

from inferwatch.exposition.families import SUFFIXES, Exemplar, Family, Labels, Sample

logger = logging.getLogger(__name__)

_TEXT_TYPES = {
    "counter": "counter",
    "gauge": "gauge",
    "histogram": "histogram",
    "summary": "summary",
    "untyped": "unknown",
}
_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL = re.compile(r'[ \t]*([a-zA-Z_][a-zA-Z0-9_]*)[ \t]*=[ \t]*"((?:[^"\\\n]|\\.)*)"[ \t]*')
_UNESCAPE = re.compile(r"\\(.)")
_UNITS = re.compile(r"[a-zA-Z0-9_:]*")


class InvalidExposition(ValueError):
    """The text is not a valid text or OpenMetrics exposition."""


class TooManySamples(InvalidExposition):
    """More samples than the caller would read (reading costs time per sample)."""


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


class _Parser:
    """Groups sample lines into families by name, as Prometheus' parsers do."""

    def __init__(self, openmetrics_format: bool, max_samples: int | None) -> None:
        self.openmetrics = openmetrics_format
        self.max_samples = max_samples
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
            if kind not in SUFFIXES or name in self.typed or family.samples:
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
        if family is None or "" not in SUFFIXES[family.type]:
            for suffix in ("_total", "_bucket", "_count", "_sum", "_created", "_gcount", "_gsum"):
                if name.endswith(suffix):
                    owner = self.families.get(name[: -len(suffix)])
                    if owner is not None and suffix in SUFFIXES[owner.type]:
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
        if self.max_samples is not None and self.count > self.max_samples:
            raise TooManySamples(f"more than {self.max_samples} samples")
        family.samples.append(sample)


def parse_exposition(
    text: str, openmetrics_format: bool, max_samples: int | None = None
) -> list[Family]:
    """Families of a text (0.0.4) or OpenMetrics exposition; raises InvalidExposition, or
    TooManySamples past ``max_samples``."""
    parser = _Parser(openmetrics_format, max_samples)
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
            logger.warning("the exposition has %s twice; the second is left out", family.name)
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
            or "_created" not in SUFFIXES[owner.type]
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
