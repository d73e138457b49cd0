"""Python (grpcio) client tests of claimsledger.v1.Ledger/AppendSession (bidirectional streaming).

Written from proto/claimsledger/v1/ledger.proto: a session applies its appends one after another in
the order sent, so an append may depend on an earlier one even when the client sends them without
waiting; answers come in request order and echo the request_id; an accepted answer is what
SubmitBatch would have returned, at positions that read back from the log; a refused append is
answered in the stream with the status SubmitBatch would have failed with (an AppendRefusal, whose
bytes re-parse as a google.rpc.Status), writes nothing, and the session goes on; closing the request
side ends the response stream cleanly. Every test runs on a server of its own, so positions and
counts are known.
"""

from __future__ import annotations

import queue
import uuid
from datetime import datetime, timedelta, timezone

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import code_pb2, error_details_pb2, status_pb2

# Generated at session start by conftest.py.
from claimsledger.v1 import events_pb2, events_pb2_grpc, ledger_pb2, ledger_pb2_grpc, types_pb2

T = 10.0  # deadline of every unary RPC, seconds
SESSION_T = 60.0  # deadline of a whole AppendSession call, seconds (a guard against hangs only)

QUOTE = (
    "We are prepared to resume negotiations in Istanbul if Kyiv is genuinely interested in peace,"
)
# Curly quotes before the quote, so code point and UTF-8 byte offsets differ.
TEXT = (
    "Lavrov told reporters: \u201c" + QUOTE + "\u201d he said. "
    "Zelenskyy\u2019s administration wants Crimea back."
)
PUBLISHED = datetime(2024, 6, 6, tzinfo=timezone.utc)
STATED = datetime(2024, 6, 5, tzinfo=timezone.utc)

_CLOSE = object()


def ts(dt: datetime) -> Timestamp:
    t = Timestamp()
    t.FromDatetime(dt)
    return t


class Session:
    """One AppendSession call, driven step by step: requests go through a queue that a generator
    feeds to grpcio; answers are read one at a time. Cancelled on exit from the `with` block."""

    def __init__(self, stub: ledger_pb2_grpc.LedgerStub):
        self._requests: queue.Queue = queue.Queue()
        self.call = stub.AppendSession(self._generate(), timeout=SESSION_T)

    def _generate(self):
        while True:
            item = self._requests.get()
            if item is _CLOSE:
                return
            yield item

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
        self.call.cancel()

    def send(self, request_id: int, append: ledger_pb2.SubmitBatchRequest | None) -> None:
        req = ledger_pb2.AppendSessionRequest(request_id=request_id)
        if append is not None:
            req.append.CopyFrom(append)
        self._requests.put(req)

    def next(self) -> ledger_pb2.AppendSessionResponse:
        try:
            return next(self.call)
        except StopIteration:
            pytest.fail("the session ended before answering")

    def call_one(
        self, request_id: int, append: ledger_pb2.SubmitBatchRequest | None
    ) -> ledger_pb2.AppendSessionResponse:
        self.send(request_id, append)
        answer = self.next()
        assert answer.request_id == request_id, "answer to another append"
        return answer

    def close(self) -> None:
        self._requests.put(_CLOSE)

    def assert_ends_cleanly(self) -> None:
        """After close(): no further answer, and the call ends with OK."""
        with pytest.raises(StopIteration):
            next(self.call)
        assert self.call.code() == grpc.StatusCode.OK, self.call.details()


def batch(*commands, key: str = "") -> ledger_pb2.SubmitBatchRequest:
    req = ledger_pb2.SubmitBatchRequest(commands=list(commands))
    if key:
        req.options.idempotency_key = key
    return req


def party(party_id: str, kind=types_pb2.PARTY_KIND_GROUP, name: str | None = None):
    return ledger_pb2.BatchCommand(
        register_party=types_pb2.RegisterPartyCommand(
            party_id=party_id, kind=kind, name=name or party_id
        )
    )


