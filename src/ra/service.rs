//! What a bank's credential may do, checked here (not in the HTTP layer): customer issuance by
//! ra-officers, teller certificates through two different teller-admins, lookups and
//! revocations limited to the bank's own certificates.

use super::tenants::{conflict, store_err, Principal, Role};
use super::{CertificateRequest, RaError, Registrar};
use crate::audit::AuditEvent;
use crate::ca::{normalize_serial, CaError, Issued, IssuerId, Reason};
use crate::store::{
    CertRecord, CertStatus, RequestStatus, StoreError, TellerRecord, TellerRequestRecord,
};

/// How long a teller request waits for its second teller-admin.
pub const TELLER_REQUEST_TTL_SECS: i64 = 24 * 3600;
/// Most teller requests one listing gives.
pub const MAX_TELLER_REQUESTS_LISTED: u32 = 1000;
/// Longest reason a rejection may give, in characters.
pub const MAX_REJECTION_REASON_CHARS: usize = 500;

impl Registrar {
    fn require(&self, who: &Principal, roles: &[Role], what: &str) -> Result<(), RaError> {
        if roles.contains(&who.role) {
            Ok(())
        } else {
            Err(RaError::Forbidden(format!(
                "a {} credential cannot {what}",
                who.role
            )))
        }
    }

    /// `POST /v1/certificates`: an ra-officer asks for a customer-CA certificate. Teller
    /// profiles are refused for every role: they go through two teller-admins.
    pub fn request_certificate(
        &self,
        who: &Principal,
        profile: &str,
        csr: &[u8],
        subject: &str,
    ) -> Result<Issued, RaError> {
        self.request_certificates(who, &[(profile, csr, subject)])?
            .pop()
            .unwrap_or_else(|| Err(not_issued()))
    }

    /// `POST /v1/certificates/batch`: several of [`Registrar::request_certificate`] at once,
    /// each with its own result.
    pub fn request_certificates(
        &self,
        who: &Principal,
        items: &[(&str, &[u8], &str)],
    ) -> Result<Vec<Result<Issued, RaError>>, RaError> {
        self.require(who, &[Role::RaOfficer], "request certificates")?;
        let actor = who.actor();
        let mut refused = Vec::with_capacity(items.len());
        let mut reqs = Vec::new();
        for &(profile, csr, subject) in items {
            let teller = self.profile(profile).map(|p| p.issuer == IssuerId::Teller);
            refused.push(match teller {
                Ok(true) => Some(RaError::TellerNeedsApproval),
                Ok(false) => None,
                Err(e) => Some(e),
            });
            if refused.last().is_some_and(Option::is_none) {
                reqs.push(CertificateRequest {
                    profile,
                    csr,
                    subject,
                    actor: &actor,
                    break_glass: false,
                    tenant: Some(&who.tenant),
                });
            }
        }
        let mut issued = self.issue_batch(&reqs).into_iter();
        Ok(refused
            .into_iter()
            .map(|r| match r {
                Some(e) => Err(e),
                None => issued.next().unwrap_or_else(|| Err(not_issued())),
            })
            .collect())
    }

    /// `POST /v1/teller-requests`: a teller-admin files a teller certificate request. It is
    /// checked now (CSR, key, subject) so that the approver sees only issuable requests.
    pub fn submit_teller_request(
        &self,
        who: &Principal,
        csr: &[u8],
        subject: &str,
    ) -> Result<TellerRequestRecord, RaError> {
        self.require(who, &[Role::TellerAdmin], "request teller certificates")?;
        let profile = self.teller_profile()?;
        self.check_request(profile, csr, subject, Some(&who.tenant))?;
        let now = self.authority().clock().now();
        let rec = TellerRequestRecord {
            id: format!(
                "treq_{}",
                hex::encode(self.authority().hsm_random(8).map_err(RaError::Ca)?)
            ),
            tenant_id: who.tenant.id.clone(),
            requested_by: who.credential_id.clone(),
            requested_by_holder: who.holder.clone(),
            csr: csr.to_vec(),
            subject: subject.to_string(),
            status: RequestStatus::Pending,
            created_at: now,
            expires_at: now + TELLER_REQUEST_TTL_SECS,
            decided_by: None,
            decided_at: None,
            decision_reason: None,
            serial: None,
            kind: "certificate".into(),
            teller_id: None,
        };
        let ev = AuditEvent::new(
            &who.actor(),
            "teller_request.submit",
            &rec.id,
            serde_json::json!({"expires_at": rec.expires_at}),
        )
        .for_tenant(Some(&who.tenant.id));
        self.store()
            .add_teller_request(&rec, &ev)
            .map_err(store_err)?;
        Ok(rec)
    }

