//! A running process holds the audit chain to what it appended. Events since the last
//! checkpoint live only in the database: someone who can write to it could delete the newest
//! and let new events take their numbers, and the next checkpoint would sign the chain so cut.
//! The process remembers what it appended, refuses to checkpoint such a chain, checkpoints the
//! event as it appended it (so `signet audit verify` shows the change) and issues nothing more.
//!
//! One process (one PKCS#11 context) per test binary, and the scenario leaves it refusing to
//! issue: hence one test, in a binary of its own, on a copy of the fixture's store.

mod common;

use common::*;
use signet::app::Signet;
use signet::audit::{read_checkpoint_file, AuditError};
use signet::ca::{CaError, Fault, Reason};
use signet::clock::Clock;
use signet::config::Config;
use signet::ra::{CertificateRequest, RaError};

fn issue(s: &Signet, csr: &[u8], n: u32) -> Result<signet::ca::Issued, RaError> {
    s.registrar.issue(&CertificateRequest {
        profile: "customer",
        csr,
        subject: &format!("CN=见证 {n},serialNumber=11010119900307{n:04}"),
        actor: "test:witness",
        break_glass: false,
        tenant: None,
    })
}

fn head(conn: &rusqlite::Connection) -> i64 {
    conn.query_row("SELECT MAX(seq) FROM audit_events", [], |r| r.get(0))
        .unwrap()
}

#[test]
fn a_chain_cut_back_and_written_over_behind_a_running_process_is_not_checkpointed_and_stops_its_issuance(
) {
    let f = fixture();
    // No checkpoint falls due by itself: the test says when one is made.
    let copy = f.store_copy(
        "witness",
        &[("audit", "checkpoint_every", "1000000000".into())],
    );
    let config = Config::load(&copy.config).expect("config of the copy loads");
    // SAFETY of set_var: the only test of this binary, before any thread reads it.
    std::env::set_var("SOFTHSM2_CONF", &f.softhsm2_conf);
    let s = Signet::open(config, Clock::system(), Fault::None).expect("signet opens");
    s.startup("test:witness").expect("start-up checkpoint");
    let csr = std::fs::read(f.csr(KeyKind::P256)).unwrap();

    let conn = open_db(&copy.db);
    let checkpointed = head(&conn);
    let file_lines = || {
        read_checkpoint_file(&copy.checkpoints)
            .expect("checkpoint file")
            .checkpoints
    };
    let lines_before = file_lines();
    let first = issue(&s, &csr, 1).expect("issued before the change");
    assert!(head(&conn) > checkpointed);

    // Someone with write access to the database removes the events this process appended
    // since its checkpoint (the audit table's guards dropped first) ...
    drop_audit_guards(&conn);
    conn.execute("DELETE FROM audit_events WHERE seq > ?1", [checkpointed])
        .unwrap();
    // ... and the next events take their numbers, so that the chain runs whole.
    issue(&s, &csr, 2).expect("issued after the change: no checkpoint was due");
    let written_over = checkpointed + 1;

    let err = s
        .authority
        .auditor()
        .checkpoint_head()
        .expect_err("a checkpoint of the chain so cut");
    assert!(
        matches!(&err, AuditError::ChainAltered(why) if why.contains(&format!("event {written_over} "))),
        "{err}"
    );
    assert!(s.authority.auditor().altered().is_some());
    // One checkpoint more, and it is of the event as this process appended it: the chain so
    // cut is not checkpointed.
    let lines = file_lines();
    assert_eq!(lines.len(), lines_before.len() + 1, "{lines:?}");
    let evidence = lines.last().unwrap();
    let rewritten: Vec<u8> = conn
        .query_row(
            "SELECT hash FROM audit_events WHERE seq = ?1",
            [written_over],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(evidence.seq, written_over as u64);
    assert_ne!(
        evidence.hash, rewritten,
        "the rewritten event was checkpointed"
    );

    // Nothing more is issued ...
    match issue(&s, &csr, 3) {
        Err(RaError::Ca(CaError::Audit(AuditError::ChainAltered(_)))) => {}
        other => panic!("issued on an altered chain: {:?}", other.map(|i| i.serial)),
    }
    // ... but a revocation stands: it must never wait for the audit log's investigation.
    s.authority
        .revoke(&first.serial, Reason::Superseded, None, "test:witness")
        .expect("revocation goes on");

    // The checkpoint of the event as it was appended shows the change to `audit verify`.
    let out = f.signet_with(&copy.config, &[], &args!["audit", "verify"]);
    out.assert_refused();
    assert!(
        out.named_events().contains(&(written_over as u64)),
        "expected the verification to name event {written_over}\n{}",
        out.describe()
    );

    // The operator, unable to restore the events, records the loss: the evidence is left
    // out from then on, and a process started afresh issues again. This one, which found the
    // chain altered, refuses until it is restarted.
    let signet = |a: &[&str]| {
        let a: Vec<std::ffi::OsString> = a.iter().map(Into::into).collect();
        f.signet_with(&copy.config, &[], &a)
    };
    let reason = "test: events deleted";
    let listing = signet(&["audit", "acknowledge", "--reason", reason]);
    let plan = listing
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("plan "))
        .unwrap_or_else(|| panic!("no plan listed\n{}", listing.describe()))
        .to_string();
    signet(&[
        "audit",
        "acknowledge",
        "--reason",
        reason,
        "--confirm",
        &plan,
    ])
    .assert_ok();
    signet(&["audit", "verify"]).assert_ok();
    assert!(issue(&s, &csr, 4).is_err(), "the running process issued");
    let out = signet(&[
        "issue",
        "--profile",
        "customer",
        "--csr",
        f.csr(KeyKind::P256).to_str().unwrap(),
        "--subject",
        "CN=见证 5,serialNumber=110101199003070005",
        "--out",
        f.path("witness-after-ack.pem").to_str().unwrap(),
    ]);
    out.assert_ok();
    signet(&["audit", "verify"]).assert_ok();
}
