//! Shared fixture for the CLI integration tests.
//!
//! One fixture per test binary: a private `SIGNET_HOME` under
//! `target/tmp/test-homes/<binary>-<pid>`, made by `softhsm/setup.sh` (SoftHSM2
//! token, PIN files, `signet.toml`), then `signet ca init` and
//! `signet ca export --out <home>/ca`. Tests of one binary share it (they run as
//! threads of one process), so a test must never change shared state in a way
//! another test could observe: tests that tamper with the store or move the clock
//! work on a copy (`Fixture::store_copy`).
//!
//! The home of the last run of each binary is kept for inspection and removed
//! by the next run.
//!
//! pkilint comes from `$PKILINT_BIN` (set by `./test.sh`); a test that needs it
//! fails, never skips, when it is missing.

#![allow(dead_code)]

pub mod drill;
pub mod http;

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Command-line arguments of mixed types (`&str`, `String`, `&Path`, `&PathBuf`)
/// as an array of `OsString`.
#[macro_export]
macro_rules! args {
    ($($a:expr),* $(,)?) => { [$(::std::ffi::OsString::from($a)),*] };
}

/// `[issuance] timeout_secs` in the generated config.
pub const ISSUANCE_TIMEOUT_SECS: u64 = 300;

pub const SIGNET_BIN: &str = env!("CARGO_BIN_EXE_signet");
const REPO: &str = env!("CARGO_MANIFEST_DIR");
const TARGET_TMP: &str = env!("CARGO_TARGET_TMPDIR");

// ---------------------------------------------------------------------------------
// Command output

/// What a finished child process said.
pub struct Out {
    pub cmd: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// Everything about the run, for assertion messages.
    pub fn describe(&self) -> String {
        format!(
            "command: {}\nstatus: {}\n--- stdout ---\n{}\n--- stderr ---\n{}\n---",
            self.cmd, self.status, self.stdout, self.stderr
        )
    }

    /// The command succeeded and did not panic.
    #[track_caller]
    pub fn assert_ok(&self) -> &Self {
        assert!(self.success(), "expected success\n{}", self.describe());
        self.assert_no_panic();
        self
    }

    /// The command failed the way the CLI contract says a refusal looks: non-zero
    /// exit, a reason on stderr, no panic, no certificate on stdout.
    #[track_caller]
    pub fn assert_refused(&self) -> &Self {
        assert!(
            !self.success(),
            "expected a non-zero exit\n{}",
            self.describe()
        );
        assert!(
            self.status.code().is_some(),
            "killed by a signal instead of exiting\n{}",
            self.describe()
        );
        assert!(
            !self.stderr.trim().is_empty(),
            "refused without a reason on stderr\n{}",
            self.describe()
        );
        assert!(
            !self.stdout.contains("BEGIN CERTIFICATE"),
            "refused but printed a certificate\n{}",
            self.describe()
        );
        self.assert_no_panic();
        self
    }

    #[track_caller]
    pub fn assert_no_panic(&self) -> &Self {
        assert!(
            !self.stderr.contains("panicked") && !self.stdout.contains("panicked"),
            "the command panicked\n{}",
            self.describe()
        );
        self
    }

    /// stderr mentions `needle` (case-insensitive).
    #[track_caller]
    pub fn assert_stderr_mentions(&self, needle: &str) -> &Self {
        assert!(
            self.stderr.to_lowercase().contains(&needle.to_lowercase()),
            "expected stderr to mention {needle:?}\n{}",
            self.describe()
        );
        self
    }

    /// The numbers N of every `event N` on stderr.
    pub fn named_events(&self) -> Vec<u64> {
        let mut found = Vec::new();
        let lower = self.stderr.to_lowercase();
        let mut rest = lower.as_str();
        while let Some(i) = rest.find("event") {
            rest = &rest[i + "event".len()..];
            let after = rest.trim_start_matches([' ', '#', '=', ':']);
            let digits: String = after.chars().take_while(|c| c.is_ascii_digit()).collect();
            if let Ok(n) = digits.parse() {
                found.push(n);
            }
        }
        found
    }
}

/// Runs a command to completion with stdin closed.
pub fn run(mut cmd: Command) -> Out {
    let desc = describe_command(&cmd);
    cmd.stdin(Stdio::null());
    let output = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot start `{desc}`: {e}"));
    Out {
        cmd: desc,
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn describe_command(cmd: &Command) -> String {
    let mut s = String::new();
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            let _ = write!(s, "{}={} ", k.to_string_lossy(), v.to_string_lossy());
        }
    }
    s.push_str(&cmd.get_program().to_string_lossy());
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&shell_quote(a));
    }
    s
}

fn shell_quote(a: &OsStr) -> String {
    let a = a.to_string_lossy();
    if !a.is_empty()
        && a.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@+%".contains(c))
    {
        a.into_owned()
    } else {
        format!("'{}'", a.replace('\'', "'\\''"))
    }
}

