//! CMS SignedData (RFC 5652, PKCS#7): what each SignerInfo claims, and whether its signature
//! verifies.
//!
//! The `cms` crate parses the structure; the raw bytes that were signed (the signed attributes
//! as sent, re-tagged from `[0] IMPLICIT` to `SET OF`) and the certificates in the order sent
//! come from a small DER reader (`input`), which also refuses input nested deeper than
//! [`MAX_DER_DEPTH`] before any decoder sees it. BER with indefinite lengths (Java toolkits,
//! `openssl cms -stream`) is rewritten with definite lengths first.
//!
//! Order of the per-signer outcome (`Crypto`):
//! 1. SM2 / SM3 (signature OID, digest OID or the certificate's curve) → `AlgorithmNotSupported`,
//!    even when no certificate is found: the clearest answer for a GM/T toolkit's signature.
//! 2. no certificate (carried or resolved) → `NotChecked`.
//! 3. digest, key or signature algorithm Signet does not verify (RSA, SHA-3 ...) →
//!    `AlgorithmNotSupported`; a signature algorithm that does not fit the key → `SigCryptoFailure`.
//! 4. the signature over the signed attributes (or over the content when there are none) does
//!    not verify → `SigCryptoFailure`.
//! 5. signed attributes that are malformed (missing or repeated content-type / message-digest,
//!    content-type ≠ eContentType, unreadable signing-time) → `SigCryptoFailure`; ESS
//!    signing-certificate(-v2) naming another certificate → `SigCryptoFailure`.
//! 6. message-digest ≠ digest of the content, or attached content ≠ the instruction →
//!    `HashFailure`.

use std::sync::Arc;

use cms::cert::{CertificateChoices, IssuerAndSerialNumber};
use cms::content_info::CmsVersion;
use cms::revocation::RevocationInfoChoices;
use cms::signed_data::{
    DigestAlgorithmIdentifiers, EncapsulatedContentInfo, SignerIdentifier, SignerInfo,
};
use const_oid::ObjectIdentifier;
use der::asn1::{GeneralizedTime, OctetString, UtcTime};
use der::{Decode, Encode, Tag, Tagged};
use sha2::Digest as _;
use spki::AlgorithmIdentifierOwned;
use x509_cert::ext::pkix::SubjectKeyIdentifier;
use x509_cert::Certificate;

pub(crate) use crate::ecdsa::SigEncoding;
use crate::ecdsa::{Curve, EcdsaError, EcdsaKey, Hash};

use super::certs::KnownCert;
use super::evidence::{
    AttributeCheck, CertificateResolver, Crypto, DigestAlg, FormatError, SigAlg, SignatureFormat,
    SignerEvidence, SignerRef,
};
use super::input::{
    check_der_structure, ferr, normalize_ber, read_single, MAX_DER_DEPTH, MAX_SIGNATURE_BYTES,
};

const OID_SIGNED_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.2");
const OID_CONTENT_TYPE: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.3");
const OID_MESSAGE_DIGEST: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.4");
const OID_SIGNING_TIME: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.5");
const OID_ESS_SIGNING_CERT: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.16.2.12");
const OID_ESS_SIGNING_CERT_V2: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.16.2.47");

const OID_SHA1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.14.3.2.26");
const OID_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.1");
const OID_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.2");
const OID_SHA512: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.3");
const OID_SM3: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.156.10197.1.401");

const OID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const OID_ECDSA_SHA1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.1");
const OID_ECDSA_SHA224: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.1");
const OID_ECDSA_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
const OID_ECDSA_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.3");
const OID_ECDSA_SHA512: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.4");
const OID_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const OID_RSA_SHA1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.5");
const OID_RSA_PSS: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.10");
const OID_RSA_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.11");
const OID_RSA_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.12");
const OID_RSA_SHA512: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.13");
const OID_RSA_SHA224: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.14");
/// SM2 signature with SM3 (GM/T 0006).
const OID_SM2_SM3: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.156.10197.1.501");
/// sm2sign (GM/T 0006), which GM/T toolkits put in signatureAlgorithm.
const OID_SM2_SIGN: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.156.10197.1.301.1");
/// The SM2 curve (as EC parameters) / SM2 public key.
const OID_SM2_CURVE: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.156.10197.1.301");

