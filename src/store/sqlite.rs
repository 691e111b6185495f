//! The embedded store: one SQLite file in WAL mode. Writers take `BEGIN IMMEDIATE`, so audit
//! appends are serialized by the database even across processes. Writes go through one
//! connection; reads use a small pool of their own connections (WAL readers never wait for the
//! writer, so an fsync in progress does not hold up authentication or OCSP look-ups).

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{
    params, Connection, ErrorCode, OptionalExtension, Row, Transaction, TransactionBehavior,
};

use super::group::GroupTransaction;
use super::*;
use crate::audit::{chain_hash, AuditEvent, AuditRecord, GENESIS};

const MIGRATIONS: &[&str] = &[
    include_str!("migrations/0001_init.sql"),
    include_str!("migrations/0002_signing.sql"),
    include_str!("migrations/0003_status_epoch.sql"),
    include_str!("migrations/0004_crl_order.sql"),
    include_str!("migrations/0005_write_less.sql"),
    include_str!("migrations/0006_replay_expiry.sql"),
    include_str!("migrations/0007_crl_status_epoch.sql"),
    include_str!("migrations/0008_crl_scope_epochs.sql"),
    include_str!("migrations/0009_credential_holder.sql"),
    include_str!("migrations/0010_teller_request_holder.sql"),
    include_str!("migrations/0011_teller_request_rejected.sql"),
];

/// Read connections kept open for reuse.
const MAX_IDLE_READERS: usize = 8;

/// SQLite-backed [`Store`].
pub struct SqliteStore {
    path: PathBuf,
    /// The writer: every transaction that changes something.
    conn: Mutex<Connection>,
    /// Idle read-only connections.
    readers: Mutex<Vec<Connection>>,
    /// Copies the WAL into the database beside the writer; stops when the store is dropped.
    _checkpointer: Option<Checkpointer>,
}

/// WAL pages after which the writer checkpoints by itself: only if the checkpointer thread
/// falls far behind or is gone (SQLite's default is 1,000).
const WRITER_AUTOCHECKPOINT_PAGES: u32 = 10_000;
/// How often the checkpointer thread copies committed WAL frames into the database.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(200);

/// A thread that runs passive checkpoints on its own connection. With SQLite's automatic
/// checkpoints the writer copied the WAL (and fsynced the database) inside a commit every
/// 1,000 pages, and every caller waiting on that group commit waited with it.
struct Checkpointer {
    _stop: std::sync::mpsc::Sender<()>,
}

impl Checkpointer {
    fn start(path: &Path) -> Option<Checkpointer> {
        let conn = match Connection::open(path) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "no checkpointer thread; the writer checkpoints");
                return None;
            }
        };
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("signet-checkpoint".into())
            .spawn(move || {
                let mut failing = false;
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(CHECKPOINT_EVERY)
                {
                    // PASSIVE never waits for readers or the writer; what it cannot copy now
                    // it copies next time.
                    match conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                        // Once per spell of failures (a full disk would fail five times a
                        // second), and once when they end.
                        Err(e) if !failing => {
                            failing = true;
                            tracing::warn!(error = %e, "WAL checkpoint failed; retrying quietly");
                        }
                        Ok(()) if failing => {
                            failing = false;
                            tracing::info!("WAL checkpoints work again");
                        }
                        _ => {}
                    }
                }
            })
            .map_err(
                |e| tracing::warn!(error = %e, "no checkpointer thread; the writer checkpoints"),
            )
            .ok()?;
        Some(Checkpointer { _stop: stop })
    }
}

fn map_err(e: rusqlite::Error) -> StoreError {
    match &e {
        rusqlite::Error::SqliteFailure(f, _) => match f.code {
            ErrorCode::DatabaseBusy
            | ErrorCode::DatabaseLocked
            | ErrorCode::DiskFull
            | ErrorCode::CannotOpen
            | ErrorCode::SystemIoFailure
            | ErrorCode::ReadOnly
            | ErrorCode::OutOfMemory
            | ErrorCode::PermissionDenied => StoreError::Unavailable(e.to_string()),
            ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase => {
                StoreError::Corrupt(e.to_string())
            }
            // A row the schema refuses (foreign key, CHECK, NOT NULL, unique), as PostgreSQL's
            // class 23: the request conflicts with the records; waiting will not mend it. A
            // trigger's refusal (the audit table's guards) is the store refusing, as a
            // PostgreSQL trigger's exception is.
            ErrorCode::ConstraintViolation
                if f.extended_code != rusqlite::ffi::SQLITE_CONSTRAINT_TRIGGER =>
            {
                StoreError::Conflict(e.to_string())
            }
            _ => StoreError::Unavailable(e.to_string()),
        },
        _ => StoreError::Corrupt(e.to_string()),
    }
}

/// A UNIQUE or PRIMARY KEY violation only (not a foreign key naming a row that is not there).
fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _)
        if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
            || f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY)
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and applies pending migrations.
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir).map_err(|e| {
                    StoreError::Unavailable(format!("cannot create {}: {e}", dir.display()))
                })?;
            }
        }
        let conn = Connection::open(path).map_err(map_err)?;
        conn.busy_timeout(Duration::from_secs(10))
            .map_err(map_err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(map_err)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(map_err)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(map_err)?;
        conn.pragma_update(None, "wal_autocheckpoint", WRITER_AUTOCHECKPOINT_PAGES)
            .map_err(map_err)?;
        let store = SqliteStore {
            path: path.to_path_buf(),
            conn: Mutex::new(conn),
            readers: Mutex::new(Vec::new()),
            _checkpointer: Checkpointer::start(path),
        };
        store.migrate()?;
        Ok(store)
    }

    fn migrate(&self) -> Result<()> {
        self.tx(|tx| {
            let version: usize = tx
                .query_row("PRAGMA user_version", [], |r| r.get(0))
                .map_err(map_err)?;
            if version > MIGRATIONS.len() {
                return Err(StoreError::Corrupt(format!(
                    "database schema version {version} is newer than this Signet ({})",
                    MIGRATIONS.len()
                )));
            }
            for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
                tx.execute_batch(sql).map_err(map_err)?;
                tx.pragma_update(None, "user_version", i + 1)
                    .map_err(map_err)?;
            }
            Ok(())
        })
    }

    fn tx<T>(&self, f: impl FnOnce(&mut Transaction) -> Result<T>) -> Result<T> {
        let mut conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        let mut tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(map_err)?;
        let out = f(&mut tx)?;
        tx.commit().map_err(map_err)?;
        Ok(out)
    }

    /// Runs `f` on a read connection (a committed snapshot; never blocked by the writer).
    fn read<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let idle = self.readers.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let conn = match idle {
            Some(c) => c,
            None => self.open_reader()?,
        };
        let out = f(&conn);
        let mut idle = self.readers.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE_READERS {
            idle.push(conn);
        }
        out
    }

    fn open_reader(&self) -> Result<Connection> {
        let conn = Connection::open_with_flags(
            &self.path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(map_err)?;
        conn.busy_timeout(Duration::from_secs(10))
            .map_err(map_err)?;
        Ok(conn)
    }

    /// At most one row of a query.
    fn optional_row<T, P: rusqlite::Params>(
        &self,
        sql: &str,
        params: P,
        row: impl FnOnce(&Row) -> rusqlite::Result<T>,
    ) -> Result<Option<T>> {
        self.read(|c| {
            c.prepare_cached(sql)
                .and_then(|mut st| st.query_row(params, row).optional())
                .map_err(map_err)
        })
    }

    /// Every row of a query.
    fn all_rows<T, P: rusqlite::Params>(
        &self,
        sql: &str,
        params: P,
        row: impl FnMut(&Row) -> rusqlite::Result<T>,
    ) -> Result<Vec<T>> {
        self.read(|c| {
            let mut st = c.prepare_cached(sql).map_err(map_err)?;
            let rows = st.query_map(params, row).map_err(map_err)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(map_err)
        })
    }

    /// Runs raw SQL. For tests that tamper with the store behind Signet's back.
    pub fn execute_raw(&self, sql: &str) -> Result<()> {
        let conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        conn.execute_batch(sql).map_err(map_err)
    }
}

