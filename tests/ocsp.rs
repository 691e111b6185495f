//! The OCSP responder (RFC 6960) in-process against the fixture's SoftHSM2 token and store,
//! checked with the OpenSSL command line: `openssl ocsp -reqout` makes the requests,
//! `Authority::ocsp_respond` answers them, `openssl ocsp -respin` verifies and prints the answers.
//! pkilint's `lint_ocsp_response` lints a good, a revoked and a malformedRequest response.
//!
//! How OpenSSL is asked to verify matters. The response carries no certificates (the issuing CA
//! signs it), so `openssl ocsp` must get the signer's certificate elsewhere. Given `-issuer`, it
//! first tries `-verify_other`/the response's certificates and, when that fails, verifies again
//! trusting the `-issuer` certificate outright (OCSP_TRUSTOTHER): "Response verify OK" then
//! proves the signature but no chain, even with an unrelated `-CAfile`. So each response is
//! verified strictly first, without `-issuer`: `-reqin <request> -verify_other <issuing CA>
//! -CAfile root.pem` (signature, chain to the root, CertIDs and nonce against the request), and
//! only then read per certificate with `-issuer ... -cert ...`.

mod common;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};

use common::*;
use signet::app::Signet;
use signet::ca::ocsp::{OcspAnswer, OcspOutcome};
use signet::ca::Fault;
use signet::clock::Clock;
use signet::config::Config;

/// One `Signet` per test binary: a process holds one PKCS#11 context per module.
fn signet() -> &'static Signet {
    static SIGNET: OnceLock<Signet> = OnceLock::new();
    SIGNET.get_or_init(|| {
        let f = fixture();
        let config = Config::load(&f.config).expect("fixture config loads");
        // SAFETY of set_var: first use in this binary, under the OnceLock.
        std::env::set_var("SOFTHSM2_CONF", &f.softhsm2_conf);
        Signet::open(config, Clock::system(), Fault::None).expect("signet opens")
    })
}

/// The test that voids interrupted issuances (a clock-shifted `signet crl`) voids every pending
/// record of the shared store: it runs alone, the others may issue side by side.
static VOIDING: RwLock<()> = RwLock::new(());

fn shared() -> RwLockReadGuard<'static, ()> {
    VOIDING.read().unwrap_or_else(|e| e.into_inner())
}

fn alone() -> RwLockWriteGuard<'static, ()> {
    VOIDING.write().unwrap_or_else(|e| e.into_inner())
}

/// An OCSP request made by `openssl ocsp ... -reqout`.
struct Query {
    /// The `-issuer`/`-cert`/`-serial` arguments that made it.
    id: Vec<OsString>,
    req: PathBuf,
    /// The CA expected to sign the answer.
    signer: PathBuf,
}

/// `openssl ocsp <id> [-no_nonce] -reqout F`.
fn query(signer: &Path, id: &[OsString], nonce: bool) -> Query {
    let req = fixture().path("req.der");
    let mut all = vec![OsString::from("ocsp")];
    all.extend_from_slice(id);
    if !nonce {
        all.push("-no_nonce".into());
    }
    all.extend(args!["-reqout", &req]);
    openssl(&all).assert_ok();
    Query {
        id: id.to_vec(),
        req,
        signer: signer.to_path_buf(),
    }
}

impl Query {
    /// Answers the request in-process; writes the response to a file.
    fn respond(&self) -> (OcspAnswer, PathBuf) {
        respond_bytes(&std::fs::read(&self.req).expect("read request"))
    }

    /// Verifies a successful response strictly, then returns what `openssl ocsp -issuer ...
    /// -cert ...` prints of it (one status line per certificate).
    #[track_caller]
    fn check(&self, resp: &Path) -> Out {
        let f = fixture();
        let strict = verify_strict(resp, &self.req, &self.signer, &f.ca("root.pem"));
        assert_verified(&strict);
        let mut all = args![
            "ocsp",
            "-respin",
            resp,
            "-CAfile",
            f.ca("root.pem"),
            "-verify_other",
            &self.signer,
            "-resp_text",
            "-no_nonce"
        ]
        .to_vec();
        all.extend_from_slice(&self.id);
        let out = openssl(&all);
        assert_verified(&out);
        out
    }
}

fn respond_bytes(der: &[u8]) -> (OcspAnswer, PathBuf) {
    let answer = signet().authority.ocsp_respond(der);
    let resp = fixture().path("resp.der");
    std::fs::write(&resp, &answer.der).expect("write response");
    (answer, resp)
}

