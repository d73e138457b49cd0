//! Tests for `claims_ledger_core::checkpoint`: C2SP signed notes and tlog checkpoints, Ed25519.
//!
//! Published vectors (data only; no code copied): golang.org/x/mod `sumdb/note/note_test.go` and
//! the example in `sumdb/note/note.go`'s package doc: the `PeterNeumann` and `EnochRoot` verifier
//! keys, the `PeterNeumann` signer key, the two-line text and both signature lines, the table of
//! malformed messages, the 101-signature limit, the "ABCD inserted into the signature" probe and
//! the key-string manglings that must all be refused. Ed25519 is deterministic (RFC 8032), so
//! signing the text with the published signer key must give the published note byte for byte.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use chrono::{DateTime, TimeZone, Utc};
use claims_ledger_core::checkpoint::keys::{self, KeyError};
use claims_ledger_core::checkpoint::{
    is_valid_key_name, key_id, open_note, sign_note, Checkpoint, CheckpointError, NoteError,
    Signer, Verifier, MAX_SIGNATURES,
};
use claims_ledger_core::merkle::EMPTY_ROOT;

// ---- golang.org/x/mod/sumdb/note vectors -------------------------------------------------------

const PETER_VKEY: &str = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
const PETER_SKEY: &str =
    "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
const PETER_ID: u32 = 0xc74f20a3;
const ENOCH_VKEY: &str = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop";
const ENOCH_ID: u32 = 0xaf0cfe78;
const TEXT: &str = "If you think cryptography is the answer to your problem,\n\
                    then you don't know what your problem is.\n";
const PETER_SIG: &str = "\u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";
const ENOCH_SIG: &str = "\u{2014} EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWLox33WWd1RvMc+QQ=\n";

fn peter() -> Verifier {
    Verifier::from_public_key_string(PETER_VKEY).expect("published verifier key parses")
}

fn enoch() -> Verifier {
    Verifier::from_public_key_string(ENOCH_VKEY).expect("published verifier key parses")
}

fn peter_signer() -> Signer {
    Signer::from_private_key_string(PETER_SKEY).expect("published signer key parses")
}

#[test]
fn go_vector_verifier_keys_parse_with_their_key_ids() {
    let p = peter();
    assert_eq!(p.name(), "PeterNeumann");
    assert_eq!(p.key_id(), PETER_ID);
    assert_eq!(p.public_key_string(), PETER_VKEY);
    assert_eq!(p.to_string(), PETER_VKEY);
    assert_eq!(key_id("PeterNeumann", &p.public_key()), PETER_ID);

    let e: Verifier = ENOCH_VKEY.parse().expect("FromStr");
    assert_eq!(e.name(), "EnochRoot");
    assert_eq!(e.key_id(), ENOCH_ID);
    assert_eq!(e.public_key_string(), ENOCH_VKEY);
}

#[test]
fn go_vector_signer_key_parses_and_matches_the_verifier_key() {
    let s = peter_signer();
    assert_eq!(s.name(), "PeterNeumann");
    assert_eq!(s.key_id(), PETER_ID);
    assert_eq!(s.private_key_string(), PETER_SKEY);
    assert_eq!(s.verifier(), peter());
    assert_eq!(s.verifier().public_key_string(), PETER_VKEY);
}

#[test]
fn go_vector_sign_reproduces_the_published_note_byte_for_byte() {
    let note = sign_note(TEXT, &peter_signer()).expect("sign");
    assert_eq!(note, format!("{TEXT}\n{PETER_SIG}"));
}

#[test]
fn go_vector_published_notes_open() {
    let one = format!("{TEXT}\n{PETER_SIG}");
    assert_eq!(open_note(&one, &peter()), Ok(TEXT));

    // Two signatures: each verifier finds its own and ignores the other (unknown) key.
    let both = format!("{TEXT}\n{PETER_SIG}{ENOCH_SIG}");
    assert_eq!(open_note(&both, &peter()), Ok(TEXT));
    assert_eq!(open_note(&both, &enoch()), Ok(TEXT));

    // Only Enoch's signature: not signed by Peter.
    let enoch_only = format!("{TEXT}\n{ENOCH_SIG}");
    assert_eq!(open_note(&enoch_only, &enoch()), Ok(TEXT));
    assert_eq!(
        open_note(&enoch_only, &peter()),
        Err(NoteError::NotSignedByKey {
            name: "PeterNeumann".into(),
            key_id: PETER_ID
        })
    );

    // Altering one character of the text breaks the signature.
    let altered = one.replacen("cryptography", "cryptographY", 1);
    assert_eq!(
        open_note(&altered, &peter()),
        Err(NoteError::InvalidSignature {
            name: "PeterNeumann".into(),
            key_id: PETER_ID
        })
    );
}

