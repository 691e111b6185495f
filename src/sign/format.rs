//! The signature formats Signet produces: CMS SignedData (RFC 5652) with CAdES-BES signed
//! attributes, and JWS compact ES256 (RFC 7515) with `x5c` and a JAdES `sigT`.
//!
//! Both builders take the signer's certificate and chain and a `sign` closure. The closure is
//! the HSM: it receives the bytes to be signed (the DER of the signed attributes, or the JWS
//! signing input), hashes them with SHA-256 and returns a DER ECDSA P-256 signature, as
//! [`crate::hsm::Hsm::sign_p256_sha256`] does. The builders check that what comes back is a
//! DER ECDSA-Sig-Value but do not verify it against the certificate's key: a software verify
//! costs about three SoftHSM signatures, which batch signing cannot afford. A caller that wants
//! that self-check wraps `sign` (the verification receipt does).
//!
//! Everything is DER and deterministic apart from the signature itself: SET OF elements (the
//! signed attributes, the certificates) are in DER order.

use ::cms::cert::IssuerAndSerialNumber;
use std::cell::RefCell;
use std::rc::Rc;

use base64::Engine as _;
use const_oid::db::rfc5911::{
    ID_AA_SIGNING_CERTIFICATE_V_2, ID_CONTENT_TYPE, ID_DATA, ID_MESSAGE_DIGEST, ID_SIGNED_DATA,
    ID_SIGNING_TIME,
};
use const_oid::db::rfc5912::{ECDSA_WITH_SHA_256, ID_EC_PUBLIC_KEY, ID_SHA_256, SECP_256_R_1};
use const_oid::ObjectIdentifier;
use der::asn1::{OctetString, SetOfVec};
use der::{Any, Decode, Encode, Sequence};
use sha2::{Digest, Sha256};
use spki::AlgorithmIdentifierOwned;
use x509_cert::attr::{Attribute, AttributeValue};
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::serial_number::SerialNumber;
use x509_cert::time::Time;
use x509_cert::Certificate;

/// The signer's certificate and its chain (issuing CA, root), DER.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignerCert {
    pub certificate_der: Vec<u8>,
    pub chain: Vec<Vec<u8>>,
}

/// What a CMS signature covers, and whether the content travels with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmsContent<'a> {
    /// The content travels inside the SignedData.
    Attached(&'a [u8]),
    /// Detached: only its SHA-256 goes into message-digest.
    Detached(&'a [u8]),
    /// Detached, the caller gives the SHA-256 itself (batch signing of hashes).
    DetachedDigest([u8; 32]),
}

// -------------------------------------------------------------------------------------
// ESS signing-certificate-v2 (RFC 5035), shared with the receipt's verifier

/// ```text
/// SigningCertificateV2 ::= SEQUENCE {
///     certs        SEQUENCE OF ESSCertIDv2,
///     policies     SEQUENCE OF PolicyInformation OPTIONAL }
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Sequence)]
pub(crate) struct SigningCertificateV2 {
    pub(crate) certs: Vec<EssCertIdV2>,
    #[asn1(optional = "true")]
    pub(crate) policies: Option<Vec<Any>>,
}

/// ```text
/// ESSCertIDv2 ::= SEQUENCE {
///     hashAlgorithm  AlgorithmIdentifier DEFAULT {algorithm id-sha256},
///     certHash       Hash,
///     issuerSerial   IssuerSerial OPTIONAL }
/// ```
/// DER omits a DEFAULT value: SHA-256 is written as absent.
#[derive(Clone, Debug, PartialEq, Eq, Sequence)]
pub(crate) struct EssCertIdV2 {
    #[asn1(optional = "true")]
    pub(crate) hash_algorithm: Option<AlgorithmIdentifierOwned>,
    pub(crate) cert_hash: OctetString,
    #[asn1(optional = "true")]
    pub(crate) issuer_serial: Option<IssuerSerial>,
}

/// `IssuerSerial ::= SEQUENCE { issuer GeneralNames, serialNumber CertificateSerialNumber }`
#[derive(Clone, Debug, PartialEq, Eq, Sequence)]
pub(crate) struct IssuerSerial {
    pub(crate) issuer: Vec<GeneralName>,
    pub(crate) serial_number: SerialNumber,
}

// -------------------------------------------------------------------------------------
// CMS SignedData

fn sha256_alg() -> AlgorithmIdentifierOwned {
    // RFC 5754 3: the parameters of SHA-2 algorithm identifiers are absent.
    AlgorithmIdentifierOwned {
        oid: ID_SHA_256,
        parameters: None,
    }
}

