//! The one configuration file (TOML). Relative paths are resolved against the file's folder.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::hsm::{HsmConfig, PinSource, TokenSelector};

/// Environment variable that overrides `[hsm].module`.
pub const HSM_MODULE_ENV: &str = "SIGNET_HSM_MODULE";

/// Environment variable that overrides `[store]`: a `postgres://` URL (or a SQLite file path).
pub const STORE_URL_ENV: &str = "SIGNET_STORE_URL";

/// Environment variable naming the Signet home folder (default `./.signet`).
pub const HOME_ENV: &str = "SIGNET_HOME";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "cannot read config {path}: {reason}; run softhsm/setup.sh to create one, or pass --config"
    )]
    Read { path: String, reason: String },
    #[error("config {path}: {reason}")]
    Invalid { path: String, reason: String },
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub ca: CaConfig,
    pub hsm: HsmSection,
    pub store: StoreConfig,
    pub audit: AuditConfig,
    pub issuance: IssuanceConfig,
    #[serde(default)]
    pub verify: VerifyConfig,
    #[serde(default)]
    pub auth: AuthConfig,
    /// HTTPS (and client certificates). Absent: `signet serve` speaks plain HTTP.
    pub tls: Option<TlsConfig>,
    #[serde(skip)]
    pub path: PathBuf,
}

/// Verification of signed payment instructions.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct VerifyConfig {
    /// Trust anchors beside Signet's own root, each with its CRL (DER or PEM file).
    #[serde(default)]
    pub anchors: Vec<AnchorConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnchorConfig {
    pub name: String,
    /// The anchor's certificate (PEM or DER).
    pub certificate: PathBuf,
    /// Its CRL (PEM or DER), read at start.
    pub crl: Option<PathBuf>,
}

/// Bearer tokens and failed authentications.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Lifetime of a new or rotated credential when the command does not say (days).
    #[serde(default = "default_credential_days")]
    pub credential_days: u32,
    /// Failed authentications a client address may have in a window before it is refused
    /// (429) for `lockout_secs`.
    #[serde(default = "default_address_failures")]
    pub max_failures_per_address: u32,
    /// Failed authentications naming one credential (a token with its id and a wrong
    /// secret, or an expired/revoked token) in a window before that credential is refused.
    #[serde(default = "default_credential_failures")]
    pub max_failures_per_credential: u32,
    #[serde(default = "default_window")]
    pub window_secs: u32,
    #[serde(default = "default_window")]
    pub lockout_secs: u32,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            credential_days: default_credential_days(),
            max_failures_per_address: default_address_failures(),
            max_failures_per_credential: default_credential_failures(),
            window_secs: default_window(),
            lockout_secs: default_window(),
        }
    }
}

fn default_credential_days() -> u32 {
    365
}
fn default_address_failures() -> u32 {
    20
}
fn default_credential_failures() -> u32 {
    10
}
fn default_window() -> u32 {
    60
}

/// `[tls]`: `signet serve` speaks HTTPS (TLS 1.2 and 1.3 only).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The server's certificate chain (PEM, leaf first). Default `tls-server.pem` beside the
    /// config: where `signet ca upgrade` writes one issued by Signet's customer CA.
    #[serde(default = "default_tls_cert")]
    pub certificate: PathBuf,
    /// The server's private key (PEM, PKCS#8). Default `tls-server-key.pem` beside the config.
    #[serde(default = "default_tls_key")]
    pub key: PathBuf,
    /// When set, `signet ca upgrade` issues the server certificate (and makes its key) if the
    /// certificate file does not exist yet: names such as `DNS:localhost`, `IP:127.0.0.1`.
    #[serde(default)]
    pub issue_names: Vec<String>,
    /// CA certificates (PEM files) that client certificates must chain to. None: no client
    /// certificates are asked for.
    #[serde(default)]
    pub client_cas: Vec<PathBuf>,
    /// CRLs (PEM or DER files) of the client CAs: a client certificate they list is refused.
    /// Read again when a file changes (looked at on each new connection).
    #[serde(default)]
    pub client_crls: Vec<PathBuf>,
    /// Which client certificate speaks for which bank and role.
    #[serde(default)]
    pub client: Vec<TlsClientConfig>,
}