#[test]
fn go_vector_malformed_messages_are_refused() {
    let v = peter();
    let cases: [(String, NoteError); 6] = [
        (TEXT.to_owned(), NoteError::MissingBlankLine),
        (format!("{TEXT}\n"), NoteError::NoSignatures),
        (
            format!("{TEXT}\n{}", &PETER_SIG[..PETER_SIG.len() - 1]),
            NoteError::UnterminatedSignatureLine,
        ),
        (
            format!("\x01{TEXT}\n{PETER_SIG}"),
            NoteError::ControlCharacter { offset: 0, code: 1 },
        ),
        (
            format!("{TEXT}\n\u{2014} Bad Name x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM="),
            NoteError::UnterminatedSignatureLine,
        ),
        (
            format!("{TEXT}\n{PETER_SIG}Unexpected line.\n"),
            NoteError::MalformedSignatureLine {
                line: 2,
                reason: "it does not start with an em dash and a space",
            },
        ),
    ];
    for (msg, want) in cases {
        assert_eq!(open_note(&msg, &v), Err(want), "message {msg:?}");
    }
    // Go's "\xff" case is invalid UTF-8, which a `&str` cannot hold: refused by the type system.

    // The bad name, with its newline: a malformed line, not a signature to ignore. The name
    // ends at the first space, so "Name x08go…" is taken as the (invalid) base64.
    let bad_name = format!("{TEXT}\n\u{2014} Bad Name x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n");
    assert_eq!(
        open_note(&bad_name, &v),
        Err(NoteError::MalformedSignatureLine {
            line: 1,
            reason: "signature is not standard base64"
        })
    );
    // A name with a '+' is refused as a name.
    let plus_name = PETER_SIG.replacen("PeterNeumann", "Peter+Neumann", 1);
    assert_eq!(
        open_note(&format!("{TEXT}\n{plus_name}"), &v),
        Err(NoteError::MalformedSignatureLine {
            line: 1,
            reason: "invalid key name"
        })
    );
}

#[test]
fn go_vector_more_than_100_signatures_are_refused() {
    let v = peter();
    let at_limit = format!("{TEXT}\n{}", PETER_SIG.repeat(MAX_SIGNATURES));
    assert_eq!(open_note(&at_limit, &v), Ok(TEXT));
    let over = format!("{TEXT}\n{}", PETER_SIG.repeat(MAX_SIGNATURES + 1));
    assert_eq!(open_note(&over, &v), Err(NoteError::TooManySignatures(101)));
    // Also when none of them is by a known key.
    let over_unknown = format!("{TEXT}\n{}", ENOCH_SIG.repeat(MAX_SIGNATURES + 1));
    assert_eq!(
        open_note(&over_unknown, &v),
        Err(NoteError::TooManySignatures(101))
    );
}

#[test]
fn go_vector_abcd_inserted_into_the_signature_is_invalid() {
    // Go: peterSig[:60] + "ABCD" + peterSig[60:], still base64, three bytes longer.
    let sig = format!("{}ABCD{}", &PETER_SIG[..60], &PETER_SIG[60..]);
    let note = format!("{TEXT}\n{sig}");
    assert_eq!(
        open_note(&note, &peter()),
        Err(NoteError::InvalidSignature {
            name: "PeterNeumann".into(),
            key_id: PETER_ID
        })
    );
    // Same probe on a signature by another key: ignored, as the spec requires, and Peter's verifies.
    let enoch_abcd = format!("{}ABCD{}", &ENOCH_SIG[..60], &ENOCH_SIG[60..]);
    let note = format!("{TEXT}\n{PETER_SIG}{ENOCH_SIG}{enoch_abcd}");
    assert_eq!(open_note(&note, &peter()), Ok(TEXT));
    // ... but not for Enoch, whose own key now carries a bad signature.
    assert_eq!(
        open_note(&note, &enoch()),
        Err(NoteError::InvalidSignature {
            name: "EnochRoot".into(),
            key_id: ENOCH_ID
        })
    );
}

/// Every proper substring and every one-byte increment of `key` must be refused by `parse`.
fn assert_manglings_refused(key: &str, parse: impl Fn(&str) -> bool) {
    let b = key.as_bytes();
    for i in 0..=b.len() {
        for j in i + 1..=b.len() {
            if i == 0 && j == b.len() {
                continue;
            }
            let sub = std::str::from_utf8(&b[i..j]).expect("ASCII key");
            assert!(!parse(sub), "substring {sub:?} was accepted");
        }
    }
    for i in 0..b.len() {
        let mut m = b.to_vec();
        m[i] += 1;
        let m = String::from_utf8(m).expect("ASCII key");
        assert!(!parse(&m), "mangled {m:?} was accepted");
    }
    assert!(parse(key), "the key itself must parse");
}

