"""The wire codec on its own: no I/O, no trio.

Every message kind round-trips; every malformed input raises one
:class:`actorq.ProtocolError` with a reason code and nothing else (checked by
hand for each kind of damage, and by hypothesis for arbitrary input); errors
map to the same exception classes on both sides.
"""

from __future__ import annotations

import functools
import json
import re
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import actorq
from actorq._core import _ops as ops
from actorq._core._errors import ERRORS_BY_CODE
from actorq._remote import _wire as w

U1 = uuid.UUID("12345678-1234-5678-1234-567812345678")
U2 = uuid.UUID("87654321-4321-8765-4321-876543210987")
# U1 with its digit 1 written as ARABIC-INDIC DIGIT ONE, which uuid.UUID accepts
ARABIC_INDIC_U1 = str(U1).replace("1", "\u0661")


def J(value: Any) -> ops.JsonText:
    return ops.JsonText(orjson.dumps(value).decode())


def R(request_id: int, op: ops.Operation[Any, Any]) -> w.Request:
    return w.Request(id=request_id, op=op)


SAMPLES: list[w.Message] = [
    w.Hello(id=0, versions=[1], token="t", client="c", max_message_size=2048),
    R(
        1,
        ops.Enqueue(
            job_type="t", args=J({"a": [1, 2.5, None, True]}), dependencies=(U1,), channel="c"
        ),
    ),
    R(
        2,
        ops.EnqueueMany(
            jobs=(
                ops.JobSpec("t", J({"n": 1}), (U1,), "c"),
                ops.JobSpec("u"),
                ops.JobSpec("v", J(None), (0, U2, 1)),
            )
        ),
    ),
    R(3, ops.Dequeue(job_types=("a", "b"), channels=("", "x"), timeout=1.5, worker_id=U1)),
    R(4, ops.Dequeue(job_types=("a",), channels=(), any_channel=True)),
    R(5, ops.DequeueById(job_id=U1, worker_id=None)),
    R(6, ops.FinishJob(job_id=U1, token=U2, result=J({"ok": True}))),
    R(7, ops.RequeueOrFinishJob(job_id=U1, token=None, max_retries=3, result=J(None))),
    R(8, ops.UpdateJobResult(job_id=U1, token=U2, result=J([1]))),
    R(9, ops.FailJob(job_id=U1, result=J("boom"))),
    R(10, ops.CancelJob(job_id=U1)),
    R(10, ops.RetryJob(job_id=U1)),
    R(11, ops.GetJobStatus(job_id=U1)),
    R(11, ops.WaitForJob(job_id=U1, timeout=2.5)),
    R(
        11,
        ops.Enqueue(
            job_type="t",
            priority=-3,
            delay=1.5,
            unique_key="k",
            cancel_on_failed_dependency=True,
        ),
    ),
    R(11, ops.FinishJob(job_id=U1, token=U2, result=J({"e": 1}), failed=True)),
    R(12, ops.GetJob(job_id=U1)),
    R(13, ops.IdFromToken(token=U2)),
    R(14, ops.GetHeartbeats(older_than=30.0)),
    R(15, ops.RefreshHeartbeat(token=U2)),
    R(16, ops.RefreshHeartbeats(tokens=(U1, U2))),
    R(17, ops.AllRootJobIds()),
    R(18, ops.DeleteJob(job_id=U1)),
    R(19, ops.InsertWorker(channel="c", arch="x86_64")),
    R(20, ops.UpdateWorkerStatus(worker_id=U1)),
    R(21, ops.GetWorkers(older_than=0.0)),
    R(22, ops.DeleteWorker(worker_id=U1)),
    R(23, ops.ListJobs(state=actorq.JobState.RUNNING, job_type="t", channel=None, limit=5)),
    R(24, ops.GetStats()),
    R(
        25,
        ops.FinishAndDequeue(job_id=U1, token=U2, result=J({}), job_types=("t",), timeout=0.0),
    ),
    R(
        26,
        ops.Schedule(
            name="nightly",
            cron="0 3 * * *",
            job_type="report",
            args=J({"full": True}),
            channel="c",
            timezone="Europe/Berlin",
            catch_up="all",
        ),
    ),
    R(26, ops.Unschedule(name="nightly")),
    R(26, ops.ListSchedules()),
    w.Cancel(id=26),
    w.Subscribe(id=40, job_types=["a", "b"], channels=["", "x"], worker_id=U1, credit=8),
    w.Subscribe(id=41, job_types=["a"], channels=[], any_channel=True),
    w.Settle(id=42, stream=40, finishes=[w.Finish(U1, U2, ops.JsonText('{"r":[1]}'))], credit=3),
    w.Settle(id=43, stream=40, credit=1),
    w.Jobs(
        id=40,
        jobs=[
            actorq.DequeuedJob(
                id=U1, token=U2, dependencies=[], type="a", args=[1, "x"], channel="x"
            )
        ],
    ),
    w.Revoked(id=40, runs=[w.RevokedRun(U1, U2, True), w.RevokedRun(U2, U1)]),
    w.Release(id=27, job_id=U1, token=U2),
    w.Welcome(id=0, version=1, server="actorq", max_message_size=4096, max_in_flight=8),
    w.Ok(id=28, value={"any": ["json", 1]}),
    w.Dequeued(
        id=29,
        job=actorq.DequeuedJob(
            id=U1, token=U2, dependencies=[U1], type="t", args={"x": 1}, channel=""
        ),
    ),
    w.Error(id=None, error="protocol_error", message="m", reason="bad_json"),
    w.Error(id=30, error="not_exist", message="job does not exist"),
]


