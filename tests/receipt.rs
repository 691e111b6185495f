//! Verification receipts (issue 4, item 7) against the fixture's real SoftHSM2 token: the
//! validation service's key and certificate that `signet ca init` / `signet ca upgrade` make,
//! receipts signed in the HSM, checked by `verify_receipt` and by `openssl cms -verify`.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use der::{Decode, DecodePem, Encode};
use p256::ecdsa::signature::Signer;
use serde_json::json;
use signet::app::Signet;
use signet::ca::service_keys::{ValidationService, VALIDATION_SERVICE_POLICY};
use signet::ca::{Fault, IssuerId};
use signet::clock::Clock;
use signet::config::Config;
use signet::verify::receipt::{
    build_receipt, canonical_json, verify_receipt, ReceiptError, ReceiptInfo,
};
use x509_cert::Certificate;

use common::{openssl, Out};

/// One `Signet` per test binary: a process holds one PKCS#11 context per module.
fn signet() -> &'static Signet {
    static SIGNET: OnceLock<Signet> = OnceLock::new();
    SIGNET.get_or_init(|| {
        let f = common::fixture();
        let config = Config::load(&f.config).expect("fixture config loads");
        // SAFETY of set_var: first use in this binary, under the OnceLock.
        std::env::set_var("SOFTHSM2_CONF", &f.softhsm2_conf);
        Signet::open(config, Clock::system(), Fault::None).expect("signet opens")
    })
}

fn validation_service() -> ValidationService {
    signet()
        .authority
        .validation_service()
        .expect("the fixture's `signet ca init` made the validation service")
}

fn pem_cert(path: &Path) -> Certificate {
    Certificate::from_pem(fs::read(path).unwrap()).unwrap()
}

fn root() -> Certificate {
    pem_cert(&common::fixture().ca("root.pem"))
}

/// A verification report with what makes canonicalization matter: nested objects, keys out
/// of order and outside ASCII, fractions, big and small numbers, escapes.
fn sample_report() -> serde_json::Value {
    json!({
        "indication": "TOTAL_PASSED",
        "sub_indication": null,
        "validation_time": "2026-11-26T10:00:00Z",
        "claimed_signing_time": "2026-11-26T09:59:58Z",
        "instruction_sha256": "6b3a55e0261b0304143f805a24924d0c1c44524821305f31d9277843b8a10f4e",
        "signer": {
            "subject": "CN=张三,serialNumber=110101199003071234,O=Signet Demo Bank,C=CN",
            "serial": "4f1c2a9e8b7d6c5e4f3a2b1c0d9e8f7a",
            "profile": "customer",
            "tenant": "demo-bank"
        },
        "checks": [
            {"check": "message_digest", "outcome": "passed"},
            {"check": "signature", "outcome": "passed"},
            {"check": "path", "outcome": "passed", "path_length": 2}
        ],
        "electronic_signature_law": {
            "article_13": [
                {"condition": 1, "supported": true, "why": "key on the customer's device"},
                {"condition": 4, "supported": true, "why": "message-digest and signature verify"}
            ]
        },
        "instruction": {"amount": 1234.5, "fee": 0.1, "count": 3, "big": 1e21, "tiny": 1e-7},
        "note": "tab\there, quote \" and slash /",
        "€": "euro key",
        "😀": "emoji key",
        "replay": null
    })
}

/// Signs through the validation service's key in the token.
fn hsm_signer(vs: &ValidationService) -> impl Fn(&[u8]) -> Result<Vec<u8>, String> + '_ {
    move |bytes: &[u8]| {
        signet()
            .hsm
            .sign_p256_sha256(&vs.key_label, bytes)
            .map_err(|e| e.to_string())
    }
}

/// A receipt over `report`, signed in the HSM now (Signet's clock).
fn receipt(report: &serde_json::Value) -> (Vec<u8>, i64) {
    let vs = validation_service();
    let now = signet().authority.clock().now();
    let der = build_receipt(
        report,
        now,
        &vs.certificate_der,
        &vs.chain,
        &hsm_signer(&vs),
    )
    .expect("receipt builds");
    (der, now)
}

