"""What a request is: protocol, route, model, version and batch size, from its path and body.

:meth:`Classifier.classify` runs on every request and looks at the path only (a dict lookup on
the first segment, then a few comparisons); :meth:`Classifier.parse_body` runs only where the
body can say more (``wants_body``) and reads the prefix the proxy peeked. Neither raises:
a request this module cannot make sense of is still forwarded, counted under the default model.

Names and versions are returned as sent (cardinality is bounded by the caller), cut to
:data:`MAX_NAME_CHARS` and made encodable as UTF-8 so they are always safe as label values.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable, Sequence
from typing import Any, Final, Protocol
from urllib.parse import unquote

import msgspec

from inferwatch import schema
from inferwatch.sidecar import request_fields

MAX_PARSE_BYTES: Final = 64 * 1024  # body prefix the proxy peeks to find model and batch size
MAX_NAME_CHARS: Final = 128  # model names and versions longer than this are cut
MAX_BATCH: Final = 1 << 31  # a batch size claimed beyond this is garbage, not a measurement
MAX_SSE_EVENT_BYTES: Final = 256 * 1024  # an SSE event larger than this is skipped, not buffered

PROTOCOL_V2: Final = "v2"
PROTOCOL_V1: Final = "v1"
PROTOCOL_TORCHSERVE: Final = "torchserve"
PROTOCOL_MLFLOW: Final = "mlflow"
PROTOCOL_OPENAI: Final = "openai"
PROTOCOL_SELDON: Final = "seldon"
PROTOCOL_GENERIC: Final = "generic"

ROUTE_OTHER: Final = "/*"  # route of a path no protocol and no override names

_TF_VERBS: Final = frozenset(("predict", "classify", "regress", "explain"))
_SELDON_OTHER: Final = frozenset(("feedback", "metadata", "health"))
_WRITE_METHODS: Final = frozenset(("POST", "PUT", "PATCH"))
_PREFLIGHT_METHODS: Final = frozenset(("HEAD", "OPTIONS"))
# Probe, metadata and tooling paths answered by model servers and web frameworks: never counted.
_HEALTH_PATHS: Final = frozenset(
    (
        "health",
        "healthz",
        "live",
        "livez",
        "liveness",
        "ready",
        "readyz",
        "readiness",
        "ping",
        "metrics",
        "version",
        "docs",
        "redoc",
        "openapi.json",
        "favicon.ico",
    )
)
_JSON_WS: Final = b" \t\r\n"


class RequestInfo:
    """The classification of one request; ``parse_body`` fills in what the body tells.

    A plain class rather than a dataclass: compiled, its ``__init__`` is native code, where a
    dataclass's is generated Python that would run once per request."""

    __slots__ = (
        "batch_size",
        "is_inference",
        "model_name",
        "model_version",
        "protocol",
        "route",
        "stream",
        "wants_body",
    )

    def __init__(
        self,
        protocol: str,
        route: str,
        is_inference: bool,
        model_name: str | None = None,
        model_version: str | None = None,
        batch_size: int | None = None,
        wants_body: bool = False,
        stream: bool = False,
    ) -> None:
        self.protocol = protocol  # "v2", "v1", "torchserve", "mlflow", "openai", "seldon", ...
        self.route = route  # route template, e.g. "/v2/models/{model}/infer" (low cardinality)
        self.is_inference = is_inference  # False for health/metadata: proxied, not counted
        self.model_name = model_name
        self.model_version = model_version
        self.batch_size = batch_size
        self.wants_body = wants_body  # the body can tell model or batch size: parse_body
        self.stream = stream  # the client asked for a streamed answer

    def __repr__(self) -> str:
        fields = (
            f"protocol={self.protocol!r}, route={self.route!r}, "
            f"is_inference={self.is_inference!r}, model_name={self.model_name!r}, "
            f"model_version={self.model_version!r}, batch_size={self.batch_size!r}, "
            f"wants_body={self.wants_body!r}, stream={self.stream!r}"
        )
        return f"RequestInfo({fields})"


def clean_name(value: object) -> str | None:
    """A model name or version safe as a label value: a non-empty str, capped, valid UTF-8."""
    if not isinstance(value, str) or not value:
        return None
    if len(value) > MAX_NAME_CHARS:
        value = value[:MAX_NAME_CHARS]
    if not value.isascii():
        # lone surrogates (JSON "\ud800") cannot be encoded; they would break the exposition
        value = value.encode("utf-8", "replace").decode("utf-8")
    return value


def _path_name(segment: str) -> str | None:
    """A model name or version from a raw path segment, percent-decoded."""
    if "%" in segment:
        segment = unquote(segment[: 4 * MAX_NAME_CHARS], errors="replace")
    return clean_name(segment)


def _count(value: object) -> int | None:
    """A batch size from a JSON number: a non-negative int of sane size, else None."""
    if type(value) is int and 0 <= value <= MAX_BATCH:
        return value
    return None


def _length(value: object) -> int | None:
    return len(value) if isinstance(value, list) else None


