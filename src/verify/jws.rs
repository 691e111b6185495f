//! JWS (RFC 7515): compact, flattened JSON and general JSON serializations; ES256 verified
//! (ES384 too, with a P-384 key); payload embedded or detached (RFC 7515 appendix F), and
//! unencoded (RFC 7797 `b64: false`).
//!
//! Signet's reading rules:
//! - `alg` must be in the protected header (else `FormatError`); the protected header must be
//!   a JSON object without repeated members, and share no member with the unprotected header
//!   (RFC 7515 §7.2.1).
//! - `none` and `HS*` → `SigAlg::NotASignature`, `SigCryptoFailure`; `ES512`, `RS*`, `PS*`,
//!   `EdDSA` and the rest → `AlgorithmNotSupported` (SIG_CRYPTO_FAILURE / CRYPTO_CONSTRAINTS_FAILURE
//!   in the report, never a parse error).
//! - `crit`: a non-empty array of names this code understands (`b64`, `sigT`), each present in
//!   the protected header. Anything else (unknown names, standard names, a `crit` outside the
//!   protected header) makes that signer's crypto `SigCryptoFailure` with a failed `jws-crit`
//!   check — per signer, so other signers of a general JWS are still reported. `b64` must be a
//!   boolean in the protected header and, when present, listed in `crit`.
//! - Payload: compact with an empty middle part, or JSON with `payload` absent or `""` →
//!   detached: the content is the instruction. An embedded payload that differs from a
//!   non-empty instruction → `HashFailure` with a failed `content-matches-instruction` check
//!   (when the signature itself verifies).
//! - Signer certificate: `x5c` (standard base64 DER; first is the signer, the rest go to
//!   `other_certificates`) or `x5t#S256` (resolved by the resolver), from the protected or the
//!   unprotected header (an unprotected certificate still has to carry the verifying key);
//!   with both, they must name the same certificate (else `SigCryptoFailure`). `signer_ref` is
//!   `Thumbprint` (of `x5t#S256`, or of `x5c[0]`); `kid` is not used.
//! - A compact JWS with `b64: false` cannot embed a payload holding a dot: send it detached or
//!   as JSON (RFC 7797 §5.2).
//! - Claimed signing time: JAdES `sigT` (RFC 3339) or a numeric `iat`, `sigT` first.
//! - ES256 signature: exactly the 64 bytes r‖s (a DER signature is `SigCryptoFailure`).
//! - The general JSON serialization is reported as `SignatureFormat::JwsFlattened`.

use base64::Engine as _;
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::{Map, Value};
use sha2::Digest as _;
use std::sync::Arc;

use super::certs::KnownCert;

use super::cms::{verify_signature, PublicKey, SigEncoding, VerifyError};
use super::evidence::{
    AttributeCheck, CertificateResolver, Crypto, DigestAlg, FormatError, SigAlg, SignatureFormat,
    SignerEvidence, SignerRef,
};
use super::input::{ferr, B64_STD, B64_URL, MAX_SIGNATURE_BYTES};

/// `crit` names this code understands.
const UNDERSTOOD_CRIT: [&str; 2] = ["b64", "sigT"];

/// Header names RFC 7515 / RFC 7518 define: they must not appear in `crit`.
const STANDARD_HEADERS: [&str; 18] = [
    "alg", "jku", "jwk", "kid", "x5u", "x5c", "x5t", "x5t#S256", "typ", "cty", "crit", "enc",
    "zip", "epk", "apu", "apv", "iv", "tag",
];

/// One signature of a JWS, as serialized.
struct RawSig<'a> {
    protected_b64: &'a str,
    unprotected: Option<&'a Map<String, Value>>,
    signature_b64: &'a str,
}

