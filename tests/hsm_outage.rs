//! HSM outage and return, with p11-kit as a network HSM: `p11-kit server` exports the
//! fixture's SoftHSM2 token on a unix socket and `signet serve` reaches it through
//! `p11-kit-client.so` (SIGNET_HSM_MODULE, P11_KIT_SERVER_ADDRESS). An outage is the server and
//! its per-connection `p11-kit-remote` children killed with SIGKILL; after it every call of
//! the client answers CKR_DEVICE_ERROR until a new C_Initialize. Signet must answer 503
//! `hsm_unavailable` within its call timeout meanwhile, leave nothing half-issued, and come
//! back by itself when the server does.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::drill::{
    csr_pem, customer_request, health, metric, sqlite_certificates, wait_until, DrillHome, Load, Op,
};
use common::http::{post_json, Server};
use common::{fixture, Fixture};
use signet::hsm::HsmConfig;

const SOFTHSM: &str = "/usr/lib/softhsm/libsofthsm2.so";
/// Where Debian's p11-kit-modules puts the client module (the multiarch folder varies).
fn p11_kit_client() -> PathBuf {
    let found = std::fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("pkcs11/p11-kit-client.so"))
        .find(|p| p.exists());
    found.unwrap_or_else(|| {
        panic!("no /usr/lib/*/pkcs11/p11-kit-client.so: install p11-kit-modules (./test.sh does)")
    })
}
/// `[hsm] call_timeout_ms` of the drill config.
const CALL_TIMEOUT: Duration = Duration::from_millis(2000);
/// `[issuance] timeout_secs` of the drill config (the sweep of unsigned records runs every second).
const ISSUANCE_TIMEOUT_SECS: u64 = 2;
/// The brief: back within 10 s of the HSM's return, without restarting Signet.
const RECOVERY_BOUND: Duration = Duration::from_secs(10);

/// Drills run one at a time: they share the token and the machine's two cores.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// A `p11-kit server` exporting the fixture's token on a unix socket.
struct NetworkHsm {
    child: Option<Child>,
    socket: PathBuf,
    softhsm2_conf: PathBuf,
    token: String,
}

impl NetworkHsm {
    fn start(f: &Fixture, socket: PathBuf) -> NetworkHsm {
        let mut hsm = NetworkHsm {
            child: None,
            socket,
            softhsm2_conf: f.softhsm2_conf.clone(),
            token: f.token_label.clone(),
        };
        hsm.restart();
        hsm
    }

