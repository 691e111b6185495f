//! Issuance benchmark (issue 6): the whole issuance path as the service runs it, through the
//! library's public API - `Registrar::request_certificate` (CSR proof of possession, subject
//! from the bank's data, profile checks), the certificate built, recorded durably with its
//! audit event, signed in SoftHSM2, stored durably with its audit event - printed beside the
//! raw SoftHSM2 C_Sign rate measured in the same run.
//!
//! ```text
//! cargo bench --bench issuance
//! ```
//!
//! It makes a private SoftHSM2 token and CA in a temporary directory (as `benches/signing.rs`
//! does, through `benches/common`), a bank and an ra-officer credential, and an OpenSSL P-256
//! CSR. Criterion then times one issuance on one thread and issuances from 8 threads at once
//! (which is where group commit shares fsyncs between requests). Last, five interleaved
//! rounds of about 2 s each measure (a) raw C_Sign with the customer CA key, (b) issuance on
//! one thread, (c) issuance on 8 threads, and print their medians and b/a, c/a. The SQLite
//! database lives in the temporary directory with `synchronous=FULL`: every certificate is on
//! disk before `request_certificate` returns, so the figures depend on the disk's fsync time.
//! About 1 minute in all; under `cargo test` one short round runs as a smoke test.

mod common;

// The allocator the `signet` binary runs with, so that library figures match the server's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{full_run, median, run, runs, softhsm_version, thousands, BenchCa, BoxError};
use criterion::{Criterion, Throughput};
use signet::ra::Principal;

const ROUNDS: usize = 5;
const RUN: Duration = Duration::from_secs(2);
const THREADS: usize = 8;
const PROFILE: &str = "customer";
const SUBJECT: &str = "CN=张三,serialNumber=110101199003071234";

fn main() {
    if let Err(e) = bench() {
        eprintln!("issuance bench: {e}");
        std::process::exit(1);
    }
}

/// Issues one certificate as `POST /v1/certificates` does.
fn issue_one(ca: &BenchCa, who: &Principal, csr: &[u8]) -> Result<(), BoxError> {
    let issued = ca
        .signet
        .registrar
        .request_certificate(who, PROFILE, csr, SUBJECT)?;
    std::hint::black_box(issued);
    Ok(())
}

/// Issuances per second from `threads` threads for about `run`.
fn issuance_rate(
    ca: &BenchCa,
    who: &Principal,
    csr: &[u8],
    threads: usize,
    run: Duration,
) -> Result<f64, BoxError> {
    let done = AtomicUsize::new(0);
    let start = Instant::now();
    let failed = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| -> Result<(), String> {
                    while start.elapsed() < run {
                        issue_one(ca, who, csr).map_err(|e| e.to_string())?;
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(())
                })
            })
            .collect();
        workers
            .into_iter()
            .filter_map(|w| {
                w.join()
                    .unwrap_or_else(|_| Err("a thread panicked".into()))
                    .err()
            })
            .next()
    });
    if let Some(e) = failed {
        return Err(e.into());
    }
    Ok(done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64())
}

