//! Crash consistency: `signet serve` killed with SIGKILL at random moments while clients issue
//! and revoke, and started again, many times. After every crash the store must hold every
//! certificate a client received (same DER) and every revocation a client was told about,
//! unsigned records must be resolved once the issuance timeout passes, serials stay unique,
//! CRL numbers only go up, the audit chain verifies and the database is intact.
//!
//! The drill takes the store as a parameter ([`StoreUnderTest`]: the config's `[store]` table
//! and a way to read the store back), so the same drill runs against any store engine.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::drill::{csr_pem, wait_until, with_key, with_section, Answer, DrillHome, Load, Op};
use common::http::Server;
use common::{fixture, open_db, toml_str};

/// Crashes per drill (the brief: at least 20).
const CRASHES: usize = 20;
/// Concurrent clients.
const CLIENTS: usize = 3;
/// `[issuance] timeout_secs` of the drill: unsigned records are voided a second after they are made.
const ISSUANCE_TIMEOUT_SECS: u64 = 1;

/// One certificate row as the drill reads it back.
#[derive(Debug, Clone)]
pub struct Row {
    /// `pending`, `issued` or `void`.
    pub status: String,
    pub der: Option<Vec<u8>>,
    pub revoked: bool,
}

/// What the drill reads back from a store after a crash.
pub struct Snapshot {
    pub certificates: HashMap<String, Row>,
    /// CRL numbers per (issuer, shard), in the order they were committed.
    pub crl_numbers: BTreeMap<(String, i64), Vec<i64>>,
    /// The engine's own consistency check (`PRAGMA integrity_check` for SQLite).
    pub integrity: Result<(), String>,
}

/// A store engine under test.
pub struct StoreUnderTest {
    pub name: String,
    /// The body of the config's `[store]` table.
    pub store_section: String,
    /// True when the store is empty: the drill then runs `signet ca init` on it first.
    pub fresh: bool,
    /// Reads the store back (called while no `signet serve` runs).
    pub inspect: Box<dyn Fn() -> Snapshot>,
}

impl StoreUnderTest {
    /// A SQLite store: a consistent copy of the fixture's store at `db`.
    pub fn sqlite(db: &Path) -> StoreUnderTest {
        let db = db.to_path_buf();
        StoreUnderTest {
            name: "SQLite".into(),
            store_section: format!("path = {}", toml_str(&db.to_string_lossy())),
            fresh: false,
            inspect: Box::new(move || sqlite_snapshot(&db)),
        }
    }
}

fn sqlite_snapshot(db: &Path) -> Snapshot {
    let conn = open_db(db);
    let integrity: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("PRAGMA integrity_check");
    let mut st = conn
        .prepare("SELECT serial, status, cert_der, revoked_at FROM certificates")
        .unwrap();
    let certificates = st
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                Row {
                    status: r.get(1)?,
                    der: r.get(2)?,
                    revoked: r.get::<_, Option<i64>>(3)?.is_some(),
                },
            ))
        })
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    let mut crl_numbers: BTreeMap<(String, i64), Vec<i64>> = BTreeMap::new();
    let mut st = conn
        .prepare("SELECT issuer, shard, number FROM crls ORDER BY rowid")
        .unwrap();
    for row in st
        .query_map([], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?, r.get(2)?))
        })
        .unwrap()
    {
        let (issuer, shard, number) = row.unwrap();
        crl_numbers.entry((issuer, shard)).or_default().push(number);
    }
    Snapshot {
        certificates,
        crl_numbers,
        integrity: if integrity == "ok" {
            Ok(())
        } else {
            Err(integrity)
        },
    }
}

impl StoreUnderTest {
    /// A PostgreSQL store: a fresh database at `url` (the drill runs `signet ca init` on it).
    pub fn postgres(url: String) -> StoreUnderTest {
        StoreUnderTest {
            name: "PostgreSQL".into(),
            store_section: format!("url = {}", toml_str(&url)),
            fresh: true,
            inspect: Box::new(move || postgres_snapshot(&url)),
        }
    }
}

