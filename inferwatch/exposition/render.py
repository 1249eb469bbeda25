"""Writing families as the Prometheus text format (0.0.4) or OpenMetrics 1.0, byte for byte as
prometheus_client writes its own, and choosing between them from a scraper's Accept header.

Text format counters without ``_total`` (Triton's ``nv_inference_request_success``) cannot be
OpenMetrics counters without renaming their series, so they are written as ``unknown`` in
OpenMetrics: series names are never changed.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.openmetrics import exposition as openmetrics
from prometheus_client.utils import floatToGoString

from inferwatch.exposition.families import Family, Labels, Sample

CONTENT_TYPE_OPENMETRICS = openmetrics.CONTENT_TYPE_LATEST
CONTENT_TYPE_TEXT = CONTENT_TYPE_PLAIN_0_0_4

# OpenMetrics samples the text format has no place for: separate gauges, as client_python does.
_TEXT_SEPARATE = {
    "counter": ("_created",),
    "histogram": ("_created",),
    "summary": ("_created",),
    "gaugehistogram": ("_gcount", "_gsum"),
}


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
