"""The hot-path framing of whole data messages (actorq/_remote/_frames.py), against wsproto.

What ``encode`` writes, wsproto reads as the same message, on either side;
what wsproto writes for a whole message, ``decode`` reads as the same
message; and ``decode`` stops, at a frame boundary, at every frame it does
not take, so that wsproto reads (or refuses) it as before.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Message, Ping, TextMessage

from actorq._remote import _common
from actorq._remote._frames import decode, encode

LIMIT = 1 << 20
messages = st.one_of(
    st.text(max_size=300),
    st.binary(max_size=300),
    st.sampled_from([0, 125, 126, 127, 65535, 65536, 70000]).map(lambda n: "é" * (n // 2)),
    st.sampled_from([0, 125, 126, 65535, 65536, 70000]).map(lambda n: b"\x00" * n),
)


def _read_by_wsproto(frame: bytes, *, by_client: bool) -> list[str | bytes]:
    reader = Connection(ConnectionType.CLIENT if by_client else ConnectionType.SERVER)
    reader.receive_data(frame)
    out: list[str | bytes] = []
    for event in reader.events():
        assert isinstance(event, Message), event
        assert event.message_finished
        out.append(bytes(event.data) if isinstance(event, BytesMessage) else event.data)
    return out


def _written_by_wsproto(message: str | bytes, *, by_client: bool) -> bytes:
    writer = Connection(ConnectionType.CLIENT if by_client else ConnectionType.SERVER)
    event = TextMessage(data=message) if isinstance(message, str) else BytesMessage(data=message)
    return writer.send(event)


@given(messages, st.booleans())
def test_what_encode_writes_wsproto_reads_as_the_same_message(
    message: str | bytes, mask: bool
) -> None:
    # a client's frame (masked) is read by a server, a server's by a client
    assert _read_by_wsproto(encode(message, mask=mask), by_client=not mask) == [message]


@given(st.lists(messages, max_size=4), st.booleans())
def test_what_wsproto_writes_decode_reads_as_the_same_messages(
    batch: list[str | bytes], by_client: bool
) -> None:
    data = b"".join(_written_by_wsproto(m, by_client=by_client) for m in batch)
    got, used, stopped = decode(data, masked=by_client, max_size=LIMIT)
    assert (got, used, stopped) == (batch, len(data), False)


@given(messages, st.booleans(), st.data())
def test_a_frame_cut_short_is_left_whole_for_the_next_read(
    message: str | bytes, mask: bool, data: st.DataObject
) -> None:
    first = encode("before", mask=mask)
    frame = encode(message, mask=mask)
    cut = data.draw(st.integers(0, len(frame) - 1))
    got, used, stopped = decode(first + frame[:cut], masked=mask, max_size=LIMIT)
    assert (got, used, stopped) == (["before"], len(first), False)
    # the rest arrives: the whole message is read
    got, used, stopped = decode(frame, masked=mask, max_size=LIMIT)
    assert (got, used, stopped) == ([message], len(frame), False)


def _frame(first: int, payload: bytes, *, length: bytes | None = None) -> bytes:
    # an unmasked frame, as a server writes it, with any first byte and length field
    return bytes((first,)) + (length if length is not None else bytes((len(payload),))) + payload


@pytest.mark.parametrize(
    ("frame", "why"),
    [
        (_frame(0x89, b"ping"), "a ping"),
        (_frame(0x8A, b"pong"), "a pong"),
        (_frame(0x88, struct.pack("!H", 1000)), "a close"),
        (_frame(0x01, b"part"), "the first fragment of a message"),
        (_frame(0x80, b"rest"), "a continuation"),
        (_frame(0xC1, b"x"), "a reserved bit"),
        (_frame(0x83, b"x"), "an unknown opcode"),
        (_frame(0x81, b"\xff\xfe"), "text that is not UTF-8"),
        (_frame(0x81, b"x", length=bytes((126,)) + struct.pack("!H", 1)), "a 16-bit length < 126"),
        (
            _frame(0x82, b"x", length=bytes((127,)) + struct.pack("!Q", 1)),
            "a 64-bit length < 65536",
        ),
        (_frame(0x82, b"x" * 100), "a payload over the limit"),
        (encode("masked", mask=True), "a masked frame where none should be"),
    ],
)
def test_decode_stops_at_a_frame_it_does_not_take(frame: bytes, why: str) -> None:
    before = encode("ok", mask=False)
    got, used, stopped = decode(before + frame + before, masked=False, max_size=99)
    assert (got, used, stopped) == (["ok"], len(before), True), why


def test_an_unmasked_frame_is_not_taken_from_a_client() -> None:
    got, used, stopped = decode(encode("plain", mask=False), masked=True, max_size=LIMIT)
    assert (got, used, stopped) == ([], 0, True)


def test_wsproto_still_reads_and_refuses_what_decode_leaves() -> None:
    # the transport hands wsproto the bytes from the frame decode stopped at
    data = encode("a", mask=False) + _frame(0x89, b"p") + _frame(0x81, b"\xff")
    got, used, stopped = decode(data, masked=False, max_size=LIMIT)
    assert (got, stopped) == (["a"], True)
    reader = Connection(ConnectionType.CLIENT)
    reader.receive_data(data[used:])
    events = list(reader.events())
    assert isinstance(events[0], Ping)
    assert isinstance(events[1], CloseConnection)
    assert events[1].code == 1007  # invalid frame payload data


def test_the_hot_path_sees_when_wsproto_holds_nothing() -> None:
    # The transport reads through the hot path only while wsproto holds no
    # part of a frame; this looks at wsproto's private state. If a wsproto
    # release changes it, this fails, rather than every message silently
    # going the slow way.
    connection = Connection(ConnectionType.SERVER)
    assert _common._wsproto_idle(connection)
    connection.receive_data(encode("half a frame", mask=True)[:5])
    assert not list(connection.events())
    assert not _common._wsproto_idle(connection)
    fragment = Connection(ConnectionType.CLIENT)
    fragment.receive_data(_frame(0x01, b"first part"))
    assert [e.data for e in fragment.events() if isinstance(e, TextMessage)] == ["first part"]
    assert not _common._wsproto_idle(fragment)  # the rest of the message is wsproto's
