//! `signet revoke`, `hold`, `release` and `crl`: what OpenSSL reads on the CRLs.

mod common;

use common::*;

/// Revokes, makes the issuer's CRL and returns it parsed (signature verified).
fn revoke_and_crl(f: &Fixture, issued: &Issued, issuer: &str, reason: &str) -> CrlText {
    f.signet(&args![
        "revoke",
        "--serial",
        &issued.serial,
        "--reason",
        reason
    ])
    .assert_ok();
    let crl = f.crl(issuer);
    f.crl_text(&crl, &f.issuer_bundle(issuer))
}

#[test]
fn revoked_customer_cert_is_on_the_verified_crl_with_reason_key_compromise() {
    let f = fixture();
    let issued = f.issue_customer();
    let crl = revoke_and_crl(f, &issued, "customer", "keyCompromise");
    let entry = crl
        .entry(&issued.serial)
        .unwrap_or_else(|| panic!("serial {} not on the CRL:\n{}", issued.serial, crl.text));
    assert!(
        entry.contains("Key Compromise"),
        "entry lacks the reason:\n{entry}"
    );
}

#[test]
fn revoked_teller_cert_is_on_the_teller_crl_and_not_the_customer_crl() {
    let f = fixture();
    let issued = f.issue_teller();
    let teller = revoke_and_crl(f, &issued, "teller", "affiliationChanged");
    let entry = teller.entry(&issued.serial).unwrap_or_else(|| {
        panic!(
            "serial {} not on the teller CRL:\n{}",
            issued.serial, teller.text
        )
    });
    assert!(
        entry.contains("Affiliation Changed"),
        "entry lacks the reason:\n{entry}"
    );
    let customer = f.crl_text(&f.crl("customer"), &f.issuer_bundle("customer"));
    assert!(
        customer.entry(&issued.serial).is_none(),
        "teller serial on the customer CRL"
    );
}

#[test]
fn aa_compromise_is_refused_for_a_public_key_certificate() {
    let f = fixture();
    let issued = f.issue_customer();
    let out = f.signet(&args![
        "revoke",
        "--serial",
        &issued.serial,
        "--reason",
        "aACompromise"
    ]);
    out.assert_refused();
    out.assert_stderr_mentions("is not a revocation reason");
    let crl = f.crl_text(&f.crl("customer"), &f.issuer_bundle("customer"));
    assert!(crl.entry(&issued.serial).is_none(), "{}", crl.text);
}

#[test]
fn every_rfc5280_reason_name_for_public_key_certificates_is_accepted_and_shown_on_the_crl() {
    let f = fixture();
    let reasons = [
        ("unspecified", "Unspecified"),
        ("keyCompromise", "Key Compromise"),
        ("cACompromise", "CA Compromise"),
        ("affiliationChanged", "Affiliation Changed"),
        ("superseded", "Superseded"),
        ("cessationOfOperation", "Cessation Of Operation"),
        ("privilegeWithdrawn", "Privilege Withdrawn"),
    ];
    let mut serials = Vec::new();
    for (name, _) in reasons {
        let issued = f.issue_customer();
        f.signet(&args![
            "revoke",
            "--serial",
            &issued.serial,
            "--reason",
            name
        ])
        .assert_ok();
        serials.push(issued.serial);
    }
    let crl = f.crl_text(&f.crl("customer"), &f.issuer_bundle("customer"));
    for ((name, shown), serial) in reasons.iter().zip(&serials) {
        let entry = crl
            .entry(serial)
            .unwrap_or_else(|| panic!("{name}: serial {serial} not on the CRL:\n{}", crl.text));
        if *name == "unspecified" {
            // RFC 5280 5.3.1: the reason code SHOULD be absent rather than unspecified.
            assert!(
                !entry.contains("Reason Code") || entry.contains(shown),
                "{name}: {entry}"
            );
        } else {
            assert!(
                entry.contains(shown),
                "{name}: expected {shown:?} in\n{entry}"
            );
        }
    }
}

#[test]
fn invalidity_date_is_on_the_crl_entry() {
    let f = fixture();
    let issued = f.issue_customer();
    let when = now_unix();
    f.signet(&args![
        "revoke",
        "--serial",
        &issued.serial,
        "--reason",
        "keyCompromise",
        "--invalidity-date",
        rfc3339(when)
    ])
    .assert_ok();
    let crl = f.crl_text(&f.crl("customer"), &f.issuer_bundle("customer"));
    let entry = crl.entry(&issued.serial).expect("serial on the CRL");
    assert!(
        entry.contains("Invalidity Date"),
        "no invalidity date:\n{entry}"
    );
    assert!(
        entry.contains(&openssl_time(when)),
        "expected {} in\n{entry}",
        openssl_time(when)
    );
}

