//! PostgreSQL stops under a running `signet serve`: requests are refused with 503
//! `store_unavailable` within the configured connection wait, nothing is signed, `/healthz`
//! says so, and service resumes by itself when the database returns. The database is a
//! private server of this test (it stops and starts it).

mod common;

use std::time::{Duration, Instant};

use common::http::{get, post_json, Server};
use common::{fixture_on_server, Fixture, KeyKind, PrivatePostgres};
use serde_json::json;

fn cli_ok(f: &Fixture, a: &[&str]) -> String {
    let out = f.signet(a);
    out.assert_ok();
    out.stdout.trim().to_string()
}

fn metric(s: &Server, name: &str) -> f64 {
    let body = get(s, "/metrics", None).body;
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
        .trim()
        .parse()
        .unwrap()
}

fn issue(f: &Fixture, s: &Server, token: &str, n: u32) -> common::http::Reply {
    let csr = std::fs::read_to_string(f.csr(KeyKind::P256)).unwrap();
    post_json(
        s,
        "/v1/certificates",
        Some(token),
        &json!({"profile": "customer", "csr": csr, "subject": format!("CN=客户{n},serialNumber=PGO{n:05}")}),
    )
}

#[test]
fn while_postgres_is_down_requests_get_503_and_nothing_is_signed_then_service_resumes() {
    let pg = PrivatePostgres::start_new("pg-outage");
    let f = fixture_on_server(&pg.url());
    cli_ok(f, &["tenant", "add", "Bank A"]);
    let officer = cli_ok(
        f,
        &[
            "credential",
            "add",
            "--tenant",
            "Bank A",
            "--role",
            "ra-officer",
        ],
    );
    let s = Server::start(f);
    let ok = issue(f, &s, &officer, 1);
    assert_eq!(ok.status, 201, "{}", ok.body);
    let serial = ok.json()["serial"].as_str().unwrap().to_string();

    pg.stop();
    let signs_before = metric(&s, "signet_hsm_sign_seconds_count");
    let started = Instant::now();
    let refused = issue(f, &s, &officer, 2);
    let took = started.elapsed();
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert_eq!(refused.code(), "store_unavailable", "{}", refused.body);
    assert!(
        took < Duration::from_secs(15),
        "refusal took {took:?}: bounded by [store].connect_timeout_ms"
    );
    let revoke = post_json(
        &s,
        &format!("/v1/certificates/{serial}/revoke"),
        Some(&officer),
        &json!({"reason": "keyCompromise"}),
    );
    assert_eq!(revoke.status, 503, "{}", revoke.body);
    let health = get(&s, "/healthz", None);
    assert_eq!(health.status, 503, "{}", health.body);
    assert_eq!(health.json()["store"], "unavailable");
    assert_eq!(
        metric(&s, "signet_hsm_sign_seconds_count"),
        signs_before,
        "the HSM signed something while the store was down"
    );

    pg.start();
    let deadline = Instant::now() + Duration::from_secs(20);
    let resumed = loop {
        let r = issue(f, &s, &officer, 3);
        if r.status == 201 || Instant::now() > deadline {
            break r;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(resumed.status, 201, "no recovery: {}", resumed.body);
    assert_eq!(get(&s, "/healthz", None).status, 200);
    // The revocation refused during the outage was not applied.
    let status = get(&s, &format!("/v1/certificates/{serial}"), Some(&officer));
    assert_eq!(status.json()["status"], "good", "{}", status.body);
    drop(s);
    f.signet(&["audit", "verify"]).assert_ok();
}