def _leading_dim(value: object) -> int | None:
    """Items in a TF Serving / MLflow ``inputs``: a list's length, or a named column's."""
    if isinstance(value, list):
        return len(value)
    if isinstance(value, dict):
        for column in value.values():
            return len(column) if isinstance(column, list) else 1
        return None
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return 1  # a single scalar input
    return None


class HeaderLookup(Protocol):
    """What the body parsers read of a request's headers: a field's first value by name
    (the request's header multidict, a plain mapping, or http1's ``RawHeaderLookup``)."""

    def get(self, name: str, /) -> str | None: ...


def _header(headers: HeaderLookup, name: str) -> str | None:
    """A field's first value; the multidict and ``RawHeaderLookup`` ignore case, a plain
    dict is asked for the lower-cased name too."""
    value = headers.get(name)
    if value is None and isinstance(headers, dict):
        value = headers.get(name.lower())
    return value if isinstance(value, str) else None


def _media_type(headers: HeaderLookup) -> tuple[str, str]:
    """(media type lower-cased, parameters) of Content-Type; ("", "") when absent."""
    content_type = _header(headers, "Content-Type")
    if not content_type:
        return "", ""
    media, _, params = content_type.partition(";")
    return media.strip().lower(), params


def _maybe_json(headers: HeaderLookup) -> bool:
    """False for bodies declared as something else; curl's default form type may be JSON."""
    media = _media_type(headers)[0]
    return not media.startswith(_NOT_JSON)


_NOT_JSON: Final = (
    "text/csv",
    "multipart/",
    "image/",
    "audio/",
    "video/",
    "application/octet-stream",
)


def _body_complete(headers: HeaderLookup, body: bytes, complete: bool | None) -> bool:
    """Whether ``body`` is the whole request body, not a peeked prefix."""
    if complete is not None:
        return complete
    length = _header(headers, "Content-Length")
    if length is not None:
        try:
            return int(length) <= len(body)
        except ValueError:
            pass
    return len(body) < MAX_PARSE_BYTES


def _load_json(body: bytes) -> Any:
    """The JSON document in ``body``, or None when it is not one (cheap reject of non-JSON)."""
    first = body[:1]
    if first != b"{" and first != b"[":
        if not first or first not in _JSON_WS:
            return None
        if body.lstrip(_JSON_WS)[:1] not in (b"{", b"["):
            return None
    try:
        return json.loads(body.decode())  # RFC 8259 8.1: JSON between systems is UTF-8
    except (ValueError, RecursionError):
        return None


_DECODER: Final = json.JSONDecoder()
_WS: Final = re.compile(r"[ \t\n\r]*")


def _skip_ws(text: str, pos: int) -> int:
    match = _WS.match(text, pos)
    return match.end() if match is not None else pos


def _top_level_prefix(body: bytes, wanted: frozenset[str]) -> dict[str, Any]:
    """The wanted top-level members of a JSON object whose text may be cut short.

    Reads members in order until the cut (or a syntax error); values seen complete are exact.
    """
    found: dict[str, Any] = {}
    text = body.decode("utf-8", "replace")
    pos = _skip_ws(text, 0)
    if text[pos : pos + 1] != "{":
        return found
    pos += 1
    try:
        while True:
            pos = _skip_ws(text, pos)
            if text[pos : pos + 1] != '"':
                return found
            key, pos = _DECODER.raw_decode(text, pos)
            pos = _skip_ws(text, pos)
            if text[pos : pos + 1] != ":":
                return found
            pos = _skip_ws(text, pos + 1)
            value, pos = _DECODER.raw_decode(text, pos)
            if key in wanted:
                found[key] = value
                if len(found) == len(wanted):
                    return found
            pos = _skip_ws(text, pos)
            if text[pos : pos + 1] != ",":
                return found
            pos += 1
    except (ValueError, RecursionError):
        return found


# --- batch size per protocol, from a parsed JSON document ---------------------------------------


def _typed_json(decoder: Any, body: bytes) -> Any:
    """``body`` decoded by one of :mod:`request_fields`' decoders, or None where ``json``
    might read it otherwise (or not at all): msgspec skips undeclared strings without
    checking their UTF-8 (checked here first, unless the body is ASCII), and rejects NaN,
    Infinity and numbers beyond a double."""
    try:
        if not body.isascii():
            body.decode()
    except UnicodeDecodeError:
        return None
    try:
        return decoder.decode(body)
    except (msgspec.MsgspecError, RecursionError):
        return None


def _v2_body_batch(body: bytes) -> int | None:
    """Open Inference Protocol: the batch size of a JSON body, decoding its inputs' shapes
    only where :mod:`request_fields` can (the tensor data is skipped), else all of it."""
    request = _typed_json(request_fields.V2_DECODER, body)
    if request is None:
        return _v2_batch(_load_json(body))
    inputs = request.inputs
    return _shape_batch(inputs[0].shape) if inputs else None


