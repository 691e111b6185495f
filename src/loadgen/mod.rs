//! `signet bench`: a load generator that drives a running Signet over HTTP with N concurrent
//! clients (one keep-alive connection each) for T seconds, per scenario (issuance,
//! verification, ocsp, mixed), and prints requests/s, p50/p99/max latency and errors. It can
//! also start CFSSL (`cfssl serve`, software P-256 CA, a profile like Signet's customer
//! profile), drive it with the same CSR and client load, and print Signet/CFSSL; measure the
//! raw SoftHSM2 C_Sign rate in the same run (given the server's config); and sample the
//! server's resident memory idle and under load.
//!
//! It is a client: it never opens the store, and touches the HSM only for the raw reference.

mod cfssl;
mod http;
pub mod rss;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use der::{Decode, Encode};
use hyper::body::Bytes;
use sha1::Digest as _;
use zeroize::Zeroizing;

pub use http::Target;
use http::{Call, Connection};

/// What the load generator can fail with (before or instead of measuring).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The options do not make sense.
    #[error("{0}")]
    Usage(String),
    /// The server could not be reached, or closed the connection.
    #[error("connection failed: {0}")]
    Transport(String),
    /// The server answered the setup requests in a way the bench cannot use.
    #[error("{0}")]
    Setup(String),
    /// A helper program (openssl, cfssl) failed.
    #[error("{0}")]
    Tool(String),
}

/// One kind of load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scenario {
    /// `POST /v1/certificates` (customer profile), the same CSR each time.
    Issuance,
    /// `POST /v1/certificates/batch`: `--batch` requests (the same CSR) per call.
    IssuanceBatch,
    /// `POST /v1/verifications` of a fresh CMS-signed instruction each time.
    Verification,
    /// `POST /v1/verifications/batch` of fresh CMS-signed instructions (`--batch` per request).
    VerificationBatch,
    /// `POST /ocsp` for the serial issued during setup, no nonce.
    Ocsp,
    /// Per client, in turn: one issuance, one verification (with a gateway token), three OCSP.
    Mixed,
}

