//! Unit tests of the signature-format readers: transport decoding, the DER walker, and that no
//! input — garbage, truncated, mutated, nested, huge — makes CMS or JWS reading panic.
//! Fixtures (tests/data/verify): an OpenSSL `cms -sign -cades -certfile ca` detached signature
//! and a `-noattr -nodetach` one over `instruction.txt`, and the signer certificate (public
//! material only; the keys were thrown away).

use super::*;
use crate::verify::cms::{digest_alg_of, examine_cms, serial_hex, sig_alg_of};
use crate::verify::evidence::{
    CertificateResolver, Crypto, DigestAlg, SigAlg, SignatureFormat, SignerRef,
};
use crate::verify::jws::{examine_jws, parse_rfc3339};
use const_oid::ObjectIdentifier;
use der::Encode;
use x509_cert::Certificate;

const DETACHED: &[u8] = include_bytes!("../../tests/data/verify/cms-detached-cades.der");
const ATTACHED_NOATTR: &[u8] = include_bytes!("../../tests/data/verify/cms-attached-noattr.der");
const INSTRUCTION: &[u8] = include_bytes!("../../tests/data/verify/instruction.txt");
const SIGNER: &[u8] = include_bytes!("../../tests/data/verify/signer.der");

struct Nobody;
impl CertificateResolver for Nobody {
    fn resolve(&self, _: &SignerRef) -> Option<std::sync::Arc<super::super::certs::KnownCert>> {
        None
    }
}

/// `n` SEQUENCE headers nested around a NULL, lengths consistent.
fn nested_sequences(n: usize) -> Vec<u8> {
    let mut v = vec![0x05, 0x00];
    for _ in 0..n {
        let len = v.len();
        let mut h = if len < 0x80 {
            vec![0x30, len as u8]
        } else {
            vec![0x30, 0x83, (len >> 16) as u8, (len >> 8) as u8, len as u8]
        };
        h.append(&mut v);
        v = h;
    }
    v
}

/// A tiny deterministic generator (xorshift), so failures reproduce.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

// ---------------------------------------------------------------------------------------------
// decode_signature
// ---------------------------------------------------------------------------------------------

#[test]
fn decode_der_pem_and_base64() {
    assert_eq!(
        decode_signature(DETACHED).unwrap(),
        SignatureInput::Cms(DETACHED.to_vec())
    );
    let b64 = base64::engine::general_purpose::STANDARD.encode(DETACHED);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    for label in CMS_PEM_LABELS {
        let pem = format!(
            "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
            lines.join("\n")
        );
        assert_eq!(
            decode_signature(pem.as_bytes()).unwrap(),
            SignatureInput::Cms(DETACHED.to_vec()),
            "{label}"
        );
    }
    let spaced = format!("\u{feff}\n {}\t\n", lines.join("\r\n "));
    assert_eq!(
        decode_signature(spaced.as_bytes()).unwrap(),
        SignatureInput::Cms(DETACHED.to_vec())
    );
    let url = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(DETACHED);
    assert_eq!(
        decode_signature(url.as_bytes()).unwrap(),
        SignatureInput::Cms(DETACHED.to_vec())
    );
    // Base64 of a PEM: one level is unwrapped.
    let pem = format!("-----BEGIN CMS-----\n{b64}\n-----END CMS-----\n");
    let wrapped = base64::engine::general_purpose::STANDARD.encode(pem);
    assert_eq!(
        decode_signature(wrapped.as_bytes()).unwrap(),
        SignatureInput::Cms(DETACHED.to_vec())
    );
}