def source(source_id: str):
    return ledger_pb2.BatchCommand(
        register_source=types_pb2.RegisterSourceCommand(
            source_id=source_id,
            publisher="Test Wire",
            url="https://example.org/istanbul",
            title="Istanbul talks",
            published_at=ts(PUBLISHED),
            retrieved_at=ts(PUBLISHED + timedelta(hours=1)),
            language="en",
            text=TEXT,
        )
    )


def statement(speaker: str, source_id: str, statement_id: str = "", exact: str = QUOTE):
    start = TEXT.index(QUOTE)  # Python str index == code point offset
    return ledger_pb2.BatchCommand(
        record_statement=types_pb2.RecordStatementCommand(
            statement_id=statement_id,
            speaker_id=speaker,
            stated_time=types_pb2.StatedTime(
                at=ts(STATED + timedelta(hours=1)), precision=types_pb2.TIME_PRECISION_DAY
            ),
            mode=types_pb2.STATEMENT_MODE_DIRECT_QUOTE,
            attribution_verb="told reporters",
            content="Russia is ready for talks in Istanbul.",
            spans=[
                types_pb2.Span(
                    source_id=source_id, start=start, end=start + len(QUOTE), exact=exact
                )
            ],
        )
    )


def claim(statement_id: str, party_id: str, claim_id: str):
    return ledger_pb2.BatchCommand(
        assert_claim=types_pb2.AssertClaimCommand(
            claim_id=claim_id,
            statement_id=statement_id,
            party_id=party_id,
            topic="negotiation-venue",
            stance="Istanbul",
        )
    )


def accepted(answer: ledger_pb2.AppendSessionResponse) -> ledger_pb2.SubmitBatchResponse:
    assert answer.WhichOneof("result") == "accepted", (
        f"append {answer.request_id} not accepted: {answer}"
    )
    return answer.accepted


def refused(answer: ledger_pb2.AppendSessionResponse) -> ledger_pb2.AppendRefusal:
    assert answer.WhichOneof("result") == "refused", (
        f"append {answer.request_id} not refused: {answer}"
    )
    return answer.refused


def positions(ok: ledger_pb2.SubmitBatchResponse) -> list[int]:
    assert [r.event for r in ok.results] == list(ok.result.events)
    return [e.position for e in ok.result.events]


def as_status(r: ledger_pb2.AppendRefusal) -> status_pb2.Status:
    """The refusal's bytes re-parsed as a google.rpc.Status, which the contract promises works."""
    status = status_pb2.Status.FromString(r.SerializeToString())
    assert status.code == r.code
    assert status.message == r.message
    assert list(status.details) == list(r.details)
    assert status.code != code_pb2.OK
    assert status.message
    return status


def bad_request(r: ledger_pb2.AppendRefusal) -> error_details_pb2.BadRequest:
    """The google.rpc.BadRequest among the refusal's details."""
    for detail in r.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            br = error_details_pb2.BadRequest()
            assert detail.Unpack(br)
            return br
    pytest.fail(
        "no google.rpc.BadRequest among the details: " + ", ".join(d.type_url for d in r.details)
    )


def detail_of(r: ledger_pb2.AppendRefusal, cls):
    for detail in r.details:
        if detail.Is(cls.DESCRIPTOR):
            msg = cls()
            assert detail.Unpack(msg)
            return msg
    pytest.fail(f"no {cls.DESCRIPTOR.full_name} among: " + ", ".join(d.type_url for d in r.details))


def head_count(events) -> int:
    return events.GetHead(events_pb2.GetHeadRequest(), timeout=T).event_count


def event_at(events, position: int) -> events_pb2.EventEnvelope:
    page = events.ReadAll(events_pb2.ReadAllRequest(from_position=position, max_count=1), timeout=T)
    assert len(page.events) == 1, f"no event at position {position}"
    return page.events[0]


