//! Verification of signed payment instructions, end to end through `signet verify`: signatures
//! made by OpenSSL (`openssl cms -sign`, with `faketime` for claimed times) and ES256 JWS built
//! here, over certificates issued by Signet from a real SoftHSM2 token.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use base64::Engine;
use common::http::{base64_std, post_json, Server};
use common::{fixture, openssl, Fixture, Out};
use p256::ecdsa::signature::Signer;
use p256::pkcs8::DecodePrivateKey;
use serde_json::Value;

/// A key pair and a certificate Signet issued for it.
struct Holder {
    key: PathBuf,
    cert: PathBuf,
    serial: String,
}

fn uniq(f: &Fixture, hint: &str) -> PathBuf {
    f.path(hint)
}

fn new_key(f: &Fixture) -> (PathBuf, PathBuf) {
    f.key_and_csr(common::KeyKind::P256)
}

fn issue(f: &Fixture, config: &Path, profile: &str, subject: &str) -> Holder {
    let (key, csr) = new_key(f);
    let issued = f.issue_with(config, profile, &csr, subject, &[]);
    Holder {
        key,
        cert: issued.leaf,
        serial: issued.serial,
    }
}

fn customer(f: &Fixture) -> Holder {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    issue(
        f,
        &f.config,
        "customer",
        &format!("CN=付款人{n},serialNumber=5101011990010{n:05}"),
    )
}

fn instruction(f: &Fixture, text: &str) -> PathBuf {
    let p = uniq(f, "instruction.json");
    fs::write(&p, text).unwrap();
    p
}

/// A payment instruction no other test uses (the replay guard remembers them all).
fn fresh_instruction(f: &Fixture) -> PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    instruction(
        f,
        &format!(
            r#"{{"instruction_id":"PAY-{}-{n}","amount":"1000.00","currency":"CNY","payee":"6222020200112233"}}"#,
            std::process::id()
        ),
    )
}

/// `openssl cms -sign` with extra flags, optionally under faketime.
fn cms_sign(
    f: &Fixture,
    holder: &Holder,
    instr: &Path,
    extra: &[&str],
    faketime: Option<&str>,
) -> PathBuf {
    let out = uniq(f, "sig.der");
    let mut args: Vec<std::ffi::OsString> = Vec::new();
    if let Some(t) = faketime {
        args.extend(args!["-f", t, "openssl"]);
    }
    args.extend(args![
        "cms",
        "-sign",
        "-binary",
        "-in",
        instr,
        "-signer",
        &holder.cert,
        "-inkey",
        &holder.key,
        "-outform",
        "DER",
        "-out",
        &out
    ]);
    if !extra.contains(&"-md") {
        args.extend(args!["-md", "sha256"]);
    }
    args.extend(extra.iter().map(std::ffi::OsString::from));
    let o = if faketime.is_some() {
        common::run({
            let mut c = std::process::Command::new("faketime");
            c.args(&args);
            c
        })
    } else {
        openssl(&args)
    };
    o.assert_ok();
    out
}

struct Verdict {
    out: Out,
    report: Value,
}

impl Verdict {
    fn indication(&self) -> &str {
        self.report["indication"].as_str().unwrap_or("?")
    }
    fn sub(&self) -> &str {
        self.report["sub_indication"].as_str().unwrap_or("-")
    }
    fn code(&self) -> Option<i32> {
        self.out.status.code()
    }
    fn expect(&self, indication: &str, sub: &str, code: i32) {
        assert_eq!(
            (self.indication(), self.sub(), self.code()),
            (indication, sub, Some(code)),
            "{}",
            self.out.describe()
        );
        assert!(!self.out.stderr.contains("panicked"));
    }
}

fn verify_with(
    f: &Fixture,
    config: &Path,
    env: &[(&str, String)],
    instr: &Path,
    sig: &Path,
    extra: &[&str],
) -> Verdict {
    let mut args = args!["verify", "--instruction", instr, "--signature", sig].to_vec();
    args.extend(extra.iter().map(std::ffi::OsString::from));
    let out = f.signet_with(config, env, &args);
    let report = serde_json::from_str(&out.stdout).unwrap_or(Value::Null);
    Verdict { out, report }
}

/// A detached CMS over `instr` with two SignerInfos, `first`'s and `second`'s.
fn cms_sign_by_two(f: &Fixture, first: &Holder, second: &Holder, instr: &Path) -> PathBuf {
    let (cert, key) = (second.cert.to_string_lossy(), second.key.to_string_lossy());
    cms_sign(f, first, instr, &["-signer", &cert, "-inkey", &key], None)
}

fn verify(f: &Fixture, instr: &Path, sig: &Path) -> Verdict {
    verify_with(f, &f.config, &[], instr, sig, &[])
}

fn at(offset: i64) -> Vec<(&'static str, String)> {
    vec![(
        "SIGNET_FAKE_NOW",
        (common::now_unix() as i64 + offset).to_string(),
    )]
}

// ---------------------------------------------------------------------------------------
// Valid signatures

#[test]
fn valid_detached_cms_by_a_customer_passes_with_article_13_supported() {
    let f = fixture();
    let h = customer(f);
    let instr = fresh_instruction(f);
    let v = verify(f, &instr, &cms_sign(f, &h, &instr, &[], None));
    v.expect("TOTAL_PASSED", "-", 0);
    assert_eq!(v.report["signer"]["profile"], "customer");
    assert_eq!(v.report["signer"]["key_custody"], "customer-device");
    assert_eq!(
        v.report["signer"]["serial"].as_str(),
        Some(h.serial.as_str())
    );
    assert!(v.report["claimed_signing_time"].is_string());
    assert!(v.report["replay"].is_null());
    let law = &v.report["electronic_signature_law"];
    assert_eq!(law["reliable"], true);
    assert_eq!(law["conditions"].as_array().unwrap().len(), 4);
    let digest = openssl(&args!["dgst", "-sha256", "-r", &instr]);
    assert!(digest
        .stdout
        .starts_with(v.report["instruction_sha256"].as_str().unwrap()));
}

#[test]
fn valid_attached_cms_by_a_teller_passes() {
    let f = fixture();
    let h = issue(
        f,
        &f.config,
        "teller",
        "CN=柜员,serialNumber=E7001,OU=Branch 7",
    );
    let instr = fresh_instruction(f);
    let v = verify(f, &instr, &cms_sign(f, &h, &instr, &["-nodetach"], None));
    v.expect("TOTAL_PASSED", "-", 0);
    assert_eq!(v.report["signer"]["profile"], "teller");
    assert_eq!(v.report["format"], "cms-attached");
}

#[test]
fn valid_cms_without_signed_attributes_passes_and_checks_at_validation_time() {
    let f = fixture();
    let h = customer(f);
    let instr = fresh_instruction(f);
    let v = verify(f, &instr, &cms_sign(f, &h, &instr, &["-noattr"], None));
    v.expect("TOTAL_PASSED", "-", 0);
    assert!(v.report["claimed_signing_time"].is_null());
}

