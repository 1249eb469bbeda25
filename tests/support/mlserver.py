"""A real MLServer (Seldon's Open Inference Protocol server) serving a tiny scikit-learn model.

MLServer and scikit-learn live in a virtualenv of their own, ``<repo>/.venv-mlserver``
(their pins may clash with ours), made once per machine and kept while its stamp file names
the same packages. The model is trained in that virtualenv by the test, on a few synthetic
rows; its own ``predict`` on the rows a test sends is written beside it, so the test can
compare what came back through the sidecar with what the model says, without sklearn here.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from support.http import answers_200
from support.ports import LOOPBACK, free_port
from support.processes import end_process
from support.venvs import isolated_venv, run

PACKAGES = (
    "mlserver==1.7.1",
    "mlserver-sklearn==1.7.1",
    "scikit-learn==1.9.1",
    "joblib==1.6.0",
)
MODEL = "tiny-logreg"  # served with a version
MODEL_VERSION = "v1"
UNVERSIONED = "tiny-logreg-unversioned"  # the same model, served without one
START_TIMEOUT = 90.0

# Runs in MLServer's virtualenv: argv[1] the models' folder, argv[2] a JSON list of rows to
# predict, argv[3] a JSON object {model name: version ("" for none)}. Trains a
# LogisticRegression on synthetic data, saves it with joblib, writes a model-settings.json
# for each name (all serving that one file) and prints the model's own predict() of the rows
# as JSON.
TRAIN = """
import json, sys
from pathlib import Path
import joblib
import numpy as np
from sklearn.linear_model import LogisticRegression

folder, rows, models = Path(sys.argv[1]), json.loads(sys.argv[2]), json.loads(sys.argv[3])
rng = np.random.default_rng(7)
features = rng.normal(size=(40, 4))
labels = (features[:, 0] + 0.5 * features[:, 1] - features[:, 3] > 0).astype(np.int64)
model = LogisticRegression().fit(features, labels)
joblib.dump(model, folder / "model.joblib")
for name, version in models.items():
    parameters = {"uri": str(folder / "model.joblib")}
    if version:
        parameters["version"] = version
    settings = {
        "name": name,
        "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": parameters,
    }
    (folder / name).mkdir()
    (folder / name / "model-settings.json").write_text(json.dumps(settings))
print(json.dumps(model.predict(np.asarray(rows, dtype=np.float64)).tolist()))
"""


def mlserver_venv() -> Path:
    """The python of MLServer's own virtualenv (made once per machine)."""
    return isolated_venv(".venv-mlserver", PACKAGES)


@dataclass
class MLServer:
    """A running ``mlserver start`` and what its model says."""

    process: subprocess.Popen[bytes]
    http_port: int
    grpc_port: int
    model: str  # served as version ``version``
    version: str
    unversioned: str  # the same model, served without a version
    rows: list[list[float]]
    predictions: list[int]  # the model's own predict() of ``rows``
    log: Path

    @property
    def http_url(self) -> str:
        return f"http://{LOOPBACK}:{self.http_port}"

    @property
    def grpc_target(self) -> str:
        return f"{LOOPBACK}:{self.grpc_port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-8000:]


def _grpc_ready(target: str) -> bool:
    import tritonclient.grpc as triton
    from tritonclient.utils import InferenceServerException

    with triton.InferenceServerClient(target) as client:
        try:
            return bool(client.is_server_ready(client_timeout=2))
        except InferenceServerException:
            return False


def _wait_ready(server: MLServer) -> None:
    """Poll HTTP /v2/health/ready and the gRPC ServerReady until both answer ready; fails at
    once, with MLServer's output, if it exits first."""
    deadline = time.monotonic() + START_TIMEOUT
    ready_url = server.http_url + "/v2/health/ready"
    while True:
        code = server.process.poll()
        if code is not None:
            pytest.fail(f"mlserver exited with {code} before it was ready:\n{server.output()}")
        if answers_200(ready_url) and _grpc_ready(server.grpc_target):
            return
        if time.monotonic() > deadline:
            pytest.fail(f"mlserver not ready after {START_TIMEOUT} s:\n{server.output()}")
        time.sleep(0.1)  # the poll's interval


@contextlib.contextmanager
def running_mlserver(folder: Path, rows: list[list[float]]) -> Iterator[MLServer]:
    """MLServer on free loopback ports (HTTP and gRPC; no metrics port, one process) serving
    a LogisticRegression trained now in ``folder`` under two names (with a version and
    without); yielded ready, stopped at the end."""
    python = mlserver_venv()
    models = {MODEL: MODEL_VERSION, UNVERSIONED: ""}
    predicted = run(
        [str(python), "-c", TRAIN, str(folder), json.dumps(rows), json.dumps(models)],
        "training the model",
        120,
    )
    http_port, grpc_port = free_port(), free_port()
    settings: dict[str, Any] = {
        "host": LOOPBACK,
        "http_port": http_port,
        "grpc_port": grpc_port,
        "metrics_endpoint": None,  # no metrics server, so no third port
        "parallel_workers": 0,  # inference in the server's own process
    }
    (folder / "settings.json").write_text(json.dumps(settings))
    log = folder / "mlserver.log"
    with open(log, "wb") as output:
        process = subprocess.Popen(
            [str(python.parent / "mlserver"), "start", str(folder)],
            cwd=folder,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    server = MLServer(
        process,
        http_port,
        grpc_port,
        MODEL,
        MODEL_VERSION,
        UNVERSIONED,
        rows,
        json.loads(predicted),
        log,
    )
    try:
        _wait_ready(server)
        yield server
    finally:
        end_process(process)
