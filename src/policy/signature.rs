//! The payment-instruction signature policy (`policies/payment-signature.toml`).

use std::path::Path;

use const_oid::ObjectIdentifier;
use serde::Deserialize;

use super::{KeyType, KeyUsageBit, PolicyError, Profiles};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PolicyDigest {
    Sha256,
    Sha384,
    Sha512,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayRules {
    pub window_secs: i64,
    pub reject: bool,
    #[serde(default)]
    pub instruction_id_field: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeRules {
    pub revoked_before_claimed_time_fails: bool,
    pub claimed_time_before_not_before_fails: bool,
    pub unclaimed_time_is_validation_time: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    description: String,
    accepted_profiles: Vec<String>,
    #[serde(default)]
    accepted_policy_oids: Vec<String>,
    required_key_usage: Vec<KeyUsageBit>,
    digest_algorithms: Vec<PolicyDigest>,
    key_types: Vec<KeyType>,
    max_clock_skew_secs: i64,
    replay: ReplayRules,
    rules: TimeRules,
}

/// An accepted certificate policy and, for Signet's own profiles, the profile's name.
#[derive(Debug, Clone)]
pub struct AcceptedPolicy {
    pub oid: ObjectIdentifier,
    /// `oid` in dotted form, as every report that accepts it names it (formatted once).
    oid_text: String,
    pub profile: Option<String>,
}

impl AcceptedPolicy {
    /// The OID in dotted form.
    pub fn oid_text(&self) -> &str {
        &self.oid_text
    }

    fn new(oid: ObjectIdentifier, profile: Option<String>) -> Self {
        AcceptedPolicy {
            oid,
            oid_text: oid.to_string(),
            profile,
        }
    }
}

/// The validated signature policy.
#[derive(Debug, Clone)]
pub struct SignaturePolicy {
    pub description: String,
    pub accepted: Vec<AcceptedPolicy>,
    pub required_key_usage: Vec<KeyUsageBit>,
    pub digest_algorithms: Vec<PolicyDigest>,
    pub key_types: Vec<KeyType>,
    pub max_clock_skew_secs: i64,
    pub replay: ReplayRules,
    pub rules: TimeRules,
}

/// The policy file's name in the policies folder.
pub const SIGNATURE_POLICY_FILE: &str = "payment-signature.toml";

impl SignaturePolicy {
    pub fn parse(file: &str, text: &str, profiles: &Profiles) -> Result<Self, PolicyError> {
        let err = |field: &str, reason: String| PolicyError {
            file: file.into(),
            field: field.into(),
            reason,
        };
        let raw: PolicyFile =
            toml::from_str(text).map_err(|e| err("(file)", e.message().to_string()))?;
        let mut accepted = Vec::new();
        for name in &raw.accepted_profiles {
            if let Some(p) = profiles.get(name) {
                accepted.push(AcceptedPolicy::new(p.policy_oid, Some(name.clone())));
            }
        }
        for oid in &raw.accepted_policy_oids {
            let oid = ObjectIdentifier::new(oid)
                .map_err(|e| err("accepted_policy_oids", format!("{oid:?}: {e}")))?;
            accepted.push(AcceptedPolicy::new(oid, None));
        }
        if accepted.is_empty() {
            return Err(err(
                "accepted_profiles",
                "accepts no certificate at all".into(),
            ));
        }
        if raw.digest_algorithms.is_empty() {
            return Err(err("digest_algorithms", "is empty".into()));
        }
        if raw.key_types.is_empty() {
            return Err(err("key_types", "is empty".into()));
        }
        if raw.max_clock_skew_secs < 0 || raw.replay.window_secs <= 0 {
            return Err(err(
                "max_clock_skew_secs / replay.window_secs",
                "must be positive".into(),
            ));
        }
        Ok(SignaturePolicy {
            description: raw.description,
            accepted,
            required_key_usage: raw.required_key_usage,
            digest_algorithms: raw.digest_algorithms,
            key_types: raw.key_types,
            max_clock_skew_secs: raw.max_clock_skew_secs,
            replay: raw.replay,
            rules: raw.rules,
        })
    }

    pub fn load(dir: &Path, profiles: &Profiles) -> Result<Self, PolicyError> {
        let path = dir.join(SIGNATURE_POLICY_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| PolicyError {
            file: path.display().to_string(),
            field: "(file)".into(),
            reason: e.to_string(),
        })?;
        Self::parse(&path.display().to_string(), &text, profiles)
    }

    /// The accepted policy a certificate asserts, if any. A profile's OID counts only for a
    /// certificate of Signet's own hierarchy (`own_hierarchy`): another CA may write it too, and
    /// a profile tells verifiers (article 13) how Signet kept the key.
    pub fn accepts(
        &self,
        oids: &[ObjectIdentifier],
        own_hierarchy: bool,
    ) -> Option<&AcceptedPolicy> {
        self.accepted
            .iter()
            .find(|a| oids.contains(&a.oid) && (own_hierarchy || a.profile.is_none()))
    }
}
