//! Key PINs, checked by Signet: PBKDF2-HMAC-SHA256 with a random salt, then HMAC-SHA256 in the
//! token under the PIN key. The stored hash is useless without the token: a copy of the
//! database cannot be tried against guesses (six digits are a million of them).

use sha2::Sha256;

const ROUNDS: u32 = 100_000;
/// PBKDF2 alone: what Signet stored before the PIN key. Still checked; `signet ca upgrade`
/// rewraps such hashes under the PIN key without needing the PINs.
const SCHEME_PBKDF2: &str = "pbkdf2-sha256";
/// PBKDF2, then HMAC-SHA256 in the token.
const SCHEME: &str = "pbkdf2-sha256+token-hmac";
/// What the token's HMAC is computed over, before the PBKDF2 output: a MAC made for another
/// purpose under the same key can never pass for a PIN hash.
const MAC_DOMAIN: &[u8] = b"signet key PIN hash v2\0";

/// A PIN a teller may choose: 6 to 32 characters, digits or letters.
pub fn check_new(pin: &str) -> Result<(), String> {
    let n = pin.chars().count();
    if !(6..=32).contains(&n) || !pin.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err("a PIN is 6 to 32 letters or digits".into());
    }
    Ok(())
}

/// `pbkdf2-sha256+token-hmac$<rounds>$<salt hex>$<mac hex>`; `mac` is the token's
/// HMAC-SHA256 under the PIN key.
pub fn hash<E>(
    pin: &str,
    salt: &[u8],
    mac: impl Fn(&[u8]) -> Result<[u8; 32], E>,
) -> Result<String, E> {
    let derived = derive(pin, salt, ROUNDS);
    Ok(format(SCHEME, ROUNDS, salt, &mac(&mac_input(&derived))?))
}

/// Does `pin` match `stored` (either scheme)? Constant time in the comparison. A stored value
/// that is no hash Signet writes matches nothing.
pub fn verify<E>(
    pin: &str,
    stored: &str,
    mac: impl Fn(&[u8]) -> Result<[u8; 32], E>,
) -> Result<bool, E> {
    let Some(s) = Stored::parse(stored) else {
        return Ok(false);
    };
    let derived = derive(pin, &s.salt, s.rounds);
    let got = if s.bound {
        mac(&mac_input(&derived))?
    } else {
        derived
    };
    Ok(constant_time_eq(&got, &s.hash))
}

/// A PBKDF2-only hash made into the hash of the same PIN under the PIN key (same salt and
/// rounds): the PIN is not needed. None for anything else (already bound, or no hash).
pub fn rewrap<E>(
    stored: &str,
    mac: impl Fn(&[u8]) -> Result<[u8; 32], E>,
) -> Result<Option<String>, E> {
    let Some(s) = Stored::parse(stored).filter(|s| !s.bound) else {
        return Ok(None);
    };
    let derived: [u8; 32] = match s.hash.try_into() {
        Ok(d) => d,
        Err(_) => return Ok(None),
    };
    Ok(Some(format(
        SCHEME,
        s.rounds,
        &s.salt,
        &mac(&mac_input(&derived))?,
    )))
}

/// A stored hash, read.
struct Stored {
    /// Made under the PIN key (else PBKDF2 alone).
    bound: bool,
    rounds: u32,
    salt: Vec<u8>,
    hash: Vec<u8>,
}

impl Stored {
    fn parse(stored: &str) -> Option<Stored> {
        let mut parts = stored.split('$');
        let (Some(scheme), Some(rounds), Some(salt), Some(hash), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return None;
        };
        let bound = match scheme {
            SCHEME => true,
            SCHEME_PBKDF2 => false,
            _ => return None,
        };
        let rounds = rounds.parse::<u32>().ok()?;
        let (salt, hash) = (hex::decode(salt).ok()?, hex::decode(hash).ok()?);
        if rounds == 0 || rounds > 10_000_000 || hash.len() != 32 {
            return None;
        }
        Some(Stored {
            bound,
            rounds,
            salt,
            hash,
        })
    }
}

fn derive(pin: &str, salt: &[u8], rounds: u32) -> [u8; 32] {
    let mut out = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<Sha256>(pin.as_bytes(), salt, rounds, &mut out);
    out
}

fn mac_input(derived: &[u8; 32]) -> Vec<u8> {
    [MAC_DOMAIN, derived.as_slice()].concat()
}

fn format(scheme: &str, rounds: u32, salt: &[u8], hash: &[u8]) -> String {
    format!(
        "{scheme}${rounds}${}${}",
        hex::encode(salt),
        hex::encode(hash)
    )
}

pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.ct_eq(b).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hmac::{Hmac, KeyInit, Mac};
    use std::convert::Infallible;

    /// The token's HMAC under a key of `seed`, computed in software for the test.
    fn token(seed: u8) -> impl Fn(&[u8]) -> Result<[u8; 32], Infallible> {
        move |data| {
            let mut m = Hmac::<Sha256>::new_from_slice(&[seed; 32]).unwrap();
            m.update(data);
            Ok(m.finalize().into_bytes().into())
        }
    }

    /// A hash as Signet stored it before the PIN key.
    fn pbkdf2_only(pin: &str, salt: &[u8]) -> String {
        format(SCHEME_PBKDF2, ROUNDS, salt, &derive(pin, salt, ROUNDS))
    }

    #[test]
    fn the_right_pin_verifies_and_a_wrong_one_does_not() {
        let stored = hash("246810", b"0123456789abcdef", token(1)).unwrap();
        assert!(stored.starts_with("pbkdf2-sha256+token-hmac$100000$"));
        assert!(verify("246810", &stored, token(1)).unwrap());
        assert!(!verify("246811", &stored, token(1)).unwrap());
        assert!(!verify("246810", "garbage", token(1)).unwrap());
    }

    #[test]
    fn a_hash_made_under_the_pin_key_is_useless_without_it() {
        let stored = hash("246810", b"0123456789abcdef", token(1)).unwrap();
        // Another token's key, or PBKDF2 alone (what a copy of the database allows), fails.
        assert!(!verify("246810", &stored, token(2)).unwrap());
        let as_pbkdf2_only = stored.replacen(SCHEME, SCHEME_PBKDF2, 1);
        assert!(!verify("246810", &as_pbkdf2_only, token(1)).unwrap());
    }

    #[test]
    fn an_older_pbkdf2_hash_still_verifies_and_rewraps_without_the_pin() {
        let old = pbkdf2_only("246810", b"0123456789abcdef");
        assert!(verify("246810", &old, token(1)).unwrap());
        let bound = rewrap(&old, token(1))
            .unwrap()
            .expect("a PBKDF2 hash rewraps");
        assert_eq!(
            bound,
            hash("246810", b"0123456789abcdef", token(1)).unwrap()
        );
        assert!(verify("246810", &bound, token(1)).unwrap());
        assert!(!verify("246811", &bound, token(1)).unwrap());
        // Rewrapping is once: a bound hash, or no hash, is left alone.
        assert_eq!(rewrap(&bound, token(1)).unwrap(), None);
        assert_eq!(rewrap("garbage", token(1)).unwrap(), None);
    }

    #[test]
    fn short_or_odd_pins_are_refused() {
        assert!(check_new("12345").is_err());
        assert!(check_new("12 3456").is_err());
        assert!(check_new("123456").is_ok());
    }
}