def _v2_batch(doc: object) -> int | None:
    """Open Inference Protocol: the leading dimension of the first input's shape."""
    if isinstance(doc, dict):
        inputs = doc.get("inputs")
        if isinstance(inputs, list) and inputs and isinstance(inputs[0], dict):
            return _shape_batch(inputs[0].get("shape"))
    return None


def _shape_batch(shape: object) -> int | None:
    """A tensor's leading dimension, from its JSON shape."""
    return _count(shape[0]) if isinstance(shape, list) and shape else None


def _v1_batch(doc: object) -> int | None:
    """TF Serving / KServe V1: ``instances`` rows, columnar ``inputs``, or ``examples``."""
    if not isinstance(doc, dict):
        return None
    if "instances" in doc:
        return _length(doc["instances"])
    if "inputs" in doc:
        return _leading_dim(doc["inputs"])
    if "examples" in doc:
        return _length(doc["examples"])
    return None


def _mlflow_batch(doc: object) -> int | None:
    """MLflow scoring server: the rows of whichever input format the body uses."""
    if isinstance(doc, list):  # MLflow 1.x pandas-records without a wrapper
        return len(doc)
    if not isinstance(doc, dict):
        return None
    split = doc.get("dataframe_split")
    if isinstance(split, dict):
        return _length(split.get("data"))
    if "dataframe_records" in doc:
        return _length(doc["dataframe_records"])
    if "instances" in doc:
        return _length(doc["instances"])
    if "inputs" in doc:
        return _leading_dim(doc["inputs"])
    if "columns" in doc and "data" in doc:  # MLflow 1.x pandas-split without a wrapper
        return _length(doc["data"])
    return None


def _seldon_batch(doc: object) -> int | None:
    """Seldon Core v1: ``data.tensor.shape[0]``, ``len(data.ndarray)``, else one item."""
    if not isinstance(doc, dict):
        return None
    data = doc.get("data")
    if isinstance(data, dict):
        if "tensor" in data:
            tensor = data["tensor"]
            return _shape_batch(tensor.get("shape")) if isinstance(tensor, dict) else None
        if "ndarray" in data:
            return _length(data["ndarray"])
        if "tftensor" in data:
            return _tftensor_batch(data["tftensor"])
    return 1


def _tftensor_batch(tensor: object) -> int | None:
    """A TensorProto in JSON: ``tensorShape.dim[0].size`` (int64, so often a string)."""
    if isinstance(tensor, dict):
        shape = tensor.get("tensorShape")
        dims = shape.get("dim") if isinstance(shape, dict) else None
        if isinstance(dims, list) and dims and isinstance(dims[0], dict):
            size = dims[0].get("size")
            if isinstance(size, str) and size.isdigit() and len(size) < 12:
                size = int(size)
            return _count(size)
    return None


def _prompt_count(value: object) -> int | None:
    """OpenAI ``prompt``/``input``: a string or one list of token ids is one item."""
    if isinstance(value, str):
        return 1
    if isinstance(value, list):
        if value and type(value[0]) is int:
            return 1
        return len(value)
    return None


def _csv_rows(body: bytes) -> int | None:
    """Data rows of a CSV body with a header row (as MLflow's pandas.read_csv reads it)."""
    if not body.strip():
        return None
    if b'"' not in body:
        rows = sum(1 for line in body.split(b"\n") if line.strip())
    else:  # quoted fields may hold newlines: let the csv module find the records
        text = body.decode("utf-8", "replace")
        rows = sum(1 for row in csv.reader(io.StringIO(text, newline="")) if any(row))
    return max(rows - 1, 0)


# --- the classifier ---------------------------------------------------------------------------

Handler = Callable[[str, list[str]], "RequestInfo | None"]


