//! The server's exposure rules, from outside: bounded connections (a cap, a handshake timeout, an
//! idle timeout, concurrent calls per peer), tokens never accepted over plaintext off loopback
//! without an explicit override, private data files whatever the umask, TLS private keys checked
//! like the signing key, and the metrics endpoint kept on loopback unless allowed, with an optional
//! bearer token. Timeouts here are short and every wait has a generous upper bound: the tests assert
//! what happens, not how fast.
use crate::common;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use claims_ledger_log::LogOptions;
use claims_ledger_proto as pb;
use claims_ledger_server::app::App;
use claims_ledger_server::config::token_hash;
use claims_ledger_server::grpc::server::{serve_with, ConnectionLimits, ServeOptions};
use common::*;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

/// Longest any single expectation here waits.
const PATIENCE: Duration = Duration::from_secs(20);

struct Served {
    addr: SocketAddr,
    _app: App,
    _dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

async fn start(limits: ConnectionLimits) -> Served {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = App::open(dir.path(), LogOptions::default()).expect("open");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let serve_app = app.clone();
    let options = ServeOptions {
        limits,
        ..Default::default()
    };
    tokio::spawn(async move {
        serve_with(listener, serve_app, options, async {
            let _ = rx.await;
        })
        .await
        .expect("serve");
    });
    Served {
        addr,
        _app: app,
        _dir: dir,
        stop: Some(tx),
    }
}

async fn channel(addr: SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect")
}

/// Reads until the server closes the connection; `Err` if it is still open after `PATIENCE`.
async fn closed_by_server(stream: &mut TcpStream) -> Result<(), String> {
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return Err(format!("still open after {PATIENCE:?}")),
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(()),
            // The server's SETTINGS and the like: keep reading.
            Ok(Ok(_)) => {}
        }
    }
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An empty SETTINGS frame: length 0, type 4, no flags, stream 0.
const EMPTY_SETTINGS: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 0, 0];