impl GroupTransaction for Transaction<'_> {
    fn insert_pending(&mut self, rec: &CertRecord, event: &AuditEvent) -> Result<AuditRecord> {
        let tx: &Transaction = self;
        tx.prepare_cached(
            "INSERT INTO certificates (serial, issuer, profile, status, subject, subject_serial_digest,
                shard, not_before, not_after, tbs_der, cert_der, created_at, owner, key_id)
             VALUES (?1, ?2, ?3, 'pending', ?4, ?5, ?6, ?7, ?8, ?9, NULL, ?10, ?11, ?12)",
        )
        .and_then(|mut st| {
            st.execute(params![
                rec.serial,
                rec.issuer.as_str(),
                rec.profile,
                rec.subject,
                rec.subject_serial_digest,
                rec.shard as i64,
                rec.not_before,
                rec.not_after,
                rec.tbs_der,
                rec.created_at,
                rec.owner,
                rec.key_id
            ])
        })
        .map_err(|e| {
            if is_unique_violation(&e) {
                StoreError::SerialTaken(rec.serial.clone())
            } else {
                map_err(e)
            }
        })?;
        append(tx, rec.created_at, event)
    }

    fn complete_pending(
        &mut self,
        serial: &str,
        cert_der: &[u8],
        at: i64,
        event: &AuditEvent,
    ) -> Result<AuditRecord> {
        let tx: &Transaction = self;
        let n = tx
            .prepare_cached(
                "UPDATE certificates SET status = 'issued', cert_der = ?2, thumbprint = ?3
                 WHERE serial = ?1 AND status = 'pending'",
            )
            .and_then(|mut st| st.execute(params![serial, cert_der, super::thumbprint(cert_der)]))
            .map_err(map_err)?;
        if n != 1 {
            return Err(super::no_longer_pending(serial));
        }
        append(tx, at, event)
    }

    fn apply_verification(
        &mut self,
        guard: Option<&ReplayKeys>,
        at: i64,
        window_secs: i64,
        event: &dyn Fn(Option<i64>) -> AuditEvent,
    ) -> Result<Applied> {
        let tx: &Transaction = self;
        let mut first_seen: Option<i64> = None;
        if let Some(g) = guard {
            let cutoff = at - window_secs;
            let mut remember = |table: &str, column: &str, value: &str| -> Result<()> {
                // One statement in the common case (a key not seen within the window): it is
                // recorded, or an expired sighting replaced, and RETURNING says so. Only a
                // replay reads the earlier time. Cached statements: every verification runs
                // this (parsing the SQL again each time showed in the verification profile).
                let recorded: Option<i64> = tx
                    .prepare_cached(&format!(
                        "INSERT INTO {table} (signer, {column}, first_seen) VALUES (?1, ?2, ?3)
                         ON CONFLICT (signer, {column}) DO UPDATE SET first_seen = excluded.first_seen
                         WHERE {table}.first_seen <= ?4
                         RETURNING first_seen"
                    ))
                    .and_then(|mut st| {
                        st.query_row(params![g.signer, value, at, cutoff], |r| r.get(0))
                            .optional()
                    })
                    .map_err(map_err)?;
                if recorded.is_none() {
                    let t: i64 = tx
                        .prepare_cached(&format!(
                            "SELECT first_seen FROM {table} WHERE signer = ?1 AND {column} = ?2"
                        ))
                        .and_then(|mut st| st.query_row(params![g.signer, value], |r| r.get(0)))
                        .map_err(map_err)?;
                    first_seen = Some(first_seen.map_or(t, |f: i64| f.min(t)));
                }
                Ok(())
            };
            remember("replay_instructions", "digest", &g.digest)?;
            if let Some(id) = &g.instruction_id {
                remember("replay_instruction_ids", "instruction_id", id)?;
            }
        }
        let audit = append(tx, at, &event(first_seen))?;
        Ok(Applied { audit, first_seen })
    }
}

/// The columns [`teller_request_from_row`] reads, in its order.
const TELLER_REQUEST_COLUMNS: &str =
    "id, tenant_id, requested_by, csr, subject, status, created_at,
    expires_at, decided_by, decided_at, serial, kind, teller_id, requested_by_holder,
    decision_reason";

fn teller_request_from_row(r: &Row) -> rusqlite::Result<TellerRequestRecord> {
    let status: String = r.get(5)?;
    Ok(TellerRequestRecord {
        id: r.get(0)?,
        tenant_id: r.get(1)?,
        requested_by: r.get(2)?,
        csr: r.get(3)?,
        subject: r.get(4)?,
        status: RequestStatus::parse(&status).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(5, rusqlite::types::Type::Text, Box::new(e))
        })?,
        created_at: r.get(6)?,
        expires_at: r.get(7)?,
        decided_by: r.get(8)?,
        decided_at: r.get(9)?,
        serial: r.get(10)?,
        kind: r.get(11)?,
        teller_id: r.get(12)?,
        requested_by_holder: r.get(13)?,
        decision_reason: r.get(14)?,
    })
}

/// Appends the audit event of a status change and makes it the epoch of its certificate's
/// issuer and shard ([`Store::crl_scope_epoch`]).
fn append_status_change(
    tx: &Transaction,
    issuer: &str,
    shard: i64,
    at: i64,
    event: &AuditEvent,
) -> Result<AuditRecord> {
    let audit = append(tx, at, event)?;
    tx.execute(
        "INSERT INTO crl_scope_epochs (issuer, shard, epoch) VALUES (?1, ?2, ?3)
         ON CONFLICT (issuer, shard) DO UPDATE SET epoch = excluded.epoch",
        params![issuer, shard, audit.seq as i64],
    )
    .map_err(map_err)?;
    Ok(audit)
}

/// Appends `event` to the chain inside `tx`.
/// Locks a key that has reached `max` wrong attempts; true when this call locked it.
fn lock_at_limit(tx: &Transaction, id: &str, max: u32) -> Result<bool> {
    let n = tx
        .execute(
            "UPDATE signing_keys SET locked = 1 WHERE id = ?1 AND locked = 0 AND failed_attempts >= ?2",
            params![id, max],
        )
        .map_err(map_err)?;
    Ok(n == 1)
}

fn append(tx: &Transaction, at: i64, event: &AuditEvent) -> Result<AuditRecord> {
    let head: Option<(u64, Vec<u8>)> = tx
        .prepare_cached("SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1")
        .and_then(|mut st| {
            st.query_row([], |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?)))
                .optional()
        })
        .map_err(map_err)?;
    let (seq, prev) = match head {
        Some((s, h)) => (s + 1, h),
        None => (1, GENESIS.to_vec()),
    };
    let hash = chain_hash(&prev, seq, at, event);
    tx.prepare_cached(
        "INSERT INTO audit_events (seq, at, actor, action, object, details, tenant, prev_hash, hash)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )
    .and_then(|mut st| {
        st.execute(params![
            seq as i64,
            at,
            event.actor,
            event.action,
            event.object,
            event.details,
            event.tenant,
            prev,
            hash.to_vec()
        ])
    })
    .map_err(map_err)?;
    Ok(AuditRecord {
        seq,
        at,
        actor: event.actor.clone(),
        action: event.action.clone(),
        object: event.object.clone(),
        details: event.details.clone(),
        tenant: event.tenant.clone(),
        prev_hash: prev,
        hash: hash.to_vec(),
    })
}

const AUDIT_COLUMNS: &str = "seq, at, actor, action, object, details, tenant, prev_hash, hash";

fn audit_from_row(r: &Row) -> rusqlite::Result<AuditRecord> {
    Ok(AuditRecord {
        seq: r.get::<_, i64>(0)? as u64,
        at: r.get(1)?,
        actor: r.get(2)?,
        action: r.get(3)?,
        object: r.get(4)?,
        details: r.get(5)?,
        tenant: r.get(6)?,
        prev_hash: r.get(7)?,
        hash: r.get(8)?,
    })
}

const CERT_COLUMNS: &str = "serial, issuer, profile, status, subject, subject_serial_digest, shard,
     not_before, not_after, tbs_der, cert_der, created_at, revoked_at, revocation_reason, invalidity_date, owner, key_id";

