//! Auditing a ledger without trusting it. The log signs checkpoints (origin, tree size, RFC 6962
//! Merkle root) with an Ed25519 key; an auditor pins the verifier key once, out of band, and then
//! checks everything a server sends against it:
//!
//! - a checkpoint must carry a valid signature by the pinned key ([`Auditor::open`]); the fields a
//!   server sends beside the signed note are ignored in favour of the note itself;
//! - a later checkpoint must extend an earlier one, by a consistency proof ([`check_consistency`]):
//!   a log that shrank or forked fails;
//! - an event must be in a signed tree, by an inclusion proof over its exact stored bytes
//!   ([`check_inclusion`], [`Auditor::verify_event`]).
//!
//! Every hash is recomputed here, with `claims_ledger_core`'s Merkle code. The checks are pure
//! functions of what was received, so they also run offline on saved material; [`Audit`] fetches
//! the material, and the `Auditor` methods that take an [`Audit`] fetch and check in one step.
//!
//! ```
//! use claims_ledger_client::audit::{check_inclusion, merkle, Auditor, Checkpoint};
//! use claims_ledger_client::audit::checkpoint::Signer;
//! use claims_ledger_client::pb;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // A log of two events, signed by its operator (here: a key made for the example).
//! let signer = Signer::from_seed("example.org/ledger", &[7; 32])?;
//! let (a, b) = (br#"{"position":0}"#, br#"{"position":1}"#);
//! let root = merkle::node_hash(&merkle::leaf_hash(a), &merkle::leaf_hash(b));
//! let note = Checkpoint::new("example.org/ledger", 2, root, chrono::Utc::now())?.sign(&signer)?;
//!
//! // The auditor knows only the pinned verifier key, and trusts nothing else it is sent.
//! let auditor = Auditor::from_key(&signer.verifier().public_key_string())?;
//! let cp = auditor.open(&note)?;
//! let proof = pb::InclusionProof {
//!     position: 0,
//!     tree_size: 2,
//!     hashes: vec![merkle::leaf_hash(b).to_vec()],
//! };
//! check_inclusion(&cp, 0, a, &proof)?;
//! // One byte changed in the event, or in the note, and the check fails.
//! assert!(check_inclusion(&cp, 0, br#"{"position":9}"#, &proof).is_err());
//! assert!(auditor.open(&note.replacen("\n2\n", "\n3\n", 1)).is_err());
//! # Ok(())
//! # }
//! ```
pub use claims_ledger_core::checkpoint::{self, Checkpoint, CheckpointError, Verifier};
pub use claims_ledger_core::merkle;

use crate::connection::Transport;
use crate::pb;
use crate::pb::audit_client::AuditClient;
use crate::retry::RetryPolicy;
use crate::{unary, Error};

/// A verification failure: the log is not what a signed view says it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Failed {
    reason: String,
}

impl Failed {
    /// A failure for `reason`, for checks a program adds of its own (e.g. on a saved note).
    pub fn new(reason: impl Into<String>) -> Self {
        Failed {
            reason: reason.into(),
        }
    }

