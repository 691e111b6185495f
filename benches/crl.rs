//! CRL at scale (issue 6): one issuing CA with a million revoked certificates.
//!
//! ```text
//! cargo bench --bench crl                      # 1,000,000 entries
//! CRL_BENCH_ENTRIES=200000 cargo bench --bench crl
//! ```
//!
//! It makes a private token, CA and SQLite store in a temporary directory, bulk-inserts the
//! revoked rows into the store (one transaction, straight SQL: the bench measures the CRL,
//! not a million revocation requests), then:
//! - times one revocation through the library with all those rows present;
//! - starts `signet serve` and GETs `/crl/customer.crl` while no CRL is on record, so that the
//!   server builds it in that request; reports the request's time and the server's peak RSS
//!   (`VmHWM`), which then includes the CRL it keeps to serve;
//! - runs `signet crl --issuer customer` as its own process (the code the server's background
//!   refresh runs) and reports its wall time and peak RSS (`wait4` rusage of that process);
//! - checks both CRLs with `openssl crl -verify` and counts their entries.
//!
//! Under `cargo test --benches` it runs the same steps with 5,000 entries (a smoke test).

mod common;

// The allocator the `signet` binary runs with, so that library figures match the server's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::process::Command;
use std::time::Instant;

use common::BoxError;
use signet::ca::{IssuerId, Reason};
use signet::ra::CertificateRequest;

/// The peak RSS limit the server must stay under while building.
const RSS_LIMIT_MIB: f64 = 256.0;
const TIME_LIMIT_SECS: f64 = 5.0;

fn main() {
    if let Err(e) = bench() {
        eprintln!("crl bench: {e}");
        std::process::exit(1);
    }
}

