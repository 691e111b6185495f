//! The signature formats Signet produces (`signet::sign::format`), signed here with a software
//! P-256 key under a throwaway root → issuing CA → leaf made with the openssl CLI: no HSM.
//!
//! Each CMS form (attached, detached, detached over a given SHA-256) verifies with
//! `openssl cms -verify` (also with `-cades`, which checks ESS signing-certificate-v2) and with
//! Signet's own `examine_cms`; the JWS verifies with `examine_jws`; a signature over other data
//! does not verify anywhere.

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use base64::Engine as _;
use der::{Decode, Encode};
use p256::ecdsa::signature::Signer;
use p256::ecdsa::SigningKey;
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding};
use sha2::{Digest, Sha256};
use signet::sign::format::{cms_signed_data, jws_es256, CmsContent, CmsSigner, SignerCert};
use signet::verify::cms::examine_cms;
use signet::verify::evidence::{
    CertificateResolver, Crypto, SignatureFormat, SignerEvidence, SignerRef,
};
use signet::verify::jws::examine_jws;

const B64_URL: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// A payment confirmation, with bytes that text-mode handling would change.
const DATA: &[u8] =
    "付款确认 No. 2026-000417\r\nAmount: CNY 1,234.50\r\n\u{0}\u{ff}end\n".as_bytes();
const OTHER: &[u8] = b"Amount: CNY 9,234.50";

struct Pki {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    key: SigningKey,
    signer: SignerCert,
    /// Only the root: the issuing CA has to come from the signature's certificates.
    root_pem: PathBuf,
}

fn run<S: AsRef<OsStr>>(args: &[S], cwd: &Path) -> std::process::Output {
    Command::new("openssl")
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("openssl runs")
}

