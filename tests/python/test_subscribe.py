"""Python (grpcio) client tests of claimsledger.v1.Events/Subscribe (server streaming).

Written from proto/claimsledger/v1/events.proto: a subscription starts at from_position (or from_end),
delivers the matching events in log order exactly once, sends one CaughtUp when it first reaches the end
of the log, checkpoints (next_position) after at most checkpoint_every_events scanned events and when
idle after scanning, heartbeats when idle, and ends with UNAVAILABLE when the server shuts down.

Most tests read the session's `serve --demo` server (the built-in Istanbul dataset) and never write to
it; tests that write get a server of their own. Every call has a deadline; running into it is reported
as a test failure with the messages received so far. Calls are always cancelled when the test stops
reading them.
"""

from __future__ import annotations

import hashlib
import itertools
import re
import signal
import threading
import time
from datetime import datetime, timedelta, timezone

import grpc
import pytest
from google.rpc import code_pb2, error_details_pb2
from grpc_status import rpc_status

# Generated at session start by conftest.py.
from claimsledger.v1 import events_pb2, events_pb2_grpc, ledger_pb2, ledger_pb2_grpc, types_pb2

T = 10.0  # deadline of every RPC (and of every whole Subscribe call), seconds
ZERO_HASH = "0" * 64
HEX64 = re.compile(r"^[0-9a-f]{64}$")

_counter = itertools.count(1)


def uniq(prefix: str) -> str:
    return f"{prefix}-sub-{next(_counter)}"


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def kind(msg: events_pb2.SubscribeResponse) -> str | None:
    return msg.WhichOneof("kind")


def describe(msg: events_pb2.SubscribeResponse) -> str:
    k = kind(msg)
    if k == "event":
        return f"event@{msg.event.position}({msg.event.event_type})"
    if k in ("checkpoint", "caught_up", "heartbeat"):
        return f"{k}({getattr(msg, k).next_position})"
    return f"<no kind: {msg!r}>"


class Subscription:
    """One Subscribe call, read message by message; the whole call is bounded by `timeout`.

    Use as a context manager: the call is cancelled on exit, whether or not it was read to its end.
    """

    def __init__(self, stub: events_pb2_grpc.EventsStub, request, timeout: float = T):
        self.request = request
        self.timeout = timeout
        self.call = stub.Subscribe(request, timeout=timeout)
        self.received: list[events_pb2.SubscribeResponse] = []

    def __enter__(self) -> "Subscription":
        return self

    def __exit__(self, *exc) -> None:
        self.cancel()

    def cancel(self) -> None:
        self.call.cancel()

    def history(self, last: int = 40) -> str:
        items = [describe(m) for m in self.received]
        if len(items) > last:
            items = ["..."] + items[-last:]
        return ", ".join(items) or "(nothing)"

    def next(self) -> events_pb2.SubscribeResponse:
        failure = None
        try:
            msg = next(self.call)
        except StopIteration:
            failure = "the subscription ended without an error"
        except grpc.RpcError as err:
            if err.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                raise
            failure = f"timed out ({self.timeout:g} s deadline) waiting for a subscription message"
        if failure is not None:
            request = " ".join(str(self.request).split()) or "(default)"
            pytest.fail(f"{failure}; request: {request}; received: {self.history()}", pytrace=False)
        assert kind(msg) is not None, f"a SubscribeResponse with no kind set: {msg!r}"
        self.received.append(msg)
        return msg

    def until(self, pred) -> list[events_pb2.SubscribeResponse]:
        """Reads until a message satisfies `pred`; returns the messages read (that one included)."""
        out = []
        while True:
            msg = self.next()
            out.append(msg)
            if pred(msg):
                return out


def head(events) -> events_pb2.GetHeadResponse:
    return events.GetHead(events_pb2.GetHeadRequest(), timeout=T)


def read_all(events) -> list:
    out = []
    req = events_pb2.ReadAllRequest(max_count=1000)
    for _ in range(100_000):
        resp = events.ReadAll(req, timeout=T)
        out.extend(resp.events)
        if not resp.HasField("next_position"):
            return out
        req = events_pb2.ReadAllRequest(from_position=resp.next_position, max_count=1000)
    pytest.fail("ReadAll never stopped returning next_position")