#[test]
fn go_vector_verifier_key_manglings_are_refused() {
    assert_manglings_refused(PETER_VKEY, |k| Verifier::from_public_key_string(k).is_ok());
    // Go: wrong key length with adjusted key hash; unknown algorithm with adjusted key hash.
    assert!(matches!(
        Verifier::from_public_key_string(
            "PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY=="
        ),
        Err(NoteError::MalformedKey(_))
    ));
    assert_eq!(
        Verifier::from_public_key_string(
            "PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
        ),
        Err(NoteError::UnsupportedAlgorithm(0x65))
    );
    // A stated key ID that is not the key's.
    assert_eq!(
        Verifier::from_public_key_string(
            "PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
        ),
        Err(NoteError::KeyIdDoesNotMatchKey {
            stated: 0xc74f20a4,
            computed: PETER_ID
        })
    );
}

#[test]
fn go_vector_signer_key_manglings_are_refused() {
    assert_manglings_refused(PETER_SKEY, |k| Signer::from_private_key_string(k).is_ok());
    assert_eq!(
        Signer::from_private_key_string(
            "PRIVATE+KEY+PeterNeumann+c74f20a4+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
        )
        .map(|s| s.key_id()),
        Err(NoteError::KeyIdDoesNotMatchKey {
            stated: 0xc74f20a4,
            computed: PETER_ID
        })
    );
    // A verifier key is not a signer key.
    assert_eq!(
        Signer::from_private_key_string(PETER_VKEY).map(|s| s.key_id()),
        Err(NoteError::MalformedKey(
            "signer key does not start with PRIVATE+KEY+"
        ))
    );
}

// ---- keys and notes ------------------------------------------------------------------------------

const ORIGIN: &str = "claims-ledger.example/log";

fn signer(seed: u8) -> Signer {
    Signer::from_seed(ORIGIN, &[seed; 32]).expect("valid name")
}

#[test]
fn key_names_are_checked() {
    for bad in [
        "",
        "a+b",
        "a b",
        "a\tb",
        "a\u{a0}b",
        "a\u{2003}b",
        "a\u{7f}b",
        "a\nb",
    ] {
        assert!(!is_valid_key_name(bad), "{bad:?}");
        assert_eq!(
            Signer::from_seed(bad, &[1; 32]).map(|s| s.key_id()),
            Err(NoteError::InvalidKeyName(bad.to_owned()))
        );
    }
    for good in [ORIGIN, "PeterNeumann", "ünïcödé/log"] {
        assert!(is_valid_key_name(good), "{good:?}");
        assert!(Signer::from_seed(good, &[1; 32]).is_ok());
    }
}

#[test]
fn own_keys_round_trip_through_their_strings() {
    let s = signer(7);
    let again = Signer::from_private_key_string(&s.private_key_string()).expect("parse");
    assert_eq!(again.verifier(), s.verifier());
    assert_eq!(again.key_id(), s.key_id());
    let v = Verifier::from_public_key_string(&s.verifier().public_key_string()).expect("parse");
    assert_eq!(v, s.verifier());
    assert_eq!(v.name(), ORIGIN);
    assert_eq!(v.key_id(), key_id(ORIGIN, &v.public_key()));
    let vkey = v.public_key_string();
    let data = vkey
        .strip_prefix(&format!("{ORIGIN}+{:08x}+", v.key_id()))
        .expect("name and key ID");
    let data = BASE64.decode(data).expect("base64 key data");
    assert_eq!(data.len(), 33);
    assert_eq!(data[0], 0x01);
    assert_eq!(data[1..], v.public_key());
    // The key ID depends on the name too.
    let renamed = Signer::from_seed("claims-ledger.example/other", &[7; 32]).expect("name");
    assert_ne!(renamed.key_id(), s.key_id());
}

#[test]
fn signer_debug_does_not_print_the_secret() {
    let s = signer(9);
    let secret = s.private_key_string();
    let seed_b64 = secret.rsplit('+').next().expect("key data");
    let debug = format!("{s:?}");
    assert!(debug.contains(ORIGIN), "{debug}");
    assert!(debug.contains(&format!("{:08x}", s.key_id())), "{debug}");
    assert!(!debug.contains(seed_b64), "{debug}");
    assert!(!debug.contains("PRIVATE"), "{debug}");
}

#[test]
fn small_order_public_keys_are_refused() {
    // The identity point (y = 1) has order 1: every signature "verifies" without strictness.
    let mut identity = [0u8; 32];
    identity[0] = 1;
    assert_eq!(
        Verifier::from_public_key("weak", &identity),
        Err(NoteError::InvalidPublicKey)
    );
}