/// Reads a JWS (compact or JSON) and examines each signature.
///
/// `instruction` is the payload of a detached JWS; for an embedded payload it is compared with
/// the payload when not empty. A JWS that cannot be read is a `FormatError`; every problem of
/// one signature is in its `SignerEvidence`.
pub fn examine_jws(
    jws: &str,
    instruction: &[u8],
    resolver: &dyn CertificateResolver,
) -> Result<Vec<SignerEvidence>, FormatError> {
    if jws.len() > MAX_SIGNATURE_BYTES {
        return Err(ferr(format!(
            "JWS is {} bytes, more than the {MAX_SIGNATURE_BYTES} accepted",
            jws.len()
        )));
    }
    let text = jws.trim_start_matches('\u{feff}').trim();
    if text.starts_with('{') {
        let outer: NoDupObject =
            serde_json::from_str(text).map_err(|e| ferr(format!("JWS JSON: {e}")))?;
        let obj = outer.0;
        let payload = match obj.get("payload") {
            None => None,
            Some(Value::String(s)) => Some(s.as_str()),
            Some(_) => return Err(ferr("JWS JSON: `payload` is not a string")),
        };
        let sigs: Vec<RawSig<'_>> = match obj.get("signatures") {
            Some(Value::Array(list)) => {
                if ["signature", "protected", "header"]
                    .iter()
                    .any(|k| obj.contains_key(*k))
                {
                    return Err(ferr(
                        "JWS JSON mixes the general (`signatures`) and flattened forms",
                    ));
                }
                if list.is_empty() {
                    return Err(ferr("JWS JSON: `signatures` is empty"));
                }
                if list.len() > super::input::MAX_SIGNERS {
                    return Err(super::input::too_many_signers(list.len()));
                }
                list.iter()
                    .map(|v| {
                        v.as_object()
                            .ok_or_else(|| ferr("JWS JSON: a signature is not an object"))
                            .and_then(raw_sig_of)
                    })
                    .collect::<Result<_, _>>()?
            }
            Some(_) => return Err(ferr("JWS JSON: `signatures` is not an array")),
            None => vec![raw_sig_of(&obj)?],
        };
        sigs.iter()
            .map(|s| {
                examine_one(
                    s,
                    payload,
                    SignatureFormat::JwsFlattened,
                    instruction,
                    resolver,
                )
            })
            .collect()
    } else {
        let parts: Vec<&str> = text.split('.').collect();
        if parts.len() != 3 {
            return Err(ferr(format!(
                "compact JWS has {} parts separated by dots, not 3",
                parts.len()
            )));
        }
        let sig = RawSig {
            protected_b64: parts[0],
            unprotected: None,
            signature_b64: parts[2],
        };
        Ok(vec![examine_one(
            &sig,
            Some(parts[1]),
            SignatureFormat::JwsCompact,
            instruction,
            resolver,
        )?])
    }
}

fn raw_sig_of(obj: &Map<String, Value>) -> Result<RawSig<'_>, FormatError> {
    let protected_b64 = match obj.get("protected") {
        Some(Value::String(s)) => s.as_str(),
        Some(_) => return Err(ferr("JWS JSON: `protected` is not a string")),
        None => {
            return Err(ferr(
                "JWS without a protected header: Signet needs `alg` integrity-protected",
            ))
        }
    };
    let unprotected = match obj.get("header") {
        None => None,
        Some(Value::Object(m)) => Some(m),
        Some(_) => return Err(ferr("JWS JSON: `header` is not an object")),
    };
    let signature_b64 = match obj.get("signature") {
        Some(Value::String(s)) => s.as_str(),
        _ => return Err(ferr("JWS JSON: `signature` missing or not a string")),
    };
    Ok(RawSig {
        protected_b64,
        unprotected,
        signature_b64,
    })
}

fn b64url(s: &str, what: &str) -> Result<Vec<u8>, FormatError> {
    B64_URL
        .decode(s)
        .map_err(|_| ferr(format!("JWS {what} is not base64url")))
}