fn bench() -> Result<(), BoxError> {
    let started = Instant::now();
    let mut token = None;
    let ca = BenchCa::open("signet-bench-issuance", |cli| {
        cli(&["tenant", "add", "Bench Bank"])?;
        token = Some(cli(&[
            "credential",
            "add",
            "--tenant",
            "Bench Bank",
            "--role",
            "ra-officer",
        ])?);
        Ok(())
    })?;
    let token = token.ok_or("no credential token")?;
    let who = ca.signet.registrar.authenticate(Some(&token), "bench")?;
    let csr_path = ca.home.path().join("bench.csr");
    run(
        Command::new("openssl")
            .args([
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
            ])
            .args(["-nodes", "-subj", "/CN=bench"])
            .arg("-keyout")
            .arg(ca.home.path().join("bench.key"))
            .arg("-out")
            .arg(&csr_path),
        "openssl req",
    )?;
    let csr = std::fs::read(&csr_path)?;
    let label = ca
        .signet
        .authority
        .ca(signet::ca::IssuerId::Customer)?
        .key_label
        .clone();

    // Sanity and warm-up, outside the timing.
    issue_one(&ca, &who, &csr)?;
    ca.raw_sign_rate(&label, Duration::from_millis(300))?;
    let setup_time = started.elapsed();

    let full = full_run();
    let mut c = Criterion::default()
        .configure_from_args()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    {
        let mut g = c.benchmark_group("issuance");
        g.throughput(Throughput::Elements(1));
        g.bench_function("request_certificate, 1 thread", |b| {
            b.iter(|| issue_one(&ca, &who, &csr).expect("issuance"))
        });
        g.bench_function(format!("request_certificate, {THREADS} threads"), |b| {
            b.iter_custom(|iters| {
                let per = iters.div_ceil(THREADS as u64).max(1);
                let start = Instant::now();
                std::thread::scope(|s| {
                    for _ in 0..THREADS {
                        s.spawn(|| {
                            for _ in 0..per {
                                issue_one(&ca, &who, &csr).expect("issuance");
                            }
                        });
                    }
                });
                // Time per certificate: the wall time over all certificates made.
                start
                    .elapsed()
                    .mul_f64(iters as f64 / (per * THREADS as u64) as f64)
            })
        });
        g.finish();
    }
    c.final_summary();

    let (rounds, run_for) = if full {
        (ROUNDS, RUN)
    } else {
        eprintln!("smoke run (use `cargo bench --bench issuance` for the figures)");
        (1, Duration::from_millis(200))
    };
    let (mut a, mut b, mut cc) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=rounds {
        a.push(ca.raw_sign_rate(&label, run_for)?);
        b.push(issuance_rate(&ca, &who, &csr, 1, run_for)?);
        cc.push(issuance_rate(&ca, &who, &csr, THREADS, run_for)?);
        eprintln!(
            "round {round}/{rounds}: raw {} sig/s, issuance {} certs/s (1 thread), {} certs/s ({THREADS} threads)",
            thousands(a[round - 1]),
            thousands(b[round - 1]),
            thousands(cc[round - 1])
        );
    }
    let (ma, mb, mc) = (median(&a), median(&b), median(&cc));
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!();
    println!(
        "Signet issuance benchmark: SoftHSM2 {}, {cpus} CPUs, customer CA key (ECDSA P-256), \
         SQLite synchronous=FULL",
        softhsm_version()
    );
    println!(
        "{rounds} interleaved rounds of {:.1} s each, medians (setup {:.1} s)",
        run_for.as_secs_f64(),
        setup_time.as_secs_f64()
    );
    println!();
    println!(
        "{:<48} {:>9}   rounds (per second)",
        "measurement", "median"
    );
    println!("{}", "-".repeat(110));
    println!(
        "{:<48} {:>9}   {}",
        "(a) raw SoftHSM2 C_Sign (one session, 64 a call)",
        thousands(ma),
        runs(&a)
    );
    println!(
        "{:<48} {:>9}   {}",
        "(b) issuance, 1 thread (certificates/s)",
        thousands(mb),
        runs(&b)
    );
    println!(
        "{:<48} {:>9}   {}",
        format!("(c) issuance, {THREADS} threads (certificates/s)"),
        thousands(mc),
        runs(&cc)
    );
    println!("{}", "-".repeat(110));
    println!("{:<48} {:>8.1}%", "b/a (medians)", 100.0 * mb / ma);
    println!(
        "{:<48} {:>8.1}%   (issue 6 target for the service: >= 40%)",
        "c/a (medians)",
        100.0 * mc / ma
    );
    println!("total {:.1} s", started.elapsed().as_secs_f64());
    drop(ca);
    Ok(())
}
