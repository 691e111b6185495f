//! `signet audit verify`: the hash-chained audit log detects edits, deletions,
//! reordering and truncation, and names the event where the chain breaks.
//!
//! Every tamper test works on its own copy of the store and checkpoint file, so
//! the fixture that other tests share stays intact.

mod common;

use common::*;
use rusqlite::Connection;

/// Opens a store copy as an attacker with file access would: triggers that
/// guard the audit table are dropped first.
fn tamper(copy: &StoreCopy) -> Connection {
    let conn = open_db(&copy.db);
    drop_audit_guards(&conn);
    conn
}

/// `signet issue` of a customer certificate on a store copy.
fn issue_on(copy: &StoreCopy, csr: &std::path::Path, subject: &str) -> Out {
    let f = fixture();
    f.signet_with(
        &copy.config,
        &[],
        &args![
            "issue",
            "--profile",
            "customer",
            "--csr",
            csr,
            "--subject",
            subject,
            "--out",
            f.path("audit.pem")
        ],
    )
}

fn seqs(conn: &Connection) -> Vec<i64> {
    conn.prepare("SELECT seq FROM audit_events ORDER BY seq")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// A store copy whose audit log verifies before the test touches it, with at
/// least `min_events` events.
fn intact_copy(
    name: &str,
    min_events: usize,
    extra: &[(&str, &str, String)],
) -> (StoreCopy, Vec<i64>) {
    let f = fixture();
    let copy = f.store_copy(name, extra);
    let mut events = seqs(&open_db(&copy.db));
    while events.len() < min_events {
        // Add events to the copy only.
        let csr = f.csr(KeyKind::P256);
        issue_on(&copy, &csr, "CN=审计,serialNumber=110101199003071234").assert_ok();
        events = seqs(&open_db(&copy.db));
    }
    verify(&copy).assert_ok();
    (copy, events)
}

/// `signet revoke --reason keyCompromise` on a store copy.
fn revoke_for_key_compromise(copy: &StoreCopy, serial: &str) -> Out {
    fixture().signet_with(
        &copy.config,
        &[],
        &args!["revoke", "--serial", serial, "--reason", "keyCompromise"],
    )
}

/// The revocation reason code on record for `serial` (None: not revoked, or unspecified).
fn revocation_reason(copy: &StoreCopy, serial: &str) -> Option<i64> {
    open_db(&copy.db)
        .query_row(
            "SELECT revocation_reason FROM certificates WHERE serial = ?1",
            [serial],
            |r| r.get(0),
        )
        .unwrap()
}

/// Removes the chain's newest event (covered by the closing checkpoint of the command that
/// appended it).
fn cut_newest_event(copy: &StoreCopy) {
    let newest = *seqs(&open_db(&copy.db)).last().unwrap();
    tamper(copy)
        .execute("DELETE FROM audit_events WHERE seq = ?1", [newest])
        .unwrap();
}

fn verify(copy: &StoreCopy) -> Out {
    fixture().signet_with(&copy.config, &[], &args!["audit", "verify"])
}

#[track_caller]
fn assert_names_one_of(out: &Out, allowed: &[i64]) {
    out.assert_refused();
    let named = out.named_events();
    assert!(
        named.iter().any(|n| allowed.contains(&(*n as i64))),
        "expected stderr to name event {allowed:?}, it names {named:?}\n{}",
        out.describe()
    );
}

#[test]
fn audit_verify_passes_on_an_untouched_log() {
    let f = fixture();
    f.issue_customer();
    let out = f.signet(&args!["audit", "verify"]);
    out.assert_ok();
}

#[test]
fn ca_init_and_issuance_are_audited() {
    let f = fixture();
    let issued = f.issue_customer();
    let conn = open_db(&f.db);
    let actions: Vec<(String, String)> = conn
        .prepare("SELECT action, object FROM audit_events ORDER BY seq")
        .unwrap()
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get::<_, Option<String>>(1)?.unwrap_or_default(),
            ))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(!actions.is_empty(), "no audit events");
    let serial = norm_serial(&issued.serial);
    assert!(
        actions
            .iter()
            .any(|(_, object)| norm_serial(object) == serial
                || object.to_uppercase().contains(&serial)),
        "no audit event names the issued serial {serial}: {actions:?}"
    );
}