#[test]
fn sign_note_refuses_text_a_note_cannot_carry() {
    let s = signer(1);
    assert_eq!(
        sign_note("no newline", &s),
        Err(NoteError::TextNotNewlineTerminated)
    );
    assert_eq!(sign_note("", &s), Err(NoteError::TextNotNewlineTerminated));
    assert_eq!(
        sign_note("tab\there\n", &s),
        Err(NoteError::ControlCharacter { offset: 3, code: 9 })
    );
    assert_eq!(
        sign_note("cr\r\n", &s),
        Err(NoteError::ControlCharacter {
            offset: 2,
            code: 13
        })
    );
    // Text with blank lines inside is fine: the last blank line separates the signatures.
    let text = "a\n\nb\n\n";
    let note = sign_note(text, &s).expect("sign");
    assert_eq!(open_note(&note, &s.verifier()), Ok(text));
}

// ---- checkpoints ---------------------------------------------------------------------------------

fn ts(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(secs, 0).single().expect("valid time")
}

fn checkpoint() -> Checkpoint {
    Checkpoint::new(ORIGIN, 1234, [0xab; 32], ts(1_700_000_000)).expect("valid checkpoint")
}

#[test]
fn checkpoint_body_is_the_documented_text() {
    let c = Checkpoint::new(ORIGIN, 0, EMPTY_ROOT, ts(1_700_000_000)).expect("valid");
    assert_eq!(
        c.body().expect("body"),
        "claims-ledger.example/log\n0\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\ntimestamp 1700000000\n"
    );
    assert_eq!(Checkpoint::parse_body(&c.body().expect("body")), Ok(c));
}

#[test]
fn checkpoint_round_trip() {
    let s = signer(1);
    for c in [
        checkpoint(),
        Checkpoint::new(ORIGIN, 0, EMPTY_ROOT, ts(0)).expect("valid"),
        Checkpoint::new(ORIGIN, u64::MAX, [0xff; 32], ts(4_102_444_800)).expect("valid"),
    ] {
        let note = c.sign(&s).expect("sign");
        assert!(note.starts_with(&c.body().expect("body")));
        assert_eq!(Checkpoint::open(&note, &s.verifier()), Ok(c.clone()));
        // Deterministic: signing again gives the same note.
        assert_eq!(c.sign(&s).expect("sign"), note);
    }
}

#[test]
fn checkpoint_golden_note_with_the_published_key() {
    // Our own pinned vector (not a published one): the Go PeterNeumann key signing a checkpoint of
    // origin "PeterNeumann", so that any change to the body format or signing shows up here.
    let c = Checkpoint::new("PeterNeumann", 8, EMPTY_ROOT, ts(1_700_000_000)).expect("valid");
    let note = c.sign(&peter_signer()).expect("sign");
    assert_eq!(
        note,
        "PeterNeumann\n8\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\ntimestamp 1700000000\n\n\
         \u{2014} PeterNeumann x08go36WvwpCMFhov45SAt6zLyTW0XndTaoPHsaAhoHYrISRbE9jitaSRbfJXCTFZZXPrq/TgnrRBWyBKLDzSJB/rgo=\n"
    );
    assert_eq!(Checkpoint::open(&note, &peter()), Ok(c));
}

#[test]
fn checkpoint_new_truncates_to_whole_seconds_and_body_refuses_fractions() {
    let precise = Utc
        .timestamp_opt(1_700_000_000, 123_456_789)
        .single()
        .expect("time");
    let c = Checkpoint::new(ORIGIN, 1, [0; 32], precise).expect("valid");
    assert_eq!(c.timestamp, ts(1_700_000_000));

    let mut raw = checkpoint();
    raw.timestamp = precise;
    assert_eq!(
        raw.sign(&signer(1)),
        Err(CheckpointError::UnrepresentableTimestamp(precise))
    );
    raw.timestamp = ts(-1);
    assert_eq!(
        raw.body(),
        Err(CheckpointError::UnrepresentableTimestamp(ts(-1)))
    );
    assert_eq!(
        Checkpoint::new(ORIGIN, 1, [0; 32], ts(-1)),
        Err(CheckpointError::UnrepresentableTimestamp(ts(-1)))
    );
    assert_eq!(
        Checkpoint::new("", 1, [0; 32], ts(1)),
        Err(CheckpointError::EmptyOrigin)
    );
    assert_eq!(
        Checkpoint::new("a\nb", 1, [0; 32], ts(1)),
        Err(CheckpointError::InvalidOrigin("a\nb".into()))
    );
}