fn cert_from_row(r: &Row) -> rusqlite::Result<(CertRecord, String, String)> {
    let revoked_at: Option<i64> = r.get(12)?;
    let reason: Option<i64> = r.get(13)?;
    let invalidity: Option<i64> = r.get(14)?;
    let issuer: String = r.get(1)?;
    let status: String = r.get(3)?;
    Ok((
        CertRecord {
            serial: r.get(0)?,
            issuer: IssuerId::Root, // replaced by the caller after parsing `issuer`
            profile: r.get(2)?,
            status: CertStatus::Pending,
            subject: r.get(4)?,
            subject_serial_digest: r.get(5)?,
            shard: r.get::<_, i64>(6)? as u32,
            not_before: r.get(7)?,
            not_after: r.get(8)?,
            tbs_der: r.get(9)?,
            cert_der: r.get(10)?,
            created_at: r.get(11)?,
            revocation: revoked_at.map(|at| RevocationRecord {
                revoked_at: at,
                reason_code: reason.map(|c| c as u8),
                invalidity_date: invalidity,
            }),
            owner: r.get(15)?,
            key_id: r.get(16)?,
        },
        issuer,
        status,
    ))
}

/// A CRL row: number, thisUpdate, nextUpdate and, when the query selects it, the DER.
fn crl_from_row(r: &Row, issuer: IssuerId, shard: Option<u32>) -> rusqlite::Result<CrlRecord> {
    Ok(CrlRecord {
        issuer,
        shard,
        number: r.get::<_, i64>(0)? as u64,
        this_update: r.get(1)?,
        next_update: r.get(2)?,
        status_epoch: r.get::<_, Option<i64>>(3)?.map(|e| e as u64),
        crl_der: if r.as_ref().column_count() > 4 {
            r.get(4)?
        } else {
            None
        },
    })
}

fn finish_cert(raw: (CertRecord, String, String)) -> Result<CertRecord> {
    let (mut rec, issuer, status) = raw;
    rec.issuer = IssuerId::parse(&issuer)
        .ok_or_else(|| StoreError::Corrupt(format!("unknown issuer {issuer:?}")))?;
    rec.status = CertStatus::parse(&status)?;
    Ok(rec)
}

fn get_cert(conn: &Connection, serial: &str) -> Result<Option<CertRecord>> {
    // The statement every verification runs (revocation status): prepared once per connection.
    let raw = conn
        .prepare_cached(&format!(
            "SELECT {CERT_COLUMNS} FROM certificates WHERE serial = ?1"
        ))
        .and_then(|mut st| st.query_row([serial], cert_from_row).optional())
        .map_err(map_err)?;
    raw.map(finish_cert).transpose()
}

/// Writes `bytes` into the zeroblob of `crls.<column>` at `rowid`, in pieces.
fn write_blob(tx: &Transaction, column: &str, rowid: i64, bytes: &[u8]) -> Result<()> {
    let mut blob = tx
        .blob_open(rusqlite::DatabaseName::Main, "crls", column, rowid, false)
        .map_err(map_err)?;
    for (i, chunk) in bytes.chunks(1 << 20).enumerate() {
        blob.write_at(chunk, i << 20).map_err(map_err)?;
    }
    Ok(())
}

fn shard_key(shard: Option<u32>) -> i64 {
    shard.map(i64::from).unwrap_or(-1)
}

impl Store for SqliteStore {
    fn cas(&self) -> Result<Vec<CaRecord>> {
        self.all_rows("SELECT name, key_label, cert_der, public_key, created_at FROM ca ORDER BY created_at, name", [], |r| {
                    Ok(CaRecord {
                        name: r.get(0)?,
                        key_label: r.get(1)?,
                        cert_der: r.get(2)?,
                        public_key: r.get(3)?,
                        created_at: r.get(4)?,
                    })
                })
    }

    fn add_cas(&self, cas: &[CaRecord], at: i64, event: &AuditEvent) -> Result<AuditRecord> {
        self.tx(|tx| {
            for ca in cas {
                tx.execute(
                    "INSERT INTO ca (name, key_label, cert_der, public_key, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![ca.name, ca.key_label, ca.cert_der, ca.public_key, ca.created_at],
                )
                .map_err(|e| {
                    if is_unique_violation(&e) {
                        StoreError::Conflict(format!("CA {} already exists", ca.name))
                    } else {
                        map_err(e)
                    }
                })?;
            }
            append(tx, at, event)
        })
    }

    fn record_pending(&self, rec: &CertRecord, event: &AuditEvent) -> Result<AuditRecord> {
        self.tx(|tx| tx.insert_pending(rec, event))
    }

    fn complete_issuance(
        &self,
        serial: &str,
        cert_der: &[u8],
        at: i64,
        event: &AuditEvent,
    ) -> Result<AuditRecord> {
        self.tx(|tx| tx.complete_pending(serial, cert_der, at, event))
    }

    fn grouped_writes(&self, units: &[WriteUnit]) -> Result<Vec<Result<Vec<Applied>>>> {
        // Nearly always every write applies: one transaction, no savepoints (their statement
        // journal showed in the commit thread's profile). If any write fails, that
        // transaction rolls back whole and the group is applied again unit by unit.
        let all = self.tx(|tx| {
            units
                .iter()
                .map(|u| tx.apply_unit(u))
                .collect::<Result<Vec<_>>>()
        });
        if let Ok(applied) = all {
            return Ok(applied.into_iter().map(Ok).collect());
        }
        self.tx(|tx| {
            let mut out = Vec::with_capacity(units.len());
            for unit in units {
                // Each unit in its own savepoint: one that fails leaves the others in place.
                tx.execute_batch("SAVEPOINT grouped_write")
                    .map_err(map_err)?;
                let r = tx.apply_unit(unit);
                let end = if r.is_ok() {
                    "RELEASE grouped_write"
                } else {
                    "ROLLBACK TO grouped_write; RELEASE grouped_write"
                };
                tx.execute_batch(end).map_err(map_err)?;
                out.push(r);
            }
            Ok(out)
        })
    }

    fn pending_before(&self, cutoff: i64) -> Result<Vec<CertRecord>> {
        self.all_rows(&format!(
                    "SELECT {CERT_COLUMNS} FROM certificates WHERE status = 'pending' AND created_at <= ?1 ORDER BY created_at"
                ), [cutoff], cert_from_row)?
            .into_iter()
            .map(finish_cert)
            .collect()
    }

