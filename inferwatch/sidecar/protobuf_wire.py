"""A minimal reader of the protobuf wire format, enough to pick a few fields out of a message.

The gRPC proxy forwards request messages as raw bytes; it only needs a model name, a version
and a batch size from them. Decoding whole messages with generated classes would copy tensor
payloads (often megabytes) and tie the package to each server's ``.proto`` files, so this module
walks the encoding instead: :func:`iter_fields` yields ``(field number, wire type, value)`` where
a length-delimited value is a :class:`memoryview` slice of the input (no copy), and skipping a
field of any size costs one varint read.

Work is bounded: a varint is at most 10 bytes, every length is checked against its enclosing
message, no recursion happens here (callers descend a fixed number of levels), and a message
with more than ``max_fields`` fields is refused. Every malformation raises :class:`WireError`,
a :class:`ValueError`, so callers need catch one thing.
"""

from __future__ import annotations

from collections.abc import Iterator

VARINT = 0
I64 = 1
LEN = 2
I32 = 5

MAX_FIELDS = 1 << 14  # fields read from one message before it is taken for hostile input
MAX_FIELD_NUMBER = (1 << 29) - 1
_UINT64_MASK = (1 << 64) - 1
_INT64_SIGN = 1 << 63

Buffer = bytes | bytearray | memoryview
Value = int | memoryview  # an int for VARINT, I64 and I32; a slice of the input for LEN


class WireError(ValueError):
    """The bytes are not a well-formed protobuf message."""


def as_view(data: Buffer) -> memoryview:
    """A byte-wise view of ``data`` that slices without copying."""
    view = data if isinstance(data, memoryview) else memoryview(data)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return view


def read_varint(data: memoryview, pos: int, end: int) -> tuple[int, int]:
    """The unsigned varint at ``pos`` (kept to 64 bits, as protobuf does) and the next offset."""
    if pos >= end:
        raise WireError("truncated varint")
    byte = data[pos]
    if byte < 0x80:
        return byte, pos + 1
    result = byte & 0x7F
    shift = 7
    pos += 1
    while pos < end:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result & _UINT64_MASK, pos
        shift += 7
        if shift >= 70:
            raise WireError("varint longer than 10 bytes")
    raise WireError("truncated varint")


def iter_fields(data: Buffer, *, max_fields: int = MAX_FIELDS) -> Iterator[tuple[int, int, Value]]:
    """Each field of the message in ``data``, in wire order: ``(number, wire type, value)``.

    Raises :class:`WireError` on a malformed field, on a group (no proto3 message has one),
    or past ``max_fields`` fields.
    """
    view = as_view(data)
    pos = 0
    end = len(view)
    count = 0
    while pos < end:
        count += 1
        if count > max_fields:
            raise WireError(f"more than {max_fields} fields")
        tag = view[pos]  # one byte for field numbers up to 15, the common case: inlined
        if tag < 0x80:
            pos += 1
        else:
            tag, pos = read_varint(view, pos, end)
        number = tag >> 3
        wire_type = tag & 7
        if number == 0 or number > MAX_FIELD_NUMBER:
            raise WireError(f"invalid field number {number}")
        if wire_type == LEN:
            if pos < end and view[pos] < 0x80:
                length = view[pos]
                pos += 1
            else:
                length, pos = read_varint(view, pos, end)
            stop = pos + length
            if stop > end:
                raise WireError("length-delimited field runs past the message")
            yield number, LEN, view[pos:stop]
            pos = stop
        elif wire_type == VARINT:
            value, pos = read_varint(view, pos, end)
            yield number, VARINT, value
        elif wire_type == I64:
            stop = pos + 8
            if stop > end:
                raise WireError("truncated 64-bit field")
            yield number, I64, int.from_bytes(view[pos:stop], "little")
            pos = stop
        elif wire_type == I32:
            stop = pos + 4
            if stop > end:
                raise WireError("truncated 32-bit field")
            yield number, I32, int.from_bytes(view[pos:stop], "little")
            pos = stop
        else:
            raise WireError(f"unsupported wire type {wire_type}")


def iter_packed_varints(data: memoryview, *, max_values: int = MAX_FIELDS) -> Iterator[int]:
    """The varints of a packed repeated field's payload (int32, int64, uint64, bool, enum)."""
    pos = 0
    end = len(data)
    count = 0
    while pos < end:
        count += 1
        if count > max_values:
            raise WireError(f"more than {max_values} packed values")
        value, pos = read_varint(data, pos, end)
        yield value


def to_int64(value: int) -> int:
    """A varint read as a two's-complement int64 (how int64 and int32 fields encode negatives)."""
    return value - (1 << 64) if value & _INT64_SIGN else value


def read_text(data: memoryview, max_chars: int) -> str:
    """A string field's first ``max_chars`` characters; invalid UTF-8 becomes U+FFFD.

    Decodes at most ``4 * max_chars`` bytes, so a huge string costs no more than a short one.
    """
    return str(data[: 4 * max_chars], "utf-8", "replace")[:max_chars]