#[test]
fn checkpoint_sign_and_open_require_origin_to_be_the_key_name() {
    let other = Signer::from_seed("other.example/log", &[1; 32]).expect("name");
    assert_eq!(
        checkpoint().sign(&other),
        Err(CheckpointError::OriginMismatch {
            origin: ORIGIN.into(),
            key_name: "other.example/log".into()
        })
    );
    // A validly signed note whose origin is not the key name is refused on open.
    let body = checkpoint().body().expect("body");
    let note = sign_note(&body, &other).expect("sign");
    assert_eq!(
        Checkpoint::open(&note, &other.verifier()),
        Err(CheckpointError::OriginMismatch {
            origin: ORIGIN.into(),
            key_name: "other.example/log".into()
        })
    );
}

// ---- forgeries -----------------------------------------------------------------------------------

fn invalid_signature(s: &Signer) -> CheckpointError {
    CheckpointError::Note(NoteError::InvalidSignature {
        name: s.name().to_owned(),
        key_id: s.key_id(),
    })
}

/// The note with its (single) signature blob decoded, changed by `f`, re-encoded.
fn with_blob(note: &str, f: impl FnOnce(&mut Vec<u8>)) -> String {
    let (head, line) = note.rsplit_once("\u{2014} ").expect("signature line");
    let (name, b64) = line.trim_end().split_once(' ').expect("name and signature");
    let mut blob = BASE64.decode(b64).expect("base64");
    f(&mut blob);
    format!("{head}\u{2014} {name} {}\n", BASE64.encode(blob))
}

#[test]
fn forgery_signed_by_another_key_with_the_same_name() {
    let (real, impostor) = (signer(1), signer(2));
    let note = checkpoint().sign(&impostor).expect("sign");
    assert_eq!(
        Checkpoint::open(&note, &real.verifier()),
        Err(CheckpointError::Note(NoteError::KeyIdMismatch {
            name: ORIGIN.into(),
            expected: real.key_id(),
            found: impostor.key_id(),
        }))
    );
    // The impostor's signature under the real key ID (a key ID collision) fails verification.
    let colliding = with_blob(&note, |b| {
        b[..4].copy_from_slice(&real.key_id().to_be_bytes())
    });
    assert_eq!(
        Checkpoint::open(&colliding, &real.verifier()),
        Err(invalid_signature(&real))
    );
}

#[test]
fn forgery_body_altered() {
    let s = signer(1);
    let c = checkpoint();
    let note = c.sign(&s).expect("sign");
    let root_b64 = BASE64.encode(c.root);
    let alterations = [
        ("1234\n", "1235\n"),
        (
            root_b64.as_str(),
            "q6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6o=",
        ),
        (
            "claims-ledger.example/log\n1234",
            "claims-ledger.example/log2\n1234",
        ),
        ("timestamp 1700000000", "timestamp 1700000001"),
    ];
    for (from, to) in alterations {
        assert!(note.contains(from), "{from:?} in {note:?}");
        let forged = note.replacen(from, to, 1);
        assert_ne!(forged, note);
        assert_eq!(
            Checkpoint::open(&forged, &s.verifier()),
            Err(invalid_signature(&s)),
            "{from:?} -> {to:?}"
        );
    }
}

#[test]
fn forgery_signature_bytes_flipped() {
    let s = signer(1);
    let note = checkpoint().sign(&s).expect("sign");
    for i in [4, 20, 35, 36, 67] {
        let forged = with_blob(&note, |b| b[i] ^= 0x01);
        assert_eq!(
            Checkpoint::open(&forged, &s.verifier()),
            Err(invalid_signature(&s)),
            "byte {i}"
        );
    }
    // One byte short (still base64) or one byte long: wrong length for Ed25519.
    let short = with_blob(&note, |b| {
        b.pop();
    });
    assert_eq!(
        Checkpoint::open(&short, &s.verifier()),
        Err(invalid_signature(&s))
    );
    let long = with_blob(&note, |b| b.push(0));
    assert_eq!(
        Checkpoint::open(&long, &s.verifier()),
        Err(invalid_signature(&s))
    );
}

#[test]
fn forgery_signature_line_truncated() {
    let s = signer(1);
    let v = s.verifier();
    let note = checkpoint().sign(&s).expect("sign");
    let line_start = note.rfind('\u{2014}').expect("signature line");

    // Cut inside the base64: no longer base64.
    let cut = format!("{}\n", &note[..note.len() - 3]);
    assert_eq!(
        Checkpoint::open(&cut, &v),
        Err(CheckpointError::Note(NoteError::MalformedSignatureLine {
            line: 1,
            reason: "signature is not standard base64"
        }))
    );
    // Newline lost.
    assert_eq!(
        Checkpoint::open(note.trim_end_matches('\n'), &v),
        Err(CheckpointError::Note(NoteError::UnterminatedSignatureLine))
    );
    // Whole base64 gone.
    let no_sig = format!("{}\u{2014} {ORIGIN}\n", &note[..line_start]);
    assert_eq!(
        Checkpoint::open(&no_sig, &v),
        Err(CheckpointError::Note(NoteError::MalformedSignatureLine {
            line: 1,
            reason: "no space between key name and signature"
        }))
    );
    // Only the key ID left.
    let id_only = with_blob(&note, |b| b.truncate(4));
    assert_eq!(
        Checkpoint::open(&id_only, &v),
        Err(CheckpointError::Note(NoteError::MalformedSignatureLine {
            line: 1,
            reason: "signature is shorter than a key ID and one byte"
        }))
    );
    // Em dash replaced by a hyphen.
    let hyphen = format!("{}- {}", &note[..line_start], &note[line_start + 4..]);
    assert_eq!(
        Checkpoint::open(&hyphen, &v),
        Err(CheckpointError::Note(NoteError::MalformedSignatureLine {
            line: 1,
            reason: "it does not start with an em dash and a space"
        }))
    );
}