#[test]
fn valid_cades_signature_checks_ess_signing_certificate_v2() {
    let f = fixture();
    let h = customer(f);
    let instr = fresh_instruction(f);
    let v = verify(f, &instr, &cms_sign(f, &h, &instr, &["-cades"], None));
    v.expect("TOTAL_PASSED", "-", 0);
    let checks = v.report["signers"][0]["checks"].as_array().unwrap();
    assert!(
        checks
            .iter()
            .any(|c| c["name"] == "ess-signing-certificate-v2" && c["passed"] == true),
        "{checks:?}"
    );
}

#[test]
fn cms_without_certificates_is_verified_with_the_certificate_on_record() {
    let f = fixture();
    let h = customer(f);
    let instr = fresh_instruction(f);
    let v = verify(f, &instr, &cms_sign(f, &h, &instr, &["-nocerts"], None));
    v.expect("TOTAL_PASSED", "-", 0);
}

#[test]
fn pem_and_base64_cms_are_accepted() {
    let f = fixture();
    let h = customer(f);
    let instr = fresh_instruction(f);
    let der = cms_sign(f, &h, &instr, &[], None);
    let b64 = uniq(f, "sig.b64");
    fs::write(
        &b64,
        base64::engine::general_purpose::STANDARD.encode(fs::read(&der).unwrap()),
    )
    .unwrap();
    verify(f, &instr, &b64).expect("TOTAL_PASSED", "-", 0);
    let pem = uniq(f, "sig.pem");
    openssl(&args![
        "cms", "-cmsout", "-inform", "DER", "-in", &der, "-outform", "PEM", "-out", &pem
    ])
    .assert_ok();
    // The same signature again is a replay: the policy rejects it.
    let again = verify(f, &instr, &pem);
    again.expect("INDETERMINATE", "SIG_CONSTRAINTS_FAILURE", 2);
}

fn jws(holder: &Holder, payload: &[u8], detached: bool, extra_header: Value) -> String {
    let b64 = |d: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(d);
    let key_pem = fs::read_to_string(&holder.key).unwrap();
    let key = p256::ecdsa::SigningKey::from_pkcs8_pem(&key_pem).unwrap();
    let cert_der = pem_to_der(&holder.cert);
    let mut header = serde_json::json!({
        "alg": "ES256",
        "x5c": [base64::engine::general_purpose::STANDARD.encode(&cert_der)],
    });
    if let (Value::Object(h), Value::Object(e)) = (&mut header, extra_header) {
        h.extend(e);
    }
    let protected = b64(header.to_string().as_bytes());
    let input = format!("{protected}.{}", b64(payload));
    let sig: p256::ecdsa::Signature = key.sign(input.as_bytes());
    let payload_part = if detached {
        String::new()
    } else {
        b64(payload)
    };
    format!("{protected}.{payload_part}.{}", b64(&sig.to_bytes()))
}

fn pem_to_der(p: &Path) -> Vec<u8> {
    let text = fs::read_to_string(p).unwrap();
    let body: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap()
}

#[test]
fn valid_jws_compact_with_x5c_passes_embedded_and_detached() {
    let f = fixture();
    let h = customer(f);
    let instr = fresh_instruction(f);
    let payload = fs::read(&instr).unwrap();
    let sig = uniq(f, "sig.jws");
    fs::write(&sig, jws(&h, &payload, false, serde_json::json!({}))).unwrap();
    let v = verify(f, &instr, &sig);
    v.expect("TOTAL_PASSED", "-", 0);
    assert_eq!(v.report["format"], "jws-compact");
    let instr2 = fresh_instruction(f);
    fs::write(
        &sig,
        jws(&h, &fs::read(&instr2).unwrap(), true, serde_json::json!({})),
    )
    .unwrap();
    verify(f, &instr2, &sig).expect("TOTAL_PASSED", "-", 0);
}

// ---------------------------------------------------------------------------------------
// Tampering

fn flip_last_byte(p: &Path) -> PathBuf {
    let mut bytes = fs::read(p).unwrap();
    let n = bytes.len() - 2;
    bytes[n] ^= 0x01;
    let out = p.with_extension("changed");
    fs::write(&out, bytes).unwrap();
    out
}

#[test]
fn instruction_changed_by_one_byte_with_signed_attributes_is_a_hash_failure() {
    let f = fixture();
    let h = customer(f);
    let instr = fresh_instruction(f);
    let sig = cms_sign(f, &h, &instr, &[], None);
    verify(f, &flip_last_byte(&instr), &sig).expect("TOTAL_FAILED", "HASH_FAILURE", 1);
}

#[test]
fn instruction_changed_without_signed_attributes_is_a_signature_failure() {
    let f = fixture();
    let h = customer(f);
    let instr = fresh_instruction(f);
    let sig = cms_sign(f, &h, &instr, &["-noattr"], None);
    verify(f, &flip_last_byte(&instr), &sig).expect("TOTAL_FAILED", "SIG_CRYPTO_FAILURE", 1);
}

#[test]
fn jws_over_a_changed_instruction_fails() {
    let f = fixture();
    let h = customer(f);
    let instr = fresh_instruction(f);
    let sig = uniq(f, "sig.jws");
    fs::write(
        &sig,
        jws(&h, &fs::read(&instr).unwrap(), true, serde_json::json!({})),
    )
    .unwrap();
    let v = verify(f, &flip_last_byte(&instr), &sig);
    assert_eq!(v.indication(), "TOTAL_FAILED", "{}", v.out.describe());
}

#[test]
fn signed_attributes_changed_after_signing_are_a_signature_failure() {
    let f = fixture();
    let h = customer(f);
    let instr = fresh_instruction(f);
    let sig = cms_sign(f, &h, &instr, &[], None);
    // The signing-time attribute: OID 1.2.840.113549.1.9.5 then SET { UTCTime }. Change a digit.
    let mut der = fs::read(&sig).unwrap();
    let oid = [
        0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x05,
    ];
    let at = der
        .windows(oid.len())
        .position(|w| w == oid)
        .expect("signing-time attribute");
    let time_value = at + oid.len() + 4; // SET hdr (2) + UTCTime hdr (2)
    der[time_value + 1] = if der[time_value + 1] == b'0' {
        b'1'
    } else {
        b'0'
    };
    let changed = uniq(f, "attrs-changed.der");
    fs::write(&changed, der).unwrap();
    verify(f, &instr, &changed).expect("TOTAL_FAILED", "SIG_CRYPTO_FAILURE", 1);
}

#[test]
fn signature_by_another_key_than_the_certificates_is_a_signature_failure() {
    let f = fixture();
    let h = customer(f);
    let (other_key, _) = new_key(f);
    let impostor = Holder {
        key: other_key,
        cert: h.cert.clone(),
        serial: h.serial.clone(),
    };
    let instr = fresh_instruction(f);
    let sig = uniq(f, "impostor.jws");
    fs::write(
        &sig,
        jws(
            &impostor,
            &fs::read(&instr).unwrap(),
            false,
            serde_json::json!({}),
        ),
    )
    .unwrap();
    verify(f, &instr, &sig).expect("TOTAL_FAILED", "SIG_CRYPTO_FAILURE", 1);
}

// ---------------------------------------------------------------------------------------
// Revocation and time