const OID_P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const OID_P384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");

pub(crate) const SM2_NOT_SUPPORTED: &str =
    "SM2 (GM/T 0003) with SM3 is recognized but not verified by Signet";

/// Reads a CMS ContentInfo holding a SignedData and examines each SignerInfo.
///
/// `instruction` is the signed content for a detached signature; for an attached one it is
/// compared with the encapsulated content when not empty. Certificates the SignedData does not
/// carry are asked of `resolver`. A structure that cannot be read is a `FormatError`; every
/// problem of one signer is in its `SignerEvidence`.
pub fn examine_cms(
    der: &[u8],
    instruction: &[u8],
    resolver: &dyn CertificateResolver,
) -> Result<Vec<SignerEvidence>, FormatError> {
    if der.len() > MAX_SIGNATURE_BYTES {
        return Err(ferr(format!(
            "CMS is {} bytes, more than the {MAX_SIGNATURE_BYTES} accepted",
            der.len()
        )));
    }
    // BER (indefinite lengths, streamed eContent) → definite lengths; refuses absurd nesting
    // with a bounded recursion, then the iterative walker checks a rewritten result again
    // (input that was DER already comes back as is, walked once).
    let normalized = normalize_ber(der, MAX_DER_DEPTH)?;
    if let std::borrow::Cow::Owned(rewritten) = &normalized {
        check_der_structure(rewritten, MAX_DER_DEPTH)?;
    }
    let der: &[u8] = &normalized;

    // The structure is read field by field: each part is decoded by the cms / x509-cert
    // types, but the carried certificates go through the resolver, which decodes each distinct
    // certificate once (a gateway sends the same few again and again), and each SignerInfo is
    // decoded once, from the bytes the signature over its attributes is checked against.
    let ci = read_single(der)?;
    let (content_type, explicit) = match ci.children()?.as_slice() {
        [oid, explicit] if ci.tag == 0x30 && oid.tag == 0x06 && explicit.tag == 0xa0 => {
            let oid = ObjectIdentifier::from_der(oid.raw)
                .map_err(|e| ferr(format!("CMS ContentInfo: {e}")))?;
            (oid, *explicit)
        }
        _ => {
            return Err(ferr(
                "CMS ContentInfo: not a SEQUENCE of contentType and [0] content",
            ))
        }
    };
    if content_type != OID_SIGNED_DATA {
        return Err(ferr(format!(
            "CMS ContentInfo holds {content_type}, not id-signedData"
        )));
    }
    let sd = read_single(explicit.value)?;
    let sd_parts = sd.children()?;
    let sd_err = |e: der::Error| ferr(format!("CMS SignedData: {e}"));
    // version, digestAlgorithms, encapContentInfo, [0] certificates?, [1] crls?, signerInfos
    let (encap, raw_certs, raw_signer_infos) =
        match sd_parts.as_slice() {
            [version, digests, encap, middle @ .., infos]
                if sd.tag == 0x30 && infos.tag == 0x31 && optional_fields_in_order(middle) =>
            {
                CmsVersion::from_der(version.raw).map_err(sd_err)?;
                DigestAlgorithmIdentifiers::from_der(digests.raw).map_err(sd_err)?;
                let encap = EncapsulatedContentInfo::from_der(encap.raw).map_err(sd_err)?;
                if let Some(crls) = middle.iter().find(|t| t.tag == 0xa1) {
                    // [1] IMPLICIT RevocationInfoChoices: checked, not used (status comes from
                    // Signet's records or the anchor's configured CRL).
                    let mut set = crls.raw.to_vec();
                    set[0] = 0x31;
                    RevocationInfoChoices::from_der(&set).map_err(sd_err)?;
                }
                (encap, middle.iter().find(|t| t.tag == 0xa0), *infos)
            }
            _ => return Err(ferr(
                "CMS SignedData: not a SEQUENCE of version, digestAlgorithms, encapContentInfo, \
                 [0] certificates, [1] crls and signerInfos, in that order",
            )),
        };

    let mut certificates = Vec::new();
    if let Some(set) = raw_certs {
        for choice in set.children()? {
            // Only plain X.509 certificates are used; other formats are checked, then skipped.
            if choice.tag == 0x30 {
                let cert = resolver
                    .certificate(choice.raw)
                    .map_err(|e| ferr(format!("CMS certificate: {e}")))?;
                certificates.push(cert);
            } else {
                CertificateChoices::from_der(choice.raw)
                    .map_err(|e| ferr(format!("CMS SignedData: {e}")))?;
            }
        }
    }

    let econtent_type = encap.econtent_type;
    // An empty eContent is read as detached (some toolkits write one instead of leaving it
    // out): the signature must then cover the instruction, so nothing is given away.
    let econtent = encap
        .econtent
        .as_ref()
        .filter(|any| !any.value().is_empty());
    let (format, content, attached_matches) = match econtent {
        None => (
            SignatureFormat::CmsDetached,
            std::borrow::Cow::Borrowed(instruction),
            None,
        ),
        Some(any) => {
            let content = std::borrow::Cow::Owned(econtent_bytes(any));
            let matches = if instruction.is_empty() {
                None
            } else {
                Some(instruction == &*content)
            };
            (SignatureFormat::CmsAttached, content, matches)
        }
    };

    let raw_infos = raw_signer_infos.children()?;
    if raw_infos.is_empty() {
        return Err(ferr(
            "CMS SignedData has no SignerInfo: it is not a signature",
        ));
    }
    if raw_infos.len() > super::input::MAX_SIGNERS {
        return Err(super::input::too_many_signers(raw_infos.len()));
    }
    let mut distinct = std::collections::HashSet::with_capacity(raw_infos.len());
    if !raw_infos.iter().all(|t| distinct.insert(t.raw)) {
        return Err(ferr("CMS SignedData: repeated SignerInfo"));
    }
    // Kept (once, for every signer) only when no instruction came beside it: it is then the
    // instruction the replay guard reads an id from.
    let attached_content = (format == SignatureFormat::CmsAttached && instruction.is_empty())
        .then(|| Arc::<[u8]>::from(&*content));
    let ctx = Ctx {
        format,
        content: &content,
        econtent_type,
        attached_matches,
        certificates: &certificates,
        attached_content,
    };
    raw_infos
        .iter()
        .map(|raw| {
            let si =
                SignerInfo::from_der(raw.raw).map_err(|e| ferr(format!("CMS SignerInfo: {e}")))?;
            let parts = raw.children()?;
            let raw_attrs = parts.get(3).filter(|t| t.tag == 0xa0).map(|t| t.raw);
            if si.signed_attrs.is_some() != raw_attrs.is_some() {
                return Err(ferr("CMS SignerInfo: signed attributes out of place"));
            }
            Ok(examine_signer(&si, raw_attrs, &ctx, resolver))
        })
        .collect()
}

