//! ECDSA signature verification, the one place Signet checks an ECDSA signature (CSR proof of
//! possession, certificate and CRL signatures in path validation, CMS and JWS signatures).
//!
//! Keys are read and checked once with the `p256` / `p384` crates (which stay the key types
//! elsewhere); the verification itself runs on `ring`, whose P-256 and P-384 code is the
//! assembly that BoringSSL uses: about 2.5 times the rate of the pure-Rust `p256` verifier on
//! this kind of machine. Digest/curve pairs `ring` does not offer (SHA-1 or SHA-512 with
//! either curve) fall back to the pure-Rust verifiers over a software digest.

use sha2::Digest as _;
use signature::hazmat::PrehashVerifier;

/// The curves Signet verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Curve {
    P256,
    P384,
}

impl Curve {
    pub fn name(self) -> &'static str {
        match self {
            Curve::P256 => "P-256",
            Curve::P384 => "P-384",
        }
    }

    /// Bytes of r‖s.
    pub fn fixed_len(self) -> usize {
        match self {
            Curve::P256 => 64,
            Curve::P384 => 96,
        }
    }
}

/// The digest an ECDSA signature was made over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hash {
    Sha1,
    Sha256,
    Sha384,
    Sha512,
}

/// How the signature value is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigEncoding {
    /// ECDSA-Sig-Value (X.509, CMS, CSRs).
    Der,
    /// r‖s of the curve's size (JWS).
    Fixed,
}

/// Why a signature did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EcdsaError {
    /// The public key is not a point of its curve.
    #[error("the {0} public key is not a valid curve point")]
    BadKey(&'static str),
    /// The signature value is not an encoding of (r, s) for the curve.
    #[error("the signature is not a valid {encoding:?} ECDSA signature for {curve}")]
    BadEncoding {
        curve: &'static str,
        encoding: SigEncoding,
    },
    /// Well formed, but the signature does not verify under the key.
    #[error("the signature does not verify under the public key")]
    Mismatch,
}

/// A public key ready for verification: checked once, kept as its uncompressed point.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EcdsaKey {
    curve: Curve,
    /// Uncompressed SEC1 point (0x04 ‖ x ‖ y), the form `ring` takes.
    point: Vec<u8>,
}

impl EcdsaKey {
    /// Reads a SEC1 point (compressed or uncompressed) of `curve`.
    pub fn from_sec1(curve: Curve, bytes: &[u8]) -> Result<Self, EcdsaError> {
        let point = match curve {
            Curve::P256 => p256::ecdsa::VerifyingKey::from_sec1_bytes(bytes)
                .map(|k| k.to_sec1_point(false).as_bytes().to_vec()),
            Curve::P384 => p384::ecdsa::VerifyingKey::from_sec1_bytes(bytes)
                .map(|k| k.to_sec1_point(false).as_bytes().to_vec()),
        }
        .map_err(|_| EcdsaError::BadKey(curve.name()))?;
        Ok(EcdsaKey { curve, point })
    }

    pub fn curve(&self) -> Curve {
        self.curve
    }

    /// The uncompressed SEC1 point.
    pub fn point(&self) -> &[u8] {
        &self.point
    }

    /// Verifies `sig` over `message` hashed with `hash`.
    pub fn verify(
        &self,
        hash: Hash,
        message: &[u8],
        sig: &[u8],
        encoding: SigEncoding,
    ) -> Result<(), EcdsaError> {
        self.check_encoding(sig, encoding)?;
        use ring::signature as rs;
        let alg: Option<&'static rs::EcdsaVerificationAlgorithm> =
            match (self.curve, hash, encoding) {
                (Curve::P256, Hash::Sha256, SigEncoding::Der) => Some(&rs::ECDSA_P256_SHA256_ASN1),
                (Curve::P256, Hash::Sha384, SigEncoding::Der) => Some(&rs::ECDSA_P256_SHA384_ASN1),
                (Curve::P384, Hash::Sha256, SigEncoding::Der) => Some(&rs::ECDSA_P384_SHA256_ASN1),
                (Curve::P384, Hash::Sha384, SigEncoding::Der) => Some(&rs::ECDSA_P384_SHA384_ASN1),
                (Curve::P256, Hash::Sha256, SigEncoding::Fixed) => {
                    Some(&rs::ECDSA_P256_SHA256_FIXED)
                }
                (Curve::P384, Hash::Sha384, SigEncoding::Fixed) => {
                    Some(&rs::ECDSA_P384_SHA384_FIXED)
                }
                _ => None,
            };
        match alg {
            Some(alg) => rs::UnparsedPublicKey::new(alg, &self.point)
                .verify(message, sig)
                .map_err(|_| EcdsaError::Mismatch),
            None => self.verify_prehash_soft(&digest(hash, message), sig, encoding),
        }
    }

