"""Model versions on the reference server (1 fp32, 2 int8, 3 ONNX Runtime), and the seed's
/predict and /batch_predict bodies, over real HTTP on 127.0.0.1."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import torch
from prometheus_client import CollectorRegistry
from support.http import wait_for_http
from support.model_server import (
    IMAGE_MODEL,
    TEXT_MODEL,
    Served,
    gate_key,
    start_server,
    tiny_config,
)
from support.polling import poll
from support.processes import inferwatch_command, serve_process

from inferwatch.server.app import ServerConfig, build_runners
from inferwatch.server.models import TEXT_LABELS, encode_text

ALL = ("1", "2", "3")
# int8 dynamic quantization rounds weights to 256 levels per tensor and activations per
# batch: logits move by about 1% of their range, probabilities (near 1/8 for these random
# weights) by a few thousandths. 0.02 leaves room over the 0.004 measured on the tiny model.
INT8_TOLERANCE = 0.02
# ONNX Runtime runs the same fp32 graph with other kernels: only summation order differs
# (1e-7 measured).
ONNX_TOLERANCE = 1e-5
TOLERANCES = {"2": INT8_TOLERANCE, "3": ONNX_TOLERANCE}
TEXTS = ["", "a", "great match", "héllo wörld ✓", "the election results came in late " * 3]
AGREEMENT = re.compile(
    r"model (\S+) version (\d) \(([^)]+)\) agrees with version 1 on ([\d.]+)% of (\d+) fixed "
    r"inputs \(top-1\); max abs probability difference (\S+)$"
)


@pytest.fixture(scope="session")
def onnx_cache(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One export per model for the whole session (the export takes seconds)."""
    return str(tmp_path_factory.mktemp("onnx-cache"))


def versions_config(cache: str, **overrides: Any) -> ServerConfig:
    settings: dict[str, Any] = {"versions": ALL, "onnx_cache_dir": cache, "llm": False}
    return tiny_config(**{**settings, **overrides})


@pytest.fixture
async def served(registry: CollectorRegistry, onnx_cache: str) -> AsyncIterator[Served]:
    s = await start_server(registry, versions_config(onnx_cache))
    yield s
    await s.stop()


def image(seed: int) -> torch.Tensor:
    return torch.rand((3, 32, 32), generator=torch.Generator().manual_seed(seed))


def v2_text(texts: list[str]) -> dict[str, Any]:
    return {"inputs": [{"name": "text", "shape": [len(texts)], "datatype": "BYTES", "data": texts}]}


def probabilities(answer: dict[str, Any]) -> torch.Tensor:
    """A V2 answer's probabilities, one row per item."""
    [tensor] = [o for o in answer["outputs"] if o["name"] == "probabilities"]
    return torch.tensor(tensor["data"]).reshape(tensor["shape"])


# --- the seed's simple API --------------------------------------------------------------------


async def test_predict_answers_the_seeds_keys_and_types(served: Served) -> None:
    status, body, _ = await served.request("POST", "/predict", json={"text": "great match"})
    assert status == 200
    assert {"label", "score", "probabilities"} <= set(body)
    assert isinstance(body["label"], str) and body["label"] in TEXT_LABELS
    assert isinstance(body["score"], float)
    assert list(body["probabilities"]) == list(TEXT_LABELS)
    assert all(isinstance(p, float) for p in body["probabilities"].values())
    assert body["score"] == body["probabilities"][body["label"]]
    assert body["score"] == max(body["probabilities"].values())
    assert served.gates[TEXT_MODEL].calls == [[b"great match"]]  # the default version, 1


async def test_max_length_keeps_that_many_tokens(served: Served) -> None:
    long = "the match went to penalties after a goalless second half"
    status, cut, _ = await served.request("POST", "/predict", json={"text": long, "max_length": 2})
    assert status == 200
    status, first_two, _ = await served.request("POST", "/predict", json={"text": long[:2]})
    assert status == 200
    assert cut == first_two
    status, whole, _ = await served.request("POST", "/predict", json={"text": long})
    assert whole["probabilities"] != cut["probabilities"]
    # Past the model's own limit (64 tokens for the tiny model), the model's limit holds.
    huge = "x" * 100
    status, _, _ = await served.request("POST", "/predict", json={"text": huge, "max_length": 1000})
    assert status == 200
    assert served.gates[TEXT_MODEL].calls[-1] == [encode_text(huge, 64)]