/// The optional fields between encapContentInfo and signerInfos: `[0]` then `[1]`, each at
/// most once.
fn optional_fields_in_order(fields: &[super::input::Tlv<'_>]) -> bool {
    matches!(
        fields.iter().map(|t| t.tag).collect::<Vec<_>>().as_slice(),
        [] | [0xa0] | [0xa1] | [0xa0, 0xa1]
    )
}

struct Ctx<'a> {
    format: SignatureFormat,
    /// The signed content: eContent, or the instruction when detached.
    content: &'a [u8],
    econtent_type: ObjectIdentifier,
    /// Attached content compared with a non-empty instruction.
    attached_matches: Option<bool>,
    /// Carried certificates, in the order sent.
    certificates: &'a [Arc<KnownCert>],
    /// The attached content, when no instruction was presented (see `SignerEvidence`).
    attached_content: Option<Arc<[u8]>>,
}

/// The octets of eContent: an OCTET STRING's value (a streamed, constructed one was joined by
/// `normalize_ber`), or for old PKCS#7 content of another type, the value octets of what is
/// there (RFC 2315 §9.3).
fn econtent_bytes(any: &der::Any) -> Vec<u8> {
    any.value().to_vec()
}

fn examine_signer(
    si: &SignerInfo,
    raw_attrs: Option<&[u8]>,
    ctx: &Ctx<'_>,
    resolver: &dyn CertificateResolver,
) -> SignerEvidence {
    let signer_ref = signer_ref_of(&si.sid);
    let carried = ctx
        .certificates
        .iter()
        .position(|c| names_certificate(&si.sid, &signer_ref, c));
    let certificate = match carried {
        Some(i) => Some(ctx.certificates[i].clone()),
        None => resolver.resolve(&signer_ref),
    };
    let other_certificates: Vec<Arc<KnownCert>> = ctx
        .certificates
        .iter()
        .enumerate()
        .filter(|(i, _)| Some(*i) != carried)
        .map(|(_, c)| c.clone())
        .collect();
    let cert_der: Option<&[u8]> = certificate.as_ref().map(|c| c.der.as_slice());

    let digest = digest_alg_of(&si.digest_alg.oid);
    let mut algorithm = sig_alg_of(&si.signature_algorithm.oid);
    let key = certificate.as_ref().map(|c| c.public_key());
    if matches!(key, Some(PublicKey::Sm2)) {
        algorithm = SigAlg::Sm2;
    }

    let mut checks = Vec::new();
    let mut claimed_signing_time = None;
    let attrs = si.signed_attrs.as_ref().map(|attrs| {
        check_signed_attributes(
            attrs,
            ctx,
            &digest,
            cert_der,
            &mut checks,
            &mut claimed_signing_time,
        )
    });
    if let Some(m) = ctx.attached_matches {
        checks.push(AttributeCheck {
            name: "content-matches-instruction".into(),
            passed: m,
            detail: if m {
                "the attached content is the instruction".into()
            } else {
                "the attached content differs from the instruction".into()
            },
        });
    }

    let is_sm2 = algorithm == SigAlg::Sm2 || digest == DigestAlg::Sm3;
    let crypto = if is_sm2 {
        Crypto::AlgorithmNotSupported(SM2_NOT_SUPPORTED.into())
    } else if let Some(key) = key {
        let signed: Vec<u8> = match raw_attrs {
            Some(raw) => {
                // [0] IMPLICIT → SET OF: the DER that was signed (RFC 5652 §5.4).
                let mut v = raw.to_vec();
                v[0] = 0x31;
                v
            }
            None => ctx.content.to_vec(),
        };
        match verify_signature(
            key,
            &algorithm,
            &digest,
            &signed,
            si.signature.as_bytes(),
            SigEncoding::Der,
        ) {
            Err(VerifyError::Unsupported(m)) => Crypto::AlgorithmNotSupported(m),
            Err(VerifyError::Failed(m)) => Crypto::SigCryptoFailure(m),
            Ok(()) => match &attrs {
                Some(f) if f.problem.is_some() => {
                    Crypto::SigCryptoFailure(f.problem.clone().unwrap_or_default())
                }
                Some(f) if f.ess_mismatch.is_some() => {
                    Crypto::SigCryptoFailure(f.ess_mismatch.clone().unwrap_or_default())
                }
                Some(f) if f.digest_matches == Some(false) => Crypto::HashFailure,
                _ if ctx.attached_matches == Some(false) => Crypto::HashFailure,
                _ => Crypto::Valid,
            },
        }
    } else {
        Crypto::NotChecked
    };

    SignerEvidence {
        format: ctx.format,
        certificate,
        signer_ref,
        other_certificates,
        digest,
        algorithm,
        claimed_signing_time,
        signed_attributes: si.signed_attrs.is_some(),
        checks,
        crypto,
        content_sha256: sha2::Sha256::digest(ctx.content).into(),
        attached_content: ctx.attached_content.clone(),
    }
}

