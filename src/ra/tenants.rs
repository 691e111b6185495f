//! Banks (tenants), their credentials and roles, and authentication of bearer tokens.

use std::fmt;

use base64::Engine;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::limiter::FailureLimiter;

use super::{RaError, Registrar, TenantIdentity};
use crate::audit::AuditEvent;
use crate::store::{CredentialRecord, StoreError, TellerRequestRecord, TenantRecord};

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
    /// The person behind the caller, in [`checked_holder`]'s form: the credential's
    /// `--holder`, or the `holder` of the `[[tls.client]]` entry that mapped its certificate.
    pub holder: Option<String>,
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

/// Bearer tokens are `sgt_<credential id hex>_<32 random bytes, base64url>`: a prefix that
/// secret scanners can find, and the credential's id so that failed guesses at one
/// credential can be counted against it (the id is no secret; the random part is).
const TOKEN_PREFIX: &str = "sgt_";
/// Longest Authorization value looked at (anything longer is not one of ours).
pub const MAX_TOKEN_LEN: usize = 128;

fn token_hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// The failure counter of a credential named from a client address (see
/// [`Registrar::authenticate`]).
fn credential_key(origin: &str, credential: &str) -> String {
    format!("{credential}@{origin}")
}

/// The credential id a token names (`cred_<hex>`), if it has the current shape.
fn token_credential_id(token: &str) -> Option<String> {
    let rest = token.strip_prefix(TOKEN_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    (id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()) && !secret.is_empty())
        .then(|| format!("cred_{id}"))
}

/// Credential lifetime and the limits on failed authentications.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthSettings {
    /// Lifetime of a credential when its creator does not say (days).
    pub credential_days: u32,
    pub per_address: super::limiter::Limits,
    pub per_credential: super::limiter::Limits,
}

impl Default for AuthSettings {
    fn default() -> Self {
        AuthSettings {
            credential_days: 365,
            per_address: super::limiter::Limits {
                max_failures: 20,
                window_secs: 60,
                lockout_secs: 60,
            },
            per_credential: super::limiter::Limits {
                max_failures: 10,
                window_secs: 60,
                lockout_secs: 60,
            },
        }
    }
}

/// Failed-authentication counters of this process.
#[derive(Debug)]
pub(super) struct AuthGuard {
    settings: AuthSettings,
    addresses: FailureLimiter,
    credentials: FailureLimiter,
}

impl AuthGuard {
    pub(super) fn new(settings: AuthSettings) -> Self {
        AuthGuard {
            settings,
            addresses: FailureLimiter::new(settings.per_address),
            credentials: FailureLimiter::new(settings.per_credential),
        }
    }
}

/// What the front end found out about a client certificate.
#[derive(Debug, Clone, Copy)]
pub enum ClientCertificate<'a> {
    /// It does not verify against the configured client CAs: why.
    Invalid(&'a str),
    /// Verified, but no mapping names it.
    Unmapped,
    /// Verified and mapped to a bank and role (and a person, if the mapping names one).
    Mapped {
        tenant: &'a str,
        role: Role,
        holder: Option<&'a str>,
    },
}

/// Why a bearer token was refused (for the audit log; the caller sees less).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TokenFailure {
    Missing,
    Malformed,
    Unknown,
    Revoked,
    Expired,
    MissingTenant,
}