class Classifier:
    """Maps a request's method and path to a :class:`RequestInfo`.

    ``routes`` are (path regex, model name) overrides for paths that name no model (BentoML,
    FastAPI, MLflow's ``/invocations``, Seldon v1): a regex must match the whole path, query
    excluded, as Prometheus' relabel regexes do; the first match wins. A regex with a group
    named ``model`` (or ``version``) takes the name from the path instead. Paths that name
    no model and match no override get ``default_model``.
    """

    def __init__(
        self, routes: Sequence[tuple[str, str]] = (), default_model: str = "unknown"
    ) -> None:
        compiled: list[tuple[re.Pattern[str], str, str]] = []
        given: Sequence[Any] = routes  # checked below, whatever a caller passed
        for index, route in enumerate(given):
            try:
                pattern, model = route
            except (TypeError, ValueError):
                raise ValueError(
                    f"route #{index + 1} must be (path regex, model name), got {route!r}"
                ) from None
            if not isinstance(pattern, str) or not isinstance(model, str) or not model.strip():
                raise ValueError(
                    f"route #{index + 1} {route!r}: path regex and model name must be"
                    " non-empty strings"
                )
            try:
                regex = re.compile(pattern)
            except re.error as exc:
                raise ValueError(
                    f"route #{index + 1} has a bad path regex {pattern!r}: {exc}"
                ) from None
            compiled.append((regex, clean_name(model.strip()) or model, pattern))
        self._routes = tuple(compiled)
        default = clean_name(default_model)
        if default is None:
            raise ValueError("default_model must be a non-empty string")
        self.default_model = default
        self._handlers: dict[str, Handler] = {
            "v2": self._v2,
            "v1": self._v1,
            "predictions": self._torchserve,
            "explanations": self._torchserve,
            "invocations": self._invocations,
            "api": self._seldon,
            "openai": self._openai_prefixed,
            "seldon": self._seldon_prefixed,
        }

    # -- path ------------------------------------------------------------------------------

    def classify(self, method: str, path: str) -> RequestInfo:
        """Classify a request by its method and raw path (as on the wire; query allowed)."""
        try:
            return self._classify(method, path)
        except Exception:  # never break forwarding over a path we cannot read
            return RequestInfo(PROTOCOL_GENERIC, ROUTE_OTHER, False, self.default_model)

    def _classify(self, method: str, path: str) -> RequestInfo:
        cut = path.find("?")
        if cut >= 0:
            path = path[:cut]
        if len(path) > 1 and path[-1] == "/":
            path = path[:-1]
        parts = path.split("/", 16)
        head = parts[1] if len(parts) > 1 else ""
        handler = self._handlers.get(head)
        if handler is not None:
            info = handler(method, parts)
            if info is not None:
                return info
        elif len(parts) == 2 and head in _HEALTH_PATHS:
            return RequestInfo(PROTOCOL_GENERIC, path, False)
        return self._generic(method, path)

    def _generic(self, method: str, path: str) -> RequestInfo:
        for regex, model, pattern in self._routes:
            match = regex.fullmatch(path)
            if match is not None:
                name, version = self._named_groups(match, model)
                inference = method not in _PREFLIGHT_METHODS
                return RequestInfo(PROTOCOL_GENERIC, pattern, inference, name, version)
        return RequestInfo(
            PROTOCOL_GENERIC, ROUTE_OTHER, method in _WRITE_METHODS, self.default_model
        )

    @staticmethod
    def _named_groups(match: re.Match[str], model: str) -> tuple[str, str | None]:
        groups = match.re.groupindex
        if not groups:
            return model, None
        name = _path_name(match.group("model") or "") if "model" in groups else None
        version = _path_name(match.group("version") or "") if "version" in groups else None
        return name or model, version

    def _override(self, path: str) -> str:
        """The model an override gives a path that names none, else the default model."""
        for regex, model, _ in self._routes:
            match = regex.fullmatch(path)
            if match is not None:
                return self._named_groups(match, model)[0]
        return self.default_model

    def _v2(self, method: str, parts: list[str]) -> RequestInfo | None:
        # /v2/models/<m>[/versions/<v>]/<action>
        if len(parts) < 4 or parts[2] != "models":
            if len(parts) >= 3 and parts[2] == "health":
                return RequestInfo(PROTOCOL_V2, "/v2/health/{kind}", False)
            return RequestInfo(PROTOCOL_V2, "/v2" if len(parts) == 2 else "/v2/*", False)
        model = _path_name(parts[3]) or self.default_model
        rest = parts[4:]
        version = None
        route = "/v2/models/{model}"
        if len(rest) >= 2 and rest[0] == "versions":
            version = _path_name(rest[1])
            rest = rest[2:]
            route = "/v2/models/{model}/versions/{version}"
        if len(rest) == 1 and method == "POST":
            action = rest[0]
            if action == "infer":
                return RequestInfo(PROTOCOL_V2, route + "/infer", True, model, version, None, True)
            if action == "generate" or action == "generate_stream":  # Triton generate extension
                stream = action == "generate_stream"
                return RequestInfo(
                    PROTOCOL_V2, f"{route}/{action}", True, model, version, 1, False, stream
                )
        if not rest:
            return RequestInfo(PROTOCOL_V2, route, False, model, version)
        if len(rest) == 1 and rest[0] in ("ready", "config", "stats"):
            return RequestInfo(PROTOCOL_V2, f"{route}/{rest[0]}", False, model, version)
        return RequestInfo(PROTOCOL_V2, route + "/*", False, model, version)

    def _v1(self, method: str, parts: list[str]) -> RequestInfo | None:
        n = len(parts)
        if n < 3:
            return None
        second = parts[2]
        if second == "models":
            if n == 3:  # OpenAI's model list
                return RequestInfo(PROTOCOL_OPENAI, "/v1/models", False)
            return self._tf_serving(method, parts)
        if method != "POST":
            return None
        if n == 4 and second == "chat" and parts[3] == "completions":
            return RequestInfo(
                PROTOCOL_OPENAI, "/v1/chat/completions", True, self.default_model, None, 1, True
            )
        if n == 3:
            if second == "completions":
                return RequestInfo(
                    PROTOCOL_OPENAI, "/v1/completions", True, self.default_model, wants_body=True
                )
            if second == "embeddings":
                return RequestInfo(
                    PROTOCOL_OPENAI, "/v1/embeddings", True, self.default_model, wants_body=True
                )
            if second == "responses":
                return RequestInfo(
                    PROTOCOL_OPENAI, "/v1/responses", True, self.default_model, None, 1, True
                )
        return None

    def _tf_serving(self, method: str, parts: list[str]) -> RequestInfo:
        # /v1/models/<m>[/versions/<v>|/labels/<l>][:verb|/metadata]
        last = parts[-1]
        name_part, colon, verb = last.rpartition(":")
        n = len(parts)
        if colon and verb in _TF_VERBS:
            if n == 4:
                model = _path_name(name_part) or self.default_model
                return RequestInfo(
                    PROTOCOL_V1,
                    "/v1/models/{model}:" + verb,
                    method == "POST",
                    model,
                    None,
                    None,
                    method == "POST",
                )
            if n == 6 and parts[4] in ("versions", "labels"):
                model = _path_name(parts[3]) or self.default_model
                kind = parts[4]
                return RequestInfo(
                    PROTOCOL_V1,
                    f"/v1/models/{{model}}/{kind}/{{{kind[:-1]}}}:{verb}",
                    method == "POST",
                    model,
                    _path_name(name_part),
                    None,
                    method == "POST",
                )
        model = _path_name(parts[3]) or self.default_model
        version = None
        if n >= 6 and parts[4] in ("versions", "labels"):
            version = _path_name(parts[5])
        route = "/v1/models/{model}" if n == 4 else "/v1/models/{model}/*"
        return RequestInfo(PROTOCOL_V1, route, False, model, version)

    def _torchserve(self, method: str, parts: list[str]) -> RequestInfo | None:
        # /predictions/<m>[/<v>] and /explanations/<m>[/<v>]: one item (server-side batching)
        n = len(parts)
        if n not in (3, 4) or not parts[2]:
            return None
        base = "/" + parts[1] + "/{model}"
        model = _path_name(parts[2]) or self.default_model
        version = _path_name(parts[3]) if n == 4 else None
        route = base + "/{version}" if n == 4 else base
        inference = method == "POST" or method == "PUT"
        return RequestInfo(
            PROTOCOL_TORCHSERVE, route, inference, model, version, 1 if inference else None
        )

    def _invocations(self, method: str, parts: list[str]) -> RequestInfo | None:
        if len(parts) != 2:
            return None
        inference = method == "POST"
        model = self._override("/invocations") if self._routes else self.default_model
        return RequestInfo(PROTOCOL_MLFLOW, "/invocations", inference, model, None, None, inference)

    def _seldon(self, method: str, parts: list[str]) -> RequestInfo | None:
        # /api/v1.0/predictions (and the older /api/v0.1/predictions)
        if len(parts) != 4 or parts[2] not in ("v1.0", "v0.1"):
            return None
        action = parts[3]
        if action == "predictions":
            route = f"/api/{parts[2]}/predictions"
            inference = method == "POST"
            model = self._override(route) if self._routes else self.default_model
            return RequestInfo(PROTOCOL_SELDON, route, inference, model, None, None, inference)
        route = f"/api/{parts[2]}/{action if action in _SELDON_OTHER else '*'}"
        return RequestInfo(PROTOCOL_SELDON, route, False)

    def _seldon_prefixed(self, method: str, parts: list[str]) -> RequestInfo | None:
        # Seldon Core's ingress: /seldon/<namespace>/<deployment>/<the pod's own path>
        if len(parts) < 6:
            return None
        inner = ["", *parts[4:]]
        info = self._handlers.get(inner[1], _no_handler)(method, inner)
        if info is None:
            return None
        info.route = "/seldon/{namespace}/{deployment}" + info.route
        if info.protocol == PROTOCOL_SELDON and info.is_inference:
            info.model_name = _path_name(parts[3]) or info.model_name
        return info

    def _openai_prefixed(self, method: str, parts: list[str]) -> RequestInfo | None:
        # KServe's OpenAI-compatible endpoints: /openai/v1/...
        if len(parts) < 4 or parts[2] != "v1":
            return None
        info = self._v1(method, parts[1:])
        if info is None or info.protocol != PROTOCOL_OPENAI:
            return None
        info.route = "/openai" + info.route
        return info

    # -- body ------------------------------------------------------------------------------

    def parse_body(
        self,
        info: RequestInfo,
        headers: HeaderLookup,
        body: bytes,
        complete: bool | None = None,
    ) -> None:
        """Fill model, version, batch size and stream from the (peeked) request body.

        ``complete`` says whether ``body`` is the whole body; by default it is when
        Content-Length says so, or, with no Content-Length, when it is shorter than
        :data:`MAX_PARSE_BYTES`. Only a complete JSON document gives a batch size (or, for
        Triton's binary extension, a complete JSON header). Cost is linear in ``len(body)``.
        """
        if not info.wants_body or not body:
            return
        try:
            parser = _BODY_PARSERS.get(info.protocol)
            if parser is not None:
                parser(info, headers, body, _body_complete(headers, body, complete))
        except Exception:  # a body we cannot read is still forwarded, untouched
            return


