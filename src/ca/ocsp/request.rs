//! Reading an OCSP request (pure): size limit, DER decoding, extensions, the nonce, and which
//! certificate a `CertID` names (hash algorithm, issuer name and key hashes).

use const_oid::ObjectIdentifier;
use der::asn1::OctetString;
use der::{Decode, Encode, Tagged};
use sha1::Sha1;
use sha2::{Digest, Sha256, Sha384, Sha512};
use x509_cert::ext::Extension;
use x509_cert::Certificate;

use super::asn1::{
    CertId, OcspRequest, ID_PKIX_OCSP_NONCE, ID_SHA1, ID_SHA256, ID_SHA384, ID_SHA512,
};

/// Requests larger than this are refused unread (malformedRequest).
pub const MAX_REQUEST_LEN: usize = 8 * 1024;
/// RFC 9654 2.1: a nonce is 1 to 128 octets; outside that the request is malformed.
pub const MAX_NONCE_LEN: usize = 128;
/// Deepest nesting of constructed DER values accepted (a signed request with a certificate
/// needs about 15).
pub const MAX_REQUEST_DER_DEPTH: usize = 32;

/// Why a request is malformed (for logs; the client only sees malformedRequest).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("the request has {0} bytes; at most {MAX_REQUEST_LEN} are read")]
    TooLarge(usize),
    #[error("the request is not a DER OCSPRequest: {0}")]
    Der(String),
    #[error("the request names no certificate")]
    NoRequests,
    #[error("extension {0} appears more than once")]
    DuplicateExtension(ObjectIdentifier),
    #[error("critical extension {0} is not understood")]
    UnknownCriticalExtension(ObjectIdentifier),
    #[error("the nonce is not an OCTET STRING of 1 to {MAX_NONCE_LEN} octets")]
    BadNonce,
}

/// What a well-formed request asks.
#[derive(Debug, Clone)]
pub struct ParsedRequest {
    /// The certificates asked about, in request order.
    pub cert_ids: Vec<CertId>,
    /// The request's nonce extension, to echo as it came.
    pub nonce: Option<Extension>,
}

/// Decodes and checks a DER OCSPRequest. A request signature, if any, is not checked (Signet
/// answers anyone) and a requestorName is ignored.
pub fn parse_request(der: &[u8]) -> Result<ParsedRequest, Malformed> {
    if der.len() > MAX_REQUEST_LEN {
        return Err(Malformed::TooLarge(der.len()));
    }
    crate::der_limits::check(der, MAX_REQUEST_DER_DEPTH)
        .map_err(|e| Malformed::Der(e.to_string()))?;
    // `from_der` reads only within `der` and rejects trailing bytes and non-DER encodings.
    let req = OcspRequest::from_der(der).map_err(|e| Malformed::Der(e.to_string()))?;
    let tbs = req.tbs_request;
    if tbs.request_list.is_empty() {
        return Err(Malformed::NoRequests);
    }
    let exts = tbs.request_extensions.unwrap_or_default();
    check_extensions(&exts, &[ID_PKIX_OCSP_NONCE])?;
    let nonce = exts
        .into_iter()
        .find(|e| e.extn_id == ID_PKIX_OCSP_NONCE)
        .map(check_nonce)
        .transpose()?;
    let mut cert_ids = Vec::with_capacity(tbs.request_list.len());
    for r in tbs.request_list {
        // RFC 6960 defines no single-request extension Signet acts on (service locator is
        // for forwarding responders).
        check_extensions(r.single_request_extensions.as_deref().unwrap_or(&[]), &[])?;
        cert_ids.push(r.req_cert);
    }
    Ok(ParsedRequest { cert_ids, nonce })
}

/// RFC 6960 4.4: unrecognized extensions are ignored unless critical. Duplicates are refused
/// (RFC 5280 4.2 rule, applied here too).
fn check_extensions(exts: &[Extension], understood: &[ObjectIdentifier]) -> Result<(), Malformed> {
    for (i, e) in exts.iter().enumerate() {
        if exts[..i].iter().any(|p| p.extn_id == e.extn_id) {
            return Err(Malformed::DuplicateExtension(e.extn_id));
        }
        if e.critical && !understood.contains(&e.extn_id) {
            return Err(Malformed::UnknownCriticalExtension(e.extn_id));
        }
    }
    Ok(())
}

