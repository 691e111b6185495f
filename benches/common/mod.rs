//! Shared by the benches: a private Signet (SoftHSM2 token, CA, SQLite store) in a temporary
//! directory, made with the release `signet` binary (`softhsm/setup.sh`, `signet ca init`).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use signet::app::Signet;
use signet::ca::Fault;
use signet::clock::Clock;
use signet::config::Config;

pub type BoxError = Box<dyn std::error::Error>;

/// A Signet opened on its own token and store; the directory goes when it is dropped.
pub struct TempSignet {
    pub signet: Signet,
    pub config_path: PathBuf,
    pub home: tempfile::TempDir,
}

/// The release `signet` binary. Cargo names it to benches in `CARGO_BIN_EXE_signet`;
/// without it, `target/release/signet`, built when missing.
pub fn signet_binary(repo: &Path) -> Result<PathBuf, BoxError> {
    if let Some(bin) = option_env!("CARGO_BIN_EXE_signet") {
        if Path::new(bin).is_file() {
            eprintln!("signet binary: {bin} (CARGO_BIN_EXE_signet)");
            return Ok(bin.into());
        }
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo.join("target"));
    let bin = target.join("release").join("signet");
    if !bin.is_file() {
        eprintln!(
            "building {} (cargo build --release --bin signet)",
            bin.display()
        );
        let status = Command::new(option_env!("CARGO").unwrap_or("cargo"))
            .args(["build", "--release", "--bin", "signet"])
            .current_dir(repo)
            .status()?;
        if !status.success() || !bin.is_file() {
            return Err(format!("cargo build --release --bin signet: {status}").into());
        }
    }
    eprintln!("signet binary: {}", bin.display());
    Ok(bin)
}

/// Runs `cmd`; its trimmed stdout, or an error with its output.
pub fn run(cmd: &mut Command, what: &str) -> Result<String, BoxError> {
    let out = cmd.output().map_err(|e| format!("{what}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{what} failed ({})\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Makes a token labelled `token_label` and a CA in a temporary directory, and opens Signet
/// on them. Call it before any other thread starts: it sets `SOFTHSM2_CONF` for the process.
pub fn temp_signet(token_label: &str) -> Result<TempSignet, BoxError> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let bin = signet_binary(repo)?;
    let home = tempfile::Builder::new().prefix("signet-bench-").tempdir()?;
    let conf = home.path().join("softhsm2.conf");
    let config_path = home.path().join("signet.toml");
    run(
        Command::new("bash")
            .arg(repo.join("softhsm/setup.sh"))
            .current_dir(repo)
            .env("SIGNET_HOME", home.path())
            .env("SIGNET_BIN", &bin)
            .env("SIGNET_TOKEN_LABEL", token_label)
            .env_remove("SOFTHSM2_CONF")
            .env_remove("SIGNET_FAKE_NOW")
            .env_remove("SIGNET_FAULT"),
        "softhsm/setup.sh",
    )?;
    run(
        Command::new(&bin)
            .arg("--config")
            .arg(&config_path)
            .args(["ca", "init"])
            .current_dir(home.path())
            .env("SOFTHSM2_CONF", &conf)
            .env_remove("SIGNET_FAKE_NOW")
            .env_remove("SIGNET_FAULT"),
        "signet ca init",
    )?;
    // Before the module is loaded, and while this process has one thread.
    std::env::set_var("SOFTHSM2_CONF", &conf);
    let signet = Signet::open(Config::load(&config_path)?, Clock::system(), Fault::None)?;
    Ok(TempSignet {
        signet,
        config_path,
        home,
    })
}
