//! pkilint's RFC 5280 checks on everything the CA signs: no finding at ERROR or
//! above (pkilint's exit code is the number of findings).
//! pkilint comes from $PKILINT_BIN, which ./test.sh sets up.

mod common;

use common::*;
use std::path::Path;

fn lint_cert(cert: &Path) {
    assert_lint_clean(&pkilint(
        "lint_pkix_cert",
        &args!["lint", "-s", "ERROR", cert],
    ));
}

fn lint_chain(issuer: &Path, subject: &Path) {
    assert_lint_clean(&pkilint(
        "lint_pkix_signer_signee_cert_chain",
        &args!["lint", "-s", "ERROR", issuer, subject],
    ));
}

#[test]
fn root_ca_cert_passes_pkilint() {
    lint_cert(&fixture().ca("root.pem"));
}

#[test]
fn customer_ca_cert_passes_pkilint() {
    lint_cert(&fixture().ca("customer-ca.pem"));
}

#[test]
fn teller_ca_cert_passes_pkilint() {
    lint_cert(&fixture().ca("teller-ca.pem"));
}

#[test]
fn customer_cert_passes_pkilint() {
    lint_cert(&fixture().issue_customer().leaf);
}

#[test]
fn teller_cert_passes_pkilint() {
    lint_cert(&fixture().issue_teller().leaf);
}

#[test]
fn root_to_customer_ca_chain_passes_pkilint() {
    let f = fixture();
    lint_chain(&f.ca("root.pem"), &f.ca("customer-ca.pem"));
}

#[test]
fn root_to_teller_ca_chain_passes_pkilint() {
    let f = fixture();
    lint_chain(&f.ca("root.pem"), &f.ca("teller-ca.pem"));
}

#[test]
fn customer_ca_to_customer_cert_chain_passes_pkilint() {
    let f = fixture();
    lint_chain(&f.ca("customer-ca.pem"), &f.issue_customer().leaf);
}

#[test]
fn teller_ca_to_teller_cert_chain_passes_pkilint() {
    let f = fixture();
    lint_chain(&f.ca("teller-ca.pem"), &f.issue_teller().leaf);
}

#[test]
fn customer_crl_with_entries_passes_pkilint() {
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
    let crl = f.crl("customer");
    let text = f.crl_text(&crl, &f.issuer_bundle("customer"));
    assert!(
        text.entry(&issued.serial).is_some(),
        "revoked serial not on the CRL:\n{}",
        text.text
    );
    assert_lint_clean(&pkilint(
        "lint_crl",
        &args!["lint", "-t", "CRL", "-p", "PKIX", "-s", "ERROR", &crl],
    ));
}

#[test]
fn teller_crl_with_a_hold_passes_pkilint() {
    let f = fixture();
    let issued = f.issue_teller();
    f.signet(&args!["hold", "--serial", &issued.serial])
        .assert_ok();
    let crl = f.crl("teller");
    assert_lint_clean(&pkilint(
        "lint_crl",
        &args!["lint", "-t", "CRL", "-p", "PKIX", "-s", "ERROR", &crl],
    ));
}

#[test]
fn root_arl_passes_pkilint() {
    let f = fixture();
    let crl = f.crl("root");
    f.crl_text(&crl, &f.issuer_bundle("root"));
    assert_lint_clean(&pkilint(
        "lint_crl",
        &args!["lint", "-t", "ARL", "-p", "PKIX", "-s", "ERROR", &crl],
    ));
}