def _no_handler(method: str, parts: list[str]) -> RequestInfo | None:
    return None


def _parse_v2(info: RequestInfo, headers: HeaderLookup, body: bytes, complete: bool) -> None:
    header_length = _header(headers, "Inference-Header-Content-Length")
    if header_length is None:
        content_type = _header(headers, "Content-Type")
        if content_type and "json-header-size=" in content_type:  # SageMaker's variant
            header_length = content_type.split("json-header-size=", 1)[1].split(";", 1)[0].strip()
    if header_length is not None:
        try:
            length = int(header_length)
        except ValueError:
            return
        if length < 0 or length > len(body):
            return  # the JSON header is longer than what was peeked
        info.batch_size = _v2_body_batch(body[:length])
        return
    if complete:
        info.batch_size = _v2_body_batch(body)


def _parse_v1(info: RequestInfo, headers: HeaderLookup, body: bytes, complete: bool) -> None:
    if complete and _maybe_json(headers):
        info.batch_size = _v1_batch(_load_json(body))


def _parse_mlflow(info: RequestInfo, headers: HeaderLookup, body: bytes, complete: bool) -> None:
    if not complete:
        return
    media = _media_type(headers)[0]
    if media == "text/csv":
        info.batch_size = _csv_rows(body)
    elif _maybe_json(headers):
        info.batch_size = _mlflow_batch(_load_json(body))


