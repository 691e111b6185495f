//! The store's contract, on every engine: SQLite always, PostgreSQL when
//! `SIGNET_TEST_POSTGRES` names a server (test.sh always sets it). Each test gets a fresh
//! database; "two processes" are two independent store instances on the same database.

mod common;

use std::sync::{Arc, Barrier};
use std::thread;

use signet::audit::{AuditEvent, AuditRecord, GENESIS};
use signet::ca::IssuerId;
use signet::store::{
    CertRecord, CertStatus, NewCrl, PinAttempt, PinReservation, PostgresOptions, PostgresStore,
    ReplayKeys, RequestStatus, RevocationRecord, SigningKeyRecord, SqliteStore, Store, StoreError,
    Succeeds, TellerRequestRecord, TenantRecord,
};

#[derive(Clone, Copy, Debug)]
enum Engine {
    Sqlite,
    Postgres,
}

/// A fresh, empty database of one engine; `open` gives another instance on it.
struct Db {
    engine: Engine,
    sqlite: Option<std::path::PathBuf>,
    postgres: Option<String>,
}

impl Db {
    fn open(&self) -> Arc<dyn Store> {
        match self.engine {
            Engine::Sqlite => Arc::new(SqliteStore::open(self.sqlite.as_ref().unwrap()).unwrap()),
            Engine::Postgres => Arc::new(
                PostgresStore::open(PostgresOptions {
                    url: self.postgres.clone().unwrap(),
                    password: None,
                    tls_ca_file: None,
                    pool: 8,
                    connect_timeout: std::time::Duration::from_secs(5),
                    lock_timeout: std::time::Duration::from_secs(30),
                })
                .unwrap(),
            ),
        }
    }
}

/// One fresh database per engine under test.
fn databases(test: &str) -> Vec<Db> {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("store-tests")
        .join(format!("{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut out = vec![Db {
        engine: Engine::Sqlite,
        sqlite: Some(dir.join("signet.db")),
        postgres: None,
    }];
    if let Some(server) = common::test_postgres() {
        let url = common::fresh_database(&server, &format!("store_{test}")).unwrap();
        out.push(Db {
            engine: Engine::Postgres,
            sqlite: None,
            postgres: Some(url),
        });
    }
    out
}

fn event(action: &str, object: &str) -> AuditEvent {
    AuditEvent::new("test", action, object, serde_json::json!({}))
}

fn pending(serial: &str, issuer: IssuerId, shard: u32) -> CertRecord {
    CertRecord {
        serial: serial.into(),
        issuer,
        profile: "customer".into(),
        status: CertStatus::Pending,
        subject: format!("CN={serial}"),
        subject_serial_digest: None,
        shard,
        not_before: 1_000,
        not_after: 2_000,
        tbs_der: vec![0x30, 0x00],
        cert_der: None,
        created_at: 1_000,
        revocation: None,
        owner: None,
        key_id: Some(format!("kid-{serial}")),
    }
}

fn issue(store: &dyn Store, serial: &str) {
    store
        .record_pending(
            &pending(serial, IssuerId::Customer, 0),
            &event("certificate.record", serial),
        )
        .unwrap();
    store
        .complete_issuance(
            serial,
            format!("der-{serial}").as_bytes(),
            1_001,
            &event("certificate.issue", serial),
        )
        .unwrap();
}

/// The chain links: seq 1.., each prev_hash the hash before it, each hash recomputes.
fn assert_chain_intact(events: &[AuditRecord]) {
    let mut prev = GENESIS.to_vec();
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.seq, i as u64 + 1, "gap or duplicate at {}", e.seq);
        assert_eq!(
            e.prev_hash, prev,
            "event {} does not link to its predecessor",
            e.seq
        );
        assert_eq!(
            e.recompute().as_slice(),
            e.hash.as_slice(),
            "event {}",
            e.seq
        );
        prev = e.hash.clone();
    }
}

#[test]
fn postgres_is_under_test_in_this_run() {
    assert!(
        common::test_postgres().is_some(),
        "SIGNET_TEST_POSTGRES is not set, so the PostgreSQL store is not being tested: \
         run the suite with ./test.sh, which starts a local PostgreSQL and sets it"
    );
}

#[test]
fn a_serial_is_recorded_once_whatever_the_issuer() {
    for db in databases("serial_once") {
        let s = db.open();
        s.record_pending(&pending("0a", IssuerId::Customer, 0), &event("r", "0a"))
            .unwrap();
        let again = s.record_pending(&pending("0a", IssuerId::Teller, 0), &event("r", "0a"));
        assert!(
            matches!(again, Err(StoreError::SerialTaken(ref x)) if x == "0a"),
            "{:?}: {again:?}",
            db.engine
        );
    }
}

#[test]
fn a_pending_record_completes_once_and_a_completed_one_cannot_be_voided() {
    for db in databases("complete_once") {
        let s = db.open();
        issue(&*s, "0b");
        let rec = s.certificate("0b").unwrap().unwrap();
        assert_eq!(rec.status, CertStatus::Issued, "{:?}", db.engine);
        assert_eq!(rec.cert_der.as_deref(), Some(&b"der-0b"[..]));
        assert!(matches!(
            s.complete_issuance("0b", b"other", 1_002, &event("i", "0b")),
            Err(StoreError::Conflict(_))
        ));
        assert!(matches!(
            s.void_pending("0b", 1_002, &event("v", "0b")),
            Err(StoreError::Conflict(_))
        ));
        let thumb = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b"der-0b"));
        assert_eq!(
            s.certificate_by_thumbprint(&thumb)
                .unwrap()
                .map(|c| c.serial),
            Some("0b".into())
        );
        assert_eq!(
            s.certificate_by_key_id("kid-0b").unwrap().map(|c| c.serial),
            Some("0b".into())
        );
    }
}

#[test]
fn an_interrupted_issuance_is_voided_and_listed_as_revoked() {
    for db in databases("void") {
        let s = db.open();
        s.record_pending(&pending("0c", IssuerId::Customer, 0), &event("r", "0c"))
            .unwrap();
        let stale = s.pending_before(1_000).unwrap();
        assert_eq!(stale.len(), 1, "{:?}", db.engine);
        s.void_pending("0c", 5_000, &event("certificate.void", "0c"))
            .unwrap();
        assert_eq!(
            s.certificate("0c").unwrap().unwrap().status,
            CertStatus::Void
        );
        let revoked = s.revoked(IssuerId::Customer, Some(0)).unwrap();
        assert_eq!(revoked.len(), 1);
        assert_eq!(revoked[0].revocation.revoked_at, 5_000);
        assert!(s.pending_before(10_000).unwrap().is_empty());
    }
}

