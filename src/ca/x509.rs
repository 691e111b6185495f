//! Small X.509 building blocks: times, serials, key identifiers, extensions, signing assembly.

use std::time::Duration;

use const_oid::{AssociatedOid, ObjectIdentifier};
use der::asn1::{BitString, GeneralizedTime, OctetString, UtcTime};
use der::{DateTime, Encode};
use sha2::{Digest, Sha256};
use spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};
use x509_cert::ext::Extension;
use x509_cert::time::Time;

/// ecdsa-with-SHA256 (RFC 5758): parameters absent.
pub const ECDSA_WITH_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
/// id-ce-issuingDistributionPoint (RFC 5280 5.2.5).
pub const ID_CE_ISSUING_DISTRIBUTION_POINT: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("2.5.29.28");
/// id-ce-invalidityDate (RFC 5280 5.3.2).
pub const ID_CE_INVALIDITY_DATE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.24");

pub fn ecdsa_sha256() -> AlgorithmIdentifierOwned {
    AlgorithmIdentifierOwned {
        oid: ECDSA_WITH_SHA256,
        parameters: None,
    }
}

/// RFC 5280 4.1.2.5: UTCTime through 2049, GeneralizedTime from 2050.
pub fn x509_time(unix_secs: i64) -> Result<Time, der::Error> {
    let dt = DateTime::from_unix_duration(Duration::from_secs(unix_secs.max(0) as u64))?;
    Ok(if dt.year() <= UtcTime::MAX_YEAR {
        Time::UtcTime(UtcTime::from_date_time(dt)?)
    } else {
        Time::GeneralTime(GeneralizedTime::from_date_time(dt))
    })
}

/// GeneralizedTime, for fields that are always GeneralizedTime (invalidityDate).
pub fn generalized_time(unix_secs: i64) -> Result<GeneralizedTime, der::Error> {
    GeneralizedTime::from_unix_duration(Duration::from_secs(unix_secs.max(0) as u64))
}

/// Key identifier: RFC 7093 section 2 method 1, the leftmost 160 bits of the SHA-256 of the
/// subjectPublicKey BIT STRING's value.
pub fn key_identifier(spki: &SubjectPublicKeyInfoOwned) -> Vec<u8> {
    Sha256::digest(spki.subject_public_key.raw_bytes())[..20].to_vec()
}

/// An extension from any encodable value with a known OID.
pub fn extension<T: Encode + AssociatedOid>(
    value: &T,
    critical: bool,
) -> Result<Extension, der::Error> {
    Ok(Extension {
        extn_id: T::OID,
        critical,
        extn_value: OctetString::new(value.to_der()?)?,
    })
}

/// An extension from an OID and already-encoded value.
pub fn raw_extension(
    oid: ObjectIdentifier,
    critical: bool,
    value_der: Vec<u8>,
) -> Result<Extension, der::Error> {
    Ok(Extension {
        extn_id: oid,
        critical,
        extn_value: OctetString::new(value_der)?,
    })
}

/// A DER ECDSA-Sig-Value as the BIT STRING of a certificate or CRL.
pub fn signature_bits(der_sig: &[u8]) -> Result<BitString, der::Error> {
    BitString::from_bytes(der_sig)
}

/// A serial number from random bytes: 16 bytes, positive, first byte non-zero so that the DER
/// INTEGER is exactly 16 bytes. Returns None when the bytes cannot serve (then draw again).
pub fn serial_from_random(mut bytes: Vec<u8>) -> Option<Vec<u8>> {
    if bytes.len() != 16 {
        return None;
    }
    bytes[0] &= 0x7f;
    if bytes[0] == 0 {
        return None;
    }
    Some(bytes)
}

/// A builder profile that adds exactly the subject, issuer and extensions Signet decided:
/// x509-cert's ready profiles are TLS-shaped, bank certificates are not.
pub struct DecidedProfile {
    pub subject: x509_cert::name::Name,
    pub issuer: x509_cert::name::Name,
    pub extensions: Vec<Extension>,
}

impl x509_cert::builder::profile::BuilderProfile for DecidedProfile {
    fn get_issuer(&self, _subject: &x509_cert::name::Name) -> x509_cert::name::Name {
        self.issuer.clone()
    }

    fn get_subject(&self) -> x509_cert::name::Name {
        self.subject.clone()
    }