def kind_of(message: w.Message) -> str:
    return message.op.NAME if isinstance(message, w.Request) else message.KIND


def test_every_kind_has_a_sample() -> None:
    assert {kind_of(m) for m in SAMPLES} == set(w.KINDS)
    assert set(ops.OPERATIONS) <= set(w.KINDS)


@pytest.mark.parametrize("message", SAMPLES, ids=kind_of)
def test_round_trip(message: w.Message) -> None:
    text = w.encode(message)
    obj = orjson.loads(text)
    assert obj["kind"] == kind_of(message)
    assert obj["id"] == message.id
    assert w.decode(text) == message


def test_encoded_uuids_are_canonical_strings() -> None:
    obj = orjson.loads(w.encode(R(1, ops.FinishJob(job_id=U1, token=U2))))
    assert obj["job_id"] == str(U1)
    assert obj["token"] == str(U2)


def test_json_text_is_embedded_as_it_is() -> None:
    # args stored as JSON text travel without being parsed and written again
    message = R(1, ops.Enqueue(job_type="t", args=ops.JsonText('{"b":1,"a":[true]}')))
    assert '"args":{"b":1,"a":[true]}' in w.encode(message)
    assert w.decode(w.encode(message)) == message


def test_defaults_may_be_left_out() -> None:
    got = w.decode('{"kind":"enqueue","id":3,"job_type":"t"}')
    assert got == R(3, ops.Enqueue(job_type="t"))
    got = w.decode('{"kind":"dequeue","id":3,"job_types":["t"]}')
    assert got == R(3, ops.Dequeue(job_types=("t",), channels=("",), timeout=None))


def test_integer_timeouts_are_numbers() -> None:
    got = w.decode('{"kind":"dequeue","id":3,"job_types":["t"],"timeout":5}')
    assert isinstance(got, w.Request)
    assert isinstance(got.op, ops.Dequeue)
    assert got.op.timeout == 5.0
    assert isinstance(got.op.timeout, float)


