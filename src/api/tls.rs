//! HTTPS for `signet serve` (rustls with the ring provider; TLS 1.2 and 1.3 only) and client
//! certificates as a way to authenticate.
//!
//! Client certificates are asked for but not required (bearer tokens keep working over TLS).
//! The handshake checks that the client holds the certificate's key (CertificateVerify), but
//! lets an unknown chain through; the chain is verified against the configured client CAs
//! once the handshake is done, with Signet's clock, so that a bad certificate is answered
//! with a 401 and a stable code the client can read rather than with a bare TLS alert. A
//! connection's requests use that verdict until the client CRLs change or it is a minute old.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig};
use sha2::{Digest, Sha256};

use crate::clock::Clock;
use crate::config::TlsConfig;
use crate::ra::Role;
use crate::watched::Watched;

/// Longest a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest in-flight connections get to finish at shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Oldest a connection's verdict on its client certificate may be when a request uses it:
/// past this, or once the client CRLs were read again, the request judges the chain anew (a
/// keep-alive connection must not outlive the certificate's expiry or revocation).
const VERDICT_MAX_AGE_SECS: i64 = 60;

/// Why the TLS configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("[tls] {path}: {reason}")]
    File { path: String, reason: String },
    #[error("[tls]: {0}")]
    Invalid(String),
}

fn file_error(path: &Path, reason: impl ToString) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

/// What a connection's client certificate says, attached to each of its requests.
#[derive(Debug, Clone)]
pub struct ClientCert {
    /// Hex SHA-256 of the certificate (DER).
    pub fingerprint: String,
    pub verdict: ClientVerdict,
}

#[derive(Debug, Clone)]
pub enum ClientVerdict {
    /// Does not chain to a configured client CA, or is not valid now: why.
    Invalid(String),
    Unmapped,
    Mapped {
        tenant: String,
        role: Role,
        holder: Option<String>,
    },
}

/// A `[[tls.client]]` entry, normalized.
#[derive(Debug, Clone)]
struct Mapping {
    fingerprint: Option<String>,
    subject: Option<String>,
    tenant: String,
    role: Role,
    /// In `ra::checked_holder`'s form.
    holder: Option<String>,
}

/// Verification and mapping of client certificates.
#[derive(Debug)]
pub struct ClientAuth {
    /// For the handshake's signatures (the chain is checked after it, by `identify`).
    verifier: Arc<dyn ClientCertVerifier>,
    /// Checks chains: the client CAs and their CRLs as last read (its generation counts the
    /// times they were read again).
    chains: Watched<Arc<dyn ClientCertVerifier>, TlsError>,
    mappings: Vec<Mapping>,
    clock: Clock,
}

/// The client chain of one TLS connection and the latest verdict on it.
pub struct ConnectionClient {
    chain: Vec<CertificateDer<'static>>,
    latest: std::sync::Mutex<Judged>,
}

#[derive(Debug, Clone)]
struct Judged {
    cert: ClientCert,
    /// The generation of the client CRLs it was judged with.
    generation: u64,
    /// When, by Signet's clock (Unix seconds).
    at: i64,
}

impl Judged {
    /// Whether a request at `now`, with the CRLs of `generation`, must judge the chain anew.
    fn is_stale(&self, generation: u64, now: i64) -> bool {
        generation != self.generation || now < self.at || now - self.at >= VERDICT_MAX_AGE_SECS
    }
}

/// The CRLs in `paths` (PEM `X509 CRL` blocks, else one DER CRL per file), each checked to be
/// the CRL of one of `cas`, signed by it when its key is P-256 (other keys' signatures are
/// checked when the CRL is used), and no two of one CA: rustls would use the first and
/// ignore a newer one.
fn read_crls(
    paths: &[PathBuf],
    cas: &[x509_cert::Certificate],
) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    use der::{Decode, Encode};
    let mut out: Vec<CertificateRevocationListDer<'static>> = Vec::new();
    let mut issuers = Vec::new();
    for path in paths {
        let bytes = std::fs::read(path).map_err(|e| file_error(path, e))?;
        let mut crls = CertificateRevocationListDer::pem_slice_iter(&bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| file_error(path, e))?;
        if crls.is_empty() {
            crls.push(CertificateRevocationListDer::from(bytes));
        }
        for crl in crls {
            let list = x509_cert::crl::CertificateList::from_der(crl.as_ref())
                .map_err(|e| file_error(path, format!("not a CRL (PEM X509 CRL or DER): {e}")))?;
            let issuer = list.tbs_cert_list.issuer.to_der().unwrap_or_default();
            let name = crate::ca::x509::name_text(&list.tbs_cert_list.issuer);
            let ca = cas
                .iter()
                .find(|c| c.tbs_certificate().subject().to_der().ok() == Some(issuer.clone()))
                .ok_or_else(|| {
                    file_error(
                        path,
                        format!("a CRL of {name}, which is none of [tls].client_cas"),
                    )
                })?;
            // An algorithm not judged here is left to rustls, which checks it when the CRL
            // is used.
            if crate::ca::x509::crl_signature_verifies(&list, ca) == Some(false) {
                return Err(file_error(
                    path,
                    format!("the CRL of {name} is not signed by that client CA's key"),
                ));
            }
            if issuers.contains(&issuer) {
                return Err(file_error(
                    path,
                    format!("a second CRL of {name}: give only the newest"),
                ));
            }
            issuers.push(issuer);
            out.push(crl);
        }
    }
    Ok(out)
}

