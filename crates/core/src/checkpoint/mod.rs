//! Signed checkpoints of the log: a C2SP `tlog-checkpoint` body inside a C2SP `signed-note`,
//! signed with Ed25519, so that anyone holding the log's public key can check what tree head the
//! log committed to, with the same tools that check Go's checksum database or a CT log.
//!
//! Formats (byte for byte what `golang.org/x/mod/sumdb/note` reads and writes):
//! - A **signed note** (c2sp.org/signed-note) is a text ending in a newline, a blank line, then one
//!   or more lines `— <key name> <base64(key ID ‖ signature)>\n` (em dash U+2014, space). The key
//!   ID is `SHA-256(key name ‖ 0x0A ‖ 0x01 ‖ public key)[:4]`, big-endian, and the Ed25519
//!   signature covers the text including its final newline, not the blank line. A note must be
//!   valid UTF-8 (guaranteed here by `&str`) with no control character other than newline.
//! - A **verifier key** is `<name>+<8 hex digits of key ID>+<base64(0x01 ‖ 32-byte public key)>`;
//!   a **signer key** is `PRIVATE+KEY+<name>+<key ID>+<base64(0x01 ‖ 32-byte seed)>`. Both are
//!   checked on parse: the stated key ID must be the one computed from the name and key.
//! - A **checkpoint** (c2sp.org/tlog-checkpoint) is the note text
//!   `<origin>\n<tree size>\n<base64(root)>\n` followed by *extension lines*, which the spec leaves
//!   opaque. This log writes exactly one: `timestamp <unix seconds>\n`, the time the log signed
//!   the tree head, in whole seconds since the Unix epoch, decimal, no sign, no leading zeros.
//!   Extension lines are not auditable by monitors and witnesses that cosign with
//!   c2sp.org/tlog-cosignature do not vouch for them: the timestamp is the log's own claim.
//!
//! Parsing is strict, so that one tree head has exactly one encoding: a size must be decimal
//! without leading zeros (except `0`) and fit in 64 bits; the root must be canonical padded
//! standard base64 of exactly 32 bytes; the origin must be non-empty; the timestamp line must be
//! present and well formed; **any further line is rejected** ([`CheckpointError::UnexpectedLine`])
//! rather than kept, since this log never writes one and a checkpoint that round-trips through
//! [`Checkpoint`] must be the one that was signed. By convention (and as tlog-checkpoint
//! recommends) the key name is the log's origin, e.g. `claims-ledger.example/log`;
//! [`Checkpoint::sign`] and [`Checkpoint::open`] require it.
//!
//! Opening a note follows the spec: signatures whose (key name, key ID) is not the verifier's are
//! ignored; every signature that claims the verifier's key must verify (one that does not rejects
//! the whole note); at least one must; more than [`MAX_SIGNATURES`] signature lines are refused.
//! Ed25519 verification is `verify_strict` (no small-order keys, no malleable signatures).
//!
//! The module is pure: no I/O, no clock, no randomness. Keys on disk live in [`keys`].

pub mod keys;