def matches(e, prefixes=(), types=()) -> bool:
    return (not prefixes or any(e.stream.startswith(p) for p in prefixes)) and (
        not types or e.event_type in types
    )


def ids(evs) -> list[tuple[int, str]]:
    return [(e.position, e.event_id) for e in evs]


def check_progress_consistent(msgs, start: int = 0) -> None:
    """Every checkpoint / caught_up / heartbeat next_position is non-decreasing, is after every event
    delivered before it and not after any event delivered after it."""
    last_next = start
    last_event = start - 1
    for i, m in enumerate(msgs):
        k = kind(m)
        if k == "event":
            assert m.event.position >= last_next, (
                f"message {i}: event at {m.event.position} after a marker said next_position "
                f"{last_next}"
            )
            assert m.event.position > last_event
            last_event = m.event.position
        else:
            p = getattr(m, k).next_position
            assert p >= last_next, f"message {i}: {k} next_position went back {last_next} -> {p}"
            assert p > last_event, f"message {i}: {k}({p}) but event {last_event} was delivered"
            last_next = p


@pytest.fixture(scope="session")
def demo_channel(demo_server: str):
    with grpc.insecure_channel(demo_server) as ch:
        yield ch


@pytest.fixture(scope="session")
def demo_events(demo_channel) -> events_pb2_grpc.EventsStub:
    return events_pb2_grpc.EventsStub(demo_channel)


@pytest.fixture(scope="session")
def demo_log(demo_events) -> list:
    """The demo server's whole log (it is never written to by the tests)."""
    log = read_all(demo_events)
    assert log, "the --demo server's log is empty"
    assert head(demo_events).event_count == len(log)
    return log


# --------------------------------------------------------------------------------------------------
# Catch-up
# --------------------------------------------------------------------------------------------------


def test_subscribe_from_zero_delivers_whole_log_then_caught_up(demo_events, demo_log):
    n = head(demo_events).event_count
    assert n == len(demo_log)
    with Subscription(demo_events, events_pb2.SubscribeRequest(from_position=0)) as sub:
        msgs = sub.until(lambda m: kind(m) == "caught_up")

    evs = [m.event for m in msgs if kind(m) == "event"]
    positions = [e.position for e in evs]
    assert positions == list(range(n)), f"positions {positions}, expected 0..{n - 1}"

    prev = ZERO_HASH
    for e in evs:
        assert HEX64.match(e.hash), e.hash
        assert hashlib.sha256(e.stored_bytes).hexdigest() == e.hash, f"position {e.position}"
        assert e.prev_hash == prev, f"position {e.position}: prev_hash does not link"
        assert e.payload.WhichOneof("kind") is not None, f"position {e.position}"
        prev = e.hash
    assert prev == head(demo_events).hash

    # The same envelopes as ReadAll, field for field.
    assert evs == demo_log

    types = [e.event_type for e in evs]
    assert types[0] == "PartyRegistered", types[:5]
    for t in ("SourceRegistered", "StatementRecorded", "ClaimAsserted"):
        assert t in types, f"no {t} in {sorted(set(types))}"

    assert msgs[-1].caught_up.next_position == n
    # Unfiltered: any checkpoint before CaughtUp says exactly how many events were delivered so far.
    delivered = 0
    for m in msgs:
        if kind(m) == "event":
            delivered += 1
        else:
            assert getattr(m, kind(m)).next_position == delivered, describe(m)
    check_progress_consistent(msgs)


