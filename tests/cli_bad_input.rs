//! Bad input and bad configuration: a non-zero exit with a reason on stderr,
//! never a panic, never a certificate.

mod common;

use common::*;
use std::fs;
use std::path::{Path, PathBuf};

const CUSTOMER_SUBJECT: &str = "CN=张三,serialNumber=110101199003071234";

fn issue_args(profile: &str, csr: &Path, subject: &str, out: &Path) -> Vec<std::ffi::OsString> {
    args![
        "issue",
        "--profile",
        profile,
        "--csr",
        csr,
        "--subject",
        subject,
        "--out",
        out
    ]
    .to_vec()
}

/// `signet issue` that must be refused; checks nothing was written to --out.
fn assert_issue_refused(
    f: &Fixture,
    config: &Path,
    profile: &str,
    csr: &Path,
    subject: &str,
) -> Out {
    let out_file = f.path("refused.pem");
    let out = f.signet_with(config, &[], &issue_args(profile, csr, subject, &out_file));
    out.assert_refused();
    let written = fs::read_to_string(&out_file).unwrap_or_default();
    assert!(
        !written.contains("BEGIN CERTIFICATE"),
        "refused but wrote a certificate to --out\n{}",
        out.describe()
    );
    out
}

fn to_der(csr_pem: &Path, f: &Fixture) -> Vec<u8> {
    let der = f.path("csr.der");
    openssl(&args![
        "req", "-in", csr_pem, "-outform", "DER", "-out", &der
    ])
    .assert_ok();
    fs::read(der).unwrap()
}

#[test]
fn issue_refuses_a_file_that_is_not_a_csr() {
    let f = fixture();
    let junk = f.path("junk.csr");
    fs::write(&junk, "this is not a certificate signing request\n").unwrap();
    assert_issue_refused(f, &f.config, "customer", &junk, CUSTOMER_SUBJECT);
}

#[test]
fn issue_refuses_a_certificate_given_as_csr() {
    let f = fixture();
    assert_issue_refused(
        f,
        &f.config,
        "customer",
        &f.ca("customer-ca.pem"),
        CUSTOMER_SUBJECT,
    );
}

#[test]
fn issue_refuses_a_missing_csr_file() {
    let f = fixture();
    let missing: PathBuf = f.path("does-not-exist.csr");
    assert_issue_refused(f, &f.config, "customer", &missing, CUSTOMER_SUBJECT);
}

#[test]
fn issue_refuses_a_csr_whose_signature_does_not_match_its_key() {
    let f = fixture();
    let csr = f.csr(KeyKind::P256);
    let mut der = to_der(&csr, f);
    // The signature BIT STRING is last; its last byte is the end of ECDSA's s.
    *der.last_mut().unwrap() ^= 0x01;
    let der_file = f.path("tampered.der");
    fs::write(&der_file, &der).unwrap();
    let tampered = f.path("tampered.csr");
    openssl(&args![
        "req", "-inform", "DER", "-in", &der_file, "-out", &tampered
    ])
    .assert_ok();
    // OpenSSL agrees that the signature is now bad.
    let check = openssl(&args!["req", "-in", &tampered, "-verify", "-noout"]);
    // (OpenSSL 3.0 `req -verify` exits 0 even when the check fails.)
    assert!(
        !check.success() || check.stderr.contains("verify failure"),
        "tampering did not break the signature\n{}",
        check.describe()
    );

    assert_issue_refused(f, &f.config, "customer", &tampered, CUSTOMER_SUBJECT);
}

#[test]
fn issue_refuses_an_rsa_1024_key_when_the_profile_allows_p256() {
    let f = fixture();
    let csr = f.csr(KeyKind::Rsa1024);
    assert_issue_refused(f, &f.config, "customer", &csr, CUSTOMER_SUBJECT);
}

#[test]
fn issue_refuses_a_p384_key_when_the_profile_allows_p256() {
    let f = fixture();
    let csr = f.csr(KeyKind::P384);
    assert_issue_refused(f, &f.config, "customer", &csr, CUSTOMER_SUBJECT);
}

#[test]
fn issue_refuses_an_unknown_profile() {
    let f = fixture();
    let csr = f.csr(KeyKind::P256);
    let out = assert_issue_refused(f, &f.config, "admin", &csr, CUSTOMER_SUBJECT);
    out.assert_stderr_mentions("admin");
}

#[test]
fn issue_refuses_a_csr_under_a_profile_whose_key_lives_in_the_hsm() {
    let f = fixture();
    let csr = f.csr(KeyKind::P256);
    for profile in ["seal", "teller-hsm"] {
        let out = assert_issue_refused(f, &f.config, profile, &csr, "CN=Bank Seal");
        out.assert_stderr_mentions("never from a CSR");
    }
}

#[test]
fn customer_issue_refuses_a_subject_without_serial_number() {
    let f = fixture();
    let csr = f.csr(KeyKind::P256);
    let out = assert_issue_refused(f, &f.config, "customer", &csr, "CN=张三");
    out.assert_stderr_mentions("serialNumber");
}