#[test]
fn decode_jws_forms() {
    for s in [
        "eyJhbGciOiJFUzI1NiJ9.eyJhIjoxfQ.c2ln",
        "eyJhbGciOiJFUzI1NiJ9..c2ln",
        "eyJhbGciOiJub25lIn0.eyJhIjoxfQ.",
        r#"{"protected":"eyJhbGciOiJFUzI1NiJ9","signature":"c2ln"}"#,
        r#"{"payload":"eA","signatures":[{"protected":"eyJhbGciOiJFUzI1NiJ9","signature":"c2ln"}]}"#,
    ] {
        assert_eq!(
            decode_signature(s.as_bytes()).unwrap(),
            SignatureInput::Jws(s.to_string())
        );
        // With surrounding whitespace, trimmed.
        assert_eq!(
            decode_signature(format!("\n {s} \n").as_bytes()).unwrap(),
            SignatureInput::Jws(s.to_string())
        );
    }
}

#[test]
fn decode_refuses_what_is_not_a_signature() {
    let big = vec![0x30u8; MAX_SIGNATURE_BYTES + 1];
    let cases: Vec<Vec<u8>> = vec![
        vec![],
        b"   \n".to_vec(),
        vec![0xff, 0xfe, 0x00, 0x41],    // not UTF-8, not DER
        b"hello world".to_vec(),         // not base64 (space) nor anything
        b"aGVsbG8gd29ybGQ=".to_vec(),    // base64 of text that is no signature
        b"a.b".to_vec(),                 // two parts
        b"a.b.c.d".to_vec(),             // four parts
        b".payload.sig".to_vec(),        // empty header
        b"ey$.x.y".to_vec(),             // not base64url
        b"{\"payload\":\"x\"}".to_vec(), // JSON without signature
        b"{\"signature\":".to_vec(),     // broken JSON
        b"[1,2,3]".to_vec(),             // JSON, not an object
        b"-----BEGIN CERTIFICATE-----\nMA==\n-----END CERTIFICATE-----\n".to_vec(),
        b"-----BEGIN CMS-----\nMAA=\n".to_vec(), // no END
        b"-----BEGIN CMS-----\nMAA=\n-----END PKCS7-----\n".to_vec(),
        b"-----BEGIN CMS-----\n!!!!\n-----END CMS-----\n".to_vec(),
        b"-----BEGIN CMS-----\nBQA=\n-----END CMS-----\n".to_vec(), // NULL, not a SEQUENCE
        b"-----BEGIN CMS".to_vec(),
        big,
    ];
    for c in cases {
        assert!(
            decode_signature(&c).is_err(),
            "accepted {:?}",
            String::from_utf8_lossy(&c[..c.len().min(60)])
        );
    }
    // Deeply nested JSON does not overflow the stack (serde_json's recursion limit).
    let deep = format!(
        "{{\"signature\":{}{}}}",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    assert!(decode_signature(deep.as_bytes()).is_err());
}

// ---------------------------------------------------------------------------------------------
// DER walker
// ---------------------------------------------------------------------------------------------

#[test]
fn der_walker_limits_depth_without_recursion() {
    assert!(check_der_structure(&nested_sequences(MAX_DER_DEPTH), MAX_DER_DEPTH).is_ok());
    let err = check_der_structure(&nested_sequences(MAX_DER_DEPTH + 1), MAX_DER_DEPTH).unwrap_err();
    assert!(err.0.contains("nested"), "{err}");
    // 10 000 levels: refused, quickly, without a stack overflow.
    let deep = nested_sequences(10_000);
    assert!(check_der_structure(&deep, MAX_DER_DEPTH).is_err());
    assert!(
        check_der_structure(&deep, usize::MAX).is_ok(),
        "the walker itself is iterative"
    );
    assert!(examine_cms(&deep, b"", &Nobody).is_err());
    assert!(check_der_structure(DETACHED, MAX_DER_DEPTH).is_ok());
}

#[test]
fn der_walker_refuses_bad_lengths() {
    let cases: Vec<Vec<u8>> = vec![
        vec![],
        vec![0x30],                                     // no length
        vec![0x30, 0x05, 0x02, 0x01],                   // truncated
        vec![0x30, 0x84, 0xff, 0xff, 0xff, 0xff],       // 4 GiB claimed
        vec![0x30, 0x88, 1, 0, 0, 0, 0, 0, 0, 0],       // 8-byte length field
        vec![0x30, 0x80, 0x05, 0x00, 0x00, 0x00],       // indefinite (BER)
        vec![0x30, 0x03, 0x30, 0x05, 0x05],             // child longer than parent
        vec![0x30, 0x02, 0x05, 0x00, 0x00],             // trailing byte
        vec![0x05, 0x00, 0x05, 0x00],                   // two values
        vec![0x1f, 0x81, 0x81, 0x81, 0x81, 0x81, 0x01], // endless tag number
        vec![0x30, 0x81],                               // truncated long length
    ];
    for c in cases {
        assert!(check_der_structure(&c, MAX_DER_DEPTH).is_err(), "{c:02x?}");
        assert!(examine_cms(&c, b"", &Nobody).is_err(), "{c:02x?}");
    }
    // High tag numbers are walked over (they are not CMS, but not malformed DER).
    assert!(check_der_structure(&[0x30, 0x04, 0x1f, 0x81, 0x00, 0x00], MAX_DER_DEPTH).is_ok());
}

#[test]
fn ber_is_rewritten_with_definite_lengths() {
    // DER passes unchanged, and is not copied.
    for f in [DETACHED, ATTACHED_NOATTR, SIGNER] {
        let out = normalize_ber(f, MAX_DER_DEPTH).unwrap();
        assert!(matches!(out, std::borrow::Cow::Borrowed(_)));
        assert_eq!(out, f.to_vec());
    }
    // Definite lengths but a constructed OCTET STRING: rewritten (one primitive OCTET STRING).
    assert_eq!(
        normalize_ber(
            &[0x24, 0x07, 0x04, 0x01, b'a', 0x04, 0x02, b'b', b'c'],
            MAX_DER_DEPTH
        )
        .unwrap(),
        vec![0x04, 0x03, b'a', b'b', b'c']
    );
    // SEQUENCE (indefinite) { [0] (indefinite) { OCTET STRING (constructed, indefinite)
    //   { "ab", "cde" } }, NULL } → definite lengths, one OCTET STRING.
    let ber = [
        0x30, 0x80, 0xa0, 0x80, 0x24, 0x80, 0x04, 0x02, b'a', b'b', 0x04, 0x03, b'c', b'd', b'e',
        0x00, 0x00, 0x00, 0x00, 0x05, 0x00, 0x00, 0x00,
    ];
    assert_eq!(
        normalize_ber(&ber, MAX_DER_DEPTH).unwrap(),
        vec![0x30, 0x0b, 0xa0, 0x07, 0x04, 0x05, b'a', b'b', b'c', b'd', b'e', 0x05, 0x00]
    );
    // Long-form lengths written longer than needed come out short.
    assert_eq!(
        normalize_ber(&[0x30, 0x82, 0x00, 0x02, 0x05, 0x00], MAX_DER_DEPTH).unwrap(),
        vec![0x30, 0x02, 0x05, 0x00]
    );
    let refused: Vec<Vec<u8>> = vec![
        vec![0x30, 0x80, 0x05, 0x00],             // no end-of-contents
        vec![0x04, 0x80, 0x00, 0x00],             // primitive, indefinite
        vec![0x24, 0x80, 0x30, 0x00, 0x00, 0x00], // constructed OCTET STRING of a SEQUENCE
        vec![0x30, 0x80, 0x00, 0x00, 0x00],       // trailing byte
        vec![0x30, 0x80, 0x30, 0x05, 0x00, 0x00], // child runs past the end
    ];
    for r in refused {
        assert!(normalize_ber(&r, MAX_DER_DEPTH).is_err(), "{r:02x?}");
        assert!(examine_cms(&r, b"", &Nobody).is_err(), "{r:02x?}");
    }
    // 10 000 nested indefinite-length SEQUENCEs: refused at the depth limit, no stack overflow.
    let mut deep = [0x30u8, 0x80].repeat(10_000);
    deep.extend([0u8, 0].repeat(10_000));
    let err = normalize_ber(&deep, MAX_DER_DEPTH).unwrap_err();
    assert!(err.0.contains("nested"), "{err}");
    assert!(examine_cms(&deep, b"", &Nobody).is_err());
}

// ---------------------------------------------------------------------------------------------
// CMS
// ---------------------------------------------------------------------------------------------

#[test]
fn cms_fixtures_verify() {
    let ev = examine_cms(DETACHED, INSTRUCTION, &Nobody).unwrap();
    assert_eq!(ev.len(), 1);
    let e = &ev[0];
    assert_eq!(e.crypto, Crypto::Valid, "{:?}", e.checks);
    assert_eq!(e.format, SignatureFormat::CmsDetached);
    assert_eq!(e.other_certificates.len(), 1);
    assert!(e
        .checks
        .iter()
        .any(|c| c.name == "ess-signing-certificate-v2" && c.passed));
    match &e.signer_ref {
        // Serial 0xab01 is DER 00 ab 01: the leading zero byte is not part of the store's form.
        SignerRef::IssuerSerial { serial, .. } => assert_eq!(serial, "ab01"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        e.certificate.as_ref().unwrap().cert.to_der().unwrap(),
        SIGNER.to_vec()
    );

    let e = &examine_cms(ATTACHED_NOATTR, b"", &Nobody).unwrap()[0];
    assert_eq!(
        (e.format, &e.crypto),
        (SignatureFormat::CmsAttached, &Crypto::Valid)
    );
    assert!(!e.signed_attributes);
}

#[test]
fn cms_empty_econtent_reads_as_detached() {
    // The detached fixture with `[0] { OCTET STRING "" }` added to its EncapsulatedContentInfo:
    // the typed structure is re-encoded with the cms crate (signed attributes are unchanged).
    use cms::signed_data::SignedData;
    let ci = <cms::content_info::ContentInfo as der::Decode>::from_der(DETACHED).unwrap();
    let mut sd: SignedData = ci.content.decode_as().unwrap();
    sd.encap_content_info.econtent =
        Some(der::Any::new(der::Tag::OctetString, Vec::new()).unwrap());
    let ci = cms::content_info::ContentInfo {
        content_type: ci.content_type,
        content: der::Any::encode_from(&sd).unwrap(),
    };
    let der = ci.to_der().unwrap();
    let e = &examine_cms(&der, INSTRUCTION, &Nobody).unwrap()[0];
    assert_eq!(
        (e.format, &e.crypto),
        (SignatureFormat::CmsDetached, &Crypto::Valid)
    );
}

/// The detached fixture's SignedData fields (version, digestAlgorithms, encapContentInfo,
/// [0] certificates, signerInfos) with a `[1] crls` holding an empty SET added, as DER TLVs.
fn detached_fields_with_crls() -> Vec<Vec<u8>> {
    use cms::revocation::RevocationInfoChoices;
    use cms::signed_data::SignedData;
    let ci = <cms::content_info::ContentInfo as der::Decode>::from_der(DETACHED).unwrap();
    let mut sd: SignedData = ci.content.decode_as().unwrap();
    sd.crls = Some(RevocationInfoChoices(Default::default()));
    let sd_der = sd.to_der().unwrap();
    let fields = crate::verify::input::read_single(&sd_der)
        .unwrap()
        .children()
        .unwrap()
        .iter()
        .map(|t| t.raw.to_vec())
        .collect::<Vec<_>>();
    assert_eq!(
        fields.len(),
        6,
        "version, digests, encap, [0], [1], signerInfos"
    );
    assert_eq!((fields[3][0], fields[4][0]), (0xa0, 0xa1));
    fields
}

/// ContentInfo { id-signedData, [0] SEQUENCE { fields } }.
fn signed_data_of(fields: &[Vec<u8>]) -> Vec<u8> {
    let sd = der::Any::new(der::Tag::Sequence, fields.concat()).unwrap();
    let content = der::Any::new(
        der::Tag::ContextSpecific {
            constructed: true,
            number: der::TagNumber(0),
        },
        sd.to_der().unwrap(),
    )
    .unwrap();
    let oid = const_oid::db::rfc5911::ID_SIGNED_DATA.to_der().unwrap();
    der::Any::new(
        der::Tag::Sequence,
        [oid, content.to_der().unwrap()].concat(),
    )
    .unwrap()
    .to_der()
    .unwrap()
}

#[test]
fn cms_crls_field_is_read_and_does_not_change_the_verdict() {
    let der = signed_data_of(&detached_fields_with_crls());
    let e = &examine_cms(&der, INSTRUCTION, &Nobody).unwrap()[0];
    assert_eq!(e.crypto, Crypto::Valid);
}

#[test]
fn cms_optional_fields_out_of_order_are_a_format_error() {
    let mut fields = detached_fields_with_crls();
    fields.swap(3, 4);
    let err = examine_cms(&signed_data_of(&fields), INSTRUCTION, &Nobody).unwrap_err();
    assert!(err.0.contains("in that order"), "{err}");
}

/// The detached fixture with its SignerInfos replaced by what `many` makes of its one
/// SignerInfo (the SET's content).
fn cms_with_signer_infos(many: impl FnOnce(Vec<u8>) -> Vec<u8>) -> Vec<u8> {
    let mut fields = detached_fields_with_crls();
    let infos = fields.pop().unwrap();
    let one = crate::verify::input::read_single(&infos)
        .unwrap()
        .children()
        .unwrap()[0]
        .raw
        .to_vec();
    fields.push(
        der::Any::new(der::Tag::Set, many(one))
            .unwrap()
            .to_der()
            .unwrap(),
    );
    signed_data_of(&fields)
}

#[test]
fn cms_a_signer_info_given_twice_is_a_format_error() {
    let twice = cms_with_signer_infos(|one| [one.clone(), one].concat());
    let err = examine_cms(&twice, INSTRUCTION, &Nobody).unwrap_err();
    assert!(err.0.contains("repeated SignerInfo"), "{err}");
}

/// The detached fixture with its SignerInfo given `n` times, each with another last byte of
/// its signature (its last field: the fixture has no unsigned attributes), so none repeats
/// another.
fn cms_with_signers(n: usize) -> Vec<u8> {
    cms_with_signer_infos(|one| {
        (0..n)
            .flat_map(|i| {
                let mut si = one.clone();
                *si.last_mut().unwrap() ^= i as u8;
                si
            })
            .collect()
    })
}

#[test]
fn cms_with_more_signers_than_signet_reads_is_a_format_error() {
    let at_most = crate::verify::input::MAX_SIGNERS;
    let read = examine_cms(&cms_with_signers(at_most), INSTRUCTION, &Nobody).unwrap();
    assert_eq!(read.len(), at_most);
    let err = examine_cms(&cms_with_signers(at_most + 1), INSTRUCTION, &Nobody).unwrap_err();
    assert!(err.0.contains("at most 16"), "{err}");
}

#[test]
fn jws_with_more_signatures_than_signet_reads_is_a_format_error() {
    let general = |n: usize| {
        let one = serde_json::json!({
            "protected": header_with_cert(serde_json::json!({})),
            "signature": b64u(&[7u8; 64]),
        });
        serde_json::json!({"payload": b64u(INSTRUCTION), "signatures": vec![one; n]}).to_string()
    };
    let at_most = crate::verify::input::MAX_SIGNERS;
    assert_eq!(
        examine_jws(&general(at_most), INSTRUCTION, &Nobody)
            .unwrap()
            .len(),
        at_most
    );
    let err = examine_jws(&general(at_most + 1), INSTRUCTION, &Nobody).unwrap_err();
    assert!(err.0.contains("at most 16"), "{err}");
}

#[test]
fn cms_other_content_types_and_empty_signed_data() {
    // ContentInfo { id-data, [0] OCTET STRING "" }.
    let data = [
        0x30, 0x0f, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x01, 0xa0, 0x02,
        0x04, 0x00,
    ];
    let err = examine_cms(&data, b"", &Nobody).unwrap_err();
    assert!(err.0.contains("not id-signedData"), "{err}");
    // A certificate bundle (degenerate SignedData, no SignerInfo) is not a signature.
    let cert = <Certificate as der::Decode>::from_der(SIGNER).unwrap();
    let bundle = cms::content_info::ContentInfo::try_from(cert)
        .unwrap()
        .to_der()
        .unwrap();
    let err = examine_cms(&bundle, b"", &Nobody).unwrap_err();
    assert!(err.0.contains("no SignerInfo"), "{err}");
    // Over the size limit.
    let mut big = DETACHED.to_vec();
    big.resize(MAX_SIGNATURE_BYTES + 1, 0);
    assert!(examine_cms(&big, INSTRUCTION, &Nobody).is_err());
}

#[test]
fn cms_truncated_and_mutated_never_panic() {
    for fixture in [DETACHED, ATTACHED_NOATTR] {
        for cut in 0..fixture.len() {
            assert!(examine_cms(&fixture[..cut], INSTRUCTION, &Nobody).is_err());
        }
        for i in 0..fixture.len() {
            for m in [0x01u8, 0x80, 0xff] {
                let mut v = fixture.to_vec();
                v[i] ^= m;
                let _ = examine_cms(&v, INSTRUCTION, &Nobody);
            }
            for b in [0x00u8, 0x80, 0x84] {
                let mut v = fixture.to_vec();
                v[i] = b;
                let _ = examine_cms(&v, INSTRUCTION, &Nobody);
            }
        }
    }
    let mut rng = Rng(0x5157_4e45_5400_0001);
    for n in 0..2_000 {
        let mut v = rng.bytes(n % 300);
        if n % 2 == 0 && !v.is_empty() {
            v[0] = 0x30;
        }
        let _ = examine_cms(&v, b"", &Nobody);
        let _ = decode_signature(&v);
    }
}

/// The byte range of the signed attributes and of the signature value in a fixture.
fn signer_info_ranges(der: &[u8]) -> (std::ops::Range<usize>, std::ops::Range<usize>) {
    let offset = |inner: &[u8]| inner.as_ptr() as usize - der.as_ptr() as usize;
    let ci = read_single(der).unwrap();
    let sd = read_single(ci.children().unwrap()[1].value).unwrap();
    let infos = *sd.children().unwrap().last().unwrap();
    let si = infos.children().unwrap()[0];
    let parts = si.children().unwrap();
    let attrs = parts.iter().find(|t| t.tag == 0xa0).unwrap();
    let sig = parts.iter().find(|t| t.tag == 0x04).unwrap();
    (
        offset(attrs.raw)..offset(attrs.raw) + attrs.raw.len(),
        offset(sig.value)..offset(sig.value) + sig.value.len(),
    )
}

#[test]
fn cms_any_change_to_signed_attributes_or_signature_is_caught() {
    let (attrs, sig) = signer_info_ranges(DETACHED);
    for i in attrs.chain(sig) {
        for m in [0x01u8, 0x80] {
            let mut v = DETACHED.to_vec();
            v[i] ^= m;
            if let Ok(ev) = examine_cms(&v, INSTRUCTION, &Nobody) {
                assert_ne!(
                    ev[0].crypto,
                    Crypto::Valid,
                    "byte {i} ^ {m:#x} went unnoticed"
                );
            }
        }
    }
}

#[test]
fn algorithm_oids() {
    let oid = ObjectIdentifier::new_unwrap;
    assert_eq!(sig_alg_of(&oid("1.2.156.10197.1.501")), SigAlg::Sm2);
    assert_eq!(sig_alg_of(&oid("1.2.156.10197.1.301.1")), SigAlg::Sm2);
    assert_eq!(sig_alg_of(&oid("1.2.840.10045.2.1")), SigAlg::Ecdsa);
    assert_eq!(sig_alg_of(&oid("1.2.840.10045.4.3.2")), SigAlg::Ecdsa);
    assert_eq!(sig_alg_of(&oid("1.2.840.113549.1.1.1")), SigAlg::RsaPkcs1);
    assert_eq!(sig_alg_of(&oid("1.2.840.113549.1.1.11")), SigAlg::RsaPkcs1);
    assert_eq!(sig_alg_of(&oid("1.2.840.113549.1.1.10")), SigAlg::RsaPss);
    assert_eq!(
        sig_alg_of(&oid("1.3.101.112")),
        SigAlg::Other("1.3.101.112".into())
    );
    assert_eq!(digest_alg_of(&oid("1.2.156.10197.1.401")), DigestAlg::Sm3);
    assert_eq!(digest_alg_of(&oid("1.3.14.3.2.26")), DigestAlg::Sha1);
    assert_eq!(
        digest_alg_of(&oid("2.16.840.1.101.3.4.2.3")),
        DigestAlg::Sha512
    );
    assert_eq!(serial_hex(&[0x00, 0xab, 0x01]), "ab01");
    assert_eq!(serial_hex(&[0x00]), "00");
    assert_eq!(serial_hex(&[0x00, 0x00, 0x7f]), "7f");
}

// ---------------------------------------------------------------------------------------------
// JWS
// ---------------------------------------------------------------------------------------------

fn b64u(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

fn header_with_cert(extra: serde_json::Value) -> String {
    let mut h = serde_json::json!({
        "alg": "ES256",
        "x5c": [base64::engine::general_purpose::STANDARD.encode(SIGNER)],
    });
    for (k, v) in extra.as_object().unwrap() {
        h[k] = v.clone();
    }
    b64u(h.to_string().as_bytes())
}

#[test]
fn jws_crit_rules() {
    let sig = b64u(&[7u8; 64]);
    let payload = b64u(INSTRUCTION);
    let refused = [
        serde_json::json!({"crit": []}),
        serde_json::json!({"crit": "b64", "b64": true}),
        serde_json::json!({"crit": ["alg"]}),
        serde_json::json!({"crit": ["b64", "b64"], "b64": true}),
        serde_json::json!({"crit": ["b64"]}),
        serde_json::json!({"crit": ["urn:example:x"], "urn:example:x": 1}),
        serde_json::json!({"b64": "no"}),
        serde_json::json!({"b64": false}),
    ];
    for extra in refused {
        let jws = format!("{}.{payload}.{sig}", header_with_cert(extra.clone()));
        let ev = examine_jws(&jws, INSTRUCTION, &Nobody).unwrap();
        // The signature is random: what matters is that the header is refused for itself.
        assert!(
            matches!(&ev[0].crypto, Crypto::SigCryptoFailure(m) if m.contains("crit") || m.contains("b64")),
            "{extra}: {:?}",
            ev[0].crypto
        );
        assert!(ev[0]
            .checks
            .iter()
            .any(|c| !c.passed && (c.name == "jws-crit" || c.name == "b64")));
    }
    // crit and b64 in the unprotected header.
    let jws = serde_json::json!({
        "protected": header_with_cert(serde_json::json!({})),
        "header": {"crit": ["b64"], "b64": true},
        "payload": payload,
        "signature": sig,
    })
    .to_string();
    let ev = examine_jws(&jws, INSTRUCTION, &Nobody).unwrap();
    assert!(matches!(&ev[0].crypto, Crypto::SigCryptoFailure(m) if m.contains("protected")));
}

#[test]
fn jws_header_rules_are_format_errors() {
    let sig = b64u(&[7u8; 64]);
    let cases = [
        // Repeated member.
        format!("{}.{}.{sig}", b64u(br#"{"alg":"ES256","alg":"none"}"#), b64u(b"x")),
        // alg only unprotected.
        serde_json::json!({"protected": b64u(b"{}"), "header": {"alg": "ES256"}, "payload": "eA", "signature": sig}).to_string(),
        // The same member protected and unprotected.
        serde_json::json!({"protected": b64u(br#"{"alg":"ES256"}"#), "header": {"alg": "ES256"}, "payload": "eA", "signature": sig}).to_string(),
        // No protected header at all.
        serde_json::json!({"header": {"alg": "ES256"}, "payload": "eA", "signature": sig}).to_string(),
        // Repeated member at the top of the JSON.
        format!(r#"{{"protected":"{}","signature":"{sig}","signature":"{sig}"}}"#, b64u(br#"{"alg":"ES256"}"#)),
        // x5t#S256 of the wrong size.
        format!("{}.{}.{sig}", b64u(br#"{"alg":"ES256","x5t#S256":"AAAA"}"#), b64u(b"x")),
        // Header JSON nested absurdly deep.
        format!("{}.{}.{sig}", b64u(format!("{{\"alg\":{}{}}}", "[".repeat(5_000), "]".repeat(5_000)).as_bytes()), b64u(b"x")),
        // Over the size limit.
        format!("{}.{}.{sig}", b64u(br#"{"alg":"ES256"}"#), "A".repeat(MAX_SIGNATURE_BYTES)),
    ];
    for c in cases {
        assert!(
            examine_jws(&c, b"", &Nobody).is_err(),
            "accepted {:.100}",
            c
        );
    }
}

#[test]
fn jws_mutated_never_panics() {
    let compact = format!(
        "{}.{}.{}",
        header_with_cert(
            serde_json::json!({"iat": 1, "sigT": "2024-01-01T00:00:00Z", "crit": ["sigT"]})
        ),
        b64u(INSTRUCTION),
        b64u(&[7u8; 64])
    );
    let json = serde_json::json!({
        "payload": b64u(INSTRUCTION),
        "signatures": [{"protected": header_with_cert(serde_json::json!({})), "header": {"kid": "k"}, "signature": b64u(&[7u8; 64])}],
    })
    .to_string();
    for text in [compact, json] {
        let bytes = text.as_bytes();
        for i in 0..bytes.len() {
            for c in [b'.', b'A', b'-', b'{', b'"', b'\\', b'=', b' '] {
                let mut v = bytes.to_vec();
                v[i] = c;
                if let Ok(s) = std::str::from_utf8(&v) {
                    let _ = examine_jws(s, INSTRUCTION, &Nobody);
                    let _ = examine_jws(s, b"", &Nobody);
                }
                let _ = decode_signature(&v);
            }
        }
        for cut in 0..text.len() {
            if let Some(s) = text.get(..cut) {
                let _ = examine_jws(s, INSTRUCTION, &Nobody);
            }
        }
    }
}

#[test]
fn rfc3339_times() {
    assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
    assert_eq!(parse_rfc3339("2024-05-01T08:30:00Z"), Some(1_714_552_200));
    assert_eq!(
        parse_rfc3339("2024-05-01T16:30:00+08:00"),
        Some(1_714_552_200)
    );
    assert_eq!(
        parse_rfc3339("2024-05-01t08:30:00.123456z"),
        Some(1_714_552_200)
    );
    assert_eq!(
        parse_rfc3339("2024-04-30T23:30:00-09:00"),
        Some(1_714_552_200)
    );
    assert_eq!(parse_rfc3339("2024-02-29T00:00:00Z"), Some(1_709_164_800));
    for bad in [
        "",
        "2024-05-01",
        "2024-05-01T08:30:00",
        "2023-02-29T00:00:00Z",
        "2024-13-01T00:00:00Z",
        "2024-05-01T24:00:00Z",
        "2024-05-01T08:30:00.Z",
        "2024-05-01T08:30:00+0800",
        "2024-05-01T08:30:00+08:00x",
        "2024-05-01T08:30:00ZZ",
        "+024-05-01T08:30:00Z",
        "２０24-05-01T08:30:00Z",
    ] {
        assert_eq!(parse_rfc3339(bad), None, "{bad}");
    }
}
