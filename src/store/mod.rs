//! Persistence behind one trait. SQLite is the embedded default; other engines implement the
//! same trait. Every state-changing method takes the audit event that describes it and appends
//! it in the same transaction (design invariant 3).

mod group;
mod postgres;
mod sqlite;

pub use group::GroupCommit;
pub use postgres::{PostgresOptions, PostgresStore};
pub use sqlite::SqliteStore;

use crate::audit::{AuditEvent, AuditRecord};
use crate::ca::IssuerId;

/// What the store can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database cannot be read or written now (I/O error, disk full, locked too long).
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A serial number is already taken (by any issuer).
    #[error("serial {0} is already in use")]
    SerialTaken(String),
    /// No such object.
    #[error("{0} not found")]
    NotFound(String),
    /// The change does not fit the object's current state.
    #[error("{0}")]
    Conflict(String),
    /// The stored data is not what this version of Signet wrote.
    #[error("store data is corrupt: {0}")]
    Corrupt(String),
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// Lifecycle of a certificate record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertStatus {
    /// To-be-signed bytes recorded; not yet signed (or signing was interrupted).
    Pending,
    /// Signed and stored; may have been handed out.
    Issued,
    /// Interrupted issuance, voided: never handed out, but listed on CRLs since it may have been signed.
    Void,
}

impl CertStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CertStatus::Pending => "pending",
            CertStatus::Issued => "issued",
            CertStatus::Void => "void",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "pending" => Ok(CertStatus::Pending),
            "issued" => Ok(CertStatus::Issued),
            "void" => Ok(CertStatus::Void),
            other => Err(StoreError::Corrupt(format!("unknown status {other:?}"))),
        }
    }
}

/// Where a teller request stands. Only a pending request is decided; `Approved` goes back
/// to `Pending` only when its issuance failed and nothing was issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestStatus {
    /// Waiting for a second teller-admin.
    Pending,
    /// Approved: its certificate (or key) was issued, or is being.
    Approved,
    /// Not decided within its time to live.
    Expired,
    /// Declined by a teller-admin of its bank (withdrawn, when its filer did), or by Signet
    /// when approving it could only fail (the teller already has a key in the HSM).
    Rejected,
}

impl RequestStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RequestStatus::Pending => "pending",
            RequestStatus::Approved => "approved",
            RequestStatus::Expired => "expired",
            RequestStatus::Rejected => "rejected",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "pending" => Ok(RequestStatus::Pending),
            "approved" => Ok(RequestStatus::Approved),
            "expired" => Ok(RequestStatus::Expired),
            "rejected" => Ok(RequestStatus::Rejected),
            other => Err(StoreError::Corrupt(format!(
                "unknown teller request status {other:?}"
            ))),
        }
    }
}

impl std::fmt::Display for RequestStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A revocation (or hold) as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RevocationRecord {
    pub revoked_at: i64,
    /// RFC 5280 CRLReason code; `None` means unspecified (no reasonCode entry extension).
    pub reason_code: Option<u8>,
    pub invalidity_date: Option<i64>,
}

/// A certificate's status alone, without its DER: what a verification reads on every request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertState {
    pub status: CertStatus,
    pub created_at: i64,
    pub revocation: Option<RevocationRecord>,
    /// Hex SHA-256 of the signed certificate's DER (none while pending): a verification
    /// compares it with the certificate presented, so that a certificate bearing a serial
    /// Signet issued but other content is not taken for Signet's.
    pub thumbprint: Option<String>,
}

/// A certificate as the store knows it.
#[derive(Debug, Clone)]
pub struct CertRecord {
    pub serial: String,
    pub issuer: IssuerId,
    pub profile: String,
    pub status: CertStatus,
    pub subject: String,
    pub subject_serial_digest: Option<String>,
    pub shard: u32,
    pub not_before: i64,
    pub not_after: i64,
    pub tbs_der: Vec<u8>,
    pub cert_der: Option<Vec<u8>>,
    pub created_at: i64,
    pub revocation: Option<RevocationRecord>,
    /// The tenant that requested it (`None`: the CA operator). Opaque to the CA.
    pub owner: Option<String>,
    /// Hex subjectKeyIdentifier written in the certificate.
    pub key_id: Option<String>,
}

