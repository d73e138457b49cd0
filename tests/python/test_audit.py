"""Independent Python (grpcio) client tests of the claimsledger.v1.Audit service (tamper evidence).

Written from proto/claimsledger/v1/audit.proto, RFC 9162 (Certificate Transparency v2, which
restates the RFC 6962 Merkle tree) and the C2SP signed-note / tlog-checkpoint specifications, as an
auditor in another language would: nothing here comes from the Rust side. The module holds its own
verifier:

* RFC 6962 / RFC 9162 hashing: leaf = SHA-256(0x00 || data), node = SHA-256(0x01 || left || right),
  the empty tree's root = SHA-256(""), MTH split at the largest power of two smaller than n;
* inclusion proof verification (RFC 9162 §2.1.3.2) and consistency proof verification (§2.1.4.2),
  implemented step by step from the RFC text; and PATH and PROOF as the RFC defines them (§2.1.3.1,
  §2.1.4.1), to exercise the verifiers and to compare with the server's proofs, which they fully
  determine;
* C2SP signed notes with Ed25519 keys: verifier key "<name>+<hex8 key id>+<base64(0x01 || key)>",
  key id = SHA-256(name || "\\n" || 0x01 || key)[:4], signature lines
  "— <name> <base64(key id || signature)>" after a blank line, the signature over the text
  (including its final newline); then the checkpoint body
  "<origin>\\n<size>\\n<base64 root>\\ntimestamp <unix seconds>\\n".

The verifier is first checked on known-answer vectors (the RFC 6962 test tree used by Certificate
Transparency implementations, and the signed-note example of the Go note package documentation)
and on proofs it builds itself. Then it checks the `serve --demo` server: the signed checkpoint
against the log read with Events.ReadAll, every inclusion proof, consistency proofs from smaller
checkpoints, GetEventWithProof. Forgeries must be rejected by this verifier, and out-of-range
requests must give OUT_OF_RANGE. A test on a server of its own checks that a growing log stays
consistent.

Tests on the session's `demo_server` never write to it (see conftest.py).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass

import grpc
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

# Generated at session start by conftest.py.
from claimsledger.v1 import (
    audit_pb2,
    audit_pb2_grpc,
    events_pb2,
    events_pb2_grpc,
    ledger_pb2,
    ledger_pb2_grpc,
    types_pb2,
)

T = 10.0  # deadline of every RPC, seconds
HASH_LEN = 32
U64_MAX = 2**64 - 1
EM_DASH = "\u2014"


# ==================================================================================================
# The verifier: RFC 6962 / RFC 9162 Merkle tree
# ==================================================================================================


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def leaf_hash(data: bytes) -> bytes:
    """RFC 9162 §2.1.1: MTH({d(0)}) = HASH(0x00 || d(0))."""
    return sha256(b"\x00" + data)


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 9162 §2.1.1: HASH(0x01 || MTH(left) || MTH(right))."""
    return sha256(b"\x01" + left + right)


EMPTY_ROOT = sha256(b"")


def split_point(n: int) -> int:
    """The largest power of two smaller than n (n >= 2): k < n <= 2k."""
    assert n >= 2
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def mth_of_leaf_hashes(hashes: list[bytes]) -> bytes:
    """The Merkle Tree Hash of a list of already hashed leaves."""
    n = len(hashes)
    if n == 0:
        return EMPTY_ROOT
    if n == 1:
        return hashes[0]
    k = split_point(n)
    return node_hash(mth_of_leaf_hashes(hashes[:k]), mth_of_leaf_hashes(hashes[k:]))


def mth(entries: list[bytes]) -> bytes:
    """MTH(D[n]) of the entries (unhashed leaf data)."""
    return mth_of_leaf_hashes([leaf_hash(e) for e in entries])


def _lsb(x: int) -> int:
    return x & 1


def verify_inclusion(
    leaf_index: int, tree_size: int, leaf: bytes, path: list[bytes], root: bytes
) -> bool:
    """RFC 9162 §2.1.3.2: does `path` prove the leaf hash `leaf` at `leaf_index` in the tree of
    `tree_size` leaves whose root is `root`?"""
    if any(len(p) != HASH_LEN for p in path) or len(leaf) != HASH_LEN or len(root) != HASH_LEN:
        return False
    # 1. leaf_index must be below tree_size.
    if leaf_index < 0 or leaf_index >= tree_size:
        return False
    # 2. fn = leaf_index, sn = tree_size - 1.
    fn, sn = leaf_index, tree_size - 1
    # 3. r = hash.
    r = leaf
    # 4. For each p in the path:
    for p in path:
        # a. sn == 0: the path is too long.
        if sn == 0:
            return False
        # b.
        if _lsb(fn) or fn == sn:
            r = node_hash(p, r)
            if not _lsb(fn):
                while not (_lsb(fn) or fn == 0):
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        # c.
        fn >>= 1
        sn >>= 1
    # 5. sn must be 0 and r the root.
    return sn == 0 and r == root