/// What the signed attributes say, beyond the checks they add to the report.
struct AttrFindings {
    /// A malformed or inconsistent attribute set (SIG_CRYPTO_FAILURE once the signature holds).
    problem: Option<String>,
    /// ESS signing-certificate(-v2) names another certificate.
    ess_mismatch: Option<String>,
    /// message-digest = digest of the content (None: could not compare).
    digest_matches: Option<bool>,
}

fn check_signed_attributes(
    attrs: &x509_cert::attr::Attributes,
    ctx: &Ctx<'_>,
    digest: &DigestAlg,
    cert_der: Option<&[u8]>,
    checks: &mut Vec<AttributeCheck>,
    claimed_signing_time: &mut Option<i64>,
) -> AttrFindings {
    let mut f = AttrFindings {
        problem: None,
        ess_mismatch: None,
        digest_matches: None,
    };
    let problem = |f: &mut AttrFindings, m: String| {
        if f.problem.is_none() {
            f.problem = Some(m);
        }
    };
    let single = |oid: ObjectIdentifier| -> Result<Option<&der::Any>, String> {
        let mut found = attrs.iter().filter(|a| a.oid == oid);
        let first = match found.next() {
            None => return Ok(None),
            Some(a) => a,
        };
        if found.next().is_some() {
            return Err(format!("attribute {oid} appears more than once"));
        }
        let mut values = first.values.iter();
        match (values.next(), values.next()) {
            (Some(v), None) => Ok(Some(v)),
            _ => Err(format!("attribute {oid} must have exactly one value")),
        }
    };
    let mut check = |name: &str, passed: bool, detail: String| {
        checks.push(AttributeCheck {
            name: name.into(),
            passed,
            detail,
        })
    };

    // content-type
    match single(OID_CONTENT_TYPE) {
        Ok(Some(v)) => match v.decode_as::<ObjectIdentifier>() {
            Ok(oid) if v.tag() == Tag::ObjectIdentifier => {
                let ok = oid == ctx.econtent_type;
                check(
                    "content-type",
                    ok,
                    if ok {
                        format!("{oid}, as eContentType")
                    } else {
                        format!("{oid}, but eContentType is {}", ctx.econtent_type)
                    },
                );
                if !ok {
                    problem(
                        &mut f,
                        "content-type attribute differs from eContentType".into(),
                    );
                }
            }
            _ => {
                check("content-type", false, "not an OBJECT IDENTIFIER".into());
                problem(&mut f, "content-type attribute is malformed".into());
            }
        },
        Ok(None) => {
            check(
                "content-type",
                false,
                "missing from the signed attributes".into(),
            );
            problem(&mut f, "signed attributes lack content-type".into());
        }
        Err(m) => {
            check("content-type", false, m.clone());
            problem(&mut f, m);
        }
    }

    // message-digest
    match single(OID_MESSAGE_DIGEST) {
        Ok(Some(v)) => match v.decode_as::<OctetString>() {
            Ok(md) if v.tag() == Tag::OctetString => match digest_bytes(digest, ctx.content) {
                Some(d) => {
                    let ok = d.as_slice() == md.as_bytes();
                    f.digest_matches = Some(ok);
                    check(
                        "message-digest",
                        ok,
                        if ok {
                            format!("{} of the content", hex::encode(&d))
                        } else {
                            format!(
                                "attribute says {}, the content's digest is {}",
                                hex::encode(md.as_bytes()),
                                hex::encode(&d)
                            )
                        },
                    );
                }
                None => check(
                    "message-digest",
                    false,
                    format!("digest algorithm {digest:?} not supported: not compared"),
                ),
            },
            _ => {
                check("message-digest", false, "not an OCTET STRING".into());
                problem(&mut f, "message-digest attribute is malformed".into());
            }
        },
        Ok(None) => {
            check(
                "message-digest",
                false,
                "missing from the signed attributes".into(),
            );
            problem(&mut f, "signed attributes lack message-digest".into());
        }
        Err(m) => {
            check("message-digest", false, m.clone());
            problem(&mut f, m);
        }
    }

    // signing-time
    match single(OID_SIGNING_TIME) {
        Ok(Some(v)) => {
            let t = match v.tag() {
                Tag::UtcTime => v.decode_as::<UtcTime>().ok().map(|t| t.to_date_time()),
                Tag::GeneralizedTime => v
                    .decode_as::<GeneralizedTime>()
                    .ok()
                    .map(|t| t.to_date_time()),
                _ => None,
            };
            match t {
                Some(dt) => {
                    *claimed_signing_time = i64::try_from(dt.unix_duration().as_secs()).ok();
                    check("signing-time", true, format!("claimed {dt}"));
                }
                None => {
                    check(
                        "signing-time",
                        false,
                        "neither UTCTime nor GeneralizedTime".into(),
                    );
                    problem(&mut f, "signing-time attribute is malformed".into());
                }
            }
        }
        Ok(None) => {}
        Err(m) => {
            check("signing-time", false, m.clone());
            problem(&mut f, m);
        }
    }

    // ESS signing-certificate-v2 and v1
    for (oid, name, v2) in [
        (OID_ESS_SIGNING_CERT_V2, "ess-signing-certificate-v2", true),
        (OID_ESS_SIGNING_CERT, "ess-signing-certificate", false),
    ] {
        match single(oid) {
            Ok(None) => {}
            Err(m) => {
                check(name, false, m.clone());
                problem(&mut f, m);
            }
            Ok(Some(v)) => {
                let parsed = v
                    .to_der()
                    .map_err(|e| e.to_string())
                    .and_then(|d| first_ess_cert_hash(&d, v2));
                match (parsed, cert_der) {
                    (Err(m), _) => {
                        check(name, false, format!("malformed: {m}"));
                        problem(&mut f, format!("{name} attribute is malformed"));
                    }
                    (Ok(_), None) => {
                        check(name, false, "no signer certificate to compare with".into())
                    }
                    (Ok((alg, hash)), Some(cert)) => match digest_bytes(&alg, cert) {
                        None => {
                            check(name, false, format!("hash algorithm {alg:?} not supported"));
                            problem(&mut f, format!("{name}: hash algorithm not supported"));
                        }
                        Some(h) => {
                            let ok = h == hash;
                            check(
                                name,
                                ok,
                                if ok {
                                    format!("{alg:?} hash names the signer certificate")
                                } else {
                                    format!(
                                        "names certificate {alg:?} {}, the signer's is {}",
                                        hex::encode(&hash),
                                        hex::encode(&h)
                                    )
                                },
                            );
                            if !ok && f.ess_mismatch.is_none() {
                                f.ess_mismatch = Some(format!(
                                    "ESS signing-certificate{} names another certificate",
                                    if v2 { "-v2" } else { "" }
                                ));
                            }
                        }
                    },
                }
            }
        }
    }
    f
}

