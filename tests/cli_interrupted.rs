//! Record before sign: an issuance interrupted between recording the
//! to-be-signed certificate and signing it (fault hook SIGNET_FAULT=after-record)
//! stays pending until the issuance timeout, then is voided and its serial is
//! listed on the issuer's next CRL. A CRL recorded by another process and not yet signed
//! is waited for by a request for the CRL, for a while.
//!
//! These tests move the clock, so each works on its own copy of the store.

mod common;

use std::time::Duration;

use common::*;
use signet::ca::IssuerId;

/// Runs an issuance that stops after recording; returns its serial.
fn interrupted_issue(f: &Fixture, copy: &StoreCopy, profile: Profile, subject: &str) -> String {
    let csr = f.csr(KeyKind::P256);
    let out_file = f.path("interrupted.pem");
    let out = f.signet_with(
        &copy.config,
        &[("SIGNET_FAULT", "after-record".to_string())],
        &args![
            "issue",
            "--profile",
            profile.name(),
            "--csr",
            &csr,
            "--subject",
            subject,
            "--out",
            &out_file
        ],
    );
    out.assert_refused();
    assert!(
        !std::fs::read_to_string(&out_file)
            .unwrap_or_default()
            .contains("BEGIN CERTIFICATE"),
        "interrupted issuance wrote a certificate\n{}",
        out.describe()
    );
    let serial = serial_from_stderr(&out)
        .unwrap_or_else(|| panic!("no `serial <hex>` line on stderr\n{}", out.describe()));
    assert_eq!(
        cert_status(&copy.db, &serial).as_deref(),
        Some("pending"),
        "interrupted issuance is not recorded as pending\n{}",
        out.describe()
    );
    serial
}

#[test]
fn interrupted_issuance_is_voided_after_the_timeout_and_listed_on_the_next_crl() {
    let f = fixture();
    let copy = f.store_copy("voided", &[]);
    let serial = interrupted_issue(
        f,
        &copy,
        Profile::Customer,
        "CN=张三,serialNumber=110101199003071234",
    );
    let later = now_unix() + ISSUANCE_TIMEOUT_SECS + 10;
    let crl = f.crl_with(
        &copy.config,
        &[("SIGNET_FAKE_NOW", later.to_string())],
        "customer",
    );
    assert_eq!(cert_status(&copy.db, &serial).as_deref(), Some("void"));
    let text = f.crl_text(&crl, &f.issuer_bundle("customer"));
    assert!(
        text.entry(&serial).is_some(),
        "voided serial {serial} not on the next CRL:\n{}",
        text.text
    );
}

#[test]
fn interrupted_teller_issuance_is_listed_on_the_teller_crl_only() {
    let f = fixture();
    let copy = f.store_copy("voided-teller", &[]);
    let serial = interrupted_issue(
        f,
        &copy,
        Profile::Teller,
        "CN=李四,serialNumber=E0012345,OU=Beijing Haidian Branch",
    );
    let later = [(
        "SIGNET_FAKE_NOW",
        (now_unix() + ISSUANCE_TIMEOUT_SECS + 10).to_string(),
    )];
    let teller = f.crl_text(
        &f.crl_with(&copy.config, &later, "teller"),
        &f.issuer_bundle("teller"),
    );
    assert!(
        teller.entry(&serial).is_some(),
        "voided serial not on the teller CRL:\n{}",
        teller.text
    );
    let customer = f.crl_text(
        &f.crl_with(&copy.config, &later, "customer"),
        &f.issuer_bundle("customer"),
    );
    assert!(
        customer.entry(&serial).is_none(),
        "teller serial on the customer CRL"
    );
}

