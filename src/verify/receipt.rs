//! The signed receipt of a verification (issue 4, item 7): the report, canonicalized by
//! RFC 8785 (JCS), as the attached content of a CMS SignedData (RFC 5652) signed in the HSM
//! by the validation-service key. Its signing-time is Signet's clock: evidence that the
//! instruction existed and verified then. `openssl cms -verify` accepts it.
//!
//! The receipt is Signet's own format, so [`verify_receipt`] is strict: DER only, one signer,
//! SHA-256 and ECDSA P-256, the four signed attributes present, every carried certificate on
//! the signer's path, and content that is canonical JSON. Anything else is not a receipt.

use ::cms::cert::CertificateChoices;
use ::cms::content_info::{CmsVersion, ContentInfo};
use ::cms::signed_data::{SignedData, SignerIdentifier, SignerInfo};
use const_oid::db::rfc5911::{
    ID_AA_SIGNING_CERTIFICATE_V_2, ID_CONTENT_TYPE, ID_DATA, ID_MESSAGE_DIGEST, ID_SIGNED_DATA,
    ID_SIGNING_TIME,
};
use const_oid::db::rfc5912::{ECDSA_WITH_SHA_256, ID_SHA_256};
use const_oid::ObjectIdentifier;
use der::asn1::{OctetString, SetOfVec};
use der::{Decode, Encode, Tag, Tagged};
use p256::ecdsa::signature::Verifier;
use sha2::{Digest, Sha256};
use spki::AlgorithmIdentifierOwned;
use x509_cert::attr::Attribute;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::{BasicConstraints, CertificatePolicies, KeyUsage, KeyUsages};
use x509_cert::time::Time;
use x509_cert::Certificate;

use crate::ca::service_keys::VALIDATION_SERVICE_POLICY;
use crate::sign::format::{cms_signed_data, CmsContent, SignerCert, SigningCertificateV2};

use super::path::valid_at;

/// Longest certificate path a receipt may carry (signer, issuing CA, root, with room).
const MAX_PATH: usize = 8;

/// What a valid receipt says.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceiptInfo {
    /// The verification report it carries.
    pub report: serde_json::Value,
    /// Its signing-time (Unix seconds): when Signet's clock said the verification ran.
    pub signing_time: i64,
    /// The subject of the certificate that signed it (RFC 4514 form).
    pub signer_subject: String,
}

/// Why a receipt is rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReceiptError {
    /// Not a DER CMS SignedData of the receipt's shape (one signer, attached content, the
    /// four signed attributes, only certificates on the signer's path).
    #[error("not a Signet receipt: {0}")]
    NotAReceipt(String),
    /// A digest or signature algorithm other than SHA-256 and ECDSA P-256 with SHA-256.
    #[error("unsupported algorithm in the receipt: {0}")]
    UnsupportedAlgorithm(String),
    /// The content does not match the signed message-digest: it was changed after signing.
    #[error("the receipt's content was altered after signing (message-digest mismatch)")]
    Altered,
    /// The certificate the signer info names is not in the receipt.
    #[error("the receipt does not carry its signer's certificate")]
    NoSignerCertificate,
    /// ESS signing-certificate-v2 names another certificate than the signer's.
    #[error("the signing-certificate-v2 attribute does not name the signer's certificate")]
    WrongSignerCertificate,
    /// The signature over the signed attributes does not verify with the signer's key.
    #[error("the receipt's signature does not verify with its signer's certificate")]
    BadSignature,
    /// The signer's certificate does not chain to one of the trust anchors.
    #[error("the receipt's signer is not trusted: {0}")]
    Untrusted(String),
    /// The signature is good but the content is not canonical JSON (RFC 8785).
    #[error("the receipt's content is not canonical JSON (RFC 8785): {0}")]
    NotCanonical(String),
}

// -------------------------------------------------------------------------------------
// RFC 8785

/// The RFC 8785 (JCS) canonical form of a JSON value: object members sorted by the UTF-16
/// code units of their names, no whitespace, numbers as ECMAScript prints them, strings with
/// the minimal escaping.
pub fn canonical_json(v: &serde_json::Value) -> Vec<u8> {
    // A `Value` holds only finite numbers and string keys, the only things JCS can refuse,
    // and writing to a Vec cannot fail.
    serde_jcs::to_vec(v).expect("JCS of a serde_json::Value cannot fail")
}

// -------------------------------------------------------------------------------------
// Building