def test_filtered_subscription_checkpoints_and_heartbeats(demo_events, demo_log):
    n = head(demo_events).event_count
    every = 10
    prefixes, types = ["claim-"], ["ClaimAsserted"]
    expected = [e for e in demo_log if matches(e, prefixes, types)]
    claims_in_log = [e for e in demo_log if e.event_type == "ClaimAsserted"]
    assert expected, "the demo dataset has no ClaimAsserted events on claim- streams"

    req = events_pb2.SubscribeRequest(
        from_position=0,
        stream_prefixes=prefixes,
        event_types=types,
        checkpoint_every_events=every,
        checkpoint_every_ms=3_600_000,  # only the event count triggers checkpoints while scanning
        heartbeat_ms=200,
    )
    with Subscription(demo_events, req) as sub:
        before = sub.until(lambda m: kind(m) == "caught_up")
        checkpoint_at_end_before = any(
            kind(m) == "checkpoint" and m.checkpoint.next_position == n for m in before
        )
        # Idle after scanning: a checkpoint at the end of the log (unless one was just sent there
        # while scanning), then heartbeats.
        after = sub.until(
            lambda m: kind(m) == "heartbeat"
            and (
                checkpoint_at_end_before
                or any(
                    kind(x) == "checkpoint" and x.checkpoint.next_position == n
                    for x in sub.received[len(before):]
                )
            )
        )
        # And heartbeats keep coming while idle.
        more = sub.until(lambda m: kind(m) == "heartbeat")
    msgs = before + after + more

    evs = [m.event for m in msgs if kind(m) == "event"]
    for e in evs:
        assert e.stream.startswith("claim-") and e.event_type == "ClaimAsserted", (
            f"filtered subscription delivered {e.event_type} on {e.stream} at {e.position}"
        )
    positions = [e.position for e in evs]
    assert positions == sorted(set(positions)), f"not strictly increasing: {positions}"
    assert len(evs) == len(claims_in_log)
    assert ids(evs) == ids(expected)
    assert evs == expected
    assert all(kind(m) != "event" for m in after + more), "events after CaughtUp on an idle log"

    assert before[-1].caught_up.next_position == n
    assert sum(kind(m) == "caught_up" for m in msgs) == 1, sub.history()
    cps_after = [m.checkpoint.next_position for m in after if kind(m) == "checkpoint"]
    if n % every != 0:
        assert n in cps_after, f"no checkpoint({n}) once idle after CaughtUp: {sub.history()}"
    else:
        assert checkpoint_at_end_before or n in cps_after, sub.history()
    assert all(p == n for p in cps_after), sub.history()

    # At most `every` events scanned between checkpoints while catching up.
    progress = [0] + [m.checkpoint.next_position for m in before if kind(m) == "checkpoint"] + [n]
    gaps = [b - a for a, b in zip(progress, progress[1:])]
    assert all(g <= every for g in gaps), f"checkpoints at {progress[1:-1]} (every {every}), n={n}"

    heartbeats = [m.heartbeat for m in msgs if kind(m) == "heartbeat"]
    assert len(heartbeats) >= 2
    now = datetime.now(timezone.utc)
    for hb in heartbeats:
        assert hb.next_position == n
        assert hb.HasField("at")
        at = hb.at.ToDatetime(tzinfo=timezone.utc)
        assert abs(now - at) < timedelta(minutes=1), f"heartbeat at {at}, now {now}"
    check_progress_consistent(msgs)


# --------------------------------------------------------------------------------------------------
# Live
# --------------------------------------------------------------------------------------------------