    /// `POST /v1/teller-requests/{id}/approve`: a *different* teller-admin of the same bank
    /// approves, and the certificate is issued.
    pub fn approve_teller_request(&self, who: &Principal, id: &str) -> Result<Approved, RaError> {
        self.require(who, &[Role::TellerAdmin], "approve teller requests")?;
        let rec = self.own_teller_request(who, id)?;
        if self.filed_by(&rec, who)? {
            return Err(RaError::SelfApproval);
        }
        let now = self.authority().clock().now();
        self.still_pending(who, &rec, now)?;
        if let (true, Some(teller_id)) = (rec.kind == "hsm-key", rec.teller_id.as_deref()) {
            // Approving it would certify the teller's existing key a second time, and nothing
            // can make it approvable again: it is rejected, saying why, rather than left
            // pending until it expires.
            let employee = self
                .store()
                .teller(teller_id)
                .map_err(store_err)?
                .map_or_else(|| teller_id.to_string(), |t| t.employee_id);
            match self.refuse_a_second_teller_key(&who.tenant.id, teller_id, &employee) {
                Ok(()) => {}
                Err(refused @ RaError::Conflict(_)) => {
                    self.record_rejection(who, &rec, &refused.to_string(), true, now)?;
                    return Err(refused);
                }
                // Not an answer about the teller (the store failed): the request stands.
                Err(e) => return Err(e),
            }
        }
        let ev = AuditEvent::new(
            &who.actor(),
            "teller_request.approve",
            id,
            serde_json::json!({
                "requested_by": rec.requested_by,
                // The holders the two-person rule compared.
                "requested_by_holder": self.filer_holder(&rec)?,
                "approver_holder": who.holder,
            }),
        )
        .for_tenant(Some(&who.tenant.id));
        self.store()
            .decide_teller_request(
                id,
                RequestStatus::Approved,
                None,
                &who.credential_id,
                now,
                &ev,
            )
            .map_err(conflict)?;
        let issued = if rec.kind == "hsm-key" {
            self.create_teller_key(who, &rec)
                .map(|k| Approved::TellerKey(Box::new(k)))
        } else {
            let profile = self.teller_profile()?;
            self.issue(&CertificateRequest {
                profile: &profile.name,
                csr: &rec.csr,
                subject: &rec.subject,
                actor: &who.actor(),
                break_glass: false,
                tenant: Some(&who.tenant),
            })
            .map(Approved::Certificate)
        };
        match issued {
            Ok(a) => {
                // The certificate (and a teller key with its one-time activation code) is
                // made: a failure to note its serial on the request must not hide it. The
                // serial is in the audit log's certificate.issue and signing_key.create.
                if let Err(e) = self.store().set_teller_request_serial(id, a.serial()) {
                    tracing::warn!(request = %id, serial = %a.serial(), error = %e, "cannot note the serial on the approved teller request");
                }
                Ok(a)
            }
            // A certificate no record names and nobody revoked: the request must not be
            // approved again (that would certify the same key again). It stays approved,
            // naming the certificate where the store lets it.
            Err(RaError::IssuedNotRecorded { serial, why }) => {
                let _ = self.store().set_teller_request_serial(id, &serial);
                Err(RaError::IssuedNotRecorded { serial, why })
            }
            Err(e) => {
                // Nothing valid issued: the request waits again rather than being lost.
                let ev = AuditEvent::new(
                    &who.actor(),
                    "teller_request.reopen",
                    id,
                    serde_json::json!({"error": e.to_string()}),
                )
                .for_tenant(Some(&who.tenant.id));
                let _ = self
                    .store()
                    .reopen_teller_request(id, self.authority().clock().now(), &ev);
                Err(e)
            }
        }
    }