/// Builds a receipt: a DER CMS ContentInfo holding a SignedData (version 1) whose attached
/// content (id-data) is the JCS form of `report`, signed by one signer identified by issuer
/// and serial, with the signed attributes content-type, message-digest, signing-time
/// (`signing_time`) and ESS signing-certificate-v2. `sign` receives the DER of the signed
/// attributes (a SET) and returns a DER ECDSA P-256 signature over their SHA-256; it is
/// checked against `signer_cert_der` before the receipt is returned. The receipt carries the
/// signer's certificate and `chain_der` (issuing CA first).
///
/// The SignedData is Signet's one CMS builder, [`cms_signed_data`]; the receipt adds the
/// check of the signature against the signer's key.
#[allow(clippy::type_complexity)] // `sign` is the HSM call: a plain closure type reads best
pub fn build_receipt(
    report: &serde_json::Value,
    signing_time: i64,
    signer_cert_der: &[u8],
    chain_der: &[Vec<u8>],
    sign: &dyn Fn(&[u8]) -> Result<Vec<u8>, String>,
) -> Result<Vec<u8>, String> {
    let content = canonical_json(report);
    let signer = Certificate::from_der(signer_cert_der)
        .map_err(|e| format!("the signer certificate does not parse: {e}"))?;
    let signer_key = subject_p256_key(&signer)
        .map_err(|e| format!("the signer certificate has no P-256 key: {e}"))?;
    let checked = |to_sign: &[u8]| -> Result<Vec<u8>, String> {
        let signature = sign(to_sign)?;
        let der_sig = p256::ecdsa::DerSignature::try_from(signature.as_slice())
            .map_err(|e| format!("the signer returned no DER ECDSA signature: {e}"))?;
        signer_key.verify(to_sign, &der_sig).map_err(|_| {
            "the signature does not verify with the signer certificate's key (wrong key?)"
        })?;
        Ok(signature)
    };
    cms_signed_data(
        CmsContent::Attached(&content),
        &SignerCert {
            certificate_der: signer_cert_der.to_vec(),
            chain: chain_der.to_vec(),
        },
        signing_time,
        &checked,
    )
}

// -------------------------------------------------------------------------------------
// Verifying

fn not_a_receipt(why: impl Into<String>) -> ReceiptError {
    ReceiptError::NotAReceipt(why.into())
}

