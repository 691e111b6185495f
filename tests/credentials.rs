//! Bearer credentials: expiry, rotation, and the limits on failed authentications, against
//! a real `signet serve` (plain HTTP) on the fixture's SoftHSM2 token and SQLite store.

mod common;

use std::path::PathBuf;
use std::sync::OnceLock;

use common::http::{get, Server};
use common::{fixture, now_unix, open_db, Fixture};

const BANK: &str = "Credential Bank";

fn bank() -> &'static str {
    static ADDED: OnceLock<()> = OnceLock::new();
    ADDED.get_or_init(|| {
        fixture().signet(&["tenant", "add", BANK]).assert_ok();
    });
    BANK
}

/// `signet credential add`: (token from stdout, credential id from stderr).
fn add_credential(f: &Fixture, env: &[(&str, String)], extra: &[&str]) -> (String, String) {
    let mut a = vec!["credential", "add", "--tenant", bank(), "--role", "auditor"];
    a.extend_from_slice(extra);
    let out = f.signet_with(&f.config, env, &a);
    out.assert_ok();
    let id = out
        .stderr
        .split_whitespace()
        .skip_while(|w| *w != "credential")
        .nth(1)
        .expect("credential id on stderr")
        .to_string();
    (out.stdout.trim().to_string(), id)
}

/// The fixture's config with extra TOML appended (a new section).
fn config_with(f: &Fixture, name: &str, extra: &str) -> PathBuf {
    let mut text = std::fs::read_to_string(&f.config).unwrap();
    text.push('\n');
    text.push_str(extra);
    let p = f.path(&format!("{name}.toml"));
    std::fs::write(&p, text).unwrap();
    p
}

