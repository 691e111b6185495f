//! The shared store: one PostgreSQL database that several Signet processes use at once.
//!
//! Every write transaction first takes one transaction-scoped advisory lock, so writes are
//! serialized across processes exactly as SQLite's `BEGIN IMMEDIATE` serializes them: the
//! audit chain gets one head, CRL numbers one sequence per issuer. Reads take no lock.
//!
//! The `postgres` client is synchronous (it drives its own small runtime), which fits the
//! synchronous `Store` trait; callers inside the server reach the store through
//! `spawn_blocking`, never from an async worker thread.

use std::sync::Arc;
use std::time::Duration;

use ::postgres::error::SqlState;
use ::postgres::types::ToSql;
use ::postgres::{Row, Transaction};
use r2d2_postgres::PostgresConnectionManager;
use zeroize::Zeroizing;

use super::group::GroupTransaction;
use super::*;
use crate::audit::{chain_hash, AuditEvent, AuditRecord, GENESIS};

const MIGRATIONS: &[&str] = &[
    include_str!("pg/0001_init.sql"),
    include_str!("pg/0002_crl_order.sql"),
    include_str!("pg/0003_write_less.sql"),
    include_str!("pg/0004_replay_expiry.sql"),
    include_str!("pg/0005_crl_status_epoch.sql"),
    include_str!("pg/0006_crl_scope_epochs.sql"),
    include_str!("pg/0007_credential_holder.sql"),
    include_str!("pg/0008_teller_request_holder.sql"),
    include_str!("pg/0009_teller_request_rejected.sql"),
];

/// Key of the advisory lock every write transaction holds until it ends ("SIGNET" in ASCII).
const WRITE_LOCK: i64 = 0x5349_474e_4554;

type Pool = r2d2::Pool<PostgresConnectionManager<Tls>>;
type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// How to reach the database.
pub struct PostgresOptions {
    /// `postgres://user@host:port/db?...` (libpq-style URL or key=value string).
    pub url: String,
    /// Overrides any password in the URL.
    pub password: Option<Zeroizing<String>>,
    /// PEM certificates of the CA(s) the server's certificate must chain to, for a URL with
    /// `sslmode=require`.
    pub tls_ca_file: Option<std::path::PathBuf>,
    /// Connections kept by this process.
    pub pool: u32,
    /// How long a call waits for a connection before it fails as unavailable.
    pub connect_timeout: Duration,
    /// How long a write waits for the write lock, which another process may hold, before it
    /// fails as unavailable. The server also ends a session left idle inside a transaction
    /// for twice as long: a process frozen (or cut off) while holding the lock releases it
    /// then, instead of stopping every writer until TCP keepalive gives up on it.
    pub lock_timeout: Duration,
}

/// An error and what caused it, as one sentence.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

/// How connections speak TLS: rustls (ring), used only when the URL says `sslmode=require`.
type Tls = tokio_postgres_rustls::MakeRustlsConnect;

/// The TLS the URL asks for. `sslmode=require`: TLS, the server's certificate verified against
/// `ca_file` and for the URL's host name (what libpq calls verify-full; a bank's database is
/// not to be reached through a man in the middle). No `sslmode`, or `disable`: none (a Unix
/// socket, or a private network). `prefer` is refused: it would fall back to plain text
/// without a word.
fn tls_connector(
    url: &str,
    config: &mut ::postgres::Config,
    ca_file: Option<&std::path::Path>,
) -> Result<Tls> {
    use ::postgres::config::SslMode;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let refuse = StoreError::Unavailable;
    let mut roots = rustls::RootCertStore::empty();
    let plain = || -> Result<()> {
        match ca_file {
            // The config means TLS; a URL without it (say, from SIGNET_STORE_URL) must not
            // quietly connect in plain text.
            Some(path) => Err(refuse(format!(
                "[store] tls_ca_file ({}) is set but the store URL does not say \
                 sslmode=require: add it to the URL, or remove tls_ca_file for no TLS",
                path.display()
            ))),
            None => Ok(()),
        }
    };
    match config.get_ssl_mode() {
        SslMode::Disable => plain()?,
        SslMode::Prefer if !url.contains("sslmode=") => {
            plain()?;
            config.ssl_mode(SslMode::Disable);
        }
        SslMode::Require => {
            let Some(path) = ca_file else {
                return Err(refuse(
                    "the store URL says sslmode=require: set [store] tls_ca_file to the PEM \
                     certificate of the CA that issued the PostgreSQL server's certificate"
                        .into(),
                ));
            };
            let unreadable = |e: &dyn std::fmt::Display| {
                StoreError::Unavailable(format!("[store] tls_ca_file {}: {e}", path.display()))
            };
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| unreadable(&e))?
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| unreadable(&e))?;
            if certs.is_empty() {
                return Err(unreadable(&"no CERTIFICATE in the file"));
            }
            for c in certs {
                roots.add(c).map_err(|e| unreadable(&e))?;
            }
        }
        other => {
            return Err(refuse(format!(
                "the store URL's sslmode ({other:?}) is not one Signet uses: say sslmode=require \
                 (TLS, server certificate verified) or leave it out (no TLS)"
            )))
        }
    }
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| StoreError::Unavailable(format!("TLS for PostgreSQL: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Tls::new(client))
}

/// PostgreSQL-backed [`Store`].
pub struct PostgresStore {
    // An Option only so that `Drop` can move the pool to a plain thread (see there).
    pool: Option<Pool>,
    last_error: LastConnectError,
    /// How long a call waits for a connection.
    wait: Duration,
    /// How long a write waits for the write lock (also set on every session).
    lock_timeout: Duration,
}

/// Why the pool's last attempt to connect failed, with its causes: the pool's own error says
/// only that it timed out ("error performing TLS handshake" at best), not that the server's
/// certificate did not verify or the password was wrong.
#[derive(Debug, Default, Clone)]
struct LastConnectError(Arc<std::sync::Mutex<Option<(std::time::Instant, String)>>>);

impl r2d2::HandleError<::postgres::Error> for LastConnectError {
    fn handle_error(&self, error: ::postgres::Error) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((std::time::Instant::now(), with_causes(&error)));
    }
}

fn map_err(e: ::postgres::Error) -> StoreError {
    let Some(code) = e.code() else {
        // No SQLSTATE: the connection failed or closed.
        return StoreError::Unavailable(e.to_string());
    };
    match code.code().get(..2) {
        Some("22") => StoreError::Corrupt(e.to_string()),
        Some("23") => StoreError::Conflict(e.to_string()),
        _ => StoreError::Unavailable(e.to_string()),
    }
}

fn is_unique_violation(e: &::postgres::Error) -> bool {
    e.code() == Some(&SqlState::UNIQUE_VIOLATION)
}

/// A column of a row, as the Rust type the schema promises (a mismatch is corruption, not a panic).
fn col<'a, T: ::postgres::types::FromSql<'a>>(r: &'a Row, i: usize) -> Result<T> {
    r.try_get(i)
        .map_err(|e| StoreError::Corrupt(format!("column {i}: {e}")))
}

