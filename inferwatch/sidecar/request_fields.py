"""The few fields of a JSON request body that tell its batch size, decoded without the rest.

An inference body is mostly its tensor data (``inputs[].data``: thousands of numbers) and the
classifier needs one number of it (``inputs[0].shape[0]``). ``json.loads`` builds a Python
object for every value; msgspec's typed decoders validate the whole document in C but build
objects only for the fields declared here, and skip the others. A body these decoders cannot
read exactly as ``json.loads`` would (non-ASCII text, ``NaN``, numbers out of range, a shape
of another type) gives ``None``, and the caller parses it with ``json`` as before: the fast
path never changes an answer, it only avoids the work.

The structs live in this pure-Python module: mypyc does not compile classes with a
metaclass, and the decoding itself is msgspec's C code either way.
"""

from __future__ import annotations

from typing import Any, Final, TypeVar

import msgspec

_T = TypeVar("_T")


class V2Input(msgspec.Struct):
    """One of an Open Inference Protocol request's ``inputs``: only its shape."""

    shape: Any = None


class V2Request(msgspec.Struct):
    """An Open Inference Protocol (KServe v2, Triton) request: only its inputs' shapes."""

    inputs: list[V2Input] | None = None


_V2_DECODER: Final = msgspec.json.Decoder(V2Request)


def _decoded(decoder: msgspec.json.Decoder[_T], body: bytes) -> _T | None:
    """``body`` decoded, or None where ``json.loads`` might read it otherwise (or not at
    all): msgspec skips undeclared strings without checking their UTF-8, and rejects NaN,
    Infinity and numbers beyond a double, which ``json`` reads."""
    if not body.isascii():
        return None
    try:
        return decoder.decode(body)
    except (msgspec.MsgspecError, RecursionError):
        return None


def v2_request(body: bytes) -> V2Request | None:
    """The inputs' shapes of an Open Inference Protocol JSON body (see :func:`_decoded`)."""
    return _decoded(_V2_DECODER, body)