/// An entry of a CRL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedEntry {
    pub serial: String,
    pub revocation: RevocationRecord,
}

/// A CA key and certificate.
#[derive(Debug, Clone)]
pub struct CaRecord {
    pub name: String,
    pub key_label: String,
    pub cert_der: Option<Vec<u8>>,
    pub public_key: Vec<u8>,
    pub created_at: i64,
}

/// A signed checkpoint of the audit chain's head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub seq: u64,
    pub hash: Vec<u8>,
    pub at: i64,
    pub signature: Vec<u8>,
}

/// A CRL issued by the store's number sequence.
#[derive(Debug, Clone)]
pub struct CrlRecord {
    pub issuer: IssuerId,
    pub shard: Option<u32>,
    pub number: u64,
    pub this_update: i64,
    pub next_update: i64,
    /// Its scope's status epoch ([`Store::crl_scope_epoch`]) its entries were read at: every
    /// status change of the scope up to it is on this CRL. `None` for CRLs made before the
    /// store kept it (made again); the whole store's epoch for CRLs made before it kept
    /// scopes' (version 8 on SQLite, 6 on PostgreSQL), which the upgrade makes the epoch of
    /// each scope that lists something.
    pub status_epoch: Option<u64>,
    pub crl_der: Option<Vec<u8>>,
}

/// The newest CRL number a scope has taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrlNumbered {
    pub number: u64,
    pub this_update: i64,
    /// Whether its signed DER is stored; `false` while its maker signs it (or after a maker
    /// that failed or died between recording and storing it).
    pub signed: bool,
}

/// A CRL about to take its number.
#[derive(Debug, Clone, Copy)]
pub struct NewCrl {
    pub issuer: IssuerId,
    pub shard: Option<u32>,
    pub this_update: i64,
    pub next_update: i64,
    /// The status epoch read before its entries were (see [`CrlRecord::status_epoch`]).
    pub status_epoch: u64,
    /// Which CRL of its scope it must follow.
    pub succeeds: Succeeds,
}

/// Why a credential's holder was not set: it has one already (`has_one`), or there is no such
/// active credential of the tenant (`None`).
fn holder_not_set(id: &str, has_one: Option<bool>) -> StoreError {
    match has_one {
        Some(true) => StoreError::Conflict(format!(
            "credential {id} already has a holder; a holder does not change: revoke the \
             credential and add a new one with --holder"
        )),
        _ => StoreError::NotFound(format!("active credential {id} of this tenant")),
    }
}

/// The scope's newest CRL as [`may_succeed`] weighs it: its number and status epoch, and the
/// scope's status epoch now.
pub(crate) type NewestCrl = (u64, u64, u64);

/// Whether `crl` may follow the scope's newest CRL. Never one made from older records than
/// the newest's (a smaller status epoch: its entries were read before a change the newest
/// lists, and RFC 5280 5.2.3 wants that change on every later CRL): a maker that read the
/// store before another process's CRL records nothing and reads again. A newest CRL whose
/// epoch is above the scope's own was made before scopes had epochs of their own (store
/// version 7 recorded the whole store's), and says nothing about it. (A thisUpdate before the
/// newest's is let be: a clock stepped back must not stop CRLs.)
fn may_succeed(crl: &NewCrl, newest: Option<NewestCrl>) -> bool {
    let made_from_older_records =
        newest.is_some_and(|(_, epoch, scope_now)| crl.status_epoch < epoch && epoch <= scope_now);
    !made_from_older_records
        && match crl.succeeds {
            Succeeds::Newest => true,
            Succeeds::Only(judged) => judged == newest.map(|(number, _, _)| number),
        }
}

/// Which CRL of its scope a new CRL must follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Succeeds {
    /// Whichever is newest when it is recorded (an operator's `crl generate`).
    Newest,
    /// Only the CRL of this number (`None`: only a scope without CRLs). Two processes that find
    /// a CRL due at the same moment both name the CRL they judged: the second to record finds
    /// another in its place, and records nothing.
    Only(Option<u64>),
}

