//! Store failures: when the store cannot write, Signet answers 503 `store_unavailable` and
//! records, signs and changes nothing of what it refused; when the store can write again, service resumes without a
//! restart. A state change whose audit event cannot be appended is not applied.
//!
//! The drill takes the outage as a parameter ([`StoreOutage`]: how to break the store and how
//! to mend it), so the same drill runs against another engine (PostgreSQL stopped and started).
//! The SQLite case fills a small tmpfs that holds the database: it mounts one, so it needs root
//! (CI runs as root); without root it fails and says so.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::drill::{csr_pem, customer_request, metric, wait_until, with_key, DrillHome};
use common::http::{get, post_json, Server};
use common::{fixture, open_db, toml_str, Fixture};
use serde_json::json;

/// How to take a store away and give it back.
pub trait StoreOutage {
    fn name(&self) -> String;
    /// From now on the store cannot write.
    fn begin(&self);
    /// The store can write again.
    fn end(&self);
    /// Certificate records (of any status) of the customer numbered `n` in
    /// [`customer_request`]'s subjects.
    fn certificates_named(&self, n: u64) -> i64;
}

/// Customer numbers of the issuance before the outage and of the one refused during it.
const ISSUED_BEFORE_OUTAGE: u64 = 9_000_001;
const REFUSED_DURING_OUTAGE: u64 = 9_000_002;

/// The outage drill against a running `signet serve` whose store `outage` breaks.
pub fn store_outage_drill(server: &Server, officer: &str, csr: &str, outage: &dyn StoreOutage) {
    let name = outage.name();
    let issue = |n: u64| {
        post_json(
            server,
            "/v1/certificates",
            Some(officer),
            &customer_request(csr, n),
        )
    };
    let revoke = |serial: &str| {
        post_json(
            server,
            &format!("/v1/certificates/{serial}/revoke"),
            Some(officer),
            &json!({"reason": "keyCompromise"}),
        )
    };
    let before = issue(ISSUED_BEFORE_OUTAGE);
    assert_eq!(
        before.status, 201,
        "{name}: issuance before the outage: {}",
        before.body
    );
    let serial = before.json()["serial"].as_str().unwrap().to_string();
    let issued = metric(server, "signet_issuances_total");
    // Certificates only: the HSM's own count moves with the CRLs and audit checkpoints the
    // server signs in the background over what was recorded before the outage.
    let certificate_signs = metric(server, "signet_certificate_signs_total");
    assert!(
        certificate_signs >= 1.0,
        "{name}: the issuance before the outage is counted"
    );

    outage.begin();
    let r = issue(REFUSED_DURING_OUTAGE);
    assert_eq!(
        (r.status, r.code().as_str()),
        (503, "store_unavailable"),
        "{name}: issuance while the store cannot write: {}",
        r.body
    );
    let r = revoke(&serial);
    assert_eq!(
        (r.status, r.code().as_str()),
        (503, "store_unavailable"),
        "{name}: revocation while the store cannot write: {}",
        r.body
    );
    assert_eq!(metric(server, "signet_issuances_total"), issued);
    assert_eq!(
        metric(server, "signet_certificate_signs_total"),
        certificate_signs,
        "{name}: a certificate went to the HSM while the store could not write"
    );
    outage.end();

    // The refused issuance left no record either.
    assert_eq!(
        outage.certificates_named(REFUSED_DURING_OUTAGE),
        0,
        "{name}: the issuance refused during the outage left a certificate record"
    );
    assert_eq!(
        outage.certificates_named(ISSUED_BEFORE_OUTAGE),
        1,
        "{name}: the issuance before the outage has its record (the count finds records)"
    );

    // The refused revocation was not applied.
    let r = get(server, &format!("/v1/certificates/{serial}"), Some(officer));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json()["status"],
        "good",
        "{name}: a refused revocation was applied"
    );

    // Service resumes without a restart.
    let mut n = 9_000_010;
    let back = wait_until(Duration::from_secs(10), || {
        n += 1;
        issue(n).status == 201
    });
    eprintln!(
        "store outage ({name}): issuance back {} ms after the store could write again",
        back.map(|d| d.as_millis() as i64).unwrap_or(-1)
    );
    assert!(
        back.is_some(),
        "{name}: issuance did not resume after the store came back"
    );
    let r = revoke(&serial);
    assert_eq!(
        r.status, 200,
        "{name}: revocation after the outage: {}",
        r.body
    );
    assert_eq!(r.json()["status"], "revoked");
}