    /// Refuses a signature that is not an encoding of (r, s), so that a malformed value and a
    /// wrong one are told apart.
    fn check_encoding(&self, sig: &[u8], encoding: SigEncoding) -> Result<(), EcdsaError> {
        let ok = match (self.curve, encoding) {
            (Curve::P256, SigEncoding::Der) => p256::ecdsa::Signature::from_der(sig).is_ok(),
            (Curve::P256, SigEncoding::Fixed) => p256::ecdsa::Signature::from_slice(sig).is_ok(),
            (Curve::P384, SigEncoding::Der) => p384::ecdsa::Signature::from_der(sig).is_ok(),
            (Curve::P384, SigEncoding::Fixed) => p384::ecdsa::Signature::from_slice(sig).is_ok(),
        };
        if ok {
            Ok(())
        } else {
            Err(EcdsaError::BadEncoding {
                curve: self.curve.name(),
                encoding,
            })
        }
    }

    fn verify_prehash_soft(
        &self,
        prehash: &[u8],
        sig: &[u8],
        encoding: SigEncoding,
    ) -> Result<(), EcdsaError> {
        let bad = EcdsaError::BadEncoding {
            curve: self.curve.name(),
            encoding,
        };
        match self.curve {
            Curve::P256 => {
                let key = p256::ecdsa::VerifyingKey::from_sec1_bytes(&self.point)
                    .map_err(|_| EcdsaError::BadKey("P-256"))?;
                let s = match encoding {
                    SigEncoding::Der => p256::ecdsa::Signature::from_der(sig),
                    SigEncoding::Fixed => p256::ecdsa::Signature::from_slice(sig),
                }
                .map_err(|_| bad)?;
                key.verify_prehash(prehash, &s)
                    .map_err(|_| EcdsaError::Mismatch)
            }
            Curve::P384 => {
                let key = p384::ecdsa::VerifyingKey::from_sec1_bytes(&self.point)
                    .map_err(|_| EcdsaError::BadKey("P-384"))?;
                let s = match encoding {
                    SigEncoding::Der => p384::ecdsa::Signature::from_der(sig),
                    SigEncoding::Fixed => p384::ecdsa::Signature::from_slice(sig),
                }
                .map_err(|_| bad)?;
                key.verify_prehash(prehash, &s)
                    .map_err(|_| EcdsaError::Mismatch)
            }
        }
    }
}

fn digest(hash: Hash, data: &[u8]) -> Vec<u8> {
    match hash {
        Hash::Sha1 => sha1::Sha1::digest(data).to_vec(),
        Hash::Sha256 => sha2::Sha256::digest(data).to_vec(),
        Hash::Sha384 => sha2::Sha384::digest(data).to_vec(),
        Hash::Sha512 => sha2::Sha512::digest(data).to_vec(),
    }
}

/// Verifies an ecdsa-with-SHA256 DER signature over `message` under a P-256 SEC1 point: the
/// shape of every signature Signet's own CA makes and of customer CSRs.
pub fn verify_p256_sha256(point: &[u8], message: &[u8], der_sig: &[u8]) -> Result<(), EcdsaError> {
    EcdsaKey::from_sec1(Curve::P256, point)?.verify(
        Hash::Sha256,
        message,
        der_sig,
        SigEncoding::Der,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::signature::Signer;

    fn key() -> p256::ecdsa::SigningKey {
        p256::ecdsa::SigningKey::from_slice(&[7u8; 32]).expect("scalar")
    }

    #[test]
    fn a_p256_der_signature_verifies_and_a_changed_message_does_not() {
        let sk = key();
        let sig: p256::ecdsa::DerSignature = sk.sign(b"pay 100");
        let point = sk.verifying_key().to_sec1_point(true);
        assert_eq!(
            verify_p256_sha256(point.as_bytes(), b"pay 100", sig.as_bytes()),
            Ok(())
        );
        assert_eq!(
            verify_p256_sha256(point.as_bytes(), b"pay 900", sig.as_bytes()),
            Err(EcdsaError::Mismatch)
        );
    }

    #[test]
    fn a_malformed_signature_is_told_apart_from_a_wrong_one() {
        let sk = key();
        let point = sk.verifying_key().to_sec1_point(false);
        assert!(matches!(
            verify_p256_sha256(point.as_bytes(), b"x", &[0x30, 0x02, 0x02, 0x00]),
            Err(EcdsaError::BadEncoding { .. })
        ));
    }

    #[test]
    fn sha512_with_p256_falls_back_to_the_software_verifier() {
        let sk = key();
        let prehash = sha2::Sha512::digest(b"pay 100");
        let sig: p256::ecdsa::Signature =
            signature::hazmat::PrehashSigner::sign_prehash(&sk, &prehash).expect("sign");
        let k = EcdsaKey::from_sec1(
            Curve::P256,
            sk.verifying_key().to_sec1_point(false).as_bytes(),
        )
        .expect("key");
        let der = sig.to_der();
        assert_eq!(
            k.verify(Hash::Sha512, b"pay 100", der.as_bytes(), SigEncoding::Der),
            Ok(())
        );
        assert_eq!(
            k.verify(Hash::Sha512, b"pay 101", der.as_bytes(), SigEncoding::Der),
            Err(EcdsaError::Mismatch)
        );
    }

    #[test]
    fn a_point_off_the_curve_is_a_bad_key() {
        let mut p = key()
            .verifying_key()
            .to_sec1_point(false)
            .as_bytes()
            .to_vec();
        p[64] ^= 1;
        assert_eq!(
            EcdsaKey::from_sec1(Curve::P256, &p),
            Err(EcdsaError::BadKey("P-256"))
        );
    }
}