// ---------------------------------------------------------------------------------
// OpenSSL and pkilint

pub fn openssl<S: AsRef<OsStr>>(args: &[S]) -> Out {
    let mut cmd = Command::new("openssl");
    cmd.args(args);
    run(cmd)
}

/// Runs a pkilint tool (`lint_pkix_cert`, `lint_crl`, ...) from `$PKILINT_BIN`.
/// Fails the test when pkilint is not there: run the suite with `./test.sh`.
pub fn pkilint<S: AsRef<OsStr>>(tool: &str, args: &[S]) -> Out {
    let dir = std::env::var_os("PKILINT_BIN").unwrap_or_else(|| {
        panic!(
            "PKILINT_BIN is not set: pkilint is needed for this test. \
             Run the suite with ./test.sh, which installs pkilint into \
             target/tools/venv and sets PKILINT_BIN."
        )
    });
    let exe = Path::new(&dir).join(tool);
    assert!(
        exe.is_file(),
        "{} does not exist (PKILINT_BIN={}): run the suite with ./test.sh, which \
         installs pkilint into target/tools/venv",
        exe.display(),
        Path::new(&dir).display()
    );
    let mut cmd = Command::new(exe);
    cmd.args(args);
    run(cmd)
}

/// Asserts that pkilint reported nothing at ERROR or above (its exit code is the
/// number of findings).
#[track_caller]
pub fn assert_lint_clean(out: &Out) {
    assert!(
        out.success(),
        "pkilint reported findings at ERROR or above\n{}",
        out.describe()
    );
}

// ---------------------------------------------------------------------------------
// PostgreSQL

/// Environment variable: a `postgres://` URL of a server where the suite may create
/// databases (test.sh sets it from scripts/local-postgres.sh). When set, each test binary's
/// fixture keeps its store in a fresh database there instead of a SQLite file.
pub const TEST_POSTGRES_ENV: &str = "SIGNET_TEST_POSTGRES";

pub fn test_postgres() -> Option<String> {
    std::env::var(TEST_POSTGRES_ENV)
        .ok()
        .filter(|v| !v.is_empty())
}

/// The same server URL with another database name.
pub fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let server = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    format!("{server}/{db}{query}")
}

/// Drops databases of earlier runs whose process is gone, then (re)creates
/// `signet_test_<binary>_<pid>` and returns its URL.
pub fn fresh_database(server: &str, binary: &str) -> Result<String, String> {
    let mut admin = postgres::Client::connect(server, postgres::NoTls)
        .map_err(|e| format!("cannot connect to {TEST_POSTGRES_ENV}: {e}"))?;
    let prefix = format!("signet_test_{}_", binary.replace('-', "_"));
    let rows = admin
        .query(
            "SELECT datname FROM pg_database WHERE starts_with(datname, $1)",
            &[&prefix],
        )
        .map_err(|e| e.to_string())?;
    for row in rows {
        let name: String = row.get(0);
        let alive = name
            .strip_prefix(&prefix)
            .and_then(|p| p.parse::<u32>().ok())
            .is_some_and(|pid| {
                pid != std::process::id() && Path::new(&format!("/proc/{pid}")).exists()
            });
        if !alive {
            admin
                .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                .map_err(|e| e.to_string())?;
        }
    }
    let name = format!("{prefix}{}", std::process::id());
    admin
        .batch_execute(&format!("CREATE DATABASE \"{name}\""))
        .map_err(|e| format!("CREATE DATABASE {name}: {e}"))?;
    Ok(with_database(server, &name))
}

/// A PostgreSQL server of the test's own (initdb in a temporary folder), which the test
/// may stop and start; stopped on drop. Runs as the `postgres` user when the test runs as
/// root (PostgreSQL refuses root).
pub struct PrivatePostgres {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
    run_as_postgres: bool,
}