/// The hash algorithm and certificate hash of the first ESSCertID(v2) of a
/// SigningCertificate(V2) (RFC 2634 / RFC 5035).
fn first_ess_cert_hash(der: &[u8], v2: bool) -> Result<(DigestAlg, Vec<u8>), String> {
    let outer = read_single(der).map_err(|e| e.0)?;
    let certs = outer
        .children()
        .map_err(|e| e.0)?
        .into_iter()
        .next()
        .filter(|t| outer.tag == 0x30 && t.tag == 0x30)
        .ok_or("not a SEQUENCE OF ESSCertID")?;
    let first = certs
        .children()
        .map_err(|e| e.0)?
        .into_iter()
        .next()
        .filter(|t| t.tag == 0x30)
        .ok_or("no ESSCertID")?;
    let parts = first.children().map_err(|e| e.0)?;
    let (alg, hash) = match parts.first() {
        Some(t) if v2 && t.tag == 0x30 => {
            let ai = AlgorithmIdentifierOwned::from_der(t.raw).map_err(|e| e.to_string())?;
            (digest_alg_of(&ai.oid), parts.get(1))
        }
        Some(_) if v2 => (DigestAlg::Sha256, parts.first()),
        Some(_) => (DigestAlg::Sha1, parts.first()),
        None => return Err("empty ESSCertID".into()),
    };
    let hash = hash
        .filter(|t| t.tag == 0x04)
        .ok_or("certHash is not an OCTET STRING")?;
    Ok((alg, hash.value.to_vec()))
}