/// A bank served by this CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantRecord {
    pub id: String,
    pub name: String,
    pub created_at: i64,
}

/// An API credential. The token itself is never stored, only its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialRecord {
    pub id: String,
    pub tenant_id: String,
    pub role: String,
    pub token_hash: Vec<u8>,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
    /// For `teller` credentials: the teller they speak for.
    pub teller_id: Option<String>,
    /// The person it was given to (an employee id, a name), when the operator said: the
    /// two-person rule tells people apart by it.
    pub holder: Option<String>,
}

/// A teller certificate request awaiting a second teller-admin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TellerRequestRecord {
    pub id: String,
    pub tenant_id: String,
    /// The credential that filed it.
    pub requested_by: String,
    /// That credential's holder when it filed (`None`: it had none, or the request is older
    /// than store version 10).
    pub requested_by_holder: Option<String>,
    pub csr: Vec<u8>,
    pub subject: String,
    pub status: RequestStatus,
    pub created_at: i64,
    pub expires_at: i64,
    pub decided_by: Option<String>,
    pub decided_at: Option<i64>,
    /// Why it was rejected, as the teller-admin (or Signet) said (store version 11).
    pub decision_reason: Option<String>,
    pub serial: Option<String>,
    /// `certificate` (from a CSR) or `hsm-key` (a key made in the HSM for `teller_id`).
    pub kind: String,
    pub teller_id: Option<String>,
}

impl TellerRequestRecord {
    /// Its status at `now`: a pending request past its expiry can no longer be approved, so
    /// it is expired, whether or not anyone has tried to decide it since.
    pub fn status_at(&self, now: i64) -> RequestStatus {
        match self.status {
            RequestStatus::Pending if now >= self.expires_at => RequestStatus::Expired,
            s => s,
        }
    }
}

/// A teller of a bank.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TellerRecord {
    pub id: String,
    pub tenant_id: String,
    pub employee_id: String,
    pub name: String,
    pub created_at: i64,
}

/// A key held in the HSM for one owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigningKeyRecord {
    pub id: String,
    pub tenant_id: String,
    /// `seal` or `teller`.
    pub kind: String,
    pub teller_id: Option<String>,
    pub key_label: String,
    pub certificate_serial: String,
    pub pin_hash: Option<String>,
    pub activation_hash: Option<String>,
    pub failed_attempts: u32,
    pub locked: bool,
    pub created_at: i64,
}

/// How a PIN attempt changes a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinAttempt {
    /// Right: the count of wrong attempts starts again.
    Correct,
    /// Wrong (already counted by the reservation): the key locks at `max`.
    Wrong { max: u32 },
}

/// Whether a PIN attempt may be checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PinReservation {
    /// Counted: check the PIN, then record the outcome with [`Store::pin_attempt`].
    Reserved,
    /// The key is locked. When this reservation locked it, the lock's audit record (appended
    /// in the same transaction as the lock).
    Locked(Option<AuditRecord>),
}

/// A recorded PIN attempt: the key after it, and the audit records it appended (the attempt,
/// then the lock when this attempt locked the key).
#[derive(Debug, Clone)]
pub struct PinOutcome {
    pub key: SigningKeyRecord,
    pub records: Vec<AuditRecord>,
}

/// What the replay guard remembers of a verified instruction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayKeys {
    /// Hex SHA-256 of the signer's SubjectPublicKeyInfo.
    pub signer: String,
    /// Hex SHA-256 of the instruction.
    pub digest: String,
    /// The instruction's id, when the policy names an id field and the instruction has one.
    pub instruction_id: Option<String>,
}