#[track_caller]
fn openssl_ok<S: AsRef<OsStr>>(args: &[S], cwd: &Path) {
    let out = run(args, cwd);
    assert!(
        out.status.success(),
        "openssl {:?} failed\n{}{}",
        args.iter().map(|a| a.as_ref()).collect::<Vec<_>>(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn pem_to_der(path: &Path) -> Vec<u8> {
    let (_, der) = der::pem::decode_vec(&fs::read(path).unwrap()).unwrap();
    der
}

/// Root CA and issuing CA (openssl keys), leaf with the software key `key`.
fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        fs::write(
            dir.join("ext.cnf"),
            "[ca]\n\
             basicConstraints = critical, CA:TRUE\n\
             keyUsage = critical, keyCertSign, cRLSign\n\
             subjectKeyIdentifier = hash\n\
             authorityKeyIdentifier = keyid\n\
             [leaf]\n\
             basicConstraints = critical, CA:FALSE\n\
             keyUsage = critical, digitalSignature, nonRepudiation\n\
             subjectKeyIdentifier = hash\n\
             authorityKeyIdentifier = keyid\n",
        )
        .unwrap();
        for k in ["root.key", "issuing.key"] {
            openssl_ok(
                &[
                    "genpkey",
                    "-algorithm",
                    "EC",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-256",
                ]
                .into_iter()
                .chain(["-out", k])
                .collect::<Vec<_>>(),
                &dir,
            );
        }
        openssl_ok(
            &[
                "req",
                "-x509",
                "-new",
                "-key",
                "root.key",
                "-subj",
                "/C=CN/O=Test Bank/CN=Test Root",
                "-days",
                "3650",
                "-sha256",
                "-extensions",
                "ca",
                "-config",
                "ext.cnf",
                "-out",
                "root.pem",
            ],
            &dir,
        );
        // `req` reads its distinguished name from the config unless -subj: give it an empty
        // [req] section through a config of its own.
        fs::write(
            dir.join("req.cnf"),
            "[req]\ndistinguished_name = dn\n[dn]\n",
        )
        .unwrap();
        let key = SigningKey::from_slice(&Sha256::digest(b"signet sign_format test leaf")).unwrap();
        fs::write(
            dir.join("leaf.key"),
            key.to_pkcs8_pem(LineEnding::LF).unwrap().as_bytes(),
        )
        .unwrap();
        for (name, key_file, subj) in [
            (
                "issuing",
                "issuing.key",
                "/C=CN/O=Test Bank/CN=Test Issuing CA",
            ),
            ("leaf", "leaf.key", "/C=CN/O=Test Bank/CN=Test E-Seal"),
        ] {
            openssl_ok(
                &[
                    "req",
                    "-new",
                    "-config",
                    "req.cnf",
                    "-key",
                    key_file,
                    "-subj",
                    subj,
                    "-out",
                    &format!("{name}.csr"),
                ],
                &dir,
            );
        }
        openssl_ok(
            &[
                "x509",
                "-req",
                "-in",
                "issuing.csr",
                "-CA",
                "root.pem",
                "-CAkey",
                "root.key",
                "-set_serial",
                "0x1001",
                "-days",
                "1825",
                "-sha256",
                "-extfile",
                "ext.cnf",
                "-extensions",
                "ca",
                "-out",
                "issuing.pem",
            ],
            &dir,
        );
        openssl_ok(
            &[
                "x509",
                "-req",
                "-in",
                "leaf.csr",
                "-CA",
                "issuing.pem",
                "-CAkey",
                "issuing.key",
                "-set_serial",
                "0x7e57ab1e",
                "-days",
                "365",
                "-sha256",
                "-extfile",
                "ext.cnf",
                "-extensions",
                "leaf",
                "-out",
                "leaf.pem",
            ],
            &dir,
        );
        let signer = SignerCert {
            certificate_der: pem_to_der(&dir.join("leaf.pem")),
            chain: vec![
                pem_to_der(&dir.join("issuing.pem")),
                pem_to_der(&dir.join("root.pem")),
            ],
        };
        Pki {
            root_pem: dir.join("root.pem"),
            dir,
            _dir: tmp,
            key,
            signer,
        }
    })
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn soft_sign(key: &SigningKey, bytes: &[u8]) -> Result<Vec<u8>, String> {
    let sig: p256::ecdsa::Signature = key.sign(bytes);
    Ok(sig.to_der().as_bytes().to_vec())
}

fn sign(bytes: &[u8]) -> Result<Vec<u8>, String> {
    soft_sign(&pki().key, bytes)
}

struct NoResolver;

impl CertificateResolver for NoResolver {
    fn resolve(&self, _: &SignerRef) -> Option<std::sync::Arc<signet::verify::certs::KnownCert>> {
        None
    }
}

/// A unique file in the PKI's directory.
fn file(name: &str, bytes: &[u8]) -> PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let p = pki()
        .dir
        .join(format!("{}-{name}", N.fetch_add(1, Ordering::Relaxed)));
    fs::write(&p, bytes).unwrap();
    p
}

/// `openssl cms -verify` of a DER SignedData, with the detached content if given, plain and
/// with `-cades`. Returns the verified content openssl writes out, for each run.
fn openssl_verify(sig: &[u8], content: Option<&[u8]>) -> Result<Vec<Vec<u8>>, String> {
    let p = pki();
    let sig_file = file("sig.der", sig);
    let content_file = content.map(|c| file("content", c));
    let mut outs = Vec::new();
    for cades in [false, true] {
        let out_file = file("out", b"");
        let mut args: Vec<&OsStr> = [
            "cms", "-verify", "-binary", "-inform", "DER", "-purpose", "any",
        ]
        .iter()
        .map(OsStr::new)
        .collect();
        args.extend([OsStr::new("-in"), sig_file.as_os_str()]);
        args.extend([OsStr::new("-CAfile"), p.root_pem.as_os_str()]);
        args.extend([OsStr::new("-out"), out_file.as_os_str()]);
        if let Some(c) = &content_file {
            args.extend([OsStr::new("-content"), c.as_os_str()]);
        }
        if cades {
            args.push(OsStr::new("-cades"));
        }
        let out = run(&args, &p.dir);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if !out.status.success() || !stderr.contains("Verification successful") {
            return Err(format!("cades={cades}: {stderr}"));
        }
        outs.push(fs::read(&out_file).unwrap());
    }
    Ok(outs)
}

