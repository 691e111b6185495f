//! Retention (PRC Electronic Signature Law: records are kept at least five years after a
//! certificate ceases to be valid): nothing in the API or the CLI deletes certificates,
//! revocations or audit events. Signet has no purge command at all.

mod common;

use std::collections::BTreeSet;
use std::process::Command;

use common::http::Server;
use common::{fixture, run, SIGNET_BIN};

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