/// A tmpfs of a few megabytes mounted for the test (unmounted on drop).
struct SmallTmpfs {
    dir: PathBuf,
}

impl SmallTmpfs {
    fn mount(dir: PathBuf, size: &str) -> SmallTmpfs {
        let uid = Command::new("id").arg("-u").output().expect("id -u");
        assert_eq!(
            String::from_utf8_lossy(&uid.stdout).trim(),
            "0",
            "this test needs root: it mounts a small tmpfs (mount -t tmpfs) and fills it to show \
             a full store; run it as root, as CI does"
        );
        std::fs::create_dir_all(&dir).expect("mkdir tmpfs mount point");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mount -t tmpfs failed (this test needs root and a kernel that allows mounts): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallTmpfs { dir }
    }
}

impl Drop for SmallTmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

/// A full filesystem: a filler file takes every free byte; removing it gives the space back.
struct DiskFull {
    filler: PathBuf,
    db: PathBuf,
}

impl DiskFull {
    fn wal_size(&self) -> u64 {
        std::fs::metadata(self.db.with_extension("db-wal")).map_or(0, |m| m.len())
    }

    /// Empties the store's write-ahead log. The server checkpoints passively, which leaves the
    /// log file at its size for SQLite to write over; on a full filesystem those writes would
    /// still succeed, and whether an issuance met a full disk would depend on how much of the
    /// log was free. Truncated, any write must grow the file, and fails.
    fn truncate_wal(&self) {
        let conn = open_db(&self.db);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let busy: i64 = conn
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| row.get(0))
                .expect("checkpoint the store");
            if busy == 0 && self.wal_size() == 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the store's write-ahead log could not be truncated before the outage"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Appends to the filler until the filesystem has no byte left.
    fn fill(&self) {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.filler)
            .expect("open filler");
        let chunk = vec![0u8; 64 * 1024];
        while file.write_all(&chunk).is_ok() {}
        while file.write_all(&[0u8]).is_ok() {}
        let _ = file.sync_all();
    }
}

impl StoreOutage for DiskFull {
    fn name(&self) -> String {
        "SQLite on a full filesystem".into()
    }

    fn begin(&self) {
        // A background write (an audit checkpoint, a CRL) between the truncation and the last
        // byte filled may grow the log again, room a later write would reuse: then again.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            // Space first: a checkpoint may need to grow the database file.
            let _ = std::fs::remove_file(&self.filler);
            self.truncate_wal();
            self.fill();
            if self.wal_size() == 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the store's write-ahead log kept growing while the disk was filled"
            );
        }
    }

    fn end(&self) {
        std::fs::remove_file(&self.filler).expect("remove filler");
    }

    fn certificates_named(&self, n: u64) -> i64 {
        open_db(&self.db)
            .query_row(
                "SELECT COUNT(*) FROM certificates WHERE subject LIKE ?1",
                [format!("%客户{n}%")],
                |row| row.get(0),
            )
            .expect("count certificate records")
    }
}

/// A drill home whose SQLite store lives in `dir`.
fn home_with_store_in(f: &Fixture, name: &str, dir: &Path) -> (DrillHome, PathBuf) {
    let home = DrillHome::new(f, name, &[]);
    let db = dir.join("signet.db");
    std::fs::copy(&home.db, &db).expect("copy the store into the tmpfs");
    home.edit_config(|t| with_key(t, "store", "path", &toml_str(&db.to_string_lossy())));
    (home, db)
}

#[test]
fn a_full_filesystem_gets_503_store_unavailable_records_nothing_and_service_resumes_when_space_returns(
) {
    let f = fixture();
    let tmpfs = SmallTmpfs::mount(f.path("store-tmpfs"), "16m");
    let (home, db) = home_with_store_in(f, "store-full", &tmpfs.dir);
    let officer = home.officer(f, "Full disk bank");
    let server = Server::start_config(f, &home.config, &[]);
    store_outage_drill(
        &server,
        &officer,
        &csr_pem(f),
        &DiskFull {
            filler: tmpfs.dir.join("filler"),
            db,
        },
    );
    server.stop();
}