/// `openssl ocsp -respin <resp> -reqin <req> -verify_other <signer> -CAfile <anchor>`: checks
/// the signature, the signer's chain to the anchor, and the response against the request
/// (CertIDs, nonce). No `-issuer`, hence no fallback that trusts the signer outright.
fn verify_strict(resp: &Path, req: &Path, signer: &Path, anchor: &Path) -> Out {
    openssl(&args![
        "ocsp",
        "-respin",
        resp,
        "-reqin",
        req,
        "-verify_other",
        signer,
        "-CAfile",
        anchor,
        "-resp_text"
    ])
}

/// What `openssl ocsp -respin` prints of a response without verifying it (for failures).
fn read_unverified(resp: &Path) -> Out {
    openssl(&args!["ocsp", "-respin", resp, "-resp_text", "-noverify"])
}

#[track_caller]
fn assert_verified(out: &Out) {
    assert!(
        out.success() && out.stderr.contains("Response verify OK"),
        "openssl did not verify the response\n{}",
        out.describe()
    );
    assert!(
        !out.stderr.contains("WARNING") && !out.stderr.contains("error"),
        "openssl warned\n{}",
        out.describe()
    );
}

#[track_caller]
fn assert_refused(out: &Out) {
    assert!(
        !out.success() && out.stderr.contains("Response Verify Failure"),
        "openssl accepted the response\n{}",
        out.describe()
    );
}

/// The status line `openssl ocsp` prints for `name` (`<name>: good`, ...), and the lines under it.
#[track_caller]
fn status_of(out: &Out, name: impl AsRef<Path>) -> String {
    let prefix = format!("{}: ", name.as_ref().display());
    let mut lines = out.stdout.lines().skip_while(|l| !l.starts_with(&prefix));
    let first = lines
        .next()
        .unwrap_or_else(|| panic!("no status line for {prefix}\n{}", out.describe()));
    let mut block = first[prefix.len()..].to_string();
    for l in lines.take_while(|l| l.starts_with('\t')) {
        block.push('\n');
        block.push_str(l.trim());
    }
    block
}

#[test]
fn good_customer_certificate() {
    let _g = shared();
    let f = fixture();
    let issued = f.issue_customer();
    let customer_ca = f.ca("customer-ca.pem");
    let q = query(
        &customer_ca,
        &args!["-issuer", &customer_ca, "-cert", &issued.leaf],
        false,
    );
    let before = now_unix() as i64;
    let (answer, resp) = q.respond();
    let after = now_unix() as i64;
    assert_eq!(answer.status, OcspOutcome::Successful);
    assert!(!answer.has_nonce);
    let ttl = i64::from(signet().authority.settings().crl_next_update_hours) * 3600;
    let next = answer.next_update.expect("next update");
    assert!(
        (before + ttl..=after + ttl).contains(&next),
        "nextUpdate {next} is not now + {ttl} s"
    );
    let out = q.check(&resp);
    let status = status_of(&out, &issued.leaf);
    assert!(
        status.starts_with("good") && status.contains("Next Update: "),
        "{status}\n{}",
        out.describe()
    );
    // The CA signs directly: ResponderID byKey, no certificates in the response.
    assert!(
        out.stdout.contains("Responder Id: ") && !out.stdout.contains("Certificate:\n"),
        "{}",
        out.describe()
    );
    assert!(out
        .stdout
        .contains("Signature Algorithm: ecdsa-with-SHA256"));

    // The plain command line (-issuer, -CAfile root.pem, no -verify_other) says the same.
    let plain = openssl(&args![
        "ocsp",
        "-respin",
        &resp,
        "-issuer",
        &customer_ca,
        "-cert",
        &issued.leaf,
        "-no_nonce",
        "-CAfile",
        f.ca("root.pem"),
        "-resp_text"
    ]);
    assert_verified(&plain);
    assert!(status_of(&plain, &issued.leaf).starts_with("good"));
}