use std::fmt;
use std::str::FromStr;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use ed25519_dalek::Signer as _;
use ed25519_dalek::{Signature, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

/// Most signature lines [`open_note`] reads before refusing a note (the Go implementation's limit).
pub const MAX_SIGNATURES: usize = 100;

/// Signature type byte of Ed25519 in key IDs and key strings (c2sp.org/signed-note).
pub const ALG_ED25519: u8 = 0x01;

/// Start of every signature line: em dash U+2014 and a space.
const SIG_PREFIX: &str = "\u{2014} ";
/// Start of a signer key string.
const PRIVATE_KEY_PREFIX: &str = "PRIVATE+KEY+";
/// Start of the one extension line of our checkpoints.
const TIMESTAMP_PREFIX: &str = "timestamp ";

/// Errors of keys and signed notes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    /// A key name must be non-empty, without `+`, Unicode spaces or control characters.
    #[error(
        "invalid key name {0:?}: it must be non-empty, without '+', spaces or control characters"
    )]
    InvalidKeyName(String),
    /// A verifier or signer key string is not of the expected shape.
    #[error("malformed key string: {0}")]
    MalformedKey(&'static str),
    /// The key data names a signature type other than Ed25519 (0x01).
    #[error("unsupported key algorithm 0x{0:02x} (only Ed25519, 0x01, is supported)")]
    UnsupportedAlgorithm(u8),
    /// The key ID written in a key string is not the one computed from its name and key.
    #[error("key string states key ID {stated:08x} but its name and key give {computed:08x}")]
    KeyIdDoesNotMatchKey { stated: u32, computed: u32 },
    /// The 32 bytes are not an acceptable Ed25519 public key (not a point, or of small order).
    #[error("not a valid Ed25519 public key")]
    InvalidPublicKey,
    /// Text to sign must end with a newline (and a note's text always does).
    #[error("note text does not end with a newline")]
    TextNotNewlineTerminated,
    /// A note, or a text to sign, holds an ASCII control character other than newline.
    #[error("note holds control character U+{code:04X} at byte {offset}")]
    ControlCharacter { offset: usize, code: u32 },
    /// No blank line separates the text from the signatures.
    #[error("note has no blank line before its signatures")]
    MissingBlankLine,
    /// The blank line is not followed by any signature line.
    #[error("note has no signature lines")]
    NoSignatures,
    /// The last signature line is not ended by a newline.
    #[error("the last signature line does not end with a newline")]
    UnterminatedSignatureLine,
    /// More than [`MAX_SIGNATURES`] signature lines.
    #[error("note has {0} signature lines, more than the {MAX_SIGNATURES} accepted")]
    TooManySignatures(usize),
    /// A signature line is not `— <key name> <base64>` with at least 5 decoded bytes.
    #[error("signature line {line} is malformed: {reason}")]
    MalformedSignatureLine { line: usize, reason: &'static str },
    /// Nothing in the note claims to be signed by the verifier's key name.
    #[error("note has no signature by key {name}+{key_id:08x}")]
    NotSignedByKey { name: String, key_id: u32 },
    /// The note is signed under the verifier's name, but by another key (another key ID).
    #[error("note is signed by {name}+{found:08x}, not by the trusted key {name}+{expected:08x}")]
    KeyIdMismatch {
        name: String,
        expected: u32,
        found: u32,
    },
    /// A signature claims the verifier's key (name and key ID) but does not verify.
    #[error("invalid signature by key {name}+{key_id:08x}")]
    InvalidSignature { name: String, key_id: u32 },
}

/// Errors of checkpoint bodies and signed checkpoints.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    /// The signed note around the checkpoint is malformed or not signed by the trusted key.
    #[error(transparent)]
    Note(#[from] NoteError),
    /// A checkpoint body must end with a newline.
    #[error("checkpoint text does not end with a newline")]
    MissingFinalNewline,
    /// The body stops before this line.
    #[error("checkpoint has no {0} line")]
    MissingLine(&'static str),
    /// The origin line is empty.
    #[error("checkpoint origin is empty")]
    EmptyOrigin,
    /// The origin holds a newline or another control character.
    #[error("checkpoint origin {0:?} holds a control character")]
    InvalidOrigin(String),
    /// The size line is not a decimal `u64` without sign or leading zeros.
    #[error("checkpoint tree size {0:?} is not a decimal u64 without sign or leading zeros")]
    InvalidSize(String),
    /// The root line is not canonical standard base64 with padding.
    #[error("checkpoint root hash {0:?} is not canonical padded standard base64")]
    InvalidRootEncoding(String),
    /// The root decodes to other than 32 bytes.
    #[error("checkpoint root hash is {0} bytes long, not 32")]
    InvalidRootLength(usize),
    /// The line after the root is not `timestamp <unix seconds>`.
    #[error("checkpoint timestamp line {0:?} is not `timestamp <unix seconds>`")]
    InvalidTimestamp(String),
    /// The timestamp cannot be written: before the epoch, or not a whole number of seconds.
    #[error(
        "checkpoint timestamp {0} is not a whole number of seconds at or after the Unix epoch"
    )]
    UnrepresentableTimestamp(DateTime<Utc>),
    /// A line after the timestamp (this log writes no other extension line).
    #[error("checkpoint has an unexpected extra line {0:?}")]
    UnexpectedLine(String),
    /// The origin is not the signing key's name.
    #[error("checkpoint origin {origin:?} is not the key name {key_name:?}")]
    OriginMismatch { origin: String, key_name: String },
}

