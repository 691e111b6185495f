//! Policy OIDs with arcs of any size. The project's arc is a 2.25 UUID arc (ITU-T X.667), whose
//! second-level arc is a 128-bit number: more than `const-oid` (32-bit arcs) can hold, so policy
//! OIDs are kept as their dotted text and their DER content octets.

use std::fmt;

/// An OBJECT IDENTIFIER whose arcs fit in 128 bits.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PolicyOid {
    text: String,
    content: Vec<u8>,
}

impl PolicyOid {
    /// Parses dotted decimal (`2.25.3210...131.1.1`).
    pub fn parse(s: &str) -> Result<Self, String> {
        let arcs: Vec<u128> = s
            .split('.')
            .map(|a| {
                if a.is_empty()
                    || !a.bytes().all(|b| b.is_ascii_digit())
                    || (a.len() > 1 && a.starts_with('0'))
                {
                    return Err(format!("{s:?} is not a dotted-decimal OID"));
                }
                a.parse::<u128>()
                    .map_err(|_| format!("{s:?} has an arc over 128 bits"))
            })
            .collect::<Result<_, _>>()?;
        if arcs.len() < 2 || arcs[0] > 2 || (arcs[0] < 2 && arcs[1] > 39) {
            return Err(format!("{s:?} is not a valid OID (first arcs)"));
        }
        let first = arcs[0]
            .checked_mul(40)
            .and_then(|v| v.checked_add(arcs[1]))
            .ok_or_else(|| format!("{s:?} has too large a second arc"))?;
        let mut content = Vec::new();
        for arc in std::iter::once(first).chain(arcs[2..].iter().copied()) {
            base128(arc, &mut content);
        }
        Ok(PolicyOid {
            text: s.to_string(),
            content,
        })
    }

    /// The DER content octets (without tag and length).
    pub fn content(&self) -> &[u8] {
        &self.content
    }

    /// The whole DER encoding, tag and length included.
    pub fn to_der(&self) -> Vec<u8> {
        let mut out = vec![0x06];
        der_length(self.content.len(), &mut out);
        out.extend_from_slice(&self.content);
        out
    }
}

impl fmt::Display for PolicyOid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

fn base128(mut v: u128, out: &mut Vec<u8>) {
    let mut tmp = vec![(v & 0x7f) as u8];
    v >>= 7;
    while v > 0 {
        tmp.push(0x80 | (v & 0x7f) as u8);
        v >>= 7;
    }
    tmp.reverse();
    out.extend_from_slice(&tmp);
}

/// DER definite length.
pub fn der_length(len: usize, out: &mut Vec<u8>) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = (len as u64).to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (8 - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
}

/// DER of `certificatePolicies` with one policy and no qualifiers:
/// SEQUENCE { SEQUENCE { policyIdentifier } }.
pub fn certificate_policies_der(oids: &[&PolicyOid]) -> Vec<u8> {
    let mut infos = Vec::new();
    for oid in oids {
        let id = oid.to_der();
        infos.push(0x30);
        der_length(id.len(), &mut infos);
        infos.extend_from_slice(&id);
    }
    let mut out = vec![0x30];
    der_length(infos.len(), &mut out);
    out.extend_from_slice(&infos);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_oid_matches_const_oid() {
        let ours = PolicyOid::parse("1.2.840.10045.4.3.2").unwrap();
        let theirs = const_oid::ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
        assert_eq!(ours.content(), theirs.as_bytes());
    }

    #[test]
    fn uuid_arc_encodes_in_base128() {
        // X.667 example: 2.25.329800735698586629295641978511506172918
        let oid = PolicyOid::parse("2.25.329800735698586629295641978511506172918").unwrap();
        assert_eq!(
            hex::encode(oid.to_der()),
            "06146983f09da7ebcfdee0c7a1a7b2c0948cc8f9d776" // as `openssl asn1parse -genstr` encodes it
        );
    }

    #[test]
    fn malformed_oids_are_refused() {
        for bad in [
            "",
            "1",
            "3.1",
            "1.40",
            "1..2",
            "1.02",
            "a.b",
            "2.25.999999999999999999999999999999999999999999",
        ] {
            assert!(PolicyOid::parse(bad).is_err(), "{bad}");
        }
    }
}