fn signer_ref_of(sid: &SignerIdentifier) -> SignerRef {
    match sid {
        SignerIdentifier::IssuerAndSerialNumber(IssuerAndSerialNumber {
            issuer,
            serial_number,
        }) => match issuer.to_der() {
            Ok(issuer_der) => SignerRef::IssuerSerial {
                issuer_der,
                serial: serial_hex(serial_number.as_bytes()),
            },
            Err(_) => SignerRef::None,
        },
        SignerIdentifier::SubjectKeyIdentifier(ski) => {
            SignerRef::SubjectKeyId(ski.0.as_bytes().to_vec())
        }
    }
}

/// Lowercase hex without leading zero bytes (at least one byte), as the store keeps serials.
pub(crate) fn serial_hex(bytes: &[u8]) -> String {
    let mut b = bytes;
    while b.len() > 1 && b[0] == 0 {
        b = &b[1..];
    }
    hex::encode(b)
}

/// Whether `known` is the certificate the SignerInfo names (`signer_ref` is what
/// [`signer_ref_of`] made of `sid`: the issuer already encoded).
fn names_certificate(sid: &SignerIdentifier, signer_ref: &SignerRef, known: &KnownCert) -> bool {
    let tbs = known.cert.tbs_certificate();
    match sid {
        SignerIdentifier::IssuerAndSerialNumber(_) => match signer_ref {
            SignerRef::IssuerSerial { issuer_der, serial } => {
                *serial == serial_hex(tbs.serial_number().as_bytes())
                    && known.issuer_der() == Some(issuer_der.as_slice())
            }
            _ => false,
        },
        SignerIdentifier::SubjectKeyIdentifier(ski) => {
            let want = ski.0.as_bytes();
            match tbs.get_extension::<SubjectKeyIdentifier>() {
                Ok(Some((_, have))) => have.0.as_bytes() == want,
                // No SKI extension: RFC 5280 §4.2.1.2 method 1 (SHA-1 of the key bits).
                _ => {
                    let key = tbs.subject_public_key_info().subject_public_key.raw_bytes();
                    sha1::Sha1::digest(key).as_slice() == want
                }
            }
        }
    }
}