impl TokenFailure {
    fn why(self) -> &'static str {
        match self {
            TokenFailure::Missing => "no bearer token",
            TokenFailure::Malformed => "malformed token",
            TokenFailure::Unknown => "unknown token",
            TokenFailure::Revoked => "revoked credential",
            TokenFailure::Expired => "expired credential",
            TokenFailure::MissingTenant => "credential of a missing tenant",
        }
    }
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

    /// Makes a credential for a tenant and role. The token is returned once. It expires at
    /// `expires_at`, or after the default lifetime (`AuthSettings::credential_days`) when `None`.
    pub fn add_credential(
        &self,
        tenant_name: &str,
        role: Role,
        expires_at: Option<i64>,
        teller_employee_id: Option<&str>,
        holder: Option<&str>,
        actor: &str,
    ) -> Result<NewCredential, RaError> {
        let tenant = self.tenant_by_name(tenant_name)?;
        let holder = holder.map(checked_holder).transpose()?;
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
        let id = format!("cred_{}", self.random_hex(8)?);
        let token = self.new_token(&id)?;
        let now = self.authority().clock().now();
        let expires_at = Some(expires_at.unwrap_or_else(|| self.default_expiry(now)));
        let rec = CredentialRecord {
            id,
            tenant_id: tenant.id.clone(),
            role: role.as_str().into(),
            token_hash: token_hash(&token),
            created_at: now,
            expires_at,
            revoked_at: None,
            teller_id: teller_id.clone(),
            holder: holder.clone(),
        };
        let ev = AuditEvent::new(
            actor,
            "credential.add",
            &rec.id,
            serde_json::json!({"role": role.as_str(), "expires_at": expires_at, "teller": teller_id, "holder": holder}),
        )
        .for_tenant(Some(&tenant.id));
        self.store().add_credential(&rec, &ev).map_err(store_err)?;
        Ok(NewCredential { id: rec.id, token })
    }

    /// Whether `who` is the person who filed `request`: the same credential, or one of the same
    /// holder. Callers without a holder are told apart by their credential ids alone.
    pub(super) fn filed_by(
        &self,
        request: &TellerRequestRecord,
        who: &Principal,
    ) -> Result<bool, RaError> {
        if request.requested_by == who.credential_id {
            return Ok(true);
        }
        let approver = who.holder.as_deref().and_then(|h| checked_holder(h).ok());
        match (self.filer_holder(request)?, approver) {
            (Some(x), Some(y)) => Ok(x == y),
            // Two credentials, neither naming a person (warned of at start for mTLS).
            (None, None) => Ok(false),
            // One names a person, the other does not: they may be one person.
            _ => Err(RaError::HolderUnknown),
        }
    }

    /// The holder of whoever filed `request`, as the two-person rule compares it: the one
    /// recorded when it was filed, or, when none was (filed before store version 10, or by a
    /// credential that had none then), the filing credential's holder now (`credential
    /// set-holder` may have given it one since).
    pub(super) fn filer_holder(
        &self,
        request: &TellerRequestRecord,
    ) -> Result<Option<String>, RaError> {
        let filer = match &request.requested_by_holder {
            Some(h) => Some(h.clone()),
            None => self
                .store()
                .credential(&request.requested_by)
                .map_err(store_err)?
                .and_then(|c| c.holder),
        };
        // Kept in one form since they were made (`checked_holder`); formed again to compare,
        // so that a holder stored by hand compares as the CLI would have kept it.
        Ok(filer.and_then(|h| checked_holder(&h).ok()))
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

    /// Gives a credential made without a holder one ([`checked_holder`]'s form). Audited
    /// (`credential.holder`). A holder, once given, does not change.
    pub fn set_credential_holder(
        &self,
        tenant_name: &str,
        id: &str,
        holder: &str,
        actor: &str,
    ) -> Result<String, RaError> {
        let holder = checked_holder(holder)?;
        let tenant = self.tenant_by_name(tenant_name)?;
        let ev = AuditEvent::new(
            actor,
            "credential.holder",
            id,
            serde_json::json!({"holder": holder}),
        )
        .for_tenant(Some(&tenant.id));
        self.store()
            .set_credential_holder(&tenant.id, id, &holder, self.authority().clock().now(), &ev)
            .map_err(store_err)?;
        Ok(holder)
    }

    fn new_token(&self, id: &str) -> Result<Zeroizing<String>, RaError> {
        let raw = Zeroizing::new(self.authority().hsm_random(32).map_err(RaError::Ca)?);
        let id_hex = id.strip_prefix("cred_").unwrap_or(id);
        Ok(Zeroizing::new(format!(
            "{TOKEN_PREFIX}{id_hex}_{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&*raw)
        )))
    }

    fn default_expiry(&self, now: i64) -> i64 {
        now + i64::from(self.auth.settings.credential_days) * 86_400
    }

    /// Gives a credential a new token (returned once) and a new expiry (`expires_at`, or the
    /// default lifetime from now); the old token stops working at once. Audited.
    pub fn rotate_credential(
        &self,
        id: &str,
        expires_at: Option<i64>,
        actor: &str,
    ) -> Result<NewCredential, RaError> {
        let cred = self
            .store()
            .credential(id)
            .map_err(store_err)?
            .ok_or_else(|| RaError::NotFound(format!("credential {id}")))?;
        if cred.revoked_at.is_some() {
            return Err(RaError::Conflict(format!(
                "credential {id} is revoked; make a new one with `signet credential add`"
            )));
        }
        let now = self.authority().clock().now();
        let expires_at = expires_at.unwrap_or_else(|| self.default_expiry(now));
        let token = self.new_token(&cred.id)?;
        let ev = AuditEvent::new(
            actor,
            "credential.rotate",
            &cred.id,
            serde_json::json!({"role": cred.role, "expires_at": expires_at}),
        )
        .for_tenant(Some(&cred.tenant_id));
        self.store()
            .rotate_credential(
                &cred.id,
                &cred.token_hash,
                &token_hash(&token),
                Some(expires_at),
                now,
                &ev,
            )
            .map_err(store_err)?;
        Ok(NewCredential { id: cred.id, token })
    }

    /// Checks a bearer token from a client address.
    ///
    /// Failures (a token that is malformed, unknown, revoked or expired; a request without any
    /// token is not an attempt) are counted per client address, and per credential the token
    /// names from that address; a key that fails too often is refused (`RateLimited`) for a
    /// while, before its token is even looked at, so guessing stays slow. The credential's
    /// count is kept per address because its id is not secret: counted alone, anyone could keep
    /// a bank's gateway locked out with a few wrong tokens a minute.
    ///
    /// Audit: each failure below the limit is audited (`auth.fail`, without the token), and
    /// the failure that trips a limit is audited once (`auth.rate_limited`); refusals while a
    /// key is locked out are not audited one by one. So a flood from one address adds at most
    /// `max_failures + 1` events per lockout period, instead of one per request, while the log
    /// still shows who was guessing, from where and when the lock started.
    pub fn authenticate(&self, token: Option<&str>, origin: &str) -> Result<Principal, RaError> {
        let now = self.authority().clock().now();
        let credential = token.and_then(token_credential_id);
        let guard = &self.auth;
        let mut wait = self.address_lockout(origin, now);
        if let Some(c) = &credential {
            if let Err(w) = guard.credentials.check(&credential_key(origin, c), now) {
                wait = Some(wait.map_or(w, |a| a.max(w)));
            }
        }
        if let Some(retry_after_secs) = wait {
            return Err(RaError::RateLimited { retry_after_secs });
        }
        let failure = match self.check_token(token, now) {
            Ok(p) => return Ok(p),
            // No credential at all is no attempt to authenticate: nothing to guess with, so
            // it is neither counted nor audited (a flood of bare requests costs one 401 each
            // and adds nothing to the audit log).
            Err(Ok(TokenFailure::Missing)) => return Err(RaError::Unauthenticated),
            Err(Ok(f)) => f,
            Err(Err(e)) => return Err(e),
        };
        self.count_failure(
            now,
            origin,
            credential.as_deref(),
            serde_json::json!({"why": failure.why(), "credential": credential}),
        );
        Err(match failure {
            TokenFailure::Expired => RaError::TokenExpired,
            _ => RaError::Unauthenticated,
        })
    }

    /// Audits a failed authentication and counts it against the client address (and the
    /// credential a token names); the failure that locks a key out is audited once more.
    fn count_failure(
        &self,
        now: i64,
        origin: &str,
        credential: Option<&str>,
        details: serde_json::Value,
    ) {
        let audit = |action: &str, details: serde_json::Value| {
            let ev = AuditEvent::new("anonymous", action, origin, details);
            if let Err(e) = self.store().append_audit(now, &ev) {
                tracing::error!(error = %e, "cannot audit a failed authentication");
            }
        };
        audit("auth.fail", details);
        let guard = &self.auth;
        let mut tripped = None;
        if let Some(secs) = guard
            .addresses
            .record_failure(&format!("address:{origin}"), now)
        {
            tripped = Some(("address", secs));
        }
        if let Some(c) = credential {
            if let Some(secs) = guard
                .credentials
                .record_failure(&credential_key(origin, c), now)
            {
                tripped = Some(("credential", secs));
            }
        }
        if let Some((kind, secs)) = tripped {
            audit(
                "auth.rate_limited",
                serde_json::json!({"limit": kind, "credential": credential, "lockout_secs": secs}),
            );
        }
    }

    /// Refuses, without reading the store, a request that cannot authenticate whatever it goes
    /// on to send: one from an address locked out for failed attempts (`RateLimited`), or one
    /// that presents no credential at all (`Unauthenticated`, neither counted nor audited).
    /// The front end asks this before it reads a body.
    pub fn refuse_at_once(&self, presents_credential: bool, origin: &str) -> Result<(), RaError> {
        if let Some(retry_after_secs) = self.address_lockout(origin, self.authority().clock().now())
        {
            return Err(RaError::RateLimited { retry_after_secs });
        }
        if !presents_credential {
            return Err(RaError::Unauthenticated);
        }
        Ok(())
    }

    /// Seconds until `origin` may try again, if it is locked out.
    fn address_lockout(&self, origin: &str, now: i64) -> Option<i64> {
        self.auth
            .addresses
            .check(&format!("address:{origin}"), now)
            .err()
    }

    /// Authenticates a client that presented a TLS client certificate and no bearer token.
    /// `fingerprint` is the hex SHA-256 of the certificate; failures are audited and counted
    /// against the client address like failed tokens.
    pub fn authenticate_client_certificate(
        &self,
        fingerprint: &str,
        cert: ClientCertificate<'_>,
        origin: &str,
    ) -> Result<Principal, RaError> {
        let now = self.authority().clock().now();
        if let Some(retry_after_secs) = self.address_lockout(origin, now) {
            return Err(RaError::RateLimited { retry_after_secs });
        }
        let refuse = |why: &str, err: RaError| -> RaError {
            self.count_failure(
                now,
                origin,
                None,
                serde_json::json!({"why": why, "client_certificate": fingerprint}),
            );
            err
        };
        let (tenant_name, role, holder) = match cert {
            ClientCertificate::Invalid(reason) => {
                return Err(refuse(
                    "client certificate not verified",
                    RaError::ClientCertificateInvalid(reason.to_string()),
                ))
            }
            ClientCertificate::Unmapped => {
                return Err(refuse(
                    "client certificate not mapped",
                    RaError::ClientCertificateUnmapped,
                ))
            }
            ClientCertificate::Mapped {
                tenant,
                role,
                holder,
            } => (tenant, role, holder),
        };
        let tenant = match self
            .store()
            .tenant_by_name(tenant_name)
            .map_err(store_err)?
        {
            Some(t) => t,
            None => {
                return Err(refuse(
                    "client certificate mapped to a missing tenant",
                    RaError::ClientCertificateUnmapped,
                ))
            }
        };
        Ok(Principal {
            credential_id: format!("tls-{}", &fingerprint[..fingerprint.len().min(16)]),
            tenant: TenantIdentity {
                id: tenant.id,
                name: tenant.name,
            },
            role,
            teller_id: None,
            holder: holder.map(str::to_string),
        })
    }

    /// The principal a token names, or why not (`Err(Ok(_))`), or a store failure.
    #[allow(clippy::type_complexity)]
    fn check_token(
        &self,
        token: Option<&str>,
        now: i64,
    ) -> Result<Principal, Result<TokenFailure, RaError>> {
        let token = token.ok_or(Ok(TokenFailure::Missing))?;
        if token.len() > MAX_TOKEN_LEN || !token.starts_with(TOKEN_PREFIX) {
            return Err(Ok(TokenFailure::Malformed));
        }
        let hash = token_hash(token);
        let cred = match self.store().credential_by_token_hash(&hash) {
            Ok(Some(c)) => c,
            Ok(None) => return Err(Ok(TokenFailure::Unknown)),
            Err(e) => return Err(Err(store_err(e))),
        };
        // The lookup found the row by hash; compare again in constant time so that nothing
        // downstream of the index depends on how much of the hash matched, and check that a
        // token of the current shape names this very credential.
        let same_hash: bool = cred.token_hash.as_slice().ct_eq(hash.as_slice()).into();
        let same_id = token_credential_id(token)
            .is_none_or(|id| bool::from(id.as_bytes().ct_eq(cred.id.as_bytes())));
        if !(same_hash && same_id) {
            return Err(Ok(TokenFailure::Unknown));
        }
        if cred.revoked_at.is_some() {
            return Err(Ok(TokenFailure::Revoked));
        }
        if cred.expires_at.is_some_and(|e| e <= now) {
            return Err(Ok(TokenFailure::Expired));
        }
        let role = Role::parse(&cred.role).ok_or_else(|| {
            Err(RaError::Store(StoreError::Corrupt(format!(
                "role {:?}",
                cred.role
            ))))
        })?;
        let tenant = self
            .store()
            .tenant(&cred.tenant_id)
            .map_err(|e| Err(store_err(e)))?
            .ok_or(Ok(TokenFailure::MissingTenant))?;
        Ok(Principal {
            credential_id: cred.id,
            tenant: TenantIdentity {
                id: tenant.id,
                name: tenant.name,
            },
            role,
            teller_id: cred.teller_id,
            holder: cred.holder.and_then(|h| checked_holder(&h).ok()),
        })
    }
}

