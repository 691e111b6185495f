//! Signing benchmark (issue 5): batch signing of SHA-256 digests as CMS SignedData, against
//! the raw SoftHSM2 signing rate measured in the same run (target: at least 70 %).
//!
//! ```text
//! cargo bench --bench signing
//! ```
//!
//! It makes a private SoftHSM2 token in a temporary directory (`softhsm/setup.sh` with
//! `SIGNET_HOME` there, then `signet ca init`), opens Signet on it and signs with the
//! validation-service key (its label, certificate and chain). Interleaved, five rounds of:
//! - (a) raw: C_SignInit and C_Sign over a 32-byte digest on one session, in calls of 64
//!   (`signet::loadgen::raw_sign_rate`), for about 3 s;
//! - (b) batch: 1,000 random SHA-256 digests, each made into
//!   `cms_signed_data(CmsContent::DetachedDigest(..))` signed through the same HSM call, the
//!   batch repeated for about 3 s.
//!
//! It prints the median of each (the machine is noisy: medians, not means), b/a and whether
//! it meets the 70 % target, with software p256 signing as a second reference. About 45 s in
//! all. Needs SoftHSM2 (`setup.sh` installs it with apt-get when missing) and bash.

mod common;

// The allocator the `signet` binary runs with, so that library figures match the server's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::time::{Duration, Instant};

use common::{full_run, median, rate, runs, softhsm_version, thousands, BenchCa, BoxError};
use p256::ecdsa::signature::Signer;
use sha2::{Digest, Sha256};
use signet::sign::format::{cms_signed_data, CmsContent, SignerCert};
use signet::verify::evidence::{CertificateResolver, Crypto, SignerRef};

const ROUNDS: usize = 5;
const RUN: Duration = Duration::from_secs(3);
const SOFT_RUN: Duration = Duration::from_secs(1);
const BATCH: usize = 1_000;
const TARGET: f64 = 0.70;

fn main() {
    if let Err(e) = bench() {
        eprintln!("signing bench: {e}");
        std::process::exit(1);
    }
}

struct NoResolver;

impl CertificateResolver for NoResolver {
    fn resolve(&self, _: &SignerRef) -> Option<std::sync::Arc<signet::verify::certs::KnownCert>> {
        None
    }
}

fn bench() -> Result<(), BoxError> {
    let started = Instant::now();
    let ca = BenchCa::open("signet-bench", |_| Ok(()))?;
    let signet = &ca.signet;
    let service = signet.authority.validation_service()?;
    let label = service.key_label.clone();
    let signer = SignerCert {
        certificate_der: service.certificate_der.clone(),
        chain: service.chain.clone(),
    };
    let hsm = signet.hsm.clone();
    let hsm_sign = |bytes: &[u8]| {
        hsm.sign_p256_sha256(&label, bytes)
            .map_err(|e| e.to_string())
    };

    // 1,000 random documents (the token's generator) and their SHA-256.
    let random = hsm.random((BATCH * 32) as u32)?;
    let documents: Vec<&[u8]> = random.chunks(32).collect();
    let digests: Vec<[u8; 32]> = documents.iter().map(|d| Sha256::digest(d).into()).collect();

    // Sanity, outside the timing: a batch signature verifies over its document.
    let sample = cms_signed_data(
        CmsContent::DetachedDigest(digests[0]),
        &signer,
        signet.clock.now(),
        &hsm_sign,
    )?;
    let evidence = signet::verify::cms::examine_cms(&sample, documents[0], &NoResolver)?;
    if evidence.first().map(|e| &e.crypto) != Some(&Crypto::Valid) {
        return Err(format!("a batch signature does not verify: {evidence:?}").into());
    }

    let raw = |d: Duration| ca.raw_sign_rate(&label, d);
    let batch = |d: Duration| {
        rate(d, BATCH, || {
            let now = signet.clock.now();
            for digest in &digests {
                let cms =
                    cms_signed_data(CmsContent::DetachedDigest(*digest), &signer, now, &hsm_sign)?;
                std::hint::black_box(cms);
            }
            Ok(())
        })
    };
    // Warm-up: sessions, key handle cache, page faults.
    raw(Duration::from_millis(300))?;
    batch(Duration::ZERO)?;
    let setup_time = started.elapsed();

    let full = full_run();
    let (rounds, run, soft_run) = if full {
        (ROUNDS, RUN, SOFT_RUN)
    } else {
        eprintln!("smoke run (use `cargo bench --bench signing` for the figures)");
        (1, Duration::from_millis(200), Duration::from_millis(100))
    };
    let mut a = Vec::new();
    let mut b = Vec::new();
    for round in 1..=rounds {
        a.push(raw(run)?);
        b.push(batch(run)?);
        eprintln!(
            "round {round}/{rounds}: raw {} sig/s, batch {} sig/s",
            thousands(a[round - 1]),
            thousands(b[round - 1])
        );
    }
    let key = p256::ecdsa::SigningKey::from_slice(&Sha256::digest(&random))?;
    let mut soft = Vec::new();
    for _ in 0..rounds {
        let data = [0x5a_u8; 32];
        soft.push(rate(soft_run, 1, || {
            let sig: p256::ecdsa::Signature = key.sign(std::hint::black_box(&data));
            std::hint::black_box(sig);
            Ok(())
        })?);
    }

    let (ma, mb, ms) = (median(&a), median(&b), median(&soft));
    let ratio = mb / ma;
    let per_round: Vec<f64> = a.iter().zip(&b).map(|(a, b)| b / a).collect();
    let softhsm = softhsm_version();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!();
    println!(
        "Signet signing benchmark: SoftHSM2 {softhsm}, {cpus} CPUs, one thread, \
         validation-service key (ECDSA P-256)"
    );
    println!(
        "{rounds} interleaved rounds of {:.1} s each, medians (setup {:.1} s)",
        run.as_secs_f64(),
        setup_time.as_secs_f64()
    );
    println!();
    println!(
        "{:<48} {:>9}   rounds (signatures/s)",
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
        format!("(b) batch: CMS DetachedDigest, {BATCH} per batch"),
        thousands(mb),
        runs(&b)
    );
    println!(
        "{:<48} {:>9}   {}",
        "software p256 sign (reference)",
        thousands(ms),
        runs(&soft)
    );
    println!("{}", "-".repeat(110));
    println!(
        "{:<48} {:>8.1}%   per round: {}",
        "b/a (medians)",
        ratio * 100.0,
        per_round
            .iter()
            .map(|r| format!("{:.1}%", r * 100.0))
            .collect::<Vec<_>>()
            .join("  ")
    );
    println!(
        "{:<48} {:>9}   (b/a >= {:.0}%)",
        "target",
        if ratio >= TARGET { "MET" } else { "NOT MET" },
        TARGET * 100.0
    );
    println!(
        "{:<48} {:>9.1}   µs per batch signature beyond the raw HSM call",
        "format overhead",
        1e6 / mb - 1e6 / ma
    );
    println!("total {:.1} s", started.elapsed().as_secs_f64());
    drop(ca);
    Ok(())
}