#[test]
fn audit_verify_names_an_edited_event() {
    let (copy, events) = intact_copy("edited", 3, &[]);
    let k = events[events.len() / 2];
    let n = tamper(&copy)
        .execute(
            "UPDATE audit_events SET details = coalesce(details, '') || ' ' WHERE seq = ?1",
            [k],
        )
        .unwrap();
    assert_eq!(n, 1);
    assert_names_one_of(&verify(&copy), &[k]);
}

#[test]
fn audit_verify_names_an_event_whose_actor_was_changed() {
    let (copy, events) = intact_copy("actor", 3, &[]);
    let k = events[events.len() / 2];
    tamper(&copy)
        .execute(
            "UPDATE audit_events SET actor = 'mallory' WHERE seq = ?1",
            [k],
        )
        .unwrap();
    assert_names_one_of(&verify(&copy), &[k]);
}

#[test]
fn audit_verify_names_a_deleted_event() {
    let (copy, events) = intact_copy("deleted", 3, &[]);
    let i = events.len() / 2;
    let k = events[i];
    tamper(&copy)
        .execute("DELETE FROM audit_events WHERE seq = ?1", [k])
        .unwrap();
    assert_names_one_of(&verify(&copy), &[k, events[i + 1]]);
}

#[test]
fn audit_verify_names_two_swapped_events() {
    let (copy, events) = intact_copy("swapped", 3, &[]);
    let i = events.len() / 2 - 1;
    let (a, b) = (events[i], events[i + 1]);
    let conn = tamper(&copy);
    // Swap everything but the sequence numbers. Go through a placeholder hash
    // in case the column is UNIQUE.
    conn.execute_batch(&format!(
        "CREATE TEMP TABLE s AS SELECT * FROM audit_events WHERE seq IN ({a}, {b});
         UPDATE audit_events SET hash = X'00' WHERE seq = {a};
         UPDATE audit_events SET (at, actor, action, object, details, prev_hash, hash) =
           (SELECT at, actor, action, object, details, prev_hash, hash FROM s WHERE seq = {a})
           WHERE seq = {b};
         UPDATE audit_events SET (at, actor, action, object, details, prev_hash, hash) =
           (SELECT at, actor, action, object, details, prev_hash, hash FROM s WHERE seq = {b})
           WHERE seq = {a};"
    ))
    .unwrap();
    assert_names_one_of(&verify(&copy), &[a, b]);
}

#[test]
fn audit_verify_names_the_missing_events_when_the_newest_are_removed() {
    // A checkpoint after every event, so that the newest events are covered by
    // an HSM-signed checkpoint.
    let (copy, events) = intact_copy("truncated", 0, &[("audit", "checkpoint_every", "1".into())]);
    // Events appended under checkpoint_every = 1.
    let f = fixture();
    for _ in 0..2 {
        let csr = f.csr(KeyKind::P256);
        issue_on(&copy, &csr, "CN=审计,serialNumber=110101199003071234").assert_ok();
    }
    verify(&copy).assert_ok();
    let checkpoints = std::fs::read_to_string(&copy.checkpoints).unwrap_or_default();
    assert!(
        !checkpoints.trim().is_empty(),
        "no checkpoint written to {} with checkpoint_every = 1",
        copy.checkpoints.display()
    );
    let all = seqs(&open_db(&copy.db));
    assert!(all.len() > events.len());
    let keep_through = all[all.len() - 3];
    tamper(&copy)
        .execute("DELETE FROM audit_events WHERE seq > ?1", [keep_through])
        .unwrap();
    let removed: Vec<i64> = all.iter().copied().filter(|s| *s > keep_through).collect();
    assert_names_one_of(&verify(&copy), &removed);
}

