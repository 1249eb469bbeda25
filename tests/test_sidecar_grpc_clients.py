"""Triton's own Python client (``tritonclient.grpc`` and ``tritonclient.grpc.aio``) through
the sidecar's gRPC port to a real grpcio upstream speaking the Open Inference Protocol: the
answers the client decodes, the sidecar's per-model counters, and failures as the client's
InferenceServerException with the upstream's status."""

from __future__ import annotations

import asyncio
import queue
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as triton
import tritonclient.grpc.aio as triton_aio
from support.grpc_upstream import GrpcUpstream, running_grpc_upstream
from support.ports import LOOPBACK
from support.sidecar import metric, running_sidecar
from support.upstreams import running_upstream
from tritonclient.grpc import service_pb2
from tritonclient.utils import InferenceServerException

from inferwatch import schema
from inferwatch.sidecar.config import Address
from inferwatch.sidecar.process import Sidecar


@asynccontextmanager
async def triton_sidecar() -> AsyncIterator[tuple[Sidecar, str, GrpcUpstream]]:
    """A sidecar proxying gRPC to a fresh fake OIP upstream; yields it, the ``host:port`` of
    its gRPC port (what tritonclient takes) and the upstream."""
    async with running_upstream() as http_up, running_grpc_upstream() as grpc_up:
        grpc_listen = Address(LOOPBACK, 0)
        async with running_sidecar(
            http_up.url, grpc_listen=grpc_listen, grpc_upstream=grpc_up.target
        ) as sidecar:
            yield sidecar, f"{LOOPBACK}:{sidecar.grpc_port}", grpc_up


def tensor(rows: int, name: str = "input") -> tuple[triton.InferInput, np.ndarray]:
    """An FP32 input of ``rows`` x 3 (the batch is the first dimension) and its data."""
    data = np.arange(rows * 3, dtype=np.float32).reshape(rows, 3)
    infer_input = triton.InferInput(name, list(data.shape), "FP32")
    infer_input.set_data_from_numpy(data)
    return infer_input, data


def inferences(sidecar: Sidecar, model: str, status: str, version: str = "") -> float:
    labels = {"model_name": model, "model_version": version, "status": status}
    return metric(sidecar, schema.INFERENCE_TOTAL.name, **labels)


def failures(sidecar: Sidecar, model: str, reason: str, version: str = "") -> float:
    labels = {"model_name": model, "model_version": version, "reason": reason}
    return metric(sidecar, schema.INFERENCE_FAILURES.name, **labels)


def batch_sizes(sidecar: Sidecar, model: str) -> tuple[float, float]:
    """(count, sum) of the model's batch size histogram."""
    return (
        metric(sidecar, schema.BATCH_SIZE.count, model_name=model),
        metric(sidecar, schema.BATCH_SIZE.sum, model_name=model),
    )


def all_inferences(sidecar: Sidecar) -> float:
    """Every model_inference_total sample of the sidecar, all labels together."""
    return sum(
        sample.value
        for family in sidecar.registry.collect()
        for sample in family.samples
        if sample.name == schema.INFERENCE_TOTAL.name
    )


def in_flight(sidecar: Sidecar, model: str) -> tuple[float, float]:
    return (
        metric(sidecar, schema.ACTIVE_REQUESTS.name, model_name=model),
        metric(sidecar, schema.QUEUE_LENGTH.name, model_name=model),
    )


# --- ModelInfer ---------------------------------------------------------------------------------