def reason_of(text: Any, **kwargs: Any) -> str:
    with pytest.raises(w.ProtocolError) as info:
        w.decode(text, **kwargs)
    return info.value.reason


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "bad_json"),
        ("{", "bad_json"),
        ("{'kind': 'stats'}", "bad_json"),
        ('{"kind":"stats","id":1,"x":NaN}', "bad_json"),
        ('{"kind":"stats","id":1}garbage', "bad_json"),
        ("[]", "not_object"),
        ('"stats"', "not_object"),
        ("7", "not_object"),
        ("null", "not_object"),
        ('{"id":1}', "missing_kind"),
        ('{"kind":"explode","id":1}', "unknown_kind"),
        ('{"kind":7,"id":1}', "unknown_kind"),
        ('{"kind":"","id":1}', "unknown_kind"),
        ('{"kind":"stats"}', "bad_field"),
        ('{"kind":"stats","id":-1}', "bad_field"),
        ('{"kind":"stats","id":1.0}', "bad_field"),
        ('{"kind":"stats","id":true}', "bad_field"),
        ('{"kind":"stats","id":"1"}', "bad_field"),
        ('{"kind":"stats","id":9007199254740992}', "bad_field"),
        ('{"kind":"stats","id":1,"extra":0}', "bad_field"),
        ('{"kind":"enqueue","id":1}', "bad_field"),
        ('{"kind":"enqueue","id":1,"job_type":5}', "bad_field"),
        ('{"kind":"enqueue","id":1,"job_type":"t","channel":null}', "bad_field"),
        ('{"kind":"dequeue","id":1,"job_types":"abc"}', "bad_field"),
        ('{"kind":"dequeue","id":1,"job_types":[1]}', "bad_field"),
        ('{"kind":"dequeue","id":1,"job_types":["t"],"timeout":"5"}', "bad_field"),
        ('{"kind":"dequeue","id":1,"job_types":["t"],"timeout":true}', "bad_field"),
        ('{"kind":"dequeue","id":1,"job_types":["t"],"any_channel":1}', "bad_field"),
        (
            f'{{"kind":"requeue_or_finish_job","id":1,"job_id":"{U1}","max_retries":1.5}}',
            "bad_field",
        ),
        ('{"kind":"list_jobs","id":1,"state":"sleeping"}', "bad_field"),
        ('{"kind":"list_jobs","id":1,"limit":"3"}', "bad_field"),
        ('{"kind":"enqueue_many","id":1,"jobs":[{"job_type":"t","x":1}]}', "bad_field"),
        ('{"kind":"enqueue_many","id":1,"jobs":{}}', "bad_field"),
        ('{"kind":"cancel_job","id":1,"job_id":"nope"}', "bad_uuid"),
        # beyond 2**53-1: refused as the in-process API refuses it (a type_error)
        (
            '{"kind":"enqueue","id":1,"job_type":"t","args":{"n":123456789012345678901}}',
            "inexact_integer",
        ),
        (
            '{"kind":"enqueue","id":1,"job_type":"t","args":[-9223372036854775809]}',
            "inexact_integer",
        ),
        ('{"kind":"enqueue","id":1,"job_type":"t","args":[9007199254740992]}', "inexact_integer"),
        ('{"kind":"enqueue","id":1,"job_type":"t","args":[-9007199254740992]}', "inexact_integer"),
        (
            f'{{"kind":"requeue_or_finish_job","id":1,"job_id":"{U1}","max_retries":2e0}}',
            "bad_field",
        ),
        (
            f'{{"kind":"requeue_or_finish_job","id":1,"job_id":"{U1}",'
            '"max_retries":18446744073709551615}',
            "inexact_integer",
        ),
        # a dependency of enqueue_many is a UUID string or an integer index
        (
            '{"kind":"enqueue_many","id":1,"jobs":[{"job_type":"t","dependencies":[true]}]}',
            "bad_field",
        ),
        (
            '{"kind":"enqueue_many","id":1,"jobs":[{"job_type":"t","dependencies":[0.0]}]}',
            "bad_field",
        ),
        (
            '{"kind":"enqueue_many","id":1,"jobs":[{"job_type":"t","dependencies":[null]}]}',
            "bad_field",
        ),
        (
            '{"kind":"enqueue_many","id":1,"jobs":[{"job_type":"t","dependencies":["zz"]}]}',
            "bad_uuid",
        ),
        (
            '{"kind":"enqueue_many","id":1,"jobs":[{"job_type":"t","dependencies":0}]}',
            "bad_field",
        ),
        # only the 8-4-4-4-12 form: no braces, URNs, bare hex or non-ASCII digits
        (f'{{"kind":"cancel_job","id":1,"job_id":"{{{U1}}}"}}', "bad_uuid"),
        (f'{{"kind":"cancel_job","id":1,"job_id":"urn:uuid:{U1}"}}', "bad_uuid"),
        (f'{{"kind":"cancel_job","id":1,"job_id":"{U1.hex}"}}', "bad_uuid"),
        (f'{{"kind":"cancel_job","id":1,"job_id":"{ARABIC_INDIC_U1}"}}', "bad_uuid"),
        ('{"kind":"cancel_job","id":1,"job_id":7}', "bad_uuid"),
        ('{"kind":"cancel_job","id":1,"job_id":null}', "bad_uuid"),
        (f'{{"kind":"refresh_heartbeats","id":1,"tokens":["{U1}","x"]}}', "bad_uuid"),
        ('{"kind":"enqueue","id":1,"job_type":"t","dependencies":["zz"]}', "bad_uuid"),
    ],
)
def test_malformed_input(text: str, reason: str) -> None:
    assert reason_of(text) == reason


