"""Request parsing and response building for the protocols the server speaks.

Open Inference Protocol v2 (KServe V2, Triton), KServe V1 / TF Serving ``:predict`` and a
simple JSON API, ``/predict`` and ``/batch_predict``. Parsers turn a decoded JSON body into the
items a runner batches (UTF-8 bytes for text, float32 tensors for images) and raise
:class:`RequestError` with a message that says what is wrong; nothing here touches HTTP.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from inferwatch.server.models import ImageRunner, ModelRunner, TextRunner, encode_text

TEXT_INPUT = "text"
IMAGE_INPUT = "image"
OUTPUT_LABEL = "label"
OUTPUT_SCORE = "score"
OUTPUT_PROBABILITIES = "probabilities"
OUTPUTS = (OUTPUT_LABEL, OUTPUT_SCORE, OUTPUT_PROBABILITIES)
DEFAULT_TOP_K = 3


class RequestError(Exception):
    """A request the server cannot serve; becomes ``{"error": message, "reason": reason}``."""

    def __init__(self, message: str, reason: str = "invalid_request", status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason
        self.status = status


def _check_count(count: int, limit: int) -> None:
    if count > limit:
        raise RequestError(
            f"the request holds {count} items; the limit is {limit} per request "
            "(split it into smaller requests)",
            reason="too_many_items",
            status=413,
        )


def _top_k(parameters: Any, runner: ModelRunner) -> int:
    if parameters is None:
        return min(DEFAULT_TOP_K, len(runner.labels))
    if not isinstance(parameters, dict):
        raise RequestError(f'"parameters" must be an object, got {type(parameters).__name__}')
    value = parameters.get("top_k", min(DEFAULT_TOP_K, len(runner.labels)))
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or not 1 <= value <= len(runner.labels)
    ):
        raise RequestError(
            f'"top_k" must be an integer from 1 to {len(runner.labels)}, got {value!r}'
        )
    return value


def _text_item(value: Any, runner: TextRunner, where: str, max_length: int | None = None) -> bytes:
    if not isinstance(value, str):
        raise RequestError(f"{where} must be a string, got {type(value).__name__}")
    limit = runner.config.max_length
    return encode_text(value, limit if max_length is None else min(max_length, limit))


def _max_length(body: dict[str, Any], where: str) -> int | None:
    """The seed's optional ``max_length``: tokens (UTF-8 bytes) of the text to keep, at most
    the model's own limit; the classification token the model adds does not count."""
    value = body.get("max_length")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise RequestError(f"{where} must be a positive integer, got {value!r}")
    return value


def _image_items(
    value: Any, runner: ImageRunner, shape: Sequence[int], where: str, nested: bool = False
) -> list[Any]:
    """Images from numbers in row-major order, checked against ``shape``: flat or nested as
    the V2 protocol allows, or, with ``nested``, nested exactly as ``shape`` (V1 instances,
    where a channels-last or flattened image would otherwise be reshaped into a wrong one)."""
    try:
        tensor = torch.tensor(value)
    except (TypeError, ValueError, RuntimeError, OverflowError) as exc:
        raise RequestError(f"{where} must hold numbers only, in a regular shape: {exc}") from exc
    if not (tensor.is_floating_point() or tensor.dtype == torch.int64):  # JSON true/false
        raise RequestError(f"{where} must hold numbers, got {str(tensor.dtype).split('.')[-1]}")
    tensor = tensor.to(torch.float32)
    if nested and list(tensor.shape) != list(shape):
        raise RequestError(
            f"{where}: each instance must have shape {list(shape[1:])}, "
            f"got {list(tensor.shape[1:])}"
        )
    expected = math.prod(shape)
    if tensor.numel() != expected:
        raise RequestError(
            f"{where} holds {tensor.numel()} values; shape {list(shape)} needs {expected}"
        )
    if not bool(torch.isfinite(tensor).all()):
        raise RequestError(f"{where} holds values that are not finite numbers (NaN, Infinity)")
    return list(tensor.reshape(list(shape)).unbind(0))


# --- Open Inference Protocol v2 -------------------------------------------------------------


def v2_model_metadata(runner: ModelRunner, versions: Sequence[str] = ()) -> dict[str, Any]:
    """The model's V2 metadata: ``versions`` lists every version served (default: runner's)."""
    if isinstance(runner, TextRunner):
        inputs = [{"name": TEXT_INPUT, "datatype": "BYTES", "shape": [-1]}]
    else:
        assert isinstance(runner, ImageRunner)
        inputs = [{"name": IMAGE_INPUT, "datatype": "FP32", "shape": [-1, *runner.item_shape]}]
    return {
        "name": runner.name,
        "versions": list(versions) or [runner.version],
        "platform": runner.platform,
        "inputs": inputs,
        "outputs": [
            {"name": OUTPUT_LABEL, "datatype": "BYTES", "shape": [-1, -1]},
            {"name": OUTPUT_SCORE, "datatype": "FP32", "shape": [-1, -1]},
            {"name": OUTPUT_PROBABILITIES, "datatype": "FP32", "shape": [-1, len(runner.labels)]},
        ],
        "parameters": {"labels": list(runner.labels)},
    }