#[test]
fn revoked_before_the_claimed_signing_time_fails() {
    let f = fixture();
    let h = customer(f);
    f.signet(&args![
        "revoke",
        "--serial",
        &h.serial,
        "--reason",
        "keyCompromise"
    ])
    .assert_ok();
    let instr = fresh_instruction(f);
    let sig = cms_sign(f, &h, &instr, &[], Some("+1h"));
    verify_with(f, &f.config, &at(7200), &instr, &sig, &[]).expect("TOTAL_FAILED", "REVOKED", 1);
}

#[test]
fn a_signer_whose_issuing_ca_was_revoked_before_the_claimed_signing_time_fails() {
    let f = fixture();
    // Revoking the customer CA would fail every other test's signers: a store copy of its own,
    // which only a SQLite fixture gives (the suite's SQLite pass runs this test).
    if f.store_url.is_some() {
        return;
    }
    let copy = f.store_copy("revoked-issuing-ca", &[]);
    let h = issue(
        f,
        &copy.config,
        "customer",
        "CN=付款人 CA 撤销,serialNumber=510101199001099999",
    );
    let instr = fresh_instruction(f);
    let sig = cms_sign(f, &h, &instr, &[], Some("+1h"));
    verify_with(f, &copy.config, &at(7200), &instr, &sig, &[]).expect("TOTAL_PASSED", "-", 0);
    let ca = f.ca_dir.join("customer-ca.pem");
    let out = openssl(&args!["x509", "-in", &ca, "-noout", "-serial"]);
    let serial = common::norm_serial(out.stdout.trim().trim_start_matches("serial="));
    f.signet_with(
        &copy.config,
        &[],
        &args!["revoke", "--serial", &serial, "--reason", "cACompromise"],
    )
    .assert_ok();
    let instr = fresh_instruction(f);
    let sig = cms_sign(f, &h, &instr, &[], Some("+1h"));
    let v = verify_with(f, &copy.config, &at(7200), &instr, &sig, &[]);
    v.expect("TOTAL_FAILED", "REVOKED", 1);
    assert!(
        v.out.stdout.contains("the path's CA") && v.out.stdout.contains("cACompromise"),
        "{}",
        v.out.describe()
    );
}

#[test]
fn revoked_after_the_claimed_signing_time_is_indeterminate_without_proof_of_existence() {
    let f = fixture();
    let h = customer(f);
    let instr = fresh_instruction(f);
    let sig = cms_sign(f, &h, &instr, &[], None);
    // Less than the issuance timeout ahead: `revoke` starts by voiding pending issuances older
    // than the timeout by its clock, and further ahead it would void other tests' issuances
    // in flight on this shared fixture (seen once in CI).
    assert!(150 < common::ISSUANCE_TIMEOUT_SECS as i64);
    f.signet_with(
        &f.config,
        &at(150),
        &args!["revoke", "--serial", &h.serial, "--reason", "keyCompromise"],
    )
    .assert_ok();
    verify_with(f, &f.config, &at(240), &instr, &sig, &[]).expect(
        "INDETERMINATE",
        "REVOKED_NO_POE",
        2,
    );
}

#[test]
fn revoked_with_no_claimed_signing_time_fails() {
    let f = fixture();
    let h = customer(f);
    let instr = fresh_instruction(f);
    let sig = cms_sign(f, &h, &instr, &["-noattr"], None);
    f.signet(&args![
        "revoke",
        "--serial",
        &h.serial,
        "--reason",
        "superseded"
    ])
    .assert_ok();
    verify(f, &instr, &sig).expect("TOTAL_FAILED", "REVOKED", 1);
}

#[test]
fn claimed_signing_time_before_not_before_fails() {
    let f = fixture();
    let h = customer(f);
    let instr = fresh_instruction(f);
    let sig = cms_sign(f, &h, &instr, &[], Some("-2d"));
    verify(f, &instr, &sig).expect("TOTAL_FAILED", "NOT_YET_VALID", 1);
}

#[test]
fn claimed_signing_time_after_not_after_is_out_of_bounds() {
    let f = fixture();
    let h = customer(f);
    let instr = fresh_instruction(f);
    let sig = cms_sign(f, &h, &instr, &[], Some("+800d"));
    verify_with(f, &f.config, &at(801 * 86_400), &instr, &sig, &[]).expect(
        "INDETERMINATE",
        "OUT_OF_BOUNDS_NO_POE",
        2,
    );
}

#[test]
fn expired_at_validation_time_is_indeterminate_whatever_signing_time_it_claims() {
    let f = fixture();
    let h = customer(f);
    let instr = fresh_instruction(f);
    // The claim lies inside the certificate's validity, but it is the signer's own word: no
    // proof that the signature existed before the certificate expired.
    let sig = cms_sign(f, &h, &instr, &[], None);
    verify_with(f, &f.config, &at(800 * 86_400), &instr, &sig, &[]).expect(
        "INDETERMINATE",
        "OUT_OF_BOUNDS_NO_POE",
        2,
    );
}

#[test]
fn expired_with_no_claimed_time_is_indeterminate() {
    let f = fixture();
    let h = customer(f);
    let instr = fresh_instruction(f);
    let sig = cms_sign(f, &h, &instr, &["-noattr"], None);
    verify_with(f, &f.config, &at(800 * 86_400), &instr, &sig, &[]).expect(
        "INDETERMINATE",
        "EXPIRED",
        2,
    );
}

#[test]
fn teller_certificate_on_hold_means_try_later() {
    let f = fixture();
    let h = issue(
        f,
        &f.config,
        "teller",
        "CN=暂停柜员,serialNumber=E7002,OU=Branch 7",
    );
    f.signet(&args!["hold", "--serial", &h.serial]).assert_ok();
    let instr = fresh_instruction(f);
    verify(f, &instr, &cms_sign(f, &h, &instr, &[], None)).expect("INDETERMINATE", "TRY_LATER", 2);
}

#[test]
fn an_instruction_that_failed_for_one_signer_passes_when_presented_again_once_that_is_mended() {
    let f = fixture();
    let customer_signer = customer(f);
    let teller = issue(
        f,
        &f.config,
        "teller",
        "CN=复核柜员,serialNumber=E7003,OU=Branch 7",
    );
    f.signet(&args!["hold", "--serial", &teller.serial])
        .assert_ok();
    let instr = fresh_instruction(f);
    let sig = cms_sign_by_two(f, &customer_signer, &teller, &instr);
    verify(f, &instr, &sig).expect("INDETERMINATE", "TRY_LATER", 2);
    // The customer's signature passed on its own, but the instruction did not: it is not
    // remembered as presented.
    f.signet(&args!["release", "--serial", &teller.serial])
        .assert_ok();
    verify(f, &instr, &sig).expect("TOTAL_PASSED", "-", 0);
    // Now it was: a third presentation is a replay.
    verify(f, &instr, &sig).expect("INDETERMINATE", "SIG_CONSTRAINTS_FAILURE", 2);
}

// ---------------------------------------------------------------------------------------
// Chains, policy and algorithms

/// A CA and a leaf made by OpenSSL alone (not Signet's), with the given key algorithm.
fn foreign_holder(f: &Fixture, curve_or_rsa: &[&str], md: &str) -> (Holder, PathBuf) {
    foreign_holder_asserting(f, curve_or_rsa, md, FOREIGN_POLICY, "")
}