#[test]
fn teller_cert_on_hold_is_on_the_crl_with_certificate_hold() {
    let f = fixture();
    let issued = f.issue_teller();
    f.signet(&args!["hold", "--serial", &issued.serial])
        .assert_ok();
    let crl = f.crl_text(&f.crl("teller"), &f.issuer_bundle("teller"));
    let entry = crl.entry(&issued.serial).unwrap_or_else(|| {
        panic!(
            "held serial {} not on the CRL:\n{}",
            issued.serial, crl.text
        )
    });
    assert!(
        entry.contains("Certificate Hold"),
        "entry lacks certificateHold:\n{entry}"
    );
}

#[test]
fn a_held_certificate_revoked_later_keeps_its_hold_time_as_invalidity_date() {
    let f = fixture();
    let issued = f.issue_teller();
    let now = now_unix();
    let clock = |t: u64| vec![("SIGNET_FAKE_NOW", t.to_string())];
    f.signet_with(
        &f.config,
        &clock(now),
        &args!["hold", "--serial", &issued.serial],
    )
    .assert_ok();
    f.signet_with(
        &f.config,
        &clock(now + 3_600),
        &args![
            "revoke",
            "--serial",
            &issued.serial,
            "--reason",
            "keyCompromise"
        ],
    )
    .assert_ok();
    let crl = f.crl_text(&f.crl("teller"), &f.issuer_bundle("teller"));
    let entry = crl
        .entry(&issued.serial)
        .unwrap_or_else(|| panic!("serial {} not on the CRL:\n{}", issued.serial, crl.text));
    assert!(entry.contains("Key Compromise"), "{entry}");
    let hold_time = openssl_time(now);
    assert!(
        entry.contains("Invalidity Date") && entry.contains(&hold_time),
        "the revocation does not carry the hold time {hold_time} as its invalidity date:\n{entry}"
    );
}

#[test]
fn released_teller_cert_is_not_on_the_next_crl() {
    let f = fixture();
    let issued = f.issue_teller();
    f.signet(&args!["hold", "--serial", &issued.serial])
        .assert_ok();
    let held = f.crl_text(&f.crl("teller"), &f.issuer_bundle("teller"));
    assert!(
        held.entry(&issued.serial).is_some(),
        "held serial not on the CRL:\n{}",
        held.text
    );
    f.signet(&args!["release", "--serial", &issued.serial])
        .assert_ok();
    let released = f.crl_text(&f.crl("teller"), &f.issuer_bundle("teller"));
    assert!(
        released.entry(&issued.serial).is_none(),
        "released serial still on the CRL:\n{}",
        released.text
    );
    let x = openssl(&args![
        "verify",
        "-x509_strict",
        "-CAfile",
        &f.ca("root.pem"),
        "-untrusted",
        &f.ca("teller-ca.pem"),
        &issued.leaf
    ]);
    x.assert_ok();
}

#[test]
fn customer_cert_cannot_be_put_on_hold() {
    let f = fixture();
    let issued = f.issue_customer();
    f.signet(&args!["hold", "--serial", &issued.serial])
        .assert_refused();
    let crl = f.crl_text(&f.crl("customer"), &f.issuer_bundle("customer"));
    assert!(
        crl.entry(&issued.serial).is_none(),
        "refused hold still put the serial on the CRL"
    );
}

#[test]
fn crl_numbers_increase() {
    let f = fixture();
    for issuer in ["customer", "teller", "root"] {
        let bundle = f.issuer_bundle(issuer);
        let first = f.crl_text(&f.crl(issuer), &bundle);
        let second = f.crl_text(&f.crl(issuer), &bundle);
        let (a, b) = (
            first
                .number
                .unwrap_or_else(|| panic!("{issuer}: no CRL number:\n{}", first.text)),
            second
                .number
                .unwrap_or_else(|| panic!("{issuer}: no CRL number:\n{}", second.text)),
        );
        assert!(b > a, "{issuer}: CRL number went from {a} to {b}");
    }
}

#[test]
fn crl_is_signed_by_its_issuer_and_fails_verification_against_another_ca() {
    let f = fixture();
    let crl = f.crl("customer");
    let out = openssl(&args![
        "crl",
        "-inform",
        "DER",
        "-in",
        &crl,
        "-CAfile",
        f.issuer_bundle("teller"),
        "-verify",
        "-noout"
    ]);
    assert!(
        !out.success() || !out.stderr.contains("verify OK"),
        "customer CRL verified against the teller CA\n{}",
        out.describe()
    );
}