    fn build_extensions(
        &self,
        _spk: spki::SubjectPublicKeyInfoRef<'_>,
        _issuer_spk: spki::SubjectPublicKeyInfoRef<'_>,
        _tbs: &x509_cert::certificate::TbsCertificate,
    ) -> x509_cert::builder::Result<Vec<Extension>> {
        Ok(self.extensions.clone())
    }
}

/// The public half of a CA key held in the HSM: what x509-cert's builder needs to know about
/// the signer (its algorithm and public key) to produce the to-be-signed bytes. The signature
/// itself is made by the HSM, after the TBS is recorded.
pub struct HsmKeyRef(pub p256::ecdsa::VerifyingKey);

impl signature::Keypair for HsmKeyRef {
    type VerifyingKey = p256::ecdsa::VerifyingKey;
    fn verifying_key(&self) -> Self::VerifyingKey {
        self.0
    }
}

impl spki::DynSignatureAlgorithmIdentifier for HsmKeyRef {
    fn signature_algorithm_identifier(&self) -> spki::Result<AlgorithmIdentifierOwned> {
        Ok(ecdsa_sha256())
    }
}

/// A certificate prepared for signing: its to-be-signed DER.
pub struct PreparedCertificate {
    pub tbs_der: Vec<u8>,
}

/// Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signatureValue } (RFC 5280
/// 4.1), holding the TBS as the very bytes the HSM signed.
#[derive(der::Sequence)]
struct SignedCertificate<'a> {
    tbs_certificate: der::asn1::AnyRef<'a>,
    signature_algorithm: AlgorithmIdentifierOwned,
    signature: BitString,
}

impl PreparedCertificate {
    pub fn new(
        serial: &[u8],
        not_before: i64,
        not_after: i64,
        spki: SubjectPublicKeyInfoOwned,
        profile: DecidedProfile,
        issuer_key: p256::ecdsa::VerifyingKey,
    ) -> Result<Self, x509_cert::builder::Error> {
        use x509_cert::builder::Builder;
        let validity =
            x509_cert::time::Validity::new(x509_time(not_before)?, x509_time(not_after)?);
        let mut builder = x509_cert::builder::CertificateBuilder::new(
            profile,
            x509_cert::serial_number::SerialNumber::new(serial)?,
            validity,
            spki,
        )?;
        let tbs_der = builder.finalize(&HsmKeyRef(issuer_key))?;
        Ok(PreparedCertificate { tbs_der })
    }

    /// The certificate's DER with the HSM's DER signature attached. The TBS is spliced in, not
    /// decoded and encoded again (that was about 2% of the server's CPU in batch issuance);
    /// its signature field is ecdsa-with-SHA256, as `HsmKeyRef` told the builder, and RFC 5280
    /// 4.1.1.2 wants signatureAlgorithm to be the same.
    pub fn assemble(&self, der_sig: &[u8]) -> Result<Vec<u8>, der::Error> {
        use der::Decode;
        SignedCertificate {
            tbs_certificate: der::asn1::AnyRef::from_der(&self.tbs_der)?,
            signature_algorithm: ecdsa_sha256(),
            signature: signature_bits(der_sig)?,
        }
        .to_der()
    }
}

/// Was `crl` issued and signed by `issuer` (ECDSA P-256 with SHA-256)?
pub fn crl_signed_by(
    crl: &x509_cert::crl::CertificateList,
    issuer: &x509_cert::Certificate,
) -> bool {
    crl.signature_algorithm.oid == ECDSA_WITH_SHA256
        && crl_signature_verifies(crl, issuer) == Some(true)
}

