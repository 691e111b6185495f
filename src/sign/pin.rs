//! Key PINs, checked by Signet: stored as PBKDF2-HMAC-SHA256 with a random salt.

use sha2::Sha256;

const ROUNDS: u32 = 100_000;
const SCHEME: &str = "pbkdf2-sha256";

/// A PIN a teller may choose: 6 to 32 characters, digits or letters.
pub fn check_new(pin: &str) -> Result<(), String> {
    let n = pin.chars().count();
    if !(6..=32).contains(&n) || !pin.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err("a PIN is 6 to 32 letters or digits".into());
    }
    Ok(())
}

/// `pbkdf2-sha256$<rounds>$<salt hex>$<hash hex>`.
pub fn hash(pin: &str, salt: &[u8]) -> String {
    let mut out = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<Sha256>(pin.as_bytes(), salt, ROUNDS, &mut out);
    format!(
        "{SCHEME}${ROUNDS}${}${}",
        hex::encode(salt),
        hex::encode(out)
    )
}

/// Does `pin` match `stored`? Constant time in the hash comparison.
pub fn verify(pin: &str, stored: &str) -> bool {
    let mut parts = stored.split('$');
    let (Some(SCHEME), Some(rounds), Some(salt), Some(expected), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return false;
    };
    let (Ok(rounds), Ok(salt), Ok(expected)) = (
        rounds.parse::<u32>(),
        hex::decode(salt),
        hex::decode(expected),
    ) else {
        return false;
    };
    if rounds == 0 || rounds > 10_000_000 || expected.len() != 32 {
        return false;
    }
    let mut out = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<Sha256>(pin.as_bytes(), &salt, rounds, &mut out);
    constant_time_eq(&out, &expected)
}

pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_right_pin_verifies_and_a_wrong_one_does_not() {
        let stored = hash("246810", b"0123456789abcdef");
        assert!(verify("246810", &stored));
        assert!(!verify("246811", &stored));
        assert!(!verify("246810", "garbage"));
    }

    #[test]
    fn short_or_odd_pins_are_refused() {
        assert!(check_new("12345").is_err());
        assert!(check_new("12 3456").is_err());
        assert!(check_new("123456").is_ok());
    }
}