    /// `POST /v1/teller-requests/{id}/reject`: a teller-admin of the bank declines a pending
    /// request, saying why. Its filer may too (withdrawing it): declining needs no second
    /// person. The request can no longer be approved.
    pub fn reject_teller_request(
        &self,
        who: &Principal,
        id: &str,
        reason: &str,
    ) -> Result<TellerRequestDetails, RaError> {
        self.require(who, &[Role::TellerAdmin], "reject teller requests")?;
        let reason = rejection_reason(reason)?;
        let rec = self.own_teller_request(who, id)?;
        let now = self.authority().clock().now();
        self.still_pending(who, &rec, now)?;
        self.record_rejection(who, &rec, reason, false, now)?;
        Ok(self.describe_teller_request(self.own_teller_request(who, id)?))
    }

    /// `GET /v1/teller-requests`: the caller's bank's teller requests, newest first, at most
    /// `limit`, bounded to 1 to [`MAX_TELLER_REQUESTS_LISTED`] (the API refuses a limit
    /// outside it), only those in `status` when given. A pending request past its expiry can
    /// no longer be approved: it is listed as expired.
    pub fn teller_requests(
        &self,
        who: &Principal,
        status: Option<RequestStatus>,
        limit: u32,
    ) -> Result<Vec<TellerRequestDetails>, RaError> {
        self.require(
            who,
            &[Role::TellerAdmin, Role::Auditor],
            "read teller requests",
        )?;
        let limit = limit.clamp(1, MAX_TELLER_REQUESTS_LISTED);
        let now = self.authority().clock().now();
        Ok(self
            .store()
            .teller_requests(&who.tenant.id, status, now, limit)
            .map_err(store_err)?
            .into_iter()
            .map(|r| self.describe_teller_request_at(r, now))
            .collect())
    }

    /// `GET /v1/teller-requests/{id}`: one of the caller's bank's teller requests, its status
    /// as in [`Registrar::teller_requests`].
    pub fn teller_request(
        &self,
        who: &Principal,
        id: &str,
    ) -> Result<TellerRequestDetails, RaError> {
        self.require(
            who,
            &[Role::TellerAdmin, Role::Auditor],
            "read teller requests",
        )?;
        Ok(self.describe_teller_request(self.own_teller_request(who, id)?))
    }

    /// `rec` as its bank reads it: its status now ([`TellerRequestRecord::status_at`]), and
    /// what approving it would certify.
    pub fn describe_teller_request(&self, rec: TellerRequestRecord) -> TellerRequestDetails {
        let now = self.authority().clock().now();
        self.describe_teller_request_at(rec, now)
    }

    /// [`Registrar::describe_teller_request`] as of `now` (a listing's one clock reading). A
    /// teller that cannot be read is left out (logged): the request is described regardless.
    fn describe_teller_request_at(
        &self,
        mut rec: TellerRequestRecord,
        now: i64,
    ) -> TellerRequestDetails {
        use der::Encode;
        use sha2::{Digest, Sha256};
        rec.status = rec.status_at(now);
        // Checked when it was filed; a CSR that no longer reads names no key.
        let public_key_sha256 = (!rec.csr.is_empty())
            .then(|| {
                super::csr::parse(&rec.csr)
                    .ok()?
                    .certified_spki()
                    .ok()?
                    .to_der()
                    .ok()
            })
            .flatten()
            .map(|der| hex::encode(Sha256::digest(der)));
        let teller = rec.teller_id.as_deref().and_then(|id| {
            match self.store().teller(id) {
                Ok(t) => t.filter(|t| t.tenant_id == rec.tenant_id),
                Err(e) => {
                    tracing::warn!(request = %rec.id, error = %e, "cannot read the teller of a teller request");
                    None
                }
            }
        });
        TellerRequestDetails {
            record: rec,
            public_key_sha256,
            teller,
        }
    }

