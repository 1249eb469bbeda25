"""The reference model server against a hostile client.

What the server promises: a malformed request gets a JSON error that says what is wrong
(400; 404 unknown model or version; 405; 413 too large; 503 overloaded, with Retry-After),
never a 500, a crash or a hang; a bad request never fails the requests that share its batch;
and the metrics stay exact.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import math
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import torch
from prometheus_client import CollectorRegistry
from support.model_server import IMAGE_MODEL, TEXT_MODEL, Served, start_server, tiny_config
from support.polling import poll
from support.prometheus import promtool_check_metrics

from inferwatch import schema

MAX_LENGTH = 64  # the tiny text model's
IMAGE_VALUES = 3 * 32 * 32
TEXT_V2 = f"/v2/models/{TEXT_MODEL}/infer"
IMAGE_V2 = f"/v2/models/{IMAGE_MODEL}/infer"
TEXT_V1 = f"/v1/models/{TEXT_MODEL}:predict"
IMAGE_V1 = f"/v1/models/{IMAGE_MODEL}:predict"
MODELS = (TEXT_MODEL, IMAGE_MODEL)


@pytest.fixture
async def served(registry: CollectorRegistry) -> AsyncIterator[Served]:
    s = await start_server(registry)
    yield s
    await s.stop()


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def strict_json(raw: str) -> Any:
    """Parse as RFC 8259 JSON: NaN and Infinity, which Python's json accepts, are errors."""
    return json.loads(raw, parse_constant=_no_constants)


async def hit(
    served: Served,
    method: str,
    path: str,
    *,
    json_body: Any = None,
    data: str | bytes | None = None,
    headers: dict[str, str] | None = None,
    session: aiohttp.ClientSession | None = None,
) -> tuple[int, str, Any, str]:
    """One request: status, content type, headers, raw body text."""
    if json_body is not None:
        data = json.dumps(json_body)
    async with (session or served.session).request(
        method, served.url + path, data=data, headers=headers
    ) as r:
        return r.status, r.content_type, r.headers, await r.text()