/// How a write transaction ended.
enum Ended<T> {
    Committed(T),
    /// One of its writes failed: it rolled back.
    Failed(StoreError),
    /// The connection failed before the answer to COMMIT came: the server may have committed
    /// it or not.
    CommitUnanswered(T, StoreError),
}

impl PostgresStore {
    /// Connects, and applies pending migrations under the write lock (so that two processes
    /// starting together migrate once).
    pub fn open(options: PostgresOptions) -> Result<Self> {
        if options.url.contains("sslmode=verify-") {
            // libpq's names, which the parser rejects as "invalid connection string".
            return Err(StoreError::Unavailable(
                "the store URL says sslmode=verify-ca or verify-full (libpq's names): write \
                 sslmode=require, which verifies the server's certificate chain and name \
                 against [store] tls_ca_file"
                    .into(),
            ));
        }
        let mut config: ::postgres::Config = options.url.parse().map_err(|e| {
            StoreError::Unavailable(format!("the store URL is not a valid postgres:// URL: {e}"))
        })?;
        if let Some(pw) = &options.password {
            config.password(pw.as_bytes());
        }
        config.connect_timeout(options.connect_timeout);
        config.application_name("signet");
        let tls = tls_connector(&options.url, &mut config, options.tls_ca_file.as_deref())?;
        let manager = PostgresConnectionManager::new(config, tls);
        let last_error = LastConnectError::default();
        let pool = r2d2::Pool::builder()
            .max_size(options.pool)
            .min_idle(Some(0))
            .connection_timeout(options.connect_timeout)
            .error_handler(Box::new(last_error.clone()))
            .build_unchecked(manager);
        let store = PostgresStore {
            pool: Some(pool),
            last_error,
            wait: options.connect_timeout,
            lock_timeout: options.lock_timeout,
        };
        store.migrate()?;
        Ok(store)
    }

    fn pool(&self) -> &Pool {
        self.pool.as_ref().expect("pool present until drop")
    }

    fn conn(&self) -> Result<r2d2::PooledConnection<PostgresConnectionManager<Tls>>> {
        self.pool().get().map_err(|e| {
            // The reason of an attempt made while this call waited, if there was one.
            let recent = self
                .last_error
                .0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
                .filter(|(at, _)| at.elapsed() <= self.wait + Duration::from_secs(1));
            StoreError::Unavailable(match recent {
                Some((_, why)) => format!("no PostgreSQL connection: {e}: {why}"),
                None => format!("no PostgreSQL connection: {e}"),
            })
        })
    }

    fn migrate(&self) -> Result<()> {
        self.tx(|tx| {
            tx.batch_execute("CREATE TABLE IF NOT EXISTS signet_schema (version BIGINT NOT NULL);")
                .map_err(map_err)?;
            let version = match tx
                .query_opt("SELECT version FROM signet_schema", &[])
                .map_err(map_err)?
            {
                Some(r) => col::<i64>(&r, 0)? as usize,
                None => {
                    tx.execute("INSERT INTO signet_schema (version) VALUES (0)", &[])
                        .map_err(map_err)?;
                    0
                }
            };
            if version > MIGRATIONS.len() {
                return Err(StoreError::Corrupt(format!(
                    "database schema version {version} is newer than this Signet ({})",
                    MIGRATIONS.len()
                )));
            }
            for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
                tx.batch_execute(sql).map_err(map_err)?;
                tx.execute(
                    "UPDATE signet_schema SET version = $1",
                    &[&((i + 1) as i64)],
                )
                .map_err(map_err)?;
            }
            Ok(())
        })
    }

    /// A write transaction under the cross-process write lock.
    fn tx<T>(&self, f: impl FnOnce(&mut Transaction) -> Result<T>) -> Result<T> {
        match self.tx_ended(f)? {
            Ended::Committed(out) => Ok(out),
            Ended::Failed(e) | Ended::CommitUnanswered(_, e) => Err(e),
        }
    }

    /// [`PostgresStore::tx`], telling a COMMIT that failed from one that went unanswered.
    fn tx_ended<T>(&self, f: impl FnOnce(&mut Transaction) -> Result<T>) -> Result<Ended<T>> {
        let mut conn = self.conn()?;
        // READ COMMITTED whatever the database's default: each statement then sees what the
        // lock's previous holder committed (a REPEATABLE READ snapshot would be taken while
        // waiting for the lock, and the audit chain's head read from it would be stale).
        let mut tx = conn
            .build_transaction()
            .isolation_level(::postgres::IsolationLevel::ReadCommitted)
            .start()
            .map_err(map_err)?;
        // Set per transaction, not per connection, so that a pooler (PgBouncer refuses
        // `options` at connect) passes them on. Zero is PostgreSQL's "no limit".
        let lock_ms = self.lock_timeout.as_millis().min(i32::MAX as u128);
        let idle_ms = (lock_ms * 2).min(i32::MAX as u128);
        tx.batch_execute(&format!(
            "SET LOCAL lock_timeout = {lock_ms}; \
             SET LOCAL idle_in_transaction_session_timeout = {idle_ms}; \
             SELECT pg_advisory_xact_lock({WRITE_LOCK})"
        ))
        .map_err(|e| {
            if e.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) {
                StoreError::Unavailable(format!(
                    "another Signet process held the store's write lock longer than \
                         [store].lock_timeout_ms ({} ms)",
                    self.lock_timeout.as_millis()
                ))
            } else {
                map_err(e)
            }
        })?;
        let out = match f(&mut tx) {
            Ok(out) => out,
            Err(e) => return Ok(Ended::Failed(e)),
        };
        match tx.commit() {
            Ok(()) => Ok(Ended::Committed(out)),
            // The connection failed before the server's answer came, or the server answered
            // with an error that may follow a commit (a backend ended while it waited for a
            // standby has committed locally): either way, whether it is in is not known.
            Err(e) => Ok(Ended::CommitUnanswered(out, map_err(e))),
        }
    }

    /// Whether the audit event `rec` is in the chain as appended: after a COMMIT that went
    /// unanswered, whether the server committed it. Read under the write lock, which the
    /// transaction in question holds until it has committed or rolled back.
    fn has_audit_record(&self, rec: &AuditRecord) -> Result<bool> {
        self.tx(|tx| {
            let hash: Option<Vec<u8>> = tx
                .query_opt(
                    "SELECT hash FROM audit_events WHERE seq = $1",
                    &[&(rec.seq as i64)],
                )
                .map_err(map_err)?
                .map(|r| col(&r, 0))
                .transpose()?;
            Ok(hash.as_deref() == Some(rec.hash.as_slice()))
        })
    }

    /// At most one row of a query.
    fn optional_row<T>(
        &self,
        sql: &str,
        params: Params,
        row: impl FnOnce(&Row) -> Result<T>,
    ) -> Result<Option<T>> {
        let mut c = self.conn()?;
        c.query_opt(sql, params)
            .map_err(map_err)?
            .as_ref()
            .map(row)
            .transpose()
    }

    /// Every row of a query.
    fn all_rows<T>(
        &self,
        sql: &str,
        params: Params,
        row: impl FnMut(&Row) -> Result<T>,
    ) -> Result<Vec<T>> {
        let mut c = self.conn()?;
        c.query(sql, params)
            .map_err(map_err)?
            .iter()
            .map(row)
            .collect()
    }

    /// Runs raw SQL. For tests that tamper with the store behind Signet's back.
    pub fn execute_raw(&self, sql: &str) -> Result<()> {
        self.conn()?.batch_execute(sql).map_err(map_err)
    }
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        // Closing a synchronous postgres client runs its own runtime; on an async worker
        // thread (the server drops its state there) that would panic. Close on a plain thread.
        if let Some(pool) = self.pool.take() {
            let _ = std::thread::spawn(move || drop(pool)).join();
        }
    }
}

