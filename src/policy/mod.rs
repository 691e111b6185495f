//! Certificate profiles: types, loading and validation. Pure: reads TOML text it is given
//! (`load_dir` is the one function that touches the file system).

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use const_oid::ObjectIdentifier;
use serde::Deserialize;

use crate::ca::IssuerId;

mod signature;
pub use signature::{
    AcceptedPolicy, PolicyDigest, ReplayRules, SignaturePolicy, TimeRules, SIGNATURE_POLICY_FILE,
};

/// A profile file that cannot be used: which file, which field, why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("policy {file}: field `{field}`: {reason}")]
pub struct PolicyError {
    pub file: String,
    pub field: String,
    pub reason: String,
}

/// Subject key types a profile may allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyType {
    P256,
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyType::P256 => "P-256",
        })
    }
}

/// keyUsage bits an end-entity profile may ask for (CA bits are refused at load).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum KeyUsageBit {
    #[serde(rename = "digitalSignature")]
    DigitalSignature,
    #[serde(rename = "nonRepudiation")]
    NonRepudiation,
    #[serde(rename = "keyEncipherment")]
    KeyEncipherment,
    #[serde(rename = "keyAgreement")]
    KeyAgreement,
}

/// extendedKeyUsage purposes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum ExtendedKeyUsage {
    #[serde(rename = "clientAuth")]
    ClientAuth,
    #[serde(rename = "emailProtection")]
    EmailProtection,
    #[serde(rename = "codeSigning")]
    CodeSigning,
    #[serde(rename = "timeStamping")]
    TimeStamping,
}

impl ExtendedKeyUsage {
    /// Whether a certificate for `purposes` marks its extendedKeyUsage critical: RFC 3161
    /// section 2.3 requires it of a time-stamping certificate; other purposes leave it
    /// non-critical, as RFC 5280 4.2.1.12 allows.
    pub fn is_critical_for(purposes: &[ExtendedKeyUsage]) -> bool {
        purposes == [ExtendedKeyUsage::TimeStamping]
    }

    pub fn oid(self) -> ObjectIdentifier {
        use const_oid::db::rfc5280;
        match self {
            ExtendedKeyUsage::ClientAuth => rfc5280::ID_KP_CLIENT_AUTH,
            ExtendedKeyUsage::EmailProtection => rfc5280::ID_KP_EMAIL_PROTECTION,
            ExtendedKeyUsage::CodeSigning => rfc5280::ID_KP_CODE_SIGNING,
            ExtendedKeyUsage::TimeStamping => rfc5280::ID_KP_TIME_STAMPING,
        }
    }
}

/// What the profile vouches for about where the private key lives (reported under article 13).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum KeyCustody {
    #[serde(rename = "customer-device")]
    CustomerDevice,
    #[serde(rename = "hsm")]
    Hsm,
}

/// How the subject's ID number is written into `serialNumber`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
pub enum IdNumberForm {
    #[default]
    #[serde(rename = "clear")]
    Clear,
    /// HMAC-SHA256 of the ID number under the CA's ID-hash key, hex (personal-information minimization).
    #[serde(rename = "keyed-hash")]
    KeyedHash,
}

/// Subject attributes Signet knows how to write, with their RFC 5280 string types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Hash)]
pub enum SubjectAttr {
    C,
    ST,
    L,
    O,
    OU,
    CN,
    #[serde(rename = "serialNumber")]
    SerialNumber,
}

impl SubjectAttr {
    pub const ALL: [SubjectAttr; 7] = [
        SubjectAttr::C,
        SubjectAttr::ST,
        SubjectAttr::L,
        SubjectAttr::O,
        SubjectAttr::OU,
        SubjectAttr::CN,
        SubjectAttr::SerialNumber,
    ];

    pub fn oid(self) -> ObjectIdentifier {
        use const_oid::db::rfc4519;
        match self {
            SubjectAttr::C => rfc4519::C,
            SubjectAttr::ST => rfc4519::ST,
            SubjectAttr::L => rfc4519::L,
            SubjectAttr::O => rfc4519::O,
            SubjectAttr::OU => rfc4519::OU,
            SubjectAttr::CN => rfc4519::CN,
            SubjectAttr::SerialNumber => rfc4519::SERIAL_NUMBER,
        }
    }

