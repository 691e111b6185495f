//! Wiring: opens the token, the store and the policies from a config and assembles the layers.

use std::sync::Arc;

use zeroize::Zeroizing;

use crate::audit::Auditor;
use crate::ca::{Authority, CaError, CaSettings, Fault};
use crate::clock::Clock;
use crate::config::Config;
use crate::config::{StoreConfig, StoreLocation};
use crate::hsm::{Hsm, HsmError};
use crate::policy::{PolicyError, Profiles, SignaturePolicy};
use crate::ra::{BankIdentity, Registrar};
use crate::store::{PostgresOptions, PostgresStore, SqliteStore, Store, StoreError};
use crate::verify::anchor_crl::RevocationList;
use crate::verify::path::Anchor;
use crate::verify::Verifier;
use crate::watched::Watched;

/// Why Signet could not start.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Hsm(#[from] HsmError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Ca(#[from] CaError),
    #[error("cannot read the ID-hash key {path}: {reason}")]
    IdHashKey { path: String, reason: String },
    #[error("trust anchor {name}: {reason}")]
    Anchor { name: String, reason: String },
    #[error(transparent)]
    Verify(#[from] crate::verify::VerifyError),
}

/// Opens the store a config selects: SQLite by default, PostgreSQL for a `postgres://` URL
/// (`[store].url` or `SIGNET_STORE_URL`).
pub fn open_store(config: &StoreConfig) -> Result<Arc<dyn Store>, StoreError> {
    Ok(match config.location() {
        StoreLocation::Sqlite(path) => Arc::new(SqliteStore::open(&path)?),
        StoreLocation::Postgres(url) => {
            let password = match &config.password_file {
                Some(p) => {
                    let text = Zeroizing::new(std::fs::read_to_string(p).map_err(|e| {
                        StoreError::Unavailable(format!(
                            "cannot read the store password file {}: {e}",
                            p.display()
                        ))
                    })?);
                    Some(Zeroizing::new(
                        text.trim_end_matches(['\r', '\n']).to_string(),
                    ))
                }
                None => None,
            };
            Arc::new(PostgresStore::open(PostgresOptions {
                url,
                password,
                tls_ca_file: config.tls_ca_file.clone(),
                pool: config.pool,
                connect_timeout: std::time::Duration::from_millis(config.connect_timeout_ms),
                lock_timeout: std::time::Duration::from_millis(config.lock_timeout_ms),
            })?)
        }
    })
}

/// An opened Signet: the HSM, the store and the layers above them.
pub struct Signet {
    pub config: Config,
    pub clock: Clock,
    pub hsm: Arc<Hsm>,
    pub store: Arc<dyn Store>,
    pub authority: Arc<Authority>,
    pub registrar: Registrar,
    /// Present once the CA is initialized.
    pub verifier: Option<Verifier>,
    pub signing: crate::sign::SigningService,
}