#[test]
fn a_hold_can_become_a_revocation_or_be_released_but_a_revocation_is_final() {
    const HOLD: u8 = 6;
    for db in databases("hold") {
        let s = db.open();
        issue(&*s, "0d");
        let hold = RevocationRecord {
            revoked_at: 2_000,
            reason_code: Some(HOLD),
            invalidity_date: None,
        };
        s.revoke("0d", hold, &event("certificate.hold", "0d"))
            .unwrap();
        s.release("0d", 2_001, &event("certificate.release", "0d"))
            .unwrap();
        assert!(s.certificate("0d").unwrap().unwrap().revocation.is_none());
        s.revoke("0d", hold, &event("certificate.hold", "0d"))
            .unwrap();
        let keycompromise = RevocationRecord {
            revoked_at: 2_002,
            reason_code: Some(1),
            invalidity_date: Some(1_500),
        };
        s.revoke("0d", keycompromise, &event("certificate.revoke", "0d"))
            .unwrap();
        assert_eq!(
            s.certificate("0d").unwrap().unwrap().revocation,
            Some(keycompromise),
            "{:?}",
            db.engine
        );
        assert!(matches!(
            s.revoke("0d", keycompromise, &event("certificate.revoke", "0d")),
            Err(StoreError::Conflict(_))
        ));
        assert!(matches!(
            s.release("0d", 2_003, &event("certificate.release", "0d")),
            Err(StoreError::Conflict(_))
        ));
        assert!(matches!(
            s.revoke("ff", keycompromise, &event("certificate.revoke", "ff")),
            Err(StoreError::NotFound(_))
        ));
    }
}

#[test]
fn revoked_entries_are_per_issuer_and_shard() {
    for db in databases("shards") {
        let s = db.open();
        for (serial, issuer, shard) in [
            ("01", IssuerId::Customer, 0),
            ("02", IssuerId::Customer, 1),
            ("03", IssuerId::Teller, 0),
        ] {
            s.record_pending(&pending(serial, issuer, shard), &event("r", serial))
                .unwrap();
            s.void_pending(serial, 3_000, &event("certificate.void", serial))
                .unwrap();
        }
        let serials = |i, sh| -> Vec<String> {
            s.revoked(i, sh)
                .unwrap()
                .into_iter()
                .map(|e| e.serial)
                .collect()
        };
        assert_eq!(
            serials(IssuerId::Customer, Some(0)),
            ["01"],
            "{:?}",
            db.engine
        );
        assert_eq!(serials(IssuerId::Customer, Some(1)), ["02"]);
        assert_eq!(serials(IssuerId::Customer, None), ["01", "02"]);
        assert_eq!(serials(IssuerId::Teller, None), ["03"]);
        // The streaming walk gives the same entries in the same order.
        for (issuer, shard) in [(IssuerId::Customer, None), (IssuerId::Customer, Some(1))] {
            let mut walked = Vec::new();
            let n = s
                .each_revoked(issuer, shard, &mut |e| {
                    walked.push(e.clone());
                    Ok(())
                })
                .unwrap();
            assert_eq!(walked, s.revoked(issuer, shard).unwrap(), "{:?}", db.engine);
            assert_eq!(n, walked.len() as u64);
        }
    }
}

#[test]
fn a_status_change_moves_the_crl_epoch_of_its_own_issuer_and_shard_only() {
    for db in databases("scope_epochs") {
        let s = db.open();
        let epoch = |issuer, shard| s.crl_scope_epoch(issuer, shard).unwrap();
        let scopes = [
            (IssuerId::Root, None),
            (IssuerId::Customer, None),
            (IssuerId::Customer, Some(0)),
            (IssuerId::Customer, Some(1)),
            (IssuerId::Teller, None),
        ];
        let before: Vec<u64> = scopes.iter().map(|&(i, sh)| epoch(i, sh)).collect();
        assert_eq!(before, [0; 5], "{:?}", db.engine);

        // A void in customer shard 1: its shard and its issuer move, to the event's seq.
        s.record_pending(&pending("31", IssuerId::Customer, 1), &event("r", "31"))
            .unwrap();
        let void = s
            .void_pending("31", 3_000, &event("certificate.void", "31"))
            .unwrap();
        let after: Vec<u64> = scopes.iter().map(|&(i, sh)| epoch(i, sh)).collect();
        assert_eq!(after, [0, void.seq, 0, void.seq, 0], "{:?}", db.engine);

        // A hold, then its release, of a teller certificate: the teller scope only, each time.
        s.record_pending(&pending("32", IssuerId::Teller, 0), &event("r", "32"))
            .unwrap();
        s.complete_issuance("32", b"der-32", 3_001, &event("i", "32"))
            .unwrap();
        let hold = RevocationRecord {
            revoked_at: 3_002,
            reason_code: Some(6),
            invalidity_date: None,
        };
        let held = s
            .revoke("32", hold, &event("certificate.hold", "32"))
            .unwrap();
        assert_eq!(epoch(IssuerId::Teller, None), held.seq, "{:?}", db.engine);
        let released = s
            .release("32", 3_003, &event("certificate.release", "32"))
            .unwrap();
        let after: Vec<u64> = scopes.iter().map(|&(i, sh)| epoch(i, sh)).collect();
        assert_eq!(after, [0, void.seq, 0, void.seq, released.seq]);

        // A revocation in customer shard 0: the issuer's whole-CA scope takes the newest.
        s.record_pending(&pending("33", IssuerId::Customer, 0), &event("r", "33"))
            .unwrap();
        s.complete_issuance("33", b"der-33", 3_004, &event("i", "33"))
            .unwrap();
        let revoked = s
            .revoke(
                "33",
                RevocationRecord {
                    revoked_at: 3_005,
                    reason_code: Some(1),
                    invalidity_date: None,
                },
                &event("certificate.revoke", "33"),
            )
            .unwrap();
        let after: Vec<u64> = scopes.iter().map(|&(i, sh)| epoch(i, sh)).collect();
        assert_eq!(
            after,
            [0, revoked.seq, revoked.seq, void.seq, released.seq],
            "{:?}",
            db.engine
        );
        // The whole store's epoch is still the newest change of any scope.
        assert_eq!(s.status_epoch().unwrap(), revoked.seq);
    }
}

/// A CRL of 4000..5000 listing the changes up to status epoch 7.
fn new_crl(issuer: IssuerId, shard: Option<u32>) -> NewCrl {
    NewCrl {
        issuer,
        shard,
        this_update: 4_000,
        next_update: 5_000,
        status_epoch: 7,
        succeeds: Succeeds::Newest,
    }
}

#[test]
fn a_crl_made_from_older_records_than_the_newest_is_not_recorded() {
    for db in databases("crl_older") {
        let s = db.open();
        // What a maker that read the store before another process's CRL would record: it
        // would succeed a CRL listing a change it does not (RFC 5280 5.2.3).
        let record = |status_epoch: u64, this_update: i64| {
            let crl = NewCrl {
                status_epoch,
                this_update,
                ..new_crl(IssuerId::Customer, None)
            };
            s.record_crl(
                &crl,
                &mut |n| Ok(n.to_be_bytes().to_vec()),
                &event("crl.issue", "customer"),
            )
            .unwrap()
            .map(|(n, _)| n)
        };
        // Two status changes of the scope: the newer one's event is its epoch `now`.
        issue(&*s, "31");
        issue(&*s, "32");
        for serial in ["31", "32"] {
            let revocation = RevocationRecord {
                revoked_at: 3_000,
                reason_code: Some(1),
                invalidity_date: None,
            };
            s.revoke(serial, revocation, &event("certificate.revoke", serial))
                .unwrap();
        }
        let now = s.crl_scope_epoch(IssuerId::Customer, None).unwrap();
        let before = now - 1; // a maker that read the store before the second change
        assert_eq!(record(now, 4_000), Some(1), "{:?}", db.engine);
        assert_eq!(
            record(before, 4_100),
            None,
            "{:?}: older records",
            db.engine
        );
        assert_eq!(record(now, 4_000), Some(2), "{:?}: as new", db.engine);
        // A clock stepped back does not stop CRLs.
        assert_eq!(record(now, 3_999), Some(3), "{:?}", db.engine);
    }
}

