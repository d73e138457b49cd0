//! The log's signing key on disk: the only I/O of [`crate::checkpoint`].
//!
//! A key file holds one signer key string, `PRIVATE+KEY+<name>+<key ID>+<base64>`, and a newline
//! (the format of Go's `golang.org/x/mod/sumdb/note`). It must be readable by its owner only: a
//! file whose mode grants anything to group or others (`mode & 0o077 != 0`) is refused, never
//! silently fixed. The key name is, by convention, the log's origin (for example
//! `claims-ledger.example/log`), so that checkpoints name the key that signs them.
//!
//! [`load_or_generate`] creates the key on first start: a fresh seed from the operating system's
//! random source, written to a temporary file created with mode 0600, fsynced, renamed into place,
//! and the directory fsynced, so that a crash leaves either no key or the whole key. It assumes a
//! single process creates the key (the server is one instance per data directory): two processes
//! generating at once would each rename their own key into place and the last one would win.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::{NoteError, Signer};

/// Largest key file read: a key string is about 100 bytes plus the name.
const MAX_KEY_FILE_LEN: u64 = 4096;

/// Errors loading, checking or creating a key file.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// A filesystem operation failed.
    #[error("cannot {op} key file {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The key file grants some access to group or others.
    #[error(
        "key file {} has mode {mode:04o}, which lets group or others access it; it must be 0600 or stricter (chmod 600)",
        path.display()
    )]
    InsecurePermissions { path: PathBuf, mode: u32 },
    /// The path exists but is not a regular file.
    #[error("key file {} is not a regular file", path.display())]
    NotAFile { path: PathBuf },
    /// The file is not one signer key string (the error never quotes the key).
    #[error("key file {} does not hold a valid signer key: {source}", path.display())]
    Malformed {
        path: PathBuf,
        #[source]
        source: NoteError,
    },
    /// The key in the file is named otherwise than the log's origin.
    #[error("key file {} holds a key named {found:?}, but the log's origin is {expected:?}", path.display())]
    NameMismatch {
        path: PathBuf,
        expected: String,
        found: String,
    },
    /// The requested key name cannot be a key name.
    #[error("cannot generate a key: {0}")]
    InvalidName(#[source] NoteError),
    /// The operating system gave no randomness.
    #[error("cannot get randomness for a new key: {0}")]
    Random(getrandom::Error),
}

fn io_error<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> KeyError + 'a {
    move |source| KeyError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// Loads the signer key at `path` (a key supplied by configuration). Refuses a file that group or
/// others may access, or that does not hold exactly one valid signer key string.
pub fn load(path: &Path) -> Result<Signer, KeyError> {
    let file = File::open(path).map_err(io_error("open", path))?;
    read_key(file, path)
}

/// Loads the signer key at `path` if the file exists, else generates one named `name` and writes it
/// there (mode 0600, atomically). An existing key must be named `name`: the log's origin.
pub fn load_or_generate(path: &Path, name: &str) -> Result<Signer, KeyError> {
    let signer = match File::open(path) {
        Ok(file) => read_key(file, path)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let signer = generate(name)?;
            write_key_file(path, &signer)?;
            return Ok(signer);
        }
        Err(e) => return Err(io_error("open", path)(e)),
    };
    if signer.name() != name {
        return Err(KeyError::NameMismatch {
            path: path.to_owned(),
            expected: name.to_owned(),
            found: signer.name().to_owned(),
        });
    }
    Ok(signer)
}

/// A fresh signer named `name`, its seed from the operating system's random source. Not stored.
pub fn generate(name: &str) -> Result<Signer, KeyError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(KeyError::Random)?;
    Signer::from_seed(name, &seed).map_err(KeyError::InvalidName)
}

/// Reads another private file (a TLS private key) under the rule for key files: a regular file that
/// neither group nor others may access, checked on the open descriptor; at most `max_len` bytes.
pub fn read_private_file(path: &Path, max_len: u64) -> Result<Vec<u8>, KeyError> {
    let file = File::open(path).map_err(io_error("open", path))?;
    check_private(&file, path)?;
    let mut bytes = Vec::new();
    file.take(max_len)
        .read_to_end(&mut bytes)
        .map_err(io_error("read", path))?;
    Ok(bytes)
}

/// Refuses a file that is not regular or that grants anything to group or others.
fn check_private(file: &File, path: &Path) -> Result<(), KeyError> {
    let meta = file.metadata().map_err(io_error("stat", path))?;
    if !meta.is_file() {
        return Err(KeyError::NotAFile {
            path: path.to_owned(),
        });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(KeyError::InsecurePermissions {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

/// Checks the open file's permissions (on the descriptor, not the path) and parses its key.
fn read_key(file: File, path: &Path) -> Result<Signer, KeyError> {
    check_private(&file, path)?;
    let mut text = String::new();
    file.take(MAX_KEY_FILE_LEN)
        .read_to_string(&mut text)
        .map_err(io_error("read", path))?;
    let key = text.strip_suffix('\n').unwrap_or(&text);
    let key = key.strip_suffix('\r').unwrap_or(key);
    Signer::from_private_key_string(key).map_err(|source| KeyError::Malformed {
        path: path.to_owned(),
        source,
    })
}

/// Writes the key to a 0600 temporary file beside `path`, fsyncs it, renames it over `path` and
/// fsyncs the directory.
fn write_key_file(path: &Path, signer: &Signer) -> Result<(), KeyError> {
    let file_name = path.file_name().ok_or_else(|| KeyError::Io {
        op: "create",
        path: path.to_owned(),
        source: io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"),
    })?;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = dir.join(tmp_name);

    // A leftover from a crashed process with the same pid: its mode is unknown, so start anew.
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_error("remove stale temporary", &tmp)(e)),
    }
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_error("create temporary", &tmp))?;
        let mut contents = signer.private_key_string();
        contents.push('\n');
        file.write_all(contents.as_bytes())
            .map_err(io_error("write temporary", &tmp))?;
        file.sync_all().map_err(io_error("fsync temporary", &tmp))?;
        fs::rename(&tmp, path).map_err(io_error("rename temporary onto", path))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_error("fsync directory of", path))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}