def test_binary_frames_and_oversize() -> None:
    assert reason_of(b'{"kind":"stats","id":1}') == "binary"
    big = '{"kind":"enqueue","id":1,"job_type":"t","args":"' + "x" * 5000 + '"}'
    assert reason_of(big, max_size=4096) == "oversize"
    got = w.decode(big, max_size=len(big))
    assert isinstance(got, w.Request)
    assert isinstance(got.op, ops.Enqueue)


def test_unexpected_kind() -> None:
    text = w.encode(w.Ok(id=1))
    assert reason_of(text, kinds=w.CLIENT_KINDS) == "unexpected_kind"
    assert reason_of(w.encode(R(1, ops.GetStats())), kinds=w.SERVER_KINDS) == "unexpected_kind"


def test_request_id_is_kept_when_readable() -> None:
    with pytest.raises(w.ProtocolError) as info:
        w.decode('{"kind":"cancel_job","id":41,"job_id":"nope"}')
    assert info.value.request_id == 41
    assert "job_id" in info.value.message
    with pytest.raises(w.ProtocolError) as info:
        w.decode('{"kind":"explode","id":42}')
    assert info.value.request_id == 42
    with pytest.raises(w.ProtocolError) as info:
        w.decode("{")
    assert info.value.request_id is None


def test_decode_is_strict_about_types() -> None:
    # cattrs would coerce all of these; the wire does not
    for text in (
        '{"kind":"insert_worker","id":1,"channel":1,"arch":"a"}',
        '{"kind":"workers","id":1,"older_than":"1"}',
        '{"kind":"hello","id":1,"versions":["1"]}',
        '{"kind":"welcome","id":1,"version":1,"max_in_flight":false}',
    ):
        assert reason_of(text) == "bad_field"


def test_structure_value() -> None:
    status = actorq.JobStatus(
        type="t",
        channel="",
        result={"r": 1},
        queued=datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC),
        started=None,
        finished=None,
        canceled=False,
        dependencies=[U1],
        dependents=[],
        retries=0,
    )
    value = orjson.loads(orjson.dumps(w.unstructure_value(status)))
    assert w.structure_value(value, actorq.JobStatus) == status
    stats = actorq.QueueStats(1, 1, [("t", "", 1)], 0, 0, 0, 0, 0, 0)
    value = orjson.loads(orjson.dumps(w.unstructure_value(stats)))
    assert w.structure_value(value, actorq.QueueStats) == stats
    with pytest.raises(w.ProtocolError):
        w.structure_value({"jobs": "1"}, actorq.QueueStats)
    with pytest.raises(w.ProtocolError):
        w.structure_value("not a uuid", uuid.UUID)


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("cls", [ERRORS_BY_CODE[code] for code in sorted(ERRORS_BY_CODE)])
def test_queue_errors_map_back_to_their_class(cls: type[actorq.JobQueueError]) -> None:
    reply = w.error_reply(5, cls("some words"))
    assert reply.error == cls.code
    again = w.decode(w.encode(reply))
    assert isinstance(again, w.Error)
    exc = w.exception_from_reply(again)
    assert type(exc) is cls
    assert str(exc) == "some words"


def test_argument_errors_map_to_builtin_classes() -> None:
    for exc in (TypeError("bad type"), ValueError("bad value")):
        got = w.exception_from_reply(w.error_reply(1, exc))
        assert type(got) is type(exc)
        assert str(got) == str(exc)


def test_protocol_errors_keep_their_reason() -> None:
    got = w.exception_from_reply(w.error_reply(3, w.ProtocolError("no", "forbidden")))
    assert isinstance(got, actorq.ProtocolError)
    assert got.reason == "forbidden"
    assert isinstance(got, actorq.JobQueueError)


