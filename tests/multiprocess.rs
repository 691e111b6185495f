//! Two `signet serve` processes sharing one PostgreSQL database and one token: issuing,
//! revoking and verifying through both at once leaves unique serials, one CRL-number
//! sequence per issuer, one audit chain that verifies, and a replay guard that holds
//! across them. The load runs once; each test checks one property of its outcome.

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Barrier, OnceLock};
use std::thread;

use common::http::{base64_std, get_bytes, post_json, Server};
use common::{openssl, postgres_fixture, CrlText, Fixture, KeyKind};
use serde_json::json;

const CLIENTS: usize = 6;
const ISSUES_PER_CLIENT: usize = 8;

struct Outcome {
    servers: [Server; 2],
    /// (serial, PEM) of every certificate a client received.
    issued: Vec<(String, String)>,
    revoked: Vec<String>,
    /// The replay verdict of each of the concurrent verifications of one instruction.
    replay_verdicts: Vec<bool>,
}

/// What one client thread saw: certificates received (serial, PEM), serials it revoked, and
/// whether its verification of the shared instruction was reported as a replay.
type ClientResult = (Vec<(String, String)>, Vec<String>, bool);

/// The customer CA's CRL as one server serves it.
fn served_crl(f: &Fixture, s: &Server) -> CrlText {
    let (status, _, bytes) = get_bytes(s, "/crl/customer.crl");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&bytes));
    let der = f.path("customer.crl");
    std::fs::write(&der, bytes).unwrap();
    let text = openssl(&args![
        "crl", "-inform", "DER", "-in", &der, "-noout", "-text"
    ]);
    text.assert_ok();
    CrlText::parse(&text.stdout)
}

fn cli_ok(f: &Fixture, a: &[&str]) -> String {
    let out = f.signet(a);
    out.assert_ok();
    out.stdout.trim().to_string()
}

/// A detached CMS signature by a fresh customer of bank A over `instruction`.
fn signed_instruction(f: &Fixture, instruction: &[u8]) -> Vec<u8> {
    let (key, csr) = f.key_and_csr(KeyKind::P256);
    let cert = f
        .issue_with(
            &f.config,
            "customer",
            &csr,
            "CN=付款人,serialNumber=MP0001",
            &["--tenant", "Bank A"],
        )
        .leaf;
    let instr = f.path("payment.json");
    std::fs::write(&instr, instruction).unwrap();
    let sig = f.path("payment.p7s");
    openssl(&args![
        "cms", "-sign", "-binary", "-md", "sha256", "-in", &instr, "-signer", &cert, "-inkey",
        &key, "-outform", "DER", "-out", &sig
    ])
    .assert_ok();
    std::fs::read(sig).unwrap()
}