/// The C2SP key ID of an Ed25519 key: `SHA-256(name ‖ 0x0A ‖ 0x01 ‖ public key)[:4]`, big-endian.
pub fn key_id(name: &str, public_key: &[u8; 32]) -> u32 {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update([b'\n', ALG_ED25519]);
    h.update(public_key);
    let digest = h.finalize();
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

/// Whether `name` may be a key name: non-empty, no `+`, no Unicode space, no control character.
pub fn is_valid_key_name(name: &str) -> bool {
    !name.is_empty()
        && !name
            .chars()
            .any(|c| c == '+' || c.is_whitespace() || c.is_control())
}

fn check_key_name(name: &str) -> Result<(), NoteError> {
    if is_valid_key_name(name) {
        Ok(())
    } else {
        Err(NoteError::InvalidKeyName(name.to_owned()))
    }
}

/// Splits `<name>+<hex8>+<base64(0x01 ‖ 32 bytes)>` and checks everything but the key ID.
fn parse_key_parts(s: &str) -> Result<(&str, u32, [u8; 32]), NoteError> {
    let mut parts = s.splitn(3, '+');
    let (Some(name), Some(hex), Some(data)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(NoteError::MalformedKey(
            "expected <name>+<key ID>+<key data>",
        ));
    };
    check_key_name(name)?;
    if hex.len() != 8 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(NoteError::MalformedKey("key ID is not 8 hex digits"));
    }
    let stated = u32::from_str_radix(hex, 16)
        .map_err(|_| NoteError::MalformedKey("key ID is not 8 hex digits"))?;
    let bytes = BASE64
        .decode(data)
        .map_err(|_| NoteError::MalformedKey("key data is not standard base64"))?;
    let (&alg, key) = bytes
        .split_first()
        .ok_or(NoteError::MalformedKey("key data is empty"))?;
    if alg != ALG_ED25519 {
        return Err(NoteError::UnsupportedAlgorithm(alg));
    }
    let key: [u8; 32] = key
        .try_into()
        .map_err(|_| NoteError::MalformedKey("Ed25519 key data is not 1 + 32 bytes"))?;
    Ok((name, stated, key))
}

fn encode_key_data(key: &[u8; 32]) -> String {
    let mut data = [0u8; 33];
    data[0] = ALG_ED25519;
    data[1..].copy_from_slice(key);
    BASE64.encode(data)
}

/// A trusted public key: verifies signatures by one (key name, key ID).
#[derive(Clone, PartialEq, Eq)]
pub struct Verifier {
    name: String,
    key_id: u32,
    key: VerifyingKey,
}

impl Verifier {
    /// Parses a verifier key string `<name>+<hex8 key ID>+<base64(0x01 ‖ public key)>`.
    pub fn from_public_key_string(vkey: &str) -> Result<Self, NoteError> {
        let (name, stated, key) = parse_key_parts(vkey)?;
        let computed = key_id(name, &key);
        if stated != computed {
            return Err(NoteError::KeyIdDoesNotMatchKey { stated, computed });
        }
        Self::from_public_key(name, &key)
    }

    /// A verifier for a raw Ed25519 public key under `name`.
    pub fn from_public_key(name: &str, public_key: &[u8; 32]) -> Result<Self, NoteError> {
        check_key_name(name)?;
        let key = VerifyingKey::from_bytes(public_key).map_err(|_| NoteError::InvalidPublicKey)?;
        if key.is_weak() {
            return Err(NoteError::InvalidPublicKey);
        }
        Ok(Self {
            name: name.to_owned(),
            key_id: key_id(name, public_key),
            key,
        })
    }

    /// The key name (by convention the log's origin).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key ID, `SHA-256(name ‖ 0x0A ‖ 0x01 ‖ public key)[:4]` big-endian.
    pub fn key_id(&self) -> u32 {
        self.key_id
    }