/// One mapping of a verified client certificate to a bank and role. Give `fingerprint`
/// (hex SHA-256 of the certificate's DER, colons allowed) or `subject` (its subject DN,
/// RFC 4514, as `openssl x509 -nameopt RFC2253 -subject` prints it), or both.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsClientConfig {
    pub fingerprint: Option<String>,
    pub subject: Option<String>,
    /// The bank's registered name (`signet tenant add`).
    pub tenant: String,
    /// ra-officer, teller-admin, gateway, auditor or sealer (a teller signs with a token).
    pub role: String,
    /// The person the certificate belongs to, as `credential add --holder` names one: the
    /// two-person rule for teller certificates compares people, so that one person's two
    /// certificates (a renewed one beside the old) or certificate and bearer credential
    /// cannot approve each other's requests.
    pub holder: Option<String>,
}

fn default_tls_cert() -> PathBuf {
    PathBuf::from("tls-server.pem")
}
fn default_tls_key() -> PathBuf {
    PathBuf::from("tls-server-key.pem")
}

/// Names, validity and URLs of the CA hierarchy.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaConfig {
    pub organization: String,
    pub country: String,
    pub root_common_name: String,
    pub customer_ca_common_name: String,
    pub teller_ca_common_name: String,
    #[serde(default = "default_root_days")]
    pub root_validity_days: u32,
    #[serde(default = "default_issuing_days")]
    pub issuing_validity_days: u32,
    /// Base of the published URLs: `{base_url}/ca/{issuer}.der`, `{base_url}/crl/...`, `{base_url}/ocsp`.
    pub base_url: String,
    #[serde(default = "one")]
    pub crl_shards: u32,
    #[serde(default = "default_next_update")]
    pub crl_next_update_hours: u32,
    /// Prefix of the key labels in the token.
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HsmSection {
    pub module: PathBuf,
    /// Token label or RFC 7512 `pkcs11:` URI.
    pub token: String,
    pub pin_file: Option<PathBuf>,
    pub pin_env: Option<String>,
    pub so_pin_file: Option<PathBuf>,
    /// SOFTHSM2_CONF to use when the environment does not set one.
    pub softhsm2_conf: Option<PathBuf>,
    #[serde(default = "default_sessions")]
    pub sessions: usize,
    #[serde(default = "default_checkout_ms")]
    pub session_wait_ms: u64,
    /// Longest a request waits for one HSM operation (including waiting for a session and
    /// re-initializing a failed module) before it is answered 503 `hsm_unavailable`; 0 waits
    /// as long as the module takes.
    #[serde(default = "default_call_timeout_ms")]
    pub call_timeout_ms: u64,
}

/// Where the records live: a SQLite file (`path`) or a PostgreSQL database (`url`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// The SQLite database file (the embedded default).
    pub path: Option<PathBuf>,
    /// `postgres://user@host/db?...`: a PostgreSQL database shared by several processes.
    /// Keep the password out of it: use `password_file`.
    pub url: Option<String>,
    /// A file holding the PostgreSQL password (read at start, kept zeroized).
    pub password_file: Option<PathBuf>,
    /// PEM certificate(s) of the CA that issued the PostgreSQL server's certificate: needed
    /// when the URL says `sslmode=require` (TLS, the server verified by certificate and name).
    pub tls_ca_file: Option<PathBuf>,
    /// Connections each process keeps to PostgreSQL.
    #[serde(default = "default_pool")]
    pub pool: u32,
    /// How long a store call waits for a connection before it answers "store unavailable".
    #[serde(default = "default_store_wait_ms")]
    pub connect_timeout_ms: u64,
    /// How long a write waits for the write lock another process holds before it answers
    /// "store unavailable" (PostgreSQL).
    #[serde(default = "default_lock_timeout_ms")]
    pub lock_timeout_ms: u64,
}

fn default_lock_timeout_ms() -> u64 {
    30_000
}

fn default_pool() -> u32 {
    8
}

fn default_store_wait_ms() -> u64 {
    5_000
}

/// The store a config selects, after the environment override.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    Sqlite(PathBuf),
    Postgres(String),
}

impl StoreConfig {
    /// `SIGNET_STORE_URL` when set, else `url`, else `path`.
    pub fn location(&self) -> StoreLocation {
        let from_env = std::env::var(STORE_URL_ENV).ok().filter(|v| !v.is_empty());
        match from_env.or_else(|| self.url.clone()) {
            Some(u) if is_postgres_url(&u) => StoreLocation::Postgres(u),
            Some(u) => StoreLocation::Sqlite(PathBuf::from(u.trim_start_matches("sqlite://"))),
            None => StoreLocation::Sqlite(self.path.clone().unwrap_or_default()),
        }
    }
}