    /// Why, in a sentence.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

/// Why an online check did not pass: the log failed it, or it could not be made.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// Checked, and it does not verify: evidence of tampering (or of the wrong key).
    #[error(transparent)]
    Failed(#[from] Failed),
    /// Not checked: the server could not be asked (unreachable, refused, ...).
    #[error(transparent)]
    Unchecked(#[from] Error),
}

fn hash32(bytes: &[u8], what: &str) -> Result<merkle::Hash, Failed> {
    bytes
        .try_into()
        .map_err(|_| Failed::new(format!("{what} is {} bytes, not 32", bytes.len())))
}

fn hashes(list: &[Vec<u8>], what: &str) -> Result<Vec<merkle::Hash>, Failed> {
    list.iter().map(|h| hash32(h, what)).collect()
}

/// Checks `proof` (as sent) for the event whose exact stored bytes are `stored`, at `position`,
/// in the tree of `cp` (a checkpoint already opened with the pinned key).
pub fn check_inclusion(
    cp: &Checkpoint,
    position: u64,
    stored: &[u8],
    proof: &pb::InclusionProof,
) -> Result<(), Failed> {
    if proof.position != position || proof.tree_size != cp.size {
        return Err(Failed::new(format!(
            "the proof is for position {} in a tree of {}, not position {position} in the checkpoint's {}",
            proof.position, proof.tree_size, cp.size
        )));
    }
    let leaf = merkle::leaf_hash(stored);
    let path = hashes(&proof.hashes, "an inclusion proof hash")?;
    merkle::verify_inclusion(&leaf, position, cp.size, &path, &cp.root).map_err(|e| {
        Failed::new(format!(
            "event {position} is not in the signed tree of {} events: {e}",
            cp.size
        ))
    })
}

/// Checks that `new` extends `old` by `proof` (both already opened with the pinned key); a smaller
/// or forked log fails.
pub fn check_consistency(
    old: &Checkpoint,
    new: &Checkpoint,
    proof: &[Vec<u8>],
) -> Result<(), Failed> {
    if old.origin != new.origin {
        return Err(Failed::new(format!(
            "origin changed from {:?} to {:?}",
            old.origin, new.origin
        )));
    }
    if new.size < old.size {
        return Err(Failed::new(format!(
            "the log shrank: the saved checkpoint has {} events, the server now signs {}",
            old.size, new.size
        )));
    }
    let path = hashes(proof, "a consistency proof hash")?;
    merkle::verify_consistency(old.size, new.size, &old.root, &new.root, &path).map_err(|e| {
        Failed::new(format!(
            "the log of {} events does not extend the saved one of {} (forked or rewritten): {e}",
            new.size, old.size
        ))
    })
}

/// The record's own idea of its position, from its stored JSON.
fn stored_position(stored: &[u8]) -> Option<u64> {
    serde_json::from_slice::<serde_json::Value>(stored)
        .ok()?
        .get("position")?
        .as_u64()
}

/// A checkpoint that verified, with the signed note it came from (the note is what to save: it
/// can be checked again later, by anyone with the key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub checkpoint: Checkpoint,
    pub note: String,
}

/// Checks what a ledger sends against one pinned verifier key.
#[derive(Debug, Clone)]
pub struct Auditor {
    verifier: Verifier,
}

impl Auditor {
    /// An auditor that trusts `verifier`.
    pub fn new(verifier: Verifier) -> Self {
        Auditor { verifier }
    }

    /// An auditor that trusts the verifier key `name+keyid+base64` (from `Audit.GetPublicKey`,
    /// ideally obtained out of band).
    pub fn from_key(key: &str) -> Result<Self, checkpoint::NoteError> {
        Ok(Auditor::new(Verifier::from_public_key_string(key.trim())?))
    }

    /// The pinned key.
    pub fn verifier(&self) -> &Verifier {
        &self.verifier
    }

    /// Opens a signed note: its signature by the pinned key, then its body.
    pub fn open(&self, note: &str) -> Result<Checkpoint, CheckpointError> {
        Checkpoint::open(note, &self.verifier)
    }

    /// Checks an answer of `Audit.GetEventWithProof` for `position` against `trusted`, a
    /// checkpoint verified before: the answer's checkpoint must verify and be that same tree, the
    /// stored bytes must be a record of that position, and the inclusion proof must hold for them.
    /// Returns the event.
    pub fn verify_event<'a>(
        &self,
        trusted: &Checkpoint,
        position: u64,
        answer: &'a pb::GetEventWithProofResponse,
    ) -> Result<&'a pb::EventEnvelope, Failed> {
        let note = answer.checkpoint.as_ref().map_or("", |c| c.note.as_str());
        let cp = self
            .open(note)
            .map_err(|e| Failed::new(format!("the event's checkpoint does not verify: {e}")))?;
        if cp.size != trusted.size || cp.root != trusted.root {
            return Err(Failed::new(format!(
                "the event was proven against a tree of {} events with another root than the checkpoint just verified",
                cp.size
            )));
        }
        let event = answer
            .event
            .as_ref()
            .ok_or_else(|| Failed::new(format!("no event was sent for position {position}")))?;
        if stored_position(&event.stored_bytes) != Some(position) {
            return Err(Failed::new(format!(
                "the stored bytes sent for position {position} are not a record of that position"
            )));
        }
        let empty = pb::InclusionProof::default();
        let proof = answer.proof.as_ref().unwrap_or(&empty);
        check_inclusion(&cp, position, &event.stored_bytes, proof)?;
        Ok(event)
    }

    /// Fetches the latest signed checkpoint and verifies it.
    pub async fn latest(&self, audit: &Audit) -> Result<Verified, AuditError> {
        let note = audit
            .get_checkpoint(None)
            .await?
            .checkpoint
            .map(|c| c.note)
            .unwrap_or_default();
        let checkpoint = self
            .open(&note)
            .map_err(|e| Failed::new(format!("the server's checkpoint does not verify: {e}")))?;
        Ok(Verified { checkpoint, note })
    }

    /// Fetches a consistency proof from `old` to `new` and checks it.
    pub async fn check_extends(
        &self,
        audit: &Audit,
        old: &Checkpoint,
        new: &Checkpoint,
    ) -> Result<(), AuditError> {
        // A shrunk log has no proof to ask for; the check below names the shrinking.
        let proof = if new.size >= old.size {
            audit
                .get_consistency_proof(old.size, Some(new.size))
                .await?
                .hashes
        } else {
            Vec::new()
        };
        check_consistency(old, new, &proof)?;
        Ok(())
    }

    /// Fetches the event at `position` with its proof against `trusted`'s tree, and checks both
    /// ([`Auditor::verify_event`]).
    pub async fn check_event(
        &self,
        audit: &Audit,
        trusted: &Checkpoint,
        position: u64,
    ) -> Result<pb::EventEnvelope, AuditError> {
        let answer = audit
            .get_event_with_proof(position, Some(trusted.size))
            .await?;
        let event = self.verify_event(trusted, position, &answer)?;
        Ok(event.clone())
    }
}