#[test]
fn openssl_checks_the_signature_and_the_chain_to_the_root() {
    let _g = shared();
    let f = fixture();
    let issued = f.issue_customer();
    let customer_ca = f.ca("customer-ca.pem");
    let q = query(
        &customer_ca,
        &args!["-issuer", &customer_ca, "-cert", &issued.leaf],
        false,
    );
    let (answer, resp) = q.respond();
    assert_eq!(answer.status, OcspOutcome::Successful);
    assert_verified(&verify_strict(
        &resp,
        &q.req,
        &customer_ca,
        &f.ca("root.pem"),
    ));

    // Another trust anchor: the responder's chain does not lead to it.
    let unrelated = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/ocsp/issuer.pem");
    assert_refused(&verify_strict(&resp, &q.req, &customer_ca, &unrelated));
    // Signed by the customer CA, not the teller CA.
    assert_refused(&verify_strict(
        &resp,
        &q.req,
        &f.ca("teller-ca.pem"),
        &f.ca("root.pem"),
    ));
    // One bit of the signature changed (its last octet ends the response).
    let mut tampered = answer.der.clone();
    *tampered.last_mut().unwrap() ^= 1;
    let bad = f.path("tampered.der");
    std::fs::write(&bad, &tampered).unwrap();
    assert_refused(&verify_strict(
        &bad,
        &q.req,
        &customer_ca,
        &f.ca("root.pem"),
    ));
}

#[test]
fn sha256_cert_ids_are_answered_too() {
    let _g = shared();
    let f = fixture();
    let issued = f.issue_customer();
    let customer_ca = f.ca("customer-ca.pem");
    let q = query(
        &customer_ca,
        &args!["-sha256", "-issuer", &customer_ca, "-cert", &issued.leaf],
        false,
    );
    let (answer, resp) = q.respond();
    assert_eq!(answer.status, OcspOutcome::Successful);
    let out = q.check(&resp);
    assert!(
        out.stdout.contains("Hash Algorithm: sha256"),
        "{}",
        out.describe()
    );
    assert!(status_of(&out, &issued.leaf).starts_with("good"));
}

#[test]
fn the_nonce_is_echoed_and_openssl_checks_it() {
    let _g = shared();
    let f = fixture();
    let issued = f.issue_customer();
    let customer_ca = f.ca("customer-ca.pem");
    let id = args!["-issuer", &customer_ca, "-cert", &issued.leaf];
    let q = query(&customer_ca, &id, true);
    let (answer, resp) = q.respond();
    assert_eq!(answer.status, OcspOutcome::Successful);
    assert!(answer.has_nonce);
    // The strict check compares the response's nonce with the request's.
    let out = q.check(&resp);
    assert!(out.stdout.contains("OCSP Nonce:"), "{}", out.describe());
    assert!(status_of(&out, &issued.leaf).starts_with("good"));
    // Against another request (another random nonce), openssl refuses the response.
    let other = query(&customer_ca, &id, true);
    let out = verify_strict(&resp, &other.req, &customer_ca, &f.ca("root.pem"));
    assert!(
        !out.success() && out.stderr.contains("Nonce Verify error"),
        "a response to another nonce passed\n{}",
        out.describe()
    );
}

#[test]
fn revoked_for_key_compromise() {
    let _g = shared();
    let f = fixture();
    let issued = f.issue_customer();
    f.signet(&args![
        "revoke",
        "--serial",
        &issued.serial,
        "--reason",
        "keyCompromise"
    ])
    .assert_ok();
    let customer_ca = f.ca("customer-ca.pem");
    let q = query(
        &customer_ca,
        &args!["-issuer", &customer_ca, "-cert", &issued.leaf],
        false,
    );
    let (answer, resp) = q.respond();
    assert_eq!(answer.status, OcspOutcome::Successful);
    let out = q.check(&resp);
    let status = status_of(&out, &issued.leaf);
    assert!(
        status.starts_with("revoked")
            && status.contains("Reason: keyCompromise")
            && status.contains("Revocation Time: "),
        "{status}\n{}",
        out.describe()
    );
}

#[test]
fn teller_certificate_on_hold_is_revoked_with_certificate_hold_then_good_once_released() {
    let _g = shared();
    let f = fixture();
    let issued = f.issue_teller();
    let teller_ca = f.ca("teller-ca.pem");
    let q = query(
        &teller_ca,
        &args!["-issuer", &teller_ca, "-cert", &issued.leaf],
        false,
    );

    f.signet(&args!["hold", "--serial", &issued.serial])
        .assert_ok();
    let (_, resp) = q.respond();
    let out = q.check(&resp);
    let status = status_of(&out, &issued.leaf);
    assert!(
        status.starts_with("revoked") && status.contains("Reason: certificateHold"),
        "{status}\n{}",
        out.describe()
    );

    f.signet(&args!["release", "--serial", &issued.serial])
        .assert_ok();
    let (_, resp) = q.respond();
    let out = q.check(&resp);
    assert!(
        status_of(&out, &issued.leaf).starts_with("good"),
        "{}",
        out.describe()
    );
}

