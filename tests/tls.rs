//! HTTPS and client certificates: `signet serve` with a `[tls]` section, its server
//! certificate issued by `signet ca upgrade`, driven by `curl` and `openssl s_client`; and a
//! sweep of the failure paths that looks for secrets in everything the service says.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use common::http::{base64_std, Server};
use common::*;
use serde_json::{json, Value};

const BANK: &str = "TLS Bank";

/// A client key and certificate (PEM files).
struct Client {
    cert: PathBuf,
    key: PathBuf,
}

struct Setup {
    /// The config with `[tls]` (and the client mappings).
    config: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    /// `signet ca upgrade` that issued the server certificate.
    upgrade: Out,
    /// Mapped by subject DN to (BANK, ra-officer).
    officer: Client,
    /// Verifies, but no mapping names it.
    unmapped: Client,
    /// Same subject as `officer`, from a CA Signet does not trust.
    rogue: Client,
    /// Mapped by fingerprint to (BANK, auditor).
    auditor: Client,
    /// The client CA the config trusts (certificate, key).
    client_ca: (PathBuf, PathBuf),
    /// A bearer token of BANK's ra-officer.
    token: String,
}

fn ext_file(f: &Fixture, text: &str) -> PathBuf {
    let p = f.path("ext.cnf");
    std::fs::write(&p, text).unwrap();
    p
}

/// A self-signed P-256 CA: (certificate, key).
fn make_ca(f: &Fixture, cn: &str) -> (PathBuf, PathBuf) {
    make_ca_with(
        f,
        cn,
        &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
    )
}

/// A self-signed CA with the key `key_args` make: (certificate, key).
fn make_ca_with(f: &Fixture, cn: &str, key_args: &[&str]) -> (PathBuf, PathBuf) {
    let cert = f.path("client-ca.pem");
    let key = f.path("client-ca.key");
    let mut req = args!["req", "-x509", "-new"].to_vec();
    req.extend(key_args.iter().map(std::ffi::OsString::from));
    req.extend(args![
        "-nodes",
        "-keyout",
        &key,
        "-out",
        &cert,
        "-subj",
        format!("/CN={cn}/O={BANK}"),
        "-days",
        "30",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign"
    ]);
    openssl(&req).assert_ok();
    (cert, key)
}

/// A client certificate (clientAuth) for `cn`, issued by the CA (ca_cert, ca_key).
fn make_client(f: &Fixture, ca: &(PathBuf, PathBuf), cn: &str) -> Client {
    make_client_serial(f, ca, cn, "0x5eed")
}

/// As `make_client`, with the serial number given (hex, `0x...`).
fn make_client_serial(f: &Fixture, ca: &(PathBuf, PathBuf), cn: &str, serial: &str) -> Client {
    let key = f.path("client.key");
    let csr = f.path("client.csr");
    let cert = f.path("client.pem");
    openssl(&args![
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        &key,
        "-out",
        &csr,
        "-subj",
        format!("/CN={cn}/O={BANK}")
    ])
    .assert_ok();
    let ext = ext_file(
        f,
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n",
    );
    openssl(&args![
        "x509",
        "-req",
        "-in",
        &csr,
        "-CA",
        &ca.0,
        "-CAkey",
        &ca.1,
        "-set_serial",
        serial,
        "-days",
        "30",
        "-extfile",
        &ext,
        "-out",
        &cert
    ])
    .assert_ok();
    Client { cert, key }
}

fn make_crl(f: &Fixture, ca: &(PathBuf, PathBuf), revoked: &[&Path]) -> PathBuf {
    openssl_crl(f, &ca.0, &ca.1, revoked)
}

fn rfc2253_subject(cert: &Path) -> String {
    let out = openssl(&args![
        "x509", "-in", cert, "-noout", "-subject", "-nameopt", "RFC2253"
    ]);
    out.assert_ok();
    out.stdout
        .trim()
        .strip_prefix("subject=")
        .expect("subject= line")
        .to_string()
}

/// The fixture's config plus `[tls]` (server names for `ca upgrade`, the client CA and one
/// mapping by subject) and `extra` TOML.
fn tls_config(
    f: &Fixture,
    name: &str,
    client_ca: &Path,
    officer_subject: &str,
    extra: &str,
) -> PathBuf {
    let dir = f.path(name);
    std::fs::create_dir_all(&dir).unwrap();
    let mut text = std::fs::read_to_string(&f.config).unwrap();
    text.push_str(&format!(
        "\n{extra}\n[tls]\ncertificate = {}\nkey = {}\nissue_names = [\"DNS:signet.localhost\", \"IP:127.0.0.1\"]\nclient_cas = [{}]\n\n[[tls.client]]\nsubject = {}\ntenant = {}\nrole = \"ra-officer\"\n",
        toml_str(&f.home.join("tls-server.pem").to_string_lossy()),
        toml_str(&f.home.join("tls-server-key.pem").to_string_lossy()),
        toml_str(&client_ca.to_string_lossy()),
        toml_str(officer_subject),
        toml_str(BANK),
    ));
    let p = dir.join("signet.toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| {
        let f = fixture();
        f.signet(&["tenant", "add", BANK]).assert_ok();
        let add = f.signet(&[
            "credential",
            "add",
            "--tenant",
            BANK,
            "--role",
            "ra-officer",
        ]);
        add.assert_ok();
        let ca = make_ca(f, "TLS Bank RA Client CA");
        let rogue_ca = make_ca(f, "Rogue CA");
        let officer = make_client(f, &ca, "RA Client 1");
        let unmapped = make_client(f, &ca, "RA Client 2");
        let rogue = make_client(f, &rogue_ca, "RA Client 1");
        let auditor = make_client(f, &ca, "Audit Client");
        let config = tls_config(f, "tls", &ca.0, &rfc2253_subject(&officer.cert), "");
        // The auditor's certificate is mapped by its SHA-256 fingerprint, as OpenSSL prints it.
        let fp = fingerprint(&auditor);
        let mut text = std::fs::read_to_string(&config).unwrap();
        text.push_str(&format!(
            "\n[[tls.client]]\nfingerprint = {}\ntenant = {}\nrole = \"auditor\"\n",
            toml_str(&fp),
            toml_str(BANK)
        ));
        std::fs::write(&config, text).unwrap();
        let upgrade = f.signet_with(&config, &[], &["ca", "upgrade"]);
        upgrade.assert_ok();
        Setup {
            config,
            server_cert: f.home.join("tls-server.pem"),
            server_key: f.home.join("tls-server-key.pem"),
            upgrade,
            officer,
            unmapped,
            rogue,
            auditor,
            client_ca: ca,
            token: add.stdout.trim().to_string(),
        }
    })
}