/// The one signer of a signature, checked Valid with every attribute check passed.
#[track_caller]
fn assert_valid(signers: Vec<SignerEvidence>, format: SignatureFormat, at: i64) {
    let [s] = signers.as_slice() else {
        panic!("{} signers", signers.len());
    };
    assert_eq!(s.crypto, Crypto::Valid, "{:?}", s.checks);
    assert_eq!(s.format, format);
    assert_eq!(s.claimed_signing_time, Some(at));
    assert!(s.signed_attributes);
    assert!(s.checks.iter().all(|c| c.passed), "{:?}", s.checks);
    let cert = s
        .certificate
        .as_ref()
        .expect("the signer's certificate is carried");
    assert_eq!(cert.der, pki().signer.certificate_der);
    assert_eq!(s.other_certificates.len(), 2, "issuing CA and root carried");
}

fn names(checks: &SignerEvidence) -> Vec<&str> {
    checks.checks.iter().map(|c| c.name.as_str()).collect()
}

#[test]
fn detached_cms_verifies_with_openssl_and_signet() {
    let at = now();
    let sig = cms_signed_data(CmsContent::Detached(DATA), &pki().signer, at, &sign).unwrap();
    let outs = openssl_verify(&sig, Some(DATA)).unwrap();
    assert!(outs.iter().all(|o| o == DATA));
    let signers = examine_cms(&sig, DATA, &NoResolver).unwrap();
    let n = names(&signers[0]);
    for want in [
        "content-type",
        "message-digest",
        "signing-time",
        "ess-signing-certificate-v2",
    ] {
        assert!(n.contains(&want), "no {want} check in {n:?}");
    }
    assert_valid(signers, SignatureFormat::CmsDetached, at);
}

#[test]
fn attached_cms_verifies_with_openssl_and_signet() {
    let at = now();
    let sig = cms_signed_data(CmsContent::Attached(DATA), &pki().signer, at, &sign).unwrap();
    let outs = openssl_verify(&sig, None).unwrap();
    assert!(
        outs.iter().all(|o| o == DATA),
        "openssl recovers the content"
    );
    assert_valid(
        examine_cms(&sig, b"", &NoResolver).unwrap(),
        SignatureFormat::CmsAttached,
        at,
    );
    // Given the instruction, Signet also compares it with the attached content.
    assert_valid(
        examine_cms(&sig, DATA, &NoResolver).unwrap(),
        SignatureFormat::CmsAttached,
        at,
    );
}

#[test]
fn detached_digest_cms_verifies_against_the_data() {
    let at = now();
    let digest: [u8; 32] = Sha256::digest(DATA).into();
    let sig =
        cms_signed_data(CmsContent::DetachedDigest(digest), &pki().signer, at, &sign).unwrap();
    let outs = openssl_verify(&sig, Some(DATA)).unwrap();
    assert!(outs.iter().all(|o| o == DATA));
    assert_valid(
        examine_cms(&sig, DATA, &NoResolver).unwrap(),
        SignatureFormat::CmsDetached,
        at,
    );

    // The same signed attributes as signing the data itself: a hash signed in a batch is
    // indistinguishable from a detached signature over the document.
    let seen = |content| {
        let got = std::cell::RefCell::new(Vec::new());
        cms_signed_data(content, &pki().signer, at, &|b: &[u8]| {
            got.borrow_mut().push(b.to_vec());
            sign(b)
        })
        .unwrap();
        got.into_inner()
    };
    let by_digest = seen(CmsContent::DetachedDigest(digest));
    assert_eq!(by_digest, seen(CmsContent::Detached(DATA)));
    assert_eq!(by_digest.len(), 1);
    assert_eq!(
        by_digest[0][0], 0x31,
        "the signed attributes are signed as a SET"
    );
}