pub(super) fn store_err(e: StoreError) -> RaError {
    RaError::Store(e)
}

/// A store error where a conflict (a unique key, a row no longer in the state the write
/// expected) is the caller's to hear about.
pub(super) fn conflict(e: StoreError) -> RaError {
    match e {
        StoreError::Conflict(m) => RaError::Conflict(m),
        other => store_err(other),
    }
}

/// A credential's holder as `credential add --holder` gives it, in the one form it is kept and
/// compared in: Unicode NFKC (full-width `Ｅ７００１` is `E7001`), lower case, inner white space
/// as one space, ends trimmed; 1 to 128 characters, no control or invisible format characters
/// (it is printed in lists and written to the audit log). One person is one holder however the
/// operator typed it.
pub fn checked_holder(holder: &str) -> Result<String, RaError> {
    use unicode_normalization::UnicodeNormalization;
    let bad = || {
        RaError::Invalid(
            "--holder names the person the credential is for (an employee id or a name): 1 to \
             128 characters, no control or invisible characters, not a national ID number"
                .into(),
        )
    };
    if holder.chars().any(crate::text::is_control_or_invisible) {
        return Err(bad());
    }
    let folded: String = holder.nfkc().collect::<String>().to_lowercase();
    let h = folded.split_whitespace().collect::<Vec<_>>().join(" ");
    if h.is_empty() || h.chars().count() > 128 || looks_like_resident_id(&h) {
        return Err(bad());
    }
    Ok(h)
}

