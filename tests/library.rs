//! The library in-process, against the fixture's real SoftHSM2 token and SQLite store: key
//! attributes read back through PKCS#11, concurrent issuance, and HSM recovery.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};

use der::Decode;
use p256::ecdsa::signature::Verifier;
use signet::app::Signet;
use signet::ca::{CrlRefresh, Fault, IssuerId, Reason};
use signet::clock::Clock;
use signet::config::Config;
use signet::ra::CertificateRequest;
use signet::store::CertStatus;

/// One `Signet` per test binary: a process holds one PKCS#11 context per module.
fn signet() -> &'static Signet {
    static SIGNET: OnceLock<Signet> = OnceLock::new();
    SIGNET.get_or_init(|| {
        let f = common::fixture();
        let config = Config::load(&f.config).expect("fixture config loads");
        // SAFETY of set_var: first use in this binary, under the OnceLock.
        std::env::set_var("SOFTHSM2_CONF", &f.softhsm2_conf);
        Signet::open(config, Clock::system(), Fault::None).expect("signet opens")
    })
}

/// Tests that break the HSM on purpose run alone; the others may share the token.
static OUTAGE: RwLock<()> = RwLock::new(());

fn normal() -> RwLockReadGuard<'static, ()> {
    OUTAGE.read().unwrap_or_else(|e| e.into_inner())
}

fn outage() -> RwLockWriteGuard<'static, ()> {
    OUTAGE.write().unwrap_or_else(|e| e.into_inner())
}

fn csr_pem() -> Vec<u8> {
    let path = common::fixture().csr(common::KeyKind::P256);
    std::fs::read(path).unwrap()
}

#[test]
fn ca_keys_are_private_sensitive_never_extractable_and_sign_only() {
    let _normal = normal();
    let s = signet();
    let settings = s.authority.settings();
    let labels = [
        settings.key_label(IssuerId::Root),
        settings.key_label(IssuerId::Customer),
        settings.key_label(IssuerId::Teller),
        settings.audit_key_label(),
    ];
    for label in labels {
        let a = s.hsm.key_attributes(&label).expect("key attributes");
        assert!(a.private, "{label}: CKA_PRIVATE");
        assert!(a.sensitive, "{label}: CKA_SENSITIVE");
        assert!(a.always_sensitive, "{label}: CKA_ALWAYS_SENSITIVE");
        assert!(!a.extractable, "{label}: CKA_EXTRACTABLE");
        assert!(a.never_extractable, "{label}: CKA_NEVER_EXTRACTABLE");
        assert!(a.sign, "{label}: CKA_SIGN");
        assert!(!a.decrypt, "{label}: CKA_DECRYPT");
        assert!(!a.unwrap, "{label}: CKA_UNWRAP");
        assert!(!a.derive, "{label}: CKA_DERIVE");
        assert!(!a.always_authenticate, "{label}: CKA_ALWAYS_AUTHENTICATE");
    }
}

#[test]
fn the_pin_key_is_a_secret_that_never_leaves_the_token_and_only_makes_macs() {
    let _normal = normal();
    let s = signet();
    let label = s.authority.pin_key_label().unwrap().expect("recorded");
    assert!(
        label.starts_with(&s.authority.settings().pin_key_label()),
        "{label}"
    );
    let a = s.hsm.secret_key_attributes(&label).expect("the PIN key");
    assert!(a.private && a.sensitive && a.always_sensitive, "{a:?}");
    assert!(!a.extractable && a.never_extractable, "{a:?}");
    assert!(a.sign, "{a:?}");
    assert!(!a.decrypt && !a.unwrap && !a.derive, "{a:?}");
    // Made in the token: the same input, the same MAC; another input, another.
    let mac = |d: &[u8]| s.authority.pin_mac(d).unwrap();
    assert_eq!(mac(b"pin hash"), mac(b"pin hash"));
    assert_ne!(mac(b"pin hash"), mac(b"pin hasH"));
    // No second key under the label (ca upgrade leaves it).
    assert_eq!(s.authority.ensure_pin_key("test").unwrap(), None);
    assert!(s.hsm.generate_hmac_key(&label).is_err());
}