    /// A request of the caller's bank; another bank's does not exist for the caller.
    fn own_teller_request(
        &self,
        who: &Principal,
        id: &str,
    ) -> Result<TellerRequestRecord, RaError> {
        self.store()
            .teller_request(id)
            .map_err(store_err)?
            .filter(|rec| rec.tenant_id == who.tenant.id)
            .ok_or_else(|| RaError::NotFound(format!("teller request {id}")))
    }

    /// Refuses to decide a request that is no longer pending. One whose time is up is
    /// recorded as expired (audited), and the caller told so.
    fn still_pending(
        &self,
        who: &Principal,
        rec: &TellerRequestRecord,
        now: i64,
    ) -> Result<(), RaError> {
        if rec.status != RequestStatus::Pending {
            return Err(RaError::Conflict(format!(
                "teller request {} is already {}",
                rec.id, rec.status
            )));
        }
        if now >= rec.expires_at {
            let ev = AuditEvent::new(
                &who.actor(),
                "teller_request.expire",
                &rec.id,
                serde_json::json!({}),
            )
            .for_tenant(Some(&who.tenant.id));
            // Of two callers, one records it; both are told it expired.
            let _ = self.store().decide_teller_request(
                &rec.id,
                RequestStatus::Expired,
                None,
                &who.credential_id,
                now,
                &ev,
            );
            return Err(RaError::RequestExpired);
        }
        Ok(())
    }

    /// Records `rec` as rejected by `who` (or by Signet on `who`'s approval, `automatic`),
    /// with the holders the two-person rule would compare, for the audit trail.
    fn record_rejection(
        &self,
        who: &Principal,
        rec: &TellerRequestRecord,
        reason: &str,
        automatic: bool,
        now: i64,
    ) -> Result<(), RaError> {
        let ev = AuditEvent::new(
            &who.actor(),
            "teller_request.reject",
            &rec.id,
            serde_json::json!({
                "reason": reason,
                "automatic": automatic,
                "requested_by": rec.requested_by,
                "requested_by_holder": self.filer_holder(rec)?,
                "rejected_by_holder": who.holder,
            }),
        )
        .for_tenant(Some(&who.tenant.id));
        self.store()
            .decide_teller_request(
                &rec.id,
                RequestStatus::Rejected,
                Some(reason),
                &who.credential_id,
                now,
                &ev,
            )
            .map_err(conflict)?;
        Ok(())
    }

    fn teller_profile(&self) -> Result<&crate::policy::Profile, RaError> {
        self.profile("teller")
    }

    /// A certificate of the caller's bank (`None` when it does not exist or is another bank's).
    pub fn own_certificate(&self, who: &Principal, serial: &str) -> Result<CertRecord, RaError> {
        self.require(
            who,
            &[Role::RaOfficer, Role::TellerAdmin, Role::Auditor],
            "read certificates",
        )?;
        let norm = normalize_serial(serial).map_err(RaError::Ca)?;
        match self.store().certificate(&norm).map_err(store_err)? {
            Some(c)
                if c.owner.as_deref() == Some(&who.tenant.id) && c.status == CertStatus::Issued =>
            {
                Ok(c)
            }
            _ => Err(RaError::NotFound(format!("certificate {norm}"))),
        }
    }

    /// The caller's bank's certificates for a subject ID number (which never travels in a URL).
    pub fn search_by_subject_serial(
        &self,
        who: &Principal,
        subject_serial: &str,
    ) -> Result<Vec<CertRecord>, RaError> {
        self.require(
            who,
            &[Role::RaOfficer, Role::TellerAdmin, Role::Auditor],
            "search certificates",
        )?;
        self.store()
            .certificates_by_subject_serial(&who.tenant.id, &self.lookup_digest(subject_serial))
            .map_err(store_err)
    }