/// One durable write of an issuance or a verification, for [`Store::grouped_writes`] (group
/// commit).
#[derive(Debug, Clone)]
pub enum GroupedWrite {
    /// What [`Store::record_pending`] does.
    Pending {
        record: CertRecord,
        event: AuditEvent,
    },
    /// What [`Store::complete_issuance`] does.
    Complete {
        serial: String,
        cert_der: Vec<u8>,
        at: i64,
        event: AuditEvent,
    },
    /// What [`Store::record_verification`] does.
    Verification {
        guard: Option<ReplayKeys>,
        at: i64,
        window_secs: i64,
        event: VerificationEvent,
    },
}

/// Writes that stand or fall together in a group commit: the records of one payment
/// instruction's signers (one signer's replay keys must not be kept when another's record
/// fails, or a retry of the instruction would be taken for a replay).
pub type WriteUnit = Vec<GroupedWrite>;

/// The audit event of a verification, made once the replay guard has said when the
/// instruction was first seen (see [`Store::record_verification`]).
#[derive(Clone)]
pub struct VerificationEvent(pub std::sync::Arc<dyn Fn(Option<i64>) -> AuditEvent + Send + Sync>);

impl std::fmt::Debug for VerificationEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("VerificationEvent(..)")
    }
}

/// What one grouped write did.
#[derive(Debug, Clone)]
pub struct Applied {
    /// Its audit event, as appended.
    pub audit: AuditRecord,
    /// For a verification: when the replay guard first saw the instruction (see
    /// [`Store::record_verification`]); `None` otherwise.
    pub first_seen: Option<i64>,
}

/// The `thumbprint` column of an issued certificate: hex SHA-256 of its DER, the key of
/// [`Store::certificate_by_thumbprint`].
pub(crate) fn thumbprint(cert_der: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(cert_der))
}

/// A signed certificate arrived for a record that is no longer pending (voided meanwhile).
pub(crate) fn no_longer_pending(serial: &str) -> StoreError {
    StoreError::Conflict(format!(
        "certificate {serial} is no longer pending (voided by another process?)"
    ))
}

/// The state rule of a revocation or hold, the same for every engine, read inside the write's
/// transaction: only an issued certificate, and a revoked one only when it is on hold and the
/// new reason is final (hold → revocation is allowed, RFC 5280 5.3.1). The revocation to
/// write: a held certificate has not been valid since its hold, so its final revocation
/// carries that time as invalidityDate (RFC 5280 5.3.2), or the earlier one given; otherwise a
/// relying party with a proof of existence between the hold and the revocation would take a
/// signature made while it was suspended.
pub(crate) fn check_revocable(
    cert: &CertRecord,
    revocation: &RevocationRecord,
) -> Result<RevocationRecord> {
    let serial = &cert.serial;
    if cert.status != CertStatus::Issued {
        return Err(StoreError::Conflict(format!(
            "certificate {serial} is {}, not issued",
            cert.status.as_str()
        )));
    }
    if let Some(existing) = cert.revocation {
        let on_hold = existing.reason_code == Some(crate::ca::HOLD_REASON_CODE);
        let to_final = revocation.reason_code != Some(crate::ca::HOLD_REASON_CODE);
        if !(on_hold && to_final) {
            return Err(StoreError::Conflict(format!(
                "certificate {serial} is already {}",
                if on_hold { "on hold" } else { "revoked" }
            )));
        }
        let held_since = existing.revoked_at;
        return Ok(RevocationRecord {
            invalidity_date: Some(
                revocation
                    .invalidity_date
                    .map_or(held_since, |d| d.min(held_since)),
            ),
            ..*revocation
        });
    }
    Ok(*revocation)
}

/// Only a certificate on hold can be released.
pub(crate) fn check_releasable(cert: &CertRecord) -> Result<()> {
    if cert.revocation.map(|r| r.reason_code) != Some(Some(crate::ca::HOLD_REASON_CODE)) {
        return Err(StoreError::Conflict(format!(
            "certificate {} is not on hold",
            cert.serial
        )));
    }
    Ok(())
}

/// The replay guard's tables, each with the column that holds its key beside `signer`.
pub(crate) const REPLAY_TABLES: [(&str, &str); 2] = [
    ("replay_instructions", "digest"),
    ("replay_instruction_ids", "instruction_id"),
];