/// Two processes that both found no PIN key recorded each make one: the one recorded first
/// serves, and the other is destroyed, not left beside it.
#[test]
fn a_pin_key_made_while_another_was_recorded_is_destroyed_and_the_recorded_one_serves() {
    let _normal = normal();
    let s = signet();
    let recorded = s.authority.pin_key_label().unwrap().expect("recorded");
    let mac = s.authority.pin_mac(b"pin hash").unwrap();
    // Only PIN keys: the concurrency test makes and destroys other secret keys meanwhile.
    let pin_prefix = s.authority.settings().pin_key_label();
    let pin_keys = || -> Vec<String> {
        let mut labels = s.hsm.secret_key_labels().unwrap();
        labels.retain(|l| l.starts_with(&pin_prefix));
        labels
    };
    let keys_before = pin_keys();
    // What the slower process does once it has read no record.
    assert_eq!(s.authority.make_pin_key("test").unwrap(), None);
    assert_eq!(
        s.authority.pin_key_label().unwrap().as_deref(),
        Some(recorded.as_str())
    );
    assert_eq!(s.authority.pin_mac(b"pin hash").unwrap(), mac);
    assert_eq!(pin_keys(), keys_before);
}

#[test]
fn hsm_signature_verifies_under_the_tokens_public_key() {
    let _normal = normal();
    let s = signet();
    let label = s.authority.settings().audit_key_label();
    let der = s.hsm.sign_p256_sha256(&label, b"payment 42").unwrap();
    let key = p256::ecdsa::VerifyingKey::from(&s.hsm.public_key(&label).unwrap());
    let sig = p256::ecdsa::DerSignature::try_from(der.as_slice()).unwrap();
    key.verify(b"payment 42", &sig).unwrap();
    assert!(key.verify(b"payment 43", &sig).is_err());
}