/// Whether `crl` is signed by `issuer`'s key, for the signature algorithms a client CA's CRL
/// commonly uses (ECDSA P-256/SHA-256 and P-384/SHA-384, RSA PKCS#1 v1.5 with SHA-256/384/512):
/// `Some(verdict)`, or `None` for another algorithm, which this function cannot judge.
pub fn crl_signature_verifies(
    crl: &x509_cert::crl::CertificateList,
    issuer: &x509_cert::Certificate,
) -> Option<bool> {
    use ring::signature as alg;
    const ECDSA_WITH_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.3");
    const SHA256_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.11");
    const SHA384_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.12");
    const SHA512_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.13");
    let algorithm: &dyn alg::VerificationAlgorithm = match crl.signature_algorithm.oid {
        ECDSA_WITH_SHA256 => &alg::ECDSA_P256_SHA256_ASN1,
        ECDSA_WITH_SHA384 => &alg::ECDSA_P384_SHA384_ASN1,
        SHA256_WITH_RSA => &alg::RSA_PKCS1_2048_8192_SHA256,
        SHA384_WITH_RSA => &alg::RSA_PKCS1_2048_8192_SHA384,
        SHA512_WITH_RSA => &alg::RSA_PKCS1_2048_8192_SHA512,
        _ => return None,
    };
    let same_issuer =
        crl.tbs_cert_list.issuer.to_der().ok() == issuer.tbs_certificate().subject().to_der().ok();
    let Ok(tbs) = crl.tbs_cert_list.to_der() else {
        return Some(false);
    };
    // The key bits: a SEC1 point for ECDSA, an RSAPublicKey for RSA (what ring takes).
    let key = issuer
        .tbs_certificate()
        .subject_public_key_info()
        .subject_public_key
        .raw_bytes();
    Some(
        same_issuer
            && alg::UnparsedPublicKey::new(algorithm, key)
                .verify(&tbs, crl.signature.raw_bytes())
                .is_ok(),
    )
}

/// The P-256 verifying key of a certificate's subject.
pub fn verifying_key(
    spki: &SubjectPublicKeyInfoOwned,
) -> Result<p256::ecdsa::VerifyingKey, String> {
    p256::ecdsa::VerifyingKey::from_sec1_bytes(spki.subject_public_key.raw_bytes())
        .map_err(|e| format!("not a P-256 key: {e}"))
}

/// subjectKeyIdentifier of `spki` and authorityKeyIdentifier naming the issuer's key: every
/// certificate but a self-signed root carries both (RFC 5280 4.2.1.1-2).
pub fn key_id_extensions(
    spki: &SubjectPublicKeyInfoOwned,
    issuer_key_id: &[u8],
) -> Result<[Extension; 2], der::Error> {
    use x509_cert::ext::pkix::{AuthorityKeyIdentifier, SubjectKeyIdentifier};
    Ok([
        extension(
            &SubjectKeyIdentifier(OctetString::new(key_identifier(spki))?),
            false,
        )?,
        extension(
            &AuthorityKeyIdentifier {
                key_identifier: Some(OctetString::new(issuer_key_id.to_vec())?),
                ..Default::default()
            },
            false,
        )?,
    ])
}

/// The RFC 4514 text of a name, exactly as x509-cert's `Display` writes it (the store keeps
/// names in that form), without its cost: `Display` finds each attribute type's short name
/// by scanning const-oid's whole database, which was 3.7% of the server's CPU in batch
/// issuance. Here each type's name is looked up once and remembered.
pub fn name_text(name: &x509_cert::name::Name) -> String {
    let mut out = String::with_capacity(96);
    // RFC 4514 section 2.1: the last RDN first.
    let rdns: Vec<_> = name.iter_rdn().collect();
    for (i, rdn) in rdns.into_iter().rev().enumerate() {
        if i > 0 {
            out.push(',');
        }
        for (j, atv) in rdn.iter().enumerate() {
            if j > 0 {
                out.push('+');
            }
            push_attribute(&mut out, atv);
        }
    }
    out
}

fn push_attribute(out: &mut String, atv: &x509_cert::attr::AttributeTypeAndValue) {
    use der::asn1::{Ia5StringRef, PrintableStringRef, TeletexStringRef, Utf8StringRef};
    use der::{Tag, Tagged};
    use std::fmt::Write;
    let value = match atv.value.tag() {
        Tag::PrintableString => PrintableStringRef::try_from(&atv.value)
            .ok()
            .map(|s| s.as_str()),
        Tag::Utf8String => Utf8StringRef::try_from(&atv.value).ok().map(|s| s.as_str()),
        Tag::Ia5String => Ia5StringRef::try_from(&atv.value).ok().map(|s| s.as_str()),
        Tag::TeletexString => TeletexStringRef::try_from(&atv.value)
            .ok()
            .map(|s| s.as_str()),
        _ => None,
    };
    match (attribute_short_name(&atv.oid), value) {
        (Some(key), Some(value)) => {
            out.push_str(&key);
            out.push('=');
            push_escaped(out, value);
        }
        // Hex DER or a dotted OID: rare, and Display's own rules.
        _ => {
            let _ = write!(out, "{atv}");
        }
    }
}