/// A verifier of client chains to `roots`, checking revocation against `crls`. A certificate
/// whose issuer has no CRL here is not checked for revocation; a CRL past its nextUpdate still
/// counts (it lists what it lists).
fn build_chain_verifier(
    roots: &Arc<RootCertStore>,
    provider: &Arc<CryptoProvider>,
    crls: Vec<CertificateRevocationListDer<'static>>,
) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let mut builder = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .allow_unauthenticated();
    if !crls.is_empty() {
        builder = builder.with_crls(crls).allow_unknown_revocation_status();
    }
    builder
        .build()
        .map_err(|e| TlsError::Invalid(format!("client CAs and CRLs: {e}")))
}

impl ClientAuth {
    /// The chain verifier and its generation, built again first when a CRL file changed since
    /// it was read. A file that cannot be used keeps the previous verifier (and says so once
    /// per change).
    fn chain_verifier(&self) -> (Arc<dyn ClientCertVerifier>, u64) {
        let (verifier, generation) = self.chains.current();
        ((*verifier).clone(), generation)
    }

    /// The client chain of a finished handshake, judged (`None`: no certificate presented).
    pub fn connection(
        &self,
        certs: Option<&[CertificateDer<'static>]>,
    ) -> Option<ConnectionClient> {
        let chain = certs?.to_vec();
        let judged = self.judge(&chain, self.chain_verifier())?;
        Some(ConnectionClient {
            chain,
            latest: std::sync::Mutex::new(judged),
        })
    }

    /// What a request on `conn` is authenticated by: the connection's verdict, judged anew
    /// when the client CRLs were read again since or it is `VERDICT_MAX_AGE_SECS` old.
    pub fn verdict(&self, conn: &ConnectionClient) -> ClientCert {
        let current = self.chain_verifier();
        let now = self.clock.now();
        let mut latest = conn.latest.lock().unwrap_or_else(|e| e.into_inner());
        if latest.is_stale(current.1, now) {
            if let Some(judged) = self.judge(&conn.chain, current) {
                *latest = judged;
            }
        }
        latest.cert.clone()
    }

    /// What a client chain says now to `verifier` of `generation` (`None`: empty chain).
    fn judge(
        &self,
        chain: &[CertificateDer<'static>],
        (verifier, generation): (Arc<dyn ClientCertVerifier>, u64),
    ) -> Option<Judged> {
        let (leaf, rest) = chain.split_first()?;
        let fingerprint = hex::encode(Sha256::digest(leaf.as_ref()));
        let at = self.clock.now();
        let now = UnixTime::since_unix_epoch(Duration::from_secs(at.max(0) as u64));
        let verdict = match verifier.verify_client_cert(leaf, rest, now) {
            Err(e) => ClientVerdict::Invalid(describe(&e)),
            Ok(_) => {
                let subject = subject_of(leaf);
                match self.mappings.iter().find(|m| {
                    m.fingerprint.as_deref() == Some(fingerprint.as_str())
                        || (m.subject.is_some() && m.subject == subject)
                }) {
                    Some(m) => ClientVerdict::Mapped {
                        tenant: m.tenant.clone(),
                        role: m.role,
                        holder: m.holder.clone(),
                    },
                    None => ClientVerdict::Unmapped,
                }
            }
        };
        Some(Judged {
            cert: ClientCert {
                fingerprint,
                verdict,
            },
            generation,
            at,
        })
    }
}

/// A sentence for a refused client chain.
fn describe(e: &rustls::Error) -> String {
    use rustls::CertificateError as C;
    match e {
        rustls::Error::InvalidCertificate(c) => match c {
            C::UnknownIssuer => "it is not issued by a configured client CA".into(),
            C::Expired | C::ExpiredContext { .. } => "it has expired".into(),
            C::NotValidYet | C::NotValidYetContext { .. } => "it is not valid yet".into(),
            C::Revoked => "it is revoked".into(),
            C::InvalidPurpose | C::InvalidPurposeContext { .. } => {
                "it is not meant for client authentication (extendedKeyUsage)".into()
            }
            C::BadEncoding => "it cannot be parsed".into(),
            C::BadSignature => "its signature does not verify".into(),
            other => format!("it does not verify ({other:?})"),
        },
        other => format!("it does not verify ({other})"),
    }
}

/// The subject DN of a certificate as x509-cert prints it (RFC 4514).
fn subject_of(cert: &CertificateDer<'_>) -> Option<String> {
    use der::Decode;
    let c = x509_cert::Certificate::from_der(cert.as_ref()).ok()?;
    Some(c.tbs_certificate().subject().to_string())
}

/// The same DN written in the config, printed the same way.
fn normalize_subject(s: &str) -> Result<String, TlsError> {
    use std::str::FromStr;
    x509_cert::name::Name::from_str(s)
        .map(|n| n.to_string())
        .map_err(|e| TlsError::Invalid(format!("[[tls.client]] subject {s:?}: {e}")))
}

fn normalize_fingerprint(s: &str) -> Result<String, TlsError> {
    let hex: String = s
        .chars()
        .filter(|c| *c != ':')
        .collect::<String>()
        .to_ascii_lowercase();
    if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(hex)
    } else {
        Err(TlsError::Invalid(format!(
            "[[tls.client]] fingerprint {s:?} is not a hex SHA-256 (64 hex digits)"
        )))
    }
}

/// Passes the handshake to the WebPKI verifier for the proof of possession and leaves the
/// chain to [`ClientAuth::identify`], after the handshake.
#[derive(Debug)]
struct DeferredChain(Arc<dyn ClientCertVerifier>);

impl ClientCertVerifier for DeferredChain {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.0.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // Checked before any use, by ClientAuth::identify (see the module comment).
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// The server's certificate chain and key as a rustls resolver, read again when either file
/// changes: a renewed certificate is served to the next connections without a restart.
#[derive(Debug)]
struct ServerCertificate(Watched<Arc<CertifiedKey>, TlsError>);

impl ResolvesServerCert for ServerCertificate {
    // Two `stat`s per handshake; a changed pair is read and parsed here, on the accepting
    // task, once per change.
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current().0.as_ref().clone())
    }
}

