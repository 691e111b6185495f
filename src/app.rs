//! Wiring: opens the token, the store and the policies from a config and assembles the layers.

use std::sync::Arc;

use zeroize::Zeroizing;

use crate::audit::Auditor;
use crate::ca::{Authority, CaError, CaSettings, Fault};
use crate::clock::Clock;
use crate::config::Config;
use crate::hsm::{Hsm, HsmError};
use crate::policy::{PolicyError, Profiles};
use crate::ra::{BankIdentity, Registrar};
use crate::store::{SqliteStore, Store, StoreError};

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
}

/// An opened Signet: the HSM, the store and the layers above them.
pub struct Signet {
    pub config: Config,
    pub clock: Clock,
    pub hsm: Arc<Hsm>,
    pub store: Arc<dyn Store>,
    pub authority: Arc<Authority>,
    pub registrar: Registrar,
}

impl Signet {
    /// Opens everything the config names. Does not resolve interrupted issuances: call
    /// [`Signet::startup`] once the caller knows who it acts for.
    pub fn open(config: Config, clock: Clock, fault: Fault) -> Result<Signet, OpenError> {
        let profiles = Profiles::load_dir(&config.issuance.policies)?;
        let hsm = Arc::new(Hsm::open(config.hsm_config())?);
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&config.store.path)?);
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
        let registrar = Registrar::new(
            authority.clone(),
            profiles,
            BankIdentity {
                organization: config.ca.organization.clone(),
                country: config.ca.country.clone(),
            },
            id_hash_key,
        );
        Ok(Signet {
            config,
            clock,
            hsm,
            store,
            authority,
            registrar,
        })
    }

    /// Start-up duties: void issuances interrupted longer ago than the issuance timeout.
    pub fn startup(&self, actor: &str) -> Result<Vec<String>, CaError> {
        if !self.authority.is_initialized() {
            return Ok(Vec::new());
        }
        self.authority.resolve_interrupted(actor)
    }

    /// Shutdown duties: checkpoint the audit chain's head.
    pub fn shutdown(&self) -> Result<(), CaError> {
        if self.authority.is_initialized() {
            self.authority.auditor().checkpoint_head()?;
        }
        Ok(())
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