#[test]
fn cms_over_other_data_does_not_verify() {
    let p = pki();
    let at = now();
    let digest: [u8; 32] = Sha256::digest(DATA).into();
    for content in [
        CmsContent::Detached(DATA),
        CmsContent::DetachedDigest(digest),
    ] {
        let sig = cms_signed_data(content, &p.signer, at, &sign).unwrap();
        let e = openssl_verify(&sig, Some(OTHER)).unwrap_err();
        assert!(e.contains("content verify error"), "{e}");
        let signers = examine_cms(&sig, OTHER, &NoResolver).unwrap();
        assert_eq!(signers[0].crypto, Crypto::HashFailure);
    }
    // Attached content compared with another instruction.
    let sig = cms_signed_data(CmsContent::Attached(DATA), &p.signer, at, &sign).unwrap();
    let signers = examine_cms(&sig, OTHER, &NoResolver).unwrap();
    assert_eq!(signers[0].crypto, Crypto::HashFailure);
    // Attached content changed inside the SignedData.
    let mut tampered = sig.clone();
    let pos = tampered
        .windows(DATA.len())
        .position(|w| w == DATA)
        .unwrap();
    tampered[pos] ^= 1;
    assert!(openssl_verify(&tampered, None).is_err());
    let signers = examine_cms(&tampered, b"", &NoResolver).unwrap();
    assert_eq!(signers[0].crypto, Crypto::HashFailure);

    // A signature by another key than the certificate's: the builder does not verify (the
    // caller may), the verifiers refuse it.
    let other_key = SigningKey::from_slice(&[7; 32]).unwrap();
    let sig = cms_signed_data(CmsContent::Detached(DATA), &p.signer, at, &|b: &[u8]| {
        soft_sign(&other_key, b)
    })
    .unwrap();
    assert!(openssl_verify(&sig, Some(DATA)).is_err());
    let signers = examine_cms(&sig, DATA, &NoResolver).unwrap();
    assert!(
        matches!(signers[0].crypto, Crypto::SigCryptoFailure(_)),
        "{:?}",
        signers[0].crypto
    );
}

#[test]
fn jws_verifies_with_signet() {
    let p = pki();
    let at = now();
    let jws = jws_es256(DATA, &p.signer, at, &sign).unwrap();
    let parts: Vec<&str> = jws.split('.').collect();
    assert_eq!(parts.len(), 3);
    let header: serde_json::Value =
        serde_json::from_slice(&B64_URL.decode(parts[0]).unwrap()).unwrap();
    assert_eq!(header["alg"], "ES256");
    assert_eq!(header["crit"], serde_json::json!(["sigT"]));
    assert_eq!(
        signet::verify::jws::examine_jws(&jws, b"", &NoResolver).unwrap()[0].claimed_signing_time,
        Some(at)
    );
    let b64 = base64::engine::general_purpose::STANDARD;
    let x5c: Vec<Vec<u8>> = header["x5c"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| b64.decode(c.as_str().unwrap()).unwrap())
        .collect();
    assert_eq!(x5c[0], p.signer.certificate_der);
    assert_eq!(x5c[1..], p.signer.chain[..]);
    assert_eq!(B64_URL.decode(parts[1]).unwrap(), DATA);
    assert_eq!(B64_URL.decode(parts[2]).unwrap().len(), 64, "r‖s, not DER");

    let signers = examine_jws(&jws, b"", &NoResolver).unwrap();
    assert!(
        names(&signers[0]).contains(&"jws-crit"),
        "{:?}",
        signers[0].checks
    );
    assert_valid(signers, SignatureFormat::JwsCompact, at);
    assert_valid(
        examine_jws(&jws, DATA, &NoResolver).unwrap(),
        SignatureFormat::JwsCompact,
        at,
    );
}

