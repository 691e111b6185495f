//! The certificate subject: built from the bank's vetted data under the profile's rules, with
//! RFC 5280 string types. The CSR's own subject plays no part.

use std::collections::BTreeMap;
use std::str::FromStr;

use der::asn1::{Any, SetOfVec};
use der::{Decode, Encode, Tag};
use x509_cert::attr::AttributeTypeAndValue;
use x509_cert::name::{Name, RdnSequence, RelativeDistinguishedName};

use super::RaError;
use crate::policy::{IdNumberForm, Profile, SubjectAttr};

/// The bank's fixed subject attributes.
#[derive(Debug, Clone)]
pub struct BankIdentity {
    pub organization: String,
    pub country: String,
}

/// Escapes a value for an RFC 4514 string.
pub fn escape_dn_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for (i, c) in v.chars().enumerate() {
        let edge = i == 0 || i + 1 == v.chars().count();
        match c {
            ',' | '+' | '"' | '\\' | '<' | '>' | ';' | '=' => {
                out.push('\\');
                out.push(c);
            }
            '#' if i == 0 => out.push_str("\\#"),
            ' ' if edge => out.push_str("\\ "),
            _ => out.push(c),
        }
    }
    out
}

/// Parses an RFC 4514 DN into attribute → value, refusing what Signet would not write.
pub fn parse_vetted(dn: &str) -> Result<BTreeMap<SubjectAttr, String>, RaError> {
    if dn.len() > 4096 {
        return Err(RaError::Subject(
            "the subject is longer than 4096 bytes".into(),
        ));
    }
    let rdns = RdnSequence::from_str(dn).map_err(|_| {
        RaError::Subject(
            "cannot parse the subject as an RFC 4514 name (e.g. \"CN=Zhang San,serialNumber=110101199003071234\")".into(),
        )
    })?;
    let mut out = BTreeMap::new();
    for rdn in rdns.iter() {
        if rdn.len() != 1 {
            return Err(RaError::Subject(
                "multi-valued RDNs (with '+') are not accepted".into(),
            ));
        }
        for atv in rdn.iter() {
            let attr = SubjectAttr::from_oid(&atv.oid).ok_or_else(|| {
                RaError::Subject(format!("attribute {} is not one Signet writes", atv.oid))
            })?;
            let value = std::str::from_utf8(atv.value.value())
                .map_err(|_| RaError::Subject(format!("{} is not UTF-8", attr.name())))?
                .to_string();
            if out.insert(attr, value).is_some() {
                return Err(RaError::Subject(format!("{} appears twice", attr.name())));
            }
        }
    }
    Ok(out)
}

/// PrintableString's alphabet (X.680 41.4).
fn is_printable(c: char) -> bool {
    c.is_ascii_alphanumeric() || " '()+,-./:=?".contains(c)
}

fn check_value(attr: SubjectAttr, v: &str) -> Result<(), RaError> {
    let bad = |reason: String| RaError::SubjectValue {
        attr: attr.name(),
        reason,
    };
    if v.trim().is_empty() {
        return Err(bad("is empty".into()));
    }
    if v.trim() != v {
        return Err(bad("has leading or trailing blanks".into()));
    }
    if v.chars().any(char::is_control) {
        return Err(bad("contains control characters".into()));
    }
    if v.chars().count() > attr.max_len() {
        return Err(bad(format!("is longer than {} characters", attr.max_len())));
    }
    if attr.is_printable_string() && !v.chars().all(is_printable) {
        return Err(bad(
            "may hold only letters, digits, blanks and ' ( ) + , - . / : = ?".into(),
        ));
    }
    Ok(())
}

