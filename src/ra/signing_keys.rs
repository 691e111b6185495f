//! Who gets an HSM-held signing key: the bank's e-seal (made by the CA operator), and tellers'
//! keys (requested by one teller-admin, approved by another). Each key is generated in the
//! token, certified under a profile with key custody `hsm`, and bound to exactly one owner.

use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::service::longest_digit_run;
use super::tenants::{conflict, looks_like_resident_id, store_err, Principal, Role};
use super::{escape_dn_value, RaError, Registrar, TenantIdentity};
use crate::audit::AuditEvent;
use crate::ca::{Issued, Reason};
use crate::store::{RequestStatus, SigningKeyRecord, TellerRecord, TellerRequestRecord};

/// The profile of the bank's e-seal certificate.
pub const SEAL_PROFILE: &str = "seal";
/// The profile of tellers' HSM-held keys.
pub const TELLER_HSM_PROFILE: &str = "teller-hsm";

/// A teller key just made: the one-time activation code is shown once.
pub struct NewTellerKey {
    pub key: SigningKeyRecord,
    pub issued: Issued,
    pub activation_code: Zeroizing<String>,
}

impl Registrar {
    fn new_id(&self, prefix: &str) -> Result<String, RaError> {
        Ok(format!(
            "{prefix}_{}",
            hex::encode(self.authority().hsm_random(8).map_err(RaError::Ca)?)
        ))
    }

    /// Certifies a key the token made (no CSR: Signet generated it, so possession is known).
    fn certify_token_key(
        &self,
        profile: &str,
        label: &str,
        subject: &str,
        tenant: &TenantIdentity,
        actor: &str,
    ) -> Result<Issued, RaError> {
        let profile = self.profile(profile)?;
        let spki = self
            .authority()
            .key_in_token(label, &|_| {})
            .map_err(RaError::Ca)?;
        self.issue_for_key(profile, spki, subject, tenant, actor)
    }

    /// `signet seal create --tenant NAME`: the bank's e-seal key and certificate.
    pub fn create_seal(
        &self,
        tenant_name: &str,
        actor: &str,
    ) -> Result<(SigningKeyRecord, Issued), RaError> {
        let tenant = self.tenant_by_name(tenant_name)?;
        if self
            .store()
            .signing_keys(&tenant.id)
            .map_err(store_err)?
            .iter()
            .any(|k| k.kind == "seal")
        {
            return Err(RaError::Conflict(format!(
                "{tenant_name} already has an e-seal"
            )));
        }
        let identity = TenantIdentity {
            id: tenant.id.clone(),
            name: tenant.name.clone(),
        };
        let label = format!(
            "{}-seal-{}",
            self.authority().settings().key_prefix,
            tenant.id
        );
        let key_id = self.new_id("key")?;
        let issued = self.certify_token_key(
            SEAL_PROFILE,
            &label,
            &format!("CN={}", escape_dn_value(&tenant.name)),
            &identity,
            actor,
        )?;
        let key = SigningKeyRecord {
            id: key_id,
            tenant_id: tenant.id.clone(),
            kind: "seal".into(),
            teller_id: None,
            key_label: label,
            certificate_serial: issued.serial.clone(),
            pin_hash: None,
            activation_hash: None,
            failed_attempts: 0,
            locked: false,
            created_at: self.authority().clock().now(),
        };
        let ev = AuditEvent::new(
            actor,
            "signing_key.create",
            &key.id,
            serde_json::json!({"kind": "seal", "serial": issued.serial}),
        )
        .for_tenant(Some(&tenant.id));
        if let Err(e) = self.store().add_signing_key(&key, &ev) {
            return Err(self.withdraw_unrecorded(&issued.serial, actor, conflict(e)));
        }
        Ok((key, issued))
    }