def _parse_seldon(info: RequestInfo, headers: HeaderLookup, body: bytes, complete: bool) -> None:
    if complete and _maybe_json(headers):
        info.batch_size = _seldon_batch(_load_json(body))


_OPENAI_KEYS: Final = frozenset(("model", "stream", "prompt", "input"))


def _openai_fields(body: bytes, complete: bool) -> Any:
    """The members of an OpenAI request the classifier reads: decoded alone (the messages
    and the rest skipped) where :mod:`request_fields` can, else from all of the JSON; those
    seen before the cut of a peeked prefix."""
    if not complete:
        return _top_level_prefix(body, _OPENAI_KEYS)
    request = _typed_json(request_fields.OPENAI_DECODER, body)
    if request is None:
        return _load_json(body)
    return {
        "model": request.model,
        "stream": request.stream,
        "prompt": request.prompt,
        "input": request.input,
    }


def _parse_openai(info: RequestInfo, headers: HeaderLookup, body: bytes, complete: bool) -> None:
    if not _maybe_json(headers):
        return
    doc = _openai_fields(body, complete)
    if not isinstance(doc, dict):
        return
    model = clean_name(doc.get("model"))
    if model is not None:
        info.model_name = model
    if doc.get("stream") is True:
        info.stream = True
    route = info.route
    if route.endswith("/v1/completions"):
        info.batch_size = _prompt_count(doc.get("prompt"))
    elif route.endswith("/v1/embeddings"):
        info.batch_size = _prompt_count(doc.get("input"))


BodyParser = Callable[[RequestInfo, HeaderLookup, bytes, bool], None]
_BODY_PARSERS: Final[dict[str, BodyParser]] = {
    PROTOCOL_V2: _parse_v2,
    PROTOCOL_V1: _parse_v1,
    PROTOCOL_MLFLOW: _parse_mlflow,
    PROTOCOL_SELDON: _parse_seldon,
    PROTOCOL_OPENAI: _parse_openai,
}


# --- OpenAI answers: usage and finish reasons -------------------------------------------------


def _usage_pair(usage: object) -> tuple[int, int] | None:
    """(input, output) tokens of an OpenAI ``usage`` object (chat/completions or responses)."""
    if not isinstance(usage, dict):
        return None
    prompt = usage.get("prompt_tokens", usage.get("input_tokens"))
    completion = usage.get("completion_tokens", usage.get("output_tokens", 0))
    if completion is None:
        completion = 0
    prompt, completion = _count(prompt), _count(completion)
    if prompt is None or completion is None:
        return None
    return prompt, completion


def _usage_of(doc: object) -> tuple[int, int] | None:
    if not isinstance(doc, dict):
        return None
    usage = _usage_pair(doc.get("usage"))
    if usage is None:
        response = doc.get("response")  # Responses API: response.completed event
        if isinstance(response, dict):
            usage = _usage_pair(response.get("usage"))
    return usage


def usage_from_json(body: bytes) -> tuple[int, int] | None:
    """(prompt, completion) tokens of a non-streamed OpenAI response, or None."""
    try:
        if b'"usage"' not in body:
            return None
        return _usage_of(_load_json(body))
    except Exception:
        return None