/// Builds the subject: the vetted attributes the profile allows, the bank's O and C, in the
/// order C, ST, L, O, OU, CN, serialNumber. `id_hash` turns an ID number into its keyed hash
/// for profiles that ask for it.
pub fn build(
    profile: &Profile,
    vetted: &BTreeMap<SubjectAttr, String>,
    bank: &BankIdentity,
    id_hash: &dyn Fn(&str) -> Result<String, RaError>,
) -> Result<Name, RaError> {
    let rules = &profile.subject;
    for attr in vetted.keys() {
        if rules.fixed.contains(attr) {
            return Err(RaError::Subject(format!(
                "{} is set by the bank, not by the request: leave it out of the subject",
                attr.name()
            )));
        }
        if !rules.required.contains(attr) && !rules.optional.contains(attr) {
            return Err(RaError::Subject(format!(
                "profile {} does not allow {} in the subject",
                profile.name,
                attr.name()
            )));
        }
    }
    for attr in &rules.required {
        if !vetted.contains_key(attr) {
            return Err(RaError::MissingSubjectAttribute {
                profile: profile.name.clone(),
                attr: attr.name(),
            });
        }
    }
    let mut values: BTreeMap<SubjectAttr, String> = BTreeMap::new();
    for (attr, v) in vetted {
        check_value(*attr, v)?;
        let v = if *attr == SubjectAttr::SerialNumber && rules.id_number == IdNumberForm::KeyedHash
        {
            id_hash(v)?
        } else {
            v.clone()
        };
        values.insert(*attr, v);
    }
    if rules.fixed.contains(&SubjectAttr::O) {
        values.insert(SubjectAttr::O, bank.organization.clone());
    }
    if rules.fixed.contains(&SubjectAttr::C) {
        values.insert(SubjectAttr::C, bank.country.clone());
    }
    let mut rdns = Vec::new();
    for attr in SubjectAttr::ALL {
        let Some(v) = values.get(&attr) else { continue };
        check_value(attr, v)?;
        let tag = if attr.is_printable_string() {
            Tag::PrintableString
        } else {
            Tag::Utf8String
        };
        let atv = AttributeTypeAndValue {
            oid: attr.oid(),
            value: Any::new(tag, v.as_bytes()).map_err(|e| RaError::Subject(e.to_string()))?,
        };
        let set = SetOfVec::try_from(vec![atv]).map_err(|e| RaError::Subject(e.to_string()))?;
        rdns.push(RelativeDistinguishedName::from(set));
    }
    // Name's checks run on decoding: go through DER rather than the unchecked constructor.
    let der = RdnSequence::from(rdns)
        .to_der()
        .map_err(|e| RaError::Subject(e.to_string()))?;
    Name::from_der(&der).map_err(|e| RaError::Subject(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn customer() -> Profile {
        Profile::parse(
            "customer",
            "customer.toml",
            include_str!("../../policies/customer.toml"),
        )
        .unwrap()
    }

    fn bank() -> BankIdentity {
        BankIdentity {
            organization: "测试银行".into(),
            country: "CN".into(),
        }
    }

    fn no_hash(v: &str) -> Result<String, RaError> {
        Ok(v.to_string())
    }

    #[test]
    fn subject_gets_the_banks_organization_and_country() {
        let v = parse_vetted("CN=张三,serialNumber=110101199003071234").unwrap();
        let name = build(&customer(), &v, &bank(), &no_hash).unwrap();
        assert_eq!(
            name.to_string(),
            "SERIALNUMBER=110101199003071234,CN=张三,O=测试银行,C=CN"
        );
    }

    #[test]
    fn country_and_serial_number_are_printable_strings() {
        let v = parse_vetted("CN=张三,serialNumber=110101199003071234").unwrap();
        let name = build(&customer(), &v, &bank(), &no_hash).unwrap();
        for atv in name.iter() {
            let expect =
                if atv.oid == SubjectAttr::C.oid() || atv.oid == SubjectAttr::SerialNumber.oid() {
                    Tag::PrintableString
                } else {
                    Tag::Utf8String
                };
            assert_eq!(der::Tagged::tag(&atv.value), expect, "{}", atv.oid);
        }
    }

    #[test]
    fn organization_in_the_request_is_refused() {
        let v = parse_vetted("CN=a,serialNumber=1,O=Evil Corp").unwrap();
        assert!(matches!(
            build(&customer(), &v, &bank(), &no_hash),
            Err(RaError::Subject(_))
        ));
    }

    #[test]
    fn missing_id_number_is_named() {
        let v = parse_vetted("CN=a").unwrap();
        match build(&customer(), &v, &bank(), &no_hash) {
            Err(RaError::MissingSubjectAttribute { attr, .. }) => assert_eq!(attr, "serialNumber"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn non_printable_id_number_is_refused() {
        let v = parse_vetted("CN=a,serialNumber=一二三").unwrap();
        assert!(matches!(
            build(&customer(), &v, &bank(), &no_hash),
            Err(RaError::SubjectValue {
                attr: "serialNumber",
                ..
            })
        ));
    }

    #[test]
    fn escaped_values_round_trip() {
        let dn = format!("CN={},serialNumber=1", escape_dn_value("Li, Lei"));
        let v = parse_vetted(&dn).unwrap();
        assert_eq!(v[&SubjectAttr::CN], "Li, Lei");
    }
}