async def test_batch_predict_list_in_list_out(served: Served) -> None:
    long = "rain is expected tomorrow across the north"
    body = [{"text": "great match"}, {"text": ""}, {"text": long, "max_length": 4}]
    status, answer, _ = await served.request("POST", "/batch_predict", json=body)
    assert status == 200
    assert isinstance(answer, list) and len(answer) == 3
    for item, entry in zip(answer, body, strict=True):
        assert set(item) == {"label", "score"}
        assert isinstance(item["label"], str) and isinstance(item["score"], float)
        text = entry["text"][: entry.get("max_length", len(entry["text"]))]
        status, alone, _ = await served.request("POST", "/predict", json={"text": text})
        # Batch-mates pad each other: float sums differ in the last bits only.
        assert item["label"] == alone["label"]
        assert item["score"] == pytest.approx(alone["score"], abs=1e-6)
    assert (await served.request("POST", "/batch_predict", json=[]))[:2] == (200, [])
    # The {"texts": [...]} form still answers {"predictions": [...]}.
    status, old, _ = await served.request("POST", "/batch_predict", json={"texts": ["a", "b"]})
    assert status == 200 and [p["label"] for p in old["predictions"]] == [
        (await served.request("POST", "/predict", json={"text": t}))[1]["label"] for t in "ab"
    ]


SEED_BAD_REQUESTS = [
    ("/predict", {"text": "a", "max_length": 0}, '"max_length" must be a positive integer, got 0'),
    ("/predict", {"text": "a", "max_length": -3}, '"max_length" must be a positive integer'),
    (
        "/predict",
        {"text": "a", "max_length": "2"},
        "\"max_length\" must be a positive integer, got '2'",
    ),
    ("/predict", {"text": "a", "max_length": 1.5}, '"max_length" must be a positive integer'),
    ("/predict", {"text": "a", "max_length": True}, '"max_length" must be a positive integer'),
    ("/batch_predict", [{"text": "a"}, {"text": "b"}, {"text": 3}], "[2].text must be a string"),
    ("/batch_predict", [{"text": "a"}, "b"], '[1] must be a JSON object with a "text" string'),
    ("/batch_predict", [{"txt": "a"}], '[0] must be a JSON object with a "text" string'),
    (
        "/batch_predict",
        [{"text": "a"}, {"text": "b", "max_length": 0}],
        "[1].max_length must be a positive integer, got 0",
    ),
    ("/batch_predict", "text", 'a JSON list of {"text": ...} objects'),
]


@pytest.mark.parametrize(("path", "body", "message"), SEED_BAD_REQUESTS)
async def test_seed_bodies_with_bad_fields_get_a_json_400(
    registry: CollectorRegistry, path: str, body: Any, message: str
) -> None:
    served = await start_server(registry)  # version 1 only: parsing is the same for all
    try:
        status, answer, _ = await served.request("POST", path, json=body)
        assert (status, answer["reason"]) == (400, "invalid_request")
        assert message in answer["error"]
        assert all(gate.calls == [] for gate in served.gates.values())
    finally:
        await served.stop()


async def test_batch_predict_list_over_the_item_limit_is_413(
    registry: CollectorRegistry, onnx_cache: str
) -> None:
    served = await start_server(registry, tiny_config(max_request_items=2))
    try:
        body = [{"text": "a"}] * 3
        status, answer, _ = await served.request("POST", "/batch_predict", json=body)
        assert (status, answer["reason"]) == (413, "too_many_items")
    finally:
        await served.stop()


# --- versions ---------------------------------------------------------------------------------


async def test_each_version_answers_on_its_own_batcher_and_is_labelled(served: Served) -> None:
    for version in ALL:
        path = f"/v2/models/{TEXT_MODEL}/versions/{version}/infer"
        status, answer, _ = await served.request("POST", path, json=v2_text(["news", "sport"]))
        assert (status, answer["model_version"]) == (200, version)
        img = {"instances": [image(1).tolist()]}
        path = f"/v1/models/{IMAGE_MODEL}/versions/{version}:predict"
        status, answer, _ = await served.request("POST", path, json=img)
        assert status == 200 and len(answer["predictions"]) == 1
        assert served.gates[gate_key(TEXT_MODEL, version)].calls == [[b"news", b"sport"]]
        assert served.gates[gate_key(IMAGE_MODEL, version)].batch_sizes == [1]
    status, meta, _ = await served.request("GET", f"/v2/models/{TEXT_MODEL}/versions/3")
    assert (status, meta["versions"], meta["platform"]) == (200, list(ALL), "onnxruntime")
    status, meta, _ = await served.request("GET", f"/v2/models/{TEXT_MODEL}")
    assert (meta["versions"], meta["platform"]) == (list(ALL), "pytorch")
    async with served.session.get(served.url + "/metrics") as response:
        lines = (await response.text()).splitlines()
    for version in ALL:
        for model, items in ((TEXT_MODEL, 2.0), (IMAGE_MODEL, 1.0)):
            line = (
                f'model_inference_total{{model_name="{model}",model_version="{version}",'
                f'source="app",status="success"}} {items}'
            )
            assert line in lines


