//! The signing service over real HTTP: the bank's e-seal and a teller's HSM-held key sign
//! inside SoftHSM2; OpenSSL and Signet's own verifier accept the signatures; only the owner
//! (with the PIN, for a teller) can sign; wrong PINs lock the key.

mod common;

use std::fs;
use std::sync::{Mutex, MutexGuard, OnceLock};

use common::http::{base64_decode, base64_std, get, post_json, Server};
use common::{fixture, openssl, Fixture};
use serde_json::{json, Value};

struct Setup {
    seal_key: String,
    sealer: String,
    b_sealer: String,
    admin1: String,
    admin2: String,
    teller_key: String,
    teller_pin: String,
    teller: String,
    other_teller: String,
}

fn cli(f: &Fixture, a: &[&str]) -> String {
    let out = f.signet(a);
    out.assert_ok();
    out.stdout.trim().to_string()
}

/// Bank A with an e-seal, two teller-admins, two tellers; teller T1 gets an HSM key through
/// two teller-admins and sets its PIN. Bank B has its own sealer.
fn setup() -> (&'static Setup, MutexGuard<'static, Server>) {
    static SETUP: OnceLock<(Setup, Mutex<Server>)> = OnceLock::new();
    let (setup, server) = SETUP.get_or_init(|| {
        let f = fixture();
        cli(f, &["tenant", "add", "Bank A"]);
        cli(f, &["tenant", "add", "Bank B"]);
        let seal_key = cli(f, &["seal", "create", "--tenant", "Bank A"]);
        cli(f, &["seal", "create", "--tenant", "Bank B"]);
        let cred = |bank: &str, role: &str, teller: Option<&str>| {
            let mut a = vec!["credential", "add", "--tenant", bank, "--role", role];
            if let Some(t) = teller {
                a.extend(["--teller", t]);
            }
            cli(f, &a)
        };
        cli(
            f,
            &[
                "teller",
                "add",
                "--tenant",
                "Bank A",
                "--employee",
                "T2",
                "--name",
                "王柜员",
            ],
        );
        let server = Server::start(f);
        let admin1 = cred("Bank A", "teller-admin", None);
        let admin2 = cred("Bank A", "teller-admin", None);
        // T1 registered over the API by a teller-admin.
        let r = post_json(
            &server,
            "/v1/tellers",
            Some(&admin1),
            &json!({"employee_id": "T1", "name": "李柜员"}),
        );
        assert_eq!(r.status, 201, "{}", r.body);
        let teller = cred("Bank A", "teller", Some("T1"));
        let other_teller = cred("Bank A", "teller", Some("T2"));
        let (teller_key, code) = teller_key_made(&server, &admin1, &admin2, "T1");
        let teller_pin = "480912".to_string();
        let set = post_json(
            &server,
            &format!("/v1/signing-keys/{teller_key}/pin"),
            Some(&teller),
            &json!({"activation_code": code, "new_pin": teller_pin}),
        );
        assert_eq!(set.status, 204, "{}", set.body);
        let setup = Setup {
            seal_key,
            sealer: cred("Bank A", "sealer", None),
            b_sealer: cred("Bank B", "sealer", None),
            admin1,
            admin2,
            teller_key,
            teller_pin,
            teller,
            other_teller,
        };
        (setup, Mutex::new(server))
    });
    (setup, server.lock().unwrap_or_else(|e| e.into_inner()))
}

/// An HSM key for teller `employee`: filed by `filer`, approved by `approver` (two
/// teller-admins); (its id, its one-time activation code).
fn teller_key_made(s: &Server, filer: &str, approver: &str, employee: &str) -> (String, String) {
    let req = post_json(
        s,
        "/v1/teller-keys",
        Some(filer),
        &json!({ "employee_id": employee }),
    );
    assert_eq!(req.status, 202, "{}", req.body);
    let id = req.json()["id"].as_str().unwrap().to_string();
    let approved = post_json(
        s,
        &format!("/v1/teller-requests/{id}/approve"),
        Some(approver),
        &json!({}),
    );
    assert_eq!(approved.status, 201, "{}", approved.body);
    let field = |name: &str| approved.json()[name].as_str().unwrap().to_string();
    (field("key_id"), field("activation_code"))
}

/// How many audit events of `action` name `object`.
fn audit_events(f: &Fixture, action: &str, object: &str) -> i64 {
    common::open_db(&f.db)
        .query_row(
            "SELECT COUNT(*) FROM audit_events WHERE action = ?1 AND object = ?2",
            [action, object],
            |r| r.get(0),
        )
        .unwrap()
}

