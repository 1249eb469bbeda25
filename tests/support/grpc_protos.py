"""TF Serving's and TorchServe's public gRPC APIs as generated Python modules, for the tests.

Neither server ships a Python package we can depend on for its messages, so the subset of their
``.proto`` files the tests need lives in tests/protos/ (same packages, messages and field
numbers as upstream). :func:`grpc_protos` compiles them once per test session with grpcio-tools
into a temporary directory and imports the ``*_pb2`` and ``*_pb2_grpc`` modules; tests build
real messages with them and run real grpcio servers of these services. Triton's messages come
from ``tritonclient.grpc`` (``service_pb2``, ``service_pb2_grpc``) and need no compiling.

    protos = grpc_protos()
    request = protos.predict_pb2.PredictRequest(...)
    protos.prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(servicer, server)
"""

from __future__ import annotations

import atexit
import importlib
import importlib.resources
import shutil
import sys
import tempfile
import threading
from pathlib import Path
from types import ModuleType, SimpleNamespace

PROTOS = Path(__file__).resolve().parent.parent / "protos"

# attribute on the namespace -> module generated from tests/protos/
MODULES = {
    "types_pb2": "tensorflow.core.framework.types_pb2",
    "tensor_shape_pb2": "tensorflow.core.framework.tensor_shape_pb2",
    "tensor_pb2": "tensorflow.core.framework.tensor_pb2",
    "feature_pb2": "tensorflow.core.example.feature_pb2",
    "example_pb2": "tensorflow.core.example.example_pb2",
    "model_pb2": "tensorflow_serving.apis.model_pb2",
    "input_pb2": "tensorflow_serving.apis.input_pb2",
    "predict_pb2": "tensorflow_serving.apis.predict_pb2",
    "classification_pb2": "tensorflow_serving.apis.classification_pb2",
    "regression_pb2": "tensorflow_serving.apis.regression_pb2",
    "inference_pb2": "tensorflow_serving.apis.inference_pb2",
    "get_model_metadata_pb2": "tensorflow_serving.apis.get_model_metadata_pb2",
    "prediction_service_pb2": "tensorflow_serving.apis.prediction_service_pb2",
    "prediction_service_pb2_grpc": "tensorflow_serving.apis.prediction_service_pb2_grpc",
    "torchserve_inference_pb2": "torchserve.inference_pb2",
    "torchserve_inference_pb2_grpc": "torchserve.inference_pb2_grpc",
}

_lock = threading.Lock()
_compiled: SimpleNamespace | None = None


def _compile(out: Path) -> None:
    from grpc_tools import protoc

    well_known = importlib.resources.files("grpc_tools") / "_proto"
    sources = sorted(str(path.relative_to(PROTOS)) for path in PROTOS.rglob("*.proto"))
    status = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{PROTOS}",
            f"-I{well_known}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            *sources,
        ]
    )
    if status != 0:
        raise RuntimeError(f"protoc failed ({status}) on {PROTOS}")


def grpc_protos() -> SimpleNamespace:
    """The generated modules, by the names of :data:`MODULES`; compiled on the first call."""
    global _compiled
    with _lock:
        if _compiled is None:
            out = Path(tempfile.mkdtemp(prefix="inferwatch-protos-"))
            atexit.register(shutil.rmtree, out, ignore_errors=True)
            _compile(out)
            sys.path.insert(0, str(out))
            importlib.invalidate_caches()
            modules: dict[str, ModuleType] = {
                name: importlib.import_module(module) for name, module in MODULES.items()
            }
            _compiled = SimpleNamespace(**modules)
        return _compiled