    fn void_pending(&self, serial: &str, at: i64, event: &AuditEvent) -> Result<AuditRecord> {
        self.tx(|tx| {
            let scope: Option<(String, i64)> = tx
                .query_row(
                    "UPDATE certificates SET status = 'void', revoked_at = ?2, revocation_reason = NULL
                     WHERE serial = ?1 AND status = 'pending' RETURNING issuer, shard",
                    params![serial, at],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .map_err(map_err)?;
            let (issuer, shard) =
                scope.ok_or_else(|| StoreError::Conflict(format!("{serial} is not pending")))?;
            append_status_change(tx, &issuer, shard, at, event)
        })
    }

    fn certificate(&self, serial: &str) -> Result<Option<CertRecord>> {
        self.read(|c| get_cert(c, serial))
    }

    fn certificate_state(&self, serial: &str) -> Result<Option<CertState>> {
        let raw = self.optional_row(
            "SELECT status, created_at, revoked_at, revocation_reason, invalidity_date, thumbprint
             FROM certificates WHERE serial = ?1",
            [serial],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, Option<i64>>(2)?,
                    r.get::<_, Option<i64>>(3)?,
                    r.get::<_, Option<i64>>(4)?,
                    r.get::<_, Option<String>>(5)?,
                ))
            },
        )?;
        raw.map(
            |(status, created_at, revoked_at, reason, invalidity, thumbprint)| {
                Ok(CertState {
                    status: CertStatus::parse(&status)?,
                    created_at,
                    revocation: revoked_at.map(|at| RevocationRecord {
                        revoked_at: at,
                        reason_code: reason.map(|c| c as u8),
                        invalidity_date: invalidity,
                    }),
                    thumbprint,
                })
            },
        )
        .transpose()
    }

    fn certificates(&self) -> Result<Vec<CertRecord>> {
        self.all_rows(&format!(
                    "SELECT {CERT_COLUMNS} FROM certificates WHERE status = 'issued' ORDER BY created_at, serial"
                ), [], cert_from_row)?
            .into_iter()
            .map(finish_cert)
            .collect()
    }

    fn revoke(
        &self,
        serial: &str,
        revocation: RevocationRecord,
        event: &AuditEvent,
    ) -> Result<AuditRecord> {
        self.tx(|tx| {
            let cert = get_cert(tx, serial)?
                .ok_or_else(|| StoreError::NotFound(format!("certificate {serial}")))?;
            let revocation = check_revocable(&cert, &revocation)?;
            tx.execute(
                "UPDATE certificates SET revoked_at = ?2, revocation_reason = ?3, invalidity_date = ?4 WHERE serial = ?1",
                params![
                    serial,
                    revocation.revoked_at,
                    revocation.reason_code.map(i64::from),
                    revocation.invalidity_date
                ],
            )
            .map_err(map_err)?;
            append_status_change(
                tx,
                cert.issuer.as_str(),
                cert.shard.into(),
                revocation.revoked_at,
                event,
            )
        })
    }

    fn release(&self, serial: &str, at: i64, event: &AuditEvent) -> Result<AuditRecord> {
        self.tx(|tx| {
            let cert = get_cert(tx, serial)?
                .ok_or_else(|| StoreError::NotFound(format!("certificate {serial}")))?;
            check_releasable(&cert)?;
            tx.execute(
                "UPDATE certificates SET revoked_at = NULL, revocation_reason = NULL, invalidity_date = NULL WHERE serial = ?1",
                [serial],
            )
            .map_err(map_err)?;
            append_status_change(tx, cert.issuer.as_str(), cert.shard.into(), at, event)
        })
    }

    fn revoked(&self, issuer: IssuerId, shard: Option<u32>) -> Result<Vec<RevokedEntry>> {
        self.all_rows(
            "SELECT serial, revoked_at, revocation_reason, invalidity_date FROM certificates
             WHERE issuer = ?1 AND revoked_at IS NOT NULL AND (?2 < 0 OR shard = ?2)
             ORDER BY revoked_at, serial",
            params![issuer.as_str(), shard_key(shard)],
            |r| {
                Ok(RevokedEntry {
                    serial: r.get(0)?,
                    revocation: RevocationRecord {
                        revoked_at: r.get(1)?,
                        reason_code: r.get::<_, Option<i64>>(2)?.map(|c| c as u8),
                        invalidity_date: r.get(3)?,
                    },
                })
            },
        )
    }

    /// Reads on a connection of its own (WAL: a snapshot, writers go on meanwhile), so that a
    /// CRL of a million entries does not hold the store's connection for seconds.
    fn each_revoked(
        &self,
        issuer: IssuerId,
        shard: Option<u32>,
        f: &mut dyn FnMut(&RevokedEntry) -> std::result::Result<(), String>,
    ) -> Result<u64> {
        let conn = Connection::open_with_flags(
            &self.path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(map_err)?;
        conn.busy_timeout(Duration::from_secs(10))
            .map_err(map_err)?;
        // One statement per case, so that each walks its covering index in order
        // (migration 0004) instead of sorting a million rows.
        let sql = match shard {
            None => {
                "SELECT serial, revoked_at, revocation_reason, invalidity_date FROM certificates
                 WHERE issuer = ?1 AND revoked_at IS NOT NULL AND ?2 < 0
                 ORDER BY revoked_at, serial"
            }
            Some(_) => {
                "SELECT serial, revoked_at, revocation_reason, invalidity_date FROM certificates
                 WHERE issuer = ?1 AND shard = ?2 AND revoked_at IS NOT NULL
                 ORDER BY revoked_at, serial"
            }
        };
        let mut st = conn.prepare(sql).map_err(map_err)?;
        let mut rows = st
            .query(params![issuer.as_str(), shard_key(shard)])
            .map_err(map_err)?;
        let mut n = 0u64;
        let mut entry = RevokedEntry {
            serial: String::new(),
            revocation: RevocationRecord {
                revoked_at: 0,
                reason_code: None,
                invalidity_date: None,
            },
        };
        while let Some(r) = rows.next().map_err(map_err)? {
            entry.serial.clear();
            entry.serial.push_str(
                r.get_ref(0)
                    .and_then(|v| v.as_str().map_err(Into::into))
                    .map_err(map_err)?,
            );
            entry.revocation = RevocationRecord {
                revoked_at: r.get(1).map_err(map_err)?,
                reason_code: r
                    .get::<_, Option<i64>>(2)
                    .map_err(map_err)?
                    .map(|c| c as u8),
                invalidity_date: r.get(3).map_err(map_err)?,
            };
            f(&entry).map_err(StoreError::Conflict)?;
            n += 1;
        }
        Ok(n)
    }

    fn record_crl(
        &self,
        crl: &NewCrl,
        build_tbs: &mut dyn FnMut(u64) -> std::result::Result<Vec<u8>, String>,
        event: &AuditEvent,
    ) -> Result<Option<(u64, AuditRecord)>> {
        let (issuer, shard) = (crl.issuer, crl.shard);
        self.tx(|tx| {
            let newest: Option<super::NewestCrl> = tx
                .query_row(
                    "SELECT number, status_epoch,
                            (SELECT COALESCE(MAX(epoch), 0) FROM crl_scope_epochs
                             WHERE issuer = ?1 AND (?2 < 0 OR shard = ?2))
                     FROM crls WHERE issuer = ?1 AND shard = ?2 ORDER BY number DESC LIMIT 1",
                    params![issuer.as_str(), shard_key(shard)],
                    |r| {
                        Ok((
                            r.get::<_, i64>(0)? as u64,
                            // None: recorded before status epochs were.
                            r.get::<_, Option<i64>>(1)?.unwrap_or(0) as u64,
                            r.get::<_, i64>(2)? as u64,
                        ))
                    },
                )
                .optional()
                .map_err(map_err)?;
            if !super::may_succeed(crl, newest) {
                return Ok(None);
            }
            let number = newest.map_or(0, |(n, _, _)| n) + 1;
            let tbs = build_tbs(number).map_err(StoreError::Conflict)?;
            // zeroblob + incremental write: binding tens of megabytes would copy them twice
            // more inside SQLite (bound value, then record).
            tx.execute(
                "INSERT INTO crls (issuer, shard, number, this_update, next_update, status_epoch, tbs_der) VALUES (?1, ?2, ?3, ?4, ?5, ?6, zeroblob(?7))",
                params![issuer.as_str(), shard_key(shard), number as i64, crl.this_update, crl.next_update, crl.status_epoch as i64, tbs.len() as i64],
            )
            .map_err(map_err)?;
            write_blob(tx, "tbs_der", tx.last_insert_rowid(), &tbs)?;
            let mut ev = event.clone();
            ev.object = format!("{}#{number}", event.object);
            let rec = append(tx, crl.this_update, &ev)?;
            Ok(Some((number, rec)))
        })
    }

    fn complete_crl(
        &self,
        issuer: IssuerId,
        shard: Option<u32>,
        number: u64,
        crl_der: &[u8],
    ) -> Result<()> {
        self.tx(|tx| {
            let rowid: i64 = tx
                .query_row(
                    "UPDATE crls SET crl_der = zeroblob(?4) WHERE issuer = ?1 AND shard = ?2 AND number = ?3 RETURNING rowid",
                    params![issuer.as_str(), shard_key(shard), number as i64, crl_der.len() as i64],
                    |r| r.get(0),
                )
                .map_err(map_err)?;
            write_blob(tx, "crl_der", rowid, crl_der)?;
            // Superseded CRLs keep their number, times and to-be-signed bytes; their signed DER
            // (megabytes each for a large CRL) goes once two newer ones exist.
            tx.execute(
                "UPDATE crls SET crl_der = NULL WHERE issuer = ?1 AND shard = ?2 AND number < ?3 - 1
                 AND crl_der IS NOT NULL",
                params![issuer.as_str(), shard_key(shard), number as i64],
            )
            .map_err(map_err)?;
            Ok(())
        })
    }

    fn latest_crl(&self, issuer: IssuerId, shard: Option<u32>) -> Result<Option<CrlRecord>> {
        self.optional_row(
            "SELECT number, this_update, next_update, status_epoch, crl_der FROM crls
             WHERE issuer = ?1 AND shard = ?2 AND crl_der IS NOT NULL ORDER BY number DESC LIMIT 1",
            params![issuer.as_str(), shard_key(shard)],
            |r| crl_from_row(r, issuer, shard),
        )
    }

    fn newest_crl_number(
        &self,
        issuer: IssuerId,
        shard: Option<u32>,
    ) -> Result<Option<CrlNumbered>> {
        self.optional_row(
            // typeof() looks at the value's type only; `crl_der IS NOT NULL` as a result column
            // would read tens of megabytes.
            "SELECT number, this_update, typeof(crl_der) <> 'null' FROM crls
             WHERE issuer = ?1 AND shard = ?2 ORDER BY number DESC LIMIT 1",
            params![issuer.as_str(), shard_key(shard)],
            |r| {
                Ok(CrlNumbered {
                    number: r.get::<_, i64>(0)? as u64,
                    this_update: r.get(1)?,
                    signed: r.get(2)?,
                })
            },
        )
    }

    fn crl_scope_keys(&self) -> Result<Vec<(String, i64)>> {
        self.all_rows("SELECT DISTINCT issuer, shard FROM crls", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
    }

    fn latest_crl_info(&self, issuer: IssuerId, shard: Option<u32>) -> Result<Option<CrlRecord>> {
        self.optional_row(
            "SELECT number, this_update, next_update, status_epoch FROM crls
             WHERE issuer = ?1 AND shard = ?2 AND crl_der IS NOT NULL ORDER BY number DESC LIMIT 1",
            params![issuer.as_str(), shard_key(shard)],
            |r| crl_from_row(r, issuer, shard),
        )
    }

    fn append_audit(&self, at: i64, event: &AuditEvent) -> Result<AuditRecord> {
        self.tx(|tx| append(tx, at, event))
    }

    fn audit_events(&self, after: u64) -> Result<Vec<AuditRecord>> {
        self.all_rows(
            &format!("SELECT {AUDIT_COLUMNS} FROM audit_events WHERE seq > ?1 ORDER BY seq"),
            [after as i64],
            audit_from_row,
        )
    }

    fn audit_events_upto(&self, after: u64, upto: u64) -> Result<Vec<AuditRecord>> {
        self.all_rows(
            &format!(
                "SELECT {AUDIT_COLUMNS} FROM audit_events WHERE seq > ?1 AND seq <= ?2 ORDER BY seq"
            ),
            [after as i64, upto as i64],
            audit_from_row,
        )
    }

    fn tenant_audit_events(
        &self,
        tenant: &str,
        after: u64,
        limit: u32,
    ) -> Result<Vec<AuditRecord>> {
        self.all_rows(&format!(
                    "SELECT {AUDIT_COLUMNS} FROM audit_events WHERE tenant = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3"
                ), params![tenant, after as i64, limit], audit_from_row)
    }

    fn audit_head(&self) -> Result<Option<AuditRecord>> {
        self.optional_row(
            &format!("SELECT {AUDIT_COLUMNS} FROM audit_events ORDER BY seq DESC LIMIT 1"),
            [],
            audit_from_row,
        )
    }

    fn add_checkpoint(&self, cp: &Checkpoint) -> Result<()> {
        self.tx(|tx| {
            tx.execute(
                "INSERT OR IGNORE INTO audit_checkpoints (seq, hash, at, signature) VALUES (?1, ?2, ?3, ?4)",
                params![cp.seq as i64, cp.hash, cp.at, cp.signature],
            )
            .map_err(map_err)?;
            Ok(())
        })
    }

    fn remove_checkpoints(&self, pairs: &[(u64, Vec<u8>)]) -> Result<usize> {
        self.tx(|tx| {
            let mut removed = 0;
            for (seq, hash) in pairs {
                removed += tx
                    .execute(
                        "DELETE FROM audit_checkpoints WHERE seq = ?1 AND hash = ?2",
                        params![*seq as i64, hash],
                    )
                    .map_err(map_err)?;
            }
            Ok(removed)
        })
    }

    fn newest_checkpoint_seq(&self) -> Result<Option<u64>> {
        self.optional_row("SELECT MAX(seq) FROM audit_checkpoints", [], |r| {
            r.get::<_, Option<i64>>(0)
        })
        .map(|v| v.flatten().map(|s| s as u64))
    }

    fn checkpoints(&self) -> Result<Vec<Checkpoint>> {
        self.all_rows(
            "SELECT seq, hash, at, signature FROM audit_checkpoints ORDER BY seq",
            [],
            |r| {
                Ok(Checkpoint {
                    seq: r.get::<_, i64>(0)? as u64,
                    hash: r.get(1)?,
                    at: r.get(2)?,
                    signature: r.get(3)?,
                })
            },
        )
    }

    fn certificates_by_subject_serial(&self, owner: &str, digest: &str) -> Result<Vec<CertRecord>> {
        self.all_rows(
            &format!(
                "SELECT {CERT_COLUMNS} FROM certificates
                     WHERE owner = ?1 AND subject_serial_digest = ?2 AND status = 'issued'
                     ORDER BY created_at, serial"
            ),
            params![owner, digest],
            cert_from_row,
        )?
        .into_iter()
        .map(finish_cert)
        .collect()
    }

    fn add_tenant(&self, tenant: &TenantRecord, event: &AuditEvent) -> Result<AuditRecord> {
        self.tx(|tx| {
            tx.execute(
                "INSERT INTO tenants (id, name, created_at) VALUES (?1, ?2, ?3)",
                params![tenant.id, tenant.name, tenant.created_at],
            )
            .map_err(|e| {
                if is_unique_violation(&e) {
                    StoreError::Conflict(format!("a tenant named {:?} exists", tenant.name))
                } else {
                    map_err(e)
                }
            })?;
            append(tx, tenant.created_at, event)
        })
    }

    fn tenant_by_name(&self, name: &str) -> Result<Option<TenantRecord>> {
        self.optional_row(
            "SELECT id, name, created_at FROM tenants WHERE name = ?1",
            [name],
            tenant_from_row,
        )
    }

    fn tenant(&self, id: &str) -> Result<Option<TenantRecord>> {
        self.optional_row(
            "SELECT id, name, created_at FROM tenants WHERE id = ?1",
            [id],
            tenant_from_row,
        )
    }

    fn add_credential(&self, cred: &CredentialRecord, event: &AuditEvent) -> Result<AuditRecord> {
        self.tx(|tx| {
            tx.execute(
                "INSERT INTO credentials (id, tenant_id, role, token_hash, created_at, expires_at, revoked_at, teller_id, holder)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, NULL, ?7, ?8)",
                params![
                    cred.id,
                    cred.tenant_id,
                    cred.role,
                    cred.token_hash,
                    cred.created_at,
                    cred.expires_at,
                    cred.teller_id,
                    cred.holder
                ],
            )
            .map_err(map_err)?;
            append(tx, cred.created_at, event)
        })
    }

    fn credential_by_token_hash(&self, hash: &[u8]) -> Result<Option<CredentialRecord>> {
        self.optional_row(
            &format!("SELECT {CREDENTIAL_COLUMNS} FROM credentials WHERE token_hash = ?1"),
            [hash],
            credential_from_row,
        )
    }

    fn credentials(&self, tenant_id: &str) -> Result<Vec<CredentialRecord>> {
        self.all_rows(&format!(
                    "SELECT {CREDENTIAL_COLUMNS} FROM credentials WHERE tenant_id = ?1 ORDER BY created_at, id"
                ), [tenant_id], credential_from_row)
    }

    fn credential(&self, id: &str) -> Result<Option<CredentialRecord>> {
        self.optional_row(
            &format!("SELECT {CREDENTIAL_COLUMNS} FROM credentials WHERE id = ?1"),
            [id],
            credential_from_row,
        )
    }

    fn rotate_credential(
        &self,
        id: &str,
        old_hash: &[u8],
        new_hash: &[u8],
        expires_at: Option<i64>,
        at: i64,
        event: &AuditEvent,
    ) -> Result<AuditRecord> {
        self.tx(|tx| {
            let n = tx
                .execute(
                    "UPDATE credentials SET token_hash = ?3, expires_at = ?4
                     WHERE id = ?1 AND token_hash = ?2 AND revoked_at IS NULL",
                    params![id, old_hash, new_hash, expires_at],
                )
                .map_err(map_err)?;
            if n != 1 {
                return Err(StoreError::Conflict(format!(
                    "credential {id} is revoked or was rotated meanwhile"
                )));
            }
            append(tx, at, event)
        })
    }

    fn revoke_credential(
        &self,
        tenant_id: &str,
        id: &str,
        at: i64,
        event: &AuditEvent,
    ) -> Result<AuditRecord> {
        self.tx(|tx| {
            let n = tx
                .execute(
                    "UPDATE credentials SET revoked_at = ?3 WHERE tenant_id = ?1 AND id = ?2 AND revoked_at IS NULL",
                    params![tenant_id, id, at],
                )
                .map_err(map_err)?;
            if n != 1 {
                return Err(StoreError::NotFound(format!(
                    "active credential {id} of this tenant"
                )));
            }
            append(tx, at, event)
        })
    }

    fn set_credential_holder(
        &self,
        tenant_id: &str,
        id: &str,
        holder: &str,
        at: i64,
        event: &AuditEvent,
    ) -> Result<AuditRecord> {
        self.tx(|tx| {
            let n = tx
                .execute(
                    "UPDATE credentials SET holder = ?3
                     WHERE tenant_id = ?1 AND id = ?2 AND revoked_at IS NULL AND holder IS NULL",
                    params![tenant_id, id, holder],
                )
                .map_err(map_err)?;
            if n != 1 {
                let has_one: Option<bool> = tx
                    .query_row(
                        "SELECT holder IS NOT NULL FROM credentials
                         WHERE tenant_id = ?1 AND id = ?2 AND revoked_at IS NULL",
                        params![tenant_id, id],
                        |r| r.get(0),
                    )
                    .optional()
                    .map_err(map_err)?;
                return Err(holder_not_set(id, has_one));
            }
            append(tx, at, event)
        })
    }

    fn add_teller_request(
        &self,
        req: &TellerRequestRecord,
        event: &AuditEvent,
    ) -> Result<AuditRecord> {
        self.tx(|tx| {
            tx.execute(
                "INSERT INTO teller_requests (id, tenant_id, requested_by, requested_by_holder, csr, subject, status, created_at, expires_at, kind, teller_id)
                 VALUES (?1, ?2, ?3, ?10, ?4, ?5, 'pending', ?6, ?7, ?8, ?9)",
                params![
                    req.id,
                    req.tenant_id,
                    req.requested_by,
                    req.csr,
                    req.subject,
                    req.created_at,
                    req.expires_at,
                    req.kind,
                    req.teller_id,
                    req.requested_by_holder
                ],
            )
            .map_err(map_err)?;
            append(tx, req.created_at, event)
        })
    }

    fn teller_request(&self, id: &str) -> Result<Option<TellerRequestRecord>> {
        self.read(|c| {
            c.query_row(
                &format!("SELECT {TELLER_REQUEST_COLUMNS} FROM teller_requests WHERE id = ?1"),
                [id],
                teller_request_from_row,
            )
            .optional()
            .map_err(map_err)
        })
    }

    fn teller_requests(
        &self,
        tenant_id: &str,
        status: Option<RequestStatus>,
        now: i64,
        limit: u32,
    ) -> Result<Vec<TellerRequestRecord>> {
        self.read(|c| {
            let mut st = c
                .prepare(&format!(
                    "SELECT {TELLER_REQUEST_COLUMNS} FROM teller_requests
                     WHERE tenant_id = ?1
                       AND (?2 IS NULL OR ?2 = CASE WHEN status = 'pending' AND expires_at <= ?3
                                                    THEN 'expired' ELSE status END)
                     ORDER BY created_at DESC, rowid DESC LIMIT ?4"
                ))
                .map_err(map_err)?;
            let rows = st
                .query_map(
                    params![tenant_id, status.map(RequestStatus::as_str), now, limit],
                    teller_request_from_row,
                )
                .map_err(map_err)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(map_err)
        })
    }

    fn decide_teller_request(
        &self,
        id: &str,
        status: RequestStatus,
        reason: Option<&str>,
        decided_by: &str,
        at: i64,
        event: &AuditEvent,
    ) -> Result<AuditRecord> {
        self.tx(|tx| {
            let n = tx
                .execute(
                    "UPDATE teller_requests SET status = ?2, decided_by = ?3, decided_at = ?4,
                            decision_reason = ?5
                     WHERE id = ?1 AND status = 'pending'",
                    params![id, status.as_str(), decided_by, at, reason],
                )
                .map_err(map_err)?;
            if n != 1 {
                return Err(StoreError::Conflict(format!(
                    "teller request {id} is no longer pending"
                )));
            }
            append(tx, at, event)
        })
    }

    fn set_teller_request_serial(&self, id: &str, serial: &str) -> Result<()> {
        self.tx(|tx| {
            tx.execute(
                "UPDATE teller_requests SET serial = ?2 WHERE id = ?1",
                params![id, serial],
            )
            .map_err(map_err)?;
            Ok(())
        })
    }

    fn reopen_teller_request(&self, id: &str, at: i64, event: &AuditEvent) -> Result<()> {
        self.tx(|tx| {
            let n = tx
                .execute(
                    "UPDATE teller_requests SET status = 'pending', decided_by = NULL, decided_at = NULL,
                            decision_reason = NULL
                     WHERE id = ?1 AND status = 'approved' AND serial IS NULL",
                    [id],
                )
                .map_err(map_err)?;
            if n == 1 {
                append(tx, at, event)?;
            }
            Ok(())
        })
    }

    fn certificate_by_key_id(&self, key_id: &str) -> Result<Option<CertRecord>> {
        self.read(|c| {
            let raw = c
                .query_row(
                    &format!(
                        "SELECT {CERT_COLUMNS} FROM certificates WHERE key_id = ?1 AND status = 'issued'
                         ORDER BY created_at DESC LIMIT 1"
                    ),
                    [key_id],
                    cert_from_row,
                )
                .optional()
                .map_err(map_err)?;
            raw.map(finish_cert).transpose()
        })
    }

    fn certificate_by_thumbprint(&self, thumbprint: &str) -> Result<Option<CertRecord>> {
        self.read(|c| {
            let raw = c
                .query_row(
                    &format!("SELECT {CERT_COLUMNS} FROM certificates WHERE thumbprint = ?1"),
                    [thumbprint],
                    cert_from_row,
                )
                .optional()
                .map_err(map_err)?;
            raw.map(finish_cert).transpose()
        })
    }

    fn record_verification(
        &self,
        guard: Option<&ReplayKeys>,
        at: i64,
        window_secs: i64,
        event: &dyn Fn(Option<i64>) -> AuditEvent,
    ) -> Result<Option<i64>> {
        self.tx(|tx| {
            Ok(tx
                .apply_verification(guard, at, window_secs, event)?
                .first_seen)
        })
    }

    fn forget_replay_keys(
        &self,
        seen_before: i64,
        limit: u32,
        at: i64,
        event: &dyn Fn(u64) -> AuditEvent,
    ) -> Result<Option<(u64, AuditRecord)>> {
        self.tx(|tx| {
            let mut forgotten = 0;
            for table in REPLAY_TABLES {
                forgotten += tx
                    .prepare_cached(&forget_replay_keys_sql(table, "?1", "?2"))
                    .and_then(|mut st| st.execute(params![seen_before, limit]))
                    .map_err(map_err)? as u64;
            }
            if forgotten == 0 {
                return Ok(None);
            }
            Ok(Some((forgotten, append(tx, at, &event(forgotten))?)))
        })
    }

    fn add_teller(&self, teller: &TellerRecord, event: &AuditEvent) -> Result<AuditRecord> {
        self.tx(|tx| {
            tx.execute(
                "INSERT INTO tellers (id, tenant_id, employee_id, name, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![teller.id, teller.tenant_id, teller.employee_id, teller.name, teller.created_at],
            )
            .map_err(|e| {
                if is_unique_violation(&e) {
                    StoreError::Conflict(format!(
                        "employee {} is already a teller of this bank",
                        teller.employee_id
                    ))
                } else {
                    map_err(e)
                }
            })?;
            append(tx, teller.created_at, event)
        })
    }

    fn teller_by_employee(
        &self,
        tenant_id: &str,
        employee_id: &str,
    ) -> Result<Option<TellerRecord>> {
        self.optional_row(
            "SELECT id, tenant_id, employee_id, name, created_at FROM tellers WHERE tenant_id = ?1 AND employee_id = ?2",
            [tenant_id, employee_id],
            teller_from_row,
        )
    }

    fn teller(&self, id: &str) -> Result<Option<TellerRecord>> {
        self.optional_row(
            "SELECT id, tenant_id, employee_id, name, created_at FROM tellers WHERE id = ?1",
            [id],
            teller_from_row,
        )
    }

    fn add_signing_key(&self, key: &SigningKeyRecord, event: &AuditEvent) -> Result<AuditRecord> {
        self.tx(|tx| {
            tx.execute(
                "INSERT INTO signing_keys (id, tenant_id, kind, teller_id, key_label, certificate_serial,
                    pin_hash, activation_hash, failed_attempts, locked, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 0, 0, ?9)",
                params![
                    key.id,
                    key.tenant_id,
                    key.kind,
                    key.teller_id,
                    key.key_label,
                    key.certificate_serial,
                    key.pin_hash,
                    key.activation_hash,
                    key.created_at
                ],
            )
            .map_err(|e| {
                if is_unique_violation(&e) {
                    StoreError::Conflict(format!("a {} key already exists for this owner", key.kind))
                } else {
                    map_err(e)
                }
            })?;
            append(tx, key.created_at, event)
        })
    }

    fn signing_key(&self, id: &str) -> Result<Option<SigningKeyRecord>> {
        self.optional_row(
            &format!("SELECT {KEY_COLUMNS} FROM signing_keys WHERE id = ?1"),
            [id],
            key_from_row,
        )
    }

    fn signing_keys(&self, tenant_id: &str) -> Result<Vec<SigningKeyRecord>> {
        self.all_rows(&format!(
                    "SELECT {KEY_COLUMNS} FROM signing_keys WHERE tenant_id = ?1 ORDER BY created_at, id"
                ), [tenant_id], key_from_row)
    }

    fn pin_attempt(
        &self,
        id: &str,
        attempt: PinAttempt,
        at: i64,
        event: &AuditEvent,
        lock_event: &AuditEvent,
    ) -> Result<PinOutcome> {
        self.tx(|tx| {
            let mut records = Vec::with_capacity(2);
            match attempt {
                PinAttempt::Correct => {
                    tx.execute(
                        "UPDATE signing_keys SET failed_attempts = 0 WHERE id = ?1 AND locked = 0",
                        [id],
                    )
                    .map_err(map_err)?;
                    records.push(append(tx, at, event)?);
                }
                PinAttempt::Wrong { max } => {
                    records.push(append(tx, at, event)?);
                    if lock_at_limit(tx, id, max)? {
                        records.push(append(tx, at, lock_event)?);
                    }
                }
            }
            let key = tx
                .query_row(
                    &format!("SELECT {KEY_COLUMNS} FROM signing_keys WHERE id = ?1"),
                    [id],
                    key_from_row,
                )
                .map_err(map_err)?;
            Ok(PinOutcome { key, records })
        })
    }

    fn reserve_pin_attempt(
        &self,
        id: &str,
        max: u32,
        at: i64,
        lock_event: &AuditEvent,
    ) -> Result<PinReservation> {
        self.tx(|tx| {
            let n = tx
                .execute(
                    "UPDATE signing_keys SET failed_attempts = failed_attempts + 1
                     WHERE id = ?1 AND locked = 0 AND failed_attempts < ?2",
                    params![id, max],
                )
                .map_err(map_err)?;
            if n == 1 {
                return Ok(PinReservation::Reserved);
            }
            let lock = if lock_at_limit(tx, id, max)? {
                Some(append(tx, at, lock_event)?)
            } else {
                None
            };
            Ok(PinReservation::Locked(lock))
        })
    }

    fn set_pin(
        &self,
        id: &str,
        pin_hash: &str,
        activation_hash: Option<&str>,
        at: i64,
        event: &AuditEvent,
    ) -> Result<AuditRecord> {
        self.tx(|tx| {
            let n = tx
                .execute(
                    "UPDATE signing_keys SET pin_hash = ?2, activation_hash = NULL, failed_attempts = 0
                     WHERE id = ?1 AND locked = 0 AND (?3 IS NULL OR activation_hash = ?3)",
                    params![id, pin_hash, activation_hash],
                )
                .map_err(map_err)?;
            if n != 1 {
                return Err(StoreError::Conflict(format!(
                    "key {id} is locked, or its activation code was already used"
                )));
            }
            append(tx, at, event)
        })
    }

    fn unlock_key(&self, id: &str, at: i64, event: &AuditEvent) -> Result<AuditRecord> {
        self.tx(|tx| {
            tx.execute(
                "UPDATE signing_keys SET locked = 0, failed_attempts = 0 WHERE id = ?1",
                [id],
            )
            .map_err(map_err)?;
            append(tx, at, event)
        })
    }

    fn signing_keys_with_pins(&self) -> Result<Vec<SigningKeyRecord>> {
        self.all_rows(
            &format!(
                "SELECT {KEY_COLUMNS} FROM signing_keys WHERE pin_hash IS NOT NULL ORDER BY created_at, id"
            ),
            [],
            key_from_row,
        )
    }

    fn replace_pin_hash(
        &self,
        id: &str,
        old: &str,
        new: &str,
        at: i64,
        event: &AuditEvent,
    ) -> Result<Option<AuditRecord>> {
        self.tx(|tx| {
            let changed = tx
                .execute(
                    "UPDATE signing_keys SET pin_hash = ?3 WHERE id = ?1 AND pin_hash = ?2",
                    params![id, old, new],
                )
                .map_err(map_err)?;
            if changed == 0 {
                return Ok(None);
            }
            append(tx, at, event).map(Some)
        })
    }

    fn status_epoch(&self) -> Result<u64> {
        self.read(|c| {
            c.query_row(
                "SELECT COALESCE(MAX(seq), 0) FROM audit_events WHERE action IN
                 ('certificate.revoke', 'certificate.hold', 'certificate.release', 'certificate.void')",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map(|v| v as u64)
            .map_err(map_err)
        })
    }

    fn crl_scope_epoch(&self, issuer: IssuerId, shard: Option<u32>) -> Result<u64> {
        self.read(|c| {
            c.prepare_cached(
                "SELECT COALESCE(MAX(epoch), 0) FROM crl_scope_epochs
                 WHERE issuer = ?1 AND (?2 < 0 OR shard = ?2)",
            )
            .and_then(|mut st| {
                st.query_row(params![issuer.as_str(), shard_key(shard)], |r| {
                    r.get::<_, i64>(0)
                })
            })
            .map(|v| v as u64)
            .map_err(map_err)
        })
    }

    fn append_audit_many(&self, at: i64, events: &[AuditEvent]) -> Result<Vec<AuditRecord>> {
        self.tx(|tx| events.iter().map(|e| append(tx, at, e)).collect())
    }
}

fn tenant_from_row(r: &Row) -> rusqlite::Result<TenantRecord> {
    Ok(TenantRecord {
        id: r.get(0)?,
        name: r.get(1)?,
        created_at: r.get(2)?,
    })
}

const CREDENTIAL_COLUMNS: &str =
    "id, tenant_id, role, token_hash, created_at, expires_at, revoked_at, teller_id, holder";

fn credential_from_row(r: &Row) -> rusqlite::Result<CredentialRecord> {
    Ok(CredentialRecord {
        id: r.get(0)?,
        tenant_id: r.get(1)?,
        role: r.get(2)?,
        token_hash: r.get(3)?,
        created_at: r.get(4)?,
        expires_at: r.get(5)?,
        revoked_at: r.get(6)?,
        teller_id: r.get(7)?,
        holder: r.get(8)?,
    })
}

fn teller_from_row(r: &Row) -> rusqlite::Result<TellerRecord> {
    Ok(TellerRecord {
        id: r.get(0)?,
        tenant_id: r.get(1)?,
        employee_id: r.get(2)?,
        name: r.get(3)?,
        created_at: r.get(4)?,
    })
}

const KEY_COLUMNS: &str = "id, tenant_id, kind, teller_id, key_label, certificate_serial, pin_hash,
     activation_hash, failed_attempts, locked, created_at";

fn key_from_row(r: &Row) -> rusqlite::Result<SigningKeyRecord> {
    Ok(SigningKeyRecord {
        id: r.get(0)?,
        tenant_id: r.get(1)?,
        kind: r.get(2)?,
        teller_id: r.get(3)?,
        key_label: r.get(4)?,
        certificate_serial: r.get(5)?,
        pin_hash: r.get(6)?,
        activation_hash: r.get(7)?,
        failed_attempts: r.get::<_, i64>(8)? as u32,
        locked: r.get::<_, i64>(9)? != 0,
        created_at: r.get(10)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::AuditEvent;

    /// Audit events as the database file alone has them, the WAL ignored (none while even the
    /// schema is still only in the WAL).
    fn events_in_database_file(path: &Path) -> i64 {
        let uri = format!("file:{}?immutable=1", path.display());
        let conn = Connection::open_with_flags(
            uri,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_URI,
        )
        .expect("open the database file");
        conn.query_row("SELECT count(*) FROM audit_events", [], |r| r.get(0))
            .unwrap_or(0)
    }

    /// A new database file as the first `version` migrations leave it.
    fn store_at_version(path: &Path, version: usize) -> Connection {
        let conn = Connection::open(path).expect("create");
        for (i, sql) in MIGRATIONS[..version].iter().enumerate() {
            conn.execute_batch(sql).expect("migration");
            conn.pragma_update(None, "user_version", i + 1).unwrap();
        }
        conn
    }

    #[test]
    fn a_version_10_store_keeps_its_teller_requests_through_the_table_rebuild() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("signet.db");
        {
            let conn = store_at_version(&path, 10);
            conn.execute_batch(
                "INSERT INTO tenants (id, name, created_at) VALUES ('t1', 'Bank', 1);
                 INSERT INTO teller_requests (id, tenant_id, requested_by, csr, subject, status,
                     created_at, expires_at, kind, requested_by_holder)
                 VALUES ('treq_1', 't1', 'cred_1', x'3082', 'CN=T', 'pending', 10, 100,
                     'certificate', 'e7001');
                 INSERT INTO teller_requests (id, tenant_id, requested_by, csr, subject, status,
                     created_at, expires_at, decided_by, decided_at, serial)
                 VALUES ('treq_2', 't1', 'cred_1', x'3082', 'CN=U', 'approved', 11, 101,
                     'cred_2', 12, '0a');",
            )
            .expect("version 10 rows");
        }
        let store = SqliteStore::open(&path).expect("open and upgrade");
        let pending = store.teller_request("treq_1").unwrap().expect("kept");
        assert_eq!(
            (
                pending.status,
                pending.csr.as_slice(),
                pending.requested_by_holder.as_deref(),
                pending.expires_at,
                pending.decision_reason.as_deref()
            ),
            (
                RequestStatus::Pending,
                &[0x30, 0x82][..],
                Some("e7001"),
                100,
                None
            )
        );
        let approved = store.teller_request("treq_2").unwrap().expect("kept");
        assert_eq!(
            (
                approved.status,
                approved.serial.as_deref(),
                approved.kind.as_str()
            ),
            (RequestStatus::Approved, Some("0a"), "certificate")
        );
        // The new status is allowed; a made-up one still is not.
        let ev = AuditEvent::new(
            "test",
            "teller_request.reject",
            "treq_1",
            serde_json::json!({}),
        );
        store
            .decide_teller_request("treq_1", RequestStatus::Rejected, Some("no"), "c", 20, &ev)
            .expect("rejected");
        let refused = store.tx(|tx| {
            tx.execute(
                "UPDATE teller_requests SET status = 'lost' WHERE id = 'treq_2'",
                [],
            )
            .map_err(map_err)
        });
        assert!(
            refused.is_err(),
            "the CHECK constraint survives the rebuild"
        );
    }

    #[test]
    fn a_version_4_store_keeps_its_replay_keys_and_thumbprints_through_the_upgrade() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("signet.db");
        {
            // A store as version 4 left it, with a remembered instruction and a certificate.
            let conn = store_at_version(&path, 4);
            conn.execute_batch(
                "INSERT INTO replay_instructions VALUES ('spki', 'd1', 5000);
                 INSERT INTO replay_instruction_ids VALUES ('spki', 'id-1', 5000);
                 INSERT INTO certificates (serial, issuer, profile, status, subject, shard,
                     not_before, not_after, tbs_der, cert_der, created_at, thumbprint)
                 VALUES ('0a', 'customer', 'customer', 'issued', 'CN=x', 0, 1, 2, x'30', x'30',
                     1, 'ab12');
                 INSERT INTO certificates (serial, issuer, profile, status, subject, shard,
                     not_before, not_after, tbs_der, created_at)
                 VALUES ('0b', 'customer', 'customer', 'pending', 'CN=y', 0, 1, 2, x'30', 1);",
            )
            .expect("version 4 rows");
        }
        let store = SqliteStore::open(&path).expect("open and upgrade");
        let version: usize = store
            .tx(|tx| {
                tx.query_row("PRAGMA user_version", [], |r| r.get(0))
                    .map_err(map_err)
            })
            .unwrap();
        assert_eq!(version, MIGRATIONS.len());
        let note = |_| AuditEvent::new("test", "signature.verify", "d1", serde_json::json!({}));
        let again = |digest: &str, id: Option<&str>| {
            let keys = ReplayKeys {
                signer: "spki".into(),
                digest: digest.into(),
                instruction_id: id.map(String::from),
            };
            store
                .record_verification(Some(&keys), 6_000, 3_600, &note)
                .expect("recorded")
        };
        assert_eq!(again("d1", None), Some(5_000), "the instruction's digest");
        assert_eq!(again("d2", Some("id-1")), Some(5_000), "the instruction id");
        assert_eq!(again("d3", None), None, "a new instruction");
        let found = store.certificate_by_thumbprint("ab12").unwrap();
        assert_eq!(found.map(|c| c.serial).as_deref(), Some("0a"));
    }

    #[test]
    fn a_version_7_store_s_revocation_no_crl_lists_yet_is_due_after_the_upgrade() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("signet.db");
        {
            // Version 7: the customer CRL was made before any status change (it recorded
            // epoch 0); then a revocation (event 2) that no CRL lists yet.
            let conn = store_at_version(&path, 7);
            conn.execute_batch(
                "INSERT INTO crls (issuer, shard, number, this_update, next_update, tbs_der,
                     crl_der, status_epoch)
                 VALUES ('customer', -1, 1, 1, 2, x'30', x'30', 0),
                        ('teller', -1, 1, 6, 7, x'30', x'30', 2);
                 INSERT INTO certificates (serial, issuer, profile, status, subject, shard,
                     not_before, not_after, tbs_der, cert_der, created_at, revoked_at)
                 VALUES ('0a', 'customer', 'customer', 'issued', 'CN=x', 3, 1, 2, x'30', x'30',
                     1, 5);
                 INSERT INTO audit_events (seq, at, actor, action, object, details, prev_hash, hash)
                 VALUES (1, 1, 't', 'crl.generate', 'crl:customer', '{}', x'00', x'01'),
                        (2, 5, 't', 'certificate.revoke', '0a', '{}', x'01', x'02');",
            )
            .expect("version 7 rows");
        }
        let store = SqliteStore::open(&path).expect("open and upgrade");
        // The scope starts at the store's epoch, which the old CRL did not record.
        assert_eq!(store.crl_scope_epoch(IssuerId::Customer, None).unwrap(), 2);
        assert_eq!(
            store.crl_scope_epoch(IssuerId::Customer, Some(3)).unwrap(),
            2
        );
        let old = store.latest_crl_info(IssuerId::Customer, None).unwrap();
        assert_eq!(old.and_then(|c| c.status_epoch), Some(0));
        // Scopes with nothing revoked start at 0.
        assert_eq!(store.crl_scope_epoch(IssuerId::Teller, None).unwrap(), 0);
        assert_eq!(
            store.crl_scope_epoch(IssuerId::Customer, Some(0)).unwrap(),
            0
        );
        // The teller CRL recorded the store's epoch then (2), above its scope's own (0): it
        // is no newer record than a CRL made now, which follows it.
        let crl = NewCrl {
            issuer: IssuerId::Teller,
            shard: None,
            this_update: 10,
            next_update: 20,
            status_epoch: store.crl_scope_epoch(IssuerId::Teller, None).unwrap(),
            succeeds: Succeeds::Newest,
        };
        let event = AuditEvent::new("test", "crl.generate", "crl:teller", serde_json::json!({}));
        let recorded = store
            .record_crl(&crl, &mut |_| Ok(vec![0x30]), &event)
            .expect("record");
        assert_eq!(recorded.map(|(n, _)| n), Some(2));
    }

    #[test]
    fn committed_writes_reach_the_database_file_without_the_writer_checkpointing() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("signet.db");
        let store = SqliteStore::open(&path).expect("open");
        for i in 0..20 {
            let event = AuditEvent::new("test", "note", &i.to_string(), serde_json::json!({}));
            store.append_audit(1_000 + i, &event).expect("append");
        }
        // Far below the writer's own threshold: only the checkpointer thread copies them.
        let deadline = std::time::Instant::now() + 20 * CHECKPOINT_EVERY;
        while events_in_database_file(&path) < 20 {
            assert!(
                std::time::Instant::now() < deadline,
                "the WAL was not checkpointed into the database file"
            );
            std::thread::sleep(CHECKPOINT_EVERY / 4);
        }
    }
}