    /// The raw 32-byte Ed25519 public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    /// The verifier key string `<name>+<hex8 key ID>+<base64(0x01 ‖ public key)>`, to publish.
    pub fn public_key_string(&self) -> String {
        format!(
            "{}+{:08x}+{}",
            self.name,
            self.key_id,
            encode_key_data(self.key.as_bytes())
        )
    }

    fn verify(&self, text: &str, sig: &[u8]) -> Result<(), NoteError> {
        let invalid = || NoteError::InvalidSignature {
            name: self.name.clone(),
            key_id: self.key_id,
        };
        let sig: &[u8; 64] = sig.try_into().map_err(|_| invalid())?;
        self.key
            .verify_strict(text.as_bytes(), &Signature::from_bytes(sig))
            .map_err(|_| invalid())
    }
}

impl FromStr for Verifier {
    type Err = NoteError;

    fn from_str(s: &str) -> Result<Self, NoteError> {
        Self::from_public_key_string(s)
    }
}

impl fmt::Display for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.public_key_string())
    }
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Verifier")
            .field(&self.public_key_string())
            .finish()
    }
}

/// A private signing key with its key name. `Debug` shows only the name and key ID.
#[derive(Clone)]
pub struct Signer {
    name: String,
    key_id: u32,
    key: SigningKey,
}

impl Signer {
    /// A signer for the Ed25519 key with this 32-byte seed (RFC 8032 private key), under `name`.
    pub fn from_seed(name: &str, seed: &[u8; 32]) -> Result<Self, NoteError> {
        check_key_name(name)?;
        let key = SigningKey::from_bytes(seed);
        Ok(Self {
            name: name.to_owned(),
            key_id: key_id(name, key.verifying_key().as_bytes()),
            key,
        })
    }

    /// Parses a signer key string `PRIVATE+KEY+<name>+<hex8 key ID>+<base64(0x01 ‖ seed)>`; the
    /// key ID must be the one of the public key derived from the seed.
    pub fn from_private_key_string(skey: &str) -> Result<Self, NoteError> {
        let rest = skey
            .strip_prefix(PRIVATE_KEY_PREFIX)
            .ok_or(NoteError::MalformedKey(
                "signer key does not start with PRIVATE+KEY+",
            ))?;
        let (name, stated, seed) = parse_key_parts(rest)?;
        let signer = Self::from_seed(name, &seed)?;
        if stated != signer.key_id {
            return Err(NoteError::KeyIdDoesNotMatchKey {
                stated,
                computed: signer.key_id,
            });
        }
        Ok(signer)
    }

    /// The signer key string. It is the secret: store it like one (see [`keys`]).
    pub fn private_key_string(&self) -> String {
        format!(
            "{PRIVATE_KEY_PREFIX}{}+{:08x}+{}",
            self.name,
            self.key_id,
            encode_key_data(self.key.as_bytes())
        )
    }

    /// The key name (by convention the log's origin).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key ID of the public key.
    pub fn key_id(&self) -> u32 {
        self.key_id
    }

    /// The matching verifier (public key).
    pub fn verifier(&self) -> Verifier {
        Verifier {
            name: self.name.clone(),
            key_id: self.key_id,
            key: self.key.verifying_key(),
        }
    }
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer")
            .field("name", &self.name)
            .field("key_id", &format_args!("{:08x}", self.key_id))
            .finish_non_exhaustive()
    }
}

/// The first control character other than newline, which no note may hold.
fn check_no_control(s: &str) -> Result<(), NoteError> {
    match s.char_indices().find(|&(_, c)| c < ' ' && c != '\n') {
        Some((offset, c)) => Err(NoteError::ControlCharacter {
            offset,
            code: u32::from(c),
        }),
        None => Ok(()),
    }
}