class V2Request:
    """A parsed ``/infer`` body: the items, the outputs asked for, top-k and the request id."""

    def __init__(self, items: list[Any], outputs: tuple[str, ...], top_k: int, id_: Any) -> None:
        self.items = items
        self.outputs = outputs
        self.top_k = top_k
        self.id = id_


def _shape(tensor: dict[str, Any], where: str) -> list[int]:
    shape = tensor.get("shape")
    if (
        not isinstance(shape, list)
        or not shape
        or any(isinstance(d, bool) or not isinstance(d, int) or d < 0 for d in shape)
    ):
        raise RequestError(f'{where} "shape" must be a non-empty list of sizes, got {shape!r}')
    return shape


def parse_v2(body: Any, runner: ModelRunner, max_items: int) -> V2Request:
    if not isinstance(body, dict):
        raise RequestError(f"the body must be a JSON object, got {type(body).__name__}")
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise RequestError(
            f'"inputs" must be a list of one tensor object for model {runner.name!r}'
        )
    tensor = inputs[0]
    expected_name = TEXT_INPUT if isinstance(runner, TextRunner) else IMAGE_INPUT
    if tensor.get("name") != expected_name:
        raise RequestError(
            f"model {runner.name!r} has one input named {expected_name!r}, "
            f"got {tensor.get('name')!r}"
        )
    where = f"input {expected_name!r}"
    shape = _shape(tensor, where)
    _check_count(shape[0], max_items)
    data = tensor.get("data")
    if not isinstance(data, list):
        raise RequestError(f'{where} needs "data": a list of values')
    datatype = tensor.get("datatype")
    items: list[Any]
    if isinstance(runner, TextRunner):
        if datatype != "BYTES":
            raise RequestError(f"{where} has datatype BYTES (UTF-8 strings), got {datatype!r}")
        if shape not in ([shape[0]], [shape[0], 1]):
            raise RequestError(f"{where} has shape [N] or [N, 1], got {shape}")
        if len(shape) == 2 and all(isinstance(v, list) and len(v) == 1 for v in data):
            data = [v[0] for v in data]  # nested [[s], [s], ...] for shape [N, 1]
        if len(data) != shape[0]:
            raise RequestError(f"{where} has shape {shape} but {len(data)} strings in data")
        items = [_text_item(value, runner, f"{where} data[{i}]") for i, value in enumerate(data)]
    else:
        assert isinstance(runner, ImageRunner)
        if datatype != "FP32":
            raise RequestError(f"{where} has datatype FP32, got {datatype!r}")
        if shape[1:] != list(runner.item_shape):
            raise RequestError(
                f"{where} has shape [N, {', '.join(map(str, runner.item_shape))}], got {shape}"
            )
        items = _image_items(data, runner, shape, where)
    outputs = OUTPUTS
    requested = body.get("outputs")
    if requested is not None:
        if not isinstance(requested, list) or not all(
            isinstance(o, dict) and isinstance(o.get("name"), str) for o in requested
        ):
            raise RequestError('"outputs" must be a list of objects with a "name"')
        names = tuple(o["name"] for o in requested)
        unknown = [n for n in names if n not in OUTPUTS]
        if unknown:
            raise RequestError(
                f"unknown outputs {unknown}; model {runner.name!r} has {list(OUTPUTS)}"
            )
        outputs = names
    request_id = body.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise RequestError(f'"id" must be a string, got {type(request_id).__name__}')
    return V2Request(items, outputs, _top_k(body.get("parameters"), runner), request_id)


def v2_response(runner: ModelRunner, request: V2Request, rows: list[list[float]]) -> dict[str, Any]:
    k = request.top_k
    count = len(rows)
    tops = [_ranked(row, k) for row in rows]
    tensors: dict[str, dict[str, Any]] = {
        OUTPUT_LABEL: {
            "name": OUTPUT_LABEL,
            "datatype": "BYTES",
            "shape": [count, k],
            "data": [runner.labels[i] for top in tops for i in top],
        },
        OUTPUT_SCORE: {
            "name": OUTPUT_SCORE,
            "datatype": "FP32",
            "shape": [count, k],
            "data": [row[i] for row, top in zip(rows, tops, strict=True) for i in top],
        },
        OUTPUT_PROBABILITIES: {
            "name": OUTPUT_PROBABILITIES,
            "datatype": "FP32",
            "shape": [count, len(runner.labels)],
            "data": [p for row in rows for p in row],
        },
    }
    response: dict[str, Any] = {
        "model_name": runner.name,
        "model_version": runner.version,
        "outputs": [tensors[name] for name in request.outputs],
    }
    if request.id is not None:
        response["id"] = request.id
    return response