#[test]
fn eight_threads_issue_at_once_with_distinct_serials_all_in_the_store() {
    let _normal = normal();
    let s = signet();
    let csr = Arc::new(csr_pem());
    let per_thread = 5;
    let serials: Vec<(String, Vec<u8>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let csr = csr.clone();
                scope.spawn(move || {
                    (0..per_thread)
                        .map(|i| {
                            let subject =
                                format!("CN=Thread {t} Customer {i},serialNumber=T{t}N{i}");
                            let issued = s
                                .registrar
                                .issue(&CertificateRequest {
                                    profile: "customer",
                                    csr: &csr,
                                    subject: &subject,
                                    actor: "test:concurrency",
                                    break_glass: false,
                                    tenant: None,
                                })
                                .expect("issuance succeeds");
                            (issued.serial, issued.der)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    assert_eq!(serials.len(), 8 * per_thread);
    let distinct: HashSet<_> = serials.iter().map(|(s, _)| s.clone()).collect();
    assert_eq!(distinct.len(), serials.len(), "serials must be distinct");
    for (serial, der) in &serials {
        let rec = s.store.certificate(serial).unwrap().expect("in the store");
        assert_eq!(rec.status, CertStatus::Issued);
        assert_eq!(rec.cert_der.as_deref(), Some(der.as_slice()));
        assert_eq!(serial.len(), 32, "16-byte serial");
    }
}

#[test]
fn signing_recovers_by_itself_after_the_module_is_finalized_behind_its_back() {
    let _outage = outage();
    let s = signet();
    let label = s.authority.settings().audit_key_label();
    s.hsm.sign_p256_sha256(&label, b"before").unwrap();
    s.hsm.fault_finalize_module();
    // The first call after the outage sees CKR_CRYPTOKI_NOT_INITIALIZED, rebuilds the context
    // (initialize, find token, login, keys) and retries once: the caller notices nothing.
    s.hsm
        .sign_p256_sha256(&label, b"after")
        .expect("recovered transparently");
    // And issuance through every layer works again.
    s.registrar
        .issue(&CertificateRequest {
            profile: "customer",
            csr: &csr_pem(),
            subject: "CN=After Recovery,serialNumber=R1",
            actor: "test:recovery",
            break_glass: false,
            tenant: None,
        })
        .expect("issuance after recovery");
}

#[test]
fn concurrent_signers_during_a_module_failure_fail_as_unavailable_or_succeed_then_all_succeed() {
    let _outage = outage();
    let s = signet();
    let label = s.authority.settings().audit_key_label();
    let stop = AtomicBool::new(false);
    let after_fault = AtomicBool::new(false);
    let recovered = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..4 {
            let label = label.clone();
            let (stop, after_fault, recovered) = (&stop, &after_fault, &recovered);
            scope.spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let faulted = after_fault.load(Ordering::SeqCst);
                    match s.hsm.sign_p256_sha256(&label, b"load") {
                        Ok(_) if faulted => {
                            recovered.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok(_) => {}
                        Err(e) => assert!(e.is_unavailable(), "only unavailability may show: {e}"),
                    }
                }
            });
        }
        std::thread::sleep(std::time::Duration::from_millis(30));
        s.hsm.fault_finalize_module();
        after_fault.store(true, Ordering::SeqCst);
        std::thread::sleep(std::time::Duration::from_millis(200));
        stop.store(true, Ordering::SeqCst);
    });
    assert!(
        recovered.load(Ordering::SeqCst) > 0,
        "signers made signatures again after the outage"
    );
    for _ in 0..10 {
        s.hsm
            .sign_p256_sha256(&label, b"settled")
            .expect("all well again");
    }
}

/// CMS detached signatures of one instruction by one customer key in software, each carrying
/// another certificate of that key.
struct SignedInstruction {
    /// The serial of the certificate Signet issued for the key.
    serial: String,
    /// With that certificate.
    cms: Vec<u8>,
    /// With that certificate with one letter of its subject changed, its signature kept.
    forged: Vec<u8>,
    /// With that changed certificate signed again with the customer CA's key in the token:
    /// what a stolen CA key could make.
    resigned: Vec<u8>,
}

/// A customer key in software, its certificate from the fixture's CA, and CMS detached
/// signatures of `instruction` made with it (chain carried).
fn signed_instruction(s: &Signet, instruction: &[u8]) -> SignedInstruction {
    use p256::ecdsa::signature::Signer;
    use x509_cert::builder::{Builder, RequestBuilder};
    let seed = s.hsm.random(32).unwrap();
    let key = p256::ecdsa::SigningKey::from_slice(&sha2::Sha256::digest(&seed)).unwrap();
    let req = RequestBuilder::new("CN=cache test".parse().unwrap())
        .unwrap()
        .build::<_, p256::ecdsa::DerSignature>(&key)
        .unwrap();
    let issued = s
        .registrar
        .issue(&CertificateRequest {
            profile: "customer",
            csr: &der::Encode::to_der(&req).unwrap(),
            subject: "CN=Cache Test,serialNumber=110101199003071234",
            actor: "test:cache",
            break_glass: true,
            tenant: None,
        })
        .unwrap();
    let chain = vec![s.authority.ca(IssuerId::Customer).unwrap().der.clone()];
    let sign = |b: &[u8]| -> Result<Vec<u8>, String> {
        let sig: p256::ecdsa::DerSignature = key.sign(b);
        Ok(sig.as_bytes().to_vec())
    };
    let cms = |cert: &[u8]| {
        signet::sign::format::cms_signed_data(
            signet::sign::format::CmsContent::Detached(instruction),
            &signet::sign::format::SignerCert {
                certificate_der: cert.to_vec(),
                chain: chain.clone(),
            },
            s.clock.now(),
            &sign,
        )
        .unwrap()
    };
    let mut forged = issued.der.clone();
    let at = forged
        .windows(10)
        .position(|w| w == b"Cache Test")
        .expect("subject in the DER");
    forged[at] = b'K';
    let mut resigned = SignedTbs::from_der(&forged).unwrap();
    let tbs = der::Encode::to_der(&resigned.tbs).unwrap();
    let ca_key = s.authority.settings().key_label(IssuerId::Customer);
    let signature = s.hsm.sign_p256_sha256(&ca_key, &tbs).unwrap();
    resigned.signature = der::asn1::BitString::from_bytes(&signature).unwrap();
    SignedInstruction {
        serial: issued.serial,
        cms: cms(&issued.der),
        forged: cms(&forged),
        resigned: cms(&der::Encode::to_der(&resigned).unwrap()),
    }
}

/// Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signatureValue }, its first
/// two kept as they are.
#[derive(der::Sequence)]
struct SignedTbs {
    tbs: der::Any,
    algorithm: der::Any,
    signature: der::asn1::BitString,
}

use sha2::Digest as _;

#[test]
fn a_verification_whose_audit_event_falls_due_checkpoints_the_chain() {
    let _normal = normal();
    let s = signet();
    let verifier = s.verifier.as_ref().expect("verifier configured");
    let every = signet::config::Config::load(&common::fixture().config)
        .unwrap()
        .audit
        .checkpoint_every;
    let instruction = br#"{"instruction_id":"CHECKPOINT-1","amount":"1.00"}"#;
    let cms = signed_instruction(s, instruction).cms;
    let start = s.store.audit_head().unwrap().map_or(0, |h| h.seq);
    // Every presentation is audited (all but the first as replays). Other tests of this binary
    // append too, so go on until one of these events has a due sequence number.
    let mut due = None;
    for _ in 0..3 * every {
        verifier
            .verify(instruction, &cms, "test:checkpoint", None)
            .unwrap();
        due = s
            .store
            .audit_events(start)
            .unwrap()
            .into_iter()
            .find(|e| e.actor == "test:checkpoint" && e.seq % every == 0);
        if due.is_some() {
            break;
        }
    }
    let due = due.expect("a verification event fell due");
    assert_eq!(due.action, "signature.verify");
    // Signed on the checkpoint thread: the verification did not wait for it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let checkpoint = loop {
        let found = s
            .store
            .checkpoints()
            .unwrap()
            .into_iter()
            .find(|c| c.seq == due.seq);
        if found.is_some() || std::time::Instant::now() > deadline {
            break found;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    .expect("the verification that fell due checkpointed the chain");
    assert_eq!(checkpoint.hash, due.hash);
}

#[test]
fn revocation_after_a_verified_chain_is_seen_by_the_next_verification() {
    let _normal = normal();
    let s = signet();
    let verifier = s.verifier.as_ref().expect("verifier configured");
    let instruction = br#"{"instruction_id":"CACHE-1","amount":"1.00"}"#;
    let SignedInstruction { serial, cms, .. } = signed_instruction(s, instruction);
    let first = verifier.verify_pure(instruction, &cms);
    assert_eq!(first.indication, signet::verify::Indication::TotalPassed);
    s.authority
        .revoke(
            &serial,
            signet::ca::Reason::KeyCompromise,
            None,
            "test:cache",
        )
        .unwrap();
    let second = verifier.verify_pure(instruction, &cms);
    assert_ne!(
        second.indication,
        signet::verify::Indication::TotalPassed,
        "a revoked signer passed after its chain was cached"
    );
    let text = serde_json::to_string(&second).unwrap();
    assert!(text.contains("revoked at"), "{text}");
}

#[test]
fn a_certificate_changed_after_its_chain_was_verified_has_no_chain() {
    let _normal = normal();
    let s = signet();
    let verifier = s.verifier.as_ref().expect("verifier configured");
    let instruction = br#"{"instruction_id":"CACHE-2","amount":"2.00"}"#;
    let SignedInstruction { cms, forged, .. } = signed_instruction(s, instruction);
    assert_eq!(
        verifier.verify_pure(instruction, &cms).indication,
        signet::verify::Indication::TotalPassed
    );
    let report = verifier.verify_pure(instruction, &forged);
    assert_eq!(
        report.signers[0].sub_indication,
        Some(signet::verify::SubIndication::NoCertificateChainFound),
        "{}",
        serde_json::to_string(&report).unwrap()
    );
}

#[test]
fn a_certificate_with_a_serial_signet_issued_but_other_content_signed_by_its_ca_key_is_not_signets()
{
    let _normal = normal();
    let s = signet();
    let verifier = s.verifier.as_ref().expect("verifier configured");
    let instruction = br#"{"instruction_id":"CACHE-3","amount":"3.00"}"#;
    let signed = signed_instruction(s, instruction);
    let report = verifier.verify_pure(instruction, &signed.resigned);
    let text = serde_json::to_string(&report).unwrap();
    assert_eq!(
        report.signers[0].sub_indication,
        Some(signet::verify::SubIndication::CertificateChainGeneralFailure),
        "{text}"
    );
    assert!(
        text.contains(&format!("bears serial {}", signed.serial)),
        "{text}"
    );
}

#[test]
fn a_crl_this_process_is_signing_is_not_succeeded_and_one_it_failed_to_sign_is_once_the_hsm_answers(
) {
    let _outage = outage();
    let s = signet();
    let scope = (IssuerId::Customer, None);
    let issued = s
        .registrar
        .issue(&CertificateRequest {
            profile: "customer",
            csr: &csr_pem(),
            subject: "CN=CRL Left Unsigned,serialNumber=U1",
            actor: "test:crl",
            break_glass: false,
            tenant: None,
        })
        .expect("issued");
    s.authority
        .revoke(&issued.serial, Reason::KeyCompromise, None, "test:crl")
        .expect("revoked");

    let before = s
        .store
        .newest_crl_number(IssuerId::Customer, None)
        .unwrap()
        .map(|n| n.number);
    // Every session held: the CRL is recorded, and its signature waits for a session (the
    // session wait, 5 s) and is then refused.
    let mut held = Vec::new();
    while let Some(call) = s.hsm.fault_hold_call() {
        held.push(call);
    }
    let left = std::thread::scope(|threads| {
        let maker = threads.spawn(|| s.authority.refresh_crl(scope, false, "test:crl"));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(4);
        let signing = loop {
            let newest = s.store.newest_crl_number(IssuerId::Customer, None).unwrap();
            if let Some(n) = newest.filter(|n| Some(n.number) != before) {
                break n;
            }
            assert!(std::time::Instant::now() < deadline, "no CRL recorded");
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        assert!(!signing.signed);
        // A request that has waited long enough for another process's CRL does not succeed
        // one this process is still signing.
        let second = s
            .authority
            .succeed_newest_crl(scope, "test:crl")
            .expect("no failure");
        assert!(
            second.is_none(),
            "a CRL was made in place of one being signed"
        );
        maker.join().unwrap().expect_err("no session to sign with");
        signing
    });
    // While the HSM still does not answer, its maker does not record another to no end.
    let again = s.authority.refresh_crl(scope, false, "test:crl");
    assert!(
        matches!(again, Ok(CrlRefresh::AnotherMaker)),
        "a CRL left unsigned during an outage was succeeded while the HSM was still away: {again:?}"
    );
    drop(held);
    let newest = s
        .store
        .newest_crl_number(IssuerId::Customer, None)
        .unwrap()
        .expect("a CRL took a number");
    assert_eq!(
        newest.number, left.number,
        "nothing succeeded the CRL in flight"
    );
    assert!(!newest.signed, "the CRL whose signature failed is unsigned");

    // Another process waits two minutes before it takes that CRL for abandoned; its maker
    // knows at once.
    match s.authority.refresh_crl(scope, false, "test:crl") {
        Ok(CrlRefresh::Made(crl)) => {
            assert_eq!(crl.number, left.number + 1);
            let list: x509_cert::crl::CertificateList = Decode::from_der(&crl.der).unwrap();
            let serial = hex::decode(&issued.serial).unwrap();
            assert!(list
                .tbs_cert_list
                .revoked_certificates
                .unwrap_or_default()
                .iter()
                .any(|e| e.serial_number.as_bytes() == serial.as_slice()));
        }
        other => panic!("the maker of the unsigned CRL did not succeed it: {other:?}"),
    }
}

/// SoftHSM's file object store breaks a key being made while another thread uses the token
/// (SoftHSMv2 issue 573): the HSM layer makes keys alone, so that approving a teller's key
/// while certificates are signed fails neither, and leaves no half-made object behind.
#[test]
fn keys_are_made_while_other_threads_sign_without_a_failure_or_a_half_made_object() {
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
    let _normal = normal();
    let s = signet();
    let pin_key = s.authority.pin_key_label().unwrap().expect("recorded");
    let audit_key = s.authority.settings().audit_key_label();
    let (done, signed, failed) = (AtomicBool::new(false), AtomicU32::new(0), AtomicU32::new(0));
    let made: Vec<String> = std::thread::scope(|scope| {
        for _ in 0..2 {
            scope.spawn(|| {
                while !done.load(Ordering::Relaxed) {
                    let ok = s.hsm.hmac_sha256(&pin_key, b"x").is_ok()
                        && s.hsm.sign_p256_sha256(&audit_key, b"x").is_ok();
                    let counter = if ok { &signed } else { &failed };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        let made: Result<Vec<String>, String> = (0..6)
            .map(|i| {
                let label = format!("concurrent-{i}-{}", std::process::id());
                let r = if i % 2 == 0 {
                    s.hsm.generate_p256(&label).map(drop)
                } else {
                    s.hsm.generate_hmac_key(&label)
                };
                r.map(|()| label)
                    .map_err(|e| format!("key {i} beside signing threads: {e}"))
            })
            .collect();
        done.store(true, Ordering::Relaxed);
        made
    })
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(failed.load(Ordering::Relaxed), 0, "a signature failed");
    assert!(
        signed.load(Ordering::Relaxed) > 0,
        "the signing threads ran"
    );
    let labels = s.hsm.secret_key_labels().unwrap();
    assert!(!labels.iter().any(String::is_empty), "{labels:?}");
    for label in made.iter().skip(1).step_by(2) {
        assert!(labels.contains(label), "{label} in {labels:?}");
        s.hsm.destroy_secret_key(label).unwrap();
    }
}
