"""Independent Python (grpcio) client tests of the claims-ledger gRPC contract.

Written from proto/claimsledger/v1/*.proto and the product brief only, as a client in another language
would. Most tests share one server (see conftest.py), so tests that create parties use unique ids.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import signal
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pool
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import code_pb2, error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from grpc_status import rpc_status

# Generated at session start by conftest.py.
from claimsledger.v1 import events_pb2, events_pb2_grpc, ledger_pb2, ledger_pb2_grpc, types_pb2

REPO = Path(__file__).resolve().parents[2]
T = 10.0  # deadline of every RPC, seconds
ZERO_HASH = "0" * 64
HEX64 = re.compile(r"^[0-9a-f]{64}$")

CORPUS_PATH = REPO / ".." / "shared" / "corpus" / "istanbul-talks-aljazeera.txt"
LAVROV_QUOTE = (
    "We are prepared to resume negotiations in Istanbul if Kyiv is genuinely interested in peace"
)
# Used only when the corpus file is missing; it has curly quotes and apostrophes before the quote, so
# code point, UTF-8 byte and character offsets differ just as in the real text.
FALLBACK_TEXT = (
    "Russia has proposed a renewed round of peace talks with Ukraine in Istanbul, citing the Turkish "
    "city\u2019s previous role as a host for negotiations between the two sides.\n\n"
    "Lavrov announced the offer during a press briefing in Moscow. \u201c" + LAVROV_QUOTE + ",\u201d "
    "Lavrov told reporters. \u201cThe West does not want peace; it wants a weakened Russia,\u201d "
    "Lavrov claimed.\n"
)

_counter = itertools.count(1)


def uniq(prefix: str) -> str:
    """A slug unique within this test session (one server, one data dir per session)."""
    return f"{prefix}-{next(_counter)}"


def ts(dt: datetime) -> Timestamp:
    t = Timestamp()
    t.FromDatetime(dt)
    return t


def corpus_text() -> str:
    try:
        return Path(CORPUS_PATH).read_text(encoding="utf-8")
    except FileNotFoundError:
        return FALLBACK_TEXT


def bad_request(err: grpc.RpcError) -> error_details_pb2.BadRequest:
    """The google.rpc.BadRequest in the rich error details of a failed call."""
    status = rpc_status.from_call(err)
    assert status is not None, (
        f"no grpc-status-details-bin (rich error details) on {err.code()}: {err.details()!r}"
    )
    assert status.code == code_pb2.INVALID_ARGUMENT
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            br = error_details_pb2.BadRequest()
            detail.Unpack(br)
            return br
    pytest.fail(
        "no google.rpc.BadRequest among the details: "
        + ", ".join(d.type_url for d in status.details)
    )


def violation_fields(err: grpc.RpcError) -> list[str]:
    return [v.field for v in bad_request(err).field_violations]


def expect_error(code: grpc.StatusCode, fn, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        fn(request, timeout=T)
    err = info.value
    assert err.code() == code, f"expected {code}, got {err.code()}: {err.details()!r}"
    return err


# --------------------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def ledger(channel) -> ledger_pb2_grpc.LedgerStub:
    return ledger_pb2_grpc.LedgerStub(channel)


@pytest.fixture(scope="session")
def events(channel) -> events_pb2_grpc.EventsStub:
    return events_pb2_grpc.EventsStub(channel)


def party_cmd(party_id: str, kind=types_pb2.PARTY_KIND_STATE, name: str | None = None, **kw):
    return types_pb2.RegisterPartyCommand(
        party_id=party_id, kind=kind, name=name or party_id.replace("-", " ").title(), **kw
    )


def register_party(ledger, party_id: str, **kw) -> ledger_pb2.RegisterPartyResponse:
    return ledger.RegisterParty(
        ledger_pb2.RegisterPartyRequest(command=party_cmd(party_id, **kw)), timeout=T
    )


PUBLISHED = datetime(2025, 3, 12, 14, 0, tzinfo=timezone.utc)
STATED_DAY = datetime(2025, 3, 12, tzinfo=timezone.utc)


@pytest.fixture(scope="session")
def world(ledger):
    """Russia, Sergey Lavrov (Foreign Minister of Russia) and the Al Jazeera source, registered once."""
    russia = ledger.RegisterParty(
        ledger_pb2.RegisterPartyRequest(
            command=types_pb2.RegisterPartyCommand(
                party_id="russia",
                kind=types_pb2.PARTY_KIND_STATE,
                name="Russia",
                aliases=["Moscow", "the Kremlin"],
            )
        ),
        timeout=T,
    )
    lavrov = ledger.RegisterParty(
        ledger_pb2.RegisterPartyRequest(
            command=types_pb2.RegisterPartyCommand(
                party_id="sergey-lavrov",
                kind=types_pb2.PARTY_KIND_PERSON,
                name="Sergey Lavrov",
                affiliations=[
                    types_pb2.Affiliation(organisation_id="russia", role="Foreign Minister")
                ],
            )
        ),
        timeout=T,
    )
    text = corpus_text()
    retrieved = datetime.now(timezone.utc) - timedelta(minutes=1)
    source = ledger.RegisterSource(
        ledger_pb2.RegisterSourceRequest(
            command=types_pb2.RegisterSourceCommand(
                publisher="Al Jazeera",
                url="https://www.aljazeera.com/news/russia-proposes-istanbul-peace-talks",
                title="Russia proposes renewed peace talks with Ukraine in Istanbul",
                published_at=ts(PUBLISHED),
                retrieved_at=ts(retrieved),
                language="en",
                text=text,
            )
        ),
        timeout=T,
    )
    return {"russia": russia, "lavrov": lavrov, "source": source, "text": text}


def lavrov_statement(source_id: str, text: str, **overrides) -> types_pb2.RecordStatementCommand:
    start = text.index(LAVROV_QUOTE)  # Python str index == Unicode code point offset
    span = dict(source_id=source_id, start=start, end=start + len(LAVROV_QUOTE), exact=LAVROV_QUOTE)
    span.update(overrides.pop("span", {}))
    fields = dict(
        speaker_id="sergey-lavrov",
        on_behalf_of_id="russia",
        stated_time=types_pb2.StatedTime(at=ts(STATED_DAY), precision=types_pb2.TIME_PRECISION_DAY),
        venue="press briefing in Moscow",
        mode=types_pb2.STATEMENT_MODE_DIRECT_QUOTE,
        attribution_verb="told reporters",
        content=LAVROV_QUOTE,
        spans=[types_pb2.Span(**span)],
    )
    fields.update(overrides)
    return types_pb2.RecordStatementCommand(**fields)


def head(events) -> events_pb2.GetHeadResponse:
    return events.GetHead(events_pb2.GetHeadRequest(), timeout=T)


def read_all(events, *, backwards: bool = False, page: int = 1000) -> list:
    """The whole log, following next_position until it is unset."""
    out = []
    req = events_pb2.ReadAllRequest(
        direction=events_pb2.DIRECTION_BACKWARDS if backwards else events_pb2.DIRECTION_FORWARDS,
        from_end=backwards,
        max_count=page,
    )
    for _ in range(100_000):
        resp = events.ReadAll(req, timeout=T)
        out.extend(resp.events)
        if not resp.HasField("next_position"):
            return out
        assert resp.events, "a page without events must not carry next_position"
        req = events_pb2.ReadAllRequest(
            direction=req.direction, from_position=resp.next_position, max_count=page
        )
    pytest.fail("ReadAll never stopped returning next_position")


def check_appended(ev: types_pb2.AppendedEvent, stream: str, revision: int = 0) -> None:
    assert ev.stream == stream
    assert ev.stream_revision == revision
    assert HEX64.match(ev.hash), ev.hash
    uuid.UUID(ev.event_id)


# --------------------------------------------------------------------------------------------------
# Writes
# --------------------------------------------------------------------------------------------------


def test_register_parties_source_and_statement(world, ledger, events):
    russia, lavrov, source, text = world["russia"], world["lavrov"], world["source"], world["text"]

    assert russia.party_id == "russia"
    assert len(russia.result.events) == 1
    check_appended(russia.result.events[0], "party-russia")
    assert not russia.result.deduplicated
    assert russia.result.HasField("recorded_at")

    assert lavrov.party_id == "sergey-lavrov"
    check_appended(lavrov.result.events[0], "party-sergey-lavrov")
    assert lavrov.result.events[0].position > russia.result.events[0].position

    uuid.UUID(source.source_id)
    assert len(source.result.events) == 1
    assert source.result.events[0].stream.endswith(source.source_id)

    # The corpus has curly quotes/apostrophes before the quote, so code point offsets differ from
    # UTF-8 byte offsets: the server must use code points.
    start = text.index(LAVROV_QUOTE)
    assert len(text[:start].encode("utf-8")) != start, "test text must contain non-ASCII before the quote"

    resp = ledger.RecordStatement(
        ledger_pb2.RecordStatementRequest(
            options=types_pb2.WriteOptions(correlation_id="pytest-correlation"),
            command=lavrov_statement(source.source_id, text),
        ),
        timeout=T,
    )
    assert resp.statement_id
    uuid.UUID(resp.statement_id)
    assert len(resp.result.events) == 1
    ev = resp.result.events[0]
    check_appended(ev, f"statement-{resp.statement_id}")
    assert ev.position > source.result.events[0].position

    # The stored event carries the verified span and the envelope fields.
    stream = events.ReadStream(
        events_pb2.ReadStreamRequest(stream=f"statement-{resp.statement_id}"), timeout=T
    )
    assert [e.event_id for e in stream.events] == [ev.event_id]
    env = stream.events[0]
    assert env.hash == ev.hash
    assert env.position == ev.position
    assert env.event_type == "StatementRecorded"
    assert env.correlation_id == "pytest-correlation"
    assert hashlib.sha256(env.stored_bytes).hexdigest() == env.hash
    payload = env.payload.statement_recorded
    assert payload.statement_id == resp.statement_id
    assert payload.speaker_id == "sergey-lavrov"
    assert payload.on_behalf_of_id == "russia"
    assert list(payload.spans) == [
        types_pb2.Span(
            source_id=source.source_id,
            start=start,
            end=start + len(LAVROV_QUOTE),
            exact=LAVROV_QUOTE,
        )
    ]


def test_idempotent_register_party(ledger, events):
    party_id = uniq("idem-party")
    key = f"pytest-{uuid.uuid4()}"
    req = ledger_pb2.RegisterPartyRequest(
        options=types_pb2.WriteOptions(idempotency_key=key),
        command=party_cmd(party_id, kind=types_pb2.PARTY_KIND_GROUP, name="Western leaders"),
    )
    first = ledger.RegisterParty(req, timeout=T)
    assert not first.result.deduplicated
    count = head(events).event_count

    # The key is part of the hashed record (so it survives export and restore) and of the envelope.
    env = events.ReadAll(
        events_pb2.ReadAllRequest(from_position=first.result.events[0].position, max_count=1),
        timeout=T,
    ).events[0]
    assert env.idempotency_key == key
    assert hashlib.sha256(env.stored_bytes).hexdigest() == env.hash
    mark = json.loads(env.stored_bytes)["idempotency"]
    assert mark["key"] == key and mark["events"] == 1
    assert re.fullmatch(r"[0-9a-f]{64}", mark["content_hash"])

    again = ledger.RegisterParty(req, timeout=T)
    assert again.result.deduplicated
    assert again.party_id == first.party_id == party_id
    assert again.result.events[0].position == first.result.events[0].position
    assert list(again.result.events) == list(first.result.events)
    assert again.result.recorded_at == first.result.recorded_at
    assert head(events).event_count == count, "a deduplicated write must write nothing"

    changed = ledger_pb2.RegisterPartyRequest(
        options=types_pb2.WriteOptions(idempotency_key=key),
        command=party_cmd(party_id, kind=types_pb2.PARTY_KIND_GROUP, name="Some other name"),
    )
    expect_error(grpc.StatusCode.ALREADY_EXISTS, ledger.RegisterParty, changed)
    assert head(events).event_count == count


def test_span_with_wrong_exact_text_is_invalid_argument(world, ledger, events):
    count = head(events).event_count
    cmd = lavrov_statement(
        world["source"].source_id, world["text"], span={"exact": "We are prepared to resume talks"}
    )
    err = expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        ledger.RecordStatement,
        ledger_pb2.RecordStatementRequest(command=cmd),
    )
    assert "command.spans[0].exact" in violation_fields(err)
    assert head(events).event_count == count, "a failed write must write nothing"


def test_span_with_utf8_byte_offsets_is_rejected(world, ledger):
    """Offsets are code points; the same quote addressed by UTF-8 byte offsets does not match."""
    text = world["text"]
    start = text.index(LAVROV_QUOTE)
    byte_start = len(text[:start].encode("utf-8"))
    assert byte_start != start
    cmd = lavrov_statement(
        world["source"].source_id,
        text,
        span={"start": byte_start, "end": byte_start + len(LAVROV_QUOTE.encode("utf-8"))},
    )
    err = expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        ledger.RecordStatement,
        ledger_pb2.RecordStatementRequest(command=cmd),
    )
    assert "command.spans[0].exact" in violation_fields(err)


def test_bad_slug_is_invalid_argument(ledger):
    err = expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        ledger.RegisterParty,
        ledger_pb2.RegisterPartyRequest(command=party_cmd("Not A Slug", name="Not a slug")),
    )
    br = bad_request(err)
    fields = [v.field for v in br.field_violations]
    assert "command.party_id" in fields
    assert all(v.description for v in br.field_violations)


def test_unknown_speaker_is_not_found(world, ledger):
    cmd = lavrov_statement(
        world["source"].source_id, world["text"], speaker_id=uniq("nobody"), on_behalf_of_id=""
    )
    expect_error(
        grpc.StatusCode.NOT_FOUND,
        ledger.RecordStatement,
        ledger_pb2.RecordStatementRequest(command=cmd),
    )


def test_register_same_party_twice_is_already_exists(ledger, events):
    party_id = uniq("twice")
    register_party(ledger, party_id)
    count = head(events).event_count
    expect_error(
        grpc.StatusCode.ALREADY_EXISTS,
        ledger.RegisterParty,
        ledger_pb2.RegisterPartyRequest(command=party_cmd(party_id)),
    )
    assert head(events).event_count == count


def test_expected_revision_mismatch_is_failed_precondition(world, ledger, events):
    count = head(events).event_count
    err = expect_error(
        grpc.StatusCode.FAILED_PRECONDITION,
        ledger.UpdateParty,
        ledger_pb2.UpdatePartyRequest(
            expected_revision=types_pb2.ExpectedRevision(
                kind=types_pb2.EXPECTED_REVISION_KIND_EXACT, revision=7
            ),
            command=types_pb2.UpdatePartyCommand(
                party_id="russia", kind=types_pb2.PARTY_KIND_STATE, name="Russian Federation"
            ),
        ),
    )
    message = err.details() or ""
    assert "party-russia" in message, message
    assert re.search(r"\b7\b", message), f"expected revision 7 not in {message!r}"
    assert re.search(r"\b0\b", message), f"actual revision 0 not in {message!r}"
    assert head(events).event_count == count
    stream = events.ReadStream(events_pb2.ReadStreamRequest(stream="party-russia"), timeout=T)
    assert stream.last_revision == 0
    assert [e.event_type for e in stream.events] == ["PartyRegistered"]


def test_batch_is_all_or_nothing(ledger, events):
    party_id = uniq("batch-party")
    count = head(events).event_count
    req = ledger_pb2.SubmitBatchRequest(
        commands=[
            ledger_pb2.BatchCommand(register_party=party_cmd(party_id)),
            ledger_pb2.BatchCommand(register_party=party_cmd("Not A Slug", name="Bad")),
        ]
    )
    err = expect_error(grpc.StatusCode.INVALID_ARGUMENT, ledger.SubmitBatch, req)
    fields = violation_fields(err)
    assert fields and all(f.startswith("commands[1].") for f in fields), fields
    assert head(events).event_count == count, "a failed batch must write nothing"

    # Command 0 was not applied: the party can still be registered.
    resp = register_party(ledger, party_id)
    assert resp.party_id == party_id
    assert not resp.result.deduplicated


def test_batch_applies_all_commands_in_order(ledger):
    person, org = uniq("batch-person"), uniq("batch-org")
    resp = ledger.SubmitBatch(
        ledger_pb2.SubmitBatchRequest(
            commands=[
                ledger_pb2.BatchCommand(
                    register_party=party_cmd(org, kind=types_pb2.PARTY_KIND_ORGANISATION)
                ),
                # Refers to the party created by command 0 of the same batch.
                ledger_pb2.BatchCommand(
                    register_party=party_cmd(
                        person,
                        kind=types_pb2.PARTY_KIND_PERSON,
                        affiliations=[types_pb2.Affiliation(organisation_id=org, role="Analyst")],
                    )
                ),
            ]
        ),
        timeout=T,
    )
    assert [r.entity_id for r in resp.results] == [org, person]
    assert [r.event.stream for r in resp.results] == [f"party-{org}", f"party-{person}"]
    positions = [e.position for e in resp.result.events]
    assert positions == list(range(positions[0], positions[0] + 2))
    assert [r.event for r in resp.results] == list(resp.result.events)


# --------------------------------------------------------------------------------------------------
# The log
# --------------------------------------------------------------------------------------------------


def test_read_all_is_gap_free_and_hash_chained(world, events):
    forwards = read_all(events)
    h = head(events)
    n = len(forwards)
    assert n >= 3  # at least the world fixture's events
    assert h.event_count == n
    assert [e.position for e in forwards] == list(range(n))
    assert h.position == n - 1
    assert h.hash == forwards[-1].hash

    prev = ZERO_HASH
    for e in forwards:
        assert HEX64.match(e.hash), e.hash
        assert hashlib.sha256(e.stored_bytes).hexdigest() == e.hash, f"position {e.position}"
        assert e.prev_hash == prev, f"position {e.position}"
        assert e.payload.WhichOneof("kind") is not None, f"position {e.position}"
        prev = e.hash

    assert len({e.event_id for e in forwards}) == n

    backwards = read_all(events, backwards=True)
    assert [(e.position, e.hash) for e in backwards] == [(e.position, e.hash) for e in reversed(forwards)]

    # Small pages resume exactly where the previous one stopped.
    paged = read_all(events, page=2)
    assert [e.event_id for e in paged] == [e.event_id for e in forwards]
    paged_back = read_all(events, backwards=True, page=2)
    assert [e.event_id for e in paged_back] == [e.event_id for e in reversed(forwards)]


def test_empty_log_head(fresh_server):
    with grpc.insecure_channel(fresh_server.addr) as ch:
        ev = events_pb2_grpc.EventsStub(ch)
        h = ev.GetHead(events_pb2.GetHeadRequest(), timeout=T)
        assert h.event_count == 0
        assert h.hash == ZERO_HASH
        resp = ev.ReadAll(events_pb2.ReadAllRequest(), timeout=T)
        assert list(resp.events) == []
        assert not resp.HasField("next_position")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_acknowledged_writes_survive_restart(start_server, sig):
    srv = start_server()
    with grpc.insecure_channel(srv.addr) as ch:
        ledger = ledger_pb2_grpc.LedgerStub(ch)
        resp = register_party(ledger, "ukraine")
        before = read_all(events_pb2_grpc.EventsStub(ch))
    assert [e.event_id for e in before] == [resp.result.events[0].event_id]
    srv.stop(sig)

    srv.start()  # same data dir
    try:
        with grpc.insecure_channel(srv.addr) as ch:
            ev = events_pb2_grpc.EventsStub(ch)
            after = read_all(ev)
            assert [(e.event_id, e.hash, e.stored_bytes) for e in after] == [
                (e.event_id, e.hash, e.stored_bytes) for e in before
            ]
            expect_error(
                grpc.StatusCode.ALREADY_EXISTS,
                ledger_pb2_grpc.LedgerStub(ch).RegisterParty,
                ledger_pb2.RegisterPartyRequest(command=party_cmd("ukraine")),
            )
    finally:
        srv.stop()


# --------------------------------------------------------------------------------------------------
# Standard services
# --------------------------------------------------------------------------------------------------


def test_health_serving(channel):
    resp = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=""), timeout=T
    )
    assert resp.status == health_pb2.HealthCheckResponse.SERVING


EXPECTED_SERVICES = {"claimsledger.v1.Ledger", "claimsledger.v1.Events", "grpc.health.v1.Health"}


def _list_services(responses) -> set[str]:
    names = set()
    for resp in responses:
        assert resp.WhichOneof("message_response") == "list_services_response", resp
        names.update(s.name for s in resp.list_services_response.service)
    return names


def test_reflection_v1alpha_lists_services(channel):
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=T
    )
    names = _list_services(responses)
    assert EXPECTED_SERVICES <= names, names


def test_reflection_v1alpha_serves_descriptors(channel):
    """What grpcurl needs: the service's file descriptor, with its dependencies."""
    pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
    ledger_svc = pool.FindServiceByName("claimsledger.v1.Ledger")
    assert "RecordStatement" in ledger_svc.methods_by_name
    events_svc = pool.FindServiceByName("claimsledger.v1.Events")
    assert "ReadAll" in events_svc.methods_by_name
    span = pool.FindMessageTypeByName("claimsledger.v1.Span")
    assert {f.name for f in span.fields} == {"source_id", "start", "end", "exact"}


def test_reflection_v1_lists_services(channel):
    """grpc.reflection.v1 has the same messages as v1alpha, so the v1alpha classes serialize it."""
    call = channel.stream_stream(
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    names = _list_services(
        call(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=T)
    )
    assert EXPECTED_SERVICES <= names, names