/// An attribute value with RFC 4514's escapes: a leading `#`, a leading or trailing space,
/// the special characters, and control characters as `\xx`.
fn push_escaped(out: &mut String, value: &str) {
    use std::fmt::Write;
    let last = value.char_indices().last().map(|(i, _)| i);
    for (i, c) in value.char_indices() {
        match c {
            '#' if i == 0 => out.push_str("\\#"),
            ' ' if i == 0 || Some(i) == last => out.push_str("\\ "),
            '"' | '+' | ',' | ';' | '<' | '>' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            '\x00'..='\x1f' | '\x7f' => {
                let _ = write!(out, "\\{:02x}", c as u8);
            }
            _ => out.push(c),
        }
    }
}

/// The name x509-cert writes for an attribute type (const-oid's shortest, upper-cased), or
/// `None` when it writes the type as a dotted OID; remembered.
fn attribute_short_name(oid: &ObjectIdentifier) -> Option<std::sync::Arc<str>> {
    use std::collections::HashMap;
    use std::sync::{Arc, OnceLock, RwLock};
    static NAMES: OnceLock<RwLock<HashMap<ObjectIdentifier, Option<Arc<str>>>>> = OnceLock::new();
    let names = NAMES.get_or_init(Default::default);
    if let Some(known) = names.read().unwrap_or_else(|e| e.into_inner()).get(oid) {
        return known.clone();
    }
    // x509-cert's own choice of name, read off its text for a one-letter value: `KEY=x`, or
    // `OID=#...` when it has no name for the type.
    let probe = x509_cert::attr::AttributeTypeAndValue {
        oid: *oid,
        value: der::asn1::Any::from(der::asn1::Utf8StringRef::new("x").ok()?),
    };
    let name: Option<Arc<str>> = probe.to_string().strip_suffix("=x").map(Arc::from);
    let mut names = names.write().unwrap_or_else(|e| e.into_inner());
    // A name's attribute types are few (a bank's subjects use a handful): the map stays small,
    // but it is bounded all the same against names made of arbitrary OIDs.
    if names.len() < 256 {
        names.insert(*oid, name.clone());
    }
    name
}

#[cfg(test)]
mod tests {
    use super::name_text;
    use der::asn1::{Any, Ia5StringRef, PrintableStringRef, TeletexStringRef, Utf8StringRef};
    use der::{Decode, Encode};
    use std::str::FromStr;
    use x509_cert::attr::AttributeTypeAndValue;
    use x509_cert::name::{Name, RdnSequence, RelativeDistinguishedName};

    fn atv(oid: &str, value: Any) -> AttributeTypeAndValue {
        AttributeTypeAndValue {
            oid: oid.parse().unwrap(),
            value,
        }
    }

    fn name_of(rdns: Vec<Vec<AttributeTypeAndValue>>) -> Name {
        let seq: Vec<RelativeDistinguishedName> = rdns
            .into_iter()
            .map(|atvs| RelativeDistinguishedName::try_from(atvs).unwrap())
            .collect();
        // Through DER, as names arrive from CSRs and certificates.
        Name::from_der(&RdnSequence::from(seq).to_der().unwrap()).unwrap()
    }