/// A certificate's SHA-256 fingerprint as `openssl x509 -fingerprint` prints it (colons).
fn fingerprint(c: &Client) -> String {
    let fp = openssl(&args![
        "x509",
        "-in",
        &c.cert,
        "-noout",
        "-fingerprint",
        "-sha256"
    ]);
    fp.assert_ok();
    fp.stdout.trim().rsplit('=').next().unwrap().to_string()
}

fn start(config: &Path) -> Server {
    let s = Server::start_config(fixture(), config, &[("SIGNET_LOG", "debug".into())]);
    assert!(s.base.starts_with("https://"), "serving on {}", s.base);
    s
}

/// `host:port` of a server.
fn authority(s: &Server) -> String {
    s.base.trim_start_matches("https://").to_string()
}

/// What curl got: status, body, and everything curl said on stderr.
struct CurlReply {
    status: u16,
    body: String,
    stderr: String,
}

impl CurlReply {
    fn code(&self) -> String {
        serde_json::from_str::<Value>(&self.body)
            .ok()
            .and_then(|v| v["error"]["code"].as_str().map(str::to_string))
            .unwrap_or_else(|| panic!("no error code in {:?} ({})", self.body, self.stderr))
    }
}

/// The answer to a client whose certificate is on its CA's CRL: 401, saying so.
fn assert_revoked_client(r: &CurlReply) {
    assert_eq!(
        (r.status, r.code().as_str()),
        (401, "client_certificate_invalid"),
        "{}",
        r.body
    );
    assert!(r.body.contains("revoked"), "{}", r.body);
}

/// One HTTPS request with curl, trusting Signet's root; `client` presents a certificate.
fn curl(
    s: &Server,
    method: &str,
    path: &str,
    client: Option<&Client>,
    token: Option<&str>,
    body: Option<&Value>,
) -> CurlReply {
    let f = fixture();
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-X", method, "-w", "\n%{http_code}", "--cacert"])
        .arg(f.ca("root.pem"));
    if let Some(c) = client {
        cmd.arg("--cert").arg(&c.cert).arg("--key").arg(&c.key);
    }
    let mut header_file = None;
    if let Some(t) = token {
        // The token goes through a header file, not argv.
        let p = f.path("auth-header");
        std::fs::write(&p, format!("Authorization: Bearer {t}\n")).unwrap();
        cmd.arg("-H").arg(format!("@{}", p.display()));
        header_file = Some(p);
    }
    if let Some(b) = body {
        let p = f.path("body.json");
        std::fs::write(&p, b.to_string()).unwrap();
        cmd.args(["-H", "Content-Type: application/json", "--data-binary"])
            .arg(format!("@{}", p.display()));
    }
    cmd.arg(s.url(path)).stdin(Stdio::null());
    let out = cmd.output().expect("run curl");
    if let Some(p) = header_file {
        let _ = std::fs::remove_file(p);
    }
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let (body, status) = stdout.rsplit_once('\n').unwrap_or(("", stdout.as_str()));
    CurlReply {
        status: status.trim().parse().unwrap_or(0),
        body: body.to_string(),
        stderr,
    }
}

fn issuance_body(n: u32) -> Value {
    let f = fixture();
    let csr = std::fs::read_to_string(f.csr(KeyKind::P256)).unwrap();
    json!({"profile": "customer", "csr": csr, "subject": format!("CN=TLS客户{n},serialNumber=11010119900308{n:04}")})
}

fn s_client(s: &Server, extra: &[&str]) -> Out {
    let f = fixture();
    let mut cmd = Command::new("openssl");
    cmd.args([
        "s_client",
        "-connect",
        &authority(s),
        "-servername",
        "signet.localhost",
    ])
    .args(["-verify_return_error", "-CAfile"])
    .arg(f.ca("root.pem"))
    .args(extra);
    run(cmd)
}

// --------------------------------------------------------------------------------------
// The server certificate

#[test]
fn server_certificate_from_ca_upgrade_verifies_with_openssl_s_client() {
    let st = setup();
    let s = start(&st.config);
    let out = s_client(&s, &[]);
    out.assert_ok();
    assert!(
        out.stdout.contains("Verify return code: 0 (ok)"),
        "{}",
        out.describe()
    );
}

/// The subject line of the certificate the server at `s` presents (not verified).
fn served_subject(s: &Server) -> String {
    let mut cmd = Command::new("openssl");
    cmd.args(["s_client", "-connect", &authority(s)]);
    let out = run(cmd);
    out.stdout
        .lines()
        .find(|l| l.starts_with("subject="))
        .unwrap_or_else(|| panic!("no server certificate: {}", out.describe()))
        .to_string()
}