/// Verifies a receipt: its DER shape, the message-digest of its content, the signature over
/// the signed attributes with the signer certificate's P-256 key, the ESS certificate
/// identifier, a path from the signer to one of `trust_anchors` (each certificate's
/// signature by its issuer, validity at the signing time, cA on every issuer), and that the
/// content is canonical JSON. The checks run in that order, so an edited content is reported
/// as [`ReceiptError::Altered`].
pub fn verify_receipt(
    der: &[u8],
    trust_anchors: &[Certificate],
) -> Result<ReceiptInfo, ReceiptError> {
    let ci = ContentInfo::from_der(der).map_err(|e| not_a_receipt(format!("not DER CMS: {e}")))?;
    // A receipt is DER, and decoding normalizes (it sorts SET OF): what decodes must encode
    // back to the same bytes, so that nothing outside the checked values can vary.
    if ci.to_der().ok().as_deref() != Some(der) {
        return Err(not_a_receipt("not in DER (distinguished) encoding"));
    }
    if ci.content_type != ID_SIGNED_DATA {
        return Err(not_a_receipt(format!(
            "content type {} is not signed-data",
            ci.content_type
        )));
    }
    let sd: SignedData = ci
        .content
        .decode_as()
        .map_err(|e| not_a_receipt(format!("SignedData: {e}")))?;
    if sd.version != CmsVersion::V1 {
        return Err(not_a_receipt("SignedData version is not 1"));
    }
    if sd.crls.is_some() {
        return Err(not_a_receipt("carries revocation information"));
    }
    let algs: Vec<&AlgorithmIdentifierOwned> = sd.digest_algorithms.iter().collect();
    if algs.len() != 1 || !is_sha256(algs[0]) {
        return Err(ReceiptError::UnsupportedAlgorithm(
            "digestAlgorithms must be SHA-256 alone".into(),
        ));
    }
    if sd.encap_content_info.econtent_type != ID_DATA {
        return Err(not_a_receipt("eContentType is not id-data"));
    }
    let content = match &sd.encap_content_info.econtent {
        Some(any) if any.tag() == Tag::OctetString => any.value(),
        Some(_) => return Err(not_a_receipt("eContent is not an OCTET STRING")),
        None => return Err(not_a_receipt("the content is detached")),
    };
    let signers: Vec<&SignerInfo> = sd.signer_infos.0.iter().collect();
    let [si] = signers.as_slice() else {
        return Err(not_a_receipt(format!(
            "{} signer infos instead of one",
            signers.len()
        )));
    };
    if si.version != CmsVersion::V1 {
        return Err(not_a_receipt("SignerInfo version is not 1"));
    }
    if si.unsigned_attrs.is_some() {
        return Err(not_a_receipt("carries unsigned attributes"));
    }
    if !is_sha256(&si.digest_alg) {
        return Err(ReceiptError::UnsupportedAlgorithm(format!(
            "digest {}",
            si.digest_alg.oid
        )));
    }
    if si.signature_algorithm.oid != ECDSA_WITH_SHA_256
        || si.signature_algorithm.parameters.is_some()
    {
        return Err(ReceiptError::UnsupportedAlgorithm(format!(
            "signature {}",
            si.signature_algorithm.oid
        )));
    }
    let attrs = si
        .signed_attrs
        .as_ref()
        .ok_or_else(|| not_a_receipt("no signed attributes"))?;

    // content-type and message-digest.
    let ct: ObjectIdentifier = single_attr(attrs, ID_CONTENT_TYPE, "content-type")?;
    if ct != ID_DATA {
        return Err(not_a_receipt("the content-type attribute is not id-data"));
    }
    let md: OctetString = single_attr(attrs, ID_MESSAGE_DIGEST, "message-digest")?;
    if md.as_bytes() != Sha256::digest(content).as_slice() {
        return Err(ReceiptError::Altered);
    }
    let time: Time = single_attr(attrs, ID_SIGNING_TIME, "signing-time")?;
    let signing_time = unix(time);
    let ess: SigningCertificateV2 = single_attr(
        attrs,
        ID_AA_SIGNING_CERTIFICATE_V_2,
        "signing-certificate-v2",
    )?;

    // The signer's certificate, then the other certificates carried.
    let mut carried = Vec::new();
    for c in sd.certificates.iter().flat_map(|s| s.0.iter()) {
        match c {
            CertificateChoices::Certificate(c) => carried.push(c),
            CertificateChoices::Other(_) => {
                return Err(not_a_receipt("carries a certificate of another format"))
            }
        }
    }
    let signer_pos = carried
        .iter()
        .position(|c| names_signer(&si.sid, c))
        .ok_or(ReceiptError::NoSignerCertificate)?;
    let signer = carried.remove(signer_pos);
    let signer_der = signer
        .to_der()
        .map_err(|e| not_a_receipt(format!("signer certificate: {e}")))?;

    // ESS: the first ESSCertIDv2 names the signing certificate (RFC 5035 3).
    let first = ess
        .certs
        .first()
        .ok_or(ReceiptError::WrongSignerCertificate)?;
    if let Some(alg) = &first.hash_algorithm {
        if !is_sha256(alg) {
            return Err(ReceiptError::UnsupportedAlgorithm(format!(
                "ESS certificate hash {}",
                alg.oid
            )));
        }
    }
    if first.cert_hash.as_bytes() != Sha256::digest(&signer_der).as_slice() {
        return Err(ReceiptError::WrongSignerCertificate);
    }
    if let Some(is) = &first.issuer_serial {
        let tbs = signer.tbs_certificate();
        let issuer_ok =
            matches!(is.issuer.as_slice(), [GeneralName::DirectoryName(n)] if n == tbs.issuer());
        if !issuer_ok || is.serial_number != *tbs.serial_number() {
            return Err(ReceiptError::WrongSignerCertificate);
        }
    }

    // The signature over the DER of the signed attributes (RFC 5652 5.4: as a SET OF).
    let signed_der = attrs
        .to_der()
        .map_err(|e| not_a_receipt(format!("signed attributes: {e}")))?;
    let key = subject_p256_key(signer).map_err(ReceiptError::UnsupportedAlgorithm)?;
    let sig = p256::ecdsa::DerSignature::try_from(si.signature.as_bytes())
        .map_err(|_| ReceiptError::BadSignature)?;
    key.verify(&signed_der, &sig)
        .map_err(|_| ReceiptError::BadSignature)?;

    // A receipt is signed by a validation service, not by any holder of a certificate.
    if !has_policy(signer, VALIDATION_SERVICE_POLICY) {
        return Err(ReceiptError::Untrusted(format!(
            "{} is not a validation service certificate (policy {VALIDATION_SERVICE_POLICY})",
            signer.tbs_certificate().subject()
        )));
    }
    // The path to an anchor, at the signing time.
    let used = build_path(signer, &carried, trust_anchors, signing_time)?;
    for (i, c) in carried.iter().enumerate() {
        let is_anchor = trust_anchors.iter().any(|a| a == *c);
        if !used.contains(&i) && !is_anchor {
            return Err(not_a_receipt(format!(
                "carries a certificate off the signer's path ({})",
                c.tbs_certificate().subject()
            )));
        }
    }

    // Canonical JSON: parse, canonicalize again, compare.
    let report: serde_json::Value = serde_json::from_slice(content)
        .map_err(|e| ReceiptError::NotCanonical(format!("not JSON: {e}")))?;
    if canonical_json(&report) != content {
        return Err(ReceiptError::NotCanonical(
            "the bytes differ from the RFC 8785 form of the same JSON".into(),
        ));
    }
    Ok(ReceiptInfo {
        report,
        signing_time,
        signer_subject: signer.tbs_certificate().subject().to_string(),
    })
}

