//! PKCS#10 CSRs: parsing (PEM or DER), the subject key's type, and proof of possession.
//! Nothing else of a CSR is trusted: its subject and requested extensions are ignored.

use std::fmt;

use const_oid::ObjectIdentifier;
use der::asn1::{ObjectIdentifier as Oid, Uint};
use der::{Decode, Sequence};
use spki::SubjectPublicKeyInfoOwned;
use x509_cert::request::CertReq;

use super::RaError;
use crate::policy::KeyType;

/// Largest CSR accepted, in bytes (a P-256 CSR is under 1 KiB; RSA-4096 about 2 KiB).
pub const MAX_CSR_BYTES: usize = 64 * 1024;
/// Deepest nesting of constructed DER values accepted in a CSR (a CSR with extensions needs 7).
pub const MAX_CSR_DER_DEPTH: usize = 32;

const ID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const PRIME256V1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const SECP384R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
const SECP521R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.35");
const SM2_CURVE: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.156.10197.1.301");
const ECDSA_WITH_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");

/// The subject key of a CSR, as far as Signet can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CsrKey {
    Supported(KeyType),
    /// A key Signet does not issue for: named for the error message (`P-384`, `RSA-1024`, `SM2`).
    Other(String),
}

impl fmt::Display for CsrKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CsrKey::Supported(k) => write!(f, "{k}"),
            CsrKey::Other(s) => f.write_str(s),
        }
    }
}

/// A CSR that parsed.
pub struct ParsedCsr {
    pub req: CertReq,
    pub key: CsrKey,
    /// CertificationRequestInfo as received: what the subject signed. The decoder sorts a SET
    /// OF that is out of DER order, so encoding `req.info` again may give other bytes.
    info_der: Vec<u8>,
}

impl ParsedCsr {
    pub fn spki(&self) -> &SubjectPublicKeyInfoOwned {
        &self.req.info.public_key
    }

    /// The subject key as a certificate carries it: a P-256 point in its uncompressed form,
    /// which RFC 5480 (2.2) requires every implementation to read (a compressed point is
    /// optional to support, and some relying parties cannot parse it).
    pub fn certified_spki(&self) -> Result<SubjectPublicKeyInfoOwned, RaError> {
        let mut spki = self.spki().clone();
        if self.key == CsrKey::Supported(KeyType::P256) {
            let key = crate::ecdsa::EcdsaKey::from_sec1(
                crate::ecdsa::Curve::P256,
                spki.subject_public_key.raw_bytes(),
            )
            .map_err(|_| {
                RaError::NotACsr("the P-256 public key is not a valid curve point".into())
            })?;
            spki.subject_public_key = der::asn1::BitString::from_bytes(key.point())
                .map_err(|e| RaError::NotACsr(e.to_string()))?;
        }
        Ok(spki)
    }
}

/// The first element of the DER SEQUENCE `der`, as its bytes.
fn first_element(der: &[u8]) -> der::Result<Vec<u8>> {
    let outer = der::asn1::AnyRef::from_der(der)?;
    let mut reader = der::SliceReader::new(outer.value())?;
    der::Reader::tlv_bytes(&mut reader).map(<[u8]>::to_vec)
}

/// Parses a CSR given as PEM or DER.
pub fn parse(input: &[u8]) -> Result<ParsedCsr, RaError> {
    if input.len() > MAX_CSR_BYTES {
        return Err(RaError::NotACsr(format!(
            "{} bytes is more than the {MAX_CSR_BYTES} a CSR may have",
            input.len()
        )));
    }
    let trimmed = trim_ascii(input);
    let der: Vec<u8> = if trimmed.starts_with(b"-----BEGIN") {
        let (label, der) =
            der::pem::decode_vec(trimmed).map_err(|e| RaError::NotACsr(format!("bad PEM: {e}")))?;
        if label != "CERTIFICATE REQUEST" && label != "NEW CERTIFICATE REQUEST" {
            return Err(RaError::NotACsr(format!(
                "the PEM block is a {label:?}, not a CERTIFICATE REQUEST"
            )));
        }
        der
    } else {
        // DER as given: its last bytes may well be 0x20 or 0x0a, which trimming would cut.
        input.to_vec()
    };
    crate::der_limits::check(&der, MAX_CSR_DER_DEPTH)
        .map_err(|e| RaError::NotACsr(format!("not a PKCS#10 request: {e}")))?;
    let req = CertReq::from_der(&der)
        .map_err(|e| RaError::NotACsr(format!("not a PKCS#10 request: {e}")))?;
    let info_der =
        first_element(&der).map_err(|e| RaError::NotACsr(format!("not a PKCS#10 request: {e}")))?;
    let key = key_type(&req.info.public_key);
    Ok(ParsedCsr { req, key, info_der })
}

fn trim_ascii(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &b[start..end]
}

#[derive(Sequence)]
struct RsaPublicKey {
    modulus: Uint,
    #[allow(dead_code)]
    public_exponent: Uint,
}

/// Names the subject key type.
pub fn key_type(spki: &SubjectPublicKeyInfoOwned) -> CsrKey {
    let alg = spki.algorithm.oid;
    if alg == ID_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.decode_as::<Oid>().ok());
        return match curve {
            Some(c) if c == PRIME256V1 => CsrKey::Supported(KeyType::P256),
            Some(c) if c == SECP384R1 => CsrKey::Other("P-384".into()),
            Some(c) if c == SECP521R1 => CsrKey::Other("P-521".into()),
            Some(c) if c == SM2_CURVE => CsrKey::Other("SM2".into()),
            Some(c) => CsrKey::Other(format!("EC curve {c}")),
            None => CsrKey::Other("EC key without a named curve".into()),
        };
    }
    if alg == RSA_ENCRYPTION {
        let bits = RsaPublicKey::from_der(spki.subject_public_key.raw_bytes())
            .map(|k| {
                let m = k.modulus.as_bytes();
                let lead = m.first().map_or(0, |b| 8 - b.leading_zeros() as usize);
                (m.len().saturating_sub(1)) * 8 + lead
            })
            .unwrap_or(0);
        return CsrKey::Other(format!("RSA-{bits}"));
    }
    CsrKey::Other(format!("key algorithm {alg}"))
}