def verify_consistency(
    first_size: int, second_size: int, first_hash: bytes, second_hash: bytes, path: list[bytes]
) -> bool:
    """RFC 9162 §2.1.4.2: does `path` prove that the tree of `second_size` leaves with root
    `second_hash` extends the tree of `first_size` leaves with root `first_hash`?

    The RFC algorithm covers 0 < first_size < second_size. Outside it: an old size above the new one
    is never consistent; equal sizes are consistent exactly when the roots are equal (the proof,
    SUBPROOF(m, D[m], true), is empty); the empty tree is a prefix of every tree (empty proof, and
    its root must be the empty root)."""
    if any(len(p) != HASH_LEN for p in path):
        return False
    if len(first_hash) != HASH_LEN or len(second_hash) != HASH_LEN:
        return False
    if first_size < 0 or first_size > second_size:
        return False
    if first_size == second_size:
        return not path and first_hash == second_hash
    if first_size == 0:
        return not path and first_hash == EMPTY_ROOT
    # 1. An empty path fails.
    if not path:
        return False
    path = list(path)
    # 2. If first_size is an exact power of two, prepend first_hash.
    if first_size & (first_size - 1) == 0:
        path.insert(0, first_hash)
    # 3. fn = first_size - 1, sn = second_size - 1.
    fn, sn = first_size - 1, second_size - 1
    # 4. While LSB(fn) is set, shift both right.
    while _lsb(fn):
        fn >>= 1
        sn >>= 1
    # 5. fr = sr = the first value.
    fr = sr = path[0]
    # 6. For each subsequent value c:
    for c in path[1:]:
        # a.
        if sn == 0:
            return False
        # b.
        if _lsb(fn) or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not _lsb(fn):
                while not (_lsb(fn) or fn == 0):
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        # c.
        fn >>= 1
        sn >>= 1
    # 7.
    return fr == first_hash and sr == second_hash and sn == 0


def rfc_path(m: int, hashes: list[bytes]) -> list[bytes]:
    """RFC 9162 §2.1.3.1 PATH(m, D[n]) over already hashed leaves (for exercising the verifier and
    for comparing with the server's proofs, which the RFC fully determines)."""
    n = len(hashes)
    if n <= 1:
        return []
    k = split_point(n)
    if m < k:
        return rfc_path(m, hashes[:k]) + [mth_of_leaf_hashes(hashes[k:])]
    return rfc_path(m - k, hashes[k:]) + [mth_of_leaf_hashes(hashes[:k])]


def path_sides(m: int, n: int) -> list[str]:
    """For each element of PATH(m, D[n]), whether the sibling is on the left ("L") or the right
    ("R") of the running hash: the shape of the audit path, which depends on m and n only."""
    if n <= 1:
        return []
    k = split_point(n)
    if m < k:
        return path_sides(m, k) + ["R"]
    return path_sides(m - k, n - k) + ["L"]


def proof_length(m: int, n: int, b: bool = True) -> int:
    """The number of hashes in SUBPROOF(m, D[n], b), 0 < m <= n, from the sizes alone."""
    if m == n:
        return 0 if b else 1
    k = split_point(n)
    if m <= k:
        return proof_length(m, k, b) + 1
    return proof_length(m - k, n - k, False) + 1


def rfc_proof(m: int, hashes: list[bytes]) -> list[bytes]:
    """RFC 9162 §2.1.4.1 PROOF(m, D[n]) = SUBPROOF(m, D[n], true), 0 < m <= n."""

    def subproof(m: int, d: list[bytes], b: bool) -> list[bytes]:
        n = len(d)
        if m == n:
            return [] if b else [mth_of_leaf_hashes(d)]
        k = split_point(n)
        if m <= k:
            return subproof(m, d[:k], b) + [mth_of_leaf_hashes(d[k:])]
        return subproof(m - k, d[k:], False) + [mth_of_leaf_hashes(d[:k])]

    return subproof(m, hashes, True)


# ==================================================================================================
# The verifier: C2SP signed notes (Ed25519) and checkpoints
# ==================================================================================================


class NoteError(Exception):
    """A verifier key, note or checkpoint that does not check out."""


_NAME_RE = re.compile(r"^[^\s+]+$")  # a key name: no whitespace, no "+"
_HEX8_RE = re.compile(r"^[0-9a-f]{8}$")
_DECIMAL_RE = re.compile(r"^(0|[1-9][0-9]*)$")


def b64decode_strict(s: str) -> bytes:
    """Standard padded base64, rejecting stray characters and non-canonical encodings."""
    try:
        raw = base64.b64decode(s.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError) as e:
        raise NoteError(f"bad base64 {s!r}: {e}") from None
    if base64.b64encode(raw).decode("ascii") != s:
        raise NoteError(f"non-canonical base64 {s!r}")
    return raw


def ed25519_key_id(name: str, public_key: bytes) -> bytes:
    """C2SP signed-note key id: the first 4 bytes of SHA-256(name || "\\n" || 0x01 || key)."""
    return sha256(name.encode("utf-8") + b"\n" + b"\x01" + public_key)[:4]


@dataclass(frozen=True)
class VerifierKey:
    name: str
    key_id: bytes
    public_key: Ed25519PublicKey


def parse_verifier_key(vkey: str) -> VerifierKey:
    parts = vkey.split("+", 2)  # the name has no "+"; base64 may
    if len(parts) != 3:
        raise NoteError(f"verifier key {vkey!r} is not <name>+<hex id>+<base64 key>")
    name, hex_id, b64 = parts
    if not name or not _NAME_RE.match(name):
        raise NoteError(f"bad key name {name!r}")
    if not _HEX8_RE.match(hex_id):
        raise NoteError(f"key id {hex_id!r} is not 8 lowercase hex digits")
    raw = b64decode_strict(b64)
    if len(raw) != 33 or raw[0] != 0x01:
        raise NoteError("the key is not 0x01 (Ed25519) followed by 32 bytes")
    pub = raw[1:]
    key_id = ed25519_key_id(name, pub)
    if key_id != bytes.fromhex(hex_id):
        raise NoteError(f"key id {hex_id} does not match the key (computed {key_id.hex()})")
    return VerifierKey(name, key_id, Ed25519PublicKey.from_public_bytes(pub))


def make_verifier_key(name: str, private_key: Ed25519PrivateKey) -> str:
    pub = private_key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    encoded = base64.b64encode(b"\x01" + pub).decode("ascii")
    return f"{name}+{ed25519_key_id(name, pub).hex()}+{encoded}"