def test_live_delivery_from_end(fresh_demo_server):
    with grpc.insecure_channel(fresh_demo_server.addr) as sub_ch, grpc.insecure_channel(
        fresh_demo_server.addr
    ) as write_ch:
        events = events_pb2_grpc.EventsStub(sub_ch)
        ledger = ledger_pb2_grpc.LedgerStub(write_ch)
        count = head(events).event_count
        assert count > 0

        all_req = events_pb2.SubscribeRequest(from_end=True, heartbeat_ms=200)
        # A concurrent filtered subscription that the new event does not match.
        claims_req = events_pb2.SubscribeRequest(
            from_end=True, event_types=["ClaimAsserted"], heartbeat_ms=200
        )
        with Subscription(events, all_req) as sub, Subscription(events, claims_req) as claims:
            # CaughtUp first: nothing is delivered from the existing log, and it says the subscription
            # has started (from_end resolved) before we write.
            first = sub.until(lambda m: kind(m) == "caught_up")
            assert [kind(m) for m in first if kind(m) == "event"] == [], sub.history()
            assert first[-1].caught_up.next_position == count
            first_c = claims.until(lambda m: kind(m) == "caught_up")
            assert first_c[-1].caught_up.next_position == count

            party_id = uniq("live-party")
            resp = ledger.RegisterParty(
                ledger_pb2.RegisterPartyRequest(
                    command=types_pb2.RegisterPartyCommand(
                        party_id=party_id, kind=types_pb2.PARTY_KIND_STATE, name="Live Party"
                    )
                ),
                timeout=T,
            )
            appended = resp.result.events[0]
            assert appended.position == count

            got = sub.until(lambda m: kind(m) == "event")
            ev = got[-1].event
            assert ev.stream == f"party-{party_id}"
            assert ev.position == count
            assert ev.event_type == "PartyRegistered"
            assert ev.event_id == appended.event_id
            assert ev.hash == appended.hash
            assert hashlib.sha256(ev.stored_bytes).hexdigest() == ev.hash
            # Nothing else: the next messages until two heartbeats are not events.
            rest = sub.until(lambda m: kind(m) == "heartbeat")
            rest += sub.until(lambda m: kind(m) == "heartbeat")
            assert all(kind(m) != "event" for m in rest), sub.history()
            for m in rest:
                assert getattr(m, kind(m)).next_position == count + 1, describe(m)

            # The filtered subscription scanned the party event without delivering it and reports
            # that progress once idle.
            skipped = claims.until(
                lambda m: kind(m) == "checkpoint" and m.checkpoint.next_position == count + 1
            )
            assert all(kind(m) != "event" for m in skipped), claims.history()
            check_progress_consistent(first + got + rest, start=count)
            check_progress_consistent(first_c + skipped, start=count)

        log = read_all(events)
        assert len(log) == count + 1
        assert log[-1] == ev
        assert ev.prev_hash == log[-2].hash


def test_slow_consumer_does_not_block_writers(fresh_demo_server):
    """A subscriber that stops reading does not hold up writes; later it still gets every event."""
    batches, per_batch = 8, 250
    with grpc.insecure_channel(fresh_demo_server.addr) as sub_ch, grpc.insecure_channel(
        fresh_demo_server.addr
    ) as write_ch:
        events = events_pb2_grpc.EventsStub(sub_ch)
        ledger = ledger_pb2_grpc.LedgerStub(write_ch)
        start_count = head(events).event_count
        req = events_pb2.SubscribeRequest(from_position=0, heartbeat_ms=200)
        with Subscription(events, req, timeout=60.0) as sub:
            sub.next()  # started; from now on the subscriber does not read while writes go on
            t0 = time.monotonic()
            for b in range(batches):
                ledger.SubmitBatch(
                    ledger_pb2.SubmitBatchRequest(
                        commands=[
                            ledger_pb2.BatchCommand(
                                register_party=types_pb2.RegisterPartyCommand(
                                    party_id=f"slow-{b}-{i}",
                                    kind=types_pb2.PARTY_KIND_PERSON,
                                    name=f"Slow Consumer Test Party {b} {i} " + "x" * 150,
                                )
                            )
                            for i in range(per_batch)
                        ]
                    ),
                    timeout=T,
                )
            write_s = time.monotonic() - t0
            n = start_count + batches * per_batch
            assert head(events).event_count == n
            sub.until(lambda m: kind(m) == "event" and m.event.position == n - 1)
            msgs = sub.received + sub.until(lambda m: kind(m) == "heartbeat")
    evs = [m.event for m in msgs if kind(m) == "event"]
    assert [e.position for e in evs] == list(range(n)), "gap, duplicate or reordering"
    assert sum(kind(m) == "caught_up" for m in msgs) == 1
    check_progress_consistent(msgs)
    assert write_s < T, f"{batches * per_batch} writes took {write_s:.1f} s"


# --------------------------------------------------------------------------------------------------
# Resume
# --------------------------------------------------------------------------------------------------


