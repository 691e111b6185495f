//! What a signature format (CMS, JWS) tells the validation: for each signer, the certificate
//! it names or carries, the algorithms, the claimed signing time, and the outcome of the
//! cryptographic checks. Path validation, revocation and policy come after, in `verify`.

use std::sync::Arc;

use super::certs::KnownCert;

/// The container a signature came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SignatureFormat {
    CmsAttached,
    CmsDetached,
    JwsCompact,
    JwsFlattened,
}

/// Digest algorithms a signature may use.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DigestAlg {
    Sha1,
    Sha256,
    Sha384,
    Sha512,
    Sm3,
    /// Anything else, by OID or name.
    Other(String),
}

/// Signature algorithms a signature may use.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SigAlg {
    /// ECDSA (the curve is the key's: P-256, P-384 ...).
    Ecdsa,
    /// RSA PKCS#1 v1.5.
    RsaPkcs1,
    RsaPss,
    /// SM2 (GM/T 0003), recognized but not supported.
    Sm2,
    /// HMAC or `none` in a JWS: not a signature at all.
    NotASignature(String),
    Other(String),
}

/// How the signature names its signer when it does not carry the certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignerRef {
    /// CMS IssuerAndSerialNumber: the issuer Name (DER) and the serial (lowercase hex, no
    /// leading zero byte, as the store keeps it).
    IssuerSerial { issuer_der: Vec<u8>, serial: String },
    /// CMS SubjectKeyIdentifier.
    SubjectKeyId(Vec<u8>),
    /// JWS `x5t#S256`: SHA-256 of the certificate DER.
    Thumbprint(Vec<u8>),
    /// Nothing usable.
    None,
}

/// Outcome of the cryptographic checks of one signer, in ETSI terms.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "result", content = "detail")]
pub enum Crypto {
    /// The signature verifies under the certificate's key, and the content matches.
    Valid,
    /// The signed attributes' message-digest does not match the content (HASH_FAILURE).
    HashFailure,
    /// The signature does not verify (SIG_CRYPTO_FAILURE).
    SigCryptoFailure(String),
    /// An algorithm Signet does not verify (SM2, RSA-PSS ...): CRYPTO_CONSTRAINTS_FAILURE.
    AlgorithmNotSupported(String),
    /// No certificate to check with (NO_SIGNING_CERTIFICATE_FOUND).
    NotChecked,
}

/// One check of the signed attributes or header, for the report.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AttributeCheck {
    /// `content-type`, `message-digest`, `signing-time`, `ess-signing-certificate-v2`,
    /// `jws-crit`, ...
    pub name: String,
    pub passed: bool,
    pub detail: String,
}

/// One signer of a signature, as far as the format can tell.
#[derive(Debug, Clone)]
pub struct SignerEvidence {
    pub format: SignatureFormat,
    /// The signer's certificate: carried by the signature or found through `resolve`.
    pub certificate: Option<Arc<KnownCert>>,
    /// How the signature named the signer.
    pub signer_ref: SignerRef,
    /// Other certificates the signature carries (candidate intermediates), DER order kept.
    pub other_certificates: Vec<Arc<KnownCert>>,
    pub digest: DigestAlg,
    pub algorithm: SigAlg,
    /// The signer's claimed signing time (CMS signing-time, JWS `iat`), Unix seconds.
    pub claimed_signing_time: Option<i64>,
    /// Whether signed attributes (CMS) or a protected header (JWS) were present.
    pub signed_attributes: bool,
    pub checks: Vec<AttributeCheck>,
    pub crypto: Crypto,
    /// SHA-256 of the content the signature covers (the attached content, or the
    /// instruction when detached): what the replay guard and the report name.
    pub content_sha256: [u8; 32],
    /// The content the signature carries (CMS attached, JWS with its payload), when it carries
    /// one and no instruction was presented beside it: the instruction whose id the replay
    /// guard keeps then.
    pub attached_content: Option<Arc<[u8]>>,
}

/// Why a signature could not be read at all (FORMAT_FAILURE).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FormatError(pub String);

/// Where the formats get certificates: those a signature names but does not carry (from the
/// store), and the decoding of those it carries (which a verifier keeps, see `certs`).
pub trait CertificateResolver {
    fn resolve(&self, signer: &SignerRef) -> Option<Arc<KnownCert>>;

    /// Decodes a carried certificate; the default keeps nothing.
    fn certificate(&self, der: &[u8]) -> Result<Arc<KnownCert>, der::Error> {
        KnownCert::parse(der).map(Arc::new)
    }
}