async def json_error(served: Served, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
    """A request that must be refused: its status and the parsed ``{"error", "reason"}``."""
    status, content_type, headers, raw = await hit(served, method, path, **kwargs)
    assert status != 500, raw
    assert content_type == "application/json", (status, raw[:200])
    body = strict_json(raw)
    assert set(body) == {"error", "reason"}, body
    assert isinstance(body["error"], str) and body["error"]
    if status == 503:
        assert headers["Retry-After"] == "1"
    return status, body


def v2(name: str, shape: Any, datatype: Any, data: Any, **extra: Any) -> dict[str, Any]:
    return {"inputs": [{"name": name, "shape": shape, "datatype": datatype, "data": data}], **extra}


def image_v2(shape: Any = (1, 3, 32, 32), data: Any = None, datatype: Any = "FP32") -> Any:
    shape = list(shape) if isinstance(shape, tuple) else shape
    values = [0.5] * IMAGE_VALUES if data is None else data
    return v2("image", shape, datatype, values)


def image_v2_raw(first_value: str) -> str:
    """A V2 image body whose first value is written verbatim (NaN, 1e400, ...)."""
    values = ",".join([first_value] + ["0.5"] * (IMAGE_VALUES - 1))
    return (
        '{"inputs": [{"name": "image", "shape": [1, 3, 32, 32], "datatype": "FP32", '
        f'"data": [{values}]}}]}}'
    )


def image(seed: int) -> torch.Tensor:
    return torch.rand((3, 32, 32), generator=torch.Generator().manual_seed(seed))


def labels(model: str) -> dict[str, str]:
    return {"model_name": model, "model_version": "1"}


def totals(served: Served, model: str) -> dict[str, float]:
    """Every counter and gauge of one model that must stay exact."""
    versioned = labels(model)
    counts = {
        "success": served.metric(schema.INFERENCE_TOTAL, status="success", **versioned),
        "error": served.metric(schema.INFERENCE_TOTAL, status="error", **versioned),
        "active": served.metric(schema.ACTIVE_REQUESTS, model_name=model),
        "queued": served.metric(schema.QUEUE_LENGTH, model_name=model),
    }
    for reason in (schema.REASON_EXCEPTION, schema.REASON_CANCELLED, schema.REASON_REJECTED):
        counts[reason] = served.metric(schema.INFERENCE_FAILURES, reason=reason, **versioned)
    return counts


def exactly(**counts: float) -> dict[str, float]:
    base = dict.fromkeys(
        ("success", "error", "active", "queued", "exception", "cancelled", "rejected"), 0.0
    )
    base.update({k: float(v) for k, v in counts.items()})
    return base


def assert_untouched(served: Served) -> None:
    """No item reached a model or a queue, and nothing was counted."""
    for model in MODELS:
        assert served.gates[model].calls == []
        assert totals(served, model) == exactly()


async def scrape(served: Served) -> str:
    async with served.session.get(served.url + "/metrics") as response:
        assert response.status == 200
        return await response.text()


def close(a: list[float], b: list[float]) -> bool:
    return torch.allclose(torch.tensor(a), torch.tensor(b), atol=1e-6, rtol=1e-5)


async def hold_text_batch(served: Served) -> asyncio.Task[Any]:
    """Send one text request and keep its batch inside the model until the gate opens."""
    gate = served.gates[TEXT_MODEL]
    gate.close()
    task = asyncio.create_task(hit(served, "POST", "/predict", json_body={"text": "first"}))
    await poll(gate.entered.is_set)
    return task


# --- malformed bodies: 400 with a message, nothing queued, nothing counted --------------------

DEEP = 600  # nesting the JSON decoder accepts; torch refuses it as a tensor

MALFORMED: list[tuple[str, str, Any, str, str]] = [
    # (path, kind, body, reason, fragment of the message); kind "json" is encoded, "raw" sent as is
    ("/predict", "raw", "null", "invalid_request", 'a JSON object with a "text" string'),
    ("/predict", "raw", '"text"', "invalid_request", 'a JSON object with a "text" string'),
    ("/predict", "raw", "1e400", "invalid_request", 'a JSON object with a "text" string'),
    ("/predict", "raw", '{"text": "a"} x', "invalid_json", "Extra data"),
    ("/predict", "raw", b'{"text": "\xff"}', "invalid_json", "can't decode byte 0xff"),
    ("/predict", "raw", '{"top_k": ' + "9" * 5000 + "}", "invalid_json", "4300 digits"),
    ("/predict", "json", {"text": None}, "invalid_request", "must be a string, got NoneType"),
    ("/predict", "json", {"text": ["a"]}, "invalid_request", "must be a string, got list"),
    ("/predict", "json", {"text": "a", "parameters": []}, "invalid_request", "must be an object"),
    ("/predict", "json", {"text": "a", "parameters": {"top_k": True}}, "invalid_request", "top_k"),
    ("/predict", "json", {"text": "a", "parameters": {"top_k": 2.0}}, "invalid_request", "top_k"),
    ("/predict", "json", {"text": "a", "parameters": {"top_k": 9}}, "invalid_request", "top_k"),
    ("/predict", "json", {"text": "a", "parameters": {"top_k": "3"}}, "invalid_request", "top_k"),
    ("/predict", "raw", '{"text": "a", "parameters": {"top_k": 1e400}}', "invalid_request", "inf"),
    ("/batch_predict", "json", {"texts": None}, "invalid_request", '"texts": a list'),
    ("/batch_predict", "json", {"texts": ["a", 1]}, "invalid_request", "texts[1] must be a string"),
    ("/batch_predict", "json", {"texts": [["a"]]}, "invalid_request", "texts[0] must be a string"),
    (TEXT_V2, "raw", "[]", "invalid_request", "must be a JSON object, got list"),
    (TEXT_V2, "json", {"inputs": {"name": "text"}}, "invalid_request", "list of one tensor"),
    (TEXT_V2, "json", {"inputs": []}, "invalid_request", "list of one tensor"),
    (TEXT_V2, "json", {"inputs": ["text"]}, "invalid_request", "list of one tensor"),
    (
        TEXT_V2,
        "json",
        {"inputs": [v2("text", [1], "BYTES", ["a"])["inputs"][0]] * 2},
        "invalid_request",
        "list of one tensor",
    ),
    (TEXT_V2, "json", v2(None, [1], "BYTES", ["a"]), "invalid_request", "got None"),
    (TEXT_V2, "json", v2("text", None, "BYTES", ["a"]), "invalid_request", "got None"),
    (TEXT_V2, "json", v2("text", 1, "BYTES", ["a"]), "invalid_request", '"shape" must be'),
    (TEXT_V2, "json", v2("text", [], "BYTES", []), "invalid_request", '"shape" must be'),
    (TEXT_V2, "json", v2("text", [-1], "BYTES", ["a"]), "invalid_request", "got [-1]"),
    (TEXT_V2, "json", v2("text", [1.0], "BYTES", ["a"]), "invalid_request", "got [1.0]"),
    (TEXT_V2, "json", v2("text", [True], "BYTES", ["a"]), "invalid_request", "got [True]"),
    (TEXT_V2, "json", v2("text", [[1]], "BYTES", ["a"]), "invalid_request", "got [[1]]"),
    (
        TEXT_V2,
        "raw",
        json.dumps(v2("text", [1], "BYTES", ["a"])).replace("[1]", "[1e400]"),
        "invalid_request",
        "got [inf]",
    ),
    (TEXT_V2, "json", v2("text", [1], "BYTES", "a"), "invalid_request", 'needs "data": a list'),
    (TEXT_V2, "json", v2("text", [1], "BYTES", None), "invalid_request", 'needs "data": a list'),
    (TEXT_V2, "json", v2("text", [1], "BYTES", {"0": "a"}), "invalid_request", '"data": a list'),
    (TEXT_V2, "json", v2("text", [1], None, ["a"]), "invalid_request", "got None"),
    (TEXT_V2, "json", v2("text", [1], "bytes", ["a"]), "invalid_request", "got 'bytes'"),
    (TEXT_V2, "json", v2("text", [1], "STRING", ["a"]), "invalid_request", "got 'STRING'"),
    (TEXT_V2, "json", v2("text", [1, 2], "BYTES", ["a", "b"]), "invalid_request", "[N, 1]"),
    (TEXT_V2, "json", v2("text", [1, 1, 1], "BYTES", ["a"]), "invalid_request", "[N, 1]"),
    (TEXT_V2, "json", v2("text", [0], "BYTES", ["a"]), "invalid_request", "but 1 strings"),
    (TEXT_V2, "json", v2("text", [2], "BYTES", [["a", "b"]]), "invalid_request", "but 1 strings"),
    (TEXT_V2, "json", v2("text", [1], "BYTES", [None]), "invalid_request", "got NoneType"),
    (TEXT_V2, "json", v2("text", [1], "BYTES", [1.5]), "invalid_request", "got float"),
    (TEXT_V2, "json", v2("text", [2, 1], "BYTES", [["a"], "b"]), "invalid_request", "got list"),
    (
        TEXT_V2,
        "json",
        v2("text", [1], "BYTES", ["a"], outputs={"name": "label"}),
        "invalid_request",
        '"outputs" must be a list',
    ),
    (
        TEXT_V2,
        "json",
        v2("text", [1], "BYTES", ["a"], outputs=[{"name": 1}]),
        "invalid_request",
        '"outputs" must be a list',
    ),
    (
        TEXT_V2,
        "json",
        v2("text", [1], "BYTES", ["a"], parameters="top_k=1"),
        "invalid_request",
        '"parameters" must be an object',
    ),
    (IMAGE_V2, "json", image_v2(datatype="BYTES"), "invalid_request", "got 'BYTES'"),
    (IMAGE_V2, "json", image_v2(datatype="FP16"), "invalid_request", "got 'FP16'"),
    (IMAGE_V2, "json", image_v2((1, 1, 32, 32)), "invalid_request", "got [1, 1, 32, 32]"),
    (IMAGE_V2, "json", image_v2((1, 4, 32, 32)), "invalid_request", "got [1, 4, 32, 32]"),
    (IMAGE_V2, "json", image_v2((1, 32, 32, 3)), "invalid_request", "got [1, 32, 32, 3]"),
    (IMAGE_V2, "json", image_v2((1, 3, 64, 64)), "invalid_request", "got [1, 3, 64, 64]"),
    (IMAGE_V2, "json", image_v2((1, 3072)), "invalid_request", "got [1, 3072]"),
    (IMAGE_V2, "json", image_v2((1,)), "invalid_request", "got [1]"),
    (IMAGE_V2, "json", image_v2((2, 3, 32, 32)), "invalid_request", "holds 3072 values"),
    (IMAGE_V2, "json", image_v2(data=[0.5] * 3071), "invalid_request", "holds 3071 values"),
    (IMAGE_V2, "json", image_v2(data=[]), "invalid_request", "holds 0 values"),
    (IMAGE_V2, "json", image_v2(data=["0.5"] * 3072), "invalid_request", "numbers only"),
    (IMAGE_V2, "json", image_v2(data=[None] * 3072), "invalid_request", "numbers only"),
    (IMAGE_V2, "json", image_v2(data=[{}] * 3072), "invalid_request", "numbers only"),
    (IMAGE_V2, "json", image_v2(data=[[0.5], 0.5]), "invalid_request", "numbers only"),
    (IMAGE_V2, "json", image_v2(data=[0.5, [0.5]]), "invalid_request", "numbers only"),
    (IMAGE_V2, "json", image_v2(data=[[0.5] * 2, [0.5]]), "invalid_request", "numbers only"),
    (
        IMAGE_V2,
        "raw",
        json.dumps(image_v2()).replace("0.5", str(10**400), 1),
        "invalid_request",
        "numbers only",
    ),
    (
        IMAGE_V2,
        "raw",
        json.dumps(image_v2(data=[])).replace("[]", "[" * DEEP + "0.5" + "]" * DEEP),
        "invalid_request",
        "numbers only",
    ),
    (TEXT_V1, "json", {"instances": "a"}, "invalid_request", '"instances": a list'),
    (TEXT_V1, "json", {"instances": {"text": "a"}}, "invalid_request", '"instances": a list'),
    (TEXT_V1, "json", {"instances": [None]}, "invalid_request", "got NoneType"),
    (TEXT_V1, "json", {"instances": [{"text": 1}]}, "invalid_request", "got int"),
    (TEXT_V1, "json", {"instances": [{"image": "a"}]}, "invalid_request", "without the input"),
    (TEXT_V1, "json", {"instances": [], "inputs": []}, "invalid_request", "not both"),
    (TEXT_V1, "json", {"inputs": ["a"], "instances": None}, "invalid_request", "not both"),
    (
        IMAGE_V1,
        "json",
        {"instances": [image(1)[:1].tolist()]},
        "invalid_request",
        "shape [3, 32, 32], got [1, 32, 32]",
    ),
    (
        IMAGE_V1,
        "json",
        {"instances": [image(1).tolist(), image(1)[:2].tolist()]},
        "invalid_request",
        "numbers only",
    ),
    (IMAGE_V1, "json", {"instances": ["cat.png"]}, "invalid_request", "numbers only"),
    (IMAGE_V1, "json", {"instances": [{"text": 1}]}, "invalid_request", "without the input"),
]


@pytest.mark.parametrize(
    ("path", "kind", "body", "reason", "fragment"),
    MALFORMED,
    ids=[f"{i}-{p.rsplit('/', 1)[-1]}-{f[:24]}" for i, (p, _, _, _, f) in enumerate(MALFORMED)],
)
async def test_malformed_bodies_get_a_400_that_says_what_is_wrong(
    served: Served, path: str, kind: str, body: Any, reason: str, fragment: str
) -> None:
    if kind == "json":
        status, error = await json_error(served, "POST", path, json_body=body)
    else:
        status, error = await json_error(served, "POST", path, data=body)
    assert (status, error["reason"]) == (400, reason)
    assert fragment in error["error"]
    assert_untouched(served)


async def test_unknown_models_versions_and_paths_get_404(served: Served) -> None:
    cases = [
        ("POST", "/v2/models/resnet/infer", "unknown_model"),
        ("POST", "/v2/models/resnet/versions/1/infer", "unknown_model"),
        ("POST", f"/v2/models/{TEXT_MODEL}/versions/2/infer", "unknown_version"),
        ("POST", f"/v2/models/{TEXT_MODEL}/versions/01/infer", "unknown_version"),
        ("POST", f"/v2/models/{TEXT_MODEL}/versions/1.0/infer", "unknown_version"),
        ("POST", f"/v2/models/{TEXT_MODEL}/versions/%20/infer", "unknown_version"),
        ("POST", f"/v2/models/{TEXT_MODEL.upper()}/infer", "unknown_model"),
        ("POST", f"/v1/models/{TEXT_MODEL}/versions/null:predict", "unknown_version"),
        ("POST", "/v1/models/resnet:predict", "unknown_model"),
        ("GET", f"/v2/models/{IMAGE_MODEL}/versions/true", "unknown_version"),
        ("GET", "/v2/models/%00/ready", "unknown_model"),
        ("POST", f"/v2/models/{TEXT_MODEL}/versions//infer", "not_found"),
        ("POST", f"/v2/models/{TEXT_MODEL}/infer/", "not_found"),
        ("POST", "/v2/models//infer", "not_found"),
        ("POST", "/v3/models/x/infer", "not_found"),
    ]
    for method, path, reason in cases:
        body = v2("text", [1], "BYTES", ["a"])
        status, error = await json_error(served, method, path, json_body=body)
        assert (status, error["reason"]) == (404, reason), path
    assert_untouched(served)


async def test_wrong_methods_get_405(served: Served) -> None:
    for method, path in [
        ("GET", TEXT_V2),
        ("PUT", TEXT_V2),
        ("DELETE", f"/v2/models/{TEXT_MODEL}/versions/1/infer"),
        ("PATCH", "/predict"),
        ("GET", "/batch_predict"),
        ("POST", "/metrics"),
        ("POST", "/v2/health/ready"),
    ]:
        status, error = await json_error(served, method, path)
        assert (status, error["reason"]) == (405, "method_not_allowed")
        assert error["error"] == f"{method} is not allowed on {path}"
    assert_untouched(served)


async def test_too_many_items_is_413_before_anything_is_queued(
    registry: CollectorRegistry,
) -> None:
    served = await start_server(registry, tiny_config(max_request_items=3))
    try:
        for path, body in [
            ("/batch_predict", {"texts": ["t"] * 4}),
            (TEXT_V1, {"instances": ["t"] * 4}),
            (TEXT_V1, {"inputs": ["t"] * 4}),
            (TEXT_V2, v2("text", [4], "BYTES", ["t"] * 4)),
            (TEXT_V2, v2("text", [4, 1], "BYTES", [["t"]] * 4)),
            (TEXT_V2, v2("text", [2**63], "BYTES", ["t"])),  # refused before data is looked at
            (TEXT_V2, v2("text", [10**40], "BYTES", [])),
            (IMAGE_V2, image_v2((4, 3, 32, 32), data=[0.0] * 4 * IMAGE_VALUES)),
            (IMAGE_V1, {"instances": [[]] * 4}),
        ]:
            status, error = await json_error(served, "POST", path, json_body=body)
            assert (status, error["reason"]) == (413, "too_many_items"), (path, error)
            assert "the limit is 3 per request" in error["error"]
        assert_untouched(served)
    finally:
        await served.stop()


async def test_bodies_over_the_byte_limit_are_413_however_they_arrive(
    registry: CollectorRegistry,
) -> None:
    served = await start_server(registry, tiny_config(max_body_bytes=4096))
    try:
        text = json.dumps({"text": "x" * 100_000})

        async def chunks() -> AsyncIterator[bytes]:
            for i in range(0, len(text), 1000):
                yield text[i : i + 1000].encode()

        for data, headers in [
            (text, None),
            (chunks(), None),  # chunked: no Content-Length to refuse up front
            (gzip.compress(text.encode()), {"Content-Encoding": "gzip"}),  # a small zip bomb
        ]:
            async with served.session.post(
                served.url + "/predict", data=data, headers=headers
            ) as r:
                assert r.status == 413
                body = strict_json(await r.text())
            assert body["reason"] == "body_too_large"
            assert "4096" in body["error"]
        # Compressed bodies under the limit once inflated are served.
        small = gzip.compress(b'{"text": "zipped"}')
        status, _, _, raw = await hit(
            served, "POST", "/predict", data=small, headers={"Content-Encoding": "gzip"}
        )
        assert status == 200, raw
        assert served.gates[TEXT_MODEL].calls == [[b"zipped"]]
    finally:
        await served.stop()


# --- odd but valid input --------------------------------------------------------------------


async def test_empty_and_huge_texts_are_served_truncated(served: Served) -> None:
    huge = "é" * 1_000_000  # 2 MB of UTF-8
    for body in [
        json.dumps({"text": ""}),
        json.dumps({"text": huge}),
        json.dumps({"text": "\ud800 lone surrogate"}),  # a lone surrogate, escaped
        json.dumps({"text": "nul \x00 byte"}),
        '{"text": 5, "text": "duplicate keys: the last wins"}',
    ]:
        status, _, _, raw = await hit(served, "POST", "/predict", data=body)
        assert status == 200, raw
        answer = strict_json(raw)
        assert math.isclose(sum(answer["probabilities"].values()), 1.0, rel_tol=1e-5)
    seen = [item for call in served.gates[TEXT_MODEL].calls for item in call]
    assert seen == [
        b"",
        "é".encode() * (MAX_LENGTH // 2),
        b"? lone surrogate",
        b"nul \x00 byte",
        b"duplicate keys: the last wins",
    ]
    assert all(len(item) <= MAX_LENGTH for item in seen)
    # A duplicate key that ends on the wrong type is refused.
    status, error = await json_error(served, "POST", "/predict", data='{"text": "a", "text": 1}')
    assert (status, error["reason"]) == (400, "invalid_request")


async def test_empty_batches_answer_empty_without_touching_a_model(served: Served) -> None:
    for path, body, key in [
        ("/batch_predict", {"texts": []}, "predictions"),
        (TEXT_V1, {"instances": []}, "predictions"),
        (IMAGE_V1, {"inputs": []}, "predictions"),
        (TEXT_V2, v2("text", [0], "BYTES", []), "outputs"),
        (TEXT_V2, v2("text", [0, 1], "BYTES", []), "outputs"),
        (IMAGE_V2, image_v2((0, 3, 32, 32), data=[]), "outputs"),
    ]:
        status, _, _, raw = await hit(served, "POST", path, json_body=body)
        assert status == 200, (path, raw)
        answer = strict_json(raw)
        if key == "predictions":
            assert answer == {"predictions": []}
        else:
            assert [o["shape"][0] for o in answer["outputs"]] == [0, 0, 0]
            assert all(o["data"] == [] for o in answer["outputs"])
    assert_untouched(served)


# --- batches: a bad or departed client never hurts its batch-mates --------------------------


async def test_client_gone_while_queued_its_items_never_reach_the_model(
    registry: CollectorRegistry,
) -> None:
    served = await start_server(registry, tiny_config(max_batch_size=2, max_request_items=8))
    try:
        first = await hold_text_batch(served)
        impatient = aiohttp.ClientSession()
        gone = asyncio.create_task(
            hit(
                served,
                "POST",
                "/batch_predict",
                json_body={"texts": [f"gone {i}" for i in range(5)]},
                session=impatient,
            )
        )
        await poll(lambda: served.metric(schema.QUEUE_LENGTH, model_name=TEXT_MODEL) == 5)
        stays = asyncio.create_task(hit(served, "POST", "/predict", json_body={"text": "stays"}))
        await poll(lambda: served.metric(schema.QUEUE_LENGTH, model_name=TEXT_MODEL) == 6)
        gone.cancel()
        await impatient.close()
        await poll(lambda: totals(served, TEXT_MODEL)["cancelled"] == 5)
        assert served.metric(schema.QUEUE_LENGTH, model_name=TEXT_MODEL) == 1
        served.gates[TEXT_MODEL].open()
        assert (await first)[0] == 200
        status, _, _, raw = await stays
        assert status == 200
        assert close(
            list(strict_json(raw)["probabilities"].values()),
            served.unbatched(TEXT_MODEL, b"stays"),
        )
        assert served.gates[TEXT_MODEL].calls[:2] == [[b"first"], [b"stays"]]
        assert totals(served, TEXT_MODEL) == exactly(success=2, error=5, cancelled=5)
    finally:
        await served.stop()


async def test_client_gone_while_its_batch_computes_batch_mates_still_answered(
    registry: CollectorRegistry,
) -> None:
    # Batches of three that fill at once; the delay would otherwise hold them for 5 s.
    served = await start_server(registry, tiny_config(max_batch_size=3, max_queue_delay=5.0))
    try:
        gate = served.gates[TEXT_MODEL]
        gate.close()
        impatient = aiohttp.ClientSession()
        gone = asyncio.create_task(
            hit(
                served,
                "POST",
                "/batch_predict",
                json_body={"texts": ["gone a", "gone b"]},
                session=impatient,
            )
        )
        await poll(lambda: served.metric(schema.QUEUE_LENGTH, model_name=TEXT_MODEL) == 2)
        stays = asyncio.create_task(hit(served, "POST", "/predict", json_body={"text": "stays"}))
        await poll(gate.entered.is_set)
        batcher = served.server.batchers[TEXT_MODEL, "1"]
        gone_entries = batcher._running[:2]
        assert [e.item for e in gone_entries] == [b"gone a", b"gone b"]
        gone.cancel()
        await impatient.close()
        await poll(lambda: all(e.future.cancelled() for e in gone_entries))
        gate.open()
        status, _, _, raw = await stays
        assert status == 200
        assert close(
            list(strict_json(raw)["probabilities"].values()),
            served.unbatched(TEXT_MODEL, b"stays"),
        )
        assert gate.batch_sizes[0] == 3
        await poll(lambda: served.metric(schema.ACTIVE_REQUESTS, model_name=TEXT_MODEL) == 0)
        assert totals(served, TEXT_MODEL) == exactly(success=1, error=2, cancelled=2)
    finally:
        await served.stop()


async def test_mixed_good_and_bad_concurrent_requests_keep_counts_exact(
    served: Served, promtool: str
) -> None:
    texts = [f"good text {i}" for i in range(12)]
    images = [image(seed) for seed in range(4)]
    good: list[tuple[str, Any]] = []
    for i, text in enumerate(texts):
        if i % 3 == 0:
            good.append(("/predict", {"text": text}))
        elif i % 3 == 1:
            good.append((TEXT_V1, {"instances": [text]}))
        else:
            good.append((TEXT_V2, v2("text", [1], "BYTES", [text])))
    good.append((IMAGE_V1, {"instances": [images[0].tolist(), images[1].tolist()]}))
    good.append((IMAGE_V2, image_v2((2, 3, 32, 32), torch.stack(images[2:]).flatten().tolist())))
    bad: list[tuple[str, Any]] = (
        [
            ("/predict", {"text": 1}),
            ("/batch_predict", {"texts": ["fine", None]}),  # half good: none of it may run
            (TEXT_V1, {"instances": ["fine"], "inputs": ["fine"]}),
            (TEXT_V2, v2("text", [2], "BYTES", ["only one"])),
            (IMAGE_V1, {"instances": [images[0][:1].tolist()]}),
            (IMAGE_V2, image_v2((1, 3, 32, 32), ["x"] * IMAGE_VALUES)),
        ]
        * 4
    )
    requests = [(path, body, True) for path, body in good] + [
        (path, body, False) for path, body in bad
    ]
    requests = requests[::2] + requests[1::2]  # interleave good and bad
    answers = await asyncio.gather(
        *(hit(served, "POST", path, json_body=body) for path, body, _ in requests)
    )
    for (path, _, ok), (status, _, _, raw) in zip(requests, answers, strict=True):
        assert status == (200 if ok else 400), (path, raw)
        strict_json(raw)
    text_seen = sorted(item for call in served.gates[TEXT_MODEL].calls for item in call)
    assert text_seen == sorted(t.encode() for t in texts)
    assert totals(served, TEXT_MODEL) == exactly(success=len(texts))
    assert totals(served, IMAGE_MODEL) == exactly(success=len(images))
    text = await scrape(served)
    assert promtool_check_metrics(promtool, text) == ""
    for model, count in ((TEXT_MODEL, len(texts)), (IMAGE_MODEL, len(images))):
        assert (
            f'model_inference_total{{model_name="{model}",model_version="1",'
            f'source="app",status="success"}} {float(count)}'
        ) in text.splitlines()
        assert f'model_active_requests{{model_name="{model}",source="app"}} 0.0' in text
        assert f'model_inference_queue_length{{model_name="{model}",source="app"}} 0.0' in text


async def test_overload_rejects_with_503_and_counts_every_rejected_item(
    registry: CollectorRegistry, promtool: str
) -> None:
    served = await start_server(registry, tiny_config(max_queue_size=4, max_request_items=4))
    try:
        first = await hold_text_batch(served)
        queued = [
            asyncio.create_task(hit(served, "POST", "/predict", json_body={"text": f"q{i}"}))
            for i in range(4)
        ]
        await poll(lambda: served.metric(schema.QUEUE_LENGTH, model_name=TEXT_MODEL) == 4)
        for path, body in [
            ("/predict", {"text": "one too many"}),
            ("/batch_predict", {"texts": ["a", "b"]}),
            (TEXT_V2, v2("text", [2], "BYTES", ["a", "b"])),
        ]:
            status, error = await json_error(served, "POST", path, json_body=body)
            assert (status, error["reason"]) == (503, "overloaded")
        # A malformed request is still told what is wrong, not to retry.
        status, error = await json_error(served, "POST", "/predict", json_body={"text": 1})
        assert (status, error["reason"]) == (400, "invalid_request")
        served.gates[TEXT_MODEL].open()
        assert (await first)[0] == 200
        assert [a[0] for a in await asyncio.gather(*queued)] == [200] * 4
        assert totals(served, TEXT_MODEL) == exactly(success=5, error=5, rejected=5)
        assert promtool_check_metrics(promtool, await scrape(served)) == ""
    finally:
        await served.stop()


# --- found by this file, fixed ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/predict", "[" * 100_000 + "]" * 100_000),
        (TEXT_V2, '{"id": ' + "[" * 5000 + "]" * 5000 + ', "inputs": []}'),
    ],
    ids=["top-level", "in-id"],
)
async def test_deeply_nested_json_is_a_400(served: Served, path: str, body: str) -> None:
    status, error = await json_error(served, "POST", path, data=body)
    assert (status, error["reason"]) == (400, "invalid_json")
    assert_untouched(served)


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "1e400", "1e39"])
async def test_non_finite_image_values_are_a_400(served: Served, value: str) -> None:
    status, error = await json_error(served, "POST", IMAGE_V2, data=image_v2_raw(value))
    assert (status, error["reason"]) == (400, "invalid_request")
    assert_untouched(served)