fn is_sha256(alg: &AlgorithmIdentifierOwned) -> bool {
    // RFC 5754 3: absent parameters, but NULL must be accepted.
    alg.oid == ID_SHA_256
        && alg
            .parameters
            .as_ref()
            .is_none_or(|p| p.tag() == Tag::Null && p.value().is_empty())
}

/// The one value of the one attribute `oid` among `attrs` (RFC 5652 11: content-type,
/// message-digest and signing-time are single-valued and appear once).
fn single_attr<T>(
    attrs: &SetOfVec<Attribute>,
    oid: ObjectIdentifier,
    name: &str,
) -> Result<T, ReceiptError>
where
    T: for<'a> Decode<'a>,
{
    let mut found = attrs.iter().filter(|a| a.oid == oid);
    let (Some(a), None) = (found.next(), found.next()) else {
        return Err(not_a_receipt(format!("needs exactly one {name} attribute")));
    };
    let mut values = a.values.iter();
    let (Some(v), None) = (values.next(), values.next()) else {
        return Err(not_a_receipt(format!("{name} needs exactly one value")));
    };
    let der = v
        .to_der()
        .map_err(|e| not_a_receipt(format!("{name}: {e}")))?;
    T::from_der(&der).map_err(|e| not_a_receipt(format!("{name}: {e}")))
}

fn unix(t: Time) -> i64 {
    t.to_unix_duration().as_secs() as i64
}

fn names_signer(sid: &SignerIdentifier, c: &Certificate) -> bool {
    let tbs = c.tbs_certificate();
    match sid {
        SignerIdentifier::IssuerAndSerialNumber(isn) => {
            isn.issuer == *tbs.issuer() && isn.serial_number == *tbs.serial_number()
        }
        SignerIdentifier::SubjectKeyIdentifier(ski) => matches!(
            c.tbs_certificate().get_extension::<x509_cert::ext::pkix::SubjectKeyIdentifier>(),
            Ok(Some((_, s))) if s == *ski
        ),
    }
}

fn subject_p256_key(c: &Certificate) -> Result<p256::ecdsa::VerifyingKey, String> {
    let spki = c.tbs_certificate().subject_public_key_info();
    const ID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
    const SECP256R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.decode_as::<ObjectIdentifier>().ok());
    if spki.algorithm.oid != ID_EC_PUBLIC_KEY || curve != Some(SECP256R1) {
        return Err(format!(
            "key of {} is not ECDSA P-256",
            c.tbs_certificate().subject()
        ));
    }
    p256::ecdsa::VerifyingKey::from_sec1_bytes(spki.subject_public_key.raw_bytes())
        .map_err(|e| format!("key of {}: {e}", c.tbs_certificate().subject()))
}

/// `cert` is signed by `issuer`'s key, with ECDSA P-256 and SHA-256.
fn signed_by(cert: &Certificate, issuer: &Certificate) -> bool {
    if cert.tbs_certificate().issuer() != issuer.tbs_certificate().subject()
        || cert.signature_algorithm().oid != ECDSA_WITH_SHA_256
    {
        return false;
    }
    let (Ok(key), Ok(tbs)) = (subject_p256_key(issuer), cert.tbs_certificate().to_der()) else {
        return false;
    };
    let Some(sig) = cert.signature().as_bytes() else {
        return false;
    };
    p256::ecdsa::DerSignature::try_from(sig).is_ok_and(|sig| key.verify(&tbs, &sig).is_ok())
}

