"""Independent Python (grpcio) client tests of the claimsledger.v1.Query service (the read side).

Written from proto/claimsledger/v1/query.proto and types.proto, as a client in another language would,
and checked against the built-in Istanbul dataset (datasets/istanbul.json) loaded by `serve --demo`:

* GetPositions returns Russia's stance on `negotiation-venue` ("Istanbul") with full provenance: the
  claim, the statement (Sergey Lavrov's direct quote), its spans with the source's metadata, and the
  origin (event id, log position, recorder, time) of each; every origin is cross-checked against the
  log itself (Events.ReadAll). GetSource then returns the source text, and the test verifies in Python,
  independently of the server, that its SHA-256 is the recorded `text_sha256` and that the span's code
  point offsets address exactly the quoted text and its context.
* GetPositionHistory returns Turkey's two stances on `mediation` in stated-time order.
* Errors carry precise status codes, and INVALID_ARGUMENT carries google.rpc.BadRequest details (from
  the `grpc-status-details-bin` trailer) naming the offending field.
* Read-your-writes: on a server of its own, a party registered through the Ledger service is returned by
  GetParty at once when the read asks for `consistency.min_position` = the write's last position + 1.

Tests on the session's `demo_server` never write to it (see conftest.py).
"""

from __future__ import annotations

import hashlib
import re
import uuid

import grpc
import pytest
from google.rpc import code_pb2, error_details_pb2
from grpc_status import rpc_status

# Generated at session start by conftest.py.
from claimsledger.v1 import (
    events_pb2,
    events_pb2_grpc,
    ledger_pb2,
    ledger_pb2_grpc,
    query_pb2,
    query_pb2_grpc,
    types_pb2,
)

T = 10.0  # deadline of every RPC, seconds
HEX64 = re.compile(r"^[0-9a-f]{64}$")
HTTP_URL = re.compile(r"^https?://[^\s/]+")
#: Context shown around a span when `context_chars` is 0 (query.proto: "0 means 80").
DEFAULT_CONTEXT = 80


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def head(events) -> events_pb2.GetHeadResponse:
    return events.GetHead(events_pb2.GetHeadRequest(), timeout=T)


def read_all(events) -> list:
    """The whole log, following next_position until it is unset."""
    out = []
    req = events_pb2.ReadAllRequest(max_count=1000)
    for _ in range(100_000):
        resp = events.ReadAll(req, timeout=T)
        out.extend(resp.events)
        if not resp.HasField("next_position"):
            return out
        req = events_pb2.ReadAllRequest(from_position=resp.next_position, max_count=1000)
    pytest.fail("ReadAll never stopped returning next_position")