#[test]
fn interrupted_issuance_stays_pending_before_the_timeout() {
    let f = fixture();
    let copy = f.store_copy("pending", &[]);
    let serial = interrupted_issue(
        f,
        &copy,
        Profile::Customer,
        "CN=张三,serialNumber=110101199003071234",
    );
    let soon = now_unix() + ISSUANCE_TIMEOUT_SECS - 30;
    let crl = f.crl_with(
        &copy.config,
        &[("SIGNET_FAKE_NOW", soon.to_string())],
        "customer",
    );
    assert_eq!(cert_status(&copy.db, &serial).as_deref(), Some("pending"));
    let text = f.crl_text(&crl, &f.issuer_bundle("customer"));
    assert!(
        text.entry(&serial).is_none(),
        "pending serial {serial} is already on the CRL:\n{}",
        text.text
    );
}

#[test]
fn audit_log_of_a_store_with_a_voided_issuance_verifies() {
    let f = fixture();
    let copy = f.store_copy("voided-audit", &[]);
    interrupted_issue(
        f,
        &copy,
        Profile::Customer,
        "CN=张三,serialNumber=110101199003071234",
    );
    let later = [(
        "SIGNET_FAKE_NOW",
        (now_unix() + ISSUANCE_TIMEOUT_SECS + 10).to_string(),
    )];
    f.crl_with(&copy.config, &later, "customer");
    f.signet_with(&copy.config, &later, &args!["audit", "verify"])
        .assert_ok();
}

#[test]
fn a_server_that_voided_interrupted_issuances_at_start_lists_them_even_when_stopped_at_once() {
    let f = fixture();
    let copy = f.store_copy("voided-serve", &[]);
    let serial = interrupted_issue(
        f,
        &copy,
        Profile::Customer,
        "CN=赵六,serialNumber=110101199003071299",
    );
    let later = now_unix() + ISSUANCE_TIMEOUT_SECS + 10;
    let server = common::http::Server::start_config(
        f,
        &copy.config,
        &[("SIGNET_FAKE_NOW", later.to_string())],
    );
    assert_eq!(cert_status(&copy.db, &serial).as_deref(), Some("void"));
    // Stopped before its first periodic CRL check (30 s): the start's voids get their CRL.
    let log = server.stop_and_log();
    let der: Vec<u8> = open_db(&copy.db)
        .query_row(
            "SELECT crl_der FROM crls WHERE issuer = 'customer' ORDER BY number DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap_or_else(|e| panic!("no customer CRL ({e}); the server said:\n{log}"));
    let crl = f.path("voided-at-start.crl");
    std::fs::write(&crl, der).unwrap();
    let text = f.crl_text(&crl, &f.issuer_bundle("customer"));
    assert!(
        text.entry(&serial).is_some(),
        "voided serial {serial} not on the newest CRL:\n{}",
        text.text
    );
}

/// The store of a copy, opened as another `signet` process would.
fn open_store_of(copy: &StoreCopy) -> std::sync::Arc<dyn signet::store::Store> {
    let config = signet::config::Config::load(&copy.config).expect("load the copy's config");
    signet::app::open_store(&config.store).expect("open the copy's store")
}

/// Records the customer CA's next CRL at `at`, as another process would before it signs it;
/// returns its number. The newest signed CRL then ends before `at`, so none is servable.
fn customer_crl_recorded_elsewhere(store: &dyn signet::store::Store, at: i64) -> u64 {
    let crl = signet::store::NewCrl {
        issuer: IssuerId::Customer,
        shard: None,
        this_update: at,
        next_update: at + 3600,
        status_epoch: store.crl_scope_epoch(IssuerId::Customer, None).unwrap(),
        succeeds: signet::store::Succeeds::Newest,
    };
    let event = signet::audit::AuditEvent::new(
        "test:other-process",
        "crl.generate",
        "crl:customer",
        serde_json::json!({}),
    );
    let (number, _) = store
        .record_crl(&crl, &mut |_| Ok(b"to be signed".to_vec()), &event)
        .expect("record the CRL")
        .expect("nothing succeeded it");
    number
}

/// A server on a store copy whose customer CRL another process has recorded and not signed,
/// and whose other CRLs are past their nextUpdate: the server's clock is at `later`.
struct UnsignedElsewhere {
    store: std::sync::Arc<dyn signet::store::Store>,
    later: i64,
    /// The number of the unsigned CRL.
    number: u64,
    server: common::http::Server,
}

fn customer_crl_unsigned_elsewhere(name: &str) -> UnsignedElsewhere {
    let f = fixture();
    let copy = f.store_copy(name, &[]);
    let store = open_store_of(&copy);
    // A pending issuance would be voided at the server's start, a change its refresher lists
    // on a CRL of its own.
    let pending: i64 = open_db(&copy.db)
        .query_row(
            "SELECT COUNT(*) FROM certificates WHERE status = 'pending'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(pending, 0, "the fixture's store has pending issuances");
    let later = past_every_crl(&*store);
    let number = customer_crl_recorded_elsewhere(&*store, later);
    let server = common::http::Server::start_config(
        f,
        &copy.config,
        &[("SIGNET_FAKE_NOW", later.to_string())],
    );
    UnsignedElsewhere {
        store,
        later,
        number,
        server,
    }
}

/// A time past the nextUpdate of every CRL in `store` (now, when it has none).
fn past_every_crl(store: &dyn signet::store::Store) -> i64 {
    [IssuerId::Root, IssuerId::Customer, IssuerId::Teller]
        .into_iter()
        .filter_map(|i| store.latest_crl_info(i, None).unwrap())
        .map(|c| c.next_update + 60)
        .fold(now_unix() as i64, i64::max)
}

#[test]
fn a_crl_request_that_finds_another_process_signing_the_crl_serves_that_one() {
    let UnsignedElsewhere {
        store,
        number,
        server,
        ..
    } = customer_crl_unsigned_elsewhere("crl-signed-elsewhere");
    // The other process stores its signed CRL a second after the request arrives. (Its bytes
    // are a marker: what matters is whose CRL is served.)
    let theirs = b"the other process's signed CRL".to_vec();
    let other = {
        let (store, theirs) = (store.clone(), theirs.clone());
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(1));
            store
                .complete_crl(IssuerId::Customer, None, number, &theirs)
                .expect("store the signed CRL");
        })
    };
    let (status, _, body) = common::http::get_bytes(&server, "/crl/customer.crl");
    other.join().unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert!(
        body == theirs,
        "the request made its own CRL ({} bytes) instead of waiting for the other process's",
        body.len()
    );
    let newest = store.newest_crl_number(IssuerId::Customer, None).unwrap();
    assert_eq!(
        newest.map(|n| n.number),
        Some(number),
        "a second CRL was made"
    );
    server.stop();
}