/// A single-valued attribute.
pub(crate) fn attribute<T: Encode>(
    oid: ObjectIdentifier,
    value: &T,
) -> Result<Attribute, der::Error> {
    let mut values = SetOfVec::new();
    values.insert(AttributeValue::from_der(&value.to_der()?)?)?;
    Ok(Attribute { oid, values })
}

/// The signing time as CMS wants it (RFC 5652 11.3): UTCTime through 2049, then
/// GeneralizedTime.
fn signing_time_value(unix: i64) -> Result<Time, String> {
    if unix < 0 {
        return Err(format!("signing time {unix} lies before 1970"));
    }
    crate::ca::x509::x509_time(unix).map_err(|e| format!("signing time {unix}: {e}"))
}

/// The signer's certificate, parsed, with its key checked to be ECDSA P-256 (the only key
/// ecdsa-with-SHA256 and ES256 are produced with here).
fn signer_certificate(signer: &SignerCert) -> Result<Certificate, String> {
    let cert = Certificate::from_der(&signer.certificate_der)
        .map_err(|e| format!("the signer certificate does not parse: {e}"))?;
    let alg = &cert.tbs_certificate().subject_public_key_info().algorithm;
    let curve = alg
        .parameters
        .as_ref()
        .and_then(|p| p.decode_as::<ObjectIdentifier>().ok());
    if alg.oid != ID_EC_PUBLIC_KEY || curve != Some(SECP_256_R_1) {
        return Err(format!(
            "the signer certificate ({}) has no ECDSA P-256 key",
            cert.tbs_certificate().subject()
        ));
    }
    Ok(cert)
}

/// A signer prepared for CMS signatures: its certificates parsed and checked once, and the
/// parts of the SignedData that do not change from one signature to the next (signer
/// identifier, ESS signing-certificate-v2, the certificates) encoded once. Batch signing
/// prepares once and calls [`CmsSigner::sign`] for each hash; [`cms_signed_data`] prepares
/// for a single signature.
#[derive(Debug, Clone)]
pub struct CmsSigner {
    /// IssuerAndSerialNumber (DER).
    sid: Vec<u8>,
    /// The signed attributes that do not depend on the content or time (DER Attribute each).
    content_type_attr: Vec<u8>,
    ess_attr: Vec<u8>,
    /// The message-digest attribute with a zero digest: its last 32 bytes are the digest.
    message_digest_template: Vec<u8>,
    /// `[0] IMPLICIT CertificateSet`, the certificates in DER order (X.690 11.6).
    certificates: Vec<u8>,
    sha256_alg: Vec<u8>,
    ecdsa_sha256_alg: Vec<u8>,
    id_data: Vec<u8>,
    id_signed_data: Vec<u8>,
}

/// DER tag and length of `len` content bytes.
fn push_header(out: &mut Vec<u8>, tag: u8, len: usize) {
    out.push(tag);
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
}

/// A DER TLV whose content is the concatenation of `parts`.
fn tlv(tag: u8, parts: &[&[u8]]) -> Vec<u8> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let mut out = Vec::with_capacity(len + 6);
    push_header(&mut out, tag, len);
    for p in parts {
        out.extend_from_slice(p);
    }
    out
}

const TAG_INTEGER: u8 = 0x02;
const TAG_OCTET_STRING: u8 = 0x04;
const TAG_SEQUENCE: u8 = 0x30;
const TAG_SET: u8 = 0x31;
const TAG_CONTEXT_0: u8 = 0xa0;
/// INTEGER 1: the CMSVersion of the SignedData and the SignerInfo (sid issuerAndSerialNumber,
/// eContentType id-data, no attribute certificates).
const VERSION_1: &[u8] = &[TAG_INTEGER, 0x01, 0x01];