#[test]
fn crl_numbers_are_one_gapless_sequence_per_scope_across_processes() {
    for db in databases("crl_numbers") {
        let (a, b) = (db.open(), db.open());
        let barrier = Arc::new(Barrier::new(4));
        let handles: Vec<_> = [a.clone(), b.clone(), a, b]
            .into_iter()
            .map(|s| {
                let barrier = barrier.clone();
                thread::spawn(move || {
                    barrier.wait();
                    (0..10)
                        .map(|_| {
                            let (n, _) = s
                                .record_crl(
                                    &new_crl(IssuerId::Customer, Some(0)),
                                    &mut |n| Ok(n.to_be_bytes().to_vec()),
                                    &event("crl.issue", "customer"),
                                )
                                .unwrap()
                                .unwrap();
                            s.complete_crl(IssuerId::Customer, Some(0), n, &n.to_be_bytes())
                                .unwrap();
                            n
                        })
                        .collect::<Vec<u64>>()
                })
            })
            .collect();
        let mut numbers: Vec<u64> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        numbers.sort_unstable();
        assert_eq!(numbers, (1..=40).collect::<Vec<u64>>(), "{:?}", db.engine);
        let s = db.open();
        let latest = s.latest_crl(IssuerId::Customer, Some(0)).unwrap().unwrap();
        assert_eq!(latest.number, 40);
        assert!(
            latest.crl_der.is_some(),
            "the latest CRL comes with its DER"
        );
        let info = s
            .latest_crl_info(IssuerId::Customer, Some(0))
            .unwrap()
            .unwrap();
        assert_eq!(
            (
                info.number,
                info.this_update,
                info.next_update,
                info.status_epoch,
                info.crl_der
            ),
            (40, latest.this_update, latest.next_update, Some(7), None),
            "the info is the same CRL without its DER"
        );
        assert_eq!(latest.status_epoch, Some(7), "{:?}", db.engine);
        // Another scope starts its own sequence.
        let (n, _) = s
            .record_crl(
                &new_crl(IssuerId::Root, None),
                &mut |n| Ok(vec![n as u8]),
                &event("crl.issue", "root"),
            )
            .unwrap()
            .unwrap();
        assert_eq!(n, 1);
    }
}

/// Two processes that find a scope's CRL due at the same moment each name the CRL they
/// judged: the first records the successor, the second finds another in its place and records
/// nothing (no number taken, nothing audited), and may then succeed the new one.
#[test]
fn a_crl_is_not_recorded_once_another_process_succeeded_the_one_it_judged() {
    for db in databases("crl_succeeds") {
        let (a, b) = (db.open(), db.open());
        let record = |s: &Arc<dyn Store>, succeeds: Succeeds| {
            let crl = NewCrl {
                succeeds,
                ..new_crl(IssuerId::Teller, None)
            };
            s.record_crl(
                &crl,
                &mut |n| Ok(vec![n as u8]),
                &event("crl.generate", "teller"),
            )
            .unwrap()
            .map(|(n, _)| n)
        };
        assert_eq!(record(&a, Succeeds::Only(None)), Some(1), "{:?}", db.engine);
        let head = b.audit_head().unwrap().map(|h| h.seq);
        assert_eq!(record(&b, Succeeds::Only(None)), None, "{:?}", db.engine);
        assert_eq!(
            b.audit_head().unwrap().map(|h| h.seq),
            head,
            "nothing audited"
        );
        // Recorded, not yet signed: it is the newest all the same, and the one to succeed (its
        // maker may still be signing it; or, once it is old, it was abandoned).
        let newest = |s: &Arc<dyn Store>| s.newest_crl_number(IssuerId::Teller, None).unwrap();
        assert_eq!(newest(&b).map(|n| (n.number, n.signed)), Some((1, false)));
        assert!(b.latest_crl_info(IssuerId::Teller, None).unwrap().is_none());
        a.complete_crl(IssuerId::Teller, None, 1, b"signed")
            .unwrap();
        assert_eq!(newest(&b).map(|n| (n.number, n.signed)), Some((1, true)));
        assert_eq!(record(&b, Succeeds::Only(Some(1))), Some(2));
        assert_eq!(record(&a, Succeeds::Only(Some(1))), None);
        assert_eq!(newest(&a).map(|n| (n.number, n.signed)), Some((2, false)));
        // An operator's CRL follows whatever is newest.
        assert_eq!(record(&a, Succeeds::Newest), Some(3));
        // Each scope judges its own sequence.
        let crl = NewCrl {
            succeeds: Succeeds::Only(None),
            ..new_crl(IssuerId::Customer, None)
        };
        let other = a
            .record_crl(
                &crl,
                &mut |n| Ok(vec![n as u8]),
                &event("crl.generate", "customer"),
            )
            .unwrap();
        assert_eq!(other.map(|(n, _)| n), Some(1));
    }
}