fn limits() -> ConnectionLimits {
    ConnectionLimits {
        handshake_timeout: Duration::from_secs(60),
        idle_timeout: Duration::from_secs(600),
        ..ConnectionLimits::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_without_a_preface_are_closed_after_the_handshake_timeout() {
    let s = start(ConnectionLimits {
        handshake_timeout: Duration::from_secs(1),
        ..limits()
    })
    .await;
    // Silent, and a slow client that stops after part of the preface.
    let mut silent = TcpStream::connect(s.addr).await.expect("connect");
    let mut partial = TcpStream::connect(s.addr).await.expect("connect");
    partial.write_all(&PREFACE[..10]).await.expect("write");
    closed_by_server(&mut silent)
        .await
        .expect("a connection that sends nothing is closed");
    closed_by_server(&mut partial)
        .await
        .expect("a connection that sends part of the preface is closed");
    // A real client is unaffected.
    let mut events = pb::events_client::EventsClient::new(channel(s.addr).await);
    events
        .get_head(pb::GetHeadRequest {})
        .await
        .expect("a real client is served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_handshake_that_never_comes_is_closed() {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("cert");
    let dir = tempfile::tempdir().expect("tempdir");
    let app = App::open(dir.path(), LogOptions::default()).expect("open");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let options = ServeOptions {
        tls: Some((
            cert.cert.pem().into_bytes(),
            cert.signing_key.serialize_pem().into_bytes(),
        )),
        limits: ConnectionLimits {
            handshake_timeout: Duration::from_secs(1),
            ..limits()
        },
        ..Default::default()
    };
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let serve_app = app.clone();
    tokio::spawn(async move {
        let _ = serve_with(listener, serve_app, options, async {
            let _ = rx.await;
        })
        .await;
    });
    let mut silent = TcpStream::connect(addr).await.expect("connect");
    // The first bytes of a ClientHello record, then nothing.
    let mut stalled = TcpStream::connect(addr).await.expect("connect");
    stalled
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await
        .expect("write");
    closed_by_server(&mut silent)
        .await
        .expect("a TLS connection that sends nothing is closed");
    closed_by_server(&mut stalled)
        .await
        .expect("a stalled TLS handshake is closed");
    let _ = tx.send(());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_but_not_while_a_call_is_open() {
    let s = start(ConnectionLimits {
        idle_timeout: Duration::from_secs(1),
        ..limits()
    })
    .await;
    // A complete HTTP/2 handshake, then no call.
    let mut idle = TcpStream::connect(s.addr).await.expect("connect");
    idle.write_all(PREFACE).await.expect("preface");
    idle.write_all(EMPTY_SETTINGS).await.expect("settings");
    closed_by_server(&mut idle)
        .await
        .expect("a connection with no call is closed after the idle timeout");

    // A subscription open for several idle timeouts keeps its connection.
    let mut events = pb::events_client::EventsClient::new(channel(s.addr).await);
    let mut sub = events
        .subscribe(pb::SubscribeRequest {
            from_end: true,
            heartbeat_ms: 60_000,
            ..Default::default()
        })
        .await
        .expect("subscribe")
        .into_inner();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut ledger = pb::ledger_client::LedgerClient::new(channel(s.addr).await);
    ledger
        .register_party(pb::RegisterPartyRequest {
            command: Some(party("kept-alive", pb::PartyKind::Group)),
            ..Default::default()
        })
        .await
        .expect("write");
    let got = tokio::time::timeout(PATIENCE, async {
        loop {
            let msg = sub.message().await.expect("the subscription is still open");
            match msg.and_then(|m| m.kind) {
                Some(pb::subscribe_response::Kind::Event(e)) => break e,
                Some(_) => {}
                None => panic!("the subscription ended"),
            }
        }
    })
    .await
    .expect("the event arrives on the subscription");
    assert_eq!(got.stream, "party-kept-alive", "{got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_cap_refuses_one_more_and_accepts_again_once_one_closes() {
    const CAP: usize = 3;
    let s = start(ConnectionLimits {
        max_connections: CAP,
        ..limits()
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..CAP {
        held.push(TcpStream::connect(s.addr).await.expect("connect"));
    }
    // Accepted in order, so this one finds every slot taken and is closed at once (the handshake
    // timeout, a minute, has nothing to do with it).
    let mut extra = TcpStream::connect(s.addr).await.expect("connect");
    closed_by_server(&mut extra)
        .await
        .expect("connection N+1 is refused while N are held");
    // The held ones are still open (the server's SETTINGS may be waiting to be read).
    let mut buf = [0u8; 256];
    for (i, h) in held.iter_mut().enumerate() {
        loop {
            match tokio::time::timeout(Duration::from_millis(200), h.read(&mut buf)).await {
                Err(_) => break,
                Ok(Ok(n)) if n > 0 => {}
                Ok(r) => panic!("held connection {i} was closed: {r:?}"),
            }
        }
    }
    // One closes; a new client gets in (retried: the server notices the close asynchronously).
    drop(held.pop());
    let deadline = Instant::now() + PATIENCE;
    loop {
        let attempt = tokio::time::timeout(Duration::from_secs(5), async {
            let mut events = pb::events_client::EventsClient::new(channel(s.addr).await);
            events.get_head(pb::GetHeadRequest {}).await
        })
        .await;
        if matches!(attempt, Ok(Ok(_))) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no connection accepted after one of the {CAP} closed: {attempt:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_beyond_the_per_peer_limit_get_resource_exhausted() {
    const PER_PEER: usize = 4;
    let s = start(ConnectionLimits {
        max_streams_per_peer: PER_PEER,
        ..limits()
    })
    .await;
    // Across two connections from the same address.
    let a = pb::events_client::EventsClient::new(channel(s.addr).await);
    let b = pb::events_client::EventsClient::new(channel(s.addr).await);
    let mut held = Vec::new();
    for i in 0..PER_PEER {
        let mut c = if i % 2 == 0 { a.clone() } else { b.clone() };
        let sub = c
            .subscribe(pb::SubscribeRequest {
                from_end: true,
                heartbeat_ms: 60_000,
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("subscription {i} within the limit: {e:?}"))
            .into_inner();
        held.push(sub);
    }
    let mut third = pb::events_client::EventsClient::new(channel(s.addr).await);
    let refused = third
        .get_head(pb::GetHeadRequest {})
        .await
        .expect_err("a call beyond the per-peer limit is refused");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("127.0.0.1"), "{refused:?}");
    // Once a call ends, the address may call again.
    drop(held.pop());
    let deadline = Instant::now() + PATIENCE;
    loop {
        match third.get_head(pb::GetHeadRequest {}).await {
            Ok(_) => break,
            Err(e) if e.code() == Code::ResourceExhausted && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("after a call ended: {e:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_beyond_the_per_connection_limit_wait_for_a_free_stream() {
    const PER_CONNECTION: u32 = 2;
    let s = start(ConnectionLimits {
        max_streams_per_connection: PER_CONNECTION,
        ..limits()
    })
    .await;
    let events = pb::events_client::EventsClient::new(channel(s.addr).await);
    // One call first, so that the server's SETTINGS (with the limit) have arrived.
    events
        .clone()
        .get_head(pb::GetHeadRequest {})
        .await
        .expect("first call");
    let mut held = Vec::new();
    for _ in 0..PER_CONNECTION {
        let sub = events
            .clone()
            .subscribe(pb::SubscribeRequest {
                from_end: true,
                heartbeat_ms: 60_000,
                ..Default::default()
            })
            .await
            .expect("subscribe")
            .into_inner();
        held.push(sub);
    }
    let mut e = events.clone();
    let waiting = tokio::spawn(async move { e.get_head(pb::GetHeadRequest {}).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !waiting.is_finished(),
        "a call beyond {PER_CONNECTION} streams on one connection should wait"
    );
    held.pop();
    tokio::time::timeout(PATIENCE, waiting)
        .await
        .expect("the waiting call runs once a stream is free")
        .expect("task")
        .expect("the waiting call succeeds");
}

// ---------------------------------------------------------------------------------------------------
// The binary's refusals and configuration.
// ---------------------------------------------------------------------------------------------------

/// Runs `serve` with `args` (which must include `--listen`); returns the child once it listens, or
/// its stderr if it exited.
fn spawn_serve(args: &[&str], dir: &Path, umask: Option<&str>) -> Result<(Child, String), String> {
    let addr_file = dir.join("addr");
    let _ = std::fs::remove_file(&addr_file);
    let stderr_file = dir.join("stderr");
    let stderr = std::fs::File::create(&stderr_file).expect("stderr file");
    let mut cmd = match umask {
        Some(mask) => {
            let mut c = Command::new("sh");
            c.arg("-c")
                .arg(format!("umask {mask}; exec \"$0\" \"$@\""))
                .arg(bin());
            c
        }
        None => Command::new(bin()),
    };
    cmd.arg("serve")
        .args(args)
        .arg("--addr-file")
        .arg(&addr_file)
        .env_remove("CLAIMS_LEDGER_CONFIG")
        .env_remove("CLAIMS_LEDGER_ALLOW_PLAINTEXT")
        .env_remove("CLAIMS_LEDGER_METRICS_ALLOW_REMOTE")
        .stdout(Stdio::null())
        .stderr(stderr);
    let mut child = cmd.spawn().expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(a) = std::fs::read_to_string(&addr_file) {
            if !a.is_empty() {
                return Ok((child, a));
            }
        }
        if let Ok(Some(_)) = child.try_wait() {
            return Err(std::fs::read_to_string(&stderr_file).unwrap_or_default());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err("did not start within 30 s".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SIGTERM, then waits for the exit. (A signal that arrives before the server installed its
/// handler, right after it wrote its address, kills it outright: not what these tests are about.)
fn stop(mut child: Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("server did not stop within 20 s");
}

fn tokens_config(dir: &Path, extra: &str) -> String {
    let path = dir.join("config.toml");
    std::fs::write(
        &path,
        format!(
            "{extra}\n[[tokens]]\nname = \"desk\"\nsha256 = \"{}\"\nroles = [\"writer\"]\n",
            token_hash("s3cret")
        ),
    )
    .expect("write config");
    path.to_str().expect("utf-8").to_string()
}

#[test]
fn tokens_over_plaintext_off_loopback_are_refused_unless_the_network_is_declared_trusted() {
    use claims_ledger_cli::serve::check_plaintext;
    let public: SocketAddr = "0.0.0.0:50051".parse().expect("addr");
    let local: SocketAddr = "127.0.0.1:50051".parse().expect("addr");
    assert!(check_plaintext(public, true, false, false).is_err());
    assert!(check_plaintext(public, true, true, false).is_ok(), "TLS");
    assert!(
        check_plaintext(public, true, false, true).is_ok(),
        "allowed"
    );
    assert!(
        check_plaintext(local, true, false, false).is_ok(),
        "loopback"
    );
    assert!(
        check_plaintext(public, false, false, false).is_ok(),
        "no token to leak"
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let data = data.to_str().expect("utf-8");
    let config = tokens_config(dir.path(), "");
    let base = [
        "--config",
        &config,
        "--data-dir",
        data,
        "--listen",
        "0.0.0.0:0",
    ];
    let refused = spawn_serve(&base, dir.path(), None).expect_err("refused");
    assert!(refused.contains("without TLS"), "{refused}");
    assert!(refused.contains("--allow-plaintext"), "{refused}");
    // The explicit override, as a flag and as a config key.
    let (child, _) = spawn_serve(
        &[&base[..], &["--allow-plaintext"]].concat(),
        dir.path(),
        None,
    )
    .expect("--allow-plaintext serves");
    stop(child);
    let config = tokens_config(dir.path(), "allow_plaintext = true");
    let (child, _) = spawn_serve(
        &[
            "--config",
            &config,
            "--data-dir",
            data,
            "--listen",
            "0.0.0.0:0",
        ],
        dir.path(),
        None,
    )
    .expect("allow_plaintext = true serves");
    stop(child);
}

#[test]
fn connection_limits_come_from_the_config_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        "[connections]\nhandshake_timeout_secs = 1\nidle_timeout_secs = 600\nmax = 2\n",
    )
    .expect("write config");
    let data = dir.path().join("data");
    let (child, addr) = spawn_serve(
        &[
            "--config",
            config.to_str().expect("utf-8"),
            "--data-dir",
            data.to_str().expect("utf-8"),
            "--listen",
            "127.0.0.1:0",
        ],
        dir.path(),
        None,
    )
    .expect("serves");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let addr: SocketAddr = addr.trim().parse().expect("addr");
        let mut silent = TcpStream::connect(addr).await.expect("connect");
        closed_by_server(&mut silent)
            .await
            .expect("the file's handshake timeout closes a silent connection");
        let _held = [
            TcpStream::connect(addr).await.expect("connect"),
            TcpStream::connect(addr).await.expect("connect"),
        ];
        let mut third = TcpStream::connect(addr).await.expect("connect");
        closed_by_server(&mut third)
            .await
            .expect("the file's cap of 2 refuses a third connection");
    });
    stop(child);
    // A zero timeout is refused rather than taken literally.
    std::fs::write(&config, "[connections]\nidle_timeout_secs = 0\n").expect("write config");
    let refused = spawn_serve(
        &[
            "--config",
            config.to_str().expect("utf-8"),
            "--data-dir",
            data.to_str().expect("utf-8"),
            "--listen",
            "127.0.0.1:0",
        ],
        dir.path(),
        None,
    )
    .expect_err("a zero timeout is refused");
    assert!(refused.contains("at least one second"), "{refused}");
}

/// Every directory and file below `dir`, with its mode.
fn modes(dir: &Path) -> Vec<(PathBuf, u32, bool)> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(p) = pending.pop() {
        let meta = std::fs::symlink_metadata(&p).expect("stat");
        out.push((p.clone(), meta.permissions().mode() & 0o7777, meta.is_dir()));
        if meta.is_dir() {
            for e in std::fs::read_dir(&p).expect("ls") {
                pending.push(e.expect("entry").path());
            }
        }
    }
    out
}

fn assert_private(dir: &Path) {
    let all = modes(dir);
    let loose: Vec<String> = all
        .iter()
        .filter(|(_, mode, _)| mode & 0o077 != 0)
        .map(|(p, mode, _)| format!("{} {mode:04o}", p.display()))
        .collect();
    assert!(
        loose.is_empty(),
        "accessible to group or others: {loose:#?}"
    );
    for (p, mode, is_dir) in &all {
        let want = if *is_dir { 0o700 } else { 0o600 };
        assert_eq!(mode & 0o700, want, "{} {mode:04o}", p.display());
    }
}

#[test]
fn data_files_are_private_whatever_the_umask_and_loose_ones_are_fixed_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let data_s = data.to_str().expect("utf-8").to_string();
    let args = ["--data-dir", &data_s, "--listen", "127.0.0.1:0"];
    let (child, addr) = spawn_serve(&args, dir.path(), Some("022")).expect("serves");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let addr: SocketAddr = addr.trim().parse().expect("addr");
        let mut ledger = pb::ledger_client::LedgerClient::new(channel(addr).await);
        for i in 0..5 {
            ledger
                .register_party(pb::RegisterPartyRequest {
                    command: Some(party(&format!("private-{i}"), pb::PartyKind::Group)),
                    ..Default::default()
                })
                .await
                .expect("write");
        }
    });
    // The clean stop writes the snapshots.
    stop(child);
    let names: Vec<String> = modes(&data)
        .iter()
        .filter_map(|(p, _, _)| p.strip_prefix(&data).ok().map(|r| r.display().to_string()))
        .collect();
    for expected in [
        "db",
        "conf",
        "projections/db",
        "signing.key",
        "streams.snap",
        "state.snap",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} in {names:?}"
        );
    }
    assert_private(&data);

    // Loosened by hand (or written by an older version): made private again at start.
    for (p, _, is_dir) in modes(&data) {
        let mode = if is_dir { 0o755 } else { 0o644 };
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }
    // The signing key is the exception: a loose one is refused (below), so keep it private here.
    std::fs::set_permissions(
        data.join("signing.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .expect("chmod key");
    let (child, _) = spawn_serve(&args, dir.path(), Some("022")).expect("serves again");
    assert_private(&data);
    stop(child);
    assert_private(&data);
}

#[test]
fn a_tls_private_key_readable_by_others_is_refused_like_the_signing_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("cert");
    let (crt, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&crt, cert.cert.pem()).expect("write cert");
    std::fs::write(&key, cert.signing_key.serialize_pem()).expect("write key");
    let data = dir.path().join("data");
    let args = [
        "--data-dir",
        data.to_str().expect("utf-8"),
        "--listen",
        "127.0.0.1:0",
        "--tls-cert",
        crt.to_str().expect("utf-8"),
        "--tls-key",
        key.to_str().expect("utf-8"),
    ];
    for mode in [0o644, 0o640, 0o604] {
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)).expect("chmod");
        let refused = spawn_serve(&args, dir.path(), None).expect_err("a loose key is refused");
        assert!(refused.contains("TLS private key"), "{refused}");
        assert!(refused.contains(&format!("{mode:04o}")), "{refused}");
    }
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let (child, _) = spawn_serve(&args, dir.path(), None).expect("a 0600 key is accepted");
    stop(child);
}

// ---------------------------------------------------------------------------------------------------
// The metrics endpoint.
// ---------------------------------------------------------------------------------------------------

/// A free loopback port (closed again; the race with another process taking it is accepted).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// `GET /metrics` with an optional bearer token; returns the status line's code.
async fn get_metrics(addr: &str, token: Option<&str>) -> u16 {
    let mut s = TcpStream::connect(addr).await.expect("connect metrics");
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    s.write_all(
        format!("GET /metrics HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n").as_bytes(),
    )
    .await
    .expect("request");
    let mut out = String::new();
    tokio::time::timeout(PATIENCE, s.read_to_string(&mut out))
        .await
        .expect("metrics answer in time")
        .expect("read");
    out.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {out:?}"))
}

#[test]
fn metrics_stay_on_loopback_unless_allowed_and_can_require_a_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let data = data.to_str().expect("utf-8");
    let base = ["--data-dir", data, "--listen", "127.0.0.1:0"];
    let refused = spawn_serve(
        &[&base[..], &["--metrics-listen", "0.0.0.0:0"]].concat(),
        dir.path(),
        None,
    )
    .expect_err("a non-loopback metrics address is refused");
    assert!(refused.contains("--metrics-allow-remote"), "{refused}");
    let (child, _) = spawn_serve(
        &[
            &base[..],
            &["--metrics-listen", "0.0.0.0:0", "--metrics-allow-remote"],
        ]
        .concat(),
        dir.path(),
        None,
    )
    .expect("allowed explicitly");
    stop(child);

    // With a token: refused without it or with another, served with it.
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let hash = token_hash("scrape-secret");
    let (child, _) = spawn_serve(
        &[
            &base[..],
            &[
                "--metrics-listen",
                &metrics_addr,
                "--metrics-token-sha256",
                &hash,
            ],
        ]
        .concat(),
        dir.path(),
        None,
    )
    .expect("serves with a metrics token");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        // The metrics endpoint comes up just after the gRPC listener.
        let deadline = Instant::now() + PATIENCE;
        while TcpStream::connect(&metrics_addr).await.is_err() {
            assert!(Instant::now() < deadline, "metrics endpoint never came up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(get_metrics(&metrics_addr, None).await, 401);
        assert_eq!(get_metrics(&metrics_addr, Some("wrong")).await, 401);
        assert_eq!(get_metrics(&metrics_addr, Some("scrape-secret")).await, 200);
    });
    stop(child);
}

#[test]
fn the_cli_sends_no_token_in_plaintext_off_loopback() {
    // `.invalid` never resolves, so nothing leaves the machine whatever happens.
    let run = |allow: Option<&str>| {
        let mut cmd = Command::new(bin());
        cmd.args(["head", "--server", "http://ledger.invalid:50051"])
            .env("CLAIMS_LEDGER_TOKEN", "s3cret-token")
            .env_remove("CLAIMS_LEDGER_ALLOW_PLAINTEXT");
        if let Some(v) = allow {
            cmd.env("CLAIMS_LEDGER_ALLOW_PLAINTEXT", v);
        }
        let out = cmd.output().expect("run the CLI");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, err) = run(None);
    assert!(!ok);
    assert!(err.contains("plaintext"), "{err}");
    assert!(
        !err.contains("s3cret-token"),
        "the token is never printed: {err}"
    );
    // Explicitly trusted: it tries to connect (and fails on the name instead).
    let (ok, err) = run(Some("1"));
    assert!(!ok);
    assert!(!err.contains("plaintext"), "{err}");
    // A false-like value keeps the refusal.
    let (_, err) = run(Some("false"));
    assert!(err.contains("plaintext"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_timeout_too_large_to_add_means_none() {
    // `now + timeout` would overflow: the connection must simply never idle out, not panic.
    let s = start(ConnectionLimits {
        idle_timeout: Duration::MAX,
        ..limits()
    })
    .await;
    let mut events = pb::events_client::EventsClient::new(channel(s.addr).await);
    for _ in 0..3 {
        events
            .get_head(pb::GetHeadRequest {})
            .await
            .expect("the connection keeps serving");
    }
}