/// The chain (PEM) and its key (PEM), which must be the first certificate's: a certificate
/// replaced before its key is not taken with the old key.
fn read_server_certificate(
    certificate: &Path,
    key: &Path,
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(certificate)
        .map_err(|e| file_error(certificate, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_error(certificate, e))?;
    if chain.is_empty() {
        return Err(file_error(certificate, "no CERTIFICATE in the file"));
    }
    // The key file's content never reaches an error message.
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|_| file_error(key, "cannot read a PEM private key from this file"))?;
    CertifiedKey::from_der(chain, key_der, provider)
        .map(Arc::new)
        .map_err(|e| TlsError::Invalid(format!("certificate and key: {e}")))
}

/// The rustls server configuration and client-certificate rules a `[tls]` section describes.
pub struct TlsSetup {
    pub acceptor: tokio_rustls::TlsAcceptor,
    pub clients: Option<Arc<ClientAuth>>,
}

impl TlsSetup {
    pub fn load(cfg: &TlsConfig, clock: Clock) -> Result<TlsSetup, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = {
            let provider = provider.clone();
            Watched::new(
                vec![cfg.certificate.clone(), cfg.key.clone()],
                "TLS server certificate and key",
                move |files, _| read_server_certificate(&files[0], &files[1], &provider),
            )?
        };

        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| TlsError::Invalid(e.to_string()))?;
        let clients = if cfg.client_cas.is_empty() {
            None
        } else {
            let mut roots = RootCertStore::empty();
            let mut cas = Vec::new();
            for path in &cfg.client_cas {
                let certs = CertificateDer::pem_file_iter(path)
                    .map_err(|e| file_error(path, e))?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| file_error(path, e))?;
                if certs.is_empty() {
                    return Err(file_error(path, "no CERTIFICATE in the file"));
                }
                for c in certs {
                    use der::Decode;
                    cas.push(
                        x509_cert::Certificate::from_der(c.as_ref())
                            .map_err(|e| file_error(path, e))?,
                    );
                    roots.add(c).map_err(|e| file_error(path, e))?;
                }
            }
            let roots = Arc::new(roots);
            let provider = provider.clone() as Arc<CryptoProvider>;
            let chains = Watched::new(cfg.client_crls.clone(), "client CRLs", move |files, _| {
                build_chain_verifier(&roots, &provider, read_crls(files, &cas)?)
            })?;
            let verifier = chains.current().0.as_ref().clone();
            let mut mappings = Vec::new();
            for m in &cfg.client {
                let role = Role::parse(&m.role)
                    .filter(|r| *r != Role::Teller)
                    .ok_or_else(|| {
                        TlsError::Invalid(format!(
                            "[[tls.client]] role {:?}: use ra-officer, teller-admin, gateway, auditor or sealer (tellers sign with a bearer token bound to them)",
                            m.role
                        ))
                    })?;
                if role == Role::TellerAdmin && m.holder.is_none() {
                    tracing::warn!(
                        tenant = %m.tenant,
                        "a [[tls.client]] teller-admin has no holder: the two-person rule tells it apart from the bank's other teller-admins by certificate alone; give it holder = \"<employee id>\""
                    );
                }
                mappings.push(Mapping {
                    fingerprint: m
                        .fingerprint
                        .as_deref()
                        .map(normalize_fingerprint)
                        .transpose()?,
                    subject: m.subject.as_deref().map(normalize_subject).transpose()?,
                    tenant: m.tenant.clone(),
                    role,
                    holder: m
                        .holder
                        .as_deref()
                        .map(|h| {
                            crate::ra::checked_holder(h).map_err(|_| {
                                TlsError::Invalid(format!(
                                    "[[tls.client]] holder {h:?}: name the person (an employee id or a name), 1 to 128 characters, no control or invisible characters"
                                ))
                            })
                        })
                        .transpose()?,
                });
            }
            Some(Arc::new(ClientAuth {
                chains,
                verifier,
                mappings,
                clock,
            }))
        };
        let builder = match &clients {
            Some(c) => {
                builder.with_client_cert_verifier(Arc::new(DeferredChain(c.verifier.clone())))
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_cert_resolver(Arc::new(ServerCertificate(server)));
        // HTTP/1.1 only. Over HTTP/2, an answer sent before the request body is read (a 401
        // from the authentication step of a POST) ends the stream with RST_STREAM, which
        // curl 7.88 (Debian 12) reports as error 92 instead of showing the answer.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsSetup {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            clients,
        })
    }
}

