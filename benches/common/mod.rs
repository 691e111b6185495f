//! Helpers shared by the benches: a private SoftHSM2 token and CA in a temporary directory,
//! the raw SoftHSM2 signing rate (the reference every figure is printed beside), rates,
//! medians and number formatting.

#![allow(dead_code)] // each bench uses its own part

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use signet::app::Signet;
use signet::ca::Fault;
use signet::clock::Clock;
use signet::config::Config;

pub type BoxError = Box<dyn std::error::Error>;

/// `cargo bench` passes --bench; under `cargo test --all-targets` a bench runs as a quick
/// smoke test of the same code (one short round) so that the test command stays fast.
pub fn full_run() -> bool {
    std::env::args().any(|a| a == "--bench")
}

/// The release `signet` binary, for `setup.sh` and `ca init`. Cargo names it to benches in
/// `CARGO_BIN_EXE_signet`; without it, `target/release/signet`, built when missing.
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

#[track_caller]
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

/// A private token with an initialized CA in a temporary directory, and Signet opened on it.
pub struct BenchCa {
    pub signet: Signet,
    pub bin: PathBuf,
    pub config_path: PathBuf,
    pub conf: PathBuf,
    // Last: removed after Signet is closed.
    pub home: tempfile::TempDir,
}

impl BenchCa {
    /// `softhsm/setup.sh` with `SIGNET_HOME` in a temporary directory, `signet ca init`, then
    /// `prepare` (more CLI steps, e.g. a tenant), then opens Signet. Call it while the process
    /// has one thread: it sets `SOFTHSM2_CONF` before the module is loaded.
    pub fn open(
        label: &str,
        prepare: impl FnOnce(&dyn Fn(&[&str]) -> Result<String, BoxError>) -> Result<(), BoxError>,
    ) -> Result<BenchCa, BoxError> {
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
                .env("SIGNET_TOKEN_LABEL", label)
                .env_remove("SOFTHSM2_CONF")
                .env_remove("SIGNET_FAKE_NOW")
                .env_remove("SIGNET_FAULT"),
            "softhsm/setup.sh",
        )?;
        let cli = |args: &[&str]| {
            run(
                Command::new(&bin)
                    .arg("--config")
                    .arg(&config_path)
                    .args(args)
                    .current_dir(home.path())
                    .env("SOFTHSM2_CONF", &conf)
                    .env_remove("SIGNET_FAKE_NOW")
                    .env_remove("SIGNET_FAULT"),
                &format!("signet {}", args.join(" ")),
            )
        };
        cli(&["ca", "init"])?;
        prepare(&cli)?;
        // Before the module is loaded, and while this process has one thread.
        std::env::set_var("SOFTHSM2_CONF", &conf);
        let signet = Signet::open(Config::load(&config_path)?, Clock::system(), Fault::None)?;
        Ok(BenchCa {
            signet,
            bin,
            config_path,
            conf,
            home,
        })
    }

    /// Raw SoftHSM2 C_Sign with `label`, one thread (see `signet::loadgen::raw_sign_rate`).
    pub fn raw_sign_rate(&self, label: &str, run: Duration) -> Result<f64, BoxError> {
        Ok(signet::loadgen::raw_sign_rate(
            &self.signet.hsm,
            label,
            run,
        )?)
    }
}

/// Calls `op` until `run` has passed; returns operations per second (each call does `per`).
pub fn rate(
    run: Duration,
    per: usize,
    mut op: impl FnMut() -> Result<(), BoxError>,
) -> Result<f64, BoxError> {
    let start = Instant::now();
    let mut n = 0usize;
    loop {
        op()?;
        n += per;
        let t = start.elapsed();
        if t >= run {
            return Ok(n as f64 / t.as_secs_f64());
        }
    }
}

/// The median of some figures (the load generator's; not every bench uses it).
#[allow(unused_imports)]
pub use signet::loadgen::median;

pub fn thousands(x: f64) -> String {
    let n = x.round() as u64;
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub fn runs(v: &[f64]) -> String {
    v.iter()
        .map(|x| thousands(*x))
        .collect::<Vec<_>>()
        .join("  ")
}

pub fn softhsm_version() -> String {
    Command::new("softhsm2-util")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// A private token and CA with Signet opened on it, nothing else prepared.
pub fn temp_signet(label: &str) -> Result<BenchCa, BoxError> {
    BenchCa::open(label, |_| Ok(()))
}