def sign_note(
    text: str, name: str, private_key: Ed25519PrivateKey, key_id: bytes | None = None
) -> str:
    """A signed note of `text` by `private_key` under `name` (its real key id unless `key_id`)."""
    pub = private_key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    kid = ed25519_key_id(name, pub) if key_id is None else key_id
    sig = private_key.sign(text.encode("utf-8"))
    return f"{text}\n{EM_DASH} {name} {base64.b64encode(kid + sig).decode('ascii')}\n"


def split_note(note: str) -> tuple[str, list[tuple[str, bytes, bytes]]]:
    """The text and the (name, key id, signature) of each signature line of a note."""
    if not note.endswith("\n"):
        raise NoteError("a note must end with a newline")
    cut = note.rfind("\n\n")
    if cut < 0:
        raise NoteError("no blank line between the text and the signatures")
    text, sig_block = note[: cut + 1], note[cut + 2 :]
    if text == "\n" or not text:
        raise NoteError("empty text")
    sigs = []
    for line in sig_block[:-1].split("\n"):
        prefix = EM_DASH + " "
        if not line.startswith(prefix):
            raise NoteError(f"signature line {line!r} does not start with an em dash and a space")
        fields = line[len(prefix) :].split(" ")
        if len(fields) != 2 or not fields[0]:
            raise NoteError(f"signature line {line!r} is not '\u2014 <name> <base64>'")
        blob = b64decode_strict(fields[1])
        if len(blob) < 5:
            raise NoteError(f"signature line {line!r} is too short")
        sigs.append((fields[0], blob[:4], blob[4:]))
    if not sigs:
        raise NoteError("no signature lines")
    return text, sigs


def verify_note(note: str, key: VerifierKey) -> str:
    """The text of `note` if it carries a valid Ed25519 signature by `key`; NoteError otherwise.

    Signatures by other keys (other name or key id) are ignored, as C2SP says; a signature line that
    claims to be by `key` but does not verify is an error."""
    text, sigs = split_note(note)
    mine = [s for n, kid, s in sigs if n == key.name and kid == key.key_id]
    if not mine:
        raise NoteError(f"no signature by {key.name}+{key.key_id.hex()}")
    for sig in mine:
        if len(sig) != 64:
            raise NoteError("an Ed25519 signature is 64 bytes")
        try:
            key.public_key.verify(sig, text.encode("utf-8"))
        except InvalidSignature:
            raise NoteError("the signature does not verify") from None
    return text


@dataclass(frozen=True)
class Checkpoint:
    origin: str
    size: int
    root: bytes
    timestamp: int


def parse_checkpoint(text: str) -> Checkpoint:
    """The body "<origin>\\n<size>\\n<base64 root>\\ntimestamp <unix seconds>\\n"."""
    lines = text.split("\n")
    if len(lines) != 5 or lines[-1] != "":
        raise NoteError(f"checkpoint body is not four lines: {text!r}")
    origin, size, root_b64, ts_line = lines[:4]
    if not origin:
        raise NoteError("empty origin")
    if not _DECIMAL_RE.match(size):
        raise NoteError(f"bad tree size {size!r}")
    root = b64decode_strict(root_b64)
    if len(root) != HASH_LEN:
        raise NoteError(f"root hash is {len(root)} bytes")
    m = re.match(r"^timestamp (0|[1-9][0-9]*)$", ts_line)
    if not m:
        raise NoteError(f"bad timestamp line {ts_line!r}")
    return Checkpoint(origin, int(size), root, int(m.group(1)))


def verify_checkpoint(note: str, key: VerifierKey) -> Checkpoint:
    """A checkpoint note signed by `key`, parsed; its origin must be the key's name."""
    cp = parse_checkpoint(verify_note(note, key))
    if cp.origin != key.name:
        raise NoteError(f"origin {cp.origin!r} is not the key name {key.name!r}")
    return cp


def note_ok(note: str, key: VerifierKey) -> bool:
    try:
        verify_checkpoint(note, key)
        return True
    except NoteError:
        return False


# ==================================================================================================
# Helpers for the server
# ==================================================================================================


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


def checkpoint_at(audit, key: VerifierKey, size: int | None = None) -> Checkpoint:
    """A checkpoint from GetCheckpoint, verified against the pinned key and checked against the
    response's own fields (which are only a convenience: the note is what is trusted)."""
    req = (
        audit_pb2.GetCheckpointRequest()
        if size is None
        else audit_pb2.GetCheckpointRequest(tree_size=size)
    )
    sc = audit.GetCheckpoint(req, timeout=T).checkpoint
    return check_signed_checkpoint(sc, key)


def check_signed_checkpoint(sc, key: VerifierKey) -> Checkpoint:
    try:
        cp = verify_checkpoint(sc.note, key)
    except NoteError as e:
        pytest.fail(f"checkpoint note does not verify: {e}\n{sc.note!r}")
    assert sc.origin == cp.origin
    assert sc.tree_size == cp.size
    assert sc.root_hash == cp.root
    assert sc.timestamp.seconds == cp.timestamp and sc.timestamp.nanos == 0
    return cp


def flip(b: bytes, i: int = 0) -> bytes:
    return b[:i] + bytes([b[i] ^ 0x01]) + b[i + 1 :]