fn has_policy(c: &Certificate, oid: ObjectIdentifier) -> bool {
    matches!(
        c.tbs_certificate().get_extension::<CertificatePolicies>(),
        Ok(Some((_, cp))) if cp.0.iter().any(|p| p.policy_identifier == oid)
    )
}

fn is_ca(c: &Certificate) -> bool {
    matches!(c.tbs_certificate().get_extension::<BasicConstraints>(), Ok(Some((_, bc))) if bc.ca)
}

/// The signer's key may sign documents: keyUsage, when present, has digitalSignature or
/// nonRepudiation.
fn may_sign_content(c: &Certificate) -> bool {
    match c.tbs_certificate().get_extension::<KeyUsage>() {
        Ok(Some((_, ku))) => {
            ku.0.contains(KeyUsages::DigitalSignature) || ku.0.contains(KeyUsages::NonRepudiation)
        }
        Ok(None) => true,
        Err(_) => false,
    }
}

/// Walks from `signer` up through `carried` to one of `anchors`, checking each certificate's
/// signature by its issuer, validity at `at` and cA on every issuer. Returns the indexes in
/// `carried` of the intermediates used. Kept simple on purpose (no policy or name
/// constraints processing): the receipt's path is Signet's own.
fn build_path(
    signer: &Certificate,
    carried: &[&Certificate],
    anchors: &[Certificate],
    at: i64,
) -> Result<Vec<usize>, ReceiptError> {
    let untrusted = |why: String| ReceiptError::Untrusted(why);
    let name = |c: &Certificate| c.tbs_certificate().subject().to_string();
    if !may_sign_content(signer) {
        return Err(untrusted(format!(
            "the key usage of {} does not allow signing content",
            name(signer)
        )));
    }
    let mut used = Vec::new();
    let mut current = signer;
    for _ in 0..MAX_PATH {
        if !valid_at(current, at) {
            return Err(untrusted(format!(
                "{} is not valid at the signing time",
                name(current)
            )));
        }
        if let Some(anchor) = anchors.iter().find(|a| signed_by(current, a)) {
            if !valid_at(anchor, at) {
                return Err(untrusted(format!(
                    "the trust anchor {} is not valid at the signing time",
                    name(anchor)
                )));
            }
            return Ok(used);
        }
        let next = carried
            .iter()
            .enumerate()
            .filter(|(i, _)| !used.contains(i))
            .find(|(_, c)| signed_by(current, c));
        let Some((i, issuer)) = next else {
            return Err(untrusted(format!(
                "no trust anchor or carried certificate issued {}",
                name(current)
            )));
        };
        if !is_ca(issuer) {
            return Err(untrusted(format!("{} is not a CA", name(issuer))));
        }
        used.push(i);
        current = issuer;
    }
    Err(untrusted("the certificate path is too long".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sign::format::attribute;
    use ::cms::signed_data::SignerInfos;
    use der::Any;
    use serde_json::{json, Value};

    fn jcs(v: &Value) -> String {
        String::from_utf8(canonical_json(v)).unwrap()
    }

    /// RFC 8785 appendix B: IEEE 754 doubles and their canonical text (ECMAScript's
    /// Number.prototype.toString).
    #[test]
    fn numbers_are_formatted_as_rfc_8785_appendix_b() {
        let cases: &[(u64, &str)] = &[
            (0x0000000000000000, "0"),
            (0x8000000000000000, "0"),
            (0x0000000000000001, "5e-324"),
            (0x8000000000000001, "-5e-324"),
            (0x7fefffffffffffff, "1.7976931348623157e+308"),
            (0xffefffffffffffff, "-1.7976931348623157e+308"),
            (0x4340000000000000, "9007199254740992"),
            (0xc340000000000000, "-9007199254740992"),
            (0x4430000000000000, "295147905179352830000"),
            (0x44b52d02c7e14af5, "9.999999999999997e+22"),
            (0x44b52d02c7e14af6, "1e+23"),
            (0x44b52d02c7e14af7, "1.0000000000000001e+23"),
            (0x444b1ae4d6e2ef4e, "999999999999999700000"),
            (0x444b1ae4d6e2ef4f, "999999999999999900000"),
            (0x444b1ae4d6e2ef50, "1e+21"),
            (0x3eb0c6f7a0b5ed8c, "9.999999999999997e-7"),
            (0x3eb0c6f7a0b5ed8d, "0.000001"),
            (0x41b3de4355555553, "333333333.3333332"),
            (0x41b3de4355555554, "333333333.33333325"),
            (0x41b3de4355555555, "333333333.3333333"),
            (0x41b3de4355555556, "333333333.3333334"),
            (0x41b3de4355555557, "333333333.33333343"),
            (0xbecbf647612f3696, "-0.0000033333333333333333"),
            (0x43143ff3c1cb0959, "1424953923781206.2"),
        ];
        for (bits, want) in cases {
            let v = Value::from(f64::from_bits(*bits));
            assert_eq!(jcs(&v), *want, "0x{bits:016x}");
        }
        // Integers are numbers too: no ".0", no exponent below 1e21.
        assert_eq!(
            jcs(&json!([1, -1, 100, 1.0, 1e20, 1e21, 0.1])),
            "[1,-1,100,1,100000000000000000000,1e+21,0.1]"
        );
        // Parsing keeps the double exactly (serde_json float_roundtrip).
        let parsed: Value = serde_json::from_str("333333333.33333329").unwrap();
        assert_eq!(jcs(&parsed), "333333333.3333333");
    }

    /// RFC 8785 3.2.3: member names sort by their UTF-16 code units, not by code points or
    /// UTF-8 bytes (U+1F600, D83D DE00 in UTF-16, comes before U+FB33).
    #[test]
    fn keys_sort_by_utf16_code_units() {
        let v: Value = serde_json::from_str(
            r#"{
                "\u20ac": "Euro Sign",
                "\r": "Carriage Return",
                "\ufb33": "Hebrew Letter Dalet With Dagesh",
                "1": "One",
                "\ud83d\ude00": "Emoji: Grinning Face",
                "\u0080": "Control",
                "\u00f6": "Latin Small Letter O With Diaeresis"
            }"#,
        )
        .unwrap();
        let out = jcs(&v);
        let order: Vec<&str> = v_order(&out);
        assert_eq!(
            order,
            [
                "Carriage Return",
                "One",
                "Control",
                "Latin Small Letter O With Diaeresis",
                "Euro Sign",
                "Emoji: Grinning Face",
                "Hebrew Letter Dalet With Dagesh",
            ]
        );
        // Nested objects are sorted too; arrays keep their order.
        assert_eq!(
            jcs(&json!({"b": [3, 1, {"z": 1, "a": 2}], "a": {"d": null, "c": true}})),
            r#"{"a":{"c":true,"d":null},"b":[3,1,{"a":2,"z":1}]}"#
        );
    }

    /// The values of a flat JCS object, in order.
    fn v_order(out: &str) -> Vec<&str> {
        out.split("\":\"")
            .skip(1)
            .map(|s| s.split('"').next().unwrap())
            .collect()
    }

    /// RFC 8785 3.2.2's example: literals, numbers and string escaping.
    #[test]
    fn rfc_8785_example_is_reproduced() {
        let input = r#"{
            "numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],
            "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
            "literals": [null, true, false]
        }"#;
        let v: Value = serde_json::from_str(input).unwrap();
        assert_eq!(
            jcs(&v),
            r#"{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],"string":"€$\u000f\nA'B\"\\\\\"/"}"#
        );
        // Non-ASCII stays UTF-8, unescaped.
        assert_eq!(jcs(&json!({"signer": "张三"})), "{\"signer\":\"张三\"}");
    }

    // --- receipts over software keys: the checks the HSM-backed integration tests cannot
    // reach (times far off, a non-CA issuer, content that is JSON but not canonical).

    use crate::ca::x509::{extension, DecidedProfile, PreparedCertificate};
    use der::asn1::OctetString as Os;
    use p256::ecdsa::signature::Signer;
    use p256::ecdsa::SigningKey;
    use spki::{EncodePublicKey, SubjectPublicKeyInfoOwned};
    use std::str::FromStr;
    use x509_cert::ext::pkix::certpolicy::PolicyInformation;
    use x509_cert::ext::pkix::SubjectKeyIdentifier;
    use x509_cert::name::Name;

    const YEAR: i64 = 365 * 86_400;
    const T0: i64 = 1_800_000_000; // 2027-01-15

    fn key(n: u8) -> SigningKey {
        SigningKey::from_slice(&[n; 32]).unwrap()
    }

    fn soft_sign(k: &SigningKey, bytes: &[u8]) -> Vec<u8> {
        let sig: p256::ecdsa::Signature = k.sign(bytes);
        sig.to_der().as_bytes().to_vec()
    }

    /// A certificate for `subject_key`, issued by `issuer_key` (self-signed when equal).
    fn cert(
        serial: u8,
        subject: &str,
        issuer: &str,
        subject_key: &SigningKey,
        issuer_key: &SigningKey,
        validity: (i64, i64),
        ca: bool,
    ) -> Vec<u8> {
        let spki = SubjectPublicKeyInfoOwned::from_der(
            subject_key
                .verifying_key()
                .to_public_key_der()
                .unwrap()
                .as_bytes(),
        )
        .unwrap();
        let mut extensions = vec![extension(
            &SubjectKeyIdentifier(Os::new(crate::ca::x509::key_identifier(&spki)).unwrap()),
            false,
        )
        .unwrap()];
        if ca {
            extensions.push(
                extension(
                    &BasicConstraints {
                        ca: true,
                        path_len_constraint: None,
                    },
                    true,
                )
                .unwrap(),
            );
        } else {
            extensions.push(
                extension(
                    &x509_cert::ext::pkix::CertificatePolicies(vec![PolicyInformation {
                        policy_identifier: VALIDATION_SERVICE_POLICY,
                        policy_qualifiers: None,
                    }]),
                    false,
                )
                .unwrap(),
            );
        }
        let prepared = PreparedCertificate::new(
            &[serial],
            validity.0,
            validity.1,
            spki,
            DecidedProfile {
                subject: Name::from_str(subject).unwrap(),
                issuer: Name::from_str(issuer).unwrap(),
                extensions,
            },
            *issuer_key.verifying_key(),
        )
        .unwrap();
        let sig = soft_sign(issuer_key, &prepared.tbs_der);
        prepared.assemble(&sig).unwrap()
    }

    struct Pki {
        root: Vec<u8>,
        signer: Vec<u8>,
        signer_key: SigningKey,
    }

    fn pki(signer_validity: (i64, i64), issuer_is_ca: bool) -> Pki {
        let (rk, sk) = (key(1), key(2));
        let root = cert(
            1,
            "CN=Test Root",
            "CN=Test Root",
            &rk,
            &rk,
            (T0 - YEAR, T0 + 50 * YEAR),
            issuer_is_ca,
        );
        let signer = cert(
            2,
            "CN=Test Validation",
            "CN=Test Root",
            &sk,
            &rk,
            signer_validity,
            false,
        );
        Pki {
            root,
            signer,
            signer_key: sk,
        }
    }

    fn anchors(p: &Pki) -> Vec<Certificate> {
        vec![Certificate::from_der(&p.root).unwrap()]
    }

    fn build(p: &Pki, report: &Value, at: i64) -> Vec<u8> {
        build_receipt(
            report,
            at,
            &p.signer,
            std::slice::from_ref(&p.root),
            &|b: &[u8]| Ok(soft_sign(&p.signer_key, b)),
        )
        .unwrap()
    }

    #[test]
    fn a_receipt_round_trips_and_signing_time_switches_to_generalized_time_in_2050() {
        let p = pki((T0 - YEAR, T0 + 40 * YEAR), true);
        let report = json!({"indication": "TOTAL_PASSED", "n": [1, 2.5]});
        for at in [
            T0,
            2_524_607_999, /* 2049-12-31T23:59:59Z */
            2_524_608_000,
        ] {
            let der = build(&p, &report, at);
            let info = verify_receipt(&der, &anchors(&p)).unwrap();
            assert_eq!(
                (info.report.clone(), info.signing_time),
                (report.clone(), at)
            );
            assert_eq!(info.signer_subject, "CN=Test Validation");
            let sd: SignedData = ContentInfo::from_der(&der)
                .unwrap()
                .content
                .decode_as()
                .unwrap();
            let si = sd.signer_infos.0.iter().next().unwrap();
            let time = si
                .signed_attrs
                .as_ref()
                .unwrap()
                .iter()
                .find(|a| a.oid == ID_SIGNING_TIME);
            let tag = time.unwrap().values.iter().next().unwrap().tag();
            let want = if at < 2_524_608_000 {
                Tag::UtcTime
            } else {
                Tag::GeneralizedTime
            };
            assert_eq!(tag, want, "at {at}");
        }
    }

    #[test]
    fn signer_outside_its_validity_at_signing_time_is_untrusted() {
        let p = pki((T0, T0 + YEAR), true);
        for at in [T0 - 1, T0 + YEAR + 1] {
            let der = build(&p, &json!({}), at);
            match verify_receipt(&der, &anchors(&p)) {
                Err(ReceiptError::Untrusted(why)) => assert!(why.contains("not valid"), "{why}"),
                other => panic!("{other:?}"),
            }
        }
        verify_receipt(&build(&p, &json!({}), T0), &anchors(&p)).unwrap();
        // No anchors: nothing is trusted.
        assert!(matches!(
            verify_receipt(&build(&p, &json!({}), T0), &[]),
            Err(ReceiptError::Untrusted(_))
        ));
    }

    #[test]
    fn an_issuer_that_is_not_a_ca_is_untrusted() {
        // Anchor -> intermediate without basicConstraints -> signer.
        let (ak, ik, sk) = (key(4), key(5), key(6));
        let v = (T0 - YEAR, T0 + YEAR);
        let anchor = cert(4, "CN=Anchor", "CN=Anchor", &ak, &ak, v, true);
        let mut not_ca = cert(5, "CN=Not A CA", "CN=Anchor", &ik, &ak, v, false);
        let signer = cert(6, "CN=Test Validation", "CN=Not A CA", &sk, &ik, v, false);
        let anchors = [Certificate::from_der(&anchor).unwrap()];
        let sign = |b: &[u8]| Ok(soft_sign(&sk, b));
        let der = build_receipt(
            &json!({}),
            T0,
            &signer,
            std::slice::from_ref(&not_ca),
            &sign,
        )
        .unwrap();
        match verify_receipt(&der, &anchors) {
            Err(ReceiptError::Untrusted(why)) => assert!(why.contains("is not a CA"), "{why}"),
            other => panic!("{other:?}"),
        }
        // The same path with a CA in the middle verifies.
        not_ca = cert(5, "CN=Not A CA", "CN=Anchor", &ik, &ak, v, true);
        let der = build_receipt(&json!({}), T0, &signer, &[not_ca], &sign).unwrap();
        verify_receipt(&der, &anchors).unwrap();
    }

    #[test]
    fn content_that_is_json_but_not_canonical_is_refused() {
        let p = pki((T0 - YEAR, T0 + YEAR), true);
        let good = build(&p, &json!({"a": 1, "b": 2}), T0);
        // Same length, other bytes: the members out of order, digest and signature redone.
        let bad_content = br#"{"b":2,"a":1}"#;
        let ci = ContentInfo::from_der(&good).unwrap();
        let mut sd: SignedData = ci.content.decode_as().unwrap();
        sd.encap_content_info.econtent =
            Some(Any::new(Tag::OctetString, &bad_content[..]).unwrap());
        let mut si = sd.signer_infos.0.iter().next().unwrap().clone();
        let attrs: Vec<Attribute> = si
            .signed_attrs
            .as_ref()
            .unwrap()
            .iter()
            .map(|a| {
                if a.oid == ID_MESSAGE_DIGEST {
                    attribute(
                        ID_MESSAGE_DIGEST,
                        &Os::new(Sha256::digest(bad_content).to_vec()).unwrap(),
                    )
                    .unwrap()
                } else {
                    a.clone()
                }
            })
            .collect();
        let attrs = SetOfVec::try_from(attrs).unwrap();
        si.signature = Os::new(soft_sign(&p.signer_key, &attrs.to_der().unwrap())).unwrap();
        si.signed_attrs = Some(attrs);
        sd.signer_infos = SignerInfos::try_from(vec![si]).unwrap();
        let der = ContentInfo {
            content_type: ID_SIGNED_DATA,
            content: Any::from_der(&sd.to_der().unwrap()).unwrap(),
        }
        .to_der()
        .unwrap();
        assert!(matches!(
            verify_receipt(&der, &anchors(&p)),
            Err(ReceiptError::NotCanonical(_))
        ));
    }

    #[test]
    fn garbage_is_not_a_receipt() {
        for bytes in [
            &b""[..],
            b"\x30",
            b"\x30\x03\x06\x01\x00",
            b"{\"indication\":\"TOTAL_PASSED\"}",
            &[0x30, 0x84, 0xff, 0xff, 0xff, 0xff],
        ] {
            assert!(matches!(
                verify_receipt(bytes, &[]),
                Err(ReceiptError::NotAReceipt(_))
            ));
        }
        let nested: Vec<u8> = std::iter::repeat_n([0x30u8, 0x80], 10_000)
            .flatten()
            .collect();
        assert!(verify_receipt(&nested, &[]).is_err());
    }
}