impl GroupTransaction for Transaction<'_> {
    fn insert_pending(&mut self, rec: &CertRecord, event: &AuditEvent) -> Result<AuditRecord> {
        let tx = self;
        tx.execute(
            "INSERT INTO certificates (serial, issuer, profile, status, subject, subject_serial_digest,
                shard, not_before, not_after, tbs_der, cert_der, created_at, owner, key_id)
             VALUES ($1, $2, $3, 'pending', $4, $5, $6, $7, $8, $9, NULL, $10, $11, $12)",
            &[
                &rec.serial,
                &rec.issuer.as_str(),
                &rec.profile,
                &rec.subject,
                &rec.subject_serial_digest,
                &(rec.shard as i64),
                &rec.not_before,
                &rec.not_after,
                &rec.tbs_der,
                &rec.created_at,
                &rec.owner,
                &rec.key_id,
            ],
        )
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
        let tx = self;
        update_one(
            tx,
            "UPDATE certificates SET status = 'issued', cert_der = $2, thumbprint = $3
             WHERE serial = $1 AND status = 'pending'",
            &[&serial, &cert_der, &super::thumbprint(cert_der)],
            || super::no_longer_pending(serial),
        )?;
        append(tx, at, event)
    }

    fn apply_verification(
        &mut self,
        guard: Option<&ReplayKeys>,
        at: i64,
        window_secs: i64,
        event: &dyn Fn(Option<i64>) -> AuditEvent,
    ) -> Result<Applied> {
        let tx = self;
        let mut first_seen: Option<i64> = None;
        if let Some(g) = guard {
            let cutoff = at - window_secs;
            let mut remember = |tx: &mut Transaction,
                                table: &str,
                                column: &str,
                                value: &str|
             -> Result<()> {
                // One statement (one round trip) in the common case, as in the SQLite store.
                let recorded = tx
                    .query_opt(
                        &format!(
                            "INSERT INTO {table} (signer, {column}, first_seen) VALUES ($1, $2, $3)
                             ON CONFLICT (signer, {column}) DO UPDATE SET first_seen = excluded.first_seen
                             WHERE {table}.first_seen <= $4
                             RETURNING first_seen"
                        ),
                        &[&g.signer, &value, &at, &cutoff],
                    )
                    .map_err(map_err)?;
                if recorded.is_none() {
                    let earlier = tx
                        .query_one(
                            &format!(
                                "SELECT first_seen FROM {table} WHERE signer = $1 AND {column} = $2"
                            ),
                            &[&g.signer, &value],
                        )
                        .map_err(map_err)?;
                    let t = col::<i64>(&earlier, 0)?;
                    first_seen = Some(first_seen.map_or(t, |f: i64| f.min(t)));
                }
                Ok(())
            };
            remember(tx, "replay_instructions", "digest", &g.digest)?;
            if let Some(id) = &g.instruction_id {
                remember(tx, "replay_instruction_ids", "instruction_id", id)?;
            }
        }
        let audit = append(tx, at, &event(first_seen))?;
        Ok(Applied { audit, first_seen })
    }
}

/// Appends the audit event of a status change and makes it the epoch of its certificate's
/// issuer and shard ([`Store::crl_scope_epoch`]).
fn append_status_change(
    tx: &mut Transaction,
    issuer: &str,
    shard: i64,
    at: i64,
    event: &AuditEvent,
) -> Result<AuditRecord> {
    let audit = append(tx, at, event)?;
    tx.execute(
        "INSERT INTO crl_scope_epochs (issuer, shard, epoch) VALUES ($1, $2, $3)
         ON CONFLICT (issuer, shard) DO UPDATE SET epoch = excluded.epoch",
        &[&issuer, &shard, &(audit.seq as i64)],
    )
    .map_err(map_err)?;
    Ok(audit)
}

/// Appends `event` to the chain inside `tx` (which holds the write lock).
/// Locks a key that has reached `max` wrong attempts; true when this call locked it.
fn lock_at_limit(tx: &mut Transaction, id: &str, max: u32) -> Result<bool> {
    let n = tx
        .execute(
            "UPDATE signing_keys SET locked = 1 WHERE id = $1 AND locked = 0 AND failed_attempts >= $2",
            &[&id, &i64::from(max)],
        )
        .map_err(map_err)?;
    Ok(n == 1)
}

fn append(tx: &mut Transaction, at: i64, event: &AuditEvent) -> Result<AuditRecord> {
    let head = tx
        .query_opt(
            "SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1",
            &[],
        )
        .map_err(map_err)?;
    let (seq, prev) = match head {
        Some(r) => (col::<i64>(&r, 0)? as u64 + 1, col::<Vec<u8>>(&r, 1)?),
        None => (1, GENESIS.to_vec()),
    };
    let hash = chain_hash(&prev, seq, at, event);
    tx.execute(
        "INSERT INTO audit_events (seq, at, actor, action, object, details, tenant, prev_hash, hash)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        &[
            &(seq as i64),
            &at,
            &event.actor,
            &event.action,
            &event.object,
            &event.details,
            &event.tenant,
            &prev,
            &hash.as_slice(),
        ],
    )
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

fn audit_from_row(r: &Row) -> Result<AuditRecord> {
    Ok(AuditRecord {
        seq: col::<i64>(r, 0)? as u64,
        at: col(r, 1)?,
        actor: col(r, 2)?,
        action: col(r, 3)?,
        object: col(r, 4)?,
        details: col(r, 5)?,
        tenant: col(r, 6)?,
        prev_hash: col(r, 7)?,
        hash: col(r, 8)?,
    })
}

const CERT_COLUMNS: &str = "serial, issuer, profile, status, subject, subject_serial_digest, shard,
     not_before, not_after, tbs_der, cert_der, created_at, revoked_at, revocation_reason, invalidity_date, owner, key_id";

/// The revocation in columns `at` (revoked_at), `at + 1` (reason), `at + 2` (invalidity date).
fn revocation_from(r: &Row, at: usize) -> Result<Option<RevocationRecord>> {
    let revoked_at: Option<i64> = col(r, at)?;
    let reason: Option<i64> = col(r, at + 1)?;
    Ok(match revoked_at {
        Some(revoked_at) => Some(RevocationRecord {
            revoked_at,
            reason_code: reason.map(|c| c as u8),
            invalidity_date: col(r, at + 2)?,
        }),
        None => None,
    })
}