fn bulk_insert(db: &std::path::Path, n: usize) -> Result<(), BoxError> {
    let mut conn = rusqlite::Connection::open(db)?;
    conn.busy_timeout(std::time::Duration::from_secs(30))?;
    let tx = conn.transaction()?;
    {
        let mut st = tx.prepare(
            "INSERT INTO certificates (serial, issuer, profile, status, subject, shard,
             not_before, not_after, tbs_der, created_at, revoked_at, revocation_reason,
             invalidity_date)
             VALUES (?1, 'customer', 'customer', 'issued', 'CN=bulk', 0, 1700000000, 1900000000,
             X'00', 1700000000, ?2, ?3, NULL)",
        )?;
        for i in 0..n as u64 {
            // 16-byte serials, spread like random ones (a multiplicative hash of i).
            let x = (u128::from(i) + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835);
            let serial = format!("{x:032x}");
            let reason: Option<i64> = match i % 3 {
                0 => None,
                1 => Some(1),
                _ => Some(4),
            };
            st.execute(rusqlite::params![
                serial,
                1_750_000_000 + (i % 86_400) as i64,
                reason
            ])?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// Runs `cmd` and waits for it with `wait4`: (wall seconds, peak RSS in KiB, success).
fn run_measured(cmd: &mut Command) -> Result<(f64, i64, bool), BoxError> {
    let started = Instant::now();
    let child = cmd.spawn()?;
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: a zeroed rusage is a valid value; wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    if r != pid {
        return Err(format!("wait4: {}", std::io::Error::last_os_error()).into());
    }
    std::mem::forget(child); // reaped by wait4
    let ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    Ok((started.elapsed().as_secs_f64(), usage.ru_maxrss, ok))
}

/// The server's resident memory from `/proc/<pid>/status` (`VmRSS` now, `VmHWM` its peak), MiB.
fn server_memory(pid: u32, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// What building the CRL inside `signet serve` measured.
struct ServerBuild {
    secs: f64,
    idle_mib: f64,
    peak_mib: f64,
    der: Vec<u8>,
}

/// Starts `signet serve` on the bench's home and GETs `/crl/customer.crl` while no CRL is on
/// record, so that the server builds it in that request (the code its background refresh runs
/// too); returns the time of the request, the server's RSS before it and its peak (VmHWM).
fn build_in_server(bin: &std::path::Path, temp: &common::BenchCa) -> Result<ServerBuild, BoxError> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let log = temp.home.path().join("serve.log");
    let mut server = Command::new(bin)
        .arg("--config")
        .arg(&temp.config_path)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .env("SOFTHSM2_CONF", temp.home.path().join("softhsm2.conf"))
        .env_remove("SIGNET_FAKE_NOW")
        .env_remove("SIGNET_FAULT")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()?;
    let result = (|| -> Result<ServerBuild, BoxError> {
        let started = Instant::now();
        while !std::fs::read_to_string(&log)?.contains("serving on") {
            if started.elapsed().as_secs() > 60 {
                return Err(format!(
                    "signet serve did not start: {}",
                    std::fs::read_to_string(&log)?
                )
                .into());
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
        let pid = server.id();
        let idle_mib = server_memory(pid, "VmRSS:").ok_or("no /proc status for the server")?;
        let agent = ureq::AgentBuilder::new()
            .timeout(std::time::Duration::from_secs(300))
            .build();
        let t = Instant::now();
        let response = agent
            .get(&format!("http://127.0.0.1:{port}/crl/customer.crl"))
            .call()?;
        let mut der = Vec::new();
        std::io::Read::read_to_end(&mut response.into_reader(), &mut der)?;
        let secs = t.elapsed().as_secs_f64();
        let peak_mib = server_memory(pid, "VmHWM:").ok_or("no /proc status for the server")?;
        Ok(ServerBuild {
            secs,
            idle_mib,
            peak_mib,
            der,
        })
    })();
    let _ = server.kill();
    let _ = server.wait();
    result
}

fn bench() -> Result<(), BoxError> {
    let full = std::env::args().any(|a| a == "--bench");
    let n: usize = match std::env::var("CRL_BENCH_ENTRIES") {
        Ok(v) => v.parse()?,
        Err(_) if full => 1_000_000,
        Err(_) => {
            eprintln!("smoke run (use `cargo bench --bench crl` for the figures)");
            5_000
        }
    };
    let temp = common::temp_signet("signet-crl-bench")?;
    let signet = &temp.signet;
    let db = signet
        .config
        .store
        .path
        .clone()
        .ok_or("the bench's store is SQLite (setup.sh writes [store] path)")?;
    let bin = common::signet_binary(std::path::Path::new(env!("CARGO_MANIFEST_DIR")))?;

    let t = Instant::now();
    bulk_insert(&db, n)?;
    let insert_secs = t.elapsed().as_secs_f64();
    eprintln!("inserted {n} revoked rows in {insert_secs:.1} s");

    // One real revocation with all those rows present (no CRL is built in the request).
    let key = p256::ecdsa::SigningKey::from_slice(&sha2::Digest::finalize(
        <sha2::Sha256 as sha2::Digest>::new_with_prefix(signet.hsm.random(32)?),
    ))?;
    let csr = {
        use x509_cert::builder::{Builder, RequestBuilder};
        let req = RequestBuilder::new("CN=bench".parse()?)?
            .build::<_, p256::ecdsa::DerSignature>(&key)?;
        der::Encode::to_der(&req)?
    };
    let issued = signet.registrar.issue(&CertificateRequest {
        profile: "customer",
        csr: &csr,
        subject: "CN=张三,serialNumber=110101199003071234",
        actor: "bench:crl",
        break_glass: true,
        tenant: None,
    })?;
    let t = Instant::now();
    signet
        .authority
        .revoke(&issued.serial, Reason::KeyCompromise, None, "bench:crl")?;
    let revoke_ms = t.elapsed().as_secs_f64() * 1e3;

    // The CRL built inside the server, in the request that finds none on record.
    let served = build_in_server(&bin, &temp)?;
    let served_path = temp.home.path().join("served.crl");
    std::fs::write(&served_path, &served.der)?;

    // The CRL, built by a `signet` process of its own.
    let out = temp.home.path().join("customer.crl");
    let (secs, rss_kib, ok) = run_measured(
        Command::new(&bin)
            .arg("--config")
            .arg(&temp.config_path)
            .args(["crl", "--issuer", "customer", "--out"])
            .arg(&out)
            .env("SOFTHSM2_CONF", temp.home.path().join("softhsm2.conf"))
            .env_remove("SIGNET_FAKE_NOW")
            .env_remove("SIGNET_FAULT"),
    )?;
    if !ok {
        return Err("signet crl failed".into());
    }
    let size = std::fs::metadata(&out)?.len();

    // OpenSSL verifies it and counts the entries.
    let ca = temp.home.path().join("customer-ca.pem");
    let mut pem = signet.authority.ca(IssuerId::Customer)?.pem();
    pem.push_str(&signet.authority.ca(IssuerId::Root)?.pem());
    std::fs::write(&ca, pem)?;
    let openssl_check = |crl: &std::path::Path| -> Result<(f64, usize), BoxError> {
        let t = Instant::now();
        let text = Command::new("openssl")
            .args([
                "crl", "-inform", "DER", "-noout", "-text", "-verify", "-CAfile",
            ])
            .arg(&ca)
            .arg("-in")
            .arg(crl)
            .output()?;
        let secs = t.elapsed().as_secs_f64();
        let listed = String::from_utf8_lossy(&text.stdout)
            .lines()
            .filter(|l| l.trim_start().starts_with("Serial Number:"))
            .count();
        let verified = String::from_utf8_lossy(&text.stderr).contains("verify OK");
        if !verified || listed != n + 1 {
            return Err(format!(
                "openssl on {}: verified {verified}, {listed} entries listed, {} expected",
                crl.display(),
                n + 1
            )
            .into());
        }
        Ok((secs, listed))
    };
    let (openssl_secs, listed) = openssl_check(&out)?;
    openssl_check(&served_path)?;

    let rss_mib = rss_kib as f64 / 1024.0;
    println!();
    println!(
        "Signet CRL benchmark: {} revoked entries in one issuing CA (customer), SQLite, SoftHSM2{}",
        n + 1,
        if full { "" } else { " (SMOKE RUN)" }
    );
    println!("{}", "-".repeat(78));
    println!(
        "{:<52} {:>10.1} s",
        "bulk insert of the rows (setup)", insert_secs
    );
    println!(
        "{:<52} {:>10.1} ms",
        "one revocation with the rows present", revoke_ms
    );
    println!(
        "{:<52} {:>10.2} s   (target < {TIME_LIMIT_SECS} s) {}",
        "`signet crl` process: wall time",
        secs,
        if secs < TIME_LIMIT_SECS {
            "MET"
        } else {
            "NOT MET"
        }
    );
    println!(
        "{:<52} {:>10.1} MiB (target < {RSS_LIMIT_MIB} MiB) {}",
        "`signet crl` process: peak RSS",
        rss_mib,
        if rss_mib < RSS_LIMIT_MIB {
            "MET"
        } else {
            "NOT MET"
        }
    );
    println!(
        "{:<52} {:>10.2} s   (target < {TIME_LIMIT_SECS} s) {}",
        "`signet serve`: GET /crl/customer.crl, built in it",
        served.secs,
        if served.secs < TIME_LIMIT_SECS {
            "MET"
        } else {
            "NOT MET"
        }
    );
    println!(
        "{:<52} {:>10.1} MiB (target < {RSS_LIMIT_MIB} MiB) {}   (idle before: {:.1} MiB; it keeps the CRL it serves)",
        "`signet serve`: peak RSS (VmHWM)",
        served.peak_mib,
        if served.peak_mib < RSS_LIMIT_MIB {
            "MET"
        } else {
            "NOT MET"
        },
        served.idle_mib
    );
    println!("{:<52} {:>10.1} MB", "CRL size (DER)", size as f64 / 1e6);
    println!(
        "{:<52} {:>10.1} s   ({listed} entries, verify OK)",
        "openssl crl -verify -text", openssl_secs
    );
    drop(temp);
    Ok(())
}
