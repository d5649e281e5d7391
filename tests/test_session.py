"""The connection rules on their own: a ClientSession against a ServerSession,
frames passed by hand, no sockets and no trio.

Each rule of docs/protocol.md that concerns a connection (hello, versions,
auth, limits, ids, in-flight accounting, cancel, release, close codes) is
checked by hand; a hypothesis test feeds the server session arbitrary frame
sequences and checks its invariants.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import actorq
from actorq._core import _ops as ops
from actorq._remote import _session as s
from actorq._remote import _wire as w

U1 = uuid.UUID("12345678-1234-5678-1234-567812345678")
U2 = uuid.UUID("87654321-4321-8765-4321-876543210987")
JOB = actorq.DequeuedJob(id=U1, token=U2, dependencies=[], type="t", args=None, channel="")

Server = s.ServerSession[str]
Client = s.ClientSession[str]


def allow_all(token: str | None) -> str | None:
    return "everything"


def server_session(**options: Any) -> Server:
    options.setdefault("authenticate", allow_all)
    return s.ServerSession(**options)


def frame_of(event: object) -> dict[str, Any]:
    assert isinstance(event, s.Send | s.Close | s.Greeted), event
    assert event.frame is not None
    obj: dict[str, Any] = orjson.loads(event.frame)
    return obj


def connected(
    server: Server | None = None, **client_options: Any
) -> tuple[Client, Server, s.Greeted[str]]:
    """A client and a server session past hello and welcome."""
    server = server or server_session()
    client: Client = s.ClientSession(**client_options)
    greeted = server.receive(client.hello("hello-waiter", token="tok", client="tests"))
    assert isinstance(greeted, s.Greeted)
    reply = client.receive(greeted.frame)
    assert isinstance(reply, s.Reply)
    assert (reply.waiter, type(reply.message)) == ("hello-waiter", w.Welcome)
    return client, server, greeted


def send_request(client: Client, server: Server, make: Any, waiter: str = "w") -> s.Request:
    request_id, text = client.prepare(make)
    client.wait(request_id, waiter)
    event = server.receive(text)
    assert isinstance(event, s.Request)
    assert event.id == request_id
    return event


def stats(i: int) -> w.Message:
    return w.Request(id=i, op=ops.GetStats())


def dequeue(i: int) -> w.Message:
    return w.Request(id=i, op=ops.Dequeue(job_types=("t",)))


# --------------------------------------------------------------- hello


def test_hello_and_welcome_agree_on_version_and_limits() -> None:
    seen: list[str | None] = []

    def authenticate(token: str | None) -> str | None:
        seen.append(token)
        return f"grant for {token}"

    server = server_session(authenticate=authenticate, max_message_size=50_000, max_in_flight=7)
    client, _, greeted = connected(server, max_message_size=2048)
    assert seen == ["tok"]
    assert greeted.grant == "grant for tok"
    assert greeted.version == w.PROTOCOL_VERSION == 3
    assert (client.version, client.max_in_flight, client.server_max_message_size) == (3, 7, 50_000)
    assert client.greeted
    assert server.greeted
    assert server.peer_max_message_size == 2048


def test_newest_common_version_is_chosen() -> None:
    server = server_session(versions=(1, 2, 3))
    client: Client = s.ClientSession()
    greeted = server.receive(client.hello("h", versions=[1, 2]))
    assert isinstance(greeted, s.Greeted)
    assert greeted.version == 2
    # version 2 was offered, so the client takes it
    reply = client.receive(greeted.frame)
    assert isinstance(reply, s.Reply)
    assert client.version == 2


@pytest.mark.parametrize(
    ("first", "reason"),
    [
        (w.encode(stats(1)), "hello_expected"),
        (w.encode(w.Cancel(id=1)), "hello_expected"),
        (w.encode(w.Ok(id=1)), "hello_expected"),
        ("{not json", "bad_json"),
        ('{"kind": "hello", "id": 0}', "bad_field"),
    ],
)
def test_first_message_must_be_hello(first: str, reason: str) -> None:
    server = server_session()
    event = server.receive(first)
    assert isinstance(event, s.Close)
    assert event.code == s.CLOSE_PROTOCOL_ERROR == server.close_code
    assert frame_of(event)["reason"] == reason
    assert server.closed
    assert not server.greeted
    # nothing more is read
    assert server.receive(w.encode(w.Hello(id=0, versions=[1]))) is None


def test_no_common_version_closes_with_4002() -> None:
    server = server_session()
    client: Client = s.ClientSession()
    event = server.receive(client.hello("h", versions=[99]))
    assert isinstance(event, s.Close)
    assert event.code == s.CLOSE_UNSUPPORTED_VERSION
    reply = frame_of(event)
    assert (reply["id"], reply["reason"]) == (1, "unsupported_version")
    # the client raises what the server said
    got = client.receive(event.frame or "")
    assert isinstance(got, s.Reply)
    assert isinstance(got.message, w.Error)
    exc = w.exception_from_reply(got.message)
    assert isinstance(exc, actorq.ProtocolError)
    assert exc.reason == "unsupported_version"


@pytest.mark.parametrize("token", [None, "wrong"])
def test_refused_token_closes_with_4001(token: str | None) -> None:
    server = server_session(authenticate=lambda t: None)
    client: Client = s.ClientSession()
    event = server.receive(client.hello("h", token=token))
    assert isinstance(event, s.Close)
    assert event.code == s.CLOSE_UNAUTHORIZED
    got = client.receive(event.frame or "")
    assert isinstance(got, s.Reply)
    assert isinstance(got.message, w.Error)
    assert got.message.reason == "unauthorized"
    error = client.peer_closed(event.code, event.reason)
    assert isinstance(error, actorq.QueueClosedError)
    assert "4001" in str(error)


def test_hello_timeout_closes_with_4008_only_before_hello() -> None:
    server = server_session()
    assert server.hello_timed_out().code == s.CLOSE_HELLO_TIMEOUT
    assert server.close_code == s.CLOSE_HELLO_TIMEOUT
    assert server.closed
    _, greeted_server, _ = connected()
    assert greeted_server.hello_timed_out().code == s.CLOSE_NORMAL
    assert not greeted_server.closed


def test_second_hello_is_unexpected() -> None:
    _, server, _ = connected()
    event = server.receive(w.encode(w.Hello(id=9, versions=[1])))
    reply = frame_of(event)
    assert isinstance(event, s.Send)
    assert (reply["id"], reply["reason"]) == (9, "unexpected_kind")


def test_client_checks_the_welcome() -> None:
    client: Client = s.ClientSession()
    client.hello("h")
    got = client.receive(w.encode(w.Welcome(id=1, version=7)))
    assert isinstance(got, s.Reply)
    assert isinstance(got.message, w.Error)
    assert got.message.reason == "unsupported_version"
    assert not client.greeted
    client = s.ClientSession()
    client.hello("h")
    got = client.receive(w.encode(w.Welcome(id=1, version=1, max_in_flight=0)))
    assert isinstance(got, s.Reply)
    assert isinstance(got.message, w.Error)
    assert got.message.reason == "bad_field"
    # anything but the welcome first breaks the protocol
    client = s.ClientSession()
    client.hello("h")
    broken = client.receive(w.encode(w.Ok(id=1)))
    assert isinstance(broken, s.Broken)
    assert "before welcome" in str(broken.error)
    assert client.receive(w.encode(w.Welcome(id=1, version=1))) is None
    # and a second welcome too
    client, _, _ = connected()
    broken = client.receive(w.encode(w.Welcome(id=1, version=1)))
    assert isinstance(broken, s.Broken)


def test_no_request_before_welcome_nor_a_second_hello() -> None:
    client: Client = s.ClientSession()
    with pytest.raises(s.SessionError):
        client.prepare(stats)
    client.hello("h")
    with pytest.raises(s.SessionError):
        client.hello("h")


# ------------------------------------------------------------- requests


def test_request_and_reply_round_trip() -> None:
    client, server, _ = connected()
    request = send_request(client, server, stats, "waiter")
    assert isinstance(request.message, w.Request)
    assert isinstance(request.message.op, ops.GetStats)
    assert server.in_flight == client.in_flight == 1
    text = w.encode(w.Ok(id=request.id, value={"jobs": 0}))
    frame = server.reply(request, text)
    assert frame is text
    assert server.in_flight == 0
    got = client.receive(frame)
    assert isinstance(got, s.Reply)
    assert got.waiter == "waiter"
    assert got.message == w.Ok(id=request.id, value={"jobs": 0})
    assert client.in_flight == 0
    with pytest.raises(s.SessionError):
        server.reply(request, text)  # one reply per request


def test_replies_come_back_in_any_order() -> None:
    client, server, _ = connected()
    first = send_request(client, server, dequeue, "first")
    second = send_request(client, server, stats, "second")
    for request, waiter in ((second, "second"), (first, "first")):
        frame = server.reply(request, w.encode(w.Ok(id=request.id)))
        got = client.receive(frame or "")
        assert isinstance(got, s.Reply)
        assert got.waiter == waiter


def test_duplicate_and_out_of_range_ids() -> None:
    _, server, _ = connected()
    assert isinstance(server.receive(w.encode(stats(3))), s.Request)
    event = server.receive(w.encode(stats(3)))
    assert isinstance(event, s.Send)
    assert (frame_of(event)["id"], frame_of(event)["reason"]) == (3, "duplicate_id")
    for bad in (-1, 2**53, 1.5, "7", None):
        event = server.receive(json.dumps({"kind": "stats", "id": bad}))
        reply = frame_of(event)
        assert isinstance(event, s.Send)
        assert (reply["id"], reply["reason"]) == (None, "bad_field"), bad
    assert server.in_flight == 1


def test_max_in_flight_and_slots_freed_by_replies_and_cancels() -> None:
    server = server_session(max_in_flight=2)
    client, _, _ = connected(server)
    a = send_request(client, server, dequeue)
    b = send_request(client, server, dequeue)
    # the client does not exceed the limit either
    request_id, text = client.prepare(stats)
    with pytest.raises(s.SessionError):
        client.wait(request_id, "w")
    event = server.receive(text)
    assert isinstance(event, s.Send)
    assert frame_of(event)["reason"] == "too_many_requests"
    assert server.in_flight == 2
    # a cancel frees its slot as soon as it is read
    cancelled = server.receive(client.cancel(a.id))
    assert isinstance(cancelled, s.Cancelled)
    assert cancelled.request is a
    assert a.cancelled
    assert server.in_flight == client.in_flight == 1
    c = send_request(client, server, stats)
    # a reply frees one too, on both sides
    reply = server.reply(b, w.encode(w.Ok(id=b.id)))
    assert server.in_flight == 1
    assert isinstance(client.receive(reply or ""), s.Reply)
    assert client.in_flight == 1
    send_request(client, server, stats)
    assert server.in_flight == 2
    assert not c.cancelled


def test_a_cancelled_request_gets_no_reply() -> None:
    client, server, _ = connected()
    request = send_request(client, server, dequeue)
    assert isinstance(server.receive(client.cancel(request.id)), s.Cancelled)
    # a cancel for a request no longer open is nothing
    assert server.receive(w.encode(w.Cancel(id=request.id))) is None
    assert server.receive(w.encode(w.Cancel(id=12345))) is None
    assert server.reply(request, w.encode(w.Dequeued(id=request.id, job=JOB))) is None
    with pytest.raises(s.SessionError):
        server.reply(request, w.encode(w.Ok(id=request.id)))
    # the id may be used again at once, and that request is served normally
    again = server.receive(w.encode(stats(request.id)))
    assert isinstance(again, s.Request)
    assert again is not request
    assert server.reply(again, w.encode(w.Ok(id=request.id))) is not None


def test_a_dequeued_reply_crossing_a_cancel_is_released() -> None:
    client, server, _ = connected()
    request = send_request(client, server, dequeue)
    # the server sends the job before it reads the cancel: the frames cross
    reply = server.reply(request, w.encode(w.Dequeued(id=request.id, job=JOB)))
    cancel = client.cancel(request.id)
    assert server.receive(cancel) is None  # the request is answered already
    event = client.receive(reply or "")
    assert isinstance(event, s.Send)
    release = server.receive(event.frame)
    assert isinstance(release, s.JobReleased)
    assert (release.job_id, release.token) == (JOB.id, JOB.token)
    # any other late reply is only a stray
    request = send_request(client, server, stats)
    late = server.reply(request, w.encode(w.Ok(id=request.id)))
    client.cancel(request.id)
    stray = client.receive(late or "")
    assert isinstance(stray, s.Stray)
    assert isinstance(stray.message, w.Ok)
    stray = client.receive(w.encode(w.Error(id=None, error="protocol_error")))
    assert isinstance(stray, s.Stray)


def test_release_is_handed_to_the_application() -> None:
    client, server, _ = connected()
    event = server.receive(client.release(U1, U2))
    assert isinstance(event, s.JobReleased)
    assert (event.job_id, event.token) == (U1, U2)
    assert server.in_flight == 0


def test_unexpected_and_broken_frames_get_error_replies() -> None:
    _, server, _ = connected()
    for frame, reason in (
        (w.encode(w.Ok(id=4)), "unexpected_kind"),
        (w.encode(w.Welcome(id=4, version=1)), "unexpected_kind"),
        ('{"kind": "explode", "id": 4}', "unknown_kind"),
        ("[1]", "not_object"),
        ('{"kind": "job", "id": 4, "job_id": "nope"}', "bad_uuid"),
    ):
        event = server.receive(frame)
        assert isinstance(event, s.Send)
        assert frame_of(event)["reason"] == reason
    assert not server.closed


# --------------------------------------------------------------- limits


def test_binary_frames_close_with_1003() -> None:
    for server in (server_session(), connected()[1]):
        event = server.receive(b'{"kind":"stats","id":1}')
        assert isinstance(event, s.Close)
        assert (event.code, event.frame) == (s.CLOSE_BINARY, None)
        assert server.closed


def test_oversize_frames_close_with_1009() -> None:
    _, server, _ = connected(server_session(max_message_size=1024))
    event = server.receive(w.encode(w.Request(id=1, op=ops.Enqueue(job_type="x" * 2000))))
    assert isinstance(event, s.Close)
    assert event.code == s.CLOSE_TOO_BIG
    assert frame_of(event)["reason"] == "oversize"


def test_requests_larger_than_the_server_accepts_are_refused_before_sending() -> None:
    client, _, _ = connected(server_session(max_message_size=1024))
    with pytest.raises(actorq.ProtocolError) as info:
        client.prepare(lambda i: w.Request(id=i, op=ops.Enqueue(job_type="x" * 2000)))
    assert info.value.reason == "oversize"
    assert client.in_flight == 0


def test_replies_larger_than_the_client_accepts_become_oversize_errors() -> None:
    client, server, _ = connected(max_message_size=1024)
    request = send_request(client, server, dequeue)
    big = w.encode(w.Ok(id=request.id, value="y" * 2000))
    frame = server.reply(request, big)
    assert frame is not None
    assert frame is not big
    got = client.receive(frame)
    assert isinstance(got, s.Reply)
    assert isinstance(got.message, w.Error)
    assert got.message.reason == "oversize"
    assert server.in_flight == 0


def test_frames_larger_than_the_client_accepts_break_the_connection() -> None:
    client, _, _ = connected(max_message_size=1024)
    broken = client.receive(w.encode(w.Ok(id=1, value="z" * 2000)))
    assert isinstance(broken, s.Broken)
    assert "exceeds" in str(broken.error)


# -------------------------------------------------------------- closing


def test_first_close_wins() -> None:
    _, server, _ = connected()
    assert server.close(s.CLOSE_NOT_READING, "client does not read its replies").code == 1008
    assert server.close(s.CLOSE_GOING_AWAY, "server shutting down").code == 1008
    assert (server.close_code, server.close_reason) == (1008, "client does not read its replies")
    assert server.receive(w.encode(stats(1))) is None


def test_client_turns_every_ending_into_one_error() -> None:
    client, _, _ = connected()
    assert client.take_waiters() == []
    client.wait(client.prepare(stats)[0], "waiting")
    assert client.take_waiters() == ["waiting"]
    assert client.in_flight == 0
    broken = client.receive(w.encode(w.Ok(id=999)))  # a request never sent
    assert isinstance(broken, s.Broken)
    assert client.peer_closed(4000, "x") is broken.error is client.error
    for code, words in ((1000, "lost"), (1001, "lost"), (None, "lost"), (1008, "1008 nope")):
        client, _, _ = connected()
        error = client.peer_closed(code, "nope")
        assert isinstance(error, actorq.QueueClosedError)
        assert words in str(error)
        assert client.peer_closed(4000, "later") is error
        assert client.receive(w.encode(w.Ok(id=1))) is None


def test_bad_options() -> None:
    with pytest.raises(TypeError):
        s.ServerSession("not callable")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        s.ServerSession(allow_all, max_in_flight=True)
    with pytest.raises(ValueError, match="max_in_flight must be at least 1"):
        s.ServerSession(allow_all, max_in_flight=0)
    with pytest.raises(ValueError, match="max_message_size must be at least 1024"):
        s.ServerSession(allow_all, max_message_size=10)
    with pytest.raises(TypeError):
        s.ClientSession(max_message_size="big")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_message_size must be at least 1024"):
        s.ClientSession(max_message_size=0)


# ------------------------------------------------------------------ fuzz

MAX_IN_FLIGHT = 3
ids = st.integers(min_value=0, max_value=6)
valid_frames = st.one_of(
    ids.map(lambda i: w.encode(stats(i))),
    ids.map(lambda i: w.encode(dequeue(i))),
    ids.map(lambda i: w.encode(w.Cancel(id=i))),
    ids.map(lambda i: w.encode(w.Release(id=i, job_id=U1, token=U2))),
    ids.map(lambda i: w.encode(w.Hello(id=i, versions=[1], token="tok"))),
    st.just(w.encode(w.Hello(id=0, versions=[2]))),
    ids.map(lambda i: w.encode(w.Ok(id=i))),
)
broken_frames = st.one_of(
    st.text(max_size=40),
    st.binary(max_size=20),
    st.sampled_from(['{"kind":"stats"}', '{"kind":"stats","id":-1}', '{"kind":"x","id":1}']),
    st.just('{"kind":"enqueue","id":1,"job_type":"' + "x" * 1100 + '"}'),
)
actions = st.lists(
    st.one_of(
        st.tuples(st.just("frame"), valid_frames | broken_frames),
        st.tuples(st.just("reply"), st.integers(min_value=0, max_value=20)),
        st.tuples(st.just("reply_twice"), st.integers(min_value=0, max_value=20)),
    ),
    max_size=40,
)


@settings(max_examples=400, deadline=None)
@given(greet_first=st.booleans(), steps=actions)
def test_fuzz_server_session(greet_first: bool, steps: list[tuple[str, Any]]) -> None:
    server = server_session(
        authenticate=lambda t: t, max_message_size=1024, max_in_flight=MAX_IN_FLIGHT
    )
    if greet_first:
        greeted = server.receive(w.encode(w.Hello(id=0, versions=[1], token="k")))
        assert isinstance(greeted, s.Greeted)
        assert greeted.grant == "k"
    accepted: list[s.Request] = []
    open_ids: set[int] = set()
    cancelled: set[int] = set()  # object ids of requests the client cancelled
    replied: set[int] = set()  # object ids of requests that got a frame to send
    for action, arg in steps:
        if action == "frame":
            event = server.receive(arg)
            if isinstance(event, s.Request):
                assert event.id not in open_ids
                accepted.append(event)
                open_ids.add(event.id)
            elif isinstance(event, s.Cancelled):
                assert id(event.request) not in replied
                cancelled.add(id(event.request))
                open_ids.discard(event.request.id)
            elif isinstance(event, s.Close):
                assert server.closed
            elif event is not None:
                assert isinstance(event, s.Send | s.JobReleased | s.Greeted)
                if isinstance(event, s.Send):
                    assert orjson.loads(event.frame)["kind"] == "error"
        elif accepted:
            request = accepted[arg % len(accepted)]
            text = w.encode(w.Ok(id=request.id))
            if id(request) in replied or request.state == 2:  # answered before
                with pytest.raises(s.SessionError):
                    server.reply(request, text)
                continue
            frame = server.reply(request, text)
            if id(request) in cancelled:
                assert frame is None
            else:
                assert frame is text
                replied.add(id(request))
                open_ids.discard(request.id)
            if action == "reply_twice":
                with pytest.raises(s.SessionError):
                    server.reply(request, text)
        assert 0 <= server.in_flight <= MAX_IN_FLIGHT
        assert server.in_flight == len(open_ids)
    assert not (cancelled & replied)