/// A CRL row: number, thisUpdate, nextUpdate, status epoch and, when the query selects it,
/// the DER.
fn crl_from_row(r: &Row, issuer: IssuerId, shard: Option<u32>) -> Result<CrlRecord> {
    Ok(CrlRecord {
        issuer,
        shard,
        number: col::<i64>(r, 0)? as u64,
        this_update: col(r, 1)?,
        next_update: col(r, 2)?,
        status_epoch: col::<Option<i64>>(r, 3)?.map(|e| e as u64),
        crl_der: if r.len() > 4 { col(r, 4)? } else { None },
    })
}

/// The columns [`teller_request_from_row`] reads, in its order.
const TELLER_REQUEST_COLUMNS: &str =
    "id, tenant_id, requested_by, csr, subject, status, created_at,
    expires_at, decided_by, decided_at, serial, kind, teller_id, requested_by_holder,
    decision_reason";

fn teller_request_from_row(r: &Row) -> Result<TellerRequestRecord> {
    let status: String = col(r, 5)?;
    Ok(TellerRequestRecord {
        id: col(r, 0)?,
        tenant_id: col(r, 1)?,
        requested_by: col(r, 2)?,
        csr: col(r, 3)?,
        subject: col(r, 4)?,
        status: RequestStatus::parse(&status)?,
        created_at: col(r, 6)?,
        expires_at: col(r, 7)?,
        decided_by: col(r, 8)?,
        decided_at: col(r, 9)?,
        serial: col(r, 10)?,
        kind: col(r, 11)?,
        teller_id: col(r, 12)?,
        requested_by_holder: col(r, 13)?,
        decision_reason: col(r, 14)?,
    })
}

fn cert_from_row(r: &Row) -> Result<CertRecord> {
    let issuer: String = col(r, 1)?;
    let status: String = col(r, 3)?;
    Ok(CertRecord {
        serial: col(r, 0)?,
        issuer: IssuerId::parse(&issuer)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown issuer {issuer:?}")))?,
        profile: col(r, 2)?,
        status: CertStatus::parse(&status)?,
        subject: col(r, 4)?,
        subject_serial_digest: col(r, 5)?,
        shard: col::<i64>(r, 6)? as u32,
        not_before: col(r, 7)?,
        not_after: col(r, 8)?,
        tbs_der: col(r, 9)?,
        cert_der: col(r, 10)?,
        created_at: col(r, 11)?,
        revocation: revocation_from(r, 12)?,
        owner: col(r, 15)?,
        key_id: col(r, 16)?,
    })
}

fn get_cert(tx: &mut Transaction, serial: &str) -> Result<Option<CertRecord>> {
    tx.query_opt(
        &format!("SELECT {CERT_COLUMNS} FROM certificates WHERE serial = $1"),
        &[&serial],
    )
    .map_err(map_err)?
    .as_ref()
    .map(cert_from_row)
    .transpose()
}

/// Revoked, held and void entries of an issuer (all shards when $2 < 0), in CRL order.
const REVOKED_QUERY: &str =
    "SELECT serial, revoked_at, revocation_reason, invalidity_date FROM certificates
     WHERE issuer = $1 AND revoked_at IS NOT NULL AND ($2::BIGINT < 0 OR shard = $2::BIGINT)
     ORDER BY revoked_at, serial";

fn revoked_from_row(r: &Row) -> Result<RevokedEntry> {
    Ok(RevokedEntry {
        serial: col(r, 0)?,
        revocation: RevocationRecord {
            revoked_at: col(r, 1)?,
            reason_code: col::<Option<i64>>(r, 2)?.map(|c| c as u8),
            invalidity_date: col(r, 3)?,
        },
    })
}

fn shard_key(shard: Option<u32>) -> i64 {
    shard.map(i64::from).unwrap_or(-1)
}

/// Runs one statement that must change exactly one row, or fails with `conflict`.
fn update_one(
    tx: &mut Transaction,
    sql: &str,
    params: Params,
    conflict: impl FnOnce() -> StoreError,
) -> Result<()> {
    let n = tx.execute(sql, params).map_err(map_err)?;
    if n == 1 {
        Ok(())
    } else {
        Err(conflict())
    }
}

impl Store for PostgresStore {
    fn cas(&self) -> Result<Vec<CaRecord>> {
        self.all_rows(
            "SELECT name, key_label, cert_der, public_key, created_at FROM ca ORDER BY created_at, name",
            &[],
            |r| {
                Ok(CaRecord {
                    name: col(r, 0)?,
                    key_label: col(r, 1)?,
                    cert_der: col(r, 2)?,
                    public_key: col(r, 3)?,
                    created_at: col(r, 4)?,
                })
            },
        )
    }