#[test]
fn audit_verify_refuses_a_log_whose_checkpoints_were_all_removed() {
    let (copy, _) = intact_copy("no-checkpoints", 0, &[]);
    // Without them, a chain rebuilt from scratch would be as good as the real one.
    tamper(&copy)
        .execute("DELETE FROM audit_checkpoints", [])
        .unwrap();
    std::fs::write(&copy.checkpoints, "").unwrap();
    let out = verify(&copy);
    out.assert_refused();
    out.assert_stderr_mentions("no signed checkpoint");
}

#[test]
fn audit_verify_says_when_the_last_checkpoint_was_made() {
    let (copy, _) = intact_copy("checkpoint-time", 0, &[]);
    let out = verify(&copy);
    out.assert_ok();
    // "..., last at event N (2026-11-28T08:50:00Z)"
    let line = out.stdout.trim();
    assert!(
        line.contains(", last at event ") && line.ends_with("Z)"),
        "{}",
        out.describe()
    );
}

#[test]
fn a_revocation_stands_when_the_audit_checkpoint_after_it_fails() {
    let f = fixture();
    let copy = f.store_copy(
        "checkpoint-fails",
        &[("audit", "checkpoint_every", "1".into())],
    );
    let csr = f.csr(KeyKind::P256);
    let issued = f.issue_with(
        &copy.config,
        "customer",
        &csr,
        "CN=撤销审计,serialNumber=110101199003071234",
        &[],
    );
    // The checkpoint file can no longer be appended to: every checkpoint fails.
    std::fs::remove_file(&copy.checkpoints).unwrap();
    std::fs::create_dir(&copy.checkpoints).unwrap();
    let out = revoke_for_key_compromise(&copy, &issued.serial);
    // Committed, so reported as done (an error alone would have the operator believe it still
    // valid); the command's closing checkpoint fails too, and says the change stands.
    out.assert_stderr_mentions(&format!("revoked {}", issued.serial));
    out.assert_stderr_mentions("changes are committed");
    assert_eq!(
        revocation_reason(&copy, &issued.serial),
        Some(1),
        "keyCompromise on record"
    );
}

#[test]
fn a_command_started_on_a_chain_cut_below_the_checkpoint_files_newest_checkpoint_issues_nothing_but_revokes(
) {
    let f = fixture();
    let copy = f.store_copy("cut-below-file", &[]);
    let csr = f.csr(KeyKind::P256);
    let subject = "CN=截断,serialNumber=110101199003071234";
    let first = f.issue_with(&copy.config, "customer", &csr, subject, &[]);
    // The command's closing checkpoint covered its events: the newest is removed.
    cut_newest_event(&copy);
    let records = || -> i64 {
        open_db(&copy.db)
            .query_row("SELECT COUNT(*) FROM certificates", [], |r| r.get(0))
            .unwrap()
    };
    let records_before = records();

    let out = issue_on(&copy, &csr, subject);
    out.assert_refused();
    out.assert_stderr_mentions("no longer holds what was appended and checkpointed");

    assert_eq!(
        records(),
        records_before,
        "a certificate was recorded (issued, or voided onto the CRL)"
    );

    // A revocation must never wait for the investigation.
    let out = revoke_for_key_compromise(&copy, &first.serial);
    out.assert_ok();
    out.assert_stderr_mentions(&format!("revoked {}", first.serial));
    out.assert_stderr_mentions("warning: the audit chain in the database no longer holds");
    assert_eq!(
        revocation_reason(&copy, &first.serial),
        Some(1),
        "the revocation was not applied"
    );
}