async def test_infer_answers_and_is_counted_with_model_version_and_batch() -> None:
    async with triton_sidecar() as (sidecar, url, up):
        infer_input, data = tensor(5)

        def call() -> triton.InferResult:
            with triton.InferenceServerClient(url) as client:
                return client.infer("resnet", [infer_input], model_version="2", request_id="a1")

        result = await asyncio.to_thread(call)
        np.testing.assert_array_equal(result.as_numpy("input"), data)
        response = result.get_response()
        assert (response.model_name, response.model_version, response.id) == ("resnet", "2", "a1")
        sent = service_pb2.ModelInferRequest.FromString(up.requests[-1])
        assert (sent.model_name, list(sent.inputs[0].shape)) == ("resnet", [5, 3])

        assert inferences(sidecar, "resnet", "success", version="2") == 1
        assert inferences(sidecar, "resnet", "error", version="2") == 0
        assert batch_sizes(sidecar, "resnet") == (1, 5)
        duration = metric(
            sidecar, schema.INFERENCE_DURATION.count, model_name="resnet", model_version="2"
        )
        assert duration == 1
        assert in_flight(sidecar, "resnet") == (0, 0)


async def test_aio_client_infer_counts_each_model_and_its_batches() -> None:
    async with triton_sidecar() as (sidecar, url, _up):
        async with triton_aio.InferenceServerClient(url) as client:
            for model, rows in (("resnet", 1), ("resnet", 8), ("bert", 3)):
                infer_input, data = tensor(rows)
                result = await client.infer(model, [infer_input])
                np.testing.assert_array_equal(result.as_numpy("input"), data)
                assert result.get_response().model_name == model

        assert inferences(sidecar, "resnet", "success") == 2
        assert inferences(sidecar, "bert", "success") == 1
        assert batch_sizes(sidecar, "resnet") == (2, 9)
        assert batch_sizes(sidecar, "bert") == (1, 3)


async def test_health_and_metadata_calls_are_forwarded_not_counted() -> None:
    async with triton_sidecar() as (sidecar, url, up):

        def call() -> tuple[bool, Any]:
            with triton.InferenceServerClient(url) as client:
                return client.is_server_ready(), client.get_model_metadata("resnet")

        ready, metadata = await asyncio.to_thread(call)
        assert ready is True
        assert (metadata.name, list(metadata.versions)) == ("resnet", ["1"])
        async with triton_aio.InferenceServerClient(url) as client:
            assert await client.is_server_ready() is True
            assert (await client.get_model_metadata("bert")).name == "bert"

        assert len(up.metadata) == 4  # every call reached the upstream
        assert all_inferences(sidecar) == 0


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        ("NOT_FOUND", schema.REASON_CLIENT_ERROR),
        ("INVALID_ARGUMENT", schema.REASON_CLIENT_ERROR),
        ("INTERNAL", schema.REASON_SERVER_ERROR),
        ("RESOURCE_EXHAUSTED", schema.REASON_SERVER_ERROR),
    ],
)
async def test_upstream_failures_reach_tritonclient_with_their_status(
    status: str, reason: str
) -> None:
    async with triton_sidecar() as (sidecar, url, _up):
        infer_input, _ = tensor(2)

        def call() -> None:
            with triton.InferenceServerClient(url) as client:
                client.infer("resnet", [infer_input], headers={"x-status": status})

        with pytest.raises(InferenceServerException) as caught:
            await asyncio.to_thread(call)
        assert caught.value.status() == f"StatusCode.{status}"
        assert caught.value.message() == f"upstream says {status}"

        async with triton_aio.InferenceServerClient(url) as client:
            with pytest.raises(InferenceServerException) as caught:
                await client.infer("resnet", [infer_input], headers={"x-status": status})
        assert caught.value.status() == f"StatusCode.{status}"

        assert failures(sidecar, "resnet", reason) == 2
        assert inferences(sidecar, "resnet", "error") == 2
        assert inferences(sidecar, "resnet", "success") == 0
        assert in_flight(sidecar, "resnet") == (0, 0)


# --- ModelStreamInfer ---------------------------------------------------------------------------