/// Deletes at most `limit` keys of a replay table first seen before `seen_before`, oldest
/// first (both placeholders as the engine writes them). Writers are serialized (SQLite's one
/// writer; PostgreSQL's advisory write lock), so no key is seen again while this runs; the
/// outer `first_seen` test would keep such a key (PostgreSQL checks it again on the updated
/// row) should that ever change.
pub(crate) fn forget_replay_keys_sql(
    (table, column): (&str, &str),
    seen_before: &str,
    limit: &str,
) -> String {
    format!(
        "DELETE FROM {table} WHERE first_seen < {seen_before} AND (signer, {column}) IN
         (SELECT signer, {column} FROM {table} WHERE first_seen < {seen_before}
          ORDER BY first_seen LIMIT {limit})"
    )
}

/// The store. Implementations must be safe to share between threads and between processes
/// that use the same database: uniqueness and ordering are database constraints.
pub trait Store: Send + Sync {
    /// The CA rows (root, customer, teller, audit, ...).
    fn cas(&self) -> Result<Vec<CaRecord>>;
    /// Adds CA rows with one audit event, all or nothing.
    fn add_cas(&self, cas: &[CaRecord], at: i64, event: &AuditEvent) -> Result<AuditRecord>;

    /// Records the to-be-signed certificate (status pending) before the HSM signs it.
    /// Fails with `SerialTaken` when the serial exists.
    fn record_pending(&self, rec: &CertRecord, event: &AuditEvent) -> Result<AuditRecord>;
    /// Stores the signed certificate of a pending record.
    fn complete_issuance(
        &self,
        serial: &str,
        cert_der: &[u8],
        at: i64,
        event: &AuditEvent,
    ) -> Result<AuditRecord>;
    /// Group commit: applies several units of writes in order, in one transaction (one
    /// fsync), each write with the result `record_pending` / `complete_issuance` /
    /// `record_verification` would give it. A unit stands or falls whole: a write that fails
    /// fails its unit (none of the unit's writes is applied) and leaves the other units in
    /// place. Everything is durable when it returns `Ok`; `Err` means nothing is applied.
    fn grouped_writes(&self, units: &[WriteUnit]) -> Result<Vec<Result<Vec<Applied>>>>;
    /// Pending records created at or before `cutoff`.
    fn pending_before(&self, cutoff: i64) -> Result<Vec<CertRecord>>;
    /// Voids a pending record (it goes on the CRL, dated `at`).
    fn void_pending(&self, serial: &str, at: i64, event: &AuditEvent) -> Result<AuditRecord>;

    fn certificate(&self, serial: &str) -> Result<Option<CertRecord>>;
    /// [`Store::certificate`]'s status, revocation and creation time only (no DER is read).
    fn certificate_state(&self, serial: &str) -> Result<Option<CertState>>;
    /// Every issued certificate (newest last). For operators' reports and tests.
    fn certificates(&self) -> Result<Vec<CertRecord>>;

    /// Revokes or holds an issued certificate. Refuses a revoked one unless it is on hold and
    /// the new reason is a final one (hold → revocation is allowed, RFC 5280 5.3.1).
    fn revoke(
        &self,
        serial: &str,
        revocation: RevocationRecord,
        event: &AuditEvent,
    ) -> Result<AuditRecord>;
    /// Releases a certificate from hold.
    fn release(&self, serial: &str, at: i64, event: &AuditEvent) -> Result<AuditRecord>;
    /// Revoked, held and void entries of one issuer (and shard, when given).
    fn revoked(&self, issuer: IssuerId, shard: Option<u32>) -> Result<Vec<RevokedEntry>>;

    /// Calls `f` with each entry `revoked` would return, in the same order, one at a time:
    /// a CRL of a million entries is built without holding them all. Implementations should
    /// read from a consistent snapshot without blocking writers (a revocation must stay fast
    /// while a large CRL is built); an error from `f` stops the walk as `Conflict`. Returns
    /// the number of entries. The default walks `revoked`'s vector.
    fn each_revoked(
        &self,
        issuer: IssuerId,
        shard: Option<u32>,
        f: &mut dyn FnMut(&RevokedEntry) -> std::result::Result<(), String>,
    ) -> Result<u64> {
        let all = self.revoked(issuer, shard)?;
        for e in &all {
            f(e).map_err(StoreError::Conflict)?;
        }
        Ok(all.len() as u64)
    }