    /// Revocation, hold and release of the caller's bank's certificates: ra-officers for
    /// customer certificates, teller-admins for teller certificates.
    pub fn change_status(
        &self,
        who: &Principal,
        serial: &str,
        change: StatusChange,
    ) -> Result<CertRecord, RaError> {
        self.require(
            who,
            &[Role::RaOfficer, Role::TellerAdmin],
            "revoke certificates",
        )?;
        let cert = self.own_certificate(who, serial)?;
        let allowed_issuer = match who.role {
            Role::RaOfficer => IssuerId::Customer,
            _ => IssuerId::Teller,
        };
        if cert.issuer != allowed_issuer {
            return Err(RaError::Forbidden(format!(
                "a {} credential cannot change {} certificates",
                who.role, cert.issuer
            )));
        }
        // The bank's e-seal (the customer CA's certificate of a key in Signet's HSM) is the
        // CA operator's to make and to revoke; a teller's HSM key stays its teller-admins'.
        let seal = self
            .profiles()
            .get(&cert.profile)
            .is_some_and(|p| p.key_custody == crate::policy::KeyCustody::Hsm);
        if who.role == Role::RaOfficer && seal {
            return Err(RaError::Forbidden(format!(
                "certificate {} is the bank's e-seal: the CA operator revokes it (`signet revoke` on the CA host)",
                cert.serial
            )));
        }
        let authority = self.authority();
        let actor = who.actor();
        match change {
            StatusChange::Revoke(reason, invalidity) => {
                authority.revoke(&cert.serial, reason, invalidity, &actor)
            }
            StatusChange::Hold => authority.hold(&cert.serial, self.profiles(), &actor),
            StatusChange::Release => authority.release(&cert.serial, &actor),
        }
        .map_err(|e| match e {
            CaError::Store(StoreError::Conflict(m)) => RaError::Conflict(m),
            other => RaError::Ca(other),
        })?;
        self.own_certificate(who, serial)
    }

    /// Payment gateways verify signatures (of any bank's signers: certificates are public).
    pub fn authorize_verification(&self, who: &Principal) -> Result<(), RaError> {
        self.require(who, &[Role::Gateway], "verify signatures")
    }

    /// One bank's audit events, for its auditor.
    pub fn tenant_audit_events(
        &self,
        who: &Principal,
        after: u64,
        limit: u32,
    ) -> Result<Vec<crate::audit::AuditRecord>, RaError> {
        self.require(who, &[Role::Auditor], "read the audit log")?;
        self.store()
            .tenant_audit_events(&who.tenant.id, after, limit)
            .map_err(store_err)
    }
}

/// What an approved teller request produced.
pub enum Approved {
    /// A teller certificate from the request's CSR.
    Certificate(Issued),
    /// A teller key made in the HSM, with its certificate and one-time activation code.
    TellerKey(Box<super::NewTellerKey>),
}

impl Approved {
    pub fn serial(&self) -> &str {
        match self {
            Approved::Certificate(i) => &i.serial,
            Approved::TellerKey(k) => &k.issued.serial,
        }
    }
}

/// A teller request as its bank reads it: the record, and what the approver is asked to
/// certify.
#[derive(Debug, Clone)]
pub struct TellerRequestDetails {
    pub record: TellerRequestRecord,
    /// Hex SHA-256 of the SubjectPublicKeyInfo (DER) that the certificate of a certificate
    /// request would carry: what the approver compares with the teller's device.
    pub public_key_sha256: Option<String>,
    /// The teller a key request is for.
    pub teller: Option<TellerRecord>,
}

/// A change of revocation status.
#[derive(Debug, Clone, Copy)]
pub enum StatusChange {
    Revoke(Reason, Option<i64>),
    Hold,
    Release,
}