fn examine_one(
    raw: &RawSig<'_>,
    payload: Option<&str>,
    format: SignatureFormat,
    instruction: &[u8],
    resolver: &dyn CertificateResolver,
) -> Result<SignerEvidence, FormatError> {
    let header_json = b64url(raw.protected_b64, "protected header")?;
    let header_text =
        std::str::from_utf8(&header_json).map_err(|_| ferr("JWS protected header is not UTF-8"))?;
    let protected = serde_json::from_str::<NoDupObject>(header_text)
        .map_err(|e| ferr(format!("JWS protected header: {e}")))?
        .0;
    let empty = Map::new();
    let unprotected = raw.unprotected.unwrap_or(&empty);
    if let Some(k) = unprotected.keys().find(|k| protected.contains_key(*k)) {
        return Err(ferr(format!(
            "JWS header member {k:?} is both protected and unprotected"
        )));
    }
    let alg =
        match protected.get("alg") {
            Some(Value::String(a)) => a.as_str(),
            Some(_) => return Err(ferr("JWS `alg` is not a string")),
            None => return Err(ferr(
                "JWS `alg` is not in the protected header (Signet needs it integrity-protected)",
            )),
        };
    let (algorithm, digest) = alg_of(alg);
    let signature = b64url(raw.signature_b64, "signature")?;

    let mut checks: Vec<AttributeCheck> = Vec::new();
    let mut problem: Option<String> = None;
    let mut fail = |checks: &mut Vec<AttributeCheck>, name: &str, detail: String| {
        checks.push(AttributeCheck {
            name: name.into(),
            passed: false,
            detail: detail.clone(),
        });
        if problem.is_none() {
            problem = Some(detail);
        }
    };

    // crit and b64
    let mut crit_names: Vec<&str> = Vec::new();
    if unprotected.contains_key("crit") {
        fail(
            &mut checks,
            "jws-crit",
            "`crit` is not in the protected header".into(),
        );
    }
    if let Some(c) = protected.get("crit") {
        match crit_list(c, &protected) {
            Ok(names) => {
                checks.push(AttributeCheck {
                    name: "jws-crit".into(),
                    passed: true,
                    detail: format!("understood: {}", names.join(", ")),
                });
                crit_names = names;
            }
            Err(m) => fail(&mut checks, "jws-crit", m),
        }
    }
    if unprotected.contains_key("b64") {
        fail(
            &mut checks,
            "b64",
            "`b64` is not in the protected header".into(),
        );
    }
    let b64 = match protected.get("b64") {
        None => true,
        Some(Value::Bool(b)) => {
            if crit_names.contains(&"b64") {
                checks.push(AttributeCheck {
                    name: "b64".into(),
                    passed: true,
                    detail: format!("b64: {b}, listed in crit (RFC 7797)"),
                });
            } else {
                fail(
                    &mut checks,
                    "b64",
                    "`b64` present but not listed in `crit` (RFC 7797 §6)".into(),
                );
            }
            *b
        }
        Some(_) => {
            fail(&mut checks, "b64", "`b64` is not a boolean".into());
            true
        }
    };

    // Payload and signing input.
    let detached = payload.is_none_or(str::is_empty);
    let (content, payload_part): (Vec<u8>, Vec<u8>) = match payload {
        Some(p) if !p.is_empty() => {
            if b64 {
                (b64url(p, "payload")?, p.as_bytes().to_vec())
            } else {
                (p.as_bytes().to_vec(), p.as_bytes().to_vec())
            }
        }
        _ => {
            let part = if b64 {
                B64_URL_NO_PAD.encode(instruction).into_bytes()
            } else {
                instruction.to_vec()
            };
            (instruction.to_vec(), part)
        }
    };
    let mut signing_input = Vec::with_capacity(raw.protected_b64.len() + 1 + payload_part.len());
    signing_input.extend_from_slice(raw.protected_b64.as_bytes());
    signing_input.push(b'.');
    signing_input.extend_from_slice(&payload_part);
    let content_matches = if detached || instruction.is_empty() {
        None
    } else {
        let m = content == instruction;
        checks.push(AttributeCheck {
            name: "content-matches-instruction".into(),
            passed: m,
            detail: if m {
                "the embedded payload is the instruction".into()
            } else {
                "the embedded payload differs from the instruction".into()
            },
        });
        Some(m)
    };

    // Signer certificate.
    let header = |k: &str| protected.get(k).or_else(|| unprotected.get(k));
    let x5t = match header("x5t#S256") {
        None => None,
        Some(Value::String(s)) => {
            let t = b64url(s, "x5t#S256")?;
            if t.len() != 32 {
                return Err(ferr("JWS x5t#S256 is not a SHA-256 thumbprint (32 bytes)"));
            }
            Some(t)
        }
        Some(_) => return Err(ferr("JWS x5t#S256 is not a string")),
    };
    let mut x5c: Vec<Arc<KnownCert>> = Vec::new();
    match header("x5c") {
        None => {}
        Some(Value::Array(list)) if !list.is_empty() => {
            for v in list {
                let s = v
                    .as_str()
                    .ok_or_else(|| ferr("JWS x5c holds something other than a string"))?;
                let der = B64_STD
                    .decode(s)
                    .map_err(|_| ferr("JWS x5c certificate is not base64"))?;
                let cert = resolver
                    .certificate(&der)
                    .map_err(|e| ferr(format!("JWS x5c certificate: {e}")))?;
                x5c.push(cert);
            }
        }
        Some(_) => return Err(ferr("JWS x5c is not a non-empty array")),
    }
    let mut carried = x5c.into_iter();
    let (certificate, signer_ref) = match carried.next() {
        Some(cert) => {
            let thumb = cert.sha256.to_vec();
            if let Some(t) = &x5t {
                if *t == thumb {
                    checks.push(AttributeCheck {
                        name: "x5t#S256".into(),
                        passed: true,
                        detail: "names the x5c signer certificate".into(),
                    });
                } else {
                    fail(
                        &mut checks,
                        "x5t#S256",
                        "x5t#S256 names another certificate than x5c's first".into(),
                    );
                }
            }
            (Some(cert), SignerRef::Thumbprint(thumb))
        }
        None => match x5t {
            Some(t) => {
                let r = SignerRef::Thumbprint(t);
                (resolver.resolve(&r), r)
            }
            None => (None, SignerRef::None),
        },
    };
    let other_certificates: Vec<Arc<KnownCert>> = carried.collect();

    // Claimed signing time.
    let mut claimed_signing_time = None;
    match (protected.get("sigT"), protected.get("iat")) {
        (Some(v), _) => match v.as_str().and_then(parse_rfc3339) {
            Some(t) => {
                claimed_signing_time = Some(t);
                checks.push(AttributeCheck {
                    name: "signing-time".into(),
                    passed: true,
                    detail: format!("sigT claims {}", v.as_str().unwrap_or_default()),
                });
            }
            None => fail(
                &mut checks,
                "signing-time",
                "sigT is not an RFC 3339 time".into(),
            ),
        },
        (None, Some(v)) => match v.as_i64().or_else(|| v.as_f64().map(|f| f.floor() as i64)) {
            Some(t) => {
                claimed_signing_time = Some(t);
                checks.push(AttributeCheck {
                    name: "signing-time".into(),
                    passed: true,
                    detail: format!("iat claims {t}"),
                });
            }
            None => fail(&mut checks, "signing-time", "iat is not a number".into()),
        },
        (None, None) => {}
    }

    let crypto = match (&algorithm, &certificate) {
        (SigAlg::NotASignature(a), _) => {
            Crypto::SigCryptoFailure(format!("alg {a} is not a public-key signature"))
        }
        (SigAlg::Ecdsa, _) if alg != "ES256" && alg != "ES384" => {
            Crypto::AlgorithmNotSupported(format!("JWS alg {alg} is not verified by Signet"))
        }
        (SigAlg::RsaPkcs1 | SigAlg::RsaPss | SigAlg::Sm2 | SigAlg::Other(_), _) => {
            Crypto::AlgorithmNotSupported(format!("JWS alg {alg} is not verified by Signet"))
        }
        (_, None) => Crypto::NotChecked,
        (SigAlg::Ecdsa, Some(cert)) => {
            let key = cert.public_key();
            let fits = matches!(
                (alg, &key),
                ("ES256", PublicKey::P256(_)) | ("ES384", PublicKey::P384(_))
            );
            if let Some(p) = &problem {
                Crypto::SigCryptoFailure(p.clone())
            } else if matches!(key, PublicKey::Sm2) {
                Crypto::AlgorithmNotSupported(super::cms::SM2_NOT_SUPPORTED.into())
            } else if !fits {
                Crypto::SigCryptoFailure(format!(
                    "JWS alg {alg} does not fit the certificate's key ({})",
                    key_name(key)
                ))
            } else {
                match verify_signature(
                    key,
                    &algorithm,
                    &digest,
                    &signing_input,
                    &signature,
                    SigEncoding::Fixed,
                ) {
                    Err(VerifyError::Unsupported(m)) => Crypto::AlgorithmNotSupported(m),
                    Err(VerifyError::Failed(m)) => Crypto::SigCryptoFailure(m),
                    Ok(()) if content_matches == Some(false) => Crypto::HashFailure,
                    Ok(()) => Crypto::Valid,
                }
            }
        }
    };

    Ok(SignerEvidence {
        format,
        certificate,
        signer_ref,
        other_certificates,
        digest,
        algorithm,
        claimed_signing_time,
        signed_attributes: true,
        checks,
        crypto,
        content_sha256: sha2::Sha256::digest(&content).into(),
        // Only when no instruction came beside it (see `SignerEvidence`).
        attached_content: (!detached && instruction.is_empty())
            .then(|| std::sync::Arc::from(content.as_slice())),
    })
}

