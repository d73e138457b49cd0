//! The `Audit` service over real gRPC, checked the way an outside auditor would: the verifier key
//! from `GetPublicKey`, every checkpoint opened with it, every root recomputed here from the events'
//! stored bytes (`Events.ReadAll`), every proof checked with `merkle::verify_*` and the auditor's own
//! `check_inclusion` / `check_consistency`. Then real proofs and checkpoints are forged in every way
//! the brief lists, and each forgery must be rejected by the verifying code; a retraction must leave
//! the retracted statement provable; requests outside the log must be `OUT_OF_RANGE` and write
//! nothing.
use crate::common;

use chrono::Utc;
use claims_ledger_cli::audit_verify::{check_consistency, check_inclusion};
use claims_ledger_core::checkpoint::{Checkpoint, CheckpointError, NoteError, Signer, Verifier};
use claims_ledger_core::merkle::{self, Hash, ProofError};
use claims_ledger_proto as pb;
use common::*;
use sha2::{Digest, Sha256};
use tonic::transport::Channel;
use tonic::Code;

type Audit = pb::audit_client::AuditClient<Channel>;

// ---- helpers ----------------------------------------------------------------------------------

async fn demo_server() -> TestServer {
    demo_server_as("x").await
}

/// A server with the Istanbul demo data; `recorded_by` changes every stored byte string, so two
/// servers loaded as different recorders hold two different logs of the same shape.
async fn demo_server_as(recorded_by: &str) -> TestServer {
    let s = TestServer::start().await;
    let dataset = claims_ledger_domain::dataset::parse(claims_ledger_domain::dataset::ISTANBUL)
        .expect("demo dataset");
    s.app
        .load_dataset(&dataset, recorded_by)
        .await
        .expect("load the demo dataset");
    s
}

async fn audit(s: &TestServer) -> Audit {
    pb::audit_client::AuditClient::new(s.channel().await)
}

/// Every event of the log, read page by page (1000 at a time) with ReadAll.
async fn all_events(s: &TestServer) -> Vec<pb::EventEnvelope> {
    let mut c = s.events().await;
    let mut out = Vec::new();
    let mut from = 0;
    loop {
        let r = c
            .read_all(pb::ReadAllRequest {
                from_position: from,
                max_count: 1000,
                ..Default::default()
            })
            .await
            .expect("ReadAll")
            .into_inner();
        out.extend(r.events);
        match r.next_position {
            Some(next) => from = next,
            None => break,
        }
    }
    for (i, e) in out.iter().enumerate() {
        assert_eq!(e.position, i as u64, "ReadAll is gap-free and in order");
        // The envelope's hash is the SHA-256 of the stored bytes: the bytes are the real ones.
        assert_eq!(
            e.hash,
            hex::encode(Sha256::digest(&e.stored_bytes)),
            "event {i}: hash of stored_bytes"
        );
    }
    out
}

/// Leaf hashes computed here, from the stored bytes alone.
fn leaves(events: &[pb::EventEnvelope]) -> Vec<Hash> {
    events
        .iter()
        .map(|e| merkle::leaf_hash(&e.stored_bytes))
        .collect()
}

/// The verifier key from GetPublicKey, parsed (and checked against the origin it comes with).
async fn pinned_key(a: &mut Audit) -> Verifier {
    let r = a
        .get_public_key(pb::GetPublicKeyRequest {})
        .await
        .expect("GetPublicKey")
        .into_inner();
    let v = Verifier::from_public_key_string(&r.verifier_key)
        .unwrap_or_else(|e| panic!("verifier key {:?} does not parse: {e}", r.verifier_key));
    assert_eq!(
        v.name(),
        r.origin,
        "the key is named after the log's origin"
    );
    assert_eq!(
        v.public_key_string(),
        r.verifier_key,
        "canonical key string"
    );
    v
}

/// A checkpoint from GetCheckpoint, opened with the pinned key; the side fields must say what the
/// signed note says.
async fn signed(
    a: &mut Audit,
    v: &Verifier,
    size: Option<u64>,
) -> (pb::SignedCheckpoint, Checkpoint) {
    let pbcp = a
        .get_checkpoint(pb::GetCheckpointRequest { tree_size: size })
        .await
        .unwrap_or_else(|e| panic!("GetCheckpoint {size:?}: {e}"))
        .into_inner()
        .checkpoint
        .expect("a checkpoint");
    let cp = Checkpoint::open(&pbcp.note, v).unwrap_or_else(|e| {
        panic!(
            "checkpoint of size {size:?} does not open: {e}\n{}",
            pbcp.note
        )
    });
    assert_eq!(pbcp.tree_size, cp.size, "tree_size field vs note");
    assert_eq!(pbcp.root_hash, cp.root.to_vec(), "root_hash field vs note");
    assert_eq!(pbcp.origin, cp.origin, "origin field vs note");
    assert_eq!(
        pbcp.timestamp.as_ref().map(|t| (t.seconds, t.nanos)),
        Some((cp.timestamp.timestamp(), 0)),
        "timestamp field vs note"
    );
    if let Some(size) = size {
        assert_eq!(cp.size, size, "asked for size {size}");
    }
    (pbcp, cp)
}