impl CmsSigner {
    /// Parses the signer's certificate (its key must be ECDSA P-256) and chain, and encodes
    /// what every signature by this signer shares.
    pub fn new(signer: &SignerCert) -> Result<CmsSigner, String> {
        let enc = |e: der::Error| format!("CMS encoding: {e}");
        let cert = signer_certificate(signer)?;
        let tbs = cert.tbs_certificate();
        // The certificates as the SignedData carries them (re-encoded DER, so that the ESS
        // hash names exactly what is carried).
        let cert_der = cert.to_der().map_err(enc)?;
        let mut certificates = Vec::with_capacity(1 + signer.chain.len());
        certificates.push(cert_der.clone());
        for (i, der) in signer.chain.iter().enumerate() {
            let c = Certificate::from_der(der)
                .map_err(|e| format!("chain certificate {i} does not parse: {e}"))?;
            certificates.push(c.to_der().map_err(enc)?);
        }
        // DER orders SET OF by the encodings as octet strings; no complete TLV is a prefix of
        // another, so byte-wise order is that order.
        certificates.sort();
        let certificates: Vec<&[u8]> = certificates.iter().map(Vec::as_slice).collect();

        let ess = SigningCertificateV2 {
            certs: vec![EssCertIdV2 {
                hash_algorithm: None,
                cert_hash: OctetString::new(Sha256::digest(&cert_der).to_vec()).map_err(enc)?,
                issuer_serial: Some(IssuerSerial {
                    issuer: vec![GeneralName::DirectoryName(tbs.issuer().clone())],
                    serial_number: tbs.serial_number().clone(),
                }),
            }],
            policies: None,
        };
        let sid = IssuerAndSerialNumber {
            issuer: tbs.issuer().clone(),
            serial_number: tbs.serial_number().clone(),
        };
        let message_digest_template = attribute(
            ID_MESSAGE_DIGEST,
            &OctetString::new(vec![0u8; 32]).map_err(enc)?,
        )
        .and_then(|a| a.to_der())
        .map_err(enc)?;
        Ok(CmsSigner {
            sid: sid.to_der().map_err(enc)?,
            content_type_attr: attribute(ID_CONTENT_TYPE, &ID_DATA)
                .and_then(|a| a.to_der())
                .map_err(enc)?,
            ess_attr: attribute(ID_AA_SIGNING_CERTIFICATE_V_2, &ess)
                .and_then(|a| a.to_der())
                .map_err(enc)?,
            message_digest_template,
            certificates: tlv(TAG_CONTEXT_0, &certificates),
            sha256_alg: sha256_alg().to_der().map_err(enc)?,
            ecdsa_sha256_alg: AlgorithmIdentifierOwned {
                oid: ECDSA_WITH_SHA_256,
                parameters: None,
            }
            .to_der()
            .map_err(enc)?,
            id_data: ID_DATA.to_der().map_err(enc)?,
            id_signed_data: ID_SIGNED_DATA.to_der().map_err(enc)?,
        })
    }

    /// The CMS SignedData of [`cms_signed_data`] by this signer.
    #[allow(clippy::type_complexity)] // `sign` is the HSM call: a plain closure type reads best
    pub fn sign(
        &self,
        content: CmsContent<'_>,
        signing_time: i64,
        sign: &dyn Fn(&[u8]) -> Result<Vec<u8>, String>,
    ) -> Result<Vec<u8>, String> {
        let enc = |e: der::Error| format!("CMS encoding: {e}");
        let (message_digest, econtent): ([u8; 32], Option<&[u8]>) = match content {
            CmsContent::Attached(data) => (Sha256::digest(data).into(), Some(data)),
            CmsContent::Detached(data) => (Sha256::digest(data).into(), None),
            CmsContent::DetachedDigest(digest) => (digest, None),
        };
        let mut md_attr = self.message_digest_template.clone();
        let at = md_attr.len() - 32;
        md_attr[at..].copy_from_slice(&message_digest);
        let time_attr = attribute(ID_SIGNING_TIME, &signing_time_value(signing_time)?)
            .and_then(|a| a.to_der())
            .map_err(enc)?;
        // SET OF Attribute in DER order (see `new` for why byte-wise order is DER order).
        let mut attrs = [
            self.content_type_attr.as_slice(),
            md_attr.as_slice(),
            time_attr.as_slice(),
            self.ess_attr.as_slice(),
        ];
        attrs.sort();
        // RFC 5652 5.4: the signature covers the DER of the attributes as a SET OF; the
        // SignerInfo carries the same content under [0] IMPLICIT.
        let mut signed_attrs = tlv(TAG_SET, &attrs);
        let signature = sign(&signed_attrs)?;
        p256::ecdsa::DerSignature::try_from(signature.as_slice())
            .map_err(|e| format!("the signer returned no DER ECDSA P-256 signature: {e}"))?;
        signed_attrs[0] = TAG_CONTEXT_0;

        let signer_info = tlv(
            TAG_SEQUENCE,
            &[
                VERSION_1,
                &self.sid,
                &self.sha256_alg,
                &signed_attrs,
                &self.ecdsa_sha256_alg,
                &tlv(TAG_OCTET_STRING, &[&signature]),
            ],
        );
        let encap = match econtent {
            Some(c) => tlv(
                TAG_SEQUENCE,
                &[
                    &self.id_data,
                    &tlv(TAG_CONTEXT_0, &[&tlv(TAG_OCTET_STRING, &[c])]),
                ],
            ),
            None => tlv(TAG_SEQUENCE, &[&self.id_data]),
        };
        let signed_data = tlv(
            TAG_SEQUENCE,
            &[
                VERSION_1,
                &tlv(TAG_SET, &[&self.sha256_alg]),
                &encap,
                &self.certificates,
                &tlv(TAG_SET, &[&signer_info]),
            ],
        );
        Ok(tlv(
            TAG_SEQUENCE,
            &[&self.id_signed_data, &tlv(TAG_CONTEXT_0, &[&signed_data])],
        ))
    }
}