impl Signet {
    /// Opens everything the config names. Does not resolve interrupted issuances: call
    /// [`Signet::startup`] once the caller knows who it acts for.
    pub fn open(config: Config, clock: Clock, fault: Fault) -> Result<Signet, OpenError> {
        let profiles = Profiles::load_dir(&config.issuance.policies)?;
        let hsm = Arc::new(Hsm::open(config.hsm_config())?);
        let store = open_store(&config.store)?;
        let settings = settings(&config);
        let auditor = Arc::new(Auditor::new(
            store.clone(),
            hsm.clone(),
            settings.audit_key_label(),
            config.audit.checkpoint_every,
            config.audit.checkpoint_file.clone(),
            clock.clone(),
        ));
        let authority = Arc::new(
            Authority::new(hsm.clone(), store.clone(), clock.clone(), settings, auditor)?
                .with_fault(fault),
        );
        let id_hash_key = match &config.issuance.id_hash_key_file {
            Some(p) => Some(Zeroizing::new(std::fs::read(p).map_err(|e| {
                OpenError::IdHashKey {
                    path: p.display().to_string(),
                    reason: e.to_string(),
                }
            })?)),
            None => None,
        };
        // Verification needs the CA and a signature policy; a folder without the policy file
        // serves issuance only (a policy file that is there but wrong is refused).
        let policy_file = config
            .issuance
            .policies
            .join(crate::policy::SIGNATURE_POLICY_FILE);
        let verifier = if authority.is_initialized() && policy_file.exists() {
            let policy = SignaturePolicy::load(&config.issuance.policies, &profiles)?;
            Some(Verifier::new(
                &authority,
                profiles.clone(),
                policy,
                load_anchors(&config, &clock)?,
            )?)
        } else {
            None
        };
        let authority_for_signing = authority.clone();
        let registrar = Registrar::new(
            authority.clone(),
            profiles,
            BankIdentity {
                organization: config.ca.organization.clone(),
                country: config.ca.country.clone(),
            },
            id_hash_key,
        )
        .with_auth_settings(auth_settings(&config.auth));
        Ok(Signet {
            config,
            clock,
            hsm,
            store,
            authority,
            registrar,
            verifier,
            signing: crate::sign::SigningService::new(authority_for_signing),
        })
    }

    /// Start-up duties: void issuances interrupted longer ago than the issuance timeout, then
    /// checkpoint the chain's head. A process killed before its shutdown checkpoint leaves its
    /// newest events unsigned; without this they would stay so until the next multiple of
    /// `checkpoint_every`, open to a rewrite by anyone who can write to the database.
    pub fn startup(&self, actor: &str) -> Result<Vec<String>, CaError> {
        if !self.authority.is_initialized() {
            return Ok(Vec::new());
        }
        let voided = self.authority.resolve_interrupted(actor)?;
        match self.authority.pin_key_ready() {
            Ok(()) => {}
            // PINs can be neither set nor checked with the key (older hashes still are).
            Err(e @ (CaError::PinKeyNotMade | CaError::PinKeyLost { .. })) => {
                tracing::error!(error = %e, "PIN key")
            }
            Err(e) => tracing::warn!(error = %e, "cannot check the PIN key"),
        }
        match self.authority.auditor().checkpoint_head() {
            // A CA made before Signet had an audit key: `signet ca upgrade` makes it, and must
            // be able to start to do so.
            Err(crate::audit::AuditError::Hsm(HsmError::KeyNotFound { .. })) => {
                tracing::warn!("no audit key in the token yet: run `signet ca upgrade`")
            }
            // The process starts refusing certificates and signatures (logged as it was
            // found); revocations, CRLs and OCSP must go on.
            Err(crate::audit::AuditError::ChainAltered(_)) => {}
            other => {
                other?;
            }
        }
        Ok(voided)
    }

    /// Shutdown duties: checkpoint the audit chain's head.
    pub fn shutdown(&self) -> Result<(), CaError> {
        if self.authority.is_initialized() {
            self.authority.auditor().checkpoint_head()?;
        }
        Ok(())
    }
}

/// Reads PEM or DER.
fn read_der(path: &std::path::Path) -> Result<Vec<u8>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if bytes.starts_with(b"-----BEGIN") {
        der::pem::decode_vec(&bytes)
            .map(|(_, d)| d)
            .map_err(|e| format!("{}: {e}", path.display()))
    } else {
        Ok(bytes)
    }
}

fn load_anchors(config: &Config, clock: &Clock) -> Result<Vec<Anchor>, OpenError> {
    use der::Decode;
    let mut out = Vec::new();
    for a in &config.verify.anchors {
        let err = |reason: String| OpenError::Anchor {
            name: a.name.clone(),
            reason,
        };
        let cert = read_der(&a.certificate).map_err(err)?;
        let certificate =
            x509_cert::Certificate::from_der(&cert).map_err(|e| err(e.to_string()))?;
        let crl = match &a.crl {
            Some(path) => {
                let anchor = certificate.clone();
                let clock = clock.clone();
                let crl = Watched::new(
                    vec![path.clone()],
                    format!("the CRL of trust anchor {}", a.name),
                    move |paths, in_use| {
                        let crl = RevocationList::of_anchor(&read_der(&paths[0])?, &anchor)
                            .map_err(|e| format!("{}: {e}", paths[0].display()))?;
                        crl.may_replace(in_use, clock.now())?;
                        Ok(crl)
                    },
                )
                .map_err(err)?;
                Some(Arc::new(crl))
            }
            None => None,
        };
        out.push(Anchor {
            certificate,
            own: false,
            crl,
            name: a.name.clone(),
        });
    }
    Ok(out)
}