fn postgres_snapshot(url: &str) -> Snapshot {
    let mut db =
        postgres::Client::connect(url, postgres::NoTls).expect("connect to the drill's database");
    let certificates = db
        .query(
            "SELECT serial, status, cert_der, revoked_at FROM certificates",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| {
            (
                r.get::<_, String>(0),
                Row {
                    status: r.get(1),
                    der: r.get(2),
                    revoked: r.get::<_, Option<i64>>(3).is_some(),
                },
            )
        })
        .collect();
    // Commit order of CRL numbers: the order of their audit events ("crl:<issuer>[-<shard>]#<n>").
    let mut crl_numbers: BTreeMap<(String, i64), Vec<i64>> = BTreeMap::new();
    for r in db
        .query(
            "SELECT object FROM audit_events WHERE action = 'crl.generate' ORDER BY seq",
            &[],
        )
        .unwrap()
    {
        let object: String = r.get(0);
        let (scope, number) = object
            .strip_prefix("crl:")
            .and_then(|o| o.rsplit_once('#'))
            .unwrap_or_else(|| panic!("unexpected CRL audit object {object:?}"));
        let (issuer, shard) = match scope.split_once('-') {
            Some((i, s)) => (i.to_string(), s.parse().unwrap()),
            None => (scope.to_string(), -1),
        };
        crl_numbers
            .entry((issuer, shard))
            .or_default()
            .push(number.parse().unwrap());
    }
    // The engine's own check: every B-tree index (primary keys, uniqueness) against its table.
    let integrity = db
        .batch_execute("CREATE EXTENSION IF NOT EXISTS amcheck")
        .and_then(|_| {
            db.query(
                "SELECT bt_index_check(c.oid, true) FROM pg_index i
                 JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am a ON a.oid = c.relam
                 WHERE a.amname = 'btree' AND c.relnamespace = 'public'::regnamespace",
                &[],
            )
        })
        .map(|_| ())
        .map_err(|e| e.to_string());
    Snapshot {
        certificates,
        crl_numbers,
        integrity,
    }
}

/// A small deterministic generator for the kill moments (the seed is printed).
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