#[test]
fn concurrent_writers_in_two_processes_leave_one_intact_audit_chain() {
    for db in databases("audit_chain") {
        let (a, b) = (db.open(), db.open());
        let barrier = Arc::new(Barrier::new(6));
        let handles: Vec<_> = (0..6)
            .map(|t| {
                let s = if t % 2 == 0 { a.clone() } else { b.clone() };
                let barrier = barrier.clone();
                thread::spawn(move || {
                    barrier.wait();
                    for i in 0..15 {
                        let serial = format!("{t:02x}{i:02x}");
                        if i % 3 == 0 {
                            s.append_audit(1_000, &event("note", &serial)).unwrap();
                        } else {
                            issue(&*s, &serial);
                        }
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let events = db.open().audit_events(0).unwrap();
        // 6 threads x (5 notes + 10 issuances x 2 events)
        assert_eq!(events.len(), 6 * (5 + 10 * 2), "{:?}", db.engine);
        assert_chain_intact(&events);
        assert_eq!(
            db.open().audit_head().unwrap().map(|h| h.seq),
            Some(events.len() as u64)
        );
    }
}

#[test]
fn the_replay_guard_admits_an_instruction_once_across_processes() {
    for db in databases("replay") {
        let (a, b) = (db.open(), db.open());
        let keys = ReplayKeys {
            signer: "spki".into(),
            digest: "d1".into(),
            instruction_id: Some("PAY-1".into()),
        };
        let barrier = Arc::new(Barrier::new(8));
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let s = if t % 2 == 0 { a.clone() } else { b.clone() };
                let (barrier, keys) = (barrier.clone(), keys.clone());
                thread::spawn(move || {
                    barrier.wait();
                    s.record_verification(Some(&keys), 10_000 + t, 3_600, &|_| event("verify", "x"))
                        .unwrap()
                })
            })
            .collect();
        let firsts = handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .filter(Option::is_none)
            .count();
        assert_eq!(
            firsts, 1,
            "{:?}: exactly one verification is the first",
            db.engine
        );
        // The same id with other content is a replay too; after the window it is new again.
        let other = ReplayKeys {
            digest: "d2".into(),
            ..keys.clone()
        };
        assert!(a
            .record_verification(Some(&other), 10_100, 3_600, &|_| event("verify", "x"))
            .unwrap()
            .is_some());
        assert!(b
            .record_verification(Some(&keys), 20_000, 3_600, &|_| event("verify", "x"))
            .unwrap()
            .is_none());
    }
}

#[test]
fn replay_keys_seen_before_a_time_are_forgotten_oldest_first_each_pass_audited() {
    for db in databases("forget_replay") {
        let s = db.open();
        let keys = |n: i64| ReplayKeys {
            signer: "spki".into(),
            digest: format!("d{n}"),
            instruction_id: Some(format!("PAY-{n}")),
        };
        let verify = |n: i64, at: i64| {
            s.record_verification(Some(&keys(n)), at, 3_600, &|_| event("verify", "x"))
                .unwrap()
        };
        for n in 0..5 {
            assert_eq!(verify(n, 1_000 + n), None);
        }
        let head = s.audit_head().unwrap().unwrap().seq;
        let forget = || {
            s.forget_replay_keys(1_003, 2, 9_000, &|k| event("replay.forget", &k.to_string()))
                .unwrap()
                .map_or(0, |(keys, audit)| {
                    assert_eq!(audit.object, keys.to_string(), "its own event");
                    keys
                })
        };
        // Keys 0-2 were first seen before 1,003; at most two of each kind go per pass.
        assert_eq!(forget(), 4, "{:?}: keys 0 and 1, digest and id", db.engine);
        assert_eq!(
            verify(2, 1_010),
            Some(1_002),
            "{:?}: the oldest went first; key 2 is still remembered",
            db.engine
        );
        assert_eq!(forget(), 2, "{:?}: key 2", db.engine);
        assert_eq!(forget(), 0, "{:?}: none left that old", db.engine);
        let events = s.audit_events(head).unwrap();
        let passes: Vec<_> = events
            .iter()
            .filter(|e| e.action == "replay.forget")
            .map(|e| (e.action.as_str(), e.object.as_str(), e.at))
            .collect();
        assert_eq!(
            passes,
            [("replay.forget", "4", 9_000), ("replay.forget", "2", 9_000)],
            "{:?}: one event per pass that forgot something",
            db.engine
        );
        assert_chain_intact(&s.audit_events(0).unwrap());
        // Inside the window a forgotten key is new again; the ones kept (first seen at 1,003
        // and later) are still replays.
        assert_eq!(verify(0, 1_010), None, "{:?}", db.engine);
        assert_eq!(verify(2, 1_011), None, "{:?}", db.engine);
        assert_eq!(verify(3, 1_010), Some(1_003), "{:?}", db.engine);
        assert_eq!(verify(4, 1_010), Some(1_004), "{:?}", db.engine);
    }
}

/// Adds tenant `t1` to `store`.
fn add_bank(store: &Arc<dyn Store>) {
    let tenant = TenantRecord {
        id: "t1".into(),
        name: "Bank".into(),
        created_at: 1,
    };
    store
        .add_tenant(&tenant, &event("tenant.add", "t1"))
        .unwrap();
}

/// Files a pending certificate request `id` of tenant `t1`, by a credential of `holder`, made
/// at 10 and expiring at 100.
fn file_teller_request(store: &Arc<dyn Store>, id: &str, holder: Option<&str>) {
    file_teller_request_at(store, id, holder, 10);
}

fn file_teller_request_at(store: &Arc<dyn Store>, id: &str, holder: Option<&str>, created_at: i64) {
    let request = TellerRequestRecord {
        id: id.into(),
        tenant_id: "t1".into(),
        requested_by: "tls-0123456789abcdef".into(),
        requested_by_holder: holder.map(str::to_string),
        csr: b"csr".to_vec(),
        subject: "CN=T".into(),
        status: RequestStatus::Pending,
        created_at,
        expires_at: created_at + 90,
        decided_by: None,
        decided_at: None,
        decision_reason: None,
        serial: None,
        kind: "certificate".into(),
        teller_id: None,
    };
    store
        .add_teller_request(&request, &event("teller_request.submit", id))
        .unwrap();
}

/// The two-person rule compares the approver with the holder the filer had when it filed (a
/// certificate-mapped filer's holder lives in the config, not the store).
#[test]
fn a_teller_request_keeps_the_holder_of_whoever_filed_it() {
    for db in databases("teller_request_holder") {
        let store = db.open();
        add_bank(&store);
        for (id, holder) in [("treq_1", Some("e7001")), ("treq_2", None)] {
            file_teller_request(&store, id, holder);
            let read = store.teller_request(id).unwrap().unwrap();
            assert_eq!(
                (
                    read.requested_by.as_str(),
                    read.requested_by_holder.as_deref()
                ),
                ("tls-0123456789abcdef", holder),
                "{:?}",
                db.engine
            );
        }
    }
}

/// An approved request whose issuance failed waits again, and the audit log says so; a request
/// that is not approved, or already has its serial, is left as it is and logs nothing.
#[test]
fn a_teller_request_reopened_after_a_failed_issuance_is_audited() {
    for db in databases("teller_request_reopen") {
        let store = db.open();
        add_bank(&store);
        file_teller_request(&store, "treq_1", None);
        let reopens = |s: &Arc<dyn Store>| {
            s.audit_events(0)
                .unwrap()
                .iter()
                .filter(|e| e.action == "teller_request.reopen")
                .count()
        };
        // Pending: nothing to reopen.
        let reopen = event("teller_request.reopen", "treq_1");
        store.reopen_teller_request("treq_1", 20, &reopen).unwrap();
        assert_eq!(reopens(&store), 0, "{:?}", db.engine);
        store
            .decide_teller_request(
                "treq_1",
                RequestStatus::Approved,
                None,
                "cred_2",
                20,
                &event("teller_request.approve", "treq_1"),
            )
            .unwrap();
        store.reopen_teller_request("treq_1", 21, &reopen).unwrap();
        let read = store.teller_request("treq_1").unwrap().unwrap();
        assert_eq!(read.status, RequestStatus::Pending, "{:?}", db.engine);
        assert_eq!(reopens(&store), 1, "{:?}", db.engine);
        assert_chain_intact(&store.audit_events(0).unwrap());
    }
}

/// A rejection keeps its reason and its decider, and only a pending request is rejected.
#[test]
fn a_rejected_teller_request_keeps_its_reason() {
    for db in databases("teller_request_reject") {
        let store = db.open();
        add_bank(&store);
        file_teller_request(&store, "treq_1", None);
        let reject = |at: i64| {
            store.decide_teller_request(
                "treq_1",
                RequestStatus::Rejected,
                Some("wrong branch"),
                "cred_2",
                at,
                &event("teller_request.reject", "treq_1"),
            )
        };
        reject(20).unwrap();
        let read = store.teller_request("treq_1").unwrap().unwrap();
        assert_eq!(
            (
                read.status,
                read.decision_reason.as_deref(),
                read.decided_by.as_deref(),
                read.decided_at
            ),
            (
                RequestStatus::Rejected,
                Some("wrong branch"),
                Some("cred_2"),
                Some(20)
            ),
            "{:?}",
            db.engine
        );
        assert!(
            matches!(reject(21), Err(StoreError::Conflict(_))),
            "{:?}",
            db.engine
        );
        assert_chain_intact(&store.audit_events(0).unwrap());
    }
}

/// A bank's requests newest first; by status as it stands at the time given (a pending
/// request past its expiry is expired); never another bank's.
#[test]
fn teller_requests_are_listed_by_bank_and_status_at_a_time() {
    for db in databases("teller_request_list") {
        let store = db.open();
        add_bank(&store);
        store
            .add_tenant(
                &TenantRecord {
                    id: "t2".into(),
                    name: "Other Bank".into(),
                    created_at: 1,
                },
                &event("tenant.add", "t2"),
            )
            .unwrap();
        // Made at 10, 20, 30; each expires 90 seconds after.
        for (i, id) in ["treq_a", "treq_b", "treq_c"].into_iter().enumerate() {
            file_teller_request_at(&store, id, None, 10 * (i as i64 + 1));
        }
        store
            .decide_teller_request(
                "treq_b",
                RequestStatus::Rejected,
                Some("no"),
                "cred_2",
                40,
                &event("teller_request.reject", "treq_b"),
            )
            .unwrap();
        let ids = |tenant: &str, status: Option<RequestStatus>, now: i64, limit: u32| {
            store
                .teller_requests(tenant, status, now, limit)
                .unwrap()
                .into_iter()
                .map(|r| r.id)
                .collect::<Vec<_>>()
        };
        let e = db.engine;
        assert_eq!(
            ids("t1", None, 50, 10),
            ["treq_c", "treq_b", "treq_a"],
            "{e:?}"
        );
        assert_eq!(ids("t1", None, 50, 2), ["treq_c", "treq_b"], "{e:?}");
        assert_eq!(
            ids("t1", Some(RequestStatus::Pending), 50, 10),
            ["treq_c", "treq_a"],
            "{e:?}"
        );
        assert_eq!(
            ids("t1", Some(RequestStatus::Rejected), 50, 10),
            ["treq_b"],
            "{e:?}"
        );
        // At 100, treq_a (expiring at 100) is expired though still recorded pending.
        assert_eq!(
            ids("t1", Some(RequestStatus::Pending), 100, 10),
            ["treq_c"],
            "{e:?}"
        );
        assert_eq!(
            ids("t1", Some(RequestStatus::Expired), 100, 10),
            ["treq_a"],
            "{e:?}"
        );
        assert!(ids("t2", None, 50, 10).is_empty(), "{e:?}");
        // Of two filed in one second, the later is listed first.
        file_teller_request_at(&store, "treq_e", None, 60);
        file_teller_request_at(&store, "treq_d", None, 60);
        assert_eq!(ids("t1", None, 60, 2), ["treq_d", "treq_e"], "{e:?}");
    }
}

#[test]
fn concurrent_wrong_pins_cannot_exceed_the_limit() {
    for db in databases("pins") {
        let s = db.open();
        add_bank(&s);
        s.add_signing_key(
            &SigningKeyRecord {
                id: "k1".into(),
                tenant_id: "t1".into(),
                kind: "seal".into(),
                teller_id: None,
                key_label: "seal-k1".into(),
                certificate_serial: "01".into(),
                pin_hash: None,
                activation_hash: None,
                failed_attempts: 0,
                locked: false,
                created_at: 1,
            },
            &event("key.add", "k1"),
        )
        .unwrap();
        let other = db.open();
        let barrier = Arc::new(Barrier::new(12));
        let handles: Vec<_> = (0..12)
            .map(|t| {
                let s = if t % 2 == 0 { s.clone() } else { other.clone() };
                let barrier = barrier.clone();
                thread::spawn(move || {
                    barrier.wait();
                    s.reserve_pin_attempt("k1", 5, 2, &event("signing_key.lock", "k1"))
                        .unwrap()
                })
            })
            .collect();
        let outcomes: Vec<PinReservation> =
            handles.into_iter().map(|h| h.join().unwrap()).collect();
        let admitted = outcomes
            .iter()
            .filter(|r| **r == PinReservation::Reserved)
            .count();
        assert_eq!(admitted, 5, "{:?}", db.engine);
        // Of the seven refused, exactly one locked the key, and recorded it.
        let locks: Vec<&AuditRecord> = outcomes
            .iter()
            .filter_map(|r| match r {
                PinReservation::Locked(Some(rec)) => Some(rec),
                _ => None,
            })
            .collect();
        assert_eq!(locks.len(), 1, "{:?}", db.engine);
        assert_eq!(locks[0].action, "signing_key.lock");
        let key = s.signing_key("k1").unwrap().unwrap();
        assert!(key.locked);
        assert_eq!(key.failed_attempts, 5);
        assert_one_lock_event(&s, db.engine);
    }
}

#[test]
fn the_wrong_pin_that_reaches_the_limit_locks_the_key_and_records_both_in_one_transaction() {
    for db in databases("pin_lock") {
        let s = db.open();
        add_bank(&s);
        s.add_signing_key(&key_with_pin("k2"), &event("key.add", "k2"))
            .unwrap();
        let lock = event("signing_key.lock", "k2");
        for attempt in 1..=3 {
            assert_eq!(
                s.reserve_pin_attempt("k2", 3, 2, &lock).unwrap(),
                PinReservation::Reserved
            );
            let outcome = s
                .pin_attempt(
                    "k2",
                    PinAttempt::Wrong { max: 3 },
                    2,
                    &event("signing_key.pin_wrong", "k2"),
                    &lock,
                )
                .unwrap();
            let actions: Vec<&str> = outcome.records.iter().map(|r| r.action.as_str()).collect();
            if attempt < 3 {
                assert_eq!(actions, ["signing_key.pin_wrong"], "{:?}", db.engine);
                assert!(!outcome.key.locked);
            } else {
                assert_eq!(
                    actions,
                    ["signing_key.pin_wrong", "signing_key.lock"],
                    "{:?}",
                    db.engine
                );
                assert!(outcome.key.locked);
            }
        }
        // Already locked: refused, and not locked (nor recorded) a second time.
        assert_eq!(
            s.reserve_pin_attempt("k2", 3, 2, &lock).unwrap(),
            PinReservation::Locked(None),
            "{:?}",
            db.engine
        );
        assert_one_lock_event(&s, db.engine);
    }
}

#[test]
fn a_right_pin_after_wrong_ones_starts_the_count_again_and_locks_nothing() {
    for db in databases("pin_right") {
        let s = db.open();
        add_bank(&s);
        s.add_signing_key(&key_with_pin("k3"), &event("key.add", "k3"))
            .unwrap();
        let lock = event("signing_key.lock", "k3");
        for _ in 0..2 {
            s.reserve_pin_attempt("k3", 3, 2, &lock).unwrap();
            s.pin_attempt(
                "k3",
                PinAttempt::Wrong { max: 3 },
                2,
                &event("signing_key.pin_wrong", "k3"),
                &lock,
            )
            .unwrap();
        }
        assert_eq!(
            s.reserve_pin_attempt("k3", 3, 2, &lock).unwrap(),
            PinReservation::Reserved
        );
        let outcome = s
            .pin_attempt(
                "k3",
                PinAttempt::Correct,
                2,
                &event("signing_key.pin_ok", "k3"),
                &lock,
            )
            .unwrap();
        assert_eq!(outcome.records.len(), 1, "{:?}", db.engine);
        assert_eq!(outcome.records[0].action, "signing_key.pin_ok");
        assert_eq!(
            (outcome.key.failed_attempts, outcome.key.locked),
            (0, false)
        );
    }
}

#[test]
fn a_pin_hash_is_replaced_only_while_it_is_the_one_read_and_with_its_event() {
    for db in databases("pin_rebind") {
        let s = db.open();
        add_bank(&s);
        s.add_signing_key(&key_with_pin("k4"), &event("key.add", "k4"))
            .unwrap();
        let with_pins: Vec<String> = s
            .signing_keys_with_pins()
            .unwrap()
            .into_iter()
            .map(|k| k.id)
            .collect();
        assert_eq!(with_pins, ["k4"], "{:?}", db.engine);
        let bound = event("signing_key.pin_bound", "k4");
        // A hash changed since it was read (here: not "old") is left as it is, with no event.
        assert_eq!(
            s.replace_pin_hash("k4", "old", "new", 2, &bound).unwrap(),
            None
        );
        let rec = s.replace_pin_hash("k4", "x", "y", 2, &bound).unwrap();
        assert_eq!(
            rec.map(|r| r.action).as_deref(),
            Some("signing_key.pin_bound")
        );
        let key = s.signing_key("k4").unwrap().unwrap();
        assert_eq!(key.pin_hash.as_deref(), Some("y"), "{:?}", db.engine);
        assert_eq!(s.replace_pin_hash("k4", "x", "z", 2, &bound).unwrap(), None);
        assert_chain_intact(&s.audit_events(0).unwrap());
    }
}

/// The log holds exactly one lock event, and its chain is whole.
fn assert_one_lock_event(s: &Arc<dyn Store>, engine: Engine) {
    let events = s.audit_events(0).unwrap();
    let locks = events
        .iter()
        .filter(|e| e.action == "signing_key.lock")
        .count();
    assert_eq!(locks, 1, "{engine:?}");
    assert_chain_intact(&events);
}

/// A key of bank t1 with a PIN (the store counts attempts the same for any kind; a seal
/// needs no teller row).
fn key_with_pin(id: &str) -> SigningKeyRecord {
    SigningKeyRecord {
        id: id.into(),
        tenant_id: "t1".into(),
        kind: "seal".into(),
        teller_id: None,
        key_label: format!("key-{id}"),
        certificate_serial: "01".into(),
        pin_hash: Some("x".into()),
        activation_hash: None,
        failed_attempts: 0,
        locked: false,
        created_at: 1,
    }
}

#[test]
fn events_missing_for_a_whole_page_below_the_head_are_named_not_skipped() {
    use signet::audit::{read_chain, ChainBreak, ChainWalk, CheckpointFile, CHAIN_PAGE};
    let walk = || ChainWalk::for_checkpoints(&[], &CheckpointFile::default());
    let db = &databases("chain_pages")[0];
    let s = db.open();
    let events: Vec<AuditEvent> = (0..CHAIN_PAGE + 2)
        .map(|i| event("a", &i.to_string()))
        .collect();
    s.append_audit_many(1, &events).unwrap();
    let read = read_chain(&*s, walk(), |_, _| {}).unwrap();
    assert_eq!(read.map(|w| w.events()), Ok(CHAIN_PAGE + 2));
    // Events 2 to CHAIN_PAGE + 1 deleted (the table's guards dropped first): the second page
    // below the head comes back empty.
    let conn = common::open_db(db.sqlite.as_ref().unwrap());
    common::drop_audit_guards(&conn);
    conn.execute(
        "DELETE FROM audit_events WHERE seq BETWEEN 2 AND ?1",
        [CHAIN_PAGE as i64 + 1],
    )
    .unwrap();
    let read = read_chain(&*s, walk(), |_, _| {}).unwrap();
    assert_eq!(
        read.map(|w| w.events()),
        Err(ChainBreak::Missing { seq: 2 })
    );
}

#[test]
fn reopening_a_store_keeps_its_records_and_migrates_nothing_twice() {
    for db in databases("reopen") {
        issue(&*db.open(), "0e");
        let again = db.open();
        assert_eq!(
            again.certificate("0e").unwrap().unwrap().status,
            CertStatus::Issued,
            "{:?}",
            db.engine
        );
        assert_eq!(again.certificates().unwrap().len(), 1);
        assert_chain_intact(&again.audit_events(0).unwrap());
    }
}

#[test]
fn a_group_of_writes_applies_each_and_a_failing_one_leaves_the_others() {
    use signet::store::GroupedWrite;
    for db in databases("group_commit") {
        let s = db.open();
        s.record_pending(&pending("10", IssuerId::Customer, 0), &event("r", "10"))
            .unwrap();
        let complete = |serial: &str| GroupedWrite::Complete {
            serial: serial.into(),
            cert_der: format!("der-{serial}").into_bytes(),
            at: 1_001,
            event: event("certificate.issue", serial),
        };
        let results = s
            .grouped_writes(&[
                vec![GroupedWrite::Pending {
                    record: pending("11", IssuerId::Customer, 0),
                    event: event("certificate.record", "11"),
                }],
                vec![GroupedWrite::Pending {
                    record: pending("10", IssuerId::Teller, 0),
                    event: event("certificate.record", "10"),
                }],
                vec![complete("10")],
                vec![complete("99")],
                // A unit stands or falls whole: "12" is not kept, as "98" fails.
                vec![
                    GroupedWrite::Pending {
                        record: pending("12", IssuerId::Customer, 0),
                        event: event("certificate.record", "12"),
                    },
                    complete("98"),
                ],
            ])
            .unwrap();
        assert!(results[0].is_ok(), "{:?}: {:?}", db.engine, results[0]);
        assert!(matches!(results[1], Err(StoreError::SerialTaken(_))));
        assert!(results[2].is_ok(), "{:?}", results[2]);
        assert!(matches!(results[3], Err(StoreError::Conflict(_))));
        assert!(matches!(results[4], Err(StoreError::Conflict(_))));
        assert!(s.certificate("12").unwrap().is_none(), "{:?}", db.engine);
        assert_eq!(
            s.certificate("11").unwrap().unwrap().status,
            CertStatus::Pending
        );
        assert_eq!(
            s.certificate("10").unwrap().unwrap().status,
            CertStatus::Issued
        );
        assert!(s.certificate("99").unwrap().is_none());
        let events = s.audit_events(0).unwrap();
        assert_eq!(events.len(), 3, "one event per applied write");
        assert_chain_intact(&events);
    }
}

#[test]
fn verifications_in_one_group_see_each_other_through_the_replay_guard() {
    use signet::store::{GroupedWrite, VerificationEvent};
    for db in databases("group_verify") {
        let s = db.open();
        let keys = ReplayKeys {
            signer: "spki".into(),
            digest: "d1".into(),
            instruction_id: None,
        };
        let verification = |at: i64| GroupedWrite::Verification {
            guard: Some(keys.clone()),
            at,
            window_secs: 3_600,
            event: VerificationEvent(Arc::new(move |seen: Option<i64>| {
                AuditEvent::new(
                    "gateway",
                    "signature.verify",
                    "d1",
                    serde_json::json!({ "replay_first_seen": seen }),
                )
            })),
        };
        let results = s
            .grouped_writes(&[vec![verification(5_000)], vec![verification(5_001)]])
            .unwrap();
        let seen: Vec<_> = results
            .iter()
            .map(|r| r.as_ref().expect("applied")[0].first_seen)
            .collect();
        assert_eq!(seen, [None, Some(5_000)], "{:?}", db.engine);
        // Each audit event says what its verification was told.
        let events = s.audit_events(0).unwrap();
        assert_eq!(events.len(), 2);
        let details: serde_json::Value = serde_json::from_str(&events[1].details).unwrap();
        assert_eq!(details["replay_first_seen"], 5_000);
        assert_chain_intact(&events);
    }
}

#[test]
fn the_state_of_a_certificate_is_what_its_full_record_says() {
    use signet::store::CertState;
    for db in databases("state") {
        let s = db.open();
        let sha256_hex = |der: &[u8]| {
            use sha2::Digest;
            hex::encode(sha2::Sha256::digest(der))
        };
        let state_of = |serial: &str| -> Option<CertState> {
            let full = s.certificate(serial).unwrap();
            let state = s.certificate_state(serial).unwrap();
            assert_eq!(
                state,
                full.map(|r| CertState {
                    status: r.status,
                    created_at: r.created_at,
                    revocation: r.revocation,
                    thumbprint: r.cert_der.as_deref().map(sha256_hex),
                }),
                "{:?}: {serial}",
                db.engine
            );
            state
        };
        assert_eq!(state_of("ff"), None);
        s.record_pending(&pending("20", IssuerId::Customer, 0), &event("r", "20"))
            .unwrap();
        assert_eq!(state_of("20").unwrap().status, CertStatus::Pending);
        issue(&*s, "21");
        assert_eq!(state_of("21").unwrap().status, CertStatus::Issued);
        let revocation = RevocationRecord {
            revoked_at: 3_000,
            reason_code: Some(1),
            invalidity_date: Some(2_500),
        };
        s.revoke("21", revocation, &event("certificate.revoke", "21"))
            .unwrap();
        assert_eq!(state_of("21").unwrap().revocation, Some(revocation));
        s.void_pending("20", 4_000, &event("certificate.void", "20"))
            .unwrap();
        assert_eq!(state_of("20").unwrap().status, CertStatus::Void);
    }
}

/// A PostgreSQL role that logs in with a password over TCP (the local server's pg_hba asks
/// loopback connections for one), owning a fresh database; (its URL over TLS, the password,
/// the server's certificate file, an admin connection).
fn tls_role(test: &str) -> (String, String, std::path::PathBuf, postgres::Client) {
    let server = common::test_postgres().expect(
        "SIGNET_TEST_POSTGRES is not set: run the suite with ./test.sh, which starts a local PostgreSQL",
    );
    let url = common::fresh_database(&server, &format!("store_{test}")).unwrap();
    let db = url
        .rsplit('/')
        .next()
        .unwrap()
        .split('?')
        .next()
        .unwrap()
        .to_string();
    let mut admin = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let show = |admin: &mut postgres::Client, what: &str| -> String {
        admin
            .query_one(&format!("SHOW {what}"), &[])
            .unwrap()
            .get(0)
    };
    assert_eq!(
        show(&mut admin, "ssl"),
        "on",
        "the test PostgreSQL serves no TLS (Debian's package turns it on with its snakeoil certificate)"
    );
    let cert = std::path::PathBuf::from(show(&mut admin, "ssl_cert_file"));
    let port = show(&mut admin, "port");
    // Not guessable: the role stays after the test (with its database dropped by a later run).
    let password = {
        use std::io::Read;
        let mut secret = [0u8; 16];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut secret))
            .unwrap();
        hex::encode(secret)
    };
    // A role per test: two tests creating one role at once would race.
    let role = format!("signet_{test}");
    admin
        .batch_execute(&format!(
            "DO $$ BEGIN
               IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') THEN
                 CREATE ROLE {role} LOGIN;
               END IF;
             END $$;
             ALTER ROLE {role} PASSWORD '{password}';
             ALTER DATABASE \"{db}\" OWNER TO {role};
             GRANT ALL ON SCHEMA public TO {role};"
        ))
        .unwrap();
    // The TLS name is the one the server's certificate gives (Debian's snakeoil certificate:
    // the host name when the package was installed); the connection goes to the loopback
    // address, which the server's pg_hba lets in with a password.
    let name = certificate_dns_name(&cert);
    let tls_url =
        format!("postgres://{role}@{name}:{port}/{db}?sslmode=require&hostaddr=127.0.0.1");
    (tls_url, password, cert, admin)
}

/// The first DNS name of a PEM certificate's subjectAltName.
fn certificate_dns_name(pem: &std::path::Path) -> String {
    use der::DecodePem;
    use x509_cert::ext::pkix::name::GeneralName;
    use x509_cert::ext::pkix::SubjectAltName;
    let cert = x509_cert::Certificate::from_pem(std::fs::read(pem).unwrap()).unwrap();
    let (_, san) = cert
        .tbs_certificate()
        .get_extension::<SubjectAltName>()
        .unwrap()
        .expect("the server's certificate has a subjectAltName");
    san.0
        .iter()
        .find_map(|n| match n {
            GeneralName::DnsName(d) => Some(d.to_string()),
            _ => None,
        })
        .expect("a DNS name in the server's certificate")
}

fn open_over_tls(
    url: &str,
    password: &str,
    ca: &std::path::Path,
) -> Result<PostgresStore, StoreError> {
    PostgresStore::open(PostgresOptions {
        url: url.into(),
        password: Some(zeroize::Zeroizing::new(password.into())),
        tls_ca_file: Some(ca.into()),
        pool: 2,
        connect_timeout: std::time::Duration::from_secs(2),
        lock_timeout: std::time::Duration::from_secs(30),
    })
}

#[test]
fn postgres_with_sslmode_require_speaks_tls_to_a_server_whose_certificate_verifies() {
    let (url, password, cert, mut admin) = tls_role("tls_ok");
    let store = open_over_tls(&url, &password, &cert).expect("the store opens over TLS");
    let tenant = TenantRecord {
        id: "ten_tls".into(),
        name: "TLS Bank".into(),
        created_at: 1,
    };
    store
        .add_tenant(&tenant, &event("tenant.add", "ten_tls"))
        .unwrap();
    assert_eq!(store.tenant_by_name("TLS Bank").unwrap(), Some(tenant));
    // The server sees the store's connections as TLS ones.
    let tls: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
             WHERE a.usename = 'signet_tls_ok' AND s.ssl",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(tls >= 1, "no TLS connection of the store's role");
}

#[test]
fn postgres_with_sslmode_require_refuses_a_server_whose_certificate_another_ca_issued() {
    let (url, password, _, _admin) = tls_role("tls_wrong_ca");
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("store-tls-wrong-ca");
    std::fs::create_dir_all(&dir).unwrap();
    let other = dir.join("other-ca.pem");
    let key = dir.join("other-ca.key");
    common::openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-subj",
        "/CN=Another CA",
        "-days",
        "2",
        "-keyout",
        key.to_str().unwrap(),
        "-out",
        other.to_str().unwrap(),
    ])
    .assert_ok();
    match open_over_tls(&url, &password, &other) {
        Err(StoreError::Unavailable(m)) => {
            assert!(m.contains("invalid peer certificate: UnknownIssuer"), "{m}");
            assert!(!m.contains(&password), "{m}");
        }
        Ok(_) => panic!("the store opened against a server its CA did not vouch for"),
        Err(e) => panic!("{e:?}"),
    }
}