/// Audit events after `after`: (action, object, details).
fn audit_since(f: &Fixture, after: i64) -> Vec<(String, String, String)> {
    let conn = open_db(&f.db);
    let mut st = conn
        .prepare("SELECT action, object, details FROM audit_events WHERE seq > ?1 ORDER BY seq")
        .unwrap();
    st.query_map([after], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn audit_head(f: &Fixture) -> i64 {
    open_db(&f.db)
        .query_row("SELECT COALESCE(MAX(seq), 0) FROM audit_events", [], |r| {
            r.get(0)
        })
        .unwrap()
}

#[test]
fn a_new_token_names_its_credential_and_expires_after_365_days_by_default() {
    let f = fixture();
    let (token, id) = add_credential(f, &[], &[]);
    let hex = id
        .strip_prefix("cred_")
        .expect("credential ids start with cred_");
    assert!(
        token.starts_with(&format!("sgt_{hex}_")),
        "token {} does not name {id}",
        &token[..4]
    );
    let (created, expires): (i64, Option<i64>) = open_db(&f.db)
        .query_row(
            "SELECT created_at, expires_at FROM credentials WHERE id = ?1",
            [&id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(expires, Some(created + 365 * 86_400));
}

#[test]
fn an_expired_token_gets_401_token_expired() {
    let f = fixture();
    // Made three days ago for one day.
    let past = (now_unix() - 3 * 86_400).to_string();
    let (token, _) = add_credential(f, &[("SIGNET_FAKE_NOW", past)], &["--days", "1"]);
    let s = Server::start(f);
    let r = get(&s, "/v1/audit-events", Some(&token));
    assert_eq!(
        (r.status, r.code().as_str()),
        (401, "token_expired"),
        "{}",
        r.body
    );
    assert!(!r.body.contains(&token));
}

#[test]
fn rotation_prints_the_new_token_once_and_the_old_one_stops_working() {
    let f = fixture();
    let (old, id) = add_credential(f, &[], &[]);
    let before = audit_head(f);
    let out = f.signet(&["credential", "rotate", "--id", &id]);
    out.assert_ok();
    let new = out.stdout.trim().to_string();
    assert_eq!(
        out.stdout.lines().count(),
        1,
        "stdout holds the token alone"
    );
    assert!(new.starts_with("sgt_") && new != old);
    assert!(!out.stderr.contains(&new), "the token goes to stdout only");

    let s = Server::start(f);
    let r = get(&s, "/v1/audit-events", Some(&old));
    assert_eq!((r.status, r.code().as_str()), (401, "unauthenticated"));
    let r = get(&s, "/v1/audit-events", Some(&new));
    assert_eq!(r.status, 200, "{}", r.body);

    let rotated: Vec<_> = audit_since(f, before)
        .into_iter()
        .filter(|(a, o, _)| a == "credential.rotate" && *o == id)
        .collect();
    assert_eq!(rotated.len(), 1, "one audit event for the rotation");
    assert!(!rotated[0].2.contains(&new) && !rotated[0].2.contains(&old));
}

#[test]
fn a_revoked_credential_cannot_be_rotated_back_to_life() {
    let f = fixture();
    let (_, id) = add_credential(f, &[], &[]);
    f.signet(&["credential", "revoke", "--tenant", bank(), "--id", &id])
        .assert_ok();
    let out = f.signet(&["credential", "rotate", "--id", &id]);
    out.assert_refused().assert_stderr_mentions("revoked");
    assert!(out.stdout.trim().is_empty(), "no token printed");
}

#[test]
fn failures_from_one_address_are_limited_with_429_retry_after_and_one_audit_event() {
    let f = fixture();
    let (good, _) = add_credential(f, &[], &[]);
    let config = config_with(
        f,
        "address-limit",
        "[auth]\nmax_failures_per_address = 3\nmax_failures_per_credential = 100\nwindow_secs = 600\nlockout_secs = 120\n",
    );
    let s = Server::start_config(f, &config, &[]);
    let before = audit_head(f);
    // Unique unknown credential ids mark this test's failures in the shared audit log.
    let marker = format!("{:016x}", now_unix() as u128 * 1000 + 17);
    let bad = format!("sgt_{marker}_not-the-secret");
    for _ in 0..3 {
        let r = get(&s, "/v1/audit-events", Some(&bad));
        assert_eq!((r.status, r.code().as_str()), (401, "unauthenticated"));
    }
    for token in [bad.as_str(), bad.as_str(), good.as_str(), ""] {
        let r = get(
            &s,
            "/v1/audit-events",
            Some(token).filter(|t| !t.is_empty()),
        );
        assert_eq!(
            (r.status, r.code().as_str()),
            (429, "rate_limited"),
            "{}",
            r.body
        );
        let wait: u64 = r
            .retry_after
            .as_deref()
            .expect("Retry-After header")
            .parse()
            .expect("Retry-After in seconds");
        assert!((1..=120).contains(&wait), "Retry-After {wait}");
    }
    let events = audit_since(f, before);
    let fails = events
        .iter()
        .filter(|(a, _, d)| a == "auth.fail" && d.contains(&marker))
        .count();
    let trips = events
        .iter()
        .filter(|(a, _, d)| a == "auth.rate_limited" && d.contains(&marker))
        .count();
    assert_eq!(
        (fails, trips),
        (3, 1),
        "each failure below the limit and the trip are audited, refusals while locked are not"
    );
}

#[test]
fn guessing_at_one_credential_locks_it_from_that_address_and_not_the_others() {
    let f = fixture();
    let (target, id) = add_credential(f, &[], &[]);
    let (other, _) = add_credential(f, &[], &[]);
    let config = config_with(
        f,
        "credential-limit",
        "[auth]\nmax_failures_per_address = 1000\nmax_failures_per_credential = 3\nwindow_secs = 600\nlockout_secs = 120\n",
    );
    let s = Server::start_config(f, &config, &[]);
    let hex = id.strip_prefix("cred_").unwrap();
    let guess = format!("sgt_{hex}_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
    for _ in 0..3 {
        let r = get(&s, "/v1/audit-events", Some(&guess));
        assert_eq!(r.status, 401, "{}", r.body);
    }
    let r = get(&s, "/v1/audit-events", Some(&target));
    assert_eq!(
        (r.status, r.code().as_str()),
        (429, "rate_limited"),
        "the right token waits out the lockout too"
    );
    let r = get(&s, "/v1/audit-events", Some(&other));
    assert_eq!(
        r.status, 200,
        "another credential is not locked: {}",
        r.body
    );
    // The credential's id is not secret: the guesses lock it for the address they came from,
    // not for its holder elsewhere.
    assert_eq!(
        get_from(f, "127.0.0.2", &s, "/v1/audit-events", &target),
        200,
        "guesses from 127.0.0.1 locked the right token out at another address"
    );
}

/// The status of `GET path` with `token`, sent from the loopback address `from` (curl binds
/// it; the token goes through a header file, not argv).
fn get_from(f: &Fixture, from: &str, s: &Server, path: &str, token: &str) -> u16 {
    let header = f.path("from-address-auth-header");
    std::fs::write(&header, format!("Authorization: Bearer {token}\n")).unwrap();
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--interface",
            from,
            "-H",
        ])
        .arg(format!("@{}", header.display()))
        .arg(s.url(path))
        .output()
        .expect("run curl");
    let _ = std::fs::remove_file(&header);
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("curl: {}", String::from_utf8_lossy(&out.stderr)))
}
