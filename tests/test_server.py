"""The reference model server over real HTTP: every endpoint, batching, errors, drain."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import torch
from prometheus_client import CollectorRegistry
from support.fake_pynvml import FakeGpu, build, clear_visible_devices, install
from support.model_server import IMAGE_MODEL, TEXT_MODEL, Served, start_server, tiny_config
from support.polling import poll
from support.prometheus import promtool_check_metrics

from inferwatch import schema
from inferwatch.server.models import TEXT_LABELS, encode_text

MAX_LENGTH = 64  # the tiny text model's
TEXTS = ["", "a", "hello world", "héllo wörld ✓", "x" * 200]


@pytest.fixture
async def served(registry: CollectorRegistry) -> AsyncIterator[Served]:
    s = await start_server(registry)
    yield s
    await s.stop()


def close(a: list[float], b: list[float]) -> bool:
    return torch.allclose(torch.tensor(a), torch.tensor(b), atol=1e-6, rtol=1e-5)


def image(seed: int) -> torch.Tensor:
    return torch.rand((3, 32, 32), generator=torch.Generator().manual_seed(seed))


async def hold_first(served: Served, model: str = TEXT_MODEL) -> asyncio.Task[Any]:
    """Send one request and keep its batch inside the model until the gate opens."""
    gate = served.gates[model]
    gate.close()
    if model == TEXT_MODEL:
        task = asyncio.create_task(served.request("POST", "/predict", json={"text": "first"}))
    else:
        body = {"instances": [image(0).tolist()]}
        task = asyncio.create_task(served.request("POST", f"/v1/models/{model}:predict", json=body))
    await poll(gate.entered.is_set)
    return task


# --- health and metadata ----------------------------------------------------------------------


async def test_health_and_metadata(served: Served) -> None:
    assert (await served.request("GET", "/v2/health/live"))[:2] == (200, {"live": True})
    assert (await served.request("GET", "/v2/health/ready"))[:2] == (200, {"ready": True})
    status, body, _ = await served.request("GET", "/v2")
    assert (status, body["name"]) == (200, "inferwatch")
    status, body, _ = await served.request("GET", f"/v2/models/{TEXT_MODEL}")
    assert status == 200
    assert body["name"] == TEXT_MODEL
    assert body["versions"] == ["1"]
    assert body["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert body["parameters"]["labels"] == list(TEXT_LABELS)
    status, body, _ = await served.request("GET", f"/v2/models/{IMAGE_MODEL}/versions/1")
    assert status == 200
    assert body["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 3, 32, 32]}]
    assert [o["shape"] for o in body["outputs"]] == [[-1, -1], [-1, -1], [-1, 10]]
    ready = await served.request("GET", f"/v2/models/{IMAGE_MODEL}/ready")
    assert ready[:2] == (200, {"name": IMAGE_MODEL, "ready": True})
    v1 = await served.request("GET", f"/v1/models/{TEXT_MODEL}")
    assert v1[:2] == (200, {"name": TEXT_MODEL, "ready": True})
    status, body, _ = await served.request("GET", f"/v2/models/{TEXT_MODEL}/versions/2")
    assert status == 404
    assert body == {
        "error": f"model '{TEXT_MODEL}' has no version '2'; it has '1'",
        "reason": "unknown_version",
    }
    status, body, _ = await served.request("GET", "/v2/models/resnet/ready")
    assert (status, body["reason"]) == (404, "unknown_model")
    assert "this server has ['image-classifier', 'text-classifier']" in body["error"]


async def test_not_ready_until_every_preferred_size_is_warmed_up(
    registry: CollectorRegistry,
) -> None:
    config = tiny_config(max_batch_size=16, preferred_batch_sizes=(4, 8))
    served = await start_server(registry, config, wait_ready=False, gates_open=False)
    try:
        await poll(served.gates[TEXT_MODEL].entered.is_set)  # warm-up is running
        status, body, _ = await served.request("GET", "/v2/health/ready")
        assert (status, body) == (503, {"ready": False})
        assert (await served.request("GET", f"/v2/models/{TEXT_MODEL}/ready"))[0] == 503
        assert (await served.request("GET", "/v2/health/live"))[0] == 200
        status, body, headers = await served.request("POST", "/predict", json={"text": "hi"})
        assert (status, body["reason"], headers["Retry-After"]) == (503, "not_ready", "1")
        for gate in served.gates.values():
            gate.open()
        await poll(lambda: served.server.ready)
        assert (await served.request("GET", "/v2/health/ready"))[:2] == (200, {"ready": True})
        for model in (TEXT_MODEL, IMAGE_MODEL):
            assert served.gates[model].batch_sizes == [1, 4, 8, 16]
        assert (await served.request("POST", "/predict", json={"text": "hi"}))[0] == 200
    finally:
        await served.stop()


async def test_a_failed_warm_up_keeps_the_server_unready(registry: CollectorRegistry) -> None:
    served = await start_server(registry, wait_ready=False, gates_open=False)
    try:

        def out_of_memory(items: list[Any]) -> list[list[float]]:
            raise RuntimeError("CUDA out of memory")

        served.gates[TEXT_MODEL].fn = out_of_memory
        served.gates[TEXT_MODEL].open()
        warm_up = served.server._warm_up
        assert warm_up is not None
        await poll(warm_up.done)
        assert (await served.request("GET", "/v2/health/ready"))[:2] == (503, {"ready": False})
        assert (await served.request("GET", "/v2/health/live"))[0] == 200
        status, body, _ = await served.request("POST", "/predict", json={"text": "hi"})
        assert (status, body["reason"]) == (503, "not_ready")
    finally:
        await served.stop()


# --- results: batched equals unbatched --------------------------------------------------------


async def test_v2_text_batch_matches_each_text_alone(served: Served) -> None:
    body = {
        "id": "req-1",
        "inputs": [{"name": "text", "shape": [len(TEXTS)], "datatype": "BYTES", "data": TEXTS}],
    }
    status, answer, _ = await served.request("POST", f"/v2/models/{TEXT_MODEL}/infer", json=body)
    assert status == 200
    assert (answer["model_name"], answer["model_version"], answer["id"]) == (
        TEXT_MODEL,
        "1",
        "req-1",
    )
    labels, scores, probabilities = answer["outputs"]
    assert [labels["name"], scores["name"], probabilities["name"]] == [
        "label",
        "score",
        "probabilities",
    ]
    assert labels["shape"] == scores["shape"] == [5, 3]
    assert probabilities["shape"] == [5, len(TEXT_LABELS)]
    assert served.gates[TEXT_MODEL].batch_sizes == [5]  # the five texts ran as one batch
    width = len(TEXT_LABELS)
    for i, text in enumerate(TEXTS):
        row = probabilities["data"][i * width : (i + 1) * width]
        assert close(row, served.unbatched(TEXT_MODEL, encode_text(text, MAX_LENGTH)))
        ranked = sorted(range(width), key=row.__getitem__, reverse=True)[:3]
        assert labels["data"][i * 3 : i * 3 + 3] == [TEXT_LABELS[j] for j in ranked]
        assert scores["data"][i * 3 : i * 3 + 3] == [row[j] for j in ranked]


async def test_v2_image_batch_matches_each_image_alone(served: Served) -> None:
    images = [image(seed) for seed in (1, 2, 3)]
    flat = torch.stack(images).flatten().tolist()
    body = {
        "inputs": [{"name": "image", "shape": [3, 3, 32, 32], "datatype": "FP32", "data": flat}]
    }
    status, answer, _ = await served.request("POST", f"/v2/models/{IMAGE_MODEL}/infer", json=body)
    assert status == 200
    probabilities = answer["outputs"][2]
    assert probabilities["shape"] == [3, 10]
    for i, img in enumerate(images):
        assert close(
            probabilities["data"][i * 10 : (i + 1) * 10], served.unbatched(IMAGE_MODEL, img)
        )
    # Nested data (Triton accepts it) gives the same answer as flat data.
    body["inputs"][0]["data"] = torch.stack(images).tolist()
    status, nested, _ = await served.request("POST", f"/v2/models/{IMAGE_MODEL}/infer", json=body)
    assert status == 200
    assert close(nested["outputs"][2]["data"], probabilities["data"])


async def test_v2_outputs_and_top_k_are_honoured(served: Served) -> None:
    body = {
        "inputs": [{"name": "text", "shape": [1, 1], "datatype": "BYTES", "data": ["news"]}],
        "outputs": [{"name": "label"}],
        "parameters": {"top_k": 2},
    }
    status, answer, _ = await served.request(
        "POST", f"/v2/models/{TEXT_MODEL}/versions/1/infer", json=body
    )
    assert status == 200
    assert "id" not in answer
    assert [o["name"] for o in answer["outputs"]] == ["label"]
    assert answer["outputs"][0]["shape"] == [1, 2]
    nested = {**body, "inputs": [{**body["inputs"][0], "data": [["news"]]}]}
    status, same, _ = await served.request("POST", f"/v2/models/{TEXT_MODEL}/infer", json=nested)
    assert (status, same["outputs"]) == (200, answer["outputs"])
    row = served.unbatched(TEXT_MODEL, b"news")
    best = sorted(range(len(row)), key=row.__getitem__, reverse=True)[:2]
    assert answer["outputs"][0]["data"] == [TEXT_LABELS[i] for i in best]


async def test_v1_predict_text_and_image(served: Served) -> None:
    status, answer, _ = await served.request(
        "POST",
        f"/v1/models/{TEXT_MODEL}:predict",
        json={"instances": ["hello", {"text": "world"}]},
    )
    assert status == 200
    predictions = answer["predictions"]
    assert len(predictions) == 2
    for prediction, text in zip(predictions, ["hello", "world"], strict=True):
        expected = served.unbatched(TEXT_MODEL, text.encode())
        assert close(list(prediction["probabilities"].values()), expected)
        assert list(prediction["probabilities"]) == list(TEXT_LABELS)
        assert prediction["label"] == prediction["top_k"][0]["label"]
        assert prediction["score"] == max(prediction["probabilities"].values())
    img = image(5)
    status, answer, _ = await served.request(
        "POST",
        f"/v1/models/{IMAGE_MODEL}/versions/1:predict",
        json={"inputs": [img.tolist()], "parameters": {"top_k": 1}},
    )
    assert status == 200
    [prediction] = answer["predictions"]
    assert len(prediction["top_k"]) == 1
    assert close(list(prediction["probabilities"].values()), served.unbatched(IMAGE_MODEL, img))


async def test_seed_predict_and_batch_predict(served: Served) -> None:
    status, single, _ = await served.request("POST", "/predict", json={"text": "great match"})
    assert status == 200
    assert set(single) == {"label", "score", "top_k", "probabilities"}
    expected = served.unbatched(TEXT_MODEL, b"great match")
    assert close(list(single["probabilities"].values()), expected)
    assert single["label"] == TEXT_LABELS[max(range(len(expected)), key=expected.__getitem__)]
    status, batch, _ = await served.request(
        "POST", "/batch_predict", json={"texts": ["great match", "", "rain tomorrow"]}
    )
    assert status == 200
    assert len(batch["predictions"]) == 3
    assert batch["predictions"][0]["label"] == single["label"]
    assert close(
        list(batch["predictions"][0]["probabilities"].values()),
        list(single["probabilities"].values()),
    )
    empty = served.unbatched(TEXT_MODEL, b"")
    assert close(list(batch["predictions"][1]["probabilities"].values()), empty)


# --- batching under concurrency ---------------------------------------------------------------


async def test_concurrent_requests_share_a_batch(served: Served) -> None:
    first = await hold_first(served)
    texts = [f"request number {i}" for i in range(16)]
    others = [
        asyncio.create_task(served.request("POST", "/predict", json={"text": t})) for t in texts
    ]
    await poll(lambda: served.metric(schema.QUEUE_LENGTH, model_name=TEXT_MODEL) == 16)
    served.gates[TEXT_MODEL].open()
    assert (await first)[0] == 200
    answers = await asyncio.gather(*others)
    assert [status for status, _, _ in answers] == [200] * 16
    for (_, body, _), text in zip(answers, texts, strict=True):
        assert close(
            list(body["probabilities"].values()), served.unbatched(TEXT_MODEL, text.encode())
        )
    # 17 requests, 2 executed batches: the first alone, the 16 that queued behind it together.
    assert served.gates[TEXT_MODEL].batch_sizes == [1, 16]
    m = {"model_name": TEXT_MODEL}
    assert served.metric(schema.BATCH_SIZE, "_count", **m) == 2
    assert served.metric(schema.BATCH_SIZE, "_sum", **m) == 17
    assert served.metric(schema.BATCH_SIZE, "_bucket", le="1.0", **m) == 1
    assert served.metric(schema.BATCH_SIZE, "_bucket", le="8.0", **m) == 1
    assert served.metric(schema.BATCH_SIZE, "_bucket", le="16.0", **m) == 2
    assert served.metric(schema.QUEUE_DURATION, "_count", **m) == 17
    versioned = {**m, "model_version": "1"}
    assert served.metric(schema.INFERENCE_TOTAL, status="success", **versioned) == 17
    assert served.metric(schema.INFERENCE_DURATION, "_count", **versioned) == 17
    assert served.metric(schema.ACTIVE_REQUESTS, **m) == 0


async def test_a_failing_batch_fails_only_its_requests(served: Served) -> None:
    gate = served.gates[TEXT_MODEL]
    model = gate.fn

    def picky(items: list[bytes]) -> list[list[float]]:
        if b"boom" in items:
            raise ValueError("cannot classify boom")
        return model(items)

    gate.fn = picky
    first = await hold_first(served)
    doomed = [
        asyncio.create_task(served.request("POST", "/predict", json={"text": t}))
        for t in ("boom", "innocent bystander")
    ]
    await poll(lambda: served.metric(schema.QUEUE_LENGTH, model_name=TEXT_MODEL) == 2)
    gate.open()
    assert (await first)[0] == 200
    for status, body, _ in await asyncio.gather(*doomed):
        assert status == 500
        assert body == {
            "error": f"model '{TEXT_MODEL}' failed: ValueError: cannot classify boom",
            "reason": "model_error",
        }
    assert (await served.request("POST", "/predict", json={"text": "later"}))[0] == 200
    assert gate.batch_sizes == [1, 2, 1]
    labels = {"model_name": TEXT_MODEL, "model_version": "1"}
    assert served.metric(schema.INFERENCE_FAILURES, reason="exception", **labels) == 2
    assert served.metric(schema.INFERENCE_TOTAL, status="success", **labels) == 2


async def test_client_that_hangs_up_is_dropped_from_the_queue(served: Served) -> None:
    first = await hold_first(served)
    impatient = asyncio.create_task(served.request("POST", "/predict", json={"text": "gone"}))
    await poll(lambda: served.metric(schema.QUEUE_LENGTH, model_name=TEXT_MODEL) == 1)
    impatient.cancel()  # closes the connection; the server cancels the handler
    labels = {"model_name": TEXT_MODEL, "model_version": "1"}
    await poll(lambda: served.metric(schema.INFERENCE_FAILURES, reason="cancelled", **labels) == 1)
    assert served.metric(schema.QUEUE_LENGTH, model_name=TEXT_MODEL) == 0
    served.gates[TEXT_MODEL].open()
    assert (await first)[0] == 200
    assert served.gates[TEXT_MODEL].calls == [[b"first"]]  # "gone" never reached the model
    assert served.metric(schema.ACTIVE_REQUESTS, model_name=TEXT_MODEL) == 0


async def test_full_queue_answers_503_with_retry_after(registry: CollectorRegistry) -> None:
    served = await start_server(registry, tiny_config(max_queue_size=2, max_request_items=2))
    try:
        first = await hold_first(served)
        queued = asyncio.create_task(
            served.request("POST", "/batch_predict", json={"texts": ["one", "two"]})
        )
        await poll(lambda: served.metric(schema.QUEUE_LENGTH, model_name=TEXT_MODEL) == 2)
        status, body, headers = await served.request("POST", "/predict", json={"text": "three"})
        assert status == 503
        assert headers["Retry-After"] == "1"
        assert body == {
            "error": f"model '{TEXT_MODEL}' is overloaded: 2 items queued, limit 2",
            "reason": "overloaded",
        }
        # The other model has its own queue: accepted, and answered once the device (one
        # worker thread, held by the text batch) is free.
        img = {"instances": [image(1).tolist()]}
        other = asyncio.create_task(
            served.request("POST", f"/v1/models/{IMAGE_MODEL}:predict", json=img)
        )
        await poll(lambda: served.metric(schema.ACTIVE_REQUESTS, model_name=IMAGE_MODEL) == 1)
        served.gates[TEXT_MODEL].open()
        assert (await first)[0] == 200
        assert (await queued)[0] == 200
        assert (await other)[0] == 200
        labels = {"model_name": TEXT_MODEL, "model_version": "1"}
        assert served.metric(schema.INFERENCE_FAILURES, reason="rejected", **labels) == 1
    finally:
        await served.stop()


async def test_oversized_requests_are_refused_or_split(registry: CollectorRegistry) -> None:
    served = await start_server(registry, tiny_config(max_request_items=4, max_batch_size=2))
    try:
        status, body, _ = await served.request("POST", "/batch_predict", json={"texts": ["t"] * 5})
        assert (status, body["reason"]) == (413, "too_many_items")
        assert body["error"].startswith("the request holds 5 items; the limit is 4 per request")
        v2 = {"inputs": [{"name": "text", "shape": [5], "datatype": "BYTES", "data": ["t"] * 5}]}
        status, body, _ = await served.request("POST", f"/v2/models/{TEXT_MODEL}/infer", json=v2)
        assert (status, body["reason"]) == (413, "too_many_items")
        # Within the limit but above max_batch_size: split over batches, answered in order.
        status, body, _ = await served.request(
            "POST", "/batch_predict", json={"texts": ["a", "b", "c", "d"]}
        )
        assert status == 200
        assert served.gates[TEXT_MODEL].batch_sizes == [2, 2]
        for prediction, text in zip(body["predictions"], "abcd", strict=True):
            expected = served.unbatched(TEXT_MODEL, text.encode())
            assert close(list(prediction["probabilities"].values()), expected)
    finally:
        await served.stop()


async def test_body_over_the_size_limit_is_413(registry: CollectorRegistry) -> None:
    served = await start_server(registry, tiny_config(max_body_bytes=1024))
    try:
        status, body, _ = await served.request("POST", "/predict", json={"text": "x" * 2000})
        assert (status, body["reason"]) == (413, "body_too_large")
        assert "1024" in body["error"]
    finally:
        await served.stop()


TEXT_V2 = f"/v2/models/{TEXT_MODEL}/infer"
IMAGE_V2 = f"/v2/models/{IMAGE_MODEL}/infer"


def _tensor(name: str, shape: list[int], datatype: str, data: Any) -> dict[str, Any]:
    return {"inputs": [{"name": name, "shape": shape, "datatype": datatype, "data": data}]}


BAD_REQUESTS = [
    ("POST", "/predict", "{", 400, "invalid_json", "the body is not valid JSON: Expecting"),
    ("POST", "/predict", "", 400, "invalid_json", "the request has no body"),
    ("POST", "/predict", [1], 400, "invalid_request", 'a JSON object with a "text" string'),
    ("POST", "/predict", {"text": 5}, 400, "invalid_request", '"text" must be a string, got int'),
    (
        "POST",
        "/predict",
        {"text": "a", "parameters": {"top_k": 0}},
        400,
        "invalid_request",
        '"top_k" must be an integer from 1 to 8, got 0',
    ),
    ("POST", "/batch_predict", {"texts": "abc"}, 400, "invalid_request", '"texts": a list'),
    ("POST", "/v2/models/resnet/infer", {}, 404, "unknown_model", "unknown model 'resnet'"),
    (
        "POST",
        f"/v2/models/{TEXT_MODEL}/versions/9/infer",
        {},
        404,
        "unknown_version",
        "has no version '9'",
    ),
    ("POST", TEXT_V2, {}, 400, "invalid_request", '"inputs" must be a list of one tensor'),
    (
        "POST",
        TEXT_V2,
        _tensor("txt", [1], "BYTES", ["a"]),
        400,
        "invalid_request",
        "has one input named 'text', got 'txt'",
    ),
    (
        "POST",
        TEXT_V2,
        _tensor("text", [1], "FP32", [1.0]),
        400,
        "invalid_request",
        "input 'text' has datatype BYTES (UTF-8 strings), got 'FP32'",
    ),
    (
        "POST",
        TEXT_V2,
        _tensor("text", [3], "BYTES", ["a", "b"]),
        400,
        "invalid_request",
        "input 'text' has shape [3] but 2 strings in data",
    ),
    (
        "POST",
        TEXT_V2,
        _tensor("text", [2, 2], "BYTES", ["a", "b"]),
        400,
        "invalid_request",
        "input 'text' has shape [N] or [N, 1], got [2, 2]",
    ),
    (
        "POST",
        TEXT_V2,
        _tensor("text", ["1"], "BYTES", ["a"]),
        400,
        "invalid_request",
        "\"shape\" must be a non-empty list of sizes, got ['1']",
    ),
    (
        "POST",
        TEXT_V2,
        _tensor("text", [1], "BYTES", [7]),
        400,
        "invalid_request",
        "input 'text' data[0] must be a string, got int",
    ),
    (
        "POST",
        TEXT_V2,
        {**_tensor("text", [1], "BYTES", ["a"]), "outputs": [{"name": "logits"}]},
        400,
        "invalid_request",
        "unknown outputs ['logits']",
    ),
    (
        "POST",
        IMAGE_V2,
        _tensor("image", [1, 3, 16, 16], "FP32", [0.0] * 768),
        400,
        "invalid_request",
        "input 'image' has shape [N, 3, 32, 32], got [1, 3, 16, 16]",
    ),
    (
        "POST",
        IMAGE_V2,
        _tensor("image", [1, 3, 32, 32], "FP64", [0.0] * 3072),
        400,
        "invalid_request",
        "input 'image' has datatype FP32, got 'FP64'",
    ),
    (
        "POST",
        IMAGE_V2,
        _tensor("image", [1, 3, 32, 32], "FP32", [0.0] * 5),
        400,
        "invalid_request",
        "input 'image' holds 5 values; shape [1, 3, 32, 32] needs 3072",
    ),
    (
        "POST",
        IMAGE_V2,
        _tensor("image", [1, 3, 32, 32], "FP32", ["a"] * 3072),
        400,
        "invalid_request",
        "input 'image' must hold numbers only",
    ),
    (
        "POST",
        f"/v1/models/{TEXT_MODEL}:predict",
        {"instances": ["a"], "inputs": ["a"]},
        400,
        "invalid_request",
        'give "instances" or "inputs", not both',
    ),
    (
        "POST",
        f"/v1/models/{TEXT_MODEL}:predict",
        {"rows": []},
        400,
        "invalid_request",
        'the body needs "instances"',
    ),
    (
        "POST",
        f"/v1/models/{TEXT_MODEL}:predict",
        {"instances": [{"txt": "a"}]},
        400,
        "invalid_request",
        'instances[0] is an object without the input "text"',
    ),
    (
        "POST",
        f"/v1/models/{IMAGE_MODEL}:predict",
        {"instances": [[1.0, 2.0], [3.0]]},
        400,
        "invalid_request",
        "instances must hold numbers only, in a regular shape",
    ),
    (
        "POST",
        f"/v1/models/{IMAGE_MODEL}:predict",
        {"instances": [[1.0, 2.0]]},
        400,
        "invalid_request",
        "instances: each instance must have shape [3, 32, 32], got [2]",
    ),
    ("GET", "/v3/anything", None, 404, "not_found", "no endpoint at /v3/anything"),
    ("GET", "/predict", None, 405, "method_not_allowed", "GET is not allowed on /predict"),
]


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "reason", "message"),
    BAD_REQUESTS,
    ids=[f"{m} {p} {r} {i}" for i, (m, p, _, _, r, _) in enumerate(BAD_REQUESTS)],
)
async def test_bad_requests_get_a_json_error(
    served: Served, method: str, path: str, body: Any, status: int, reason: str, message: str
) -> None:
    if isinstance(body, str):
        got = await served.request(method, path, data=body)
    else:
        got = await served.request(method, path, json=body)
    assert got[0] == status
    assert got[1]["reason"] == reason
    assert message in got[1]["error"]
    assert served.gates[TEXT_MODEL].calls == [] and served.gates[IMAGE_MODEL].calls == []


# --- shutdown ---------------------------------------------------------------------------------


async def test_shutdown_finishes_queued_requests(registry: CollectorRegistry) -> None:
    served = await start_server(registry)
    try:
        first = await hold_first(served)
        texts = [f"queued {i}" for i in range(8)]
        queued = [
            asyncio.create_task(served.request("POST", "/predict", json={"text": t})) for t in texts
        ]
        v2 = _tensor("image", [1, 3, 32, 32], "FP32", image(2).flatten().tolist())
        queued.append(asyncio.create_task(served.request("POST", IMAGE_V2, json=v2)))
        await poll(lambda: served.metric(schema.QUEUE_LENGTH, model_name=TEXT_MODEL) == 8)
        await poll(lambda: served.metric(schema.ACTIVE_REQUESTS, model_name=IMAGE_MODEL) == 1)
        stopping = asyncio.create_task(served.runner.cleanup())
        await poll(lambda: served.server.draining)
        assert not served.server.ready
        served.gates[TEXT_MODEL].open()
        await asyncio.wait_for(stopping, 20)
        served.stopped = True
        assert (await first)[0] == 200
        answers = await asyncio.gather(*queued)
        assert [status for status, _, _ in answers] == [200] * 9
        assert served.gates[TEXT_MODEL].batch_sizes == [1, 8]
        assert served.gates[IMAGE_MODEL].batch_sizes == [1]
        assert all(batcher.closed for batcher in served.server.batchers.values())
    finally:
        await served.stop()
        await served.session.close()


# --- /metrics ---------------------------------------------------------------------------------


async def test_gpu_families_join_the_servers_metrics(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What the server does once its models are on CUDA, with NVML faked at the library boundary.
    clear_visible_devices(monkeypatch)
    install(monkeypatch, build([FakeGpu("GPU-0001", utilization=(87, 40))]))
    served.server.start_gpu_metrics()
    labels = {"gpu": "0", "uuid": "GPU-0001", "name": "NVIDIA H100 80GB HBM3"}
    name = schema.GPU_UTILIZATION.name
    await poll(lambda: served.registry.get_sample_value(name, labels) is not None)
    async with served.session.get(served.url + "/metrics") as response:
        text = await response.text()
    assert f'{name}{{gpu="0",name="NVIDIA H100 80GB HBM3",uuid="GPU-0001"}} 0.87' in text
    collector = served.server._gpu_metrics
    await served.stop()
    assert collector.closed


async def test_metrics_are_promtool_clean(served: Served, promtool: str) -> None:
    assert (await served.request("POST", "/predict", json={"text": "a"}))[0] == 200
    v2 = _tensor("image", [2, 3, 32, 32], "FP32", [0.5] * 6144)
    assert (await served.request("POST", IMAGE_V2, json=v2))[0] == 200
    assert (await served.request("POST", "/predict", json={"text": 1}))[0] == 400
    async with served.session.get(served.url + "/metrics") as response:
        assert response.status == 200
        text = await response.text()
    assert promtool_check_metrics(promtool, text) == ""
    for model, items in ((TEXT_MODEL, 1), (IMAGE_MODEL, 2)):
        line = (
            f'model_inference_total{{model_name="{model}",model_version="1",'
            f'source="app",status="success"}} {float(items)}'
        )
        assert line in text.splitlines()
    assert f'model_batch_size_sum{{model_name="{IMAGE_MODEL}",source="app"}} 2.0' in text
