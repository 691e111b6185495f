//! The HTTPS server certificate of `signet serve`, issued by Signet's customer CA when the
//! config asks for one (`[tls].issue_names`).
//!
//! Unlike every CA key, the TLS server key is a software key: rustls signs handshakes
//! in-process and cannot call the HSM, so the key is made here (from HSM randomness) and kept
//! in a file readable by its owner only (0600) beside the config. It signs TLS handshakes and
//! nothing else (serverAuth only); losing it means revoking its certificate, not the CA.

use std::io::Write;
use std::net::IpAddr;
use std::path::Path;

use der::asn1::{Ia5String, OctetString};
use der::Decode;
use p256::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
use x509_cert::ext::pkix::certpolicy::PolicyInformation;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::{
    CertificatePolicies, ExtendedKeyUsage, KeyUsage, KeyUsages, SubjectAltName,
};
use zeroize::Zeroizing;

use super::x509::extension;
use super::{pem_certificate, Authority, CaError, IssuerId};
use crate::audit::AuditEvent;

/// The profile name the server certificate is recorded under.
pub const TLS_SERVER_PROFILE: &str = "tls-server";
/// Its certificate policy, beside the validation service's in Signet's service-key arc.
pub const TLS_SERVER_POLICY: const_oid::ObjectIdentifier =
    const_oid::ObjectIdentifier::new_unwrap("1.3.6.1.4.1.32473.7373.2.2");
/// CN of the certificate when the names carry no DNS name.
const DEFAULT_COMMON_NAME: &str = "Signet API";

/// One subjectAltName entry, parsed from `DNS:name` or `IP:address`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerName {
    Dns(String),
    Ip(IpAddr),
}

impl ServerName {
    pub fn parse(s: &str) -> Result<ServerName, CaError> {
        let bad = || {
            CaError::InvalidRequest(format!(
                "server name {s:?}: write DNS:host.example or IP:127.0.0.1"
            ))
        };
        if let Some(d) = s.strip_prefix("DNS:") {
            let ok = !d.is_empty()
                && d.len() <= 253
                && d.split('.').all(|l| {
                    !l.is_empty()
                        && l.len() <= 63
                        && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                });
            return ok
                .then(|| ServerName::Dns(d.to_ascii_lowercase()))
                .ok_or_else(bad);
        }
        if let Some(ip) = s.strip_prefix("IP:") {
            return ip.parse().map(ServerName::Ip).map_err(|_| bad());
        }
        Err(bad())
    }

    fn general_name(&self) -> Result<GeneralName, CaError> {
        Ok(match self {
            ServerName::Dns(d) => GeneralName::DnsName(Ia5String::new(d)?),
            ServerName::Ip(IpAddr::V4(a)) => GeneralName::IpAddress(OctetString::new(a.octets())?),
            ServerName::Ip(IpAddr::V6(a)) => GeneralName::IpAddress(OctetString::new(a.octets())?),
        })
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

impl Authority {
    /// Makes the server key (written to `key_path`, 0600) and has the customer CA certify it
    /// for `names` (serverAuth); writes the chain (leaf, customer CA) to `cert_path`. Does
    /// nothing when `cert_path` exists. Returns whether it made one.
    pub fn ensure_tls_server(
        &self,
        names: &[String],
        cert_path: &Path,
        key_path: &Path,
        actor: &str,
        progress: &dyn Fn(&str),
    ) -> Result<bool, CaError> {
        if !self.is_initialized() {
            return Err(CaError::NotInitialized);
        }
        if cert_path.exists() {
            return Ok(false);
        }
        let names = names
            .iter()
            .map(|n| ServerName::parse(n))
            .collect::<Result<Vec<_>, _>>()?;
        if names.is_empty() {
            return Err(CaError::InvalidRequest(
                "[tls].issue_names is empty: name the server (DNS:... or IP:...)".into(),
            ));
        }
        // The key: 32 bytes from the HSM's generator (retried in the rare case they are not
        // below the group order).
        let secret = loop {
            let raw = Zeroizing::new(self.hsm_random(32)?);
            if let Ok(k) = p256::SecretKey::from_slice(&raw) {
                break k;
            }
        };
        let pkcs8 = secret
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| CaError::InvalidRequest(format!("cannot encode the TLS key: {e}")))?;
        let spki_der = secret
            .public_key()
            .to_public_key_der()
            .map_err(|e| CaError::InvalidRequest(format!("cannot encode the TLS key: {e}")))?;
        let spki = spki::SubjectPublicKeyInfoOwned::from_der(spki_der.as_bytes())?;
        write_private(key_path, pkcs8.as_bytes()).map_err(|e| {
            CaError::InvalidRequest(format!("cannot write {}: {e}", key_path.display()))
        })?;

        let cn = names
            .iter()
            .find_map(|n| match n {
                ServerName::Dns(d) => Some(d.as_str()),
                ServerName::Ip(_) => None,
            })
            .unwrap_or(DEFAULT_COMMON_NAME);
        let subject = self.service_subject(cn)?;
        let san = SubjectAltName(
            names
                .iter()
                .map(ServerName::general_name)
                .collect::<Result<Vec<_>, _>>()?,
        );
        let (serial, der) = self.certify_service_key(
            actor,
            progress,
            TLS_SERVER_PROFILE,
            subject,
            &spki,
            vec![
                extension(&KeyUsage(KeyUsages::DigitalSignature.into()), true)?,
                extension(
                    &ExtendedKeyUsage(vec![const_oid::db::rfc5280::ID_KP_SERVER_AUTH]),
                    false,
                )?,
                extension(&san, false)?,
                extension(
                    &CertificatePolicies(vec![PolicyInformation {
                        policy_identifier: TLS_SERVER_POLICY,
                        policy_qualifiers: None,
                    }]),
                    false,
                )?,
            ],
        )?;
        let chain = format!(
            "{}{}",
            pem_certificate(&der),
            pem_certificate(&self.ca(IssuerId::Customer)?.der)
        );
        std::fs::write(cert_path, chain).map_err(|e| {
            CaError::InvalidRequest(format!("cannot write {}: {e}", cert_path.display()))
        })?;
        let ev = AuditEvent::new(
            actor,
            "ca.tls_server",
            &serial,
            serde_json::json!({"names": names.iter().map(|n| match n {
                ServerName::Dns(d) => format!("DNS:{d}"),
                ServerName::Ip(a) => format!("IP:{a}"),
            }).collect::<Vec<_>>(), "certificate": cert_path.display().to_string()}),
        );
        let audit = self.store.append_audit(self.clock.now(), &ev)?;
        self.auditor.after_commit(&audit);
        progress(&format!(
            "TLS server certificate serial {serial} written to {} (key {}, mode 0600)",
            cert_path.display(),
            key_path.display()
        ));
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_are_dns_or_ip_entries() {
        assert_eq!(
            ServerName::parse("DNS:LocalHost").unwrap(),
            ServerName::Dns("localhost".into())
        );
        assert_eq!(
            ServerName::parse("IP:127.0.0.1").unwrap(),
            ServerName::Ip("127.0.0.1".parse().unwrap())
        );
        for bad in [
            "localhost",
            "DNS:",
            "DNS:a..b",
            "IP:300.1.1.1",
            "URI:x",
            "DNS:a b",
        ] {
            assert!(ServerName::parse(bad).is_err(), "{bad}");
        }
    }
}