def sample_positions(n: int) -> list[int]:
    return sorted({p for p in (0, 1, 2, 3, 7, 8, n // 2, n - 2, n - 1) if 0 <= p < n})


# ==================================================================================================
# Fixtures
# ==================================================================================================


@pytest.fixture(scope="session")
def demo_channel(demo_server: str):
    with grpc.insecure_channel(demo_server) as ch:
        yield ch


@pytest.fixture(scope="session")
def demo_audit(demo_channel) -> audit_pb2_grpc.AuditStub:
    return audit_pb2_grpc.AuditStub(demo_channel)


@pytest.fixture(scope="session")
def demo_events(demo_channel) -> events_pb2_grpc.EventsStub:
    return events_pb2_grpc.EventsStub(demo_channel)


@pytest.fixture(scope="session")
def demo_log(demo_events) -> list:
    """The demo server's whole log (the tests never write to it)."""
    log = read_all(demo_events)
    assert len(log) >= 20, f"the --demo log has only {len(log)} events"
    assert [e.position for e in log] == list(range(len(log)))
    return log


@pytest.fixture(scope="session")
def demo_leaves(demo_log) -> list[bytes]:
    """Leaf hashes of the demo log, from each event's stored bytes."""
    for e in demo_log:
        assert e.stored_bytes, f"event at position {e.position} has no stored_bytes"
    return [leaf_hash(e.stored_bytes) for e in demo_log]


@pytest.fixture(scope="session")
def demo_key(demo_audit) -> VerifierKey:
    """The demo server's verifier key, fetched once and pinned for the session."""
    resp = demo_audit.GetPublicKey(audit_pb2.GetPublicKeyRequest(), timeout=T)
    key = parse_verifier_key(resp.verifier_key)
    assert key.name == resp.origin
    return key


@pytest.fixture(scope="session")
def demo_latest(demo_audit, demo_key, demo_log) -> Checkpoint:
    cp = checkpoint_at(demo_audit, demo_key)
    assert cp.size == len(demo_log)
    return cp


# ==================================================================================================
# The verifier on known answers and on its own proofs
# ==================================================================================================

# The RFC 6962 test tree of Certificate Transparency implementations: eight leaves and the root of
# every prefix (sizes 0..8).
KAT_LEAVES = [
    b"",
    b"\x00",
    b"\x10",
    b"\x20\x21",
    b"\x30\x31",
    b"\x40\x41\x42\x43",
    bytes(range(0x50, 0x58)),
    bytes(range(0x60, 0x70)),
]
KAT_ROOTS = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]

# The example signed note of the Go golang.org/x/mod/sumdb/note documentation.
KAT_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
KAT_NOTE = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
    "\n"
    "\u2014 PeterNeumann "
    "x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
)


def test_merkle_known_answers_and_own_proofs():
    assert EMPTY_ROOT.hex() == KAT_ROOTS[0]
    for n in range(len(KAT_ROOTS)):
        assert mth(KAT_LEAVES[:n]).hex() == KAT_ROOTS[n], f"MTH of the first {n} test leaves"

    # The verifiers accept every proof the RFC defines for trees of up to 20 leaves, and reject the
    # same proof with one byte flipped or against a neighbouring root.
    leaves = [leaf_hash(b"leaf %d" % i) for i in range(20)]
    roots = [mth_of_leaf_hashes(leaves[:n]) for n in range(21)]
    for n in range(1, 21):
        for i in range(n):
            path = rfc_path(i, leaves[:n])
            assert verify_inclusion(i, n, leaves[i], path, roots[n]), (i, n)
            assert not verify_inclusion(i, n, leaves[i], path, roots[n - 1]), (i, n)
            assert not verify_inclusion(i, n, flip(leaves[i]), path, roots[n]), (i, n)
            for j in range(len(path)):
                bad = path[:j] + [flip(path[j], 31)] + path[j + 1 :]
                assert not verify_inclusion(i, n, leaves[i], bad, roots[n]), (i, n, j)
        for m in range(0, n + 1):
            proof = rfc_proof(m, leaves[:n]) if m > 0 else []
            assert verify_consistency(m, n, roots[m], roots[n], proof), (m, n)
            if 0 < m < n:
                assert not verify_consistency(m, n, roots[m - 1], roots[n], proof), (m, n)
                assert not verify_consistency(m, n, roots[m], roots[n - 1], proof), (m, n)
                for j in range(len(proof)):
                    bad = proof[:j] + [flip(proof[j], 7)] + proof[j + 1 :]
                    assert not verify_consistency(m, n, roots[m], roots[n], bad), (m, n, j)
    assert not verify_consistency(5, 4, roots[5], roots[4], rfc_proof(4, leaves[:5]))


def test_signed_note_known_answer_and_own_keys():
    key = parse_verifier_key(KAT_VKEY)
    assert key.key_id.hex() == "c74f20a3"
    assert verify_note(KAT_NOTE, key) == (
        "If you think cryptography is the answer to your problem,\n"
        "then you don't know what your problem is.\n"
    )
    with pytest.raises(NoteError):
        verify_note(KAT_NOTE.replace("cryptography", "Cryptography"), key)
    # A verifier key whose key id does not match its key is refused.
    with pytest.raises(NoteError):
        parse_verifier_key(KAT_VKEY.replace("+c74f20a3+", "+c74f20a4+"))

    # A checkpoint signed here verifies with the matching key and with no other.
    priv = Ed25519PrivateKey.generate()
    mine = parse_verifier_key(make_verifier_key("example.org/log", priv))
    root_b64 = base64.b64encode(bytes.fromhex(KAT_ROOTS[3])).decode()
    body = f"example.org/log\n3\n{root_b64}\ntimestamp 1700000000\n"
    note = sign_note(body, "example.org/log", priv)
    cp = verify_checkpoint(note, mine)
    assert (cp.origin, cp.size, cp.timestamp) == ("example.org/log", 3, 1700000000)
    other = parse_verifier_key(make_verifier_key("example.org/log", Ed25519PrivateKey.generate()))
    assert not note_ok(note, other)
    assert not note_ok(note.replace("\n3\n", "\n4\n", 1), mine)


# ==================================================================================================
# The demo server: key, checkpoints, proofs
# ==================================================================================================


def test_public_key_is_a_well_formed_ed25519_verifier_key(demo_audit):
    resp = demo_audit.GetPublicKey(audit_pb2.GetPublicKeyRequest(), timeout=T)
    assert resp.origin, "no origin"
    key = parse_verifier_key(resp.verifier_key)  # checks the key id against the key
    assert key.name == resp.origin
    # The key is stable.
    again = demo_audit.GetPublicKey(audit_pb2.GetPublicKeyRequest(), timeout=T)
    assert again.verifier_key == resp.verifier_key


def test_latest_checkpoint_is_signed_and_matches_the_log(
    demo_audit, demo_events, demo_key, demo_log
):
    sc = demo_audit.GetCheckpoint(audit_pb2.GetCheckpointRequest(), timeout=T).checkpoint
    cp = check_signed_checkpoint(sc, demo_key)
    assert cp.origin == demo_key.name
    head = demo_events.GetHead(events_pb2.GetHeadRequest(), timeout=T)
    assert cp.size == head.event_count
    assert cp.size == len(demo_log)
    # The root, recomputed here from every event's stored bytes.
    assert cp.root == mth([e.stored_bytes for e in demo_log]), "root is not the MTH of the log"
    # The stored bytes are the bytes the envelope's hash chain is over.
    prev = "0" * 64
    for e in demo_log:
        assert hashlib.sha256(e.stored_bytes).hexdigest() == e.hash, f"position {e.position}"
        assert e.prev_hash == prev, f"position {e.position}"
        prev = e.hash
    assert head.hash == prev
    # The timestamp is a plausible current time (after 2024-01-01).
    assert cp.timestamp > 1_704_067_200


def test_every_inclusion_proof_verifies(demo_audit, demo_leaves, demo_latest):
    n = demo_latest.size
    for i in range(n):
        resp = demo_audit.GetInclusionProof(
            audit_pb2.GetInclusionProofRequest(position=i, tree_size=n), timeout=T
        )
        proof = list(resp.proof.hashes)
        assert (resp.proof.position, resp.proof.tree_size) == (i, n)
        assert resp.leaf_hash == demo_leaves[i], f"leaf_hash at {i} is not the stored bytes' leaf"
        assert verify_inclusion(i, n, demo_leaves[i], proof, demo_latest.root), f"position {i}"
        assert proof == rfc_path(i, demo_leaves[:n]), f"position {i}: not the RFC 9162 PATH"
    # Without tree_size, against the latest.
    mid = n // 2
    resp = demo_audit.GetInclusionProof(audit_pb2.GetInclusionProofRequest(position=mid), timeout=T)
    assert resp.proof.tree_size == n
    assert verify_inclusion(mid, n, demo_leaves[mid], list(resp.proof.hashes), demo_latest.root)


def test_inclusion_proofs_in_smaller_trees(demo_audit, demo_key, demo_leaves, demo_latest):
    n = demo_latest.size
    for size in sorted({1, 2, 3, 5, 8, 9, 16, 17, n // 2, n - 1}):
        cp = checkpoint_at(demo_audit, demo_key, size)
        assert cp.size == size
        assert cp.root == mth_of_leaf_hashes(demo_leaves[:size]), f"root at size {size}"
        for i in range(size):
            resp = demo_audit.GetInclusionProof(
                audit_pb2.GetInclusionProofRequest(position=i, tree_size=size), timeout=T
            )
            path = list(resp.proof.hashes)
            assert verify_inclusion(i, size, demo_leaves[i], path, cp.root), (i, size)


def test_consistency_proofs_from_smaller_checkpoints(
    demo_audit, demo_key, demo_leaves, demo_latest
):
    n = demo_latest.size
    sizes = sorted(s for s in {0, 1, 2, 3, 4, 7, 8, 13, 16, 32, n // 2, n - 1, n} if s <= n)
    cps = {}
    for m in sizes:
        cp = checkpoint_at(demo_audit, demo_key, m)
        assert cp.size == m
        assert cp.root == mth_of_leaf_hashes(demo_leaves[:m]), f"root at size {m}"
        cps[m] = cp
    assert cps[0].root == EMPTY_ROOT
    assert cps[n].root == demo_latest.root
    for m in sizes:
        # To the latest, with new_size unset and set.
        for req in (
            audit_pb2.GetConsistencyProofRequest(old_size=m),
            audit_pb2.GetConsistencyProofRequest(old_size=m, new_size=n),
        ):
            resp = demo_audit.GetConsistencyProof(req, timeout=T)
            assert (resp.old_size, resp.new_size) == (m, n)
            proof = list(resp.hashes)
            assert verify_consistency(m, n, cps[m].root, demo_latest.root, proof), f"{m} -> {n}"
            if 0 < m < n:
                assert proof == rfc_proof(m, demo_leaves[:n]), f"{m} -> {n}: not the RFC 9162 PROOF"
        # Between smaller checkpoints.
        for m2 in sizes:
            if m <= m2 < n:
                resp = demo_audit.GetConsistencyProof(
                    audit_pb2.GetConsistencyProofRequest(old_size=m, new_size=m2), timeout=T
                )
                proof = list(resp.hashes)
                assert verify_consistency(m, m2, cps[m].root, cps[m2].root, proof), (m, m2)


def test_event_with_proof_checks_out(demo_audit, demo_key, demo_log, demo_latest):
    n = demo_latest.size
    for i in sample_positions(n):
        for size in (None, i + 1, n):
            req = (
                audit_pb2.GetEventWithProofRequest(position=i)
                if size is None
                else audit_pb2.GetEventWithProofRequest(position=i, tree_size=size)
            )
            resp = demo_audit.GetEventWithProof(req, timeout=T)
            ev = resp.event
            assert ev.position == i
            assert ev.event_id == demo_log[i].event_id
            assert ev.stored_bytes == demo_log[i].stored_bytes
            assert hashlib.sha256(ev.stored_bytes).hexdigest() == ev.hash
            cp = check_signed_checkpoint(resp.checkpoint, demo_key)
            want_size = n if size is None else size
            assert cp.size == want_size
            assert (resp.proof.position, resp.proof.tree_size) == (i, cp.size)
            assert verify_inclusion(
                i, cp.size, leaf_hash(ev.stored_bytes), list(resp.proof.hashes), cp.root
            ), f"event {i} in tree {cp.size}"
            if cp.size == n:
                assert cp.root == demo_latest.root


# ==================================================================================================
# Forgeries the verifier must reject
# ==================================================================================================


@pytest.fixture(scope="session")
def demo_proofs(demo_audit, demo_latest) -> dict[int, list[bytes]]:
    """Genuine inclusion proofs (against the latest checkpoint) of a few positions."""
    n = demo_latest.size
    out = {}
    for i in sample_positions(n):
        resp = demo_audit.GetInclusionProof(
            audit_pb2.GetInclusionProofRequest(position=i, tree_size=n), timeout=T
        )
        out[i] = list(resp.proof.hashes)
    return out


def _genuine(i, demo_proofs, demo_leaves, demo_latest):
    n, root = demo_latest.size, demo_latest.root
    path = demo_proofs[i]
    assert verify_inclusion(i, n, demo_leaves[i], path, root), f"the genuine proof of {i} fails"
    assert len(path) >= 2, f"position {i}: path too short for this test"
    return n, root, path


def test_forged_inclusion_flipped_sibling_byte_is_rejected(demo_proofs, demo_leaves, demo_latest):
    for i in demo_proofs:
        n, root, path = _genuine(i, demo_proofs, demo_leaves, demo_latest)
        for j in range(len(path)):
            for byte in (0, 17, 31):
                bad = path[:j] + [flip(path[j], byte)] + path[j + 1 :]
                assert not verify_inclusion(i, n, demo_leaves[i], bad, root), (i, j, byte)
        # And a flipped leaf or root.
        assert not verify_inclusion(i, n, flip(demo_leaves[i], 5), path, root)
        assert not verify_inclusion(i, n, demo_leaves[i], path, flip(root, 5))


def test_forged_inclusion_truncated_path_is_rejected(demo_proofs, demo_leaves, demo_latest):
    for i in demo_proofs:
        n, root, path = _genuine(i, demo_proofs, demo_leaves, demo_latest)
        assert not verify_inclusion(i, n, demo_leaves[i], path[:-1], root), (i, "last dropped")
        assert not verify_inclusion(i, n, demo_leaves[i], path[1:], root), (i, "first dropped")
        assert not verify_inclusion(i, n, demo_leaves[i], [], root), (i, "empty")
        assert not verify_inclusion(i, n, demo_leaves[i], path + [path[-1]], root), (i, "extended")
        short = [p[:31] for p in path]
        assert not verify_inclusion(i, n, demo_leaves[i], short, root), (i, "short hashes")


def test_forged_inclusion_swapped_siblings_are_rejected(demo_proofs, demo_leaves, demo_latest):
    for i in demo_proofs:
        n, root, path = _genuine(i, demo_proofs, demo_leaves, demo_latest)
        for j in range(len(path) - 1):
            bad = path[:j] + [path[j + 1], path[j]] + path[j + 2 :]
            assert bad != path
            assert not verify_inclusion(i, n, demo_leaves[i], bad, root), (i, j)
        assert not verify_inclusion(i, n, demo_leaves[i], path[::-1], root), (i, "reversed")
        # The proof of one leaf does not prove another leaf in its place.
        other = (i + 1) % n
        assert not verify_inclusion(i, n, demo_leaves[other], path, root), (i, other)
        assert not verify_inclusion(other, n, demo_leaves[other], path, root), (i, other)


def test_forged_inclusion_wrong_tree_size_is_rejected(
    demo_audit, demo_key, demo_proofs, demo_leaves, demo_latest
):
    roots = {}
    rejected_wrong_size = set()
    for i in demo_proofs:
        n, root, path = _genuine(i, demo_proofs, demo_leaves, demo_latest)
        # Presented as a proof against the signed checkpoint of another size (with that size's
        # root): rejected for every other size that contains the leaf.
        for m in sorted({i + 1, i + 2, (i + n) // 2, n - 1} - {n}):
            if not (i < m < n):
                continue
            if m not in roots:
                roots[m] = checkpoint_at(demo_audit, demo_key, m).root
            assert not verify_inclusion(i, m, demo_leaves[i], path, roots[m]), (i, m)
        # A size the leaf is not in.
        for m in (i, 0):
            assert not verify_inclusion(i, m, demo_leaves[i], path, root), (i, m)
        # Even with the genuine root: every size whose audit path for this leaf has another shape
        # (length, or side of a sibling). For a size with the same shape the computation is the same
        # and the proof cannot tell the sizes apart: it is the signed checkpoint that binds the size
        # to the root, which is checked above and in the note tests.
        shape = path_sides(i, n)
        assert len(shape) == len(path)
        differing = [m for m in range(i + 1, 2 * n + 3) if m != n and path_sides(i, m) != shape]
        assert differing, f"position {i}: no size with another shape"
        for m in differing:
            assert not verify_inclusion(i, m, demo_leaves[i], path, root), (i, m)
        rejected_wrong_size.update((i, m) for m in differing)
    assert len(rejected_wrong_size) > 50


def test_forged_consistency_is_rejected(demo_audit, demo_key, demo_latest):
    n, root = demo_latest.size, demo_latest.root
    for m in (3, 5, 13, n - 1):
        old = checkpoint_at(demo_audit, demo_key, m)
        proof = list(
            demo_audit.GetConsistencyProof(
                audit_pb2.GetConsistencyProofRequest(old_size=m, new_size=n), timeout=T
            ).hashes
        )
        assert verify_consistency(m, n, old.root, root, proof), f"genuine {m} -> {n} fails"
        for j in range(len(proof)):
            bad = proof[:j] + [flip(proof[j], 9)] + proof[j + 1 :]
            assert not verify_consistency(m, n, old.root, root, bad), (m, j)
        assert not verify_consistency(m, n, old.root, root, proof[:-1]), (m, "truncated")
        assert not verify_consistency(m, n, old.root, root, proof + [proof[-1]]), (m, "extended")
        if len(proof) >= 2:
            assert not verify_consistency(m, n, old.root, root, proof[::-1]), (m, "reversed")
        assert not verify_consistency(m, n, flip(old.root), root, proof), (m, "old root")
        assert not verify_consistency(m, n, old.root, flip(root), proof), (m, "new root")
        assert not verify_consistency(m + 1, n, old.root, root, proof), (m, "old size + 1")
        prev = checkpoint_at(demo_audit, demo_key, n - 1)
        if m < n - 1:
            assert not verify_consistency(m, n - 1, old.root, prev.root, proof), (m, "new size - 1")
        assert not verify_consistency(n, m, root, old.root, proof), (m, "swapped sizes")
        # Even with the genuine roots: every new size whose proof from m has another length.
        assert proof_length(m, n) == len(proof)
        other_sizes = [
            s for s in range(m + 1, 4 * n) if s != n and proof_length(m, s) != len(proof)
        ]
        assert 2 * n in other_sizes
        for s in other_sizes:
            assert not verify_consistency(m, s, old.root, root, proof), (m, s)


def test_checkpoint_with_changed_size_line_is_rejected(demo_audit, demo_key, demo_latest):
    sc = demo_audit.GetCheckpoint(audit_pb2.GetCheckpointRequest(), timeout=T).checkpoint
    assert note_ok(sc.note, demo_key), "the genuine checkpoint does not verify"
    n = demo_latest.size
    size_line = f"\n{n}\n"
    assert sc.note.count(size_line) == 1
    for forged_size in (n + 1, n - 1, 2 * n):
        forged = sc.note.replace(size_line, f"\n{forged_size}\n", 1)
        assert forged != sc.note
        with pytest.raises(NoteError, match="does not verify"):
            verify_checkpoint(forged, demo_key)
    # Other one-line changes: the root, the timestamp, the origin.
    text, _ = split_note(sc.note)
    origin, size, root_b64, ts_line, _ = text.split("\n")
    forged_root = base64.b64encode(flip(base64.b64decode(root_b64))).decode()
    assert not note_ok(sc.note.replace(root_b64, forged_root, 1), demo_key)
    ts = int(ts_line.split(" ")[1])
    assert not note_ok(sc.note.replace(ts_line, f"timestamp {ts + 1}", 1), demo_key)
    assert not note_ok(sc.note.replace(origin + "\n", origin + "x\n", 1), demo_key)
    # And the signature itself: one bit flipped, or the signature line removed.
    _, sigs = split_note(sc.note)
    name, kid, sig = sigs[0]
    line = f"{EM_DASH} {name} {base64.b64encode(kid + sig).decode()}\n"
    assert line in sc.note
    bad_line = f"{EM_DASH} {name} {base64.b64encode(kid + flip(sig, 40)).decode()}\n"
    assert not note_ok(sc.note.replace(line, bad_line), demo_key)
    with pytest.raises(NoteError):
        verify_checkpoint(sc.note.replace(line, ""), demo_key)


def test_checkpoint_signed_by_another_key_is_rejected(demo_audit, demo_key, demo_latest):
    sc = demo_audit.GetCheckpoint(audit_pb2.GetCheckpointRequest(), timeout=T).checkpoint
    assert note_ok(sc.note, demo_key), "the genuine checkpoint does not verify"
    text, _ = split_note(sc.note)
    name = demo_key.name
    impostor = Ed25519PrivateKey.generate()
    impostor_vkey = parse_verifier_key(make_verifier_key(name, impostor))
    assert impostor_vkey.key_id != demo_key.key_id

    # 1. The same checkpoint (or a forged one) signed by another key under the same name: its key id
    #    differs, so the pinned key finds no signature of its own.
    forged_text = text.replace(f"\n{demo_latest.size}\n", f"\n{demo_latest.size + 5}\n", 1)
    for body in (text, forged_text):
        note = sign_note(body, name, impostor)
        assert note_ok(note, impostor_vkey), "the impostor's note does not verify with its own key"
        with pytest.raises(NoteError, match="no signature by"):
            verify_checkpoint(note, demo_key)

    # 2. Signed by the other key but with the pinned key's id forged into the signature line: the
    #    Ed25519 signature does not verify under the pinned key.
    for body in (text, forged_text):
        note = sign_note(body, name, impostor, key_id=demo_key.key_id)
        with pytest.raises(NoteError, match="does not verify"):
            verify_checkpoint(note, demo_key)
        # Added after the genuine signature, a bad line claiming the pinned key still fails.
        if body == text:
            _, extra = note.split("\n\n", 1)
            with pytest.raises(NoteError, match="does not verify"):
                verify_checkpoint(sc.note + extra, demo_key)

    # 3. A pinned key string with the server's name and key id but the impostor's key is refused.
    raw = impostor.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    impostor_pub = base64.b64encode(b"\x01" + raw).decode()
    with pytest.raises(NoteError, match="does not match"):
        parse_verifier_key(f"{name}+{demo_key.key_id.hex()}+{impostor_pub}")


# ==================================================================================================
# OUT_OF_RANGE
# ==================================================================================================


def test_out_of_range(demo_audit, demo_latest):
    n = demo_latest.size
    a = demo_audit
    cases = [
        (a.GetCheckpoint, audit_pb2.GetCheckpointRequest(tree_size=n + 1)),
        (a.GetCheckpoint, audit_pb2.GetCheckpointRequest(tree_size=10**12)),
        (a.GetInclusionProof, audit_pb2.GetInclusionProofRequest(position=0, tree_size=n + 1)),
        (a.GetInclusionProof, audit_pb2.GetInclusionProofRequest(position=n)),
        (a.GetInclusionProof, audit_pb2.GetInclusionProofRequest(position=n, tree_size=n)),
        (a.GetInclusionProof, audit_pb2.GetInclusionProofRequest(position=5, tree_size=5)),
        (a.GetInclusionProof, audit_pb2.GetInclusionProofRequest(position=6, tree_size=5)),
        (a.GetInclusionProof, audit_pb2.GetInclusionProofRequest(position=0, tree_size=0)),
        (a.GetConsistencyProof, audit_pb2.GetConsistencyProofRequest(old_size=n + 1)),
        (a.GetConsistencyProof, audit_pb2.GetConsistencyProofRequest(old_size=1, new_size=n + 1)),
        (a.GetConsistencyProof, audit_pb2.GetConsistencyProofRequest(old_size=6, new_size=5)),
        (a.GetEventWithProof, audit_pb2.GetEventWithProofRequest(position=n)),
        (a.GetEventWithProof, audit_pb2.GetEventWithProofRequest(position=3, tree_size=3)),
        (a.GetEventWithProof, audit_pb2.GetEventWithProofRequest(position=0, tree_size=n + 1)),
        # The largest uint64 values.
        (a.GetCheckpoint, audit_pb2.GetCheckpointRequest(tree_size=U64_MAX)),
        (a.GetInclusionProof, audit_pb2.GetInclusionProofRequest(position=U64_MAX)),
        (a.GetInclusionProof, audit_pb2.GetInclusionProofRequest(position=0, tree_size=U64_MAX)),
        (a.GetConsistencyProof, audit_pb2.GetConsistencyProofRequest(old_size=U64_MAX)),
        (
            a.GetConsistencyProof,
            audit_pb2.GetConsistencyProofRequest(old_size=U64_MAX, new_size=U64_MAX),
        ),
        (a.GetEventWithProof, audit_pb2.GetEventWithProofRequest(position=U64_MAX)),
    ]
    for fn, req in cases:
        expect_error(grpc.StatusCode.OUT_OF_RANGE, fn, req)
    # The boundaries themselves are fine.
    a.GetCheckpoint(audit_pb2.GetCheckpointRequest(tree_size=n), timeout=T)
    a.GetInclusionProof(audit_pb2.GetInclusionProofRequest(position=n - 1, tree_size=n), timeout=T)
    a.GetInclusionProof(audit_pb2.GetInclusionProofRequest(position=4, tree_size=5), timeout=T)
    a.GetConsistencyProof(audit_pb2.GetConsistencyProofRequest(old_size=n, new_size=n), timeout=T)
    a.GetEventWithProof(audit_pb2.GetEventWithProofRequest(position=2, tree_size=3), timeout=T)


# ==================================================================================================
# A growing log of its own
# ==================================================================================================


def test_growing_log_stays_consistent(fresh_server):
    with grpc.insecure_channel(fresh_server.addr) as ch:
        audit = audit_pb2_grpc.AuditStub(ch)
        events = events_pb2_grpc.EventsStub(ch)
        ledger = ledger_pb2_grpc.LedgerStub(ch)
        key = parse_verifier_key(
            audit.GetPublicKey(audit_pb2.GetPublicKeyRequest(), timeout=T).verifier_key
        )

        empty = checkpoint_at(audit, key)
        assert (empty.size, empty.root) == (0, EMPTY_ROOT)
        expect_error(
            grpc.StatusCode.OUT_OF_RANGE,
            audit.GetInclusionProof,
            audit_pb2.GetInclusionProofRequest(position=0),
        )

        seen = [empty]
        for k in range(6):
            resp = ledger.RegisterParty(
                ledger_pb2.RegisterPartyRequest(
                    command=types_pb2.RegisterPartyCommand(
                        party_id=f"audit-party-{k}",
                        kind=types_pb2.PARTY_KIND_ORGANISATION,
                        name=f"Audit Party {k}",
                    )
                ),
                timeout=T,
            )
            written = resp.result.events[-1].position + 1
            cp = checkpoint_at(audit, key)
            assert cp.size >= written, f"checkpoint size {cp.size} misses the acknowledged write"
            log = read_all(events)
            assert cp.root == mth([e.stored_bytes for e in log[: cp.size]])
            for old in seen:
                proof = audit.GetConsistencyProof(
                    audit_pb2.GetConsistencyProofRequest(old_size=old.size, new_size=cp.size),
                    timeout=T,
                )
                ok = verify_consistency(old.size, cp.size, old.root, cp.root, list(proof.hashes))
                assert ok, (old.size, cp.size)
            seen.append(cp)
        # An old checkpoint, asked for again by its size, has the same root.
        for old in seen:
            assert checkpoint_at(audit, key, old.size).root == old.root
        # The key did not change while the log grew.
        again = parse_verifier_key(
            audit.GetPublicKey(audit_pb2.GetPublicKeyRequest(), timeout=T).verifier_key
        )
        assert (again.name, again.key_id) == (key.name, key.key_id)