/// A signer of another CA whose certificate asserts the certificate policy `policy_oid`.
/// Its certificate has these further extension lines (OpenSSL config) too.
fn foreign_holder_asserting(
    f: &Fixture,
    curve_or_rsa: &[&str],
    md: &str,
    policy_oid: &str,
    leaf_extensions: &str,
) -> (Holder, PathBuf) {
    let dir = uniq(f, "foreign");
    fs::create_dir_all(&dir).unwrap();
    let ext = dir.join("ext.cnf");
    fs::write(
        &ext,
        format!(
            "[leaf]\nkeyUsage=critical,digitalSignature,nonRepudiation\ncertificatePolicies={policy_oid}\n{leaf_extensions}\
             [ca]\nbasicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n"
        ),
    )
    .unwrap();
    let ca_key = dir.join("ca.key");
    let ca = dir.join("ca.pem");
    let mut a = args![
        "req",
        "-x509",
        "-new",
        "-nodes",
        "-days",
        "30",
        "-subj",
        "/CN=Foreign CA",
        "-keyout",
        &ca_key,
        "-out",
        &ca,
        "-extensions",
        "ca",
        "-config",
        &ext,
        format!("-{md}")
    ]
    .to_vec();
    a.extend(curve_or_rsa.iter().map(std::ffi::OsString::from));
    // req -config needs a [req] section.
    fs::write(
        &ext,
        format!(
            "[req]\ndistinguished_name=dn\n[dn]\n{}",
            fs::read_to_string(&ext).unwrap()
        ),
    )
    .unwrap();
    openssl(&a).assert_ok();
    let key = dir.join("leaf.key");
    let csr = dir.join("leaf.csr");
    let mut a = args![
        "req",
        "-new",
        "-nodes",
        "-subj",
        "/CN=Foreign signer",
        "-keyout",
        &key,
        "-out",
        &csr
    ]
    .to_vec();
    a.extend(curve_or_rsa.iter().map(std::ffi::OsString::from));
    openssl(&a).assert_ok();
    let cert = dir.join("leaf.pem");
    openssl(&args![
        "x509",
        "-req",
        "-in",
        &csr,
        "-CA",
        &ca,
        "-CAkey",
        &ca_key,
        "-CAcreateserial",
        "-days",
        "30",
        "-extfile",
        &ext,
        "-extensions",
        "leaf",
        "-out",
        &cert,
        format!("-{md}")
    ])
    .assert_ok();
    (
        Holder {
            key,
            cert,
            serial: String::new(),
        },
        ca,
    )
}

#[test]
fn certificate_from_an_unknown_ca_has_no_chain() {
    let f = fixture();
    let (h, _) = foreign_holder(
        f,
        &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
        "sha256",
    );
    let instr = fresh_instruction(f);
    verify(f, &instr, &cms_sign(f, &h, &instr, &[], None)).expect(
        "INDETERMINATE",
        "NO_CERTIFICATE_CHAIN_FOUND",
        2,
    );
}

#[test]
fn no_signer_certificate_in_the_cms_nor_in_the_store() {
    let f = fixture();
    let (h, _) = foreign_holder(
        f,
        &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
        "sha256",
    );
    let instr = fresh_instruction(f);
    verify(f, &instr, &cms_sign(f, &h, &instr, &["-nocerts"], None)).expect(
        "INDETERMINATE",
        "NO_SIGNING_CERTIFICATE_FOUND",
        2,
    );
}

fn config_with_anchor(f: &Fixture, ca: &Path) -> PathBuf {
    config_with_anchor_entry(
        f,
        &format!(
            "{{ name = \"test-ca\", certificate = {} }}",
            common::toml_str(&ca.to_string_lossy())
        ),
    )
}

/// The fixture's config with one `[verify] anchors` entry (an inline TOML table).
fn config_with_anchor_entry(f: &Fixture, entry: &str) -> PathBuf {
    let text = fs::read_to_string(&f.config).unwrap();
    let p = uniq(f, "anchor.toml");
    fs::write(&p, format!("{text}\n[verify]\nanchors = [{entry}]\n")).unwrap();
    p
}

/// The certificate policy of `foreign_holder`'s signer certificates.
const FOREIGN_POLICY: &str = "1.3.6.1.4.1.32473.9.9";

/// A foreign P-256 CA as a trust anchor whose CRL is the file `crl`, under a signature policy
/// that accepts the foreign signer's certificate policy.
fn config_with_anchor_crl(f: &Fixture, ca: &Path, crl: &Path) -> PathBuf {
    let config = config_with_anchor_entry(
        f,
        &format!(
            "{{ name = \"test-ca\", certificate = {}, crl = {} }}",
            common::toml_str(&ca.to_string_lossy()),
            common::toml_str(&crl.to_string_lossy())
        ),
    );
    let policies = uniq(f, "policies");
    fs::create_dir_all(&policies).unwrap();
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("policies");
    for p in ["customer.toml", "teller.toml", "payment-signature.toml"] {
        fs::copy(repo.join(p), policies.join(p)).unwrap();
    }
    let signature_policy = policies.join("payment-signature.toml");
    let text = fs::read_to_string(&signature_policy).unwrap().replace(
        "accepted_policy_oids = []",
        &format!("accepted_policy_oids = [\"{FOREIGN_POLICY}\"]"),
    );
    fs::write(&signature_policy, text).unwrap();
    let text = fs::read_to_string(&config).unwrap();
    let policies = common::toml_str(&policies.to_string_lossy());
    fs::write(
        &config,
        common::set_toml_key(&text, "issuance", "policies", &policies),
    )
    .unwrap();
    config
}

fn p256_foreign_holder(f: &Fixture) -> (Holder, PathBuf, PathBuf) {
    p256_foreign_holder_asserting(f, FOREIGN_POLICY)
}

/// [`p256_foreign_holder`] whose certificate asserts the certificate policy `policy_oid`.
fn p256_foreign_holder_asserting(f: &Fixture, policy_oid: &str) -> (Holder, PathBuf, PathBuf) {
    p256_foreign_holder_with(f, policy_oid, "")
}

/// [`p256_foreign_holder_asserting`] with further extension lines (OpenSSL config).
fn p256_foreign_holder_with(
    f: &Fixture,
    policy_oid: &str,
    leaf_extensions: &str,
) -> (Holder, PathBuf, PathBuf) {
    let (h, ca) = foreign_holder_asserting(
        f,
        &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
        "sha256",
        policy_oid,
        leaf_extensions,
    );
    let ca_key = ca.with_file_name("ca.key");
    (h, ca, ca_key)
}

#[test]
fn a_signer_listed_on_its_anchors_crl_is_revoked_and_one_not_listed_is_not() {
    let f = fixture();
    let (h, ca, ca_key) = p256_foreign_holder(f);
    let instr = fresh_instruction(f);
    let sig = cms_sign(f, &h, &instr, &[], None);
    let empty = common::openssl_crl(f, &ca, &ca_key, &[]);
    let config = config_with_anchor_crl(f, &ca, &empty);
    verify_with(f, &config, &[], &instr, &sig, &[]).expect("TOTAL_PASSED", "-", 0);
    // Revoked before the next instruction is signed.
    let listing = common::openssl_crl(f, &ca, &ca_key, &[&h.cert]);
    let config = config_with_anchor_crl(f, &ca, &listing);
    let instr = fresh_instruction(f);
    let sig = cms_sign(f, &h, &instr, &[], None);
    verify_with(f, &config, &[], &instr, &sig, &[]).expect("TOTAL_FAILED", "REVOKED", 1);
}