    /// Takes the next CRL number of (issuer, shard) and records the to-be-signed CRL; `None`
    /// (nothing recorded, no number taken) when the scope's newest CRL is not the one
    /// `crl.succeeds` names, or was made from later records than `crl`.
    fn record_crl(
        &self,
        crl: &NewCrl,
        build_tbs: &mut dyn FnMut(u64) -> std::result::Result<Vec<u8>, String>,
        event: &AuditEvent,
    ) -> Result<Option<(u64, AuditRecord)>>;
    /// Stores the signed CRL.
    fn complete_crl(
        &self,
        issuer: IssuerId,
        shard: Option<u32>,
        number: u64,
        crl_der: &[u8],
    ) -> Result<()>;
    /// The newest signed CRL of (issuer, shard).
    fn latest_crl(&self, issuer: IssuerId, shard: Option<u32>) -> Result<Option<CrlRecord>>;
    /// The newest CRL (issuer, shard) has taken a number for, signed or not: the one the next
    /// must succeed.
    fn newest_crl_number(
        &self,
        issuer: IssuerId,
        shard: Option<u32>,
    ) -> Result<Option<CrlNumbered>>;
    /// Every (issuer, shard) a CRL was recorded for (shard `None`: a CRL of the whole issuer),
    /// as the engine stores them: issuer name and shard key (-1 for `None`).
    fn crl_scope_keys(&self) -> Result<Vec<(String, i64)>>;

    /// [`Store::crl_scope_keys`] read back (names of issuers Signet does not know are left out).
    fn crl_scopes_recorded(&self) -> Result<Vec<(IssuerId, Option<u32>)>> {
        Ok(self
            .crl_scope_keys()?
            .into_iter()
            .filter_map(|(issuer, shard)| {
                Some((IssuerId::parse(&issuer)?, u32::try_from(shard).ok()))
            })
            .collect())
    }

    /// The newest signed CRL of (issuer, shard) without its DER (`crl_der` is `None`): number
    /// and times, to decide whether a cached copy is current without reading megabytes.
    /// The default reads the whole record.
    fn latest_crl_info(&self, issuer: IssuerId, shard: Option<u32>) -> Result<Option<CrlRecord>> {
        Ok(self.latest_crl(issuer, shard)?.map(|mut c| {
            c.crl_der = None;
            c
        }))
    }

    /// Certificates of `owner` whose subject serialNumber has this digest.
    fn certificates_by_subject_serial(&self, owner: &str, digest: &str) -> Result<Vec<CertRecord>>;

    fn add_tenant(&self, tenant: &TenantRecord, event: &AuditEvent) -> Result<AuditRecord>;
    fn tenant_by_name(&self, name: &str) -> Result<Option<TenantRecord>>;
    fn tenant(&self, id: &str) -> Result<Option<TenantRecord>>;

    fn add_credential(&self, cred: &CredentialRecord, event: &AuditEvent) -> Result<AuditRecord>;
    fn credential_by_token_hash(&self, hash: &[u8]) -> Result<Option<CredentialRecord>>;
    fn credentials(&self, tenant_id: &str) -> Result<Vec<CredentialRecord>>;
    /// One credential by its id (any tenant).
    fn credential(&self, id: &str) -> Result<Option<CredentialRecord>>;
    /// Replaces an active credential's token hash (and expiry), only while its hash is still
    /// `old_hash`: of two concurrent rotations one wins, and the old token stops working in
    /// the same transaction as the audit event.
    fn rotate_credential(
        &self,
        id: &str,
        old_hash: &[u8],
        new_hash: &[u8],
        expires_at: Option<i64>,
        at: i64,
        event: &AuditEvent,
    ) -> Result<AuditRecord>;
    fn revoke_credential(
        &self,
        tenant_id: &str,
        id: &str,
        at: i64,
        event: &AuditEvent,
    ) -> Result<AuditRecord>;
    /// Gives an active credential of the tenant that has no holder one (`Conflict` when it has
    /// one: a holder, once given, does not change).
    fn set_credential_holder(
        &self,
        tenant_id: &str,
        id: &str,
        holder: &str,
        at: i64,
        event: &AuditEvent,
    ) -> Result<AuditRecord>;

