"""RFC 6455 framing of whole data messages: the hot path beside wsproto.

Sans-io, like wsproto: bytes in, messages out, and back. wsproto drives
every connection (the handshake, control frames, fragments, closing, every
protocol error); these two functions only take over the frames that carry
nearly all of the traffic, a whole text or binary message in one frame,
where wsproto's general machinery (a buffer object, a frame and a message
decoder, an event generator) costs more per message than the rest of a
request's framing and decoding together.

:func:`encode` writes exactly the frame wsproto writes for such a message.
:func:`decode` reads such frames off the front of a buffer and stops at the
first frame it does not take (any other opcode, a fragment, reserved bits, a
mask bit on the wrong side, a non-minimal length, text that is not UTF-8, or
a payload over the size limit): from there the caller hands the bytes to
wsproto, which handles or refuses that frame as it always does.
"""

from __future__ import annotations

import os
import struct
from typing import Final

__all__ = ["decode", "encode"]

_FIN: Final = 0x80
_TEXT: Final = 0x1
_BINARY: Final = 0x2
_MASKED: Final = 0x80
_HEADER_16: Final = struct.Struct("!BBH")
_HEADER_64: Final = struct.Struct("!BBQ")
_LENGTH_16: Final = struct.Struct("!H")
_LENGTH_64: Final = struct.Struct("!Q")


def _masked(payload: bytes, key: bytes) -> bytes:
    # XOR with the key repeated: one big-integer operation, as wsproto does
    n = len(payload)
    if not n:
        return payload
    keys = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(keys, "little")).to_bytes(
        n, "little"
    )


def encode(message: str | bytes, *, mask: bool) -> bytes:
    """The frame of one whole message: text for ``str``, binary for ``bytes``.

    ``mask``: a client's frame, masked with a fresh key from
    :func:`os.urandom`, as RFC 6455 requires of clients.
    """
    if isinstance(message, str):
        payload, first = message.encode(), _FIN | _TEXT
    else:
        payload, first = bytes(message), _FIN | _BINARY
    n = len(payload)
    bit = _MASKED if mask else 0
    if n < 126:
        header = bytes((first, bit | n))
    elif n < 1 << 16:
        header = _HEADER_16.pack(first, bit | 126, n)
    else:
        header = _HEADER_64.pack(first, bit | 127, n)
    if not mask:
        return header + payload
    key = os.urandom(4)
    return header + key + _masked(payload, key)


def decode(
    buffer: bytes | bytearray, *, masked: bool, max_size: int
) -> tuple[list[str | bytes], int, bool]:
    """The whole messages at the front of ``buffer``: ``(messages, used, stopped)``.

    ``used`` is how many bytes they took; ``stopped`` is True if the frame at
    ``used`` is one :func:`decode` does not take (see the module's doc), and
    False if the buffer ends there or in the middle of a frame that it takes
    once complete. ``masked``: frames must be masked (a server reading a
    client); ``max_size``: the largest payload taken, in bytes.
    """
    messages: list[str | bytes] = []
    end = len(buffer)
    pos = 0
    while end - pos >= 2:
        first, second = buffer[pos], buffer[pos + 1]
        if first not in (_FIN | _TEXT, _FIN | _BINARY) or bool(second & _MASKED) is not masked:
            return messages, pos, True
        n = second & 0x7F
        start = pos + 2
        if n == 126:
            if end - start < 2:
                break
            (n,) = _LENGTH_16.unpack_from(buffer, start)
            start += 2
            if n < 126:
                return messages, pos, True
        elif n == 127:
            if end - start < 8:
                break
            (n,) = _LENGTH_64.unpack_from(buffer, start)
            start += 8
            if n < 1 << 16:
                return messages, pos, True
        if n > max_size:
            return messages, pos, True
        if masked:
            if end - start < 4 + n:
                break
            key = bytes(buffer[start : start + 4])
            payload = _masked(bytes(buffer[start + 4 : start + 4 + n]), key)
            stop = start + 4 + n
        else:
            if end - start < n:
                break
            payload = bytes(buffer[start : start + n])
            stop = start + n
        if first == _FIN | _TEXT:
            try:
                messages.append(payload.decode())
            except UnicodeDecodeError:
                return messages, pos, True
        else:
            messages.append(payload)
        pos = stop
    return messages, pos, False
