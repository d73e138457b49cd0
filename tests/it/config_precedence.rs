//! Configuration precedence with the real binary: a flag beats the environment, which beats the
//! config file, which beats the default. Shown with the data directory each server actually opens.
use crate::common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::bin;

/// Starts `serve` with `args` and `env`, waits until it listens, stops it; returns whether it came up.
fn serve_once(args: &[&str], env: &[(&str, &Path)], addr_file: &Path) -> bool {
    let _ = std::fs::remove_file(addr_file);
    let mut cmd = Command::new(bin());
    cmd.arg("serve")
        .args(args)
        .args(["--listen", "127.0.0.1:0", "--addr-file"])
        .arg(addr_file)
        .env_remove("CLAIMS_LEDGER_DATA_DIR")
        .env_remove("CLAIMS_LEDGER_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(30);
    let up = loop {
        if std::fs::read_to_string(addr_file).is_ok_and(|a| !a.is_empty()) {
            break true;
        }
        if Instant::now() > deadline || child.try_wait().ok().flatten().is_some() {
            break false;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    up
}

#[test]
fn flags_beat_environment_beat_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = |name: &str| dir.path().join(name);
    let config = p("config.toml");
    std::fs::write(
        &config,
        format!("data_dir = \"{}\"\n", p("from-file").display()),
    )
    .expect("write");
    let config_s = config.to_str().expect("utf-8");
    let addr = p("addr");
    let from_env = p("from-env");
    let from_flag = p("from-flag");

    assert!(serve_once(&["--config", config_s], &[], &addr));
    assert!(
        p("from-file").join("db").exists(),
        "the file's data_dir is used"
    );

    assert!(serve_once(
        &["--config", config_s],
        &[("CLAIMS_LEDGER_DATA_DIR", &from_env)],
        &addr
    ));
    assert!(
        from_env.join("db").exists(),
        "the environment beats the file"
    );

    let flag = from_flag.to_str().expect("utf-8");
    assert!(serve_once(
        &["--config", config_s, "--data-dir", flag],
        &[("CLAIMS_LEDGER_DATA_DIR", &from_env)],
        &addr
    ));
    assert!(
        from_flag.join("db").exists(),
        "the flag beats the environment"
    );

    // The config file itself may come from the environment.
    std::fs::remove_dir_all(p("from-file")).expect("clean");
    assert!(serve_once(&[], &[("CLAIMS_LEDGER_CONFIG", &config)], &addr));
    assert!(
        p("from-file").join("db").exists(),
        "CLAIMS_LEDGER_CONFIG names the file"
    );

    // An unknown key is refused rather than ignored.
    std::fs::write(&config, "data_dirr = \"x\"\n").expect("write");
    assert!(
        !serve_once(&["--config", config_s], &[], &addr),
        "unknown keys are refused"
    );
}