const B64_URL_NO_PAD: base64::engine::GeneralPurpose =
    base64::engine::general_purpose::URL_SAFE_NO_PAD;

fn key_name(key: &PublicKey) -> &'static str {
    match key {
        PublicKey::P256(_) => "P-256",
        PublicKey::P384(_) => "P-384",
        PublicKey::BadPoint(_) => "an invalid EC point",
        PublicKey::Rsa => "RSA",
        PublicKey::Sm2 => "SM2",
        PublicKey::Other(_) => "another key type",
    }
}

/// The signature and digest algorithms a JWS `alg` names.
fn alg_of(alg: &str) -> (SigAlg, DigestAlg) {
    let digest = match alg.get(2..) {
        Some("256") => DigestAlg::Sha256,
        Some("384") => DigestAlg::Sha384,
        Some("512") => DigestAlg::Sha512,
        _ => DigestAlg::Other(alg.to_string()),
    };
    let sig = match alg {
        "ES256" | "ES384" | "ES512" => SigAlg::Ecdsa,
        "RS256" | "RS384" | "RS512" => SigAlg::RsaPkcs1,
        "PS256" | "PS384" | "PS512" => SigAlg::RsaPss,
        "none" | "HS256" | "HS384" | "HS512" => SigAlg::NotASignature(alg.to_string()),
        "SM2" | "SM2-SM3" => SigAlg::Sm2,
        other => SigAlg::Other(other.to_string()),
    };
    let digest = match alg {
        "SM2" | "SM2-SM3" => DigestAlg::Sm3,
        "none" => DigestAlg::Other("none".into()),
        _ => digest,
    };
    (sig, digest)
}