def test_resume_after_third_event(demo_events, demo_log):
    prefixes = ["statement-", "claim-"]
    expected = [e for e in demo_log if matches(e, prefixes)]
    assert len(expected) > 3

    req = events_pb2.SubscribeRequest(from_position=0, stream_prefixes=prefixes, heartbeat_ms=200)
    with Subscription(demo_events, req) as first:
        got = []
        while len(got) < 3:
            m = first.next()
            if kind(m) == "event":
                got.append(m.event)
        first.cancel()
    third = got[-1]
    assert ids(got) == ids(expected[:3])

    req2 = events_pb2.SubscribeRequest(
        from_position=third.position + 1, stream_prefixes=prefixes, heartbeat_ms=200
    )
    with Subscription(demo_events, req2) as second:
        msgs = second.until(lambda m: kind(m) == "caught_up")
    rest = [m.event for m in msgs if kind(m) == "event"]
    assert msgs[-1].caught_up.next_position == len(demo_log)
    assert all(e.position > third.position for e in rest)
    assert ids(got + rest) == ids(expected), "resumed run repeated or missed events"
    assert got + rest == expected
    check_progress_consistent(msgs, start=third.position + 1)


def test_resume_from_checkpoint(demo_events, demo_log):
    """Stopping at a checkpoint and resuming from its next_position misses and repeats nothing."""
    n = len(demo_log)
    types = ["SourceRegistered", "ClaimAsserted"]
    expected = [e for e in demo_log if matches(e, types=types)]
    assert expected
    every = 7
    req = events_pb2.SubscribeRequest(
        from_position=0,
        event_types=types,
        checkpoint_every_events=every,
        checkpoint_every_ms=3_600_000,
        heartbeat_ms=200,
    )
    with Subscription(demo_events, req) as first:
        msgs = first.until(
            lambda m: kind(m) == "checkpoint" and m.checkpoint.next_position >= n // 2
        )
        first.cancel()
    cp = msgs[-1].checkpoint.next_position
    assert cp < n
    got = [m.event for m in msgs if kind(m) == "event"]
    assert ids(got) == ids([e for e in expected if e.position < cp])

    req2 = events_pb2.SubscribeRequest(
        from_position=cp, event_types=types, checkpoint_every_events=every, heartbeat_ms=200
    )
    with Subscription(demo_events, req2) as second:
        msgs2 = second.until(lambda m: kind(m) == "caught_up")
    rest = [m.event for m in msgs2 if kind(m) == "event"]
    assert ids(got + rest) == ids(expected)
    assert msgs2[-1].caught_up.next_position == n


def test_subscribe_at_end_position_is_caught_up_at_once(demo_events, demo_log):
    n = len(demo_log)
    req = events_pb2.SubscribeRequest(from_position=n, heartbeat_ms=100)
    with Subscription(demo_events, req) as sub:
        msgs = sub.until(lambda m: kind(m) == "heartbeat")
    assert kind(msgs[0]) == "caught_up" and msgs[0].caught_up.next_position == n, sub.history()
    assert all(kind(m) != "event" for m in msgs)
    assert msgs[-1].heartbeat.next_position == n


# --------------------------------------------------------------------------------------------------
# Invalid requests
# --------------------------------------------------------------------------------------------------


def subscribe_error(stub, request) -> grpc.RpcError:
    call = stub.Subscribe(request, timeout=T)
    try:
        with pytest.raises(grpc.RpcError) as info:
            for msg in call:
                pytest.fail(f"an invalid Subscribe request got a message: {describe(msg)}")
    finally:
        call.cancel()
    return info.value


def violation_fields(err: grpc.RpcError) -> list[str]:
    status = rpc_status.from_call(err)
    assert status is not None, f"no rich error details on {err.code()}: {err.details()!r}"
    assert status.code == code_pb2.INVALID_ARGUMENT
    fields = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            br = error_details_pb2.BadRequest()
            detail.Unpack(br)
            fields.extend(v.field for v in br.field_violations)
    return fields


@pytest.mark.parametrize("heartbeat_ms", [5, 1, 99])
def test_too_small_heartbeat_is_invalid_argument(demo_events, heartbeat_ms):
    err = subscribe_error(demo_events, events_pb2.SubscribeRequest(heartbeat_ms=heartbeat_ms))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, f"{err.code()}: {err.details()!r}"
    assert "heartbeat_ms" in violation_fields(err)


