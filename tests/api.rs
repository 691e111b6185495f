//! The service over real HTTP on 127.0.0.1: `signet serve` against the fixture's SoftHSM2 token
//! and SQLite store, driven by an HTTP client and by `openssl ocsp`.

mod common;

use std::path::{Path, PathBuf};

use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use common::drill::wait_until;
use common::http::{base64_decode, base64_std, get, get_bytes, post_json, post_raw, Server};
use common::{fixture, norm_serial, openssl, Fixture, KeyKind};
use der::Decode;
use serde_json::{json, Value};
use signet::ca::IssuerId;

/// Two banks with a credential of each role (and a second teller-admin of bank A).
struct Banks {
    a_officer: String,
    a_admin1: String,
    a_admin2: String,
    a_gateway: String,
    a_auditor: String,
    b_officer: String,
    b_admin: String,
}

/// A fresh credential's bearer token.
fn new_credential(f: &Fixture, bank: &str, role: &str) -> String {
    cli_ok(f, &["credential", "add", "--tenant", bank, "--role", role])
}

fn cli_ok(f: &Fixture, args: &[&str]) -> String {
    let out = f.signet(args);
    out.assert_ok();
    out.stdout.trim().to_string()
}

fn setup() -> &'static (Banks, Mutex<Option<Server>>) {
    static SETUP: OnceLock<(Banks, Mutex<Option<Server>>)> = OnceLock::new();
    SETUP.get_or_init(|| {
        let f = fixture();
        cli_ok(f, &["tenant", "add", "Bank A"]);
        cli_ok(f, &["tenant", "add", "Bank B"]);
        let cred = |bank: &str, role: &str| {
            cli_ok(f, &["credential", "add", "--tenant", bank, "--role", role])
        };
        let banks = Banks {
            a_officer: cred("Bank A", "ra-officer"),
            a_admin1: cred("Bank A", "teller-admin"),
            a_admin2: cred("Bank A", "teller-admin"),
            a_gateway: cred("Bank A", "gateway"),
            a_auditor: cred("Bank A", "auditor"),
            b_officer: cred("Bank B", "ra-officer"),
            b_admin: cred("Bank B", "teller-admin"),
        };
        (banks, Mutex::new(Some(Server::start(f))))
    })
}

/// The shared server. Tests hold the guard while they talk to it (the restart test replaces it).
fn server() -> (&'static Banks, MutexGuard<'static, Option<Server>>) {
    let (banks, server) = setup();
    (banks, server.lock().unwrap_or_else(|e| e.into_inner()))
}

fn csr_pem(f: &Fixture) -> String {
    std::fs::read_to_string(f.csr(KeyKind::P256)).unwrap()
}

fn next_id() -> u64 {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
}