/// The fresh PostgreSQL database of `databases(test)`, when PostgreSQL is under test.
fn postgres_database(test: &str) -> Option<Db> {
    databases(test)
        .into_iter()
        .find(|db| matches!(db.engine, Engine::Postgres))
}

#[test]
fn a_write_waits_for_another_processs_write_lock_at_most_the_lock_timeout() {
    let Some(db) = postgres_database("lock_timeout") else {
        return;
    };
    let url = db.postgres.clone().unwrap();
    let store = PostgresStore::open(PostgresOptions {
        url: url.clone(),
        password: None,
        tls_ca_file: None,
        pool: 2,
        connect_timeout: std::time::Duration::from_secs(5),
        lock_timeout: std::time::Duration::from_millis(500),
    })
    .unwrap();
    // A process stuck inside a transaction that holds the store's write lock. It lets go
    // after 10 s at the latest, so that a store without the timeout fails this test (its
    // write then succeeds, late) rather than hanging it.
    let (locked, is_locked) = std::sync::mpsc::channel();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let stuck = std::thread::spawn(move || {
        let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        let mut tx = client.transaction().unwrap();
        tx.execute("SELECT pg_advisory_xact_lock(x'5349474e4554'::bigint)", &[])
            .unwrap();
        locked.send(()).unwrap();
        let _ = released.recv_timeout(std::time::Duration::from_secs(10));
        tx.rollback().unwrap();
    });
    is_locked.recv().unwrap();
    let started = std::time::Instant::now();
    match store.append_audit(1_000, &event("test.write", "x")) {
        Err(StoreError::Unavailable(m)) => assert!(m.contains("lock_timeout_ms"), "{m}"),
        other => panic!("a write under another's lock: {other:?}"),
    }
    let took = started.elapsed();
    assert!(took < std::time::Duration::from_secs(5), "took {took:?}");
    release.send(()).unwrap();
    stuck.join().unwrap();
    store
        .append_audit(1_000, &event("test.write", "y"))
        .unwrap();
}