pub(crate) fn digest_alg_of(oid: &ObjectIdentifier) -> DigestAlg {
    match *oid {
        OID_SHA1 => DigestAlg::Sha1,
        OID_SHA256 => DigestAlg::Sha256,
        OID_SHA384 => DigestAlg::Sha384,
        OID_SHA512 => DigestAlg::Sha512,
        OID_SM3 => DigestAlg::Sm3,
        other => DigestAlg::Other(other.to_string()),
    }
}

pub(crate) fn sig_alg_of(oid: &ObjectIdentifier) -> SigAlg {
    match *oid {
        OID_EC_PUBLIC_KEY | OID_ECDSA_SHA1 | OID_ECDSA_SHA224 | OID_ECDSA_SHA256
        | OID_ECDSA_SHA384 | OID_ECDSA_SHA512 => SigAlg::Ecdsa,
        OID_RSA | OID_RSA_SHA1 | OID_RSA_SHA224 | OID_RSA_SHA256 | OID_RSA_SHA384
        | OID_RSA_SHA512 => SigAlg::RsaPkcs1,
        OID_RSA_PSS => SigAlg::RsaPss,
        OID_SM2_SM3 | OID_SM2_SIGN | OID_SM2_CURVE => SigAlg::Sm2,
        other => SigAlg::Other(other.to_string()),
    }
}

/// The digest of `data`, for the algorithms Signet computes.
pub(crate) fn digest_bytes(alg: &DigestAlg, data: &[u8]) -> Option<Vec<u8>> {
    Some(match alg {
        DigestAlg::Sha1 => sha1::Sha1::digest(data).to_vec(),
        DigestAlg::Sha256 => sha2::Sha256::digest(data).to_vec(),
        DigestAlg::Sha384 => sha2::Sha384::digest(data).to_vec(),
        DigestAlg::Sha512 => sha2::Sha512::digest(data).to_vec(),
        DigestAlg::Sm3 | DigestAlg::Other(_) => return None,
    })
}

/// A certificate's public key, as far as verification is concerned.
#[derive(Debug)]
pub(crate) enum PublicKey {
    P256(crate::ecdsa::EcdsaKey),
    P384(crate::ecdsa::EcdsaKey),
    /// An EC key that is not a valid point of its curve.
    BadPoint(&'static str),
    Rsa,
    Sm2,
    Other(String),
}

pub(crate) fn public_key_of(cert: &Certificate) -> PublicKey {
    let spki = cert.tbs_certificate().subject_public_key_info();
    let bits = spki.subject_public_key.raw_bytes();
    match spki.algorithm.oid {
        OID_EC_PUBLIC_KEY => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .filter(|p| p.tag() == Tag::ObjectIdentifier)
                .and_then(|p| p.decode_as::<ObjectIdentifier>().ok());
            match curve {
                Some(OID_P256) => EcdsaKey::from_sec1(Curve::P256, bits)
                    .map(PublicKey::P256)
                    .unwrap_or(PublicKey::BadPoint("P-256")),
                Some(OID_P384) => EcdsaKey::from_sec1(Curve::P384, bits)
                    .map(PublicKey::P384)
                    .unwrap_or(PublicKey::BadPoint("P-384")),
                Some(OID_SM2_CURVE) => PublicKey::Sm2,
                Some(other) => PublicKey::Other(format!("EC key on curve {other}")),
                None => PublicKey::Other("EC key with explicit or missing curve".into()),
            }
        }
        OID_SM2_CURVE => PublicKey::Sm2,
        OID_RSA | OID_RSA_PSS => PublicKey::Rsa,
        other => PublicKey::Other(format!("public key algorithm {other}")),
    }
}