def expect_error(code: grpc.StatusCode, fn, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        fn(request, timeout=T)
    err = info.value
    assert err.code() == code, f"expected {code}, got {err.code()}: {err.details()!r}"
    return err


def bad_request(err: grpc.RpcError) -> error_details_pb2.BadRequest:
    """The google.rpc.BadRequest in the rich error details (grpc-status-details-bin) of a failed call."""
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


def check_origin(origin, log: list, what: str, payload_kind: str):
    """An Origin is complete and names exactly the event at its position in the log."""
    assert origin.event_id, f"{what}: origin has no event_id"
    uuid.UUID(origin.event_id)
    assert origin.recorded_by, f"{what}: origin has no recorded_by"
    assert origin.HasField("recorded_at"), f"{what}: origin has no recorded_at"
    assert origin.recorded_at.seconds > 0, f"{what}: recorded_at is the epoch"
    assert origin.position < len(log), f"{what}: origin position {origin.position} beyond the log"
    event = log[origin.position]
    assert event.event_id == origin.event_id, (
        f"{what}: origin says event {origin.event_id} at position {origin.position}, "
        f"the log has {event.event_id} there"
    )
    assert origin.stream == event.stream
    assert origin.stream_revision == event.stream_revision
    assert origin.recorded_by == event.recorded_by
    assert origin.recorded_at == event.recorded_at
    assert event.payload.WhichOneof("kind") == payload_kind, (
        f"{what}: origin points at a {event.payload.WhichOneof('kind')} event"
    )
    return event


# --------------------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def demo_channel(demo_server: str):
    with grpc.insecure_channel(demo_server) as ch:
        yield ch


@pytest.fixture(scope="session")
def demo_query(demo_channel) -> query_pb2_grpc.QueryStub:
    return query_pb2_grpc.QueryStub(demo_channel)


@pytest.fixture(scope="session")
def demo_events(demo_channel) -> events_pb2_grpc.EventsStub:
    return events_pb2_grpc.EventsStub(demo_channel)


@pytest.fixture(scope="session")
def demo_count(demo_events) -> int:
    """Number of events in the demo server's log (which the tests never write to)."""
    n = head(demo_events).event_count
    assert n > 0, "the --demo server's log is empty"
    return n


# --------------------------------------------------------------------------------------------------
# Positions with provenance
# --------------------------------------------------------------------------------------------------


def test_russia_negotiation_venue_has_full_provenance(demo_query, demo_events, demo_count):
    resp = demo_query.GetPositions(
        query_pb2.GetPositionsRequest(
            party_id="russia",
            topic="negotiation-venue",
            consistency=query_pb2.ReadConsistency(min_position=demo_count),
        ),
        timeout=T,
    )
    assert resp.stamp.applied_count == demo_count
    assert len(resp.positions) == 1, [p.topic for p in resp.positions]
    pos = resp.positions[0]
    assert (pos.party_id, pos.topic) == ("russia", "negotiation-venue")
    assert pos.HasField("current"), "no current stance"
    cur = pos.current
    assert cur.claim.stance == "Istanbul"
    assert cur.claim.party_id == "russia"
    assert cur.claim.topic == "negotiation-venue"
    assert cur.status == query_pb2.ENTITY_STATUS_ACTIVE

    # The statement: Lavrov's own words.
    stmt = cur.statement
    assert stmt.statement.statement_id == cur.claim.statement_id
    assert stmt.statement.speaker_id == "sergey-lavrov"
    assert stmt.statement.mode == types_pb2.STATEMENT_MODE_DIRECT_QUOTE
    assert stmt.status == query_pb2.ENTITY_STATUS_ACTIVE
    assert "negotiation-venue" in stmt.topics

    # Its first span, with the source's metadata (no text).
    assert stmt.spans, "the statement has no spans"
    span_view = stmt.spans[0]
    span = span_view.span
    assert "Istanbul" in span.exact, span.exact
    assert span.end > span.start
    assert list(stmt.statement.spans)[0] == span, "the span view differs from the recorded span"
    src = span_view.source.source
    assert src.source_id == span.source_id
    uuid.UUID(src.source_id)
    assert src.publisher, "source has no publisher"
    assert HTTP_URL.match(src.url), f"source url {src.url!r} is not http(s)"
    assert HEX64.match(src.text_sha256), f"text_sha256 {src.text_sha256!r}"
    assert src.text == "", "GetPositions must give source metadata only, not the text"
    assert span_view.source.text_length >= span.end

    # Origins: each names exactly the event in the log that recorded the fact.
    log = read_all(demo_events)
    assert len(log) == demo_count
    claim_ev = check_origin(cur.origin, log, "claim", "claim_asserted")
    assert claim_ev.payload.claim_asserted == cur.claim
    stmt_ev = check_origin(stmt.origin, log, "statement", "statement_recorded")
    assert stmt_ev.payload.statement_recorded == stmt.statement
    src_ev = check_origin(span_view.source.origin, log, "source", "source_registered")
    assert src_ev.payload.source_registered.source_id == src.source_id
    assert src_ev.payload.source_registered.text_sha256 == src.text_sha256
    assert src_ev.position < stmt_ev.position < claim_ev.position

    # The current stance is also in the history (the dataset has two "Istanbul" claims by Russia, so
    # only the first entry is a change).
    assert [h.claim.claim.stance for h in pos.history] == ["Istanbul", "Istanbul"]
    assert [h.changed for h in pos.history] == [True, False]
    assert pos.history[-1].claim.claim.claim_id == cur.claim.claim_id

    # The source text, checked independently of the server.
    got = demo_query.GetSource(
        query_pb2.GetSourceRequest(
            source_id=src.source_id,
            include_text=True,
            consistency=query_pb2.ReadConsistency(min_position=demo_count),
        ),
        timeout=T,
    )
    assert got.stamp.applied_count == demo_count
    full = got.source.source
    text = full.text
    assert text, "GetSource(include_text=True) returned no text"
    assert full.source_id == src.source_id
    assert full.text_sha256 == src.text_sha256
    assert hashlib.sha256(text.encode("utf-8")).hexdigest() == src.text_sha256
    assert got.source.text_length == len(text)  # Python len() counts code points

    start, end = span.start, span.end
    # Non-ASCII text before the span makes code point, UTF-8 byte and UTF-16 offsets differ, so this
    # really checks that offsets are code points.
    assert len(text[:start].encode("utf-8")) != start, "expected non-ASCII text before the span"
    assert text[start:end] == span.exact
    assert span_view.before == text[max(0, start - DEFAULT_CONTEXT) : start]
    assert len(span_view.before) == min(start, DEFAULT_CONTEXT)
    assert span_view.after == text[end : end + DEFAULT_CONTEXT]

    # Without include_text, metadata only.
    meta = demo_query.GetSource(query_pb2.GetSourceRequest(source_id=src.source_id), timeout=T)
    assert meta.source.source.text == ""
    assert meta.source.text_length == len(text)


def test_turkey_mediation_history_in_stated_time_order(demo_query, demo_count):
    resp = demo_query.GetPositionHistory(
        query_pb2.GetPositionHistoryRequest(
            party_id="turkey",
            topic="mediation",
            consistency=query_pb2.ReadConsistency(min_position=demo_count),
        ),
        timeout=T,
    )
    assert resp.stamp.applied_count == demo_count
    pos = resp.position
    assert (pos.party_id, pos.topic) == ("turkey", "mediation")
    history = list(pos.history)
    stances = [h.claim.claim.stance for h in history]
    assert len(history) == 2, stances
    assert stances[0] == "willing to mediate between Russia and Ukraine"
    assert stances[1] != stances[0]
    assert [h.changed for h in history] == [True, True]
    times = [(h.changed_at.at.seconds, h.changed_at.at.nanos) for h in history]
    assert times == sorted(times) and times[0] < times[1], f"not in stated-time order: {times}"
    for h in history:
        assert h.claim.claim.party_id == "turkey"
        assert h.claim.claim.topic == "mediation"
        assert h.changed_at == h.claim.statement.statement.stated_time
        assert h.in_force
    # The current stance is the latest stated one.
    assert pos.current.claim.claim_id == history[-1].claim.claim.claim_id


# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------


def test_unknown_party_is_not_found(demo_query):
    expect_error(
        grpc.StatusCode.NOT_FOUND,
        demo_query.GetParty,
        query_pb2.GetPartyRequest(party_id="no-such-party-anywhere"),
    )
    # A known party, for contrast.
    known = demo_query.GetParty(query_pb2.GetPartyRequest(party_id="russia"), timeout=T)
    assert known.party.party.party_id == "russia"


def test_malformed_claim_id_is_invalid_argument(demo_query):
    err = expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        demo_query.GetClaim,
        query_pb2.GetClaimRequest(claim_id="not-a-uuid"),
    )
    br = bad_request(err)
    assert "claim_id" in [v.field for v in br.field_violations], br
    assert all(v.description for v in br.field_violations), br
    # A well-formed but unknown id is NOT_FOUND, not INVALID_ARGUMENT.
    expect_error(
        grpc.StatusCode.NOT_FOUND,
        demo_query.GetClaim,
        query_pb2.GetClaimRequest(claim_id=str(uuid.uuid4())),
    )