#[test]
fn a_checkpoint_file_line_the_audit_key_did_not_sign_is_left_out_not_taken_for_a_cut_chain() {
    let f = fixture();
    let (copy, events) = intact_copy("foreign-line", 0, &[]);
    // A line from another CA's file (another audit key), far past this chain's head.
    let line = serde_json::json!({
        "seq": events.last().copied().unwrap_or(0) + 1000,
        "hash": "ab".repeat(32),
        "at": 1_795_000_000,
        // Base64 (of 72 bytes), so that only its signature tells it from this CA's lines.
        "signature": "MDAw".repeat(24),
    });
    let mut text = std::fs::read_to_string(&copy.checkpoints).unwrap_or_default();
    text.push_str(&format!("{line}\n"));
    std::fs::write(&copy.checkpoints, text).unwrap();
    let out = issue_on(
        &copy,
        &f.csr(KeyKind::P256),
        "CN=外来,serialNumber=110101199003071234",
    );
    out.assert_ok();
}

#[test]
fn a_server_started_on_a_cut_chain_reports_itself_degraded_and_refuses_certificates_over_http() {
    use common::http::{get, post_json, Server};
    let f = fixture();
    let copy = f.store_copy("cut-below-file-serve", &[]);
    let officer = f.bank_officer(&copy.config, "Cut chain bank");
    // The command's closing checkpoint covered its event: the newest is removed.
    cut_newest_event(&copy);

    let server = Server::start_config(f, &copy.config, &[]);
    let health = get(&server, "/healthz", None);
    assert_eq!(health.status, 200, "{}", health.body);
    assert_eq!(health.json()["status"], "degraded", "{}", health.body);
    assert_eq!(health.json()["audit"], "altered", "{}", health.body);
    let metrics = get(&server, "/metrics", None);
    assert!(
        metrics.body.contains("signet_audit_chain_altered 1"),
        "{}",
        metrics.body
    );
    let csr = std::fs::read_to_string(f.csr(KeyKind::P256)).unwrap();
    let r = post_json(
        &server,
        "/v1/certificates",
        Some(&officer),
        &serde_json::json!({"profile": "customer", "csr": csr, "subject": "CN=截断,serialNumber=110101199003071234"}),
    );
    assert_eq!(
        (r.status, r.code().as_str()),
        (500, "audit_chain_altered"),
        "{}",
        r.body
    );
    server.stop();
}

/// A store copy restored from a backup taken before its last two commands: the checkpoint
/// file still holds their checkpoints, which the chain no longer reaches (as after a restore
/// from last night's backup, or an asynchronous standby promoted). Returns the copy and the
/// chain's length after the restore.
fn restored_copy(name: &str) -> (StoreCopy, u64) {
    let f = fixture();
    let (copy, _) = intact_copy(name, 0, &[]);
    let backup = copy.db.with_extension("backup");
    open_db(&copy.db)
        .execute("VACUUM INTO ?1", [backup.to_str().unwrap()])
        .unwrap();
    let events = seqs(&open_db(&copy.db)).len() as u64;
    for _ in 0..2 {
        let csr = f.csr(KeyKind::P256);
        issue_on(&copy, &csr, "CN=恢复,serialNumber=110101199003071234").assert_ok();
    }
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", copy.db.display()));
    }
    std::fs::copy(&backup, &copy.db).unwrap();
    (copy, events)
}

/// `signet audit acknowledge` without `--confirm`: the listing, and its plan.
fn acknowledge_listing(copy: &StoreCopy) -> Out {
    fixture().signet_with(
        &copy.config,
        &[],
        &args!["audit", "acknowledge", "--reason", ACK_REASON],
    )
}

const ACK_REASON: &str = "restored from the nightly backup";

/// The plan a listing names (none when there is nothing to acknowledge).
fn plan_of(listing: &Out) -> String {
    listing
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("plan "))
        .unwrap_or("none")
        .to_string()
}

