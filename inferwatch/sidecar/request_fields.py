"""The few fields of a JSON request body that tell its model and batch size, decoded alone.

An inference body is mostly its tensor data (``inputs[].data``: thousands of numbers) or its
chat messages, and the classifier needs a few values of it (``inputs[0].shape[0]``, ``model``,
``stream``). ``json.loads`` builds a Python object for every value; msgspec's typed decoders
validate the whole document in C but build objects only for the members declared here and
skip the others (a 61 KB Open Inference Protocol body: 45 us, against 370 us for
``json.loads``, in ``benchmarks/bench_protocols.py``). A body these decoders cannot read
exactly as ``json.loads`` would (invalid UTF-8, ``NaN``, numbers beyond a double, members of
another type) is parsed by the caller with ``json`` as before: the typed path never changes an
answer, it only avoids the work.

The structs live in this pure-Python module, apart from the compiled ones that use them: mypyc
does not compile classes with a metaclass, and the decoding is msgspec's C code either way.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec


class V2Input(msgspec.Struct):
    """One of an Open Inference Protocol request's ``inputs``: only its shape."""

    shape: Any = None


class V2Request(msgspec.Struct):
    """An Open Inference Protocol (KServe v2, Triton) request: only its inputs' shapes."""

    inputs: list[V2Input] | None = None


V2_DECODER: Final = msgspec.json.Decoder(V2Request)


class OpenAIRequest(msgspec.Struct):
    """An OpenAI-compatible request (completions, chat, embeddings, responses): the members
    that name its model, ask for a stream, or count its prompts; never its messages."""

    model: Any = None
    stream: Any = None
    prompt: Any = None
    input: Any = None


OPENAI_DECODER: Final = msgspec.json.Decoder(OpenAIRequest)
