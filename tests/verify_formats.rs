//! The signature-format layer of verification (CMS SignedData and JWS) against signatures made
//! by OpenSSL's `cms -sign` and by hand with the p256 crate, over a throwaway CA made with the
//! OpenSSL command line. No HSM or store here: certificates the signature does not carry come
//! from a small resolver.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use der::{DecodePem, Encode};
use hmac::{KeyInit, Mac};
use p256::pkcs8::DecodePrivateKey;
use serde_json::json;
use sha2::Digest;
use signature::Signer;
use signet::verify::certs::KnownCert;
use signet::verify::cms::examine_cms;
use signet::verify::evidence::{
    CertificateResolver, Crypto, DigestAlg, SigAlg, SignatureFormat, SignerEvidence, SignerRef,
};
use signet::verify::input::{decode_signature, SignatureInput};
use signet::verify::jws::examine_jws;
use x509_cert::ext::pkix::SubjectKeyIdentifier;
use x509_cert::Certificate;

const INSTRUCTION: &[u8] =
    b"{\"id\":\"PAY-2024-000017\",\"from\":\"6222020200112233\",\"to\":\"6222020200445566\",\"amount\":\"1250.00\",\"ccy\":\"CNY\"}";

fn changed(instr: &[u8]) -> Vec<u8> {
    let mut v = instr.to_vec();
    let i = v.len() - 5;
    v[i] ^= 0x01;
    v
}

// ---------------------------------------------------------------------------------------------
// A throwaway PKI made with the OpenSSL command line
// ---------------------------------------------------------------------------------------------

struct Pki {
    dir: tempfile::TempDir,
}

