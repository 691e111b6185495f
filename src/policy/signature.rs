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
    #[serde(default = "default_extended_key_usages")]
    accepted_extended_key_usages: Vec<String>,
    digest_algorithms: Vec<PolicyDigest>,
    key_types: Vec<KeyType>,
    max_clock_skew_secs: i64,
    replay: ReplayRules,
    rules: TimeRules,
}

/// Purposes a signer's certificate may name in extendedKeyUsage when a policy file names none:
/// those of a person or a bank signing (Signet's teller certificates say clientAuth).
fn default_extended_key_usages() -> Vec<String> {
    [
        "clientAuth",
        "emailProtection",
        "documentSigning",
        "anyExtendedKeyUsage",
    ]
    .map(String::from)
    .to_vec()
}

/// id-kp-documentSigning (RFC 9336), which const-oid's database does not name.
const ID_KP_DOCUMENT_SIGNING: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.36");

/// An extendedKeyUsage purpose by its RFC 5280 / RFC 9336 name, or a dotted OID.
fn extended_key_usage(name: &str) -> Option<ObjectIdentifier> {
    use const_oid::db::rfc5280 as kp;
    Some(match name {
        "serverAuth" => kp::ID_KP_SERVER_AUTH,
        "clientAuth" => kp::ID_KP_CLIENT_AUTH,
        "codeSigning" => kp::ID_KP_CODE_SIGNING,
        "emailProtection" => kp::ID_KP_EMAIL_PROTECTION,
        "timeStamping" => kp::ID_KP_TIME_STAMPING,
        "OCSPSigning" => kp::ID_KP_OCSP_SIGNING,
        "documentSigning" => ID_KP_DOCUMENT_SIGNING,
        "anyExtendedKeyUsage" => kp::ANY_EXTENDED_KEY_USAGE,
        dotted => return ObjectIdentifier::new(dotted).ok(),
    })
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
    /// Purposes of which a signer's extendedKeyUsage, when it has one, must name at least one
    /// (RFC 5280 4.2.1.12: a certificate with the extension is for those purposes only).
    pub accepted_extended_key_usages: Vec<ObjectIdentifier>,
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
        let accepted_extended_key_usages = raw
            .accepted_extended_key_usages
            .iter()
            .map(|n| {
                extended_key_usage(n).ok_or_else(|| {
                    err(
                        "accepted_extended_key_usages",
                        format!("{n:?} is neither a purpose's name (clientAuth, emailProtection, documentSigning, anyExtendedKeyUsage, ...) nor a dotted OID"),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        // A profile whose certificates carry purposes none of which is accepted could sign no
        // payment: a contradiction in the policy, refused here rather than found per signer.
        for name in &raw.accepted_profiles {
            let Some(p) = profiles.get(name) else {
                continue;
            };
            let ekus: Vec<ObjectIdentifier> =
                p.extended_key_usage.iter().map(|e| e.oid()).collect();
            if !ekus.is_empty()
                && !ekus
                    .iter()
                    .any(|e| accepted_extended_key_usages.contains(e))
            {
                return Err(err(
                    "accepted_extended_key_usages",
                    format!("accepts none of the purposes ({}) that profile {name:?}, an accepted profile, writes in its certificates' extendedKeyUsage: its holders could sign no payment", p.extended_key_usage.iter().map(|e| format!("{e:?}")).collect::<Vec<_>>().join(", ")),
                ));
            }
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
            accepted_extended_key_usages,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn with_ekus(list: &str) -> Result<SignaturePolicy, PolicyError> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
        let profiles = Profiles::load_dir(&dir).unwrap();
        let text = std::fs::read_to_string(dir.join(SIGNATURE_POLICY_FILE)).unwrap();
        let line = text
            .lines()
            .find(|l| l.starts_with("accepted_extended_key_usages"))
            .unwrap();
        let text = text.replace(line, &format!("accepted_extended_key_usages = {list}"));
        SignaturePolicy::parse("test.toml", &text, &profiles)
    }

    #[test]
    fn extended_key_usages_are_read_by_name_or_dotted_oid_and_an_unknown_name_is_refused() {
        let p = with_ekus(r#"["clientAuth", "1.3.6.1.5.5.7.3.36"]"#).unwrap();
        let dotted: Vec<String> = p
            .accepted_extended_key_usages
            .iter()
            .map(|o| o.to_string())
            .collect();
        assert_eq!(dotted, ["1.3.6.1.5.5.7.3.2", "1.3.6.1.5.5.7.3.36"]);
        let e = with_ekus(r#"["clientAuthentication"]"#).unwrap_err();
        assert_eq!(e.field, "accepted_extended_key_usages");
        assert!(e.reason.contains("clientAuthentication"), "{}", e.reason);
    }

    #[test]
    fn a_list_that_leaves_an_accepted_profile_no_purpose_is_refused_and_a_missing_one_defaults() {
        // The teller profile writes clientAuth alone.
        let e = with_ekus(r#"["emailProtection"]"#).unwrap_err();
        assert!(e.reason.contains("\"teller\""), "{}", e.reason);
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
        let profiles = Profiles::load_dir(&dir).unwrap();
        let text = std::fs::read_to_string(dir.join(SIGNATURE_POLICY_FILE)).unwrap();
        let without: String = text
            .lines()
            .filter(|l| !l.starts_with("accepted_extended_key_usages"))
            .map(|l| format!("{l}\n"))
            .collect();
        let p = SignaturePolicy::parse("test.toml", &without, &profiles).unwrap();
        assert_eq!(p.accepted_extended_key_usages.len(), 4);
    }
}