fn write(hint: &str, bytes: &[u8]) -> PathBuf {
    let p = common::fixture().path(hint);
    fs::write(&p, bytes).unwrap();
    p
}

/// `openssl cms -verify` of a DER receipt against root.pem alone (the receipt carries the
/// issuing CA), writing the content to a file. Returns the run and the content.
fn openssl_verify(der: &[u8], extra: &[&str]) -> (Out, Vec<u8>) {
    let f = common::fixture();
    let input = write("receipt.der", der);
    let out_file = f.path("receipt-content.json");
    let mut a = args![
        "cms",
        "-verify",
        "-inform",
        "DER",
        "-in",
        &input,
        "-CAfile",
        f.ca("root.pem"),
        "-out",
        &out_file
    ]
    .to_vec();
    a.extend(extra.iter().map(std::ffi::OsString::from));
    let out = openssl(&a);
    let content = fs::read(&out_file).unwrap_or_default();
    (out, content)
}

/// A P-256 key and a certificate for it made by OpenSSL: self-signed, or issued by Signet
/// (`signet issue --profile customer`) when `customer` is true.
struct OtherKey {
    key: p256::ecdsa::SigningKey,
    cert_der: Vec<u8>,
    chain: Vec<Vec<u8>>,
}

fn other_key(customer: bool) -> OtherKey {
    let f = common::fixture();
    let key_path = f.path("other.key");
    let cert_path = f.path("other.pem");
    let chain = if customer {
        let csr = f.path("other.csr");
        openssl(&args![
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            "/CN=a customer",
            "-keyout",
            &key_path,
            "-out",
            &csr
        ])
        .assert_ok();
        let issued = f.issue_csr(
            common::Profile::Customer,
            &csr,
            "CN=王五,serialNumber=110101199003079876",
        );
        fs::copy(&issued.leaf, &cert_path).unwrap();
        vec![
            pem_cert(&f.ca("customer-ca.pem")).to_der().unwrap(),
            root().to_der().unwrap(),
        ]
    } else {
        // An impostor that even claims the validation service's policy.
        openssl(&args![
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            "/CN=Signet Validation Service/O=Signet Demo Bank/C=CN",
            "-addext",
            format!("certificatePolicies={VALIDATION_SERVICE_POLICY}"),
            "-addext",
            "keyUsage=critical,digitalSignature,nonRepudiation",
            "-days",
            "30",
            "-keyout",
            &key_path,
            "-out",
            &cert_path
        ])
        .assert_ok();
        vec![]
    };
    use p256::pkcs8::DecodePrivateKey;
    let key =
        p256::ecdsa::SigningKey::from_pkcs8_pem(&fs::read_to_string(&key_path).unwrap()).unwrap();
    OtherKey {
        key,
        cert_der: pem_cert(&cert_path).to_der().unwrap(),
        chain,
    }
}

fn soft_sign(key: &p256::ecdsa::SigningKey, bytes: &[u8]) -> Vec<u8> {
    let sig: p256::ecdsa::Signature = key.sign(bytes);
    sig.to_der().as_bytes().to_vec()
}

fn position(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("the content is in the receipt")
}

#[track_caller]
fn assert_openssl_refuses(out: &Out) {
    assert!(
        !out.success() && !out.stderr.contains("Verification successful"),
        "openssl accepted a bad receipt\n{}",
        out.describe()
    );
}

// -------------------------------------------------------------------------------------