    fn add_cas(&self, cas: &[CaRecord], at: i64, event: &AuditEvent) -> Result<AuditRecord> {
        self.tx(|tx| {
            for ca in cas {
                tx.execute(
                    "INSERT INTO ca (name, key_label, cert_der, public_key, created_at) VALUES ($1, $2, $3, $4, $5)",
                    &[&ca.name, &ca.key_label, &ca.cert_der, &ca.public_key, &ca.created_at],
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
        // Group commit: one transaction (one WAL flush) for the group. Nearly always every
        // write applies, so the first try has no savepoints (two round trips less per write);
        // if any write fails, that transaction rolls back whole and the group is applied
        // again, each unit in its own savepoint so that one that fails leaves the others.
        let all = self.tx_ended(|tx| {
            units
                .iter()
                .map(|u| tx.apply_unit(u))
                .collect::<Result<Vec<_>>>()
        });
        match all {
            Ok(Ended::Committed(applied)) => return Ok(applied.into_iter().map(Ok).collect()),
            // Applied again, a group the server did commit would meet its own writes: a first
            // presentation taken for a replay, a certificate "no longer pending". Its first
            // audit event says whether it is in.
            Ok(Ended::CommitUnanswered(applied, e)) => {
                let first = applied.iter().flatten().next().map(|a| &a.audit);
                match first.map(|rec| self.has_audit_record(rec)) {
                    Some(Ok(true)) => return Ok(applied.into_iter().map(Ok).collect()),
                    Some(Ok(false)) => {}
                    // Unknown: better unavailable than applied twice.
                    Some(Err(_)) | None => return Err(e),
                }
            }
            Ok(Ended::Failed(_)) => {}
            // No connection or no lock: the retry would meet the same (after as long a wait).
            Err(e) => return Err(e),
        }
        self.tx(|tx| {
            let mut out = Vec::with_capacity(units.len());
            for unit in units {
                let mut sp = tx.savepoint("grouped_write").map_err(map_err)?;
                let r = sp.apply_unit(unit);
                if r.is_ok() {
                    sp.commit().map_err(map_err)?;
                } else {
                    sp.rollback().map_err(map_err)?;
                }
                out.push(r);
            }
            Ok(out)
        })
    }

    fn pending_before(&self, cutoff: i64) -> Result<Vec<CertRecord>> {
        self.all_rows(
            &format!(
                "SELECT {CERT_COLUMNS} FROM certificates WHERE status = 'pending' AND created_at <= $1 ORDER BY created_at"
            ),
            &[&cutoff],
            cert_from_row,
        )
    }

    fn void_pending(&self, serial: &str, at: i64, event: &AuditEvent) -> Result<AuditRecord> {
        self.tx(|tx| {
            let scope = tx
                .query_opt(
                    "UPDATE certificates SET status = 'void', revoked_at = $2, revocation_reason = NULL
                     WHERE serial = $1 AND status = 'pending' RETURNING issuer, shard",
                    &[&serial, &at],
                )
                .map_err(map_err)?
                .ok_or_else(|| StoreError::Conflict(format!("{serial} is not pending")))?;
            let issuer: String = col(&scope, 0)?;
            append_status_change(tx, &issuer, col(&scope, 1)?, at, event)
        })
    }

    fn certificate(&self, serial: &str) -> Result<Option<CertRecord>> {
        self.optional_row(
            &format!("SELECT {CERT_COLUMNS} FROM certificates WHERE serial = $1"),
            &[&serial],
            cert_from_row,
        )
    }

    fn certificate_state(&self, serial: &str) -> Result<Option<CertState>> {
        self.optional_row(
            "SELECT status, created_at, revoked_at, revocation_reason, invalidity_date, thumbprint
             FROM certificates WHERE serial = $1",
            &[&serial],
            |r| {
                let status: String = col(r, 0)?;
                Ok(CertState {
                    status: CertStatus::parse(&status)?,
                    created_at: col(r, 1)?,
                    revocation: revocation_from(r, 2)?,
                    thumbprint: col(r, 5)?,
                })
            },
        )
    }

    fn certificates(&self) -> Result<Vec<CertRecord>> {
        self.all_rows(
            &format!(
                "SELECT {CERT_COLUMNS} FROM certificates WHERE status = 'issued' ORDER BY created_at, serial"
            ),
            &[],
            cert_from_row,
        )
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
                "UPDATE certificates SET revoked_at = $2, revocation_reason = $3, invalidity_date = $4 WHERE serial = $1",
                &[
                    &serial,
                    &revocation.revoked_at,
                    &revocation.reason_code.map(i64::from),
                    &revocation.invalidity_date,
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
                "UPDATE certificates SET revoked_at = NULL, revocation_reason = NULL, invalidity_date = NULL WHERE serial = $1",
                &[&serial],
            )
            .map_err(map_err)?;
            append_status_change(tx, cert.issuer.as_str(), cert.shard.into(), at, event)
        })
    }

    fn revoked(&self, issuer: IssuerId, shard: Option<u32>) -> Result<Vec<RevokedEntry>> {
        self.all_rows(
            REVOKED_QUERY,
            &[&issuer.as_str(), &shard_key(shard)],
            revoked_from_row,
        )
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
                .query_opt(
                    "SELECT number, status_epoch,
                            (SELECT COALESCE(MAX(epoch), 0) FROM crl_scope_epochs
                             WHERE issuer = $1 AND ($2::BIGINT < 0 OR shard = $2))
                     FROM crls WHERE issuer = $1 AND shard = $2 ORDER BY number DESC LIMIT 1",
                    &[&issuer.as_str(), &shard_key(shard)],
                )
                .map_err(map_err)?
                .map(|row| -> Result<super::NewestCrl> {
                    Ok((
                        col::<i64>(&row, 0)? as u64,
                        // None: recorded before status epochs were.
                        col::<Option<i64>>(&row, 1)?.unwrap_or(0) as u64,
                        col::<i64>(&row, 2)? as u64,
                    ))
                })
                .transpose()?;
            if !super::may_succeed(crl, newest) {
                return Ok(None);
            }
            let number = newest.map_or(0, |(n, _, _)| n) + 1;
            let tbs = build_tbs(number).map_err(StoreError::Conflict)?;
            tx.execute(
                "INSERT INTO crls (issuer, shard, number, this_update, next_update, status_epoch, tbs_der) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                &[&issuer.as_str(), &shard_key(shard), &(number as i64), &crl.this_update, &crl.next_update, &(crl.status_epoch as i64), &tbs],
            )
            .map_err(map_err)?;
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
            tx.execute(
                "UPDATE crls SET crl_der = $4 WHERE issuer = $1 AND shard = $2 AND number = $3",
                &[
                    &issuer.as_str(),
                    &shard_key(shard),
                    &(number as i64),
                    &crl_der,
                ],
            )
            .map_err(map_err)?;
            // As in SQLite: superseded CRLs keep number, times and TBS; only the newest two
            // keep their signed DER (a CRL of a million entries is tens of megabytes).
            tx.execute(
                "UPDATE crls SET crl_der = NULL WHERE issuer = $1 AND shard = $2 AND number < $3::BIGINT - 1
                 AND crl_der IS NOT NULL",
                &[&issuer.as_str(), &shard_key(shard), &(number as i64)],
            )
            .map_err(map_err)?;
            Ok(())
        })
    }

    fn latest_crl(&self, issuer: IssuerId, shard: Option<u32>) -> Result<Option<CrlRecord>> {
        self.optional_row(
            "SELECT number, this_update, next_update, status_epoch, crl_der FROM crls
             WHERE issuer = $1 AND shard = $2 AND crl_der IS NOT NULL ORDER BY number DESC LIMIT 1",
            &[&issuer.as_str(), &shard_key(shard)],
            |r| crl_from_row(r, issuer, shard),
        )
    }

    fn newest_crl_number(
        &self,
        issuer: IssuerId,
        shard: Option<u32>,
    ) -> Result<Option<CrlNumbered>> {
        self.optional_row(
            "SELECT number, this_update, crl_der IS NOT NULL FROM crls
             WHERE issuer = $1 AND shard = $2 ORDER BY number DESC LIMIT 1",
            &[&issuer.as_str(), &shard_key(shard)],
            |r| {
                Ok(CrlNumbered {
                    number: col::<i64>(r, 0)? as u64,
                    this_update: col(r, 1)?,
                    signed: col(r, 2)?,
                })
            },
        )
    }

    fn crl_scope_keys(&self) -> Result<Vec<(String, i64)>> {
        self.all_rows("SELECT DISTINCT issuer, shard FROM crls", &[], |r| {
            Ok((col(r, 0)?, col(r, 1)?))
        })
    }

    fn latest_crl_info(&self, issuer: IssuerId, shard: Option<u32>) -> Result<Option<CrlRecord>> {
        self.optional_row(
            "SELECT number, this_update, next_update, status_epoch FROM crls
             WHERE issuer = $1 AND shard = $2 AND crl_der IS NOT NULL ORDER BY number DESC LIMIT 1",
            &[&issuer.as_str(), &shard_key(shard)],
            |r| crl_from_row(r, issuer, shard),
        )
    }

