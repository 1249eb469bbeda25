"""`inferwatch serve` as a process: startup, a request, SIGTERM with work in flight, bad flags."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
import torch
from support.ports import LOOPBACK
from support.processes import inferwatch_command, serve_process

from inferwatch.server.app import TEXT_MODEL, ServerConfig, build_runners
from inferwatch.server.models import MODEL_SIZES, TextClassifier

SERVE = inferwatch_command("serve", "--host", LOOPBACK, "--port", "0")


def test_parser_does_not_import_torch() -> None:
    code = (
        "import sys, inferwatch.cli as c; p = c.build_parser(); "
        "a = p.parse_args(['serve', '--max-batch-size', '8', '--preferred-batch-sizes', '2,4']); "
        "assert 'torch' not in sys.modules, 'torch imported'; "
        "print(a.max_batch_size, a.preferred_batch_sizes, a.max_queue_delay_ms, a.port)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["8", "(2,", "4)", "5.0", "8000"]


async def test_sigterm_finishes_requests_in_flight_and_exits_0() -> None:
    async with serve_process(
        *("--model-size", "tiny", "--device", "cpu", "--max-queue-delay-ms", "60000")
    ) as served:
        assert served.device == "cpu"
        url = served.url
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:

            async def ready() -> bool:
                async with session.get(url + "/v2/health/ready") as r:
                    return r.status == 200

            ok = False
            for _ in range(500):
                if ok := await ready():
                    break
                await asyncio.sleep(0.01)
            assert ok
            # A 60 s batch window: the requests are still queued when SIGTERM lands.
            requests = [
                asyncio.create_task(session.post(url + "/predict", json={"text": f"t{i}"}))
                for i in range(4)
            ]
            queued = f'model_inference_queue_length{{model_name="{TEXT_MODEL}",source="app"}} 4.0'

            async def scrape() -> str:
                async with session.get(url + "/metrics") as r:
                    return await r.text()

            for _ in range(1000):
                if queued in (await scrape()).splitlines():
                    break
                await asyncio.sleep(0.01)
            assert queued in (await scrape()).splitlines()
            served.process.send_signal(signal.SIGTERM)
            responses = await asyncio.gather(*requests)
            bodies = [await r.json() for r in responses]
            assert [r.status for r in responses] == [200] * 4
            assert all(set(b) == {"label", "score", "top_k", "probabilities"} for b in bodies)
        assert await asyncio.wait_for(served.process.wait(), 30) == 0


def _run_serve(*flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SERVE, *flags], capture_output=True, text=True, timeout=60)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_cuda_without_a_gpu_is_a_clear_error() -> None:
    done = _run_serve("--device", "cuda")
    assert done.returncode == 2
    assert "--device cuda: no CUDA GPU is usable here" in done.stderr


def test_bad_weights_are_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "text.pt"
    torch.save({"not": torch.zeros(1)}, path)
    done = _run_serve("--model-size", "tiny", "--weights", f"{TEXT_MODEL}={path}")
    assert done.returncode == 2
    assert f"weights in {path} do not fit TextClassifier" in done.stderr
    done = _run_serve("--weights", "resnet=/nonexistent.pt")
    assert done.returncode == 2
    assert "--weights names unknown models ['resnet']" in done.stderr


def test_weights_file_replaces_the_random_weights(tmp_path: Path) -> None:
    text_config = MODEL_SIZES["tiny"][0]
    torch.manual_seed(1234)
    trained = TextClassifier(text_config).eval()
    path = tmp_path / "text.pt"
    torch.save(trained.state_dict(), path)
    config = ServerConfig(
        device="cpu", model_size="tiny", weights={TEXT_MODEL: str(path)}, versions=("1",)
    )
    loaded, _ = build_runners(config)
    default, _ = build_runners(ServerConfig(device="cpu", model_size="tiny", versions=("1",)))
    with torch.inference_mode():
        tokens = torch.tensor([[257, 104, 105]])
        expected = trained(tokens, tokens == 256).softmax(-1)[0]
    got = torch.tensor(loaded.predict_batch([b"hi"])[0])
    assert torch.allclose(got, expected, atol=1e-6)
    assert not torch.allclose(torch.tensor(default.predict_batch([b"hi"])[0]), expected, atol=1e-3)


def test_random_weights_are_the_same_in_every_process() -> None:
    code = (
        "from inferwatch.server.app import ServerConfig, build_runners; import json; "
        "text, image = build_runners(ServerConfig(device='cpu', model_size='tiny', "
        "versions=('1',))); "
        "print(json.dumps(text.predict_batch([b'same'])[0]))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    text, _ = build_runners(ServerConfig(device="cpu", model_size="tiny", versions=("1",)))
    assert torch.allclose(
        torch.tensor(json.loads(done.stdout)), torch.tensor(text.predict_batch([b"same"])[0])
    )