/// Issues a customer certificate for bank A through the API; returns (serial, leaf path).
fn issue_customer(s: &Server, token: &str) -> (String, PathBuf) {
    let f = fixture();
    let n = next_id();
    let r = post_json(
        s,
        "/v1/certificates",
        Some(token),
        &json!({"profile": "customer", "csr": csr_pem(f), "subject": format!("CN=客户{n},serialNumber=11010119900307{n:04}")}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let v = r.json();
    let leaf = f.path("api-leaf.pem");
    std::fs::write(&leaf, v["certificate"].as_str().unwrap()).unwrap();
    (v["serial"].as_str().unwrap().to_string(), leaf)
}

/// Issues a teller certificate for bank A (filed by one teller-admin, approved by the other);
/// its serial.
fn issue_teller(s: &Server, banks: &Banks, subject: &str) -> String {
    let id = file_teller_request(s, &banks.a_admin1, subject);
    let issued = approve_teller_request(s, &id, &banks.a_admin2);
    assert_eq!(issued.status, 201, "{}", issued.body);
    issued.json()["serial"].as_str().unwrap().to_string()
}

/// Files a teller certificate request for `subject` with `token` (202); its id.
fn file_teller_request(s: &Server, token: &str, subject: &str) -> String {
    let r = post_json(
        s,
        "/v1/teller-requests",
        Some(token),
        &json!({"csr": csr_pem(fixture()), "subject": subject}),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    r.json()["id"].as_str().unwrap().to_string()
}

fn approve_teller_request(s: &Server, id: &str, token: &str) -> common::http::Reply {
    post_json(
        s,
        &format!("/v1/teller-requests/{id}/approve"),
        Some(token),
        &json!({}),
    )
}

/// The answer to an approval by the person who filed the request.
fn assert_self_approval(r: &common::http::Reply) {
    assert_eq!(
        (r.status, r.code().as_str()),
        (403, "self_approval"),
        "{}",
        r.body
    );
}

/// A new teller-admin credential of bank A for `holder`; its token.
fn teller_admin_of(f: &Fixture, holder: &str) -> String {
    let out = add_bank_a_teller_admin(f, holder);
    out.assert_ok();
    out.stdout.trim().to_string()
}

/// Issues a customer certificate for bank A through the API and revokes it there; its serial.
fn issue_and_revoke(s: &Server, token: &str, reason: &str) -> String {
    let (serial, _) = issue_customer(s, token);
    let r = post_json(
        s,
        &format!("/v1/certificates/{serial}/revoke"),
        Some(token),
        &json!({ "reason": reason }),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    serial
}

/// Bank A's audit events after `seq`, every page of them (the route answers 500 by default).
fn bank_a_events_since(s: &Server, auditor: &str, seq: u64) -> Vec<Value> {
    let mut events: Vec<Value> = Vec::new();
    let mut since = seq;
    loop {
        let r = get(
            s,
            &format!("/v1/audit-events?since={since}&limit=5000"),
            Some(auditor),
        );
        assert_eq!(r.status, 200, "{}", r.body);
        let page = r.json()["events"].as_array().cloned().unwrap_or_default();
        match page.last().and_then(|e| e["seq"].as_u64()) {
            Some(last) => since = last,
            None => return events,
        }
        events.extend(page);
    }
}

/// The newest of bank A's audit events (0 when it has none).
fn bank_a_head(s: &Server, auditor: &str) -> u64 {
    bank_a_events_since(s, auditor, 0)
        .last()
        .and_then(|e| e["seq"].as_u64())
        .unwrap_or(0)
}

/// A batch route refuses an empty batch and one of 65 items, whole (400 `invalid_batch`).
fn assert_batch_size_refused(s: &Server, path: &str, token: &str, item: &Value) {
    for items in [Vec::new(), vec![item.clone(); 65]] {
        let n = items.len();
        let r = post_json(s, path, Some(token), &json!({ "items": items }));
        assert_eq!(
            (r.status, r.code().as_str()),
            (400, "invalid_batch"),
            "{path} with {n} items: {}",
            r.body
        );
    }
}

fn ocsp_status(s: &Server, issuer: &Path, cert_args: &[&std::ffi::OsStr]) -> String {
    let f = fixture();
    let mut a = args!["ocsp", "-issuer", issuer].to_vec();
    a.extend(cert_args.iter().map(|x| x.to_os_string()));
    a.extend(args!["-url", s.url("/ocsp"), "-CAfile", f.ca("root.pem")]);
    let out = openssl(&a);
    out.assert_ok();
    assert!(
        out.stderr.contains("Response verify OK") || out.stdout.contains("Response verify OK"),
        "OCSP response did not verify:\n{}",
        out.describe()
    );
    out.stdout
}

// --------------------------------------------------------------------------------------
// The relying party's view

#[test]
fn customer_certificate_issued_over_the_api_verifies_with_openssl() {
    let (banks, guard) = server();
    let s = guard.as_ref().unwrap();
    let f = fixture();
    let (_, leaf) = issue_customer(s, &banks.a_officer);
    f.assert_customer_certificate_verifies(&leaf);
    let subject = openssl(&args![
        "x509", "-in", &leaf, "-noout", "-subject", "-nameopt", "utf8"
    ]);
    assert!(
        subject.stdout.contains("O=Bank A"),
        "tenant name is the O: {}",
        subject.stdout
    );
}

#[test]
fn ocsp_says_good_then_revoked_after_revocation_and_unknown_for_a_serial_never_issued() {
    let (banks, guard) = server();
    let s = guard.as_ref().unwrap();
    let f = fixture();
    let issuer = f.ca("customer-ca.pem");
    let (serial, leaf) = issue_customer(s, &banks.a_officer);
    let good = ocsp_status(
        s,
        &issuer,
        &[std::ffi::OsStr::new("-cert"), leaf.as_os_str()],
    );
    assert!(good.contains(": good"), "{good}");

    let r = post_json(
        s,
        &format!("/v1/certificates/{serial}/revoke"),
        Some(&banks.a_officer),
        &json!({"reason": "keyCompromise"}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["status"], "revoked");
    let revoked = ocsp_status(
        s,
        &issuer,
        &[std::ffi::OsStr::new("-cert"), leaf.as_os_str()],
    );
    assert!(revoked.contains(": revoked"), "{revoked}");
    assert!(revoked.contains("keyCompromise"), "{revoked}");

    let unknown = ocsp_status(
        s,
        &issuer,
        &[
            std::ffi::OsStr::new("-serial"),
            std::ffi::OsStr::new("0x7e57000000000000000000000000000f"),
        ],
    );
    assert!(unknown.contains(": unknown"), "{unknown}");
}

/// An OCSP request for the customer certificate `leaf` (PEM file), without a nonce, made by
/// OpenSSL; its path.
fn ocsp_request_without_nonce(f: &Fixture, leaf: &Path, name: &str) -> PathBuf {
    ocsp_request(f, leaf, name, &["-no_nonce"])
}

/// An OCSP request for the customer certificate `leaf` made by OpenSSL with `options`; its path.
fn ocsp_request(f: &Fixture, leaf: &Path, name: &str, options: &[&str]) -> PathBuf {
    let req = f.path(name);
    let mut a = args!["ocsp", "-issuer", f.ca("customer-ca.pem"), "-cert", leaf].to_vec();
    a.extend(options.iter().map(std::ffi::OsString::from));
    a.extend(args!["-reqout", &req]);
    openssl(&a).assert_ok();
    req
}

#[test]
fn ocsp_get_with_base64_path_answers_like_post() {
    let (banks, guard) = server();
    let s = guard.as_ref().unwrap();
    let f = fixture();
    let (_, leaf) = issue_customer(s, &banks.a_officer);
    let req = ocsp_request_without_nonce(f, &leaf, "get.req");
    let b64 = base64_std(&std::fs::read(&req).unwrap());
    let (status, ct, body) = get_bytes(s, &format!("/ocsp/{b64}"));
    assert_eq!(status, 200);
    assert_eq!(ct, "application/ocsp-response");
    let resp = f.path("get.resp");
    std::fs::write(&resp, body).unwrap();
    let out = openssl(&args![
        "ocsp",
        "-respin",
        &resp,
        "-issuer",
        f.ca("customer-ca.pem"),
        "-cert",
        &leaf,
        "-CAfile",
        f.ca("root.pem")
    ]);
    out.assert_ok();
    assert!(out.stdout.contains(": good"), "{}", out.describe());
}

/// RFC 5019 section 6.2: a pre-signed answer tells HTTP caches how long to keep it, as long as
/// the responder serves it itself (one minute at most), and names itself.
#[test]
fn a_pre_signed_ocsp_answer_carries_the_rfc_5019_caching_headers() {
    let (banks, guard) = server();
    let s = guard.as_ref().unwrap();
    let f = fixture();
    let (_, leaf) = issue_customer(s, &banks.a_officer);
    let req = ocsp_request_without_nonce(f, &leaf, "cached.req");
    let url = s.url(&format!(
        "/ocsp/{}",
        base64_std(&std::fs::read(&req).unwrap())
    ));
    let fetch = || {
        let r = common::http::agent().get(&url).call().expect("GET /ocsp");
        let header = |name| r.header(name).unwrap_or_default().to_string();
        let headers = [
            header("cache-control"),
            header("last-modified"),
            header("expires"),
            header("etag"),
        ];
        let mut body = Vec::new();
        std::io::Read::read_to_end(&mut r.into_reader(), &mut body).unwrap();
        (headers, body)
    };
    let ([cache_control, last_modified, expires, etag], body) = fetch();
    let max_age: u64 = cache_control
        .strip_prefix("max-age=")
        .and_then(|rest| rest.strip_suffix(", public, no-transform, must-revalidate"))
        .and_then(|age| age.parse().ok())
        .unwrap_or_else(|| panic!("Cache-Control: {cache_control:?}"));
    assert!(max_age <= 60, "{max_age}");
    let date = |v: &str| {
        httpdate::parse_http_date(v).unwrap_or_else(|e| panic!("{v:?} is no HTTP date: {e}"))
    };
    let asked = std::time::SystemTime::now();
    assert!(date(&last_modified) <= asked + Duration::from_secs(1));
    let expires_in = date(&expires)
        .duration_since(asked)
        .unwrap_or_default()
        .as_secs();
    assert!(
        expires_in.abs_diff(max_age) <= 2,
        "Expires in {expires_in} s, max-age {max_age}"
    );
    use sha2::Digest;
    assert_eq!(
        etag,
        format!("\"{}\"", hex::encode(sha2::Sha256::digest(&body)))
    );
    // Served again from the pre-signed answer: the same response, with the same names. (A
    // status change in between would drop the pre-signed answer: then again.)
    let from_cache = wait_until(Duration::from_secs(20), || {
        let ([_, modified, _, etag], body) = fetch();
        let ([_, again_modified, _, again_etag], again) = fetch();
        if again != body {
            return false;
        }
        assert_eq!((again_etag, again_modified), (etag, modified));
        true
    });
    assert!(from_cache.is_some(), "never the same answer twice");

    // An answer signed for a nonce is not to be stored.
    let with_nonce = std::fs::read(ocsp_request(f, &leaf, "nonce.req", &[])).unwrap();
    let r = common::http::agent()
        .post(&s.url("/ocsp"))
        .set("Content-Type", "application/ocsp-request")
        .send_bytes(&with_nonce)
        .expect("POST /ocsp");
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_eq!(r.header("etag"), None);
}

#[test]
fn ocsp_request_that_is_not_der_gets_malformed_request() {
    let (_, guard) = server();
    let s = guard.as_ref().unwrap();
    let r = post_raw(
        s,
        "/ocsp",
        None,
        "application/ocsp-request",
        b"this is not DER",
    );
    assert_eq!(r.status, 200, "OCSP errors travel inside a 200 response");
    assert_eq!(r.content_type, "application/ocsp-response");
    // OCSPResponse { responseStatus malformedRequest(1) }
    assert_eq!(r.body.as_bytes(), [0x30, 0x03, 0x0a, 0x01, 0x01]);
}

#[test]
fn revoked_certificate_appears_on_the_served_crl_soon_after_revocation() {
    let (banks, guard) = server();
    let s = guard.as_ref().unwrap();
    let f = fixture();
    let serial = issue_and_revoke(s, &banks.a_officer, "superseded");
    let listed = wait_until(Duration::from_secs(15), || {
        let (status, ct, der) = get_bytes(s, "/crl/customer.crl");
        assert_eq!(status, 200);
        assert_eq!(ct, "application/pkix-crl");
        let path = f.path("served.crl");
        std::fs::write(&path, der).unwrap();
        let text = f.crl_text(&path, &f.bundle("customer-ca.pem"));
        let entry = text.entry(&serial);
        if let Some(entry) = &entry {
            assert!(entry.contains("Superseded"), "{entry}");
        }
        entry.is_some()
    });
    assert!(
        listed.is_some(),
        "revoked serial {serial} not on the served CRL within 15 s"
    );
}

/// (status, ETag, Cache-Control, body length) of `GET /crl/customer.crl`, naming `etag` in
/// If-None-Match when given.
fn customer_crl_naming(s: &Server, etag: Option<&str>) -> (u16, String, String, usize) {
    let mut request = common::http::agent().get(&s.url("/crl/customer.crl"));
    if let Some(etag) = etag {
        request = request.set("If-None-Match", etag);
    }
    let r = request.call().expect("GET the customer CRL");
    let header = |name| r.header(name).unwrap_or("").to_string();
    let (status, etag, cache_control) = (r.status(), header("etag"), header("cache-control"));
    let mut body = Vec::new();
    std::io::Read::read_to_end(&mut r.into_reader(), &mut body).unwrap();
    (status, etag, cache_control, body.len())
}

#[test]
fn a_crl_request_naming_the_served_crl_s_etag_gets_304_without_a_body_until_the_crl_changes() {
    let (banks, guard) = server();
    let s = guard.as_ref().unwrap();
    // A CRL made between the two requests (the refresher's, say) gives 200 with a new tag, and
    // the pair is tried again.
    let mut served = String::new();
    let not_modified = wait_until(Duration::from_secs(20), || {
        let (status, etag, cache_control, _) = customer_crl_naming(s, None);
        assert_eq!(status, 200);
        assert!(etag.starts_with("\"customer-"), "{etag:?}");
        assert_eq!(cache_control, "public, no-cache, no-transform");
        let (status, again, cache_control, _) = customer_crl_naming(s, Some(&etag));
        served = etag.clone();
        match status {
            304 => {
                assert_eq!(again, etag);
                assert_eq!(cache_control, "public, no-cache, no-transform");
                true
            }
            200 => {
                assert_ne!(again, etag, "200 to a request naming the served CRL's tag");
                false
            }
            other => panic!("{other} to a conditional CRL request"),
        }
    });
    assert!(not_modified.is_some(), "never 304");
    // A list, a weak tag and `*` hold too.
    for field in [
        format!("\"x\", {served}"),
        format!("W/{served}"),
        "*".into(),
    ] {
        let (status, etag, ..) = customer_crl_naming(s, Some(&field));
        // 200 only for a CRL made since.
        assert!(
            status == 304 || (status == 200 && etag != served),
            "{field}: {status} {etag}"
        );
    }
    let serial = issue_and_revoke(s, &banks.a_officer, "superseded");
    wait_for_newest_customer_crl_to_list(fixture(), &serial);
    let (status, etag, _, length) = customer_crl_naming(s, Some(&served));
    assert_eq!(status, 200, "the tag of a CRL since succeeded still held");
    assert!(etag != served && length > 0);
}

#[test]
fn ca_certificates_and_chain_are_served() {
    let (_, guard) = server();
    let s = guard.as_ref().unwrap();
    let (status, ct, der) = get_bytes(s, "/ca/customer.der");
    assert_eq!((status, ct.as_str()), (200, "application/pkix-cert"));
    assert_eq!(der[0], 0x30, "DER certificate");
    let chain = get(s, "/v1/ca", None);
    assert_eq!(chain.status, 200);
    assert_eq!(chain.body.matches("BEGIN CERTIFICATE").count(), 3);
    assert_eq!(get_bytes(s, "/ca/nobody.der").0, 404);
    assert_eq!(get_bytes(s, "/crl/nobody.crl").0, 404);
}

// --------------------------------------------------------------------------------------
// Who may do what

#[test]
fn a_certificate_can_be_looked_up_by_serial_and_by_subject_id_number_by_its_bank() {
    let (banks, guard) = server();
    let s = guard.as_ref().unwrap();
    let f = fixture();
    let r = post_json(
        s,
        "/v1/certificates",
        Some(&banks.a_officer),
        &json!({"profile": "customer", "csr": csr_pem(f), "subject": "CN=赵六,serialNumber=44010619851212777X"}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let serial = r.json()["serial"].as_str().unwrap().to_string();
    let got = get(
        s,
        &format!("/v1/certificates/{serial}"),
        Some(&banks.a_auditor),
    );
    assert_eq!(got.status, 200, "{}", got.body);
    assert_eq!(got.json()["status"], "good");
    let found = post_json(
        s,
        "/v1/certificates/search",
        Some(&banks.a_officer),
        &json!({"subject_serial": "44010619851212777X"}),
    );
    assert_eq!(found.status, 200, "{}", found.body);
    let list = found.json()["certificates"].as_array().unwrap().clone();
    assert!(
        list.iter().any(|c| c["serial"] == serial.as_str()),
        "{}",
        found.body
    );
    // Bank B searching the same ID number sees nothing of bank A's.
    let other = post_json(
        s,
        "/v1/certificates/search",
        Some(&banks.b_officer),
        &json!({"subject_serial": "44010619851212777X"}),
    );
    assert_eq!(other.json()["certificates"].as_array().unwrap().len(), 0);
}

#[test]
fn another_banks_credentials_cannot_read_revoke_hold_or_approve_and_learn_nothing() {
    let (banks, guard) = server();
    let s = guard.as_ref().unwrap();
    let f = fixture();
    let (serial, _) = issue_customer(s, &banks.a_officer);
    let read = get(
        s,
        &format!("/v1/certificates/{serial}"),
        Some(&banks.b_officer),
    );
    assert_eq!((read.status, read.code().as_str()), (404, "not_found"));
    let revoke = post_json(
        s,
        &format!("/v1/certificates/{serial}/revoke"),
        Some(&banks.b_officer),
        &json!({"reason": "keyCompromise"}),
    );
    assert_eq!(revoke.status, 404, "{}", revoke.body);
    let hold = post_json(
        s,
        &format!("/v1/certificates/{serial}/hold"),
        Some(&banks.b_admin),
        &json!({}),
    );
    assert_eq!(hold.status, 404, "{}", hold.body);
    // A teller request of bank A cannot be approved by bank B's teller-admin.
    let req = post_json(
        s,
        "/v1/teller-requests",
        Some(&banks.a_admin1),
        &json!({"csr": csr_pem(f), "subject": "CN=柜员甲,serialNumber=E9001,OU=Branch 1"}),
    );
    assert_eq!(req.status, 202, "{}", req.body);
    let id = req.json()["id"].as_str().unwrap().to_string();
    let approve = post_json(
        s,
        &format!("/v1/teller-requests/{id}/approve"),
        Some(&banks.b_admin),
        &json!({}),
    );
    assert_eq!(
        (approve.status, approve.code().as_str()),
        (404, "not_found")
    );
    // The certificate is still good for its own bank.
    let own = get(
        s,
        &format!("/v1/certificates/{serial}"),
        Some(&banks.a_officer),
    );
    assert_eq!(own.json()["status"], "good");
}

#[test]
fn roles_limit_what_a_credential_may_do() {
    let (banks, guard) = server();
    let s = guard.as_ref().unwrap();
    let f = fixture();
    let body = json!({"profile": "customer", "csr": csr_pem(f), "subject": "CN=A,serialNumber=1"});
    for token in [&banks.a_gateway, &banks.a_auditor, &banks.a_admin1] {
        let r = post_json(s, "/v1/certificates", Some(token), &body);
        assert_eq!(
            (r.status, r.code().as_str()),
            (403, "forbidden"),
            "{}",
            r.body
        );
    }
    let r = post_json(
        s,
        "/v1/teller-requests",
        Some(&banks.a_officer),
        &json!({"csr": csr_pem(f), "subject": "CN=T,serialNumber=E1,OU=B"}),
    );
    assert_eq!((r.status, r.code().as_str()), (403, "forbidden"));
    let audit = get(s, "/v1/audit-events", Some(&banks.a_officer));
    assert_eq!(audit.status, 403);
}

#[test]
fn a_csr_cannot_get_a_certificate_under_the_e_seal_profile_whose_key_lives_in_the_hsm() {
    let (banks, guard) = server();
    let s = guard.as_ref().unwrap();
    let f = fixture();
    let item = json!({"profile": "seal", "csr": csr_pem(f), "subject": "CN=Bank A Seal"});
    let r = post_json(s, "/v1/certificates", Some(&banks.a_officer), &item);
    assert_eq!(
        (r.status, r.code().as_str()),
        (400, "profile_needs_hsm_key"),
        "{}",
        r.body
    );
    let r = post_json(
        s,
        "/v1/certificates/batch",
        Some(&banks.a_officer),
        &json!({"items": [item]}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json()["results"][0]["error"]["code"],
        "profile_needs_hsm_key",
        "{}",
        r.body
    );
}

#[test]
fn missing_malformed_unknown_and_revoked_tokens_get_401() {
    let (_, guard) = server();
    let s = guard.as_ref().unwrap();
    let f = fixture();
    let added = f.signet(&[
        "credential",
        "add",
        "--tenant",
        "Bank A",
        "--role",
        "auditor",
    ]);
    added.assert_ok();
    let token = added.stdout.trim().to_string();
    let id = credential_id(&added);
    let ok = get(s, "/v1/audit-events", Some(&token));
    assert_eq!(ok.status, 200, "{}", ok.body);
    let list = cli_ok(f, &["credential", "list", "--tenant", "Bank A"]);
    assert!(list.contains(&id), "credential list shows ids: {list}");
    assert!(!list.contains(&token), "credential list never shows tokens");
    cli_ok(
        f,
        &["credential", "revoke", "--tenant", "Bank A", "--id", &id],
    );
    for t in [
        None,
        Some("not-a-token"),
        Some("sgt_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
        Some(token.as_str()),
    ] {
        let r = get(s, "/v1/audit-events", t);
        assert_eq!(
            (r.status, r.code().as_str()),
            (401, "unauthenticated"),
            "token {t:?}"
        );
        assert!(!r.body.contains("sgt_"), "the answer never echoes a token");
    }
}

#[test]
fn teller_certificates_need_two_different_teller_admins_of_the_same_bank() {
    let (banks, guard) = server();
    let s = guard.as_ref().unwrap();
    let f = fixture();
    // No credential alone gets one through POST /v1/certificates.
    for token in [&banks.a_officer, &banks.a_admin1] {
        let r = post_json(
            s,
            "/v1/certificates",
            Some(token),
            &json!({"profile": "teller", "csr": csr_pem(f), "subject": "CN=T,serialNumber=E1,OU=B"}),
        );
        assert_eq!(r.status, 403, "{}", r.body);
    }
    let r = post_json(
        s,
        "/v1/teller-requests",
        Some(&banks.a_admin1),
        &json!({"csr": csr_pem(f), "subject": "CN=柜员乙,serialNumber=E9002,OU=Branch 2"}),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(r.json()["status"], "pending");
    let id = r.json()["id"].as_str().unwrap().to_string();
    let own = post_json(
        s,
        &format!("/v1/teller-requests/{id}/approve"),
        Some(&banks.a_admin1),
        &json!({}),
    );
    assert_eq!((own.status, own.code().as_str()), (403, "self_approval"));
    let approved = post_json(
        s,
        &format!("/v1/teller-requests/{id}/approve"),
        Some(&banks.a_admin2),
        &json!({}),
    );
    assert_eq!(approved.status, 201, "{}", approved.body);
    let v = approved.json();
    assert_eq!(v["issuer"], "teller");
    let leaf = f.path("teller-api.pem");
    std::fs::write(&leaf, v["certificate"].as_str().unwrap()).unwrap();
    openssl(&args![
        "verify",
        "-x509_strict",
        "-CAfile",
        f.ca("root.pem"),
        "-untrusted",
        f.ca("teller-ca.pem"),
        &leaf
    ])
    .assert_ok();
    let again = post_json(
        s,
        &format!("/v1/teller-requests/{id}/approve"),
        Some(&banks.a_admin2),
        &json!({}),
    );
    assert_eq!((again.status, again.code().as_str()), (409, "conflict"));
}

fn reject_teller_request(s: &Server, id: &str, token: &str, reason: &str) -> common::http::Reply {
    post_json(
        s,
        &format!("/v1/teller-requests/{id}/reject"),
        Some(token),
        &json!({ "reason": reason }),
    )
}

/// A teller request as `token` reads it through `GET /v1/teller-requests/{id}`.
fn teller_request(s: &Server, id: &str, token: &str) -> Value {
    let r = get(s, &format!("/v1/teller-requests/{id}"), Some(token));
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

/// The ids `GET /v1/teller-requests{query}` lists for `token`, in its order.
fn listed_teller_requests(s: &Server, query: &str, token: &str) -> Vec<String> {
    let r = get(s, &format!("/v1/teller-requests{query}"), Some(token));
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_second_teller_admin_rejects_a_teller_request_which_then_cannot_be_approved() {
    let (banks, guard) = server();
    let s = guard.as_ref().unwrap();
    let id = file_teller_request(
        s,
        &banks.a_admin1,
        "CN=柜员庚,serialNumber=E9021,OU=Branch 21",
    );
    let reason = "the branch on the subject is wrong: Branch 12";
    let r = reject_teller_request(s, &id, &banks.a_admin2, reason);
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(
        (
            v["id"].as_str(),
            v["status"].as_str(),
            v["decision_reason"].as_str()
        ),
        (Some(id.as_str()), Some("rejected"), Some(reason))
    );
    assert!(
        v["decided_at"].is_i64() && v["decided_by"].is_string(),
        "{v}"
    );
    // It stays rejected: not approvable, not rejected twice; the bank's auditor reads it.
    let approve = approve_teller_request(s, &id, &banks.a_admin2);
    assert_eq!((approve.status, approve.code().as_str()), (409, "conflict"));
    assert!(
        approve.body.contains("already rejected"),
        "{}",
        approve.body
    );
    let again = reject_teller_request(s, &id, &banks.a_admin2, "twice");
    assert_eq!((again.status, again.code().as_str()), (409, "conflict"));
    let read = teller_request(s, &id, &banks.a_auditor);
    assert_eq!(
        (read["status"].as_str(), read["decision_reason"].as_str()),
        (Some("rejected"), Some(reason))
    );
    assert!(read.get("csr").is_none(), "the CSR is not repeated: {read}");
    let event = fixture()
        .open_store()
        .audit_events(0)
        .unwrap()
        .into_iter()
        .find(|e| e.action == "teller_request.reject" && e.object == id)
        .expect("the rejection is audited");
    let details: Value = serde_json::from_str(&event.details).unwrap();
    assert_eq!(
        (&details["reason"], &details["automatic"]),
        (&json!(reason), &json!(false))
    );
}

/// The SHA-256 (hex) of the DER SubjectPublicKeyInfo in `pem_file` (a CSR or a certificate),
/// as OpenSSL reads it.
fn spki_sha256(f: &Fixture, kind: &str, pem_file: &Path) -> String {
    let pubkey = f.path(&format!("{kind}-spki-sha256.pem"));
    openssl(&args![
        kind, "-in", pem_file, "-pubkey", "-noout", "-out", &pubkey
    ])
    .assert_ok();
    let der = f.path(&format!("{kind}-spki-sha256.der"));
    openssl(&args![
        "pkey", "-pubin", "-in", &pubkey, "-outform", "DER", "-out", &der
    ])
    .assert_ok();
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(std::fs::read(&der).unwrap()))
}

/// The second teller-admin sees which key the certificate would certify before approving it,
/// and it is the key of the certificate issued.
#[test]
fn an_approver_sees_the_key_a_teller_request_would_certify() {
    let (banks, guard) = server();
    let s = guard.as_ref().unwrap();
    let f = fixture();
    // A CSR of this test's own (the fixture's CSR file is made afresh for every caller).
    let pem = csr_pem(f);
    let csr = f.path("approver-sees.csr");
    std::fs::write(&csr, &pem).unwrap();
    let r = post_json(
        s,
        "/v1/teller-requests",
        Some(&banks.a_admin1),
        &json!({"csr": pem, "subject": "CN=柜员丑,serialNumber=E9026,OU=Branch 26"}),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.json()["id"].as_str().unwrap().to_string();
    let shown = teller_request(s, &id, &banks.a_admin2);
    assert_eq!(
        shown["public_key_sha256"].as_str(),
        Some(spki_sha256(f, "req", &csr).as_str()),
        "{shown}"
    );
    let approved = approve_teller_request(s, &id, &banks.a_admin2);
    assert_eq!(approved.status, 201, "{}", approved.body);
    let leaf = f.path("approver-sees.pem");
    std::fs::write(&leaf, approved.json()["certificate"].as_str().unwrap()).unwrap();
    assert_eq!(
        shown["public_key_sha256"].as_str(),
        Some(spki_sha256(f, "x509", &leaf).as_str())
    );
    let after = teller_request(s, &id, &banks.a_auditor);
    assert_eq!(
        (after["status"].as_str(), after["serial"].as_str()),
        (Some("approved"), approved.json()["serial"].as_str())
    );
}

#[test]
fn the_filer_may_withdraw_its_own_teller_request() {
    let (banks, guard) = server();
    let s = guard.as_ref().unwrap();
    let id = file_teller_request(
        s,
        &banks.a_admin1,
        "CN=柜员辛,serialNumber=E9022,OU=Branch 22",
    );
    let r = reject_teller_request(s, &id, &banks.a_admin1, "filed for the wrong teller");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["status"], "rejected");
    assert_eq!(
        approve_teller_request(s, &id, &banks.a_admin2).status,
        409,
        "a withdrawn request is not approved"
    );
}

#[test]
fn a_rejection_says_why_in_a_sentence_without_a_national_id_number() {
    let (banks, guard) = server();
    let s = guard.as_ref().unwrap();
    let id = file_teller_request(
        s,
        &banks.a_admin1,
        "CN=柜员壬,serialNumber=E9023,OU=Branch 23",
    );
    let too_long = "x".repeat(501);
    for reason in [
        "",
        "   ",
        too_long.as_str(),
        "the subject is 11010119900307123X, not the teller",
        "ID11010119900307123X",
        "full width １１０１０１１９９００３０７１２３４",
        "in groups 110101 19900307 1234",
        "line one\u{7}",
        "hidden\u{200b}mark",
    ] {
        let r = reject_teller_request(s, &id, &banks.a_admin2, reason);
        assert_eq!(
            (r.status, r.code().as_str()),
            (400, "invalid_request"),
            "{reason:?}: {}",
            r.body
        );
    }
    let no_reason = post_json(
        s,
        &format!("/v1/teller-requests/{id}/reject"),
        Some(&banks.a_admin2),
        &json!({}),
    );
    assert_eq!(no_reason.status, 400, "{}", no_reason.body);
    assert_eq!(
        teller_request(s, &id, &banks.a_admin2)["status"],
        "pending",
        "a refused rejection leaves the request as it was"
    );
    let fits = "y".repeat(500);
    assert_eq!(
        reject_teller_request(s, &id, &banks.a_admin2, &fits).status,
        200
    );
}

#[test]
fn teller_requests_are_listed_to_their_own_bank_newest_first_and_by_status() {
    let (banks, guard) = server();
    let s = guard.as_ref().unwrap();
    let older = file_teller_request(
        s,
        &banks.a_admin1,
        "CN=柜员癸,serialNumber=E9024,OU=Branch 24",
    );
    let newer = file_teller_request(
        s,
        &banks.a_admin1,
        "CN=柜员子,serialNumber=E9025,OU=Branch 25",
    );
    let rejected = reject_teller_request(s, &older, &banks.a_admin2, "duplicate");
    assert_eq!(rejected.status, 200, "{}", rejected.body);
    let all = listed_teller_requests(s, "?limit=1000", &banks.a_admin2);
    let at = |id: &String| all.iter().position(|x| x == id).expect("listed");
    assert!(at(&newer) < at(&older), "newest first: {all:?}");
    let pending = listed_teller_requests(s, "?status=pending&limit=1000", &banks.a_auditor);
    assert!(
        pending.contains(&newer) && !pending.contains(&older),
        "{pending:?}"
    );
    let refused = listed_teller_requests(s, "?status=rejected&limit=1000", &banks.a_admin1);
    assert!(
        refused.contains(&older) && !refused.contains(&newer),
        "{refused:?}"
    );
    assert_eq!(
        listed_teller_requests(s, "?limit=1", &banks.a_admin1).len(),
        1
    );
    // Another bank sees none of them, and cannot read or reject one.
    let theirs = listed_teller_requests(s, "?limit=1000", &banks.b_admin);
    assert!(
        !theirs.contains(&newer) && !theirs.contains(&older),
        "{theirs:?}"
    );
    let r = get(
        s,
        &format!("/v1/teller-requests/{newer}"),
        Some(&banks.b_admin),
    );
    assert_eq!((r.status, r.code().as_str()), (404, "not_found"));
    let r = reject_teller_request(s, &newer, &banks.b_admin, "not ours");
    assert_eq!((r.status, r.code().as_str()), (404, "not_found"));
    // Roles that neither file nor audit teller requests.
    for token in [&banks.a_officer, &banks.a_gateway] {
        let r = get(s, "/v1/teller-requests", Some(token));
        assert_eq!((r.status, r.code().as_str()), (403, "forbidden"));
    }
    let r = reject_teller_request(s, &newer, &banks.a_auditor, "auditors only read");
    assert_eq!((r.status, r.code().as_str()), (403, "forbidden"));
    // A query it does not understand is a 400 with a stable code.
    for query in [
        "?status=open",
        "?limit=many",
        "?limit=-1",
        "?limit=0",
        "?limit=1001",
        "?sort=asc",
    ] {
        let r = get(
            s,
            &format!("/v1/teller-requests{query}"),
            Some(&banks.a_admin1),
        );
        assert_eq!(
            (r.status, r.code().as_str()),
            (400, "invalid_query"),
            "{query}: {}",
            r.body
        );
    }
    assert_eq!(
        teller_request(s, &newer, &banks.a_admin1)["status"],
        "pending"
    );
}

/// `signet credential add` of a teller-admin credential of Bank A for `holder`.
fn add_bank_a_teller_admin(f: &Fixture, holder: &str) -> common::Out {
    f.signet(&[
        "credential",
        "add",
        "--tenant",
        "Bank A",
        "--role",
        "teller-admin",
        "--holder",
        holder,
    ])
}

#[test]
fn two_credentials_of_one_holder_cannot_approve_each_other_s_teller_requests() {
    let (_, guard) = server();
    let s = guard.as_ref().unwrap();
    let f = fixture();
    let admin = |holder: &str| teller_admin_of(f, holder);
    // One person however typed: full-width and lower case are the same holder.
    let (first, second, colleague) = (admin("E7001"), admin(" ｅ７００１ "), admin("E7002"));
    let list = cli_ok(f, &["credential", "list", "--tenant", "Bank A"]);
    assert_eq!(list.matches("holder \"e7001\"").count(), 2, "{list}");
    let id = file_teller_request(s, &first, "CN=柜员己,serialNumber=E9006,OU=Branch 6");
    assert_self_approval(&approve_teller_request(s, &id, &second));
    // Another person's credential approves it, and the audit log names the holders compared.
    let other = approve_teller_request(s, &id, &colleague);
    assert_eq!(other.status, 201, "{}", other.body);
    let approved = f
        .open_store()
        .audit_events(0)
        .unwrap()
        .into_iter()
        .find(|e| e.action == "teller_request.approve" && e.object == id)
        .expect("the approval is audited");
    let details: Value = serde_json::from_str(&approved.details).unwrap();
    assert_eq!(
        (&details["requested_by_holder"], &details["approver_holder"]),
        (&json!("e7001"), &json!("e7002")),
        "{details}"
    );
}

/// The id of the credential `credential add` made: on stderr, "credential <id> (role) for ...".
fn credential_id(added: &common::Out) -> String {
    added
        .stderr
        .split_whitespace()
        .skip_while(|w| *w != "credential")
        .nth(1)
        .expect("credential id on stderr")
        .to_string()
}

/// A teller request filed before store version 10 kept its filer's holder has none of its own:
/// the rule then compares the holder of the credential that filed it.
#[test]
fn a_request_filed_before_holders_were_recorded_compares_the_filing_credential_s_holder() {
    let (_, guard) = server();
    let s = guard.as_ref().unwrap();
    let f = fixture();
    let filer = add_bank_a_teller_admin(f, "E7101");
    filer.assert_ok();
    let (same, colleague) = (teller_admin_of(f, " e7101 "), teller_admin_of(f, "E7102"));
    let store = f.open_store();
    let bank = store.tenant_by_name("Bank A").unwrap().unwrap();
    let now = common::now_unix() as i64;
    let id = "treq_filed_before_version_10";
    let request = signet::store::TellerRequestRecord {
        id: id.into(),
        tenant_id: bank.id.clone(),
        requested_by: credential_id(&filer),
        requested_by_holder: None,
        csr: csr_pem(f).into_bytes(),
        subject: "CN=柜员庚,serialNumber=E9007,OU=Branch 7".into(),
        status: signet::store::RequestStatus::Pending,
        created_at: now,
        expires_at: now + 3600,
        decided_by: None,
        decided_at: None,
        decision_reason: None,
        serial: None,
        kind: "certificate".into(),
        teller_id: None,
    };
    let submitted = signet::audit::AuditEvent::new(
        &format!("credential:{}", request.requested_by),
        "teller_request.submit",
        id,
        json!({}),
    )
    .for_tenant(Some(&bank.id));
    store.add_teller_request(&request, &submitted).unwrap();
    assert_self_approval(&approve_teller_request(s, id, &same));
    let by_colleague = approve_teller_request(s, id, &colleague);
    assert_eq!(by_colleague.status, 201, "{}", by_colleague.body);
}

/// The two-person rule cannot compare a person with no one: of the filing and the approving
/// credential, one with a holder and one without is refused either way round.
#[test]
fn a_request_filed_and_approved_by_credentials_only_one_of_which_names_a_holder_is_refused() {
    let (banks, guard) = server();
    let s = guard.as_ref().unwrap();
    let f = fixture();
    let named = teller_admin_of(f, "E7501");
    let assert_holder_unknown = |r: &common::http::Reply| {
        assert_eq!(
            (r.status, r.code().as_str()),
            (403, "holder_unknown"),
            "{}",
            r.body
        );
        assert!(r.body.contains("set-holder"), "{}", r.body);
    };
    let id = file_teller_request(s, &named, "CN=柜员壬,serialNumber=E9009,OU=Branch 9");
    assert_holder_unknown(&approve_teller_request(s, &id, &banks.a_admin1));
    let id = file_teller_request(
        s,
        &banks.a_admin1,
        "CN=柜员癸,serialNumber=E9010,OU=Branch 9",
    );
    assert_holder_unknown(&approve_teller_request(s, &id, &named));
    // Two holderless credentials: as before (the start warns of holderless mTLS mappings).
    let by_other = approve_teller_request(s, &id, &banks.a_admin2);
    assert_eq!(by_other.status, 201, "{}", by_other.body);
}

/// A credential made without a holder can be given one, once: from then on the two-person rule
/// knows its person; a second holder, a holder that names no one, or an unknown credential is
/// refused.
#[test]
fn a_credential_made_without_a_holder_is_given_one_once_and_the_rule_then_knows_it() {
    let (_, guard) = server();
    let s = guard.as_ref().unwrap();
    let f = fixture();
    let added = f.signet(&[
        "credential",
        "add",
        "--tenant",
        "Bank A",
        "--role",
        "teller-admin",
    ]);
    added.assert_ok();
    let (token, id) = (added.stdout.trim().to_string(), credential_id(&added));
    // Filed while the credential has no holder: the holder given later is the one compared.
    let request = file_teller_request(s, &token, "CN=柜员辛,serialNumber=E9008,OU=Branch 8");
    let set = |holder: &str, id: &str| {
        f.signet(&[
            "credential",
            "set-holder",
            "--tenant",
            "Bank A",
            "--id",
            id,
            "--holder",
            holder,
        ])
    };
    set("E7301", &id).assert_ok();
    let list = cli_ok(f, &["credential", "list", "--tenant", "Bank A"]);
    assert!(
        list.lines()
            .any(|l| l.starts_with(id.as_str()) && l.ends_with("holder \"e7301\"")),
        "{list}"
    );
    let again = set("E7302", &id);
    assert!(!again.status.success());
    assert!(
        again.stderr.contains("already has a holder"),
        "{}",
        again.stderr
    );
    assert_eq!(set("E73\u{200B}02", &id).status.code(), Some(64));
    assert_eq!(set("11010119900308123X", &id).status.code(), Some(64));
    let unknown = set("E7302", "cred_00000000000000000000000000000000");
    assert!(!unknown.status.success());
    assert!(unknown.stderr.contains("not found"), "{}", unknown.stderr);
    // The same person's other credential cannot approve what this one filed.
    let other = teller_admin_of(f, "e7301");
    assert_self_approval(&approve_teller_request(s, &request, &other));
}

#[test]
fn a_credential_holder_must_name_someone() {
    let (_, _guard) = server();
    let f = fixture();
    for bad in ["", "  ", "E1\nE2", "E7001\u{200B}", "\u{202E}1007E"] {
        let out = add_bank_a_teller_admin(f, bad);
        assert_eq!(out.status.code(), Some(64), "{bad:?}: {}", out.stderr);
        assert!(out.stderr.contains("--holder"), "{}", out.stderr);
    }
}

#[test]
fn teller_certificate_can_be_held_and_released_by_a_teller_admin() {
    let (banks, guard) = server();
    let s = guard.as_ref().unwrap();
    let serial = issue_teller(s, banks, "CN=柜员丙,serialNumber=E9003,OU=Branch 3");
    let held = post_json(
        s,
        &format!("/v1/certificates/{serial}/hold"),
        Some(&banks.a_admin1),
        &json!({}),
    );
    assert_eq!(held.json()["status"], "on_hold", "{}", held.body);
    let released = post_json(
        s,
        &format!("/v1/certificates/{serial}/release"),
        Some(&banks.a_admin2),
        &json!({}),
    );
    assert_eq!(released.json()["status"], "good", "{}", released.body);
    // An ra-officer cannot touch teller certificates.
    let r = post_json(
        s,
        &format!("/v1/certificates/{serial}/revoke"),
        Some(&banks.a_officer),
        &json!({"reason": "keyCompromise"}),
    );
    assert_eq!(r.status, 403, "{}", r.body);
}

#[test]
fn a_hold_of_a_teller_certificate_makes_a_teller_crl_and_no_customer_crl_or_arl() {
    let (banks, guard) = server();
    let s = guard.as_ref().unwrap();
    let f = fixture();
    let serial = issue_teller(s, banks, "CN=柜员戊,serialNumber=E9005,OU=Branch 5");
    wait_until_every_crl_lists_its_scope_s_changes(f);
    let before = crl_numbers(f);
    let held = post_json(
        s,
        &format!("/v1/certificates/{serial}/hold"),
        Some(&banks.a_admin1),
        &json!({}),
    );
    assert_eq!(held.json()["status"], "on_hold", "{}", held.body);
    wait_until_every_crl_lists_its_scope_s_changes(f);
    // The refresher's pass looks at every scope; one more second lets a pass still under
    // way finish.
    std::thread::sleep(Duration::from_secs(1));
    let after = crl_numbers(f);
    assert_eq!(
        (after[0], after[1]),
        (before[0], before[1]),
        "the root's ARL and the customer CRL were made again for a teller's hold"
    );
    assert!(after[2] > before[2], "no teller CRL was made for the hold");
    assert!(
        on_newest_crl(f, IssuerId::Teller, &serial),
        "the teller CRL does not list the hold"
    );
}

#[test]
fn auditor_reads_its_own_banks_events_in_chain_order() {
    let (banks, guard) = server();
    let s = guard.as_ref().unwrap();
    issue_customer(s, &banks.a_officer);
    let r = get(s, "/v1/audit-events?since=0", Some(&banks.a_auditor));
    assert_eq!(r.status, 200, "{}", r.body);
    let events = r.json()["events"].as_array().unwrap().clone();
    assert!(events.iter().any(|e| e["action"] == "certificate.issue"));
    let bank_a = events[0]["tenant"].as_str().unwrap().to_string();
    let mut last = 0;
    for e in &events {
        assert_eq!(
            e["tenant"].as_str(),
            Some(bank_a.as_str()),
            "only bank A's events"
        );
        let seq = e["seq"].as_u64().unwrap();
        assert!(seq > last, "in order");
        last = seq;
        assert_eq!(e["hash"].as_str().unwrap().len(), 64);
    }
    let later = get(
        s,
        &format!("/v1/audit-events?since={last}"),
        Some(&banks.a_auditor),
    );
    assert_eq!(later.json()["events"].as_array().unwrap().len(), 0);
    // A query it cannot read is a 400 with a stable code, not axum's plain text.
    let r = get(
        s,
        "/v1/audit-events?since=yesterday",
        Some(&banks.a_auditor),
    );
    assert_eq!(
        (r.status, r.code().as_str()),
        (400, "invalid_query"),
        "{}",
        r.body
    );
}

#[test]
fn a_banks_auditor_sees_the_revocation_hold_and_release_of_its_certificates() {
    let (banks, guard) = server();
    let s = guard.as_ref().unwrap();
    let before = bank_a_head(s, &banks.a_auditor);
    let revoked = issue_and_revoke(s, &banks.a_officer, "keyCompromise");
    let teller = issue_teller(s, banks, "CN=柜员审,serialNumber=E9011,OU=Branch 11");
    for change in ["hold", "release"] {
        let r = post_json(
            s,
            &format!("/v1/certificates/{teller}/{change}"),
            Some(&banks.a_admin1),
            &json!({}),
        );
        assert_eq!(r.status, 200, "{change}: {}", r.body);
    }
    let events = bank_a_events_since(s, &banks.a_auditor, before);
    for (action, serial) in [
        ("certificate.revoke", &revoked),
        ("certificate.hold", &teller),
        ("certificate.release", &teller),
    ] {
        assert!(
            events
                .iter()
                .any(|e| e["action"] == action && e["object"] == serial.as_str()),
            "bank A's auditor does not see {action} of {serial}: {events:?}"
        );
    }
}

// --------------------------------------------------------------------------------------
// Bad input

#[test]
fn malformed_json_gets_400_malformed_json() {
    let (banks, guard) = server();
    let s = guard.as_ref().unwrap();
    let r = post_raw(
        s,
        "/v1/certificates",
        Some(&banks.a_officer),
        "application/json",
        b"{\"profile\": ",
    );
    assert_eq!((r.status, r.code().as_str()), (400, "malformed_json"));
}

#[test]
fn wrong_content_type_gets_415() {
    let (banks, guard) = server();
    let s = guard.as_ref().unwrap();
    let r = post_raw(
        s,
        "/v1/certificates",
        Some(&banks.a_officer),
        "text/plain",
        b"{}",
    );
    assert_eq!(
        (r.status, r.code().as_str()),
        (415, "unsupported_media_type")
    );
}

/// The body is looked at only once the caller is known: a request without a valid token gets
/// 401 whatever its body, on the routes that authenticate inside their work's blocking call
/// (certificate requests and verifications) as on the others; with a valid token the same bodies
/// get their own refusals.
#[test]
fn a_body_is_refused_only_after_its_caller_is_authenticated() {
    let (banks, guard) = server();
    let s = guard.as_ref().unwrap();
    let bodies: [(&str, &[u8]); 3] = [
        ("application/json", b"{"),
        ("text/plain", b"{}"),
        ("application/json", b"{\"unexpected\": 1}"),
    ];
    let answers = [
        (400, "malformed_json"),
        (415, "unsupported_media_type"),
        (400, "invalid_request"),
    ];
    for (path, token) in [
        ("/v1/certificates", &banks.a_officer),
        ("/v1/certificates/batch", &banks.a_officer),
        ("/v1/verifications", &banks.a_gateway),
        ("/v1/verifications/batch", &banks.a_gateway),
        // A route that authenticates before its handler runs (`Caller`).
        ("/v1/tellers", &banks.a_admin1),
    ] {
        for ((content_type, body), answer) in bodies.iter().zip(answers) {
            let r = post_raw(s, path, None, content_type, body);
            assert_eq!(
                (r.status, r.code().as_str()),
                (401, "unauthenticated"),
                "{path} {content_type} without a token"
            );
            let r = post_raw(s, path, Some(token), content_type, body);
            assert_eq!(
                (r.status, r.code().as_str()),
                answer,
                "{path} {content_type}"
            );
        }
    }
    // Bodies the handlers refuse, not the extractors: no batch items, bad base64, and a body
    // over the limit (which a caller without a credential does not even get to send).
    for (path, body) in [
        ("/v1/certificates/batch", &b"{\"items\": []}"[..]),
        ("/v1/verifications/batch", &b"{\"items\": []}"[..]),
        (
            "/v1/verifications",
            &b"{\"instruction\": \"!!\", \"signature\": \"!!\"}"[..],
        ),
    ] {
        let r = post_raw(s, path, None, "application/json", body);
        assert_eq!(
            (r.status, r.code().as_str()),
            (401, "unauthenticated"),
            "{path}"
        );
    }
    let big = format!("{{\"instruction\": \"{}\"}}", "A".repeat(300 * 1024));
    for path in ["/v1/verifications", "/v1/verifications/batch"] {
        let answer = post_raw_tcp(s, path, None, big.as_bytes());
        assert!(answer.starts_with("HTTP/1.1 401"), "{path}: {answer}");
    }
    // Without a credential the body is not waited for: a client that announces one and sends
    // nothing is answered at once, not when the request times out.
    for path in ["/v1/certificates", "/v1/verifications", "/v1/tellers"] {
        use std::io::{Read, Write};
        let addr = s.base.trim_start_matches("http://");
        let mut conn = std::net::TcpStream::connect(addr).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
        );
        conn.write_all(head.as_bytes()).unwrap();
        let mut answer = [0u8; 12];
        let read = conn.read_exact(&mut answer);
        assert!(
            read.is_ok() && answer.starts_with(b"HTTP/1.1 401"),
            "{path}: {read:?} {:?}",
            String::from_utf8_lossy(&answer)
        );
    }
    // An unknown token too (once: each counts against this address's failure limit, which
    // the other tests of this server share).
    let unknown = "sgt_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let r = post_raw(s, "/v1/verifications", Some(unknown), "text/plain", b"{");
    assert_eq!((r.status, r.code().as_str()), (401, "unauthenticated"));
}

#[test]
fn body_over_the_limit_gets_413() {
    let (banks, guard) = server();
    let s = guard.as_ref().unwrap();
    let big = format!(
        "{{\"profile\":\"customer\",\"csr\":\"{}\",\"subject\":\"CN=x\"}}",
        "A".repeat(200 * 1024)
    );
    // Raw TCP: the server answers 413 as soon as the length is over the limit and may close
    // the connection while a client is still writing, so write errors are not the verdict.
    let answer = post_raw_tcp(
        s,
        "/v1/certificates",
        Some(&banks.a_officer),
        big.as_bytes(),
    );
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("body_too_large"), "{answer}");
}

/// Sends `body` to `path` over raw TCP and returns the whole answer: the server may answer
/// and close before a large body is fully written, so write errors are not the verdict.
fn post_raw_tcp(s: &Server, path: &str, token: Option<&str>, body: &[u8]) -> String {
    use std::io::{Read, Write};
    let addr = s.base.trim_start_matches("http://");
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let authorization = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\n{authorization}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).unwrap();
    let _ = conn.write_all(body);
    let mut answer = Vec::new();
    let _ = conn.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

#[test]
fn a_100000_deep_json_array_is_refused_and_the_server_keeps_serving() {
    let (banks, guard) = server();
    let s = guard.as_ref().unwrap();
    let deep = "[".repeat(100_000);
    let answer = post_raw_tcp(
        s,
        "/v1/certificates",
        Some(&banks.a_officer),
        deep.as_bytes(),
    );
    // 100,000 bytes: over the body limit, refused before any parsing.
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("body_too_large"), "{answer}");
    assert_eq!(get(s, "/healthz", None).status, 200);
}

#[test]
fn json_nested_past_32_levels_gets_400_json_too_deep_and_the_server_keeps_serving() {
    let (banks, guard) = server();
    let s = guard.as_ref().unwrap();
    let deep = "[".repeat(60_000) + &"]".repeat(5_000);
    let r = post_raw(
        s,
        "/v1/certificates",
        Some(&banks.a_officer),
        "application/json",
        deep.as_bytes(),
    );
    assert_eq!((r.status, r.code().as_str()), (400, "json_too_deep"));
    assert_eq!(get(s, "/healthz", None).status, 200);
}

/// `levels` DER SEQUENCEs, each holding the next, around an empty one.
fn nested_der_sequences(levels: usize) -> Vec<u8> {
    let mut v = vec![0x30, 0x00];
    for _ in 0..levels {
        let len = v.len() as u32;
        let mut head = vec![0x30];
        match len {
            0..=0x7f => head.push(len as u8),
            0x80..=0xff => head.extend_from_slice(&[0x81, len as u8]),
            0x100..=0xffff => head.extend_from_slice(&[0x82, (len >> 8) as u8, len as u8]),
            _ => head.extend_from_slice(&[0x83, (len >> 16) as u8, (len >> 8) as u8, len as u8]),
        }
        head.extend_from_slice(&v);
        v = head;
    }
    v
}

#[test]
fn a_deeply_nested_der_csr_gets_400_not_a_csr_and_the_server_keeps_serving() {
    let (banks, guard) = server();
    let s = guard.as_ref().unwrap();
    let der = nested_der_sequences(5_000);
    let b64 = base64_std(&der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|l| std::str::from_utf8(l).unwrap())
        .collect();
    let pem = format!(
        "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
        lines.join("\n")
    );
    let r = post_json(
        s,
        "/v1/certificates",
        Some(&banks.a_officer),
        &json!({"profile": "customer", "csr": pem, "subject": "CN=x,serialNumber=110101199003071234"}),
    );
    assert_eq!((r.status, r.code().as_str()), (400, "not_a_csr"));
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("nested more than"));
    assert_eq!(get(s, "/healthz", None).status, 200);
}

#[test]
fn missing_field_gets_400_invalid_request() {
    let (banks, guard) = server();
    let s = guard.as_ref().unwrap();
    let r = post_json(
        s,
        "/v1/certificates",
        Some(&banks.a_officer),
        &json!({"profile": "customer"}),
    );
    assert_eq!((r.status, r.code().as_str()), (400, "invalid_request"));
}

#[test]
fn csr_that_is_not_a_csr_gets_400_not_a_csr() {
    let (banks, guard) = server();
    let s = guard.as_ref().unwrap();
    let r = post_json(
        s,
        "/v1/certificates",
        Some(&banks.a_officer),
        &json!({"profile": "customer", "csr": "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n", "subject": "CN=A,serialNumber=1"}),
    );
    assert_eq!((r.status, r.code().as_str()), (400, "not_a_csr"));
}

#[test]
fn teller_profile_on_the_certificates_route_gets_403() {
    let (banks, guard) = server();
    let s = guard.as_ref().unwrap();
    let f = fixture();
    let r = post_json(
        s,
        "/v1/certificates",
        Some(&banks.a_officer),
        &json!({"profile": "teller", "csr": csr_pem(f), "subject": "CN=T,serialNumber=E1,OU=B"}),
    );
    assert_eq!(
        (r.status, r.code().as_str()),
        (403, "teller_requires_approval")
    );
}

#[test]
fn unknown_route_and_bad_serial_get_json_errors() {
    let (banks, guard) = server();
    let s = guard.as_ref().unwrap();
    let r = get(s, "/v1/nothing-here", None);
    assert_eq!((r.status, r.code().as_str()), (404, "not_found"));
    let r = get(s, "/v1/certificates/not-hex!", Some(&banks.a_officer));
    assert_eq!((r.status, r.code().as_str()), (400, "invalid_request"));
    let r = post_json(
        s,
        "/v1/certificates/00/revoke",
        Some(&banks.a_officer),
        &json!({"reason": "becauseISaidSo"}),
    );
    assert_eq!((r.status, r.code().as_str()), (400, "invalid_reason"));
    // RFC 5280 names it, but for attribute certificates' authorities.
    let r = post_json(
        s,
        "/v1/certificates/00/revoke",
        Some(&banks.a_officer),
        &json!({"reason": "aACompromise"}),
    );
    assert_eq!((r.status, r.code().as_str()), (400, "invalid_reason"));
}

// --------------------------------------------------------------------------------------
// Operations

#[test]
fn openapi_document_is_openapi_3_and_lists_every_v1_route() {
    let (_, guard) = server();
    let s = guard.as_ref().unwrap();
    let doc = get(s, "/openapi.json", None).json();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    let expected = [
        ("post", "/v1/certificates"),
        ("post", "/v1/certificates/search"),
        ("get", "/v1/certificates/{serial}"),
        ("post", "/v1/certificates/{serial}/revoke"),
        ("post", "/v1/certificates/{serial}/hold"),
        ("post", "/v1/certificates/{serial}/release"),
        ("post", "/v1/teller-requests"),
        ("post", "/v1/teller-requests/{id}/approve"),
        ("post", "/v1/teller-requests/{id}/reject"),
        ("get", "/v1/teller-requests"),
        ("get", "/v1/teller-requests/{id}"),
        ("get", "/v1/audit-events"),
        ("get", "/v1/ca"),
        ("post", "/v1/verifications"),
        ("post", "/v1/verifications/certificate"),
    ];
    for (method, path) in expected {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path} missing"
        );
    }
    // And every documented route exists on the server (no "no such route" 404).
    for (path, ops) in paths {
        let concrete = path.replace("{serial}", "01").replace("{id}", "treq_0");
        for method in ops.as_object().unwrap().keys() {
            let r = match method.as_str() {
                "get" => get(s, &concrete, None),
                _ => post_json(s, &concrete, None, &json!({})),
            };
            assert!(
                !(r.status == 404 && r.body.contains("no such route")),
                "{method} {path} is documented but not served"
            );
        }
    }
}

#[test]
fn healthz_and_metrics_report() {
    let (_, guard) = server();
    let s = guard.as_ref().unwrap();
    let h = get(s, "/healthz", None);
    assert_eq!(h.status, 200, "{}", h.body);
    assert_eq!(h.json()["hsm"], "ok");
    let m = get(s, "/metrics", None);
    assert!(m.content_type.starts_with("text/plain"));
    assert!(
        m.body
            .contains("signet_http_requests_total{route=\"/healthz\",status=\"200\"}"),
        "{}",
        m.body
    );
    assert!(m.body.contains("signet_hsm_sign_seconds_count"));
}

#[test]
fn restart_keeps_certificates_revocations_and_credentials_and_the_audit_chain_verifies() {
    let (banks, mut guard) = server();
    let f = fixture();
    let (live, revoked) = {
        let s = guard.as_ref().unwrap();
        let (live, _) = issue_customer(s, &banks.a_officer);
        let (revoked, _) = issue_customer(s, &banks.a_officer);
        let r = post_json(
            s,
            &format!("/v1/certificates/{revoked}/revoke"),
            Some(&banks.a_officer),
            &json!({"reason": "cessationOfOperation"}),
        );
        assert_eq!(r.status, 200);
        (live, revoked)
    };
    guard.take().unwrap().stop();
    // Graceful shutdown checkpointed the chain head: the file's last checkpoint is the head.
    let head = f
        .open_store()
        .audit_head()
        .unwrap()
        .expect("audit events")
        .seq as i64;
    let file = std::fs::read_to_string(&f.checkpoints).unwrap();
    let last: Value = serde_json::from_str(file.lines().last().unwrap()).unwrap();
    assert_eq!(last["seq"].as_i64(), Some(head), "checkpoint at shutdown");
    let out = f.signet(&["audit", "verify"]);
    out.assert_ok();
    *guard = Some(Server::start(f));
    let s = guard.as_ref().unwrap();
    let a = get(
        s,
        &format!("/v1/certificates/{live}"),
        Some(&banks.a_officer),
    );
    assert_eq!(a.json()["status"], "good", "{}", a.body);
    let b = get(
        s,
        &format!("/v1/certificates/{revoked}"),
        Some(&banks.a_officer),
    );
    assert_eq!(b.json()["status"], "revoked", "{}", b.body);
    assert_eq!(b.json()["revocation_reason"], "cessationOfOperation");
}

#[test]
fn a_revocation_just_before_a_graceful_stop_is_on_a_crl_when_the_process_ends() {
    let (banks, mut guard) = server();
    let f = fixture();
    let serial = issue_and_revoke(guard.as_ref().unwrap(), &banks.a_officer, "keyCompromise");
    // Stopped inside the wait that gathers a burst of revocations into one CRL: the process
    // makes that CRL before it ends, or the revocation would be on none until a later refresh.
    guard.take().unwrap().stop();
    assert!(
        on_newest_customer_crl(f, &serial),
        "{serial} is not on the newest customer CRL"
    );
    let store = f.open_store();
    // That CRL's audit event came before the shutdown checkpoint, which is the chain's head.
    let head = store.audit_head().unwrap().expect("audit events").seq;
    let last = store.checkpoints().unwrap().last().map(|c| c.seq);
    assert_eq!(last, Some(head), "the shutdown checkpoint is not the head");
    *guard = Some(Server::start(f));
}

/// Whether the newest customer CRL in the store lists `serial`.
fn on_newest_customer_crl(f: &Fixture, serial: &str) -> bool {
    on_newest_crl(f, IssuerId::Customer, serial)
}

/// Whether the newest (unsharded) CRL of `issuer` in the store lists `serial`.
fn on_newest_crl(f: &Fixture, issuer: IssuerId, serial: &str) -> bool {
    let Some(der) = f
        .open_store()
        .latest_crl(issuer, None)
        .unwrap()
        .and_then(|c| c.crl_der)
    else {
        return false;
    };
    let crl =
        x509_cert::crl::CertificateList::<x509_cert::certificate::Rfc5280>::from_der(&der).unwrap();
    crl.tbs_cert_list
        .revoked_certificates
        .unwrap_or_default()
        .iter()
        .any(|e| norm_serial(&hex::encode(e.serial_number.as_bytes())) == norm_serial(serial))
}

/// Waits (10 s at most) until the newest customer CRL in the store lists `serial`.
fn wait_for_newest_customer_crl_to_list(f: &Fixture, serial: &str) {
    assert!(
        wait_until(Duration::from_secs(10), || on_newest_customer_crl(
            f, serial
        ))
        .is_some(),
        "{serial} is not on the newest customer CRL after 10 s"
    );
}

/// Waits (45 s at most) until each scope's newest CRL was made at its scope's status epoch. A
/// change made by another process (the CLI) is seen by the server's periodic check, every 30 s.
fn wait_until_every_crl_lists_its_scope_s_changes(f: &Fixture) {
    let store = f.open_store();
    let current = wait_until(Duration::from_secs(45), || {
        [IssuerId::Root, IssuerId::Customer, IssuerId::Teller]
            .into_iter()
            .all(|i| {
                let info = store.latest_crl_info(i, None).unwrap();
                info.and_then(|c| c.status_epoch) == Some(store.crl_scope_epoch(i, None).unwrap())
            })
    });
    assert!(
        current.is_some(),
        "the CRLs do not list their scopes' changes"
    );
}

/// A CRL that took its number but was never signed (its maker died, or its HSM call failed,
/// between recording it and storing the signed DER) holds its scope up only until it is taken
/// for abandoned: the next change is listed on a CRL that succeeds it.
#[test]
fn a_crl_abandoned_unsigned_is_succeeded_and_the_next_change_listed() {
    let (banks, guard) = server();
    let s = guard.as_ref().unwrap();
    let f = fixture();
    wait_until_every_crl_lists_its_scope_s_changes(f);
    let store = f.open_store();
    let now = common::now_unix() as i64;
    // Made ten minutes ago, from the records as they are now, and never signed.
    let abandoned = signet::store::NewCrl {
        issuer: IssuerId::Customer,
        shard: None,
        this_update: now - 600,
        next_update: now + 3600,
        status_epoch: store.crl_scope_epoch(IssuerId::Customer, None).unwrap(),
        succeeds: signet::store::Succeeds::Newest,
    };
    let (number, _) = store
        .record_crl(
            &abandoned,
            &mut |_| Ok(b"never signed".to_vec()),
            &signet::audit::AuditEvent::new("test", "crl.generate", "crl:customer", json!({})),
        )
        .unwrap()
        .expect("recorded");
    let serial = issue_and_revoke(s, &banks.a_officer, "superseded");
    wait_for_newest_customer_crl_to_list(f, &serial);
    let newest = store
        .latest_crl_info(IssuerId::Customer, None)
        .unwrap()
        .unwrap();
    assert!(newest.number > number, "{} after {number}", newest.number);
}

/// The newest CRL numbers of the root, the customer CA and the teller CA (the fixture publishes
/// no shards).
fn crl_numbers(f: &Fixture) -> Vec<Option<u64>> {
    let store = f.open_store();
    [IssuerId::Root, IssuerId::Customer, IssuerId::Teller]
        .into_iter()
        .map(|i| store.latest_crl_info(i, None).unwrap().map(|c| c.number))
        .collect()
}

#[test]
fn a_revocation_made_with_the_cli_while_no_server_ran_is_on_a_crl_as_soon_as_a_server_starts() {
    let (banks, mut guard) = server();
    let f = fixture();
    let (serial, _) = issue_customer(guard.as_ref().unwrap(), &banks.a_officer);
    guard.take().unwrap().stop();
    f.signet(&args![
        "revoke",
        "--serial",
        &serial,
        "--reason",
        "keyCompromise"
    ])
    .assert_ok();
    assert!(!on_newest_customer_crl(f, &serial), "the CLI makes no CRL");
    *guard = Some(Server::start(f));
    // Not at the first periodic check (30 s later): the start looks at once.
    wait_for_newest_customer_crl_to_list(f, &serial);
}

#[test]
fn a_second_server_on_the_same_store_makes_no_crl_for_a_change_the_first_one_listed() {
    let (banks, guard) = server();
    let s = guard.as_ref().unwrap();
    let f = fixture();
    issue_and_revoke(s, &banks.a_officer, "superseded");
    // The first server makes the customer CRL after the change.
    wait_until_every_crl_lists_its_scope_s_changes(f);
    let listed = crl_numbers(f);
    // Its start looks at every scope: each CRL records the status epoch of its scope it
    // lists, which is the scope's now, so nothing is made again.
    let second = Server::start(f);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        crl_numbers(f),
        listed,
        "the second server made CRLs at its start"
    );
    second.stop();
    assert_eq!(
        crl_numbers(f),
        listed,
        "the second server made CRLs at its stop"
    );
}

#[test]
fn a_pending_teller_request_expires_unapproved() {
    let (banks, guard) = server();
    let s = guard.as_ref().unwrap();
    let f = fixture();
    let r = post_json(
        s,
        "/v1/teller-requests",
        Some(&banks.a_admin1),
        &json!({"csr": csr_pem(f), "subject": "CN=柜员丁,serialNumber=E9004,OU=Branch 4"}),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.json()["id"].as_str().unwrap().to_string();
    // A second server whose clock stands 25 hours later (tests hold the shared server's lock,
    // so nothing else is in flight).
    let later = common::now_unix() + 25 * 3600;
    let late = Server::start_with(f, &[("SIGNET_FAKE_NOW", later.to_string())]);
    // Listed as expired before anyone tries to decide it: it can no longer be approved.
    assert_eq!(
        teller_request(&late, &id, &banks.a_auditor)["status"],
        "expired"
    );
    let listed = |query: &str| listed_teller_requests(&late, query, &banks.a_admin2);
    assert!(listed("?status=expired&limit=1000").contains(&id));
    assert!(!listed("?status=pending&limit=1000").contains(&id));
    let approve = post_json(
        &late,
        &format!("/v1/teller-requests/{id}/approve"),
        Some(&banks.a_admin2),
        &json!({}),
    );
    assert_eq!(
        (approve.status, approve.code().as_str()),
        (409, "request_expired")
    );
    late.stop();
    let again = post_json(
        s,
        &format!("/v1/teller-requests/{id}/approve"),
        Some(&banks.a_admin2),
        &json!({}),
    );
    assert_eq!(
        (again.status, again.code().as_str()),
        (409, "conflict"),
        "expired stays expired"
    );
}

// --------------------------------------------------------------------------------------
// Verification for payment gateways

fn gateway_signature(f: &Fixture, instruction: &[u8]) -> (String, Vec<u8>) {
    // A customer of bank A signs with OpenSSL (detached CMS, signed attributes).
    let (key, csr) = f.key_and_csr(KeyKind::P256);
    let subject = format!("CN=付款人,serialNumber=G{}", next_id());
    let cert = f
        .issue_with(
            &f.config,
            "customer",
            &csr,
            &subject,
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
    (
        base64_std(&std::fs::read(&cert).unwrap()),
        std::fs::read(sig).unwrap(),
    )
}

#[test]
fn gateway_gets_a_report_with_the_signers_bank_and_a_receipt() {
    let (_, guard) = server();
    let s = guard.as_ref().unwrap();
    let f = fixture();
    f.signet(&["ca", "upgrade"]).assert_ok();
    let gateway = new_credential(f, "Bank B", "gateway");
    let instruction = format!(
        r#"{{"instruction_id":"API-{}","amount":"88.00"}}"#,
        next_id()
    );
    let (_, sig) = gateway_signature(f, instruction.as_bytes());
    let r = post_json(
        s,
        "/v1/verifications",
        Some(&gateway),
        &json!({"instruction": base64_std(instruction.as_bytes()), "signature": base64_std(&sig), "receipt": true}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["indication"], "TOTAL_PASSED", "{}", r.body);
    assert_eq!(
        v["signer"]["bank"], "Bank A",
        "a gateway of bank B sees bank A's signer"
    );
    assert_eq!(v["electronic_signature_law"]["reliable"], true);
    let receipt = f.path("api-receipt.der");
    std::fs::write(&receipt, base64_decode(v["receipt"].as_str().unwrap())).unwrap();
    let out = f.openssl_cms_verify(&receipt);
    out.assert_ok();
}

#[test]
fn unparseable_signature_is_a_200_format_failure_but_bad_base64_is_a_400() {
    let (_, guard) = server();
    let s = guard.as_ref().unwrap();
    let f = fixture();
    let gateway = new_credential(f, "Bank A", "gateway");
    let r = post_json(
        s,
        "/v1/verifications",
        Some(&gateway),
        &json!({"instruction": base64_std(b"pay 1"), "signature": base64_std(b"\x30\x03\x02\x01")}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        (
            r.json()["indication"].as_str(),
            r.json()["sub_indication"].as_str()
        ),
        (Some("TOTAL_FAILED"), Some("FORMAT_FAILURE"))
    );
    let bad = post_json(
        s,
        "/v1/verifications",
        Some(&gateway),
        &json!({"instruction": "***not base64***", "signature": "AAAA"}),
    );
    assert_eq!((bad.status, bad.code().as_str()), (400, "invalid_request"));
    let missing = post_json(
        s,
        "/v1/verifications",
        Some(&gateway),
        &json!({"instruction": "AAAA"}),
    );
    assert_eq!(
        (missing.status, missing.code().as_str()),
        (400, "invalid_request")
    );
}

#[test]
fn a_certificate_batch_issues_each_good_request_and_answers_each_bad_one_with_its_own_error() {
    let (banks, guard) = server();
    let s = guard.as_ref().unwrap();
    let f = fixture();
    let n = next_id();
    let good = |i: u64| json!({"profile": "customer", "csr": csr_pem(f), "subject": format!("CN=批量{n}-{i},serialNumber=11010119900307{i:04}")});
    let r = post_json(
        s,
        "/v1/certificates/batch",
        Some(&banks.a_officer),
        &json!({"items": [
            good(1),
            {"profile": "customer", "csr": "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n", "subject": "CN=x,serialNumber=1"},
            {"profile": "teller", "csr": csr_pem(f), "subject": "CN=y,serialNumber=2"},
            good(2),
        ]}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let results = r.json()["results"].as_array().unwrap().clone();
    assert_eq!(results.len(), 4);
    // The bad ones get the codes POST /v1/certificates would give them.
    let single =
        |body: Value| post_json(s, "/v1/certificates", Some(&banks.a_officer), &body).code();
    assert_eq!(
        results[1]["error"]["code"].as_str().unwrap(),
        single(
            json!({"profile": "customer", "csr": "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n", "subject": "CN=x,serialNumber=1"})
        ),
        "{}",
        results[1]
    );
    assert_eq!(
        results[2]["error"]["code"].as_str().unwrap(),
        single(json!({"profile": "teller", "csr": csr_pem(f), "subject": "CN=y,serialNumber=2"})),
        "{}",
        results[2]
    );
    // The good ones are issued, in order, each in the store and valid for OpenSSL.
    for (i, result) in [(1, &results[0]), (2, &results[3])] {
        let serial = result["serial"]
            .as_str()
            .unwrap_or_else(|| panic!("{result}"));
        let leaf = f.path(&format!("batch-leaf-{i}.pem"));
        std::fs::write(&leaf, result["certificate"].as_str().unwrap()).unwrap();
        f.assert_customer_certificate_verifies(&leaf);
        let subject = openssl(&args![
            "x509", "-noout", "-subject", "-nameopt", "utf8", "-in", &leaf
        ]);
        assert!(
            subject.stdout.contains(&format!("批量{n}-{i}")),
            "{}",
            subject.stdout
        );
        let rec = get(
            s,
            &format!("/v1/certificates/{serial}"),
            Some(&banks.a_officer),
        );
        assert_eq!(rec.json()["status"], "good", "{}", rec.body);
    }
}

/// 24 requests to `path` at once, the i-th by `callers[i % 3]` with body `body(i)`; those of
/// the caller named `forbidden` must get 403 `forbidden`. The others' (caller, i, answer).
fn post_at_once(
    s: &Server,
    path: &str,
    callers: &[(&'static str, &str); 3],
    forbidden: &str,
    body: impl Fn(usize) -> Value,
) -> Vec<(&'static str, usize, common::http::Reply)> {
    let answers: Vec<_> = std::thread::scope(|scope| {
        let running: Vec<_> = (0..24)
            .map(|i| {
                let (who, token) = callers[i % 3];
                let body = body(i);
                scope.spawn(move || (who, i, post_json(s, path, Some(token), &body)))
            })
            .collect();
        running.into_iter().map(|t| t.join().unwrap()).collect()
    });
    answers
        .into_iter()
        .filter(|(who, _, r)| {
            if *who != forbidden {
                return true;
            }
            assert_eq!(
                (r.status, r.code().as_str()),
                (403, "forbidden"),
                "{}",
                r.body
            );
            false
        })
        .collect()
}

/// The credential id a bearer token names (`sgt_<16 hex>_<secret>`), as audit events name it.
fn credential_of(token: &str) -> String {
    let id = token
        .strip_prefix("sgt_")
        .unwrap()
        .split('_')
        .next()
        .unwrap();
    format!("credential:cred_{id}")
}

#[test]
fn single_requests_of_several_banks_at_once_are_each_issued_for_their_own_caller() {
    // Requests that arrive together share group commits (their records and audit events in
    // one transaction): nothing of one caller's (bank, rights, audit actor) may reach
    // another's certificate.
    let (banks, guard) = server();
    let s = guard.as_ref().unwrap();
    let f = fixture();
    let a_head = bank_a_head(s, &banks.a_auditor);
    let n = next_id();
    let callers = [
        ("Bank A", banks.a_officer.as_str()),
        ("Bank B", banks.b_officer.as_str()),
        ("gateway", banks.a_gateway.as_str()),
    ];
    let csr = csr_pem(f);
    let answers = post_at_once(
        s,
        "/v1/certificates",
        &callers,
        "gateway",
        |i| json!({"profile": "customer", "csr": &csr, "subject": format!("CN=同时{n}-{i},serialNumber=1101011990030{i:05}")}),
    );
    let mut a_serials = Vec::new();
    for (who, i, r) in answers {
        assert_eq!(r.status, 201, "{who}: {}", r.body);
        let v = r.json();
        let leaf = f.path(&format!("together-{i}.pem"));
        std::fs::write(&leaf, v["certificate"].as_str().unwrap()).unwrap();
        let subject = openssl(&args![
            "x509",
            "-noout",
            "-subject",
            "-nameopt",
            "utf8,sep_multiline",
            "-in",
            &leaf
        ]);
        assert!(
            subject.stdout.contains(&format!("O={who}"))
                && subject.stdout.contains(&format!("同时{n}-{i}")),
            "request {i} of {who}: {}",
            subject.stdout
        );
        let serial = v["serial"].as_str().unwrap();
        let (own, other) = match who {
            "Bank A" => (&banks.a_officer, &banks.b_officer),
            _ => (&banks.b_officer, &banks.a_officer),
        };
        let path = format!("/v1/certificates/{serial}");
        assert_eq!(get(s, &path, Some(own)).status, 200);
        assert_eq!(
            get(s, &path, Some(other)).status,
            404,
            "{who}'s certificate is not the other bank's"
        );
        if who == "Bank A" {
            a_serials.push(serial.to_string());
        }
    }
    // Bank A's audit trail names its officer for each of its certificates, and holds none of
    // bank B's.
    let issued: Vec<_> = bank_a_events_since(s, &banks.a_auditor, a_head)
        .into_iter()
        .filter(|e| e["action"] == "certificate.issue")
        .collect();
    assert_eq!(issued.len(), a_serials.len(), "{issued:?}");
    for e in &issued {
        assert_eq!(
            e["actor"].as_str(),
            Some(credential_of(&banks.a_officer).as_str()),
            "{e}"
        );
        assert!(
            a_serials
                .iter()
                .any(|s| norm_serial(s) == norm_serial(e["object"].as_str().unwrap())),
            "{e}"
        );
    }
}

#[test]
fn a_certificate_batch_whose_signing_call_fails_voids_every_record_and_answers_each_item() {
    let (banks, guard) = server();
    let s = guard.as_ref().unwrap();
    let f = fixture();
    let before = bank_a_head(s, &banks.a_auditor);
    // A second server on the same store, every certificate-signing call of it failing.
    let failing = Server::start_with(f, &[("SIGNET_FAULT", "sign-fails".into())]);
    let n = next_id();
    let item = |i: u64| json!({"profile": "customer", "csr": csr_pem(f), "subject": format!("CN=签名失败{n}-{i},serialNumber=11010119900308{i:04}")});
    let r = post_json(
        &failing,
        "/v1/certificates/batch",
        Some(&banks.a_officer),
        &json!({"items": [item(1), item(2), item(3)]}),
    );
    drop(failing);
    assert_eq!(r.status, 200, "{}", r.body);
    let results = r.json()["results"].as_array().unwrap().clone();
    assert_eq!(results.len(), 3);
    for result in &results {
        assert_eq!(result["error"]["code"], "hsm_unavailable", "{result}");
        assert!(result.get("certificate").is_none(), "{result}");
    }
    // Each was recorded before the HSM was asked, then voided (only a failed signature voids
    // a record): three voids, each of a serial recorded in this window and never issued.
    let events = bank_a_events_since(s, &banks.a_auditor, before);
    let serials_of = |action: &str| -> Vec<String> {
        events
            .iter()
            .filter(|e| e["action"] == action)
            .map(|e| e["object"].as_str().unwrap().to_string())
            .collect()
    };
    let (recorded, issued) = (
        serials_of("certificate.record"),
        serials_of("certificate.issue"),
    );
    // Voids of this fault (not of the sweep of stale pending records).
    let voided: Vec<String> = events
        .iter()
        .filter(|e| e["action"] == "certificate.void")
        .filter(|e| e["details"].to_string().contains("fault injected"))
        .map(|e| e["object"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(voided.len(), 3, "{events:?}");
    for serial in &voided {
        assert!(
            recorded.contains(serial),
            "{serial} voided but not recorded"
        );
        assert!(!issued.contains(serial), "{serial} voided and issued");
        // Only issued certificates are served: a void record is not one.
        let rec = get(
            s,
            &format!("/v1/certificates/{serial}"),
            Some(&banks.a_officer),
        );
        assert_eq!(rec.status, 404, "{}", rec.body);
    }
}

#[test]
fn a_certificate_batch_of_the_wrong_size_or_role_is_refused_whole() {
    let (banks, guard) = server();
    let s = guard.as_ref().unwrap();
    let f = fixture();
    let item = json!({"profile": "customer", "csr": csr_pem(f), "subject": "CN=z,serialNumber=3"});
    assert_batch_size_refused(s, "/v1/certificates/batch", &banks.a_officer, &item);
    let gateway = post_json(
        s,
        "/v1/certificates/batch",
        Some(&banks.a_gateway),
        &json!({"items": [item]}),
    );
    assert_eq!(
        (gateway.status, gateway.code().as_str()),
        (403, "forbidden")
    );
}

#[test]
fn a_batch_gets_one_report_per_instruction_in_order_each_replay_guarded_and_audited() {
    let (banks, guard) = server();
    let s = guard.as_ref().unwrap();
    let f = fixture();
    let gateway = new_credential(f, "Bank A", "gateway");
    let instruction = format!(
        r#"{{"instruction_id":"BATCH-{}","amount":"12.00"}}"#,
        next_id()
    );
    let changed = instruction.replace("12.00", "99.00");
    let (_, sig) = gateway_signature(f, instruction.as_bytes());
    let before = bank_a_head(s, &banks.a_auditor);
    let item = |text: &str, receipt: bool| json!({"instruction": base64_std(text.as_bytes()), "signature": base64_std(&sig), "receipt": receipt});
    let r = post_json(
        s,
        "/v1/verifications/batch",
        Some(&gateway),
        &json!({"items": [item(&instruction, true), item(&changed, false), item(&instruction, false)]}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let results = r.json()["results"].as_array().unwrap().clone();
    let verdict = |v: &Value| {
        (
            v["indication"].as_str().unwrap_or("").to_string(),
            v["sub_indication"].as_str().unwrap_or("").to_string(),
        )
    };
    assert_eq!(results.len(), 3);
    assert_eq!(verdict(&results[0]), ("TOTAL_PASSED".into(), "".into()));
    assert_eq!(
        verdict(&results[1]),
        ("TOTAL_FAILED".into(), "HASH_FAILURE".into())
    );
    // The same instruction again, later in the same batch: a replay of the first.
    assert_eq!(
        verdict(&results[2]),
        ("INDETERMINATE".into(), "SIG_CONSTRAINTS_FAILURE".into()),
        "{}",
        results[2]
    );
    assert!(
        results[2]["signers"][0]["replay"]["first_seen"].is_string(),
        "{}",
        results[2]
    );
    // Only the item that asked for a receipt has one, and it verifies with OpenSSL.
    assert!(results[1].get("receipt").is_none() && results[2].get("receipt").is_none());
    let receipt = f.path("batch-receipt.der");
    std::fs::write(
        &receipt,
        base64_decode(results[0]["receipt"].as_str().unwrap()),
    )
    .unwrap();
    f.openssl_cms_verify(&receipt).assert_ok();
    // One audit event per instruction, in the batch's order.
    let digest = |text: &str| {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(text.as_bytes()))
    };
    let events = bank_a_events_since(s, &banks.a_auditor, before)
        .iter()
        .filter(|e| e["action"] == "signature.verify")
        .map(|e| e["object"].as_str().unwrap().to_string())
        .filter(|o| *o == digest(&instruction) || *o == digest(&changed))
        .collect::<Vec<_>>();
    assert_eq!(
        events,
        [digest(&instruction), digest(&changed), digest(&instruction)]
    );
}

#[test]
fn single_verifications_of_several_banks_at_once_are_each_reported_and_audited_for_their_own_caller(
) {
    // Verifications that arrive together share group commits (replay-guard keys and audit
    // events in one transaction): each still gets its own report and receipt, and its audit
    // event names its own caller and bank.
    let (banks, guard) = server();
    let s = guard.as_ref().unwrap();
    let f = fixture();
    f.signet(&["ca", "upgrade"]).assert_ok();
    let b_gateway = new_credential(f, "Bank B", "gateway");
    let b_auditor = new_credential(f, "Bank B", "auditor");
    let (a_head, b_head) = (bank_a_head(s, &banks.a_auditor), bank_a_head(s, &b_auditor));
    let n = next_id();
    let instructions: Vec<(String, Vec<u8>)> = (0..8)
        .map(|i| {
            let text = format!(r#"{{"instruction_id":"TOGETHER-{n}-{i}","amount":"{i}.00"}}"#);
            let (_, sig) = gateway_signature(f, text.as_bytes());
            (text, sig)
        })
        .collect();
    let callers = [
        ("A", banks.a_gateway.as_str()),
        ("B", b_gateway.as_str()),
        ("officer", banks.a_officer.as_str()),
    ];
    let answers = post_at_once(s, "/v1/verifications", &callers, "officer", |i| {
        let (text, sig) = &instructions[i / 3];
        json!({"instruction": base64_std(text.as_bytes()), "signature": base64_std(sig), "receipt": i % 2 == 0})
    });
    let digest = |text: &str| {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(text.as_bytes()))
    };
    let mut indications = vec![Vec::new(); instructions.len()];
    for (who, i, r) in answers {
        assert_eq!(r.status, 200, "{who}: {}", r.body);
        let v = r.json();
        indications[i / 3].push(v["indication"].as_str().unwrap().to_string());
        assert_eq!(
            v["instruction_sha256"].as_str(),
            Some(digest(&instructions[i / 3].0).as_str()),
            "{}",
            r.body
        );
        assert_eq!(v.get("receipt").is_some(), i % 2 == 0, "{}", r.body);
        if let Some(receipt) = v["receipt"].as_str() {
            let path = f.path(&format!("together-receipt-{i}.der"));
            std::fs::write(&path, base64_decode(receipt)).unwrap();
            f.openssl_cms_verify(&path).assert_ok();
        }
    }
    // Both banks' gateways presented each instruction: the replay guard (the signer's, not the
    // caller's) passes the first and holds the second, even within one group commit.
    for mut seen in indications {
        seen.sort();
        assert_eq!(seen, ["INDETERMINATE", "TOTAL_PASSED"]);
    }
    // Each bank's audit trail holds its own gateway's eight verifications and no one else's.
    let digests: Vec<String> = instructions.iter().map(|(t, _)| digest(t)).collect();
    for (auditor, head, gateway) in [
        (&banks.a_auditor, a_head, &banks.a_gateway),
        (&b_auditor, b_head, &b_gateway),
    ] {
        let verified: Vec<_> = bank_a_events_since(s, auditor, head)
            .into_iter()
            .filter(|e| e["action"] == "signature.verify")
            .collect();
        let mut objects: Vec<String> = verified
            .iter()
            .map(|e| e["object"].as_str().unwrap().to_string())
            .collect();
        objects.sort();
        let mut want = digests.clone();
        want.sort();
        assert_eq!(objects, want);
        for e in &verified {
            assert_eq!(
                e["actor"].as_str(),
                Some(credential_of(gateway).as_str()),
                "{e}"
            );
        }
    }
}

#[test]
fn a_batch_body_may_pass_the_64_kib_limit_of_other_routes_up_to_256_kib() {
    let (_, guard) = server();
    let s = guard.as_ref().unwrap();
    let f = fixture();
    let gateway = new_credential(f, "Bank A", "gateway");
    let instruction = format!(r#"{{"instruction_id":"BIG-{}"}}"#, next_id());
    let (_, sig) = gateway_signature(f, instruction.as_bytes());
    let item =
        json!({"instruction": base64_std(instruction.as_bytes()), "signature": base64_std(&sig)});
    let items = vec![item; 64];
    let body = json!({ "items": items });
    let size = body.to_string().len();
    assert!(size > 64 * 1024 && size < 256 * 1024, "{size} bytes");
    let r = post_json(s, "/v1/verifications/batch", Some(&gateway), &body);
    assert_eq!(r.status, 200, "{}", r.body);
    let results = r.json()["results"].as_array().unwrap().clone();
    assert_eq!(results.len(), 64);
    assert_eq!(results[0]["indication"], "TOTAL_PASSED");
    assert_eq!(
        results[63]["sub_indication"], "SIG_CONSTRAINTS_FAILURE",
        "a replay"
    );
    // Over raw TCP: the server answers 413 and may close while a client still writes (an
    // HTTP client then reports the broken pipe, not the answer).
    let huge = json!({"items": [{"instruction": "A".repeat(300 * 1024), "signature": "AAAA"}]});
    let answer = post_raw_tcp(
        s,
        "/v1/verifications/batch",
        Some(&gateway),
        huge.to_string().as_bytes(),
    );
    assert!(
        answer.starts_with("HTTP/1.1 413") && answer.contains("body_too_large"),
        "{answer}"
    );
    // Other routes keep their 64 KiB.
    let big = json!({"instruction": "A".repeat(70 * 1024), "signature": "AAAA"});
    let answer = post_raw_tcp(
        s,
        "/v1/verifications",
        Some(&gateway),
        big.to_string().as_bytes(),
    );
    assert!(
        answer.starts_with("HTTP/1.1 413") && answer.contains("body_too_large"),
        "{answer}"
    );
}

#[test]
fn a_batch_too_large_or_with_bad_base64_is_refused_whole_naming_the_item() {
    let (_, guard) = server();
    let s = guard.as_ref().unwrap();
    let f = fixture();
    let gateway = new_credential(f, "Bank A", "gateway");
    let item = json!({"instruction": "AAAA", "signature": "AAAA"});
    assert_batch_size_refused(s, "/v1/verifications/batch", &gateway, &item);
    let bad = post_json(
        s,
        "/v1/verifications/batch",
        Some(&gateway),
        &json!({"items": [item, {"instruction": "AAAA", "signature": "***"}]}),
    );
    assert_eq!((bad.status, bad.code().as_str()), (400, "invalid_request"));
    assert!(
        bad.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("items[1].signature"),
        "{}",
        bad.body
    );
}

#[test]
fn only_gateways_verify() {
    let (banks, guard) = server();
    let s = guard.as_ref().unwrap();
    let r = post_json(
        s,
        "/v1/verifications",
        Some(&banks.a_officer),
        &json!({"instruction": "AAAA", "signature": "AAAA"}),
    );
    assert_eq!((r.status, r.code().as_str()), (403, "forbidden"));
}

#[test]
fn gateway_validates_a_certificate_alone() {
    let (_, guard) = server();
    let s = guard.as_ref().unwrap();
    let f = fixture();
    let gateway = new_credential(f, "Bank A", "gateway");
    let (cert_pem_b64, _) = gateway_signature(f, b"irrelevant");
    let pem = String::from_utf8(base64_decode(&cert_pem_b64)).unwrap();
    let r = post_json(
        s,
        "/v1/verifications/certificate",
        Some(&gateway),
        &json!({"certificate": pem}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["indication"], "TOTAL_PASSED", "{}", r.body);
    // Without a signature, article 13 cannot be met: conditions 3 and 4 are about one.
    let law = find_key(&r.json(), "electronic_signature_law")
        .unwrap_or_else(|| panic!("no article 13 section: {}", r.body));
    assert_eq!(law["reliable"], false, "{law}");
    for c in law["conditions"].as_array().unwrap() {
        if c["condition"] == "13(3)" || c["condition"] == "13(4)" {
            assert_eq!(c["supported"], false, "{c}");
            assert!(
                c["evidence"].as_str().unwrap().contains("no signature"),
                "{c}"
            );
        }
    }
}

/// The first value named `key` in `v`, depth first.
fn find_key(v: &Value, key: &str) -> Option<Value> {
    match v {
        Value::Object(m) => m
            .get(key)
            .cloned()
            .or_else(|| m.values().find_map(|x| find_key(x, key))),
        Value::Array(a) => a.iter().find_map(|x| find_key(x, key)),
        _ => None,
    }
}

#[test]
fn pre_signed_ocsp_answers_change_at_once_after_a_revocation_by_another_process() {
    let (banks, guard) = server();
    let s = guard.as_ref().unwrap();
    let f = fixture();
    let issuer = f.ca("customer-ca.pem");
    let (serial, leaf) = issue_customer(s, &banks.a_officer);
    let ask = || {
        let out = openssl(&args![
            "ocsp",
            "-issuer",
            &issuer,
            "-cert",
            &leaf,
            "-no_nonce",
            "-url",
            s.url("/ocsp"),
            "-CAfile",
            f.ca("root.pem")
        ]);
        out.assert_ok();
        out.stdout
    };
    assert!(ask().contains(": good"));
    assert!(
        ask().contains(": good"),
        "served from the pre-signed answers"
    );
    // The CA operator revokes on the CA host: another process than the server.
    f.signet(&args![
        "revoke",
        "--serial",
        &serial,
        "--reason",
        "keyCompromise"
    ])
    .assert_ok();
    let after = ask();
    assert!(after.contains(": revoked"), "{after}");
}

/// Not a test on its own: the child process of
/// `a_server_kept_in_a_static_is_stopped_when_the_test_binary_exits`.
#[test]
#[ignore = "run as a child process by another test"]
fn child_process_keeping_a_server_in_a_static() {
    static KEPT: OnceLock<Server> = OnceLock::new();
    let server = KEPT.get_or_init(|| Server::start(fixture()));
    println!("kept server pid {}", server.pid());
}

#[test]
fn a_server_kept_in_a_static_is_stopped_when_the_test_binary_exits() {
    // Statics are never dropped: only the exit handler of tests/common/http.rs stops it.
    let out = std::process::Command::new(std::env::current_exe().expect("this test binary"))
        .args([
            "child_process_keeping_a_server_in_a_static",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .output()
        .expect("run the child test process");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pid: u32 = stdout
        .lines()
        .find_map(|l| l.split_once("kept server pid ").map(|(_, p)| p))
        .and_then(|p| p.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("the child printed no server pid:\n{stdout}"));
    // Gone, or at most a zombie no one has reaped yet (the child that started it has exited).
    let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok();
    let state = state
        .as_deref()
        .and_then(|s| s.rsplit_once(") "))
        .and_then(|(_, rest)| rest.chars().next());
    assert!(
        matches!(state, None | Some('Z' | 'X')),
        "signet serve (pid {pid}) outlived the test binary that started it: state {state:?}"
    );
}