    fn add_teller_request(
        &self,
        req: &TellerRequestRecord,
        event: &AuditEvent,
    ) -> Result<AuditRecord>;
    fn teller_request(&self, id: &str) -> Result<Option<TellerRequestRecord>>;
    /// A bank's teller requests, newest first, at most `limit`; only those whose status at
    /// `now` ([`TellerRequestRecord::status_at`]) is `status`, when given.
    fn teller_requests(
        &self,
        tenant_id: &str,
        status: Option<RequestStatus>,
        now: i64,
        limit: u32,
    ) -> Result<Vec<TellerRequestRecord>>;
    /// Moves a pending request to `status` (approved, expired or rejected, with `reason` for
    /// the last), only if it is still pending: of two concurrent decisions, one wins.
    fn decide_teller_request(
        &self,
        id: &str,
        status: RequestStatus,
        reason: Option<&str>,
        decided_by: &str,
        at: i64,
        event: &AuditEvent,
    ) -> Result<AuditRecord>;
    /// Records the serial issued for an approved request.
    fn set_teller_request_serial(&self, id: &str, serial: &str) -> Result<()>;
    /// Puts an approved request whose issuance failed back to pending, with its audit event
    /// (none when the request is not an approved one without a serial: nothing changes).
    fn reopen_teller_request(&self, id: &str, at: i64, event: &AuditEvent) -> Result<()>;

    /// A signed certificate by its subjectKeyIdentifier (hex).
    fn certificate_by_key_id(&self, key_id: &str) -> Result<Option<CertRecord>>;
    /// A signed certificate by the SHA-256 of its DER (hex).
    fn certificate_by_thumbprint(&self, thumbprint: &str) -> Result<Option<CertRecord>>;

    /// Records a verification: the replay-guard keys (when given) and its audit event, in one
    /// transaction. `event` is told when the instruction (or its id) was first seen from this
    /// signer (`None` the first time, or once the earlier sighting is older than
    /// `window_secs`), so that the audit records the final verdict; that time is returned.
    fn record_verification(
        &self,
        guard: Option<&ReplayKeys>,
        at: i64,
        window_secs: i64,
        event: &dyn Fn(Option<i64>) -> AuditEvent,
    ) -> Result<Option<i64>>;

    /// Forgets replay-guard keys first seen before `seen_before`: at most `limit` of each kind
    /// (instruction digests, instruction ids), in one transaction that appends
    /// `event(forgotten)` when any went. Returns how many went and that event; None when none
    /// were that old.
    fn forget_replay_keys(
        &self,
        seen_before: i64,
        limit: u32,
        at: i64,
        event: &dyn Fn(u64) -> AuditEvent,
    ) -> Result<Option<(u64, AuditRecord)>>;

    fn add_teller(&self, teller: &TellerRecord, event: &AuditEvent) -> Result<AuditRecord>;
    fn teller_by_employee(
        &self,
        tenant_id: &str,
        employee_id: &str,
    ) -> Result<Option<TellerRecord>>;
    fn teller(&self, id: &str) -> Result<Option<TellerRecord>>;

