//! The verification report: ETSI EN 319 102-1 indications and sub-indications, every check,
//! and the Electronic Signature Law article 13 section.

use std::borrow::Cow;

use serde::Serialize;

use super::evidence::SignatureFormat;

/// Main indication (ETSI EN 319 102-1 5.1.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Indication {
    TotalPassed,
    Indeterminate,
    TotalFailed,
}

/// Sub-indications used by Signet (ETSI EN 319 102-1 table 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SubIndication {
    FormatFailure,
    HashFailure,
    SigCryptoFailure,
    Revoked,
    Expired,
    NotYetValid,
    SigConstraintsFailure,
    ChainConstraintsFailure,
    CertificateChainGeneralFailure,
    CryptoConstraintsFailure,
    NoSigningCertificateFound,
    NoCertificateChainFound,
    RevokedNoPoe,
    OutOfBoundsNoPoe,
    TryLater,
}

/// One check and its outcome. Most names and many details are fixed texts: they are kept
/// borrowed rather than copied into every report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    pub name: Cow<'static, str>,
    pub passed: bool,
    pub detail: Cow<'static, str>,
}

impl Check {
    pub fn new(
        name: impl Into<Cow<'static, str>>,
        passed: bool,
        detail: impl Into<Cow<'static, str>>,
    ) -> Self {
        Check {
            name: name.into(),
            passed,
            detail: detail.into(),
        }
    }
}

/// What the certificate says about the signer (public data: no bank records).
#[derive(Debug, Clone, Serialize)]
pub struct SignerSummary {
    pub subject: String,
    pub serial: String,
    pub issuer: String,
    /// The bank (the certificate's O).
    pub bank: Option<String>,
    /// Signet profile, when the certificate asserts one of Signet's profile policies.
    pub profile: Option<String>,
    pub policy_oid: Option<String>,
    /// Key custody the profile vouches for.
    pub key_custody: Option<String>,
    pub not_before: String,
    pub not_after: String,
}

/// The replay guard's finding.
#[derive(Debug, Clone, Serialize)]
pub struct Replay {
    pub first_seen: String,
}

/// One article 13 condition.
#[derive(Debug, Clone, Serialize)]
pub struct Condition {
    pub condition: &'static str,
    pub text: &'static str,
    /// Whether the evidence supports it.
    pub supported: bool,
    pub evidence: Cow<'static, str>,
}

/// PRC Electronic Signature Law, article 13: a reliable electronic signature.
#[derive(Debug, Clone, Serialize)]
pub struct ElectronicSignatureLaw {
    pub article: &'static str,
    pub conditions: Vec<Condition>,
    /// All four conditions supported.
    pub reliable: bool,
}

/// The verdict on one signer.
#[derive(Debug, Clone, Serialize)]
pub struct SignerReport {
    pub indication: Indication,
    pub sub_indication: Option<SubIndication>,
    pub signer: Option<SignerSummary>,
    pub claimed_signing_time: Option<String>,
    pub checks: Vec<Check>,
    pub electronic_signature_law: ElectronicSignatureLaw,
    pub replay: Option<Replay>,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub indication: Indication,
    pub sub_indication: Option<SubIndication>,
    pub format: Option<SignatureFormat>,
    pub validation_time: String,
    pub instruction_sha256: String,
    pub policy: String,
    /// The first signer, for callers that expect one.
    pub signer: Option<SignerSummary>,
    pub claimed_signing_time: Option<String>,
    pub electronic_signature_law: Option<ElectronicSignatureLaw>,
    pub replay: Option<Replay>,
    pub signers: Vec<SignerReport>,
    pub checks: Vec<Check>,
}

impl Report {
    /// Combines the signers' verdicts: TOTAL_PASSED only if every signer passed; otherwise
    /// the worst indication, with the sub-indication of the first signer that has it.
    pub fn combine(
        format: Option<SignatureFormat>,
        validation_time: String,
        instruction_sha256: String,
        policy: String,
        signers: Vec<SignerReport>,
        checks: Vec<Check>,
    ) -> Report {
        let worst = signers
            .iter()
            .map(|s| s.indication)
            .max()
            .unwrap_or(Indication::TotalFailed);
        let sub = signers
            .iter()
            .find(|s| s.indication == worst)
            .and_then(|s| s.sub_indication);
        let first = signers.first();
        Report {
            indication: worst,
            sub_indication: if signers.is_empty() {
                Some(SubIndication::FormatFailure)
            } else {
                sub
            },
            format,
            validation_time,
            instruction_sha256,
            policy,
            signer: first.and_then(|s| s.signer.clone()),
            claimed_signing_time: first.and_then(|s| s.claimed_signing_time.clone()),
            electronic_signature_law: first.map(|s| s.electronic_signature_law.clone()),
            replay: first.and_then(|s| s.replay.clone()),
            signers,
            checks,
        }
    }

    /// A signature that could not be read at all.
    pub fn format_failure(
        validation_time: String,
        instruction_sha256: String,
        policy: String,
        reason: &str,
    ) -> Report {
        Report {
            indication: Indication::TotalFailed,
            sub_indication: Some(SubIndication::FormatFailure),
            format: None,
            validation_time,
            instruction_sha256,
            policy,
            signer: None,
            claimed_signing_time: None,
            electronic_signature_law: None,
            replay: None,
            signers: Vec::new(),
            checks: vec![Check::new("format", false, reason.to_string())],
        }
    }

    /// Exit status of `signet verify`: 0 passed, 1 failed, 2 indeterminate.
    pub fn exit_code(&self) -> u8 {
        match self.indication {
            Indication::TotalPassed => 0,
            Indication::TotalFailed => 1,
            Indication::Indeterminate => 2,
        }
    }
}

/// RFC 3339 UTC text of a Unix time.
pub fn rfc3339(t: i64) -> String {
    crate::clock::format_utc(t).unwrap_or_else(|| t.to_string())
}