/// RFC 9654: the extnValue is the DER of `Nonce ::= OCTET STRING (SIZE(1..128))`.
fn check_nonce(ext: Extension) -> Result<Extension, Malformed> {
    let inner =
        OctetString::from_der(ext.extn_value.as_bytes()).map_err(|_| Malformed::BadNonce)?;
    if inner.as_bytes().is_empty() || inner.as_bytes().len() > MAX_NONCE_LEN {
        return Err(Malformed::BadNonce);
    }
    // Echoed non-critical, whatever the request said (it is a response extension now).
    Ok(Extension {
        critical: false,
        ..ext
    })
}

/// A CertID hash algorithm Signet can compute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashAlg {
    Sha1,
    Sha256,
    Sha384,
    Sha512,
}

impl HashAlg {
    /// The algorithm of a CertID, when known and its parameters are absent or NULL.
    pub fn of(cert_id: &CertId) -> Option<Self> {
        let alg = &cert_id.hash_algorithm;
        let params_ok = match &alg.parameters {
            None => true,
            Some(p) => p.tag() == der::Tag::Null && p.value().is_empty(),
        };
        if !params_ok {
            return None;
        }
        match alg.oid {
            o if o == ID_SHA1 => Some(HashAlg::Sha1),
            o if o == ID_SHA256 => Some(HashAlg::Sha256),
            o if o == ID_SHA384 => Some(HashAlg::Sha384),
            o if o == ID_SHA512 => Some(HashAlg::Sha512),
            _ => None,
        }
    }

    pub fn digest(self, data: &[u8]) -> Vec<u8> {
        match self {
            HashAlg::Sha1 => Sha1::digest(data).to_vec(),
            HashAlg::Sha256 => Sha256::digest(data).to_vec(),
            HashAlg::Sha384 => Sha384::digest(data).to_vec(),
            HashAlg::Sha512 => Sha512::digest(data).to_vec(),
        }
    }
}

/// Whether `cert_id` names `issuer` as the issuer: issuerNameHash is the hash of the issuer's
/// subject Name DER, issuerKeyHash the hash of its subjectPublicKey BIT STRING value.
pub fn names_issuer(cert_id: &CertId, issuer: &Certificate) -> bool {
    let Some(alg) = HashAlg::of(cert_id) else {
        return false;
    };
    let tbs = issuer.tbs_certificate();
    let Ok(name_der) = tbs.subject().to_der() else {
        return false;
    };
    let key = tbs.subject_public_key_info().subject_public_key.raw_bytes();
    cert_id.issuer_name_hash.as_bytes() == alg.digest(&name_der).as_slice()
        && cert_id.issuer_key_hash.as_bytes() == alg.digest(key).as_slice()
}

/// RFC 6960 4.2.1 KeyHash: SHA-1 of the subjectPublicKey BIT STRING value (no tag, length or
/// unused-bits octet).
pub fn responder_key_hash(issuer: &Certificate) -> Vec<u8> {
    HashAlg::Sha1.digest(
        issuer
            .tbs_certificate()
            .subject_public_key_info()
            .subject_public_key
            .raw_bytes(),
    )
}

