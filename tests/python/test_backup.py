"""Python (grpcio) client test of backup and restore, through the `claims-ledger export` and `restore`
commands: a write retried against the restored server gets its original answer (idempotency keys are
part of the log), the same key with other content is refused, and a named subscriber's acknowledged
position comes back. The server runs as a separate process; only the proto and the CLI are used.
"""

from __future__ import annotations

import json
import subprocess

import grpc

from claimsledger.v1 import events_pb2, events_pb2_grpc, ledger_pb2, ledger_pb2_grpc, types_pb2

T = 10.0


def register(ledger, key: str, name: str) -> ledger_pb2.RegisterPartyResponse:
    return ledger.RegisterParty(
        ledger_pb2.RegisterPartyRequest(
            options=types_pb2.WriteOptions(idempotency_key=key),
            command=types_pb2.RegisterPartyCommand(
                party_id="kyiv-office", kind=types_pb2.PARTY_KIND_ORGANISATION, name=name
            ),
        ),
        timeout=T,
    )


def cli(binary, *args: str) -> dict:
    done = subprocess.run([str(binary), *args, "--json"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"{args[0]} failed ({done.returncode}): {done.stdout}{done.stderr}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_restore_keeps_idempotency_and_cursors(start_server, ledger_binary, tmp_path):
    srv = start_server()
    with grpc.insecure_channel(srv.addr) as ch:
        ledger = ledger_pb2_grpc.LedgerStub(ch)
        events = events_pb2_grpc.EventsStub(ch)
        first = register(ledger, "py-backup-1", "Kyiv Office")
        assert not first.result.deduplicated
        head = events.GetHead(events_pb2.GetHeadRequest(), timeout=T).event_count
        events.Ack(events_pb2.AckRequest(subscription_name="py-consumer", position=head), timeout=T)

    out = tmp_path / "ledger.ndjson"
    exported = cli(ledger_binary, "export", "--server", f"http://{srv.addr}", "--out", str(out))
    assert exported["events"] == head and exported["cursors"] == 1
    srv.stop()

    restored_dir = tmp_path / "restored"
    restored = cli(ledger_binary, "restore", "--from", str(out), "--data-dir", str(restored_dir))
    assert restored["ok"] is True
    assert restored["idempotency_records"] == 1 and restored["cursors"] == 1

    srv2 = start_server(data_dir=restored_dir)
    with grpc.insecure_channel(srv2.addr) as ch:
        ledger = ledger_pb2_grpc.LedgerStub(ch)
        events = events_pb2_grpc.EventsStub(ch)
        again = register(ledger, "py-backup-1", "Kyiv Office")
        assert again.result.deduplicated
        assert list(again.result.events) == list(first.result.events)
        assert again.result.recorded_at == first.result.recorded_at
        try:
            register(ledger, "py-backup-1", "Another Name")
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.ALREADY_EXISTS
        else:
            raise AssertionError("the same key with other content was accepted after a restore")
        assert events.GetHead(events_pb2.GetHeadRequest(), timeout=T).event_count == head
        sub = events.GetSubscription(
            events_pb2.GetSubscriptionRequest(subscription_name="py-consumer"), timeout=T
        )
        assert (sub.acknowledged_position, sub.lag) == (head, 0)