async def test_unversioned_paths_use_the_default_version(
    registry: CollectorRegistry, onnx_cache: str
) -> None:
    served = await start_server(registry, versions_config(onnx_cache, default_version="3"))
    try:
        status, answer, _ = await served.request(
            "POST", f"/v2/models/{TEXT_MODEL}/infer", json=v2_text(["a"])
        )
        assert (status, answer["model_version"]) == (200, "3")
        assert (await served.request("POST", "/predict", json={"text": "b"}))[0] == 200
        assert served.gates[TEXT_MODEL].calls == [[b"a"], [b"b"]]  # keyed by the default, 3
        assert served.gates[gate_key(TEXT_MODEL, "1", "3")].calls == []
    finally:
        await served.stop()


async def test_int8_and_onnx_agree_with_fp32_within_tolerance(served: Served) -> None:
    images = torch.stack([image(seed) for seed in range(4)])
    bodies = {
        TEXT_MODEL: v2_text(TEXTS),
        IMAGE_MODEL: {
            "inputs": [
                {
                    "name": "image",
                    "shape": [4, 3, 32, 32],
                    "datatype": "FP32",
                    "data": images.flatten().tolist(),
                }
            ]
        },
    }
    for model, body in bodies.items():
        answers = {}
        for version in ALL:
            path = f"/v2/models/{model}/versions/{version}/infer"
            status, answer, _ = await served.request("POST", path, json=body)
            assert (status, answer["model_version"]) == (200, version)
            answers[version] = probabilities(answer)
        expected = answers["1"]
        for version, tolerance in TOLERANCES.items():
            got = answers[version]
            assert (expected - got).abs().max().item() <= tolerance, (model, version)
            # The best label agrees wherever fp32's margin leaves no room for the tolerance.
            top2 = expected.topk(2, dim=-1).values
            clear = (top2[:, 0] - top2[:, 1]) > 2 * tolerance
            assert torch.equal(expected.argmax(-1)[clear], got.argmax(-1)[clear])


@pytest.mark.parametrize(
    "path",
    [
        f"/v2/models/{TEXT_MODEL}/versions/4/infer",
        f"/v1/models/{TEXT_MODEL}/versions/4:predict",
    ],
)
async def test_unknown_version_is_a_json_404(served: Served, path: str) -> None:
    body = v2_text(["a"]) if path.startswith("/v2") else {"instances": ["a"]}
    status, answer, headers = await served.request("POST", path, json=body)
    assert status == 404
    assert headers["Content-Type"].startswith("application/json")
    assert answer == {
        "error": f"model '{TEXT_MODEL}' has no version '4'; it has '1', '2', '3'",
        "reason": "unknown_version",
    }


async def test_a_version_left_out_is_404(registry: CollectorRegistry, onnx_cache: str) -> None:
    served = await start_server(registry, versions_config(onnx_cache, versions=("1", "3")))
    try:
        for path, body in (
            (f"/v2/models/{IMAGE_MODEL}/versions/2/infer", {}),
            (f"/v1/models/{TEXT_MODEL}/versions/2:predict", {"instances": ["a"]}),
        ):
            status, answer, _ = await served.request("POST", path, json=body)
            assert (status, answer["reason"]) == (404, "unknown_version")
            assert answer["error"].endswith("it has '1', '3'")
        status, meta, _ = await served.request("GET", f"/v2/models/{IMAGE_MODEL}")
        assert meta["versions"] == ["1", "3"]
    finally:
        await served.stop()


async def test_every_version_warms_up_before_ready(
    registry: CollectorRegistry, onnx_cache: str
) -> None:
    config = versions_config(onnx_cache, max_batch_size=8)
    served = await start_server(registry, config, wait_ready=False, gates_open=False)
    last = served.gates[gate_key(IMAGE_MODEL, "3")]  # warmed up last
    try:
        for gate in served.gates.values():
            if gate is not last:
                gate.open()
        await poll(last.entered.is_set)  # every other version has warmed up
        for key, gate in served.gates.items():
            if gate is not last:
                assert gate.batch_sizes[:2] == [1, 8], key
        assert (await served.request("GET", "/v2/health/ready"))[:2] == (503, {"ready": False})
        path = f"/v2/models/{TEXT_MODEL}/versions/2/infer"
        status, answer, _ = await served.request("POST", path, json=v2_text(["a"]))
        assert (status, answer["reason"]) == (503, "not_ready")
        last.open()
        await poll(lambda: served.server.ready)
        assert last.batch_sizes[:2] == [1, 8]
        assert (await served.request("GET", "/v2/health/ready"))[:2] == (200, {"ready": True})
        status, answer, _ = await served.request("POST", path, json=v2_text(["a"]))
        assert (status, answer["model_version"]) == (200, "2")
    finally:
        await served.stop()