@pytest.mark.parametrize(
    "request_kwargs, field",
    [
        ({"stream_prefixes": [f"p{i}-" for i in range(65)]}, "stream_prefixes"),
        ({"stream_prefixes": ["x" * 257]}, "stream_prefixes"),
        ({"event_types": [f"Type{i}" for i in range(65)]}, "event_types"),
    ],
    ids=["65-prefixes", "257-byte-prefix", "65-event-types"],
)
def test_too_many_or_too_long_filters_are_invalid_argument(demo_events, request_kwargs, field):
    err = subscribe_error(demo_events, events_pb2.SubscribeRequest(**request_kwargs))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, f"{err.code()}: {err.details()!r}"
    fields = violation_fields(err)
    assert any(f == field or f.startswith(field + "[") for f in fields), fields


def test_limits_are_inclusive(demo_events, demo_log):
    """64 prefixes of 256 bytes and 64 event types are accepted."""
    req = events_pb2.SubscribeRequest(
        stream_prefixes=["claim-"] + ["y" * 256] * 63,
        event_types=["ClaimAsserted"] + [f"Type{i}" for i in range(63)],
        heartbeat_ms=100,
    )
    with Subscription(demo_events, req) as sub:
        msgs = sub.until(lambda m: kind(m) == "caught_up")
    evs = [m.event for m in msgs if kind(m) == "event"]
    assert ids(evs) == ids([e for e in demo_log if matches(e, ["claim-"], ["ClaimAsserted"])])


# --------------------------------------------------------------------------------------------------
# Shutdown
# --------------------------------------------------------------------------------------------------


def test_shutdown_ends_subscription_with_unavailable(start_server):
    srv = start_server()
    try:
        with grpc.insecure_channel(srv.addr) as ch:
            events = events_pb2_grpc.EventsStub(ch)
            with Subscription(events, events_pb2.SubscribeRequest(heartbeat_ms=200)) as sub:
                sub.until(lambda m: kind(m) == "caught_up")
                stopper = threading.Thread(target=srv.stop, args=(signal.SIGTERM,))
                t0 = time.monotonic()
                stopper.start()
                try:
                    with pytest.raises(grpc.RpcError) as info:
                        sub.until(lambda m: False)
                finally:
                    stopper.join()
                elapsed = time.monotonic() - t0
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE, (
                f"{info.value.code()}: {info.value.details()!r}; received: {sub.history()}"
            )
            assert srv.proc.returncode == 0, (
                f"server exit status {srv.proc.returncode} after SIGTERM with an open subscription "
                f"({elapsed:.1f} s)\n{srv.output()}"
            )
    finally:
        srv.stop()


def test_named_subscriptions_are_listed_with_lag_and_paged(fresh_demo_server):
    with grpc.insecure_channel(fresh_demo_server.addr) as ch:
        events = events_pb2_grpc.EventsStub(ch)
        count = head(events).event_count
        acked = {"zeta-indexer": count, "alpha-alerts": 3, "mid.warehouse": count - 5}
        for name, position in acked.items():
            resp = events.Ack(
                events_pb2.AckRequest(subscription_name=name, position=position), timeout=T
            )
            assert resp.acknowledged_position == position

        seen, token, pages = [], "", 0
        while True:
            page = events.ListSubscriptions(
                events_pb2.ListSubscriptionsRequest(page_size=2, page_token=token), timeout=T
            )
            pages += 1
            assert page.event_count == count
            assert len(page.subscriptions) <= 2
            seen += [(s.subscription_name, s.acknowledged_position, s.lag) for s in page.subscriptions]
            token = page.next_page_token
            if not token:
                break
        assert pages == 2
        assert seen == [(n, acked[n], count - acked[n]) for n in sorted(acked)]

        try:
            events.ListSubscriptions(
                events_pb2.ListSubscriptionsRequest(page_token="zz"), timeout=T
            )
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert violation_fields(err) == ["page_token"]
        else:
            pytest.fail("a token the server never issued was accepted")