#[test]
fn writes_of_several_processes_chain_whatever_isolation_the_database_defaults_to() {
    let Some(db) = postgres_database("isolation") else {
        return;
    };
    let url = db.postgres.clone().unwrap();
    let mut admin = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let name: String = admin
        .query_one("SELECT current_database()", &[])
        .unwrap()
        .get(0);
    admin
        .batch_execute(&format!(
            "ALTER DATABASE \"{name}\" SET default_transaction_isolation = 'repeatable read'"
        ))
        .unwrap();
    let (a, b) = (db.open(), db.open());
    let barrier = Arc::new(Barrier::new(4));
    let handles: Vec<_> = [a.clone(), b.clone(), a.clone(), b]
        .into_iter()
        .map(|s| {
            let barrier = barrier.clone();
            thread::spawn(move || {
                barrier.wait();
                (0..25)
                    .map(|i| s.append_audit(1_000, &event("test.write", &i.to_string())))
                    .filter(Result::is_err)
                    .count()
            })
        })
        .collect();
    let failed: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(failed, 0, "appends refused under repeatable read");
    let events = a.audit_events(0).unwrap();
    assert_eq!(events.len(), 100);
    assert_chain_intact(&events);
}

/// A TCP proxy to a PostgreSQL Unix socket that, once `armed`, cuts the connection at one
/// COMMIT: after passing it on to the server and before the server's answer reaches the
/// client (`passed`: a network that fails at the worst moment), or before passing it on.
struct CommitCutter {
    port: u16,
    armed: Arc<std::sync::atomic::AtomicBool>,
}