def test_unknown_errors() -> None:
    reply = w.error_reply(1, RuntimeError("secret detail"))
    assert reply.error == "internal"
    assert "secret" not in reply.message  # internals do not leak to clients
    exc = w.exception_from_reply(w.Error(id=1, error="from_the_future", message="m"))
    assert type(exc) is actorq.JobQueueError


def test_negotiate() -> None:
    assert w.negotiate([1]) == 1
    assert w.negotiate([1, 2, 3], supported=[1, 2]) == 2
    with pytest.raises(w.ProtocolError) as info:
        w.negotiate([99])
    assert info.value.reason == "unsupported_version"


# ------------------------------------------------------------------ fuzz

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
field_names = st.sampled_from(
    sorted(
        {a.name for cls in w.KINDS.values() for a in attrs.fields(cls)} - {"op"}
        | {"kind", "job_type", "zzz"}
    )
)


def check_decode_is_total(text: Any) -> None:
    failure: w.ProtocolError | None = None
    try:
        got = w.decode(text, max_size=10_000)
    except w.ProtocolError as exc:
        failure = exc
    if failure is not None:
        assert failure.reason
        assert failure.request_id is None or isinstance(failure.request_id, int)
        return
    assert isinstance(got, w.Message)
    # what decodes encodes back to something that decodes to the same
    assert w.decode(w.encode(got)) == got


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_fuzz_arbitrary_text(text: str) -> None:
    check_decode_is_total(text)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=100))
def test_fuzz_arbitrary_bytes(data: bytes) -> None:
    check_decode_is_total(data)
    check_decode_is_total(data.decode("latin-1"))


@settings(max_examples=300, deadline=None)
@given(
    kind=st.sampled_from(sorted(w.KINDS)) | st.text(max_size=8),
    request_id=st.integers(min_value=-2, max_value=2**60) | json_values,
    fields=st.dictionaries(field_names, json_values, max_size=6),
)
def test_fuzz_message_shaped_objects(kind: str, request_id: Any, fields: dict[str, Any]) -> None:
    check_decode_is_total(json.dumps({"kind": kind, "id": request_id, **fields}))


@settings(max_examples=300, deadline=None)
@given(
    sample=st.sampled_from(SAMPLES),
    field=field_names,
    value=json_values | st.uuids().map(str),
)
def test_fuzz_one_field_of_a_valid_message(sample: w.Message, field: str, value: Any) -> None:
    obj = orjson.loads(w.encode(sample))
    obj[field] = value
    check_decode_is_total(json.dumps(obj))


