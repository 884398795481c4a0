"""The protobuf wire format's small pieces, for the paths that write or read packed bytes themselves."""

VARINT, FIXED64, LENGTH, FIXED32 = 0, 1, 2, 5


def encode_varint(value: int) -> bytes:
    """A non-negative integer as a base-128 varint."""
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def decode_varint(data: bytes, pos: int) -> tuple[int, int]:
    """The varint starting at ``pos`` and the position after it."""
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def field_key(number: int, wire_type: int = LENGTH) -> bytes:
    """The key bytes of a field."""
    return encode_varint(number << 3 | wire_type)


def length_delimited(number: int, payload: bytes) -> bytes:
    """A whole length-delimited field: key, length, payload."""
    return field_key(number) + encode_varint(len(payload)) + payload