#[test]
fn a_renewed_server_certificate_is_served_to_new_connections_without_a_restart() {
    let st = setup();
    let f = fixture();
    let dir = f.path("tls-renewal");
    std::fs::create_dir_all(&dir).unwrap();
    let cert = dir.join("server.pem");
    let key = dir.join("server-key.pem");
    std::fs::copy(&st.server_cert, &cert).unwrap();
    std::fs::copy(&st.server_key, &key).unwrap();
    let config = dir.join("signet.toml");
    let text = std::fs::read_to_string(&st.config)
        .unwrap()
        .replace(
            &toml_str(&st.server_cert.to_string_lossy()),
            &toml_str(&cert.to_string_lossy()),
        )
        .replace(
            &toml_str(&st.server_key.to_string_lossy()),
            &toml_str(&key.to_string_lossy()),
        );
    std::fs::write(&config, text).unwrap();
    let s = start(&config);
    let first = served_subject(&s);

    // The key first, then the certificate, each renamed into place. (Self-signed here: what
    // counts is which certificate is served.)
    let (new_cert, new_key) = make_ca(f, "renewed.signet.localhost");
    std::fs::rename(&new_key, &key).unwrap();
    std::fs::rename(&new_cert, &cert).unwrap();
    let renewed = served_subject(&s);
    assert!(
        renewed.contains("renewed.signet.localhost"),
        "still served: {renewed} (before: {first})"
    );

    // A certificate put in place without its key is not taken: the pair read before serves.
    let (stray_cert, _) = make_ca(f, "stray.signet.localhost");
    let logged = s.log().len();
    std::fs::rename(&stray_cert, &cert).unwrap();
    assert_eq!(served_subject(&s), renewed);
    let log_says_why = s.logs_within(logged, std::time::Duration::from_secs(5), |log| {
        log.contains("cannot be used") && log.contains("certificate and key")
    });
    assert!(log_says_why, "the log says why: {}", &s.log()[logged..]);
}

#[test]
fn server_key_from_ca_upgrade_is_a_0600_file_and_never_printed() {
    use std::os::unix::fs::PermissionsExt;
    let st = setup();
    let mode = std::fs::metadata(&st.server_key)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "key file mode {:o}", mode & 0o777);
    let key = std::fs::read_to_string(&st.server_key).unwrap();
    assert!(key.contains("BEGIN PRIVATE KEY"));
    for line in key.lines().filter(|l| !l.starts_with("-----")) {
        assert!(!st.upgrade.stdout.contains(line) && !st.upgrade.stderr.contains(line));
    }
}

#[test]
fn server_certificate_names_the_server_and_is_for_server_auth_only() {
    let st = setup();
    let out = openssl(&args!["x509", "-in", &st.server_cert, "-noout", "-text"]);
    out.assert_ok();
    let text = out.stdout;
    assert!(
        text.contains("DNS:signet.localhost") && text.contains("IP Address:127.0.0.1"),
        "{text}"
    );
    assert!(text.contains("TLS Web Server Authentication"), "{text}");
    assert!(!text.contains("TLS Web Client Authentication"), "{text}");
}

#[test]
fn server_certificate_passes_pkilint() {
    let st = setup();
    let f = fixture();
    let leaf = f.path("tls-leaf.pem");
    std::fs::write(
        &leaf,
        pem_blocks(&std::fs::read_to_string(&st.server_cert).unwrap())[0].clone(),
    )
    .unwrap();
    assert_lint_clean(&pkilint(
        "lint_pkix_cert",
        &args!["lint", "-s", "ERROR", &leaf],
    ));
    assert_lint_clean(&pkilint(
        "lint_pkix_signer_signee_cert_chain",
        &args!["lint", "-s", "ERROR", f.ca("customer-ca.pem"), &leaf],
    ));
}

#[test]
fn ca_upgrade_keeps_an_existing_server_certificate() {
    let st = setup();
    let before = std::fs::read(&st.server_cert).unwrap();
    fixture()
        .signet_with(&st.config, &[], &["ca", "upgrade"])
        .assert_ok();
    assert_eq!(std::fs::read(&st.server_cert).unwrap(), before);
}

// --------------------------------------------------------------------------------------
// Protocol versions

#[test]
fn tls_1_1_is_refused() {
    let st = setup();
    let s = start(&st.config);
    // SECLEVEL=0 lets this OpenSSL offer TLS 1.1 at all: the refusal is the server's.
    let out = s_client(&s, &["-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"]);
    assert!(
        !out.success(),
        "TLS 1.1 handshake succeeded\n{}",
        out.describe()
    );
    assert!(
        out.stdout.contains("no peer certificate available")
            && out.stdout.contains("Cipher is (NONE)"),
        "{}",
        out.describe()
    );
}

#[test]
fn tls_1_2_and_1_3_are_served() {
    let st = setup();
    let s = start(&st.config);
    for (flag, name) in [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")] {
        let out = s_client(&s, &[flag]);
        out.assert_ok();
        assert!(out.stdout.contains(name), "{flag}: {}", out.describe());
    }
}

// --------------------------------------------------------------------------------------
// Client certificates