#[test]
fn a_signer_on_hold_on_its_anchors_crl_is_on_hold_not_revoked() {
    let f = fixture();
    let (h, ca, ca_key) = p256_foreign_holder(f);
    let held = common::openssl_crl_on_hold(f, &ca, &ca_key, &[&h.cert]);
    let config = config_with_anchor_crl(f, &ca, &held);
    let instr = fresh_instruction(f);
    let sig = cms_sign(f, &h, &instr, &[], None);
    let v = verify_with(f, &config, &[], &instr, &sig, &[]);
    v.expect("INDETERMINATE", "TRY_LATER", 2);
    assert!(
        v.out.stdout.contains("on hold since"),
        "{}",
        v.out.describe()
    );
}

/// A signer whose certificate a sub-CA of a partner anchor issued: (signer, anchor, anchor's
/// key, sub-CA). The sub-CA asserts anyPolicy.
fn foreign_sub_ca_holder(f: &Fixture) -> (Holder, PathBuf, PathBuf, PathBuf) {
    foreign_sub_ca_holder_with(f, "certificatePolicies=2.5.29.32.0\n")
}

/// [`foreign_sub_ca_holder`] whose sub-CA has these extension lines (OpenSSL config) besides
/// its basic constraints and key usage.
fn foreign_sub_ca_holder_with(
    f: &Fixture,
    sub_ca_extensions: &str,
) -> (Holder, PathBuf, PathBuf, PathBuf) {
    let (_, ca, ca_key) = p256_foreign_holder(f);
    let dir = ca.parent().unwrap().to_path_buf();
    let ext = dir.join("ext.cnf");
    let mut text = fs::read_to_string(&ext).unwrap();
    text.push_str(
        "[subca]\nbasicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\n",
    );
    text.push_str(sub_ca_extensions);
    fs::write(&ext, text).unwrap();
    let issue = |name: &str, subject: &str, issuer: &Path, issuer_key: &Path, section: &str| {
        let (key, csr, cert) = (
            dir.join(format!("{name}.key")),
            dir.join(format!("{name}.csr")),
            dir.join(format!("{name}.pem")),
        );
        openssl(&args![
            "req",
            "-new",
            "-nodes",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-subj",
            subject,
            "-keyout",
            &key,
            "-out",
            &csr
        ])
        .assert_ok();
        openssl(&args![
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            issuer,
            "-CAkey",
            issuer_key,
            "-CAcreateserial",
            "-days",
            "30",
            "-extfile",
            &ext,
            "-extensions",
            section,
            "-out",
            &cert,
            "-sha256"
        ])
        .assert_ok();
        (key, cert)
    };
    let (sub_key, sub) = issue("sub", "/CN=Foreign Sub CA", &ca, &ca_key, "subca");
    let (key, cert) = issue(
        "subleaf",
        "/CN=Foreign sub-CA signer",
        &sub,
        &sub_key,
        "leaf",
    );
    let holder = Holder {
        key,
        cert,
        serial: String::new(),
    };
    (holder, ca, ca_key, sub)
}

/// `h`'s CMS signature of a fresh instruction, carrying the certificates `carried`, verified
/// with the partner anchor `ca` (and an empty CRL of it) configured.
fn verify_partner_signature(
    f: &Fixture,
    h: &Holder,
    ca: &Path,
    ca_key: &Path,
    carried: Option<&Path>,
) -> Verdict {
    let config = config_with_anchor_crl(f, ca, &common::openssl_crl(f, ca, ca_key, &[]));
    let instr = fresh_instruction(f);
    let carried = carried.map(|c| c.to_string_lossy().to_string());
    let extra: Vec<&str> = carried
        .iter()
        .flat_map(|c| ["-certfile", c.as_str()])
        .collect();
    let sig = cms_sign(f, h, &instr, &extra, None);
    verify_with(f, &config, &[], &instr, &sig, &[])
}

/// INDETERMINATE / CHAIN_CONSTRAINTS_FAILURE, for the reason `why` names.
fn expect_chain_constraints(v: &Verdict, why: &str) {
    v.expect("INDETERMINATE", "CHAIN_CONSTRAINTS_FAILURE", 2);
    assert!(v.out.stdout.contains(why), "{}", v.out.describe());
}

/// The verdict of a signer whose certificate policy the signature policy does not accept.
fn expect_policy_not_accepted(v: &Verdict) {
    expect_chain_constraints(v, "not one the signature policy accepts");
}

#[test]
fn a_signer_of_a_partner_anchors_sub_ca_has_no_revocation_source_in_the_anchors_crl() {
    let f = fixture();
    let (h, ca, ca_key, sub) = foreign_sub_ca_holder(f);
    let v = verify_partner_signature(f, &h, &ca, &ca_key, Some(&sub));
    v.expect("INDETERMINATE", "TRY_LATER", 2);
    assert!(
        v.out.stdout.contains("not the sub-CA's"),
        "{}",
        v.out.describe()
    );
}

#[test]
fn a_signer_whose_extended_key_usage_names_no_signing_purpose_is_refused() {
    // RFC 5280 4.2.1.12: a TLS server certificate signs handshakes, not payments.
    let f = fixture();
    let (h, ca, ca_key) =
        p256_foreign_holder_with(f, FOREIGN_POLICY, "extendedKeyUsage=serverAuth\n");
    expect_chain_constraints(
        &verify_partner_signature(f, &h, &ca, &ca_key, None),
        "extended key usage (1.3.6.1.5.5.7.3.1) names no purpose",
    );
    // One purpose the policy accepts is enough.
    let (h, ca, ca_key) = p256_foreign_holder_with(
        f,
        FOREIGN_POLICY,
        "extendedKeyUsage=serverAuth,clientAuth\n",
    );
    verify_partner_signature(f, &h, &ca, &ca_key, None).expect("TOTAL_PASSED", "-", 0);
}

#[test]
fn a_partner_sub_ca_without_certificate_policies_leaves_its_signers_policy_unaccepted() {
    // RFC 5280 6.1.3 (e): no certificatePolicies in a CA of the path, no valid policy below it.
    let f = fixture();
    let (h, ca, ca_key, sub) = foreign_sub_ca_holder_with(f, "");
    expect_policy_not_accepted(&verify_partner_signature(f, &h, &ca, &ca_key, Some(&sub)));
}

#[test]
fn another_cas_certificate_asserting_a_signet_profiles_policy_is_not_taken_for_that_profile() {
    let f = fixture();
    // The customer profile's OID, written by a partner CA: Signet never vetted this holder nor
    // saw its key made, so the certificate is not a customer certificate.
    let (h, ca, ca_key) = p256_foreign_holder_asserting(f, "1.3.6.1.4.1.32473.7373.1.1");
    expect_policy_not_accepted(&verify_partner_signature(f, &h, &ca, &ca_key, None));
}