/// Signs `text` (which must end with a newline and hold no other control character) into a
/// signed note with one signature line. Ed25519 is deterministic: same key, same text, same note.
pub fn sign_note(text: &str, signer: &Signer) -> Result<String, NoteError> {
    if !text.ends_with('\n') {
        return Err(NoteError::TextNotNewlineTerminated);
    }
    check_no_control(text)?;
    let sig = signer.key.sign(text.as_bytes()).to_bytes();
    let mut blob = [0u8; 4 + 64];
    blob[..4].copy_from_slice(&signer.key_id.to_be_bytes());
    blob[4..].copy_from_slice(&sig);
    Ok(format!(
        "{text}\n{SIG_PREFIX}{} {}\n",
        signer.name,
        BASE64.encode(blob)
    ))
}

/// One parsed signature line: key name, key ID, signature bytes.
fn parse_signature_line(line: &str) -> Result<(&str, u32, Vec<u8>), &'static str> {
    let rest = line
        .strip_prefix(SIG_PREFIX)
        .ok_or("it does not start with an em dash and a space")?;
    let (name, b64) = rest
        .split_once(' ')
        .ok_or("no space between key name and signature")?;
    if !is_valid_key_name(name) {
        return Err("invalid key name");
    }
    let blob = BASE64
        .decode(b64)
        .map_err(|_| "signature is not standard base64")?;
    if blob.len() < 5 {
        return Err("signature is shorter than a key ID and one byte");
    }
    let id = u32::from_be_bytes([blob[0], blob[1], blob[2], blob[3]]);
    Ok((name, id, blob[4..].to_vec()))
}

/// Checks that `note` is a well-formed signed note carrying a valid signature by `verifier`, and
/// returns its text (with its final newline). Signatures by other keys are ignored, as the spec
/// requires, but each one claiming the verifier's (name, key ID) must verify.
pub fn open_note<'a>(note: &'a str, verifier: &Verifier) -> Result<&'a str, NoteError> {
    check_no_control(note)?;
    let split = note.rfind("\n\n").ok_or(NoteError::MissingBlankLine)?;
    let (text, sigs) = (&note[..split + 1], &note[split + 2..]);
    if sigs.is_empty() {
        return Err(NoteError::NoSignatures);
    }
    let Some(sigs) = sigs.strip_suffix('\n') else {
        return Err(NoteError::UnterminatedSignatureLine);
    };
    let count = sigs.split('\n').count();
    if count > MAX_SIGNATURES {
        return Err(NoteError::TooManySignatures(count));
    }
    let mut verified = false;
    let mut other_key_id = None;
    for (i, line) in sigs.split('\n').enumerate() {
        let (name, id, sig) =
            parse_signature_line(line).map_err(|reason| NoteError::MalformedSignatureLine {
                line: i + 1,
                reason,
            })?;
        if name != verifier.name {
            continue;
        }
        if id != verifier.key_id {
            other_key_id.get_or_insert(id);
            continue;
        }
        verifier.verify(text, &sig)?;
        verified = true;
    }
    match (verified, other_key_id) {
        (true, _) => Ok(text),
        (false, Some(found)) => Err(NoteError::KeyIdMismatch {
            name: verifier.name.clone(),
            expected: verifier.key_id,
            found,
        }),
        (false, None) => Err(NoteError::NotSignedByKey {
            name: verifier.name.clone(),
            key_id: verifier.key_id,
        }),
    }
}

/// A tree head of the log at one size, as the log signs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The log's identity; by convention also the name of its signing key.
    pub origin: String,
    /// Number of leaves in the tree.
    pub size: u64,
    /// RFC 6962 Merkle tree hash over the first `size` leaves.
    pub root: [u8; 32],
    /// When the log signed this tree head, in whole seconds (see the module doc).
    pub timestamp: DateTime<Utc>,
}

/// Whether a decimal field is canonical: digits only, no leading zero unless it is `0`.
fn is_canonical_decimal(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'))
}

impl Checkpoint {
    /// A checkpoint with `timestamp` truncated to whole seconds (what the note can carry).
    pub fn new(
        origin: impl Into<String>,
        size: u64,
        root: [u8; 32],
        timestamp: DateTime<Utc>,
    ) -> Result<Self, CheckpointError> {
        let origin = origin.into();
        check_origin(&origin)?;
        let whole = DateTime::from_timestamp(timestamp.timestamp(), 0)
            .ok_or(CheckpointError::UnrepresentableTimestamp(timestamp))?;
        if whole.timestamp() < 0 {
            return Err(CheckpointError::UnrepresentableTimestamp(timestamp));
        }
        Ok(Self {
            origin,
            size,
            root,
            timestamp: whole,
        })
    }