async def test_v2_request_id_must_be_a_string(served: Served) -> None:
    body = json.dumps(v2("text", [1], "BYTES", ["a"], id="ID")).replace('"ID"', "NaN")
    status, _, _, raw = await hit(served, "POST", TEXT_V2, data=body)
    strict_json(raw)  # whatever the status, the answer must be JSON
    assert status == 400


@pytest.mark.parametrize("path", [IMAGE_V2, IMAGE_V1])
async def test_booleans_are_not_image_values(served: Served, path: str) -> None:
    if path == IMAGE_V2:
        body: Any = image_v2(data=[True] * IMAGE_VALUES)
    else:
        body = {"instances": [[[[False] * 32] * 32] * 3]}
    status, error = await json_error(served, "POST", path, json_body=body)
    assert (status, error["reason"]) == (400, "invalid_request")
    assert_untouched(served)


async def test_v2_image_data_must_match_an_empty_shape(served: Served) -> None:
    body = image_v2((0, 3, 32, 32), data=[0.5, 0.5, 0.5])
    status, error = await json_error(served, "POST", IMAGE_V2, json_body=body)
    assert (status, error["reason"]) == (400, "invalid_request")
    assert "holds 3 values" in error["error"]


async def test_a_body_that_does_not_decompress_is_a_400(served: Served) -> None:
    status, error = await json_error(
        served, "POST", "/predict", data='{"text": "a"}', headers={"Content-Encoding": "gzip"}
    )
    assert status == 400
    assert "gzip" in error["error"]
    assert_untouched(served)


async def test_get_on_v1_predict_is_a_405(served: Served) -> None:
    status, error = await json_error(served, "GET", TEXT_V1)
    assert (status, error["reason"]) == (405, "method_not_allowed")


async def test_v1_bad_columnar_inputs_error_names_inputs(served: Served) -> None:
    status, error = await json_error(served, "POST", TEXT_V1, json_body={"inputs": "a"})
    assert status == 400
    assert '"inputs"' in error["error"]


@pytest.mark.parametrize("layout", ["channels-last", "flat"])
async def test_v1_image_in_the_wrong_layout_is_a_400(served: Served, layout: str) -> None:
    img = image(3)
    instance = (
        img.permute(1, 2, 0).tolist() if layout == "channels-last" else img.flatten().tolist()
    )
    status, error = await json_error(served, "POST", IMAGE_V1, json_body={"instances": [instance]})
    assert (status, error["reason"]) == (400, "invalid_request")
    assert "[3, 32, 32]" in error["error"]
    assert_untouched(served)