/// `signet audit acknowledge --confirm PLAN`.
fn acknowledge_plan(copy: &StoreCopy, plan: &str) -> Out {
    fixture().signet_with(
        &copy.config,
        &[],
        &args![
            "audit",
            "acknowledge",
            "--reason",
            ACK_REASON,
            "--confirm",
            plan
        ],
    )
}

/// The listing, then its plan confirmed.
fn acknowledge(copy: &StoreCopy) -> Out {
    acknowledge_plan(copy, &plan_of(&acknowledge_listing(copy)))
}

/// The newest event of a store copy.
fn newest_event(copy: &StoreCopy) -> i64 {
    *seqs(&open_db(&copy.db)).last().unwrap()
}

#[test]
fn a_loss_the_operator_acknowledges_verifies_again_and_issuance_resumes() {
    let f = fixture();
    let (copy, events) = restored_copy("ack-restore");
    assert_names_one_of(&verify(&copy), &[events as i64 + 1]);
    let csr = f.csr(KeyKind::P256);
    let subject = "CN=确认,serialNumber=110101199003071234";
    issue_on(&copy, &csr, subject)
        .assert_refused()
        .assert_stderr_mentions("signet audit acknowledge");

    // Without --confirm: the list, and nothing written.
    let file_before = std::fs::read(&copy.checkpoints).unwrap();
    let out = acknowledge_listing(&copy);
    out.assert_refused()
        .assert_stderr_mentions(&format!("--confirm {}", plan_of(&out)))
        .assert_stderr_mentions("stop every signet process of this CA");
    assert!(
        out.stdout.contains("past the chain's head"),
        "{}",
        out.describe()
    );
    assert_eq!(std::fs::read(&copy.checkpoints).unwrap(), file_before);
    verify(&copy).assert_refused();

    let out = acknowledge(&copy);
    out.assert_ok();
    assert!(
        out.stdout
            .contains("acknowledged: the chain is accepted up to event"),
        "{}",
        out.describe()
    );
    let out = verify(&copy);
    out.assert_ok();
    assert!(
        out.stdout.contains("acknowledged loss at event")
            && out.stdout.contains("restored from the nightly backup"),
        "{}",
        out.describe()
    );
    let logged: i64 = open_db(&copy.db)
        .query_row(
            "SELECT COUNT(*) FROM audit_events WHERE action = 'audit.loss_acknowledged'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(logged, 1);

    issue_on(&copy, &csr, subject).assert_ok();
    assert_checkpointed_to_the_head(&copy);
    // Acknowledged once: nothing more to acknowledge.
    let out = acknowledge(&copy);
    out.assert_ok();
    assert!(
        out.stdout.contains("nothing to acknowledge"),
        "{}",
        out.describe()
    );
}

#[test]
fn events_lost_again_below_an_acknowledged_head_break_the_chain_again() {
    let f = fixture();
    let (copy, _) = restored_copy("ack-lost-again");
    acknowledge(&copy).assert_ok();
    let head: i64 = open_db(&copy.db)
        .query_row(
            "SELECT seq FROM audit_events WHERE action = 'audit.loss_acknowledged'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    issue_on(
        &copy,
        &f.csr(KeyKind::P256),
        "CN=再失,serialNumber=110101199003071234",
    )
    .assert_ok();
    tamper(&copy)
        .execute("DELETE FROM audit_events WHERE seq >= ?1", [head])
        .unwrap();
    let out = verify(&copy);
    assert_names_one_of(&out, &[head]);
    out.assert_stderr_mentions("up to which a loss was acknowledged");

    // A second loss, acknowledged in turn, supersedes the first acknowledgement.
    let out = acknowledge(&copy);
    out.assert_ok();
    assert!(
        out.stdout.contains(&format!(
            "the acknowledgement up to event {head}: its head was lost again"
        )),
        "{}",
        out.describe()
    );
    verify(&copy).assert_ok();
    issue_on(
        &copy,
        &f.csr(KeyKind::P256),
        "CN=再失,serialNumber=110101199003071234",
    )
    .assert_ok();
    // The checkpoints of the lost events left the database: the new events at their numbers
    // are checkpointed in turn.
    assert_checkpointed_to_the_head(&copy);
}

/// `audit verify` passes and its newest checkpoint is of the newest event.
#[track_caller]
fn assert_checkpointed_to_the_head(copy: &StoreCopy) {
    let out = verify(copy);
    out.assert_ok();
    let newest = newest_event(copy);
    assert!(
        out.stdout.contains(&format!("last at event {newest} ")),
        "expected the newest checkpoint at event {newest}\n{}",
        out.describe()
    );
}

#[test]
fn a_confirmation_of_a_listing_the_chain_has_moved_past_is_refused() {
    let (copy, _) = restored_copy("ack-moved");
    let listed = plan_of(&acknowledge_listing(&copy));
    // A revocation goes on on the altered chain, and adds events the listing did not show.
    let serial: String = open_db(&copy.db)
        .query_row(
            "SELECT serial FROM certificates WHERE status = 'issued' LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    revoke_for_key_compromise(&copy, &serial).assert_ok();
    let file_before = std::fs::read(&copy.checkpoints).unwrap();
    acknowledge_plan(&copy, &listed)
        .assert_refused()
        .assert_stderr_mentions("no longer the one listed");
    assert_eq!(std::fs::read(&copy.checkpoints).unwrap(), file_before);
    acknowledge(&copy).assert_ok();
    verify(&copy).assert_ok();
}

#[test]
fn an_acknowledgement_whose_signature_does_not_cover_it_voids_nothing() {
    let (copy, _) = restored_copy("ack-forged");
    acknowledge(&copy).assert_ok();
    let text = std::fs::read_to_string(&copy.checkpoints).unwrap();
    assert!(text.contains("restored from the nightly backup"));
    std::fs::write(
        &copy.checkpoints,
        text.replace("restored from the nightly backup", "routine maintenance"),
    )
    .unwrap();
    verify(&copy)
        .assert_refused()
        .assert_stderr_mentions("signature the audit key did not make");
    // Nor does a process take it: the checkpoints it would void still stop issuance.
    issue_on(
        &copy,
        &fixture().csr(KeyKind::P256),
        "CN=伪造,serialNumber=110101199003071234",
    )
    .assert_refused()
    .assert_stderr_mentions("no longer holds what was appended and checkpointed");
}

#[test]
fn a_tail_rewritten_with_its_hashes_recomputed_is_listed_as_taken_on_the_databases_word() {
    let f = fixture();
    let (copy, _) = intact_copy("ack-rehashed", 0, &[]);
    // Two commands, each closed by a checkpoint of the head.
    let subject = "CN=重算,serialNumber=110101199003071234";
    issue_on(&copy, &f.csr(KeyKind::P256), subject).assert_ok();
    let first_head = *seqs(&open_db(&copy.db)).last().unwrap();
    issue_on(&copy, &f.csr(KeyKind::P256), subject).assert_ok();
    let events = seqs(&open_db(&copy.db));
    // An edit of the second command's first event, with the hashes after it recomputed: the
    // chain runs whole, and only the second command's checkpoint tells.
    let from = first_head + 1;
    assert!(from < *events.last().unwrap());
    let conn = tamper(&copy);
    let mut prev: Vec<u8> = conn
        .query_row(
            "SELECT hash FROM audit_events WHERE seq = ?1",
            [from - 1],
            |r| r.get(0),
        )
        .unwrap();
    for seq in from..=*events.last().unwrap() {
        let (at, mut actor, action, object, details, tenant): (i64, String, String, String, String, Option<String>) = conn
            .query_row(
                "SELECT at, actor, action, object, details, tenant FROM audit_events WHERE seq = ?1",
                [seq],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)),
            )
            .unwrap();
        if seq == from {
            actor = "cli:someone-else".into();
        }
        let event = signet::audit::AuditEvent {
            actor: actor.clone(),
            action,
            object,
            details,
            tenant,
        };
        let hash = signet::audit::chain_hash(&prev, seq as u64, at, &event).to_vec();
        conn.execute(
            "UPDATE audit_events SET actor = ?2, prev_hash = ?3, hash = ?4 WHERE seq = ?1",
            rusqlite::params![seq, actor, prev, hash],
        )
        .unwrap();
        prev = hash;
    }
    assert_names_one_of(&verify(&copy), &[*events.last().unwrap()]);
    let out = acknowledge_listing(&copy);
    out.assert_refused();
    assert!(
        out.stdout.contains(&format!(
            "events {from} to {} are then taken on the database's word",
            events.last().unwrap()
        )) && out.stdout.contains("1 checkpoint disagrees"),
        "{}",
        out.describe()
    );
}