/// The names a protected `crit` lists, if Signet may accept them.
fn crit_list<'a>(crit: &'a Value, protected: &Map<String, Value>) -> Result<Vec<&'a str>, String> {
    let list = crit
        .as_array()
        .filter(|l| !l.is_empty())
        .ok_or("`crit` is not a non-empty array")?;
    let mut names = Vec::new();
    for v in list {
        let n = v
            .as_str()
            .ok_or("`crit` holds something other than a string")?;
        if names.contains(&n) {
            return Err(format!("`crit` lists {n:?} twice"));
        }
        if STANDARD_HEADERS.contains(&n) {
            return Err(format!("`crit` lists the standard header {n:?}"));
        }
        if !UNDERSTOOD_CRIT.contains(&n) {
            return Err(format!(
                "`crit` lists {n:?}, an extension Signet does not understand"
            ));
        }
        if !protected.contains_key(n) {
            return Err(format!(
                "`crit` lists {n:?}, absent from the protected header"
            ));
        }
        names.push(n);
    }
    Ok(names)
}

/// RFC 3339 date-time (`2024-05-01T08:30:00Z`, `...T16:30:00.5+08:00`) → Unix seconds.
pub(crate) fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || !b.is_ascii() {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        if part.bytes().all(|c| c.is_ascii_digit()) {
            part.parse().ok()
        } else {
            None
        }
    };
    if b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut i = 19;
    if b[i] == b'.' {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return None;
        }
    }
    let offset = match b.get(i)? {
        b'Z' | b'z' if i + 1 == b.len() => 0,
        sign @ (b'+' | b'-') if i + 6 == b.len() && b[i + 3] == b':' => {
            let (oh, om) = (num(i + 1..i + 3)?, num(i + 4..i + 6)?);
            if oh > 23 || om > 59 {
                return None;
            }
            let o = oh * 3600 + om * 60;
            if *sign == b'+' {
                o
            } else {
                -o
            }
        }
        _ => return None,
    };
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let mdays = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1..=12).contains(&month)
        || day < 1
        || day > mdays[(month - 1) as usize]
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    // Days from civil (H. Hinnant).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hour * 3600 + minute * 60 + second - offset)
}

/// A JSON object that refuses repeated member names (RFC 7515 §5.2: a header with duplicate
/// names must be rejected or read the last; Signet rejects, so that no two readers of the same
/// JWS disagree on `alg`).
struct NoDupObject(Map<String, Value>);

impl<'de> Deserialize<'de> for NoDupObject {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = NoDupObject;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<NoDupObject, A::Error> {
                let mut map = Map::new();
                while let Some(k) = m.next_key::<String>()? {
                    if map.contains_key(&k) {
                        return Err(serde::de::Error::custom(format!(
                            "member {k:?} appears twice"
                        )));
                    }
                    let v: Value = m.next_value()?;
                    map.insert(k, v);
                }
                Ok(NoDupObject(map))
            }
        }
        d.deserialize_map(V)
    }
}