/// The serial a CertID asks about, in the store's form (lowercase hex, no leading zero byte);
/// `None` for a serial Signet never makes (zero-length, negative, or too long).
pub fn store_serial(cert_id: &CertId) -> Option<String> {
    let bytes = cert_id.serial_number.as_bytes();
    if bytes.first().is_none_or(|b| b & 0x80 != 0) {
        return None;
    }
    crate::ca::normalize_serial(&hex::encode(bytes)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::ocsp::asn1::{Request, TbsRequest, Version};
    use der::asn1::Int;
    use der::DecodePem;

    const REQ_SHA1: &[u8] = include_bytes!("../../../tests/data/ocsp/req-sha1.der");
    const REQ_SHA256_NONCE: &[u8] = include_bytes!("../../../tests/data/ocsp/req-sha256-nonce.der");
    const REQ_TWO: &[u8] = include_bytes!("../../../tests/data/ocsp/req-two.der");
    const ISSUER_PEM: &str = include_str!("../../../tests/data/ocsp/issuer.pem");

    fn issuer() -> Certificate {
        Certificate::from_pem(ISSUER_PEM).unwrap()
    }

    #[test]
    fn a_deeply_nested_request_is_malformed_before_decoding() {
        let deep = crate::der_limits::nested_sequences(MAX_REQUEST_DER_DEPTH + 100);
        assert!(deep.len() <= MAX_REQUEST_LEN);
        let err = parse_request(&deep).unwrap_err();
        assert_eq!(
            err,
            Malformed::Der(
                crate::der_limits::DerShapeError::TooDeep(MAX_REQUEST_DER_DEPTH).to_string()
            )
        );
    }

    fn request_with(cert_ids: Vec<CertId>, extensions: Option<Vec<Extension>>) -> Vec<u8> {
        OcspRequest {
            tbs_request: TbsRequest {
                version: Version::V1,
                requestor_name: None,
                request_list: cert_ids
                    .into_iter()
                    .map(|req_cert| Request {
                        req_cert,
                        single_request_extensions: None,
                    })
                    .collect(),
                request_extensions: extensions,
            },
            optional_signature: None,
        }
        .to_der()
        .unwrap()
    }

    fn nonce_ext(value_der: Vec<u8>, critical: bool) -> Extension {
        Extension {
            extn_id: ID_PKIX_OCSP_NONCE,
            critical,
            extn_value: OctetString::new(value_der).unwrap(),
        }
    }

    fn fixture_cert_id() -> CertId {
        parse_request(REQ_SHA1).unwrap().cert_ids.remove(0)
    }

    #[test]
    fn reads_an_openssl_sha1_request_without_nonce() {
        let req = parse_request(REQ_SHA1).unwrap();
        assert_eq!(req.cert_ids.len(), 1);
        assert!(req.nonce.is_none());
        let id = &req.cert_ids[0];
        assert_eq!(HashAlg::of(id), Some(HashAlg::Sha1));
        assert!(names_issuer(id, &issuer()));
        assert_eq!(
            store_serial(id).as_deref(),
            Some("0102030405060708090a0b0c0d0e0f10")
        );
    }

    #[test]
    fn reads_an_openssl_sha256_request_with_its_nonce() {
        let req = parse_request(REQ_SHA256_NONCE).unwrap();
        let id = &req.cert_ids[0];
        assert_eq!(HashAlg::of(id), Some(HashAlg::Sha256));
        assert!(names_issuer(id, &issuer()));
        let nonce = req.nonce.expect("nonce");
        assert!(!nonce.critical);
        let inner = OctetString::from_der(nonce.extn_value.as_bytes()).unwrap();
        assert_eq!(
            hex::encode(inner.as_bytes()),
            "8aab22e572afcdad9437204062d78d23"
        );
    }

    #[test]
    fn reads_every_request_of_a_multi_certificate_request() {
        let req = parse_request(REQ_TWO).unwrap();
        let serials: Vec<_> = req.cert_ids.iter().filter_map(store_serial).collect();
        assert_eq!(
            serials,
            [
                "0102030405060708090a0b0c0d0e0f10",
                "7f000000000000000000000000000001"
            ]
        );
        assert!(req.cert_ids.iter().all(|id| names_issuer(id, &issuer())));
    }

    #[test]
    fn a_cert_id_with_other_hashes_names_another_issuer() {
        let mut id = fixture_cert_id();
        let mut key = id.issuer_key_hash.as_bytes().to_vec();
        key[0] ^= 1;
        id.issuer_key_hash = OctetString::new(key).unwrap();
        assert!(!names_issuer(&id, &issuer()));

        let mut id = fixture_cert_id();
        id.hash_algorithm.oid = ObjectIdentifier::new_unwrap("1.2.840.113549.2.5"); // md5
        assert_eq!(HashAlg::of(&id), None);
        assert!(!names_issuer(&id, &issuer()));
    }

    #[test]
    fn garbage_truncation_and_trailing_bytes_are_malformed() {
        for bad in [
            &b""[..],
            b"\x00",
            b"hello, OCSP",
            b"\x30\x80\x00\x00",
            b"\x30\x84\xff\xff\xff\xff",
        ] {
            assert!(
                matches!(parse_request(bad), Err(Malformed::Der(_))),
                "{bad:?}"
            );
        }
        for n in 0..REQ_SHA256_NONCE.len() {
            assert!(parse_request(&REQ_SHA256_NONCE[..n]).is_err(), "prefix {n}");
        }
        let mut trailing = REQ_SHA1.to_vec();
        trailing.push(0);
        assert!(parse_request(&trailing).is_err());
        // Every single-byte change either still parses or is refused: never a panic.
        for i in 0..REQ_SHA256_NONCE.len() {
            for x in [0x01, 0x80, 0xff] {
                let mut m = REQ_SHA256_NONCE.to_vec();
                m[i] ^= x;
                let _ = parse_request(&m);
            }
        }
    }

    #[test]
    fn requests_over_the_size_limit_are_refused_unread() {
        let big = vec![0x30; MAX_REQUEST_LEN + 1];
        assert_eq!(
            parse_request(&big).unwrap_err(),
            Malformed::TooLarge(MAX_REQUEST_LEN + 1)
        );
        // Within the limit, many requests are fine.
        let many = request_with(vec![fixture_cert_id(); 50], None);
        assert!(many.len() <= MAX_REQUEST_LEN);
        assert_eq!(parse_request(&many).unwrap().cert_ids.len(), 50);
    }

    #[test]
    fn an_empty_request_list_is_malformed() {
        let der = request_with(vec![], None);
        assert_eq!(parse_request(&der).unwrap_err(), Malformed::NoRequests);
    }

    #[test]
    fn nonce_must_be_an_octet_string_of_1_to_128_octets() {
        let ok = |len: usize| {
            let value = OctetString::new(vec![7u8; len]).unwrap().to_der().unwrap();
            parse_request(&request_with(
                vec![fixture_cert_id()],
                Some(vec![nonce_ext(value, false)]),
            ))
        };
        assert!(ok(1).is_ok());
        assert!(ok(32).is_ok());
        assert!(ok(MAX_NONCE_LEN).is_ok());
        assert_eq!(ok(0).unwrap_err(), Malformed::BadNonce);
        assert_eq!(ok(MAX_NONCE_LEN + 1).unwrap_err(), Malformed::BadNonce);
        // A raw nonce (pre-RFC 6960 clients) is not an OCTET STRING.
        let raw = parse_request(&request_with(
            vec![fixture_cert_id()],
            Some(vec![nonce_ext(vec![1, 2, 3, 4], false)]),
        ));
        assert_eq!(raw.unwrap_err(), Malformed::BadNonce);
    }

    #[test]
    fn a_critical_nonce_is_understood_and_echoed_non_critical() {
        let value = OctetString::new(vec![9u8; 16]).unwrap().to_der().unwrap();
        let req = parse_request(&request_with(
            vec![fixture_cert_id()],
            Some(vec![nonce_ext(value, true)]),
        ))
        .unwrap();
        assert!(!req.nonce.unwrap().critical);
    }

    #[test]
    fn unknown_critical_and_duplicate_extensions_are_malformed() {
        let other = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.48.1.4"); // acceptable responses
        let ext = |critical| Extension {
            extn_id: other,
            critical,
            extn_value: OctetString::new(vec![0x30, 0x00]).unwrap(),
        };
        assert!(parse_request(&request_with(
            vec![fixture_cert_id()],
            Some(vec![ext(false)])
        ))
        .is_ok());
        assert_eq!(
            parse_request(&request_with(
                vec![fixture_cert_id()],
                Some(vec![ext(true)])
            ))
            .unwrap_err(),
            Malformed::UnknownCriticalExtension(other)
        );
        assert_eq!(
            parse_request(&request_with(
                vec![fixture_cert_id()],
                Some(vec![ext(false), ext(false)])
            ))
            .unwrap_err(),
            Malformed::DuplicateExtension(other)
        );
    }

    #[test]
    fn serials_signet_never_makes_have_no_store_form() {
        let with_serial = |bytes: &[u8]| {
            let mut id = fixture_cert_id();
            id.serial_number = Int::new(bytes).unwrap();
            store_serial(&id)
        };
        assert_eq!(with_serial(&[0x00, 0xff, 0x01]).as_deref(), Some("ff01"));
        assert_eq!(with_serial(&[0x12, 0x34]).as_deref(), Some("1234"));
        assert_eq!(with_serial(&[0xff, 0x01]), None, "negative");
        assert_eq!(with_serial(&[0x11; 22]), None, "longer than 21 bytes");
    }

    #[test]
    fn responder_key_hash_is_sha1_of_the_public_key_bits() {
        let cert = issuer();
        let bits = cert
            .tbs_certificate()
            .subject_public_key_info()
            .subject_public_key
            .raw_bytes();
        assert_eq!(bits.len(), 65);
        assert_eq!(responder_key_hash(&cert), Sha1::digest(bits).to_vec());
        assert_eq!(responder_key_hash(&cert).len(), 20);
    }
}