#[test]
fn a_mapped_client_certificate_issues_a_certificate_with_curl() {
    let st = setup();
    let s = start(&st.config);
    let r = curl(
        &s,
        "POST",
        "/v1/certificates",
        Some(&st.officer),
        None,
        Some(&issuance_body(1)),
    );
    assert_eq!(r.status, 201, "{} {}", r.body, r.stderr);
    let v: Value = serde_json::from_str(&r.body).unwrap();
    assert!(v["certificate"]
        .as_str()
        .unwrap()
        .contains("BEGIN CERTIFICATE"));
    // The audit log names the client certificate as the actor.
    let serial = v["serial"].as_str().unwrap().to_string();
    let actor: String = open_db(&fixture().db)
        .query_row(
            "SELECT actor FROM audit_events WHERE action = 'certificate.issue' AND object = ?1",
            [&serial],
            |r| r.get(0),
        )
        .unwrap();
    assert!(actor.starts_with("credential:tls-"), "actor {actor}");
}

#[test]
fn a_client_certificate_mapped_by_fingerprint_gets_its_role_and_no_more() {
    let st = setup();
    let s = start(&st.config);
    let r = curl(&s, "GET", "/v1/audit-events", Some(&st.auditor), None, None);
    assert_eq!(r.status, 200, "{} {}", r.body, r.stderr);
    let r = curl(
        &s,
        "POST",
        "/v1/certificates",
        Some(&st.auditor),
        None,
        Some(&issuance_body(6)),
    );
    assert_eq!((r.status, r.code().as_str()), (403, "forbidden"));
}

/// The two-person rule compares people: a `[[tls.client]]` entry's `holder` names whose
/// certificate it maps. A teller request filed with one certificate of a holder is not approved
/// with another of theirs (a new certificate beside the old), however the holder is typed, nor
/// with a bearer credential of that holder; another holder's certificate approves it.
#[test]
fn a_teller_request_filed_with_a_client_certificate_is_approved_only_by_another_holder() {
    let st = setup();
    let f = fixture();
    let li = make_client(f, &st.client_ca, "Teller Admin Li");
    let li_new = make_client_serial(f, &st.client_ca, "Teller Admin Li (new key)", "0x5eee");
    let wang = make_client(f, &st.client_ca, "Teller Admin Wang");
    let mut text = std::fs::read_to_string(&st.config).unwrap();
    for (client, holder) in [(&li, "E8001"), (&li_new, " ｅ８００１ "), (&wang, "E8002")] {
        text.push_str(&format!(
            "\n[[tls.client]]\nfingerprint = {}\ntenant = {}\nrole = \"teller-admin\"\nholder = {}\n",
            toml_str(&fingerprint(client)),
            toml_str(BANK),
            toml_str(holder)
        ));
    }
    let config = f.path("tls-holders.toml");
    std::fs::write(&config, &text).unwrap();
    let bearer = f.signet(&[
        "credential",
        "add",
        "--tenant",
        BANK,
        "--role",
        "teller-admin",
        "--holder",
        "e8001",
    ]);
    bearer.assert_ok();
    let s = start(&config);
    let csr = std::fs::read_to_string(f.csr(KeyKind::P256)).unwrap();
    let token = bearer.stdout.trim();
    // Files a request as (certificate, token) and gives its approval path.
    let file = |client: Option<&Client>, token: Option<&str>, employee: &str| {
        let subject = format!("CN=柜员李,serialNumber={employee},OU=Branch 8");
        let filed = curl(
            &s,
            "POST",
            "/v1/teller-requests",
            client,
            token,
            Some(&json!({"csr": csr, "subject": subject})),
        );
        assert_eq!(filed.status, 202, "{} {}", filed.body, filed.stderr);
        let id = serde_json::from_str::<Value>(&filed.body).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string();
        format!("/v1/teller-requests/{id}/approve")
    };
    let approve = |path: &str, client: Option<&Client>, token: Option<&str>| {
        curl(&s, "POST", path, client, token, Some(&json!({})))
    };
    let refused = |r: CurlReply| {
        assert_eq!(
            (r.status, r.code().as_str()),
            (403, "self_approval"),
            "{}",
            r.body
        );
    };
    let path = file(Some(&li), None, "E8001");
    refused(approve(&path, Some(&li_new), None));
    refused(approve(&path, None, Some(token)));
    let by_colleague = approve(&path, Some(&wang), None);
    assert_eq!(by_colleague.status, 201, "{}", by_colleague.body);
    // The other way round: filed with the bearer credential, not approved with the certificate.
    let path = file(None, Some(token), "E8011");
    refused(approve(&path, Some(&li), None));
}

#[test]
fn a_client_mapping_whose_holder_names_no_one_stops_the_server_from_starting() {
    let st = setup();
    let f = fixture();
    for (n, bad) in ["", "E8001\u{200B}", "E1\nE2"].into_iter().enumerate() {
        let mut text = std::fs::read_to_string(&st.config).unwrap();
        text.push_str(&format!(
            "\n[[tls.client]]\nsubject = \"CN=Nobody {n}\"\ntenant = {}\nrole = \"teller-admin\"\nholder = {}\n",
            toml_str(BANK),
            // A TOML escape: the holder holds a line break, not the file.
            toml_str(bad).replace('\n', "\\n")
        ));
        let config = f.path(&format!("tls-bad-holder-{n}.toml"));
        std::fs::write(&config, &text).unwrap();
        let said = refuses_to_serve(&config);
        assert!(said.contains("holder"), "{bad:?}: {said}");
    }
}