#[test]
fn a_running_service_reads_a_replaced_anchor_crl_without_a_restart() {
    let f = fixture();
    let (h, ca, ca_key) = p256_foreign_holder(f);
    let crl = uniq(f, "anchor.crl");
    fs::copy(common::openssl_crl(f, &ca, &ca_key, &[]), &crl).unwrap();
    let config = config_with_anchor_crl(f, &ca, &crl);
    let cli = |args: &[&str]| {
        let out = f.signet_with(&config, &[], args);
        out.assert_ok();
        out.stdout.trim().to_string()
    };
    cli(&["tenant", "add", "Anchor CRL bank"]);
    let gateway = cli(&[
        "credential",
        "add",
        "--tenant",
        "Anchor CRL bank",
        "--role",
        "gateway",
    ]);
    let server = Server::start_config(f, &config, &[]);
    let verify_over_http = || {
        let instr = fresh_instruction(f);
        let sig = cms_sign(f, &h, &instr, &[], None);
        let body = serde_json::json!({
            "instruction": base64_std(&fs::read(&instr).unwrap()),
            "signature": base64_std(&fs::read(&sig).unwrap()),
        });
        let r = post_json(&server, "/v1/verifications", Some(&gateway), &body);
        assert_eq!(r.status, 200, "{}", r.body);
        let v = r.json();
        (
            v["indication"].as_str().unwrap_or_default().to_string(),
            v["sub_indication"].as_str().unwrap_or("-").to_string(),
        )
    };
    assert_eq!(verify_over_http(), ("TOTAL_PASSED".into(), "-".into()));
    // The partner CA revokes the signer; the operator renames its new CRL into place.
    // thisUpdate has whole seconds: the new CRL is issued a second after the first.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let old = uniq(f, "anchor.crl.old");
    fs::copy(&crl, &old).unwrap();
    let new = uniq(f, "anchor.crl.new");
    fs::copy(common::openssl_crl(f, &ca, &ca_key, &[&h.cert]), &new).unwrap();
    fs::rename(&new, &crl).unwrap();
    assert_eq!(
        verify_over_http(),
        ("TOTAL_FAILED".into(), "REVOKED".into()),
        "the service still uses the CRL it read at start"
    );
    // The older CRL put back by mistake would un-revoke the signer: it is not used.
    fs::rename(&old, &crl).unwrap();
    assert_eq!(
        verify_over_http(),
        ("TOTAL_FAILED".into(), "REVOKED".into())
    );
    assert!(
        server.logs_within(0, std::time::Duration::from_secs(5), |log| log
            .contains("issued before the CRL in use")),
        "the log says why: {}",
        server.log()
    );
    server.stop();
}

#[test]
fn an_anchor_crl_signet_cannot_rely_on_stops_the_start_and_says_why() {
    let f = fixture();
    let (h, ca, ca_key) = p256_foreign_holder(f);
    let instr = fresh_instruction(f);
    let sig = cms_sign(f, &h, &instr, &[], None);
    let (_, other_ca, other_key) = p256_foreign_holder(f);
    // The other CA has the same name ("Foreign CA") but its own key: an impostor's CRL.
    let impostor = common::openssl_crl(f, &other_ca, &other_key, &[]);
    let garbage = uniq(f, "garbage.crl");
    fs::write(&garbage, "not a CRL\n").unwrap();
    // A CRL of one partition of the anchor's certificates: a signer missing from it may be
    // listed on another.
    let partial = common::openssl_crl_with(
        f,
        &ca,
        &ca_key,
        &[],
        "issuingDistributionPoint = critical, @idp\n[idp]\nfullname = URI:http://partner.example/crl/part-1.crl",
    );
    let delta =
        common::openssl_crl_with(f, &ca, &ca_key, &[], "2.5.29.27 = critical, DER:02:01:01");
    let unknown = common::openssl_crl_with(
        f,
        &ca,
        &ca_key,
        &[],
        "1.3.6.1.4.1.32473.9.7 = critical, DER:05:00",
    );
    // Dated by a partner's clock set years ahead: in use, it would keep every correct CRL
    // after it out as older.
    let future = common::openssl_crl_dated(f, &ca, &ca_key, "20991231000000Z", "21000107000000Z");
    // Without nextUpdate nothing says when it stops being current.
    let empty = common::openssl_crl(f, &ca, &ca_key, &[]);
    let no_next_update = resigned(f, &empty, &ca, &ca_key, "no-next-update", |tbs| {
        tbs.next_update = None
    });
    // An entry whose reasonCode is an INTEGER, not the ENUMERATED CRLReason.
    let listing = common::openssl_crl(f, &ca, &ca_key, &[&h.cert]);
    let bad_reason = resigned(f, &listing, &ca, &ca_key, "bad-reason", |tbs| {
        let entry = &mut tbs.revoked_certificates.as_mut().unwrap()[0];
        entry.crl_entry_extensions = Some(vec![x509_cert::ext::Extension {
            extn_id: const_oid::ObjectIdentifier::new_unwrap("2.5.29.21"),
            critical: false,
            extn_value: der::asn1::OctetString::new(vec![0x02, 0x01, 0x01]).unwrap(),
        }]);
    });
    for (crl, says) in [
        (&impostor, "not signed by the anchor's key"),
        (&garbage, "not a CRL"),
        (&partial, "issuingDistributionPoint"),
        (&delta, "a delta CRL"),
        (&unknown, "a critical CRL extension Signet does not know"),
        (&future, "issued in the future"),
        (&no_next_update, "a CRL without nextUpdate"),
        (&bad_reason, "reasonCode is not a CRLReason"),
    ] {
        let out = verify_with(
            f,
            &config_with_anchor_crl(f, &ca, crl),
            &[],
            &instr,
            &sig,
            &[],
        )
        .out;
        assert!(
            !out.success() && out.stdout.is_empty(),
            "{}",
            out.describe()
        );
        assert!(
            out.stderr.contains("trust anchor test-ca") && out.stderr.contains(says),
            "{}",
            out.describe()
        );
        assert!(!out.stderr.contains("panicked"), "{}", out.describe());
    }
}

/// `crl` (PEM, from OpenSSL) changed by `edit` and signed again with `ca_key`, as DER: a CRL
/// of the anchor, signed by its key, with what OpenSSL's `ca` would not write.
fn resigned(
    f: &Fixture,
    crl: &Path,
    ca: &Path,
    ca_key: &Path,
    name: &str,
    edit: impl FnOnce(&mut x509_cert::crl::TbsCertList<x509_cert::certificate::Rfc5280>),
) -> PathBuf {
    use der::{Decode, Encode};
    let (_, der) = der::pem::decode_vec(&fs::read(crl).unwrap()).unwrap();
    let mut list =
        x509_cert::crl::CertificateList::<x509_cert::certificate::Rfc5280>::from_der(&der).unwrap();
    edit(&mut list.tbs_cert_list);
    let key =
        p256::ecdsa::SigningKey::from_pkcs8_pem(&fs::read_to_string(ca_key).unwrap()).unwrap();
    let sig: p256::ecdsa::DerSignature = key.sign(&list.tbs_cert_list.to_der().unwrap());
    list.signature = der::asn1::BitString::from_bytes(sig.as_bytes()).unwrap();
    let out = uniq(f, &format!("{name}.crl"));
    fs::write(&out, list.to_der().unwrap()).unwrap();
    // Still the anchor's, signed by its key: only the edit is wrong with it.
    let checked = openssl(&args![
        "crl", "-inform", "DER", "-in", &out, "-noout", "-CAfile", ca
    ]);
    checked.assert_ok();
    assert!(
        format!("{}{}", checked.stdout, checked.stderr).contains("verify OK"),
        "{}",
        checked.describe()
    );
    out
}