# finish_reason values OpenAI-compatible servers send, as the schema's reasons; any other
# non-empty value counts as "other" (vLLM's "abort", for one).
_FINISH_ALIASES: Final = {
    schema.FINISH_STOP: schema.FINISH_STOP,
    "eos_token": schema.FINISH_STOP,  # TGI
    "stop_sequence": schema.FINISH_STOP,  # TGI
    "end_turn": schema.FINISH_STOP,
    schema.FINISH_LENGTH: schema.FINISH_LENGTH,
    "max_tokens": schema.FINISH_LENGTH,
    schema.FINISH_TOOL_CALLS: schema.FINISH_TOOL_CALLS,
    "function_call": schema.FINISH_TOOL_CALLS,  # the legacy functions API
    "tool_use": schema.FINISH_TOOL_CALLS,
    schema.FINISH_CONTENT_FILTER: schema.FINISH_CONTENT_FILTER,
}
# Responses API: why a response is "incomplete" (incomplete_details.reason)
_INCOMPLETE_REASONS: Final = {
    "max_output_tokens": schema.FINISH_LENGTH,
    "content_filter": schema.FINISH_CONTENT_FILTER,
}
_TOOL_ITEMS: Final = frozenset(
    ("function_call", "custom_tool_call", "mcp_call", "computer_call", "local_shell_call")
)
# Responses API events that end a response, and the status each one means
_RESPONSE_ENDS: Final = {
    "response.completed": "completed",
    "response.incomplete": "incomplete",
    "response.failed": "failed",
    "response.cancelled": "cancelled",
}
# delta members of a chat completion chunk that carry generated output
_DELTA_OUTPUT: Final = (
    "content",
    "tool_calls",
    "reasoning_content",
    "reasoning",
    "refusal",
    "function_call",
    "audio",
)
MAX_CHOICES: Final = 64  # finish reasons kept for at most this many choices of one answer


def finish_reason(value: object) -> str | None:
    """The schema's finish reason for a ``finish_reason`` value; None when there is none."""
    if not isinstance(value, str) or not value:
        return None
    return _FINISH_ALIASES.get(value, schema.FINISH_OTHER)


def _response_finish(response: object, status: object = None) -> str | None:
    """The finish reason of a Responses API response object: completed is ``stop`` (or
    ``tool_calls`` when it ends in a tool call), incomplete says why."""
    if isinstance(response, dict):
        own = response.get("status")
        if isinstance(own, str):
            status = own
    else:
        response = {}
    if status == "completed":
        output = response.get("output")
        if isinstance(output, list):
            for item in output:
                if isinstance(item, dict) and item.get("type") in _TOOL_ITEMS:
                    return schema.FINISH_TOOL_CALLS
        return schema.FINISH_STOP
    if status == "incomplete":
        details = response.get("incomplete_details")
        reason = details.get("reason") if isinstance(details, dict) else None
        return _INCOMPLETE_REASONS.get(reason, schema.FINISH_OTHER)  # type: ignore[arg-type]
    if isinstance(status, str) and status in ("failed", "cancelled"):
        return schema.FINISH_OTHER
    return None  # in_progress, queued, absent: not ended


def _nonempty(value: object) -> bool:
    if isinstance(value, str | list | dict):
        return len(value) > 0
    return False


def _choice_output(choice: dict[str, Any]) -> bool:
    """Whether a choice of a chat or completions chunk carries generated output: text,
    content, a tool call or reasoning; a role-only or empty delta does not."""
    delta = choice.get("delta")
    if isinstance(delta, dict):
        for key in _DELTA_OUTPUT:
            value = delta.get(key)
            if value is not None and _nonempty(value):
                return True
    text = choice.get("text")  # /v1/completions
    return isinstance(text, str) and len(text) > 0


def _choice_finishes(choices: list[Any], into: dict[int, str]) -> bool:
    """Each choice's finish reason into ``into`` (by index, bounded); whether any carried
    generated output."""
    output = False
    for position, choice in enumerate(choices):
        if not isinstance(choice, dict):
            continue
        if not output and _choice_output(choice):
            output = True
        reason = finish_reason(choice.get("finish_reason"))
        if reason is not None:
            index = choice.get("index", position)
            if type(index) is not int:
                index = position
            if index in into or len(into) < MAX_CHOICES:
                into[index] = reason
    return output


def answer_from_json(body: bytes) -> tuple[tuple[int, int] | None, list[str]]:
    """Usage and finish reasons (one per choice; one per response) of a non-streamed OpenAI
    answer (chat, completions, responses, embeddings); (None, []) when it says neither."""
    try:
        if b'"usage"' not in body and b'"finish_reason"' not in body and b'"status"' not in body:
            return None, []
        doc = _load_json(body)
        if not isinstance(doc, dict):
            return None, []
        usage = _usage_of(doc)
        finishes: dict[int, str] = {}
        choices = doc.get("choices")
        if isinstance(choices, list):
            _choice_finishes(choices, finishes)
        elif doc.get("object") == "response":
            reason = _response_finish(doc)
            if reason is not None:
                finishes[0] = reason
        return usage, list(finishes.values())
    except Exception:
        return None, []