/// A rejection's reason as it is kept, listed and audited: trimmed, 1 to
/// [`MAX_REJECTION_REASON_CHARS`] characters, no control or invisible characters, and no
/// national ID number (DESIGN invariant 6: they never reach the audit log): no run of 15 or
/// more digits, however written ([`longest_digit_run`]). A run that long is rarely a
/// reason's business; a date range or a fingerprint is not refused.
fn rejection_reason(reason: &str) -> Result<&str, RaError> {
    let reason = reason.trim();
    let bad = |why: &str| {
        Err(RaError::Invalid(format!(
            "the reason says why the request is rejected, in 1 to {MAX_REJECTION_REASON_CHARS} \
             characters: {why}"
        )))
    };
    if reason.is_empty() {
        return bad("it is empty");
    }
    if reason.chars().count() > MAX_REJECTION_REASON_CHARS {
        return bad("it is longer");
    }
    if reason.chars().any(crate::text::is_control_or_invisible) {
        return bad("it has a control or invisible character");
    }
    if longest_digit_run(reason) >= 15 {
        return bad(
            "it has 15 digits or more in a row (counted across single spaces and \
             separators), which is how a national ID number would show: leave it out",
        );
    }
    Ok(reason)
}

/// The most digits `text` has in a row once it is NFKC-folded (full-width digits are digits;
/// so are other scripts' decimal digits), counting across one separator (a space, `-`, `.`,
/// `/`, `_`, a comma, a dash) between two digits, but not across two. Words of 32 or more hex
/// characters with a letter among them (a key fingerprint, a serial) are not counted.
pub(super) fn longest_digit_run(text: &str) -> usize {
    use unicode_normalization::UnicodeNormalization;
    let folded: String = text.nfkc().collect();
    let fingerprint = |w: &str| {
        w.chars().count() >= 32
            && w.chars().all(|c| c.is_ascii_hexdigit())
            && w.chars().any(|c| c.is_ascii_alphabetic())
    };
    let separator = |c: char| {
        c.is_whitespace()
            || matches!(
                c,
                '-' | '.' | '/' | '_' | ',' | '，' | '–' | '—' | '‐' | '−' | '、'
            )
    };
    let (mut longest, mut run, mut after_separator) = (0, 0, false);
    for word in folded.split(' ') {
        let chars: Vec<char> = if fingerprint(word) {
            vec!['#']
        } else {
            word.chars().collect()
        };
        // The space that split the words is a separator like any other.
        for c in chars.into_iter().chain(std::iter::once(' ')) {
            if c.is_numeric() {
                run += 1;
                after_separator = false;
                longest = longest.max(run);
            } else if separator(c) && run > 0 && !after_separator {
                after_separator = true;
            } else {
                run = 0;
                after_separator = false;
            }
        }
    }
    longest
}

fn not_issued() -> RaError {
    RaError::Ca(crate::ca::CaError::InvalidRequest(
        "the request was not issued".into(),
    ))
}

#[cfg(test)]
mod reason_tests {
    use super::longest_digit_run;

    #[test]
    fn an_id_number_shows_as_a_long_digit_run_however_written() {
        for id in [
            "11010119900307123X",
            "ID11010119900307123X",
            "110101 19900307 1234",
            "110101/19900307/123X",
            "110101_19900307_1234",
            "110101-19900307-1234",
            "１１０１０１１９９００３０７１２３４",
            "١١٠١٠١١٩٩٠٠٣٠٧١٢٣٤",
        ] {
            assert!(longest_digit_run(id) >= 15, "{id}");
        }
    }

    #[test]
    fn dates_amounts_and_fingerprints_are_not_long_runs() {
        for ordinary in [
            "valid 2024.03.07 - 2025.03.06",
            "the amount 1.000.000 is over the limit",
            "Branch 12, counter 3",
            "key e6bf518d88c9f3db7ee5491ff94bde2d9a0a912e4caf2ca4fe2416c58a79910c is not the teller's",
            "filed 2026-11-28 10:00",
        ] {
            assert!(longest_digit_run(ordinary) < 15, "{ordinary}");
        }
    }
}