#[test]
fn jws_over_other_data_does_not_verify() {
    let p = pki();
    let jws = jws_es256(DATA, &p.signer, now(), &sign).unwrap();
    // Another instruction than the embedded payload.
    let signers = examine_jws(&jws, OTHER, &NoResolver).unwrap();
    assert_eq!(signers[0].crypto, Crypto::HashFailure);
    // Another payload under the same header and signature.
    let parts: Vec<&str> = jws.split('.').collect();
    let swapped = format!("{}.{}.{}", parts[0], B64_URL.encode(OTHER), parts[2]);
    let signers = examine_jws(&swapped, b"", &NoResolver).unwrap();
    assert!(
        matches!(signers[0].crypto, Crypto::SigCryptoFailure(_)),
        "{:?}",
        signers[0].crypto
    );
    // Signed by another key than x5c's first certificate.
    let other_key = SigningKey::from_slice(&[7; 32]).unwrap();
    let jws = jws_es256(DATA, &p.signer, now(), &|b: &[u8]| soft_sign(&other_key, b)).unwrap();
    let signers = examine_jws(&jws, b"", &NoResolver).unwrap();
    assert!(matches!(signers[0].crypto, Crypto::SigCryptoFailure(_)));
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let p = pki();
    let at = now();
    let not_der = |_: &[u8]| -> Result<Vec<u8>, String> { Ok(vec![0x30, 0x01, 0x00]) };
    let raw = |b: &[u8]| -> Result<Vec<u8>, String> {
        let sig: p256::ecdsa::Signature = p.key.sign(b);
        Ok(sig.to_bytes().to_vec())
    };
    let refuse = |_: &[u8]| Err("HSM unavailable".to_string());
    for s in [&not_der as &dyn Fn(&[u8]) -> Result<Vec<u8>, String>, &raw] {
        let e = cms_signed_data(CmsContent::Detached(DATA), &p.signer, at, s).unwrap_err();
        assert!(e.contains("no DER ECDSA"), "{e}");
        let e = jws_es256(DATA, &p.signer, at, s).unwrap_err();
        assert!(e.contains("no DER ECDSA"), "{e}");
    }
    assert_eq!(
        cms_signed_data(CmsContent::Attached(DATA), &p.signer, at, &refuse).unwrap_err(),
        "HSM unavailable"
    );
    assert_eq!(
        jws_es256(DATA, &p.signer, at, &refuse).unwrap_err(),
        "HSM unavailable"
    );

    // A signer certificate that is not one, or whose key is not P-256 (the root's is, so use
    // an RSA certificate made for the purpose).
    let garbage = SignerCert {
        certificate_der: b"not a certificate".to_vec(),
        chain: vec![],
    };
    assert!(cms_signed_data(CmsContent::Detached(DATA), &garbage, at, &sign).is_err());
    assert!(jws_es256(DATA, &garbage, at, &sign).is_err());
    openssl_ok(
        &[
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "rsa.key", "-subj",
            "/CN=RSA", "-days", "1", "-config", "req.cnf", "-out", "rsa.pem",
        ],
        &p.dir,
    );
    let rsa = SignerCert {
        certificate_der: pem_to_der(&p.dir.join("rsa.pem")),
        chain: vec![],
    };
    let e = cms_signed_data(CmsContent::Detached(DATA), &rsa, at, &sign).unwrap_err();
    assert!(e.contains("P-256"), "{e}");
    assert!(jws_es256(DATA, &rsa, at, &sign)
        .unwrap_err()
        .contains("P-256"));
    let bad_chain = SignerCert {
        certificate_der: p.signer.certificate_der.clone(),
        chain: vec![vec![0x30, 0x00]],
    };
    assert!(cms_signed_data(CmsContent::Detached(DATA), &bad_chain, at, &sign).is_err());
    assert!(jws_es256(DATA, &bad_chain, at, &sign).is_err());
    // Times before 1970.
    assert!(cms_signed_data(CmsContent::Detached(DATA), &p.signer, -1, &sign).is_err());
    assert!(jws_es256(DATA, &p.signer, -1, &sign).is_err());
}