# --- KServe V1 / TF Serving, and the simple /predict -----------------------------------------


def _ranked(row: list[float], k: int) -> list[int]:
    return sorted(range(len(row)), key=row.__getitem__, reverse=True)[:k]


def prediction(runner: ModelRunner, row: list[float], top_k: int) -> dict[str, Any]:
    """One item's answer: the best label and its score, the top k, every probability."""
    top = _ranked(row, top_k)
    return {
        "label": runner.labels[top[0]],
        "score": row[top[0]],
        "top_k": [{"label": runner.labels[i], "score": row[i]} for i in top],
        "probabilities": dict(zip(runner.labels, row, strict=True)),
    }


def parse_v1(body: Any, runner: ModelRunner, max_items: int) -> tuple[list[Any], int]:
    """``{"instances": [...]}`` (rows) or ``{"inputs": [...]}`` (columnar), never both."""
    if not isinstance(body, dict):
        raise RequestError(f"the body must be a JSON object, got {type(body).__name__}")
    if "instances" in body and "inputs" in body:
        raise RequestError('give "instances" or "inputs", not both')
    if "instances" not in body and "inputs" not in body:
        raise RequestError('the body needs "instances" (rows) or "inputs" (columns)')
    key = "instances" if "instances" in body else "inputs"
    rows = body[key]
    if not isinstance(rows, list):
        raise RequestError(f'the body needs "{key}": a list with one entry per item')
    _check_count(len(rows), max_items)
    name = TEXT_INPUT if isinstance(runner, TextRunner) else IMAGE_INPUT
    values = []
    for i, row in enumerate(rows):
        if isinstance(row, dict):
            if name not in row:
                raise RequestError(f'{key}[{i}] is an object without the input "{name}"')
            row = row[name]
        values.append(row)
    top_k = _top_k(body.get("parameters"), runner)
    if isinstance(runner, TextRunner):
        return [_text_item(v, runner, f"{key}[{i}]") for i, v in enumerate(values)], top_k
    assert isinstance(runner, ImageRunner)
    if not values:
        return [], top_k
    shape = (len(values), *runner.item_shape)
    return _image_items(values, runner, shape, key, nested=True), top_k


def label_and_score(runner: ModelRunner, row: list[float]) -> dict[str, Any]:
    """One item's answer in the seed's ``/batch_predict`` list: the best label, its score."""
    best = _ranked(row, 1)[0]
    return {"label": runner.labels[best], "score": row[best]}


def parse_predict(body: Any, runner: TextRunner) -> tuple[bytes, int]:
    """The seed's ``{"text": "...", "max_length"?: N}``."""
    if not isinstance(body, dict) or "text" not in body:
        raise RequestError('the body must be a JSON object with a "text" string')
    max_length = _max_length(body, '"max_length"')
    item = _text_item(body["text"], runner, '"text"', max_length)
    return item, _top_k(body.get("parameters"), runner)


def parse_batch_list(body: list[Any], runner: TextRunner, max_items: int) -> list[bytes]:
    """The seed's ``/batch_predict`` body: ``[{"text": "...", "max_length"?: N}, ...]``."""
    _check_count(len(body), max_items)
    items = []
    for i, entry in enumerate(body):
        if not isinstance(entry, dict) or "text" not in entry:
            raise RequestError(f'[{i}] must be a JSON object with a "text" string')
        max_length = _max_length(entry, f"[{i}].max_length")
        items.append(_text_item(entry["text"], runner, f"[{i}].text", max_length))
    return items


def parse_batch_predict(body: Any, runner: TextRunner, max_items: int) -> tuple[list[bytes], int]:
    """The simple API's ``{"texts": ["...", ...]}``."""
    if not isinstance(body, dict) or not isinstance(body.get("texts"), list):
        raise RequestError(
            'the body must be a JSON list of {"text": ...} objects, '
            'or a JSON object with "texts": a list of strings'
        )
    texts = body["texts"]
    _check_count(len(texts), max_items)
    items = [_text_item(t, runner, f"texts[{i}]") for i, t in enumerate(texts)]
    return items, _top_k(body.get("parameters"), runner)