/// Credential lifetime and failed-authentication limits from `[auth]`.
pub fn auth_settings(a: &crate::config::AuthConfig) -> crate::ra::AuthSettings {
    use crate::ra::limiter::Limits;
    crate::ra::AuthSettings {
        credential_days: a.credential_days,
        per_address: Limits {
            max_failures: a.max_failures_per_address,
            window_secs: i64::from(a.window_secs),
            lockout_secs: i64::from(a.lockout_secs),
        },
        per_credential: Limits {
            max_failures: a.max_failures_per_credential,
            window_secs: i64::from(a.window_secs),
            lockout_secs: i64::from(a.lockout_secs),
        },
    }
}

/// The CA settings a config describes.
pub fn settings(config: &Config) -> CaSettings {
    CaSettings {
        organization: config.ca.organization.clone(),
        country: config.ca.country.clone(),
        root_common_name: config.ca.root_common_name.clone(),
        customer_ca_common_name: config.ca.customer_ca_common_name.clone(),
        teller_ca_common_name: config.ca.teller_ca_common_name.clone(),
        root_validity_days: config.ca.root_validity_days,
        issuing_validity_days: config.ca.issuing_validity_days,
        base_url: config.ca.base_url.clone(),
        crl_shards: config.ca.crl_shards,
        crl_next_update_hours: config.ca.crl_next_update_hours,
        key_prefix: config.ca.key_prefix.clone(),
        issuance_timeout_secs: config.issuance.timeout_secs,
    }
}

/// A receipt over a verification report: CMS SignedData over the report's RFC 8785 form,
/// signed in the HSM by the validation-service key, dated by Signet's clock. Base64 DER.
pub fn make_receipt(signet: &Signet, report: &serde_json::Value) -> Result<String, ReceiptFailure> {
    use base64::Engine;
    let service = signet.authority.validation_service().map_err(|e| {
        ReceiptFailure::Unavailable(format!(
            "no validation-service key: {e}; run `signet ca upgrade`"
        ))
    })?;
    let now = signet.clock.now();
    // A receipt under an expired certificate would prove nothing to whoever keeps it.
    let not_after = service
        .not_after()
        .map_err(|e| ReceiptFailure::Unavailable(e.to_string()))?;
    if not_after < now {
        return Err(ReceiptFailure::CertificateExpired(
            crate::clock::format_utc(not_after).unwrap_or_else(|| not_after.to_string()),
        ));
    }
    let hsm = signet.hsm.clone();
    let label = service.key_label.clone();
    let der = crate::verify::receipt::build_receipt(
        report,
        now,
        &service.certificate_der,
        &service.chain,
        &|bytes| {
            hsm.sign_p256_sha256(&label, bytes)
                .map_err(|e| e.to_string())
        },
    )
    .map_err(ReceiptFailure::Unavailable)?;
    Ok(base64::engine::general_purpose::STANDARD.encode(der))
}

/// Why a receipt could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ReceiptFailure {
    /// The HSM, or the validation service's key or certificate, cannot be used now.
    #[error("cannot sign the receipt: {0}")]
    Unavailable(String),
    /// The validation service's certificate expired (at the given time): it lives as long as
    /// the customer CA's, so no receipt is signed until the CA is renewed.
    #[error("cannot sign the receipt: the validation service's certificate expired at {0} (it lives as long as the customer CA's); no receipt is signed under it")]
    CertificateExpired(String),
}