#[test]
fn a_teller_admin_client_mapping_without_a_holder_is_warned_of_at_start() {
    let st = setup();
    let f = fixture();
    let mut text = std::fs::read_to_string(&st.config).unwrap();
    text.push_str(&format!(
        "\n[[tls.client]]\nsubject = \"CN=Nobody Holderless\"\ntenant = {}\nrole = \"teller-admin\"\n",
        toml_str(BANK)
    ));
    let config = f.path("tls-holderless.toml");
    std::fs::write(&config, &text).unwrap();
    let log = start(&config).stop_and_log();
    assert!(
        log.contains("teller-admin has no holder") && log.contains("holder = "),
        "no warning, or one that does not say what to do:\n{log}"
    );
}

#[test]
fn an_unmapped_client_certificate_is_refused_403() {
    let st = setup();
    let s = start(&st.config);
    let r = curl(
        &s,
        "POST",
        "/v1/certificates",
        Some(&st.unmapped),
        None,
        Some(&issuance_body(2)),
    );
    assert_eq!(
        (r.status, r.code().as_str()),
        (403, "client_certificate_unmapped")
    );
}

#[test]
fn a_client_certificate_from_an_untrusted_ca_is_refused_401_even_with_a_mapped_subject() {
    let st = setup();
    let s = start(&st.config);
    let r = curl(
        &s,
        "POST",
        "/v1/certificates",
        Some(&st.rogue),
        None,
        Some(&issuance_body(3)),
    );
    assert_eq!(
        (r.status, r.code().as_str()),
        (401, "client_certificate_invalid"),
        "{}",
        r.stderr
    );
}

/// Adds `crl` as `[tls] client_crls` to a config made by `tls_config`.
fn with_client_crl(config: &Path, crl: &Path) {
    let text = std::fs::read_to_string(config).unwrap().replacen(
        "\nclient_cas = ",
        &format!(
            "\nclient_crls = [{}]\nclient_cas = ",
            toml_str(&crl.to_string_lossy())
        ),
        1,
    );
    std::fs::write(config, text).unwrap();
}

/// `signet serve` with `config` must stop before serving: what it said on stderr.
fn refuses_to_serve(config: &Path) -> String {
    use std::io::Read;
    let mut child = fixture()
        .command(config)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start signet serve");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("signet serve started with {}", config.display());
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(!status.success(), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

#[test]
fn a_client_crl_that_is_not_a_crl_of_a_client_ca_stops_the_server_from_starting() {
    setup();
    let f = fixture();
    let ca = make_ca(f, "TLS Bank CRL Start CA");
    let client = make_client_serial(f, &ca, "CRL Start Client", "0x2001");
    let subject = rfc2253_subject(&client.cert);

    let garbage = f.path("garbage.crl");
    std::fs::write(&garbage, "this is not a CRL\n").unwrap();
    let other_ca = make_ca(f, "Some Other CA");
    let foreign = make_crl(f, &other_ca, &[]);
    for (name, crl, says) in [
        ("tls-crl-garbage", &garbage, "not a CRL"),
        ("tls-crl-foreign", &foreign, "none of [tls].client_cas"),
    ] {
        let config = tls_config(f, name, &ca.0, &subject, "");
        with_client_crl(&config, crl);
        let stderr = refuses_to_serve(&config);
        assert!(
            stderr.contains(says) && stderr.contains(&*crl.to_string_lossy()),
            "{name}: {stderr}"
        );
    }

    // CRLs without the CAs they belong to: a config error.
    let config = tls_config(f, "tls-crl-no-cas", &ca.0, &subject, "");
    with_client_crl(&config, &foreign);
    // `[tls]` comes last in the file, client_crls before client_cas and the mappings.
    let text = std::fs::read_to_string(&config).unwrap();
    let without_cas = &text[..text.find("\nclient_cas = ").unwrap() + 1];
    std::fs::write(&config, without_cas).unwrap();
    let stderr = refuses_to_serve(&config);
    assert!(
        stderr.contains("client_crls need [tls].client_cas"),
        "{stderr}"
    );
}

#[test]
fn a_client_certificate_on_a_client_crl_is_refused_401_and_a_changed_crl_is_read_again() {
    setup();
    let f = fixture();
    let ca = make_ca(f, "TLS Bank CRL Client CA");
    let kept = make_client_serial(f, &ca, "CRL Client", "0x1001");
    let revoked = make_client_serial(f, &ca, "CRL Client", "0x1002");
    let crl = f.path("client-ca.crl");
    std::fs::copy(make_crl(f, &ca, &[&revoked.cert]), &crl).unwrap();
    let config = tls_config(f, "tls-crl", &ca.0, &rfc2253_subject(&kept.cert), "");
    with_client_crl(&config, &crl);
    let s = start(&config);
    let issue = |client: &Client, n: u32| {
        curl(
            &s,
            "POST",
            "/v1/certificates",
            Some(client),
            None,
            Some(&issuance_body(n)),
        )
    };
    assert_revoked_client(&issue(&revoked, 41));
    let r = issue(&kept, 42);
    assert_eq!(r.status, 201, "the same subject, not revoked: {}", r.body);

    // A CRL in the CA's name but signed by another key is not used: the CRLs read before stay.
    let impostor = make_ca(f, "TLS Bank CRL Client CA");
    std::fs::copy(make_crl(f, &impostor, &[&kept.cert]), &crl).unwrap();
    let r = issue(&kept, 44);
    assert_eq!(r.status, 201, "an impostor's CRL revoked it: {}", r.body);
    assert_revoked_client(&issue(&revoked, 45));
    assert!(
        s.logs_within(0, std::time::Duration::from_secs(5), |log| log
            .contains("not signed by that client CA")),
        "the log says why: {}",
        s.log()
    );

    // The CA revokes the other one too and its CRL file is replaced: the next connection sees it.
    std::fs::copy(make_crl(f, &ca, &[&revoked.cert, &kept.cert]), &crl).unwrap();
    assert_revoked_client(&issue(&kept, 43));
}

#[test]
fn an_rsa_client_cas_crl_is_checked_when_read_an_impostors_stopping_the_start() {
    setup();
    let f = fixture();
    let rsa = ["-newkey", "rsa:2048"];
    let ca = make_ca_with(f, "TLS Bank RSA Client CA", &rsa);
    let revoked = make_client_serial(f, &ca, "RSA CRL Client", "0x3001");
    let subject = rfc2253_subject(&revoked.cert);
    // In the CA's name, signed by another RSA key: refused when read, not when first used.
    let impostor = make_ca_with(f, "TLS Bank RSA Client CA", &rsa);
    let forged = make_crl(f, &impostor, &[]);
    let config = tls_config(f, "tls-rsa-crl-forged", &ca.0, &subject, "");
    with_client_crl(&config, &forged);
    let stderr = refuses_to_serve(&config);
    assert!(
        stderr.contains("not signed by that client CA's key"),
        "{stderr}"
    );
    // Its own CRL is taken, and revokes.
    let own = make_crl(f, &ca, &[&revoked.cert]);
    let config = tls_config(f, "tls-rsa-crl-own", &ca.0, &subject, "");
    with_client_crl(&config, &own);
    let s = start(&config);
    assert_revoked_client(&curl(
        &s,
        "POST",
        "/v1/certificates",
        Some(&revoked),
        None,
        Some(&issuance_body(61)),
    ));
}

/// One TLS connection held open by `openssl s_client`, presenting a client certificate:
/// HTTP/1.1 requests go one after another over it (keep-alive).
struct KeptConnection {
    child: std::process::Child,
    out: std::io::BufReader<std::process::ChildStdout>,
}

impl KeptConnection {
    fn open(s: &Server, client: &Client) -> KeptConnection {
        let f = fixture();
        let mut child = Command::new("openssl")
            .args(["s_client", "-quiet", "-connect", &authority(s), "-CAfile"])
            .arg(f.ca("root.pem"))
            .arg("-cert")
            .arg(&client.cert)
            .arg("-key")
            .arg(&client.key)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start openssl s_client");
        let out = std::io::BufReader::new(child.stdout.take().unwrap());
        KeptConnection { child, out }
    }

    /// GET `path` on this connection: (status, body).
    fn get(&mut self, path: &str) -> (u16, String) {
        use std::io::{BufRead, Read, Write};
        let stdin = self.child.stdin.as_mut().unwrap();
        write!(
            stdin,
            "GET {path} HTTP/1.1\r\nHost: signet.localhost\r\n\r\n"
        )
        .unwrap();
        stdin.flush().unwrap();
        let mut line = String::new();
        self.out.read_line(&mut line).unwrap();
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no HTTP status line: {line:?}"));
        let mut length = 0;
        loop {
            line.clear();
            self.out.read_line(&mut line).unwrap();
            if line.trim().is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap();
                }
            }
        }
        let mut body = vec![0; length];
        self.out.read_exact(&mut body).unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }
}