    /// The note text: `origin\nsize\nbase64(root)\ntimestamp <unix seconds>\n`.
    pub fn body(&self) -> Result<String, CheckpointError> {
        check_origin(&self.origin)?;
        let secs = self.timestamp.timestamp();
        if secs < 0 || self.timestamp.timestamp_subsec_nanos() != 0 {
            return Err(CheckpointError::UnrepresentableTimestamp(self.timestamp));
        }
        Ok(format!(
            "{}\n{}\n{}\n{TIMESTAMP_PREFIX}{secs}\n",
            self.origin,
            self.size,
            BASE64.encode(self.root)
        ))
    }

    /// Parses a note text written by [`Checkpoint::body`], strictly (see the module doc).
    pub fn parse_body(text: &str) -> Result<Self, CheckpointError> {
        let text = text
            .strip_suffix('\n')
            .ok_or(CheckpointError::MissingFinalNewline)?;
        let mut lines = text.split('\n');

        let origin = lines.next().ok_or(CheckpointError::MissingLine("origin"))?;
        check_origin(origin)?;

        let size = lines
            .next()
            .ok_or(CheckpointError::MissingLine("tree size"))?;
        if !is_canonical_decimal(size) {
            return Err(CheckpointError::InvalidSize(size.to_owned()));
        }
        let size: u64 = size
            .parse()
            .map_err(|_| CheckpointError::InvalidSize(size.to_owned()))?;

        let root_b64 = lines
            .next()
            .ok_or(CheckpointError::MissingLine("root hash"))?;
        let root = BASE64
            .decode(root_b64)
            .map_err(|_| CheckpointError::InvalidRootEncoding(root_b64.to_owned()))?;
        let root: [u8; 32] = root
            .as_slice()
            .try_into()
            .map_err(|_| CheckpointError::InvalidRootLength(root.len()))?;

        let ts_line = lines
            .next()
            .ok_or(CheckpointError::MissingLine("timestamp"))?;
        let timestamp = ts_line
            .strip_prefix(TIMESTAMP_PREFIX)
            .filter(|secs| is_canonical_decimal(secs))
            .and_then(|secs| secs.parse::<i64>().ok())
            .and_then(|secs| DateTime::from_timestamp(secs, 0))
            .ok_or_else(|| CheckpointError::InvalidTimestamp(ts_line.to_owned()))?;

        if let Some(extra) = lines.next() {
            return Err(CheckpointError::UnexpectedLine(extra.to_owned()));
        }
        Ok(Self {
            origin: origin.to_owned(),
            size,
            root,
            timestamp,
        })
    }

    /// Signs the checkpoint into a signed note. The signer's name must be the origin.
    pub fn sign(&self, signer: &Signer) -> Result<String, CheckpointError> {
        if self.origin != signer.name() {
            return Err(CheckpointError::OriginMismatch {
                origin: self.origin.clone(),
                key_name: signer.name().to_owned(),
            });
        }
        Ok(sign_note(&self.body()?, signer)?)
    }

    /// Verifies a signed checkpoint against the trusted key, then parses it. The origin must be
    /// the verifier's key name.
    pub fn open(note: &str, verifier: &Verifier) -> Result<Self, CheckpointError> {
        let checkpoint = Self::parse_body(open_note(note, verifier)?)?;
        if checkpoint.origin != verifier.name() {
            return Err(CheckpointError::OriginMismatch {
                origin: checkpoint.origin,
                key_name: verifier.name().to_owned(),
            });
        }
        Ok(checkpoint)
    }
}

fn check_origin(origin: &str) -> Result<(), CheckpointError> {
    if origin.is_empty() {
        Err(CheckpointError::EmptyOrigin)
    } else if origin.chars().any(char::is_control) {
        Err(CheckpointError::InvalidOrigin(origin.to_owned()))
    } else {
        Ok(())
    }
}
