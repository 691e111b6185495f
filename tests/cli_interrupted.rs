//! Record before sign: an issuance interrupted between recording the
//! to-be-signed certificate and signing it (fault hook SIGNET_FAULT=after-record)
//! stays pending until the issuance timeout, then is voided and its serial is
//! listed on the issuer's next CRL.
//!
//! These tests move the clock, so each works on its own copy of the store.

mod common;

use common::*;

/// Runs an issuance that stops after recording; returns its serial.
fn interrupted_issue(f: &Fixture, copy: &StoreCopy, profile: Profile, subject: &str) -> String {
    let csr = f.csr(KeyKind::P256);
    let out_file = f.path("interrupted.pem");
    let out = f.signet_with(
        &copy.config,
        &[("SIGNET_FAULT", "after-record".to_string())],
        &args![
            "issue",
            "--profile",
            profile.name(),
            "--csr",
            &csr,
            "--subject",
            subject,
            "--out",
            &out_file
        ],
    );
    out.assert_refused();
    assert!(
        !std::fs::read_to_string(&out_file)
            .unwrap_or_default()
            .contains("BEGIN CERTIFICATE"),
        "interrupted issuance wrote a certificate\n{}",
        out.describe()
    );
    let serial = serial_from_stderr(&out)
        .unwrap_or_else(|| panic!("no `serial <hex>` line on stderr\n{}", out.describe()));
    assert_eq!(
        cert_status(&copy.db, &serial).as_deref(),
        Some("pending"),
        "interrupted issuance is not recorded as pending\n{}",
        out.describe()
    );
    serial
}

#[test]
fn interrupted_issuance_is_voided_after_the_timeout_and_listed_on_the_next_crl() {
    let f = fixture();
    let copy = f.store_copy("voided", &[]);
    let serial = interrupted_issue(
        f,
        &copy,
        Profile::Customer,
        "CN=张三,serialNumber=110101199003071234",
    );
    let later = now_unix() + ISSUANCE_TIMEOUT_SECS + 10;
    let crl = f.crl_with(
        &copy.config,
        &[("SIGNET_FAKE_NOW", later.to_string())],
        "customer",
    );
    assert_eq!(cert_status(&copy.db, &serial).as_deref(), Some("void"));
    let text = f.crl_text(&crl, &f.issuer_bundle("customer"));
    assert!(
        text.entry(&serial).is_some(),
        "voided serial {serial} not on the next CRL:\n{}",
        text.text
    );
}

#[test]
fn interrupted_teller_issuance_is_listed_on_the_teller_crl_only() {
    let f = fixture();
    let copy = f.store_copy("voided-teller", &[]);
    let serial = interrupted_issue(
        f,
        &copy,
        Profile::Teller,
        "CN=李四,serialNumber=E0012345,OU=Beijing Haidian Branch",
    );
    let later = [(
        "SIGNET_FAKE_NOW",
        (now_unix() + ISSUANCE_TIMEOUT_SECS + 10).to_string(),
    )];
    let teller = f.crl_text(
        &f.crl_with(&copy.config, &later, "teller"),
        &f.issuer_bundle("teller"),
    );
    assert!(
        teller.entry(&serial).is_some(),
        "voided serial not on the teller CRL:\n{}",
        teller.text
    );
    let customer = f.crl_text(
        &f.crl_with(&copy.config, &later, "customer"),
        &f.issuer_bundle("customer"),
    );
    assert!(
        customer.entry(&serial).is_none(),
        "teller serial on the customer CRL"
    );
}

#[test]
fn interrupted_issuance_stays_pending_before_the_timeout() {
    let f = fixture();
    let copy = f.store_copy("pending", &[]);
    let serial = interrupted_issue(
        f,
        &copy,
        Profile::Customer,
        "CN=张三,serialNumber=110101199003071234",
    );
    let soon = now_unix() + ISSUANCE_TIMEOUT_SECS - 30;
    let crl = f.crl_with(
        &copy.config,
        &[("SIGNET_FAKE_NOW", soon.to_string())],
        "customer",
    );
    assert_eq!(cert_status(&copy.db, &serial).as_deref(), Some("pending"));
    let text = f.crl_text(&crl, &f.issuer_bundle("customer"));
    assert!(
        text.entry(&serial).is_none(),
        "pending serial {serial} is already on the CRL:\n{}",
        text.text
    );
}

#[test]
fn audit_log_of_a_store_with_a_voided_issuance_verifies() {
    let f = fixture();
    let copy = f.store_copy("voided-audit", &[]);
    interrupted_issue(
        f,
        &copy,
        Profile::Customer,
        "CN=张三,serialNumber=110101199003071234",
    );
    let later = [(
        "SIGNET_FAKE_NOW",
        (now_unix() + ISSUANCE_TIMEOUT_SECS + 10).to_string(),
    )];
    f.crl_with(&copy.config, &later, "customer");
    f.signet_with(&copy.config, &later, &args!["audit", "verify"])
        .assert_ok();
}

#[test]
fn a_server_that_voided_interrupted_issuances_at_start_lists_them_even_when_stopped_at_once() {
    let f = fixture();
    let copy = f.store_copy("voided-serve", &[]);
    let serial = interrupted_issue(
        f,
        &copy,
        Profile::Customer,
        "CN=赵六,serialNumber=110101199003071299",
    );
    let later = now_unix() + ISSUANCE_TIMEOUT_SECS + 10;
    let server = common::http::Server::start_config(
        f,
        &copy.config,
        &[("SIGNET_FAKE_NOW", later.to_string())],
    );
    assert_eq!(cert_status(&copy.db, &serial).as_deref(), Some("void"));
    // Stopped before its first periodic CRL check (30 s): the start's voids get their CRL.
    let log = server.stop_and_log();
    let der: Vec<u8> = open_db(&copy.db)
        .query_row(
            "SELECT crl_der FROM crls WHERE issuer = 'customer' ORDER BY number DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap_or_else(|e| panic!("no customer CRL ({e}); the server said:\n{log}"));
    let crl = f.path("voided-at-start.crl");
    std::fs::write(&crl, der).unwrap();
    let text = f.crl_text(&crl, &f.issuer_bundle("customer"));
    assert!(
        text.entry(&serial).is_some(),
        "voided serial {serial} not on the newest CRL:\n{}",
        text.text
    );
}