/// Checks the CSR's self-signature under its own key (proof of possession). Only keys of
/// supported types can be checked; the caller refuses the others first.
pub fn verify_proof_of_possession(csr: &ParsedCsr) -> Result<(), RaError> {
    match csr.key {
        CsrKey::Supported(KeyType::P256) => {}
        _ => {
            return Err(RaError::CsrSignatureInvalid(format!(
                "cannot check a {} key",
                csr.key
            )))
        }
    }
    if csr.req.algorithm.oid != ECDSA_WITH_SHA256 {
        return Err(RaError::CsrSignatureInvalid(format!(
            "signature algorithm {} is not ecdsa-with-SHA256",
            csr.req.algorithm.oid
        )));
    }
    crate::ecdsa::verify_p256_sha256(
        csr.spki().subject_public_key.raw_bytes(),
        &csr.info_der,
        csr.req.signature.raw_bytes(),
    )
    .map_err(|e| match e {
        crate::ecdsa::EcdsaError::BadKey(_) => {
            RaError::NotACsr("the P-256 public key is not a valid curve point".into())
        }
        crate::ecdsa::EcdsaError::BadEncoding { .. } => {
            RaError::CsrSignatureInvalid("the signature is not a DER ECDSA signature".into())
        }
        crate::ecdsa::EcdsaError::Mismatch => RaError::CsrSignatureInvalid(
            "the signature does not verify under the CSR's own key".into(),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_der_csr_that_ends_in_a_whitespace_byte_is_read_whole() {
        use sha2::Digest;
        use x509_cert::builder::{Builder, RequestBuilder};
        // About one signature in fifty ends in a byte that is ASCII whitespace.
        let der = (0u32..)
            .map(|i| {
                let key =
                    p256::ecdsa::SigningKey::from_slice(&sha2::Sha256::digest(i.to_be_bytes()))
                        .unwrap();
                let req = RequestBuilder::new("CN=whitespace".parse().unwrap())
                    .unwrap()
                    .build::<_, p256::ecdsa::DerSignature>(&key)
                    .unwrap();
                der::Encode::to_der(&req).unwrap()
            })
            .find(|der| der.last().is_some_and(|b| b.is_ascii_whitespace()))
            .unwrap();
        parse(&der).unwrap();
    }

    #[test]
    fn the_proof_of_possession_is_checked_over_the_request_info_as_received() {
        use der::{Encode, Tag, TagNumber};
        use p256::ecdsa::signature::Signer;
        use x509_cert::builder::{Builder, RequestBuilder};
        let key = p256::ecdsa::SigningKey::from_slice(&[7u8; 32]).unwrap();
        let tlv = |tag: Tag, body: &[u8]| der::Any::new(tag, body).unwrap().to_der().unwrap();
        // Version, subject and key of a request made the usual way.
        let usual = RequestBuilder::new("CN=unsorted".parse().unwrap())
            .unwrap()
            .build::<_, p256::ecdsa::DerSignature>(&key)
            .unwrap()
            .to_der()
            .unwrap();
        let info = first_element(&usual).unwrap();
        let body = der::asn1::AnyRef::from_der(&info).unwrap().value().to_vec();
        let mut reader = der::SliceReader::new(&body).unwrap();
        let head: Vec<u8> = (0..3)
            .flat_map(|_| der::Reader::tlv_bytes(&mut reader).unwrap().to_vec())
            .collect();
        // Two attributes out of DER order (challengePassword, ...9.7, before unstructuredName,
        // ...9.2): the decoder sorts them, so the info encoded again is not what was signed.
        let attribute = |last_arc: u8| {
            let oid = [
                0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, last_arc,
            ];
            let value = tlv(Tag::Set, &tlv(Tag::Utf8String, b"x"));
            tlv(Tag::Sequence, &[&oid[..], &value].concat())
        };
        let attributes = tlv(
            Tag::ContextSpecific {
                constructed: true,
                number: TagNumber(0),
            },
            &[attribute(7), attribute(2)].concat(),
        );
        let info = tlv(Tag::Sequence, &[head, attributes].concat());
        let signature: p256::ecdsa::DerSignature = key.sign(&info);
        let algorithm = tlv(Tag::Sequence, &ECDSA_WITH_SHA256.to_der().unwrap());
        let bits = tlv(Tag::BitString, &[&[0u8][..], signature.as_bytes()].concat());
        let csr = tlv(Tag::Sequence, &[info, algorithm, bits].concat());
        let parsed = parse(&csr).unwrap();
        assert_ne!(parsed.req.info.to_der().unwrap(), parsed.info_der);
        verify_proof_of_possession(&parsed).unwrap();
    }

    #[test]
    fn a_deeply_nested_der_csr_is_refused_before_decoding() {
        let deep = crate::der_limits::nested_sequences(10_000);
        assert!(deep.len() <= MAX_CSR_BYTES);
        match parse(&deep) {
            Err(RaError::NotACsr(m)) => assert!(m.contains("nested more than 32 levels"), "{m}"),
            Err(other) => panic!("{other}"),
            Ok(_) => panic!("accepted"),
        }
    }
}