#[test]
fn forgery_key_id_mismatch() {
    let s = signer(1);
    let note = checkpoint().sign(&s).expect("sign");
    let forged = with_blob(&note, |b| b[3] ^= 0x80);
    assert_eq!(
        Checkpoint::open(&forged, &s.verifier()),
        Err(CheckpointError::Note(NoteError::KeyIdMismatch {
            name: ORIGIN.into(),
            expected: s.key_id(),
            found: s.key_id() ^ 0x80,
        }))
    );
    // Right key ID, other name: not a signature by this key at all.
    let renamed = note.replace(
        &format!("\u{2014} {ORIGIN} "),
        "\u{2014} claims-ledger.example/other ",
    );
    assert_eq!(
        Checkpoint::open(&renamed, &s.verifier()),
        Err(CheckpointError::Note(NoteError::NotSignedByKey {
            name: ORIGIN.into(),
            key_id: s.key_id(),
        }))
    );
}

#[test]
fn forgery_missing_blank_line() {
    let s = signer(1);
    let note = checkpoint().sign(&s).expect("sign");
    let forged = note.replacen("\n\n", "\n", 1);
    assert_eq!(
        Checkpoint::open(&forged, &s.verifier()),
        Err(CheckpointError::Note(NoteError::MissingBlankLine))
    );
}

#[test]
fn forgery_no_signature_at_all() {
    let s = signer(1);
    let body = checkpoint().body().expect("body");
    assert_eq!(
        Checkpoint::open(&body, &s.verifier()),
        Err(CheckpointError::Note(NoteError::MissingBlankLine))
    );
    assert_eq!(
        Checkpoint::open(&format!("{body}\n"), &s.verifier()),
        Err(CheckpointError::Note(NoteError::NoSignatures))
    );
}

#[test]
fn forgery_extra_signature_by_own_key_that_fails() {
    // A good signature followed by a bad one claiming the same key: the whole note is refused.
    let s = signer(1);
    let note = checkpoint().sign(&s).expect("sign");
    let bad = with_blob(&note, |b| b[10] ^= 1);
    let bad_line = &bad[bad.rfind('\u{2014}').expect("line")..];
    let both = format!("{note}{bad_line}");
    assert_eq!(
        Checkpoint::open(&both, &s.verifier()),
        Err(invalid_signature(&s))
    );
}

// ---- strict parsing ------------------------------------------------------------------------------

const ROOT_B64: &str = "q6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s="; // [0xab; 32]

fn body_with(origin: &str, size: &str, root: &str, rest: &str) -> String {
    format!("{origin}\n{size}\n{root}\n{rest}")
}

#[test]
fn parse_accepts_the_canonical_body() {
    let body = body_with(ORIGIN, "1234", ROOT_B64, "timestamp 1700000000\n");
    assert_eq!(Checkpoint::parse_body(&body), Ok(checkpoint()));
    let max = body_with(ORIGIN, "18446744073709551615", ROOT_B64, "timestamp 0\n");
    let c = Checkpoint::parse_body(&max).expect("max size, epoch");
    assert_eq!((c.size, c.timestamp), (u64::MAX, ts(0)));
}

#[test]
fn parse_refuses_missing_lines() {
    let cases = [
        ("", CheckpointError::MissingFinalNewline),
        ("\n", CheckpointError::EmptyOrigin),
        ("o\n", CheckpointError::MissingLine("tree size")),
        ("o\n1\n", CheckpointError::MissingLine("root hash")),
        (
            &*format!("o\n1\n{ROOT_B64}\n"),
            CheckpointError::MissingLine("timestamp"),
        ),
        (
            &*format!("o\n1\n{ROOT_B64}\ntimestamp 5"),
            CheckpointError::MissingFinalNewline,
        ),
    ];
    for (body, want) in cases {
        assert_eq!(Checkpoint::parse_body(body), Err(want), "{body:?}");
    }
}

