"""Python (grpcio) client tests of named-subscription ownership (claimsledger.v1.Events).

Written from proto/claimsledger/v1/events.proto: with tokens configured, the first Ack of a name binds
it to the caller's identity; afterwards only that identity or an admin may Ack it, delete it or resume
it by name in Subscribe, anyone else gets PERMISSION_DENIED and nothing moves; GetSubscription and
ListSubscriptions show the owner. The server runs the real binary with a config file holding token
hashes.
"""

from __future__ import annotations

import hashlib

import grpc
import pytest

# Generated at session start by conftest.py.
from claimsledger.v1 import events_pb2, events_pb2_grpc, ledger_pb2, ledger_pb2_grpc, types_pb2

T = 10.0  # deadline of every RPC, seconds

#: identity -> (token, role)
IDENTITIES = {
    "indexer-desk": ("py-token-indexer", "reader"),
    "intruder": ("py-token-intruder", "reader"),
    "writer-desk": ("py-token-writer", "writer"),
    "ops": ("py-token-ops", "admin"),
}


def auth(identity: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {IDENTITIES[identity][0]}")]


@pytest.fixture()
def owned_server(start_server, tmp_path):
    """A server of its own with a token per identity, stopped after the test."""
    entries = "".join(
        f'[[tokens]]\nname = "{name}"\nsha256 = "{hashlib.sha256(token.encode()).hexdigest()}"\n'
        f'roles = ["{role}"]\n'
        for name, (token, role) in IDENTITIES.items()
    )
    config = tmp_path / "config.toml"
    config.write_text(entries)
    srv = start_server(extra_args=("--config", str(config)))
    yield srv
    srv.stop()


def ack(events, who: str, name: str, position: int) -> int:
    return events.Ack(
        events_pb2.AckRequest(subscription_name=name, position=position),
        metadata=auth(who),
        timeout=T,
    ).acknowledged_position


def first_event(events, who: str, name: str) -> int:
    """Resumes `name` as `who`; the position of the first event delivered."""
    call = events.Subscribe(
        events_pb2.SubscribeRequest(subscription_name=name), metadata=auth(who), timeout=T
    )
    try:
        for msg in call:
            if msg.WhichOneof("kind") == "event":
                return msg.event.position
        pytest.fail("the subscription ended without an event")
    finally:
        call.cancel()


def assert_denied(fn, what: str) -> None:
    try:
        fn()
    except grpc.RpcError as err:
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED, (what, err.code(), err.details())
        assert "indexer-desk" not in (err.details() or ""), (what, err.details())
    else:
        pytest.fail(f"{what} was allowed")


def test_a_named_subscription_belongs_to_whoever_created_it(owned_server):
    with grpc.insecure_channel(owned_server.addr) as ch:
        events = events_pb2_grpc.EventsStub(ch)
        ledger = ledger_pb2_grpc.LedgerStub(ch)
        for i in range(10):
            ledger.RegisterParty(
                ledger_pb2.RegisterPartyRequest(
                    command=types_pb2.RegisterPartyCommand(
                        party_id=f"py-party-{i}", kind=types_pb2.PARTY_KIND_GROUP, name=f"P {i}"
                    )
                ),
                metadata=auth("writer-desk"),
                timeout=T,
            )

        assert ack(events, "indexer-desk", "indexer", 5) == 5
        state = events.GetSubscription(
            events_pb2.GetSubscriptionRequest(subscription_name="indexer"),
            metadata=auth("intruder"),
            timeout=T,
        )
        assert (state.acknowledged_position, state.owner) == (5, "indexer-desk")

        assert_denied(lambda: ack(events, "intruder", "indexer", 9), "another reader's Ack")
        assert_denied(
            lambda: events.DeleteSubscription(
                events_pb2.DeleteSubscriptionRequest(subscription_name="indexer"),
                metadata=auth("intruder"),
                timeout=T,
            ),
            "another reader's delete",
        )
        assert_denied(lambda: first_event(events, "intruder", "indexer"), "another reader's resume")

        # Nothing moved: the owner resumes where it acknowledged; an admin may act on it too.
        assert first_event(events, "indexer-desk", "indexer") == 5
        assert ack(events, "ops", "indexer", 7) == 7
        listed = events.ListSubscriptions(
            events_pb2.ListSubscriptionsRequest(), metadata=auth("intruder"), timeout=T
        )
        assert [(s.subscription_name, s.acknowledged_position, s.owner) for s in listed.subscriptions] == [
            ("indexer", 7, "indexer-desk")
        ]

        # Its owner may delete it.
        gone = events.DeleteSubscription(
            events_pb2.DeleteSubscriptionRequest(subscription_name="indexer"),
            metadata=auth("indexer-desk"),
            timeout=T,
        )
        assert gone.existed
