//! CFSSL as the reference issuer: `cfssl serve` with a software P-256 CA made by OpenSSL and a
//! `customer` profile shaped like Signet's (two years, digitalSignature + nonRepudiation, the
//! same policy OID, CRL distribution point, OCSP and caIssuers URLs). Without a certificate
//! database CFSSL keeps no record of what it signs, so it does less work per certificate than
//! Signet, which stores and audits each one durably; with `with_db` it records each
//! certificate in its SQLite certdb (`-db-config`, the schema of CFSSL's sqlite migration).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hyper::body::Bytes;

use super::http::{Call, Target};
use super::{tool, LoadError, Scratch};

const PROFILE: &str = r#"{
  "signing": {
    "default": { "expiry": "17520h", "usages": ["digital signature"] },
    "profiles": {
      "customer": {
        "expiry": "17520h",
        "usages": ["digital signature", "content commitment"],
        "ocsp_url": "http://127.0.0.1:8080/ocsp",
        "crl_url": "http://127.0.0.1:8080/crl/customer.crl",
        "issuer_urls": ["http://127.0.0.1:8080/ca/customer.der"],
        "policies": [{ "ID": "1.3.6.1.4.1.32473.7373.1.1" }]
      }
    }
  }
}
"#;

/// A running `cfssl serve`; stopped on drop.
pub struct Cfssl {
    child: Child,
    pub target: Target,
    subject_cn: String,
    _dir: Scratch,
}

impl Cfssl {
    pub fn start(bin: &Path, subject: &str, with_db: bool) -> Result<Cfssl, LoadError> {
        let dir = Scratch::new("cfssl")?;
        let (key, cert, config) = (
            dir.path("ca-key.pem"),
            dir.path("ca.pem"),
            dir.path("config.json"),
        );
        tool(
            Command::new("openssl")
                .args([
                    "ecparam",
                    "-name",
                    "prime256v1",
                    "-genkey",
                    "-noout",
                    "-out",
                ])
                .arg(&key),
            "openssl ecparam (CFSSL CA key)",
        )?;
        tool(
            Command::new("openssl")
                .args(["req", "-x509", "-new", "-sha256", "-days", "3650", "-key"])
                .arg(&key)
                .args(["-subj", "/C=CN/O=Signet bench/CN=CFSSL reference CA"])
                .args(["-addext", "basicConstraints=critical,CA:TRUE"])
                .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"])
                .arg("-out")
                .arg(&cert),
            "openssl req -x509 (CFSSL CA)",
        )?;
        std::fs::write(&config, PROFILE)
            .map_err(|e| LoadError::Tool(format!("cannot write {}: {e}", config.display())))?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| LoadError::Tool(format!("no free port for CFSSL: {e}")))?
            .port();
        let mut cmd = Command::new(bin);
        if with_db {
            let db = dir.path("certs.db");
            let db_config = dir.path("db-config.json");
            certdb(&db)?;
            let json = serde_json::json!({"driver": "sqlite3", "data_source": db});
            std::fs::write(&db_config, json.to_string()).map_err(|e| {
                LoadError::Tool(format!("cannot write {}: {e}", db_config.display()))
            })?;
            cmd.arg("serve").arg("-db-config").arg(&db_config);
        } else {
            cmd.arg("serve");
        }
        let child = cmd
            .args(["-address", "127.0.0.1", "-port", &port.to_string()])
            .arg("-ca")
            .arg(&cert)
            .arg("-ca-key")
            .arg(&key)
            .arg("-config")
            .arg(&config)
            .args(["-loglevel", "4"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| LoadError::Tool(format!("cannot start {}: {e}", bin.display())))?;
        let mut me = Cfssl {
            child,
            target: Target {
                authority: format!("127.0.0.1:{port}"),
            },
            subject_cn: subject_cn(subject),
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if std::net::TcpStream::connect(&me.target.authority).is_ok() {
                break;
            }
            if let Ok(Some(status)) = me.child.try_wait() {
                return Err(LoadError::Tool(format!(
                    "cfssl serve ended at once ({status})"
                )));
            }
            if Instant::now() > deadline {
                return Err(LoadError::Tool(
                    "cfssl serve did not start listening".into(),
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!(
            "bench: cfssl serve on http://{} (pid {})",
            me.target.authority,
            me.child.id()
        );
        Ok(me)
    }

    /// `POST /api/v1/cfssl/sign` of `csr` under the customer profile, with the subject's CN
    /// and the bank's O and C (as Signet builds them).
    pub fn sign_call(&self, csr: &str) -> Call {
        let body = serde_json::json!({
            "certificate_request": csr,
            "profile": "customer",
            "subject": {
                "CN": self.subject_cn,
                "names": [{ "C": "CN", "O": "Signet bench bank" }],
            },
        });
        Call {
            method: hyper::Method::POST,
            path: "/api/v1/cfssl/sign".into(),
            content_type: Some("application/json"),
            authorization: None,
            body: Bytes::from(body.to_string()),
        }
    }
}

impl Drop for Cfssl {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CFSSL's certdb schema (certdb/sqlite/migrations/001_CreateCertificates.sql).
fn certdb(path: &Path) -> Result<(), LoadError> {
    let conn = rusqlite::Connection::open(path)
        .map_err(|e| LoadError::Tool(format!("cannot create {}: {e}", path.display())))?;
    conn.execute_batch(
        "CREATE TABLE certificates (
           serial_number blob NOT NULL, authority_key_identifier blob NOT NULL, ca_label blob,
           status blob NOT NULL, reason int, expiry timestamp, revoked_at timestamp,
           pem blob NOT NULL, PRIMARY KEY(serial_number, authority_key_identifier));
         CREATE TABLE ocsp_responses (
           serial_number blob NOT NULL, authority_key_identifier blob NOT NULL,
           body blob NOT NULL, expiry timestamp,
           PRIMARY KEY(serial_number, authority_key_identifier),
           FOREIGN KEY(serial_number, authority_key_identifier)
             REFERENCES certificates(serial_number, authority_key_identifier));",
    )
    .map_err(|e| LoadError::Tool(format!("cannot create CFSSL's certdb: {e}")))
}

/// The CN of an RFC 4514 subject (`CN=x,serialNumber=y` gives `x`), or the whole text.
fn subject_cn(subject: &str) -> String {
    subject
        .split(',')
        .find_map(|rdn| rdn.trim().strip_prefix("CN="))
        .unwrap_or(subject)
        .to_string()
}
