//! Fault drills: a configurable Signet home on a copy of the fixture's store, a bank with an
//! RA officer, and client threads that keep issuing (and revoking) over real HTTP while a test
//! breaks something, recording every answer.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::json;

use super::http::{agent, finish, Server};
use super::{pem_blocks, Fixture, KeyKind};

/// Sets `key = value` in `[section]` of a TOML text, adding the key when it is not there.
pub fn with_key(text: &str, section: &str, key: &str, value: &str) -> String {
    let mut out = String::new();
    let mut current = String::new();
    let mut done = false;
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('[') && t.ends_with(']') {
            if current == section && !done {
                out.push_str(&format!("{key} = {value}\n"));
                done = true;
            }
            current = t[1..t.len() - 1].trim().to_string();
        }
        let is_key = current == section
            && t.split_once('=')
                .map(|(k, _)| k.trim() == key)
                .unwrap_or(false);
        if is_key {
            out.push_str(&format!("{key} = {value}\n"));
            done = true;
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    if !done {
        assert!(current == section, "no [{section}] in the config:\n{text}");
        out.push_str(&format!("{key} = {value}\n"));
    }
    out
}

/// Replaces the whole `[section]` table of a TOML text with `body` (lines `key = value`).
pub fn with_section(text: &str, section: &str, body: &str) -> String {
    let mut out = String::new();
    let mut skipping = false;
    let mut done = false;
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('[') && t.ends_with(']') {
            skipping = t[1..t.len() - 1].trim() == section;
            if skipping {
                out.push_str(&format!("[{section}]\n{}\n", body.trim_end()));
                done = true;
                continue;
            }
        }
        if !skipping {
            out.push_str(line);
            out.push('\n');
        }
    }
    assert!(done, "no [{section}] in the config:\n{text}");
    out
}

/// A Signet home for one drill: the fixture's token, a copy of its store, its own config.
pub struct DrillHome {
    pub config: PathBuf,
    pub db: PathBuf,
    pub checkpoints: PathBuf,
}

impl DrillHome {
    /// A copy of the fixture's store with `edits` ((section, key, TOML value)) applied to the
    /// config, keys added where the generated config does not have them.
    pub fn new(f: &Fixture, name: &str, edits: &[(&str, &str, String)]) -> DrillHome {
        let copy = f.store_copy(name, &[]);
        let mut text = std::fs::read_to_string(&copy.config).expect("read config copy");
        for (section, key, value) in edits {
            text = with_key(&text, section, key, value);
        }
        std::fs::write(&copy.config, text).expect("write config");
        DrillHome {
            config: copy.config,
            db: copy.db,
            checkpoints: copy.checkpoints,
        }
    }

    /// Rewrites this home's config with `edit`.
    pub fn edit_config(&self, edit: impl FnOnce(&str) -> String) {
        let text = std::fs::read_to_string(&self.config).expect("read config");
        std::fs::write(&self.config, edit(&text)).expect("write config");
    }

    /// Adds a bank and returns the bearer token of a new RA officer of it.
    pub fn officer(&self, f: &Fixture, bank: &str) -> String {
        f.bank_officer(&self.config, bank)
    }
}

/// The JSON body of a customer certificate request for customer number `n`.
pub fn customer_request(csr_pem: &str, n: u64) -> serde_json::Value {
    json!({
        "profile": "customer",
        "csr": csr_pem,
        "subject": format!("CN=客户{n},serialNumber=1101011990{n:08}"),
    })
}

/// A fresh P-256 CSR (PEM) made by OpenSSL.
pub fn csr_pem(f: &Fixture) -> String {
    std::fs::read_to_string(f.csr(KeyKind::P256)).expect("read CSR")
}

/// One answer a drill client got.
#[derive(Debug, Clone)]
pub struct Answer {
    pub what: Op,
    /// When the request was sent.
    pub sent: Instant,
    pub took: Duration,
    /// HTTP status, or 0 when the connection failed (the server was killed).
    pub status: u16,
    pub code: Option<String>,
    /// Serial of the certificate issued or revoked.
    pub serial: Option<String>,
    /// DER of an issued certificate.
    pub der: Option<Vec<u8>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Issue,
    Revoke,
}

/// Client threads that issue (and, when asked, revoke what they issued) until stopped.
pub struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    pub answers: Arc<Mutex<Vec<Answer>>>,
}

static CUSTOMER: AtomicU64 = AtomicU64::new(1);