def assert_stored(events, ev: types_pb2.AppendedEvent, event_type: str) -> None:
    stored = event_at(events, ev.position)
    assert stored.position == ev.position
    assert (stored.event_id, stored.stream, stored.stream_revision, stored.hash) == (
        ev.event_id,
        ev.stream,
        ev.stream_revision,
        ev.hash,
    ), f"position {ev.position}"
    assert stored.event_type == event_type


@pytest.fixture()
def stubs(fresh_server):
    with grpc.insecure_channel(fresh_server.addr) as ch:
        yield ledger_pb2_grpc.LedgerStub(ch), events_pb2_grpc.EventsStub(ch)


# --------------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------------


def test_append_session_dependent_appends_are_applied_in_order(stubs):
    ledger, events = stubs
    source_id, statement_id, claim_id = (str(uuid.uuid4()) for _ in range(3))
    # Each append refers to what the one before it created; all are sent before any answer is read.
    sent = [
        (
            7,
            party("sergey-lavrov", types_pb2.PARTY_KIND_PERSON),
            "sergey-lavrov",
            "party-sergey-lavrov",
            "PartyRegistered",
        ),
        (3, source(source_id), source_id, f"source-{source_id}", "SourceRegistered"),
        (
            2**64 - 1,
            statement("sergey-lavrov", source_id, statement_id),
            statement_id,
            f"statement-{statement_id}",
            "StatementRecorded",
        ),
        (
            12,
            claim(statement_id, "sergey-lavrov", claim_id),
            claim_id,
            f"claim-{claim_id}",
            "ClaimAsserted",
        ),
    ]
    with Session(ledger) as session:
        for request_id, command, *_ in sent:
            session.send(request_id, batch(command))
        all_positions = []
        for request_id, _, entity_id, stream, event_type in sent:
            answer = session.next()
            assert answer.request_id == request_id, "answers come in request order"
            ok = accepted(answer)
            assert [r.entity_id for r in ok.results] == [entity_id]
            assert not ok.result.deduplicated
            assert ok.result.HasField("recorded_at")
            ev = ok.result.events[0]
            assert (ev.stream, ev.stream_revision) == (stream, 0)
            all_positions += positions(ok)
            assert_stored(events, ev, event_type)
        assert all_positions == sorted(set(all_positions)), (
            f"positions must increase in send order: {all_positions}"
        )
        assert head_count(events) == len(sent)

        payload = event_at(events, all_positions[2]).payload.statement_recorded
        assert payload.speaker_id == "sergey-lavrov"
        assert [(s.source_id, s.exact) for s in payload.spans] == [(source_id, QUOTE)]

        session.close()
        session.assert_ends_cleanly()


def test_append_session_bad_span_is_refused_and_the_session_goes_on(stubs):
    ledger, events = stubs
    source_id = str(uuid.uuid4())
    with Session(ledger) as session:
        first = session.call_one(
            1, batch(party("sergey-lavrov", types_pb2.PARTY_KIND_PERSON), source(source_id))
        )
        assert positions(accepted(first)) == [0, 1]

        answer = session.call_one(
            2, batch(statement("sergey-lavrov", source_id, exact="something else"))
        )
        r = refused(answer)
        assert r.code == code_pb2.INVALID_ARGUMENT
        assert r.message
        assert r.details, "a refusal carries the details a unary call would"
        assert r.details[0].Is(error_details_pb2.BadRequest.DESCRIPTOR), r.details[0].type_url
        br = error_details_pb2.BadRequest()
        assert r.details[0].Unpack(br)
        fields = [v.field for v in br.field_violations]
        assert len(fields) == 1, fields
        assert fields[0].endswith("commands[0].record_statement.spans[0].exact"), fields
        assert all(v.description for v in br.field_violations)
        status = as_status(r)
        assert status.code == code_pb2.INVALID_ARGUMENT
        assert head_count(events) == 2, "a refused append writes nothing"

        # The same session goes on: a valid append is accepted at the very next position.
        ok = accepted(session.call_one(3, batch(statement("sergey-lavrov", source_id))))
        assert positions(ok) == [2]
        assert_stored(events, ok.result.events[0], "StatementRecorded")
        assert head_count(events) == 3

        session.close()
        session.assert_ends_cleanly()

    # Checked last so that everything above is checked even if this naming is wrong.
    assert fields[0].startswith("append.commands[0].record_statement."), (
        f"field violations are named relative to AppendSessionRequest, got {fields}"
    )