/// The audit service handle: fetches signed checkpoints and proofs (it checks nothing: that is
/// the [`Auditor`]'s job). Reads only, so transient failures are retried.
#[derive(Clone)]
pub struct Audit {
    client: AuditClient<Transport>,
    retry: RetryPolicy,
}

impl Audit {
    pub(crate) fn new(transport: Transport, retry: RetryPolicy) -> Self {
        Audit {
            client: AuditClient::new(transport),
            retry,
        }
    }

    /// The same handle with another retry policy.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// The generated client underneath.
    pub fn raw(&self) -> AuditClient<Transport> {
        self.client.clone()
    }

    /// `Audit.GetPublicKey`: the log's verifier key. Fetching it from the server being audited
    /// only helps on first contact: pin it, and compare it with one obtained out of band.
    pub async fn get_public_key(&self) -> Result<pb::GetPublicKeyResponse, Error> {
        unary(
            &self.retry,
            &self.client,
            &pb::GetPublicKeyRequest {},
            |mut c, r| async move { c.get_public_key(r).await },
        )
        .await
    }

    /// `Audit.GetCheckpoint`: signed at `tree_size`, or the latest.
    pub async fn get_checkpoint(
        &self,
        tree_size: Option<u64>,
    ) -> Result<pb::GetCheckpointResponse, Error> {
        let request = pb::GetCheckpointRequest { tree_size };
        unary(&self.retry, &self.client, &request, |mut c, r| async move {
            c.get_checkpoint(r).await
        })
        .await
    }

    /// `Audit.GetInclusionProof`.
    pub async fn get_inclusion_proof(
        &self,
        position: u64,
        tree_size: Option<u64>,
    ) -> Result<pb::GetInclusionProofResponse, Error> {
        let request = pb::GetInclusionProofRequest {
            position,
            tree_size,
        };
        unary(&self.retry, &self.client, &request, |mut c, r| async move {
            c.get_inclusion_proof(r).await
        })
        .await
    }

    /// `Audit.GetConsistencyProof`.
    pub async fn get_consistency_proof(
        &self,
        old_size: u64,
        new_size: Option<u64>,
    ) -> Result<pb::GetConsistencyProofResponse, Error> {
        let request = pb::GetConsistencyProofRequest { old_size, new_size };
        unary(&self.retry, &self.client, &request, |mut c, r| async move {
            c.get_consistency_proof(r).await
        })
        .await
    }