async def test_agreement_with_version_1_is_logged_at_start(
    registry: CollectorRegistry, onnx_cache: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="inferwatch.server")
    served = await start_server(registry, versions_config(onnx_cache))
    await served.stop()
    found = {}
    for record in caplog.records:
        match = AGREEMENT.search(record.getMessage())
        if match:
            model, version, _, top1, items, diff = match.groups()
            found[model, version] = (float(top1), int(items), float(diff))
    assert set(found) == {(m, v) for m in (TEXT_MODEL, IMAGE_MODEL) for v in ("2", "3")}
    for (_, version), (top1, items, diff) in found.items():
        assert items == 64
        assert diff <= TOLERANCES[version]
        assert top1 >= 90.0  # the fixed set's fp32 margins are wide enough for both


def test_missing_onnxruntime_skips_version_3(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, onnx_cache: str
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    caplog.set_level(logging.WARNING, logger="inferwatch.server")
    config = versions_config(onnx_cache, versions=("1", "3"))
    runners = build_runners(config)
    assert [(r.name, r.version) for r in runners] == [(TEXT_MODEL, "1"), (IMAGE_MODEL, "1")]
    lines = [r.getMessage() for r in caplog.records]
    for model in (TEXT_MODEL, IMAGE_MODEL):
        expected = f"model {model}: version 3 (ONNX Runtime) is not served: onnxruntime is not"
        assert sum(line.startswith(expected) for line in lines) == 1
    with pytest.raises(ValueError, match=r"its default version 3 .* cannot be built here"):
        build_runners(versions_config(onnx_cache, versions=("1", "3"), default_version="3"))


def test_exports_are_cached_and_a_damaged_file_is_exported_again(
    onnx_cache: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="inferwatch.server")
    build_runners(versions_config(onnx_cache, versions=("1", "3")))  # fills the cache if empty
    caplog.clear()
    build_runners(versions_config(onnx_cache, versions=("1", "3")))
    loaded = [r.getMessage() for r in caplog.records if "ONNX export loaded from" in r.getMessage()]
    assert len(loaded) == 2
    for file in Path(onnx_cache).glob("*.onnx"):
        damaged = file.name.startswith(TEXT_MODEL)
        (tmp_path / file.name).write_bytes(b"not onnx" if damaged else file.read_bytes())
    caplog.clear()
    runners = build_runners(versions_config(str(tmp_path), versions=("1", "3")))
    lines = [r.getMessage() for r in caplog.records]
    assert any(
        f"model {TEXT_MODEL}: cached ONNX file" in line and "unusable" in line for line in lines
    )
    assert any(
        line.startswith(f"model {TEXT_MODEL}: exported to ONNX at {tmp_path}") for line in lines
    )
    assert any(line.startswith(f"model {IMAGE_MODEL}: ONNX export loaded from") for line in lines)
    eager, onnx = (r for r in runners if r.name == TEXT_MODEL)
    items = eager.sample_items(8)
    expected = torch.tensor(eager.predict_batch(items))
    assert (torch.tensor(onnx.predict_batch(items)) - expected).abs().max() <= ONNX_TOLERANCE


# --- the command ------------------------------------------------------------------------------


async def test_serve_versions_and_default_version_flags(onnx_cache: str) -> None:
    flags = ("--model-size", "tiny", "--device", "cpu", "--no-llm", "--onnx-cache-dir", onnx_cache)
    async with (
        serve_process(*flags, "--versions", "1,3", "--default-version", "3") as served,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session,
    ):
        await wait_for_http(served.url + "/v2/health/ready", served.process, timeout=120)
        url = served.url + f"/v2/models/{TEXT_MODEL}"
        async with session.post(url + "/infer", json=v2_text(["a"])) as r:
            assert (r.status, (await r.json())["model_version"]) == (200, "3")
        async with session.post(url + "/versions/2/infer", json=v2_text(["a"])) as r:
            assert (r.status, (await r.json())["reason"]) == (404, "unknown_version")
        async with session.get(url) as r:
            assert (await r.json())["versions"] == ["1", "3"]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--versions", "1,4"), "expected distinct versions among 1,2,3"),
        (("--versions", "2,3"), "--default-version 1 is not among the served versions 2,3"),
    ],
)
def test_bad_version_flags_are_a_clear_error(flags: tuple[str, ...], message: str) -> None:
    command = inferwatch_command("serve", "--model-size", "tiny", "--device", "cpu", *flags)
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert message in done.stderr
