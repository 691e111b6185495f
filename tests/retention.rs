//! Retention (PRC Electronic Signature Law: records are kept at least five years after a
//! certificate ceases to be valid): nothing in the API or the CLI deletes certificates,
//! revocations or audit events. Signet has no purge command at all.
//!
//! The one thing the service forgets by itself is a replay-guard key two replay windows after
//! it was first seen. That key is not evidence: each verification's audit event keeps the
//! instruction's digest, and the forgetting is itself audited.

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use common::http::Server;
use common::{fixture, now_unix, open_db, rfc3339, run, SIGNET_BIN};

/// Words that name a removal.
const REMOVING: [&str; 9] = [
    "delete", "purge", "remove", "prune", "erase", "truncate", "drop", "wipe", "clear",
];

fn removes(text: &str) -> bool {
    let t = text.to_ascii_lowercase();
    REMOVING.iter().any(|w| t.contains(w))
}

#[test]
fn no_documented_api_route_deletes_anything() {
    let routes = signet::api::V1_ROUTES;
    assert!(
        routes.len() >= 15,
        "the route table is there ({} routes)",
        routes.len()
    );
    for r in routes {
        assert_ne!(
            r.method.to_ascii_lowercase(),
            "delete",
            "DELETE {} is a way to remove records",
            r.path
        );
        assert!(
            !removes(r.path) && !removes(r.summary),
            "{} {} ({}) reads like a removal",
            r.method,
            r.path,
            r.summary
        );
    }
}

#[test]
fn the_running_service_answers_delete_on_every_route_with_405_or_404() {
    let s = Server::start(fixture());
    let mut paths: BTreeSet<String> = signet::api::V1_ROUTES
        .iter()
        .map(|r| {
            r.path
                .split('/')
                .map(|seg| if seg.starts_with('{') { "0a" } else { seg })
                .collect::<Vec<_>>()
                .join("/")
        })
        .collect();
    paths.extend(["/v1/audit-events", "/v1/certificates", "/ca/root.der"].map(String::from));
    for p in paths {
        let status = match common::http::agent().delete(&s.url(&p)).call() {
            Ok(r) => r.status(),
            Err(ureq::Error::Status(c, _)) => c,
            Err(e) => panic!("DELETE {p}: {e}"),
        };
        assert!(
            status == 405 || status == 404,
            "DELETE {p} answered {status}"
        );
    }
}

/// Every command path of the CLI, from `signet --help` down through each subcommand's help.
fn command_tree() -> Vec<Vec<String>> {
    fn walk(path: Vec<String>, out: &mut Vec<Vec<String>>) {
        let mut cmd = Command::new(SIGNET_BIN);
        cmd.args(&path).arg("--help");
        let help = run(cmd);
        assert!(help.success(), "{}", help.describe());
        let mut in_commands = false;
        for line in help.stdout.lines() {
            if line.trim_end() == "Commands:" {
                in_commands = true;
                continue;
            }
            if in_commands {
                if !line.starts_with("  ") {
                    in_commands = false;
                    continue;
                }
                let name = line.split_whitespace().next().unwrap_or_default();
                if name.is_empty() || name == "help" {
                    continue;
                }
                let mut sub = path.clone();
                sub.push(name.to_string());
                out.push(sub.clone());
                walk(sub, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(Vec::new(), &mut out);
    out
}

#[test]
fn no_cli_command_deletes_certificates_revocations_or_audit_events() {
    let tree = command_tree();
    let names: Vec<String> = tree.iter().map(|p| p.join(" ")).collect();
    for known in ["ca upgrade", "credential rotate", "audit verify", "revoke"] {
        assert!(
            names.iter().any(|n| n == known),
            "walked the tree: {names:?}"
        );
    }
    for path in &tree {
        let mut cmd = Command::new(SIGNET_BIN);
        cmd.args(path).arg("--help");
        let help = run(cmd);
        let first = help.stdout.lines().next().unwrap_or_default().to_string();
        assert!(
            !removes(path.last().unwrap()) && !removes(&first),
            "`signet {}` ({first}) reads like a removal",
            path.join(" ")
        );
    }
}

/// The replay window of the signature policy the fixture serves with.
fn replay_window_secs() -> i64 {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/payment-signature.toml");
    let policy: toml::Value = toml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    policy["replay"]["window_secs"].as_integer().unwrap()
}

/// (table, key column) of the replay guard.
const REPLAY_TABLES: [(&str, &str); 2] = [
    ("replay_instructions", "digest"),
    ("replay_instruction_ids", "instruction_id"),
];

#[test]
fn the_service_forgets_replay_guard_keys_two_windows_after_they_were_first_seen_and_audits_it() {
    let f = fixture();
    let copy = f.store_copy("replay-expiry", &[]);
    let now = now_unix() as i64;
    let seen_before = now - 2 * replay_window_secs();
    {
        let db = open_db(&copy.db);
        for (table, column) in REPLAY_TABLES {
            for (key, first_seen) in [
                ("old", seen_before - 1),
                ("two-windows", seen_before),
                ("recent", now - 10),
            ] {
                db.execute(
                    &format!("INSERT INTO {table} (signer, {column}, first_seen) VALUES ('retention', ?1, ?2)"),
                    rusqlite::params![key, first_seen],
                )
                .unwrap();
            }
        }
    }
    let forgets = |db: &rusqlite::Connection| -> Vec<(String, String, String)> {
        db.prepare("SELECT actor, object, details FROM audit_events WHERE action = 'replay.forget'")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    assert!(forgets(&open_db(&copy.db)).is_empty());

    // The service sweeps once at start, then every ten minutes.
    let server = Server::start_config(f, &copy.config, &[("SIGNET_FAKE_NOW", now.to_string())]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let events = loop {
        let events = forgets(&open_db(&copy.db));
        if !events.is_empty() || Instant::now() > deadline {
            break events;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    server.stop();

    assert_eq!(events.len(), 1, "one pass forgot them all: {events:?}");
    let (actor, object, details) = &events[0];
    assert_eq!(
        (actor.as_str(), object.as_str()),
        ("service:replay-sweep", "replay-guard")
    );
    let details: serde_json::Value = serde_json::from_str(details).unwrap();
    assert_eq!(
        details["keys"], 2,
        "the old digest and the old id: {details}"
    );
    assert_eq!(details["first_seen_before"], rfc3339(seen_before as u64));
    let db = open_db(&copy.db);
    for (table, column) in REPLAY_TABLES {
        let kept: Vec<String> = db
            .prepare(&format!(
                "SELECT {column} FROM {table} WHERE signer = 'retention' ORDER BY first_seen"
            ))
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(kept, ["two-windows", "recent"], "{table}");
    }
    f.signet_with(&copy.config, &[], &["audit", "verify"])
        .assert_ok();
}