def test_append_session_refusal_codes_and_idempotency(stubs):
    ledger, events = stubs
    source_id = str(uuid.uuid4())
    with Session(ledger) as session:
        accepted(
            session.call_one(
                1, batch(party("sergey-lavrov", types_pb2.PARTY_KIND_PERSON), source(source_id))
            )
        )
        count = head_count(events)
        assert count == 2

        def next_is_accepted(request_id: int, party_id: str) -> None:
            nonlocal count
            assert head_count(events) == count, "a refused append writes nothing"
            ok = accepted(session.call_one(request_id, batch(party(party_id))))
            assert positions(ok) == [count]
            count += 1

        # No append at all.
        r = refused(session.call_one(10, None))
        assert r.code == code_pb2.INVALID_ARGUMENT
        assert [v.field for v in bad_request(r).field_violations] == ["append"]
        as_status(r)
        next_is_accepted(11, "after-missing")

        # An exact expected revision that does not match (party-sergey-lavrov is at revision 0).
        update = ledger_pb2.SubmitBatchRequest(
            commands=[
                ledger_pb2.BatchCommand(
                    expected_revision=types_pb2.ExpectedRevision(
                        kind=types_pb2.EXPECTED_REVISION_KIND_EXACT, revision=7
                    ),
                    update_party=types_pb2.UpdatePartyCommand(
                        party_id="sergey-lavrov",
                        kind=types_pb2.PARTY_KIND_PERSON,
                        name="Sergey V. Lavrov",
                    ),
                )
            ]
        )
        r = refused(session.call_one(20, update))
        assert r.code == code_pb2.FAILED_PRECONDITION
        info = detail_of(r, error_details_pb2.ErrorInfo)
        assert info.reason == "WRONG_EXPECTED_REVISION"
        assert info.metadata["stream"] == "party-sergey-lavrov"
        assert info.metadata["actual"] == "0"
        as_status(r)
        next_is_accepted(21, "after-revision")

        # A statement by a speaker nobody registered.
        r = refused(session.call_one(30, batch(statement("nobody", source_id))))
        assert r.code == code_pb2.NOT_FOUND
        info = detail_of(r, error_details_pb2.ResourceInfo)
        assert (info.resource_type, info.resource_name) == ("party", "nobody")
        as_status(r)
        next_is_accepted(31, "after-unknown-speaker")

        # The same key and content twice: the same positions, deduplicated the second time.
        first = accepted(session.call_one(40, batch(party("ukraine", name="Ukraine"), key="k-1")))
        assert not first.result.deduplicated
        assert positions(first) == [count]
        count += 1
        again = accepted(session.call_one(41, batch(party("ukraine", name="Ukraine"), key="k-1")))
        assert again.result.deduplicated
        assert positions(again) == positions(first)
        assert list(again.result.events) == list(first.result.events)
        assert again.result.recorded_at == first.result.recorded_at
        assert head_count(events) == count, "a replay writes nothing"

        # The same key with different content.
        r = refused(session.call_one(42, batch(party("ukraine", name="Ukraina"), key="k-1")))
        assert r.code == code_pb2.ALREADY_EXISTS
        info = detail_of(r, error_details_pb2.ErrorInfo)
        assert info.reason == "IDEMPOTENCY_KEY_REUSED"
        as_status(r)
        next_is_accepted(43, "after-key-reuse")

        session.close()
        session.assert_ends_cleanly()
