"""Cost of classifying a request and reading its body, against ``json.loads`` of the same body.

For each protocol of the sidecar's table, one realistic request: ``classify`` (path only, runs on
every request) and ``parse_body`` (runs where the body can tell model or batch size) in µs per
call, best of several repeats, next to the baseline ``json.loads`` of the same body (for CSV,
``csv.reader`` counting its rows; for Triton's binary extension, ``json.loads`` of the JSON
header). The ratio says what reading the body costs beyond parsing it once.

The gRPC section does the same for request messages: ``classify_method`` and ``parse_request``
(the wire reader picking model, version and batch out of the serialized message) next to the
baseline of decoding the same bytes with the generated class (tritonclient's
``service_pb2.ModelInferRequest.FromString``, protobuf's C implementation).

    python benchmarks/bench_protocols.py [--calls 2000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import time
from collections.abc import Callable
from dataclasses import dataclass

from inferwatch.sidecar.protocols import MAX_PARSE_BYTES, Classifier


@dataclass
class Case:
    name: str
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    baseline: Callable[[], object]


def json_case(name: str, path: str, doc: object) -> Case:
    body = json.dumps(doc).encode()
    headers = {"Content-Type": "application/json", "Content-Length": str(len(body))}
    return Case(name, "POST", path, headers, body, lambda: json.loads(body))


def cases() -> list[Case]:
    floats = [0.123456] * 768
    v2_small = {"inputs": [{"name": "x", "shape": [4, 3], "datatype": "FP32", "data": [0.5] * 12}]}
    v2_large = {
        "id": "1",
        "inputs": [{"name": "x", "shape": [8, 768], "datatype": "FP32", "data": floats * 8}],
    }
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": [64, 768],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": 64 * 768 * 4},
                }
            ]
        }
    ).encode()
    binary = header + bytes(64 * 768 * 4)
    csv_body = b"a,b,c,d\n" + b"0.1,0.2,0.3,0.4\n" * 500
    chat = {
        "model": "meta-llama/Llama-3.1-8B-Instruct",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant." * 4},
            {"role": "user", "content": "Summarise the following text. " + "lorem ipsum " * 300},
        ],
        "stream": True,
        "max_tokens": 256,
    }
    long_chat = {**chat, "messages": [{"role": "user", "content": "x" * (4 * MAX_PARSE_BYTES)}]}
    long_body = json.dumps(long_chat).encode()
    return [
        json_case("v2 infer, 4x3", "/v2/models/resnet/infer", v2_small),
        json_case("v2 infer, 8x768", "/v2/models/bert/versions/2/infer", v2_large),
        Case(
            "v2 binary extension, 192 KiB",
            "POST",
            "/v2/models/bert/infer",
            {
                "Content-Type": "application/octet-stream",
                "Inference-Header-Content-Length": str(len(header)),
                "Content-Length": str(len(binary)),
            },
            binary[:MAX_PARSE_BYTES],
            lambda: json.loads(header),
        ),
        json_case(
            "tf serving instances 32x16", "/v1/models/m:predict", {"instances": [[0.5] * 16] * 32}
        ),
        json_case(
            "mlflow dataframe_split 100x4",
            "/invocations",
            {"dataframe_split": {"columns": ["a", "b", "c", "d"], "data": [[1, 2, 3, 4]] * 100}},
        ),
        Case(
            "mlflow csv 500 rows",
            "POST",
            "/invocations",
            {"Content-Type": "text/csv", "Content-Length": str(len(csv_body))},
            csv_body,
            lambda: sum(1 for _ in csv.reader(io.StringIO(csv_body.decode()))),
        ),
        json_case("openai chat, 4 KiB", "/v1/chat/completions", chat),
        Case(
            "openai chat, 256 KiB (peeked 64)",
            "POST",
            "/v1/chat/completions",
            {"Content-Type": "application/json", "Content-Length": str(len(long_body))},
            long_body[:MAX_PARSE_BYTES],
            lambda: json.loads(long_body),
        ),
        json_case(
            "openai embeddings x16",
            "/v1/embeddings",
            {"model": "bge-m3", "input": ["some text to embed"] * 16},
        ),
        json_case(
            "seldon v1 ndarray 10x4",
            "/api/v1.0/predictions",
            {"data": {"names": ["a", "b", "c", "d"], "ndarray": [[1, 2, 3, 4]] * 10}},
        ),
        Case(
            "torchserve (path only)",
            "POST",
            "/predictions/mnist/1.0",
            {},
            b"\x89PNG" * 256,
            lambda: None,
        ),
        Case("generic (path only)", "POST", "/score", {}, b'{"x": 1}', lambda: json.loads(b"{}")),
    ]


def best_of(repeats: int, calls: int, fn: Callable[[], object]) -> float:
    """Best µs per call over ``repeats`` runs of ``calls`` calls."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - start) / calls)
    return best * 1e6


