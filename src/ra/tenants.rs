//! Banks (tenants), their credentials and roles, and authentication of bearer tokens.

use std::fmt;

use base64::Engine;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::{RaError, Registrar, TenantIdentity};
use crate::audit::AuditEvent;
use crate::store::{CredentialRecord, StoreError, TenantRecord};

/// What a credential may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Customer certificates of its own bank.
    RaOfficer,
    /// Teller certificates of its own bank (a second teller-admin approves).
    TellerAdmin,
    /// Verification only.
    Gateway,
    /// Read-only: its own bank's certificates and audit events.
    Auditor,
    /// Uses its own bank's e-seal.
    Sealer,
    /// One teller: signs with that teller's HSM-held key and PIN.
    Teller,
}

impl Role {
    pub const ALL: [Role; 6] = [
        Role::RaOfficer,
        Role::TellerAdmin,
        Role::Gateway,
        Role::Auditor,
        Role::Sealer,
        Role::Teller,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::RaOfficer => "ra-officer",
            Role::TellerAdmin => "teller-admin",
            Role::Gateway => "gateway",
            Role::Auditor => "auditor",
            Role::Sealer => "sealer",
            Role::Teller => "teller",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Principal {
    pub credential_id: String,
    pub tenant: TenantIdentity,
    pub role: Role,
    /// For a `teller` credential: the teller it speaks for.
    pub teller_id: Option<String>,
}

impl Principal {
    /// How the audit log names this caller.
    pub fn actor(&self) -> String {
        format!("credential:{}", self.credential_id)
    }
}

/// A newly made credential: the token is shown once, then only its hash exists.
pub struct NewCredential {
    pub id: String,
    pub token: Zeroizing<String>,
}

/// Bearer tokens are 32 random bytes, base64url, with a prefix that secret scanners can find.
const TOKEN_PREFIX: &str = "sgt_";
/// Longest Authorization value looked at (anything longer is not one of ours).
pub const MAX_TOKEN_LEN: usize = 128;

fn token_hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

impl Registrar {
    fn random_hex(&self, bytes: u32) -> Result<String, RaError> {
        Ok(hex::encode(
            self.authority().hsm_random(bytes).map_err(RaError::Ca)?,
        ))
    }

    /// Registers a bank. Its name becomes the O of its certificates.
    pub fn add_tenant(&self, name: &str, actor: &str) -> Result<TenantRecord, RaError> {
        let name = name.trim();
        if name.is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
            return Err(RaError::Invalid(
                "a tenant name is 1 to 64 characters, the bank's registered name".into(),
            ));
        }
        let rec = TenantRecord {
            id: format!("tnt_{}", self.random_hex(8)?),
            name: name.to_string(),
            created_at: self.authority().clock().now(),
        };
        let ev = AuditEvent::new(
            actor,
            "tenant.add",
            &rec.id,
            serde_json::json!({"name": name}),
        )
        .for_tenant(Some(&rec.id));
        self.store().add_tenant(&rec, &ev).map_err(store_err)?;
        Ok(rec)
    }

    pub fn tenant_by_name(&self, name: &str) -> Result<TenantRecord, RaError> {
        self.store()
            .tenant_by_name(name)
            .map_err(store_err)?
            .ok_or_else(|| {
                RaError::NotFound(format!(
                    "no tenant named {name:?}; add it with `signet tenant add`"
                ))
            })
    }

    /// Makes a credential for a tenant and role. The token is returned once.
    pub fn add_credential(
        &self,
        tenant_name: &str,
        role: Role,
        expires_at: Option<i64>,
        teller_employee_id: Option<&str>,
        actor: &str,
    ) -> Result<NewCredential, RaError> {
        let tenant = self.tenant_by_name(tenant_name)?;
        let teller_id =
            match (role, teller_employee_id) {
                (Role::Teller, Some(e)) => Some(self.teller_by_employee(&tenant.id, e)?.id),
                (Role::Teller, None) => return Err(RaError::Invalid(
                    "a teller credential speaks for one teller: name it with --teller EMPLOYEE_ID"
                        .into(),
                )),
                (_, Some(_)) => {
                    return Err(RaError::Invalid(
                        "only a teller credential is bound to a teller".into(),
                    ))
                }
                (_, None) => None,
            };
        let raw = Zeroizing::new(self.authority().hsm_random(32).map_err(RaError::Ca)?);
        let token = Zeroizing::new(format!(
            "{TOKEN_PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&*raw)
        ));
        let rec = CredentialRecord {
            id: format!("cred_{}", self.random_hex(8)?),
            tenant_id: tenant.id.clone(),
            role: role.as_str().into(),
            token_hash: token_hash(&token),
            created_at: self.authority().clock().now(),
            expires_at,
            revoked_at: None,
            teller_id: teller_id.clone(),
        };
        let ev = AuditEvent::new(
            actor,
            "credential.add",
            &rec.id,
            serde_json::json!({"role": role.as_str(), "expires_at": expires_at, "teller": teller_id}),
        )
        .for_tenant(Some(&tenant.id));
        self.store().add_credential(&rec, &ev).map_err(store_err)?;
        Ok(NewCredential { id: rec.id, token })
    }

    pub fn credentials(&self, tenant_name: &str) -> Result<Vec<CredentialRecord>, RaError> {
        let tenant = self.tenant_by_name(tenant_name)?;
        self.store().credentials(&tenant.id).map_err(store_err)
    }

    pub fn revoke_credential(
        &self,
        tenant_name: &str,
        id: &str,
        actor: &str,
    ) -> Result<(), RaError> {
        let tenant = self.tenant_by_name(tenant_name)?;
        let ev = AuditEvent::new(actor, "credential.revoke", id, serde_json::json!({}))
            .for_tenant(Some(&tenant.id));
        self.store()
            .revoke_credential(&tenant.id, id, self.authority().clock().now(), &ev)
            .map_err(store_err)?;
        Ok(())
    }

    /// Checks a bearer token. Every failure is audited (without the token) and answered alike.
    pub fn authenticate(&self, token: Option<&str>, origin: &str) -> Result<Principal, RaError> {
        let now = self.authority().clock().now();
        let fail = |why: &str| -> RaError {
            let ev = AuditEvent::new(
                "anonymous",
                "auth.fail",
                origin,
                serde_json::json!({"why": why}),
            );
            if let Err(e) = self.store().append_audit(now, &ev) {
                tracing::error!(error = %e, "cannot audit a failed authentication");
            }
            RaError::Unauthenticated
        };
        let Some(token) = token else {
            return Err(fail("no bearer token"));
        };
        if token.len() > MAX_TOKEN_LEN || !token.starts_with(TOKEN_PREFIX) {
            return Err(fail("malformed token"));
        }
        let cred = match self.store().credential_by_token_hash(&token_hash(token)) {
            Ok(Some(c)) => c,
            Ok(None) => return Err(fail("unknown token")),
            Err(e) => return Err(store_err(e)),
        };
        if cred.revoked_at.is_some() {
            return Err(fail("revoked credential"));
        }
        if cred.expires_at.is_some_and(|e| e <= now) {
            return Err(fail("expired credential"));
        }
        let role = Role::parse(&cred.role)
            .ok_or_else(|| RaError::Store(StoreError::Corrupt(format!("role {:?}", cred.role))))?;
        let tenant = self
            .store()
            .tenant(&cred.tenant_id)
            .map_err(store_err)?
            .ok_or_else(|| fail("credential of a missing tenant"))?;
        Ok(Principal {
            credential_id: cred.id,
            tenant: TenantIdentity {
                id: tenant.id,
                name: tenant.name,
            },
            role,
            teller_id: cred.teller_id,
        })
    }
}

pub(super) fn store_err(e: StoreError) -> RaError {
    RaError::Store(e)
}
