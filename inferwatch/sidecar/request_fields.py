"""The few fields of a JSON request body that tell its batch size, decoded without the rest.

An inference body is mostly its tensor data (``inputs[].data``: thousands of numbers) and the
classifier needs one number of it (``inputs[0].shape[0]``). ``json.loads`` builds a Python
object for every value; msgspec's typed decoders validate the whole document in C but build
objects only for the fields declared here, and skip the others. A body these decoders cannot
read exactly as ``json.loads`` would (non-ASCII text, ``NaN``, numbers out of range, a shape
of another type) gives ``None``, and the caller parses it with ``json`` as before: the fast
path never changes an answer, it only avoids the work.

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