impl Drop for KeptConnection {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_keep_alive_connection_is_refused_once_its_client_certificate_is_on_a_changed_crl() {
    setup();
    let f = fixture();
    let ca = make_ca(f, "TLS Bank Keep-alive CA");
    let client = make_client_serial(f, &ca, "Keep-alive Client", "0x3001");
    let crl = f.path("keep-alive-ca.crl");
    std::fs::copy(make_crl(f, &ca, &[]), &crl).unwrap();
    let config = tls_config(
        f,
        "tls-crl-keep-alive",
        &ca.0,
        &rfc2253_subject(&client.cert),
        "",
    );
    with_client_crl(&config, &crl);
    let s = start(&config);
    let r = curl(
        &s,
        "POST",
        "/v1/certificates",
        Some(&client),
        None,
        Some(&issuance_body(51)),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let serial = serde_json::from_str::<Value>(&r.body).unwrap()["serial"]
        .as_str()
        .unwrap()
        .to_string();
    let path = format!("/v1/certificates/{serial}");

    let mut conn = KeptConnection::open(&s, &client);
    let (status, body) = conn.get(&path);
    assert_eq!(status, 200, "{body}");
    // The CA revokes the client's certificate while the connection stays open.
    std::fs::copy(make_crl(f, &ca, &[&client.cert]), &crl).unwrap();
    let (status, body) = conn.get(&path);
    assert_eq!(
        status, 401,
        "the same connection, after the CRL changed: {body}"
    );
    assert!(
        body.contains("client_certificate_invalid") && body.contains("revoked"),
        "{body}"
    );
}

#[test]
fn without_a_client_certificate_a_bearer_token_works_over_tls() {
    let st = setup();
    let s = start(&st.config);
    let r = curl(
        &s,
        "POST",
        "/v1/certificates",
        None,
        Some(&st.token),
        Some(&issuance_body(4)),
    );
    assert_eq!(r.status, 201, "{} {}", r.body, r.stderr);
    let r = curl(
        &s,
        "POST",
        "/v1/certificates",
        None,
        None,
        Some(&issuance_body(5)),
    );
    assert_eq!((r.status, r.code().as_str()), (401, "unauthenticated"));
}

// --------------------------------------------------------------------------------------
// No secret in any output

/// Everything secret this test uses, with a name for the failure message.
struct Secrets(Vec<(String, String)>);

impl Secrets {
    fn add(&mut self, name: &str, value: &str) {
        let v = value.trim();
        assert!(v.len() >= 6, "secret {name} too short to search for");
        self.0.push((name.to_string(), v.to_string()));
    }

