"""A real OpenAI-compatible LLM server nobody here wrote: Hugging Face's ``transformers serve``
(FastAPI + uvicorn; ``/v1/chat/completions`` streamed and not, ``/health``) on the CPU,
serving a tiny Llama the test makes with random weights (no download).

transformers, its serving extras and the CPU wheel of torch live in a virtualenv of their
own, ``<repo>/.venv-openai-server`` (their pins may clash with ours), made once per machine
and kept while its stamp file names the same packages: 52 s with an empty pip cache on a
2-core machine, 1.2 GB, most of it torch, whose CPU wheel ``pip install torch==2.13.0`` finds
on this kind of machine's disk.

The model is made in that virtualenv by the test: a ``LlamaConfig`` of 2 layers, hidden size
32, random weights (seeded), and a word-level tokenizer built with the ``tokenizers`` library
from a list of words, with a chat template; both saved with ``save_pretrained`` into a folder
named :data:`MODEL`, which ``transformers serve`` loads from its working directory (so the
served name, and the ``"model"`` of requests, is just ``tiny-llama``). Greedy decoding of
random weights repeats one word; every word decodes to text, so every generated token but
the end-of-sequence one is one content chunk.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from support.http import answers_200
from support.ports import LOOPBACK, free_port
from support.processes import end_process
from support.venvs import isolated_venv, run

# torch first: pinned to the CPU wheel, so nothing asks for a (multi-GB) CUDA build. The
# rest pins what transformers[serving] 5.23.0 resolved to on 2026-12-01.
PACKAGES = (
    "torch==2.13.0",
    "transformers[serving]==5.23.0",
    "tokenizers==0.23.3",
    "huggingface-hub==2.4.0",
    "safetensors==0.8.0",
    "accelerate==1.15.0",
    "fastapi==0.165.0",
    "starlette==1.10.0",
    "uvicorn==0.54.0",
    "openai==3.57.0",
    "pydantic==2.14.4",
    "numpy==2.4.6",
)
MODEL = "tiny-llama"
START_TIMEOUT = 120.0

# Runs in the server's virtualenv: argv[1] the folder to save the model in. Prints the
# tokenizer's vocabulary as JSON ({token: id}).
MAKE_MODEL = """
import json, sys
from pathlib import Path
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

folder = Path(sys.argv[1])
specials = ["<unk>", "<s>", "</s>", "<pad>"]
words = (
    "user assistant system : the a model server token stream first last time per output "
    "input count sidecar metric latency fast slow small tiny random weight hello world "
    "answer question"
).split()
vocab = {token: index for index, token in enumerate(specials + words)}
backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
backend.decoder = decoders.WordPiece(prefix="##")  # words joined by spaces
tokenizer = PreTrainedTokenizerFast(
    tokenizer_object=backend,
    unk_token="<unk>",
    bos_token="<s>",
    eos_token="</s>",
    pad_token="<pad>",
)
tokenizer.chat_template = (
    "{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}assistant : {% endif %}"
)
torch.manual_seed(0)
config = LlamaConfig(
    vocab_size=len(vocab),
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=3,
    tie_word_embeddings=True,
)
model = LlamaForCausalLM(config)
model.generation_config = GenerationConfig(
    bos_token_id=1, eos_token_id=2, pad_token_id=3, do_sample=False, max_new_tokens=16
)
model.save_pretrained(folder)
tokenizer.save_pretrained(folder)
print(json.dumps(vocab))
"""


def server_venv() -> Path:
    """The python of transformers serve's own virtualenv (made once per machine)."""
    return isolated_venv(".venv-openai-server", PACKAGES)


def _offline_env(folder: Path) -> dict[str, str]:
    """The server's environment: no hub, no update check, caches in ``folder``, one torch
    thread (two cores here, shared with the test's event loop: steadier timings)."""
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_HUB_DISABLE_UPDATE_CHECK="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HOME=str(folder / "hf-home"),
        OMP_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
        NO_COLOR="1",
    )
    return env


@dataclass
class OpenAIServer:
    """A running ``transformers serve`` and what it serves."""

    process: subprocess.Popen[bytes]
    port: int
    model: str
    vocab: dict[str, int]
    log: Path

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def eos_token_id(self) -> int:
        return self.vocab["</s>"]

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-8000:]


def _wait_ready(server: OpenAIServer) -> None:
    """Poll /health until it answers 200 (the forced model is loaded before uvicorn starts);
    fails at once, with the server's output, if it exits first."""
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        code = server.process.poll()
        if code is not None:
            pytest.fail(
                f"transformers serve exited with {code} before it was ready:\n{server.output()}"
            )
        if answers_200(server.url + "/health"):
            return
        if time.monotonic() > deadline:
            pytest.fail(f"transformers serve not ready after {START_TIMEOUT} s:\n{server.output()}")
        time.sleep(0.1)  # the poll's interval


@contextlib.contextmanager
def running_openai_server(folder: Path) -> Iterator[OpenAIServer]:
    """``transformers serve`` on a free loopback port, on the CPU, serving the tiny Llama made
    now in ``folder``; yielded ready, stopped at the end."""
    python = server_venv()
    env = _offline_env(folder)
    vocab = json.loads(
        run([str(python), "-c", MAKE_MODEL, str(folder / MODEL)], "making the model", 120, env)
    )
    port = free_port()
    command = [
        str(python.parent / "transformers"),
        "serve",
        *("--host", LOOPBACK, "--port", str(port), "--device", "cpu", "--dtype", "float32"),
        *("--log-level", "warning"),
        MODEL,  # pinned: loaded at start, the only model it answers for
    ]
    log = folder / "transformers-serve.log"
    with open(log, "wb") as output:
        process = subprocess.Popen(
            command, cwd=folder, env=env, stdout=output, stderr=subprocess.STDOUT
        )
    server = OpenAIServer(process, port, MODEL, vocab, log)
    try:
        _wait_ready(server)
        yield server
    finally:
        end_process(process)