async fn inclusion(
    a: &mut Audit,
    position: u64,
    size: Option<u64>,
) -> pb::GetInclusionProofResponse {
    a.get_inclusion_proof(pb::GetInclusionProofRequest {
        position,
        tree_size: size,
    })
    .await
    .unwrap_or_else(|e| panic!("GetInclusionProof({position}, {size:?}): {e}"))
    .into_inner()
}

async fn consistency(a: &mut Audit, old: u64, new: Option<u64>) -> pb::GetConsistencyProofResponse {
    a.get_consistency_proof(pb::GetConsistencyProofRequest {
        old_size: old,
        new_size: new,
    })
    .await
    .unwrap_or_else(|e| panic!("GetConsistencyProof({old}, {new:?}): {e}"))
    .into_inner()
}

fn to_hashes(list: &[Vec<u8>]) -> Vec<Hash> {
    list.iter()
        .map(|h| h.as_slice().try_into().expect("32-byte hash"))
        .collect()
}

/// Tree sizes worth checking for a log of `n`: edges, powers of two and their neighbours.
fn sizes(n: u64) -> Vec<u64> {
    let mut v: Vec<u64> = [1, 2, 3, 4, 5, 7, 8, 9, 13, 16, 17, 31, 32, 33, 50]
        .into_iter()
        .chain([n.saturating_sub(1), n])
        .filter(|&s| s >= 1 && s <= n)
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

#[track_caller]
fn rejected<T: std::fmt::Debug, E: std::fmt::Display>(case: &str, r: Result<T, E>) -> String {
    match r {
        Ok(v) => panic!("forgery accepted: {case} (got {v:?})"),
        Err(e) => e.to_string(),
    }
}

#[track_caller]
fn expect_code<T: std::fmt::Debug>(case: &str, r: Result<T, tonic::Status>, code: Code) {
    match r {
        Ok(v) => panic!("{case}: expected {code:?}, got {v:?}"),
        Err(s) => assert_eq!(s.code(), code, "{case}: {}", s.message()),
    }
}

// ---- 1. keys and checkpoints ------------------------------------------------------------------

#[tokio::test]
async fn checkpoints_are_signed_and_commit_to_every_stored_event() {
    let s = demo_server().await;
    let mut a = audit(&s).await;
    let v = pinned_key(&mut a).await;
    assert_eq!(
        v,
        s.app.verifier(),
        "GetPublicKey gives the key the server signs with"
    );

    let events = all_events(&s).await;
    let n = s.head().await.event_count;
    assert!(n > 40, "the demo data holds the whole dataset ({n} events)");
    assert_eq!(events.len() as u64, n, "ReadAll returns every event");
    let leaves = leaves(&events);

    let (_, latest) = signed(&mut a, &v, None).await;
    assert_eq!(latest.size, n, "the latest checkpoint covers the whole log");
    assert_eq!(
        latest.root,
        merkle::root(&leaves),
        "signed root vs root recomputed from the stored bytes"
    );
    assert_eq!(latest.origin, v.name());
    let age = Utc::now().timestamp() - latest.timestamp.timestamp();
    assert!((0..=60).contains(&age), "signed just now ({age} s ago)");

    // Historical sizes, including the empty tree.
    for size in std::iter::once(0).chain(sizes(n)) {
        let (_, cp) = signed(&mut a, &v, Some(size)).await;
        assert_eq!(
            cp.root,
            merkle::root(&leaves[..size as usize]),
            "signed root of size {size} vs recomputed"
        );
    }
    let (_, empty) = signed(&mut a, &v, Some(0)).await;
    assert_eq!(empty.root, merkle::EMPTY_ROOT);

    // A write moves the latest checkpoint, and the old size still signs the old root.
    s.ledger()
        .await
        .register_party(pb::RegisterPartyRequest {
            command: Some(party("audit-extra", pb::PartyKind::Person)),
            ..Default::default()
        })
        .await
        .expect("register");
    let events = all_events(&s).await;
    let (_, grown) = signed(&mut a, &v, None).await;
    assert_eq!(grown.size, n + 1);
    assert_eq!(grown.root, merkle::root(&self::leaves(&events)));
    let (_, old) = signed(&mut a, &v, Some(n)).await;
    assert_eq!(
        old.root, latest.root,
        "a historical checkpoint signs the same root again"
    );
}

// ---- 2. honest proofs -------------------------------------------------------------------------

#[tokio::test]
async fn every_event_has_a_verifying_inclusion_proof_at_several_tree_sizes() {
    let s = demo_server().await;
    let mut a = audit(&s).await;
    let v = pinned_key(&mut a).await;
    let events = all_events(&s).await;
    let n = events.len() as u64;
    let leaves = leaves(&events);

    let mut checked = 0;
    for size in sizes(n) {
        let (_, cp) = signed(&mut a, &v, Some(size)).await;
        for pos in 0..size {
            let r = inclusion(&mut a, pos, Some(size)).await;
            let what = format!("position {pos} in size {size}");
            assert_eq!(
                r.leaf_hash,
                leaves[pos as usize].to_vec(),
                "{what}: leaf_hash"
            );
            let proof = r.proof.expect("a proof");
            assert_eq!(
                (proof.position, proof.tree_size),
                (pos, size),
                "{what}: echo"
            );
            assert_eq!(
                Some(proof.hashes.len()),
                merkle::inclusion_proof_len(pos, size),
                "{what}: path length"
            );
            merkle::verify_inclusion(
                &leaves[pos as usize],
                pos,
                size,
                &to_hashes(&proof.hashes),
                &cp.root,
            )
            .unwrap_or_else(|e| panic!("{what}: verify_inclusion: {e}"));
            check_inclusion(&cp, pos, &events[pos as usize].stored_bytes, &proof)
                .unwrap_or_else(|e| panic!("{what}: check_inclusion: {e}"));
            checked += 1;
        }
    }
    // Unset tree_size: proven against the whole log, i.e. the latest checkpoint.
    let (_, latest) = signed(&mut a, &v, None).await;
    for pos in 0..n {
        let proof = inclusion(&mut a, pos, None).await.proof.expect("a proof");
        assert_eq!(proof.tree_size, n, "unset tree_size means the whole log");
        check_inclusion(&latest, pos, &events[pos as usize].stored_bytes, &proof)
            .unwrap_or_else(|e| panic!("position {pos} against the latest: {e}"));
    }
    assert!(checked > 300, "checked {checked} proofs");
}

#[tokio::test]
async fn consistency_proofs_link_every_pair_of_signed_checkpoints() {
    let s = demo_server().await;
    let mut a = audit(&s).await;
    let v = pinned_key(&mut a).await;
    let n = s.head().await.event_count;
    let mut cps = Vec::new();
    for size in std::iter::once(0).chain(sizes(n)) {
        cps.push(signed(&mut a, &v, Some(size)).await.1);
    }
    let mut checked = 0;
    for old in &cps {
        for new in cps.iter().filter(|c| c.size >= old.size) {
            let r = consistency(&mut a, old.size, Some(new.size)).await;
            let what = format!("{} -> {}", old.size, new.size);
            assert_eq!(
                (r.old_size, r.new_size),
                (old.size, new.size),
                "{what}: echo"
            );
            assert_eq!(
                Some(r.hashes.len()),
                merkle::consistency_proof_len(old.size, new.size),
                "{what}: proof length"
            );
            merkle::verify_consistency(
                old.size,
                new.size,
                &old.root,
                &new.root,
                &to_hashes(&r.hashes),
            )
            .unwrap_or_else(|e| panic!("{what}: verify_consistency: {e}"));
            check_consistency(old, new, &r.hashes)
                .unwrap_or_else(|e| panic!("{what}: check_consistency: {e}"));
            checked += 1;
        }
        // Unset new_size: to the whole log.
        let r = consistency(&mut a, old.size, None).await;
        assert_eq!(r.new_size, n, "unset new_size means the whole log");
        let latest = cps.last().expect("latest");
        check_consistency(old, latest, &r.hashes)
            .unwrap_or_else(|e| panic!("{} -> latest: {e}", old.size));
    }
    assert!(checked > 100, "checked {checked} pairs");
}

#[tokio::test]
async fn every_event_with_proof_passes_the_auditor_check() {
    let s = demo_server().await;
    let mut a = audit(&s).await;
    let v = pinned_key(&mut a).await;
    let events = all_events(&s).await;
    let n = events.len() as u64;
    for (size, positions) in [(None, 0..n), (Some(13), 0..13), (Some(1), 0..1)] {
        for pos in positions {
            let r = a
                .get_event_with_proof(pb::GetEventWithProofRequest {
                    position: pos,
                    tree_size: size,
                })
                .await
                .unwrap_or_else(|e| panic!("GetEventWithProof({pos}, {size:?}): {e}"))
                .into_inner();
            let what = format!("event {pos} at size {size:?}");
            let cp = Checkpoint::open(&r.checkpoint.expect("checkpoint").note, &v)
                .unwrap_or_else(|e| panic!("{what}: checkpoint does not open: {e}"));
            assert_eq!(cp.size, size.unwrap_or(n), "{what}: checkpoint size");
            let event = r.event.expect("event");
            assert_eq!(event.position, pos, "{what}: envelope position");
            assert_eq!(
                event.stored_bytes, events[pos as usize].stored_bytes,
                "{what}: the same bytes as ReadAll"
            );
            let proof = r.proof.expect("proof");
            assert_eq!(
                proof.tree_size, cp.size,
                "{what}: proof and checkpoint of one size"
            );
            check_inclusion(&cp, pos, &event.stored_bytes, &proof)
                .unwrap_or_else(|e| panic!("{what}: check_inclusion: {e}"));
        }
    }
}

// ---- 3. forgeries -----------------------------------------------------------------------------

#[tokio::test]
async fn forged_inclusion_proofs_are_rejected() {
    let s = demo_server().await;
    let mut a = audit(&s).await;
    let v = pinned_key(&mut a).await;
    let events = all_events(&s).await;
    let n = events.len() as u64;
    let (_, cp) = signed(&mut a, &v, None).await;
    let (_, cp_smaller) = signed(&mut a, &v, Some(n - 1)).await;

    // Several positions, so both left and right siblings, perfect and imperfect subtrees are hit.
    for pos in [0, 5, 13, n / 2, n - 2] {
        let bytes = &events[pos as usize].stored_bytes;
        let leaf = merkle::leaf_hash(bytes);
        let honest = inclusion(&mut a, pos, None).await.proof.expect("proof");
        assert!(honest.hashes.len() >= 3, "a path long enough to mutate");
        let path = to_hashes(&honest.hashes);
        // Baseline: the unmodified proof is accepted, so every rejection below is the mutation's.
        check_inclusion(&cp, pos, bytes, &honest).expect("honest proof");
        merkle::verify_inclusion(&leaf, pos, n, &path, &cp.root).expect("honest path");

        let case = |name: &str| format!("{name} (position {pos}, size {n})");

        // Wrong sibling: one byte of each hash flipped in turn.
        for i in 0..honest.hashes.len() {
            let mut p = honest.clone();
            p.hashes[i][i % 32] ^= 0x01;
            rejected(
                &case(&format!("wrong sibling {i}")),
                check_inclusion(&cp, pos, bytes, &p),
            );
            let e = merkle::verify_inclusion(&leaf, pos, n, &to_hashes(&p.hashes), &cp.root);
            assert_eq!(
                e,
                Err(ProofError::RootMismatch),
                "{}",
                case(&format!("wrong sibling {i}, raw"))
            );
        }

        // Wrong size: the proof claims size+1 or size-1 against the checkpoint of size n.
        for claimed in [n + 1, n - 1] {
            let mut p = honest.clone();
            p.tree_size = claimed;
            let msg = rejected(
                &case(&format!("proof claims size {claimed}")),
                check_inclusion(&cp, pos, bytes, &p),
            );
            assert!(msg.contains(&format!("in a tree of {claimed}")), "{msg}");
        }
        // Wrong size: the size-n proof passed off against the signed checkpoint of size n-1 (its
        // proof relabelled to match), and against the raw root of n-1.
        if pos < n - 1 {
            let mut p = honest.clone();
            p.tree_size = n - 1;
            let msg = rejected(
                &case("size-n proof against the signed checkpoint of size n-1"),
                check_inclusion(&cp_smaller, pos, bytes, &p),
            );
            assert!(msg.contains("is not in the signed tree"), "{msg}");
            rejected(
                &case("size-n path against the root of size n-1"),
                merkle::verify_inclusion(&leaf, pos, n - 1, &path, &cp_smaller.root),
            );
            // The unmodified proof against a checkpoint of another size.
            rejected(
                &case("checkpoint of another size"),
                check_inclusion(&cp_smaller, pos, bytes, &honest),
            );
        }

        // Truncated path: the last hash dropped.
        let mut p = honest.clone();
        p.hashes.pop();
        let msg = rejected(
            &case("truncated path"),
            check_inclusion(&cp, pos, bytes, &p),
        );
        assert!(msg.contains("hashes, sizes require"), "truncated: {msg}");
        assert!(
            matches!(
                merkle::verify_inclusion(&leaf, pos, n, &to_hashes(&p.hashes), &cp.root),
                Err(ProofError::WrongProofLength { .. })
            ),
            "{}",
            case("truncated path, raw")
        );

        // Extended path: one more hash (the root itself, then zeros).
        for extra in [cp.root, [0u8; 32]] {
            let mut p = honest.clone();
            p.hashes.push(extra.to_vec());
            let msg = rejected(&case("extended path"), check_inclusion(&cp, pos, bytes, &p));
            assert!(msg.contains("hashes, sizes require"), "extended: {msg}");
        }

        // Swapped order: each adjacent pair swapped.
        for i in 0..honest.hashes.len() - 1 {
            let mut p = honest.clone();
            p.hashes.swap(i, i + 1);
            assert_ne!(p.hashes, honest.hashes, "distinct hashes to swap");
            rejected(
                &case(&format!("swapped hashes {i} and {}", i + 1)),
                check_inclusion(&cp, pos, bytes, &p),
            );
        }
        // Reversed order (bottom-up vs top-down confusion).
        let mut p = honest.clone();
        p.hashes.reverse();
        rejected(&case("reversed path"), check_inclusion(&cp, pos, bytes, &p));

        // Wrong position: the same proof and bytes claimed for the neighbouring position (proof
        // relabelled), the neighbour's bytes with this proof, and a proof whose position field lies.
        let other = if pos + 1 < n { pos + 1 } else { pos - 1 };
        let mut p = honest.clone();
        p.position = other;
        rejected(
            &case(&format!("claimed for position {other}")),
            check_inclusion(&cp, other, bytes, &p),
        );
        rejected(
            &case("raw path at the wrong index"),
            merkle::verify_inclusion(&leaf, other, n, &path, &cp.root),
        );
        rejected(
            &case(&format!("bytes of event {other} with the proof of {pos}")),
            check_inclusion(&cp, pos, &events[other as usize].stored_bytes, &honest),
        );
        let msg = rejected(
            &case("proof's position field differs from the claim"),
            check_inclusion(&cp, other, &events[other as usize].stored_bytes, &honest),
        );
        assert!(msg.contains(&format!("for position {pos}")), "{msg}");

        // Stored bytes altered by one byte, at the start, middle and end.
        for at in [0, bytes.len() / 2, bytes.len() - 1] {
            let mut altered = bytes.clone();
            altered[at] ^= 0x20;
            let msg = rejected(
                &case(&format!("stored bytes altered at byte {at}")),
                check_inclusion(&cp, pos, &altered, &honest),
            );
            assert!(
                msg.contains(&format!("event {pos} is not in the signed tree")),
                "{msg}"
            );
        }
        // The leaf hash instead of the bytes (a client confusing the two).
        rejected(
            &case("leaf hash given as the bytes"),
            check_inclusion(&cp, pos, &leaf, &honest),
        );

        // A hash that is not 32 bytes.
        let mut p = honest.clone();
        p.hashes[0].pop();
        let msg = rejected(&case("31-byte hash"), check_inclusion(&cp, pos, bytes, &p));
        assert!(msg.contains("31 bytes"), "{msg}");
    }

    // One size larger than the proof: write one event and replay the size-n proof, relabelled,
    // against the real signed checkpoint of size n+1.
    s.ledger()
        .await
        .register_party(pb::RegisterPartyRequest {
            command: Some(party("audit-one-more", pb::PartyKind::Person)),
            ..Default::default()
        })
        .await
        .expect("register");
    let (_, cp_larger) = signed(&mut a, &v, None).await;
    assert_eq!(cp_larger.size, n + 1);
    for pos in [0, 5, n / 2, n - 1] {
        let mut p = inclusion(&mut a, pos, Some(n)).await.proof.expect("proof");
        p.tree_size = n + 1;
        rejected(
            &format!(
                "size-{n} proof of position {pos} against the signed checkpoint of size {}",
                n + 1
            ),
            check_inclusion(&cp_larger, pos, &events[pos as usize].stored_bytes, &p),
        );
    }
}

#[tokio::test]
async fn forged_consistency_proofs_and_forks_are_rejected() {
    let s = demo_server().await;
    let mut a = audit(&s).await;
    let v = pinned_key(&mut a).await;
    let n = s.head().await.event_count;
    let (_, new) = signed(&mut a, &v, None).await;

    // A non-power-of-two old size (the proof starts with a seed hash) and a power of two.
    for old_size in [13u64, 16] {
        let (_, old) = signed(&mut a, &v, Some(old_size)).await;
        let honest = consistency(&mut a, old_size, Some(n)).await.hashes;
        assert!(
            honest.len() >= 2,
            "a proof long enough to mutate ({} hashes)",
            honest.len()
        );
        check_consistency(&old, &new, &honest).expect("honest proof");
        let case = |name: &str| format!("{name} ({old_size} -> {n})");

        for i in 0..honest.len() {
            let mut p = honest.clone();
            p[i][31 - i % 32] ^= 0x80;
            let msg = rejected(
                &case(&format!("wrong hash {i}")),
                check_consistency(&old, &new, &p),
            );
            assert!(msg.contains("does not extend the saved one"), "{msg}");
        }
        let mut p = honest.clone();
        p.pop();
        rejected(&case("truncated proof"), check_consistency(&old, &new, &p));
        let mut p = honest.clone();
        p.push(new.root.to_vec());
        rejected(&case("extended proof"), check_consistency(&old, &new, &p));
        for i in 0..honest.len() - 1 {
            let mut p = honest.clone();
            p.swap(i, i + 1);
            rejected(
                &case(&format!("swapped hashes {i} and {}", i + 1)),
                check_consistency(&old, &new, &p),
            );
        }
        // Wrong sizes: the proof for (old_size, n) against signed checkpoints of neighbouring sizes.
        for other in [old_size - 1, old_size + 1] {
            let (_, other_old) = signed(&mut a, &v, Some(other)).await;
            rejected(
                &case(&format!("old checkpoint of size {other}")),
                check_consistency(&other_old, &new, &honest),
            );
        }
        let (_, smaller_new) = signed(&mut a, &v, Some(n - 1)).await;
        rejected(
            &case("new checkpoint of size n-1"),
            check_consistency(&old, &smaller_new, &honest),
        );
        // Raw sizes off by one with the real roots. An old size off by one always fails. A new
        // size off by one fails when it changes the proof's shape; when it does not, RFC 9162
        // recomputes the same two roots and accepts (the proof binds roots, not the new size, as
        // for inclusion), which is why the auditor takes both sizes from signed notes: the signed
        // checkpoints of n-1 (above) and n+1 (below) reject it.
        let path = to_hashes(&honest);
        for o in [old_size - 1, old_size + 1] {
            rejected(
                &case(&format!("raw old size {o}")),
                merkle::verify_consistency(o, n, &old.root, &new.root, &path),
            );
        }
        for nn in [n - 1, n + 1] {
            if merkle::consistency_proof_len(old_size, nn) != Some(path.len()) {
                assert!(
                    matches!(
                        merkle::verify_consistency(old_size, nn, &old.root, &new.root, &path),
                        Err(ProofError::WrongProofLength { .. })
                    ),
                    "{}",
                    case(&format!("raw new size {nn}, another shape"))
                );
            }
        }
        // Backwards: the newer checkpoint as the saved one.
        let msg = rejected(&case("shrink"), check_consistency(&new, &old, &[]));
        assert!(msg.contains("shrank"), "{msg}");
    }

    // A fork: another log of the same shape (the same dataset, recorded by someone else, so every
    // stored byte string differs), under the same origin name but its own key.
    let fork = demo_server_as("someone-else").await;
    let mut fa = audit(&fork).await;
    let fv = pinned_key(&mut fa).await;
    assert_eq!(fv.name(), v.name(), "same origin name");
    assert_ne!(fv, v, "another key");
    assert_eq!(fork.head().await.event_count, n, "same size");
    let (fork_note, fork_old) = signed(&mut fa, &fv, Some(13)).await;
    let (_, fork_new) = signed(&mut fa, &fv, None).await;
    let (_, old) = signed(&mut a, &v, Some(13)).await;
    assert_ne!(fork_old.root, old.root, "the fork differs by size 13");
    // The real key does not open the other log's checkpoint.
    let e = rejected(
        "fork checkpoint opened with the real key",
        Checkpoint::open(&fork_note.note, &v),
    );
    assert!(e.contains("not by the trusted key"), "{e}");
    // A fork's checkpoint (saved from the other log) against this log's proof and checkpoint.
    let proof = consistency(&mut a, 13, Some(n)).await.hashes;
    let msg = rejected(
        "fork: saved checkpoint from another log",
        check_consistency(&fork_old, &new, &proof),
    );
    assert!(msg.contains("forked or rewritten"), "{msg}");
    assert_eq!(
        merkle::verify_consistency(13, n, &fork_old.root, &new.root, &to_hashes(&proof)),
        Err(ProofError::OldRootMismatch),
        "fork: raw consistency against a root of another log"
    );
    // The other log's own proof cannot bridge its old root to this log's new root either.
    let fork_proof = consistency(&mut fa, 13, Some(n)).await.hashes;
    check_consistency(&fork_old, &fork_new, &fork_proof).expect("the fork is self-consistent");
    rejected(
        "fork: its own proof to this log's root",
        check_consistency(&fork_old, &new, &fork_proof),
    );
    rejected(
        "fork: this log's old root to the fork's root",
        check_consistency(&old, &fork_new, &proof),
    );
    // Same size, two histories.
    let msg = rejected(
        "fork at the same size",
        check_consistency(&fork_new, &new, &[]),
    );
    assert!(
        msg.contains("two different roots for the same tree size"),
        "{msg}"
    );
    fork.stop().await;

    // One size larger than the proof: write one event, then the (13, n) proof against the real
    // signed checkpoint of size n+1.
    s.ledger()
        .await
        .register_party(pb::RegisterPartyRequest {
            command: Some(party("audit-one-more", pb::PartyKind::Person)),
            ..Default::default()
        })
        .await
        .expect("register");
    let (_, larger) = signed(&mut a, &v, None).await;
    assert_eq!(larger.size, n + 1);
    rejected(
        &format!(
            "(13 -> {n}) proof against the signed checkpoint of size {}",
            n + 1
        ),
        check_consistency(&old, &larger, &proof),
    );
    let real = consistency(&mut a, 13, None).await.hashes;
    check_consistency(&old, &larger, &real).expect("the real (13 -> n+1) proof");
}

#[tokio::test]
async fn checkpoints_not_signed_by_the_pinned_key_do_not_open() {
    let s = demo_server().await;
    let mut a = audit(&s).await;
    let v = pinned_key(&mut a).await;
    let (real, cp) = signed(&mut a, &v, None).await;
    Checkpoint::open(&real.note, &v).expect("baseline: the real note opens");

    // The real size and root, signed by another key under the same origin name.
    let evil = Signer::from_seed(v.name(), &[0x42; 32]).expect("signer");
    assert_ne!(evil.verifier(), v);
    let forged_cp = Checkpoint::new(v.name(), cp.size, cp.root, Utc::now()).expect("checkpoint");
    let forged = forged_cp.sign(&evil).expect("sign");
    assert!(
        Checkpoint::open(&forged, &evil.verifier()).is_ok(),
        "it is a valid note for its own key"
    );
    assert!(
        matches!(
            Checkpoint::open(&forged, &v),
            Err(CheckpointError::Note(NoteError::KeyIdMismatch { .. }))
        ),
        "another key, same origin: {:?}",
        Checkpoint::open(&forged, &v)
    );

    // The other key's signature relabelled with the real key id: the signature itself fails.
    let (body, sig_line) = forged.split_once("\n\n").expect("note");
    let b64 = sig_line
        .trim_end()
        .rsplit_once(' ')
        .expect("signature line")
        .1;
    use base64::Engine as _;
    let b64e = base64::engine::general_purpose::STANDARD;
    let mut blob = b64e.decode(b64).expect("base64");
    blob[..4].copy_from_slice(&v.key_id().to_be_bytes());
    let spoofed = format!("{body}\n\n\u{2014} {} {}\n", v.name(), b64e.encode(&blob));
    assert!(
        matches!(
            Checkpoint::open(&spoofed, &v),
            Err(CheckpointError::Note(NoteError::InvalidSignature { .. }))
        ),
        "another key's signature under the real key id: {:?}",
        Checkpoint::open(&spoofed, &v)
    );

    // Another origin name entirely.
    let stranger = Signer::from_seed("evil.example/log", &[0x42; 32]).expect("signer");
    let note = Checkpoint::new("evil.example/log", cp.size, cp.root, Utc::now())
        .expect("checkpoint")
        .sign(&stranger)
        .expect("sign");
    assert!(
        matches!(
            Checkpoint::open(&note, &v),
            Err(CheckpointError::Note(NoteError::NotSignedByKey { .. }))
        ),
        "another origin"
    );

    // The real note with its size or root edited: the real signature no longer covers it.
    let size_edited = real.note.replacen(
        &format!("\n{}\n", cp.size),
        &format!("\n{}\n", cp.size + 1),
        1,
    );
    assert_ne!(size_edited, real.note);
    let root_edited = real.note.replacen(
        &b64e.encode(cp.root),
        &b64e.encode(merkle::leaf_hash(b"another root")),
        1,
    );
    assert_ne!(root_edited, real.note);
    for (case, note) in [("size edited", size_edited), ("root edited", root_edited)] {
        assert!(
            matches!(
                Checkpoint::open(&note, &v),
                Err(CheckpointError::Note(NoteError::InvalidSignature { .. }))
            ),
            "{case}: {:?}",
            Checkpoint::open(&note, &v)
        );
    }
}

// ---- 4. corrections stay provable ------------------------------------------------------------

#[tokio::test]
async fn a_retracted_statement_stays_provably_in_the_log() {
    let s = TestServer::start().await;
    let mut c = s.ledger().await;
    for p in [
        party("russia", pb::PartyKind::State),
        party("sergey-lavrov", pb::PartyKind::Person),
    ] {
        c.register_party(pb::RegisterPartyRequest {
            command: Some(p),
            ..Default::default()
        })
        .await
        .expect("register party");
    }
    let source_id = c
        .register_source(pb::RegisterSourceRequest {
            command: Some(source()),
            ..Default::default()
        })
        .await
        .expect("register source")
        .into_inner()
        .source_id;
    let st = c
        .record_statement(pb::RecordStatementRequest {
            command: Some(statement(
                "sergey-lavrov",
                &source_id,
                "We are prepared to resume negotiations",
            )),
            ..Default::default()
        })
        .await
        .expect("record statement")
        .into_inner();
    let st_pos = st.result.expect("result").events[0].position;
    let mut a = audit(&s).await;
    let v = pinned_key(&mut a).await;
    let before_bytes = all_events(&s).await[st_pos as usize].stored_bytes.clone();
    let (_, before) = signed(&mut a, &v, None).await;

    let corr = c
        .issue_correction(pb::IssueCorrectionRequest {
            command: Some(pb::IssueCorrectionCommand {
                target_kind: pb::TargetKind::Statement as i32,
                target_id: st.statement_id.clone(),
                kind: pb::CorrectionKind::Retract as i32,
                reason: "misattributed".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("retract")
        .into_inner();
    let corr_pos = corr.result.expect("result").events[0].position;
    assert!(
        corr_pos > st_pos,
        "the correction is appended after the statement"
    );
    // More writes after the correction, so the latest tree is larger than both.
    c.register_party(pb::RegisterPartyRequest {
        command: Some(party("after-correction", pb::PartyKind::Person)),
        ..Default::default()
    })
    .await
    .expect("register");

    let (_, latest) = signed(&mut a, &v, None).await;
    assert!(latest.size > corr_pos + 1);
    let r = a
        .get_event_with_proof(pb::GetEventWithProofRequest {
            position: st_pos,
            tree_size: None,
        })
        .await
        .expect("GetEventWithProof of the retracted statement")
        .into_inner();
    let cp = Checkpoint::open(&r.checkpoint.expect("checkpoint").note, &v).expect("opens");
    assert_eq!(
        (cp.size, cp.root),
        (latest.size, latest.root),
        "proven against the latest tree"
    );
    let event = r.event.expect("event");
    assert_eq!(event.event_type, "StatementRecorded");
    assert_eq!(
        event.stored_bytes, before_bytes,
        "the retracted statement's bytes are unchanged"
    );
    check_inclusion(&cp, st_pos, &event.stored_bytes, &r.proof.expect("proof"))
        .expect("the retracted statement is still in the signed tree");

    // The correction itself is provable too, and the log before it is a prefix of the log after.
    let r = a
        .get_event_with_proof(pb::GetEventWithProofRequest {
            position: corr_pos,
            tree_size: None,
        })
        .await
        .expect("GetEventWithProof of the correction")
        .into_inner();
    let event = r.event.expect("event");
    assert_eq!(event.event_type, "CorrectionIssued");
    check_inclusion(
        &latest,
        corr_pos,
        &event.stored_bytes,
        &r.proof.expect("proof"),
    )
    .expect("the correction is in the signed tree");
    let proof = consistency(&mut a, before.size, None).await.hashes;
    check_consistency(&before, &latest, &proof).expect("the correction only appended");
}

// ---- 5. errors --------------------------------------------------------------------------------

#[tokio::test]
async fn requests_outside_the_log_are_out_of_range_and_write_nothing() {
    let s = demo_server().await;
    let mut a = audit(&s).await;
    let before = s.head().await;
    let n = before.event_count;
    assert!(n > 10);

    for size in [n + 1, n + 100, u64::MAX] {
        expect_code(
            &format!("GetCheckpoint tree_size {size} beyond the log of {n}"),
            a.get_checkpoint(pb::GetCheckpointRequest {
                tree_size: Some(size),
            })
            .await,
            Code::OutOfRange,
        );
    }
    for (position, size, case) in [
        (0, Some(n + 1), "tree_size beyond the log"),
        (n, None, "position = tree size (whole log)"),
        (n + 5, None, "position beyond the log"),
        (5, Some(5), "position = tree size"),
        (9, Some(5), "position > tree size"),
        (0, Some(0), "empty tree"),
        (u64::MAX, None, "position u64::MAX"),
        (u64::MAX, Some(u64::MAX), "both u64::MAX"),
    ] {
        expect_code(
            &format!("GetInclusionProof {case}"),
            a.get_inclusion_proof(pb::GetInclusionProofRequest {
                position,
                tree_size: size,
            })
            .await,
            Code::OutOfRange,
        );
        expect_code(
            &format!("GetEventWithProof {case}"),
            a.get_event_with_proof(pb::GetEventWithProofRequest {
                position,
                tree_size: size,
            })
            .await,
            Code::OutOfRange,
        );
    }
    for (old, new, case) in [
        (6, Some(5), "old_size > new_size"),
        (n, Some(n - 1), "old_size = log > new_size"),
        (n + 1, None, "old_size beyond the log (new = whole log)"),
        (1, Some(n + 1), "new_size beyond the log"),
        (n + 1, Some(n + 1), "both beyond the log"),
        (u64::MAX, None, "old_size u64::MAX"),
    ] {
        expect_code(
            &format!("GetConsistencyProof {case}"),
            a.get_consistency_proof(pb::GetConsistencyProofRequest {
                old_size: old,
                new_size: new,
            })
            .await,
            Code::OutOfRange,
        );
    }
    let after = s.head().await;
    assert_eq!(
        (after.event_count, after.hash),
        (before.event_count, before.hash),
        "audit requests write nothing"
    );
    // The edges that are in range still answer.
    a.get_inclusion_proof(pb::GetInclusionProofRequest {
        position: n - 1,
        tree_size: Some(n),
    })
    .await
    .expect("last position at the full size");
    let r = consistency(&mut a, n, Some(n)).await;
    assert!(r.hashes.is_empty(), "same size: empty proof");
    let r = consistency(&mut a, 0, None).await;
    assert!(r.hashes.is_empty(), "from the empty tree: empty proof");
}