impl Scenario {
    pub fn parse(s: &str) -> Option<Scenario> {
        match s {
            "issuance" => Some(Scenario::Issuance),
            "issuance-batch" => Some(Scenario::IssuanceBatch),
            "verification" => Some(Scenario::Verification),
            "verification-batch" => Some(Scenario::VerificationBatch),
            "ocsp" => Some(Scenario::Ocsp),
            "mixed" => Some(Scenario::Mixed),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Issuance => "issuance",
            Scenario::IssuanceBatch => "issuance-batch",
            Scenario::Verification => "verification",
            Scenario::VerificationBatch => "verification-batch",
            Scenario::Ocsp => "ocsp",
            Scenario::Mixed => "mixed",
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// The Signet server's base URL, `http://host:port`.
    pub server: String,
    /// A file holding an ra-officer bearer token (issuance).
    pub token_file: PathBuf,
    /// A file holding a gateway bearer token (verification); without it, no verification.
    pub gateway_token_file: Option<PathBuf>,
    pub scenarios: Vec<Scenario>,
    pub clients: usize,
    /// Instructions per request of the verification-batch scenario.
    pub batch: usize,
    pub duration: Duration,
    pub warmup: Duration,
    /// Repetitions of the whole set (medians are reported).
    pub rounds: usize,
    /// The server process, for memory; found by port when not given.
    pub server_pid: Option<u32>,
    /// Also run CFSSL's `cfssl serve` with this binary and compare issuance.
    pub cfssl: Option<PathBuf>,
    /// Also run CFSSL recording each certificate in its SQLite certdb.
    pub cfssl_db: bool,
    /// The server's config, to measure the raw SoftHSM2 sign rate in the same run.
    pub reference_config: Option<PathBuf>,
    /// Profile and subject of the issuance requests.
    pub profile: String,
    pub subject: String,
}

/// Latency figures of one measurement, milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Latency {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

/// One scenario run against one target.
#[derive(Debug, Clone, Default)]
pub struct Measurement {
    pub label: String,
    /// Requests served as expected.
    pub ok: u64,
    /// What those requests carried: instructions for a batch, else one per request.
    pub items: u64,
    pub seconds: f64,
    pub latency: Latency,
    /// Failed requests by kind (`status 503`, `transport`, `check`).
    pub errors: BTreeMap<String, u64>,
    /// Verification requests signed while the scenario ran, the prepared ones having run out
    /// (the load generator then took some of the server's CPU).
    pub signed_live: u64,
}

impl Measurement {
    /// Items (requests, or a batch's instructions) served per second.
    pub fn rate(&self) -> f64 {
        if self.seconds > 0.0 {
            self.items as f64 / self.seconds
        } else {
            0.0
        }
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// Everything one `signet bench` run measured.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Per label (e.g. `signet issuance`), one measurement per round.
    pub runs: BTreeMap<String, Vec<Measurement>>,
    /// Raw SoftHSM2 C_Sign per second (one thread), per round.
    pub raw_hsm: Vec<f64>,
    /// Software p256 signatures per second (one thread), per round.
    pub raw_soft: Vec<f64>,
    /// ECDSA P-256 verifications per second with ring (the server's verify), one thread, per
    /// round: the reference of the verification scenario.
    pub raw_verify: Vec<f64>,
    pub rss_idle_kib: Option<u64>,
    pub rss_peak_kib: Option<u64>,
    pub server_pid: Option<u32>,
}

/// What a request must get back to count as served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Created,
    CfsslSuccess,
    OcspSuccessful,
    TotalPassed,
    /// A batch's answer: this many results, every one TOTAL_PASSED.
    AllPassed(usize),
    /// A certificate batch's answer: this many results, every one a certificate.
    AllIssued(usize),
}

/// How each request of a client is made.
#[derive(Clone)]
enum Work {
    Fixed(Call, Expect),
    /// A verification: a fresh instruction, signed now.
    Verify(Arc<Verifying>),
    /// A batch of this many verifications, each a fresh instruction signed now.
    VerifyBatch(Arc<Verifying>, usize),
}

impl Work {
    /// Instructions (or requests) one of these requests carries.
    fn items(&self) -> u64 {
        match self {
            Work::VerifyBatch(_, n) | Work::Fixed(_, Expect::AllIssued(n)) => *n as u64,
            _ => 1,
        }
    }

    /// Instructions per request of a verification, `None` for other work.
    fn instructions(&self) -> Option<(&Arc<Verifying>, usize)> {
        match self {
            Work::Verify(v) => Some((v, 1)),
            Work::VerifyBatch(v, n) => Some((v, *n)),
            Work::Fixed(..) => None,
        }
    }
}

/// Instructions signed before a scenario's warm-up and measurement, per second of them (scaled
/// by the share of verification requests in the scenario's cycle): more than this machine
/// verifies, so that the load generator signs nothing while the server is measured. Its
/// signing took a third of a core, which the raw verify reference never shares.
const PREPARED_INSTRUCTIONS_PER_SECOND: f64 = 10_000.0;
/// At most this many prepared instructions (about 2.5 KB of request each): past it, a long
/// run signs the rest as it goes, and says so.
const MAX_PREPARED_INSTRUCTIONS: usize = 150_000;

/// Signs, before a scenario runs for `run` (warm-up and measurement), the verification
/// requests its cycle will send.
fn prepare_instructions(cycle: &[Work], run: Duration) -> Result<(), LoadError> {
    let share = cycle.iter().filter(|w| w.instructions().is_some()).count() as f64
        / cycle.len().max(1) as f64;
    let wanted = ((run.as_secs_f64() * PREPARED_INSTRUCTIONS_PER_SECOND * share) as usize)
        .min(MAX_PREPARED_INSTRUCTIONS);
    for (v, per_request) in cycle.iter().filter_map(Work::instructions) {
        v.prepare(per_request, wanted.div_ceil(per_request))
            .map_err(|e| LoadError::Setup(format!("cannot sign the instructions: {e}")))?;
    }
    Ok(())
}

/// Drops the prepared requests left over; returns how many requests were signed while the
/// scenario ran (the prepared ones having run out).
fn finish_instructions(cycle: &[Work]) -> u64 {
    cycle
        .iter()
        .filter_map(Work::instructions)
        .map(|(v, _)| v.finish())
        .sum()
}

/// What a verification request is made of.
struct Verifying {
    /// ring signs about three times as fast as the p256 crate here: the client's share of
    /// the two cores goes to the server instead.
    key: ring::signature::EcdsaKeyPair,
    rng: ring::rand::SystemRandom,
    signer: crate::sign::format::SignerCert,
    authorization: String,
    run: u64,
    counter: AtomicU64,
    /// Requests signed before the measurement (see [`Verifying::prepare`]), and of how many
    /// instructions each.
    prepared: std::sync::Mutex<(usize, Vec<Call>)>,
    /// Requests signed during a measurement, the prepared ones having run out.
    signed_late: AtomicU64,
}

impl Verifying {
    /// Signs `wanted` requests of `per_request` instructions each, before they are sent (on
    /// both cores: nothing else runs yet).
    fn prepare(&self, per_request: usize, wanted: usize) -> Result<(), String> {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let calls = std::thread::scope(|s| {
            let workers: Vec<_> = (0..threads)
                .map(|t| {
                    let share = wanted / threads + usize::from(t < wanted % threads);
                    s.spawn(move || {
                        (0..share)
                            .map(|_| self.make(per_request))
                            .collect::<Result<Vec<_>, _>>()
                    })
                })
                .collect();
            let mut calls = Vec::with_capacity(wanted);
            for w in workers {
                calls.extend(
                    w.join()
                        .map_err(|_| "a signing thread panicked".to_string())??,
                );
            }
            Ok::<_, String>(calls)
        })?;
        *self.prepared.lock().unwrap_or_else(|e| e.into_inner()) = (per_request, calls);
        self.signed_late.store(0, Ordering::Relaxed);
        Ok(())
    }

    /// A prepared request of `per_request` instructions, or one signed now when none is left.
    fn take(&self, per_request: usize) -> Result<Call, String> {
        let prepared = {
            let mut stock = self.prepared.lock().unwrap_or_else(|e| e.into_inner());
            if stock.0 == per_request {
                stock.1.pop()
            } else {
                None
            }
        };
        match prepared {
            Some(call) => Ok(call),
            None => {
                self.signed_late.fetch_add(1, Ordering::Relaxed);
                self.make(per_request)
            }
        }
    }

    /// Drops what was not sent; returns how many requests were signed during the measurement.
    fn finish(&self) -> u64 {
        *self.prepared.lock().unwrap_or_else(|e| e.into_inner()) = (0, Vec::new());
        self.signed_late.swap(0, Ordering::Relaxed)
    }

    /// A request of `per_request` fresh instructions, signed now: `POST /v1/verifications`
    /// for one, the batch route for more.
    fn make(&self, per_request: usize) -> Result<Call, String> {
        if per_request == 1 {
            return Ok(self.post("/v1/verifications", self.item()?.to_string()));
        }
        let items = (0..per_request)
            .map(|_| self.item())
            .collect::<Result<Vec<_>, _>>()?;
        let body = serde_json::json!({ "items": items });
        Ok(self.post("/v1/verifications/batch", body.to_string()))
    }

    fn post(&self, path: &str, body: String) -> Call {
        Call {
            method: hyper::Method::POST,
            path: path.into(),
            content_type: Some("application/json"),
            authorization: Some(self.authorization.clone()),
            body: Bytes::from(body),
        }
    }

    /// One verification request's body: a fresh instruction, CMS-signed (detached) now.
    fn item(&self) -> Result<serde_json::Value, String> {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let instruction = serde_json::json!({
            "instruction_id": format!("bench-{}-{n}", self.run),
            "amount": "100.00",
            "currency": "CNY",
            "payee": "6222 0000 0000 0000",
        })
        .to_string();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let cms = crate::sign::format::cms_signed_data(
            crate::sign::format::CmsContent::Detached(instruction.as_bytes()),
            &self.signer,
            now,
            &|bytes| {
                self.key
                    .sign(&self.rng, bytes)
                    .map(|sig| sig.as_ref().to_vec())
                    .map_err(|_| "ring could not sign the instruction".to_string())
            },
        )?;
        let b64 = base64::engine::general_purpose::STANDARD;
        Ok(serde_json::json!({
            "instruction": b64.encode(instruction.as_bytes()),
            "signature": b64.encode(cms),
        }))
    }
}

fn read_token(path: &Path) -> Result<Zeroizing<String>, LoadError> {
    crate::ra::read_token_file(path).map_err(LoadError::Usage)
}

/// A scratch directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(what: &str) -> Result<Scratch, LoadError> {
        let dir = std::env::temp_dir().join(format!(
            "signet-bench-{what}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        std::fs::create_dir_all(&dir)
            .map_err(|e| LoadError::Tool(format!("cannot create {}: {e}", dir.display())))?;
        Ok(Scratch(dir))
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs a helper program; its output on failure.
fn tool(cmd: &mut Command, what: &str) -> Result<Vec<u8>, LoadError> {
    let out = cmd
        .output()
        .map_err(|e| LoadError::Tool(format!("{what}: cannot run: {e}")))?;
    if !out.status.success() {
        return Err(LoadError::Tool(format!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(out.stdout)
}

/// A P-256 key and its CSR (PEM), made by OpenSSL.
fn key_and_csr(scratch: &Scratch) -> Result<(ring::signature::EcdsaKeyPair, String), LoadError> {
    let (key, csr) = (scratch.path("client.key"), scratch.path("client.csr"));
    tool(
        Command::new("openssl")
            .args(["req", "-new", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:P-256", "-nodes", "-subj", "/CN=bench"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&csr),
        "openssl req (bench CSR)",
    )?;
    let read = |p: &Path| {
        std::fs::read_to_string(p)
            .map_err(|e| LoadError::Tool(format!("cannot read {}: {e}", p.display())))
    };
    let key_pem = Zeroizing::new(read(&key)?);
    let pkcs8 = der::pem::decode_vec(key_pem.as_bytes())
        .map(|(_, der)| Zeroizing::new(der))
        .map_err(|e| LoadError::Tool(format!("openssl's key is not PEM: {e}")))?;
    let key = ring::signature::EcdsaKeyPair::from_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
        &pkcs8,
        &ring::rand::SystemRandom::new(),
    )
    .map_err(|e| LoadError::Tool(format!("openssl's key does not parse: {e}")))?;
    Ok((key, read(&csr)?))
}

fn pem_to_der(pem: &str) -> Result<Vec<u8>, LoadError> {
    der::pem::decode_vec(pem.as_bytes())
        .map(|(_, d)| d)
        .map_err(|e| {
            LoadError::Setup(format!(
                "the server sent a certificate that is not PEM: {e}"
            ))
        })
}

/// An OCSP request (SHA-1 CertID, no nonce) for `cert`, issued by `issuer`.
fn ocsp_request(cert_der: &[u8], issuer_der: &[u8]) -> Result<Vec<u8>, LoadError> {
    use crate::ca::ocsp::asn1::{CertId, OcspRequest, Request, TbsRequest};
    let bad = |e: der::Error| LoadError::Setup(format!("cannot build the OCSP request: {e}"));
    let cert = x509_cert::Certificate::from_der(cert_der).map_err(bad)?;
    let issuer = x509_cert::Certificate::from_der(issuer_der).map_err(bad)?;
    let name_hash = sha1::Sha1::digest(issuer.tbs_certificate().subject().to_der().map_err(bad)?);
    let key_hash = sha1::Sha1::digest(
        issuer
            .tbs_certificate()
            .subject_public_key_info()
            .subject_public_key
            .raw_bytes(),
    );
    let req = OcspRequest {
        tbs_request: TbsRequest {
            version: Default::default(),
            requestor_name: None,
            request_list: vec![Request {
                req_cert: CertId {
                    hash_algorithm: spki::AlgorithmIdentifierOwned {
                        oid: const_oid::db::rfc5912::ID_SHA_1,
                        parameters: Some(der::asn1::Null.into()),
                    },
                    issuer_name_hash: der::asn1::OctetString::new(name_hash.to_vec())
                        .map_err(bad)?,
                    issuer_key_hash: der::asn1::OctetString::new(key_hash.to_vec()).map_err(bad)?,
                    serial_number: der::asn1::Int::new(
                        cert.tbs_certificate().serial_number().as_bytes(),
                    )
                    .map_err(bad)?,
                },
                single_request_extensions: None,
            }],
            request_extensions: None,
        },
        optional_signature: None,
    };
    req.to_der().map_err(bad)
}

fn contains(body: &[u8], needle: &[u8]) -> bool {
    body.windows(needle.len()).any(|w| w == needle)
}

fn check(expect: Expect, status: u16, body: &[u8]) -> Result<(), String> {
    let ok = match expect {
        Expect::Created => status == 201,
        Expect::CfsslSuccess => status == 200 && contains(body, b"\"success\":true"),
        Expect::OcspSuccessful => {
            use crate::ca::ocsp::asn1::{OcspResponse, OcspResponseStatus};
            status == 200
                && OcspResponse::from_der(body)
                    .is_ok_and(|r| r.response_status == OcspResponseStatus::Successful)
        }
        Expect::TotalPassed => status == 200 && contains(body, b"\"indication\":\"TOTAL_PASSED\""),
        Expect::AllPassed(n) => {
            status == 200
                && batch_verdicts(body)
                    .is_ok_and(|v| v.len() == n && v.iter().all(|i| i == "TOTAL_PASSED"))
        }
        Expect::AllIssued(n) => {
            status == 200 && batch_issued(body).is_ok_and(|(issued, _)| issued == n)
        }
    };
    if ok {
        Ok(())
    } else if status >= 300 {
        let code = serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v["error"]["code"].as_str().map(str::to_string));
        Err(match code {
            Some(c) => format!("status {status} ({c})"),
            None => format!("status {status}"),
        })
    } else if expect == Expect::TotalPassed {
        let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
        Err(format!(
            "verdict {} {}",
            v["indication"].as_str().unwrap_or("?"),
            v["sub_indication"].as_str().unwrap_or("")
        ))
    } else if let Expect::AllIssued(n) = expect {
        Err(match batch_issued(body) {
            Ok((issued, codes)) => format!("{issued} of {n} issued; {}", codes.join(" ")),
            Err(e) => e,
        })
    } else if let Expect::AllPassed(n) = expect {
        Err(match batch_verdicts(body) {
            Ok(v) if v.len() != n => format!("{} results for {n} instructions", v.len()),
            Ok(v) => format!(
                "verdicts {}",
                v.into_iter()
                    .filter(|i| i != "TOTAL_PASSED")
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
            Err(e) => e,
        })
    } else {
        Err("unexpected answer".into())
    }
}

/// How many results of a certificate batch hold a certificate, and the error codes of the rest.
fn batch_issued(body: &[u8]) -> Result<(usize, Vec<String>), String> {
    #[derive(serde::Deserialize)]
    struct Answer {
        results: Vec<Issued>,
    }
    #[derive(serde::Deserialize)]
    struct Issued {
        serial: Option<String>,
        error: Option<serde_json::Value>,
    }
    let answer: Answer = serde_json::from_slice(body)
        .map_err(|_| "the batch answer is not a list of results".to_string())?;
    let issued = answer.results.iter().filter(|r| r.serial.is_some()).count();
    let codes = answer
        .results
        .iter()
        .filter_map(|r| r.error.as_ref())
        .map(|e| e["code"].as_str().unwrap_or("?").to_string())
        .collect();
    Ok((issued, codes))
}

/// The main indication of each result of a batch answer (`?` for an item that failed).
fn batch_verdicts(body: &[u8]) -> Result<Vec<String>, String> {
    // Typed, so that the rest of each report is skipped rather than built: the client shares
    // the machine with the server it measures.
    #[derive(serde::Deserialize)]
    struct Answer {
        results: Vec<Indication>,
    }
    #[derive(serde::Deserialize)]
    struct Indication {
        indication: Option<String>,
    }
    let answer: Answer = serde_json::from_slice(body)
        .map_err(|_| "the batch answer is not a list of results".to_string())?;
    Ok(answer
        .results
        .into_iter()
        .map(|r| r.indication.unwrap_or_else(|| "?".into()))
        .collect())
}

/// What the setup found out: the requests of each scenario.
struct Plan {
    /// Instructions per request of the verification-batch scenario.
    batch: usize,
    issuance: Work,
    issuance_batch: Work,
    ocsp: Work,
    verification: Option<Work>,
}

impl Plan {
    /// The requests a client sends in turn for `scenario`.
    fn cycle(&self, scenario: Scenario) -> Result<Vec<Work>, LoadError> {
        let no_gateway = || {
            LoadError::Usage(
                "the verification scenario needs --gateway-token-file (a gateway credential)"
                    .into(),
            )
        };
        Ok(match scenario {
            Scenario::Issuance => vec![self.issuance.clone()],
            Scenario::IssuanceBatch => vec![self.issuance_batch.clone()],
            Scenario::Ocsp => vec![self.ocsp.clone()],
            Scenario::Verification => vec![self.verification.clone().ok_or_else(no_gateway)?],
            Scenario::VerificationBatch => match &self.verification {
                Some(Work::Verify(v)) => vec![Work::VerifyBatch(v.clone(), self.batch)],
                _ => return Err(no_gateway()),
            },
            Scenario::Mixed => {
                let mut v = vec![self.issuance.clone()];
                v.extend(self.verification.clone());
                v.extend([self.ocsp.clone(), self.ocsp.clone(), self.ocsp.clone()]);
                v
            }
        })
    }
}

async fn one(conn: &mut Connection, call: &Call, expect: Expect) -> Result<(), String> {
    let answer = conn.send(call).await.map_err(|e| e.to_string())?;
    check(expect, answer.status, &answer.body)
}

/// Sends the setup issuance and returns its JSON answer.
async fn setup_issuance(target: &Target, call: &Call) -> Result<serde_json::Value, LoadError> {
    let mut conn = Connection::open(target).await?;
    let answer = conn.send(call).await?;
    if answer.status != 201 {
        return Err(LoadError::Setup(format!(
            "the server refused the bench's issuance request ({}): {}",
            answer.status,
            String::from_utf8_lossy(&answer.body)
        )));
    }
    serde_json::from_slice(&answer.body)
        .map_err(|e| LoadError::Setup(format!("the issuance answer is not JSON: {e}")))
}

async fn plan(
    options: &Options,
    target: &Target,
    key: ring::signature::EcdsaKeyPair,
    csr: &str,
) -> Result<Plan, LoadError> {
    let token = read_token(&options.token_file)?;
    let issue = Call {
        method: hyper::Method::POST,
        path: "/v1/certificates".into(),
        content_type: Some("application/json"),
        authorization: Some(format!("Bearer {}", token.as_str())),
        body: Bytes::from(
            serde_json::json!({
                "profile": options.profile,
                "csr": csr,
                "subject": options.subject,
            })
            .to_string(),
        ),
    };
    let one_request =
        serde_json::json!({"profile": options.profile, "csr": csr, "subject": options.subject});
    let issue_batch = Call {
        path: "/v1/certificates/batch".into(),
        body: Bytes::from(
            serde_json::json!({ "items": vec![one_request; options.batch] }).to_string(),
        ),
        ..issue.clone()
    };
    // One issuance first: its certificate is the OCSP scenario's known serial and the
    // verification scenario's signer.
    let issued = setup_issuance(target, &issue).await?;
    let cert_pem = issued["certificate"].as_str().unwrap_or_default();
    let issuer_pem = issued["chain"][0].as_str().unwrap_or_default();
    let cert_der = pem_to_der(cert_pem)?;
    let issuer_der = pem_to_der(issuer_pem)?;
    let ocsp = Call {
        method: hyper::Method::POST,
        path: "/ocsp".into(),
        content_type: Some("application/ocsp-request"),
        authorization: None,
        body: Bytes::from(ocsp_request(&cert_der, &issuer_der)?),
    };
    let verification = match &options.gateway_token_file {
        Some(path) => {
            let gateway = read_token(path)?;
            Some(Work::Verify(Arc::new(Verifying {
                key,
                rng: ring::rand::SystemRandom::new(),
                signer: crate::sign::format::SignerCert {
                    certificate_der: cert_der,
                    chain: vec![issuer_der],
                },
                authorization: format!("Bearer {}", gateway.as_str()),
                run: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(0),
                counter: AtomicU64::new(0),
                prepared: std::sync::Mutex::new((0, Vec::new())),
                signed_late: AtomicU64::new(0),
            })))
        }
        None => None,
    };
    Ok(Plan {
        batch: options.batch,
        issuance: Work::Fixed(issue, Expect::Created),
        issuance_batch: Work::Fixed(issue_batch, Expect::AllIssued(options.batch)),
        ocsp: Work::Fixed(ocsp, Expect::OcspSuccessful),
        verification,
    })
}

/// N clients send `cycle` in turn for `duration`; returns what they saw.
async fn drive(
    label: &str,
    target: &Target,
    cycle: &[Work],
    clients: usize,
    duration: Duration,
) -> Result<Measurement, LoadError> {
    let mut conns = Vec::with_capacity(clients);
    for _ in 0..clients {
        conns.push(Connection::open(target).await?);
    }
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::new();
    for (i, mut conn) in conns.into_iter().enumerate() {
        let cycle = cycle.to_vec();
        tasks.push(tokio::spawn(async move {
            let mut lat: Vec<u32> = Vec::with_capacity(4096);
            let mut errors: BTreeMap<String, u64> = BTreeMap::new();
            let mut items = 0u64;
            let mut k = i;
            loop {
                let work = &cycle[k % cycle.len()];
                k += 1;
                let t = Instant::now();
                if t >= deadline {
                    break;
                }
                let outcome = match work {
                    Work::Fixed(call, expect) => one(&mut conn, call, *expect).await,
                    Work::Verify(v) => match v.take(1) {
                        Ok(call) => one(&mut conn, &call, Expect::TotalPassed).await,
                        Err(e) => Err(format!("cannot sign the instruction: {e}")),
                    },
                    Work::VerifyBatch(v, n) => match v.take(*n) {
                        Ok(call) => one(&mut conn, &call, Expect::AllPassed(*n)).await,
                        Err(e) => Err(format!("cannot sign the instructions: {e}")),
                    },
                };
                match outcome {
                    Ok(()) => {
                        lat.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
                        items += work.items();
                    }
                    Err(e) => {
                        let transport = e.starts_with("connection failed");
                        *errors.entry(e).or_default() += 1;
                        if transport {
                            // Reconnect (the server may have closed the connection).
                            match Connection::open(&target_of(&conn)).await {
                                Ok(c) => conn = c,
                                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                            }
                        }
                    }
                }
            }
            (lat, items, errors)
        }));
    }
    let mut lat = Vec::new();
    let mut items = 0;
    let mut errors = BTreeMap::new();
    for t in tasks {
        let (l, n, e) = t
            .await
            .map_err(|e| LoadError::Transport(format!("a client task failed: {e}")))?;
        lat.extend(l);
        items += n;
        for (k, v) in e {
            *errors.entry(k).or_default() += v;
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    lat.sort_unstable();
    let pick = |q: f64| -> f64 {
        if lat.is_empty() {
            return 0.0;
        }
        let i = ((lat.len() as f64 * q).ceil() as usize).clamp(1, lat.len()) - 1;
        lat[i] as f64 / 1000.0
    };
    Ok(Measurement {
        label: label.to_string(),
        ok: lat.len() as u64,
        items,
        seconds,
        latency: Latency {
            p50: pick(0.50),
            p99: pick(0.99),
            max: lat.last().map_or(0.0, |m| *m as f64 / 1000.0),
        },
        errors,
        signed_live: 0,
    })
}

fn target_of(conn: &Connection) -> Target {
    conn.target().clone()
}

/// Raw rates of this machine now, one thread each for about `run`: SoftHSM2 C_Sign with the
/// customer CA key, software p256 signing, and ring's P-256 verify (SHA-256 of a 200-byte
/// message included).
fn raw_rates(config: &Path, run: Duration) -> Result<(f64, f64, f64), LoadError> {
    use p256::ecdsa::signature::Signer;
    let config = crate::config::Config::load(config)
        .map_err(|e| LoadError::Usage(format!("--reference-config: {e}")))?;
    config.apply_environment();
    let hsm = crate::hsm::Hsm::open(config.hsm_config())
        .map_err(|e| LoadError::Setup(format!("cannot open the HSM for the reference: {e}")))?;
    let label = format!(
        "{}-{}",
        config.ca.key_prefix,
        crate::ca::IssuerId::Customer.key_suffix()
    );
    let data = [0x5a_u8; 32];
    let rate = |op: &mut dyn FnMut() -> Result<(), String>| -> Result<f64, LoadError> {
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < run {
            op().map_err(|e| LoadError::Setup(format!("reference signing failed: {e}")))?;
            n += 1;
        }
        Ok(n as f64 / start.elapsed().as_secs_f64())
    };
    // Warm-up: session, key handle.
    hsm.sign_p256_sha256(&label, &data)
        .map_err(|e| LoadError::Setup(format!("reference signing with {label} failed: {e}")))?;
    let raw = raw_sign_rate(&hsm, &label, run)
        .map_err(|e| LoadError::Setup(format!("reference signing failed: {e}")))?;
    let key = p256::ecdsa::SigningKey::from_slice(&[7u8; 32])
        .map_err(|e| LoadError::Setup(e.to_string()))?;
    let soft = rate(&mut || {
        let s: p256::ecdsa::Signature = key.sign(std::hint::black_box(&data));
        std::hint::black_box(s);
        Ok(())
    })?;
    let message = [0x42_u8; 200];
    let signature: p256::ecdsa::DerSignature = key.sign(&message);
    let point = key.verifying_key().to_sec1_point(false);
    let verify = rate(&mut || {
        crate::ecdsa::verify_p256_sha256(
            point.as_bytes(),
            std::hint::black_box(&message),
            signature.as_bytes(),
        )
        .map_err(|e| e.to_string())
    })?;
    Ok((raw, soft, verify))
}

/// Signatures per second of the token's raw C_SignInit and C_Sign with the key `label`, one
/// thread, for about `run`: the reference of issuance. Signed in calls of 64 on one session, so
/// that neither the layer's hand-off to its HSM thread nor a session checkout is counted.
pub fn raw_sign_rate(
    hsm: &crate::hsm::Hsm,
    label: &str,
    run: Duration,
) -> Result<f64, crate::hsm::HsmError> {
    const PER_CALL: usize = 64;
    let data = [0x5a_u8; 32];
    let datas = [&data[..]; PER_CALL];
    let start = Instant::now();
    let mut n = 0usize;
    while start.elapsed() < run {
        std::hint::black_box(hsm.sign_many_p256_sha256(label, std::hint::black_box(&datas))?);
        n += PER_CALL;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// Samples a process's RSS every 100 ms while `f` runs; returns f's output and the peak.
async fn with_rss_peak<T>(
    pid: Option<u32>,
    f: impl std::future::Future<Output = T>,
) -> (T, Option<u64>) {
    let Some(pid) = pid else {
        return (f.await, None);
    };
    let peak = Arc::new(AtomicU64::new(0));
    let p = peak.clone();
    let sampler = tokio::spawn(async move {
        loop {
            if let Some(k) = rss::rss_kib(pid) {
                p.fetch_max(k, Ordering::Relaxed);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let out = f.await;
    sampler.abort();
    if let Some(k) = rss::rss_kib(pid) {
        peak.fetch_max(k, Ordering::Relaxed);
    }
    let v = peak.load(Ordering::Relaxed);
    (out, (v > 0).then_some(v))
}

/// Runs the whole bench. Progress goes to stderr; the report is returned for printing.
pub fn run(options: &Options) -> Result<Report, LoadError> {
    if options.clients == 0 {
        return Err(LoadError::Usage("--clients must be at least 1".into()));
    }
    if options.scenarios.is_empty() {
        return Err(LoadError::Usage("name at least one --scenario".into()));
    }
    if !(1..=crate::api::MAX_BATCH_ITEMS).contains(&options.batch) {
        return Err(LoadError::Usage(format!(
            "--batch must be between 1 and {}",
            crate::api::MAX_BATCH_ITEMS
        )));
    }
    let target = Target::parse(&options.server)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| LoadError::Setup(format!("cannot start the client runtime: {e}")))?;
    let scratch = Scratch::new("client")?;
    let (key, csr) = key_and_csr(&scratch)?;
    let plan = runtime.block_on(plan(options, &target, key, &csr))?;
    let mut cycles = Vec::new();
    for s in &options.scenarios {
        cycles.push((*s, plan.cycle(*s)?));
    }

    let pid = options
        .server_pid
        .or_else(|| target.port().and_then(rss::pid_listening_on));
    let mut report = Report {
        server_pid: pid,
        ..Report::default()
    };
    std::thread::sleep(Duration::from_millis(500));
    report.rss_idle_kib = pid.and_then(rss::rss_kib);

    let mut cfssls = Vec::new();
    if let Some(bin) = &options.cfssl {
        let c = cfssl::Cfssl::start(bin, &options.subject, false)?;
        cfssls.push(("cfssl issuance".to_string(), c));
        if options.cfssl_db {
            let c = cfssl::Cfssl::start(bin, &options.subject, true)?;
            cfssls.push(("cfssl issuance (certdb)".to_string(), c));
        }
    }
    let cfssl_cycles: Vec<_> = cfssls
        .iter()
        .map(|(label, c)| {
            (
                label.clone(),
                c.target.clone(),
                vec![Work::Fixed(c.sign_call(&csr), Expect::CfsslSuccess)],
            )
        })
        .collect();

    let mut peak = 0u64;
    for round in 1..=options.rounds.max(1) {
        if let Some(config) = &options.reference_config {
            let (raw, soft, verify) = raw_rates(config, Duration::from_secs(2))?;
            eprintln!(
                "bench: round {round}: raw SoftHSM2 C_Sign {raw:.0}/s, software p256 {soft:.0}/s, \
                 ring P-256 verify {verify:.0}/s"
            );
            report.raw_hsm.push(raw);
            report.raw_soft.push(soft);
            report.raw_verify.push(verify);
        }
        for (scenario, cycle) in &cycles {
            let label = format!("signet {}", scenario.name());
            // Signed before the warm-up, so that the warm-up leads straight into the measurement.
            prepare_instructions(cycle, options.warmup + options.duration)?;
            runtime.block_on(drive(
                &label,
                &target,
                cycle,
                options.clients,
                options.warmup,
            ))?;
            let (m, p) = runtime.block_on(with_rss_peak(
                pid,
                drive(&label, &target, cycle, options.clients, options.duration),
            ));
            let mut m = m?;
            m.signed_live = finish_instructions(cycle);
            if m.signed_live > 0 {
                eprintln!(
                    "bench: round {round}: {label}: the prepared instructions ran out; {} \
                     requests were signed while it ran",
                    m.signed_live
                );
            }
            peak = peak.max(p.unwrap_or(0));
            eprintln!(
                "bench: round {round}: {label}: {:.0}/s, p99 {:.1} ms, {} errors",
                m.rate(),
                m.latency.p99,
                m.error_count()
            );
            report.runs.entry(label).or_default().push(m);
        }
        for (label, target, cycle) in &cfssl_cycles {
            runtime.block_on(drive(label, target, cycle, options.clients, options.warmup))?;
            let m = runtime.block_on(drive(
                label,
                target,
                cycle,
                options.clients,
                options.duration,
            ))?;
            eprintln!(
                "bench: round {round}: {label}: {:.0}/s, p99 {:.1} ms, {} errors",
                m.rate(),
                m.latency.p99,
                m.error_count()
            );
            report.runs.entry(label.clone()).or_default().push(m);
        }
    }
    report.rss_peak_kib = (peak > 0).then_some(peak);
    drop(cfssls);
    Ok(report)
}

/// The median of some figures (0 when there are none).
pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let m = s.len() / 2;
    if s.len() % 2 == 1 {
        s[m]
    } else {
        (s[m - 1] + s[m]) / 2.0
    }
}

impl Report {
    /// Median requests/s of a label.
    pub fn rate(&self, label: &str) -> Option<f64> {
        let v: Vec<f64> = self.runs.get(label)?.iter().map(|m| m.rate()).collect();
        Some(median(&v))
    }

    /// The report as text: one line per measurement, then references, ratios and memory.
    pub fn render(&self, options: &Options) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let rounds = options.rounds.max(1);
        let _ = writeln!(
            out,
            "signet bench: {} clients, {:.0} s per measurement, {rounds} round(s), medians",
            options.clients,
            options.duration.as_secs_f64()
        );
        let _ = writeln!(
            out,
            "{:<24} {:>10} {:>9} {:>9} {:>9} {:>8}   per round (per s)",
            "measurement", "per s", "p50 ms", "p99 ms", "max ms", "errors"
        );
        if self.runs.keys().any(|l| l.ends_with("-batch")) {
            let _ = writeln!(
                out,
                "(batch rows: items per second, {} per request; latency and errors per request)",
                options.batch
            );
        }
        let _ = writeln!(out, "{}", "-".repeat(100));
        for (label, ms) in &self.runs {
            let med =
                |f: &dyn Fn(&Measurement) -> f64| median(&ms.iter().map(f).collect::<Vec<_>>());
            let errors: u64 = ms.iter().map(|m| m.error_count()).sum();
            let _ = writeln!(
                out,
                "{:<24} {:>10.0} {:>9.1} {:>9.1} {:>9.1} {:>8}   {}",
                label,
                med(&|m| m.rate()),
                med(&|m| m.latency.p50),
                med(&|m| m.latency.p99),
                ms.iter().map(|m| m.latency.max).fold(0.0, f64::max),
                errors,
                ms.iter()
                    .map(|m| format!("{:.0}", m.rate()))
                    .collect::<Vec<_>>()
                    .join("  ")
            );
            let mut kinds: BTreeMap<&str, u64> = BTreeMap::new();
            for m in ms {
                for (k, v) in &m.errors {
                    *kinds.entry(k.as_str()).or_default() += v;
                }
            }
            for (k, v) in kinds {
                let _ = writeln!(out, "{:<24}   error: {v} x {k}", "");
            }
            let live: u64 = ms.iter().map(|m| m.signed_live).sum();
            if live > 0 {
                let _ = writeln!(
                    out,
                    "{:<24}   note: {live} requests signed while measured (the prepared ones ran out)",
                    ""
                );
            }
        }
        if !self.raw_hsm.is_empty() {
            let _ = writeln!(
                out,
                "{:<24} {:>10.0}   (one thread, customer CA key)   per round: {}",
                "raw SoftHSM2 C_Sign",
                median(&self.raw_hsm),
                self.raw_hsm
                    .iter()
                    .map(|r| format!("{r:.0}"))
                    .collect::<Vec<_>>()
                    .join("  ")
            );
            let _ = writeln!(
                out,
                "{:<24} {:>10.0}   (one thread)",
                "software p256 sign",
                median(&self.raw_soft)
            );
        }
        if !self.raw_verify.is_empty() {
            let _ = writeln!(
                out,
                "{:<24} {:>10.0}   (one thread, ring, as the server verifies)",
                "raw P-256 verify",
                median(&self.raw_verify)
            );
        }
        let _ = writeln!(out, "{}", "-".repeat(100));
        let raw = (!self.raw_hsm.is_empty()).then(|| median(&self.raw_hsm));
        let verify = (!self.raw_verify.is_empty()).then(|| median(&self.raw_verify));
        let (cfssl, cfssl_db) = (
            self.rate("cfssl issuance"),
            self.rate("cfssl issuance (certdb)"),
        );
        let b = options.batch;
        // (line, Signet measurement, reference, as a percentage rather than a factor, note)
        let ratios = [
            (
                "issuance Signet/CFSSL",
                "signet issuance",
                cfssl,
                false,
                "target >= 1.0, aim 1.2".to_string(),
            ),
            (
                "issuance Signet/CFSSL+db",
                "signet issuance",
                cfssl_db,
                false,
                "CFSSL recording each certificate too".into(),
            ),
            (
                "issuance / raw HSM sign",
                "signet issuance",
                raw,
                true,
                "target >= 40%".into(),
            ),
            (
                "batch issuance / CFSSL",
                "signet issuance-batch",
                cfssl,
                false,
                format!("{b} per Signet request; CFSSL one per request"),
            ),
            (
                "batch issuance / raw sign",
                "signet issuance-batch",
                raw,
                true,
                format!("{b} per request; each durable and audited"),
            ),
            (
                "verification / raw verify",
                "signet verification",
                verify,
                true,
                "target >= 50%: replay guard and audit included".into(),
            ),
            (
                "batch verification / raw",
                "signet verification-batch",
                verify,
                true,
                format!("{b} instructions per request; replay guard and audit of each included"),
            ),
            (
                "OCSP / raw HSM sign",
                "signet ocsp",
                raw,
                false,
                "target >= 1.5".into(),
            ),
        ];
        for (line, measured, reference, percent, note) in ratios {
            let (Some(s), Some(r)) = (self.rate(measured), reference) else {
                continue;
            };
            if r <= 0.0 {
                continue;
            }
            let figure = if percent {
                format!("{:>8.1}%", 100.0 * s / r)
            } else {
                format!("{:>8.2}x", s / r)
            };
            let _ = writeln!(out, "{line:<27}{figure}   ({note})");
        }
        match (self.server_pid, self.rss_idle_kib, self.rss_peak_kib) {
            (Some(pid), idle, peak) => {
                let mib = |k: Option<u64>| {
                    k.map_or("unknown".to_string(), |k| {
                        format!("{:.1} MiB", k as f64 / 1024.0)
                    })
                };
                let _ = writeln!(
                    out,
                    "server RSS (pid {pid})       idle {}, peak under load {}   (targets < 64 MiB, < 256 MiB)",
                    mib(idle),
                    mib(peak)
                );
            }
            (None, _, _) => {
                let _ = writeln!(out, "server RSS: unknown (give --server-pid)");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn served(label: &str, items: u64) -> Measurement {
        Measurement {
            label: label.into(),
            ok: items,
            items,
            seconds: 1.0,
            ..Measurement::default()
        }
    }

    fn options() -> Options {
        Options {
            server: "http://127.0.0.1:1".into(),
            token_file: PathBuf::new(),
            gateway_token_file: None,
            scenarios: Vec::new(),
            clients: 8,
            batch: 16,
            duration: Duration::from_secs(1),
            warmup: Duration::from_secs(1),
            rounds: 1,
            server_pid: None,
            cfssl: None,
            cfssl_db: false,
            reference_config: None,
            profile: "customer".into(),
            subject: "CN=x".into(),
        }
    }

    #[test]
    fn each_ratio_is_a_signet_median_over_its_reference_of_the_same_run() {
        let mut report = Report {
            raw_hsm: vec![10_000.0, 8_000.0, 12_000.0],
            raw_verify: vec![20_000.0],
            ..Report::default()
        };
        for (label, per_second) in [
            ("signet issuance", 2_000),
            ("signet issuance-batch", 4_500),
            ("cfssl issuance", 4_000),
            ("cfssl issuance (certdb)", 1_000),
            ("signet verification", 5_000),
            ("signet verification-batch", 12_000),
            ("signet ocsp", 25_000),
        ] {
            report
                .runs
                .insert(label.into(), vec![served(label, per_second)]);
        }
        let text = report.render(&options());
        let line = |start: &str| {
            text.lines()
                .find(|l| l.starts_with(start))
                .unwrap_or_else(|| panic!("no {start:?} line in\n{text}"))
                .to_string()
        };
        // Raw C_Sign's median is 10,000/s; ring's 20,000/s.
        assert!(line("issuance Signet/CFSSL ").contains("    0.50x"));
        assert!(line("issuance Signet/CFSSL+db").contains("    2.00x"));
        assert!(line("issuance / raw HSM sign").contains("    20.0%   (target >= 40%)"));
        assert!(line("batch issuance / CFSSL").contains("    1.12x   (16 per Signet request"));
        assert!(line("batch issuance / raw sign").contains("    45.0%"));
        assert!(line("verification / raw verify").contains("    25.0%"));
        assert!(line("batch verification / raw").contains("    60.0%"));
        assert!(line("OCSP / raw HSM sign").contains("    2.50x   (target >= 1.5)"));
    }

    #[test]
    fn a_ratio_without_its_reference_is_not_printed() {
        let mut report = Report::default();
        report.runs.insert(
            "signet issuance".into(),
            vec![served("signet issuance", 2_000)],
        );
        let text = report.render(&options());
        assert!(!text.contains("raw HSM sign"), "{text}");
        assert!(!text.contains("CFSSL"), "{text}");
    }
}