    fn add_signing_key(&self, key: &SigningKeyRecord, event: &AuditEvent) -> Result<AuditRecord>;
    fn signing_key(&self, id: &str) -> Result<Option<SigningKeyRecord>>;
    /// A bank's signing keys.
    fn signing_keys(&self, tenant_id: &str) -> Result<Vec<SigningKeyRecord>>;
    /// Counts a PIN attempt before the PIN is checked, so that concurrent guesses cannot get
    /// past the limit. A key found at the limit but not yet locked is locked here, with
    /// `lock_event` appended in the same transaction: no lock without its audit record.
    fn reserve_pin_attempt(
        &self,
        id: &str,
        max: u32,
        at: i64,
        lock_event: &AuditEvent,
    ) -> Result<PinReservation>;
    /// Records the outcome of a reserved PIN attempt with its audit event. A wrong attempt
    /// that reaches the limit locks the key and appends `lock_event` in the same transaction.
    fn pin_attempt(
        &self,
        id: &str,
        attempt: PinAttempt,
        at: i64,
        event: &AuditEvent,
        lock_event: &AuditEvent,
    ) -> Result<PinOutcome>;
    /// Sets a key's PIN hash, clears the activation code and the failed attempts.
    /// With `activation_hash`, only while that activation code is still unused.
    fn set_pin(
        &self,
        id: &str,
        pin_hash: &str,
        activation_hash: Option<&str>,
        at: i64,
        event: &AuditEvent,
    ) -> Result<AuditRecord>;
    /// Unlocks a key (failed attempts back to zero).
    fn unlock_key(&self, id: &str, at: i64, event: &AuditEvent) -> Result<AuditRecord>;
    /// Every bank's keys that have a PIN hash.
    fn signing_keys_with_pins(&self) -> Result<Vec<SigningKeyRecord>>;
    /// Replaces a key's PIN hash `old` by `new` (the same PIN's, in another form) with its
    /// audit event, only while the hash is still `old`: None when it changed meanwhile.
    fn replace_pin_hash(
        &self,
        id: &str,
        old: &str,
        new: &str,
        at: i64,
        event: &AuditEvent,
    ) -> Result<Option<AuditRecord>>;

    /// Grows whenever any process revokes, holds, releases or voids a certificate: the seq of
    /// the newest such audit event. Writes are serialized (one writer at a time on either
    /// engine), so a change committed after this is read has a larger epoch.
    fn status_epoch(&self) -> Result<u64>;

    /// [`Store::status_epoch`] for one CRL scope: the seq of the newest status change of a
    /// certificate of `issuer` (and `shard`, when given; the newest of any shard when not). A
    /// change made after this is read has a larger one. 0 when the scope has seen none since
    /// version 8 (SQLite) or 6 (PostgreSQL) of the store.
    fn crl_scope_epoch(&self, issuer: IssuerId, shard: Option<u32>) -> Result<u64>;

    /// Appends several audit events in one transaction (a batch of signatures).
    fn append_audit_many(&self, at: i64, events: &[AuditEvent]) -> Result<Vec<AuditRecord>>;

    /// Appends one audit event on its own (for changes outside the store, like a key ceremony step).
    fn append_audit(&self, at: i64, event: &AuditEvent) -> Result<AuditRecord>;
    /// Audit events with seq > `after`, in order.
    fn audit_events(&self, after: u64) -> Result<Vec<AuditRecord>>;
    /// Audit events with `after` < seq <= `upto`, in order.
    fn audit_events_upto(&self, after: u64, upto: u64) -> Result<Vec<AuditRecord>>;
    /// One bank's events with seq > `after`, in order, at most `limit`.
    fn tenant_audit_events(&self, tenant: &str, after: u64, limit: u32)
        -> Result<Vec<AuditRecord>>;
    /// The newest event, if any.
    fn audit_head(&self) -> Result<Option<AuditRecord>>;
    fn add_checkpoint(&self, cp: &Checkpoint) -> Result<()>;
    /// Removes the checkpoints matching these (seq, hash) pairs exactly: those an
    /// acknowledgement of lost events voids (the checkpoint file keeps them). Left in place,
    /// their seqs would keep a new checkpoint of the same event out of the table.
    fn remove_checkpoints(&self, pairs: &[(u64, Vec<u8>)]) -> Result<usize>;
    fn checkpoints(&self) -> Result<Vec<Checkpoint>>;
    /// The seq of the newest checkpoint, if any (without reading them all).
    fn newest_checkpoint_seq(&self) -> Result<Option<u64>>;
}