#[test]
fn parse_refuses_bad_sizes() {
    for size in [
        "",
        "01",
        "00",
        "+1",
        "-1",
        " 1",
        "1 ",
        "1.0",
        "0x10",
        "1e3",
        "１",
        "18446744073709551616",
    ] {
        let body = body_with(ORIGIN, size, ROOT_B64, "timestamp 1\n");
        assert_eq!(
            Checkpoint::parse_body(&body),
            Err(CheckpointError::InvalidSize(size.to_owned())),
            "{size:?}"
        );
    }
}

#[test]
fn parse_refuses_bad_roots() {
    let bad_encodings = [
        "",
        "!!!!",
        "q6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s", // padding missing
        "q6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6t=", // non-zero trailing bits
        "q6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s= ", // trailing space
        "-_urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s=", // URL-safe alphabet
    ];
    for root in bad_encodings {
        let body = body_with(ORIGIN, "1", root, "timestamp 1\n");
        let got = Checkpoint::parse_body(&body);
        if root.is_empty() {
            // Empty base64 decodes to zero bytes.
            assert_eq!(got, Err(CheckpointError::InvalidRootLength(0)));
        } else {
            assert_eq!(
                got,
                Err(CheckpointError::InvalidRootEncoding(root.to_owned())),
                "{root:?}"
            );
        }
    }
    for len in [1usize, 31, 33, 64] {
        let root = BASE64.encode(vec![7u8; len]);
        let body = body_with(ORIGIN, "1", &root, "timestamp 1\n");
        assert_eq!(
            Checkpoint::parse_body(&body),
            Err(CheckpointError::InvalidRootLength(len)),
            "{len}"
        );
    }
}

#[test]
fn parse_refuses_bad_origins() {
    let body = body_with("", "1", ROOT_B64, "timestamp 1\n");
    assert_eq!(
        Checkpoint::parse_body(&body),
        Err(CheckpointError::EmptyOrigin)
    );
    let body = body_with("a\tb", "1", ROOT_B64, "timestamp 1\n");
    assert_eq!(
        Checkpoint::parse_body(&body),
        Err(CheckpointError::InvalidOrigin("a\tb".into()))
    );
}

#[test]
fn parse_refuses_bad_timestamps() {
    for line in [
        "",
        "timestamp",
        "timestamp ",
        "timestamp 01",
        "timestamp -1",
        "timestamp +1",
        "timestamp  1",
        "timestamp 1 ",
        "timestamp 1.5",
        "Timestamp 1",
        "timestamp=1",
        "time 1",
        "timestamp 9223372036854775807",
        "timestamp 99999999999999999999",
        "1700000000",
    ] {
        let body = body_with(ORIGIN, "1", ROOT_B64, &format!("{line}\n"));
        assert_eq!(
            Checkpoint::parse_body(&body),
            Err(CheckpointError::InvalidTimestamp(line.to_owned())),
            "{line:?}"
        );
    }
}

#[test]
fn parse_refuses_extra_lines() {
    for extra in ["unknown extension", "timestamp 2", ""] {
        let body = body_with(ORIGIN, "1", ROOT_B64, &format!("timestamp 1\n{extra}\n"));
        assert_eq!(
            Checkpoint::parse_body(&body),
            Err(CheckpointError::UnexpectedLine(extra.to_owned())),
            "{extra:?}"
        );
    }
}

#[test]
fn open_parses_strictly_after_verifying() {
    // Validly signed but malformed bodies: the signature is fine, the body is not.
    let s = signer(1);
    let cases = [
        (
            body_with(ORIGIN, "01", ROOT_B64, "timestamp 1\n"),
            CheckpointError::InvalidSize("01".into()),
        ),
        (
            body_with(ORIGIN, "1", ROOT_B64, "timestamp 1\nextra\n"),
            CheckpointError::UnexpectedLine("extra".into()),
        ),
        (
            body_with(ORIGIN, "1", ROOT_B64, ""),
            CheckpointError::MissingLine("timestamp"),
        ),
        (
            body_with(ORIGIN, "1", "AAAA", "timestamp 1\n"),
            CheckpointError::InvalidRootLength(3),
        ),
    ];
    for (body, want) in cases {
        let note = sign_note(&body, &s).expect("sign");
        assert_eq!(
            Checkpoint::open(&note, &s.verifier()),
            Err(want),
            "{body:?}"
        );
    }
}

// ---- key files -----------------------------------------------------------------------------------

fn mode(path: &Path) -> u32 {
    fs::metadata(path).expect("stat").permissions().mode() & 0o777
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
}