    #[test]
    fn an_assembled_certificate_is_what_x509_cert_would_assemble_and_verifies() {
        use super::{
            ecdsa_sha256, key_id_extensions, raw_extension, signature_bits, x509_time,
            DecidedProfile, HsmKeyRef, PreparedCertificate,
        };
        use p256::ecdsa::signature::{Signer, Verifier};
        use x509_cert::builder::Builder;
        let issuer_key = p256::ecdsa::SigningKey::from_slice(&[7u8; 32]).unwrap();
        let subject_key = p256::ecdsa::SigningKey::from_slice(&[9u8; 32]).unwrap();
        let spki = spki::SubjectPublicKeyInfoOwned::from_key(subject_key.verifying_key()).unwrap();
        let [ski, aki] = key_id_extensions(&spki, &[1u8; 20]).unwrap();
        // Certificate-sized: past 255 bytes, so the TBS has a two-octet length as real ones do.
        let filler = raw_extension("1.3.6.1.4.1.99999.1".parse().unwrap(), false, {
            let mut v = vec![0x04, 0x81, 200];
            v.extend([0x5a; 200]);
            v
        })
        .unwrap();
        let profile = || DecidedProfile {
            subject: Name::from_str("CN=Subject,serialNumber=110101199003071234,C=CN").unwrap(),
            issuer: Name::from_str("CN=Issuer,O=Bank,C=CN").unwrap(),
            extensions: vec![ski.clone(), aki.clone(), filler.clone()],
        };
        let (serial, from, until) = ([0x42; 16], 1_700_000_000, 1_800_000_000);
        let prepared = PreparedCertificate::new(
            &serial,
            from,
            until,
            spki.clone(),
            profile(),
            *issuer_key.verifying_key(),
        )
        .unwrap();
        assert_eq!(prepared.tbs_der[..2], [0x30, 0x82], "a two-octet length");
        let signature: p256::ecdsa::DerSignature = issuer_key.sign(&prepared.tbs_der);
        let der = prepared.assemble(signature.as_bytes()).unwrap();

        // The same inputs through x509-cert's own assembly.
        let mut builder = x509_cert::builder::CertificateBuilder::new(
            profile(),
            x509_cert::serial_number::SerialNumber::new(&serial).unwrap(),
            x509_cert::time::Validity::new(x509_time(from).unwrap(), x509_time(until).unwrap()),
            spki,
        )
        .unwrap();
        let signer = HsmKeyRef(*issuer_key.verifying_key());
        assert_eq!(builder.finalize(&signer).unwrap(), prepared.tbs_der);
        let theirs = builder
            .assemble(signature_bits(signature.as_bytes()).unwrap(), &signer)
            .unwrap();
        assert_eq!(der, theirs.to_der().unwrap(), "byte for byte");

        let cert = x509_cert::Certificate::from_der(&der).unwrap();
        assert_eq!(cert.signature_algorithm(), &ecdsa_sha256());
        assert_eq!(
            cert.tbs_certificate().signature(),
            cert.signature_algorithm()
        );
        let sig = p256::ecdsa::DerSignature::from_bytes(cert.signature().raw_bytes()).unwrap();
        issuer_key
            .verifying_key()
            .verify(&prepared.tbs_der, &sig)
            .unwrap();
    }

    #[test]
    fn name_text_is_what_x509_cert_display_writes() {
        const CN: &str = "2.5.4.3";
        let utf8 = |s: &str| Any::from(Utf8StringRef::new(s).unwrap());
        let mut names: Vec<Name> = [
            "CN=张三,serialNumber=110101199003071234,O=Bank A,C=CN",
            "CN=x",
            "CN=a\\,b\\+c\\;d\\<e\\>f\\\"g\\\\h,OU=Retail+L=Beijing,ST=BJ",
            "CN=\\ leading and trailing\\ ,O=O",
            "CN=\\#hash,emailAddress=a@b.example",
            "DC=example,DC=com,UID=u1,street=1 Road",
        ]
        .iter()
        .map(|s| Name::from_str(s).unwrap_or_else(|e| panic!("{s}: {e}")))
        .collect();
        names.push(name_of(Vec::new()));
        names.push(name_of(vec![
            vec![atv(CN, utf8("ctl\u{1}\u{7f}x"))],
            vec![atv(
                "2.5.4.6",
                Any::from(PrintableStringRef::new("CN").unwrap()),
            )],
            vec![atv(
                "2.5.4.10",
                Any::from(Ia5StringRef::new("ia5").unwrap()),
            )],
            vec![atv(
                "2.5.4.11",
                Any::from(TeletexStringRef::new("teletex").unwrap()),
            )],
            // An attribute type const-oid does not name, and a value that is not a string.
            vec![atv("1.2.3.4.5", utf8("unknown"))],
            vec![atv(
                CN,
                Any::from(der::asn1::OctetStringRef::new(b"\x01\x02").unwrap()),
            )],
            // Multi-valued RDN, in SET OF order.
            vec![atv(CN, utf8("one")), atv("2.5.4.5", utf8("two"))],
        ]));
        for name in &names {
            assert_eq!(name_text(name), name.to_string(), "{name:?}");
        }
        // Twice: the remembered names give the same text.
        for name in &names {
            assert_eq!(name_text(name), name.to_string());
        }
    }
}