fn sign(s: &Server, token: &str, body: Value) -> common::http::Reply {
    post_json(s, "/v1/signatures", Some(token), &body)
}

fn write(f: &Fixture, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let p = f.path(name);
    fs::write(&p, bytes).unwrap();
    p
}

/// A file holding `token` (the CLI reads credentials from files only).
fn token_file(f: &Fixture, token: &str) -> std::path::PathBuf {
    write(f, "credential.token", format!("{token}\n").as_bytes())
}

fn signet_verify(f: &Fixture, data: &[u8], sig: &[u8]) -> Value {
    let d = write(f, "data.bin", data);
    let s = write(f, "sig.bin", sig);
    let out = f.signet(&args!["verify", "--instruction", &d, "--signature", &s]);
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.describe()))
}

#[test]
fn e_seal_signature_verifies_with_openssl_and_signet_with_the_bank_in_control() {
    let (st, s) = setup();
    let f = fixture();
    let data = br#"{"confirmation":"C-1","amount":"500.00"}"#;
    let r = sign(
        &s,
        &st.sealer,
        json!({"key": st.seal_key, "format": "cms-detached", "data": base64_std(data)}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let sig = base64_decode(r.json()["signatures"][0].as_str().unwrap());
    let d = write(f, "confirmation.json", data);
    let p7s = write(f, "confirmation.p7s", &sig);
    openssl(&args![
        "cms",
        "-verify",
        "-binary",
        "-inform",
        "DER",
        "-in",
        &p7s,
        "-content",
        &d,
        "-CAfile",
        f.ca("root.pem"),
        "-purpose",
        "any",
        "-out",
        "/dev/null"
    ])
    .assert_ok();
    let report = signet_verify(f, data, &sig);
    assert_eq!(report["indication"], "TOTAL_PASSED", "{report}");
    assert_eq!(report["signer"]["profile"], "seal");
    assert_eq!(report["signer"]["key_custody"], "hsm");
    let law = report["electronic_signature_law"].to_string();
    assert!(law.contains("under the bank's control"), "{law}");
}

#[test]
fn e_seal_signs_attached_cms_and_jws_too() {
    let (st, s) = setup();
    let f = fixture();
    for (format, n) in [("cms-attached", 1), ("jws", 2)] {
        let data = format!(r#"{{"statement":"S-{n}"}}"#);
        let r = sign(
            &s,
            &st.sealer,
            json!({"key": st.seal_key, "format": format, "data": base64_std(data.as_bytes())}),
        );
        assert_eq!(r.status, 200, "{format}: {}", r.body);
        let sig = r.json()["signatures"][0].as_str().unwrap().to_string();
        let sig_bytes = if format == "jws" {
            sig.into_bytes()
        } else {
            base64_decode(&sig)
        };
        let report = signet_verify(f, data.as_bytes(), &sig_bytes);
        assert_eq!(report["indication"], "TOTAL_PASSED", "{format}: {report}");
    }
}

/// `signet sign` of `data` with the e-seal under `config` and `env`, refused; then the
/// `signature.fail` event of `store`, which must answer the `signature.create` event of that
/// very data.
fn assert_sign_fails_and_is_audited_as_not_made(
    st: &Setup,
    config: &std::path::Path,
    env: &[(&str, String)],
    store: &dyn signet::store::Store,
    data: &[u8],
) {
    use sha2::Digest;
    let f = fixture();
    let input = write(f, "failed.txt", data);
    f.signet_with(
        config,
        env,
        &args![
            "sign",
            "--key",
            &st.seal_key,
            "--credential-file",
            token_file(f, &st.sealer),
            "--in",
            &input,
            "--format",
            "cms-detached",
            "--out",
            f.path("failed.p7s")
        ],
    )
    .assert_refused();
    let events = store.audit_events(0).unwrap();
    let digest = hex::encode(sha2::Sha256::digest(data));
    let create = events
        .iter()
        .find(|e| e.action == "signature.create" && e.details.contains(&digest))
        .expect("the signature.create event of the data");
    let fail = events
        .iter()
        .find(|e| e.action == "signature.fail" && e.object == st.seal_key && e.seq > create.seq)
        .expect("a signature.fail event after it");
    let details: Value = serde_json::from_str(&fail.details).unwrap();
    assert_eq!(
        details["create_events"],
        json!([create.seq]),
        "{}",
        fail.details
    );
}

#[test]
fn a_signature_the_hsm_failed_to_make_is_audited_as_not_made() {
    let (st, _s) = setup();
    let f = fixture();
    assert_sign_fails_and_is_audited_as_not_made(
        st,
        &f.config,
        &[("SIGNET_FAULT", "key-sign-fails".into())],
        &*f.open_store(),
        format!("statement the HSM will not sign, {}", std::process::id()).as_bytes(),
    );
}

#[test]
fn a_signature_not_made_because_its_audit_checkpoint_failed_is_audited_as_not_made() {
    let (st, _s) = setup();
    let f = fixture();
    let copy = f.store_copy(
        "sign-checkpoint-fails",
        &[("audit", "checkpoint_every", "1".into())],
    );
    // Events the server appended since its last checkpoint would be checkpointed as the
    // command starts, and its failure would stop the command before it signs: a command
    // checkpoints them first.
    f.signet_with(
        &copy.config,
        &[],
        &["credential", "list", "--tenant", "Bank A"],
    )
    .assert_ok();
    // The checkpoint file can no longer be appended to: every checkpoint fails.
    let _ = fs::remove_file(&copy.checkpoints);
    fs::create_dir(&copy.checkpoints).unwrap();
    let store = signet::app::open_store(&signet::config::Config::load(&copy.config).unwrap().store)
        .unwrap();
    assert_sign_fails_and_is_audited_as_not_made(
        st,
        &copy.config,
        &[],
        &*store,
        b"statement whose audit cannot be checkpointed",
    );
}

#[test]
fn cli_signs_with_the_e_seal_for_its_banks_sealer_only() {
    let (st, _s) = setup();
    let f = fixture();
    let data = write(f, "stmt.txt", b"monthly statement");
    let out = f.path("stmt.p7s");
    let sign = |key: &str, token: &str| {
        f.signet(&args![
            "sign",
            "--key",
            key,
            "--credential-file",
            token_file(f, token),
            "--in",
            &data,
            "--out",
            &out
        ])
    };
    // The operator's shell alone is not a bank's sealer: no credential, no signature.
    f.signet(&args![
        "sign",
        "--key",
        &st.seal_key,
        "--in",
        &data,
        "--out",
        &out
    ])
    .assert_refused()
    .assert_stderr_mentions("--credential-file");
    // Another bank's sealer does not sign with this bank's e-seal.
    sign(&st.seal_key, &st.b_sealer)
        .assert_refused()
        .assert_stderr_mentions("no signing key");
    // A credential that is not a sealer's, nor a token that is no credential.
    sign(&st.seal_key, &st.teller)
        .assert_refused()
        .assert_stderr_mentions("signs only for its owner");
    sign(&st.seal_key, "sgt_not-a-credential").assert_refused();
    assert!(!out.exists(), "a refused signature wrote its output");
    f.signet(&args![
        "sign",
        "--key",
        &st.seal_key,
        "--credential-file",
        token_file(f, &st.sealer),
        "--in",
        &data,
        "--format",
        "cms-detached",
        "--out",
        &out
    ])
    .assert_ok();
    openssl(&args![
        "cms",
        "-verify",
        "-binary",
        "-inform",
        "DER",
        "-in",
        &out,
        "-content",
        &data,
        "-CAfile",
        f.ca("root.pem"),
        "-purpose",
        "any",
        "-out",
        "/dev/null"
    ])
    .assert_ok();
    // A teller key needs its teller's PIN, which the CLI does not take.
    sign(&st.teller_key, &st.sealer)
        .assert_refused()
        .assert_stderr_mentions("signs only for its owner");
}

#[test]
fn a_pin_hash_is_bound_to_the_token_and_ca_upgrade_binds_one_stored_before_the_pin_key() {
    let (st, s) = setup();
    let f = fixture();
    let db = common::open_db(&f.db);
    let stored = || -> String {
        db.query_row(
            "SELECT pin_hash FROM signing_keys WHERE id = ?1",
            [st.teller_key.as_str()],
            |r| r.get(0),
        )
        .unwrap()
    };
    let signs_with_the_pin = || {
        let body = json!({"key": st.teller_key, "format": "jws", "data": base64_std(b"x"), "pin": st.teller_pin});
        let r = sign(&s, &st.teller, body);
        assert_eq!(r.status, 200, "{}", r.body);
    };
    // The PIN set through the API is bound: its PBKDF2 alone is not what is stored.
    let bound = stored();
    assert!(
        bound.starts_with("pbkdf2-sha256+token-hmac$100000$"),
        "{bound}"
    );
    let parts: Vec<&str> = bound.split('$').collect();
    let salt = hex::decode(parts[2]).unwrap();
    let mut pbkdf2_only = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<sha2::Sha256>(st.teller_pin.as_bytes(), &salt, 100_000, &mut pbkdf2_only);
    assert_ne!(hex::encode(pbkdf2_only), parts[3]);

    // A hash as an older Signet stored it (PBKDF2 alone) still opens the key, and is bound
    // to the token as it does; `ca upgrade` binds one without the PIN. Each is audited.
    let older = format!(
        "pbkdf2-sha256$100000${}${}",
        parts[2],
        hex::encode(pbkdf2_only)
    );
    let store_older = || {
        db.execute(
            "UPDATE signing_keys SET pin_hash = ?2 WHERE id = ?1",
            [st.teller_key.as_str(), older.as_str()],
        )
        .unwrap()
    };
    store_older();
    signs_with_the_pin();
    assert_eq!(stored(), bound, "the same PIN's hash under the PIN key");
    assert_eq!(audit_events(f, "signing_key.pin_bound", &st.teller_key), 1);
    store_older();
    f.signet(&["ca", "upgrade"])
        .assert_ok()
        .assert_stderr_mentions("1 PIN hash(es) bound");
    assert_eq!(stored(), bound);
    assert_eq!(audit_events(f, "signing_key.pin_bound", &st.teller_key), 2);
    signs_with_the_pin();
    f.signet(&["ca", "upgrade"])
        .assert_ok()
        .assert_stderr_mentions("nothing to upgrade");

    // A token whose PIN key is not the recorded one (here: the record's check value altered)
    // gets no new key from `ca upgrade`: the bound hashes need the old one back.
    let check: Vec<u8> = db
        .query_row("SELECT public_key FROM ca WHERE name = 'pin'", [], |r| {
            r.get(0)
        })
        .unwrap();
    db.execute("UPDATE ca SET public_key = X'00' WHERE name = 'pin'", [])
        .unwrap();
    // The running server answers no PIN (and counts no attempt) rather than call it wrong.
    let attempts = || -> i64 {
        db.query_row(
            "SELECT failed_attempts FROM signing_keys WHERE id = ?1",
            [st.teller_key.as_str()],
            |r| r.get(0),
        )
        .unwrap()
    };
    let before = attempts();
    let body = json!({"key": st.teller_key, "format": "jws", "data": base64_std(b"x"), "pin": st.teller_pin});
    let r = sign(&s, &st.teller, body);
    assert_eq!(
        (r.status, r.code().as_str()),
        (503, "pin_key_unavailable"),
        "{}",
        r.body
    );
    assert_eq!(attempts(), before);
    f.signet(&["ca", "upgrade"])
        .assert_refused()
        .assert_stderr_mentions("restored from its backup");
    db.execute(
        "UPDATE ca SET public_key = ?1 WHERE name = 'pin'",
        [check.as_slice()],
    )
    .unwrap();
    f.signet(&["ca", "upgrade"]).assert_ok();
}

#[test]
fn teller_key_signs_only_for_its_teller_with_the_pin() {
    let (st, s) = setup();
    let f = fixture();
    let data = br#"{"authorization":"A-1"}"#;
    let body = |pin: Option<&str>| {
        let mut b =
            json!({"key": st.teller_key, "format": "cms-detached", "data": base64_std(data)});
        if let Some(p) = pin {
            b["pin"] = json!(p);
        }
        b
    };
    let ok = sign(&s, &st.teller, body(Some(&st.teller_pin)));
    assert_eq!(ok.status, 200, "{}", ok.body);
    let report = signet_verify(
        f,
        data,
        &base64_decode(ok.json()["signatures"][0].as_str().unwrap()),
    );
    assert_eq!(report["indication"], "TOTAL_PASSED", "{report}");
    assert_eq!(report["signer"]["profile"], "teller-hsm");
    assert!(report["electronic_signature_law"]
        .to_string()
        .contains("checked by Signet, not by the HSM"));

    for (who, token) in [
        ("another teller", &st.other_teller),
        ("a teller-admin", &st.admin1),
        ("the sealer", &st.sealer),
    ] {
        let r = sign(&s, token, body(Some(&st.teller_pin)));
        assert_eq!(r.status, 403, "{who}: {}", r.body);
    }
    let r = sign(&s, &st.b_sealer, body(Some(&st.teller_pin)));
    assert_eq!(
        (r.status, r.code().as_str()),
        (404, "unknown_key"),
        "another bank"
    );
    let r = sign(&s, &st.teller, body(None));
    assert_eq!((r.status, r.code().as_str()), (400, "pin_required"));
}

#[test]
fn five_wrong_pins_lock_the_key_and_a_teller_admin_unlocks_it() {
    let (st, s) = setup();
    let f = fixture();
    let body = |pin: &str| json!({"key": st.teller_key, "format": "jws", "data": base64_std(b"x"), "pin": pin});
    for i in 1..=4 {
        let r = sign(&s, &st.teller, body("000000"));
        assert_eq!(
            (r.status, r.code().as_str()),
            (403, "wrong_pin"),
            "attempt {i}"
        );
    }
    let r = sign(&s, &st.teller, body("000000"));
    assert_eq!((r.status, r.code().as_str()), (423, "key_locked"));
    // Locked: even the right PIN is refused.
    let r = sign(&s, &st.teller, body(&st.teller_pin));
    assert_eq!((r.status, r.code().as_str()), (423, "key_locked"));
    let keys = get(&s, "/v1/signing-keys", Some(&st.teller));
    assert_eq!(keys.json()["keys"][0]["status"], "locked", "{}", keys.body);
    // Only a teller-admin of the bank unlocks.
    let r = post_json(
        &s,
        &format!("/v1/signing-keys/{}/unlock", st.teller_key),
        Some(&st.teller),
        &json!({}),
    );
    assert_eq!(r.status, 403);
    let r = post_json(
        &s,
        &format!("/v1/signing-keys/{}/unlock", st.teller_key),
        Some(&st.admin2),
        &json!({}),
    );
    assert_eq!(r.status, 204, "{}", r.body);
    let r = sign(&s, &st.teller, body(&st.teller_pin));
    assert_eq!(r.status, 200, "{}", r.body);
    // All of it is in the audit chain, which still verifies.
    let count = |action: &str| audit_events(f, action, &st.teller_key);
    assert!(count("signing_key.pin_wrong") >= 5);
    assert!(count("signing_key.lock") >= 1);
    assert!(count("signing_key.unlock") >= 1);
    assert!(count("signature.create") >= 1);
    f.signet(&["audit", "verify"]).assert_ok();
}

#[test]
fn a_lock_whose_audit_event_cannot_be_appended_is_not_applied_and_the_next_attempt_locks_with_it() {
    let (st, s) = setup();
    let f = fixture();
    let db = common::open_db(&f.db);
    let body = |pin: &str| json!({"key": st.teller_key, "format": "jws", "data": base64_std(b"x"), "pin": pin});
    let locked = || -> i64 {
        db.query_row(
            "SELECT locked FROM signing_keys WHERE id = ?1",
            [st.teller_key.as_str()],
            |r| r.get(0),
        )
        .unwrap()
    };
    let lock_events = || audit_events(f, "signing_key.lock", &st.teller_key);
    let before = lock_events();
    db.execute_batch(
        "CREATE TRIGGER test_refuse_lock_events BEFORE INSERT ON audit_events
         WHEN NEW.action = 'signing_key.lock'
         BEGIN SELECT RAISE(ABORT, 'lock events refused by the test'); END;",
    )
    .unwrap();
    for i in 1..=4 {
        let r = sign(&s, &st.teller, body("000000"));
        assert_eq!(
            (r.status, r.code().as_str()),
            (403, "wrong_pin"),
            "attempt {i}"
        );
    }
    // The fifth wrong PIN would lock the key; its lock event is refused, so is the lock.
    let r = sign(&s, &st.teller, body("000000"));
    assert!(r.status >= 500, "{} {}", r.status, r.body);
    assert_eq!(locked(), 0, "the key was locked without its audit event");
    db.execute_batch("DROP TRIGGER test_refuse_lock_events")
        .unwrap();
    // The attempt was counted all the same: the next one, even with the right PIN, locks the
    // key, and this time the lock is recorded with it.
    let r = sign(&s, &st.teller, body(&st.teller_pin));
    assert_eq!(
        (r.status, r.code().as_str()),
        (423, "key_locked"),
        "{}",
        r.body
    );
    assert_eq!(locked(), 1);
    assert_eq!(lock_events(), before + 1);
    let r = post_json(
        &s,
        &format!("/v1/signing-keys/{}/unlock", st.teller_key),
        Some(&st.admin2),
        &json!({}),
    );
    assert_eq!(r.status, 204, "{}", r.body);
    let r = sign(&s, &st.teller, body(&st.teller_pin));
    assert_eq!(r.status, 200, "{}", r.body);
    f.signet(&["audit", "verify"]).assert_ok();
}

#[test]
fn a_batch_of_a_thousand_hashes_is_signed_in_one_call() {
    let (st, s) = setup();
    // 1,000 distinct 32-byte digests (the service cannot tell them from real SHA-256 values).
    let hashes: Vec<Vec<u8>> = (0..1000u32)
        .map(|i| i.to_be_bytes().iter().cycle().take(32).copied().collect())
        .collect();
    let r = sign(
        &s,
        &st.sealer,
        json!({"key": st.seal_key, "format": "cms-detached", "hashes": hashes.iter().map(|h| base64_std(h)).collect::<Vec<_>>()}),
    );
    assert_eq!(r.status, 200, "{}", &r.body[..r.body.len().min(300)]);
    let sigs = r.json()["signatures"].as_array().unwrap().clone();
    assert_eq!(sigs.len(), 1000);
    // Spot-check one: its message-digest is the hash it was given.
    let der = base64_decode(sigs[7].as_str().unwrap());
    assert!(
        der.windows(32).any(|w| w == hashes[7].as_slice()),
        "message-digest carries the hash"
    );
}

#[test]
fn bad_signing_requests_get_4xx_with_their_codes() {
    let (st, s) = setup();
    let cases = [
        (
            json!({"key": st.seal_key, "format": "cms-detached", "hashes": [base64_std(&[1u8; 20])]}),
            400,
            "invalid_request",
        ),
        (
            json!({"key": st.seal_key, "format": "jws", "hashes": [base64_std(&[1u8; 32])]}),
            400,
            "invalid_request",
        ),
        (
            json!({"key": "key_nope", "format": "jws", "data": base64_std(b"x")}),
            404,
            "unknown_key",
        ),
        (
            json!({"key": st.seal_key, "format": "xades", "data": base64_std(b"x")}),
            400,
            "unknown_format",
        ),
        (
            json!({"key": st.seal_key, "format": "jws", "data": ""}),
            400,
            "invalid_request",
        ),
        (
            json!({"key": st.seal_key, "format": "jws"}),
            400,
            "invalid_request",
        ),
        (
            json!({"key": st.seal_key, "format": "jws", "data": "%%%"}),
            400,
            "invalid_request",
        ),
    ];
    for (body, status, code) in cases {
        let r = sign(&s, &st.sealer, body.clone());
        assert_eq!(
            (r.status, r.code().as_str()),
            (status, code),
            "{body}: {}",
            r.body
        );
    }
}

#[test]
fn concurrent_wrong_pins_cannot_get_past_the_limit() {
    let (st, s) = setup();
    let f = fixture();
    let wrong_before = audit_events(f, "signing_key.pin_wrong", &st.teller_key);
    let body =
        json!({"key": st.teller_key, "format": "jws", "data": base64_std(b"x"), "pin": "111111"});
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..12)
            .map(|_| scope.spawn(|| sign(&s, &st.teller, body.clone()).status))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let wrong_after = audit_events(f, "signing_key.pin_wrong", &st.teller_key);
    assert!(
        wrong_after - wrong_before <= 5,
        "at most five PINs were tried: {statuses:?}"
    );
    assert!(
        statuses.iter().all(|c| *c == 403 || *c == 423),
        "{statuses:?}"
    );
    let r = sign(
        &s,
        &st.teller,
        json!({"key": st.teller_key, "format": "jws", "data": base64_std(b"x"), "pin": st.teller_pin}),
    );
    assert_eq!(r.status, 423, "locked, even for the right PIN");
    let r = post_json(
        &s,
        &format!("/v1/signing-keys/{}/unlock", st.teller_key),
        Some(&st.admin1),
        &json!({}),
    );
    assert_eq!(r.status, 204);
}

#[test]
fn the_activation_code_works_once_and_a_teller_gets_one_key() {
    let (st, s) = setup();
    let r = post_json(
        &s,
        &format!("/v1/signing-keys/{}/pin", st.teller_key),
        Some(&st.teller),
        &json!({"activation_code": "0000000000", "new_pin": "999999"}),
    );
    assert!(r.status == 400 || r.status == 403, "{}", r.body);
    let again = post_json(
        &s,
        "/v1/teller-keys",
        Some(&st.admin1),
        &json!({"employee_id": "T1"}),
    );
    assert_eq!(
        (again.status, again.code().as_str()),
        (409, "conflict"),
        "{}",
        again.body
    );
}

#[test]
fn a_wrong_activation_code_is_refused_and_audited_and_the_right_one_still_works() {
    let (st, s) = setup();
    let f = fixture();
    let r = post_json(
        &s,
        "/v1/tellers",
        Some(&st.admin1),
        &json!({"employee_id": "T4", "name": "钱柜员"}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let teller = cli(
        f,
        &[
            "credential",
            "add",
            "--tenant",
            "Bank A",
            "--role",
            "teller",
            "--teller",
            "T4",
        ],
    );
    let (key, code) = teller_key_made(&s, &st.admin1, &st.admin2, "T4");
    let set_pin = |code: &str| {
        post_json(
            &s,
            &format!("/v1/signing-keys/{key}/pin"),
            Some(&teller),
            &json!({"activation_code": code, "new_pin": "271828"}),
        )
    };
    let r = set_pin("00000000000000000000");
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(audit_events(f, "signing_key.activation_wrong", &key), 1);
    let r = set_pin(&code);
    assert_eq!(r.status, 204, "{}", r.body);
}

/// A teller's employee id is audited and written into its certificates: a national ID number
/// is refused there, and in the name, by the API and the CLI alike; nothing is recorded.
#[test]
fn a_teller_is_not_registered_under_a_national_id_number() {
    let (st, s) = setup();
    let f = fixture();
    for (employee_id, name) in [
        ("11010119900307123X", "钱柜员"),
        ("110101199003071234", "钱柜员"),
        ("T-ID-1", "钱柜员 110101199003071234"),
    ] {
        let r = post_json(
            &s,
            "/v1/tellers",
            Some(&st.admin1),
            &json!({"employee_id": employee_id, "name": name}),
        );
        assert_eq!(
            (r.status, r.code().as_str()),
            (400, "invalid_request"),
            "{employee_id} {name}: {}",
            r.body
        );
        f.signet(&[
            "teller",
            "add",
            "--tenant",
            "Bank A",
            "--employee",
            employee_id,
            "--name",
            name,
        ])
        .assert_refused();
    }
    let recorded: i64 = common::open_db(&f.db)
        .query_row(
            "SELECT COUNT(*) FROM audit_events WHERE details LIKE '%1101011990030712%'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(recorded, 0, "an ID number reached the audit log");
}

/// Of two key requests for one teller, the second one approved cannot be: it is rejected,
/// saying why, instead of waiting a day to expire.
#[test]
fn of_two_key_requests_for_one_teller_only_the_first_approved_makes_and_certifies_a_key() {
    let (st, s) = setup();
    let r = post_json(
        &s,
        "/v1/tellers",
        Some(&st.admin1),
        &json!({"employee_id": "T3", "name": "赵柜员"}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    // Both filed before either is approved.
    let file = || {
        let r = post_json(
            &s,
            "/v1/teller-keys",
            Some(&st.admin1),
            &json!({"employee_id": "T3"}),
        );
        assert_eq!(r.status, 202, "{}", r.body);
        r.json()["id"].as_str().unwrap().to_string()
    };
    let (first, second) = (file(), file());
    let approve = |id: &str| {
        post_json(
            &s,
            &format!("/v1/teller-requests/{id}/approve"),
            Some(&st.admin2),
            &json!({}),
        )
    };
    let made = approve(&first);
    assert_eq!(made.status, 201, "{}", made.body);
    let signed = common::drill::metric(&s, "signet_certificate_signs_total");
    let again = approve(&second);
    assert_eq!(
        (again.status, again.code().as_str()),
        (409, "conflict"),
        "{}",
        again.body
    );
    assert!(
        again.body.contains("teller T3 already has a key"),
        "{}",
        again.body
    );
    assert_eq!(
        common::drill::metric(&s, "signet_certificate_signs_total"),
        signed,
        "the second approval had a certificate signed"
    );
    let read = get(
        &s,
        &format!("/v1/teller-requests/{second}"),
        Some(&st.admin1),
    );
    assert_eq!(read.status, 200, "{}", read.body);
    let v = read.json();
    assert_eq!(v["status"], "rejected", "{v}");
    assert_eq!(
        (&v["teller"]["employee_id"], &v["teller"]["name"]),
        (&json!("T3"), &json!("赵柜员")),
        "a key request names its teller: {v}"
    );
    assert!(
        v["decision_reason"]
            .as_str()
            .is_some_and(|r| r.contains("teller T3 already has a key")),
        "{v}"
    );
    assert_eq!(audit_events(fixture(), "teller_request.reject", &second), 1);
    let third = approve(&second);
    assert!(
        third.status == 409 && third.body.contains("already rejected"),
        "{}",
        third.body
    );
}

#[test]
fn only_the_ca_operator_revokes_an_e_seal_and_a_revoked_one_no_longer_signs() {
    let (_st, s) = setup();
    let f = fixture();
    cli(f, &["tenant", "add", "Bank C"]);
    let out = f.signet(&["seal", "create", "--tenant", "Bank C"]);
    out.assert_ok();
    let key = out.stdout.trim().to_string();
    let serial = out
        .stderr
        .split("certificate serial ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .expect("serial on stderr")
        .to_string();
    let sealer = cli(
        f,
        &[
            "credential",
            "add",
            "--tenant",
            "Bank C",
            "--role",
            "sealer",
        ],
    );
    let body = json!({"key": key, "format": "jws", "data": base64_std(b"statement")});
    assert_eq!(sign(&s, &sealer, body.clone()).status, 200);
    // The bank's registration officer cannot revoke it over the API.
    let officer = cli(
        f,
        &[
            "credential",
            "add",
            "--tenant",
            "Bank C",
            "--role",
            "ra-officer",
        ],
    );
    let r = post_json(
        &s,
        &format!("/v1/certificates/{serial}/revoke"),
        Some(&officer),
        &json!({"reason": "superseded"}),
    );
    assert_eq!(
        (r.status, r.code().as_str()),
        (403, "forbidden"),
        "{}",
        r.body
    );
    assert!(r.body.contains("e-seal"), "{}", r.body);
    assert_eq!(sign(&s, &sealer, body.clone()).status, 200);
    f.signet(&["revoke", "--serial", &serial, "--reason", "keyCompromise"])
        .assert_ok();
    let r = sign(&s, &sealer, body);
    assert_eq!(
        (r.status, r.code().as_str()),
        (403, "forbidden"),
        "{}",
        r.body
    );
    assert!(r.body.contains("revoked"), "{}", r.body);
}

#[test]
fn bad_teller_and_pin_requests_get_4xx_with_their_codes() {
    let (st, s) = setup();
    let r = post_json(
        &s,
        "/v1/tellers",
        Some(&st.admin1),
        &json!({"employee_id": "has space", "name": "x"}),
    );
    assert_eq!(
        (r.status, r.code().as_str()),
        (400, "invalid_request"),
        "{}",
        r.body
    );
    let r = post_json(
        &s,
        "/v1/tellers",
        Some(&st.admin1),
        &json!({"employee_id": "T1", "name": "again"}),
    );
    assert_eq!(
        (r.status, r.code().as_str()),
        (409, "conflict"),
        "{}",
        r.body
    );
    let r = post_json(
        &s,
        "/v1/tellers",
        Some(&st.teller),
        &json!({"employee_id": "T9", "name": "x"}),
    );
    assert_eq!(
        (r.status, r.code().as_str()),
        (403, "forbidden"),
        "{}",
        r.body
    );
    let r = post_json(
        &s,
        "/v1/teller-keys",
        Some(&st.admin1),
        &json!({"employee_id": "nobody"}),
    );
    assert_eq!(
        (r.status, r.code().as_str()),
        (404, "not_found"),
        "{}",
        r.body
    );
    let pin = format!("/v1/signing-keys/{}/pin", st.teller_key);
    let r = post_json(
        &s,
        &pin,
        Some(&st.teller),
        &json!({"old_pin": st.teller_pin, "new_pin": "12"}),
    );
    assert_eq!(
        (r.status, r.code().as_str()),
        (400, "invalid_request"),
        "{}",
        r.body
    );
    let r = post_json(&s, &pin, Some(&st.teller), &json!({"new_pin": "123456"}));
    assert_eq!(
        (r.status, r.code().as_str()),
        (400, "invalid_request"),
        "{}",
        r.body
    );
}