    /// Fails when any secret appears in `text` (what `place` showed).
    #[track_caller]
    fn assert_absent(&self, place: &str, text: &str) {
        for (name, v) in &self.0 {
            assert!(
                !text.contains(v.as_str()),
                "{name} appears in {place}:\n{text}"
            );
        }
    }
}

#[test]
fn no_secret_appears_in_any_output_of_the_failure_paths() {
    let st = setup();
    let f = fixture();
    let mut secrets = Secrets(Vec::new());
    secrets.add(
        "token PIN",
        &std::fs::read_to_string(f.home.join("user.pin")).unwrap(),
    );
    secrets.add(
        "SO PIN",
        &std::fs::read_to_string(f.home.join("so.pin")).unwrap(),
    );
    let tls_key = std::fs::read_to_string(&st.server_key).unwrap();
    for (i, line) in tls_key
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .enumerate()
    {
        secrets.add(&format!("TLS key PEM line {i}"), line);
    }
    let client_key = std::fs::read_to_string(&st.officer.key).unwrap();
    for (i, line) in client_key
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .enumerate()
    {
        secrets.add(&format!("client key PEM line {i}"), line);
    }
    // Everything the CLI printed; stdout of `credential add/rotate` is the token's one
    // designed way out, and is checked to hold nothing else.
    let mut cli_outputs: Vec<(String, String)> = Vec::new();
    let mut cli = |args: &[&str], env: &[(&str, String)], config: &Path| -> Out {
        let out = f.signet_with(config, env, args);
        cli_outputs.push((
            format!("stderr of signet {}", args.join(" ")),
            out.stderr.clone(),
        ));
        out
    };
    let token_of = |out: &Out| -> String {
        assert_eq!(out.stdout.lines().count(), 1, "{}", out.describe());
        out.stdout.trim().to_string()
    };

    secrets.add("officer token", &st.token);
    cli(
        &[
            "teller",
            "add",
            "--tenant",
            BANK,
            "--employee",
            "T9",
            "--name",
            "赵柜员",
        ],
        &[],
        &f.config,
    )
    .assert_ok();
    let mut new_token = |role: &str, teller: Option<&str>, what: &str, secrets: &mut Secrets| {
        let mut a = vec!["credential", "add", "--tenant", BANK, "--role", role];
        if let Some(t) = teller {
            a.extend(["--teller", t]);
        }
        let out = cli(&a, &[], &f.config);
        out.assert_ok();
        let t = token_of(&out);
        secrets.add(what, &t);
        t
    };
    let admin1 = new_token("teller-admin", None, "teller-admin token 1", &mut secrets);
    let admin2 = new_token("teller-admin", None, "teller-admin token 2", &mut secrets);
    let teller = new_token("teller", Some("T9"), "teller token", &mut secrets);
    // An expired token: made three days ago for one day.
    let past = (now_unix() - 3 * 86_400).to_string();
    let expired_out = cli(
        &[
            "credential",
            "add",
            "--tenant",
            BANK,
            "--role",
            "auditor",
            "--days",
            "1",
        ],
        &[("SIGNET_FAKE_NOW", past)],
        &f.config,
    );
    expired_out.assert_ok();
    let expired = token_of(&expired_out);
    secrets.add("expired token", &expired);
    // A rotated token: the old one and the new one.
    let rotated_out = cli(
        &["credential", "add", "--tenant", BANK, "--role", "auditor"],
        &[],
        &f.config,
    );
    rotated_out.assert_ok();
    let old = token_of(&rotated_out);
    secrets.add("token before rotation", &old);
    let id = rotated_out
        .stderr
        .split_whitespace()
        .skip_while(|w| *w != "credential")
        .nth(1)
        .unwrap()
        .to_string();
    let new_out = cli(&["credential", "rotate", "--id", &id], &[], &f.config);
    new_out.assert_ok();
    let new = token_of(&new_out);
    secrets.add("token after rotation", &new);
    let wrong_token = format!(
        "sgt_{}_{}",
        id.trim_start_matches("cred_"),
        "Wr0ngSecretWr0ngSecretWr0ngSecretWr0ngSecr"
    );
    secrets.add("wrong token", &wrong_token);

    // CLI failure paths: a wrong token PIN, a PIN file that is not there, a bad CSR.
    let wrong_pin = f.path("wrong.pin");
    std::fs::write(&wrong_pin, "98765432-wrong-pin\n").unwrap();
    secrets.add("wrong token PIN", "98765432-wrong-pin");
    let wrong_pin_config = f.config_variant(
        "wrong-pin",
        &[("hsm", "pin_file", toml_str(&wrong_pin.to_string_lossy()))],
    );
    cli(
        &["ca", "export", "--out", &f.path("export").to_string_lossy()],
        &[],
        &wrong_pin_config,
    )
    .assert_refused();
    let missing_pin_config = f.config_variant(
        "missing-pin",
        &[(
            "hsm",
            "pin_file",
            toml_str(&f.path("absent.pin").to_string_lossy()),
        )],
    );
    cli(
        &["ca", "export", "--out", &f.path("export").to_string_lossy()],
        &[],
        &missing_pin_config,
    )
    .assert_refused();
    let bad_csr = f.path("bad.csr");
    std::fs::write(&bad_csr, "-----BEGIN CERTIFICATE REQUEST-----\nnot base64 at all\n-----END CERTIFICATE REQUEST-----\n").unwrap();
    cli(
        &[
            "issue",
            "--profile",
            "customer",
            "--csr",
            &bad_csr.to_string_lossy(),
            "--subject",
            "CN=x,serialNumber=110101199003070000",
        ],
        &[],
        &f.config,
    )
    .assert_refused();

    // The interrupted path: an issuance stopped between recording and signing (on a copy of
    // the store, which it leaves a pending record in).
    let copy = f.store_copy("fault", &[]);
    let csr = f.csr(KeyKind::P256);
    cli(
        &[
            "issue",
            "--profile",
            "customer",
            "--csr",
            &csr.to_string_lossy(),
            "--subject",
            "CN=中断,serialNumber=110101199003079999",
            "--out",
            &f.path("interrupted.pem").to_string_lossy(),
        ],
        &[("SIGNET_FAULT", "after-record".into())],
        &copy.config,
    )
    .assert_refused();

    // API failure paths, over TLS, on a server of their own with a low failure limit.
    let config = tls_config(
        f,
        "tls-secrets",
        &std::fs::read_to_string(&st.config)
            .unwrap()
            .lines()
            .find_map(|l| {
                l.strip_prefix("client_cas = [\"")
                    .and_then(|r| r.strip_suffix("\"]"))
            })
            .map(PathBuf::from)
            .unwrap(),
        &rfc2253_subject(&st.officer.cert),
        "[auth]\nmax_failures_per_address = 6\nwindow_secs = 600\nlockout_secs = 600\n",
    );
    let s = start(&config);
    let mut bodies: Vec<(String, String)> = Vec::new();
    let mut call = |what: &str, r: CurlReply, want: u16| {
        assert_eq!(r.status, want, "{what}: {} {}", r.body, r.stderr);
        bodies.push((
            format!("{what} answer"),
            format!("{}\n{}", r.body, r.stderr),
        ));
    };
    // A wrong signing-key PIN: the teller's HSM key (two teller-admins), its PIN set with the
    // activation code, then a signature asked for with a wrong PIN.
    let r = curl(
        &s,
        "POST",
        "/v1/teller-keys",
        None,
        Some(&admin1),
        Some(&json!({"employee_id": "T9"})),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let req_id = serde_json::from_str::<Value>(&r.body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = curl(
        &s,
        "POST",
        &format!("/v1/teller-requests/{req_id}/approve"),
        None,
        Some(&admin2),
        Some(&json!({})),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let approved: Value = serde_json::from_str(&r.body).unwrap();
    let key_id = approved["key_id"].as_str().unwrap().to_string();
    let code = approved["activation_code"].as_str().unwrap().to_string();
    secrets.add("activation code", &code);
    let teller_pin = "TellerPin715293";
    secrets.add("teller PIN", teller_pin);
    let r = curl(
        &s,
        "POST",
        &format!("/v1/signing-keys/{key_id}/pin"),
        None,
        Some(&teller),
        Some(&json!({"activation_code": code, "new_pin": teller_pin})),
    );
    call("set teller PIN", r, 204);
    let wrong_teller_pin = "WrongPin000111";
    secrets.add("wrong teller PIN", wrong_teller_pin);
    let sign = json!({"key": key_id, "format": "jws", "data": base64_std(b"pay 1 yuan"), "pin": wrong_teller_pin});
    let r = curl(
        &s,
        "POST",
        "/v1/signatures",
        None,
        Some(&teller),
        Some(&sign),
    );
    assert_eq!((r.status, r.code().as_str()), (403, "wrong_pin"));
    call("wrong teller PIN", r, 403);
    call(
        "bad CSR",
        curl(
            &s,
            "POST",
            "/v1/certificates",
            None,
            Some(&st.token),
            Some(&json!({"profile": "customer", "csr": "garbage", "subject": "CN=x"})),
        ),
        400,
    );
    call(
        "unmapped client certificate",
        curl(
            &s,
            "GET",
            "/v1/audit-events",
            Some(&st.unmapped),
            None,
            None,
        ),
        403,
    );
    call(
        "untrusted client certificate",
        curl(&s, "GET", "/v1/audit-events", Some(&st.rogue), None, None),
        401,
    );
    call(
        "expired token",
        curl(&s, "GET", "/v1/audit-events", None, Some(&expired), None),
        401,
    );
    call(
        "rotated-out token",
        curl(&s, "GET", "/v1/audit-events", None, Some(&old), None),
        401,
    );
    call(
        "wrong token",
        curl(
            &s,
            "GET",
            "/v1/audit-events",
            None,
            Some(&wrong_token),
            None,
        ),
        401,
    );
    call(
        "oversized token",
        curl(
            &s,
            "GET",
            "/v1/audit-events",
            None,
            Some(&"sgt_".repeat(200)),
            None,
        ),
        401,
    );
    call(
        "no route",
        curl(
            &s,
            "DELETE",
            "/v1/certificates/00",
            None,
            Some(&st.token),
            None,
        ),
        405,
    );
    // The limit: six failures from this address so far; the next is refused.
    call(
        "rate limited",
        curl(&s, "GET", "/v1/audit-events", None, Some(&new), None),
        429,
    );
    call(
        "metrics",
        curl(&s, "GET", "/metrics", None, None, None),
        200,
    );
    let log = s.stop_and_log();
    assert!(
        log.contains("signet: serving on https://"),
        "the log was captured: {log}"
    );

    for (place, text) in cli_outputs.iter().chain(bodies.iter()) {
        secrets.assert_absent(place, text);
    }
    secrets.assert_absent("the server log", &log);
    for out in [&expired_out, &rotated_out, &new_out] {
        assert!(out.stdout.trim().starts_with("sgt_") && !out.stdout.trim().contains(' '));
    }
}