impl Load {
    /// `clients` threads against the server at `base`; one in `revoke_every` requests revokes a
    /// certificate the thread was given (0: issue only).
    pub fn start(base: &str, token: &str, csr: &str, clients: usize, revoke_every: u64) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let answers = Arc::new(Mutex::new(Vec::new()));
        let base = Arc::new(Mutex::new(base.to_string()));
        Self::start_shared(base, token, csr, clients, revoke_every, stop, answers)
    }

    /// As [`Load::start`], with the server's base URL behind a lock that a test may change
    /// (after restarting the server on another port).
    pub fn start_shared(
        base: Arc<Mutex<String>>,
        token: &str,
        csr: &str,
        clients: usize,
        revoke_every: u64,
        stop: Arc<AtomicBool>,
        answers: Arc<Mutex<Vec<Answer>>>,
    ) -> Load {
        let mut threads = Vec::new();
        for _ in 0..clients {
            let (stop, answers, base) = (stop.clone(), answers.clone(), base.clone());
            let (token, csr) = (token.to_string(), csr.to_string());
            threads.push(std::thread::spawn(move || {
                let agent = ureq::AgentBuilder::new()
                    .timeout(Duration::from_secs(30))
                    .build();
                let mut mine: Vec<String> = Vec::new();
                let mut i = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    i += 1;
                    let url = base.lock().unwrap().clone();
                    let revoke =
                        revoke_every > 0 && i.is_multiple_of(revoke_every) && !mine.is_empty();
                    let sent = Instant::now();
                    let (what, serial, r) = if revoke {
                        let serial = mine.remove(0);
                        let r = agent
                            .post(&format!("{url}/v1/certificates/{serial}/revoke"))
                            .set("Content-Type", "application/json")
                            .set("Authorization", &format!("Bearer {token}"))
                            .send_string(&json!({"reason": "superseded"}).to_string());
                        (Op::Revoke, Some(serial), r)
                    } else {
                        let n = CUSTOMER.fetch_add(1, Ordering::SeqCst);
                        let r = agent
                            .post(&format!("{url}/v1/certificates"))
                            .set("Content-Type", "application/json")
                            .set("Authorization", &format!("Bearer {token}"))
                            .send_string(&customer_request(&csr, n).to_string());
                        (Op::Issue, None, r)
                    };
                    let took = sent.elapsed();
                    let answer = match r {
                        Err(ureq::Error::Transport(_)) => Answer {
                            what,
                            sent,
                            took,
                            status: 0,
                            code: None,
                            serial,
                            der: None,
                        },
                        r => {
                            let reply = finish(r);
                            let mut a = Answer {
                                what,
                                sent,
                                took,
                                status: reply.status,
                                code: None,
                                serial,
                                der: None,
                            };
                            if reply.status >= 400 {
                                a.code = serde_json::from_str::<serde_json::Value>(&reply.body)
                                    .ok()
                                    .and_then(|v| v["error"]["code"].as_str().map(String::from));
                            } else if what == Op::Issue && reply.status == 201 {
                                let v = reply.json();
                                let serial = v["serial"].as_str().unwrap().to_string();
                                let pem = v["certificate"].as_str().unwrap();
                                a.der = Some(pem_der(pem));
                                mine.push(serial.clone());
                                a.serial = Some(serial);
                            }
                            a
                        }
                    };
                    if answer.status == 0 {
                        // The server is gone: do not spin.
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    answers.lock().unwrap().push(answer);
                }
            }));
        }
        Load {
            stop,
            threads,
            answers,
        }
    }

    /// Answers so far.
    pub fn snapshot(&self) -> Vec<Answer> {
        self.answers.lock().unwrap().clone()
    }

    /// Stops the clients (each finishes its request in flight) and returns every answer.
    pub fn finish(self) -> Vec<Answer> {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            t.join().expect("drill client panicked");
        }
        let answers = self.answers.lock().unwrap();
        answers.clone()
    }
}

/// DER of the first PEM block.
pub fn pem_der(pem: &str) -> Vec<u8> {
    let block = pem_blocks(pem).into_iter().next().expect("a PEM block");
    let b64: String = block
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<Vec<_>>()
        .concat();
    super::http::base64_decode(&b64)
}

/// `/healthz` as (status, hsm word, store word).
pub fn health(s: &Server) -> (u16, String, String) {
    let r = finish(agent().get(&s.url("/healthz")).call());
    let v = r.json();
    (
        r.status,
        v["hsm"].as_str().unwrap_or("").to_string(),
        v["store"].as_str().unwrap_or("").to_string(),
    )
}

/// A Prometheus counter from `/metrics`.
pub fn metric(s: &Server, name: &str) -> f64 {
    let r = finish(agent().get(&s.url("/metrics")).call());
    r.body
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{}", r.body))
        .trim()
        .parse()
        .expect("a number")
}

/// Polls `cond` every 50 ms until it holds or `within` passes; returns the time it took.
pub fn wait_until(within: Duration, mut cond: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if cond() {
            return Some(start.elapsed());
        }
        if start.elapsed() > within {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Certificate rows of a SQLite store: serial -> (status, DER).
pub fn sqlite_certificates(
    db: &Path,
) -> std::collections::HashMap<String, (String, Option<Vec<u8>>)> {
    let conn = super::open_db(db);
    let mut st = conn
        .prepare("SELECT serial, status, cert_der FROM certificates")
        .unwrap();
    let rows = st
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                (r.get::<_, String>(1)?, r.get::<_, Option<Vec<u8>>>(2)?),
            ))
        })
        .unwrap();
    rows.map(|r| r.unwrap()).collect()
}