    /// `Audit.GetEventWithProof`.
    pub async fn get_event_with_proof(
        &self,
        position: u64,
        tree_size: Option<u64>,
    ) -> Result<pb::GetEventWithProofResponse, Error> {
        let request = pb::GetEventWithProofRequest {
            position,
            tree_size,
        };
        unary(&self.retry, &self.client, &request, |mut c, r| async move {
            c.get_event_with_proof(r).await
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::checkpoint::Signer;
    use super::*;

    const ORIGIN: &str = "test.example/log";

    fn signer() -> Signer {
        Signer::from_seed(ORIGIN, &[42; 32]).expect("signer")
    }

    fn record(position: u64) -> Vec<u8> {
        format!(r#"{{"position":{position},"payload":"e{position}"}}"#).into_bytes()
    }

    fn leaves(n: u64) -> Vec<merkle::Hash> {
        (0..n).map(|i| merkle::leaf_hash(&record(i))).collect()
    }

    /// The RFC 9162 audit path of leaf `index` among `leaves`, computed from scratch.
    fn path(index: usize, leaves: &[merkle::Hash]) -> Vec<Vec<u8>> {
        if leaves.len() <= 1 {
            return Vec::new();
        }
        let k = leaves.len().next_power_of_two() / 2;
        let (left, right) = leaves.split_at(k);
        if index < k {
            let mut p = path(index, left);
            p.push(merkle::root(right).to_vec());
            p
        } else {
            let mut p = path(index - k, right);
            p.push(merkle::root(left).to_vec());
            p
        }
    }

    fn signed(n: u64) -> (Checkpoint, String) {
        let cp = Checkpoint::new(ORIGIN, n, merkle::root(&leaves(n)), chrono::Utc::now())
            .expect("checkpoint");
        let note = cp.sign(&signer()).expect("sign");
        (cp, note)
    }

    fn answer(n: u64, position: u64) -> pb::GetEventWithProofResponse {
        let (_, note) = signed(n);
        pb::GetEventWithProofResponse {
            event: Some(pb::EventEnvelope {
                position,
                stored_bytes: record(position),
                ..Default::default()
            }),
            proof: Some(pb::InclusionProof {
                position,
                tree_size: n,
                hashes: path(position as usize, &leaves(n)),
            }),
            checkpoint: Some(pb::SignedCheckpoint {
                note,
                ..Default::default()
            }),
        }
    }

    fn auditor() -> Auditor {
        Auditor::new(signer().verifier())
    }

    #[test]
    fn an_honest_event_verifies() {
        let (cp, note) = signed(7);
        let trusted = auditor().open(&note).expect("open");
        assert_eq!(trusted, cp);
        for pos in 0..7 {
            let a = answer(7, pos);
            let e = auditor()
                .verify_event(&trusted, pos, &a)
                .unwrap_or_else(|f| panic!("{pos}: {f}"));
            assert_eq!(e.position, pos);
        }
    }

    #[test]
    fn tampered_event_bytes_proof_or_checkpoint_are_rejected() {
        let (_, note) = signed(7);
        let trusted = auditor().open(&note).expect("open");
        let honest = answer(7, 3);

        let mut a = honest.clone();
        if let Some(e) = a.event.as_mut() {
            e.stored_bytes = br#"{"position":3,"payload":"forged"}"#.to_vec();
        }
        let f = auditor().verify_event(&trusted, 3, &a).expect_err("bytes");
        assert!(f.reason().contains("is not in the signed tree"), "{f}");

        let mut a = honest.clone();
        if let Some(p) = a.proof.as_mut() {
            p.hashes[0][0] ^= 1;
        }
        auditor().verify_event(&trusted, 3, &a).expect_err("path");

        let mut a = honest.clone();
        if let Some(p) = a.proof.as_mut() {
            p.hashes.pop();
        }
        auditor()
            .verify_event(&trusted, 3, &a)
            .expect_err("short path");

        // Another position's record passed off as position 3.
        let mut a = honest.clone();
        if let Some(e) = a.event.as_mut() {
            e.stored_bytes = record(4);
        }
        let f = auditor()
            .verify_event(&trusted, 3, &a)
            .expect_err("position");
        assert!(f.reason().contains("not a record of that position"), "{f}");

        // A checkpoint signed by another key.
        let other = Signer::from_seed(ORIGIN, &[1; 32]).expect("signer");
        let cp =
            Checkpoint::new(ORIGIN, 7, merkle::root(&leaves(7)), chrono::Utc::now()).expect("cp");
        let mut a = honest.clone();
        a.checkpoint = Some(pb::SignedCheckpoint {
            note: cp.sign(&other).expect("sign"),
            ..Default::default()
        });
        let f = auditor().verify_event(&trusted, 3, &a).expect_err("key");
        assert!(f.reason().contains("does not verify"), "{f}");

        // A genuine checkpoint, but of another tree than the trusted one.
        let a = answer(6, 3);
        let f = auditor().verify_event(&trusted, 3, &a).expect_err("tree");
        assert!(f.reason().contains("another root"), "{f}");

        // The note's body edited after signing.
        let forged = note.replacen("\n7\n", "\n8\n", 1);
        assert_ne!(forged, note);
        auditor().open(&forged).expect_err("edited note");
    }

    #[test]
    fn consistency_holds_for_an_extension_and_fails_for_a_fork_or_a_shrink() {
        let (old, _) = signed(4);
        let (new, _) = signed(7);
        // RFC 9162 consistency proof of 4 -> 7: the old tree is the new one's whole left
        // subtree, so the proof is just the root of the right one, leaves [4, 7).
        let l = leaves(7);
        let proof = vec![merkle::root(&l[4..7]).to_vec()];
        check_consistency(&old, &new, &proof).expect("extension");

        let mut forked = proof.clone();
        forked[0][0] ^= 1;
        check_consistency(&old, &new, &forked).expect_err("fork");

        let f = check_consistency(&new, &old, &[]).expect_err("shrink");
        assert!(f.reason().contains("the log shrank"), "{f}");

        let f = check_consistency(&old, &new, &[vec![0; 31]]).expect_err("bad hash");
        assert!(f.reason().contains("not 32"), "{f}");
    }
}