#[test]
fn customer_issue_refuses_a_subject_without_common_name() {
    let f = fixture();
    let csr = f.csr(KeyKind::P256);
    let out = assert_issue_refused(
        f,
        &f.config,
        "customer",
        &csr,
        "serialNumber=110101199003071234",
    );
    assert!(
        out.stderr.contains("CN") || out.stderr.to_lowercase().contains("common"),
        "stderr does not name the missing CN\n{}",
        out.describe()
    );
}

#[test]
fn teller_issue_refuses_a_subject_without_branch_ou() {
    let f = fixture();
    let csr = f.csr(KeyKind::P256);
    let out = assert_issue_refused(
        f,
        &f.config,
        "teller",
        &csr,
        "CN=李四,serialNumber=E0012345",
    );
    assert!(
        out.stderr.contains("OU") || out.stderr.to_lowercase().contains("organizational"),
        "stderr does not name the missing OU\n{}",
        out.describe()
    );
}

#[test]
fn issue_refuses_a_subject_that_is_not_an_rfc4514_dn() {
    let f = fixture();
    let csr = f.csr(KeyKind::P256);
    assert_issue_refused(f, &f.config, "customer", &csr, "just a name");
}

#[test]
fn wrong_pin_is_refused_without_revealing_either_pin() {
    let f = fixture();
    let wrong = "0123456789abcdef0123456789abcdef";
    let pin_file = f.path("wrong.pin");
    fs::write(&pin_file, wrong).unwrap();
    let config = f.config_variant(
        "wrong-pin",
        &[("hsm", "pin_file", toml_str(&pin_file.to_string_lossy()))],
    );
    let csr = f.csr(KeyKind::P256);
    let out = assert_issue_refused(f, &config, "customer", &csr, CUSTOMER_SUBJECT);
    out.assert_stderr_mentions("pin");
    let right = fs::read_to_string(f.home.join("user.pin")).unwrap();
    for pin in [wrong, right.trim()] {
        assert!(
            !out.stderr.contains(pin) && !out.stdout.contains(pin),
            "a PIN appears in the output\n{}",
            out.describe()
        );
    }
}

#[test]
fn unknown_token_label_is_refused_and_named() {
    let f = fixture();
    let label = format!("no-such-token-{}", std::process::id());
    let config = f.config_variant("no-token", &[("hsm", "token", toml_str(&label))]);
    let csr = f.csr(KeyKind::P256);
    let out = assert_issue_refused(f, &config, "customer", &csr, CUSTOMER_SUBJECT);
    out.assert_stderr_mentions(&label);
}

#[test]
fn revoking_an_unknown_serial_is_refused() {
    let f = fixture();
    let serial = "7f0123456789abcdef0123456789abcd";
    let out = f.signet(&args![
        "revoke",
        "--serial",
        serial,
        "--reason",
        "keyCompromise"
    ]);
    out.assert_refused();
    out.assert_stderr_mentions(serial);
}

#[test]
fn revoking_with_an_unknown_reason_is_refused() {
    let f = fixture();
    let issued = f.issue_customer();
    let out = f.signet(&args![
        "revoke",
        "--serial",
        &issued.serial,
        "--reason",
        "becauseISaidSo"
    ]);
    out.assert_refused();
    assert_eq!(
        cert_status(&f.db, &issued.serial).as_deref(),
        Some("issued")
    );
}

#[test]
fn revoking_with_a_malformed_serial_is_refused() {
    let f = fixture();
    let out = f.signet(&args![
        "revoke",
        "--serial",
        "not-hex!",
        "--reason",
        "keyCompromise"
    ]);
    out.assert_refused();
}

#[test]
fn crl_for_an_unknown_issuer_is_refused() {
    let f = fixture();
    let out_file = f.path("x.crl");
    let out = f.signet(&args!["crl", "--issuer", "nobody", "--out", &out_file]);
    out.assert_refused();
    assert!(!out_file.exists(), "refused but wrote a CRL");
}

#[test]
fn ca_init_twice_is_refused_and_keeps_the_ca() {
    let f = fixture();
    let out = f.signet(&args!["ca", "init"]);
    out.assert_refused();
    out.assert_stderr_mentions("already initialized");
    let again = f.path("ca-again");
    f.signet(&args!["ca", "export", "--out", &again])
        .assert_ok();
    for name in ["root.pem", "customer-ca.pem", "teller-ca.pem"] {
        assert_eq!(
            fs::read(again.join(name)).unwrap(),
            fs::read(f.ca(name)).unwrap(),
            "{name} changed after the refused second ca init"
        );
    }
}

#[test]
fn missing_config_file_is_refused() {
    let f = fixture();
    let missing = f.path("missing.toml");
    let out = f.signet_with(
        &missing,
        &[],
        &args!["crl", "--issuer", "root", "--out", f.path("r.crl")],
    );
    out.assert_refused();
}

#[test]
fn an_unknown_fault_hook_is_refused_naming_the_known_ones() {
    let f = fixture();
    let out = f.signet_with(
        &f.config,
        &[("SIGNET_FAULT", "sign-sometimes".to_string())],
        &args!["crl", "--issuer", "root", "--out", f.path("fault.crl")],
    );
    out.assert_refused();
    assert_eq!(out.status.code(), Some(64), "{}", out.describe());
    out.assert_stderr_mentions("after-record, sign-fails, key-sign-fails");
}