    /// Registers a teller of a bank (CLI: the operator; API: a teller-admin of that bank).
    pub fn add_teller(
        &self,
        tenant: &TenantIdentity,
        employee_id: &str,
        name: &str,
        actor: &str,
    ) -> Result<TellerRecord, RaError> {
        let bad = |what: &str| RaError::Invalid(format!("the teller's {what}"));
        if employee_id.is_empty()
            || employee_id.len() > 64
            || !employee_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c))
        {
            return Err(bad(
                "employee id must be 1-64 letters, digits, '-', '.' or '_'",
            ));
        }
        // It is audited (`teller.add`) and written into the teller's certificates
        // (serialNumber): never a national ID number (DESIGN invariant 6).
        if looks_like_resident_id(&employee_id.to_ascii_lowercase()) {
            return Err(bad(
                "employee id must not be a national ID number: give the bank's staff number",
            ));
        }
        if name.trim().is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control)
        {
            return Err(bad("name must be 1-64 characters"));
        }
        if longest_digit_run(name) >= 15 {
            return Err(bad("name must not carry a national ID number"));
        }
        let rec = TellerRecord {
            id: self.new_id("tlr")?,
            tenant_id: tenant.id.clone(),
            employee_id: employee_id.into(),
            name: name.trim().into(),
            created_at: self.authority().clock().now(),
        };
        let ev = AuditEvent::new(
            actor,
            "teller.add",
            &rec.id,
            serde_json::json!({"employee_id": employee_id}),
        )
        .for_tenant(Some(&tenant.id));
        self.store().add_teller(&rec, &ev).map_err(conflict)?;
        Ok(rec)
    }

    pub fn teller_by_employee(
        &self,
        tenant_id: &str,
        employee_id: &str,
    ) -> Result<TellerRecord, RaError> {
        self.store()
            .teller_by_employee(tenant_id, employee_id)
            .map_err(store_err)?
            .ok_or_else(|| RaError::NotFound(format!("teller {employee_id}")))
    }

    /// `POST /v1/tellers`.
    pub fn register_teller(
        &self,
        who: &Principal,
        employee_id: &str,
        name: &str,
    ) -> Result<TellerRecord, RaError> {
        self.require_role(who, Role::TellerAdmin, "register tellers")?;
        self.add_teller(&who.tenant, employee_id, name, &who.actor())
    }

    /// `POST /v1/teller-keys`: a teller-admin asks for an HSM-held key for a teller; another
    /// teller-admin approves it through `POST /v1/teller-requests/{id}/approve`.
    pub fn request_teller_key(
        &self,
        who: &Principal,
        employee_id: &str,
    ) -> Result<TellerRequestRecord, RaError> {
        self.require_role(who, Role::TellerAdmin, "request teller keys")?;
        let teller = self.teller_by_employee(&who.tenant.id, employee_id)?;
        self.refuse_a_second_teller_key(&who.tenant.id, &teller.id, employee_id)?;
        let now = self.authority().clock().now();
        let rec = TellerRequestRecord {
            id: self.new_id("treq")?,
            tenant_id: who.tenant.id.clone(),
            requested_by: who.credential_id.clone(),
            requested_by_holder: who.holder.clone(),
            csr: Vec::new(),
            subject: String::new(),
            status: RequestStatus::Pending,
            created_at: now,
            expires_at: now + super::TELLER_REQUEST_TTL_SECS,
            decided_by: None,
            decided_at: None,
            decision_reason: None,
            serial: None,
            kind: "hsm-key".into(),
            teller_id: Some(teller.id.clone()),
        };
        let ev = AuditEvent::new(
            &who.actor(),
            "teller_request.submit",
            &rec.id,
            serde_json::json!({"kind": "hsm-key", "teller": teller.id}),
        )
        .for_tenant(Some(&who.tenant.id));
        self.store()
            .add_teller_request(&rec, &ev)
            .map_err(store_err)?;
        Ok(rec)
    }

    /// A teller has one key in the HSM at most: another request for one is refused when filed,
    /// and when approved (two requests filed before either was approved), before anything is
    /// made or certified.
    pub(super) fn refuse_a_second_teller_key(
        &self,
        tenant_id: &str,
        teller_id: &str,
        teller_name: &str,
    ) -> Result<(), RaError> {
        let has_one = self
            .store()
            .signing_keys(tenant_id)
            .map_err(store_err)?
            .iter()
            .any(|k| k.teller_id.as_deref() == Some(teller_id));
        if has_one {
            return Err(RaError::Conflict(format!(
                "teller {teller_name} already has a key in the HSM"
            )));
        }
        Ok(())
    }

    /// The approved half of an `hsm-key` request: key, certificate, one-time activation code.
    pub(super) fn create_teller_key(
        &self,
        who: &Principal,
        request: &TellerRequestRecord,
    ) -> Result<NewTellerKey, RaError> {
        let teller_id = request
            .teller_id
            .as_deref()
            .ok_or_else(|| RaError::Invalid("the request names no teller".into()))?;
        let teller = self
            .store()
            .teller(teller_id)
            .map_err(store_err)?
            .ok_or_else(|| RaError::NotFound(format!("teller {teller_id}")))?;
        let label = format!(
            "{}-teller-{}",
            self.authority().settings().key_prefix,
            teller.id
        );
        let subject = format!(
            "CN={},serialNumber={}",
            escape_dn_value(&teller.name),
            escape_dn_value(&teller.employee_id)
        );
        // Everything that can fail before the certificate is made: after it, only the key
        // record's write can (see `withdraw_unrecorded`).
        // 20 random characters the teller types once to set the key's PIN.
        let code = Zeroizing::new(hex::encode_upper(
            self.authority().hsm_random(10).map_err(RaError::Ca)?,
        ));
        let key_id = self.new_id("key")?;
        let issued = self.certify_token_key(
            TELLER_HSM_PROFILE,
            &label,
            &subject,
            &who.tenant,
            &who.actor(),
        )?;
        let key = SigningKeyRecord {
            id: key_id,
            tenant_id: who.tenant.id.clone(),
            kind: "teller".into(),
            teller_id: Some(teller.id.clone()),
            key_label: label,
            certificate_serial: issued.serial.clone(),
            pin_hash: None,
            activation_hash: Some(hex::encode(Sha256::digest(code.as_bytes()))),
            failed_attempts: 0,
            locked: false,
            created_at: self.authority().clock().now(),
        };
        let ev = AuditEvent::new(
            &who.actor(),
            "signing_key.create",
            &key.id,
            serde_json::json!({"kind": "teller", "teller": teller.id, "serial": issued.serial, "request": request.id}),
        )
        .for_tenant(Some(&who.tenant.id));
        if let Err(e) = self.store().add_signing_key(&key, &ev) {
            return Err(self.withdraw_unrecorded(&issued.serial, &who.actor(), conflict(e)));
        }
        Ok(NewTellerKey {
            key,
            issued,
            activation_code: code,
        })
    }

    /// A certificate issued for a key whose record could not be stored: no record names it, so
    /// nobody would revoke it with the key, and the next attempt (a teller request approved
    /// again, `seal create` run again) reuses the key and certifies it a second time. It is
    /// revoked (cessationOfOperation: the key is not suspect) before anything is tried again;
    /// when that fails too, the error says so and names it.
    fn withdraw_unrecorded(&self, serial: &str, actor: &str, why: RaError) -> RaError {
        match self
            .authority()
            .revoke(serial, Reason::CessationOfOperation, None, actor)
        {
            Ok(()) => {
                tracing::warn!(%serial, error = %why, "revoked a teller key's certificate whose key record could not be stored");
                why
            }
            Err(e) => {
                tracing::error!(%serial, error = %why, revocation = %e, "a teller key's certificate is valid but no key record names it");
                RaError::IssuedNotRecorded {
                    serial: serial.to_string(),
                    why: why.to_string(),
                }
            }
        }
    }

    pub(super) fn require_role(
        &self,
        who: &Principal,
        role: Role,
        what: &str,
    ) -> Result<(), RaError> {
        if who.role == role {
            Ok(())
        } else {
            Err(RaError::Forbidden(format!(
                "a {} credential cannot {what}",
                who.role
            )))
        }
    }
}