/// Whether `s` has the shape of a PRC resident identity number (18 characters: 17 digits and
/// a digit or X; or the older 15 digits). Holders are listed and audited, and national ID
/// numbers never reach logs (DESIGN invariant 6): a bank that keys its people by them must
/// give another identifier.
pub(super) fn looks_like_resident_id(s: &str) -> bool {
    let b = s.as_bytes();
    let digits = |t: &[u8]| t.iter().all(u8::is_ascii_digit);
    match b.len() {
        15 => digits(b),
        18 => digits(&b[..17]) && matches!(b[17], b'0'..=b'9' | b'x'),
        _ => false,
    }
}

/// A bearer token from a file of its own (tokens never go on a command line, where `ps` and
/// shell histories keep them): the file's text, trimmed, must be one token. The error is a
/// sentence for the person who named the file.
pub fn read_token_file(path: &std::path::Path) -> Result<Zeroizing<String>, String> {
    use std::io::Read;
    // Room for a token and its line ends; a larger file is not a token file.
    const LIMIT: u64 = 4096;
    let mut text = Zeroizing::new(String::new());
    std::fs::File::open(path)
        .and_then(|f| f.take(LIMIT + 1).read_to_string(&mut text))
        .map_err(|e| format!("cannot read the token file {}: {e}", path.display()))?;
    let token = Zeroizing::new(text.trim().to_string());
    if text.len() as u64 > LIMIT
        || token.is_empty()
        || token.contains(char::is_whitespace)
        || token.len() > MAX_TOKEN_LEN
    {
        return Err(format!(
            "the token file {} does not hold one token",
            path.display()
        ));
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::{checked_holder, read_token_file};

    #[test]
    fn a_token_file_holds_exactly_one_token_and_anything_else_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, text: &[u8]| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        let one = file("one", b"sgt_abc.def\n");
        assert_eq!(read_token_file(&one).unwrap().as_str(), "sgt_abc.def");
        for (name, text) in [
            ("empty", b"\n".to_vec()),
            ("two", b"sgt_a sgt_b\n".to_vec()),
            ("long", vec![b'a'; 200]),
            ("large", vec![b'\n'; 5000]),
        ] {
            let e = read_token_file(&file(name, &text)).unwrap_err();
            assert!(e.contains("does not hold one token"), "{name}: {e}");
        }
        let e = read_token_file(&dir.path().join("missing")).unwrap_err();
        assert!(e.contains("cannot read the token file"), "{e}");
    }

    #[test]
    fn a_holder_is_kept_in_one_form_however_it_is_typed() {
        for typed in ["E7001", " e7001 ", "Ｅ７００１"] {
            assert_eq!(checked_holder(typed).unwrap(), "e7001", "{typed:?}");
        }
        assert_eq!(checked_holder("Zhang   San").unwrap(), "zhang san");
        assert_eq!(checked_holder("张三").unwrap(), "张三");
    }

    #[test]
    fn a_holder_with_nothing_visible_or_hidden_characters_is_refused() {
        for bad in [
            "",
            " ",
            "E1\tE2",
            "E7001\u{200B}",
            "\u{FEFF}E7001",
            "\u{2066}E7001",
        ] {
            assert!(checked_holder(bad).is_err(), "{bad:?}");
        }
        assert!(checked_holder(&"x".repeat(129)).is_err());
        assert!(checked_holder(&"x".repeat(128)).is_ok());
    }

    #[test]
    fn a_national_id_number_is_no_holder() {
        for id in [
            "11010119900308123X",
            "110101199003081234",
            "110101900308123",
            "１１０１０１１９９００３０８１２３ｘ",
        ] {
            assert!(checked_holder(id).is_err(), "{id:?}");
        }
        // Employee ids, names and other lengths of digits are holders; so is a name whose
        // UTF-8 is 18 bytes long.
        for holder in [
            "E7001",
            "1234567",
            "1101011990030812345",
            "张三李四王五",
            "zhang san",
        ] {
            assert!(checked_holder(holder).is_ok(), "{holder:?}");
        }
    }
}