#[test]
fn a_serial_never_issued_is_unknown() {
    let _g = shared();
    let f = fixture();
    let customer_ca = f.ca("customer-ca.pem");
    let serial = "0x1234567890abcdef1234567890abcdef";
    let q = query(
        &customer_ca,
        &args!["-issuer", &customer_ca, "-serial", serial],
        false,
    );
    let (answer, resp) = q.respond();
    assert_eq!(answer.status, OcspOutcome::Successful);
    let out = q.check(&resp);
    assert!(
        status_of(&out, serial).starts_with("unknown"),
        "{}",
        out.describe()
    );
}

#[test]
fn a_serial_of_another_signet_issuer_is_unknown() {
    let _g = shared();
    let f = fixture();
    let issued = f.issue_customer();
    // The customer certificate's serial, asked of the teller CA.
    let teller_ca = f.ca("teller-ca.pem");
    let serial = format!("0x{}", issued.serial);
    let q = query(
        &teller_ca,
        &args!["-issuer", &teller_ca, "-serial", &serial],
        false,
    );
    let (answer, resp) = q.respond();
    assert_eq!(answer.status, OcspOutcome::Successful);
    let out = q.check(&resp);
    assert!(
        status_of(&out, &serial).starts_with("unknown"),
        "{}",
        out.describe()
    );
}

#[test]
fn several_certificates_in_one_request_each_get_their_status() {
    let _g = shared();
    let f = fixture();
    let good = f.issue_customer();
    let revoked = f.issue_customer();
    f.signet(&args![
        "revoke",
        "--serial",
        &revoked.serial,
        "--reason",
        "superseded"
    ])
    .assert_ok();
    let customer_ca = f.ca("customer-ca.pem");
    let never = "0x0badc0ffee0badc0ffee0badc0ffee01";
    let q = query(
        &customer_ca,
        &args![
            "-issuer",
            &customer_ca,
            "-cert",
            &good.leaf,
            "-cert",
            &revoked.leaf,
            "-serial",
            never
        ],
        true,
    );
    let (answer, resp) = q.respond();
    assert_eq!(answer.status, OcspOutcome::Successful);
    assert!(answer.has_nonce);
    let out = q.check(&resp);
    assert!(status_of(&out, &good.leaf).starts_with("good"));
    let r = status_of(&out, &revoked.leaf);
    assert!(
        r.starts_with("revoked") && r.contains("Reason: superseded"),
        "{r}"
    );
    assert!(status_of(&out, never).starts_with("unknown"));
}

#[test]
fn the_root_answers_for_the_issuing_ca_certificates() {
    let _g = shared();
    let f = fixture();
    let root = f.ca("root.pem");
    // The root's key usage allows the signature of these answers.
    let usage = openssl(&args!["x509", "-in", &root, "-noout", "-ext", "keyUsage"]);
    usage.assert_ok();
    assert!(
        usage.stdout.contains("Digital Signature"),
        "the root signs OCSP answers but its keyUsage lacks digitalSignature:\n{}",
        usage.stdout
    );
    for ca in ["customer-ca.pem", "teller-ca.pem"] {
        let q = query(&root, &args!["-issuer", &root, "-cert", f.ca(ca)], false);
        let (answer, resp) = q.respond();
        assert_eq!(answer.status, OcspOutcome::Successful);
        let out = q.check(&resp);
        assert!(
            status_of(&out, f.ca(ca)).starts_with("good"),
            "{}",
            out.describe()
        );
    }
}

#[test]
fn an_issuer_that_is_not_ours_or_a_mix_of_issuers_is_unauthorized() {
    let _g = shared();
    let f = fixture();
    // A request made by openssl for a throwaway CA (tests/data/ocsp).
    let foreign =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/ocsp/req-sha1.der"))
            .unwrap();
    let (answer, resp) = respond_bytes(&foreign);
    assert_eq!(answer.status, OcspOutcome::Unauthorized);
    assert_eq!(answer.der, [0x30, 0x03, 0x0a, 0x01, 0x06]);
    let out = read_unverified(&resp);
    assert!(
        out.stdout.contains("Responder Error: unauthorized (6)"),
        "{}",
        out.describe()
    );

    let customer = f.issue_customer();
    let teller = f.issue_teller();
    let mixed = query(
        &f.ca("customer-ca.pem"),
        &args![
            "-issuer",
            f.ca("customer-ca.pem"),
            "-cert",
            &customer.leaf,
            "-issuer",
            f.ca("teller-ca.pem"),
            "-cert",
            &teller.leaf
        ],
        false,
    );
    let (answer, resp) = mixed.respond();
    assert_eq!(answer.status, OcspOutcome::Unauthorized);
    assert!(read_unverified(&resp)
        .stdout
        .contains("Responder Error: unauthorized (6)"));
}