async def test_start_stream_and_async_stream_infer_count_each_request() -> None:
    async with triton_sidecar() as (sidecar, url, _up):
        sent = {f"r{rows}": tensor(rows) for rows in (1, 2, 4)}

        def stream() -> list[tuple[Any, Any]]:
            answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
            with triton.InferenceServerClient(url) as client:
                client.start_stream(callback=lambda result, error: answers.put((result, error)))
                for request_id, (infer_input, _) in sent.items():
                    client.async_stream_infer("resnet", [infer_input], request_id=request_id)
                received = [answers.get(timeout=30) for _ in sent]
                client.stop_stream()
            return received

        received = await asyncio.to_thread(stream)
        assert [error for _, error in received] == [None, None, None]
        for result, _ in received:
            request_id = result.get_response().id
            np.testing.assert_array_equal(result.as_numpy("input"), sent[request_id][1])
        assert [result.get_response().id for result, _ in received] == list(sent)

        assert inferences(sidecar, "resnet", "success") == 3
        assert batch_sizes(sidecar, "resnet") == (3, 7)
        ttfb = metric(
            sidecar, schema.TIME_TO_FIRST_BYTE.count, model_name="resnet", model_version=""
        )
        assert ttfb == 3
        assert in_flight(sidecar, "resnet") == (0, 0)


async def stream_infer(url: str, requests: list[dict[str, Any]], **options: Any) -> list[Any]:
    """``stream_infer`` of the aio client: its (result, error) answers, one per request."""

    async def inputs() -> AsyncIterator[dict[str, Any]]:
        for request in requests:
            yield request

    async with triton_aio.InferenceServerClient(url) as client:
        answers = client.stream_infer(inputs(), **options)
        return [answer async for answer in answers]


async def test_aio_stream_infer_answers_and_counts_per_model() -> None:
    async with triton_sidecar() as (sidecar, url, _up):
        first, first_data = tensor(3)
        second, second_data = tensor(2)
        requests = [
            {"model_name": "resnet", "inputs": [first], "model_version": "1"},
            {"model_name": "bert", "inputs": [second]},
        ]
        answers = await stream_infer(url, requests)
        assert [error for _, error in answers] == [None, None]
        np.testing.assert_array_equal(answers[0][0].as_numpy("input"), first_data)
        np.testing.assert_array_equal(answers[1][0].as_numpy("input"), second_data)
        assert inferences(sidecar, "resnet", "success", version="1") == 1
        assert inferences(sidecar, "bert", "success") == 1
        assert batch_sizes(sidecar, "resnet") == (1, 3)
        assert batch_sizes(sidecar, "bert") == (1, 2)


async def test_stream_responses_with_an_error_message_count_as_server_errors() -> None:
    async with triton_sidecar() as (sidecar, url, _up):
        infer_input, _ = tensor(1)
        requests = [{"model_name": "resnet", "inputs": [infer_input]}] * 2
        answers = await stream_infer(url, requests, headers={"x-stream-error": "model broke"})
        assert [result for result, _ in answers] == [None, None]
        errors = [error for _, error in answers]
        assert all(isinstance(error, InferenceServerException) for error in errors)
        assert [error.message() for error in errors] == ["model broke", "model broke"]
        assert failures(sidecar, "resnet", schema.REASON_SERVER_ERROR) == 2
        assert inferences(sidecar, "resnet", "success") == 0
        assert in_flight(sidecar, "resnet") == (0, 0)


async def test_decoupled_stream_answers_count_once_per_request() -> None:
    async with triton_sidecar() as (sidecar, url, _up):
        infer_input, data = tensor(2)
        requests = [{"model_name": "resnet", "inputs": [infer_input]}] * 2
        answers = await stream_infer(url, requests, headers={"x-decoupled": "3"})
        assert len(answers) == 6
        for result, error in answers:
            assert error is None
            np.testing.assert_array_equal(result.as_numpy("input"), data)
        finals = [
            result.get_response().parameters["triton_final_response"].bool_param
            for result, _ in answers
        ]
        assert finals == [False, False, True] * 2
        assert inferences(sidecar, "resnet", "success") == 2
        assert batch_sizes(sidecar, "resnet") == (2, 4)