    /// Starts the server (again) on the same socket path.
    fn restart(&mut self) {
        assert!(
            self.child.is_none(),
            "the p11-kit server is already running"
        );
        // A killed server leaves its socket file behind.
        let _ = std::fs::remove_file(&self.socket);
        let child = Command::new("p11-kit")
            .args(["server", "-f", "-n"])
            .arg(&self.socket)
            .args(["--provider", SOFTHSM])
            .arg(format!("pkcs11:token={}", self.token))
            .env("SOFTHSM2_CONF", &self.softhsm2_conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start p11-kit server (install p11-kit)");
        self.child = Some(child);
        let up = wait_until(Duration::from_secs(10), || self.socket.exists());
        assert!(
            up.is_some(),
            "p11-kit server did not create {}",
            self.socket.display()
        );
    }

    fn address(&self) -> String {
        format!("unix:path={}", self.socket.display())
    }

    /// The outage: SIGKILL to the server and to every p11-kit-remote it forked.
    fn kill(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = child.id();
        // Stopped first, so that it forks no new child between the listing and the kill. The
        // signal is only queued when `kill` returns: wait until the server is really stopped,
        // then kill its children until none is left (a child killed after its parent would
        // be re-parented and missed).
        signal("STOP", pid);
        wait_until(Duration::from_secs(5), || process_state(pid) == Some('T'));
        for _ in 0..50 {
            // A killed child stays a zombie while its parent is stopped: not counted.
            let kids: Vec<u32> = children(pid)
                .into_iter()
                .filter(|c| process_state(*c) != Some('Z'))
                .collect();
            if kids.is_empty() {
                break;
            }
            for c in kids {
                signal("KILL", c);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl NetworkHsm {
    /// A wedged HSM: the server and its children stopped (SIGSTOP), so calls hang rather than fail.
    fn freeze(&self, how: &str) {
        let pid = self.child.as_ref().expect("running").id();
        signal(how, pid);
        for c in children(pid) {
            signal(how, c);
        }
    }
}

impl Drop for NetworkHsm {
    fn drop(&mut self) {
        self.kill();
    }
}

fn signal(name: &str, pid: u32) {
    let _ = Command::new("kill")
        .args([format!("-{name}"), pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

/// The state letter of a process (R, S, T ...) from /proc/<pid>/stat.
fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .next()?
        .chars()
        .next()
}

/// Processes whose parent is `parent` (from /proc/<pid>/stat).
fn children(parent: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: comm may hold spaces, so parse after the last ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(parent) {
            out.push(pid);
        }
    }
    out
}

/// A drill: a network HSM, a Signet home on a store copy, a bank officer, `signet serve`
/// through p11-kit-client.so.
struct Drill {
    hsm: NetworkHsm,
    home: DrillHome,
    server: Server,
    officer: String,
    csr: String,
}

impl Drill {
    fn start(name: &str) -> Drill {
        let f = fixture();
        let hsm = NetworkHsm::start(f, f.path(&format!("{name}.p11-kit.sock")));
        let home = DrillHome::new(
            f,
            name,
            &[
                (
                    "hsm",
                    "call_timeout_ms",
                    CALL_TIMEOUT.as_millis().to_string(),
                ),
                (
                    "issuance",
                    "timeout_secs",
                    ISSUANCE_TIMEOUT_SECS.to_string(),
                ),
            ],
        );
        let officer = home.officer(f, &format!("{name} bank"));
        let server = Server::start_config(
            f,
            &home.config,
            &[
                (
                    "SIGNET_HSM_MODULE",
                    p11_kit_client().to_string_lossy().into_owned(),
                ),
                ("P11_KIT_SERVER_ADDRESS", hsm.address()),
            ],
        );
        Drill {
            hsm,
            home,
            server,
            officer,
            csr: csr_pem(f),
        }
    }

    fn issue(&self, n: u64) -> common::http::Reply {
        post_json(
            &self.server,
            "/v1/certificates",
            Some(&self.officer),
            &customer_request(&self.csr, n),
        )
    }

    /// Pending rows of the store (recorded, not signed, not voided).
    fn pending(&self) -> Vec<String> {
        sqlite_certificates(&self.home.db)
            .into_iter()
            .filter(|(_, (status, _))| status == "pending")
            .map(|(s, _)| s)
            .collect()
    }
}

#[test]
fn hsm_outage_under_load_answers_503_within_the_call_timeout_leaves_nothing_half_issued_and_signet_recovers_by_itself(
) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut d = Drill::start("outage-load");
    let r = d.issue(1);
    assert_eq!(
        r.status, 201,
        "issuance through p11-kit before the outage: {}",
        r.body
    );
    assert_eq!(health(&d.server).1, "ok");

    let load = Load::start(&d.server.base, &d.officer, &d.csr, 3, 0);
    std::thread::sleep(Duration::from_millis(800));

    // (a) the outage, while the clients issue
    let killed = Instant::now();
    d.hsm.kill();
    let seen_down = wait_until(Duration::from_secs(5), || {
        health(&d.server).1 == "unavailable"
    });
    assert!(
        seen_down.is_some(),
        "/healthz still reports the HSM up 5 s after the p11-kit server was killed"
    );
    let (status, _, store) = health(&d.server);
    assert_eq!(
        (status, store.as_str()),
        (503, "ok"),
        "/healthz during the outage"
    );
    std::thread::sleep(Duration::from_secs(3));

    // (b) the HSM returns; Signet is not restarted
    d.hsm.restart();
    let returned = Instant::now();
    let recovered = wait_until(RECOVERY_BOUND + Duration::from_secs(5), || {
        load.snapshot()
            .iter()
            .any(|a| a.status == 201 && a.sent >= returned)
    });
    let healthy = wait_until(RECOVERY_BOUND, || health(&d.server).1 == "ok");
    std::thread::sleep(Duration::from_millis(500));
    let answers = load.finish();

    let during: Vec<_> = answers
        .iter()
        .filter(|a| a.sent >= killed && a.sent < returned)
        .collect();
    let refused: Vec<_> = during.iter().filter(|a| a.status == 503).collect();
    let slowest = during.iter().map(|a| a.took).max().unwrap_or_default();
    let issued_after = answers
        .iter()
        .filter(|a| a.status == 201 && a.sent >= returned)
        .count();
    eprintln!(
        "hsm outage under load: {} requests during the outage, {} answered 503, slowest answer {} ms \
         (call timeout {} ms); /healthz saw the HSM down after {} ms; first issuance after the \
         HSM's return: {} ms; /healthz ok after {} ms; {issued_after} issued after the return",
        during.len(),
        refused.len(),
        slowest.as_millis(),
        CALL_TIMEOUT.as_millis(),
        seen_down.unwrap().as_millis(),
        recovered.map(|t| t.as_millis() as i64).unwrap_or(-1),
        healthy.map(|t| t.as_millis() as i64).unwrap_or(-1),
    );

    assert!(
        !refused.is_empty(),
        "no request was refused during the outage"
    );
    for a in &answers {
        assert!(
            a.status == 201 || (a.status == 503 && a.code.as_deref() == Some("hsm_unavailable")),
            "every answer is a certificate or 503 hsm_unavailable, got {a:?}"
        );
    }
    assert!(
        slowest < CALL_TIMEOUT + Duration::from_secs(1),
        "an answer during the outage took {} ms, over the call timeout",
        slowest.as_millis()
    );
    let recovered = recovered.expect("issuance did not resume after the HSM returned");
    assert!(
        recovered <= RECOVERY_BOUND,
        "issuance resumed only {} ms after the HSM returned",
        recovered.as_millis()
    );
    assert!(healthy.is_some(), "/healthz did not report the HSM back");

    // Nothing half-issued: every certificate handed out is issued in the store with the same
    // DER, and no record is left pending (failed signings are voided).
    let rows = sqlite_certificates(&d.home.db);
    for a in answers
        .iter()
        .filter(|a| a.what == Op::Issue && a.status == 201)
    {
        let serial = a.serial.as_ref().unwrap();
        let (status, der) = rows
            .get(serial)
            .expect("a handed-out certificate is in the store");
        assert_eq!(status, "issued", "{serial}");
        assert_eq!(der.as_ref(), a.der.as_ref(), "{serial}: stored DER differs");
    }
    let left = wait_until(Duration::from_secs(ISSUANCE_TIMEOUT_SECS + 3), || {
        d.pending().is_empty()
    });
    assert!(left.is_some(), "records left pending: {:?}", d.pending());
    let voided = rows.values().filter(|(s, _)| s == "void").count();
    eprintln!("hsm outage under load: {voided} recorded issuances voided (none half-issued)");
}

#[test]
fn hsm_outage_while_idle_the_first_request_after_the_hsm_returns_succeeds() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut d = Drill::start("outage-idle");
    let r = d.issue(1);
    assert_eq!(
        r.status, 201,
        "issuance through p11-kit before the outage: {}",
        r.body
    );

    let recoveries = metric(&d.server, "signet_hsm_recoveries_total");
    d.hsm.kill();
    std::thread::sleep(Duration::from_secs(1));
    d.hsm.restart();

    let sent = Instant::now();
    let r = d.issue(2);
    let took = sent.elapsed();
    eprintln!(
        "hsm outage while idle: the first request after the HSM's return answered {} in {} ms",
        r.status,
        took.as_millis()
    );
    assert_eq!(
        r.status, 201,
        "first request after the HSM returned: {}",
        r.body
    );
    assert_eq!(health(&d.server).1, "ok");
    // It went through a fresh C_Initialize: the old context died with the server.
    assert!(metric(&d.server, "signet_hsm_recoveries_total") > recoveries);
}

#[test]
fn a_wedged_hsm_that_never_answers_gets_503_at_the_call_timeout_not_a_hang() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let d = Drill::start("outage-wedged");
    let r = d.issue(1);
    assert_eq!(
        r.status, 201,
        "issuance through p11-kit before the outage: {}",
        r.body
    );

    d.hsm.freeze("STOP");
    let sent = Instant::now();
    let r = d.issue(2);
    let took = sent.elapsed();
    let sent = Instant::now();
    let (health_status, hsm, _) = health(&d.server);
    let health_took = sent.elapsed();
    d.hsm.freeze("CONT");
    eprintln!(
        "wedged hsm: issuance answered {} {} in {} ms, /healthz {health_status} in {} ms (call timeout {} ms)",
        r.status,
        r.body,
        took.as_millis(),
        health_took.as_millis(),
        CALL_TIMEOUT.as_millis()
    );
    assert_eq!((r.status, r.code().as_str()), (503, "hsm_unavailable"));
    assert!(
        took >= CALL_TIMEOUT && took < CALL_TIMEOUT + Duration::from_secs(1),
        "answered after {} ms, not at the {} ms call timeout",
        took.as_millis(),
        CALL_TIMEOUT.as_millis()
    );
    assert_eq!((health_status, hsm.as_str()), (503, "unavailable"));
    assert!(health_took < CALL_TIMEOUT + Duration::from_secs(1));

    // Once the HSM answers again, so does Signet; the request abandoned at the timeout left
    // no pending record behind.
    let back = wait_until(RECOVERY_BOUND, || d.issue(3).status == 201);
    assert!(
        back.is_some(),
        "issuance did not resume after the HSM was resumed"
    );
    let left = wait_until(Duration::from_secs(ISSUANCE_TIMEOUT_SECS + 3), || {
        d.pending().is_empty()
    });
    assert!(left.is_some(), "records left pending: {:?}", d.pending());
}

/// A module that fails while one of its calls never returns (p11-kit's client does this when
/// its server dies between a reply's header and its body: the other waiting threads are never
/// woken). The layer finalizes the failed context without waiting for that call past the call
/// timeout, re-initializes, and signs again while the call is still stuck. In process, on the
/// fixture's SoftHSM2 token: the stuck call is a test hook holding the context as a call would.
/// The fixture's token through an HSM layer of the drill's own, its settings the fixture's as
/// `settings` changes them; and the label of the audit key, which every drill may sign with.
/// For drills that hold [`ONE_AT_A_TIME`].
fn fixture_hsm(settings: impl FnOnce(HsmConfig) -> HsmConfig) -> (signet::hsm::Hsm, String) {
    let f = fixture();
    let config = signet::config::Config::load(&f.config).expect("fixture config loads");
    // SAFETY of set_var: the drills run one at a time; their servers get their own environment.
    std::env::set_var("SOFTHSM2_CONF", &f.softhsm2_conf);
    let hsm =
        signet::hsm::Hsm::open(settings(config.hsm_config())).expect("the fixture's token opens");
    (hsm, format!("{}-audit", config.ca.key_prefix))
}

#[test]
fn a_call_that_never_returns_does_not_keep_the_hsm_layer_from_re_initializing() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (hsm, key) = fixture_hsm(|c| HsmConfig {
        call_timeout: CALL_TIMEOUT,
        ..c
    });
    hsm.sign_p256_sha256(&key, b"before")
        .expect("signs before the fault");
    let recoveries = hsm.stats().recoveries;

    // The HSM restarts behind the layer's back while a call is in it that will not return.
    hsm.fault_finalize_module();
    let stuck = hsm
        .fault_hold_call()
        .expect("a live context to hold a call in");

    let mut refused = 0;
    let recovered = wait_until(CALL_TIMEOUT + Duration::from_secs(5), || {
        match hsm.sign_p256_sha256(&key, b"after") {
            Ok(_) => true,
            Err(e) => {
                assert!(e.is_unavailable(), "only unavailability may show: {e}");
                refused += 1;
                false
            }
        }
    });
    eprintln!(
        "stuck call: signing again after {:?} ms ({refused} refused meanwhile, call timeout {} ms)",
        recovered.map(|t| t.as_millis()),
        CALL_TIMEOUT.as_millis()
    );
    let recovered = recovered.expect("signing did not resume while a call stayed stuck");
    // The call was given the call timeout to return before the module was finalized under it.
    assert!(
        recovered >= CALL_TIMEOUT - Duration::from_millis(100),
        "re-initialized after {} ms, before the stuck call had outlived the call timeout",
        recovered.as_millis()
    );
    assert!(recovered < CALL_TIMEOUT + Duration::from_secs(3));
    assert!(hsm.stats().recoveries > recoveries, "a fresh context");
    // /healthz's check answers too, and the stuck call ending late disturbs nothing.
    assert!(hsm.is_available());
    drop(stuck);
    hsm.sign_p256_sha256(&key, b"settled")
        .expect("signs after the stuck call ends");
}

/// Every session taken (here by a call that does not return) is load, not a failed module: a
/// caller that finds none within the session wait is refused as unavailable, and the context
/// is neither finalized nor rebuilt; the next caller after the session comes back is served.
#[test]
fn every_session_busy_is_refused_as_load_and_leaves_the_module_up() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (hsm, key) = fixture_hsm(|c| HsmConfig {
        sessions: 1,
        checkout_timeout: Duration::from_millis(100),
        call_timeout: CALL_TIMEOUT,
        ..c
    });
    hsm.sign_p256_sha256(&key, b"before").expect("signs");
    let recoveries = hsm.stats().recoveries;

    let held = hsm.fault_hold_call().expect("the only session, held");
    let sent = Instant::now();
    let refused = hsm
        .sign_p256_sha256(&key, b"no session")
        .expect_err("no session within the session wait");
    assert!(refused.is_unavailable(), "{refused}");
    assert!(
        sent.elapsed() < CALL_TIMEOUT,
        "refused at the session wait, not the call timeout"
    );
    drop(held);
    hsm.sign_p256_sha256(&key, b"after")
        .expect("served once the session is back");
    assert_eq!(
        hsm.stats().recoveries,
        recoveries,
        "the module was not re-initialized"
    );
}

/// Keys are made alone in the layer (SoftHSM's object store breaks a key made beside other
/// calls), but a call that never returns must not hold every other call up behind the one
/// making a key: the key is refused at the call timeout, and signing goes on meanwhile, with
/// no re-initialization.
#[test]
fn a_key_made_while_a_call_is_stuck_is_refused_at_the_call_timeout_and_signing_goes_on() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (hsm, key) = fixture_hsm(|c| HsmConfig {
        call_timeout: CALL_TIMEOUT,
        ..c
    });
    hsm.sign_p256_sha256(&key, b"before").expect("signs");
    let recoveries = hsm.stats().recoveries;

    let held = hsm.fault_hold_call().expect("a session to hold a call on");
    let sent = Instant::now();
    let refused = hsm
        .generate_hmac_key(&format!("stuck-{}", std::process::id()))
        .expect_err("no key while another call is in the module");
    assert!(refused.is_unavailable(), "{refused}");
    assert!(
        refused.to_string().contains("has not returned"),
        "refused for the stuck call, not at the caller's timeout: {refused}"
    );
    assert!(
        sent.elapsed() < CALL_TIMEOUT,
        "refused after {} ms",
        sent.elapsed().as_millis()
    );
    // The stuck call is still in the module: other calls go on beside it.
    let signed = wait_until(CALL_TIMEOUT, || {
        hsm.sign_p256_sha256(&key, b"beside").is_ok()
    });
    assert!(
        signed.is_some(),
        "signing did not go on beside the stuck call"
    );
    drop(held);
    assert_eq!(
        hsm.stats().recoveries,
        recoveries,
        "the module was not re-initialized"
    );
}