@pytest.mark.parametrize("token", ["garbage!!", "zz", "00", "not a token"])
def test_garbage_page_token_is_invalid_argument(demo_query, token):
    err = expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        demo_query.ListStatements,
        query_pb2.ListStatementsRequest(party_id="russia", page_token=token),
    )
    br = bad_request(err)
    assert "page_token" in [v.field for v in br.field_violations], br


# --------------------------------------------------------------------------------------------------
# Read-your-writes
# --------------------------------------------------------------------------------------------------


def test_read_your_writes_get_party(fresh_server):
    with grpc.insecure_channel(fresh_server.addr) as ch:
        ledger = ledger_pb2_grpc.LedgerStub(ch)
        query = query_pb2_grpc.QueryStub(ch)
        # Not there before the write.
        expect_error(
            grpc.StatusCode.NOT_FOUND, query.GetParty, query_pb2.GetPartyRequest(party_id="ryw-party")
        )

        resp = ledger.RegisterParty(
            ledger_pb2.RegisterPartyRequest(
                command=types_pb2.RegisterPartyCommand(
                    party_id="ryw-party",
                    kind=types_pb2.PARTY_KIND_ORGANISATION,
                    name="Read Your Writes",
                    aliases=["RYW"],
                )
            ),
            timeout=T,
        )
        last = resp.result.events[-1]
        p = last.position

        got = query.GetParty(
            query_pb2.GetPartyRequest(
                party_id="ryw-party", consistency=query_pb2.ReadConsistency(min_position=p + 1)
            ),
            timeout=T,
        )
        assert got.stamp.applied_count >= p + 1
        party = got.party.party
        assert party.party_id == "ryw-party"
        assert party.kind == types_pb2.PARTY_KIND_ORGANISATION
        assert party.name == "Read Your Writes"
        assert list(party.aliases) == ["RYW"]
        assert got.party.registered.event_id == last.event_id
        assert got.party.registered.position == p
        assert got.party.registered.stream == "party-ryw-party"
        assert got.party.registered.recorded_at == resp.result.recorded_at
        assert not got.party.HasField("last_updated")