#[test]
fn a_revocation_whose_audit_event_cannot_be_appended_is_not_applied() {
    let f = fixture();
    let home = DrillHome::new(f, "audit-append-fails", &[]);
    let officer = home.officer(f, "Audit failure bank");
    let server = Server::start_config(f, &home.config, &[]);
    let csr = csr_pem(f);
    let r = post_json(
        &server,
        "/v1/certificates",
        Some(&officer),
        &customer_request(&csr, 1),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let serial = r.json()["serial"].as_str().unwrap().to_string();

    // The audit table refuses appends (as a failing audit write would).
    let conn = open_db(&home.db);
    conn.execute_batch(
        "CREATE TRIGGER audit_refuses BEFORE INSERT ON audit_events
         BEGIN SELECT RAISE(ABORT, 'audit append refused by the test'); END;",
    )
    .unwrap();
    let r = post_json(
        &server,
        &format!("/v1/certificates/{serial}/revoke"),
        Some(&officer),
        &json!({"reason": "keyCompromise"}),
    );
    assert_eq!(
        (r.status, r.code().as_str()),
        (503, "store_unavailable"),
        "{}",
        r.body
    );
    let revoked_at: Option<i64> = conn
        .query_row(
            "SELECT revoked_at FROM certificates WHERE serial = ?1",
            [&serial],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(
        revoked_at, None,
        "the revocation was applied without its audit event"
    );
    let r = get(
        &server,
        &format!("/v1/certificates/{serial}"),
        Some(&officer),
    );
    assert_eq!(r.json()["status"], "good");

    conn.execute_batch("DROP TRIGGER audit_refuses;").unwrap();
    let r = post_json(
        &server,
        &format!("/v1/certificates/{serial}/revoke"),
        Some(&officer),
        &json!({"reason": "keyCompromise"}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    server.stop();
}

/// A drill home with a bank, two of its teller-admins and a teller, served; and the id of
/// a teller-key request the first admin filed for that teller.
fn teller_key_request(f: &Fixture, name: &str) -> (DrillHome, Server, String, String) {
    let home = DrillHome::new(f, name, &[]);
    let cli = |args: &[&str]| {
        let out = f.signet_with(&home.config, &[], args);
        out.assert_ok();
        out.stdout.trim().to_string()
    };
    let bank = "Key record bank";
    cli(&["tenant", "add", bank]);
    let admin = || {
        cli(&[
            "credential",
            "add",
            "--tenant",
            bank,
            "--role",
            "teller-admin",
        ])
    };
    let (filer, approver) = (admin(), admin());
    cli(&[
        "teller",
        "add",
        "--tenant",
        bank,
        "--employee",
        "K1",
        "--name",
        "钱柜员",
    ]);
    let server = Server::start_config(f, &home.config, &[]);
    let r = post_json(
        &server,
        "/v1/teller-keys",
        Some(&filer),
        &json!({"employee_id": "K1"}),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.json()["id"].as_str().unwrap().to_string();
    (home, server, approver, id)
}

/// The second teller-admin's approval of request `id`.
fn approve_teller_request(server: &Server, approver: &str, id: &str) -> common::http::Reply {
    post_json(
        server,
        &format!("/v1/teller-requests/{id}/approve"),
        Some(approver),
        &json!({}),
    )
}

/// (serial, revocation reason, revoked) of the certificates under the teller-hsm profile,
/// oldest first.
fn teller_key_certificates(conn: &rusqlite::Connection) -> Vec<(String, Option<i64>, bool)> {
    let mut stmt = conn
        .prepare(
            "SELECT serial, revocation_reason, revoked_at IS NOT NULL FROM certificates
             WHERE profile = 'teller-hsm' AND status = 'issued' ORDER BY created_at, rowid",
        )
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn teller_request_status(conn: &rusqlite::Connection, id: &str) -> (String, Option<String>) {
    conn.query_row(
        "SELECT status, serial FROM teller_requests WHERE id = ?1",
        [id],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .unwrap()
}

const REFUSE_KEY_RECORDS: &str = "CREATE TRIGGER key_records_refused BEFORE INSERT ON signing_keys
     BEGIN SELECT RAISE(ABORT, 'key record refused by the test'); END;";

#[test]
fn a_teller_key_whose_record_cannot_be_stored_has_its_certificate_revoked_before_the_request_waits_again(
) {
    let f = fixture();
    let (home, server, approver, id) = teller_key_request(f, "key-record-fails");
    let approve = || approve_teller_request(&server, &approver, &id);
    let conn = open_db(&home.db);
    conn.execute_batch(REFUSE_KEY_RECORDS).unwrap();
    let r = approve();
    assert_eq!(
        (r.status, r.code().as_str()),
        (503, "store_unavailable"),
        "{}",
        r.body
    );
    let certs = teller_key_certificates(&conn);
    assert_eq!(certs.len(), 1, "{certs:?}");
    assert_eq!(
        (certs[0].1, certs[0].2),
        (Some(5), true),
        "the certificate no key record names is revoked (cessationOfOperation): {certs:?}"
    );
    assert_eq!(teller_request_status(&conn, &id).0, "pending");

    conn.execute_batch("DROP TRIGGER key_records_refused;")
        .unwrap();
    let r = approve();
    assert_eq!(r.status, 201, "{}", r.body);
    let certs = teller_key_certificates(&conn);
    assert_eq!(certs.len(), 2, "{certs:?}");
    assert!(certs[0].2 && !certs[1].2, "{certs:?}");
    assert_eq!(r.json()["serial"], certs[1].0.as_str(), "{}", r.body);
    assert_eq!(
        teller_request_status(&conn, &id),
        ("approved".to_string(), Some(certs[1].0.clone()))
    );
    server.stop();
}

#[test]
fn a_teller_key_certificate_that_can_be_neither_recorded_nor_revoked_keeps_its_request_approved_and_is_named(
) {
    let f = fixture();
    let (home, server, approver, id) = teller_key_request(f, "key-record-and-revocation-fail");
    let conn = open_db(&home.db);
    conn.execute_batch(REFUSE_KEY_RECORDS).unwrap();
    conn.execute_batch(
        "CREATE TRIGGER revocations_refused BEFORE UPDATE OF revoked_at ON certificates
         WHEN NEW.revoked_at IS NOT NULL
         BEGIN SELECT RAISE(ABORT, 'revocation refused by the test'); END;",
    )
    .unwrap();
    let approve = || approve_teller_request(&server, &approver, &id);
    let r = approve();
    assert_eq!(
        (r.status, r.code().as_str()),
        (500, "issued_not_recorded"),
        "{}",
        r.body
    );
    let certs = teller_key_certificates(&conn);
    assert_eq!(certs.len(), 1, "{certs:?}");
    let serial = &certs[0].0;
    assert!(
        r.body.contains(&format!("signet revoke --serial {serial}")),
        "{}",
        r.body
    );
    assert_eq!(
        teller_request_status(&conn, &id),
        ("approved".to_string(), Some(serial.clone()))
    );
    conn.execute_batch("DROP TRIGGER key_records_refused; DROP TRIGGER revocations_refused;")
        .unwrap();
    let again = approve();
    assert_eq!(again.status, 409, "{}", again.body);
    assert_eq!(teller_key_certificates(&conn).len(), 1, "certified again");
    server.stop();
}

#[test]
fn an_e_seal_whose_key_record_cannot_be_stored_has_its_certificate_revoked_before_it_is_made_again()
{
    let f = fixture();
    let home = DrillHome::new(f, "seal-record-fails", &[]);
    let seal_create = || {
        f.signet_with(
            &home.config,
            &[],
            &["seal", "create", "--tenant", "Seal bank"],
        )
    };
    f.signet_with(&home.config, &[], &["tenant", "add", "Seal bank"])
        .assert_ok();
    let conn = open_db(&home.db);
    conn.execute_batch(REFUSE_KEY_RECORDS).unwrap();
    let out = seal_create();
    assert!(
        !out.success(),
        "seal create passed with its key record refused"
    );
    let seals = |conn: &rusqlite::Connection| -> Vec<(Option<i64>, bool)> {
        let mut stmt = conn
            .prepare(
                "SELECT revocation_reason, revoked_at IS NOT NULL FROM certificates
                 WHERE profile = 'seal' AND status = 'issued' AND owner =
                   (SELECT id FROM tenants WHERE name = 'Seal bank') ORDER BY created_at, rowid",
            )
            .unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    assert_eq!(seals(&conn), vec![(Some(5), true)], "{}", out.stderr);
    conn.execute_batch("DROP TRIGGER key_records_refused;")
        .unwrap();
    seal_create().assert_ok();
    assert_eq!(seals(&conn), vec![(Some(5), true), (None, false)]);
}