#[test]
fn p384_key_of_an_extra_anchor_is_a_crypto_constraints_failure() {
    let f = fixture();
    let (h, ca) = foreign_holder(
        f,
        &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384"],
        "sha384",
    );
    let config = config_with_anchor(f, &ca);
    let instr = fresh_instruction(f);
    let sig = cms_sign(f, &h, &instr, &[], None);
    verify_with(f, &config, &[], &instr, &sig, &[]).expect(
        "INDETERMINATE",
        "CRYPTO_CONSTRAINTS_FAILURE",
        2,
    );
}

#[test]
fn rsa_key_of_an_extra_anchor_is_a_crypto_constraints_failure() {
    let f = fixture();
    let (h, ca) = foreign_holder(f, &["-newkey", "rsa:2048"], "sha256");
    let config = config_with_anchor(f, &ca);
    let instr = fresh_instruction(f);
    let sig = cms_sign(f, &h, &instr, &[], None);
    verify_with(f, &config, &[], &instr, &sig, &[]).expect(
        "INDETERMINATE",
        "CRYPTO_CONSTRAINTS_FAILURE",
        2,
    );
}

#[test]
fn sha1_digest_is_a_crypto_constraints_failure() {
    let f = fixture();
    let h = customer(f);
    let instr = fresh_instruction(f);
    let sig = cms_sign(f, &h, &instr, &["-md", "sha1"], None);
    verify(f, &instr, &sig).expect("INDETERMINATE", "CRYPTO_CONSTRAINTS_FAILURE", 2);
}

#[test]
fn certificate_of_a_profile_not_accepted_for_payments_is_a_chain_constraints_failure() {
    let f = fixture();
    let policies = uniq(f, "policies");
    fs::create_dir_all(&policies).unwrap();
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("policies");
    for p in ["customer.toml", "teller.toml", "payment-signature.toml"] {
        fs::copy(repo.join(p), policies.join(p)).unwrap();
    }
    let login = fs::read_to_string(policies.join("customer.toml"))
        .unwrap()
        .replace("1.3.6.1.4.1.32473.7373.1.1", "1.3.6.1.4.1.32473.7373.1.9");
    fs::write(policies.join("login.toml"), login).unwrap();
    let text = fs::read_to_string(&f.config).unwrap();
    let config = uniq(f, "login.toml");
    fs::write(
        &config,
        common::set_toml_key(
            &text,
            "issuance",
            "policies",
            &common::toml_str(&policies.to_string_lossy()),
        ),
    )
    .unwrap();
    let h = issue(f, &config, "login", "CN=登录,serialNumber=L1");
    let instr = fresh_instruction(f);
    verify_with(
        f,
        &config,
        &[],
        &instr,
        &cms_sign(f, &h, &instr, &[], None),
        &[],
    )
    .expect("INDETERMINATE", "CHAIN_CONSTRAINTS_FAILURE", 2);
}