@dataclass
class GrpcCase:
    name: str
    method: str
    message: bytes
    baseline: Callable[[], object]


def grpc_cases() -> list[GrpcCase]:
    from tritonclient.grpc import service_pb2

    def model_infer(name: str, version: str, shape: list[int], datatype: str, raw: bytes) -> bytes:
        request = service_pb2.ModelInferRequest(model_name=name, model_version=version, id="1")
        request.inputs.add(name="input", datatype=datatype, shape=shape)
        request.outputs.add(name="output")
        request.raw_input_contents.append(raw)
        return request.SerializeToString()

    infer = "/inference.GRPCInferenceService/ModelInfer"
    image = model_infer("resnet50", "1", [1, 3, 224, 224], "FP32", bytes(224 * 224 * 3 * 4))
    small = model_infer("iris", "", [4, 3], "FP32", bytes(4 * 3 * 4))
    batch = model_infer("resnet50", "1", [32, 3, 224, 224], "FP32", bytes(32 * 224 * 224 * 3 * 4))
    decode = service_pb2.ModelInferRequest.FromString
    return [
        GrpcCase("oip ModelInfer 4x3 FP32", infer, small, lambda: decode(small)),
        GrpcCase("oip ModelInfer 1x3x224x224 FP32", infer, image, lambda: decode(image)),
        GrpcCase("oip ModelInfer 32x3x224x224 FP32", infer, batch, lambda: decode(batch)),
    ]


def grpc_section(calls: int, repeats: int) -> None:
    from inferwatch.sidecar.grpc_protocols import classify_method, parse_request

    print(f"\n{'gRPC request':36} {'bytes':>9} {'classify':>9} {'parse':>9}", end="")
    print(f" {'FromString':>11} {'ratio':>6}")
    print(f"{'':36} {'':>9} {'µs':>9} {'µs':>9} {'µs':>11} {'':>6}")
    for case in grpc_cases():
        n = calls if len(case.message) < 100_000 else max(calls // 10, 50)

        def classify(case: GrpcCase = case) -> object:
            return classify_method(case.method)

        def parse(case: GrpcCase = case) -> object:
            return parse_request(classify_method(case.method), case.message)

        assert parse() is not None and parse_request(classify(), case.message)[0] is not None
        t_classify = best_of(repeats, calls * 10, classify)
        t_parse = max(best_of(repeats, n, parse) - t_classify, 0.0)
        t_base = best_of(repeats, n, case.baseline)
        print(
            f"{case.name:36} {len(case.message):9d} {t_classify:9.2f} {t_parse:9.2f} "
            f"{t_base:11.2f} {(t_classify + t_parse) / t_base:6.3f}"
        )
    print("ratio = (classify_method + parse_request) / FromString of the same message.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    classifier = Classifier(routes=[("/classify", "iris")], default_model="default")
    print(
        f"{'request':36} {'bytes':>7} {'classify':>9} {'parse':>9} {'json.loads':>11} {'ratio':>6}"
    )
    print(f"{'':36} {'':>7} {'µs':>9} {'µs':>9} {'µs':>11} {'':>6}")
    for case in cases():
        info = classifier.classify(case.method, case.path)
        calls = args.calls if len(case.body) < 10_000 else max(args.calls // 10, 50)

        def classify(case: Case = case) -> object:
            return classifier.classify(case.method, case.path)

        def parse(case: Case = case) -> None:
            request = classifier.classify(case.method, case.path)
            classifier.parse_body(request, case.headers, case.body)

        t_classify = best_of(args.repeats, args.calls * 10, classify)
        t_both = best_of(args.repeats, calls, parse) if info.wants_body else t_classify
        t_parse = max(t_both - t_classify, 0.0)
        t_base = best_of(args.repeats, calls, case.baseline)
        ratio = f"{t_both / t_base:6.2f}" if t_base > 0.2 else "   n/a"
        print(
            f"{case.name:36} {len(case.body):7d} {t_classify:9.2f} {t_parse:9.2f} "
            f"{t_base:11.2f} {ratio}"
        )
    print("\nratio = (classify + parse_body) / baseline; parse = 0.00: the path says all.")
    grpc_section(args.calls, args.repeats)


if __name__ == "__main__":
    main()