    fn each_revoked(
        &self,
        issuer: IssuerId,
        shard: Option<u32>,
        f: &mut dyn FnMut(&RevokedEntry) -> std::result::Result<(), String>,
    ) -> Result<u64> {
        // One snapshot, read through a portal in batches: bounded memory, no lock held
        // against writers (a revocation stays fast while a large CRL is read).
        let mut conn = self.conn()?;
        let mut tx = conn
            .build_transaction()
            .isolation_level(::postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .map_err(map_err)?;
        let issuer_name = issuer.as_str();
        let shard_key = shard_key(shard);
        let portal = tx
            .bind(REVOKED_QUERY, &[&issuer_name, &shard_key])
            .map_err(map_err)?;
        let mut n = 0u64;
        loop {
            let rows = tx.query_portal(&portal, 10_000).map_err(map_err)?;
            if rows.is_empty() {
                break;
            }
            for r in &rows {
                f(&revoked_from_row(r)?).map_err(StoreError::Conflict)?;
                n += 1;
            }
        }
        tx.commit().map_err(map_err)?;
        Ok(n)
    }

    fn certificates_by_subject_serial(&self, owner: &str, digest: &str) -> Result<Vec<CertRecord>> {
        self.all_rows(
            &format!(
                "SELECT {CERT_COLUMNS} FROM certificates
                 WHERE owner = $1 AND subject_serial_digest = $2 AND status = 'issued'
                 ORDER BY created_at, serial"
            ),
            &[&owner, &digest],
            cert_from_row,
        )
    }

    fn add_tenant(&self, tenant: &TenantRecord, event: &AuditEvent) -> Result<AuditRecord> {
        self.tx(|tx| {
            tx.execute(
                "INSERT INTO tenants (id, name, created_at) VALUES ($1, $2, $3)",
                &[&tenant.id, &tenant.name, &tenant.created_at],
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
            "SELECT id, name, created_at FROM tenants WHERE name = $1",
            &[&name],
            tenant_from_row,
        )
    }

    fn tenant(&self, id: &str) -> Result<Option<TenantRecord>> {
        self.optional_row(
            "SELECT id, name, created_at FROM tenants WHERE id = $1",
            &[&id],
            tenant_from_row,
        )
    }

    fn add_credential(&self, cred: &CredentialRecord, event: &AuditEvent) -> Result<AuditRecord> {
        self.tx(|tx| {
            tx.execute(
                "INSERT INTO credentials (id, tenant_id, role, token_hash, created_at, expires_at, revoked_at, teller_id, holder)
                 VALUES ($1, $2, $3, $4, $5, $6, NULL, $7, $8)",
                &[
                    &cred.id,
                    &cred.tenant_id,
                    &cred.role,
                    &cred.token_hash,
                    &cred.created_at,
                    &cred.expires_at,
                    &cred.teller_id,
                    &cred.holder,
                ],
            )
            .map_err(map_err)?;
            append(tx, cred.created_at, event)
        })
    }

    fn credential_by_token_hash(&self, hash: &[u8]) -> Result<Option<CredentialRecord>> {
        self.optional_row(
            &format!("SELECT {CREDENTIAL_COLUMNS} FROM credentials WHERE token_hash = $1"),
            &[&hash],
            credential_from_row,
        )
    }

    fn credentials(&self, tenant_id: &str) -> Result<Vec<CredentialRecord>> {
        self.all_rows(
            &format!(
                "SELECT {CREDENTIAL_COLUMNS} FROM credentials WHERE tenant_id = $1 ORDER BY created_at, id"
            ),
            &[&tenant_id],
            credential_from_row,
        )
    }

    fn credential(&self, id: &str) -> Result<Option<CredentialRecord>> {
        self.optional_row(
            &format!("SELECT {CREDENTIAL_COLUMNS} FROM credentials WHERE id = $1"),
            &[&id],
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
            update_one(
                tx,
                "UPDATE credentials SET token_hash = $3, expires_at = $4
                 WHERE id = $1 AND token_hash = $2 AND revoked_at IS NULL",
                &[&id, &old_hash, &new_hash, &expires_at],
                || {
                    StoreError::Conflict(format!(
                        "credential {id} is revoked or was rotated meanwhile"
                    ))
                },
            )?;
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
            update_one(
                tx,
                "UPDATE credentials SET revoked_at = $3 WHERE tenant_id = $1 AND id = $2 AND revoked_at IS NULL",
                &[&tenant_id, &id, &at],
                || StoreError::NotFound(format!("active credential {id} of this tenant")),
            )?;
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
                    "UPDATE credentials SET holder = $3
                     WHERE tenant_id = $1 AND id = $2 AND revoked_at IS NULL AND holder IS NULL",
                    &[&tenant_id, &id, &holder],
                )
                .map_err(map_err)?;
            if n != 1 {
                let has_one = tx
                    .query_opt(
                        "SELECT holder IS NOT NULL FROM credentials
                         WHERE tenant_id = $1 AND id = $2 AND revoked_at IS NULL",
                        &[&tenant_id, &id],
                    )
                    .map_err(map_err)?
                    .map(|r| col::<bool>(&r, 0))
                    .transpose()?;
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
                 VALUES ($1, $2, $3, $10, $4, $5, 'pending', $6, $7, $8, $9)",
                &[
                    &req.id,
                    &req.tenant_id,
                    &req.requested_by,
                    &req.csr,
                    &req.subject,
                    &req.created_at,
                    &req.expires_at,
                    &req.kind,
                    &req.teller_id,
                    &req.requested_by_holder,
                ],
            )
            .map_err(map_err)?;
            append(tx, req.created_at, event)
        })
    }

    fn teller_request(&self, id: &str) -> Result<Option<TellerRequestRecord>> {
        self.optional_row(
            &format!("SELECT {TELLER_REQUEST_COLUMNS} FROM teller_requests WHERE id = $1"),
            &[&id],
            teller_request_from_row,
        )
    }

    fn teller_requests(
        &self,
        tenant_id: &str,
        status: Option<RequestStatus>,
        now: i64,
        limit: u32,
    ) -> Result<Vec<TellerRequestRecord>> {
        let status = status.map(RequestStatus::as_str);
        self.all_rows(
            &format!(
                "SELECT {TELLER_REQUEST_COLUMNS} FROM teller_requests
                 WHERE tenant_id = $1
                   AND ($2::TEXT IS NULL OR $2 = CASE WHEN status = 'pending' AND expires_at <= $3
                                                      THEN 'expired' ELSE status END)
                 ORDER BY created_at DESC, filed_order DESC LIMIT $4"
            ),
            &[&tenant_id, &status, &now, &i64::from(limit)],
            teller_request_from_row,
        )
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
            update_one(
                tx,
                "UPDATE teller_requests SET status = $2, decided_by = $3, decided_at = $4,
                        decision_reason = $5
                 WHERE id = $1 AND status = 'pending'",
                &[&id, &status.as_str(), &decided_by, &at, &reason],
                || StoreError::Conflict(format!("teller request {id} is no longer pending")),
            )?;
            append(tx, at, event)
        })
    }

    fn set_teller_request_serial(&self, id: &str, serial: &str) -> Result<()> {
        self.tx(|tx| {
            tx.execute(
                "UPDATE teller_requests SET serial = $2 WHERE id = $1",
                &[&id, &serial],
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
                     WHERE id = $1 AND status = 'approved' AND serial IS NULL",
                    &[&id],
                )
                .map_err(map_err)?;
            if n == 1 {
                append(tx, at, event)?;
            }
            Ok(())
        })
    }

    fn certificate_by_key_id(&self, key_id: &str) -> Result<Option<CertRecord>> {
        self.optional_row(
            &format!(
                "SELECT {CERT_COLUMNS} FROM certificates WHERE key_id = $1 AND status = 'issued'
                 ORDER BY created_at DESC LIMIT 1"
            ),
            &[&key_id],
            cert_from_row,
        )
    }

    fn certificate_by_thumbprint(&self, thumbprint: &str) -> Result<Option<CertRecord>> {
        self.optional_row(
            &format!("SELECT {CERT_COLUMNS} FROM certificates WHERE thumbprint = $1"),
            &[&thumbprint],
            cert_from_row,
        )
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
                    .execute(
                        &forget_replay_keys_sql(table, "$1", "$2"),
                        &[&seen_before, &i64::from(limit)],
                    )
                    .map_err(map_err)?;
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
                "INSERT INTO tellers (id, tenant_id, employee_id, name, created_at) VALUES ($1, $2, $3, $4, $5)",
                &[&teller.id, &teller.tenant_id, &teller.employee_id, &teller.name, &teller.created_at],
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
            "SELECT id, tenant_id, employee_id, name, created_at FROM tellers WHERE tenant_id = $1 AND employee_id = $2",
            &[&tenant_id, &employee_id],
            teller_from_row,
        )
    }

    fn teller(&self, id: &str) -> Result<Option<TellerRecord>> {
        self.optional_row(
            "SELECT id, tenant_id, employee_id, name, created_at FROM tellers WHERE id = $1",
            &[&id],
            teller_from_row,
        )
    }

    fn add_signing_key(&self, key: &SigningKeyRecord, event: &AuditEvent) -> Result<AuditRecord> {
        self.tx(|tx| {
            tx.execute(
                "INSERT INTO signing_keys (id, tenant_id, kind, teller_id, key_label, certificate_serial,
                    pin_hash, activation_hash, failed_attempts, locked, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 0, 0, $9)",
                &[
                    &key.id,
                    &key.tenant_id,
                    &key.kind,
                    &key.teller_id,
                    &key.key_label,
                    &key.certificate_serial,
                    &key.pin_hash,
                    &key.activation_hash,
                    &key.created_at,
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
            &format!("SELECT {KEY_COLUMNS} FROM signing_keys WHERE id = $1"),
            &[&id],
            key_from_row,
        )
    }

    fn signing_keys(&self, tenant_id: &str) -> Result<Vec<SigningKeyRecord>> {
        self.all_rows(
            &format!(
                "SELECT {KEY_COLUMNS} FROM signing_keys WHERE tenant_id = $1 ORDER BY created_at, id"
            ),
            &[&tenant_id],
            key_from_row,
        )
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
                     WHERE id = $1 AND locked = 0 AND failed_attempts < $2",
                    &[&id, &i64::from(max)],
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
                        "UPDATE signing_keys SET failed_attempts = 0 WHERE id = $1 AND locked = 0",
                        &[&id],
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
            let row = tx
                .query_one(
                    &format!("SELECT {KEY_COLUMNS} FROM signing_keys WHERE id = $1"),
                    &[&id],
                )
                .map_err(map_err)?;
            Ok(PinOutcome {
                key: key_from_row(&row)?,
                records,
            })
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
            update_one(
                tx,
                "UPDATE signing_keys SET pin_hash = $2, activation_hash = NULL, failed_attempts = 0
                 WHERE id = $1 AND locked = 0 AND ($3::TEXT IS NULL OR activation_hash = $3::TEXT)",
                &[&id, &pin_hash, &activation_hash],
                || {
                    StoreError::Conflict(format!(
                        "key {id} is locked, or its activation code was already used"
                    ))
                },
            )?;
            append(tx, at, event)
        })
    }

    fn unlock_key(&self, id: &str, at: i64, event: &AuditEvent) -> Result<AuditRecord> {
        self.tx(|tx| {
            tx.execute(
                "UPDATE signing_keys SET locked = 0, failed_attempts = 0 WHERE id = $1",
                &[&id],
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
            &[],
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
                    "UPDATE signing_keys SET pin_hash = $3 WHERE id = $1 AND pin_hash = $2",
                    &[&id, &old, &new],
                )
                .map_err(map_err)?;
            if changed == 0 {
                return Ok(None);
            }
            append(tx, at, event).map(Some)
        })
    }

    fn status_epoch(&self) -> Result<u64> {
        let epoch = self.optional_row(
            "SELECT COALESCE(MAX(seq), 0) FROM audit_events WHERE action IN
             ('certificate.revoke', 'certificate.hold', 'certificate.release', 'certificate.void')",
            &[],
            |r| col::<i64>(r, 0),
        )?;
        Ok(epoch.unwrap_or(0) as u64)
    }

    fn crl_scope_epoch(&self, issuer: IssuerId, shard: Option<u32>) -> Result<u64> {
        let epoch = self.optional_row(
            "SELECT COALESCE(MAX(epoch), 0) FROM crl_scope_epochs
             WHERE issuer = $1 AND ($2::BIGINT < 0 OR shard = $2)",
            &[&issuer.as_str(), &shard_key(shard)],
            |r| col::<i64>(r, 0),
        )?;
        Ok(epoch.unwrap_or(0) as u64)
    }

    fn append_audit_many(&self, at: i64, events: &[AuditEvent]) -> Result<Vec<AuditRecord>> {
        self.tx(|tx| events.iter().map(|e| append(tx, at, e)).collect())
    }

    fn append_audit(&self, at: i64, event: &AuditEvent) -> Result<AuditRecord> {
        self.tx(|tx| append(tx, at, event))
    }

    fn audit_events(&self, after: u64) -> Result<Vec<AuditRecord>> {
        self.all_rows(
            &format!("SELECT {AUDIT_COLUMNS} FROM audit_events WHERE seq > $1 ORDER BY seq"),
            &[&(after as i64)],
            audit_from_row,
        )
    }

    fn audit_events_upto(&self, after: u64, upto: u64) -> Result<Vec<AuditRecord>> {
        self.all_rows(
            &format!(
                "SELECT {AUDIT_COLUMNS} FROM audit_events WHERE seq > $1 AND seq <= $2 ORDER BY seq"
            ),
            &[&(after as i64), &(upto as i64)],
            audit_from_row,
        )
    }

    fn tenant_audit_events(
        &self,
        tenant: &str,
        after: u64,
        limit: u32,
    ) -> Result<Vec<AuditRecord>> {
        self.all_rows(
            &format!(
                "SELECT {AUDIT_COLUMNS} FROM audit_events WHERE tenant = $1 AND seq > $2 ORDER BY seq LIMIT $3"
            ),
            &[&tenant, &(after as i64), &i64::from(limit)],
            audit_from_row,
        )
    }

    fn audit_head(&self) -> Result<Option<AuditRecord>> {
        self.optional_row(
            &format!("SELECT {AUDIT_COLUMNS} FROM audit_events ORDER BY seq DESC LIMIT 1"),
            &[],
            audit_from_row,
        )
    }

    fn add_checkpoint(&self, cp: &Checkpoint) -> Result<()> {
        self.tx(|tx| {
            tx.execute(
                "INSERT INTO audit_checkpoints (seq, hash, at, signature) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (seq) DO NOTHING",
                &[&(cp.seq as i64), &cp.hash, &cp.at, &cp.signature],
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
                        "DELETE FROM audit_checkpoints WHERE seq = $1 AND hash = $2",
                        &[&(*seq as i64), hash],
                    )
                    .map_err(map_err)?;
            }
            Ok(removed as usize)
        })
    }

    fn newest_checkpoint_seq(&self) -> Result<Option<u64>> {
        self.optional_row("SELECT MAX(seq) FROM audit_checkpoints", &[], |r| {
            col::<Option<i64>>(r, 0)
        })
        .map(|v| v.flatten().map(|s| s as u64))
    }

    fn checkpoints(&self) -> Result<Vec<Checkpoint>> {
        self.all_rows(
            "SELECT seq, hash, at, signature FROM audit_checkpoints ORDER BY seq",
            &[],
            |r| {
                Ok(Checkpoint {
                    seq: col::<i64>(r, 0)? as u64,
                    hash: col(r, 1)?,
                    at: col(r, 2)?,
                    signature: col(r, 3)?,
                })
            },
        )
    }
}