#[test]
fn garbage_and_oversized_requests_get_malformed_request() {
    let _g = shared();
    for bad in [
        b"not an OCSP request".to_vec(),
        Vec::new(),
        vec![0x30; 8 * 1024 + 1],
        vec![0x30, 0x84, 0xff, 0xff, 0xff, 0xff],
    ] {
        let (answer, resp) = respond_bytes(&bad);
        assert_eq!(answer.status, OcspOutcome::MalformedRequest);
        assert!(!answer.has_nonce && answer.next_update.is_none());
        let out = read_unverified(&resp);
        assert!(
            out.stdout.contains("Responder Error: malformedrequest (1)"),
            "{}",
            out.describe()
        );
    }
}

#[test]
fn pending_is_unknown_and_voided_is_revoked_without_reason() {
    let _alone = alone();
    let f = fixture();
    // An issuance interrupted after recording: pending in the store.
    let csr = f.csr(KeyKind::P256);
    let out = f.signet_with(
        &f.config,
        &[("SIGNET_FAULT", "after-record".to_string())],
        &args![
            "issue",
            "--profile",
            "customer",
            "--csr",
            &csr,
            "--subject",
            "CN=Interrupted,serialNumber=I1",
            "--out",
            f.path("interrupted.pem")
        ],
    );
    out.assert_refused();
    let serial = serial_from_stderr(&out).expect("serial on stderr");
    assert_eq!(cert_status(&f.db, &serial).as_deref(), Some("pending"));
    let customer_ca = f.ca("customer-ca.pem");
    let hex_serial = format!("0x{serial}");
    let q = query(
        &customer_ca,
        &args!["-issuer", &customer_ca, "-serial", &hex_serial],
        false,
    );
    let (_, resp) = q.respond();
    let out = q.check(&resp);
    assert!(
        status_of(&out, &hex_serial).starts_with("unknown"),
        "{}",
        out.describe()
    );

    // Once the issuance timeout has passed, the next start voids it.
    let later = now_unix() + ISSUANCE_TIMEOUT_SECS + 10;
    f.crl_with(
        &f.config,
        &[("SIGNET_FAKE_NOW", later.to_string())],
        "customer",
    );
    assert_eq!(cert_status(&f.db, &serial).as_deref(), Some("void"));
    let (_, resp) = q.respond();
    let out = q.check(&resp);
    let status = status_of(&out, &hex_serial);
    assert!(
        status.starts_with("revoked") && !status.contains("Reason:"),
        "{status}\n{}",
        out.describe()
    );
}

#[test]
fn pkilint_finds_nothing_wrong_with_good_revoked_and_malformed_request_responses() {
    let _g = shared();
    let f = fixture();
    let customer_ca = f.ca("customer-ca.pem");
    let good = f.issue_customer();
    let (_, good_resp) = query(
        &customer_ca,
        &args!["-issuer", &customer_ca, "-cert", &good.leaf],
        true,
    )
    .respond();
    let revoked = f.issue_customer();
    f.signet(&args![
        "revoke",
        "--serial",
        &revoked.serial,
        "--reason",
        "keyCompromise"
    ])
    .assert_ok();
    let (_, revoked_resp) = query(
        &customer_ca,
        &args!["-issuer", &customer_ca, "-cert", &revoked.leaf],
        false,
    )
    .respond();
    let (_, malformed_resp) = respond_bytes(b"not an OCSP request");
    for resp in [&good_resp, &revoked_resp, &malformed_resp] {
        let out = pkilint("lint_ocsp_response", &args!["lint", "-s", "ERROR", resp]);
        assert_lint_clean(&out);
        // Everything below ERROR too, for the record (shown with --nocapture).
        let all = pkilint("lint_ocsp_response", &args!["lint", "-s", "DEBUG", resp]);
        println!("pkilint {}:\n{}", resp.display(), all.stdout);
    }
}