/// The drill: `CRASHES` SIGKILLs of `signet serve` under mixed load, with every check after
/// each one.
pub fn crash_drill(home: &DrillHome, store: StoreUnderTest) {
    let f = fixture();
    let started = Instant::now();
    home.edit_config(|t| {
        let t = with_section(t, "store", &store.store_section);
        with_key(
            &t,
            "issuance",
            "timeout_secs",
            &ISSUANCE_TIMEOUT_SECS.to_string(),
        )
    });
    if store.fresh {
        f.signet_with(&home.config, &[], &["ca", "init"])
            .assert_ok();
    }
    let officer = home.officer(f, &format!("Crash drill bank ({})", store.name));
    let crls_before = (store.inspect)().crl_numbers;
    let seed = std::env::var("SIGNET_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    let mut rng = Lcg(seed);

    let mut server = Server::start_config(f, &home.config, &[]);
    let base = Arc::new(Mutex::new(server.base.clone()));
    let answers = Arc::new(Mutex::new(Vec::new()));
    let load = Load::start_shared(
        base.clone(),
        &officer,
        &csr_pem(f),
        CLIENTS,
        3,
        Arc::new(AtomicBool::new(false)),
        answers.clone(),
    );
    let mut last_crl: BTreeMap<(String, i64), i64> = BTreeMap::new();
    let mut voided_total = 0;
    for round in 1..=CRASHES {
        let alive = Duration::from_millis(150 + rng.below(500));
        std::thread::sleep(alive);
        server.kill();

        let snap = (store.inspect)();
        let context = format!("{} store, crash {round} (seed {seed})", store.name);
        check_after_crash(&snap, &answers.lock().unwrap(), &mut last_crl, &context);
        let audit = f.signet_with(&home.config, &[], &["audit", "verify"]);
        assert!(
            audit.success(),
            "{context}: signet audit verify failed\n{}",
            audit.describe()
        );
        let unsigned: HashSet<String> = snap
            .certificates
            .iter()
            .filter(|(_, r)| r.status == "pending")
            .map(|(s, _)| s.clone())
            .collect();

        server = Server::start_config(f, &home.config, &[]);
        *base.lock().unwrap() = server.base.clone();
        if !unsigned.is_empty() {
            // Left by the crash: resolved (voided, or completed) once the timeout passes,
            // by the restart or the running service's sweep.
            let resolved = wait_until(Duration::from_secs(ISSUANCE_TIMEOUT_SECS + 4), || {
                let now = (store.inspect)();
                unsigned.iter().all(|s| {
                    now.certificates
                        .get(s)
                        .is_some_and(|r| r.status != "pending")
                })
            });
            assert!(
                resolved.is_some(),
                "{context}: records recorded but not signed before the crash are still pending: {unsigned:?}"
            );
            voided_total += unsigned.len();
        }
    }
    server.kill();
    let answers_all = load.finish();
    let snap = (store.inspect)();
    check_after_crash(
        &snap,
        &answers_all,
        &mut last_crl,
        &format!("{} store, at the end (seed {seed})", store.name),
    );
    let count = |op: Op, status: u16| {
        answers_all
            .iter()
            .filter(|a| a.what == op && a.status == status)
            .count()
    };
    eprintln!(
        "crash drill ({}): {CRASHES} SIGKILLs in {:.1} s (seed {seed}); {} certificates and {} \
         revocations acknowledged, all found in the store; {voided_total} unsigned records left \
         by crashes, all resolved; {} requests cut off by a kill",
        store.name,
        started.elapsed().as_secs_f64(),
        count(Op::Issue, 201),
        count(Op::Revoke, 200),
        answers_all.iter().filter(|a| a.status == 0).count(),
    );
    assert!(
        count(Op::Issue, 201) >= CRASHES,
        "too little load got through to show anything"
    );
    let new_crls: i64 = last_crl
        .iter()
        .map(|(scope, top)| top - crls_before.get(scope).and_then(|n| n.last()).unwrap_or(&0))
        .sum();
    eprintln!(
        "crash drill ({}): {new_crls} CRLs published during the drill",
        store.name
    );
    assert!(
        new_crls > 0,
        "no CRL was published: their numbering was not exercised"
    );
}

fn check_after_crash(
    snap: &Snapshot,
    answers: &[Answer],
    last_crl: &mut BTreeMap<(String, i64), i64>,
    context: &str,
) {
    if let Err(e) = &snap.integrity {
        panic!("{context}: store integrity check failed: {e}");
    }
    let mut seen = HashSet::new();
    for a in answers {
        if a.what == Op::Issue && a.status == 201 {
            let serial = a.serial.as_ref().unwrap();
            assert!(
                seen.insert(serial.clone()),
                "{context}: serial {serial} handed out twice"
            );
            let row = snap.certificates.get(serial).unwrap_or_else(|| {
                panic!("{context}: certificate {serial} was handed out but is not in the store")
            });
            assert_eq!(row.status, "issued", "{context}: {serial}");
            assert_eq!(
                row.der.as_ref(),
                a.der.as_ref(),
                "{context}: {serial}: the stored DER is not what the client got"
            );
        }
        if a.what == Op::Revoke && a.status == 200 {
            let serial = a.serial.as_ref().unwrap();
            assert!(
                snap.certificates.get(serial).is_some_and(|r| r.revoked),
                "{context}: the revocation of {serial} was acknowledged but is not in the store"
            );
        }
        let unexpected = a.status != 0 && a.status != 201 && a.status != 200;
        assert!(
            !unexpected || a.code.as_deref() == Some("conflict"),
            "{context}: unexpected answer {a:?}"
        );
    }
    for (scope, numbers) in &snap.crl_numbers {
        assert!(
            numbers.windows(2).all(|w| w[0] < w[1]),
            "{context}: CRL numbers of {scope:?} not increasing: {numbers:?}"
        );
        let top = *numbers.last().unwrap();
        let before = last_crl.insert(scope.clone(), top).unwrap_or(0);
        assert!(
            top >= before,
            "{context}: CRL number of {scope:?} went back from {before} to {top}"
        );
    }
}

#[test]
fn sqlite_store_survives_sigkill_at_random_moments_under_issuance_and_revocation_load() {
    let f = fixture();
    let home = DrillHome::new(f, "crash-sqlite", &[]);
    let store = StoreUnderTest::sqlite(&home.db);
    crash_drill(&home, store);
}

#[test]
fn postgres_store_survives_sigkill_at_random_moments_under_issuance_and_revocation_load() {
    let f = fixture();
    let server = common::test_postgres().expect(
        "SIGNET_TEST_POSTGRES is not set: run the suite with ./test.sh, which starts a local PostgreSQL",
    );
    let url = common::fresh_database(&server, "crash_postgres").expect("a fresh database");
    let home = DrillHome::new(f, "crash-postgres", &[]);
    // The checkpoint file of the copied SQLite store belongs to that store's chain.
    let _ = std::fs::remove_file(&home.checkpoints);
    crash_drill(&home, StoreUnderTest::postgres(url));
}

/// (Newest audit event, newest checkpoint) of a SQLite store, by sequence number.
fn head_and_checkpoint(db: &Path) -> (i64, i64) {
    let conn = open_db(db);
    let max = |sql: &str| -> i64 { conn.query_row(sql, [], |r| r.get(0)).unwrap() };
    (
        max("SELECT COALESCE(MAX(seq), 0) FROM audit_events"),
        max("SELECT COALESCE(MAX(seq), 0) FROM audit_checkpoints"),
    )
}

#[test]
fn a_server_started_after_a_crash_checkpoints_the_events_the_killed_one_left_unsigned() {
    let f = fixture();
    // No checkpoint falls due while the first server runs.
    let home = DrillHome::new(
        f,
        "unsigned-tail",
        &[("audit", "checkpoint_every", "1000000".into())],
    );
    let officer = home.officer(f, "Unsigned tail bank");
    let server = Server::start_config(f, &home.config, &[]);
    for n in 1..=3 {
        let r = common::http::post_json(
            &server,
            "/v1/certificates",
            Some(&officer),
            &common::drill::customer_request(&csr_pem(f), n),
        );
        assert_eq!(r.status, 201, "{}", r.body);
    }
    server.kill();
    let (head, checkpointed) = head_and_checkpoint(&home.db);
    assert!(
        checkpointed < head,
        "the killed server left no unsigned events (head {head}, checkpoint {checkpointed})"
    );

    let server = Server::start_config(f, &home.config, &[]);
    let (_, checkpointed) = head_and_checkpoint(&home.db);
    assert!(
        checkpointed >= head,
        "serving again, the events up to {head} are still unsigned (newest checkpoint {checkpointed})"
    );
    server.stop();
    f.signet_with(&home.config, &[], &["audit", "verify"])
        .assert_ok();
}