fn tenant_from_row(r: &Row) -> Result<TenantRecord> {
    Ok(TenantRecord {
        id: col(r, 0)?,
        name: col(r, 1)?,
        created_at: col(r, 2)?,
    })
}

const CREDENTIAL_COLUMNS: &str =
    "id, tenant_id, role, token_hash, created_at, expires_at, revoked_at, teller_id, holder";

fn credential_from_row(r: &Row) -> Result<CredentialRecord> {
    Ok(CredentialRecord {
        id: col(r, 0)?,
        tenant_id: col(r, 1)?,
        role: col(r, 2)?,
        token_hash: col(r, 3)?,
        created_at: col(r, 4)?,
        expires_at: col(r, 5)?,
        revoked_at: col(r, 6)?,
        teller_id: col(r, 7)?,
        holder: col(r, 8)?,
    })
}

fn teller_from_row(r: &Row) -> Result<TellerRecord> {
    Ok(TellerRecord {
        id: col(r, 0)?,
        tenant_id: col(r, 1)?,
        employee_id: col(r, 2)?,
        name: col(r, 3)?,
        created_at: col(r, 4)?,
    })
}

const KEY_COLUMNS: &str = "id, tenant_id, kind, teller_id, key_label, certificate_serial, pin_hash,
     activation_hash, failed_attempts, locked, created_at";