fn outcome() -> &'static Outcome {
    static OUTCOME: OnceLock<Outcome> = OnceLock::new();
    OUTCOME.get_or_init(|| {
        let f = postgres_fixture();
        cli_ok(f, &["tenant", "add", "Bank A"]);
        cli_ok(f, &["ca", "upgrade"]);
        let officer = cli_ok(
            f,
            &["credential", "add", "--tenant", "Bank A", "--role", "ra-officer"],
        );
        let gateway = cli_ok(
            f,
            &["credential", "add", "--tenant", "Bank A", "--role", "gateway"],
        );
        let instruction = br#"{"instruction_id":"MP-1","amount":"10.00"}"#;
        let signature = signed_instruction(f, instruction);
        let csrs: Vec<String> = (0..CLIENTS * ISSUES_PER_CLIENT)
            .map(|_| std::fs::read_to_string(f.csr(KeyKind::P256)).unwrap())
            .collect();
        let servers = [Server::start(f), Server::start(f)];
        let barrier = Arc::new(Barrier::new(CLIENTS));
        let results: Vec<ClientResult> = thread::scope(|scope| {
            let handles: Vec<_> = (0..CLIENTS)
                .map(|c| {
                    let (servers, barrier, csrs) = (&servers, barrier.clone(), &csrs);
                    let (officer, gateway, signature) = (&officer, &gateway, &signature);
                    scope.spawn(move || {
                        barrier.wait();
                        // Every client verifies the same instruction first, all at once.
                        let v = post_json(
                            &servers[c % 2],
                            "/v1/verifications",
                            Some(gateway),
                            &json!({"instruction": base64_std(instruction), "signature": base64_std(signature)}),
                        );
                        assert_eq!(v.status, 200, "{}", v.body);
                        let replayed = !v.json()["replay"].is_null();
                        let mut issued = Vec::new();
                        let mut revoked = Vec::new();
                        for i in 0..ISSUES_PER_CLIENT {
                            let n = c * ISSUES_PER_CLIENT + i;
                            let r = post_json(
                                &servers[n % 2],
                                "/v1/certificates",
                                Some(officer),
                                &json!({"profile": "customer", "csr": csrs[n], "subject": format!("CN=客户{n},serialNumber=MP{n:06}")}),
                            );
                            assert_eq!(r.status, 201, "{}", r.body);
                            let body = r.json();
                            let serial = body["serial"].as_str().unwrap().to_string();
                            issued.push((serial.clone(), body["certificate"].as_str().unwrap().to_string()));
                            if i % 3 == 0 {
                                // Revoked through the other process.
                                let r = post_json(
                                    &servers[(n + 1) % 2],
                                    &format!("/v1/certificates/{serial}/revoke"),
                                    Some(officer),
                                    &json!({"reason": "keyCompromise"}),
                                );
                                assert_eq!(r.status, 200, "{}", r.body);
                                revoked.push(serial);
                            }
                        }
                        (issued, revoked, replayed)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut outcome = Outcome {
            servers,
            issued: Vec::new(),
            revoked: Vec::new(),
            replay_verdicts: Vec::new(),
        };
        for (issued, revoked, replayed) in results {
            outcome.issued.extend(issued);
            outcome.revoked.extend(revoked);
            outcome.replay_verdicts.push(replayed);
        }
        outcome
    })
}

#[test]
fn certificates_issued_through_both_processes_have_unique_serials_and_are_all_stored() {
    let o = outcome();
    let f = postgres_fixture();
    let serials: HashSet<&str> = o.issued.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(
        serials.len(),
        CLIENTS * ISSUES_PER_CLIENT,
        "a serial was issued twice"
    );
    let store = f.open_store();
    for (serial, pem) in &o.issued {
        let rec = store.certificate(serial).unwrap().expect("stored");
        let der = rec.cert_der.expect("signed certificate stored");
        let block = pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect::<String>();
        assert_eq!(base64_std(&der), block, "stored DER differs for {serial}");
    }
}

#[test]
fn revocations_through_either_process_are_on_the_crl_both_serve() {
    let o = outcome();
    let f = postgres_fixture();
    for s in &o.servers {
        // The refresh after a revocation is debounced: wait for a CRL that lists them all.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let crl = served_crl(f, s);
            let missing: Vec<&String> = o
                .revoked
                .iter()
                .filter(|r| crl.entry(r).is_none())
                .collect();
            if missing.is_empty() {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{} still serves a CRL without {missing:?}",
                s.base
            );
            std::thread::sleep(std::time::Duration::from_millis(300));
        }
    }
}

#[test]
fn crl_numbers_come_from_one_gapless_sequence_shared_by_the_processes() {
    let o = outcome();
    let f = postgres_fixture();
    // Four more processes make CRLs of the same issuer at once, beside the two servers.
    thread::scope(|scope| {
        for i in 0..4 {
            scope.spawn(move || {
                let out = f.path(&format!("cli-{i}.crl"));
                f.signet(&args!["crl", "--issuer", "customer", "--out", &out])
                    .assert_ok();
            });
        }
    });
    let served: Vec<u128> = o
        .servers
        .iter()
        .map(|s| served_crl(f, s).number.expect("CRL number"))
        .collect();
    let mut db = postgres::Client::connect(f.store_url.as_deref().unwrap(), postgres::NoTls)
        .expect("connect to the test database");
    let read_numbers = |db: &mut postgres::Client| -> Vec<i64> {
        db.query(
            "SELECT number FROM crls WHERE issuer = 'customer' AND shard = -1 ORDER BY number",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
    };
    // The servers make theirs after the revocations of the load, once their debounce has
    // passed: that may come after the four processes above have finished.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let numbers = loop {
        let n = read_numbers(&mut db);
        if n.len() >= 5 || std::time::Instant::now() >= deadline {
            break n;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert!(
        numbers.len() >= 5,
        "every process made its CRL: {numbers:?}"
    );
    assert_eq!(
        numbers,
        (1..=numbers.len() as i64).collect::<Vec<_>>(),
        "one gapless sequence"
    );
    for n in served {
        assert!(
            numbers.contains(&(n as i64)),
            "served CRL #{n} is not in the sequence"
        );
    }
}

#[test]
fn an_instruction_verified_through_both_processes_at_once_is_new_exactly_once() {
    let o = outcome();
    let fresh = o.replay_verdicts.iter().filter(|r| !**r).count();
    assert_eq!(
        fresh, 1,
        "verdicts (true = replay): {:?}",
        o.replay_verdicts
    );
}

#[test]
fn the_audit_chain_written_by_both_processes_verifies() {
    let _ = outcome();
    let f = postgres_fixture();
    let out = f.signet(&["audit", "verify"]);
    out.assert_ok();
}