pub fn is_postgres_url(s: &str) -> bool {
    s.starts_with("postgres://") || s.starts_with("postgresql://")
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    #[serde(default = "default_checkpoint_every")]
    pub checkpoint_every: u64,
    pub checkpoint_file: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuanceConfig {
    /// An issuance recorded but not signed for longer than this is voided at the next start.
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    /// Folder of the profile TOML files.
    pub policies: PathBuf,
    /// Key for the keyed hash of ID numbers, for profiles that carry the hash (a file, 0600).
    pub id_hash_key_file: Option<PathBuf>,
}

fn default_root_days() -> u32 {
    7300
}
fn default_issuing_days() -> u32 {
    3650
}
fn one() -> u32 {
    1
}
fn default_next_update() -> u32 {
    24
}
fn default_key_prefix() -> String {
    "signet".into()
}
fn default_sessions() -> usize {
    4
}
fn default_checkout_ms() -> u64 {
    5000
}
fn default_call_timeout_ms() -> u64 {
    10_000
}
fn default_checkpoint_every() -> u64 {
    100
}
fn default_timeout() -> u64 {
    300
}

impl Config {
    /// The config path: `--config`, else `$SIGNET_HOME/signet.toml`, else `./.signet/signet.toml`.
    pub fn default_path() -> PathBuf {
        let home = std::env::var_os(HOME_ENV)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(".signet"));
        home.join("signet.toml")
    }

    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let invalid = |reason: String| ConfigError::Invalid {
            path: path.display().to_string(),
            reason,
        };
        let mut cfg: Config = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        let abs = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        if let Some(p) = cfg.store.path.as_mut() {
            abs(p);
        }
        abs(&mut cfg.audit.checkpoint_file);
        abs(&mut cfg.issuance.policies);
        for a in &mut cfg.verify.anchors {
            abs(&mut a.certificate);
            if let Some(c) = a.crl.as_mut() {
                abs(c);
            }
        }
        if let Some(t) = cfg.tls.as_mut() {
            abs(&mut t.certificate);
            abs(&mut t.key);
            for c in t.client_cas.iter_mut().chain(t.client_crls.iter_mut()) {
                abs(c);
            }
            for c in &t.client {
                if c.fingerprint.is_none() && c.subject.is_none() {
                    return Err(invalid(
                        "every [[tls.client]] needs a fingerprint or a subject".into(),
                    ));
                }
            }
            if !t.client_crls.is_empty() && t.client_cas.is_empty() {
                return Err(invalid(
                    "[tls].client_crls need [tls].client_cas: the CAs whose certificates they revoke"
                        .into(),
                ));
            }
            if !t.client.is_empty() && t.client_cas.is_empty() {
                return Err(invalid(
                    "[[tls.client]] mappings need [tls].client_cas to verify certificates against"
                        .into(),
                ));
            }
        }
        let a = &cfg.auth;
        if a.credential_days == 0
            || a.max_failures_per_address == 0
            || a.max_failures_per_credential == 0
            || a.window_secs == 0
            || a.lockout_secs == 0
        {
            return Err(invalid("[auth] values must be at least 1".into()));
        }
        for p in [
            cfg.hsm.pin_file.as_mut(),
            cfg.hsm.so_pin_file.as_mut(),
            cfg.hsm.softhsm2_conf.as_mut(),
            cfg.issuance.id_hash_key_file.as_mut(),
            cfg.store.password_file.as_mut(),
            cfg.store.tls_ca_file.as_mut(),
        ]
        .into_iter()
        .flatten()
        {
            abs(p);
        }
        cfg.path = path.to_path_buf();
        if cfg.ca.crl_shards == 0 || cfg.ca.crl_shards > 256 {
            return Err(invalid("[ca].crl_shards must be between 1 and 256".into()));
        }
        if cfg.ca.country.len() != 2 || !cfg.ca.country.chars().all(|c| c.is_ascii_uppercase()) {
            return Err(invalid(
                "[ca].country must be a two-letter ISO 3166 code such as CN".into(),
            ));
        }
        match (&cfg.store.path, &cfg.store.url) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "[store] takes path (SQLite) or url (PostgreSQL), not both".into(),
                ))
            }
            (None, None) => {
                return Err(invalid(
                    "[store] needs path (a SQLite file) or url (postgres://...)".into(),
                ))
            }
            (None, Some(u)) if !is_postgres_url(u) => {
                return Err(invalid(
                    "[store].url must start with postgres:// (a SQLite file goes in path)".into(),
                ))
            }
            _ => {}
        }
        if cfg.store.pool == 0 {
            return Err(invalid("[store].pool must be at least 1".into()));
        }
        if cfg.audit.checkpoint_every == 0 {
            return Err(invalid(
                "[audit].checkpoint_every must be at least 1".into(),
            ));
        }
        if cfg.hsm.pin_file.is_none() && cfg.hsm.pin_env.is_none() {
            return Err(invalid("[hsm] needs pin_file or pin_env".into()));
        }
        TokenSelector::parse(&cfg.hsm.token).map_err(|e| invalid(format!("[hsm].token: {e}")))?;
        cfg.ca.base_url = cfg.ca.base_url.trim_end_matches('/').to_string();
        Ok(cfg)
    }

    /// Points SoftHSM at the configured conf file unless the environment already does.
    /// Call before the first thread starts and before the module is loaded.
    pub fn apply_environment(&self) {
        if let Some(conf) = &self.hsm.softhsm2_conf {
            if std::env::var_os("SOFTHSM2_CONF").is_none() {
                // SAFETY-relevant: called from main before any other thread exists.
                std::env::set_var("SOFTHSM2_CONF", conf);
            }
        }
    }

    pub fn hsm_config(&self) -> HsmConfig {
        let pin = match (&self.hsm.pin_env, &self.hsm.pin_file) {
            (Some(var), _) if std::env::var_os(var).is_some() => PinSource::Env(var.clone()),
            (_, Some(file)) => PinSource::File(file.clone()),
            (Some(var), None) => PinSource::Env(var.clone()),
            (None, None) => PinSource::Env("SIGNET_HSM_PIN".into()),
        };
        HsmConfig {
            // SIGNET_HSM_MODULE points the same home at another module (p11-kit-client.so, a
            // network HSM's library) without editing the config.
            module: std::env::var_os(HSM_MODULE_ENV)
                .map(PathBuf::from)
                .unwrap_or_else(|| self.hsm.module.clone()),
            token: TokenSelector::parse(&self.hsm.token)
                .unwrap_or_else(|_| TokenSelector::Label(self.hsm.token.clone())),
            pin,
            sessions: self.hsm.sessions,
            checkout_timeout: Duration::from_millis(self.hsm.session_wait_ms),
            call_timeout: Duration::from_millis(self.hsm.call_timeout_ms),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_with_store(store: &str) -> Result<Config, ConfigError> {
        let text = format!(
            r#"
[ca]
organization = "Bank"
country = "CN"
root_common_name = "Root"
customer_ca_common_name = "Customer CA"
teller_ca_common_name = "Teller CA"
base_url = "http://127.0.0.1:8080"

[hsm]
module = "/usr/lib/softhsm/libsofthsm2.so"
token = "signet-dev"
pin_file = "user.pin"

[store]
{store}

[audit]
checkpoint_file = "checkpoints.jsonl"

[issuance]
timeout_secs = 300
policies = "policies"
"#
        );
        Config::parse(&text, Path::new("/etc/signet/signet.toml"))
    }

    fn refusal(store: &str) -> String {
        match config_with_store(store) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("[store] {store:?} was accepted"),
        }
    }

    #[test]
    fn a_sqlite_path_is_resolved_against_the_config_folder() {
        let c = config_with_store(r#"path = "signet.db""#).unwrap();
        assert_eq!(
            c.store.location(),
            StoreLocation::Sqlite(PathBuf::from("/etc/signet/signet.db"))
        );
    }

    #[test]
    fn a_postgres_url_selects_postgres() {
        let c = config_with_store(r#"url = "postgres://signet@db/signet""#).unwrap();
        assert_eq!(
            c.store.location(),
            StoreLocation::Postgres("postgres://signet@db/signet".into())
        );
    }

    #[test]
    fn a_store_with_both_path_and_url_is_refused() {
        assert!(refusal("path = \"a.db\"\nurl = \"postgres://db/x\"").contains("not both"));
    }

    #[test]
    fn a_store_with_neither_path_nor_url_is_refused() {
        assert!(refusal("pool = 4").contains("needs path"));
    }

    #[test]
    fn a_url_that_is_not_postgres_is_refused() {
        assert!(refusal(r#"url = "mysql://db/x""#).contains("must start with postgres://"));
    }

    #[test]
    fn a_pool_of_zero_is_refused() {
        assert!(refusal("url = \"postgres://db/x\"\npool = 0").contains("pool"));
    }
}