fn key_from_row(r: &Row) -> Result<SigningKeyRecord> {
    Ok(SigningKeyRecord {
        id: col(r, 0)?,
        tenant_id: col(r, 1)?,
        kind: col(r, 2)?,
        teller_id: col(r, 3)?,
        key_label: col(r, 4)?,
        certificate_serial: col(r, 5)?,
        pin_hash: col(r, 6)?,
        activation_hash: col(r, 7)?,
        failed_attempts: col::<i64>(r, 8)? as u32,
        locked: col::<i64>(r, 9)? != 0,
        created_at: col(r, 10)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(url: &str) -> Result<PostgresStore> {
        open_with_ca(url, None)
    }

    fn open_with_ca(url: &str, tls_ca_file: Option<&std::path::Path>) -> Result<PostgresStore> {
        PostgresStore::open(PostgresOptions {
            url: url.into(),
            password: Some(Zeroizing::new("not-in-any-message".into())),
            tls_ca_file: tls_ca_file.map(Into::into),
            pool: 1,
            connect_timeout: Duration::from_millis(500),
            lock_timeout: Duration::from_secs(30),
        })
    }

    fn refusal(r: Result<PostgresStore>) -> String {
        match r {
            Err(StoreError::Unavailable(m)) => m,
            other => panic!("{:?}", other.err()),
        }
    }

    #[test]
    fn sslmode_require_without_a_ca_file_is_refused_before_connecting() {
        let m = refusal(open("postgres://signet@127.0.0.1:1/signet?sslmode=require"));
        assert!(m.contains("tls_ca_file"), "{m}");
    }

    #[test]
    fn a_ca_file_with_a_url_that_asks_for_no_tls_is_refused_rather_than_plain_text() {
        let path = std::path::Path::new("/etc/signet/db-ca.pem");
        for url in [
            "postgres://signet@127.0.0.1:1/signet",
            "postgres://signet@127.0.0.1:1/signet?sslmode=disable",
        ] {
            let m = refusal(open_with_ca(url, Some(path)));
            assert!(
                m.contains("tls_ca_file") && m.contains("sslmode=require"),
                "{m}"
            );
        }
    }

    #[test]
    fn libpqs_verify_full_is_refused_naming_sslmode() {
        // `require` already verifies chain and name; libpq's other names do not parse.
        let m = refusal(open(
            "postgres://signet@127.0.0.1:1/signet?sslmode=verify-full",
        ));
        assert!(m.contains("sslmode"), "{m}");
    }

    #[test]
    fn sslmode_prefer_is_refused_since_it_falls_back_to_plain_text() {
        let m = refusal(open("postgres://signet@127.0.0.1:1/signet?sslmode=prefer"));
        assert!(m.contains("sslmode=require"), "{m}");
    }

    #[test]
    fn a_ca_file_without_a_certificate_is_refused_naming_the_file() {
        let path = std::env::temp_dir().join(format!("signet-no-ca-{}.pem", std::process::id()));
        std::fs::write(&path, "not a certificate\n").unwrap();
        let m = refusal(open_with_ca(
            "postgres://signet@127.0.0.1:1/signet?sslmode=require",
            Some(&path),
        ));
        assert!(m.contains(&path.display().to_string()), "{m}");
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn a_url_that_does_not_parse_is_refused_as_unavailable_with_the_reason() {
        match open("postgres://user@host:notaport/db") {
            Err(StoreError::Unavailable(m)) => {
                assert!(m.contains("not a valid postgres:// URL"), "{m}")
            }
            other => panic!("{:?}", other.err()),
        }
    }

    #[test]
    fn an_unreachable_server_is_unavailable_within_the_wait_and_the_password_never_shows() {
        let started = std::time::Instant::now();
        match open("postgres://signet@127.0.0.1:1/signet") {
            Err(StoreError::Unavailable(m)) => {
                assert!(!m.contains("not-in-any-message"), "{m}");
            }
            other => panic!("{:?}", other.err()),
        }
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}