impl CommitCutter {
    fn start(socket: std::path::PathBuf, passed: bool) -> CommitCutter {
        use std::io::{Read, Write};
        use std::net::Shutdown;
        use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let armed = Arc::new(AtomicBool::new(false));
        let arm = armed.clone();
        thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let Ok(server) = std::os::unix::net::UnixStream::connect(&socket) else {
                    continue;
                };
                let cut = Arc::new(AtomicBool::new(false));
                let (mut from, mut to) = (server.try_clone().unwrap(), client.try_clone().unwrap());
                let answers_cut = cut.clone();
                thread::spawn(move || {
                    let mut buf = vec![0u8; 1 << 16];
                    while let Ok(n @ 1..) = from.read(&mut buf) {
                        if answers_cut.load(SeqCst) || to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = to.shutdown(Shutdown::Both);
                });
                let (mut from, mut to, arm) = (client, server, arm.clone());
                thread::spawn(move || {
                    let mut buf = vec![0u8; 1 << 16];
                    while let Ok(n @ 1..) = from.read(&mut buf) {
                        // The query "COMMIT" (not "READ COMMITTED").
                        let commit = buf[..n].windows(7).any(|w| w == b"COMMIT\0");
                        if commit && arm.swap(false, SeqCst) {
                            cut.store(true, SeqCst);
                            if passed {
                                // Cut at once: the server may still be committing when the
                                // client asks whether it did.
                                let _ = to.write_all(&buf[..n]);
                            }
                            break;
                        }
                        if to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = from.shutdown(Shutdown::Both);
                    let _ = to.shutdown(Shutdown::Both);
                });
            }
        });
        CommitCutter { port, armed }
    }
}

