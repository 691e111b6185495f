//! CRLs streamed from the store (issue 6): the same DER as x509-cert's encoding of the same
//! entries, clean for OpenSSL and pkilint, and a CRL of 20,000 entries that OpenSSL verifies.

mod common;

use std::fs;

use common::*;
use der::{Decode, Encode};

/// Revoked rows written straight into a store copy (bulk, as an operator's import would).
fn bulk_revoke(db: &std::path::Path, count: usize, seed: u8) {
    let mut conn = open_db(db);
    let tx = conn.transaction().expect("begin");
    {
        let mut st = tx
            .prepare(
                "INSERT INTO certificates (serial, issuer, profile, status, subject, shard,
                 not_before, not_after, tbs_der, created_at, revoked_at, revocation_reason,
                 invalidity_date)
                 VALUES (?1, 'customer', 'customer', 'issued', 'CN=bulk', 0, 0, 2000000000,
                 X'00', 1700000000, ?2, ?3, ?4)",
            )
            .expect("prepare");
        for i in 0..count {
            // 16 bytes like Signet's serials, the top bit set on every other one.
            let top: u8 = if i % 2 == 0 { 0x7f } else { 0xc1 };
            let serial = format!("{top:02x}{seed:02x}{:028x}", i as u128 * 7919);
            let reason: Option<i64> = match i % 4 {
                0 => None,
                1 => Some(1),
                2 => Some(4),
                _ => Some(5),
            };
            let invalidity: Option<i64> = (i % 5 == 0).then_some(1_700_000_000 + i as i64);
            st.execute(rusqlite::params![
                serial,
                1_700_000_100 + (i as i64 % 5000),
                reason,
                invalidity
            ])
            .expect("insert revoked row");
        }
    }
    tx.commit().expect("commit");
}

fn revoked_count(db: &std::path::Path) -> usize {
    let conn = open_db(db);
    conn.query_row(
        "SELECT COUNT(*) FROM certificates WHERE issuer = 'customer' AND revoked_at IS NOT NULL",
        [],
        |r| r.get::<_, i64>(0),
    )
    .expect("count") as usize
}

#[test]
fn streamed_crl_is_the_x509_cert_encoding_of_its_entries_and_lints_clean() {
    let f = fixture();
    let mut serials = Vec::new();
    for (i, reason) in ["keyCompromise", "superseded", "cessationOfOperation"]
        .iter()
        .enumerate()
    {
        let issued = f.issue_customer();
        let mut args = args!["revoke", "--serial", &issued.serial, "--reason", reason].to_vec();
        if i == 0 {
            args.extend(args!["--invalidity-date", rfc3339(now_unix() - 60)]);
        }
        f.signet(&args).assert_ok();
        serials.push(issued.serial);
    }
    let path = f.crl("customer");
    let der = fs::read(&path).expect("read CRL");
    // x509-cert decodes the CRL and encodes it again: the same bytes.
    let crl = x509_cert::crl::CertificateList::<x509_cert::certificate::Rfc5280>::from_der(&der)
        .expect("x509-cert reads the streamed CRL");
    assert_eq!(
        crl.to_der().expect("encode"),
        der,
        "the streamed CRL differs from x509-cert's encoding of the same CRL"
    );
    let listed: Vec<String> = crl
        .tbs_cert_list
        .revoked_certificates
        .iter()
        .flatten()
        .map(|r| norm_serial(&hex::encode(r.serial_number.as_bytes())))
        .collect();
    for s in &serials {
        assert!(listed.contains(&norm_serial(s)), "{s} is not on the CRL");
    }
    let text = f.crl_text(&path, &f.issuer_bundle("customer"));
    assert_eq!(text.entries.len(), listed.len());
    let lint = pkilint(
        "lint_crl",
        &args!["lint", "-t", "CRL", "-p", "PKIX", "-s", "ERROR", &path],
    );
    assert_lint_clean(&lint);
}

#[test]
fn a_crl_of_20000_entries_is_verified_by_openssl_and_lists_every_entry() {
    let f = fixture();
    let copy = f.store_copy("crl-20000", &[]);
    bulk_revoke(&copy.db, 20_000, 0x5a);
    let expected = revoked_count(&copy.db);
    assert!(expected >= 20_000);
    let path = f.crl_with(&copy.config, &[], "customer");
    let text = f.crl_text(&path, &f.issuer_bundle("customer"));
    assert_eq!(
        text.entries.len(),
        expected,
        "openssl lists another number of entries"
    );
    let sample = format!("c15a{:028x}", 19_999u128 * 7919);
    let entry = text
        .entry(&sample)
        .unwrap_or_else(|| panic!("{sample} not on the CRL"));
    assert!(entry.contains("Cessation Of Operation"), "{entry}");
    let lint = pkilint(
        "lint_crl",
        &args!["lint", "-t", "CRL", "-p", "PKIX", "-s", "ERROR", &path],
    );
    assert_lint_clean(&lint);
}