class SSEStreamScanner:
    """Reads a streamed (SSE) LLM answer as it passes, chunk by chunk: which events carry
    generated output, the finish reasons, the usage report and ``[DONE]``.

    OpenAI chat completions and completions chunks (``choices[].delta``, ``choices[].text``,
    ``finish_reason``), the Responses API's events (``response.*.delta`` with a non-empty
    delta is output; ``response.completed``/``incomplete``/``failed`` end it) and Triton's
    ``generate_stream`` (``text_output``) are understood.

    Chunks may split anywhere (mid-line, mid-CRLF). Only the current line and the current
    event's data are kept, each bounded by :data:`MAX_SSE_EVENT_BYTES` (a larger event is
    skipped); each event is decoded once, when its blank line arrives. The last usage report
    wins (vLLM's continuous usage stats are cumulative).
    """

    __slots__ = (
        "_at",
        "_data",
        "_data_size",
        "_event",
        "_finishes",
        "_line",
        "_oversized",
        "_skip_lf",
        "done",
        "last_output_at",
        "outputs",
        "usage_",
    )

    def __init__(self) -> None:
        self._line = b""  # the incomplete last line
        self._data: list[bytes] = []  # data lines of the current event
        self._data_size = 0
        self._event = b""  # the current event's "event:" field (Responses API event type)
        self._oversized = False  # the current line or event exceeded the bound: skip it
        self._skip_lf = False  # the previous chunk ended in CR: a leading LF ends nothing
        self._at = 0.0  # when the chunk being fed arrived
        self._finishes: dict[int, str] = {}  # finish reason by choice index
        self.usage_: tuple[int, int] | None = None
        self.done = False  # saw "data: [DONE]"
        self.outputs = 0  # events that carried generated output
        self.last_output_at = 0.0  # arrival of the chunk that completed the last of them

    @property
    def usage(self) -> tuple[int, int] | None:
        return self.usage_

    @property
    def finish_reasons(self) -> list[str]:
        """The schema's finish reason of each choice that ended (the response's, for the
        Responses API)."""
        return list(self._finishes.values())

    def feed(self, chunk: bytes, at: float = 0.0) -> bool:
        """Read the next chunk of the answer, which arrived at ``at``; True when it held the
        answer's first output (so ``at`` is its time to first token)."""
        before = self.outputs
        self._at = at
        try:
            self._feed(chunk)
        except Exception:  # never break the stream being forwarded
            self._line = b""
            self._data = []
            self._data_size = 0
            self._event = b""
        return before == 0 and self.outputs > 0

    def _feed(self, chunk: bytes) -> None:
        if not chunk:
            return
        if self._skip_lf:
            self._skip_lf = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        if self._line:
            chunk = self._line + chunk
            self._line = b""
        if b"\r" in chunk:
            self._skip_lf = chunk[-1:] == b"\r"
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = chunk.split(b"\n")
        tail = lines.pop()
        for line in lines:
            self._line_done(line)
        if len(tail) > MAX_SSE_EVENT_BYTES:
            self._oversized = True
            self._line = b""
        else:
            self._line = tail

    def _line_done(self, line: bytes) -> None:
        if not line:
            self._dispatch()
            return
        if self._oversized:
            return
        if not line.startswith(b"data:"):
            if line.startswith(b"event:") and len(line) <= 128:
                self._event = line[6:].strip()
            return  # comments, id:, retry: carry nothing
        value = line[5:]
        if value[:1] == b" ":
            value = value[1:]
        self._data_size += len(value)
        if self._data_size > MAX_SSE_EVENT_BYTES:
            self._oversized = True
            self._data = []
            self._data_size = 0
            return
        self._data.append(value)

    def _dispatch(self) -> None:
        data = self._data
        oversized = self._oversized
        event = self._event
        self._data = []
        self._data_size = 0
        self._oversized = False
        self._event = b""
        if oversized or not data:
            return
        payload = data[0] if len(data) == 1 else b"\n".join(data)
        if payload == b"[DONE]":
            self.done = True
            return
        doc = _load_json(payload)
        if isinstance(doc, dict):
            self._read(doc, event)

    def _read(self, doc: dict[str, Any], event: bytes) -> None:
        output = False
        choices = doc.get("choices")
        if isinstance(choices, list):
            output = _choice_finishes(choices, self._finishes)
        else:
            kind = doc.get("type")
            if not isinstance(kind, str):
                kind = event.decode("ascii", "replace")
            if kind.startswith("response."):
                if kind.endswith(".delta"):
                    output = _nonempty(doc.get("delta"))
                else:
                    status = _RESPONSE_ENDS.get(kind)
                    if status is not None:
                        reason = _response_finish(doc.get("response"), status)
                        if reason is not None:
                            self._finishes[0] = reason
            elif "text_output" in doc:  # Triton's generate_stream
                output = _nonempty(doc["text_output"])
        usage = _usage_of(doc)
        if usage is not None:
            self.usage_ = usage
        if output:
            self.outputs += 1
            self.last_output_at = self._at


SSEUsageScanner = SSEStreamScanner  # the name it had when it read usage only