#[test]
fn a_group_whose_commit_went_unanswered_but_was_made_is_not_applied_again() {
    group_with_an_unanswered_commit("commit_made", true);
}

#[test]
fn a_group_whose_commit_went_unanswered_and_was_not_made_is_applied_again() {
    group_with_an_unanswered_commit("commit_lost", false);
}

/// A verification's group commit whose COMMIT is cut, after reaching the server (`made`) or
/// before: either way, the verification is recorded once, as a first presentation.
fn group_with_an_unanswered_commit(test: &str, made: bool) {
    let Some(db) = postgres_database(test) else {
        return;
    };
    let config: postgres::Config = db.postgres.as_deref().unwrap().parse().unwrap();
    let socket = match (&config.get_hosts()[0], config.get_ports().first()) {
        (postgres::config::Host::Unix(dir), port) => {
            dir.join(format!(".s.PGSQL.{}", port.copied().unwrap_or(5432)))
        }
        // A server over TCP: this proxy serves Unix sockets only.
        _ => return,
    };
    let cutter = CommitCutter::start(socket, made);
    let store = PostgresStore::open(PostgresOptions {
        url: format!(
            "postgres://{}@127.0.0.1:{}/{}",
            config.get_user().unwrap(),
            cutter.port,
            config.get_dbname().unwrap()
        ),
        password: None,
        tls_ca_file: None,
        pool: 2,
        connect_timeout: std::time::Duration::from_secs(5),
        lock_timeout: std::time::Duration::from_secs(30),
    })
    .unwrap();
    let verification = signet::store::GroupedWrite::Verification {
        guard: Some(ReplayKeys {
            signer: "spki".into(),
            digest: "d1".into(),
            instruction_id: Some("PAY-1".into()),
        }),
        at: 1_000,
        window_secs: 600,
        event: signet::store::VerificationEvent(Arc::new(|_| event("signature.verify", "d1"))),
    };
    cutter
        .armed
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let answers = store.grouped_writes(&[vec![verification]]).unwrap();
    assert!(
        !cutter.armed.load(std::sync::atomic::Ordering::SeqCst),
        "the COMMIT went through the proxy"
    );
    let applied = answers.into_iter().next().unwrap().unwrap();
    assert_eq!(
        applied[0].first_seen, None,
        "a first presentation, not a replay of itself"
    );
    let events = store.audit_events(0).unwrap();
    assert_eq!(events.len(), 1, "one event: {events:?}");
}

#[test]
fn a_row_naming_a_bank_that_does_not_exist_is_a_conflict_on_both_engines() {
    for db in databases("constraint") {
        let s = db.open();
        let teller = signet::store::TellerRecord {
            id: "tl1".into(),
            tenant_id: "no-such-bank".into(),
            employee_id: "E1".into(),
            name: "王五".into(),
            created_at: 1_000,
        };
        match s.add_teller(&teller, &event("teller.add", "tl1")) {
            // Not "unavailable" (503: try again later), nor "already a teller".
            Err(StoreError::Conflict(m)) => {
                assert!(!m.contains("already a teller"), "{:?}: {m}", db.engine)
            }
            other => panic!("{:?}: {other:?}", db.engine),
        }
    }
}