#[test]
fn requests_whose_other_crl_maker_never_signs_get_one_crl_made_after_a_wait() {
    let UnsignedElsewhere {
        store,
        later,
        number,
        server,
    } = customer_crl_unsigned_elsewhere("crl-never-signed");
    let asked = std::time::Instant::now();
    // Four requests wait together; they make one CRL between them.
    let answers: Vec<_> = std::thread::scope(|s| {
        let asks: Vec<_> = (0..4)
            .map(|_| s.spawn(|| common::http::get_bytes(&server, "/crl/customer.crl")))
            .collect();
        asks.into_iter().map(|a| a.join().unwrap()).collect()
    });
    let waited = asked.elapsed();
    let (status, _, body) = answers[0].clone();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert!(
        answers.iter().all(|(s, _, b)| *s == 200 && *b == body),
        "the waiting requests were served different CRLs"
    );
    assert_eq!(
        store
            .newest_crl_number(IssuerId::Customer, None)
            .unwrap()
            .map(|n| n.number),
        Some(number + 1),
        "the waiting requests made more than one CRL"
    );
    let made = store
        .latest_crl(IssuerId::Customer, None)
        .unwrap()
        .expect("a signed customer CRL");
    assert_eq!(
        made.number,
        number + 1,
        "the served CRL succeeds the unsigned one"
    );
    assert_eq!(made.crl_der.as_deref(), Some(&body[..]));
    assert!(made.this_update == later && later < made.next_update);
    assert!(
        waited >= Duration::from_secs(3),
        "made after {waited:?}, without waiting for the other process"
    );
    server.stop();
}
