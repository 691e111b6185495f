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

/// A certificate prepared for signing: the builder and its to-be-signed DER.
pub struct PreparedCertificate {
    builder: x509_cert::builder::CertificateBuilder<DecidedProfile>,
    signer: HsmKeyRef,
    pub tbs_der: Vec<u8>,
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
        let signer = HsmKeyRef(issuer_key);
        let tbs_der = builder.finalize(&signer)?;
        Ok(PreparedCertificate {
            builder,
            signer,
            tbs_der,
        })
    }

    /// Attaches the HSM's DER signature.
    pub fn assemble(
        self,
        der_sig: &[u8],
    ) -> Result<x509_cert::Certificate, x509_cert::builder::Error> {
        use x509_cert::builder::Builder;
        self.builder
            .assemble(signature_bits(der_sig)?, &self.signer)
    }
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