#[test]
fn load_or_generate_creates_a_0600_key_and_reloads_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("log.key");
    let created = keys::load_or_generate(&path, ORIGIN).expect("generate");
    assert_eq!(created.name(), ORIGIN);
    assert_eq!(mode(&path), 0o600);

    let contents = fs::read_to_string(&path).expect("read");
    assert_eq!(contents, format!("{}\n", created.private_key_string()));
    assert!(contents.starts_with(&format!("PRIVATE+KEY+{ORIGIN}+")));
    // Nothing but the key is left in the directory (no temporary file).
    let entries: Vec<_> = fs::read_dir(dir.path())
        .expect("readdir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(entries, vec![std::ffi::OsString::from("log.key")]);

    let reloaded = keys::load_or_generate(&path, ORIGIN).expect("reload");
    assert_eq!(
        reloaded.verifier().public_key_string(),
        created.verifier().public_key_string()
    );
    let loaded = keys::load(&path).expect("load");
    assert_eq!(loaded.verifier(), created.verifier());

    // And it signs checkpoints that its public key opens.
    let note = checkpoint().sign(&created).expect("sign");
    assert_eq!(
        Checkpoint::open(&note, &reloaded.verifier()),
        Ok(checkpoint())
    );
}

#[test]
fn generated_keys_differ() {
    let a = keys::generate(ORIGIN).expect("generate");
    let b = keys::generate(ORIGIN).expect("generate");
    assert_ne!(a.verifier(), b.verifier());
    assert!(matches!(
        keys::generate("bad name"),
        Err(KeyError::InvalidName(NoteError::InvalidKeyName(_)))
    ));
}

#[test]
fn key_files_readable_by_others_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("log.key");
    keys::load_or_generate(&path, ORIGIN).expect("generate");
    for bad in [0o644, 0o640, 0o604, 0o660, 0o610, 0o601, 0o700 | 0o020] {
        chmod(&path, bad);
        match keys::load_or_generate(&path, ORIGIN) {
            Err(KeyError::InsecurePermissions { mode, .. }) => assert_eq!(mode, bad),
            other => panic!("mode {bad:o}: {other:?}"),
        }
        assert!(
            matches!(keys::load(&path), Err(KeyError::InsecurePermissions { .. })),
            "load with mode {bad:o}"
        );
    }
    // The file was left as it was (not fixed, not replaced).
    assert_eq!(mode(&path), 0o720);
    let message = keys::load(&path).expect_err("refused").to_string();
    assert!(message.contains("0720"), "{message}");
    // Owner-only modes are fine.
    for ok in [0o600, 0o400] {
        chmod(&path, ok);
        keys::load(&path).expect("owner-only key loads");
    }
}

#[test]
fn key_file_with_another_name_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("log.key");
    let created = keys::load_or_generate(&path, ORIGIN).expect("generate");
    match keys::load_or_generate(&path, "other.example/log") {
        Err(KeyError::NameMismatch {
            expected, found, ..
        }) => {
            assert_eq!(expected, "other.example/log");
            assert_eq!(found, ORIGIN);
        }
        other => panic!("{other:?}"),
    }
    // The key was not replaced.
    let again = keys::load(&path).expect("load");
    assert_eq!(again.verifier(), created.verifier());
}

#[test]
fn configured_key_files_load_and_bad_ones_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");

    // The published Go signer key, as a configured key file.
    let path = dir.path().join("peter.key");
    fs::write(&path, format!("{PETER_SKEY}\n")).expect("write");
    chmod(&path, 0o600);
    let s = keys::load(&path).expect("load");
    assert_eq!((s.name(), s.key_id()), ("PeterNeumann", PETER_ID));
    assert_eq!(
        keys::load_or_generate(&path, "PeterNeumann")
            .expect("load")
            .key_id(),
        PETER_ID
    );

    // Garbage, and a verifier key where a signer key belongs.
    for (name, contents) in [("garbage.key", "not a key\n"), ("public.key", PETER_VKEY)] {
        let path = dir.path().join(name);
        fs::write(&path, contents).expect("write");
        chmod(&path, 0o600);
        assert!(
            matches!(keys::load(&path), Err(KeyError::Malformed { .. })),
            "{name}"
        );
        assert!(
            matches!(
                keys::load_or_generate(&path, ORIGIN),
                Err(KeyError::Malformed { .. })
            ),
            "{name}"
        );
    }

    // load never generates.
    let missing = dir.path().join("missing.key");
    assert!(matches!(keys::load(&missing), Err(KeyError::Io { .. })));
    assert!(!missing.exists());

    // A directory is not a key file.
    let sub = dir.path().join("sub");
    fs::create_dir(&sub).expect("mkdir");
    chmod(&sub, 0o700);
    assert!(matches!(keys::load(&sub), Err(KeyError::NotAFile { .. })));

    // An invalid name creates nothing.
    let bad = dir.path().join("bad.key");
    assert!(matches!(
        keys::load_or_generate(&bad, "bad name"),
        Err(KeyError::InvalidName(_))
    ));
    assert!(!bad.exists());
}