    pub fn from_oid(oid: &ObjectIdentifier) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.oid() == *oid)
    }

    /// RFC 5280 upper bound on the value's length, in characters.
    pub fn max_len(self) -> usize {
        match self {
            SubjectAttr::C => 2,
            SubjectAttr::SerialNumber => 64,
            SubjectAttr::CN | SubjectAttr::O | SubjectAttr::OU => 64,
            SubjectAttr::ST | SubjectAttr::L => 128,
        }
    }

    /// C and serialNumber are PrintableString (RFC 5280 appendix A); the rest UTF8String.
    pub fn is_printable_string(self) -> bool {
        matches!(self, SubjectAttr::C | SubjectAttr::SerialNumber)
    }

    pub fn name(self) -> &'static str {
        match self {
            SubjectAttr::C => "C",
            SubjectAttr::ST => "ST",
            SubjectAttr::L => "L",
            SubjectAttr::O => "O",
            SubjectAttr::OU => "OU",
            SubjectAttr::CN => "CN",
            SubjectAttr::SerialNumber => "serialNumber",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubjectRules {
    pub required: Vec<SubjectAttr>,
    #[serde(default)]
    pub optional: Vec<SubjectAttr>,
    #[serde(default)]
    pub fixed: Vec<SubjectAttr>,
    #[serde(default)]
    pub id_number: IdNumberForm,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileFile {
    description: String,
    issuer: String,
    validity_days: u32,
    key_types: Vec<KeyType>,
    key_usage: Vec<KeyUsageBit>,
    #[serde(default)]
    extended_key_usage: Vec<ExtendedKeyUsage>,
    policy_oid: String,
    key_custody: KeyCustody,
    #[serde(default)]
    allow_hold: bool,
    subject: SubjectRules,
}

/// A validated certificate profile.
#[derive(Debug, Clone)]
pub struct Profile {
    pub name: String,
    pub description: String,
    pub issuer: IssuerId,
    pub validity_days: u32,
    pub key_types: Vec<KeyType>,
    pub key_usage: Vec<KeyUsageBit>,
    pub extended_key_usage: Vec<ExtendedKeyUsage>,
    pub policy_oid: ObjectIdentifier,
    pub key_custody: KeyCustody,
    pub allow_hold: bool,
    pub subject: SubjectRules,
}

/// Longest certificate lifetime any profile may ask for.
pub const MAX_VALIDITY_DAYS: u32 = 1095;

impl Profile {
    /// Parses and validates one profile. `file` names it in errors.
    pub fn parse(name: &str, file: &str, text: &str) -> Result<Profile, PolicyError> {
        let err = |field: &str, reason: String| PolicyError {
            file: file.into(),
            field: field.into(),
            reason,
        };
        let raw: ProfileFile = toml::from_str(text).map_err(|e| {
            // toml's message names the key; keep its first line.
            let msg = e.message().to_string();
            let field = e
                .span()
                .and_then(|s| text.get(s))
                .map(|s| s.split(['=', '\n']).next().unwrap_or("").trim().to_string())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "(file)".into());
            err(&field, msg)
        })?;
        let issuer = match raw.issuer.as_str() {
            "customer" => IssuerId::Customer,
            "teller" => IssuerId::Teller,
            other => {
                return Err(err(
                    "issuer",
                    format!("{other:?} is not an issuing CA (customer or teller)"),
                ))
            }
        };
        if raw.validity_days == 0 || raw.validity_days > MAX_VALIDITY_DAYS {
            return Err(err(
                "validity_days",
                format!("must be between 1 and {MAX_VALIDITY_DAYS}"),
            ));
        }
        if raw.key_types.is_empty() {
            return Err(err("key_types", "allows no key type".into()));
        }
        if raw.key_usage.is_empty() {
            return Err(err("key_usage", "is empty".into()));
        }
        // Every key type Signet certifies is an elliptic-curve key (RFC 5480 3: such a key
        // never has keyEncipherment; it does not encrypt keys).
        if raw.key_usage.contains(&KeyUsageBit::KeyEncipherment) {
            return Err(err(
                "key_usage",
                "keyEncipherment is for RSA keys (RFC 5480 section 3); the profile's keys are elliptic-curve keys: use keyAgreement for key exchange".into(),
            ));
        }
        // Arcs are limited to 32 bits: const-oid and pkilint refuse larger ones, so 2.25 UUID
        // arcs cannot be used (see policies/README.md).
        let policy_oid = ObjectIdentifier::new(&raw.policy_oid).map_err(|e| {
            err(
                "policy_oid",
                format!("{:?} is not a usable OID: {e}", raw.policy_oid),
            )
        })?;
        let s = &raw.subject;
        if !s.required.contains(&SubjectAttr::CN) {
            return Err(err("subject.required", "must include CN".into()));
        }
        let mut seen = BTreeMap::new();
        for (list, attrs) in [
            ("subject.required", &s.required),
            ("subject.optional", &s.optional),
            ("subject.fixed", &s.fixed),
        ] {
            for a in attrs {
                if let Some(prev) = seen.insert(*a, list) {
                    return Err(err(
                        list,
                        format!("{} is already listed in {prev}", a.name()),
                    ));
                }
            }
        }
        for a in &s.fixed {
            if !matches!(a, SubjectAttr::O | SubjectAttr::C) {
                return Err(err(
                    "subject.fixed",
                    format!("{} cannot be fixed by the bank (only O and C)", a.name()),
                ));
            }
        }
        if !s.fixed.contains(&SubjectAttr::O) || !s.fixed.contains(&SubjectAttr::C) {
            return Err(err(
                "subject.fixed",
                "must list O and C: the bank, never the requester, names the organization".into(),
            ));
        }
        // RFC 3161 2.3: a time-stamping unit's certificate is for that purpose alone (and its
        // extension is critical: see `ExtendedKeyUsage::is_critical_for`).
        if raw
            .extended_key_usage
            .contains(&ExtendedKeyUsage::TimeStamping)
            && raw.extended_key_usage.len() > 1
        {
            return Err(err(
                "extended_key_usage",
                "timeStamping must be the only purpose (RFC 3161 section 2.3: a time-stamping authority's certificate is for time-stamping alone)".into(),
            ));
        }
        if s.id_number == IdNumberForm::KeyedHash && !seen.contains_key(&SubjectAttr::SerialNumber)
        {
            return Err(err(
                "subject.id_number",
                "keyed-hash needs serialNumber among the subject attributes".into(),
            ));
        }
        Ok(Profile {
            name: name.into(),
            description: raw.description,
            issuer,
            validity_days: raw.validity_days,
            key_types: raw.key_types,
            key_usage: raw.key_usage,
            extended_key_usage: raw.extended_key_usage,
            policy_oid,
            key_custody: raw.key_custody,
            allow_hold: raw.allow_hold,
            subject: raw.subject,
        })
    }
}

/// All profiles of a folder, by name.
#[derive(Debug, Clone, Default)]
pub struct Profiles {
    by_name: BTreeMap<String, Profile>,
}

impl Profiles {
    /// Loads every `*.toml` of `dir` except signature policies (files named `*-signature.toml`).
    pub fn load_dir(dir: &Path) -> Result<Profiles, PolicyError> {
        let entries = std::fs::read_dir(dir).map_err(|e| PolicyError {
            file: dir.display().to_string(),
            field: "(folder)".into(),
            reason: format!("cannot read the policies folder: {e}"),
        })?;
        let mut by_name = BTreeMap::new();
        let mut paths: Vec<_> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for path in paths {
            let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
                continue;
            };
            if path.extension().and_then(|e| e.to_str()) != Some("toml")
                || stem.ends_with("-signature")
            {
                continue;
            }
            let file = path.display().to_string();
            let text = std::fs::read_to_string(&path).map_err(|e| PolicyError {
                file: file.clone(),
                field: "(file)".into(),
                reason: e.to_string(),
            })?;
            by_name.insert(stem.to_string(), Profile::parse(stem, &file, &text)?);
        }
        if by_name.is_empty() {
            return Err(PolicyError {
                file: dir.display().to_string(),
                field: "(folder)".into(),
                reason: "holds no profile (*.toml)".into(),
            });
        }
        Ok(Profiles { by_name })
    }

    pub fn get(&self, name: &str) -> Option<&Profile> {
        self.by_name.get(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CUSTOMER: &str = include_str!("../../policies/customer.toml");

    #[test]
    fn shipped_customer_profile_loads() {
        let p = Profile::parse("customer", "customer.toml", CUSTOMER).unwrap();
        assert_eq!(p.issuer, IssuerId::Customer);
        assert_eq!(p.key_custody, KeyCustody::CustomerDevice);
    }

    #[test]
    fn unknown_field_is_refused_with_its_name() {
        let text = format!("{CUSTOMER}\nfavourite_colour = \"red\"\n");
        let e = Profile::parse("c", "c.toml", &text).unwrap_err();
        assert!(e.to_string().contains("favourite_colour"), "{e}");
    }

    #[test]
    fn validity_over_the_maximum_is_refused() {
        let text = CUSTOMER.replace("validity_days = 730", "validity_days = 5000");
        let e = Profile::parse("c", "c.toml", &text).unwrap_err();
        assert_eq!(e.field, "validity_days");
    }

    #[test]
    fn key_encipherment_is_refused_for_elliptic_curve_keys() {
        let text = CUSTOMER.replace(
            "key_usage = [\"digitalSignature\", \"nonRepudiation\"]",
            "key_usage = [\"digitalSignature\", \"keyEncipherment\"]",
        );
        assert_ne!(text, CUSTOMER);
        let e = Profile::parse("c", "c.toml", &text).unwrap_err();
        assert_eq!(e.field, "key_usage");
        assert!(e.reason.contains("RFC 5480"), "{e}");
    }

    #[test]
    fn unknown_issuer_is_refused() {
        let text = CUSTOMER.replace("issuer = \"customer\"", "issuer = \"root\"");
        let e = Profile::parse("c", "c.toml", &text).unwrap_err();
        assert_eq!(e.field, "issuer");
    }

    #[test]
    fn bad_policy_oid_is_refused() {
        let text = CUSTOMER.replace("1.3.6.1.4.1.32473.7373.1.1", "banana");
        let e = Profile::parse("c", "c.toml", &text).unwrap_err();
        assert_eq!(e.field, "policy_oid");
    }

    #[test]
    fn time_stamping_is_refused_beside_another_purpose_and_alone_is_critical() {
        let text = CUSTOMER.replace(
            "extended_key_usage = []",
            "extended_key_usage = [\"timeStamping\", \"clientAuth\"]",
        );
        let e = Profile::parse("c", "c.toml", &text).unwrap_err();
        assert_eq!(e.field, "extended_key_usage");
        let alone = CUSTOMER.replace(
            "extended_key_usage = []",
            "extended_key_usage = [\"timeStamping\"]",
        );
        let p = Profile::parse("c", "c.toml", &alone).unwrap();
        assert!(ExtendedKeyUsage::is_critical_for(&p.extended_key_usage));
        assert!(!ExtendedKeyUsage::is_critical_for(&[
            ExtendedKeyUsage::ClientAuth
        ]));
    }

    #[test]
    fn organization_must_be_fixed_by_the_bank() {
        let text = CUSTOMER.replace("fixed = [\"O\", \"C\"]", "fixed = [\"C\"]");
        let e = Profile::parse("c", "c.toml", &text).unwrap_err();
        assert_eq!(e.field, "subject.fixed");
    }

    #[test]
    fn ca_key_usage_is_not_a_profile_key_usage() {
        let text = CUSTOMER.replace("\"nonRepudiation\"]", "\"keyCertSign\"]");
        assert!(Profile::parse("c", "c.toml", &text).is_err());
    }
}