#[test]
fn two_signers_are_each_reported_and_pass_only_together() {
    let f = fixture();
    let a = customer(f);
    let b = customer(f);
    let instr = fresh_instruction(f);
    let sig = cms_sign_by_two(f, &a, &b, &instr);
    let v = verify(f, &instr, &sig);
    v.expect("TOTAL_PASSED", "-", 0);
    assert_eq!(v.report["signers"].as_array().unwrap().len(), 2);

    let (stranger, _) = foreign_holder(
        f,
        &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
        "sha256",
    );
    let instr2 = fresh_instruction(f);
    let sig2 = cms_sign_by_two(f, &a, &stranger, &instr2);
    let v2 = verify(f, &instr2, &sig2);
    assert_eq!(v2.indication(), "INDETERMINATE", "{}", v2.out.describe());
    let indications: Vec<_> = v2.report["signers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["indication"].as_str().unwrap().to_string())
        .collect();
    assert!(
        indications.contains(&"TOTAL_PASSED".to_string())
            && indications.contains(&"INDETERMINATE".to_string()),
        "{indications:?}"
    );
}

// ---------------------------------------------------------------------------------------
// Replay

#[test]
fn one_signer_twice_in_one_signature_is_not_a_replay_of_itself() {
    let f = fixture();
    let a = customer(f);
    let instr = fresh_instruction(f);
    let payload = fs::read(&instr).unwrap();
    // Two signatures by one key (ECDSA's randomness makes them differ), in one JWS.
    let parts = |jws: String| -> Value {
        let p: Vec<&str> = jws.split('.').collect();
        serde_json::json!({"protected": p[0], "signature": p[2]})
    };
    let general = serde_json::json!({
        "signatures": [
            parts(jws(&a, &payload, true, Value::Null)),
            parts(jws(&a, &payload, true, Value::Null)),
        ]
    });
    let sig = uniq(f, "twice.json");
    fs::write(&sig, general.to_string()).unwrap();
    let v = verify(f, &instr, &sig);
    assert_eq!(
        v.report["signers"].as_array().map(Vec::len),
        Some(2),
        "{}",
        v.out.describe()
    );
    v.expect("TOTAL_PASSED", "-", 0);
    // Presented again, it is one.
    verify(f, &instr, &sig).expect("INDETERMINATE", "SIG_CONSTRAINTS_FAILURE", 2);
}

#[test]
fn the_same_instruction_signed_again_by_the_same_signer_is_a_replay() {
    let f = fixture();
    let h = customer(f);
    let instr = fresh_instruction(f);
    let first = verify(f, &instr, &cms_sign(f, &h, &instr, &[], None));
    first.expect("TOTAL_PASSED", "-", 0);
    // A new signature (other bytes: ECDSA is randomized, and malleable) over the same instruction.
    let second = verify(f, &instr, &cms_sign(f, &h, &instr, &[], None));
    second.expect("INDETERMINATE", "SIG_CONSTRAINTS_FAILURE", 2);
    assert!(
        second.report["replay"]["first_seen"].is_string(),
        "{}",
        second.out.stdout
    );
}

#[test]
fn a_repeated_instruction_id_is_a_replay_even_with_other_content() {
    let f = fixture();
    let h = customer(f);
    let id = format!("DUP-{}", std::process::id());
    let i1 = instruction(
        f,
        &format!(r#"{{"instruction_id":"{id}","amount":"1.00"}}"#),
    );
    verify(f, &i1, &cms_sign(f, &h, &i1, &[], None)).expect("TOTAL_PASSED", "-", 0);
    let i2 = instruction(
        f,
        &format!(r#"{{"instruction_id":"{id}","amount":"9999.00"}}"#),
    );
    verify(f, &i2, &cms_sign(f, &h, &i2, &[], None)).expect(
        "INDETERMINATE",
        "SIG_CONSTRAINTS_FAILURE",
        2,
    );
}

#[test]
fn an_instruction_naming_its_id_twice_is_refused_and_not_remembered() {
    // A gateway whose parser takes the first "instruction_id" would pay under another id than
    // the one a last-wins parser (serde_json's) would let the replay guard key.
    let f = fixture();
    let h = customer(f);
    let id = format!("TWICE-{}", std::process::id());
    let text =
        format!(r#"{{"instruction_id":"{id}-a","amount":"5.00","instruction_id":"{id}-b"}}"#);
    let i = instruction(f, &text);
    let v = verify(f, &i, &cms_sign(f, &h, &i, &[], None));
    v.expect("INDETERMINATE", "SIG_CONSTRAINTS_FAILURE", 2);
    assert!(
        v.out.stdout.contains("member 2 times"),
        "{}",
        v.out.describe()
    );
    // Not remembered: an instruction with its last id alone (the one serde_json would read)
    // is no replay of it.
    let once = instruction(
        f,
        &format!(r#"{{"instruction_id":"{id}-b","amount":"5.00"}}"#),
    );
    verify(f, &once, &cms_sign(f, &h, &once, &[], None)).expect("TOTAL_PASSED", "-", 0);
}

#[test]
fn a_repeated_instruction_id_inside_attached_signatures_presented_alone_is_a_replay() {
    let f = fixture();
    let h = customer(f);
    let id = format!("DUP-ATTACHED-{}", std::process::id());
    // Only the signatures are presented: each carries its instruction.
    let nothing = uniq(f, "empty-instruction.json");
    fs::write(&nothing, b"").unwrap();
    let signed = |amount: &str| {
        let i = instruction(
            f,
            &format!(r#"{{"instruction_id":"{id}","amount":"{amount}"}}"#),
        );
        cms_sign(f, &h, &i, &["-nodetach"], None)
    };
    verify(f, &nothing, &signed("1.00")).expect("TOTAL_PASSED", "-", 0);
    verify(f, &nothing, &signed("9999.00")).expect("INDETERMINATE", "SIG_CONSTRAINTS_FAILURE", 2);
}

// ---------------------------------------------------------------------------------------
// Bad input

#[test]
fn garbage_truncated_and_nested_signatures_are_format_failures() {
    let f = fixture();
    let instr = fresh_instruction(f);
    let h = customer(f);
    let good = fs::read(cms_sign(f, &h, &instr, &[], None)).unwrap();
    let mut nested = Vec::new();
    for _ in 0..10_000 {
        nested.extend_from_slice(&[0x30, 0x80]);
    }
    for (name, bytes) in [
        ("garbage", b"\x00\x01 this is not a signature".to_vec()),
        ("truncated", good[..good.len() / 2].to_vec()),
        ("nested", nested),
        ("empty", Vec::new()),
    ] {
        let p = uniq(f, name);
        fs::write(&p, bytes).unwrap();
        let v = verify(f, &instr, &p);
        assert_eq!(
            (v.indication(), v.code()),
            ("TOTAL_FAILED", Some(1)),
            "{name}: {}",
            v.out.describe()
        );
        assert!(!v.out.stderr.contains("panicked"), "{name}");
    }
}

#[test]
fn jws_with_alg_none_or_hs256_fails() {
    let f = fixture();
    let h = customer(f);
    let instr = fresh_instruction(f);
    let payload = fs::read(&instr).unwrap();
    let b64 = |d: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(d);
    for alg in ["none", "HS256"] {
        let header = serde_json::json!({"alg": alg, "x5c": [base64::engine::general_purpose::STANDARD.encode(pem_to_der(&h.cert))]});
        let token = format!(
            "{}.{}.{}",
            b64(header.to_string().as_bytes()),
            b64(&payload),
            if alg == "none" {
                String::new()
            } else {
                b64(b"not-a-mac")
            }
        );
        let p = uniq(f, "alg.jws");
        fs::write(&p, token).unwrap();
        let v = verify(f, &instr, &p);
        assert_eq!(
            v.indication(),
            "TOTAL_FAILED",
            "{alg}: {}",
            v.out.describe()
        );
        assert!(
            ["FORMAT_FAILURE", "SIG_CRYPTO_FAILURE"].contains(&v.sub()),
            "{alg}: {}",
            v.sub()
        );
    }
}

#[test]
fn verify_usage_errors_exit_64() {
    let f = fixture();
    let out = f.signet(&args!["verify", "--instruction"]);
    assert_eq!(out.status.code(), Some(64), "{}", out.describe());
    let missing = uniq(f, "missing");
    let out = f.signet(&args![
        "verify",
        "--instruction",
        &missing,
        "--signature",
        &missing
    ]);
    assert_eq!(out.status.code(), Some(64), "{}", out.describe());
}

// ---------------------------------------------------------------------------------------
// Receipt

#[test]
fn receipt_verifies_with_openssl_and_signet_and_one_edited_byte_breaks_it() {
    let f = fixture();
    f.signet(&["ca", "upgrade"]).assert_ok();
    let h = customer(f);
    let instr = fresh_instruction(f);
    let v = verify_with(
        f,
        &f.config,
        &[],
        &instr,
        &cms_sign(f, &h, &instr, &[], None),
        &["--receipt"],
    );
    v.expect("TOTAL_PASSED", "-", 0);
    let der = base64::engine::general_purpose::STANDARD
        .decode(v.report["receipt"].as_str().expect("receipt in the report"))
        .unwrap();
    let receipt = uniq(f, "receipt.der");
    fs::write(&receipt, &der).unwrap();
    let out = f.openssl_cms_verify(&receipt);
    out.assert_ok();
    assert!(out.stdout.contains("TOTAL_PASSED"), "{}", out.describe());
    f.signet(&args!["receipt", "verify", "--receipt", &receipt])
        .assert_ok();

    // One edited byte inside the signed content.
    let mut edited = der.clone();
    let pos = edited
        .windows(12)
        .position(|w| w == b"TOTAL_PASSED")
        .unwrap();
    edited[pos] = b'X';
    let bad = uniq(f, "receipt-edited.der");
    fs::write(&bad, edited).unwrap();
    assert!(!f.openssl_cms_verify(&bad).success());
    let out = f.signet(&args!["receipt", "verify", "--receipt", &bad]);
    assert_eq!(out.status.code(), Some(1), "{}", out.describe());
}

#[test]
fn attached_signature_with_no_separate_instruction_names_its_own_content() {
    let f = fixture();
    let h = customer(f);
    let empty = instruction(f, "");
    for _ in 0..2 {
        // Two different instructions from the same signer: neither is a replay of the other.
        let instr = fresh_instruction(f);
        let sig = cms_sign(f, &h, &instr, &["-nodetach"], None);
        let v = verify(f, &empty, &sig);
        v.expect("TOTAL_PASSED", "-", 0);
        let digest = openssl(&args!["dgst", "-sha256", "-r", &instr]);
        assert!(digest
            .stdout
            .starts_with(v.report["instruction_sha256"].as_str().unwrap()));
    }
}