#[test]
fn ca_upgrade_creates_the_validation_service_once() {
    let f = common::fixture();
    // The fixture's `signet ca init` made it already: upgrade has nothing to do.
    let out = f.signet(&["ca", "upgrade"]);
    out.assert_ok().assert_stderr_mentions("nothing to upgrade");
    assert!(!signet()
        .authority
        .ensure_validation_service("test", &|_| {})
        .unwrap());

    // A CA initialized by a Signet that had no validation service: the same store without
    // the `validation` row (its key is still in the token, as after an interrupted run).
    let copy = f.store_copy("pre-receipt-ca", &[]);
    let conn = common::open_db(&copy.db);
    let deleted = conn
        .execute("DELETE FROM ca WHERE name = 'validation'", [])
        .unwrap();
    assert_eq!(deleted, 1);
    let count_certs = || -> i64 {
        conn.query_row(
            "SELECT count(*) FROM certificates WHERE profile = 'validation-service' AND status = 'issued'",
            [],
            |r| r.get(0),
        )
        .unwrap()
    };
    assert_eq!(count_certs(), 1);

    let first = f.signet_with(&copy.config, &[], &["ca", "upgrade"]);
    first
        .assert_ok()
        .assert_stderr_mentions("created:")
        .assert_stderr_mentions("-validation")
        .assert_stderr_mentions("validation service certificate");
    let row: (String, Vec<u8>) = conn
        .query_row(
            "SELECT key_label, cert_der FROM ca WHERE name = 'validation'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("upgrade stored the validation row");
    assert_eq!(row.0, validation_service().key_label);
    assert_eq!(
        count_certs(),
        2,
        "recorded and issued like every certificate"
    );
    // Same key (reused from the token), new certificate.
    let new = Certificate::from_der(&row.1).unwrap();
    let old = Certificate::from_der(&validation_service().certificate_der).unwrap();
    assert_eq!(
        new.tbs_certificate().subject_public_key_info(),
        old.tbs_certificate().subject_public_key_info()
    );
    assert_ne!(
        new.tbs_certificate().serial_number(),
        old.tbs_certificate().serial_number()
    );
    let events: i64 = conn
        .query_row(
            "SELECT count(*) FROM audit_events WHERE action = 'ca.validation_service'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(events, 2, "one from init, one from this upgrade");

    let second = f.signet_with(&copy.config, &[], &["ca", "upgrade"]);
    second
        .assert_ok()
        .assert_stderr_mentions("nothing to upgrade");
    assert_eq!(count_certs(), 2, "a second upgrade issues nothing");
    f.signet_with(&copy.config, &[], &["audit", "verify"])
        .assert_ok();
}

fn not_after(cert: &Certificate) -> i64 {
    cert.tbs_certificate()
        .validity()
        .not_after
        .to_unix_duration()
        .as_secs() as i64
}

#[test]
fn no_receipt_is_signed_under_an_expired_validation_certificate() {
    let f = common::fixture();
    let copy = f.store_copy("expired-validation", &[]);
    let old = Certificate::from_der(&validation_service().certificate_der).unwrap();
    let later = signet::clock::Clock::fixed(not_after(&old) + 86_400);
    let config = Config::load(&copy.config).unwrap();
    let s = Signet::open(config, later, Fault::None).expect("the copy opens");
    let err = signet::app::make_receipt(&s, &sample_report()).unwrap_err();
    assert!(
        matches!(err, signet::app::ReceiptFailure::CertificateExpired(_))
            && err.to_string().contains("certificate expired at"),
        "{err}"
    );
}

#[test]
fn a_verification_asking_for_a_receipt_under_an_expired_validation_certificate_gets_503_over_http()
{
    let f = common::fixture();
    let copy = f.store_copy("expired-validation-http", &[]);
    let old = Certificate::from_der(&validation_service().certificate_der).unwrap();
    let later = [("SIGNET_FAKE_NOW", (not_after(&old) + 86_400).to_string())];
    // The gateway's credential is made then too, so that only the certificate has expired.
    let cli = |args: &[&str]| {
        let out = f.signet_with(&copy.config, &later, args);
        out.assert_ok();
        out.stdout.trim().to_string()
    };
    cli(&["tenant", "add", "Late Bank"]);
    let gateway = cli(&[
        "credential",
        "add",
        "--tenant",
        "Late Bank",
        "--role",
        "gateway",
    ]);
    let server = common::http::Server::start_config(f, &copy.config, &later);
    let ask = |receipt: bool| {
        common::http::post_json(
            &server,
            "/v1/verifications",
            Some(&gateway),
            &json!({"instruction": common::http::base64_std(b"pay 1"), "signature": common::http::base64_std(b"not a signature"), "receipt": receipt}),
        )
    };
    let without = ask(false);
    assert_eq!(without.status, 200, "the report alone: {}", without.body);
    let with = ask(true);
    assert_eq!(
        (with.status, with.code().as_str()),
        (503, "validation_certificate_expired"),
        "{}",
        with.body
    );
    assert!(with.body.contains("expired at"), "{}", with.body);
    server.stop();
}

#[test]
fn validation_certificate_chains_is_lint_clean_and_its_key_stays_in_the_token() {
    let f = common::fixture();
    let vs = validation_service();
    let pem = signet::ca::pem_certificate(&vs.certificate_der);
    let cert_path = write("validation.pem", pem.as_bytes());

    f.assert_customer_certificate_verifies(cert_path.as_ref());
    // The purpose `openssl cms -verify` checks by default.
    let out = openssl(&args![
        "verify",
        "-x509_strict",
        "-purpose",
        "smimesign",
        "-CAfile",
        f.ca("root.pem"),
        "-untrusted",
        f.ca("customer-ca.pem"),
        &cert_path
    ]);
    out.assert_ok();

    let text = openssl(&args!["x509", "-noout", "-text", "-in", &cert_path]);
    text.assert_ok();
    let t = &text.stdout;
    for needle in [
        "Subject: C = CN, O = Signet Demo Bank, CN = Signet Validation Service",
        "X509v3 Key Usage: critical",
        "Digital Signature, Non Repudiation",
        "X509v3 Subject Key Identifier",
        "X509v3 Authority Key Identifier",
        "X509v3 CRL Distribution Points",
        "Authority Information Access",
        "OCSP - URI:",
        "CA Issuers - URI:",
        "1.3.6.1.4.1.32473.7373.2.1",
    ] {
        assert!(t.contains(needle), "no {needle:?} in\n{t}");
    }
    assert!(!t.contains("Extended Key Usage"), "{t}");
    assert!(!t.contains("CA:TRUE"), "{t}");

    common::assert_lint_clean(&common::pkilint(
        "lint_pkix_cert",
        &args!["lint", "-s", "ERROR", &cert_path],
    ));
    common::assert_lint_clean(&common::pkilint(
        "lint_pkix_signer_signee_cert_chain",
        &args!["lint", "-s", "ERROR", f.ca("customer-ca.pem"), &cert_path],
    ));

    // Issued by the customer CA, within its validity; the key is the token's.
    let cert = Certificate::from_der(&vs.certificate_der).unwrap();
    let ca = signet().authority.ca(IssuerId::Customer).unwrap();
    assert_eq!(
        cert.tbs_certificate().issuer(),
        ca.certificate.tbs_certificate().subject()
    );
    assert!(
        cert.tbs_certificate()
            .validity()
            .not_after
            .to_unix_duration()
            <= ca
                .certificate
                .tbs_certificate()
                .validity()
                .not_after
                .to_unix_duration()
    );
    assert_eq!(
        vs.chain,
        vec![
            ca.der.clone(),
            signet().authority.ca(IssuerId::Root).unwrap().der.clone()
        ]
    );
    let token_key = signet().hsm.public_key(&vs.key_label).unwrap();
    use p256::pkcs8::EncodePublicKey;
    assert_eq!(
        cert.tbs_certificate()
            .subject_public_key_info()
            .to_der()
            .unwrap(),
        token_key.to_public_key_der().unwrap().as_bytes()
    );
    let a = signet().hsm.key_attributes(&vs.key_label).unwrap();
    assert!(a.sensitive && a.always_sensitive && a.private);
    assert!(!a.extractable && a.never_extractable);
    assert!(a.sign && !a.decrypt && !a.unwrap && !a.derive && !a.always_authenticate);
}

#[test]
fn receipt_verifies_with_signet_and_with_openssl() {
    let report = sample_report();
    let (der, at) = receipt(&report);

    let info: ReceiptInfo = verify_receipt(&der, &[root()]).expect("the receipt verifies");
    assert_eq!(info.report, report);
    assert_eq!(info.signing_time, at);
    assert!(
        info.signer_subject.contains("CN=Signet Validation Service"),
        "{}",
        info.signer_subject
    );

    // OpenSSL, with nothing but the root: the receipt carries the issuing CA. The default
    // purpose (smimesign) accepts the certificate; -cades also checks signing-certificate-v2;
    // -policy with -explicit_policy holds the path to the validation service's policy.
    let jcs = canonical_json(&report);
    for extra in [
        &[][..],
        &["-cades"][..],
        &["-policy", "1.3.6.1.4.1.32473.7373.2.1", "-explicit_policy"][..],
    ] {
        let (out, content) = openssl_verify(&der, extra);
        out.assert_ok();
        assert!(
            out.stderr.contains("Verification successful"),
            "{}",
            out.describe()
        );
        assert_eq!(content, jcs, "openssl printed the JCS content");
    }
    assert!(std::str::from_utf8(&jcs)
        .unwrap()
        .starts_with(r#"{"checks":[{"check":"message_digest","outcome":"passed"},"#));

    // What is inside: attached id-data, the four signed attributes, signing time as UTCTime.
    let input = write("receipt.der", &der);
    let printed = openssl(&args![
        "cms", "-cmsout", "-print", "-inform", "DER", "-in", &input
    ]);
    printed.assert_ok();
    for needle in [
        "contentType: pkcs7-signedData",
        "version: 1",
        "eContentType: pkcs7-data",
        "algorithm: sha256",
        "algorithm: ecdsa-with-SHA256",
        "object: contentType",
        "object: messageDigest",
        "object: signingTime",
        "UTCTIME:",
        "object: id-smime-aa-signingCertificateV2",
        "d.issuerAndSerialNumber",
    ] {
        assert!(
            printed.stdout.contains(needle),
            "no {needle:?} in\n{}",
            printed.stdout
        );
    }
}

#[test]
fn one_edited_content_byte_fails_both_verifiers() {
    let report = sample_report();
    let (der, _) = receipt(&report);
    let jcs = canonical_json(&report);
    let start = position(&der, &jcs);
    for i in 0..jcs.len() {
        let mut bad = der.clone();
        bad[start + i] ^= 0x01;
        assert_eq!(
            verify_receipt(&bad, &[root()]),
            Err(ReceiptError::Altered),
            "content byte {i}"
        );
    }
    for i in [0, jcs.len() / 2, jcs.len() - 1] {
        let mut bad = der.clone();
        bad[start + i] ^= 0x01;
        let (out, _) = openssl_verify(&bad, &[]);
        assert_openssl_refuses(&out);
        assert!(
            out.stderr.contains("content verify error"),
            "{}",
            out.describe()
        );
    }
}

#[test]
fn every_edited_byte_of_a_receipt_is_refused() {
    let (der, _) = receipt(&sample_report());
    let anchors = [root()];
    let mut by_kind = std::collections::BTreeMap::<String, usize>::new();
    for i in 0..der.len() {
        for mask in [0x01u8, 0x80] {
            let mut bad = der.clone();
            bad[i] ^= mask;
            match verify_receipt(&bad, &anchors) {
                Ok(_) => panic!("byte {i} ^ {mask:#04x} of {} still verifies", der.len()),
                Err(e) => {
                    let kind = format!("{e:?}");
                    let kind = kind.split('(').next().unwrap().to_string();
                    *by_kind.entry(kind).or_default() += 1;
                }
            }
        }
    }
    eprintln!("{} edits, refused as: {by_kind:?}", der.len() * 2);
}

#[test]
fn receipt_signed_by_another_key_is_refused() {
    let report = sample_report();
    let vs = validation_service();
    let now = signet().authority.clock().now();
    let anchors = [root()];

    // 1. Naming the validation service but signed by another key: Signet does not build it...
    let other = other_key(false);
    let wrong = |b: &[u8]| Ok(soft_sign(&other.key, b));
    let e = build_receipt(&report, now, &vs.certificate_der, &vs.chain, &wrong).unwrap_err();
    assert!(e.contains("does not verify"), "{e}");
    // ... and a receipt whose signature is replaced by another key's fails both verifiers.
    let (good, _) = receipt(&report);
    let forged = replace_signature(&good, |attrs| soft_sign(&other.key, attrs));
    assert_eq!(
        verify_receipt(&forged, &anchors),
        Err(ReceiptError::BadSignature)
    );
    assert_openssl_refuses(&openssl_verify(&forged, &[]).0);
    // The same replacement by the genuine key verifies again: only the key made it fail.
    let vs2 = validation_service();
    let resigned = replace_signature(&good, |attrs| hsm_signer(&vs2)(attrs).unwrap());
    verify_receipt(&resigned, &anchors).expect("re-signed by the validation key");

    // 2. An impostor's self-signed certificate, even with the validation service's name and
    //    policy: no path to the root.
    let impostor = build_receipt(&report, now, &other.cert_der, &[], &|b: &[u8]| {
        Ok(soft_sign(&other.key, b))
    })
    .unwrap();
    assert!(matches!(
        verify_receipt(&impostor, &anchors),
        Err(ReceiptError::Untrusted(_))
    ));
    assert_openssl_refuses(&openssl_verify(&impostor, &[]).0);

    // 3. A customer's certificate from Signet's own customer CA: it chains to the root and
    //    has the same key usage, but it is not a validation service certificate.
    let customer = other_key(true);
    let by_customer = build_receipt(
        &report,
        now,
        &customer.cert_der,
        &customer.chain,
        &|b: &[u8]| Ok(soft_sign(&customer.key, b)),
    )
    .unwrap();
    match verify_receipt(&by_customer, &anchors) {
        Err(ReceiptError::Untrusted(why)) => assert!(why.contains("validation service"), "{why}"),
        other => panic!("a customer's receipt: {other:?}"),
    }
    // Plain `openssl cms -verify` cannot tell (a customer signature is a good CMS signature);
    // requiring the validation service's policy can.
    openssl_verify(&by_customer, &[]).0.assert_ok();
    assert_openssl_refuses(
        &openssl_verify(
            &by_customer,
            &["-policy", "1.3.6.1.4.1.32473.7373.2.1", "-explicit_policy"],
        )
        .0,
    );
}

/// The receipt with its SignerInfo's signature replaced by `sign(DER of the signed attrs)`.
fn replace_signature(der: &[u8], sign: impl Fn(&[u8]) -> Vec<u8>) -> Vec<u8> {
    use cms::content_info::ContentInfo;
    use cms::signed_data::{SignedData, SignerInfos};
    let mut ci = ContentInfo::from_der(der).unwrap();
    let mut sd: SignedData = ci.content.decode_as().unwrap();
    let mut si = sd.signer_infos.0.iter().next().unwrap().clone();
    let attrs = si.signed_attrs.as_ref().unwrap().to_der().unwrap();
    si.signature = der::asn1::OctetString::new(sign(&attrs)).unwrap();
    sd.signer_infos = SignerInfos::try_from(vec![si]).unwrap();
    ci.content = der::Any::from_der(&sd.to_der().unwrap()).unwrap();
    ci.to_der().unwrap()
}