fn openssl(dir: &Path, args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

const LEAF_EXT: &str = "[v3]\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,nonRepudiation\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n";

impl Pki {
    /// A P-256 CA and two P-256 signers, `a` (serial 0x1001) and `b` (serial 0x1002).
    fn new() -> Pki {
        let pki = Pki {
            dir: tempfile::tempdir().expect("tempdir"),
        };
        let d = pki.dir.path();
        std::fs::write(d.join("leaf.ext"), LEAF_EXT).unwrap();
        pki.key("ca", "ec", "P-256");
        openssl(
            d,
            &[
                "req",
                "-x509",
                "-new",
                "-key",
                "ca.key",
                "-subj",
                "/O=Test Bank/CN=Test CA",
                "-days",
                "30",
                "-out",
                "ca.pem",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
        pki.leaf("a", "ec", "P-256", "0x1001");
        pki.leaf("b", "ec", "P-256", "0x1002");
        pki
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn key(&self, name: &str, kind: &str, param: &str) {
        let out = format!("{name}.key");
        let args: Vec<&str> = match kind {
            "ec" => vec![
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                if param == "P-384" {
                    "ec_paramgen_curve:P-384"
                } else {
                    "ec_paramgen_curve:P-256"
                },
                "-out",
                &out,
            ],
            _ => vec![
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
                &out,
            ],
        };
        openssl(self.dir.path(), &args);
    }

    /// A signer certificate `name.pem` (key `name.key`) issued by the CA.
    fn leaf(&self, name: &str, kind: &str, param: &str, serial: &str) {
        self.key(name, kind, param);
        self.cert_for_key(name, name, serial);
    }

    /// Another certificate `cert.pem` for the existing key `key.key`.
    fn cert_for_key(&self, cert: &str, key: &str, serial: &str) {
        let d = self.dir.path();
        let (k, csr, pem) = (
            format!("{key}.key"),
            format!("{cert}.csr"),
            format!("{cert}.pem"),
        );
        let subj = format!("/O=Test Bank/CN=Signer {cert}");
        openssl(
            d,
            &["req", "-new", "-key", &k, "-subj", &subj, "-out", &csr],
        );
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-set_serial",
                serial,
                "-days",
                "10",
                "-sha256",
                "-extfile",
                "leaf.ext",
                "-extensions",
                "v3",
                "-out",
                &pem,
            ],
        );
    }

    fn cert(&self, name: &str) -> Certificate {
        Certificate::from_pem(std::fs::read(self.path(&format!("{name}.pem"))).unwrap())
            .expect("certificate PEM")
    }

    fn cert_der(&self, name: &str) -> Vec<u8> {
        self.cert(name).to_der().unwrap()
    }

    fn p256_key(&self, name: &str) -> p256::ecdsa::SigningKey {
        let pem = std::fs::read_to_string(self.path(&format!("{name}.key"))).unwrap();
        p256::ecdsa::SigningKey::from_pkcs8_pem(&pem).expect("P-256 PKCS#8 key")
    }

    /// `openssl cms -sign -binary -md sha256` of `instr` with the given signers and options.
    fn cms(&self, instr: &[u8], signers: &[&str], opts: &[&str]) -> Vec<u8> {
        let d = self.dir.path();
        std::fs::write(d.join("instr"), instr).unwrap();
        let mut args: Vec<String> = [
            "cms", "-sign", "-binary", "-in", "instr", "-outform", "DER", "-out", "sig.der",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if !opts.contains(&"-md") {
            args.extend(["-md".into(), "sha256".into()]);
        }
        for s in signers {
            args.extend([
                "-signer".into(),
                format!("{s}.pem"),
                "-inkey".into(),
                format!("{s}.key"),
            ]);
        }
        args.extend(opts.iter().map(|s| s.to_string()));
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        openssl(d, &a);
        std::fs::read(d.join("sig.der")).unwrap()
    }
}

// ---------------------------------------------------------------------------------------------
// Resolvers
// ---------------------------------------------------------------------------------------------

/// Finds certificates the way the store would: by issuer+serial, SKI or thumbprint.
struct Store(Vec<Certificate>);

impl CertificateResolver for Store {
    fn resolve(&self, signer: &SignerRef) -> Option<Arc<KnownCert>> {
        self.0
            .iter()
            .find(|c| {
                let tbs = c.tbs_certificate();
                match signer {
                    SignerRef::IssuerSerial { issuer_der, serial } => {
                        tbs.issuer().to_der().unwrap() == *issuer_der
                            && hex::encode(tbs.serial_number().as_bytes()) == *serial
                    }
                    SignerRef::SubjectKeyId(id) => matches!(
                        tbs.get_extension::<SubjectKeyIdentifier>(),
                        Ok(Some((_, ski))) if ski.0.as_bytes() == id.as_slice()
                    ),
                    SignerRef::Thumbprint(t) => {
                        sha2::Sha256::digest(c.to_der().unwrap()).as_slice() == t.as_slice()
                    }
                    SignerRef::None => false,
                }
            })
            .map(|c| Arc::new(KnownCert::from_certificate(c.clone()).unwrap()))
    }
}

fn no_store() -> Store {
    Store(Vec::new())
}

/// Answers every question with the same certificate (a store that got it wrong).
struct Always(Certificate);

impl CertificateResolver for Always {
    fn resolve(&self, _: &SignerRef) -> Option<Arc<KnownCert>> {
        Some(Arc::new(
            KnownCert::from_certificate(self.0.clone()).unwrap(),
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn one(mut ev: Vec<SignerEvidence>) -> SignerEvidence {
    assert_eq!(ev.len(), 1, "one signer expected");
    ev.remove(0)
}

fn subject(e: &SignerEvidence) -> String {
    e.certificate
        .as_ref()
        .expect("a signer certificate")
        .cert
        .tbs_certificate()
        .subject()
        .to_string()
}

fn check<'a>(e: &'a SignerEvidence, name: &str) -> &'a signet::verify::evidence::AttributeCheck {
    e.checks
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no check {name} in {:?}", e.checks))
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn is_sig_failure(c: &Crypto) -> bool {
    matches!(c, Crypto::SigCryptoFailure(_))
}

/// Replaces the last occurrence of `from` by `to` (same length).
fn patch_last(der: &mut [u8], from: &[u8], to: &[u8]) {
    assert_eq!(from.len(), to.len());
    let pos = der
        .windows(from.len())
        .rposition(|w| w == from)
        .expect("pattern present");
    der[pos..pos + to.len()].copy_from_slice(to);
}

// ---------------------------------------------------------------------------------------------
// CMS
// ---------------------------------------------------------------------------------------------

#[test]
fn cms_detached_with_signed_attributes_verifies() {
    let pki = Pki::new();
    let der = pki.cms(INSTRUCTION, &["a"], &["-certfile", "ca.pem"]);
    let e = one(examine_cms(&der, INSTRUCTION, &no_store()).unwrap());
    assert_eq!(e.crypto, Crypto::Valid, "{:?}", e.checks);
    assert_eq!(e.format, SignatureFormat::CmsDetached);
    assert!(subject(&e).contains("CN=Signer a"), "{}", subject(&e));
    assert_eq!(e.digest, DigestAlg::Sha256);
    assert_eq!(e.algorithm, SigAlg::Ecdsa);
    assert!(e.signed_attributes);
    match &e.signer_ref {
        SignerRef::IssuerSerial { issuer_der, serial } => {
            assert_eq!(serial, "1001");
            assert_eq!(
                *issuer_der,
                pki.cert("ca").tbs_certificate().subject().to_der().unwrap()
            );
        }
        other => panic!("OpenSSL names the signer by issuer and serial, got {other:?}"),
    }
    // The CA certificate came along as a candidate intermediate.
    assert_eq!(e.other_certificates.len(), 1);
    assert!(e.other_certificates[0]
        .cert
        .tbs_certificate()
        .subject()
        .to_string()
        .contains("CN=Test CA"));
    let t = e.claimed_signing_time.expect("OpenSSL adds signing-time");
    assert!((t - now()).abs() < 300, "claimed {t}");
    for name in ["content-type", "message-digest", "signing-time"] {
        assert!(check(&e, name).passed, "{name}: {:?}", check(&e, name));
    }
}

#[test]
fn cms_detached_changed_instruction_is_a_hash_failure() {
    let pki = Pki::new();
    let der = pki.cms(INSTRUCTION, &["a"], &[]);
    let e = one(examine_cms(&der, &changed(INSTRUCTION), &no_store()).unwrap());
    assert_eq!(e.crypto, Crypto::HashFailure);
    assert!(!check(&e, "message-digest").passed);
}

#[test]
fn cms_attached() {
    let pki = Pki::new();
    let der = pki.cms(INSTRUCTION, &["a"], &["-nodetach"]);
    // Content from the CMS alone, and checked against the same instruction.
    for instr in [&b""[..], INSTRUCTION] {
        let e = one(examine_cms(&der, instr, &no_store()).unwrap());
        assert_eq!(e.format, SignatureFormat::CmsAttached);
        assert_eq!(e.crypto, Crypto::Valid, "{:?}", e.checks);
    }
    // The gateway's instruction is not what was signed.
    let e = one(examine_cms(&der, &changed(INSTRUCTION), &no_store()).unwrap());
    assert_eq!(e.crypto, Crypto::HashFailure);
    assert!(!check(&e, "content-matches-instruction").passed);
    assert!(
        check(&e, "message-digest").passed,
        "the attached content itself is intact"
    );
}

#[test]
fn cms_without_signed_attributes() {
    let pki = Pki::new();
    let der = pki.cms(INSTRUCTION, &["a"], &["-noattr"]);
    let e = one(examine_cms(&der, INSTRUCTION, &no_store()).unwrap());
    assert_eq!(e.crypto, Crypto::Valid);
    assert!(!e.signed_attributes);
    assert_eq!(e.claimed_signing_time, None);
    assert!(e.checks.is_empty());

    let e = one(examine_cms(&der, &changed(INSTRUCTION), &no_store()).unwrap());
    assert!(is_sig_failure(&e.crypto), "{:?}", e.crypto);

    // Attached and without attributes.
    let der = pki.cms(INSTRUCTION, &["a"], &["-noattr", "-nodetach"]);
    let e = one(examine_cms(&der, b"", &no_store()).unwrap());
    assert_eq!(
        (e.format, e.crypto),
        (SignatureFormat::CmsAttached, Crypto::Valid)
    );
}

#[test]
fn cms_cades_checks_ess_signing_certificate_v2() {
    let pki = Pki::new();
    let der = pki.cms(INSTRUCTION, &["a"], &["-cades"]);
    let e = one(examine_cms(&der, INSTRUCTION, &no_store()).unwrap());
    assert_eq!(e.crypto, Crypto::Valid, "{:?}", e.checks);
    assert!(check(&e, "ess-signing-certificate-v2").passed);

    // Certificate substitution: a second certificate for the same key. The signature holds
    // under either, but the signer committed to `a2` and the store hands back `a`.
    pki.cert_for_key("a2", "a", "0x1003");
    std::fs::copy(pki.path("a.key"), pki.path("a2.key")).unwrap();
    let der = pki.cms(INSTRUCTION, &["a2"], &["-cades", "-nocerts"]);
    let e = one(examine_cms(&der, INSTRUCTION, &Always(pki.cert("a"))).unwrap());
    assert_eq!(
        e.crypto,
        Crypto::SigCryptoFailure("ESS signing-certificate-v2 names another certificate".into())
    );
    assert!(!check(&e, "ess-signing-certificate-v2").passed);
    // With the right certificate, the same bytes verify.
    let e = one(examine_cms(&der, INSTRUCTION, &Always(pki.cert("a2"))).unwrap());
    assert_eq!(e.crypto, Crypto::Valid);
}

#[test]
fn cms_sha1_digest_is_checked_and_reported() {
    let pki = Pki::new();
    let der = pki.cms(INSTRUCTION, &["a"], &["-md", "sha1"]);
    let e = one(examine_cms(&der, INSTRUCTION, &no_store()).unwrap());
    assert_eq!(e.digest, DigestAlg::Sha1);
    assert_eq!(
        e.crypto,
        Crypto::Valid,
        "the policy layer refuses SHA-1, not this one"
    );
    let e = one(examine_cms(&der, &changed(INSTRUCTION), &no_store()).unwrap());
    assert_eq!(e.crypto, Crypto::HashFailure);
}

#[test]
fn cms_two_signers_each_reported() {
    let pki = Pki::new();
    let der = pki.cms(INSTRUCTION, &["a", "b"], &[]);
    let ev = examine_cms(&der, INSTRUCTION, &no_store()).unwrap();
    assert_eq!(ev.len(), 2);
    let mut subjects: Vec<String> = ev.iter().map(subject).collect();
    subjects.sort();
    assert!(
        subjects[0].contains("Signer a") && subjects[1].contains("Signer b"),
        "{subjects:?}"
    );
    for e in &ev {
        assert_eq!(e.crypto, Crypto::Valid);
        assert_eq!(
            e.other_certificates.len(),
            1,
            "the other signer's certificate"
        );
    }
    let ev = examine_cms(&der, &changed(INSTRUCTION), &no_store()).unwrap();
    assert!(ev.iter().all(|e| e.crypto == Crypto::HashFailure));
}

#[test]
fn cms_without_certificates_uses_the_resolver() {
    let pki = Pki::new();
    let der = pki.cms(INSTRUCTION, &["a"], &["-nocerts"]);
    // Nowhere to be found.
    let e = one(examine_cms(&der, INSTRUCTION, &no_store()).unwrap());
    assert_eq!(e.crypto, Crypto::NotChecked);
    assert!(e.certificate.is_none());
    // From the store, by issuer and serial.
    let store = Store(vec![pki.cert("b"), pki.cert("a")]);
    let e = one(examine_cms(&der, INSTRUCTION, &store).unwrap());
    assert_eq!(e.crypto, Crypto::Valid);
    assert!(subject(&e).contains("Signer a"));
    // By subject key identifier.
    let der = pki.cms(INSTRUCTION, &["a"], &["-nocerts", "-keyid"]);
    let e = one(examine_cms(&der, INSTRUCTION, &store).unwrap());
    assert!(
        matches!(e.signer_ref, SignerRef::SubjectKeyId(_)),
        "{:?}",
        e.signer_ref
    );
    assert_eq!(e.crypto, Crypto::Valid);
}

#[test]
fn cms_signature_by_another_key_than_the_certificates() {
    let pki = Pki::new();
    let der = pki.cms(INSTRUCTION, &["a"], &["-nocerts"]);
    let e = one(examine_cms(&der, INSTRUCTION, &Always(pki.cert("b"))).unwrap());
    assert!(is_sig_failure(&e.crypto), "{:?}", e.crypto);
    let der = pki.cms(INSTRUCTION, &["a"], &["-nocerts", "-noattr"]);
    let e = one(examine_cms(&der, INSTRUCTION, &Always(pki.cert("b"))).unwrap());
    assert!(is_sig_failure(&e.crypto), "{:?}", e.crypto);
}

#[test]
fn cms_signed_attributes_changed_after_signing() {
    let pki = Pki::new();
    let mut der = pki.cms(INSTRUCTION, &["a"], &[]);
    let before = one(examine_cms(&der, INSTRUCTION, &no_store()).unwrap());
    // signing-time attribute: OID 1.2.840.113549.1.9.5, SET { UTCTime "YYMMDDHHMMSSZ" }.
    let oid = [
        0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x05,
    ];
    let at = der
        .windows(oid.len())
        .position(|w| w == oid)
        .expect("signing-time");
    let value = at + oid.len() + 4; // 31 0f 17 0d
    assert_eq!(der[value - 2], 0x17, "UTCTime");
    let seconds_digit = value + 11;
    der[seconds_digit] = if der[seconds_digit] == b'0' {
        b'1'
    } else {
        b'0'
    };
    let e = one(examine_cms(&der, INSTRUCTION, &no_store()).unwrap());
    assert!(is_sig_failure(&e.crypto), "{:?}", e.crypto);
    assert_ne!(e.claimed_signing_time, before.claimed_signing_time);
    assert!(check(&e, "message-digest").passed, "only the time changed");
}

#[test]
fn cms_sm2_is_recognized_not_a_parse_error() {
    let pki = Pki::new();
    let mut der = pki.cms(INSTRUCTION, &["a"], &[]);
    // ecdsa-with-SHA256 → SM2-with-SM3 (1.2.156.10197.1.501), same length, in the SignerInfo.
    patch_last(
        &mut der,
        &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02],
        &[0x06, 0x08, 0x2a, 0x81, 0x1c, 0xcf, 0x55, 0x01, 0x83, 0x75],
    );
    let e = one(examine_cms(&der, INSTRUCTION, &no_store()).unwrap());
    assert_eq!(e.algorithm, SigAlg::Sm2);
    assert!(
        matches!(&e.crypto, Crypto::AlgorithmNotSupported(m) if m.contains("SM2")),
        "{:?}",
        e.crypto
    );
    // The same without signed attributes (as GM/T toolkits often send).
    let mut der = pki.cms(INSTRUCTION, &["a"], &["-noattr"]);
    patch_last(
        &mut der,
        &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02],
        &[0x06, 0x08, 0x2a, 0x81, 0x1c, 0xcf, 0x55, 0x01, 0x83, 0x75],
    );
    let e = one(examine_cms(&der, INSTRUCTION, &no_store()).unwrap());
    assert!(matches!(&e.crypto, Crypto::AlgorithmNotSupported(m) if m.contains("SM2")));
}

#[test]
fn cms_p384_verifies_and_rsa_is_not_supported() {
    let pki = Pki::new();
    pki.leaf("p384", "ec", "P-384", "0x2001");
    let der = pki.cms(INSTRUCTION, &["p384"], &["-md", "sha384"]);
    let e = one(examine_cms(&der, INSTRUCTION, &no_store()).unwrap());
    assert_eq!(
        (e.digest.clone(), e.crypto.clone()),
        (DigestAlg::Sha384, Crypto::Valid)
    );
    let e = one(examine_cms(&der, &changed(INSTRUCTION), &no_store()).unwrap());
    assert_eq!(e.crypto, Crypto::HashFailure);

    pki.leaf("rsa", "rsa", "2048", "0x3001");
    let der = pki.cms(INSTRUCTION, &["rsa"], &[]);
    let e = one(examine_cms(&der, INSTRUCTION, &no_store()).unwrap());
    assert_eq!(e.algorithm, SigAlg::RsaPkcs1);
    assert!(
        matches!(&e.crypto, Crypto::AlgorithmNotSupported(m) if m.contains("RSA")),
        "{:?}",
        e.crypto
    );
}

#[test]
fn cms_ber_indefinite_lengths_as_streamed() {
    // `-stream` gives BER: indefinite lengths and a chunked eContent, as Java toolkits send.
    let pki = Pki::new();
    let big: Vec<u8> = INSTRUCTION.repeat(200); // more than one streamed chunk
    for (opts, attached) in [
        (&["-stream"][..], false),
        (&["-stream", "-nodetach"][..], true),
        (&["-stream", "-nodetach", "-noattr"][..], true),
    ] {
        let der = pki.cms(&big, &["a"], opts);
        assert_eq!(
            &der[..2],
            &[0x30, 0x80],
            "{opts:?}: OpenSSL wrote indefinite lengths"
        );
        let e = one(examine_cms(&der, if attached { b"" } else { &big }, &no_store()).unwrap());
        assert_eq!(e.crypto, Crypto::Valid, "{opts:?}: {:?}", e.checks);
        let e = one(examine_cms(&der, &changed(&big), &no_store()).unwrap());
        assert_ne!(e.crypto, Crypto::Valid, "{opts:?}");
        assert!(matches!(
            decode_signature(&der).unwrap(),
            SignatureInput::Cms(_)
        ));
    }
}

#[test]
fn cms_garbage_truncated_and_nested_are_format_errors() {
    let pki = Pki::new();
    let der = pki.cms(INSTRUCTION, &["a"], &[]);
    for cut in [1, 2, 10, der.len() / 2, der.len() - 1] {
        assert!(
            examine_cms(&der[..cut], INSTRUCTION, &no_store()).is_err(),
            "cut at {cut}"
        );
    }
    let mut trailing = der.clone();
    trailing.push(0);
    assert!(examine_cms(&trailing, INSTRUCTION, &no_store()).is_err());
    assert!(examine_cms(b"not a signature at all", INSTRUCTION, &no_store()).is_err());
    assert!(examine_cms(
        &[0x30, 0x84, 0xff, 0xff, 0xff, 0xff, 0x00],
        INSTRUCTION,
        &no_store()
    )
    .is_err());
    // 10 000 nested SEQUENCE headers, lengths consistent.
    let mut nested = vec![0x05, 0x00];
    for _ in 0..10_000 {
        let len = nested.len();
        let mut h = vec![0x30, 0x83, (len >> 16) as u8, (len >> 8) as u8, len as u8];
        h.append(&mut nested);
        nested = h;
    }
    let err = examine_cms(&nested, INSTRUCTION, &no_store()).unwrap_err();
    assert!(err.0.contains("nested"), "{err}");
    // The same headers with lengths that do not add up.
    let bogus: Vec<u8> = std::iter::repeat_n([0x30u8, 0x80 | 1, 0x7f], 10_000)
        .flatten()
        .collect();
    assert!(examine_cms(&bogus, INSTRUCTION, &no_store()).is_err());
    // A DER certificate is not a signature.
    assert!(examine_cms(&pki.cert_der("a"), INSTRUCTION, &no_store()).is_err());
}

#[test]
fn cms_transport_encodings_through_decode_signature() {
    let pki = Pki::new();
    let der = pki.cms(INSTRUCTION, &["a"], &[]);
    std::fs::write(pki.path("sig.der"), &der).unwrap();
    let pem = openssl(
        pki.dir.path(),
        &[
            "cms", "-cmsout", "-inform", "DER", "-in", "sig.der", "-outform", "PEM",
        ],
    );
    let pem = String::from_utf8(pem).unwrap();
    assert!(pem.starts_with("-----BEGIN CMS-----"), "{pem}");
    let b64 = STANDARD.encode(&der);
    let wrapped: String = b64
        .as_bytes()
        .chunks(64)
        .map(|c| format!("{}\r\n", std::str::from_utf8(c).unwrap()))
        .collect();
    let inputs: Vec<Vec<u8>> = vec![
        der.clone(),
        pem.clone().into_bytes(),
        pem.replace("CMS-----", "PKCS7-----").into_bytes(),
        pem.replace("CMS-----", "SIGNED DATA-----").into_bytes(),
        b64.clone().into_bytes(),
        format!("  {wrapped}\n").into_bytes(),
        b64.trim_end_matches('=').into(),
    ];
    for input in inputs {
        match decode_signature(&input).unwrap() {
            SignatureInput::Cms(d) => {
                assert_eq!(d, der);
                assert_eq!(
                    one(examine_cms(&d, INSTRUCTION, &no_store()).unwrap()).crypto,
                    Crypto::Valid
                );
            }
            other => panic!("not CMS: {other:?}"),
        }
    }
    assert!(decode_signature(pem.replace("CMS-----", "CERTIFICATE-----").as_bytes()).is_err());
    assert!(decode_signature(&pem.as_bytes()[..pem.len() - 20]).is_err());
}

// ---------------------------------------------------------------------------------------------
// JWS
// ---------------------------------------------------------------------------------------------

fn b64u(b: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(b)
}

/// Signing input and signature parts of a JWS (compact serialization pieces).
struct Jws {
    protected: String,
    /// The payload as it appears in the JWS (base64url, or raw with b64:false).
    payload: String,
    signature: String,
}

impl Jws {
    fn compact(&self, detached: bool) -> String {
        let p = if detached { "" } else { self.payload.as_str() };
        format!("{}.{}.{}", self.protected, p, self.signature)
    }
    fn flattened(&self, detached: bool) -> String {
        let mut v = json!({"protected": self.protected, "signature": self.signature});
        if !detached {
            v["payload"] = json!(self.payload);
        }
        v.to_string()
    }
}

fn es256(key: &p256::ecdsa::SigningKey, header: serde_json::Value, payload: &[u8]) -> Jws {
    let protected = b64u(header.to_string().as_bytes());
    let b64 = header.get("b64") != Some(&json!(false));
    let payload = if b64 {
        b64u(payload)
    } else {
        String::from_utf8(payload.to_vec()).unwrap()
    };
    let sig: p256::ecdsa::Signature = key.sign(format!("{protected}.{payload}").as_bytes());
    Jws {
        protected,
        payload,
        signature: b64u(&sig.to_bytes()),
    }
}

fn x5c_header(pki: &Pki, names: &[&str]) -> serde_json::Value {
    let certs: Vec<String> = names
        .iter()
        .map(|n| STANDARD.encode(pki.cert_der(n)))
        .collect();
    json!({"alg": "ES256", "x5c": certs})
}

#[test]
fn jws_compact_embedded_and_detached() {
    let pki = Pki::new();
    let jws = es256(
        &pki.p256_key("a"),
        x5c_header(&pki, &["a", "ca"]),
        INSTRUCTION,
    );
    let embedded = jws.compact(false);
    for instr in [&b""[..], INSTRUCTION] {
        let e = one(examine_jws(&embedded, instr, &no_store()).unwrap());
        assert_eq!(e.format, SignatureFormat::JwsCompact);
        assert_eq!(e.crypto, Crypto::Valid, "{:?}", e.checks);
        assert!(subject(&e).contains("Signer a"));
        assert_eq!(e.other_certificates.len(), 1);
        assert_eq!(
            (e.digest.clone(), e.algorithm.clone()),
            (DigestAlg::Sha256, SigAlg::Ecdsa)
        );
        assert_eq!(
            e.signer_ref,
            SignerRef::Thumbprint(sha2::Sha256::digest(pki.cert_der("a")).to_vec())
        );
    }
    let e = one(examine_jws(&embedded, &changed(INSTRUCTION), &no_store()).unwrap());
    assert_eq!(e.crypto, Crypto::HashFailure);
    assert!(!check(&e, "content-matches-instruction").passed);

    // Payload changed in the JWS itself.
    let forged = format!(
        "{}.{}.{}",
        jws.protected,
        b64u(&changed(INSTRUCTION)),
        jws.signature
    );
    let e = one(examine_jws(&forged, b"", &no_store()).unwrap());
    assert!(is_sig_failure(&e.crypto), "{:?}", e.crypto);

    // Detached (RFC 7515 appendix F).
    let detached = jws.compact(true);
    assert!(detached.contains(".."));
    let e = one(examine_jws(&detached, INSTRUCTION, &no_store()).unwrap());
    assert_eq!(e.crypto, Crypto::Valid);
    let e = one(examine_jws(&detached, &changed(INSTRUCTION), &no_store()).unwrap());
    assert!(is_sig_failure(&e.crypto), "{:?}", e.crypto);

    for s in [embedded, detached] {
        assert_eq!(
            decode_signature(s.as_bytes()).unwrap(),
            SignatureInput::Jws(s.clone())
        );
    }
}

#[test]
fn jws_flattened_and_general_json() {
    let pki = Pki::new();
    let jws = es256(&pki.p256_key("a"), x5c_header(&pki, &["a"]), INSTRUCTION);
    for detached in [false, true] {
        let text = jws.flattened(detached);
        assert_eq!(
            decode_signature(text.as_bytes()).unwrap(),
            SignatureInput::Jws(text.clone())
        );
        let e = one(examine_jws(&text, INSTRUCTION, &no_store()).unwrap());
        assert_eq!(e.format, SignatureFormat::JwsFlattened);
        assert_eq!(e.crypto, Crypto::Valid, "{:?}", e.checks);
        let e = one(examine_jws(&text, &changed(INSTRUCTION), &no_store()).unwrap());
        let want_hash_failure = !detached;
        assert_eq!(
            e.crypto == Crypto::HashFailure,
            want_hash_failure,
            "{:?}",
            e.crypto
        );
        assert_eq!(is_sig_failure(&e.crypto), detached);
    }

    // General serialization, two signers, one of them bad.
    let b = es256(&pki.p256_key("b"), x5c_header(&pki, &["b"]), INSTRUCTION);
    let bad = es256(&pki.p256_key("b"), x5c_header(&pki, &["a"]), INSTRUCTION);
    let general = json!({
        "payload": jws.payload,
        "signatures": [
            {"protected": jws.protected, "signature": jws.signature},
            {"protected": b.protected, "signature": b.signature},
            {"protected": bad.protected, "signature": bad.signature},
        ]
    })
    .to_string();
    let ev = examine_jws(&general, INSTRUCTION, &no_store()).unwrap();
    assert_eq!(ev.len(), 3);
    assert_eq!(ev[0].crypto, Crypto::Valid);
    assert_eq!(ev[1].crypto, Crypto::Valid);
    assert!(subject(&ev[1]).contains("Signer b"));
    assert!(
        is_sig_failure(&ev[2].crypto),
        "key b, certificate a: {:?}",
        ev[2].crypto
    );
}

#[test]
fn jws_unencoded_payload_rfc7797() {
    let pki = Pki::new();
    let mut header = x5c_header(&pki, &["a"]);
    header["b64"] = json!(false);
    header["crit"] = json!(["b64"]);
    let jws = es256(&pki.p256_key("a"), header.clone(), INSTRUCTION);
    assert!(jws.payload.starts_with('{'), "raw payload");
    // Detached compact and embedded JSON.
    for text in [jws.compact(true), jws.flattened(false), jws.flattened(true)] {
        let e = one(examine_jws(&text, INSTRUCTION, &no_store()).unwrap());
        assert_eq!(e.crypto, Crypto::Valid, "{text}: {:?}", e.checks);
        assert!(check(&e, "b64").passed);
        let e = one(examine_jws(&text, &changed(INSTRUCTION), &no_store()).unwrap());
        assert!(
            matches!(e.crypto, Crypto::SigCryptoFailure(_) | Crypto::HashFailure),
            "{:?}",
            e.crypto
        );
    }
    // b64:false not listed in crit: the meaning of the signature is ambiguous.
    let mut h = header.clone();
    h.as_object_mut().unwrap().remove("crit");
    let jws = es256(&pki.p256_key("a"), h, INSTRUCTION);
    let e = one(examine_jws(&jws.compact(true), INSTRUCTION, &no_store()).unwrap());
    assert!(is_sig_failure(&e.crypto), "{:?}", e.crypto);
    assert!(!check(&e, "b64").passed);
}

#[test]
fn jws_x5t_s256_resolved_from_the_store() {
    let pki = Pki::new();
    let thumb = sha2::Sha256::digest(pki.cert_der("a")).to_vec();
    let header = json!({"alg": "ES256", "x5t#S256": b64u(&thumb)});
    let text = es256(&pki.p256_key("a"), header, INSTRUCTION).compact(true);
    let e = one(examine_jws(&text, INSTRUCTION, &no_store()).unwrap());
    assert_eq!(
        (e.crypto.clone(), e.certificate.is_none()),
        (Crypto::NotChecked, true)
    );
    assert_eq!(e.signer_ref, SignerRef::Thumbprint(thumb.clone()));
    let store = Store(vec![pki.cert("b"), pki.cert("a")]);
    let e = one(examine_jws(&text, INSTRUCTION, &store).unwrap());
    assert_eq!(e.crypto, Crypto::Valid);
    assert!(subject(&e).contains("Signer a"));

    // x5t#S256 and x5c that disagree.
    let mut header = x5c_header(&pki, &["a"]);
    header["x5t#S256"] = json!(b64u(&sha2::Sha256::digest(pki.cert_der("b"))));
    let text = es256(&pki.p256_key("a"), header, INSTRUCTION).compact(false);
    let e = one(examine_jws(&text, b"", &no_store()).unwrap());
    assert!(is_sig_failure(&e.crypto), "{:?}", e.crypto);
}

#[test]
fn jws_signed_by_another_key() {
    let pki = Pki::new();
    let text = es256(&pki.p256_key("b"), x5c_header(&pki, &["a"]), INSTRUCTION).compact(false);
    let e = one(examine_jws(&text, INSTRUCTION, &no_store()).unwrap());
    assert!(is_sig_failure(&e.crypto), "{:?}", e.crypto);
}

#[test]
fn jws_none_and_hmac_are_not_signatures() {
    let pki = Pki::new();
    let payload = b64u(INSTRUCTION);
    let none = format!("{}.{payload}.", b64u(br#"{"alg":"none"}"#));
    assert!(matches!(
        decode_signature(none.as_bytes()).unwrap(),
        SignatureInput::Jws(_)
    ));
    let e = one(examine_jws(&none, INSTRUCTION, &no_store()).unwrap());
    assert_eq!(e.algorithm, SigAlg::NotASignature("none".into()));
    assert!(is_sig_failure(&e.crypto));

    let header = b64u(
        json!({"alg": "HS256", "x5c": [STANDARD.encode(pki.cert_der("a"))]})
            .to_string()
            .as_bytes(),
    );
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"shared secret").unwrap();
    mac.update(format!("{header}.{payload}").as_bytes());
    let hs = format!("{header}.{payload}.{}", b64u(&mac.finalize().into_bytes()));
    let e = one(examine_jws(&hs, INSTRUCTION, &no_store()).unwrap());
    assert_eq!(e.algorithm, SigAlg::NotASignature("HS256".into()));
    assert_eq!(
        e.crypto,
        Crypto::SigCryptoFailure("alg HS256 is not a public-key signature".into())
    );

    for alg in ["RS256", "PS256", "ES512"] {
        let header = b64u(
            json!({"alg": alg, "x5c": [STANDARD.encode(pki.cert_der("a"))]})
                .to_string()
                .as_bytes(),
        );
        let text = format!("{header}.{payload}.{}", b64u(&[1u8; 64]));
        let e = one(examine_jws(&text, INSTRUCTION, &no_store()).unwrap());
        assert!(
            matches!(e.crypto, Crypto::AlgorithmNotSupported(_)),
            "{alg}: {:?}",
            e.crypto
        );
    }
}

#[test]
fn jws_signature_encoding_and_crit() {
    let pki = Pki::new();
    let key = pki.p256_key("a");
    let jws = es256(&key, x5c_header(&pki, &["a"]), INSTRUCTION);
    // The same signature, DER-encoded: refused.
    let raw = URL_SAFE_NO_PAD.decode(&jws.signature).unwrap();
    let der = p256::ecdsa::Signature::from_slice(&raw).unwrap().to_der();
    let text = format!("{}.{}.{}", jws.protected, jws.payload, b64u(der.as_bytes()));
    let e = one(examine_jws(&text, INSTRUCTION, &no_store()).unwrap());
    assert!(
        matches!(&e.crypto, Crypto::SigCryptoFailure(m) if m.contains("64")),
        "{:?}",
        e.crypto
    );
    // Truncated signature.
    let text = format!("{}.{}.{}", jws.protected, jws.payload, b64u(&raw[..63]));
    assert!(is_sig_failure(
        &one(examine_jws(&text, INSTRUCTION, &no_store()).unwrap()).crypto
    ));

    // An extension Signet does not understand, marked critical.
    let mut header = x5c_header(&pki, &["a"]);
    header["crit"] = json!(["exp"]);
    header["exp"] = json!(1);
    let text = es256(&key, header, INSTRUCTION).compact(false);
    let e = one(examine_jws(&text, INSTRUCTION, &no_store()).unwrap());
    assert!(is_sig_failure(&e.crypto), "{:?}", e.crypto);
    assert!(!check(&e, "jws-crit").passed);
}

#[test]
fn jws_claimed_signing_time() {
    let pki = Pki::new();
    let key = pki.p256_key("a");
    let mut header = x5c_header(&pki, &["a"]);
    header["iat"] = json!(1_714_552_200);
    let e = one(examine_jws(
        &es256(&key, header.clone(), INSTRUCTION).compact(false),
        b"",
        &no_store(),
    )
    .unwrap());
    assert_eq!(
        (e.claimed_signing_time, e.crypto),
        (Some(1_714_552_200), Crypto::Valid)
    );
    // JAdES sigT, listed in crit as JAdES asks; it wins over iat.
    header["sigT"] = json!("2024-05-01T16:30:00+08:00");
    header["crit"] = json!(["sigT"]);
    let e = one(examine_jws(
        &es256(&key, header.clone(), INSTRUCTION).compact(false),
        b"",
        &no_store(),
    )
    .unwrap());
    assert_eq!(
        (e.claimed_signing_time, e.crypto),
        (Some(1_714_552_200), Crypto::Valid)
    );
    header["sigT"] = json!("yesterday");
    let e = one(examine_jws(
        &es256(&key, header, INSTRUCTION).compact(false),
        b"",
        &no_store(),
    )
    .unwrap());
    assert!(is_sig_failure(&e.crypto));
}

#[test]
fn jws_p384_es384() {
    let pki = Pki::new();
    pki.leaf("p384", "ec", "P-384", "0x2001");
    let pem = std::fs::read_to_string(pki.path("p384.key")).unwrap();
    let key = p384::ecdsa::SigningKey::from_pkcs8_pem(&pem).unwrap();
    let header = json!({"alg": "ES384", "x5c": [STANDARD.encode(pki.cert_der("p384"))]});
    let protected = b64u(header.to_string().as_bytes());
    let payload = b64u(INSTRUCTION);
    let sig: p384::ecdsa::Signature = key.sign(format!("{protected}.{payload}").as_bytes());
    let text = format!("{protected}.{payload}.{}", b64u(&sig.to_bytes()));
    let e = one(examine_jws(&text, INSTRUCTION, &no_store()).unwrap());
    assert_eq!(e.crypto, Crypto::Valid);
    // ES256 claimed over a P-384 key.
    let header = json!({"alg": "ES256", "x5c": [STANDARD.encode(pki.cert_der("p384"))]});
    let text = es256(&pki.p256_key("a"), header, INSTRUCTION).compact(false);
    assert!(is_sig_failure(
        &one(examine_jws(&text, INSTRUCTION, &no_store()).unwrap()).crypto
    ));
}

#[test]
fn jws_malformed_are_format_errors() {
    let pki = Pki::new();
    let jws = es256(&pki.p256_key("a"), x5c_header(&pki, &["a"]), INSTRUCTION);
    let bad: Vec<String> = vec![
        "".into(),
        "a.b".into(),
        "a.b.c.d".into(),
        format!("!!!.{}.{}", jws.payload, jws.signature),
        format!("{}.{}.***", jws.protected, jws.payload),
        format!("{}.{}.{}", b64u(b"not json"), jws.payload, jws.signature),
        format!(
            "{}.{}.{}",
            b64u(&[0xff, 0xfe, 0x7b]),
            jws.payload,
            jws.signature
        ),
        format!(
            "{}.{}.{}",
            b64u(br#"{"alg":"ES256","alg":"none"}"#),
            jws.payload,
            jws.signature
        ),
        format!(
            "{}.{}.{}",
            b64u(br#"{"typ":"JWT"}"#),
            jws.payload,
            jws.signature
        ),
        format!(
            "{}.{}.{}",
            b64u(br#"{"alg":"ES256","x5c":["%%%"]}"#),
            jws.payload,
            jws.signature
        ),
        format!(
            "{}.{}.{}",
            b64u(br#"{"alg":"ES256","x5c":["AAAA"]}"#),
            jws.payload,
            jws.signature
        ),
        format!("{}.%%%.{}", jws.protected, jws.signature),
        "{".into(),
        r#"{"payload":"x"}"#.into(),
        r#"{"protected":"e30","signature":"","signatures":[]}"#.into(),
        r#"{"signatures":[]}"#.into(),
        format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)),
        format!(
            "{{\"signature\":{}{}}}",
            "[".repeat(10_000),
            "]".repeat(10_000)
        ),
    ];
    for b in &bad {
        assert!(
            examine_jws(b, INSTRUCTION, &no_store()).is_err(),
            "accepted {b:.80}"
        );
    }
}