impl PrivatePostgres {
    pub fn start_new(name: &str) -> PrivatePostgres {
        let bin = fs::read_dir("/usr/lib/postgresql")
            .expect(
                "PostgreSQL server binaries in /usr/lib/postgresql (apt-get install postgresql)",
            )
            .flatten()
            .map(|e| e.path().join("bin"))
            .filter(|b| b.join("initdb").is_file())
            .max()
            .expect("initdb under /usr/lib/postgresql/*/bin");
        let dir = std::env::temp_dir().join(format!("signet-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("sock")).unwrap();
        let run_as_postgres = run({
            let mut c = Command::new("id");
            c.arg("-u");
            c
        })
        .stdout
        .trim()
            == "0";
        if run_as_postgres {
            let out = run({
                let mut c = Command::new("chown");
                c.args(["-R", "postgres:postgres"]).arg(&dir);
                c
            });
            assert!(out.success(), "{}", out.describe());
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let pg = PrivatePostgres {
            dir,
            bin,
            port,
            run_as_postgres,
        };
        let data = pg.dir.join("data");
        let out = pg.pg_command(
            "initdb",
            &args![
                "-D",
                &data,
                "-U",
                "signet",
                "-A",
                "trust",
                "--no-sync",
                "-E",
                "UTF8"
            ],
        );
        assert!(out.success(), "initdb failed\n{}", out.describe());
        pg.start();
        pg
    }

    fn pg_command(&self, tool: &str, a: &[std::ffi::OsString]) -> Out {
        let exe = self.bin.join(tool);
        let mut cmd = if self.run_as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        };
        cmd.args(a).current_dir(&self.dir);
        run(cmd)
    }

    pub fn start(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses='' -c fsync=off",
            self.port,
            self.dir.join("sock").display()
        );
        let out = self.pg_command(
            "pg_ctl",
            &args![
                "-D",
                self.dir.join("data"),
                "-o",
                options,
                "-l",
                self.dir.join("log"),
                "-w",
                "start"
            ],
        );
        assert!(out.success(), "pg_ctl start failed\n{}", out.describe());
    }

    /// Stops at once, as a crash or a lost database host would.
    pub fn stop(&self) {
        let out = self.pg_command(
            "pg_ctl",
            &args!["-D", self.dir.join("data"), "-m", "immediate", "-w", "stop"],
        );
        assert!(out.success(), "pg_ctl stop failed\n{}", out.describe());
    }

    /// The server's `postgres` database, over its Unix socket.
    pub fn url(&self) -> String {
        let sock = self.dir.join("sock").to_string_lossy().replace('/', "%2F");
        format!("postgres://signet@{sock}:{}/postgres", self.port)
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = self.pg_command(
            "pg_ctl",
            &args!["-D", self.dir.join("data"), "-m", "immediate", "stop"],
        );
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A config text whose `[store]` is the PostgreSQL database `url` instead of a SQLite path.
pub fn use_store_url(config_text: &str, url: &str) -> String {
    let mut out = String::new();
    let mut section = String::new();
    for line in config_text.lines() {
        let t = line.trim();
        if t.starts_with('[') && t.ends_with(']') {
            section = t[1..t.len() - 1].trim().to_string();
        }
        if section == "store" && t.split_once('=').is_some_and(|(k, _)| k.trim() == "path") {
            out.push_str(&format!("url = {}\n", toml_str(url)));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

// ---------------------------------------------------------------------------------
// Small helpers

pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock before 1970")
        .as_secs()
}

/// A CRL (PEM) of the CA (ca_cert, ca_key) listing the `revoked` certificates, made by `openssl ca`.
pub fn openssl_crl(f: &Fixture, ca_cert: &Path, ca_key: &Path, revoked: &[&Path]) -> PathBuf {
    openssl_crl_with(f, ca_cert, ca_key, revoked, "")
}

/// `openssl_crl` with CRL extensions: `crl_ext` is the body of an OpenSSL config section
/// (`issuingDistributionPoint = critical, @idp` and the sections it names).
pub fn openssl_crl_with(
    f: &Fixture,
    ca_cert: &Path,
    ca_key: &Path,
    revoked: &[&Path],
    crl_ext: &str,
) -> PathBuf {
    openssl_gencrl(f, ca_cert, ca_key, revoked, &[], crl_ext, &[])
}

/// `openssl_crl` listing the `held` certificates on hold (reasonCode certificateHold).
pub fn openssl_crl_on_hold(f: &Fixture, ca_cert: &Path, ca_key: &Path, held: &[&Path]) -> PathBuf {
    let hold = ["-crl_hold", "holdInstructionReject"];
    openssl_gencrl(f, ca_cert, ca_key, held, &hold, "", &[])
}

/// An empty `openssl_crl` whose thisUpdate (lastUpdate) is `this_update` (`YYYYMMDDHHMMSSZ`)
/// and nextUpdate `next_update`.
pub fn openssl_crl_dated(
    f: &Fixture,
    ca_cert: &Path,
    ca_key: &Path,
    this_update: &str,
    next_update: &str,
) -> PathBuf {
    openssl_gencrl(
        f,
        ca_cert,
        ca_key,
        &[],
        &[],
        "",
        &[
            "-crl_lastupdate",
            this_update,
            "-crl_nextupdate",
            next_update,
        ],
    )
}

fn openssl_gencrl(
    f: &Fixture,
    ca_cert: &Path,
    ca_key: &Path,
    revoked: &[&Path],
    revoke_args: &[&str],
    crl_ext: &str,
    gencrl_args: &[&str],
) -> PathBuf {
    let dir = f.path("crl-ca");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("index.txt"), "").unwrap();
    fs::write(dir.join("crlnumber"), "1000\n").unwrap();
    let cnf = dir.join("ca.cnf");
    fs::write(
        &cnf,
        format!(
            "[ca]\ndefault_ca = d\n[d]\ndatabase = {}\ncrlnumber = {}\ndefault_md = sha256\ndefault_crl_days = 7\n[crl_ext]\n{crl_ext}\n",
            dir.join("index.txt").display(),
            dir.join("crlnumber").display()
        ),
    )
    .unwrap();
    for cert in revoked {
        let mut revoke =
            args!["ca", "-config", &cnf, "-keyfile", ca_key, "-cert", ca_cert, "-revoke", cert]
                .to_vec();
        revoke.extend(revoke_args.iter().map(std::ffi::OsString::from));
        openssl(&revoke).assert_ok();
    }
    let crl = dir.join("crl.pem");
    let mut gencrl =
        args!["ca", "-config", &cnf, "-keyfile", ca_key, "-cert", ca_cert, "-gencrl", "-out", &crl]
            .to_vec();
    if !crl_ext.is_empty() {
        gencrl.extend(args!["-crlexts", "crl_ext"]);
    }
    gencrl.extend(gencrl_args.iter().map(std::ffi::OsString::from));
    openssl(&gencrl).assert_ok();
    crl
}

/// A serial as upper-case hex without leading zeros or separators, so that
/// `signet`'s, OpenSSL's and the database's spellings compare equal.
pub fn norm_serial(s: &str) -> String {
    let hex: String = s
        .trim()
        .trim_start_matches("0x")
        .chars()
        .filter(|c| c.is_ascii_hexdigit())
        .collect::<String>()
        .to_uppercase();
    let t = hex.trim_start_matches('0');
    if t.is_empty() {
        "0".into()
    } else {
        t.into()
    }
}

/// The PEM blocks of a file's text, each with its BEGIN/END lines.
pub fn pem_blocks(text: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut cur: Option<String> = None;
    for line in text.lines() {
        if line.starts_with("-----BEGIN ") {
            cur = Some(String::new());
        }
        if let Some(c) = cur.as_mut() {
            c.push_str(line);
            c.push('\n');
        }
        if line.starts_with("-----END ") {
            if let Some(c) = cur.take() {
                blocks.push(c);
            }
        }
    }
    blocks
}

/// `serial <hex>` from a `signet issue` stderr.
pub fn serial_from_stderr(out: &Out) -> Option<String> {
    out.stderr.lines().find_map(|l| {
        let l = l.trim();
        let rest = l.strip_prefix("serial ")?;
        let hex = rest.trim();
        (!hex.is_empty() && hex.chars().all(|c| c.is_ascii_hexdigit())).then(|| hex.to_string())
    })
}

/// Drops the triggers that guard the audit table, as an attacker with write access to the
/// database would before changing it.
pub fn drop_audit_guards(conn: &rusqlite::Connection) {
    let triggers: Vec<String> = conn
        .prepare(
            "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'audit_events'",
        )
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    for t in triggers {
        conn.execute_batch(&format!("DROP TRIGGER \"{}\"", t.replace('"', "\"\"")))
            .unwrap();
    }
}

/// Reads a SQLite database with a busy timeout (signet may be writing to it).
pub fn open_db(path: &Path) -> rusqlite::Connection {
    let conn =
        rusqlite::Connection::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .expect("busy_timeout");
    conn
}

/// `certificates.status` of a serial (`pending`, `issued`, `void`, ...).
pub fn cert_status(db: &Path, serial: &str) -> Option<String> {
    let conn = open_db(db);
    let want = norm_serial(serial);
    let mut stmt = conn
        .prepare("SELECT serial, status FROM certificates")
        .expect("certificates table with serial and status columns");
    let rows = stmt
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
        .expect("query certificates");
    for row in rows {
        let (s, status) = row.expect("row");
        if norm_serial(&s) == want {
            return Some(status);
        }
    }
    None
}

#[derive(Clone, Copy, Debug)]
pub enum KeyKind {
    P256,
    P384,
    Rsa1024,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    Customer,
    Teller,
}

impl Profile {
    pub fn name(self) -> &'static str {
        match self {
            Profile::Customer => "customer",
            Profile::Teller => "teller",
        }
    }
}

/// A certificate from `signet issue`.
pub struct Issued {
    pub serial: String,
    /// The leaf alone (PEM).
    pub leaf: PathBuf,
    /// What `--out` received: leaf then issuing CA (PEM).
    pub chain: PathBuf,
    pub out: Out,
}

/// `openssl crl -text` of a CRL, parsed just enough for the tests.
pub struct CrlText {
    pub text: String,
    pub number: Option<u128>,
    /// (normalized serial, the text of its entry: date and extensions)
    pub entries: Vec<(String, String)>,
}

impl CrlText {
    pub fn parse(text: &str) -> CrlText {
        let lines: Vec<&str> = text.lines().collect();
        let mut number = None;
        for (i, l) in lines.iter().enumerate() {
            if l.contains("X509v3 CRL Number") {
                if let Some(v) = lines.get(i + 1) {
                    let v = v.trim();
                    number = if let Some(h) = v.strip_prefix("0x") {
                        u128::from_str_radix(h, 16).ok()
                    } else {
                        v.parse().ok()
                    };
                }
            }
        }
        let mut entries: Vec<(String, String)> = Vec::new();
        let mut in_revoked = false;
        for l in &lines {
            let t = l.trim();
            if t.starts_with("Revoked Certificates") {
                in_revoked = true;
                continue;
            }
            if !in_revoked {
                continue;
            }
            if t.starts_with("Signature Algorithm") {
                break;
            }
            if let Some(s) = t.strip_prefix("Serial Number:") {
                entries.push((norm_serial(s), String::new()));
            } else if let Some((_, body)) = entries.last_mut() {
                body.push_str(t);
                body.push('\n');
            }
        }
        CrlText {
            text: text.to_string(),
            number,
            entries,
        }
    }

    pub fn entry(&self, serial: &str) -> Option<&str> {
        let s = norm_serial(serial);
        self.entries
            .iter()
            .find(|(e, _)| *e == s)
            .map(|(_, body)| body.as_str())
    }
}

/// Replaces `key = ...` in `[section]` of a TOML text; `value` is TOML (quote
/// strings with `toml_str`). Panics when the key is not there.
pub fn set_toml_key(text: &str, section: &str, key: &str, value: &str) -> String {
    let mut out = String::new();
    let mut current = String::new();
    let mut done = false;
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('[') && t.ends_with(']') {
            current = t[1..t.len() - 1].trim().to_string();
        }
        let is_key = current == section
            && t.split_once('=')
                .map(|(k, _)| k.trim() == key)
                .unwrap_or(false);
        if is_key {
            let _ = writeln!(out, "{key} = {value}");
            done = true;
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    assert!(done, "no `{key}` in [{section}] of the config:\n{text}");
    out
}

pub fn toml_str(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

// ---------------------------------------------------------------------------------
// The fixture

pub struct Fixture {
    pub home: PathBuf,
    pub config: PathBuf,
    pub softhsm2_conf: PathBuf,
    pub db: PathBuf,
    pub checkpoints: PathBuf,
    pub ca_dir: PathBuf,
    pub token_label: String,
    /// The PostgreSQL database of this binary (`SIGNET_TEST_POSTGRES` set), else `None`:
    /// the store is the SQLite file `db`.
    pub store_url: Option<String>,
    work: PathBuf,
    counter: AtomicUsize,
}

static FIXTURE: OnceLock<Result<Fixture, String>> = OnceLock::new();

/// Environment variable: `postgres` keeps the store of every fixture in PostgreSQL
/// (test.sh runs the store, API and verification suites once more that way).
pub const FIXTURE_STORE_ENV: &str = "SIGNET_TEST_FIXTURE_STORE";

/// The shared fixture of this test binary (made on first use): its store is SQLite, or
/// PostgreSQL when `SIGNET_TEST_FIXTURE_STORE=postgres`.
pub fn fixture() -> &'static Fixture {
    let on_postgres = std::env::var(FIXTURE_STORE_ENV).is_ok_and(|v| v == "postgres");
    match FIXTURE.get_or_init(|| Fixture::create(on_postgres)) {
        Ok(f) => f,
        Err(e) => panic!("fixture setup failed:\n{e}"),
    }
}

/// The shared fixture of a test binary that needs PostgreSQL whatever the run (several
/// processes sharing one database). Fails when `SIGNET_TEST_POSTGRES` is not set.
pub fn postgres_fixture() -> &'static Fixture {
    match FIXTURE.get_or_init(|| Fixture::create(true)) {
        Ok(f) => f,
        Err(e) => panic!("fixture setup failed:\n{e}"),
    }
}

/// The shared fixture of a test binary, its store in a database of the server at `server`
/// (a private PostgreSQL the binary may stop and start).
pub fn fixture_on_server(server: &str) -> &'static Fixture {
    match FIXTURE.get_or_init(|| Fixture::create_with(Some(server.to_string()))) {
        Ok(f) => f,
        Err(e) => panic!("fixture setup failed:\n{e}"),
    }
}

fn binary_name() -> String {
    let exe = std::env::current_exe().expect("current_exe");
    let stem = exe
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "tests".into());
    // cargo names test binaries `<name>-<hash>`
    match stem.rsplit_once('-') {
        Some((name, hash)) if hash.chars().all(|c| c.is_ascii_hexdigit()) => name.to_string(),
        _ => stem,
    }
}

/// Removes the homes of earlier runs of this binary whose process is gone.
fn remove_stale_homes(parent: &Path, binary: &str) {
    let Ok(dir) = fs::read_dir(parent) else {
        return;
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(binary)
            .and_then(|r| r.strip_prefix('-'))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

impl Fixture {
    fn create(on_postgres: bool) -> Result<Fixture, String> {
        let server = if on_postgres {
            Some(test_postgres().ok_or_else(|| {
                format!(
                    "this fixture keeps its store in PostgreSQL but {TEST_POSTGRES_ENV} is not \
                     set: run the suite with ./test.sh, which starts a local PostgreSQL"
                )
            })?)
        } else {
            None
        };
        Self::create_with(server)
    }

    /// A fixture whose store is a fresh database on `postgres_server`, or SQLite.
    fn create_with(postgres_server: Option<String>) -> Result<Fixture, String> {
        let binary = binary_name();
        let parent = Path::new(TARGET_TMP).join("test-homes");
        remove_stale_homes(&parent, &binary);
        let home = parent.join(format!("{binary}-{}", std::process::id()));
        if home.exists() {
            fs::remove_dir_all(&home).map_err(|e| format!("remove {}: {e}", home.display()))?;
        }
        fs::create_dir_all(&home).map_err(|e| format!("create {}: {e}", home.display()))?;
        let token_label = format!("signet-test-{binary}");

        let mut setup = Command::new("bash");
        setup
            .arg(Path::new(REPO).join("softhsm/setup.sh"))
            .current_dir(REPO)
            .env("SIGNET_HOME", &home)
            .env("SIGNET_BIN", SIGNET_BIN)
            .env("SIGNET_TOKEN_LABEL", &token_label)
            .env_remove("SOFTHSM2_CONF")
            .env_remove("SIGNET_FAKE_NOW")
            .env_remove("SIGNET_FAULT");
        let out = run(setup);
        if !out.success() {
            return Err(format!("softhsm/setup.sh failed\n{}", out.describe()));
        }

        let config = home.join("signet.toml");
        let store_url = match postgres_server {
            Some(server) => {
                let url = fresh_database(&server, &binary)?;
                let text = fs::read_to_string(&config).map_err(|e| e.to_string())?;
                fs::write(&config, use_store_url(&text, &url)).map_err(|e| e.to_string())?;
                Some(url)
            }
            None => None,
        };
        let f = Fixture {
            config,
            store_url,
            softhsm2_conf: home.join("softhsm2.conf"),
            db: home.join("signet.db"),
            checkpoints: home.join("audit-checkpoints.jsonl"),
            ca_dir: home.join("ca"),
            work: home.join("work"),
            token_label,
            home,
            counter: AtomicUsize::new(0),
        };
        fs::create_dir_all(&f.work).map_err(|e| e.to_string())?;

        let out = f.signet(&["ca", "init"]);
        if !out.success() || out.stderr.contains("panicked") {
            return Err(format!("signet ca init failed\n{}", out.describe()));
        }
        let ca_dir = f.ca_dir.to_string_lossy().into_owned();
        let out = f.signet(&["ca", "export", "--out", &ca_dir]);
        if !out.success() {
            return Err(format!("signet ca export failed\n{}", out.describe()));
        }
        for name in ["root.pem", "customer-ca.pem", "teller-ca.pem"] {
            if !f.ca_dir.join(name).is_file() {
                return Err(format!(
                    "signet ca export did not write {}\n{}",
                    f.ca_dir.join(name).display(),
                    out.describe()
                ));
            }
        }
        Ok(f)
    }

    /// The fixture's store opened through the library, SQLite or PostgreSQL alike.
    pub fn open_store(&self) -> std::sync::Arc<dyn signet::store::Store> {
        let config = signet::config::Config::load(&self.config).expect("fixture config");
        signet::app::open_store(&config.store).expect("open the fixture's store")
    }

    /// A fresh path in the fixture's work directory, named after `hint`.
    pub fn path(&self, hint: &str) -> PathBuf {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        self.work.join(format!("{n:04}-{hint}"))
    }

    pub fn ca(&self, name: &str) -> PathBuf {
        self.ca_dir.join(name)
    }

    /// root.pem + customer-ca.pem (or teller-ca.pem) in one file, for `-CAfile`.
    pub fn bundle(&self, issuing: &str) -> PathBuf {
        let p = self.path(&format!("bundle-{issuing}.pem"));
        let mut text = fs::read_to_string(self.ca("root.pem")).expect("root.pem");
        text.push_str(&fs::read_to_string(self.ca(issuing)).expect("issuing CA pem"));
        fs::write(&p, text).expect("write bundle");
        p
    }

    /// A `signet` command with the fixture's config and environment, not yet run.
    pub fn command(&self, config: &Path) -> Command {
        let mut cmd = Command::new(SIGNET_BIN);
        cmd.current_dir(&self.home)
            .env("SOFTHSM2_CONF", &self.softhsm2_conf)
            .env_remove("SIGNET_FAKE_NOW")
            .env_remove("SIGNET_FAULT")
            .env_remove("SIGNET_STORE_URL")
            .arg("--config")
            .arg(config);
        cmd
    }

    /// Runs `signet --config <fixture config> args...`.
    pub fn signet<S: AsRef<OsStr>>(&self, args: &[S]) -> Out {
        self.signet_with(&self.config, &[], args)
    }

    /// Runs `signet` with another config and extra environment variables.
    pub fn signet_with<S: AsRef<OsStr>>(
        &self,
        config: &Path,
        env: &[(&str, String)],
        args: &[S],
    ) -> Out {
        let mut cmd = self.command(config);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.args(args);
        run(cmd)
    }

    /// A fresh key pair and CSR made by OpenSSL (subject `/CN=<hint>`).
    pub fn csr(&self, kind: KeyKind) -> PathBuf {
        self.key_and_csr(kind).1
    }

    /// A fresh key pair (PEM, unencrypted) and its CSR, made by OpenSSL.
    pub fn key_and_csr(&self, kind: KeyKind) -> (PathBuf, PathBuf) {
        let key = self.path(&format!("{kind:?}.key"));
        let csr = self.path(&format!("{kind:?}.csr"));
        let newkey: &[&str] = match kind {
            KeyKind::P256 => &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
            KeyKind::P384 => &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384"],
            KeyKind::Rsa1024 => &["-newkey", "rsa:1024"],
        };
        let mut args = args!["req", "-new"].to_vec();
        args.extend(newkey.iter().map(std::ffi::OsString::from));
        args.extend(args![
            "-nodes",
            "-subj",
            "/CN=test applicant",
            "-keyout",
            &key,
            "-out",
            &csr
        ]);
        openssl(&args).assert_ok();
        (key, csr)
    }

    /// `openssl verify -x509_strict` of a certificate (PEM) issued by the customer CA, under
    /// the fixture's root.
    pub fn assert_customer_certificate_verifies(&self, cert: &Path) {
        let out = openssl(&args![
            "verify",
            "-x509_strict",
            "-CAfile",
            self.ca("root.pem"),
            "-untrusted",
            self.ca("customer-ca.pem"),
            cert
        ]);
        out.assert_ok();
        assert!(out.stdout.contains(": OK"), "{}", out.describe());
    }

    /// `openssl cms -verify` of a DER receipt (or any CMS) against the fixture's root.
    pub fn openssl_cms_verify(&self, cms: &Path) -> Out {
        openssl(&args![
            "cms",
            "-verify",
            "-inform",
            "DER",
            "-in",
            cms,
            "-CAfile",
            self.ca("root.pem")
        ])
    }

    /// `signet issue` with a fresh P-256 CSR; asserts success.
    pub fn issue(&self, profile: Profile, subject: &str) -> Issued {
        let csr = self.csr(KeyKind::P256);
        self.issue_csr(profile, &csr, subject)
    }

    pub fn issue_csr(&self, profile: Profile, csr: &Path, subject: &str) -> Issued {
        self.issue_with(&self.config, profile.name(), csr, subject, &[])
    }

    /// `signet --config <config> issue --profile <profile> ... [extra]`; asserts success and
    /// returns the serial, the leaf alone and the chain.
    pub fn issue_with(
        &self,
        config: &Path,
        profile: &str,
        csr: &Path,
        subject: &str,
        extra: &[&str],
    ) -> Issued {
        let chain = self.path(&format!("{profile}-chain.pem"));
        let mut a = args![
            "issue",
            "--profile",
            profile,
            "--csr",
            csr,
            "--subject",
            subject,
            "--out",
            &chain
        ]
        .to_vec();
        a.extend(extra.iter().map(std::ffi::OsString::from));
        let out = self.signet_with(config, &[], &a);
        out.assert_ok();
        let serial = serial_from_stderr(&out)
            .unwrap_or_else(|| panic!("no `serial <hex>` line on stderr\n{}", out.describe()));
        let text = fs::read_to_string(&chain)
            .unwrap_or_else(|e| panic!("--out {}: {e}\n{}", chain.display(), out.describe()));
        let blocks = pem_blocks(&text);
        assert!(
            !blocks.is_empty() && blocks[0].contains("BEGIN CERTIFICATE"),
            "--out file has no certificate:\n{text}"
        );
        let leaf = self.path(&format!("{profile}-leaf.pem"));
        fs::write(&leaf, &blocks[0]).expect("write leaf");
        Issued {
            serial,
            leaf,
            chain,
            out,
        }
    }

    pub fn issue_customer(&self) -> Issued {
        self.issue(Profile::Customer, "CN=张三,serialNumber=110101199003071234")
    }

    pub fn issue_teller(&self) -> Issued {
        self.issue(
            Profile::Teller,
            "CN=李四,serialNumber=E0012345,OU=Beijing Haidian Branch",
        )
    }

    /// `signet crl --issuer <issuer> --out F` with the given config; asserts success.
    pub fn crl_with(&self, config: &Path, env: &[(&str, String)], issuer: &str) -> PathBuf {
        let f = self.path(&format!("{issuer}.crl"));
        let out = self.signet_with(config, env, &args!["crl", "--issuer", issuer, "--out", &f]);
        out.assert_ok();
        assert!(f.is_file(), "no CRL written\n{}", out.describe());
        f
    }

    pub fn crl(&self, issuer: &str) -> PathBuf {
        self.crl_with(&self.config, &[], issuer)
    }

    /// Parses a DER CRL with `openssl crl -text`, verifying its signature
    /// against `ca_file`.
    pub fn crl_text(&self, crl: &Path, ca_file: &Path) -> CrlText {
        let out = openssl(&args![
            "crl", "-inform", "DER", "-in", crl, "-CAfile", ca_file, "-verify", "-noout", "-text"
        ]);
        out.assert_ok();
        assert!(
            out.stderr.contains("verify OK") || out.stdout.contains("verify OK"),
            "openssl did not verify the CRL\n{}",
            out.describe()
        );
        CrlText::parse(&out.stdout)
    }

    /// The issuing CA file (for `-CAfile` bundles) of a `--issuer` name.
    pub fn issuer_bundle(&self, issuer: &str) -> PathBuf {
        match issuer {
            "root" => self.ca("root.pem"),
            "customer" => self.bundle("customer-ca.pem"),
            "teller" => self.bundle("teller-ca.pem"),
            other => panic!("unknown issuer {other}"),
        }
    }

    /// A copy of the config with some keys changed; returns its path.
    pub fn config_variant(&self, name: &str, edits: &[(&str, &str, String)]) -> PathBuf {
        let mut text = fs::read_to_string(&self.config).expect("read signet.toml");
        for (section, key, value) in edits {
            text = set_toml_key(&text, section, key, value);
        }
        let p = self.path(&format!("{name}.toml"));
        fs::write(&p, text).expect("write config variant");
        p
    }

    /// A consistent copy of the store and the audit checkpoint file, and a config
    /// that points at them (same token). For tests that tamper with the store or
    /// move the clock without disturbing the tests that share the fixture.
    /// Adds a bank in the home of `config` and returns the bearer token of a new RA officer
    /// of it.
    pub fn bank_officer(&self, config: &Path, bank: &str) -> String {
        self.signet_with(config, &[], &["tenant", "add", bank])
            .assert_ok();
        let out = self.signet_with(
            config,
            &[],
            &[
                "credential",
                "add",
                "--tenant",
                bank,
                "--role",
                "ra-officer",
            ],
        );
        out.assert_ok();
        out.stdout.trim().to_string()
    }

    pub fn store_copy(&self, name: &str, extra: &[(&str, &str, String)]) -> StoreCopy {
        let dir = self.path(name);
        fs::create_dir_all(&dir).expect("mkdir store copy");
        let db = dir.join("signet.db");
        let checkpoints = dir.join("audit-checkpoints.jsonl");
        // Checkpoints first: the database copy is then at least as new as the
        // last checkpoint, as it is in a live store.
        if self.checkpoints.exists() {
            fs::copy(&self.checkpoints, &checkpoints).expect("copy checkpoint file");
        }
        let conn = open_db(&self.db);
        conn.execute("VACUUM INTO ?1", [db.to_string_lossy().as_ref()])
            .expect("VACUUM INTO (copy of the store)");
        drop(conn);
        let mut edits: Vec<(&str, &str, String)> = vec![
            ("store", "path", toml_str(&db.to_string_lossy())),
            (
                "audit",
                "checkpoint_file",
                toml_str(&checkpoints.to_string_lossy()),
            ),
        ];
        edits.extend(extra.iter().cloned());
        let config = self.config_variant(&format!("{name}-config"), &edits);
        StoreCopy {
            config,
            db,
            checkpoints,
        }
    }
}

pub struct StoreCopy {
    pub config: PathBuf,
    pub db: PathBuf,
    pub checkpoints: PathBuf,
}

// ---------------------------------------------------------------------------------
// Dates

/// (year, month 1-12, day 1-31, hour, minute, second) of a Unix time, UTC (years to 9999).
pub fn civil_utc(unix: u64) -> (i64, u32, u32, u32, u32, u32) {
    let t = der::DateTime::from_unix_duration(Duration::from_secs(unix))
        .expect("a time before the year 10000");
    (
        t.year().into(),
        t.month().into(),
        t.day().into(),
        t.hour().into(),
        t.minutes().into(),
        t.seconds().into(),
    )
}

/// `2026-11-01T00:00:00Z`
pub fn rfc3339(unix: u64) -> String {
    let (y, mo, d, h, mi, s) = civil_utc(unix);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
}

/// How `openssl ... -text` prints a time: `Nov  1 00:00:00 2026 GMT`.
pub fn openssl_time(unix: u64) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (y, mo, d, h, mi, s) = civil_utc(unix);
    format!(
        "{} {d:>2} {h:02}:{mi:02}:{s:02} {y} GMT",
        MONTHS[mo as usize - 1]
    )
}
