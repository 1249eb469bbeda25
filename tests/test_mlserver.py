"""The sidecar in front of a real model server nobody here wrote: MLServer 1.7 serving a tiny
scikit-learn model trained by the test (tests/support/mlserver.py), called with Triton's
``tritonclient.grpc`` through the sidecar's gRPC port; the HTTP upstream is MLServer's HTTP
port (the sidecar's readiness checks its /v2/health/ready)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
import tritonclient.grpc.aio as triton_aio
from grpc import aio
from support.mlserver import MLServer, running_mlserver
from support.ports import LOOPBACK
from support.sidecar import metric, running_sidecar
from tritonclient.grpc import service_pb2
from tritonclient.utils import InferenceServerException

from inferwatch import schema
from inferwatch.sidecar.config import Address
from inferwatch.sidecar.errors import reason_for_grpc_status
from inferwatch.sidecar.process import Sidecar

ROWS = [
    [0.1, -1.2, 0.3, 0.8],
    [1.5, 0.4, -0.2, -1.0],
    [-0.7, 0.9, 1.1, 0.2],
    [2.0, -0.5, 0.0, 0.3],
    [-1.4, -0.3, 0.6, -0.9],
    [0.3, 1.8, -1.5, 0.4],
]


@pytest.fixture(scope="module")
def mlserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MLServer]:
    with running_mlserver(tmp_path_factory.mktemp("mlserver"), ROWS) as server:
        yield server


@asynccontextmanager
async def sidecar_before(server: MLServer) -> AsyncIterator[tuple[Sidecar, str]]:
    """A sidecar in front of MLServer (HTTP and gRPC); yields it and its gRPC ``host:port``."""
    async with running_sidecar(
        server.http_url, grpc_listen=Address(LOOPBACK, 0), grpc_upstream=server.grpc_target
    ) as sidecar:
        yield sidecar, f"{LOOPBACK}:{sidecar.grpc_port}"


def features(rows: list[list[float]]) -> triton.InferInput:
    data = np.asarray(rows, dtype=np.float64)
    infer_input = triton.InferInput("predict", list(data.shape), "FP64")
    infer_input.set_data_from_numpy(data)
    return infer_input


def predictions(result: Any) -> list[int]:
    return [int(value) for value in result.as_numpy("predict").reshape(-1)]


def infer(url: str, model: str, rows: list[list[float]], version: str = "") -> Any:
    """One ``tritonclient.grpc`` infer (blocking: run it in a thread beside the sidecar)."""
    with triton.InferenceServerClient(url) as client:
        return client.infer(model, [features(rows)], model_version=version)


def failure_of(url: str, model: str, rows: list[list[float]], version: str = "") -> Any:
    """The InferenceServerException an infer that fails raises."""
    with pytest.raises(InferenceServerException) as caught:
        infer(url, model, rows, version)
    return caught.value


def inferences(sidecar: Sidecar, model: str, status: str, version: str = "") -> float:
    labels = {"model_name": model, "model_version": version, "status": status}
    return metric(sidecar, schema.INFERENCE_TOTAL.name, **labels)


def failures(sidecar: Sidecar, model: str, reason: str, version: str = "") -> float:
    labels = {"model_name": model, "model_version": version, "reason": reason}
    return metric(sidecar, schema.INFERENCE_FAILURES.name, **labels)


def all_inferences(sidecar: Sidecar) -> float:
    return sum(
        sample.value
        for family in sidecar.registry.collect()
        for sample in family.samples
        if sample.name == schema.INFERENCE_TOTAL.name
    )


async def test_predictions_through_the_sidecar_are_the_models_own(mlserver: MLServer) -> None:
    model, expected = mlserver.model, mlserver.predictions
    assert set(expected) == {0, 1}  # the rows cover both classes
    async with sidecar_before(mlserver) as (sidecar, url):
        calls = [(ROWS, ""), (ROWS[:2], ""), (ROWS[2:3], mlserver.version)]
        for rows, version in calls:
            result = await asyncio.to_thread(infer, url, model, rows, version)
            start = ROWS.index(rows[0])
            assert predictions(result) == expected[start : start + len(rows)]
            response = result.get_response()
            assert (response.model_name, response.model_version) == (model, mlserver.version)
        direct = await asyncio.to_thread(infer, mlserver.grpc_target, model, ROWS)
        assert predictions(direct) == expected

        assert inferences(sidecar, model, "success") == 2
        assert inferences(sidecar, model, "success", version=mlserver.version) == 1
        assert all_inferences(sidecar) == len(calls)
        batch_count = metric(sidecar, schema.BATCH_SIZE.count, model_name=model)
        batch_sum = metric(sidecar, schema.BATCH_SIZE.sum, model_name=model)
        assert (batch_count, batch_sum) == (len(calls), sum(len(rows) for rows, _ in calls))


async def test_aio_client_through_the_sidecar(mlserver: MLServer) -> None:
    model = mlserver.unversioned
    async with sidecar_before(mlserver) as (sidecar, url):
        async with triton_aio.InferenceServerClient(url) as client:
            for index, row in enumerate(ROWS):
                result = await client.infer(model, [features([row])])
                assert predictions(result) == [mlserver.predictions[index]]
                assert result.get_response().model_version == ""
        assert inferences(sidecar, model, "success") == len(ROWS)
        batch_sum = metric(sidecar, schema.BATCH_SIZE.sum, model_name=model)
        assert batch_sum == len(ROWS)


@pytest.mark.parametrize(
    ("model", "version", "rows"),
    [
        pytest.param("no-such-model", "", ROWS[:1], id="unknown-model"),
        pytest.param(None, "v9", ROWS[:1], id="unknown-version"),
        pytest.param(None, "", [[1.0, 2.0, 3.0]], id="wrong-feature-count"),
    ],
)
async def test_failures_come_back_as_mlserver_answers_them(
    mlserver: MLServer, model: str | None, version: str, rows: list[list[float]]
) -> None:
    model = model or mlserver.model
    direct = await asyncio.to_thread(failure_of, mlserver.grpc_target, model, rows, version)
    async with sidecar_before(mlserver) as (sidecar, url):
        proxied = await asyncio.to_thread(failure_of, url, model, rows, version)
        assert (proxied.status(), proxied.message()) == (direct.status(), direct.message())
        code = direct.status().removeprefix("StatusCode.")
        reason = reason_for_grpc_status(code)
        assert reason is not None
        assert failures(sidecar, model, reason, version=version) == 1
        assert inferences(sidecar, model, "error", version=version) == 1
        assert all_inferences(sidecar) == 1
        if model != mlserver.model or version:
            # What MLServer 1.7 answers for a model it does not serve.
            assert code == "NOT_FOUND"
            assert reason == schema.REASON_CLIENT_ERROR


async def test_health_and_metadata_pass_through_uncounted(mlserver: MLServer) -> None:
    def ask(url: str) -> tuple[bool, bool, Any]:
        with triton.InferenceServerClient(url) as client:
            return (
                client.is_server_ready(),
                client.is_model_ready(mlserver.model),
                client.get_model_metadata(mlserver.model),
            )

    async with sidecar_before(mlserver) as (sidecar, url):
        proxied = await asyncio.to_thread(ask, url)
        assert proxied == await asyncio.to_thread(ask, mlserver.grpc_target)
        assert proxied[:2] == (True, True)
        assert proxied[2].name == mlserver.model
        assert all_inferences(sidecar) == 0


@pytest.mark.parametrize(
    "served",
    [
        pytest.param("model", id="versioned"),
        pytest.param("unversioned", id="unversioned"),
    ],
)
async def test_mlserver_stream_infer_is_counted_as_a_success(
    mlserver: MLServer, served: str
) -> None:
    """MLServer's dataplane.proto: ``rpc ModelStreamInfer(stream ModelInferRequest) returns
    (stream ModelInferResponse)`` (its SKLearn runtime answers the stream's first request)."""
    model = getattr(mlserver, served)
    request = service_pb2.ModelInferRequest(model_name=model, id="s1")
    tensor = request.inputs.add(name="predict", datatype="FP64", shape=[2, 4])
    tensor.contents.fp64_contents.extend(value for row in ROWS[:2] for value in row)

    async def one() -> AsyncIterator[bytes]:
        yield request.SerializeToString()

    async with sidecar_before(mlserver) as (sidecar, url):
        async with aio.insecure_channel(url) as channel:
            method = channel.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer")
            call = method(one())
            answers = [service_pb2.ModelInferResponse.FromString(m) async for m in call]
            assert await call.code() == grpc.StatusCode.OK
        # The answer is relayed as MLServer sent it: its predictions.
        assert [answer.model_name for answer in answers] == [model]
        output = answers[0].outputs[0]
        values = list(output.contents.int64_contents) or list(
            np.frombuffer(answers[0].raw_output_contents[0], dtype=np.int64)
        )
        assert values == mlserver.predictions[:2]
        assert failures(sidecar, model, schema.REASON_SERVER_ERROR) == 0
        assert inferences(sidecar, model, "success") == 1