pub(crate) enum VerifyError {
    /// Signet does not verify this algorithm (CRYPTO_CONSTRAINTS_FAILURE).
    Unsupported(String),
    /// The signature does not verify (SIG_CRYPTO_FAILURE).
    Failed(String),
}

/// Verifies `sig` over `data` hashed with `digest`, under `key`.
pub(crate) fn verify_signature(
    key: &PublicKey,
    alg: &SigAlg,
    digest: &DigestAlg,
    data: &[u8],
    sig: &[u8],
    encoding: SigEncoding,
) -> Result<(), VerifyError> {
    use VerifyError::{Failed, Unsupported};
    match (key, alg) {
        (PublicKey::Sm2, _) | (_, SigAlg::Sm2) => {
            return Err(Unsupported(SM2_NOT_SUPPORTED.into()))
        }
        (_, SigAlg::NotASignature(a)) => {
            return Err(Failed(format!("alg {a} is not a public-key signature")))
        }
        (PublicKey::Other(k), _) => {
            return Err(Unsupported(format!("{k} is not verified by Signet")))
        }
        (_, SigAlg::Other(a)) => {
            return Err(Unsupported(format!(
                "signature algorithm {a} is not verified by Signet"
            )))
        }
        (PublicKey::BadPoint(c), _) => {
            return Err(Failed(format!(
                "the certificate's {c} public key is not a valid curve point"
            )))
        }
        (PublicKey::Rsa, SigAlg::RsaPkcs1 | SigAlg::RsaPss) => {
            return Err(Unsupported(
                "RSA signatures are not verified by Signet (its policy accepts P-256 keys)".into(),
            ))
        }
        (PublicKey::Rsa, SigAlg::Ecdsa) => {
            return Err(Failed(
                "an ECDSA signature, but the certificate holds an RSA key".into(),
            ))
        }
        (PublicKey::P256(_) | PublicKey::P384(_), SigAlg::RsaPkcs1 | SigAlg::RsaPss) => {
            return Err(Failed(
                "an RSA signature, but the certificate holds an EC key".into(),
            ))
        }
        (PublicKey::P256(_) | PublicKey::P384(_), SigAlg::Ecdsa) => {}
    }
    let hash = match digest {
        DigestAlg::Sha1 => Hash::Sha1,
        DigestAlg::Sha256 => Hash::Sha256,
        DigestAlg::Sha384 => Hash::Sha384,
        DigestAlg::Sha512 => Hash::Sha512,
        DigestAlg::Sm3 | DigestAlg::Other(_) => {
            return Err(Unsupported(format!(
                "digest algorithm {digest:?} is not verified by Signet"
            )))
        }
    };
    let key = match key {
        PublicKey::P256(k) | PublicKey::P384(k) => k,
        _ => return Err(Unsupported("key type not verified by Signet".into())),
    };
    key.verify(hash, data, sig, encoding).map_err(|e| match e {
        EcdsaError::BadEncoding { curve, .. } => Failed(match encoding {
            SigEncoding::Der => format!("the signature is not a DER ECDSA-Sig-Value for {curve}"),
            SigEncoding::Fixed => format!(
                "the signature is not the {} bytes r‖s of {curve} (got {} bytes; DER is not accepted here)",
                key.curve().fixed_len(),
                sig.len()
            ),
        }),
        EcdsaError::BadKey(c) => {
            Failed(format!("the certificate's {c} public key is not a valid curve point"))
        }
        EcdsaError::Mismatch => {
            Failed("the signature does not verify under the certificate's public key".into())
        }
    })
}