#[test]
fn a_chain_broken_inside_is_not_acknowledged() {
    let (copy, events) = intact_copy("ack-edited", 3, &[]);
    tamper(&copy)
        .execute(
            "UPDATE audit_events SET actor = 'cli:someone-else' WHERE seq = ?1",
            [events[1]],
        )
        .unwrap();
    let file_before = std::fs::read(&copy.checkpoints).unwrap();
    let out = acknowledge(&copy);
    out.assert_refused()
        .assert_stderr_mentions("cannot acknowledge a loss");
    assert_eq!(std::fs::read(&copy.checkpoints).unwrap(), file_before);
}

#[test]
fn a_server_that_ran_through_an_acknowledged_loss_signs_no_evidence_of_it_as_it_stops() {
    use common::http::{post_json, Server};
    let f = fixture();
    let copy = f.store_copy(
        "ack-meanwhile",
        &[("audit", "checkpoint_every", "1000000000".into())],
    );
    let officer = f.bank_officer(&copy.config, "Meanwhile bank");
    let server = Server::start_config(f, &copy.config, &[]);
    // A command checkpoints its events as it ends ...
    let subject = "CN=期间,serialNumber=110101199003071234";
    issue_on(&copy, &f.csr(KeyKind::P256), subject).assert_ok();
    let checkpointed = newest_event(&copy);
    // ... and the server appends events it has not checkpointed yet.
    let csr = std::fs::read_to_string(f.csr(KeyKind::P256)).unwrap();
    let r = post_json(
        &server,
        "/v1/certificates",
        Some(&officer),
        &serde_json::json!({"profile": "customer", "csr": csr, "subject": subject}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    assert!(newest_event(&copy) > checkpointed);
    // The database loses both; the operator acknowledges the loss without stopping the server.
    tamper(&copy)
        .execute("DELETE FROM audit_events WHERE seq >= ?1", [checkpointed])
        .unwrap();
    acknowledge(&copy).assert_ok();
    verify(&copy).assert_ok();
    let file_before = std::fs::read(&copy.checkpoints).unwrap();
    // As it stops, the server finds the acknowledgement: it signs nothing of what it
    // remembers (events of the lost chain), which would break the chain again.
    let log = server.stop_and_log();
    assert_eq!(
        std::fs::read(&copy.checkpoints).unwrap(),
        file_before,
        "the server signed a checkpoint as it stopped\n{log}"
    );
    assert!(log.contains("while this process ran"), "{log}");
    verify(&copy).assert_ok();
}

#[test]
fn acknowledge_refuses_a_reason_that_is_empty_or_not_one_line_of_plain_text() {
    let f = fixture();
    for reason in ["", "  ", "restored\nfrom backup", "restored \u{202e}pukcab"] {
        let out = f.signet(&args!["audit", "acknowledge", "--reason", reason]);
        assert_eq!(out.status.code(), Some(64), "{}", out.describe());
        assert!(
            out.stderr.contains("reason"),
            "the refusal should name the reason\n{}",
            out.describe()
        );
        out.assert_no_panic();
    }
}