def test_the_wire_converter_is_built_on_first_use_from_the_app_converter(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Celsius:
        def __init__(self, degrees: float) -> None:
            self.degrees = degrees

    monkeypatch.setattr(w, "_converter", None)
    actorq.converter.register_unstructure_hook(Celsius, lambda c: {"celsius": c.degrees})
    assert w.unstructure_value([Celsius(21.5)]) == [{"celsius": 21.5}]
    assert w._converter is not None


def test_the_protocol_document_lists_every_operation_with_its_fields() -> None:
    doc = (Path(__file__).resolve().parents[1] / "docs" / "protocol.md").read_text()
    rows = {}
    for line in doc.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`") and cells[2].startswith("`"):
            rows[cells[0].strip("`")] = re.findall(r"`([a-z_]+)`", cells[1])
    requests = {kind: names for kind, names in rows.items() if kind in ops.OPERATIONS}
    assert set(requests) == set(ops.OPERATIONS)

    def fields(kind: str) -> set[str]:
        return {a.name for a in attrs.fields(ops.OPERATIONS[kind])}

    for kind, names in requests.items():
        documented: set[str] = set()
        for name in names:
            documented |= fields(name) if name in ops.OPERATIONS else {name}
        assert documented == fields(kind), kind


# ------------------------------------------------- hand-written hooks


def _decoded_by(conv: Any, text: str) -> Any:
    """What decoding ``text`` with ``conv`` as the wire converter gives: a message or an error."""
    saved = w._converter
    w._converter = conv
    try:
        got: Any = w.decode(text)
    except w.ProtocolError as exc:
        got = (exc.reason, exc.message)
    finally:
        w._converter = saved
    return got


def _job_obj(**fields: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "id": str(U1),
        "token": str(U2),
        "dependencies": [str(U1)],
        "type": "build",
        "args": {"a": [1, None]},
        "channel": "",
    }
    obj.update(fields)
    return {k: v for k, v in obj.items() if v is not _MISSING}


def _finish_obj(**fields: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {"job_id": str(U1), "token": str(U2)}
    obj.update(fields)
    return {k: v for k, v in obj.items() if v is not _MISSING}


_MISSING: Any = object()


@functools.cache
def _reference_converter() -> Any:
    return w._make_converter(fast_hooks=False)


uuid_like = (
    st.uuids().map(str)
    | st.uuids().map(lambda u: str(u).upper())
    | st.uuids().map(lambda u: u.hex)
    | st.uuids().map(lambda u: "{" + str(u) + "}")
    | st.uuids().map(lambda u: "urn:uuid:" + str(u))
    | st.uuids().map(lambda u: str(u)[:-1] + "\u0661")
    | st.uuids().map(lambda u: str(u).replace("-", "_", 1))
    | json_values
)
maybe = st.just(_MISSING) | json_values


@settings(max_examples=300, deadline=None)
@given(
    job_id=uuid_like,
    token=uuid_like,
    deps=st.lists(uuid_like, max_size=3) | json_values,
    job_type=st.just("build") | maybe,
    channel=st.just("") | maybe,
    args=maybe,
    extra=st.dictionaries(st.sampled_from(["zzz", "kind", "retries"]), json_values, max_size=1),
)
def test_pushed_jobs_decode_as_the_cattrs_hooks_decode_them(
    job_id: Any, token: Any, deps: Any, job_type: Any, channel: Any, args: Any, extra: Any
) -> None:
    # the hand-written hook for a pushed job accepts, builds and refuses
    # exactly as the generated one: the same message or the same error text
    job = _job_obj(
        id=job_id, token=token, dependencies=deps, type=job_type, channel=channel, args=args
    )
    job.update({k: v for k, v in extra.items() if k != "kind"})
    text = json.dumps({"kind": "jobs", "id": 3, "jobs": [_job_obj(), job]})
    assert _decoded_by(w.wire_converter(), text) == _decoded_by(_reference_converter(), text)


@settings(max_examples=300, deadline=None)
@given(
    job_id=uuid_like,
    token=uuid_like,
    result=maybe,
    failed=st.just(_MISSING) | st.booleans() | json_values,
    extra=st.dictionaries(st.sampled_from(["zzz", "credit"]), json_values, max_size=1),
)
def test_finishes_decode_as_the_cattrs_hooks_decode_them(
    job_id: Any, token: Any, result: Any, failed: Any, extra: Any
) -> None:
    finish = _finish_obj(job_id=job_id, token=token, result=result, failed=failed, **extra)
    text = json.dumps({"kind": "settle", "id": 4, "stream": 3, "finishes": [_finish_obj(), finish]})
    assert _decoded_by(w.wire_converter(), text) == _decoded_by(_reference_converter(), text)


def test_decoded_uuids_are_ordinary_uuids() -> None:
    text = json.dumps({"kind": "jobs", "id": 3, "jobs": [_job_obj(id=str(U1).upper())]})
    message = w.decode(text)
    assert isinstance(message, w.Jobs)
    job = message.jobs[0]
    for got, want in ((job.id, U1), (job.token, U2), (job.dependencies[0], U1)):
        assert type(got) is uuid.UUID
        assert got == want
        assert hash(got) == hash(want)
        assert str(got) == str(want)
        assert got.is_safe is uuid.SafeUUID.unknown


@settings(max_examples=500, deadline=None)
@given(
    st.text(alphabet=st.sampled_from('0123456789.-e"é\u0661\ud800x'), max_size=60)
    | st.text(max_size=60)
)
def test_the_first_look_for_long_integers_finds_every_run_of_sixteen_digits(text: str) -> None:
    assert w._has_digit_run(text) == (re.search("[0-9]{16}", text) is not None)
    if w._LONG_DIGITS.search(text) is not None:
        assert w._has_digit_run(text)