/// Serves `app` over TLS until `shutdown` resolves, then lets open connections finish.
pub async fn serve(
    app: Router,
    listener: tokio::net::TcpListener,
    setup: TlsSetup,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new()).http1_only();
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let acceptor = setup.acceptor.clone();
        let clients = setup.clients.clone();
        let app = app.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let client = clients.and_then(|auth| {
                let conn = auth.connection(tls.get_ref().1.peer_certificates())?;
                Some((auth, Arc::new(conn)))
            });
            let svc = tower::ServiceExt::map_request(
                app,
                move |mut req: axum::http::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(ConnectInfo(peer));
                    if let Some((auth, conn)) = &client {
                        req.extensions_mut().insert(auth.verdict(conn));
                    }
                    req
                },
            );
            let svc = hyper_util::service::TowerToHyperService::new(svc);
            let conn = builder
                .serve_connection(TokioIo::new(tls), svc)
                .into_owned();
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the drain timeout; closing them");
    }
}

/// Where a client connected from, for the limiter and the audit log.
pub(crate) fn peer_of(parts: &axum::http::request::Parts) -> String {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn judged_at(at: i64, generation: u64) -> Judged {
        Judged {
            cert: ClientCert {
                fingerprint: String::new(),
                verdict: ClientVerdict::Unmapped,
            },
            generation,
            at,
        }
    }

    #[test]
    fn a_fresh_verdict_with_the_same_crls_is_used_as_it_is() {
        let j = judged_at(1_000, 3);
        assert!(!j.is_stale(3, 1_000));
        assert!(!j.is_stale(3, 1_000 + VERDICT_MAX_AGE_SECS - 1));
    }

    #[test]
    fn a_verdict_made_before_the_crls_were_read_again_is_judged_anew() {
        assert!(judged_at(1_000, 3).is_stale(4, 1_001));
    }

    #[test]
    fn a_verdict_a_minute_old_is_judged_anew_for_the_certificate_may_have_expired() {
        assert!(judged_at(1_000, 3).is_stale(3, 1_000 + VERDICT_MAX_AGE_SECS));
    }

    #[test]
    fn a_verdict_from_the_future_of_a_clock_set_back_is_judged_anew() {
        assert!(judged_at(1_000, 3).is_stale(3, 999));
    }
}