thread_local! {
    /// The signer [`cms_signed_data`] prepared last on this thread, with what it was made of.
    static PREPARED: RefCell<Option<(SignerCert, Rc<CmsSigner>)>> = const { RefCell::new(None) };
}

/// CMS SignedData (ContentInfo, DER): version 1, eContentType id-data, one SignerInfo (sid
/// IssuerAndSerialNumber, SHA-256, ecdsa-with-SHA256) with signed attributes content-type,
/// message-digest, signing-time (UTCTime before 2050, GeneralizedTime from then on) and ESS
/// signing-certificate-v2 (the signer certificate's SHA-256 with its issuer and serial); the
/// certificates set holds the signer's certificate and chain. `sign` gets the DER of the
/// signed attributes (SET, tag 0x31) and returns a DER ECDSA signature (in Signet: the HSM).
///
/// `openssl cms -verify -binary` (with `-cades` too) accepts the result.
///
/// Parsing the certificates costs more than building the SignedData (about 40 µs against 2 µs
/// here, two thirds of a SoftHSM signature), so each thread keeps the [`CmsSigner`] it prepared
/// last: calls in a row with the same signer (a batch of hashes) parse its certificates once.
#[allow(clippy::type_complexity)] // `sign` is the HSM call: a plain closure type reads best
pub fn cms_signed_data(
    content: CmsContent<'_>,
    signer: &SignerCert,
    signing_time: i64,
    sign: &dyn Fn(&[u8]) -> Result<Vec<u8>, String>,
) -> Result<Vec<u8>, String> {
    let prepared = PREPARED.with(|cell| {
        let mut last = cell.borrow_mut();
        match &*last {
            Some((made_of, prepared)) if made_of == signer => Ok(prepared.clone()),
            _ => {
                let prepared = Rc::new(CmsSigner::new(signer)?);
                *last = Some((signer.clone(), prepared.clone()));
                Ok::<_, String>(prepared)
            }
        }
    })?;
    // The cell is released: `sign` may sign again on this thread.
    prepared.sign(content, signing_time, sign)
}

// -------------------------------------------------------------------------------------
// JWS

const B64_URL: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;
const B64_STD: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// RFC 3339 in UTC with seconds (`2026-11-26T10:00:00Z`), the form JAdES gives `sigT`.
fn rfc3339(unix: i64) -> Result<String, String> {
    crate::clock::format_utc(unix).ok_or_else(|| format!("signing time {unix} cannot be written"))
}

/// JWS compact, ES256, protected header
/// `{"alg":"ES256","crit":["sigT"],"sigT":"<RFC 3339>","x5c":[signer cert, chain...]}` (JAdES
/// puts the claimed signing time in `sigT` and lists it in `crit`; Signet's verifier
/// understands it), embedded payload (base64url). `sign` gets the JWS signing input
/// (`header.payload`, ASCII) and returns a DER ECDSA signature, converted here to the 64-byte
/// r‖s JWS wants.
#[allow(clippy::type_complexity)] // `sign` is the HSM call: a plain closure type reads best
pub fn jws_es256(
    payload: &[u8],
    signer: &SignerCert,
    signing_time: i64,
    sign: &dyn Fn(&[u8]) -> Result<Vec<u8>, String>,
) -> Result<String, String> {
    signer_certificate(signer)?;
    for (i, der) in signer.chain.iter().enumerate() {
        Certificate::from_der(der)
            .map_err(|e| format!("chain certificate {i} does not parse: {e}"))?;
    }
    let x5c: Vec<String> = std::iter::once(&signer.certificate_der)
        .chain(&signer.chain)
        .map(|der| B64_STD.encode(der))
        .collect();
    let header = serde_json::json!({
        "alg": "ES256",
        "crit": ["sigT"],
        "sigT": rfc3339(signing_time)?,
        "x5c": x5c,
    });
    let header = serde_json::to_vec(&header).map_err(|e| format!("JWS header: {e}"))?;
    let mut jws = B64_URL.encode(header);
    jws.push('.');
    B64_URL.encode_string(payload, &mut jws);
    let der = sign(jws.as_bytes())?;
    let sig = p256::ecdsa::Signature::from_der(&der)
        .map_err(|e| format!("the signer returned no DER ECDSA P-256 signature: {e}"))?;
    jws.push('.');
    B64_URL.encode_string(sig.to_bytes(), &mut jws);
    Ok(jws)
}