#[test]
fn output_is_der_and_the_same_from_a_prepared_signer() {
    let p = pki();
    let big: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
    let digest: [u8; 32] = Sha256::digest(DATA).into();
    let prepared = CmsSigner::new(&p.signer).unwrap();
    // 2049-12-31T23:59:59Z and 2050-01-01T00:00:00Z: UTCTime, then GeneralizedTime.
    for at in [now(), 2_524_607_999, 2_524_608_000] {
        for content in [
            CmsContent::Attached(b""),
            CmsContent::Attached(DATA),
            CmsContent::Attached(&big),
            CmsContent::Detached(DATA),
            CmsContent::Detached(b""),
            CmsContent::DetachedDigest(digest),
        ] {
            // RFC 6979: the software signature is deterministic, so are the bytes.
            let der = cms_signed_data(content, &p.signer, at, &sign).unwrap();
            assert_eq!(prepared.sign(content, at, &sign).unwrap(), der);
            // What the cms crate decodes (sorting SET OF) encodes back to the same bytes.
            let ci = cms::content_info::ContentInfo::from_der(&der).unwrap();
            assert_eq!(ci.to_der().unwrap(), der, "{content:?} at {at}");
            let sd: cms::signed_data::SignedData = ci.content.decode_as().unwrap();
            let si = sd.signer_infos.0.iter().next().unwrap();
            let attrs = si.signed_attrs.as_ref().unwrap();
            let time = attrs
                .iter()
                .find(|a| a.oid.to_string() == "1.2.840.113549.1.9.5")
                .unwrap();
            let tag = der::Tagged::tag(time.values.iter().next().unwrap());
            let want = if at < 2_524_608_000 {
                der::Tag::UtcTime
            } else {
                der::Tag::GeneralizedTime
            };
            assert_eq!(tag, want);
            assert_eq!(attrs.len(), 4);
            assert_eq!(sd.certificates.unwrap().0.len(), 3);
        }
    }
    // Long lengths (three length octets) as openssl reads them.
    let sig = cms_signed_data(CmsContent::Attached(&big), &p.signer, now(), &sign).unwrap();
    assert!(openssl_verify(&sig, None)
        .unwrap()
        .iter()
        .all(|o| *o == big));
}

#[test]
fn signers_in_turn_each_sign_with_their_own_certificate() {
    // The issuing CA as a second signer, with its openssl key.
    let p = pki();
    let issuing_key =
        SigningKey::from_pkcs8_pem(&fs::read_to_string(p.dir.join("issuing.key")).unwrap())
            .unwrap();
    let issuing = SignerCert {
        certificate_der: p.signer.chain[0].clone(),
        chain: vec![p.signer.chain[1].clone()],
    };
    let at = now();
    for round in 0..3 {
        for (signer, key) in [(&p.signer, &p.key), (&issuing, &issuing_key)] {
            let sig = cms_signed_data(CmsContent::Detached(DATA), signer, at, &|b: &[u8]| {
                soft_sign(key, b)
            })
            .unwrap();
            let signers = examine_cms(&sig, DATA, &NoResolver).unwrap();
            assert_eq!(signers[0].crypto, Crypto::Valid, "round {round}");
            let cert = signers[0].certificate.as_ref().unwrap();
            assert_eq!(cert.der, signer.certificate_der);
            assert_eq!(signers[0].other_certificates.len(), signer.chain.len());
        }
        // A signer that is refused in between leaves the others working.
        let garbage = SignerCert {
            certificate_der: vec![0x30, 0x00],
            chain: vec![],
        };
        assert!(cms_signed_data(CmsContent::Detached(DATA), &garbage, at, &sign).is_err());
    }
}
